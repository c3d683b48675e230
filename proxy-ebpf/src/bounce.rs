//! Packets sent back where they came from, for both families: a packet
//! bounced to its sender (hairpin), and the family-neutral half of the
//! rejects (`v4/reject.rs`, `v6/reject.rs` build the reply itself): the
//! Ethernet header swapped, the skb resized, `TC_ACT_REDIRECT` out of the
//! interface the packet came in on, and the numbers of a TCP RST.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::Reason;

use crate::{
    parse::{EthHdr, L4, TCP_ACK, TCP_RST},
    verdict::Verdict,
};

/// Hop limit / TTL of the replies the datapath builds.
pub(crate) const TTL: u8 = 64;

/// Resizes the packet to `len` bytes (a reject replaces it).
#[inline(always)]
pub(crate) fn resize(ctx: &TcContext, len: usize) -> Result<(), Reason> {
    // SAFETY: the skb pointer is the program's context.
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) };
    if ret != 0 {
        return Err(Reason::DropRewrite);
    }
    Ok(())
}

/// The packet's Ethernet header with its addresses swapped.
#[inline(always)]
pub(crate) fn swapped_eth(ctx: &TcContext) -> Result<EthHdr, Reason> {
    let eth: EthHdr = ctx.load(0).map_err(|_| Reason::DropTruncated)?;
    Ok(EthHdr {
        dst: eth.src,
        src: eth.dst,
        proto: eth.proto,
    })
}

/// Sends the packet, as rewritten, back to its sender out of the
/// interface it came in on: Ethernet addresses swapped, TC_ACT_REDIRECT.
#[inline(always)]
pub(crate) fn bounce(ctx: &TcContext, reason: Reason) -> Result<Verdict, Reason> {
    let eth = swapped_eth(ctx)?;
    ctx.store(0, &eth, 0).map_err(|_| Reason::DropRewrite)?;
    redirect_here(ctx, reason)
}

/// TC_ACT_REDIRECT to the egress of the interface the packet came in on.
#[inline(always)]
pub(crate) fn redirect_here(ctx: &TcContext, reason: Reason) -> Result<Verdict, Reason> {
    // SAFETY: reads the ifindex field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: helper with plain arguments; returns TC_ACT_REDIRECT on success.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    if action != i64::from(TC_ACT_REDIRECT) {
        return Err(Reason::DropRewrite);
    }
    Ok((TC_ACT_REDIRECT, reason))
}

/// Sequence number, acknowledgment number and flags of the RST that
/// refuses TCP segment `l4` (RFC 793: a segment with ACK gets a RST at its
/// acknowledgment number; one without, a RST+ACK of all it occupies).
/// `None` for a RST, which is never answered.
#[inline(always)]
pub(crate) fn rst_for(l4: &L4) -> Option<(u32, u32, u8)> {
    if l4.has(TCP_RST) {
        return None;
    }
    Some(if l4.has(TCP_ACK) {
        (l4.ack(), 0, TCP_RST)
    } else {
        (0, l4.seq().wrapping_add(l4.seg_len()), TCP_RST | TCP_ACK)
    })
}
