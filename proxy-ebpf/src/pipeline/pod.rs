//! The pipelines of the pod-facing TC programs:
//! parse -> service lookup -> conntrack -> pick backend -> rewrite.

use aya_ebpf::programs::TcContext;
use proxy_common::{
    CT_DIR_SERVICE, FRAG_DIR_REVNAT_SRC, Reason, SNAT_PORT_MIN, SVC_FLAG_LOCAL_ONLY,
    SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SvcValue,
};

use super::{
    Addr, HAIRPIN_DEFAULT, HAIRPIN_KEY, Ip, NODE,
    ct::{NewFlow, ct_lookup_reply, ct_lookup_service, now, reply_key, service_key},
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
    verdict::{Verdict, pass},
};

/// A packet from a pod: DNAT when it is addressed to a service.
#[inline(always)]
pub(crate) fn try_ingress(ctx: &TcContext) -> Result<Verdict, Reason> {
    let ip = l3(ctx)?;
    let l4 = match parse::transport(ctx, &ip)? {
        Transport::Ports(l4) => l4,
        Transport::LaterFragment => return frag_translate(ctx, &ip, CT_DIR_SERVICE, End::Dst),
        Transport::Other => {
            let reason = if lb_is_vip(ip.daddr) {
                Reason::PassOtherProtocol
            } else {
                Reason::PassNotService
            };
            return Ok(pass(reason));
        }
    };
    let Some(mut svc) = lb_lookup(ip.daddr, l4.dport, l4.proto) else {
        if lb_is_vip(ip.daddr) {
            return reject(ctx, &ip, &l4, Reason::RejectUnknownPort);
        }
        if let Some(v) = hairpin_reply(ctx, &ip, &l4)? {
            return Ok(v);
        }
        return Ok(pass(Reason::PassNotService));
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
        return no_backend(ctx, &ip, &l4, &svc);
    }
    let now = now();
    let key = service_key(ip.saddr, ip.daddr, &l4);
    let (addr, port, src, reason) = match ct_lookup_service(&key, &l4, now) {
        Some(f) => {
            let reason = if f.rst_ignored {
                Reason::RstOutOfWindow
            } else {
                Reason::DnatEstablished
            };
            (f.addr, f.port, f.peer, reason)
        }
        None => {
            if svc.count == 0 {
                return no_backend(ctx, &ip, &l4, &svc);
            }
            let (backend_id, backend) = lb_select(&svc, ip.saddr, now)?;
            let (addr, port) = (backend.addr, backend.port);
            let flow = NewFlow {
                key: &key,
                svc: &svc,
                backend_id,
                backend: &backend,
                l4: &l4,
                now,
            };
            if addr == ip.saddr {
                // The pod reaches itself: it would drop a packet from its
                // own address, so the flow comes from the hairpin address.
                let h = hairpin_addr();
                let sport = snat_open(&flow, &h, NODE_PORTS)?;
                (addr, port, (h, sport), Reason::DnatNewHairpin)
            } else {
                let (sport, remapped) = open_from_client(&flow)?;
                let reason = if remapped {
                    Reason::DnatNewPortRemapped
                } else {
                    Reason::DnatNew
                };
                (addr, port, (ip.saddr, sport), reason)
            }
        }
    };
    if ip.is_first_fragment() {
        frag_record(&ip, CT_DIR_SERVICE, addr);
    }
    nat_rewrite(ctx, End::Dst, ip.daddr, addr, &l4, port)?;
    if src != (ip.saddr, l4.sport) {
        nat_rewrite(ctx, End::Src, ip.saddr, src.0, &l4, src.1)?;
    }
    if addr == ip.saddr {
        // Straight back to the pod: no trip through the node's routing,
        // whose reverse-path filter would not know the hairpin address.
        return bounce(ctx, reason);
    }
    Ok(pass(reason))
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
/// pod's own socket, and sent straight back to the pod.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, ip: &Ip, l4: &L4) -> Result<Option<Verdict>, Reason> {
    if l4.dport < SNAT_PORT_MIN {
        return Ok(None);
    }
    let key = reply_key(ip.saddr, ip.daddr, l4);
    let Some(client) = snat_lookup_rev(&key) else {
        return Ok(None);
    };
    if client.addr != ip.saddr {
        // A reply to another pod whose port was remapped: its own veth
        // translates it on the way in.
        return Ok(None);
    }
    let Some(r) = ct_lookup_reply(&key, l4, now()) else {
        return Ok(None);
    };
    nat_rewrite(ctx, End::Dst, ip.daddr, r.client, l4, r.cport)?;
    nat_rewrite(ctx, End::Src, ip.saddr, r.vip, l4, r.vport)?;
    bounce(ctx, Reason::RevnatHairpin).map(Some)
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
        nat_rewrite(ctx, End::Dst, ip.daddr, r.client, &l4, r.cport)?;
    }
    nat_rewrite(ctx, End::Src, ip.saddr, r.vip, &l4, r.vport)?;
    Ok(pass(if r.rst_ignored {
        Reason::RstOutOfWindow
    } else {
        Reason::RevnatReply
    }))
}
