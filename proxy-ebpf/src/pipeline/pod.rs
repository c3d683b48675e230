//! The pipelines of the pod-facing TC programs:
//! parse -> service lookup -> conntrack -> pick backend -> rewrite.

use aya_ebpf::programs::TcContext;
use proxy_common::{
    CT_DIR_SERVICE, FRAG_DIR_REVNAT_SRC, Reason, SNAT_PORT_MIN, SVC_FLAG_LOCAL_ONLY,
    SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SvcValue,
};

use super::{
    Addr, CtKey, HAIRPIN_DEFAULT, HAIRPIN_KEY, Ip, NODE, apart,
    ct::{NewFlow, ReplyNat, ct_lookup_reply, ct_lookup_service, now, reply_key, service_key},
    frag::{frag_record, frag_translate},
    icmp_error, l3,
    lb::{
        lb_in_service_cidr, lb_is_vip, lb_lookup, lb_lookup_internal, lb_select, lb_source_allowed,
    },
    nat::{Dnat, End, nat_rewrite},
    reject,
    snat::{open_flow, snat_lookup_rev},
};
use crate::{
    bounce::bounce,
    parse::{self, L4, Transport},
    verdict::{Verdict, finish, hand_over, handed_over, pass},
};

/// TC ingress of this family: [`try_ingress`], counted. Inlined into
/// the program of its family (IPv4: the attached program; IPv6: the one
/// the attached program tail-calls, `svcnat_pod_ingress6`), so that each
/// family's pipeline has a program and a 512-byte stack of its own and
/// IPv4 pays no call for IPv6.
#[inline(always)]
pub(crate) fn ingress(ctx: TcContext) -> i32 {
    finish(ctx.len(), try_ingress(&ctx))
}

/// TC egress of this family: [`try_egress`], counted (see [`ingress`]).
#[inline(always)]
pub(crate) fn egress(ctx: TcContext) -> i32 {
    finish(ctx.len(), try_egress(&ctx))
}

/// What the steps of the ingress pipeline hand on to each other: the
/// packet's header and L4 fields, its service, its conntrack key, where
/// it goes, and the time. One of the family's temporaries (`temp!`: with
/// IPv6 in its scratch space, so that the steps, each a frame of its own
/// there, do not copy it).
pub(crate) struct Ingress {
    ip: Ip,
    l4: L4,
    svc: SvcValue,
    key: CtKey,
    d: Dnat,
    now: u64,
}

/// Where [`classify`] hands a packet over to.
const TO_REJECT: u8 = 1;
const TO_NO_BACKEND: u8 = 2;
const TO_HAIRPIN: u8 = 3;
const TO_NEW_FLOW: u8 = 4;

/// A packet from a pod: DNAT when it is addressed to a service.
///
/// In steps run [`apart`] that do not nest: [`classify`] finds what the
/// packet is and finishes the packet of an established flow itself (with
/// [`dnat`] inlined: the hot path is one step), else one of the rejects,
/// [`hairpin_reply`], or [`new_flow`] and [`dnat`] finishes it. (IPv6
/// needs the steps' frames apart: together they do not fit the 512-byte
/// BPF stack. IPv4 inlines them all.)
#[inline(always)]
pub(crate) fn try_ingress(ctx: &TcContext) -> Result<Verdict, Reason> {
    let t: &mut Ingress = temp!(ingress);
    let found = apart(|| classify(ctx, t))?;
    let Some(next) = handed_over(found) else {
        return Ok(found);
    };
    let reason = found.1;
    match next {
        TO_REJECT => reject(ctx, &t.ip, &t.l4, reason),
        TO_NO_BACKEND => no_backend(ctx, &t.ip, &t.l4, &t.svc),
        TO_HAIRPIN => apart(|| hairpin_reply(ctx, &t.ip, &t.l4)),
        _ => {
            let reason = apart(|| new_flow(t))?.1;
            apart(|| dnat(ctx, t, reason))
        }
    }
}

/// The first step of [`try_ingress`]: parses the packet into `t`, looks
/// its service and its flow up, and ends it (an established flow's packet
/// by [`dnat`]) or hands it over to the step that does (see
/// [`hand_over`]).
#[inline(always)]
fn classify(ctx: &TcContext, t: &mut Ingress) -> Result<Verdict, Reason> {
    t.ip = l3(ctx)?;
    let ip = &t.ip;
    t.l4 = match parse::transport(ctx, ip)? {
        Transport::Ports(l4) => l4,
        Transport::LaterFragment => return frag_translate(ctx, ip, CT_DIR_SERVICE, End::Dst),
        Transport::Other => {
            if lb_is_vip(ip.daddr) {
                return Ok(pass(Reason::PassOtherProtocol));
            }
            if lb_in_service_cidr(ip.daddr) {
                return Err(Reason::DropUnallocatedServiceIp);
            }
            return Ok(pass(Reason::PassNotService));
        }
    };
    let l4 = &t.l4;
    let Some(svc) = lb_lookup(ip.daddr, l4.dport, l4.proto) else {
        if lb_is_vip(ip.daddr) {
            return Ok(hand_over(TO_REJECT, Reason::RejectUnknownPort));
        }
        // An address of a service CIDR that no Service holds: dropped,
        // as kube-proxy's nftables mode does, rather than sent to the
        // default route. Not rejected: a client retries a dropped SYN,
        // and reaches a Service created a moment ago once it is
        // programmed.
        if lb_in_service_cidr(ip.daddr) {
            return Err(Reason::DropUnallocatedServiceIp);
        }
        if l4.dport < SNAT_PORT_MIN {
            // Not to a port hairpin flows come from: not a reply of one.
            return Ok(pass(Reason::PassNotService));
        }
        return Ok(hand_over(TO_HAIRPIN, Reason::PassNotService));
    };
    t.svc = svc;
    // Pods reaching a load-balancer IP are held to its source ranges too,
    // as kube-proxy's firewall chain does for any source.
    if t.svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !lb_source_allowed(t.svc.svc_id, ip.saddr) {
        return Err(Reason::DropSourceRange);
    }
    if t.svc.flags & SVC_FLAG_TWO_SCOPES != 0 {
        // Pods of this node see the internal-scope backends (for example all
        // of them where outside clients see only local ones).
        t.svc = lb_lookup_internal(ip.daddr, l4.dport, l4.proto)?;
    }
    // A SYN to a service without a usable endpoint opens a connection:
    // refused at once. Anything else looks for its flow first: a flow that
    // is established keeps its backend even when the service has no usable
    // endpoint any more (kube-proxy rejects only new connections).
    if t.svc.count == 0 && l4.is_syn_only() {
        return Ok(hand_over(TO_NO_BACKEND, Reason::RejectNoBackend));
    }
    t.now = now();
    t.key = service_key(ip.saddr, ip.daddr, l4);
    let Some(f) = ct_lookup_service(&t.key, l4, t.now) else {
        if t.svc.count == 0 {
            return Ok(hand_over(TO_NO_BACKEND, Reason::RejectNoBackend));
        }
        return Ok(hand_over(TO_NEW_FLOW, Reason::DnatNew));
    };
    t.d = Dnat {
        addr: f.addr,
        port: f.port,
        src: f.peer,
    };
    // An established flow ends here, in this step (with IPv6 one frame
    // and no second step to call on the hot path).
    dnat(
        ctx,
        t,
        if f.rst_ignored {
            Reason::RstOutOfWindow
        } else {
            Reason::DnatEstablished
        },
    )
}

/// Rewrites a client's packet to where it goes (`d`), counted under
/// `reason`. Inlined into [`classify`] for established flows, run
/// [`apart`] after [`new_flow`] for new ones.
#[inline(always)]
fn dnat(ctx: &TcContext, t: &Ingress, reason: Reason) -> Result<Verdict, Reason> {
    let Ingress { ip, l4, d, .. } = t;
    if ip.is_first_fragment() {
        frag_record(ip, CT_DIR_SERVICE, d.addr);
    }
    nat_rewrite(ctx, End::Dst, &ip.daddr, &d.addr, l4, d.port)?;
    if d.src.0 != ip.saddr || d.src.1 != l4.sport {
        nat_rewrite(ctx, End::Src, &ip.saddr, &d.src.0, l4, d.src.1)?;
    }
    if d.addr == ip.saddr {
        // Straight back to the pod: no trip through the node's routing,
        // whose reverse-path filter would not know the hairpin address.
        return bounce(ctx, reason);
    }
    Ok(pass(reason))
}

/// Opens a new flow from a client (`key`) to a backend of `svc` chosen
/// for it and writes where the packet goes to `d`; the verdict's reason is
/// how the flow was opened. Run [`apart`]: with IPv6 its frame (the
/// conntrack entries it builds) does not fit beside the pipeline's.
#[inline(always)]
fn new_flow(t: &mut Ingress) -> Result<Verdict, Reason> {
    let Ingress {
        l4,
        svc,
        key,
        d,
        now,
        ..
    } = t;
    let (key, svc, l4, now) = (&*key, &*svc, &*l4, *now);
    let (backend_id, backend) = lb_select(svc, key.saddr, now)?;
    let flow = NewFlow {
        key,
        svc,
        backend_id,
        backend: &backend,
        l4,
        now,
    };
    d.addr = backend.addr;
    d.port = backend.port;
    // The pod reaching itself would drop a packet from its own address:
    // that flow comes from the hairpin address.
    let hairpin = backend.addr == key.saddr;
    let h;
    let via = if hairpin {
        h = hairpin_addr();
        Some(&h)
    } else {
        None
    };
    let (src, moved) = open_flow(&flow, via)?;
    d.src = src;
    Ok(pass(if hairpin {
        Reason::DnatNewHairpin
    } else if moved {
        Reason::DnatNewPortRemapped
    } else {
        Reason::DnatNew
    }))
}

/// A new flow to a service without a usable endpoint: rejected, as
/// kube-proxy does; with a traffic policy Local (no local endpoint) dropped
/// instead, as kube-proxy does too.
#[inline(always)]
fn no_backend(ctx: &TcContext, ip: &Ip, l4: &L4, svc: &SvcValue) -> Result<Verdict, Reason> {
    if svc.flags & SVC_FLAG_LOCAL_ONLY != 0 {
        return Err(Reason::DropNoLocalBackend);
    }
    reject(ctx, ip, l4, Reason::RejectNoBackend)
}

/// The address hairpin flows come from: set by the agent, else the default.
#[inline(always)]
fn hairpin_addr() -> Addr {
    // SAFETY: copied at once.
    match unsafe { NODE.get(HAIRPIN_KEY).copied() } {
        Some(n) => n.addr,
        None => HAIRPIN_DEFAULT,
    }
}

/// A pod's reply to a hairpin flow (to the hairpin address and a port of
/// the SNAT range): rewritten to come from the frontend and go to the
/// pod's own socket, and sent straight back to the pod; anything else
/// passed as not a service. Run [`apart`] (see [`new_flow`]), for packets
/// to a port of the SNAT range only ([`classify`] passes the others).
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, ip: &Ip, l4: &L4) -> Result<Verdict, Reason> {
    let not_hairpin = Ok(pass(Reason::PassNotService));
    let key = reply_key(ip.saddr, ip.daddr, l4);
    let Some(client) = snat_lookup_rev(&key) else {
        return not_hairpin;
    };
    if client.addr != ip.saddr {
        // A reply to another pod whose port was remapped: its own veth
        // translates it on the way in.
        return not_hairpin;
    }
    let Some(r) = ct_lookup_reply(&key, l4, now()) else {
        return not_hairpin;
    };
    nat_rewrite(ctx, End::Dst, &ip.daddr, &r.client, l4, r.cport)?;
    nat_rewrite(ctx, End::Src, &ip.saddr, &r.vip, l4, r.vport)?;
    bounce(ctx, Reason::RevnatHairpin)
}

/// What the steps of the egress pipeline hand on to each other (as
/// [`Ingress`]): the packet's header and L4 fields, and what its reply
/// entry says.
pub(crate) struct Egress {
    ip: Ip,
    l4: L4,
    key: CtKey,
    r: ReplyNat,
}

/// Where [`classify_reply`] hands a packet over to.
const TO_ICMP: u8 = 1;

/// A packet to a pod: reverse NAT when it is a reply of a translated flow,
/// or an ICMP error about one (the family's `icmp_error`). In steps that
/// do not nest, as [`try_ingress`]: [`classify_reply`] finishes a reply
/// itself ([`revnat`] inlined), the ICMP errors are a step of their own.
#[inline(always)]
pub(crate) fn try_egress(ctx: &TcContext) -> Result<Verdict, Reason> {
    let t: &mut Egress = temp!(egress);
    let found = apart(|| classify_reply(ctx, t))?;
    match handed_over(found) {
        None => Ok(found),
        Some(_) => icmp_error(ctx, &t.ip),
    }
}

/// The first step of [`try_egress`]: parses the packet into `t`, looks
/// its reply entry up and rewrites a reply ([`revnat`]), or hands an ICMP
/// error over.
#[inline(always)]
fn classify_reply(ctx: &TcContext, t: &mut Egress) -> Result<Verdict, Reason> {
    t.ip = l3(ctx)?;
    let ip = &t.ip;
    t.l4 = match parse::transport(ctx, ip)? {
        Transport::Ports(l4) => l4,
        Transport::LaterFragment => {
            return frag_translate(ctx, ip, FRAG_DIR_REVNAT_SRC, End::Src);
        }
        Transport::Other if ip.is_icmp() => {
            return Ok(hand_over(TO_ICMP, Reason::RevnatIcmpError));
        }
        Transport::Other => return Ok(pass(Reason::PassNotService)),
    };
    t.key = reply_key(ip.saddr, ip.daddr, &t.l4);
    let Some(r) = ct_lookup_reply(&t.key, &t.l4, now()) else {
        return Ok(pass(Reason::PassNotService));
    };
    t.r = r;
    revnat(ctx, t)
}

/// Rewrites a reply (`t`) back to come from the frontend and go to the
/// client's own address and port. Inlined into [`classify_reply`].
#[inline(always)]
fn revnat(ctx: &TcContext, t: &Egress) -> Result<Verdict, Reason> {
    let Egress { ip, l4, r, .. } = t;
    if ip.is_first_fragment() {
        frag_record(ip, FRAG_DIR_REVNAT_SRC, r.vip);
    }
    if (r.client, r.cport) != (ip.daddr, l4.dport) {
        // The client's port (or address) was remapped for this flow.
        nat_rewrite(ctx, End::Dst, &ip.daddr, &r.client, l4, r.cport)?;
    }
    nat_rewrite(ctx, End::Src, &ip.saddr, &r.vip, l4, r.vport)?;
    Ok(pass(if r.rst_ignored {
        Reason::RstOutOfWindow
    } else {
        Reason::RevnatReply
    }))
}
