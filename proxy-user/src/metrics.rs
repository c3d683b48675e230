//! Prometheus metrics (`--metrics-addr`, default `127.0.0.1:10249`), on the
//! port kube-proxy uses, so that scrape configurations written for it keep
//! working. The health endpoints kube-proxy serves next to them are
//! [`crate::health`]'s; both use the servers of [`crate::http`].
//!
//! # Metrics
//!
//! Served at `/metrics` in the Prometheus text format (version 0.0.4), every
//! name prefixed with `svcnat_`:
//!
//! | name | type | what |
//! |---|---|---|
//! | `sync_pass_duration_seconds` | histogram | one sync pass (model the changed services, write the maps) |
//! | `network_programming_duration_seconds` | histogram | per service of a pass: from the first change of its objects seen by the agent to its map writes (kube-proxy's `network_programming_duration_seconds`, measured from the agent's receipt rather than the object's trigger time) |
//! | `sync_last_timestamp_seconds` | gauge | end of the last pass, Unix time |
//! | `sync_passes_total`, `sync_frontend_upserts_total`, `sync_frontend_deletes_total` | counter | what passes did |
//! | `sync_skipped_total` | counter | problems reported with a service (bad object, over capacity, unsupported), each once until it changes |
//! | `sync_repaired_entries_total` | counter | map entries drift repair rewrote or deleted |
//! | `source_errors_total` | counter | errors a source reported (the last good state stayed) |
//! | `conntrack_flows_cleared_total{proto}` | counter | flows whose conntrack entries a sync pass deleted because their backend left the service (`proto="udp"`: kube-proxy's cleanup of stale UDP endpoints) |
//! | `udp_sockets_closed_total` | counter | connected UDP sockets of the node's own processes, translated by the socket hooks to a backend that left its service, that a sync pass closed (the owner reconnects to a live backend) |
//! | `kube_watch_restarts_total`, `kube_watch_errors_total` | counter | relists and failed list/watch requests (with a Kubernetes source only) |
//! | `frontends`, `backends`, `backend_slots` | gauge | what the maps hold |
//! | `conntrack_entries` | gauge | entries of the conntrack maps (both families), counted at most every [`CONNTRACK_COUNT_EVERY`] |
//! | `conntrack_created_total` | counter | conntrack entries the datapath created under a new key |
//! | `conntrack_evictions_total` | counter | conntrack entries the kernel's LRU evicted to make room since this agent started: pressure on the map (see [`EvictionEstimate`]) |
//! | `map_capacity_entries{map}` | gauge | size of each map as loaded (`map` is the pinned name) |
//! | `datapath_packets_total{reason}`, `datapath_bytes_total{reason}` | counter | the datapath's per-CPU counters, summed, by [`Reason`] |
//!
//! Scrapes never touch the maps: [`sample_datapath`] reads them in the
//! background every [`SAMPLE_EVERY`] and a scrape shows the last sample.
//! Counting the conntrack map means one `bpf_map_get_next_key` call per entry
//! (half a million at the default size), so it runs apart from the other
//! samples, at most every [`CONNTRACK_COUNT_EVERY`], without holding the
//! dataplane lock; under heavy churn the count is approximate (an LRU map
//! changes while it is walked). `frontends`, `backends` and
//! `conntrack_entries` count both IP families. Compare `frontends` with
//! `map_capacity_entries{map="SVCNAT_SVC4"}` (the size of `SVCNAT_SVC4` and
//! of `SVCNAT_SVC6` each, which also hold one marker per VIP), `backends`
//! with `SVCNAT_BACKEND4`, `backend_slots` with `SVCNAT_SLOTS` and
//! `conntrack_entries` with `SVCNAT_CT4` (per family, as the others).

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{HashMap, MapData};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::{
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use proxy_common::{Ct4Key, Ct6Key, Ct6Value, CtValue, Reason, StatValue, map_names};
use tokio::net::TcpListener;

use crate::{
    dataplane::{Dataplane, DataplaneError, MapSizes, map_err, open_pinned},
    sources::kube::KubeSourceStats,
    sync::{self, SyncStats},
};

// Moved to `health` and `http`; re-exported so that the older paths work.
pub use crate::{
    health::{
        AgentHealth, DEFAULT_HEALTHZ_ADDR, HEALTH_SLACK, HealthStatus, health_response, rfc3339,
        serve_health, unix_ms_now, watch_liveness,
    },
    http::{Response, bind_retrying},
};

/// kube-proxy's `--metrics-bind-address` default.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10249";
/// How often [`sample_datapath`] reads counters, capacities and counts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How often [`sample_datapath`] counts the conntrack map, at most.
pub const CONNTRACK_COUNT_EVERY: Duration = Duration::from_secs(30);

/// What the maps held at one moment, read by [`DatapathSample::read`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathSample {
    /// Service frontends (VIP, port, protocol).
    pub frontends: u64,
    /// Distinct backends (address, port, protocol).
    pub backends: u64,
    /// Backend slots over all frontends.
    pub backend_slots: u64,
    /// Map sizes as loaded.
    pub capacity: MapSizes,
    /// Datapath counters summed over CPUs.
    pub stats: Vec<(Reason, StatValue)>,
    /// Conntrack entries the datapath created under a new key, ever.
    pub ct_created: u64,
    /// Conntrack entries this agent deleted itself.
    pub ct_removed: u64,
}

/// Conntrack entries the kernel's LRU evicted, derived: the datapath never
/// deletes a conntrack entry (a flow that ends keeps its entries until they
/// are taken over or evicted), so what the datapath created, less what the
/// map grew by and what the agent deleted, was evicted. Counted from the
/// agent's first sample on; never goes down. Approximate under churn, as
/// the entry count is (the map changes while it is walked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictionEstimate {
    baseline: Option<(u64, u64, u64)>,
    evicted: u64,
}

impl EvictionEstimate {
    /// Takes a sample: entries created ever, entries in the map now, entries
    /// the agent deleted ever. Returns the evictions so far.
    pub fn update(&mut self, created: u64, entries: u64, removed: u64) -> u64 {
        let Some((c0, e0, r0)) = self.baseline else {
            self.baseline = Some((created, entries, removed));
            return 0;
        };
        let gone = (created.saturating_sub(c0) + e0)
            .saturating_sub(entries)
            .saturating_sub(removed.saturating_sub(r0));
        self.evicted = self.evicted.max(gone);
        self.evicted
    }
}

impl DatapathSample {
    /// Reads counts from the dataplane's mirror (no map access) and the
    /// counters from the per-CPU stats map. Costs one pass over the
    /// frontends: call it periodically, not per scrape.
    pub fn read(dp: &Dataplane) -> Result<Self, DataplaneError> {
        let services = dp.services();
        let mut backends = HashSet::new();
        let mut slots = 0_u64;
        for (fe, state) in &services {
            slots += state.backends.len() as u64;
            for b in &state.backends {
                backends.insert((b.addr, b.port, fe.proto));
            }
        }
        Ok(Self {
            frontends: services.len() as u64,
            backends: backends.len() as u64,
            backend_slots: slots,
            capacity: dp.capacity(),
            stats: dp.stats()?,
            ct_created: dp.ct_created()?,
            ct_removed: dp.ct_removed(),
        })
    }
}

/// Counts the entries of the pinned conntrack maps of both families under
/// `dir`, walking their keys and stopping after `limit` keys of each map
/// (a map's count is then `limit`). Takes no lock: the datapath keeps
/// writing while it runs.
pub fn count_conntrack(dir: &Path, limit: u64) -> Result<u64, DataplaneError> {
    Ok(count_keys::<Ct4Key, CtValue>(dir, map_names::CT4, limit)?
        + count_keys::<Ct6Key, Ct6Value>(dir, map_names::CT6, limit)?)
}

/// The keys of pinned hash map `name`, at most `limit`.
fn count_keys<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
    limit: u64,
) -> Result<u64, DataplaneError> {
    let map: HashMap<MapData, K, V> =
        HashMap::try_from(open_pinned(dir, name)?).map_err(map_err(name))?;
    let mut n = 0_u64;
    for key in map.keys() {
        key.map_err(map_err(name))?;
        n += 1;
        if n >= limit {
            break;
        }
    }
    Ok(n)
}

/// Not sampled yet.
const UNSET: u64 = u64::MAX;

/// What the scrape-time collector reads: the agent's counters by reference
/// and the last datapath sample.
#[derive(Debug)]
struct Shared {
    sync: Arc<SyncStats>,
    health: Arc<AgentHealth>,
    kube: Option<Arc<KubeSourceStats>>,
    datapath: Mutex<Option<DatapathSample>>,
    conntrack: AtomicU64,
    evictions: AtomicU64,
}

/// The agent's metrics: histograms observed after each pass, counters read
/// from the shared stats at scrape time, datapath gauges from the last
/// sample.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pass_duration: Histogram,
    programming_latency: Histogram,
    interface_attach: Histogram,
    shared: Arc<Shared>,
}

impl Metrics {
    /// Metrics over the sync loop's `stats`, the agent's `health` (its last
    /// pass), and the Kubernetes source's watch counters when there is one.
    pub fn new(
        stats: Arc<SyncStats>,
        health: Arc<AgentHealth>,
        kube: Option<Arc<KubeSourceStats>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("svcnat");
        // 1 ms .. 16 s, kube-proxy's sync_proxy_rules_duration_seconds buckets.
        let pass_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register_with_unit(
            "sync_pass_duration",
            "Duration of one sync pass: model the changed services and write the maps",
            Unit::Seconds,
            pass_duration.clone(),
        );
        // The agent programs in milliseconds, so finer than kube-proxy's
        // 0.25 s first bucket, and up to its 5 minutes.
        let programming_latency = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0, 300.0,
        ]);
        registry.register_with_unit(
            "network_programming_duration",
            "Time from the first change of a service's objects seen by the agent to its map writes",
            Unit::Seconds,
            programming_latency.clone(),
        );
        // Attaching follows a link event within milliseconds; a missed
        // event waits for the periodic rescan (seconds).
        let interface_attach = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "interface_attach",
            "Time from a link event's arrival to the programs attached on the new interface",
            Unit::Seconds,
            interface_attach.clone(),
        );
        let shared = Arc::new(Shared {
            sync: stats,
            health,
            kube,
            datapath: Mutex::new(None),
            conntrack: AtomicU64::new(UNSET),
            evictions: AtomicU64::new(UNSET),
        });
        registry.register_collector(Box::new(Collector_(Arc::clone(&shared))));
        Self {
            registry,
            pass_duration,
            programming_latency,
            interface_attach,
            shared,
        }
    }

    /// Records the duration of one pass.
    pub fn observe_pass_duration(&self, duration: Duration) {
        self.pass_duration.observe(duration.as_secs_f64());
    }

    /// Records the time from a link event to an interface's attachment.
    pub fn observe_interface_attach(&self, latency: Duration) {
        self.interface_attach.observe(latency.as_secs_f64());
    }

    /// Records the programming latencies of one pass
    /// ([`crate::sync::Syncer::last_latencies`]).
    pub fn observe_programming_latencies(&self, latencies: &[Duration]) {
        for l in latencies {
            self.programming_latency.observe(l.as_secs_f64());
        }
    }

    /// Replaces the datapath sample shown by scrapes.
    pub fn set_datapath(&self, sample: DatapathSample) {
        *self
            .shared
            .datapath
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sample);
    }

    /// Sets the conntrack eviction count shown by scrapes.
    pub fn set_conntrack_evictions(&self, n: u64) {
        self.shared
            .evictions
            .store(n.min(UNSET - 1), Ordering::Relaxed);
    }

    /// Sets the conntrack entry count shown by scrapes.
    pub fn set_conntrack_entries(&self, n: u64) {
        self.shared
            .conntrack
            .store(n.min(UNSET - 1), Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// The scrape-time part of [`Metrics`].
#[derive(Debug)]
struct Collector_(Arc<Shared>);

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, &format!("{help}."), None, c.metric_type())?)
}

fn gauge<N>(enc: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, &format!("{help}."), None, g.metric_type())?)
}

impl Collector for Collector_ {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let last = get(&s.health.last_pass_ms);
        if last > 0 {
            gauge(
                &mut enc,
                "sync_last_timestamp_seconds",
                "End of the last sync pass, Unix time",
                last as f64 / 1e3,
            )?;
        }
        let st = &s.sync;
        counter(&mut enc, "sync_passes", "Sync passes run", get(&st.passes))?;
        counter(
            &mut enc,
            "sync_frontend_upserts",
            "Service frontends created or changed in the maps",
            get(&st.upserts),
        )?;
        counter(
            &mut enc,
            "sync_frontend_deletes",
            "Service frontends deleted from the maps",
            get(&st.deletes),
        )?;
        counter(
            &mut enc,
            "sync_skipped",
            "Problems reported with a service (bad object, over capacity, unsupported), each once until it changes",
            get(&st.skipped),
        )?;
        counter(
            &mut enc,
            "sync_repaired_entries",
            "Map entries drift repair rewrote or deleted",
            get(&st.repaired),
        )?;
        counter(
            &mut enc,
            "source_errors",
            "Errors reported by the source; the last good state stayed in force",
            get(&st.source_errors),
        )?;
        {
            let v = ConstCounter::new(get(&st.udp_flows_cleared));
            let mut family = enc.encode_descriptor(
                "conntrack_flows_cleared",
                "Flows whose conntrack entries a sync pass deleted because their backend left the service.",
                None,
                v.metric_type(),
            )?;
            v.encode(family.encode_family(&[("proto", "udp")])?)?;
        }
        counter(
            &mut enc,
            "udp_sockets_closed",
            "Connected UDP sockets of the node closed because the backend the socket hooks gave them left its service",
            get(&st.udp_sockets_closed),
        )?;
        if let Some(k) = &s.kube {
            counter(
                &mut enc,
                "kube_watch_restarts",
                "Times a watcher started over with a fresh list (410 Gone, failed list)",
                get(&k.watch_restarts),
            )?;
            counter(
                &mut enc,
                "kube_watch_errors",
                "Failed list or watch requests and watch error events, each retried",
                get(&k.watch_errors),
            )?;
        }
        let ct = get(&s.conntrack);
        if ct != UNSET {
            gauge(
                &mut enc,
                "conntrack_entries",
                "Entries of the conntrack map (two per flow), counted periodically by walking the map",
                ct as i64,
            )?;
        }
        let evicted = get(&s.evictions);
        if evicted != UNSET {
            counter(
                &mut enc,
                "conntrack_evictions",
                "Conntrack entries the kernel's LRU evicted to make room since the agent started (created by the datapath, less the map's growth and the agent's deletions)",
                evicted,
            )?;
        }
        let sample = s
            .datapath
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(d) = sample else { return Ok(()) };
        counter(
            &mut enc,
            "conntrack_created",
            "Conntrack entries the datapath created under a new key",
            d.ct_created,
        )?;
        gauge(
            &mut enc,
            "frontends",
            "Service frontends (VIP, port, protocol) in the maps",
            d.frontends as i64,
        )?;
        gauge(
            &mut enc,
            "backends",
            "Distinct backends (address, port, protocol) in the maps",
            d.backends as i64,
        )?;
        gauge(
            &mut enc,
            "backend_slots",
            "Backend slots over all frontends",
            d.backend_slots as i64,
        )?;
        let capacities = d.capacity.per_map();
        {
            let mut family = enc.encode_descriptor(
                "map_capacity_entries",
                "Maximum entries of each map as loaded.",
                None,
                ConstGauge::new(0_i64).metric_type(),
            )?;
            for (map, size) in capacities {
                let labels = [("map", map)];
                ConstGauge::new(i64::from(size)).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, pick) in [
            (
                "datapath_packets",
                "Packets the datapath handled, by reason.",
                (|v: &StatValue| v.packets) as fn(&StatValue) -> u64,
            ),
            (
                "datapath_bytes",
                "Bytes the datapath handled, by reason.",
                |v: &StatValue| v.bytes,
            ),
        ] {
            let mut family =
                enc.encode_descriptor(name, help, None, ConstCounter::new(0_u64).metric_type())?;
            for (reason, v) in &d.stats {
                let labels = [("reason", reason.name())];
                ConstCounter::new(pick(v)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Reads the datapath into `metrics` every `every` (frontends, backends,
/// capacities, counters, under the dataplane lock) and counts the conntrack
/// map every `conntrack_every` (without the lock). Runs until aborted; read
/// errors are logged once until reads work again.
pub async fn sample_datapath(
    metrics: Arc<Metrics>,
    dp: Arc<Mutex<Dataplane>>,
    every: Duration,
    conntrack_every: Duration,
) {
    let (dir, ct_capacity) = {
        let dp = sync::lock(&dp);
        (dp.bpffs().to_path_buf(), u64::from(dp.capacity().conntrack))
    };
    // Stops a walk that an LRU map under churn keeps restarting (a deleted
    // current key sends `get_next_key` back to the first one).
    let ct_limit = ct_capacity.saturating_mul(2).max(1);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_count: Option<tokio::time::Instant> = None;
    let mut failing = false;
    let mut evictions = EvictionEstimate::default();
    loop {
        tick.tick().await;
        let d = Arc::clone(&dp);
        let sample = blocking(move || DatapathSample::read(&sync::lock(&d))).await;
        let counted = if last_count.is_none_or(|t| t.elapsed() >= conntrack_every) {
            last_count = Some(tokio::time::Instant::now());
            let dir = dir.clone();
            Some(blocking(move || count_conntrack(&dir, ct_limit)).await)
        } else {
            None
        };
        let mut error = None;
        let mut ct_counters = None;
        match sample {
            Ok(s) => {
                ct_counters = Some((s.ct_created, s.ct_removed));
                metrics.set_datapath(s);
            }
            Err(e) => error = Some(e),
        }
        match counted {
            Some(Ok(n)) => {
                // Two maps (one per family) of that size.
                metrics.set_conntrack_entries(n.min(ct_capacity.saturating_mul(2)));
                if let Some((created, removed)) = ct_counters {
                    metrics.set_conntrack_evictions(evictions.update(created, n, removed));
                }
            }
            Some(Err(e)) => error = Some(e),
            None => {}
        }
        match error {
            Some(e) if !failing => {
                tracing::warn!("cannot sample the datapath for metrics: {e}");
                failing = true;
            }
            Some(_) => {}
            None => failing = false,
        }
    }
}

/// Runs `f` on the blocking pool; a panic in it becomes an error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DataplaneError> + Send + 'static,
) -> Result<T, DataplaneError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(DataplaneError::Io {
            path: PathBuf::from("(metrics sampler)"),
            source: io::Error::other(e.to_string()),
        })
    })
}

/// The `/metrics` server's answer for `path`.
pub fn metrics_response(metrics: &Metrics, path: &str) -> Response {
    match path {
        "/metrics" => Response::new(200, prometheus_text::CONTENT_TYPE, metrics.encode()),
        _ => Response::text(404, "not found; try /metrics"),
    }
}

/// Serves `/metrics` (`GET` and `HEAD`) on `listener` until aborted.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<()> {
    crate::http::serve_get(listener, move |path| metrics_response(&metrics, path)).await
}

#[cfg(test)]
mod eviction_tests {
    use super::EvictionEstimate;

    #[test]
    fn evictions_are_what_was_created_less_growth_and_deletions_and_never_go_down() {
        let mut e = EvictionEstimate::default();
        // Baseline: 100 entries in the map, 1000 created before this agent.
        assert_eq!(e.update(1000, 100, 5), 0);
        // 50 created, the map grew by 50: nothing evicted.
        assert_eq!(e.update(1050, 150, 5), 0);
        // 100 more created, 20 deleted by the agent, the map grew by 30:
        // 50 evicted.
        assert_eq!(e.update(1150, 180, 25), 50);
        // The map shrinks by the agent's deletions only: still 50.
        assert_eq!(e.update(1150, 170, 35), 50);
        // A walk that counted more than there were does not undo evictions.
        assert_eq!(e.update(1150, 400, 35), 50);
    }
}
