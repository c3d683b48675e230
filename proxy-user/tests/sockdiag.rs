//! `sockdiag` against the kernel: UDP sockets listed and destroyed through
//! NETLINK_SOCK_DIAG, each test inside a network namespace of its own
//! (198.18.0.0/15 and 2001:db8::/32 on its loopback), never in the root
//! namespace.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use svcnat::{
    model::Family,
    sockdiag::{self, UdpSocket as DiagSocket},
};
use svcnat_testkit::{
    netns::{NetNs, unique_tag},
    skip::Needs,
    skip_unless,
};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 2);
const SERVER_PORT: u16 = 5353;

/// A namespace with the client and server addresses on its loopback.
fn namespace() -> NetNs {
    let ns = NetNs::new(&format!("sd{}", unique_tag())).expect("create the namespace");
    for a in [CLIENT4, SERVER4] {
        ns.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])
            .expect("add an IPv4 address");
    }
    for a in [CLIENT6, SERVER6] {
        ns.ip(&["addr", "add", &format!("{a}/128"), "dev", "lo", "nodad"])
            .expect("add an IPv6 address");
    }
    // The kernel adds an IPv6 address's local route a moment later (after
    // its DAD work, skipped with nodad, has run): until then datagrams to
    // it are lost.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = ns
            .ip(&["-6", "route", "show", "table", "local"])
            .expect("list the local routes");
        let routes = String::from_utf8_lossy(&out.stdout);
        let has = |a: Ipv6Addr| {
            routes
                .lines()
                .any(|l| l.starts_with(&format!("local {a} ")))
        };
        if has(CLIENT6) && has(SERVER6) {
            break;
        }
        assert!(Instant::now() < deadline, "no local routes yet: {routes}");
        std::thread::sleep(Duration::from_millis(10));
    }
    ns
}

/// The socket's `SO_COOKIE`.
fn cookie(s: &UdpSocket) -> u64 {
    let mut v: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is the open socket `s`; `v` and `len` live across the
    // call and `len` is `v`'s size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "SO_COOKIE: {}", io::Error::last_os_error());
    v
}

/// Binds the socket to device `name` (SO_BINDTODEVICE).
fn bind_to_device(s: &UdpSocket, name: &str) {
    // SAFETY: the fd is the open socket `s`; the value is `name`'s bytes
    // with their length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_BINDTODEVICE: {}", io::Error::last_os_error());
}

fn with_timeout(s: UdpSocket) -> UdpSocket {
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    s
}

/// A datagram from `client` to `server` and the server's answer back.
fn round_trip(client: &UdpSocket, server: &UdpSocket) {
    client.send(b"ping").expect("client send");
    let mut buf = [0u8; 16];
    let (n, from) = server.recv_from(&mut buf).expect("server recv");
    assert_eq!(&buf[..n], b"ping");
    server.send_to(b"pong", from).expect("server send");
    let n = client.recv(&mut buf).expect("client recv");
    assert_eq!(&buf[..n], b"pong");
}

fn find(family: Family, cookie: u64) -> Option<DiagSocket> {
    sockdiag::udp_sockets(family, &[])
        .expect("udp_sockets")
        .into_iter()
        .find(|s| s.cookie == cookie)
}

/// A client bound to `client_ip` (port 0: the kernel's choice) connected to
/// a server at `server_ip`; listed, destroyed, gone. `device`: the client
/// is also bound to that device (SO_BINDTODEVICE).
fn destroy_connected(family: Family, client_ip: IpAddr, server_ip: IpAddr, device: Option<&str>) {
    let server_addr = SocketAddr::new(server_ip, SERVER_PORT);
    let server = with_timeout(UdpSocket::bind(server_addr).expect("server bind"));
    let client = with_timeout(UdpSocket::bind((client_ip, 0)).expect("client bind"));
    let ifindex = match device {
        Some(name) => {
            bind_to_device(&client, name);
            let c = std::ffi::CString::new(name).expect("device name");
            // SAFETY: `c` is a NUL-terminated string that lives across the call.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        }
        None => 0,
    };
    client.connect(server_addr).expect("client connect");
    round_trip(&client, &server);
    let (client_cookie, server_cookie) = (cookie(&client), cookie(&server));

    // Listed, with the cookie, addresses and device of each socket.
    let listed = find(family, client_cookie).expect("the client is listed");
    let want = DiagSocket {
        cookie: client_cookie,
        local: client.local_addr().expect("client address"),
        peer: server_addr,
        ifindex,
    };
    assert_eq!(listed, want);
    let unconnected = find(family, server_cookie).expect("the server is listed");
    assert_eq!(unconnected.local, server_addr);
    assert_eq!(unconnected.peer.port(), 0);
    assert!(unconnected.peer.ip().is_unspecified());
    // Filtered by peer: the client alone.
    assert_eq!(
        sockdiag::udp_sockets(family, &[server_addr]).expect("udp_sockets by peer"),
        vec![want]
    );

    assert!(sockdiag::destroy_udp(&want).expect("destroy"));
    let mut buf = [0u8; 16];
    let err = client.recv(&mut buf).expect_err("recv after destroy");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED),
        "recv after destroy: {err}"
    );
    // No longer connected to the server (nor listed at all: its port was
    // the kernel's choice, so disconnecting unhashed it).
    assert_eq!(
        sockdiag::udp_sockets(family, &[server_addr]).expect("udp_sockets by peer"),
        vec![]
    );
    if let Some(after) = find(family, client_cookie) {
        assert_ne!(after.peer, server_addr, "still connected: {after:?}");
    }

    // The server, neither connected nor destroyed, still serves.
    assert_eq!(find(family, server_cookie), Some(unconnected));
    let other = with_timeout(UdpSocket::bind((client_ip, 0)).expect("second client bind"));
    other.connect(server_addr).expect("second client connect");
    round_trip(&other, &server);

    // Gone: a second destroy finds nothing.
    assert!(!sockdiag::destroy_udp(&want).expect("destroy again"));
}

#[test]
fn lists_and_destroys_connected_udp_sockets_v4() {
    skip_unless!(Needs::root().programs(&["ip"]));
    let ns = namespace();
    ns.run(|| destroy_connected(Family::V4, CLIENT4.into(), SERVER4.into(), None))
        .expect("in the namespace");
}

#[test]
fn lists_and_destroys_connected_udp_sockets_v6() {
    skip_unless!(Needs::root().programs(&["ip"]));
    let ns = namespace();
    ns.run(|| destroy_connected(Family::V6, CLIENT6.into(), SERVER6.into(), None))
        .expect("in the namespace");
}

#[test]
fn destroys_a_socket_bound_to_a_device() {
    skip_unless!(Needs::root().programs(&["ip"]));
    let ns = namespace();
    ns.run(|| destroy_connected(Family::V4, CLIENT4.into(), SERVER4.into(), Some("lo")))
        .expect("in the namespace");
}

/// An IPv6 socket connected to an IPv4 peer is listed with IPv4-mapped
/// addresses in the IPv6 dump, found by its IPv4 peer, and destroyed.
#[test]
fn destroys_a_v6_socket_with_a_v4_mapped_peer() {
    skip_unless!(Needs::root().programs(&["ip"]));
    let ns = namespace();
    ns.run(|| {
        let server_addr = SocketAddr::new(SERVER4.into(), SERVER_PORT);
        let server = with_timeout(UdpSocket::bind(server_addr).expect("server bind"));
        let client = with_timeout(UdpSocket::bind("[::]:0").expect("client bind"));
        let mapped = SocketAddr::new(SERVER4.to_ipv6_mapped().into(), SERVER_PORT);
        client.connect(mapped).expect("client connect");
        round_trip(&client, &server);
        let client_cookie = cookie(&client);

        assert_eq!(find(Family::V4, client_cookie), None);
        let found = sockdiag::udp_sockets(Family::V6, &[server_addr]).expect("udp_sockets");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].cookie, client_cookie);
        assert_eq!(found[0].peer, mapped);
        // The source the route chose, IPv4-mapped.
        assert_eq!(found[0].local, client.local_addr().expect("client address"));
        assert!(matches!(found[0].local.ip().to_canonical(), IpAddr::V4(_)));

        assert!(sockdiag::destroy_udp(&found[0]).expect("destroy"));
        let err = client.recv(&mut [0u8; 16]).expect_err("recv after destroy");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
        assert!(!sockdiag::destroy_udp(&found[0]).expect("destroy again"));
    })
    .expect("in the namespace");
}

/// A socket of the root namespace (the test runner's, made before entering
/// the namespace; connecting a UDP socket sends nothing) is listed there
/// and never from inside the namespace.
#[test]
fn sockets_of_the_root_namespace_are_not_listed() {
    skip_unless!(Needs::root().programs(&["ip"]));
    let peer = SocketAddr::new(Ipv4Addr::new(198, 18, 7, 9).into(), 9);
    let root = UdpSocket::bind("0.0.0.0:0").expect("bind in the root namespace");
    root.connect(peer).expect("connect in the root namespace");
    let root_cookie = cookie(&root);
    // Listed from the root namespace (a dump only reads): the namespace is
    // what hides it below.
    let here = sockdiag::udp_sockets(Family::V4, &[peer]).expect("udp_sockets in the root");
    assert!(
        here.iter().any(|s| s.cookie == root_cookie),
        "not listed in its own namespace: {here:?}"
    );

    let ns = namespace();
    let (all4, all6, by_peer) = ns
        .run(move || {
            // A socket of the namespace's own, so that the lists are not
            // empty for want of any socket.
            let own = UdpSocket::bind((CLIENT4, 0)).expect("bind in the namespace");
            let own_cookie = cookie(&own);
            let all4 = sockdiag::udp_sockets(Family::V4, &[]).expect("udp_sockets v4");
            assert!(all4.iter().any(|s| s.cookie == own_cookie), "{all4:?}");
            let all6 = sockdiag::udp_sockets(Family::V6, &[]).expect("udp_sockets v6");
            let by_peer = sockdiag::udp_sockets(Family::V4, &[peer]).expect("udp_sockets by peer");
            (all4, all6, by_peer)
        })
        .expect("in the namespace");
    for s in all4.iter().chain(&all6) {
        assert_ne!(s.cookie, root_cookie, "the root's socket listed: {s:?}");
        assert_ne!(s.peer, peer, "a socket connected to {peer} listed: {s:?}");
    }
    assert_eq!(by_peer, vec![]);
    drop(root);
}
