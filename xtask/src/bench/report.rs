//! The Markdown report (`bench/REPORT.md`): the machine, section 2
//! (control plane), where svcnat is behind, the commands run; section 1
//! (per-packet cost) is in [`packet`], section 3 (end to end) in [`e2e`].
//! Also the number formats of its tables.

mod e2e;
mod packet;

use std::fmt::Write as _;

use super::{
    parse::{E2e, PacketCost, SyncScale},
    run::{Facts, Log, Plan},
};

/// The figures of the end-to-end tables: key, title, unit, higher is better.
pub(super) const E2E_FIGURES: [(&str, &str, &str, bool); 6] = [
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

pub(super) struct Report<'a> {
    pub(super) plan: &'a Plan,
    pub(super) facts: &'a Facts,
    pub(super) log: &'a Log,
    pub(super) packet: &'a PacketCost,
    pub(super) sync: &'a [SyncScale],
    pub(super) e2e: &'a E2e,
    /// [`Report::e2e`] on IPv6.
    pub(super) e2e6: &'a E2e,
    pub(super) shared: &'a E2e,
    /// [`Report::e2e`] from the node's own namespace.
    pub(super) host: &'a E2e,
    pub(super) elapsed: f64,
}

impl Report<'_> {
    fn sync_for(&self, n: u32) -> Option<&SyncScale> {
        self.sync.iter().find(|s| s.services == n)
    }

    pub(super) fn markdown(&self) -> String {
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

    /// Where svcnat is behind iptables or nftables by more than 5%, found
    /// from the figures (no interpretation).
    /// Lines of "where svcnat is behind" from one `bench_e2e` run
    /// (`family`: how the lines name the run's family, after the size).
    fn behind(&self, e: &E2e, family: &str, lines: &mut Vec<String>) {
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
                            "- {} services{family}, {}: svcnat {} {unit} vs {other} {} {unit} (×{r:.2})",
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
                            "- {} services{family}, {label}: svcnat ×{r:.2} of {other}",
                            fmt_count(Some(f64::from(n)))
                        ));
                    }
                }
            }
        }
    }

    fn md_observations(&self, s: &mut String) {
        let mut lines = Vec::new();
        for (e, family) in [
            (self.e2e, ""),
            (self.e2e6, ", IPv6"),
            (self.host, ", from the node"),
        ] {
            self.behind(e, family, &mut lines);
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
}

fn short_title(title: &str) -> &str {
    match title.find(" (") {
        Some(i) => &title[..i],
        None => title.split(',').next().unwrap_or(title),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
