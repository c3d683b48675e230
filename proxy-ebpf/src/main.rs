//! svcnat datapath.
//!
//! This file only declares the modules and the entry points: each entry
//! point is a thin wrapper over a `try_` pipeline that returns the action
//! and the [`proxy_common::Reason`] it is counted under, or an error reason
//! (see `verdict.rs`). Every packet is counted exactly once. Each entry
//! point dispatches on the frame's IP family (`parse::family`) to the
//! pipeline of its family, one source compiled for each family
//! (`pipeline/`, see `v4/mod.rs`): IPv4's is inlined into the attached
//! program, IPv6's is a program of its own that the attached one
//! tail-calls (`proxy_common::TAIL_CALLS`, filled by the loader), so that
//! each has the 512-byte BPF stack to itself and IPv4 pays nothing for
//! IPv6.
#![no_std]
#![no_main]

mod bounce;
mod csum;
mod maps;
mod packet;
mod parse;
mod stats;
mod tc;
mod v4;
#[allow(
    clippy::duplicate_mod,
    reason = "the pipelines are compiled once per family (see v4/mod.rs)"
)]
mod v6;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use proxy_common::{Reason, TAIL_EGRESS6, TAIL_NODE_XDP6, TAIL_POD_INGRESS6};

use crate::{
    packet::Packet,
    parse::{Family, family},
    verdict::{finish, finish_xdp},
};

/// TC ingress on pod-facing interfaces: packets from pods to services.
#[classifier]
pub fn svcnat_pod_ingress(ctx: TcContext) -> i32 {
    match family(&ctx) {
        Ok(Family::V4) => v4::pod::ingress(ctx),
        Ok(Family::V6) => tail_tc(&ctx, TAIL_POD_INGRESS6),
        Err(_) => finish(ctx.len(), Err(Reason::PassNotIp)),
    }
}

/// [`svcnat_pod_ingress`] for IPv6: tail-called by it, never attached.
#[classifier]
pub fn svcnat_pod_ingress6(ctx: TcContext) -> i32 {
    v6::pod::ingress(ctx)
}

/// TC egress on pod-facing interfaces: replies of translated flows.
#[classifier]
pub fn svcnat_pod_egress(ctx: TcContext) -> i32 {
    egress(ctx)
}

/// XDP on node interfaces: node-port, external-IP and load-balancer traffic
/// from outside, and replies of remote backends to SNATed flows.
#[xdp]
pub fn svcnat_node_xdp(ctx: XdpContext) -> u32 {
    match family(&ctx) {
        Ok(Family::V4) => v4::node::xdp(ctx),
        Ok(Family::V6) => {
            // SAFETY: a tail call; it returns only when it failed.
            unsafe { maps::TAIL_XDP.tail_call(&ctx, TAIL_NODE_XDP6) };
            finish_xdp(ctx.len(), Err(Reason::PassNoProgram))
        }
        Err(_) => finish_xdp(ctx.len(), Err(Reason::PassNotIp)),
    }
}

/// [`svcnat_node_xdp`] for IPv6: tail-called by it, never attached.
#[xdp]
pub fn svcnat_node_xdp6(ctx: XdpContext) -> u32 {
    v6::node::xdp(ctx)
}

/// TC egress on node interfaces: replies of local backends to outside
/// clients of node ports (the flow was DNATed at XDP) get the frontend's
/// address back. The same reverse NAT as towards pods.
#[classifier]
pub fn svcnat_node_egress(ctx: TcContext) -> i32 {
    egress(ctx)
}

/// The reverse NAT of both egress programs, by family.
#[inline(always)]
fn egress(ctx: TcContext) -> i32 {
    match family(&ctx) {
        Ok(Family::V4) => v4::pod::egress(ctx),
        Ok(Family::V6) => tail_tc(&ctx, TAIL_EGRESS6),
        Err(_) => finish(ctx.len(), Err(Reason::PassNotIp)),
    }
}

/// The reverse NAT of both egress programs for IPv6: tail-called by them,
/// never attached.
#[classifier]
pub fn svcnat_egress6(ctx: TcContext) -> i32 {
    v6::pod::egress(ctx)
}

/// Goes on to the TC program in slot `index` of `SVCNAT_TAIL_TC`; passes
/// the packet untouched (counted) if the slot is empty.
#[inline(always)]
fn tail_tc(ctx: &TcContext, index: u32) -> i32 {
    // SAFETY: a tail call; it returns only when it failed.
    unsafe { maps::TAIL_TC.tail_call(ctx, index) };
    finish(ctx.len(), Err(Reason::PassNoProgram))
}

/// cgroup `connect4`: the node's sockets to IPv4 services get a backend
/// (`pipeline/sock.rs`).
#[cgroup_sock_addr(connect4)]
pub fn svcnat_sock_connect4(ctx: SockAddrContext) -> i32 {
    v4::sock::translate(&ctx, false)
}

/// cgroup `connect6`: as [`svcnat_sock_connect4`] for IPv6.
#[cgroup_sock_addr(connect6)]
pub fn svcnat_sock_connect6(ctx: SockAddrContext) -> i32 {
    v6::sock::translate(&ctx, false)
}

/// cgroup `sendmsg4`: unconnected UDP datagrams to IPv4 services.
#[cgroup_sock_addr(sendmsg4)]
pub fn svcnat_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    v4::sock::translate(&ctx, true)
}

/// cgroup `sendmsg6`: as [`svcnat_sock_sendmsg4`] for IPv6.
#[cgroup_sock_addr(sendmsg6)]
pub fn svcnat_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    v6::sock::translate(&ctx, true)
}

/// cgroup `recvmsg4`: datagrams of a backend report its service.
#[cgroup_sock_addr(recvmsg4)]
pub fn svcnat_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    v4::sock::restore(&ctx)
}

/// cgroup `recvmsg6`: as [`svcnat_sock_recvmsg4`] for IPv6.
#[cgroup_sock_addr(recvmsg6)]
pub fn svcnat_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    v6::sock::restore(&ctx)
}

/// cgroup `getpeername4`: a translated socket's peer is its service.
#[cgroup_sock_addr(getpeername4)]
pub fn svcnat_sock_peer4(ctx: SockAddrContext) -> i32 {
    v4::sock::restore(&ctx)
}

/// cgroup `getpeername6`: as [`svcnat_sock_peer4`] for IPv6.
#[cgroup_sock_addr(getpeername6)]
pub fn svcnat_sock_peer6(ctx: SockAddrContext) -> i32 {
    v6::sock::restore(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic; this is never called.
    loop {}
}
