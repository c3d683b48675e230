//! Hostile texts: each is refused with a placed error within the parse
//! budgets (no stack overflow, no memory blow-up), and the same reader then
//! reads good texts as before.

use super::{TempDir, key, keys, parse};
use crate::sources::{
    Kind,
    manifests::{
        ManifestError,
        format::{MAX_DEPTH, MAX_DOCUMENTS, MAX_FILE_BYTES},
        load_path, parse_manifests,
    },
};

const GOOD: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  clusterIP: 198.19.0.10\n  ports: [{port: 80}]\n";

/// The parse error of `text`, which must be placed at a line.
fn refused(name: &str, text: &str) -> String {
    match parse_manifests(text) {
        Err(ManifestError::Parse {
            line: Some(_),
            message,
            ..
        }) => message,
        other => panic!("{name}: want a placed parse error, got {other:?}"),
    }
}

/// "Billion laughs": ten aliases of ten aliases ... nine levels deep, a
/// billion strings from a text of under a kilobyte, inside a Service.
fn laughs() -> String {
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: lol\n  annotations:\n    l0: &l0 lol\n",
    );
    for level in 1..=9 {
        let refs = vec![format!("*l{}", level - 1); 10].join(", ");
        text.push_str(&format!("    l{level}: &l{level} [{refs}]\n"));
    }
    text
}

#[test]
fn an_alias_bomb_is_refused_within_the_replay_budget() {
    let text = laughs();
    assert!(text.len() < 1024, "{} bytes", text.len());
    let message = refused("laughs", &text);
    assert!(
        message.contains("budget") || message.contains("alias"),
        "{message}"
    );
    // Aliases as such are fine: a few, expanding to little.
    let small = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: &l {app: web}\nspec:\n  selector: *l\n  ports: [{port: 80}]\n";
    let objects = parse(small);
    assert_eq!(keys(&objects), [key(Kind::Service, "default", "web")]);
    // And the budget counts what aliases expand to, not how many there are
    // per anchor: a list of a thousand Services sharing one anchored spec
    // reads.
    let mut shared = String::from(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s0}\n  spec: &spec\n    selector: {app: web, tier: front}\n    ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]\n",
    );
    for n in 1..1000 {
        shared.push_str(&format!(
            "- {{apiVersion: v1, kind: Service, metadata: {{name: s{n}}}, spec: *spec}}\n"
        ));
    }
    assert_eq!(parse(&shared).len(), 1000);
}

#[test]
fn deep_nesting_is_refused_past_the_depth_budget() {
    // Flow YAML just past the budget and far past it; JSON far past it
    // (`serde_json` stops at 128 levels).
    for depth in [MAX_DEPTH + 1, 100_000] {
        let flow = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: deep}}\nspec:\n  x: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let message = refused("flow", &flow);
        assert!(
            ["budget", "depth", "recursion"]
                .iter()
                .any(|word| message.contains(word)),
            "{message}"
        );
        let json = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {{\"name\": \"deep\"}}, \"x\": {}{}}}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        if depth > 128 {
            refused("json", &json);
        }
    }
    let mut block = String::from("apiVersion: v1\nkind: Service\nmetadata: {name: deep}\n");
    for level in 0..=MAX_DEPTH {
        block.push_str(&format!("{}k{level}:\n", "  ".repeat(level)));
    }
    refused("block", &block);
    // Kubernetes objects nest far less: a Service with its deepest fields
    // (a dozen levels) reads.
    assert_eq!(parse(GOOD).len(), 1);
}

#[test]
fn a_document_storm_is_refused_past_the_document_budget() {
    let storm = format!("{GOOD}{}", "---\na: 1\n".repeat(MAX_DOCUMENTS + 1));
    let message = refused("storm", &storm);
    assert!(
        message.contains("budget") || message.contains("ocument"),
        "{message}"
    );
}

/// Empty and null documents are skipped alike when a text is read and when
/// an error is placed: the error after them is placed at its own line.
#[test]
fn errors_after_empty_documents_are_placed_at_their_line() {
    let text = format!(
        "{GOOD}---\n---\n~\n---\n# nothing\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  ports: [{{port: eighty}}]\n"
    );
    match parse_manifests(&text) {
        Err(ManifestError::Parse {
            line: Some(line),
            message,
            ..
        }) => {
            assert_eq!(line, text.lines().count(), "{message}");
            assert!(message.starts_with("spec.ports[0].port: "), "{message}");
        }
        other => panic!("want a placed error, got {other:?}"),
    }
}

/// A file over the size limit is refused by name without being read; the
/// folder reads again as soon as it is gone, and a file just under the limit
/// is read.
#[test]
fn an_oversized_file_is_refused_by_name() {
    let dir = TempDir::new("oversized");
    dir.write("a-web.yaml", GOOD);
    let big = dir.write("b-big.yaml", "");
    let limit = usize::try_from(MAX_FILE_BYTES).expect("limit");
    // Comment lines: a text just under the limit is valid and read.
    let line = format!("#{}\n", "x".repeat(1022));
    std::fs::write(&big, line.repeat(limit / line.len())).expect("write");
    assert_eq!(load_path(&dir.0).expect("under the limit").len(), 1);
    std::fs::write(&big, line.repeat(limit / line.len() + 1)).expect("write");
    match load_path(&dir.0) {
        Err(error @ ManifestError::Parse { .. }) => {
            let text = error.to_string();
            assert!(text.starts_with(&big.display().to_string()), "{text}");
            assert!(text.contains("larger than 64 MiB"), "{text}");
        }
        other => panic!("want the big file refused, got {other:?}"),
    }
    std::fs::remove_file(&big).expect("remove");
    assert_eq!(
        keys(&load_path(&dir.0).expect("the rest")),
        [key(Kind::Service, "demo", "web")]
    );
}
