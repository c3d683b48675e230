//! The JSON report (`bench/report.json`): the figures of the Markdown
//! report and the raw `key=value` lines they come from.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    parse::E2e,
    report::{E2E_FIGURES, Report},
};

impl Report<'_> {
    pub(super) fn json(&self) -> J {
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

/// A small JSON value (xtask has no serde).
pub(super) enum J {
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

    pub(super) fn render(&self) -> String {
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
}
