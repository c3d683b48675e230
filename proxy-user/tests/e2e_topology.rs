//! End to end: what current Kubernetes asks of a Service proxy beyond the
//! basics, in the multi-node harness, from Node objects in the manifests.
//!
//! - Topology-aware routing as kube-proxy's `CategorizeEndpoints`
//!   (pkg/proxy/topology.go) applies it, and as Kubernetes' e2e tests
//!   check it (test/e2e/network/traffic_distribution.go: "should route
//!   traffic to an endpoint in the same zone when using
//!   PreferSameZone/PreferClose", "... same node ... PreferSameNode", and
//!   the fallback when hints are missing): each node's pods stay in their
//!   zone, or on their node; incomplete hints mean every endpoint; a node
//!   relabelled into another zone follows its new zone.
//! - The `service.kubernetes.io/headless` label hides a Service, as
//!   kube-proxy's informer label selector does.
//! - Node draining (KEP-3836): a Node tainted `ToBeDeletedByClusterAutoscaler`
//!   fails `/healthz` (not `/livez`) on that node only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, Endpoint, Host, Port, Proto, node_name, node_yaml, pod_addr,
    service_with_slice, url,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const NS: &str = "demo";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
const WAIT: Duration = Duration::from_secs(30);
const CURL_TIME: Duration = Duration::from_secs(5);

fn cluster(prefix: &str, programs: &[&str]) -> Option<Cluster> {
    Cluster::for_test(ClusterConfig::new(BIN, 2).prefix(prefix), programs)
}

/// The Nodes: node-a in `zones[0]`, node-b in `zones[1]`; `taints` on
/// node-a.
fn write_nodes(c: &Cluster, zones: [&str; 2], taints: &[&str]) {
    let text = format!(
        "{}---\n{}",
        node_yaml(&node_name(0), Some(zones[0]), taints),
        node_yaml(&node_name(1), Some(zones[1]), &[])
    );
    c.write_manifest("nodes.yaml", &text).expect("nodes");
}

fn write_web(c: &Cluster, eps: &[Endpoint]) {
    c.write_manifest(
        "web.yaml",
        &service_with_slice(NS, "web", VIP, &[Port::tcp("http", 80, 80)], eps),
    )
    .expect("web");
}

/// Waits until node `i`'s frontend holds the backends of `want[i]`.
fn wait_per_node(c: &Cluster, want: [&[&Host]; 2], what: &str) {
    let sets: Vec<BTreeSet<String>> = want
        .iter()
        .map(|pods| {
            pods.iter()
                .map(|p| SocketAddr::new(p.addr.into(), 80).to_string())
                .collect()
        })
        .collect();
    c.wait_frontends(what, WAIT, |node, fs| {
        fs.iter()
            .find(|f| f.vip == VIP && f.port == 80 && f.protocol == Proto::Tcp.inspect())
            .is_some_and(|f| f.backend_set() == sets[node])
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// `n` requests from `client` through the cluster IP: answers by backend.
fn spread(client: &Host, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in client.curl_many(&url(VIP, 80), n, CURL_TIME).expect("curl") {
        assert!(o.ok(), "from {}: {o:?}", client.name);
        *counts.entry(o.body).or_default() += 1;
    }
    counts
}

fn only(name: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(name.to_string(), n)])
}

#[test]
fn clients_follow_topology_hints_and_every_endpoint_serves_without_them() {
    let Some(mut c) = cluster("tz", &["nginx", "curl"]) else {
        return;
    };
    let a1 = c.add_pod(0, "a1", pod_addr(0, 10)).expect("pod");
    let b1 = c.add_pod(1, "b1", pod_addr(1, 10)).expect("pod");
    for p in [&a1, &b1] {
        c.nginx(p).expect("nginx");
    }
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    let clients = [&ca, &cb];
    let (node_a, node_b) = (node_name(0), node_name(1));

    // PreferSameZone: each endpoint hinted for its own node's zone.
    write_nodes(&c, ["zone-a", "zone-b"], &[]);
    let zonal = [
        Endpoint::of(&a1).for_zone("zone-a"),
        Endpoint::of(&b1).for_zone("zone-b"),
    ];
    write_web(&c, &zonal);
    c.start_agents().expect("agents");
    wait_per_node(&c, [&[&a1], &[&b1]], "each node's own zone");
    assert_eq!(
        spread(clients[0], 20),
        only("a1", 20),
        "zone-a stays in zone-a"
    );
    assert_eq!(
        spread(clients[1], 20),
        only("b1", 20),
        "zone-b stays in zone-b"
    );

    // One endpoint without a hint: the hints are ignored everywhere.
    write_web(
        &c,
        &[Endpoint::of(&a1).for_zone("zone-a"), Endpoint::of(&b1)],
    );
    wait_per_node(&c, [&[&a1, &b1], &[&a1, &b1]], "incomplete hints");
    for client in clients {
        let got: BTreeSet<String> = spread(client, 30).into_keys().collect();
        assert_eq!(
            got,
            BTreeSet::from(["a1".to_string(), "b1".to_string()]),
            "from {}",
            client.name
        );
    }

    // PreferSameNode: node hints on every endpoint win over zone hints.
    write_web(
        &c,
        &[
            Endpoint::of(&a1).for_zone("zone-a").for_node(&node_a),
            Endpoint::of(&b1).for_zone("zone-a").for_node(&node_b),
        ],
    );
    wait_per_node(&c, [&[&a1], &[&b1]], "each node's own endpoint");
    assert_eq!(spread(clients[0], 20), only("a1", 20));
    assert_eq!(spread(clients[1], 20), only("b1", 20));

    // node-b moves to zone-a: the Node's label reaches its agent, whose
    // pods now get zone-a's endpoint.
    write_web(&c, &zonal);
    write_nodes(&c, ["zone-a", "zone-a"], &[]);
    wait_per_node(&c, [&[&a1], &[&a1]], "node-b relabelled into zone-a");
    assert_eq!(
        spread(clients[1], 20),
        only("a1", 20),
        "node-b follows zone-a"
    );

    // A zone no endpoint is hinted for: every endpoint.
    write_nodes(&c, ["zone-a", "zone-c"], &[]);
    wait_per_node(&c, [&[&a1], &[&a1, &b1]], "node-b in an unhinted zone");
}

#[test]
fn the_headless_label_hides_a_service_and_a_draining_node_fails_healthz() {
    let Some(mut c) = cluster("th", &["nginx", "curl"]) else {
        return;
    };
    let a1 = c.add_pod(0, "a1", pod_addr(0, 10)).expect("pod");
    c.nginx(&a1).expect("nginx");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    write_nodes(&c, ["zone-a", "zone-b"], &[]);
    let web = service_with_slice(
        NS,
        "web",
        VIP,
        &[Port::tcp("http", 80, 80)],
        &[Endpoint::of(&a1)],
    );
    let labelled = web.replacen(
        "metadata:\n",
        "metadata:\n  labels: {service.kubernetes.io/headless: \"\"}\n",
        1,
    );
    assert_ne!(labelled, web, "the label went in");
    c.write_manifest("web.yaml", &labelled).expect("web");
    c.start_agents().expect("agents");
    for node in 0..2 {
        c.wait_agent_ready(node, WAIT).expect("ready");
    }
    c.wait_backends(VIP, 80, Proto::Tcp, None, WAIT)
        .expect("no datapath for a service labelled headless");
    let o = ca.curl(&url(VIP, 80), CURL_TIME).expect("curl");
    assert!(!o.ok(), "a hidden service answered: {o:?}");

    // The label removed: programmed, answering.
    c.write_manifest("web.yaml", &web).expect("web");
    let want = [std::net::SocketAddrV4::new(a1.addr, 80)];
    c.wait_backends(VIP, 80, Proto::Tcp, Some(&want), WAIT)
        .expect("programmed once the label is gone");
    assert_eq!(spread(&ca, 5), only("a1", 5));

    // node-a tainted for deletion by the autoscaler: its /healthz fails
    // (load balancers drain it), its /livez does not, node-b is unmoved;
    // the Services keep working meanwhile.
    for node in 0..2 {
        assert_eq!(c.agent_health(node, "/healthz").expect("healthz").0, 200);
    }
    write_nodes(
        &c,
        ["zone-a", "zone-b"],
        &["ToBeDeletedByClusterAutoscaler"],
    );
    let start = std::time::Instant::now();
    let body = loop {
        let (code, body) = c.agent_health(0, "/healthz").expect("healthz");
        if code == 503 {
            break body;
        }
        assert!(
            start.elapsed() < WAIT,
            "node-a's /healthz stayed {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("\"nodeEligible\": false"), "{body}");
    assert_eq!(c.agent_health(0, "/livez").expect("livez").0, 200);
    assert_eq!(c.agent_health(1, "/healthz").expect("healthz").0, 200);
    assert_eq!(spread(&ca, 5), only("a1", 5));
    write_nodes(&c, ["zone-a", "zone-b"], &[]);
    let start = std::time::Instant::now();
    while c.agent_health(0, "/healthz").expect("healthz").0 != 200 {
        assert!(
            start.elapsed() < WAIT,
            "node-a's /healthz did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
