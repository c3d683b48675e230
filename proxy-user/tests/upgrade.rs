//! Upgrading over pinned maps of an earlier layout without dropping flows.
//!
//! `tests/data/proxy-ebpf-layout-v1.o` is the datapath object of layout 1,
//! built from commit 3c24c40 with `cargo xtask build-ebpf --release` and
//! `llvm-strip --strip-debug` (BTF kept); `proxy-ebpf-layout-v2.o` that of
//! layout 2, built the same way from commit da39c8b, and
//! `proxy-ebpf-layout-v3.o` that of layout 3 (IPv4 only, no IPv6 maps),
//! from commit f58dc32. The test loads it with its maps
//! pinned the way the agent pins them, lets it create real flows through
//! `BPF_PROG_TEST_RUN` (a node-port flow SNATed to a remote backend, a pod
//! flow to a cluster IP), then opens the current dataplane on that folder,
//! which migrates, and runs the current programs on the next packets of
//! those flows. A control case skips the migration and shows that the
//! flows would break without it.
//!
//! Needs root and the eBPF object; without them the tests print why and pass.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use proxy_common::{
    BACKEND_FLAG_LOCAL, CtValue, IPPROTO_TCP, Reason, SCOPE_EXTERNAL, SVC_FLAG_EXTERNAL,
    SVC_FLAG_NODE_PORT,
};
use svcnat::dataplane::{Dataplane, DataplaneConfig, MapSizes, migrate::CtValueV2};
use svcnat_testkit::pins::PinDir;
use svcnat_testkit::{
    datapath::{Map6Error, TEST_RUN_IFINDEX, TcProgram, TestDatapath, test_map_sizes},
    packet::{PacketBuilder, TCP_ACK, TCP_SYN, parse},
    skip::Needs,
    skip_unless,
};

const V1_OBJECT: &[u8] = include_bytes!("data/proxy-ebpf-layout-v1.o");
const V2_OBJECT: &[u8] = include_bytes!("data/proxy-ebpf-layout-v2.o");
const V3_OBJECT: &[u8] = include_bytes!("data/proxy-ebpf-layout-v3.o");

const fn sa(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const CLIENT: SocketAddrV4 = sa(198, 18, 200, 5, 40000);
const NP_REMOTE: SocketAddrV4 = SocketAddrV4::new(NODE, 30081);
const R1: SocketAddrV4 = sa(198, 18, 20, 21, 8080);
const POD: SocketAddrV4 = sa(198, 18, 10, 50, 41000);
const CLUSTER_IP: SocketAddrV4 = sa(198, 19, 0, 1, 80);
const L1: SocketAddrV4 = sa(198, 18, 10, 11, 8080);

const XDP_PASS: u32 = 2;
const TCX_NEXT: u32 = u32::MAX;

fn ends(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let p = parse(frame).expect("parse");
    let ip = p.ip().expect("ip");
    (
        ip.source().expect("source"),
        ip.destination().expect("destination"),
    )
}

/// The datapath of layout `v` (1, 2 or 3; `C` its conntrack value) on
/// `dir`, with a node port to a remote backend and a cluster IP to a local
/// one, as that layout's agent would have left it.
fn old_datapath<C: aya::Pod>(dir: &Path, v: u32) -> TestDatapath<C> {
    std::fs::create_dir_all(dir).expect("pin folder");
    let object = match v {
        1 => V1_OBJECT,
        2 => V2_OBJECT,
        3 => V3_OBJECT,
        _ => panic!("no object of layout {v}"),
    };
    let mut dp = TestDatapath::load_object(object, &test_map_sizes(), Some(dir))
        .unwrap_or_else(|e| panic!("load the layout-{v} object: {e}"));
    std::fs::create_dir(dir.join(format!("layout-v{v}"))).expect("mark the layout");
    dp.set_node_address(TEST_RUN_IFINDEX, NODE)
        .expect("node address");
    dp.add_frontend(
        NP_REMOTE,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        2,
        SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT,
        0,
        &[(21, R1, 0)],
    )
    .expect("node port");
    dp.add_frontend(
        CLUSTER_IP,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        8,
        0,
        0,
        &[(11, L1, BACKEND_FLAG_LOCAL)],
    )
    .expect("cluster ip");
    dp
}

/// Flows created by the old programs: returns the SNAT port of the
/// node-port flow.
fn old_flows<C: aya::Pod>(old: &TestDatapath<C>) -> u16 {
    let syn = PacketBuilder::tcp(CLIENT, NP_REMOTE).flags(TCP_SYN).build();
    let out = old.run(TcProgram::NodeXdp, &syn).expect("run the old XDP");
    assert_eq!(out.retval, XDP_PASS);
    let (src, dst) = ends(&out.data_out);
    assert_eq!(
        dst, R1,
        "the old layout sends the flow to the remote backend"
    );
    assert_eq!(*src.ip(), NODE, "the old layout SNATs to the node");
    let pod_syn = PacketBuilder::tcp(POD, CLUSTER_IP).flags(TCP_SYN).build();
    let out = old
        .run(TcProgram::PodIngress, &pod_syn)
        .expect("run the old TC");
    assert_eq!(ends(&out.data_out).1, L1);
    src.port()
}

/// What the current programs make of the next packets of those flows:
/// (client's next packet leaves from the same SNAT port, the backend's
/// reply reaches the client from the node port, the pod's reply comes from
/// the cluster IP).
fn new_programs_on(dir: &Path, snat_port: u16) -> (bool, bool, bool) {
    let new =
        TestDatapath::<CtValue>::load_object(svcnat::EBPF_OBJECT, &test_map_sizes(), Some(dir))
            .expect("load the current object");
    let ack = PacketBuilder::tcp(CLIENT, NP_REMOTE).flags(TCP_ACK).build();
    let out = new.run(TcProgram::NodeXdp, &ack).expect("run XDP");
    let same_port =
        out.retval == XDP_PASS && ends(&out.data_out) == (SocketAddrV4::new(NODE, snat_port), R1);
    let reply = PacketBuilder::tcp(R1, SocketAddrV4::new(NODE, snat_port))
        .flags(TCP_SYN | TCP_ACK)
        .build();
    let before = new.stat(Reason::RevsnatReply).expect("stats").packets;
    let out = new.run(TcProgram::NodeXdp, &reply).expect("run XDP");
    let back = out.retval == XDP_PASS
        && ends(&out.data_out) == (NP_REMOTE, CLIENT)
        && new.stat(Reason::RevsnatReply).expect("stats").packets == before + 1;
    let pod_reply = PacketBuilder::tcp(L1, POD).flags(TCP_SYN | TCP_ACK).build();
    let out = new.run(TcProgram::PodEgress, &pod_reply).expect("run TC");
    let pod = out.retval == TCX_NEXT && ends(&out.data_out) == (CLUSTER_IP, POD);
    (same_port, back, pod)
}

fn layouts(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read pin folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("layout-v"))
        .collect();
    v.sort();
    v
}

/// Opens the current dataplane on the old folder (which migrates), as the
/// agent does, and finishes the migration as the agent does once its
/// programs are attached. Returns the report of the finishing pass.
fn upgrade(dir: &Path) -> svcnat::dataplane::migrate::MigrationReport {
    let cfg = DataplaneConfig {
        bpffs: dir.to_path_buf(),
        sizes: MapSizes::default(),
    };
    let mut dp = Dataplane::open(&cfg).expect("open migrates the old folder");
    let report = dp.finish_migration().expect("finish the migration");
    let report = report.expect("a migration was pending");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(
        layouts(dir),
        vec![format!("layout-v{}", proxy_common::LAYOUT_VERSION)]
    );
    assert!(
        !dir.join(svcnat::dataplane::migrate::OLD_CT4_PIN).exists(),
        "the old conntrack map's pin is gone"
    );
    let snat: aya::maps::HashMap<_, proxy_common::Ct4Key, proxy_common::Snat4Value> =
        aya::maps::HashMap::try_from(
            svcnat::dataplane::open_pinned(dir, proxy_common::map_names::SNAT4).expect("SNAT4"),
        )
        .expect("SNAT4 types");
    let forward = snat
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.dir == proxy_common::CT_DIR_SERVICE)
        .count();
    assert_eq!(forward, 0, "layout 3 keeps no forward SNAT entries");
    assert_eq!(dp.finish_migration().expect("nothing left"), None);
    // A second agent on the migrated folder migrates nothing.
    drop(dp);
    let mut again = Dataplane::open(&cfg).expect("reopen");
    assert_eq!(again.finish_migration().expect("nothing pending"), None);
    report
}

#[test]
fn flows_of_layout_1_survive_the_upgrade() {
    skip_unless!(Needs::prog_run());
    let dir = PinDir::new("upgrade");
    let old = old_datapath::<CtValueV2>(&dir.0, 1);
    let snat_port = old_flows(&old);
    let report = upgrade(&dir.0);
    assert_eq!(report.rekeyed, 1, "{report:?}");
    drop(old);

    let (same_port, back, pod) = new_programs_on(&dir.0, snat_port);
    assert!(same_port, "the client's next packet keeps its SNAT port");
    assert!(back, "the remote backend's reply goes back to the client");
    assert!(pod, "the pod flow's reply is reverse-NATed");
}

#[test]
fn flows_of_layout_2_survive_the_upgrade() {
    skip_unless!(Needs::prog_run());
    let dir = PinDir::new("upgrade");
    let old = old_datapath::<CtValueV2>(&dir.0, 2);
    let snat_port = old_flows(&old);
    // The old programs go on creating flows while the new agent starts: a
    // second pod flow after the first copy.
    let cfg = DataplaneConfig {
        bpffs: dir.0.clone(),
        sizes: MapSizes::default(),
    };
    let mut dp = Dataplane::open(&cfg).expect("open migrates the layout-2 folder");
    let late = SocketAddrV4::new(*POD.ip(), POD.port() + 1);
    let out = old
        .run(
            TcProgram::PodIngress,
            &PacketBuilder::tcp(late, CLUSTER_IP).flags(TCP_SYN).build(),
        )
        .expect("run the old TC");
    assert_eq!(ends(&out.data_out).1, L1);
    let report = dp
        .finish_migration()
        .expect("finish the migration")
        .expect("pending");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.copied, 2, "the late flow's two entries: {report:?}");
    assert_eq!(
        layouts(&dir.0),
        vec![format!("layout-v{}", proxy_common::LAYOUT_VERSION)]
    );
    assert!(!dir.0.join(svcnat::dataplane::migrate::OLD_CT4_PIN).exists());
    drop(dp);
    drop(old);

    let (same_port, back, pod) = new_programs_on(&dir.0, snat_port);
    assert!(same_port, "the client's next packet keeps its SNAT port");
    assert!(back, "the remote backend's reply goes back to the client");
    assert!(pod, "the pod flow's reply is reverse-NATed");
    let new =
        TestDatapath::<CtValue>::load_object(svcnat::EBPF_OBJECT, &test_map_sizes(), Some(&dir.0))
            .expect("load the current object");
    let reply = PacketBuilder::tcp(L1, late)
        .flags(TCP_SYN | TCP_ACK)
        .build();
    let out = new.run(TcProgram::PodEgress, &reply).expect("run TC");
    assert_eq!(
        ends(&out.data_out),
        (CLUSTER_IP, late),
        "the flow the old programs made during the upgrade is reverse-NATed"
    );
}

#[test]
fn without_the_migration_the_new_programs_refuse_the_old_maps() {
    skip_unless!(Needs::prog_run());
    for v in [1, 2] {
        let dir = PinDir::new("upgrade");
        let old = old_datapath::<CtValueV2>(&dir.0, v);
        old_flows(&old);
        // Layout 3's conntrack values are larger: the current object cannot
        // run on the old conntrack map, which is why it is copied.
        let loaded = TestDatapath::<CtValue>::load_object(
            svcnat::EBPF_OBJECT,
            &test_map_sizes(),
            Some(&dir.0),
        );
        assert!(
            loaded.is_err(),
            "layout {v}: the current programs loaded over unmigrated maps"
        );
    }
}

/// Layout 4 adds the IPv6 maps and keeps every IPv4 map as layout 3 had
/// it: the upgrade creates the IPv6 maps empty, copies nothing, and the
/// flows of the layout-3 programs keep their backends (same conntrack and
/// SNAT entries, read by the new programs).
#[test]
fn flows_of_layout_3_survive_the_upgrade() {
    skip_unless!(Needs::prog_run());
    let dir = PinDir::new("upgrade");
    let old = old_datapath::<CtValue>(&dir.0, 3);
    assert!(
        matches!(old.v6(), Err(Map6Error::NoIpv6Maps)),
        "a layout-3 object loads, without IPv6 maps"
    );
    let snat_port = old_flows(&old);
    let added: Vec<&str> = proxy_common::MAPS
        .iter()
        .filter(|m| m.since == 4)
        .map(|m| m.name)
        .collect();
    assert!(
        added.contains(&proxy_common::map_names::SVC6),
        "layout 4 adds the IPv6 maps: {added:?}"
    );
    for name in &added {
        assert!(!dir.0.join(name).exists(), "{name} before the upgrade");
    }
    let ct_keys = |ct: &aya::maps::HashMap<_, proxy_common::Ct4Key, CtValue>| {
        let mut keys: Vec<proxy_common::Ct4Key> =
            ct.keys().map(|k| k.expect("conntrack key")).collect();
        keys.sort();
        keys
    };
    let before = ct_keys(&old.ct4);
    assert_eq!(before.len(), 4, "two flows, two entries each");
    let report = upgrade(&dir.0);
    assert_eq!(
        report,
        svcnat::dataplane::migrate::MigrationReport::default(),
        "nothing to copy or re-key"
    );
    // The old programs' conntrack map is the one the new programs use.
    assert_eq!(ct_keys(&old.ct4), before);
    drop(old);
    for name in &added {
        assert!(dir.0.join(name).exists(), "{name} after the upgrade");
    }
    let maps = svcnat::dataplane::Maps::pinned(&dir.0).expect("every map of layout 4, typed");
    assert_eq!(maps.SVC6.keys().count(), 0, "the IPv6 maps start empty");
    assert_eq!(maps.CT6.keys().count(), 0);
    drop(maps);

    let (same_port, back, pod) = new_programs_on(&dir.0, snat_port);
    assert!(same_port, "the client's next packet keeps its SNAT port");
    assert!(back, "the remote backend's reply goes back to the client");
    assert!(pod, "the pod flow's reply is reverse-NATed");
}
