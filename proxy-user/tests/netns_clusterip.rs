//! Real TCP and UDP through a ClusterIP: a node namespace with a bridge, a
//! client pod and two backend pods as namespaces behind veths, the svcnat
//! programs attached to the pod veths, the maps written by the `dataplane`
//! module. Everything on 198.18.0.0/15, inside namespaces this test creates.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use proxy_common::Reason;
use svcnat::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Frontend, MapSizes, ServiceOpts, cleanup,
};
use svcnat_testkit::{
    netns::{NetNs, unique_tag, veth},
    skip::Needs,
    skip_unless,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const GW: &str = "198.18.0.1";
/// The hairpin address the tests set (inside 198.18.0.0/15).
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);

struct Topology {
    node: NetNs,
    client: NetNs,
    backends: Vec<(NetNs, Ipv4Addr)>,
    bpffs: std::path::PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = cleanup(&self.bpffs);
    }
}

fn topology() -> Topology {
    let t = unique_tag();
    let node = NetNs::new(&format!("sn-node-{t}")).expect("node ns");
    node.ip(&["link", "add", "br0", "type", "bridge"])
        .expect("bridge");
    node.ip(&["addr", "add", &format!("{GW}/24"), "dev", "br0"])
        .expect("gw addr");
    node.ip(&["link", "set", "br0", "up"]).expect("br up");
    node.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    node.sysctl("net.ipv4.conf.all.send_redirects", "0")
        .expect("no redirects");
    node.sysctl("net.ipv4.conf.br0.send_redirects", "0")
        .expect("no redirects");
    let pod = |name: &str, addr: Ipv4Addr| -> NetNs {
        let ns = NetNs::new(&format!("sn-{name}-{t}")).expect("pod ns");
        let host = format!("vh{name}");
        veth(&node, &host, &ns, "eth0").expect("veth");
        node.ip(&["link", "set", &host, "master", "br0"])
            .expect("enslave");
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])
            .expect("pod addr");
        ns.ip(&["route", "add", "default", "via", GW])
            .expect("pod route");
        ns
    };
    let client = pod("c", Ipv4Addr::new(198, 18, 0, 10));
    let b1 = Ipv4Addr::new(198, 18, 0, 11);
    let b2 = Ipv4Addr::new(198, 18, 0, 12);
    let backends = vec![(pod("b1", b1), b1), (pod("b2", b2), b2)];
    let bpffs = std::path::PathBuf::from(format!("/sys/fs/bpf/svcnat-netns-{t}"));
    Topology {
        node,
        client,
        backends,
        bpffs,
    }
}

/// A TCP server answering each connection with its name, and a UDP server
/// answering each datagram with its name, until `stop`.
fn serve(ns: &NetNs, name: &'static str, stop: Arc<AtomicBool>) {
    serve_tcp(ns, stop.clone(), move |_| name.to_string());
    drop(ns.spawn(move || {
        let u = UdpSocket::bind("0.0.0.0:5353").expect("bind udp");
        u.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(name.as_bytes(), from);
            }
        }
    }));
}

fn tcp_request(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"hello")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sends one datagram from a fresh socket; returns the reply and the address
/// it came from.
fn udp_request(addr: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let u = UdpSocket::bind("0.0.0.0:0")?;
    u.set_read_timeout(Some(Duration::from_secs(3)))?;
    u.connect(addr)?;
    u.send(b"q")?;
    let mut buf = [0u8; 64];
    let n = u.recv(&mut buf)?;
    Ok((
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        u.peer_addr()?,
    ))
}

#[test]
fn tcp_and_udp_through_a_cluster_ip_between_namespaces() {
    skip_unless!(Needs::netns());
    let topo = topology();
    let stop = Arc::new(AtomicBool::new(false));
    serve(&topo.backends[0].0, "b1", stop.clone());
    serve(&topo.backends[1].0, "b2", stop.clone());

    // Program the datapath from inside the node namespace.
    let bpffs = topo.bpffs.clone();
    let backends: Vec<Ipv4Addr> = topo.backends.iter().map(|(_, a)| *a).collect();
    let dp = topo
        .node
        .run(move || {
            let cfg = DataplaneConfig {
                bpffs,
                sizes: MapSizes {
                    conntrack: 65_536,
                    ..MapSizes::default()
                },
            };
            let mut dp = Dataplane::open(&cfg).expect("open dataplane");
            let pattern = glob::Pattern::new("vh*").expect("glob");
            let report = dp.attach_matching(&[pattern]).expect("attach");
            assert!(
                report.failed.is_empty(),
                "attach failures: {:?}",
                report.failed
            );
            assert_eq!(report.attached.len(), 3, "{report:?}");
            let specs: Vec<BackendSpec> = backends
                .iter()
                .map(|a| BackendSpec {
                    addr: (*a).into(),
                    port: 8080,
                    flags: 0,
                })
                .collect();
            dp.upsert_service(
                Frontend {
                    addr: VIP.into(),
                    port: 80,
                    proto: 6,
                },
                &specs,
                &opts(0),
            )
            .expect("tcp service");
            let udp: Vec<BackendSpec> = backends
                .iter()
                .map(|a| BackendSpec {
                    addr: (*a).into(),
                    port: 5353,
                    flags: 0,
                })
                .collect();
            dp.upsert_service(
                Frontend {
                    addr: VIP.into(),
                    port: 53,
                    proto: 17,
                },
                &udp,
                &opts(0),
            )
            .expect("udp service");
            // A port whose service has no endpoints.
            dp.upsert_service(
                Frontend {
                    addr: VIP.into(),
                    port: 81,
                    proto: 6,
                },
                &[],
                &opts(0),
            )
            .expect("empty tcp service");
            dp.upsert_service(
                Frontend {
                    addr: VIP.into(),
                    port: 54,
                    proto: 17,
                },
                &[],
                &opts(0),
            )
            .expect("empty udp service");
            dp
        })
        .expect("node thread");

    let results = topo
        .client
        .run(|| {
            let mut tcp: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..40 {
                let who = tcp_request(SocketAddr::from((VIP, 80))).expect("tcp via ClusterIP");
                *tcp.entry(who).or_default() += 1;
            }
            let mut udp: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..20 {
                let (who, from) =
                    udp_request(SocketAddr::from((VIP, 53))).expect("udp via ClusterIP");
                assert_eq!(
                    from,
                    SocketAddr::from((VIP, 53)),
                    "reply must come from the VIP"
                );
                *udp.entry(who).or_default() += 1;
            }
            // Rejects: refused at once, not timed out.
            let no_backend = tcp_request(SocketAddr::from((VIP, 81))).expect_err("no endpoints");
            let unknown_port =
                tcp_request(SocketAddr::from((VIP, 9999))).expect_err("unknown port");
            let udp_no_backend =
                udp_request(SocketAddr::from((VIP, 54))).expect_err("no endpoints");
            (
                tcp,
                udp,
                no_backend.kind(),
                unknown_port.kind(),
                udp_no_backend.kind(),
            )
        })
        .expect("client thread");
    stop.store(true, Ordering::Relaxed);

    let (tcp, udp, no_backend, unknown_port, udp_no_backend) = results;
    assert_eq!(tcp.values().sum::<u32>(), 40);
    assert!(
        tcp.contains_key("b1") && tcp.contains_key("b2"),
        "both backends answer TCP: {tcp:?}"
    );
    assert_eq!(udp.values().sum::<u32>(), 20);
    assert!(
        udp.contains_key("b1") && udp.contains_key("b2"),
        "both backends answer UDP: {udp:?}"
    );
    assert_eq!(no_backend, ErrorKind::ConnectionRefused);
    assert_eq!(unknown_port, ErrorKind::ConnectionRefused);
    assert_eq!(udp_no_backend, ErrorKind::ConnectionRefused);

    let stats: BTreeMap<&str, u64> = dp
        .stats()
        .expect("stats")
        .into_iter()
        .map(|(r, v)| (r.name(), v.packets))
        .collect();
    assert!(stats[Reason::DnatNew.name()] >= 60, "{stats:?}");
    assert!(stats[Reason::DnatEstablished.name()] >= 40, "{stats:?}");
    assert!(stats[Reason::RevnatReply.name()] >= 60, "{stats:?}");
    assert!(stats[Reason::RejectNoBackend.name()] >= 2, "{stats:?}");
    assert!(stats[Reason::RejectUnknownPort.name()] >= 1, "{stats:?}");
    drop(dp);
}

fn opts(affinity_timeout: u32) -> ServiceOpts {
    ServiceOpts {
        affinity_timeout,
        label: String::new(),
    }
}

/// The dataplane on `bpffs`, attached to every pod veth (run it in the
/// node namespace).
fn open_attached(bpffs: std::path::PathBuf) -> Dataplane {
    let cfg = DataplaneConfig {
        bpffs,
        sizes: MapSizes {
            conntrack: 65_536,
            ..MapSizes::default()
        },
    };
    let mut dp = Dataplane::open(&cfg).expect("open dataplane");
    let pattern = glob::Pattern::new("vh*").expect("glob");
    let report = dp.attach_matching(&[pattern]).expect("attach");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    dp
}

/// Answers each connection with the address it saw the client at, until
/// `stop`.
fn serve_peer(ns: &NetNs, stop: Arc<AtomicBool>) {
    serve_tcp(ns, stop, |peer| peer.to_string());
}

/// A TCP server on port 8080 answering each connection with
/// `answer(client address)` once it sent something, until `stop`.
fn serve_tcp(
    ns: &NetNs,
    stop: Arc<AtomicBool>,
    answer: impl Fn(SocketAddr) -> String + Send + 'static,
) {
    drop(ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind tcp");
        l.set_nonblocking(true).expect("nonblocking");
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(answer(peer).as_bytes());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }));
}

/// A TCP socket bound to `local` with SO_REUSEADDR (so that two sockets can
/// share one local port towards different destinations), connected to `to`.
fn connect_from(local: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&local.into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(3))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(s)
}

/// Two Services sharing one backend, and one client socket port used for
/// both (as Linux does when the destinations differ): the backend must see
/// two connections, so svcnat remaps the second one's source port, as
/// netfilter's NAT clash resolution does. Without that the second SYN would
/// hit the first connection at the backend and the connect would time out.
#[test]
fn one_client_port_to_two_services_sharing_a_backend() {
    skip_unless!(Needs::netns());
    let topo = topology();
    let stop = Arc::new(AtomicBool::new(false));
    serve_peer(&topo.backends[0].0, stop.clone());
    let vip2 = Ipv4Addr::new(198, 19, 0, 11);
    let bpffs = topo.bpffs.clone();
    let backend = topo.backends[0].1;
    let dp = topo
        .node
        .run(move || {
            let mut dp = open_attached(bpffs);
            let spec = [BackendSpec {
                addr: backend.into(),
                port: 8080,
                flags: 0,
            }];
            for vip in [VIP, vip2] {
                dp.upsert_service(
                    Frontend {
                        addr: vip.into(),
                        port: 80,
                        proto: 6,
                    },
                    &spec,
                    &opts(0),
                )
                .expect("service");
            }
            dp
        })
        .expect("node thread");

    let local = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 10), 45_000));
    let seen = topo
        .client
        .run(move || -> std::io::Result<Vec<(SocketAddr, String)>> {
            // Both connections open at once, from the same port.
            let mut a = connect_from(local, SocketAddr::from((VIP, 80)))?;
            let mut b = connect_from(local, SocketAddr::from((vip2, 80)))?;
            let mut out = Vec::new();
            for s in [&mut a, &mut b] {
                s.write_all(b"hello")?;
                let mut seen = String::new();
                s.read_to_string(&mut seen)?;
                out.push((s.peer_addr()?, seen));
            }
            Ok(out)
        })
        .expect("client thread")
        .expect("both connections through one client port");
    stop.store(true, Ordering::Relaxed);

    assert_eq!(seen[0].0, SocketAddr::from((VIP, 80)));
    assert_eq!(seen[1].0, SocketAddr::from((vip2, 80)));
    let first: SocketAddr = seen[0].1.parse().expect("first peer");
    let second: SocketAddr = seen[1].1.parse().expect("second peer");
    assert_eq!(first, local, "the first connection keeps its port");
    assert_eq!(second.ip(), local.ip(), "the client address is kept");
    assert!(
        second.port() != local.port()
            && (proxy_common::REMAP_PORT_MIN..=proxy_common::REMAP_PORT_MAX)
                .contains(&second.port()),
        "the second connection's port is remapped: {second}"
    );
    let remapped = dp
        .stats()
        .expect("stats")
        .into_iter()
        .find(|(r, _)| *r == Reason::DnatNewPortRemapped)
        .map_or(0, |(_, v)| v.packets);
    assert_eq!(remapped, 1, "one new flow remapped");
    drop(dp);
}

/// A pod that is the backend of a service it calls (hairpin): the backend
/// would see a packet from its own address, which its stack drops. The
/// connection must work, and the pod must see it from an address that is
/// not its own.
#[test]
fn a_pod_reaches_a_service_that_selects_it() {
    skip_unless!(Needs::netns());
    let topo = topology();
    let stop = Arc::new(AtomicBool::new(false));
    serve_peer(&topo.backends[0].0, stop.clone());
    let bpffs = topo.bpffs.clone();
    let backend = topo.backends[0].1;
    let dp = topo
        .node
        .run(move || {
            let mut dp = open_attached(bpffs);
            dp.set_hairpin_address(HAIRPIN).expect("hairpin address");
            dp.upsert_service(
                Frontend {
                    addr: VIP.into(),
                    port: 80,
                    proto: 6,
                },
                &[BackendSpec {
                    addr: backend.into(),
                    port: 8080,
                    flags: 0,
                }],
                &opts(0),
            )
            .expect("service");
            dp
        })
        .expect("node thread");
    let seen = topo.backends[0]
        .0
        .run(move || -> std::io::Result<Vec<(SocketAddr, String)>> {
            let mut out = Vec::new();
            for _ in 0..5 {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((VIP, 80)),
                    Duration::from_secs(3),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.write_all(b"hello")?;
                let mut seen = String::new();
                s.read_to_string(&mut seen)?;
                out.push((s.peer_addr()?, seen));
            }
            Ok(out)
        })
        .expect("pod thread")
        .expect("the pod reaches its own service");
    stop.store(true, Ordering::Relaxed);
    for (peer, seen) in &seen {
        assert_eq!(*peer, SocketAddr::from((VIP, 80)), "answered from the VIP");
        let seen: SocketAddr = seen.parse().expect("peer address");
        assert_eq!(
            seen.ip(),
            std::net::IpAddr::V4(HAIRPIN),
            "the backend sees the hairpin address"
        );
    }
    drop(dp);
}

/// Packets counted under `reason` by `dp`.
fn passed_under(dp: &Dataplane, reason: Reason) -> u64 {
    dp.stats()
        .expect("stats")
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, v)| v.packets)
}

/// svcnat passes packets with `TCX_NEXT`, so that a program attached after
/// it on the same hook (a CNI's bandwidth shaping, say) still runs. A
/// second svcnat dataplane attached after the first on the same pod veths
/// stands in for that program: it must see every packet the first passed.
#[test]
fn programs_attached_after_svcnat_still_run() {
    skip_unless!(Needs::netns());
    let topo = topology();
    let second = std::path::PathBuf::from(format!("{}-after", topo.bpffs.display()));
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = cleanup(&self.0);
        }
    }
    let _second_pins = Pins(second.clone());
    let first = topo.bpffs.clone();
    let (a, b) = topo
        .node
        .run(move || (open_attached(first), open_attached(second)))
        .expect("attach in the node namespace");
    let stop = Arc::new(AtomicBool::new(false));
    let (b1_ns, b1) = &topo.backends[0];
    serve(b1_ns, "b1", stop.clone());
    let (a0, b0) = (
        passed_under(&a, Reason::PassNotService),
        passed_under(&b, Reason::PassNotService),
    );
    // Straight to a pod, no service: svcnat has nothing to say.
    let to = SocketAddr::from((*b1, 8080));
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(Ok(s)) = topo.client.run(move || tcp_request(to)) {
            answer = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(answer.as_deref(), Some("b1"), "the pod answers directly");
    let first_saw = passed_under(&a, Reason::PassNotService) - a0;
    let second_saw = passed_under(&b, Reason::PassNotService) - b0;
    assert!(
        first_saw >= 6,
        "svcnat saw {first_saw} packets of the exchange"
    );
    assert_eq!(
        second_saw, first_saw,
        "the program attached after svcnat saw {second_saw} of the {first_saw} packets svcnat passed"
    );
}
