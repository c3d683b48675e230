//! The metrics and health servers over real TCP on 127.0.0.1: what a
//! Prometheus scrape and a kubelet probe get. The exposition is read with a
//! strict parser of the Prometheus text format (below) that rejects any line
//! it does not understand, so a malformed exposition fails the test.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use aya::maps::{HashMap, MapData};
use proxy_common::{Ct4Key, CtValue, Reason, StatValue, map_names};
use svcnat::{
    dataplane::{
        BackendSpec, Dataplane, DataplaneConfig, Frontend, MapSizes, ServiceOpts, open_pinned,
    },
    health::{AgentHealth, rfc3339, serve_health, unix_ms_now, watch_liveness},
    metrics::{DatapathSample, Metrics, count_conntrack, sample_datapath, serve_metrics},
    sources::kube::KubeSourceStats,
    sync::SyncStats,
};
use svcnat_testkit::pins::PinDir;
use svcnat_testkit::{
    datapath::{Flow, ct4_pair},
    skip::Needs,
    skip_unless,
};
use tokio::net::TcpListener;

/// Bound on every test, so that a failure cannot hang the suite.
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn within<F: Future>(test: F) -> F::Output {
    match tokio::time::timeout(TEST_LIMIT, test).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {TEST_LIMIT:?}"),
    }
}

// ---------------------------------------------------------------------------
// A strict parser of the Prometheus text format, version 0.0.4.

#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Clone, Debug, Default)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

impl Family {
    /// The `_bucket` sample of a histogram whose `le` is `le`, compared as
    /// numbers (`5`, `5.0` and `5e0` are the same bound).
    fn bucket(&self, le: f64) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name.ends_with("_bucket")
                    && s.labels.get("le").and_then(|v| parse_value(v).ok()) == Some(le)
            })
            .map(|s| s.value)
    }

    /// The value of the sample named `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// `{a="x",b="y"}` (the braces already removed) into a map.
fn parse_labels(mut s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").ok_or(format!("bad label in {s:?}"))?;
        if !valid_name(key) || key.starts_with("__") {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {rest:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {rest:?}")),
            }
        };
        if out.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Ok(out)
}

/// Parses a whole exposition. Every family needs `# HELP` then `# TYPE`
/// before its samples; a sample must belong to the family declared last
/// (histograms: `_bucket`, `_sum`, `_count`); no series twice; histogram
/// buckets cumulative with `le="+Inf"` equal to `_count`.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut pending_help: Option<(String, String)> = None;
    let mut series = BTreeSet::new();
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or(format!("bad HELP {line:?}"))?;
            if !valid_name(name) || families.contains_key(name) {
                return Err(format!("bad or repeated family {name:?}"));
            }
            pending_help = Some((name.to_owned(), help.to_owned()));
            current = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE {line:?}"))?;
            let Some((help_name, help)) = pending_help.take() else {
                return Err(format!("TYPE without HELP: {line:?}"));
            };
            if help_name != name {
                return Err(format!("TYPE {name} after HELP {help_name}"));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("bad type {kind:?}"));
            }
            families.insert(
                name.to_owned(),
                Family {
                    kind: kind.to_owned(),
                    help,
                    samples: Vec::new(),
                },
            );
            current = Some(name.to_owned());
        } else if line.starts_with('#') || line.is_empty() {
            return Err(format!("unexpected line {line:?}"));
        } else {
            let (series_text, value) = line
                .rsplit_once(' ')
                .ok_or(format!("bad sample {line:?}"))?;
            let (name, labels) = match series_text.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(
                        rest.strip_suffix('}')
                            .ok_or(format!("bad labels {line:?}"))?,
                    )?,
                ),
                None => (series_text, BTreeMap::new()),
            };
            let family_name = current
                .as_ref()
                .ok_or(format!("sample before TYPE: {line:?}"))?;
            let family = families
                .get_mut(family_name)
                .ok_or(format!("no family for {line:?}"))?;
            let belongs = if family.kind == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name == format!("{family_name}{suffix}"))
            } else {
                name == family_name
            };
            if !belongs {
                return Err(format!("sample {name} in family {family_name}"));
            }
            if !series.insert(series_text.to_owned()) {
                return Err(format!("series twice: {series_text}"));
            }
            family.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value: parse_value(value)?,
            });
        }
    }
    if let Some((name, _)) = pending_help {
        return Err(format!("HELP {name} without TYPE"));
    }
    for (name, f) in &families {
        if f.kind != "histogram" {
            continue;
        }
        let mut last = 0.0;
        let mut inf = None;
        for s in f.samples.iter().filter(|s| s.name.ends_with("_bucket")) {
            if s.value < last {
                return Err(format!("{name}: buckets not cumulative"));
            }
            last = s.value;
            if s.labels.get("le").map(String::as_str) == Some("+Inf") {
                inf = Some(s.value);
            }
        }
        if inf.is_none() || inf != f.value(&format!("{name}_count"), &[]) {
            return Err(format!("{name}: +Inf bucket differs from _count"));
        }
    }
    Ok(families)
}

#[test]
fn the_parser_rejects_malformed_expositions() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert!(parse_exposition(good).is_ok());
    for bad in [
        "a_total 2\n",
        "# HELP a_total A.\na_total 2\n",
        "# HELP a_total A.\n# TYPE a_total counter\nb_total 2\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 2\na_total 3\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1} 2\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total two\n",
        "# HELP a_total A.\n# TYPE a_total counter\n# EOF\n",
        "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------
// HTTP over a plain TcpStream, as a scraper or a probe sends it.

struct HttpResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

async fn http(addr: SocketAddr, request_line: &str) -> HttpResponse {
    let head_only = request_line.starts_with("HEAD ");
    let request = format!("{request_line}\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect to the test server");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set a read timeout");
        s.write_all(request.as_bytes()).expect("send the request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read the response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("a header line");
                (k.to_ascii_lowercase(), v.to_owned())
            })
            .collect::<BTreeMap<_, _>>();
        if let Some(len) = headers.get("content-length").filter(|_| !head_only) {
            assert_eq!(
                len.parse::<usize>().ok(),
                Some(body.len()),
                "Content-Length"
            );
        }
        HttpResponse {
            status,
            headers,
            body: body.to_owned(),
        }
    })
    .await
    .expect("the client thread")
}

async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, &format!("GET {path} HTTP/1.1")).await
}

async fn start_metrics(metrics: Arc<Metrics>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let _ = serve_metrics(listener, metrics).await;
    });
    (addr, task)
}

async fn start_health(health: Arc<AgentHealth>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let _ = serve_health(listener, health).await;
    });
    (addr, task)
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, Family> {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_exposition(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
}

fn stat_values() -> Vec<(Reason, StatValue)> {
    Reason::ALL
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                *r,
                StatValue {
                    packets: i as u64 + 1,
                    bytes: 100 * (i as u64 + 1),
                },
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------

/// Metrics with a value recorded in every family (the kube source's
/// included).
fn populated_metrics() -> Arc<Metrics> {
    let stats = Arc::new(SyncStats::default());
    stats.passes.store(3, Ordering::Relaxed);
    stats.upserts.store(5, Ordering::Relaxed);
    stats.deletes.store(1, Ordering::Relaxed);
    stats.skipped.store(2, Ordering::Relaxed);
    stats.repaired.store(4, Ordering::Relaxed);
    stats.source_errors.store(7, Ordering::Relaxed);
    stats.udp_flows_cleared.store(8, Ordering::Relaxed);
    stats.udp_sockets_closed.store(9, Ordering::Relaxed);
    let health = Arc::new(AgentHealth::new(Duration::from_secs(3600)));
    health
        .last_pass_ms
        .store(1_700_000_000_500, Ordering::Relaxed);
    let kube = Arc::new(KubeSourceStats::default());
    kube.watch_restarts.store(1, Ordering::Relaxed);
    kube.watch_errors.store(6, Ordering::Relaxed);
    let metrics = Arc::new(Metrics::new(stats, health, Some(kube)));
    metrics.observe_pass_duration(Duration::from_millis(3));
    metrics.observe_pass_duration(Duration::from_millis(30));
    metrics.observe_programming_latencies(&[
        Duration::from_millis(2),
        Duration::from_millis(40),
        Duration::from_secs(7),
    ]);
    metrics.observe_interface_attach(Duration::from_micros(1500));
    let capacity = MapSizes {
        services: 10,
        slots: 20,
        backends: 30,
        revnat: 40,
        conntrack: 50,
        fragments: 60,
        snat: 70,
        node_addresses: 80,
        affinity: 90,
        source_ranges: 100,
    };
    metrics.set_datapath(DatapathSample {
        frontends: 3,
        backends: 4,
        backend_slots: 5,
        capacity,
        stats: stat_values(),
        ct_created: 1000,
        ct_removed: 3,
    });
    metrics.set_conntrack_entries(42);
    metrics.set_conntrack_evictions(7);
    metrics
}

#[tokio::test]
async fn metrics_expose_every_family_with_the_recorded_values() {
    within(async {
        let metrics = populated_metrics();
        let (addr, server) = start_metrics(metrics).await;
        let m = scrape(addr).await;

        let names: BTreeSet<&str> = m.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = [
            "svcnat_sync_pass_duration_seconds",
            "svcnat_network_programming_duration_seconds",
            "svcnat_interface_attach_seconds",
            "svcnat_sync_last_timestamp_seconds",
            "svcnat_sync_passes_total",
            "svcnat_sync_frontend_upserts_total",
            "svcnat_sync_frontend_deletes_total",
            "svcnat_sync_skipped_total",
            "svcnat_sync_repaired_entries_total",
            "svcnat_source_errors_total",
            "svcnat_conntrack_flows_cleared_total",
            "svcnat_udp_sockets_closed_total",
            "svcnat_kube_watch_restarts_total",
            "svcnat_kube_watch_errors_total",
            "svcnat_conntrack_entries",
            "svcnat_conntrack_created_total",
            "svcnat_conntrack_evictions_total",
            "svcnat_frontends",
            "svcnat_backends",
            "svcnat_backend_slots",
            "svcnat_map_capacity_entries",
            "svcnat_datapath_packets_total",
            "svcnat_datapath_bytes_total",
        ]
        .into_iter()
        .collect();
        assert_eq!(names, expected);
        for f in m.values() {
            assert!(!f.help.is_empty());
        }

        let one = |family: &str| {
            let f = &m[family];
            assert_eq!(f.samples.len(), 1, "{family}: {:?}", f.samples);
            (f.kind.as_str(), f.samples[0].value)
        };
        assert_eq!(one("svcnat_sync_passes_total"), ("counter", 3.0));
        assert_eq!(one("svcnat_sync_frontend_upserts_total"), ("counter", 5.0));
        assert_eq!(one("svcnat_sync_frontend_deletes_total"), ("counter", 1.0));
        assert_eq!(one("svcnat_sync_skipped_total"), ("counter", 2.0));
        assert_eq!(one("svcnat_sync_repaired_entries_total"), ("counter", 4.0));
        assert_eq!(one("svcnat_source_errors_total"), ("counter", 7.0));
        assert_eq!(
            one("svcnat_conntrack_flows_cleared_total"),
            ("counter", 8.0)
        );
        assert_eq!(
            m["svcnat_conntrack_flows_cleared_total"].samples[0].labels["proto"],
            "udp"
        );
        assert_eq!(one("svcnat_udp_sockets_closed_total"), ("counter", 9.0));
        assert_eq!(one("svcnat_kube_watch_restarts_total"), ("counter", 1.0));
        assert_eq!(one("svcnat_kube_watch_errors_total"), ("counter", 6.0));
        assert_eq!(
            one("svcnat_sync_last_timestamp_seconds"),
            ("gauge", 1_700_000_000.5)
        );
        assert_eq!(one("svcnat_frontends"), ("gauge", 3.0));
        assert_eq!(one("svcnat_backends"), ("gauge", 4.0));
        assert_eq!(one("svcnat_backend_slots"), ("gauge", 5.0));
        assert_eq!(one("svcnat_conntrack_entries"), ("gauge", 42.0));
        assert_eq!(one("svcnat_conntrack_created_total"), ("counter", 1000.0));
        assert_eq!(one("svcnat_conntrack_evictions_total"), ("counter", 7.0));

        let cap = &m["svcnat_map_capacity_entries"];
        assert_eq!(cap.kind, "gauge");
        let by_map: BTreeMap<&str, f64> = cap
            .samples
            .iter()
            .map(|s| (s.labels["map"].as_str(), s.value))
            .collect();
        assert_eq!(
            by_map,
            BTreeMap::from([
                (map_names::SVC4, 10.0),
                (map_names::SLOTS, 20.0),
                (map_names::BACKEND4, 30.0),
                (map_names::REVNAT4, 40.0),
                (map_names::CT4, 50.0),
                (map_names::FRAG4, 60.0),
                (map_names::SNAT4, 70.0),
                (map_names::NODE4, 80.0),
                (map_names::AFFINITY4, 90.0),
                (map_names::SRCRANGE4, 100.0),
            ])
        );

        for (family, scale) in [
            ("svcnat_datapath_packets_total", 1.0),
            ("svcnat_datapath_bytes_total", 100.0),
        ] {
            let f = &m[family];
            assert_eq!(f.kind, "counter");
            assert_eq!(f.samples.len(), Reason::ALL.len(), "{family}");
            for (i, r) in Reason::ALL.iter().enumerate() {
                assert_eq!(
                    f.value(family, &[("reason", r.name())]),
                    Some(scale * (i as f64 + 1.0)),
                    "{family} {}",
                    r.name()
                );
            }
        }

        let lat = &m["svcnat_network_programming_duration_seconds"];
        assert_eq!(lat.kind, "histogram");
        assert_eq!(lat.bucket(0.001), Some(0.0));
        assert_eq!(lat.bucket(0.0025), Some(1.0));
        assert_eq!(lat.bucket(0.05), Some(2.0));
        assert_eq!(lat.bucket(5.0), Some(2.0));
        assert_eq!(lat.bucket(10.0), Some(3.0));
        assert_eq!(lat.bucket(f64::INFINITY), Some(3.0));
        let sum = lat
            .value("svcnat_network_programming_duration_seconds_sum", &[])
            .expect("a _sum");
        assert!((sum - 7.042).abs() < 1e-9, "{sum}");

        let attach = &m["svcnat_interface_attach_seconds"];
        assert_eq!(attach.kind, "histogram");
        assert_eq!(
            attach.value("svcnat_interface_attach_seconds_count", &[]),
            Some(1.0)
        );
        // 1.5 ms: above the 1 ms bucket, inside the 2 ms one.
        assert_eq!(attach.bucket(0.001), Some(0.0));
        assert_eq!(attach.bucket(0.002), Some(1.0));

        let pass = &m["svcnat_sync_pass_duration_seconds"];
        assert_eq!(
            pass.value("svcnat_sync_pass_duration_seconds_count", &[]),
            Some(2.0)
        );
        assert_eq!(pass.bucket(0.004), Some(1.0));

        // Counters read at scrape time follow the shared stats.
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn families_without_a_source_are_absent_not_zero() {
    within(async {
        let metrics = Arc::new(Metrics::new(
            Arc::new(SyncStats::default()),
            Arc::new(AgentHealth::new(Duration::from_secs(3600))),
            None,
        ));
        let (addr, server) = start_metrics(Arc::clone(&metrics)).await;
        let m = scrape(addr).await;
        for absent in [
            "svcnat_kube_watch_restarts_total",
            "svcnat_kube_watch_errors_total",
            "svcnat_sync_last_timestamp_seconds",
            "svcnat_conntrack_entries",
            "svcnat_frontends",
            "svcnat_map_capacity_entries",
            "svcnat_datapath_packets_total",
        ] {
            assert!(!m.contains_key(absent), "{absent} before any sample");
        }
        assert_eq!(m["svcnat_sync_passes_total"].samples[0].value, 0.0);
        assert_eq!(
            m["svcnat_sync_pass_duration_seconds"]
                .value("svcnat_sync_pass_duration_seconds_count", &[]),
            Some(0.0)
        );

        // Other paths and methods.
        assert_eq!(get(addr, "/").await.status, 404);
        assert_eq!(get(addr, "/metrics?x=1").await.status, 200);
        let post = http(addr, "POST /metrics HTTP/1.1").await;
        assert_eq!(post.status, 405);
        assert_eq!(
            post.headers.get("allow").map(String::as_str),
            Some("GET, HEAD")
        );
        let head = http(addr, "HEAD /metrics HTTP/1.1").await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert!(
            head.headers["content-length"]
                .parse::<usize>()
                .is_ok_and(|n| n > 0)
        );
        assert_eq!(http(addr, "garbage").await.status, 400);
        server.abort();
    })
    .await;
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HealthzBody {
    last_updated: String,
    current_time: String,
    /// In `/healthz` only (not `/livez`).
    node_eligible: Option<bool>,
}

fn healthz_body(r: &HttpResponse) -> (k8s_openapi::jiff::Timestamp, k8s_openapi::jiff::Timestamp) {
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let b: HealthzBody =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    (
        b.last_updated.parse().expect("lastUpdated is RFC 3339"),
        b.current_time.parse().expect("currentTime is RFC 3339"),
    )
}

#[tokio::test]
async fn healthz_is_503_before_the_first_sync_and_200_after() {
    within(async {
        let health = Arc::new(AgentHealth::new(Duration::from_secs(3600)));
        let (addr, server) = start_health(Arc::clone(&health)).await;

        let before = unix_ms_now();
        let r = get(addr, "/healthz").await;
        assert_eq!(r.status, 503, "{}", r.body);
        let (last, now) = healthz_body(&r);
        assert_eq!(last.as_millisecond(), 0);
        assert!(now.as_millisecond() >= i64::try_from(before).expect("ms fit"));
        assert_eq!(get(addr, "/readyz").await.status, 503);

        // The first pass: what the sync loop records.
        let pass_ms = unix_ms_now();
        health.last_pass_ms.store(pass_ms, Ordering::Relaxed);
        health.synced.store(true, Ordering::Relaxed);
        let r = get(addr, "/healthz").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (last, now) = healthz_body(&r);
        assert_eq!(last.to_string(), rfc3339(pass_ms));
        assert!(now >= last);
        let ready = get(addr, "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));
        let live = get(addr, "/livez").await;
        assert_eq!(live.status, 200, "{}", live.body);
        healthz_body(&live);

        // A stopped task makes it fail, while it stays ready.
        health.task_stopped("source");
        assert_eq!(get(addr, "/healthz").await.status, 503);
        assert_eq!(get(addr, "/readyz").await.status, 200);
        server.abort();
    })
    .await;
}

/// KEP-3836, kube-proxy's `SyncNode`: while the Node is being deleted or
/// tainted by the autoscaler, `/healthz` fails with `nodeEligible: false`
/// (load balancers drain the node) and `/livez` keeps passing (the kubelet
/// must not restart the agent).
#[tokio::test]
async fn healthz_fails_while_the_node_is_drained_and_livez_does_not() {
    within(async {
        let health = Arc::new(AgentHealth::new(Duration::from_secs(3600)));
        health.last_pass_ms.store(unix_ms_now(), Ordering::Relaxed);
        health.synced.store(true, Ordering::Relaxed);
        let (addr, server) = start_health(Arc::clone(&health)).await;
        let eligible = |r: &HttpResponse| {
            serde_json::from_str::<HealthzBody>(&r.body)
                .expect("a healthz body")
                .node_eligible
        };
        let r = get(addr, "/healthz").await;
        assert_eq!((r.status, eligible(&r)), (200, Some(true)), "{}", r.body);
        health.set_node_eligible(false);
        let r = get(addr, "/healthz").await;
        assert_eq!((r.status, eligible(&r)), (503, Some(false)), "{}", r.body);
        let live = get(addr, "/livez").await;
        assert_eq!((live.status, eligible(&live)), (200, None), "{}", live.body);
        health.set_node_eligible(true);
        assert_eq!(get(addr, "/healthz").await.status, 200);
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn healthz_fails_when_passes_and_heartbeats_stop() {
    within(async {
        let health = Arc::new(AgentHealth::new(Duration::from_secs(5)));
        // A pass long ago, beyond the timeout.
        health
            .last_pass_ms
            .store(unix_ms_now() - 10_000, Ordering::Relaxed);
        health.synced.store(true, Ordering::Relaxed);
        let (addr, server) = start_health(Arc::clone(&health)).await;
        assert_eq!(get(addr, "/healthz").await.status, 503);
        // A heartbeat brings it back.
        health.beat();
        let r = get(addr, "/healthz").await;
        assert_eq!(r.status, 200, "{}", r.body);
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn liveness_watch_beats_while_the_lock_is_free_and_notices_stopped_tasks() {
    within(async {
        let health = Arc::new(AgentHealth::new(Duration::from_secs(3600)));
        health.synced.store(true, Ordering::Relaxed);
        let lock = Arc::new(Mutex::new(()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = stop_rx.await;
        });
        let watcher = tokio::spawn(watch_liveness(
            Arc::clone(&health),
            Arc::clone(&lock),
            vec![("source", task.abort_handle())],
            Duration::from_millis(10),
        ));
        // Heartbeats arrive with no pass at all.
        while health.status().last_updated_ms == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(health.status().healthy);

        // While another thread holds the lock, heartbeats stop.
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let _guard = lock.lock().expect("the test lock");
                let _ = held_tx.send(());
                let _ = release_rx.recv();
            })
        };
        tokio::task::spawn_blocking(move || held_rx.recv())
            .await
            .expect("join")
            .expect("the holder took the lock");
        // A beat that took the lock just before the holder may still land.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let frozen = health.status().last_updated_ms;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(health.status().last_updated_ms, frozen);
        let _ = release_tx.send(());
        holder.join().expect("the holder thread");
        while health.status().last_updated_ms == frozen {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // A task that ends makes the agent unhealthy.
        let _ = stop_tx.send(());
        while health.status().healthy {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            health.status().reason.as_deref(),
            Some("task source stopped")
        );
        watcher.abort();
    })
    .await;
}

// ---------------------------------------------------------------------------
// The sampler against the real maps (root and the eBPF object needed).

fn backend(last: u8, port: u16) -> BackendSpec {
    BackendSpec {
        addr: Ipv4Addr::new(10, 1, 0, last).into(),
        port,
        flags: 0,
    }
}

#[tokio::test]
async fn the_sampler_reads_counts_capacities_and_conntrack_from_the_maps() {
    skip_unless!(Needs::pinned());
    within(async {
        let pins = PinDir::new("metrics");
        let sizes = MapSizes {
            services: 64,
            slots: 64,
            backends: 16,
            revnat: 64,
            conntrack: 1024,
            fragments: 64,
            ..MapSizes::default()
        };
        let mut dp = Dataplane::open(&DataplaneConfig {
            bpffs: pins.0.clone(),
            sizes,
        })
        .expect("open the dataplane");
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let opts = ServiceOpts::default();
        // Two frontends of one VIP sharing backend .1:8080; .2:8080 only in the first.
        dp.upsert_service(
            Frontend {
                addr: vip.into(),
                port: 80,
                proto: 6,
            },
            &[backend(1, 8080), backend(2, 8080)],
            &opts,
        )
        .expect("upsert");
        dp.upsert_service(
            Frontend {
                addr: vip.into(),
                port: 443,
                proto: 6,
            },
            &[backend(1, 8080)],
            &opts,
        )
        .expect("upsert");
        let sample = DatapathSample::read(&dp).expect("sample");
        assert_eq!(
            (sample.frontends, sample.backends, sample.backend_slots),
            (2, 2, 3)
        );
        assert_eq!(sample.capacity, sizes);
        assert_eq!(sample.stats.len(), Reason::ALL.len());

        // Three flows: six conntrack entries.
        {
            let mut ct: HashMap<MapData, Ct4Key, CtValue> =
                HashMap::try_from(open_pinned(&pins.0, map_names::CT4).expect("CT pin"))
                    .expect("CT map");
            for port in [40_001, 40_002, 40_003] {
                let flow = Flow {
                    client: SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, 5), port),
                    vip: SocketAddrV4::new(vip, 80),
                    backend: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 8080),
                    proto: 6,
                    backend_id: 1,
                    svc_id: 1,
                    flags: 0,
                    created_ns: 1,
                    expires_ns: u64::MAX,
                };
                for (k, v) in ct4_pair(&flow) {
                    ct.insert(k, v, 0).expect("insert a conntrack entry");
                }
            }
        }
        assert_eq!(count_conntrack(&pins.0, 1_000).expect("count"), 6);
        assert_eq!(count_conntrack(&pins.0, 4).expect("count"), 4);

        // The background sampler puts the same into a scrape.
        let metrics = Arc::new(Metrics::new(
            Arc::new(SyncStats::default()),
            Arc::new(AgentHealth::new(Duration::from_secs(3600))),
            None,
        ));
        let dp = Arc::new(Mutex::new(dp));
        let sampler = tokio::spawn(sample_datapath(
            Arc::clone(&metrics),
            dp,
            Duration::from_millis(10),
            Duration::from_millis(10),
        ));
        let (addr, server) = start_metrics(Arc::clone(&metrics)).await;
        let m = loop {
            let m = scrape(addr).await;
            if m.contains_key("svcnat_conntrack_entries") && m.contains_key("svcnat_frontends") {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(m["svcnat_conntrack_entries"].samples[0].value, 6.0);
        assert_eq!(m["svcnat_frontends"].samples[0].value, 2.0);
        assert_eq!(m["svcnat_backends"].samples[0].value, 2.0);
        assert_eq!(m["svcnat_backend_slots"].samples[0].value, 3.0);
        assert_eq!(
            m["svcnat_map_capacity_entries"]
                .value("svcnat_map_capacity_entries", &[("map", map_names::CT4)]),
            Some(1024.0)
        );
        assert_eq!(
            m["svcnat_datapath_packets_total"].samples.len(),
            Reason::ALL.len()
        );
        sampler.abort();
        server.abort();
    })
    .await;
}

/// The kubelet's default probe timeout: every probe must be answered
/// within it, whatever other clients do.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A probe of `path` that must be answered within [`PROBE_TIMEOUT`].
async fn probe(addr: SocketAddr, path: &str) -> HttpResponse {
    match tokio::time::timeout(PROBE_TIMEOUT, get(addr, path)).await {
        Ok(r) => r,
        Err(_) => panic!("{path} not answered within {PROBE_TIMEOUT:?}"),
    }
}

/// Hostile and broken clients (1,000 idle connections, slowloris clients
/// sending a header byte every 200 ms, a 1 MiB header) cannot keep the
/// kubelet's probes out: each probe is answered within its timeout, the
/// idle connections are closed (the oldest make room for new ones, the
/// rest when their head does not arrive in time), the huge head gets 431
/// or a closed connection, never an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_hostile_clients_hold_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let health = Arc::new(AgentHealth::new(Duration::from_secs(3600)));
        health.last_pass_ms.store(unix_ms_now(), Ordering::Relaxed);
        health.synced.store(true, Ordering::Relaxed);
        let (addr, server) = start_health(Arc::clone(&health)).await;

        let mut idle = Vec::new();
        for _ in 0..1000 {
            idle.push(
                tokio::net::TcpStream::connect(addr)
                    .await
                    .expect("an idle connection"),
            );
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut slow = Vec::new();
        for _ in 0..50 {
            let stop = Arc::clone(&stop);
            slow.push(tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                if s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                    .await
                    .is_err()
                {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(b"a").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        let huge = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut head = b"GET /healthz HTTP/1.1\r\nX-Huge: ".to_vec();
            head.resize(head.len() + (1 << 20), b'a');
            head.extend_from_slice(b"\r\n\r\n");
            // The server may close before all of it is written.
            let _ = s.write_all(&head).await;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        });

        for round in 0..20 {
            let r = probe(addr, "/healthz").await;
            assert_eq!(r.status, 200, "probe {round}: {}", r.body);
            assert_eq!(probe(addr, "/livez").await.status, 200, "probe {round}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = tokio::time::timeout(Duration::from_secs(15), huge)
            .await
            .expect("the huge head's connection is closed")
            .expect("the huge client");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "a 1 MiB head was answered: {:?}",
            answer.lines().next()
        );

        // The idle connections were all closed by the server: the oldest
        // to make room, the rest once their head was late.
        let mut closed = 0;
        for mut s in idle {
            let mut buf = [0_u8; 64];
            match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => closed += 1,
                Ok(Ok(n)) => panic!(
                    "an idle connection was answered: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(_) => {}
            }
        }
        assert_eq!(closed, 1000, "idle connections the server closed");
        stop.store(true, Ordering::Relaxed);
        for t in slow {
            t.await.expect("a slow client");
        }
        assert_eq!(probe(addr, "/healthz").await.status, 200);
        server.abort();
    })
    .await;
}

/// Every query string of a Grafana dashboard (panel targets and template
/// variables).
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// A `label op "value"` matcher of a series selector.
type Matcher = (String, String, String);

/// The series selectors of a PromQL expression: each `svcnat_*` name with
/// its matchers.
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("svcnat_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        let after = &tail[end..];
        if let Some(inner) = after.strip_prefix('{') {
            let close = inner.find('}').expect("a closed selector");
            for m in inner[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let op_at = m.find(['=', '!']).expect("a matcher operator");
                let label = m[..op_at].trim().to_owned();
                let op_len = m[op_at..].find('"').expect("a quoted matcher value");
                let op = m[op_at..op_at + op_len].to_owned();
                let value = m[op_at + op_len..].trim().trim_matches('"').to_owned();
                matchers.push((label, op, value));
            }
        }
        out.push((name, matchers));
        rest = &tail[end..];
    }
    out
}

/// Whether `value` matches the alternatives of `pattern` (`a_.*|b`: each a
/// literal, or a prefix followed by `.*`).
fn matches_alternatives(pattern: &str, value: &str) -> bool {
    pattern.split('|').any(|alt| match alt.strip_suffix(".*") {
        Some(prefix) => value.starts_with(prefix),
        None => value == alt,
    })
}

/// deploy/grafana/svcnat.json queries only what the exporter exports: each
/// metric it names is a family (or a histogram's `_bucket`/`_sum`/`_count`),
/// each `label="value"` matcher names a label value some sample has, and
/// each alternative of a `label=~"..."` matcher matches one.
#[tokio::test]
async fn every_series_the_grafana_dashboard_queries_is_exported() {
    within(async {
        let (addr, server) = start_metrics(populated_metrics()).await;
        let m = scrape(addr).await;
        server.abort();
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/svcnat.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
                .expect("the dashboard is JSON");
        let mut queries = Vec::new();
        dashboard_queries(&dashboard["panels"], &mut queries);
        dashboard_queries(&dashboard["templating"], &mut queries);
        assert!(queries.len() >= 20, "{queries:?}");
        let mut families_used = BTreeSet::new();
        for q in &queries {
            let sels = selectors(q);
            assert!(!sels.is_empty(), "a query of no svcnat series: {q}");
            for (name, matchers) in sels {
                let family = if m.contains_key(&name) {
                    name.as_str()
                } else {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .filter(|f| m.get(*f).is_some_and(|f| f.kind == "histogram"))
                        .unwrap_or_else(|| panic!("{name} is not exported (in {q})"))
                };
                families_used.insert(family.to_owned());
                let samples = &m[family].samples;
                for (label, op, value) in matchers {
                    if label == "instance" {
                        // Added by Prometheus, not the exporter.
                        continue;
                    }
                    let values: BTreeSet<&str> = samples
                        .iter()
                        .filter_map(|s| s.labels.get(&label).map(String::as_str))
                        .collect();
                    assert!(!values.is_empty(), "{family} has no label {label} (in {q})");
                    match op.as_str() {
                        "=" => assert!(
                            values.contains(value.as_str()),
                            "{family}{{{label}=\"{value}\"}} matches nothing: {values:?}"
                        ),
                        "=~" => {
                            for alt in value.split('|') {
                                assert!(
                                    values.iter().any(|v| matches_alternatives(alt, v)),
                                    "{family}{{{label}=~\"{alt}\"}} matches nothing: {values:?}"
                                );
                            }
                        }
                        other => panic!("matcher {other} not checked (in {q})"),
                    }
                }
            }
        }
        // What the issue asks the dashboard to show.
        for needed in [
            "svcnat_network_programming_duration_seconds",
            "svcnat_datapath_packets_total",
            "svcnat_map_capacity_entries",
            "svcnat_conntrack_evictions_total",
            "svcnat_kube_watch_restarts_total",
            "svcnat_sync_skipped_total",
        ] {
            assert!(
                families_used.contains(needed),
                "the dashboard shows no {needed}"
            );
        }
    })
    .await;
}
