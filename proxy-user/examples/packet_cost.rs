//! Per-packet cost of the real programs through `BPF_PROG_TEST_RUN`, at
//! several numbers of services (5 backends each): the TC programs of pods,
//! then the XDP program of node interfaces on its node-port paths. Prints
//! two Markdown tables of ns/packet; asserts nothing about speed. Used by
//! `cargo xtask bench`.
//!
//! `cargo run --release -p proxy-user --example packet_cost -- [REPEAT] [SIZES...]`
//!
//! A repeated test run executes the program again and again on the same
//! buffer, so a path that rewrites the packet would only run once (the next
//! iteration sees the rewritten packet). Hence:
//! - paths that leave the packet alone (not a service, drops): `REPEAT`
//!   runs, median of 5;
//! - paths that rewrite it (established, reply, new flow): 20,000 single
//!   runs each on a fresh copy of the packet, median of the kernel's per-run
//!   times; a new flow is one SYN per distinct client port. A single run
//!   carries the kernel's timing overhead, so "not a service" is also given
//!   measured that way, for calibration.
//!
//! The XDP paths run in the same maps as the TC ones (the N services, their
//! TC flows), plus a few node-port frontends on a node address outside the
//! services' VIPs. Every XDP measurement checks in the stats that each of
//! its runs took the path it is named after, and stops otherwise. The remote
//! node port has 64 backends: SNAT ports are allocated per backend from
//! `SNAT_PORT_MIN..=SNAT_PORT_MAX` (4,536 ports), so with one backend most of
//! 20,000 new flows would find no free port; with 64, a backend's range is
//! at most ~7% full by the last of them.

use std::net::{Ipv4Addr, SocketAddrV4};

use proxy_common::{
    BACKEND_FLAG_LOCAL, IPPROTO_TCP, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL,
    SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES,
    map_names,
};
use svcnat_testkit::{
    datapath::{TEST_RUN_IFINDEX, TcProgram, TestDatapath},
    packet::{PacketBuilder, TCP_ACK, TCP_SYN},
    prog_run::test_run,
};

/// Single runs per rewriting path (and new flows per new-flow path).
const SINGLES: u16 = 20_000;

/// VIP of service `i`: 198.19.0.0/16 first, then 198.18.0.0/16 (131,072 in
/// all, so 100,000 services get distinct VIPs inside 198.18.0.0/15).
fn vip(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(0xc613_0000 - (i & 0x1_0000) + (i & 0xffff)),
        80,
    )
}

/// Backend `id`: addresses cycle through 198.18.0.0/16 and the port moves
/// on every lap, so every (address, port) is distinct.
fn backend(id: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(0xc612_0000 + (id & 0xffff)),
        8080 + (id >> 16) as u16,
    )
}

// The node-port world, outside 198.18.0.0/15 (the services above).

/// This node's address (the node ports).
const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Node port, TCP, one local backend.
const NP_LOCAL: SocketAddrV4 = SocketAddrV4::new(NODE, 30080);
/// Node port, TCP, [`REMOTE_BACKENDS`] backends on other nodes.
const NP_REMOTE: SocketAddrV4 = SocketAddrV4::new(NODE, 30081);
/// Node port with externalTrafficPolicy Local and no local backend.
const NP_ETP_LOCAL: SocketAddrV4 = SocketAddrV4::new(NODE, 30090);
/// Load-balancer IP with source range 198.51.100.0/24, local backend.
const LB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 80), 80);
/// The local backend.
const LOCAL_BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 8080);
const REMOTE_BACKENDS: u32 = 64;
/// A client inside the source range (established flows, pass and drops).
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 5), 40_000);
/// A client outside the source range.
const STRANGER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 5), 40_000);
/// Clients of the new flows, one port per flow.
const NEW_LOCAL_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 6);
const NEW_REMOTE_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// The rows of the XDP table: path, how it is measured.
const XDP_PATHS: [(&str, &str); 9] = [
    ("not a service (pass)", "repeat"),
    ("source range deny (drop)", "repeat"),
    (
        "externalTrafficPolicy Local, no local backend (drop)",
        "repeat",
    ),
    ("not a service (pass)", "single"),
    ("node port, local backend, established (DNAT)", "single"),
    (
        "node port, remote backend, established (DNAT+SNAT)",
        "single",
    ),
    ("reply of a remote backend (reverse SNAT+DNAT)", "single"),
    (
        "node port, remote backend, new flow (SNAT port allocation)",
        "single",
    ),
    ("node port, local backend, new flow (DNAT)", "single"),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn repeated(dp: &TestDatapath, prog: TcProgram, frame: &[u8], repeat: u32) -> f64 {
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            f64::from(
                test_run(dp.program_fd(prog), frame, repeat)
                    .expect("test run")
                    .duration_ns,
            )
        })
        .collect();
    median(runs)
}

/// Median of [`SINGLES`] single runs, each on a fresh copy of `frame`.
fn singles(dp: &TestDatapath, prog: TcProgram, frame: &[u8]) -> f64 {
    median(
        (0..SINGLES)
            .map(|_| {
                f64::from(
                    test_run(dp.program_fd(prog), frame, 1)
                        .expect("test run")
                        .duration_ns,
                )
            })
            .collect(),
    )
}

/// Median of [`SINGLES`] single runs of a SYN from `client` to `target`,
/// each from its own source port (10000 and up): one new flow each.
fn new_flows(dp: &TestDatapath, prog: TcProgram, client: Ipv4Addr, target: SocketAddrV4) -> f64 {
    median(
        (0..SINGLES)
            .map(|p| {
                let syn = PacketBuilder::tcp(SocketAddrV4::new(client, 10_000 + p), target)
                    .flags(TCP_SYN)
                    .build();
                f64::from(
                    test_run(dp.program_fd(prog), &syn, 1)
                        .expect("test run")
                        .duration_ns,
                )
            })
            .collect(),
    )
}

/// Source and destination of a frame's IPv4 + TCP/UDP headers (no options).
fn ends(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let at = |addr: usize, port: usize| {
        SocketAddrV4::new(
            Ipv4Addr::new(
                frame[addr],
                frame[addr + 1],
                frame[addr + 2],
                frame[addr + 3],
            ),
            u16::from_be_bytes([frame[port], frame[port + 1]]),
        )
    };
    (at(26, 34), at(30, 36))
}

/// Runs `measure` and checks in the stats that all `runs` program runs it
/// made counted `reason`: a figure is only given for the path it names.
fn on_path(
    dp: &TestDatapath,
    reason: Reason,
    runs: u64,
    what: &str,
    measure: impl FnOnce() -> f64,
) -> f64 {
    let count = || dp.stat(reason).expect("read the stats").packets;
    let before = count();
    let ns = measure();
    let took = count() - before;
    if took != runs {
        eprintln!(
            "XDP {what}: {took} of {runs} runs counted {}; not measuring that path",
            reason.name()
        );
        std::process::exit(1);
    }
    ns
}

/// Seeds the node-port frontends next to `n` services: service ids above
/// `n`, backend ids above `5 n`.
fn seed_node_ports(dp: &mut TestDatapath, n: u32) -> Result<(), aya::maps::MapError> {
    let np = SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT;
    let local = (5 * n + 1, LOCAL_BACKEND, BACKEND_FLAG_LOCAL);
    let remote: Vec<(u32, SocketAddrV4, u8)> = (0..REMOTE_BACKENDS)
        .map(|k| {
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 0, 2, 128)) + k);
            (5 * n + 2 + k, SocketAddrV4::new(addr, 8080), 0)
        })
        .collect();
    dp.set_node_address(TEST_RUN_IFINDEX, NODE)?;
    dp.add_frontend(
        NP_LOCAL,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        n + 1,
        np,
        0,
        &[local],
    )?;
    dp.add_frontend(
        NP_REMOTE,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        n + 2,
        np,
        0,
        &remote,
    )?;
    dp.add_frontend(
        LB,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        n + 3,
        SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES,
        0,
        &[local],
    )?;
    dp.add_source_range(n + 3, Ipv4Addr::new(198, 51, 100, 0), 24)?;
    // externalTrafficPolicy Local: pods of this node see every backend (the
    // internal scope); from outside there is no local one.
    dp.add_frontend(
        NP_ETP_LOCAL,
        IPPROTO_TCP,
        SCOPE_INTERNAL,
        n + 4,
        np,
        0,
        &remote[..1],
    )?;
    dp.add_frontend(
        NP_ETP_LOCAL,
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        n + 5,
        np | SVC_FLAG_LOCAL_ONLY | SVC_FLAG_TWO_SCOPES,
        0,
        &[],
    )
}

/// The XDP paths of [`XDP_PATHS`], in its order (ns).
fn xdp_costs(dp: &TestDatapath, repeat: u32) -> [f64; 9] {
    let xdp = TcProgram::NodeXdp;
    let tcp = |src, dst, flags| PacketBuilder::tcp(src, dst).flags(flags).build();
    let reps = 5 * u64::from(repeat.max(1));
    let singles_n = u64::from(SINGLES);
    let other = tcp(CLIENT, SocketAddrV4::new(NODE, 22), TCP_ACK);
    let pass = on_path(dp, Reason::PassNotService, reps, "pass", || {
        repeated(dp, xdp, &other, repeat)
    });
    let deny = tcp(STRANGER, LB, TCP_SYN);
    let deny = on_path(dp, Reason::DropSourceRange, reps, "source range", || {
        repeated(dp, xdp, &deny, repeat)
    });
    let etp = tcp(CLIENT, NP_ETP_LOCAL, TCP_SYN);
    let etp = on_path(dp, Reason::DropNoLocalBackend, reps, "ETP Local", || {
        repeated(dp, xdp, &etp, repeat)
    });
    let pass_single = on_path(dp, Reason::PassNotService, singles_n, "pass", || {
        singles(dp, xdp, &other)
    });
    let open = |frame: Vec<u8>, reason: Reason, what: &str| {
        let before = dp.stat(reason).expect("read the stats").packets;
        let out = dp.run(xdp, &frame).expect("test run");
        if dp.stat(reason).expect("read the stats").packets != before + 1 {
            eprintln!("XDP {what}: the first SYN did not count {}", reason.name());
            std::process::exit(1);
        }
        out.data_out
    };
    open(tcp(CLIENT, NP_LOCAL, TCP_SYN), Reason::DnatNew, "local SYN");
    let ack = tcp(CLIENT, NP_LOCAL, TCP_ACK);
    let local_est = on_path(dp, Reason::DnatEstablished, singles_n, "local", || {
        singles(dp, xdp, &ack)
    });
    let out = open(
        tcp(CLIENT, NP_REMOTE, TCP_SYN),
        Reason::SnatNew,
        "remote SYN",
    );
    let ack = tcp(CLIENT, NP_REMOTE, TCP_ACK);
    let remote_est = on_path(dp, Reason::SnatEstablished, singles_n, "remote", || {
        singles(dp, xdp, &ack)
    });
    // The backend answers the node's address and allocated port.
    let (snat_src, backend_dst) = ends(&out);
    let reply = tcp(backend_dst, snat_src, TCP_ACK);
    let reply = on_path(dp, Reason::RevsnatReply, singles_n, "reply", || {
        singles(dp, xdp, &reply)
    });
    let remote_new = on_path(dp, Reason::SnatNew, singles_n, "remote new flow", || {
        new_flows(dp, xdp, NEW_REMOTE_CLIENT, NP_REMOTE)
    });
    let local_new = on_path(dp, Reason::DnatNew, singles_n, "local new flow", || {
        new_flows(dp, xdp, NEW_LOCAL_CLIENT, NP_LOCAL)
    });
    [
        pass,
        deny,
        etp,
        pass_single,
        local_est,
        remote_est,
        reply,
        remote_new,
        local_new,
    ]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let repeat: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut sizes: Vec<u32> = args.filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1, 1_000, 10_000, 100_000];
    }
    println!(
        "| services | new flow ns (single) | established ns (single) | reply ns (single) | not a service ns (single) | not a service ns (repeat) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut xdp_rows = Vec::with_capacity(sizes.len());
    for &n in &sizes {
        // Room for the node-port frontends (5 entries, 67 slots, 65
        // backends) and for the flows: 2 conntrack entries per new flow,
        // 20,000 new flows in TC and 40,000 in XDP.
        let map_sizes = [
            (map_names::SVC4, 2 * n + 16),
            (map_names::SLOTS, 5 * n + 128),
            (map_names::BACKEND4, 5 * n + 128),
            (map_names::REVNAT4, n + 16),
            (map_names::CT4, 131_072),
            (map_names::FRAG4, 1024),
            (map_names::SNAT4, 65_536),
        ];
        let mut dp = match TestDatapath::load_with_sizes(&map_sizes) {
            Ok(dp) => dp,
            Err(e) => {
                eprintln!(
                    "cannot load the datapath (root and `cargo xtask build-ebpf --release` needed): {e}"
                );
                std::process::exit(1);
            }
        };
        for i in 0..n {
            let backends: Vec<(u32, SocketAddrV4)> = (0..5)
                .map(|b| {
                    let id = i * 5 + b + 1;
                    (id, backend(id))
                })
                .collect();
            dp.add_service(vip(i), 6, i + 1, &backends)
                .expect("seed service");
        }
        let target = vip(n / 2);
        // Outside the VIPs of up to 120,000 services.
        let client = Ipv4Addr::new(198, 18, 250, 1);
        // New flows: distinct source ports, one run each.
        let new_flow = new_flows(&dp, TcProgram::PodIngress, client, target);
        // Established: the flow of port 10000 exists now.
        let ack = PacketBuilder::tcp(SocketAddrV4::new(client, 10_000), target)
            .flags(TCP_ACK)
            .build();
        let out = test_run(dp.program_fd(TcProgram::PodIngress), &ack, 1).expect("run");
        let (_, backend) = ends(&out.data_out);
        let established = singles(&dp, TcProgram::PodIngress, &ack);
        let reply = PacketBuilder::tcp(backend, SocketAddrV4::new(client, 10_000))
            .flags(TCP_ACK)
            .build();
        let reply_ns = singles(&dp, TcProgram::PodEgress, &reply);
        let other = PacketBuilder::tcp(
            SocketAddrV4::new(client, 10_000),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 251, 9), 80),
        )
        .flags(TCP_ACK)
        .build();
        let other_ns = repeated(&dp, TcProgram::PodIngress, &other, repeat);
        let other_single = singles(&dp, TcProgram::PodIngress, &other);
        println!(
            "| {n} | {new_flow:.0} | {established:.0} | {reply_ns:.0} | {other_single:.0} | {other_ns:.0} |"
        );
        // The XDP paths, once the TC ones are measured (the node address
        // and the node ports are not in the maps the TC programs ran on).
        seed_node_ports(&mut dp, n).expect("seed the node ports");
        xdp_rows.push(xdp_costs(&dp, repeat));
    }
    println!();
    println!(
        "XDP node-port paths (svcnat_node_xdp), ns/packet, by number of services; \"repeat\": {repeat} runs on one buffer, median of 5; \"single\": median of {SINGLES} single runs on fresh copies."
    );
    println!();
    print!("| XDP path \\ services | measured |");
    for n in &sizes {
        print!(" {n} |");
    }
    println!();
    println!("|---|---|{}", "---:|".repeat(sizes.len()));
    for (i, (path, how)) in XDP_PATHS.iter().enumerate() {
        print!("| {path} | {how} |");
        for row in &xdp_rows {
            print!(" {:.0} |", row[i]);
        }
        println!();
    }
}
