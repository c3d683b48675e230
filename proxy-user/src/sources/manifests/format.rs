//! Which format a text is in: YAML or JSON.

use std::path::Path;

/// The text format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON when the text starts with `{` or `[`, else YAML.
    pub(super) fn sniff(text: &str) -> Self {
        match text.trim_start().as_bytes().first() {
            Some(b'{' | b'[') => Self::Json,
            _ => Self::Yaml,
        }
    }

    /// By extension (`.json`, `.yaml`, `.yml`), else by content.
    pub(super) fn of(path: &Path, text: &str) -> Self {
        let ext = path
            .extension()
            .and_then(|ext| ext.to_str())
            .unwrap_or_default();
        if ext.eq_ignore_ascii_case("json") {
            Self::Json
        } else if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") {
            Self::Yaml
        } else {
            Self::sniff(text)
        }
    }
}

/// The largest manifest file read: a bigger one is an error, not read.
pub(super) const MAX_FILE_BYTES: u64 = 64 << 20;

/// Deepest nesting of sequences and mappings in a document. A Kubernetes
/// object nests a dozen levels; a deeper text is an attack on the stack.
pub(super) const MAX_DEPTH: usize = 64;

/// Documents in one text (`---` storms).
pub(super) const MAX_DOCUMENTS: usize = 100_000;

/// Nodes (scalars, sequences, mappings) in one text, aliases expanded: about
/// 100,000 Services in one file; far above what 64 MiB of plain text can
/// hold only through aliases (a "billion laughs" text).
pub(super) const MAX_NODES: usize = 8_000_000;

/// Events an alias may replay in one text, all aliases together: an alias
/// costs what it expands to, so a small text cannot grow without bound.
pub(super) const MAX_ALIAS_REPLAY: usize = 1_000_000;

/// How YAML is read: parse budgets against hostile texts, the parser's
/// message without a source snippet (the place goes in front of it), and
/// repeated keys handed to [`super::track`], which names and places them
/// the same way in YAML and JSON.
pub(super) fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_documents: MAX_DOCUMENTS,
            max_nodes: MAX_NODES,
            max_events: 2 * MAX_NODES,
            // Many aliases of one anchor (a spec shared by a list of
            // Services) are fine; what they expand to is bounded below.
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_REPLAY,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        with_snippet: false,
    }
}
