//! The datapath loaded for packet tests and benchmarks: the embedded eBPF
//! object with small private maps (nothing pinned, nothing attached), its TC
//! programs ready for [`crate::prog_run::test_run`], and helpers to seed the
//! maps and read the stats. A test that loads it needs
//! [`crate::skip::Needs::prog_run`].
//!
//! The IPv4 maps are fields of [`TestDatapath`]; the IPv6 ones ([`Maps6`],
//! layout 4 on) are behind [`TestDatapath::v6`], since objects of earlier
//! layouts (which upgrade tests load) have none.

use std::{
    io,
    net::{Ipv6Addr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd, BorrowedFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, ProgramFd, SchedClassifier, Xdp},
};
use proxy_common::{
    Affinity6Key, AffinityKey, AffinityValue, Backend4, Backend6, CT_F_SNAT, Ct4Key, Ct6Key,
    Ct6Value, CtValue, Frag4Key, Frag4Value, Frag6Key, Frag6Value, NodeAddr4, NodeAddr6, Reason,
    RevNat4, SlotKey, SlotValue, Snat4Value, Snat6Value, SrcRange4, SrcRange6, StatValue, Svc4Key,
    Svc6Key, SvcValue, map_names, program_names,
};

use svcnat::dataplane::MapSizes;

use crate::prog_run::{TestRunOutput, test_run};

/// TC verdict: pass the packet on, skipping later programs on the hook.
pub const TC_ACT_OK: u32 = 0;
/// TC verdict `TCX_NEXT` (`TC_ACT_UNSPEC`, -1): on to the next program on
/// the hook, passed after the last. What svcnat returns for every packet it
/// passes, untouched or rewritten.
pub const TCX_NEXT: u32 = u32::MAX;
/// TC verdict: drop the packet.
pub const TC_ACT_SHOT: u32 = 2;
/// TC verdict: the packet was redirected (`bpf_redirect`).
pub const TC_ACT_REDIRECT: u32 = 7;
/// XDP verdict: drop.
pub const XDP_DROP: u32 = 1;
/// XDP verdict: on to the kernel stack.
pub const XDP_PASS: u32 = 2;
/// XDP verdict: back out of the interface it came in on.
pub const XDP_TX: u32 = 3;

/// The ifindex `BPF_PROG_TEST_RUN` gives an XDP program (the loopback
/// device of the caller's network namespace): seed the node address under it.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// Map sizes for tests: large enough for 10,000 flows (two conntrack entries
/// each), small enough that loading many times costs little memory. Every
/// sizeable map of the table of maps, as the agent's loader sizes them.
pub fn test_map_sizes() -> Vec<(&'static str, u32)> {
    MapSizes {
        services: 1024,
        slots: 4096,
        backends: 4096,
        revnat: 1024,
        conntrack: 65_536,
        fragments: 1024,
        snat: 65_536,
        affinity: 4096,
        source_ranges: 1024,
        ..MapSizes::default()
    }
    .sizeable()
    .collect()
}

/// Which program to run (the TC programs and, despite the name, the XDP one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcProgram {
    /// `svcnat_pod_ingress`: packets from a pod (service direction).
    PodIngress,
    /// `svcnat_pod_egress`: packets to a pod (replies).
    PodEgress,
    /// `svcnat_node_xdp` (XDP, verdicts `XDP_*`): packets from outside the
    /// node, and replies of remote backends to SNATed flows.
    NodeXdp,
    /// `svcnat_node_egress`: packets leaving a node interface (replies of
    /// local backends to outside clients).
    NodeEgress,
}

impl TcProgram {
    /// The program's name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            TcProgram::PodIngress => program_names::TC_POD_INGRESS,
            TcProgram::PodEgress => program_names::TC_POD_EGRESS,
            TcProgram::NodeXdp => program_names::XDP_NODE,
            TcProgram::NodeEgress => program_names::TC_NODE_EGRESS,
        }
    }
}

/// Why the datapath could not be loaded for a test.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The agent was built without the eBPF object.
    #[error("the eBPF object is not embedded: run `cargo xtask build-ebpf --release` first")]
    NoObject,
    /// aya could not load the object (parse, BTF, map creation).
    #[error("loading the eBPF object: {0}")]
    Ebpf(#[from] aya::EbpfError),
    /// A program is not in the object.
    #[error("program {0} is not in the eBPF object")]
    MissingProgram(&'static str),
    /// A program could not be loaded (verifier) or has the wrong type.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// What aya said.
        #[source]
        source: ProgramError,
    },
    /// The programs IPv6 reaches by a tail call could not be loaded or
    /// put in their slots.
    #[error(transparent)]
    TailCalls(#[from] svcnat::dataplane::DataplaneError),
    /// A map is not in the object.
    #[error("map {0} is not in the eBPF object")]
    MissingMap(&'static str),
    /// A map has an unexpected type or key/value size.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What aya said.
        #[source]
        source: MapError,
    },
    /// Duplicating a program fd failed.
    #[error("duplicating a program fd: {0}")]
    Io(#[from] io::Error),
}

/// The loaded object with its maps taken out for the test to seed and read.
/// `C` is the conntrack value type: the current [`CtValue`], or that of an
/// earlier layout for an object of an earlier release.
pub struct TestDatapath<C: aya::Pod = CtValue> {
    /// Keeps the programs loaded.
    _ebpf: Ebpf,
    ingress: ProgramFd,
    egress: ProgramFd,
    node_xdp: ProgramFd,
    node_egress: ProgramFd,
    /// Service frontends.
    pub svc4: HashMap<MapData, Svc4Key, SvcValue>,
    /// Backend slots.
    pub slots: HashMap<MapData, SlotKey, SlotValue>,
    /// Backends.
    pub backend4: HashMap<MapData, u32, Backend4>,
    /// Reverse NAT.
    pub revnat4: HashMap<MapData, u32, RevNat4>,
    /// Conntrack (LRU).
    pub ct4: HashMap<MapData, Ct4Key, C>,
    /// Fragment trains (LRU).
    pub frag4: HashMap<MapData, Frag4Key, Frag4Value>,
    /// Per-CPU stats by reason.
    pub stats: PerCpuArray<MapData, StatValue>,
    /// SNAT of node-port flows (LRU).
    pub snat4: HashMap<MapData, Ct4Key, Snat4Value>,
    /// Node interface addresses.
    pub node4: HashMap<MapData, u32, NodeAddr4>,
    /// Session affinity (LRU).
    pub affinity4: HashMap<MapData, AffinityKey, AffinityValue>,
    /// Source ranges.
    pub srcrange4: LpmTrie<MapData, SrcRange4, u32>,
    /// The IPv6 maps, when the object has them (see [`Self::v6`]).
    maps6: Option<Maps6>,
}

/// The IPv6 maps of a loaded object (layout 4 on), as the `*4` fields of
/// [`TestDatapath`] for IPv4. Service ids, slots and stats are shared with
/// IPv4 and stay in [`TestDatapath`].
pub struct Maps6 {
    /// Service frontends and VIP markers.
    pub svc6: HashMap<MapData, Svc6Key, SvcValue>,
    /// Backends (one id space with IPv4's).
    pub backend6: HashMap<MapData, u32, Backend6>,
    /// Conntrack (LRU).
    pub ct6: HashMap<MapData, Ct6Key, Ct6Value>,
    /// Fragment trains (LRU).
    pub frag6: HashMap<MapData, Frag6Key, Frag6Value>,
    /// SNAT of node-port, hairpin and remapped flows (LRU).
    pub snat6: HashMap<MapData, Ct6Key, Snat6Value>,
    /// Node interface addresses; key `NODE6_HAIRPIN_KEY` holds the hairpin
    /// address.
    pub node6: HashMap<MapData, u32, NodeAddr6>,
    /// Session affinity (LRU).
    pub affinity6: HashMap<MapData, Affinity6Key, AffinityValue>,
    /// Source ranges.
    pub srcrange6: LpmTrie<MapData, SrcRange6, u32>,
}

impl Maps6 {
    /// The IPv6 maps taken out of `ebpf`; `None` when it has none (an
    /// object of a layout before 4), an error when it has only some.
    fn take(ebpf: &mut Ebpf) -> Result<Option<Self>, LoadError> {
        if ebpf.map(map_names::SVC6).is_none() {
            return Ok(None);
        }
        Ok(Some(Maps6 {
            svc6: take(ebpf, map_names::SVC6, HashMap::try_from)?,
            backend6: take(ebpf, map_names::BACKEND6, HashMap::try_from)?,
            ct6: take(ebpf, map_names::CT6, HashMap::try_from)?,
            frag6: take(ebpf, map_names::FRAG6, HashMap::try_from)?,
            snat6: take(ebpf, map_names::SNAT6, HashMap::try_from)?,
            node6: take(ebpf, map_names::NODE6, HashMap::try_from)?,
            affinity6: take(ebpf, map_names::AFFINITY6, HashMap::try_from)?,
            srcrange6: take(ebpf, map_names::SRCRANGE6, LpmTrie::try_from)?,
        }))
    }
}

/// Why an IPv6 map of a [`TestDatapath`] could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Map6Error {
    /// The loaded object has no IPv6 maps: it is of a layout before 4.
    #[error("the loaded eBPF object has no IPv6 maps (an object of a layout before 4)")]
    NoIpv6Maps,
    /// The map operation failed.
    #[error(transparent)]
    Map(#[from] MapError),
}

/// So that `?` works on [`TestDatapath::v6`] and the IPv6 seed helpers in
/// fixture seeds and checks, which return `Result<_, String>`.
impl From<Map6Error> for String {
    fn from(e: Map6Error) -> String {
        e.to_string()
    }
}

pub use svcnat::inspect::monotonic_ns;

fn take<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    convert(map).map_err(|source| LoadError::Map { name, source })
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<ProgramFd, LoadError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })?;
    prog.load()
        .map_err(|source| LoadError::Program { name, source })?;
    let fd = prog
        .fd()
        .map_err(|source| LoadError::Program { name, source })?;
    Ok(fd.try_clone()?)
}

impl TestDatapath {
    /// Loads the embedded object with [`test_map_sizes`] and both TC programs.
    pub fn load() -> Result<Self, LoadError> {
        Self::load_with_sizes(&test_map_sizes())
    }

    /// Loads the embedded object with the given map sizes (others at their
    /// defaults) and both TC programs. Maps are private to this instance.
    pub fn load_with_sizes(sizes: &[(&str, u32)]) -> Result<Self, LoadError> {
        Self::load_object(svcnat::EBPF_OBJECT, sizes, None)
    }

    /// Writes both conntrack entries of a translated flow (see [`ct4_pair`]).
    pub fn add_flow(&mut self, flow: &Flow) -> Result<(), MapError> {
        for (k, v) in ct4_pair(flow) {
            self.ct4.insert(k, v, 0)?;
        }
        Ok(())
    }

    /// Writes the three entries of a source-NATed flow, as the datapath
    /// opens one (node port to a remote backend, hairpin, or a client port
    /// remapped on a NAT clash): the backend sees it come from `via`. The
    /// conntrack entries of [`ct4_pair`] flagged [`CT_F_SNAT`] (the service
    /// entry naming `via`), the reply entry keyed by what the backend
    /// answers to (backend -> `via`), and the reverse SNAT entry under the
    /// reply key (giving the client).
    pub fn add_snat_flow(&mut self, flow: &Flow, via: SocketAddrV4) -> Result<(), MapError> {
        let [(skey, sval), (_, rval)] = ct4_pair(flow);
        let rkey = flow.snat_reply_key(via);
        // The service-direction entry names the source the backend sees.
        self.ct4.insert(
            skey,
            CtValue {
                flags: sval.flags | CT_F_SNAT,
                peer_addr: via.ip().octets(),
                peer_port: via.port(),
                ..sval
            },
            0,
        )?;
        self.ct4.insert(
            rkey,
            CtValue {
                flags: rval.flags | CT_F_SNAT,
                ..rval
            },
            0,
        )?;
        self.snat4.insert(rkey, snat4_value(flow.client), 0)
    }

    /// Removes every entry of the maps the datapath writes (conntrack,
    /// SNAT, affinity, fragments), so that a test can start over with the
    /// same services. The stats stay.
    pub fn clear_state(&mut self) -> Result<(), MapError> {
        fn clear<K: aya::Pod, V: aya::Pod>(
            map: &mut HashMap<MapData, K, V>,
        ) -> Result<(), MapError> {
            let keys = map.keys().collect::<Result<Vec<K>, MapError>>()?;
            for k in keys {
                match map.remove(&k) {
                    // Gone already (an LRU map may have evicted it).
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        clear(&mut self.ct4)?;
        clear(&mut self.snat4)?;
        clear(&mut self.affinity4)?;
        clear(&mut self.frag4)?;
        if let Some(m) = self.maps6.as_mut() {
            clear(&mut m.ct6)?;
            clear(&mut m.snat6)?;
            clear(&mut m.affinity6)?;
            clear(&mut m.frag6)?;
        }
        Ok(())
    }

    /// Writes both conntrack entries of a translated IPv6 flow (see
    /// [`ct6_pair`]).
    pub fn add_flow6(&mut self, flow: &Flow6) -> Result<(), Map6Error> {
        let m = self.v6_mut()?;
        for (k, v) in ct6_pair(flow) {
            m.ct6.insert(k, v, 0)?;
        }
        Ok(())
    }

    /// [`Self::add_snat_flow`] for IPv6: the conntrack entries of
    /// [`ct6_pair`] flagged [`CT_F_SNAT`] (the service entry naming `via`),
    /// the reply entry keyed backend -> `via`, and the reverse SNAT entry
    /// under that key, giving the client.
    pub fn add_snat_flow6(&mut self, flow: &Flow6, via: SocketAddrV6) -> Result<(), Map6Error> {
        let [(skey, sval), (_, rval)] = ct6_pair(flow);
        let rkey = flow.snat_reply_key(via);
        let m = self.v6_mut()?;
        m.ct6.insert(
            skey,
            Ct6Value {
                flags: sval.flags | CT_F_SNAT,
                peer_addr: via.ip().octets(),
                peer_port: via.port(),
                ..sval
            },
            0,
        )?;
        m.ct6.insert(
            rkey,
            Ct6Value {
                flags: rval.flags | CT_F_SNAT,
                ..rval
            },
            0,
        )?;
        // Stamp 0: a seeded entry is no flow being created right now.
        let back = Snat6Value {
            addr: flow.client.ip().octets(),
            port: flow.client.port(),
            stamp: 0,
        };
        m.snat6.insert(rkey, back, 0)?;
        Ok(())
    }
}

impl<C: aya::Pod> TestDatapath<C> {
    /// Loads `object` (for example the object of an earlier release) with
    /// the given map sizes. With `pins`, its maps are pinned in (or adopted
    /// from) that folder under their names, as the agent pins them, so that
    /// two objects can share maps.
    pub fn load_object(
        object: &[u8],
        sizes: &[(&str, u32)],
        pins: Option<&std::path::Path>,
    ) -> Result<Self, LoadError> {
        if object.is_empty() {
            return Err(LoadError::NoObject);
        }
        let mut loader = EbpfLoader::new();
        for (name, size) in sizes {
            loader.map_max_entries(name, *size);
        }
        let paths: Vec<(&str, std::path::PathBuf)> = pins
            .map(|dir| map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect())
            .unwrap_or_default();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        let ingress = load_program(&mut ebpf, program_names::TC_POD_INGRESS)?;
        let egress = load_program(&mut ebpf, program_names::TC_POD_EGRESS)?;
        let node_egress = load_program(&mut ebpf, program_names::TC_NODE_EGRESS)?;
        let node_xdp = {
            let name = program_names::XDP_NODE;
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram(name))?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            prog.load()
                .map_err(|source| LoadError::Program { name, source })?;
            prog.fd()
                .map_err(|source| LoadError::Program { name, source })?
                .try_clone()?
        };
        // Objects of layouts before 4 tail-call nothing.
        if ebpf.map(proxy_common::map_names::TAIL_TC).is_some() {
            svcnat::dataplane::load_tail_calls(&mut ebpf)?;
        }
        Ok(TestDatapath {
            svc4: take(&mut ebpf, map_names::SVC4, HashMap::try_from)?,
            slots: take(&mut ebpf, map_names::SLOTS, HashMap::try_from)?,
            backend4: take(&mut ebpf, map_names::BACKEND4, HashMap::try_from)?,
            revnat4: take(&mut ebpf, map_names::REVNAT4, HashMap::try_from)?,
            ct4: take(&mut ebpf, map_names::CT4, HashMap::try_from)?,
            frag4: take(&mut ebpf, map_names::FRAG4, HashMap::try_from)?,
            stats: take(&mut ebpf, map_names::STATS, PerCpuArray::try_from)?,
            snat4: take(&mut ebpf, map_names::SNAT4, HashMap::try_from)?,
            node4: take(&mut ebpf, map_names::NODE4, HashMap::try_from)?,
            affinity4: take(&mut ebpf, map_names::AFFINITY4, HashMap::try_from)?,
            srcrange4: take(&mut ebpf, map_names::SRCRANGE4, LpmTrie::try_from)?,
            maps6: Maps6::take(&mut ebpf)?,
            _ebpf: ebpf,
            ingress,
            egress,
            node_xdp,
            node_egress,
        })
    }

    /// The IPv6 maps; [`Map6Error::NoIpv6Maps`] for an object of a layout
    /// before 4, which has none.
    pub fn v6(&self) -> Result<&Maps6, Map6Error> {
        self.maps6.as_ref().ok_or(Map6Error::NoIpv6Maps)
    }

    /// [`Self::v6`], to write them.
    pub fn v6_mut(&mut self) -> Result<&mut Maps6, Map6Error> {
        self.maps6.as_mut().ok_or(Map6Error::NoIpv6Maps)
    }

    /// The fd of a loaded program.
    pub fn program_fd(&self, prog: TcProgram) -> BorrowedFd<'_> {
        match prog {
            TcProgram::PodIngress => self.ingress.as_fd(),
            TcProgram::PodEgress => self.egress.as_fd(),
            TcProgram::NodeXdp => self.node_xdp.as_fd(),
            TcProgram::NodeEgress => self.node_egress.as_fd(),
        }
    }

    /// Runs `prog` once on `frame`.
    pub fn run(&self, prog: TcProgram, frame: &[u8]) -> io::Result<TestRunOutput> {
        test_run(self.program_fd(prog), frame, 1)
    }

    /// The counter of `reason`, summed over all CPUs.
    pub fn stat(&self, reason: Reason) -> Result<StatValue, MapError> {
        svcnat::dataplane::stat_slot(&self.stats, reason as u32)
    }

    /// Conntrack entries the datapath created under a new key (the
    /// `STAT_CT_CREATED` counter, summed over CPUs).
    pub fn created_entries(&self) -> Result<u64, MapError> {
        svcnat::dataplane::stat_slot(&self.stats, proxy_common::STAT_CT_CREATED).map(|v| v.packets)
    }

    /// Every reason's counter, summed over all CPUs, in [`Reason::ALL`] order.
    pub fn all_stats(&self) -> Result<Vec<(Reason, StatValue)>, MapError> {
        Reason::ALL
            .iter()
            .map(|r| Ok((*r, self.stat(*r)?)))
            .collect()
    }

    /// Writes a service frontend `vip` (`proto`) with id `svc_id` and the
    /// given `(backend id, address)` backends in slots 1..=n, its VIP marker
    /// entry and its reverse NAT entry, in the datapath's safe order
    /// (backends, slots, then the frontend). An empty list makes a service
    /// that rejects.
    pub fn add_service(
        &mut self,
        vip: SocketAddrV4,
        proto: u8,
        svc_id: u32,
        backends: &[(u32, SocketAddrV4)],
    ) -> Result<(), MapError> {
        let backends: Vec<(u32, SocketAddrV4, u8)> =
            backends.iter().map(|(id, addr)| (*id, *addr, 0)).collect();
        self.add_frontend(
            vip,
            proto,
            proxy_common::SCOPE_EXTERNAL,
            svc_id,
            0,
            0,
            &backends,
        )?;
        self.add_vip_marker(vip)
    }

    /// Writes a frontend entry of `scope` with `flags` and session affinity
    /// `affinity_timeout`, and its backends `(id, address, BACKEND_FLAG_*)`
    /// in slots 1..=n, plus its reverse NAT entry (no VIP marker: add one
    /// with [`Self::add_vip_marker`] for service addresses).
    #[expect(
        clippy::too_many_arguments,
        reason = "a seed helper mirroring the map fields"
    )]
    pub fn add_frontend(
        &mut self,
        vip: SocketAddrV4,
        proto: u8,
        scope: u8,
        svc_id: u32,
        flags: u16,
        affinity_timeout: u32,
        backends: &[(u32, SocketAddrV4, u8)],
    ) -> Result<(), MapError> {
        for (slot, (id, addr, bflags)) in backends.iter().enumerate() {
            self.backend4.insert(
                id,
                Backend4 {
                    addr: addr.ip().octets(),
                    port: addr.port(),
                    proto,
                    flags: *bflags,
                },
                0,
            )?;
            let slot = u32::try_from(slot + 1).expect("few backends");
            self.slots
                .insert(SlotKey { svc_id, slot }, SlotValue { backend_id: *id }, 0)?;
        }
        self.revnat4.insert(
            svc_id,
            RevNat4 {
                vip: vip.ip().octets(),
                port: vip.port(),
                proto,
                pad: 0,
            },
            0,
        )?;
        self.svc4.insert(
            Svc4Key {
                vip: vip.ip().octets(),
                port: vip.port(),
                proto,
                scope,
            },
            SvcValue {
                svc_id,
                count: u16::try_from(backends.len()).expect("few backends"),
                flags,
                affinity_timeout,
                pad: 0,
            },
            0,
        )
    }

    /// Records `addr` as the node address of interface `ifindex`.
    pub fn set_node_address(
        &mut self,
        ifindex: u32,
        addr: std::net::Ipv4Addr,
    ) -> Result<(), MapError> {
        self.node4.insert(
            ifindex,
            NodeAddr4 {
                addr: addr.octets(),
            },
            0,
        )
    }

    /// Admits clients in `net/len` to service `svc_id`.
    pub fn add_source_range(
        &mut self,
        svc_id: u32,
        net: std::net::Ipv4Addr,
        len: u8,
    ) -> Result<(), MapError> {
        let key = Key::new(
            32 + u32::from(len),
            SrcRange4 {
                svc_id: svc_id.to_be_bytes(),
                addr: net.octets(),
            },
        );
        self.srcrange4.insert(&key, 1, 0)
    }

    /// Writes the marker entry that makes `vip`'s address a known VIP.
    pub fn add_vip_marker(&mut self, vip: SocketAddrV4) -> Result<(), MapError> {
        self.svc4.insert(
            Svc4Key::vip_marker(vip.ip().octets()),
            SvcValue::VIP_MARKER,
            0,
        )
    }

    /// [`Self::add_service`] for IPv6: frontend `vip` (`proto`, scope
    /// external, no flags) with id `svc_id` and the `(backend id, address)`
    /// backends in slots 1..=n, and its VIP marker entry.
    pub fn add_service6(
        &mut self,
        vip: SocketAddrV6,
        proto: u8,
        svc_id: u32,
        backends: &[(u32, SocketAddrV6)],
    ) -> Result<(), Map6Error> {
        let backends: Vec<(u32, SocketAddrV6, u8)> =
            backends.iter().map(|(id, addr)| (*id, *addr, 0)).collect();
        self.add_frontend6(
            vip,
            proto,
            proxy_common::SCOPE_EXTERNAL,
            svc_id,
            0,
            0,
            &backends,
        )?;
        self.add_vip_marker6(vip)
    }

    /// [`Self::add_frontend`] for IPv6: a frontend entry of `scope` with
    /// `flags` and session affinity `affinity_timeout`, and its backends
    /// `(id, address, BACKEND_FLAG_*)` in slots 1..=n, in the datapath's
    /// safe order (backends, slots, then the frontend). IPv6 has no reverse
    /// NAT map; no VIP marker (see [`Self::add_vip_marker6`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "a seed helper mirroring the map fields"
    )]
    pub fn add_frontend6(
        &mut self,
        vip: SocketAddrV6,
        proto: u8,
        scope: u8,
        svc_id: u32,
        flags: u16,
        affinity_timeout: u32,
        backends: &[(u32, SocketAddrV6, u8)],
    ) -> Result<(), Map6Error> {
        for (slot, (id, addr, bflags)) in backends.iter().enumerate() {
            self.v6_mut()?.backend6.insert(
                id,
                Backend6 {
                    addr: addr.ip().octets(),
                    port: addr.port(),
                    proto,
                    flags: *bflags,
                },
                0,
            )?;
            let slot = u32::try_from(slot + 1).expect("few backends");
            self.slots
                .insert(SlotKey { svc_id, slot }, SlotValue { backend_id: *id }, 0)?;
        }
        self.v6_mut()?.svc6.insert(
            Svc6Key {
                vip: vip.ip().octets(),
                port: vip.port(),
                proto,
                scope,
            },
            SvcValue {
                svc_id,
                count: u16::try_from(backends.len()).expect("few backends"),
                flags,
                affinity_timeout,
                pad: 0,
            },
            0,
        )?;
        Ok(())
    }

    /// Writes the marker entry that makes `vip`'s address a known IPv6 VIP.
    pub fn add_vip_marker6(&mut self, vip: SocketAddrV6) -> Result<(), Map6Error> {
        self.v6_mut()?.svc6.insert(
            Svc6Key::vip_marker(vip.ip().octets()),
            SvcValue::VIP_MARKER,
            0,
        )?;
        Ok(())
    }

    /// Records `addr` as the IPv6 address of interface `ifindex` (key
    /// `NODE6_HAIRPIN_KEY`: the hairpin address).
    pub fn set_node_address6(&mut self, ifindex: u32, addr: Ipv6Addr) -> Result<(), Map6Error> {
        self.v6_mut()?.node6.insert(
            ifindex,
            NodeAddr6 {
                addr: addr.octets(),
            },
            0,
        )?;
        Ok(())
    }

    /// Admits IPv6 clients in `net/len` to service `svc_id`.
    pub fn add_source_range6(
        &mut self,
        svc_id: u32,
        net: Ipv6Addr,
        len: u8,
    ) -> Result<(), Map6Error> {
        let key = Key::new(
            32 + u32::from(len),
            SrcRange6 {
                svc_id: svc_id.to_be_bytes(),
                addr: net.octets(),
            },
        );
        self.v6_mut()?.srcrange6.insert(&key, 1, 0)?;
        Ok(())
    }
}

/// A translated flow, to seed or to look up its conntrack entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The client's address and port.
    pub client: SocketAddrV4,
    /// The service frontend the client sent to.
    pub vip: SocketAddrV4,
    /// The backend the flow is pinned to.
    pub backend: SocketAddrV4,
    /// IP protocol.
    pub proto: u8,
    /// Backend id.
    pub backend_id: u32,
    /// Service id.
    pub svc_id: u32,
    /// `CT_F_*` flags of the service-direction entry (the reply entry gets
    /// only `CT_F_REPLIED` of them). No sequence numbers are known.
    pub flags: u8,
    /// Creation time (`CLOCK_MONOTONIC` ns).
    pub created_ns: u64,
    /// Expiry time (`CLOCK_MONOTONIC` ns; 1 makes an expired entry).
    pub expires_ns: u64,
}

impl Flow {
    /// The key of the service-direction entry (client -> VIP).
    pub fn service_key(&self) -> Ct4Key {
        Ct4Key {
            saddr: self.client.ip().octets(),
            daddr: self.vip.ip().octets(),
            sport: self.client.port(),
            dport: self.vip.port(),
            proto: self.proto,
            dir: proxy_common::CT_DIR_SERVICE,
            pad: 0,
        }
    }

    /// The key of the reply-direction entry when the backend sees the
    /// flow come from `via` (source NAT): backend -> `via`.
    pub fn snat_reply_key(&self, via: SocketAddrV4) -> Ct4Key {
        Ct4Key {
            daddr: via.ip().octets(),
            dport: via.port(),
            ..self.reply_key()
        }
    }

    /// The key of the reply-direction entry (backend -> client).
    pub fn reply_key(&self) -> Ct4Key {
        Ct4Key {
            saddr: self.backend.ip().octets(),
            daddr: self.client.ip().octets(),
            sport: self.backend.port(),
            dport: self.client.port(),
            proto: self.proto,
            dir: proxy_common::CT_DIR_REPLY,
            pad: 0,
        }
    }
}

/// The two conntrack entries of `flow`: the service entry (NAT to the
/// backend) and the reply entry (NAT back to the VIP).
pub fn ct4_pair(flow: &Flow) -> [(Ct4Key, CtValue); 2] {
    let value = |nat: SocketAddrV4, flags| CtValue {
        nat_addr: nat.ip().octets(),
        nat_port: nat.port(),
        flags,
        pad: 0,
        backend_id: flow.backend_id,
        svc_id: flow.svc_id,
        created_ns: flow.created_ns,
        expires_ns: flow.expires_ns,
        seq_next: 0,
        peer_addr: flow.client.ip().octets(),
        peer_port: flow.client.port(),
        pad2: 0,
        pad3: 0,
    };
    [
        (flow.service_key(), value(flow.backend, flow.flags)),
        (
            flow.reply_key(),
            value(flow.vip, flow.flags & proxy_common::CT_F_REPLIED),
        ),
    ]
}

/// An SNAT value naming `addr` (its other fields zero).
fn snat4_value(addr: SocketAddrV4) -> Snat4Value {
    // Stamp 0: a seeded entry is no flow being created right now.
    Snat4Value {
        addr: addr.ip().octets(),
        port: addr.port(),
        stamp: 0,
    }
}

/// A translated IPv6 flow, to seed or to look up its conntrack entries (as
/// [`Flow`] for IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow6 {
    /// The client's address and port.
    pub client: SocketAddrV6,
    /// The service frontend the client sent to.
    pub vip: SocketAddrV6,
    /// The backend the flow is pinned to.
    pub backend: SocketAddrV6,
    /// IP protocol.
    pub proto: u8,
    /// Backend id.
    pub backend_id: u32,
    /// Service id.
    pub svc_id: u32,
    /// `CT_F_*` flags of the service-direction entry (the reply entry gets
    /// only `CT_F_REPLIED` of them). No sequence numbers are known.
    pub flags: u8,
    /// Creation time (`CLOCK_MONOTONIC` ns).
    pub created_ns: u64,
    /// Expiry time (`CLOCK_MONOTONIC` ns; 1 makes an expired entry).
    pub expires_ns: u64,
}

impl Flow6 {
    /// The key of the service-direction entry (client -> VIP).
    pub fn service_key(&self) -> Ct6Key {
        Ct6Key {
            saddr: self.client.ip().octets(),
            daddr: self.vip.ip().octets(),
            sport: self.client.port(),
            dport: self.vip.port(),
            proto: self.proto,
            dir: proxy_common::CT_DIR_SERVICE,
            pad: 0,
        }
    }

    /// The key of the reply-direction entry when the backend sees the
    /// flow come from `via` (source NAT): backend -> `via`.
    pub fn snat_reply_key(&self, via: SocketAddrV6) -> Ct6Key {
        Ct6Key {
            daddr: via.ip().octets(),
            dport: via.port(),
            ..self.reply_key()
        }
    }

    /// The key of the reply-direction entry (backend -> client).
    pub fn reply_key(&self) -> Ct6Key {
        Ct6Key {
            saddr: self.backend.ip().octets(),
            daddr: self.client.ip().octets(),
            sport: self.backend.port(),
            dport: self.client.port(),
            proto: self.proto,
            dir: proxy_common::CT_DIR_REPLY,
            pad: 0,
        }
    }
}

/// The two conntrack entries of `flow` (as [`ct4_pair`]): the service entry
/// (NAT to the backend) and the reply entry (NAT back to the VIP).
pub fn ct6_pair(flow: &Flow6) -> [(Ct6Key, Ct6Value); 2] {
    let value = |nat: SocketAddrV6, flags| Ct6Value {
        nat_addr: nat.ip().octets(),
        nat_port: nat.port(),
        flags,
        pad: 0,
        backend_id: flow.backend_id,
        svc_id: flow.svc_id,
        pad3: 0,
        created_ns: flow.created_ns,
        expires_ns: flow.expires_ns,
        seq_next: 0,
        peer_addr: flow.client.ip().octets(),
        peer_port: flow.client.port(),
        pad2: 0,
    };
    [
        (flow.service_key(), value(flow.backend, flow.flags)),
        (
            flow.reply_key(),
            value(flow.vip, flow.flags & proxy_common::CT_F_REPLIED),
        ),
    ]
}
