//! The IPv6 header and its extension headers (RFC 8200): the layout, where
//! the addresses sit, and the family's `l3` prologue.
//!
//! IPv6 has no header checksum: a NAT rewrite fixes only the L4 checksum,
//! whose pseudo-header covers both addresses. The extension headers between
//! the fixed header and TCP/UDP are walked, at most [`MAX_EXT`] of them
//! (a bounded loop the verifier can follow): hop-by-hop options, routing,
//! destination options and fragment. Anything else that chains further (an
//! authentication header, whose integrity a rewrite would break, the other
//! extension headers of the IANA registry, or more headers than are
//! walked) is passed untouched and counted
//! (`PassIpv6Extension`); an upper-layer protocol other than TCP and UDP
//! (ICMPv6, ESP, no next header, ...) ends the walk as "other".

use proxy_common::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Reason};

use crate::{
    packet::Packet,
    parse::{L3, L3_OFF},
};

pub(crate) const IPV6_HLEN: usize = 40;
/// Offset of the header that follows the fixed IPv6 header.
pub(crate) const L4_OFF_MIN: usize = L3_OFF + IPV6_HLEN;
pub(crate) const IP6_SADDR_OFF: usize = L3_OFF + 8;
pub(crate) const IP6_DADDR_OFF: usize = L3_OFF + 24;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers of the IANA registry that are not walked (besides
/// the authentication header): mobility, host identity protocol, shim6,
/// and the two for experiments (RFC 3692).
const NEXTHDR_MOBILITY: u8 = 135;
const NEXTHDR_HIP: u8 = 139;
const NEXTHDR_SHIM6: u8 = 140;
const NEXTHDR_EXP1: u8 = 253;
const NEXTHDR_EXP2: u8 = 254;

/// Extension headers walked before giving up.
pub(crate) const MAX_EXT: usize = 4;

/// Not a fragment (or an atomic fragment: offset 0, no more fragments).
pub(crate) const FRAG_NONE: u8 = 0;
/// The first fragment: offset 0, more to come; it carries the L4 header.
pub(crate) const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header in it.
pub(crate) const FRAG_LATER: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv6Hdr {
    pub ver_tc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// [`Ipv6Hdr`] as [`l3`] reads it: the addresses as 32-bit words. LLVM
/// loads a byte array a byte at a time (its alignment is 1) and puts each
/// address together again with shifts, some 60 instructions an address;
/// words load four bytes at a time (see [`Packet::read`]).
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Words {
    ver_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<Ipv6Words>() == IPV6_HLEN);

/// An address read as words, as bytes in network order (the same bytes).
#[inline(always)]
fn addr_of(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: both are 16 bytes of plain integers; any bits are valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// The start of any extension header: the next header and the length.
#[repr(C)]
#[derive(Clone, Copy)]
struct ExtHdr {
    next: u8,
    len: u8,
}

/// The fragment header.
#[repr(C)]
#[derive(Clone, Copy)]
struct FragHdr {
    next: u8,
    reserved: u8,
    off_flags: [u8; 2],
    id: [u8; 4],
}

/// An IPv6 packet as the pipelines see it: the fixed header's addresses,
/// and what the walk of its extension headers found.
#[derive(Clone, Copy)]
pub(crate) struct Ip6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The upper-layer protocol (after the extension headers).
    pub proto: u8,
    /// Offset of the upper-layer header.
    pub l4_off: usize,
    /// Length of the upper-layer segment.
    pub l4_len: u16,
    /// `FRAG_*`.
    pub frag: u8,
    /// The fragment header's identification (with a fragment header).
    pub frag_id: u32,
}

impl Ip6 {
    /// The first fragment of a fragmented datagram.
    pub(crate) fn is_first_fragment(&self) -> bool {
        self.frag == FRAG_FIRST
    }
    /// ICMPv6: errors about translated flows are translated too.
    pub(crate) fn is_icmp(&self) -> bool {
        self.proto == IPPROTO_ICMPV6
    }
}

impl L3 for Ip6 {
    const UDP_CHECKSUM_REQUIRED: bool = true;
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn l4_off(&self) -> usize {
        self.l4_off
    }
    #[inline(always)]
    fn l4_len(&self) -> u16 {
        self.l4_len
    }
    #[inline(always)]
    fn is_later_fragment(&self) -> bool {
        self.frag == FRAG_LATER
    }
}

/// The L3 prologue of the IPv6 pipelines (the frame is IPv6, see
/// [`crate::parse::family`]): the fixed header, then the extension headers
/// walked (see the module doc). A header the packet ends inside is a drop.
#[inline(always)]
pub(crate) fn l3<P: Packet>(pkt: &P) -> Result<Ip6, Reason> {
    let h: Ipv6Words = pkt.read(L3_OFF).map_err(|()| Reason::DropTruncated)?;
    if h.ver_tc_flow[0] >> 4 != 6 {
        return Err(Reason::DropTruncated);
    }
    let (saddr, daddr) = (addr_of(h.saddr), addr_of(h.daddr));
    if matches!(h.next, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
        // The usual packet: no extension header to walk.
        return Ok(Ip6 {
            saddr,
            daddr,
            proto: h.next,
            l4_off: L4_OFF_MIN,
            l4_len: u16::from_be_bytes(h.payload_len),
            frag: FRAG_NONE,
            frag_id: 0,
        });
    }
    let mut next = h.next;
    let mut off = L4_OFF_MIN;
    let mut frag = FRAG_NONE;
    let mut frag_id = 0;
    let mut i = 0;
    while i < MAX_EXT {
        i += 1;
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let e: ExtHdr = pkt.read(off).map_err(|()| Reason::DropTruncated)?;
                next = e.next;
                off += (usize::from(e.len) + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let f: FragHdr = pkt.read(off).map_err(|()| Reason::DropTruncated)?;
                next = f.next;
                off += 8;
                let of = u16::from_be_bytes(f.off_flags);
                frag = if of >> 3 != 0 {
                    FRAG_LATER
                } else if of & 1 != 0 {
                    FRAG_FIRST
                } else {
                    FRAG_NONE
                };
                frag_id = u32::from_be_bytes(f.id);
                if frag == FRAG_LATER {
                    // No upper-layer header follows in this fragment.
                    break;
                }
            }
            _ => break,
        }
    }
    if matches!(
        next,
        NEXTHDR_HOP
            | NEXTHDR_ROUTING
            | NEXTHDR_DEST
            | NEXTHDR_AUTH
            | NEXTHDR_MOBILITY
            | NEXTHDR_HIP
            | NEXTHDR_SHIM6
            | NEXTHDR_EXP1
            | NEXTHDR_EXP2
    ) || (next == NEXTHDR_FRAGMENT && frag != FRAG_LATER)
    {
        return Err(Reason::PassIpv6Extension);
    }
    let ext = (off - L4_OFF_MIN) as u16;
    Ok(Ip6 {
        saddr,
        daddr,
        proto: next,
        l4_off: off,
        l4_len: u16::from_be_bytes(h.payload_len).saturating_sub(ext),
        frag,
        frag_id,
    })
}
