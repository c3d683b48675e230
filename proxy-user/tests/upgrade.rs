//! Upgrading over pinned maps of an earlier layout without dropping flows.
//!
//! `tests/data/proxy-ebpf-layout-v1.o` is the datapath object of layout 1,
//! built from commit 3c24c40 with `cargo xtask build-ebpf --release` and
//! `llvm-strip --strip-debug` (BTF kept). The test loads it with its maps
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
    path::{Path, PathBuf},
};

use proxy_common::{
    BACKEND_FLAG_LOCAL, IPPROTO_TCP, Reason, SCOPE_EXTERNAL, SVC_FLAG_EXTERNAL, SVC_FLAG_NODE_PORT,
};
use svcnat::{
    dataplane::{Dataplane, DataplaneConfig, MapSizes, cleanup},
    netns::unique_tag,
    testing::{
        datapath::{TEST_MAP_SIZES, TEST_RUN_IFINDEX, TcProgram, TestDatapath, skip_reason},
        packet::{PacketBuilder, TCP_ACK, TCP_SYN, parse},
    },
};

const V1_OBJECT: &[u8] = include_bytes!("data/proxy-ebpf-layout-v1.o");

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
const TC_ACT_OK: u32 = 0;

struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/svcnat-upgrade-{}",
            unique_tag()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = cleanup(&self.0);
    }
}

fn ends(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let p = parse(frame).expect("parse");
    let ip = p.ip().expect("ip");
    (
        ip.source().expect("source"),
        ip.destination().expect("destination"),
    )
}

/// The layout-1 datapath on `dir`, with a node port to a remote backend and
/// a cluster IP to a local one, as the layout-1 agent would have left it.
fn old_datapath(dir: &Path) -> TestDatapath {
    std::fs::create_dir_all(dir).expect("pin folder");
    let mut dp = TestDatapath::load_object(V1_OBJECT, TEST_MAP_SIZES, Some(dir))
        .expect("load the layout-1 object");
    std::fs::create_dir(dir.join("layout-v1")).expect("mark layout 1");
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

/// Flows created by the layout-1 programs: returns the SNAT port of the
/// node-port flow.
fn old_flows(old: &TestDatapath) -> u16 {
    let syn = PacketBuilder::tcp(CLIENT, NP_REMOTE).flags(TCP_SYN).build();
    let out = old.run(TcProgram::NodeXdp, &syn).expect("run layout-1 XDP");
    assert_eq!(out.retval, XDP_PASS);
    let (src, dst) = ends(&out.data_out);
    assert_eq!(dst, R1, "layout 1 sends the flow to the remote backend");
    assert_eq!(*src.ip(), NODE, "layout 1 SNATs to the node");
    let pod_syn = PacketBuilder::tcp(POD, CLUSTER_IP).flags(TCP_SYN).build();
    let out = old
        .run(TcProgram::PodIngress, &pod_syn)
        .expect("run layout-1 TC");
    assert_eq!(ends(&out.data_out).1, L1);
    src.port()
}

/// What the current programs make of the next packets of those flows:
/// (client's next packet leaves from the same SNAT port, the backend's
/// reply reaches the client from the node port, the pod's reply comes from
/// the cluster IP).
fn new_programs_on(dir: &Path, snat_port: u16) -> (bool, bool, bool) {
    let new = TestDatapath::load_object(svcnat::EBPF_OBJECT, TEST_MAP_SIZES, Some(dir))
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
    let pod = out.retval == TC_ACT_OK && ends(&out.data_out) == (CLUSTER_IP, POD);
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

#[test]
fn flows_of_layout_1_survive_the_upgrade() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = PinDir::new();
    let old = old_datapath(&dir.0);
    let snat_port = old_flows(&old);

    let cfg = DataplaneConfig {
        bpffs: dir.0.clone(),
        sizes: MapSizes::default(),
    };
    let mut dp = Dataplane::open(&cfg).expect("open migrates the layout-1 folder");
    // The agent attaches here (its programs replace the old ones in the
    // pinned links), then finishes.
    let report = dp.finish_migration().expect("finish the migration");
    let report = report.expect("a migration was pending");
    assert_eq!(report.rekeyed, 1, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(layouts(&dir.0), vec!["layout-v2".to_string()]);
    assert_eq!(dp.finish_migration().expect("nothing left"), None);
    drop(old);

    let (same_port, back, pod) = new_programs_on(&dir.0, snat_port);
    assert!(same_port, "the client's next packet keeps its SNAT port");
    assert!(back, "the remote backend's reply goes back to the client");
    assert!(pod, "the pod flow's reply is reverse-NATed");

    // A second agent on the migrated folder migrates nothing.
    drop(dp);
    let mut again = Dataplane::open(&cfg).expect("reopen");
    assert_eq!(again.finish_migration().expect("nothing pending"), None);
}

#[test]
fn without_the_migration_the_snat_flow_would_break() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = PinDir::new();
    let old = old_datapath(&dir.0);
    let snat_port = old_flows(&old);
    let (same_port, back, pod) = new_programs_on(&dir.0, snat_port);
    assert!(!same_port, "unmigrated, the flow gets another port");
    assert!(!back, "unmigrated, the reply is not translated");
    assert!(pod, "pod flows need no migration");
}
