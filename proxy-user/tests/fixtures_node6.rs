//! IPv6 packet fixtures for the node programs, run through
//! `BPF_PROG_TEST_RUN`: the IPv6 twin of `tests/fixtures_node.rs`, case by
//! case where the behaviour applies to IPv6 (node ports with local and
//! remote backends, SNAT port allocation and its reverse, traffic
//! policies, session affinity, source ranges, NAT clashes, fragments), plus
//! what only IPv6 has (NDP, ICMPv6, extension headers, UDP checksum 0).
//!
//! XDP is run through the attached entry point, `svcnat_node_xdp`, which
//! tail-calls `svcnat_node_xdp6` for IPv6 frames, as the kernel runs it.
//! The hairpin cases of `fixtures_node.rs` are pod-path only and live in
//! `tests/fixtures6.rs` for IPv6.
//!
//! Every expected output is built by the packet builder from what the
//! packet must look like after translation, never taken from the program;
//! where the datapath chooses (a SNAT port, a backend), the check reads the
//! choice from the output, checks it is allowed and compares the whole
//! frame with the one built for that choice. The runner checks every
//! output's checksums (TCP and UDP over the IPv6 pseudo-header) and that
//! exactly one stats reason counted the packet.
//!
//! Needs root and the eBPF object; without them the tests print why and
//! pass. `SVCNAT_FIXTURE=substring` runs only the matching cases.

use std::net::{Ipv6Addr, SocketAddrV6};

use proxy_common::{
    Affinity6Key, AffinityValue, BACKEND_FLAG_LOCAL, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_CLOSED,
    CT_F_REPLIED, CT_F_SEEN_NON_SYN, CT_F_SNAT, CT_TCP_SYN_LIFETIME_S, CT_UDP_UNREPLIED_LIFETIME_S,
    Ct6Key, Ct6Value, FRAG_DIR_REVSNAT_SRC, FRAG_DIR_SNAT_SRC, IPPROTO_TCP, IPPROTO_UDP,
    REMAP_PORT_MAX, REMAP_PORT_MIN, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL, SNAT_PORT_MAX,
    SNAT_PORT_MIN, SVC_FLAG_EXTERNAL, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT,
    SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, Snat6Value,
};
use svcnat_testkit::{
    datapath::{
        Flow6, TC_ACT_SHOT, TEST_RUN_IFINDEX, TcProgram, TestDatapath, XDP_DROP, XDP_PASS,
        monotonic_ns,
    },
    fixture::{Case, Expect, Step, Window, case, hex, run_table},
    fixture6::{
        P6, addrs, ct_count, ct_get, dnat, ends, forcing_zero_sum, frag_entry, frag_key, snat,
        udp_checksum_is,
    },
    packet::{
        ExtHeader, IPPROTO_EXPERIMENT1, NA_OVERRIDE, NA_SOLICITED, PacketBuilder, TCP_ACK, TCP_PSH,
        TCP_RST, TCP_SYN, ethernet_frame, fragment6,
    },
    skip::Needs,
    skip_unless,
};

const NS: u64 = 1_000_000_000;

const fn ip6(a: u16, b: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, a, b, 0, 0, 0, last)
}

const fn sa(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

/// This node's address on its node interface (`SVCNAT_NODE6` of the
/// interface `BPF_PROG_TEST_RUN` gives).
const NODE: Ipv6Addr = ip6(0x100, 0, 1);
/// Another address of this node, not the interface's: node ports on it
/// SNAT from it.
const NODE_B: Ipv6Addr = ip6(0x100, 0, 2);
/// A client outside the cluster.
const CLIENT_IP: Ipv6Addr = ip6(0x200, 0, 5);
const CLIENT: SocketAddrV6 = sa(CLIENT_IP, 40000);
/// A client outside the load balancer's source ranges.
const STRANGER: SocketAddrV6 = sa(ip6(0x201, 0, 5), 40000);
/// A pod of this node.
const POD: SocketAddrV6 = sa(ip6(0x10, 0, 0x50), 41000);

/// Node port, TCP, one local backend (L1).
const NP_LOCAL: SocketAddrV6 = sa(NODE, 30080);
/// Node port, TCP, one remote backend (R1).
const NP_REMOTE: SocketAddrV6 = sa(NODE, 30081);
/// Node port, UDP, one remote backend (R2).
const NP_UDP: SocketAddrV6 = sa(NODE, 30053);
/// Node port on the node's other address, TCP, remote backend R1.
const NP_B: SocketAddrV6 = sa(NODE_B, 30083);
/// Load-balancer IP with source ranges (2001:db8:200::/48), local backend L1.
const LB: SocketAddrV6 = sa(ip6(0xffff, 0x50, 1), 80);
const LB_RANGE: (Ipv6Addr, u8) = (ip6(0x200, 0, 0), 48);
/// External IP, TCP, remote backend R1: SNATed from the interface's address.
const EXT_REMOTE: SocketAddrV6 = sa(ip6(0xffff, 0x50, 2), 80);
/// Node port with externalTrafficPolicy Local and no local backend; pods
/// get the internal scope (R1).
const NP_ETP_LOCAL: SocketAddrV6 = sa(NODE, 30090);
/// Node port with session affinity (100 s), local backends L1 and L2.
const NP_AFFINITY: SocketAddrV6 = sa(NODE, 30070);
/// A cluster IP (not translated at XDP).
const CLUSTER_IP: SocketAddrV6 = sa(ip6(0xffff, 0, 1), 80);

const L1: SocketAddrV6 = sa(ip6(0x10, 0, 0x11), 8080);
const L1_ID: u32 = 11;
const L2: SocketAddrV6 = sa(ip6(0x10, 0, 0x12), 8080);
const L2_ID: u32 = 12;
const L3_ID: u32 = 13;
const R1: SocketAddrV6 = sa(ip6(0x20, 0, 0x21), 8080);
const R1_ID: u32 = 21;
const R2: SocketAddrV6 = sa(ip6(0x20, 0, 0x22), 5353);
const R2_ID: u32 = 22;

const NP_LOCAL_ID: u32 = 1;
const NP_REMOTE_ID: u32 = 2;
const NP_UDP_ID: u32 = 3;
const LB_ID: u32 = 4;
const AFFINITY_ID: u32 = 7;
const AFFINITY_S: u32 = 100;
const EXT_REMOTE_ID: u32 = 13;
const NP_B_ID: u32 = 14;

/// Another client, whose flows hold SNAT ports in the exhaustion cases.
const OTHER: Ipv6Addr = ip6(0x250, 0, 1);

const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x02];

const EXT: u16 = SVC_FLAG_EXTERNAL;
const NP: u16 = SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT;
const LOCAL: u8 = BACKEND_FLAG_LOCAL;

fn seed_world(dp: &mut TestDatapath) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |e| format!("seed {what}: {e}")
    };
    dp.set_node_address6(TEST_RUN_IFINDEX, NODE)
        .map_err(e("node"))?;
    let frontends: [(SocketAddrV6, u8, u8, u32, u16, u32, Vec<_>); 10] = [
        (
            NP_LOCAL,
            IPPROTO_TCP,
            SCOPE_EXTERNAL,
            NP_LOCAL_ID,
            NP,
            0,
            vec![(L1_ID, L1, LOCAL)],
        ),
        (
            NP_REMOTE,
            IPPROTO_TCP,
            SCOPE_EXTERNAL,
            NP_REMOTE_ID,
            NP,
            0,
            vec![(R1_ID, R1, 0)],
        ),
        (
            NP_UDP,
            IPPROTO_UDP,
            SCOPE_EXTERNAL,
            NP_UDP_ID,
            NP,
            0,
            vec![(R2_ID, R2, 0)],
        ),
        (
            NP_B,
            IPPROTO_TCP,
            SCOPE_EXTERNAL,
            NP_B_ID,
            NP,
            0,
            vec![(R1_ID, R1, 0)],
        ),
        (
            LB,
            IPPROTO_TCP,
            SCOPE_EXTERNAL,
            LB_ID,
            EXT | SVC_FLAG_SOURCE_RANGES,
            0,
            vec![(L1_ID, L1, LOCAL)],
        ),
        (
            EXT_REMOTE,
            IPPROTO_TCP,
            SCOPE_EXTERNAL,
            EXT_REMOTE_ID,
            EXT,
            0,
            vec![(R1_ID, R1, 0)],
        ),
        (
            NP_ETP_LOCAL,
            IPPROTO_TCP,
            SCOPE_INTERNAL,
            6,
            NP,
            0,
            vec![(R1_ID, R1, 0)],
        ),
        (
            NP_ETP_LOCAL,
            IPPROTO_TCP,
            SCOPE_EXTERNAL,
            5,
            NP | SVC_FLAG_LOCAL_ONLY | SVC_FLAG_TWO_SCOPES,
            0,
            vec![],
        ),
        (
            NP_AFFINITY,
            IPPROTO_TCP,
            SCOPE_EXTERNAL,
            AFFINITY_ID,
            NP,
            AFFINITY_S,
            vec![(L1_ID, L1, LOCAL), (L2_ID, L2, LOCAL)],
        ),
        (
            CLUSTER_IP,
            IPPROTO_TCP,
            SCOPE_EXTERNAL,
            8,
            0,
            0,
            vec![(L1_ID, L1, LOCAL)],
        ),
    ];
    for (vip, proto, scope, id, flags, affinity, backends) in frontends {
        dp.add_frontend6(vip, proto, scope, id, flags, affinity, &backends)
            .map_err(e(&format!("{vip}/{proto} scope {scope}")))?;
    }
    dp.add_source_range6(LB_ID, LB_RANGE.0, LB_RANGE.1)
        .map_err(e("LB ranges"))?;
    dp.add_vip_marker6(CLUSTER_IP)
        .map_err(e("CLUSTER_IP marker"))
}

// ---------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------

fn tcp(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> P6 {
    PacketBuilder::tcp(src, dst)
        .macs(CLIENT_MAC, NODE_MAC)
        .flags(flags)
        .seq(1_000_000)
        .ack_seq(if flags & TCP_ACK != 0 { 7_000_000 } else { 0 })
        .hop_limit(61)
        .traffic_class(0x10)
        .flow_label(0x1_2345)
}

fn udp(src: SocketAddrV6, dst: SocketAddrV6) -> P6 {
    PacketBuilder::udp(src, dst)
        .macs(CLIENT_MAC, NODE_MAC)
        .hop_limit(61)
        .flow_label(0xa_bcde)
        .payload(b"\x12\x34\x01\x00\x00\x01")
}

/// `p` from `from` to `to` (both ends rewritten).
fn between(p: &P6, from: SocketAddrV6, to: SocketAddrV6) -> P6 {
    snat(&dnat(p, to), from)
}

/// The backend's answer to the packet `prev` (which reached it): TCP with
/// `flags`, or (`flags` `None`) a UDP datagram.
fn answer(prev: &[u8], flags: Option<u8>) -> Result<P6, String> {
    let (src, dst) = ends(prev)?;
    Ok(match flags {
        Some(f) => tcp(dst, src, f),
        None => udp(dst, src),
    }
    .macs(NODE_MAC, CLIENT_MAC))
}

// ---------------------------------------------------------------------------
// The table's shape (the runner is svcnat_testkit::fixture)
// ---------------------------------------------------------------------------

/// XDP on the node interface (the attached entry point).
fn xdp(input: Vec<u8>) -> Step {
    Step::on(TcProgram::NodeXdp, input)
}

/// XDP, with an input made from the previous step's output.
fn xdp_after(f: impl Fn(&[u8]) -> Result<Vec<u8>, String> + 'static) -> Step {
    Step::after(TcProgram::NodeXdp, f)
}

/// TC egress on the node interface.
fn node_egress(input: Vec<u8>) -> Step {
    Step::on(TcProgram::NodeEgress, input)
}

fn pod_ingress(input: Vec<u8>) -> Step {
    Step::on(TcProgram::PodIngress, input)
}

fn pod_egress(input: Vec<u8>) -> Step {
    Step::on(TcProgram::PodEgress, input)
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// The output is `p` sent to `backend` from `from` and a port of the SNAT
/// range, byte for byte.
fn snat_to(
    p: &P6,
    from: Ipv6Addr,
    backend: SocketAddrV6,
) -> impl Fn(&[u8], &[u8]) -> Result<(), String> + use<> {
    let p = p.clone();
    move |_, out| {
        let (src, _) = ends(out)?;
        if *src.ip() != from || !(SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&src.port()) {
            return Err(format!(
                "source {src}, want [{from}]:{SNAT_PORT_MIN}..={SNAT_PORT_MAX}"
            ));
        }
        same(out, &between(&p, src, backend).build())
    }
}

/// The output is `p` sent to `backend` from the source the previous
/// output had (the flow's SNAT port), byte for byte.
fn same_source_as_before(
    p: &P6,
    backend: SocketAddrV6,
) -> impl Fn(&[u8], &[u8]) -> Result<(), String> + use<> {
    let p = p.clone();
    move |prev, out| {
        let (src, _) = ends(prev)?;
        same(out, &between(&p, src, backend).build())
    }
}

/// The output is `p` sent to `backend` from the client's address and a
/// remapped port (not the client's own), byte for byte.
fn port_remapped(
    p: &P6,
    backend: SocketAddrV6,
) -> impl Fn(&[u8], &[u8]) -> Result<(), String> + use<> {
    let p = p.clone();
    move |_, out| {
        let (src, _) = ends(out)?;
        let (sport, _) = p.l4_ports();
        if *src.ip() != p.ip.src
            || src.port() == sport
            || !(REMAP_PORT_MIN..=REMAP_PORT_MAX).contains(&src.port())
        {
            return Err(format!(
                "source {src}, want [{}]:{REMAP_PORT_MIN}..={REMAP_PORT_MAX} but not {sport}",
                p.ip.src
            ));
        }
        same(out, &between(&p, src, backend).build())
    }
}

/// The output goes to a backend of `choices` (from the client, DNAT only),
/// byte for byte.
fn dnat_to_one_of(
    p: &P6,
    choices: &[SocketAddrV6],
) -> impl Fn(&[u8], &[u8]) -> Result<(), String> + use<> {
    let (p, choices) = (p.clone(), choices.to_vec());
    move |_, out| {
        let (_, dst) = ends(out)?;
        if !choices.contains(&dst) {
            return Err(format!("DNAT to {dst}, not one of {choices:?}"));
        }
        same(out, &dnat(&p, dst).build())
    }
}

/// `out` is `want`, byte for byte.
fn same(out: &[u8], want: &[u8]) -> Result<(), String> {
    if out != want {
        return Err(format!("output differs from {}", hex(want)));
    }
    Ok(())
}

/// What a new flow must have left in the maps.
#[derive(Clone, Copy)]
struct Opened {
    client: SocketAddrV6,
    frontend: SocketAddrV6,
    backend: SocketAddrV6,
    backend_id: u32,
    svc_id: u32,
    proto: u8,
}

/// The entries of the new flow `o`, whose translated packet is the output:
/// the service entry (to the backend, from the source the output has,
/// `CT_F_SNAT` when that is not the client itself, created in this run, the
/// lifetime of an unanswered flow), the reply entry under what the backend
/// answers to (back to the frontend and the client), and, when source-NATed,
/// the reverse SNAT entry of that reply key, naming the client.
fn opened(o: Opened) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, w, out| {
        let (src, dst) = ends(out)?;
        if dst != o.backend {
            return Err(format!("output to {dst}, want {}", o.backend));
        }
        let flow = Flow6 {
            client: o.client,
            vip: o.frontend,
            backend: o.backend,
            proto: o.proto,
            backend_id: o.backend_id,
            svc_id: o.svc_id,
            flags: 0,
            created_ns: 0,
            expires_ns: 0,
        };
        let snatted = src != o.client;
        let snat_flag = if snatted { CT_F_SNAT } else { 0 };
        let s = ct_get(dp, &flow.service_key())?;
        let got = (
            s.nat_addr,
            s.nat_port,
            s.backend_id,
            s.svc_id,
            (s.peer_addr, s.peer_port),
            s.flags & CT_F_SNAT,
        );
        let want = (
            o.backend.ip().octets(),
            o.backend.port(),
            o.backend_id,
            o.svc_id,
            (src.ip().octets(), src.port()),
            snat_flag,
        );
        if got != want {
            return Err(format!(
                "service entry (nat addr, port, backend, svc, peer, SNAT flag) = {got:?}, want {want:?}"
            ));
        }
        if !w.contains(s.created_ns) {
            return Err(format!(
                "service entry created_ns {} outside the run {w:?}",
                s.created_ns
            ));
        }
        let lifetime = if o.proto == IPPROTO_TCP {
            CT_TCP_SYN_LIFETIME_S
        } else {
            CT_UDP_UNREPLIED_LIFETIME_S
        };
        if s.expires_ns != s.created_ns + lifetime * NS {
            return Err(format!(
                "service entry lives {} ns, want {lifetime} s",
                s.expires_ns.wrapping_sub(s.created_ns)
            ));
        }
        let rkey = flow.snat_reply_key(src);
        let r = ct_get(dp, &rkey)?;
        let got = (
            r.nat_addr,
            r.nat_port,
            (r.peer_addr, r.peer_port),
            r.flags & CT_F_SNAT,
        );
        let want = (
            o.frontend.ip().octets(),
            o.frontend.port(),
            (o.client.ip().octets(), o.client.port()),
            snat_flag,
        );
        if got != want {
            return Err(format!(
                "reply entry (nat addr, port, peer, SNAT flag) = {got:?}, want {want:?}"
            ));
        }
        let back = dp.v6()?.snat6.get(&rkey, 0).ok();
        match (snatted, back) {
            (false, None) => {}
            (true, Some(b)) if (b.addr, b.port) == (o.client.ip().octets(), o.client.port()) => {}
            (_, b) => {
                return Err(format!(
                    "reverse SNAT entry {b:?} at {rkey:?}, want one naming {} only when SNATed ({snatted})",
                    o.client
                ));
            }
        }
        Ok(())
    }
}

/// The IPv6 SNAT map holds exactly `n` entries.
fn snat_count(n: usize) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, _, _| {
        let got = dp.v6()?.snat6.keys().count();
        if got != n {
            return Err(format!("{got} IPv6 SNAT entries, want {n}"));
        }
        Ok(())
    }
}

/// The service entry of `client -> frontend` has all of `set` and none of
/// `clear`.
fn ct_flags(
    client: SocketAddrV6,
    frontend: SocketAddrV6,
    proto: u8,
    set: u8,
    clear: u8,
) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, _, _| {
        let key = service_key(client, frontend, proto);
        let v = ct_get(dp, &key)?;
        if v.flags & set != set || v.flags & clear != 0 {
            return Err(format!(
                "service entry flags {:#04x}: want {set:#04x} set and {clear:#04x} clear",
                v.flags
            ));
        }
        Ok(())
    }
}

fn service_key(client: SocketAddrV6, frontend: SocketAddrV6, proto: u8) -> Ct6Key {
    Ct6Key {
        saddr: client.ip().octets(),
        daddr: frontend.ip().octets(),
        sport: client.port(),
        dport: frontend.port(),
        proto,
        dir: CT_DIR_SERVICE,
        pad: 0,
    }
}

/// The reverse SNAT key of a reply from `backend` to `to`.
fn reply_key(backend: SocketAddrV6, to: SocketAddrV6, proto: u8) -> Ct6Key {
    Ct6Key {
        saddr: backend.ip().octets(),
        daddr: to.ip().octets(),
        sport: backend.port(),
        dport: to.port(),
        proto,
        dir: CT_DIR_REPLY,
        pad: 0,
    }
}

/// Every port of the SNAT range towards R1 taken by a reverse SNAT entry
/// of another client (`OTHER`, one port each), with
/// (`Some((flags, seconds to expiry))`) or without the conntrack entries of
/// its flow. Reverse entries are stamped `age_s` seconds ago.
fn seed_snat_range(
    dp: &mut TestDatapath,
    flow: Option<(u8, u64)>,
    age_s: u16,
) -> Result<(), String> {
    let now = monotonic_ns();
    let stamp = ((now / NS) as u16).wrapping_sub(age_s);
    let m = dp.v6_mut()?;
    for port in SNAT_PORT_MIN..=SNAT_PORT_MAX {
        let k = reply_key(R1, sa(NODE, port), IPPROTO_TCP);
        let v = Snat6Value {
            addr: OTHER.octets(),
            port,
            stamp,
        };
        m.snat6
            .insert(k, v, 0)
            .map_err(|e| format!("seed snat: {e}"))?;
        if let Some((flags, left_s)) = flow {
            let e = Ct6Value {
                nat_addr: NP_REMOTE.ip().octets(),
                nat_port: NP_REMOTE.port(),
                flags: flags | CT_F_SNAT | CT_F_SEEN_NON_SYN | CT_F_REPLIED,
                pad: 0,
                backend_id: R1_ID,
                svc_id: NP_REMOTE_ID,
                pad3: 0,
                created_ns: now,
                expires_ns: now + left_s * NS,
                seq_next: 0,
                peer_addr: OTHER.octets(),
                peer_port: port,
                pad2: 0,
            };
            m.ct6
                .insert(k, e, 0)
                .map_err(|e| format!("seed conntrack: {e}"))?;
            // The flow's service-direction entry decides whether it is over.
            let skey = service_key(sa(OTHER, port), NP_REMOTE, IPPROTO_TCP);
            let se = Ct6Value {
                nat_addr: R1.ip().octets(),
                nat_port: R1.port(),
                peer_addr: NODE.octets(),
                ..e
            };
            m.ct6
                .insert(skey, se, 0)
                .map_err(|e| format!("seed conntrack: {e}"))?;
        }
    }
    Ok(())
}

/// The affinity entry of `client` for the affinity service names the
/// backend the output went to (and `backend_id`, when given) and was used
/// in this run.
fn affinity_entry(
    client: Ipv6Addr,
    backend_id: Option<u32>,
) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, w, out| {
        let key = Affinity6Key {
            client: client.octets(),
            svc_id: AFFINITY_ID,
        };
        let a = dp
            .v6()?
            .affinity6
            .get(&key, 0)
            .map_err(|e| format!("affinity entry: {e}"))?;
        let (_, dst) = ends(out)?;
        let chosen = if dst == L1 { L1_ID } else { L2_ID };
        if a.backend_id != chosen || backend_id.is_some_and(|b| b != a.backend_id) {
            return Err(format!(
                "affinity names backend {}, output went to {dst}, want {backend_id:?}",
                a.backend_id
            ));
        }
        if !w.contains(a.last_ns) {
            return Err(format!(
                "affinity last_ns {} outside the run {w:?}",
                a.last_ns
            ));
        }
        Ok(())
    }
}

fn seed_affinity(
    backend_id: u32,
    slot: u32,
    age_s: u64,
) -> impl Fn(&mut TestDatapath) -> Result<(), String> {
    move |dp| {
        dp.v6_mut()?
            .affinity6
            .insert(
                Affinity6Key {
                    client: CLIENT_IP.octets(),
                    svc_id: AFFINITY_ID,
                },
                AffinityValue {
                    backend_id,
                    slot,
                    last_ns: monotonic_ns().saturating_sub(age_s * NS),
                },
                0,
            )
            .map_err(|e| format!("seed affinity: {e}"))
    }
}

/// The output of a later fragment is `want`, byte for byte (its
/// addresses are those of the first fragment's translation).
fn later_fragment_is(want: Vec<u8>) -> impl Fn(&[u8], &[u8]) -> Result<(), String> {
    move |_, out| {
        let (src, dst) = addrs(out)?;
        let (wsrc, wdst) = addrs(&want)?;
        if (src, dst) != (wsrc, wdst) {
            return Err(format!("{src} -> {dst}, want {wsrc} -> {wdst}"));
        }
        same(out, &want)
    }
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

fn local_cases() -> Vec<Case> {
    let syn = tcp(CLIENT, NP_LOCAL, TCP_SYN);
    let ack = tcp(CLIENT, NP_LOCAL, TCP_ACK).payload(b"GET / HTTP/1.1\r\n\r\n");
    let l1_reply = tcp(L1, CLIENT, TCP_SYN | TCP_ACK).macs(NODE_MAC, CLIENT_MAC);
    let opened_local = Opened {
        client: CLIENT,
        frontend: NP_LOCAL,
        backend: L1,
        backend_id: L1_ID,
        svc_id: NP_LOCAL_ID,
        proto: IPPROTO_TCP,
    };
    vec![
        case("local backend: new TCP flow DNATed at XDP, client address kept").step(
            xdp(syn.build())
                .passed(dnat(&syn, L1).build(), Reason::DnatNew)
                .effect(opened(opened_local))
                .effect(ct_count(2))
                .effect(snat_count(0)),
        ),
        case("local backend: next packet of the flow uses conntrack")
            .step(xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew))
            .step(
                xdp(ack.build())
                    .passed(dnat(&ack, L1).build(), Reason::DnatEstablished)
                    .effect(ct_flags(
                        CLIENT,
                        NP_LOCAL,
                        IPPROTO_TCP,
                        CT_F_SEEN_NON_SYN,
                        CT_F_SNAT,
                    ))
                    .effect(ct_count(2)),
            ),
        case("local backend: reply reverse-NATed at node egress to the node port")
            .step(xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew))
            .step(
                node_egress(l1_reply.build())
                    .passed(snat(&l1_reply, NP_LOCAL).build(), Reason::RevnatReply)
                    .effect(ct_flags(CLIENT, NP_LOCAL, IPPROTO_TCP, CT_F_REPLIED, 0)),
            ),
        case("node egress: a packet of no translated flow passes untouched")
            .step(node_egress(l1_reply.build()).untouched(Reason::PassNotService)),
        {
            let q = forcing_zero_sum(udp(CLIENT, sa(NODE, 30054)), |p| dnat(p, L1_DNS));
            case("local backend: UDP whose DNATed checksum sums to zero carries 0xffff, never 0")
                .seed(seed_np_local_udp)
                .step(
                    xdp(q.build())
                        .passed(dnat(&q, L1_DNS).build(), Reason::DnatNew)
                        .effect(udp_checksum_is(0xffff)),
                )
        },
        case("UDP checksum 0 to a node port is invalid over IPv6: dropped, opens nothing").step(
            xdp(udp(CLIENT, NP_UDP).udp_zero_checksum().build())
                .dropped(Reason::DropTruncated)
                .effect(ct_count(0))
                .effect(snat_count(0)),
        ),
        {
            let syn = tcp(CLIENT, NP_LOCAL, TCP_SYN)
                .hop_by_hop(&[5, 2, 0, 0])
                .destination_options(&[]);
            case("extension headers before TCP: walked, DNAT, headers kept")
                .step(xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew))
        },
        case("an extension header the datapath does not walk: passed untouched").step(
            xdp(tcp(CLIENT, NP_LOCAL, TCP_SYN)
                .ext(ExtHeader::Other {
                    kind: IPPROTO_EXPERIMENT1,
                    bytes: vec![0; 7],
                })
                .build())
            .untouched(Reason::PassIpv6Extension)
            .effect(ct_count(0)),
        ),
        case("IPv6 header without its TCP header is dropped")
            .step(xdp(syn.build()[..14 + 40 + 10].to_vec()).dropped(Reason::DropTruncated)),
    ]
}

/// UDP node port 30054 on NODE, local backend L1_DNS.
const L1_DNS: SocketAddrV6 = sa(ip6(0x10, 0, 0x11), 5353);

fn seed_np_local_udp(dp: &mut TestDatapath) -> Result<(), String> {
    dp.add_frontend6(
        sa(NODE, 30054),
        IPPROTO_UDP,
        SCOPE_EXTERNAL,
        10,
        NP,
        0,
        &[(31, L1_DNS, LOCAL)],
    )
    .map_err(|e| format!("seed NP_LOCAL_UDP: {e}"))
}

fn remote_cases() -> Vec<Case> {
    let rsyn = tcp(CLIENT, NP_REMOTE, TCP_SYN);
    let rack = tcp(CLIENT, NP_REMOTE, TCP_ACK).payload(b"hello");
    let usyn = udp(CLIENT, NP_UDP);
    let opened_remote = Opened {
        client: CLIENT,
        frontend: NP_REMOTE,
        backend: R1,
        backend_id: R1_ID,
        svc_id: NP_REMOTE_ID,
        proto: IPPROTO_TCP,
    };
    vec![
        case("remote backend: new TCP flow gets DNAT and SNAT to the node port's address from the SNAT range")
            .step(
                xdp(rsyn.build())
                    .checked(Reason::SnatNew, snat_to(&rsyn, NODE, R1))
                    .effect(opened(opened_remote))
                    .effect(ct_count(2))
                    .effect(snat_count(1)),
            ),
        case("remote backend: next packet reuses the allocated port")
            .step(xdp(rsyn.build()).checked(Reason::SnatNew, snat_to(&rsyn, NODE, R1)))
            .step(
                xdp(rack.build())
                    .checked(Reason::SnatEstablished, same_source_as_before(&rack, R1))
                    .effect(ct_count(2))
                    .effect(snat_count(1)),
            ),
        case("remote backend: reply reverse-SNATed at XDP back to the client from the node port")
            .step(xdp(rsyn.build()).checked(Reason::SnatNew, snat_to(&rsyn, NODE, R1)))
            .step(
                xdp_after(|prev| Ok(answer(prev, Some(TCP_SYN | TCP_ACK))?.build()))
                    .checked(Reason::RevsnatReply, |prev, out| {
                        let reply = answer(prev, Some(TCP_SYN | TCP_ACK))?;
                        same(out, &between(&reply, NP_REMOTE, CLIENT).build())
                    })
                    .effect(ct_flags(CLIENT, NP_REMOTE, IPPROTO_TCP, CT_F_REPLIED | CT_F_SNAT, 0)),
            ),
        case("remote backend: UDP through SNAT and back")
            .step(
                xdp(usyn.build())
                    .checked(Reason::SnatNew, snat_to(&usyn, NODE, R2))
                    .effect(opened(Opened {
                        client: CLIENT,
                        frontend: NP_UDP,
                        backend: R2,
                        backend_id: R2_ID,
                        svc_id: NP_UDP_ID,
                        proto: IPPROTO_UDP,
                    }))
                    .effect(snat_count(1)),
            )
            .step(
                xdp_after(|prev| Ok(answer(prev, None)?.payload(b"answer").build())).checked(
                    Reason::RevsnatReply,
                    |prev, out| {
                        let reply = answer(prev, None)?.payload(b"answer");
                        same(out, &between(&reply, NP_UDP, CLIENT).build())
                    },
                ),
            ),
        case("remote backend: UDP whose translated checksum sums to zero carries 0xffff, both ways")
            .step(xdp(usyn.build()).checked(Reason::SnatNew, snat_to(&usyn, NODE, R2)))
            .step({
                // The next datagram of the flow, made to sum to zero once
                // translated to the flow's SNAT port (the previous output's
                // source).
                let next = |prev: &[u8]| -> Result<(P6, SocketAddrV6), String> {
                    let (src, _) = ends(prev)?;
                    let q = forcing_zero_sum(udp(CLIENT, NP_UDP).payload(b"zero-sum"), |p| {
                        between(p, src, R2)
                    });
                    Ok((q, src))
                };
                xdp_after(move |prev| Ok(next(prev)?.0.build()))
                    .checked(Reason::SnatEstablished, move |prev, out| {
                        let (q, src) = next(prev)?;
                        same(out, &between(&q, src, R2).build())
                    })
                    .effect(udp_checksum_is(0xffff))
            })
            .step({
                let reply = |prev: &[u8]| -> Result<P6, String> {
                    Ok(forcing_zero_sum(answer(prev, None)?, |p| {
                        between(p, NP_UDP, CLIENT)
                    }))
                };
                xdp_after(move |prev| Ok(reply(prev)?.build()))
                    .checked(Reason::RevsnatReply, move |prev, out| {
                        same(out, &between(&reply(prev)?, NP_UDP, CLIENT).build())
                    })
                    .effect(udp_checksum_is(0xffff))
            }),
        case("remote backend: a node port on another node address SNATs from that address")
            .step({
                let p = tcp(CLIENT, NP_B, TCP_SYN);
                xdp(p.build())
                    .checked(Reason::SnatNew, snat_to(&p, NODE_B, R1))
                    .effect(opened(Opened {
                        client: CLIENT,
                        frontend: NP_B,
                        backend: R1,
                        backend_id: R1_ID,
                        svc_id: NP_B_ID,
                        proto: IPPROTO_TCP,
                    }))
            })
            .step(
                xdp_after(|prev| Ok(answer(prev, Some(TCP_SYN | TCP_ACK))?.build())).checked(
                    Reason::RevsnatReply,
                    |prev, out| {
                        let reply = answer(prev, Some(TCP_SYN | TCP_ACK))?;
                        same(out, &between(&reply, NP_B, CLIENT).build())
                    },
                ),
            ),
        case("remote backend: an external IP SNATs from the interface's node address (SVCNAT_NODE6)")
            .step({
                let p = tcp(CLIENT, EXT_REMOTE, TCP_SYN);
                xdp(p.build())
                    .checked(Reason::SnatNew, snat_to(&p, NODE, R1))
                    .effect(opened(Opened {
                        client: CLIENT,
                        frontend: EXT_REMOTE,
                        backend: R1,
                        backend_id: R1_ID,
                        svc_id: EXT_REMOTE_ID,
                        proto: IPPROTO_TCP,
                    }))
            })
            .step(
                xdp_after(|prev| Ok(answer(prev, Some(TCP_SYN | TCP_ACK))?.build())).checked(
                    Reason::RevsnatReply,
                    |prev, out| {
                        let reply = answer(prev, Some(TCP_SYN | TCP_ACK))?;
                        same(out, &between(&reply, EXT_REMOTE, CLIENT).build())
                    },
                ),
            ),
        case("remote backend: an external IP without a node address for the interface is dropped")
            .seed(|dp| {
                dp.v6_mut()?
                    .node6
                    .remove(&TEST_RUN_IFINDEX)
                    .map_err(|e| format!("remove the node address: {e}"))
            })
            .step(
                xdp(tcp(CLIENT, EXT_REMOTE, TCP_SYN).build())
                    .dropped(Reason::DropSnatPorts)
                    .effect(ct_count(0))
                    .effect(snat_count(0)),
            ),
        case("remote backend: a reply to a SNAT port nobody allocated passes untouched").step(
            xdp(tcp(R1, sa(NODE, 61_234), TCP_SYN | TCP_ACK).macs(NODE_MAC, CLIENT_MAC).build())
                .untouched(Reason::PassNotService),
        ),
        case("remote backend: every SNAT port held by a live flow, new flow dropped and counted")
            .seed(|dp| seed_snat_range(dp, Some((0, 3600)), 100))
            .step(xdp(rsyn.build()).dropped(Reason::DropSnatPorts)),
        case(
            "remote backend: every SNAT port held by a flow older than its reply entry's first lifetime, none taken",
        )
        .seed(|dp| {
            // The flows are alive (their service entries say so); their reply
            // entries still carry the expiry their first reply left.
            seed_snat_range(dp, Some((0, 3600)), 100)?;
            let m = dp.v6_mut()?;
            let replies: Vec<Ct6Key> = m
                .ct6
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.dir == CT_DIR_REPLY)
                .collect();
            for k in replies {
                let mut v = m.ct6.get(&k, 0).map_err(|e| e.to_string())?;
                v.expires_ns = 1;
                m.ct6.insert(k, v, 0).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .step(xdp(rsyn.build()).dropped(Reason::DropSnatPorts)),
        case("remote backend: SNAT entries that outlived their flows are taken again")
            .seed(|dp| seed_snat_range(dp, None, 100))
            .step(
                xdp(rsyn.build())
                    .checked(Reason::SnatNew, snat_to(&rsyn, NODE, R1))
                    .effect(opened(opened_remote)),
            ),
        case(
            "remote backend: fresh SNAT entries without conntrack (flows other CPUs are creating) are not taken",
        )
        .seed(|dp| seed_snat_range(dp, None, 0))
        .step(
            xdp(rsyn.build())
                .dropped(Reason::DropSnatPorts)
                .effect(|dp, _, _| {
                    let m = dp.v6()?;
                    let theirs = m
                        .snat6
                        .iter()
                        .filter_map(Result::ok)
                        .filter(|(k, v)| v.addr == OTHER.octets() && v.port == k.dport)
                        .count();
                    let all = usize::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
                    if theirs != all {
                        return Err(format!(
                            "{theirs} of {all} reverse SNAT entries still name their own client"
                        ));
                    }
                    if m.ct6.keys().count() != 0 {
                        return Err("conntrack entries were written".into());
                    }
                    Ok(())
                }),
        ),
        case("remote backend: with every port's flow closed, one still in TIME_WAIT is taken")
            .seed(|dp| seed_snat_range(dp, Some((CT_F_CLOSED, 10)), 100))
            .step(xdp(rsyn.build()).checked(Reason::SnatNew, snat_to(&rsyn, NODE, R1))),
    ]
}

fn policy_cases() -> Vec<Case> {
    vec![
        case("externalTrafficPolicy Local without a local backend: dropped and counted").step(
            xdp(tcp(CLIENT, NP_ETP_LOCAL, TCP_SYN).build())
                .dropped(Reason::DropNoLocalBackend)
                .effect(ct_count(0)),
        ),
        case("externalTrafficPolicy Local: pods of the node use the internal scope (all backends)")
            .step({
                let p = tcp(POD, NP_ETP_LOCAL, TCP_SYN);
                pod_ingress(p.build()).passed(dnat(&p, R1).build(), Reason::DnatNew)
            }),
        case("a node port without backends: passed to the stack, opens nothing")
            .seed(|dp| {
                Ok(dp.add_frontend6(
                    NP_LOCAL,
                    IPPROTO_TCP,
                    SCOPE_EXTERNAL,
                    NP_LOCAL_ID,
                    NP,
                    0,
                    &[],
                )?)
            })
            .step(
                xdp(tcp(CLIENT, NP_LOCAL, TCP_SYN).build())
                    .untouched(Reason::PassNoBackend)
                    .effect(ct_count(0)),
            ),
        case("cluster IP reached from outside: not translated at XDP").step(
            xdp(tcp(CLIENT, CLUSTER_IP, TCP_SYN).build())
                .untouched(Reason::PassNotService)
                .effect(ct_count(0)),
        ),
        case("node address on a port no service has: passed to the stack").step(
            xdp(tcp(CLIENT, sa(NODE, 22), TCP_SYN).build()).untouched(Reason::PassNotService),
        ),
        case("source ranges: a client inside is translated").step({
            let p = tcp(CLIENT, LB, TCP_SYN);
            xdp(p.build())
                .passed(dnat(&p, L1).build(), Reason::DnatNew)
                .effect(opened(Opened {
                    client: CLIENT,
                    frontend: LB,
                    backend: L1,
                    backend_id: L1_ID,
                    svc_id: LB_ID,
                    proto: IPPROTO_TCP,
                }))
        }),
        case("source ranges: a client outside is dropped and counted").step(
            xdp(tcp(STRANGER, LB, TCP_SYN).build())
                .dropped(Reason::DropSourceRange)
                .effect(ct_count(0)),
        ),
        case("source ranges: a pod outside a load balancer's source ranges is dropped").step(
            pod_ingress(tcp(POD, LB, TCP_SYN).build()).expect(
                TC_ACT_SHOT,
                Expect::Any,
                Reason::DropSourceRange,
            ),
        ),
        case("source ranges: a pod inside a load balancer's source ranges is translated").step({
            let p = tcp(sa(ip6(0x200, 0, 0x77), 41000), LB, TCP_SYN);
            pod_ingress(p.build()).passed(dnat(&p, L1).build(), Reason::DnatNew)
        }),
    ]
}

fn affinity_cases() -> Vec<Case> {
    let syn = tcp(CLIENT, NP_AFFINITY, TCP_SYN);
    let syn2 = tcp(sa(CLIENT_IP, 40001), NP_AFFINITY, TCP_SYN);
    let syn3 = tcp(sa(CLIENT_IP, 40002), NP_AFFINITY, TCP_SYN);
    vec![
        case("affinity: a live entry sends new connections of the client to its backend")
            .seed(seed_affinity(L2_ID, 2, 10))
            .step(
                xdp(syn.build())
                    .passed(dnat(&syn, L2).build(), Reason::DnatNew)
                    .effect(affinity_entry(CLIENT_IP, Some(L2_ID))),
            )
            .step(xdp(syn2.build()).passed(dnat(&syn2, L2).build(), Reason::DnatNew)),
        case("affinity: the first connection is remembered and followed")
            .step(
                xdp(syn.build())
                    .checked(Reason::DnatNew, dnat_to_one_of(&syn, &[L1, L2]))
                    .effect(affinity_entry(CLIENT_IP, None)),
            )
            .step(
                xdp(syn3.build()).checked(Reason::DnatNew, move |prev, out| {
                    let (_, first) = ends(prev)?;
                    same(out, &dnat(&syn3, first).build())
                }),
            ),
        case("affinity: an expired entry chooses anew and records the choice")
            .seed(seed_affinity(L2_ID, 2, u64::from(AFFINITY_S) + 5))
            .step(
                xdp(syn.build())
                    .checked(Reason::DnatNew, dnat_to_one_of(&syn, &[L1, L2]))
                    .effect(affinity_entry(CLIENT_IP, None)),
            ),
        case("affinity: a backend that left the service is not chosen again")
            .seed(seed_affinity(L3_ID, 1, 1))
            .step(
                xdp(syn.build())
                    .checked(Reason::DnatNew, dnat_to_one_of(&syn, &[L1, L2]))
                    .effect(affinity_entry(CLIENT_IP, None)),
            ),
    ]
}

/// One client socket port reaching one backend through two frontends (two
/// Services sharing endpoints): the second flow keeps its address and gets
/// another source port; both replies go back to the right socket from the
/// right frontend.
fn port_clash_cases() -> Vec<Case> {
    let pod_a = tcp(POD, CLUSTER_IP, TCP_SYN);
    let pod_b = tcp(POD, NP_LOCAL, TCP_SYN);
    let pod_b_ack = tcp(POD, NP_LOCAL, TCP_ACK);
    let pod_a_ack = tcp(POD, CLUSTER_IP, TCP_ACK);
    let l1_to_pod = tcp(L1, POD, TCP_SYN | TCP_ACK).macs(NODE_MAC, CLIENT_MAC);
    let ext_a = tcp(CLIENT, NP_LOCAL, TCP_SYN);
    let ext_b = tcp(CLIENT, LB, TCP_SYN);
    let l1_to_client = tcp(L1, CLIENT, TCP_SYN | TCP_ACK).macs(NODE_MAC, CLIENT_MAC);
    const NP_REMOTE_2: SocketAddrV6 = sa(NODE, 30082);
    let rsyn = tcp(CLIENT, NP_REMOTE, TCP_SYN);
    let rsyn2 = tcp(CLIENT, NP_REMOTE_2, TCP_SYN);
    // The port the remapped flow POD -> NP_LOCAL got, from its service entry.
    let remapped_port = |dp: &TestDatapath| -> Result<u16, String> {
        let e = ct_get(dp, &service_key(POD, NP_LOCAL, IPPROTO_TCP))?;
        if e.flags & CT_F_SNAT == 0 {
            return Err(format!("the flow {POD} -> {NP_LOCAL} is not source-NATed"));
        }
        Ok(e.peer_port)
    };
    let left_from_remapped = move |dp: &TestDatapath, _: Window, out: &[u8]| {
        let (src, _) = ends(out)?;
        let port = remapped_port(dp)?;
        if port != src.port() {
            return Err(format!(
                "the flow's service entry holds port {port}, the packet left from {src}"
            ));
        }
        Ok(())
    };
    vec![
        case("port clash, pod path: second frontend to the same backend remaps the source port")
            .step(pod_ingress(pod_a.build()).passed(dnat(&pod_a, L1).build(), Reason::DnatNew))
            .step(
                pod_ingress(pod_b.build())
                    .checked(Reason::DnatNewPortRemapped, port_remapped(&pod_b, L1))
                    .effect(left_from_remapped),
            )
            .step(
                Step::after(TcProgram::PodEgress, |prev| {
                    Ok(answer(prev, Some(TCP_SYN | TCP_ACK))?.build())
                })
                .checked(Reason::RevnatReply, |prev, out| {
                    let reply = answer(prev, Some(TCP_SYN | TCP_ACK))?;
                    same(out, &between(&reply, NP_LOCAL, POD).build())
                }),
            )
            .step(
                pod_egress(l1_to_pod.build())
                    .passed(snat(&l1_to_pod, CLUSTER_IP).build(), Reason::RevnatReply),
            )
            .step(
                pod_ingress(pod_b_ack.build())
                    .checked(Reason::DnatEstablished, port_remapped(&pod_b_ack, L1))
                    .effect(left_from_remapped),
            ),
        case("port clash, pod path: the first flow is untouched by the second")
            .step(pod_ingress(pod_a.build()).passed(dnat(&pod_a, L1).build(), Reason::DnatNew))
            .step(
                pod_ingress(pod_b.build())
                    .checked(Reason::DnatNewPortRemapped, port_remapped(&pod_b, L1)),
            )
            .step(
                pod_ingress(pod_a_ack.build())
                    .passed(dnat(&pod_a_ack, L1).build(), Reason::DnatEstablished),
            ),
        case("port clash, pod path: a closed flow keeps its tuple for the backend's TIME_WAIT")
            .step(pod_ingress(pod_a.build()).passed(dnat(&pod_a, L1).build(), Reason::DnatNew))
            .step({
                let rst = tcp(POD, CLUSTER_IP, TCP_RST);
                pod_ingress(rst.build()).passed(dnat(&rst, L1).build(), Reason::DnatEstablished)
            })
            .step(
                pod_ingress(pod_b.build())
                    .checked(Reason::DnatNewPortRemapped, port_remapped(&pod_b, L1)),
            ),
        case("port clash at XDP: an outside client port reused for two frontends of one local backend")
            .step(xdp(ext_a.build()).passed(dnat(&ext_a, L1).build(), Reason::DnatNew))
            .step(
                xdp(ext_b.build())
                    .checked(Reason::DnatNewPortRemapped, port_remapped(&ext_b, L1))
                    .effect(ct_count(4))
                    .effect(snat_count(1)),
            )
            .step(
                Step::after(TcProgram::NodeEgress, |prev| {
                    Ok(answer(prev, Some(TCP_SYN | TCP_ACK))?.build())
                })
                .checked(Reason::RevnatReply, |prev, out| {
                    let reply = answer(prev, Some(TCP_SYN | TCP_ACK))?;
                    same(out, &between(&reply, LB, CLIENT).build())
                }),
            )
            .step(
                node_egress(l1_to_client.build())
                    .passed(snat(&l1_to_client, NP_LOCAL).build(), Reason::RevnatReply),
            ),
        case("port clash, remote backend: two node ports to one remote backend get two SNAT ports")
            .seed(|dp| {
                Ok(dp.add_frontend6(
                    NP_REMOTE_2,
                    IPPROTO_TCP,
                    SCOPE_EXTERNAL,
                    9,
                    NP,
                    0,
                    &[(R1_ID, R1, 0)],
                )?)
            })
            .step(xdp(rsyn.build()).checked(Reason::SnatNew, snat_to(&rsyn, NODE, R1)))
            .step({
                let check = snat_to(&rsyn2, NODE, R1);
                xdp(rsyn2.build())
                    .checked(Reason::SnatNew, move |prev, out| {
                        check(prev, out)?;
                        let (first, _) = ends(prev)?;
                        let (second, _) = ends(out)?;
                        if first == second {
                            return Err(format!("both flows left from {first}"));
                        }
                        Ok(())
                    })
                    .effect(snat_count(2))
                    .effect(ct_count(4))
            })
            .step(
                xdp_after(|prev| Ok(answer(prev, Some(TCP_SYN | TCP_ACK))?.build())).checked(
                    Reason::RevsnatReply,
                    |prev, out| {
                        let reply = answer(prev, Some(TCP_SYN | TCP_ACK))?;
                        same(out, &between(&reply, NP_REMOTE_2, CLIENT).build())
                    },
                ),
            ),
    ]
}

/// Fragmented datagrams through node ports: the first fragment is
/// translated as any packet and records where its later fragments go (in
/// `SVCNAT_FRAG6`, under the fragment header's id); they get the same
/// address rewrites (destination, and source when SNATed), in both
/// directions.
fn fragment_cases() -> Vec<Case> {
    const CHUNK: usize = 64;
    const ID: u32 = 0x5151_0001;
    const REPLY_ID: u32 = 0x6262_0002;
    let full = udp(CLIENT, NP_UDP).payload(&[7u8; 100]);
    let frags = fragment6(&full.build(), CHUNK, ID);
    // The remote backend's reply to the SNAT address and port `to`.
    let reply_full = |to: SocketAddrV6| udp(R2, to).macs(NODE_MAC, CLIENT_MAC).payload(&[9u8; 100]);
    // Later fragments carry no port: the same bytes whatever the SNAT port.
    let later_reply = fragment6(
        &reply_full(sa(NODE, SNAT_PORT_MIN)).build(),
        CHUNK,
        REPLY_ID,
    )[1]
    .clone();
    let later_reply_out = fragment6(
        &between(&reply_full(sa(NODE, SNAT_PORT_MIN)), NP_UDP, CLIENT).build(),
        CHUNK,
        REPLY_ID,
    )[1]
    .clone();
    let later_out = fragment6(
        &between(&full, sa(NODE, SNAT_PORT_MIN), R2).build(),
        CHUNK,
        ID,
    )[1]
    .clone();
    let first_to_remote = {
        let full = full.clone();
        move |_: &[u8], out: &[u8]| {
            let (src, _) = ends(out)?;
            if *src.ip() != NODE || !(SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&src.port()) {
                return Err(format!("source {src}, want [{NODE}]:{SNAT_PORT_MIN}.."));
            }
            same(
                out,
                &fragment6(&between(&full, src, R2).build(), CHUNK, ID)[0],
            )
        }
    };
    let local_full = udp(CLIENT, sa(NODE, 30054)).payload(&[8u8; 100]);
    let local = fragment6(&local_full.build(), CHUNK, ID);
    let local_want = fragment6(&dnat(&local_full, L1_DNS).build(), CHUNK, ID);
    vec![
        case("fragments at XDP: a datagram to a remote node port, and the reply")
            .step(
                xdp(frags[0].clone())
                    .checked(Reason::SnatNew, first_to_remote)
                    .effect(frag_entry(
                        frag_key(CLIENT_IP, NODE, ID, IPPROTO_UDP, CT_DIR_SERVICE),
                        Some(*R2.ip()),
                    ))
                    .effect(frag_entry(
                        frag_key(CLIENT_IP, NODE, ID, IPPROTO_UDP, FRAG_DIR_SNAT_SRC),
                        Some(NODE),
                    )),
            )
            .step(
                xdp_after(move |prev| {
                    let (src, _) = ends(prev)?;
                    Ok(fragment6(&reply_full(src).build(), CHUNK, REPLY_ID)[0].clone())
                })
                .checked(Reason::RevsnatReply, move |prev, out| {
                    // `prev` is the client's translated first fragment.
                    let (src, _) = ends(prev)?;
                    let want = fragment6(
                        &between(&reply_full(src), NP_UDP, CLIENT).build(),
                        CHUNK,
                        REPLY_ID,
                    );
                    same(out, &want[0])
                })
                .effect(frag_entry(
                    frag_key(*R2.ip(), NODE, REPLY_ID, IPPROTO_UDP, CT_DIR_REPLY),
                    Some(CLIENT_IP),
                ))
                .effect(frag_entry(
                    frag_key(*R2.ip(), NODE, REPLY_ID, IPPROTO_UDP, FRAG_DIR_REVSNAT_SRC),
                    Some(NODE),
                )),
            )
            .step(xdp(frags[1].clone()).checked(Reason::NatFragment, later_fragment_is(later_out)))
            .step(
                xdp(later_reply).checked(Reason::NatFragment, later_fragment_is(later_reply_out)),
            ),
        case("fragments at XDP: a datagram to a local node port keeps its source")
            .seed(seed_np_local_udp)
            .step(
                xdp(local[0].clone())
                    .passed(local_want[0].clone(), Reason::DnatNew)
                    .effect(frag_entry(
                        frag_key(CLIENT_IP, NODE, ID, IPPROTO_UDP, CT_DIR_SERVICE),
                        Some(*L1_DNS.ip()),
                    ))
                    .effect(frag_entry(
                        frag_key(CLIENT_IP, NODE, ID, IPPROTO_UDP, FRAG_DIR_SNAT_SRC),
                        None,
                    )),
            )
            .step(xdp(local[1].clone()).passed(local_want[1].clone(), Reason::NatFragment)),
        case("fragments at XDP: a later fragment before its first one passes untracked")
            .step(xdp(frags[1].clone()).untouched(Reason::PassFragmentUntracked)),
        case("fragments at XDP: a first fragment to no service passes, not tracked").step(
            xdp(fragment6(
                &udp(CLIENT, sa(NODE, 9999)).payload(&[1; 100]).build(),
                CHUNK,
                ID,
            )[0]
            .clone())
            .untouched(Reason::PassNotService)
            .effect(frag_entry(
                frag_key(CLIENT_IP, NODE, ID, IPPROTO_UDP, CT_DIR_SERVICE),
                None,
            )),
        ),
    ]
}

/// Conntrack you can trust, outside the node.
fn conntrack_cases() -> Vec<Case> {
    const CLUSTER_UDP: SocketAddrV6 = sa(ip6(0xffff, 0, 1), 53);
    let syn = tcp(CLIENT, NP_LOCAL, TCP_SYN);
    let ack = tcp(CLIENT, NP_LOCAL, TCP_ACK);
    let established = Flow6 {
        client: CLIENT,
        vip: NP_LOCAL,
        backend: L1,
        proto: IPPROTO_TCP,
        backend_id: L1_ID,
        svc_id: NP_LOCAL_ID,
        flags: CT_F_SEEN_NON_SYN | CT_F_REPLIED,
        created_ns: monotonic_ns(),
        expires_ns: monotonic_ns() + 3600 * NS,
    };
    // The remote backend's reply to a pod, in two fragments.
    let reply = udp(R2, POD).macs(NODE_MAC, CLIENT_MAC).payload(&[5u8; 100]);
    let frags = fragment6(&reply.build(), 64, 0x7373);
    let want = fragment6(&snat(&reply, CLUSTER_UDP).build(), 64, 0x7373);
    let (f0, f1) = (frags[0].clone(), frags[1].clone());
    vec![
        case("outside: a TCP segment of no known flow is dropped, and opens nothing").step(
            xdp(ack.build())
                .dropped(Reason::DropTcpNoFlow)
                .effect(ct_count(0))
                .effect(snat_count(0)),
        ),
        case("outside: a TCP segment of no known flow to a remote node port opens no SNAT port")
            .step(
                xdp(tcp(CLIENT, NP_REMOTE, TCP_ACK | TCP_PSH)
                    .payload(b"x")
                    .build())
                .dropped(Reason::DropTcpNoFlow)
                .effect(ct_count(0))
                .effect(snat_count(0)),
            ),
        case(
            "outside: an established flow keeps its backend when the service loses every endpoint",
        )
        .seed(move |dp| {
            dp.add_frontend6(
                NP_LOCAL,
                IPPROTO_TCP,
                SCOPE_EXTERNAL,
                NP_LOCAL_ID,
                NP,
                0,
                &[],
            )?;
            Ok(dp.add_flow6(&established)?)
        })
        .step(xdp(ack.build()).passed(dnat(&ack, L1).build(), Reason::DnatEstablished))
        .step({
            let other = tcp(sa(CLIENT_IP, 40001), NP_LOCAL, TCP_SYN);
            xdp(other.build())
                .untouched(Reason::PassNoBackend)
                .effect(ct_count(2))
        }),
        case("outside: a RST far outside the window the client reached keeps the flow")
            .step(xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew))
            .step({
                let rst = tcp(CLIENT, NP_LOCAL, TCP_RST).seq(1_000_001 + (64 << 20));
                xdp(rst.build())
                    .passed(dnat(&rst, L1).build(), Reason::RstOutOfWindow)
                    .effect(ct_flags(CLIENT, NP_LOCAL, IPPROTO_TCP, 0, CT_F_CLOSED))
            })
            .step({
                let rst = tcp(CLIENT, NP_LOCAL, TCP_RST).seq(1_000_001);
                xdp(rst.build())
                    .passed(dnat(&rst, L1).build(), Reason::DnatEstablished)
                    .effect(ct_flags(CLIENT, NP_LOCAL, IPPROTO_TCP, CT_F_CLOSED, 0))
            })
            .step(
                // Closed by the RST in the window: a new SYN chooses anew.
                xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew),
            ),
        case("fragments: a remote backend's reply to a pod is translated at TC only, not at XDP")
            .seed(|dp| {
                Ok(dp.add_frontend6(
                    CLUSTER_UDP,
                    IPPROTO_UDP,
                    SCOPE_EXTERNAL,
                    12,
                    0,
                    0,
                    &[(R2_ID, R2, 0)],
                )?)
            })
            .step({
                let q = udp(POD, CLUSTER_UDP);
                pod_ingress(q.build()).passed(dnat(&q, R2).build(), Reason::DnatNew)
            })
            .step(xdp(f0.clone()).untouched(Reason::PassNotService))
            .step(pod_egress(f0).passed(want[0].clone(), Reason::RevnatReply))
            // Its later fragment reaches XDP after TC recorded the first:
            // XDP must not take that record for a destination rewrite.
            .step(xdp(f1.clone()).untouched(Reason::PassFragmentUntracked))
            .step(pod_egress(f1).passed(want[1].clone(), Reason::NatFragment)),
    ]
}

/// What is not for the node-port path: passed untouched.
fn passed_cases() -> Vec<Case> {
    vec![
        case("NDP neighbor solicitation for the node address passes XDP untouched").step(
            xdp(PacketBuilder::neighbor_solicitation(CLIENT_IP, CLIENT_MAC, NODE).build())
                .untouched(Reason::PassNotService),
        ),
        case("NDP neighbor advertisement passes XDP untouched").step(
            xdp(PacketBuilder::neighbor_advertisement(
                *R1.ip(),
                NODE_MAC,
                NODE,
                CLIENT_MAC,
                *R1.ip(),
                NA_SOLICITED | NA_OVERRIDE,
            )
            .build())
            .untouched(Reason::PassNotService),
        ),
        case("ICMPv6 echo to the node address passes XDP untouched").step(
            xdp(PacketBuilder::icmp_echo_request(CLIENT_IP, NODE, 7, 1)
                .macs(CLIENT_MAC, NODE_MAC)
                .payload(b"ping")
                .build())
            .untouched(Reason::PassNotService),
        ),
        case("a frame that is not IP (LLDP) passes XDP untouched").step(
            xdp(ethernet_frame(
                [0x01, 0x80, 0xc2, 0, 0, 0x0e],
                CLIENT_MAC,
                0x88cc,
                &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1, 0, 0],
            ))
            .untouched(Reason::PassNotIp),
        ),
    ]
}

fn cases() -> Vec<Case> {
    let mut t = Vec::new();
    t.extend(local_cases());
    t.extend(remote_cases());
    t.extend(policy_cases());
    t.extend(affinity_cases());
    t.extend(port_clash_cases());
    t.extend(fragment_cases());
    t.extend(conntrack_cases());
    t.extend(passed_cases());
    t
}

#[test]
fn node_fixtures_ipv6() {
    skip_unless!(Needs::prog_run());
    run_table(&cases(), seed_world);
}

/// The fixtures' world in a datapath whose IPv6 conntrack map holds
/// `entries`.
fn world_with_conntrack_of(entries: u32) -> TestDatapath {
    let sizes: Vec<(&str, u32)> = svcnat_testkit::datapath::test_map_sizes()
        .into_iter()
        .map(|(n, s)| {
            (
                n,
                if n == proxy_common::map_names::CT6 {
                    entries
                } else {
                    s
                },
            )
        })
        .collect();
    let mut dp = TestDatapath::load_with_sizes(&sizes).unwrap_or_else(|e| panic!("load: {e}"));
    seed_world(&mut dp).unwrap_or_else(|e| panic!("seed: {e}"));
    dp
}

/// A source address in 2001:db8:8000::/33 and a port, both made up from `j`.
fn made_up(j: u32, port_base: u32) -> SocketAddrV6 {
    sa(
        Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x8000 | (j >> 16) as u16,
            j as u16,
            0,
            0,
            0,
            1,
        ),
        (port_base + j % 50_000) as u16,
    )
}

/// A flood of made-up TCP segments from outside to an IPv6 node port, three
/// times as many as the conntrack map holds and each sent twice, leaves
/// every established flow through that node port intact: only a SYN opens
/// a flow from outside.
#[test]
fn a_flood_of_flowless_segments_evicts_no_established_ipv6_flow() {
    skip_unless!(Needs::prog_run());
    const CT_SIZE: u32 = 4096;
    const FLOWS: u16 = 200;
    let dp = world_with_conntrack_of(CT_SIZE);
    let run = |prog, frame: Vec<u8>| {
        dp.run(prog, &frame)
            .unwrap_or_else(|e| panic!("test run: {e}"))
    };
    let client = |i: u16| sa(CLIENT_IP, 20_000 + i);
    for i in 0..FLOWS {
        let out = run(
            TcProgram::NodeXdp,
            tcp(client(i), NP_LOCAL, TCP_SYN).build(),
        );
        assert_eq!(out.retval, XDP_PASS, "flow {i}: SYN");
        let synack = tcp(L1, client(i), TCP_SYN | TCP_ACK).macs(NODE_MAC, CLIENT_MAC);
        run(TcProgram::NodeEgress, synack.build());
        run(
            TcProgram::NodeXdp,
            tcp(client(i), NP_LOCAL, TCP_ACK).seq(1_000_001).build(),
        );
    }
    let v6 = dp.v6().expect("IPv6 maps");
    assert_eq!(v6.ct6.keys().count(), 2 * usize::from(FLOWS));
    let before = dp.stat(Reason::DropTcpNoFlow).expect("stats").packets;
    let flood = 3 * CT_SIZE;
    for j in 0..flood {
        let seg = tcp(made_up(j, 1024), NP_LOCAL, TCP_ACK)
            .seq(j.wrapping_mul(2_654_435_761))
            .build();
        for _ in 0..2 {
            let out = run(TcProgram::NodeXdp, seg.clone());
            assert_eq!(out.retval, XDP_DROP, "flood segment {j}");
        }
    }
    let dropped = dp.stat(Reason::DropTcpNoFlow).expect("stats").packets - before;
    assert_eq!(
        dropped,
        2 * u64::from(flood),
        "every flood segment dropped and counted"
    );
    let mut broken = Vec::new();
    for i in 0..FLOWS {
        let before = dp.stat(Reason::DnatEstablished).expect("stats").packets;
        let data = tcp(client(i), NP_LOCAL, TCP_ACK | TCP_PSH)
            .seq(1_000_001)
            .payload(b"after the flood");
        let out = run(TcProgram::NodeXdp, data.build());
        let after = dp.stat(Reason::DnatEstablished).expect("stats").packets;
        if out.retval != XDP_PASS || out.data_out != dnat(&data, L1).build() || after != before + 1
        {
            broken.push(i);
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {FLOWS} established flows broken by the flood: {broken:?}",
        broken.len()
    );
    assert_eq!(
        v6.ct6.keys().count(),
        2 * usize::from(FLOWS),
        "the flood left conntrack entries"
    );
}

/// A flood of IPv6 SYNs bigger than the conntrack map does evict entries
/// (the map is an LRU), and shows as the eviction count the agent derives
/// from the datapath's count of created entries.
#[test]
fn an_ipv6_syn_flood_bigger_than_the_map_shows_as_evictions() {
    skip_unless!(Needs::prog_run());
    const CT_SIZE: u32 = 2048;
    let dp = world_with_conntrack_of(CT_SIZE);
    let mut estimate = svcnat::metrics::EvictionEstimate::default();
    assert_eq!(
        estimate.update(0, 0, 0),
        0,
        "the first sample is the baseline"
    );
    let flows = 2 * CT_SIZE;
    for j in 0..flows {
        let out = dp
            .run(
                TcProgram::NodeXdp,
                &tcp(made_up(j, 1024), NP_LOCAL, TCP_SYN).build(),
            )
            .unwrap_or_else(|e| panic!("test run: {e}"));
        assert_eq!(out.retval, XDP_PASS, "SYN {j}");
    }
    let created = dp.created_entries().expect("created counter");
    assert_eq!(created, 2 * u64::from(flows), "two entries per new flow");
    let entries = dp.v6().expect("IPv6 maps").ct6.keys().count() as u64;
    assert!(
        entries <= u64::from(CT_SIZE),
        "{entries} entries in a map of {CT_SIZE}"
    );
    let evicted = estimate.update(created, entries, 0);
    assert_eq!(evicted, created - entries);
    assert!(
        evicted >= created - u64::from(CT_SIZE),
        "{evicted} evictions"
    );
}
