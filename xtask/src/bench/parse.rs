//! Reading the measurement programs' output: the Markdown tables of
//! `packet_cost` and the `key=value` lines of `sync_scale` and `bench_e2e`,
//! and the medians and sums over rounds the report is made of.

use std::collections::BTreeMap;

const COLUMNS: [&str; 4] = ["svcnat", "iptables", "nftables", "direct"];

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

/// The family of rows without a "family" column (outputs from before
/// IPv6 was measured).
const DEFAULT_FAMILY: &str = "IPv4";

/// The families whose rows are compared, the first being the reference.
pub(super) const TWIN_FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

/// Output of `packet_cost`: the TC table (one row per number of services
/// and family) and the XDP table (one row per path and family).
pub(super) struct PacketCost {
    /// The TC table's path columns, after "services" and "family".
    pub(super) paths: Vec<String>,
    pub(super) rows: Vec<TcRow>,
    pub(super) xdp: XdpCost,
}

/// One row of the TC table.
#[derive(Debug, PartialEq)]
pub(super) struct TcRow {
    pub(super) services: u32,
    pub(super) family: String,
    /// New flow, established, reply, not a service (single runs), not a
    /// service (repeated) (ns).
    pub(super) ns: [f64; 5],
}

/// The XDP node-port table of `packet_cost`: its first header cell starts
/// with "XDP", the header cells after "measured" are numbers of services.
#[derive(Default)]
pub(super) struct XdpCost {
    pub(super) sizes: Vec<u32>,
    pub(super) rows: Vec<XdpRow>,
}

/// One row of the XDP table.
#[derive(Debug, PartialEq)]
pub(super) struct XdpRow {
    pub(super) path: String,
    pub(super) family: String,
    /// How it is measured ("repeat" or "single").
    pub(super) measured: String,
    /// ns per size (in [`XdpCost::sizes`] order; `None` where the cell is
    /// not a number).
    pub(super) ns: Vec<Option<f64>>,
}

/// One path at one number of services in both families of
/// [`TWIN_FAMILIES`].
#[derive(Debug, PartialEq)]
pub(super) struct Twin<'a> {
    /// "TC" or "XDP".
    pub(super) program: &'static str,
    pub(super) path: &'a str,
    pub(super) measured: &'a str,
    pub(super) services: u32,
    pub(super) ipv4: Option<f64>,
    pub(super) ipv6: Option<f64>,
}

impl Twin<'_> {
    /// IPv6 / IPv4.
    pub(super) fn ratio(&self) -> Option<f64> {
        match (self.ipv6, self.ipv4) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        }
    }
}

/// The index of the header cell `name`.
fn column(header: &[&str], name: &str) -> Option<usize> {
    header.iter().position(|c| c.eq_ignore_ascii_case(name))
}

/// Whether `cells` is a Markdown table's alignment line.
fn is_rule(cells: &[&str]) -> bool {
    cells
        .iter()
        .all(|x| x.chars().all(|ch| ch == '-' || ch == ':'))
}

fn number(cell: &str) -> Option<f64> {
    cell.replace(',', "").parse().ok()
}

impl PacketCost {
    pub(super) fn parse(text: &str) -> Self {
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
        let header = table.first().map(|l| md_cells(l)).unwrap_or_default();
        let family = column(&header, "family");
        let paths = header
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(i, _)| Some(*i) != family)
            .map(|(_, c)| (*c).to_string())
            .collect();
        let rows = table
            .iter()
            .skip(1)
            .filter_map(|l| {
                let cells = md_cells(l);
                let services = number(cells.first()?)? as u32;
                let ns: Vec<f64> = cells
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter(|(i, _)| Some(*i) != family)
                    .filter_map(|(_, c)| number(c))
                    .collect();
                Some(TcRow {
                    services,
                    family: family
                        .and_then(|i| cells.get(i))
                        .map_or(DEFAULT_FAMILY, |c| c)
                        .to_string(),
                    ns: ns.try_into().ok()?,
                })
            })
            .collect();
        Self { paths, rows, xdp }
    }

    /// The TC rows of `family`, in their order.
    pub(super) fn tc_rows<'a>(&'a self, family: &'a str) -> impl Iterator<Item = &'a TcRow> {
        self.rows.iter().filter(move |r| r.family == family)
    }

    /// The numbers of services of the TC table, in order, once each.
    pub(super) fn sizes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = Vec::new();
        for r in &self.rows {
            if !v.contains(&r.services) {
                v.push(r.services);
            }
        }
        v
    }

    /// Every path measured in both families of [`TWIN_FAMILIES`], IPv4
    /// figure beside IPv6 figure: the TC paths by number of services, then
    /// the XDP paths by number of services.
    pub(super) fn twins(&self) -> Vec<Twin<'_>> {
        let [v4, v6] = TWIN_FAMILIES;
        let mut out = Vec::new();
        let tc = |n: u32, family: &str| {
            self.rows
                .iter()
                .find(|r| r.services == n && r.family == family)
        };
        for (j, column) in self.paths.iter().enumerate() {
            let (path, measured) = split_column(column);
            for n in self.sizes() {
                let (a, b) = (tc(n, v4), tc(n, v6));
                if a.is_none() || b.is_none() {
                    continue;
                }
                out.push(Twin {
                    program: "TC",
                    path,
                    measured,
                    services: n,
                    ipv4: a.and_then(|r| r.ns.get(j).copied()),
                    ipv6: b.and_then(|r| r.ns.get(j).copied()),
                });
            }
        }
        for a in self.xdp.rows.iter().filter(|r| r.family == v4) {
            let Some(b) = self
                .xdp
                .rows
                .iter()
                .find(|r| r.family == v6 && r.path == a.path && r.measured == a.measured)
            else {
                continue;
            };
            for (i, &n) in self.xdp.sizes.iter().enumerate() {
                out.push(Twin {
                    program: "XDP",
                    path: &a.path,
                    measured: &a.measured,
                    services: n,
                    ipv4: a.ns.get(i).copied().flatten(),
                    ipv6: b.ns.get(i).copied().flatten(),
                });
            }
        }
        out
    }
}

/// A TC column ("new flow ns (single)") as path ("new flow") and how it
/// is measured ("single").
fn split_column(column: &str) -> (&str, &str) {
    match column.split_once(" ns (") {
        Some((path, how)) => (path, how.trim_end_matches(')')),
        None => (column, ""),
    }
}

impl XdpCost {
    fn parse(table: &[&str]) -> Self {
        let header = table.first().map(|l| md_cells(l)).unwrap_or_default();
        let measured = column(&header, "measured").unwrap_or(1);
        let family = column(&header, "family");
        let sizes = header
            .iter()
            .skip(measured + 1)
            .filter_map(|c| number(c).map(|v| v as u32))
            .collect();
        let rows = table
            .iter()
            .skip(1)
            .map(|l| md_cells(l))
            .filter(|c| c.len() > measured && !is_rule(c))
            .map(|c| XdpRow {
                path: c[0].to_string(),
                family: family
                    .and_then(|i| c.get(i))
                    .map_or(DEFAULT_FAMILY, |f| f)
                    .to_string(),
                measured: c[measured].to_string(),
                ns: c[measured + 1..].iter().map(|v| number(v)).collect(),
            })
            .collect();
        Self { sizes, rows }
    }
}

pub(super) struct SyncScale {
    pub(super) services: u32,
    pub(super) values: BTreeMap<String, f64>,
    pub(super) maps: Vec<(String, String, f64, f64)>,
}

impl SyncScale {
    pub(super) fn parse(services: u32, text: &str) -> Self {
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

    pub(super) fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

/// Output of one `bench_e2e` invocation.
pub(super) struct E2e {
    pub(super) settings: BTreeMap<String, String>,
    pub(super) runs: Vec<BTreeMap<String, String>>,
    pub(super) loads: Vec<BTreeMap<String, String>>,
}

impl E2e {
    pub(super) fn parse(text: &str) -> Self {
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

    pub(super) fn sizes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .runs
            .iter()
            .filter_map(|r| r.get("services").and_then(|s| s.parse().ok()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub(super) fn columns(&self) -> Vec<&'static str> {
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
    pub(super) fn median(&self, column: &str, n: u32, key: &str) -> Option<f64> {
        median(self.values(column, n, key))
    }

    /// Sum over the rounds.
    pub(super) fn sum(&self, column: &str, n: u32, key: &str) -> Option<f64> {
        let v = self.values(column, n, key);
        (!v.is_empty()).then(|| v.iter().sum())
    }

    pub(super) fn load(&self, column: &str, n: u32, key: &str) -> Option<f64> {
        self.loads
            .iter()
            .find(|r| {
                r.get("column").map(String::as_str) == Some(column)
                    && r.get("services") == Some(&n.to_string())
            })
            .and_then(|r| num(r, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output of `packet_cost 100000 1 1000`, as captured (on a busy machine).
    const PACKET_COST_SAMPLE: &str = include_str!("testdata/packet_cost_quick.out");

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
    fn packet_cost_rows_without_a_family_column_are_ipv4() {
        let p = PacketCost::parse(
            "| services | new flow ns (single) | established ns (single) | reply ns (single) | not a service ns (single) | not a service ns (repeat) |\n\
             |---:|---:|---:|---:|---:|---:|\n| 1 | 792 | 340 | 301 | 130 | 84 |\n",
        );
        assert_eq!(
            p.rows,
            [TcRow {
                services: 1,
                family: "IPv4".into(),
                ns: [792.0, 340.0, 301.0, 130.0, 84.0]
            }]
        );
        assert_eq!(p.paths.len(), 5);
        assert!(p.xdp.rows.is_empty());
        // Nothing to compare IPv6 with.
        assert!(p.twins().is_empty());
    }

    #[test]
    fn packet_cost_tc_and_xdp_tables_parse_apart() {
        let p = PacketCost::parse(PACKET_COST_SAMPLE);
        assert_eq!(p.paths[0], "new flow ns (single)");
        assert_eq!(p.paths.len(), 5);
        assert_eq!(p.sizes(), [1, 1000]);
        assert_eq!(p.rows.len(), 4);
        assert_eq!(
            p.rows[1],
            TcRow {
                services: 1,
                family: "IPv6".into(),
                ns: [1332.0, 541.0, 491.0, 271.0, 142.0]
            }
        );
        assert_eq!(p.tc_rows("IPv4").count(), 2);
        assert_eq!(p.xdp.sizes, [1, 1000]);
        assert_eq!(p.xdp.rows.len(), 18);
        assert_eq!(
            p.xdp.rows[1],
            XdpRow {
                path: "not a service (pass)".into(),
                family: "IPv6".into(),
                measured: "repeat".into(),
                ns: vec![Some(107.0), Some(106.0)]
            }
        );
        let r = &p.xdp.rows[14];
        assert_eq!(
            r.path,
            "node port, remote backend, new flow (SNAT port allocation)"
        );
        assert_eq!((r.family.as_str(), r.measured.as_str()), ("IPv4", "single"));
        assert_eq!(r.ns, [Some(1342.0), Some(1342.0)]);
    }

    #[test]
    fn twins_pair_every_path_by_family() {
        let p = PacketCost::parse(PACKET_COST_SAMPLE);
        let twins = p.twins();
        // 5 TC paths and 9 XDP paths, at 2 sizes each.
        assert_eq!(twins.len(), (5 + 9) * 2);
        assert_eq!(
            twins[1],
            Twin {
                program: "TC",
                path: "new flow",
                measured: "single",
                services: 1000,
                ipv4: Some(1202.0),
                ipv6: Some(1332.0),
            }
        );
        let deny = twins
            .iter()
            .find(|t| t.program == "XDP" && t.path == "source range deny (drop)")
            .expect("the XDP source range twin");
        assert_eq!((deny.services, deny.measured), (1, "repeat"));
        assert_eq!(deny.ratio(), Some(127.0 / 115.0));
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
}
