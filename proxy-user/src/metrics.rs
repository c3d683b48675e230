//! Prometheus metrics (`--metrics-addr`, default `127.0.0.1:10249`) and
//! health endpoints (`--healthz-addr`, default `0.0.0.0:10256`), on the ports
//! kube-proxy uses, so that probes and scrape configurations written for it
//! keep working.
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
//! | `kube_watch_restarts_total`, `kube_watch_errors_total` | counter | relists and failed list/watch requests (with a Kubernetes source only) |
//! | `frontends`, `backends`, `backend_slots` | gauge | what the maps hold |
//! | `conntrack_entries` | gauge | entries of the conntrack map, counted at most every [`CONNTRACK_COUNT_EVERY`] |
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
//! changes while it is walked). Compare `frontends` with
//! `map_capacity_entries{map="SVCNAT_SVC4"}` (which also holds one marker per
//! VIP), `backends` with `SVCNAT_BACKEND4`, `backend_slots` with
//! `SVCNAT_SLOTS` and `conntrack_entries` with `SVCNAT_CT4`.
//!
//! # Health
//!
//! - `/healthz`: `200` when the first sync pass finished, every agent task is
//!   still running, and the sync loop was shown alive within
//!   [`AgentHealth::timeout`] (`503` otherwise). The sync loop only passes
//!   when something changed, so [`watch_liveness`] takes the dataplane lock
//!   (the one passes and drift repairs hold) every few seconds as a
//!   heartbeat: a pass or repair stuck holding it stops the heartbeats. The
//!   body is kube-proxy's: `{"lastUpdated": "...", "currentTime": "..."}`
//!   (RFC 3339), `lastUpdated` being the last pass or heartbeat.
//! - `/readyz`: `200` once the first sync pass finished.

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
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
use proxy_common::{Ct4Key, CtValue, Reason, StatValue, map_names};
use tokio::{net::TcpListener, task::AbortHandle};

use crate::{
    dataplane::{Dataplane, DataplaneError, MapSizes, open_pinned},
    http,
    sources::kube::KubeSourceStats,
    sync::{self, Health, SyncStats},
};

// Moved to `http`; re-exported so that the older paths work.
pub use crate::http::{Response, bind_retrying};

/// kube-proxy's `--metrics-bind-address` default.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10249";
/// kube-proxy's `--healthz-bind-address` default.
pub const DEFAULT_HEALTHZ_ADDR: &str = "0.0.0.0:10256";
/// How often [`sample_datapath`] reads counters, capacities and counts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How often [`sample_datapath`] counts the conntrack map, at most.
pub const CONNTRACK_COUNT_EVERY: Duration = Duration::from_secs(30);
/// Longest a heartbeat or pass may be late before `/healthz` fails, beyond
/// two repair intervals.
pub const HEALTH_SLACK: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 of a Unix time in milliseconds (`1970-01-01T00:00:00Z` for 0).
pub fn rfc3339(unix_ms: u64) -> String {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .unwrap_or(k8s_openapi::jiff::Timestamp::MAX)
        .to_string()
}

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

/// Counts the entries of the pinned conntrack map under `dir`, walking its
/// keys and stopping after `limit` (the count is then `limit`). Takes no
/// lock: the datapath keeps writing while it runs.
pub fn count_conntrack(dir: &Path, limit: u64) -> Result<u64, DataplaneError> {
    let map = open_pinned(dir, map_names::CT4)?;
    let ct: HashMap<MapData, Ct4Key, CtValue> =
        HashMap::try_from(map).map_err(|source| DataplaneError::Map {
            map: map_names::CT4,
            source,
        })?;
    let mut n = 0_u64;
    for key in ct.keys() {
        if let Err(source) = key {
            return Err(DataplaneError::Map {
                map: map_names::CT4,
                source,
            });
        }
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
    health: Arc<Health>,
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
    shared: Arc<Shared>,
}

impl Metrics {
    /// Metrics over the sync loop's `stats` and `health`, and the Kubernetes
    /// source's watch counters when there is one.
    pub fn new(
        stats: Arc<SyncStats>,
        health: Arc<Health>,
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
            shared,
        }
    }

    /// Records the duration of one pass.
    pub fn observe_pass_duration(&self, duration: Duration) {
        self.pass_duration.observe(duration.as_secs_f64());
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
        let c = d.capacity;
        let capacities = [
            (map_names::SVC4, c.services),
            (map_names::SLOTS, c.slots),
            (map_names::BACKEND4, c.backends),
            (map_names::REVNAT4, c.revnat),
            (map_names::CT4, c.conntrack),
            (map_names::FRAG4, c.fragments),
            (map_names::SNAT4, c.snat),
            (map_names::NODE4, c.node_addresses),
            (map_names::AFFINITY4, c.affinity),
            (map_names::SRCRANGE4, c.source_ranges),
        ];
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
                metrics.set_conntrack_entries(n.min(ct_capacity));
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

/// What `/healthz` and `/readyz` answer, at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// `/healthz` answers 200.
    pub healthy: bool,
    /// `/readyz` answers 200: the first sync pass finished.
    pub ready: bool,
    /// Last pass or heartbeat, Unix ms (0: none yet).
    pub last_updated_ms: u64,
    /// The instant of the status, Unix ms.
    pub current_ms: u64,
    /// Why it is not healthy.
    pub reason: Option<String>,
}

/// Liveness of the agent: the sync loop's [`Health`], heartbeats from
/// [`watch_liveness`], and whether an agent task stopped.
#[derive(Debug)]
pub struct AgentHealth {
    sync: Arc<Health>,
    heartbeat_ms: AtomicU64,
    stopped: Mutex<Option<String>>,
    timeout: Duration,
}

impl AgentHealth {
    /// Healthy while a pass or heartbeat happened within `timeout`.
    pub fn new(sync: Arc<Health>, timeout: Duration) -> Self {
        Self {
            sync,
            heartbeat_ms: AtomicU64::new(0),
            stopped: Mutex::new(None),
            timeout,
        }
    }

    /// Two repair intervals plus [`HEALTH_SLACK`]: a pass or repair may hold
    /// the dataplane lock that long before the agent counts as stuck.
    pub fn timeout_for(repair_every: Duration) -> Duration {
        repair_every.saturating_mul(2) + HEALTH_SLACK
    }

    /// How long the sync loop may go without a pass or heartbeat.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records a heartbeat now.
    pub fn beat(&self) {
        self.beat_at(unix_ms_now());
    }

    /// Records a heartbeat at `unix_ms`.
    pub fn beat_at(&self, unix_ms: u64) {
        self.heartbeat_ms.fetch_max(unix_ms, Ordering::Relaxed);
    }

    /// Marks the agent unhealthy for good: task `name` stopped.
    pub fn task_stopped(&self, name: &str) {
        let mut s = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        if s.is_none() {
            tracing::error!(task = name, "agent task stopped; /healthz now fails");
            *s = Some(format!("task {name} stopped"));
        }
    }

    /// The status at `now_ms` (Unix ms).
    pub fn status_at(&self, now_ms: u64) -> HealthStatus {
        let ready = self.sync.synced.load(Ordering::Relaxed);
        let last = self
            .sync
            .last_pass_ms
            .load(Ordering::Relaxed)
            .max(self.heartbeat_ms.load(Ordering::Relaxed));
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let reason = if let Some(s) = stopped {
            Some(s)
        } else if !ready {
            Some("the first sync pass has not finished".to_owned())
        } else if now_ms.saturating_sub(last) > timeout_ms {
            Some(format!(
                "no sync pass or heartbeat for more than {:?}",
                self.timeout
            ))
        } else {
            None
        };
        HealthStatus {
            healthy: reason.is_none(),
            ready,
            last_updated_ms: last,
            current_ms: now_ms,
            reason,
        }
    }

    /// The status now.
    pub fn status(&self) -> HealthStatus {
        self.status_at(unix_ms_now())
    }
}

/// Heartbeats for [`AgentHealth`]: every `every`, marks the agent unhealthy
/// if one of `tasks` finished, and beats once `lock` (the dataplane lock the
/// sync loop holds for passes and repairs) could be taken. At most one lock
/// attempt is outstanding, so a lock held forever costs one blocked thread.
/// Runs until aborted.
pub async fn watch_liveness<T: Send + 'static>(
    health: Arc<AgentHealth>,
    lock: Arc<Mutex<T>>,
    tasks: Vec<(&'static str, AbortHandle)>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut attempt: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        for (name, task) in &tasks {
            if task.is_finished() {
                health.task_stopped(name);
            }
        }
        if attempt.as_ref().is_some_and(|a| !a.is_finished()) {
            continue;
        }
        let l = Arc::clone(&lock);
        let h = Arc::clone(&health);
        attempt = Some(tokio::task::spawn_blocking(move || {
            drop(l.lock().unwrap_or_else(PoisonError::into_inner));
            h.beat();
        }));
    }
}

/// The `/metrics` server's answer for `path`.
pub fn metrics_response(metrics: &Metrics, path: &str) -> Response {
    match path {
        "/metrics" => Response::new(200, prometheus_text::CONTENT_TYPE, metrics.encode()),
        _ => Response::text(404, "not found; try /metrics"),
    }
}

/// The health server's answer for `path`.
pub fn health_response(health: &AgentHealth, path: &str) -> Response {
    let s = health.status();
    match path {
        "/healthz" => Response::new(
            if s.healthy { 200 } else { 503 },
            "application/json",
            // kube-proxy's body, in its field order.
            format!(
                "{{\"lastUpdated\": {},\"currentTime\": {}}}",
                serde_json::Value::from(rfc3339(s.last_updated_ms)),
                serde_json::Value::from(rfc3339(s.current_ms)),
            ),
        ),
        "/readyz" if s.ready => Response::text(200, "ok"),
        "/readyz" => Response::text(503, "the first sync pass has not finished"),
        _ => Response::text(404, "not found; try /healthz or /readyz"),
    }
}

/// Serves `/metrics` (`GET` and `HEAD`) on `listener` until aborted.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<()> {
    http::serve_get(listener, move |path| metrics_response(&metrics, path)).await
}

/// Serves `/healthz` and `/readyz` (`GET` and `HEAD`) on `listener` until
/// aborted.
pub async fn serve_health(listener: TcpListener, health: Arc<AgentHealth>) -> io::Result<()> {
    http::serve_get(listener, move |path| health_response(&health, path)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_unix_ms() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    fn health(timeout_ms: u64) -> (Arc<Health>, AgentHealth) {
        let sync = Arc::new(Health::default());
        let h = AgentHealth::new(Arc::clone(&sync), Duration::from_millis(timeout_ms));
        (sync, h)
    }

    #[test]
    fn unhealthy_until_the_first_pass() {
        let (sync, h) = health(1_000);
        h.beat_at(10_000);
        let s = h.status_at(10_500);
        assert!(!s.healthy && !s.ready, "{s:?}");
        assert_eq!(s.last_updated_ms, 10_000);
        sync.last_pass_ms.store(10_200, Ordering::Relaxed);
        sync.synced.store(true, Ordering::Relaxed);
        let s = h.status_at(10_500);
        assert!(s.healthy && s.ready, "{s:?}");
        assert_eq!(s.last_updated_ms, 10_200);
    }

    #[test]
    fn heartbeats_keep_it_healthy_without_passes() {
        let (sync, h) = health(1_000);
        sync.last_pass_ms.store(10_000, Ordering::Relaxed);
        sync.synced.store(true, Ordering::Relaxed);
        assert!(h.status_at(11_000).healthy);
        let s = h.status_at(11_001);
        assert!(!s.healthy && s.ready, "{s:?}");
        h.beat_at(11_500);
        assert!(h.status_at(12_000).healthy);
        // An older heartbeat does not move lastUpdated back.
        h.beat_at(11_000);
        assert_eq!(h.status_at(12_000).last_updated_ms, 11_500);
    }

    #[test]
    fn a_stopped_task_is_unhealthy_for_good() {
        let (sync, h) = health(1_000);
        sync.last_pass_ms.store(10_000, Ordering::Relaxed);
        sync.synced.store(true, Ordering::Relaxed);
        h.task_stopped("sync");
        h.beat_at(10_000);
        let s = h.status_at(10_000);
        assert!(!s.healthy && s.ready, "{s:?}");
        assert_eq!(s.reason.as_deref(), Some("task sync stopped"));
    }

    #[test]
    fn health_timeout_is_two_repair_intervals_and_slack() {
        assert_eq!(
            AgentHealth::timeout_for(Duration::from_secs(60)),
            Duration::from_secs(130)
        );
    }
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
