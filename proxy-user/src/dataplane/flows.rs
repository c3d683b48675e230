//! Flow state that follows table changes: the UDP flows of backends that
//! left a frontend (cleared as kube-proxy clears their conntrack entries),
//! and session affinity entries that follow a backend to its new slot. The
//! conntrack, SNAT and affinity maps of the frontend's family.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    net::IpAddr,
};

use aya::maps::{HashMap, MapData, MapError};
use proxy_common::{AffinityValue, CT_DIR_SERVICE, CT_F_SNAT, IPPROTO_UDP, map_names};

use super::error::{Result, map_err};
use super::handle::Dataplane;
use super::maps::{BPF_EXIST, CtFamily, ignore_missing, prune, removed, walk};
use super::table::{SlotMove, StaleFlow};

/// What one [`Dataplane::clear_stale_udp_flows`] sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClearedFlows {
    /// Flows cleared (service-direction conntrack entries deleted).
    pub flows: usize,
    /// Conntrack entries deleted, both directions.
    pub ct_entries: usize,
    /// Source NAT entries deleted (one per SNATed flow).
    pub snat_entries: usize,
}

/// The flow a conntrack entry of either family belongs to.
fn flow_of<K: CtFamily>(k: &K, v: &K::Value) -> Option<StaleFlow> {
    let e = k.decode(v);
    StaleFlow::of_entry(e.dir, e.src, e.dst, e.nat, e.svc_id, e.backend_id)
}

/// One family's sweep: deletes the UDP conntrack entries (and SNAT
/// entries) of `ct` whose flow is in `stale`, walking at most `limit` keys.
fn sweep<K: CtFamily, S: aya::Pod>(
    (ct, ct_name): (&mut HashMap<MapData, K, K::Value>, &'static str),
    (snat, snat_name): (&mut HashMap<MapData, K, S>, &'static str),
    limit: usize,
    stale: &BTreeSet<StaleFlow>,
    out: &mut ClearedFlows,
) -> Result<()> {
    let is_stale = |k: &K, v: &K::Value| flow_of(k, v).is_some_and(|s| stale.contains(&s));
    let mut doomed = Vec::new();
    for k in ct.keys().take(limit) {
        let k = k.map_err(map_err(ct_name))?;
        if k.proto() != IPPROTO_UDP {
            continue;
        }
        match ct.get(&k, 0) {
            Ok(v) if is_stale(&k, &v) => doomed.push(k),
            Ok(_) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(ct_name)(e)),
        }
    }
    // Service direction first: a client's next datagram then opens a
    // new flow, and no reply of the old one goes out untranslated.
    doomed.sort_by_key(|k| k.dir() != CT_DIR_SERVICE);
    for k in &doomed {
        // Read again just before: a new flow may have taken the key.
        let v = match ct.get(k, 0) {
            Ok(v) if is_stale(k, &v) => v,
            Ok(_) | Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(ct_name)(e)),
        };
        if removed(ct.remove(k)).map_err(map_err(ct_name))? {
            out.ct_entries += 1;
            if k.dir() == CT_DIR_SERVICE {
                out.flows += 1;
            }
        }
        // A SNATed flow's SNAT entry sits under its reply key.
        if k.decode(&v).flags & CT_F_SNAT != 0
            && removed(snat.remove(k)).map_err(map_err(snat_name))?
        {
            out.snat_entries += 1;
        }
    }
    Ok(())
}

impl Dataplane {
    /// Deletes the conntrack entries (both directions) and the source NAT
    /// entries of the UDP flows whose backend left their frontend since
    /// the last sweep, as kube-proxy clears the UDP conntrack entries of
    /// removed endpoints: otherwise a client that keeps sending from one
    /// port stays pinned to the removed backend for as long as it sends.
    /// TCP flows are never touched (they keep a removed but running
    /// backend). One walk of the conntrack map of each family that has
    /// stale flows, however many frontends changed; entries that vanish
    /// underneath (LRU, the datapath) are skipped, and an entry a new flow
    /// took over meanwhile is left alone. On error the stale backends stay
    /// noted for the next sweep.
    pub fn clear_stale_udp_flows(&mut self) -> Result<ClearedFlows> {
        let mut out = ClearedFlows::default();
        if self.table.stale_udp.is_empty() {
            return Ok(out);
        }
        let (v4, v6): (BTreeSet<StaleFlow>, BTreeSet<StaleFlow>) = self
            .table
            .stale_udp
            .iter()
            .partition(|s| s.frontend.0.is_ipv4());
        let limit = self.capacity.conntrack as usize;
        let m = &mut self.maps;
        if !v4.is_empty() {
            sweep(
                (&mut m.CT4, map_names::CT4),
                (&mut m.SNAT4, map_names::SNAT4),
                limit,
                &v4,
                &mut out,
            )?;
        }
        if !v6.is_empty() {
            sweep(
                (&mut m.CT6, map_names::CT6),
                (&mut m.SNAT6, map_names::SNAT6),
                limit,
                &v6,
                &mut out,
            )?;
        }
        self.ct_removed += out.ct_entries as u64;
        self.table.stale_udp.clear();
        Ok(out)
    }

    /// Rewrites the session affinity entries of service id `svc_id` (of a
    /// frontend on `addr`, whose family says which affinity map holds its
    /// clients) that name a moved backend in its old slot to name its new
    /// slot. Entries that vanish meanwhile (LRU) are not written back.
    /// Returns how many entries it rewrote.
    pub(super) fn move_affinity(
        &mut self,
        svc_id: u32,
        addr: IpAddr,
        moves: &[SlotMove],
    ) -> Result<usize> {
        let to: StdHashMap<(u32, u32), u32> = moves
            .iter()
            .map(|m| ((m.backend_id, m.from), m.to))
            .collect();
        let limit = self.capacity.affinity as usize;
        if addr.is_ipv4() {
            let map = (&mut self.maps.AFFINITY4, map_names::AFFINITY4);
            move_in(map, limit, |k| k.svc_id == svc_id, &to)
        } else {
            let map = (&mut self.maps.AFFINITY6, map_names::AFFINITY6);
            move_in(map, limit, |k| k.svc_id == svc_id, &to)
        }
    }

    /// Deletes the session affinity entries of service id `svc_id` (of a
    /// frontend on `addr`). The map of its family is walked whole (an LRU
    /// map has no index by service), so the cost follows the number of
    /// live entries, at most the map's size. Returns how many entries it
    /// deleted.
    pub(super) fn flush_affinity(&mut self, svc_id: u32, addr: IpAddr) -> Result<usize> {
        if addr.is_ipv4() {
            prune(&mut self.maps.AFFINITY4, map_names::AFFINITY4, |k| {
                k.svc_id != svc_id
            })
        } else {
            prune(&mut self.maps.AFFINITY6, map_names::AFFINITY6, |k| {
                k.svc_id != svc_id
            })
        }
    }
}

/// [`Dataplane::move_affinity`] on one family's affinity map: the entries
/// whose key `ours` accepts.
fn move_in<K: aya::Pod>(
    (map, name): (&mut HashMap<MapData, K, AffinityValue>, &'static str),
    limit: usize,
    ours: impl Fn(&K) -> bool,
    to: &StdHashMap<(u32, u32), u32>,
) -> Result<usize> {
    let entries = walk(map, name, limit)?;
    let mut moved = 0;
    for (k, mut v) in entries {
        if !ours(&k) {
            continue;
        }
        let Some(slot) = to.get(&(v.backend_id, v.slot)) else {
            continue;
        };
        v.slot = *slot;
        ignore_missing(map.insert(k, v, BPF_EXIST)).map_err(map_err(name))?;
        moved += 1;
    }
    Ok(moved)
}
