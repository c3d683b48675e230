//! End-to-end benchmark in network namespaces: the same pods and Services
//! served by svcnat, by kube-proxy-shaped iptables rules, by
//! kube-proxy-shaped nftables rules, and not proxied at all (direct). Prints
//! `e2e ...` and `e2e_load ...` lines of `key=value`; asserts nothing. Run as
//! root; used by `cargo xtask bench`.
//!
//! ```text
//! cargo run --release -p proxy-user --example bench_e2e -- \
//!     [--sizes 1,1000,10000] [--columns svcnat,iptables,nftables,direct] \
//!     [--duration 3] [--warmup 0.5] [--threads 4] [--iperf-seconds 3] \
//!     [--rounds 1] [--changes 5] [--shared-backends] [--family ipv4|ipv6] \
//!     [--from pod|node]
//! ```
//!
//! Topology, one per column, all alive at once for a size so that the
//! rounds can interleave the columns (background load then hits them alike):
//! a node namespace with a bridge `br0` (198.18.0.1/24), a client pod
//! (198.18.0.10) and five backend pods (198.18.0.11-15), each a namespace
//! behind a veth enslaved to the bridge. Services: N ClusterIPs
//! 198.19.x.y:80; service i has the five backend pods on port 10000+i as its
//! endpoints (distinct endpoints per service, as in a cluster), and every
//! backend pod listens on all those ports: a child process of this program
//! (`--serve PORTS`, so each pod's listeners have their own open-file limit)
//! with two epoll threads; each accepted connection gets three bytes and is
//! closed. With
//! `--shared-backends` every service has the same five endpoints :8080
//! instead, which makes one client port reach one backend tuple through
//! different VIPs. Plus one "bulk" service 198.19.255.254:5201 whose only
//! endpoint is the iperf3 server in the first backend pod (iperf3's control
//! and data connections must meet the same server).
//!
//! - svcnat: programs attached to the pod veths, maps written with
//!   `Dataplane::upsert_service` (timed: `load_s`).
//! - iptables: kube-proxy iptables-mode rules in the node namespace, loaded
//!   with `iptables-restore` (timed).
//! - nftables: kube-proxy nftables-mode rules, loaded with `nft -f` (timed).
//! - direct: the client connects to the backend pods' own addresses (a
//!   random pod and a random service port), no proxy.
//!
//! Replies between pods on one bridge are bridged, not routed; kube-proxy's
//! DNAT needs `bridge-nf-call-iptables=1` in the node namespace (the sysctl is
//! per namespace) so that they pass through conntrack and get their source
//! rewritten back to the VIP. svcnat and direct do not need it and run with
//! it off, as on a node without kube-proxy.
//!
//! Measured from the client namespace: new TCP connections per second (each
//! connection is one request: connect, read the answer to EOF, close; several
//! threads, each picks a random service per connection), connect() latency
//! and whole-request latency p50/p99, then iperf3 bulk throughput through the
//! bulk ClusterIP. Last, one endpoint of one service is replaced `--changes`
//! times the way each proxy applies it (svcnat: `upsert_service`; iptables:
//! `iptables-restore --noflush` of the chains kube-proxy's partial sync
//! rewrites; nft: one `nft -f` transaction) and timed.
//!
//! `--family ipv6` runs the same on IPv6 (pods 2001:db8::10-15/64 behind
//! gateway 2001:db8::1, ClusterIPs in 2001:db8:ff::/64, the rules of
//! kube-proxy's IPv6 proxier: `ip6tables-restore`, table `ip6 kube-proxy`);
//! every line then carries `family=ipv6`.
//!
//! `--from node` measures the node's own processes instead of a pod's (a
//! kubelet probe, a hostNetwork pod, a node agent): the client threads and
//! iperf3 run in the node namespace. svcnat then serves them with its
//! socket hooks at the cgroup v2 root (`Dataplane::attach_sockets`, scoped
//! to the node namespace: connect() itself gets the backend's address);
//! kube-proxy's rules with their `OUTPUT` jump (iptables `-A OUTPUT -j
//! KUBE-SERVICES`, the nftables `nat-output` chain), DNAT on the first
//! packet; direct connects to the backends. The node gets a route for the
//! ClusterIP range on the bridge, as a node has one (its default route)
//! for kube-proxy's DNAT to happen after. Every line then carries
//! `from=node`.
//!
//! All addresses are in 198.18.0.0/15 and 2001:db8::/32; nothing is
//! configured in the root namespace. Namespaces and pins are removed on exit, panic and Ctrl-C;
//! leftovers of a killed run (names carry the pid) are removed by the next.

use std::{
    fmt::Write as _,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use svcnat::{
    agent::DEFAULT_CGROUP_ROOT,
    dataplane::{
        BackendSpec, Dataplane, DataplaneConfig, Frontend, MapSizes, ServiceOpts, cgroup2_root,
        cleanup,
    },
};
use svcnat_testkit::{
    netns::{IPV6_SYSCTLS, NetNs, run_ok, veth},
    skip::{Needs, skip_reason},
};

const BACKENDS: u8 = 5;
const SERVICE_PORT: u16 = 80;
const SHARED_TARGET_PORT: u16 = 8080;
const FIRST_TARGET_PORT: u16 = 10_000;
const IPERF_PORT: u16 = 5201;
/// Server threads per backend pod, each with its own epoll set.
const SERVER_THREADS: usize = 2;
const NS_PREFIX: &str = "snbe-";
const PIN_PREFIX: &str = "svcnat-bench-";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn interrupted() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The address family of a run, and its address plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ipv4" | "4" => Self::V4,
            "ipv6" | "6" => Self::V6,
            other => bail!("unknown family {other:?} (ipv4 or ipv6)"),
        })
    }

    /// Host `h` of the pods' subnet: 198.18.0.h or 2001:db8::h (h in hex).
    fn pod_net(self, h: u8) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::new(198, 18, 0, h).into(),
            Self::V6 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(h)).into(),
        }
    }

    /// The node's address on the bridge, the pods' gateway.
    fn gateway(self) -> IpAddr {
        self.pod_net(1)
    }

    fn client(self) -> IpAddr {
        self.pod_net(0x10)
    }

    fn backend(self, k: u8) -> IpAddr {
        self.pod_net(0x11 + k)
    }

    /// Prefix length of the pods' subnet.
    fn subnet_len(self) -> u8 {
        match self {
            Self::V4 => 24,
            Self::V6 => 64,
        }
    }

    /// Prefix length of one address.
    fn host_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// kube-proxy's `--cluster-cidr` of the family.
    fn cluster_cidr(self) -> &'static str {
        match self {
            Self::V4 => "198.18.0.0/16",
            Self::V6 => "2001:db8::/48",
        }
    }

    /// ClusterIP of service `i` (i < 50,000): 198.19.(i/250).(i%250+1), or
    /// 2001:db8:ff::(i+1).
    fn vip(self, i: u32) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8).into(),
            Self::V6 => Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, i as u16 + 1).into(),
        }
    }

    /// The range of every ClusterIP of the run (the bulk one included).
    fn service_cidr(self) -> &'static str {
        match self {
            Self::V4 => "198.19.0.0/16",
            Self::V6 => "2001:db8:ff::/64",
        }
    }

    /// The bulk service's ClusterIP.
    fn bulk_vip(self) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::new(198, 19, 255, 254).into(),
            Self::V6 => Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 1, 0).into(),
        }
    }

    /// The `c`-th replacement endpoint of the change timings (an address
    /// outside the pods' subnet: it is only programmed, never reached).
    fn replacement(self, c: u32) -> IpAddr {
        match self {
            Self::V4 => Ipv4Addr::new(198, 18, 1, (c % 250 + 1) as u8).into(),
            Self::V6 => Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, (c % 250 + 1) as u16).into(),
        }
    }

    /// `iptables-restore` or `ip6tables-restore`.
    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    /// nft's name of the family's addresses in rules (`ip`, `ip6`), which
    /// is also the family of kube-proxy's table.
    fn nft(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip6",
        }
    }

    /// nft's type of the family's addresses in sets and maps.
    fn nft_addr_type(self) -> &'static str {
        match self {
            Self::V4 => "ipv4_addr",
            Self::V6 => "ipv6_addr",
        }
    }
}

/// `addr:port`, `[addr]:port` for IPv6, as DNAT targets are written.
/// Where the load comes from: a client pod, or the node's own processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Pod,
    Node,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Node => "node",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pod" => Self::Pod,
            "node" => Self::Node,
            other => bail!("unknown origin {other:?} (pod or node)"),
        })
    }
}

fn ep_text((addr, port): (IpAddr, u16)) -> String {
    SocketAddr::new(addr, port).to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Svcnat,
    Iptables,
    Nftables,
    Direct,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Self::Svcnat => "svcnat",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Direct => "direct",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "svcnat" => Self::Svcnat,
            "iptables" => Self::Iptables,
            "nftables" | "nft" => Self::Nftables,
            "direct" => Self::Direct,
            other => bail!("unknown column {other:?}"),
        })
    }
}

struct Args {
    sizes: Vec<u32>,
    columns: Vec<Column>,
    duration: f64,
    warmup: f64,
    threads: usize,
    iperf_seconds: u32,
    rounds: u32,
    changes: u32,
    shared_backends: bool,
    family: Family,
    from: Origin,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![1, 1_000, 10_000],
        columns: vec![
            Column::Svcnat,
            Column::Iptables,
            Column::Nftables,
            Column::Direct,
        ],
        duration: 3.0,
        warmup: 0.5,
        threads: 4,
        iperf_seconds: 3,
        rounds: 1,
        changes: 5,
        shared_backends: false,
        family: Family::V4,
        from: Origin::Pod,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .context("--sizes")?;
            }
            "--columns" => {
                a.columns = value()?
                    .split(',')
                    .map(|s| Column::parse(s.trim()))
                    .collect::<Result<_>>()?;
            }
            "--duration" => a.duration = value()?.parse().context("--duration")?,
            "--warmup" => a.warmup = value()?.parse().context("--warmup")?,
            "--threads" => a.threads = value()?.parse().context("--threads")?,
            "--iperf-seconds" => a.iperf_seconds = value()?.parse().context("--iperf-seconds")?,
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--changes" => a.changes = value()?.parse().context("--changes")?,
            "--shared-backends" => a.shared_backends = true,
            "--family" => a.family = Family::parse(&value()?)?,
            "--from" => a.from = Origin::parse(&value()?)?,
            "-h" | "--help" => {
                println!(
                    "bench_e2e [--sizes 1,1000,10000] [--columns svcnat,iptables,nftables,direct] \
                     [--duration S] [--warmup S] [--threads N] [--iperf-seconds S] [--rounds R] \
                     [--changes K] [--shared-backends] [--family ipv4|ipv6] [--from pod|node]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if a.sizes.iter().any(|&n| n == 0 || n > 50_000) {
        bail!("sizes must be within 1..=50000 (VIP and port plan)");
    }
    if a.threads == 0 || a.rounds == 0 {
        bail!("--threads and --rounds must be at least 1");
    }
    Ok(a)
}

fn main() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--serve") {
        let spec = argv.get(2).cloned().unwrap_or_default();
        if let Err(e) = serve_main(&spec) {
            eprintln!("bench_e2e --serve: {e:#}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    let code = match real_main() {
        Ok(()) => 0,
        Err(e) if interrupted() => {
            eprintln!("bench_e2e: interrupted ({e:#}); cleaned up");
            130
        }
        Err(e) => {
            eprintln!("bench_e2e: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn real_main() -> Result<()> {
    let args = parse_args()?;
    let tools = ["iperf3", args.family.restore(), "nft", "ss"];
    if let Some(why) = skip_reason(&Needs::netns().programs(&tools)) {
        bail!("cannot run: {why}");
    }
    raise_fd_limit();
    sweep_stale();
    let work = std::env::temp_dir().join(format!("svcnat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _work_guard = RemoveDir(work.clone());
    println!(
        "e2e_settings duration_s={} warmup_s={} threads={} iperf_s={} rounds={} changes={} \
         server_threads_per_pod={SERVER_THREADS} backends={BACKENDS} shared_backends={} \
         family={} from={}",
        args.duration,
        args.warmup,
        args.threads,
        args.iperf_seconds,
        args.rounds,
        args.changes,
        u8::from(args.shared_backends),
        args.family.name(),
        args.from.name()
    );
    for &n in &args.sizes {
        run_size(n, &args, &work).with_context(|| format!("{n} services"))?;
    }
    Ok(())
}

fn emit(line: &str) {
    println!("{line}");
    eprintln!("  {line}");
}

/// One size: a topology per column, rules loaded, then the rounds with the
/// columns interleaved, then the change timings.
fn run_size(n: u32, args: &Args, work: &Path) -> Result<()> {
    let fam = args.family;
    let svcs = services(fam, n, args.shared_backends);
    let mut setups: Vec<(Column, Topology, Option<f64>, Option<usize>)> = Vec::new();
    for &column in &args.columns {
        if interrupted() {
            bail!("interrupted");
        }
        eprintln!("bench_e2e: {} with {n} services: setting up", column.name());
        let mut topo = build_topology(fam, column, &svcs, args.from)?;
        let (load_s, rules) = match column {
            Column::Svcnat => (Some(setup_svcnat(&mut topo, &svcs)?), None),
            Column::Iptables => {
                let (text, rules) = iptables_rules(fam, &svcs);
                let secs = load_rules(
                    &topo.node,
                    work,
                    "iptables.rules",
                    &text,
                    fam.restore(),
                    &["-w", "5"],
                )?;
                (Some(secs), Some(rules))
            }
            Column::Nftables => {
                let (text, rules) = nft_rules(fam, &svcs);
                let secs = load_rules(&topo.node, work, "rules.nft", &text, "nft", &["-f"])?;
                (Some(secs), Some(rules))
            }
            Column::Direct => (None, None),
        };
        probe(&topo, column, &svcs).with_context(|| format!("{} path check", column.name()))?;
        setups.push((column, topo, load_s, rules));
    }
    for round in 0..args.rounds {
        for (column, topo, _, _) in &setups {
            if interrupted() {
                bail!("interrupted");
            }
            eprintln!(
                "bench_e2e: {} with {n} services: round {}",
                column.name(),
                round + 1
            );
            let targets = Arc::new(targets(*column, &svcs));
            let mut r = connection_load(
                topo.origin(),
                targets,
                args.threads,
                args.warmup,
                args.duration,
            )?;
            if args.iperf_seconds > 0 {
                let to = if *column == Column::Direct {
                    fam.backend(0)
                } else {
                    fam.bulk_vip()
                };
                let (gbit, retr) = iperf(topo, to, args.iperf_seconds)?;
                r.iperf_gbit = Some(gbit);
                r.iperf_retransmits = Some(retr);
            }
            emit(&r.line(fam, *column, n, round, args.from));
        }
    }
    for (column, topo, load_s, rules) in &mut setups {
        if let Some(dp) = &topo.dataplane {
            let mut stats: Vec<(&str, u64)> = dp
                .stats()
                .map(|s| s.into_iter().map(|(k, v)| (k.name(), v.packets)).collect())
                .unwrap_or_default();
            stats.retain(|(_, v)| *v > 0);
            eprintln!("  svcnat datapath counters: {stats:?}");
        }
        let change_ms = time_changes(fam, *column, topo, &svcs, args.changes, work)?;
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        let mut sorted = change_ms.clone();
        sorted.sort_by(f64::total_cmp);
        emit(&format!(
            "e2e_load family={} column={} services={n} load_s={} rules={} change_count={} change_ms_p50={} change_ms_max={}",
            fam.name(),
            column.name(),
            opt(*load_s),
            rules.map_or("-".into(), |r| r.to_string()),
            sorted.len(),
            opt((!sorted.is_empty()).then(|| percentile(&sorted, 0.5))),
            opt(sorted.last().copied()),
        ));
    }
    drop(setups);
    Ok(())
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each backend pod holds one listener per service port, times four
/// columns: raise the soft limit of open files to the hard one, or higher
/// when allowed (root).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: lim.rlim_max.max(1 << 20),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Deletes namespaces and pin folders of earlier runs whose process is gone.
fn sweep_stale() {
    let dead = |name: &str, prefix: &str| -> bool {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if dead(name, NS_PREFIX) {
                eprintln!("bench_e2e: removing stale namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name, PIN_PREFIX) {
                eprintln!("bench_e2e: removing stale pins {name}");
                let _ = cleanup(&e.path());
            }
        }
    }
}

// ---------------------------------------------------------------- services

/// One service port as kube-proxy sees it.
struct Svc {
    /// `namespace/name:port`.
    name: String,
    vip: IpAddr,
    port: u16,
    endpoints: Vec<(IpAddr, u16)>,
}

/// The bulk service first, then N services.
fn services(fam: Family, n: u32, shared: bool) -> Vec<Svc> {
    let mut v = Vec::with_capacity(n as usize + 1);
    v.push(Svc {
        name: "bench/bulk:iperf".into(),
        vip: fam.bulk_vip(),
        port: IPERF_PORT,
        endpoints: vec![(fam.backend(0), IPERF_PORT)],
    });
    for i in 0..n {
        let port = if shared {
            SHARED_TARGET_PORT
        } else {
            FIRST_TARGET_PORT + i as u16
        };
        v.push(Svc {
            name: format!("bench/s{i}:http"),
            vip: fam.vip(i),
            port: SERVICE_PORT,
            endpoints: (0..BACKENDS).map(|k| (fam.backend(k), port)).collect(),
        });
    }
    v
}

/// The ports every backend pod listens on.
fn server_ports(svcs: &[Svc]) -> Vec<u16> {
    let mut ports: Vec<u16> = svcs[1..].iter().map(|s| s.endpoints[0].1).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What the client connects to: the VIPs, or (direct) the pods themselves.
fn targets(column: Column, svcs: &[Svc]) -> Vec<SocketAddr> {
    if column == Column::Direct {
        svcs[1..]
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|(a, p)| SocketAddr::new(*a, *p))
            .collect()
    } else {
        svcs[1..]
            .iter()
            .map(|s| SocketAddr::new(s.vip, s.port))
            .collect()
    }
}

// ---------------------------------------------------------------- topology

/// A backend pod's server: a child process (this program with `--serve`)
/// inside the pod's namespace, so that each pod's listeners (one per
/// service port) count against their own process's open-file limit. The
/// child exits when its stdin closes: on drop, and when this process dies.
struct Server {
    child: Option<Child>,
}

impl Server {
    fn start(ns: &NetNs, ports: &[u16]) -> Result<Self> {
        let exe = std::env::current_exe().context("current_exe")?;
        let spec = port_spec(ports);
        let mut child = exec_in(ns, &exe.to_string_lossy())
            .arg("--serve")
            .arg(&spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start a backend server")?;
        let mut ready = String::new();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready);
        let server = Self { child: Some(child) };
        if ready.trim() != "ready" {
            bail!("backend server in {} did not start", ns.name());
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Ports as comma-separated ranges: `10000-19999,8080`.
fn port_spec(ports: &[u16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let mut j = i;
        while j + 1 < ports.len() && ports[j + 1] == ports[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ports[i].to_string()
        } else {
            format!("{}-{}", ports[i], ports[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn parse_port_spec(spec: &str) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => ports.extend(a.parse::<u16>()?..=b.parse::<u16>()?),
            None => ports.push(part.parse()?),
        }
    }
    Ok(ports)
}

fn sys(r: libc::c_int, what: &str) -> Result<libc::c_int> {
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(r)
}

/// The `--serve PORTS` child: listeners on PORTS, `SERVER_THREADS` threads
/// each waiting on all of them with epoll (EPOLLEXCLUSIVE: one thread wakes
/// per connection); every accepted connection gets three bytes and is
/// closed. Prints `ready`, then serves until stdin closes.
fn serve_main(spec: &str) -> Result<()> {
    raise_fd_limit();
    let ports = parse_port_spec(spec)?;
    let listeners: Vec<TcpListener> = ports
        .iter()
        .map(|p| -> Result<TcpListener> {
            // [::] takes connections of both families.
            let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, *p))
                .with_context(|| format!("bind :{p}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<Result<_>>()?;
    let listeners = Arc::new(listeners);
    for _ in 0..SERVER_THREADS {
        // SAFETY: epoll_create1 returns a new fd or -1.
        let ep = unsafe {
            OwnedFd::from_raw_fd(sys(libc::epoll_create1(libc::EPOLL_CLOEXEC), "epoll")?)
        };
        for (i, l) in listeners.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
                u64: i as u64,
            };
            // SAFETY: both fds are open; ev outlives the call.
            sys(
                unsafe {
                    libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, l.as_raw_fd(), &mut ev)
                },
                "epoll_ctl",
            )?;
        }
        let listeners = listeners.clone();
        std::thread::spawn(move || serve(&ep, &listeners));
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

fn serve(ep: &OwnedFd, listeners: &[TcpListener]) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    loop {
        // SAFETY: `events` is a valid buffer of 64 entries.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for ev in &events[..n as usize] {
            let l = &listeners[ev.u64 as usize];
            loop {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"ok\n");
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// An iperf3 server process, killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One topology; everything it made goes away on drop (servers stopped,
/// pins removed, then the namespaces deleted by their own guards).
struct Topology {
    servers: Vec<Server>,
    dataplane: Option<Dataplane>,
    bpffs: Option<PathBuf>,
    client: NetNs,
    backends: Vec<NetNs>,
    node: NetNs,
    from: Origin,
}

impl Topology {
    /// The namespace the load comes from.
    fn origin(&self) -> &NetNs {
        match self.from {
            Origin::Pod => &self.client,
            Origin::Node => &self.node,
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.servers.clear();
        drop(self.dataplane.take());
        if let Some(dir) = self.bpffs.take() {
            let _ = cleanup(&dir);
        }
    }
}

fn exec_in(ns: &NetNs, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name(), program]);
    c
}

static RUN: AtomicU32 = AtomicU32::new(0);

/// `ip addr add CIDR dev DEV` (IPv6: `nodad`, usable at once).
fn addr_add<'a>(fam: Family, cidr: &'a str, dev: &'a str) -> Vec<&'a str> {
    let mut v = vec!["addr", "add", cidr, "dev", dev];
    if fam == Family::V6 {
        v.push("nodad");
    }
    v
}

/// A namespace of the run, ready for `fam`.
fn namespace(fam: Family, name: &str) -> Result<NetNs> {
    let ns = NetNs::new(name)?;
    if fam == Family::V6 {
        ns.sysctls(IPV6_SYSCTLS)?;
    }
    Ok(ns)
}

fn build_topology(fam: Family, column: Column, svcs: &[Svc], from: Origin) -> Result<Topology> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{NS_PREFIX}{}-{run}", std::process::id());
    let bridge_nf = if matches!(column, Column::Iptables | Column::Nftables) {
        "1"
    } else {
        "0"
    };
    let (gw, len) = (fam.gateway(), fam.subnet_len());
    let node = namespace(fam, &format!("{tag}-node"))?;
    node.ip(&["link", "add", "br0", "type", "bridge"])?;
    let cidr = format!("{gw}/{len}");
    node.ip(&addr_add(fam, &cidr, "br0"))?;
    node.ip(&["link", "set", "br0", "up"])?;
    match fam {
        Family::V4 => {
            node.sysctl("net.ipv4.ip_forward", "1")?;
            node.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
            node.sysctl("net.ipv4.conf.br0.send_redirects", "0")?;
            node.sysctl("net.bridge.bridge-nf-call-iptables", bridge_nf)?;
        }
        Family::V6 => {
            node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            node.sysctl("net.bridge.bridge-nf-call-ip6tables", bridge_nf)?;
        }
    }
    let pod = |name: &str, addr: IpAddr| -> Result<NetNs> {
        let ns = namespace(fam, &format!("{tag}-{name}"))?;
        let host = format!("vh{name}");
        veth(&node, &host, &ns, "eth0")?;
        node.ip(&["link", "set", &host, "master", "br0"])?;
        ns.ip(&addr_add(fam, &format!("{addr}/{len}"), "eth0"))?;
        ns.ip(&["route", "add", "default", "via", &gw.to_string()])?;
        Ok(ns)
    };
    if from == Origin::Node {
        node.ip(&["route", "add", fam.service_cidr(), "dev", "br0"])?;
    }
    let client = pod("c", fam.client())?;
    // One range for both families.
    client.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    let backends = (0..BACKENDS)
        .map(|k| pod(&format!("b{k}"), fam.backend(k)))
        .collect::<Result<Vec<_>>>()?;
    let mut topo = Topology {
        servers: Vec::new(),
        dataplane: None,
        bpffs: None,
        client,
        backends,
        node,
        from,
    };
    let ports = server_ports(svcs);
    for b in &topo.backends {
        // Well under the usual hard limit of open files per process.
        for chunk in ports.chunks(15_000) {
            let s = Server::start(b, chunk)?;
            topo.servers.push(s);
        }
    }
    Ok(topo)
}

// ---------------------------------------------------------------- proxies

/// 16 characters of base32 from a 128-bit FNV-1a hash: the shape of
/// kube-proxy's chain-name hashes (base32 of a SHA-256 prefix).
fn hash16(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in s.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    (0..16)
        .map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

fn ipt_svc_chain(svc: &Svc) -> String {
    format!("KUBE-SVC-{}", hash16(&format!("{}tcp", svc.name)))
}

fn ipt_sep_chain(svc: &Svc, ep: (IpAddr, u16)) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{}tcp{}:{}", svc.name, ep.0, ep.1))
    )
}

/// The service's rule in KUBE-SERVICES.
fn ipt_portal(fam: Family, svc: &Svc) -> String {
    format!(
        "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/{} --dport {} -j {}",
        svc.name,
        svc.vip,
        fam.host_len(),
        svc.port,
        ipt_svc_chain(svc)
    )
}

/// KUBE-SVC-* rules: the masquerade mark for traffic from outside the
/// cluster CIDR, then one `statistic` jump per endpoint (1/n, 1/(n-1), ...).
fn ipt_svc_rules(fam: Family, svc: &Svc) -> Vec<String> {
    let chain = ipt_svc_chain(svc);
    let mut rules = vec![format!(
        "-A {chain} -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/{} --dport {} ! -s {} -j KUBE-MARK-MASQ",
        svc.name,
        svc.vip,
        fam.host_len(),
        svc.port,
        fam.cluster_cidr()
    )];
    let n = svc.endpoints.len();
    for (k, ep) in svc.endpoints.iter().enumerate() {
        let left = n - k;
        let stat = if left > 1 {
            format!(
                " -m statistic --mode random --probability {:.11}",
                1.0 / left as f64
            )
        } else {
            String::new()
        };
        rules.push(format!(
            "-A {chain} -m comment --comment \"{} -> {}\"{stat} -j {}",
            svc.name,
            ep_text(*ep),
            ipt_sep_chain(svc, *ep)
        ));
    }
    rules
}

/// KUBE-SEP-* rules: hairpin mark, then the DNAT.
fn ipt_sep_rules(fam: Family, svc: &Svc, ep: (IpAddr, u16)) -> Vec<String> {
    let chain = ipt_sep_chain(svc, ep);
    vec![
        format!(
            "-A {chain} -m comment --comment {} -s {}/{} -j KUBE-MARK-MASQ",
            svc.name,
            ep.0,
            fam.host_len()
        ),
        format!(
            "-A {chain} -m comment --comment {} -m tcp -p tcp -j DNAT --to-destination {}",
            svc.name,
            ep_text(ep)
        ),
    ]
}

const IPT_FILTER: &str = "*filter
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
";

const IPT_NAT_CHAINS: &str = ":KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
";

const IPT_NAT_FIXED: &str = "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
";

const IPT_NODEPORTS_LAST: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";

/// kube-proxy's iptables mode (`--cluster-cidr` set, masquerade-all off),
/// minimal: the filter forward rules, the nat service portals, one KUBE-SVC
/// chain per service port with `statistic` jumps, one KUBE-SEP chain per
/// endpoint with the hairpin mark and the DNAT, the nodeports rule last.
/// Returns the `iptables-restore` input and its number of rules.
fn iptables_rules(fam: Family, svcs: &[Svc]) -> (String, usize) {
    let mut chains = String::new();
    let mut portals = String::new();
    let mut body = String::new();
    let mut count = 0;
    for svc in svcs {
        let _ = writeln!(chains, ":{} - [0:0]", ipt_svc_chain(svc));
        let _ = writeln!(portals, "{}", ipt_portal(fam, svc));
        count += 1;
        for r in ipt_svc_rules(fam, svc) {
            let _ = writeln!(body, "{r}");
            count += 1;
        }
        for ep in &svc.endpoints {
            let _ = writeln!(chains, ":{} - [0:0]", ipt_sep_chain(svc, *ep));
            for r in ipt_sep_rules(fam, svc, *ep) {
                let _ = writeln!(body, "{r}");
                count += 1;
            }
        }
    }
    let hooks = "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
";
    let nat_hooks =
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
";
    let filter = IPT_FILTER.replace("COMMIT\n", &format!("{hooks}COMMIT\n"));
    let text = format!(
        "{filter}*nat\n{IPT_NAT_CHAINS}{chains}{nat_hooks}{IPT_NAT_FIXED}{portals}{IPT_NODEPORTS_LAST}{body}COMMIT\n"
    );
    (text, count + 5 + 3 + 4 + 1)
}

/// What kube-proxy's partial sync writes when one endpoint of `svc` changes
/// from `old` to `new`: the filter chains and the top-level nat chains in
/// full (KUBE-SERVICES holds every service), the changed KUBE-SVC chain, the
/// new KUBE-SEP chain, and `-X` of the old one; `--noflush` keeps the rest.
/// (The portal rules do not depend on endpoints: `svcs` may be the old set.)
fn iptables_change(fam: Family, svcs: &[Svc], changed: &Svc, old: (IpAddr, u16)) -> String {
    let new = changed.endpoints[0];
    let mut s = format!("{IPT_FILTER}*nat\n{IPT_NAT_CHAINS}");
    let _ = writeln!(s, ":{} - [0:0]", ipt_svc_chain(changed));
    let _ = writeln!(s, ":{} - [0:0]", ipt_sep_chain(changed, new));
    let _ = writeln!(s, ":{} - [0:0]", ipt_sep_chain(changed, old));
    s.push_str(IPT_NAT_FIXED);
    for svc in svcs {
        let _ = writeln!(s, "{}", ipt_portal(fam, svc));
    }
    s.push_str(IPT_NODEPORTS_LAST);
    for r in ipt_svc_rules(fam, changed) {
        let _ = writeln!(s, "{r}");
    }
    for r in ipt_sep_rules(fam, changed, new) {
        let _ = writeln!(s, "{r}");
    }
    let _ = writeln!(s, "-X {}", ipt_sep_chain(changed, old));
    s.push_str("COMMIT\n");
    s
}

/// kube-proxy's table of the family: `ip kube-proxy`, `ip6 kube-proxy`.
fn nft_table(fam: Family) -> String {
    format!("{} kube-proxy", fam.nft())
}

fn nft_svc_chain(svc: &Svc) -> String {
    let name = svc.name.replace(':', "/tcp/");
    format!("service-{}-{name}", &hash16(&name)[..8])
}

fn nft_ep_chain(svc: &Svc, ep: (IpAddr, u16)) -> String {
    // A chain name has no colons: IPv6 addresses are written with dots.
    let addr = ep.0.to_string().replace(':', ".");
    let name = format!("{}__{addr}/{}", svc.name.replace(':', "/tcp/"), ep.1);
    format!("endpoint-{}-{name}", &hash16(&name)[..8])
}

/// `add chain` + rules of one endpoint chain.
fn nft_ep(fam: Family, s: &mut String, svc: &Svc, ep: (IpAddr, u16)) {
    let (t, l3) = (nft_table(fam), fam.nft());
    let chain = nft_ep_chain(svc, ep);
    let _ = writeln!(s, "add chain {t} {chain}");
    let _ = writeln!(
        s,
        "add rule {t} {chain} {l3} saddr {} jump mark-for-masquerade",
        ep.0
    );
    let _ = writeln!(
        s,
        "add rule {t} {chain} meta l4proto tcp dnat to {}",
        ep_text(ep)
    );
}

/// The two rules of a service chain (masquerade mark, then the random
/// choice of an endpoint chain).
fn nft_svc_rules(fam: Family, s: &mut String, svc: &Svc) {
    let (t, l3) = (nft_table(fam), fam.nft());
    let chain = nft_svc_chain(svc);
    let _ = writeln!(
        s,
        "add rule {t} {chain} {l3} daddr {} tcp dport {} {l3} saddr != {} jump mark-for-masquerade",
        svc.vip,
        svc.port,
        fam.cluster_cidr()
    );
    let vmap: Vec<String> = svc
        .endpoints
        .iter()
        .enumerate()
        .map(|(k, ep)| format!("{k} : goto {}", nft_ep_chain(svc, *ep)))
        .collect();
    let _ = writeln!(
        s,
        "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
        svc.endpoints.len(),
        vmap.join(" , ")
    );
}

/// kube-proxy's nftables mode, minimal: table `kube-proxy` with the
/// `service-ips` verdict map on `ip daddr . meta l4proto . th dport`, one
/// chain per service port choosing an endpoint chain with `numgen random mod
/// n vmap`, one chain per endpoint with the hairpin mark and the `dnat`, the
/// masquerading chains and the forward checks (`cluster-ips`,
/// `no-endpoint-services`). Returns the `nft -f` input and its rule count.
fn nft_rules(fam: Family, svcs: &[Svc]) -> (String, usize) {
    let (t, l3, addr) = (nft_table(fam), fam.nft(), fam.nft_addr_type());
    let mut s = format!(
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}
add chain {t} mark-for-masquerade
add rule {t} mark-for-masquerade mark set mark or 0x4000
add chain {t} masquerading
add rule {t} masquerading mark and 0x4000 == 0 return
add rule {t} masquerading mark set mark xor 0x4000
add rule {t} masquerading masquerade fully-random
add chain {t} services
add chain {t} service-endpoints-check
add chain {t} cluster-ips-check
add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}
add rule {t} filter-forward ct state new jump service-endpoints-check
add rule {t} filter-forward ct state new jump cluster-ips-check
add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add rule {t} nat-prerouting jump services
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add rule {t} nat-output jump services
add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add rule {t} nat-postrouting jump masquerading
add set {t} cluster-ips {{ type {addr} ; comment \"Active ClusterIPs\" ; }}
add map {t} service-ips {{ type {addr} . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}
add map {t} no-endpoint-services {{ type {addr} . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}
add rule {t} services {l3} daddr . meta l4proto . th dport vmap @service-ips
add rule {t} service-endpoints-check {l3} daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule {t} cluster-ips-check {l3} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"
"
    );
    let mut count = 13;
    for svc in svcs {
        for ep in &svc.endpoints {
            nft_ep(fam, &mut s, svc, *ep);
            count += 2;
        }
        let chain = nft_svc_chain(svc);
        let _ = writeln!(s, "add chain {t} {chain}");
        nft_svc_rules(fam, &mut s, svc);
        count += 2;
        let _ = writeln!(s, "add element {t} cluster-ips {{ {} }}", svc.vip);
        let _ = writeln!(
            s,
            "add element {t} service-ips {{ {} . tcp . {} : goto {chain} }}",
            svc.vip, svc.port
        );
    }
    (s, count)
}

/// One `nft -f` transaction for one endpoint change of `svc`, as
/// kube-proxy's nftables mode writes it: the new endpoint chain, the service
/// chain flushed and rewritten, the old endpoint chain deleted.
fn nft_change(fam: Family, changed: &Svc, old: (IpAddr, u16)) -> String {
    let t = nft_table(fam);
    let mut s = String::new();
    nft_ep(fam, &mut s, changed, changed.endpoints[0]);
    let _ = writeln!(s, "flush chain {t} {}", nft_svc_chain(changed));
    nft_svc_rules(fam, &mut s, changed);
    let _ = writeln!(s, "delete chain {t} {}", nft_ep_chain(changed, old));
    s
}

/// Runs `program args... FILE` inside the node namespace with `text` in
/// FILE; the wall-clock time of that command (process start included, as
/// kube-proxy pays it too).
fn load_rules(
    node: &NetNs,
    work: &Path,
    file: &str,
    text: &str,
    program: &str,
    args: &[&str],
) -> Result<f64> {
    let path = work.join(format!("{}-{file}", node.name()));
    std::fs::write(&path, text)?;
    let mut cmd = exec_in(node, program);
    cmd.args(args).arg(&path);
    let t = Instant::now();
    let r = run_ok(&mut cmd);
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    r.with_context(|| format!("{program} in {}", node.name()))?;
    Ok(secs)
}

fn specs(svc: &Svc) -> Vec<BackendSpec> {
    svc.endpoints
        .iter()
        .map(|(addr, port)| BackendSpec {
            addr: *addr,
            port: *port,
            flags: 0,
        })
        .collect()
}

fn frontend(svc: &Svc) -> Frontend {
    Frontend {
        addr: svc.vip,
        port: svc.port,
        proto: 6,
    }
}

const NO_OPTS: ServiceOpts = ServiceOpts {
    affinity_timeout: 0,
    label: String::new(),
};

/// Opens a dataplane pinned under a fresh folder, writes every service
/// (timed) and attaches to the pod veths.
fn setup_svcnat(topo: &mut Topology, svcs: &[Svc]) -> Result<f64> {
    let bpffs = PathBuf::from(format!(
        "/sys/fs/bpf/{PIN_PREFIX}{}-{}",
        std::process::id(),
        topo.node.name().rsplit('-').nth(1).unwrap_or("x")
    ));
    let _ = cleanup(&bpffs);
    topo.bpffs = Some(bpffs.clone());
    let n = svcs.len() as u32;
    let work: Vec<(Frontend, Vec<BackendSpec>)> =
        svcs.iter().map(|s| (frontend(s), specs(s))).collect();
    let sockets = topo.from == Origin::Node;
    let (dp, secs) = topo.node.run(move || -> Result<(Dataplane, f64)> {
        let cfg = DataplaneConfig {
            bpffs,
            sizes: MapSizes {
                services: (2 * n + 64).max(1024),
                slots: (5 * n + 64).max(1024),
                backends: (5 * n + 64).max(1024),
                revnat: (n + 64).max(1024),
                conntrack: 262_144,
                fragments: 1024,
                ..MapSizes::default()
            },
        };
        let mut dp = Dataplane::open(&cfg).context("open the dataplane")?;
        let t = Instant::now();
        for (fe, backends) in &work {
            dp.upsert_service(*fe, backends, &NO_OPTS)
                .context("upsert_service")?;
        }
        let secs = t.elapsed().as_secs_f64();
        let pattern = glob::Pattern::new("vh*").context("glob")?;
        let report = dp.attach_matching(&[pattern]).context("attach")?;
        if !report.failed.is_empty() || report.attached.len() != usize::from(BACKENDS) + 1 {
            bail!("attach: {report:?}");
        }
        if sockets {
            // Scoped to this (the node's) namespace by its cookie.
            let root = cgroup2_root(Path::new(DEFAULT_CGROUP_ROOT)).context("cgroup v2 root")?;
            dp.attach_sockets(&root)
                .context("attach the socket hooks")?;
        }
        Ok((dp, secs))
    })??;
    topo.dataplane = Some(dp);
    Ok(secs)
}

/// Replaces the first endpoint of the middle service `count` times with a
/// fresh address and times each change as the column applies it (ms).
fn time_changes(
    fam: Family,
    column: Column,
    topo: &mut Topology,
    svcs: &[Svc],
    count: u32,
    work: &Path,
) -> Result<Vec<f64>> {
    if column == Column::Direct || count == 0 {
        return Ok(Vec::new());
    }
    let idx = 1 + (svcs.len() - 1) / 2;
    let mut changed = Svc {
        name: svcs[idx].name.clone(),
        vip: svcs[idx].vip,
        port: svcs[idx].port,
        endpoints: svcs[idx].endpoints.clone(),
    };
    let mut out = Vec::new();
    for c in 0..count {
        let old = changed.endpoints[0];
        changed.endpoints[0] = (fam.replacement(c), old.1);
        let ms = match column {
            Column::Svcnat => {
                let dp = topo
                    .dataplane
                    .as_mut()
                    .ok_or_else(|| anyhow!("no dataplane"))?;
                let t = Instant::now();
                dp.upsert_service(frontend(&changed), &specs(&changed), &NO_OPTS)?;
                t.elapsed().as_secs_f64() * 1e3
            }
            Column::Iptables => {
                let text = iptables_change(fam, svcs, &changed, old);
                load_rules(
                    &topo.node,
                    work,
                    "change.rules",
                    &text,
                    fam.restore(),
                    &["-w", "5", "--noflush"],
                )? * 1e3
            }
            Column::Nftables => {
                let text = nft_change(fam, &changed, old);
                load_rules(&topo.node, work, "change.nft", &text, "nft", &["-f"])? * 1e3
            }
            Column::Direct => unreachable!("returned above"),
        };
        out.push(ms);
    }
    Ok(out)
}

// ---------------------------------------------------------------- load

#[derive(Default)]
struct RunResult {
    conns: u64,
    errors: u64,
    duration: f64,
    connect_us: Vec<f64>,
    request_us: Vec<f64>,
    iperf_gbit: Option<f64>,
    iperf_retransmits: Option<u64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

impl RunResult {
    fn line(&self, fam: Family, column: Column, n: u32, round: u32, from: Origin) -> String {
        let slow = self.connect_us.iter().filter(|&&c| c > 5_000.0).count();
        format!(
            "e2e family={} column={} services={n} round={round} conns={} errors={} conn_per_s={:.0} \
             connect_p50_us={:.1} connect_p99_us={:.1} request_p50_us={:.1} request_p99_us={:.1} \
             connect_over_5ms={slow} iperf_gbit_s={} iperf_retransmits={} from={}",
            fam.name(),
            column.name(),
            self.conns,
            self.errors,
            self.conns as f64 / self.duration,
            percentile(&self.connect_us, 0.5),
            percentile(&self.connect_us, 0.99),
            percentile(&self.request_us, 0.5),
            percentile(&self.request_us, 0.99),
            self.iperf_gbit.map_or("-".into(), |v| format!("{v:.2}")),
            self.iperf_retransmits.map_or("-".into(), |r| r.to_string()),
            from.name(),
        )
    }
}

/// One request on a fresh connection: connect, read the answer to EOF.
/// Returns (connect µs, whole request µs).
fn request(to: SocketAddr) -> std::io::Result<(f64, f64)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    let connected = t.elapsed();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    if got == 0 {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "empty answer",
        ));
    }
    Ok((
        connected.as_secs_f64() * 1e6,
        t.elapsed().as_secs_f64() * 1e6,
    ))
}

/// One request to the first and the last target must work before measuring.
fn probe(topo: &Topology, column: Column, svcs: &[Svc]) -> Result<()> {
    let all = targets(column, svcs);
    let probe = [all[0], all[all.len() - 1]];
    let failed = topo.origin().run(move || -> Vec<String> {
        probe
            .iter()
            .filter_map(|to| request(*to).err().map(|e| format!("{to}: {e}")))
            .collect()
    })?;
    if !failed.is_empty() {
        bail!("requests fail before measuring: {failed:?}");
    }
    if let (Some(dp), Origin::Node) = (&topo.dataplane, topo.from) {
        // The node's connections must be translated at connect(), not by
        // the TC programs on the way.
        let connects = dp
            .stats()
            .context("stats")?
            .into_iter()
            .find(|(r, _)| r.name() == "sock_connect")
            .map_or(0, |(_, v)| v.packets);
        if connects < probe.len() as u64 {
            bail!("the socket hooks translated {connects} of the probe's connections");
        }
    }
    Ok(())
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Several threads in the client namespace, each opening connections to a
/// random target until the deadline; the first `warmup` seconds are not
/// counted.
fn connection_load(
    client: &NetNs,
    targets: Arc<Vec<SocketAddr>>,
    threads: usize,
    warmup: f64,
    duration: f64,
) -> Result<RunResult> {
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(duration);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let targets = targets.clone();
            client.spawn(move || {
                let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) << 32));
                let (mut connect, mut whole) = (Vec::new(), Vec::new());
                let (mut conns, mut errors) = (0u64, 0u64);
                while Instant::now() < start {
                    std::thread::sleep(Duration::from_millis(1));
                }
                loop {
                    let t0 = Instant::now();
                    if t0 >= end || interrupted() {
                        break;
                    }
                    let to = targets[(rng.next() % targets.len() as u64) as usize];
                    let r = request(to);
                    if t0 < measure_from {
                        continue;
                    }
                    match r {
                        Ok((c, w)) => {
                            conns += 1;
                            connect.push(c);
                            whole.push(w);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (connect, whole, conns, errors)
            })
        })
        .collect();
    let mut r = RunResult {
        duration,
        ..RunResult::default()
    };
    for h in handles {
        let (c, w, conns, errors) = h.join().map_err(|_| anyhow!("client thread panicked"))??;
        r.connect_us.extend(c);
        r.request_us.extend(w);
        r.conns += conns;
        r.errors += errors;
    }
    r.connect_us.sort_by(f64::total_cmp);
    r.request_us.sort_by(f64::total_cmp);
    if interrupted() {
        bail!("interrupted");
    }
    Ok(r)
}

/// iperf3 server in the first backend pod, client in the client pod to
/// `target`: received Gbit/s and the sender's retransmits.
fn iperf(topo: &Topology, target: IpAddr, seconds: u32) -> Result<(f64, u64)> {
    let server = exec_in(&topo.backends[0], "iperf3")
        .args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start iperf3 -s")?;
    let _server = ChildGuard(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = exec_in(&topo.backends[0], "ss")
            .args(["-Hltn", &format!("sport = :{IPERF_PORT}")])
            .output()?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break;
        }
        if Instant::now() > deadline || interrupted() {
            bail!("iperf3 server did not start listening");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = exec_in(topo.origin(), "iperf3")
        .args([
            "-c",
            &target.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .stdin(Stdio::null())
        .output()
        .context("run iperf3 -c")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(err) = json.get("error") {
        bail!("iperf3: {err}");
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 output without end.sum_received"))?;
    let retransmits = json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e9, retransmits))
}
