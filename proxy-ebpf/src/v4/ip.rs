//! The IPv4 header: its layout, where the fields a NAT rewrites sit, and
//! the family's `l3` prologue.

use proxy_common::{IPPROTO_ICMP, Reason};

use crate::{
    packet::Packet,
    parse::{L3, L3_OFF},
};

pub(crate) const IPV4_HLEN: usize = 20;
/// Offset of the L4 header, since packets with IP options are passed untouched.
pub(crate) const L4_OFF: usize = L3_OFF + IPV4_HLEN;
pub(crate) const IP_CSUM_OFF: usize = L3_OFF + 10;
pub(crate) const IP_SADDR_OFF: usize = L3_OFF + 12;
pub(crate) const IP_DADDR_OFF: usize = L3_OFF + 16;

const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

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
    /// The first fragment of a fragmented datagram.
    pub(crate) fn is_first_fragment(&self) -> bool {
        self.frag() & (IP_MF | IP_OFFSET_MASK) == IP_MF
    }
    /// ICMP: errors about translated flows are translated too.
    pub(crate) fn is_icmp(&self) -> bool {
        self.proto == IPPROTO_ICMP
    }
    pub(crate) fn id(&self) -> u16 {
        u16::from_be_bytes(self.id)
    }
}

impl L3 for Ipv4Hdr {
    const UDP_CHECKSUM_REQUIRED: bool = false;
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn l4_off(&self) -> usize {
        L4_OFF
    }
    #[inline(always)]
    fn l4_len(&self) -> u16 {
        u16::from_be_bytes(self.tot_len).saturating_sub(IPV4_HLEN as u16)
    }
    #[inline(always)]
    fn is_later_fragment(&self) -> bool {
        self.frag() & IP_OFFSET_MASK != 0
    }
}

/// The L3 prologue of the IPv4 pipelines (the frame is IPv4, see
/// [`crate::parse::family`]): the header, copied. Ends the pipeline with a
/// pass reason for a header with options (`PassIpOptions`: passed
/// untouched, so that [`L4_OFF`] holds), and with a drop reason for a
/// truncated one. [`crate::parse::transport`] goes on from here.
#[inline(always)]
pub(crate) fn l3<P: Packet>(pkt: &P) -> Result<Ipv4Hdr, Reason> {
    let ip: Ipv4Hdr = pkt.read(L3_OFF).map_err(|()| Reason::DropTruncated)?;
    if ip.ver_ihl >> 4 != 4 || ip.ihl() < 5 {
        return Err(Reason::DropTruncated);
    }
    if ip.ihl() > 5 {
        return Err(Reason::PassIpOptions);
    }
    Ok(ip)
}
