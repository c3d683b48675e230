//! The dataplane handle: the loaded object, its maps, their sizes, and
//! the mirror of what they hold.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use aya::Ebpf;
use proxy_common::{MAPS, MapDef, MapSize, Reason, STAT_CT_CREATED, StatValue, map_names};

use super::error::{Result, map_err};
use super::maps::{Maps, read_stats, stat_slot};
use super::table::{Frontend, ServiceState, Table};
/// Default pin folder.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/svcnat";

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
        let mut s = Self {
            services: 0,
            slots: 0,
            backends: 0,
            revnat: 0,
            conntrack: 0,
            fragments: 0,
            snat: 0,
            node_addresses: 0,
            affinity: 0,
            source_ranges: 0,
        };
        for m in &MAPS {
            if let Some(n) = s.knob(m.size) {
                *n = m.size.default_entries();
            }
        }
        s
    }
}

impl MapSizes {
    /// The field that sizes maps of `size`; `None` for a fixed size.
    pub(super) fn knob(&mut self, size: MapSize) -> Option<&mut u32> {
        Some(match size {
            MapSize::Services => &mut self.services,
            MapSize::Slots => &mut self.slots,
            MapSize::Backends => &mut self.backends,
            MapSize::RevNat => &mut self.revnat,
            MapSize::Conntrack => &mut self.conntrack,
            MapSize::Fragments => &mut self.fragments,
            MapSize::Snat => &mut self.snat,
            MapSize::NodeAddresses => &mut self.node_addresses,
            MapSize::Affinity => &mut self.affinity,
            MapSize::SourceRanges => &mut self.source_ranges,
            MapSize::Fixed(_) => return None,
        })
    }

    /// The number of entries a map of `def` gets with these sizes.
    pub fn entries(mut self, def: &MapDef) -> u32 {
        match self.knob(def.size) {
            Some(n) => *n,
            None => def.size.default_entries(),
        }
    }

    /// Each map a knob sizes, with its number of entries (what the loader
    /// asks for).
    pub fn sizeable(self) -> impl Iterator<Item = (&'static str, u32)> {
        MAPS.iter()
            .filter(|m| !matches!(m.size, MapSize::Fixed(_)))
            .map(move |m| (m.name, self.entries(m)))
    }

    /// Each sizing knob's value under the name of the first map it sizes
    /// (what `svcnat_map_capacity_entries` reports).
    pub fn per_map(self) -> impl Iterator<Item = (&'static str, u32)> {
        MAPS.iter()
            .enumerate()
            .filter(|(i, m)| {
                !matches!(m.size, MapSize::Fixed(_)) && !MAPS[..*i].iter().any(|o| o.size == m.size)
            })
            .map(move |(_, m)| (m.name, self.entries(m)))
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
    pub(super) dir: PathBuf,
    pub(super) ebpf: Ebpf,
    pub(super) maps: Maps,
    pub(super) capacity: MapSizes,
    pub(super) table: Table,
    pub(super) attached: BTreeSet<(u32, String)>,
    pub(super) node_attached: BTreeSet<(u32, String)>,
    /// Layout the pinned maps are being migrated from (until
    /// [`Dataplane::finish_migration`]).
    pub(super) pending_migration: Option<u32>,
    /// Conntrack entries deleted by this dataplane (for the eviction count).
    pub(super) ct_removed: u64,
    /// The service CIDRs the tries should hold (see
    /// [`Dataplane::set_service_cidrs`]).
    pub(super) service_cidrs: BTreeSet<(std::net::IpAddr, u8)>,
}

impl Dataplane {
    /// Every frontend the maps hold, with its backends in slot order.
    pub fn services(&self) -> BTreeMap<Frontend, ServiceState> {
        self.table
            .services
            .keys()
            .filter_map(|fe| Some((*fe, self.service(fe)?)))
            .collect()
    }

    /// One frontend's state, if the maps hold it.
    pub fn service(&self, fe: &Frontend) -> Option<ServiceState> {
        let s = self.table.services.get(fe)?;
        let mut state = self.table.state_of(s);
        state.internal_backends = self
            .table
            .internal
            .get(fe)
            .map(|i| self.table.backends_of(&i.backend_ids));
        Some(state)
    }

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
        read_stats(&self.maps.STATS)
    }

    /// Conntrack entries the datapath created under a new key, ever (the
    /// `STAT_CT_CREATED` counter of the pinned stats map, summed over CPUs).
    pub fn ct_created(&self) -> Result<u64> {
        stat_slot(&self.maps.STATS, STAT_CT_CREATED)
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
