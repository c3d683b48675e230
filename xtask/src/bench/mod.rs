//! `cargo xtask bench`: svcnat side by side with kube-proxy's iptables and
//! nftables modes, written to `bench/REPORT.md` and `bench/report.json`.
//!
//! Three measurement programs (release examples of `proxy-user`) do the
//! work; this module runs them, keeps their output, and writes the report:
//!
//! 1. `packet_cost`: per-packet cost of the TC programs and of the XDP
//!    node-port paths, IPv4 and IPv6 side by side (BPF_PROG_TEST_RUN);
//! 2. `sync_scale`: the agent's full sync time, per-change latency, RSS, and
//!    the kernel's memlock of every map;
//! 3. `bench_e2e`: real TCP through namespaces: svcnat, iptables-mode and
//!    nftables-mode rules, and no proxy, on the same topology; from a pod
//!    on both families, then from the node's own namespace.
//!
//! `--quick` runs small sizes and short durations (CI: checks that the bench
//! runs; nothing is asserted) and writes to `target/bench-quick/` unless
//! `--out` says otherwise, so that it never overwrites the committed report.
//!
//! This file owns the sequence of one run (build, measure, write); the
//! parts are in [`run`](mod@run) (what is run, and how), [`parse`] (the
//! programs' output), [`report`] (the Markdown text) and [`json`] (the JSON).

mod json;
mod parse;
mod report;
mod run;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use self::{
    parse::{E2e, PacketCost, SyncScale},
    report::Report,
    run::{Facts, Log, Plan, read_trim},
};
use crate::{
    cmd::{Cmd, is_root, target_dir},
    ebpf,
};

const EXAMPLES: [&str; 3] = ["packet_cost", "sync_scale", "bench_e2e"];

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
    let e2e6 = E2e::parse(&log.capture(&exe("bench_e2e"), &plan.e2e6_args)?);
    let shared_text = log.capture(&exe("bench_e2e"), &plan.shared_args)?;
    let shared = E2e::parse(&shared_text);
    let host = E2e::parse(&log.capture(&exe("bench_e2e"), &plan.host_args)?);

    let facts = Facts::collect(root, load_start);
    let elapsed = started.elapsed().as_secs_f64();
    let report = Report {
        plan: &plan,
        facts: &facts,
        log: &log,
        packet: &packet,
        sync: &sync,
        e2e: &e2e,
        e2e6: &e2e6,
        shared: &shared,
        host: &host,
        elapsed,
    };
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let md = out.join("REPORT.md");
    let json = out.join("report.json");
    fs::write(&md, report.markdown()).with_context(|| format!("write {}", md.display()))?;
    let json_text = report.json().context("render report.json")?;
    fs::write(&json, json_text).with_context(|| format!("write {}", json.display()))?;
    eprintln!(
        "xtask bench: wrote {} and {} ({elapsed:.0} s)",
        md.display(),
        json.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Markdown and the JSON a quick run on no machine in particular
    /// makes of these outputs (no control-plane runs, no shared-endpoint
    /// run).
    fn render(packet: &PacketCost, e2e: &E2e, e2e6: &E2e) -> (String, String) {
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
        let none = E2e::parse("");
        let report = Report {
            plan: &plan,
            facts: &facts,
            log: &log,
            packet,
            sync: &[],
            e2e,
            e2e6,
            shared: &none,
            host: &none,
            elapsed: 1.0,
        };
        (report.markdown(), report.json().expect("JSON"))
    }

    #[test]
    fn packet_cost_twins_land_in_the_report_and_the_json() {
        let packet = PacketCost::parse(include_str!("testdata/packet_cost_quick.out"));
        let e2e = E2e::parse("");
        let (md, json) = render(&packet, &e2e, &e2e);
        let tc = md.find("| services | family | new flow").expect("TC table");
        let xdp = md.find("### XDP node-port paths").expect("XDP section");
        let twins = md.find("### IPv6 against IPv4").expect("twins");
        assert!(tc < xdp && xdp < twins && twins < md.find("## 2.").expect("section 2"));
        assert!(
            md.contains("| 1 | IPv6/IPv4 | **1.30** | 0.92 | **1.26** | **1.59** | **1.25** |")
        );
        assert!(md.contains(
            "| reply of a remote backend (reverse SNAT+DNAT) | IPv6 | single | 341 | 331 |"
        ));
        assert!(md.contains(
            "| reply of a remote backend (reverse SNAT+DNAT) | IPv6/IPv4 | single | **1.31** | **1.65** |"
        ));
        assert!(md.contains(
            "- TC new flow (single): 1: 1022 → 1332 (×1.30); 1,000: 1202 → 1332 (×1.11)"
        ));
        // Whitespace left out (indentation is the renderer's business).
        let json: String = json.split_whitespace().collect();
        for want in [
            "\"xdp_node_port\": [ { \"path\": \"not a service (pass)\", \"family\": \"IPv4\", \
             \"measured\": \"repeat\", \"ns\": [ { \"services\": 1, \"ns\": 71 }, \
             { \"services\": 1000, \"ns\": 89 } ] }",
            "\"ipv6_vs_ipv4\": [ { \"program\": \"TC\", \"path\": \"new flow\", \
             \"measured\": \"single\", \"services\": 1, \"ipv4_ns\": 1022, \"ipv6_ns\": 1332, \
             \"ipv6_over_ipv4\": 1.303 }",
        ] {
            let want: String = want.split_whitespace().collect();
            assert!(json.contains(&want), "{json}");
        }
    }

    /// The IPv6 run of `bench_e2e` gets the figure tables of its own, a
    /// table of svcnat on IPv6 against svcnat on IPv4, its failures, and
    /// its lines in "where svcnat is behind", named as IPv6.
    #[test]
    fn the_ipv6_run_has_its_tables_and_its_lines_where_svcnat_is_behind() {
        let packet = PacketCost::parse("");
        let e2e = E2e::parse(
            "e2e family=ipv4 column=svcnat services=1 round=0 conns=10 conn_per_s=1000 errors=0\n\
             e2e family=ipv4 column=nftables services=1 round=0 conns=10 conn_per_s=1000 errors=0\n\
             e2e family=ipv4 column=direct services=1 round=0 conns=10 conn_per_s=2000 errors=0\n",
        );
        let e2e6 = E2e::parse(
            "e2e family=ipv6 column=svcnat services=1 round=0 conns=8 conn_per_s=800 errors=3\n\
             e2e family=ipv6 column=nftables services=1 round=0 conns=10 conn_per_s=1000 errors=0\n\
             e2e family=ipv6 column=direct services=1 round=0 conns=10 conn_per_s=1000 errors=0\n",
        );
        let (md, json) = render(&packet, &e2e, &e2e6);
        let v6 = md.find("### IPv6\n").expect("the IPv6 part");
        let rest = &md[v6..];
        assert!(
            rest.contains("#### New TCP connections per second (one request each) (conn/s)"),
            "{rest}"
        );
        assert!(
            rest.contains("| 1 | 800 | 1,000 | 1,000 | 0.80 | 0.80 |"),
            "{rest}"
        );
        assert!(
            rest.contains("#### svcnat against the direct path, per family"),
            "{rest}"
        );
        // conn/s of svcnat over direct: 0.50 on IPv4, 0.80 on IPv6.
        assert!(rest.contains("| 1 | 0.50 | 0.80 |"), "{rest}");
        assert!(rest.contains("| 1 | svcnat | 8 | 3 |"), "{rest}");
        let behind = md.find("## Where svcnat is behind").expect("observations");
        assert!(
            md[behind..].contains(
                "- 1 services, IPv6, New TCP connections per second: svcnat 800 conn/s vs \
                 nftables 1,000 conn/s (×0.80)"
            ),
            "{}",
            &md[behind..]
        );
        assert_eq!(
            md[behind..].matches("New TCP connections").count(),
            1,
            "IPv4 is level with nftables: {}",
            &md[behind..]
        );
        let json: String = json.split_whitespace().collect();
        assert!(json.contains("\"e2e_ipv6\":{"), "{json}");
    }

    /// The run from the node's own namespace gets its tables, its lines in
    /// "where svcnat is behind", named as from the node, and its JSON.
    #[test]
    fn the_run_from_the_node_has_its_tables_and_its_lines_where_svcnat_is_behind() {
        let plan = Plan::new(true);
        assert!(
            plan.host_args
                .ends_with(&["--from".to_string(), "node".to_string()]),
            "{:?}",
            plan.host_args
        );
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
        let none = E2e::parse("");
        let host = E2e::parse(
            "e2e family=ipv4 column=svcnat services=1 round=0 conns=9 conn_per_s=900 errors=0 from=node\n\
             e2e family=ipv4 column=iptables services=1 round=0 conns=10 conn_per_s=1000 errors=0 from=node\n\
             e2e family=ipv4 column=direct services=1 round=0 conns=10 conn_per_s=1000 errors=0 from=node\n",
        );
        let report = Report {
            plan: &plan,
            facts: &facts,
            log: &log,
            packet: &PacketCost::parse(""),
            sync: &[],
            e2e: &none,
            e2e6: &none,
            shared: &none,
            host: &host,
            elapsed: 1.0,
        };
        let md = report.markdown();
        let part = md
            .find("### From the node's own processes\n")
            .expect("the node's part");
        assert!(
            md[part..].contains("| 1 | 900 | 1,000 |"),
            "{}",
            &md[part..]
        );
        let behind = md.find("## Where svcnat is behind").expect("observations");
        assert!(
            md[behind..].contains(
                "- 1 services, from the node, New TCP connections per second: svcnat 900 conn/s \
                 vs iptables 1,000 conn/s (×0.90)"
            ),
            "{}",
            &md[behind..]
        );
        let json: String = report.json().expect("JSON").split_whitespace().collect();
        assert!(json.contains("\"e2e_from_node\":{"), "{json}");
    }

    /// The run of the committed report (bench/ at 22c2534), its example
    /// outputs rebuilt from its report.json into `testdata/*.out`, but for
    /// `packet_cost.out`: the per-cell median of the `packet_cost` runs
    /// with IPv6 that section 1 of the committed report now shows. The
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
        log.record(&format!("{exe}bench_e2e {}", plan.e2e6_args.join(" ")));
        log.record(&format!("{exe}bench_e2e {}", plan.shared_args.join(" ")));
        let packet = PacketCost::parse(include_str!("testdata/packet_cost.out"));
        let sync = [
            SyncScale::parse(1_000, include_str!("testdata/sync_scale_1000.out")),
            SyncScale::parse(10_000, include_str!("testdata/sync_scale_10000.out")),
            SyncScale::parse(100_000, include_str!("testdata/sync_scale_100000.out")),
        ];
        let e2e = E2e::parse(include_str!("testdata/bench_e2e.out"));
        let e2e6 = E2e::parse(include_str!("testdata/bench_e2e6.out"));
        let shared = E2e::parse(include_str!("testdata/bench_e2e_shared.out"));
        let report = Report {
            plan: &plan,
            facts: &facts,
            log: &log,
            packet: &packet,
            sync: &sync,
            e2e: &e2e,
            e2e6: &e2e6,
            shared: &shared,
            host: &E2e::parse(""),
            elapsed: 670.529151195,
        };
        same_lines(
            &report.markdown(),
            include_str!("testdata/REPORT.md"),
            "REPORT.md",
        );
        same_lines(
            &report.json().expect("JSON"),
            include_str!("testdata/report.json"),
            "report.json",
        );
    }

    /// `got == want`, else a panic naming the first line that differs.
    /// `got` is `want` line for line. With `SVCNAT_BLESS` set, writes `got`
    /// to `testdata/FILE` instead (after a change of the renderer: review
    /// the diff).
    fn same_lines(got: &str, want: &str, file: &str) {
        if std::env::var_os("SVCNAT_BLESS").is_some() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/bench/testdata")
                .join(file);
            fs::write(&path, got).expect("bless");
            return;
        }
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "line {} differs", i + 1);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn quick_output_never_lands_on_the_committed_report() {
        let root = Path::new("/r");
        assert_eq!(out_dir(root, false, None), Path::new("/r/bench"));
        assert_ne!(out_dir(root, true, None), Path::new("/r/bench"));
        assert_eq!(out_dir(root, true, Some(Path::new("x"))), Path::new("/r/x"));
    }
}
