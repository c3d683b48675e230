//! Clients in pods and outside clients: curl, dig and iperf3 runs, once
//! ([`Host::curl`], [`Host::dig`]) or in the background ([`ClientLoop`],
//! [`DigLoop`], [`Download`], [`Iperf3`]), and what they report.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};

use super::{
    process::{Proc, output_within},
    servers::BIG_PATH,
    topology::{Cluster, Host, lock},
};
use crate::netns::unique_tag;

impl Host {
    /// One HTTP GET with curl on a new connection; its `stderr` is curl's
    /// verbose account (see [`CurlOutcome::connect_error`]). An IPv6
    /// address goes in brackets (`http://[2001:db8:1::10]/`; curl's URL
    /// globbing leaves IPv6 addresses alone): see [`url`].
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
    /// `server` may be of either family.
    pub fn dig(
        &self,
        server: impl Into<IpAddr>,
        port: u16,
        name: &str,
        tcp: bool,
        timeout: Duration,
    ) -> Result<DigOutcome> {
        let query: &[&str] = if tcp {
            &[name, "A", "+tcp"]
        } else {
            &[name, "A"]
        };
        self.dig_with(None, server.into(), port, query, timeout)
    }

    /// [`Host::dig`] for the IPv6 addresses of `name` (`AAAA`), over UDP.
    pub fn dig_aaaa(
        &self,
        server: impl Into<IpAddr>,
        port: u16,
        name: &str,
        timeout: Duration,
    ) -> Result<DigOutcome> {
        self.dig_with(None, server.into(), port, &[name, "AAAA"], timeout)
    }

    /// [`Host::dig`] over UDP from this host's `source_port` (`dig -b`,
    /// from its address of `server`'s family): queries repeated this way
    /// are one flow.
    pub fn dig_from(
        &self,
        source_port: u16,
        server: impl Into<IpAddr>,
        port: u16,
        name: &str,
        timeout: Duration,
    ) -> Result<DigOutcome> {
        let server = server.into();
        self.dig_with(Some(source_port), server, port, &[name, "A"], timeout)
    }

    /// One try of `dig @server -p port QUERY...` (`QUERY`: the name, the
    /// record type, options).
    fn dig_with(
        &self,
        source_port: Option<u16>,
        server: IpAddr,
        port: u16,
        query: &[&str],
        timeout: Duration,
    ) -> Result<DigOutcome> {
        let mut cmd = self.command("dig");
        if let Some(sport) = source_port {
            cmd.arg("-b")
                .arg(format!("{}#{sport}", self.addr_for(server)));
        }
        cmd.arg(format!("@{server}"))
            .args(["-p", &port.to_string()])
            .args(query)
            .arg("+tries=1")
            .arg(format!("+time={}", timeout.as_secs().max(1)));
        let started = Instant::now();
        let out = output_within(&mut cmd, timeout * 3 + Duration::from_secs(5))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let answers = parse_dig_answers(&stdout, "A");
        let answers6 = parse_dig_answers(&stdout, "AAAA");
        Ok(DigOutcome {
            exit: out.status.code().unwrap_or(-1),
            answers,
            answers6,
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
    /// refused", "No route to host"), from a single request's verbose output:
    /// a connection the peer refused (`* connect to ADDR port P failed:
    /// WHY`), or a `connect()` the system failed at once (`* Immediate
    /// connect fail for ADDR: WHY`, as for a Service without endpoints
    /// reached from a node, whose socket hooks refuse the call).
    pub fn connect_error(&self) -> Option<&str> {
        self.stderr.lines().find_map(|l| {
            if let Some(l) = l.strip_prefix("* connect to ") {
                return Some(l.split_once(" failed: ")?.1.trim());
            }
            let l = l.strip_prefix("* Immediate connect fail for ")?;
            Some(l.split_once(": ")?.1.trim())
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
    /// The AAAA records of the answer section.
    pub answers6: Vec<std::net::Ipv6Addr>,
    /// Full output.
    pub stdout: String,
    /// Errors.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// The records of type `kind` (`A`, `AAAA`) in dig's answer section.
fn parse_dig_answers<A: std::str::FromStr>(stdout: &str, kind: &str) -> Vec<A> {
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
                && f[3] == kind
                && let Ok(a) = f[4].parse()
            {
                out.push(a);
            }
        }
    }
    out
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

impl Cluster {
    /// An iperf3 client in `pod` sending to `server:port` (of either
    /// family) for `seconds` at `bitrate` (iperf3's `-b`, e.g. `200M`; None:
    /// as fast as it can), in the background.
    pub fn iperf3_client(
        &self,
        pod: &Host,
        server: impl Into<IpAddr>,
        port: u16,
        seconds: u32,
        bitrate: Option<&str>,
    ) -> Result<Iperf3> {
        let dir = self.pod_dir(pod, &format!("iperf3-client-{}", unique_tag()))?;
        let mut cmd = pod.command("iperf3");
        cmd.args(["-c", &server.into().to_string(), "-p", &port.to_string()])
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
    /// `url_base` (say `http://VIP` or `http://[VIP6]`, see [`url`], served
    /// by [`Cluster::nginx`]), sent by
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

    /// Starts `dig @server -p port name A` (`server` of either family) from
    /// `client`'s `source_port`
    /// every `every` (or as soon as the previous query ended, when it took
    /// longer), one try of `timeout` each, until stopped: a UDP client that
    /// keeps one flow, as a resolver library with a fixed port does.
    pub fn dig_loop(
        &self,
        client: &Host,
        source_port: u16,
        (server, port): (impl Into<IpAddr>, u16),
        name: &str,
        every: Duration,
        timeout: Duration,
    ) -> DigLoop {
        let server = server.into();
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
                        answers6: Vec::new(),
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

/// `http://ADDR:PORT/` with an IPv6 address in brackets, the base of a
/// URL for [`Host::curl`].
pub fn url(addr: impl Into<IpAddr>, port: u16) -> String {
    format!("http://{}/", std::net::SocketAddr::new(addr.into(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn connect_errors_are_read_from_curls_verbose_lines() {
        let refused = |stderr: &str| CurlOutcome {
            stderr: stderr.into(),
            ..CurlOutcome::default()
        };
        let peer = refused(
            "*   Trying 198.19.0.10:80...\n* connect to 198.19.0.10 port 80 failed: Connection refused\n",
        );
        assert_eq!(peer.connect_error(), Some("Connection refused"));
        let local = refused(
            "* Immediate connect fail for 198.19.0.10: Connection refused\n* Failed to connect\n",
        );
        assert_eq!(local.connect_error(), Some("Connection refused"));
        assert_eq!(refused("* Connected to x\n").connect_error(), None);
    }

    #[test]
    fn dig_answers_are_read_from_the_answer_section() {
        let out =
            ";; ANSWER SECTION:\nwhoami.test.\t0\tIN\tA\t198.18.255.1\n\n;; Query time: 0 msec\n";
        assert_eq!(
            parse_dig_answers::<Ipv4Addr>(out, "A"),
            vec![Ipv4Addr::new(198, 18, 255, 1)]
        );
        assert!(parse_dig_answers::<std::net::Ipv6Addr>(out, "AAAA").is_empty());
        let out = ";; ANSWER SECTION:\nv6.test.\t0\tIN\tAAAA\t2001:db8:2::10\n";
        assert_eq!(
            parse_dig_answers::<std::net::Ipv6Addr>(out, "AAAA"),
            vec![crate::cluster::topology::pod_addr6(1, 10)]
        );
        assert_eq!(
            url(Ipv4Addr::new(198, 19, 0, 10), 80),
            "http://198.19.0.10:80/"
        );
        assert_eq!(
            url(crate::cluster::topology::pod_addr6(0, 10), 80),
            "http://[2001:db8:1::10]:80/"
        );
    }
}
