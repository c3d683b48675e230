//! The agent's health: one [`AgentHealth`], which the sync loop records its
//! passes in, [`watch_liveness`] its heartbeats and stopped tasks, and which
//! `/healthz` and `/readyz` (served here, `--healthz-addr`, default
//! `0.0.0.0:10256` as kube-proxy), the metrics (`sync_last_timestamp_seconds`)
//! and the `healthCheckNodePort`s (`serviceProxyHealthy`) read.
//!
//! - `/healthz`: `200` when the first sync pass finished, every agent task is
//!   still running, and the sync loop was shown alive within
//!   [`AgentHealth::timeout`] (`503` otherwise). The sync loop only passes
//!   when something changed, so [`watch_liveness`] takes the dataplane lock
//!   (the one passes and drift repairs hold) every few seconds as a
//!   heartbeat: a pass or repair stuck holding it stops the heartbeats. The
//!   body is kube-proxy's: `{"lastUpdated": "...", "currentTime": "...",
//!   "nodeEligible": true}` (RFC 3339), `lastUpdated` being the last pass
//!   or heartbeat. It also fails while this node's Node is being deleted
//!   or carries the cluster autoscaler's `ToBeDeletedByClusterAutoscaler`
//!   taint (KEP-3836, as kube-proxy): load balancers that probe it drain
//!   the node before it goes.
//! - `/livez`: `/healthz` without the node's eligibility (kube-proxy's
//!   `/livez`, for the kubelet's liveness probe, which must not restart a
//!   healthy agent on a draining node).
//! - `/readyz`: `200` once the first sync pass finished.

use std::{
    io,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{net::TcpListener, task::AbortHandle};

use crate::http::{self, Response};

/// kube-proxy's `--healthz-bind-address` default.
pub const DEFAULT_HEALTHZ_ADDR: &str = "0.0.0.0:10256";
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

/// What `/healthz` and `/readyz` answer, at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// `/healthz` answers 200.
    pub healthy: bool,
    /// `/readyz` answers 200: the first sync pass finished.
    pub ready: bool,
    /// This node is not being deleted or drained (`/healthz` needs it too,
    /// `/livez` and the health check node ports do not).
    pub node_eligible: bool,
    /// Last pass or heartbeat, Unix ms (0: none yet).
    pub last_updated_ms: u64,
    /// The instant of the status, Unix ms.
    pub current_ms: u64,
    /// Why it is not healthy.
    pub reason: Option<String>,
}

/// Health of the agent: the sync loop's passes, heartbeats from
/// [`watch_liveness`], and whether an agent task stopped. Shared by the sync
/// loop, the metrics, the health servers and the health check ports.
#[derive(Debug)]
pub struct AgentHealth {
    /// Unix time (ms) of the end of the last pass; 0 before the first.
    pub last_pass_ms: AtomicU64,
    /// Whether the first complete pass finished.
    pub synced: AtomicBool,
    heartbeat_ms: AtomicU64,
    stopped: Mutex<Option<String>>,
    timeout: Duration,
    /// Load balancers may send to this node (see `/healthz`).
    node_eligible: AtomicBool,
}

impl AgentHealth {
    /// Healthy, once the first pass finished, while a pass or heartbeat
    /// happened within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            last_pass_ms: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            stopped: Mutex::new(None),
            timeout,
            node_eligible: AtomicBool::new(true),
        }
    }

    /// Records whether load balancers may send to this node (the Node is
    /// not being deleted or drained by the autoscaler).
    pub fn set_node_eligible(&self, eligible: bool) {
        let was = self.node_eligible.swap(eligible, Ordering::Relaxed);
        if was != eligible {
            if eligible {
                tracing::info!(
                    "this node is eligible for load balancer traffic again: /healthz passes"
                );
            } else {
                tracing::warn!(
                    "this node is being deleted or drained: /healthz fails (not /livez)"
                );
            }
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

    /// Records the end of a complete sync pass now.
    pub fn pass_finished(&self) {
        self.last_pass_ms.store(unix_ms_now(), Ordering::Relaxed);
        self.synced.store(true, Ordering::Relaxed);
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
        let ready = self.synced.load(Ordering::Relaxed);
        let last = self
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
            node_eligible: self.node_eligible.load(Ordering::Relaxed),
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

/// The health server's answer for `path`.
pub fn health_response(health: &AgentHealth, path: &str) -> Response {
    let s = health.status();
    let time = |ms: u64| serde_json::Value::from(rfc3339(ms));
    match path {
        "/healthz" => Response::new(
            if s.healthy && s.node_eligible {
                200
            } else {
                503
            },
            "application/json",
            // kube-proxy's body, in its field order.
            format!(
                "{{\"lastUpdated\": {},\"currentTime\": {}, \"nodeEligible\": {}}}",
                time(s.last_updated_ms),
                time(s.current_ms),
                s.node_eligible
            ),
        ),
        "/livez" => Response::new(
            if s.healthy { 200 } else { 503 },
            "application/json",
            format!(
                "{{\"lastUpdated\": {},\"currentTime\": {}}}",
                time(s.last_updated_ms),
                time(s.current_ms),
            ),
        ),
        "/readyz" if s.ready => Response::text(200, "ok"),
        "/readyz" => Response::text(503, "the first sync pass has not finished"),
        _ => Response::text(404, "not found; try /healthz, /livez or /readyz"),
    }
}

/// Serves `/healthz`, `/livez` and `/readyz` (`GET` and `HEAD`) on `listener` until
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

    fn health(timeout_ms: u64) -> AgentHealth {
        AgentHealth::new(Duration::from_millis(timeout_ms))
    }

    #[test]
    fn unhealthy_until_the_first_pass() {
        let h = health(1_000);
        h.beat_at(10_000);
        let s = h.status_at(10_500);
        assert!(!s.healthy && !s.ready, "{s:?}");
        assert_eq!(s.last_updated_ms, 10_000);
        h.last_pass_ms.store(10_200, Ordering::Relaxed);
        h.synced.store(true, Ordering::Relaxed);
        let s = h.status_at(10_500);
        assert!(s.healthy && s.ready, "{s:?}");
        assert_eq!(s.last_updated_ms, 10_200);
    }

    #[test]
    fn heartbeats_keep_it_healthy_without_passes() {
        let h = health(1_000);
        h.last_pass_ms.store(10_000, Ordering::Relaxed);
        h.synced.store(true, Ordering::Relaxed);
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
        let h = health(1_000);
        h.last_pass_ms.store(10_000, Ordering::Relaxed);
        h.synced.store(true, Ordering::Relaxed);
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
