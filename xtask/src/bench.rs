//! `cargo xtask bench`: svcnat side by side with kube-proxy's iptables and
//! nftables modes, written to `bench/REPORT.md` and `bench/report.json`.
//!
//! Three measurement programs (release examples of `proxy-user`) do the
//! work; this module runs them, keeps their output, and writes the report:
//!
//! 1. `packet_cost`: per-packet cost of the TC programs and of the XDP
//!    node-port paths (BPF_PROG_TEST_RUN);
//! 2. `sync_scale`: the agent's full sync time, per-change latency, RSS, and
//!    the kernel's memlock of every map;
//! 3. `bench_e2e`: real TCP through namespaces: svcnat, iptables-mode and
//!    nftables-mode rules, and no proxy, on the same topology.
//!
//! `--quick` runs small sizes and short durations (CI: checks that the bench
//! runs; nothing is asserted) and writes to `target/bench-quick/` unless
//! `--out` says otherwise, so that it never overwrites the committed report.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{Cmd, is_root, target_dir},
    ebpf,
};

const EXAMPLES: [&str; 3] = ["packet_cost", "sync_scale", "bench_e2e"];
const COLUMNS: [&str; 4] = ["svcnat", "iptables", "nftables", "direct"];

/// What one run measures.
struct Plan {
    quick: bool,
    packet_repeat: u32,
    packet_sizes: Vec<u32>,
    sync_sizes: Vec<u32>,
    sync_changes: u32,
    e2e_args: Vec<String>,
    shared_args: Vec<String>,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        if quick {
            Self {
                quick,
                packet_repeat: 100_000,
                packet_sizes: vec![1, 1_000],
                sync_sizes: vec![1_000],
                sync_changes: 200,
                e2e_args: strings(&[
                    "--sizes",
                    "1,100",
                    "--duration",
                    "1",
                    "--warmup",
                    "0.2",
                    "--threads",
                    "4",
                    "--iperf-seconds",
                    "1",
                    "--rounds",
                    "1",
                    "--changes",
                    "3",
                ]),
                shared_args: strings(&[
                    "--shared-backends",
                    "--sizes",
                    "100",
                    "--columns",
                    "svcnat,iptables,nftables",
                    "--duration",
                    "1",
                    "--warmup",
                    "0.2",
                    "--threads",
                    "4",
                    "--iperf-seconds",
                    "0",
                    "--rounds",
                    "1",
                    "--changes",
                    "0",
                ]),
            }
        } else {
            Self {
                quick,
                packet_repeat: 1_000_000,
                packet_sizes: vec![1, 1_000, 10_000, 100_000],
                sync_sizes: vec![1_000, 10_000, 100_000],
                sync_changes: 200,
                e2e_args: strings(&[
                    "--sizes",
                    "1,1000,10000",
                    "--duration",
                    "3",
                    "--warmup",
                    "0.5",
                    "--threads",
                    "4",
                    "--iperf-seconds",
                    "3",
                    "--rounds",
                    "5",
                    "--changes",
                    "5",
                ]),
                shared_args: strings(&[
                    "--shared-backends",
                    "--sizes",
                    "1000",
                    "--columns",
                    "svcnat,iptables,nftables",
                    "--duration",
                    "3",
                    "--warmup",
                    "0.5",
                    "--threads",
                    "4",
                    "--iperf-seconds",
                    "0",
                    "--rounds",
                    "1",
                    "--changes",
                    "0",
                ]),
            }
        }
    }
}

/// Where the report goes: `--out`, else `bench/` (full) or
/// `target/bench-quick/` (quick).
pub fn out_dir(root: &Path, quick: bool, out: Option<&Path>) -> PathBuf {
    match out {
        Some(dir) if dir.is_absolute() => dir.to_path_buf(),
        Some(dir) => root.join(dir),
        None if quick => target_dir(root).join("bench-quick"),
        None => root.join("bench"),
    }
}

/// Builds the examples against `object`, runs them, writes the report.
pub fn run(root: &Path, object: &Path, quick: bool, out: Option<&Path>) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask bench loads BPF programs and creates network namespaces: run it as root \
             (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        );
    }
    let started = Instant::now();
    let plan = Plan::new(quick);
    let out = out_dir(root, quick, out);
    let mut log = Log::new(root);
    let load_start = read_trim("/proc/loadavg");

    let mut build = Cmd::new("cargo")
        .args(["build", "--release", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .args(["-p", "proxy-user"]);
    for e in EXAMPLES {
        build = build.args(["--example", e]);
    }
    let build = ebpf::embed(build.dir(root), root, object);
    log.record(&build.display());
    build.run()?;
    let examples = target_dir(root).join("release").join("examples");
    let exe = |name: &str| examples.join(name).to_string_lossy().into_owned();

    // 1. Per-packet cost.
    let mut args = vec![plan.packet_repeat.to_string()];
    args.extend(plan.packet_sizes.iter().map(u32::to_string));
    let packet_out = log.capture(&exe("packet_cost"), &args)?;
    let packet = PacketCost::parse(&packet_out);

    // 2. Control plane.
    let mut sync = Vec::new();
    for n in &plan.sync_sizes {
        let text = log.capture(
            &exe("sync_scale"),
            &[n.to_string(), plan.sync_changes.to_string()],
        )?;
        sync.push(SyncScale::parse(*n, &text));
    }

    // 3. End to end.
    let e2e_text = log.capture(&exe("bench_e2e"), &plan.e2e_args)?;
    let e2e = E2e::parse(&e2e_text);
    let shared_text = log.capture(&exe("bench_e2e"), &plan.shared_args)?;
    let shared = E2e::parse(&shared_text);

    let facts = Facts::collect(root, load_start);
    let elapsed = started.elapsed().as_secs_f64();
    let report = Report {
        plan: &plan,
        facts: &facts,
        log: &log,
        packet: &packet,
        sync: &sync,
        e2e: &e2e,
        shared: &shared,
        elapsed,
    };
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let md = out.join("REPORT.md");
    let json = out.join("report.json");
    fs::write(&md, report.markdown()).with_context(|| format!("write {}", md.display()))?;
    fs::write(&json, report.json().render())
        .with_context(|| format!("write {}", json.display()))?;
    eprintln!(
        "xtask bench: wrote {} and {} ({elapsed:.0} s)",
        md.display(),
        json.display()
    );
    Ok(())
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The commands run for the report, as shell lines relative to the
/// workspace root.
struct Log {
    root: String,
    commands: Vec<String>,
}

impl Log {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_string_lossy().into_owned(),
            commands: Vec::new(),
        }
    }

    /// Records `line` with the workspace root left out: `(cd ROOT && X)`
    /// becomes `X`, `ROOT/path` becomes `path`.
    fn record(&mut self, line: &str) {
        let cd = format!("(cd {} && ", self.root);
        let line = match line.strip_prefix(&cd).and_then(|l| l.strip_suffix(')')) {
            Some(inner) => inner.to_string(),
            None => line.to_string(),
        };
        self.commands
            .push(line.replace(&format!("{}/", self.root), ""));
    }

    /// Echoes and runs `program args`, stderr shown as it comes, stdout
    /// captured and returned; fails when the program fails.
    fn capture(&mut self, program: &str, args: &[String]) -> Result<String> {
        let line = Cmd::new(program).args(args).display();
        eprintln!("$ {line}");
        self.record(&line);
        self.run_output(program, args, &line)
    }

    fn run_output(&mut self, program: &str, args: &[String], line: &str) -> Result<String> {
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot start `{line}`"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            eprint!("{stdout}");
            bail!("`{line}` failed ({})", out.status);
        }
        Ok(stdout)
    }
}

/// Facts about the machine and the tree.
struct Facts {
    date: String,
    commit: String,
    nproc: usize,
    mem_gib: f64,
    cpu: String,
    kernel: String,
    tools: Vec<(&'static str, String)>,
    load_start: String,
    load_end: String,
}

fn probe(program: &str, args: &[&str]) -> String {
    Cmd::new(program)
        .args(args)
        .probe()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

impl Facts {
    fn collect(root: &Path, load_start: String) -> Self {
        let meminfo = read_trim("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let cpu = read_trim("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let root_s = root.to_string_lossy().into_owned();
        let mut commit = probe("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"]);
        // Read-only check for uncommitted changes (diff-index does not write the index).
        let dirty = Cmd::new("git")
            .args(["-C", &root_s, "diff-index", "--quiet", "HEAD", "--"])
            .probe()
            .is_none();
        if dirty && commit != "unknown" {
            commit.push_str(" (with uncommitted changes)");
        }
        Self {
            date: probe("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            commit,
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            mem_gib: mem_kib / 1024.0 / 1024.0,
            cpu,
            kernel: probe("uname", &["-r"]),
            tools: vec![
                ("iptables", probe("iptables", &["-V"])),
                ("nft", probe("nft", &["-v"])),
                ("iperf3", probe("iperf3", &["--version"])),
                ("bpftool", probe("bpftool", &["version"])),
            ],
            load_start,
            load_end: read_trim("/proc/loadavg"),
        }
    }
}

/// `key=value` words of a line after its first word.
fn kv(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(map: &BTreeMap<String, String>, key: &str) -> Option<f64> {
    map.get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The Markdown tables of `text`: runs of consecutive lines that start
/// with `|`.
fn md_tables(text: &str) -> Vec<Vec<&str>> {
    let mut tables: Vec<Vec<&str>> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        if !line.starts_with('|') {
            open = false;
            continue;
        }
        if !open {
            tables.push(Vec::new());
            open = true;
        }
        if let Some(t) = tables.last_mut() {
            t.push(line);
        }
    }
    tables
}

/// The cells of a Markdown table line, trimmed.
fn md_cells(line: &str) -> Vec<&str> {
    line.trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

/// Output of `packet_cost`: the TC table (one row per number of services)
/// and the XDP table (one row per path).
struct PacketCost {
    table: String,
    /// services, new flow, established, reply, not a service (single runs),
    /// not a service (repeated) (ns).
    rows: Vec<[f64; 6]>,
    xdp: XdpCost,
}

/// The XDP node-port table of `packet_cost`: its first header cell starts
/// with "XDP", the other header cells after "measured" are numbers of
/// services.
#[derive(Default)]
struct XdpCost {
    table: String,
    sizes: Vec<u32>,
    /// Path, how it is measured ("repeat" or "single"), ns per size (in
    /// `sizes` order; `None` where the cell is not a number).
    rows: Vec<(String, String, Vec<Option<f64>>)>,
}

impl PacketCost {
    fn parse(text: &str) -> Self {
        let mut tc: Option<Vec<&str>> = None;
        let mut xdp = XdpCost::default();
        for table in md_tables(text) {
            let header = table.first().map(|l| md_cells(l)).unwrap_or_default();
            if header.first().is_some_and(|c| c.starts_with("XDP")) {
                xdp = XdpCost::parse(&table);
            } else if tc.is_none() {
                tc = Some(table);
            }
        }
        let table = tc.unwrap_or_default();
        let rows = table
            .iter()
            .filter_map(|l| {
                let cells: Vec<f64> = md_cells(l)
                    .into_iter()
                    .filter_map(|c| c.parse().ok())
                    .collect();
                <[f64; 6]>::try_from(cells).ok()
            })
            .collect();
        Self {
            table: table.join("\n"),
            rows,
            xdp,
        }
    }
}

impl XdpCost {
    fn parse(table: &[&str]) -> Self {
        let header = table.first().map(|l| md_cells(l)).unwrap_or_default();
        let sizes = header
            .iter()
            .skip(2)
            .filter_map(|c| c.replace(',', "").parse().ok())
            .collect();
        let rows = table
            .iter()
            .skip(1)
            .map(|l| md_cells(l))
            .filter(|c| {
                c.len() > 2 && !c.iter().all(|x| x.chars().all(|ch| ch == '-' || ch == ':'))
            })
            .map(|c| {
                (
                    c[0].to_string(),
                    c[1].to_string(),
                    c[2..]
                        .iter()
                        .map(|v| v.replace(',', "").parse::<f64>().ok())
                        .collect(),
                )
            })
            .collect();
        Self {
            table: table.join("\n"),
            sizes,
            rows,
        }
    }
}

struct SyncScale {
    services: u32,
    values: BTreeMap<String, f64>,
    maps: Vec<(String, String, f64, f64)>,
}

impl SyncScale {
    fn parse(services: u32, text: &str) -> Self {
        let mut values = BTreeMap::new();
        let mut maps = Vec::new();
        for line in text.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            let m = kv(line);
            match first {
                "map_memory" => maps.push((
                    m.get("map").cloned().unwrap_or_default(),
                    m.get("type").cloned().unwrap_or_default(),
                    num(&m, "max_entries").unwrap_or(0.0),
                    num(&m, "memlock_bytes").unwrap_or(0.0),
                )),
                "full_sync" | "endpoint_change" | "agent_memory" | "map_memory_total" => {
                    for (k, v) in &m {
                        if let Ok(v) = v.parse::<f64>() {
                            values.insert(format!("{first}.{k}"), v);
                        }
                    }
                }
                _ => {}
            }
        }
        Self {
            services,
            values,
            maps,
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

/// Output of one `bench_e2e` invocation.
struct E2e {
    settings: BTreeMap<String, String>,
    runs: Vec<BTreeMap<String, String>>,
    loads: Vec<BTreeMap<String, String>>,
}

impl E2e {
    fn parse(text: &str) -> Self {
        let mut e = Self {
            settings: BTreeMap::new(),
            runs: Vec::new(),
            loads: Vec::new(),
        };
        for line in text.lines() {
            match line.split_whitespace().next() {
                Some("e2e_settings") => e.settings = kv(line),
                Some("e2e") => e.runs.push(kv(line)),
                Some("e2e_load") => e.loads.push(kv(line)),
                _ => {}
            }
        }
        e
    }

    fn sizes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .runs
            .iter()
            .filter_map(|r| r.get("services").and_then(|s| s.parse().ok()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn columns(&self) -> Vec<&'static str> {
        COLUMNS
            .into_iter()
            .filter(|c| {
                self.runs
                    .iter()
                    .any(|r| r.get("column").map(String::as_str) == Some(*c))
            })
            .collect()
    }

    fn values(&self, column: &str, n: u32, key: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| {
                r.get("column").map(String::as_str) == Some(column)
                    && r.get("services") == Some(&n.to_string())
            })
            .filter_map(|r| num(r, key))
            .collect()
    }

    /// Median over the rounds.
    fn median(&self, column: &str, n: u32, key: &str) -> Option<f64> {
        median(self.values(column, n, key))
    }

    /// Sum over the rounds.
    fn sum(&self, column: &str, n: u32, key: &str) -> Option<f64> {
        let v = self.values(column, n, key);
        (!v.is_empty()).then(|| v.iter().sum())
    }

    fn load(&self, column: &str, n: u32, key: &str) -> Option<f64> {
        self.loads
            .iter()
            .find(|r| {
                r.get("column").map(String::as_str) == Some(column)
                    && r.get("services") == Some(&n.to_string())
            })
            .and_then(|r| num(r, key))
    }
}

/// The figures of the end-to-end tables: key, title, unit, higher is better.
const E2E_FIGURES: [(&str, &str, &str, bool); 6] = [
    (
        "conn_per_s",
        "New TCP connections per second (one request each)",
        "conn/s",
        true,
    ),
    ("connect_p50_us", "connect() latency p50", "µs", false),
    ("connect_p99_us", "connect() latency p99", "µs", false),
    (
        "request_p50_us",
        "Whole request latency p50 (connect + answer + close)",
        "µs",
        false,
    ),
    ("request_p99_us", "Whole request latency p99", "µs", false),
    (
        "iperf_gbit_s",
        "Bulk throughput, iperf3, one TCP stream",
        "Gbit/s",
        true,
    ),
];

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 1000.0 => {
            // Thousands separators for readability.
            let s = format!("{:.0}", v);
            let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            format!("{sign}{out}")
        }
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 0.1 => format!("{v:.2}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// A count: whole number with thousands separators.
fn fmt_count(v: Option<f64>) -> String {
    match v {
        Some(v) if v.abs() < 1000.0 => format!("{v:.0}"),
        v => fmt_num(v),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}"))
}

struct Report<'a> {
    plan: &'a Plan,
    facts: &'a Facts,
    log: &'a Log,
    packet: &'a PacketCost,
    sync: &'a [SyncScale],
    e2e: &'a E2e,
    shared: &'a E2e,
    elapsed: f64,
}

impl Report<'_> {
    fn sync_for(&self, n: u32) -> Option<&SyncScale> {
        self.sync.iter().find(|s| s.services == n)
    }

    fn markdown(&self) -> String {
        let f = self.facts;
        let mut s = String::new();
        let _ = writeln!(s, "# svcnat benchmark report\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask bench{}` on {} at commit `{}` ({:.0} s). Every figure \
             below is a measurement on this machine, not a target; rerun to compare.\n",
            if self.plan.quick { " --quick" } else { "" },
            f.date,
            f.commit,
            self.elapsed
        );
        if self.plan.quick {
            let _ = writeln!(
                s,
                "**Quick run** (CI smoke): small sizes, short durations, one round; figures \
                 are noisy.\n"
            );
        }
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| CPU | {} |", f.cpu);
        let _ = writeln!(s, "| cores (nproc) | {} |", f.nproc);
        let _ = writeln!(s, "| memory | {:.1} GiB |", f.mem_gib);
        let _ = writeln!(s, "| kernel | {} |", f.kernel);
        for (tool, v) in &f.tools {
            let _ = writeln!(s, "| {tool} | {v} |");
        }
        let _ = writeln!(
            s,
            "| load average (1/5/15 min, at start → at end) | {} → {} |\n",
            f.load_start
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            f.load_end
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.md_packet(&mut s);
        self.md_sync(&mut s);
        self.md_e2e(&mut s);
        self.md_observations(&mut s);
        let _ = writeln!(s, "## Commands run\n");
        let _ = writeln!(
            s,
            "After `cargo xtask setup` and `cargo xtask build-ebpf --release` (which \
             `cargo xtask bench` runs first), as root, from the workspace root:\n"
        );
        let _ = writeln!(s, "```sh");
        for c in &self.log.commands {
            let _ = writeln!(s, "{c}");
        }
        let _ = writeln!(s, "```");
        s
    }

    fn md_packet(&self, s: &mut String) {
        let _ = writeln!(s, "## 1. Per-packet cost of the datapath\n");
        let _ = writeln!(
            s,
            "The real TC programs run on crafted packets through `BPF_PROG_TEST_RUN`, with \
             N services of 5 backends each in the maps; kernel-measured ns per packet, \
             program only (no stack around it). A repeated test run executes the program \
             on the same buffer, so a path that rewrites the packet would run only once: \
             new flow, established and reply are the median of 20,000 single runs on \
             fresh copies (a new flow: one SYN per distinct source port). A single run \
             includes the kernel's timing overhead; the two \"not a service\" columns \
             (single runs, and {} repeated runs, median of 5) show its size.\n",
            self.plan.packet_repeat
        );
        let _ = writeln!(s, "{}\n", self.packet.table);
        if let (Some(first), Some(last)) = (self.packet.rows.first(), self.packet.rows.last())
            && self.packet.rows.len() > 1
        {
            let _ = writeln!(
                s,
                "From {} to {} services: new flow ×{:.2}, established ×{:.2}, reply ×{:.2}, \
                 not a service ×{:.2}.\n",
                fmt_count(Some(first[0])),
                fmt_count(Some(last[0])),
                last[1] / first[1],
                last[2] / first[2],
                last[3] / first[3],
                last[5] / first[5]
            );
        }
        let xdp = &self.packet.xdp;
        if xdp.rows.is_empty() {
            return;
        }
        let _ = writeln!(s, "### XDP node-port paths\n");
        let _ = writeln!(
            s,
            "The XDP program of node interfaces (`svcnat_node_xdp`) run the same way, in the \
             same maps (the N services above and their flows) plus a few frontends on a node \
             address: a node port with one local backend, one with 64 remote backends, a \
             load-balancer IP with a source range, and an externalTrafficPolicy Local node \
             port without a local backend. Paths that leave the packet alone (pass, drops) \
             are measured with {} repeated runs, median of 5; paths that rewrite it are the \
             median of 20,000 single runs on fresh copies (a new flow: one SYN per distinct \
             client port), to be read against \"not a service\" measured the same way. Every \
             figure's runs were checked in the stats to have taken the path named. SNAT ports \
             are allocated per backend from a range of 4,536 ports: the remote node port has \
             64 backends so that 20,000 new flows leave each range mostly free. Rewritten \
             packets go on to the kernel stack (`XDP_PASS`), whose cost is not included.\n",
            self.plan.packet_repeat
        );
        let _ = writeln!(s, "{}\n", xdp.table);
    }

    fn md_sync(&self, s: &mut String) {
        let _ = writeln!(s, "## 2. Control plane\n");
        let _ = writeln!(
            s,
            "`sync_scale`: the agent's syncer, from Services and EndpointSlices (5 ready \
             endpoints each, all distinct) to real pinned maps: the full sync, then {} \
             single-endpoint changes applied one at a time (each timed from event to maps \
             written). Peak RSS is the process's VmHWM. Map memory is what the kernel \
             charges (`bpftool map show`: `memlock`), which for preallocated hash maps follows \
             `max_entries` (sized here for the service count), not the entries in use.\n",
            self.plan.sync_changes
        );
        let _ = writeln!(
            s,
            "| services | full sync s | peak RSS MiB | RSS growth MiB | change p50 µs | change p99 µs | change max µs | BPF map memlock MiB |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mib = |v: Option<f64>, div: f64| v.map(|v| v / div);
        for r in self.sync {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_count(Some(f64::from(r.services))),
                fmt_num(r.get("full_sync.seconds")),
                fmt_num(mib(r.get("agent_memory.peak_rss_kib"), 1024.0)),
                fmt_num(mib(r.get("agent_memory.rss_growth_kib"), 1024.0)),
                fmt_num(r.get("endpoint_change.p50_us")),
                fmt_num(r.get("endpoint_change.p99_us")),
                fmt_num(r.get("endpoint_change.max_us")),
                fmt_num(mib(r.get("map_memory_total.memlock_bytes"), 1048576.0)),
            );
        }
        if let Some(last) = self.sync.last() {
            let _ = writeln!(
                s,
                "\nPer map at {} services:\n",
                fmt_count(Some(f64::from(last.services)))
            );
            let _ = writeln!(s, "| map | type | max_entries | memlock MiB |");
            let _ = writeln!(s, "|---|---|---:|---:|");
            for (name, ty, max, bytes) in &last.maps {
                let _ = writeln!(
                    s,
                    "| {name} | {ty} | {} | {:.2} |",
                    fmt_count(Some(*max)),
                    bytes / 1048576.0
                );
            }
        }
        if let (Some(a), Some(b)) = (self.sync.first(), self.sync.last())
            && self.sync.len() > 1
        {
            let x = |k: &str| fmt_ratio(ratio(b.get(k), a.get(k)));
            let _ = writeln!(
                s,
                "\nFrom {} to {} services (×{:.0}): full sync ×{}, peak RSS ×{}, change p50 ×{}, \
                 change p99 ×{}, map memlock ×{}.\n",
                fmt_count(Some(f64::from(a.services))),
                fmt_count(Some(f64::from(b.services))),
                f64::from(b.services) / f64::from(a.services),
                x("full_sync.seconds"),
                x("agent_memory.peak_rss_kib"),
                x("endpoint_change.p50_us"),
                x("endpoint_change.p99_us"),
                x("map_memory_total.memlock_bytes"),
            );
        } else {
            s.push('\n');
        }
    }

    fn md_e2e(&self, s: &mut String) {
        let e = self.e2e;
        let set = &e.settings;
        let g = |k: &str| set.get(k).map_or("?", String::as_str);
        let _ = writeln!(s, "## 3. End to end, in network namespaces\n");
        let _ = writeln!(
            s,
            "`bench_e2e`: a node namespace with a bridge, a client pod and {} backend pods \
             (namespaces behind veths on the bridge, 198.18.0.0/24). N ClusterIP services \
             (198.19.x.y:80), each with the {} backend pods as endpoints on a port of its own \
             (10000+i), so endpoints are distinct per service as in a cluster; every backend pod \
             runs an epoll accept loop (2 threads) that answers 3 bytes and closes. The same \
             services are served by:\n\n\
             - **svcnat**: its TC programs on the pod veths, maps written through the `dataplane` \
             module;\n\
             - **iptables**: kube-proxy iptables-mode rules in the node namespace \
             (`KUBE-SERVICES` → `KUBE-SVC-*` with `statistic` → `KUBE-SEP-*` with `DNAT`, \
             `KUBE-MARK-MASQ` hairpin and masquerade chains, the forward rules), \
             `iptables-restore` (the nf_tables backend, as Debian ships it);\n\
             - **nftables**: kube-proxy nftables-mode rules (table `kube-proxy`, `service-ips` \
             verdict map on `ip daddr . meta l4proto . th dport`, service chains with `numgen \
             random mod 5 vmap`, endpoint chains with `dnat to`), `nft -f`;\n\
             - **direct**: no proxy; the client connects to a random backend pod and port.\n\n\
             All four columns exist at once (one topology each) and the rounds interleave them, \
             so background load hits them alike. kube-proxy's DNAT with pods on one bridge needs \
             `bridge-nf-call-iptables=1` in the node namespace (replies are bridged and must \
             pass conntrack to be un-DNATed); it is set there for iptables and nftables, and off \
             for svcnat and direct, which do not need it.\n",
            g("backends"),
            g("backends")
        );
        let _ = writeln!(
            s,
            "Load: {} client threads in the client pod, each opening a connection to a random \
             service, reading the answer to EOF and closing, for {} s after a {} s warm-up; \
             {} round(s), the figures are the median over rounds. Bulk: `iperf3 -t {}` (one \
             stream) from the client pod through a ClusterIP whose only endpoint is an iperf3 \
             server in the first backend pod. Ratios are svcnat / other: above 1 is better for \
             svcnat in rates and throughput, below 1 is better for svcnat in latencies.\n",
            g("threads"),
            g("duration_s"),
            g("warmup_s"),
            g("rounds"),
            g("iperf_s")
        );
        let sizes = e.sizes();
        let cols = e.columns();
        for (key, title, unit, _) in E2E_FIGURES {
            let _ = writeln!(s, "### {title} ({unit})\n");
            let mut head = String::from("| services |");
            let mut rule = String::from("|---:|");
            for c in &cols {
                let _ = write!(head, " {c} |");
                rule.push_str("---:|");
            }
            for c in ["iptables", "nftables", "direct"] {
                if cols.contains(&c) && cols.contains(&"svcnat") {
                    let _ = write!(head, " svcnat / {c} |");
                    rule.push_str("---:|");
                }
            }
            let _ = writeln!(s, "{head}\n{rule}");
            for &n in &sizes {
                let mut row = format!("| {} |", fmt_count(Some(f64::from(n))));
                for c in &cols {
                    let _ = write!(row, " {} |", fmt_num(e.median(c, n, key)));
                }
                for c in ["iptables", "nftables", "direct"] {
                    if cols.contains(&c) && cols.contains(&"svcnat") {
                        let _ = write!(
                            row,
                            " {} |",
                            fmt_ratio(ratio(e.median("svcnat", n, key), e.median(c, n, key)))
                        );
                    }
                }
                let _ = writeln!(s, "{row}");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "### Failed requests and slow connects (sum over rounds)\n"
        );
        let _ = writeln!(
            s,
            "| services | column | requests | failed | connects over 5 ms | iperf3 retransmits |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|");
        for &n in &sizes {
            for c in &cols {
                let _ = writeln!(
                    s,
                    "| {} | {c} | {} | {} | {} | {} |",
                    fmt_count(Some(f64::from(n))),
                    fmt_count(e.sum(c, n, "conns")),
                    fmt_count(e.sum(c, n, "errors")),
                    fmt_count(e.sum(c, n, "connect_over_5ms")),
                    fmt_count(e.sum(c, n, "iperf_retransmits")),
                );
            }
        }
        s.push('\n');
        self.md_load(s, &sizes);
        self.md_scaling(s, &sizes, &cols);
        self.md_shared(s);
    }

    fn md_load(&self, s: &mut String, sizes: &[u32]) {
        let e = self.e2e;
        let _ = writeln!(s, "### Programming the services\n");
        let _ = writeln!(
            s,
            "Loading all services (N plus the bulk one) into an empty node: svcnat's map \
             writes (`upsert_service` per service, in `bench_e2e`), the agent's full sync from \
             Kubernetes objects (`sync_scale`, where it ran at that size), `iptables-restore` \
             and `nft -f` (wall clock, process start included). Then one endpoint of one \
             service replaced, {} times, median: svcnat `upsert_service`; the agent's \
             single-endpoint change (`sync_scale` p50); `iptables-restore --noflush` of what \
             kube-proxy's partial sync writes (the filter chains, `KUBE-SERVICES` in full, the \
             changed `KUBE-SVC-*`, the new `KUBE-SEP-*`, `-X` of the old); one `nft -f` \
             transaction (new endpoint chain, service chain flushed and rewritten, old endpoint \
             chain deleted). kube-proxy's own compute time is not included in its columns.\n",
            e.settings.get("changes").map_or("?", String::as_str)
        );
        let _ = writeln!(
            s,
            "| services | svcnat map writes s | svcnat full sync s | iptables-restore s | nft -f s | iptables rules | nft rules | change: svcnat map writes ms | change: svcnat agent ms | change: iptables-restore ms | change: nft ms |"
        );
        let _ = writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for &n in sizes {
            let sync = self.sync_for(n);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_count(Some(f64::from(n))),
                fmt_num(e.load("svcnat", n, "load_s")),
                fmt_num(sync.and_then(|x| x.get("full_sync.seconds"))),
                fmt_num(e.load("iptables", n, "load_s")),
                fmt_num(e.load("nftables", n, "load_s")),
                fmt_count(e.load("iptables", n, "rules")),
                fmt_count(e.load("nftables", n, "rules")),
                fmt_num(e.load("svcnat", n, "change_ms_p50")),
                fmt_num(sync.and_then(|x| x.get("endpoint_change.p50_us").map(|v| v / 1e3))),
                fmt_num(e.load("iptables", n, "change_ms_p50")),
                fmt_num(e.load("nftables", n, "change_ms_p50")),
            );
        }
        let others: Vec<&SyncScale> = self
            .sync
            .iter()
            .filter(|x| !sizes.contains(&x.services))
            .collect();
        if !others.is_empty() {
            let _ = writeln!(
                s,
                "\n(`sync_scale` also ran at {}: see section 2.)",
                others
                    .iter()
                    .map(|x| fmt_count(Some(f64::from(x.services))))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        s.push('\n');
    }

    fn md_scaling(&self, s: &mut String, sizes: &[u32], cols: &[&str]) {
        let e = self.e2e;
        let (Some(&a), Some(&b)) = (sizes.first(), sizes.last()) else {
            return;
        };
        if a == b {
            return;
        }
        let _ = writeln!(
            s,
            "### Scaling: from {} to {} services\n",
            fmt_count(Some(f64::from(a))),
            fmt_count(Some(f64::from(b)))
        );
        let _ = writeln!(
            s,
            "Each cell: value at {} → value at {} (× change).\n",
            fmt_count(Some(f64::from(a))),
            fmt_count(Some(f64::from(b)))
        );
        let mut head = String::from("| figure |");
        let mut rule = String::from("|---|");
        for c in cols {
            let _ = write!(head, " {c} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        let cell = |x: Option<f64>, y: Option<f64>| {
            format!(
                "{} → {} (×{})",
                fmt_num(x),
                fmt_num(y),
                fmt_ratio(ratio(y, x))
            )
        };
        for (key, title, unit, _) in E2E_FIGURES {
            let mut row = format!("| {} ({unit}) |", short_title(title));
            for c in cols {
                let _ = write!(row, " {} |", cell(e.median(c, a, key), e.median(c, b, key)));
            }
            let _ = writeln!(s, "{row}");
        }
        let mut row = String::from("| programming all services (s) |");
        for c in cols {
            let _ = write!(
                row,
                " {} |",
                if *c == "direct" {
                    "–".to_string()
                } else {
                    cell(e.load(c, a, "load_s"), e.load(c, b, "load_s"))
                }
            );
        }
        let _ = writeln!(s, "{row}");
        let mut row = String::from("| one endpoint change (ms) |");
        for c in cols {
            let _ = write!(
                row,
                " {} |",
                if *c == "direct" {
                    "–".to_string()
                } else {
                    cell(e.load(c, a, "change_ms_p50"), e.load(c, b, "change_ms_p50"))
                }
            );
        }
        let _ = writeln!(s, "{row}\n");
    }

    fn md_shared(&self, s: &mut String) {
        let e = self.shared;
        let sizes = e.sizes();
        if sizes.is_empty() {
            return;
        }
        let _ = writeln!(s, "### Services that share endpoints\n");
        let _ = writeln!(
            s,
            "The same load, but every service has the same 5 endpoints (`backend:8080`), as when \
             several Services select the same pods. The client's kernel keeps (client port, VIP) \
             unique, not (client port, backend), so one client port soon reaches the same \
             backend through two VIPs while the backend still holds the earlier connection in \
             TIME_WAIT. netfilter's NAT sees the clash and remaps the source port, and so does \
             svcnat (a port of 1024-65535, avoiding tuples a closed flow may still hold in the \
             backend's TIME_WAIT). A datapath that only rewrote the destination would hand the \
             backend a SYN for a connection it still remembers, which it answers with an ACK: \
             the client retries after about 10 ms (or 1 s), counted below as connects over \
             5 ms.\n"
        );
        let cols = e.columns();
        let _ = writeln!(
            s,
            "| services | column | conn/s | connect p50 µs | connect p99 µs | connects over 5 ms | failed |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|");
        for &n in &sizes {
            for c in &cols {
                let _ = writeln!(
                    s,
                    "| {} | {c} | {} | {} | {} | {} | {} |",
                    fmt_count(Some(f64::from(n))),
                    fmt_num(e.median(c, n, "conn_per_s")),
                    fmt_num(e.median(c, n, "connect_p50_us")),
                    fmt_num(e.median(c, n, "connect_p99_us")),
                    fmt_count(e.sum(c, n, "connect_over_5ms")),
                    fmt_count(e.sum(c, n, "errors")),
                );
            }
        }
        s.push('\n');
    }

    /// Where svcnat is behind iptables or nftables by more than 5%, found
    /// from the figures (no interpretation).
    fn md_observations(&self, s: &mut String) {
        let e = self.e2e;
        let mut lines = Vec::new();
        for n in e.sizes() {
            for (key, title, unit, higher_better) in E2E_FIGURES {
                let ours = e.median("svcnat", n, key);
                for other in ["iptables", "nftables"] {
                    let Some(r) = ratio(ours, e.median(other, n, key)) else {
                        continue;
                    };
                    let behind = if higher_better { r < 0.95 } else { r > 1.05 };
                    if behind {
                        lines.push(format!(
                            "- {} services, {}: svcnat {} {unit} vs {other} {} {unit} (×{r:.2})",
                            fmt_count(Some(f64::from(n))),
                            short_title(title),
                            fmt_num(ours),
                            fmt_num(e.median(other, n, key)),
                        ));
                    }
                }
            }
            for (key, label) in [
                ("load_s", "programming all services"),
                ("change_ms_p50", "one endpoint change"),
            ] {
                let ours = e.load("svcnat", n, key);
                for other in ["iptables", "nftables"] {
                    if let Some(r) = ratio(ours, e.load(other, n, key))
                        && r > 1.05
                    {
                        lines.push(format!(
                            "- {} services, {label}: svcnat ×{r:.2} of {other}",
                            fmt_count(Some(f64::from(n)))
                        ));
                    }
                }
            }
        }
        let sh = self.shared;
        for n in sh.sizes() {
            let conn = sh.median("svcnat", n, "conn_per_s");
            for other in ["iptables", "nftables"] {
                if let Some(r) = ratio(conn, sh.median(other, n, "conn_per_s"))
                    && r < 0.95
                {
                    lines.push(format!(
                        "- {} services sharing endpoints, conn/s: svcnat {} vs {other} {} (×{r:.2})",
                        fmt_count(Some(f64::from(n))),
                        fmt_num(conn),
                        fmt_num(sh.median(other, n, "conn_per_s")),
                    ));
                }
            }
            let ours = sh.sum("svcnat", n, "connect_over_5ms").unwrap_or(0.0);
            for other in ["iptables", "nftables"] {
                let theirs = sh.sum(other, n, "connect_over_5ms").unwrap_or(0.0);
                if ours > theirs * 2.0 + 5.0 {
                    lines.push(format!(
                        "- {} services sharing endpoints: {} connects over 5 ms with svcnat, \
                         {} with {other}",
                        fmt_count(Some(f64::from(n))),
                        fmt_count(Some(ours)),
                        fmt_count(Some(theirs))
                    ));
                }
            }
        }
        let _ = writeln!(s, "## Where svcnat is behind\n");
        if lines.is_empty() {
            let _ = writeln!(
                s,
                "Nowhere by more than 5% against iptables or nftables in this run.\n"
            );
        } else {
            let _ = writeln!(
                s,
                "Figures where svcnat is more than 5% behind iptables or nftables in this run \
                 (computed from the tables above):\n"
            );
            for l in lines {
                let _ = writeln!(s, "{l}");
            }
            s.push('\n');
        }
    }

    fn json(&self) -> J {
        let f = self.facts;
        let plan = self.plan;
        let e2e_json = |e: &E2e| -> J {
            let sizes = e.sizes();
            let cols = e.columns();
            let mut summary = Vec::new();
            for &n in &sizes {
                for c in &cols {
                    let mut fields = vec![
                        ("services".to_string(), J::Num(f64::from(n))),
                        ("column".to_string(), J::Str((*c).to_string())),
                    ];
                    for (key, _, _, _) in E2E_FIGURES {
                        fields.push((key.to_string(), J::opt(e.median(c, n, key))));
                    }
                    for key in ["conns", "errors", "connect_over_5ms"] {
                        fields.push((format!("{key}_sum"), J::opt(e.sum(c, n, key))));
                    }
                    for key in ["load_s", "rules", "change_ms_p50", "change_ms_max"] {
                        fields.push((key.to_string(), J::opt(e.load(c, n, key))));
                    }
                    summary.push(J::Obj(fields));
                }
            }
            J::obj([
                ("settings", J::kv(&e.settings)),
                ("summary_median_over_rounds", J::Arr(summary)),
                ("runs", J::Arr(e.runs.iter().map(J::kv).collect())),
                ("loads", J::Arr(e.loads.iter().map(J::kv).collect())),
            ])
        };
        J::obj([
            ("generated_by", J::Str("cargo xtask bench".into())),
            ("quick", J::Bool(plan.quick)),
            ("date", J::Str(f.date.clone())),
            ("commit", J::Str(f.commit.clone())),
            ("elapsed_s", J::Num(self.elapsed)),
            (
                "machine",
                J::obj([
                    ("cpu", J::Str(f.cpu.clone())),
                    ("nproc", J::Num(f.nproc as f64)),
                    ("memory_gib", J::Num((f.mem_gib * 10.0).round() / 10.0)),
                    ("kernel", J::Str(f.kernel.clone())),
                    ("loadavg_start", J::Str(f.load_start.clone())),
                    ("loadavg_end", J::Str(f.load_end.clone())),
                ]),
            ),
            (
                "tools",
                J::Obj(
                    f.tools
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), J::Str(v.clone())))
                        .collect(),
                ),
            ),
            (
                "commands",
                J::Arr(self.log.commands.iter().cloned().map(J::Str).collect()),
            ),
            (
                "packet_cost",
                J::obj([
                    ("repeat", J::Num(f64::from(plan.packet_repeat))),
                    (
                        "rows",
                        J::Arr(
                            self.packet
                                .rows
                                .iter()
                                .map(|r| {
                                    J::obj([
                                        ("services", J::Num(r[0])),
                                        ("new_flow_ns", J::Num(r[1])),
                                        ("established_ns", J::Num(r[2])),
                                        ("reply_ns", J::Num(r[3])),
                                        ("not_a_service_single_run_ns", J::Num(r[4])),
                                        ("not_a_service_ns", J::Num(r[5])),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                    (
                        "xdp_node_port",
                        J::Arr(
                            self.packet
                                .xdp
                                .rows
                                .iter()
                                .map(|(path, measured, ns)| {
                                    J::obj([
                                        ("path", J::Str(path.clone())),
                                        ("measured", J::Str(measured.clone())),
                                        (
                                            "ns",
                                            J::Arr(
                                                self.packet
                                                    .xdp
                                                    .sizes
                                                    .iter()
                                                    .zip(ns)
                                                    .map(|(n, v)| {
                                                        J::obj([
                                                            ("services", J::Num(f64::from(*n))),
                                                            ("ns", J::opt(*v)),
                                                        ])
                                                    })
                                                    .collect(),
                                            ),
                                        ),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ]),
            ),
            (
                "sync_scale",
                J::Arr(
                    self.sync
                        .iter()
                        .map(|x| {
                            let mut fields =
                                vec![("services".to_string(), J::Num(f64::from(x.services)))];
                            fields.extend(
                                x.values
                                    .iter()
                                    .map(|(k, v)| (k.replace('.', "_"), J::Num(*v))),
                            );
                            fields.push((
                                "maps".to_string(),
                                J::Arr(
                                    x.maps
                                        .iter()
                                        .map(|(name, ty, max, bytes)| {
                                            J::obj([
                                                ("name", J::Str(name.clone())),
                                                ("type", J::Str(ty.clone())),
                                                ("max_entries", J::Num(*max)),
                                                ("memlock_bytes", J::Num(*bytes)),
                                            ])
                                        })
                                        .collect(),
                                ),
                            ));
                            J::Obj(fields)
                        })
                        .collect(),
                ),
            ),
            ("e2e", e2e_json(self.e2e)),
            ("e2e_shared_endpoints", e2e_json(self.shared)),
        ])
    }
}

fn short_title(title: &str) -> &str {
    match title.find(" (") {
        Some(i) => &title[..i],
        None => title.split(',').next().unwrap_or(title),
    }
}

/// A small JSON value (xtask has no serde).
enum J {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn obj<const N: usize>(fields: [(&str, J); N]) -> Self {
        Self::Obj(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    fn opt(v: Option<f64>) -> Self {
        v.map_or(Self::Null, Self::Num)
    }

    /// `key=value` pairs: numbers as numbers, `-` as null, the rest as strings.
    fn kv(map: &BTreeMap<String, String>) -> Self {
        Self::Obj(
            map.iter()
                .map(|(k, v)| {
                    let j = if v == "-" {
                        Self::Null
                    } else if let Ok(n) = v.parse::<f64>() {
                        Self::Num(n)
                    } else {
                        Self::Str(v.clone())
                    };
                    (k.clone(), j)
                })
                .collect(),
        )
    }

    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| {
            out.push('\n');
            out.push_str(&"  ".repeat(d));
        };
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Num(n) if !n.is_finite() => out.push_str("null"),
            Self::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
                let _ = write!(out, "{}", *n as i64);
            }
            Self::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Self::Str(s) => write_json_string(out, s),
            Self::Arr(items) if items.is_empty() => out.push_str("[]"),
            Self::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    item.write(out, depth + 1);
                }
                pad(out, depth);
                out.push(']');
            }
            Self::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            Self::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    write_json_string(out, k);
                    out.push_str(": ");
                    v.write(out, depth + 1);
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_renders_escapes_numbers_and_nesting() {
        let j = J::obj([
            ("a", J::Num(3.0)),
            ("b", J::Num(0.25)),
            ("c", J::Str("x\"y\\z\n".into())),
            ("d", J::Arr(vec![J::Null, J::Bool(true), J::Num(f64::NAN)])),
            ("e", J::Obj(Vec::new())),
        ]);
        assert_eq!(
            j.render(),
            "{\n  \"a\": 3,\n  \"b\": 0.25,\n  \"c\": \"x\\\"y\\\\z\\n\",\n  \"d\": [\n    null,\n    true,\n    null\n  ],\n  \"e\": {}\n}\n"
        );
    }

    #[test]
    fn e2e_lines_aggregate_by_median_and_sum() {
        let text = "e2e_settings duration_s=3 rounds=3\n\
            e2e column=svcnat services=10 round=0 conn_per_s=100 errors=1\n\
            e2e column=svcnat services=10 round=1 conn_per_s=300 errors=0\n\
            e2e column=svcnat services=10 round=2 conn_per_s=200 errors=2\n\
            e2e column=iptables services=10 round=0 conn_per_s=50 errors=0\n\
            e2e_load column=iptables services=10 load_s=0.5 rules=- change_ms_p50=2\n\
            noise\n";
        let e = E2e::parse(text);
        assert_eq!(e.settings["rounds"], "3");
        assert_eq!(e.sizes(), [10]);
        assert_eq!(e.columns(), ["svcnat", "iptables"]);
        assert_eq!(e.median("svcnat", 10, "conn_per_s"), Some(200.0));
        assert_eq!(e.sum("svcnat", 10, "errors"), Some(3.0));
        assert_eq!(e.load("iptables", 10, "load_s"), Some(0.5));
        assert_eq!(e.load("iptables", 10, "rules"), None);
        assert_eq!(e.median("nftables", 10, "conn_per_s"), None);
    }

    #[test]
    fn packet_cost_table_rows_parse() {
        let p = PacketCost::parse(
            "| services | new flow ns (single) | established ns (single) | reply ns (single) | not a service ns (single) | not a service ns (repeat) |\n\
             |---:|---:|---:|---:|---:|---:|\n| 1 | 792 | 340 | 301 | 130 | 84 |\n",
        );
        assert_eq!(p.rows, [[1.0, 792.0, 340.0, 301.0, 130.0, 84.0]]);
        assert_eq!(p.table.lines().count(), 3);
        assert!(p.xdp.rows.is_empty());
    }

    /// Output of `packet_cost 100000 1 1000`, as captured.
    const PACKET_COST_SAMPLE: &str = "\
| services | new flow ns (single) | established ns (single) | reply ns (single) | not a service ns (single) | not a service ns (repeat) |
|---:|---:|---:|---:|---:|---:|
| 1 | 792 | 351 | 301 | 130 | 82 |
| 1000 | 792 | 350 | 311 | 130 | 83 |

XDP node-port paths (svcnat_node_xdp), ns/packet, by number of services; \"repeat\": 100000 runs on one buffer, median of 5; \"single\": median of 20000 single runs on fresh copies.

| XDP path \\ services | measured | 1 | 1000 |
|---|---|---:|---:|
| not a service (pass) | repeat | 52 | 53 |
| source range deny (drop) | repeat | 70 | 70 |
| externalTrafficPolicy Local, no local backend (drop) | repeat | 62 | 61 |
| not a service (pass) | single | 100 | 90 |
| node port, local backend, established (DNAT) | single | 180 | 180 |
| node port, remote backend, established (DNAT+SNAT) | single | 220 | 220 |
| reply of a remote backend (reverse SNAT+DNAT) | single | 170 | 160 |
| node port, remote backend, new flow (SNAT port allocation) | single | 1222 | 1152 |
| node port, local backend, new flow (DNAT) | single | 851 | 751 |
";

    #[test]
    fn packet_cost_tc_and_xdp_tables_parse_apart() {
        let p = PacketCost::parse(PACKET_COST_SAMPLE);
        assert_eq!(
            p.rows,
            [
                [1.0, 792.0, 351.0, 301.0, 130.0, 82.0],
                [1000.0, 792.0, 350.0, 311.0, 130.0, 83.0]
            ]
        );
        assert_eq!(p.table.lines().count(), 4);
        assert!(!p.table.contains("XDP"));
        assert_eq!(p.xdp.sizes, [1, 1000]);
        assert_eq!(p.xdp.table.lines().count(), 11);
        assert!(p.xdp.table.starts_with("| XDP path"));
        assert_eq!(p.xdp.rows.len(), 9);
        assert_eq!(
            p.xdp.rows[0],
            (
                "not a service (pass)".to_string(),
                "repeat".to_string(),
                vec![Some(52.0), Some(53.0)]
            )
        );
        let (path, measured, ns) = &p.xdp.rows[7];
        assert_eq!(
            path,
            "node port, remote backend, new flow (SNAT port allocation)"
        );
        assert_eq!(measured, "single");
        assert_eq!(ns, &[Some(1222.0), Some(1152.0)]);
    }

    #[test]
    fn xdp_table_lands_in_the_report_and_the_json() {
        let plan = Plan::new(true);
        let facts = Facts {
            date: String::new(),
            commit: String::new(),
            nproc: 2,
            mem_gib: 1.0,
            cpu: String::new(),
            kernel: String::new(),
            tools: Vec::new(),
            load_start: String::new(),
            load_end: String::new(),
        };
        let log = Log::new(Path::new("/r"));
        let packet = PacketCost::parse(PACKET_COST_SAMPLE);
        let e2e = E2e::parse("");
        let report = Report {
            plan: &plan,
            facts: &facts,
            log: &log,
            packet: &packet,
            sync: &[],
            e2e: &e2e,
            shared: &e2e,
            elapsed: 1.0,
        };
        let md = report.markdown();
        let tc = md.find("| services | new flow").expect("TC table");
        let xdp = md.find("### XDP node-port paths").expect("XDP section");
        assert!(tc < xdp && xdp < md.find("## 2.").expect("section 2"));
        assert!(
            md.contains("| reply of a remote backend (reverse SNAT+DNAT) | single | 170 | 160 |")
        );
        // Whitespace left out (indentation is the renderer's business).
        let json: String = report.json().render().split_whitespace().collect();
        let want: String = "\"xdp_node_port\": [ { \"path\": \"not a service (pass)\", \
             \"measured\": \"repeat\", \"ns\": [ { \"services\": 1, \"ns\": 52 }, \
             { \"services\": 1000, \"ns\": 53 } ] }"
            .split_whitespace()
            .collect();
        assert!(json.contains(&want), "{json}");
    }

    /// The run of the committed report (bench/ at 22c2534), its example
    /// outputs rebuilt from its report.json into `testdata/*.out`; the
    /// report and JSON rendered from them are kept in `testdata/` too.
    #[test]
    fn report_renders_unchanged_from_saved_outputs() {
        let plan = Plan::new(false);
        let facts = Facts {
            date: "2026-12-01 20:52:29 UTC".into(),
            commit: "540b80c".into(),
            nproc: 2,
            mem_gib: 23.5,
            cpu: "Intel(R) Xeon(R) Processor".into(),
            kernel: "6.18.44-fc-v1045".into(),
            tools: vec![
                ("iptables", "iptables v1.8.9 (nf_tables)".into()),
                ("nft", "nftables v1.0.6 (Lester Gooch #5)".into()),
                ("iperf3", "iperf 3.12 (cJSON 1.7.15)".into()),
                ("bpftool", "bpftool v7.1.0".into()),
            ],
            load_start: "0.99 1.38 1.81 1/76 14538".into(),
            load_end: "2.93 2.83 2.42 3/106 17139".into(),
        };
        let mut log = Log::new(Path::new("/w/m"));
        log.record(
            "(cd /w/m && cargo build --release --manifest-path /w/m/Cargo.toml -p proxy-user \
             --example packet_cost --example sync_scale --example bench_e2e)",
        );
        let exe = "/w/m/target/release/examples/";
        log.record(&format!("{exe}packet_cost 1000000 1 1000 10000 100000"));
        for n in [1_000, 10_000, 100_000] {
            log.record(&format!("{exe}sync_scale {n} 200"));
        }
        log.record(&format!("{exe}bench_e2e {}", plan.e2e_args.join(" ")));
        log.record(&format!("{exe}bench_e2e {}", plan.shared_args.join(" ")));
        let packet = PacketCost::parse(include_str!("bench/testdata/packet_cost.out"));
        let sync = [
            SyncScale::parse(1_000, include_str!("bench/testdata/sync_scale_1000.out")),
            SyncScale::parse(10_000, include_str!("bench/testdata/sync_scale_10000.out")),
            SyncScale::parse(
                100_000,
                include_str!("bench/testdata/sync_scale_100000.out"),
            ),
        ];
        let e2e = E2e::parse(include_str!("bench/testdata/bench_e2e.out"));
        let shared = E2e::parse(include_str!("bench/testdata/bench_e2e_shared.out"));
        let report = Report {
            plan: &plan,
            facts: &facts,
            log: &log,
            packet: &packet,
            sync: &sync,
            e2e: &e2e,
            shared: &shared,
            elapsed: 670.529151195,
        };
        same_lines(&report.markdown(), include_str!("bench/testdata/REPORT.md"));
        same_lines(
            &report.json().render(),
            include_str!("bench/testdata/report.json"),
        );
    }

    /// `got == want`, else a panic naming the first line that differs.
    fn same_lines(got: &str, want: &str) {
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "line {} differs", i + 1);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn sync_scale_output_parses() {
        let s = SyncScale::parse(
            1000,
            "full_sync services=1000 endpoints_each=5 frontends=1000 skipped=0 seconds=0.023\n\
             endpoint_change count=200 p50_us=19.2 p99_us=28.3 max_us=96.6\n\
             agent_memory rss_kib=12436 peak_rss_kib=21632 rss_growth_kib=3696\n\
             map_memory map=SVCNAT_SVC4 type=hash max_entries=2064 memlock_bytes=1000\n\
             map_memory_total memlock_bytes=5000\n",
        );
        assert_eq!(s.get("full_sync.seconds"), Some(0.023));
        assert_eq!(s.get("endpoint_change.p99_us"), Some(28.3));
        assert_eq!(s.get("map_memory_total.memlock_bytes"), Some(5000.0));
        assert_eq!(s.maps.len(), 1);
    }

    #[test]
    fn commands_are_recorded_relative_to_the_root() {
        let mut log = Log::new(Path::new("/w/m"));
        log.record("(cd /w/m && cargo build --manifest-path /w/m/Cargo.toml)");
        log.record("/w/m/target/release/examples/x 1 2");
        assert_eq!(
            log.commands,
            [
                "cargo build --manifest-path Cargo.toml",
                "target/release/examples/x 1 2"
            ]
        );
    }

    #[test]
    fn numbers_format_for_tables() {
        assert_eq!(fmt_num(Some(12345.4)), "12,345");
        assert_eq!(fmt_num(Some(123.4)), "123");
        assert_eq!(fmt_num(Some(12.34)), "12.3");
        assert_eq!(fmt_num(Some(1.234)), "1.23");
        assert_eq!(fmt_num(Some(0.01234)), "0.0123");
        assert_eq!(fmt_num(None), "–");
        assert_eq!(fmt_count(Some(35.0)), "35");
        assert_eq!(fmt_count(Some(170_018.0)), "170,018");
    }

    #[test]
    fn quick_output_never_lands_on_the_committed_report() {
        let root = Path::new("/r");
        assert_eq!(out_dir(root, false, None), Path::new("/r/bench"));
        assert_ne!(out_dir(root, true, None), Path::new("/r/bench"));
        assert_eq!(out_dir(root, true, Some(Path::new("x"))), Path::new("/r/x"));
    }
}
