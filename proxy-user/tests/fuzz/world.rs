//! The world of the packet fuzz, written once for both families: its
//! hosts and ports ([`Host`], [`Ep`]), the frontends and backends to seed
//! ([`FRONTENDS`]), and what the seeded configuration allows
//! ([`Allowed`]), in the addresses a [`Family`] gives the hosts.

use super::*;

/// A host of the world; [`Family::host`] gives its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// Cluster IP of WEB, DNS and the two empty ports.
    Vip,
    /// Cluster IP with session affinity.
    Aff,
    /// This node.
    Node,
    /// Load balancer with source ranges ([`Family::source_range`]).
    Lb,
    /// External IP, UDP, one local and one remote backend.
    ExtUdp,
    /// Cluster IP whose second slot is missing.
    Broken,
    /// Pods of this node (clients of the cluster IPs).
    PodA,
    PodB,
    /// Clients outside the node: in the load balancer's ranges, and not.
    Outside,
    Stranger,
    /// A router (source of ICMP errors).
    Router,
    /// The hairpin address (the source a pod reaching itself sees);
    /// link-local.
    Hairpin,
    B1,
    B2,
    B3,
    B4,
    L1,
    L2,
    L3,
    R1,
    R2,
}

/// A host and a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ep(pub Host, pub u16);

pub const WEB: Ep = Ep(Host::Vip, 80);
pub const DNS: Ep = Ep(Host::Vip, 53);
pub const EMPTY_TCP: Ep = Ep(Host::Vip, 81);
pub const EMPTY_UDP: Ep = Ep(Host::Vip, 54);
pub const AFF: Ep = Ep(Host::Aff, 80);
pub const NP_LOCAL: Ep = Ep(Host::Node, 30080);
pub const NP_REMOTE: Ep = Ep(Host::Node, 30081);
pub const NP_UDP: Ep = Ep(Host::Node, 30053);
pub const NP_ETP_LOCAL: Ep = Ep(Host::Node, 30090);
pub const NP_AFF: Ep = Ep(Host::Node, 30070);
pub const LB: Ep = Ep(Host::Lb, 80);
pub const EXT_UDP: Ep = Ep(Host::ExtUdp, 53);
/// Node port without backends.
pub const NP_EMPTY: Ep = Ep(Host::Node, 30099);
/// Cluster IP whose second slot is missing.
pub const BROKEN: Ep = Ep(Host::Broken, 53);

/// A backend: (id, address, local?).
pub type Backend = (u32, Ep, bool);

pub const B1: Backend = (1, Ep(Host::B1, 8080), true);
pub const B2: Backend = (2, Ep(Host::B2, 8080), true);
pub const B3: Backend = (3, Ep(Host::B3, 5353), true);
pub const B4: Backend = (4, Ep(Host::B4, 5353), true);
pub const L1: Backend = (11, Ep(Host::L1, 8080), true);
pub const L2: Backend = (12, Ep(Host::L2, 8080), true);
pub const L3: Backend = (13, Ep(Host::L3, 5353), true);
pub const R1: Backend = (21, Ep(Host::R1, 8080), false);
pub const R2: Backend = (22, Ep(Host::R2, 5353), false);

pub const AFFINITY_S: u32 = 100;

/// One frontend entry to seed (ids before [`Family::IDS`] is added).
pub struct Frontend {
    pub ep: Ep,
    pub proto: u8,
    pub scope: u8,
    pub svc_id: u32,
    pub flags: u16,
    pub affinity: u32,
    pub backends: &'static [Backend],
    pub vip_marker: bool,
}

pub const NPF: u16 = SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT;

pub const FRONTENDS: &[Frontend] = &[
    fe(WEB, IPPROTO_TCP, 1, 0, 0, &[B1, B2], true),
    fe(DNS, IPPROTO_UDP, 2, 0, 0, &[B3], true),
    fe(EMPTY_TCP, IPPROTO_TCP, 3, 0, 0, &[], true),
    fe(EMPTY_UDP, IPPROTO_UDP, 4, 0, 0, &[], true),
    fe(AFF, IPPROTO_TCP, 5, 0, AFFINITY_S, &[B1, B2], true),
    fe(NP_LOCAL, IPPROTO_TCP, 11, NPF, 0, &[L1], false),
    fe(NP_REMOTE, IPPROTO_TCP, 12, NPF, 0, &[R1], false),
    fe(NP_UDP, IPPROTO_UDP, 13, NPF, 0, &[R2], false),
    fe(
        LB,
        IPPROTO_TCP,
        14,
        SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES,
        0,
        &[L1],
        true,
    ),
    Frontend {
        scope: SCOPE_INTERNAL,
        ..fe(NP_ETP_LOCAL, IPPROTO_TCP, 16, NPF, 0, &[R1], false)
    },
    fe(
        NP_ETP_LOCAL,
        IPPROTO_TCP,
        15,
        NPF | SVC_FLAG_LOCAL_ONLY | SVC_FLAG_TWO_SCOPES,
        0,
        &[],
        false,
    ),
    fe(NP_AFF, IPPROTO_TCP, 17, NPF, AFFINITY_S, &[L1, L2], false),
    fe(
        EXT_UDP,
        IPPROTO_UDP,
        18,
        SVC_FLAG_EXTERNAL,
        0,
        &[L3, R2],
        true,
    ),
    fe(NP_EMPTY, IPPROTO_TCP, 19, NPF, 0, &[], false),
    // Its slot 2 is removed after seeding: a backend the service points
    // to is missing (an agent bug the datapath must survive).
    fe(BROKEN, IPPROTO_UDP, 20, 0, 0, &[B3, B4], true),
];

/// The service whose slot 2 is missing.
pub const BROKEN_ID: u32 = 20;
/// The service with source ranges.
pub const LB_ID: u32 = 14;

pub const fn fe(
    ep: Ep,
    proto: u8,
    svc_id: u32,
    flags: u16,
    affinity: u32,
    backends: &'static [Backend],
    vip_marker: bool,
) -> Frontend {
    Frontend {
        ep,
        proto,
        scope: SCOPE_EXTERNAL,
        svc_id,
        flags,
        affinity,
        backends,
        vip_marker,
    }
}

/// The ports packets are biased towards, besides those of seeded flows.
pub const PORTS: &[u16] = &[
    80, 53, 81, 54, 9999, 30080, 30081, 30053, 30090, 30070, 8080, 5353,
];

/// The addresses packets are biased towards (some twice: more often).
pub const INTERESTING: &[Host] = &[
    Host::Vip,
    Host::Vip,
    Host::Aff,
    Host::Node,
    Host::Node,
    Host::Lb,
    Host::ExtUdp,
    Host::Broken,
    Host::PodA,
    Host::PodB,
    Host::Outside,
    Host::Outside,
    Host::Stranger,
    Host::Router,
    Host::B1,
    Host::B2,
    Host::B3,
    Host::L1,
    Host::L2,
    Host::L3,
    Host::R1,
    Host::R2,
    Host::Hairpin,
];

/// The address of `ep` in family `F`.
pub fn sock<F: Family>(ep: Ep) -> F::Sock {
    F::sock(F::host(ep.0), ep.1)
}

/// Seeds the world of family `F` (see [`FRONTENDS`]).
pub fn seed_services<F: Family>(dp: &mut TestDatapath) -> Result<(), String> {
    F::seed_node(dp, F::host(Host::Node))?;
    for f in FRONTENDS {
        let backends: Vec<(u32, F::Sock, u8)> = f
            .backends
            .iter()
            .map(|(id, ep, local)| {
                let flags = if *local { BACKEND_FLAG_LOCAL } else { 0 };
                (id + F::IDS, sock::<F>(*ep), flags)
            })
            .collect();
        let seed = SeedFrontend {
            addr: sock::<F>(f.ep),
            proto: f.proto,
            scope: f.scope,
            svc_id: f.svc_id + F::IDS,
            flags: f.flags,
            affinity: f.affinity,
            backends: &backends,
        };
        F::seed_frontend(dp, &seed).map_err(|e| format!("seed {} {}: {e}", F::NAME, seed.addr))?;
        if f.vip_marker {
            F::seed_marker(dp, seed.addr).map_err(|e| format!("seed marker {}: {e}", seed.addr))?;
        }
    }
    dp.slots
        .remove(&SlotKey {
            svc_id: BROKEN_ID + F::IDS,
            slot: 2,
        })
        .map_err(|e| format!("remove a slot of BROKEN ({}): {e}", F::NAME))?;
    let (net, len) = F::source_range();
    F::seed_range(dp, LB_ID + F::IDS, net, len)
        .map_err(|e| format!("seed source range ({}): {e}", F::NAME))
}

/// A frontend to seed, in one family's addresses.
pub struct SeedFrontend<'a, S> {
    pub addr: S,
    pub proto: u8,
    pub scope: u8,
    pub svc_id: u32,
    pub flags: u16,
    pub affinity: u32,
    /// (backend id, address, `BACKEND_FLAG_*`).
    pub backends: &'a [(u32, S, u8)],
}

/// A flow to seed, in one family's addresses.
#[derive(Clone, Copy, Debug)]
pub struct SeededFlow<S> {
    pub client: S,
    pub vip: S,
    pub backend: S,
    pub proto: u8,
    pub backend_id: u32,
    pub svc_id: u32,
    pub flags: u8,
    pub created_ns: u64,
    pub expires_ns: u64,
    /// The address the backend sees the client as, when source-NATed.
    pub via: Option<S>,
}

/// What the seeded configuration of one family allows, for the map checks.
pub struct Allowed<A> {
    /// Frontends: (address, port, proto).
    pub frontends: BTreeSet<(A, u16, u8)>,
    pub frontend_addrs: BTreeSet<A>,
    /// Backends: id -> (address, port, proto).
    pub backends: BTreeMap<u32, (A, u16, u8)>,
    pub backend_addrs: BTreeSet<A>,
    /// Backends of each service id.
    pub svc_backends: BTreeMap<u32, Vec<u32>>,
    /// Service id -> frontend (address, port, proto).
    pub svc_frontend: BTreeMap<u32, (A, u16, u8)>,
    pub affinity_svcs: BTreeSet<u32>,
    /// Addresses SNATed flows may leave with: node, hairpin.
    pub snat_addrs: BTreeSet<A>,
}

impl<A: Copy + Ord> Allowed<A> {
    pub fn new<F: Family<Addr = A>>() -> Self {
        let mut a = Allowed {
            frontends: BTreeSet::new(),
            frontend_addrs: BTreeSet::new(),
            backends: BTreeMap::new(),
            backend_addrs: BTreeSet::new(),
            svc_backends: BTreeMap::new(),
            svc_frontend: BTreeMap::new(),
            affinity_svcs: BTreeSet::new(),
            snat_addrs: [F::host(Host::Node), F::host(Host::Hairpin)]
                .into_iter()
                .collect(),
        };
        for f in FRONTENDS {
            let key = (F::host(f.ep.0), f.ep.1, f.proto);
            let svc_id = f.svc_id + F::IDS;
            a.frontends.insert(key);
            a.frontend_addrs.insert(key.0);
            a.svc_frontend.insert(svc_id, key);
            a.svc_backends
                .insert(svc_id, f.backends.iter().map(|b| b.0 + F::IDS).collect());
            if f.affinity > 0 {
                a.affinity_svcs.insert(svc_id);
            }
            for (id, b, _) in f.backends {
                let addr = F::host(b.0);
                a.backends.insert(id + F::IDS, (addr, b.1, f.proto));
                a.backend_addrs.insert(addr);
            }
        }
        a
    }

    pub fn is_backend(&self, addr: A, port: u16, proto: u8) -> bool {
        self.backends.values().any(|b| *b == (addr, port, proto))
    }

    /// The backends of the frontend `addr:port` (all scopes).
    pub fn backends_of(&self, addr: A, port: u16, proto: u8) -> Vec<(A, u16)> {
        self.svc_frontend
            .iter()
            .filter(|(_, f)| **f == (addr, port, proto))
            .flat_map(|(id, _)| self.svc_backends[id].iter())
            .map(|b| {
                let (a, p, _) = self.backends[b];
                (a, p)
            })
            .collect()
    }
}
