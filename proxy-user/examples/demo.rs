//! The svcnat demo (`cargo xtask demo`): a two-node cluster on this machine,
//! made of network namespaces, with the real `svcnat run` on each node
//! reading `deploy/examples/`, and real nginx, dnsmasq, curl and dig in pods.
//!
//! It sends requests through the dual-stack `web` Service from a pod, to its
//! IPv4 and to its IPv6 cluster IP, prints which backend answered how often
//! on each family, asks the `dns` and `external` Services, shows `svcnat
//! inspect services`, and tears everything down, also on Ctrl-C or failure.
//! Needs root. Everything stays inside namespaces it creates, on
//! 198.18.0.0/15 and 2001:db8::/32.
//!
//! `demo tutorial` (`cargo xtask demo tutorial`) walks the Kubernetes
//! tutorial "Using a Service to expose your app" on the same kind of
//! cluster, in svcnat's standalone mode with Pods and no EndpointSlice: the
//! Service `kubectl expose` writes, reached at NodeIP:NodePort from outside,
//! a label added to one pod and a Service selecting it, then the Services
//! deleted while the pods keep answering.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use svcnat_testkit::{
    cluster::{
        Cluster, ClusterConfig, CurlOutcome, Host, Proto, node_addr, node_addr6, node_name,
        pod_addr, pod_gateway, pod_gateway6, pod_yaml, url,
    },
    skip::{Needs, skip_reason},
};

/// Start the demo cluster, send traffic through the example Services, tear down.
#[derive(Parser)]
#[command(name = "demo")]
struct Args {
    /// `examples` (the default): the Services of `deploy/examples/`;
    /// `tutorial`: the "expose your app" tutorial with Pods and selectors.
    #[arg(value_enum, default_value = "examples")]
    part: Part,
    /// Requests to send through each of the `web` Service's cluster IPs
    /// (each a new connection).
    #[arg(long, default_value_t = 90)]
    requests: usize,
    /// The folder of manifests every agent reads.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples"))]
    manifests: PathBuf,
    /// The `svcnat` binary (default: the one built next to this example).
    #[arg(long)]
    svcnat: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Part {
    Examples,
    Tutorial,
}

/// The Services of `deploy/examples/` (web.yaml, dns.yaml, external.yaml).
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const WEB_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 53);
const EXTERNAL_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 80);
const DNS_NAME: &str = "web.demo.svc.cluster.local";

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Nginx,
    Dnsmasq,
}

/// The pods the example EndpointSlices name: (name, node, last octet, server).
const PODS: &[(&str, usize, u8, Server)] = &[
    ("web-1", 0, 10, Server::Nginx),
    ("web-2", 0, 11, Server::Nginx),
    ("web-3", 1, 10, Server::Nginx),
    ("dns-1", 0, 20, Server::Dnsmasq),
    ("dns-2", 1, 20, Server::Dnsmasq),
    ("external", 1, 30, Server::Nginx),
];
const CLIENT: (&str, usize, u8) = ("client", 0, 100);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "demo: must run as root: it creates network namespaces and loads eBPF programs \
             (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN). Try: sudo -E cargo xtask demo"
        );
        return ExitCode::from(2);
    }
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
    let started = Instant::now();
    let result = match args.part {
        Part::Examples => run(&args),
        Part::Tutorial => tutorial(&args),
    };
    match result {
        Ok(()) => {
            println!(
                "\ndone in {:.1} s: everything torn down",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            if INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("\ndemo: interrupted; everything torn down");
            } else {
                eprintln!("\ndemo: error: {e:#}\n(everything torn down)");
            }
            ExitCode::FAILURE
        }
    }
}

fn svcnat_binary(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.svcnat {
        return Ok(p.clone());
    }
    // target/<profile>/examples/demo -> target/<profile>/svcnat
    let exe = std::env::current_exe().context("where is this program")?;
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("svcnat"))
        .context("no folder above this program")?;
    if !bin.is_file() {
        bail!(
            "the svcnat binary is not at {}: build it with \
             `cargo build --release -p proxy-user --bin svcnat` (or run `cargo xtask demo`), \
             or pass --svcnat PATH",
            bin.display()
        );
    }
    Ok(bin)
}

fn step(n: u32, text: &str) {
    println!("\n[{n}/6] {text}");
}

fn run(args: &Args) -> Result<()> {
    if let Some(why) = skip_reason(&Needs::cluster(&["nginx", "dnsmasq", "curl", "dig"])) {
        bail!("cannot run here: {why}");
    }
    let svcnat = svcnat_binary(args)?;
    let manifests = args
        .manifests
        .canonicalize()
        .with_context(|| format!("manifests folder {}", args.manifests.display()))?;

    step(
        1,
        "network namespaces: a fabric bridge, two nodes, their pod bridges",
    );
    let t = Instant::now();
    let mut cfg = ClusterConfig::new(svcnat, 2).prefix("demo");
    cfg.manifests = Some(manifests.clone());
    let mut cluster = Cluster::new(cfg)?;
    cluster.set_interrupt(&INTERRUPTED);
    for i in 0..cluster.nodes() {
        println!(
            "  {}: eth0 {} and {} on the fabric, cni0 {}/24 and {}/64 for its pods (ns {})",
            node_name(i),
            node_addr(i),
            node_addr6(i),
            pod_gateway(i),
            pod_gateway6(i),
            cluster.node_ns(i).name()
        );
    }
    println!("  ({:.0} ms)", t.elapsed().as_secs_f64() * 1e3);
    check_interrupt()?;

    step(
        2,
        "pods (namespaces behind veths vp* on cni0) and their servers",
    );
    let t = Instant::now();
    let mut web = Vec::new();
    for &(name, node, host, server) in PODS {
        check_interrupt()?;
        let pod = cluster.add_pod(node, name, pod_addr(node, host))?;
        match server {
            Server::Nginx => cluster.nginx(&pod)?,
            Server::Dnsmasq => cluster.dnsmasq(&pod, &[(DNS_NAME, WEB_VIP)])?,
        }
        let what = match server {
            Server::Nginx => "nginx :80, answers with its name",
            Server::Dnsmasq => "dnsmasq :53, knows web.demo.svc.cluster.local",
        };
        println!(
            "  {name:<9} {:<12} {:<15} on {}  {what}",
            pod.addr.to_string(),
            pod.addr6.to_string(),
            node_name(node)
        );
        if name.starts_with("web") {
            web.push(pod);
        }
    }
    let (name, node, host) = CLIENT;
    let client = cluster.add_pod(node, name, pod_addr(node, host))?;
    println!(
        "  {name:<9} {:<12} {:<15} on {}  curl, dig",
        client.addr.to_string(),
        client.addr6.to_string(),
        node_name(node)
    );
    println!("  ({:.0} ms)", t.elapsed().as_secs_f64() * 1e3);

    step(
        3,
        &format!("svcnat run on every node, reading {}", manifests.display()),
    );
    let t = Instant::now();
    cluster.start_agents()?;
    for i in 0..cluster.nodes() {
        println!(
            "  nsenter --net={} svcnat run --node-name {} --manifests {} \
             --pod-interfaces 'vp*' --node-interfaces eth0 --bpffs {}",
            cluster.node_ns(i).path().display(),
            node_name(i),
            manifests.display(),
            cluster.bpffs(i).display()
        );
    }
    let vips: [IpAddr; 2] = [WEB_VIP.into(), WEB_VIP6.into()];
    for vip in vips {
        let web_backends: Vec<SocketAddr> = web
            .iter()
            .map(|p| SocketAddr::new(p.addr_for(vip), 80))
            .collect();
        cluster
            .wait_backends_ip(
                vip,
                80,
                Proto::Tcp,
                Some(&web_backends),
                Duration::from_secs(30),
            )
            .context(
                "the web Service of deploy/examples/web.yaml should have the three web pods \
                 as backends on both families (did the example change?)",
            )?;
        println!(
            "  every node programmed {} -> {} backends after {:.0} ms",
            SocketAddr::new(vip, 80),
            web_backends.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    step(
        4,
        &format!(
            "{} requests from {} to each of {} and {}, a new connection each",
            args.requests,
            client.name,
            url(WEB_VIP, 80),
            url(WEB_VIP6, 80)
        ),
    );
    let mut outcomes = Vec::new();
    for vip in vips {
        check_interrupt()?;
        let t = Instant::now();
        let got = client.curl_many(&url(vip, 80), args.requests.max(1), Duration::from_secs(5))?;
        outcomes.push(got);
        println!(
            "  {} requests from {} to {} in {:.0} ms",
            args.requests.max(1),
            client.addr_for(vip),
            url(vip, 80),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    print_table(&web, &outcomes[0], &outcomes[1]);
    let outcomes: Vec<CurlOutcome> = outcomes.into_iter().flatten().collect();

    step(5, "the other example Services");
    check_interrupt()?;
    let dig = client.dig(DNS_VIP, 53, DNS_NAME, false, Duration::from_secs(2))?;
    println!(
        "  dig @{DNS_VIP} {DNS_NAME} (UDP)  -> {}",
        show(&dig.answers, dig.exit)
    );
    let dig = client.dig(DNS_VIP, 53, DNS_NAME, true, Duration::from_secs(2))?;
    println!(
        "  dig @{DNS_VIP} {DNS_NAME} +tcp   -> {}",
        show(&dig.answers, dig.exit)
    );
    let ext = client.curl(
        &format!("http://{EXTERNAL_VIP}:8080/"),
        Duration::from_secs(5),
    )?;
    println!(
        "  curl http://{EXTERNAL_VIP}:8080/ (no selector, hand-written slice) -> {}",
        if ext.ok() {
            format!("answered by {}", ext.body)
        } else {
            format!("failed (curl exit {})", ext.exit)
        }
    );

    step(
        6,
        &format!(
            "svcnat inspect services --bpffs {}",
            cluster.bpffs(0).display()
        ),
    );
    check_interrupt()?;
    for line in cluster.inspect(0, "services", false)?.lines() {
        println!("  {line}");
    }

    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    println!("\ntearing down (agents, servers, pins, namespaces)...");
    drop(cluster);
    if failed > 0 {
        bail!("{failed} of {} requests failed", outcomes.len());
    }
    Ok(())
}

fn show(answers: &[Ipv4Addr], exit: i32) -> String {
    if answers.is_empty() {
        format!("no answer (dig exit {exit})")
    } else {
        answers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How often each answer (a backend's name, or a failure) came back.
fn count(outcomes: &[CurlOutcome]) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes {
        let key = if o.ok() {
            o.body.clone()
        } else {
            format!("(failed, curl exit {})", o.exit)
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Answers per backend over each family.
fn print_table(web: &[Host], over4: &[CurlOutcome], over6: &[CurlOutcome]) {
    let (mut c4, mut c6) = (count(over4), count(over6));
    println!(
        "  {:<8} {:<8} {:>6} {:>6}",
        "backend", "node", "IPv4", "IPv6"
    );
    for pod in web {
        let (n4, n6) = (
            c4.remove(&pod.name).unwrap_or(0),
            c6.remove(&pod.name).unwrap_or(0),
        );
        println!(
            "  {:<8} {:<8} {:>6} {:>6}  {}",
            pod.name,
            pod.node_name().unwrap_or_default(),
            n4,
            n6,
            "#".repeat((n4 + n6).div_ceil(4))
        );
    }
    for (family, rest) in [("IPv4", c4), ("IPv6", c6)] {
        for (other, n) in rest {
            println!("  {family} {other:<30} {n:>6}");
        }
    }
}

const BOOTCAMP_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 80);
const BOOTCAMP_V1_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 81);
const BOOTCAMP_NODE_PORT: u16 = 30080;
const APP: (&str, &str) = ("app", "kubernetes-bootcamp");

/// The Service `kubectl expose deployment/kubernetes-bootcamp
/// --type=NodePort --port 8080 --target-port 80` writes (the pods' nginx
/// listens on 80; the tutorial's image on 8080), with the cluster IP and
/// node port the API server would have allocated.
fn bootcamp_service(
    name: &str,
    vip: Ipv4Addr,
    selector: &[(&str, &str)],
    node_port: bool,
) -> String {
    let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let (kind, np) = if node_port {
        ("NodePort", format!("nodePort: {BOOTCAMP_NODE_PORT}, "))
    } else {
        ("ClusterIP", String::new())
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  labels: {{app: kubernetes-bootcamp}}\n  \
         name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  \
         externalTrafficPolicy: Cluster\n  internalTrafficPolicy: Cluster\n  ipFamilies: [IPv4]\n  \
         ipFamilyPolicy: SingleStack\n  ports:\n  - {{{np}port: 8080, protocol: TCP, targetPort: 80}}\n  \
         selector: {{{}}}\n  sessionAffinity: None\n  type: {kind}\n",
        selector.join(", ")
    )
}

/// Answers by pod of `n` requests to `url` from `client`.
fn tally(client: &Host, url: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    let outcomes = client.curl_many(url, n, Duration::from_secs(5))?;
    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    if failed > 0 {
        bail!("{failed} of {n} requests to {url} failed");
    }
    Ok(count(&outcomes))
}

fn tutorial(args: &Args) -> Result<()> {
    if let Some(why) = skip_reason(&Needs::cluster(&["nginx", "curl"])) {
        bail!("cannot run here: {why}");
    }
    let svcnat = svcnat_binary(args)?;
    let step = |n: u32, text: &str| println!("\n[{n}/5] {text}");
    step(
        1,
        "a two-node cluster; two pods labelled app=kubernetes-bootcamp, one per node",
    );
    let mut cluster = Cluster::new(ClusterConfig::new(svcnat.clone(), 2).prefix("tut"))?;
    cluster.set_interrupt(&INTERRUPTED);
    let pods = [
        cluster.add_pod(0, "bootcamp-1", pod_addr(0, 10))?,
        cluster.add_pod(1, "bootcamp-2", pod_addr(1, 10))?,
    ];
    for p in &pods {
        cluster.nginx(p)?;
    }
    let client = cluster.add_pod(1, "client", pod_addr(1, 100))?;
    let write_pods = |labels: [&[(&str, &str)]; 2]| -> Result<()> {
        let text: Vec<String> = pods
            .iter()
            .zip(labels)
            .map(|(p, l)| pod_yaml("default", p, l, true))
            .collect();
        cluster.write_manifest("pods.yaml", &text.join("---\n"))
    };
    write_pods([&[APP], &[APP]])?;
    println!("  kubectl get pods -o wide (the Pod manifests written with their real IPs):");
    println!(
        "  {:<12} {:<6} {:<7} {:<13} {:<7} LABELS",
        "NAME", "READY", "STATUS", "IP", "NODE"
    );
    for p in &pods {
        println!(
            "  {:<12} {:<6} {:<7} {:<13} {:<7} app=kubernetes-bootcamp",
            p.name,
            "1/1",
            "Running",
            p.addr.to_string(),
            p.node_name().unwrap_or_default()
        );
    }
    check_interrupt()?;

    step(
        2,
        "kubectl expose deployment/kubernetes-bootcamp --type=NodePort --port 8080",
    );
    let service = bootcamp_service("kubernetes-bootcamp", BOOTCAMP_VIP, &[APP], true);
    for line in service.lines() {
        println!("  {line}");
    }
    cluster.write_manifest("service.yaml", &service)?;
    cluster.start_agents()?;
    let backends: Vec<SocketAddr> = pods
        .iter()
        .map(|p| SocketAddr::new(p.addr.into(), 80))
        .collect();
    cluster.wait_backends_ip(
        BOOTCAMP_VIP.into(),
        8080,
        Proto::Tcp,
        Some(&backends),
        Duration::from_secs(30),
    )?;
    println!("  svcnat (no EndpointSlice in the folder) selected both pods:");
    for line in
        svcnat::inspect::render_pods(cluster.manifests_dir(), &svcnat::inspect::View::default())?
            .lines()
    {
        println!("    {line}");
    }
    check_interrupt()?;

    step(
        3,
        "curl http://NodeIP:NodePort from outside the cluster, on both nodes",
    );
    let outside = cluster.outside().context("the outside client")?.clone();
    let n = (args.requests / 3).max(10);
    for node in 0..cluster.nodes() {
        let u = url(node_addr(node), BOOTCAMP_NODE_PORT);
        let t = tally(&outside, &u, n)?;
        println!(
            "  {u}: {}",
            t.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    check_interrupt()?;

    step(
        4,
        "kubectl label pods bootcamp-1 version=v1; a Service selecting version=v1",
    );
    write_pods([&[APP, ("version", "v1")], &[APP]])?;
    let v1 = bootcamp_service(
        "kubernetes-bootcamp-v1",
        BOOTCAMP_V1_VIP,
        &[APP, ("version", "v1")],
        false,
    );
    cluster.write_manifest("service-v1.yaml", &v1)?;
    let only = [SocketAddr::new(pods[0].addr.into(), 80)];
    cluster.wait_backends_ip(
        BOOTCAMP_V1_VIP.into(),
        8080,
        Proto::Tcp,
        Some(&only),
        Duration::from_secs(30),
    )?;
    let u = url(BOOTCAMP_V1_VIP, 8080);
    let t = tally(&client, &u, n)?;
    println!(
        "  from {}: {u}: {}",
        client.name,
        t.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if t.keys().any(|k| k != &pods[0].name) {
        bail!("the version=v1 Service answered from another pod: {t:?}");
    }
    check_interrupt()?;

    step(
        5,
        "kubectl delete service -l app=kubernetes-bootcamp: the pods keep running",
    );
    cluster.remove_manifest("service.yaml")?;
    cluster.remove_manifest("service-v1.yaml")?;
    for vip in [BOOTCAMP_VIP, BOOTCAMP_V1_VIP] {
        cluster.wait_backends_ip(vip.into(), 8080, Proto::Tcp, None, Duration::from_secs(30))?;
    }
    let gone = client.curl(&url(BOOTCAMP_VIP, 8080), Duration::from_secs(2))?;
    println!(
        "  curl {}: {}",
        url(BOOTCAMP_VIP, 8080),
        if gone.ok() {
            "answered (unexpected)".to_string()
        } else {
            format!("no Service (curl exit {})", gone.exit)
        }
    );
    for p in &pods {
        let o = client.curl(&url(p.addr, 80), Duration::from_secs(5))?;
        println!(
            "  curl {} (the pod itself): {}",
            url(p.addr, 80),
            if o.ok() {
                format!("answered by {}", o.body)
            } else {
                format!("failed (curl exit {})", o.exit)
            }
        );
        if !o.ok() {
            bail!("{} stopped answering", p.name);
        }
    }
    println!("\ntearing down (agents, servers, pins, namespaces)...");
    drop(cluster);
    Ok(())
}
