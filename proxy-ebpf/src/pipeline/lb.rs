//! Service lookup and backend selection: frontends by scope, random
//! choice among the slots, session affinity, source ranges.

use aya_ebpf::{bindings::BPF_ANY, btf_maps::lpm_trie::Key, helpers::bpf_get_prandom_u32};
use proxy_common::{
    AffinityValue, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_VIP, SlotKey, SvcValue,
};

use super::{
    ADDR_PREFIX_FULL, AFFINITY, Addr, AffinityKey, BACKEND, Backend, SRC_PREFIX_FULL, SRCRANGE,
    SVC, SVCCIDR, ServiceCidr, SrcRange, SvcKey,
};
use crate::maps::SLOTS;

const NS: u64 = 1_000_000_000;

#[inline(always)]
fn lookup_scope(vip: Addr, port: u16, proto: u8, scope: u8) -> Option<SvcValue> {
    let key = SvcKey {
        vip,
        port,
        proto,
        scope,
    };
    // SAFETY: copied at once; the agent may replace the entry at any time.
    unsafe { SVC.get(key).copied() }
}

/// The service frontend for `vip:port/proto`, copied out of the map (its
/// external-scope entry: what traffic from anywhere sees).
#[inline(always)]
pub(crate) fn lb_lookup(vip: Addr, port: u16, proto: u8) -> Option<SvcValue> {
    lookup_scope(vip, port, proto, SCOPE_EXTERNAL)
}

/// The internal-scope entry of a frontend whose external entry has
/// `SVC_FLAG_TWO_SCOPES` (what pods of this node see). Missing means the
/// agent's maps are inconsistent: dropped and counted.
#[inline(always)]
pub(crate) fn lb_lookup_internal(vip: Addr, port: u16, proto: u8) -> Result<SvcValue, Reason> {
    lookup_scope(vip, port, proto, SCOPE_INTERNAL).ok_or(Reason::DropBackendMissing)
}

/// Whether `addr` is a service VIP (the agent writes one marker entry per VIP).
#[inline(always)]
pub(crate) fn lb_is_vip(addr: Addr) -> bool {
    let key = SvcKey {
        vip: addr,
        port: 0,
        proto: 0,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: only the flags are read, at once.
    match unsafe { SVC.get(key) } {
        Some(v) => v.flags & SVC_FLAG_VIP != 0,
        None => false,
    }
}

/// Whether `addr` is inside one of the service CIDRs (the networks cluster
/// IPs are allocated from). Asked only of addresses no frontend and no VIP
/// marker holds: an unallocated cluster IP.
#[inline(always)]
pub(crate) fn lb_in_service_cidr(addr: Addr) -> bool {
    let key = Key::new(ADDR_PREFIX_FULL, ServiceCidr { addr });
    SVCCIDR.get(&key).is_some()
}

/// Whether `client` is inside one of the source ranges of service `svc_id`.
#[inline(always)]
pub(crate) fn lb_source_allowed(svc_id: u32, client: Addr) -> bool {
    let key = Key::new(
        SRC_PREFIX_FULL,
        SrcRange {
            svc_id: svc_id.to_be_bytes(),
            addr: client,
        },
    );
    SRCRANGE.get(&key).is_some()
}

/// The backend in `slot` of `svc`, if the slot and the backend exist.
#[inline(always)]
fn slot_backend(svc_id: u32, slot: u32) -> Option<(u32, Backend)> {
    // SAFETY: copied at once.
    let backend_id = unsafe { SLOTS.get(SlotKey { svc_id, slot }) }?.backend_id;
    // SAFETY: copied at once.
    let b = unsafe { BACKEND.get(backend_id).copied() }?;
    Some((backend_id, b))
}

/// Picks a backend of `svc` at random among its slots 1..=count; returns it
/// with its slot.
///
/// A missing slot or backend means the agent's maps are inconsistent (it
/// writes slots before raising the count, and deletes backends last): the
/// packet is dropped and counted rather than sent somewhere arbitrary.
#[inline(always)]
fn select_random(svc: &SvcValue) -> Result<(u32, Backend, u32), Reason> {
    let count = u32::from(svc.count);
    if count == 0 {
        return Err(Reason::DropBackendMissing);
    }
    // SAFETY: helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % count + 1;
    match slot_backend(svc.svc_id, slot) {
        Some((id, b)) => Ok((id, b, slot)),
        None => Err(Reason::DropBackendMissing),
    }
}

/// Picks a backend of `svc` at random among its slots 1..=count.
#[inline(always)]
pub(crate) fn lb_select_backend(svc: &SvcValue) -> Result<(u32, Backend), Reason> {
    select_random(svc).map(|(id, b, _)| (id, b))
}

/// Picks the backend of a new flow from `client`: with session affinity,
/// the one this client was last sent to while its entry is younger than the
/// timeout and its slot still names it (a backend that left the service is
/// never chosen again); else one at random, remembered for next time.
#[inline(always)]
pub(crate) fn lb_select(svc: &SvcValue, client: Addr, now: u64) -> Result<(u32, Backend), Reason> {
    if svc.affinity_timeout == 0 {
        return lb_select_backend(svc);
    }
    let key = AffinityKey {
        client,
        svc_id: svc.svc_id,
    };
    if let Some(a) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup; fields copied at once.
        let (backend_id, slot, last) = unsafe { ((*a).backend_id, (*a).slot, (*a).last_ns) };
        let alive = now < last + u64::from(svc.affinity_timeout) * NS;
        if alive
            && slot >= 1
            && slot <= u32::from(svc.count)
            && let Some((id, b)) = slot_backend(svc.svc_id, slot)
            && id == backend_id
        {
            // SAFETY: as above; a racing writer only refreshes the same field.
            unsafe { (*a).last_ns = now };
            return Ok((id, b));
        }
    }
    let (id, b, slot) = select_random(svc)?;
    let value = AffinityValue {
        backend_id: id,
        slot,
        last_ns: now,
    };
    // Best effort: without the entry the next connection chooses anew.
    let _ = AFFINITY.insert(key, value, u64::from(BPF_ANY));
    Ok((id, b))
}
