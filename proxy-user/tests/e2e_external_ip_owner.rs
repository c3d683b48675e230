//! End to end (`svcnat_testkit::cluster`, two nodes): who owns an external
//! IP (CVE-2020-8554 class).
//!
//! - Two Services claim one `externalIP:port`; the younger sorts first
//!   (namespace `a-young`) and its manifest is written first. On every
//!   node, before and after both agents restart, traffic to the external IP
//!   reaches the older one's backend and the younger is reported. When the
//!   older lets go, the younger takes over.
//! - An older Service in namespace `a-evil` claims the victim's cluster IP
//!   as an external IP: refused and reported; the cluster IP keeps serving
//!   the victim's backend.
//! - `--external-ip-cidrs`: an external IP outside is refused and reported.
//! - Other ports of an external IP are not rejected: a real host there
//!   still answers.
//!
//! kube-proxy has no such rules (it programs what it is given; in nftables
//! mode two services writing one `service-ips` element leave whichever was
//! written last): these are svcnat's, see `model::ownership`.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use svcnat_testkit::{
    cluster::{Cluster, ClusterConfig, Endpoint, Frontend, Host, Port, pod_addr, slice_yaml},
    skip::{Needs, skip_reason},
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
/// How long agents may take to show a change (generous: tests run in parallel).
const WAIT: Duration = Duration::from_secs(30);
/// Time for a request that must succeed.
const CURL_TIME: Duration = Duration::from_secs(5);
/// The contested external IP: a free address of the fabric, routed by the
/// outside client to node-b.
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 150);
/// `--external-ip-cidrs` of the agents: EXT is inside, OUTSIDE_CIDRS not.
const ALLOWED: &str = "198.18.0.128/25";
/// An external IP outside [`ALLOWED`].
const NOT_ALLOWED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 60);
/// The victim's cluster IP, which the attacker claims as an external IP.
const VICTIM_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 73);

/// A Service `ns/name` with cluster IP `cluster`, port 80/TCP to the pods'
/// 80, created at `created` (uid derived from the name), with
/// `external_ips`, and its EndpointSlice with `backend`.
fn service(
    ns: &str,
    name: &str,
    created: &str,
    cluster: Ipv4Addr,
    external_ips: &[Ipv4Addr],
    backend: &Host,
) -> String {
    let ips: Vec<String> = external_ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
         creationTimestamp: \"{created}\"\n  uid: uid-{ns}-{name}\n\
         spec:\n  clusterIP: {cluster}\n  clusterIPs: [\"{cluster}\"]\n  \
         externalIPs: [{}]\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 80}}\n",
        ips.join(", ")
    );
    format!(
        "{svc}---\n{}",
        slice_yaml(
            ns,
            &format!("{name}-1"),
            name,
            &[Port::tcp("http", 80, 80)],
            &[Endpoint::of(backend)]
        )
    )
}

/// The backend sets of every map entry of `vip:80`/TCP.
fn entries(fs: &[Frontend], vip: Ipv4Addr) -> Vec<BTreeSet<String>> {
    fs.iter()
        .filter(|f| f.vip == vip && f.port == 80 && f.protocol == "tcp")
        .map(Frontend::backend_set)
        .collect()
}

/// Whether `vip:80` is programmed and every entry has exactly `pod`.
fn only(fs: &[Frontend], vip: Ipv4Addr, pod: &Host) -> bool {
    let want: BTreeSet<String> = [format!("{}:80", pod.addr)].into();
    let e = entries(fs, vip);
    !e.is_empty() && e.iter().all(|b| *b == want)
}

/// GETs `url` from `client` until one answers 200; then `n` more, each on
/// a new connection; the names of the backends that answered.
fn answers(client: &Host, url: &str, n: usize) -> BTreeSet<String> {
    let start = Instant::now();
    loop {
        let o = client.curl(url, CURL_TIME).expect("curl");
        if o.ok() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "{} never got an answer from {url}; last: {o:?}",
            client.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got: BTreeSet<String> = client
        .curl_many(url, n, CURL_TIME)
        .expect("curl")
        .into_iter()
        .map(|o| {
            assert!(o.ok(), "{} -> {url}: {o:?}", client.name);
            o.body
        })
        .collect();
    eprintln!("{} -> {url}: {got:?}", client.name);
    got
}

/// How many lines of node `node`'s agent log (all starts) contain `needle`.
fn logged(c: &Cluster, node: usize, needle: &str) -> usize {
    c.agent_log(node)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Waits until every node's agent logged `needle` at least `times` times.
fn wait_logged(c: &Cluster, needle: &str, times: usize) {
    for node in 0..c.nodes() {
        let start = Instant::now();
        while logged(c, node, needle) < times {
            assert!(
                start.elapsed() < WAIT,
                "node {node} logged {needle:?} {} times, not {times}; log:\n{}",
                logged(c, node, needle),
                svcnat_testkit::cluster::tail(&c.agent_log(node), 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn the_older_service_owns_a_contested_external_ip_on_every_node_and_across_restarts() {
    if let Some(why) = skip_reason(&Needs::cluster(&["nginx", "curl"])) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut cfg = ClusterConfig::new(BIN, 2).prefix("eo");
    cfg.agent_args
        .extend(["--external-ip-cidrs", ALLOWED].map(String::from));
    let mut c = Cluster::new(cfg).expect("build the cluster");
    let mut nginx = |node: usize, host: u8, name: &str| {
        let pod = c.add_pod(node, name, pod_addr(node, host)).expect("pod");
        c.nginx(&pod).expect("nginx");
        pod
    };
    let young_pod = nginx(0, 10, "young1");
    let old_pod = nginx(1, 10, "old1");
    let victim_pod = nginx(1, 11, "victim1");
    let evil_pod = nginx(0, 11, "evil1");
    let client = c.add_pod(0, "client", pod_addr(0, 20)).expect("client pod");
    let outside = c.outside().expect("outside client").clone();
    c.route_via_node(&outside, EXT, 1).expect("route");

    // Written in the order a first-come rule would favour the wrong ones.
    let young = service(
        "a-young",
        "young",
        "2025-02-01T00:00:00Z",
        Ipv4Addr::new(198, 19, 0, 71),
        &[EXT, NOT_ALLOWED],
        &young_pod,
    );
    let old = service(
        "z-old",
        "old",
        "2025-01-01T00:00:00Z",
        Ipv4Addr::new(198, 19, 0, 72),
        &[EXT],
        &old_pod,
    );
    let evil = service(
        "a-evil",
        "web",
        "2020-01-01T00:00:00Z",
        Ipv4Addr::new(198, 19, 0, 74),
        &[VICTIM_IP],
        &evil_pod,
    );
    let victim = service(
        "z-victim",
        "web",
        "2025-03-01T00:00:00Z",
        VICTIM_IP,
        &[],
        &victim_pod,
    );
    for (file, text) in [
        ("1-young.yaml", &young),
        ("2-evil.yaml", &evil),
        ("3-old.yaml", &old),
        ("4-victim.yaml", &victim),
    ] {
        c.write_manifest(file, text).expect("manifest");
    }
    let owned_by_the_old = |_: usize, fs: &[Frontend]| {
        only(fs, EXT, &old_pod)
            && only(fs, VICTIM_IP, &victim_pod)
            && entries(fs, NOT_ALLOWED).is_empty()
    };
    c.start_agents().expect("start agents");
    c.wait_frontends(
        "EXT owned by z-old/old on every node",
        WAIT,
        owned_by_the_old,
    )
    .expect("the agents programmed the services");

    let young_told = "service a-young/young port http: frontend 198.18.0.150:80/TCP belongs to the older service z-old/old";
    let evil_told = "service a-evil/web: external IP 198.19.0.73 is the cluster IP of service z-victim/web: refused";
    let not_allowed_told =
        "service a-young/young: external IP 198.18.0.60 is outside --external-ip-cidrs: refused";
    let check = |round: usize| {
        let ext = format!("http://{EXT}/?round={round}");
        let want_old: BTreeSet<String> = [old_pod.name.clone()].into();
        assert_eq!(answers(&outside, &ext, 10), want_old, "outside, via node-b");
        assert_eq!(answers(&client, &ext, 10), want_old, "a pod on node-a");
        let want_victim: BTreeSet<String> = [victim_pod.name.clone()].into();
        assert_eq!(
            answers(&client, &format!("http://{VICTIM_IP}/"), 10),
            want_victim,
            "the victim's cluster IP keeps its backend"
        );
        for needle in [young_told, evil_told, not_allowed_told] {
            wait_logged(&c, needle, round + 1);
        }
    };
    check(0);

    // Both agents restart: they adopt the pins and list the services anew.
    for node in 0..2 {
        c.restart_agent(node).expect("restart");
    }
    for node in 0..2 {
        c.wait_agent_ready(node, WAIT).expect("ready after restart");
    }
    c.wait_frontends("EXT still owned by z-old/old", WAIT, owned_by_the_old)
        .expect("after the restarts");
    check(1);

    // The older lets go: the younger takes the external IP over.
    c.remove_manifest("3-old.yaml").expect("remove");
    c.wait_frontends("EXT handed to a-young/young", WAIT, |_, fs| {
        only(fs, EXT, &young_pod)
    })
    .expect("handed over");
    let want_young: BTreeSet<String> = [young_pod.name.clone()].into();
    assert_eq!(
        answers(&outside, &format!("http://{EXT}/?after=delete"), 10),
        want_young
    );
}

/// An external IP gets no "known VIP, unknown port" reject: a pod still
/// reaches the address's other ports, here a real host (the outside
/// client, with nginx on 80) whose address a Service claims on 8080.
/// kube-proxy (nftables) rejects undefined ports of cluster IPs only (its
/// `cluster-ips` set); external IPs are in `service-ips` alone.
#[test]
fn other_ports_of_an_external_ip_reach_the_real_host() {
    if let Some(why) = skip_reason(&Needs::cluster(&["nginx", "curl"])) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut c = Cluster::new(ClusterConfig::new(BIN, 2).prefix("er")).expect("build the cluster");
    let backend = c.add_pod(1, "web1", pod_addr(1, 10)).expect("pod");
    c.nginx(&backend).expect("nginx");
    let client = c.add_pod(0, "client", pod_addr(0, 20)).expect("client pod");
    let outside = c.outside().expect("outside client").clone();
    c.nginx(&outside).expect("nginx on the outside client");
    c.route_via_node(&outside, client.addr, 0)
        .expect("route back to the pod");
    let host = outside.addr;
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: alt, namespace: demo}}\n\
         spec:\n  clusterIP: 198.19.0.81\n  externalIPs: [\"{host}\"]\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 8080, targetPort: 80}}\n---\n{}",
        slice_yaml(
            "demo",
            "alt-1",
            "alt",
            &[Port::tcp("http", 8080, 80)],
            &[Endpoint::of(&backend)]
        )
    );
    c.write_manifest("alt.yaml", &svc).expect("manifest");
    c.start_agents().expect("start agents");
    c.wait_frontends("the external IP on 8080", WAIT, |_, fs| {
        fs.iter().any(|f| f.vip == host && f.port == 8080)
    })
    .expect("programmed");
    let service: BTreeSet<String> = [backend.name.clone()].into();
    assert_eq!(
        answers(&client, &format!("http://{host}:8080/"), 5),
        service,
        "the Service's port"
    );
    let real: BTreeSet<String> = [outside.name.clone()].into();
    assert_eq!(
        answers(&client, &format!("http://{host}/"), 5),
        real,
        "another port of the external IP: the real host, not a reject"
    );
}
