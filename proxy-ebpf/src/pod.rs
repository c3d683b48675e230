//! The pipelines of the pod-facing TC programs:
//! parse -> service lookup -> conntrack -> pick backend -> rewrite.

use aya_ebpf::programs::TcContext;
use proxy_common::{
    CT_DIR_SERVICE, CT_F_SNAT, FRAG_DIR_REVNAT_SRC, HAIRPIN_ADDR_DEFAULT, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, NODE4_HAIRPIN_KEY, Reason, SNAT_PORT_MIN, SVC_FLAG_LOCAL_ONLY,
    SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SvcValue,
};

use crate::{
    ct4::{ct4_get, ct4_lookup_reply, ct4_lookup_service, now, reply_key, service_key},
    frag4::{frag4_record, frag4_translate},
    lb4::{lb4_is_vip, lb4_lookup, lb4_lookup_internal, lb4_select, lb4_source_allowed},
    maps::NODE4,
    nat4::{End, nat4_rewrite, nat4_rewrite_addr, replace2, replace4},
    packet::Packet,
    parse::{self, IPV4_HLEN, Ipv4Hdr, L4, L4_OFF, Transport, UdpHdr},
    reject4::{bounce, reject4},
    snat4::{NODE_PORTS, open_from_client, snat4_lookup_rev, snat4_open},
    verdict::{Verdict, pass},
};

/// A packet from a pod: DNAT when it is addressed to a service.
#[inline(always)]
pub(crate) fn try_ingress(ctx: &TcContext) -> Result<Verdict, Reason> {
    let ip = parse::l3(ctx)?;
    let l4 = match parse::transport(ctx, &ip)? {
        Transport::Ports(l4) => l4,
        Transport::LaterFragment => return frag4_translate(ctx, &ip, CT_DIR_SERVICE, End::Dst),
        Transport::Other => {
            let reason = if lb4_is_vip(ip.daddr) {
                Reason::PassOtherProtocol
            } else {
                Reason::PassNotService
            };
            return Ok(pass(reason));
        }
    };
    let Some(mut svc) = lb4_lookup(ip.daddr, l4.dport, l4.proto) else {
        if lb4_is_vip(ip.daddr) {
            return reject4(ctx, &ip, &l4, Reason::RejectUnknownPort);
        }
        if let Some(v) = hairpin_reply(ctx, &ip, &l4)? {
            return Ok(v);
        }
        return Ok(pass(Reason::PassNotService));
    };
    // Pods reaching a load-balancer IP are held to its source ranges too,
    // as kube-proxy's firewall chain does for any source.
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !lb4_source_allowed(svc.svc_id, ip.saddr) {
        return Err(Reason::DropSourceRange);
    }
    if svc.flags & SVC_FLAG_TWO_SCOPES != 0 {
        // Pods of this node see the internal-scope backends (for example all
        // of them where outside clients see only local ones).
        svc = lb4_lookup_internal(ip.daddr, l4.dport, l4.proto)?;
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
    let (addr, port, src, reason) = match ct4_lookup_service(&key, &l4, now) {
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
            let (backend_id, backend) = lb4_select(&svc, ip.saddr, now)?;
            let (addr, port) = (backend.addr, backend.port);
            if addr == ip.saddr {
                // The pod reaches itself: it would drop a packet from its
                // own address, so the flow comes from the hairpin address.
                let h = hairpin_addr();
                let sport = snat4_open(&key, &svc, backend_id, &backend, &l4, now, h, NODE_PORTS)?;
                (addr, port, (h, sport), Reason::DnatNewHairpin)
            } else {
                let (sport, remapped) =
                    open_from_client(&key, &svc, backend_id, &backend, &l4, now)?;
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
        frag4_record(&ip, CT_DIR_SERVICE, addr);
    }
    nat4_rewrite(ctx, End::Dst, ip.daddr, addr, &l4, port)?;
    if src != (ip.saddr, l4.sport) {
        nat4_rewrite(ctx, End::Src, ip.saddr, src.0, &l4, src.1)?;
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
fn no_backend(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4, svc: &SvcValue) -> Result<Verdict, Reason> {
    if svc.flags & SVC_FLAG_LOCAL_ONLY != 0 {
        return Err(Reason::DropNoLocalBackend);
    }
    reject4(ctx, ip, l4, Reason::RejectNoBackend)
}

/// The address hairpin flows come from: set by the agent, else the default.
#[inline(always)]
fn hairpin_addr() -> [u8; 4] {
    // SAFETY: copied at once.
    match unsafe { NODE4.get(NODE4_HAIRPIN_KEY).copied() } {
        Some(n) => n.addr,
        None => HAIRPIN_ADDR_DEFAULT,
    }
}

/// A pod's reply to a hairpin flow (to the hairpin address and a port of
/// the SNAT range): rewritten to come from the frontend and go to the
/// pod's own socket, and sent straight back to the pod.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4) -> Result<Option<Verdict>, Reason> {
    if l4.dport < SNAT_PORT_MIN {
        return Ok(None);
    }
    let key = reply_key(ip.saddr, ip.daddr, l4);
    let Some(client) = snat4_lookup_rev(&key) else {
        return Ok(None);
    };
    if client.addr != ip.saddr {
        // A reply to another pod whose port was remapped: its own veth
        // translates it on the way in.
        return Ok(None);
    }
    let Some(r) = ct4_lookup_reply(&key, l4, now()) else {
        return Ok(None);
    };
    nat4_rewrite(ctx, End::Dst, ip.daddr, r.client, l4, r.cport)?;
    nat4_rewrite(ctx, End::Src, ip.saddr, r.vip, l4, r.vport)?;
    bounce(ctx, Reason::RevnatHairpin).map(Some)
}

/// A packet to a pod: reverse NAT when it is a reply of a translated flow,
/// or an ICMP error about one.
#[inline(always)]
pub(crate) fn try_egress(ctx: &TcContext) -> Result<Verdict, Reason> {
    let ip = parse::l3(ctx)?;
    let l4 = match parse::transport(ctx, &ip)? {
        Transport::Ports(l4) => l4,
        Transport::LaterFragment => {
            return frag4_translate(ctx, &ip, FRAG_DIR_REVNAT_SRC, End::Src);
        }
        Transport::Other if ip.proto == IPPROTO_ICMP => return icmp_error(ctx, &ip),
        Transport::Other => return Ok(pass(Reason::PassNotService)),
    };
    let key = reply_key(ip.saddr, ip.daddr, &l4);
    let Some(r) = ct4_lookup_reply(&key, &l4, now()) else {
        return Ok(pass(Reason::PassNotService));
    };
    if ip.is_first_fragment() {
        frag4_record(&ip, FRAG_DIR_REVNAT_SRC, r.vip);
    }
    if (r.client, r.cport) != (ip.daddr, l4.dport) {
        // The client's port (or address) was remapped for this flow.
        nat4_rewrite(ctx, End::Dst, ip.daddr, r.client, &l4, r.cport)?;
    }
    nat4_rewrite(ctx, End::Src, ip.saddr, r.vip, &l4, r.vport)?;
    Ok(pass(if r.rst_ignored {
        Reason::RstOutOfWindow
    } else {
        Reason::RevnatReply
    }))
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// An ICMP error (destination unreachable, including fragmentation needed,
/// or time exceeded) quoting a packet the client sent to a backend: the
/// quoted packet is rewritten to what the client sent (to the VIP), and the
/// error's source too when the backend itself sent it. Without this the
/// client's stack would not match the error to its socket and path MTU
/// discovery would break.
#[inline(always)]
fn icmp_error(ctx: &TcContext, ip: &Ipv4Hdr) -> Result<Verdict, Reason> {
    let not_ours = Ok(pass(Reason::PassNotService));
    let Ok(icmp) = ctx.load::<IcmpHdr>(L4_OFF) else {
        return not_ours;
    };
    if icmp.ty != ICMP_DEST_UNREACH && icmp.ty != ICMP_TIME_EXCEEDED {
        return not_ours;
    }
    let in_ip_off = L4_OFF + 8;
    let in_l4_off = in_ip_off + IPV4_HLEN;
    let Ok(inner) = ctx.load::<Ipv4Hdr>(in_ip_off) else {
        return not_ours;
    };
    if inner.ihl() != 5 || (inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP) {
        return not_ours;
    }
    // The first 8 bytes of TCP and UDP both start with the ports.
    let Ok(ports) = ctx.load::<UdpHdr>(in_l4_off) else {
        return not_ours;
    };
    let quoted = L4 {
        proto: inner.proto,
        sport: u16::from_be_bytes(ports.dport),
        dport: u16::from_be_bytes(ports.sport),
        flags: 0,
        check: [0, 0],
        seq_raw: [0; 4],
        ack_raw: [0; 4],
        doff_raw: 0,
        ip_len_raw: [0; 2],
    };
    let key = reply_key(inner.daddr, inner.saddr, &quoted);
    let Some(e) = ct4_get(&key) else {
        return not_ours;
    };
    let icmp_csum = L4_OFF + 2;
    let in_ip_csum = in_ip_off + 10;
    let in_udp_csum = in_l4_off + 6;
    // The inner UDP checksum is in the quoted 8 bytes (the TCP one is not).
    let udp_sum = inner.proto == IPPROTO_UDP && ports.check != [0, 0];
    if e.flags & CT_F_SNAT != 0 {
        // The client's source port was remapped: quote the one it sent.
        let new = e.peer_port.to_be_bytes();
        if udp_sum {
            replace2(ctx, in_l4_off, ports.sport, new, &[icmp_csum, in_udp_csum])?;
        } else {
            replace2(ctx, in_l4_off, ports.sport, new, &[icmp_csum])?;
        }
    }
    if udp_sum {
        replace4(
            ctx,
            in_ip_off + 16,
            inner.daddr,
            e.nat_addr,
            &[in_ip_csum, icmp_csum, in_udp_csum],
        )?;
        replace2(
            ctx,
            in_l4_off + 2,
            ports.dport,
            e.nat_port.to_be_bytes(),
            &[icmp_csum, in_udp_csum],
        )?;
        // The inner UDP checksum just changed, and the ICMP checksum covers it.
        let new_udp: [u8; 2] = ctx.load(in_udp_csum).map_err(|_| Reason::DropRewrite)?;
        ctx.csum_replace2(icmp_csum, ports.check, new_udp)?;
    } else {
        replace4(
            ctx,
            in_ip_off + 16,
            inner.daddr,
            e.nat_addr,
            &[in_ip_csum, icmp_csum],
        )?;
        replace2(
            ctx,
            in_l4_off + 2,
            ports.dport,
            e.nat_port.to_be_bytes(),
            &[icmp_csum],
        )?;
    }
    // The inner IPv4 checksum changed too, and the ICMP checksum covers it.
    let new_ip: [u8; 2] = ctx.load(in_ip_csum).map_err(|_| Reason::DropRewrite)?;
    ctx.csum_replace2(icmp_csum, inner.check, new_ip)?;
    if ip.saddr == inner.daddr {
        nat4_rewrite_addr(ctx, End::Src, ip.saddr, e.nat_addr)?;
    }
    Ok(pass(Reason::RevnatIcmpError))
}
