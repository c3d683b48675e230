//! The checks, one code for both families: of every packet's verdict and
//! output ([`check_output`], [`check_reject`], [`check_rewrite`]) and of the
//! maps ([`check_state`], [`config_dump`]).

use super::*;

/// Checks a program's verdict and output on `p` counted under `reason`.
pub fn check_output<F: Family>(
    allowed: &Allowed<F::Addr>,
    p: &Packet,
    reason: Reason,
    verdict: u32,
    out: &[u8],
) -> Result<(), String> {
    let xdp = p.prog == TcProgram::NodeXdp;
    let verdicts: &[u32] = if xdp {
        &[XDP_PASS, XDP_DROP, XDP_TX]
    } else {
        &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT, TC_ACT_UNSPEC]
    };
    if !verdicts.contains(&verdict) {
        return Err(format!("verdict {verdict} not one of {verdicts:?}"));
    }
    let name = reason.name();
    let passes: &[u32] = if xdp {
        &[XDP_PASS]
    } else {
        &[TC_ACT_OK, TC_ACT_UNSPEC]
    };
    let drops: &[u32] = if xdp { &[XDP_DROP] } else { &[TC_ACT_SHOT] };
    if name.starts_with("pass_") {
        if !passes.contains(&verdict) {
            return Err(format!("{name} with verdict {verdict}"));
        }
        if out != p.frame.as_slice() {
            return Err(format!("{name} changed the packet"));
        }
        return Ok(());
    }
    if name.starts_with("drop_") {
        if !drops.contains(&verdict) {
            return Err(format!("{name} with verdict {verdict}"));
        }
        return Ok(());
    }
    if name.starts_with("reject_") {
        return check_reject::<F>(p, name, verdict, drops, out);
    }
    // Translated (or left as is): passed on, or sent back / redirected.
    let ok: &[u32] = if xdp {
        &[XDP_PASS, XDP_TX]
    } else {
        &[TC_ACT_OK, TC_ACT_UNSPEC, TC_ACT_REDIRECT]
    };
    if !ok.contains(&verdict) {
        return Err(format!("{name} with verdict {verdict}"));
    }
    if out == p.frame.as_slice() {
        return Ok(());
    }
    check_rewrite::<F>(&p.frame, out).map_err(|e| format!("{name}: {e}"))?;
    if checksums_ok(&p.frame).is_ok() {
        checksums_ok(out).map_err(|e| format!("{name}: valid input, output {e}"))?;
    }
    if name.starts_with("dnat_new") || name == "snat_new" {
        let (Some((_, to, proto)), Some((_, from, _))) = (F::ends(&p.frame), F::ends(out)) else {
            return Ok(());
        };
        let backends = allowed.backends_of(F::ip(to), F::port(to), proto);
        if !backends.contains(&(F::ip(from), F::port(from))) {
            return Err(format!(
                "{name}: {to} sent to {from}, not one of its backends"
            ));
        }
    }
    if name == "revnat_reply" || name == "revsnat_reply" {
        let (Some((from, _, proto)), Some((vip, _, oproto))) = (F::ends(&p.frame), F::ends(out))
        else {
            return Ok(());
        };
        if !allowed.is_backend(F::ip(from), F::port(from), proto) {
            return Err(format!("{name}: reply from {from}, not a backend"));
        }
        if !allowed
            .frontends
            .contains(&(F::ip(vip), F::port(vip), oproto))
        {
            return Err(format!("{name}: reply now from {vip}, not a frontend"));
        }
    }
    Ok(())
}

/// A `reject_*` verdict: a RST is dropped, anything else answered with a
/// reply made from scratch (a TCP RST or a port unreachable) to the sender,
/// its own checksums right, quoting the input's header as it was.
pub fn check_reject<F: Family>(
    p: &Packet,
    name: &str,
    verdict: u32,
    drops: &[u32],
    out: &[u8],
) -> Result<(), String> {
    let xdp = p.prog == TcProgram::NodeXdp;
    // The flags as the datapath reads them: from the frame, even where
    // a length field says the header is cut.
    let (proto, l4) = F::l4_in_frame(&p.frame).ok_or(format!("{name} of a packet without IP"))?;
    let rst = proto == IPPROTO_TCP && p.frame.get(l4 + 13).is_some_and(|f| f & TCP_RST != 0);
    if drops.contains(&verdict) && rst {
        // A RST is never answered (RFC 793): dropped, counted so.
        return Ok(());
    }
    let bounced = if xdp { XDP_TX } else { TC_ACT_REDIRECT };
    if verdict != bounced {
        return Err(format!("{name} with verdict {verdict}"));
    }
    let (r, i) = (checksum_residues(out), checksum_residues(&p.frame));
    let mut own = vec![("layer 4", r.l4)];
    if F::HEADER_CHECKSUM {
        own.push(("IP header", r.ipv4));
    }
    for (what, c) in own {
        if !c.is_some_and(Residue::is_valid) {
            return Err(format!("{name} reply: {what} checksum {c:?}"));
        }
    }
    if r.inner_ipv4.is_some() && r.inner_ipv4 != i.ipv4 {
        return Err(format!(
            "{name} reply quotes a header with residue {:?}, the packet's was {:?}",
            r.inner_ipv4, i.ipv4
        ));
    }
    let (rproto, rl4) = F::l4_in_frame(out).ok_or(format!("{name} reply without IP"))?;
    let icmp = <F::Ip as IpFamily>::ICMP_PROTO;
    let well_formed = match rproto {
        IPPROTO_TCP => out.get(rl4 + 13).is_some_and(|f| f & TCP_RST != 0),
        p if p == icmp => out.get(rl4..rl4 + 2) == Some(&[F::PORT_UNREACH.0, F::PORT_UNREACH.1]),
        _ => false,
    };
    if !well_formed {
        return Err(format!(
            "{name} reply is neither a TCP RST nor a port unreachable (protocol {rproto})"
        ));
    }
    if rproto == icmp {
        // The quote is the packet as it came, from its IP header on.
        let quote = out.get(rl4 + 8..).unwrap_or_default();
        let sent = p.frame.get(ETH_HLEN..).unwrap_or_default();
        if quote.is_empty() || !sent.starts_with(quote) {
            return Err(format!(
                "{name} reply quotes {} bytes that are not the packet's first ones",
                quote.len()
            ));
        }
    }
    let ((rs, rd), (is, id)) = (F::addrs(out)?, F::addrs(&p.frame)?);
    if rd != is || rs != id {
        return Err(format!(
            "{name} reply {rs} -> {rd} to a packet {is} -> {id}"
        ));
    }
    Ok(())
}

/// Checks the state maps of `side`'s family: every conntrack, SNAT,
/// affinity and fragment entry is one the packets could have made from the
/// family's seeded services.
pub fn check_state<F: Family>(
    dp: &TestDatapath,
    side: &Side<F>,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    let a = &side.allowed;
    let state = F::state(dp)?;
    let ct_keys: BTreeSet<Tuple<F::Addr>> = state.ct.iter().map(|r| r.key).collect();
    for r in &state.ct {
        let (k, entry) = (&r.key, &r.text);
        let backend = a.backends.get(&r.backend_id);
        let frontend = a.svc_frontend.get(&r.svc_id);
        let nat = (r.nat.0, r.nat.1, k.proto);
        match k.dir {
            CT_DIR_SERVICE => {
                if !a.frontends.contains(&(k.daddr, k.dport, k.proto)) {
                    problems.push(format!("{entry}: service entry to no frontend"));
                }
                if frontend != Some(&(k.daddr, k.dport, k.proto)) {
                    problems.push(format!("{entry}: svc_id is not this frontend's"));
                }
                if backend != Some(&nat) {
                    problems.push(format!("{entry}: NAT is not backend {}", r.backend_id));
                }
            }
            CT_DIR_REPLY => {
                if backend != Some(&(k.saddr, k.sport, k.proto)) {
                    problems.push(format!("{entry}: reply entry not from its backend"));
                }
                if frontend != Some(&nat) {
                    problems.push(format!("{entry}: reply NAT is not its frontend"));
                }
                if r.flags & CT_F_SNAT != 0 {
                    let range = if a.snat_addrs.contains(&k.daddr) {
                        SNAT_PORT_MIN..=SNAT_PORT_MAX
                    } else {
                        REMAP_PORT_MIN..=REMAP_PORT_MAX
                    };
                    if !range.contains(&k.dport) {
                        problems.push(format!("{entry}: SNAT port outside {range:?}"));
                    }
                }
            }
            _ => problems.push(format!("{entry}: unknown direction")),
        }
    }
    for (k, entry) in &state.snat {
        if side.seeded_snat_keys.contains(k) {
            continue;
        }
        if !ct_keys.contains(k) {
            problems.push(format!("{entry}: no conntrack entry with this key"));
        }
        match k.dir {
            CT_DIR_SERVICE => {
                if !a.frontends.contains(&(k.daddr, k.dport, k.proto)) {
                    problems.push(format!("{entry}: forward entry to no frontend"));
                }
            }
            CT_DIR_REPLY => {
                if !a.is_backend(k.saddr, k.sport, k.proto) {
                    problems.push(format!("{entry}: reverse entry not from a backend"));
                }
            }
            _ => problems.push(format!("{entry}: unknown direction")),
        }
    }
    for (svc_id, backend_id, entry) in &state.affinity {
        if !a.affinity_svcs.contains(svc_id) {
            problems.push(format!("{entry}: service without affinity"));
        } else if !a.svc_backends[svc_id].contains(backend_id) {
            problems.push(format!("{entry}: not a backend of the service"));
        }
    }
    for f in &state.frag {
        let entry = &f.text;
        if f.proto != IPPROTO_TCP && f.proto != IPPROTO_UDP {
            problems.push(format!("{entry}: not TCP or UDP"));
        }
        let ok = match f.dir {
            CT_DIR_SERVICE => {
                a.frontend_addrs.contains(&f.daddr) && a.backend_addrs.contains(&f.addr)
            }
            FRAG_DIR_SNAT_SRC => {
                a.frontend_addrs.contains(&f.daddr) && a.snat_addrs.contains(&f.addr)
            }
            FRAG_DIR_REVSNAT_SRC => {
                a.backend_addrs.contains(&f.saddr) && a.frontend_addrs.contains(&f.addr)
            }
            // Replies (CT_DIR_REPLY, and directions added later): from
            // a backend.
            _ => a.backend_addrs.contains(&f.saddr),
        };
        if !ok {
            problems.push(format!("{entry}: not a translated datagram's"));
        }
    }
    Ok(())
}

/// A rewrite of `input` into `output` (same length) touched only what NAT
/// may touch (MACs, and what [`Family::rewritable`] says) and kept every
/// checksum's residue; over IPv6 it left no UDP checksum of 0.
pub fn check_rewrite<F: Family>(input: &[u8], output: &[u8]) -> Result<(), String> {
    if input.len() != output.len() {
        return Err(format!(
            "length {} became {} (not a reject)",
            input.len(),
            output.len()
        ));
    }
    let (a, b) = (checksum_residues(input), checksum_residues(output));
    for (what, x, y) in [
        ("IPv4 header", a.ipv4, b.ipv4),
        ("layer 4", a.l4, b.l4),
        ("quoted IPv4 header", a.inner_ipv4, b.inner_ipv4),
        ("quoted UDP", a.inner_udp, b.inner_udp),
    ] {
        if x != y {
            return Err(format!("{what} checksum residue {x:?} became {y:?}"));
        }
    }
    if b.l4 == Some(Residue::ZeroOverIpv6) {
        return Err("a rewritten UDP datagram with checksum 0 over IPv6".to_string());
    }
    // Offsets NAT may write, from the input's own structure.
    let mut may = vec![false; input.len()];
    let mut allow = |from: usize, to: usize| {
        for m in may.iter_mut().take(to).skip(from) {
            *m = true;
        }
    };
    allow(0, 12); // MACs (a packet sent back swaps them)
    F::rewritable(input, &mut allow);
    if let Some(at) = (0..input.len()).find(|&i| input[i] != output[i] && !may[i]) {
        return Err(format!(
            "byte {at} changed from {:#04x} to {:#04x}: not an address, port or checksum",
            input[at], output[at]
        ));
    }
    Ok(())
}

/// Whether `BPF_PROG_TEST_RUN` refuses `frame` before running `prog`:
/// shorter than an Ethernet header, or, for TC (an skb), an IPv4 or IPv6
/// ethertype without room for the network header.
pub fn kernel_refuses(prog: TcProgram, frame: &[u8]) -> bool {
    if frame.len() < ETH_HLEN {
        return true;
    }
    if prog == TcProgram::NodeXdp {
        return false;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    (ethertype == ETH_P_IP && frame.len() < ETH_HLEN + 20)
        || (ethertype == ETH_P_IPV6 && frame.len() < ETH_HLEN + IPV6_HLEN)
}

pub fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The configuration maps of both families, printed (sorted): they must
/// never change.
pub fn config_dump(dp: &TestDatapath) -> Result<String, String> {
    fn sorted<K: Debug, V: Debug>(
        name: &str,
        it: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
    ) -> Result<String, String> {
        let mut lines: Vec<String> = it
            .map(|r| r.map(|(k, v)| format!("{name} {k:?} -> {v:?}")))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("dump {name}: {e}"))?;
        lines.sort();
        Ok(lines.join("\n"))
    }
    let m6 = dp.v6()?;
    let ranges = dp
        .srcrange4
        .iter()
        .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)));
    let ranges6 = m6
        .srcrange6
        .iter()
        .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)));
    Ok([
        sorted("SVC4", dp.svc4.iter())?,
        sorted("SLOTS", dp.slots.iter())?,
        sorted("BACKEND4", dp.backend4.iter())?,
        sorted("REVNAT4", dp.revnat4.iter())?,
        sorted("NODE4", dp.node4.iter())?,
        sorted("SRCRANGE4", ranges)?,
        sorted("SVC6", m6.svc6.iter())?,
        sorted("BACKEND6", m6.backend6.iter())?,
        sorted("NODE6", m6.node6.iter())?,
        sorted("SRCRANGE6", ranges6)?,
    ]
    .join("\n"))
}
