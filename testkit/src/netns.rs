//! Network namespaces for tests, benchmarks and the demo (a test that uses
//! them needs [`crate::skip::Needs::netns`]).
//!
//! A [`NetNs`] is a named namespace (`ip netns add`) deleted when dropped, so
//! a failing or panicking test still cleans up. Code runs inside one either
//! in a thread that has `setns`-ed into it ([`NetNs::run`]), or as a child
//! process (`ip netns exec` for ordinary programs; `nsenter --net` for
//! anything that needs the host's `/sys/fs/bpf`, see TOOLCHAIN.md).

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Sysctls for a namespace that is to carry IPv6, set before it gets any
/// interface: IPv6 addresses (also the link-local ones of new interfaces)
/// are usable at once, without duplicate address detection; and hosts
/// ignore ICMPv6 redirects (IPv6 has no `send_redirects`: a node forwarding
/// out of the interface a packet came in on tells the sender of a shorter
/// path, which would take the node out of the path a test set up).
pub const IPV6_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.default.accept_redirects", "0"),
];

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

/// A unique short tag for names of namespaces and interfaces (interface
/// names are limited to 15 bytes): the process id and a counter.
pub fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:x}{:x}",
        std::process::id() % 0xffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl NetNs {
    /// Creates namespace `name` (a stale one of that name is deleted first)
    /// with its loopback up.
    pub fn new(name: &str) -> io::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run_ok(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Runs `ip -n NAME ARGS...` and fails with its stderr if it fails.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets a sysctl inside the namespace (`ip netns exec` gives `sysctl` the
    /// namespace's own /proc/sys/net).
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<Output> {
        run_ok(Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]))
    }

    /// Sets several sysctls inside the namespace with one `sysctl` run, in
    /// order.
    pub fn sysctls(&self, pairs: &[(&str, &str)]) -> io::Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "sysctl", "-qw"]);
        for (key, value) in pairs {
            cmd.arg(format!("{key}={value}"));
        }
        run_ok(&mut cmd)
    }

    /// A command that runs `program` inside the namespace with the host's
    /// mounts (so /sys/fs/bpf is the host's): `nsenter --net=PATH program`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg(program);
        c
    }

    /// Runs `f` in a new thread that has entered this namespace, and returns
    /// its result. Sockets, interface lookups and netlink in `f` see the
    /// namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        spawn_in(self.path(), f)
            .join()
            .map_err(|_| io::Error::other("thread in namespace panicked"))?
    }

    /// Spawns a thread inside this namespace running `f` (for servers that
    /// run while the test goes on).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<io::Result<T>> {
        spawn_in(self.path(), f)
    }
}

/// Spawns a thread that enters the network namespace bound at `path` and
/// runs `f` there.
pub fn spawn_in<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<io::Result<T>> {
    std::thread::spawn(move || -> io::Result<T> {
        enter(&path)?;
        Ok(f())
    })
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace bound at `path`.
pub fn enter(path: &std::path::Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: setns with a valid namespace fd affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs a command; an unsuccessful exit becomes an error carrying its stderr.
pub fn run_ok(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// A veth pair: `host` end in namespace `host_ns` (None: the caller's), the
/// other end moved into `peer_ns` and renamed `peer_name`.
pub fn veth(host_ns: &NetNs, host: &str, peer_ns: &NetNs, peer_name: &str) -> io::Result<()> {
    let tmp = format!("t{}", unique_tag());
    host_ns.ip(&["link", "add", host, "type", "veth", "peer", "name", &tmp])?;
    host_ns.ip(&["link", "set", &tmp, "netns", peer_ns.name()])?;
    peer_ns.ip(&["link", "set", &tmp, "name", peer_name])?;
    host_ns.ip(&["link", "set", host, "up"])?;
    peer_ns.ip(&["link", "set", peer_name, "up"])?;
    Ok(())
}
