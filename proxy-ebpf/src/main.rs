//! svcnat datapath.
//!
//! This file only declares the modules and the entry points: each entry
//! point is a thin wrapper over a `try_` pipeline that returns the action
//! and the [`proxy_common::Reason`] it is counted under, or an error reason
//! (see `verdict.rs`). Every packet is counted exactly once.
#![no_std]
#![no_main]

mod csum;
mod ct4;
mod frag4;
mod lb4;
mod maps;
mod nat4;
mod node;
mod packet;
mod parse;
mod pod;
mod reject4;
mod snat4;
mod stats;
mod tc;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{
    packet::Packet,
    verdict::{finish, finish_xdp},
};

/// TC ingress on pod-facing interfaces: packets from pods to services.
#[classifier]
pub fn svcnat_pod_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(len, pod::try_ingress(&ctx))
}

/// TC egress on pod-facing interfaces: replies of translated flows.
#[classifier]
pub fn svcnat_pod_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(len, pod::try_egress(&ctx))
}

/// XDP on node interfaces: node-port, external-IP and load-balancer traffic
/// from outside, and replies of remote backends to SNATed flows.
#[xdp]
pub fn svcnat_node_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.len();
    finish_xdp(len, node::try_xdp(&ctx))
}

/// TC egress on node interfaces: replies of local backends to outside
/// clients of node ports (the flow was DNATed at XDP) get the frontend's
/// address back. The same reverse NAT as towards pods.
#[classifier]
pub fn svcnat_node_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(len, pod::try_egress(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic; this is never called.
    loop {}
}
