//! The JSON report (`bench/report.json`): the figures of the Markdown
//! report and the raw `key=value` lines they come from, as derived
//! `Serialize` structs written by `serde_json`.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::{
    parse::{E2e, PacketCost, SyncScale},
    report::{E2E_FIGURES, Report},
};

/// A number as the report writes it: a whole number without a fraction
/// (`3`, not `3.0`), NaN and infinities as null.
#[derive(Clone, Copy)]
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        if !n.is_finite() {
            s.serialize_unit()
        } else if n.fract() == 0.0 && n.abs() < 1e15 {
            s.serialize_i64(n as i64)
        } else {
            s.serialize_f64(n)
        }
    }
}

fn opt(v: Option<f64>) -> Option<Num> {
    v.map(Num)
}

/// `pairs` as a JSON object, in their order.
fn ordered<S, K, V>(pairs: &[(K, V)], s: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    K: Serialize,
    V: Serialize,
{
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// The value of a `key=value` word: a number, or else a string; `-` is
/// null (`None`).
#[derive(Serialize)]
#[serde(untagged)]
enum Word<'a> {
    Num(Num),
    Str(&'a str),
}

/// `key=value` pairs: numbers as numbers, `-` as null, the rest as strings.
fn kv(map: &BTreeMap<String, String>) -> BTreeMap<&str, Option<Word<'_>>> {
    map.iter()
        .map(|(k, v)| {
            let word = if v == "-" {
                None
            } else if let Ok(n) = v.parse::<f64>() {
                Some(Word::Num(Num(n)))
            } else {
                Some(Word::Str(v))
            };
            (k.as_str(), word)
        })
        .collect()
}

#[derive(Serialize)]
struct Json<'a> {
    generated_by: &'static str,
    quick: bool,
    date: &'a str,
    commit: &'a str,
    elapsed_s: Num,
    machine: Machine<'a>,
    #[serde(serialize_with = "ordered")]
    tools: &'a [(&'static str, String)],
    commands: &'a [String],
    packet_cost: PacketCostJson<'a>,
    sync_scale: Vec<SyncJson<'a>>,
    e2e: E2eJson<'a>,
    e2e_ipv6: E2eJson<'a>,
    e2e_shared_endpoints: E2eJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e2e_from_node: Option<E2eJson<'a>>,
}

#[derive(Serialize)]
struct Machine<'a> {
    cpu: &'a str,
    nproc: usize,
    memory_gib: Num,
    kernel: &'a str,
    loadavg_start: &'a str,
    loadavg_end: &'a str,
}

#[derive(Serialize)]
struct PacketCostJson<'a> {
    repeat: u32,
    rows: Vec<PacketRow<'a>>,
    xdp_node_port: Vec<XdpRow<'a>>,
    /// Every path measured in both families: IPv4 and IPv6 figures and
    /// IPv6 / IPv4.
    ipv6_vs_ipv4: Vec<TwinJson<'a>>,
}

#[derive(Serialize)]
struct PacketRow<'a> {
    services: u32,
    family: &'a str,
    new_flow_ns: Num,
    established_ns: Num,
    reply_ns: Num,
    not_a_service_single_run_ns: Num,
    not_a_service_ns: Num,
}

#[derive(Serialize)]
struct XdpRow<'a> {
    path: &'a str,
    family: &'a str,
    measured: &'a str,
    ns: Vec<XdpCell>,
}

#[derive(Serialize)]
struct XdpCell {
    services: u32,
    ns: Option<Num>,
}

#[derive(Serialize)]
struct TwinJson<'a> {
    program: &'static str,
    path: &'a str,
    measured: &'a str,
    services: u32,
    ipv4_ns: Option<Num>,
    ipv6_ns: Option<Num>,
    ipv6_over_ipv4: Option<Num>,
}

#[derive(Serialize)]
struct SyncJson<'a> {
    services: u32,
    /// `sync_scale`'s figures, `line.key` written `line_key`.
    #[serde(flatten, serialize_with = "ordered")]
    values: Vec<(String, Num)>,
    maps: Vec<MapJson<'a>>,
}

#[derive(Serialize)]
struct MapJson<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    max_entries: Num,
    memlock_bytes: Num,
}

#[derive(Serialize)]
struct E2eJson<'a> {
    settings: BTreeMap<&'a str, Option<Word<'a>>>,
    summary_median_over_rounds: Vec<Summary<'a>>,
    runs: Vec<BTreeMap<&'a str, Option<Word<'a>>>>,
    loads: Vec<BTreeMap<&'a str, Option<Word<'a>>>>,
}

/// One column at one number of services: medians and sums over the rounds,
/// and the figures of programming the services.
#[derive(Serialize)]
struct Summary<'a> {
    services: u32,
    column: &'a str,
    /// The medians of [`E2E_FIGURES`], by key.
    #[serde(flatten, serialize_with = "ordered")]
    figures: Vec<(&'static str, Option<Num>)>,
    conns_sum: Option<Num>,
    errors_sum: Option<Num>,
    connect_over_5ms_sum: Option<Num>,
    load_s: Option<Num>,
    rules: Option<Num>,
    change_ms_p50: Option<Num>,
    change_ms_max: Option<Num>,
}

impl<'a> PacketCostJson<'a> {
    fn new(repeat: u32, p: &'a PacketCost) -> Self {
        Self {
            repeat,
            rows: p
                .rows
                .iter()
                .map(|r| PacketRow {
                    services: r.services,
                    family: &r.family,
                    new_flow_ns: Num(r.ns[0]),
                    established_ns: Num(r.ns[1]),
                    reply_ns: Num(r.ns[2]),
                    not_a_service_single_run_ns: Num(r.ns[3]),
                    not_a_service_ns: Num(r.ns[4]),
                })
                .collect(),
            xdp_node_port: p
                .xdp
                .rows
                .iter()
                .map(|r| XdpRow {
                    path: &r.path,
                    family: &r.family,
                    measured: &r.measured,
                    ns: p
                        .xdp
                        .sizes
                        .iter()
                        .zip(&r.ns)
                        .map(|(&services, &v)| XdpCell {
                            services,
                            ns: opt(v),
                        })
                        .collect(),
                })
                .collect(),
            ipv6_vs_ipv4: p
                .twins()
                .into_iter()
                .map(|t| TwinJson {
                    program: t.program,
                    path: t.path,
                    measured: t.measured,
                    services: t.services,
                    ipv4_ns: opt(t.ipv4),
                    ipv6_ns: opt(t.ipv6),
                    // To 3 decimals (the figures are whole ns).
                    ipv6_over_ipv4: opt(t.ratio().map(|r| (r * 1000.0).round() / 1000.0)),
                })
                .collect(),
        }
    }
}

impl<'a> SyncJson<'a> {
    fn new(x: &'a SyncScale) -> Self {
        Self {
            services: x.services,
            values: x
                .values
                .iter()
                .map(|(k, v)| (k.replace('.', "_"), Num(*v)))
                .collect(),
            maps: x
                .maps
                .iter()
                .map(|(name, ty, max, bytes)| MapJson {
                    name,
                    ty,
                    max_entries: Num(*max),
                    memlock_bytes: Num(*bytes),
                })
                .collect(),
        }
    }
}

impl<'a> E2eJson<'a> {
    fn new(e: &'a E2e) -> Self {
        let sizes = e.sizes();
        let cols = e.columns();
        let mut summary = Vec::new();
        for &n in &sizes {
            for c in &cols {
                summary.push(Summary {
                    services: n,
                    column: c,
                    figures: E2E_FIGURES
                        .iter()
                        .map(|&(key, _, _, _)| (key, opt(e.median(c, n, key))))
                        .collect(),
                    conns_sum: opt(e.sum(c, n, "conns")),
                    errors_sum: opt(e.sum(c, n, "errors")),
                    connect_over_5ms_sum: opt(e.sum(c, n, "connect_over_5ms")),
                    load_s: opt(e.load(c, n, "load_s")),
                    rules: opt(e.load(c, n, "rules")),
                    change_ms_p50: opt(e.load(c, n, "change_ms_p50")),
                    change_ms_max: opt(e.load(c, n, "change_ms_max")),
                });
            }
        }
        Self {
            settings: kv(&e.settings),
            summary_median_over_rounds: summary,
            runs: e.runs.iter().map(kv).collect(),
            loads: e.loads.iter().map(kv).collect(),
        }
    }
}

/// `value` as indented JSON (two spaces), with a final newline.
fn render(value: &impl Serialize) -> serde_json::Result<String> {
    let mut out = serde_json::to_string_pretty(value)?;
    out.push('\n');
    Ok(out)
}

impl Report<'_> {
    /// The text of `report.json`.
    pub(super) fn json(&self) -> serde_json::Result<String> {
        let f = self.facts;
        render(&Json {
            generated_by: "cargo xtask bench",
            quick: self.plan.quick,
            date: &f.date,
            commit: &f.commit,
            elapsed_s: Num(self.elapsed),
            machine: Machine {
                cpu: &f.cpu,
                nproc: f.nproc,
                memory_gib: Num((f.mem_gib * 10.0).round() / 10.0),
                kernel: &f.kernel,
                loadavg_start: &f.load_start,
                loadavg_end: &f.load_end,
            },
            tools: &f.tools,
            commands: &self.log.commands,
            packet_cost: PacketCostJson::new(self.plan.packet_repeat, self.packet),
            sync_scale: self.sync.iter().map(SyncJson::new).collect(),
            e2e: E2eJson::new(self.e2e),
            e2e_ipv6: E2eJson::new(self.e2e6),
            e2e_shared_endpoints: E2eJson::new(self.shared),
            e2e_from_node: (!self.host.runs.is_empty()).then(|| E2eJson::new(self.host)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_renders_escapes_numbers_and_nesting() {
        #[derive(Serialize)]
        struct Sample {
            a: Num,
            b: Num,
            c: &'static str,
            d: (Option<Num>, bool, Num),
            e: BTreeMap<String, Num>,
        }
        let j = Sample {
            a: Num(3.0),
            b: Num(0.25),
            c: "x\"y\\z\n",
            d: (None, true, Num(f64::NAN)),
            e: BTreeMap::new(),
        };
        assert_eq!(
            render(&j).expect("JSON"),
            "{\n  \"a\": 3,\n  \"b\": 0.25,\n  \"c\": \"x\\\"y\\\\z\\n\",\n  \"d\": [\n    null,\n    true,\n    null\n  ],\n  \"e\": {}\n}\n"
        );
    }
}
