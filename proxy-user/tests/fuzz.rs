//! Packet fuzz of every datapath program, through `BPF_PROG_TEST_RUN`
//! (issue 11, "Conntrack you can trust").
//!
//! Random and mutated frames go through `svcnat_pod_ingress`,
//! `svcnat_pod_egress`, `svcnat_node_xdp` and `svcnat_node_egress` with a
//! world of services seeded (cluster IPs, node ports with local and remote
//! backends, source ranges, session affinity, traffic policy Local),
//! established flows and SNAT entries seeded, and addresses and ports biased
//! towards the seeded ones. Replies to what the programs let through, ICMP
//! errors about it and the later fragments of translated first fragments are
//! sent back in, so that the reverse paths are reached too.
//!
//! After every packet: exactly one stats reason was counted, for the input's
//! length; the verdict is one the program may return; a packet counted under
//! a `pass_*` reason is unchanged; a `reject_*` one is a well-formed reply to
//! the sender; any other changed packet keeps its length and structure,
//! changes only addresses, ports, checksums, MACs and the TTL, and keeps the
//! residue of every checksum (see [`checksum_residues`]: a valid checksum
//! stays valid, a wrong one stays wrong by as much, UDP without checksum
//! stays without). New flows go to a backend of the frontend addressed;
//! reverse-translated replies come from a frontend.
//!
//! Every [`CHECK_EVERY`] packets and at the end of each round the maps are
//! checked: the service, slot, backend, reverse NAT, node address and
//! source range maps are exactly as seeded; every conntrack, SNAT, affinity
//! and fragment entry is one the packets could have created from the seeded
//! services (see [`World::check_maps`]). Dumping the maps costs a few hundred
//! syscalls, against one run and one stats read per packet, so checking after
//! every packet would multiply the run time; every 16 packets keeps a
//! violation attributed to the 16 packets printed with it
//! (`SVCNAT_FUZZ_CHECK_EVERY=1` checks after each one). The state maps are
//! cleared and the flows reseeded every [`ROUND`] packets, so they stay small.
//!
//! Checks are keyed on the public types of `proxy-common` and on stats
//! reason names (`pass_*`, `drop_*`, `reject_*`), not on the datapath's
//! internals, so reasons added later are classified by their names.
//!
//! `SVCNAT_FUZZ_PACKETS` (default 20,000) and `SVCNAT_FUZZ_SEED` set the run;
//! `cargo xtask fuzz --packets N --seed S` runs it in release mode. Needs
//! root and the eBPF object; without them the test prints why and passes.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

use proxy_common::{
    BACKEND_FLAG_LOCAL, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_CLOSED, CT_F_SEEN_NON_SYN, CT_F_SNAT,
    FRAG_DIR_REVSNAT_SRC, FRAG_DIR_SNAT_SRC, HAIRPIN_ADDR_DEFAULT, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, REMAP_PORT_MAX, REMAP_PORT_MIN, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_EXTERNAL, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT,
    SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SlotKey,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use svcnat_testkit::{
    datapath::{
        Flow, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, TcProgram, TestDatapath,
        XDP_DROP, XDP_PASS, XDP_TX, monotonic_ns,
    },
    packet::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED,
        PacketBuilder, Residue, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, arp_request,
        checksum_residues, checksums_ok, ethernet_frame, fragment, parse,
    },
    skip::Needs,
    skip_unless,
};

/// Packets between two map checks.
const CHECK_EVERY: u64 = 16;
/// Packets between two clears of the state maps.
const ROUND: u64 = 256;
/// Default number of packets of `cargo test`.
const DEFAULT_PACKETS: u64 = 20_000;
/// Default seed.
const DEFAULT_SEED: u64 = 0x5eed_0011;
/// Failures printed in full; the rest are counted.
const MAX_REPORTED: usize = 12;

/// `TC_ACT_UNSPEC` (`TCX_NEXT` for TCX links): the datapath may return it
/// for "pass" instead of `TC_ACT_OK`.
const TC_ACT_UNSPEC: u32 = u32::MAX;

const NS: u64 = 1_000_000_000;

const fn sa(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

// ---------------------------------------------------------------------------
// The world (198.18.0.0/15 only)
// ---------------------------------------------------------------------------

/// Cluster IP of WEB, DNS and the two empty ports.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const WEB: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
const DNS: SocketAddrV4 = SocketAddrV4::new(VIP, 53);
const EMPTY_TCP: SocketAddrV4 = SocketAddrV4::new(VIP, 81);
const EMPTY_UDP: SocketAddrV4 = SocketAddrV4::new(VIP, 54);
/// Cluster IP with session affinity.
const AFF: SocketAddrV4 = sa(198, 19, 0, 2, 80);
/// This node.
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const NP_LOCAL: SocketAddrV4 = SocketAddrV4::new(NODE, 30080);
const NP_REMOTE: SocketAddrV4 = SocketAddrV4::new(NODE, 30081);
const NP_UDP: SocketAddrV4 = SocketAddrV4::new(NODE, 30053);
const NP_ETP_LOCAL: SocketAddrV4 = SocketAddrV4::new(NODE, 30090);
const NP_AFF: SocketAddrV4 = SocketAddrV4::new(NODE, 30070);
/// Load balancer with source ranges (198.18.200.0/24).
const LB: SocketAddrV4 = sa(198, 19, 50, 1, 80);
/// External IP, UDP, one local and one remote backend.
const EXT_UDP: SocketAddrV4 = sa(198, 19, 60, 1, 53);

/// Node port without backends.
const NP_EMPTY: SocketAddrV4 = SocketAddrV4::new(NODE, 30099);
/// Cluster IP whose second slot is missing.
const BROKEN: SocketAddrV4 = sa(198, 19, 0, 3, 53);

/// Pods of this node (clients of the cluster IPs).
const POD_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
/// Clients outside the node: in the load balancer's ranges, and not.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 5);
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 201, 5);
/// A router (source of ICMP errors).
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);

/// Backends: (id, address, local?).
const B1: (u32, SocketAddrV4, bool) = (1, sa(198, 18, 2, 1, 8080), true);
const B2: (u32, SocketAddrV4, bool) = (2, sa(198, 18, 2, 2, 8080), true);
const B3: (u32, SocketAddrV4, bool) = (3, sa(198, 18, 2, 3, 5353), true);
const B4: (u32, SocketAddrV4, bool) = (4, sa(198, 18, 2, 4, 5353), true);
const L1: (u32, SocketAddrV4, bool) = (11, sa(198, 18, 10, 11, 8080), true);
const L2: (u32, SocketAddrV4, bool) = (12, sa(198, 18, 10, 12, 8080), true);
const L3: (u32, SocketAddrV4, bool) = (13, sa(198, 18, 10, 13, 5353), true);
const R1: (u32, SocketAddrV4, bool) = (21, sa(198, 18, 20, 21, 8080), false);
const R2: (u32, SocketAddrV4, bool) = (22, sa(198, 18, 20, 22, 5353), false);

const AFFINITY_S: u32 = 100;

/// One frontend entry to seed.
struct Frontend {
    addr: SocketAddrV4,
    proto: u8,
    scope: u8,
    svc_id: u32,
    flags: u16,
    affinity: u32,
    backends: &'static [(u32, SocketAddrV4, bool)],
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

const fn fe(
    addr: SocketAddrV4,
    proto: u8,
    svc_id: u32,
    flags: u16,
    affinity: u32,
    backends: &'static [(u32, SocketAddrV4, bool)],
    vip_marker: bool,
) -> Frontend {
    Frontend {
        addr,
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

fn seed_services(dp: &mut TestDatapath) -> Result<(), String> {
    dp.set_node_address(TEST_RUN_IFINDEX, NODE)
        .map_err(|e| format!("seed node address: {e}"))?;
    for f in FRONTENDS {
        let backends: Vec<(u32, SocketAddrV4, u8)> = f
            .backends
            .iter()
            .map(|(id, a, local)| (*id, *a, if *local { BACKEND_FLAG_LOCAL } else { 0 }))
            .collect();
        dp.add_frontend(
            f.addr, f.proto, f.scope, f.svc_id, f.flags, f.affinity, &backends,
        )
        .map_err(|e| format!("seed {}: {e}", f.addr))?;
        if f.vip_marker {
            dp.add_vip_marker(f.addr)
                .map_err(|e| format!("seed marker {}: {e}", f.addr))?;
        }
    }
    dp.slots
        .remove(&SlotKey {
            svc_id: BROKEN_ID,
            slot: 2,
        })
        .map_err(|e| format!("remove a slot of BROKEN: {e}"))?;
    dp.add_source_range(14, Ipv4Addr::new(198, 18, 200, 0), 24)
        .map_err(|e| format!("seed source range: {e}"))
}

/// What the seeded configuration allows, for the map checks.
struct Allowed {
    /// Frontends: (address, port, proto).
    frontends: BTreeSet<([u8; 4], u16, u8)>,
    frontend_addrs: BTreeSet<[u8; 4]>,
    /// Backends: id -> (address, port, proto).
    backends: BTreeMap<u32, ([u8; 4], u16, u8)>,
    backend_addrs: BTreeSet<[u8; 4]>,
    /// Backends of each service id.
    svc_backends: BTreeMap<u32, Vec<u32>>,
    /// Service id -> frontend (address, port, proto).
    svc_frontend: BTreeMap<u32, ([u8; 4], u16, u8)>,
    affinity_svcs: BTreeSet<u32>,
    /// Addresses SNATed flows may leave with: node, hairpin.
    snat_addrs: BTreeSet<[u8; 4]>,
}

impl Allowed {
    fn new() -> Self {
        let mut a = Allowed {
            frontends: BTreeSet::new(),
            frontend_addrs: BTreeSet::new(),
            backends: BTreeMap::new(),
            backend_addrs: BTreeSet::new(),
            svc_backends: BTreeMap::new(),
            svc_frontend: BTreeMap::new(),
            affinity_svcs: BTreeSet::new(),
            snat_addrs: [NODE.octets(), HAIRPIN_ADDR_DEFAULT].into_iter().collect(),
        };
        for f in FRONTENDS {
            let key = (f.addr.ip().octets(), f.addr.port(), f.proto);
            a.frontends.insert(key);
            a.frontend_addrs.insert(key.0);
            a.svc_frontend.insert(f.svc_id, key);
            a.svc_backends
                .insert(f.svc_id, f.backends.iter().map(|b| b.0).collect());
            if f.affinity > 0 {
                a.affinity_svcs.insert(f.svc_id);
            }
            for (id, b, _) in f.backends {
                a.backends.insert(*id, (b.ip().octets(), b.port(), f.proto));
                a.backend_addrs.insert(b.ip().octets());
            }
        }
        a
    }

    fn is_backend(&self, addr: [u8; 4], port: u16, proto: u8) -> bool {
        self.backends.values().any(|b| *b == (addr, port, proto))
    }

    /// The backends of the frontend `addr:port` (all scopes).
    fn backends_of(&self, addr: [u8; 4], port: u16, proto: u8) -> Vec<([u8; 4], u16)> {
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
// The run
// ---------------------------------------------------------------------------

/// A packet and where it goes.
#[derive(Clone)]
struct Packet {
    prog: TcProgram,
    frame: Vec<u8>,
    kind: &'static str,
}

/// One failed check, with what to reproduce it.
struct Failure {
    what: String,
    packets: Vec<String>,
}

struct World {
    dp: TestDatapath,
    rng: StdRng,
    allowed: Allowed,
    /// The configuration maps as seeded.
    config: String,
    /// Seeded flows of this round: service keys and SNAT keys they own.
    seeded_snat_keys: BTreeSet<[u8; 16]>,
    /// Ports of seeded flows (client ports, SNAT ports), for bias.
    flow_ports: Vec<u16>,
    /// This round's seeded flows, with the address the backend sees when
    /// they are source-NATed.
    flows: Vec<(Flow, Option<SocketAddrV4>)>,
    /// Translated outputs, to answer.
    recent: VecDeque<Packet>,
    /// Packets to send next (later fragments).
    pending: VecDeque<Packet>,
    /// The program of the packet being made.
    prog: TcProgram,
    /// The packets since the last map check, printed with a violation.
    window: Vec<String>,
    stats: Vec<u64>,
    by_reason: BTreeMap<&'static str, u64>,
    by_kind: BTreeMap<&'static str, u64>,
    by_prog: BTreeMap<&'static str, u64>,
    refused: u64,
    failures: Vec<Failure>,
    failed: u64,
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn ct_key_bytes(k: &proxy_common::Ct4Key) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&k.saddr);
    b[4..8].copy_from_slice(&k.daddr);
    b[8..10].copy_from_slice(&k.sport.to_be_bytes());
    b[10..12].copy_from_slice(&k.dport.to_be_bytes());
    b[12] = k.proto;
    b[13] = k.dir;
    b
}

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// Keeps the outer (and, for ICMP, the quoted) IPv4 addresses of a frame
/// in 198.18.0.0/15 after random bytes or mutations, as the project's
/// address rules ask; everything else stays random.
fn confine_addresses(frame: &mut [u8]) {
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

impl World {
    fn new(seed: u64) -> Result<Self, String> {
        let mut dp = TestDatapath::load().map_err(|e| format!("load: {e}"))?;
        seed_services(&mut dp)?;
        let config = config_dump(&dp)?;
        Ok(World {
            dp,
            rng: StdRng::seed_from_u64(seed),
            allowed: Allowed::new(),
            config,
            seeded_snat_keys: BTreeSet::new(),
            flow_ports: Vec::new(),
            flows: Vec::new(),
            recent: VecDeque::new(),
            pending: VecDeque::new(),
            prog: TcProgram::PodIngress,
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

    /// Clears the state maps and seeds this round's flows.
    fn new_round(&mut self) -> Result<(), String> {
        self.dp
            .clear_state()
            .map_err(|e| format!("clear state: {e}"))?;
        self.recent.clear();
        self.pending.clear();
        self.seeded_snat_keys.clear();
        self.flow_ports.clear();
        self.flows.clear();
        let now = monotonic_ns();
        let live = (now.saturating_sub(NS), now + 3600 * NS);
        let port = |rng: &mut StdRng| rng.random_range(1024..=60999u16);
        let flows = [
            (POD_A, WEB, B1, IPPROTO_TCP, CT_F_SEEN_NON_SYN, live.1),
            (POD_B, DNS, B3, IPPROTO_UDP, 0, live.1),
            (POD_B, WEB, B2, IPPROTO_TCP, CT_F_CLOSED, live.1),
            (POD_A, AFF, B2, IPPROTO_TCP, CT_F_SEEN_NON_SYN, 1),
            (
                OUTSIDE,
                NP_LOCAL,
                L1,
                IPPROTO_TCP,
                CT_F_SEEN_NON_SYN,
                live.1,
            ),
            (OUTSIDE, EXT_UDP, L3, IPPROTO_UDP, 0, live.1),
        ];
        for (client, vip, b, proto, flags, expires_ns) in flows {
            let cport = port(&mut self.rng);
            self.flow_ports.push(cport);
            let flow = flow(
                SocketAddrV4::new(client, cport),
                vip,
                b,
                proto,
                flags,
                live.0,
                expires_ns,
            );
            self.dp
                .add_flow(&flow)
                .map_err(|e| format!("seed flow: {e}"))?;
            self.flows.push((flow, None));
        }
        let snat_flows = [
            (OUTSIDE, NP_REMOTE, R1, IPPROTO_TCP, NODE),
            (OUTSIDE, NP_UDP, R2, IPPROTO_UDP, NODE),
            (STRANGER, EXT_UDP, R2, IPPROTO_UDP, NODE),
            // A pod reaching itself through WEB (hairpin).
            (
                *B1.1.ip(),
                WEB,
                B1,
                IPPROTO_TCP,
                Ipv4Addr::from(HAIRPIN_ADDR_DEFAULT),
            ),
        ];
        for (client, vip, b, proto, via) in snat_flows {
            let cport = port(&mut self.rng);
            let sport = self.rng.random_range(SNAT_PORT_MIN..=SNAT_PORT_MAX);
            self.flow_ports.extend([cport, sport]);
            let flow = flow(
                SocketAddrV4::new(client, cport),
                vip,
                b,
                proto,
                CT_F_SEEN_NON_SYN,
                live.0,
                live.1,
            );
            let via = SocketAddrV4::new(via, sport);
            self.dp
                .add_snat_flow(&flow, via)
                .map_err(|e| format!("seed SNAT flow: {e}"))?;
            self.seeded_snat_keys
                .insert(ct_key_bytes(&flow.service_key()));
            self.seeded_snat_keys
                .insert(ct_key_bytes(&flow.snat_reply_key(via)));
            self.flows.push((flow, Some(via)));
        }
        Ok(())
    }

    // -- generation ---------------------------------------------------------

    fn addr(&mut self) -> Ipv4Addr {
        const INTERESTING: &[Ipv4Addr] = &[
            VIP,
            VIP,
            *AFF.ip(),
            NODE,
            NODE,
            *LB.ip(),
            *EXT_UDP.ip(),
            *BROKEN.ip(),
            POD_A,
            POD_B,
            OUTSIDE,
            OUTSIDE,
            STRANGER,
            ROUTER,
            *B1.1.ip(),
            *B2.1.ip(),
            *B3.1.ip(),
            *L1.1.ip(),
            *L2.1.ip(),
            *L3.1.ip(),
            *R1.1.ip(),
            *R2.1.ip(),
            Ipv4Addr::new(169, 254, 42, 1),
        ];
        match self.rng.random_range(0..10) {
            0..=7 => {
                let a = pick(&mut self.rng, INTERESTING);
                // The hairpin address is link-local: keep it, it is what the
                // datapath writes, but only in a few packets.
                if a.octets()[0] == 169 && self.rng.random_bool(0.5) {
                    POD_A
                } else {
                    a
                }
            }
            _ => {
                let r: u32 = self.rng.random();
                Ipv4Addr::new(198, 18 | (r as u8 & 1), (r >> 8) as u8, (r >> 16) as u8)
            }
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

    fn endpoint(&mut self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr(), self.port())
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let n = self.rng.random_range(0..=max);
        let mut v = vec![0u8; n];
        self.rng.fill(&mut v[..]);
        v
    }

    /// Random IPv4 header fields on a builder.
    fn ip_fields(&mut self, b: PacketBuilder) -> PacketBuilder {
        let mut b = b
            .ttl(self.rng.random())
            .tos(self.rng.random())
            .id(self.rng.random())
            .dont_fragment(self.rng.random_bool(0.5));
        if self.rng.random_ratio(1, 30) {
            let n = 4 * self.rng.random_range(1..=10);
            let opts = self.payload_exact(n);
            b = b.ip_options(&opts);
        }
        if self.rng.random_ratio(1, 30) {
            b = b.ip_checksum(self.rng.random());
        }
        if self.rng.random_ratio(1, 40) {
            b = b.ip_total_len(self.rng.random());
        }
        b
    }

    fn payload_exact(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill(&mut v[..]);
        v
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

    fn tcp(&mut self, src: SocketAddrV4, dst: SocketAddrV4) -> PacketBuilder {
        let mut b = PacketBuilder::tcp(src, dst)
            .flags(self.tcp_flags())
            .seq(self.rng.random())
            .ack_seq(self.rng.random())
            .window(self.rng.random());
        if self.rng.random_ratio(1, 10) {
            let n = 4 * self.rng.random_range(1..=10);
            let opts = self.payload_exact(n);
            b = b.tcp_options(&opts);
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

    fn udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4) -> PacketBuilder {
        let payload = self.payload(64);
        let mut b = PacketBuilder::udp(src, dst).payload(&payload);
        match self.rng.random_range(0..20) {
            0..=2 => b = b.udp_zero_checksum(),
            3 => b = b.l4_checksum(self.rng.random()),
            _ => {}
        }
        self.ip_fields(b)
    }

    fn tcp_or_udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4) -> PacketBuilder {
        if self.rng.random_bool(0.5) {
            self.tcp(src, dst)
        } else {
            self.udp(src, dst)
        }
    }

    fn icmp_error(&mut self, inner: &PacketBuilder, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let (ty, code) = match self.rng.random_range(0..6) {
            0..=2 => (ICMP_DEST_UNREACH, self.rng.random_range(0..16)),
            3 => (ICMP_TIME_EXCEEDED, self.rng.random_range(0..2)),
            4 => (pick(&mut self.rng, &[4u8, 5, 12]), self.rng.random()),
            _ => (self.rng.random(), self.rng.random()),
        };
        let b = PacketBuilder::icmp_error(src, dst, ty, code, inner).icmp_rest(self.rng.random());
        let mut frame = self.ip_fields(b).build();
        // Quote more, or less, than a header and 8 bytes.
        match self.rng.random_range(0..8) {
            0 => {
                let cut = self.rng.random_range(ETH_HLEN + 20..=frame.len());
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
                let b =
                    PacketBuilder::icmp_echo_request(s, d, self.rng.random(), self.rng.random());
                let b = if self.rng.random_bool(0.3) {
                    PacketBuilder::icmp(s, d, self.rng.random(), self.rng.random())
                } else {
                    b
                };
                let payload = self.payload(32);
                (self.ip_fields(b.payload(&payload)).build(), "icmp")
            }
            13..=15 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                let inner = if self.rng.random_ratio(1, 8) {
                    let payload = self.payload(16);
                    PacketBuilder::ip_raw(*s.ip(), *d.ip(), self.rng.random()).payload(&payload)
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
                let b = PacketBuilder::ip_raw(s, d, proto).payload(&payload);
                (self.ip_fields(b).build(), "other_protocol")
            }
            17..=18 => self.fragments(),
            _ => {
                let frame = match self.rng.random_range(0..3) {
                    0 => arp_request([2, 0, 0, 0, 0, 9], self.addr(), self.addr()),
                    1 => {
                        let p = self.payload(80);
                        ethernet_frame([2; 6], [4; 6], ETH_P_IPV6, &p)
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
                (frame, "not_ipv4")
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
            let b = self
                .tcp_or_udp(s, d)
                .payload(&payload)
                .fragment(self.rng.random_bool(0.5), self.rng.random_range(1..=0x1fff));
            return (b.build(), "fragment_later_random");
        }
        let mut payload = vec![0u8; self.rng.random_range(24..200)];
        self.rng.fill(&mut payload[..]);
        let mut b = self.tcp_or_udp(s, d).payload(&payload).dont_fragment(false);
        // `fragment` splits by the total length: keep it true.
        b.ip.total_len = None;
        let whole = b.build();
        let chunk = 8 * self.rng.random_range(1..=8);
        let mut frags = fragment(&whole, chunk);
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
                f[ETH_HLEN + 5] ^= 1;
                fix_ipv4_checksum(&mut f);
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

    /// A reply, a follow-up or an ICMP error about a packet a program let
    /// through translated.
    fn answer(&mut self) -> Option<Packet> {
        if self.recent.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.recent.len());
        let prev = self.recent[i].clone();
        let p = parse(&prev.frame).ok()?;
        let ip = p.ipv4.as_ref()?;
        let (src, dst) = (ip.source().ok()?, ip.destination().ok()?);
        let tcp = ip.proto == IPPROTO_TCP;
        let natural = match prev.prog {
            TcProgram::PodIngress if ip.src.octets() == HAIRPIN_ADDR_DEFAULT => {
                TcProgram::PodIngress
            }
            TcProgram::PodIngress => TcProgram::PodEgress,
            TcProgram::NodeXdp => {
                if ip.src == NODE {
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
                *dst.ip()
            } else {
                ROUTER
            };
            let frame = self.icmp_error(&inner, from, *src.ip());
            return Some(Packet {
                prog,
                frame,
                kind: "icmp_error_answer",
            });
        };
        let mut b = b.macs(p.eth_dst, p.eth_src);
        let fragmented = self.rng.random_ratio(1, 6);
        if fragmented {
            b.ip.total_len = None;
        }
        let mut frame = b.build();
        if fragmented {
            let mut frags = fragment(&frame, 8 * self.rng.random_range(1..=4));
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
        let (dst, proto, external) = (f.addr, f.proto, f.flags & SVC_FLAG_EXTERNAL != 0);
        let client = pick(
            &mut self.rng,
            &[POD_A, POD_B, *B1.1.ip(), OUTSIDE, OUTSIDE, STRANGER],
        );
        let src = SocketAddrV4::new(client, self.port());
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
        let (f, via) = self.flows[self.rng.random_range(0..self.flows.len())];
        let external = FRONTENDS
            .iter()
            .any(|x| x.addr == f.vip && x.flags & SVC_FLAG_EXTERNAL != 0);
        let hairpin = via.is_some_and(|v| v.ip().octets() == HAIRPIN_ADDR_DEFAULT);
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
        confine_addresses(&mut f);
        f
    }

    fn next_packet(&mut self, n: u64) -> Packet {
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
                confine_addresses(&mut f);
                (f, "random_bytes")
            }
            46..=47 => {
                let mut f = PacketBuilder::tcp(self.endpoint(), self.endpoint()).build();
                let tail = self.payload(80);
                f.truncate(ETH_HLEN);
                f.extend_from_slice(&tail);
                if f.len() > ETH_HLEN {
                    f[ETH_HLEN] = 0x40 | (f[ETH_HLEN] & 0x0f);
                }
                confine_addresses(&mut f);
                (f, "random_ipv4")
            }
            _ => self.valid(),
        };
        Packet { prog, frame, kind }
    }

    /// Every truncation of a few packets that reach the interesting paths,
    /// through every program.
    fn sweep(&mut self) -> Vec<Packet> {
        let now_flow = |b: PacketBuilder| b.build();
        let templates = vec![
            now_flow(PacketBuilder::tcp(SocketAddrV4::new(POD_A, 40000), WEB).flags(TCP_SYN)),
            now_flow(PacketBuilder::udp(SocketAddrV4::new(POD_A, 40001), DNS).payload(&[1; 12])),
            now_flow(PacketBuilder::tcp(SocketAddrV4::new(POD_A, 40002), EMPTY_TCP).flags(TCP_SYN)),
            now_flow(
                PacketBuilder::udp(SocketAddrV4::new(POD_A, 40003), EMPTY_UDP).payload(&[2; 8]),
            ),
            now_flow(
                PacketBuilder::tcp(SocketAddrV4::new(OUTSIDE, 40004), NP_REMOTE).flags(TCP_SYN),
            ),
            now_flow(
                PacketBuilder::udp(SocketAddrV4::new(OUTSIDE, 40005), NP_UDP).payload(&[3; 20]),
            ),
            now_flow(PacketBuilder::udp(B3.1, SocketAddrV4::new(POD_A, 40001)).payload(&[4; 12])),
            PacketBuilder::icmp_error(
                ROUTER,
                POD_A,
                ICMP_DEST_UNREACH,
                4,
                &PacketBuilder::udp(SocketAddrV4::new(POD_A, 40001), B3.1),
            )
            .build(),
            fragment(
                &PacketBuilder::udp(SocketAddrV4::new(POD_A, 40006), DNS)
                    .payload(&[5; 40])
                    .build(),
                16,
            )
            .remove(0),
            PacketBuilder::icmp_echo_request(POD_A, VIP, 1, 2).build(),
        ];
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

    // -- checking -----------------------------------------------------------

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

    /// Runs one packet and checks what came out. The description of the
    /// packet goes into the window of the next map check.
    fn run_one(&mut self, p: &Packet) -> Result<(), String> {
        *self.by_kind.entry(p.kind).or_default() += 1;
        *self.by_prog.entry(p.prog.name()).or_default() += 1;
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
                "{} {} [{}] in={} out={}",
                p.prog.name(),
                p.kind,
                reason,
                hex(&p.frame),
                hex(out)
            )
        };
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.window.push(desc("refused", &[]));
                if e.raw_os_error() == Some(libc::EINVAL) && kernel_refuses(p.prog, &p.frame) {
                    // The kernel runs nothing on such a frame.
                    self.refused += 1;
                    if !counted.is_empty() {
                        let d = desc("refused", &[]);
                        self.fail(format!("a refused run counted {counted:?}"), vec![d]);
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
                    format!("expected one stats reason counted once, got {counted:?}"),
                    vec![d],
                );
                return Ok(());
            }
        };
        *self.by_reason.entry(reason.name()).or_default() += 1;
        let d = desc(reason.name(), &out.data_out);
        self.window.push(d.clone());
        if let Err(e) = self.check_output(p, reason, out.retval, &out.data_out) {
            self.fail(format!("{}: {e}", p.prog.name()), vec![d]);
            return Ok(());
        }
        let name = reason.name();
        let translated = !name.starts_with("pass_")
            && !name.starts_with("drop_")
            && !name.starts_with("reject_");
        if translated && out.data_out != p.frame {
            self.recent.push_back(Packet {
                prog: p.prog,
                frame: out.data_out,
                kind: "recent",
            });
            if self.recent.len() > 32 {
                self.recent.pop_front();
            }
        }
        Ok(())
    }

    fn check_output(
        &self,
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
            let input = parse(&p.frame)?;
            let iip = input.ip()?;
            // The flags as the datapath reads them: from the frame, even
            // where the IPv4 total length says the header is cut.
            let l4 = ETH_HLEN + usize::from(iip.ihl) * 4;
            let rst =
                iip.proto == IPPROTO_TCP && p.frame.get(l4 + 13).is_some_and(|f| f & TCP_RST != 0);
            if drops.contains(&verdict) && rst {
                // A RST is never answered (RFC 793): dropped, counted so.
                return Ok(());
            }
            let bounced = if xdp { XDP_TX } else { TC_ACT_REDIRECT };
            if verdict != bounced {
                return Err(format!("{name} with verdict {verdict}"));
            }
            // A reply made from scratch: its own checksums are right; the
            // header it quotes (port unreachable) is the input's as it was.
            let (r, i) = (checksum_residues(out), checksum_residues(&p.frame));
            for (what, c) in [("IPv4 header", r.ipv4), ("layer 4", r.l4)] {
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
            let reply = parse(out)?;
            let rip = reply.ip()?;
            if rip.dst != iip.src || rip.src != iip.dst {
                return Err(format!(
                    "{name} reply {} -> {} to a packet {} -> {}",
                    rip.src, rip.dst, iip.src, iip.dst
                ));
            }
            return Ok(());
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
        check_rewrite(&p.frame, out).map_err(|e| format!("{name}: {e}"))?;
        if checksums_ok(&p.frame).is_ok() {
            checksums_ok(out).map_err(|e| format!("{name}: valid input, output {e}"))?;
        }
        let (input, output) = (parse(&p.frame)?, parse(out)?);
        let (iip, oip) = (input.ip()?, output.ip()?);
        if name.starts_with("dnat_new") || name == "snat_new" {
            let (Ok(to), Ok(from)) = (iip.destination(), oip.destination()) else {
                return Ok(());
            };
            let backends = self
                .allowed
                .backends_of(to.ip().octets(), to.port(), iip.proto);
            if !backends.contains(&(from.ip().octets(), from.port())) {
                return Err(format!(
                    "{name}: {to} sent to {from}, not one of its backends"
                ));
            }
        }
        if name == "revnat_reply" || name == "revsnat_reply" {
            let (Ok(from), Ok(vip)) = (iip.source(), oip.source()) else {
                return Ok(());
            };
            if !self
                .allowed
                .is_backend(from.ip().octets(), from.port(), iip.proto)
            {
                return Err(format!("{name}: reply from {from}, not a backend"));
            }
            if !self
                .allowed
                .frontends
                .contains(&(vip.ip().octets(), vip.port(), oip.proto))
            {
                return Err(format!("{name}: reply now from {vip}, not a frontend"));
            }
        }
        Ok(())
    }

    /// Checks the maps (see the module documentation); a violation is
    /// reported with the packets since the last check.
    fn check_maps(&mut self) -> Result<(), String> {
        let window = std::mem::take(&mut self.window);
        let mut problems = Vec::new();
        let config = config_dump(&self.dp)?;
        if config != self.config {
            problems.push(format!(
                "configuration maps changed:\n--- seeded\n{}\n--- now\n{config}",
                self.config
            ));
        }
        let a = &self.allowed;
        let ct: Vec<_> = self
            .dp
            .ct4
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("dump CT4: {e}"))?;
        let ct_keys: BTreeSet<[u8; 16]> = ct.iter().map(|(k, _)| ct_key_bytes(k)).collect();
        for (k, v) in &ct {
            let entry = format!("CT4 {k:?} -> {v:?}");
            let backend = a.backends.get(&v.backend_id);
            let frontend = a.svc_frontend.get(&v.svc_id);
            match k.dir {
                CT_DIR_SERVICE => {
                    if !a.frontends.contains(&(k.daddr, k.dport, k.proto)) {
                        problems.push(format!("{entry}: service entry to no frontend"));
                    }
                    if frontend != Some(&(k.daddr, k.dport, k.proto)) {
                        problems.push(format!("{entry}: svc_id is not this frontend's"));
                    }
                    if backend != Some(&(v.nat_addr, v.nat_port, k.proto)) {
                        problems.push(format!("{entry}: NAT is not backend {}", v.backend_id));
                    }
                }
                CT_DIR_REPLY => {
                    if backend != Some(&(k.saddr, k.sport, k.proto)) {
                        problems.push(format!("{entry}: reply entry not from its backend"));
                    }
                    if frontend != Some(&(v.nat_addr, v.nat_port, k.proto)) {
                        problems.push(format!("{entry}: reply NAT is not its frontend"));
                    }
                    if v.flags & CT_F_SNAT != 0 {
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
        let snat: Vec<_> = self
            .dp
            .snat4
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("dump SNAT4: {e}"))?;
        for (k, v) in &snat {
            let kb = ct_key_bytes(k);
            if self.seeded_snat_keys.contains(&kb) {
                continue;
            }
            let entry = format!("SNAT4 {k:?} -> {v:?}");
            if !ct_keys.contains(&kb) {
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
        let aff: Vec<_> = self
            .dp
            .affinity4
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("dump AFFINITY4: {e}"))?;
        for (k, v) in &aff {
            let entry = format!("AFFINITY4 {k:?} -> {v:?}");
            if !a.affinity_svcs.contains(&k.svc_id) {
                problems.push(format!("{entry}: service without affinity"));
            } else if !a.svc_backends[&k.svc_id].contains(&v.backend_id) {
                problems.push(format!("{entry}: not a backend of the service"));
            }
        }
        let frag: Vec<_> = self
            .dp
            .frag4
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("dump FRAG4: {e}"))?;
        for (k, v) in &frag {
            let entry = format!("FRAG4 {k:?} -> {v:?}");
            if k.proto != IPPROTO_TCP && k.proto != IPPROTO_UDP {
                problems.push(format!("{entry}: not TCP or UDP"));
            }
            let ok = match k.dir {
                CT_DIR_SERVICE => {
                    a.frontend_addrs.contains(&k.daddr) && a.backend_addrs.contains(&v.addr)
                }
                FRAG_DIR_SNAT_SRC => {
                    a.frontend_addrs.contains(&k.daddr) && a.snat_addrs.contains(&v.addr)
                }
                FRAG_DIR_REVSNAT_SRC => {
                    a.backend_addrs.contains(&k.saddr) && a.frontend_addrs.contains(&v.addr)
                }
                // Replies (CT_DIR_REPLY, and directions added later): from
                // a backend.
                _ => a.backend_addrs.contains(&k.saddr),
            };
            if !ok {
                problems.push(format!("{entry}: not a translated datagram's"));
            }
        }
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
            "packet fuzz: {packets} packets, seed {seed:#x}, {:.1} s ({:.0} packets/s); \
             {} runs refused by the kernel (frames shorter than their link or network header)",
            elapsed.as_secs_f64(),
            packets as f64 / elapsed.as_secs_f64().max(1e-9),
            self.refused
        );
        let _ = writeln!(s, "by stats reason:");
        for r in Reason::ALL {
            let _ = writeln!(
                s,
                "  {:<28} {}",
                r.name(),
                self.by_reason.get(r.name()).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(s, "by program:");
        for (k, v) in &self.by_prog {
            let _ = writeln!(s, "  {k:<28} {v}");
        }
        let _ = writeln!(s, "by kind of packet:");
        for (k, v) in &self.by_kind {
            let _ = writeln!(s, "  {k:<28} {v}");
        }
        s
    }
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
        || (ethertype == ETH_P_IPV6 && frame.len() < ETH_HLEN + 40)
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn flow(
    client: SocketAddrV4,
    vip: SocketAddrV4,
    b: (u32, SocketAddrV4, bool),
    proto: u8,
    flags: u8,
    created_ns: u64,
    expires_ns: u64,
) -> Flow {
    let svc_id = FRONTENDS
        .iter()
        .find(|f| f.addr == vip && f.proto == proto && f.scope == SCOPE_EXTERNAL)
        .map(|f| f.svc_id)
        .unwrap_or_default();
    Flow {
        client,
        vip,
        backend: b.1,
        proto,
        backend_id: b.0,
        svc_id,
        flags,
        created_ns,
        expires_ns,
    }
}

fn fix_ipv4_checksum(f: &mut [u8]) {
    let ip = &mut f[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = svcnat_testkit::packet::internet_checksum(&ip[..hlen]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// The configuration maps, printed (sorted): they must never change.
fn config_dump(dp: &TestDatapath) -> Result<String, String> {
    fn sorted<K: std::fmt::Debug, V: std::fmt::Debug>(
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
    let ranges = dp
        .srcrange4
        .iter()
        .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)));
    Ok([
        sorted("SVC4", dp.svc4.iter())?,
        sorted("SLOTS", dp.slots.iter())?,
        sorted("BACKEND4", dp.backend4.iter())?,
        sorted("REVNAT4", dp.revnat4.iter())?,
        sorted("NODE4", dp.node4.iter())?,
        sorted("SRCRANGE4", ranges)?,
    ]
    .join("\n"))
}

/// A rewrite of `input` into `output` (same length) touched only what NAT
/// may touch (MACs, TTL, addresses, ports, checksums, and in an ICMP error
/// the quoted header's addresses, ports and checksums) and kept every
/// checksum's residue.
fn check_rewrite(input: &[u8], output: &[u8]) -> Result<(), String> {
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
    // Offsets NAT may write, from the input's own structure.
    let mut may = vec![false; input.len()];
    let mut allow = |from: usize, to: usize| {
        for m in may.iter_mut().take(to).skip(from) {
            *m = true;
        }
    };
    allow(0, 12); // MACs (a packet sent back swaps them)
    if input.len() >= ETH_HLEN + 20 && input[12..14] == ETH_P_IP.to_be_bytes() {
        let l3 = ETH_HLEN;
        let hlen = usize::from(input[l3] & 0x0f) * 4;
        allow(l3 + 8, l3 + 9); // TTL
        allow(l3 + 10, l3 + 12); // header checksum
        allow(l3 + 12, l3 + 20); // addresses
        let l4 = l3 + hlen;
        let later = u16::from_be_bytes([input[l3 + 6], input[l3 + 7]]) & 0x1fff != 0;
        if !later {
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
    }
    if let Some(at) = (0..input.len()).find(|&i| input[i] != output[i] && !may[i]) {
        return Err(format!(
            "byte {at} changed from {:#04x} to {:#04x}: not an address, port or checksum",
            input[at], output[at]
        ));
    }
    Ok(())
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
    let mut w = World::new(seed).expect("load and seed the datapath");
    let start = Instant::now();
    let mut sweep: VecDeque<Packet> = w.sweep().into();
    let mut n = 0u64;
    while n < packets {
        if n.is_multiple_of(ROUND) {
            w.check_maps().expect("read the maps");
            w.new_round().expect("seed a round");
            w.stats = w.read_stats().expect("stats");
        }
        let p = match sweep.pop_front() {
            Some(p) => p,
            None => w.next_packet(n),
        };
        w.run_one(&p).expect("run a packet");
        n += 1;
        if n.is_multiple_of(check_every) {
            w.check_maps().expect("read the maps");
        }
    }
    w.check_maps().expect("read the maps");
    let report = w.report(n, seed, start.elapsed());
    println!("{report}");
    if w.failed > 0 {
        let mut s = format!(
            "{} checks failed (seed {seed:#x}, {n} packets; again: cargo xtask fuzz \
             --packets {n} --seed {seed:#x}, or SVCNAT_FUZZ_SEED={seed:#x} \
             SVCNAT_FUZZ_PACKETS={n} cargo test -p proxy-user --test fuzz); \
             first of each kind, with the packets since the last map check \
             (program, kind, stats reason, input and output in hex):\n",
            w.failed
        );
        for f in &w.failures {
            let _ = writeln!(s, "\n* {}", f.what);
            for p in &f.packets {
                let _ = writeln!(s, "    {p}");
            }
        }
        panic!("{s}\n{report}");
    }
}
