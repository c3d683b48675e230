//! The mirror of the load-balancing table: frontends, their backends in
//! slot order, and the ids they have in the maps. What the agent believes the
//! maps hold, read back from them on adoption ([`Dataplane::adopt`]) and
//! kept equal to them by every update (`update.rs`); the slot order that
//! keeps session affinity when backends come and go ([`slot_layout`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::IpAddr,
};

use proxy_common::{CT_DIR_REPLY, CT_DIR_SERVICE, IPPROTO_UDP, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL};

/// A service frontend: address, port, IP protocol number. Family-neutral,
/// as the whole table is: only the map codec (`maps.rs`) knows a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// Service address, of either family (the map codec writes it to the
    /// maps of its family).
    pub addr: IpAddr,
    /// Service port.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, proto_name(self.proto)),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, proto_name(self.proto)),
        }
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
pub struct BackendSpec {
    /// Backend address.
    pub addr: IpAddr,
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
    pub backends: Vec<BackendSpec>,
    /// Session affinity timeout, seconds (0: none).
    pub affinity_timeout: u32,
    /// Name for inspection (`namespace/name:port`).
    pub label: String,
    /// `SVC_FLAG_*` bits of the frontend entry.
    pub flags: u16,
    /// Backends of the internal-scope entry, when the frontend has one
    /// (`SVC_FLAG_TWO_SCOPES`: pods see these, outside clients the above).
    pub internal_backends: Option<Vec<BackendSpec>>,
    /// Source ranges (`loadBalancerSourceRanges`) as (network, prefix length).
    pub source_ranges: Vec<(IpAddr, u8)>,
}

/// Everything about one frontend: what [`Dataplane::upsert_frontend`] writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendSpec {
    /// Backends of the frontend entry: what traffic from anywhere sees (with
    /// a traffic policy Local, only this node's backends).
    pub backends: Vec<BackendSpec>,
    /// Backends for this node's pods when they differ from `backends`:
    /// written as a second, internal-scope entry.
    pub internal_backends: Option<Vec<BackendSpec>>,
    /// `SVC_FLAG_EXTERNAL`, `SVC_FLAG_LOCAL_ONLY`, `SVC_FLAG_NODE_PORT`,
    /// `SVC_FLAG_SOURCE_RANGES` (with an empty `source_ranges`: nobody is
    /// admitted). `SVC_FLAG_TWO_SCOPES` follows `internal_backends`.
    pub flags: u16,
    /// Admitted client ranges as (address, prefix length).
    pub source_ranges: Vec<(IpAddr, u8)>,
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
    pub(super) addr: IpAddr,
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
    pub(super) ranges: Vec<(IpAddr, u8)>,
}

/// Whether a frontend entry with `flags` gets a VIP marker (other ports of
/// its address are rejected): cluster IPs only, as kube-proxy's nftables
/// `cluster-ips` set holds only cluster IPs (its `cluster-ips-check` chain
/// rejects their undefined ports). Node addresses, external IPs and LB IPs
/// get none: their other ports may be served by the host or by whatever
/// else has that address.
pub(super) fn has_marker(flags: u16) -> bool {
    flags & SVC_FLAG_EXTERNAL == 0
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

/// Whether two backend lists hold the same backends (slot order aside).
pub(super) fn same_set(a: &[BackendSpec], b: &[BackendSpec]) -> bool {
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

/// How full one family's maps are: each family has its own service and
/// backend map, each of the size of its knob (`MapSizes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct FamilyUse {
    /// Entries of the family's backend map.
    pub(super) backends: usize,
    /// Entries of the family's service map: frontends of both scopes and
    /// VIP markers.
    pub(super) services: usize,
}

/// The index of `addr`'s family in [`Table::family`].
pub(super) fn family_index(addr: IpAddr) -> usize {
    usize::from(addr.is_ipv6())
}

/// The mirror: every frontend of both scopes, the backends they name and
/// their reference counts, the VIPs with a marker, and the ids in use.
///
/// The collections are changed through the methods below, which keep
/// [`Table::family`] counting what each family's maps hold.
#[derive(Default)]
pub(super) struct Table {
    pub(super) services: BTreeMap<Frontend, ServiceMirror>,
    /// Internal-scope entries of frontends with two scopes.
    pub(super) internal: BTreeMap<Frontend, ServiceMirror>,
    pub(super) backends: StdHashMap<BackendKey, BackendSlot>,
    pub(super) backend_keys: StdHashMap<u32, BackendKey>,
    pub(super) vips: StdHashMap<IpAddr, u32>,
    /// Use of each family's maps, IPv4 first ([`family_index`]).
    pub(super) family: [FamilyUse; 2],
    pub(super) slot_count: usize,
    pub(super) svc_ids: Ids,
    pub(super) backend_ids: Ids,
    /// UDP backends removed from a frontend (or with it) whose conntrack
    /// entries [`Dataplane::clear_stale_udp_flows`] has not deleted yet.
    pub(super) stale_udp: BTreeSet<StaleFlow>,
}

impl Table {
    /// Records `fe`'s entry of `scope`; the one it replaces, if any.
    pub(super) fn insert_mirror(
        &mut self,
        scope: u8,
        fe: Frontend,
        mirror: ServiceMirror,
    ) -> Option<ServiceMirror> {
        let f = family_index(fe.addr);
        let old = self.scope_mut(scope).insert(fe, mirror);
        if old.is_none() {
            self.family[f].services += 1;
        }
        old
    }

    /// Forgets `fe`'s entry of `scope`.
    pub(super) fn remove_mirror(&mut self, scope: u8, fe: &Frontend) -> Option<ServiceMirror> {
        let old = self.scope_mut(scope).remove(fe);
        if old.is_some() {
            self.family[family_index(fe.addr)].services -= 1;
        }
        old
    }

    /// One frontend more with a marker on `vip` (the first one writes it).
    pub(super) fn add_marker(&mut self, vip: IpAddr) {
        let n = self.vips.entry(vip).or_default();
        if *n == 0 {
            self.family[family_index(vip)].services += 1;
        }
        *n += 1;
    }

    /// One frontend fewer with a marker on `vip`; whether it was the last
    /// (the marker is to go).
    pub(super) fn remove_marker(&mut self, vip: IpAddr) -> bool {
        let remaining = self.vips.get(&vip).copied().unwrap_or(1).saturating_sub(1);
        if remaining == 0 {
            if self.vips.remove(&vip).is_some() {
                self.family[family_index(vip)].services -= 1;
            }
            true
        } else {
            self.vips.insert(vip, remaining);
            false
        }
    }

    /// Records backend `key` under `slot.id`, or takes one more reference
    /// to it when it is there; its slot.
    pub(super) fn reference_backend(
        &mut self,
        key: BackendKey,
        slot: BackendSlot,
    ) -> &mut BackendSlot {
        let f = family_index(key.addr);
        let id = slot.id;
        let mut added = false;
        let e = self.backends.entry(key).or_insert_with(|| {
            added = true;
            slot
        });
        e.refs += 1;
        if added {
            self.family[f].backends += 1;
            self.backend_keys.insert(id, key);
        }
        e
    }

    /// Forgets backend `key` (no slot names it any more).
    pub(super) fn remove_backend(&mut self, key: &BackendKey) {
        if let Some(slot) = self.backends.remove(key) {
            self.backend_keys.remove(&slot.id);
            self.family[family_index(key.addr)].backends -= 1;
        }
    }

    pub(super) fn scope(&self, scope: u8) -> &BTreeMap<Frontend, ServiceMirror> {
        if scope == SCOPE_INTERNAL {
            &self.internal
        } else {
            &self.services
        }
    }

    fn scope_mut(&mut self, scope: u8) -> &mut BTreeMap<Frontend, ServiceMirror> {
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

    pub(super) fn backends_of(&self, ids: &[u32]) -> Vec<BackendSpec> {
        ids.iter()
            .filter_map(|id| {
                let k = self.backend_keys.get(id)?;
                let b = self.backends.get(k)?;
                Some(BackendSpec {
                    addr: k.addr,
                    port: k.port,
                    flags: b.flags,
                })
            })
            .collect()
    }

    /// Notes that backends `gone` left service id `svc_id` of frontend `fe`
    /// while `kept` are in it: for a UDP frontend, the flows to the ones
    /// that left are stale, and those to the ones in it (again) are not.
    pub(super) fn note_udp_change(
        &mut self,
        fe: &Frontend,
        svc_id: u32,
        gone: &[u32],
        kept: &[u32],
    ) {
        if fe.proto != IPPROTO_UDP {
            return;
        }
        let frontend = (fe.addr, fe.port);
        let keys = &self.backend_keys;
        let addr_of = |id: &u32| keys.get(id).map(|k| (k.addr, k.port));
        let kept: BTreeSet<(IpAddr, u16)> = kept.iter().filter_map(addr_of).collect();
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
}

/// A UDP backend that left one scope of a frontend: the flows of that
/// frontend's service id to it are stale. The frontend and the backend's
/// address are kept besides the ids, so that an id handed out again meanwhile
/// never names someone else's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct StaleFlow {
    pub(super) svc_id: u32,
    pub(super) backend_id: u32,
    pub(super) frontend: (IpAddr, u16),
    pub(super) backend: (IpAddr, u16),
}

impl StaleFlow {
    /// What a UDP conntrack entry of either family says about its flow, in
    /// either direction: the entry's direction, the source and destination
    /// of its key, the address and port its value writes, and its ids.
    pub(super) fn of_entry(
        dir: u8,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        nat: (IpAddr, u16),
        svc_id: u32,
        backend_id: u32,
    ) -> Option<Self> {
        let (frontend, backend) = match dir {
            CT_DIR_SERVICE => (dst, nat),
            CT_DIR_REPLY => (nat, src),
            _ => return None,
        };
        Some(Self {
            svc_id,
            backend_id,
            frontend,
            backend,
        })
    }
}
