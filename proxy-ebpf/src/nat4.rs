//! NAT rewrites of IPv4 packets, for TC and XDP alike: which fields of the
//! packet a rewrite changes and which checksums cover them. How a field is
//! written and a checksum updated is the context's own (see `packet.rs`).

use proxy_common::Reason;

use crate::{
    packet::{EndAt, Packet},
    parse::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, L4, L4_OFF},
};

/// Which end of the packet is rewritten.
#[derive(Clone, Copy)]
pub(crate) enum End {
    /// Destination: DNAT of client packets.
    Dst,
    /// Source: reverse NAT of replies.
    Src,
}

impl End {
    /// Offset of this end's address.
    #[inline(always)]
    fn addr_off(self) -> usize {
        match self {
            End::Dst => IP_DADDR_OFF,
            End::Src => IP_SADDR_OFF,
        }
    }
}

/// Rewrites the address and port of one end of a TCP/UDP packet, with the
/// IPv4 and L4 checksums; `old_addr` is the address the packet has there.
#[inline(always)]
pub(crate) fn nat4_rewrite<P: Packet>(
    pkt: &P,
    end: End,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    l4: &L4,
    new_port: u16,
) -> Result<(), Reason> {
    let (port, old_port) = match end {
        End::Dst => (L4_OFF + 2, l4.dport),
        End::Src => (L4_OFF, l4.sport),
    };
    let at = EndAt {
        addr: end.addr_off(),
        port,
        l3_csum: IP_CSUM_OFF,
        l4_csum: l4.csum_off(),
        tcp: l4.is_tcp(),
        no_l4_csum: !l4.is_tcp() && l4.check == [0, 0],
    };
    pkt.rewrite_end(at, (old_addr, old_port), (new_addr, new_port))
}

/// Rewrites only an address, with the IPv4 checksum (later fragments carry
/// no L4 header; the L4 checksum, in the first fragment, was fixed there).
#[inline(always)]
pub(crate) fn nat4_rewrite_addr<P: Packet>(
    pkt: &P,
    end: End,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
) -> Result<(), Reason> {
    pkt.csum_replace4(IP_CSUM_OFF, old_addr, new_addr)?;
    pkt.write(end.addr_off(), &new_addr)
}

/// Replaces a 4-byte field at `off` and fixes the 16-bit checksums at
/// `csum_offs` that cover it (used inside ICMP errors, where no pseudo-header
/// or offload state applies).
#[inline(always)]
pub(crate) fn replace4<P: Packet>(
    pkt: &P,
    off: usize,
    old: [u8; 4],
    new: [u8; 4],
    csum_offs: &[usize],
) -> Result<(), Reason> {
    for c in csum_offs {
        pkt.csum_replace4(*c, old, new)?;
    }
    pkt.write(off, &new)
}

/// Replaces a 2-byte field at `off` (network order bytes) and fixes the
/// checksums at `csum_offs` that cover it.
#[inline(always)]
pub(crate) fn replace2<P: Packet>(
    pkt: &P,
    off: usize,
    old: [u8; 2],
    new: [u8; 2],
    csum_offs: &[usize],
) -> Result<(), Reason> {
    for c in csum_offs {
        pkt.csum_replace2(*c, old, new)?;
    }
    pkt.write(off, &new)
}
