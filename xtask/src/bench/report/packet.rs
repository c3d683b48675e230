//! Section 1 of the report: per-packet cost (the `packet_cost` tables, TC
//! and XDP, with IPv4 and IPv6 twin rows and their ratio, and which IPv6
//! paths cost more than 15% above their IPv4 twin).

use std::fmt::Write as _;

use super::{Report, fmt_count, fmt_ratio, ratio};
use crate::bench::parse::{TWIN_FAMILIES, Twin};

/// How far above its IPv4 twin an IPv6 path may cost (issue 13: within
/// 15%).
const TWIN_TOLERANCE: f64 = 0.15;

/// The family cell of the ratio rows.
const RATIO_ROW: &str = "IPv6/IPv4";

/// A ratio cell: bold when above the tolerance.
fn ratio_cell(r: Option<f64>) -> String {
    match r {
        Some(r) if r > 1.0 + TWIN_TOLERANCE => format!("**{r:.2}**"),
        r => fmt_ratio(r),
    }
}

/// A ns cell as `packet_cost` prints it.
fn ns_cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

impl Report<'_> {
    pub(super) fn md_packet(&self, s: &mut String) {
        let p = self.packet;
        let repeat = self.plan.packet_repeat;
        let _ = writeln!(s, "## 1. Per-packet cost of the datapath\n");
        let _ = writeln!(
            s,
            "The real TC programs run on crafted packets through `BPF_PROG_TEST_RUN`, with \
             N IPv4 and N IPv6 services of 5 backends each in the same maps (VIPs and \
             backends in 198.18.0.0/15 and in 2001:db8::/32); kernel-measured ns per packet, \
             program only (no stack around it). The attached programs run every packet, so an \
             IPv6 figure includes their dispatch on the ethertype and the tail call to the \
             IPv6 program (`svcnat_pod_ingress6`, `svcnat_egress6`, `svcnat_node_xdp6`). A \
             repeated test run executes the program on the same buffer, so a path that \
             rewrites the packet would run only once: new flow, established and reply are the \
             median of 20,000 single runs on fresh copies (a new flow: one SYN per distinct \
             source port). A single run includes the kernel's timing overhead; the two \"not a \
             service\" columns (single runs, and {repeat} repeated runs, median of 5) show its \
             size. The two families are measured one after the other, path by path, and every \
             figure's runs were checked in the stats to have taken the path named. Rows \
             \"{RATIO_ROW}\" give the IPv6 figure over its IPv4 twin's; bold: more than 15% \
             above.\n"
        );
        self.md_tc_table(s);
        let scaling: Vec<String> = TWIN_FAMILIES
            .iter()
            .filter_map(|family| {
                let rows: Vec<_> = p.tc_rows(family).collect();
                let (first, last) = (rows.first()?, rows.last()?);
                let x = |j: usize| last.ns[j] / first.ns[j];
                (rows.len() > 1).then(|| {
                    format!(
                        "{family} from {} to {} services: new flow ×{:.2}, established ×{:.2}, \
                         reply ×{:.2}, not a service ×{:.2}",
                        fmt_count(Some(f64::from(first.services))),
                        fmt_count(Some(f64::from(last.services))),
                        x(0),
                        x(1),
                        x(2),
                        x(4)
                    )
                })
            })
            .collect();
        if !scaling.is_empty() {
            let _ = writeln!(s, "{}.\n", scaling.join("; "));
        }
        if !p.xdp.rows.is_empty() {
            let _ = writeln!(s, "### XDP node-port paths\n");
            let _ = writeln!(
                s,
                "The XDP program of node interfaces (`svcnat_node_xdp`, which tail-calls \
                 `svcnat_node_xdp6` for IPv6) run the same way, in the same maps (the N services \
                 of each family above and their flows) plus a few frontends per family on the \
                 node's address of that family: a node port with one local backend, one with 64 \
                 remote backends, a load-balancer IP with a source range, and an \
                 externalTrafficPolicy Local node port without a local backend. Paths that leave \
                 the packet alone (pass, drops) are measured with {repeat} repeated runs, median \
                 of 5; paths that rewrite it are the median of 20,000 single runs on fresh copies \
                 (a new flow: one SYN per distinct client port), to be read against \"not a \
                 service\" measured the same way. Every figure's runs were checked in the stats \
                 to have taken the path named. SNAT ports are allocated per backend from a range \
                 of 4,536 ports: the remote node ports have 64 backends so that 20,000 new flows \
                 leave each range mostly free. Rewritten packets go on to the kernel stack \
                 (`XDP_PASS`), whose cost is not included.\n"
            );
            self.md_xdp_table(s);
        }
        self.md_twins(s);
    }

    /// The TC table, a ratio row after each number of services measured in
    /// both families.
    fn md_tc_table(&self, s: &mut String) {
        let p = self.packet;
        let _ = writeln!(s, "| services | family | {} |", p.paths.join(" | "));
        let _ = writeln!(s, "|---:|---|{}", "---:|".repeat(p.paths.len()));
        for n in p.sizes() {
            let rows: Vec<_> = p.rows.iter().filter(|r| r.services == n).collect();
            for r in &rows {
                let cells: Vec<String> = r.ns.iter().map(|v| ns_cell(Some(*v))).collect();
                let _ = writeln!(s, "| {n} | {} | {} |", r.family, cells.join(" | "));
            }
            let twin = |family: &str| rows.iter().find(|r| r.family == family);
            if let (Some(a), Some(b)) = (twin(TWIN_FAMILIES[0]), twin(TWIN_FAMILIES[1])) {
                let cells: Vec<String> =
                    a.ns.iter()
                        .zip(&b.ns)
                        .map(|(x, y)| ratio_cell(ratio(Some(*y), Some(*x))))
                        .collect();
                let _ = writeln!(s, "| {n} | {RATIO_ROW} | {} |", cells.join(" | "));
            }
        }
        s.push('\n');
    }

    /// The XDP table: the rows of each path, then its ratio row when it is
    /// measured in both families.
    fn md_xdp_table(&self, s: &mut String) {
        let xdp = &self.packet.xdp;
        let sizes: Vec<String> = xdp.sizes.iter().map(u32::to_string).collect();
        let _ = writeln!(
            s,
            "| XDP path \\ services | family | measured | {} |",
            sizes.join(" | ")
        );
        let _ = writeln!(s, "|---|---|---|{}", "---:|".repeat(sizes.len()));
        let mut done: Vec<(&str, &str)> = Vec::new();
        for r in &xdp.rows {
            let key = (r.path.as_str(), r.measured.as_str());
            if done.contains(&key) {
                continue;
            }
            done.push(key);
            let group: Vec<_> = xdp
                .rows
                .iter()
                .filter(|o| o.path == r.path && o.measured == r.measured)
                .collect();
            for o in &group {
                let cells: Vec<String> = o.ns.iter().map(|v| ns_cell(*v)).collect();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    o.path,
                    o.family,
                    o.measured,
                    cells.join(" | ")
                );
            }
            let twin = |family: &str| group.iter().find(|o| o.family == family);
            if let (Some(a), Some(b)) = (twin(TWIN_FAMILIES[0]), twin(TWIN_FAMILIES[1])) {
                let cells: Vec<String> =
                    a.ns.iter()
                        .zip(&b.ns)
                        .map(|(x, y)| ratio_cell(ratio(*y, *x)))
                        .collect();
                let _ = writeln!(
                    s,
                    "| {} | {RATIO_ROW} | {} | {} |",
                    r.path,
                    r.measured,
                    cells.join(" | ")
                );
            }
        }
        s.push('\n');
    }

    /// Which IPv6 paths are within 15% of their IPv4 twin and which are
    /// not, from the figures (no interpretation).
    fn md_twins(&self, s: &mut String) {
        let twins = self.packet.twins();
        let ratios: Vec<f64> = twins.iter().filter_map(Twin::ratio).collect();
        if ratios.is_empty() {
            return;
        }
        let within = ratios
            .iter()
            .filter(|r| **r <= 1.0 + TWIN_TOLERANCE)
            .count();
        let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
        let _ = writeln!(s, "### IPv6 against IPv4\n");
        let _ = writeln!(
            s,
            "{within} of {} IPv6 figures (path × number of services) are within 15% of their \
             IPv4 twin or below it; IPv6/IPv4 ranges from {lo:.2} to {hi:.2}.",
            ratios.len()
        );
        // Paths with at least one figure above the tolerance, in order.
        let mut paths: Vec<(&str, &str, &str)> = Vec::new();
        for t in &twins {
            let key = (t.program, t.path, t.measured);
            if t.ratio().is_some_and(|r| r > 1.0 + TWIN_TOLERANCE) && !paths.contains(&key) {
                paths.push(key);
            }
        }
        if paths.is_empty() {
            let _ = writeln!(
                s,
                "Every IPv6 path is within 15% of its IPv4 twin at every number of services.\n"
            );
            return;
        }
        let _ = writeln!(
            s,
            "More than 15% above the IPv4 twin (IPv4 → IPv6 ns, by number of services):\n"
        );
        for (program, path, measured) in paths {
            let cells: Vec<String> = twins
                .iter()
                .filter(|t| (t.program, t.path, t.measured) == (program, path, measured))
                .map(|t| {
                    format!(
                        "{}: {} → {} (×{})",
                        fmt_count(Some(f64::from(t.services))),
                        ns_cell(t.ipv4),
                        ns_cell(t.ipv6),
                        fmt_ratio(t.ratio())
                    )
                })
                .collect();
            let how = if measured.is_empty() {
                String::new()
            } else {
                format!(" ({measured})")
            };
            let _ = writeln!(s, "- {program} {path}{how}: {}", cells.join("; "));
        }
        s.push('\n');
    }
}
