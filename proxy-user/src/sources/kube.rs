//! The Kubernetes source: list and watch Services and EndpointSlices in every
//! namespace, this node's Node (by a field selector on its name) and the
//! cluster's ServiceCIDRs, and turn the watch streams into [`SourceEvent`]s.
//!
//! kube-runtime's [`watcher`] does the protocol work (paginated list, watch
//! from the list's `resourceVersion`, bookmarks, relist after `410 Gone`,
//! resume after a dropped connection). This module buffers each (re)list so
//! that it reaches the sync task as one [`SourceEvent::Resync`], forwards the
//! watch events one by one, and keeps retrying with kube's default backoff.

use std::{
    fmt::Debug,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{StreamExt, pin_mut};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;

use super::{Kind, Object, SourceEvent};

/// How to reach the API server.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once at start-up; boxing would only make callers noisier"
)]
pub enum KubeConfigSource {
    /// Read this kubeconfig file and use its current context.
    Kubeconfig(PathBuf),
    /// The pod's service account: token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount/`, address from
    /// `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` (or
    /// `https://kubernetes.default.svc` when an [`ApiServerOverride`] is given,
    /// since the address is replaced anyway).
    InCluster,
    /// A configuration built by the caller (tests, embedding).
    Explicit(kube::Config),
}

/// Address of the API server to use instead of the configured one.
///
/// svcnat replaces kube-proxy, so the `kubernetes` Service ClusterIP that the
/// in-cluster configuration points at may not be routable before svcnat runs
/// (the same reason Cilium has `k8sServiceHost`/`k8sServicePort`). The scheme,
/// path prefix, credentials and CA of the configuration are kept; only host and
/// port change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiServerOverride {
    /// Host name or IP address (IPv6 with or without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Counters of the watch machinery, shared with metrics through an [`Arc`].
#[derive(Debug, Default)]
pub struct KubeSourceStats {
    /// Times a watcher started over with a fresh list after its first one
    /// (relist after `410 Gone`, or a list retried after it failed).
    pub watch_restarts: AtomicU64,
    /// Errors reported by a watcher (failed list, failed watch request, error
    /// event in a watch stream). Each one is retried with backoff.
    pub watch_errors: AtomicU64,
}

/// Why the Kubernetes source could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The kubeconfig file could not be read or used.
    #[error("cannot use kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: KubeconfigError,
    },
    /// The in-cluster configuration (service account files, environment) is
    /// missing or invalid.
    #[error("cannot load the in-cluster configuration: {0}")]
    InCluster(#[from] InClusterError),
    /// The API server override does not make a valid URL.
    #[error("invalid API server override {url:?}: {reason}")]
    InvalidOverride {
        /// The URL built from the override.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The client could not be built from the configuration (TLS, auth).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// A watch stream ended, which kube's watcher never does on its own.
    #[error("the {kind:?} watch stream ended")]
    WatchEnded {
        /// Which kind was watched.
        kind: Kind,
    },
}

/// Builds a client from `cfg`, with the API server address replaced by
/// `override_` when given.
///
/// Returns an error if the configuration cannot be loaded, the override does
/// not form a valid URL, or the client cannot be built. Nothing is sent to the
/// API server yet.
pub async fn client(
    cfg: KubeConfigSource,
    override_: Option<ApiServerOverride>,
) -> Result<Client, KubeSourceError> {
    let mut config = match cfg {
        KubeConfigSource::Kubeconfig(path) => {
            let kubeconfig =
                Kubeconfig::read_from(&path).map_err(|source| KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeSourceError::Kubeconfig { path, source })?
        }
        // The environment variables name the `kubernetes` ClusterIP, which the
        // override replaces anyway: do not require them then.
        KubeConfigSource::InCluster if override_.is_some() => kube::Config::incluster_dns()?,
        KubeConfigSource::InCluster => kube::Config::incluster()?,
        KubeConfigSource::Explicit(config) => config,
    };
    if let Some(o) = override_ {
        apply_override(&mut config, &o)?;
    }
    Client::try_from(config).map_err(KubeSourceError::Client)
}

/// Points `config` at the override's host and port.
fn apply_override(config: &mut kube::Config, o: &ApiServerOverride) -> Result<(), KubeSourceError> {
    let url = override_url(
        config.cluster_url.scheme_str(),
        config.cluster_url.path(),
        o,
    )?;
    config.cluster_url = url.parse().map_err(|e| KubeSourceError::InvalidOverride {
        url: url.clone(),
        reason: format!("{e}"),
    })?;
    Ok(())
}

/// The URL `scheme://host:port/path` where scheme and path come from the
/// configured URL and host and port from the override.
fn override_url(
    scheme: Option<&str>,
    path: &str,
    o: &ApiServerOverride,
) -> Result<String, KubeSourceError> {
    let host = o.host.trim();
    let invalid = |reason: &str| KubeSourceError::InvalidOverride {
        url: format!("{host}:{}", o.port),
        reason: reason.to_owned(),
    };
    if host.is_empty() {
        return Err(invalid("empty host"));
    }
    if o.port == 0 {
        return Err(invalid("port 0"));
    }
    if host.contains(['/', '?', '#', '@']) {
        return Err(invalid("the host must be a bare name or address"));
    }
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let scheme = scheme.unwrap_or("https");
    let path = path.trim_end_matches('/');
    Ok(format!("{scheme}://{host}:{}{path}", o.port))
}

/// Watches Services and EndpointSlices in all namespaces, the Node named
/// `node_name` (`fieldSelector=metadata.name=...`: its zone label, its
/// deletion and taints; RBAC: `get`, `list`, `watch` on nodes) and the
/// ServiceCIDRs (`networking.k8s.io/v1`, Kubernetes 1.33 and later), and
/// sends [`SourceEvent`]s into `tx` until the receiver is dropped (then
/// returns `Ok`).
///
/// An API server that does not serve ServiceCIDRs (404: before 1.33, or
/// the API turned off) or does not let the agent list them (403: an older
/// ClusterRole) does not hold the agent back: the first such answer counts
/// as an empty list (logged once), and the watcher keeps retrying with its
/// backoff, so ServiceCIDRs served later are picked up.
///
/// For each kind, every completed list (the first one and every relist, for
/// example after `410 Gone`) is sent as ONE [`SourceEvent::Resync`] holding
/// every object of that kind, so the sync task never sees a half-listed
/// cluster. Watch events then become [`SourceEvent::Apply`] and
/// [`SourceEvent::Delete`]; bookmarks produce nothing. Managed fields are
/// stripped from every object. Errors are logged, counted in `stats` and
/// retried with kube's default backoff (0.8 s doubling to 30 s), forever.
///
/// Returns an error only if a watch stream ends, which kube's watcher does not
/// do.
pub async fn run(
    client: Client,
    tx: Sender<SourceEvent>,
    stats: Arc<KubeSourceStats>,
    node_name: String,
) -> Result<(), KubeSourceError> {
    let services = watch_kind::<Service>(
        Api::all(client.clone()),
        watcher_config(),
        Kind::Service,
        |s| Object::Service(Box::new(s)),
        tx.clone(),
        Arc::clone(&stats),
    );
    let slices = watch_kind::<EndpointSlice>(
        Api::all(client.clone()),
        watcher_config(),
        Kind::EndpointSlice,
        |s| Object::EndpointSlice(Box::new(s)),
        tx.clone(),
        Arc::clone(&stats),
    );
    let node = watch_kind::<Node>(
        Api::all(client.clone()),
        watcher_config().fields(&format!("metadata.name={node_name}")),
        Kind::Node,
        |n| Object::Node(Box::new(n)),
        tx.clone(),
        Arc::clone(&stats),
    );
    let cidrs = watch_kind::<ServiceCIDR>(
        Api::all(client),
        watcher_config(),
        Kind::ServiceCidr,
        |c| Object::ServiceCidr(Box::new(c)),
        tx,
        stats,
    );
    tokio::try_join!(services, slices, node, cidrs).map(|_| ())
}

/// The watcher configuration of a node agent.
///
/// Lists are served from the API server's watch cache (`resourceVersion=0`,
/// what client-go informers and so kube-proxy do): every node lists at start
/// and after `410 Gone`, and a quorum read from etcd for each of them would
/// load the control plane for nothing, since the watch that follows brings
/// the list up to date. kube-rs sends `resourceVersion=0` only for unpaginated
/// lists (a page size makes it a quorum read), hence no page size; the watch
/// cache ignored `limit` for such lists anyway. Bookmarks stay on (the
/// default) so that a reconnect resumes from a recent resourceVersion instead
/// of relisting.
fn watcher_config() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    config
}

/// One kind's watch loop: see [`run`].
async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: Sender<SourceEvent>,
    stats: Arc<KubeSourceStats>,
) -> Result<(), KubeSourceError>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let stream = watcher(api, config)
        .modify(|obj: &mut K| obj.meta_mut().managed_fields = None)
        .default_backoff();
    pin_mut!(stream);
    // Objects of the list in progress; `None` between lists.
    let mut listing: Option<Vec<Object>> = None;
    let mut lists_started = 0_u64;
    // Lists completed (or, for an optional kind, given up as not served).
    let mut lists_done = 0_u64;
    loop {
        let next = tokio::select! {
            // Stop as soon as nobody listens, even while backing off.
            () = tx.closed() => return Ok(()),
            next = stream.next() => next,
        };
        let event = match next {
            None => return Err(KubeSourceError::WatchEnded { kind }),
            Some(Err(e)) => {
                stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?kind, error = %e, "watch failed; retrying with backoff");
                if lists_done > 0 || kind != Kind::ServiceCidr || !not_served(&e) {
                    continue;
                }
                // Optional: go on without them rather than wait forever.
                tracing::warn!(
                    ?kind,
                    "the API server does not serve ServiceCIDRs to this agent (404: before \
                     Kubernetes 1.33; 403: the ClusterRole lacks list/watch on servicecidrs): \
                     going on without them (--service-cidr applies), retrying in the background"
                );
                lists_done += 1;
                SourceEvent::Resync {
                    kind,
                    objects: Vec::new(),
                }
            }
            Some(Ok(watcher::Event::Init)) => {
                if lists_started > 0 {
                    stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(?kind, "relisting");
                }
                lists_started += 1;
                listing = Some(Vec::new());
                continue;
            }
            Some(Ok(watcher::Event::InitApply(obj))) => {
                listing.get_or_insert_with(Vec::new).push(wrap(obj));
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                lists_done += 1;
                let objects = listing.take().unwrap_or_default();
                tracing::debug!(?kind, count = objects.len(), "list complete");
                SourceEvent::Resync { kind, objects }
            }
            Some(Ok(watcher::Event::Apply(obj))) => SourceEvent::Apply(wrap(obj)),
            Some(Ok(watcher::Event::Delete(obj))) => SourceEvent::Delete {
                kind,
                namespace: obj.namespace().unwrap_or_default(),
                name: obj.name_any(),
            },
        };
        if tx.send(event).await.is_err() {
            return Ok(());
        }
    }
}

/// Whether a list failed because the API server does not serve the
/// resource (404) or does not let the agent list it (403).
fn not_served(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404 || s.code == 403
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(host: &str, port: u16) -> ApiServerOverride {
        ApiServerOverride {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn override_keeps_scheme_and_path() {
        let url = override_url(Some("https"), "/k8s/clusters/c-1", &over("10.0.0.1", 6443));
        assert_eq!(
            url.ok().as_deref(),
            Some("https://10.0.0.1:6443/k8s/clusters/c-1")
        );
        let url = override_url(Some("http"), "/", &over("api.example", 8080));
        assert_eq!(url.ok().as_deref(), Some("http://api.example:8080"));
    }

    #[test]
    fn override_brackets_ipv6() {
        let url = override_url(None, "", &over("fd00::1", 6443));
        assert_eq!(url.ok().as_deref(), Some("https://[fd00::1]:6443"));
        let url = override_url(None, "", &over("[fd00::1]", 6443));
        assert_eq!(url.ok().as_deref(), Some("https://[fd00::1]:6443"));
    }

    #[test]
    fn override_rejects_bad_input() {
        for o in [
            over("", 6443),
            over("  ", 1),
            over("a", 0),
            over("a/b", 1),
            over("u@h", 1),
        ] {
            assert!(
                matches!(
                    override_url(Some("https"), "/", &o),
                    Err(KubeSourceError::InvalidOverride { .. })
                ),
                "{o:?} accepted"
            );
        }
    }

    #[test]
    fn override_replaces_the_cluster_url() {
        let mut config = kube::Config::new(
            "https://kubernetes.default.svc"
                .parse()
                .expect("static url"),
        );
        apply_override(&mut config, &over("192.0.2.10", 6443)).expect("valid override");
        assert_eq!(config.cluster_url.to_string(), "https://192.0.2.10:6443/");
    }

    #[tokio::test]
    async fn explicit_config_with_override_builds_a_client() {
        let config =
            kube::Config::new("http://kubernetes.default.svc".parse().expect("static url"));
        let c = client(
            KubeConfigSource::Explicit(config),
            Some(over("127.0.0.1", 6443)),
        )
        .await;
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[tokio::test]
    async fn missing_kubeconfig_is_a_typed_error() {
        let path = PathBuf::from("/nonexistent/svcnat/kubeconfig");
        let r = client(KubeConfigSource::Kubeconfig(path.clone()), None).await;
        assert!(matches!(r, Err(KubeSourceError::Kubeconfig { path: p, .. }) if p == path));
    }
}
