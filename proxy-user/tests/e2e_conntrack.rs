//! End to end on the cluster on one machine (`svcnat::cluster`): conntrack
//! follows endpoint changes as kube-proxy's cleanup does. A UDP client that
//! keeps sending from one source port is one flow; when its endpoint is
//! replaced, the flow moves to the new endpoint at once instead of staying
//! pinned to the removed one for as long as the client keeps sending.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use svcnat::cluster::{
    Cluster, ClusterConfig, Frontend, Host, Port, Query, node_addr, pod_addr, service_yaml,
    skip_reason, slice_yaml,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const NS: &str = "demo";
/// How long agents may take to show a change (generous: tests run in parallel).
const WAIT: Duration = Duration::from_secs(30);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 53);
const NODE_PORT: u16 = 30053;
/// The client's fixed source port.
const CLIENT_PORT: u16 = 40053;
/// What each dnsmasq answers for `whoami.test`.
const WHO_OLD: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
const WHO_NEW: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);

fn cluster(prefix: &str) -> Option<Cluster> {
    if let Some(why) = skip_reason(&["dnsmasq", "dig"]) {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Cluster::new(ClusterConfig::new(BIN, 2).prefix(prefix)).expect("build the cluster"))
}

/// The EndpointSlice of service `dns` with `backend` as its one endpoint.
fn slice(backend: &Host) -> String {
    slice_yaml(
        NS,
        "dns-1",
        "dns",
        &[Port::udp("dns", 53, 53)],
        &[svcnat::cluster::Endpoint::of(backend)],
    )
}

/// Whether node `node`'s frontends show `frontend`/UDP with exactly `backend`.
fn shows(fs: &[Frontend], frontend: (Ipv4Addr, u16), backend: &Host) -> bool {
    let want: BTreeSet<String> = [format!("{}:53", backend.addr)].into();
    fs.iter().any(|f| {
        f.vip == frontend.0
            && f.port == frontend.1
            && f.protocol == "udp"
            && f.backend_set() == want
    })
}

/// With `manifest(old)` in force, `client` queries `frontend` from one
/// source port every 100 ms; then the manifests replace `old` by `new`.
/// Within 1 s of node `node`'s maps showing the change, `new` answers, and
/// after that `old` never does (it is still running: only conntrack could
/// send the flow there).
fn endpoint_replaced_under_a_udp_flow(
    c: &Cluster,
    client: &Host,
    frontend: (Ipv4Addr, u16),
    node: usize,
    manifest: impl Fn(&Host) -> String,
    old: &Host,
    new: &Host,
) {
    c.dnsmasq(old, &[("whoami.test", WHO_OLD)])
        .expect("dnsmasq");
    c.dnsmasq(new, &[("whoami.test", WHO_NEW)])
        .expect("dnsmasq");
    c.write_manifest("dns.yaml", &manifest(old))
        .expect("manifest");
    c.start_agents().expect("start agents");
    c.wait_frontends("the old endpoint", WAIT, |n, fs| {
        n != node || shows(fs, frontend, old)
    })
    .expect("first sync");

    let dig = c.dig_loop(
        client,
        CLIENT_PORT,
        frontend,
        "whoami.test",
        Duration::from_millis(100),
        Duration::from_secs(1),
    );
    let answered = |who: Ipv4Addr| move |q: &Query| q.outcome.answers == [who];
    dig.wait_for(WAIT, answered(WHO_OLD))
        .expect("the old endpoint answers");
    // The flow is established: a few more queries on it.
    let first = dig.queries().len();
    dig.wait_for(WAIT, |_| dig.queries().len() >= first + 5)
        .expect("more queries");

    c.write_manifest("dns.yaml", &manifest(new))
        .expect("manifest");
    c.wait_frontends("the new endpoint", WAIT, |n, fs| {
        n != node || shows(fs, frontend, new)
    })
    .expect("the change is programmed");
    let updated = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let queries = dig.stop();

    let deadline = updated + Duration::from_secs(1);
    let summary = |from: Instant, to: Instant| {
        let window: Vec<&Query> = queries
            .iter()
            .filter(|q| q.started >= from && q.started < to)
            .collect();
        let count = |who| window.iter().filter(|q| q.outcome.answers == [who]).count();
        (window.len(), count(WHO_OLD), count(WHO_NEW))
    };
    let start = queries.first().map_or(updated, |q| q.started);
    let end = queries.last().map_or(deadline, |q| q.started) + Duration::from_millis(1);
    eprintln!(
        "{} -> {}:{} (queries, old answers, new answers): before the map update {:?}, \
         in the second after it {:?}, later {:?}",
        client.name,
        frontend.0,
        frontend.1,
        summary(start, updated),
        summary(updated, deadline),
        summary(deadline, end),
    );
    let first_new = queries.iter().find(|q| answered(WHO_NEW)(q));
    assert!(
        first_new.is_some_and(|q| q.started <= deadline),
        "the new endpoint did not answer within 1 s of the map update (first answer: {:?} after it)",
        first_new.map(|q| q.started.saturating_duration_since(updated))
    );
    let late_old = queries
        .iter()
        .filter(|q| q.started > deadline && answered(WHO_OLD)(q))
        .count();
    assert_eq!(
        late_old, 0,
        "the removed endpoint kept answering more than 1 s after the map update"
    );
}

/// ClusterIP from a pod: the old endpoint is on the client's node, the new
/// one on the other node.
#[test]
fn a_udp_flow_to_a_cluster_ip_moves_when_its_endpoint_is_replaced() {
    let Some(mut c) = cluster("uc") else {
        return;
    };
    let old = c.add_pod(0, "d-old", pod_addr(0, 20)).expect("pod");
    let new = c.add_pod(1, "d-new", pod_addr(1, 20)).expect("pod");
    let client = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let manifest = |b: &Host| {
        format!(
            "{}---\n{}",
            service_yaml(NS, "dns", DNS_VIP, &[Port::udp("dns", 53, 53)], true),
            slice(b)
        )
    };
    endpoint_replaced_under_a_udp_flow(&c, &client, (DNS_VIP, 53), 0, manifest, &old, &new);
}

/// NodePort from the outside client through node-a, with both endpoints on
/// node-b: the flow is DNATed and SNATed at node-a's XDP.
#[test]
fn a_snated_udp_flow_to_a_node_port_moves_when_its_endpoint_is_replaced() {
    let Some(mut c) = cluster("un") else {
        return;
    };
    let old = c.add_pod(1, "d-old", pod_addr(1, 20)).expect("pod");
    let new = c.add_pod(1, "d-new", pod_addr(1, 21)).expect("pod");
    let manifest = |b: &Host| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  namespace: {NS}\n\
             spec:\n  type: NodePort\n  clusterIP: {DNS_VIP}\n  clusterIPs: [\"{DNS_VIP}\"]\n  \
             selector: {{app: dns}}\n  ports:\n  \
             - {{name: dns, protocol: UDP, port: 53, targetPort: 53, nodePort: {NODE_PORT}}}\n\
             ---\n{}",
            slice(b)
        )
    };
    let client = c.outside().expect("outside client").clone();
    endpoint_replaced_under_a_udp_flow(
        &c,
        &client,
        (node_addr(0), NODE_PORT),
        0,
        manifest,
        &old,
        &new,
    );
}
