//! Header layouts and parsing, for TC and XDP alike: the parsers copy the
//! headers out of any [`Packet`]; [`l3`] then [`transport`] are the prologue
//! every pipeline starts with. A header shorter than it must be is an error.

use proxy_common::{IPPROTO_TCP, IPPROTO_UDP, Reason};

use crate::packet::Packet;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
/// Offset of the IPv4 header (no VLAN tags: pod-facing devices carry none).
pub(crate) const L3_OFF: usize = ETH_HLEN;
/// Offset of the L4 header, since packets with IP options are passed untouched.
pub(crate) const L4_OFF: usize = L3_OFF + IPV4_HLEN;
pub(crate) const IPV4_HLEN: usize = 20;
pub(crate) const IP_CSUM_OFF: usize = L3_OFF + 10;
pub(crate) const IP_SADDR_OFF: usize = L3_OFF + 12;
pub(crate) const IP_DADDR_OFF: usize = L3_OFF + 16;
pub(crate) const TCP_CSUM_OFF: usize = L4_OFF + 16;
pub(crate) const UDP_CSUM_OFF: usize = L4_OFF + 6;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    pub(crate) fn ihl(&self) -> u8 {
        self.ver_ihl & 0x0f
    }
    pub(crate) fn frag(&self) -> u16 {
        u16::from_be_bytes(self.frag_off)
    }
    /// A fragment other than the first: no L4 header in it.
    pub(crate) fn is_later_fragment(&self) -> bool {
        self.frag() & IP_OFFSET_MASK != 0
    }
    /// The first fragment of a fragmented datagram.
    pub(crate) fn is_first_fragment(&self) -> bool {
        self.frag() & (IP_MF | IP_OFFSET_MASK) == IP_MF
    }
    pub(crate) fn id(&self) -> u16 {
        u16::from_be_bytes(self.id)
    }
}

impl TcpHdr {
    /// The [`L4`] of this header, in a datagram of `ip`.
    #[inline(always)]
    pub(crate) fn l4(&self, ip: &Ipv4Hdr) -> L4 {
        L4 {
            proto: IPPROTO_TCP,
            sport: u16::from_be_bytes(self.sport),
            dport: u16::from_be_bytes(self.dport),
            flags: self.flags,
            check: self.check,
            seq_raw: self.seq,
            ack_raw: self.ack_seq,
            doff_raw: self.doff_res,
            ip_len_raw: ip.tot_len,
        }
    }
}

impl UdpHdr {
    /// The [`L4`] of this header.
    #[inline(always)]
    pub(crate) fn l4(&self) -> L4 {
        L4 {
            proto: IPPROTO_UDP,
            sport: u16::from_be_bytes(self.sport),
            dport: u16::from_be_bytes(self.dport),
            flags: 0,
            check: self.check,
            seq_raw: [0; 4],
            ack_raw: [0; 4],
            doff_raw: 0,
            ip_len_raw: [0; 2],
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
    /// The IPv4 total length as in the packet (an L4 header is only parsed
    /// after an option-less IPv4 header of 20 bytes).
    pub ip_len_raw: [u8; 2],
}

impl L4 {
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
        let hlen = IPV4_HLEN as u32 + u32::from(self.doff_raw >> 4) * 4;
        let payload = u32::from(u16::from_be_bytes(self.ip_len_raw)).saturating_sub(hlen);
        payload + u32::from(self.flags & TCP_SYN != 0) + u32::from(self.flags & TCP_FIN != 0)
    }
    pub(crate) fn csum_off(&self) -> usize {
        if self.is_tcp() {
            TCP_CSUM_OFF
        } else {
            UDP_CSUM_OFF
        }
    }
}

/// The L3 prologue of every pipeline: the Ethernet type and the IPv4
/// header. Ends the pipeline with a pass reason for a frame that is not IPv4
/// (`PassNotIp`; an `Option` here would leave undefined bytes that the
/// verifier refuses to see copied) or has IP options (`PassIpOptions`:
/// passed untouched, so that [`L4_OFF`] holds), and with a drop reason for a
/// truncated one. [`transport`] goes on from here.
#[inline(always)]
pub(crate) fn l3<P: Packet>(pkt: &P) -> Result<Ipv4Hdr, Reason> {
    let Ok(proto) = pkt.read::<[u8; 2]>(12) else {
        return Err(Reason::PassNotIp);
    };
    if u16::from_be_bytes(proto) != ETH_P_IP {
        return Err(Reason::PassNotIp);
    }
    let ip: Ipv4Hdr = pkt.read(L3_OFF).map_err(|()| Reason::DropTruncated)?;
    if ip.ver_ihl >> 4 != 4 || ip.ihl() < 5 {
        return Err(Reason::DropTruncated);
    }
    if ip.ihl() > 5 {
        return Err(Reason::PassIpOptions);
    }
    Ok(ip)
}

/// What follows an option-less IPv4 header, as far as the pipelines care.
pub(crate) enum Transport {
    /// TCP or UDP (unfragmented, or the first fragment), with its header.
    Ports(L4),
    /// A fragment other than the first: no L4 header in it.
    LaterFragment,
    /// Another protocol (ICMP, ...): no L4 header parsed.
    Other,
}

/// The rest of the prologue, after [`l3`]: fragments, then the TCP or UDP
/// header. A truncated TCP or UDP header ends the pipeline with a drop.
///
/// (Kept apart from [`l3`]: returning the IPv4 header and this in one value
/// costs every packet some twenty instructions of copies.)
#[inline(always)]
pub(crate) fn transport<P: Packet>(pkt: &P, ip: &Ipv4Hdr) -> Result<Transport, Reason> {
    if ip.is_later_fragment() {
        return Ok(Transport::LaterFragment);
    }
    if ip.proto == IPPROTO_TCP {
        let tcp: TcpHdr = pkt.read(L4_OFF).map_err(|()| Reason::DropTruncated)?;
        if tcp.doff_res >> 4 < 5 {
            return Err(Reason::DropTruncated);
        }
        Ok(Transport::Ports(tcp.l4(ip)))
    } else if ip.proto == IPPROTO_UDP {
        let udp: UdpHdr = pkt.read(L4_OFF).map_err(|()| Reason::DropTruncated)?;
        Ok(Transport::Ports(udp.l4()))
    } else {
        Ok(Transport::Other)
    }
}
