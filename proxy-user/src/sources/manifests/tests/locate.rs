//! Errors are placed at the line (and column) of what is wrong.

use crate::sources::manifests::{ManifestError, parse_manifests};

/// The 1-based line of the first line of `text` containing `marker`.
fn line_of(text: &str, marker: &str) -> usize {
    text.lines()
        .position(|line| line.contains(marker))
        .map(|index| index + 1)
        .unwrap_or_else(|| panic!("marker {marker:?} not in the text"))
}

struct ErrorCase {
    name: &'static str,
    text: &'static str,
    /// A text on the line the error must point at.
    marker: &'static str,
    /// A text the message must contain.
    message: &'static str,
}

#[test]
fn errors_point_at_the_line() {
    let cases = [
        ErrorCase {
            name: "YAML syntax error in the second document",
            text: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n   bad: indent # here\n",
            marker: "# here",
            message: "mapping",
        },
        ErrorCase {
            name: "wrong type in the second document",
            text: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports:\n  - port: eighty # here\n",
            marker: "# here",
            message: "spec.ports[0].port",
        },
        ErrorCase {
            name: "wrong type in a list item",
            text: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {name: b}\n  addressType: IPv4\n  endpoints: {} # here\n",
            marker: "# here",
            message: "endpoints",
        },
        ErrorCase {
            name: "wrong type in metadata",
            text: "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: a\n  labels: [x] # here\n",
            marker: "# here",
            message: "labels",
        },
        ErrorCase {
            name: "no kind",
            text: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nmetadata: {name: b} # here\n",
            marker: "# here",
            message: "no `kind`",
        },
        ErrorCase {
            name: "no apiVersion",
            text: "kind: Service # here\nmetadata: {name: b}\n",
            marker: "# here",
            message: "no `apiVersion`",
        },
        ErrorCase {
            name: "no name in a list item",
            text: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1 # here\n  kind: Service\n  metadata: {namespace: x}\n",
            marker: "# here",
            message: "without metadata.name",
        },
        ErrorCase {
            name: "a document that is not an object",
            text: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\njust text # here\n",
            marker: "# here",
            message: "expected a Kubernetes object",
        },
        ErrorCase {
            name: "wrong type in an element of a bare YAML sequence",
            text: "- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n  spec: {ports: [{port: z}]} # here\n",
            marker: "# here",
            message: "port",
        },
        ErrorCase {
            name: "JSON wrong type in a list item",
            text: "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n {\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}},\n {\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": 5}}]}\n",
            marker: "\"name\": 5",
            message: "invalid type: integer",
        },
        ErrorCase {
            name: "JSON syntax error",
            text: "{\"apiVersion\": \"v1\",\n \"kind\": \"Service\",\n \"metadata\": {\"name\": \"a\"},,\n}\n",
            marker: ",,",
            message: "",
        },
        ErrorCase {
            name: "JSON wrong type in the second object",
            text: "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}}\n{\"apiVersion\": \"v1\", \"kind\": \"Service\",\n \"metadata\": {\"name\": \"b\"},\n \"spec\": {\"ports\": [{\"port\": \"eighty\"}]}}\n",
            marker: "eighty",
            message: "invalid type",
        },
    ];
    for case in cases {
        let error = match parse_manifests(case.text) {
            Ok(objects) => panic!("{}: no error, got {objects:?}", case.name),
            Err(error) => error,
        };
        let ManifestError::Parse {
            line,
            column,
            message,
            ..
        } = &error
        else {
            panic!("{}: not a parse error: {error:?}", case.name);
        };
        assert_eq!(
            *line,
            Some(line_of(case.text, case.marker)),
            "{}: {error}",
            case.name
        );
        assert!(column.is_some(), "{}: {error}", case.name);
        assert!(message.contains(case.message), "{}: {error}", case.name);
        assert!(
            error
                .to_string()
                .starts_with(&format!("manifest:{}:", line_of(case.text, case.marker))),
            "{}: {error}",
            case.name
        );
    }
}

/// A plain scalar that resolves to another type than its field (a float
/// where a string goes, as in `deploy/examples/external.yaml` with four
/// bytes deleted) is rejected, and placed at the value, in every kind the
/// source reads, in YAML and JSON, at a value or a key.
#[test]
fn type_errors_of_plain_scalars_point_at_the_value() {
    let minimal = "apiVersion: v1\nkind: Service\nmetadata:\n  name: external\nspec:\n  clusterIPs: [1980.80]\n";
    match parse_manifests(minimal) {
        Err(ManifestError::Parse {
            line,
            column,
            message,
            ..
        }) => {
            assert_eq!((line, column), (Some(6), Some(16)), "{message}");
            assert!(
                message.contains("spec.clusterIPs[0]")
                    && message.contains("invalid type: floating point `1980.8`, expected a string"),
                "{message}"
            );
        }
        other => panic!("want a parse error at 6:16, got {other:?}"),
    }
    // (name, text, marker on the line, text of the message)
    let cases = [
        (
            "integer name",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: 5 # here\n",
            "# here",
            "metadata.name: invalid type: integer",
        ),
        (
            "boolean in an EndpointSlice",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4\nendpoints:\n- addresses: [198.18.1.1]\n- addresses:\n  - true # here\n",
            "# here",
            "endpoints[1].addresses[0]: invalid type: boolean",
        ),
        (
            "integer key of labels",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: a\n  labels:\n    a: b\n    5: x # here\naddressType: IPv4\nendpoints: []\n",
            "# here",
            "invalid type: integer `5`, expected a string",
        ),
        (
            "float in a kind: List item",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n  spec:\n    ports: [{port: 80}]\n    clusterIP: 1.5 # here\n",
            "# here",
            "items[1].spec.clusterIP: invalid type: floating point",
        ),
        (
            "float in a ServiceList item behind a tag",
            "apiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: a}\n  spec: !tagged\n    externalIPs:\n    - 1.5e3 # here\n",
            "# here",
            "invalid type: floating point",
        ),
        (
            "null in a bare sequence",
            "- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n  spec: {ports: [{port: 80, protocol: ~}, {port: 81, name: [] }]} # here\n",
            "# here",
            "invalid type: sequence",
        ),
        (
            "JSON float in a list item",
            "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n {\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"},\n  \"spec\": {\"ports\": [{\"port\": 80}],\n   \"clusterIPs\": [1980.80]}}]}\n",
            "1980.80",
            "invalid type: floating point",
        ),
        (
            "JSON integer in the second EndpointSlice",
            "{\"apiVersion\": \"discovery.k8s.io/v1\", \"kind\": \"EndpointSlice\", \"metadata\": {\"name\": \"a\"}, \"addressType\": \"IPv4\", \"endpoints\": []}\n{\"apiVersion\": \"discovery.k8s.io/v1\", \"kind\": \"EndpointSlice\", \"metadata\": {\"name\": \"b\"}, \"addressType\": \"IPv4\",\n \"endpoints\": [{\"addresses\": [\"198.18.1.1\"], \"nodeName\": 7}]}\n",
            "nodeName",
            "invalid type: integer `7`",
        ),
    ];
    for (name, text, marker, expected) in cases {
        match parse_manifests(text) {
            Err(ManifestError::Parse {
                line,
                column,
                message,
                ..
            }) => {
                assert_eq!(line, Some(line_of(text, marker)), "{name}: {message}");
                assert!(column.is_some(), "{name}: {message}");
                assert!(message.contains(expected), "{name}: {message}");
            }
            other => panic!("{name}: want a parse error, got {other:?}"),
        }
    }
}

/// A key that a mapping repeats is an error naming the key and the path of
/// its mapping, placed at the second copy (YAML and JSON alike), whatever
/// the kind of the object; the last copy never silently wins.
#[test]
fn duplicate_keys_point_at_the_second_copy() {
    // (name, text, the text that starts at the second copy, its key, message)
    let cases = [
        (
            "YAML, not the first key of its mapping",
            "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: demo\n  name: a\n  name: b\n",
            "name: b",
            "name",
            "metadata: duplicate entry with key \"name\"",
        ),
        (
            "YAML, at the top of the document",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\nmetadata: {name: b}\n",
            "metadata: {name: b}",
            "metadata",
            "duplicate entry with key \"metadata\"",
        ),
        (
            "YAML, in a flow mapping of a list item",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a, labels: {x: '1', x: '2'}}\n",
            "x: '2'",
            "x",
            "items[0].metadata.labels: duplicate entry with key \"x\"",
        ),
        (
            "YAML, in a kind that is otherwise ignored",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: '1'\n  b: '2'\n  a: '3'\n",
            "a: '3'",
            "a",
            "data: duplicate entry with key \"a\"",
        ),
        (
            "JSON, in metadata",
            "{\"apiVersion\": \"v1\", \"kind\": \"Service\",\n \"metadata\": {\"namespace\": \"demo\", \"name\": \"a\",\n  \"name\": \"b\"}}\n",
            "\"name\": \"b\"",
            "\"name\"",
            "metadata: duplicate entry with key \"name\"",
        ),
        (
            "JSON, at the top of the second object of a stream",
            "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}}\n{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"b\"},\n \"spec\": {}, \"metadata\": {\"name\": \"c\"}}\n",
            "\"metadata\": {\"name\": \"c\"}",
            "\"metadata\"",
            "duplicate entry with key \"metadata\"",
        ),
        (
            "JSON, a bad value in the second copy",
            "{\"apiVersion\": \"v1\", \"kind\": \"Service\",\n \"metadata\": {\"name\": \"a\"},\n \"metadata\": {\"name\": 5}}\n",
            "\"metadata\": {\"name\": 5}",
            "\"metadata\"",
            "duplicate entry with key \"metadata\"",
        ),
        (
            "JSON, both copies on one line of a list item",
            "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}, \"kind\": \"Service\"}]}\n",
            "\"kind\": \"Service\"}]",
            "\"kind\"",
            "items[0]: duplicate entry with key \"kind\"",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, text, second, key, expected) in cases {
        assert!(second.starts_with(key), "{name}: bad case");
        let offset = text
            .find(second)
            .unwrap_or_else(|| panic!("{name}: {second:?} not in the text"));
        let line = text[..offset].matches('\n').count() + 1;
        let start = offset - text[..offset].rfind('\n').map_or(0, |nl| nl + 1) + 1;
        // On the key: at its first character (YAML) or its last (JSON).
        let on_key = start..start + key.len();
        match parse_manifests(text) {
            Err(
                error @ ManifestError::Parse {
                    line: Some(got_line),
                    column: Some(column),
                    ..
                },
            ) if got_line == line
                && on_key.contains(&column)
                && error.to_string() == format!("manifest:{line}:{column}: {expected}") => {}
            other => wrong.push(format!(
                "{name}: want manifest:{line}:{on_key:?}: {expected}, got {other:?}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
