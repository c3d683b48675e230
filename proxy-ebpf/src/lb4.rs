//! Service lookup and backend selection (IPv4).

use aya_ebpf::helpers::bpf_get_prandom_u32;
use proxy_common::{Backend4, Reason, SCOPE_EXTERNAL, SVC_FLAG_VIP, SlotKey, Svc4Key, SvcValue};

use crate::maps::{BACKEND4, SLOTS, SVC4};

/// The service frontend for `vip:port/proto`, copied out of the map.
#[inline(always)]
pub(crate) fn lb4_lookup(vip: [u8; 4], port: u16, proto: u8) -> Option<SvcValue> {
    let key = Svc4Key {
        vip,
        port,
        proto,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: copied at once; the agent may replace the entry at any time.
    unsafe { SVC4.get(key).copied() }
}

/// Whether `addr` is a service VIP (the agent writes one marker entry per VIP).
#[inline(always)]
pub(crate) fn lb4_is_vip(addr: [u8; 4]) -> bool {
    let key = Svc4Key {
        vip: addr,
        port: 0,
        proto: 0,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: only the flags are read, at once.
    match unsafe { SVC4.get(key) } {
        Some(v) => v.flags & SVC_FLAG_VIP != 0,
        None => false,
    }
}

/// Picks a backend of `svc` at random among its slots 1..=count.
///
/// A missing slot or backend means the agent's maps are inconsistent (it
/// writes slots before raising the count, and deletes backends last): the
/// packet is dropped and counted rather than sent somewhere arbitrary.
#[inline(always)]
pub(crate) fn lb4_select_backend(svc: &SvcValue) -> Result<(u32, Backend4), Reason> {
    let count = u32::from(svc.count);
    if count == 0 {
        return Err(Reason::DropBackendMissing);
    }
    // SAFETY: helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % count + 1;
    let key = SlotKey {
        svc_id: svc.svc_id,
        slot,
    };
    // SAFETY: copied at once.
    let backend_id = match unsafe { SLOTS.get(key) } {
        Some(s) => s.backend_id,
        None => return Err(Reason::DropBackendMissing),
    };
    // SAFETY: copied at once.
    match unsafe { BACKEND4.get(backend_id).copied() } {
        Some(b) => Ok((backend_id, b)),
        None => Err(Reason::DropBackendMissing),
    }
}
