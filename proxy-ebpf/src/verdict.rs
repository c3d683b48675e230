//! Verdicts: the action a pipeline ends a packet with and the [`Reason`] it
//! is counted under, for TC and XDP alike, and how the entry points turn a
//! pipeline's result into an action and a count. Every packet is counted
//! exactly once.

use aya_ebpf::bindings::{
    TC_ACT_SHOT,
    xdp_action::{XDP_DROP, XDP_PASS},
};
use proxy_common::Reason;

use crate::stats;

/// A TC or XDP action: what [`pack`] and [`hand_over`] need of it.
pub(crate) trait Action: Copy {
    /// The action as 32 bits.
    fn bits(self) -> u32;
    /// The action [`Action::bits`] gave.
    fn of_bits(bits: u32) -> Self;
}

impl Action for i32 {
    #[inline(always)]
    fn bits(self) -> u32 {
        self as u32
    }
    #[inline(always)]
    fn of_bits(bits: u32) -> Self {
        bits as i32
    }
}

impl Action for u32 {
    #[inline(always)]
    fn bits(self) -> u32 {
        self
    }
    #[inline(always)]
    fn of_bits(bits: u32) -> Self {
        bits
    }
}

/// An action (TC by default) and the reason it is counted under.
pub(crate) type Verdict<A = i32> = (A, Reason);

/// An XDP action and the reason it is counted under.
pub(crate) type XdpVerdict = Verdict<u32>;

/// A pipeline's result as one integer, so that a step compiled as a BPF
/// subprogram of its own (a stack frame apart) can return it in a register:
/// the action in the low 32 bits, the reason above, and bit 63 set for an
/// early stop (`Err`).
#[inline(always)]
pub(crate) fn pack<A: Action>(r: Result<Verdict<A>, Reason>) -> u64 {
    match r {
        Ok((action, reason)) => u64::from(action.bits()) | (u64::from(reason as u32) << 32),
        Err(reason) => (1 << 63) | (u64::from(reason as u32) << 32),
    }
}

/// The result [`pack`] packed.
#[inline(always)]
pub(crate) fn unpack<A: Action>(v: u64) -> Result<Verdict<A>, Reason> {
    let index = ((v >> 32) & 0x7fff_ffff) as u32;
    // SAFETY: `v` came from `pack`, which stored a `Reason` (a `repr(u32)`
    // enum) there.
    let reason = unsafe { core::mem::transmute::<u32, Reason>(index) };
    if v >> 63 != 0 {
        Err(reason)
    } else {
        Ok((A::of_bits(v as u32), reason))
    }
}

/// The action of a verdict that hands a packet over to another step of
/// its pipeline (no TC or XDP action has this bit): the step's number in
/// the low byte.
const HAND_OVER: u32 = 1 << 24;

/// A step's result that hands the packet over to step `next` of its
/// pipeline, which counts it under `reason` if it ends there as it may.
/// (A pipeline whose steps run as BPF subprograms of their own, see
/// `v6::apart`, branches on it rather than calling the next step from
/// inside: frames of steps that nest add up.)
#[inline(always)]
pub(crate) fn hand_over<A: Action>(next: u8, reason: Reason) -> Verdict<A> {
    (A::of_bits(HAND_OVER | u32::from(next)), reason)
}

/// The step `v` hands the packet over to, if it does (see [`hand_over`]).
/// (`TCX_NEXT`, -1, has every bit set: a hand-over has bit 31 clear.)
#[inline(always)]
pub(crate) fn handed_over<A: Action>(v: Verdict<A>) -> Option<u8> {
    let bits = v.0.bits();
    if bits & HAND_OVER != 0 && bits >> 31 == 0 {
        Some(bits as u8)
    } else {
        None
    }
}

/// `TCX_NEXT` (`TC_ACT_UNSPEC` for classic tc filters): on to the next
/// program or filter on the hook, and past the last one as `TC_ACT_OK`.
/// svcnat returns it for every packet it passes (untouched or rewritten), so
/// that programs attached after it (a CNI's bandwidth shaping, say) still run.
pub(crate) const TCX_NEXT: i32 = -1;

/// Pass the packet on untouched (or as rewritten), counted under `reason`.
pub(crate) const fn pass(reason: Reason) -> Verdict {
    (TCX_NEXT, reason)
}

/// XDP: pass the packet to the kernel untouched (or as rewritten), counted
/// under `reason`.
#[inline(always)]
pub(crate) const fn xdp_pass(reason: Reason) -> XdpVerdict {
    (XDP_PASS, reason)
}

/// The action for a pipeline that stopped early with `reason`: the pass
/// reasons pass the packet untouched, every other one drops it (a packet we
/// could not translate correctly must not reach a pod half-rewritten).
#[inline(always)]
pub(crate) const fn action_for(reason: Reason) -> i32 {
    match reason {
        Reason::PassNotIp
        | Reason::PassNotService
        | Reason::PassIpOptions
        | Reason::PassFragmentUntracked
        | Reason::PassOtherProtocol
        | Reason::PassNoBackend
        | Reason::PassIpv6Extension
        | Reason::PassNoProgram => TCX_NEXT,
        _ => TC_ACT_SHOT,
    }
}

/// Counts the verdict under the length the packet had when it arrived (a
/// reject replaces it with a reply of another size) and returns its action.
#[inline(always)]
pub(crate) fn finish(len: u32, result: Result<Verdict, Reason>) -> i32 {
    let (action, reason) = match result {
        Ok(v) => v,
        Err(reason) => (action_for(reason), reason),
    };
    stats::count(reason, len);
    action
}

/// [`finish`] for XDP: an early stop passes or drops as [`action_for`] says.
#[inline(always)]
pub(crate) fn finish_xdp(len: u32, result: Result<XdpVerdict, Reason>) -> u32 {
    let (action, reason) = match result {
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
