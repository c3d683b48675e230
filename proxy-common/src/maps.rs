//! The maps of the datapath, defined once.
//!
//! [`svcnat_maps!`](crate::svcnat_maps) is the one list of every map: its
//! static's name, its pinned name, its kind, its key and value types, the
//! sizing knob it follows, and the layout version its key and value took
//! their current form in. It hands the list to a macro of the caller's:
//! here it becomes [`map_names`], [`default_sizes`] and [`MAPS`] (what the
//! loader sizes, pins, reads back and cleans up; what migration and
//! inspection look up), and the eBPF crate turns it into its map statics.
//! A new map (an IPv6 one, a socket one) is one more line in the list.

/// The table of every map. `svcnat_maps!(then)` calls `then!` with one entry
/// per map, in the order the agent creates and pins them:
///
/// `#[doc] STATIC = "PINNED_NAME", Kind, KeyType => ValueType, size, since, layout;`
///
/// - `Kind` is a [`MapKind`] variant name;
/// - `size` a [`MapSize`] expression (the knob that sizes it);
/// - `since` the [`crate::LAYOUT_VERSION`] that introduced the map (a folder
///   of an older layout has no such map: the loader creates it empty);
/// - `layout` the [`crate::LAYOUT_VERSION`] in which the map's key and value
///   took their current form (a migration from an older layout moves a map
///   newer than it aside and copies its entries, see the agent's
///   `migrate` module).
///
/// Types are written as `$crate::` paths, so that the caller needs no
/// imports.
#[macro_export]
macro_rules! svcnat_maps {
    ($then:ident) => {
        $then! {
            /// Service frontends, plus one marker entry per VIP:
            /// [`Svc4Key`](crate::Svc4Key) -> [`SvcValue`](crate::SvcValue).
            SVC4 = "SVCNAT_SVC4", Hash,
                $crate::Svc4Key => $crate::SvcValue, $crate::MapSize::Services, 1, 1;
            /// Backend slots of each service, 1..=count:
            /// [`SlotKey`](crate::SlotKey) -> [`SlotValue`](crate::SlotValue).
            SLOTS = "SVCNAT_SLOTS", Hash,
                $crate::SlotKey => $crate::SlotValue, $crate::MapSize::Slots, 1, 1;
            /// Backends by id (`u32`) -> [`Backend4`](crate::Backend4).
            BACKEND4 = "SVCNAT_BACKEND4", Hash,
                u32 => $crate::Backend4, $crate::MapSize::Backends, 1, 1;
            /// Reverse NAT by service id (`u32`) -> [`RevNat4`](crate::RevNat4).
            REVNAT4 = "SVCNAT_REVNAT4", Hash,
                u32 => $crate::RevNat4, $crate::MapSize::RevNat, 1, 1;
            /// Conntrack (LRU): two entries per translated flow (service and
            /// reply direction), [`Ct4Key`](crate::Ct4Key) ->
            /// [`CtValue`](crate::CtValue).
            CT4 = "SVCNAT_CT4", LruHash,
                $crate::Ct4Key => $crate::CtValue, $crate::MapSize::Conntrack, 1, 3;
            /// Later fragments of translated datagrams (LRU):
            /// [`Frag4Key`](crate::Frag4Key) -> [`Frag4Value`](crate::Frag4Value).
            FRAG4 = "SVCNAT_FRAG4", LruHash,
                $crate::Frag4Key => $crate::Frag4Value, $crate::MapSize::Fragments, 1, 1;
            /// Counters by [`Reason`](crate::Reason) (per CPU), reason (`u32`)
            /// -> [`StatValue`](crate::StatValue).
            STATS = "SVCNAT_STATS", PerCpuArray,
                u32 => $crate::StatValue, $crate::MapSize::Fixed($crate::STATS_SLOTS), 1, 1;
            /// Names of services for inspection, service id (`u32`) ->
            /// [`SvcLabel`](crate::SvcLabel); written by the agent, never read
            /// by the datapath.
            LABELS = "SVCNAT_LABELS", Hash,
                u32 => $crate::SvcLabel, $crate::MapSize::RevNat, 1, 1;
            /// Source NAT (LRU): the ports allocated for node-port flows to
            /// backends on other nodes, hairpin flows and flows whose client
            /// port clashed. One entry per flow, keyed by the backend's reply
            /// (the key of the flow's conntrack reply entry), giving the
            /// client's address and port: [`Ct4Key`](crate::Ct4Key) ->
            /// [`Snat4Value`](crate::Snat4Value). (Layouts 1 and 2 also had a
            /// forward entry per flow; layout 3 keeps that in conntrack.)
            SNAT4 = "SVCNAT_SNAT4", LruHash,
                $crate::Ct4Key => $crate::Snat4Value, $crate::MapSize::Snat, 1, 1;
            /// The address of each node interface, ifindex (`u32`) ->
            /// [`NodeAddr4`](crate::NodeAddr4): the source of SNATed flows
            /// that arrive on it.
            NODE4 = "SVCNAT_NODE4", Hash,
                u32 => $crate::NodeAddr4, $crate::MapSize::NodeAddresses, 1, 1;
            /// `sessionAffinity: ClientIP` (LRU):
            /// [`AffinityKey`](crate::AffinityKey) ->
            /// [`AffinityValue`](crate::AffinityValue).
            AFFINITY4 = "SVCNAT_AFFINITY4", LruHash,
                $crate::AffinityKey => $crate::AffinityValue, $crate::MapSize::Affinity, 1, 1;
            /// `loadBalancerSourceRanges`: LPM trie of
            /// [`SrcRange4`](crate::SrcRange4) -> `u32`.
            SRCRANGE4 = "SVCNAT_SRCRANGE4", LpmTrie,
                $crate::SrcRange4 => u32, $crate::MapSize::SourceRanges, 1, 1;
            /// IPv6 service frontends and VIP markers:
            /// [`Svc6Key`](crate::Svc6Key) -> [`SvcValue`](crate::SvcValue).
            SVC6 = "SVCNAT_SVC6", Hash,
                $crate::Svc6Key => $crate::SvcValue, $crate::MapSize::Services, 4, 4;
            /// IPv6 backends by id (`u32`, one id space with
            /// `SVCNAT_BACKEND4`) -> [`Backend6`](crate::Backend6).
            BACKEND6 = "SVCNAT_BACKEND6", Hash,
                u32 => $crate::Backend6, $crate::MapSize::Backends, 4, 4;
            /// IPv6 conntrack (LRU), as `SVCNAT_CT4`:
            /// [`Ct6Key`](crate::Ct6Key) -> [`Ct6Value`](crate::Ct6Value).
            CT6 = "SVCNAT_CT6", LruHash,
                $crate::Ct6Key => $crate::Ct6Value, $crate::MapSize::Conntrack, 4, 4;
            /// Later fragments of translated IPv6 datagrams (LRU):
            /// [`Frag6Key`](crate::Frag6Key) -> [`Frag6Value`](crate::Frag6Value).
            FRAG6 = "SVCNAT_FRAG6", LruHash,
                $crate::Frag6Key => $crate::Frag6Value, $crate::MapSize::Fragments, 4, 4;
            /// IPv6 source NAT (LRU), as `SVCNAT_SNAT4`:
            /// [`Ct6Key`](crate::Ct6Key) -> [`Snat6Value`](crate::Snat6Value).
            SNAT6 = "SVCNAT_SNAT6", LruHash,
                $crate::Ct6Key => $crate::Snat6Value, $crate::MapSize::Snat, 4, 4;
            /// The IPv6 address of each node interface, ifindex (`u32`) ->
            /// [`NodeAddr6`](crate::NodeAddr6); key 0 holds the hairpin address.
            NODE6 = "SVCNAT_NODE6", Hash,
                u32 => $crate::NodeAddr6, $crate::MapSize::NodeAddresses, 4, 4;
            /// Session affinity of IPv6 clients (LRU):
            /// [`Affinity6Key`](crate::Affinity6Key) ->
            /// [`AffinityValue`](crate::AffinityValue).
            AFFINITY6 = "SVCNAT_AFFINITY6", LruHash,
                $crate::Affinity6Key => $crate::AffinityValue, $crate::MapSize::Affinity, 4, 4;
            /// IPv6 `loadBalancerSourceRanges`: LPM trie of
            /// [`SrcRange6`](crate::SrcRange6) -> `u32`.
            SRCRANGE6 = "SVCNAT_SRCRANGE6", LpmTrie,
                $crate::SrcRange6 => u32, $crate::MapSize::SourceRanges, 4, 4;
            /// Per-CPU scratch space of the IPv6 pipelines (one entry,
            /// [`Scratch6`](crate::Scratch6)): what their stack frames
            /// cannot hold. Not a sizing knob's: fixed.
            SCRATCH6 = "SVCNAT_SCRATCH6", PerCpuArray,
                u32 => $crate::Scratch6, $crate::MapSize::Fixed(1), 4, 4;
            /// Socket-level translations of the node's own sockets (LRU):
            /// one entry per socket and backend the cgroup hooks sent it to,
            /// giving the service address that `recvmsg` and `getpeername`
            /// report back: [`Sock4Key`](crate::Sock4Key) ->
            /// [`Sock4Value`](crate::Sock4Value). Sized like conntrack (a
            /// translated socket is a flow).
            SOCK4 = "SVCNAT_SOCK4", LruHash,
                $crate::Sock4Key => $crate::Sock4Value, $crate::MapSize::Conntrack, 4, 4;
            /// As `SVCNAT_SOCK4`, for IPv6 sockets:
            /// [`Sock6Key`](crate::Sock6Key) -> [`Sock6Value`](crate::Sock6Value).
            SOCK6 = "SVCNAT_SOCK6", LruHash,
                $crate::Sock6Key => $crate::Sock6Value, $crate::MapSize::Conntrack, 4, 4;
            /// What the socket hooks act on, key 0 ->
            /// [`SockConfig`](crate::SockConfig): the network namespace
            /// whose sockets they translate. Without the entry they
            /// translate nothing. Written by the agent; fixed size.
            SOCK_CFG = "SVCNAT_SOCK_CFG", Hash,
                u32 => $crate::SockConfig, $crate::MapSize::Fixed(1), 4, 4;
            /// Service CIDRs (ServiceCIDR objects' `spec.cidrs`, else
            /// `--service-cidr`): LPM trie of
            /// [`ServiceCidr4`](crate::ServiceCidr4) -> `u32` (1). Pods'
            /// traffic to an address inside one that no frontend holds is
            /// dropped. Written by the agent; fixed size.
            SVCCIDR4 = "SVCNAT_SVCCIDR4", LpmTrie,
                $crate::ServiceCidr4 => u32, $crate::MapSize::Fixed($crate::SERVICE_CIDRS_MAX), 4, 4;
            /// As `SVCNAT_SVCCIDR4`, for IPv6:
            /// [`ServiceCidr6`](crate::ServiceCidr6) -> `u32` (1).
            SVCCIDR6 = "SVCNAT_SVCCIDR6", LpmTrie,
                $crate::ServiceCidr6 => u32, $crate::MapSize::Fixed($crate::SERVICE_CIDRS_MAX), 4, 4;
            /// The TC programs IPv6 packets go on to by a tail call, slot
            /// (`u32`) -> program ([`TAIL_CALLS`](crate::TAIL_CALLS)). Pinned
            /// like the rest, so that the attached programs keep reaching
            /// them while no agent runs (the kernel empties a program array
            /// that no file and no pin holds); a new agent puts its own
            /// programs in the slots before it attaches the rest.
            TAIL_TC = "SVCNAT_TAIL_TC", ProgArray,
                u32 => u32, $crate::MapSize::Fixed(2), 4, 4;
            /// As `SVCNAT_TAIL_TC`, for the XDP program (a program array
            /// holds programs of one type).
            TAIL_XDP = "SVCNAT_TAIL_XDP", ProgArray,
                u32 => u32, $crate::MapSize::Fixed(1), 4, 4;
        }
    };
}

/// The kind of a BPF map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_LRU_HASH`: the kernel evicts the least recently used
    /// entry when full.
    LruHash,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray,
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie,
    /// `BPF_MAP_TYPE_PROG_ARRAY`: programs to tail-call, filled by the
    /// loader (no entries to migrate or inspect).
    ProgArray,
}

/// What sizes a map: one of the agent's sizing knobs (`--*-entries` flags),
/// or a size fixed by the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapSize {
    /// Service frontends (one per VIP, port and protocol, plus one per VIP).
    Services,
    /// Backend slots over all services.
    Slots,
    /// Distinct backends.
    Backends,
    /// Reverse NAT entries and labels (one per service frontend).
    RevNat,
    /// Conntrack entries. Each flow takes two (service and reply direction).
    Conntrack,
    /// Fragmented datagrams in flight.
    Fragments,
    /// SNAT entries (one per source-NATed flow).
    Snat,
    /// Node interfaces.
    NodeAddresses,
    /// Session affinity entries (one per client and service).
    Affinity,
    /// Source ranges over all services.
    SourceRanges,
    /// Not sizeable: this many entries.
    Fixed(u32),
}

impl MapSize {
    /// The number of entries a map sized by this knob gets by default (the
    /// agent may size it otherwise at load time).
    pub const fn default_entries(self) -> u32 {
        match self {
            Self::Services => 65_536,
            Self::Slots => 524_288,
            Self::Backends => 262_144,
            Self::RevNat => 65_536,
            Self::Conntrack => 524_288,
            Self::Fragments => 8_192,
            Self::Snat => 65_536,
            Self::NodeAddresses => 256,
            Self::Affinity => 65_536,
            Self::SourceRanges => 16_384,
            Self::Fixed(n) => n,
        }
    }
}

/// One map of the datapath, as [`svcnat_maps!`](crate::svcnat_maps) defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// Name in the object and file name of its pin.
    pub name: &'static str,
    /// Its kind.
    pub kind: MapKind,
    /// Size of a key in bytes (for an LPM trie, of the data after the
    /// prefix length).
    pub key_size: usize,
    /// Size of a value in bytes.
    pub value_size: usize,
    /// What sizes it.
    pub size: MapSize,
    /// The layout version that introduced it.
    pub since: u32,
    /// The layout version in which its key and value took their current form.
    pub layout: u32,
}

macro_rules! define {
    ($( $(#[$doc:meta])* $id:ident = $name:literal, $kind:ident,
        $k:ty => $v:ty, $size:expr, $since:literal, $layout:literal; )*) => {
        /// Names of the maps in the eBPF object. They are also the file
        /// names of the pins under the agent's bpffs folder.
        pub mod map_names {
            $( $(#[$doc])* pub const $id: &str = $name; )*
            /// All maps, in the order the agent creates and pins them.
            pub const ALL: [&str; super::MAPS.len()] = [$($id),*];
        }

        /// Default number of entries of each map; the agent may size them
        /// at load time.
        pub mod default_sizes {
            $( $(#[$doc])* pub const $id: u32 = $size.default_entries(); )*
        }

        /// Every map, in the order the agent creates and pins them.
        pub const MAPS: [MapDef; [$($name),*].len()] = [$(
            MapDef {
                name: $name,
                kind: MapKind::$kind,
                key_size: core::mem::size_of::<$k>(),
                value_size: core::mem::size_of::<$v>(),
                size: $size,
                since: $since,
                layout: $layout,
            }
        ),*];
    };
}

crate::svcnat_maps!(define);

impl MapDef {
    /// The map called `name`, if the datapath has one.
    pub fn by_name(name: &str) -> Option<&'static MapDef> {
        MAPS.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_pinnable() {
        for (i, m) in MAPS.iter().enumerate() {
            assert!(MAPS[..i].iter().all(|o| o.name != m.name), "{}", m.name);
            // bpffs refuses dots; the object's map names are at most 15
            // bytes on old kernels, BTF names are not, but keep them short.
            assert!(!m.name.contains('.'), "{}", m.name);
            assert_eq!(MapDef::by_name(m.name), Some(m));
        }
        assert_eq!(map_names::ALL.len(), MAPS.len());
        assert_eq!(default_sizes::CT4, MapSize::Conntrack.default_entries());
        assert_eq!(default_sizes::STATS, crate::STATS_SLOTS);
    }

    #[test]
    fn layouts_are_known() {
        for m in &MAPS {
            assert!(
                (1..=crate::LAYOUT_VERSION).contains(&m.since) && m.since <= m.layout,
                "{}",
                m.name
            );
            assert!(m.layout <= crate::LAYOUT_VERSION, "{}", m.name);
        }
    }
}
