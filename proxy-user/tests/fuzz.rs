//! Packet fuzz of every datapath program, through `BPF_PROG_TEST_RUN`
//! (issue 11, "Conntrack you can trust"; IPv6 since issue 13,
//! "Dual-stack").
//!
//! Random and mutated frames of both families go through
//! `svcnat_pod_ingress`, `svcnat_pod_egress`, `svcnat_node_xdp` and
//! `svcnat_node_egress` (which tail-call the IPv6 pipelines for IPv6
//! frames) with a world of services seeded in both families (cluster IPs,
//! node ports with local and remote backends, source ranges, session
//! affinity, traffic policy Local), established flows and SNAT entries
//! seeded, and addresses and ports biased towards the seeded ones.
//! Replies to what the programs let through, ICMP (ICMPv6) errors about
//! it and the later fragments of translated first fragments are sent back
//! in, so that the reverse paths are reached too. IPv6 frames also carry
//! extension headers (hop-by-hop, routing, destination options, atomic
//! and real fragment headers, one the datapath does not walk), and NDP.
//!
//! The world is written once, in terms of [`Host`]s and ports; a
//! [`Family`] gives each host its address, builds and reads the headers
//! that differ (the IP header, fragments, ICMP numbers, what NAT may
//! rewrite) and reads its maps as family-free rows. The generator
//! ([`Side`]), the per-packet checks ([`Run::run_one`], [`check_output`],
//! [`check_rewrite`]) and the map checks ([`check_state`]) are one code
//! for both. The two families' packets alternate, on one loaded datapath
//! holding both worlds (their service and backend ids apart).
//!
//! After every packet: exactly one stats reason was counted, for the input's
//! length; the verdict is one the program may return; a packet counted under
//! a `pass_*` reason is unchanged; a `reject_*` one is a well-formed reply to
//! the sender (a TCP RST or a port unreachable: ICMP 3/3, ICMPv6 1/4); any
//! other changed packet keeps its length and structure, changes only
//! addresses, ports, checksums, MACs and the TTL (hop limit), and keeps the
//! residue of every checksum (see [`checksum_residues`]: a valid checksum
//! stays valid, a wrong one stays wrong by as much, UDP without checksum
//! stays without; over IPv6 every layer 4 checksum, ICMPv6's included,
//! covers the pseudo-header, and a rewritten UDP datagram never carries a
//! checksum of 0). New flows go to a backend of the frontend addressed;
//! reverse-translated replies come from a frontend.
//!
//! Every [`CHECK_EVERY`] packets and at the end of each round the maps of
//! both families are checked: the service, slot, backend, reverse NAT, node
//! address and source range maps are exactly as seeded; every conntrack,
//! SNAT, affinity and fragment entry is one the packets could have created
//! from the seeded services of its family (see [`check_state`]). Dumping
//! the maps costs a few hundred syscalls, against one run and one stats
//! read per packet, so checking after every packet would multiply the run
//! time; every 16 packets keeps a violation attributed to the 16 packets
//! printed with it (`SVCNAT_FUZZ_CHECK_EVERY=1` checks after each one). The
//! state maps are cleared and the flows reseeded every [`ROUND`] packets,
//! so they stay small.
//!
//! Checks are keyed on the public types of `proxy-common` and on stats
//! reason names (`pass_*`, `drop_*`, `reject_*`), not on the datapath's
//! internals, so reasons added later are classified by their names.
//!
//! `SVCNAT_FUZZ_PACKETS` (default 20,000, half of each family) and
//! `SVCNAT_FUZZ_SEED` set the run; `cargo xtask fuzz --packets N --seed S`
//! runs it with many packets. Needs root and the eBPF object; without them
//! the test prints why and passes.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::{Debug, Display, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::Instant,
};

use proxy_common::{
    BACKEND_FLAG_LOCAL, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_CLOSED, CT_F_SEEN_NON_SYN, CT_F_SNAT,
    FRAG_DIR_REVSNAT_SRC, FRAG_DIR_SNAT_SRC, HAIRPIN_ADDR_DEFAULT, HAIRPIN6_ADDR_DEFAULT,
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, REMAP_PORT_MAX, REMAP_PORT_MIN, Reason,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_EXTERNAL,
    SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SlotKey,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use svcnat_testkit::{
    datapath::{
        Flow, Flow6, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, TcProgram,
        TestDatapath, XDP_DROP, XDP_PASS, XDP_TX, monotonic_ns,
    },
    fixture::hex,
    packet::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ExtHeader, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED,
        ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED, ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG,
        ICMP6_PARAM_PROBLEM, ICMP6_PORT_UNREACH, ICMP6_TIME_EXCEEDED, IP6_OFFSET_MASK,
        IPPROTO_EXPERIMENT1, IPPROTO_FRAGMENT, IPV6_HLEN, IpAddress, IpFamily, Ipv4Fields,
        Ipv6Fields, NA_OVERRIDE, NA_SOLICITED, PacketBuilder, Residue, SocketAddress, TCP_ACK,
        TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, arp_request, checksum_residues, checksums_ok,
        ethernet_frame, ext_chain, fragment, fragment6, internet_checksum, parse,
    },
    skip::Needs,
    skip_unless,
};

/// Packets between two map checks.
const CHECK_EVERY: u64 = 16;
/// Packets between two clears of the state maps.
const ROUND: u64 = 256;
/// Default number of packets of `cargo test`, both families together.
const DEFAULT_PACKETS: u64 = 20_000;
/// Default seed.
const DEFAULT_SEED: u64 = 0x5eed_0011;
/// Failures printed in full; the rest are counted.
const MAX_REPORTED: usize = 12;

/// `TC_ACT_UNSPEC` (`TCX_NEXT` for TCX links): the datapath may return it
/// for "pass" instead of `TC_ACT_OK`.
const TC_ACT_UNSPEC: u32 = u32::MAX;

const NS: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------
// The world, once for both families (198.18.0.0/15 and 2001:db8::/32 only)
// ---------------------------------------------------------------------------

/// A host of the world; [`Family::host`] gives its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
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
struct Ep(Host, u16);

const WEB: Ep = Ep(Host::Vip, 80);
const DNS: Ep = Ep(Host::Vip, 53);
const EMPTY_TCP: Ep = Ep(Host::Vip, 81);
const EMPTY_UDP: Ep = Ep(Host::Vip, 54);
const AFF: Ep = Ep(Host::Aff, 80);
const NP_LOCAL: Ep = Ep(Host::Node, 30080);
const NP_REMOTE: Ep = Ep(Host::Node, 30081);
const NP_UDP: Ep = Ep(Host::Node, 30053);
const NP_ETP_LOCAL: Ep = Ep(Host::Node, 30090);
const NP_AFF: Ep = Ep(Host::Node, 30070);
const LB: Ep = Ep(Host::Lb, 80);
const EXT_UDP: Ep = Ep(Host::ExtUdp, 53);
/// Node port without backends.
const NP_EMPTY: Ep = Ep(Host::Node, 30099);
/// Cluster IP whose second slot is missing.
const BROKEN: Ep = Ep(Host::Broken, 53);

/// A backend: (id, address, local?).
type Backend = (u32, Ep, bool);

const B1: Backend = (1, Ep(Host::B1, 8080), true);
const B2: Backend = (2, Ep(Host::B2, 8080), true);
const B3: Backend = (3, Ep(Host::B3, 5353), true);
const B4: Backend = (4, Ep(Host::B4, 5353), true);
const L1: Backend = (11, Ep(Host::L1, 8080), true);
const L2: Backend = (12, Ep(Host::L2, 8080), true);
const L3: Backend = (13, Ep(Host::L3, 5353), true);
const R1: Backend = (21, Ep(Host::R1, 8080), false);
const R2: Backend = (22, Ep(Host::R2, 5353), false);

const AFFINITY_S: u32 = 100;

/// One frontend entry to seed (ids before [`Family::IDS`] is added).
struct Frontend {
    ep: Ep,
    proto: u8,
    scope: u8,
    svc_id: u32,
    flags: u16,
    affinity: u32,
    backends: &'static [Backend],
    vip_marker: bool,
}

const NPF: u16 = SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT;

const FRONTENDS: &[Frontend] = &[
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
const BROKEN_ID: u32 = 20;
/// The service with source ranges.
const LB_ID: u32 = 14;

const fn fe(
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
const PORTS: &[u16] = &[
    80, 53, 81, 54, 9999, 30080, 30081, 30053, 30090, 30070, 8080, 5353,
];

/// The addresses packets are biased towards (some twice: more often).
const INTERESTING: &[Host] = &[
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
fn sock<F: Family>(ep: Ep) -> F::Sock {
    F::sock(F::host(ep.0), ep.1)
}

/// Seeds the world of family `F` (see [`FRONTENDS`]).
fn seed_services<F: Family>(dp: &mut TestDatapath) -> Result<(), String> {
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
struct SeedFrontend<'a, S> {
    addr: S,
    proto: u8,
    scope: u8,
    svc_id: u32,
    flags: u16,
    affinity: u32,
    /// (backend id, address, `BACKEND_FLAG_*`).
    backends: &'a [(u32, S, u8)],
}

/// A flow to seed, in one family's addresses.
#[derive(Clone, Copy, Debug)]
struct SeededFlow<S> {
    client: S,
    vip: S,
    backend: S,
    proto: u8,
    backend_id: u32,
    svc_id: u32,
    flags: u8,
    created_ns: u64,
    expires_ns: u64,
    /// The address the backend sees the client as, when source-NATed.
    via: Option<S>,
}

/// Builds the testkit's flow type (`Flow`, `Flow6`: same fields) from a
/// [`SeededFlow`].
macro_rules! testkit_flow {
    ($ty:ident, $f:expr) => {
        $ty {
            client: $f.client,
            vip: $f.vip,
            backend: $f.backend,
            proto: $f.proto,
            backend_id: $f.backend_id,
            svc_id: $f.svc_id,
            flags: $f.flags,
            created_ns: $f.created_ns,
            expires_ns: $f.expires_ns,
        }
    };
}

/// What the seeded configuration of one family allows, for the map checks.
struct Allowed<A> {
    /// Frontends: (address, port, proto).
    frontends: BTreeSet<(A, u16, u8)>,
    frontend_addrs: BTreeSet<A>,
    /// Backends: id -> (address, port, proto).
    backends: BTreeMap<u32, (A, u16, u8)>,
    backend_addrs: BTreeSet<A>,
    /// Backends of each service id.
    svc_backends: BTreeMap<u32, Vec<u32>>,
    /// Service id -> frontend (address, port, proto).
    svc_frontend: BTreeMap<u32, (A, u16, u8)>,
    affinity_svcs: BTreeSet<u32>,
    /// Addresses SNATed flows may leave with: node, hairpin.
    snat_addrs: BTreeSet<A>,
}

impl<A: Copy + Ord> Allowed<A> {
    fn new<F: Family<Addr = A>>() -> Self {
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

    fn is_backend(&self, addr: A, port: u16, proto: u8) -> bool {
        self.backends.values().any(|b| *b == (addr, port, proto))
    }

    /// The backends of the frontend `addr:port` (all scopes).
    fn backends_of(&self, addr: A, port: u16, proto: u8) -> Vec<(A, u16)> {
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

// ---------------------------------------------------------------------------
// The families
// ---------------------------------------------------------------------------

/// A conntrack or SNAT key of either family, as the checks read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tuple<A> {
    saddr: A,
    daddr: A,
    sport: u16,
    dport: u16,
    proto: u8,
    dir: u8,
}

/// A conntrack entry of either family.
struct CtRow<A> {
    key: Tuple<A>,
    nat: (A, u16),
    backend_id: u32,
    svc_id: u32,
    flags: u8,
    /// The entry as the map holds it, for messages.
    text: String,
}

/// A fragment entry of either family.
struct FragRow<A> {
    saddr: A,
    daddr: A,
    proto: u8,
    dir: u8,
    addr: A,
    text: String,
}

/// The state maps of one family (what the datapath writes), as rows.
struct State<A> {
    ct: Vec<CtRow<A>>,
    /// SNAT keys, with the entries' text.
    snat: Vec<(Tuple<A>, String)>,
    /// Affinity entries: (service id, backend id, text).
    affinity: Vec<(u32, u32, String)>,
    frag: Vec<FragRow<A>>,
}

/// Reads the state maps of one family into a [`State`]: one code for both,
/// since the IPv4 and IPv6 keys and values have the same field names.
macro_rules! state_rows {
    ($m:expr, $ct:ident, $snat:ident, $aff:ident, $frag:ident) => {{
        fn dump<K: aya::Pod + Debug, V: aya::Pod + Debug, R>(
            name: &str,
            it: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
            row: impl Fn(&K, &V, String) -> R,
        ) -> Result<Vec<R>, String> {
            it.map(|r| {
                let (k, v) = r.map_err(|e| format!("dump {name}: {e}"))?;
                Ok(row(&k, &v, format!("{name} {k:?} -> {v:?}")))
            })
            .collect()
        }
        macro_rules! tuple {
            ($k:expr) => {
                Tuple {
                    saddr: $k.saddr.into(),
                    daddr: $k.daddr.into(),
                    sport: $k.sport,
                    dport: $k.dport,
                    proto: $k.proto,
                    dir: $k.dir,
                }
            };
        }
        let m = $m;
        Ok(State {
            ct: dump(stringify!($ct), m.$ct.iter(), |k, v, text| CtRow {
                key: tuple!(k),
                nat: (v.nat_addr.into(), v.nat_port),
                backend_id: v.backend_id,
                svc_id: v.svc_id,
                flags: v.flags,
                text,
            })?,
            snat: dump(stringify!($snat), m.$snat.iter(), |k, _, text| {
                (tuple!(k), text)
            })?,
            affinity: dump(stringify!($aff), m.$aff.iter(), |k, v, text| {
                (k.svc_id, v.backend_id, text)
            })?,
            frag: dump(stringify!($frag), m.$frag.iter(), |k, v, text| FragRow {
                saddr: k.saddr.into(),
                daddr: k.daddr.into(),
                proto: k.proto,
                dir: k.dir,
                addr: v.addr.into(),
                text,
            })?,
        })
    }};
}

/// The methods of [`Family`] that are one code over the family's types,
/// its parsed header (`ipv4`, `ipv6`) and the testkit's seed helpers of the
/// family (named `..` and `..6`).
macro_rules! family_plumbing {
    (
        sock: $sock:ident,
        addr: $addr:ident,
        parsed: $parsed:ident,
        flow: $flow:ident,
        seed: [$node:ident, $frontend:ident, $marker:ident, $range:ident, $add_flow:ident, $add_snat:ident],
        state: |$dp:ident| ($maps:expr, $ct:ident, $snat:ident, $aff:ident, $frag:ident),
    ) => {
        fn ip(s: $sock) -> $addr {
            *s.ip()
        }

        fn port(s: $sock) -> u16 {
            s.port()
        }

        fn ends(frame: &[u8]) -> Option<($sock, $sock, u8)> {
            let p = parse(frame).ok()?;
            let ip = p.$parsed.as_ref()?;
            Some((ip.source().ok()?, ip.destination().ok()?, ip.proto))
        }

        fn addrs(frame: &[u8]) -> Result<($addr, $addr), String> {
            let p = parse(frame)?;
            let ip = p
                .$parsed
                .as_ref()
                .ok_or_else(|| format!("not {}: ethertype {:#06x}", Self::NAME, p.ethertype))?;
            Ok((ip.src, ip.dst))
        }

        fn seed_node(dp: &mut TestDatapath, addr: $addr) -> Result<(), String> {
            dp.$node(TEST_RUN_IFINDEX, addr)
                .map_err(|e| format!("seed node address: {e}"))
        }

        fn seed_frontend(dp: &mut TestDatapath, f: &SeedFrontend<$sock>) -> Result<(), String> {
            dp.$frontend(
                f.addr, f.proto, f.scope, f.svc_id, f.flags, f.affinity, f.backends,
            )
            .map_err(|e| e.to_string())
        }

        fn seed_marker(dp: &mut TestDatapath, vip: $sock) -> Result<(), String> {
            dp.$marker(vip).map_err(|e| e.to_string())
        }

        fn seed_range(dp: &mut TestDatapath, svc: u32, net: $addr, len: u8) -> Result<(), String> {
            dp.$range(svc, net, len).map_err(|e| e.to_string())
        }

        fn seed_flow(dp: &mut TestDatapath, f: &SeededFlow<$sock>) -> Result<(), String> {
            let flow = testkit_flow!($flow, f);
            match f.via {
                None => dp.$add_flow(&flow),
                Some(via) => dp.$add_snat(&flow, via),
            }
            .map_err(|e| format!("seed flow: {e}"))
        }

        fn state($dp: &TestDatapath) -> Result<State<$addr>, String> {
            state_rows!($maps, $ct, $snat, $aff, $frag)
        }
    };
}

/// The builder of family `F`'s frames.
type P<F> = PacketBuilder<<F as Family>::Ip>;

/// What differs between IPv4 and IPv6 for the fuzz: the world's addresses,
/// the header fields and fragments the generator makes, how a frame is
/// read (ends, layer 4, what NAT may rewrite), and the maps.
trait Family: Copy + 'static {
    /// The builder's header fields.
    type Ip: IpFamily<Addr = Self::Addr>;
    type Addr: IpAddress<Family = Self::Ip> + Copy + Ord + Debug + Display;
    type Sock: SocketAddress<Family = Self::Ip> + Copy + Eq + Debug + Display;
    const NAME: &'static str;
    /// Added to the world's service and backend ids (one id space).
    const IDS: u32;
    /// The IP version nibble.
    const VERSION: u8;
    /// Length of the IP header without options or extension headers.
    const IP_HLEN: usize;
    /// Whether the IP header has a checksum.
    const HEADER_CHECKSUM: bool;
    /// ICMP type and code of a port unreachable (what a reject sends).
    const PORT_UNREACH: (u8, u8);
    /// ICMP type and code of "fragmentation needed" / "packet too big".
    const TOO_BIG: (u8, u8);
    /// The other family's ethertype (frames this family's pipeline must
    /// leave to the other).
    const OTHER_ETHERTYPE: u16;

    fn host(h: Host) -> Self::Addr;
    /// The load balancer's source range.
    fn source_range() -> (Self::Addr, u8);
    fn sock(a: Self::Addr, port: u16) -> Self::Sock;
    fn ip(s: Self::Sock) -> Self::Addr;
    fn port(s: Self::Sock) -> u16;
    /// A random address of the test range.
    fn random_addr(rng: &mut StdRng) -> Self::Addr;
    /// Keeps the outer (and, for ICMP, the quoted) addresses of a frame in
    /// the test range after random bytes or mutations, as the project's
    /// address rules ask; everything else stays random.
    fn confine(frame: &mut [u8]);
    /// Random IP header fields (IPv4 options, IPv6 extension headers, ...).
    fn header_fields(rng: &mut StdRng, b: P<Self>) -> P<Self>;
    /// A random ICMP error type and code.
    fn icmp_error_type(rng: &mut StdRng) -> (u8, u8);
    /// A packet only this family has (NDP), from `src` about `dst`.
    fn own_kind(rng: &mut StdRng, src: Self::Addr, dst: Self::Addr) -> Option<P<Self>>;
    /// `b` made to be split by [`Self::fragment`]: true lengths, not a
    /// fragment already.
    fn whole(b: P<Self>) -> P<Self>;
    /// `b` as a lone later fragment.
    fn later_fragment(rng: &mut StdRng, b: P<Self>) -> P<Self>;
    /// Splits the datagram in `frame` into fragments of `chunk` bytes.
    fn fragment(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>>;
    /// Makes a fragment one of another datagram (another id).
    fn other_datagram(frame: &mut [u8]);
    /// More templates for the truncation sweep.
    fn sweep_extra(pod: Self::Sock, dns: Self::Sock) -> Vec<Vec<u8>>;
    /// Source, destination and protocol of a TCP or UDP frame.
    fn ends(frame: &[u8]) -> Option<(Self::Sock, Self::Sock, u8)>;
    /// Source and destination addresses.
    fn addrs(frame: &[u8]) -> Result<(Self::Addr, Self::Addr), String>;
    /// The layer 4 protocol and offset, from the frame's bytes as the
    /// datapath reads them (even where a length field says they are cut).
    fn l4_in_frame(frame: &[u8]) -> Option<(u8, usize)>;
    /// Marks (`allow(from, to)`) the bytes of `input` past the MACs that
    /// NAT may write: hop limit, addresses, ports, checksums, and in an
    /// ICMP error the quoted header's.
    fn rewritable(input: &[u8], allow: &mut dyn FnMut(usize, usize));

    fn seed_node(dp: &mut TestDatapath, addr: Self::Addr) -> Result<(), String>;
    fn seed_frontend(dp: &mut TestDatapath, f: &SeedFrontend<Self::Sock>) -> Result<(), String>;
    fn seed_marker(dp: &mut TestDatapath, vip: Self::Sock) -> Result<(), String>;
    fn seed_range(
        dp: &mut TestDatapath,
        svc_id: u32,
        net: Self::Addr,
        len: u8,
    ) -> Result<(), String>;
    /// Seeds a flow (source-NATed when it has a `via`).
    fn seed_flow(dp: &mut TestDatapath, f: &SeededFlow<Self::Sock>) -> Result<(), String>;
    fn state(dp: &TestDatapath) -> Result<State<Self::Addr>, String>;
}

#[derive(Clone, Copy)]
struct V4;

#[derive(Clone, Copy)]
struct V6;

impl Family for V4 {
    type Ip = Ipv4Fields;
    type Addr = Ipv4Addr;
    type Sock = SocketAddrV4;
    const NAME: &'static str = "ipv4";
    const IDS: u32 = 0;
    const VERSION: u8 = 4;
    const IP_HLEN: usize = 20;
    const HEADER_CHECKSUM: bool = true;
    const PORT_UNREACH: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH);
    const TOO_BIG: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
    const OTHER_ETHERTYPE: u16 = ETH_P_IPV6;

    fn host(h: Host) -> Ipv4Addr {
        let o = match h {
            Host::Vip => [198, 19, 0, 1],
            Host::Aff => [198, 19, 0, 2],
            Host::Broken => [198, 19, 0, 3],
            Host::Lb => [198, 19, 50, 1],
            Host::ExtUdp => [198, 19, 60, 1],
            Host::Node => [198, 18, 100, 1],
            Host::PodA => [198, 18, 1, 10],
            Host::PodB => [198, 18, 1, 11],
            Host::Outside => [198, 18, 200, 5],
            Host::Stranger => [198, 18, 201, 5],
            Host::Router => [198, 18, 9, 9],
            Host::Hairpin => HAIRPIN_ADDR_DEFAULT,
            Host::B1 => [198, 18, 2, 1],
            Host::B2 => [198, 18, 2, 2],
            Host::B3 => [198, 18, 2, 3],
            Host::B4 => [198, 18, 2, 4],
            Host::L1 => [198, 18, 10, 11],
            Host::L2 => [198, 18, 10, 12],
            Host::L3 => [198, 18, 10, 13],
            Host::R1 => [198, 18, 20, 21],
            Host::R2 => [198, 18, 20, 22],
        };
        Ipv4Addr::from(o)
    }

    fn source_range() -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(198, 18, 200, 0), 24)
    }

    fn sock(a: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(a, port)
    }

    fn random_addr(rng: &mut StdRng) -> Ipv4Addr {
        let r: u32 = rng.random();
        Ipv4Addr::new(198, 18 | (r as u8 & 1), (r >> 8) as u8, (r >> 16) as u8)
    }

    fn confine(frame: &mut [u8]) {
        let confine = |f: &mut [u8], at: usize| {
            if f.len() >= at + 2 {
                f[at] = 198;
                f[at + 1] = 18 | (f[at + 1] & 1);
            }
        };
        if frame.len() >= ETH_HLEN + 20 && frame[12..14] == ETH_P_IP.to_be_bytes() {
            confine(frame, ETH_HLEN + 12);
            confine(frame, ETH_HLEN + 16);
            if frame[ETH_HLEN + 9] == IPPROTO_ICMP {
                confine(frame, ETH_HLEN + 28 + 12);
                confine(frame, ETH_HLEN + 28 + 16);
            }
        }
    }

    fn header_fields(rng: &mut StdRng, b: P<Self>) -> P<Self> {
        let mut b = b
            .ttl(rng.random())
            .tos(rng.random())
            .id(rng.random())
            .dont_fragment(rng.random_bool(0.5));
        if rng.random_ratio(1, 30) {
            let n = 4 * rng.random_range(1..=10);
            b = b.ip_options(&random_bytes(rng, n));
        }
        if rng.random_ratio(1, 30) {
            b = b.ip_checksum(rng.random());
        }
        if rng.random_ratio(1, 40) {
            b = b.ip_total_len(rng.random());
        }
        b
    }

    fn icmp_error_type(rng: &mut StdRng) -> (u8, u8) {
        match rng.random_range(0..6) {
            0..=2 => (ICMP_DEST_UNREACH, rng.random_range(0..16)),
            3 => (ICMP_TIME_EXCEEDED, rng.random_range(0..2)),
            4 => (pick(rng, &[4u8, 5, 12]), rng.random()),
            _ => (rng.random(), rng.random()),
        }
    }

    fn own_kind(_: &mut StdRng, _: Ipv4Addr, _: Ipv4Addr) -> Option<P<Self>> {
        None
    }

    fn whole(mut b: P<Self>) -> P<Self> {
        // `fragment` splits by the total length: keep it true.
        b.ip.total_len = None;
        b.dont_fragment(false)
    }

    fn later_fragment(rng: &mut StdRng, b: P<Self>) -> P<Self> {
        b.fragment(rng.random_bool(0.5), rng.random_range(1..=0x1fff))
    }

    fn fragment(frame: &[u8], chunk: usize, _id: u32) -> Vec<Vec<u8>> {
        fragment(frame, chunk)
    }

    fn other_datagram(f: &mut [u8]) {
        f[ETH_HLEN + 5] ^= 1;
        let ip = &mut f[ETH_HLEN..];
        let hlen = usize::from(ip[0] & 0x0f) * 4;
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum = internet_checksum(&ip[..hlen]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    }

    fn sweep_extra(_: SocketAddrV4, _: SocketAddrV4) -> Vec<Vec<u8>> {
        Vec::new()
    }

    fn l4_in_frame(frame: &[u8]) -> Option<(u8, usize)> {
        (frame.len() >= ETH_HLEN + 20 && frame[12..14] == ETH_P_IP.to_be_bytes()).then(|| {
            let l4 = ETH_HLEN + usize::from(frame[ETH_HLEN] & 0x0f) * 4;
            (frame[ETH_HLEN + 9], l4)
        })
    }

    fn rewritable(input: &[u8], allow: &mut dyn FnMut(usize, usize)) {
        if input.len() < ETH_HLEN + 20 || input[12..14] != ETH_P_IP.to_be_bytes() {
            return;
        }
        let l3 = ETH_HLEN;
        let hlen = usize::from(input[l3] & 0x0f) * 4;
        allow(l3 + 8, l3 + 9); // TTL
        allow(l3 + 10, l3 + 12); // header checksum
        allow(l3 + 12, l3 + 20); // addresses
        let l4 = l3 + hlen;
        let later = u16::from_be_bytes([input[l3 + 6], input[l3 + 7]]) & 0x1fff != 0;
        if later {
            return;
        }
        match input[l3 + 9] {
            IPPROTO_TCP => {
                allow(l4, l4 + 4);
                allow(l4 + 16, l4 + 18);
            }
            IPPROTO_UDP => {
                allow(l4, l4 + 4);
                allow(l4 + 6, l4 + 8);
            }
            IPPROTO_ICMP => {
                allow(l4 + 2, l4 + 4); // ICMP checksum
                allow(l4 + 4, l4 + 8); // echo id (ICMP NAT, later)
                let inner = l4 + 8;
                if input.len() > inner {
                    let ihl = usize::from(input[inner] & 0x0f) * 4;
                    allow(inner + 10, inner + 20);
                    allow(inner + ihl, inner + ihl + 4);
                    allow(inner + ihl + 6, inner + ihl + 8);
                    allow(inner + ihl + 16, inner + ihl + 18);
                }
            }
            _ => {}
        }
    }

    family_plumbing! {
        sock: SocketAddrV4,
        addr: Ipv4Addr,
        parsed: ipv4,
        flow: Flow,
        seed: [set_node_address, add_frontend, add_vip_marker, add_source_range, add_flow, add_snat_flow],
        state: |dp| (dp, ct4, snat4, affinity4, frag4),
    }
}

const fn ip6(a: u16, b: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, a, b, 0, 0, 0, last)
}

impl Family for V6 {
    type Ip = Ipv6Fields;
    type Addr = Ipv6Addr;
    type Sock = SocketAddrV6;
    const NAME: &'static str = "ipv6";
    const IDS: u32 = 100;
    const VERSION: u8 = 6;
    const IP_HLEN: usize = IPV6_HLEN;
    const HEADER_CHECKSUM: bool = false;
    const PORT_UNREACH: (u8, u8) = (ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH);
    const TOO_BIG: (u8, u8) = (ICMP6_PACKET_TOO_BIG, 0);
    const OTHER_ETHERTYPE: u16 = ETH_P_IP;

    fn host(h: Host) -> Ipv6Addr {
        match h {
            Host::Vip => ip6(0xffff, 0, 1),
            Host::Aff => ip6(0xffff, 0, 2),
            Host::Broken => ip6(0xffff, 0, 3),
            Host::Lb => ip6(0xffff, 0x50, 1),
            Host::ExtUdp => ip6(0xffff, 0x60, 1),
            Host::Node => ip6(0x100, 0, 1),
            Host::PodA => ip6(1, 0, 0x10),
            Host::PodB => ip6(1, 0, 0x11),
            Host::Outside => ip6(0x200, 0, 5),
            Host::Stranger => ip6(0x201, 0, 5),
            Host::Router => ip6(9, 0, 9),
            Host::Hairpin => Ipv6Addr::from(HAIRPIN6_ADDR_DEFAULT),
            Host::B1 => ip6(2, 0, 1),
            Host::B2 => ip6(2, 0, 2),
            Host::B3 => ip6(2, 0, 3),
            Host::B4 => ip6(2, 0, 4),
            Host::L1 => ip6(0x10, 0, 0x11),
            Host::L2 => ip6(0x10, 0, 0x12),
            Host::L3 => ip6(0x10, 0, 0x13),
            Host::R1 => ip6(0x20, 0, 0x21),
            Host::R2 => ip6(0x20, 0, 0x22),
        }
    }

    fn source_range() -> (Ipv6Addr, u8) {
        (ip6(0x200, 0, 0), 48)
    }

    fn sock(a: Ipv6Addr, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(a, port, 0, 0)
    }

    fn random_addr(rng: &mut StdRng) -> Ipv6Addr {
        let r: u64 = rng.random();
        let a = pick(
            rng,
            &[
                1u16, 2, 9, 0x10, 0x20, 0x100, 0x200, 0x201, 0xffff, r as u16,
            ],
        );
        let b = if rng.random_ratio(1, 4) {
            (r >> 16) as u16
        } else {
            0
        };
        ip6(a, b, u16::from((r >> 32) as u8))
    }

    fn confine(frame: &mut [u8]) {
        let confine = |f: &mut [u8], at: usize| {
            if f.len() >= at + 4 {
                f[at..at + 4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            }
        };
        if frame.len() >= ETH_HLEN + IPV6_HLEN && frame[12..14] == ETH_P_IPV6.to_be_bytes() {
            confine(frame, ETH_HLEN + 8);
            confine(frame, ETH_HLEN + 24);
            if frame[ETH_HLEN + 6] == IPPROTO_ICMPV6 {
                let inner = ETH_HLEN + IPV6_HLEN + 8;
                confine(frame, inner + 8);
                confine(frame, inner + 24);
            }
        }
    }

    fn header_fields(rng: &mut StdRng, b: P<Self>) -> P<Self> {
        let mut b = b
            .hop_limit(rng.random())
            .traffic_class(rng.random())
            .flow_label(rng.random::<u32>() & 0xf_ffff);
        if rng.random_ratio(1, 5) {
            for _ in 0..rng.random_range(1..=3) {
                let n = rng.random_range(0..=12);
                let h = match rng.random_range(0..10) {
                    0..=2 => ExtHeader::HopByHop(random_bytes(rng, n)),
                    3..=4 => ExtHeader::DestinationOptions(random_bytes(rng, n)),
                    5..=6 => ExtHeader::Routing {
                        routing_type: {
                            let any = rng.random();
                            pick(rng, &[0, 2, 3, 4, any])
                        },
                        segments_left: if rng.random_ratio(3, 4) {
                            0
                        } else {
                            rng.random()
                        },
                        data: random_bytes(rng, n + 4),
                    },
                    // An atomic fragment (RFC 6946).
                    7..=8 => ExtHeader::Fragment {
                        offset_units: 0,
                        more: false,
                        id: rng.random(),
                    },
                    _ => {
                        let mut bytes = vec![0];
                        bytes.extend(random_bytes(rng, 6));
                        ExtHeader::Other {
                            kind: IPPROTO_EXPERIMENT1,
                            bytes,
                        }
                    }
                };
                b = b.ext(h);
            }
        }
        if rng.random_ratio(1, 40) {
            b = b.payload_len(rng.random());
        }
        b
    }

    fn icmp_error_type(rng: &mut StdRng) -> (u8, u8) {
        match rng.random_range(0..6) {
            0..=2 => (ICMP6_DEST_UNREACH, rng.random_range(0..8)),
            3 => (ICMP6_TIME_EXCEEDED, rng.random_range(0..2)),
            4 => (
                pick(rng, &[ICMP6_PACKET_TOO_BIG, ICMP6_PARAM_PROBLEM]),
                rng.random(),
            ),
            _ => (rng.random(), rng.random()),
        }
    }

    fn own_kind(rng: &mut StdRng, src: Ipv6Addr, dst: Ipv6Addr) -> Option<P<Self>> {
        let mac = [2, 0, 0, 0, 0, rng.random()];
        Some(if rng.random_bool(0.5) {
            PacketBuilder::neighbor_solicitation(src, mac, dst)
        } else {
            let any = rng.random();
            let flags = pick(rng, &[NA_SOLICITED | NA_OVERRIDE, NA_OVERRIDE, any]);
            PacketBuilder::neighbor_advertisement(src, mac, dst, [2, 0, 0, 0, 0, 9], src, flags)
        })
    }

    fn whole(mut b: P<Self>) -> P<Self> {
        b.ip.payload_len = None;
        b.ip.ext
            .retain(|h| !matches!(h, ExtHeader::Fragment { .. }));
        b
    }

    fn later_fragment(rng: &mut StdRng, b: P<Self>) -> P<Self> {
        b.fragment_header(
            rng.random(),
            rng.random_range(1..=IP6_OFFSET_MASK >> 3),
            rng.random_bool(0.5),
        )
    }

    fn fragment(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
        fragment6(frame, chunk, id)
    }

    fn other_datagram(f: &mut [u8]) {
        let Ok(chain) = ext_chain(&f[ETH_HLEN..]) else {
            return;
        };
        if let Some((off, _, _)) = chain.headers.iter().find(|h| h.1 == IPPROTO_FRAGMENT) {
            f[ETH_HLEN + off + 7] ^= 1;
        }
    }

    fn sweep_extra(pod: SocketAddrV6, dns: SocketAddrV6) -> Vec<Vec<u8>> {
        vec![
            PacketBuilder::udp(pod, dns)
                .hop_by_hop(&[])
                .destination_options(&[])
                .payload(&[6; 8])
                .build(),
        ]
    }

    fn l4_in_frame(frame: &[u8]) -> Option<(u8, usize)> {
        if frame.len() < ETH_HLEN || frame[12..14] != ETH_P_IPV6.to_be_bytes() {
            return None;
        }
        let chain = ext_chain(&frame[ETH_HLEN..]).ok()?;
        Some((chain.proto, ETH_HLEN + chain.l4_off))
    }

    fn rewritable(input: &[u8], allow: &mut dyn FnMut(usize, usize)) {
        if input.len() < ETH_HLEN + IPV6_HLEN || input[12..14] != ETH_P_IPV6.to_be_bytes() {
            return;
        }
        let l3 = ETH_HLEN;
        allow(l3 + 7, l3 + 8); // hop limit
        allow(l3 + 8, l3 + 40); // addresses
        let Ok(chain) = ext_chain(&input[l3..]) else {
            return;
        };
        let later = chain.headers.iter().any(|(off, kind, _)| {
            *kind == IPPROTO_FRAGMENT
                && u16::from_be_bytes([input[l3 + off + 2], input[l3 + off + 3]]) & IP6_OFFSET_MASK
                    != 0
        });
        if later {
            return;
        }
        let l4 = l3 + chain.l4_off;
        let ports = |allow: &mut dyn FnMut(usize, usize), l4: usize, proto: u8| match proto {
            IPPROTO_TCP => {
                allow(l4, l4 + 4);
                allow(l4 + 16, l4 + 18);
            }
            IPPROTO_UDP => {
                allow(l4, l4 + 4);
                allow(l4 + 6, l4 + 8);
            }
            _ => {}
        };
        match chain.proto {
            IPPROTO_ICMPV6 => {
                allow(l4 + 2, l4 + 4); // ICMPv6 checksum
                allow(l4 + 4, l4 + 8); // echo id (ICMP NAT, later)
                let inner = l4 + 8;
                allow(inner + 8, inner + 40); // quoted addresses
                if let Some(Ok(ic)) = input.get(inner..).map(ext_chain) {
                    ports(allow, inner + ic.l4_off, ic.proto);
                }
            }
            proto => ports(allow, l4, proto),
        }
    }

    family_plumbing! {
        sock: SocketAddrV6,
        addr: Ipv6Addr,
        parsed: ipv6,
        flow: Flow6,
        seed: [set_node_address6, add_frontend6, add_vip_marker6, add_source_range6, add_flow6, add_snat_flow6],
        state: |dp| (dp.v6()?, ct6, snat6, affinity6, frag6),
    }
}

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

// ---------------------------------------------------------------------------
// The generator: one family's packets
// ---------------------------------------------------------------------------

/// A packet and where it goes.
#[derive(Clone)]
struct Packet {
    prog: TcProgram,
    frame: Vec<u8>,
    kind: &'static str,
}

/// What one family's packets are made of: its random stream, what its
/// world allows, this round's seeded flows and the packets to answer.
struct Side<F: Family> {
    rng: StdRng,
    allowed: Allowed<F::Addr>,
    /// Seeded flows of this round: service keys and SNAT keys they own.
    seeded_snat_keys: BTreeSet<Tuple<F::Addr>>,
    /// Ports of seeded flows (client ports, SNAT ports), for bias.
    flow_ports: Vec<u16>,
    /// This round's seeded flows.
    flows: Vec<SeededFlow<F::Sock>>,
    /// Translated outputs, to answer.
    recent: VecDeque<Packet>,
    /// Packets to send next (later fragments).
    pending: VecDeque<Packet>,
    /// The program of the packet being made.
    prog: TcProgram,
    /// The truncation sweep, sent first.
    sweep: VecDeque<Packet>,
    /// Packets of this family made so far.
    made: u64,
}

impl<F: Family> Side<F> {
    fn new(seed: u64) -> Self {
        let mut s = Side {
            rng: StdRng::seed_from_u64(seed),
            allowed: Allowed::new::<F>(),
            seeded_snat_keys: BTreeSet::new(),
            flow_ports: Vec::new(),
            flows: Vec::new(),
            recent: VecDeque::new(),
            pending: VecDeque::new(),
            prog: TcProgram::PodIngress,
            sweep: VecDeque::new(),
            made: 0,
        };
        s.sweep = s.sweep().into();
        s
    }

    /// Seeds this round's flows (the state maps were just cleared).
    fn new_round(&mut self, dp: &mut TestDatapath) -> Result<(), String> {
        self.recent.clear();
        self.pending.clear();
        self.seeded_snat_keys.clear();
        self.flow_ports.clear();
        self.flows.clear();
        let now = monotonic_ns();
        let live = (now.saturating_sub(NS), now + 3600 * NS);
        let port = |rng: &mut StdRng| rng.random_range(1024..=60999u16);
        let flows = [
            (Host::PodA, WEB, B1, IPPROTO_TCP, CT_F_SEEN_NON_SYN, live.1),
            (Host::PodB, DNS, B3, IPPROTO_UDP, 0, live.1),
            (Host::PodB, WEB, B2, IPPROTO_TCP, CT_F_CLOSED, live.1),
            (Host::PodA, AFF, B2, IPPROTO_TCP, CT_F_SEEN_NON_SYN, 1),
            (
                Host::Outside,
                NP_LOCAL,
                L1,
                IPPROTO_TCP,
                CT_F_SEEN_NON_SYN,
                live.1,
            ),
            (Host::Outside, EXT_UDP, L3, IPPROTO_UDP, 0, live.1),
        ];
        for (client, vip, b, proto, flags, expires_ns) in flows {
            let cport = port(&mut self.rng);
            self.flow_ports.push(cport);
            let client = F::sock(F::host(client), cport);
            let flow = flow::<F>(client, vip, b, proto, flags, live.0, expires_ns);
            F::seed_flow(dp, &flow)?;
            self.flows.push(flow);
        }
        let snat_flows = [
            (Host::Outside, NP_REMOTE, R1, IPPROTO_TCP, Host::Node),
            (Host::Outside, NP_UDP, R2, IPPROTO_UDP, Host::Node),
            (Host::Stranger, EXT_UDP, R2, IPPROTO_UDP, Host::Node),
            // A pod reaching itself through WEB (hairpin).
            (Host::B1, WEB, B1, IPPROTO_TCP, Host::Hairpin),
        ];
        for (client, vip, b, proto, via) in snat_flows {
            let cport = port(&mut self.rng);
            let sport = self.rng.random_range(SNAT_PORT_MIN..=SNAT_PORT_MAX);
            self.flow_ports.extend([cport, sport]);
            let client = F::sock(F::host(client), cport);
            let flow = flow::<F>(client, vip, b, proto, CT_F_SEEN_NON_SYN, live.0, live.1);
            let via = F::sock(F::host(via), sport);
            let flow = SeededFlow {
                via: Some(via),
                ..flow
            };
            F::seed_flow(dp, &flow).map_err(|e| format!("SNAT {e}"))?;
            self.seeded_snat_keys.insert(Tuple {
                saddr: F::ip(flow.client),
                daddr: F::ip(flow.vip),
                sport: F::port(flow.client),
                dport: F::port(flow.vip),
                proto,
                dir: CT_DIR_SERVICE,
            });
            self.seeded_snat_keys.insert(Tuple {
                saddr: F::ip(flow.backend),
                daddr: F::ip(via),
                sport: F::port(flow.backend),
                dport: F::port(via),
                proto,
                dir: CT_DIR_REPLY,
            });
            self.flows.push(flow);
        }
        Ok(())
    }

    // -- generation ---------------------------------------------------------

    fn addr(&mut self) -> F::Addr {
        match self.rng.random_range(0..10) {
            0..=7 => {
                let h = pick(&mut self.rng, INTERESTING);
                // The hairpin address is link-local: keep it, it is what the
                // datapath writes, but only in a few packets.
                if h == Host::Hairpin && self.rng.random_bool(0.5) {
                    F::host(Host::PodA)
                } else {
                    F::host(h)
                }
            }
            _ => F::random_addr(&mut self.rng),
        }
    }

    fn port(&mut self) -> u16 {
        match self.rng.random_range(0..10) {
            0..=4 => pick(&mut self.rng, PORTS),
            5..=6 if !self.flow_ports.is_empty() => {
                let ports = self.flow_ports.clone();
                pick(&mut self.rng, &ports)
            }
            7 => self.rng.random_range(SNAT_PORT_MIN..=SNAT_PORT_MAX),
            _ => self.rng.random(),
        }
    }

    fn endpoint(&mut self) -> F::Sock {
        F::sock(self.addr(), self.port())
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let n = self.rng.random_range(0..=max);
        random_bytes(&mut self.rng, n)
    }

    /// Random IP header fields on a builder.
    fn ip_fields(&mut self, b: P<F>) -> P<F> {
        F::header_fields(&mut self.rng, b)
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.random_range(0..10) {
            0..=2 => TCP_SYN,
            3..=4 => TCP_ACK,
            5 => TCP_ACK | TCP_PSH,
            6 => TCP_FIN | TCP_ACK,
            7 => TCP_RST,
            8 => TCP_SYN | TCP_ACK,
            _ => self.rng.random(),
        }
    }

    fn tcp(&mut self, src: F::Sock, dst: F::Sock) -> P<F> {
        let mut b = P::<F>::tcp(src, dst)
            .flags(self.tcp_flags())
            .seq(self.rng.random())
            .ack_seq(self.rng.random())
            .window(self.rng.random());
        if self.rng.random_ratio(1, 10) {
            let n = 4 * self.rng.random_range(1..=10);
            b = b.tcp_options(&random_bytes(&mut self.rng, n));
        }
        if self.rng.random_ratio(1, 25) {
            b = b.tcp_data_offset(self.rng.random_range(0..=15));
        }
        if self.rng.random_ratio(1, 25) {
            b = b.l4_checksum(self.rng.random());
        }
        let payload = self.payload(64);
        self.ip_fields(b.payload(&payload))
    }

    fn udp(&mut self, src: F::Sock, dst: F::Sock) -> P<F> {
        let payload = self.payload(64);
        let mut b = P::<F>::udp(src, dst).payload(&payload);
        match self.rng.random_range(0..20) {
            0..=2 => b = b.udp_zero_checksum(),
            3 => b = b.l4_checksum(self.rng.random()),
            _ => {}
        }
        self.ip_fields(b)
    }

    fn tcp_or_udp(&mut self, src: F::Sock, dst: F::Sock) -> P<F> {
        if self.rng.random_bool(0.5) {
            self.tcp(src, dst)
        } else {
            self.udp(src, dst)
        }
    }

    fn icmp_error(&mut self, inner: &P<F>, src: F::Addr, dst: F::Addr) -> Vec<u8> {
        let (ty, code) = F::icmp_error_type(&mut self.rng);
        let b = if self.rng.random_ratio(1, 4) {
            // A header and 8 bytes, whatever the family quotes by default.
            let quoted = inner.ip_bytes();
            let n = quoted.len().min(inner.ip_header_len() + 8);
            P::<F>::icmp(src, dst, ty, code).payload(&quoted[..n])
        } else {
            P::<F>::icmp_error(src, dst, ty, code, inner)
        };
        let b = b.icmp_rest(self.rng.random());
        let mut frame = self.ip_fields(b).build();
        // Quote more, or less.
        match self.rng.random_range(0..8) {
            0 => {
                let cut = self
                    .rng
                    .random_range((ETH_HLEN + F::IP_HLEN).min(frame.len())..=frame.len());
                frame.truncate(cut);
            }
            1 => {
                let extra = self.payload(32);
                frame.extend_from_slice(&extra);
            }
            _ => {}
        }
        frame
    }

    fn program(&mut self) -> TcProgram {
        pick(
            &mut self.rng,
            &[
                TcProgram::PodIngress,
                TcProgram::PodEgress,
                TcProgram::NodeXdp,
                TcProgram::NodeEgress,
            ],
        )
    }

    /// A well-formed packet of a random kind (never random bytes).
    fn valid(&mut self) -> (Vec<u8>, &'static str) {
        match self.rng.random_range(0..20) {
            0..=6 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                (self.tcp(s, d).build(), "tcp")
            }
            7..=11 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                (self.udp(s, d).build(), "udp")
            }
            12 => {
                let (s, d) = (self.addr(), self.addr());
                if self.rng.random_bool(0.3)
                    && let Some(b) = F::own_kind(&mut self.rng, s, d)
                {
                    return (b.build(), "neighbor_discovery");
                }
                let b = if self.rng.random_bool(0.3) {
                    P::<F>::icmp(s, d, self.rng.random(), self.rng.random())
                } else {
                    P::<F>::icmp_echo_request(s, d, self.rng.random(), self.rng.random())
                };
                let payload = self.payload(32);
                (self.ip_fields(b.payload(&payload)).build(), "icmp")
            }
            13..=15 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                let inner = if self.rng.random_ratio(1, 8) {
                    let payload = self.payload(16);
                    P::<F>::ip_raw(F::ip(s), F::ip(d), self.rng.random()).payload(&payload)
                } else {
                    self.tcp_or_udp(s, d)
                };
                let (src, dst) = (self.addr(), self.addr());
                (self.icmp_error(&inner, src, dst), "icmp_error")
            }
            16 => {
                let (s, d) = (self.addr(), self.addr());
                let proto = self.rng.random();
                let payload = self.payload(64);
                let b = P::<F>::ip_raw(s, d, proto).payload(&payload);
                (self.ip_fields(b).build(), "other_protocol")
            }
            17..=18 => self.fragments(),
            _ => {
                let frame = match self.rng.random_range(0..3) {
                    0 => arp_request(
                        [2, 0, 0, 0, 0, 9],
                        V4::random_addr(&mut self.rng),
                        V4::random_addr(&mut self.rng),
                    ),
                    1 => {
                        let p = self.payload(80);
                        ethernet_frame([2; 6], [4; 6], F::OTHER_ETHERTYPE, &p)
                    }
                    _ => {
                        let p = self.payload(80);
                        let ethertype = if self.rng.random_bool(0.5) {
                            ETH_P_ARP
                        } else {
                            self.rng.random()
                        };
                        ethernet_frame([2; 6], [4; 6], ethertype, &p)
                    }
                };
                (frame, "other_ethertype")
            }
        }
    }

    /// A fragmented datagram: the first fragment now, the others queued
    /// (sometimes reordered, dropped or with another id); or a lone later
    /// fragment with a random id and offset.
    fn fragments(&mut self) -> (Vec<u8>, &'static str) {
        let (s, d) = (self.endpoint(), self.endpoint());
        if self.rng.random_ratio(1, 4) {
            let payload = self.payload(64);
            let b = self.tcp_or_udp(s, d).payload(&payload);
            let b = F::later_fragment(&mut self.rng, b);
            return (b.build(), "fragment_later_random");
        }
        let payload = self.payload_of(24..200);
        let b = F::whole(self.tcp_or_udp(s, d).payload(&payload));
        let whole = b.build();
        let chunk = 8 * self.rng.random_range(1..=8);
        let mut frags = F::fragment(&whole, chunk, self.rng.random());
        if frags.len() < 2 {
            return (whole, "fragment_first");
        }
        let first = frags.remove(0);
        if self.rng.random_ratio(1, 4) {
            frags.reverse();
        }
        for mut f in frags {
            if self.rng.random_ratio(1, 10) {
                continue;
            }
            if self.rng.random_ratio(1, 10) {
                // Another datagram's id: the first fragment was not seen.
                F::other_datagram(&mut f);
            }
            // The later fragments follow on the first one's program.
            self.pending.push_back(Packet {
                prog: self.prog,
                frame: f,
                kind: "fragment_later",
            });
        }
        (first, "fragment_first")
    }

    fn payload_of(&mut self, len: std::ops::Range<usize>) -> Vec<u8> {
        let n = self.rng.random_range(len);
        random_bytes(&mut self.rng, n)
    }

    /// A reply, a follow-up or an ICMP error about a packet a program let
    /// through translated.
    fn answer(&mut self) -> Option<Packet> {
        if self.recent.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.recent.len());
        let prev = self.recent[i].clone();
        let p = parse(&prev.frame).ok()?;
        let (src, dst, proto) = F::ends(&prev.frame)?;
        let tcp = proto == IPPROTO_TCP;
        let natural = match prev.prog {
            TcProgram::PodIngress if F::ip(src) == F::host(Host::Hairpin) => TcProgram::PodIngress,
            TcProgram::PodIngress => TcProgram::PodEgress,
            TcProgram::NodeXdp => {
                if F::ip(src) == F::host(Host::Node) {
                    TcProgram::NodeXdp
                } else {
                    TcProgram::NodeEgress
                }
            }
            TcProgram::PodEgress | TcProgram::NodeEgress => TcProgram::PodIngress,
        };
        let prog = if self.rng.random_ratio(3, 4) {
            natural
        } else {
            self.program()
        };
        let roll = self.rng.random_range(0..10);
        let (b, kind) = if roll < 6 {
            let b = if tcp {
                self.tcp(dst, src)
            } else {
                self.udp(dst, src)
            };
            (b, "reply")
        } else if roll < 8 {
            let b = if tcp {
                self.tcp(src, dst)
            } else {
                self.udp(src, dst)
            };
            (b, "follow_up")
        } else {
            let inner = if tcp {
                self.tcp(src, dst)
            } else {
                self.udp(src, dst)
            };
            let from = if self.rng.random_bool(0.5) {
                F::ip(dst)
            } else {
                F::host(Host::Router)
            };
            let frame = self.icmp_error(&inner, from, F::ip(src));
            return Some(Packet {
                prog,
                frame,
                kind: "icmp_error_answer",
            });
        };
        let mut b = b.macs(p.eth_dst, p.eth_src);
        let fragmented = self.rng.random_ratio(1, 6);
        if fragmented {
            b = F::whole(b);
        }
        let mut frame = b.build();
        if fragmented {
            let chunk = 8 * self.rng.random_range(1..=4);
            let mut frags = F::fragment(&frame, chunk, self.rng.random());
            if frags.len() > 1 {
                frame = frags.remove(0);
                for f in frags {
                    self.pending.push_back(Packet {
                        prog,
                        frame: f,
                        kind: "fragment_later_answer",
                    });
                }
            }
        }
        Some(Packet { prog, frame, kind })
    }

    /// A TCP or UDP packet from a client (a pod, a backend reaching its
    /// own service, an outside client) to a seeded frontend, on the
    /// program that sees such traffic (mostly).
    fn for_frontend(&mut self) -> Packet {
        let f = &FRONTENDS[self.rng.random_range(0..FRONTENDS.len())];
        let (dst, proto, external) = (sock::<F>(f.ep), f.proto, f.flags & SVC_FLAG_EXTERNAL != 0);
        let client = pick(
            &mut self.rng,
            &[
                Host::PodA,
                Host::PodB,
                Host::B1,
                Host::Outside,
                Host::Outside,
                Host::Stranger,
            ],
        );
        let src = F::sock(F::host(client), self.port());
        let b = if proto == IPPROTO_TCP || self.rng.random_ratio(1, 10) {
            self.tcp(src, dst)
        } else {
            self.udp(src, dst)
        };
        let natural = if external {
            TcProgram::NodeXdp
        } else {
            TcProgram::PodIngress
        };
        let prog = if self.rng.random_ratio(4, 5) {
            natural
        } else {
            self.program()
        };
        Packet {
            prog,
            frame: b.build(),
            kind: "to_frontend",
        }
    }

    /// A packet of a seeded flow: from its client to its frontend, or its
    /// backend's reply (to the client, or to the address it was
    /// source-NATed to), on the program that sees it (mostly).
    fn of_flow(&mut self) -> Option<Packet> {
        if self.flows.is_empty() {
            return None;
        }
        let f = self.flows[self.rng.random_range(0..self.flows.len())];
        let via = f.via;
        let external = FRONTENDS
            .iter()
            .any(|x| sock::<F>(x.ep) == f.vip && x.flags & SVC_FLAG_EXTERNAL != 0);
        let hairpin = via.is_some_and(|v| F::ip(v) == F::host(Host::Hairpin));
        let (src, dst, natural, kind) = if self.rng.random_bool(0.5) {
            let prog = if external {
                TcProgram::NodeXdp
            } else {
                TcProgram::PodIngress
            };
            (f.client, f.vip, prog, "flow_service")
        } else {
            let prog = match (external, via.is_some(), hairpin) {
                (_, _, true) => TcProgram::PodIngress,
                (true, true, _) => TcProgram::NodeXdp,
                (true, false, _) => TcProgram::NodeEgress,
                _ => TcProgram::PodEgress,
            };
            (f.backend, via.unwrap_or(f.client), prog, "flow_reply")
        };
        let b = if f.proto == IPPROTO_TCP {
            self.tcp(src, dst)
        } else {
            self.udp(src, dst)
        };
        let prog = if self.rng.random_ratio(4, 5) {
            natural
        } else {
            self.program()
        };
        Some(Packet {
            prog,
            frame: b.build(),
            kind,
        })
    }

    fn mutate(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        for _ in 0..self.rng.random_range(1..=4) {
            if f.is_empty() {
                break;
            }
            let at = self.rng.random_range(0..f.len());
            match self.rng.random_range(0..5) {
                0 => f[at] ^= 1 << self.rng.random_range(0..8),
                1 => f[at] = self.rng.random(),
                2 => f.insert(at, self.rng.random()),
                3 => {
                    f.remove(at);
                }
                _ => f.truncate(at),
            }
        }
        F::confine(&mut f);
        f
    }

    /// The next packet of this family: the sweep first, then the mix.
    fn next_packet(&mut self) -> Packet {
        let n = self.made;
        self.made += 1;
        if let Some(p) = self.sweep.pop_front() {
            return p;
        }
        if !self.pending.is_empty()
            && self.rng.random_bool(0.6)
            && let Some(p) = self.pending.pop_front()
        {
            return p;
        }
        let roll = self.rng.random_range(0..100);
        if roll < 20
            && let Some(p) = self.answer()
        {
            return p;
        }
        if (20..28).contains(&roll)
            && let Some(p) = self.of_flow()
        {
            return p;
        }
        if (48..64).contains(&roll) {
            return self.for_frontend();
        }
        let prog = self.program();
        self.prog = prog;
        let (frame, kind) = match roll {
            20..=34 => {
                let (f, _) = self.valid();
                (self.mutate(f), "mutated")
            }
            35..=42 => {
                let (mut f, _) = self.valid();
                // Every offset over the run, not only random ones.
                let cut = usize::try_from(n).unwrap_or(0) % (f.len() + 1);
                f.truncate(cut);
                (f, "truncated")
            }
            43..=45 => {
                let mut f = self.payload(96);
                F::confine(&mut f);
                (f, "random_bytes")
            }
            46..=47 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                let mut f = P::<F>::tcp(s, d).build();
                let tail = self.payload(80);
                f.truncate(ETH_HLEN);
                f.extend_from_slice(&tail);
                if f.len() > ETH_HLEN {
                    f[ETH_HLEN] = (F::VERSION << 4) | (f[ETH_HLEN] & 0x0f);
                }
                F::confine(&mut f);
                (f, "random_ip")
            }
            _ => self.valid(),
        };
        Packet { prog, frame, kind }
    }

    /// Every truncation of a few packets that reach the interesting paths,
    /// through every program.
    fn sweep(&mut self) -> Vec<Packet> {
        let pod = |port| F::sock(F::host(Host::PodA), port);
        let outside = |port| F::sock(F::host(Host::Outside), port);
        let mut templates = vec![
            P::<F>::tcp(pod(40000), sock::<F>(WEB))
                .flags(TCP_SYN)
                .build(),
            P::<F>::udp(pod(40001), sock::<F>(DNS))
                .payload(&[1; 12])
                .build(),
            P::<F>::tcp(pod(40002), sock::<F>(EMPTY_TCP))
                .flags(TCP_SYN)
                .build(),
            P::<F>::udp(pod(40003), sock::<F>(EMPTY_UDP))
                .payload(&[2; 8])
                .build(),
            P::<F>::tcp(outside(40004), sock::<F>(NP_REMOTE))
                .flags(TCP_SYN)
                .build(),
            P::<F>::udp(outside(40005), sock::<F>(NP_UDP))
                .payload(&[3; 20])
                .build(),
            P::<F>::udp(sock::<F>(B3.1), pod(40001))
                .payload(&[4; 12])
                .build(),
            P::<F>::icmp_error(
                F::host(Host::Router),
                F::host(Host::PodA),
                F::TOO_BIG.0,
                F::TOO_BIG.1,
                &P::<F>::udp(pod(40001), sock::<F>(B3.1)),
            )
            .build(),
            F::fragment(
                &F::whole(P::<F>::udp(pod(40006), sock::<F>(DNS)).payload(&[5; 40])).build(),
                16,
                7,
            )
            .remove(0),
            P::<F>::icmp_echo_request(F::host(Host::PodA), F::host(Host::Vip), 1, 2).build(),
        ];
        templates.extend(F::sweep_extra(pod(40007), sock::<F>(DNS)));
        let mut out = Vec::new();
        for t in templates {
            for prog in [
                TcProgram::PodIngress,
                TcProgram::PodEgress,
                TcProgram::NodeXdp,
                TcProgram::NodeEgress,
            ] {
                for cut in 0..=t.len() {
                    out.push(Packet {
                        prog,
                        frame: t[..cut].to_vec(),
                        kind: "sweep_truncated",
                    });
                }
            }
        }
        // Shuffle so that flows opened by the whole templates are answered
        // by their truncations too, in no fixed order.
        for i in (1..out.len()).rev() {
            let j = self.rng.random_range(0..=i);
            out.swap(i, j);
        }
        out
    }
}

/// A seeded flow of family `F` from `client` to the frontend `vip`,
/// pinned to backend `b`.
fn flow<F: Family>(
    client: F::Sock,
    vip: Ep,
    b: Backend,
    proto: u8,
    flags: u8,
    created_ns: u64,
    expires_ns: u64,
) -> SeededFlow<F::Sock> {
    let svc_id = FRONTENDS
        .iter()
        .find(|f| f.ep == vip && f.proto == proto && f.scope == SCOPE_EXTERNAL)
        .map(|f| f.svc_id + F::IDS)
        .unwrap_or_default();
    SeededFlow {
        client,
        vip: sock::<F>(vip),
        backend: sock::<F>(b.1),
        proto,
        backend_id: b.0 + F::IDS,
        svc_id,
        flags,
        created_ns,
        expires_ns,
        via: None,
    }
}

// ---------------------------------------------------------------------------
// The run: one datapath, both families
// ---------------------------------------------------------------------------

/// One failed check, with what to reproduce it.
struct Failure {
    what: String,
    packets: Vec<String>,
}

/// The loaded datapath with both worlds seeded, and what the run counted.
struct Run {
    dp: TestDatapath,
    /// The configuration maps as seeded.
    config: String,
    /// The packets since the last map check, printed with a violation.
    window: Vec<String>,
    stats: Vec<u64>,
    /// Counts by (family, stats reason / kind of packet / program).
    by_reason: BTreeMap<(&'static str, &'static str), u64>,
    by_kind: BTreeMap<(&'static str, &'static str), u64>,
    by_prog: BTreeMap<(&'static str, &'static str), u64>,
    refused: u64,
    failures: Vec<Failure>,
    failed: u64,
}

impl Run {
    fn new() -> Result<Self, String> {
        let mut dp = TestDatapath::load().map_err(|e| format!("load: {e}"))?;
        seed_services::<V4>(&mut dp)?;
        seed_services::<V6>(&mut dp)?;
        let config = config_dump(&dp)?;
        Ok(Run {
            dp,
            config,
            window: Vec::new(),
            stats: vec![0; Reason::ALL.len()],
            by_reason: BTreeMap::new(),
            by_kind: BTreeMap::new(),
            by_prog: BTreeMap::new(),
            refused: 0,
            failures: Vec::new(),
            failed: 0,
        })
    }

    /// Clears the state maps and seeds both families' flows of a round.
    fn new_round(&mut self, v4: &mut Side<V4>, v6: &mut Side<V6>) -> Result<(), String> {
        self.dp
            .clear_state()
            .map_err(|e| format!("clear state: {e}"))?;
        v4.new_round(&mut self.dp)?;
        v6.new_round(&mut self.dp)?;
        self.stats = self.read_stats()?;
        Ok(())
    }

    fn fail(&mut self, what: String, packets: Vec<String>) {
        self.failed += 1;
        if self.failures.len() < MAX_REPORTED
            && !self
                .failures
                .iter()
                .any(|f| first_words(&f.what) == first_words(&what))
        {
            self.failures.push(Failure { what, packets });
        }
    }

    fn read_stats(&self) -> Result<Vec<u64>, String> {
        Ok(self
            .dp
            .all_stats()
            .map_err(|e| format!("stats: {e}"))?
            .into_iter()
            .map(|(_, v)| v.packets)
            .collect())
    }

    /// Runs one packet of `side`'s family and checks what came out. The
    /// description of the packet goes into the window of the next map
    /// check.
    fn run_one<F: Family>(&mut self, side: &mut Side<F>, p: &Packet) -> Result<(), String> {
        *self.by_kind.entry((F::NAME, p.kind)).or_default() += 1;
        *self.by_prog.entry((F::NAME, p.prog.name())).or_default() += 1;
        let out = self.dp.run(p.prog, &p.frame);
        let before = std::mem::take(&mut self.stats);
        self.stats = self.read_stats()?;
        let counted: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .zip(self.stats.iter().zip(&before))
            .filter(|(_, (a, b))| a != b)
            .map(|(r, (a, b))| (*r, a - b))
            .collect();
        let desc = |reason: &str, out: &[u8]| {
            format!(
                "{} {} {} [{}] in={} out={}",
                F::NAME,
                p.prog.name(),
                p.kind,
                reason,
                hex(&p.frame),
                hex(out)
            )
        };
        let what = |e: &str| format!("{} {}: {e}", F::NAME, p.prog.name());
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.window.push(desc("refused", &[]));
                if e.raw_os_error() == Some(libc::EINVAL) && kernel_refuses(p.prog, &p.frame) {
                    // The kernel runs nothing on such a frame.
                    self.refused += 1;
                    if !counted.is_empty() {
                        let d = desc("refused", &[]);
                        self.fail(what(&format!("a refused run counted {counted:?}")), vec![d]);
                    }
                    return Ok(());
                }
                return Err(format!("BPF_PROG_TEST_RUN: {e} on {}", desc("", &[])));
            }
        };
        let reason = match counted.as_slice() {
            [(r, 1)] => *r,
            _ => {
                let d = desc("?", &out.data_out);
                self.window.push(d.clone());
                self.fail(
                    what(&format!(
                        "expected one stats reason counted once, got {counted:?}"
                    )),
                    vec![d],
                );
                return Ok(());
            }
        };
        *self.by_reason.entry((F::NAME, reason.name())).or_default() += 1;
        let d = desc(reason.name(), &out.data_out);
        self.window.push(d.clone());
        if let Err(e) = check_output::<F>(&side.allowed, p, reason, out.retval, &out.data_out) {
            self.fail(what(&e), vec![d]);
            return Ok(());
        }
        let name = reason.name();
        let translated = !name.starts_with("pass_")
            && !name.starts_with("drop_")
            && !name.starts_with("reject_");
        if translated && out.data_out != p.frame {
            side.recent.push_back(Packet {
                prog: p.prog,
                frame: out.data_out,
                kind: "recent",
            });
            if side.recent.len() > 32 {
                side.recent.pop_front();
            }
        }
        Ok(())
    }

    /// Checks the maps of both families (see the module documentation); a
    /// violation is reported with the packets since the last check.
    fn check_maps(&mut self, v4: &Side<V4>, v6: &Side<V6>) -> Result<(), String> {
        let window = std::mem::take(&mut self.window);
        let mut problems = Vec::new();
        let config = config_dump(&self.dp)?;
        if config != self.config {
            problems.push(format!(
                "configuration maps changed:\n--- seeded\n{}\n--- now\n{config}",
                self.config
            ));
        }
        check_state(&self.dp, v4, &mut problems)?;
        check_state(&self.dp, v6, &mut problems)?;
        if !problems.is_empty() {
            let n = problems.len();
            problems.truncate(8);
            self.fail(
                format!(
                    "map check: {n} bad entries:\n    {}",
                    problems.join("\n    ")
                ),
                window,
            );
        }
        Ok(())
    }

    fn report(&self, packets: u64, seed: u64, elapsed: std::time::Duration) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "packet fuzz: {packets} packets ({} IPv4, {} IPv6), seed {seed:#x}, {:.1} s \
             ({:.0} packets/s); {} runs refused by the kernel (frames shorter than their \
             link or network header)",
            packets.div_ceil(2),
            packets / 2,
            elapsed.as_secs_f64(),
            packets as f64 / elapsed.as_secs_f64().max(1e-9),
            self.refused
        );
        let table = |s: &mut String,
                     title: &str,
                     names: Vec<&'static str>,
                     counts: &BTreeMap<(&'static str, &'static str), u64>| {
            let _ = writeln!(s, "{title:<30} {:>8} {:>8}", V4::NAME, V6::NAME);
            for name in names {
                let n = |f| counts.get(&(f, name)).copied().unwrap_or(0);
                let _ = writeln!(s, "  {name:<28} {:>8} {:>8}", n(V4::NAME), n(V6::NAME));
            }
        };
        let names = |counts: &BTreeMap<(&'static str, &'static str), u64>| {
            counts
                .keys()
                .map(|(_, k)| *k)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let reasons = Reason::ALL.iter().map(|r| r.name()).collect();
        table(&mut s, "by stats reason:", reasons, &self.by_reason);
        table(&mut s, "by program:", names(&self.by_prog), &self.by_prog);
        table(
            &mut s,
            "by kind of packet:",
            names(&self.by_kind),
            &self.by_kind,
        );
        s
    }
}

// ---------------------------------------------------------------------------
// The checks, one code for both families
// ---------------------------------------------------------------------------

/// Checks a program's verdict and output on `p` counted under `reason`.
fn check_output<F: Family>(
    allowed: &Allowed<F::Addr>,
    p: &Packet,
    reason: Reason,
    verdict: u32,
    out: &[u8],
) -> Result<(), String> {
    let xdp = p.prog == TcProgram::NodeXdp;
    let verdicts: &[u32] = if xdp {
        &[XDP_PASS, XDP_DROP, XDP_TX]
    } else {
        &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT, TC_ACT_UNSPEC]
    };
    if !verdicts.contains(&verdict) {
        return Err(format!("verdict {verdict} not one of {verdicts:?}"));
    }
    let name = reason.name();
    let passes: &[u32] = if xdp {
        &[XDP_PASS]
    } else {
        &[TC_ACT_OK, TC_ACT_UNSPEC]
    };
    let drops: &[u32] = if xdp { &[XDP_DROP] } else { &[TC_ACT_SHOT] };
    if name.starts_with("pass_") {
        if !passes.contains(&verdict) {
            return Err(format!("{name} with verdict {verdict}"));
        }
        if out != p.frame.as_slice() {
            return Err(format!("{name} changed the packet"));
        }
        return Ok(());
    }
    if name.starts_with("drop_") {
        if !drops.contains(&verdict) {
            return Err(format!("{name} with verdict {verdict}"));
        }
        return Ok(());
    }
    if name.starts_with("reject_") {
        return check_reject::<F>(p, name, verdict, drops, out);
    }
    // Translated (or left as is): passed on, or sent back / redirected.
    let ok: &[u32] = if xdp {
        &[XDP_PASS, XDP_TX]
    } else {
        &[TC_ACT_OK, TC_ACT_UNSPEC, TC_ACT_REDIRECT]
    };
    if !ok.contains(&verdict) {
        return Err(format!("{name} with verdict {verdict}"));
    }
    if out == p.frame.as_slice() {
        return Ok(());
    }
    check_rewrite::<F>(&p.frame, out).map_err(|e| format!("{name}: {e}"))?;
    if checksums_ok(&p.frame).is_ok() {
        checksums_ok(out).map_err(|e| format!("{name}: valid input, output {e}"))?;
    }
    if name.starts_with("dnat_new") || name == "snat_new" {
        let (Some((_, to, proto)), Some((_, from, _))) = (F::ends(&p.frame), F::ends(out)) else {
            return Ok(());
        };
        let backends = allowed.backends_of(F::ip(to), F::port(to), proto);
        if !backends.contains(&(F::ip(from), F::port(from))) {
            return Err(format!(
                "{name}: {to} sent to {from}, not one of its backends"
            ));
        }
    }
    if name == "revnat_reply" || name == "revsnat_reply" {
        let (Some((from, _, proto)), Some((vip, _, oproto))) = (F::ends(&p.frame), F::ends(out))
        else {
            return Ok(());
        };
        if !allowed.is_backend(F::ip(from), F::port(from), proto) {
            return Err(format!("{name}: reply from {from}, not a backend"));
        }
        if !allowed
            .frontends
            .contains(&(F::ip(vip), F::port(vip), oproto))
        {
            return Err(format!("{name}: reply now from {vip}, not a frontend"));
        }
    }
    Ok(())
}

/// A `reject_*` verdict: a RST is dropped, anything else answered with a
/// reply made from scratch (a TCP RST or a port unreachable) to the sender,
/// its own checksums right, quoting the input's header as it was.
fn check_reject<F: Family>(
    p: &Packet,
    name: &str,
    verdict: u32,
    drops: &[u32],
    out: &[u8],
) -> Result<(), String> {
    let xdp = p.prog == TcProgram::NodeXdp;
    // The flags as the datapath reads them: from the frame, even where
    // a length field says the header is cut.
    let (proto, l4) = F::l4_in_frame(&p.frame).ok_or(format!("{name} of a packet without IP"))?;
    let rst = proto == IPPROTO_TCP && p.frame.get(l4 + 13).is_some_and(|f| f & TCP_RST != 0);
    if drops.contains(&verdict) && rst {
        // A RST is never answered (RFC 793): dropped, counted so.
        return Ok(());
    }
    let bounced = if xdp { XDP_TX } else { TC_ACT_REDIRECT };
    if verdict != bounced {
        return Err(format!("{name} with verdict {verdict}"));
    }
    let (r, i) = (checksum_residues(out), checksum_residues(&p.frame));
    let mut own = vec![("layer 4", r.l4)];
    if F::HEADER_CHECKSUM {
        own.push(("IP header", r.ipv4));
    }
    for (what, c) in own {
        if !c.is_some_and(Residue::is_valid) {
            return Err(format!("{name} reply: {what} checksum {c:?}"));
        }
    }
    if r.inner_ipv4.is_some() && r.inner_ipv4 != i.ipv4 {
        return Err(format!(
            "{name} reply quotes a header with residue {:?}, the packet's was {:?}",
            r.inner_ipv4, i.ipv4
        ));
    }
    let (rproto, rl4) = F::l4_in_frame(out).ok_or(format!("{name} reply without IP"))?;
    let icmp = <F::Ip as IpFamily>::ICMP_PROTO;
    let well_formed = match rproto {
        IPPROTO_TCP => out.get(rl4 + 13).is_some_and(|f| f & TCP_RST != 0),
        p if p == icmp => out.get(rl4..rl4 + 2) == Some(&[F::PORT_UNREACH.0, F::PORT_UNREACH.1]),
        _ => false,
    };
    if !well_formed {
        return Err(format!(
            "{name} reply is neither a TCP RST nor a port unreachable (protocol {rproto})"
        ));
    }
    let ((rs, rd), (is, id)) = (F::addrs(out)?, F::addrs(&p.frame)?);
    if rd != is || rs != id {
        return Err(format!(
            "{name} reply {rs} -> {rd} to a packet {is} -> {id}"
        ));
    }
    Ok(())
}

/// Checks the state maps of `side`'s family: every conntrack, SNAT,
/// affinity and fragment entry is one the packets could have made from the
/// family's seeded services.
fn check_state<F: Family>(
    dp: &TestDatapath,
    side: &Side<F>,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    let a = &side.allowed;
    let state = F::state(dp)?;
    let ct_keys: BTreeSet<Tuple<F::Addr>> = state.ct.iter().map(|r| r.key).collect();
    for r in &state.ct {
        let (k, entry) = (&r.key, &r.text);
        let backend = a.backends.get(&r.backend_id);
        let frontend = a.svc_frontend.get(&r.svc_id);
        let nat = (r.nat.0, r.nat.1, k.proto);
        match k.dir {
            CT_DIR_SERVICE => {
                if !a.frontends.contains(&(k.daddr, k.dport, k.proto)) {
                    problems.push(format!("{entry}: service entry to no frontend"));
                }
                if frontend != Some(&(k.daddr, k.dport, k.proto)) {
                    problems.push(format!("{entry}: svc_id is not this frontend's"));
                }
                if backend != Some(&nat) {
                    problems.push(format!("{entry}: NAT is not backend {}", r.backend_id));
                }
            }
            CT_DIR_REPLY => {
                if backend != Some(&(k.saddr, k.sport, k.proto)) {
                    problems.push(format!("{entry}: reply entry not from its backend"));
                }
                if frontend != Some(&nat) {
                    problems.push(format!("{entry}: reply NAT is not its frontend"));
                }
                if r.flags & CT_F_SNAT != 0 {
                    let range = if a.snat_addrs.contains(&k.daddr) {
                        SNAT_PORT_MIN..=SNAT_PORT_MAX
                    } else {
                        REMAP_PORT_MIN..=REMAP_PORT_MAX
                    };
                    if !range.contains(&k.dport) {
                        problems.push(format!("{entry}: SNAT port outside {range:?}"));
                    }
                }
            }
            _ => problems.push(format!("{entry}: unknown direction")),
        }
    }
    for (k, entry) in &state.snat {
        if side.seeded_snat_keys.contains(k) {
            continue;
        }
        if !ct_keys.contains(k) {
            problems.push(format!("{entry}: no conntrack entry with this key"));
        }
        match k.dir {
            CT_DIR_SERVICE => {
                if !a.frontends.contains(&(k.daddr, k.dport, k.proto)) {
                    problems.push(format!("{entry}: forward entry to no frontend"));
                }
            }
            CT_DIR_REPLY => {
                if !a.is_backend(k.saddr, k.sport, k.proto) {
                    problems.push(format!("{entry}: reverse entry not from a backend"));
                }
            }
            _ => problems.push(format!("{entry}: unknown direction")),
        }
    }
    for (svc_id, backend_id, entry) in &state.affinity {
        if !a.affinity_svcs.contains(svc_id) {
            problems.push(format!("{entry}: service without affinity"));
        } else if !a.svc_backends[svc_id].contains(backend_id) {
            problems.push(format!("{entry}: not a backend of the service"));
        }
    }
    for f in &state.frag {
        let entry = &f.text;
        if f.proto != IPPROTO_TCP && f.proto != IPPROTO_UDP {
            problems.push(format!("{entry}: not TCP or UDP"));
        }
        let ok = match f.dir {
            CT_DIR_SERVICE => {
                a.frontend_addrs.contains(&f.daddr) && a.backend_addrs.contains(&f.addr)
            }
            FRAG_DIR_SNAT_SRC => {
                a.frontend_addrs.contains(&f.daddr) && a.snat_addrs.contains(&f.addr)
            }
            FRAG_DIR_REVSNAT_SRC => {
                a.backend_addrs.contains(&f.saddr) && a.frontend_addrs.contains(&f.addr)
            }
            // Replies (CT_DIR_REPLY, and directions added later): from
            // a backend.
            _ => a.backend_addrs.contains(&f.saddr),
        };
        if !ok {
            problems.push(format!("{entry}: not a translated datagram's"));
        }
    }
    Ok(())
}

/// A rewrite of `input` into `output` (same length) touched only what NAT
/// may touch (MACs, and what [`Family::rewritable`] says) and kept every
/// checksum's residue; over IPv6 it left no UDP checksum of 0.
fn check_rewrite<F: Family>(input: &[u8], output: &[u8]) -> Result<(), String> {
    if input.len() != output.len() {
        return Err(format!(
            "length {} became {} (not a reject)",
            input.len(),
            output.len()
        ));
    }
    let (a, b) = (checksum_residues(input), checksum_residues(output));
    for (what, x, y) in [
        ("IPv4 header", a.ipv4, b.ipv4),
        ("layer 4", a.l4, b.l4),
        ("quoted IPv4 header", a.inner_ipv4, b.inner_ipv4),
        ("quoted UDP", a.inner_udp, b.inner_udp),
    ] {
        if x != y {
            return Err(format!("{what} checksum residue {x:?} became {y:?}"));
        }
    }
    if b.l4 == Some(Residue::ZeroOverIpv6) {
        return Err("a rewritten UDP datagram with checksum 0 over IPv6".to_string());
    }
    // Offsets NAT may write, from the input's own structure.
    let mut may = vec![false; input.len()];
    let mut allow = |from: usize, to: usize| {
        for m in may.iter_mut().take(to).skip(from) {
            *m = true;
        }
    };
    allow(0, 12); // MACs (a packet sent back swaps them)
    F::rewritable(input, &mut allow);
    if let Some(at) = (0..input.len()).find(|&i| input[i] != output[i] && !may[i]) {
        return Err(format!(
            "byte {at} changed from {:#04x} to {:#04x}: not an address, port or checksum",
            input[at], output[at]
        ));
    }
    Ok(())
}

/// Whether `BPF_PROG_TEST_RUN` refuses `frame` before running `prog`:
/// shorter than an Ethernet header, or, for TC (an skb), an IPv4 or IPv6
/// ethertype without room for the network header.
fn kernel_refuses(prog: TcProgram, frame: &[u8]) -> bool {
    if frame.len() < ETH_HLEN {
        return true;
    }
    if prog == TcProgram::NodeXdp {
        return false;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    (ethertype == ETH_P_IP && frame.len() < ETH_HLEN + 20)
        || (ethertype == ETH_P_IPV6 && frame.len() < ETH_HLEN + IPV6_HLEN)
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The configuration maps of both families, printed (sorted): they must
/// never change.
fn config_dump(dp: &TestDatapath) -> Result<String, String> {
    fn sorted<K: Debug, V: Debug>(
        name: &str,
        it: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
    ) -> Result<String, String> {
        let mut lines: Vec<String> = it
            .map(|r| r.map(|(k, v)| format!("{name} {k:?} -> {v:?}")))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("dump {name}: {e}"))?;
        lines.sort();
        Ok(lines.join("\n"))
    }
    let m6 = dp.v6()?;
    let ranges = dp
        .srcrange4
        .iter()
        .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)));
    let ranges6 = m6
        .srcrange6
        .iter()
        .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)));
    Ok([
        sorted("SVC4", dp.svc4.iter())?,
        sorted("SLOTS", dp.slots.iter())?,
        sorted("BACKEND4", dp.backend4.iter())?,
        sorted("REVNAT4", dp.revnat4.iter())?,
        sorted("NODE4", dp.node4.iter())?,
        sorted("SRCRANGE4", ranges)?,
        sorted("SVC6", m6.svc6.iter())?,
        sorted("BACKEND6", m6.backend6.iter())?,
        sorted("NODE6", m6.node6.iter())?,
        sorted("SRCRANGE6", ranges6)?,
    ]
    .join("\n"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim().replace('_', "");
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
}

#[test]
fn packet_fuzz() {
    skip_unless!(Needs::prog_run());
    let packets = env_u64("SVCNAT_FUZZ_PACKETS", DEFAULT_PACKETS);
    let seed = env_u64("SVCNAT_FUZZ_SEED", DEFAULT_SEED);
    let check_every = env_u64("SVCNAT_FUZZ_CHECK_EVERY", CHECK_EVERY).max(1);
    let mut run = Run::new().expect("load and seed the datapath");
    // Each family its own random stream, so that one family's packets do
    // not depend on how many random numbers the other drew.
    let mut v4 = Side::<V4>::new(seed);
    let mut v6 = Side::<V6>::new(seed ^ 0x6666_6666_6666_6666);
    let start = Instant::now();
    let mut n = 0u64;
    while n < packets {
        if n.is_multiple_of(ROUND) {
            run.check_maps(&v4, &v6).expect("read the maps");
            run.new_round(&mut v4, &mut v6).expect("seed a round");
        }
        // The families alternate: half the packets each.
        if n.is_multiple_of(2) {
            let p = v4.next_packet();
            run.run_one(&mut v4, &p)
        } else {
            let p = v6.next_packet();
            run.run_one(&mut v6, &p)
        }
        .expect("run a packet");
        n += 1;
        if n.is_multiple_of(check_every) {
            run.check_maps(&v4, &v6).expect("read the maps");
        }
    }
    run.check_maps(&v4, &v6).expect("read the maps");
    let report = run.report(n, seed, start.elapsed());
    println!("{report}");
    if run.failed > 0 {
        let mut s = format!(
            "{} checks failed (seed {seed:#x}, {n} packets; again: cargo xtask fuzz \
             --packets {n} --seed {seed:#x}, or SVCNAT_FUZZ_SEED={seed:#x} \
             SVCNAT_FUZZ_PACKETS={n} cargo test -p proxy-user --test fuzz); \
             first of each kind, with the packets since the last map check \
             (family, program, kind, stats reason, input and output in hex):\n",
            run.failed
        );
        for f in &run.failures {
            let _ = writeln!(s, "\n* {}", f.what);
            for p in &f.packets {
                let _ = writeln!(s, "    {p}");
            }
        }
        panic!("{s}\n{report}");
    }
}
