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
