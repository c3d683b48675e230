//! Address and port rewrites with incremental checksum updates (IPv4).
//!
//! The kernel's csum helpers are used rather than writing checksums by hand:
//! they handle offloaded (CHECKSUM_PARTIAL) packets from pods, where the L4
//! field holds only the pseudo-header sum, and UDP's "no checksum" zero
//! (`BPF_F_MARK_MANGLED_0` leaves a zero alone and never writes one).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::Reason;

use crate::parse::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, L4, L4_OFF};

/// Which end of the packet is rewritten.
#[derive(Clone, Copy)]
pub(crate) enum End {
    /// Destination: DNAT of client packets.
    Dst,
    /// Source: reverse NAT of replies.
    Src,
}

#[inline(always)]
fn addr_u64(a: [u8; 4]) -> u64 {
    u64::from(u32::from_ne_bytes(a))
}

#[inline(always)]
fn port_u64(p: u16) -> u64 {
    u64::from(u16::from_ne_bytes(p.to_be_bytes()))
}

/// Rewrites the address and port of one end of a TCP/UDP packet.
#[inline(always)]
pub(crate) fn nat4_rewrite(
    ctx: &TcContext,
    end: End,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    l4: &L4,
    new_port: u16,
) -> Result<(), Reason> {
    let (addr_off, port_off, old_port) = match end {
        End::Dst => (IP_DADDR_OFF, L4_OFF + 2, l4.dport),
        End::Src => (IP_SADDR_OFF, L4_OFF, l4.sport),
    };
    let udp_zero = !l4.is_tcp() && l4.check == [0, 0];
    let mangled = if l4.is_tcp() {
        0
    } else {
        u64::from(BPF_F_MARK_MANGLED_0)
    };
    let csum_off = l4.csum_off();
    if old_addr != new_addr {
        if !udp_zero {
            ctx.l4_csum_replace(
                csum_off,
                addr_u64(old_addr),
                addr_u64(new_addr),
                u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
            )
            .map_err(|_| Reason::DropRewrite)?;
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, addr_u64(old_addr), addr_u64(new_addr), 4)
            .map_err(|_| Reason::DropRewrite)?;
        ctx.store(addr_off, &new_addr, 0)
            .map_err(|_| Reason::DropRewrite)?;
    }
    if old_port != new_port {
        if !udp_zero {
            ctx.l4_csum_replace(
                csum_off,
                port_u64(old_port),
                port_u64(new_port),
                mangled | 2,
            )
            .map_err(|_| Reason::DropRewrite)?;
        }
        ctx.store(port_off, &new_port.to_be_bytes(), 0)
            .map_err(|_| Reason::DropRewrite)?;
    }
    Ok(())
}

/// Rewrites only an address (later fragments carry no L4 header; the L4
/// checksum, in the first fragment, was fixed there).
#[inline(always)]
pub(crate) fn nat4_rewrite_addr(
    ctx: &TcContext,
    end: End,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
) -> Result<(), Reason> {
    let off = match end {
        End::Dst => IP_DADDR_OFF,
        End::Src => IP_SADDR_OFF,
    };
    ctx.l3_csum_replace(IP_CSUM_OFF, addr_u64(old_addr), addr_u64(new_addr), 4)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(off, &new_addr, 0)
        .map_err(|_| Reason::DropRewrite)
}

/// Replaces a 4-byte field at `off` and fixes the 16-bit checksums at
/// `csum_offs` that cover it (used inside ICMP errors, where no pseudo-header
/// or offload state applies).
#[inline(always)]
pub(crate) fn replace4(
    ctx: &TcContext,
    off: usize,
    old: [u8; 4],
    new: [u8; 4],
    csum_offs: &[usize],
) -> Result<(), Reason> {
    for c in csum_offs {
        ctx.l3_csum_replace(*c, addr_u64(old), addr_u64(new), 4)
            .map_err(|_| Reason::DropRewrite)?;
    }
    ctx.store(off, &new, 0).map_err(|_| Reason::DropRewrite)
}

/// Replaces a 2-byte field at `off` (network order bytes) and fixes the
/// checksums at `csum_offs` that cover it.
#[inline(always)]
pub(crate) fn replace2(
    ctx: &TcContext,
    off: usize,
    old: [u8; 2],
    new: [u8; 2],
    csum_offs: &[usize],
) -> Result<(), Reason> {
    let (o, n) = (
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
    );
    for c in csum_offs {
        ctx.l3_csum_replace(*c, o, n, 2)
            .map_err(|_| Reason::DropRewrite)?;
    }
    ctx.store(off, &new, 0).map_err(|_| Reason::DropRewrite)
}
