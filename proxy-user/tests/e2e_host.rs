//! End to end from the nodes themselves: processes in a node's own network
//! namespace (kubelet, hostNetwork pods, node agents) reach every kind of
//! Service through the cgroup socket hooks, as kube-proxy serves them from
//! its OUTPUT chain, while pods keep the TC path and processes outside
//! every node (the test runner) are never translated.
//!
//! Mirrors what Kubernetes' e2e network tests ask of host-network clients
//! (networking.go "should function for node-Service", service.go's
//! hostNetwork checks): a cluster IP, this and another node's node port,
//! an external IP and a load-balancer IP, over TCP and UDP, on both
//! families; a Service without endpoints refuses at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, Endpoint, Exposed, Host, IpFamily, Port, Proto, dual_stack_endpoints,
    exposed_service, node_addr, node_addr6, pod_addr, service_with_slices, twin6, url,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const NS: &str = "demo";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const WAIT: Duration = Duration::from_secs(30);
const CURL_TIME: Duration = Duration::from_secs(5);

fn cluster(prefix: &str, programs: &[&str]) -> Option<Cluster> {
    Cluster::for_test(ClusterConfig::new(BIN, 2).prefix(prefix), programs)
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

fn stat(c: &Cluster, node: usize, reason: &str) -> u64 {
    c.stat(node, reason).expect("inspect stats")
}

/// `n` requests from `client` to `url`, each on a new connection: every one
/// answered; the answers by backend.
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
            "request {i} from {} to {url} failed: {o:?}",
            client.name
        );
        *counts.entry(o.body.clone()).or_default() += 1;
    }
    counts
}

/// Polls `url` from `client` until a request succeeds.
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

/// From each node's own namespace, HTTP through a cluster IP reaches the
/// backend on its node and the one on the other node; a connected socket
/// reports the Service as its peer (getpeername). Pod traffic still goes
/// through the TC programs: a pod's requests move their counters and not
/// the socket hooks'.
fn node_processes_reach_a_cluster_ip(family: IpFamily) {
    let prefix = format!("hc{}", &family.tag()[3..]);
    let Some(mut c) = cluster(&prefix, &["nginx", "curl"]) else {
        return;
    };
    let (a1, b1) = nginx_on_each_node(&mut c);
    let ca = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let vip = family.plan(VIP);
    let backends = [&a1, &b1];
    let eps: Vec<Endpoint> = backends
        .iter()
        .map(|p| Endpoint::of_family(p, family))
        .collect();
    c.write_manifest(
        "web.yaml",
        &service_with_slices(NS, "web", &[vip], &[Port::tcp("http", 80, 80)], &eps),
    )
    .expect("manifest");
    c.start_agents().expect("agents");
    let want: Vec<SocketAddr> = backends
        .iter()
        .map(|p| SocketAddr::new(family.of_host(p), 80))
        .collect();
    c.wait_backends_ip(vip, 80, Proto::Tcp, Some(&want), WAIT)
        .expect("programmed");
    let url = url(vip, 80);
    for node in 0..2 {
        let host = c.node_host(node);
        let before = stat(&c, node, "sock_connect");
        let counts = spread(&host, &url, 40);
        eprintln!("from {}: {counts:?}", host.name);
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            BTreeSet::from(["a1".to_string(), "b1".to_string()]),
            "{} reaches the local and the remote backend",
            host.name
        );
        let translated = stat(&c, node, "sock_connect") - before;
        assert!(
            translated >= 40,
            "{}: 40 connects, {translated} counted by the socket hooks",
            host.name
        );
        // getpeername: the Service, not the backend.
        let peer = host
            .spawn(move || {
                let mut s = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), CURL_TIME)?;
                let peer = s.peer_addr()?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok::<_, std::io::Error>((peer, body.contains("200 OK")))
            })
            .join()
            .expect("thread")
            .expect("enter the node")
            .expect("connect");
        assert_eq!(peer, (SocketAddr::new(vip, 80), true), "from {}", host.name);
    }
    // A pod of node-a: the TC path, not the socket hooks.
    let (sock, tc) = (stat(&c, 0, "sock_connect"), stat(&c, 0, "dnat_new"));
    spread(&ca, &url, 20);
    assert_eq!(
        stat(&c, 0, "sock_connect"),
        sock,
        "pods are not translated by the socket hooks"
    );
    assert!(
        stat(&c, 0, "dnat_new") >= tc + 20,
        "pods go through the TC programs"
    );
}

#[test]
fn node_processes_reach_a_cluster_ip_ipv4() {
    node_processes_reach_a_cluster_ip(IpFamily::V4);
}

#[test]
fn node_processes_reach_a_cluster_ip_ipv6() {
    node_processes_reach_a_cluster_ip(IpFamily::V6);
}

/// A DNS query for `name`, type A, id `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The last IPv4 address in the answer of a DNS response to one A query
/// (the record's data: its last four bytes).
fn answer_a(resp: &[u8]) -> Option<Ipv4Addr> {
    let ancount = u16::from_be_bytes([*resp.get(6)?, *resp.get(7)?]);
    if ancount == 0 || resp.len() < 4 {
        return None;
    }
    let n = resp.len();
    Some(Ipv4Addr::new(
        resp[n - 4],
        resp[n - 3],
        resp[n - 2],
        resp[n - 1],
    ))
}

/// From node-a's own namespace, DNS through a cluster IP whose backend is
/// on node-b: dig over UDP and TCP, and an unconnected UDP socket
/// (sendto/recvfrom) that gets its answer from the Service's address
/// (recvmsg), on both families.
#[test]
fn node_processes_resolve_through_a_dns_cluster_ip_over_udp_and_tcp() {
    let Some(mut c) = cluster("hd", &["dnsmasq", "dig"]) else {
        return;
    };
    let d1 = c.add_pod(1, "d1", pod_addr(1, 20)).expect("pod");
    let who = Ipv4Addr::new(198, 18, 255, 1);
    c.dnsmasq(&d1, &[("whoami.test", who)]).expect("dnsmasq");
    let dns4: IpAddr = Ipv4Addr::new(198, 19, 0, 53).into();
    let dns6: IpAddr = IpFamily::V6.plan(Ipv4Addr::new(198, 19, 0, 53));
    let ports = [Port::udp("dns", 53, 53), Port::tcp("dns-tcp", 53, 53)];
    c.write_manifest(
        "dns.yaml",
        &service_with_slices(
            NS,
            "dns",
            &[dns4, dns6],
            &ports,
            &dual_stack_endpoints(&[&d1]),
        ),
    )
    .expect("manifest");
    c.start_agents().expect("agents");
    for (vip, backend) in [(dns4, IpAddr::from(d1.addr)), (dns6, d1.addr6.into())] {
        let want = [SocketAddr::new(backend, 53)];
        c.wait_backends_ip(vip, 53, Proto::Udp, Some(&want), WAIT)
            .expect("programmed");
    }
    let host = c.node_host(0);
    for vip in [dns4, dns6] {
        for tcp in [false, true] {
            let o = host
                .dig(vip, 53, "whoami.test", tcp, Duration::from_secs(3))
                .expect("dig");
            assert_eq!(o.answers, vec![who], "dig @{vip} tcp={tcp}: {o:?}");
        }
        let from = host
            .spawn(move || {
                let any: SocketAddr = match vip {
                    IpAddr::V4(_) => "0.0.0.0:0".parse().expect("addr"),
                    IpAddr::V6(_) => "[::]:0".parse().expect("addr"),
                };
                let s = UdpSocket::bind(any)?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.send_to(&dns_query(7, "whoami.test"), SocketAddr::new(vip, 53))?;
                let mut buf = [0u8; 512];
                let (n, from) = s.recv_from(&mut buf)?;
                Ok::<_, std::io::Error>((from, answer_a(&buf[..n])))
            })
            .join()
            .expect("thread")
            .expect("enter the node")
            .expect("sendto/recvfrom");
        assert_eq!(
            from,
            (SocketAddr::new(vip, 53), Some(who)),
            "recvfrom @{vip}"
        );
    }
    assert!(stat(&c, 0, "sock_sendmsg") >= 2, "unconnected UDP counted");
    assert!(
        stat(&c, 0, "sock_restored") >= 2,
        "answers given the Service's address"
    );
}

/// From node-a's own namespace, on both families: its own node port (on
/// its own address), node-b's node port, an external IP and a
/// load-balancer IP of a Service whose backends are one per node; and the
/// node port of an `externalTrafficPolicy: Local` Service whose only
/// backend is on node-b (traffic from the node itself goes to any
/// endpoint, as kube-proxy does).
#[test]
fn node_processes_reach_node_ports_external_ips_and_load_balancer_ips() {
    let Some(mut c) = cluster("hn", &["nginx", "curl"]) else {
        return;
    };
    let (a1, b1) = nginx_on_each_node(&mut c);
    let vips = [IpAddr::from(VIP), IpFamily::V6.plan(VIP)];
    let ext: [IpAddr; 2] = [
        Ipv4Addr::new(198, 18, 0, 150).into(),
        twin6(Ipv4Addr::new(198, 18, 0, 150)).expect("twin").into(),
    ];
    let lb: [IpAddr; 2] = [
        Ipv4Addr::new(198, 18, 0, 100).into(),
        twin6(Ipv4Addr::new(198, 18, 0, 100)).expect("twin").into(),
    ];
    let ex = Exposed {
        node_port: 30140,
        lb_ips: &lb,
        external_ips: &ext,
        local: false,
    };
    c.write_manifest(
        "web.yaml",
        &exposed_service(NS, "web", &vips, &ex, &dual_stack_endpoints(&[&a1, &b1])),
    )
    .expect("manifest");
    let local_vips = [
        IpAddr::from(Ipv4Addr::new(198, 19, 0, 11)),
        IpFamily::V6.plan(Ipv4Addr::new(198, 19, 0, 11)),
    ];
    let local = Exposed {
        node_port: 30141,
        local: true,
        ..Exposed::default()
    };
    c.write_manifest(
        "local.yaml",
        &exposed_service(
            NS,
            "local",
            &local_vips,
            &local,
            &dual_stack_endpoints(&[&b1]),
        ),
    )
    .expect("manifest");
    c.start_agents().expect("agents");
    let host = c.node_host(0);
    let both = BTreeSet::from(["a1".to_string(), "b1".to_string()]);
    let targets: Vec<(String, BTreeSet<String>)> = [
        (node_addr(0).into(), 30140, &both),
        (node_addr6(0).into(), 30140, &both),
        (node_addr(1).into(), 30140, &both),
        (node_addr6(1).into(), 30140, &both),
        (ext[0], 80, &both),
        (ext[1], 80, &both),
        (lb[0], 80, &both),
        (lb[1], 80, &both),
        (
            node_addr(0).into(),
            30141,
            &BTreeSet::from(["b1".to_string()]),
        ),
        (
            node_addr6(0).into(),
            30141,
            &BTreeSet::from(["b1".to_string()]),
        ),
    ]
    .into_iter()
    .map(|(a, p, w): (IpAddr, u16, &BTreeSet<String>)| (url(a, p), w.clone()))
    .collect();
    for (u, want) in &targets {
        wait_answered(&host, u);
        let counts = spread(&host, u, 30);
        eprintln!("{u}: {counts:?}");
        assert_eq!(
            &counts.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "{u}"
        );
    }
}

/// `connect()` from a node to a Service without endpoints, or to a port
/// its cluster IP does not serve, is refused at once (ECONNREFUSED); a UDP
/// datagram to it fails likewise. And a socket of the test runner, which
/// is outside every node, is never translated.
#[test]
fn node_connects_to_services_without_endpoints_fail_at_once() {
    let Some(c) = cluster("hr", &["curl"]) else {
        return;
    };
    let vip: IpAddr = VIP.into();
    let ports = [Port::tcp("http", 80, 80), Port::udp("dns", 53, 53)];
    c.write_manifest(
        "empty.yaml",
        &service_with_slices(NS, "empty", &[vip], &ports, &[]),
    )
    .expect("manifest");
    c.start_agents().expect("agents");
    let deadline = Instant::now() + WAIT;
    while !c
        .frontends(0)
        .unwrap_or_default()
        .iter()
        .any(|f| f.port == 80 && f.vip == vip)
    {
        assert!(Instant::now() < deadline, "never programmed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let host = c.node_host(0);
    for port in [80, 81] {
        let o = host.curl(&url(vip, port), CURL_TIME).expect("curl");
        assert_eq!(
            o.connect_error(),
            Some("Connection refused"),
            "port {port}: {o:?}"
        );
        assert!(o.elapsed < Duration::from_secs(1), "refused at once: {o:?}");
    }
    let err = host
        .spawn(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            Ok::<_, std::io::Error>(s.send_to(b"x", SocketAddr::new(vip, 53)).err())
        })
        .join()
        .expect("thread")
        .expect("enter the node")
        .expect("bind");
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused),
        "sendto a Service without endpoints"
    );
    assert!(stat(&c, 0, "sock_reject_no_backend") >= 2);
    assert!(stat(&c, 0, "sock_reject_unknown_port") >= 1);

    // The runner's own namespace: a UDP socket bound to lo (so that the
    // kernel connects it without a route and sends nothing) keeps the
    // cluster IP as its peer, and no node counted it.
    let counted: u64 = (0..2).map(|n| stat(&c, n, "sock_connect")).sum();
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    bind_to_lo(&s);
    s.connect(SocketAddr::new(vip, 53)).expect("connect on lo");
    assert_eq!(s.peer_addr().expect("peer"), SocketAddr::new(vip, 53));
    let counted_after: u64 = (0..2).map(|n| stat(&c, n, "sock_connect")).sum();
    assert_eq!(counted, counted_after, "the runner's socket is nobody's");
}

/// `SO_BINDTODEVICE lo`.
fn bind_to_lo(s: &UdpSocket) {
    let dev = b"lo\0";
    // SAFETY: setsockopt reads `dev.len()` bytes of `dev`.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_BINDTODEVICE: {}", std::io::Error::last_os_error());
}

/// A host-side connection loop through a cluster IP while node-a's agent
/// is SIGKILLed and SIGTERMed and started again, twice each: every request
/// answered (the pinned socket hooks keep translating while no agent runs,
/// and a new agent's links replace the old ones without a gap).
#[test]
fn host_connections_survive_agent_restarts() {
    let Some(mut c) = cluster("hk", &["nginx", "curl"]) else {
        return;
    };
    let (a1, b1) = nginx_on_each_node(&mut c);
    let eps = [Endpoint::of(&a1), Endpoint::of(&b1)];
    c.write_manifest(
        "web.yaml",
        &service_with_slices(NS, "web", &[VIP.into()], &[Port::tcp("http", 80, 80)], &eps),
    )
    .expect("manifest");
    c.start_agents().expect("agents");
    let want = [
        SocketAddr::new(a1.addr.into(), 80),
        SocketAddr::new(b1.addr.into(), 80),
    ];
    c.wait_backends_ip(VIP.into(), 80, Proto::Tcp, Some(&want), WAIT)
        .expect("programmed");
    c.wait_agent_ready(0, WAIT).expect("ready");
    let host = c.node_host(0);
    let url = url(VIP, 80);
    wait_answered(&host, &url);
    let first = hook_programs(&c, 0);
    assert_eq!(first.len(), 8, "one pinned link per socket hook: {first:?}");
    let lp = c.client_loop(&host, &url, CURL_TIME);
    lp.wait_more(3, WAIT).expect("loop runs");
    for i in 0..4 {
        if i % 2 == 0 {
            c.kill_agent(0).expect("SIGKILL");
        } else {
            let st = c.terminate_agent(0).expect("SIGTERM");
            assert!(st.success(), "exit on SIGTERM: {st}");
        }
        lp.wait_more(2, WAIT).expect("served while no agent runs");
        c.start_agent(0).expect("start");
        c.wait_agent_ready(0, WAIT).expect("ready again");
        lp.wait_more(3, WAIT).expect("served by the new agent");
    }
    let requests = lp.stop();
    let failed: Vec<_> = requests.iter().filter(|r| !r.outcome.ok()).collect();
    eprintln!(
        "{} requests across 4 restarts, {} failed",
        requests.len(),
        failed.len()
    );
    assert!(requests.len() >= 20, "too few requests: {}", requests.len());
    assert!(failed.is_empty(), "failed across restarts: {failed:?}");
    let after = hook_programs(&c, 0);
    assert_eq!(after.len(), 8, "one pinned link per socket hook: {after:?}");
    assert!(
        after
            .iter()
            .all(|(_, p)| !first.iter().any(|(_, q)| q == p)),
        "the last agent's programs run the hooks: {first:?} then {after:?}"
    );
}

/// The socket hooks pinned on `node` (`svcnat inspect links`): hook and
/// program id, each of a live link scoped to a network namespace.
fn hook_programs(c: &Cluster, node: usize) -> Vec<(String, u64)> {
    let text = c.inspect(node, "links", true).expect("inspect links");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("links JSON");
    rows.iter()
        .filter(|r| r["kind"] == "socket-hook")
        .map(|r| {
            assert!(r["link_id"].as_u64() > Some(0), "{r}");
            assert!(r["netns_cookie"].as_u64() > Some(0), "{r}");
            assert!(
                r["program"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("svcnat_sock")),
                "{r}"
            );
            (
                r["attach"].as_str().unwrap_or_default().to_string(),
                r["program_id"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// What a resolver with one connected UDP socket got at one moment.
#[derive(Debug)]
struct Asked {
    at: Instant,
    answer: Option<Ipv4Addr>,
    error: Option<String>,
}

/// A resolver in node-a's namespace that sends from one connected UDP
/// socket to a DNS cluster IP for 10 s (a query each 50 ms) follows the
/// replacement of the Service's one backend within a second: its socket,
/// translated to the removed backend at `connect()`, is closed under it
/// (ECONNABORTED), and the socket it connects anew reaches the new backend.
#[test]
fn a_connected_udp_socket_of_a_node_follows_the_replacement_of_its_backend() {
    let Some(mut c) = cluster("hu", &["dnsmasq"]) else {
        return;
    };
    let d1 = c.add_pod(0, "d1", pod_addr(0, 20)).expect("pod");
    let d2 = c.add_pod(1, "d2", pod_addr(1, 20)).expect("pod");
    let (who1, who2) = (
        Ipv4Addr::new(198, 18, 255, 1),
        Ipv4Addr::new(198, 18, 255, 2),
    );
    c.dnsmasq(&d1, &[("whoami.test", who1)]).expect("dnsmasq");
    c.dnsmasq(&d2, &[("whoami.test", who2)]).expect("dnsmasq");
    let dns = Ipv4Addr::new(198, 19, 0, 53);
    let manifest = |pod: &Host| {
        service_with_slices(
            NS,
            "dns",
            &[dns.into()],
            &[Port::udp("dns", 53, 53)],
            &[Endpoint::of(pod)],
        )
    };
    c.write_manifest("dns.yaml", &manifest(&d1))
        .expect("manifest");
    c.start_agents().expect("agents");
    let programmed = |pod: &Host| {
        let want = [SocketAddr::new(pod.addr.into(), 53)];
        c.wait_backends_ip(dns.into(), 53, Proto::Udp, Some(&want), WAIT)
            .expect("programmed");
    };
    programmed(&d1);
    let host = c.node_host(0);
    let resolver = host.spawn(move || {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut sock: Option<UdpSocket> = None;
        let mut id = 0u16;
        while start.elapsed() < Duration::from_secs(10) {
            id = id.wrapping_add(1);
            let s = match &sock {
                Some(s) => s,
                None => {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    s.set_read_timeout(Some(Duration::from_millis(200)))?;
                    s.connect(SocketAddr::new(dns.into(), 53))?;
                    sock.insert(s)
                }
            };
            let mut buf = [0u8; 512];
            let r = s
                .send(&dns_query(id, "whoami.test"))
                .and_then(|_| s.recv(&mut buf));
            let at = Instant::now();
            match r {
                Ok(n) => out.push(Asked {
                    at,
                    answer: answer_a(&buf[..n]),
                    error: None,
                }),
                Err(e) => {
                    let timeout = matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                    if !timeout {
                        // What a resolver does with a socket that failed:
                        // a new one.
                        sock = None;
                    }
                    out.push(Asked {
                        at,
                        answer: None,
                        error: Some(e.to_string()),
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok::<_, std::io::Error>(out)
    });
    std::thread::sleep(Duration::from_secs(3));
    c.write_manifest("dns.yaml", &manifest(&d2))
        .expect("manifest");
    programmed(&d2);
    let changed = Instant::now();
    let asked = resolver
        .join()
        .expect("thread")
        .expect("enter the node")
        .expect("resolver");
    let before: Vec<_> = asked.iter().filter(|a| a.at < changed).collect();
    assert!(
        before.iter().filter(|a| a.answer == Some(who1)).count() >= 10,
        "the old backend answered before the change: {before:?}"
    );
    let late: Vec<&Asked> = asked
        .iter()
        .filter(|a| a.at > changed + Duration::from_secs(1))
        .collect();
    assert!(late.len() >= 20, "the resolver kept asking: {}", late.len());
    let wrong: Vec<_> = late.iter().filter(|a| a.answer != Some(who2)).collect();
    eprintln!(
        "{} queries, {} after the change + 1 s; errors around the change: {:?}",
        asked.len(),
        late.len(),
        asked
            .iter()
            .filter_map(|a| a.error.as_deref())
            .collect::<BTreeSet<_>>()
    );
    assert!(
        wrong.is_empty(),
        "a second after the change every answer is the new backend's: {wrong:?}"
    );
}
