//! How `svcnat inspect` shows its rows, as `kubectl get` does: `-o
//! text|wide|json|yaml`, `-n NAMESPACE`, `-l` label selectors (Pods) and
//! `--field-selector` (the fields of any row).

use std::{collections::BTreeMap, fmt};

use serde::Serialize;

/// Output formats (`kubectl get -o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// An aligned table of the main columns.
    #[default]
    Text,
    /// The table with every column.
    Wide,
    /// A JSON array of the rows.
    Json,
    /// A YAML list of the rows.
    Yaml,
}

/// What to show and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Format.
    pub output: Output,
    /// Only rows of this namespace (rows without one, such as counters and
    /// links, are cluster-wide and always shown, as `kubectl -n` does).
    pub namespace: Option<String>,
    /// `-l`: requirements on labels (only Pods have labels).
    pub labels: Vec<Requirement>,
    /// `--field-selector`: requirements on the rows' fields.
    pub fields: Vec<Requirement>,
}

impl View {
    /// A view in `output` with no filter.
    pub fn new(output: Output) -> Self {
        Self {
            output,
            ..Self::default()
        }
    }
}

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equal(String, String),
    /// `key!=value`.
    NotEqual(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

impl Requirement {
    /// The key it is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Equal(k, _)
            | Self::NotEqual(k, _)
            | Self::In(k, _)
            | Self::NotIn(k, _)
            | Self::Exists(k)
            | Self::DoesNotExist(k) => k,
        }
    }

    /// Whether `values` (every value the row has under the key: none, one,
    /// or several for rows that name several services) meet it: `=` and
    /// `in` when one value does, `!=` and `notin` when none does.
    pub fn matches(&self, values: &[&str]) -> bool {
        match self {
            Self::Equal(_, v) => values.contains(&v.as_str()),
            Self::NotEqual(_, v) => !values.contains(&v.as_str()),
            Self::In(_, set) => values.iter().any(|v| set.iter().any(|s| s == v)),
            Self::NotIn(_, set) => !values.iter().any(|v| set.iter().any(|s| s == v)),
            Self::Exists(_) => !values.is_empty(),
            Self::DoesNotExist(_) => values.is_empty(),
        }
    }
}

/// A selector that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {why}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong.
    pub why: String,
}

/// Which operators a selector may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// Label selectors: `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`.
    Labels,
    /// Field selectors: `=`, `==`, `!=` only (as the API server's).
    Fields,
}

/// Parses a selector as `kubectl -l` / `--field-selector` take it:
/// requirements separated by commas (commas inside `(...)` belong to a set).
pub fn parse_selector(text: &str, syntax: Syntax) -> Result<Vec<Requirement>, SelectorError> {
    let err = |why: String| SelectorError {
        selector: text.to_owned(),
        why,
    };
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0_usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| err("unbalanced ')'".into()))?
            }
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(err("unbalanced '('".into()));
    }
    terms.push(&text[start..]);
    let mut out = Vec::new();
    for term in terms.into_iter().map(str::trim) {
        if term.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err(err("an empty requirement".into()));
        }
        let req = parse_term(term).map_err(|why| err(format!("{term:?}: {why}")))?;
        if syntax == Syntax::Fields
            && !matches!(req, Requirement::Equal(..) | Requirement::NotEqual(..))
        {
            return Err(err(format!(
                "{term:?}: field selectors take only =, == and !="
            )));
        }
        out.push(req);
    }
    Ok(out)
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if key_ok(k) {
            Ok(k.to_owned())
        } else {
            Err(format!("{k:?} is not a key"))
        }
    };
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k)?));
    }
    for (op, make) in [
        (
            "!=",
            Requirement::NotEqual as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equal),
        ("=", Requirement::Equal),
    ] {
        if let Some((k, v)) = term.split_once(op) {
            let v = v.trim();
            if v.contains(['=', '!', '(', ')']) {
                return Err(format!("{v:?} is not a value"));
            }
            return Ok(make(key(k)?, v.to_owned()));
        }
    }
    for (op, make) in [
        (
            " notin ",
            Requirement::NotIn as fn(String, Vec<String>) -> Requirement,
        ),
        (" in ", Requirement::In),
    ] {
        if let Some((k, set)) = term.split_once(op) {
            let set = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("{op:?} takes a set in parentheses"))?;
            let values: Vec<String> = set
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            if values.is_empty() {
                return Err("an empty set".into());
            }
            return Ok(make(key(k)?, values));
        }
    }
    Ok(Requirement::Exists(key(term)?))
}

/// A row of one of the `inspect` tables.
pub(super) trait Row: Serialize {
    /// What the rows are, plural (`services`), for messages.
    const WHAT: &'static str;
    /// Column titles (`-o wide`).
    const HEADERS: &'static [&'static str];
    /// The columns of `-o text`, as indices into [`Row::HEADERS`]; every
    /// column when empty.
    const NARROW: &'static [usize] = &[];
    /// The row's cells, in column order.
    fn cells(&self) -> Vec<String>;
    /// The fields `--field-selector` (and, for `namespace`, `-n`) match:
    /// (name, value) pairs, a name repeated when the row has several values.
    fn fields(&self) -> Vec<(&'static str, String)>;
    /// The row's labels, for `-l`; `None` for rows that have none.
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        None
    }
}

/// Why rows cannot be shown as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// `-l` on rows without labels.
    #[error(
        "{what} have no labels (the pinned maps keep none): use --field-selector with one of the fields {fields}"
    )]
    NoLabels {
        /// The rows.
        what: &'static str,
        /// Their fields.
        fields: String,
    },
    /// A field the rows do not have.
    #[error("{what} have no field {field:?}; their fields: {fields}")]
    UnknownField {
        /// The rows.
        what: &'static str,
        /// The field asked for.
        field: String,
        /// Their fields.
        fields: String,
    },
    /// The rows would not serialize.
    #[error("cannot write {what} as {format}: {why}")]
    Serialize {
        /// The rows.
        what: &'static str,
        /// `json` or `yaml`.
        format: &'static str,
        /// The serializer's error.
        why: String,
    },
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Wide => "wide",
            Self::Json => "json",
            Self::Yaml => "yaml",
        })
    }
}

/// The rows `view` selects.
fn select<'a, R: Row>(rows: &'a [R], view: &View) -> Result<Vec<&'a R>, ViewError> {
    let field_names = |rows: &[R]| {
        let mut names: Vec<&str> = rows
            .first()
            .map(|r| r.fields().into_iter().map(|(k, _)| k).collect())
            .unwrap_or_default();
        names.sort_unstable();
        names.dedup();
        names.join(", ")
    };
    let mut out = Vec::new();
    for row in rows {
        let fields = row.fields();
        let values = |key: &str| -> Vec<&str> {
            fields
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let has_field = |key: &str| fields.iter().any(|(k, _)| *k == key);
        if let Some(ns) = &view.namespace
            && has_field("namespace")
            && !values("namespace").contains(&ns.as_str())
        {
            continue;
        }
        let mut keep = true;
        for req in &view.fields {
            if !has_field(req.key()) {
                return Err(ViewError::UnknownField {
                    what: R::WHAT,
                    field: req.key().to_owned(),
                    fields: field_names(rows),
                });
            }
            keep &= req.matches(&values(req.key()));
        }
        if !view.labels.is_empty() {
            let Some(labels) = row.labels() else {
                return Err(ViewError::NoLabels {
                    what: R::WHAT,
                    fields: field_names(rows),
                });
            };
            for req in &view.labels {
                let v: Vec<&str> = labels
                    .get(req.key())
                    .map(String::as_str)
                    .into_iter()
                    .collect();
                keep &= req.matches(&v);
            }
        }
        if keep {
            out.push(row);
        }
    }
    Ok(out)
}

/// `rows` as `view` asks: filtered, then as a table (narrow or wide), JSON
/// or YAML.
pub(super) fn show<R: Row>(rows: &[R], view: &View) -> Result<String, ViewError> {
    let rows = select(rows, view)?;
    let serialize = |format: &'static str, why: String| ViewError::Serialize {
        what: R::WHAT,
        format,
        why,
    };
    Ok(match view.output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&rows)
                .map_err(|e| serialize("json", e.to_string()))?;
            s.push('\n');
            s
        }
        Output::Yaml => {
            if rows.is_empty() {
                "[]\n".to_owned()
            } else {
                serde_saphyr::to_string(&rows).map_err(|e| serialize("yaml", e.to_string()))?
            }
        }
        Output::Text | Output::Wide => {
            let columns: Vec<usize> = if view.output == Output::Wide || R::NARROW.is_empty() {
                (0..R::HEADERS.len()).collect()
            } else {
                R::NARROW.to_vec()
            };
            let headers: Vec<&str> = columns.iter().map(|&i| R::HEADERS[i]).collect();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let all = r.cells();
                    columns
                        .iter()
                        .map(|&i| all.get(i).cloned().unwrap_or_default())
                        .collect()
                })
                .collect();
            super::table(&headers, &cells)
        }
    })
}

/// `namespace/name:port` (or `namespace/name`) split into its parts; empty
/// parts for a name without them.
pub(super) fn service_parts(full: &str) -> (&str, &str, &str) {
    let (ns, rest) = full.split_once('/').unwrap_or(("", full));
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    (ns, name, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_as_kubectl_takes_them() {
        use Requirement::*;
        let s = |t| parse_selector(t, Syntax::Labels).expect(t);
        assert_eq!(
            s("app=web, tier!=db,env in (prod, staging),!canary,track,x==y,k notin (a)"),
            [
                Equal("app".into(), "web".into()),
                NotEqual("tier".into(), "db".into()),
                In("env".into(), vec!["prod".into(), "staging".into()]),
                DoesNotExist("canary".into()),
                Exists("track".into()),
                Equal("x".into(), "y".into()),
                NotIn("k".into(), vec!["a".into()]),
            ]
        );
        assert_eq!(s(""), []);
        assert_eq!(
            s("app.kubernetes.io/name=svcnat"),
            [Equal("app.kubernetes.io/name".into(), "svcnat".into())]
        );
        for bad in [
            "a=b,", "a in (b", "a in b", "a in ()", "=b", "a b", "a=(b)", "a)",
        ] {
            assert!(parse_selector(bad, Syntax::Labels).is_err(), "{bad}");
        }
        assert!(parse_selector("kind in (node-port)", Syntax::Fields).is_err());
        assert!(parse_selector("kind=node-port,proto!=udp", Syntax::Fields).is_ok());
    }

    #[test]
    fn requirements_match_any_of_several_values() {
        let r = |t| parse_selector(t, Syntax::Labels).expect(t).remove(0);
        assert!(r("ns=a").matches(&["b", "a"]));
        assert!(!r("ns!=a").matches(&["b", "a"]));
        assert!(r("ns!=a").matches(&[]));
        assert!(r("ns in (x,b)").matches(&["b"]));
        assert!(r("ns notin (x)").matches(&["b"]));
        assert!(r("ns").matches(&["b"]) && !r("ns").matches(&[]));
        assert!(r("!ns").matches(&[]) && !r("!ns").matches(&["b"]));
    }

    #[test]
    fn service_names_split_into_namespace_name_and_port() {
        assert_eq!(service_parts("shop/web:http"), ("shop", "web", "http"));
        assert_eq!(service_parts("shop/web"), ("shop", "web", ""));
        assert_eq!(service_parts(""), ("", "", ""));
    }
}
