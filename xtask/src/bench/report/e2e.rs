//! Section 3 of the report: end to end in network namespaces (the
//! `bench_e2e` tables, programming the services, scaling, services that
//! share endpoints).

use std::fmt::Write as _;

use super::{E2E_FIGURES, Report, fmt_count, fmt_num, fmt_ratio, ratio, short_title};
use crate::bench::parse::{E2e, SyncScale};

impl Report<'_> {
    pub(super) fn md_e2e(&self, s: &mut String) {
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
        md_figures(s, e, "###");
        md_failures(s, e, "###");
        self.md_ipv6(s);
        self.md_host(s);
        self.md_load(s, &sizes);
        self.md_scaling(s, &sizes, &cols);
        self.md_shared(s);
    }

    /// The same tables for the IPv6 run, and svcnat on IPv6 against svcnat
    /// on IPv4.
    fn md_ipv6(&self, s: &mut String) {
        let e = self.e2e6;
        if e.runs.is_empty() {
            return;
        }
        let _ = writeln!(s, "### IPv6\n");
        let _ = writeln!(
            s,
            "The same measurement on IPv6 (`bench_e2e ... --family ipv6`, a run of its own \
             after the IPv4 one): the pods in 2001:db8::/64, the ClusterIPs in \
             2001:db8:ff::/64; iptables is kube-proxy's IPv6 proxier loaded with \
             `ip6tables-restore` (`bridge-nf-call-ip6tables=1`), nftables the table \
             `ip6 kube-proxy`.\n"
        );
        md_figures(s, e, "####");
        let _ = writeln!(s, "#### svcnat against the direct path, per family\n");
        let _ = writeln!(
            s,
            "svcnat / direct of each family's run (the two runs are minutes apart, so each \
             family is judged against its own direct path rather than the other run's \
             figures).\n"
        );
        let figures = ["conn_per_s", "connect_p99_us", "iperf_gbit_s"];
        let mut head = String::from("| services |");
        let mut rule = String::from("|---:|");
        for (key, title, unit, _) in E2E_FIGURES {
            if figures.contains(&key) {
                for family in ["IPv4", "IPv6"] {
                    let _ = write!(head, " {} ({unit}), {family} |", short_title(title));
                    rule.push_str("---:|");
                }
            }
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for n in e.sizes() {
            let mut row = format!("| {} |", fmt_count(Some(f64::from(n))));
            for (key, ..) in E2E_FIGURES {
                if figures.contains(&key) {
                    for run in [self.e2e, e] {
                        let r = ratio(run.median("svcnat", n, key), run.median("direct", n, key));
                        let _ = write!(row, " {} |", fmt_ratio(r));
                    }
                }
            }
            let _ = writeln!(s, "{row}");
        }
        s.push('\n');
        md_failures(s, e, "####");
    }

    /// The same tables with the load in the node's own namespace.
    fn md_host(&self, s: &mut String) {
        let e = self.host;
        if e.runs.is_empty() {
            return;
        }
        let _ = writeln!(s, "### From the node's own processes\n");
        let _ = writeln!(
            s,
            "The same measurement with the client threads and iperf3 in the node namespace \
             (`bench_e2e ... --from node`: a kubelet probe, a hostNetwork pod, a node agent), \
             IPv4. svcnat serves them with its socket hooks at the cgroup v2 root (scoped to \
             the node namespace): `connect()` gets the backend's address, and the packets are \
             never rewritten. iptables and nftables DNAT the first packet in their `OUTPUT` \
             hooks (`-A OUTPUT -j KUBE-SERVICES`, the `nat-output` chain), as kube-proxy does. \
             The node has a route for the ClusterIP range on its bridge (a node's default \
             route), which kube-proxy's DNAT needs and svcnat does not.\n"
        );
        md_figures(s, e, "####");
        md_failures(s, e, "####");
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
}

/// One table per figure of [`E2E_FIGURES`]: median over rounds per column
/// and size, and svcnat's ratio to each other column; headings of `level`.
fn md_figures(s: &mut String, e: &E2e, level: &str) {
    let sizes = e.sizes();
    let cols = e.columns();
    for (key, title, unit, _) in E2E_FIGURES {
        let _ = writeln!(s, "{level} {title} ({unit})\n");
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
}

/// Failed requests, slow connects and retransmits per column and size.
fn md_failures(s: &mut String, e: &E2e, level: &str) {
    let sizes = e.sizes();
    let cols = e.columns();
    let _ = writeln!(
        s,
        "{level} Failed requests and slow connects (sum over rounds)\n"
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
}
