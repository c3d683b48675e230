//! IPv6 packet fixtures for the pod-facing TC programs, run through
//! `BPF_PROG_TEST_RUN`: the IPv6 twin of `tests/fixtures.rs` (same shape,
//! same runner), plus what only IPv6 has (extension headers, fragment
//! headers, ICMPv6 Packet Too Big, NDP, UDP checksum 0 being invalid).
//!
//! Every expected output is built by the packet builder from what the
//! packet must look like after translation, never taken from the program.
//!
//! Seeds and map checks use the datapath's IPv6 maps
//! ([`TestDatapath::v6`]) and the helpers the IPv6 tables share
//! (`svcnat_testkit::fixture6`).
//!
//! What these fixtures assume of the datapath where IPv4 gives no answer:
//! - A UDP datagram with checksum 0 (invalid over IPv6, RFC 8200 8.1) to a
//!   service or as a reply is dropped, counted `DropTruncated` (a malformed
//!   packet), neither translated nor passed on.
//! - At most [`EXT_WALK_MAX`] extension headers are walked; one more, or
//!   one of the IANA registry's that is not walked (authentication,
//!   mobility, HIP, shim6, the experimental 253 and 254), is passed
//!   untouched (`PassIpv6Extension`). Any other next header is an
//!   upper-layer protocol (`PassOtherProtocol` to a VIP, as SCTP is).
//! - The ICMPv6 port unreachable of a reject quotes the offending IPv6
//!   header and the first 8 bytes of its UDP header (14+40+8+40+8 bytes),
//!   hop limit 64, traffic class and flow label 0, as the IPv4 reject does.
//! - A TCP RST reject is the IPv4 one in an IPv6 header (hop limit 64,
//!   traffic class and flow label 0).
//!
//! Needs root and the eBPF object (`cargo xtask build-ebpf
//! --release`); without them the tests print why and pass.
//! `SVCNAT_FIXTURE=substring` runs only the cases whose description
//! contains it.

use std::net::{Ipv6Addr, SocketAddrV6};

use proxy_common::{
    CT_DIR_SERVICE, CT_F_REPLIED, CT_F_SEEN_NON_SYN, CT_F_SEQ, CT_TCP_SYN_LIFETIME_S,
    CT_UDP_UNREPLIED_LIFETIME_S, FRAG_DIR_REVNAT_SRC, HAIRPIN6_ADDR_DEFAULT, IPPROTO_TCP,
    IPPROTO_UDP, NODE6_HAIRPIN_KEY, Reason, SNAT_PORT_MAX, SNAT_PORT_MIN, SlotKey, SlotValue,
};
use svcnat_testkit::{
    datapath::{Flow6, TCX_NEXT, TcProgram, TestDatapath, monotonic_ns},
    fixture::{Case, Expect, Step, Window, case, hex, run_table},
    fixture6::{
        P6, ct_count, ct_get, dnat, ends, forcing_zero_sum, frag_entry, frag_key, seed_frag, snat,
        udp_checksum_is,
    },
    packet::{
        ExtHeader, ICMP6_DEST_UNREACH, ICMP6_ECHO_REPLY, ICMP6_PORT_UNREACH, ICMP6_TIME_EXCEEDED,
        IPPROTO_EXPERIMENT1, IPV6_HLEN, NA_OVERRIDE, NA_SOLICITED, PacketBuilder, TCP_ACK, TCP_FIN,
        TCP_PSH, TCP_RST, TCP_SYN, ethernet_frame, fragment6, parse,
    },
    skip::Needs,
    skip_unless,
};

// ---------------------------------------------------------------------------
// The world every case starts from
// ---------------------------------------------------------------------------

const NS: u64 = 1_000_000_000;

/// How many extension headers the datapath walks before it gives up on a
/// packet (`PassIpv6Extension`); the lead's datapath sets the real bound.
const EXT_WALK_MAX: usize = 4;

const fn ip6(a: u16, b: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, a, b, 0, 0, 0, last)
}

const fn sa(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

/// A pod sending to services.
const CLIENT_IP: Ipv6Addr = ip6(1, 0, 0x10);
const CLIENT: SocketAddrV6 = sa(CLIENT_IP, 40000);
const CLIENT_UDP: SocketAddrV6 = sa(CLIENT_IP, 50000);
/// The VIP of every service below.
const VIP: Ipv6Addr = ip6(0xffff, 0, 1);
/// TCP service with one backend (B1).
const WEB: SocketAddrV6 = sa(VIP, 80);
const WEB_ID: u32 = 1;
/// UDP service with one backend (B2).
const DNS: SocketAddrV6 = sa(VIP, 53);
const DNS_ID: u32 = 2;
/// TCP and UDP service ports without backends.
const EMPTY_TCP: SocketAddrV6 = sa(VIP, 81);
const EMPTY_UDP: SocketAddrV6 = sa(VIP, 54);
/// Ports of the VIP that no service defines.
const NO_PORT_TCP: SocketAddrV6 = sa(VIP, 9999);
const NO_PORT_UDP: SocketAddrV6 = sa(VIP, 9998);
/// Not a VIP: another pod.
const OTHER_POD: SocketAddrV6 = sa(ip6(3, 0, 3), 80);
/// A router on the path (source of ICMPv6 errors).
const ROUTER: Ipv6Addr = ip6(9, 0, 9);

const B1: SocketAddrV6 = sa(ip6(2, 0, 1), 8080);
const B1_ID: u32 = 11;
const B2: SocketAddrV6 = sa(ip6(2, 0, 2), 5353);
const B2_ID: u32 = 12;
const B3: SocketAddrV6 = sa(ip6(2, 0, 3), 8080);
const B3_ID: u32 = 13;
const B4: SocketAddrV6 = sa(ip6(2, 0, 4), 8080);
const B4_ID: u32 = 14;

const POD_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const GW_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];

/// Services WEB (TCP, B1), DNS (UDP, B2), EMPTY_TCP and EMPTY_UDP (no backends).
fn seed_world(dp: &mut TestDatapath) -> Result<(), String> {
    dp.add_service6(WEB, IPPROTO_TCP, WEB_ID, &[(B1_ID, B1)])?;
    dp.add_service6(DNS, IPPROTO_UDP, DNS_ID, &[(B2_ID, B2)])?;
    dp.add_service6(EMPTY_TCP, IPPROTO_TCP, 3, &[])?;
    dp.add_service6(EMPTY_UDP, IPPROTO_UDP, 4, &[])?;
    Ok(())
}

/// A live flow: created a second ago, expires in an hour.
fn live_flow(client: SocketAddrV6, vip: SocketAddrV6, backend: SocketAddrV6, proto: u8) -> Flow6 {
    let now = monotonic_ns();
    let (backend_id, svc_id) = match backend {
        b if b == B1 => (B1_ID, WEB_ID),
        b if b == B2 => (B2_ID, DNS_ID),
        b if b == B3 => (B3_ID, WEB_ID),
        _ => (B4_ID, WEB_ID),
    };
    Flow6 {
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

fn tcp_flow() -> Flow6 {
    live_flow(CLIENT, WEB, B1, IPPROTO_TCP)
}

fn udp_flow() -> Flow6 {
    live_flow(CLIENT_UDP, DNS, B2, IPPROTO_UDP)
}

// ---------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------

fn tcp(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> P6 {
    PacketBuilder::tcp(src, dst)
        .macs(POD_MAC, GW_MAC)
        .flags(flags)
        .seq(1_000_000)
        .ack_seq(if flags & TCP_ACK != 0 { 7_000_000 } else { 0 })
        .hop_limit(61)
        .traffic_class(0x10)
        .flow_label(0x1_2345)
}

fn udp(src: SocketAddrV6, dst: SocketAddrV6) -> P6 {
    PacketBuilder::udp(src, dst)
        .macs(POD_MAC, GW_MAC)
        .hop_limit(61)
        .flow_label(0xa_bcde)
        .payload(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
}

/// The TCP reset the datapath answers `p` with (the IPv4 reject's rules:
/// `proxy-ebpf/src/reject4.rs`), in an IPv6 header.
fn expected_rst(p: &P6, seq: u32, ack_seq: u32, flags: u8) -> Vec<u8> {
    let (sport, dport) = p.l4_ports();
    PacketBuilder::tcp(sa(p.ip.dst, dport), sa(p.ip.src, sport))
        .macs(p.eth_dst, p.eth_src)
        .hop_limit(64)
        .flags(flags)
        .seq(seq)
        .ack_seq(ack_seq)
        .window(0)
        .build()
}

/// The ICMPv6 port unreachable the datapath answers the UDP datagram `p`
/// with: from the VIP, quoting the IPv6 header and the first 8 bytes of
/// the UDP header.
fn expected_port_unreachable(p: &P6) -> Vec<u8> {
    let quoted = &p.ipv6_bytes()[..40 + 8];
    PacketBuilder::icmp(p.ip.dst, p.ip.src, ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH)
        .macs(p.eth_dst, p.eth_src)
        .hop_limit(64)
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

/// What a newly created flow must look like.
#[derive(Clone, Copy)]
struct NewFlow {
    client: SocketAddrV6,
    vip: SocketAddrV6,
    backend: SocketAddrV6,
    backend_id: u32,
    svc_id: u32,
    proto: u8,
    lifetime_s: u64,
    flags: u8,
}

fn check_new_flow(dp: &TestDatapath, w: Window, n: NewFlow) -> Result<(), String> {
    let flow = Flow6 {
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
    if (s.peer_addr, s.peer_port) != (n.client.ip().octets(), n.client.port()) {
        return Err(format!(
            "service entry peer {:?}:{}",
            s.peer_addr, s.peer_port
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
fn new_tcp_flow(backend: SocketAddrV6, backend_id: u32, flags: u8) -> NewFlow {
    NewFlow {
        client: CLIENT,
        vip: WEB,
        backend,
        backend_id,
        svc_id: WEB_ID,
        proto: IPPROTO_TCP,
        lifetime_s: CT_TCP_SYN_LIFETIME_S,
        flags: flags | CT_F_SEQ,
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
    flow: Flow6,
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

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

/// Packets that are not for the service path.
fn passed_cases() -> Vec<Case> {
    let target = ip6(1, 0, 0x20);
    vec![
        case("NDP neighbor solicitation passes untouched").step(
            ingress(PacketBuilder::neighbor_solicitation(CLIENT_IP, POD_MAC, target).build())
                .untouched(Reason::PassNotService),
        ),
        case("NDP solicitation for a VIP passes untouched").step(
            ingress(PacketBuilder::neighbor_solicitation(CLIENT_IP, POD_MAC, VIP).build())
                .untouched(Reason::PassNotService),
        ),
        case("egress: NDP neighbor advertisement passes untouched").step(
            egress(
                PacketBuilder::neighbor_advertisement(
                    target,
                    GW_MAC,
                    CLIENT_IP,
                    POD_MAC,
                    target,
                    NA_SOLICITED | NA_OVERRIDE,
                )
                .build(),
            )
            .untouched(Reason::PassNotService),
        ),
        case("TCP to a pod that is not a VIP passes untouched").step(
            ingress(tcp(CLIENT, OTHER_POD, TCP_SYN).build()).untouched(Reason::PassNotService),
        ),
        case("UDP to a pod that is not a VIP passes untouched")
            .step(ingress(udp(CLIENT_UDP, OTHER_POD).build()).untouched(Reason::PassNotService)),
        case("ICMPv6 echo to a VIP passes untouched").step(
            ingress(
                PacketBuilder::icmp_echo_request(CLIENT_IP, VIP, 7, 1)
                    .macs(POD_MAC, GW_MAC)
                    .payload(b"ping")
                    .build(),
            )
            .untouched(Reason::PassOtherProtocol),
        ),
        case("ICMPv6 echo to a non-VIP passes untouched").step(
            ingress(
                PacketBuilder::icmp_echo_request(CLIENT_IP, *OTHER_POD.ip(), 7, 1)
                    .macs(POD_MAC, GW_MAC)
                    .build(),
            )
            .untouched(Reason::PassNotService),
        ),
        case("egress: ICMPv6 echo reply passes untouched").step(
            egress(
                PacketBuilder::icmp(*B1.ip(), CLIENT_IP, ICMP6_ECHO_REPLY, 0)
                    .icmp_rest([0, 7, 0, 1])
                    .build(),
            )
            .untouched(Reason::PassNotService),
        ),
        case("egress: reply of no known flow passes untouched")
            .flows6(vec![tcp_flow()])
            .step(
                egress(tcp(B3, CLIENT, TCP_SYN | TCP_ACK).build())
                    .untouched(Reason::PassNotService),
            ),
        case("egress: a client's own tuple is not a reply")
            .flows6(vec![tcp_flow()])
            .step(egress(tcp(CLIENT, WEB, TCP_ACK).build()).untouched(Reason::PassNotService)),
    ]
}

/// Headers shorter than they claim.
fn malformed_cases() -> Vec<Case> {
    let syn = tcp(CLIENT, WEB, TCP_SYN);
    vec![
        // BPF_PROG_TEST_RUN refuses a TC frame of an IPv6 ethertype with
        // fewer than 40 bytes after Ethernet: the shortest is the header.
        case("IPv6 header without any TCP bytes is dropped")
            .step(ingress(syn.build()[..14 + 40].to_vec()).dropped(Reason::DropTruncated)),
        case("IP version 4 under ethertype IPv6 is dropped").step({
            let mut f = syn.build();
            f[14] = 0x40 | (f[14] & 0x0f);
            ingress(f).dropped(Reason::DropTruncated)
        }),
        case("TCP header truncated to 10 bytes is dropped")
            .step(ingress(syn.build()[..14 + 40 + 10].to_vec()).dropped(Reason::DropTruncated)),
        case("TCP data offset 4 is dropped").step(
            ingress(tcp(CLIENT, WEB, TCP_SYN).tcp_data_offset(4).build())
                .dropped(Reason::DropTruncated),
        ),
        case("UDP header truncated to 6 bytes is dropped").step(
            ingress(udp(CLIENT_UDP, DNS).payload(&[]).build()[..14 + 40 + 6].to_vec())
                .dropped(Reason::DropTruncated),
        ),
        case("hop-by-hop header cut short is dropped").step(
            ingress(tcp(CLIENT, WEB, TCP_SYN).hop_by_hop(&[0; 12]).build()[..14 + 40 + 8].to_vec())
                .dropped(Reason::DropTruncated),
        ),
        case("egress: UDP reply with a truncated header is dropped")
            .flows6(vec![udp_flow()])
            .step(
                egress(udp(B2, CLIENT_UDP).build()[..14 + 40 + 4].to_vec())
                    .dropped(Reason::DropTruncated),
            ),
        case("a frame of ethertype IPv6 holding IPv4 bytes is dropped").step(
            ingress(ethernet_frame(GW_MAC, POD_MAC, 0x86dd, &[0x45; 60]))
                .dropped(Reason::DropTruncated),
        ),
    ]
}

/// New and established flows, replies, and the UDP checksum rules.
fn flow_cases() -> Vec<Case> {
    let mut t = Vec::new();
    {
        let syn = tcp(CLIENT, WEB, TCP_SYN).tcp_options(&[0x02, 0x04, 0x05, 0xa0]);
        t.push(
            case("TCP SYN to a service: new flow, DNAT to the backend").step(
                ingress(syn.build())
                    .passed(dnat(&syn, B1).build(), Reason::DnatNew)
                    .effect(new_flow(new_tcp_flow(B1, B1_ID, 0)))
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
                    .effect(new_flow(new_tcp_flow(B1, B1_ID, CT_F_SEEN_NON_SYN))),
            ),
        );
    }
    {
        let ack = tcp(CLIENT, WEB, TCP_ACK).payload(b"hello");
        let flow = tcp_flow();
        t.push(
            case("TCP ACK of an established flow: DNAT, marks SEEN_NON_SYN")
                .flows6(vec![flow])
                .step(
                    ingress(ack.build())
                        .passed(dnat(&ack, B1).build(), Reason::DnatEstablished)
                        .effect(ct_flags(flow, CT_F_SEEN_NON_SYN, 0))
                        .effect(ct_count(2)),
                ),
        );
    }
    {
        let ack = tcp(CLIENT, WEB, TCP_ACK).payload(b"more");
        let flow = Flow6 {
            backend: B4,
            backend_id: B4_ID,
            ..tcp_flow()
        };
        t.push(
            case("established flow keeps its backend after the backend set changes")
                .seed(move |dp| {
                    dp.add_service6(WEB, IPPROTO_TCP, WEB_ID, &[(B3_ID, B3)])?;
                    Ok(dp.add_flow6(&flow)?)
                })
                .step(ingress(ack.build()).passed(dnat(&ack, B4).build(), Reason::DnatEstablished)),
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
                .flows6(vec![udp_flow()])
                .step(ingress(q.build()).passed(dnat(&q, B2).build(), Reason::DnatEstablished)),
        );
    }
    {
        let syn = tcp(CLIENT, WEB, TCP_SYN);
        let backends = [(B1_ID, B1), (B3_ID, B3), (B4_ID, B4)];
        t.push(
            case("TCP SYN to a service with three backends: DNAT to one of them")
                .seed(move |dp| Ok(dp.add_service6(WEB, IPPROTO_TCP, WEB_ID, &backends)?))
                .step(
                    ingress(syn.build())
                        .expect(
                            TCX_NEXT,
                            Expect::Check(Box::new(move |_, out| {
                                let (_, to) = ends(out)?;
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
                            let (_, to) = ends(out)?;
                            let (id, addr) = backends
                                .iter()
                                .copied()
                                .find(|(_, a)| *a == to)
                                .ok_or("not a backend")?;
                            check_new_flow(dp, w, new_tcp_flow(addr, id, 0))
                        }),
                ),
        );
    }

    // --- Replies --------------------------------------------------------------
    {
        let synack = tcp(B1, CLIENT, TCP_SYN | TCP_ACK).macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: TCP SYN-ACK from the backend is reverse-NATed to the VIP")
                .flows6(vec![tcp_flow()])
                .step(
                    egress(synack.build()).passed(snat(&synack, WEB).build(), Reason::RevnatReply),
                ),
        );
    }
    {
        let ans = udp(B2, CLIENT_UDP).payload(b"answer: 2001:db8::1");
        t.push(
            case("egress: UDP reply is reverse-NATed to the VIP")
                .flows6(vec![udp_flow()])
                .step(egress(ans.build()).passed(snat(&ans, DNS).build(), Reason::RevnatReply)),
        );
    }

    // --- UDP checksum rules ---------------------------------------------------
    t.push(
        case("UDP checksum 0 to a service is invalid over IPv6: dropped, not translated").step(
            ingress(udp(CLIENT_UDP, DNS).udp_zero_checksum().build())
                .dropped(Reason::DropTruncated)
                .effect(ct_count(0)),
        ),
    );
    t.push(
        case("egress: UDP reply with checksum 0 is invalid over IPv6: dropped")
            .flows6(vec![udp_flow()])
            .step(
                egress(udp(B2, CLIENT_UDP).udp_zero_checksum().build())
                    .dropped(Reason::DropTruncated),
            ),
    );
    {
        let q = forcing_zero_sum(udp(CLIENT_UDP, DNS), |p| dnat(p, B2));
        t.push(
            case("UDP whose DNATed checksum sums to zero carries 0xffff, never 0").step(
                ingress(q.build())
                    .passed(dnat(&q, B2).build(), Reason::DnatNew)
                    .effect(udp_checksum_is(0xffff)),
            ),
        );
    }
    {
        let ans = forcing_zero_sum(udp(B2, CLIENT_UDP), |p| snat(p, DNS));
        t.push(
            case("egress: UDP reply whose reverse-NATed checksum sums to zero carries 0xffff")
                .flows6(vec![udp_flow()])
                .step(
                    egress(ans.build())
                        .passed(snat(&ans, DNS).build(), Reason::RevnatReply)
                        .effect(udp_checksum_is(0xffff)),
                ),
        );
    }
    t
}

/// Rejects, built back to the client with valid checksums.
fn reject_cases() -> Vec<Case> {
    let mut t = Vec::new();
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
        let q = udp(CLIENT_UDP, NO_PORT_UDP).traffic_class(0x28);
        t.push(
            case("UDP to an unknown port of a VIP: ICMPv6 port unreachable").step(
                ingress(q.build())
                    .answered(expected_port_unreachable(&q), Reason::RejectUnknownPort),
            ),
        );
    }
    {
        // WEB is TCP only: UDP to its port is a port no service defines.
        let q = udp(CLIENT_UDP, WEB);
        t.push(
            case("UDP to a TCP-only service port: ICMPv6 port unreachable").step(
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
        let q = udp(CLIENT_UDP, EMPTY_UDP).payload(&[0x5a; 40]);
        t.push(
            case("UDP to a service without backends: ICMPv6 port unreachable").step(
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
    t
}

/// A segment-routing header (RFC 8754) with no segment left, whose one
/// segment is `seg`: a node that is not a segment endpoint skips it.
fn srh(seg: Ipv6Addr) -> ExtHeader {
    let mut data = vec![0, 0, 0, 0]; // last entry, flags, tag
    data.extend_from_slice(&seg.octets());
    ExtHeader::Routing {
        routing_type: 4,
        segments_left: 0,
        data,
    }
}

/// Extension headers: walked and kept, or the packet passed.
fn extension_cases() -> Vec<Case> {
    let mut t = Vec::new();
    let each: [(&'static str, &'static str, ExtHeader); 3] = [
        (
            "TCP SYN after a hop-by-hop header: walked, DNAT, header kept",
            "UDP after a hop-by-hop header: walked, DNAT, header kept",
            ExtHeader::HopByHop(vec![5, 2, 0, 0]), // router alert
        ),
        (
            "TCP SYN after a routing header: walked, DNAT, header kept",
            "UDP after a routing header: walked, DNAT, header kept",
            srh(VIP),
        ),
        (
            "TCP SYN after destination options: walked, DNAT, header kept",
            "UDP after destination options: walked, DNAT, header kept",
            ExtHeader::DestinationOptions(vec![0x1e, 2, 0xab, 0xcd]),
        ),
    ];
    for (tcp_name, udp_name, h) in each {
        let syn = tcp(CLIENT, WEB, TCP_SYN).ext(h.clone());
        t.push(
            case(tcp_name).step(
                ingress(syn.build())
                    .passed(dnat(&syn, B1).build(), Reason::DnatNew)
                    .effect(new_flow(new_tcp_flow(B1, B1_ID, 0))),
            ),
        );
        let q = udp(CLIENT_UDP, DNS).ext(h);
        t.push(
            case(udp_name).step(
                ingress(q.build())
                    .passed(dnat(&q, B2).build(), Reason::DnatNew)
                    .effect(new_flow(new_udp_flow())),
            ),
        );
    }
    {
        // As many as the datapath walks.
        let mut syn = tcp(CLIENT, WEB, TCP_SYN)
            .hop_by_hop(&[])
            .destination_options(&[])
            .ext(srh(VIP));
        while syn.ip.ext.len() < EXT_WALK_MAX {
            syn = syn.destination_options(&[]);
        }
        t.push(
            case("TCP SYN after hop-by-hop, destination options, routing, ...: all walked")
                .step(ingress(syn.build()).passed(dnat(&syn, B1).build(), Reason::DnatNew)),
        );
    }
    {
        let synack = tcp(B1, CLIENT, TCP_SYN | TCP_ACK)
            .macs(GW_MAC, POD_MAC)
            .destination_options(&[0x1e, 1, 0]);
        t.push(
            case("egress: a reply after destination options is reverse-NATed")
                .flows6(vec![tcp_flow()])
                .step(
                    egress(synack.build()).passed(snat(&synack, WEB).build(), Reason::RevnatReply),
                ),
        );
    }
    {
        let mut syn = tcp(CLIENT, WEB, TCP_SYN);
        for _ in 0..=EXT_WALK_MAX {
            syn = syn.destination_options(&[]);
        }
        t.push(
            case("more extension headers than the datapath walks: passed untouched").step(
                ingress(syn.build())
                    .untouched(Reason::PassIpv6Extension)
                    .effect(ct_count(0)),
            ),
        );
    }
    {
        let syn = tcp(CLIENT, WEB, TCP_SYN).ext(ExtHeader::Other {
            kind: IPPROTO_EXPERIMENT1,
            bytes: vec![0; 7],
        });
        t.push(
            case("an unknown extension header: passed untouched").step(
                ingress(syn.build())
                    .untouched(Reason::PassIpv6Extension)
                    .effect(ct_count(0)),
            ),
        );
    }
    {
        let q = udp(CLIENT_UDP, DNS).hop_by_hop(&[]).ext(ExtHeader::Other {
            kind: IPPROTO_EXPERIMENT1,
            bytes: vec![0; 7],
        });
        t.push(
            case("an unknown extension header after a known one: passed untouched")
                .step(ingress(q.build()).untouched(Reason::PassIpv6Extension)),
        );
    }
    t
}

/// Fragment headers: the first fragment is translated and recorded, later
/// ones follow it.
fn fragment_cases() -> Vec<Case> {
    let mut t = Vec::new();
    {
        let full = udp(CLIENT_UDP, DNS).payload(&[0xab; 100]);
        let frags = fragment6(&full.build(), 64, 0x4242_0001);
        let want = fragment6(&dnat(&full, B2).build(), 64, 0x4242_0001);
        let key = frag_key(CLIENT_IP, VIP, 0x4242_0001, IPPROTO_UDP, CT_DIR_SERVICE);
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
        let full = udp(CLIENT_UDP, DNS).hop_by_hop(&[]).payload(&[0xac; 100]);
        let frags = fragment6(&full.build(), 64, 7);
        let want = fragment6(&dnat(&full, B2).build(), 64, 7);
        t.push(
            case("UDP fragments after a hop-by-hop header: walked to the fragment header")
                .step(ingress(frags[0].clone()).passed(want[0].clone(), Reason::DnatNew))
                .step(ingress(frags[1].clone()).passed(want[1].clone(), Reason::NatFragment)),
        );
    }
    {
        let full = tcp(CLIENT, WEB, TCP_ACK | TCP_PSH).payload(&[0x11; 200]);
        let frags = fragment6(&full.build(), 128, 0x99);
        let want = fragment6(&dnat(&full, B1).build(), 128, 0x99);
        t.push(
            case("TCP fragments of an established flow: first DNATed, second follows")
                .flows6(vec![tcp_flow()])
                .step(ingress(frags[0].clone()).passed(want[0].clone(), Reason::DnatEstablished))
                .step(ingress(frags[1].clone()).passed(want[1].clone(), Reason::NatFragment)),
        );
    }
    {
        let full = udp(CLIENT_UDP, DNS).payload(&[0xcd; 100]);
        let frags = fragment6(&full.build(), 64, 0x4343);
        let want = fragment6(&dnat(&full, B2).build(), 64, 0x4343);
        let key = frag_key(CLIENT_IP, VIP, 0x4343, IPPROTO_UDP, CT_DIR_SERVICE);
        t.push(
            case("later fragment with a tracked train: daddr rewritten")
                .seed(seed_frag(key, *B2.ip()))
                .step(ingress(frags[1].clone()).passed(want[1].clone(), Reason::NatFragment)),
        );
    }
    {
        let full = udp(CLIENT_UDP, DNS).payload(&[0xef; 100]);
        let frags = fragment6(&full.build(), 64, 0x4444);
        let other = frag_key(CLIENT_IP, VIP, 0x4445, IPPROTO_UDP, CT_DIR_SERVICE);
        t.push(
            case("later fragment of an untracked train passes untouched")
                .seed(seed_frag(other, *B2.ip()))
                .step(ingress(frags[1].clone()).untouched(Reason::PassFragmentUntracked)),
        );
    }
    {
        let full = udp(CLIENT_UDP, OTHER_POD).payload(&[1; 100]);
        let frags = fragment6(&full.build(), 64, 0x4646);
        let key = frag_key(
            CLIENT_IP,
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
        let full = udp(B2, CLIENT_UDP).payload(&[0x77; 200]);
        let frags = fragment6(&full.build(), 128, 0x5151);
        let want = fragment6(&snat(&full, DNS).build(), 128, 0x5151);
        let key = frag_key(
            *B2.ip(),
            CLIENT_IP,
            0x5151,
            IPPROTO_UDP,
            FRAG_DIR_REVNAT_SRC,
        );
        t.push(
            case("egress: reply fragments: first reverse-NATed and tracked, second follows")
                .flows6(vec![udp_flow()])
                .step(
                    egress(frags[0].clone())
                        .passed(want[0].clone(), Reason::RevnatReply)
                        .effect(frag_entry(key, Some(VIP))),
                )
                .step(egress(frags[1].clone()).passed(want[1].clone(), Reason::NatFragment)),
        );
    }
    {
        let full = udp(B2, CLIENT_UDP).payload(&[0x78; 200]);
        let frags = fragment6(&full.build(), 128, 0x5252);
        t.push(
            case("egress: untracked later reply fragment passes untouched")
                .flows6(vec![udp_flow()])
                .step(egress(frags[1].clone()).untouched(Reason::PassFragmentUntracked)),
        );
    }
    t
}

/// ICMPv6 errors about translated flows: matched by their inner header and
/// reverse-translated through it.
fn icmp_error_cases() -> Vec<Case> {
    let mut t = Vec::new();
    {
        // The client's segment as the backend's side saw it (after DNAT),
        // too big for a link on the way: PMTU discovery must reach the
        // client about the VIP.
        let inner = tcp(CLIENT, B1, TCP_ACK | TCP_PSH).payload(&[0x42; 1400]);
        let err =
            PacketBuilder::packet_too_big(ROUTER, CLIENT_IP, 1280, &inner).macs(GW_MAC, POD_MAC);
        let want = PacketBuilder::packet_too_big(ROUTER, CLIENT_IP, 1280, &dnat(&inner, WEB))
            .macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: Packet Too Big from a router about a TCP flow: inner reverse-NATed")
                .flows6(vec![tcp_flow()])
                .step(egress(err.build()).passed(want.build(), Reason::RevnatIcmpError)),
        );
    }
    {
        let inner = tcp(CLIENT, B1, TCP_ACK).payload(&[0x43; 1300]);
        let err =
            PacketBuilder::packet_too_big(*B1.ip(), CLIENT_IP, 1400, &inner).macs(GW_MAC, POD_MAC);
        let want = PacketBuilder::packet_too_big(VIP, CLIENT_IP, 1400, &dnat(&inner, WEB))
            .macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: Packet Too Big from the backend: outer and inner reverse-NATed")
                .flows6(vec![tcp_flow()])
                .step(egress(err.build()).passed(want.build(), Reason::RevnatIcmpError)),
        );
    }
    {
        let inner = udp(CLIENT_UDP, B2).payload(b"query bytes");
        let err = PacketBuilder::icmp_error(
            *B2.ip(),
            CLIENT_IP,
            ICMP6_DEST_UNREACH,
            ICMP6_PORT_UNREACH,
            &inner,
        )
        .macs(GW_MAC, POD_MAC);
        let want = PacketBuilder::icmp_error(
            VIP,
            CLIENT_IP,
            ICMP6_DEST_UNREACH,
            ICMP6_PORT_UNREACH,
            &dnat(&inner, DNS),
        )
        .macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: ICMPv6 port unreachable from the backend: outer and inner reverse-NATed")
                .flows6(vec![udp_flow()])
                .step(egress(err.build()).passed(want.build(), Reason::RevnatIcmpError)),
        );
    }
    {
        let inner = udp(CLIENT_UDP, B2).hop_limit(1);
        let err = PacketBuilder::icmp_error(ROUTER, CLIENT_IP, ICMP6_TIME_EXCEEDED, 0, &inner)
            .macs(GW_MAC, POD_MAC);
        let want = PacketBuilder::icmp_error(
            ROUTER,
            CLIENT_IP,
            ICMP6_TIME_EXCEEDED,
            0,
            &dnat(&inner, DNS),
        )
        .macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: ICMPv6 time exceeded about a UDP flow: inner reverse-NATed")
                .flows6(vec![udp_flow()])
                .step(egress(err.build()).passed(want.build(), Reason::RevnatIcmpError)),
        );
    }
    {
        // A router quoting the header and 8 bytes (as IPv4 routers do), in
        // a frame with bytes after the IPv6 payload (Ethernet padding):
        // they are no part of the message, even where the quoted TCP
        // checksum would be, and stay as they are.
        let inner = tcp(CLIENT, B1, TCP_ACK);
        let error = |p: &P6| {
            let mut f = PacketBuilder::icmp(ROUTER, CLIENT_IP, ICMP6_DEST_UNREACH, 3)
                .macs(GW_MAC, POD_MAC)
                .payload(&p.ipv6_bytes()[..IPV6_HLEN + 8])
                .build();
            f.extend_from_slice(&[0x5a; 24]);
            f
        };
        t.push(
            case(
                "egress: ICMPv6 error quoting 8 bytes of TCP in a padded frame: padding untouched",
            )
            .flows6(vec![tcp_flow()])
            .step(egress(error(&inner)).passed(error(&dnat(&inner, WEB)), Reason::RevnatIcmpError)),
        );
    }
    {
        let inner = tcp(CLIENT, B3, TCP_ACK).payload(&[0; 1300]);
        let err =
            PacketBuilder::packet_too_big(ROUTER, CLIENT_IP, 1280, &inner).macs(GW_MAC, POD_MAC);
        t.push(
            case("egress: ICMPv6 error about no known flow passes untouched")
                .flows6(vec![tcp_flow()])
                .step(egress(err.build()).untouched(Reason::PassNotService)),
        );
    }
    t
}

/// NAT clash, no endpoints, hairpin.
fn conntrack_cases() -> Vec<Case> {
    let mut t = Vec::new();
    {
        // Two frontends sharing B1, the same client port to both: the
        // second flow's reply tuple would be the first's.
        const WEB2: SocketAddrV6 = sa(ip6(0xffff, 0, 2), 80);
        let flow = Flow6 {
            flags: CT_F_SEEN_NON_SYN | CT_F_REPLIED,
            ..tcp_flow()
        };
        let syn = tcp(CLIENT, WEB2, TCP_SYN);
        t.push(
            case("NAT clash: the second frontend's flow gets a remapped client port")
                .seed(move |dp| {
                    dp.add_service6(WEB2, IPPROTO_TCP, 5, &[(B1_ID, B1)])?;
                    Ok(dp.add_flow6(&flow)?)
                })
                .step(
                    ingress(syn.build())
                        .expect(
                            TCX_NEXT,
                            Expect::Check(Box::new(move |_, out| {
                                let (src, dst) = ends(out)?;
                                if dst != B1
                                    || *src.ip() != CLIENT_IP
                                    || src.port() == CLIENT.port()
                                {
                                    return Err(format!(
                                        "{src} -> {dst}, want a remapped port -> {B1}"
                                    ));
                                }
                                let want = dnat(&syn, B1).ports(src.port(), B1.port()).build();
                                if out != want.as_slice() {
                                    return Err(format!("output differs from {}", hex(&want)));
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
        let flow = Flow6 {
            flags: CT_F_SEEN_NON_SYN | CT_F_REPLIED,
            ..tcp_flow()
        };
        let ack = tcp(CLIENT, WEB, TCP_ACK).payload(b"still here");
        let syn = tcp(sa(CLIENT_IP, 40001), WEB, TCP_SYN);
        t.push(
            case("no endpoints: an established flow keeps its backend, a new one is refused")
                .seed(move |dp| {
                    dp.add_flow6(&flow)?;
                    Ok(dp.add_service6(WEB, IPPROTO_TCP, WEB_ID, &[])?)
                })
                .step(ingress(ack.build()).passed(dnat(&ack, B1).build(), Reason::DnatEstablished))
                .step(ingress(syn.build()).answered(
                    expected_rst(&syn, 0, 1_000_001, TCP_RST | TCP_ACK),
                    Reason::RejectNoBackend,
                )),
        );
    }
    t.extend(hairpin_cases());
    t
}

/// The hairpin address the fixtures set.
const HAIRPIN: Ipv6Addr = ip6(0xfe, 0, 1);

/// The output goes from a source `from` accepts to `to`, addressed back to
/// the sender at Ethernet (MACs swapped).
fn back_to_sender(
    from: impl Fn(SocketAddrV6) -> bool + 'static,
    to: SocketAddrV6,
) -> impl Fn(&[u8], &[u8]) -> Result<(), String> {
    move |_, out| {
        let (src, dst) = ends(out)?;
        if !from(src) || dst != to {
            return Err(format!("{src} -> {dst}, want a hairpin source -> {to}"));
        }
        if out.len() < 12 || out[..6] != POD_MAC || out[6..12] != GW_MAC {
            return Err("Ethernet addresses not swapped back to the sender".into());
        }
        Ok(())
    }
}

fn hairpin_from(addr: Ipv6Addr) -> impl Fn(SocketAddrV6) -> bool + Clone + 'static {
    move |src| *src.ip() == addr && (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&src.port())
}

/// A pod reaching a service whose backend is that very pod: the flow comes
/// from the hairpin address and is sent straight back, and so is the reply.
fn hairpin_cases() -> Vec<Case> {
    const SELF: SocketAddrV6 = sa(ip6(1, 0, 0x11), 42000);
    const SELF_BACKEND: SocketAddrV6 = sa(ip6(1, 0, 0x11), 8080);
    const HP: SocketAddrV6 = sa(ip6(0xffff, 0, 7), 80);
    let syn = tcp(SELF, HP, TCP_SYN);
    let ack = tcp(SELF, HP, TCP_ACK);
    let service =
        |dp: &mut TestDatapath| Ok(dp.add_service6(HP, IPPROTO_TCP, 7, &[(77, SELF_BACKEND)])?);
    vec![
        case("hairpin: a pod reaching itself through a service comes from the hairpin address")
            .seed(move |dp| {
                service(dp)?;
                dp.set_node_address6(NODE6_HAIRPIN_KEY, HAIRPIN)
                    .map_err(|e| format!("hairpin address: {e}"))
            })
            .step(ingress(syn.build()).bounced(
                Reason::DnatNewHairpin,
                back_to_sender(hairpin_from(HAIRPIN), SELF_BACKEND),
            ))
            .step(
                Step::after(TcProgram::PodIngress, |prev| {
                    let (src, dst) = ends(prev)?;
                    Ok(tcp(dst, src, TCP_SYN | TCP_ACK).build())
                })
                .bounced(Reason::RevnatHairpin, back_to_sender(|s| s == HP, SELF)),
            )
            .step(ingress(ack.build()).bounced(
                Reason::DnatEstablished,
                back_to_sender(hairpin_from(HAIRPIN), SELF_BACKEND),
            )),
        case("hairpin: without an address set, the default one (100::a9fe:2a01) is used")
            .seed(service)
            .step(ingress(syn.build()).bounced(
                Reason::DnatNewHairpin,
                back_to_sender(
                    hairpin_from(Ipv6Addr::from(HAIRPIN6_ADDR_DEFAULT)),
                    SELF_BACKEND,
                ),
            )),
    ]
}

fn cases() -> Vec<Case> {
    let mut t = Vec::new();
    t.extend(passed_cases());
    t.extend(malformed_cases());
    t.extend(flow_cases());
    t.extend(reject_cases());
    t.extend(extension_cases());
    t.extend(fragment_cases());
    t.extend(icmp_error_cases());
    t.extend(conntrack_cases());
    t
}

#[test]
fn tc_fixtures_ipv6() {
    skip_unless!(Needs::prog_run());
    let table = cases();
    assert!(table.len() >= 50, "the table has {} cases", table.len());
    run_table(&table, seed_world);
}

/// The expected outputs are what they claim: every one the table compares
/// byte for byte is a valid IPv6 frame, translated as described. Needs no
/// datapath (checks the builder-made expectations themselves).
#[test]
fn expected_frames_are_valid_translations() {
    use svcnat_testkit::packet::checksums_ok;
    let syn = tcp(CLIENT, WEB, TCP_SYN).hop_by_hop(&[]).ext(srh(VIP));
    let out = dnat(&syn, B1).build();
    checksums_ok(&out).expect("DNATed SYN is valid");
    let p = parse(&out).expect("parses");
    let ip = p.ip6().expect("ipv6");
    assert_eq!((ip.source(), ip.destination()), (Ok(CLIENT), Ok(B1)));
    assert_eq!(ip.ext.len(), 2, "the extension headers are kept");
    assert_eq!(
        (ip.hop_limit, ip.flow_label, ip.traffic_class),
        (61, 0x1_2345, 0x10)
    );

    let rst = expected_rst(
        &tcp(CLIENT, NO_PORT_TCP, TCP_SYN).seq(5),
        0,
        6,
        TCP_RST | TCP_ACK,
    );
    checksums_ok(&rst).expect("RST valid");
    assert_eq!(rst.len(), 14 + 40 + 20);
    let pu = expected_port_unreachable(&udp(CLIENT_UDP, NO_PORT_UDP));
    checksums_ok(&pu).expect("port unreachable valid");
    assert_eq!(pu.len(), 14 + 40 + 8 + 40 + 8);
    let q = parse(&pu)
        .expect("p")
        .ipv6
        .expect("6")
        .icmp_inner()
        .expect("inner");
    assert_eq!(q.destination(), Ok(NO_PORT_UDP));

    let q = forcing_zero_sum(udp(CLIENT_UDP, DNS), |p| dnat(p, B2));
    let out = dnat(&q, B2).build();
    checksums_ok(&out).expect("valid");
    assert_eq!(
        parse(&out)
            .expect("p")
            .ip6()
            .expect("6")
            .udp()
            .expect("u")
            .checksum,
        0xffff
    );
    let input = q.build();
    assert_ne!(
        parse(&input)
            .expect("p")
            .ip6()
            .expect("6")
            .udp()
            .expect("u")
            .checksum,
        0
    );

    let inner = tcp(CLIENT, B1, TCP_ACK).payload(&[0x42; 1400]);
    let ptb = PacketBuilder::packet_too_big(ROUTER, CLIENT_IP, 1280, &dnat(&inner, WEB)).build();
    checksums_ok(&ptb).expect("PTB valid");
    let quoted = parse(&ptb)
        .expect("p")
        .ipv6
        .expect("6")
        .icmp_inner()
        .expect("inner");
    assert_eq!(quoted.destination(), Ok(WEB));
    // The inner L4 header of a rewritten error is that of the translated
    // packet: its source port and sequence are the client's.
    assert!(matches!(
        quoted.l4,
        svcnat_testkit::packet::ParsedL4::Tcp(_)
    ));
}
