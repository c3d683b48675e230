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

mod attach;
mod flows;
mod loader;
mod maps;
mod table;
mod update;

use crate::host::{addresses, interfaces};
pub use attach::{AttachReport, program_fd};
pub use flows::ClearedFlows;
use flows::StaleFlow;
pub use loader::cleanup;
use loader::program_mut;
pub(crate) use maps::{BPF_EXIST, BPF_NOEXIST, ignore_missing};
use maps::{
    RangeId, normalize_range, prune, range_id, range_key, range_key_of, range_of, removed,
    svc_entry, vip_marker, walk,
};
pub use maps::{open_pinned, read_stats, stat_slot};
pub use table::{
    Backend4Spec, Frontend4, FrontendSpec, ServiceOpts, ServiceState, Upsert, proto_name,
};
use table::{BackendKey, BackendSlot, Ids, ServiceMirror};
use table::{SlotMove, has_marker, same_set, slot_layout};

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

impl Dataplane {
    /// The pin folder.
    pub fn bpffs(&self) -> &Path {
        &self.dir
    }

    /// Sizes of the maps as loaded (pinned maps keep the size they had).
    pub fn capacity(&self) -> MapSizes {
        self.capacity
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

    /// The underlying aya object (programs), e.g. for test runs.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}
