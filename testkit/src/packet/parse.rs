//! Parsers of what a program wrote: an Ethernet frame ([`parse`]), an IPv4
//! packet ([`parse_ipv4`]) and their TCP, UDP or ICMP headers.

use std::net::{Ipv4Addr, SocketAddrV4};

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

pub(super) fn be16(b: &[u8], at: usize) -> u16 {
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
