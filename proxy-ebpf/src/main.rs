//! svcnat datapath.
//!
//! This file only dispatches: each entry point is a thin wrapper over a `try_`
//! pipeline that returns the TC action and the [`Reason`] it is counted under,
//! or an error reason (always a drop). Every packet is counted exactly once.
#![no_std]
#![no_main]

mod csum;
mod ct4;
mod frag4;
mod lb4;
mod maps;
mod nat4;
mod node;
mod parse;
mod pod;
mod reject4;
mod snat4;
mod stats;
mod xdp4;

use aya_ebpf::{
    bindings::{
        TC_ACT_SHOT,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use proxy_common::Reason;

/// A TC action and the reason it is counted under.
pub(crate) type Verdict = (i32, Reason);

/// An XDP action and the reason it is counted under.
pub(crate) type XdpVerdict = (u32, Reason);

/// `TCX_NEXT` (`TC_ACT_UNSPEC` for classic tc filters): on to the next
/// program or filter on the hook, and past the last one as `TC_ACT_OK`.
/// svcnat returns it for every packet it passes (untouched or rewritten), so
/// that programs attached after it (a CNI's bandwidth shaping, say) still run.
pub(crate) const TCX_NEXT: i32 = -1;

/// Pass the packet on untouched (or as rewritten), counted under `reason`.
pub(crate) const fn pass(reason: Reason) -> Verdict {
    (TCX_NEXT, reason)
}

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
    let len = xdp4::len(&ctx);
    let (action, reason) = match node::try_xdp(&ctx) {
        Ok(v) => v,
        Err(reason) => (
            if action_for(reason) == TCX_NEXT {
                XDP_PASS
            } else {
                XDP_DROP
            },
            reason,
        ),
    };
    stats::count(reason, len);
    action
}

/// TC egress on node interfaces: replies of local backends to outside
/// clients of node ports (the flow was DNATed at XDP) get the frontend's
/// address back. The same reverse NAT as towards pods.
#[classifier]
pub fn svcnat_node_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(len, pod::try_egress(&ctx))
}

/// The action for a pipeline that stopped early with `reason`: the pass
/// reasons pass the packet untouched, every other one drops it (a packet we
/// could not translate correctly must not reach a pod half-rewritten).
#[inline(always)]
const fn action_for(reason: Reason) -> i32 {
    match reason {
        Reason::PassNotIpv4
        | Reason::PassNotService
        | Reason::PassIpOptions
        | Reason::PassFragmentUntracked
        | Reason::PassOtherProtocol
        | Reason::PassNoBackend => TCX_NEXT,
        _ => TC_ACT_SHOT,
    }
}

/// Counts the verdict under the length the packet had when it arrived (a
/// reject replaces it with a reply of another size) and returns its action.
#[inline(always)]
fn finish(len: u32, result: Result<Verdict, Reason>) -> i32 {
    let (action, reason) = match result {
        Ok(v) => v,
        Err(reason) => (action_for(reason), reason),
    };
    stats::count(reason, len);
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic; this is never called.
    loop {}
}
