//! Service CIDRs against the real kernel: the agent's tries
//! (`SVCNAT_SVCCIDR4`, `SVCNAT_SVCCIDR6`), and what the pod ingress program
//! does with them, run through `BPF_PROG_TEST_RUN` on the dataplane's own
//! loaded programs: a pod's packet to an address inside a service CIDR
//! that no Service holds is dropped and counted
//! (`drop_unallocated_service_ip`), as kube-proxy's nftables mode drops
//! "traffic to unallocated ClusterIPs"; an address outside passes as
//! before; an unknown port of a live cluster IP is still rejected, and a
//! live frontend still translated. Then the sync pass: the ServiceCIDR
//! objects' CIDRs, else `--service-cidr`, else none.
//!
//! Needs root and the eBPF object; without them the tests print why and
//! pass.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::Arc,
};

use aya::maps::lpm_trie::{Key, LpmTrie};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use proxy_common::{Reason, ServiceCidr4, program_names};
use svcnat::{
    dataplane::{
        BackendSpec, Dataplane, DataplaneError, Frontend, MapSizes, ServiceCidr, ServiceOpts,
        open_pinned, program_fd,
    },
    model::NodeInfo,
    sources::{Kind, Object, SourceEvent},
    sync::{SyncStats, Syncer},
};
use svcnat_testkit::pins::PinDir;
use svcnat_testkit::{
    datapath::{TC_ACT_SHOT, TCX_NEXT},
    packet::{PacketBuilder, TCP_SYN, parse},
    prog_run::test_run,
    skip::Needs,
    skip_unless,
};

/// Small maps: these tests hold a few frontends.
const SIZES: MapSizes = MapSizes {
    services: 64,
    slots: 64,
    backends: 16,
    revnat: 64,
    conntrack: 1024,
    fragments: 64,
    snat: 64,
    node_addresses: 16,
    affinity: 64,
    source_ranges: 64,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn cidr(s: &str) -> ServiceCidr {
    svcnat::model::parse_service_cidr(s).expect("a CIDR")
}

fn cidrs(list: &[&str]) -> BTreeSet<ServiceCidr> {
    list.iter().map(|s| cidr(s)).collect()
}

/// The service CIDRs of the tests, one per family.
const CIDR4: &str = "198.19.0.0/16";
const CIDR6: &str = "2001:db8:1::/112";

/// A live TCP frontend of each family and its one backend.
fn live() -> [(Frontend, BackendSpec); 2] {
    [
        (
            Frontend {
                addr: ip("198.19.0.10"),
                port: 80,
                proto: 6,
            },
            BackendSpec {
                addr: ip("198.18.1.1"),
                port: 8080,
                flags: 0,
            },
        ),
        (
            Frontend {
                addr: ip("2001:db8:1::10"),
                port: 80,
                proto: 6,
            },
            BackendSpec {
                addr: ip("2001:db8:2::1"),
                port: 8080,
                flags: 0,
            },
        ),
    ]
}

fn with_live_frontends(dp: &mut Dataplane) {
    let opts = ServiceOpts {
        affinity_timeout: 0,
        label: "demo/web:http".into(),
    };
    for (fe, be) in live() {
        dp.upsert_service(fe, &[be], &opts).expect("upsert");
    }
}

/// Packets a pod sends in the tests, to `to` (the address's family).
#[derive(Clone, Copy, Debug)]
enum Send {
    Syn(u16),
    Udp(u16),
    Ping,
}

fn frame(to: IpAddr, what: Send) -> Vec<u8> {
    match (to, what) {
        (IpAddr::V4(d), Send::Syn(port)) => {
            let s = Ipv4Addr::new(198, 18, 10, 50);
            PacketBuilder::tcp(SocketAddrV4::new(s, 41000), SocketAddrV4::new(d, port))
                .flags(TCP_SYN)
                .build()
        }
        (IpAddr::V4(d), Send::Udp(port)) => {
            let s = Ipv4Addr::new(198, 18, 10, 50);
            PacketBuilder::udp(SocketAddrV4::new(s, 41000), SocketAddrV4::new(d, port))
                .payload(b"q")
                .build()
        }
        (IpAddr::V4(d), Send::Ping) => {
            PacketBuilder::icmp_echo_request(Ipv4Addr::new(198, 18, 10, 50), d, 7, 1).build()
        }
        (IpAddr::V6(d), Send::Syn(port)) => {
            let s: Ipv6Addr = "2001:db8:10::50".parse().expect("address");
            PacketBuilder::tcp(
                SocketAddrV6::new(s, 41000, 0, 0),
                SocketAddrV6::new(d, port, 0, 0),
            )
            .flags(TCP_SYN)
            .build()
        }
        (IpAddr::V6(d), Send::Udp(port)) => {
            let s: Ipv6Addr = "2001:db8:10::50".parse().expect("address");
            PacketBuilder::udp(
                SocketAddrV6::new(s, 41000, 0, 0),
                SocketAddrV6::new(d, port, 0, 0),
            )
            .payload(b"q")
            .build()
        }
        (IpAddr::V6(d), Send::Ping) => {
            let s: Ipv6Addr = "2001:db8:10::50".parse().expect("address");
            PacketBuilder::icmp_echo_request(s, d, 7, 1).build()
        }
    }
}

/// The packets one reason counted so far.
fn counted(dp: &Dataplane, reason: Reason) -> u64 {
    dp.stats()
        .expect("stats")
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, v)| v.packets)
}

/// Runs the pod ingress program on `frame`: its verdict, the reason it
/// counted the packet under (the one counter that moved) and the
/// destination of the packet it let out.
fn from_pod(dp: &Dataplane, frame: &[u8]) -> (u32, Reason, Option<SocketAddr>) {
    let before: Vec<u64> = Reason::ALL.iter().map(|r| counted(dp, *r)).collect();
    let fd = program_fd(dp.ebpf(), program_names::TC_POD_INGRESS).expect("the pod program");
    let out = test_run(fd, frame, 1).expect("test run");
    let moved: Vec<Reason> = Reason::ALL
        .iter()
        .zip(before)
        .filter(|(r, b)| counted(dp, **r) != *b)
        .map(|(r, _)| *r)
        .collect();
    assert_eq!(moved.len(), 1, "one packet, one reason: {moved:?}");
    let p = parse(&out.data_out).expect("the output frame");
    let dst = match (&p.ipv4, &p.ipv6) {
        (Some(v4), _) => v4.destination().ok().map(SocketAddr::V4),
        (_, Some(v6)) => v6.destination().ok().map(SocketAddr::V6),
        _ => None,
    };
    (out.retval, moved[0], dst)
}

#[test]
fn unallocated_addresses_of_a_service_cidr_are_dropped_and_counted_in_both_families() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("cidr");
    let mut dp = dir.open(SIZES);
    with_live_frontends(&mut dp);
    let unallocated = [ip("198.19.0.99"), ip("2001:db8:1::99")];
    let outside = [ip("198.18.5.5"), ip("2001:db8:5::5")];

    // Without service CIDRs (today's behaviour): an unallocated address
    // is no service, the packet goes wherever the routes send it.
    for to in unallocated {
        let (verdict, reason, _) = from_pod(&dp, &frame(to, Send::Syn(80)));
        assert_eq!(
            (verdict, reason),
            (TCX_NEXT, Reason::PassNotService),
            "{to}"
        );
    }

    assert_eq!(
        dp.set_service_cidrs(&cidrs(&[CIDR4, CIDR6])).expect("set"),
        2
    );
    for to in unallocated {
        for what in [Send::Syn(80), Send::Syn(443), Send::Udp(53), Send::Ping] {
            let (verdict, reason, _) = from_pod(&dp, &frame(to, what));
            assert_eq!(
                (verdict, reason),
                (TC_ACT_SHOT, Reason::DropUnallocatedServiceIp),
                "{what:?} to {to}"
            );
        }
    }
    for to in outside {
        for what in [Send::Syn(80), Send::Ping] {
            let (verdict, reason, _) = from_pod(&dp, &frame(to, what));
            assert_eq!(
                (verdict, reason),
                (TCX_NEXT, Reason::PassNotService),
                "{what:?} to {to}"
            );
        }
    }
    for (fe, be) in live() {
        // A live cluster IP's unknown port: rejected as before (RST).
        let (_, reason, _) = from_pod(&dp, &frame(fe.addr, Send::Syn(81)));
        assert_eq!(reason, Reason::RejectUnknownPort, "{}", fe.addr);
        // A live frontend: translated.
        let (verdict, reason, dst) = from_pod(&dp, &frame(fe.addr, Send::Syn(fe.port)));
        assert_eq!(
            (verdict, reason),
            (TCX_NEXT, Reason::DnatNew),
            "{}",
            fe.addr
        );
        assert_eq!(dst, Some(SocketAddr::new(be.addr, be.port)), "{}", fe.addr);
    }

    // The drops are in the stats `svcnat inspect stats` and the metrics read.
    assert_eq!(counted(&dp, Reason::DropUnallocatedServiceIp), 8);
    let shown = svcnat::inspect::render(
        &dir.0,
        svcnat::inspect::What::Stats,
        &svcnat::inspect::View::default(),
    )
    .expect("inspect stats");
    assert!(
        shown
            .lines()
            .any(|l| l.contains("drop_unallocated_service_ip") && l.contains('8')),
        "{shown}"
    );

    // Cleared again: today's behaviour back.
    assert_eq!(dp.set_service_cidrs(&BTreeSet::new()).expect("clear"), 2);
    for to in unallocated {
        let (verdict, reason, _) = from_pod(&dp, &frame(to, Send::Syn(80)));
        assert_eq!(
            (verdict, reason),
            (TCX_NEXT, Reason::PassNotService),
            "{to}"
        );
    }
}

#[test]
fn service_cidrs_are_written_once_repaired_and_adopted() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("cidr");
    let mut dp = dir.open(SIZES);
    let want = cidrs(&[CIDR4, CIDR6, "198.18.128.0/20"]);
    assert_eq!(dp.set_service_cidrs(&want).expect("set"), 3);
    assert_eq!(dp.set_service_cidrs(&want).expect("again"), 0, "idempotent");
    assert_eq!(dp.service_cidrs().expect("read"), want);
    // Host bits are cleared; one CIDR replaced by another changes two keys.
    let host_bits = [(ip("198.19.7.7"), 16), cidr(CIDR6), cidr("198.18.144.0/20")].into();
    assert_eq!(dp.set_service_cidrs(&host_bits).expect("replace"), 2);
    let want = cidrs(&[CIDR4, CIDR6, "198.18.144.0/20"]);
    assert_eq!(dp.service_cidrs().expect("read"), want);

    // An entry deleted by hand, a stray one added: repair undoes both.
    let mut trie: LpmTrie<_, ServiceCidr4, u32> =
        LpmTrie::try_from(open_pinned(&dir.0, "SVCNAT_SVCCIDR4").expect("pin")).expect("trie");
    trie.remove(&Key::new(
        16,
        ServiceCidr4 {
            addr: [198, 19, 0, 0],
        },
    ))
    .expect("remove by hand");
    trie.insert(
        &Key::new(
            8,
            ServiceCidr4 {
                addr: [10, 0, 0, 0],
            },
        ),
        1,
        0,
    )
    .expect("insert by hand");
    assert_eq!(dp.repair().expect("repair"), 2);
    assert_eq!(dp.service_cidrs().expect("read"), want);
    assert_eq!(dp.repair().expect("repair"), 0);

    // A new agent adopts them (a restart changes nothing on the wire).
    drop(dp);
    let mut dp = dir.open(SIZES);
    assert_eq!(dp.service_cidrs().expect("read"), want);
    assert_eq!(dp.repair().expect("repair"), 0);

    // More than a trie holds: refused before anything is written.
    let many: BTreeSet<ServiceCidr> = (0..=proxy_common::SERVICE_CIDRS_MAX)
        .map(|i| (IpAddr::from(Ipv4Addr::from(0xC612_0000 + (i << 8))), 24))
        .collect();
    assert!(matches!(
        dp.set_service_cidrs(&many),
        Err(DataplaneError::MapFull { .. })
    ));
    assert_eq!(dp.service_cidrs().expect("read"), want);
}

fn service_cidr(name: &str, list: &[&str]) -> SourceEvent {
    let c: ServiceCIDR = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"cidrs": list},
    }))
    .expect("a ServiceCIDR");
    SourceEvent::Apply(Object::ServiceCidr(Box::new(c)))
}

fn resync(kind: Kind) -> SourceEvent {
    SourceEvent::Resync {
        kind,
        objects: vec![],
    }
}

#[test]
fn a_pass_writes_the_objects_cidrs_else_the_configured_ones() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("cidr");
    let mut dp = dir.open(SIZES);
    let node = NodeInfo {
        zone: None,
        name: "node-a".into(),
        addresses: vec![],
    };
    let stats = Arc::new(SyncStats::default());
    let flag = vec![cidr(CIDR4)];
    let mut syncer = Syncer::new(node, Arc::clone(&stats)).with_service_cidrs(flag.clone());
    for kind in [Kind::Node, Kind::Service, Kind::EndpointSlice] {
        syncer.handle(resync(kind));
    }
    assert!(!syncer.ready(), "the ServiceCIDRs are listed before a pass");
    syncer.handle(resync(Kind::ServiceCidr));
    assert!(syncer.ready() && syncer.has_work());
    syncer.pass(&mut dp);
    assert_eq!(
        dp.service_cidrs().expect("read"),
        cidrs(&[CIDR4]),
        "the flag"
    );
    assert!(!syncer.has_work());

    // ServiceCIDR objects replace the flag; a bad entry is left out and
    // counted.
    syncer.handle(service_cidr("kubernetes", &["198.18.128.0/20", CIDR6]));
    syncer.handle(service_cidr("extra", &["198.18.200.1/24"]));
    assert!(syncer.has_work());
    syncer.pass(&mut dp);
    assert_eq!(
        dp.service_cidrs().expect("read"),
        cidrs(&["198.18.128.0/20", CIDR6])
    );
    assert_eq!(stats.skipped.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The same object again changes nothing.
    syncer.handle(service_cidr("extra", &["198.18.200.1/24"]));
    assert!(!syncer.has_work());

    // Deleted: the flag again. A relist without an object drops it too.
    syncer.handle(SourceEvent::Delete {
        kind: Kind::ServiceCidr,
        namespace: String::new(),
        name: "kubernetes".into(),
    });
    syncer.pass(&mut dp);
    assert_eq!(dp.service_cidrs().expect("read"), cidrs(&[CIDR4]));
    syncer.handle(service_cidr("kubernetes", &[CIDR6]));
    syncer.pass(&mut dp);
    assert_eq!(dp.service_cidrs().expect("read"), cidrs(&[CIDR6]));
    syncer.handle(resync(Kind::ServiceCidr));
    syncer.pass(&mut dp);
    assert_eq!(dp.service_cidrs().expect("read"), cidrs(&[CIDR4]));

    // Neither objects nor a flag: none (and a restarted agent's first pass
    // clears what an earlier one left).
    let mut fresh = Syncer::new(
        NodeInfo {
            zone: None,
            name: "node-a".into(),
            addresses: vec![],
        },
        stats,
    );
    for kind in [
        Kind::Node,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ServiceCidr,
    ] {
        fresh.handle(resync(kind));
    }
    fresh.pass(&mut dp);
    assert!(dp.service_cidrs().expect("read").is_empty());
}

/// A pin folder of layout 4 from before the service-CIDR tries (an agent
/// of the previous release) gets them created empty: no layout bump, the
/// other maps adopted as they are.
#[test]
fn a_layout_4_folder_without_the_tries_gets_them_created_empty() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("cidr");
    let mut dp = dir.open(SIZES);
    with_live_frontends(&mut dp);
    dp.set_service_cidrs(&cidrs(&[CIDR4, CIDR6])).expect("set");
    drop(dp);
    for name in ["SVCNAT_SVCCIDR4", "SVCNAT_SVCCIDR6"] {
        std::fs::remove_file(dir.0.join(name)).expect("unpin");
    }
    let dp = dir.open(SIZES);
    assert!(dp.service_cidrs().expect("read").is_empty());
    assert_eq!(dp.services().len(), 2, "the frontends adopted");
    let (verdict, reason, _) = from_pod(&dp, &frame(ip("198.19.0.99"), Send::Syn(80)));
    assert_eq!((verdict, reason), (TCX_NEXT, Reason::PassNotService));
}
