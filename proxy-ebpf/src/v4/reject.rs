//! Rejects, as kube-proxy does for a service without endpoints or a port no
//! service defines: TCP gets a RST, UDP an ICMP port unreachable. The reply is
//! built in place of the packet and sent back out of the interface it came in
//! on, so the client fails at once instead of timing out.

use aya_ebpf::programs::TcContext;
use proxy_common::{IPPROTO_ICMP, IPPROTO_TCP, Reason};

use super::ip::{IPV4_HLEN, Ipv4Hdr, L4_OFF};
use crate::{
    bounce::{TTL, redirect_here, resize, rst_for, swapped_eth},
    csum::{fold, words},
    parse::{ETH_HLEN, L3_OFF, L4, TcpHdr, UdpHdr},
    verdict::Verdict,
};

const TCP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
const RST_LEN: usize = ETH_HLEN + IPV4_HLEN + TCP_HLEN;
const ICMP_ERR_LEN: usize = ETH_HLEN + IPV4_HLEN + ICMP_HLEN + IPV4_HLEN + 8;
const IP_DF: u16 = 0x4000;

#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct AlignedIp(Ipv4Hdr);

/// TCP pseudo-header followed by the TCP header: what the checksum covers.
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct TcpCsum {
    saddr: [u8; 4],
    daddr: [u8; 4],
    zero: u8,
    proto: u8,
    len: [u8; 2],
    tcp: TcpHdr,
}

/// The ICMP message of a port unreachable: header, then the offending
/// packet's IPv4 header and first 8 bytes of its UDP header (RFC 792).
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct IcmpUnreach {
    ty: u8,
    code: u8,
    check: [u8; 2],
    unused: [u8; 4],
    inner_ip: Ipv4Hdr,
    inner_udp: UdpHdr,
}

#[inline(always)]
fn reply_ip(ip: &Ipv4Hdr, total_len: usize, proto: u8, frag: u16) -> AlignedIp {
    let mut h = AlignedIp(Ipv4Hdr {
        ver_ihl: 0x45,
        tos: 0,
        tot_len: (total_len as u16).to_be_bytes(),
        id: [0, 0],
        frag_off: frag.to_be_bytes(),
        ttl: TTL,
        proto,
        check: [0, 0],
        saddr: ip.daddr,
        daddr: ip.saddr,
    });
    // SAFETY: Ipv4Hdr is 20 bytes of byte arrays; AlignedIp is 4-aligned.
    let c = fold::<10>(unsafe { words(&h) }, 0);
    h.0.check = c.to_ne_bytes();
    h
}

/// Replaces the packet with a reject for it and returns the verdict that
/// sends the reject back to the sender, counted under `reason`.
#[inline(always)]
pub(crate) fn reject(
    ctx: &TcContext,
    ip: &Ipv4Hdr,
    l4: &L4,
    reason: Reason,
) -> Result<Verdict, Reason> {
    if l4.proto == IPPROTO_TCP {
        reject_tcp(ctx, ip, l4, reason)
    } else {
        reject_udp(ctx, ip, reason)
    }?;
    redirect_here(ctx, reason)
}

#[inline(always)]
fn reject_tcp(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4, reason: Reason) -> Result<(), Reason> {
    // Never answer a RST (RFC 793): drop it, counted under the same reason.
    let (seq, ack, flags) = rst_for(l4).ok_or(reason)?;
    let tcp: TcpHdr = ctx.load(L4_OFF).map_err(|_| Reason::DropTruncated)?;
    let eth = swapped_eth(ctx)?;
    let nip = reply_ip(ip, IPV4_HLEN + TCP_HLEN, IPPROTO_TCP, IP_DF);
    let mut c = TcpCsum {
        saddr: ip.daddr,
        daddr: ip.saddr,
        zero: 0,
        proto: IPPROTO_TCP,
        len: (TCP_HLEN as u16).to_be_bytes(),
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
    // SAFETY: TcpCsum is 32 bytes of byte arrays, 4-aligned.
    let sum = fold::<16>(unsafe { words(&c) }, 0);
    c.tcp.check = sum.to_ne_bytes();
    resize(ctx, RST_LEN)?;
    ctx.store(0, &eth, 0).map_err(|_| Reason::DropRewrite)?;
    ctx.store(L3_OFF, &nip.0, 0)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(L4_OFF, &c.tcp, 0)
        .map_err(|_| Reason::DropRewrite)?;
    Ok(())
}

#[inline(always)]
fn reject_udp(ctx: &TcContext, ip: &Ipv4Hdr, _reason: Reason) -> Result<(), Reason> {
    let udp: UdpHdr = ctx.load(L4_OFF).map_err(|_| Reason::DropTruncated)?;
    let eth = swapped_eth(ctx)?;
    let nip = reply_ip(ip, ICMP_ERR_LEN - ETH_HLEN, IPPROTO_ICMP, 0);
    let mut m = IcmpUnreach {
        ty: 3,
        code: 3,
        check: [0, 0],
        unused: [0; 4],
        inner_ip: *ip,
        inner_udp: udp,
    };
    // SAFETY: IcmpUnreach is 36 bytes of byte arrays, 4-aligned.
    let sum = fold::<18>(unsafe { words(&m) }, 0);
    m.check = sum.to_ne_bytes();
    resize(ctx, ICMP_ERR_LEN)?;
    ctx.store(0, &eth, 0).map_err(|_| Reason::DropRewrite)?;
    ctx.store(L3_OFF, &nip.0, 0)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(L4_OFF, &m, 0).map_err(|_| Reason::DropRewrite)?;
    Ok(())
}
