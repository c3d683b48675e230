//! Servers in pods: nginx, dnsmasq and iperf3, started in the background
//! and waited for until they listen.

use std::{
    fs::{self, File},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    process::{Proc, output_within},
    topology::{Cluster, Host, POLL, lock},
    yaml::Proto,
};

/// Size of the file nginx serves at [`BIG_PATH`] (sparse, all zeros).
pub const BIG_FILE_BYTES: u64 = 64 << 20;
/// Where nginx serves the big file.
pub const BIG_PATH: &str = "/big";

impl Cluster {
    pub(super) fn pod_dir(&self, pod: &Host, what: &str) -> Result<PathBuf> {
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

    /// nginx in `pod` on port 80 of both families: `/` answers with the pod's name, and
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
             server {{\n    listen 80 backlog=4096;\n    listen [::]:80 backlog=4096;\n\
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

    /// The requests from IPv4 clients nginx in `pod` ([`Cluster::nginx`])
    /// has answered so far, oldest first (empty before the first one).
    pub fn nginx_access_log(&self, pod: &Host) -> Result<Vec<AccessLogEntry>> {
        self.nginx_access_log_as(pod)
    }

    /// [`Cluster::nginx_access_log`] with the client addresses read as `A`:
    /// `IpAddr` for every request, `Ipv6Addr` for those from IPv6 clients
    /// only.
    pub fn nginx_access_log_as<A: FromStr>(&self, pod: &Host) -> Result<Vec<AccessLogEntry<A>>> {
        let path = self.pod_dir(pod, "nginx")?.join("access.log");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().filter_map(parse_access_log_line).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// dnsmasq in `pod` on port 53 (UDP and TCP) of both of its addresses,
    /// answering the `records` (A for IPv4 addresses, AAAA for IPv6 ones)
    /// and nothing else. Returns once it listens.
    pub fn dnsmasq<A: Into<IpAddr> + Copy>(&self, pod: &Host, records: &[(&str, A)]) -> Result<()> {
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
        .arg(format!("--listen-address={},{}", pod.addr, pod.addr6))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!(
            "--log-facility={}",
            dir.join("dnsmasq.log").display()
        ));
        for &(name, addr) in records {
            cmd.arg(format!("--host-record={name},{}", addr.into()));
        }
        self.start_server(pod, "dnsmasq", &mut cmd, &dir)?;
        self.wait_listening(pod, Proto::Udp, 53)?;
        self.wait_listening(pod, Proto::Tcp, 53)
    }

    /// An iperf3 server in `pod` on `port` (of both families: iperf3 listens
    /// on `::` with IPv4-mapped addresses allowed). Returns once it listens.
    pub fn iperf3_server(&self, pod: &Host, port: u16) -> Result<()> {
        let dir = self.pod_dir(pod, &format!("iperf3-{port}"))?;
        let mut cmd = pod.command("iperf3");
        cmd.args(["-s", "-p", &port.to_string()]);
        self.start_server(pod, "iperf3 -s", &mut cmd, &dir)?;
        self.wait_listening(pod, Proto::Tcp, port)
    }
}

/// One request in the access log of [`Cluster::nginx`], its client address
/// read as `A`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry<A = Ipv4Addr> {
    /// The address the request came from, as the server saw it.
    pub client: A,
    /// The HTTP status it answered.
    pub status: u16,
    /// The request line (`GET /?n=1 HTTP/1.1`).
    pub request: String,
}

/// Parses a line of the `svcnat` log format: `ADDR STATUS "REQUEST"`; None
/// when it is not one or `ADDR` is no `A`.
fn parse_access_log_line<A: FromStr>(line: &str) -> Option<AccessLogEntry<A>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    use crate::cluster::topology::{OUTSIDE_ADDR, OUTSIDE_ADDR6};

    #[test]
    fn access_log_lines_are_parsed() {
        let e: Option<AccessLogEntry> =
            parse_access_log_line("198.18.0.200 200 \"GET /?n=3 HTTP/1.1\"");
        assert_eq!(
            e,
            Some(AccessLogEntry {
                client: OUTSIDE_ADDR,
                status: 200,
                request: "GET /?n=3 HTTP/1.1".into(),
            })
        );
        assert_eq!(parse_access_log_line::<IpAddr>("garbage"), None);
        assert_eq!(parse_access_log_line::<IpAddr>(""), None);
        let v6 = "2001:db8::200 404 \"GET /x HTTP/1.1\"";
        assert_eq!(parse_access_log_line::<Ipv4Addr>(v6), None);
        let e = parse_access_log_line::<IpAddr>(v6).expect("an IPv6 line");
        assert_eq!((e.client, e.status), (IpAddr::V6(OUTSIDE_ADDR6), 404));
        let e = parse_access_log_line::<Ipv6Addr>(v6).expect("an IPv6 line");
        assert_eq!(e.client, OUTSIDE_ADDR6);
    }
}
