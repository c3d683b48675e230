//! End to end on the cluster on one machine (`svcnat_testkit::cluster`): conntrack
//! follows endpoint changes as kube-proxy's cleanup does. A UDP client that
//! keeps sending from one source port is one flow; when its endpoint is
//! replaced, the flow moves to the new endpoint at once instead of staying
//! pinned to the removed one for as long as the client keeps sending.
//! Established TCP flows outlive their service's last endpoint (only new
//! ones are refused), and fragmented UDP replies are translated fragment by
//! fragment so that the client reassembles them. Each test runs once per
//! family, on a single-stack IPv4 and an IPv6 Service (IPv6 twins of the
//! IPv4 addresses: [`IpFamily::plan`]).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, Endpoint, Frontend, Host, IpFamily, Port, Proto, Query, node_addr,
    pod_addr, service_with_slices, service_yaml_ips, slice_yaml_of, url,
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

/// A cluster of two nodes, or None (after printing why) when this machine
/// cannot run it (`programs` are the ones the test needs besides svcnat's).
fn cluster_with(prefix: &str, programs: &[&str]) -> Option<Cluster> {
    Cluster::for_test(ClusterConfig::new(BIN, 2).prefix(prefix), programs)
}

fn cluster(prefix: &str) -> Option<Cluster> {
    cluster_with(prefix, &["dnsmasq", "dig"])
}

/// A cluster prefix of `tag` and the family (`uc4`, `uc6`).
fn prefix(tag: &str, family: IpFamily) -> String {
    format!("{tag}{}", &family.tag()[3..])
}

/// Service `dns` of `family` (cluster IP the twin of [`DNS_VIP`], UDP 53,
/// on `node_port` too when given) and its EndpointSlice with `backend`'s
/// address of the family as its one endpoint.
fn dns(family: IpFamily, node_port: Option<u16>, backend: &Host) -> String {
    let mut port = Port::udp("dns", 53, 53);
    port.node_port = node_port;
    let ports = [port];
    format!(
        "{}---\n{}",
        service_yaml_ips(NS, "dns", &[family.plan(DNS_VIP)], &ports, true),
        slice_yaml_of(
            family,
            NS,
            "dns-1",
            "dns",
            &ports,
            &[Endpoint::of_family(backend, family)],
        )
    )
}

/// Whether node `node`'s frontends show `frontend`/UDP with exactly
/// `backend` (its address of the frontend's family).
fn shows(fs: &[Frontend], frontend: (IpAddr, u16), backend: &Host) -> bool {
    let want: BTreeSet<String> =
        [SocketAddr::new(backend.addr_for(frontend.0), 53).to_string()].into();
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
    frontend: (IpAddr, u16),
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
        "{} -> {} (queries, old answers, new answers): before the map update {:?}, \
         in the second after it {:?}, later {:?}",
        client.name,
        SocketAddr::from(frontend),
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
fn a_udp_flow_to_a_cluster_ip_moves_when_its_endpoint_is_replaced(family: IpFamily) {
    let Some(mut c) = cluster(&prefix("uc", family)) else {
        return;
    };
    let old = c.add_pod(0, "d-old", pod_addr(0, 20)).expect("pod");
    let new = c.add_pod(1, "d-new", pod_addr(1, 20)).expect("pod");
    let client = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    let frontend = (family.plan(DNS_VIP), 53);
    let manifest = |b: &Host| dns(family, None, b);
    endpoint_replaced_under_a_udp_flow(&c, &client, frontend, 0, manifest, &old, &new);
}

#[test]
fn a_udp_flow_to_a_cluster_ip_moves_when_its_endpoint_is_replaced_ipv4() {
    a_udp_flow_to_a_cluster_ip_moves_when_its_endpoint_is_replaced(IpFamily::V4);
}

#[test]
fn a_udp_flow_to_a_cluster_ip_moves_when_its_endpoint_is_replaced_ipv6() {
    a_udp_flow_to_a_cluster_ip_moves_when_its_endpoint_is_replaced(IpFamily::V6);
}

/// NodePort from the outside client through node-a, with both endpoints on
/// node-b: the flow is DNATed and SNATed at node-a's XDP.
fn a_snated_udp_flow_to_a_node_port_moves_when_its_endpoint_is_replaced(family: IpFamily) {
    let Some(mut c) = cluster(&prefix("un", family)) else {
        return;
    };
    let old = c.add_pod(1, "d-old", pod_addr(1, 20)).expect("pod");
    let new = c.add_pod(1, "d-new", pod_addr(1, 21)).expect("pod");
    let manifest = |b: &Host| dns(family, Some(NODE_PORT), b);
    let client = c.outside().expect("outside client").clone();
    endpoint_replaced_under_a_udp_flow(
        &c,
        &client,
        (family.plan(node_addr(0)), NODE_PORT),
        0,
        manifest,
        &old,
        &new,
    );
}

#[test]
fn a_snated_udp_flow_to_a_node_port_moves_when_its_endpoint_is_replaced_ipv4() {
    a_snated_udp_flow_to_a_node_port_moves_when_its_endpoint_is_replaced(IpFamily::V4);
}

#[test]
fn a_snated_udp_flow_to_a_node_port_moves_when_its_endpoint_is_replaced_ipv6() {
    a_snated_udp_flow_to_a_node_port_moves_when_its_endpoint_is_replaced(IpFamily::V6);
}

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 80);
/// The slow download: 10 KiB at 2,000 bytes/s (nginx's `limit_rate`), ~4 s.
const SLOW_BYTES: u64 = 10 << 10;
const SLOW_RATE: u64 = 2_000;
/// The download's fixed source port (names its flow in conntrack).
const SLOW_PORT: u16 = 41080;

/// Issue 11: the only endpoint of a ClusterIP becomes not ready while a pod
/// downloads from it. It stays in its EndpointSlice with `ready: false`
/// and `serving: false` (a running pod failing its readiness probe, the
/// usual way a service loses its last endpoint while connections to it are
/// open; `serving: false` keeps the serving-terminating fallback out).
/// Once the maps show no backend, a new connection is refused at once, as
/// kube-proxy rejects only `ctstate NEW`, while the download completes to
/// the last byte. (Looking up the service before conntrack, svcnat used to
/// reset the established flow too: curl failed with "Connection reset by
/// peer" after 8 of the 10 KiB.)
fn an_established_flow_survives_its_service_dropping_to_zero_endpoints(family: IpFamily) {
    let Some(mut c) = cluster_with(&prefix("ez", family), &["nginx", "curl"]) else {
        return;
    };
    let backend = c.add_pod(1, "web", pod_addr(1, 30)).expect("pod");
    let client = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    c.nginx(&backend).expect("nginx");
    let vip = family.plan(WEB_VIP);
    let ports = [Port::tcp("http", 80, 80)];
    let manifest = |e: Endpoint| service_with_slices(NS, "web", &[vip], &ports, &[e]);
    let endpoint = Endpoint::of_family(&backend, family);
    c.write_manifest("web.yaml", &manifest(endpoint.clone()))
        .expect("manifest");
    c.start_agents().expect("start agents");
    let to = SocketAddr::new(family.of_host(&backend), 80);
    c.wait_backends_ip(vip, 80, Proto::Tcp, Some(&[to]), WAIT)
        .expect("first sync");

    let base = format!("http://{}", SocketAddr::new(vip, 80));
    let mut download = c
        .download(&client, &base, SLOW_BYTES, SLOW_RATE, SLOW_PORT)
        .expect("download");
    let flow = SocketAddr::new(family.of_host(&client), SLOW_PORT);
    let t = Instant::now();
    while c.flow_backend(0, flow).expect("conntrack").is_none() {
        assert!(t.elapsed() < WAIT, "the download's flow never showed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Into the transfer.
    std::thread::sleep(Duration::from_secs(1));
    assert!(download.running(), "the download ended before the change");

    c.write_manifest("web.yaml", &manifest(endpoint.not_ready()))
        .expect("manifest");
    c.wait_backends_ip(vip, 80, Proto::Tcp, Some(&[]), WAIT)
        .expect("no backend on every node");
    assert!(
        download.running(),
        "the download ended before every node's maps showed no backend: cannot judge \
         whether the established flow survives"
    );

    let limit = Duration::from_secs(10);
    let o = client.curl(&url(vip, 80), limit).expect("curl");
    eprintln!(
        "no ready endpoint -> new connection: curl exit {} after {:?}: {:?}",
        o.exit,
        o.elapsed,
        o.connect_error()
    );
    assert_eq!(o.exit, 7, "a new connection must be refused: {o:?}");
    assert_eq!(o.connect_error(), Some("Connection refused"), "{o:?}");

    let d = download.finish(WAIT).expect("the download ends");
    eprintln!(
        "the established download: exit {}, HTTP {}, {} of {SLOW_BYTES} bytes in {:?}",
        d.exit, d.http_code, d.size, d.elapsed
    );
    assert_eq!(
        (d.exit, d.http_code, d.size),
        (0, 206, SLOW_BYTES),
        "the established download must complete: {}",
        d.stderr
    );
}

#[test]
fn an_established_flow_survives_its_service_dropping_to_zero_endpoints_ipv4() {
    an_established_flow_survives_its_service_dropping_to_zero_endpoints(IpFamily::V4);
}

#[test]
fn an_established_flow_survives_its_service_dropping_to_zero_endpoints_ipv6() {
    an_established_flow_survives_its_service_dropping_to_zero_endpoints(IpFamily::V6);
}

const UDP_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 90);
const UDP_PORT: u16 = 9000;
const UDP_TARGET: u16 = 9009;
/// The reply's size: with the harness's 1500-byte MTU (veths' default),
/// the backend's stack sends it in three fragments.
const REPLY_BYTES: usize = 4000;

/// The reply's bytes (a pattern, so that misplaced fragments show).
fn reply() -> Vec<u8> {
    (0..REPLY_BYTES).map(|i| (i % 251) as u8).collect()
}

/// One datagram, or None when none came within the socket's read timeout.
/// A wait interrupted by a signal starts again: the test process catches
/// some (glibc's internal one among them), and on a socket with a timeout
/// the kernel returns EINTR even under SA_RESTART (seen under load).
fn recv_within(s: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Option<(usize, SocketAddr)>> {
    loop {
        match s.recv_from(buf) {
            Ok(got) => return Ok(Some(got)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A UDP server in a pod answering every datagram with [`reply`], from a
/// thread in the pod's namespace; stopped on drop.
struct UdpServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<std::io::Result<std::io::Result<()>>>>,
}

impl UdpServer {
    fn start(c: &Cluster, pod: &Host, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = pod.spawn(move || -> std::io::Result<()> {
            // [::] takes datagrams of both families.
            let s = UdpSocket::bind(("::", port))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let body = reply();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Some((_, peer)) = recv_within(&s, &mut buf)? {
                    s.send_to(&body, peer)?;
                }
            }
            Ok(())
        });
        c.wait_listening(pod, Proto::Udp, port)
            .expect("the UDP server listens");
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Datagrams of `family` reassembled in `host`'s namespace so far
/// (`ReasmOKs` of /proc/net/snmp, `Ip6ReasmOKs` of /proc/net/snmp6).
fn reassembled(host: &Host, family: IpFamily) -> u64 {
    let file = match family {
        IpFamily::V4 => "/proc/net/snmp",
        IpFamily::V6 => "/proc/net/snmp6",
    };
    let out = host
        .command("cat")
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("read {file}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let found = match family {
        IpFamily::V4 => {
            let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
            let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
                panic!("no Ip lines in {file}: {text}");
            };
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == "ReasmOKs")
                .map(|(_, v)| v.to_string())
        }
        IpFamily::V6 => text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("Ip6ReasmOKs")).then(|| w.next().unwrap_or_default().to_string())
        }),
    };
    found
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no reassembly count in {file}: {text}"))
}

/// `client` sends a small request to the ClusterIP whose only backend is
/// `backend` (a UDP server answering with [`REPLY_BYTES`] bytes); the
/// client must get the whole reply, reassembled from its fragments, from
/// the ClusterIP's address and port.
fn a_large_udp_reply_reassembles_at_the_client(
    c: &Cluster,
    family: IpFamily,
    client: &Host,
    backend: &Host,
) {
    let _server = UdpServer::start(c, backend, UDP_TARGET);
    let vip = family.plan(UDP_VIP);
    c.write_manifest(
        "udp.yaml",
        &service_with_slices(
            NS,
            "big",
            &[vip],
            &[Port::udp("big", UDP_PORT, UDP_TARGET)],
            &[Endpoint::of_family(backend, family)],
        ),
    )
    .expect("manifest");
    c.start_agents().expect("start agents");
    c.wait_backends_ip(
        vip,
        UDP_PORT,
        Proto::Udp,
        Some(&[SocketAddr::new(family.of_host(backend), UDP_TARGET)]),
        WAIT,
    )
    .expect("first sync");

    let before = reassembled(client, family);
    let any = match family {
        IpFamily::V4 => "0.0.0.0",
        IpFamily::V6 => "::",
    };
    let got = client
        .spawn(move || -> std::io::Result<Vec<(Vec<u8>, SocketAddr)>> {
            let s = UdpSocket::bind((any, 0))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            // A few tries, for a first datagram lost to neighbour discovery.
            for _ in 0..3 {
                s.send_to(b"big?", (vip, UDP_PORT))?;
                if let Some((n, from)) = recv_within(&s, &mut buf)? {
                    got.push((buf[..n].to_vec(), from));
                    break;
                }
            }
            Ok(got)
        })
        .join()
        .expect("the client thread")
        .expect("enter the client's namespace")
        .expect("the client's socket");
    let after = reassembled(client, family);
    eprintln!(
        "{} -> {} (backend {} on {}): replies {:?}; datagrams reassembled at the client: {}",
        client.name,
        SocketAddr::new(vip, UDP_PORT),
        family.of_host(backend),
        backend.node_name().unwrap_or_default(),
        got.iter().map(|(b, f)| (b.len(), *f)).collect::<Vec<_>>(),
        after - before
    );
    let Some((body, from)) = got.first() else {
        let node = client.node.unwrap_or(0);
        let show = |what| {
            c.inspect(node, what, false)
                .unwrap_or_else(|e| format!("{e:#}"))
        };
        panic!(
            "no reply in 3 tries of 3 s; the client's node shows\n{}\n{}",
            show("conntrack"),
            show("stats")
        );
    };
    assert_eq!(*from, SocketAddr::new(vip, UDP_PORT), "the reply's source");
    assert_eq!(body.len(), REPLY_BYTES, "the reply's size");
    assert!(*body == reply(), "the reply's bytes differ");
    assert!(
        after > before,
        "the reply should have reached the client in fragments (ReasmOKs {before} -> {after})"
    );
}

/// Issue 11: the backend is on the other node; its node forwards the
/// fragments to the client's node, whose TC egress translates every
/// fragment (later ones carry no ports). (Before the fix the client got
/// nothing: its reassembly never completed.)
/// (IPv6: the backend's stack fragments with a fragment header; routers
/// never do.)
fn a_large_udp_reply_from_a_remote_backend_reassembles_at_the_client(family: IpFamily) {
    let Some(mut c) = cluster_with(&prefix("ef", family), &[]) else {
        return;
    };
    let backend = c.add_pod(1, "big", pod_addr(1, 40)).expect("pod");
    let client = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    a_large_udp_reply_reassembles_at_the_client(&c, family, &client, &backend);
}

#[test]
fn a_large_udp_reply_from_a_remote_backend_reassembles_at_the_client_ipv4() {
    a_large_udp_reply_from_a_remote_backend_reassembles_at_the_client(IpFamily::V4);
}

#[test]
fn a_large_udp_reply_from_a_remote_backend_reassembles_at_the_client_ipv6() {
    a_large_udp_reply_from_a_remote_backend_reassembles_at_the_client(IpFamily::V6);
}

/// The control: the backend is on the client's node.
fn a_large_udp_reply_from_a_local_backend_reassembles_at_the_client(family: IpFamily) {
    let Some(mut c) = cluster_with(&prefix("eg", family), &[]) else {
        return;
    };
    let backend = c.add_pod(0, "big", pod_addr(0, 40)).expect("pod");
    let client = c.add_pod(0, "ca", pod_addr(0, 100)).expect("pod");
    a_large_udp_reply_reassembles_at_the_client(&c, family, &client, &backend);
}

#[test]
fn a_large_udp_reply_from_a_local_backend_reassembles_at_the_client_ipv4() {
    a_large_udp_reply_from_a_local_backend_reassembles_at_the_client(IpFamily::V4);
}

#[test]
fn a_large_udp_reply_from_a_local_backend_reassembles_at_the_client_ipv6() {
    a_large_udp_reply_from_a_local_backend_reassembles_at_the_client(IpFamily::V6);
}
