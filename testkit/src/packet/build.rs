//! The frame builder ([`PacketBuilder`]): Ethernet + IPv4 + TCP, UDP or ICMP
//! with every length and checksum computed unless a test sets a wrong one;
//! ARP requests, plain Ethernet frames and IPv4 fragmentation.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{
    checksum::{internet_checksum, l4_checksum},
    consts::*,
};

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
