//! Why manifests could not be read, and where: [`ManifestError`] as callers
//! see it, and the parser's place of an error before the file it came from is
//! known.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A text is not valid YAML/JSON, or holds an object that is not valid.
    #[error("{}: {message}", Place { path: path.as_deref(), line: *line, column: *column })]
    Parse {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// 1-based column, when the parser knows it.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// `path:line:column`, each part when known.
struct Place<'a> {
    path: Option<&'a Path>,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path {
            Some(path) => write!(f, "{}", path.display())?,
            None => f.write_str("manifest")?,
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// A parse error before the file it came from is known.
#[derive(Debug)]
pub(super) struct RawError {
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

impl RawError {
    pub(super) fn in_file(self, path: Option<&Path>) -> ManifestError {
        ManifestError::Parse {
            path: path.map(Path::to_path_buf),
            line: self.line,
            column: self.column,
            message: self.message,
        }
    }

    /// A YAML error, placed when the parser knows where. The message is
    /// the parser's own text without its place (shown in front instead).
    pub(super) fn from_yaml(error: &serde_saphyr::Error) -> Self {
        use serde_saphyr::MessageFormatter as _;
        let location = error.location();
        let place = |n: u64| usize::try_from(n).ok().filter(|n| *n > 0);
        let line = location.and_then(|l| place(l.line()));
        let column = line.and(location.and_then(|l| place(l.column())));
        let message = serde_saphyr::DefaultMessageFormatter
            .format_message(error.without_snippet())
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Self {
            line,
            column,
            message,
        }
    }

    /// The same error, placed at `location` when it has no place itself.
    pub(super) fn or_at(mut self, location: Option<serde_saphyr::Location>) -> Self {
        let place = |n: u64| usize::try_from(n).ok().filter(|n| *n > 0);
        if self.line.is_none()
            && let Some(location) = location
            && let Some(line) = place(location.line())
        {
            self.line = Some(line);
            self.column = place(location.column());
        }
        self
    }

    /// A JSON error, placed when the parser knows where.
    pub(super) fn from_json(error: &serde_json::Error) -> Self {
        let line = (error.line() > 0).then_some(error.line());
        let column = line.map(|_| error.column());
        Self::located(error.to_string(), line, column)
    }

    /// Drops the parser's own " at line L column C" suffix: the place is shown
    /// in front of the message instead.
    fn located(message: String, line: Option<usize>, column: Option<usize>) -> Self {
        let message = match (line, column) {
            (Some(line), Some(column)) => {
                let suffix = format!(" at line {line} column {column}");
                message
                    .strip_suffix(&suffix)
                    .map(str::to_owned)
                    .unwrap_or(message)
            }
            _ => message,
        };
        Self {
            line,
            column,
            message,
        }
    }

    pub(super) fn unlocated(message: String) -> Self {
        Self {
            line: None,
            column: None,
            message,
        }
    }
}
