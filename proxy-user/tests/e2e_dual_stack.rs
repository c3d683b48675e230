//! Dual-stack end to end on a cluster on one machine
//! (`svcnat_testkit::cluster`): every node, pod and outside client has an
//! IPv6 address beside its IPv4 one (2001:db8::/32, the twins of the IPv4
//! plan), and every node runs the real `svcnat run`.
//!
//! IPv6 straight between pods, on one node and across nodes, and from the
//! outside client to pods, through the attached programs; IPv6 cluster IPs
//! over TCP and UDP from pods on both nodes; a dual-stack Service answering
//! on both families at once; IPv6 node ports from outside, with both
//! traffic policies; load-balancer IPs of both families routed to a node.
//! The tests of change (endpoint churn, no endpoints, agent restarts) run
//! for each family in `e2e_cluster.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, Endpoint, Exposed, Host, Port, Proto, dual_stack_endpoints,
    exposed_service, node_addr, node_addr6, pod_addr, service_with_slices, twin6, url,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const NS: &str = "demo";
/// The dual-stack web Service's cluster IPs.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
/// The IPv6 DNS Service's cluster IP.
const DNS_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x53);
/// How long agents may take to show a change (generous: tests run in parallel).
const WAIT: Duration = Duration::from_secs(30);
const CURL_TIME: Duration = Duration::from_secs(5);
const DIG_TIME: Duration = Duration::from_secs(2);
/// Time for a request that must fail (dropped traffic times out).
const FAIL_TIME: Duration = Duration::from_secs(1);

/// A cluster of `nodes` nodes, or None (after printing why) when this
/// machine cannot run it.
fn cluster(prefix: &str, nodes: usize, programs: &[&str]) -> Option<Cluster> {
    Cluster::for_test(ClusterConfig::new(BIN, nodes).prefix(prefix), programs)
}

/// Starts every agent and waits until each has finished its first sync
/// pass (its programs attached to the pods' veths and the nodes' `eth0`).
fn start_agents_and_wait(c: &Cluster) {
    c.start_agents().expect("start agents");
    for n in 0..c.nodes() {
        c.wait_agent_ready(n, WAIT).expect("agent ready");
    }
}

/// The `addr:port` of each pod's address of `vip`'s family.
fn backends(pods: &[&Host], vip: IpAddr, port: u16) -> Vec<SocketAddr> {
    pods.iter()
        .map(|p| SocketAddr::new(p.addr_for(vip), port))
        .collect()
}

/// Polls `pod`'s nginx access log until a request whose line contains
/// `marker` shows up (nginx logs after answering); the client address it
/// logged, of either family.
fn logged_client(c: &Cluster, pod: &Host, marker: &str) -> IpAddr {
    let start = Instant::now();
    loop {
        let log = c.nginx_access_log_as::<IpAddr>(pod).expect("access log");
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

/// `n` requests of `url` from `client`, each on a new connection; every one
/// must succeed. How many each backend answered.
fn spread(client: &Host, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (i, o) in client
        .curl_many(url, n, CURL_TIME)
        .expect("curl")
        .iter()
        .enumerate()
    {
        assert!(
            o.ok(),
            "request {i} of {url} from {} failed: {o:?}",
            client.name
        );
        assert_eq!(o.num_connects, 1, "request {i} reused a connection");
        *counts.entry(o.body.clone()).or_default() += 1;
    }
    counts
}

fn names(pods: &[&Host]) -> BTreeSet<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

/// With the agents running, pods reach each other's IPv6 addresses on one
/// node and across nodes (HTTP to nginx, DNS over UDP to dnsmasq), the
/// outside client reaches pods on both nodes over IPv6, and every server
/// sees the client's own IPv6 address: IPv6 passes svcnat's programs
/// untouched. IPv4 between the same pods works alongside.
#[test]
fn ipv6_between_pods_on_one_node_and_across_nodes_and_from_outside() {
    let Some(mut c) = cluster("d6p", 2, &["nginx", "curl", "dnsmasq", "dig"]) else {
        return;
    };
    let s1 = c.add_pod(0, "s1", pod_addr(0, 10)).expect("pod");
    let s2 = c.add_pod(1, "s2", pod_addr(1, 10)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    let who = |s: &Host| Ipv4Addr::new(198, 18, 255, s.addr.octets()[2]);
    for s in [&s1, &s2] {
        c.nginx(s).expect("nginx");
        let records = [
            ("whoami.test", IpAddr::V4(who(s))),
            ("v6.test", s.addr6.into()),
        ];
        c.dnsmasq(s, &records).expect("dnsmasq");
    }
    start_agents_and_wait(&c);

    let outside = c.outside().expect("outside client").clone();
    for (client, server) in [
        (&ca, &s1),
        (&cb, &s2),
        (&ca, &s2),
        (&cb, &s1),
        (&outside, &s1),
        (&outside, &s2),
    ] {
        let marker = format!("from-{}", client.name);
        let o = client
            .curl(&format!("{}?{marker}", url(server.addr6, 80)), CURL_TIME)
            .expect("curl");
        assert!(
            o.ok(),
            "{} -> [{}]:80 failed: {o:?}",
            client.name,
            server.addr6
        );
        assert_eq!(o.body, server.name, "answered by {}", o.body);
        assert_eq!(
            logged_client(&c, server, &marker),
            IpAddr::V6(client.addr6),
            "{} sees {}'s own IPv6 address",
            server.name,
            client.name
        );
        let r = client
            .dig(server.addr6, 53, "whoami.test", false, DIG_TIME)
            .expect("dig");
        assert_eq!(
            (r.exit, r.answers.clone()),
            (0, vec![who(server)]),
            "{} asks {} over IPv6/UDP: {r:?}",
            client.name,
            server.name
        );
        let r = client
            .dig_aaaa(server.addr6, 53, "v6.test", DIG_TIME)
            .expect("dig AAAA");
        assert_eq!(
            (r.exit, r.answers6.clone()),
            (0, vec![server.addr6]),
            "{r:?}"
        );
        let o = client.curl(&url(server.addr, 80), CURL_TIME).expect("curl");
        assert!(o.ok() && o.body == server.name, "over IPv4 too: {o:?}");
    }
}

/// An IPv6 ClusterIP Service with TCP (nginx) and UDP (dnsmasq) backends
/// on both nodes: pods on both nodes reach it over IPv6, both backends
/// answer, and they see the clients' own IPv6 addresses.
#[test]
fn ipv6_cluster_ip_tcp_and_udp_from_pods_on_both_nodes() {
    let Some(mut c) = cluster("d6c", 2, &["nginx", "curl", "dnsmasq", "dig"]) else {
        return;
    };
    let b1 = c.add_pod(0, "b1", pod_addr(0, 10)).expect("pod");
    let b2 = c.add_pod(1, "b2", pod_addr(1, 10)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    let pods = [&b1, &b2];
    let who = |b: &Host| IpAddr::V6(b.addr6);
    for b in pods {
        c.nginx(b).expect("nginx");
        c.dnsmasq(b, &[("whoami.test", who(b))]).expect("dnsmasq");
    }
    let ports = [Port::tcp("http", 80, 80), Port::udp("dns", 53, 53)];
    let six: Vec<Endpoint> = pods.iter().map(|b| Endpoint::of6(b)).collect();
    c.write_manifest(
        "web6.yaml",
        &service_with_slices(NS, "web6", &[VIP6.into()], &ports[..1], &six),
    )
    .expect("manifest");
    c.write_manifest(
        "dns6.yaml",
        &service_with_slices(NS, "dns6", &[DNS_VIP6.into()], &ports[1..], &six),
    )
    .expect("manifest");
    c.start_agents().expect("start agents");
    for (vip, port, proto) in [(VIP6, 80, Proto::Tcp), (DNS_VIP6, 53, Proto::Udp)] {
        let want = backends(&pods, vip.into(), port);
        c.wait_backends_ip(vip.into(), port, proto, Some(&want), WAIT)
            .expect("programmed on every node");
    }

    for client in [&ca, &cb] {
        let counts = spread(client, &url(VIP6, 80), 40);
        eprintln!("{} -> [{VIP6}]:80: {counts:?}", client.name);
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            names(&pods)
        );
        let marker = format!("client-{}", client.name);
        let o = client
            .curl(&format!("{}?{marker}", url(VIP6, 80)), CURL_TIME)
            .expect("curl");
        assert!(o.ok(), "{o:?}");
        let backend = pods.iter().find(|b| b.name == o.body).expect("a backend");
        assert_eq!(
            logged_client(&c, backend, &marker),
            IpAddr::V6(client.addr6)
        );

        let mut seen = BTreeSet::new();
        for _ in 0..16 {
            let r = client
                .dig_aaaa(DNS_VIP6, 53, "whoami.test", DIG_TIME)
                .expect("dig");
            assert_eq!((r.exit, r.answers6.len()), (0, 1), "{r:?}");
            seen.insert(IpAddr::V6(r.answers6[0]));
        }
        assert_eq!(
            seen,
            pods.iter().map(|b| who(b)).collect(),
            "both DNS backends answer {}",
            client.name
        );
    }
}

/// A dual-stack Service reached on both of its cluster IPs at once from
/// pods on both nodes: every request of either family succeeds, both
/// backends answer each family, and each backend sees clients of both
/// families.
#[test]
fn dual_stack_service_answers_on_both_families_at_once() {
    let Some(mut c) = cluster("d6b", 2, &["nginx", "curl"]) else {
        return;
    };
    let b1 = c.add_pod(0, "b1", pod_addr(0, 10)).expect("pod");
    let b2 = c.add_pod(1, "b2", pod_addr(1, 10)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    let pods = [&b1, &b2];
    for b in pods {
        c.nginx(b).expect("nginx");
    }
    let vips: [IpAddr; 2] = [VIP.into(), VIP6.into()];
    c.write_manifest(
        "dual.yaml",
        &service_with_slices(
            NS,
            "dual",
            &vips,
            &[Port::tcp("http", 80, 80)],
            &dual_stack_endpoints(&pods),
        ),
    )
    .expect("manifest");
    c.start_agents().expect("start agents");
    for vip in vips {
        c.wait_backends_ip(vip, 80, Proto::Tcp, Some(&backends(&pods, vip, 80)), WAIT)
            .expect("both families programmed on every node");
    }

    let runs: Vec<((String, IpAddr), BTreeMap<String, usize>)> = std::thread::scope(|s| {
        let handles: Vec<_> = [&ca, &cb]
            .into_iter()
            .flat_map(|client| vips.map(|vip| (client, vip)))
            .map(|(client, vip)| {
                s.spawn(move || {
                    (
                        (client.name.clone(), vip),
                        spread(client, &url(vip, 80), 40),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    for ((client, vip), counts) in &runs {
        eprintln!("{client} -> {vip}: {counts:?}");
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            names(&pods),
            "{client} -> {vip}: both backends answer"
        );
    }
    for b in pods {
        let log = c.nginx_access_log_as::<IpAddr>(b).expect("access log");
        let clients: BTreeSet<IpAddr> = log.iter().map(|e| e.client).collect();
        for client in [&ca, &cb] {
            for addr in [IpAddr::V4(client.addr), IpAddr::V6(client.addr6)] {
                assert!(
                    clients.contains(&addr),
                    "{} saw no request from {addr}: {clients:?}",
                    b.name
                );
            }
        }
    }
}

/// A dual-stack Service of `type: NodePort` (port 80 on `node_port`),
/// with `externalTrafficPolicy: Local` when `local`, and its slices of both
/// families. With `lb_ips`, `type: LoadBalancer` with those ingress IPs in
/// its status.
fn node_port_service(
    name: &str,
    vips: &[IpAddr],
    (node_port, lb_ips): (u16, &[IpAddr]),
    local: bool,
    pods: &[&Host],
) -> String {
    let ex = Exposed {
        node_port,
        lb_ips,
        local,
        ..Exposed::default()
    };
    exposed_service(NS, name, vips, &ex, &dual_stack_endpoints(pods))
}

/// Pods `a1` on node-a and `b1` on node-b, each serving nginx.
fn nginx_on_each_node(c: &mut Cluster) -> (Host, Host) {
    let a1 = c.add_pod(0, "a1", pod_addr(0, 10)).expect("pod");
    let b1 = c.add_pod(1, "b1", pod_addr(1, 10)).expect("pod");
    for b in [&a1, &b1] {
        c.nginx(b).expect("nginx");
    }
    (a1, b1)
}

/// Polls `url` from `client` until a request succeeds (the agents program
/// node ports after their cluster IPs).
fn wait_answered(client: &Host, url: &str) {
    let start = Instant::now();
    loop {
        let o = client.curl(url, CURL_TIME).expect("curl");
        if o.ok() {
            return;
        }
        assert!(start.elapsed() < WAIT, "{url} never answered: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// IPv6 node ports from outside the cluster, as kube-proxy serves them
/// (e2e "should be able to create a functioning NodePort service" over
/// IPv6): through each node's IPv6 address both backends answer, the one
/// on the other node through SNAT to the node's address; IPv4 on the same
/// node port works alongside. With `externalTrafficPolicy: Local` the
/// backend sees the outside client's own IPv6 address, and the node
/// without a local endpoint does not forward.
#[test]
fn ipv6_node_ports_from_outside_with_cluster_and_local_policies() {
    let Some(mut c) = cluster("d6n", 2, &["nginx", "curl"]) else {
        return;
    };
    let (a1, b1) = nginx_on_each_node(&mut c);
    let both = [&a1, &b1];
    let vips: [IpAddr; 2] = [VIP.into(), VIP6.into()];
    let local_vips: [IpAddr; 2] = [
        Ipv4Addr::new(198, 19, 0, 11).into(),
        Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x11).into(),
    ];
    c.write_manifest(
        "np.yaml",
        &node_port_service("np", &vips, (30081, &[]), false, &both),
    )
    .expect("manifest");
    c.write_manifest(
        "local.yaml",
        &node_port_service("local", &local_vips, (30082, &[]), true, &[&b1]),
    )
    .expect("manifest");
    start_agents_and_wait(&c);
    let outside = c.outside().expect("outside client").clone();

    for node in 0..2 {
        let url6 = format!("http://[{}]:30081/", node_addr6(node));
        wait_answered(&outside, &url6);
        let counts = spread(&outside, &url6, 30);
        eprintln!("outside -> {url6}: {counts:?}");
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            names(&both),
            "through node {node} over IPv6 both backends answer"
        );
        let url4 = format!("http://{}:30081/", node_addr(node));
        let o = outside.curl(&url4, CURL_TIME).expect("curl");
        assert!(o.ok(), "the same node port over IPv4: {o:?}");
    }

    let url6 = format!("http://[{}]:30082/", node_addr6(1));
    wait_answered(&outside, &url6);
    let marker = "local-v6";
    let o = outside
        .curl(&format!("{url6}?{marker}"), CURL_TIME)
        .expect("curl");
    assert!(o.ok() && o.body == b1.name, "{o:?}");
    assert_eq!(
        logged_client(&c, &b1, marker),
        IpAddr::V6(outside.addr6),
        "Local policy: the backend sees the client's own IPv6 address"
    );
    let o = outside
        .curl(&format!("http://[{}]:30082/", node_addr6(0)), FAIL_TIME)
        .expect("curl");
    assert!(
        !o.ok(),
        "node 0 has no local endpoint and must not forward: {o:?}"
    );
}

/// Dual-stack LoadBalancer ingress IPs that no interface has (one per
/// family, on the fabric), routed by the outside client to node-b, work
/// like a node port on both families at once (e2e "should be able to
/// create a functioning LoadBalancer service" over IPv6): backends on both
/// nodes answer; node-b's own backend sees the client's IPv6 address, and
/// node-a's backend is reached through node-b, SNATed to node-b's IPv6
/// address.
#[test]
fn dual_stack_load_balancer_ips_routed_to_a_node_work_like_a_node_port() {
    let Some(mut c) = cluster("d6l", 2, &["nginx", "curl"]) else {
        return;
    };
    let (a1, b1) = nginx_on_each_node(&mut c);
    let both = [&a1, &b1];
    let lb4 = Ipv4Addr::new(198, 18, 0, 100);
    let lb_ips: [IpAddr; 2] = [lb4.into(), twin6(lb4).expect("a fabric address").into()];
    let outside = c.outside().expect("outside client").clone();
    for ip in lb_ips {
        c.route_via_node(&outside, ip, 1).expect("route");
    }
    let vips: [IpAddr; 2] = [
        Ipv4Addr::new(198, 19, 0, 60).into(),
        Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x60).into(),
    ];
    c.write_manifest(
        "lb.yaml",
        &node_port_service("lb", &vips, (30130, &lb_ips), false, &both),
    )
    .expect("manifest");
    start_agents_and_wait(&c);
    for ip in lb_ips {
        let want: BTreeSet<String> = backends(&both, ip, 80)
            .iter()
            .map(ToString::to_string)
            .collect();
        c.wait_frontends(&format!("{ip}:80 on every node"), WAIT, |_, fs| {
            fs.iter()
                .any(|f| f.vip == ip && f.port == 80 && f.backend_set() == want)
        })
        .expect("the LB IP programmed");
    }

    for ip in lb_ips {
        let family = if ip.is_ipv4() { "v4" } else { "v6" };
        let u = format!("{}?via=lb-{family}", url(ip, 80));
        wait_answered(&outside, &u);
        let counts = spread(&outside, &u, 30);
        eprintln!("outside -> {u}: {counts:?}");
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            names(&both),
            "backends on both nodes answer through {ip}"
        );
        let marker = format!("via=lb-{family}");
        assert_eq!(
            logged_client(&c, &b1, &marker),
            outside.addr_for(ip),
            "node-b's own backend sees the client's address"
        );
        let node_b = match ip {
            IpAddr::V4(_) => IpAddr::V4(node_addr(1)),
            IpAddr::V6(_) => IpAddr::V6(node_addr6(1)),
        };
        let log = c.nginx_access_log_as::<IpAddr>(&a1).expect("access log");
        let seen: Vec<IpAddr> = log
            .iter()
            .filter(|e| e.request.contains(&marker))
            .map(|e| e.client)
            .collect();
        assert!(
            !seen.is_empty() && seen.iter().all(|a| *a == node_b),
            "node-a's backend is reached through node-b ({node_b}): {seen:?}"
        );
    }
}
