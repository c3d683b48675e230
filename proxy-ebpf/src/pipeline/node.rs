//! The pipeline of XDP on node interfaces: traffic from outside the node.
//!
//! reply of an SNATed flow? -> reverse SNAT + reverse DNAT, back to the client
//! else: external frontend lookup -> source ranges -> conntrack -> pick
//! backend (policy, affinity) -> DNAT, plus SNAT when the backend is on
//! another node.
//!
//! Fragments: a translated first fragment records its address rewrites in
//! the family's fragment map (destination, and source when SNATed); later fragments
//! get the same rewrites (see `frag4.rs`).
//!
//! Every rewritten packet is passed to the kernel (`XDP_PASS`), which routes
//! it: to a local pod over the bridge, to another node, or back to the
//! client. This costs a trip through the stack per packet, but needs no
//! next-hop MAC: `bpf_fib_lookup` and `XDP_TX`/redirect would skip it
//! (later). A packet whose new source is the node's own address needs
//! `accept_local` on the interface, which the agent sets when it attaches.

use aya_ebpf::programs::XdpContext;
use proxy_common::{
    BACKEND_FLAG_LOCAL, CT_DIR_REPLY, CT_DIR_SERVICE, FRAG_DIR_REVSNAT_SRC, FRAG_DIR_SNAT_SRC,
    Reason, SNAT_PORT_MIN, SVC_FLAG_EXTERNAL, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT,
    SVC_FLAG_SOURCE_RANGES, SvcValue,
};

use super::{
    Addr, CtKey, Ip, NODE, apart,
    ct::{NewFlow, ReplyNat, ct_lookup_reply, ct_lookup_service, now, service_key},
    frag::{frag_lookup, frag_record},
    l3,
    lb::{lb_lookup, lb_select, lb_source_allowed},
    nat::{Dnat, End, nat_rewrite, nat_rewrite_addr},
    snat::{open_flow, rev_key},
};
use crate::{
    packet::Packet,
    parse::{self, L4, Transport},
    verdict::{XdpVerdict, finish_xdp, hand_over, handed_over, xdp_pass},
};

/// XDP of this family: [`try_xdp`], counted. Inlined into the program of
/// its family (IPv4: the attached program; IPv6: the one it tail-calls,
/// `svcnat_node_xdp6`; see `pod::ingress`).
#[inline(always)]
pub(crate) fn xdp(ctx: XdpContext) -> u32 {
    let len = ctx.len();
    finish_xdp(len, try_xdp(&ctx))
}

/// What the steps of the pipeline hand on to each other (as
/// `pod::Ingress`): the packet's header and L4 fields, its service, its
/// conntrack key, where it goes, the reply entry of an SNATed flow, and
/// the time.
pub(crate) struct Node {
    ip: Ip,
    l4: L4,
    svc: SvcValue,
    key: CtKey,
    d: Dnat,
    r: ReplyNat,
    now: u64,
}

/// Where [`classify`] hands a packet over to.
const TO_NEW_FLOW: u8 = 1;
const TO_DNAT: u8 = 2;

/// A packet arriving on a node interface. In steps run [`apart`] that do
/// not nest, as the pod pipeline: [`classify`] finds what the packet is
/// and finishes a reply itself ([`rev_snat`] inlined), else [`new_flow`]
/// (for a new flow) and [`dnat`] finish a client's packet. (With IPv6,
/// [`dnat`] inlined into [`classify`] too makes a frame over the 512-byte
/// stack: it stays a step of its own.)
#[inline(always)]
pub(crate) fn try_xdp(ctx: &XdpContext) -> Result<XdpVerdict, Reason> {
    let t: &mut Node = temp!(node);
    let found = apart(|| classify(ctx, t))?;
    let reason = match handed_over(found) {
        None => return Ok(found),
        Some(TO_NEW_FLOW) => apart(|| new_flow(ctx, t))?.1,
        Some(_) => found.1,
    };
    apart(|| dnat(ctx, t, reason))
}

/// The first step of [`try_xdp`]: parses the packet into `t`, looks up
/// whether it is a reply of an SNATed flow, its frontend and its flow,
/// and ends it or hands it over.
#[inline(always)]
fn classify(ctx: &XdpContext, t: &mut Node) -> Result<XdpVerdict, Reason> {
    t.ip = l3(ctx)?;
    let ip = &t.ip;
    t.l4 = match parse::transport(ctx, ip)? {
        Transport::Ports(l4) => l4,
        Transport::LaterFragment => return later_fragment(ctx, ip),
        Transport::Other => return Ok(xdp_pass(Reason::PassNotService)),
    };
    let l4 = &t.l4;
    if l4.dport >= SNAT_PORT_MIN {
        t.key = rev_key(ip.saddr, l4.sport, ip.daddr, l4.dport, l4.proto);
        if let Some(r) = ct_lookup_reply(&t.key, l4, now())
            && r.snat
        {
            t.r = r;
            return rev_snat(ctx, t);
        }
    }
    let Some(svc) = lb_lookup(ip.daddr, l4.dport, l4.proto) else {
        return Ok(xdp_pass(Reason::PassNotService));
    };
    t.svc = svc;
    let svc = &t.svc;
    if svc.flags & SVC_FLAG_EXTERNAL == 0 {
        // A cluster IP reached from outside: not ours to translate.
        return Ok(xdp_pass(Reason::PassNotService));
    }
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !lb_source_allowed(svc.svc_id, ip.saddr) {
        return Err(Reason::DropSourceRange);
    }
    // A SYN to a frontend without a usable endpoint opens a connection:
    // no flow to look for. Anything else looks for its flow first: an
    // established flow keeps its backend even when the service has no
    // usable endpoint any more. Without a usable entry the flow opens anew
    // below (UDP survives; the backend resets TCP).
    if svc.count == 0 && l4.is_syn_only() {
        return no_backend(svc);
    }
    t.now = now();
    t.key = service_key(ip.saddr, ip.daddr, l4);
    if let Some(f) = ct_lookup_service(&t.key, l4, t.now) {
        let reason = if f.rst_ignored {
            Reason::RstOutOfWindow
        } else if f.peer.0 == ip.saddr {
            Reason::DnatEstablished
        } else {
            Reason::SnatEstablished
        };
        t.d = Dnat {
            addr: f.addr,
            port: f.port,
            src: f.peer,
        };
        return Ok(hand_over(TO_DNAT, reason));
    }
    if l4.is_tcp() && !l4.is_syn_only() {
        // Only a SYN opens a TCP flow from outside: a segment of no known
        // flow is dropped, so that a flood of made-up segments creates no
        // conntrack entries (the node has no socket here and would only
        // answer each with a RST).
        return Err(Reason::DropTcpNoFlow);
    }
    if svc.count == 0 {
        return no_backend(svc);
    }
    Ok(hand_over(TO_NEW_FLOW, Reason::DnatNew))
}

/// Opens a new flow from an outside client (`t.key`) to a backend of
/// `t.svc` chosen for it, and writes where the packet goes to `t.d`: to a
/// local backend from the client itself (its port remapped on a clash),
/// to a remote one from this node (SNAT). The verdict's reason is how the
/// flow was opened. Run [`apart`].
#[inline(always)]
fn new_flow(ctx: &XdpContext, t: &mut Node) -> Result<XdpVerdict, Reason> {
    let Node {
        ip,
        l4,
        svc,
        key,
        d,
        now,
        ..
    } = t;
    let (ip, key, svc, l4, now) = (&*ip, &*key, &*svc, &*l4, *now);
    let (backend_id, backend) = lb_select(svc, ip.saddr, now)?;
    let flow = NewFlow {
        key,
        svc,
        backend_id,
        backend: &backend,
        l4,
        now,
    };
    let local = backend.flags & BACKEND_FLAG_LOCAL != 0;
    let node;
    let via = if local {
        None
    } else {
        node = node_addr(ctx, ip, svc)?;
        Some(&node)
    };
    let (src, moved) = open_flow(&flow, via)?;
    d.addr = backend.addr;
    d.port = backend.port;
    d.src = src;
    Ok(xdp_pass(if !local {
        Reason::SnatNew
    } else if moved {
        Reason::DnatNewPortRemapped
    } else {
        Reason::DnatNew
    }))
}

/// Rewrites a client's packet to where it goes (`t.d`), counted under
/// `reason`. Run [`apart`].
#[inline(always)]
fn dnat(ctx: &XdpContext, t: &Node, reason: Reason) -> Result<XdpVerdict, Reason> {
    let Node { ip, l4, d, .. } = t;
    record(ip, &d.addr, &d.src.0);
    nat_rewrite(ctx, End::Dst, &ip.daddr, &d.addr, l4, d.port)?;
    if d.src.0 != ip.saddr || d.src.1 != l4.sport {
        nat_rewrite(ctx, End::Src, &ip.saddr, &d.src.0, l4, d.src.1)?;
    }
    Ok(xdp_pass(reason))
}

/// A new flow to a frontend without a usable endpoint: with a traffic
/// policy Local dropped (as kube-proxy does), else passed to the stack,
/// which answers a node address with RST / port unreachable.
#[inline(always)]
fn no_backend(svc: &SvcValue) -> Result<XdpVerdict, Reason> {
    if svc.flags & SVC_FLAG_LOCAL_ONLY != 0 {
        return Err(Reason::DropNoLocalBackend);
    }
    Ok(xdp_pass(Reason::PassNoBackend))
}

/// The address SNATed flows leave with: the node port's own address (a node
/// address the client already talks to), else the address of the interface
/// the packet came in on.
#[inline(always)]
fn node_addr(ctx: &XdpContext, ip: &Ip, svc: &SvcValue) -> Result<Addr, Reason> {
    if svc.flags & SVC_FLAG_NODE_PORT != 0 {
        return Ok(ip.daddr);
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: copied at once.
    match unsafe { NODE.get(ifindex).copied() } {
        Some(n) => Ok(n.addr),
        None => Err(Reason::DropSnatPorts),
    }
}

/// A backend's reply to an SNATed flow (`t.r`: what its conntrack entry
/// says): destination back to the client's address and port, source back
/// to the frontend. Inlined into [`classify`].
#[inline(always)]
fn rev_snat(ctx: &XdpContext, t: &Node) -> Result<XdpVerdict, Reason> {
    let Node { ip, l4, r, .. } = t;
    if ip.is_first_fragment() {
        frag_record(ip, CT_DIR_REPLY, r.client);
        frag_record(ip, FRAG_DIR_REVSNAT_SRC, r.vip);
    }
    nat_rewrite(ctx, End::Dst, &ip.daddr, &r.client, l4, r.cport)?;
    nat_rewrite(ctx, End::Src, &ip.saddr, &r.vip, l4, r.vport)?;
    Ok(xdp_pass(if r.rst_ignored {
        Reason::RstOutOfWindow
    } else {
        Reason::RevsnatReply
    }))
}

/// For the first fragment of a datagram translated here: where its later
/// fragments go (`dst`), and where they come from when that changed
/// (`src`, SNAT).
#[inline(always)]
fn record(ip: &Ip, dst: &Addr, src: &Addr) {
    if !ip.is_first_fragment() {
        return;
    }
    frag_record(ip, CT_DIR_SERVICE, *dst);
    if *src != ip.saddr {
        frag_record(ip, FRAG_DIR_SNAT_SRC, *src);
    }
}

/// A later fragment (no L4 header): the address rewrites its first fragment
/// got, recorded under the datagram's (source, destination, protocol, id);
/// untracked (passed, counted) when the first one was not translated here
/// or has not arrived yet.
#[inline(always)]
fn later_fragment(ctx: &XdpContext, ip: &Ip) -> Result<XdpVerdict, Reason> {
    let (dst, src) = if let Some(d) = frag_lookup(ip, CT_DIR_SERVICE) {
        (d, frag_lookup(ip, FRAG_DIR_SNAT_SRC))
    } else if let Some(d) = frag_lookup(ip, CT_DIR_REPLY) {
        (d, frag_lookup(ip, FRAG_DIR_REVSNAT_SRC))
    } else {
        return Ok(xdp_pass(Reason::PassFragmentUntracked));
    };
    nat_rewrite_addr(ctx, End::Dst, ip.daddr, dst)?;
    if let Some(s) = src {
        nat_rewrite_addr(ctx, End::Src, ip.saddr, s)?;
    }
    Ok(xdp_pass(Reason::NatFragment))
}
