//! The datapath from userspace: loads the eBPF object, sizes and pins its
//! maps, attaches the programs to interfaces, and offers typed, idempotent
//! operations on services and backends.
//!
//! Everything lives under one bpffs folder (`--bpffs`, default
//! `/sys/fs/bpf/svcnat`): maps as `<dir>/<MAP NAME>`, TCX links as
//! `<dir>/links/<ifindex>-<ifname>-<ingress|egress>`, and a folder
//! `layout-v<N>` naming the [`LAYOUT_VERSION`] of the maps. Pins outlive the agent, so the programs keep running
//! while it is stopped, and a new agent adopts the maps (their contents are
//! read back into the mirror) and swaps its programs into the existing links
//! atomically: a restart changes nothing on the wire.
//!
//! Update order keeps the datapath consistent at every instant: backends are
//! written before the slots that name them, slots before the count that makes
//! them reachable; a count is lowered before its slots are deleted, and a
//! backend is deleted only when no slot names it any more. A backend keeps
//! its slot while it stays; when removals leave holes, backends from the
//! end move into them, and their session affinity entries are rewritten to
//! the new slot while both slots name the backend.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    ffi::CStr,
    fs, io,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, lpm_trie::LpmTrie},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend4, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_SNAT, Ct4Key, CtValue,
    IPPROTO_UDP, LAYOUT_VERSION, NodeAddr4, Reason, RevNat4, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    STAT_CT_CREATED, SVC_FLAG_NODE_PORT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SVC_FLAG_VIP,
    SlotKey, SlotValue, Snat4Value, SrcRange4, StatValue, Svc4Key, SvcLabel, SvcValue,
    default_sizes, map_names, program_names,
};

/// Default pin folder.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/svcnat";

/// Errors of the dataplane. Each names what failed; none is matched by text.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The agent was built without its eBPF object.
    #[error(
        "the eBPF object is not embedded in this build: run `cargo xtask build-ebpf --release` and rebuild"
    )]
    NoObject,
    /// The pin folder holds maps of another layout.
    #[error(
        "pinned maps in {dir} have layout version {found}, this agent uses {expected}: run `svcnat cleanup --bpffs {dir}` (this drops established flows) or use the agent version that pinned them"
    )]
    Layout {
        /// The pin folder.
        dir: PathBuf,
        /// Version found in its `layout` file.
        found: String,
        /// Version of this build.
        expected: u32,
    },
    /// Loading the object or a program failed (verifier, missing BTF, ...).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program operation failed.
    #[error("program {name}: {source}")]
    Program {
        /// Program or interface concerned.
        name: String,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// The map cannot take what the operation needs.
    #[error("map {map} is full: {needed} more entries needed, {free} free of {capacity}")]
    MapFull {
        /// Map name.
        map: &'static str,
        /// Entries the operation needs.
        needed: usize,
        /// Entries still free.
        free: usize,
        /// Map size.
        capacity: u32,
    },
    /// A service has more backends than one service can address.
    #[error("{count} backends exceed the {max} a service can have")]
    TooManyBackends {
        /// Backends asked for.
        count: usize,
        /// Limit (the count field is 16 bits).
        max: usize,
    },
    /// Filesystem operation on the pin folder.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Linking a program to an interface failed.
    #[error("interface {ifname}: {what}")]
    Link {
        /// Interface.
        ifname: String,
        /// What failed.
        what: String,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Map sizes, set at load time. A map that already exists pinned keeps its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Service frontends (+ one per VIP).
    pub services: u32,
    /// Backend slots over all services.
    pub slots: u32,
    /// Distinct backends.
    pub backends: u32,
    /// Reverse NAT entries.
    pub revnat: u32,
    /// Conntrack entries (two per flow).
    pub conntrack: u32,
    /// Fragment trains in flight.
    pub fragments: u32,
    /// Source NAT entries (two per node-port flow to a backend on another
    /// node).
    pub snat: u32,
    /// Node interface addresses.
    pub node_addresses: u32,
    /// Session affinity entries (one per client and service).
    pub affinity: u32,
    /// Source ranges (`loadBalancerSourceRanges`) over all services.
    pub source_ranges: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: default_sizes::SVC4,
            slots: default_sizes::SLOTS,
            backends: default_sizes::BACKEND4,
            revnat: default_sizes::REVNAT4,
            conntrack: default_sizes::CT4,
            fragments: default_sizes::FRAG4,
            snat: default_sizes::SNAT4,
            node_addresses: default_sizes::NODE4,
            affinity: default_sizes::AFFINITY4,
            source_ranges: default_sizes::SRCRANGE4,
        }
    }
}

/// How to open the dataplane.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Pin folder on a bpffs.
    pub bpffs: PathBuf,
    /// Map sizes for maps created now.
    pub sizes: MapSizes,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            bpffs: PathBuf::from(DEFAULT_BPFFS),
            sizes: MapSizes::default(),
        }
    }
}

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
struct BackendKey {
    addr: Ipv4Addr,
    port: u16,
    proto: u8,
}

#[derive(Clone, Copy, Debug)]
struct BackendSlot {
    id: u32,
    flags: u8,
    refs: u32,
}

struct ServiceMirror {
    svc_id: u32,
    backend_ids: Vec<u32>,
    affinity_timeout: u32,
    label: String,
    flags: u16,
    ranges: Vec<(Ipv4Addr, u8)>,
}

/// Whether a frontend entry with `flags` gets a VIP marker: external-scope
/// frontends on service addresses, not node addresses (other ports of the
/// node must stay reachable).
fn has_marker(flags: u16) -> bool {
    flags & SVC_FLAG_NODE_PORT == 0
}

/// Id allocator: smallest freed id first, then the next unused one. Id 0 is
/// never handed out.
#[derive(Default)]
struct Ids {
    next: u32,
    free: Vec<u32>,
}

impl Ids {
    fn take(&mut self) -> u32 {
        if let Some(id) = self.free.pop() {
            return id;
        }
        self.next += 1;
        self.next
    }
    fn give(&mut self, id: u32) {
        self.free.push(id);
    }
    fn rebuild(&mut self, used: impl Iterator<Item = u32>) {
        let mut used: Vec<u32> = used.collect();
        used.sort_unstable();
        self.next = used.last().copied().unwrap_or(0);
        self.free = (1..self.next)
            .filter(|i| used.binary_search(i).is_err())
            .rev()
            .collect();
    }
}

/// The loaded datapath and a mirror of what its maps hold.
pub struct Dataplane {
    dir: PathBuf,
    ebpf: Ebpf,
    svc4: HashMap<MapData, Svc4Key, SvcValue>,
    slots: HashMap<MapData, SlotKey, SlotValue>,
    backend4: HashMap<MapData, u32, Backend4>,
    revnat4: HashMap<MapData, u32, RevNat4>,
    labels: HashMap<MapData, u32, SvcLabel>,
    stats: PerCpuArray<MapData, StatValue>,
    node4: HashMap<MapData, u32, NodeAddr4>,
    srcrange4: LpmTrie<MapData, SrcRange4, u32>,
    affinity4: HashMap<MapData, AffinityKey, AffinityValue>,
    ct4: HashMap<MapData, Ct4Key, CtValue>,
    snat4: HashMap<MapData, Ct4Key, Snat4Value>,
    capacity: MapSizes,
    services: BTreeMap<Frontend4, ServiceMirror>,
    /// Internal-scope entries of frontends with two scopes.
    internal: BTreeMap<Frontend4, ServiceMirror>,
    backends: StdHashMap<BackendKey, BackendSlot>,
    backend_keys: StdHashMap<u32, BackendKey>,
    vips: StdHashMap<Ipv4Addr, u32>,
    slot_count: usize,
    svc_ids: Ids,
    backend_ids: Ids,
    attached: BTreeSet<(u32, String)>,
    node_attached: BTreeSet<(u32, String)>,
    /// Layout the pinned maps are being migrated from (until
    /// [`Dataplane::finish_migration`]).
    pending_migration: Option<u32>,
    /// UDP backends removed from a frontend (or with it) whose conntrack
    /// entries [`Dataplane::clear_stale_udp_flows`] has not deleted yet.
    stale_udp: BTreeSet<StaleFlow>,
    /// Conntrack entries deleted by this dataplane (for the eviction count).
    ct_removed: u64,
}

/// A UDP backend that left one scope of a frontend: the flows of that
/// frontend's service id to it are stale. The frontend and the backend's
/// address are kept besides the ids, so that an id handed out again meanwhile
/// never names someone else's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StaleFlow {
    svc_id: u32,
    backend_id: u32,
    frontend: ([u8; 4], u16),
    backend: ([u8; 4], u16),
}

impl StaleFlow {
    /// What a UDP conntrack entry says about its flow, in either direction.
    fn of_entry(k: &Ct4Key, v: &CtValue) -> Option<Self> {
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

/// What one [`Dataplane::attach_matching`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachReport {
    /// Interfaces newly attached (fresh links).
    pub attached: Vec<String>,
    /// Interfaces whose pinned links now run this agent's programs.
    pub adopted: Vec<String>,
    /// Pins removed because their interface is gone.
    pub removed: Vec<String>,
    /// Interfaces that could not be attached, with the reason.
    pub failed: Vec<(String, String)>,
}

impl Dataplane {
    /// Loads the embedded object, adopting maps already pinned under
    /// `cfg.bpffs` (their contents are kept and read back) or creating and
    /// pinning new ones. Programs are loaded but not attached.
    pub fn open(cfg: &DataplaneConfig) -> Result<Self> {
        Self::open_object(cfg, crate::EBPF_OBJECT)
    }

    /// [`Dataplane::open`] with an explicit object (tests, tools).
    pub fn open_object(cfg: &DataplaneConfig, object: &[u8]) -> Result<Self> {
        if object.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let dir = cfg.bpffs.clone();
        fs::create_dir_all(dir.join("links")).map_err(io_err(&dir))?;
        let migrate_from = check_layout(&dir)?;
        if let Some(from) = migrate_from {
            crate::migrate::prepare(&dir, from)?;
        }
        let pins: Vec<(&str, PathBuf)> = map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect();
        let s = cfg.sizes;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::SVC4, s.services)
            .map_max_entries(map_names::SLOTS, s.slots)
            .map_max_entries(map_names::BACKEND4, s.backends)
            .map_max_entries(map_names::REVNAT4, s.revnat)
            .map_max_entries(map_names::LABELS, s.revnat)
            .map_max_entries(map_names::CT4, s.conntrack)
            .map_max_entries(map_names::FRAG4, s.fragments)
            .map_max_entries(map_names::SNAT4, s.snat)
            .map_max_entries(map_names::NODE4, s.node_addresses)
            .map_max_entries(map_names::AFFINITY4, s.affinity)
            .map_max_entries(map_names::SRCRANGE4, s.source_ranges);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        let layout = dir.join(layout_marker(LAYOUT_VERSION));
        match fs::create_dir(&layout) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&layout)(e)),
            _ => {}
        }
        for name in [
            program_names::TC_POD_INGRESS,
            program_names::TC_POD_EGRESS,
            program_names::TC_NODE_EGRESS,
        ] {
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| DataplaneError::Program {
                    name: name.into(),
                    source,
                })?;
        }
        program_mut::<Xdp>(&mut ebpf, program_names::XDP_NODE)?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: program_names::XDP_NODE.into(),
                source,
            })?;
        let node4 = HashMap::try_from(take(&mut ebpf, map_names::NODE4)?)
            .map_err(map_err(map_names::NODE4))?;
        let srcrange4 = LpmTrie::try_from(take(&mut ebpf, map_names::SRCRANGE4)?)
            .map_err(map_err(map_names::SRCRANGE4))?;
        let affinity4 = HashMap::try_from(take(&mut ebpf, map_names::AFFINITY4)?)
            .map_err(map_err(map_names::AFFINITY4))?;
        let svc4 = HashMap::try_from(take(&mut ebpf, map_names::SVC4)?)
            .map_err(map_err(map_names::SVC4))?;
        let slots = HashMap::try_from(take(&mut ebpf, map_names::SLOTS)?)
            .map_err(map_err(map_names::SLOTS))?;
        let backend4 = HashMap::try_from(take(&mut ebpf, map_names::BACKEND4)?)
            .map_err(map_err(map_names::BACKEND4))?;
        let revnat4 = HashMap::try_from(take(&mut ebpf, map_names::REVNAT4)?)
            .map_err(map_err(map_names::REVNAT4))?;
        let labels = HashMap::try_from(take(&mut ebpf, map_names::LABELS)?)
            .map_err(map_err(map_names::LABELS))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, map_names::STATS)?)
            .map_err(map_err(map_names::STATS))?;
        let ct4 =
            HashMap::try_from(take(&mut ebpf, map_names::CT4)?).map_err(map_err(map_names::CT4))?;
        let snat4 = HashMap::try_from(take(&mut ebpf, map_names::SNAT4)?)
            .map_err(map_err(map_names::SNAT4))?;
        let capacity = MapSizes {
            services: pinned_max_entries(&dir, map_names::SVC4)?,
            slots: pinned_max_entries(&dir, map_names::SLOTS)?,
            backends: pinned_max_entries(&dir, map_names::BACKEND4)?,
            revnat: pinned_max_entries(&dir, map_names::REVNAT4)?,
            conntrack: pinned_max_entries(&dir, map_names::CT4)?,
            fragments: pinned_max_entries(&dir, map_names::FRAG4)?,
            snat: pinned_max_entries(&dir, map_names::SNAT4)?,
            node_addresses: pinned_max_entries(&dir, map_names::NODE4)?,
            affinity: pinned_max_entries(&dir, map_names::AFFINITY4)?,
            source_ranges: pinned_max_entries(&dir, map_names::SRCRANGE4)?,
        };
        let mut dp = Self {
            dir,
            ebpf,
            svc4,
            slots,
            backend4,
            revnat4,
            labels,
            stats,
            node4,
            srcrange4,
            affinity4,
            ct4,
            snat4,
            capacity,
            services: BTreeMap::new(),
            internal: BTreeMap::new(),
            backends: StdHashMap::new(),
            backend_keys: StdHashMap::new(),
            vips: StdHashMap::new(),
            slot_count: 0,
            svc_ids: Ids::default(),
            backend_ids: Ids::default(),
            attached: BTreeSet::new(),
            node_attached: BTreeSet::new(),
            pending_migration: None,
            stale_udp: BTreeSet::new(),
            ct_removed: 0,
        };
        dp.adopt()?;
        if let Some(from) = migrate_from {
            // Step 1 of the migration: new-layout entries next to the old
            // ones, before any of our programs runs.
            let r = crate::migrate::migrate(&dp.dir, from, false)?;
            tracing::info!(
                from,
                to = LAYOUT_VERSION,
                rekeyed = r.rekeyed,
                lost = r.lost,
                "migrating pinned maps in place; finished once our programs are attached"
            );
            dp.pending_migration = Some(from);
        }
        Ok(dp)
    }

    /// Finishes a migration from an older layout, once this agent's
    /// programs have replaced the old ones in the pinned links: migrates the
    /// flows the old programs created meanwhile, removes the entries only
    /// they used, and the old layout marker. `None` when nothing was
    /// pending.
    pub fn finish_migration(&mut self) -> Result<Option<crate::migrate::MigrationReport>> {
        let Some(from) = self.pending_migration else {
            return Ok(None);
        };
        let report = crate::migrate::migrate(&self.dir, from, true)?;
        let marker = self.dir.join(layout_marker(from));
        match fs::remove_dir(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&marker)(e)),
            _ => {}
        }
        self.pending_migration = None;
        Ok(Some(report))
    }

    /// The pin folder.
    pub fn bpffs(&self) -> &Path {
        &self.dir
    }

    /// Sizes of the maps as loaded (pinned maps keep the size they had).
    pub fn capacity(&self) -> MapSizes {
        self.capacity
    }

    /// Reads what the pinned maps hold into the mirror, without changing
    /// them. Entries that do not hang together (a slot naming a missing
    /// backend, a backend no slot names) are left for [`Self::repair`].
    fn adopt(&mut self) -> Result<()> {
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

    /// Makes the maps equal to the mirror: rewrites every frontend, slot,
    /// backend, source range and VIP marker the mirror holds and deletes what
    /// it does not. Repairs drift such as an entry deleted by hand. Returns
    /// how many map entries it had to write or delete.
    pub fn repair(&mut self) -> Result<usize> {
        let mut fixed = 0;
        // Source ranges: an LPM lookup matches prefixes, not exact keys, so
        // compare the sets of keys.
        let want_ranges: BTreeSet<RangeId> = self
            .services
            .values()
            .chain(self.internal.values())
            .flat_map(|s| s.ranges.iter().map(|r| range_id(&range_key(s.svc_id, *r))))
            .collect();
        let have_ranges: Vec<aya::maps::lpm_trie::Key<SrcRange4>> = self
            .srcrange4
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::SRCRANGE4))?;
        let have_ids: BTreeSet<RangeId> = have_ranges.iter().map(range_id).collect();
        for id in want_ranges.difference(&have_ids) {
            self.srcrange4
                .insert(&range_key_of(*id), 1, 0)
                .map_err(map_err(map_names::SRCRANGE4))?;
            fixed += 1;
        }
        // Backends first, then slots, then frontends (the safe order).
        for (key, b) in &self.backends {
            let want = Backend4 {
                addr: key.addr.octets(),
                port: key.port,
                proto: key.proto,
                flags: b.flags,
            };
            if self.backend4.get(&b.id, 0).ok() != Some(want) {
                self.backend4
                    .insert(b.id, want, 0)
                    .map_err(map_err(map_names::BACKEND4))?;
                fixed += 1;
            }
        }
        for (scope, fe, s) in self
            .services
            .iter()
            .map(|(f, s)| (SCOPE_EXTERNAL, f, s))
            .chain(self.internal.iter().map(|(f, s)| (SCOPE_INTERNAL, f, s)))
        {
            for (i, id) in s.backend_ids.iter().enumerate() {
                let k = SlotKey {
                    svc_id: s.svc_id,
                    slot: i as u32 + 1,
                };
                let v = SlotValue { backend_id: *id };
                if self.slots.get(&k, 0).ok() != Some(v) {
                    self.slots
                        .insert(k, v, 0)
                        .map_err(map_err(map_names::SLOTS))?;
                    fixed += 1;
                }
            }
            let rv = RevNat4 {
                vip: fe.vip.octets(),
                port: fe.port,
                proto: fe.proto,
                pad: 0,
            };
            if self.revnat4.get(&s.svc_id, 0).ok() != Some(rv) {
                self.revnat4
                    .insert(s.svc_id, rv, 0)
                    .map_err(map_err(map_names::REVNAT4))?;
                fixed += 1;
            }
            let label = SvcLabel::new(&s.label);
            if self.labels.get(&s.svc_id, 0).ok() != Some(label) {
                self.labels
                    .insert(s.svc_id, label, 0)
                    .map_err(map_err(map_names::LABELS))?;
                fixed += 1;
            }
            let (k, v) = svc_entry(fe, scope, s);
            if self.svc4.get(&k, 0).ok() != Some(v) {
                self.svc4
                    .insert(k, v, 0)
                    .map_err(map_err(map_names::SVC4))?;
                fixed += 1;
            }
        }
        for vip in self.vips.keys() {
            let (k, v) = vip_marker(*vip);
            if self.svc4.get(&k, 0).ok() != Some(v) {
                self.svc4
                    .insert(k, v, 0)
                    .map_err(map_err(map_names::SVC4))?;
                fixed += 1;
            }
        }
        // Deletions last: what the maps hold and the mirror does not.
        let (services, internal, vips) = (&self.services, &self.internal, &self.vips);
        fixed += prune(&mut self.svc4, map_names::SVC4, |k| {
            if k.port == 0 && k.proto == 0 {
                return vips.contains_key(&Ipv4Addr::from(k.vip));
            }
            let fe = Frontend4 {
                vip: Ipv4Addr::from(k.vip),
                port: k.port,
                proto: k.proto,
            };
            (k.scope == SCOPE_EXTERNAL && services.contains_key(&fe))
                || (k.scope == SCOPE_INTERNAL && internal.contains_key(&fe))
        })?;
        let by_svc: StdHashMap<u32, usize> = self
            .services
            .values()
            .chain(self.internal.values())
            .map(|s| (s.svc_id, s.backend_ids.len()))
            .collect();
        fixed += prune(&mut self.slots, map_names::SLOTS, |k| {
            by_svc
                .get(&k.svc_id)
                .is_some_and(|n| k.slot >= 1 && k.slot as usize <= *n)
        })?;
        fixed += prune(&mut self.revnat4, map_names::REVNAT4, |k| {
            by_svc.contains_key(k)
        })?;
        fixed += prune(&mut self.labels, map_names::LABELS, |k| {
            by_svc.contains_key(k)
        })?;
        let backend_keys = &self.backend_keys;
        fixed += prune(&mut self.backend4, map_names::BACKEND4, |k| {
            backend_keys.contains_key(k)
        })?;
        for k in have_ranges
            .iter()
            .filter(|k| !want_ranges.contains(&range_id(k)))
        {
            ignore_missing(self.srcrange4.remove(k)).map_err(map_err(map_names::SRCRANGE4))?;
            fixed += 1;
        }
        Ok(fixed)
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

    fn table(&self, scope: u8) -> &BTreeMap<Frontend4, ServiceMirror> {
        if scope == SCOPE_INTERNAL {
            &self.internal
        } else {
            &self.services
        }
    }

    fn table_mut(&mut self, scope: u8) -> &mut BTreeMap<Frontend4, ServiceMirror> {
        if scope == SCOPE_INTERNAL {
            &mut self.internal
        } else {
            &mut self.services
        }
    }

    fn state_of(&self, s: &ServiceMirror) -> ServiceState {
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

    fn backends_of(&self, ids: &[u32]) -> Vec<Backend4Spec> {
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

    /// Makes the maps hold `fe` with exactly `backends` (duplicates are
    /// removed). A new frontend gets them in this slot order; a changed one
    /// keeps its surviving backends in their slots, so that session
    /// affinity survives other backends coming and going. An empty list keeps the frontend and makes
    /// the datapath reject its traffic. Idempotent. On error the maps are
    /// left consistent: either unchanged or fully updated for the parts
    /// written. A plain frontend: no policy flags, one scope.
    pub fn upsert_service(
        &mut self,
        fe: Frontend4,
        backends: &[Backend4Spec],
        opts: &ServiceOpts,
    ) -> Result<Upsert> {
        self.upsert_frontend(
            fe,
            &FrontendSpec {
                backends: backends.to_vec(),
                opts: opts.clone(),
                ..FrontendSpec::default()
            },
        )
    }

    /// Makes the maps hold `fe` as `spec` says: the frontend entry with its
    /// flags, backends and source ranges, and the internal-scope entry when
    /// `spec.internal_backends` is set (written before the flag that sends
    /// pods to it, deleted after). Idempotent; same consistency as
    /// [`Self::upsert_service`].
    pub fn upsert_frontend(&mut self, fe: Frontend4, spec: &FrontendSpec) -> Result<Upsert> {
        let mut flags = spec.flags & !(SVC_FLAG_VIP | SVC_FLAG_TWO_SCOPES);
        let mut changed = false;
        if let Some(internal) = &spec.internal_backends {
            flags |= SVC_FLAG_TWO_SCOPES;
            let r = self.upsert_scoped(
                fe,
                SCOPE_INTERNAL,
                internal,
                &spec.opts,
                flags & !(SVC_FLAG_TWO_SCOPES | SVC_FLAG_SOURCE_RANGES),
                &[],
            )?;
            changed |= r != Upsert::Unchanged;
        }
        // Normalized, so that the mirror equals what adoption reads back.
        let mut ranges: Vec<(Ipv4Addr, u8)> = spec
            .source_ranges
            .iter()
            .map(|r| normalize_range(*r))
            .collect();
        ranges.sort();
        ranges.dedup();
        let r = self.upsert_scoped(
            fe,
            SCOPE_EXTERNAL,
            &spec.backends,
            &spec.opts,
            flags,
            &ranges,
        )?;
        if spec.internal_backends.is_none() && self.internal.contains_key(&fe) {
            // Pods' flows to backends the frontend entry still has stay.
            let kept = self
                .services
                .get(&fe)
                .map(|s| s.backend_ids.clone())
                .unwrap_or_default();
            self.delete_scoped(&fe, SCOPE_INTERNAL, &kept)?;
            changed = true;
        }
        Ok(match r {
            Upsert::Unchanged if changed => Upsert::Updated,
            other => other,
        })
    }

    fn upsert_scoped(
        &mut self,
        fe: Frontend4,
        scope: u8,
        backends: &[Backend4Spec],
        opts: &ServiceOpts,
        flags: u16,
        ranges: &[(Ipv4Addr, u8)],
    ) -> Result<Upsert> {
        let affinity_timeout = opts.affinity_timeout;
        let mut want: Vec<Backend4Spec> = Vec::with_capacity(backends.len());
        for b in backends {
            if !want.iter().any(|w| w.addr == b.addr && w.port == b.port) {
                want.push(*b);
            }
        }
        if want.len() > usize::from(u16::MAX) {
            return Err(DataplaneError::TooManyBackends {
                count: want.len(),
                max: usize::from(u16::MAX),
            });
        }
        if let Some(cur) = self.table(scope).get(&fe)
            && same_set(&self.backends_of(&cur.backend_ids), &want)
            && cur.affinity_timeout == affinity_timeout
            && cur.label == opts.label
            && cur.flags == flags
            && cur.ranges == ranges
        {
            return Ok(Upsert::Unchanged);
        }
        self.check_capacity(&fe, scope, &want)?;

        // 1. Backends: new ones written, changed flags rewritten.
        let mut ids = Vec::with_capacity(want.len());
        let mut taken = Vec::new();
        for b in &want {
            let key = BackendKey {
                addr: b.addr,
                port: b.port,
                proto: fe.proto,
            };
            let value = Backend4 {
                addr: b.addr.octets(),
                port: b.port,
                proto: fe.proto,
                flags: b.flags,
            };
            let id = match self.backends.get_mut(&key) {
                Some(slot) => {
                    if slot.flags != b.flags {
                        self.backend4
                            .insert(slot.id, value, 0)
                            .map_err(map_err(map_names::BACKEND4))?;
                        slot.flags = b.flags;
                    }
                    slot.id
                }
                None => {
                    let id = self.backend_ids.take();
                    if let Err(e) = self.backend4.insert(id, value, 0) {
                        self.backend_ids.give(id);
                        self.release_backends(&taken)?;
                        return Err(map_err(map_names::BACKEND4)(e));
                    }
                    self.backends.insert(
                        key,
                        BackendSlot {
                            id,
                            flags: b.flags,
                            refs: 0,
                        },
                    );
                    self.backend_keys.insert(id, key);
                    id
                }
            };
            // Count the reference now so a failure below releases it.
            if let Some(slot) = self.backends.get_mut(&key) {
                slot.refs += 1;
            }
            taken.push(id);
            ids.push(id);
        }

        let cur = self.table(scope).get(&fe);
        let created = cur.is_none();
        let old_affinity = cur.map_or(0, |s| s.affinity_timeout);
        let (svc_id, old_ids, old_label, old_flags, old_ranges) = match cur {
            Some(s) => (
                s.svc_id,
                s.backend_ids.clone(),
                Some(s.label.clone()),
                Some(s.flags),
                s.ranges.clone(),
            ),
            None => (self.svc_ids.take(), Vec::new(), None, None, Vec::new()),
        };
        // Surviving backends keep their slots (session affinity names a
        // slot); see `slot_layout`.
        let (ids, moves) = slot_layout(&old_ids, &ids);
        let mirror = ServiceMirror {
            svc_id,
            backend_ids: ids.clone(),
            affinity_timeout,
            label: opts.label.clone(),
            flags,
            ranges: ranges.to_vec(),
        };
        // Affinity entries follow a moved backend (entries of a service
        // whose affinity is just turned on or off need no care).
        let moves = if old_affinity != 0 && affinity_timeout != 0 {
            moves
        } else {
            Vec::new()
        };
        let result = self
            .write_service(&fe, scope, &mirror, &old_ids, &old_ranges, created, &moves)
            .and_then(|()| {
                if old_label.as_deref() != Some(opts.label.as_str()) {
                    self.labels
                        .insert(svc_id, SvcLabel::new(&opts.label), 0)
                        .map_err(map_err(map_names::LABELS))?;
                }
                Ok(())
            });
        if let Err(e) = result {
            if created {
                self.svc_ids.give(svc_id);
            }
            self.release_backends(&taken)?;
            return Err(e);
        }
        self.slot_count = self.slot_count + ids.len() - old_ids.len();
        self.table_mut(scope).insert(fe, mirror);
        self.note_udp_change(&fe, svc_id, &old_ids, &ids);
        if scope == SCOPE_EXTERNAL {
            let had = old_flags.is_some_and(has_marker);
            if has_marker(flags) && !had {
                *self.vips.entry(fe.vip).or_default() += 1;
                let (k, v) = vip_marker(fe.vip);
                self.svc4
                    .insert(k, v, 0)
                    .map_err(map_err(map_names::SVC4))?;
            } else if had && !has_marker(flags) {
                self.drop_marker(fe.vip)?;
            }
        }
        // 4. Backends no slot names any more go last.
        self.release_backends(&old_ids)?;
        // Affinity turned off: forget the clients, so that turning it on
        // again starts afresh.
        if old_affinity != 0 && affinity_timeout == 0 {
            self.flush_affinity(svc_id)?;
        }
        Ok(if created {
            Upsert::Created
        } else {
            Upsert::Updated
        })
    }

    /// Slots, reverse NAT, source ranges and the frontend entry, in the safe
    /// order. The affinity entries of each moved backend (`moves`: backend
    /// id, old slot, new slot) are rewritten to its new slot while both
    /// slots name it: after the new slot is written, before the count that
    /// hides the old one is lowered.
    #[expect(
        clippy::too_many_arguments,
        reason = "one caller; the parts of one update"
    )]
    fn write_service(
        &mut self,
        fe: &Frontend4,
        scope: u8,
        s: &ServiceMirror,
        old_ids: &[u32],
        old_ranges: &[(Ipv4Addr, u8)],
        created: bool,
        moves: &[SlotMove],
    ) -> Result<()> {
        // 2. Slots that change, before the count that exposes them.
        for (i, id) in s.backend_ids.iter().enumerate() {
            if old_ids.get(i) != Some(id) {
                let k = SlotKey {
                    svc_id: s.svc_id,
                    slot: i as u32 + 1,
                };
                self.slots
                    .insert(k, SlotValue { backend_id: *id }, 0)
                    .map_err(map_err(map_names::SLOTS))?;
            }
        }
        if created {
            let rv = RevNat4 {
                vip: fe.vip.octets(),
                port: fe.port,
                proto: fe.proto,
                pad: 0,
            };
            self.revnat4
                .insert(s.svc_id, rv, 0)
                .map_err(map_err(map_names::REVNAT4))?;
        }
        // New ranges before the entry that may start checking them.
        for r in &s.ranges {
            if !old_ranges.contains(r) {
                self.srcrange4
                    .insert(&range_key(s.svc_id, *r), 1, 0)
                    .map_err(map_err(map_names::SRCRANGE4))?;
            }
        }
        if !moves.is_empty() {
            let moved = self.move_affinity(s.svc_id, moves)?;
            tracing::debug!(
                frontend = %fe,
                moved_backends = moves.len(),
                affinity_entries = moved,
                "backends moved to other slots; their session affinity follows them"
            );
        }
        // 3. The frontend with its new count, then slots past the count.
        let (k, v) = svc_entry(fe, scope, s);
        self.svc4
            .insert(k, v, 0)
            .map_err(map_err(map_names::SVC4))?;
        for slot in s.backend_ids.len() + 1..=old_ids.len() {
            let k = SlotKey {
                svc_id: s.svc_id,
                slot: slot as u32,
            };
            ignore_missing(self.slots.remove(&k)).map_err(map_err(map_names::SLOTS))?;
        }
        for r in old_ranges {
            if !s.ranges.contains(r) {
                ignore_missing(self.srcrange4.remove(&range_key(s.svc_id, *r)))
                    .map_err(map_err(map_names::SRCRANGE4))?;
            }
        }
        Ok(())
    }

    fn check_capacity(&self, fe: &Frontend4, scope: u8, want: &[Backend4Spec]) -> Result<()> {
        let cur = self.table(scope).get(fe);
        let new_backends = want
            .iter()
            .filter(|b| {
                !self.backends.contains_key(&BackendKey {
                    addr: b.addr,
                    port: b.port,
                    proto: fe.proto,
                })
            })
            .count();
        let old_slots = cur.map_or(0, |s| s.backend_ids.len());
        let slots_after = self.slot_count - old_slots + want.len();
        let free_backends = (self.capacity.backends as usize).saturating_sub(self.backends.len());
        if new_backends > free_backends {
            return Err(DataplaneError::MapFull {
                map: map_names::BACKEND4,
                needed: new_backends,
                free: free_backends,
                capacity: self.capacity.backends,
            });
        }
        if slots_after > self.capacity.slots as usize {
            return Err(DataplaneError::MapFull {
                map: map_names::SLOTS,
                needed: want.len().saturating_sub(old_slots),
                free: (self.capacity.slots as usize).saturating_sub(self.slot_count),
                capacity: self.capacity.slots,
            });
        }
        if cur.is_none() {
            let entries = self.services.len() + self.internal.len() + self.vips.len();
            let needed = 1 + usize::from(!self.vips.contains_key(&fe.vip));
            let free = (self.capacity.services as usize).saturating_sub(entries);
            if needed > free {
                return Err(DataplaneError::MapFull {
                    map: map_names::SVC4,
                    needed,
                    free,
                    capacity: self.capacity.services,
                });
            }
        }
        Ok(())
    }

    /// Removes `fe` from the maps (both scopes). Returns whether it was there
    /// (deleting what is absent is not an error). Established flows keep
    /// their conntrack entries and so their backend; new ones are rejected
    /// if the VIP still has other ports, else no longer translated.
    pub fn delete_service(&mut self, fe: &Frontend4) -> Result<bool> {
        let found = self.delete_scoped(fe, SCOPE_EXTERNAL, &[])?;
        self.delete_scoped(fe, SCOPE_INTERNAL, &[])?;
        Ok(found)
    }

    /// Removes one scope of `fe`; the UDP flows of its backends other than
    /// `kept` become stale.
    fn delete_scoped(&mut self, fe: &Frontend4, scope: u8, kept: &[u32]) -> Result<bool> {
        let Some(s) = self.table_mut(scope).remove(fe) else {
            return Ok(false);
        };
        self.note_udp_change(fe, s.svc_id, &s.backend_ids, kept);
        let key = Svc4Key {
            vip: fe.vip.octets(),
            port: fe.port,
            proto: fe.proto,
            scope,
        };
        ignore_missing(self.svc4.remove(&key)).map_err(map_err(map_names::SVC4))?;
        if scope == SCOPE_EXTERNAL && has_marker(s.flags) {
            self.drop_marker(fe.vip)?;
        }
        for slot in 1..=s.backend_ids.len() {
            let k = SlotKey {
                svc_id: s.svc_id,
                slot: slot as u32,
            };
            ignore_missing(self.slots.remove(&k)).map_err(map_err(map_names::SLOTS))?;
        }
        for r in &s.ranges {
            ignore_missing(self.srcrange4.remove(&range_key(s.svc_id, *r)))
                .map_err(map_err(map_names::SRCRANGE4))?;
        }
        ignore_missing(self.revnat4.remove(&s.svc_id)).map_err(map_err(map_names::REVNAT4))?;
        ignore_missing(self.labels.remove(&s.svc_id)).map_err(map_err(map_names::LABELS))?;
        self.slot_count -= s.backend_ids.len();
        self.svc_ids.give(s.svc_id);
        self.release_backends(&s.backend_ids)?;
        // The id may name another service next: its clients start afresh.
        if s.affinity_timeout != 0 {
            self.flush_affinity(s.svc_id)?;
        }
        Ok(true)
    }

    /// Notes that backends `gone` left service id `svc_id` of frontend `fe`
    /// while `kept` are in it: for a UDP frontend, the flows to the ones
    /// that left are stale, and those to the ones in it (again) are not.
    fn note_udp_change(&mut self, fe: &Frontend4, svc_id: u32, gone: &[u32], kept: &[u32]) {
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
    fn move_affinity(&mut self, svc_id: u32, moves: &[SlotMove]) -> Result<usize> {
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
    fn flush_affinity(&mut self, svc_id: u32) -> Result<usize> {
        prune(&mut self.affinity4, map_names::AFFINITY4, |k| {
            k.svc_id != svc_id
        })
    }

    /// One frontend fewer on `vip`; its marker goes with the last one.
    fn drop_marker(&mut self, vip: Ipv4Addr) -> Result<()> {
        let remaining = self.vips.get(&vip).copied().unwrap_or(1).saturating_sub(1);
        if remaining == 0 {
            self.vips.remove(&vip);
            let (k, _) = vip_marker(vip);
            ignore_missing(self.svc4.remove(&k)).map_err(map_err(map_names::SVC4))?;
        } else {
            self.vips.insert(vip, remaining);
        }
        Ok(())
    }

    /// Drops one reference of each backend id; deletes backends no slot names.
    fn release_backends(&mut self, ids: &[u32]) -> Result<()> {
        for id in ids {
            let Some(key) = self.backend_keys.get(id).copied() else {
                continue;
            };
            let Some(slot) = self.backends.get_mut(&key) else {
                continue;
            };
            slot.refs = slot.refs.saturating_sub(1);
            if slot.refs == 0 {
                self.backends.remove(&key);
                self.backend_keys.remove(id);
                ignore_missing(self.backend4.remove(id)).map_err(map_err(map_names::BACKEND4))?;
                self.backend_ids.give(*id);
            }
        }
        Ok(())
    }

    /// Datapath counters summed over CPUs, by reason.
    pub fn stats(&self) -> Result<Vec<(Reason, StatValue)>> {
        read_stats(&self.stats)
    }

    /// Conntrack entries the datapath created under a new key, ever (the
    /// `STAT_CT_CREATED` counter of the pinned stats map, summed over CPUs).
    pub fn ct_created(&self) -> Result<u64> {
        stat_slot(&self.stats, STAT_CT_CREATED)
            .map(|v| v.packets)
            .map_err(map_err(map_names::STATS))
    }

    /// Conntrack entries this dataplane deleted itself (stale UDP flows).
    pub fn ct_removed(&self) -> u64 {
        self.ct_removed
    }

    /// Attaches both pod programs to every interface of the current network
    /// namespace whose name matches one of `patterns` (shell globs), and
    /// removes pins of interfaces that are gone. Call it periodically to
    /// cover interfaces created later. Links are pinned; an interface with
    /// pinned links from an earlier agent gets this agent's programs swapped
    /// in atomically.
    pub fn attach_matching(&mut self, patterns: &[glob::Pattern]) -> Result<AttachReport> {
        let mut report = AttachReport::default();
        let ifaces = interfaces().map_err(io_err(Path::new("if_nameindex")))?;
        let wanted: Vec<&(u32, String)> = ifaces
            .iter()
            .filter(|(_, n)| patterns.iter().any(|p| p.matches(n)))
            .collect();
        for (index, name) in &wanted {
            if self.attached.contains(&(*index, name.clone())) {
                continue;
            }
            match self.attach_one(*index, name) {
                Ok(true) => report.adopted.push(name.clone()),
                Ok(false) => report.attached.push(name.clone()),
                Err(e) => {
                    report.failed.push((name.clone(), e.to_string()));
                    continue;
                }
            }
            self.attached.insert((*index, name.clone()));
        }
        // Pins whose interface no longer exists (or was renamed/reindexed).
        let links = self.dir.join("links");
        let live: Vec<String> = ifaces.iter().map(|(i, n)| format!("{i}-{n}-")).collect();
        if let Ok(rd) = fs::read_dir(&links) {
            for entry in rd.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if !live.iter().any(|p| file.starts_with(p.as_str())) {
                    let _ = fs::remove_file(entry.path());
                    report.removed.push(file);
                }
            }
        }
        self.attached
            .retain(|(i, n)| ifaces.iter().any(|(ii, nn)| ii == i && nn == n));
        Ok(report)
    }

    /// Attaches ingress and egress on one interface. Returns whether pinned
    /// links were adopted (true) rather than created (false).
    fn attach_one(&mut self, index: u32, name: &str) -> Result<bool> {
        let mut adopted = true;
        for (prog_name, kind, suffix) in [
            (
                program_names::TC_POD_INGRESS,
                TcAttachType::Ingress,
                "ingress",
            ),
            (program_names::TC_POD_EGRESS, TcAttachType::Egress, "egress"),
        ] {
            let pin = self
                .dir
                .join("links")
                .join(format!("{index}-{name}-{suffix}"));
            let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, prog_name)?;
            let link_err = |what: String| DataplaneError::Link {
                ifname: name.into(),
                what,
            };
            match PinnedLink::from_pin(&pin) {
                Ok(old) => {
                    // Atomic replacement of the program behind the existing link.
                    let link = SchedClassifierLink::try_from(FdLink::from(old))
                        .map_err(|e| link_err(format!("pinned link {}: {e}", pin.display())))?;
                    let id =
                        prog.attach_to_link(link)
                            .map_err(|source| DataplaneError::Program {
                                name: format!("{prog_name} on {name}"),
                                source,
                            })?;
                    // The pin keeps the link; our handle can go.
                    drop(prog.take_link(id));
                }
                Err(_) => {
                    adopted = false;
                    let id = prog
                        .attach_with_options(
                            name,
                            kind,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(|source| DataplaneError::Program {
                            name: format!("{prog_name} on {name}"),
                            source,
                        })?;
                    let link = prog
                        .take_link(id)
                        .map_err(|source| DataplaneError::Program {
                            name: prog_name.into(),
                            source,
                        })?;
                    let fd = FdLink::try_from(link)
                        .map_err(|e| link_err(format!("not a TCX link: {e}")))?;
                    fd.pin(&pin)
                        .map_err(|e| link_err(format!("pin {}: {e}", pin.display())))?;
                }
            }
        }
        Ok(adopted)
    }
}

impl Dataplane {
    /// Attaches the node programs to every interface of the current network
    /// namespace whose name matches one of `patterns`: XDP (native mode where
    /// the driver has it, else generic mode with one warning) and TC egress
    /// (reverse NAT of replies from local backends). Links are pinned as
    /// `<ifindex>-<ifname>-xdp` and `-node-egress`, and adopted like the pod
    /// ones. Each interface's first IPv4 address is written to the node
    /// address map (the source of SNATed flows that arrive on it), and
    /// `accept_local` is set on it: the kernel routes packets the XDP program
    /// rewrote to carry the node's own address as source. Call it
    /// periodically; interfaces already done are skipped.
    pub fn attach_node_matching(&mut self, patterns: &[glob::Pattern]) -> Result<AttachReport> {
        let mut report = AttachReport::default();
        let ifaces = interfaces().map_err(io_err(Path::new("if_nameindex")))?;
        let addrs: Vec<(String, Ipv4Addr)> = addresses()
            .map_err(io_err(Path::new("getifaddrs")))?
            .into_iter()
            .filter_map(|(n, a)| match a {
                IpAddr::V4(v4) => Some((n, v4)),
                IpAddr::V6(_) => None,
            })
            .collect();
        for (index, name) in ifaces
            .iter()
            .filter(|(_, n)| patterns.iter().any(|p| p.matches(n)))
        {
            if let Some(addr) = addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a) {
                self.set_node_address(*index, addr)?;
            }
            if self.node_attached.contains(&(*index, name.clone())) {
                continue;
            }
            let sysctl = format!("/proc/sys/net/ipv4/conf/{name}/accept_local");
            if let Err(e) = fs::write(&sysctl, "1") {
                report.failed.push((name.clone(), format!("{sysctl}: {e}")));
                continue;
            }
            match self.attach_node_one(*index, name) {
                Ok(true) => report.adopted.push(name.clone()),
                Ok(false) => report.attached.push(name.clone()),
                Err(e) => {
                    report.failed.push((name.clone(), e.to_string()));
                    continue;
                }
            }
            self.node_attached.insert((*index, name.clone()));
        }
        self.node_attached
            .retain(|(i, n)| ifaces.iter().any(|(ii, nn)| ii == i && nn == n));
        Ok(report)
    }

    /// Records `addr` as the address of node interface `ifindex`.
    pub fn set_node_address(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<()> {
        let v = NodeAddr4 {
            addr: addr.octets(),
        };
        if self.node4.get(&ifindex, 0).ok() != Some(v) {
            self.node4
                .insert(ifindex, v, 0)
                .map_err(map_err(map_names::NODE4))?;
        }
        Ok(())
    }

    /// Sets the address a pod sees as the source when it reaches itself
    /// through a service (hairpin); the datapath uses
    /// [`proxy_common::HAIRPIN_ADDR_DEFAULT`] until this is called. It
    /// must not be an address in use: the pod answers it through its
    /// default route, and the datapath turns the answer back at the pod's
    /// veth.
    pub fn set_hairpin_address(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.set_node_address(proxy_common::NODE4_HAIRPIN_KEY, addr)
    }

    fn attach_node_one(&mut self, index: u32, name: &str) -> Result<bool> {
        let link_err = |what: String| DataplaneError::Link {
            ifname: name.into(),
            what,
        };
        let prog_err = |source| DataplaneError::Program {
            name: format!("{} on {name}", program_names::XDP_NODE),
            source,
        };
        let links = self.dir.join("links");
        let pin = links.join(format!("{index}-{name}-xdp"));
        let prog: &mut Xdp = program_mut(&mut self.ebpf, program_names::XDP_NODE)?;
        let mut adopted = true;
        match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = XdpLink::try_from(FdLink::from(old))
                    .map_err(|e| link_err(format!("pinned link {}: {e}", pin.display())))?;
                let id = prog.attach_to_link(link).map_err(prog_err)?;
                drop(prog.take_link(id));
            }
            Err(_) => {
                adopted = false;
                let id = match prog.attach_to_if_index(index, XdpMode::Driver) {
                    Ok(id) => id,
                    Err(native) => {
                        tracing::warn!(
                            "interface {name}: no native XDP ({native}); using generic mode, which is slower"
                        );
                        prog.attach_to_if_index(index, XdpMode::Skb)
                            .map_err(prog_err)?
                    }
                };
                let link = prog.take_link(id).map_err(prog_err)?;
                let fd = FdLink::try_from(link)
                    .map_err(|e| link_err(format!("not an XDP bpf_link: {e}")))?;
                fd.pin(&pin)
                    .map_err(|e| link_err(format!("pin {}: {e}", pin.display())))?;
            }
        }
        let pin = links.join(format!("{index}-{name}-node-egress"));
        let prog_name = program_names::TC_NODE_EGRESS;
        let tc_err = |source| DataplaneError::Program {
            name: format!("{prog_name} on {name}"),
            source,
        };
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, prog_name)?;
        match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(|e| link_err(format!("pinned link {}: {e}", pin.display())))?;
                let id = prog.attach_to_link(link).map_err(tc_err)?;
                drop(prog.take_link(id));
            }
            Err(_) => {
                adopted = false;
                let id = prog
                    .attach_with_options(
                        name,
                        TcAttachType::Egress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(tc_err)?;
                let link = prog.take_link(id).map_err(tc_err)?;
                let fd =
                    FdLink::try_from(link).map_err(|e| link_err(format!("not a TCX link: {e}")))?;
                fd.pin(&pin)
                    .map_err(|e| link_err(format!("pin {}: {e}", pin.display())))?;
            }
        }
        Ok(adopted)
    }
}

/// The IPv4 and IPv6 addresses of the calling thread's network namespace,
/// by interface name, in the order the kernel lists them.
pub fn addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = head;
    // SAFETY: walks the list getifaddrs returned; every node and its
    // address are valid until freeifaddrs, and each address is read as the
    // type its family says.
    unsafe {
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && !(*p).ifa_name.is_null() {
                let addr = match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = a as *const libc::sockaddr_in;
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            (*sin).sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = a as *const libc::sockaddr_in6;
                        Some(IpAddr::V6(std::net::Ipv6Addr::from(
                            (*sin6).sin6_addr.s6_addr,
                        )))
                    }
                    _ => None,
                };
                if let Some(addr) = addr {
                    let name = CStr::from_ptr((*p).ifa_name).to_string_lossy().into_owned();
                    out.push((name, addr));
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// The loaded program `name` as its concrete type.
fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let err = |source| DataplaneError::Program {
        name: name.into(),
        source,
    };
    ebpf.program_mut(name)
        .ok_or_else(|| err(ProgramError::NotLoaded))?
        .try_into()
        .map_err(err)
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(DataplaneError::Map {
        map: name,
        source: MapError::InvalidName { name: name.into() },
    })
}

/// Size of a pinned map (a map adopted from an earlier agent keeps its size).
fn pinned_max_entries(dir: &Path, name: &'static str) -> Result<u32> {
    aya::maps::MapInfo::from_pin(dir.join(name))
        .map(|i| i.max_entries())
        .map_err(map_err(name))
}

/// A source-range key as (service id, address, LPM prefix length), to
/// compare keys (the LPM key type has no ordering).
type RangeId = (u32, [u8; 4], u32);

fn range_id(k: &aya::maps::lpm_trie::Key<SrcRange4>) -> RangeId {
    let data = k.data();
    (u32::from_be_bytes(data.svc_id), data.addr, k.prefix_len())
}

fn range_key_of((svc_id, addr, prefix_len): RangeId) -> aya::maps::lpm_trie::Key<SrcRange4> {
    aya::maps::lpm_trie::Key::new(
        prefix_len,
        SrcRange4 {
            svc_id: svc_id.to_be_bytes(),
            addr,
        },
    )
}

/// The service id and range of a source-range key; `None` for a key whose
/// prefix length is not 32 (the service id) plus 0..=32.
fn range_of(k: &aya::maps::lpm_trie::Key<SrcRange4>) -> Option<(u32, (Ipv4Addr, u8))> {
    let (svc_id, addr, prefix_len) = range_id(k);
    let len = prefix_len.checked_sub(32).filter(|l| *l <= 32)?;
    Some((svc_id, (Ipv4Addr::from(addr), len as u8)))
}

/// A range with its host bits cleared and its prefix length at most 32.
fn normalize_range((addr, len): (Ipv4Addr, u8)) -> (Ipv4Addr, u8) {
    let len = len.min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    (Ipv4Addr::from(u32::from(addr) & mask), len)
}

/// The LPM key of source range `r` of service `svc_id`.
fn range_key(svc_id: u32, r: (Ipv4Addr, u8)) -> aya::maps::lpm_trie::Key<SrcRange4> {
    let (net, len) = normalize_range(r);
    range_key_of((svc_id, net.octets(), 32 + u32::from(len)))
}

fn svc_entry(fe: &Frontend4, scope: u8, s: &ServiceMirror) -> (Svc4Key, SvcValue) {
    (
        Svc4Key {
            vip: fe.vip.octets(),
            port: fe.port,
            proto: fe.proto,
            scope,
        },
        SvcValue {
            svc_id: s.svc_id,
            count: s.backend_ids.len() as u16,
            flags: s.flags,
            affinity_timeout: s.affinity_timeout,
            pad: 0,
        },
    )
}

fn vip_marker(vip: Ipv4Addr) -> (Svc4Key, SvcValue) {
    (
        Svc4Key {
            vip: vip.octets(),
            port: 0,
            proto: 0,
            scope: SCOPE_EXTERNAL,
        },
        SvcValue {
            svc_id: 0,
            count: 0,
            flags: SVC_FLAG_VIP,
            affinity_timeout: 0,
            pad: 0,
        },
    )
}

/// `bpf_map_update_elem` flag `BPF_NOEXIST`: only create (linux/bpf.h).
pub(crate) const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update an entry only if it is still there.
pub(crate) const BPF_EXIST: u64 = 2;

/// Whether two backend lists hold the same backends (slot order aside).
fn same_set(a: &[Backend4Spec], b: &[Backend4Spec]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// A backend that changes slot (1-based) in a frontend's slot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotMove {
    backend_id: u32,
    from: u32,
    to: u32,
}

/// The slot order of a frontend's backends after a change from `old`
/// (backend ids in slot order) to the backends `want`, and the backends
/// that move. Session affinity remembers a client's backend with its slot,
/// so slots must move as little as possible: surviving backends keep their
/// slots, new backends fill the holes removed ones left (lowest first) and
/// then go at the end; holes left over are filled by moving backends from
/// the end (the fewest moves that keep slots 1..=count dense).
fn slot_layout(old: &[u32], want: &[u32]) -> (Vec<u32>, Vec<SlotMove>) {
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

/// The entries of `map`, read in one walk over at most `limit` keys (a
/// walk over a map that changes underneath may start over, so it is
/// bounded); entries that vanish between the key and its lookup are
/// skipped.
fn walk<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    limit: usize,
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for k in map.keys().take(limit) {
        let k = k.map_err(map_err(name))?;
        match map.get(&k, 0) {
            Ok(v) => out.push((k, v)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(out)
}

/// Deletes every entry of `map` whose key `keep` rejects. Returns how many
/// it deleted.
fn prune<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    keep: impl Fn(&K) -> bool,
) -> Result<usize> {
    let keys: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    let mut deleted = 0;
    for k in keys.iter().filter(|k| !keep(k)) {
        ignore_missing(map.remove(k)).map_err(map_err(name))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Whether a delete deleted something (deleting what is absent is not an
/// error).
fn removed(r: Result<(), MapError>) -> Result<bool, MapError> {
    match r {
        Ok(()) => Ok(true),
        other => ignore_missing(other).map(|()| false),
    }
}

/// Deleting what is absent is not an error.
pub(crate) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Name of the marker folder that records the layout version of the maps
/// pinned next to it (bpffs holds only folders and BPF objects, no files).
fn layout_marker(version: u32) -> String {
    format!("layout-v{version}")
}

/// The layout versions marked in `dir`.
fn marked_layouts(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("layout-v")
                .map(str::to_string)
        })
        .collect()
}

/// Checks the layout markers of `dir`: returns the older layout to migrate
/// from, if any; refuses an unknown (newer) layout.
fn check_layout(dir: &Path) -> Result<Option<u32>> {
    let found = marked_layouts(dir);
    let ours = LAYOUT_VERSION.to_string();
    let mut from = None;
    for v in &found {
        if *v == ours {
            continue;
        }
        match v.parse::<u32>() {
            Ok(n) if crate::migrate::MIGRATES_FROM.contains(&n) => from = Some(n),
            _ => {
                return Err(DataplaneError::Layout {
                    dir: dir.to_path_buf(),
                    found: v.clone(),
                    expected: LAYOUT_VERSION,
                });
            }
        }
    }
    if found.is_empty() && map_names::ALL.iter().any(|n| dir.join(n).exists()) {
        // Maps pinned by something that did not mark its layout.
        return Err(DataplaneError::Layout {
            dir: dir.to_path_buf(),
            found: "none".into(),
            expected: LAYOUT_VERSION,
        });
    }
    Ok(from)
}

/// Sums a per-CPU stats array by reason.
pub fn read_stats(stats: &PerCpuArray<MapData, StatValue>) -> Result<Vec<(Reason, StatValue)>> {
    Reason::ALL
        .iter()
        .map(|r| {
            let sum = stat_slot(stats, *r as u32).map_err(map_err(map_names::STATS))?;
            Ok((*r, sum))
        })
        .collect()
}

/// One slot of a per-CPU stats array (a [`Reason`], or a counter such as
/// [`STAT_CT_CREATED`]), summed over CPUs.
pub fn stat_slot(
    stats: &PerCpuArray<MapData, StatValue>,
    slot: u32,
) -> std::result::Result<StatValue, MapError> {
    let per_cpu = stats.get(&slot, 0)?;
    Ok(per_cpu
        .iter()
        .fold(StatValue::default(), |acc, v| StatValue {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        }))
}

/// Opens one pinned map of `dir` by name (for inspection while the agent is
/// stopped).
pub fn open_pinned(dir: &Path, name: &'static str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// The interfaces of the calling thread's network namespace: (index, name).
pub fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry,
    // freed below with if_freenameindex.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut p = head;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push((
                (*p).if_index,
                CStr::from_ptr((*p).if_name).to_string_lossy().into_owned(),
            ));
            p = p.add(1);
        }
        libc::if_freenameindex(head);
        Ok(out)
    }
}

/// Removes every pin svcnat made under `dir` (links first, so traffic stops
/// being translated before its maps go) and the folder itself. Programs and
/// maps are freed by the kernel once nothing holds them. Returns the paths
/// removed; a missing folder is not an error.
pub fn cleanup(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let links = dir.join("links");
    if let Ok(rd) = fs::read_dir(&links) {
        for e in rd.flatten() {
            fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            removed.push(e.path());
        }
        fs::remove_dir(&links).map_err(io_err(&links))?;
    }
    for v in marked_layouts(dir) {
        let p = dir.join(format!("layout-v{v}"));
        fs::remove_dir(&p).map_err(io_err(&p))?;
        removed.push(p);
    }
    for name in map_names::ALL
        .iter()
        .chain(std::iter::once(&crate::migrate::OLD_CT4_PIN))
    {
        let p = dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataplaneError::Io { path: p, source: e }),
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(DataplaneError::Io {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    }
    Ok(removed)
}

/// The program fd of one loaded program (for `BPF_PROG_TEST_RUN`).
pub fn program_fd<'a>(ebpf: &'a Ebpf, name: &str) -> Option<std::os::fd::BorrowedFd<'a>> {
    let prog: &SchedClassifier = ebpf.program(name)?.try_into().ok()?;
    Some(prog.fd().ok()?.as_fd())
}

impl Dataplane {
    /// The underlying aya object (programs), e.g. for test runs.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}
