//! Packet fixtures for the node programs (XDP on node interfaces, TC egress
//! on node interfaces), run through `BPF_PROG_TEST_RUN`: node ports with
//! local and remote backends, SNAT port allocation and its reverse, traffic
//! policies, session affinity, source ranges.
//!
//! The shape of `tests/fixtures.rs` (Katran's): a table of cases, each
//! {description, seeded maps, steps of {program, input frame, expected
//! verdict, expected output, expected stats reason, map effects}}; a fresh
//! object per case. A step's input and output check may depend on the
//! previous step's output (the SNAT port is chosen at random).
//!
//! Needs root and the eBPF object; without them the test prints why and
//! passes. `SVCNAT_FIXTURE=substring` runs only the matching cases.

use std::net::{Ipv4Addr, SocketAddrV4};

use proxy_common::{
    AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_CLOSED,
    CT_F_REPLIED, CT_F_SEEN_NON_SYN, CT_F_SNAT, Ct4Key, CtValue, IPPROTO_TCP, IPPROTO_UDP,
    REMAP_PORT_MAX, REMAP_PORT_MIN, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL, SNAT_PORT_MAX,
    SNAT_PORT_MIN, SVC_FLAG_EXTERNAL, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT,
    SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, Snat4Value,
};
use svcnat_testkit::{
    datapath::{
        Flow, TC_ACT_SHOT, TEST_RUN_IFINDEX, TcProgram, TestDatapath, XDP_DROP, XDP_PASS,
        monotonic_ns,
    },
    fixture::{Case, Expect, Step, Window, case, run_table},
    packet::{L4, PacketBuilder, TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN, parse},
    skip::Needs,
    skip_unless,
};

const NS: u64 = 1_000_000_000;

const fn sa(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

/// This node's address on its node interface.
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// A client outside the cluster.
const CLIENT: SocketAddrV4 = sa(198, 18, 200, 5, 40000);
/// A client outside the load balancer's source ranges.
const STRANGER: SocketAddrV4 = sa(198, 18, 201, 5, 40000);
/// A pod of this node.
const POD: SocketAddrV4 = sa(198, 18, 10, 50, 41000);

/// Node port, TCP, one local backend (L1).
const NP_LOCAL: SocketAddrV4 = SocketAddrV4::new(NODE, 30080);
/// Node port, TCP, one remote backend (R1).
const NP_REMOTE: SocketAddrV4 = SocketAddrV4::new(NODE, 30081);
/// Node port, UDP, one remote backend (R2).
const NP_UDP: SocketAddrV4 = SocketAddrV4::new(NODE, 30053);
/// Load-balancer IP with source ranges (198.18.200.0/24), local backend L1.
const LB: SocketAddrV4 = sa(198, 19, 50, 1, 80);
/// Node port with externalTrafficPolicy Local and no local backend; pods
/// get the internal scope (R1).
const NP_ETP_LOCAL: SocketAddrV4 = SocketAddrV4::new(NODE, 30090);
/// Node port with session affinity (100 s), local backends L1 and L2.
const NP_AFFINITY: SocketAddrV4 = SocketAddrV4::new(NODE, 30070);
/// A cluster IP (not translated at XDP).
const CLUSTER_IP: SocketAddrV4 = sa(198, 19, 0, 1, 80);

const L1: SocketAddrV4 = sa(198, 18, 10, 11, 8080);
const L1_ID: u32 = 11;
const L2: SocketAddrV4 = sa(198, 18, 10, 12, 8080);
const L2_ID: u32 = 12;
const L3_ID: u32 = 13;
const R1: SocketAddrV4 = sa(198, 18, 20, 21, 8080);
const R1_ID: u32 = 21;
const R2: SocketAddrV4 = sa(198, 18, 20, 22, 5353);
const R2_ID: u32 = 22;

const AFFINITY_ID: u32 = 7;
const AFFINITY_S: u32 = 100;

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
    dp.set_node_address(TEST_RUN_IFINDEX, NODE)
        .map_err(e("node"))?;
    dp.add_frontend(
        NP_LOCAL,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        1,
        NP,
        0,
        &[(L1_ID, L1, LOCAL)],
    )
    .map_err(e("NP_LOCAL"))?;
    dp.add_frontend(
        NP_REMOTE,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        2,
        NP,
        0,
        &[(R1_ID, R1, 0)],
    )
    .map_err(e("NP_REMOTE"))?;
    dp.add_frontend(
        NP_UDP,
        IPPROTO_UDP,
        SCOPE_EXTERNAL,
        3,
        NP,
        0,
        &[(R2_ID, R2, 0)],
    )
    .map_err(e("NP_UDP"))?;
    dp.add_frontend(
        LB,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        4,
        EXT | SVC_FLAG_SOURCE_RANGES,
        0,
        &[(L1_ID, L1, LOCAL)],
    )
    .map_err(e("LB"))?;
    dp.add_source_range(4, Ipv4Addr::new(198, 18, 200, 0), 24)
        .map_err(e("LB ranges"))?;
    dp.add_frontend(
        NP_ETP_LOCAL,
        IPPROTO_TCP,
        SCOPE_INTERNAL,
        6,
        NP,
        0,
        &[(R1_ID, R1, 0)],
    )
    .map_err(e("NP_ETP_LOCAL internal"))?;
    dp.add_frontend(
        NP_ETP_LOCAL,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        5,
        NP | SVC_FLAG_LOCAL_ONLY | SVC_FLAG_TWO_SCOPES,
        0,
        &[],
    )
    .map_err(e("NP_ETP_LOCAL"))?;
    dp.add_frontend(
        NP_AFFINITY,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        AFFINITY_ID,
        NP,
        AFFINITY_S,
        &[(L1_ID, L1, LOCAL), (L2_ID, L2, LOCAL)],
    )
    .map_err(e("NP_AFFINITY"))?;
    dp.add_frontend(
        CLUSTER_IP,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        8,
        0,
        0,
        &[(L1_ID, L1, LOCAL)],
    )
    .map_err(e("CLUSTER_IP"))?;
    dp.add_vip_marker(CLUSTER_IP)
        .map_err(e("CLUSTER_IP marker"))
}

// ---------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> PacketBuilder {
    PacketBuilder::tcp(src, dst)
        .macs(CLIENT_MAC, NODE_MAC)
        .flags(flags)
        .seq(1_000_000)
        .ack_seq(if flags & TCP_ACK != 0 { 7_000_000 } else { 0 })
        .ttl(61)
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> PacketBuilder {
    PacketBuilder::udp(src, dst)
        .macs(CLIENT_MAC, NODE_MAC)
        .ttl(61)
        .payload(b"\x12\x34\x01\x00\x00\x01")
}

fn ports(p: &PacketBuilder) -> (u16, u16) {
    match &p.l4 {
        L4::Tcp(t) => (t.sport, t.dport),
        L4::Udp(u) => (u.sport, u.dport),
        _ => (0, 0),
    }
}

/// `p` with the destination rewritten.
fn dnat(p: &PacketBuilder, to: SocketAddrV4) -> PacketBuilder {
    let (sport, _) = ports(p);
    p.clone().addrs(p.ip.src, *to.ip()).ports(sport, to.port())
}

/// `p` with the source rewritten.
fn snat(p: &PacketBuilder, from: SocketAddrV4) -> PacketBuilder {
    let (_, dport) = ports(p);
    p.clone()
        .addrs(*from.ip(), p.ip.dst)
        .ports(from.port(), dport)
}

/// Source and destination of a frame.
fn ends(frame: &[u8]) -> Result<(SocketAddrV4, SocketAddrV4), String> {
    let p = parse(frame)?;
    let ip = p.ip()?;
    Ok((ip.source()?, ip.destination()?))
}

// ---------------------------------------------------------------------------
// The table's shape (the runner is svcnat_testkit::fixture)
// ---------------------------------------------------------------------------

/// XDP on the node interface.
fn xdp(input: Vec<u8>) -> Step {
    Step::on(TcProgram::NodeXdp, input)
}

/// XDP, with an input made from the previous step's output.
fn xdp_after(f: impl Fn(&[u8]) -> Result<Vec<u8>, String> + 'static) -> Step {
    Step::after(TcProgram::NodeXdp, f)
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// The output goes from this node to `backend`, from a port of the SNAT range.
fn snat_to(backend: SocketAddrV4) -> impl Fn(&[u8], &[u8]) -> Result<(), String> {
    move |_, out| {
        let (src, dst) = ends(out)?;
        if dst != backend {
            return Err(format!("destination {dst}, want {backend}"));
        }
        if *src.ip() != NODE || !(SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&src.port()) {
            return Err(format!(
                "source {src}, want {NODE}:{SNAT_PORT_MIN}..={SNAT_PORT_MAX}"
            ));
        }
        Ok(())
    }
}

/// The backend's reply to the SNATed packet `prev` (to the node's port).
fn reply_to_snat(prev: &[u8], flags: u8, udp_proto: bool) -> Result<Vec<u8>, String> {
    let (src, dst) = ends(prev)?;
    Ok(if udp_proto {
        udp(dst, src).macs(NODE_MAC, CLIENT_MAC).build()
    } else {
        tcp(dst, src, flags).macs(NODE_MAC, CLIENT_MAC).build()
    })
}

/// The SNAT entry of the flow whose SNATed packet is `out` (the reverse
/// one; layout 3 has no forward entry).
fn snat_entries(
    client: SocketAddrV4,
    proto: u8,
) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, _, out| {
        let (src, dst) = ends(out)?;
        let rkey = Ct4Key {
            saddr: dst.ip().octets(),
            daddr: src.ip().octets(),
            sport: dst.port(),
            dport: src.port(),
            proto,
            dir: CT_DIR_REPLY,
            pad: 0,
        };
        let back = dp
            .snat4
            .get(&rkey, 0)
            .map_err(|e| format!("reverse SNAT entry {rkey:?}: {e}"))?;
        let want = (client.ip().octets(), client.port());
        if (back.addr, back.port) != want {
            return Err(format!("reverse SNAT entry {back:?}, want {want:?}"));
        }
        if dp.snat4.keys().count() != 1 {
            return Err(format!("{} SNAT entries, want 1", dp.snat4.keys().count()));
        }
        Ok(())
    }
}

/// Every port of the SNAT range towards R1 taken by a reverse SNAT entry
/// of another client (198.18.250.1, one port each), with
/// (`Some((flags, seconds to expiry))`) or without the conntrack entries of
/// its flow. Reverse entries without conntrack entries are stamped `age_s`
/// seconds ago.
fn seed_snat_range(
    dp: &mut TestDatapath,
    flow: Option<(u8, u64)>,
    age_s: u16,
) -> Result<(), String> {
    let other = [198, 18, 250, 1];
    let now = monotonic_ns();
    let stamp = ((now / NS) as u16).wrapping_sub(age_s);
    for port in SNAT_PORT_MIN..=SNAT_PORT_MAX {
        let k = Ct4Key {
            saddr: R1.ip().octets(),
            daddr: NODE.octets(),
            sport: R1.port(),
            dport: port,
            proto: IPPROTO_TCP,
            dir: CT_DIR_REPLY,
            pad: 0,
        };
        let v = Snat4Value {
            addr: other,
            port,
            stamp,
        };
        dp.snat4
            .insert(k, v, 0)
            .map_err(|e| format!("seed snat: {e}"))?;
        if let Some((flags, left_s)) = flow {
            let e = CtValue {
                nat_addr: NP_REMOTE.ip().octets(),
                nat_port: NP_REMOTE.port(),
                flags: flags | CT_F_SNAT | CT_F_SEEN_NON_SYN | CT_F_REPLIED,
                pad: 0,
                backend_id: R1_ID,
                svc_id: 2,
                created_ns: now,
                expires_ns: now + left_s * NS,
                seq_next: 0,
                peer_addr: other,
                peer_port: port,
                pad2: 0,
                pad3: 0,
            };
            dp.ct4
                .insert(k, e, 0)
                .map_err(|e| format!("seed conntrack: {e}"))?;
            // The flow's service-direction entry decides whether it is over.
            let skey = Ct4Key {
                saddr: other,
                daddr: NP_REMOTE.ip().octets(),
                sport: port,
                dport: NP_REMOTE.port(),
                proto: IPPROTO_TCP,
                dir: CT_DIR_SERVICE,
                pad: 0,
            };
            let se = CtValue {
                nat_addr: R1.ip().octets(),
                nat_port: R1.port(),
                peer_addr: NODE.octets(),
                ..e
            };
            dp.ct4
                .insert(skey, se, 0)
                .map_err(|e| format!("seed conntrack: {e}"))?;
        }
    }
    Ok(())
}

fn affinity_entry(
    client: Ipv4Addr,
    backend_id: Option<u32>,
) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, w, out| {
        let key = AffinityKey {
            client: client.octets(),
            svc_id: AFFINITY_ID,
        };
        let a = dp
            .affinity4
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
        if a.last_ns < w.before || a.last_ns > w.after {
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
        dp.affinity4
            .insert(
                AffinityKey {
                    client: CLIENT.ip().octets(),
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

/// The output goes from `client`'s address, from a port of the SNAT range
/// (not `client`'s own), to `backend`.
fn port_remapped(
    client: SocketAddrV4,
    backend: SocketAddrV4,
) -> impl Fn(&[u8], &[u8]) -> Result<(), String> {
    move |_, out| {
        let (src, dst) = ends(out)?;
        if dst != backend {
            return Err(format!("destination {dst}, want {backend}"));
        }
        if src.ip() != client.ip()
            || src.port() == client.port()
            || !(REMAP_PORT_MIN..=REMAP_PORT_MAX).contains(&src.port())
        {
            return Err(format!(
                "source {src}, want {}:{REMAP_PORT_MIN}..={REMAP_PORT_MAX} but not {}",
                client.ip(),
                client.port()
            ));
        }
        Ok(())
    }
}

/// The output goes from `from` to `to`.
fn between(from: SocketAddrV4, to: SocketAddrV4) -> impl Fn(&[u8], &[u8]) -> Result<(), String> {
    move |_, out| {
        let (src, dst) = ends(out)?;
        if src != from || dst != to {
            return Err(format!("{src} -> {dst}, want {from} -> {to}"));
        }
        Ok(())
    }
}

/// `backend`'s TCP reply to the packet `prev` (which reached it).
fn reply_of(prev: &[u8], flags: u8) -> Result<Vec<u8>, String> {
    let (src, dst) = ends(prev)?;
    Ok(tcp(dst, src, flags).macs(NODE_MAC, CLIENT_MAC).build())
}

/// The source port the conntrack service entry of the flow `client ->
/// frontend` writes (the port it was source-NATed to).
fn snat_port_of(
    dp: &TestDatapath,
    client: SocketAddrV4,
    frontend: SocketAddrV4,
) -> Result<u16, String> {
    let key = Ct4Key {
        saddr: client.ip().octets(),
        daddr: frontend.ip().octets(),
        sport: client.port(),
        dport: frontend.port(),
        proto: IPPROTO_TCP,
        dir: 0,
        pad: 0,
    };
    let e = dp
        .ct4
        .get(&key, 0)
        .map_err(|e| format!("conntrack entry of {client} -> {frontend}: {e}"))?;
    if e.flags & CT_F_SNAT == 0 {
        return Err(format!(
            "the flow {client} -> {frontend} is not source-NATed"
        ));
    }
    Ok(e.peer_port)
}

/// One client socket port reaching one backend through two frontends (two
/// Services sharing endpoints): the backend would see one connection where
/// there are two, and the reply entries would collide. The second flow
/// keeps its address and gets another source port; both replies go back
/// to the right socket from the right frontend.
fn port_clash_cases() -> Vec<Case> {
    let pod_a = tcp(POD, CLUSTER_IP, TCP_SYN);
    let pod_b = tcp(POD, NP_LOCAL, TCP_SYN);
    let pod_b_ack = tcp(POD, NP_LOCAL, TCP_ACK);
    let l1_to_pod = tcp(L1, POD, TCP_SYN | TCP_ACK).macs(NODE_MAC, CLIENT_MAC);
    let ext_a = tcp(CLIENT, NP_LOCAL, TCP_SYN);
    let ext_b = tcp(CLIENT, LB, TCP_SYN);
    let l1_to_client = tcp(L1, CLIENT, TCP_SYN | TCP_ACK).macs(NODE_MAC, CLIENT_MAC);
    const NP_REMOTE_2: SocketAddrV4 = SocketAddrV4::new(NODE, 30082);
    vec![
        case("port clash, pod path: second frontend to the same backend remaps the source port")
            .step(Step::on(TcProgram::PodIngress, pod_a.build()).passed(dnat(&pod_a, L1).build(), Reason::DnatNew))
            .step(
                Step::on(TcProgram::PodIngress, pod_b.build())
                    .checked(Reason::DnatNewPortRemapped, port_remapped(POD, L1))
                    .effect(|dp, _, out| {
                        let (src, _) = ends(out)?;
                        let port = snat_port_of(dp, POD, NP_LOCAL)?;
                        if port != src.port() {
                            return Err(format!("SNAT entry holds port {port}, packet left from {src}"));
                        }
                        Ok(())
                    }),
            )
            .step(
                Step::after(TcProgram::PodEgress, |prev| reply_of(prev, TCP_SYN | TCP_ACK))
                    .checked(Reason::RevnatReply, between(NP_LOCAL, POD)),
            )
            .step(
                Step::on(TcProgram::PodEgress, l1_to_pod.build())
                    .passed(snat(&l1_to_pod, CLUSTER_IP).build(), Reason::RevnatReply),
            )
            .step(
                Step::on(TcProgram::PodIngress, pod_b_ack.build()).checked(
                    Reason::DnatEstablished,
                    port_remapped(POD, L1),
                ).effect(|dp, _, out| {
                    let (src, _) = ends(out)?;
                    let port = snat_port_of(dp, POD, NP_LOCAL)?;
                    if port != src.port() {
                        return Err(format!("established packet left from {src}, flow has port {port}"));
                    }
                    Ok(())
                }),
            ),
        case("port clash, pod path: the first flow is untouched by the second")
            .step(Step::on(TcProgram::PodIngress, pod_a.build()).passed(dnat(&pod_a, L1).build(), Reason::DnatNew))
            .step(Step::on(TcProgram::PodIngress, pod_b.build()).checked(Reason::DnatNewPortRemapped, port_remapped(POD, L1)))
            .step(
                Step::on(TcProgram::PodIngress, tcp(POD, CLUSTER_IP, TCP_ACK).build())
                    .passed(dnat(&tcp(POD, CLUSTER_IP, TCP_ACK), L1).build(), Reason::DnatEstablished),
            ),
        case("port clash, pod path: a closed flow keeps its tuple for the backend's TIME_WAIT")
            .step(
                Step::on(TcProgram::PodIngress, pod_a.build())
                    .passed(dnat(&pod_a, L1).build(), Reason::DnatNew),
            )
            .step({
                let rst = tcp(POD, CLUSTER_IP, TCP_RST);
                Step::on(TcProgram::PodIngress, rst.build())
                    .passed(dnat(&rst, L1).build(), Reason::DnatEstablished)
            })
            .step(
                Step::on(TcProgram::PodIngress, pod_b.build())
                    .checked(Reason::DnatNewPortRemapped, port_remapped(POD, L1)),
            ),
        case("port clash at XDP: an outside client port reused for two frontends of one local backend")
            .step(xdp(ext_a.build()).passed(dnat(&ext_a, L1).build(), Reason::DnatNew))
            .step(xdp(ext_b.build()).checked(Reason::DnatNewPortRemapped, port_remapped(CLIENT, L1)))
            .step(
                Step::after(TcProgram::NodeEgress, |prev| reply_of(prev, TCP_SYN | TCP_ACK))
                    .checked(Reason::RevnatReply, between(LB, CLIENT)),
            )
            .step(
                Step::on(TcProgram::NodeEgress, l1_to_client.build())
                    .passed(snat(&l1_to_client, NP_LOCAL).build(), Reason::RevnatReply),
            ),
        case("port clash, remote backend: two node ports to one remote backend get two SNAT ports")
            .seed(|dp| {
                dp.add_frontend(NP_REMOTE_2, IPPROTO_TCP, SCOPE_EXTERNAL, 9, NP, 0, &[(R1_ID, R1, 0)])
                    .map_err(|e| format!("seed NP_REMOTE_2: {e}"))
            })
            .step(xdp(rsyn_of(NP_REMOTE)).checked(Reason::SnatNew, snat_to(R1)))
            .step(xdp(rsyn_of(NP_REMOTE_2)).checked(Reason::SnatNew, |prev, out| {
                let (first, _) = ends(prev)?;
                let (second, dst) = ends(out)?;
                if dst != R1 || first == second {
                    return Err(format!("second flow {second} -> {dst}, first left from {first}"));
                }
                Ok(())
            }).effect(|dp, _, _| {
                let n = dp.snat4.keys().count();
                if n != 2 {
                    return Err(format!("{n} SNAT entries, want 2 (one per flow)"));
                }
                Ok(())
            }))
            .step(
                xdp_after(|prev| reply_to_snat(prev, TCP_SYN | TCP_ACK, false))
                    .checked(Reason::RevsnatReply, between(NP_REMOTE_2, CLIENT)),
            ),
    ]
}

/// Source and destination addresses of a frame (later fragments have no
/// ports to parse).
fn addrs_of(frame: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    if frame.len() < 34 {
        return Err(format!("{} bytes: no IPv4 header", frame.len()));
    }
    let a = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    Ok((a(26), a(30)))
}

/// The output goes from `from` to `to` (addresses only).
fn addrs_between(from: Ipv4Addr, to: Ipv4Addr) -> impl Fn(&[u8], &[u8]) -> Result<(), String> {
    move |_, out| {
        let (src, dst) = addrs_of(out)?;
        if src != from || dst != to {
            return Err(format!("{src} -> {dst}, want {from} -> {to}"));
        }
        Ok(())
    }
}

/// A UDP datagram of `client` to `frontend`, split into two fragments: the
/// UDP header alone, then the payload.
fn udp_fragments(client: SocketAddrV4, frontend: SocketAddrV4) -> Vec<Vec<u8>> {
    let full = udp(client, frontend).id(0x5151).payload(&[7u8; 40]).build();
    svcnat_testkit::packet::fragment(&full, 8)
}

/// Fragmented datagrams through node ports: the first fragment is
/// translated as any packet and records where its later fragments go; they
/// get the same address rewrites (destination, and source when SNATed), in
/// both directions.
fn fragment_cases() -> Vec<Case> {
    const NP_LOCAL_UDP: SocketAddrV4 = SocketAddrV4::new(NODE, 30054);
    const L1_DNS: SocketAddrV4 = sa(198, 18, 10, 11, 5353);
    let remote = udp_fragments(CLIENT, NP_UDP);
    let local = udp_fragments(CLIENT, NP_LOCAL_UDP);
    // The remote backend's reply: its later fragment carries no port, so any
    // reply datagram with the same addresses and id stands for it.
    let reply_frags = |to: SocketAddrV4| {
        let full = udp(R2, to)
            .macs(NODE_MAC, CLIENT_MAC)
            .id(0x6262)
            .payload(&[9u8; 40])
            .build();
        svcnat_testkit::packet::fragment(&full, 8)
    };
    let later_reply = reply_frags(SocketAddrV4::new(NODE, SNAT_PORT_MIN))[1].clone();
    vec![
        case("fragments at XDP: a datagram to a remote node port, and the reply")
            .step(xdp(remote[0].clone()).checked(Reason::SnatNew, snat_to(R2)))
            .step(
                xdp_after(move |prev| {
                    let (src, _) = ends(prev)?;
                    Ok(reply_frags(src)[0].clone())
                })
                .checked(Reason::RevsnatReply, between(NP_UDP, CLIENT)),
            )
            .step(
                xdp(remote[1].clone()).checked(Reason::NatFragment, addrs_between(NODE, *R2.ip())),
            )
            .step(xdp(later_reply).checked(Reason::NatFragment, addrs_between(NODE, *CLIENT.ip()))),
        case("fragments at XDP: a datagram to a local node port keeps its source")
            .seed(|dp| {
                dp.add_frontend(
                    NP_LOCAL_UDP,
                    IPPROTO_UDP,
                    SCOPE_EXTERNAL,
                    10,
                    NP,
                    0,
                    &[(31, L1_DNS, LOCAL)],
                )
                .map_err(|e| format!("seed NP_LOCAL_UDP: {e}"))
            })
            .step(xdp(local[0].clone()).checked(Reason::DnatNew, between(CLIENT, L1_DNS)))
            .step(xdp(local[1].clone()).checked(
                Reason::NatFragment,
                addrs_between(*CLIENT.ip(), *L1_DNS.ip()),
            )),
        case("fragments at XDP: a later fragment before its first one passes untracked")
            .step(xdp(remote[1].clone()).untouched(Reason::PassFragmentUntracked)),
    ]
}

/// Conntrack you can trust, outside the node and for pods reaching
/// frontends that have policies.
fn conntrack_cases() -> Vec<Case> {
    const CLUSTER_UDP: SocketAddrV4 = sa(198, 19, 0, 1, 53);
    let syn = tcp(CLIENT, NP_LOCAL, TCP_SYN);
    let ack = tcp(CLIENT, NP_LOCAL, TCP_ACK);
    let established = Flow {
        client: CLIENT,
        vip: NP_LOCAL,
        backend: L1,
        proto: IPPROTO_TCP,
        backend_id: L1_ID,
        svc_id: 1,
        flags: CT_F_SEEN_NON_SYN | CT_F_REPLIED,
        created_ns: monotonic_ns(),
        expires_ns: monotonic_ns() + 3600 * NS,
    };
    // The remote backend's reply to a pod, in two fragments.
    let reply = udp(R2, POD)
        .macs(NODE_MAC, CLIENT_MAC)
        .id(0x7373)
        .payload(&[5u8; 40])
        .build();
    let frags = svcnat_testkit::packet::fragment(&reply, 8);
    let (f0, f1) = (frags[0].clone(), frags[1].clone());
    vec![
        case("outside: a TCP segment of no known flow is dropped, and opens nothing").step(
            xdp(ack.build())
                .dropped(Reason::DropTcpNoFlow)
                .effect(|dp, _, _| match dp.ct4.keys().count() {
                    0 => Ok(()),
                    n => Err(format!("{n} conntrack entries")),
                }),
        ),
        case(
            "outside: an established flow keeps its backend when the service loses every endpoint",
        )
        .seed(move |dp| {
            dp.add_frontend(NP_LOCAL, IPPROTO_TCP, SCOPE_EXTERNAL, 1, NP, 0, &[])
                .map_err(|e| format!("reseed NP_LOCAL: {e}"))?;
            dp.add_flow(&established).map_err(|e| e.to_string())
        })
        .step(xdp(ack.build()).passed(dnat(&ack, L1).build(), Reason::DnatEstablished))
        .step({
            let other = tcp(sa(198, 18, 200, 5, 40001), NP_LOCAL, TCP_SYN);
            xdp(other.build()).untouched(Reason::PassNoBackend)
        }),
        case("outside: a RST far outside the window the client reached keeps the flow")
            .step(xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew))
            .step({
                let rst = tcp(CLIENT, NP_LOCAL, TCP_RST).seq(1_000_001 + (64 << 20));
                xdp(rst.build())
                    .passed(dnat(&rst, L1).build(), Reason::RstOutOfWindow)
                    .effect(|dp, _, _| {
                        let key = Ct4Key {
                            saddr: CLIENT.ip().octets(),
                            daddr: NP_LOCAL.ip().octets(),
                            sport: CLIENT.port(),
                            dport: NP_LOCAL.port(),
                            proto: IPPROTO_TCP,
                            dir: CT_DIR_SERVICE,
                            pad: 0,
                        };
                        let e = dp.ct4.get(&key, 0).map_err(|e| format!("ct: {e}"))?;
                        if e.flags & CT_F_CLOSED != 0 {
                            return Err(format!("the blind RST closed the flow: {:#x}", e.flags));
                        }
                        Ok(())
                    })
            })
            .step({
                let rst = tcp(CLIENT, NP_LOCAL, TCP_RST).seq(1_000_001);
                xdp(rst.build()).passed(dnat(&rst, L1).build(), Reason::DnatEstablished)
            })
            .step(
                // Closed by the RST in the window: a new SYN chooses anew.
                xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew),
            ),
        case("pods: a pod outside a load balancer's source ranges is dropped").step(
            Step::on(TcProgram::PodIngress, tcp(POD, LB, TCP_SYN).build()).expect(
                TC_ACT_SHOT,
                Expect::Any,
                Reason::DropSourceRange,
            ),
        ),
        case("pods: a pod inside a load balancer's source ranges is translated").step({
            let p = tcp(sa(198, 18, 200, 77, 41000), LB, TCP_SYN);
            Step::on(TcProgram::PodIngress, p.build()).passed(dnat(&p, L1).build(), Reason::DnatNew)
        }),
        case("fragments: a remote backend's reply to a pod is translated at TC only, not at XDP")
            .seed(|dp| {
                dp.add_frontend(
                    CLUSTER_UDP,
                    IPPROTO_UDP,
                    SCOPE_EXTERNAL,
                    12,
                    0,
                    0,
                    &[(R2_ID, R2, 0)],
                )
                .map_err(|e| format!("seed CLUSTER_UDP: {e}"))
            })
            .step({
                let q = udp(POD, CLUSTER_UDP);
                Step::on(TcProgram::PodIngress, q.build())
                    .passed(dnat(&q, R2).build(), Reason::DnatNew)
            })
            .step(xdp(f0.clone()).untouched(Reason::PassNotService))
            .step(
                Step::on(TcProgram::PodEgress, f0)
                    .checked(Reason::RevnatReply, between(CLUSTER_UDP, POD)),
            )
            // Its later fragment reaches XDP after TC recorded the first:
            // XDP must not take that record for a destination rewrite.
            .step(xdp(f1.clone()).untouched(Reason::PassFragmentUntracked))
            .step(Step::on(TcProgram::PodEgress, f1).checked(
                Reason::NatFragment,
                addrs_between(*CLUSTER_UDP.ip(), *POD.ip()),
            )),
    ]
}

/// The hairpin address the fixtures set.
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);

/// The output goes from `from` to `to`, addressed back to the sender at
/// Ethernet (source and destination MAC swapped).
fn back_to_sender(
    from: impl Fn(SocketAddrV4) -> bool + 'static,
    to: SocketAddrV4,
) -> impl Fn(&[u8], &[u8]) -> Result<(), String> {
    move |_, out| {
        let (src, dst) = ends(out)?;
        if !from(src) || dst != to {
            return Err(format!("{src} -> {dst}, want a hairpin source -> {to}"));
        }
        if out.len() < 12 || out[..6] != CLIENT_MAC || out[6..12] != NODE_MAC {
            return Err("Ethernet addresses not swapped back to the sender".into());
        }
        Ok(())
    }
}

fn from_hairpin(src: SocketAddrV4) -> bool {
    *src.ip() == HAIRPIN && (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&src.port())
}

/// A pod reaching a service whose backend is that very pod: the flow comes
/// from the hairpin address and is sent straight back, and so is the reply.
fn hairpin_cases() -> Vec<Case> {
    const SELF: SocketAddrV4 = sa(198, 18, 10, 11, 42000);
    let syn = tcp(SELF, CLUSTER_IP, TCP_SYN);
    let ack = tcp(SELF, CLUSTER_IP, TCP_ACK);
    let seed = |dp: &mut TestDatapath| {
        dp.set_node_address(proxy_common::NODE4_HAIRPIN_KEY, HAIRPIN)
            .map_err(|e| format!("hairpin address: {e}"))
    };
    vec![
        case("hairpin: a pod reaching itself through a service comes from the hairpin address")
            .seed(seed)
            .step(
                Step::on(TcProgram::PodIngress, syn.build())
                    .bounced(Reason::DnatNewHairpin, back_to_sender(from_hairpin, L1)),
            )
            .step(
                Step::after(TcProgram::PodIngress, |prev| {
                    let (src, dst) = ends(prev)?;
                    Ok(tcp(dst, src, TCP_SYN | TCP_ACK).build())
                })
                .bounced(
                    Reason::RevnatHairpin,
                    back_to_sender(|s| s == CLUSTER_IP, SELF),
                ),
            )
            .step(
                Step::on(TcProgram::PodIngress, ack.build())
                    .bounced(Reason::DnatEstablished, back_to_sender(from_hairpin, L1)),
            ),
        case("hairpin: without an address set, the default link-local one is used").step(
            Step::on(TcProgram::PodIngress, syn.build()).bounced(
                Reason::DnatNewHairpin,
                back_to_sender(
                    |s| s.ip().octets() == proxy_common::HAIRPIN_ADDR_DEFAULT,
                    L1,
                ),
            ),
        ),
    ]
}

fn rsyn_of(frontend: SocketAddrV4) -> Vec<u8> {
    tcp(CLIENT, frontend, TCP_SYN).build()
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

fn cases() -> Vec<Case> {
    let syn = tcp(CLIENT, NP_LOCAL, TCP_SYN);
    let ack = tcp(CLIENT, NP_LOCAL, TCP_ACK);
    let l1_reply = tcp(L1, CLIENT, TCP_SYN | TCP_ACK).macs(NODE_MAC, CLIENT_MAC);
    let rsyn = tcp(CLIENT, NP_REMOTE, TCP_SYN);
    let rack = tcp(CLIENT, NP_REMOTE, TCP_ACK);
    let usyn = udp(CLIENT, NP_UDP);
    let mut t = vec![
        case("local backend: new TCP flow DNATed at XDP, client address kept")
            .step(xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew)),
        case("local backend: next packet of the flow uses conntrack")
            .step(xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew))
            .step(xdp(ack.build()).passed(dnat(&ack, L1).build(), Reason::DnatEstablished)),
        case("local backend: reply reverse-NATed at node egress to the node port")
            .step(xdp(syn.build()).passed(dnat(&syn, L1).build(), Reason::DnatNew))
            .step(
                Step::on(TcProgram::NodeEgress, l1_reply.build())
                    .passed(snat(&l1_reply, NP_LOCAL).build(), Reason::RevnatReply),
            ),
        case("node egress: a packet of no translated flow passes untouched")
            .step(Step::on(TcProgram::NodeEgress, l1_reply.build()).untouched(Reason::PassNotService)),
        case("remote backend: new TCP flow gets DNAT and SNAT from the SNAT port range").step(
            xdp(rsyn.build())
                .checked(Reason::SnatNew, snat_to(R1))
                .effect(snat_entries(CLIENT, IPPROTO_TCP))
                .effect(|dp, _, _| {
                    let key = Ct4Key {
                        saddr: CLIENT.ip().octets(),
                        daddr: NODE.octets(),
                        sport: CLIENT.port(),
                        dport: NP_REMOTE.port(),
                        proto: IPPROTO_TCP,
                        dir: 0,
                        pad: 0,
                    };
                    let e = dp.ct4.get(&key, 0).map_err(|e| format!("ct: {e}"))?;
                    if e.flags & CT_F_SNAT == 0 {
                        return Err(format!("conntrack flags {:#x} lack CT_F_SNAT", e.flags));
                    }
                    Ok(())
                }),
        ),
        case("remote backend: next packet reuses the allocated port")
            .step(xdp(rsyn.build()).checked(Reason::SnatNew, snat_to(R1)))
            .step(
                xdp(rack.build()).checked(Reason::SnatEstablished, |prev, out| {
                    let (psrc, _) = ends(prev)?;
                    let (src, dst) = ends(out)?;
                    if src != psrc || dst != R1 {
                        return Err(format!("{src} -> {dst}, want {psrc} -> {R1}"));
                    }
                    Ok(())
                }),
            ),
        case("remote backend: reply reverse-SNATed at XDP back to the client from the node port")
            .step(xdp(rsyn.build()).checked(Reason::SnatNew, snat_to(R1)))
            .step(
                xdp_after(|prev| reply_to_snat(prev, TCP_SYN | TCP_ACK, false)).checked(
                    Reason::RevsnatReply,
                    |_, out| {
                        let (src, dst) = ends(out)?;
                        if src != NP_REMOTE || dst != CLIENT {
                            return Err(format!("{src} -> {dst}, want {NP_REMOTE} -> {CLIENT}"));
                        }
                        Ok(())
                    },
                ),
            ),
        case("remote backend: UDP through SNAT and back")
            .step(
                xdp(usyn.build())
                    .checked(Reason::SnatNew, snat_to(R2))
                    .effect(snat_entries(CLIENT, IPPROTO_UDP)),
            )
            .step(xdp_after(|prev| reply_to_snat(prev, 0, true)).checked(
                Reason::RevsnatReply,
                |_, out| {
                    let (src, dst) = ends(out)?;
                    if src != NP_UDP || dst != CLIENT {
                        return Err(format!("{src} -> {dst}, want {NP_UDP} -> {CLIENT}"));
                    }
                    Ok(())
                },
            )),
        case("remote backend: a reply to a SNAT port nobody allocated passes untouched").step(
            xdp(tcp(R1, SocketAddrV4::new(NODE, 61_234), TCP_SYN | TCP_ACK).build())
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
            let replies: Vec<Ct4Key> = dp
                .ct4
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.dir == CT_DIR_REPLY)
                .collect();
            for k in replies {
                let mut v = dp.ct4.get(&k, 0).map_err(|e| e.to_string())?;
                v.expires_ns = 1;
                dp.ct4.insert(k, v, 0).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .step(xdp(rsyn.build()).dropped(Reason::DropSnatPorts)),
        case("remote backend: SNAT entries that outlived their flows are taken again")
            .seed(|dp| seed_snat_range(dp, None, 100))
            .step(xdp(rsyn.build()).checked(Reason::SnatNew, snat_to(R1))),
        case(
            "remote backend: fresh SNAT entries without conntrack (flows other CPUs are creating) are not taken",
        )
        .seed(|dp| seed_snat_range(dp, None, 0))
        .step(
            xdp(rsyn.build())
                .dropped(Reason::DropSnatPorts)
                .effect(|dp, _, _| {
                    let theirs = dp
                        .snat4
                        .iter()
                        .filter_map(Result::ok)
                        .filter(|(k, v)| v.addr == [198, 18, 250, 1] && v.port == k.dport)
                        .count();
                    let all = usize::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
                    if theirs != all {
                        return Err(format!(
                            "{theirs} of {all} reverse SNAT entries still name their own client"
                        ));
                    }
                    if dp.ct4.keys().count() != 0 {
                        return Err("conntrack entries were written".into());
                    }
                    Ok(())
                }),
        ),
        case("remote backend: with every port's flow closed, one still in TIME_WAIT is taken")
            .seed(|dp| seed_snat_range(dp, Some((CT_F_CLOSED, 10)), 100))
            .step(xdp(rsyn.build()).checked(Reason::SnatNew, snat_to(R1))),
        case("externalTrafficPolicy Local without a local backend: dropped and counted").step(
            xdp(tcp(CLIENT, NP_ETP_LOCAL, TCP_SYN).build()).dropped(Reason::DropNoLocalBackend),
        ),
        case("externalTrafficPolicy Local: pods of the node use the internal scope (all backends)")
            .step({
                let p = tcp(POD, NP_ETP_LOCAL, TCP_SYN);
                Step::on(TcProgram::PodIngress, p.build()).passed(dnat(&p, R1).build(), Reason::DnatNew)
            }),
        case("cluster IP reached from outside: not translated at XDP")
            .step(xdp(tcp(CLIENT, CLUSTER_IP, TCP_SYN).build()).untouched(Reason::PassNotService)),
        case("node address on a port no service has: passed to the stack").step(
            xdp(tcp(CLIENT, SocketAddrV4::new(NODE, 22), TCP_SYN).build())
                .untouched(Reason::PassNotService),
        ),
        case("source ranges: a client inside is translated").step({
            let p = tcp(CLIENT, LB, TCP_SYN);
            xdp(p.build()).passed(dnat(&p, L1).build(), Reason::DnatNew)
        }),
        case("source ranges: a client outside is dropped and counted")
            .step(xdp(tcp(STRANGER, LB, TCP_SYN).build()).dropped(Reason::DropSourceRange)),
        case("affinity: a live entry sends new connections of the client to its backend")
            .seed(seed_affinity(L2_ID, 2, 10))
            .step({
                let p = tcp(CLIENT, NP_AFFINITY, TCP_SYN);
                xdp(p.build())
                    .passed(dnat(&p, L2).build(), Reason::DnatNew)
                    .effect(affinity_entry(*CLIENT.ip(), Some(L2_ID)))
            })
            .step({
                let p = tcp(SocketAddrV4::new(*CLIENT.ip(), 40001), NP_AFFINITY, TCP_SYN);
                xdp(p.build()).passed(dnat(&p, L2).build(), Reason::DnatNew)
            }),
        case("affinity: the first connection is remembered and followed")
            .step(
                xdp(tcp(CLIENT, NP_AFFINITY, TCP_SYN).build())
                    .checked(Reason::DnatNew, |_, _| Ok(()))
                    .effect(affinity_entry(*CLIENT.ip(), None)),
            )
            .step(
                xdp(tcp(SocketAddrV4::new(*CLIENT.ip(), 40002), NP_AFFINITY, TCP_SYN).build())
                    .checked(Reason::DnatNew, |prev, out| {
                        let (_, a) = ends(prev)?;
                        let (_, b) = ends(out)?;
                        if a != b {
                            return Err(format!("second connection went to {b}, first to {a}"));
                        }
                        Ok(())
                    }),
            ),
        case("affinity: an expired entry chooses anew and records the choice")
            .seed(seed_affinity(L2_ID, 2, u64::from(AFFINITY_S) + 5))
            .step(
                xdp(tcp(CLIENT, NP_AFFINITY, TCP_SYN).build())
                    .checked(Reason::DnatNew, |_, _| Ok(()))
                    .effect(affinity_entry(*CLIENT.ip(), None)),
            ),
        case("affinity: a backend that left the service is not chosen again")
            .seed(seed_affinity(L3_ID, 1, 1))
            .step(
                xdp(tcp(CLIENT, NP_AFFINITY, TCP_SYN).build())
                    .checked(Reason::DnatNew, |_, out| {
                        let (_, dst) = ends(out)?;
                        if dst != L1 && dst != L2 {
                            return Err(format!("went to {dst}, not a backend"));
                        }
                        Ok(())
                    })
                    .effect(affinity_entry(*CLIENT.ip(), None)),
            ),
    ];
    t.extend(port_clash_cases());
    t.extend(hairpin_cases());
    t.extend(fragment_cases());
    t.extend(conntrack_cases());
    // Not IPv4: passed, counted.
    t.push(
        case("ARP passes XDP untouched").step(
            xdp(svcnat_testkit::packet::arp_request(
                CLIENT_MAC,
                *CLIENT.ip(),
                NODE,
            ))
            .untouched(Reason::PassNotIp),
        ),
    );
    t
}

#[test]
fn node_fixtures() {
    skip_unless!(Needs::prog_run());
    run_table(&cases(), seed_world);
}

/// The fixtures' world in a datapath whose conntrack map holds `entries`.
fn world_with_conntrack_of(entries: u32) -> TestDatapath {
    let sizes: Vec<(&str, u32)> = svcnat_testkit::datapath::test_map_sizes()
        .into_iter()
        .map(|(n, s)| {
            (
                n,
                if n == proxy_common::map_names::CT4 {
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

/// A flood of made-up TCP segments from outside to a node port, three times
/// as many as the conntrack map holds and each sent twice (so that the
/// kernel's LRU sees every one of them referenced, as an attacker would
/// arrange), leaves every established flow through that node port intact:
/// only a SYN opens a flow from outside.
#[test]
fn a_flood_of_flowless_segments_evicts_no_established_flow() {
    skip_unless!(Needs::prog_run());
    const CT_SIZE: u32 = 4096;
    const FLOWS: u16 = 200;
    let dp = world_with_conntrack_of(CT_SIZE);
    let run = |prog, frame: Vec<u8>| {
        dp.run(prog, &frame)
            .unwrap_or_else(|e| panic!("test run: {e}"))
    };
    let client = |i: u16| sa(198, 18, 200, 5, 20_000 + i);
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
    assert_eq!(dp.ct4.keys().count(), 2 * usize::from(FLOWS));
    let before = dp.stat(Reason::DropTcpNoFlow).expect("stats").packets;
    let flood = 3 * CT_SIZE;
    for j in 0..flood {
        // Made-up sources all over 198.18.128.0/17, made-up ports.
        let src = sa(
            198,
            18,
            128 + (j >> 8 & 0x7f) as u8,
            j as u8,
            1024 + (j % 50_000) as u16,
        );
        let seg = tcp(src, NP_LOCAL, TCP_ACK)
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
        dp.ct4.keys().count(),
        2 * usize::from(FLOWS),
        "the flood left conntrack entries"
    );
}

/// A flood of SYNs (each one a new flow, as a SYN may be) bigger than the
/// conntrack map does evict entries: the map is an LRU. What the operator
/// sees is the eviction count the agent derives from the datapath's count of
/// created entries.
#[test]
fn a_syn_flood_bigger_than_the_map_shows_as_evictions() {
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
        let src = sa(
            198,
            18,
            128 + (j >> 8 & 0x7f) as u8,
            j as u8,
            1024 + j as u16,
        );
        let out = dp
            .run(TcProgram::NodeXdp, &tcp(src, NP_LOCAL, TCP_SYN).build())
            .unwrap_or_else(|e| panic!("test run: {e}"));
        assert_eq!(out.retval, XDP_PASS, "SYN {j}");
    }
    let created = dp.created_entries().expect("created counter");
    assert_eq!(created, 2 * u64::from(flows), "two entries per new flow");
    let entries = dp.ct4.keys().count() as u64;
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
