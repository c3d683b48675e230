//! The mirror of the load-balancing table: frontends, their backends in
//! slot order, and the ids they have in the maps. What the agent believes the
//! maps hold, read back from them on adoption ([`Dataplane::adopt`]) and
//! kept equal to them by every update (`update.rs`); the slot order that
//! keeps session affinity when backends come and go ([`slot_layout`]).

use super::*;

/// A service frontend: VIP, port, IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend4 {
    /// Service address.
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
}

impl std::fmt::Display for Frontend4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.vip, self.port, proto_name(self.proto))
    }
}

/// Name of an IP protocol number.
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        1 => "icmp",
        _ => "other",
    }
}

/// A backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend4Spec {
    /// Backend address.
    pub addr: Ipv4Addr,
    /// Backend port.
    pub port: u16,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}

/// What the maps hold for one frontend, as the dataplane knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    /// Service id (key of slots and reverse NAT).
    pub svc_id: u32,
    /// Backends in slot order (slot 1 first).
    pub backends: Vec<Backend4Spec>,
    /// Session affinity timeout, seconds (0: none).
    pub affinity_timeout: u32,
    /// Name for inspection (`namespace/name:port`).
    pub label: String,
    /// `SVC_FLAG_*` bits of the frontend entry.
    pub flags: u16,
    /// Backends of the internal-scope entry, when the frontend has one
    /// (`SVC_FLAG_TWO_SCOPES`: pods see these, outside clients the above).
    pub internal_backends: Option<Vec<Backend4Spec>>,
    /// Source ranges (`loadBalancerSourceRanges`) as (network, prefix length).
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
}

/// Everything about one frontend: what [`Dataplane::upsert_frontend`] writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendSpec {
    /// Backends of the frontend entry: what traffic from anywhere sees (with
    /// a traffic policy Local, only this node's backends).
    pub backends: Vec<Backend4Spec>,
    /// Backends for this node's pods when they differ from `backends`:
    /// written as a second, internal-scope entry.
    pub internal_backends: Option<Vec<Backend4Spec>>,
    /// `SVC_FLAG_EXTERNAL`, `SVC_FLAG_LOCAL_ONLY`, `SVC_FLAG_NODE_PORT`,
    /// `SVC_FLAG_SOURCE_RANGES` (with an empty `source_ranges`: nobody is
    /// admitted). `SVC_FLAG_TWO_SCOPES` follows `internal_backends`.
    pub flags: u16,
    /// Admitted client ranges as (address, prefix length).
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// Affinity and label.
    pub opts: ServiceOpts,
}

/// Per-frontend settings besides the backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceOpts {
    /// Session affinity timeout, seconds (0: none).
    pub affinity_timeout: u32,
    /// Name for inspection (`namespace/name:port`), kept in the labels map.
    pub label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct BackendKey {
    pub(super) addr: Ipv4Addr,
    pub(super) port: u16,
    pub(super) proto: u8,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct BackendSlot {
    pub(super) id: u32,
    pub(super) flags: u8,
    pub(super) refs: u32,
}

pub(super) struct ServiceMirror {
    pub(super) svc_id: u32,
    pub(super) backend_ids: Vec<u32>,
    pub(super) affinity_timeout: u32,
    pub(super) label: String,
    pub(super) flags: u16,
    pub(super) ranges: Vec<(Ipv4Addr, u8)>,
}

/// Whether a frontend entry with `flags` gets a VIP marker: external-scope
/// frontends on service addresses, not node addresses (other ports of the
/// node must stay reachable).
pub(super) fn has_marker(flags: u16) -> bool {
    flags & SVC_FLAG_NODE_PORT == 0
}

/// Id allocator: smallest freed id first, then the next unused one. Id 0 is
/// never handed out.
#[derive(Default)]
pub(super) struct Ids {
    pub(super) next: u32,
    pub(super) free: Vec<u32>,
}

impl Ids {
    pub(super) fn take(&mut self) -> u32 {
        if let Some(id) = self.free.pop() {
            return id;
        }
        self.next += 1;
        self.next
    }
    pub(super) fn give(&mut self, id: u32) {
        self.free.push(id);
    }
    pub(super) fn rebuild(&mut self, used: impl Iterator<Item = u32>) {
        let mut used: Vec<u32> = used.collect();
        used.sort_unstable();
        self.next = used.last().copied().unwrap_or(0);
        self.free = (1..self.next)
            .filter(|i| used.binary_search(i).is_err())
            .rev()
            .collect();
    }
}

/// What [`Dataplane::upsert_service`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    /// The frontend is new.
    Created,
    /// The frontend existed and something changed.
    Updated,
    /// The maps already held exactly this.
    Unchanged,
}

impl Dataplane {
    /// Reads what the pinned maps hold into the mirror, without changing
    /// them. Entries that do not hang together (a slot naming a missing
    /// backend, a backend no slot names) are left for [`Self::repair`].
    pub(super) fn adopt(&mut self) -> Result<()> {
        let backends: Vec<(u32, Backend4)> = self
            .backend4
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::BACKEND4))?;
        let by_id: StdHashMap<u32, Backend4> = backends.into_iter().collect();
        let entries: Vec<(Svc4Key, SvcValue)> = self
            .svc4
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::SVC4))?;
        let mut ranges: StdHashMap<u32, Vec<(Ipv4Addr, u8)>> = StdHashMap::new();
        for k in self.srcrange4.keys() {
            let k = k.map_err(map_err(map_names::SRCRANGE4))?;
            // A key no agent writes (prefix outside 32..=64) is left for repair.
            if let Some((svc_id, range)) = range_of(&k) {
                ranges.entry(svc_id).or_default().push(range);
            }
        }
        for (k, v) in entries {
            if v.flags & SVC_FLAG_VIP != 0
                || (k.scope != SCOPE_EXTERNAL && k.scope != SCOPE_INTERNAL)
            {
                continue;
            }
            let fe = Frontend4 {
                vip: Ipv4Addr::from(k.vip),
                port: k.port,
                proto: k.proto,
            };
            let mut ids = Vec::with_capacity(usize::from(v.count));
            for slot in 1..=u32::from(v.count) {
                let key = SlotKey {
                    svc_id: v.svc_id,
                    slot,
                };
                if let Ok(s) = self.slots.get(&key, 0)
                    && by_id.contains_key(&s.backend_id)
                {
                    ids.push(s.backend_id);
                }
            }
            for id in &ids {
                let b = by_id[id];
                let key = BackendKey {
                    addr: Ipv4Addr::from(b.addr),
                    port: b.port,
                    proto: b.proto,
                };
                let e = self.backends.entry(key).or_insert(BackendSlot {
                    id: *id,
                    flags: b.flags,
                    refs: 0,
                });
                e.refs += 1;
                self.backend_keys.insert(*id, key);
            }
            self.slot_count += ids.len();
            if k.scope == SCOPE_EXTERNAL && has_marker(v.flags) {
                *self.vips.entry(fe.vip).or_default() += 1;
            }
            let label = self
                .labels
                .get(&v.svc_id, 0)
                .map(|l| l.as_str().to_string())
                .unwrap_or_default();
            let mut r = ranges.remove(&v.svc_id).unwrap_or_default();
            r.sort();
            self.table_mut(k.scope).insert(
                fe,
                ServiceMirror {
                    svc_id: v.svc_id,
                    backend_ids: ids,
                    affinity_timeout: v.affinity_timeout,
                    label,
                    flags: v.flags,
                    ranges: r,
                },
            );
        }
        let ids: Vec<u32> = self
            .services
            .values()
            .chain(self.internal.values())
            .map(|s| s.svc_id)
            .collect();
        self.svc_ids.rebuild(ids.into_iter());
        self.backend_ids.rebuild(by_id.keys().copied());
        Ok(())
    }

    /// Every frontend the maps hold, with its backends in slot order.
    pub fn services(&self) -> BTreeMap<Frontend4, ServiceState> {
        self.services
            .keys()
            .filter_map(|fe| Some((*fe, self.service(fe)?)))
            .collect()
    }

    /// One frontend's state, if the maps hold it.
    pub fn service(&self, fe: &Frontend4) -> Option<ServiceState> {
        let s = self.services.get(fe)?;
        let mut state = self.state_of(s);
        state.internal_backends = self
            .internal
            .get(fe)
            .map(|i| self.backends_of(&i.backend_ids));
        Some(state)
    }

    pub(super) fn table(&self, scope: u8) -> &BTreeMap<Frontend4, ServiceMirror> {
        if scope == SCOPE_INTERNAL {
            &self.internal
        } else {
            &self.services
        }
    }

    pub(super) fn table_mut(&mut self, scope: u8) -> &mut BTreeMap<Frontend4, ServiceMirror> {
        if scope == SCOPE_INTERNAL {
            &mut self.internal
        } else {
            &mut self.services
        }
    }

    pub(super) fn state_of(&self, s: &ServiceMirror) -> ServiceState {
        ServiceState {
            svc_id: s.svc_id,
            backends: self.backends_of(&s.backend_ids),
            affinity_timeout: s.affinity_timeout,
            label: s.label.clone(),
            flags: s.flags,
            internal_backends: None,
            source_ranges: s.ranges.clone(),
        }
    }

    pub(super) fn backends_of(&self, ids: &[u32]) -> Vec<Backend4Spec> {
        ids.iter()
            .filter_map(|id| {
                let k = self.backend_keys.get(id)?;
                let b = self.backends.get(k)?;
                Some(Backend4Spec {
                    addr: k.addr,
                    port: k.port,
                    flags: b.flags,
                })
            })
            .collect()
    }
}

/// Whether two backend lists hold the same backends (slot order aside).
pub(super) fn same_set(a: &[Backend4Spec], b: &[Backend4Spec]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// A backend that changes slot (1-based) in a frontend's slot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SlotMove {
    pub(super) backend_id: u32,
    pub(super) from: u32,
    pub(super) to: u32,
}

/// The slot order of a frontend's backends after a change from `old`
/// (backend ids in slot order) to the backends `want`, and the backends
/// that move. Session affinity remembers a client's backend with its slot,
/// so slots must move as little as possible: surviving backends keep their
/// slots, new backends fill the holes removed ones left (lowest first) and
/// then go at the end; holes left over are filled by moving backends from
/// the end (the fewest moves that keep slots 1..=count dense).
pub(super) fn slot_layout(old: &[u32], want: &[u32]) -> (Vec<u32>, Vec<SlotMove>) {
    let wanted: BTreeSet<u32> = want.iter().copied().collect();
    let mut seen = BTreeSet::new();
    // A backend named twice (maps edited by hand) keeps its first slot.
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|id| (wanted.contains(id) && seen.insert(*id)).then_some(*id))
        .collect();
    let mut added = want.iter().copied().filter(|id| !seen.contains(id));
    for s in slots.iter_mut().filter(|s| s.is_none()) {
        match added.next() {
            Some(id) => *s = Some(id),
            None => break,
        }
    }
    slots.extend(added.map(Some));
    let n = wanted.len();
    let mut moves = Vec::new();
    let mut hole = 0;
    for from in (n..slots.len()).rev() {
        let Some(id) = slots[from] else {
            continue;
        };
        while hole < n && slots[hole].is_some() {
            hole += 1;
        }
        if hole == n {
            break;
        }
        slots[hole] = Some(id);
        slots[from] = None;
        moves.push(SlotMove {
            backend_id: id,
            from: from as u32 + 1,
            to: hole as u32 + 1,
        });
    }
    slots.truncate(n);
    (slots.into_iter().flatten().collect(), moves)
}
