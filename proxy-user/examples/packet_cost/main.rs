//! Per-packet cost of the real programs through `BPF_PROG_TEST_RUN`, for
//! IPv4 and IPv6 side by side, at several numbers of services (N IPv4 and
//! N IPv6 services in the same maps, 5 backends each): the TC programs of
//! pods, then the XDP program of node interfaces on its node-port paths.
//! The attached programs (`svcnat_pod_ingress`, `svcnat_pod_egress`,
//! `svcnat_node_xdp`) run every packet, so an IPv6 figure includes the
//! dispatch on the ethertype and the tail call to the IPv6 program. Prints
//! two Markdown tables of ns/packet with a row per family (a "family"
//! column); asserts nothing about speed. Used by `cargo xtask bench`.
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
//! The twins run one after the other, path by path (IPv4, IPv6, next
//! path), so that both see the same machine. Every measurement, TC and
//! XDP, checks in the stats that each of its runs took the path it is
//! named after, and stops otherwise.
//!
//! The XDP paths run in the same maps as the TC ones (the services, their
//! TC flows), plus a few node-port frontends per family on the family's
//! node address, outside the services' VIPs. The remote node port has 64
//! backends: SNAT ports are allocated per backend from
//! `SNAT_PORT_MIN..=SNAT_PORT_MAX` (4,536 ports), so with one backend most
//! of 20,000 new flows would find no free port; with 64, a backend's range
//! is at most ~7% full by the last of them.
//!
//! What differs between the families (addresses, seed helpers, frame
//! ends) is in [`family`]; addresses are in 198.18.0.0/15 and the
//! documentation ranges for IPv4, in 2001:db8::/32 for IPv6.

mod family;

use proxy_common::{
    BACKEND_FLAG_LOCAL, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL,
    SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES,
};
use svcnat::dataplane::MapSizes;
use svcnat_testkit::{
    datapath::{TcProgram, TestDatapath},
    packet::{TCP_ACK, TCP_SYN},
    prog_run::test_run,
};

use self::family::{Family, V4, V6};

/// Single runs per rewriting path (and new flows per new-flow path).
const SINGLES: u16 = 20_000;

/// The families, in the order of the tables' twin rows.
const FAMILIES: [&str; 2] = [V4::NAME, V6::NAME];

/// The columns of the TC table after "services" and "family", in order;
/// the first is the new flow, the others are [`tc_paths`].
const TC_PATHS: [&str; 5] = [
    "new flow ns (single)",
    "established ns (single)",
    "reply ns (single)",
    "not a service ns (single)",
    "not a service ns (repeat)",
];

/// The rows of the XDP table: path, how it is measured (in the order of
/// [`xdp_paths`]).
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

// The node-port world, on each family's node address (family::Addrs).

/// Node port, TCP, one local backend.
const NP_LOCAL: u16 = 30080;
/// Node port, TCP, [`REMOTE_BACKENDS`] backends on other nodes.
const NP_REMOTE: u16 = 30081;
/// Node port with externalTrafficPolicy Local and no local backend.
const NP_ETP_LOCAL: u16 = 30090;
/// The load-balancer IP's port (source range, local backend).
const LB_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
/// The port of the clients of established flows, passes and drops.
const CLIENT_PORT: u16 = 40_000;
const REMOTE_BACKENDS: u32 = 64;

/// Where a family's ids start. The families share the id spaces of
/// services, backends and slots: family `k`'s services are
/// `k (n + 8) + 1 ..= k (n + 8) + n`, its node-port frontends the 5 ids
/// after them; its backends `k (5 n + 128) + 1 ..= + 5 n`, the node ports'
/// 65 backends after them.
struct Ids {
    svc: u32,
    backend: u32,
}

impl Ids {
    fn of<F: Family>(n: u32) -> Self {
        Ids {
            svc: F::INDEX * (n + 8),
            backend: F::INDEX * (5 * n + 128),
        }
    }
}

/// How a path is run.
enum Load {
    /// `REPEAT` runs on one buffer, median of 5 (paths that leave the
    /// packet alone).
    Repeat(Vec<u8>),
    /// [`SINGLES`] single runs, run `i` on a fresh copy of frame
    /// `i % len`: median of the kernel's per-run times.
    Singles(Vec<Vec<u8>>),
}

/// One measurement: the program, what it runs on, and the stats reason
/// each of its runs must count.
struct Path {
    prog: TcProgram,
    load: Load,
    reason: Reason,
}

impl Path {
    fn repeat(prog: TcProgram, frame: Vec<u8>, reason: Reason) -> Self {
        Path {
            prog,
            load: Load::Repeat(frame),
            reason,
        }
    }

    fn singles(prog: TcProgram, frame: Vec<u8>, reason: Reason) -> Self {
        Path {
            prog,
            load: Load::Singles(vec![frame]),
            reason,
        }
    }

    /// [`SINGLES`] SYNs from `client` to `target`, each from its own
    /// source port (10000 and up): one new flow each.
    fn new_flows<F: Family>(
        prog: TcProgram,
        client: F::Addr,
        target: F::Sock,
        reason: Reason,
    ) -> Self {
        let syns = (0..SINGLES)
            .map(|p| F::tcp(F::sock(client, 10_000 + p), target, TCP_SYN))
            .collect();
        Path {
            prog,
            load: Load::Singles(syns),
            reason,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `path` (ns per packet) and checks in the stats that all its runs
/// counted its reason: a figure is only given for the path it names.
fn measure(dp: &TestDatapath, path: &Path, repeat: u32, what: &str) -> f64 {
    let count = || dp.stat(path.reason).expect("read the stats").packets;
    let fd = dp.program_fd(path.prog);
    let run = |frame: &[u8], repeat: u32| {
        f64::from(test_run(fd, frame, repeat).expect("test run").duration_ns)
    };
    let before = count();
    let (ns, runs) = match &path.load {
        Load::Repeat(frame) => (
            median((0..5).map(|_| run(frame, repeat)).collect()),
            5 * u64::from(repeat.max(1)),
        ),
        Load::Singles(frames) => (
            median(
                (0..usize::from(SINGLES))
                    .map(|i| run(&frames[i % frames.len()], 1))
                    .collect(),
            ),
            u64::from(SINGLES),
        ),
    };
    let took = count() - before;
    if took != runs {
        eprintln!(
            "{what}: {took} of {runs} runs counted {}; not measuring that path",
            path.reason.name()
        );
        std::process::exit(1);
    }
    ns
}

/// Measures path `j` of both families in turn, for every `j` (so that the
/// twins run side by side in time): ns by family, then path.
fn measure_twins<const P: usize>(
    dp: &TestDatapath,
    paths: &[[Path; P]; 2],
    names: &[&str; P],
    repeat: u32,
) -> [[f64; P]; 2] {
    let mut ns = [[0.0; P]; 2];
    for j in 0..P {
        for (k, family) in FAMILIES.iter().enumerate() {
            ns[k][j] = measure(dp, &paths[k][j], repeat, &format!("{family} {}", names[j]));
        }
    }
    ns
}

/// Seeds `n` services of family `F`, 5 backends each (ids of [`Ids`]).
fn seed_services<F: Family>(dp: &mut TestDatapath, n: u32) -> Result<(), String> {
    let ids = Ids::of::<F>(n);
    for i in 0..n {
        let backends: Vec<(u32, F::Sock)> = (0..5)
            .map(|b| {
                let id = ids.backend + i * 5 + b + 1;
                (id, F::backend(id))
            })
            .collect();
        F::add_service(dp, F::vip(i), ids.svc + i + 1, &backends)?;
    }
    Ok(())
}

/// The new flows of the TC table's first column: from the pod to the
/// middle service.
fn tc_new_flows<F: Family>(n: u32) -> Path {
    Path::new_flows::<F>(
        TcProgram::PodIngress,
        F::ADDRS.pod,
        F::vip(n / 2),
        Reason::DnatNew,
    )
}

/// The other paths of [`TC_PATHS`], in its order, once [`tc_new_flows`]
/// has run: its first flow (port 10000) is the established one.
fn tc_paths<F: Family>(dp: &TestDatapath, n: u32) -> [Path; 4] {
    let client = F::sock(F::ADDRS.pod, 10_000);
    let ack = F::tcp(client, F::vip(n / 2), TCP_ACK);
    let out = dp.run(TcProgram::PodIngress, &ack).expect("test run");
    let (_, backend) = F::ends(&out.data_out);
    let reply = F::tcp(backend, client, TCP_ACK);
    let other = F::tcp(client, F::sock(F::ADDRS.not_service, 80), TCP_ACK);
    [
        Path::singles(TcProgram::PodIngress, ack, Reason::DnatEstablished),
        Path::singles(TcProgram::PodEgress, reply, Reason::RevnatReply),
        Path::singles(TcProgram::PodIngress, other.clone(), Reason::PassNotService),
        Path::repeat(TcProgram::PodIngress, other, Reason::PassNotService),
    ]
}

/// Seeds family `F`'s node-port frontends next to its `n` services (ids
/// of [`Ids`]).
fn seed_node_ports<F: Family>(dp: &mut TestDatapath, n: u32) -> Result<(), String> {
    let a = &F::ADDRS;
    let ids = Ids::of::<F>(n);
    let (svc, be) = (ids.svc + n, ids.backend + 5 * n);
    let np = SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT;
    let local = (
        be + 1,
        F::sock(a.local_backend, BACKEND_PORT),
        BACKEND_FLAG_LOCAL,
    );
    let remote: Vec<(u32, F::Sock, u8)> = (0..REMOTE_BACKENDS)
        .map(|k| {
            let addr = F::nth(a.remote_backend, k);
            (be + 2 + k, F::sock(addr, BACKEND_PORT), 0)
        })
        .collect();
    F::set_node_address(dp)?;
    let node = |port| F::sock(a.node, port);
    F::add_frontend(dp, node(NP_LOCAL), SCOPE_EXTERNAL, svc + 1, np, &[local])?;
    F::add_frontend(dp, node(NP_REMOTE), SCOPE_EXTERNAL, svc + 2, np, &remote)?;
    F::add_frontend(
        dp,
        F::sock(a.lb, LB_PORT),
        SCOPE_EXTERNAL,
        svc + 3,
        SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES,
        &[local],
    )?;
    F::add_source_range(dp, svc + 3)?;
    // externalTrafficPolicy Local: pods of this node see every backend (the
    // internal scope); from outside there is no local one.
    F::add_frontend(
        dp,
        node(NP_ETP_LOCAL),
        SCOPE_INTERNAL,
        svc + 4,
        np,
        &remote[..1],
    )?;
    F::add_frontend(
        dp,
        node(NP_ETP_LOCAL),
        SCOPE_EXTERNAL,
        svc + 5,
        np | SVC_FLAG_LOCAL_ONLY | SVC_FLAG_TWO_SCOPES,
        &[],
    )
}

/// Runs `frame` once through the XDP program and checks that it counted
/// `reason`: opens the flow the established paths run on.
fn open<F: Family>(dp: &TestDatapath, frame: &[u8], reason: Reason, what: &str) -> Vec<u8> {
    let before = dp.stat(reason).expect("read the stats").packets;
    let out = dp.run(TcProgram::NodeXdp, frame).expect("test run");
    if dp.stat(reason).expect("read the stats").packets != before + 1 {
        eprintln!(
            "{} XDP {what}: the first SYN did not count {}",
            F::NAME,
            reason.name()
        );
        std::process::exit(1);
    }
    out.data_out
}

/// The XDP paths of [`XDP_PATHS`], in its order, for family `F`; opens the
/// flows of the established paths.
fn xdp_paths<F: Family>(dp: &TestDatapath) -> [Path; 9] {
    let a = &F::ADDRS;
    let xdp = TcProgram::NodeXdp;
    let node = |port| F::sock(a.node, port);
    let client = F::sock(a.client, CLIENT_PORT);
    let other = F::tcp(client, node(22), TCP_ACK);
    let deny = F::tcp(
        F::sock(a.stranger, CLIENT_PORT),
        F::sock(a.lb, LB_PORT),
        TCP_SYN,
    );
    let etp = F::tcp(client, node(NP_ETP_LOCAL), TCP_SYN);
    let syn = |port| F::tcp(client, node(port), TCP_SYN);
    open::<F>(dp, &syn(NP_LOCAL), Reason::DnatNew, "local SYN");
    let out = open::<F>(dp, &syn(NP_REMOTE), Reason::SnatNew, "remote SYN");
    // The backend answers the node's address and allocated port.
    let (snat_src, backend_dst) = F::ends(&out);
    [
        Path::repeat(xdp, other.clone(), Reason::PassNotService),
        Path::repeat(xdp, deny, Reason::DropSourceRange),
        Path::repeat(xdp, etp, Reason::DropNoLocalBackend),
        Path::singles(xdp, other, Reason::PassNotService),
        Path::singles(
            xdp,
            F::tcp(client, node(NP_LOCAL), TCP_ACK),
            Reason::DnatEstablished,
        ),
        Path::singles(
            xdp,
            F::tcp(client, node(NP_REMOTE), TCP_ACK),
            Reason::SnatEstablished,
        ),
        Path::singles(
            xdp,
            F::tcp(backend_dst, snat_src, TCP_ACK),
            Reason::RevsnatReply,
        ),
        Path::new_flows::<F>(xdp, a.new_remote_client, node(NP_REMOTE), Reason::SnatNew),
        Path::new_flows::<F>(xdp, a.new_local_client, node(NP_LOCAL), Reason::DnatNew),
    ]
}

/// The maps sized for `n` services of each family and the flows: the
/// services' frontends and VIP markers plus 5 node-port frontends per
/// family; slots of both families (one map); 5 `n` + 65 backends per
/// family; 2 conntrack entries per new flow, 20,000 new flows in TC and
/// 40,000 in XDP per family.
fn map_sizes(n: u32) -> Vec<(&'static str, u32)> {
    MapSizes {
        services: 2 * n + 16,
        slots: 10 * n + 256,
        backends: 5 * n + 128,
        revnat: n + 16,
        conntrack: 131_072,
        fragments: 1024,
        snat: 65_536,
        ..MapSizes::default()
    }
    .sizeable()
    .collect()
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
    println!("| services | family | {} |", TC_PATHS.join(" | "));
    println!("|---:|---|{}", "---:|".repeat(TC_PATHS.len()));
    let mut xdp_rows = Vec::with_capacity(sizes.len());
    for &n in &sizes {
        let mut dp = match TestDatapath::load_with_sizes(&map_sizes(n)) {
            Ok(dp) => dp,
            Err(e) => {
                eprintln!(
                    "cannot load the datapath (root and `cargo xtask build-ebpf --release` needed): {e}"
                );
                std::process::exit(1);
            }
        };
        seed_services::<V4>(&mut dp, n).expect("seed the IPv4 services");
        seed_services::<V6>(&mut dp, n).expect("seed the IPv6 services");
        let new = measure_twins(
            &dp,
            &[[tc_new_flows::<V4>(n)], [tc_new_flows::<V6>(n)]],
            &[TC_PATHS[0]],
            repeat,
        );
        let rest = measure_twins(
            &dp,
            &[tc_paths::<V4>(&dp, n), tc_paths::<V6>(&dp, n)],
            TC_PATHS[1..].try_into().expect("4 paths"),
            repeat,
        );
        for (k, family) in FAMILIES.iter().enumerate() {
            let cells: Vec<String> = new[k]
                .iter()
                .chain(&rest[k])
                .map(|ns| format!("{ns:.0}"))
                .collect();
            println!("| {n} | {family} | {} |", cells.join(" | "));
        }
        // The XDP paths, once the TC ones are measured (the node addresses
        // and the node ports are not in the maps the TC programs ran on).
        seed_node_ports::<V4>(&mut dp, n).expect("seed the IPv4 node ports");
        seed_node_ports::<V6>(&mut dp, n).expect("seed the IPv6 node ports");
        let paths = [xdp_paths::<V4>(&dp), xdp_paths::<V6>(&dp)];
        let names = XDP_PATHS.map(|(path, _)| path);
        xdp_rows.push(measure_twins(&dp, &paths, &names, repeat));
    }
    println!();
    println!(
        "XDP node-port paths (svcnat_node_xdp; IPv6 tail-calls svcnat_node_xdp6), ns/packet, by number of services; \"repeat\": {repeat} runs on one buffer, median of 5; \"single\": median of {SINGLES} single runs on fresh copies."
    );
    println!();
    print!("| XDP path \\ services | family | measured |");
    for n in &sizes {
        print!(" {n} |");
    }
    println!();
    println!("|---|---|---|{}", "---:|".repeat(sizes.len()));
    for (i, (path, how)) in XDP_PATHS.iter().enumerate() {
        for (k, family) in FAMILIES.iter().enumerate() {
            print!("| {path} | {family} | {how} |");
            for row in &xdp_rows {
                print!(" {:.0} |", row[k][i]);
            }
            println!();
        }
    }
}
