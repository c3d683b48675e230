//! What differs between IPv4 and IPv6 for the packet fuzz ([`Family`],
//! [`V4`], [`V6`]): the hosts' addresses, the header fields and fragments
//! the generator makes, how a frame is read, and the state maps as the
//! family-free rows ([`State`]) the map checks read.

use super::*;

/// A conntrack or SNAT key of either family, as the checks read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tuple<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
}

/// A conntrack entry of either family.
pub struct CtRow<A> {
    pub key: Tuple<A>,
    pub nat: (A, u16),
    pub backend_id: u32,
    pub svc_id: u32,
    pub flags: u8,
    /// The entry as the map holds it, for messages.
    pub text: String,
}

/// A fragment entry of either family.
pub struct FragRow<A> {
    pub saddr: A,
    pub daddr: A,
    pub proto: u8,
    pub dir: u8,
    pub addr: A,
    pub text: String,
}

/// The state maps of one family (what the datapath writes), as rows.
pub struct State<A> {
    pub ct: Vec<CtRow<A>>,
    /// SNAT keys, with the entries' text.
    pub snat: Vec<(Tuple<A>, String)>,
    /// Affinity entries: (service id, backend id, text).
    pub affinity: Vec<(u32, u32, String)>,
    pub frag: Vec<FragRow<A>>,
}

/// Builds the testkit's flow type (`Flow`, `Flow6`: same fields) from a
/// [`SeededFlow`].
macro_rules! testkit_flow {
    ($ty:ident, $f:expr) => {
        $ty {
            client: $f.client,
            vip: $f.vip,
            backend: $f.backend,
            proto: $f.proto,
            backend_id: $f.backend_id,
            svc_id: $f.svc_id,
            flags: $f.flags,
            created_ns: $f.created_ns,
            expires_ns: $f.expires_ns,
        }
    };
}

/// Reads the state maps of one family into a [`State`]: one code for both,
/// since the IPv4 and IPv6 keys and values have the same field names.
macro_rules! state_rows {
    ($m:expr, $ct:ident, $snat:ident, $aff:ident, $frag:ident) => {{
        fn dump<K: aya::Pod + Debug, V: aya::Pod + Debug, R>(
            name: &str,
            it: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
            row: impl Fn(&K, &V, String) -> R,
        ) -> Result<Vec<R>, String> {
            it.map(|r| {
                let (k, v) = r.map_err(|e| format!("dump {name}: {e}"))?;
                Ok(row(&k, &v, format!("{name} {k:?} -> {v:?}")))
            })
            .collect()
        }
        macro_rules! tuple {
            ($k:expr) => {
                Tuple {
                    saddr: $k.saddr.into(),
                    daddr: $k.daddr.into(),
                    sport: $k.sport,
                    dport: $k.dport,
                    proto: $k.proto,
                    dir: $k.dir,
                }
            };
        }
        let m = $m;
        Ok(State {
            ct: dump(stringify!($ct), m.$ct.iter(), |k, v, text| CtRow {
                key: tuple!(k),
                nat: (v.nat_addr.into(), v.nat_port),
                backend_id: v.backend_id,
                svc_id: v.svc_id,
                flags: v.flags,
                text,
            })?,
            snat: dump(stringify!($snat), m.$snat.iter(), |k, _, text| {
                (tuple!(k), text)
            })?,
            affinity: dump(stringify!($aff), m.$aff.iter(), |k, v, text| {
                (k.svc_id, v.backend_id, text)
            })?,
            frag: dump(stringify!($frag), m.$frag.iter(), |k, v, text| FragRow {
                saddr: k.saddr.into(),
                daddr: k.daddr.into(),
                proto: k.proto,
                dir: k.dir,
                addr: v.addr.into(),
                text,
            })?,
        })
    }};
}

/// The methods of [`Family`] that are one code over the family's types,
/// its parsed header (`ipv4`, `ipv6`) and the testkit's seed helpers of the
/// family (named `..` and `..6`).
macro_rules! family_plumbing {
    (
        sock: $sock:ident,
        addr: $addr:ident,
        parsed: $parsed:ident,
        flow: $flow:ident,
        seed: [$node:ident, $frontend:ident, $marker:ident, $range:ident, $add_flow:ident, $add_snat:ident],
        state: |$dp:ident| ($maps:expr, $ct:ident, $snat:ident, $aff:ident, $frag:ident),
    ) => {
        fn ip(s: $sock) -> $addr {
            *s.ip()
        }

        fn port(s: $sock) -> u16 {
            s.port()
        }

        fn ends(frame: &[u8]) -> Option<($sock, $sock, u8)> {
            let p = parse(frame).ok()?;
            let ip = p.$parsed.as_ref()?;
            Some((ip.source().ok()?, ip.destination().ok()?, ip.proto))
        }

        fn addrs(frame: &[u8]) -> Result<($addr, $addr), String> {
            let p = parse(frame)?;
            let ip = p
                .$parsed
                .as_ref()
                .ok_or_else(|| format!("not {}: ethertype {:#06x}", Self::NAME, p.ethertype))?;
            Ok((ip.src, ip.dst))
        }

        fn seed_node(dp: &mut TestDatapath, addr: $addr) -> Result<(), String> {
            dp.$node(TEST_RUN_IFINDEX, addr)
                .map_err(|e| format!("seed node address: {e}"))
        }

        fn seed_frontend(dp: &mut TestDatapath, f: &SeedFrontend<$sock>) -> Result<(), String> {
            dp.$frontend(
                f.addr, f.proto, f.scope, f.svc_id, f.flags, f.affinity, f.backends,
            )
            .map_err(|e| e.to_string())
        }

        fn seed_marker(dp: &mut TestDatapath, vip: $sock) -> Result<(), String> {
            dp.$marker(vip).map_err(|e| e.to_string())
        }

        fn seed_range(dp: &mut TestDatapath, svc: u32, net: $addr, len: u8) -> Result<(), String> {
            dp.$range(svc, net, len).map_err(|e| e.to_string())
        }

        fn seed_flow(dp: &mut TestDatapath, f: &SeededFlow<$sock>) -> Result<(), String> {
            let flow = testkit_flow!($flow, f);
            match f.via {
                None => dp.$add_flow(&flow),
                Some(via) => dp.$add_snat(&flow, via),
            }
            .map_err(|e| format!("seed flow: {e}"))
        }

        fn state($dp: &TestDatapath) -> Result<State<$addr>, String> {
            state_rows!($maps, $ct, $snat, $aff, $frag)
        }
    };
}

/// The builder of family `F`'s frames.
pub type P<F> = PacketBuilder<<F as Family>::Ip>;

/// What differs between IPv4 and IPv6 for the fuzz: the world's addresses,
/// the header fields and fragments the generator makes, how a frame is
/// read (ends, layer 4, what NAT may rewrite), and the maps.
pub trait Family: Copy + 'static {
    /// The builder's header fields.
    type Ip: IpFamily<Addr = Self::Addr>;
    type Addr: IpAddress<Family = Self::Ip> + Copy + Ord + Debug + Display;
    type Sock: SocketAddress<Family = Self::Ip> + Copy + Eq + Debug + Display;
    const NAME: &'static str;
    /// Added to the world's service and backend ids (one id space).
    const IDS: u32;
    /// The IP version nibble.
    const VERSION: u8;
    /// Length of the IP header without options or extension headers.
    const IP_HLEN: usize;
    /// Whether the IP header has a checksum.
    const HEADER_CHECKSUM: bool;
    /// ICMP type and code of a port unreachable (what a reject sends).
    const PORT_UNREACH: (u8, u8);
    /// ICMP type and code of "fragmentation needed" / "packet too big".
    const TOO_BIG: (u8, u8);
    /// ICMP destination unreachable, and how many codes it has.
    const DEST_UNREACH: (u8, u8);
    /// ICMP time exceeded.
    const TIME_EXCEEDED: u8;
    /// The other ICMP error types.
    const OTHER_ERRORS: &'static [u8];
    /// The other family's ethertype (frames this family's pipeline must
    /// leave to the other).
    const OTHER_ETHERTYPE: u16;

    fn host(h: Host) -> Self::Addr;
    /// The load balancer's source range.
    fn source_range() -> (Self::Addr, u8);
    fn sock(a: Self::Addr, port: u16) -> Self::Sock;
    fn ip(s: Self::Sock) -> Self::Addr;
    fn port(s: Self::Sock) -> u16;
    /// A random address of the test range.
    fn random_addr(rng: &mut StdRng) -> Self::Addr;
    /// Keeps the outer (and, for ICMP, the quoted) addresses of a frame in
    /// the test range after random bytes or mutations, as the project's
    /// address rules ask; everything else stays random.
    fn confine(frame: &mut [u8]);
    /// Random IP header fields (IPv4 options, IPv6 extension headers, ...).
    fn header_fields(rng: &mut StdRng, b: P<Self>) -> P<Self>;
    /// A packet only this family has (NDP), from `src` about `dst`.
    fn own_kind(rng: &mut StdRng, src: Self::Addr, dst: Self::Addr) -> Option<P<Self>>;
    /// `b` made to be split by [`Self::fragment`]: true lengths, not a
    /// fragment already.
    fn whole(b: P<Self>) -> P<Self>;
    /// `b` as a lone later fragment.
    fn later_fragment(rng: &mut StdRng, b: P<Self>) -> P<Self>;
    /// Splits the datagram in `frame` into fragments of `chunk` bytes.
    fn fragment(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>>;
    /// Makes a fragment one of another datagram (another id).
    fn other_datagram(frame: &mut [u8]);
    /// More templates for the truncation sweep.
    fn sweep_extra(pod: Self::Sock, dns: Self::Sock) -> Vec<Vec<u8>>;
    /// Source, destination and protocol of a TCP or UDP frame.
    fn ends(frame: &[u8]) -> Option<(Self::Sock, Self::Sock, u8)>;
    /// Source and destination addresses.
    fn addrs(frame: &[u8]) -> Result<(Self::Addr, Self::Addr), String>;
    /// The layer 4 protocol and offset, from the frame's bytes as the
    /// datapath reads them (even where a length field says they are cut).
    fn l4_in_frame(frame: &[u8]) -> Option<(u8, usize)>;
    /// Marks (`allow(from, to)`) the bytes of `input` past the MACs that
    /// NAT may write: hop limit, addresses, ports, checksums, and in an
    /// ICMP error the quoted header's.
    fn rewritable(input: &[u8], allow: &mut dyn FnMut(usize, usize));

    fn seed_node(dp: &mut TestDatapath, addr: Self::Addr) -> Result<(), String>;
    fn seed_frontend(dp: &mut TestDatapath, f: &SeedFrontend<Self::Sock>) -> Result<(), String>;
    fn seed_marker(dp: &mut TestDatapath, vip: Self::Sock) -> Result<(), String>;
    fn seed_range(
        dp: &mut TestDatapath,
        svc_id: u32,
        net: Self::Addr,
        len: u8,
    ) -> Result<(), String>;
    /// Seeds a flow (source-NATed when it has a `via`).
    fn seed_flow(dp: &mut TestDatapath, f: &SeededFlow<Self::Sock>) -> Result<(), String>;
    fn state(dp: &TestDatapath) -> Result<State<Self::Addr>, String>;
}

#[derive(Clone, Copy)]
pub struct V4;

#[derive(Clone, Copy)]
pub struct V6;

impl Family for V4 {
    type Ip = Ipv4Fields;
    type Addr = Ipv4Addr;
    type Sock = SocketAddrV4;
    const NAME: &'static str = "ipv4";
    const IDS: u32 = 0;
    const VERSION: u8 = 4;
    const IP_HLEN: usize = 20;
    const HEADER_CHECKSUM: bool = true;
    const PORT_UNREACH: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH);
    const TOO_BIG: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
    const DEST_UNREACH: (u8, u8) = (ICMP_DEST_UNREACH, 16);
    const TIME_EXCEEDED: u8 = ICMP_TIME_EXCEEDED;
    /// Source quench, redirect, parameter problem.
    const OTHER_ERRORS: &'static [u8] = &[4, 5, 12];
    const OTHER_ETHERTYPE: u16 = ETH_P_IPV6;

    fn host(h: Host) -> Ipv4Addr {
        let o = match h {
            Host::Vip => [198, 19, 0, 1],
            Host::Aff => [198, 19, 0, 2],
            Host::Broken => [198, 19, 0, 3],
            Host::Lb => [198, 19, 50, 1],
            Host::ExtUdp => [198, 19, 60, 1],
            Host::Node => [198, 18, 100, 1],
            Host::PodA => [198, 18, 1, 10],
            Host::PodB => [198, 18, 1, 11],
            Host::Outside => [198, 18, 200, 5],
            Host::Stranger => [198, 18, 201, 5],
            Host::Router => [198, 18, 9, 9],
            Host::Hairpin => HAIRPIN_ADDR_DEFAULT,
            Host::B1 => [198, 18, 2, 1],
            Host::B2 => [198, 18, 2, 2],
            Host::B3 => [198, 18, 2, 3],
            Host::B4 => [198, 18, 2, 4],
            Host::L1 => [198, 18, 10, 11],
            Host::L2 => [198, 18, 10, 12],
            Host::L3 => [198, 18, 10, 13],
            Host::R1 => [198, 18, 20, 21],
            Host::R2 => [198, 18, 20, 22],
        };
        Ipv4Addr::from(o)
    }

    fn source_range() -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(198, 18, 200, 0), 24)
    }

    fn sock(a: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(a, port)
    }

    fn random_addr(rng: &mut StdRng) -> Ipv4Addr {
        let r: u32 = rng.random();
        Ipv4Addr::new(198, 18 | (r as u8 & 1), (r >> 8) as u8, (r >> 16) as u8)
    }

    fn confine(frame: &mut [u8]) {
        let confine = |f: &mut [u8], at: usize| {
            if f.len() >= at + 2 {
                f[at] = 198;
                f[at + 1] = 18 | (f[at + 1] & 1);
            }
        };
        if frame.len() >= ETH_HLEN + 20 && frame[12..14] == ETH_P_IP.to_be_bytes() {
            confine(frame, ETH_HLEN + 12);
            confine(frame, ETH_HLEN + 16);
            if frame[ETH_HLEN + 9] == IPPROTO_ICMP {
                confine(frame, ETH_HLEN + 28 + 12);
                confine(frame, ETH_HLEN + 28 + 16);
            }
        }
    }

    fn header_fields(rng: &mut StdRng, b: P<Self>) -> P<Self> {
        let mut b = b
            .ttl(rng.random())
            .tos(rng.random())
            .id(rng.random())
            .dont_fragment(rng.random_bool(0.5));
        if rng.random_ratio(1, 30) {
            let n = 4 * rng.random_range(1..=10);
            b = b.ip_options(&random_bytes(rng, n));
        }
        if rng.random_ratio(1, 30) {
            b = b.ip_checksum(rng.random());
        }
        if rng.random_ratio(1, 40) {
            b = b.ip_total_len(rng.random());
        }
        b
    }

    fn own_kind(_: &mut StdRng, _: Ipv4Addr, _: Ipv4Addr) -> Option<P<Self>> {
        None
    }

    fn whole(mut b: P<Self>) -> P<Self> {
        // `fragment` splits by the total length: keep it true.
        b.ip.total_len = None;
        b.dont_fragment(false)
    }

    fn later_fragment(rng: &mut StdRng, b: P<Self>) -> P<Self> {
        b.fragment(rng.random_bool(0.5), rng.random_range(1..=0x1fff))
    }

    fn fragment(frame: &[u8], chunk: usize, _id: u32) -> Vec<Vec<u8>> {
        fragment(frame, chunk)
    }

    fn other_datagram(f: &mut [u8]) {
        f[ETH_HLEN + 5] ^= 1;
        let ip = &mut f[ETH_HLEN..];
        let hlen = usize::from(ip[0] & 0x0f) * 4;
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum = internet_checksum(&ip[..hlen]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    }

    fn sweep_extra(_: SocketAddrV4, _: SocketAddrV4) -> Vec<Vec<u8>> {
        Vec::new()
    }

    fn l4_in_frame(frame: &[u8]) -> Option<(u8, usize)> {
        (frame.len() >= ETH_HLEN + 20 && frame[12..14] == ETH_P_IP.to_be_bytes()).then(|| {
            let l4 = ETH_HLEN + usize::from(frame[ETH_HLEN] & 0x0f) * 4;
            (frame[ETH_HLEN + 9], l4)
        })
    }

    fn rewritable(input: &[u8], allow: &mut dyn FnMut(usize, usize)) {
        if input.len() < ETH_HLEN + 20 || input[12..14] != ETH_P_IP.to_be_bytes() {
            return;
        }
        let l3 = ETH_HLEN;
        let hlen = usize::from(input[l3] & 0x0f) * 4;
        allow(l3 + 8, l3 + 9); // TTL
        allow(l3 + 10, l3 + 12); // header checksum
        allow(l3 + 12, l3 + 20); // addresses
        let l4 = l3 + hlen;
        let later = u16::from_be_bytes([input[l3 + 6], input[l3 + 7]]) & 0x1fff != 0;
        if later {
            return;
        }
        match input[l3 + 9] {
            IPPROTO_TCP => {
                allow(l4, l4 + 4);
                allow(l4 + 16, l4 + 18);
            }
            IPPROTO_UDP => {
                allow(l4, l4 + 4);
                allow(l4 + 6, l4 + 8);
            }
            IPPROTO_ICMP => {
                allow(l4 + 2, l4 + 4); // ICMP checksum
                allow(l4 + 4, l4 + 8); // echo id (ICMP NAT, later)
                let inner = l4 + 8;
                if input.len() > inner {
                    let ihl = usize::from(input[inner] & 0x0f) * 4;
                    allow(inner + 10, inner + 20);
                    allow(inner + ihl, inner + ihl + 4);
                    allow(inner + ihl + 6, inner + ihl + 8);
                    allow(inner + ihl + 16, inner + ihl + 18);
                }
            }
            _ => {}
        }
    }

    family_plumbing! {
        sock: SocketAddrV4,
        addr: Ipv4Addr,
        parsed: ipv4,
        flow: Flow,
        seed: [set_node_address, add_frontend, add_vip_marker, add_source_range, add_flow, add_snat_flow],
        state: |dp| (dp, ct4, snat4, affinity4, frag4),
    }
}

pub const fn ip6(a: u16, b: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, a, b, 0, 0, 0, last)
}

impl Family for V6 {
    type Ip = Ipv6Fields;
    type Addr = Ipv6Addr;
    type Sock = SocketAddrV6;
    const NAME: &'static str = "ipv6";
    const IDS: u32 = 100;
    const VERSION: u8 = 6;
    const IP_HLEN: usize = IPV6_HLEN;
    const HEADER_CHECKSUM: bool = false;
    const PORT_UNREACH: (u8, u8) = (ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH);
    const TOO_BIG: (u8, u8) = (ICMP6_PACKET_TOO_BIG, 0);
    const DEST_UNREACH: (u8, u8) = (ICMP6_DEST_UNREACH, 8);
    const TIME_EXCEEDED: u8 = ICMP6_TIME_EXCEEDED;
    const OTHER_ERRORS: &'static [u8] = &[ICMP6_PACKET_TOO_BIG, ICMP6_PARAM_PROBLEM];
    const OTHER_ETHERTYPE: u16 = ETH_P_IP;

    fn host(h: Host) -> Ipv6Addr {
        match h {
            Host::Vip => ip6(0xffff, 0, 1),
            Host::Aff => ip6(0xffff, 0, 2),
            Host::Broken => ip6(0xffff, 0, 3),
            Host::Lb => ip6(0xffff, 0x50, 1),
            Host::ExtUdp => ip6(0xffff, 0x60, 1),
            Host::Node => ip6(0x100, 0, 1),
            Host::PodA => ip6(1, 0, 0x10),
            Host::PodB => ip6(1, 0, 0x11),
            Host::Outside => ip6(0x200, 0, 5),
            Host::Stranger => ip6(0x201, 0, 5),
            Host::Router => ip6(9, 0, 9),
            Host::Hairpin => Ipv6Addr::from(HAIRPIN6_ADDR_DEFAULT),
            Host::B1 => ip6(2, 0, 1),
            Host::B2 => ip6(2, 0, 2),
            Host::B3 => ip6(2, 0, 3),
            Host::B4 => ip6(2, 0, 4),
            Host::L1 => ip6(0x10, 0, 0x11),
            Host::L2 => ip6(0x10, 0, 0x12),
            Host::L3 => ip6(0x10, 0, 0x13),
            Host::R1 => ip6(0x20, 0, 0x21),
            Host::R2 => ip6(0x20, 0, 0x22),
        }
    }

    fn source_range() -> (Ipv6Addr, u8) {
        (ip6(0x200, 0, 0), 48)
    }

    fn sock(a: Ipv6Addr, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(a, port, 0, 0)
    }

    fn random_addr(rng: &mut StdRng) -> Ipv6Addr {
        let r: u64 = rng.random();
        let a = pick(
            rng,
            &[
                1u16, 2, 9, 0x10, 0x20, 0x100, 0x200, 0x201, 0xffff, r as u16,
            ],
        );
        let b = if rng.random_ratio(1, 4) {
            (r >> 16) as u16
        } else {
            0
        };
        ip6(a, b, u16::from((r >> 32) as u8))
    }

    fn confine(frame: &mut [u8]) {
        let confine = |f: &mut [u8], at: usize| {
            if f.len() >= at + 4 {
                f[at..at + 4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            }
        };
        if frame.len() >= ETH_HLEN + IPV6_HLEN && frame[12..14] == ETH_P_IPV6.to_be_bytes() {
            confine(frame, ETH_HLEN + 8);
            confine(frame, ETH_HLEN + 24);
            if frame[ETH_HLEN + 6] == IPPROTO_ICMPV6 {
                let inner = ETH_HLEN + IPV6_HLEN + 8;
                confine(frame, inner + 8);
                confine(frame, inner + 24);
            }
        }
    }

    fn header_fields(rng: &mut StdRng, b: P<Self>) -> P<Self> {
        let mut b = b
            .hop_limit(rng.random())
            .traffic_class(rng.random())
            .flow_label(rng.random::<u32>() & 0xf_ffff);
        if rng.random_ratio(1, 5) {
            for _ in 0..rng.random_range(1..=3) {
                let n = rng.random_range(0..=12);
                let h = match rng.random_range(0..10) {
                    0..=2 => ExtHeader::HopByHop(random_bytes(rng, n)),
                    3..=4 => ExtHeader::DestinationOptions(random_bytes(rng, n)),
                    5..=6 => ExtHeader::Routing {
                        routing_type: {
                            let any = rng.random();
                            pick(rng, &[0, 2, 3, 4, any])
                        },
                        segments_left: if rng.random_ratio(3, 4) {
                            0
                        } else {
                            rng.random()
                        },
                        data: random_bytes(rng, n + 4),
                    },
                    // An atomic fragment (RFC 6946).
                    7..=8 => ExtHeader::Fragment {
                        offset_units: 0,
                        more: false,
                        id: rng.random(),
                    },
                    _ => {
                        let mut bytes = vec![0];
                        bytes.extend(random_bytes(rng, 6));
                        ExtHeader::Other {
                            kind: IPPROTO_EXPERIMENT1,
                            bytes,
                        }
                    }
                };
                b = b.ext(h);
            }
        }
        if rng.random_ratio(1, 40) {
            b = b.payload_len(rng.random());
        }
        b
    }

    fn own_kind(rng: &mut StdRng, src: Ipv6Addr, dst: Ipv6Addr) -> Option<P<Self>> {
        let mac = [2, 0, 0, 0, 0, rng.random()];
        Some(if rng.random_bool(0.5) {
            PacketBuilder::neighbor_solicitation(src, mac, dst)
        } else {
            let any = rng.random();
            let flags = pick(rng, &[NA_SOLICITED | NA_OVERRIDE, NA_OVERRIDE, any]);
            PacketBuilder::neighbor_advertisement(src, mac, dst, [2, 0, 0, 0, 0, 9], src, flags)
        })
    }

    fn whole(mut b: P<Self>) -> P<Self> {
        b.ip.payload_len = None;
        b.ip.ext
            .retain(|h| !matches!(h, ExtHeader::Fragment { .. }));
        b
    }

    fn later_fragment(rng: &mut StdRng, b: P<Self>) -> P<Self> {
        b.fragment_header(
            rng.random(),
            rng.random_range(1..=IP6_OFFSET_MASK >> 3),
            rng.random_bool(0.5),
        )
    }

    fn fragment(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
        fragment6(frame, chunk, id)
    }

    fn other_datagram(f: &mut [u8]) {
        let Ok(chain) = ext_chain(&f[ETH_HLEN..]) else {
            return;
        };
        if let Some((off, _, _)) = chain.headers.iter().find(|h| h.1 == IPPROTO_FRAGMENT) {
            f[ETH_HLEN + off + 7] ^= 1;
        }
    }

    fn sweep_extra(pod: SocketAddrV6, dns: SocketAddrV6) -> Vec<Vec<u8>> {
        vec![
            PacketBuilder::udp(pod, dns)
                .hop_by_hop(&[])
                .destination_options(&[])
                .payload(&[6; 8])
                .build(),
        ]
    }

    fn l4_in_frame(frame: &[u8]) -> Option<(u8, usize)> {
        if frame.len() < ETH_HLEN || frame[12..14] != ETH_P_IPV6.to_be_bytes() {
            return None;
        }
        let chain = ext_chain(&frame[ETH_HLEN..]).ok()?;
        Some((chain.proto, ETH_HLEN + chain.l4_off))
    }

    fn rewritable(input: &[u8], allow: &mut dyn FnMut(usize, usize)) {
        if input.len() < ETH_HLEN + IPV6_HLEN || input[12..14] != ETH_P_IPV6.to_be_bytes() {
            return;
        }
        let l3 = ETH_HLEN;
        allow(l3 + 7, l3 + 8); // hop limit
        allow(l3 + 8, l3 + 40); // addresses
        let Ok(chain) = ext_chain(&input[l3..]) else {
            return;
        };
        let later = chain.headers.iter().any(|(off, kind, _)| {
            *kind == IPPROTO_FRAGMENT
                && u16::from_be_bytes([input[l3 + off + 2], input[l3 + off + 3]]) & IP6_OFFSET_MASK
                    != 0
        });
        if later {
            return;
        }
        let l4 = l3 + chain.l4_off;
        let ports = |allow: &mut dyn FnMut(usize, usize), l4: usize, proto: u8| match proto {
            IPPROTO_TCP => {
                allow(l4, l4 + 4);
                allow(l4 + 16, l4 + 18);
            }
            IPPROTO_UDP => {
                allow(l4, l4 + 4);
                allow(l4 + 6, l4 + 8);
            }
            _ => {}
        };
        match chain.proto {
            IPPROTO_ICMPV6 => {
                allow(l4 + 2, l4 + 4); // ICMPv6 checksum
                allow(l4 + 4, l4 + 8); // echo id (ICMP NAT, later)
                let inner = l4 + 8;
                allow(inner + 8, inner + 40); // quoted addresses
                if let Some(Ok(ic)) = input.get(inner..).map(ext_chain) {
                    ports(allow, inner + ic.l4_off, ic.proto);
                }
            }
            proto => ports(allow, l4, proto),
        }
    }

    family_plumbing! {
        sock: SocketAddrV6,
        addr: Ipv6Addr,
        parsed: ipv6,
        flow: Flow6,
        seed: [set_node_address6, add_frontend6, add_vip_marker6, add_source_range6, add_flow6, add_snat_flow6],
        state: |dp| (dp.v6()?, ct6, snat6, affinity6, frag6),
    }
}

pub fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

pub fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}
