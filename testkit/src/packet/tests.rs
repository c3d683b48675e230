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
