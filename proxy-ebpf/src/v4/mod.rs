//! IPv4: the concrete types, maps and header offsets the family-neutral
//! pipelines are compiled with for this family, its header (`ip.rs`), its
//! rejects (`reject.rs`) and its ICMP errors (`icmp.rs`).
//!
//! The pipelines (`pipeline/*.rs`) are written once and compiled once per
//! family: each family module includes them as its own child modules, and
//! they name what differs between the families through `super::` (`Addr`,
//! `CtKey`, `CT`, `l3`, `reject`, ...). Both families' key and value types
//! have the same field names, so one struct literal builds either. (A trait
//! with associated types would need an accessor per field for a dozen map
//! types; generic map types would mangle the BTF names `bpftool map dump`
//! prints.) What must differ in how the steps run is a family hook too:
//! `apart` (a step in a subprogram of its own, or inlined) and `temp!` (a
//! temporary on the stack, or in a per-CPU scratch map): IPv4's frames fit
//! the 512-byte BPF stack, IPv6's do not (`v6/mod.rs`).

/// `temp!(slot, value)`: `&mut` to a temporary holding `value`
/// (`temp!(slot)`: any value, to be written before it is read). IPv4's
/// frames fit the BPF stack, so here a local of the caller's frame (no map
/// lookup on the hot paths); IPv6 puts it in slot `slot` of its per-CPU
/// scratch map (`v6::temp!`). Defined before the pipeline modules, which
/// see it by textual scope.
macro_rules! temp {
    ($slot:ident, $init:expr) => {
        &mut { $init }
    };
    // Without a value: zeroed (all of the temporaries are plain data), a
    // store LLVM drops where the value is written before it is read.
    ($slot:ident) => {
        // SAFETY: every type kept in a temporary is plain data.
        &mut { unsafe { core::mem::zeroed() } }
    };
}

mod icmp;
pub(crate) mod ip;
mod reject;

use aya_ebpf::programs::SockAddrContext;
use proxy_common::Reason;

use crate::verdict::{Action, Verdict};
pub(crate) use proxy_common::{
    AffinityKey, Backend4 as Backend, Ct4Key as CtKey, CtValue, Frag4Key as FragKey,
    Frag4Value as FragValue, HAIRPIN_ADDR_DEFAULT as HAIRPIN_DEFAULT,
    NODE4_HAIRPIN_KEY as HAIRPIN_KEY, ServiceCidr4 as ServiceCidr, Snat4Value as SnatValue,
    Sock4Key as SockKey, Sock4Value as SockValue, SrcRange4 as SrcRange, Svc4Key as SvcKey,
};

pub(crate) use self::{
    icmp::icmp_error,
    ip::{IP_CSUM_OFF, IP_DADDR_OFF as DADDR_OFF, IP_SADDR_OFF as SADDR_OFF, Ipv4Hdr as Ip, l3},
    reject::reject,
};
pub(crate) use crate::maps::{
    AFFINITY4 as AFFINITY, BACKEND4 as BACKEND, CT4 as CT, FRAG4 as FRAG, NODE4 as NODE,
    SNAT4 as SNAT, SOCK4 as SOCK, SRCRANGE4 as SRCRANGE, SVC4 as SVC, SVCCIDR4 as SVCCIDR,
};

/// An IPv4 address, network order.
pub(crate) type Addr = [u8; 4];

/// The header checksum, which covers the addresses.
pub(crate) const L3_CSUM: Option<usize> = Some(IP_CSUM_OFF);

/// LPM prefix length of a whole client address after the service id.
pub(crate) const SRC_PREFIX_FULL: u32 = 32 + 32;

/// LPM prefix length of a whole address (service-CIDR lookups).
pub(crate) const ADDR_PREFIX_FULL: u32 = 32;

/// Runs `f`, a step of a pipeline that IPv6 runs in a stack frame of its
/// own (see `v6::apart`): IPv4's frames fit as one, so inlined here (no
/// call, nothing packed, per packet).
#[inline(always)]
pub(crate) fn apart<A: Action, F: FnMut() -> Result<Verdict<A>, Reason>>(
    mut f: F,
) -> Result<Verdict<A>, Reason> {
    f()
}

/// The key of `ip`'s datagram in the fragment map (RFC 791: source,
/// destination, protocol, identification).
#[inline(always)]
pub(crate) fn frag_key(ip: &Ip, dir: u8) -> FragKey {
    FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id(),
        proto: ip.proto,
        dir,
    }
}

/// The address a socket hook was given (`user_ip4`, `user_port`).
#[inline(always)]
pub(crate) fn sock_addr(ctx: &SockAddrContext) -> (Addr, u16) {
    // SAFETY: fields of the context the kernel gave, read as whole words.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    (ip.to_ne_bytes(), u16::from_be(port as u16))
}

/// Sets the address a socket hook hands back to the kernel.
#[inline(always)]
pub(crate) fn set_sock_addr(ctx: &SockAddrContext, addr: Addr, port: u16) {
    // SAFETY: writable fields of the context, written as whole words (the
    // verifier refuses narrower stores).
    unsafe {
        (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(addr);
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
        pad: 0,
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
