//! IPv6 rejects, as kube-proxy's ip6tables/nftables rules do: TCP gets a
//! RST, UDP an ICMPv6 port unreachable (type 1, code 4, RFC 4443). Built in
//! place of the packet (without its extension headers) and sent back out of
//! the interface it came in on.

use aya_ebpf::programs::TcContext;
use proxy_common::{IPPROTO_ICMPV6, IPPROTO_TCP, Reason};

use super::ip::{IPV6_HLEN, Ip6, Ipv6Hdr, L4_OFF_MIN};
use crate::{
    bounce::{TTL, redirect_here, resize, rst_for, swapped_eth},
    csum::{fold, words},
    parse::{ETH_HLEN, L3_OFF, L4, TcpHdr, UdpHdr},
    verdict::{Verdict, pack, unpack},
};

const TCP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// What the port unreachable quotes: the fixed IPv6 header of the packet
/// and the 8 bytes after it (its UDP header when it has no extension
/// headers, as a client's datagram to a service has).
const QUOTE_LEN: usize = IPV6_HLEN + 8;
const RST_LEN: usize = ETH_HLEN + IPV6_HLEN + TCP_HLEN;
const ICMP_ERR_LEN: usize = ETH_HLEN + IPV6_HLEN + ICMP_HLEN + QUOTE_LEN;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;

/// The IPv6 pseudo-header (RFC 8200 section 8.1) of an upper-layer
/// packet of `len` bytes from `src` to `dst`.
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct Pseudo {
    saddr: [u8; 16],
    daddr: [u8; 16],
    len: [u8; 4],
    zero: [u8; 3],
    next: u8,
}

/// Pseudo-header followed by the TCP header: what the checksum covers.
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct TcpCsum {
    pseudo: Pseudo,
    tcp: TcpHdr,
}

/// Pseudo-header followed by the ICMPv6 message.
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct IcmpCsum {
    pseudo: Pseudo,
    ty: u8,
    code: u8,
    check: [u8; 2],
    unused: [u8; 4],
    inner_ip: Ipv6Hdr,
    inner_l4: UdpHdr,
}

/// The pseudo-header and IPv6 header of a reply to `ip` carrying `len`
/// bytes of `next`.
#[inline(always)]
fn reply_hdrs(ip: &Ip6, len: usize, next: u8) -> (Pseudo, Ipv6Hdr) {
    let pseudo = Pseudo {
        saddr: ip.daddr,
        daddr: ip.saddr,
        len: (len as u32).to_be_bytes(),
        zero: [0; 3],
        next,
    };
    let hdr = Ipv6Hdr {
        ver_tc_flow: [0x60, 0, 0, 0],
        payload_len: (len as u16).to_be_bytes(),
        next,
        hop_limit: TTL,
        saddr: ip.daddr,
        daddr: ip.saddr,
    };
    (pseudo, hdr)
}

/// Replaces the packet with a reject for it and returns the verdict that
/// sends the reject back to the sender, counted under `reason`.
#[inline(always)]
pub(crate) fn reject(
    ctx: &TcContext,
    ip: &Ip6,
    l4: &L4,
    reason: Reason,
) -> Result<Verdict, Reason> {
    unpack(reject_apart(ctx, ip, l4, reason))
}

/// [`reject`] in a stack frame of its own: the replies it builds take a
/// fifth of the 512-byte stack, which the rest of the pipeline needs.
#[inline(never)]
fn reject_apart(ctx: &TcContext, ip: &Ip6, l4: &L4, reason: Reason) -> u64 {
    let built = if l4.proto == IPPROTO_TCP {
        reject_tcp(ctx, ip, l4, reason)
    } else {
        reject_udp(ctx, ip)
    };
    pack(built.and_then(|()| redirect_here(ctx, reason)))
}

#[inline(always)]
fn reject_tcp(ctx: &TcContext, ip: &Ip6, l4: &L4, reason: Reason) -> Result<(), Reason> {
    // Never answer a RST (RFC 793): drop it, counted under the same reason.
    let (seq, ack, flags) = rst_for(l4).ok_or(reason)?;
    let tcp: TcpHdr = ctx.load(l4.off).map_err(|_| Reason::DropTruncated)?;
    let eth = swapped_eth(ctx)?;
    let (pseudo, hdr) = reply_hdrs(ip, TCP_HLEN, IPPROTO_TCP);
    let mut c = TcpCsum {
        pseudo,
        tcp: TcpHdr {
            sport: tcp.dport,
            dport: tcp.sport,
            seq: seq.to_be_bytes(),
            ack_seq: ack.to_be_bytes(),
            doff_res: 5 << 4,
            flags,
            window: [0, 0],
            check: [0, 0],
            urg_ptr: [0, 0],
        },
    };
    // SAFETY: TcpCsum is 60 bytes of byte arrays, 4-aligned.
    let sum = fold::<30>(unsafe { words(&c) }, 0);
    c.tcp.check = sum.to_ne_bytes();
    resize(ctx, RST_LEN)?;
    ctx.store(0, &eth, 0).map_err(|_| Reason::DropRewrite)?;
    ctx.store(L3_OFF, &hdr, 0)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(L4_OFF_MIN, &c.tcp, 0)
        .map_err(|_| Reason::DropRewrite)?;
    Ok(())
}

#[inline(always)]
fn reject_udp(ctx: &TcContext, ip: &Ip6) -> Result<(), Reason> {
    let inner_ip: Ipv6Hdr = ctx.load(L3_OFF).map_err(|_| Reason::DropTruncated)?;
    let inner_l4: UdpHdr = ctx.load(L4_OFF_MIN).map_err(|_| Reason::DropTruncated)?;
    let eth = swapped_eth(ctx)?;
    let len = ICMP_HLEN + QUOTE_LEN;
    let (pseudo, hdr) = reply_hdrs(ip, len, IPPROTO_ICMPV6);
    let mut m = IcmpCsum {
        pseudo,
        ty: ICMPV6_DEST_UNREACH,
        code: ICMPV6_PORT_UNREACH,
        check: [0, 0],
        unused: [0; 4],
        inner_ip,
        inner_l4,
    };
    // SAFETY: IcmpCsum is 96 bytes of byte arrays, 4-aligned.
    let sum = fold::<48>(unsafe { words(&m) }, 0);
    m.check = sum.to_ne_bytes();
    resize(ctx, ICMP_ERR_LEN)?;
    ctx.store(0, &eth, 0).map_err(|_| Reason::DropRewrite)?;
    ctx.store(L3_OFF, &hdr, 0)
        .map_err(|_| Reason::DropRewrite)?;
    // The message without the pseudo-header, which is not sent.
    let msg: &[u8; ICMP_HLEN + QUOTE_LEN] =
        // SAFETY: the message fields follow the 40-byte pseudo-header in a
        // `repr(C)` struct of byte arrays, with no padding.
        unsafe { &*((&m as *const IcmpCsum as *const u8).add(40) as *const [u8; ICMP_HLEN + QUOTE_LEN]) };
    ctx.store(L4_OFF_MIN, msg, 0)
        .map_err(|_| Reason::DropRewrite)?;
    Ok(())
}
