//! Flow state that follows table changes: the UDP flows of backends that
//! left a frontend (cleared as kube-proxy clears their conntrack entries),
//! and session affinity entries that follow a backend to its new slot.

use std::collections::HashMap as StdHashMap;

use aya::maps::MapError;
use proxy_common::{CT_DIR_SERVICE, CT_F_SNAT, Ct4Key, CtValue, IPPROTO_UDP, map_names};

use super::error::{Result, map_err};
use super::handle::Dataplane;
use super::maps::{BPF_EXIST, ignore_missing, prune, removed, walk};
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

impl Dataplane {
    /// Deletes the conntrack entries (both directions) and the source NAT
    /// entries of the UDP flows whose backend left their frontend since
    /// the last sweep, as kube-proxy clears the UDP conntrack entries of
    /// removed endpoints: otherwise a client that keeps sending from one
    /// port stays pinned to the removed backend for as long as it sends.
    /// TCP flows are never touched (they keep a removed but running
    /// backend). One walk of the conntrack map however many frontends
    /// changed; entries that vanish underneath (LRU, the datapath) are
    /// skipped, and an entry a new flow took over meanwhile is left alone.
    /// On error the stale backends stay noted for the next sweep.
    pub fn clear_stale_udp_flows(&mut self) -> Result<ClearedFlows> {
        let mut out = ClearedFlows::default();
        if self.table.stale_udp.is_empty() {
            return Ok(out);
        }
        let stale = &self.table.stale_udp;
        let is_stale =
            |k: &Ct4Key, v: &CtValue| StaleFlow::of_entry(k, v).is_some_and(|s| stale.contains(&s));
        let mut doomed = Vec::new();
        for k in self.maps.CT4.keys().take(self.capacity.conntrack as usize) {
            let k = k.map_err(map_err(map_names::CT4))?;
            if k.proto != IPPROTO_UDP {
                continue;
            }
            match self.maps.CT4.get(&k, 0) {
                Ok(v) if is_stale(&k, &v) => doomed.push(k),
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(map_names::CT4)(e)),
            }
        }
        // Service direction first: a client's next datagram then opens a
        // new flow, and no reply of the old one goes out untranslated.
        doomed.sort_by_key(|k| k.dir != CT_DIR_SERVICE);
        for k in &doomed {
            // Read again just before: a new flow may have taken the key.
            let v = match self.maps.CT4.get(k, 0) {
                Ok(v) if is_stale(k, &v) => v,
                Ok(_) | Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::CT4)(e)),
            };
            if removed(self.maps.CT4.remove(k)).map_err(map_err(map_names::CT4))? {
                out.ct_entries += 1;
                self.ct_removed += 1;
                if k.dir == CT_DIR_SERVICE {
                    out.flows += 1;
                }
            }
            // A SNATed flow's SNAT entry sits under its reply key.
            if v.flags & CT_F_SNAT != 0
                && removed(self.maps.SNAT4.remove(k)).map_err(map_err(map_names::SNAT4))?
            {
                out.snat_entries += 1;
            }
        }
        self.table.stale_udp.clear();
        Ok(out)
    }

    /// Rewrites the session affinity entries of service id `svc_id` that
    /// name a moved backend in its old slot to name its new slot. Entries
    /// that vanish meanwhile (LRU) are not written back. Returns how many
    /// entries it rewrote.
    pub(super) fn move_affinity(&mut self, svc_id: u32, moves: &[SlotMove]) -> Result<usize> {
        let to: StdHashMap<(u32, u32), u32> = moves
            .iter()
            .map(|m| ((m.backend_id, m.from), m.to))
            .collect();
        let limit = self.capacity.affinity as usize;
        let entries = walk(&self.maps.AFFINITY4, map_names::AFFINITY4, limit)?;
        let mut moved = 0;
        for (k, mut v) in entries {
            if k.svc_id != svc_id {
                continue;
            }
            let Some(slot) = to.get(&(v.backend_id, v.slot)) else {
                continue;
            };
            v.slot = *slot;
            ignore_missing(self.maps.AFFINITY4.insert(k, v, BPF_EXIST))
                .map_err(map_err(map_names::AFFINITY4))?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Deletes the session affinity entries of service id `svc_id`. The map
    /// is walked whole (an LRU map has no index by service), so the cost
    /// follows the number of live entries, at most the map's size. Returns
    /// how many entries it deleted.
    pub(super) fn flush_affinity(&mut self, svc_id: u32) -> Result<usize> {
        prune(&mut self.maps.AFFINITY4, map_names::AFFINITY4, |k| {
            k.svc_id != svc_id
        })
    }
}
