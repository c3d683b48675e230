//! Control-plane scale measurement: full sync of N services with 5
//! endpoints each into real maps, then single-endpoint changes one at a time.
//! Prints figures, and the kernel's memlock of each map (`bpftool`);
//! asserts nothing. Used by `cargo xtask bench`.
//!
//! `cargo run --release -p proxy-user --example sync_scale -- [N] [CHANGES]`

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Instant};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use svcnat::{
    dataplane::{Dataplane, DataplaneConfig, MapSizes, cleanup},
    model::NodeInfo,
    sources::{Kind, Object, SourceEvent},
    sync::{SyncStats, Syncer},
};

/// ClusterIP of service `i`: 198.18.64.0 + i, so that 100,000 services fit in
/// 198.18.0.0/15 above the endpoints' 198.18.0.0/18.
fn service(i: u32) -> Service {
    let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 64, 0)) + i)
        .to_string();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{i}"), "namespace": "scale"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .expect("service")
}

/// Endpoints distinct across services: addresses in 198.18.0.0/18 (16,000
/// of them), and a port per block of 3,200 services.
fn slice(i: u32, generation: u32) -> EndpointSlice {
    let port = 8080 + i / 3200;
    let eps: Vec<serde_json::Value> = (0..5)
        .map(|e| {
            let n = (i % 3200) * 5 + e + generation;
            serde_json::json!({"addresses": [format!("198.18.{}.{}", (n / 250) % 64, n % 250 + 1)],
                               "conditions": {"ready": true}, "nodeName": "node-a"})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{i}-x"), "namespace": "scale",
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("slice")
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let changes: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = PathBuf::from(format!("/sys/fs/bpf/svcnat-scale-{}", std::process::id()));
    let _ = cleanup(&dir);
    let _pins = Pins(dir.clone());
    let sizes = MapSizes {
        services: (2 * n + 64).max(1024),
        slots: (5 * n + 64).max(1024),
        backends: (5 * n + 64 + changes).max(1024),
        revnat: (n + 64).max(1024),
        conntrack: 65_536,
        fragments: 1024,
        ..MapSizes::default()
    };
    let mut dp = match Dataplane::open(&DataplaneConfig {
        bpffs: dir.clone(),
        sizes,
    }) {
        Ok(dp) => dp,
        Err(e) => {
            eprintln!(
                "cannot open the dataplane (root and `cargo xtask build-ebpf --release` needed): {e}"
            );
            let _ = cleanup(&dir);
            std::process::exit(1);
        }
    };
    let node = NodeInfo {
        zone: None,
        name: "node-a".into(),
        addresses: vec![IpAddr::from([198, 18, 0, 1])],
    };
    let mut syncer = Syncer::new(node, Arc::new(SyncStats::default()));
    let services: Vec<Object> = (0..n)
        .map(|i| Object::Service(Box::new(service(i))))
        .collect();
    let slices: Vec<Object> = (0..n)
        .map(|i| Object::EndpointSlice(Box::new(slice(i, 0))))
        .collect();
    let rss_before = rss_kib("VmRSS:");
    let t = Instant::now();
    syncer.handle(SourceEvent::Resync {
        kind: Kind::Service,
        objects: services,
    });
    syncer.handle(SourceEvent::Resync {
        kind: Kind::EndpointSlice,
        objects: slices,
    });
    let report = syncer.pass(&mut dp);
    let full = t.elapsed();
    println!(
        "full_sync services={n} endpoints_each=5 frontends={} skipped={} seconds={:.3}",
        report.upserted,
        report.skipped.len(),
        full.as_secs_f64()
    );
    let mut lat = Vec::new();
    for c in 0..changes {
        let i = c % n;
        let t = Instant::now();
        syncer.handle(SourceEvent::Apply(Object::EndpointSlice(Box::new(slice(
            i,
            c + 1,
        )))));
        syncer.pass(&mut dp);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "endpoint_change count={changes} p50_us={:.1} p99_us={:.1} max_us={:.1}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    println!(
        "agent_memory rss_kib={} peak_rss_kib={} rss_growth_kib={}",
        rss_kib("VmRSS:"),
        rss_kib("VmHWM:"),
        rss_kib("VmRSS:").saturating_sub(rss_before)
    );
    print_map_memory(&dir);
    drop(dp);
}

/// Removes the pin folder on every way out (a panic included).
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = cleanup(&self.0);
    }
}

/// The kernel's own account of each pinned map (`bpftool map show`):
/// `bytes_memlock`, which for preallocated hash maps follows `max_entries`,
/// not the number of entries in use. One line per map, then the total.
fn print_map_memory(dir: &std::path::Path) {
    let mut total: u64 = 0;
    for name in proxy_common::map_names::ALL {
        let path = dir.join(name);
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&path)
            .output();
        let json: Option<serde_json::Value> = out
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice(&o.stdout).ok());
        let Some(json) = json else {
            eprintln!("bpftool map show pinned {} failed", path.display());
            continue;
        };
        let memlock = json["bytes_memlock"].as_u64().unwrap_or(0);
        total += memlock;
        println!(
            "map_memory map={name} type={} max_entries={} memlock_bytes={memlock}",
            json["type"].as_str().unwrap_or("?"),
            json["max_entries"].as_u64().unwrap_or(0),
        );
    }
    println!("map_memory_total memlock_bytes={total}");
}
