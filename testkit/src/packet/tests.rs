//! Unit tests of the builder, the checksums and the parsers.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;

const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 40000);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 80);

/// An independent checksum: sum 16-bit words in a u64, fold at the end.
fn reference_checksum(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    for (i, b) in data.iter().enumerate() {
        s += if i % 2 == 0 {
            u64::from(*b) << 8
        } else {
            u64::from(*b)
        };
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[test]
fn ipv4_header_checksum_matches_known_vector() {
    // The worked example from Wikipedia's "Internet checksum" /
    // "IPv4 header checksum" article: checksum 0xb861.
    let header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(internet_checksum(&header), 0xb861);
    let b = PacketBuilder::udp(
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), 1),
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 199), 2),
    )
    .id(0)
    .dont_fragment(true)
    .payload(&[0; 0x73 - 28]);
    let ip = b.ipv4_bytes();
    assert_eq!(&ip[..10], &header[..10]);
    assert_eq!(be16(&ip, 10), 0xb861);
}

#[test]
fn rfc1071_example_sum() {
    // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(csum_fold(csum_add(0, &data)), 0xddf2);
    assert_eq!(internet_checksum(&data), !0xddf2);
}

#[test]
fn tcp_checksum_agrees_with_reference_fold() {
    let b = PacketBuilder::tcp(CLIENT, VIP)
        .flags(TCP_SYN | TCP_ACK)
        .seq(0x0102_0304)
        .ack_seq(0xa0b0_c0d0)
        .tcp_options(&[2, 4, 5, 0xb4])
        .payload(b"odd");
    let frame = b.build();
    let seg = &frame[ETH_HLEN + 20..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&CLIENT.ip().octets());
    pseudo.extend_from_slice(&VIP.ip().octets());
    pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(seg);
    pseudo[12 + 16] = 0;
    pseudo[12 + 17] = 0;
    assert_eq!(be16(seg, 16), reference_checksum(&pseudo));
    assert_eq!(seg[12] >> 4, 6, "data offset counts the options");
    assert_eq!(reference_checksum(&frame[ETH_HLEN..ETH_HLEN + 20]), 0);
    checksums_ok(&frame).expect("valid");
}

#[test]
fn udp_checksum_agrees_with_reference_and_zero_stays_zero() {
    let b = PacketBuilder::udp(CLIENT, VIP).payload(b"hello world");
    let frame = b.build();
    let dgram = &frame[ETH_HLEN + 20..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&CLIENT.ip().octets());
    pseudo.extend_from_slice(&VIP.ip().octets());
    pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
    pseudo.extend_from_slice(&(dgram.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(dgram);
    pseudo[12 + 6] = 0;
    pseudo[12 + 7] = 0;
    assert_eq!(be16(dgram, 6), reference_checksum(&pseudo));
    assert_eq!(be16(dgram, 4), 8 + 11);
    checksums_ok(&frame).expect("valid");

    let zero = PacketBuilder::udp(CLIENT, VIP)
        .udp_zero_checksum()
        .payload(b"x")
        .build();
    assert_eq!(be16(&zero, ETH_HLEN + 20 + 6), 0);
    checksums_ok(&zero).expect("no checksum is valid for UDP");
}

#[test]
fn icmp_error_quotes_inner_header_and_eight_bytes() {
    let inner = PacketBuilder::tcp(VIP, CLIENT)
        .flags(TCP_ACK)
        .seq(99)
        .payload(b"data");
    let err =
        PacketBuilder::icmp_frag_needed(Ipv4Addr::new(198, 18, 9, 9), *VIP.ip(), 1400, &inner);
    let frame = err.build();
    checksums_ok(&frame).expect("valid");
    let p = parse(&frame).expect("parses");
    let ip = p.ip().expect("ipv4");
    assert_eq!(ip.total_len, 20 + 8 + 20 + 8);
    let icmp = ip.icmp().expect("icmp");
    assert_eq!(
        (icmp.icmp_type, icmp.code),
        (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED)
    );
    assert_eq!(icmp.rest, [0, 0, 0x05, 0x78]);
    assert_eq!(icmp.payload, inner.ipv4_bytes()[..28].to_vec());
    assert_eq!(reference_checksum(&frame[ETH_HLEN + 20..]), 0);
    let quoted = parse_ipv4(&icmp.payload).expect("inner parses");
    assert_eq!((quoted.src, quoted.dst), (*VIP.ip(), *CLIENT.ip()));
}

#[test]
fn options_fragments_and_overrides() {
    let b = PacketBuilder::udp(CLIENT, VIP)
        .ip_options(&[0x94, 0x04, 0, 0])
        .tos(0x10)
        .ttl(3)
        .id(77);
    let frame = b.build();
    let p = parse(&frame).expect("parses");
    let ip = p.ip().expect("ipv4");
    assert_eq!((ip.ihl, ip.tos, ip.ttl, ip.id), (6, 0x10, 3, 77));
    assert_eq!(ip.options, vec![0x94, 0x04, 0, 0]);
    assert_eq!(ip.udp().expect("udp").dport, 80);
    checksums_ok(&frame).expect("valid");

    let full = PacketBuilder::udp(CLIENT, VIP)
        .id(5)
        .payload(&[7; 100])
        .build();
    let frags = fragment(&full, 64);
    assert_eq!(frags.len(), 2);
    let (a, b) = (parse(&frags[0]).expect("a"), parse(&frags[1]).expect("b"));
    let (a, b) = (a.ip().expect("a"), b.ip().expect("b"));
    assert_eq!((a.flags_frag, a.total_len), (IP_MF, 20 + 64));
    assert_eq!((b.flags_frag, b.total_len), (8, 20 + 44));
    assert!(matches!(b.l4, ParsedL4::Other(_)));
    for f in &frags {
        checksums_ok(f).expect("fragment headers valid");
    }
    let mut joined = frags[0][ETH_HLEN + 20..].to_vec();
    joined.extend_from_slice(&frags[1][ETH_HLEN + 20..]);
    assert_eq!(joined, full[ETH_HLEN + 20..].to_vec());

    let bad = PacketBuilder::tcp(CLIENT, VIP).l4_checksum(0x1234).build();
    assert!(
        checksums_ok(&bad)
            .expect_err("bad")
            .contains("TCP checksum")
    );
    let bad = PacketBuilder::tcp(CLIENT, VIP).ip_checksum(0x1234).build();
    assert!(checksums_ok(&bad).expect_err("bad").contains("IPv4 header"));
    let short = PacketBuilder::tcp(CLIENT, VIP).tcp_data_offset(4).build();
    assert_eq!(short[ETH_HLEN + 20 + 12], 0x40);
}

#[test]
fn checksum_residues_are_valid_for_built_packets_and_follow_changes() {
    // No payload: the 8 quoted bytes are the whole datagram, so even
    // the quoted UDP checksum verifies (with a payload it is only a
    // residue to compare).
    let inner = PacketBuilder::udp(CLIENT, VIP);
    let err =
        PacketBuilder::icmp_error(*VIP.ip(), *CLIENT.ip(), ICMP_DEST_UNREACH, 3, &inner).build();
    let r = checksum_residues(&err);
    for c in [r.ipv4, r.l4, r.inner_ipv4, r.inner_udp] {
        assert!(c.is_some_and(Residue::is_valid), "{r:?}");
    }
    let zero = PacketBuilder::udp(CLIENT, VIP).udp_zero_checksum().build();
    assert_eq!(checksum_residues(&zero).l4, Some(Residue::NoChecksum));

    // An address changed without its checksums: both residues move,
    // by the same amount as the change.
    let tcp = PacketBuilder::tcp(CLIENT, VIP).flags(TCP_SYN).build();
    let mut moved = tcp.clone();
    moved[ETH_HLEN + 19] ^= 1;
    let (a, b) = (checksum_residues(&tcp), checksum_residues(&moved));
    assert!(a.ipv4.is_some_and(Residue::is_valid) && a.l4.is_some_and(Residue::is_valid));
    assert!(!b.ipv4.is_some_and(Residue::is_valid) && !b.l4.is_some_and(Residue::is_valid));
    assert!(checksums_ok(&moved).is_err());

    // A first fragment's layer 4 sum is kept by a correct rewrite even
    // though it does not verify on its own; a later fragment has none.
    let frags = fragment(
        &PacketBuilder::udp(CLIENT, VIP).payload(&[9; 40]).build(),
        16,
    );
    assert!(checksum_residues(&frags[0]).l4.is_some());
    assert_eq!(checksum_residues(&frags[1]).l4, None);
    assert_eq!(checksum_residues(&[0u8; 10]), ChecksumResidues::default());
}

#[test]
fn arp_is_not_ipv4() {
    let f = arp_request(DEFAULT_SRC_MAC, *CLIENT.ip(), *VIP.ip());
    assert_eq!(f.len(), 42);
    let p = parse(&f).expect("parses");
    assert_eq!(p.ethertype, ETH_P_ARP);
    assert!(p.ipv4.is_none());
    assert!(checksums_ok(&f).is_err());
}

// ---------------------------------------------------------------------------
// IPv6
// ---------------------------------------------------------------------------

use std::net::{Ipv6Addr, SocketAddrV6};

const fn sa6(last: u16, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last),
        port,
        0,
        0,
    )
}

const CLIENT6: SocketAddrV6 = sa6(1, 40000);
const VIP6: SocketAddrV6 = SocketAddrV6::new(
    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1),
    80,
    0,
    0,
);

fn hexbytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The IPv6 pseudo-header of RFC 8200 section 8.1, written out byte by
/// byte, followed by `segment` with its checksum field at `at` zeroed.
fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, segment: &[u8], at: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, proto]);
    let mut seg = segment.to_vec();
    seg[at..at + 2].copy_from_slice(&[0, 0]);
    b.extend_from_slice(&seg);
    b
}

/// Frames the kernel built (6.18, raw IPv6 sockets with IPV6_CHECKSUM set,
/// so that it computed the UDP and TCP checksums in software; ICMPv6 always
/// is), captured on a namespace's loopback with AF_PACKET: Ethernet
/// addresses zero, an automatic flow label. The builder writes the same
/// bytes.
#[test]
fn ipv6_checksums_match_frames_the_kernel_built() {
    let (a, b) = (sa6(1, 40000), sa6(2, 53));
    let kernel_udp = hexbytes(concat!(
        "00000000000000000000000086dd",
        "600be0c200101140",
        "20010db8000000000000000000000001",
        "20010db8000000000000000000000002",
        "9c40003500104dbb68656c6c6f207636"
    ));
    let udp = PacketBuilder::udp(a, b)
        .macs([0; 6], [0; 6])
        .flow_label(0xbe0c2)
        .payload(b"hello v6");
    assert_eq!(udp.build(), kernel_udp);

    let kernel_tcp = hexbytes(concat!(
        "00000000000000000000000086dd",
        "6005f75800180640",
        "20010db8000000000000000000000001",
        "20010db8000000000000000000000002",
        "9c40005000000001000000006002ffffa0340000020405a0"
    ));
    let tcp = PacketBuilder::tcp(a, sa6(2, 80))
        .macs([0; 6], [0; 6])
        .flow_label(0x5f758)
        .flags(TCP_SYN)
        .seq(1)
        .tcp_options(&[2, 4, 5, 0xa0]);
    assert_eq!(tcp.build(), kernel_tcp);

    let kernel_icmp = hexbytes(concat!(
        "00000000000000000000000086dd",
        "600afb5b000c3a40",
        "20010db8000000000000000000000001",
        "20010db8000000000000000000000002",
        "8000456b0007000170696e67"
    ));
    let echo = PacketBuilder::icmp_echo_request(*a.ip(), *b.ip(), 7, 1)
        .macs([0; 6], [0; 6])
        .flow_label(0xafb5b)
        .payload(b"ping");
    assert_eq!(echo.build(), kernel_icmp);

    for f in [&kernel_udp, &kernel_tcp, &kernel_icmp] {
        checksums_ok(f).expect("the kernel's checksums verify");
        let r = checksum_residues(f);
        assert!(
            r.l4.is_some_and(Residue::is_valid) && r.ipv4.is_none(),
            "{r:?}"
        );
    }
    let p = parse(&kernel_tcp).expect("parses");
    let ip = p.ip6().expect("ipv6");
    assert_eq!(
        (ip.flow_label, ip.hop_limit, ip.payload_len),
        (0x5f758, 64, 24)
    );
    assert_eq!(ip.source(), Ok(a));
    assert_eq!(ip.destination(), Ok(sa6(2, 80)));
    assert!(p.ip().is_err(), "not IPv4");
}

#[test]
fn extension_headers_round_trip_in_any_order_and_count() {
    let srh_segment = VIP6.ip().octets();
    let b = PacketBuilder::tcp(CLIENT6, VIP6)
        .hop_by_hop(&[5, 2, 0, 0]) // router alert
        .destination_options(&[])
        .routing(
            4,
            0,
            &[0, 0, 0, 0]
                .iter()
                .chain(&srh_segment)
                .copied()
                .collect::<Vec<_>>(),
        )
        .destination_options(&[0x1e, 1, 0x42]) // an option to skip, and padding
        .ext(ExtHeader::Other {
            kind: IPPROTO_EXPERIMENT1,
            bytes: vec![0, 0, 0, 0, 0, 0, 0],
        })
        .traffic_class(0xb8)
        .hop_limit(7)
        .flags(TCP_SYN | TCP_ECE_FOR_TESTS)
        .seq(0x1020_3040)
        .payload(b"syn data");
    let frame = b.build();
    let p = parse(&frame).expect("parses");
    let ip = p.ip6().expect("ipv6");
    assert_eq!(
        ip.ext_kinds(),
        vec![
            IPPROTO_HOPOPTS,
            IPPROTO_DSTOPTS,
            IPPROTO_ROUTING,
            IPPROTO_DSTOPTS,
            IPPROTO_EXPERIMENT1
        ]
    );
    let lens: Vec<usize> = ip.ext.iter().map(|e| e.bytes.len()).collect();
    assert_eq!(lens, vec![8, 8, 24, 8, 8]);
    let nexts: Vec<u8> = ip.ext.iter().map(|e| e.next_header).collect();
    assert_eq!(
        nexts,
        vec![
            IPPROTO_DSTOPTS,
            IPPROTO_ROUTING,
            IPPROTO_DSTOPTS,
            IPPROTO_EXPERIMENT1,
            IPPROTO_TCP
        ]
    );
    // PadN after the router alert (4 bytes) and an empty header (6 bytes of
    // PadN); Pad1 where one byte is missing.
    assert_eq!(ip.ext[0].bytes, vec![60, 0, 5, 2, 0, 0, 1, 0]);
    assert_eq!(ip.ext[1].bytes, vec![43, 0, 1, 4, 0, 0, 0, 0]);
    assert_eq!(ip.ext[3].bytes, vec![253, 0, 0x1e, 1, 0x42, 1, 1, 0]);
    assert_eq!(ip.ext[2].bytes[2..4], [4, 0]);
    assert_eq!((ip.next_header, ip.proto), (IPPROTO_HOPOPTS, IPPROTO_TCP));
    assert_eq!((ip.traffic_class, ip.hop_limit), (0xb8, 7));
    assert_eq!(usize::from(ip.payload_len), 56 + 20 + 8);
    assert_eq!(ip.tcp().expect("tcp").seq, 0x1020_3040);
    assert_eq!(ip.tcp().expect("tcp").payload, b"syn data".to_vec());
    assert_eq!(b.ip_header_len(), 40 + 56);
    checksums_ok(&frame).expect("valid");

    // The checksum covers the upper-layer packet only, over the IPv6
    // destination (not a routing header's final one).
    let seg = &frame[ETH_HLEN + 40 + 56..];
    let reference = reference_checksum(&pseudo6(*CLIENT6.ip(), *VIP6.ip(), IPPROTO_TCP, seg, 16));
    assert_eq!(be16(seg, 16), reference);

    // Three fragment-free headers in another order and count.
    let udp = PacketBuilder::udp(CLIENT6, VIP6)
        .destination_options(&[])
        .destination_options(&[])
        .destination_options(&[])
        .payload(b"x");
    let ip = parse(&udp.build()).expect("parses").ipv6.expect("ipv6");
    assert_eq!(ip.ext_kinds(), vec![IPPROTO_DSTOPTS; 3]);
    assert_eq!(ip.udp().expect("udp").length, 9);
    checksums_ok(&udp.build()).expect("valid");
}

/// The ECE flag, to show that flags pass through as set.
const TCP_ECE_FOR_TESTS: u8 = 0x40;

#[test]
fn udp_over_ipv6_zero_checksum_is_expressible_and_invalid() {
    let zero = PacketBuilder::udp(CLIENT6, VIP6)
        .udp_zero_checksum()
        .payload(b"q")
        .build();
    assert_eq!(be16(&zero, ETH_HLEN + 40 + 6), 0);
    assert!(
        checksums_ok(&zero)
            .expect_err("zero is invalid over IPv6")
            .contains("UDP checksum 0")
    );
    assert_eq!(checksum_residues(&zero).l4, Some(Residue::ZeroOverIpv6));
    assert!(!Residue::ZeroOverIpv6.is_valid());

    // A datagram whose checksum computes to 0 is sent with 0xffff: choose
    // the last two payload bytes so that the sum of everything else is
    // cancelled.
    let base = PacketBuilder::udp(CLIENT6, VIP6).payload(&[0x11, 0x22, 0, 0]);
    let c = be16(&base.build(), ETH_HLEN + 40 + 6);
    let forced = base.payload(&[0x11, 0x22, (c >> 8) as u8, c as u8]).build();
    assert_eq!(be16(&forced, ETH_HLEN + 40 + 6), 0xffff);
    checksums_ok(&forced).expect("0xffff is the valid form of a zero sum");
    let dgram = &forced[ETH_HLEN + 40..];
    let sum_all = reference_checksum(&pseudo6(*CLIENT6.ip(), *VIP6.ip(), IPPROTO_UDP, dgram, 6));
    assert_eq!(sum_all, 0, "the sum of the datagram alone is all ones");
}

#[test]
fn icmpv6_errors_quote_the_inner_packet_and_parse_back() {
    // Port unreachable quoting as much as fits (here: all of it).
    let inner = PacketBuilder::udp(CLIENT6, VIP6).payload(b"query");
    let err = PacketBuilder::icmp_error(
        *VIP6.ip(),
        *CLIENT6.ip(),
        ICMP6_DEST_UNREACH,
        ICMP6_PORT_UNREACH,
        &inner,
    )
    .hop_limit(64);
    let frame = err.build();
    checksums_ok(&frame).expect("valid");
    let p = parse(&frame).expect("parses");
    let ip = p.ip6().expect("ipv6");
    assert_eq!(ip.proto, IPPROTO_ICMPV6);
    let icmp = ip.icmp().expect("icmpv6");
    assert_eq!((icmp.icmp_type, icmp.code, icmp.rest), (1, 4, [0; 4]));
    assert_eq!(icmp.payload, inner.ipv6_bytes());
    let quoted = ip.icmp_inner().expect("inner parses");
    assert_eq!(quoted.source(), Ok(CLIENT6));
    assert_eq!(quoted.destination(), Ok(VIP6));
    let msg = &frame[ETH_HLEN + 40..];
    assert_eq!(
        be16(msg, 2),
        reference_checksum(&pseudo6(*VIP6.ip(), *CLIENT6.ip(), IPPROTO_ICMPV6, msg, 2)),
        "the ICMPv6 checksum covers the pseudo-header"
    );
    let r = checksum_residues(&frame);
    assert!(
        r.l4.is_some_and(Residue::is_valid) && r.inner_udp.is_some(),
        "{r:?}"
    );
    // With no payload the 8 quoted bytes are the whole datagram: the quoted
    // checksum verifies.
    let empty = PacketBuilder::udp(CLIENT6, VIP6);
    let r = checksum_residues(
        &PacketBuilder::icmp_error(*VIP6.ip(), *CLIENT6.ip(), 1, 4, &empty).build(),
    );
    assert!(r.inner_udp.is_some_and(Residue::is_valid), "{r:?}");

    // Packet Too Big about a large TCP segment: cut at the minimum MTU.
    let big = PacketBuilder::tcp(VIP6, CLIENT6)
        .flags(TCP_ACK)
        .payload(&[0x42; 1400]);
    let ptb = PacketBuilder::packet_too_big(
        Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 9),
        *VIP6.ip(),
        1280,
        &big,
    );
    let frame = ptb.build();
    assert_eq!(frame.len(), ETH_HLEN + IPV6_MIN_MTU);
    checksums_ok(&frame).expect("valid");
    let ip = parse(&frame).expect("parses").ipv6.expect("ipv6");
    let icmp = ip.icmp().expect("icmpv6");
    assert_eq!((icmp.icmp_type, icmp.code), (ICMP6_PACKET_TOO_BIG, 0));
    assert_eq!(icmp.rest, 1280u32.to_be_bytes());
    let quoted = ip.icmp_inner().expect("inner parses though cut");
    assert_eq!(quoted.payload_len, 20 + 1400);
    assert_eq!(quoted.source(), Ok(VIP6));
    assert_eq!(
        quoted.tcp().expect("tcp").payload.len(),
        1280 - 48 - 40 - 20
    );

    // A quote cut to the IPv6 header and 8 bytes, as a reject quotes.
    let cut = PacketBuilder::icmp(*VIP6.ip(), *CLIENT6.ip(), 1, 4)
        .payload(&inner.ipv6_bytes()[..48])
        .build();
    checksums_ok(&cut).expect("valid");
    let q = parse(&cut)
        .expect("p")
        .ipv6
        .expect("6")
        .icmp_inner()
        .expect("inner");
    assert_eq!(q.udp().expect("udp").dport, 80);
    // An error that quotes no IPv6 header is refused.
    let bogus = PacketBuilder::icmp(*VIP6.ip(), *CLIENT6.ip(), 1, 4)
        .payload(&[0x45; 40])
        .build();
    assert!(checksums_ok(&bogus).is_err());
}

#[test]
fn ndp_messages() {
    let mac = [0x02, 0xaa, 0, 0, 0, 1];
    let target = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x12, 0x3456);
    let ns = PacketBuilder::neighbor_solicitation(*CLIENT6.ip(), mac, target).build();
    checksums_ok(&ns).expect("valid");
    let p = parse(&ns).expect("parses");
    assert_eq!(p.eth_dst, [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]);
    let ip = p.ip6().expect("ipv6");
    assert_eq!(
        ip.dst,
        "ff02::1:ff12:3456".parse::<Ipv6Addr>().expect("addr")
    );
    assert_eq!(ip.hop_limit, 255);
    let icmp = ip.icmp().expect("icmpv6");
    assert_eq!(icmp.icmp_type, ICMP6_NEIGHBOR_SOLICIT);
    assert_eq!(icmp.payload[..16], target.octets());
    assert_eq!(icmp.payload[16..], [1, 1, 0x02, 0xaa, 0, 0, 0, 1]);
    assert!(ip.icmp_inner().is_err(), "NDP is no error");

    let na = PacketBuilder::neighbor_advertisement(
        target,
        [0x02, 0xbb, 0, 0, 0, 2],
        *CLIENT6.ip(),
        mac,
        target,
        NA_SOLICITED | NA_OVERRIDE,
    )
    .build();
    checksums_ok(&na).expect("valid");
    let ip = parse(&na).expect("parses").ipv6.expect("ipv6");
    let icmp = ip.icmp().expect("icmpv6");
    assert_eq!(
        (icmp.icmp_type, icmp.rest),
        (ICMP6_NEIGHBOR_ADVERT, [0x60, 0, 0, 0])
    );
    assert_eq!(icmp.payload[16..18], [NDP_OPT_TARGET_LLADDR, 1]);
    let msg = &na[ETH_HLEN + 40..];
    assert_eq!(
        be16(msg, 2),
        reference_checksum(&pseudo6(target, *CLIENT6.ip(), IPPROTO_ICMPV6, msg, 2))
    );
}

#[test]
fn ipv6_fragments_split_after_the_per_fragment_headers() {
    let full = PacketBuilder::udp(CLIENT6, VIP6)
        .hop_by_hop(&[])
        .destination_options(&[])
        .payload(&[7; 100]);
    let frame = full.build();
    let frags = fragment6(&frame, 64, 0xdead_beef);
    assert_eq!(frags.len(), 2);
    let (a, b) = (
        parse(&frags[0]).expect("a").ipv6.expect("a"),
        parse(&frags[1]).expect("b").ipv6.expect("b"),
    );
    // Hop-by-hop stays in front of the fragment header; the destination
    // options travel in the first fragment's fragmentable part.
    assert_eq!(
        a.ext_kinds(),
        vec![IPPROTO_HOPOPTS, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS]
    );
    assert_eq!(b.ext_kinds(), vec![IPPROTO_HOPOPTS, IPPROTO_FRAGMENT]);
    assert_eq!(
        a.fragment(),
        Some(Fragment6 {
            offset_units: 0,
            more: true,
            id: 0xdead_beef
        })
    );
    assert_eq!(
        b.fragment(),
        Some(Fragment6 {
            offset_units: 8,
            more: false,
            id: 0xdead_beef
        })
    );
    assert_eq!((a.payload_len, b.payload_len), (8 + 8 + 64, 8 + 8 + 52));
    assert_eq!(a.proto, IPPROTO_UDP);
    assert_eq!(a.udp().expect("first holds the UDP header").dport, 80);
    assert!(matches!(b.l4, ParsedL4::Other(_)));
    for f in &frags {
        checksums_ok(f).expect("fragments pass (no layer 4 check)");
    }
    assert!(checksum_residues(&frags[0]).l4.is_some());
    assert_eq!(checksum_residues(&frags[1]).l4, None);
    // Reassembled: the fragmentable parts give back the original.
    let mut joined = frags[0][ETH_HLEN + 40 + 8 + 8..].to_vec();
    joined.extend_from_slice(&frags[1][ETH_HLEN + 40 + 8 + 8..]);
    assert_eq!(joined, frame[ETH_HLEN + 40 + 8..].to_vec());
    // Without extension headers the fragment header follows the IPv6 header.
    let plain = fragment6(
        &PacketBuilder::tcp(CLIENT6, VIP6).payload(&[1; 30]).build(),
        32,
        5,
    );
    let ip = parse(&plain[0]).expect("p").ipv6.expect("6");
    assert_eq!(
        (ip.next_header, ip.ext_kinds()),
        (IPPROTO_FRAGMENT, vec![IPPROTO_FRAGMENT])
    );
    assert_eq!(ip.ext[0].next_header, IPPROTO_TCP);
    // The same fragment headers, built by hand.
    let by_hand = PacketBuilder::udp(CLIENT6, VIP6)
        .hop_by_hop(&[])
        .fragment_header(0xdead_beef, 0, true)
        .destination_options(&[])
        .payload(&[7; 100]);
    let hand = by_hand.build();
    assert_eq!(hand[..ETH_HLEN + 4], frags[0][..ETH_HLEN + 4]);
    assert_eq!(
        hand[ETH_HLEN + 6..ETH_HLEN + 40 + 16],
        frags[0][ETH_HLEN + 6..ETH_HLEN + 40 + 16]
    );
}

#[test]
fn ipv6_malformed_and_overrides() {
    let f = PacketBuilder::tcp(CLIENT6, VIP6)
        .hop_by_hop(&[0; 12])
        .build();
    assert!(
        parse(&f[..ETH_HLEN + 40 + 8]).is_err(),
        "extension header cut"
    );
    assert!(checksums_ok(&f[..ETH_HLEN + 30]).is_err());
    let long = PacketBuilder::udp(CLIENT6, VIP6).payload_len(100).build();
    assert!(
        checksums_ok(&long)
            .expect_err("bad")
            .contains("payload length")
    );
    let bad = PacketBuilder::tcp(CLIENT6, VIP6)
        .l4_checksum(0x1234)
        .build();
    assert!(
        checksums_ok(&bad)
            .expect_err("bad")
            .contains("TCP checksum")
    );
    let raw = PacketBuilder::ip_raw(*CLIENT6.ip(), *VIP6.ip(), 132)
        .payload(&[1, 2, 3, 4])
        .build();
    let ip = parse(&raw).expect("p").ipv6.expect("6");
    assert_eq!(
        (ip.proto, ip.l4.clone()),
        (132, ParsedL4::Other(vec![1, 2, 3, 4]))
    );
    // Short layer 4 headers parse as raw bytes.
    let short = &PacketBuilder::udp(CLIENT6, VIP6).build()[..ETH_HLEN + 40 + 6];
    let ip = parse(short).expect("p").ipv6.expect("6");
    assert!(matches!(ip.l4, ParsedL4::Other(_)));
}
