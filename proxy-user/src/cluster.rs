//! A cluster on one machine, for end-to-end tests and the demo.
//!
//! Every piece is a network namespace this module creates and deletes:
//!
//! ```text
//!                      fabric namespace: bridge fab0 (198.18.0.0/24, no address)
//!          ┌──────────────────────┼───────────────────────┬──────────────┐
//!   node-a: eth0 198.18.0.10   node-b: eth0 198.18.0.11   ...     outside: eth0 198.18.0.200
//!     cni0 198.18.1.1/24         cni0 198.18.2.1/24                 default via node-a
//!     ├─ vp0 ── pod 198.18.1.x   ├─ vp0 ── pod 198.18.2.x
//!     └─ vp1 ── pod ...          └─ ...
//! ```
//!
//! Node `i` (0-based) is called `node-a`, `node-b`, ... (as the endpoints'
//! `nodeName` in `deploy/examples` spell them), has the address
//! `198.18.0.(10+i)` on the fabric and the pod range `198.18.(i+1).0/24`
//! behind a bridge `cni0` whose address is the pods' gateway. Nodes reach
//! the other nodes' pod ranges through those nodes' addresses (host-gateway
//! routing), forward, and send no ICMP redirects. A pod is a namespace whose
//! `eth0` is one end of a veth; the other end, `vpN` in the node, is enslaved
//! to `cni0`. svcnat attaches its TC programs to those `vp*` veths, not to
//! `cni0`: replies between pods of one node are bridged and never pass
//! `cni0`'s host side.
//!
//! Each node runs the real `svcnat run` (`nsenter --net`, so that it sees the
//! host's bpffs) with its own pin folder, all reading one manifests folder
//! that the test edits ([`Cluster::write_manifest`]). Servers (nginx,
//! dnsmasq, iperf3) and clients (curl, dig, iperf3) run in pods through
//! `ip netns exec`. Dropping the [`Cluster`] kills every process it started,
//! runs `svcnat cleanup` on every pin folder, deletes the namespaces and the
//! temporary folder, also when a test panics. Only 198.18.0.0/15 is used, and
//! nothing is added to the root namespace.
//!
//! Every interface on the fabric (the nodes' and the outside clients'
//! `eth0`) has TX checksum offload turned off: svcnat's XDP programs on the
//! nodes' `eth0` rewrite checksums incrementally and so need the complete
//! checksums a real wire delivers, while a veth otherwise hands frames over
//! with only the pseudo-header sum filled in (`CHECKSUM_PARTIAL`). More
//! outside clients can join the fabric ([`Cluster::add_outside`]), and an
//! outside client can send chosen addresses (an LB IP) to a chosen node
//! ([`Cluster::route_via_node`]).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::{Read, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;

use crate::netns::{self, NetNs, unique_tag, veth};

/// The glob of the pods' host-side veths (`--pod-interfaces`).
pub const POD_GLOB: &str = "vp*";
/// The source address a pod sees when it reaches itself through a service
/// (`--hairpin-address`; the agent's default is link-local).
pub const HAIRPIN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);
/// The outside client's address on the fabric.
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The fabric's network: nodes, outside clients (and free addresses, for
/// load-balancer IPs, between them).
pub const FABRIC_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// At most this many nodes (pod ranges 198.18.1.0/24 ..= 198.18.26.0/24).
pub const MAX_NODES: usize = 26;
/// Size of the file nginx serves at [`BIG_PATH`] (sparse, all zeros).
pub const BIG_FILE_BYTES: u64 = 64 << 20;
/// Where nginx serves the big file.
pub const BIG_PATH: &str = "/big";

/// How often wait loops look again.
const POLL: Duration = Duration::from_millis(20);

/// The name of node `i`: `node-a`, `node-b`, ...
pub fn node_name(i: usize) -> String {
    let letter = b"abcdefghijklmnopqrstuvwxyz"[i % 26] as char;
    format!("node-{letter}")
}

/// Node `i`'s address on the fabric: 198.18.0.(10+i).
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + i as u8)
}

/// The pods' gateway on node `i` (the address of its `cni0`): 198.18.(i+1).1.
pub fn pod_gateway(i: usize) -> Ipv4Addr {
    pod_addr(i, 1)
}

/// Address `host` in node `i`'s pod range: 198.18.(i+1).host.
pub fn pod_addr(i: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i as u8 + 1, host)
}

/// The node whose pod range holds `addr`, if any.
pub fn node_of_pod_addr(addr: Ipv4Addr, nodes: usize) -> Option<usize> {
    let o = addr.octets();
    (o[0] == 198 && o[1] == 18 && o[2] >= 1 && usize::from(o[2]) <= nodes)
        .then(|| usize::from(o[2]) - 1)
}

/// Finds `program` on PATH or in the sbin folders.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Turns TX checksum offload off on interface `ifname` of the calling
/// thread's network namespace (`ethtool -K IF tx off`, by ioctl: ethtool
/// may not be installed). See the module documentation for why.
fn tx_checksum_offload_off(ifname: &str) -> std::io::Result<()> {
    /// `struct ethtool_value` of `<linux/ethtool.h>`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    /// `ETHTOOL_STXCSUM`: set TX checksum offload.
    const SET_TX_CHECKSUM: u32 = 0x17;
    let name = ifname.as_bytes();
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::other(format!(
            "interface name too long: {ifname}"
        )));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    let mut value = EthtoolValue {
        cmd: SET_TX_CHECKSUM,
        data: 0,
    };
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `req` names the interface and points at `value`; both outlive
    // the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCETHTOOL,
            &raw mut req,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// [`tx_checksum_offload_off`] for `ifname` in namespace `ns`.
fn no_tx_checksum_offload(ns: &NetNs, ifname: &str) -> Result<()> {
    let name = ifname.to_string();
    ns.run(move || tx_checksum_offload_off(&name))
        .with_context(|| format!("enter {}", ns.name()))?
        .with_context(|| format!("turn TX checksum offload off on {ifname} in {}", ns.name()))
}

/// Why a cluster with these programs cannot run here (not root, no eBPF
/// object, a missing program), or None when it can. `ip` and `nsenter` are
/// always needed.
pub fn skip_reason(programs: &[&str]) -> Option<String> {
    if let Some(why) = netns::skip_reason() {
        return Some(why);
    }
    let missing: Vec<&str> = ["ip", "nsenter"]
        .iter()
        .chain(programs)
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing programs: {} (`cargo xtask setup` installs them)",
            missing.join(", ")
        )
    })
}

/// How to build a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of nodes (1..=[`MAX_NODES`]).
    pub nodes: usize,
    /// The `svcnat` binary.
    pub svcnat: PathBuf,
    /// A short prefix for namespace names (say the test's initials).
    pub prefix: String,
    /// Extra arguments to every `svcnat run`.
    pub agent_args: Vec<String>,
    /// `RUST_LOG` for the agents.
    pub agent_log_filter: String,
    /// Agents read this folder instead of the cluster's own temporary one
    /// (which [`Cluster::write_manifest`] edits; it refuses then).
    pub manifests: Option<PathBuf>,
}

impl ClusterConfig {
    /// `nodes` nodes running `svcnat`, with a small conntrack table and a
    /// drift repair every 5 s.
    pub fn new(svcnat: impl Into<PathBuf>, nodes: usize) -> Self {
        Self {
            nodes,
            svcnat: svcnat.into(),
            prefix: "sc".into(),
            agent_args: ["--conntrack-size", "65536", "--repair-interval", "5"]
                .map(String::from)
                .to_vec(),
            agent_log_filter: "info".into(),
            manifests: None,
        }
    }

    /// Sets the namespace name prefix.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }
}

/// A namespace one can run programs in: a pod or the outside client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Its name (nginx answers with it).
    pub name: String,
    /// The node it lives on (None: the outside client).
    pub node: Option<usize>,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its network namespace's name.
    pub netns: String,
    /// The host-side veth in the node (pods only).
    pub veth: Option<String>,
}

impl Host {
    /// `ip netns exec NS program`: `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    /// Spawns a thread that has entered this host's network namespace
    /// running `f` (a server or client written with `std::net`).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<std::io::Result<T>> {
        netns::spawn_in(PathBuf::from(format!("/var/run/netns/{}", self.netns)), f)
    }

    /// The name of its node (as endpoints' `nodeName`), if a pod.
    pub fn node_name(&self) -> Option<String> {
        self.node.map(node_name)
    }

    /// One HTTP GET with curl on a new connection; its `stderr` is curl's
    /// verbose account (see [`CurlOutcome::connect_error`]).
    pub fn curl(&self, url: &str, max_time: Duration) -> Result<CurlOutcome> {
        let mut all = self.curl_many(url, 1, max_time)?;
        all.pop().ok_or_else(|| anyhow!("curl printed no result"))
    }

    /// `n` HTTP GETs of `url` by one curl process, each on a new connection
    /// (`Connection: close`; `num_connects` says so), each with its own
    /// outcome.
    pub fn curl_many(&self, url: &str, n: usize, max_time: Duration) -> Result<Vec<CurlOutcome>> {
        let secs = format!("{:.3}", max_time.as_secs_f64());
        let mut cmd = self.command("curl");
        cmd.args(["-sS", "--max-time", &secs, "--connect-timeout", &secs])
            .args(["-H", "Connection: close", "-w", CURL_WRITE_OUT]);
        if n == 1 {
            // -v: the reason of a failed connect ("Connection refused") is
            // only in the verbose lines.
            cmd.arg("-v").arg(url);
        } else {
            // curl's URL globbing: one transfer per number, in order.
            let sep = if url.contains('?') { '&' } else { '?' };
            cmd.arg(format!("{url}{sep}n=[1-{n}]"));
        }
        let limit = max_time * u32::try_from(n).unwrap_or(u32::MAX) + Duration::from_secs(10);
        let out = output_within(&mut cmd, limit)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut outcomes = parse_curl(&stdout, &stderr);
        if outcomes.len() != n {
            bail!(
                "curl gave {} results for {n} requests ({}): {stderr}",
                outcomes.len(),
                out.status
            );
        }
        if n == 1
            && let Some(o) = outcomes.first_mut()
        {
            o.stderr = stderr;
        }
        Ok(outcomes)
    }

    /// `dig @server -p port name A` with one try; `tcp` asks over TCP.
    pub fn dig(
        &self,
        server: Ipv4Addr,
        port: u16,
        name: &str,
        tcp: bool,
        timeout: Duration,
    ) -> Result<DigOutcome> {
        self.dig_with(None, server, port, name, tcp, timeout)
    }

    /// [`Host::dig`] over UDP from this host's `source_port` (`dig -b`):
    /// queries repeated this way are one flow.
    pub fn dig_from(
        &self,
        source_port: u16,
        server: Ipv4Addr,
        port: u16,
        name: &str,
        timeout: Duration,
    ) -> Result<DigOutcome> {
        self.dig_with(Some(source_port), server, port, name, false, timeout)
    }

    fn dig_with(
        &self,
        source_port: Option<u16>,
        server: Ipv4Addr,
        port: u16,
        name: &str,
        tcp: bool,
        timeout: Duration,
    ) -> Result<DigOutcome> {
        let mut cmd = self.command("dig");
        if let Some(sport) = source_port {
            cmd.arg("-b").arg(format!("{}#{sport}", self.addr));
        }
        cmd.arg(format!("@{server}"))
            .args(["-p", &port.to_string(), name, "A", "+tries=1"])
            .arg(format!("+time={}", timeout.as_secs().max(1)));
        if tcp {
            cmd.arg("+tcp");
        }
        let started = Instant::now();
        let out = output_within(&mut cmd, timeout * 3 + Duration::from_secs(5))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let answers = parse_dig_answers(&stdout);
        Ok(DigOutcome {
            exit: out.status.code().unwrap_or(-1),
            answers,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        })
    }
}

/// What curl prints after each transfer.
const CURL_WRITE_OUT: &str =
    "\n@@svcnat %{exitcode} %{http_code} %{num_connects} %{time_total} %{size_download}\n";

/// One curl transfer.
#[derive(Clone, Debug, Default)]
pub struct CurlOutcome {
    /// curl's exit code for this transfer (0 ok, 7 could not connect, 28 timeout).
    pub exit: i32,
    /// HTTP status (0 when there was no response).
    pub http_code: u16,
    /// The body, trimmed (nginx's pods answer with their name).
    pub body: String,
    /// New connections made for this transfer.
    pub num_connects: u32,
    /// Bytes of the body.
    pub size: u64,
    /// Total time curl measured.
    pub elapsed: Duration,
    /// curl's stderr (for single requests; the error message).
    pub stderr: String,
}

impl CurlOutcome {
    /// Exit 0 with HTTP 200.
    pub fn ok(&self) -> bool {
        self.exit == 0 && self.http_code == 200
    }

    /// Why the connection failed, as the system said it ("Connection
    /// refused", "No route to host"), from a single request's verbose output.
    pub fn connect_error(&self) -> Option<&str> {
        self.stderr.lines().find_map(|l| {
            let l = l.strip_prefix("* connect to ")?;
            Some(l.split_once(" failed: ")?.1.trim())
        })
    }
}

fn parse_curl(stdout: &str, stderr: &str) -> Vec<CurlOutcome> {
    let mut out = Vec::new();
    let mut body = String::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("@@svcnat ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            let secs = f.get(3).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            out.push(CurlOutcome {
                exit: f.first().and_then(|s| s.parse().ok()).unwrap_or(-1),
                http_code: u16::try_from(num(1)).unwrap_or(0),
                body: body.trim().to_string(),
                num_connects: u32::try_from(num(2)).unwrap_or(0),
                size: num(4),
                elapsed: Duration::from_secs_f64(secs.max(0.0)),
                stderr: String::new(),
            });
            body.clear();
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    if out.is_empty() && !stderr.is_empty() {
        // curl did not get to print its write-out (it could not start).
        out.push(CurlOutcome {
            exit: -1,
            stderr: stderr.to_string(),
            ..CurlOutcome::default()
        });
    }
    out
}

/// One dig query.
#[derive(Clone, Debug)]
pub struct DigOutcome {
    /// dig's exit code (0 answered, 9 no reply).
    pub exit: i32,
    /// The A records of the answer section.
    pub answers: Vec<Ipv4Addr>,
    /// Full output.
    pub stdout: String,
    /// Errors.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

fn parse_dig_answers(stdout: &str) -> Vec<Ipv4Addr> {
    let mut in_answer = false;
    let mut out = Vec::new();
    for line in stdout.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() || line.starts_with(";;") {
                break;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5
                && f[3] == "A"
                && let Ok(a) = f[4].parse()
            {
                out.push(a);
            }
        }
    }
    out
}

/// A child process in its own process group (so a terminal's Ctrl-C does not
/// reach it and its own children die with it), output to files; killed
/// with its group on drop.
#[derive(Debug)]
pub struct Proc {
    what: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
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

    fn poll(&mut self) -> Option<ExitStatus> {
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

/// A service frontend as `svcnat inspect services --json` shows it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Frontend {
    /// `namespace/name:port`.
    pub name: String,
    /// VIP.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// `tcp` / `udp`.
    pub protocol: String,
    /// Backends `addr:port` in slot order.
    pub backends: Vec<String>,
}

impl Frontend {
    /// The backends as a sorted set.
    pub fn backend_set(&self) -> BTreeSet<String> {
        self.backends.iter().cloned().collect()
    }
}

/// A conntrack entry as `svcnat inspect conntrack --json` shows it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CtEntry {
    /// `service` or `reply`.
    pub direction: String,
    /// `tcp` / `udp`.
    pub protocol: String,
    /// `addr:port`.
    pub source: String,
    /// `addr:port`.
    pub destination: String,
    /// The translated address (backend or VIP) `addr:port`.
    pub nat: String,
}

/// Protocols of service ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// As Kubernetes spells it.
    pub fn k8s(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }

    /// As `svcnat inspect` spells it.
    pub fn inspect(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A service port and the matching EndpointSlice port.
#[derive(Clone, Debug)]
pub struct Port {
    /// Port name (None: unnamed).
    pub name: Option<String>,
    /// Protocol.
    pub proto: Proto,
    /// The service port.
    pub port: u16,
    /// The backends' port.
    pub target: u16,
}

impl Port {
    /// A named TCP port.
    pub fn tcp(name: &str, port: u16, target: u16) -> Self {
        Self {
            name: Some(name.into()),
            proto: Proto::Tcp,
            port,
            target,
        }
    }

    /// A named UDP port.
    pub fn udp(name: &str, port: u16, target: u16) -> Self {
        Self {
            name: Some(name.into()),
            proto: Proto::Udp,
            port,
            target,
        }
    }

    /// Without a name.
    pub fn unnamed(mut self) -> Self {
        self.name = None;
        self
    }
}

/// An endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Address.
    pub addr: Ipv4Addr,
    /// `nodeName` (None: left out).
    pub node: Option<String>,
    /// `conditions.ready` (None: not written).
    pub ready: Option<bool>,
    /// `conditions.serving` (None: not written).
    pub serving: Option<bool>,
}

impl Endpoint {
    /// A ready endpoint for `pod`, with its node's name.
    pub fn of(pod: &Host) -> Self {
        Self {
            addr: pod.addr,
            node: pod.node_name(),
            ready: Some(true),
            serving: None,
        }
    }

    /// Not ready and not serving (a running pod failing its readiness
    /// probe): not used, not even as the serving-terminating fallback.
    pub fn not_ready(mut self) -> Self {
        self.ready = Some(false);
        self.serving = Some(false);
        self
    }

    /// An endpoint with only an address (as hand-written slices often are).
    pub fn bare(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            node: None,
            ready: None,
            serving: None,
        }
    }
}

/// YAML of a ClusterIP Service. With `selector`, it selects `app: NAME`
/// (the slices are still written by hand here: svcnat never evaluates
/// selectors).
pub fn service_yaml(
    namespace: &str,
    name: &str,
    vip: Ipv4Addr,
    ports: &[Port],
    selector: bool,
) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  type: ClusterIP\n  clusterIP: {vip}\n  clusterIPs: [\"{vip}\"]\n"
    );
    if selector {
        let _ = writeln!(s, "  selector: {{app: {name}}}");
    }
    s.push_str("  ports:\n");
    for p in ports {
        s.push_str("  - {");
        if let Some(n) = &p.name {
            let _ = write!(s, "name: {n}, ");
        }
        let _ = writeln!(
            s,
            "protocol: {}, port: {}, targetPort: {}}}",
            p.proto.k8s(),
            p.port,
            p.target
        );
    }
    s
}

/// YAML of an EndpointSlice `slice` of `service` (ports carry the targets).
pub fn slice_yaml(
    namespace: &str,
    slice: &str,
    service: &str,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  \
         namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {service}}}\n\
         addressType: IPv4\nports:\n"
    );
    for p in ports {
        s.push_str("- {");
        if let Some(n) = &p.name {
            let _ = write!(s, "name: {n}, ");
        }
        let _ = writeln!(s, "protocol: {}, port: {}}}", p.proto.k8s(), p.target);
    }
    if endpoints.is_empty() {
        s.push_str("endpoints: []\n");
    } else {
        s.push_str("endpoints:\n");
    }
    for e in endpoints {
        let _ = writeln!(s, "- addresses: [\"{}\"]", e.addr);
        let conditions: Vec<String> = [("ready", e.ready), ("serving", e.serving)]
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
            .collect();
        if !conditions.is_empty() {
            let _ = writeln!(s, "  conditions: {{{}}}", conditions.join(", "));
        }
        if let Some(n) = &e.node {
            let _ = writeln!(s, "  nodeName: {n}");
        }
    }
    s
}

/// A Service with a selector plus its one EndpointSlice `NAME-1`.
pub fn service_with_slice(
    namespace: &str,
    name: &str,
    vip: Ipv4Addr,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    format!(
        "{}---\n{}",
        service_yaml(namespace, name, vip, ports, true),
        slice_yaml(namespace, &format!("{name}-1"), name, ports, endpoints)
    )
}

struct NodeState {
    ns: NetNs,
    next_veth: u32,
}

struct AgentState {
    proc: Option<Proc>,
    bpffs: PathBuf,
    log: PathBuf,
    starts: u32,
}

/// A running HTTP client loop (see [`Cluster::client_loop`]).
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Vec<Request>>>,
}

/// One request of a [`ClientLoop`].
#[derive(Clone, Debug)]
pub struct Request {
    /// When curl was started.
    pub started: Instant,
    /// What it gave.
    pub outcome: CurlOutcome,
}

impl ClientLoop {
    /// Requests finished so far.
    pub fn completed(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more requests than now have finished
    /// (fails after `limit`); returns the count then.
    pub fn wait_more(&self, n: usize, limit: Duration) -> Result<usize> {
        let target = self.completed() + n;
        let start = Instant::now();
        loop {
            let done = self.completed();
            if done >= target {
                return Ok(done);
            }
            if start.elapsed() > limit || self.handle.as_ref().is_none_or(JoinHandle::is_finished) {
                bail!("the client loop made {done} of {target} requests within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the loop and returns every request it made.
    pub fn stop(mut self) -> Vec<Request> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A running loop of DNS queries from one source port (see
/// [`Cluster::dig_loop`]).
pub struct DigLoop {
    stop: Arc<AtomicBool>,
    queries: Arc<Mutex<Vec<Query>>>,
    handle: Option<JoinHandle<()>>,
}

/// One query of a [`DigLoop`].
#[derive(Clone, Debug)]
pub struct Query {
    /// When dig was started.
    pub started: Instant,
    /// What it gave (exit -1 when dig could not run).
    pub outcome: DigOutcome,
}

impl DigLoop {
    /// The queries finished so far.
    pub fn queries(&self) -> Vec<Query> {
        lock(&self.queries).clone()
    }

    /// Waits until `ok` holds for some query finished so far (fails after
    /// `limit`); returns that query.
    pub fn wait_for(&self, limit: Duration, ok: impl Fn(&Query) -> bool) -> Result<Query> {
        let start = Instant::now();
        loop {
            if let Some(q) = self.queries().into_iter().find(|q| ok(q)) {
                return Ok(q);
            }
            if start.elapsed() > limit || self.handle.as_ref().is_none_or(JoinHandle::is_finished) {
                bail!(
                    "no such answer within {limit:?}; last queries: {:?}",
                    self.queries()
                        .iter()
                        .rev()
                        .take(3)
                        .map(|q| (q.outcome.exit, q.outcome.answers.clone()))
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the loop and returns every query it made.
    pub fn stop(mut self) -> Vec<Query> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.queries()
    }
}

impl Drop for DigLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A rate-limited download (see [`Cluster::download`]).
pub struct Download {
    proc: Proc,
    /// The local port it uses.
    pub local_port: u16,
    /// Bytes asked for.
    pub bytes: u64,
}

/// How a [`Download`] ended.
#[derive(Clone, Debug)]
pub struct DownloadOutcome {
    /// curl's exit code.
    pub exit: i32,
    /// HTTP status (206 for the range asked).
    pub http_code: u16,
    /// Bytes received.
    pub size: u64,
    /// curl's time.
    pub elapsed: Duration,
    /// curl's stderr.
    pub stderr: String,
}

impl Download {
    /// Whether it is still transferring.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// Waits for the end, at most `limit`.
    pub fn finish(mut self, limit: Duration) -> Result<DownloadOutcome> {
        let f = self.proc.wait_within(limit)?;
        let o = parse_curl(&f.stdout, &f.stderr)
            .pop()
            .ok_or_else(|| anyhow!("download printed nothing: {}", f.stderr))?;
        Ok(DownloadOutcome {
            exit: o.exit,
            http_code: o.http_code,
            size: o.size,
            elapsed: o.elapsed,
            stderr: f.stderr,
        })
    }
}

/// An iperf3 client run (see [`Cluster::iperf3_client`]).
pub struct Iperf3 {
    proc: Proc,
}

/// How an iperf3 run ended.
#[derive(Clone, Debug)]
pub struct Iperf3Outcome {
    /// Exit status 0.
    pub success: bool,
    /// Bytes the server received (`end.sum_received.bytes`).
    pub bytes_received: u64,
    /// Seconds of the test (`end.sum_received.seconds`).
    pub seconds: f64,
    /// iperf3's own error, if any.
    pub error: Option<String>,
}

impl Iperf3 {
    /// Whether it is still sending.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// Waits for the end, at most `limit`.
    pub fn finish(mut self, limit: Duration) -> Result<Iperf3Outcome> {
        let f = self.proc.wait_within(limit)?;
        let json: serde_json::Value = serde_json::from_str(&f.stdout).unwrap_or_default();
        let recv = &json["end"]["sum_received"];
        Ok(Iperf3Outcome {
            success: f.status.success(),
            bytes_received: recv["bytes"].as_u64().unwrap_or(0),
            seconds: recv["seconds"].as_f64().unwrap_or(0.0),
            error: json["error"]
                .as_str()
                .map(String::from)
                .or_else(|| (!f.status.success()).then(|| f.stderr.clone())),
        })
    }
}

/// The cluster. Every method takes `&self` except adding pods, so client
/// threads can share it (`std::thread::scope`).
pub struct Cluster {
    cfg: ClusterConfig,
    tag: String,
    dir: PathBuf,
    manifests: PathBuf,
    fabric: Option<NetNs>,
    nodes: Vec<NodeState>,
    outside: Option<(NetNs, Host)>,
    more_outside: Vec<(NetNs, Host)>,
    pods: Vec<(NetNs, Host)>,
    agents: Vec<Mutex<AgentState>>,
    servers: Mutex<Vec<Proc>>,
    interrupt: Option<&'static AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cluster {
    /// Builds the fabric, the nodes and the outside client (no pods, no
    /// agents yet). On error, whatever was built is torn down.
    pub fn new(cfg: ClusterConfig) -> Result<Self> {
        if cfg.nodes == 0 || cfg.nodes > MAX_NODES {
            bail!("1..={MAX_NODES} nodes, not {}", cfg.nodes);
        }
        let tag = unique_tag();
        let dir = std::env::temp_dir().join(format!("svcnat-cluster-{}-{tag}", cfg.prefix));
        let own_manifests = dir.join("manifests");
        let manifests = cfg.manifests.clone().unwrap_or(own_manifests.clone());
        let mut c = Self {
            tag,
            dir,
            manifests,
            fabric: None,
            nodes: Vec::new(),
            outside: None,
            more_outside: Vec::new(),
            pods: Vec::new(),
            agents: Vec::new(),
            servers: Mutex::new(Vec::new()),
            interrupt: None,
            cfg,
        };
        let _ = fs::remove_dir_all(&c.dir);
        fs::create_dir_all(&own_manifests).context("create the cluster's temporary folder")?;
        fs::create_dir_all(c.dir.join("logs"))?;

        let fabric = NetNs::new(&c.ns_name("fab"))?;
        fabric.ip(&["link", "add", "fab0", "type", "bridge"])?;
        fabric.ip(&["link", "set", "fab0", "up"])?;
        c.fabric = Some(fabric);
        let fabric = c.fabric.as_ref().ok_or_else(|| anyhow!("no fabric"))?;

        for i in 0..c.cfg.nodes {
            let ns = NetNs::new(&c.ns_name(&format!("n{i}")))?;
            let leg = format!("fn{i}");
            veth(fabric, &leg, &ns, "eth0")?;
            fabric.ip(&["link", "set", &leg, "master", "fab0"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", node_addr(i)),
                "dev",
                "eth0",
            ])?;
            // Complete checksums on what the node sends to other nodes'
            // XDP (replies of backends to SNATed flows): see the module doc.
            no_tx_checksum_offload(&ns, "eth0")?;
            ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
            // A fixed MAC: a bridge otherwise takes its lowest port's, which
            // changes as pods come and go (and pods cache the gateway's).
            ns.ip(&[
                "link",
                "set",
                "cni0",
                "address",
                &format!("02:00:c6:12:{:02x}:01", i + 1),
            ])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", pod_gateway(i)),
                "dev",
                "cni0",
            ])?;
            ns.ip(&["link", "set", "cni0", "up"])?;
            for (key, value) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.default.send_redirects", "0"),
                ("net.ipv4.conf.eth0.send_redirects", "0"),
                ("net.ipv4.conf.cni0.send_redirects", "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.eth0.rp_filter", "0"),
                ("net.ipv4.conf.cni0.rp_filter", "0"),
            ] {
                ns.sysctl(key, value)?;
            }
            for j in (0..c.cfg.nodes).filter(|&j| j != i) {
                ns.ip(&[
                    "route",
                    "add",
                    &format!("{}/24", pod_addr(j, 0)),
                    "via",
                    &node_addr(j).to_string(),
                    "dev",
                    "eth0",
                ])?;
            }
            let bpffs = PathBuf::from(format!(
                "/sys/fs/bpf/svcnat-{}{}-{}",
                c.cfg.prefix,
                c.tag,
                node_name(i)
            ));
            let log = c
                .dir
                .join("logs")
                .join(format!("agent-{}.log", node_name(i)));
            c.nodes.push(NodeState { ns, next_veth: 0 });
            c.agents.push(Mutex::new(AgentState {
                proc: None,
                bpffs,
                log,
                starts: 0,
            }));
        }

        c.outside = Some(c.new_outside("outside", "out", "fo", OUTSIDE_ADDR)?);
        Ok(c)
    }

    /// An outside client namespace `role` named `name` whose `eth0` has
    /// `addr` on the fabric (leg `leg` on `fab0`), default route via node 0.
    fn new_outside(
        &self,
        name: &str,
        role: &str,
        leg: &str,
        addr: Ipv4Addr,
    ) -> Result<(NetNs, Host)> {
        let fabric = self.fabric.as_ref().ok_or_else(|| anyhow!("no fabric"))?;
        let ns = NetNs::new(&self.ns_name(role))?;
        veth(fabric, leg, &ns, "eth0")?;
        fabric.ip(&["link", "set", leg, "master", "fab0"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["route", "add", "default", "via", &node_addr(0).to_string()])?;
        // Frames from outside reach the nodes' XDP with complete checksums,
        // as from a wire: see the module doc.
        no_tx_checksum_offload(&ns, "eth0")?;
        let host = Host {
            name: name.to_string(),
            node: None,
            addr,
            netns: ns.name().to_string(),
            veth: None,
        };
        Ok((ns, host))
    }

    fn ns_name(&self, role: &str) -> String {
        format!("{}{}-{role}", self.cfg.prefix, self.tag)
    }

    /// Polling loops stop with an error once `flag` is set (the demo's
    /// Ctrl-C).
    pub fn set_interrupt(&mut self, flag: &'static AtomicBool) {
        self.interrupt = Some(flag);
    }

    fn check_interrupt(&self) -> Result<()> {
        if self.interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s namespace.
    pub fn node_ns(&self, i: usize) -> &NetNs {
        &self.nodes[i].ns
    }

    /// The folder every agent reads.
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests
    }

    /// The cluster's temporary folder (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The outside client (on the fabric, default route via node 0).
    pub fn outside(&self) -> Option<&Host> {
        self.outside.as_ref().map(|(_, h)| h)
    }

    /// Adds another outside client `name` with address `addr` on the
    /// fabric (198.18.0.0/24; not a node's, not taken), default route via
    /// node 0, like [`Cluster::outside`].
    pub fn add_outside(&mut self, name: &str, addr: Ipv4Addr) -> Result<Host> {
        let o = addr.octets();
        let on_fabric = addr != FABRIC_NET && o[..3] == FABRIC_NET.octets()[..3] && o[3] != 255;
        let node = (0..self.nodes.len()).any(|i| node_addr(i) == addr);
        let taken = self
            .outside
            .iter()
            .chain(&self.more_outside)
            .chain(&self.pods)
            .any(|(_, h)| h.name == name || h.addr == addr);
        if !on_fabric || node || taken {
            bail!("{addr} is not a free fabric address ({FABRIC_NET}/24) or {name} exists");
        }
        let k = self.more_outside.len() + 1;
        let added = self.new_outside(name, &format!("out{k}"), &format!("fo{k}"), addr)?;
        let host = added.1.clone();
        self.more_outside.push(added);
        Ok(host)
    }

    /// Every outside client: [`Cluster::outside`] first, then those of
    /// [`Cluster::add_outside`].
    pub fn outside_clients(&self) -> impl Iterator<Item = &Host> {
        self.outside
            .iter()
            .chain(&self.more_outside)
            .map(|(_, h)| h)
    }

    /// Makes outside client `client` send traffic for `dst` (say a
    /// load-balancer IP that no interface has) to node `node` over the
    /// fabric, as a load balancer in front of the nodes would.
    pub fn route_via_node(&self, client: &Host, dst: Ipv4Addr, node: usize) -> Result<()> {
        if node >= self.nodes.len() {
            bail!("no node {node}");
        }
        let (ns, _) = self
            .outside
            .iter()
            .chain(&self.more_outside)
            .find(|(_, h)| h.netns == client.netns)
            .ok_or_else(|| anyhow!("{} is not an outside client", client.name))?;
        ns.ip(&[
            "route",
            "replace",
            &format!("{dst}/32"),
            "via",
            &node_addr(node).to_string(),
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    /// Every pod.
    pub fn pods(&self) -> impl Iterator<Item = &Host> {
        self.pods.iter().map(|(_, h)| h)
    }

    /// Adds pod `name` with address `addr` (in node `node`'s range) behind
    /// a new `vpN` veth on the node's `cni0`.
    pub fn add_pod(&mut self, node: usize, name: &str, addr: Ipv4Addr) -> Result<Host> {
        if node >= self.nodes.len() {
            bail!("no node {node}");
        }
        if node_of_pod_addr(addr, self.nodes.len()) != Some(node)
            || addr == pod_gateway(node)
            || addr.octets()[3] == 0
            || addr.octets()[3] == 255
        {
            bail!(
                "{addr} is not a pod address of {} ({}/24)",
                node_name(node),
                pod_addr(node, 0)
            );
        }
        if self
            .pods
            .iter()
            .any(|(_, h)| h.name == name || h.addr == addr)
        {
            bail!("pod {name} or address {addr} exists already");
        }
        let st = &mut self.nodes[node];
        let host_if = format!("vp{}", st.next_veth);
        st.next_veth += 1;
        let ns = NetNs::new(&format!("{}{}-p-{name}", self.cfg.prefix, self.tag))?;
        let node_ns = &self.nodes[node].ns;
        veth(node_ns, &host_if, &ns, "eth0")?;
        node_ns.ip(&["link", "set", &host_if, "master", "cni0"])?;
        node_ns.sysctl(&format!("net.ipv4.conf.{host_if}.send_redirects"), "0")?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &pod_gateway(node).to_string(),
        ])?;
        let host = Host {
            name: name.to_string(),
            node: Some(node),
            addr,
            netns: ns.name().to_string(),
            veth: Some(host_if),
        };
        self.pods.push((ns, host.clone()));
        Ok(host)
    }

    // ---- agents ----

    fn agent(&self, node: usize) -> Result<MutexGuard<'_, AgentState>> {
        self.agents
            .get(node)
            .map(lock)
            .ok_or_else(|| anyhow!("no node {node}"))
    }

    /// Node `node`'s pin folder.
    pub fn bpffs(&self, node: usize) -> PathBuf {
        self.agents
            .get(node)
            .map(|a| lock(a).bpffs.clone())
            .unwrap_or_default()
    }

    /// Starts `svcnat run` on `node` (an error if it runs already).
    pub fn start_agent(&self, node: usize) -> Result<()> {
        let mut a = self.agent(node)?;
        if a.proc.as_mut().is_some_and(Proc::running) {
            bail!("the agent of {} runs already", node_name(node));
        }
        let mut cmd = self.nodes[node]
            .ns
            .command(&self.cfg.svcnat.to_string_lossy());
        cmd.args(["run", "--node-name", &node_name(node)])
            .arg("--manifests")
            .arg(&self.manifests)
            .args(["--pod-interfaces", POD_GLOB, "--node-interfaces", "eth0"])
            .args(["--hairpin-address", &HAIRPIN_ADDR.to_string()])
            .arg("--bpffs")
            .arg(&a.bpffs)
            .args(&self.cfg.agent_args)
            .env("RUST_LOG", &self.cfg.agent_log_filter)
            .env("NO_COLOR", "1");
        a.starts += 1;
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&a.log) {
            let _ = writeln!(f, "---- start {} ----", a.starts);
        }
        let log = a.log.clone();
        a.proc = Some(Proc::spawn(
            &mut cmd,
            &format!("svcnat run on {}", node_name(node)),
            &log,
            &log,
        )?);
        Ok(())
    }

    /// Starts every node's agent.
    pub fn start_agents(&self) -> Result<()> {
        (0..self.nodes.len()).try_for_each(|i| self.start_agent(i))
    }

    /// SIGKILLs `node`'s agent (pins stay: the datapath keeps working).
    pub fn kill_agent(&self, node: usize) -> Result<()> {
        let mut a = self.agent(node)?;
        match a.proc.take() {
            Some(mut p) => {
                p.kill();
                Ok(())
            }
            None => bail!("the agent of {} does not run", node_name(node)),
        }
    }

    /// SIGTERMs `node`'s agent and waits for it (10 s at most, then
    /// SIGKILL and an error). Returns its exit status.
    pub fn terminate_agent(&self, node: usize) -> Result<ExitStatus> {
        let mut a = self.agent(node)?;
        let mut p = a
            .proc
            .take()
            .ok_or_else(|| anyhow!("the agent of {} does not run", node_name(node)))?;
        p.terminate(Duration::from_secs(10))
            .ok_or_else(|| anyhow!("the agent of {} ignored SIGTERM", node_name(node)))
    }

    /// SIGKILL, then start again.
    pub fn restart_agent(&self, node: usize) -> Result<()> {
        self.kill_agent(node)?;
        self.start_agent(node)
    }

    /// The agent's exit status if it was started and has exited by itself.
    pub fn agent_exited(&self, node: usize) -> Option<ExitStatus> {
        let mut a = self.agent(node).ok()?;
        let p = a.proc.as_mut()?;
        p.poll()
    }

    /// The process id of node `node`'s agent while it runs (`svcnat`
    /// itself: `nsenter` execs it), None when none was started, it was
    /// stopped or it has exited.
    pub fn agent_pid(&self, node: usize) -> Option<u32> {
        let mut a = self.agent(node).ok()?;
        let p = a.proc.as_mut()?;
        if p.running() { p.pid() } else { None }
    }

    /// Where the agents serve `/healthz` and `/readyz`, as a client inside
    /// their node reaches it: `--healthz-addr` of the agent arguments, else
    /// svcnat's default, with an unspecified address as loopback. None when
    /// they serve neither (an empty `--healthz-addr`).
    pub fn healthz_addr(&self) -> Result<Option<SocketAddr>> {
        let mut value = crate::metrics::DEFAULT_HEALTHZ_ADDR.to_string();
        let mut args = self.cfg.agent_args.iter();
        while let Some(arg) = args.next() {
            if let Some(v) = arg.strip_prefix("--healthz-addr=") {
                value = v.to_string();
            } else if arg == "--healthz-addr" {
                value = args.next().cloned().unwrap_or_default();
            }
        }
        if value.is_empty() {
            return Ok(None);
        }
        let mut addr: SocketAddr = value
            .parse()
            .with_context(|| format!("--healthz-addr {value}"))?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        Ok(Some(addr))
    }

    /// Polls `GET /readyz` of node `node`'s agent from inside the node
    /// until it answers 200, that is until the agent running now has
    /// finished its first sync pass (the one before it was reaped when it
    /// was stopped, so the answer is the new one's). Returns how long it
    /// took. Fails after `limit`, and at once when no agent runs there or
    /// it exits (with its log).
    pub fn wait_agent_ready(&self, node: usize, limit: Duration) -> Result<Duration> {
        let addr = self.healthz_addr()?.ok_or_else(|| {
            anyhow!("the agents serve no /readyz (empty --healthz-addr in the agent arguments)")
        })?;
        let ns = &self
            .nodes
            .get(node)
            .ok_or_else(|| anyhow!("no node {node}"))?
            .ns;
        let start = Instant::now();
        loop {
            self.check_interrupt()?;
            if let Some(st) = self.agent_exited(node) {
                bail!(
                    "the agent of {} exited ({st}) before it was ready; its log:\n{}",
                    node_name(node),
                    tail(&self.agent_log(node), 30)
                );
            }
            if self.agent_pid(node).is_none() {
                bail!("no agent runs on {}", node_name(node));
            }
            let answer = ns
                .run(move || http_get(addr, "/readyz", Duration::from_secs(2)))
                .with_context(|| format!("enter {}", ns.name()))?;
            let last = match answer {
                Ok((200, _)) => return Ok(start.elapsed()),
                Ok((code, body)) => format!("HTTP {code}: {body}"),
                Err(e) => e.to_string(),
            };
            if start.elapsed() > limit {
                bail!(
                    "the agent of {} was not ready after {limit:?}; last /readyz on {addr}: {last}",
                    node_name(node)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Everything node `node`'s agents wrote (all starts).
    pub fn agent_log(&self, node: usize) -> String {
        self.agent(node)
            .ok()
            .and_then(|a| fs::read_to_string(&a.log).ok())
            .unwrap_or_default()
    }

    // ---- manifests ----

    fn check_own_manifests(&self) -> Result<()> {
        if self.cfg.manifests.is_some() {
            bail!(
                "the agents read {}, which the cluster does not edit",
                self.manifests.display()
            );
        }
        Ok(())
    }

    /// Writes `file` in the manifests folder atomically (a hidden temporary
    /// file renamed over it), so an agent never reads half a file.
    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        self.check_own_manifests()?;
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, self.manifests.join(file)).context("rename manifest")?;
        Ok(())
    }

    /// Removes `file` from the manifests folder.
    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        self.check_own_manifests()?;
        fs::remove_file(self.manifests.join(file)).with_context(|| format!("remove {file}"))
    }

    // ---- inspection ----

    /// `svcnat inspect WHAT [--json] --bpffs <node's>`: its stdout.
    pub fn inspect(&self, node: usize, what: &str, json: bool) -> Result<String> {
        let mut cmd = Command::new(&self.cfg.svcnat);
        cmd.args(["inspect", what]);
        if json {
            cmd.arg("--json");
        }
        cmd.arg("--bpffs").arg(self.bpffs(node));
        let out = output_within(&mut cmd, Duration::from_secs(20))?;
        if !out.status.success() {
            bail!(
                "svcnat inspect {what} on {}: {}",
                node_name(node),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The frontends in node `node`'s maps (empty before the first start).
    pub fn frontends(&self, node: usize) -> Result<Vec<Frontend>> {
        if !self.bpffs(node).exists() {
            return Ok(Vec::new());
        }
        let text = self.inspect(node, "services", true)?;
        serde_json::from_str(&text).context("parse `svcnat inspect services --json`")
    }

    /// The conntrack entries in node `node`'s maps.
    pub fn conntrack(&self, node: usize) -> Result<Vec<CtEntry>> {
        let text = self.inspect(node, "conntrack", true)?;
        serde_json::from_str(&text).context("parse `svcnat inspect conntrack --json`")
    }

    /// The backend (`addr:port`) that node `node`'s conntrack pins the flow
    /// from `client` to.
    pub fn flow_backend(&self, node: usize, client: SocketAddrV4) -> Result<Option<String>> {
        let src = client.to_string();
        Ok(self
            .conntrack(node)?
            .into_iter()
            .find(|e| e.direction == "service" && e.source == src)
            .map(|e| e.nat))
    }

    /// Polls every node's frontends until `ok(node, frontends)` holds on all
    /// of them; returns how long it took. Fails after `limit`, or at once
    /// when an agent that was started has exited (with its log).
    pub fn wait_frontends(
        &self,
        what: &str,
        limit: Duration,
        mut ok: impl FnMut(usize, &[Frontend]) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            self.check_interrupt()?;
            let mut all = true;
            for n in 0..self.nodes.len() {
                if let Some(st) = self.agent_exited(n) {
                    bail!(
                        "the agent of {} exited ({st}) while waiting for {what}; its log:\n{}",
                        node_name(n),
                        tail(&self.agent_log(n), 30)
                    );
                }
                match self.frontends(n) {
                    Ok(f) if ok(n, &f) => {}
                    Ok(f) => {
                        all = false;
                        last = format!("{}: {f:?}", node_name(n));
                        break;
                    }
                    Err(e) => {
                        all = false;
                        last = format!("{}: {e:#}", node_name(n));
                        break;
                    }
                }
            }
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("timed out after {limit:?} waiting for {what}; last seen {last}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every node has frontend `vip:port/proto` with exactly
    /// `backends` (any order), or, with None, no such frontend.
    pub fn wait_backends(
        &self,
        vip: Ipv4Addr,
        port: u16,
        proto: Proto,
        backends: Option<&[SocketAddrV4]>,
        limit: Duration,
    ) -> Result<Duration> {
        let want: Option<BTreeSet<String>> =
            backends.map(|b| b.iter().map(ToString::to_string).collect());
        let what = match &want {
            Some(w) => format!("{vip}:{port}/{} -> {w:?} on every node", proto.inspect()),
            None => format!("{vip}:{port}/{} gone from every node", proto.inspect()),
        };
        self.wait_frontends(&what, limit, |_, fs| {
            let found = fs
                .iter()
                .find(|f| f.vip == vip && f.port == port && f.protocol == proto.inspect());
            match (&want, found) {
                (None, None) => true,
                (Some(w), Some(f)) => f.backend_set() == *w && f.backends.len() == w.len(),
                _ => false,
            }
        })
    }

    /// Waits until svcnat's programs are attached to `pod`'s veth (for pods
    /// added while the agent runs; the agent attaches at start otherwise).
    /// Needs `bpftool`.
    pub fn wait_attached(&self, pod: &Host, limit: Duration) -> Result<Duration> {
        let (Some(node), Some(dev)) = (pod.node, &pod.veth) else {
            bail!("{} is not a pod", pod.name);
        };
        let start = Instant::now();
        loop {
            self.check_interrupt()?;
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", self.nodes[node].ns.name()])
                .args(["bpftool", "net", "show", "dev", dev]);
            let out = output_within(&mut cmd, Duration::from_secs(10))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("tcx/ingress") && text.contains("tcx/egress") {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!(
                    "svcnat not attached to {dev} of {} after {limit:?}",
                    pod.name
                );
            }
            std::thread::sleep(POLL);
        }
    }

    // ---- servers ----

    fn pod_dir(&self, pod: &Host, what: &str) -> Result<PathBuf> {
        let d = self.dir.join("pods").join(&pod.name).join(what);
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    fn start_server(&self, pod: &Host, what: &str, cmd: &mut Command, dir: &Path) -> Result<()> {
        let p = Proc::spawn(
            cmd,
            &format!("{what} in {}", pod.name),
            &dir.join("stdout.log"),
            &dir.join("stderr.log"),
        )?;
        lock(&self.servers).push(p);
        Ok(())
    }

    /// Waits until something in `pod` listens on `port` (TCP, or UDP).
    pub fn wait_listening(&self, pod: &Host, proto: Proto, port: u16) -> Result<()> {
        let start = Instant::now();
        let flag = match proto {
            Proto::Tcp => "-Hltn",
            Proto::Udp => "-Hlun",
        };
        loop {
            self.check_interrupt()?;
            let mut cmd = pod.command("ss");
            cmd.args([flag, &format!("sport = :{port}")]);
            let out = output_within(&mut cmd, Duration::from_secs(10))?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(());
            }
            // A server that died (bad configuration) will never listen.
            let mut servers = lock(&self.servers);
            if let Some(dead) = servers.iter_mut().find_map(|p| {
                let what = p.what.clone();
                p.poll().map(|st| (what, st, p.stderr.clone()))
            }) {
                bail!(
                    "{} exited ({}): {}",
                    dead.0,
                    dead.1,
                    fs::read_to_string(&dead.2).unwrap_or_default().trim()
                );
            }
            drop(servers);
            if start.elapsed() > Duration::from_secs(20) {
                bail!("nothing listens on {port}/{proto:?} in {}", pod.name);
            }
            std::thread::sleep(POLL);
        }
    }

    /// nginx in `pod` on port 80: `/` answers with the pod's name, and
    /// [`BIG_PATH`] is a [`BIG_FILE_BYTES`] file for long downloads, sent at
    /// most at `?rate=BYTES_PER_SECOND` when given (nginx's `limit_rate`:
    /// curl's own `--limit-rate` does not hold over veths in curl 7.88).
    /// Every request is logged ([`Cluster::nginx_access_log`]). Returns once
    /// it listens.
    pub fn nginx(&self, pod: &Host) -> Result<()> {
        let dir = self.pod_dir(pod, "nginx")?;
        let www = dir.join("www");
        fs::create_dir_all(&www)?;
        File::create(www.join(BIG_PATH.trim_start_matches('/')))?.set_len(BIG_FILE_BYTES)?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  log_format svcnat '$remote_addr $status \"$request\"';\n\
             access_log {d}/access.log svcnat;\n  sendfile on;\n\
             map $arg_rate $rate {{ \"\" 0; default $arg_rate; }}\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 80 backlog=4096;\n\
             location = / {{ default_type text/plain; return 200 \"{name}\\n\"; }}\n\
             location / {{ root {d}/www; limit_rate $rate; }}\n  }}\n}}\n",
            name = pod.name
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let mut cmd = pod.command("nginx");
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"));
        self.start_server(pod, "nginx", &mut cmd, &dir)?;
        self.wait_listening(pod, Proto::Tcp, 80)
    }

    /// The requests nginx in `pod` ([`Cluster::nginx`]) has answered so far,
    /// oldest first (empty before the first one).
    pub fn nginx_access_log(&self, pod: &Host) -> Result<Vec<AccessLogEntry>> {
        let path = self.pod_dir(pod, "nginx")?.join("access.log");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().filter_map(parse_access_log_line).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// dnsmasq in `pod` on port 53 (UDP and TCP) answering the A `records`
    /// and nothing else. Returns once it listens.
    pub fn dnsmasq(&self, pod: &Host, records: &[(&str, Ipv4Addr)]) -> Result<()> {
        let dir = self.pod_dir(pod, "dnsmasq")?;
        let mut cmd = pod.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
        ])
        .arg(format!("--listen-address={}", pod.addr))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!(
            "--log-facility={}",
            dir.join("dnsmasq.log").display()
        ));
        for (name, addr) in records {
            cmd.arg(format!("--host-record={name},{addr}"));
        }
        self.start_server(pod, "dnsmasq", &mut cmd, &dir)?;
        self.wait_listening(pod, Proto::Udp, 53)?;
        self.wait_listening(pod, Proto::Tcp, 53)
    }

    /// An iperf3 server in `pod` on `port`. Returns once it listens.
    pub fn iperf3_server(&self, pod: &Host, port: u16) -> Result<()> {
        let dir = self.pod_dir(pod, &format!("iperf3-{port}"))?;
        let mut cmd = pod.command("iperf3");
        cmd.args(["-s", "-p", &port.to_string()]);
        self.start_server(pod, "iperf3 -s", &mut cmd, &dir)?;
        self.wait_listening(pod, Proto::Tcp, port)
    }

    // ---- background clients ----

    /// An iperf3 client in `pod` sending to `server:port` for `seconds` at
    /// `bitrate` (iperf3's `-b`, e.g. `200M`; None: as fast as it can), in
    /// the background.
    pub fn iperf3_client(
        &self,
        pod: &Host,
        server: Ipv4Addr,
        port: u16,
        seconds: u32,
        bitrate: Option<&str>,
    ) -> Result<Iperf3> {
        let dir = self.pod_dir(pod, &format!("iperf3-client-{}", unique_tag()))?;
        let mut cmd = pod.command("iperf3");
        cmd.args(["-c", &server.to_string(), "-p", &port.to_string()])
            .args([
                "-t",
                &seconds.to_string(),
                "-J",
                "--connect-timeout",
                "3000",
            ]);
        if let Some(b) = bitrate {
            cmd.args(["-b", b]);
        }
        let proc = Proc::spawn(
            &mut cmd,
            &format!("iperf3 -c in {}", pod.name),
            &dir.join("stdout.json"),
            &dir.join("stderr.log"),
        )?;
        Ok(Iperf3 { proc })
    }

    /// A background download of the first `bytes` of [`BIG_PATH`] from
    /// `url_base` (say `http://VIP`, served by [`Cluster::nginx`]), sent by
    /// nginx at `rate` bytes per second, from `local_port` so conntrack can
    /// name its flow.
    pub fn download(
        &self,
        pod: &Host,
        url_base: &str,
        bytes: u64,
        rate: u64,
        local_port: u16,
    ) -> Result<Download> {
        let dir = self.pod_dir(pod, &format!("download-{local_port}-{}", unique_tag()))?;
        let mut cmd = pod.command("curl");
        cmd.args(["-sS", "-o", "/dev/null", "--max-time", "120"])
            .args(["--connect-timeout", "5"])
            .args(["--local-port", &local_port.to_string()])
            .args(["-r", &format!("0-{}", bytes.saturating_sub(1))])
            .args(["-w", CURL_WRITE_OUT])
            .arg(format!("{url_base}{BIG_PATH}?rate={rate}"));
        let proc = Proc::spawn(
            &mut cmd,
            &format!("download in {}", pod.name),
            &dir.join("stdout.log"),
            &dir.join("stderr.log"),
        )?;
        Ok(Download {
            proc,
            local_port,
            bytes,
        })
    }

    /// Starts `dig @server -p port name A` from `client`'s `source_port`
    /// every `every` (or as soon as the previous query ended, when it took
    /// longer), one try of `timeout` each, until stopped: a UDP client that
    /// keeps one flow, as a resolver library with a fixed port does.
    pub fn dig_loop(
        &self,
        client: &Host,
        source_port: u16,
        (server, port): (Ipv4Addr, u16),
        name: &str,
        every: Duration,
        timeout: Duration,
    ) -> DigLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (client, name, flag, log) = (
            client.clone(),
            name.to_string(),
            stop.clone(),
            queries.clone(),
        );
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = client
                    .dig_from(source_port, server, port, &name, timeout)
                    .unwrap_or_else(|e| DigOutcome {
                        exit: -1,
                        answers: Vec::new(),
                        stdout: String::new(),
                        stderr: format!("{e:#}"),
                        elapsed: started.elapsed(),
                    });
                lock(&log).push(Query { started, outcome });
                std::thread::sleep(every.saturating_sub(started.elapsed()));
            }
        });
        DigLoop {
            stop,
            queries,
            handle: Some(handle),
        }
    }

    /// A thread in which `pod` GETs `url` with a new curl (one connection)
    /// after another until stopped; every request is recorded.
    pub fn client_loop(&self, pod: &Host, url: &str, max_time: Duration) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (pod, url, flag, count) = (pod.clone(), url.to_string(), stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = pod.curl(&url, max_time).unwrap_or_else(|e| CurlOutcome {
                    exit: -1,
                    stderr: format!("{e:#}"),
                    ..CurlOutcome::default()
                });
                out.push(Request { started, outcome });
                count.fetch_add(1, Ordering::Relaxed);
            }
            out
        });
        ClientLoop {
            stop,
            done,
            handle: Some(handle),
        }
    }
}

/// `GET path` on a new HTTP/1.1 connection to `addr` (which closes it after
/// answering, as svcnat's servers do): the status code and the body.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {head:?}"),
            )
        })?;
    Ok((code, body.trim().to_string()))
}

/// One request in the access log of [`Cluster::nginx`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// The address the request came from, as the server saw it.
    pub client: Ipv4Addr,
    /// The HTTP status it answered.
    pub status: u16,
    /// The request line (`GET /?n=1 HTTP/1.1`).
    pub request: String,
}

/// Parses a line of the `svcnat` log format: `ADDR STATUS "REQUEST"`.
fn parse_access_log_line(line: &str) -> Option<AccessLogEntry> {
    let mut f = line.splitn(3, ' ');
    let client = f.next()?.parse().ok()?;
    let status = f.next()?.parse().ok()?;
    let request = f.next()?.trim().trim_matches('"').to_string();
    Some(AccessLogEntry {
        client,
        status,
        request,
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 0..self.agents.len() {
                eprintln!(
                    "---- agent log of {} (last lines) ----\n{}",
                    node_name(n),
                    tail(&self.agent_log(n), 40)
                );
            }
        }
        // Processes first (they keep namespaces alive), then pins, then
        // namespaces, then files.
        for mut p in std::mem::take(&mut *lock(&self.servers)) {
            p.kill();
        }
        for a in &self.agents {
            let mut a = lock(a);
            if let Some(mut p) = a.proc.take() {
                p.kill();
            }
            let _ = output_within(
                Command::new(&self.cfg.svcnat)
                    .arg("cleanup")
                    .arg("--bpffs")
                    .arg(&a.bpffs),
                Duration::from_secs(20),
            );
            let _ = fs::remove_dir(&a.bpffs);
        }
        self.pods.clear();
        self.more_outside.clear();
        self.outside = None;
        self.nodes.clear();
        self.fabric = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(node_name(0), "node-a");
        assert_eq!(node_name(1), "node-b");
        assert_eq!(node_addr(1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(pod_gateway(0), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(pod_addr(1, 10), Ipv4Addr::new(198, 18, 2, 10));
        assert_eq!(node_of_pod_addr(Ipv4Addr::new(198, 18, 2, 10), 2), Some(1));
        assert_eq!(node_of_pod_addr(Ipv4Addr::new(198, 18, 3, 10), 2), None);
        assert_eq!(node_of_pod_addr(Ipv4Addr::new(198, 18, 0, 10), 2), None);
    }

    #[test]
    fn curl_output_is_split_per_transfer() {
        let out = "b1\n\n@@svcnat 0 200 1 0.002 3\nb2\n\n@@svcnat 0 200 1 0.003 3\n\n\
                   @@svcnat 7 000 0 0.001 0\n";
        let o = parse_curl(out, "");
        assert_eq!(o.len(), 3);
        assert_eq!((o[0].body.as_str(), o[0].ok()), ("b1", true));
        assert_eq!(o[1].body, "b2");
        assert_eq!((o[2].exit, o[2].http_code, o[2].ok()), (7, 0, false));
        assert_eq!(o[2].body, "");
    }

    #[test]
    fn http_get_reads_the_status_and_the_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).expect("read") == 1 {
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nnot yet\n")
                .expect("write");
            String::from_utf8_lossy(&head).into_owned()
        });
        let got = http_get(addr, "/readyz", Duration::from_secs(5)).expect("GET");
        assert_eq!(got, (503, "not yet".to_string()));
        let head = server.join().expect("server");
        assert!(head.starts_with("GET /readyz HTTP/1.1\r\n"), "{head:?}");
    }

    #[test]
    fn access_log_lines_are_parsed() {
        let e = parse_access_log_line("198.18.0.200 200 \"GET /?n=3 HTTP/1.1\"");
        assert_eq!(
            e,
            Some(AccessLogEntry {
                client: OUTSIDE_ADDR,
                status: 200,
                request: "GET /?n=3 HTTP/1.1".into(),
            })
        );
        assert_eq!(parse_access_log_line("garbage"), None);
        assert_eq!(parse_access_log_line(""), None);
    }

    #[test]
    fn dig_answers_are_read_from_the_answer_section() {
        let out =
            ";; ANSWER SECTION:\nwhoami.test.\t0\tIN\tA\t198.18.255.1\n\n;; Query time: 0 msec\n";
        assert_eq!(parse_dig_answers(out), vec![Ipv4Addr::new(198, 18, 255, 1)]);
    }

    #[test]
    fn manifests_are_valid_objects() {
        let pod = Host {
            name: "b1".into(),
            node: Some(0),
            addr: pod_addr(0, 10),
            netns: String::new(),
            veth: None,
        };
        let yaml = service_with_slice(
            "demo",
            "web",
            Ipv4Addr::new(198, 19, 0, 10),
            &[Port::tcp("http", 80, 8080), Port::udp("dns", 53, 53)],
            &[Endpoint::of(&pod), Endpoint::bare(pod_addr(1, 10))],
        );
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde_yaml::Value::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 2);
        let objects = crate::sources::manifests::parse_manifests(&yaml).expect("valid objects");
        assert_eq!(objects.len(), 2);
        assert_eq!(docs[0]["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(docs[0]["spec"]["selector"]["app"], "web");
        assert_eq!(docs[1]["ports"][1]["protocol"], "UDP");
        assert_eq!(docs[1]["endpoints"][0]["nodeName"], "node-a");
        assert_eq!(docs[1]["endpoints"][0]["conditions"]["ready"], true);
        assert!(docs[1]["endpoints"][1].get("nodeName").is_none());
        let empty = slice_yaml(
            "demo",
            "web-1",
            "web",
            &[Port::tcp("http", 80, 80).unnamed()],
            &[],
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&empty).expect("yaml");
        assert_eq!(
            crate::sources::manifests::parse_manifests(&empty)
                .expect("valid slice")
                .len(),
            1
        );
        assert_eq!(v["endpoints"].as_sequence().map(Vec::len), Some(0));
        assert!(v["ports"][0].get("name").is_none());
    }
}
