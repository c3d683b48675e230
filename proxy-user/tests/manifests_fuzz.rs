//! Property tests of the manifests parser (issue 11): random and mutated
//! YAML and JSON texts — the files of `deploy/examples/` and small valid
//! Service, EndpointSlice and List documents, with bytes flipped, replaced,
//! inserted and deleted, cut short, pieces of YAML/JSON syntax spliced in —
//! never panic, and always give either objects (each named, in a namespace)
//! or [`ManifestError::Parse`] placed at a line of the text; through
//! [`load_path`], also naming the file. 600 cases per property;
//! `SVCNAT_FUZZ_CASES=N` for more.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use proptest::prelude::*;
use svcnat::sources::{
    Object,
    manifests::{ManifestError, load_path, parse_manifests},
};

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  clusterIP: 198.19.0.10
  ports:
  - name: http
    port: 80
    targetPort: 8080
    protocol: TCP
";

const SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [198.18.1.10]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
";

const LIST: &str = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns}
  spec:
    type: NodePort
    ports: [{port: 53, protocol: UDP, nodePort: 30053}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored}
";

const JSON_SERVICE: &str = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"j","namespace":"demo"},
"spec":{"type":"LoadBalancer","ports":[{"port":443,"targetPort":"https"}],
"loadBalancerSourceRanges":["198.18.0.0/15"]},
"status":{"loadBalancer":{"ingress":[{"ip":"198.19.50.1"}]}}}"#;

const JSON_LIST: &str = r#"{"apiVersion":"v1","kind":"ServiceList","items":[
{"metadata":{"name":"a"},"spec":{"ports":[{"port":80}]}},
{"metadata":{"name":"b"},"spec":{"clusterIP":"None"}}]}"#;

const JSON_ARRAY: &str = r#"[{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
"metadata":{"name":"s","labels":{"kubernetes.io/service-name":"a"}},"addressType":"IPv4",
"endpoints":[{"addresses":["198.18.1.1"]}]}]"#;

/// Pieces of YAML and JSON syntax (and values of the wrong type) to splice in.
const TOKENS: &[&str] = &[
    "\n",
    ":",
    ": ",
    "- ",
    "---\n",
    "...\n",
    "  ",
    "\t",
    "#",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "&a ",
    "*a",
    "!!binary ",
    "!Tag ",
    "|\n",
    ">\n",
    "? ",
    "null",
    "~",
    "true",
    "0x1F",
    "-1",
    "65536",
    "1e9",
    "\u{feff}",
    "é",
    "\u{0}",
    "kind: Service\n",
    "apiVersion: v1\n",
    "metadata:\n",
    "name: ",
    "items:\n",
    "ports: [{port: 0}]",
    "\"port\": \"http\"",
];

/// The texts mutations start from: the example files (read at run time,
/// so that new examples are covered) and the small documents above.
fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut texts: Vec<String> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect();
    assert!(
        !texts.is_empty(),
        "no example manifests in {}",
        dir.display()
    );
    texts.extend(
        [
            SERVICE,
            SLICE,
            LIST,
            JSON_SERVICE,
            JSON_LIST,
            JSON_ARRAY,
            &format!("{SERVICE}---\n{SLICE}"),
            &format!("{JSON_SERVICE}\n{JSON_ARRAY}"),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    texts
}

/// One change to a text's bytes; positions are fractions of its length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(f64, u8),
    Replace(f64, u8),
    Insert(f64, u8),
    Splice(f64, usize),
    Delete(f64, usize),
    Duplicate(f64, usize),
    Truncate(f64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 0..8u8).prop_map(|(a, b)| Mutation::FlipBit(a, b)),
        (at.clone(), any::<u8>()).prop_map(|(a, b)| Mutation::Replace(a, b)),
        (at.clone(), any::<u8>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (at.clone(), 0..TOKENS.len()).prop_map(|(a, t)| Mutation::Splice(a, t)),
        (at.clone(), 1..16usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (at.clone(), 1..64usize).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        at.prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    let pos = |len: usize, f: f64| ((len as f64) * f) as usize;
    for m in mutations {
        let len = b.len();
        match m {
            Mutation::FlipBit(f, bit) if len > 0 => b[pos(len, *f).min(len - 1)] ^= 1 << bit,
            Mutation::Replace(f, v) if len > 0 => b[pos(len, *f).min(len - 1)] = *v,
            Mutation::Insert(f, v) => b.insert(pos(len, *f), *v),
            Mutation::Splice(f, t) => {
                let at = pos(len, *f);
                b.splice(at..at, TOKENS[*t].bytes());
            }
            Mutation::Delete(f, n) => {
                let at = pos(len, *f);
                b.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(f, n) => {
                let at = pos(len, *f);
                let piece = b[at..(at + n).min(len)].to_vec();
                b.splice(at..at, piece);
            }
            Mutation::Truncate(f) => b.truncate(pos(len, *f)),
            _ => {}
        }
    }
    b
}

/// Parsed objects are named and namespaced; errors are placed at a line
/// of the text.
fn check_text(text: &str) -> Result<(), TestCaseError> {
    match parse_manifests(text) {
        Ok(objects) => check_objects(&objects),
        Err(ManifestError::Parse {
            path,
            line,
            message,
            ..
        }) => {
            prop_assert!(path.is_none(), "a text has no path: {path:?}");
            check_line(text, line, &message)
        }
        Err(e) => Err(TestCaseError::fail(format!("not a parse error: {e}"))),
    }
}

fn check_objects(objects: &[Object]) -> Result<(), TestCaseError> {
    for o in objects {
        let meta = o.meta();
        prop_assert!(
            meta.name.as_deref().is_some_and(|n| !n.is_empty()),
            "an object without a name: {meta:?}"
        );
        prop_assert!(
            meta.namespace.as_deref().is_some_and(|n| !n.is_empty()),
            "an object without a namespace: {meta:?}"
        );
    }
    Ok(())
}

fn check_line(text: &str, line: Option<usize>, message: &str) -> Result<(), TestCaseError> {
    let Some(line) = line else {
        return Err(TestCaseError::fail(format!(
            "error without a line: {message}"
        )));
    };
    // Line breaks as YAML counts them (libyaml, YAML 1.1: CR, LF, CRLF,
    // NEL, LS, PS); the parser may point just past the last line.
    let mut chars = text.chars().peekable();
    let mut breaks = 0;
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => breaks += 1,
            _ => {}
        }
    }
    let lines = breaks + 2;
    prop_assert!(
        (1..=lines).contains(&line),
        "line {line} outside the text's {lines} lines: {message}"
    );
    Ok(())
}

/// Writes `bytes` to a fresh file and reads it with [`load_path`]: the
/// objects, or an error naming the file (and the line, for a parse error;
/// bytes that are not UTF-8 cannot be read as text at all).
fn check_file(bytes: &[u8], ext: &str) -> Result<(), TestCaseError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "svcnat-manifests-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| TestCaseError::fail(format!("tmp: {e}")))?;
    let file = dir.join(format!("m.{ext}"));
    std::fs::write(&file, bytes).map_err(|e| TestCaseError::fail(format!("write: {e}")))?;
    let result = load_path(&file);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(objects) => check_objects(&objects),
        Err(ManifestError::Parse {
            path,
            line,
            message,
            ..
        }) => {
            prop_assert_eq!(path.as_deref(), Some(file.as_path()));
            let text = String::from_utf8_lossy(bytes);
            check_line(&text, line, &message)
        }
        Err(ManifestError::Io { path, source }) => {
            prop_assert_eq!(path.as_path(), file.as_path());
            prop_assert!(
                std::str::from_utf8(bytes).is_err(),
                "read error on a UTF-8 file: {source}"
            );
            Ok(())
        }
    }
}

/// Cases per property: 600, or `SVCNAT_FUZZ_CASES` for a longer run.
fn cases() -> u32 {
    std::env::var("SVCNAT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn mutated_manifests_parse_or_fail_at_a_line(
        seed in 0..64usize,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let text = &seeds[seed % seeds.len()];
        let bytes = apply(text, &mutations);
        check_text(&String::from_utf8_lossy(&bytes))?;
        let ext = if text.trim_start().starts_with(['{', '[']) { "json" } else { "yaml" };
        check_file(&bytes, ext)?;
    }

    #[test]
    fn random_texts_parse_or_fail_at_a_line(
        text in prop_oneof![
            any::<String>(),
            prop::collection::vec(prop::sample::select(TOKENS), 0..40)
                .prop_map(|t| t.concat()),
            "[ -~\n]{0,200}",
        ],
    ) {
        check_text(&text)?;
        check_file(text.as_bytes(), "yaml")?;
    }

    #[test]
    fn unmutated_seeds_parse(seed in 0..64usize) {
        let seeds = seeds();
        let text = &seeds[seed % seeds.len()];
        let objects = parse_manifests(text)
            .map_err(|e| TestCaseError::fail(format!("a valid seed fails: {e}")))?;
        prop_assert!(!objects.is_empty(), "a valid seed gives no objects");
        check_objects(&objects)?;
    }
}

/// The smallest text the property test found (`deploy/examples/external.yaml`
/// with four bytes deleted): a float where a string goes, once reported
/// without a line.
#[test]
fn a_type_error_of_a_plain_scalar_has_a_line() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: external\nspec:\n  \
                clusterIPs: [1980.80]\n";
    match parse_manifests(text) {
        Err(ManifestError::Parse { line, message, .. }) => {
            assert_eq!(line, Some(6), "{message}");
        }
        other => panic!("want a parse error at line 6, got {other:?}"),
    }
}
