//! Parsers of what a program wrote: an Ethernet frame ([`parse`]), an IPv4
//! packet ([`parse_ipv4`]) or an IPv6 packet with its extension headers
//! ([`parse_ipv6`]), and their TCP, UDP, ICMP or ICMPv6 headers.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::consts::*;

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
    /// The IPv6 packet, when the ethertype is IPv6.
    pub ipv6: Option<ParsedIpv6>,
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

/// A parsed IPv6 header, its extension headers and what follows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIpv6 {
    /// Version (6).
    pub version: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// Payload length (extension headers included).
    pub payload_len: u16,
    /// The header's own next header field (the first extension header, or
    /// the upper-layer protocol).
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source.
    pub src: Ipv6Addr,
    /// Destination.
    pub dst: Ipv6Addr,
    /// The extension headers, in order.
    pub ext: Vec<ParsedExt>,
    /// The upper-layer protocol: the next header after the last extension
    /// header.
    pub proto: u8,
    /// What follows the extension headers, up to the payload length (or the
    /// end of the bytes, if shorter).
    pub l4: ParsedL4,
}

/// One IPv6 extension header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedExt {
    /// Its protocol number (the next header value that announced it:
    /// [`IPPROTO_HOPOPTS`], [`IPPROTO_ROUTING`], [`IPPROTO_FRAGMENT`],
    /// [`IPPROTO_DSTOPTS`], ...).
    pub kind: u8,
    /// Its next header field.
    pub next_header: u8,
    /// The whole header, next header byte included.
    pub bytes: Vec<u8>,
}

/// The fields of an IPv6 fragment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment6 {
    /// Fragment offset in 8-byte units.
    pub offset_units: u16,
    /// "More fragments".
    pub more: bool,
    /// Identification.
    pub id: u32,
}

impl ParsedExt {
    /// The fragment header's fields, if this is one.
    pub fn fragment(&self) -> Option<Fragment6> {
        (self.kind == IPPROTO_FRAGMENT && self.bytes.len() >= 8).then(|| {
            let word = be16(&self.bytes, 2);
            Fragment6 {
                offset_units: word >> 3,
                more: word & IP6_MF != 0,
                id: be32(&self.bytes, 4),
            }
        })
    }
}

/// A parsed ICMP or ICMPv6 header.
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
    /// An ICMP message (ICMPv6 in an IPv6 packet).
    Icmp(ParsedIcmp),
    /// Anything else: another protocol, a non-first fragment, a header too
    /// short to parse. The raw bytes.
    Other(Vec<u8>),
}

pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn mac(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// Parses an Ethernet frame; the IPv4 or IPv6 part when the ethertype says
/// so. Errors when a header is shorter than it claims.
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
    let ipv6 = if ethertype == ETH_P_IPV6 {
        Some(parse_ipv6(&frame[ETH_HLEN..])?)
    } else {
        None
    };
    Ok(ParsedFrame {
        eth_dst: mac(&frame[0..6]),
        eth_src: mac(&frame[6..12]),
        ethertype,
        ipv4,
        ipv6,
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
        parse_l4(proto, IPPROTO_ICMP, body)
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

/// Where an IPv6 packet's extension headers are: each header's offset (from
/// the start of the IPv6 header), protocol number and length; then the
/// upper-layer protocol and its offset. Walks every header of RFC 7045's
/// list but ESP (whose length is not in the clear), up to a fragment header
/// of a later fragment (after which comes data); errors when one is cut
/// short by the end of `ip` or of the payload length (see [`ext_chain`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtChain {
    /// Each extension header: (offset, protocol number, length).
    pub headers: Vec<(usize, u8, usize)>,
    /// The upper-layer protocol (the last next header).
    pub proto: u8,
    /// The offset of the upper-layer header (of the data, in a later
    /// fragment).
    pub l4_off: usize,
    /// Where the payload ends: 40 + the payload length, or the end of the bytes.
    pub end: usize,
}

/// Whether the next header value `nh` announces an extension header the
/// parser walks, and how long the one at `h` is.
fn ext_len(nh: u8, h: &[u8]) -> Option<usize> {
    match nh {
        IPPROTO_FRAGMENT => Some(8),
        // Authentication header: length in 4-byte units, minus 2.
        51 => Some((usize::from(h[1]) + 2) * 4),
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | 135 | 139 | 140 | 253 | 254 => {
            Some((usize::from(h[1]) + 1) * 8)
        }
        _ => None,
    }
}

/// The [`ExtChain`] of the IPv6 packet `ip` (no Ethernet header).
pub fn ext_chain(ip: &[u8]) -> Result<ExtChain, String> {
    if ip.len() < IPV6_HLEN {
        return Err(format!("IPv6 header truncated: {} bytes", ip.len()));
    }
    let end = (IPV6_HLEN + usize::from(be16(ip, 4))).min(ip.len());
    let mut headers = Vec::new();
    let (mut nh, mut off) = (ip[6], IPV6_HLEN);
    loop {
        if !matches!(
            nh,
            IPPROTO_FRAGMENT
                | 51
                | IPPROTO_HOPOPTS
                | IPPROTO_ROUTING
                | IPPROTO_DSTOPTS
                | 135
                | 139
                | 140
                | 253
                | 254
        ) {
            break;
        }
        if off + 2 > end {
            return Err(format!(
                "IPv6 extension header {nh} at {off} truncated ({end} bytes)"
            ));
        }
        let len = ext_len(nh, &ip[off..]).unwrap_or(8);
        if off + len > end {
            return Err(format!(
                "IPv6 extension header {nh} at {off} of {len} bytes truncated ({end} bytes)"
            ));
        }
        headers.push((off, nh, len));
        let later_fragment = nh == IPPROTO_FRAGMENT && be16(ip, off + 2) & IP6_OFFSET_MASK != 0;
        nh = ip[off];
        off += len;
        if later_fragment {
            // What follows is data of the middle of the datagram, not headers.
            break;
        }
    }
    Ok(ExtChain {
        headers,
        proto: nh,
        l4_off: off,
        end,
    })
}

/// Parses an IPv6 packet (no Ethernet header), e.g. the one an ICMPv6
/// error quotes: its extension headers, and the upper-layer header unless
/// a fragment header says this is not the first fragment. Data is taken up
/// to the payload length, or to the end of `ip` if shorter (a quoted
/// packet is cut).
pub fn parse_ipv6(ip: &[u8]) -> Result<ParsedIpv6, String> {
    let chain = ext_chain(ip)?;
    let ext: Vec<ParsedExt> = chain
        .headers
        .iter()
        .map(|&(off, kind, len)| ParsedExt {
            kind,
            next_header: ip[off],
            bytes: ip[off..off + len].to_vec(),
        })
        .collect();
    let body = &ip[chain.l4_off..chain.end];
    let later_fragment = ext
        .iter()
        .filter_map(ParsedExt::fragment)
        .any(|f| f.offset_units != 0);
    let l4 = if later_fragment {
        ParsedL4::Other(body.to_vec())
    } else {
        parse_l4(chain.proto, IPPROTO_ICMPV6, body)
    };
    let word = be32(ip, 0);
    Ok(ParsedIpv6 {
        version: ip[0] >> 4,
        traffic_class: ((word >> 20) & 0xff) as u8,
        flow_label: word & 0x000f_ffff,
        payload_len: be16(ip, 4),
        next_header: ip[6],
        hop_limit: ip[7],
        src: Ipv6Addr::from(addr16(&ip[8..24])),
        dst: Ipv6Addr::from(addr16(&ip[24..40])),
        ext,
        proto: chain.proto,
        l4,
    })
}

pub(super) fn addr16(b: &[u8]) -> [u8; 16] {
    let mut a = [0; 16];
    a.copy_from_slice(&b[..16]);
    a
}

/// The upper-layer header `proto` at the start of `b`; `icmp` is the ICMP
/// protocol number of the family.
fn parse_l4(proto: u8, icmp: u8, b: &[u8]) -> ParsedL4 {
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
        p if p == icmp && b.len() >= 8 => ParsedL4::Icmp(ParsedIcmp {
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

    /// The IPv6 packet, or an error naming the ethertype.
    pub fn ip6(&self) -> Result<&ParsedIpv6, String> {
        self.ipv6
            .as_ref()
            .ok_or_else(|| format!("not IPv6: ethertype {:#06x}", self.ethertype))
    }
}

impl ParsedL4 {
    /// The TCP header, or an error.
    pub fn tcp(&self) -> Result<&ParsedTcp, String> {
        match self {
            ParsedL4::Tcp(t) => Ok(t),
            other => Err(format!("not a TCP segment: {other:?}")),
        }
    }

    /// The UDP header, or an error.
    pub fn udp(&self) -> Result<&ParsedUdp, String> {
        match self {
            ParsedL4::Udp(u) => Ok(u),
            other => Err(format!("not a UDP datagram: {other:?}")),
        }
    }

    /// The ICMP (or ICMPv6) header, or an error.
    pub fn icmp(&self) -> Result<&ParsedIcmp, String> {
        match self {
            ParsedL4::Icmp(i) => Ok(i),
            other => Err(format!("not an ICMP message: {other:?}")),
        }
    }

    /// Source and destination ports (TCP or UDP).
    pub fn ports(&self) -> Result<(u16, u16), String> {
        match self {
            ParsedL4::Tcp(t) => Ok((t.sport, t.dport)),
            ParsedL4::Udp(u) => Ok((u.sport, u.dport)),
            other => Err(format!("no ports: {other:?}")),
        }
    }
}

impl ParsedIpv4 {
    /// The TCP header, or an error.
    pub fn tcp(&self) -> Result<&ParsedTcp, String> {
        self.l4.tcp()
    }

    /// The UDP header, or an error.
    pub fn udp(&self) -> Result<&ParsedUdp, String> {
        self.l4.udp()
    }

    /// The ICMP header, or an error.
    pub fn icmp(&self) -> Result<&ParsedIcmp, String> {
        self.l4.icmp()
    }

    /// Source address and port (TCP or UDP).
    pub fn source(&self) -> Result<SocketAddrV4, String> {
        Ok(SocketAddrV4::new(self.src, self.l4.ports()?.0))
    }

    /// Destination address and port (TCP or UDP).
    pub fn destination(&self) -> Result<SocketAddrV4, String> {
        Ok(SocketAddrV4::new(self.dst, self.l4.ports()?.1))
    }
}

impl ParsedIpv6 {
    /// The TCP header, or an error.
    pub fn tcp(&self) -> Result<&ParsedTcp, String> {
        self.l4.tcp()
    }

    /// The UDP header, or an error.
    pub fn udp(&self) -> Result<&ParsedUdp, String> {
        self.l4.udp()
    }

    /// The ICMPv6 header, or an error.
    pub fn icmp(&self) -> Result<&ParsedIcmp, String> {
        self.l4.icmp()
    }

    /// Source address and port (TCP or UDP).
    pub fn source(&self) -> Result<SocketAddrV6, String> {
        Ok(SocketAddrV6::new(self.src, self.l4.ports()?.0, 0, 0))
    }

    /// Destination address and port (TCP or UDP).
    pub fn destination(&self) -> Result<SocketAddrV6, String> {
        Ok(SocketAddrV6::new(self.dst, self.l4.ports()?.1, 0, 0))
    }

    /// The fields of the fragment header, if the packet has one.
    pub fn fragment(&self) -> Option<Fragment6> {
        self.ext.iter().find_map(ParsedExt::fragment)
    }

    /// The protocol numbers of the extension headers, in order.
    pub fn ext_kinds(&self) -> Vec<u8> {
        self.ext.iter().map(|e| e.kind).collect()
    }

    /// The IPv6 packet an ICMPv6 error (type below 128) quotes.
    pub fn icmp_inner(&self) -> Result<ParsedIpv6, String> {
        let icmp = self.icmp()?;
        if icmp.icmp_type >= 128 {
            return Err(format!(
                "ICMPv6 type {} is no error and quotes nothing",
                icmp.icmp_type
            ));
        }
        parse_ipv6(&icmp.payload).map_err(|e| format!("quoted packet: {e}"))
    }
}
