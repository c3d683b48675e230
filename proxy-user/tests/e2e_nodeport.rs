//! End to end from outside the cluster (`svcnat_testkit::cluster`): outside clients
//! on the fabric reach Services through the nodes' addresses (NodePort) and
//! through load-balancer IPs routed to a node, with nginx backends on both
//! nodes; traffic policies, session affinity, source ranges and the
//! health-check node port are checked as an outside client sees them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, CurlOutcome, Endpoint, Frontend, Host, OUTSIDE_ADDR, Port, node_addr,
    node_name, pod_addr, slice_yaml,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const NS: &str = "demo";
/// How long agents may take to show a change (generous: tests run in parallel).
const WAIT: Duration = Duration::from_secs(30);
/// Time for a request that must succeed.
const CURL_TIME: Duration = Duration::from_secs(5);
/// Time for a request that must fail (dropped traffic times out).
const FAIL_TIME: Duration = Duration::from_secs(1);
/// A load-balancer IP: a free address of the fabric's 198.18.0.0/24.
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The second outside client's address.
const OUTSIDE2_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 201);

/// A two-node cluster, or None (after printing why) when this machine
/// cannot run it.
fn cluster(prefix: &str, programs: &[&str]) -> Option<Cluster> {
    Cluster::for_test(ClusterConfig::new(BIN, 2).prefix(prefix), programs)
}

/// Pods with nginx: `(node, host byte, name)`.
fn nginx_pods(c: &mut Cluster, pods: &[(usize, u8, &str)]) -> Vec<Host> {
    let pods: Vec<Host> = pods
        .iter()
        .map(|&(node, host, name)| c.add_pod(node, name, pod_addr(node, host)).expect("pod"))
        .collect();
    for p in &pods {
        c.nginx(p).expect("nginx");
    }
    pods
}

/// How a Service is exposed beyond its cluster IP.
#[derive(Clone, Debug, Default)]
struct Exposure {
    /// `LoadBalancer` with this ingress IP in its status; else `NodePort`.
    lb_ip: Option<Ipv4Addr>,
    /// `externalTrafficPolicy: Local`.
    local: bool,
    /// `sessionAffinity: ClientIP`.
    affinity: bool,
    /// `loadBalancerSourceRanges`.
    source_ranges: Vec<&'static str>,
    /// `healthCheckNodePort`.
    health_check_node_port: Option<u16>,
}

/// A NodePort or LoadBalancer Service `name` (one TCP port 80 to the pods'
/// 80 on `node_port`) and its EndpointSlice with `backends`.
fn service(
    name: &str,
    vip: Ipv4Addr,
    node_port: u16,
    exposure: &Exposure,
    backends: &[&Host],
) -> String {
    let kind = if exposure.lb_ip.is_some() {
        "LoadBalancer"
    } else {
        "NodePort"
    };
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         spec:\n  type: {kind}\n  clusterIP: {vip}\n  clusterIPs: [\"{vip}\"]\n  \
         selector: {{app: {name}}}\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 80, nodePort: {node_port}}}\n"
    );
    if exposure.local {
        s.push_str("  externalTrafficPolicy: Local\n");
    }
    if exposure.affinity {
        s.push_str(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n",
        );
    }
    if !exposure.source_ranges.is_empty() {
        let ranges: Vec<String> = exposure
            .source_ranges
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect();
        let _ = writeln!(s, "  loadBalancerSourceRanges: [{}]", ranges.join(", "));
    }
    if let Some(port) = exposure.health_check_node_port {
        let _ = writeln!(s, "  healthCheckNodePort: {port}");
    }
    if let Some(ip) = exposure.lb_ip {
        let _ = writeln!(s, "status:\n  loadBalancer:\n    ingress:\n    - ip: {ip}");
    }
    let endpoints: Vec<Endpoint> = backends.iter().map(|b| Endpoint::of(b)).collect();
    format!(
        "{s}---\n{}",
        slice_yaml(
            NS,
            &format!("{name}-1"),
            name,
            &[Port::tcp("http", 80, 80)],
            &endpoints
        )
    )
}

/// `addr:80` of each pod, as `svcnat inspect` names backends.
fn set(pods: &[&Host]) -> BTreeSet<String> {
    pods.iter().map(|p| format!("{}:80", p.addr)).collect()
}

/// The backend sets of every map entry (one per scope) of `vip:port`/TCP.
fn entries(fs: &[Frontend], vip: Ipv4Addr, port: u16) -> Vec<BTreeSet<String>> {
    let mut out: Vec<BTreeSet<String>> = fs
        .iter()
        .filter(|f| f.vip == vip && f.port == port && f.protocol == "tcp")
        .map(|f| {
            assert_eq!(
                f.backends.len(),
                f.backend_set().len(),
                "a backend twice: {f:?}"
            );
            f.backend_set()
        })
        .collect();
    out.sort();
    out
}

/// Whether `vip:port` is programmed and every entry has exactly `want`.
fn only(fs: &[Frontend], vip: Ipv4Addr, port: u16, want: &BTreeSet<String>) -> bool {
    let e = entries(fs, vip, port);
    !e.is_empty() && e.iter().all(|b| b == want)
}

/// Whether `vip:port` has an entry with exactly `want`.
fn has(fs: &[Frontend], vip: Ipv4Addr, port: u16, want: &BTreeSet<String>) -> bool {
    entries(fs, vip, port).iter().any(|b| b == want)
}

/// Starts the agents and waits until `ok(node, frontends)` holds on every node.
fn start_and_wait(c: &Cluster, what: &str, ok: impl FnMut(usize, &[Frontend]) -> bool) {
    let t = Instant::now();
    c.start_agents().expect("start agents");
    c.wait_frontends(what, WAIT, ok)
        .expect("the agents programmed the services");
    eprintln!("agents started; {what} after {:?}", t.elapsed());
}

/// GETs `url` from `client` until one answers 200 (the datapath of a
/// freshly programmed node is ready); fails after [`WAIT`].
fn first_ok(client: &Host, url: &str) -> CurlOutcome {
    let start = Instant::now();
    loop {
        let o = client.curl(url, CURL_TIME).expect("curl");
        if o.ok() {
            return o;
        }
        assert!(
            start.elapsed() < WAIT,
            "{} never got an answer from {url} within {WAIT:?}; last: {o:?}",
            client.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` GETs of `url` from `client` (each a new connection), all of which
/// must succeed; how often each backend (by name) answered.
fn spread(client: &Host, url: &str, n: usize) -> BTreeMap<String, usize> {
    first_ok(client, url);
    let mut counts = BTreeMap::new();
    for (i, o) in client
        .curl_many(url, n, CURL_TIME)
        .expect("curl")
        .iter()
        .enumerate()
    {
        assert!(
            o.ok(),
            "request {i} from {} to {url} failed: {o:?}",
            client.name
        );
        assert_eq!(o.num_connects, 1, "request {i} reused a connection");
        *counts.entry(o.body.clone()).or_default() += 1;
    }
    eprintln!("{} -> {url}: {counts:?}", client.name);
    counts
}

fn names(pods: &[&Host]) -> BTreeSet<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

fn keys(counts: &BTreeMap<String, usize>) -> BTreeSet<String> {
    counts.keys().cloned().collect()
}

/// Polls `pod`'s nginx access log until a request whose line contains
/// `marker` shows up (nginx logs after answering); the client address it
/// logged.
fn logged_client(c: &Cluster, pod: &Host, marker: &str) -> Ipv4Addr {
    let start = Instant::now();
    loop {
        let log = c.nginx_access_log(pod).expect("access log");
        if let Some(e) = log.iter().find(|e| e.request.contains(marker)) {
            return e.client;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no request {marker} in the access log of {}: {log:?}",
            pod.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// From the outside client, `nodeA:NodePort` and `nodeB:NodePort` of three
/// services (backends only on node-a, only on node-b, on both) all answer:
/// to the node's own backends and through it to the other node's; with
/// backends on both nodes, both answer through either node.
#[test]
fn node_ports_reach_backends_on_the_same_and_the_other_node() {
    let Some(mut c) = cluster("na", &["nginx", "curl"]) else {
        return;
    };
    let pods = nginx_pods(&mut c, &[(0, 10, "a1"), (1, 10, "b1")]);
    let (a1, b1) = (&pods[0], &pods[1]);
    let services = [
        ("on-a", 30081, vec![a1]),
        ("on-b", 30082, vec![b1]),
        ("on-both", 30083, vec![a1, b1]),
    ];
    for (k, (name, port, backends)) in services.iter().enumerate() {
        let vip = Ipv4Addr::new(198, 19, 0, 10 + k as u8);
        let text = service(name, vip, *port, &Exposure::default(), backends);
        c.write_manifest(&format!("{name}.yaml"), &text)
            .expect("manifest");
    }
    start_and_wait(&c, "the three node ports on every node", |n, fs| {
        services
            .iter()
            .all(|(_, port, b)| only(fs, node_addr(n), *port, &set(b)))
    });

    let outside = c.outside().expect("outside client");
    for (name, port, backends) in &services {
        for node in 0..2 {
            let url = format!("http://{}:{port}/", node_addr(node));
            let counts = spread(outside, &url, 30);
            let who = keys(&counts);
            assert!(
                who.is_subset(&names(backends)),
                "{name} through {}: answered by {who:?}, not only by its backends",
                node_name(node)
            );
            if backends.len() > 1 {
                assert_eq!(
                    who,
                    names(backends),
                    "{name} through {}: backends on both nodes answer",
                    node_name(node)
                );
            }
        }
    }
}

/// `externalTrafficPolicy: Local` with the only backend on node-b: through
/// node-b the backend sees the outside client's own address; node-a, which
/// has no local endpoint, does not forward to node-b (the request fails and
/// never reaches the backend).
#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_stays_on_the_node() {
    let Some(mut c) = cluster("nl", &["nginx", "curl"]) else {
        return;
    };
    let pods = nginx_pods(&mut c, &[(1, 10, "b1")]);
    let b1 = &pods[0];
    let port = 30090;
    let local = Exposure {
        local: true,
        ..Exposure::default()
    };
    c.write_manifest(
        "local.yaml",
        &service("local", Ipv4Addr::new(198, 19, 0, 20), port, &local, &[b1]),
    )
    .expect("manifest");
    let none = BTreeSet::new();
    start_and_wait(&c, "the Local node port on every node", |n, fs| match n {
        0 => has(fs, node_addr(0), port, &none),
        _ => only(fs, node_addr(1), port, &set(&[b1])),
    });

    let outside = c.outside().expect("outside client");
    let via_b = format!("http://{}:{port}/", node_addr(1));
    first_ok(outside, &via_b);
    let o = outside
        .curl(&format!("{via_b}?via=node-b"), CURL_TIME)
        .expect("curl");
    assert!(o.ok() && o.body == "b1", "through node-b: {o:?}");
    assert_eq!(
        logged_client(&c, b1, "via=node-b"),
        OUTSIDE_ADDR,
        "the backend sees the outside client's address"
    );
    let log = c.nginx_access_log(b1).expect("access log");
    assert!(
        log.iter().all(|e| e.client == OUTSIDE_ADDR),
        "every request through node-b keeps the client address: {log:?}"
    );

    let drops = c.stat(0, "drop_no_local_backend").expect("stats");
    for k in 0..3 {
        let marker = format!("via=node-a-{k}");
        let url = format!("http://{}:{port}/?{marker}", node_addr(0));
        let o = outside.curl(&url, FAIL_TIME).expect("curl");
        assert!(!o.ok(), "node-a has no local endpoint but answered: {o:?}");
        eprintln!(
            "through node-a: exit {} ({})",
            o.exit,
            o.connect_error().unwrap_or("no connect error")
        );
        let log = c.nginx_access_log(b1).expect("access log");
        assert!(
            !log.iter().any(|e| e.request.contains(&marker)),
            "node-a forwarded to node-b's backend: {log:?}"
        );
    }
    let dropped = c.stat(0, "drop_no_local_backend").expect("stats") - drops;
    assert!(
        dropped >= 3,
        "node-a's datapath dropped {dropped} packets as drop_no_local_backend for 3 requests"
    );
}

/// `sessionAffinity: ClientIP` with three backends on two nodes: 50 new
/// connections of the outside client through one node all reach one
/// backend; without affinity they spread over several.
#[test]
fn session_affinity_client_ip_pins_the_outside_client_to_one_backend() {
    let Some(mut c) = cluster("ns", &["nginx", "curl"]) else {
        return;
    };
    let pods = nginx_pods(&mut c, &[(0, 10, "a1"), (0, 11, "a2"), (1, 10, "b1")]);
    let all: Vec<&Host> = pods.iter().collect();
    let (sticky_port, spread_port) = (30100, 30101);
    let sticky = Exposure {
        affinity: true,
        ..Exposure::default()
    };
    c.write_manifest(
        "sticky.yaml",
        &service(
            "sticky",
            Ipv4Addr::new(198, 19, 0, 30),
            sticky_port,
            &sticky,
            &all,
        ),
    )
    .expect("manifest");
    c.write_manifest(
        "spread.yaml",
        &service(
            "spread",
            Ipv4Addr::new(198, 19, 0, 31),
            spread_port,
            &Exposure::default(),
            &all,
        ),
    )
    .expect("manifest");
    start_and_wait(&c, "both node ports on every node", |n, fs| {
        only(fs, node_addr(n), sticky_port, &set(&all))
            && only(fs, node_addr(n), spread_port, &set(&all))
    });

    let outside = c.outside().expect("outside client");
    for node in 0..2 {
        let counts = spread(
            outside,
            &format!("http://{}:{sticky_port}/", node_addr(node)),
            50,
        );
        assert_eq!(
            counts.len(),
            1,
            "with ClientIP affinity through {} one backend answers: {counts:?}",
            node_name(node)
        );
        let counts = spread(
            outside,
            &format!("http://{}:{spread_port}/", node_addr(node)),
            50,
        );
        assert!(
            counts.len() >= 2,
            "without affinity through {} several backends answer: {counts:?}",
            node_name(node)
        );
    }
}

/// `loadBalancerSourceRanges: [198.18.0.200/32]`: the first outside client
/// gets through the LB IP, a second one (198.18.0.201) does not, while it
/// still reaches the same service's node port (ranges restrict LB IPs only).
#[test]
fn load_balancer_source_ranges_admit_only_the_listed_client() {
    let Some(mut c) = cluster("nr", &["nginx", "curl"]) else {
        return;
    };
    let pods = nginx_pods(&mut c, &[(0, 10, "a1"), (1, 10, "b1")]);
    let all: Vec<&Host> = pods.iter().collect();
    let second = c.add_outside("outside2", OUTSIDE2_ADDR).expect("outside2");
    let first = c.outside().expect("outside client").clone();
    for client in [&first, &second] {
        c.route_via_node(client, LB_IP, 0).expect("route");
    }
    let port = 30110;
    let ranged = Exposure {
        lb_ip: Some(LB_IP),
        source_ranges: vec!["198.18.0.200/32"],
        ..Exposure::default()
    };
    c.write_manifest(
        "ranged.yaml",
        &service("ranged", Ipv4Addr::new(198, 19, 0, 40), port, &ranged, &all),
    )
    .expect("manifest");
    start_and_wait(&c, "the LB IP and node port on every node", |n, fs| {
        only(fs, LB_IP, 80, &set(&all)) && only(fs, node_addr(n), port, &set(&all))
    });

    let lb_url = format!("http://{LB_IP}/");
    let counts = spread(&first, &lb_url, 20);
    assert!(keys(&counts).is_subset(&names(&all)), "{counts:?}");

    let np_url = format!("http://{}:{port}/", node_addr(0));
    spread(&second, &np_url, 5);
    let drops = c.stat(0, "drop_source_range").expect("stats");
    for k in 0..3 {
        let marker = format!("blocked-{k}");
        let o = second
            .curl(&format!("{lb_url}?{marker}"), FAIL_TIME)
            .expect("curl");
        assert!(
            !o.ok(),
            "{OUTSIDE2_ADDR} is outside the source ranges but got through: {o:?}"
        );
        eprintln!(
            "outside2 -> {lb_url}: exit {} ({})",
            o.exit,
            o.connect_error().unwrap_or("no connect error")
        );
        for p in &all {
            let log = c.nginx_access_log(p).expect("access log");
            assert!(
                !log.iter().any(|e| e.request.contains(&marker)),
                "{} got a blocked request: {log:?}",
                p.name
            );
        }
    }
    let dropped = c.stat(0, "drop_source_range").expect("stats") - drops;
    assert!(
        dropped >= 3,
        "node-a's datapath dropped {dropped} packets as drop_source_range for 3 requests"
    );
}

/// The JSON kube-proxy's health-check node port answers with.
fn health_body(name: &str, local_endpoints: u64) -> serde_json::Value {
    serde_json::json!({
        "service": {"namespace": NS, "name": name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": true,
    })
}

/// Polls `GET http://NODE:HCPORT/` from `client` until it answers `code`
/// with `body`; fails after [`WAIT`] with the last answer.
fn wait_health(client: &Host, node: usize, hc_port: u16, code: u16, body: &serde_json::Value) {
    let url = format!("http://{}:{hc_port}/", node_addr(node));
    let start = Instant::now();
    loop {
        let o = client.curl(&url, CURL_TIME).expect("curl");
        let json: Option<serde_json::Value> = serde_json::from_str(&o.body).ok();
        if o.exit == 0 && o.http_code == code && json.as_ref() == Some(body) {
            eprintln!("{url}: {code} {}", o.body);
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{url} did not answer {code} {body} within {WAIT:?}; last: exit {} HTTP {} \
             body {:?} ({})",
            o.exit,
            o.http_code,
            o.body,
            o.connect_error().unwrap_or("connected")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `healthCheckNodePort` of a LoadBalancer Service with
/// `externalTrafficPolicy: Local`: from outside, the node with a local
/// endpoint answers 200 and the one without 503, with kube-proxy's JSON
/// body; once an endpoint is added on the other node, it answers 200 too.
#[test]
fn health_check_node_port_reports_local_endpoints() {
    let Some(mut c) = cluster("nh", &["nginx", "curl"]) else {
        return;
    };
    let pods = nginx_pods(&mut c, &[(1, 10, "b1"), (0, 10, "a1")]);
    let (b1, a1) = (&pods[0], &pods[1]);
    let (port, hc_port) = (30120, 32120);
    let vip = Ipv4Addr::new(198, 19, 0, 50);
    let hc = Exposure {
        lb_ip: Some(LB_IP),
        local: true,
        health_check_node_port: Some(hc_port),
        ..Exposure::default()
    };
    c.write_manifest("hc.yaml", &service("hc", vip, port, &hc, &[b1]))
        .expect("manifest");
    let none = BTreeSet::new();
    start_and_wait(&c, "the Local node port on every node", |n, fs| match n {
        0 => has(fs, node_addr(0), port, &none),
        _ => only(fs, node_addr(1), port, &set(&[b1])),
    });

    let outside = c.outside().expect("outside client");
    wait_health(outside, 1, hc_port, 200, &health_body("hc", 1));
    wait_health(outside, 0, hc_port, 503, &health_body("hc", 0));

    c.write_manifest("hc.yaml", &service("hc", vip, port, &hc, &[b1, a1]))
        .expect("manifest");
    wait_health(outside, 0, hc_port, 200, &health_body("hc", 1));
    wait_health(outside, 1, hc_port, 200, &health_body("hc", 1));
}

/// A LoadBalancer ingress IP that no interface has, routed by the outside
/// client to node-b over the fabric, works like a node port: backends on
/// both nodes answer, the local one and the one node-b forwards to.
#[test]
fn load_balancer_ip_routed_to_a_node_works_like_a_node_port() {
    let Some(mut c) = cluster("nb", &["nginx", "curl"]) else {
        return;
    };
    let pods = nginx_pods(&mut c, &[(0, 10, "a1"), (1, 10, "b1")]);
    let all: Vec<&Host> = pods.iter().collect();
    let outside = c.outside().expect("outside client").clone();
    c.route_via_node(&outside, LB_IP, 1).expect("route");
    let port = 30130;
    let lb = Exposure {
        lb_ip: Some(LB_IP),
        ..Exposure::default()
    };
    c.write_manifest(
        "lb.yaml",
        &service("lb", Ipv4Addr::new(198, 19, 0, 60), port, &lb, &all),
    )
    .expect("manifest");
    start_and_wait(&c, "the LB IP on every node", |n, fs| {
        only(fs, LB_IP, 80, &set(&all)) && only(fs, node_addr(n), port, &set(&all))
    });

    let url = format!("http://{LB_IP}/?via=lb");
    let counts = spread(&outside, &url, 30);
    assert_eq!(
        keys(&counts),
        names(&all),
        "backends on both nodes answer through the LB IP"
    );
    // Node-b took them all: its local backend saw the client, node-a's saw
    // node-b (SNAT), and node-a never saw the client itself.
    assert_eq!(logged_client(&c, &pods[1], "via=lb"), OUTSIDE_ADDR);
    let a_log = c.nginx_access_log(&pods[0]).expect("access log");
    assert!(
        a_log
            .iter()
            .filter(|e| e.request.contains("via=lb"))
            .all(|e| e.client == node_addr(1)),
        "node-a's backend is reached through node-b: {a_log:?}"
    );
}
