//! Interfaces and node addresses followed by rtnetlink events
//! (`proxy-user/src/linkwatch.rs`): the agents run with the periodic rescan
//! at 10 minutes, so only events can attach a new pod's veth or move node
//! ports to a new node address within the test.

use std::{net::Ipv4Addr, time::Duration};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, Endpoint, Port, node_addr, pod_addr, service_yaml, slice_yaml, url,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 40);
const NODE_PORT: u16 = 30140;
/// A free fabric address (198.18.0.0/24) added to node-a's eth0 by the test.
const EXTRA_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 140);
const WAIT: Duration = Duration::from_secs(30);
/// Shorter than the 1 s first SYN retransmit: a connection that needs a
/// second SYN fails.
const FIRST_SYN: Duration = Duration::from_millis(900);
const CURL_TIME: Duration = Duration::from_secs(5);

/// One node whose agent rescans interfaces only every 600 s, running, with
/// `web` served by nginx in pod b1 (`None`: the test cannot run here).
fn cluster(prefix: &str) -> Option<Cluster> {
    let mut cfg = ClusterConfig::new(BIN, 1).prefix(prefix);
    cfg.agent_args
        .extend(["--attach-interval-ms", "600000"].map(String::from));
    let mut c = Cluster::for_test(cfg, &["nginx", "curl"])?;
    let b1 = c.add_pod(0, "b1", pod_addr(0, 10)).expect("pod");
    c.nginx(&b1).expect("nginx");
    c.write_manifest("web.yaml", &web(&b1)).expect("manifest");
    c.start_agents().expect("agents");
    Some(c)
}

fn web(backend: &svcnat_testkit::cluster::Host) -> String {
    let port = [Port::tcp("http", 80, 80).node_port(NODE_PORT)];
    format!(
        "{}---\n{}",
        service_yaml("demo", "web", VIP, &port, false),
        slice_yaml("demo", "web-1", "web", &port, &[Endpoint::of(backend)])
    )
}

/// A pod created while the agent runs reaches a ClusterIP on its very
/// first connection attempt: its veth was attached on the link event.
#[test]
fn a_new_pod_reaches_a_cluster_ip_on_its_first_syn() {
    let Some(mut c) = cluster("at") else {
        return;
    };
    c.wait_frontends("web on node-a", WAIT, |_, fs| {
        fs.iter().any(|f| f.vip == std::net::IpAddr::from(VIP))
    })
    .expect("first sync");
    for i in 0..3u8 {
        let name = format!("late{i}");
        let pod = c.add_pod(0, &name, pod_addr(0, 100 + i)).expect("pod");
        let o = pod.curl(&url(VIP, 80), FIRST_SYN).expect("curl");
        assert!(
            o.ok(),
            "{name}: first connection to the ClusterIP failed (veth not attached by the link event?): {o:?}"
        );
        assert_eq!(o.body, "b1", "{name}");
    }
}

/// An address added to the node interface serves the node port at once;
/// removed, it no longer does.
#[test]
fn node_ports_follow_node_address_events() {
    let Some(c) = cluster("ad") else {
        return;
    };
    let on = |addr: Ipv4Addr| {
        move |_: usize, fs: &[svcnat_testkit::cluster::Frontend]| {
            fs.iter()
                .any(|f| f.vip == std::net::IpAddr::from(addr) && f.port == NODE_PORT)
        }
    };
    c.wait_frontends("node port on node-a's address", WAIT, on(node_addr(0)))
        .expect("first sync");
    let outside = c.outside().expect("outside client").clone();
    let extra = format!("http://{EXTRA_ADDR}:{NODE_PORT}/");

    c.node_ns(0)
        .ip(&["addr", "add", &format!("{EXTRA_ADDR}/24"), "dev", "eth0"])
        .expect("add address");
    c.wait_frontends("node port on the added address", WAIT, on(EXTRA_ADDR))
        .expect("node port on the new address");
    let o = outside.curl(&extra, CURL_TIME).expect("curl");
    assert!(o.ok(), "node port on the added address: {o:?}");
    assert_eq!(o.body, "b1");

    c.node_ns(0)
        .ip(&["addr", "del", &format!("{EXTRA_ADDR}/24"), "dev", "eth0"])
        .expect("remove address");
    c.wait_frontends("no node port on the removed address", WAIT, |n, fs| {
        !on(EXTRA_ADDR)(n, fs)
    })
    .expect("node port gone from the removed address");
    let o = outside.curl(&extra, Duration::from_secs(1)).expect("curl");
    assert!(!o.ok(), "the removed address still answers: {o:?}");
}
