//! The healthCheckNodePort responder over real sockets. Each test runs in a
//! network namespace of its own (its own loopback, so every port is free and
//! the responder binds 0.0.0.0 as in production); the sync test also writes
//! maps under a private bpffs folder.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;
use svcnat::{
    dataplane::{Dataplane, DataplaneConfig, MapSizes},
    health::AgentHealth,
    healthcheck::{self, HealthCheckService, HealthChecks, Responder},
    model::{NodeInfo, ServiceName},
    sources::{Kind, Object, SourceEvent},
    sync::{SyncStats, Syncer},
};
use svcnat_testkit::pins::PinDir;
use svcnat_testkit::{
    netns::{NetNs, unique_tag},
    skip::Needs,
    skip_unless,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
};

/// Runs `f` to completion on a single-threaded runtime in a new network
/// namespace (deleted afterwards).
fn in_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let ns = NetNs::new(&format!("svcnat-hc-{}", unique_tag())).expect("create a namespace");
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f());
    })
    .expect("test body in the namespace");
}

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `METHOD path` to 127.0.0.1:`port`; the connection error, if any.
async fn request(method: &str, port: u16, path: &str) -> io::Result<Reply> {
    let mut s = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: lb-probe\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

async fn get(port: u16) -> Reply {
    request("GET", port, "/")
        .await
        .unwrap_or_else(|e| panic!("GET port {port}: {e}"))
}

fn body(ns: &str, name: &str, n: usize, healthy: bool) -> String {
    format!(
        r#"{{"service":{{"namespace":"{ns}","name":"{name}"}},"localEndpoints":{n},"serviceProxyHealthy":{healthy}}}"#
    )
}

fn hc(list: &[(u16, &str, usize)]) -> HealthChecks {
    list.iter()
        .map(|(port, name, n)| {
            (
                *port,
                HealthCheckService {
                    service: ServiceName::new("shop", *name),
                    local_endpoints: *n,
                },
            )
        })
        .collect()
}

fn is_refused(r: &io::Result<Reply>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// Whether connections to `port` are refused within 2 s. The listener is
/// closed when `apply` returns, but a process that another test forks at
/// that moment holds a copy of its descriptor until it execs.
async fn refused(port: u16) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = request("GET", port, "/").await;
        if is_refused(&r) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("port {port} still answers: {r:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An agent that stays healthy through a test: synced, a pass just now, an
/// hour's timeout.
fn healthy_agent() -> Arc<AgentHealth> {
    let health = Arc::new(AgentHealth::new(Duration::from_secs(3600)));
    health.pass_finished();
    health
}

#[test]
fn answers_like_kube_proxy_for_local_and_remote_endpoints_and_agent_health() {
    skip_unless!(Needs::netns());
    in_netns(|| async {
        let health = healthy_agent();
        let mut responder = Responder::new(healthcheck::DEFAULT_BIND_ADDRESS, Arc::clone(&health));
        let report = responder
            .apply(&hc(&[(32001, "web", 2), (32002, "remote", 0)]))
            .await;
        assert_eq!(report.opened, vec![32001, 32002]);
        assert!(report.failed.is_empty(), "{report:?}");

        let r = get(32001).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body("shop", "web", 2, true));
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-content-type-options"], "nosniff");
        assert_eq!(r.headers["x-load-balancing-endpoints"], "2");
        let r = get(32002).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, body("shop", "remote", 0, true));
        assert_eq!(r.headers["x-load-balancing-endpoints"], "0");

        // Any path; HEAD gets the head only.
        let r = request("GET", 32001, "/healthz?probe=1")
            .await
            .expect("any path");
        assert_eq!((r.status, r.body), (200, body("shop", "web", 2, true)));
        let r = request("HEAD", 32001, "/").await.expect("HEAD");
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        assert_eq!(r.headers["x-load-balancing-endpoints"], "2");

        // An unhealthy agent (here: not synced) fails every port.
        health.synced.store(false, Ordering::Relaxed);
        let r = get(32001).await;
        assert_eq!((r.status, r.body), (503, body("shop", "web", 2, false)));

        // New counts apply without reopening; a port that goes is closed.
        health.synced.store(true, Ordering::Relaxed);
        let report = responder.apply(&hc(&[(32002, "remote", 1)])).await;
        assert_eq!((report.opened, report.closed), (vec![], vec![32001]));
        let r = get(32002).await;
        assert_eq!((r.status, r.body), (200, body("shop", "remote", 1, true)));
        assert!(refused(32001).await, "32001 is closed");
        responder.close_all().await;
        assert!(refused(32002).await, "32002 is closed");
    });
}

#[test]
fn a_port_in_use_is_reported_and_retried_and_the_others_are_served() {
    skip_unless!(Needs::netns());
    in_netns(|| async {
        let blocker = std::net::TcpListener::bind("0.0.0.0:32003").expect("occupy 32003");
        let mut responder = Responder::new(healthcheck::DEFAULT_BIND_ADDRESS, healthy_agent());
        let want = hc(&[(32003, "busy", 1), (32004, "free", 1)]);
        let report = responder.apply(&want).await;
        assert_eq!(report.opened, vec![32004]);
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert_eq!(report.failed[0].0, 32003);
        assert!(responder.failed().contains_key(&32003));
        assert_eq!(get(32004).await.status, 200);

        drop(blocker);
        // A process another test forks in these same moments holds a copy
        // of the blocker until it execs (close-on-exec): the port is free
        // only then. The responder retries on every apply, as on every
        // change and every RETRY_EVERY in the agent.
        let mut report = responder.apply(&want).await;
        for _ in 0..50 {
            if !report.opened.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            report = responder.apply(&want).await;
        }
        assert_eq!(report.opened, vec![32003], "retried: {report:?}");
        assert!(responder.failed().is_empty());
        assert_eq!(responder.listening(), vec![32003, 32004]);
        assert_eq!(get(32003).await.body, body("shop", "busy", 1, true));
        responder.close_all().await;
    });
}

#[test]
fn run_follows_the_published_set_and_closes_everything_at_the_end() {
    skip_unless!(Needs::netns());
    in_netns(|| async {
        let (tx, rx) = watch::channel(HealthChecks::new());
        let responder = Responder::new(healthcheck::DEFAULT_BIND_ADDRESS, healthy_agent());
        let task = tokio::spawn(healthcheck::run(responder, rx, Duration::from_millis(50)));
        tx.send_replace(hc(&[(32005, "web", 1)]));
        let mut tries = 0;
        let r = loop {
            match request("GET", 32005, "/").await {
                Ok(r) => break r,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 200, "port 32005 never opened: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!((r.status, r.body), (200, body("shop", "web", 1, true)));
        drop(tx);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("run returns once the sender is gone")
            .expect("run did not panic");
        assert!(refused(32005).await);
    });
}

// The whole path: model objects -> sync pass -> published set -> listeners.

/// LoadBalancer service number `n` (its own cluster IP and node port).
fn lb_service(n: u8, name: &str, policy: &str, hc_port: u16) -> Object {
    Object::Service(Box::new(
        serde_json::from_value::<Service>(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": format!("198.19.0.{n}"),
                "externalTrafficPolicy": policy,
                "healthCheckNodePort": hc_port,
                "ports": [{"name": "http", "port": 80, "nodePort": 30080 + u16::from(n),
                           "protocol": "TCP"}]
            }
        }))
        .expect("service"),
    ))
}

/// A slice of `svc` with one ready endpoint per (address, node).
fn slice(svc: &str, eps: &[(&str, &str)]) -> Object {
    let eps: Vec<_> = eps
        .iter()
        .map(|(addr, node)| json!({"addresses": [addr], "nodeName": node}))
        .collect();
    Object::EndpointSlice(Box::new(
        serde_json::from_value::<EndpointSlice>(json!({
            "metadata": {"name": format!("{svc}-1"), "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps
        }))
        .expect("slice"),
    ))
}

#[test]
fn sync_passes_open_answer_hand_over_and_close_the_ports() {
    skip_unless!(Needs::netns());
    in_netns(|| async {
        let dir = PinDir::new("hc");
        let mut dp = Dataplane::open(&DataplaneConfig {
            bpffs: dir.0.clone(),
            sizes: MapSizes::default(),
        })
        .expect("open the dataplane");
        let node = NodeInfo {
            zone: None,
            name: "node-a".into(),
            addresses: vec!["198.18.0.2".parse().expect("address")],
        };
        let mut syncer = Syncer::new(node, Arc::new(SyncStats::default()));
        let mut responder = Responder::new(healthcheck::DEFAULT_BIND_ADDRESS, healthy_agent());
        syncer.handle(SourceEvent::Resync {
            kind: Kind::Service,
            objects: vec![
                lb_service(1, "web", "Local", 32011),
                lb_service(2, "remote", "Local", 32012),
                lb_service(3, "web2", "Local", 32011),
            ],
        });
        syncer.handle(SourceEvent::Resync {
            kind: Kind::EndpointSlice,
            objects: vec![
                slice("web", &[("198.18.1.1", "node-a"), ("198.18.1.2", "node-b")]),
                slice("remote", &[("198.18.1.3", "node-b")]),
                slice(
                    "web2",
                    &[("198.18.1.4", "node-a"), ("198.18.1.5", "node-a")],
                ),
            ],
        });
        let report = syncer.pass(&mut dp);
        assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
        let conflict: Vec<&String> = report
            .skipped
            .iter()
            .filter(|p| p.contains("health check node port 32011"))
            .collect();
        assert_eq!(conflict.len(), 1, "{:?}", report.skipped);
        assert!(
            conflict[0].starts_with("service shop/web2:")
                && conflict[0].contains("belongs to service shop/web"),
            "{}",
            conflict[0]
        );
        assert_eq!(
            syncer.health_checks().keys().copied().collect::<Vec<_>>(),
            vec![32011, 32012]
        );
        responder.apply(syncer.health_checks()).await;
        let r = get(32011).await;
        assert_eq!((r.status, r.body), (200, body("shop", "web", 1, true)));
        let r = get(32012).await;
        assert_eq!((r.status, r.body), (503, body("shop", "remote", 0, true)));

        // A later pass does not report the same conflict again.
        syncer.handle(SourceEvent::Apply(slice(
            "remote",
            &[("198.18.1.3", "node-b"), ("198.18.1.6", "node-a")],
        )));
        let report = syncer.pass(&mut dp);
        assert!(
            !report.skipped.iter().any(|p| p.contains("32011")),
            "{:?}",
            report.skipped
        );
        responder.apply(syncer.health_checks()).await;
        let r = get(32012).await;
        assert_eq!((r.status, r.body), (200, body("shop", "remote", 1, true)));

        // The holder goes: the other claimant takes the port over.
        syncer.handle(SourceEvent::Delete {
            kind: Kind::Service,
            namespace: "shop".into(),
            name: "web".into(),
        });
        syncer.pass(&mut dp);
        let report = responder.apply(syncer.health_checks()).await;
        assert!(report.closed.is_empty(), "the port stays open: {report:?}");
        let r = get(32011).await;
        assert_eq!((r.status, r.body), (200, body("shop", "web2", 2, true)));

        // Policy Cluster needs no port; a deleted service neither.
        syncer.handle(SourceEvent::Apply(lb_service(
            2, "remote", "Cluster", 32012,
        )));
        syncer.handle(SourceEvent::Delete {
            kind: Kind::Service,
            namespace: "shop".into(),
            name: "web2".into(),
        });
        syncer.pass(&mut dp);
        assert!(syncer.health_checks().is_empty());
        let report = responder.apply(syncer.health_checks()).await;
        assert_eq!(report.closed, vec![32011, 32012]);
        assert!(refused(32011).await);
        assert!(refused(32012).await);
    });
}
