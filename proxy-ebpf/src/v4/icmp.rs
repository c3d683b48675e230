//! ICMP errors about translated IPv4 flows, at TC egress towards the
//! client: the quoted packet is rewritten back to what the client sent.

use aya_ebpf::programs::TcContext;
use proxy_common::{CT_F_SNAT, IPPROTO_TCP, IPPROTO_UDP, Reason};

use super::{
    ct::{ct_get, reply_key},
    ip::{IPV4_HLEN, Ipv4Hdr, L4_OFF},
    nat::{End, nat_rewrite_addr, replace_addr, replace2},
};
use crate::{
    packet::Packet,
    parse::{L3, L4, UdpHdr},
    verdict::{Verdict, pass},
};

#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// An ICMP error (destination unreachable, including fragmentation needed,
/// or time exceeded) quoting a packet the client sent to a backend: the
/// quoted packet is rewritten to what the client sent (to the VIP), and the
/// error's source too when the backend itself sent it. Without this the
/// client's stack would not match the error to its socket and path MTU
/// discovery would break.
#[inline(always)]
pub(crate) fn icmp_error(ctx: &TcContext, ip: &Ipv4Hdr) -> Result<Verdict, Reason> {
    let not_ours = Ok(pass(Reason::PassNotService));
    let Ok(icmp) = ctx.load::<IcmpHdr>(L4_OFF) else {
        return not_ours;
    };
    if icmp.ty != ICMP_DEST_UNREACH && icmp.ty != ICMP_TIME_EXCEEDED {
        return not_ours;
    }
    let in_ip_off = L4_OFF + 8;
    let in_l4_off = in_ip_off + IPV4_HLEN;
    // The quote ends with the message (the IPv4 total length), not with
    // the frame, which may go on (a trailer): bytes after it are no part of
    // the quote, and the ICMP checksum does not cover them. It must hold
    // the ports at least.
    let quote_len = usize::from(ip.l4_len()).saturating_sub(8);
    if quote_len < IPV4_HLEN + 4 {
        return not_ours;
    }
    let Ok(inner) = ctx.load::<Ipv4Hdr>(in_ip_off) else {
        return not_ours;
    };
    if inner.ihl() != 5 || (inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP) {
        return not_ours;
    }
    // The first 8 bytes of TCP and UDP both start with the ports.
    let Ok(ports) = ctx.load::<UdpHdr>(in_l4_off) else {
        return not_ours;
    };
    let quoted = L4::quoted(inner.proto, &ports);
    let key = reply_key(inner.daddr, inner.saddr, &quoted);
    let Some(e) = ct_get(&key) else {
        return not_ours;
    };
    let icmp_csum = L4_OFF + 2;
    let in_ip_csum = in_ip_off + 10;
    let in_udp_csum = in_l4_off + 6;
    // The inner UDP checksum is in the quoted 8 bytes (the TCP one is not).
    let udp_sum = inner.proto == IPPROTO_UDP && quote_len >= IPV4_HLEN + 8 && ports.check != [0, 0];
    if e.flags & CT_F_SNAT != 0 {
        // The client's source port was remapped: quote the one it sent.
        let new = e.peer_port.to_be_bytes();
        if udp_sum {
            replace2(ctx, in_l4_off, ports.sport, new, &[icmp_csum, in_udp_csum])?;
        } else {
            replace2(ctx, in_l4_off, ports.sport, new, &[icmp_csum])?;
        }
    }
    if udp_sum {
        replace_addr(
            ctx,
            in_ip_off + 16,
            inner.daddr,
            e.nat_addr,
            &[in_ip_csum, icmp_csum, in_udp_csum],
        )?;
        replace2(
            ctx,
            in_l4_off + 2,
            ports.dport,
            e.nat_port.to_be_bytes(),
            &[icmp_csum, in_udp_csum],
        )?;
        // The inner UDP checksum just changed, and the ICMP checksum covers it.
        let new_udp: [u8; 2] = ctx.load(in_udp_csum).map_err(|_| Reason::DropRewrite)?;
        ctx.csum_replace2(icmp_csum, ports.check, new_udp)?;
    } else {
        replace_addr(
            ctx,
            in_ip_off + 16,
            inner.daddr,
            e.nat_addr,
            &[in_ip_csum, icmp_csum],
        )?;
        replace2(
            ctx,
            in_l4_off + 2,
            ports.dport,
            e.nat_port.to_be_bytes(),
            &[icmp_csum],
        )?;
    }
    // The inner IPv4 checksum changed too, and the ICMP checksum covers it.
    let new_ip: [u8; 2] = ctx.load(in_ip_csum).map_err(|_| Reason::DropRewrite)?;
    ctx.csum_replace2(icmp_csum, inner.check, new_ip)?;
    if ip.saddr == inner.daddr {
        nat_rewrite_addr(ctx, End::Src, ip.saddr, e.nat_addr)?;
    }
    Ok(pass(Reason::RevnatIcmpError))
}
