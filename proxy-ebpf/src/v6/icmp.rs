//! ICMPv6 errors about translated IPv6 flows, at TC egress towards the
//! client (destination unreachable, packet too big, time exceeded): the
//! quoted packet is rewritten back to what the client sent, so that the
//! client's stack matches the error to its socket. IPv6 routers never
//! fragment: without this, path MTU discovery towards a service breaks.
//!
//! The ICMPv6 checksum covers a pseudo-header of the outer addresses and
//! the whole message, so every rewrite of the quote and of the outer
//! source is folded into it; the quoted UDP or TCP checksum (where the
//! quote holds it) covers the inner addresses and ports and is fixed too.

use aya_ebpf::programs::TcContext;
use proxy_common::{CT_F_SNAT, Ct6Value, IPPROTO_TCP, IPPROTO_UDP, Reason};

use super::{
    ct::{ct_get, reply_key},
    ip::{IP6_SADDR_OFF, IPV6_HLEN, Ip6, Ipv6Hdr},
    nat::{replace_addr, replace2},
};
use crate::{
    parse::{L4, UdpHdr},
    verdict::{Verdict, pack, pass, unpack},
};

#[repr(C)]
#[derive(Clone, Copy)]
struct Icmp6Hdr {
    ty: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
}

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;

/// Translates an ICMPv6 error quoting a packet the client sent to a
/// backend (see the module doc); anything else is passed untouched
/// (neighbour discovery, echo, errors about other flows).
#[inline(always)]
pub(crate) fn icmp_error(ctx: &TcContext, ip: &Ip6) -> Result<Verdict, Reason> {
    unpack(icmp_error_apart(ctx, ip))
}

/// [`icmp_error`] in a stack frame of its own (see `reject.rs`).
#[inline(never)]
fn icmp_error_apart(ctx: &TcContext, ip: &Ip6) -> u64 {
    pack(translate(ctx, ip))
}

#[inline(always)]
fn translate(ctx: &TcContext, ip: &Ip6) -> Result<Verdict, Reason> {
    let not_ours = Ok(pass(Reason::PassNotService));
    let off = ip.l4_off;
    let Ok(icmp) = ctx.load::<Icmp6Hdr>(off) else {
        return not_ours;
    };
    if !matches!(
        icmp.ty,
        ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED
    ) {
        return not_ours;
    }
    let in_ip_off = off + 8;
    let in_l4_off = in_ip_off + IPV6_HLEN;
    // The quote ends with the message (the IPv6 payload length), not with
    // the frame, which may go on (Ethernet padding): bytes after it are no
    // part of the quote, and the ICMPv6 checksum does not cover them.
    let quoted = usize::from(ip.l4_len).saturating_sub(8);
    if quoted < IPV6_HLEN + 8 {
        return not_ours;
    }
    let Ok(inner) = ctx.load::<Ipv6Hdr>(in_ip_off) else {
        return not_ours;
    };
    if inner.next != IPPROTO_TCP && inner.next != IPPROTO_UDP {
        return not_ours;
    }
    let Ok(ports) = ctx.load::<UdpHdr>(in_l4_off) else {
        return not_ours;
    };
    let key = reply_key(inner.daddr, inner.saddr, &L4::quoted(inner.next, &ports));
    let Some(e) = ct_get(&key) else {
        return not_ours;
    };
    let icmp_csum = off + 2;
    // The quoted L4 checksum, where the quote holds one: UDP's (in the
    // first 8 bytes; 0: none), TCP's when the quote reaches it (an ICMPv6
    // error quotes as much of the packet as fits the minimum MTU). It
    // covers the inner addresses and ports, and is fixed with them.
    let in_sum = if inner.next == IPPROTO_UDP {
        (ports.check != [0, 0]).then_some((in_l4_off + 6, ports.check))
    } else if quoted >= IPV6_HLEN + 18 {
        ctx.load::<[u8; 2]>(in_l4_off + 16)
            .ok()
            .map(|c| (in_l4_off + 16, c))
    } else {
        None
    };
    // Slices of constant length: the verifier follows no loop over a
    // slice whose length it does not know.
    let offs = (in_ip_off, in_l4_off);
    if let Some((in_csum, old)) = in_sum {
        quote_back(ctx, offs, &inner, &ports, &e, &[icmp_csum, in_csum])?;
        // The inner checksum just changed, and the ICMPv6 checksum covers it.
        let new: [u8; 2] = ctx.load(in_csum).map_err(|_| Reason::DropRewrite)?;
        crate::packet::Packet::csum_replace2(ctx, icmp_csum, old, new)?;
    } else {
        quote_back(ctx, offs, &inner, &ports, &e, &[icmp_csum])?;
    }
    if ip.saddr == inner.daddr {
        // The backend itself sent the error: it comes from the frontend
        // (the pseudo-header of the ICMPv6 checksum covers the source).
        replace_addr(ctx, IP6_SADDR_OFF, ip.saddr, e.nat_addr, &[icmp_csum])?;
    }
    Ok(pass(Reason::RevnatIcmpError))
}

/// Rewrites the quote (its IPv6 header `inner` and ports `ports`, at
/// `offs`) back to what the client sent (`e`: the flow's reply entry), and
/// the checksums at `csums`, which cover it.
#[inline(always)]
fn quote_back(
    ctx: &TcContext,
    offs: (usize, usize),
    inner: &Ipv6Hdr,
    ports: &UdpHdr,
    e: &Ct6Value,
    csums: &[usize],
) -> Result<(), Reason> {
    let (in_ip_off, in_l4_off) = offs;
    if e.flags & CT_F_SNAT != 0 {
        // The client's source port was remapped: quote the one it sent.
        replace2(
            ctx,
            in_l4_off,
            ports.sport,
            e.peer_port.to_be_bytes(),
            csums,
        )?;
    }
    replace_addr(ctx, in_ip_off + 24, inner.daddr, e.nat_addr, csums)?;
    replace2(
        ctx,
        in_l4_off + 2,
        ports.dport,
        e.nat_port.to_be_bytes(),
        csums,
    )
}
