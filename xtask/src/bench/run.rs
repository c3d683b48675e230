//! What one bench run measures ([`Plan`]), running the measurement
//! programs and keeping the commands run ([`Log`]), and the facts about the
//! machine and the tree that head the report ([`Facts`]).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::Cmd;

/// What one run measures.
pub(super) struct Plan {
    pub(super) quick: bool,
    pub(super) packet_repeat: u32,
    pub(super) packet_sizes: Vec<u32>,
    pub(super) sync_sizes: Vec<u32>,
    pub(super) sync_changes: u32,
    pub(super) e2e_args: Vec<String>,
    /// [`Plan::e2e_args`] on IPv6.
    pub(super) e2e6_args: Vec<String>,
    pub(super) shared_args: Vec<String>,
    /// [`Plan::e2e_args`] from the node's own namespace (`--from node`:
    /// svcnat's socket hooks against kube-proxy's `OUTPUT` rules), fewer
    /// sizes.
    pub(super) host_args: Vec<String>,
}

impl Plan {
    pub(super) fn new(quick: bool) -> Self {
        let mut plan = Self::ipv4(quick);
        plan.e2e6_args = plan.e2e_args.clone();
        plan.e2e6_args
            .extend(["--family", "ipv6"].map(String::from));
        plan.host_args = plan.e2e_args.clone();
        let sizes = plan
            .host_args
            .iter()
            .position(|a| a == "--sizes")
            .map(|i| i + 1);
        if let Some(i) = sizes {
            plan.host_args[i] = if quick { "1" } else { "1,1000" }.to_string();
        }
        plan.host_args.extend(["--from", "node"].map(String::from));
        plan
    }

    fn ipv4(quick: bool) -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        if quick {
            Self {
                quick,
                packet_repeat: 100_000,
                packet_sizes: vec![1, 1_000],
                sync_sizes: vec![1_000],
                sync_changes: 200,
                e2e_args: strings(&[
                    "--sizes",
                    "1,100",
                    "--duration",
                    "1",
                    "--warmup",
                    "0.2",
                    "--threads",
                    "4",
                    "--iperf-seconds",
                    "1",
                    "--rounds",
                    "1",
                    "--changes",
                    "3",
                ]),
                e2e6_args: Vec::new(),
                host_args: Vec::new(),
                shared_args: strings(&[
                    "--shared-backends",
                    "--sizes",
                    "100",
                    "--columns",
                    "svcnat,iptables,nftables",
                    "--duration",
                    "1",
                    "--warmup",
                    "0.2",
                    "--threads",
                    "4",
                    "--iperf-seconds",
                    "0",
                    "--rounds",
                    "1",
                    "--changes",
                    "0",
                ]),
            }
        } else {
            Self {
                quick,
                packet_repeat: 1_000_000,
                packet_sizes: vec![1, 1_000, 10_000, 100_000],
                sync_sizes: vec![1_000, 10_000, 100_000],
                sync_changes: 200,
                e2e_args: strings(&[
                    "--sizes",
                    "1,1000,10000",
                    "--duration",
                    "3",
                    "--warmup",
                    "0.5",
                    "--threads",
                    "4",
                    "--iperf-seconds",
                    "3",
                    "--rounds",
                    "5",
                    "--changes",
                    "5",
                ]),
                e2e6_args: Vec::new(),
                host_args: Vec::new(),
                shared_args: strings(&[
                    "--shared-backends",
                    "--sizes",
                    "1000",
                    "--columns",
                    "svcnat,iptables,nftables",
                    "--duration",
                    "3",
                    "--warmup",
                    "0.5",
                    "--threads",
                    "4",
                    "--iperf-seconds",
                    "0",
                    "--rounds",
                    "1",
                    "--changes",
                    "0",
                ]),
            }
        }
    }
}

pub(super) fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The commands run for the report, as shell lines relative to the
/// workspace root.
pub(super) struct Log {
    pub(super) root: String,
    pub(super) commands: Vec<String>,
}

impl Log {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_string_lossy().into_owned(),
            commands: Vec::new(),
        }
    }

    /// Records `line` with the workspace root left out: `(cd ROOT && X)`
    /// becomes `X`, `ROOT/path` becomes `path`.
    pub(super) fn record(&mut self, line: &str) {
        let cd = format!("(cd {} && ", self.root);
        let line = match line.strip_prefix(&cd).and_then(|l| l.strip_suffix(')')) {
            Some(inner) => inner.to_string(),
            None => line.to_string(),
        };
        self.commands
            .push(line.replace(&format!("{}/", self.root), ""));
    }

    /// Echoes and runs `program args`, stderr shown as it comes, stdout
    /// captured and returned; fails when the program fails.
    pub(super) fn capture(&mut self, program: &str, args: &[String]) -> Result<String> {
        let line = Cmd::new(program).args(args).display();
        eprintln!("$ {line}");
        self.record(&line);
        self.run_output(program, args, &line)
    }

    fn run_output(&mut self, program: &str, args: &[String], line: &str) -> Result<String> {
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot start `{line}`"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            eprint!("{stdout}");
            bail!("`{line}` failed ({})", out.status);
        }
        Ok(stdout)
    }
}

/// Facts about the machine and the tree.
pub(super) struct Facts {
    pub(super) date: String,
    pub(super) commit: String,
    pub(super) nproc: usize,
    pub(super) mem_gib: f64,
    pub(super) cpu: String,
    pub(super) kernel: String,
    pub(super) tools: Vec<(&'static str, String)>,
    pub(super) load_start: String,
    pub(super) load_end: String,
}

fn probe(program: &str, args: &[&str]) -> String {
    Cmd::new(program)
        .args(args)
        .probe()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

impl Facts {
    pub(super) fn collect(root: &Path, load_start: String) -> Self {
        let meminfo = read_trim("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let cpu = read_trim("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let root_s = root.to_string_lossy().into_owned();
        let mut commit = probe("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"]);
        // Read-only check for uncommitted changes (diff-index does not write the index).
        let dirty = Cmd::new("git")
            .args(["-C", &root_s, "diff-index", "--quiet", "HEAD", "--"])
            .probe()
            .is_none();
        if dirty && commit != "unknown" {
            commit.push_str(" (with uncommitted changes)");
        }
        Self {
            date: probe("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            commit,
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            mem_gib: mem_kib / 1024.0 / 1024.0,
            cpu,
            kernel: probe("uname", &["-r"]),
            tools: vec![
                ("iptables", probe("iptables", &["-V"])),
                ("nft", probe("nft", &["-v"])),
                ("iperf3", probe("iperf3", &["--version"])),
                ("bpftool", probe("bpftool", &["version"])),
            ],
            load_start,
            load_end: read_trim("/proc/loadavg"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_recorded_relative_to_the_root() {
        let mut log = Log::new(Path::new("/w/m"));
        log.record("(cd /w/m && cargo build --manifest-path /w/m/Cargo.toml)");
        log.record("/w/m/target/release/examples/x 1 2");
        assert_eq!(
            log.commands,
            [
                "cargo build --manifest-path Cargo.toml",
                "target/release/examples/x 1 2"
            ]
        );
    }
}
