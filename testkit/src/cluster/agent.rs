//! The agents: `svcnat run` on every node (start, stop, restart, wait until
//! ready, logs) and what `svcnat inspect` shows of their maps.

use std::{
    collections::BTreeSet,
    fs::{self, OpenOptions},
    io::{Read, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    process::{Command, ExitStatus},
    sync::MutexGuard,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;

use super::{
    process::{Proc, output_within},
    topology::{
        AgentState, Cluster, HAIRPIN_ADDR, HAIRPIN_ADDR6, Host, POD_GLOB, POLL, lock, node_name,
    },
    yaml::Proto,
};

/// A service frontend as `svcnat inspect services --json` shows it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Frontend {
    /// `namespace/name:port`.
    pub name: String,
    /// VIP (of either family).
    pub vip: IpAddr,
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

impl Cluster {
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

    /// What node `node`'s datapath counted under `reason` (packets; socket
    /// calls for the socket hooks' reasons), from `svcnat inspect stats
    /// --json`.
    pub fn stat(&self, node: usize, reason: &str) -> Result<u64> {
        let text = self.inspect(node, "stats", true)?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text)?;
        Ok(rows
            .iter()
            .filter(|r| r["reason"] == reason)
            .filter_map(|r| r["packets"].as_u64())
            .sum())
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
            .args(["--hairpin-address", &HAIRPIN_ADDR6.to_string()])
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
        let mut value = svcnat::metrics::DEFAULT_HEALTHZ_ADDR.to_string();
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

    /// `GET path` (`/healthz`, `/livez`, `/readyz`) of node `node`'s agent,
    /// from inside the node: the status code and the body.
    pub fn agent_health(&self, node: usize, path: &str) -> Result<(u16, String)> {
        let addr = self
            .healthz_addr()?
            .ok_or_else(|| anyhow!("the agents serve no health endpoints"))?;
        let ns = &self
            .nodes
            .get(node)
            .ok_or_else(|| anyhow!("no node {node}"))?
            .ns;
        let owned = path.to_string();
        ns.run(move || http_get(addr, &owned, Duration::from_secs(2)))
            .with_context(|| format!("enter {}", ns.name()))?
            .with_context(|| format!("GET {path} of the agent of {}", node_name(node)))
    }

    /// Polls node `node`'s agent log (all starts) until a line contains
    /// `needle` (say a problem the agent reports with a service: `skipped:
    /// service NS/NAME port P: WHY`); returns that line. Fails after
    /// `limit`, and at once when the agent has exited (with its log).
    pub fn wait_agent_log(&self, node: usize, needle: &str, limit: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            self.check_interrupt()?;
            let log = self.agent_log(node);
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(st) = self.agent_exited(node) {
                bail!(
                    "the agent of {} exited ({st}) before logging {needle:?}; its log:\n{}",
                    node_name(node),
                    tail(&log, 30)
                );
            }
            if start.elapsed() > limit {
                bail!(
                    "the agent of {} logged no {needle:?} within {limit:?}; its log ends:\n{}",
                    node_name(node),
                    tail(&log, 30)
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

    /// The backend (`addr:port`, `[addr]:port` for IPv6) that node
    /// `node`'s conntrack pins the flow from `client` to.
    pub fn flow_backend(
        &self,
        node: usize,
        client: impl Into<SocketAddr>,
    ) -> Result<Option<String>> {
        let src = client.into().to_string();
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
    /// `backends` (any order), or, with None, no such frontend. IPv4; see
    /// [`Cluster::wait_backends_ip`] for either family.
    pub fn wait_backends(
        &self,
        vip: Ipv4Addr,
        port: u16,
        proto: Proto,
        backends: Option<&[SocketAddrV4]>,
        limit: Duration,
    ) -> Result<Duration> {
        let backends: Option<Vec<SocketAddr>> =
            backends.map(|b| b.iter().copied().map(SocketAddr::V4).collect());
        self.wait_backends_ip(vip.into(), port, proto, backends.as_deref(), limit)
    }

    /// [`Cluster::wait_backends`] for a VIP and backends of either family
    /// (a frontend's backends are of its own family).
    pub fn wait_backends_ip(
        &self,
        vip: IpAddr,
        port: u16,
        proto: Proto,
        backends: Option<&[SocketAddr]>,
        limit: Duration,
    ) -> Result<Duration> {
        let want: Option<BTreeSet<String>> =
            backends.map(|b| b.iter().map(ToString::to_string).collect());
        let frontend = SocketAddr::new(vip, port);
        let what = match &want {
            Some(w) => format!("{frontend}/{} -> {w:?} on every node", proto.inspect()),
            None => format!("{frontend}/{} gone from every node", proto.inspect()),
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

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
