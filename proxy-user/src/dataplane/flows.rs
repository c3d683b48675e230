//! Flow state that follows table changes: the UDP flows of backends that
//! left a frontend (cleared as kube-proxy clears their conntrack entries),
//! and session affinity entries that follow a backend to its new slot.

use super::*;

/// A UDP backend that left one scope of a frontend: the flows of that
/// frontend's service id to it are stale. The frontend and the backend's
/// address are kept besides the ids, so that an id handed out again meanwhile
/// never names someone else's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct StaleFlow {
    pub(super) svc_id: u32,
    pub(super) backend_id: u32,
    pub(super) frontend: ([u8; 4], u16),
    pub(super) backend: ([u8; 4], u16),
}

impl StaleFlow {
    /// What a UDP conntrack entry says about its flow, in either direction.
    pub(super) fn of_entry(k: &Ct4Key, v: &CtValue) -> Option<Self> {
        let (frontend, backend) = match k.dir {
            CT_DIR_SERVICE => ((k.daddr, k.dport), (v.nat_addr, v.nat_port)),
            CT_DIR_REPLY => ((v.nat_addr, v.nat_port), (k.saddr, k.sport)),
            _ => return None,
        };
        Some(Self {
            svc_id: v.svc_id,
            backend_id: v.backend_id,
            frontend,
            backend,
        })
    }
}

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
    /// Notes that backends `gone` left service id `svc_id` of frontend `fe`
    /// while `kept` are in it: for a UDP frontend, the flows to the ones
    /// that left are stale, and those to the ones in it (again) are not.
    pub(super) fn note_udp_change(
        &mut self,
        fe: &Frontend4,
        svc_id: u32,
        gone: &[u32],
        kept: &[u32],
    ) {
        if fe.proto != IPPROTO_UDP {
            return;
        }
        let frontend = (fe.vip.octets(), fe.port);
        let keys = &self.backend_keys;
        let addr_of = |id: &u32| keys.get(id).map(|k| (k.addr.octets(), k.port));
        let kept: BTreeSet<([u8; 4], u16)> = kept.iter().filter_map(addr_of).collect();
        self.stale_udp.retain(|s| {
            !(s.svc_id == svc_id && s.frontend == frontend && kept.contains(&s.backend))
        });
        for id in gone {
            let Some(backend) = addr_of(id) else {
                continue;
            };
            if !kept.contains(&backend) {
                self.stale_udp.insert(StaleFlow {
                    svc_id,
                    backend_id: *id,
                    frontend,
                    backend,
                });
            }
        }
    }

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
        if self.stale_udp.is_empty() {
            return Ok(out);
        }
        let stale = &self.stale_udp;
        let is_stale =
            |k: &Ct4Key, v: &CtValue| StaleFlow::of_entry(k, v).is_some_and(|s| stale.contains(&s));
        let mut doomed = Vec::new();
        for k in self.ct4.keys().take(self.capacity.conntrack as usize) {
            let k = k.map_err(map_err(map_names::CT4))?;
            if k.proto != IPPROTO_UDP {
                continue;
            }
            match self.ct4.get(&k, 0) {
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
            let v = match self.ct4.get(k, 0) {
                Ok(v) if is_stale(k, &v) => v,
                Ok(_) | Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::CT4)(e)),
            };
            if removed(self.ct4.remove(k)).map_err(map_err(map_names::CT4))? {
                out.ct_entries += 1;
                self.ct_removed += 1;
                if k.dir == CT_DIR_SERVICE {
                    out.flows += 1;
                }
            }
            // A SNATed flow's SNAT entry sits under its reply key.
            if v.flags & CT_F_SNAT != 0
                && removed(self.snat4.remove(k)).map_err(map_err(map_names::SNAT4))?
            {
                out.snat_entries += 1;
            }
        }
        self.stale_udp.clear();
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
        let entries = walk(&self.affinity4, map_names::AFFINITY4, limit)?;
        let mut moved = 0;
        for (k, mut v) in entries {
            if k.svc_id != svc_id {
                continue;
            }
            let Some(slot) = to.get(&(v.backend_id, v.slot)) else {
                continue;
            };
            v.slot = *slot;
            ignore_missing(self.affinity4.insert(k, v, BPF_EXIST))
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
        prune(&mut self.affinity4, map_names::AFFINITY4, |k| {
            k.svc_id != svc_id
        })
    }
}
