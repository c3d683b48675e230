//! What differs between IPv4 and IPv6 for `packet_cost`: the addresses of
//! the world the paths run in, the seed helpers of each family's maps, and
//! reading the ends of a frame. Everything else (the paths, how they are
//! run, the stats checks, the tables) is written once in `main.rs`.

use std::{
    fmt::Debug,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use proxy_common::IPPROTO_TCP;
use svcnat_testkit::{
    datapath::{TEST_RUN_IFINDEX, TestDatapath},
    packet::{PacketBuilder, SocketAddress, parse},
};

/// The addresses of one family's world. Services' VIPs and backends come
/// from [`Family::vip`] and [`Family::backend`]; none of these is among
/// them.
pub struct Addrs<A> {
    /// The pod that sends to the services (TC paths).
    pub pod: A,
    /// An address that is no service (TC "not a service").
    pub not_service: A,
    /// This node's address on the interface the test run gives: the node
    /// ports' address and the source of SNATed flows.
    pub node: A,
    /// A load-balancer IP with a source range.
    pub lb: A,
    /// The node ports' local backend.
    pub local_backend: A,
    /// The first of the remote backends (the others follow it).
    pub remote_backend: A,
    /// The load balancer's source range: address, prefix length.
    pub source_range: (A, u8),
    /// A client inside the source range (established flows, pass, drops).
    pub client: A,
    /// A client outside the source range.
    pub stranger: A,
    /// The clients of the new flows to the local and the remote node port.
    pub new_local_client: A,
    pub new_remote_client: A,
}

/// One IP family, as `packet_cost` measures it.
pub trait Family {
    /// As the tables print it.
    const NAME: &'static str;
    /// 0 for IPv4, 1 for IPv6: the families share service ids, backend ids
    /// and slots, so each takes its own range of ids (see `main::Ids`).
    const INDEX: u32;
    type Addr: Copy + Debug;
    type Sock: SocketAddress + Copy + Debug;
    /// The world's fixed addresses.
    const ADDRS: Addrs<Self::Addr>;

    fn sock(ip: Self::Addr, port: u16) -> Self::Sock;
    /// Address `k` after `base` (`k` < 65,536 where used).
    fn nth(base: Self::Addr, k: u32) -> Self::Addr;
    /// VIP of service `i` (port 80), for up to 131,072 services.
    fn vip(i: u32) -> Self::Sock;
    /// Backend `id`: every (address, port) distinct.
    fn backend(id: u32) -> Self::Sock;
    /// The source and destination of a TCP frame of this family.
    fn ends(frame: &[u8]) -> (Self::Sock, Self::Sock);

    /// A TCP service `vip` with id `svc_id` and these backends, and its VIP
    /// marker.
    fn add_service(
        dp: &mut TestDatapath,
        vip: Self::Sock,
        svc_id: u32,
        backends: &[(u32, Self::Sock)],
    ) -> Result<(), String>;
    /// A TCP frontend of `scope` with `flags` and these `(id, address,
    /// BACKEND_FLAG_*)` backends (no VIP marker, no affinity).
    fn add_frontend(
        dp: &mut TestDatapath,
        vip: Self::Sock,
        scope: u8,
        svc_id: u32,
        flags: u16,
        backends: &[(u32, Self::Sock, u8)],
    ) -> Result<(), String>;
    /// [`Addrs::node`] as the node address of the test run's interface.
    fn set_node_address(dp: &mut TestDatapath) -> Result<(), String>;
    /// Admits [`Addrs::source_range`] to service `svc_id`.
    fn add_source_range(dp: &mut TestDatapath, svc_id: u32) -> Result<(), String>;

    /// An Ethernet frame of a TCP segment with `flags`.
    fn tcp(src: Self::Sock, dst: Self::Sock, flags: u8) -> Vec<u8> {
        PacketBuilder::<<Self::Sock as SocketAddress>::Family>::tcp(src, dst)
            .flags(flags)
            .build()
    }
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    const NAME: &'static str = "IPv4";
    const INDEX: u32 = 0;
    type Addr = Ipv4Addr;
    type Sock = SocketAddrV4;
    // Services are in 198.18.0.0/15; the node-port world is outside it.
    const ADDRS: Addrs<Ipv4Addr> = Addrs {
        pod: Ipv4Addr::new(198, 18, 250, 1),
        not_service: Ipv4Addr::new(198, 18, 251, 9),
        node: Ipv4Addr::new(192, 0, 2, 1),
        lb: Ipv4Addr::new(203, 0, 113, 80),
        local_backend: Ipv4Addr::new(192, 0, 2, 11),
        remote_backend: Ipv4Addr::new(192, 0, 2, 128),
        source_range: (Ipv4Addr::new(198, 51, 100, 0), 24),
        client: Ipv4Addr::new(198, 51, 100, 5),
        stranger: Ipv4Addr::new(203, 0, 113, 5),
        new_local_client: Ipv4Addr::new(198, 51, 100, 6),
        new_remote_client: Ipv4Addr::new(198, 51, 100, 7),
    };

    fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(ip, port)
    }

    fn nth(base: Ipv4Addr, k: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(base) + k)
    }

    /// 198.19.0.0/16 first, then 198.18.0.0/16 (131,072 in all, inside
    /// 198.18.0.0/15).
    fn vip(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::from(0xc613_0000 - (i & 0x1_0000) + (i & 0xffff)),
            80,
        )
    }

    /// Addresses cycle through 198.18.0.0/16 and the port moves on every
    /// lap.
    fn backend(id: u32) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::from(0xc612_0000 + (id & 0xffff)),
            8080 + (id >> 16) as u16,
        )
    }

    fn ends(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
        let ends = parse(frame).and_then(|f| {
            let ip = f.ip()?;
            Ok((ip.source()?, ip.destination()?))
        });
        ends.expect("an IPv4 TCP frame")
    }

    fn add_service(
        dp: &mut TestDatapath,
        vip: SocketAddrV4,
        svc_id: u32,
        backends: &[(u32, SocketAddrV4)],
    ) -> Result<(), String> {
        dp.add_service(vip, IPPROTO_TCP, svc_id, backends)
            .map_err(|e| e.to_string())
    }

    fn add_frontend(
        dp: &mut TestDatapath,
        vip: SocketAddrV4,
        scope: u8,
        svc_id: u32,
        flags: u16,
        backends: &[(u32, SocketAddrV4, u8)],
    ) -> Result<(), String> {
        dp.add_frontend(vip, IPPROTO_TCP, scope, svc_id, flags, 0, backends)
            .map_err(|e| e.to_string())
    }

    fn set_node_address(dp: &mut TestDatapath) -> Result<(), String> {
        dp.set_node_address(TEST_RUN_IFINDEX, Self::ADDRS.node)
            .map_err(|e| e.to_string())
    }

    fn add_source_range(dp: &mut TestDatapath, svc_id: u32) -> Result<(), String> {
        let (net, len) = Self::ADDRS.source_range;
        dp.add_source_range(svc_id, net, len)
            .map_err(|e| e.to_string())
    }
}

/// An address of 2001:db8:`a`::/48 with `last` as its low 32 bits.
const fn ip6(a: u16, last: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, a, 0, 0, 0, (last >> 16) as u16, last as u16)
}

impl Family for V6 {
    const NAME: &'static str = "IPv6";
    const INDEX: u32 = 1;
    type Addr = Ipv6Addr;
    type Sock = SocketAddrV6;
    // Services' VIPs are in 2001:db8:ffff::/48 and their backends in
    // 2001:db8:2::/48; the rest of the world is outside both.
    const ADDRS: Addrs<Ipv6Addr> = Addrs {
        pod: ip6(1, 0x10),
        not_service: ip6(3, 9),
        node: ip6(0x100, 1),
        lb: ip6(0xfffe, 0x50),
        local_backend: ip6(0x10, 0x11),
        remote_backend: ip6(0x20, 0x80),
        source_range: (ip6(0x200, 0), 48),
        client: ip6(0x200, 5),
        stranger: ip6(0x201, 5),
        new_local_client: ip6(0x200, 6),
        new_remote_client: ip6(0x200, 7),
    };

    fn sock(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(ip, port, 0, 0)
    }

    fn nth(base: Ipv6Addr, k: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(base) + u128::from(k))
    }

    fn vip(i: u32) -> SocketAddrV6 {
        Self::sock(ip6(0xffff, i), 80)
    }

    fn backend(id: u32) -> SocketAddrV6 {
        Self::sock(ip6(2, id), 8080)
    }

    fn ends(frame: &[u8]) -> (SocketAddrV6, SocketAddrV6) {
        svcnat_testkit::fixture6::ends(frame).expect("an IPv6 TCP frame")
    }

    fn add_service(
        dp: &mut TestDatapath,
        vip: SocketAddrV6,
        svc_id: u32,
        backends: &[(u32, SocketAddrV6)],
    ) -> Result<(), String> {
        Ok(dp.add_service6(vip, IPPROTO_TCP, svc_id, backends)?)
    }

    fn add_frontend(
        dp: &mut TestDatapath,
        vip: SocketAddrV6,
        scope: u8,
        svc_id: u32,
        flags: u16,
        backends: &[(u32, SocketAddrV6, u8)],
    ) -> Result<(), String> {
        Ok(dp.add_frontend6(vip, IPPROTO_TCP, scope, svc_id, flags, 0, backends)?)
    }

    fn set_node_address(dp: &mut TestDatapath) -> Result<(), String> {
        Ok(dp.set_node_address6(TEST_RUN_IFINDEX, Self::ADDRS.node)?)
    }

    fn add_source_range(dp: &mut TestDatapath, svc_id: u32) -> Result<(), String> {
        let (net, len) = Self::ADDRS.source_range;
        Ok(dp.add_source_range6(svc_id, net, len)?)
    }
}
