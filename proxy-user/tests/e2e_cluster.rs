//! End to end on a cluster on one machine (`svcnat_testkit::cluster`): nodes, pods
//! and the fabric are network namespaces, every node runs the real
//! `svcnat run` on one manifests folder, and real programs talk through
//! the Services: nginx and curl, dnsmasq and dig, iperf3.
//!
//! The tests of what a Service does under change (endpoint churn under
//! load, no endpoints and deletion, agent restarts) run once per family:
//! the same test on a single-stack IPv4 and on a single-stack IPv6 Service,
//! the IPv6 addresses being the twins of the IPv4 ones
//! ([`IpFamily::plan`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, Endpoint, Frontend, Host, IpFamily, Port, Proto, node_addr, pod_addr,
    service_with_slices, service_yaml, slice_yaml, url,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// How long agents may take to show a change (generous: tests run in parallel).
const WAIT: Duration = Duration::from_secs(30);
const CURL_TIME: Duration = Duration::from_secs(5);
/// Length of the iperf3 stream that must outlive agent restarts (two
/// restarts, each loading and verifying the programs, on a 2-core machine
/// running the suite: the IPv4 and IPv6 runs of the test restart agents at
/// the same time).
const IPERF_SECONDS: u32 = 15;

/// A cluster of `nodes` nodes, or None (after printing why) when this
/// machine cannot run it.
fn cluster(prefix: &str, nodes: usize, programs: &[&str]) -> Option<Cluster> {
    Cluster::for_test(ClusterConfig::new(BIN, nodes).prefix(prefix), programs)
}

/// `addr:port` of each pod's address of `family`.
fn addrs(family: IpFamily, pods: &[&Host], port: u16) -> Vec<SocketAddr> {
    pods.iter()
        .map(|p| SocketAddr::new(family.of_host(p), port))
        .collect()
}

fn endpoints(family: IpFamily, pods: &[&Host]) -> Vec<Endpoint> {
    pods.iter()
        .map(|p| Endpoint::of_family(p, family))
        .collect()
}

/// A Service `name` of `family` (cluster IP the twin of `vip`) and its
/// EndpointSlice with the `backends`' addresses of that family.
fn service_of(
    family: IpFamily,
    name: &str,
    vip: Ipv4Addr,
    ports: &[Port],
    backends: &[&Host],
) -> String {
    service_with_slices(
        "demo",
        name,
        &[family.plan(vip)],
        ports,
        &endpoints(family, backends),
    )
}

fn web_manifest(family: IpFamily, backends: &[&Host]) -> String {
    service_of(family, "web", VIP, &[Port::tcp("http", 80, 80)], backends)
}

fn start_and_wait(c: &Cluster, vip: IpAddr, port: u16, proto: Proto, want: &[SocketAddr]) {
    let t = Instant::now();
    c.start_agents().expect("start agents");
    let d = c
        .wait_backends_ip(vip, port, proto, Some(want), WAIT)
        .expect("first sync on every node");
    eprintln!(
        "agents started; {vip}:{port} programmed on every node after {:?} (polled for {d:?})",
        t.elapsed()
    );
}

/// 300 HTTP requests (each a new connection) from client pods on both
/// nodes reach all three backends, local and remote, each at least 60 times.
/// A backend reaching itself through the Service sees the hairpin address
/// of the family.
fn http_through_a_cluster_ip_spreads_over_local_and_remote_backends(family: IpFamily) {
    let prefix = format!("eh{}", &family.tag()[3..]);
    let Some(mut c) = cluster(&prefix, 2, &["nginx", "curl"]) else {
        return;
    };
    let vip = family.plan(VIP);
    let b1 = c.add_pod(0, "b1", pod_addr(0, 10)).expect("pod");
    let b2 = c.add_pod(0, "b2", pod_addr(0, 11)).expect("pod");
    let b3 = c.add_pod(1, "b3", pod_addr(1, 10)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    for b in [&b1, &b2, &b3] {
        c.nginx(b).expect("nginx");
    }
    let backends = [&b1, &b2, &b3];
    c.write_manifest("web.yaml", &web_manifest(family, &backends))
        .expect("manifest");
    start_and_wait(&c, vip, 80, Proto::Tcp, &addrs(family, &backends, 80));

    let url = url(vip, 80);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let t = Instant::now();
    for client in [&ca, &cb] {
        let outcomes = client.curl_many(&url, 150, CURL_TIME).expect("curl");
        for (i, o) in outcomes.iter().enumerate() {
            assert!(o.ok(), "request {i} from {} failed: {o:?}", client.name);
            assert_eq!(o.num_connects, 1, "request {i} reused a connection");
            *counts.entry(o.body.clone()).or_default() += 1;
        }
    }
    eprintln!("300 requests in {:?}: {counts:?}", t.elapsed());
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        ["b1", "b2", "b3"].map(String::from).into()
    );
    for (backend, n) in &counts {
        assert!(*n >= 60, "{backend} answered only {n} of 300: {counts:?}");
    }

    // A backend calling its own service (hairpin): when it picks itself it
    // sees the request from the hairpin address, never from its own.
    let before = c.nginx_access_log_as::<IpAddr>(&b1).expect("log").len();
    let outcomes = b1.curl_many(&url, 30, CURL_TIME).expect("curl");
    for (i, o) in outcomes.iter().enumerate() {
        assert!(
            o.ok(),
            "request {i} from b1 to its own service failed: {o:?}"
        );
    }
    let itself = outcomes.iter().filter(|o| o.body == "b1").count();
    let log = c.nginx_access_log_as::<IpAddr>(&b1).expect("log");
    let hairpinned: Vec<_> = log[before..].iter().map(|e| e.client).collect();
    assert!(itself > 0, "b1 never picked itself in 30 requests");
    let hairpin: IpAddr = match family {
        IpFamily::V4 => svcnat_testkit::cluster::HAIRPIN_ADDR.into(),
        IpFamily::V6 => svcnat_testkit::cluster::HAIRPIN_ADDR6.into(),
    };
    assert_eq!(
        hairpinned,
        vec![hairpin; itself],
        "b1 sees its own requests from the hairpin address"
    );
}

#[test]
fn http_through_a_cluster_ip_spreads_over_local_and_remote_backends_ipv4() {
    http_through_a_cluster_ip_spreads_over_local_and_remote_backends(IpFamily::V4);
}

#[test]
fn http_through_a_cluster_ip_spreads_over_local_and_remote_backends_ipv6() {
    http_through_a_cluster_ip_spreads_over_local_and_remote_backends(IpFamily::V6);
}

/// dig through a UDP ClusterIP gets dnsmasq's records from backends on both
/// nodes; the TCP port of the same service answers too.
#[test]
fn dns_over_udp_and_tcp_through_a_cluster_ip() {
    let Some(mut c) = cluster("ed", 2, &["dnsmasq", "dig"]) else {
        return;
    };
    let d1 = c.add_pod(0, "d1", pod_addr(0, 20)).expect("pod");
    let d2 = c.add_pod(1, "d2", pod_addr(1, 20)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    let web = Ipv4Addr::new(198, 19, 0, 10);
    let who1 = Ipv4Addr::new(198, 18, 255, 1);
    let who2 = Ipv4Addr::new(198, 18, 255, 2);
    c.dnsmasq(
        &d1,
        &[("web.demo.svc.cluster.local", web), ("whoami.test", who1)],
    )
    .expect("dnsmasq");
    c.dnsmasq(
        &d2,
        &[("web.demo.svc.cluster.local", web), ("whoami.test", who2)],
    )
    .expect("dnsmasq");
    let dns = Ipv4Addr::new(198, 19, 0, 53);
    c.write_manifest(
        "dns.yaml",
        &service_of(
            IpFamily::V4,
            "dns",
            dns,
            &[Port::udp("dns", 53, 53), Port::tcp("dns-tcp", 53, 53)],
            &[&d1, &d2],
        ),
    )
    .expect("manifest");
    let want = addrs(IpFamily::V4, &[&d1, &d2], 53);
    start_and_wait(&c, dns.into(), 53, Proto::Udp, &want);
    c.wait_backends_ip(dns.into(), 53, Proto::Tcp, Some(&want), WAIT)
        .expect("tcp port");

    let timeout = Duration::from_secs(2);
    for client in [&ca, &cb] {
        let r = client
            .dig(dns, 53, "web.demo.svc.cluster.local", false, timeout)
            .expect("dig");
        assert_eq!((r.exit, r.answers.clone()), (0, vec![web]), "{r:?}");
        let r = client
            .dig(dns, 53, "web.demo.svc.cluster.local", true, timeout)
            .expect("dig +tcp");
        assert_eq!(
            (r.exit, r.answers.clone()),
            (0, vec![web]),
            "over TCP: {r:?}"
        );
        let mut seen: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        let t = Instant::now();
        for _ in 0..24 {
            let r = client
                .dig(dns, 53, "whoami.test", false, timeout)
                .expect("dig");
            assert_eq!(r.exit, 0, "{r:?}");
            assert_eq!(r.answers.len(), 1, "{r:?}");
            *seen.entry(r.answers[0]).or_default() += 1;
        }
        eprintln!(
            "{}: 24 UDP queries in {:?}, answered by {seen:?}",
            client.name,
            t.elapsed()
        );
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            vec![who1, who2],
            "both backends answer"
        );
    }
}

/// A backend leaves the EndpointSlice while clients on both nodes loop:
/// once every node's maps show it, no new connection reaches it; no request
/// fails; established downloads (to it and to another backend) complete.
fn endpoint_removal_under_load_moves_new_connections_only(family: IpFamily) {
    let prefix = format!("ec{}", &family.tag()[3..]);
    let Some(mut c) = cluster(&prefix, 2, &["nginx", "curl"]) else {
        return;
    };
    let vip = family.plan(VIP);
    let b1 = c.add_pod(0, "b1", pod_addr(0, 10)).expect("pod");
    let b2 = c.add_pod(0, "b2", pod_addr(0, 11)).expect("pod");
    let b3 = c.add_pod(1, "b3", pod_addr(1, 10)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    let all = [&b1, &b2, &b3];
    for b in all {
        c.nginx(b).expect("nginx");
    }
    c.write_manifest("web.yaml", &web_manifest(family, &all))
        .expect("manifest");
    start_and_wait(&c, vip, 80, Proto::Tcp, &addrs(family, &all, 80));

    // Established, slow downloads from ca: the first one's backend is the one
    // to remove; more until one runs to another backend.
    let base = format!("http://{}", SocketAddr::new(vip, 80));
    // 6 s each at 1 MB/s.
    let bytes = 6_000_000;
    let mut downloads = Vec::new();
    let mut removed: Option<String> = None;
    let mut other_seen = false;
    for k in 0..16u16 {
        let port = 41000 + k;
        let d = c
            .download(&ca, &base, bytes, 1_000_000, port)
            .expect("download");
        let mut backend = None;
        let t = Instant::now();
        while backend.is_none() && t.elapsed() < WAIT {
            backend = c
                .flow_backend(0, SocketAddr::new(family.of_host(&ca), port))
                .expect("conntrack");
            std::thread::sleep(Duration::from_millis(20));
        }
        let backend = backend.expect("the download's flow in node-a's conntrack");
        eprintln!("download from port {port} runs to {backend}");
        let removed = removed.get_or_insert_with(|| backend.clone());
        other_seen |= backend != *removed;
        downloads.push((d, backend));
        if other_seen {
            break;
        }
    }
    assert!(other_seen, "16 downloads all went to one backend");
    let removed = removed.expect("a backend to remove");
    let (gone, keep): (Vec<&Host>, Vec<&Host>) = all
        .iter()
        .partition(|b| SocketAddr::new(family.of_host(b), 80).to_string() == removed);
    let gone = gone[0];
    eprintln!("removing {} ({removed})", gone.name);

    let url = url(vip, 80);
    let loops = [
        c.client_loop(&ca, &url, CURL_TIME),
        c.client_loop(&cb, &url, CURL_TIME),
    ];
    for l in &loops {
        l.wait_more(3, WAIT).expect("client loop progress");
    }
    let edited = Instant::now();
    c.write_manifest("web.yaml", &web_manifest(family, &keep))
        .expect("manifest");
    c.wait_backends_ip(vip, 80, Proto::Tcp, Some(&addrs(family, &keep, 80)), WAIT)
        .expect("the removal on every node");
    let updated = Instant::now();
    eprintln!(
        "edit -> every node's maps updated after {:?}",
        updated - edited
    );
    for (d, backend) in &mut downloads {
        assert!(
            d.running(),
            "the download to {backend} ended before the update (it took over 6 s): \
             cannot judge whether established connections survive it"
        );
    }
    // At least 10 requests per client opened after the update.
    for l in &loops {
        l.wait_more(11, WAIT).expect("client loop progress");
    }
    let mut total = 0;
    let mut after = 0;
    for (l, client) in loops.into_iter().zip([&ca, &cb]) {
        let requests = l.stop();
        total += requests.len();
        for r in &requests {
            assert!(
                r.outcome.ok(),
                "a request from {} failed: {:?}",
                client.name,
                r.outcome
            );
            if r.started > updated {
                after += 1;
                assert_ne!(
                    r.outcome.body, gone.name,
                    "a connection opened after the update reached the removed backend"
                );
            }
        }
    }
    eprintln!(
        "{total} requests, none failed; {after} opened after the update, none to {}",
        gone.name
    );
    assert!(after >= 20, "{after} requests after the update");

    for (d, backend) in downloads {
        let port = d.local_port;
        let o = d.finish(Duration::from_secs(60)).expect("download ends");
        assert_eq!(
            (o.exit, o.http_code, o.size),
            (0, 206, bytes),
            "download from port {port} to {backend}: {o:?}"
        );
        eprintln!(
            "download from port {port} to {backend}: complete in {:?}",
            o.elapsed
        );
    }
}

/// No endpoints: refused at once (TCP RST; for UDP ICMP port unreachable,
/// ICMPv6 destination unreachable code 4 over IPv6). Service deleted:
/// connections fail at once with an error, not a timeout.
fn no_endpoints_is_refused_and_a_deleted_service_fails_at_once(family: IpFamily) {
    let prefix = format!("er{}", &family.tag()[3..]);
    let Some(mut c) = cluster(&prefix, 2, &["nginx", "curl", "dig"]) else {
        return;
    };
    let vip = family.plan(VIP);
    let b1 = c.add_pod(1, "b1", pod_addr(1, 10)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    c.nginx(&b1).expect("nginx");
    c.write_manifest("web.yaml", &web_manifest(family, &[&b1]))
        .expect("manifest");
    start_and_wait(&c, vip, 80, Proto::Tcp, &addrs(family, &[&b1], 80));
    let url = url(vip, 80);
    for client in [&ca, &cb] {
        let o = client.curl(&url, CURL_TIME).expect("curl");
        assert!(o.ok() && o.body == "b1", "{o:?}");
    }

    // No endpoints (and a UDP port without endpoints too).
    let dns4 = Ipv4Addr::new(198, 19, 0, 53);
    let dns = family.plan(dns4);
    c.write_manifest("web.yaml", &web_manifest(family, &[]))
        .expect("manifest");
    c.write_manifest(
        "dns.yaml",
        &service_of(family, "dns", dns4, &[Port::udp("dns", 53, 53)], &[]),
    )
    .expect("manifest");
    c.wait_backends_ip(vip, 80, Proto::Tcp, Some(&[]), WAIT)
        .expect("no backends");
    c.wait_backends_ip(dns, 53, Proto::Udp, Some(&[]), WAIT)
        .expect("no backends");
    let limit = Duration::from_secs(10);
    for client in [&ca, &cb] {
        let o = client.curl(&url, limit).expect("curl");
        eprintln!(
            "{}: no endpoints -> curl exit {} after {:?}: {:?}",
            client.name,
            o.exit,
            o.elapsed,
            o.connect_error()
        );
        assert_eq!(o.exit, 7, "{o:?}");
        assert_eq!(o.connect_error(), Some("Connection refused"), "{o:?}");
        let r = client
            .dig(dns, 53, "web.demo", false, Duration::from_secs(5))
            .expect("dig");
        eprintln!(
            "{}: UDP without endpoints -> dig exit {} after {:?}",
            client.name, r.exit, r.elapsed
        );
        assert!(
            r.stdout.contains("connection refused"),
            "dig should report the ICMP port unreachable: {r:?}"
        );
    }

    // Deleted.
    c.remove_manifest("web.yaml").expect("remove");
    c.wait_backends_ip(vip, 80, Proto::Tcp, None, WAIT)
        .expect("service gone");
    for client in [&ca, &cb] {
        let o = client.curl(&url, limit).expect("curl");
        eprintln!(
            "{}: service deleted -> curl exit {} after {:?}: {:?}",
            client.name,
            o.exit,
            o.elapsed,
            o.connect_error()
        );
        // 7: could not connect (an ICMP error from the node), not 28 (timeout).
        assert_eq!(o.exit, 7, "{o:?}");
        assert!(
            matches!(
                o.connect_error(),
                Some("Network is unreachable" | "No route to host" | "Connection refused")
            ),
            "{o:?}"
        );
    }
}

#[test]
fn no_endpoints_is_refused_and_a_deleted_service_fails_at_once_ipv4() {
    no_endpoints_is_refused_and_a_deleted_service_fails_at_once(IpFamily::V4);
}

#[test]
fn no_endpoints_is_refused_and_a_deleted_service_fails_at_once_ipv6() {
    no_endpoints_is_refused_and_a_deleted_service_fails_at_once(IpFamily::V6);
}

/// SIGKILL and restart of the client node's agent (and SIGTERM and restart
/// of the other's) while a client connects in a loop and iperf3 streams
/// through another service: no connection fails, the stream survives, and a
/// change made while the agent was down is applied once it is back.
fn agent_restarts_fail_no_connection_and_keep_a_long_transfer(family: IpFamily) {
    let prefix = format!("ek{}", &family.tag()[3..]);
    let Some(mut c) = cluster(&prefix, 2, &["nginx", "curl", "iperf3"]) else {
        return;
    };
    let vip = family.plan(VIP);
    let b1 = c.add_pod(0, "b1", pod_addr(0, 10)).expect("pod");
    let b2 = c.add_pod(1, "b2", pod_addr(1, 10)).expect("pod");
    let b3 = c.add_pod(1, "b3", pod_addr(1, 11)).expect("pod");
    let perf = c.add_pod(1, "perf", pod_addr(1, 30)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    for b in [&b1, &b2, &b3] {
        c.nginx(b).expect("nginx");
    }
    c.iperf3_server(&perf, 5201).expect("iperf3 server");
    let perf_vip4 = Ipv4Addr::new(198, 19, 0, 20);
    let perf_vip = family.plan(perf_vip4);
    let web = [&b1, &b2, &b3];
    c.write_manifest("web.yaml", &web_manifest(family, &web))
        .expect("manifest");
    // One backend: iperf3's control and data connections must meet.
    c.write_manifest(
        "perf.yaml",
        &service_of(
            family,
            "perf",
            perf_vip4,
            &[Port::tcp("iperf", 5201, 5201)],
            &[&perf],
        ),
    )
    .expect("manifest");
    start_and_wait(&c, vip, 80, Proto::Tcp, &addrs(family, &web, 80));
    c.wait_backends_ip(
        perf_vip,
        5201,
        Proto::Tcp,
        Some(&addrs(family, &[&perf], 5201)),
        WAIT,
    )
    .expect("perf service");

    // A paced stream long enough to span the restarts below (if it is not,
    // the test fails rather than judging nothing).
    let mut iperf = c
        .iperf3_client(&ca, perf_vip, 5201, IPERF_SECONDS, Some("200M"))
        .expect("iperf3 -c");
    let client = c.client_loop(&ca, &url(vip, 80), CURL_TIME);
    let phase = |what: &str| {
        let n = client.wait_more(5, WAIT).expect("client loop progress");
        eprintln!("{n} requests done; {what}");
    };
    phase("SIGKILL node-a's agent");

    // SIGKILL node-a's agent; while it is down, drop b3 from the slice and
    // let traffic flow on the pinned datapath.
    c.kill_agent(0).expect("kill");
    let fewer = [&b1, &b2];
    c.write_manifest("web.yaml", &web_manifest(family, &fewer))
        .expect("manifest");
    phase("start node-a's agent again");
    c.start_agent(0).expect("restart");
    let want: BTreeSet<String> = addrs(family, &fewer, 80)
        .iter()
        .map(ToString::to_string)
        .collect();
    let d = c
        .wait_frontends(
            "node-a to catch up with the change made while it was down",
            WAIT,
            |n, fs| n != 0 || fs.iter().any(|f| f.vip == vip && f.backend_set() == want),
        )
        .expect("catch up");
    eprintln!("restarted agent applied the missed change {d:?} after its start");
    phase("SIGTERM node-b's agent");

    let st = c.terminate_agent(1).expect("terminate");
    eprintln!("node-b's agent exited on SIGTERM: {st}");
    phase("start node-b's agent again");
    c.start_agent(1).expect("start again");
    c.wait_backends_ip(vip, 80, Proto::Tcp, Some(&addrs(family, &fewer, 80)), WAIT)
        .expect("both nodes");
    phase("stop");
    assert!(
        iperf.running(),
        "iperf3 ended before the restarts were done (they took over {IPERF_SECONDS} s): \
         cannot judge whether a stream survives them"
    );

    let requests = client.stop();
    let failed: Vec<_> = requests.iter().filter(|r| !r.outcome.ok()).collect();
    eprintln!(
        "{} requests across the restarts, {} failed",
        requests.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");

    let o = iperf.finish(Duration::from_secs(60)).expect("iperf3 ends");
    eprintln!(
        "iperf3 through {perf_vip}: {} bytes in {:.1} s across both restarts",
        o.bytes_received, o.seconds
    );
    assert!(o.success, "iperf3 failed: {o:?}");
    assert!(o.error.is_none(), "{o:?}");
    assert!(o.bytes_received > 0, "{o:?}");
    assert!(
        o.seconds >= f64::from(IPERF_SECONDS) - 0.5,
        "the stream stopped early: {o:?}"
    );
}

#[test]
fn endpoint_removal_under_load_moves_new_connections_only_ipv4() {
    endpoint_removal_under_load_moves_new_connections_only(IpFamily::V4);
}

#[test]
fn endpoint_removal_under_load_moves_new_connections_only_ipv6() {
    endpoint_removal_under_load_moves_new_connections_only(IpFamily::V6);
}

#[test]
fn agent_restarts_fail_no_connection_and_keep_a_long_transfer_ipv4() {
    agent_restarts_fail_no_connection_and_keep_a_long_transfer(IpFamily::V4);
}

#[test]
fn agent_restarts_fail_no_connection_and_keep_a_long_transfer_ipv6() {
    agent_restarts_fail_no_connection_and_keep_a_long_transfer(IpFamily::V6);
}

/// A Service without a selector, with a hand-written EndpointSlice (an
/// unnamed port, an endpoint with neither conditions nor nodeName) works
/// from both nodes; a remote pod answers. The outside client reaches pods.
#[test]
fn service_without_selector_and_hand_written_slice() {
    let Some(mut c) = cluster("es", 2, &["nginx", "curl"]) else {
        return;
    };
    let ext = c.add_pod(1, "ext", pod_addr(1, 30)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    c.nginx(&ext).expect("nginx");
    let vip = Ipv4Addr::new(198, 19, 0, 80);
    let port = Port::tcp("", 8080, 80).unnamed();
    let text = format!(
        "{}---\n{}",
        service_yaml("demo", "external", vip, std::slice::from_ref(&port), false),
        slice_yaml(
            "demo",
            "external-1",
            "external",
            std::slice::from_ref(&port),
            &[Endpoint::bare(ext.addr)]
        )
    );
    assert!(!text.contains("selector"));
    c.write_manifest("external.yaml", &text).expect("manifest");
    start_and_wait(
        &c,
        vip.into(),
        8080,
        Proto::Tcp,
        &addrs(IpFamily::V4, &[&ext], 80),
    );
    for client in [&ca, &cb] {
        let outcomes = client
            .curl_many(&format!("http://{vip}:8080/"), 10, CURL_TIME)
            .expect("curl");
        for o in outcomes {
            assert!(o.ok() && o.body == "ext", "from {}: {o:?}", client.name);
        }
    }
    // The outside client reaches pods through node-a (for NodePort tests).
    let outside = c.outside().expect("outside client");
    let o = outside
        .curl(&format!("http://{}/", ext.addr), CURL_TIME)
        .expect("curl");
    assert!(o.ok() && o.body == "ext", "from outside: {o:?}");
}

/// The node port of `web` in the restart test.
const NODE_PORT: u16 = 30080;
/// Agent restarts in the restart test.
const RESTARTS: usize = 20;
/// The restart test's download through the cluster IP: bytes and the rate
/// nginx sends them at (so that it lasts the whole restart sequence: each
/// restart takes 1-4 s on a 2-core machine running the whole suite, whose
/// agents load and verify the programs at every start).
const DOWNLOAD_BYTES: u64 = 60_000_000;
/// Bytes per second of that download (about 86 s in all; the file is 64 MiB).
const DOWNLOAD_RATE: u64 = 700_000;
/// Requests each client loop completes between two restarts.
const REQUESTS_BETWEEN: usize = 10;

/// `web` as a NodePort Service (cluster IP [`VIP`], port 80 and node port
/// `node_port` to the pods' 80) and its EndpointSlice with `backends`.
fn node_port_web(node_port: u16, backends: &[&Host]) -> String {
    let ports = [Port::tcp("http", 80, 80)];
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\n\
         spec:\n  type: NodePort\n  clusterIP: {VIP}\n  clusterIPs: [\"{VIP}\"]\n  \
         selector: {{app: web}}\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 80, nodePort: {node_port}}}\n\
         ---\n{}",
        slice_yaml(
            "demo",
            "web-1",
            "web",
            &ports,
            &endpoints(IpFamily::V4, backends)
        )
    )
}

/// Whether `fs` has `vip:port`/TCP (one entry or more) with exactly `want`
/// in every entry.
fn programmed(fs: &[Frontend], vip: Ipv4Addr, port: u16, want: &BTreeSet<String>) -> bool {
    let mut entries = fs
        .iter()
        .filter(|f| f.vip == vip && f.port == port && f.protocol == "tcp")
        .peekable();
    entries.peek().is_some()
        && entries.all(|f| f.backend_set() == *want && f.backends.len() == want.len())
}

/// GETs `url` from `client` until one answers (a path used for the first
/// time: neighbours are resolved, the datapath of a fresh node is ready).
fn first_answer(client: &Host, url: &str) {
    let start = Instant::now();
    loop {
        let o = client.curl(url, CURL_TIME).expect("curl");
        if o.ok() {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{} got no answer from {url} within {WAIT:?}; last: {o:?}",
            client.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One agent restart of the restart test.
struct Restart {
    node: usize,
    signal: &'static str,
    /// When the old agent was signalled.
    stopped: Instant,
    /// When the new agent answered `/readyz` with 200.
    ready: Instant,
}

/// 20 agent restarts alternating between the two nodes, half by SIGTERM
/// and half by SIGKILL (each node gets 5 of each), each waiting for the new
/// agent's `/readyz`, while a pod on node-a opens connections to a cluster
/// IP with backends on both nodes in a loop, the outside client does the
/// same to node-b's node port (two of the three backends are on node-a:
/// node-b's XDP program forwards those, SNATed, across the restarts), and a
/// pod on node-b downloads through the cluster IP at a fixed rate the whole
/// time. No connection fails, the download gets every byte, and 20 new
/// agent processes ran and became ready.
#[test]
fn twenty_agent_restarts_on_both_nodes_fail_no_connection_and_keep_a_long_transfer() {
    let test_start = Instant::now();
    let Some(mut c) = cluster("et", 2, &["nginx", "curl"]) else {
        return;
    };
    let b1 = c.add_pod(0, "b1", pod_addr(0, 10)).expect("pod");
    let b2 = c.add_pod(1, "b2", pod_addr(1, 10)).expect("pod");
    let b3 = c.add_pod(0, "b3", pod_addr(0, 11)).expect("pod");
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let cb = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    let web = [&b1, &b2, &b3];
    for b in web {
        c.nginx(b).expect("nginx");
    }
    c.write_manifest("web.yaml", &node_port_web(NODE_PORT, &web))
        .expect("manifest");
    let want: BTreeSet<String> = addrs(IpFamily::V4, &web, 80)
        .iter()
        .map(ToString::to_string)
        .collect();
    let all_programmed = |n: usize, fs: &[Frontend]| {
        programmed(fs, VIP, 80, &want) && programmed(fs, node_addr(n), NODE_PORT, &want)
    };
    c.start_agents().expect("start agents");
    c.wait_frontends(
        "the cluster IP and the node port on every node",
        WAIT,
        all_programmed,
    )
    .expect("first sync");
    let mut pids = BTreeSet::new();
    for n in 0..2 {
        c.wait_agent_ready(n, WAIT).expect("first agents ready");
        pids.insert(c.agent_pid(n).expect("agent runs"));
    }
    let outside = c.outside().expect("outside client").clone();
    let cluster_url = format!("http://{VIP}/");
    let node_port_url = format!("http://{}:{NODE_PORT}/", node_addr(1));
    first_answer(&ca, &cluster_url);
    first_answer(&outside, &node_port_url);
    eprintln!("cluster ready after {:?}", test_start.elapsed());

    let mut download = c
        .download(
            &cb,
            &format!("http://{VIP}"),
            DOWNLOAD_BYTES,
            DOWNLOAD_RATE,
            41000,
        )
        .expect("download");
    let loops = [
        c.client_loop(&ca, &cluster_url, CURL_TIME),
        c.client_loop(&outside, &node_port_url, CURL_TIME),
    ];
    for l in &loops {
        l.wait_more(3, WAIT).expect("client loop progress");
    }
    let backend = c
        .flow_backend(1, SocketAddrV4::new(cb.addr, download.local_port))
        .expect("conntrack");
    eprintln!("download from cb runs to {backend:?}");

    let restarts_start = Instant::now();
    let mut restarts = Vec::new();
    for i in 0..RESTARTS {
        let node = i % 2;
        let term = (i / 2) % 2 == 0;
        let old = c.agent_pid(node).expect("the agent runs");
        let stopped = Instant::now();
        if term {
            let st = c.terminate_agent(node).expect("SIGTERM");
            assert!(
                st.success(),
                "restart {i}: the agent of node {node} exited with {st} on SIGTERM"
            );
        } else {
            c.kill_agent(node).expect("SIGKILL");
        }
        c.start_agent(node).expect("start again");
        let waited = c
            .wait_agent_ready(node, WAIT)
            .expect("the new agent is ready");
        let ready = Instant::now();
        let pid = c.agent_pid(node).expect("the new agent runs");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "svcnat",
            "restart {i}: pid {pid} is not the agent"
        );
        assert!(pids.insert(pid), "restart {i}: pid {pid} seen before");
        let signal = if term { "SIGTERM" } else { "SIGKILL" };
        eprintln!(
            "restart {i:2}: {signal} node {node} agent {old} -> {pid}, ready after {:?} \
             ({:?} from the signal); requests so far {} / {}",
            waited,
            ready - stopped,
            loops[0].completed(),
            loops[1].completed()
        );
        restarts.push(Restart {
            node,
            signal,
            stopped,
            ready,
        });
        // Both loops go on through the restarted agent's datapath for a
        // while before the next restart.
        for l in &loops {
            l.wait_more(REQUESTS_BETWEEN, WAIT)
                .expect("client loop progress");
        }
    }
    let restarts_took = restarts_start.elapsed();
    assert!(
        download.running(),
        "the download ended before the restarts were done (they took {restarts_took:?}): \
         cannot judge whether a transfer survives them"
    );
    c.wait_frontends("the same maps after the restarts", WAIT, all_programmed)
        .expect("maps after the restarts");

    let mut total = 0;
    for (l, what) in loops
        .into_iter()
        .zip(["ca -> cluster IP", "outside -> node-b node port"])
    {
        let requests = l.stop();
        // Requests started while an agent was stopped or not yet ready.
        let during = requests
            .iter()
            .filter(|r| {
                restarts
                    .iter()
                    .any(|s| r.started >= s.stopped && r.started <= s.ready)
            })
            .count();
        let failed: Vec<String> = requests
            .iter()
            .filter(|r| !r.outcome.ok())
            .map(|r| {
                let near = restarts
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, s)| s.stopped <= r.started)
                    .map(|(k, s)| {
                        format!(
                            "{:?} after restart {k} ({} node {}) was signalled",
                            r.started - s.stopped,
                            s.signal,
                            s.node
                        )
                    })
                    .unwrap_or_else(|| "before the restarts".into());
                format!("[{near}] {:?}", r.outcome)
            })
            .collect();
        let mut answered: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &requests {
            *answered.entry(r.outcome.body.as_str()).or_default() += 1;
        }
        eprintln!(
            "{what}: {} requests, {} failed, {during} started while an agent was down or \
             syncing; answered by {answered:?}",
            requests.len(),
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed:\n{}",
            failed.len(),
            requests.len(),
            failed.join("\n")
        );
        assert!(
            during > 0,
            "{what}: no request started while an agent was down or syncing"
        );
        // Backends on both nodes answered: the node port's requests were
        // forwarded (SNATed) to node-a too, the cluster IP's to node-b.
        assert_eq!(
            answered.keys().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from(["b1", "b2", "b3"]),
            "{what}: answered by {answered:?}"
        );
        total += requests.len();
    }
    assert!(
        total > 200,
        "only {total} requests across {RESTARTS} restarts"
    );

    let o = download
        .finish(Duration::from_secs(120))
        .expect("download ends");
    eprintln!(
        "download through {VIP} to {backend:?}: {} bytes in {:?} (exit {}, HTTP {})",
        o.size, o.elapsed, o.exit, o.http_code
    );
    assert_eq!(
        (o.exit, o.http_code, o.size),
        (0, 206, DOWNLOAD_BYTES),
        "the download across the restarts: {o:?}"
    );
    assert_eq!(pids.len(), 2 + RESTARTS, "agent pids seen: {pids:?}");
    // Every new agent adopted the pinned maps and links (none started over).
    for n in 0..2 {
        let log = c.agent_log(n);
        let starts: Vec<&str> = log.split("---- start ").skip(1).collect();
        assert_eq!(starts.len(), 1 + RESTARTS / 2, "starts on node {n}");
        for (k, start) in starts.iter().enumerate().skip(1) {
            assert!(
                start.contains("adopted pinned state") && !start.contains("frontends=0"),
                "start {} on node {n} did not adopt the pinned maps:\n{start}",
                k + 1
            );
            assert!(
                start.contains("adopted pinned links") && !start.contains(" attached interface="),
                "start {} on node {n} attached anew instead of adopting the links:\n{start}",
                k + 1
            );
        }
    }
    eprintln!(
        "{RESTARTS} restarts in {restarts_took:?}, {total} requests, none failed; test took {:?}",
        test_start.elapsed()
    );
}
