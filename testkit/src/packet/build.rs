//! The frame builder ([`PacketBuilder`]): Ethernet + IPv4 or IPv6 (with
//! extension headers) + TCP, UDP, ICMP or ICMPv6, with every length and
//! checksum computed unless a test sets a wrong one; ARP requests, NDP,
//! plain Ethernet frames and fragmentation of both families.
//!
//! The two families are one builder: [`PacketBuilder<Ipv4Fields>`] (the
//! default) and [`PacketBuilder<Ipv6Fields>`] share the layer 4 headers and
//! every setter of them; the constructors pick the family from the type of
//! the addresses they are given ([`SocketAddrV4`] or [`SocketAddrV6`]), and
//! [`IpFamily`] holds what differs (the IP header, the pseudo-header, the
//! ICMP protocol and its checksum, what an ICMP error quotes).

use std::{
    fmt::Debug,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use super::{
    checksum::{internet_checksum, l4_checksum, l4_checksum6},
    consts::*,
    parse::ext_chain,
};

/// What differs between IPv4 and IPv6 for the builder: the IP header
/// fields (`Self`), their addresses, the header bytes, the layer 4
/// checksum (pseudo-header; ICMP's plain checksum or ICMPv6's over the
/// pseudo-header) and the ICMP numbers.
pub trait IpFamily: Clone + Debug + PartialEq + Eq {
    /// The address type.
    type Addr: Copy + Debug + Eq;
    /// The ethertype.
    const ETHERTYPE: u16;
    /// The protocol number of the family's ICMP.
    const ICMP_PROTO: u8;
    /// The ICMP type of an echo request.
    const ECHO_REQUEST: u8;
    /// Header fields from `src` to `dst` with upper-layer protocol `proto`
    /// and the builder's defaults (hop limit 64, ...).
    fn fields(src: Self::Addr, dst: Self::Addr, proto: u8) -> Self;
    /// Source address.
    fn src(&self) -> Self::Addr;
    /// Destination address.
    fn dst(&self) -> Self::Addr;
    /// Sets both addresses.
    fn set_addrs(&mut self, src: Self::Addr, dst: Self::Addr);
    /// Length of the header, options or extension headers included.
    fn header_len(&self) -> usize;
    /// The checksum of the layer 4 `segment` of `proto` (its checksum field
    /// zero) in a packet with these fields.
    fn l4_checksum(&self, proto: u8, segment: &[u8]) -> u16;
    /// The IP packet: header (and extension headers) then `l4`.
    fn packet(&self, l4: &[u8]) -> Vec<u8>;
    /// How many bytes of an IP packet of `len` bytes with a header of
    /// `header_len` an ICMP error quotes.
    fn quote_len(len: usize, header_len: usize) -> usize;
}

/// An IP address of one family ([`Ipv4Addr`], [`Ipv6Addr`]): what makes
/// `PacketBuilder::icmp(a, b, ..)` an IPv4 or an IPv6 packet.
pub trait IpAddress: Copy {
    /// The header fields of its family.
    type Family: IpFamily;
    /// Itself, as the family's address.
    fn addr(self) -> <Self::Family as IpFamily>::Addr;
}

/// A socket address of one family ([`SocketAddrV4`], [`SocketAddrV6`]):
/// what makes `PacketBuilder::tcp(a, b)` an IPv4 or an IPv6 packet.
pub trait SocketAddress: Copy {
    /// The header fields of its family.
    type Family: IpFamily;
    /// Its address and port.
    fn parts(self) -> (<Self::Family as IpFamily>::Addr, u16);
}

impl IpAddress for Ipv4Addr {
    type Family = Ipv4Fields;
    fn addr(self) -> Ipv4Addr {
        self
    }
}

impl IpAddress for Ipv6Addr {
    type Family = Ipv6Fields;
    fn addr(self) -> Ipv6Addr {
        self
    }
}

impl SocketAddress for SocketAddrV4 {
    type Family = Ipv4Fields;
    fn parts(self) -> (Ipv4Addr, u16) {
        (*self.ip(), self.port())
    }
}

impl SocketAddress for SocketAddrV6 {
    type Family = Ipv6Fields;
    fn parts(self) -> (Ipv6Addr, u16) {
        (*self.ip(), self.port())
    }
}

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

impl IpFamily for Ipv4Fields {
    type Addr = Ipv4Addr;
    const ETHERTYPE: u16 = ETH_P_IP;
    const ICMP_PROTO: u8 = IPPROTO_ICMP;
    const ECHO_REQUEST: u8 = ICMP_ECHO_REQUEST;

    fn fields(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Ipv4Fields {
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
        }
    }

    fn src(&self) -> Ipv4Addr {
        self.src
    }

    fn dst(&self) -> Ipv4Addr {
        self.dst
    }

    fn set_addrs(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        (self.src, self.dst) = (src, dst);
    }

    fn header_len(&self) -> usize {
        20 + self.options.len()
    }

    fn l4_checksum(&self, proto: u8, segment: &[u8]) -> u16 {
        if proto == IPPROTO_ICMP {
            internet_checksum(segment)
        } else {
            l4_checksum(self.src, self.dst, proto, segment)
        }
    }

    fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let hlen = self.header_len();
        let total = u16::try_from(hlen + l4.len()).expect("IPv4 packet too long");
        let mut b = Vec::with_capacity(usize::from(total));
        b.push(0x40 | (hlen / 4) as u8);
        b.push(self.tos);
        b.extend_from_slice(&self.total_len.unwrap_or(total).to_be_bytes());
        b.extend_from_slice(&self.id.to_be_bytes());
        b.extend_from_slice(&self.flags_frag.to_be_bytes());
        b.push(self.ttl);
        b.push(self.proto);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.src.octets());
        b.extend_from_slice(&self.dst.octets());
        b.extend_from_slice(&self.options);
        let sum = self
            .checksum
            .unwrap_or_else(|| internet_checksum(&b[..hlen]));
        b[10..12].copy_from_slice(&sum.to_be_bytes());
        b.extend_from_slice(l4);
        b
    }

    /// The header and the first 8 bytes after it (RFC 792).
    fn quote_len(len: usize, header_len: usize) -> usize {
        (header_len + 8).min(len)
    }
}

/// One IPv6 extension header of a [`PacketBuilder<Ipv6Fields>`]. The
/// builder writes each one's next header field from the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Hop-by-hop options ([`IPPROTO_HOPOPTS`]): the option bytes, padded
    /// with Pad1/PadN to a multiple of 8 with the 2 first bytes.
    HopByHop(Vec<u8>),
    /// Destination options ([`IPPROTO_DSTOPTS`]), padded as [`Self::HopByHop`].
    DestinationOptions(Vec<u8>),
    /// A routing header ([`IPPROTO_ROUTING`]): its type, segments left and
    /// the bytes after its 4 first, zero-padded to a multiple of 8 with them.
    Routing {
        /// Routing type (4: segment routing, RFC 8754).
        routing_type: u8,
        /// Segments left.
        segments_left: u8,
        /// Type-specific data.
        data: Vec<u8>,
    },
    /// A fragment header ([`IPPROTO_FRAGMENT`]).
    Fragment {
        /// Fragment offset in 8-byte units (13 bits).
        offset_units: u16,
        /// "More fragments".
        more: bool,
        /// Identification.
        id: u32,
    },
    /// Any other header, announced by next header `kind`: `bytes` is the
    /// whole header after its next header byte, as is (for the format of
    /// RFC 7045, a length byte in 8-byte units beyond the first 8, then
    /// data).
    Other {
        /// The next header value that announces it.
        kind: u8,
        /// The header without its first byte.
        bytes: Vec<u8>,
    },
}

impl ExtHeader {
    /// The next header value that announces this header.
    pub fn kind(&self) -> u8 {
        match self {
            ExtHeader::HopByHop(_) => IPPROTO_HOPOPTS,
            ExtHeader::DestinationOptions(_) => IPPROTO_DSTOPTS,
            ExtHeader::Routing { .. } => IPPROTO_ROUTING,
            ExtHeader::Fragment { .. } => IPPROTO_FRAGMENT,
            ExtHeader::Other { kind, .. } => *kind,
        }
    }

    /// The header's bytes, with `next` as its next header.
    pub fn bytes(&self, next: u8) -> Vec<u8> {
        fn padded(mut b: Vec<u8>, pad_options: bool) -> Vec<u8> {
            let pad = (8 - b.len() % 8) % 8;
            match (pad, pad_options) {
                (0, _) => {}
                (1, true) => b.push(0), // Pad1
                (n, true) => {
                    b.extend_from_slice(&[1, (n - 2) as u8]); // PadN
                    b.resize(b.len() + n - 2, 0);
                }
                (n, false) => b.resize(b.len() + n, 0),
            }
            let units = u8::try_from(b.len() / 8 - 1).expect("extension header too long");
            b[1] = units;
            b
        }
        match self {
            ExtHeader::HopByHop(opts) | ExtHeader::DestinationOptions(opts) => {
                let mut b = vec![next, 0];
                b.extend_from_slice(opts);
                padded(b, true)
            }
            ExtHeader::Routing {
                routing_type,
                segments_left,
                data,
            } => {
                let mut b = vec![next, 0, *routing_type, *segments_left];
                b.extend_from_slice(data);
                padded(b, false)
            }
            ExtHeader::Fragment {
                offset_units,
                more,
                id,
            } => {
                assert!(
                    *offset_units <= IP6_OFFSET_MASK >> 3,
                    "fragment offset {offset_units} too large"
                );
                let word = (offset_units << 3) | u16::from(*more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&word.to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
            ExtHeader::Other { bytes, .. } => {
                let mut b = vec![next];
                b.extend_from_slice(bytes);
                b
            }
        }
    }
}

/// IPv6 header fields of a [`PacketBuilder<Ipv6Fields>`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Fields {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address (also the pseudo-header's).
    pub dst: Ipv6Addr,
    /// Traffic class (DSCP + ECN).
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// Hop limit.
    pub hop_limit: u8,
    /// The upper-layer protocol: the next header of the last extension
    /// header (or of the IPv6 header).
    pub proto: u8,
    /// Extension headers, in order.
    pub ext: Vec<ExtHeader>,
    /// Overrides the computed payload length.
    pub payload_len: Option<u16>,
}

impl IpFamily for Ipv6Fields {
    type Addr = Ipv6Addr;
    const ETHERTYPE: u16 = ETH_P_IPV6;
    const ICMP_PROTO: u8 = IPPROTO_ICMPV6;
    const ECHO_REQUEST: u8 = ICMP6_ECHO_REQUEST;

    fn fields(src: Ipv6Addr, dst: Ipv6Addr, proto: u8) -> Self {
        Ipv6Fields {
            src,
            dst,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            proto,
            ext: Vec::new(),
            payload_len: None,
        }
    }

    fn src(&self) -> Ipv6Addr {
        self.src
    }

    fn dst(&self) -> Ipv6Addr {
        self.dst
    }

    fn set_addrs(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        (self.src, self.dst) = (src, dst);
    }

    fn header_len(&self) -> usize {
        IPV6_HLEN + self.ext_bytes().len()
    }

    fn l4_checksum(&self, proto: u8, segment: &[u8]) -> u16 {
        l4_checksum6(self.src, self.dst, proto, segment)
    }

    fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let ext = self.ext_bytes();
        let plen = u16::try_from(ext.len() + l4.len()).expect("IPv6 payload too long");
        let first = self.ext.first().map_or(self.proto, ExtHeader::kind);
        assert!(self.flow_label <= 0xf_ffff, "flow label has 20 bits");
        let word = (6u32 << 28) | (u32::from(self.traffic_class) << 20) | self.flow_label;
        let mut b = Vec::with_capacity(IPV6_HLEN + usize::from(plen));
        b.extend_from_slice(&word.to_be_bytes());
        b.extend_from_slice(&self.payload_len.unwrap_or(plen).to_be_bytes());
        b.push(first);
        b.push(self.hop_limit);
        b.extend_from_slice(&self.src.octets());
        b.extend_from_slice(&self.dst.octets());
        b.extend_from_slice(&ext);
        b.extend_from_slice(l4);
        b
    }

    /// As much as fits in an ICMPv6 error of the minimum MTU (RFC 4443
    /// section 2.4 (c)): 1280 - 40 - 8 bytes.
    fn quote_len(len: usize, _header_len: usize) -> usize {
        len.min(IPV6_MIN_MTU - IPV6_HLEN - 8)
    }
}

impl Ipv6Fields {
    /// The extension headers' bytes, each with its next header filled in.
    pub fn ext_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for (i, h) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, ExtHeader::kind);
            b.extend_from_slice(&h.bytes(next));
        }
        b
    }
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

/// ICMP or ICMPv6 header fields of a [`PacketBuilder`]; the message body is
/// the payload.
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
    /// An ICMP header (ICMPv6 in an IPv6 packet).
    Icmp(IcmpFields),
    /// No header: the payload follows the IP header as is (other protocols,
    /// hand-made headers).
    Raw,
}

/// Builds one Ethernet + IPv4 frame, or (`F` = [`Ipv6Fields`]) one
/// Ethernet + IPv6 frame. Setters that do not apply to the layer 4 header
/// chosen (for example [`PacketBuilder::seq`] on UDP) panic: they are
/// mistakes in a test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketBuilder<F: IpFamily = Ipv4Fields> {
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// IP header (IPv4 or IPv6).
    pub ip: F,
    /// Layer 4 header.
    pub l4: L4,
    /// Bytes after the layer 4 header.
    pub payload: Vec<u8>,
}

impl<F: IpFamily> PacketBuilder<F> {
    fn new(ip: F, l4: L4) -> Self {
        PacketBuilder {
            eth_src: DEFAULT_SRC_MAC,
            eth_dst: DEFAULT_DST_MAC,
            ip,
            l4,
            payload: Vec::new(),
        }
    }

    /// A TCP segment from `src` to `dst` (both [`SocketAddrV4`] or both
    /// [`SocketAddrV6`]): no flags, seq 0, ack 0, window 65535.
    pub fn tcp<S: SocketAddress<Family = F>>(src: S, dst: S) -> Self {
        let ((s, sport), (d, dport)) = (src.parts(), dst.parts());
        Self::new(
            F::fields(s, d, IPPROTO_TCP),
            L4::Tcp(TcpFields {
                sport,
                dport,
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
    pub fn udp<S: SocketAddress<Family = F>>(src: S, dst: S) -> Self {
        let ((s, sport), (d, dport)) = (src.parts(), dst.parts());
        Self::new(
            F::fields(s, d, IPPROTO_UDP),
            L4::Udp(UdpFields {
                sport,
                dport,
                checksum: None,
                length: None,
            }),
        )
    }

    /// An ICMP message (ICMPv6 between IPv6 addresses) of
    /// `icmp_type`/`code`; the rest of the header is zero.
    pub fn icmp<A: IpAddress<Family = F>>(src: A, dst: A, icmp_type: u8, code: u8) -> Self {
        Self::new(
            F::fields(src.addr(), dst.addr(), F::ICMP_PROTO),
            L4::Icmp(IcmpFields {
                icmp_type,
                code,
                rest: [0; 4],
                checksum: None,
            }),
        )
    }

    /// An ICMP (or ICMPv6) echo request with identifier `id` and sequence `seq`.
    pub fn icmp_echo_request<A: IpAddress<Family = F>>(src: A, dst: A, id: u16, seq: u16) -> Self {
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        Self::icmp(src, dst, F::ECHO_REQUEST, 0).icmp_rest([a, b, c, d])
    }

    /// An ICMP error (destination unreachable, time exceeded, ...) about
    /// `inner`. IPv4: its body is the inner IPv4 header (options included)
    /// and the first 8 bytes of the inner layer 4 header, as RFC 792 asks.
    /// IPv6: as much of the inner packet as fits in the minimum MTU, as RFC
    /// 4443 asks (to quote less, build [`Self::icmp`] with a payload cut from
    /// [`Self::ip_bytes`]).
    pub fn icmp_error<A: IpAddress<Family = F>>(
        src: A,
        dst: A,
        icmp_type: u8,
        code: u8,
        inner: &PacketBuilder<F>,
    ) -> Self {
        let inner_ip = inner.ip_bytes();
        let quoted = F::quote_len(inner_ip.len(), inner.ip_header_len());
        Self::icmp(src, dst, icmp_type, code).payload(&inner_ip[..quoted])
    }

    /// An IP packet of protocol `proto` whose body is the payload, as is.
    pub fn ip_raw<A: IpAddress<Family = F>>(src: A, dst: A, proto: u8) -> Self {
        Self::new(F::fields(src.addr(), dst.addr(), proto), L4::Raw)
    }

    /// Sets the Ethernet source and destination.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    /// Sets the IP source and destination addresses.
    pub fn addrs(mut self, src: F::Addr, dst: F::Addr) -> Self {
        self.ip.set_addrs(src, dst);
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

    /// The TCP or UDP ports (source, destination).
    pub fn l4_ports(&self) -> (u16, u16) {
        match &self.l4 {
            L4::Tcp(t) => (t.sport, t.dport),
            L4::Udp(u) => (u.sport, u.dport),
            other => panic!("l4_ports() on a packet without ports: {other:?}"),
        }
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

    /// Sends the UDP datagram with checksum field 0: no checksum over IPv4,
    /// an invalid datagram over IPv6 (RFC 8200 section 8.1).
    pub fn udp_zero_checksum(mut self) -> Self {
        match &mut self.l4 {
            L4::Udp(u) => u.checksum = Some(0),
            other => panic!("udp_zero_checksum() on a non-UDP packet: {other:?}"),
        }
        self
    }

    /// Overrides the UDP length field.
    pub fn udp_length(mut self, len: u16) -> Self {
        match &mut self.l4 {
            L4::Udp(u) => u.length = Some(len),
            other => panic!("udp_length() on a non-UDP packet: {other:?}"),
        }
        self
    }

    /// Overrides the layer 4 (TCP, UDP, ICMP or ICMPv6) checksum.
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

    /// Length of the IP header, IPv4 options or IPv6 extension headers included.
    pub fn ip_header_len(&self) -> usize {
        self.ip.header_len()
    }

    /// The layer 4 header and payload, checksums computed.
    pub fn l4_bytes(&self) -> Vec<u8> {
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
                    .unwrap_or_else(|| self.ip.l4_checksum(IPPROTO_TCP, &b));
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
                    .unwrap_or_else(|| self.ip.l4_checksum(IPPROTO_UDP, &b));
                b[6..8].copy_from_slice(&sum.to_be_bytes());
                b
            }
            L4::Icmp(i) => {
                let mut b = Vec::with_capacity(8 + self.payload.len());
                b.extend_from_slice(&[i.icmp_type, i.code, 0, 0]);
                b.extend_from_slice(&i.rest);
                b.extend_from_slice(&self.payload);
                let sum = i
                    .checksum
                    .unwrap_or_else(|| self.ip.l4_checksum(F::ICMP_PROTO, &b));
                b[2..4].copy_from_slice(&sum.to_be_bytes());
                b
            }
            L4::Raw => self.payload.clone(),
        }
    }

    /// The IP packet (header, IPv6 extension headers, layer 4, payload),
    /// checksums computed.
    pub fn ip_bytes(&self) -> Vec<u8> {
        self.ip.packet(&self.l4_bytes())
    }

    /// The whole Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        ethernet_frame(self.eth_dst, self.eth_src, F::ETHERTYPE, &self.ip_bytes())
    }
}

impl PacketBuilder<Ipv4Fields> {
    /// An ICMP "fragmentation needed" about `inner`, announcing `mtu`.
    pub fn icmp_frag_needed(src: Ipv4Addr, dst: Ipv4Addr, mtu: u16, inner: &PacketBuilder) -> Self {
        let [a, b] = mtu.to_be_bytes();
        Self::icmp_error(src, dst, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, inner)
            .icmp_rest([0, 0, a, b])
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

    /// The IPv4 packet (header, layer 4, payload), checksums computed.
    pub fn ipv4_bytes(&self) -> Vec<u8> {
        self.ip_bytes()
    }
}

impl PacketBuilder<Ipv6Fields> {
    /// An ICMPv6 Packet Too Big about `inner`, announcing `mtu`; quotes as
    /// much of `inner` as fits in the minimum MTU.
    pub fn packet_too_big(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        mtu: u32,
        inner: &PacketBuilder<Ipv6Fields>,
    ) -> Self {
        Self::icmp_error(src, dst, ICMP6_PACKET_TOO_BIG, 0, inner).icmp_rest(mtu.to_be_bytes())
    }

    /// An NDP neighbor solicitation from `src` (MAC `src_mac`, announced in a
    /// source link-layer address option) for `target`: to the target's
    /// solicited-node multicast address and MAC, hop limit 255 (RFC 4861).
    pub fn neighbor_solicitation(src: Ipv6Addr, src_mac: [u8; 6], target: Ipv6Addr) -> Self {
        let t = target.octets();
        let group = Ipv6Addr::new(
            0xff02,
            0,
            0,
            0,
            0,
            1,
            0xff00 | u16::from(t[13]),
            u16::from_be_bytes([t[14], t[15]]),
        );
        let mut body = t.to_vec();
        body.extend_from_slice(&[NDP_OPT_SOURCE_LLADDR, 1]);
        body.extend_from_slice(&src_mac);
        Self::icmp(src, group, ICMP6_NEIGHBOR_SOLICIT, 0)
            .macs(src_mac, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
            .hop_limit(255)
            .payload(&body)
    }

    /// An NDP neighbor advertisement from `src` (MAC `src_mac`, announced in
    /// a target link-layer address option) to `dst` (MAC `dst_mac`) for
    /// `target`, with flags `NA_*`; hop limit 255 (RFC 4861).
    pub fn neighbor_advertisement(
        src: Ipv6Addr,
        src_mac: [u8; 6],
        dst: Ipv6Addr,
        dst_mac: [u8; 6],
        target: Ipv6Addr,
        flags: u8,
    ) -> Self {
        let mut body = target.octets().to_vec();
        body.extend_from_slice(&[NDP_OPT_TARGET_LLADDR, 1]);
        body.extend_from_slice(&src_mac);
        Self::icmp(src, dst, ICMP6_NEIGHBOR_ADVERT, 0)
            .icmp_rest([flags, 0, 0, 0])
            .macs(src_mac, dst_mac)
            .hop_limit(255)
            .payload(&body)
    }

    /// Sets the traffic class.
    pub fn traffic_class(mut self, tc: u8) -> Self {
        self.ip.traffic_class = tc;
        self
    }

    /// Sets the flow label (20 bits).
    pub fn flow_label(mut self, label: u32) -> Self {
        assert!(
            label <= 0xf_ffff,
            "flow label {label:#x} has more than 20 bits"
        );
        self.ip.flow_label = label;
        self
    }

    /// Sets the hop limit.
    pub fn hop_limit(mut self, hops: u8) -> Self {
        self.ip.hop_limit = hops;
        self
    }

    /// Appends an extension header to the chain (after those already set).
    pub fn ext(mut self, h: ExtHeader) -> Self {
        self.ip.ext.push(h);
        self
    }

    /// Appends a hop-by-hop options header with these options (padded).
    pub fn hop_by_hop(self, options: &[u8]) -> Self {
        self.ext(ExtHeader::HopByHop(options.to_vec()))
    }

    /// Appends a destination options header with these options (padded).
    pub fn destination_options(self, options: &[u8]) -> Self {
        self.ext(ExtHeader::DestinationOptions(options.to_vec()))
    }

    /// Appends a routing header of `routing_type` with `segments_left` and
    /// type-specific `data` (zero-padded).
    pub fn routing(self, routing_type: u8, segments_left: u8, data: &[u8]) -> Self {
        self.ext(ExtHeader::Routing {
            routing_type,
            segments_left,
            data: data.to_vec(),
        })
    }

    /// Appends a fragment header (see also [`fragment6`], which splits a
    /// built datagram).
    pub fn fragment_header(self, id: u32, offset_units: u16, more: bool) -> Self {
        self.ext(ExtHeader::Fragment {
            offset_units,
            more,
            id,
        })
    }

    /// Overrides the upper-layer protocol (the last next header of the chain).
    pub fn ip6_proto(mut self, proto: u8) -> Self {
        self.ip.proto = proto;
        self
    }

    /// Overrides the IPv6 payload length.
    pub fn payload_len(mut self, len: u16) -> Self {
        self.ip.payload_len = Some(len);
        self
    }

    /// The IPv6 packet (header, extension headers, layer 4, payload),
    /// checksums computed.
    pub fn ipv6_bytes(&self) -> Vec<u8> {
        self.ip_bytes()
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

/// Splits the IPv6 datagram in `frame` (without a fragment header) into
/// fragments whose fragmentable part is at most `chunk` bytes, a multiple of
/// 8 (RFC 8200 section 4.5). Each fragment copies the Ethernet header, the
/// IPv6 header and the per-fragment extension headers (those up to the last
/// hop-by-hop or routing header), then a fragment header with `id`, its
/// offset and "more fragments", then its piece of the rest (the first piece
/// starts with the remaining extension headers and the layer 4 header);
/// payload lengths are each fragment's. Pick `chunk` large enough for the
/// first piece to hold the layer 4 header when a test needs it to.
pub fn fragment6(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert!(
        chunk > 0 && chunk.is_multiple_of(8),
        "fragment size {chunk} must be a positive multiple of 8"
    );
    let ip = &frame[ETH_HLEN..];
    let chain = ext_chain(ip).unwrap_or_else(|e| panic!("fragment6 of a bad packet: {e}"));
    assert!(
        chain.headers.iter().all(|(_, k, _)| *k != IPPROTO_FRAGMENT),
        "fragment6 of a packet that is a fragment already"
    );
    // The per-fragment part ends after the last hop-by-hop or routing
    // header; `nh_at` is the offset of the next header byte that announces
    // what follows it (then: the fragment header).
    let (unfrag_end, nh_at) = chain
        .headers
        .iter()
        .rev()
        .find(|(_, k, _)| matches!(*k, IPPROTO_HOPOPTS | IPPROTO_ROUTING))
        .map_or((IPV6_HLEN, 6), |(off, _, len)| (off + len, *off));
    let next = ip[nh_at];
    let data = &ip[unfrag_end..chain.end];
    let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    let n = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut out = frame[..ETH_HLEN + unfrag_end].to_vec();
            let h = &mut out[ETH_HLEN..];
            h[nh_at] = IPPROTO_FRAGMENT;
            let plen =
                u16::try_from(unfrag_end - IPV6_HLEN + 8 + piece.len()).expect("fragment fits");
            h[4..6].copy_from_slice(&plen.to_be_bytes());
            let offset = u16::try_from(i * chunk / 8).expect("offset fits");
            let frag = ExtHeader::Fragment {
                offset_units: offset,
                more: i + 1 < n,
                id,
            };
            out.extend_from_slice(&frag.bytes(next));
            out.extend_from_slice(piece);
            out
        })
        .collect()
}
