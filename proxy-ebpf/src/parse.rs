//! Header layouts and parsing shared by both IP families, for TC and XDP
//! alike: the parsers copy the headers out of any [`Packet`]. [`family`]
//! picks the family; its `l3` (`ip4.rs`, `ip6.rs`) then [`transport`] are
//! the prologue every pipeline starts with. A header shorter than it must
//! be is an error.

use proxy_common::{IPPROTO_TCP, IPPROTO_UDP, Reason};

use crate::packet::Packet;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
/// Offset of the IP header (no VLAN tags: pod-facing devices carry none).
pub(crate) const L3_OFF: usize = ETH_HLEN;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

impl TcpHdr {
    /// The [`L4`] of this header, at `off` in a datagram of `ip`.
    #[inline(always)]
    pub(crate) fn l4<I: L3>(&self, ip: &I, off: usize) -> L4 {
        L4 {
            off,
            proto: IPPROTO_TCP,
            sport: u16::from_be_bytes(self.sport),
            dport: u16::from_be_bytes(self.dport),
            flags: self.flags,
            check: self.check,
            seq_raw: self.seq,
            ack_raw: self.ack_seq,
            doff_raw: self.doff_res,
            len: ip.l4_len(),
        }
    }
}

impl UdpHdr {
    /// The [`L4`] of this header, at `off`.
    #[inline(always)]
    pub(crate) fn l4(&self, off: usize) -> L4 {
        L4 {
            off,
            proto: IPPROTO_UDP,
            sport: u16::from_be_bytes(self.sport),
            dport: u16::from_be_bytes(self.dport),
            flags: 0,
            check: self.check,
            seq_raw: [0; 4],
            ack_raw: [0; 4],
            doff_raw: 0,
            len: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    pub doff_res: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// The fields of a TCP or UDP header the datapath needs. Ports in host order.
#[derive(Clone, Copy)]
pub(crate) struct L4 {
    /// Offset of the header in the packet.
    pub off: usize,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for UDP.
    pub flags: u8,
    /// Raw L4 checksum as in the packet (UDP: 0 means "none").
    pub check: [u8; 2],
    /// TCP sequence and acknowledgment numbers as in the packet; zero for
    /// UDP. Kept raw and converted where used, so that paths that never
    /// look at them (most) pay nothing.
    pub seq_raw: [u8; 4],
    pub ack_raw: [u8; 4],
    /// TCP data offset byte as in the packet (header length in its high
    /// nibble); 0 for UDP.
    pub doff_raw: u8,
    /// TCP: the length of the segment (header and payload) as the IP
    /// header says; 0 for UDP.
    pub len: u16,
}

impl L4 {
    /// The ports of the packet an ICMP error quotes (its first 8 bytes, as
    /// `ports`), turned around: as the reply it refuses would carry them.
    #[inline(always)]
    pub(crate) fn quoted(proto: u8, ports: &UdpHdr) -> L4 {
        L4 {
            proto,
            sport: u16::from_be_bytes(ports.dport),
            dport: u16::from_be_bytes(ports.sport),
            ..ports.l4(0)
        }
    }
    pub(crate) fn is_tcp(&self) -> bool {
        self.proto == IPPROTO_TCP
    }
    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    /// A TCP SYN without ACK: the start of a new connection.
    pub(crate) fn is_syn_only(&self) -> bool {
        self.is_tcp() && self.has(TCP_SYN) && !self.has(TCP_ACK)
    }
    /// TCP sequence number.
    pub(crate) fn seq(&self) -> u32 {
        u32::from_be_bytes(self.seq_raw)
    }
    /// TCP acknowledgment number.
    pub(crate) fn ack(&self) -> u32 {
        u32::from_be_bytes(self.ack_raw)
    }
    /// TCP: the sequence space the segment takes (payload, plus one for SYN
    /// and one for FIN).
    pub(crate) fn seg_len(&self) -> u32 {
        let hlen = u32::from(self.doff_raw >> 4) * 4;
        let payload = u32::from(self.len).saturating_sub(hlen);
        payload + u32::from(self.flags & TCP_SYN != 0) + u32::from(self.flags & TCP_FIN != 0)
    }
    /// Offset of the L4 checksum.
    pub(crate) fn csum_off(&self) -> usize {
        self.off + if self.is_tcp() { 16 } else { 6 }
    }
}

/// The IP family of a frame, from its Ethernet type: where each entry
/// point dispatches to the pipelines of [`crate::v4`] or [`crate::v6`].
/// Anything else ends with `PassNotIp`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

#[inline(always)]
pub(crate) fn family<P: Packet>(pkt: &P) -> Result<Family, Reason> {
    let Ok(proto) = pkt.read::<[u8; 2]>(12) else {
        return Err(Reason::PassNotIp);
    };
    match u16::from_be_bytes(proto) {
        ETH_P_IP => Ok(Family::V4),
        ETH_P_IPV6 => Ok(Family::V6),
        _ => Err(Reason::PassNotIp),
    }
}

/// What the family-neutral steps need of a parsed IP header (IPv4's, or
/// IPv6's with its extension headers walked).
pub(crate) trait L3 {
    /// UDP datagrams must carry a checksum: one with checksum 0 is invalid
    /// (IPv6, RFC 8200 section 8.1; IPv4 allows 0 for "none").
    const UDP_CHECKSUM_REQUIRED: bool;
    /// The protocol of the payload (after any IPv6 extension headers).
    fn proto(&self) -> u8;
    /// Offset of the L4 header.
    fn l4_off(&self) -> usize;
    /// Length of the L4 segment (header and payload) the IP header gives.
    fn l4_len(&self) -> u16;
    /// A fragment other than the first: no L4 header in it.
    fn is_later_fragment(&self) -> bool;
}

/// What follows the IP header, as far as the pipelines care.
pub(crate) enum Transport {
    /// TCP or UDP (unfragmented, or the first fragment), with its header.
    Ports(L4),
    /// A fragment other than the first: no L4 header in it.
    LaterFragment,
    /// Another protocol (ICMP, ...): no L4 header parsed.
    Other,
}

/// The rest of the prologue, after the family's `l3`: fragments, then the
/// TCP or UDP header. A truncated TCP or UDP header ends the pipeline with
/// a drop, and so is a UDP header without the checksum the family
/// requires.
///
/// (Kept apart from `l3`: returning the IP header and this in one value
/// costs every packet some twenty instructions of copies.)
#[inline(always)]
pub(crate) fn transport<P: Packet, I: L3>(pkt: &P, ip: &I) -> Result<Transport, Reason> {
    if ip.is_later_fragment() {
        return Ok(Transport::LaterFragment);
    }
    let off = ip.l4_off();
    let proto = ip.proto();
    if proto == IPPROTO_TCP {
        let tcp: TcpHdr = pkt.read(off).map_err(|()| Reason::DropTruncated)?;
        if tcp.doff_res >> 4 < 5 {
            return Err(Reason::DropTruncated);
        }
        Ok(Transport::Ports(tcp.l4(ip, off)))
    } else if proto == IPPROTO_UDP {
        let udp: UdpHdr = pkt.read(off).map_err(|()| Reason::DropTruncated)?;
        if I::UDP_CHECKSUM_REQUIRED && udp.check == [0, 0] {
            // Malformed, as a TCP header shorter than 20 bytes is: dropped
            // (the receiver's stack would drop it too).
            return Err(Reason::DropTruncated);
        }
        Ok(Transport::Ports(udp.l4(off)))
    } else {
        Ok(Transport::Other)
    }
}
