//! NAT rewrites, for TC and XDP alike and for either family: which fields of the
//! packet a rewrite changes and which checksums cover them. How a field is
//! written and a checksum updated is the context's own (see `packet.rs`).

use proxy_common::Reason;

use super::{Addr, DADDR_OFF, L3_CSUM, SADDR_OFF, ct::AddrPort};
use crate::{
    packet::{EndAt, Packet, first4},
    parse::L4,
};

/// Where a client's packet goes: the backend, and the source the backend
/// sees (the client's own unless source-NATed).
pub(crate) struct Dnat {
    pub(crate) addr: Addr,
    pub(crate) port: u16,
    pub(crate) src: AddrPort,
}

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
            End::Dst => DADDR_OFF,
            End::Src => SADDR_OFF,
        }
    }
}

/// Rewrites the address and port of one end of a TCP/UDP packet, with the
/// IPv4 (if any) and L4 checksums; `old_addr` is the address the packet has there.
/// Addresses by reference: a copy of an IPv6 one costs 16 bytes of stack
/// at every call.
#[inline(always)]
pub(crate) fn nat_rewrite<P: Packet>(
    pkt: &P,
    end: End,
    old_addr: &Addr,
    new_addr: &Addr,
    l4: &L4,
    new_port: u16,
) -> Result<(), Reason> {
    let (port, old_port) = match end {
        End::Dst => (l4.off + 2, l4.dport),
        End::Src => (l4.off, l4.sport),
    };
    let at = EndAt {
        addr: end.addr_off(),
        port,
        l3_csum: L3_CSUM,
        l4_csum: l4.csum_off(),
        tcp: l4.is_tcp(),
        no_l4_csum: !l4.is_tcp() && l4.check == [0, 0],
    };
    pkt.rewrite_end(&at, (old_addr, old_port), (new_addr, new_port))
}

/// Rewrites only an address, with the IPv4 checksum (later fragments carry
/// no L4 header; the L4 checksum, in the first fragment, was fixed there;
/// IPv6 has no header checksum).
#[inline(always)]
pub(crate) fn nat_rewrite_addr<P: Packet>(
    pkt: &P,
    end: End,
    old_addr: Addr,
    new_addr: Addr,
) -> Result<(), Reason> {
    if let Some(c) = L3_CSUM {
        pkt.csum_replace4(c, first4(&old_addr), first4(&new_addr))?;
    }
    pkt.write(end.addr_off(), &new_addr)
}

/// Replaces an address at `off` and fixes the 16-bit checksums at
/// `csum_offs` that cover it (used inside ICMP errors, where no pseudo-header
/// or offload state applies), four bytes at a time.
#[inline(always)]
pub(crate) fn replace_addr<P: Packet>(
    pkt: &P,
    off: usize,
    old: Addr,
    new: Addr,
    csum_offs: &[usize],
) -> Result<(), Reason> {
    for c in csum_offs {
        let mut i = 0;
        while i < old.len() {
            let o = [old[i], old[i + 1], old[i + 2], old[i + 3]];
            let n = [new[i], new[i + 1], new[i + 2], new[i + 3]];
            if o != n {
                pkt.csum_replace4(*c, o, n)?;
            }
            i += 4;
        }
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
