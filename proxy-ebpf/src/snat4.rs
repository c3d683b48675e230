//! Source NAT of node-port flows to backends on other nodes (IPv4).
//!
//! The backend must answer through this node, so the flow leaves with this
//! node's address and a port from `SNAT_PORT_MIN..=SNAT_PORT_MAX`, a range
//! outside the node's ephemeral ports and the NodePort range: the reply can
//! never be taken for one of the node's own connections. The port is
//! allocated by inserting the reverse entry with `BPF_NOEXIST`, which makes
//! the allocation atomic: two CPUs cannot take the same (backend, node,
//! port) tuple.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use proxy_common::{
    CT_DIR_REPLY, CT_DIR_SERVICE, Ct4Key, Reason, SNAT_PORT_MAX, SNAT_PORT_MIN, Snat4Value,
};

use crate::maps::SNAT4;

/// Random ports tried before giving up on a new flow.
const TRIES: u32 = 8;

/// The key of the forward entry: the flow after DNAT (client -> backend).
#[inline(always)]
pub(crate) fn fwd_key(
    client: [u8; 4],
    cport: u16,
    backend: [u8; 4],
    bport: u16,
    proto: u8,
) -> Ct4Key {
    Ct4Key {
        saddr: client,
        daddr: backend,
        sport: cport,
        dport: bport,
        proto,
        dir: CT_DIR_SERVICE,
        pad: 0,
    }
}

/// The node address and port of an SNATed flow (forward direction).
#[inline(always)]
pub(crate) fn snat4_lookup_fwd(key: &Ct4Key) -> Option<Snat4Value> {
    // SAFETY: copied at once.
    unsafe { SNAT4.get(key).copied() }
}

/// The client address and port a reply to `node:port` from `backend` goes
/// back to (reverse direction).
#[inline(always)]
pub(crate) fn snat4_lookup_rev(
    backend: [u8; 4],
    bport: u16,
    node: [u8; 4],
    port: u16,
    proto: u8,
) -> Option<Snat4Value> {
    if port < SNAT_PORT_MIN {
        return None;
    }
    let key = Ct4Key {
        saddr: backend,
        daddr: node,
        sport: bport,
        dport: port,
        proto,
        dir: CT_DIR_REPLY,
        pad: 0,
    };
    // SAFETY: copied at once.
    unsafe { SNAT4.get(key).copied() }
}

/// Allocates a port on `node` for the flow `fwd` (client -> backend) and
/// writes both entries. Fails closed with `DropSnatPorts` when no port was
/// free after a few random tries.
#[inline(always)]
pub(crate) fn snat4_allocate(fwd: &Ct4Key, node: [u8; 4]) -> Result<u16, Reason> {
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    let back = Snat4Value {
        addr: fwd.saddr,
        port: fwd.sport,
        pad: 0,
    };
    let mut i = 0;
    while i < TRIES {
        // SAFETY: helper without arguments.
        let port = SNAT_PORT_MIN + (unsafe { bpf_get_prandom_u32() } % range) as u16;
        let rkey = Ct4Key {
            saddr: fwd.daddr,
            daddr: node,
            sport: fwd.dport,
            dport: port,
            proto: fwd.proto,
            dir: CT_DIR_REPLY,
            pad: 0,
        };
        if SNAT4.insert(rkey, back, u64::from(BPF_NOEXIST)).is_ok() {
            let out = Snat4Value {
                addr: node,
                port,
                pad: 0,
            };
            if SNAT4.insert(fwd, out, u64::from(BPF_ANY)).is_err() {
                let _ = SNAT4.remove(rkey);
                return Err(Reason::DropSnatPorts);
            }
            return Ok(port);
        }
        i += 1;
    }
    Err(Reason::DropSnatPorts)
}
