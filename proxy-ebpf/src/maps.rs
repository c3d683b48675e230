//! The maps. Sizes here are defaults: the agent resizes them at load time.
//! All are BTF maps so that `bpftool map dump` prints their fields by name.

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend4, Ct4Key, CtValue, Frag4Key, Frag4Value, NodeAddr4,
    RevNat4, STATS_SLOTS, SlotKey, SlotValue, Snat4Value, SrcRange4, StatValue, Svc4Key, SvcLabel,
    SvcValue, default_sizes as sz,
};

/// Service frontends, plus one marker entry per VIP.
#[btf_map(name = "SVCNAT_SVC4")]
pub(crate) static SVC4: HashMap<Svc4Key, SvcValue, { sz::SVC4 as usize }> = HashMap::new();

/// Backend slots of each service, 1..=count.
#[btf_map(name = "SVCNAT_SLOTS")]
pub(crate) static SLOTS: HashMap<SlotKey, SlotValue, { sz::SLOTS as usize }> = HashMap::new();

/// Backends by id.
#[btf_map(name = "SVCNAT_BACKEND4")]
pub(crate) static BACKEND4: HashMap<u32, Backend4, { sz::BACKEND4 as usize }> = HashMap::new();

/// Reverse NAT by service id. Written by the agent for inspection and for
/// reply translation of flows whose conntrack entry names only the service.
#[btf_map(name = "SVCNAT_REVNAT4")]
pub(crate) static REVNAT4: HashMap<u32, RevNat4, { sz::REVNAT4 as usize }> = HashMap::new();

/// Conntrack: two entries per translated flow (service and reply direction).
#[btf_map(name = "SVCNAT_CT4")]
pub(crate) static CT4: LruHashMap<Ct4Key, CtValue, { sz::CT4 as usize }> = LruHashMap::new();

/// Later fragments of translated datagrams.
#[btf_map(name = "SVCNAT_FRAG4")]
pub(crate) static FRAG4: LruHashMap<Frag4Key, Frag4Value, { sz::FRAG4 as usize }> =
    LruHashMap::new();

/// Counters by [`proxy_common::Reason`].
#[btf_map(name = "SVCNAT_STATS")]
pub(crate) static STATS: PerCpuArray<StatValue, { STATS_SLOTS as usize }> = PerCpuArray::new();

/// Names of services for `svcnat inspect`; written by the agent, never read here.
#[btf_map(name = "SVCNAT_LABELS")]
pub(crate) static LABELS: HashMap<u32, SvcLabel, { sz::REVNAT4 as usize }> = HashMap::new();

/// Source NAT of node-port flows to remote backends (two entries per flow).
#[btf_map(name = "SVCNAT_SNAT4")]
pub(crate) static SNAT4: LruHashMap<Ct4Key, Snat4Value, { sz::SNAT4 as usize }> = LruHashMap::new();

/// Address of each node interface, by ifindex; written by the agent.
#[btf_map(name = "SVCNAT_NODE4")]
pub(crate) static NODE4: HashMap<u32, NodeAddr4, { sz::NODE4 as usize }> = HashMap::new();

/// Session affinity: client and service -> backend.
#[btf_map(name = "SVCNAT_AFFINITY4")]
pub(crate) static AFFINITY4: LruHashMap<AffinityKey, AffinityValue, { sz::AFFINITY4 as usize }> =
    LruHashMap::new();

/// loadBalancerSourceRanges by service id.
#[btf_map(name = "SVCNAT_SRCRANGE4")]
pub(crate) static SRCRANGE4: LpmTrie<SrcRange4, u32, { sz::SRCRANGE4 as usize }> = LpmTrie::new();
