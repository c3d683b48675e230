//! Running commands and small facts about the machine.
//!
//! Every command xtask runs for real is echoed first (to stderr, like cargo's
//! own progress), with the environment changes xtask makes for it, so that a
//! failing step can be copied and re-run by hand.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// A command plus a readable account of what xtask changed in its environment.
pub struct Cmd {
    inner: Command,
    /// `K=V`, `K=DIR:$K` or `-u K`, in the order they were set.
    shown_env: Vec<String>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            inner: Command::new(program),
            shown_env: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    pub fn dir(mut self, dir: &Path) -> Self {
        self.inner.current_dir(dir);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref();
        self.shown_env
            .push(format!("{key}={}", quote(&value.to_string_lossy())));
        self.inner.env(key, value);
        self
    }

    /// Sets `key` without echoing it (for probes whose setting is not news).
    pub fn env_quiet(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.inner.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        if env::var_os(key).is_some() {
            self.shown_env.push(format!("-u {key}"));
        }
        self.inner.env_remove(key);
        self
    }

    /// Puts `dir` first in the `:`-separated list `key` (PATH, LD_LIBRARY_PATH).
    pub fn env_prepend(mut self, key: &str, dir: &Path) -> Self {
        let mut value = OsString::from(dir);
        if let Some(old) = env::var_os(key).filter(|old| !old.is_empty()) {
            value.push(":");
            value.push(old);
            self.shown_env
                .push(format!("{key}={}:${key}", quote(&dir.to_string_lossy())));
        } else {
            self.shown_env
                .push(format!("{key}={}", quote(&dir.to_string_lossy())));
        }
        self.inner.env(key, value);
        self
    }

    /// The command as a shell line.
    pub fn display(&self) -> String {
        let mut line = String::new();
        if let Some(dir) = self.inner.get_current_dir() {
            line.push_str(&format!("(cd {} && ", quote(&dir.to_string_lossy())));
        }
        let removes = self.shown_env.iter().any(|e| e.starts_with("-u "));
        if removes {
            line.push_str("env ");
        }
        for e in &self.shown_env {
            line.push_str(e);
            line.push(' ');
        }
        line.push_str(&quote(&self.inner.get_program().to_string_lossy()));
        for arg in self.inner.get_args() {
            line.push(' ');
            line.push_str(&quote(&arg.to_string_lossy()));
        }
        if self.inner.get_current_dir().is_some() {
            line.push(')');
        }
        line
    }

    /// Echoes and runs the command; an error when it cannot start or fails.
    pub fn run(mut self) -> Result<()> {
        let line = self.display();
        eprintln!("$ {line}");
        let status = self
            .inner
            .status()
            .with_context(|| format!("cannot start `{line}`"))?;
        if !status.success() {
            bail!("`{line}` failed ({status})");
        }
        Ok(())
    }

    /// Runs the command silently and returns its stdout, or `None` when it
    /// cannot start or exits non-zero. For probes, not for work.
    pub fn probe(mut self) -> Option<String> {
        let out = self.inner.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the command silently and returns its stdout whatever its exit
    /// status (`dpkg-query` exits 1 when one of several packages is unknown
    /// yet still reports the others), or `None` when it cannot start.
    pub fn probe_any_status(mut self) -> Option<String> {
        let out = self.inner.output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Quotes `s` for a POSIX shell when needed; control characters (the `\x1f`
/// separators of `CARGO_ENCODED_RUSTFLAGS`) are shown as `$'..\x1f..'`.
fn quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_owned();
    }
    if s.chars().any(|c| c.is_control()) {
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\'' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The workspace root: xtask lives in `<root>/xtask`.
pub fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Where cargo puts build output for commands run in the workspace root.
pub fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        // Relative paths are taken from the workspace root, where xtask runs cargo.
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Whether this process runs with effective user id 0.
pub fn is_root() -> bool {
    // /proc/self/status: "Uid:\t<real>\t<effective>\t<saved>\t<fs>".
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The first executable file called `name` in `$PATH`, then in the sbin
/// folders that a non-root `$PATH` often lacks.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_leaves_plain_words_alone() {
        assert_eq!(quote("build-std=core"), "build-std=core");
        assert_eq!(quote("/a/b:c"), "/a/b:c");
    }

    #[test]
    fn quote_escapes_spaces_quotes_and_control_characters() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("-C\x1fdebuginfo=2"), r"$'-C\x1fdebuginfo=2'");
    }

    #[test]
    fn display_shows_environment_changes() {
        let cmd = Cmd::new("cargo")
            .arg("+nightly")
            .env("K", "v w")
            .env_prepend("XTASK_TEST_UNSET_VARIABLE", Path::new("/x"));
        assert_eq!(
            cmd.display(),
            "K='v w' XTASK_TEST_UNSET_VARIABLE=/x cargo +nightly"
        );
    }
}
