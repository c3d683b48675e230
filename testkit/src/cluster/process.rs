//! Child processes of the cluster (agents, servers, clients): each in its
//! own process group, killed with it on drop, with a time limit.

use std::{
    fs::{self, OpenOptions},
    io::Read,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A child process in its own process group (so a terminal's Ctrl-C does not
/// reach it and its own children die with it), output to files; killed
/// with its group on drop.
#[derive(Debug)]
pub struct Proc {
    pub(super) what: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    pub(super) stderr: PathBuf,
}

/// A finished [`Proc`].
#[derive(Clone, Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to these files (the same file is
    /// fine: both append).
    pub fn spawn(cmd: &mut Command, what: &str, stdout: &Path, stderr: &Path) -> Result<Self> {
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open {}", p.display()))
        };
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(open(stdout)?)
            .stderr(open(stderr)?)
            .spawn()
            .with_context(|| format!("start {what}: {cmd:?}"))?;
        Ok(Self {
            what: what.to_string(),
            child: Some(child),
            status: None,
            stdout: stdout.to_path_buf(),
            stderr: stderr.to_path_buf(),
        })
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to its process group.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signals the process group this Proc created; its leader
            // is not reaped yet (the Child is held), so the id is ours.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.poll().is_none()
    }

    pub(super) fn poll(&mut self) -> Option<ExitStatus> {
        if let Some(c) = &mut self.child
            && let Ok(Some(st)) = c.try_wait()
        {
            self.status = Some(st);
            self.child = None;
        }
        self.status
    }

    /// Waits until it exits, at most `limit`.
    pub fn wait_within(&mut self, limit: Duration) -> Result<Finished> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.poll() {
                return Ok(Finished {
                    status,
                    stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
                    stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
                });
            }
            if start.elapsed() > limit {
                let err = fs::read_to_string(&self.stderr).unwrap_or_default();
                self.kill();
                bail!(
                    "{} still ran after {limit:?}; killed. stderr: {err}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL to its group, then reaps it.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take()
            && let Ok(st) = c.wait()
        {
            self.status = Some(st);
        }
    }

    /// SIGTERM to its group, waits up to `grace`, then SIGKILL. Returns how
    /// it exited.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Some(st) = self.poll() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` (in its own process group) and collects its output; kills it
/// and fails if it runs longer than `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<std::process::Output> {
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {cmd:?}"))?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > limit {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: the group of a child we have not reaped yet.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.wait();
            bail!("{cmd:?} still ran after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}
