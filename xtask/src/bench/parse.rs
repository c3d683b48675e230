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

/// Output of `packet_cost`: the TC table (one row per number of services)
/// and the XDP table (one row per path).
pub(super) struct PacketCost {
    pub(super) table: String,
    /// services, new flow, established, reply, not a service (single runs),
    /// not a service (repeated) (ns).
    pub(super) rows: Vec<[f64; 6]>,
    pub(super) xdp: XdpCost,
}

/// The XDP node-port table of `packet_cost`: its first header cell starts
/// with "XDP", the other header cells after "measured" are numbers of
/// services.
#[derive(Default)]
pub(super) struct XdpCost {
    pub(super) table: String,
    pub(super) sizes: Vec<u32>,
    /// Path, how it is measured ("repeat" or "single"), ns per size (in
    /// `sizes` order; `None` where the cell is not a number).
    pub(super) rows: Vec<(String, String, Vec<Option<f64>>)>,
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

    /// Output of `packet_cost 100000 1 1000`, as captured.
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
    fn packet_cost_table_rows_parse() {
        let p = PacketCost::parse(
            "| services | new flow ns (single) | established ns (single) | reply ns (single) | not a service ns (single) | not a service ns (repeat) |\n\
             |---:|---:|---:|---:|---:|---:|\n| 1 | 792 | 340 | 301 | 130 | 84 |\n",
        );
        assert_eq!(p.rows, [[1.0, 792.0, 340.0, 301.0, 130.0, 84.0]]);
        assert_eq!(p.table.lines().count(), 3);
        assert!(p.xdp.rows.is_empty());
    }

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
