//! Ethernet + IPv4 + TCP/UDP/ICMP frames for packet tests, and parsers to
//! assert on what a program wrote.
//!
//! The builder computes every length and checksum (IPv4 header, TCP and UDP
//! over the pseudo-header, ICMP over its whole message) unless a test asks for
//! a specific wrong one. Frames are plain byte vectors: a test may truncate or
//! patch them as it likes.
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use svcnat::testing::packet::{PacketBuilder, TCP_SYN, checksums_ok};
//!
//! let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 40000);
//! let vip = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 80);
//! let frame = PacketBuilder::tcp(client, vip).flags(TCP_SYN).seq(7).build();
//! assert_eq!(frame.len(), 14 + 20 + 20);
//! checksums_ok(&frame).expect("the builder writes valid checksums");
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};

/// Length of an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Ethertype of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag PSH.
pub const TCP_PSH: u8 = 0x08;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP flag URG.
pub const TCP_URG: u8 = 0x20;

/// IPv4 flag "don't fragment" in the flags/fragment-offset word.
pub const IP_DF: u16 = 0x4000;
/// IPv4 flag "more fragments" in the flags/fragment-offset word.
pub const IP_MF: u16 = 0x2000;
/// Mask of the fragment offset (8-byte units) in the flags/fragment-offset word.
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// ICMP type: echo reply.
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP type: destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP type: echo request.
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP type: time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP destination unreachable code: port unreachable.
pub const ICMP_PORT_UNREACH: u8 = 3;
/// ICMP destination unreachable code: fragmentation needed and DF set.
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// MAC address the builder uses as source by default.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC address the builder uses as destination by default.
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

// ---------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero)
/// to a one's-complement accumulator, without folding.
pub fn csum_add(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc = add_carry(acc, u32::from(u16::from_be_bytes([w[0], w[1]])));
    }
    if let [last] = chunks.remainder() {
        acc = add_carry(acc, u32::from(*last) << 8);
    }
    acc
}

fn add_carry(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + u32::from(carry)
}

/// Folds a one's-complement accumulator to 16 bits (end-around carry).
pub fn csum_fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum (RFC 1071) of `data`: the complement of its folded
/// one's-complement sum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !csum_fold(csum_add(0, data))
}

/// The accumulator of the IPv4 pseudo-header of a TCP or UDP segment.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: u16) -> u32 {
    let mut acc = csum_add(0, &src.octets());
    acc = csum_add(acc, &dst.octets());
    acc = csum_add(acc, &[0, proto]);
    csum_add(acc, &l4_len.to_be_bytes())
}

/// The TCP or UDP checksum of `segment` (its checksum field must be zero)
/// between `src` and `dst`. For UDP a computed 0 is sent as 0xffff (RFC 768).
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).expect("an IPv4 segment is shorter than 64 KiB");
    let sum = !csum_fold(csum_add(pseudo_header_sum(src, dst, proto, len), segment));
    if proto == IPPROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    }
}

// ---------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------

/// IPv4 header fields of a [`PacketBuilder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Fields {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Type of service (DSCP + ECN).
    pub tos: u8,
    /// Identification.
    pub id: u16,
    /// Flags ([`IP_DF`], [`IP_MF`]) and fragment offset (8-byte units).
    pub flags_frag: u16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol number.
    pub proto: u8,
    /// Option bytes; their length must be a multiple of 4 (at most 40).
    pub options: Vec<u8>,
    /// Overrides the computed total length.
    pub total_len: Option<u16>,
    /// Overrides the computed header checksum.
    pub checksum: Option<u16>,
}

/// TCP header fields of a [`PacketBuilder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpFields {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack_seq: u32,
    /// `TCP_*` flag bits.
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Option bytes; their length must be a multiple of 4 (at most 40).
    pub options: Vec<u8>,
    /// Overrides the data offset computed from the options (32-bit words).
    pub data_offset: Option<u8>,
    /// Overrides the computed checksum.
    pub checksum: Option<u16>,
}

/// UDP header fields of a [`PacketBuilder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpFields {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Overrides the computed checksum (`Some(0)`: no checksum).
    pub checksum: Option<u16>,
    /// Overrides the computed length.
    pub length: Option<u16>,
}

/// ICMP header fields of a [`PacketBuilder`]; the message body is the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpFields {
    /// Type.
    pub icmp_type: u8,
    /// Code.
    pub code: u8,
    /// The four bytes after the checksum (echo id and sequence, next-hop MTU, ...).
    pub rest: [u8; 4],
    /// Overrides the computed checksum.
    pub checksum: Option<u16>,
}

/// The layer 4 header of a [`PacketBuilder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A TCP header.
    Tcp(TcpFields),
    /// A UDP header.
    Udp(UdpFields),
    /// An ICMP header.
    Icmp(IcmpFields),
    /// No header: the payload follows the IPv4 header as is (other protocols,
    /// hand-made headers).
    Raw,
}

/// Builds one Ethernet + IPv4 frame. Setters that do not apply to the layer 4
/// header chosen (for example [`PacketBuilder::seq`] on UDP) panic: they are
/// mistakes in a test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketBuilder {
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// IPv4 header.
    pub ip: Ipv4Fields,
    /// Layer 4 header.
    pub l4: L4,
    /// Bytes after the layer 4 header.
    pub payload: Vec<u8>,
}

impl PacketBuilder {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: L4) -> Self {
        PacketBuilder {
            eth_src: DEFAULT_SRC_MAC,
            eth_dst: DEFAULT_DST_MAC,
            ip: Ipv4Fields {
                src,
                dst,
                tos: 0,
                id: 0x1234,
                flags_frag: 0,
                ttl: 64,
                proto,
                options: Vec::new(),
                total_len: None,
                checksum: None,
            },
            l4,
            payload: Vec::new(),
        }
    }

    /// A TCP segment from `src` to `dst`: no flags, seq 0, ack 0, window 65535.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::new(
            *src.ip(),
            *dst.ip(),
            IPPROTO_TCP,
            L4::Tcp(TcpFields {
                sport: src.port(),
                dport: dst.port(),
                seq: 0,
                ack_seq: 0,
                flags: 0,
                window: 65535,
                urgent: 0,
                options: Vec::new(),
                data_offset: None,
                checksum: None,
            }),
        )
    }

    /// A UDP datagram from `src` to `dst`, with a checksum.
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::new(
            *src.ip(),
            *dst.ip(),
            IPPROTO_UDP,
            L4::Udp(UdpFields {
                sport: src.port(),
                dport: dst.port(),
                checksum: None,
                length: None,
            }),
        )
    }

    /// An ICMP message of `icmp_type`/`code`; the rest of the header is zero.
    pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8) -> Self {
        Self::new(
            src,
            dst,
            IPPROTO_ICMP,
            L4::Icmp(IcmpFields {
                icmp_type,
                code,
                rest: [0; 4],
                checksum: None,
            }),
        )
    }

    /// An ICMP echo request with identifier `id` and sequence `seq`.
    pub fn icmp_echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Self {
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        Self::icmp(src, dst, ICMP_ECHO_REQUEST, 0).icmp_rest([a, b, c, d])
    }

    /// An ICMP error (destination unreachable, time exceeded, ...) about
    /// `inner`: its body is the inner IPv4 header (options included) and the
    /// first 8 bytes of the inner layer 4 header, as RFC 792 asks.
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        inner: &PacketBuilder,
    ) -> Self {
        let inner_ip = inner.ipv4_bytes();
        let quoted = inner.ip_header_len() + 8;
        Self::icmp(src, dst, icmp_type, code).payload(&inner_ip[..quoted.min(inner_ip.len())])
    }

    /// An ICMP "fragmentation needed" about `inner`, announcing `mtu`.
    pub fn icmp_frag_needed(src: Ipv4Addr, dst: Ipv4Addr, mtu: u16, inner: &PacketBuilder) -> Self {
        let [a, b] = mtu.to_be_bytes();
        Self::icmp_error(src, dst, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, inner)
            .icmp_rest([0, 0, a, b])
    }

    /// An IPv4 packet of protocol `proto` whose body is the payload, as is.
    pub fn ip_raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self::new(src, dst, proto, L4::Raw)
    }

    /// Sets the Ethernet source and destination.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    /// Sets the IPv4 source and destination addresses.
    pub fn addrs(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.ip.src = src;
        self.ip.dst = dst;
        self
    }

    /// Sets the TCP or UDP ports.
    pub fn ports(mut self, sport: u16, dport: u16) -> Self {
        match &mut self.l4 {
            L4::Tcp(t) => (t.sport, t.dport) = (sport, dport),
            L4::Udp(u) => (u.sport, u.dport) = (sport, dport),
            other => panic!("ports() on a packet without ports: {other:?}"),
        }
        self
    }

    /// Sets the type of service byte.
    pub fn tos(mut self, tos: u8) -> Self {
        self.ip.tos = tos;
        self
    }

    /// Sets the time to live.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ip.ttl = ttl;
        self
    }

    /// Sets the IPv4 identification.
    pub fn id(mut self, id: u16) -> Self {
        self.ip.id = id;
        self
    }

    /// Sets or clears "don't fragment".
    pub fn dont_fragment(mut self, df: bool) -> Self {
        self.ip.flags_frag = (self.ip.flags_frag & !IP_DF) | if df { IP_DF } else { 0 };
        self
    }

    /// Sets "more fragments" and the fragment offset (in 8-byte units).
    pub fn fragment(mut self, more_fragments: bool, offset_units: u16) -> Self {
        assert!(
            offset_units <= IP_OFFSET_MASK,
            "fragment offset {offset_units} too large"
        );
        self.ip.flags_frag =
            (self.ip.flags_frag & IP_DF) | if more_fragments { IP_MF } else { 0 } | offset_units;
        self
    }

    /// Sets the IPv4 option bytes (a multiple of 4, at most 40).
    pub fn ip_options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IPv4 options must be a multiple of 4 bytes, at most 40: {}",
            options.len()
        );
        self.ip.options = options.to_vec();
        self
    }

    /// Sets the IPv4 protocol number (normally implied by the constructor).
    pub fn ip_proto(mut self, proto: u8) -> Self {
        self.ip.proto = proto;
        self
    }

    /// Overrides the IPv4 total length.
    pub fn ip_total_len(mut self, len: u16) -> Self {
        self.ip.total_len = Some(len);
        self
    }

    /// Overrides the IPv4 header checksum.
    pub fn ip_checksum(mut self, sum: u16) -> Self {
        self.ip.checksum = Some(sum);
        self
    }

    fn tcp_mut(&mut self) -> &mut TcpFields {
        match &mut self.l4 {
            L4::Tcp(t) => t,
            other => panic!("TCP setter on a non-TCP packet: {other:?}"),
        }
    }

    /// Sets the TCP flags (`TCP_*`).
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_mut().flags = flags;
        self
    }

    /// Sets the TCP sequence number.
    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_mut().seq = seq;
        self
    }

    /// Sets the TCP acknowledgement number (the ACK flag is set with [`Self::flags`]).
    pub fn ack_seq(mut self, ack_seq: u32) -> Self {
        self.tcp_mut().ack_seq = ack_seq;
        self
    }

    /// Sets the TCP window.
    pub fn window(mut self, window: u16) -> Self {
        self.tcp_mut().window = window;
        self
    }

    /// Sets the TCP urgent pointer.
    pub fn urgent(mut self, urgent: u16) -> Self {
        self.tcp_mut().urgent = urgent;
        self
    }

    /// Sets the TCP option bytes (a multiple of 4, at most 40).
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "TCP options must be a multiple of 4 bytes, at most 40: {}",
            options.len()
        );
        self.tcp_mut().options = options.to_vec();
        self
    }

    /// Overrides the TCP data offset (32-bit words).
    pub fn tcp_data_offset(mut self, words: u8) -> Self {
        assert!(words <= 15, "TCP data offset {words} does not fit 4 bits");
        self.tcp_mut().data_offset = Some(words);
        self
    }

    /// Sends the UDP datagram without a checksum (checksum field 0).
    pub fn udp_zero_checksum(mut self) -> Self {
        match &mut self.l4 {
            L4::Udp(u) => u.checksum = Some(0),
            other => panic!("udp_zero_checksum() on a non-UDP packet: {other:?}"),
        }
        self
    }

    /// Overrides the layer 4 (TCP, UDP or ICMP) checksum.
    pub fn l4_checksum(mut self, sum: u16) -> Self {
        match &mut self.l4 {
            L4::Tcp(t) => t.checksum = Some(sum),
            L4::Udp(u) => u.checksum = Some(sum),
            L4::Icmp(i) => i.checksum = Some(sum),
            L4::Raw => panic!("l4_checksum() on a raw packet"),
        }
        self
    }

    /// Sets the four ICMP header bytes after the checksum.
    pub fn icmp_rest(mut self, rest: [u8; 4]) -> Self {
        match &mut self.l4 {
            L4::Icmp(i) => i.rest = rest,
            other => panic!("icmp_rest() on a non-ICMP packet: {other:?}"),
        }
        self
    }

    /// Sets the bytes after the layer 4 header.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Length of the IPv4 header, options included.
    pub fn ip_header_len(&self) -> usize {
        20 + self.ip.options.len()
    }

    /// The layer 4 header and payload, checksums computed.
    pub fn l4_bytes(&self) -> Vec<u8> {
        let (src, dst) = (self.ip.src, self.ip.dst);
        match &self.l4 {
            L4::Tcp(t) => {
                let words = t.data_offset.unwrap_or(5 + (t.options.len() / 4) as u8);
                let mut b = Vec::with_capacity(20 + t.options.len() + self.payload.len());
                b.extend_from_slice(&t.sport.to_be_bytes());
                b.extend_from_slice(&t.dport.to_be_bytes());
                b.extend_from_slice(&t.seq.to_be_bytes());
                b.extend_from_slice(&t.ack_seq.to_be_bytes());
                b.push(words << 4);
                b.push(t.flags);
                b.extend_from_slice(&t.window.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&t.urgent.to_be_bytes());
                b.extend_from_slice(&t.options);
                b.extend_from_slice(&self.payload);
                let sum = t
                    .checksum
                    .unwrap_or_else(|| l4_checksum(src, dst, IPPROTO_TCP, &b));
                b[16..18].copy_from_slice(&sum.to_be_bytes());
                b
            }
            L4::Udp(u) => {
                let len = u16::try_from(8 + self.payload.len()).expect("UDP datagram too long");
                let mut b = Vec::with_capacity(usize::from(len));
                b.extend_from_slice(&u.sport.to_be_bytes());
                b.extend_from_slice(&u.dport.to_be_bytes());
                b.extend_from_slice(&u.length.unwrap_or(len).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&self.payload);
                let sum = u
                    .checksum
                    .unwrap_or_else(|| l4_checksum(src, dst, IPPROTO_UDP, &b));
                b[6..8].copy_from_slice(&sum.to_be_bytes());
                b
            }
            L4::Icmp(i) => {
                let mut b = Vec::with_capacity(8 + self.payload.len());
                b.extend_from_slice(&[i.icmp_type, i.code, 0, 0]);
                b.extend_from_slice(&i.rest);
                b.extend_from_slice(&self.payload);
                let sum = i.checksum.unwrap_or_else(|| internet_checksum(&b));
                b[2..4].copy_from_slice(&sum.to_be_bytes());
                b
            }
            L4::Raw => self.payload.clone(),
        }
    }

    /// The IPv4 packet (header, layer 4, payload), checksums computed.
    pub fn ipv4_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let hlen = self.ip_header_len();
        let total = u16::try_from(hlen + l4.len()).expect("IPv4 packet too long");
        let mut b = Vec::with_capacity(usize::from(total));
        b.push(0x40 | (hlen / 4) as u8);
        b.push(self.ip.tos);
        b.extend_from_slice(&self.ip.total_len.unwrap_or(total).to_be_bytes());
        b.extend_from_slice(&self.ip.id.to_be_bytes());
        b.extend_from_slice(&self.ip.flags_frag.to_be_bytes());
        b.push(self.ip.ttl);
        b.push(self.ip.proto);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.ip.src.octets());
        b.extend_from_slice(&self.ip.dst.octets());
        b.extend_from_slice(&self.ip.options);
        let sum = self
            .ip
            .checksum
            .unwrap_or_else(|| internet_checksum(&b[..hlen]));
        b[10..12].copy_from_slice(&sum.to_be_bytes());
        b.extend_from_slice(&l4);
        b
    }

    /// The whole Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        ethernet_frame(self.eth_dst, self.eth_src, ETH_P_IP, &self.ipv4_bytes())
    }
}

/// An Ethernet frame: destination, source, ethertype, then `payload`.
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(ETH_HLEN + payload.len());
    b.extend_from_slice(&dst);
    b.extend_from_slice(&src);
    b.extend_from_slice(&ethertype.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// A broadcast ARP request "who has `target_ip`? tell `sender_ip`".
pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    arp.extend_from_slice(&ETH_P_IP.to_be_bytes());
    arp.extend_from_slice(&[6, 4]);
    arp.extend_from_slice(&1u16.to_be_bytes()); // request
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender_ip.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target_ip.octets());
    ethernet_frame([0xff; 6], sender_mac, ETH_P_ARP, &arp)
}

/// Splits the IPv4 datagram in `frame` into fragments whose data (after the
/// IPv4 header) is at most `chunk` bytes, a multiple of 8. Each fragment copies
/// the Ethernet and IPv4 headers (options included), with its own total
/// length, "more fragments" flag, offset and header checksum.
pub fn fragment(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    assert!(
        chunk > 0 && chunk.is_multiple_of(8),
        "fragment size {chunk} must be a positive multiple of 8"
    );
    let ip = &frame[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let data = &ip[hlen..total];
    let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
    let base = flags_frag & IP_OFFSET_MASK;
    let last_has_mf = flags_frag & IP_MF != 0;
    let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    let n = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut out = frame[..ETH_HLEN + hlen].to_vec();
            out.extend_from_slice(piece);
            let h = &mut out[ETH_HLEN..];
            let len = u16::try_from(hlen + piece.len()).expect("fragment fits");
            h[2..4].copy_from_slice(&len.to_be_bytes());
            let offset = base + u16::try_from(i * chunk / 8).expect("offset fits");
            let mf = if i + 1 < n || last_has_mf { IP_MF } else { 0 };
            let word = (flags_frag & IP_DF) | mf | offset;
            h[6..8].copy_from_slice(&word.to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let sum = internet_checksum(&h[..hlen]);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            out
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A parsed Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFrame {
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// Ethertype.
    pub ethertype: u16,
    /// The IPv4 packet, when the ethertype is IPv4.
    pub ipv4: Option<ParsedIpv4>,
}

/// A parsed IPv4 header and what follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIpv4 {
    /// Version (4).
    pub version: u8,
    /// Header length in 32-bit words.
    pub ihl: u8,
    /// Type of service.
    pub tos: u8,
    /// Total length.
    pub total_len: u16,
    /// Identification.
    pub id: u16,
    /// Flags and fragment offset word ([`IP_DF`], [`IP_MF`], [`IP_OFFSET_MASK`]).
    pub flags_frag: u16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol.
    pub proto: u8,
    /// Header checksum.
    pub checksum: u16,
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Option bytes.
    pub options: Vec<u8>,
    /// What follows the header, up to the total length (or the frame's end).
    pub l4: ParsedL4,
}

/// A parsed TCP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedTcp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack_seq: u32,
    /// Data offset in 32-bit words.
    pub data_offset: u8,
    /// Flags.
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Checksum.
    pub checksum: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Bytes after the header (options excluded).
    pub payload: Vec<u8>,
}

/// A parsed UDP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedUdp {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Length field.
    pub length: u16,
    /// Checksum.
    pub checksum: u16,
    /// Bytes after the header.
    pub payload: Vec<u8>,
}

/// A parsed ICMP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIcmp {
    /// Type.
    pub icmp_type: u8,
    /// Code.
    pub code: u8,
    /// Checksum.
    pub checksum: u16,
    /// The four bytes after the checksum.
    pub rest: [u8; 4],
    /// The message body (for errors: the quoted inner packet).
    pub payload: Vec<u8>,
}

/// What follows an IPv4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedL4 {
    /// A TCP segment.
    Tcp(ParsedTcp),
    /// A UDP datagram.
    Udp(ParsedUdp),
    /// An ICMP message.
    Icmp(ParsedIcmp),
    /// Anything else: another protocol, a non-first fragment, a header too
    /// short to parse. The raw bytes.
    Other(Vec<u8>),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn mac(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// Parses an Ethernet frame; the IPv4 part when the ethertype says IPv4.
/// Errors when a header is shorter than it claims.
pub fn parse(frame: &[u8]) -> Result<ParsedFrame, String> {
    if frame.len() < ETH_HLEN {
        return Err(format!(
            "frame of {} bytes has no Ethernet header",
            frame.len()
        ));
    }
    let ethertype = be16(frame, 12);
    let ipv4 = if ethertype == ETH_P_IP {
        Some(parse_ipv4(&frame[ETH_HLEN..])?)
    } else {
        None
    };
    Ok(ParsedFrame {
        eth_dst: mac(&frame[0..6]),
        eth_src: mac(&frame[6..12]),
        ethertype,
        ipv4,
    })
}

/// Parses an IPv4 packet (no Ethernet header), e.g. the one an ICMP error quotes.
/// The layer 4 header is parsed only in a first fragment that holds all of it;
/// data is taken up to the total length, or to the end of `ip` if shorter.
pub fn parse_ipv4(ip: &[u8]) -> Result<ParsedIpv4, String> {
    if ip.len() < 20 {
        return Err(format!("IPv4 header truncated: {} bytes", ip.len()));
    }
    let ihl = ip[0] & 0x0f;
    let hlen = usize::from(ihl) * 4;
    if hlen < 20 || ip.len() < hlen {
        return Err(format!("IPv4 header length {hlen} with {} bytes", ip.len()));
    }
    let total_len = be16(ip, 2);
    let end = usize::from(total_len).clamp(hlen, ip.len());
    let body = &ip[hlen..end];
    let flags_frag = be16(ip, 6);
    let proto = ip[9];
    let l4 = if flags_frag & IP_OFFSET_MASK != 0 {
        ParsedL4::Other(body.to_vec())
    } else {
        parse_l4(proto, body)
    };
    Ok(ParsedIpv4 {
        version: ip[0] >> 4,
        ihl,
        tos: ip[1],
        total_len,
        id: be16(ip, 4),
        flags_frag,
        ttl: ip[8],
        proto,
        checksum: be16(ip, 10),
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        options: ip[20..hlen].to_vec(),
        l4,
    })
}

fn parse_l4(proto: u8, b: &[u8]) -> ParsedL4 {
    match proto {
        IPPROTO_TCP if b.len() >= 20 && usize::from(b[12] >> 4) * 4 >= 20 => {
            let doff = usize::from(b[12] >> 4) * 4;
            ParsedL4::Tcp(ParsedTcp {
                sport: be16(b, 0),
                dport: be16(b, 2),
                seq: be32(b, 4),
                ack_seq: be32(b, 8),
                data_offset: b[12] >> 4,
                flags: b[13],
                window: be16(b, 14),
                checksum: be16(b, 16),
                urgent: be16(b, 18),
                payload: b.get(doff..).unwrap_or_default().to_vec(),
            })
        }
        IPPROTO_UDP if b.len() >= 8 => ParsedL4::Udp(ParsedUdp {
            sport: be16(b, 0),
            dport: be16(b, 2),
            length: be16(b, 4),
            checksum: be16(b, 6),
            payload: b[8..].to_vec(),
        }),
        IPPROTO_ICMP if b.len() >= 8 => ParsedL4::Icmp(ParsedIcmp {
            icmp_type: b[0],
            code: b[1],
            checksum: be16(b, 2),
            rest: [b[4], b[5], b[6], b[7]],
            payload: b[8..].to_vec(),
        }),
        _ => ParsedL4::Other(b.to_vec()),
    }
}

impl ParsedFrame {
    /// The IPv4 packet, or an error naming the ethertype.
    pub fn ip(&self) -> Result<&ParsedIpv4, String> {
        self.ipv4
            .as_ref()
            .ok_or_else(|| format!("not IPv4: ethertype {:#06x}", self.ethertype))
    }
}

impl ParsedIpv4 {
    /// The TCP header, or an error.
    pub fn tcp(&self) -> Result<&ParsedTcp, String> {
        match &self.l4 {
            ParsedL4::Tcp(t) => Ok(t),
            other => Err(format!("not a TCP segment: {other:?}")),
        }
    }

    /// The UDP header, or an error.
    pub fn udp(&self) -> Result<&ParsedUdp, String> {
        match &self.l4 {
            ParsedL4::Udp(u) => Ok(u),
            other => Err(format!("not a UDP datagram: {other:?}")),
        }
    }

    /// The ICMP header, or an error.
    pub fn icmp(&self) -> Result<&ParsedIcmp, String> {
        match &self.l4 {
            ParsedL4::Icmp(i) => Ok(i),
            other => Err(format!("not an ICMP message: {other:?}")),
        }
    }

    /// Source address and port (TCP or UDP).
    pub fn source(&self) -> Result<SocketAddrV4, String> {
        match &self.l4 {
            ParsedL4::Tcp(t) => Ok(SocketAddrV4::new(self.src, t.sport)),
            ParsedL4::Udp(u) => Ok(SocketAddrV4::new(self.src, u.sport)),
            other => Err(format!("no ports: {other:?}")),
        }
    }

    /// Destination address and port (TCP or UDP).
    pub fn destination(&self) -> Result<SocketAddrV4, String> {
        match &self.l4 {
            ParsedL4::Tcp(t) => Ok(SocketAddrV4::new(self.dst, t.dport)),
            ParsedL4::Udp(u) => Ok(SocketAddrV4::new(self.dst, u.dport)),
            other => Err(format!("no ports: {other:?}")),
        }
    }
}

/// Checks every checksum of an Ethernet + IPv4 frame: the IPv4 header; the
/// TCP or UDP checksum over the pseudo-header (a UDP checksum of 0 means none
/// and passes) unless the packet is a fragment; the ICMP checksum over the
/// whole message and, for ICMP errors, the header checksum of the quoted IPv4
/// packet. Also checks that the frame holds the total length the IPv4 header
/// claims. Errors name the first bad field.
pub fn checksums_ok(frame: &[u8]) -> Result<(), String> {
    if frame.len() < ETH_HLEN + 20 {
        return Err(format!(
            "frame of {} bytes holds no IPv4 header",
            frame.len()
        ));
    }
    let ethertype = be16(frame, 12);
    if ethertype != ETH_P_IP {
        return Err(format!("not IPv4: ethertype {ethertype:#06x}"));
    }
    let ip = &frame[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || hlen < 20 || ip.len() < hlen {
        return Err(format!("bad IPv4 version/IHL byte {:#04x}", ip[0]));
    }
    let sum = csum_fold(csum_add(0, &ip[..hlen]));
    if sum != 0xffff {
        return Err(format!(
            "IPv4 header checksum {:#06x} is wrong (should be {:#06x})",
            be16(ip, 10),
            expected_field(&ip[..hlen], 10)
        ));
    }
    let total = usize::from(be16(ip, 2));
    if total < hlen || total > ip.len() {
        return Err(format!(
            "IPv4 total length {total} but {} bytes after Ethernet",
            ip.len()
        ));
    }
    let flags_frag = be16(ip, 6);
    if flags_frag & (IP_MF | IP_OFFSET_MASK) != 0 {
        // A fragment: the layer 4 checksum covers the whole datagram.
        return Ok(());
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let body = &ip[hlen..total];
    let len = u16::try_from(body.len()).expect("fits: total is a u16");
    match ip[9] {
        proto @ (IPPROTO_TCP | IPPROTO_UDP) => {
            let (min, at) = if proto == IPPROTO_TCP {
                (20, 16)
            } else {
                (8, 6)
            };
            if body.len() < min {
                return Err(format!("layer 4 header truncated: {} bytes", body.len()));
            }
            if proto == IPPROTO_UDP && be16(body, 6) == 0 {
                return Ok(());
            }
            let sum = csum_fold(csum_add(pseudo_header_sum(src, dst, proto, len), body));
            if sum != 0xffff {
                let mut zeroed = body.to_vec();
                zeroed[at..at + 2].copy_from_slice(&[0, 0]);
                return Err(format!(
                    "{} checksum {:#06x} is wrong (should be {:#06x})",
                    if proto == IPPROTO_TCP { "TCP" } else { "UDP" },
                    be16(body, at),
                    l4_checksum(src, dst, proto, &zeroed)
                ));
            }
        }
        IPPROTO_ICMP => {
            if body.len() < 8 {
                return Err(format!("ICMP header truncated: {} bytes", body.len()));
            }
            if csum_fold(csum_add(0, body)) != 0xffff {
                return Err(format!(
                    "ICMP checksum {:#06x} is wrong (should be {:#06x})",
                    be16(body, 2),
                    expected_field(body, 2)
                ));
            }
            if matches!(body[0], 3 | 4 | 5 | 11 | 12) && body.len() >= 8 + 20 {
                let inner = &body[8..];
                let ihl = usize::from(inner[0] & 0x0f) * 4;
                if inner[0] >> 4 == 4 && ihl >= 20 && inner.len() >= ihl {
                    if csum_fold(csum_add(0, &inner[..ihl])) != 0xffff {
                        return Err(format!(
                            "inner IPv4 header checksum {:#06x} is wrong (should be {:#06x})",
                            be16(inner, 10),
                            expected_field(&inner[..ihl], 10)
                        ));
                    }
                } else {
                    return Err("ICMP error quotes no IPv4 header".to_string());
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// What one checksum of a frame adds up to: the folded one's-complement sum
/// of everything it covers, checksum field included (0 and 0xffff, the two
/// zeros of one's complement, both read as 0xffff, which is what a valid
/// checksum gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residue {
    /// The sum over the covered bytes that are in the frame.
    Sum(u16),
    /// A UDP checksum field of 0: the sender computed no checksum.
    NoChecksum,
}

impl Residue {
    fn of(acc: u32) -> Self {
        match csum_fold(acc) {
            0 => Residue::Sum(0xffff),
            s => Residue::Sum(s),
        }
    }

    /// The checksum verifies (or there is none, for UDP).
    pub fn is_valid(self) -> bool {
        matches!(self, Residue::Sum(0xffff) | Residue::NoChecksum)
    }
}

/// The residue of every checksum an Ethernet + IPv4 frame carries, as far
/// as the frame holds what it covers (`None`: the frame has no such
/// checksum, or not enough of it).
///
/// A rewrite that updates checksums incrementally keeps every residue: a
/// valid checksum stays valid and a wrong one stays wrong by the same
/// amount. Comparing the residues of a packet before and after a program
/// ran checks its checksum updates even for packets whose checksums were
/// wrong on arrival, for first fragments (whose layer 4 checksum covers
/// bytes that are not in the frame) and for the quoted UDP header of an
/// ICMP error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumResidues {
    /// The IPv4 header checksum.
    pub ipv4: Option<Residue>,
    /// The TCP or UDP checksum over the pseudo-header (with the length of
    /// the layer 4 bytes present) and those bytes; the ICMP checksum over
    /// the message. `None` for later fragments and other protocols.
    pub l4: Option<Residue>,
    /// The header checksum of the IPv4 header an ICMP error quotes.
    pub inner_ipv4: Option<Residue>,
    /// The checksum of the UDP header an ICMP error quotes, over the quoted
    /// packet's pseudo-header (with the quoted UDP length) and the 8 quoted
    /// bytes: the rest of that datagram is not in the frame and cannot change
    /// (so it verifies only when the datagram had no payload).
    pub inner_udp: Option<Residue>,
}

/// The [`ChecksumResidues`] of `frame`. Never fails: what cannot be parsed
/// has no residue.
pub fn checksum_residues(frame: &[u8]) -> ChecksumResidues {
    let mut r = ChecksumResidues::default();
    if frame.len() < ETH_HLEN + 20 || be16(frame, 12) != ETH_P_IP {
        return r;
    }
    let ip = &frame[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || hlen < 20 || ip.len() < hlen {
        return r;
    }
    r.ipv4 = Some(Residue::of(csum_add(0, &ip[..hlen])));
    if be16(ip, 6) & IP_OFFSET_MASK != 0 {
        return r;
    }
    let end = usize::from(be16(ip, 2)).clamp(hlen, ip.len());
    let body = &ip[hlen..end];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    match ip[9] {
        IPPROTO_TCP if body.len() >= 20 => {
            r.l4 = Some(Residue::of(csum_add(
                pseudo_header_sum(src, dst, IPPROTO_TCP, len),
                body,
            )));
        }
        IPPROTO_UDP if body.len() >= 8 => {
            r.l4 = Some(if be16(body, 6) == 0 {
                Residue::NoChecksum
            } else {
                Residue::of(csum_add(
                    pseudo_header_sum(src, dst, IPPROTO_UDP, len),
                    body,
                ))
            });
        }
        IPPROTO_ICMP if body.len() >= 8 => {
            r.l4 = Some(Residue::of(csum_add(0, body)));
            let inner = &body[8..];
            if matches!(body[0], 3 | 4 | 5 | 11 | 12) && inner.len() >= 20 {
                let ihl = usize::from(inner[0] & 0x0f) * 4;
                if inner[0] >> 4 == 4 && ihl >= 20 && inner.len() >= ihl {
                    r.inner_ipv4 = Some(Residue::of(csum_add(0, &inner[..ihl])));
                    let udp = &inner[ihl..];
                    if inner[9] == IPPROTO_UDP
                        && be16(inner, 6) & IP_OFFSET_MASK == 0
                        && udp.len() >= 8
                    {
                        r.inner_udp = Some(if be16(udp, 6) == 0 {
                            Residue::NoChecksum
                        } else {
                            let isrc = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
                            let idst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
                            Residue::of(csum_add(
                                pseudo_header_sum(isrc, idst, IPPROTO_UDP, be16(udp, 4)),
                                &udp[..8],
                            ))
                        });
                    }
                }
            }
        }
        _ => {}
    }
    r
}

/// The Internet checksum `data` should carry in its field at `at`.
fn expected_field(data: &[u8], at: usize) -> u16 {
    let mut zeroed = data.to_vec();
    zeroed[at..at + 2].copy_from_slice(&[0, 0]);
    internet_checksum(&zeroed)
}

#[cfg(test)]
mod tests {
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
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
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
        let err = PacketBuilder::icmp_error(*VIP.ip(), *CLIENT.ip(), ICMP_DEST_UNREACH, 3, &inner)
            .build();
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
}
