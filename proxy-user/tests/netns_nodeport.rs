//! Real TCP through a NodePort: an outside client, node 1 (the node programs
//! on its eth0, a local backend pod behind a bridge) and node 2 (a remote
//! backend pod, no svcnat), all namespaces this test creates, joined by a
//! bridge in a "lan" namespace. Everything on 198.18.0.0/15.
//!
//! - local backend: client -> node1:30080 is DNATed at XDP, the pod sees the
//!   client's address, its reply leaves node 1 as node1:30080 (TC egress);
//! - remote backend: client -> node1:30081 is DNATed and SNATed to node 1's
//!   address and a port of 61000-65535, node 2's pod answers node 1, whose
//!   XDP sends the reply back to the client as node1:30081.
//!
//! The client's and node 2's veths get TX checksum offload turned off: XDP
//! sees frames as a wire delivers them, with complete checksums.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use proxy_common::{BACKEND_FLAG_LOCAL, Reason, SVC_FLAG_EXTERNAL, SVC_FLAG_NODE_PORT};
use svcnat::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Frontend, FrontendSpec, MapSizes, ServiceOpts, cleanup,
};
use svcnat_testkit::{
    netns::{NetNs, unique_tag, veth},
    skip::Needs,
    skip_unless,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const NODE1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const POD1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const POD2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 11);

struct Topology {
    // Dropped in reverse order of creation is not needed: deleting a
    // namespace deletes its veth ends.
    lan: NetNs,
    client: NetNs,
    node1: NetNs,
    node2: NetNs,
    pod1: NetNs,
    pod2: NetNs,
    bpffs: std::path::PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = cleanup(&self.bpffs);
    }
}

/// Turns TX checksum offload off on `ifname` (ETHTOOL_STXCSUM), in the
/// calling thread's network namespace.
fn tx_csum_off(ifname: &str) -> std::io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut v,
        pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: a datagram socket for the ioctl, closed when `sock` drops.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: a valid ifreq pointing at a valid ethtool_value, both live
    // across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn topology() -> Topology {
    let t = unique_tag();
    let ns = |name: &str| NetNs::new(&format!("sn-np{name}-{t}")).expect("namespace");
    let lan = ns("lan");
    lan.ip(&["link", "add", "br0", "type", "bridge"])
        .expect("lan bridge");
    lan.ip(&["link", "set", "br0", "up"]).expect("lan up");
    let client = ns("c");
    let node1 = ns("n1");
    let node2 = ns("n2");
    for (host, peer, addr) in [
        ("lc", &client, CLIENT),
        ("l1", &node1, NODE1),
        ("l2", &node2, NODE2),
    ] {
        veth(&lan, host, peer, "eth0").expect("lan veth");
        lan.ip(&["link", "set", host, "master", "br0"])
            .expect("enslave");
        peer.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])
            .expect("lan addr");
    }
    let pod = |node: &NetNs, name: &str, addr: Ipv4Addr, gw: &str| -> NetNs {
        node.ip(&["link", "add", "br0", "type", "bridge"])
            .expect("pod bridge");
        node.ip(&["addr", "add", &format!("{gw}/24"), "dev", "br0"])
            .expect("gw addr");
        node.ip(&["link", "set", "br0", "up"]).expect("br up");
        node.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
        node.sysctl("net.ipv4.conf.all.send_redirects", "0")
            .expect("no redirects");
        node.sysctl("net.ipv4.conf.eth0.send_redirects", "0")
            .expect("no redirects");
        let p = ns(name);
        veth(node, "vh0", &p, "eth0").expect("pod veth");
        node.ip(&["link", "set", "vh0", "master", "br0"])
            .expect("enslave pod");
        p.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])
            .expect("pod addr");
        p.ip(&["route", "add", "default", "via", gw])
            .expect("pod route");
        p
    };
    let pod1 = pod(&node1, "p1", POD1, "198.18.1.1");
    let pod2 = pod(&node2, "p2", POD2, "198.18.2.1");
    node1
        .ip(&["route", "add", "198.18.2.0/24", "via", &NODE2.to_string()])
        .expect("route to node 2's pods");
    node2
        .ip(&["route", "add", "198.18.1.0/24", "via", &NODE1.to_string()])
        .expect("route to node 1's pods");
    client
        .run(|| tx_csum_off("eth0"))
        .expect("client thread")
        .expect("client tx checksum off");
    node2
        .run(|| tx_csum_off("eth0"))
        .expect("node 2 thread")
        .expect("node 2 tx checksum off");
    let bpffs = std::path::PathBuf::from(format!("/sys/fs/bpf/svcnat-np-{t}"));
    Topology {
        lan,
        client,
        node1,
        node2,
        pod1,
        pod2,
        bpffs,
    }
}

/// A TCP server on :8080 answering each connection with the address the
/// connection came from, until `stop`.
fn serve(ns: &NetNs, stop: Arc<AtomicBool>) {
    drop(ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind tcp");
        l.set_nonblocking(true).expect("nonblocking");
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(peer.ip().to_string().as_bytes());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }));
}

/// One request; returns what the server said and the peer address the
/// client's socket saw.
fn request(addr: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let peer = s.peer_addr()?;
    s.write_all(b"hello")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok((out, peer))
}

fn spec(backend: Ipv4Addr, local: bool) -> FrontendSpec {
    FrontendSpec {
        backends: vec![BackendSpec {
            addr: backend.into(),
            port: 8080,
            flags: if local { BACKEND_FLAG_LOCAL } else { 0 },
        }],
        flags: SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT,
        opts: ServiceOpts::default(),
        ..FrontendSpec::default()
    }
}

#[test]
fn tcp_through_a_node_port_to_local_and_remote_backends() {
    skip_unless!(Needs::netns());
    let topo = topology();
    let stop = Arc::new(AtomicBool::new(false));
    serve(&topo.pod1, stop.clone());
    serve(&topo.pod2, stop.clone());

    let bpffs = topo.bpffs.clone();
    let dp = topo
        .node1
        .run(move || {
            let cfg = DataplaneConfig {
                bpffs,
                sizes: MapSizes {
                    conntrack: 65_536,
                    ..MapSizes::default()
                },
            };
            let mut dp = Dataplane::open(&cfg).expect("open dataplane");
            let pods = dp
                .attach_matching(&[glob::Pattern::new("vh*").expect("glob")])
                .expect("attach pods");
            assert!(pods.failed.is_empty(), "{pods:?}");
            let nodes = dp
                .attach_node_matching(&[glob::Pattern::new("eth0").expect("glob")])
                .expect("attach node");
            assert!(nodes.failed.is_empty(), "{nodes:?}");
            assert_eq!(nodes.attached, vec!["eth0".to_string()], "{nodes:?}");
            let fe = |port| Frontend {
                addr: NODE1.into(),
                port,
                proto: 6,
            };
            dp.upsert_frontend(fe(30080), &spec(POD1, true))
                .expect("local node port");
            dp.upsert_frontend(fe(30081), &spec(POD2, false))
                .expect("remote node port");
            dp
        })
        .expect("node thread");

    let (local, remote) = topo
        .client
        .run(|| {
            let local: Vec<_> = (0..5)
                .map(|_| request(SocketAddr::from((NODE1, 30080))))
                .collect();
            let remote: Vec<_> = (0..5)
                .map(|_| request(SocketAddr::from((NODE1, 30081))))
                .collect();
            (local, remote)
        })
        .expect("client thread");
    stop.store(true, Ordering::Relaxed);

    let stats: std::collections::BTreeMap<&str, u64> = dp
        .stats()
        .expect("stats")
        .into_iter()
        .map(|(r, v)| (r.name(), v.packets))
        .collect();
    for r in &local {
        let (said, peer) = r
            .as_ref()
            .unwrap_or_else(|e| panic!("local backend: {e}; stats {stats:?}"));
        assert_eq!(said, &CLIENT.to_string(), "the pod sees the client");
        assert_eq!(*peer, SocketAddr::from((NODE1, 30080)));
    }
    for r in &remote {
        let (said, peer) = r
            .as_ref()
            .unwrap_or_else(|e| panic!("remote backend: {e}; stats {stats:?}"));
        assert_eq!(
            said,
            &NODE1.to_string(),
            "the remote pod sees node 1 (SNAT)"
        );
        assert_eq!(*peer, SocketAddr::from((NODE1, 30081)));
    }
    assert!(stats[Reason::DnatNew.name()] >= 5, "{stats:?}");
    assert!(stats[Reason::RevnatReply.name()] >= 5, "{stats:?}");
    assert!(stats[Reason::SnatNew.name()] >= 5, "{stats:?}");
    assert!(stats[Reason::RevsnatReply.name()] >= 5, "{stats:?}");
    drop(dp);
    let _ = (&topo.lan, &topo.node2);
}

/// `--nodeport-addresses`: without CIDRs the node ports are on the node
/// interfaces' addresses; with CIDRs, on every address of the node inside
/// them, whatever its interface (and on no other).
#[test]
fn nodeport_addresses_follow_the_node_interfaces_or_the_cidrs() {
    skip_unless!(Needs::netns());
    let ns = NetNs::new(&format!("sn-npa-{}", unique_tag())).expect("namespace");
    for (dev, addr) in [("eth0", "198.18.7.1/24"), ("lan1", "198.18.8.1/24")] {
        // No dummy driver here: a veth pair inside the namespace.
        let peer = format!("{dev}p");
        ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer])
            .expect("veth");
        ns.ip(&["link", "set", &peer, "up"]).expect("peer up");
        ns.ip(&["addr", "add", addr, "dev", dev]).expect("address");
        ns.ip(&["link", "set", dev, "up"]).expect("up");
    }
    ns.ip(&["addr", "add", "198.18.8.2/24", "dev", "lan1"])
        .expect("second address");
    let got = ns
        .run(|| {
            use svcnat::{agent::nodeport_addresses, model::addr::parse_cidr};
            let eth0 = [glob::Pattern::new("eth0").expect("glob")];
            let cidr = |t: &str| parse_cidr(t).expect("cidr");
            (
                nodeport_addresses(&eth0, &[]),
                nodeport_addresses(&eth0, &[cidr("198.18.8.0/24")]),
                nodeport_addresses(&eth0, &[cidr("198.18.7.1/32"), cidr("198.18.8.2/32")]),
                nodeport_addresses(&eth0, &[cidr("2001:db8::/32")]),
            )
        })
        .expect("in the namespace");
    let v4 = |t: &str| std::net::IpAddr::V4(t.parse().expect("address"));
    assert_eq!(got.0, vec![v4("198.18.7.1")], "default: eth0's address");
    assert_eq!(got.1, vec![v4("198.18.8.1"), v4("198.18.8.2")]);
    assert_eq!(got.2, vec![v4("198.18.7.1"), v4("198.18.8.2")]);
    assert!(got.3.is_empty(), "no address in that network: {:?}", got.3);
}
