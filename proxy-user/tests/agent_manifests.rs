//! `svcnat run --manifests` end to end: the real binary runs inside a node
//! namespace (via `nsenter --net`, so it sees the host's bpffs), programs a
//! folder of manifests, follows edits to it, repairs drift, and survives a
//! SIGKILL restart without failing a single connection.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use svcnat_testkit::{
    netns::{NetNs, unique_tag, veth},
    skip::Needs,
    skip_unless,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const GW: &str = "198.18.0.1";
const BIN: &str = env!("CARGO_BIN_EXE_svcnat");

struct Agent {
    child: Option<Child>,
    node: PathBuf,
    bpffs: PathBuf,
    manifests: PathBuf,
}

impl Agent {
    fn start(node: &NetNs, bpffs: &Path, manifests: &Path) -> Self {
        let mut a = Self {
            child: None,
            node: node.path(),
            bpffs: bpffs.to_path_buf(),
            manifests: manifests.to_path_buf(),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.node.display()))
            .arg(BIN)
            .args([
                "run",
                "--node-name",
                "node-a",
                "--pod-interfaces",
                "vh*",
                "--node-interfaces",
                "eth0",
            ])
            .arg("--manifests")
            .arg(&self.manifests)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(["--repair-interval", "1", "--conntrack-size", "65536"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start svcnat run");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (nsenter execs the agent, so the pid is the agent's) and wait.
    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new(BIN)
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output();
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn inspect_services(bpffs: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["inspect", "services", "--json", "--bpffs"])
        .arg(bpffs)
        .output()
        .expect("run inspect");
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Backends of the frontend VIP:port according to `svcnat inspect`, or None
/// when the frontend is absent.
fn backends_of(bpffs: &Path, port: u16) -> Option<Vec<String>> {
    inspect_services(bpffs)
        .into_iter()
        .find(|s| s["vip"] == VIP.to_string() && s["port"] == port)
        .map(|s| {
            s["backends"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        })
}

/// Polls `f` until it returns true; returns the time it took.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn manifest(backends: &[(Ipv4Addr, &str)]) -> String {
    let mut eps = String::new();
    for (addr, node) in backends {
        eps.push_str(&format!(
            "  - addresses: [\"{addr}\"]\n    conditions: {{ready: true}}\n    nodeName: {node}\n"
        ));
    }
    if backends.is_empty() {
        eps.push_str("  []\n");
    }
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  clusterIP: {VIP}
  clusterIPs: [\"{VIP}\"]
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
{eps}"
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, path).expect("rename manifest");
}

fn serve(ns: &NetNs, name: &'static str, stop: Arc<AtomicBool>) {
    drop(ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:8080").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let mut buf = [0u8; 16];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(name.as_bytes());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(_) => {}
            }
        }
    }));
}

fn request() -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"hi")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

struct Setup {
    // Dropped first: the agent stops and its pins go before the namespaces.
    agent: Agent,
    node: NetNs,
    client: NetNs,
    b1: NetNs,
    b2: NetNs,
    stop: Arc<AtomicBool>,
    dir: TempDir,
    file: PathBuf,
    bpffs: PathBuf,
    both: [(Ipv4Addr, &'static str); 2],
}

/// A node namespace with a bridge, a client pod and two backend pods
/// serving on 8080, a manifests folder with one service over both, and the
/// agent running in the node namespace.
fn setup(prefix: &str) -> Setup {
    let t = unique_tag();
    let node = NetNs::new(&format!("{prefix}-node-{t}")).expect("node");
    node.ip(&["link", "add", "br0", "type", "bridge"])
        .expect("bridge");
    node.ip(&["addr", "add", &format!("{GW}/24"), "dev", "br0"])
        .expect("addr");
    node.ip(&["link", "set", "br0", "up"]).expect("up");
    node.sysctl("net.ipv4.ip_forward", "1").expect("fwd");
    node.sysctl("net.ipv4.conf.all.send_redirects", "0")
        .expect("redirects");
    node.sysctl("net.ipv4.conf.br0.send_redirects", "0")
        .expect("redirects");
    let pod = |name: &str, addr: &str| -> NetNs {
        let ns = NetNs::new(&format!("{prefix}-{name}-{t}")).expect("pod");
        let host = format!("vh{name}");
        veth(&node, &host, &ns, "eth0").expect("veth");
        node.ip(&["link", "set", &host, "master", "br0"])
            .expect("master");
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])
            .expect("addr");
        ns.ip(&["route", "add", "default", "via", GW])
            .expect("route");
        ns
    };
    let client = pod("c", "198.18.0.10");
    let b1 = pod("b1", "198.18.0.11");
    let b2 = pod("b2", "198.18.0.12");
    let stop = Arc::new(AtomicBool::new(false));
    serve(&b1, "b1", stop.clone());
    serve(&b2, "b2", stop.clone());

    let dir = TempDir(std::env::temp_dir().join(format!("svcnat-{prefix}-{t}")));
    std::fs::create_dir_all(&dir.0).expect("manifests dir");
    let file = dir.0.join("web.yaml");
    let both = [
        (Ipv4Addr::new(198, 18, 0, 11), "node-a"),
        (Ipv4Addr::new(198, 18, 0, 12), "node-b"),
    ];
    write_atomically(&file, &manifest(&both));
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/svcnat-{prefix}-{t}"));
    let agent = Agent::start(&node, &bpffs, &dir.0);

    Setup {
        agent,
        node,
        client,
        b1,
        b2,
        stop,
        dir,
        file,
        bpffs,
        both,
    }
}

#[test]
fn agent_programs_manifests_follows_edits_repairs_drift_and_restarts_without_loss() {
    skip_unless!(Needs::agent());
    let Setup {
        mut agent,
        node: _node,
        client,
        b1: _b1,
        b2: _b2,
        stop,
        dir: _dir,
        file,
        bpffs,
        both,
    } = setup("sa");
    let first = wait_for("the first sync", Duration::from_secs(30), || {
        backends_of(&bpffs, 80).is_some_and(|b| b.len() == 2)
    });
    eprintln!("first sync visible after {first:?} (includes agent start)");
    let labels: Vec<String> = inspect_services(&bpffs)
        .iter()
        .filter_map(|s| s["name"].as_str().map(String::from))
        .collect();
    assert_eq!(labels, vec!["demo/web:http".to_string()]);

    // Traffic reaches both backends.
    let seen = client
        .run(|| {
            let mut m: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..30 {
                *m.entry(request().expect("request through the ClusterIP"))
                    .or_default() += 1;
            }
            m
        })
        .expect("client");
    assert!(
        seen.contains_key("b1") && seen.contains_key("b2"),
        "{seen:?}"
    );

    // An edit removing b2: after the maps show it, no new connection reaches b2.
    write_atomically(&file, &manifest(&both[..1]));
    let edit = wait_for(
        "the edit to reach the maps",
        Duration::from_secs(10),
        || backends_of(&bpffs, 80).is_some_and(|b| b == vec!["198.18.0.11:8080".to_string()]),
    );
    eprintln!("manifest change -> map update observed after {edit:?} (polling every 5 ms)");
    let after = client
        .run(|| {
            (0..20)
                .map(|_| request().expect("request after edit"))
                .collect::<Vec<_>>()
        })
        .expect("client");
    assert!(after.iter().all(|w| w == "b1"), "{after:?}");

    // Drift: an entry deleted by hand comes back at the next repair.
    let pin = bpffs.join(proxy_common::map_names::SVC4);
    let out = Command::new("bpftool")
        .args(["map", "delete", "pinned"])
        .arg(&pin)
        .args(["key", "198", "19", "0", "10", "80", "0", "6", "0"])
        .output();
    if let Ok(out) = out {
        assert!(
            out.status.success(),
            "bpftool delete: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for("drift repair", Duration::from_secs(10), || {
            backends_of(&bpffs, 80).is_some()
        });
    } else {
        eprintln!("bpftool not installed: drift repair not exercised here");
    }

    // SIGKILL and restart while a client connects in a loop: no failure.
    write_atomically(&file, &manifest(&both));
    wait_for("both backends again", Duration::from_secs(10), || {
        backends_of(&bpffs, 80).is_some_and(|b| b.len() == 2)
    });
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicU32::new(0));
    let successes = Arc::new(AtomicU32::new(0));
    let loop_handle = {
        let (running, failures, successes) = (running.clone(), failures.clone(), successes.clone());
        client.spawn(move || {
            while running.load(Ordering::Relaxed) {
                match request() {
                    Ok(_) => successes.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    agent.kill();
    std::thread::sleep(Duration::from_millis(300));
    agent.spawn();
    std::thread::sleep(Duration::from_millis(700));
    running.store(false, Ordering::Relaxed);
    loop_handle.join().expect("join").expect("client ns");
    assert!(
        successes.load(Ordering::Relaxed) > 50,
        "client loop made too few requests"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "connections failed across the restart"
    );
    assert_eq!(
        backends_of(&bpffs, 80).map(|b| b.len()),
        Some(2),
        "restart kept the service"
    );

    // Deleting the service: refused at once.
    std::fs::remove_file(&file).expect("remove manifest");
    wait_for("the service to go", Duration::from_secs(10), || {
        backends_of(&bpffs, 80).is_none()
    });
    // The VIP is unknown now: the node has no route for it and answers with
    // an ICMP error, so the client fails at once rather than timing out.
    let err = client
        .run(request)
        .expect("client")
        .expect_err("service deleted");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
        ),
        "{err:?}"
    );
    stop.store(true, Ordering::Relaxed);
}

/// A backend that streams bytes to each connection until the peer closes.
fn serve_stream(ns: &NetNs, stop: Arc<AtomicBool>) {
    drop(ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:9090").expect("bind stream");
        l.set_nonblocking(true).expect("nonblocking");
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let chunk = [0x5au8; 16 * 1024];
                        while !stop.load(Ordering::Relaxed) {
                            if s.write_all(&chunk).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(_) => {}
            }
        }
    }));
}

#[test]
fn twenty_restarts_under_load_fail_no_connection_and_keep_a_long_transfer() {
    skip_unless!(Needs::agent());
    let Setup {
        mut agent,
        node: _node,
        client,
        b1,
        b2: _b2,
        stop,
        dir: _dir,
        file,
        bpffs,
        both,
    } = setup("sr");
    wait_for("the first sync", Duration::from_secs(30), || {
        backends_of(&bpffs, 80).is_some_and(|b| b.len() == 2)
    });
    // A second service for the long transfer, on b1 only.
    serve_stream(&b1, stop.clone());
    let stream_svc = manifest(&both).replace("name: web,", "name: stream,").replace("name: web-1", "name: stream-1")
        .replace("kubernetes.io/service-name: web", "kubernetes.io/service-name: stream")
        .replace(&format!("clusterIP: {VIP}\n  clusterIPs: [\"{VIP}\"]"), "clusterIP: 198.19.0.11\n  clusterIPs: [\"198.19.0.11\"]")
        .replace("port: 80, targetPort: 8080", "port: 90, targetPort: 9090")
        .replace("port: 8080, protocol", "port: 9090, protocol")
        .replace("  - addresses: [\"198.18.0.12\"]\n    conditions: {ready: true}\n    nodeName: node-b\n", "");
    write_atomically(&file.with_file_name("stream.yaml"), &stream_svc);
    wait_for("the stream service", Duration::from_secs(10), || {
        inspect_services(&bpffs).iter().any(|s| {
            s["vip"] == "198.19.0.11" && s["backends"].as_array().is_some_and(|b| b.len() == 1)
        })
    });

    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicU32::new(0));
    let successes = Arc::new(AtomicU32::new(0));
    let clients = {
        let (running, failures, successes) = (running.clone(), failures.clone(), successes.clone());
        client.spawn(move || {
            while running.load(Ordering::Relaxed) {
                match request() {
                    Ok(_) => successes.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let transfer = {
        let running = running.clone();
        client.spawn(move || -> std::io::Result<u64> {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from(([198, 19, 0, 11], 90)),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 64 * 1024];
            let mut total = 0u64;
            while running.load(Ordering::Relaxed) {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "stream closed",
                    ));
                }
                total += n as u64;
            }
            Ok(total)
        })
    };
    for i in 0..20 {
        if i % 2 == 0 {
            agent.terminate();
        } else {
            agent.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
        agent.spawn();
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(300));
    running.store(false, Ordering::Relaxed);
    clients.join().expect("join").expect("client ns");
    let moved = transfer
        .join()
        .expect("join")
        .expect("client ns")
        .expect("the long transfer survived 20 restarts");
    eprintln!(
        "20 restarts: {} requests ok, {} failed; long transfer moved {} MiB",
        successes.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        moved >> 20
    );
    assert!(
        successes.load(Ordering::Relaxed) > 100,
        "too few requests made"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "connections failed across restarts"
    );
    assert!(moved > 1 << 20, "the transfer moved only {moved} bytes");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn cleanup_removes_every_pin_and_link_and_nothing_else() {
    skip_unless!(Needs::agent());
    let Setup {
        mut agent,
        node: _node,
        client,
        b1: _b1,
        b2: _b2,
        stop,
        dir: _dir,
        file: _file,
        bpffs,
        both: _,
    } = setup("sc");
    wait_for("the first sync", Duration::from_secs(30), || {
        backends_of(&bpffs, 80).is_some_and(|b| b.len() == 2)
    });
    // Two TCX links (ingress, egress) pinned per pod veth. (bpftool 7.1 does
    // not list TCX links, so detachment is checked by behaviour below.)
    let pins: Vec<String> = std::fs::read_dir(bpffs.join("links"))
        .expect("links folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let (hooks, veths): (Vec<&String>, Vec<&String>) =
        pins.iter().partition(|p| p.starts_with("cgroup-"));
    assert_eq!(veths.len(), 6, "two links for each of the three pod veths");
    // And one cgroup link per socket hook, whose ids must be gone after
    // the cleanup.
    assert_eq!(hooks.len(), proxy_common::SOCK_HOOKS.len(), "{hooks:?}");
    let hook_links: Vec<u32> = hooks
        .iter()
        .map(|p| {
            let pinned = aya::programs::links::PinnedLink::from_pin(bpffs.join("links").join(p))
                .expect("pinned cgroup link");
            aya::programs::links::FdLink::from(pinned)
                .info()
                .expect("link info")
                .id()
        })
        .collect();
    // A pin of someone else's in the same bpffs must survive.
    let other = PathBuf::from(format!("{}-other", bpffs.display()));
    std::fs::create_dir_all(&other).expect("other pin folder");
    agent.terminate();
    // The datapath keeps working with the agent stopped.
    assert_eq!(
        client
            .run(request)
            .expect("client")
            .expect("served while the agent is stopped")
            .len(),
        2
    );
    let out = Command::new(BIN)
        .arg("cleanup")
        .arg("--bpffs")
        .arg(&bpffs)
        .output()
        .expect("cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!bpffs.exists(), "pin folder still there");
    assert!(other.exists(), "cleanup touched another folder");
    let _ = std::fs::remove_dir(&other);
    // With the links gone the programs are detached: the VIP is no longer
    // translated, so the client cannot reach the service (the kernel frees a
    // link whose last reference went from a workqueue: allow it a moment).
    wait_for("the programs to detach", Duration::from_secs(10), || {
        client.run(request).expect("client").is_err()
    });
    wait_for(
        "the socket hooks' links to go",
        Duration::from_secs(10),
        || {
            !aya::programs::loaded_links()
                .flatten()
                .any(|l| hook_links.contains(&l.id()))
        },
    );
    stop.store(true, Ordering::Relaxed);
}
