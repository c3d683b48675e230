//! svcnat datapath.
//!
//! This file only declares the modules and the entry points: each entry
//! point is a thin wrapper over a `try_` pipeline that returns the action
//! and the [`proxy_common::Reason`] it is counted under, or an error reason
//! (see `verdict.rs`). Every packet is counted exactly once. Each entry
//! point dispatches on the frame's IP family (`parse::family`) to the
//! pipeline of its family, one source compiled for each family
//! (`pipeline/`, see `v4/mod.rs`). The pod TC programs have both
//! families; the node XDP program only IPv4 so far (IPv6 frames pass
//! there untouched, `PassNotIp`).
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
    dead_code,
    reason = "the pipelines are compiled once per family (see v4/mod.rs); IPv6 has no node pipeline yet"
)]
mod v6;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use proxy_common::Reason;

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
        Ok(Family::V6) => v6::pod::ingress(ctx),
        Err(_) => finish(ctx.len(), Err(Reason::PassNotIp)),
    }
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
        Ok(Family::V6) | Err(_) => finish_xdp(ctx.len(), Err(Reason::PassNotIp)),
    }
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
        Ok(Family::V6) => v6::pod::egress(ctx),
        Err(_) => finish(ctx.len(), Err(Reason::PassNotIp)),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic; this is never called.
    loop {}
}
