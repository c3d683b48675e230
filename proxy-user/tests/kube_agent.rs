//! The kube source, the sync loop and the real maps together, against the
//! in-process API server: objects added, changed and deleted on the server
//! show up in the pinned maps; a relist after `410 Gone` and a dropped watch
//! change nothing that did not change.

mod support;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use support::apiserver::ApiServer;
use svcnat::{
    dataplane::{Dataplane, DataplaneConfig, MapSizes, cleanup},
    health::AgentHealth,
    inspect,
    model::NodeInfo,
    sources::{self, Kind, SourceEvent},
    sync::{self, LoopConfig, SyncStats, Syncer},
};
use svcnat_testkit::{skip::Needs, skip_unless};
use tokio::sync::mpsc;

fn service(name: &str, ip: &str, port: u16) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": port, "targetPort": "web", "protocol": "TCP"}]}
    }))
    .expect("service")
}

fn slice(name: &str, svc: &str, addrs: &[&str]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = addrs
        .iter()
        .map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}, "nodeName": "node-a"}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("slice")
}

/// (label -> sorted backends) as the pinned maps say.
fn maps(dir: &Path) -> BTreeMap<String, Vec<String>> {
    inspect::services(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let mut b = r.backends;
            b.sort();
            (format!("{} {}:{}", r.name, r.vip, r.port), b)
        })
        .collect()
}

async fn wait_maps(dir: &Path, want: &BTreeMap<String, Vec<String>>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = maps(dir);
        if &got == want {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("maps never became {want:#?}\nlast seen {got:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn entry(label: &str, vip: &str, backends: &[&str]) -> (String, Vec<String>) {
    let mut b: Vec<String> = backends.iter().map(|a| format!("{a}:8080")).collect();
    b.sort();
    (format!("shop/{label} {vip}"), b)
}

#[tokio::test(flavor = "current_thread")]
async fn kube_source_changes_reach_the_maps() {
    skip_unless!(Needs::netns());
    let dir = PathBuf::from(format!("/sys/fs/bpf/svcnat-kube-{}", std::process::id()));
    let _ = cleanup(&dir);
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = cleanup(&self.0);
        }
    }
    let _guard = Guard(dir.clone());

    let server = ApiServer::start().await;
    server.apply(service("cart", "198.19.1.1", 80));
    server.apply(slice("cart-1", "cart", &["198.18.5.1", "198.18.5.2"]));

    let sizes = MapSizes {
        conntrack: 1024,
        ..MapSizes::default()
    };
    let dp = Dataplane::open(&DataplaneConfig {
        bpffs: dir.clone(),
        sizes,
    })
    .expect("open");
    let node = NodeInfo {
        zone: None,
        name: "node-a".into(),
        addresses: vec![IpAddr::from([198, 18, 0, 1])],
    };
    let stats = Arc::new(SyncStats::default());
    let syncer = Syncer::new(node, stats.clone());
    let (tx, rx) = mpsc::channel::<SourceEvent>(256);
    let kube_stats = Arc::new(sources::kube::KubeSourceStats::default());
    let source = tokio::spawn(sources::kube::run(
        server.client(),
        tx,
        kube_stats,
        "node-a".to_owned(),
    ));
    let dp = Arc::new(Mutex::new(dp));
    let passes = Arc::new(Mutex::new(Vec::new()));
    let record = passes.clone();
    let sync_task = tokio::spawn(sync::run(
        syncer,
        dp.clone(),
        rx,
        LoopConfig::default(),
        Arc::new(AgentHealth::new(Duration::from_secs(3600))),
        move |report, _, _| {
            record
                .lock()
                .expect("lock")
                .push((report.upserted, report.deleted));
        },
    ));

    // Initial list.
    let mut want: BTreeMap<String, Vec<String>> = [entry(
        "cart:http",
        "198.19.1.1:80",
        &["198.18.5.1", "198.18.5.2"],
    )]
    .into_iter()
    .collect();
    wait_maps(&dir, &want).await;

    // Add a service, then its slice; change a slice; delete a service.
    server.apply(service("pay", "198.19.1.2", 443));
    want.insert(entry("pay:http", "198.19.1.2:443", &[]).0, vec![]);
    wait_maps(&dir, &want).await;
    server.apply(slice("pay-1", "pay", &["198.18.6.1"]));
    want.extend([entry("pay:http", "198.19.1.2:443", &["198.18.6.1"])]);
    wait_maps(&dir, &want).await;
    server.apply(slice("cart-1", "cart", &["198.18.5.2", "198.18.5.3"]));
    want.extend([entry(
        "cart:http",
        "198.19.1.1:80",
        &["198.18.5.2", "198.18.5.3"],
    )]);
    wait_maps(&dir, &want).await;
    server.delete(Kind::Service, "shop", "pay");
    want.remove(&entry("pay:http", "198.19.1.2:443", &[]).0);
    wait_maps(&dir, &want).await;

    // 410 Gone and a dropped connection: the relist writes nothing that did
    // not change, and changes made meanwhile still arrive.
    let before = passes.lock().expect("lock").len();
    server.expire_watches();
    server
        .wait_until(|s| {
            s.counters(Kind::Service).lists >= 2 && s.counters(Kind::EndpointSlice).lists >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_relist: Vec<(usize, usize)> = passes.lock().expect("lock")[before..].to_vec();
    assert!(
        after_relist.iter().all(|(up, del)| *up == 0 && *del == 0),
        "a relist of unchanged objects must not touch the maps: {after_relist:?}"
    );
    server.drop_connections();
    server.apply(slice("cart-1", "cart", &["198.18.5.9"]));
    want.extend([entry("cart:http", "198.19.1.1:80", &["198.18.5.9"])]);
    wait_maps(&dir, &want).await;

    source.abort();
    sync_task.abort();
    assert!(stats.passes.load(std::sync::atomic::Ordering::Relaxed) >= 6);
}
