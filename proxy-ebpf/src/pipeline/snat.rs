//! Source NAT: a flow leaves with another source address or port,
//! and its replies are translated back.
//!
//! Two uses:
//! - node-port flows to backends on other nodes leave with this node's
//!   address, so that the backend answers through this node;
//! - a new flow whose client port already reaches the same backend through
//!   another frontend (two Services sharing endpoints, one client socket
//!   port reused for both) keeps its address but gets another source port,
//!   as netfilter's NAT clash resolution does: otherwise the backend would
//!   see one connection where there are two.
//!
//! Ports come from `SNAT_PORT_MIN..=SNAT_PORT_MAX`, a range outside the
//! default ephemeral ports (32768-60999) and the NodePort range, so a reply
//! can never be taken for one of the node's or the pod's own connections.
//! The port is allocated by inserting the reverse entry with `BPF_NOEXIST`,
//! which makes the allocation atomic: two CPUs cannot take the same
//! (backend, address, port) tuple.
//!
//! One SNAT entry per flow, the reverse one, keyed by the tuple the backend
//! answers to (backend -> address:port, reply direction, the same key as the
//! flow's conntrack reply entry) and naming the client: it is the port's
//! allocation. The source to write on the client's packets is in the flow's
//! conntrack service entry (`peer_addr`, `peer_port`), and the client to
//! answer in its reply entry, so the established paths read no SNAT entry.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use proxy_common::{
    CT_DIR_REPLY, CT_F_SNAT, REMAP_PORT_MAX, REMAP_PORT_MIN, Reason, SNAT_CLAIM_S, SNAT_PORT_MAX,
    SNAT_PORT_MIN,
};

use super::{
    Addr, CtKey, SNAT, SnatValue,
    ct::{AddrPort, NS, NewFlow, Tuple, ct_create, ct_tuple},
};

/// Ports for a source address this node owns (node-port SNAT, hairpin):
/// outside the node's ephemeral ports and the NodePort range.
const NODE_PORTS: (u16, u16) = (SNAT_PORT_MIN, SNAT_PORT_MAX);
/// Ports for a client's own address whose port clashed: 1024-65535, as
/// netfilter remaps (the clash check sees the client's translated flows).
const CLIENT_PORTS: (u16, u16) = (REMAP_PORT_MIN, REMAP_PORT_MAX);

/// Opens a new flow (`f`): from `via` and a port of [`NODE_PORTS`] when
/// given (node-port SNAT, hairpin); else from the client's own address and
/// port, or, when another flow already owns that tuple at the backend (the
/// same client port reached it through another frontend), from the
/// client's address and a remapped port. Returns the source the backend
/// sees and whether it is not the client's own. (One call site of
/// [`snat_open`], which is large.)
#[inline(always)]
pub(crate) fn open_flow(f: &NewFlow, via: Option<&Addr>) -> Result<(AddrPort, bool), Reason> {
    let (from, ports) = match via {
        Some(a) => (*a, NODE_PORTS),
        None => {
            let own = (f.key.saddr, f.key.sport);
            if ct_create(f, 0, &own, false)? {
                return Ok((own, false));
            }
            (f.key.saddr, CLIENT_PORTS)
        }
    };
    let port = snat_open(f, &from, ports)?;
    Ok(((from, port), true))
}

/// Random ports tried before giving up on a new flow. The first half only
/// takes tuples no flow held in the backend's TIME_WAIT; the second half,
/// a last resort, also takes the tuples of closed flows.
const TRIES: u32 = 12;

/// The key of the reverse entry: what the backend answers to.
#[inline(always)]
pub(crate) fn rev_key(backend: Addr, bport: u16, addr: Addr, port: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: backend,
        daddr: addr,
        sport: bport,
        dport: port,
        proto,
        dir: CT_DIR_REPLY,
        pad: 0,
    }
}

/// The client address and port a reply to `addr:port` from `backend` goes
/// back to, when `addr:port` was allocated here. Callers that see every
/// packet check first that the port is in the range they allocate from.
#[inline(always)]
pub(crate) fn snat_lookup_rev(key: &CtKey) -> Option<SnatValue> {
    // SAFETY: copied at once.
    unsafe { SNAT.get(key).copied() }
}

/// Seconds of `now`, modulo 2^16 (the stamp of reverse SNAT entries).
#[inline(always)]
fn stamp(now: u64) -> u16 {
    (now / NS) as u16
}

/// Opens a new flow (`key`: client -> frontend) to `backend` from `addr`
/// and a port allocated here: the reverse SNAT entry, then both conntrack
/// entries (flagged `CT_F_SNAT`; the service-direction one names the source
/// to write). Returns the port, taken from `ports`. Fails closed with `DropSnatPorts` when no port
/// was free after a few random tries.
///
/// A port is taken when inserting its reverse entry with `BPF_NOEXIST`
/// succeeds (atomic: two CPUs cannot both create it). A port whose reverse
/// entry is still in the map (reverse entries are LRU and outlive their
/// flows) is taken again only when the flow that had it is over; a reverse
/// entry without any conntrack entry is a leftover only when it is older
/// than `SNAT_CLAIM_S`: a younger one belongs to a flow another CPU is
/// creating right now (between its insert and its conntrack entries). Only
/// a reverse entry this call created is removed again when the conntrack
/// entries cannot be made; one it took over is written again once its
/// conntrack entries are ours.
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values by reference: by value LLVM copies them (IPv6: out of the scratch slots onto the stack)"
)]
fn snat_open(f: &NewFlow, addr: &Addr, ports: (u16, u16)) -> Result<u16, Reason> {
    let NewFlow {
        key, backend, now, ..
    } = *f;
    let addr = *addr;
    let range = u32::from(ports.1 - ports.0) + 1;
    // With IPv6 both in the scratch slots (see the family's `temp!`).
    let back = temp!(
        snat_back,
        SnatValue {
            addr: key.saddr,
            port: key.sport,
            stamp: stamp(now),
        }
    );
    let rkey = temp!(
        snat_rkey,
        rev_key(backend.addr, backend.port, addr, 0, key.proto)
    );
    let mut i = 0;
    while i < TRIES {
        let last_resort = i >= TRIES / 2;
        i += 1;
        // SAFETY: helper without arguments.
        let port = ports.0 + (unsafe { bpf_get_prandom_u32() } % range) as u16;
        rkey.dport = port;
        let created = SNAT.insert(&*rkey, &*back, u64::from(BPF_NOEXIST)).is_ok();
        if !created {
            // SAFETY: pointer from a successful lookup, read at once.
            let Some(old_stamp) = SNAT.get_ptr(&*rkey).map(|o| unsafe { (*o).stamp }) else {
                continue;
            };
            let free = match ct_tuple(rkey, now, last_resort)? {
                Tuple::Held => false,
                Tuple::Over => true,
                Tuple::Unused => back.stamp.wrapping_sub(old_stamp) >= SNAT_CLAIM_S,
            };
            if !free || SNAT.insert(&*rkey, &*back, u64::from(BPF_ANY)).is_err() {
                continue;
            }
        }
        match ct_create(f, CT_F_SNAT, &(addr, port), last_resort) {
            Ok(true) => {}
            // A live flow still owns that tuple (its SNAT entry was evicted
            // first): try another port.
            Ok(false) => {
                if created {
                    let _ = SNAT.remove(&*rkey);
                }
                continue;
            }
            Err(e) => {
                if created {
                    let _ = SNAT.remove(&*rkey);
                }
                return Err(e);
            }
        }
        if !created {
            // The tuple's conntrack entries are ours now; another CPU that
            // took the same leftover may have written its client meanwhile.
            let _ = SNAT.insert(&*rkey, &*back, u64::from(BPF_ANY));
        }
        return Ok(port);
    }
    Err(Reason::DropSnatPorts)
}
