//! The pipelines of the pod-facing TC programs:
//! parse -> service lookup -> conntrack -> pick backend -> rewrite.

use aya_ebpf::programs::TcContext;
use proxy_common::{
    CT_DIR_SERVICE, FRAG_DIR_REVNAT_SRC, Reason, SNAT_PORT_MIN, SVC_FLAG_LOCAL_ONLY,
    SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SvcValue,
};

use super::{
    Addr, CtKey, HAIRPIN_DEFAULT, HAIRPIN_KEY, Ip, NODE, apart,
    ct::{AddrPort, NewFlow, ct_lookup_reply, ct_lookup_service, now, reply_key, service_key},
    frag::{frag_record, frag_translate},
    icmp_error, l3,
    lb::{lb_is_vip, lb_lookup, lb_lookup_internal, lb_select, lb_source_allowed},
    nat::{End, nat_rewrite},
    reject,
    snat::{NODE_PORTS, open_from_client, snat_lookup_rev, snat_open},
};
use crate::{
    bounce::bounce,
    parse::{self, L4, Transport},
    verdict::{Verdict, finish, pack, pass, unpack},
};

/// TC ingress of this family: [`try_ingress`], counted. A function of its
/// own (not inlined into the entry point), so that each family's pipeline
/// has its own stack frame.
#[inline(never)]
pub(crate) fn ingress(ctx: TcContext) -> i32 {
    finish(ctx.len(), try_ingress(&ctx))
}

/// TC egress of this family: [`try_egress`], counted (see [`ingress`]).
#[inline(never)]
pub(crate) fn egress(ctx: TcContext) -> i32 {
    finish(ctx.len(), try_egress(&ctx))
}

/// A packet from a pod: DNAT when it is addressed to a service.
#[inline(always)]
pub(crate) fn try_ingress(ctx: &TcContext) -> Result<Verdict, Reason> {
    // The header, the L4 fields, the conntrack key and where the packet
    // goes are the family's temporaries (with IPv6 in its scratch space,
    // see `temp!`), so that the steps run apart fit beside this frame.
    let ip: &Ip = temp!(ip, l3(ctx)?);
    let l4 = match parse::transport(ctx, ip)? {
        Transport::Ports(l4) => l4,
        Transport::LaterFragment => return frag_translate(ctx, ip, CT_DIR_SERVICE, End::Dst),
        Transport::Other => {
            let reason = if lb_is_vip(ip.daddr) {
                Reason::PassOtherProtocol
            } else {
                Reason::PassNotService
            };
            return Ok(pass(reason));
        }
    };
    let l4: &L4 = temp!(l4, l4);
    let Some(mut svc) = lb_lookup(ip.daddr, l4.dport, l4.proto) else {
        if lb_is_vip(ip.daddr) {
            return reject(ctx, ip, l4, Reason::RejectUnknownPort);
        }
        return unpack(apart(&mut || pack(hairpin_reply(ctx, ip, l4))));
    };
    // Pods reaching a load-balancer IP are held to its source ranges too,
    // as kube-proxy's firewall chain does for any source.
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !lb_source_allowed(svc.svc_id, ip.saddr) {
        return Err(Reason::DropSourceRange);
    }
    if svc.flags & SVC_FLAG_TWO_SCOPES != 0 {
        // Pods of this node see the internal-scope backends (for example all
        // of them where outside clients see only local ones).
        svc = lb_lookup_internal(ip.daddr, l4.dport, l4.proto)?;
    }
    // A SYN to a service without a usable endpoint opens a connection:
    // refused at once. Anything else looks for its flow first: a flow that
    // is established keeps its backend even when the service has no usable
    // endpoint any more (kube-proxy rejects only new connections).
    if svc.count == 0 && l4.is_syn_only() {
        return no_backend(ctx, ip, l4, &svc);
    }
    let now = now();
    let key: &CtKey = temp!(ct_key, service_key(ip.saddr, ip.daddr, l4));
    let d = temp!(
        dnat,
        Dnat {
            addr: ip.daddr,
            port: l4.dport,
            src: (ip.saddr, l4.sport),
        }
    );
    let reason = match ct_lookup_service(key, l4, now) {
        Some(f) => {
            d.addr = f.addr;
            d.port = f.port;
            d.src = f.peer;
            if f.rst_ignored {
                Reason::RstOutOfWindow
            } else {
                Reason::DnatEstablished
            }
        }
        None => {
            if svc.count == 0 {
                return no_backend(ctx, ip, l4, &svc);
            }
            let opened = apart(&mut || pack(new_flow(key, &svc, l4, now, d)));
            unpack(opened)?.1
        }
    };
    unpack(apart(&mut || pack(dnat(ctx, ip, l4, d, reason))))
}

/// Rewrites a client's packet to where it goes (`d`), counted under
/// `reason`. Run [`apart`] (see [`new_flow`]).
#[inline(always)]
fn dnat(ctx: &TcContext, ip: &Ip, l4: &L4, d: &Dnat, reason: Reason) -> Result<Verdict, Reason> {
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

/// Where a client's packet goes: the backend, and the source the backend
/// sees (the client's own unless source-NATed).
pub(crate) struct Dnat {
    pub(crate) addr: Addr,
    pub(crate) port: u16,
    pub(crate) src: AddrPort,
}

/// Opens a new flow from a client (`key`) to a backend of `svc` chosen
/// for it and writes where the packet goes to `d`; the verdict's reason is
/// how the flow was opened. Run [`apart`]: with IPv6 its frame (the
/// conntrack entries it builds) does not fit beside the pipeline's.
#[inline(always)]
fn new_flow(
    key: &CtKey,
    svc: &SvcValue,
    l4: &L4,
    now: u64,
    d: &mut Dnat,
) -> Result<Verdict, Reason> {
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
    if backend.addr == key.saddr {
        // The pod reaches itself: it would drop a packet from its own
        // address, so the flow comes from the hairpin address.
        let h = hairpin_addr();
        let sport = snat_open(&flow, &h, NODE_PORTS)?;
        d.src = (h, sport);
        return Ok(pass(Reason::DnatNewHairpin));
    }
    let (sport, remapped) = open_from_client(&flow)?;
    d.src = (key.saddr, sport);
    Ok(pass(if remapped {
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
/// passed as not a service. Run [`apart`] (see [`new_flow`]).
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, ip: &Ip, l4: &L4) -> Result<Verdict, Reason> {
    let not_hairpin = Ok(pass(Reason::PassNotService));
    if l4.dport < SNAT_PORT_MIN {
        return not_hairpin;
    }
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

/// A packet to a pod: reverse NAT when it is a reply of a translated flow,
/// or an ICMP error about one (the family's `icmp_error`).
#[inline(always)]
pub(crate) fn try_egress(ctx: &TcContext) -> Result<Verdict, Reason> {
    let ip = l3(ctx)?;
    let l4 = match parse::transport(ctx, &ip)? {
        Transport::Ports(l4) => l4,
        Transport::LaterFragment => {
            return frag_translate(ctx, &ip, FRAG_DIR_REVNAT_SRC, End::Src);
        }
        Transport::Other if ip.is_icmp() => return icmp_error(ctx, &ip),
        Transport::Other => return Ok(pass(Reason::PassNotService)),
    };
    let key = reply_key(ip.saddr, ip.daddr, &l4);
    let Some(r) = ct_lookup_reply(&key, &l4, now()) else {
        return Ok(pass(Reason::PassNotService));
    };
    if ip.is_first_fragment() {
        frag_record(&ip, FRAG_DIR_REVNAT_SRC, r.vip);
    }
    if (r.client, r.cport) != (ip.daddr, l4.dport) {
        // The client's port (or address) was remapped for this flow.
        nat_rewrite(ctx, End::Dst, &ip.daddr, &r.client, &l4, r.cport)?;
    }
    nat_rewrite(ctx, End::Src, &ip.saddr, &r.vip, &l4, r.vport)?;
    Ok(pass(if r.rst_ignored {
        Reason::RstOutOfWindow
    } else {
        Reason::RevnatReply
    }))
}
