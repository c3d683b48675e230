//! IPv6: the concrete types, maps and header offsets the family-neutral
//! pipelines are compiled with for this family (see `v4/mod.rs` for how),
//! its header and extension headers (`ip.rs`), its rejects (`reject.rs`)
//! and its ICMPv6 errors (`icmp.rs`). IPv6 has no header checksum; the L4
//! checksums cover both addresses through the pseudo-header.

/// `temp!(slot, value)`: `&mut` to slot `slot` of this CPU's scratch
/// space ([`Scratch`]), set to `value` (`temp!(slot)`: as it is): the
/// temporaries that do not fit the 512-byte BPF stack beside the rest of
/// the pipeline (IPv4 keeps them on the stack, `v4::temp!`). Each slot belongs to one function, which
/// sets it before use; a slot's reference must not outlive the step that
/// took it. Fails with `DropRewrite` if the map has no entry (it always
/// has: an array). Defined before the pipeline modules, which see it by
/// textual scope.
macro_rules! temp {
    ($slot:ident, $init:expr) => {{
        let s = $crate::v6::scratch()?;
        // SAFETY: a per-CPU map value, which only this program run uses
        // (BPF programs do not nest on one CPU in TC); the reference is to
        // one slot, which no other live reference covers (see above).
        let r = unsafe { &mut (*s).$slot };
        *r = $init;
        r
    }};
    // Without a value: as the slot holds it (plain data, to be written
    // before it is read).
    ($slot:ident) => {{
        let s = $crate::v6::scratch()?;
        // SAFETY: as above.
        unsafe { &mut (*s).$slot }
    }};
}

mod icmp;
pub(crate) mod ip;
mod reject;

use aya_ebpf::programs::SockAddrContext;
use proxy_common::Reason;

use crate::verdict::{Action, Verdict, pack, unpack};
pub(crate) use proxy_common::{
    Affinity6Key as AffinityKey, Backend6 as Backend, Ct6Key as CtKey, Ct6Value as CtValue,
    Frag6Key as FragKey, Frag6Value as FragValue, HAIRPIN6_ADDR_DEFAULT as HAIRPIN_DEFAULT,
    NODE6_HAIRPIN_KEY as HAIRPIN_KEY, ServiceCidr6 as ServiceCidr, Snat6Value as SnatValue,
    Sock6Key as SockKey, Sock6Value as SockValue, SrcRange6 as SrcRange, Svc6Key as SvcKey,
};

pub(crate) use self::{
    icmp::icmp_error,
    ip::{IP6_DADDR_OFF as DADDR_OFF, IP6_SADDR_OFF as SADDR_OFF, Ip6 as Ip, l3},
    reject::reject,
};
pub(crate) use crate::maps::{
    AFFINITY6 as AFFINITY, BACKEND6 as BACKEND, CT6 as CT, FRAG6 as FRAG, NODE6 as NODE,
    SNAT6 as SNAT, SOCK6 as SOCK, SRCRANGE6 as SRCRANGE, SVC6 as SVC, SVCCIDR6 as SVCCIDR,
};

/// The slots of the per-CPU scratch space (`SVCNAT_SCRATCH6`, see
/// [`temp!`]), laid over its words.
#[repr(C)]
pub(crate) struct Scratch {
    /// `ct_create`'s reply key and value.
    pub(crate) ct_rkey: CtKey,
    pub(crate) ct_value: CtValue,
    /// `flow_over`'s service-direction key.
    pub(crate) ct_over_skey: CtKey,
    /// `snat_open`'s reverse key and value.
    pub(crate) snat_rkey: CtKey,
    pub(crate) snat_back: SnatValue,
    /// What the steps of the pod ingress pipeline hand on.
    pub(crate) ingress: pod::Ingress,
    /// What the steps of the pod egress pipeline hand on.
    pub(crate) egress: pod::Egress,
    /// What the steps of the node pipeline hand on.
    pub(crate) node: node::Node,
}

const _: () = assert!(
    core::mem::size_of::<Scratch>() <= core::mem::size_of::<proxy_common::Scratch6>()
        && core::mem::align_of::<Scratch>() <= core::mem::align_of::<proxy_common::Scratch6>()
);

/// This CPU's scratch space.
#[inline(always)]
pub(crate) fn scratch() -> Result<*mut Scratch, Reason> {
    crate::maps::SCRATCH6
        .get_ptr_mut(0)
        .map(|p| p.cast::<Scratch>())
        .ok_or(Reason::DropRewrite)
}

/// An IPv6 address, network order.
pub(crate) type Addr = [u8; 16];

/// No header checksum.
pub(crate) const L3_CSUM: Option<usize> = None;

/// LPM prefix length of a whole client address after the service id.
pub(crate) const SRC_PREFIX_FULL: u32 = 32 + 128;

/// LPM prefix length of a whole address (service-CIDR lookups).
pub(crate) const ADDR_PREFIX_FULL: u32 = 128;

/// Runs `f`, a step of a pipeline, in a BPF subprogram of its own (one per
/// call site: `f`'s type is its closure): its stack frame is apart from
/// the caller's, so that steps that do not nest (the new flow path, the
/// rewrites) do not add up in one frame over the 512-byte BPF stack. IPv6's
/// 16-byte addresses and 40-byte keys need that; IPv4 inlines the same
/// steps (`v4::apart`). The result comes back in a register (see
/// [`crate::verdict::pack`]).
#[inline(always)]
pub(crate) fn apart<A: Action, F: FnMut() -> Result<Verdict<A>, Reason>>(
    mut f: F,
) -> Result<Verdict<A>, Reason> {
    unpack(subprogram(&mut || pack(f())))
}

/// `f` in a BPF subprogram of its own (see [`apart`]).
#[inline(never)]
fn subprogram<F: FnMut() -> u64>(f: &mut F) -> u64 {
    f()
}

/// The key of `ip`'s datagram in the fragment map (RFC 8200: source,
/// destination and the fragment header's identification).
#[inline(always)]
pub(crate) fn frag_key(ip: &Ip, dir: u8) -> FragKey {
    FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.frag_id,
        proto: ip.proto,
        dir,
        pad: 0,
    }
}

/// The address a socket hook was given (`user_ip6`, `user_port`).
#[inline(always)]
pub(crate) fn sock_addr(ctx: &SockAddrContext) -> (Addr, u16) {
    let mut addr = [0u8; 16];
    // SAFETY: fields of the context the kernel gave, read as whole words
    // (the verifier refuses narrower loads of `user_ip6`).
    let (words, port) = unsafe { ((*ctx.sock_addr).user_ip6, (*ctx.sock_addr).user_port) };
    for (i, w) in words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    (addr, u16::from_be(port as u16))
}

/// Sets the address a socket hook hands back to the kernel.
#[inline(always)]
pub(crate) fn set_sock_addr(ctx: &SockAddrContext, addr: Addr, port: u16) {
    let mut words = [0u32; 4];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u32::from_ne_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
    }
    // SAFETY: writable fields of the context, written as whole words (the
    // verifier refuses narrower stores).
    unsafe {
        for (i, w) in words.iter().enumerate() {
            (*ctx.sock_addr).user_ip6[i] = *w;
        }
        (*ctx.sock_addr).user_port = u32::from(port.to_be());
    }
}

/// The socket map key of a socket and a backend.
#[inline(always)]
pub(crate) fn sock_key(cookie: u64, addr: Addr, port: u16, proto: u8) -> SockKey {
    SockKey {
        cookie,
        addr,
        port,
        proto,
        pad: [0; 5],
    }
}

#[path = "../pipeline/ct.rs"]
pub(crate) mod ct;
#[path = "../pipeline/frag.rs"]
pub(crate) mod frag;
#[path = "../pipeline/lb.rs"]
pub(crate) mod lb;
#[path = "../pipeline/nat.rs"]
pub(crate) mod nat;
#[path = "../pipeline/node.rs"]
pub(crate) mod node;
#[path = "../pipeline/pod.rs"]
pub(crate) mod pod;
#[path = "../pipeline/snat.rs"]
pub(crate) mod snat;
#[path = "../pipeline/sock.rs"]
pub(crate) mod sock;
