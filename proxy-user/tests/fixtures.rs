//! Packet fixtures for the TC programs, run through `BPF_PROG_TEST_RUN`.
//!
//! Katran's shape: a table of cases, each {description, seeded maps, input
//! frames built with the builder, program, expected verdict, expected output
//! frame, expected stats reason, expected map effects}. Every case loads a
//! fresh copy of the object (private maps, nothing pinned or attached) and
//! runs its steps in order.
//!
//! Needs root and the eBPF object (`cargo xtask build-ebpf --release`);
//! without them the tests print why and pass. `SVCNAT_FIXTURE=substring`
//! runs only the cases whose description contains it.

use std::net::{Ipv4Addr, SocketAddrV4};

use proxy_common::{
    CT_DIR_SERVICE, CT_F_CLOSED, CT_F_FIN_REPLY, CT_F_FIN_SERVICE, CT_F_REPLIED, CT_F_SEEN_NON_SYN,
    CT_F_SEQ, CT_TCP_CLOSE_LIFETIME_S, CT_TCP_LIFETIME_S, CT_TCP_SYN_LIFETIME_S, CT_UDP_LIFETIME_S,
    CT_UDP_UNREPLIED_LIFETIME_S, Ct4Key, CtValue, FRAG_DIR_REVNAT_SRC, Frag4Key, Frag4Value,
    IPPROTO_TCP, IPPROTO_UDP, Reason, SlotKey, SlotValue,
};
use svcnat_testkit::{
    datapath::{Flow, TCX_NEXT, TcProgram, TestDatapath, monotonic_ns},
    fixture::{Case, Expect, Seed, Step, Window, case, hex, run_table},
    packet::{
        ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED, L4,
        PacketBuilder, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, arp_request, ethernet_frame,
        fragment, parse,
    },
    skip::Needs,
    skip_unless,
};

// ---------------------------------------------------------------------------
// The world every case starts from
// ---------------------------------------------------------------------------

const NS: u64 = 1_000_000_000;

const fn sa(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

/// A pod sending to services.
const CLIENT: SocketAddrV4 = sa(198, 18, 1, 10, 40000);
const CLIENT_UDP: SocketAddrV4 = sa(198, 18, 1, 10, 50000);
/// The VIP of every service below.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// TCP service with one backend (B1).
const WEB: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
const WEB_ID: u32 = 1;
/// UDP service with one backend (B2).
const DNS: SocketAddrV4 = SocketAddrV4::new(VIP, 53);
const DNS_ID: u32 = 2;
/// TCP and UDP service ports without backends.
const EMPTY_TCP: SocketAddrV4 = SocketAddrV4::new(VIP, 81);
const EMPTY_UDP: SocketAddrV4 = SocketAddrV4::new(VIP, 54);
/// A port of the VIP that no service defines.
const NO_PORT_TCP: SocketAddrV4 = SocketAddrV4::new(VIP, 9999);
const NO_PORT_UDP: SocketAddrV4 = SocketAddrV4::new(VIP, 9998);
/// Not a VIP: another pod.
const OTHER_POD: SocketAddrV4 = sa(198, 18, 3, 3, 80);
/// A router on the path (source of ICMP errors).
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);

const B1: SocketAddrV4 = sa(198, 18, 2, 1, 8080);
const B1_ID: u32 = 11;
const B2: SocketAddrV4 = sa(198, 18, 2, 2, 5353);
const B2_ID: u32 = 12;
const B3: SocketAddrV4 = sa(198, 18, 2, 3, 8080);
const B3_ID: u32 = 13;
const B4: SocketAddrV4 = sa(198, 18, 2, 4, 8080);
const B4_ID: u32 = 14;

const POD_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const GW_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];

/// Services WEB (TCP, B1), DNS (UDP, B2), EMPTY_TCP and EMPTY_UDP (no backends).
fn seed_world(dp: &mut TestDatapath) -> Result<(), String> {
    dp.add_service(WEB, IPPROTO_TCP, WEB_ID, &[(B1_ID, B1)])
        .map_err(|e| format!("seed WEB: {e}"))?;
    dp.add_service(DNS, IPPROTO_UDP, DNS_ID, &[(B2_ID, B2)])
        .map_err(|e| format!("seed DNS: {e}"))?;
    dp.add_service(EMPTY_TCP, IPPROTO_TCP, 3, &[])
        .map_err(|e| format!("seed EMPTY_TCP: {e}"))?;
    dp.add_service(EMPTY_UDP, IPPROTO_UDP, 4, &[])
        .map_err(|e| format!("seed EMPTY_UDP: {e}"))
}

/// A live flow: created a second ago, expires in an hour.
fn live_flow(client: SocketAddrV4, vip: SocketAddrV4, backend: SocketAddrV4, proto: u8) -> Flow {
    let now = monotonic_ns();
    let (backend_id, svc_id) = match backend {
        b if b == B1 => (B1_ID, WEB_ID),
        b if b == B2 => (B2_ID, DNS_ID),
        b if b == B3 => (B3_ID, WEB_ID),
        _ => (B4_ID, WEB_ID),
    };
    Flow {
        client,
        vip,
        backend,
        proto,
        backend_id,
        svc_id,
        flags: 0,
        created_ns: now.saturating_sub(NS),
        expires_ns: now + 3600 * NS,
    }
}

fn tcp_flow() -> Flow {
    live_flow(CLIENT, WEB, B1, IPPROTO_TCP)
}

fn udp_flow() -> Flow {
    live_flow(CLIENT_UDP, DNS, B2, IPPROTO_UDP)
}

/// Replaces WEB's backends by `backends` (slots 1..=n, count n).
fn set_web_backends(dp: &mut TestDatapath, backends: &[(u32, SocketAddrV4)]) -> Result<(), String> {
    dp.add_service(WEB, IPPROTO_TCP, WEB_ID, backends)
        .map_err(|e| format!("reseed WEB: {e}"))
}

// ---------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> PacketBuilder {
    PacketBuilder::tcp(src, dst)
        .macs(POD_MAC, GW_MAC)
        .flags(flags)
        .seq(1_000_000)
        .ack_seq(if flags & TCP_ACK != 0 { 7_000_000 } else { 0 })
        .ttl(61)
        .tos(0x10)
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> PacketBuilder {
    PacketBuilder::udp(src, dst)
        .macs(POD_MAC, GW_MAC)
        .ttl(61)
        .payload(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
}

/// `p` with its destination rewritten to `to`, everything else (MACs, TTL,
/// TOS, id, flags, payload) unchanged; checksums recomputed.
fn dnat(p: &PacketBuilder, to: SocketAddrV4) -> PacketBuilder {
    let src = p.ip.src;
    let sport = match &p.l4 {
        L4::Tcp(t) => t.sport,
        L4::Udp(u) => u.sport,
        _ => 0,
    };
    p.clone().addrs(src, *to.ip()).ports(sport, to.port())
}

/// `p` with its source rewritten to `from`.
fn snat(p: &PacketBuilder, from: SocketAddrV4) -> PacketBuilder {
    let dst = p.ip.dst;
    let dport = match &p.l4 {
        L4::Tcp(t) => t.dport,
        L4::Udp(u) => u.dport,
        _ => 0,
    };
    p.clone().addrs(*from.ip(), dst).ports(from.port(), dport)
}

/// The TCP reset the datapath answers `p` with (see the reject spec).
fn expected_rst(p: &PacketBuilder, seq: u32, ack_seq: u32, flags: u8) -> Vec<u8> {
    let (sport, dport) = match &p.l4 {
        L4::Tcp(t) => (t.sport, t.dport),
        other => panic!("not TCP: {other:?}"),
    };
    PacketBuilder::tcp(
        SocketAddrV4::new(p.ip.dst, dport),
        SocketAddrV4::new(p.ip.src, sport),
    )
    .macs(p.eth_dst, p.eth_src)
    .id(0)
    .dont_fragment(true)
    .ttl(64)
    .tos(0)
    .flags(flags)
    .seq(seq)
    .ack_seq(ack_seq)
    .window(0)
    .build()
}

/// The ICMP port unreachable the datapath answers the UDP datagram `p` with.
fn expected_port_unreachable(p: &PacketBuilder) -> Vec<u8> {
    let quoted = &p.ipv4_bytes()[..28];
    PacketBuilder::icmp(p.ip.dst, p.ip.src, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)
        .macs(p.eth_dst, p.eth_src)
        .id(0)
        .ttl(64)
        .tos(0)
        .payload(quoted)
        .build()
}

// ---------------------------------------------------------------------------
// The table's shape (the runner is svcnat_testkit::fixture)
// ---------------------------------------------------------------------------

/// `svcnat_pod_ingress` on a frame from a pod.
fn ingress(input: Vec<u8>) -> Step {
    Step::on(TcProgram::PodIngress, input)
}

/// `svcnat_pod_egress` on a frame to a pod.
fn egress(input: Vec<u8>) -> Step {
    Step::on(TcProgram::PodEgress, input)
}

// ---------------------------------------------------------------------------
// Map effect checks
// ---------------------------------------------------------------------------

fn ct_get(dp: &TestDatapath, key: &Ct4Key) -> Result<CtValue, String> {
    dp.ct4
        .get(key, 0)
        .map_err(|e| format!("conntrack entry {key:?} missing: {e}"))
}

/// What a newly created flow must look like.
#[derive(Clone, Copy)]
struct NewFlow {
    client: SocketAddrV4,
    vip: SocketAddrV4,
    backend: SocketAddrV4,
    backend_id: u32,
    svc_id: u32,
    proto: u8,
    lifetime_s: u64,
    flags: u8,
}

fn check_new_flow(dp: &TestDatapath, w: Window, n: NewFlow) -> Result<(), String> {
    let flow = Flow {
        client: n.client,
        vip: n.vip,
        backend: n.backend,
        proto: n.proto,
        backend_id: n.backend_id,
        svc_id: n.svc_id,
        flags: n.flags,
        created_ns: 0,
        expires_ns: 0,
    };
    let s = ct_get(dp, &flow.service_key())?;
    let want = (
        n.backend.ip().octets(),
        n.backend.port(),
        n.backend_id,
        n.svc_id,
        n.flags,
    );
    let got = (s.nat_addr, s.nat_port, s.backend_id, s.svc_id, s.flags);
    if got != want {
        return Err(format!(
            "service entry (nat addr, port, backend, svc, flags) = {got:?}, want {want:?}"
        ));
    }
    if !w.contains(s.created_ns) {
        return Err(format!(
            "service entry created_ns {} outside the run {w:?}",
            s.created_ns
        ));
    }
    if s.expires_ns != s.created_ns + n.lifetime_s * NS {
        return Err(format!(
            "service entry lives {} ns, want {} s",
            s.expires_ns.wrapping_sub(s.created_ns),
            n.lifetime_s
        ));
    }
    let r = ct_get(dp, &flow.reply_key())?;
    let want = (n.vip.ip().octets(), n.vip.port(), n.backend_id, n.svc_id);
    let got = (r.nat_addr, r.nat_port, r.backend_id, r.svc_id);
    if got != want {
        return Err(format!(
            "reply entry (nat addr, port, backend, svc) = {got:?}, want {want:?}"
        ));
    }
    if r.expires_ns <= w.after {
        return Err(format!("reply entry already expired: {}", r.expires_ns));
    }
    Ok(())
}

fn new_flow(n: NewFlow) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, w, _| check_new_flow(dp, w, n)
}

/// A new TCP flow: its entry knows the client's sequence number (`CT_F_SEQ`).
fn new_tcp_flow(backend: SocketAddrV4, backend_id: u32, lifetime_s: u64, flags: u8) -> NewFlow {
    let flags = flags | CT_F_SEQ;
    NewFlow {
        client: CLIENT,
        vip: WEB,
        backend,
        backend_id,
        svc_id: WEB_ID,
        proto: IPPROTO_TCP,
        lifetime_s,
        flags,
    }
}

fn new_udp_flow() -> NewFlow {
    NewFlow {
        client: CLIENT_UDP,
        vip: DNS,
        backend: B2,
        backend_id: B2_ID,
        svc_id: DNS_ID,
        proto: IPPROTO_UDP,
        lifetime_s: CT_UDP_UNREPLIED_LIFETIME_S,
        flags: 0,
    }
}

/// The service entry of `flow` has all of `set` and none of `clear`.
fn ct_flags(
    flow: Flow,
    set: u8,
    clear: u8,
) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, _, _| {
        let v = ct_get(dp, &flow.service_key())?;
        if v.flags & set != set || v.flags & clear != 0 {
            return Err(format!(
                "service entry flags {:#04x}: want {set:#04x} set and {clear:#04x} clear",
                v.flags
            ));
        }
        Ok(())
    }
}

/// The service entry of `flow` expires `secs` after the run.
fn ct_expires_in(
    flow: Flow,
    secs: u64,
) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, w, _| {
        let v = ct_get(dp, &flow.service_key())?;
        let (lo, hi) = (w.before + secs * NS, w.after + secs * NS);
        if v.expires_ns < lo || v.expires_ns > hi {
            return Err(format!(
                "service entry expires_ns {} not {secs} s after the run ({lo}..={hi})",
                v.expires_ns
            ));
        }
        Ok(())
    }
}

/// The conntrack map holds exactly `n` entries.
fn ct_count(n: usize) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, _, _| {
        let got = dp.ct4.keys().count();
        if got != n {
            return Err(format!("conntrack holds {got} entries, want {n}"));
        }
        Ok(())
    }
}

fn frag_entry(
    key: Frag4Key,
    want: Option<Ipv4Addr>,
) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, _, _| {
        let got = dp.frag4.get(&key, 0).ok().map(|v| Ipv4Addr::from(v.addr));
        if got != want {
            return Err(format!("fragment entry {key:?} = {got:?}, want {want:?}"));
        }
        Ok(())
    }
}

fn frag_key(saddr: Ipv4Addr, daddr: Ipv4Addr, id: u16, proto: u8, dir: u8) -> Frag4Key {
    Frag4Key {
        saddr: saddr.octets(),
        daddr: daddr.octets(),
        id,
        proto,
        dir,
    }
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

fn cases() -> Vec<Case> {
    let mut t = Vec::new();

    // --- Not for us ---------------------------------------------------------
    t.push(
        case("ARP request passes untouched")
            .step(ingress(arp_request(POD_MAC, *CLIENT.ip(), VIP)).untouched(Reason::PassNotIp)),
    );
    // IPv6 has its own pipelines (fixtures6.rs): to them this is an IPv6
    // packet of protocol 96, of no translated flow.
    t.push(
        case("IPv6 frame passes untouched (egress)").step(
            egress(ethernet_frame(GW_MAC, POD_MAC, 0x86dd, &[0x60; 48]))
                .untouched(Reason::PassNotService),
        ),
    );
    t.push(
        case("TCP to a pod that is not a VIP passes untouched").step(
            ingress(tcp(CLIENT, OTHER_POD, TCP_SYN).build()).untouched(Reason::PassNotService),
        ),
    );
    t.push(
        case("UDP to a pod that is not a VIP passes untouched")
            .step(ingress(udp(CLIENT_UDP, OTHER_POD).build()).untouched(Reason::PassNotService)),
    );
    t.push(
        case("ICMP echo to a VIP passes untouched").step(
            ingress(
                PacketBuilder::icmp_echo_request(*CLIENT.ip(), VIP, 7, 1)
                    .macs(POD_MAC, GW_MAC)
                    .payload(b"ping")
                    .build(),
            )
            .untouched(Reason::PassOtherProtocol),
        ),
    );
    t.push(
        case("ICMP echo to a non-VIP passes untouched").step(
            ingress(
                PacketBuilder::icmp_echo_request(*CLIENT.ip(), *OTHER_POD.ip(), 7, 1)
                    .macs(POD_MAC, GW_MAC)
                    .build(),
            )
            .untouched(Reason::PassNotService),
        ),
    );

    // --- Malformed ----------------------------------------------------------
    // A frame whose ethertype says IPv4 but that holds fewer than 20 bytes
    // after Ethernet cannot be fed to a TC program: BPF_PROG_TEST_RUN refuses
    // it with EINVAL (kernel 6.18), as it does a frame shorter than Ethernet.
    t.push(
        case("IPv4 header without any TCP bytes is dropped").step(
            ingress(tcp(CLIENT, WEB, TCP_SYN).build()[..14 + 20].to_vec())
                .dropped(Reason::DropTruncated),
        ),
    );
    t.push(case("IPv4 IHL 4 is dropped").step({
        let mut f = tcp(CLIENT, WEB, TCP_SYN).build();
        f[14] = 0x44;
        ingress(f).dropped(Reason::DropTruncated)
    }));
    t.push(case("IP version 6 under ethertype IPv4 is dropped").step({
        let mut f = tcp(CLIENT, WEB, TCP_SYN).build();
        f[14] = 0x65;
        ingress(f).dropped(Reason::DropTruncated)
    }));
    t.push(
        case("egress: UDP reply with a truncated header is dropped")
            .flows(vec![udp_flow()])
            .step(
                egress(udp(B2, CLIENT_UDP).build()[..14 + 20 + 4].to_vec())
                    .dropped(Reason::DropTruncated),
            ),
    );
    t.push(
        case("TCP header truncated to 10 bytes is dropped").step(
            ingress(tcp(CLIENT, WEB, TCP_SYN).build()[..14 + 20 + 10].to_vec())
                .dropped(Reason::DropTruncated),
        ),
    );
    t.push(
        case("TCP data offset 4 is dropped").step(
            ingress(tcp(CLIENT, WEB, TCP_SYN).tcp_data_offset(4).build())
                .dropped(Reason::DropTruncated),
        ),
    );
    t.push(
        case("UDP header truncated to 6 bytes is dropped").step(
            ingress(udp(CLIENT_UDP, DNS).payload(&[]).build()[..14 + 20 + 6].to_vec())
                .dropped(Reason::DropTruncated),
        ),
    );
    t.push(
        case("IPv4 options to a service pass untouched").step(
            ingress(
                tcp(CLIENT, WEB, TCP_SYN)
                    .ip_options(&[0x94, 0x04, 0x00, 0x00]) // router alert
                    .build(),
            )
            .untouched(Reason::PassIpOptions),
        ),
    );
    t.push(
        case("egress: IPv4 options on a reply pass untouched")
            .flows(vec![tcp_flow()])
            .step(
                egress(
                    tcp(B1, CLIENT, TCP_SYN | TCP_ACK)
                        .ip_options(&[0x01, 0x01, 0x01, 0x00])
                        .build(),
                )
                .untouched(Reason::PassIpOptions),
            ),
    );

    // --- New flows and established flows ------------------------------------
    {
        let syn = tcp(CLIENT, WEB, TCP_SYN).tcp_options(&[0x02, 0x04, 0x05, 0xb4]);
        t.push(
            case("TCP SYN to a service: new flow, DNAT to the backend").step(
                ingress(syn.build())
                    .passed(dnat(&syn, B1).build(), Reason::DnatNew)
                    .effect(new_flow(new_tcp_flow(B1, B1_ID, CT_TCP_SYN_LIFETIME_S, 0)))
                    .effect(ct_count(2)),
            ),
        );
    }
    {
        let ack = tcp(CLIENT, WEB, TCP_ACK | TCP_PSH).payload(b"GET / HTTP/1.1\r\n\r\n");
        t.push(
            case("TCP data without a flow: new flow, short-lived until the backend answers").step(
                ingress(ack.build())
                    .passed(dnat(&ack, B1).build(), Reason::DnatNew)
                    .effect(new_flow(new_tcp_flow(
                        B1,
                        B1_ID,
                        CT_TCP_SYN_LIFETIME_S,
                        CT_F_SEEN_NON_SYN,
                    ))),
            ),
        );
    }
    {
        let ack = tcp(CLIENT, WEB, TCP_ACK).payload(b"hello");
        let flow = tcp_flow();
        t.push(
            case("TCP ACK of an established flow: DNAT, marks SEEN_NON_SYN")
                .flows(vec![flow])
                .step(
                    ingress(ack.build())
                        .passed(dnat(&ack, B1).build(), Reason::DnatEstablished)
                        .effect(ct_flags(flow, CT_F_SEEN_NON_SYN, CT_F_CLOSED))
                        .effect(ct_count(2)),
                ),
        );
    }
    {
        let ack = tcp(CLIENT, WEB, TCP_ACK).payload(b"more");
        let flow = Flow {
            backend: B4,
            backend_id: B4_ID,
            ..tcp_flow()
        };
        t.push(
            case("established flow keeps its backend after the backend set changes")
                .seed(move |dp| {
                    set_web_backends(dp, &[(B3_ID, B3)])?;
                    dp.add_flow(&flow).map_err(|e| e.to_string())
                })
                .step(
                    ingress(ack.build())
                        .passed(dnat(&ack, B4).build(), Reason::DnatEstablished)
                        .effect(move |dp, _, _| {
                            let v = ct_get(dp, &flow.service_key())?;
                            if v.backend_id != B4_ID {
                                return Err(format!("flow moved to backend {}", v.backend_id));
                            }
                            Ok(())
                        }),
                ),
        );
    }
    {
        let ack = tcp(CLIENT, WEB, TCP_ACK);
        let flow = Flow {
            backend: B4,
            backend_id: B4_ID,
            expires_ns: 1,
            ..tcp_flow()
        };
        t.push(
            case("expired entry: a new backend is chosen and the entry recreated")
                .seed(move |dp| {
                    set_web_backends(dp, &[(B3_ID, B3)])?;
                    dp.add_flow(&flow).map_err(|e| e.to_string())
                })
                .step(
                    ingress(ack.build())
                        .passed(dnat(&ack, B3).build(), Reason::DnatNew)
                        .effect(new_flow(new_tcp_flow(
                            B3,
                            B3_ID,
                            CT_TCP_SYN_LIFETIME_S,
                            CT_F_SEEN_NON_SYN,
                        ))),
                ),
        );
    }
    {
        let q = udp(CLIENT_UDP, DNS);
        t.push(
            case("UDP to a service: new flow, DNAT").step(
                ingress(q.build())
                    .passed(dnat(&q, B2).build(), Reason::DnatNew)
                    .effect(new_flow(new_udp_flow())),
            ),
        );
    }
    {
        let q = udp(CLIENT_UDP, DNS).payload(b"second query");
        t.push(
            case("UDP of an established flow: DNAT")
                .flows(vec![udp_flow()])
                .step(ingress(q.build()).passed(dnat(&q, B2).build(), Reason::DnatEstablished)),
        );
    }
    {
        let q = udp(CLIENT_UDP, DNS).udp_zero_checksum();
        t.push(
            case("UDP checksum 0 stays 0 through DNAT").step(
                ingress(q.build())
                    .passed(dnat(&q, B2).build(), Reason::DnatNew)
                    .effect(|_, _, out| {
                        let p = parse(out)?;
                        match p.ip()?.udp()?.checksum {
                            0 => Ok(()),
                            c => Err(format!("UDP checksum became {c:#06x}")),
                        }
                    }),
            ),
        );
    }
    {
        let syn = tcp(CLIENT, WEB, TCP_SYN);
        let backends = [(B1_ID, B1), (B3_ID, B3), (B4_ID, B4)];
        t.push(
            case("TCP SYN to a service with three backends: DNAT to one of them")
                .seed(move |dp| set_web_backends(dp, &backends))
                .step(
                    ingress(syn.build())
                        .expect(
                            TCX_NEXT,
                            Expect::Check(Box::new(move |_, out| {
                                let to = parse(out)?.ip()?.destination()?;
                                let b = backends
                                    .iter()
                                    .find(|(_, a)| *a == to)
                                    .ok_or(format!("DNAT to {to}, not a backend"))?;
                                let want = dnat(&syn, b.1).build();
                                if out != want.as_slice() {
                                    return Err(format!("output differs from {}", hex(&want)));
                                }
                                Ok(())
                            })),
                            Reason::DnatNew,
                        )
                        .effect(move |dp, w, out| {
                            let to = parse(out)?.ip()?.destination()?;
                            let (id, addr) = backends
                                .iter()
                                .copied()
                                .find(|(_, a)| *a == to)
                                .ok_or("not a backend")?;
                            check_new_flow(dp, w, new_tcp_flow(addr, id, CT_TCP_SYN_LIFETIME_S, 0))
                        }),
                ),
        );
    }

    // --- Replies --------------------------------------------------------------
    {
        let synack = tcp(B1, CLIENT, TCP_SYN | TCP_ACK).macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: TCP SYN-ACK from the backend is reverse-NATed to the VIP")
                .flows(vec![tcp_flow()])
                .step(
                    egress(synack.build()).passed(snat(&synack, WEB).build(), Reason::RevnatReply),
                ),
        );
    }
    {
        let ans = udp(B2, CLIENT_UDP).payload(b"answer: 198.18.0.1");
        t.push(
            case("egress: UDP reply is reverse-NATed to the VIP")
                .flows(vec![udp_flow()])
                .step(egress(ans.build()).passed(snat(&ans, DNS).build(), Reason::RevnatReply)),
        );
    }
    {
        let ans = udp(B2, CLIENT_UDP).udp_zero_checksum();
        t.push(
            case("egress: UDP reply with checksum 0 keeps 0")
                .flows(vec![udp_flow()])
                .step(egress(ans.build()).passed(snat(&ans, DNS).build(), Reason::RevnatReply)),
        );
    }
    t.push(
        case("egress: reply of no known flow passes untouched")
            .flows(vec![tcp_flow()])
            .step(
                egress(tcp(B3, CLIENT, TCP_SYN | TCP_ACK).build())
                    .untouched(Reason::PassNotService),
            ),
    );
    t.push(
        case("egress: a client's own tuple is not a reply")
            .flows(vec![tcp_flow()])
            .step(egress(tcp(CLIENT, WEB, TCP_ACK).build()).untouched(Reason::PassNotService)),
    );
    t.push(
        case("egress: ICMP echo reply passes untouched").step(
            egress(
                PacketBuilder::icmp(*B1.ip(), *CLIENT.ip(), ICMP_ECHO_REPLY, 0)
                    .icmp_rest([0, 7, 0, 1])
                    .build(),
            )
            .untouched(Reason::PassNotService),
        ),
    );

    // --- Rejects ------------------------------------------------------------
    {
        let syn = tcp(CLIENT, NO_PORT_TCP, TCP_SYN).seq(0xdead_beef);
        t.push(
            case("TCP SYN to an unknown port of a VIP: RST|ACK").step(
                ingress(syn.build())
                    .answered(
                        expected_rst(&syn, 0, 0xdead_bef0, TCP_RST | TCP_ACK),
                        Reason::RejectUnknownPort,
                    )
                    .effect(ct_count(0)),
            ),
        );
    }
    {
        let ack = tcp(CLIENT, NO_PORT_TCP, TCP_ACK | TCP_PSH)
            .ack_seq(0x0102_0304)
            .payload(b"data");
        t.push(
            case("TCP ACK to an unknown port of a VIP: RST with seq = ack").step(
                ingress(ack.build()).answered(
                    expected_rst(&ack, 0x0102_0304, 0, TCP_RST),
                    Reason::RejectUnknownPort,
                ),
            ),
        );
    }
    t.push(
        case("TCP RST to an unknown port of a VIP is dropped, not answered").step(
            ingress(tcp(CLIENT, NO_PORT_TCP, TCP_RST).build()).dropped(Reason::RejectUnknownPort),
        ),
    );
    {
        let q = udp(CLIENT_UDP, NO_PORT_UDP).tos(0x28);
        t.push(
            case("UDP to an unknown port of a VIP: ICMP port unreachable").step(
                ingress(q.build())
                    .answered(expected_port_unreachable(&q), Reason::RejectUnknownPort),
            ),
        );
    }
    {
        // WEB is TCP only: UDP to its port is a port no service defines.
        let q = udp(CLIENT_UDP, WEB);
        t.push(
            case("UDP to a TCP-only service port: ICMP port unreachable").step(
                ingress(q.build())
                    .answered(expected_port_unreachable(&q), Reason::RejectUnknownPort)
                    .effect(ct_count(0)),
            ),
        );
    }
    {
        let syn = tcp(CLIENT, EMPTY_TCP, TCP_SYN).seq(41);
        t.push(
            case("TCP SYN to a service without backends: RST|ACK").step(
                ingress(syn.build())
                    .answered(
                        expected_rst(&syn, 0, 42, TCP_RST | TCP_ACK),
                        Reason::RejectNoBackend,
                    )
                    .effect(ct_count(0)),
            ),
        );
    }
    {
        let syn = tcp(CLIENT, EMPTY_TCP, TCP_SYN | TCP_FIN)
            .seq(100)
            .payload(b"0123456789");
        t.push(
            case("TCP SYN+FIN with data without backends: ack = seq + len + 2").step(
                ingress(syn.build()).answered(
                    expected_rst(&syn, 0, 112, TCP_RST | TCP_ACK),
                    Reason::RejectNoBackend,
                ),
            ),
        );
    }
    t.push(
        case("TCP RST to a service without backends is dropped").step(
            ingress(tcp(CLIENT, EMPTY_TCP, TCP_RST | TCP_ACK).build())
                .dropped(Reason::RejectNoBackend),
        ),
    );
    {
        let q = udp(CLIENT_UDP, EMPTY_UDP).id(0x7777).payload(&[0x5a; 40]);
        t.push(
            case("UDP to a service without backends: ICMP port unreachable").step(
                ingress(q.build())
                    .answered(expected_port_unreachable(&q), Reason::RejectNoBackend)
                    .effect(ct_count(0)),
            ),
        );
    }
    t.push(
        case("service slot missing: dropped")
            .seed(|dp| {
                dp.slots
                    .remove(&SlotKey {
                        svc_id: WEB_ID,
                        slot: 1,
                    })
                    .map_err(|e| e.to_string())
            })
            .step(
                ingress(tcp(CLIENT, WEB, TCP_SYN).build())
                    .dropped(Reason::DropBackendMissing)
                    .effect(ct_count(0)),
            ),
    );
    t.push(
        case("backend missing: dropped")
            .seed(|dp| {
                dp.slots
                    .insert(
                        SlotKey {
                            svc_id: WEB_ID,
                            slot: 1,
                        },
                        SlotValue { backend_id: 999 },
                        0,
                    )
                    .map_err(|e| e.to_string())
            })
            .step(
                ingress(tcp(CLIENT, WEB, TCP_SYN).build())
                    .dropped(Reason::DropBackendMissing)
                    .effect(ct_count(0)),
            ),
    );

    // --- TCP state --------------------------------------------------------------
    {
        let flow = tcp_flow();
        let rst = tcp(CLIENT, WEB, TCP_RST | TCP_ACK);
        let syn = tcp(CLIENT, WEB, TCP_SYN).seq(5);
        t.push(
            case("client RST closes the entry; the next SYN chooses anew")
                .seed(move |dp| {
                    set_web_backends(dp, &[(B3_ID, B3)])?;
                    dp.add_flow(&flow).map_err(|e| e.to_string())
                })
                .step(
                    ingress(rst.build())
                        .passed(dnat(&rst, B1).build(), Reason::DnatEstablished)
                        .effect(ct_flags(flow, CT_F_CLOSED, 0))
                        .effect(ct_expires_in(flow, CT_TCP_CLOSE_LIFETIME_S)),
                )
                .step(
                    ingress(syn.build())
                        .passed(dnat(&syn, B3).build(), Reason::DnatNew)
                        .effect(new_flow(new_tcp_flow(B3, B3_ID, CT_TCP_SYN_LIFETIME_S, 0))),
                ),
        );
    }
    {
        let flow = Flow {
            flags: CT_F_CLOSED | CT_F_SEEN_NON_SYN,
            ..tcp_flow()
        };
        let ack = tcp(CLIENT, WEB, TCP_ACK);
        t.push(
            case("closed entry still carries non-SYN packets of its flow")
                .seed(move |dp| {
                    set_web_backends(dp, &[(B3_ID, B3)])?;
                    dp.add_flow(&flow).map_err(|e| e.to_string())
                })
                .step(ingress(ack.build()).passed(dnat(&ack, B1).build(), Reason::DnatEstablished)),
        );
    }
    {
        let flow = Flow {
            flags: CT_F_SEEN_NON_SYN,
            ..tcp_flow()
        };
        let rst = tcp(B1, CLIENT, TCP_RST).macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: backend RST marks the service entry closed")
                .flows(vec![flow])
                .step(
                    egress(rst.build())
                        .passed(snat(&rst, WEB).build(), Reason::RevnatReply)
                        .effect(ct_flags(flow, CT_F_CLOSED, 0)),
                ),
        );
    }
    {
        let flow = Flow {
            flags: CT_F_SEEN_NON_SYN,
            ..tcp_flow()
        };
        let fin = tcp(CLIENT, WEB, TCP_FIN | TCP_ACK);
        let fin_back = tcp(B1, CLIENT, TCP_FIN | TCP_ACK).macs(GW_MAC, POD_MAC);
        let syn = tcp(CLIENT, WEB, TCP_SYN).seq(77);
        t.push(
            case("FIN both ways closes the entry; a new SYN makes a new entry")
                .flows(vec![flow])
                .step(
                    ingress(fin.build())
                        .passed(dnat(&fin, B1).build(), Reason::DnatEstablished)
                        .effect(ct_flags(
                            flow,
                            CT_F_FIN_SERVICE,
                            CT_F_CLOSED | CT_F_FIN_REPLY,
                        )),
                )
                .step(
                    egress(fin_back.build())
                        .passed(snat(&fin_back, WEB).build(), Reason::RevnatReply)
                        .effect(ct_flags(
                            flow,
                            CT_F_FIN_SERVICE | CT_F_FIN_REPLY | CT_F_CLOSED,
                            0,
                        )),
                )
                .step(
                    ingress(syn.build())
                        .passed(dnat(&syn, B1).build(), Reason::DnatNew)
                        .effect(new_flow(new_tcp_flow(B1, B1_ID, CT_TCP_SYN_LIFETIME_S, 0))),
                ),
        );
    }
    {
        let flow = Flow {
            flags: CT_F_SEEN_NON_SYN | CT_F_FIN_REPLY,
            ..tcp_flow()
        };
        let fin = tcp(CLIENT, WEB, TCP_FIN | TCP_ACK);
        t.push(
            case("client FIN after the backend's FIN closes the entry for 10 s")
                .flows(vec![flow])
                .step(
                    ingress(fin.build())
                        .passed(dnat(&fin, B1).build(), Reason::DnatEstablished)
                        .effect(ct_flags(flow, CT_F_FIN_SERVICE | CT_F_CLOSED, 0))
                        .effect(ct_expires_in(flow, CT_TCP_CLOSE_LIFETIME_S)),
                ),
        );
    }

    // --- Fragments ------------------------------------------------------------
    {
        let full = udp(CLIENT_UDP, DNS).id(0x4242).payload(&[0xab; 100]);
        let frags = fragment(&full.build(), 64);
        let want = fragment(&dnat(&full, B2).build(), 64);
        let key = frag_key(*CLIENT.ip(), VIP, 0x4242, IPPROTO_UDP, CT_DIR_SERVICE);
        t.push(
            case("UDP fragments: first is DNATed and tracked, the second follows it")
                .step(
                    ingress(frags[0].clone())
                        .passed(want[0].clone(), Reason::DnatNew)
                        .effect(new_flow(new_udp_flow()))
                        .effect(frag_entry(key, Some(*B2.ip()))),
                )
                .step(ingress(frags[1].clone()).passed(want[1].clone(), Reason::NatFragment)),
        );
    }
    {
        let full = udp(CLIENT_UDP, DNS).id(0x4343).payload(&[0xcd; 100]);
        let frags = fragment(&full.build(), 64);
        let want = fragment(&dnat(&full, B2).build(), 64);
        let key = frag_key(*CLIENT.ip(), VIP, 0x4343, IPPROTO_UDP, CT_DIR_SERVICE);
        t.push(
            case("non-first fragment with a tracked train: daddr rewritten")
                .seed(move |dp| {
                    dp.frag4
                        .insert(
                            key,
                            Frag4Value {
                                addr: B2.ip().octets(),
                            },
                            0,
                        )
                        .map_err(|e| e.to_string())
                })
                .step(ingress(frags[1].clone()).passed(want[1].clone(), Reason::NatFragment)),
        );
    }
    {
        let full = udp(CLIENT_UDP, DNS).id(0x4444).payload(&[0xef; 100]);
        let frags = fragment(&full.build(), 64);
        let other = frag_key(*CLIENT.ip(), VIP, 0x4445, IPPROTO_UDP, CT_DIR_SERVICE);
        t.push(
            case("non-first fragment of an untracked train passes untouched")
                .seed(move |dp| {
                    dp.frag4
                        .insert(
                            other,
                            Frag4Value {
                                addr: B2.ip().octets(),
                            },
                            0,
                        )
                        .map_err(|e| e.to_string())
                })
                .step(ingress(frags[1].clone()).untouched(Reason::PassFragmentUntracked)),
        );
    }
    {
        let full = udp(CLIENT_UDP, OTHER_POD).id(0x4646).payload(&[1; 100]);
        let frags = fragment(&full.build(), 64);
        let key = frag_key(
            *CLIENT.ip(),
            *OTHER_POD.ip(),
            0x4646,
            IPPROTO_UDP,
            CT_DIR_SERVICE,
        );
        t.push(
            case("first fragment to a non-service passes and is not tracked").step(
                ingress(frags[0].clone())
                    .untouched(Reason::PassNotService)
                    .effect(frag_entry(key, None)),
            ),
        );
    }
    {
        let full = udp(B2, CLIENT_UDP).id(0x5151).payload(&[0x77; 200]);
        let frags = fragment(&full.build(), 128);
        let want = fragment(&snat(&full, DNS).build(), 128);
        let key = frag_key(
            *B2.ip(),
            *CLIENT.ip(),
            0x5151,
            IPPROTO_UDP,
            FRAG_DIR_REVNAT_SRC,
        );
        t.push(
            case("egress: reply fragments: first reverse-NATed and tracked, second follows")
                .flows(vec![udp_flow()])
                .step(
                    egress(frags[0].clone())
                        .passed(want[0].clone(), Reason::RevnatReply)
                        .effect(frag_entry(key, Some(VIP))),
                )
                .step(egress(frags[1].clone()).passed(want[1].clone(), Reason::NatFragment)),
        );
    }
    {
        let full = udp(B2, CLIENT_UDP).id(0x5252).payload(&[0x78; 200]);
        let frags = fragment(&full.build(), 128);
        t.push(
            case("egress: untracked non-first reply fragment passes untouched")
                .flows(vec![udp_flow()])
                .step(egress(frags[1].clone()).untouched(Reason::PassFragmentUntracked)),
        );
    }

    // --- ICMP errors about translated flows ---------------------------------------
    {
        // The client's packet as the backend received it (after DNAT).
        let inner = tcp(CLIENT, B1, TCP_ACK | TCP_PSH)
            .dont_fragment(true)
            .payload(&[0x42; 1400]);
        let err = PacketBuilder::icmp_frag_needed(ROUTER, *CLIENT.ip(), 1280, &inner)
            .macs(GW_MAC, POD_MAC);
        let want = PacketBuilder::icmp_frag_needed(ROUTER, *CLIENT.ip(), 1280, &dnat(&inner, WEB))
            .macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: ICMP frag-needed from a router about a TCP flow: inner reverse-NATed")
                .flows(vec![tcp_flow()])
                .step(egress(err.build()).passed(want.build(), Reason::RevnatIcmpError)),
        );
    }
    {
        let inner = udp(CLIENT_UDP, B2).payload(b"query bytes");
        let err = PacketBuilder::icmp_error(
            *B2.ip(),
            *CLIENT.ip(),
            ICMP_DEST_UNREACH,
            ICMP_PORT_UNREACH,
            &inner,
        )
        .macs(GW_MAC, POD_MAC);
        let want = PacketBuilder::icmp_error(
            VIP,
            *CLIENT.ip(),
            ICMP_DEST_UNREACH,
            ICMP_PORT_UNREACH,
            &dnat(&inner, DNS),
        )
        .macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: ICMP port unreachable from the backend: outer and inner reverse-NATed")
                .flows(vec![udp_flow()])
                .step(egress(err.build()).passed(want.build(), Reason::RevnatIcmpError)),
        );
    }
    {
        let inner = udp(CLIENT_UDP, B2).udp_zero_checksum().ttl(1);
        let err = PacketBuilder::icmp_error(ROUTER, *CLIENT.ip(), ICMP_TIME_EXCEEDED, 0, &inner)
            .macs(GW_MAC, POD_MAC);
        let want = PacketBuilder::icmp_error(
            ROUTER,
            *CLIENT.ip(),
            ICMP_TIME_EXCEEDED,
            0,
            &dnat(&inner, DNS),
        )
        .macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: ICMP time exceeded quoting UDP with checksum 0: inner stays 0")
                .flows(vec![udp_flow()])
                .step(egress(err.build()).passed(want.build(), Reason::RevnatIcmpError)),
        );
    }
    {
        // A quote of the header and only the ports (shorter than RFC 792's
        // 8 bytes), in a frame with bytes after the IPv4 packet (a
        // trailer): the quoted UDP checksum is not in the message, and the
        // bytes where it would be are no part of it (the ICMP checksum
        // does not cover them): ports and addresses are translated, the
        // trailer stays as it is.
        let inner = udp(CLIENT_UDP, B2).payload(b"query bytes");
        let error = |p: &PacketBuilder| {
            let mut f = PacketBuilder::icmp(ROUTER, *CLIENT.ip(), ICMP_TIME_EXCEEDED, 0)
                .macs(GW_MAC, POD_MAC)
                .payload(&p.ipv4_bytes()[..20 + 4])
                .build();
            f.extend_from_slice(&[0x5a; 24]);
            f
        };
        t.push(
            case("egress: ICMP error quoting only the ports, in a frame with a trailer: trailer untouched")
                .flows(vec![udp_flow()])
                .step(
                    egress(error(&inner))
                        .passed(error(&dnat(&inner, DNS)), Reason::RevnatIcmpError),
                ),
        );
    }
    {
        let inner = tcp(CLIENT, B3, TCP_ACK).dont_fragment(true);
        let err = PacketBuilder::icmp_frag_needed(ROUTER, *CLIENT.ip(), 1280, &inner)
            .macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: ICMP error about no known flow passes untouched")
                .flows(vec![tcp_flow()])
                .step(egress(err.build()).untouched(Reason::PassNotService)),
        );
    }

    t.extend(conntrack_cases());
    t
}

/// An established flow (the backend answered, the client went past its
/// SYN) whose sides have reached these sequence numbers (`None`: unknown).
fn established(base: Flow, client_seq: Option<u32>, backend_seq: Option<u32>) -> Seed {
    Box::new(move |dp| {
        let flow = Flow {
            flags: base.flags | CT_F_SEEN_NON_SYN | CT_F_REPLIED,
            ..base
        };
        dp.add_flow(&flow).map_err(|e| e.to_string())?;
        for (key, seq) in [
            (flow.service_key(), client_seq),
            (flow.reply_key(), backend_seq),
        ] {
            if let Some(seq) = seq {
                let mut v = ct_get(dp, &key)?;
                v.flags |= CT_F_SEQ;
                v.seq_next = seq;
                dp.ct4.insert(key, v, 0).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}

/// The service entry of `flow` is (`true`) or is not closed.
fn closed(flow: Flow, yes: bool) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    if yes {
        ct_flags(flow, CT_F_CLOSED, 0)
    } else {
        ct_flags(flow, 0, CT_F_CLOSED)
    }
}

/// Conntrack you can trust (pod path).
fn conntrack_cases() -> Vec<Case> {
    let mut t = Vec::new();
    {
        // A client that sends once a minute while its backend streams: the
        // replies keep the flow alive, so the client's next datagram still
        // reaches its backend. B4 is not a backend of DNS: re-balancing
        // would show.
        let flow = Flow {
            backend: B4,
            backend_id: B4_ID,
            svc_id: DNS_ID,
            flags: CT_F_REPLIED,
            expires_ns: monotonic_ns() + NS,
            ..udp_flow()
        };
        let reply = udp(B4, CLIENT_UDP).macs(GW_MAC, POD_MAC);
        let q = udp(CLIENT_UDP, DNS);
        t.push(
            case("liveness: replies refresh the flow, whose silent client keeps its backend")
                .flows(vec![flow])
                .step(
                    egress(reply.build())
                        .passed(snat(&reply, DNS).build(), Reason::RevnatReply)
                        .effect(ct_expires_in(flow, CT_UDP_LIFETIME_S)),
                )
                .step(ingress(q.build()).passed(dnat(&q, B4).build(), Reason::DnatEstablished)),
        );
    }
    {
        // Two frontends sharing B1; the first flow from CLIENT:40000 has
        // lived longer than its reply entry's first lifetime (its replies
        // never refreshed that entry before), its service entry is alive.
        const WEB2: SocketAddrV4 = sa(198, 19, 0, 2, 80);
        let flow = Flow {
            created_ns: 1,
            ..tcp_flow()
        };
        let syn = tcp(CLIENT, WEB2, TCP_SYN);
        t.push(
            case("liveness: a NAT clash with a flow older than a minute is still seen")
                .seed(move |dp| {
                    dp.add_service(WEB2, IPPROTO_TCP, 5, &[(B1_ID, B1)])
                        .map_err(|e| e.to_string())?;
                    dp.add_flow(&Flow {
                        flags: CT_F_SEEN_NON_SYN | CT_F_REPLIED,
                        ..flow
                    })
                    .map_err(|e| e.to_string())?;
                    // The reply entry as the first reply left it.
                    let mut r = ct_get(dp, &flow.reply_key())?;
                    r.expires_ns = 1;
                    dp.ct4
                        .insert(flow.reply_key(), r, 0)
                        .map_err(|e| e.to_string())
                })
                .step(
                    ingress(syn.build())
                        .expect(
                            TCX_NEXT,
                            Expect::Check(Box::new(|_, out| {
                                let p = parse(out)?;
                                let (src, dst) = (p.ip()?.source()?, p.ip()?.destination()?);
                                if dst != B1 || src.port() == CLIENT.port() {
                                    return Err(format!(
                                        "{src} -> {dst}, want a remapped port -> {B1}"
                                    ));
                                }
                                Ok(())
                            })),
                            Reason::DnatNewPortRemapped,
                        )
                        .effect(move |dp, _, _| {
                            let r = ct_get(dp, &flow.reply_key())?;
                            if (r.nat_addr, r.nat_port) != (VIP.octets(), WEB.port()) {
                                return Err(format!("the first flow's reply entry now says {r:?}"));
                            }
                            Ok(())
                        }),
                ),
        );
    }
    {
        let flow = tcp_flow();
        let ack = tcp(CLIENT, WEB, TCP_ACK).payload(b"still here");
        let syn = tcp(sa(198, 18, 1, 10, 40001), WEB, TCP_SYN);
        t.push(
            case("no endpoints: an established flow keeps its backend, a new one is refused")
                .seed(move |dp| {
                    established(flow, None, None)(dp)?;
                    set_web_backends(dp, &[])
                })
                .step(
                    ingress(ack.build())
                        .passed(dnat(&ack, B1).build(), Reason::DnatEstablished)
                        .effect(closed(flow, false)),
                )
                .step(ingress(syn.build()).answered(
                    expected_rst(&syn, 0, 1_000_001, TCP_RST | TCP_ACK),
                    Reason::RejectNoBackend,
                )),
        );
    }
    {
        let flow = udp_flow();
        let q = udp(CLIENT_UDP, DNS);
        t.push(
            case("no endpoints: a UDP flow that is alive keeps its backend")
                .seed(move |dp| {
                    dp.add_service(DNS, IPPROTO_UDP, DNS_ID, &[])
                        .map_err(|e| e.to_string())?;
                    dp.add_flow(&flow).map_err(|e| e.to_string())
                })
                .step(ingress(q.build()).passed(dnat(&q, B2).build(), Reason::DnatEstablished)),
        );
    }
    {
        let flow = tcp_flow();
        let blind = tcp(CLIENT, WEB, TCP_RST).seq(1_000_000 + (16 << 20));
        let real = tcp(CLIENT, WEB, TCP_RST).seq(1_000_000);
        t.push(
            case("blind RST from the client side: passed on, the flow stays; in window: closes")
                .seed(established(flow, Some(1_000_000), None))
                .step(
                    ingress(blind.build())
                        .passed(dnat(&blind, B1).build(), Reason::RstOutOfWindow)
                        .effect(closed(flow, false)),
                )
                .step(
                    ingress(real.build())
                        .passed(dnat(&real, B1).build(), Reason::DnatEstablished)
                        .effect(closed(flow, true)),
                ),
        );
    }
    {
        let flow = tcp_flow();
        let blind = tcp(B1, CLIENT, TCP_RST)
            .macs(GW_MAC, POD_MAC)
            .seq(7_000_000u32.wrapping_sub(40 << 20));
        let real = tcp(B1, CLIENT, TCP_RST)
            .macs(GW_MAC, POD_MAC)
            .seq(7_000_100);
        t.push(
            case("blind RST from the backend side: passed on, the flow stays; in window: closes")
                .seed(established(flow, Some(1_000_000), Some(7_000_000)))
                .step(
                    egress(blind.build())
                        .passed(snat(&blind, WEB).build(), Reason::RstOutOfWindow)
                        .effect(closed(flow, false)),
                )
                .step(
                    egress(real.build())
                        .passed(snat(&real, WEB).build(), Reason::RevnatReply)
                        .effect(closed(flow, true)),
                ),
        );
    }
    {
        let flow = Flow {
            flags: CT_F_SEQ,
            ..tcp_flow()
        };
        let syn = tcp(CLIENT, WEB, TCP_SYN);
        let blind = tcp(B1, CLIENT, TCP_RST | TCP_ACK)
            .macs(GW_MAC, POD_MAC)
            .seq(0)
            .ack_seq(123_456);
        let refusal = tcp(B1, CLIENT, TCP_RST | TCP_ACK)
            .macs(GW_MAC, POD_MAC)
            .seq(0)
            .ack_seq(1_000_001);
        t.push(
            case("backend refusing a SYN: its RST must acknowledge the SYN to close the flow")
                .step(ingress(syn.build()).passed(dnat(&syn, B1).build(), Reason::DnatNew))
                .step(
                    egress(blind.build())
                        .passed(snat(&blind, WEB).build(), Reason::RstOutOfWindow)
                        .effect(closed(flow, false)),
                )
                .step(
                    egress(refusal.build())
                        .passed(snat(&refusal, WEB).build(), Reason::RevnatReply)
                        .effect(closed(flow, true)),
                ),
        );
    }
    {
        // The flow's first reply makes it established: 6 h, not 60 s.
        let syn = tcp(CLIENT, WEB, TCP_SYN);
        let synack = tcp(B1, CLIENT, TCP_SYN | TCP_ACK).macs(GW_MAC, POD_MAC);
        let ack = tcp(CLIENT, WEB, TCP_ACK).seq(1_000_001);
        let flow = tcp_flow();
        t.push(
            case("unassured until answered: SYN 60 s, answered and acknowledged 6 h")
                .step(
                    ingress(syn.build())
                        .passed(dnat(&syn, B1).build(), Reason::DnatNew)
                        .effect(ct_expires_in(flow, CT_TCP_SYN_LIFETIME_S)),
                )
                .step(
                    egress(synack.build())
                        .passed(snat(&synack, WEB).build(), Reason::RevnatReply)
                        .effect(ct_flags(flow, CT_F_REPLIED, CT_F_CLOSED)),
                )
                .step(
                    ingress(ack.build())
                        .passed(dnat(&ack, B1).build(), Reason::DnatEstablished)
                        .effect(ct_expires_in(flow, CT_TCP_LIFETIME_S)),
                ),
        );
    }
    {
        // A conntrack entry created under a new key is counted once.
        let syn = tcp(CLIENT, WEB, TCP_SYN);
        t.push(
            case("new flows count the conntrack entries they create").step(
                ingress(syn.build())
                    .passed(dnat(&syn, B1).build(), Reason::DnatNew)
                    .effect(|dp, _, _| {
                        let n = dp.created_entries().map_err(|e| e.to_string())?;
                        if n != 2 {
                            return Err(format!("{n} entries counted as created, want 2"));
                        }
                        Ok(())
                    }),
            ),
        );
    }
    t
}

#[test]
fn tc_fixtures() {
    skip_unless!(Needs::prog_run());
    let table = cases();
    assert!(table.len() >= 30, "the table has {} cases", table.len());
    run_table(&table, seed_world);
}

#[test]
fn random_backend_selection_is_uniform() {
    skip_unless!(Needs::prog_run());
    const FLOWS: u16 = 10_000;
    let backends: Vec<(u32, SocketAddrV4)> = (1..=5u8)
        .map(|i| (100 + u32::from(i), sa(198, 18, 5, i, 8000 + u16::from(i))))
        .collect();
    let mut dp = TestDatapath::load().unwrap_or_else(|e| panic!("load: {e}"));
    dp.add_service(WEB, IPPROTO_TCP, WEB_ID, &backends)
        .unwrap_or_else(|e| panic!("seed: {e}"));
    let mut counts = [0u32; 5];
    for i in 0..FLOWS {
        let client = SocketAddrV4::new(*CLIENT.ip(), 10_000 + i);
        let out = dp
            .run(TcProgram::PodIngress, &tcp(client, WEB, TCP_SYN).build())
            .unwrap_or_else(|e| panic!("test run: {e}"));
        assert_eq!(out.retval, TCX_NEXT, "flow {i}: verdict");
        let to = parse(&out.data_out)
            .and_then(|p| p.ip()?.destination())
            .unwrap_or_else(|e| panic!("flow {i}: output: {e}"));
        let slot = backends
            .iter()
            .position(|(_, a)| *a == to)
            .unwrap_or_else(|| panic!("flow {i}: DNAT to {to}, not a backend"));
        counts[slot] += 1;
    }
    let new = dp
        .stat(Reason::DnatNew)
        .unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!(new.packets, u64::from(FLOWS), "every flow is new");
    assert_eq!(
        dp.ct4.keys().count(),
        2 * usize::from(FLOWS),
        "two conntrack entries per flow"
    );
    for (i, n) in counts.iter().enumerate() {
        assert!(
            (1500..=2500).contains(n),
            "backend {} chosen {n} times of {FLOWS}: {counts:?}",
            i + 1
        );
    }
}
