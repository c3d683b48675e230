//! `svcnat run`: wires a source, the sync loop and the dataplane together.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::{
    dataplane::{Dataplane, DataplaneConfig, MapSizes},
    health::{self, AgentHealth},
    healthcheck::{self, HealthChecks, Responder},
    http,
    metrics::{self, Metrics},
    model::{ExternalPolicy, NodeInfo},
    sources::{self, SourceEvent},
    sync::{self, LoopConfig, SyncStats, Syncer},
};

/// Where Services and EndpointSlices come from.
#[derive(Clone, Debug)]
#[expect(clippy::large_enum_variant, reason = "built once at start-up")]
pub enum SourceConfig {
    /// A file or folder of manifests, watched for changes.
    Manifests(PathBuf),
    /// A Kubernetes API server.
    Kube {
        /// How to find credentials.
        config: sources::kube::KubeConfigSource,
        /// Explicit API server address (svcnat replaces kube-proxy, so the
        /// `kubernetes` ClusterIP may not work yet).
        api_server: Option<sources::kube::ApiServerOverride>,
    },
}

/// Everything `svcnat run` needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name (matched against endpoints' `nodeName`).
    pub node_name: String,
    /// The source.
    pub source: SourceConfig,
    /// Globs of pod-facing interfaces (TC programs).
    pub pod_interfaces: Vec<glob::Pattern>,
    /// Globs of node interfaces (XDP; their addresses are the NodePort
    /// addresses unless `nodeport_cidrs` says otherwise).
    pub node_interfaces: Vec<glob::Pattern>,
    /// `--nodeport-addresses`: node ports on every node address inside
    /// these networks (empty: the node interfaces' addresses).
    pub nodeport_cidrs: Vec<(IpAddr, u8)>,
    /// `--external-ip-cidrs`: when set, only external IPs inside these
    /// networks are served (see [`crate::model::ExternalPolicy`]).
    pub external_ip_cidrs: Option<Vec<(IpAddr, u8)>>,
    /// `--service-cidr`: the service CIDRs while no ServiceCIDR object
    /// gives any (empty: none, nothing is dropped).
    pub service_cidrs: Vec<crate::model::Cidr>,
    /// Pin folder.
    pub bpffs: PathBuf,
    /// Map sizes for maps created now.
    pub sizes: MapSizes,
    /// How often to look for new matching interfaces.
    pub attach_every: Duration,
    /// Sync loop settings.
    pub sync: LoopConfig,
    /// Where to serve `/metrics` (`None`: nowhere).
    pub metrics_addr: Option<SocketAddr>,
    /// Where to serve `/healthz` and `/readyz` (`None`: nowhere).
    pub healthz_addr: Option<SocketAddr>,
    /// Address the `healthCheckNodePort`s of services are served on
    /// (`None`: not served).
    pub healthcheck_bind: Option<IpAddr>,
    /// Source addresses of hairpin flows (a pod reaching itself through a
    /// service).
    pub hairpin: Hairpin,
    /// Socket-level load balancing for the node's own processes.
    pub socket_lb: SocketLb,
    /// Where the socket hooks attach: a cgroup v2 mount, or a folder whose
    /// `unified` folder is one.
    pub cgroup_root: PathBuf,
}

/// `--socket-lb`: which sockets the cgroup socket hooks translate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLb {
    /// Sockets of the node's own network namespace (host processes and
    /// hostNetwork pods); pods keep the TC path. Cilium's
    /// `socketLB.hostNamespaceOnly`.
    #[default]
    Host,
    /// None: the hooks are detached (node processes reach no Service, as
    /// before).
    Off,
}

/// The default of `--cgroup-root`.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The source address a pod sees when it reaches itself through a service
/// (hairpin), one per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hairpin {
    /// For IPv4 flows.
    pub v4: std::net::Ipv4Addr,
    /// For IPv6 flows.
    pub v6: std::net::Ipv6Addr,
}

impl Hairpin {
    /// The defaults, replaced by the addresses of `--hairpin-address`
    /// (at most one per family).
    pub fn from_flags(given: &[IpAddr]) -> Result<Self, String> {
        let mut h = Self::default();
        let (mut seen4, mut seen6) = (None, None);
        for &addr in given {
            let seen = match addr {
                IpAddr::V4(a) => {
                    h.v4 = a;
                    &mut seen4
                }
                IpAddr::V6(a) => {
                    h.v6 = a;
                    &mut seen6
                }
            };
            if let Some(first) = seen.replace(addr) {
                return Err(format!(
                    "--hairpin-address: {first} and {addr} are of one family: give at most one \
                     IPv4 and one IPv6 address"
                ));
            }
        }
        Ok(h)
    }
}

impl Default for Hairpin {
    /// The datapath's own defaults ([`proxy_common::HAIRPIN_ADDR_DEFAULT`],
    /// [`proxy_common::HAIRPIN6_ADDR_DEFAULT`]).
    fn default() -> Self {
        Self {
            v4: proxy_common::HAIRPIN_ADDR_DEFAULT.into(),
            v6: proxy_common::HAIRPIN6_ADDR_DEFAULT.into(),
        }
    }
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The dataplane could not be opened or attached.
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::DataplaneError),
    /// The Kubernetes client could not be built.
    #[error(transparent)]
    Kube(#[from] sources::kube::KubeSourceError),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// The addresses of both families of the interfaces matching `patterns`
/// in the current network namespace (the NodePort addresses, as
/// kube-proxy's `primary`), IPv6 link-local and loopback ones left out
/// ([`crate::host::is_node_address`]).
pub fn interface_addresses(patterns: &[glob::Pattern]) -> Vec<IpAddr> {
    let all = crate::host::addresses().unwrap_or_else(|e| {
        tracing::warn!("cannot list the node's addresses: {e}");
        Vec::new()
    });
    let mut out: Vec<IpAddr> = all
        .into_iter()
        .filter(|(name, addr)| {
            patterns.iter().any(|p| p.matches(name)) && crate::host::is_node_address(addr)
        })
        .map(|(_, addr)| addr)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The addresses node ports are served on, of both families: with
/// `cidrs` (of either family), every node address (on any interface)
/// inside one of them, as kube-proxy's `--nodeport-addresses`; else the
/// addresses of the node interfaces. A family no address is found for has
/// no node ports: the plan reports that per service.
pub fn nodeport_addresses(patterns: &[glob::Pattern], cidrs: &[(IpAddr, u8)]) -> Vec<IpAddr> {
    if cidrs.is_empty() {
        return interface_addresses(patterns);
    }
    let all = crate::host::addresses().unwrap_or_else(|e| {
        tracing::warn!("cannot list the node's addresses: {e}");
        Vec::new()
    });
    let mut out: Vec<IpAddr> = all
        .into_iter()
        .map(|(_, addr)| addr)
        .filter(|addr| {
            crate::host::is_node_address(addr)
                && cidrs
                    .iter()
                    .any(|c| crate::model::addr::cidr_contains(*c, *addr))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Runs the agent until SIGTERM/SIGINT. Programs, links and maps stay pinned
/// when it returns: the datapath keeps working without the agent.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let node = NodeInfo {
        zone: None,
        name: cfg.node_name.clone(),
        addresses: nodeport_addresses(&cfg.node_interfaces, &cfg.nodeport_cidrs),
    };
    tracing::info!(node = %node.name, addresses = ?node.addresses, bpffs = %cfg.bpffs.display(), "starting");
    let mut dp = Dataplane::open(&DataplaneConfig {
        bpffs: cfg.bpffs.clone(),
        sizes: cfg.sizes,
    })?;
    tracing::info!(frontends = dp.services().len(), "adopted pinned state");
    dp.set_hairpin_address(cfg.hairpin.v4)?;
    dp.set_hairpin_address(cfg.hairpin.v6)?;
    report_attach(dp.attach_matching(&cfg.pod_interfaces)?);
    report_attach(dp.attach_node_matching(&cfg.node_interfaces)?);
    match cfg.socket_lb {
        SocketLb::Host => {
            let root = crate::dataplane::cgroup2_root(&cfg.cgroup_root)
                .map_err(|e| AgentError::Other(format!("--cgroup-root: {e}")))?;
            report_attach(dp.attach_sockets(&root)?);
        }
        SocketLb::Off => {
            for hook in dp.detach_sockets()? {
                tracing::info!(hook = %hook, "socket hook detached (--socket-lb=off)");
            }
        }
    }
    // Our programs now run in every pinned link we manage: a migration from
    // an older layout can finish.
    if let Some(r) = dp.finish_migration()? {
        tracing::info!(
            to = proxy_common::LAYOUT_VERSION,
            rekeyed = r.rekeyed,
            already_current = r.current,
            lost = r.lost,
            removed_old_entries = r.removed,
            "migrated the pinned maps in place to the new layout (programs swapped atomically into the pinned links; established flows kept)"
        );
    }

    let (tx, rx) = mpsc::channel::<SourceEvent>(1024);
    let addresses_tx = tx.clone();
    let mut kube_stats = None;
    let source = match cfg.source.clone() {
        SourceConfig::Manifests(path) => tokio::spawn(async move {
            if let Err(e) = sources::manifests::run(path, tx).await {
                tracing::error!("manifests source stopped: {e}");
            }
        }),
        SourceConfig::Kube { config, api_server } => {
            let client = sources::kube::client(config, api_server).await?;
            let stats = Arc::new(sources::kube::KubeSourceStats::default());
            kube_stats = Some(Arc::clone(&stats));
            let node_name = cfg.node_name.clone();
            tokio::spawn(async move {
                if let Err(e) = sources::kube::run(client, tx, stats, node_name).await {
                    tracing::error!("kube source stopped: {e}");
                }
            })
        }
    };

    let stats = Arc::new(SyncStats::default());
    let health = Arc::new(AgentHealth::new(AgentHealth::timeout_for(
        cfg.sync.repair_every,
    )));
    // External IPs and LB IPs never take a node address (the NodePort
    // addresses) or a cluster IP; --external-ip-cidrs limits external IPs.
    let policy = ExternalPolicy {
        allowed_external_ips: cfg.external_ip_cidrs.clone(),
        ..ExternalPolicy::for_node(node.addresses.iter().copied())
    };
    let syncer = Syncer::new(node, stats.clone())
        .with_external_policy(policy)
        .with_service_cidrs(cfg.service_cidrs.clone());
    let dp = Arc::new(Mutex::new(dp));
    let metrics = Arc::new(Metrics::new(stats, health.clone(), kube_stats));
    let mut servers = Vec::new();
    if let Some(addr) = cfg.metrics_addr {
        let m = metrics.clone();
        servers.push(tokio::spawn(async move {
            let listener = http::bind_retrying(addr, "metrics").await;
            if let Err(e) = metrics::serve_metrics(listener, m).await {
                tracing::error!("metrics server stopped: {e}");
            }
        }));
        servers.push(tokio::spawn(metrics::sample_datapath(
            metrics.clone(),
            dp.clone(),
            metrics::SAMPLE_EVERY,
            metrics::CONNTRACK_COUNT_EVERY,
        )));
    }
    // Interfaces appear as pods start: attach on each rtnetlink link event
    // (a burst of them is one pass), with a slow periodic rescan as the safety
    // net for events the kernel dropped.
    let attach_dp = dp.clone();
    let patterns = cfg.pod_interfaces.clone();
    let node_patterns = cfg.node_interfaces.clone();
    let mut every = tokio::time::interval(cfg.attach_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = crate::linkwatch::spawn();
    let attach_metrics = metrics.clone();
    let nodeport_cidrs = cfg.nodeport_cidrs.clone();
    let attacher = tokio::spawn(async move {
        let mut events_open = true;
        loop {
            let mut first_link = None;
            let mut reread_addresses = false;
            tokio::select! {
                _ = every.tick() => reread_addresses = true,
                ev = events.recv(), if events_open => match ev {
                    Some(ev) => {
                        first_link = link_arrival(ev);
                        reread_addresses = first_link.is_none();
                    }
                    None => events_open = false,
                },
            }
            // Coalesce whatever else is already queued into this one pass.
            while let Ok(ev) = events.try_recv() {
                let link = link_arrival(ev);
                reread_addresses |= link.is_none();
                first_link = first_link.or(link);
            }
            if reread_addresses {
                // One home for the address logic: the same function as at
                // start; the Syncer ignores an unchanged set.
                let now = nodeport_addresses(&node_patterns, &nodeport_cidrs);
                if addresses_tx
                    .send(SourceEvent::NodeAddresses(now))
                    .await
                    .is_err()
                {
                    tracing::warn!("sync loop gone; node addresses not updated");
                }
            }
            let (pods, nodes) = {
                let mut dp = sync::lock(&attach_dp);
                (
                    dp.attach_matching(&patterns),
                    dp.attach_node_matching(&node_patterns),
                )
            };
            for result in [pods, nodes] {
                match result {
                    Ok(r) => {
                        if let Some(at) = first_link {
                            for _ in r.attached.iter() {
                                attach_metrics.observe_interface_attach(at.elapsed());
                            }
                        }
                        report_attach(r);
                    }
                    Err(e) => tracing::warn!("attach pass failed: {e}"),
                }
            }
        }
    });
    // healthCheckNodePorts: the sync loop publishes, the responder serves.
    let (hc_tx, hc_rx) = watch::channel(HealthChecks::new());
    let mut tasks = Vec::new();
    if let Some(bind) = cfg.healthcheck_bind {
        let responder = Responder::new(bind, health.clone());
        let task = tokio::spawn(healthcheck::run(responder, hc_rx, healthcheck::RETRY_EVERY));
        tasks.push(("healthcheck", task.abort_handle()));
        servers.push(task);
    }
    let sync = tokio::spawn(sync::run(
        syncer,
        dp.clone(),
        rx,
        cfg.sync.clone(),
        health.clone(),
        move |_, syncer, _| {
            metrics.observe_pass_duration(syncer.last_pass_duration);
            metrics.observe_programming_latencies(&syncer.last_latencies);
            let now = syncer.health_checks();
            hc_tx.send_if_modified(|published| {
                if published == now {
                    return false;
                }
                published.clone_from(now);
                true
            });
        },
    ));
    if let Some(addr) = cfg.healthz_addr {
        let h = health.clone();
        servers.push(tokio::spawn(async move {
            let listener = http::bind_retrying(addr, "health").await;
            if let Err(e) = health::serve_health(listener, h).await {
                tracing::error!("health server stopped: {e}");
            }
        }));
    }
    // Heartbeats for /healthz: the sync loop only passes on change.
    servers.push(tokio::spawn(health::watch_liveness(
        health,
        dp,
        [
            ("source", source.abort_handle()),
            ("attacher", attacher.abort_handle()),
            ("sync", sync.abort_handle()),
        ]
        .into_iter()
        .chain(tasks)
        .collect(),
        cfg.sync.repair_every.min(Duration::from_secs(10)),
    )));
    wait_for_signal().await;
    tracing::info!(
        "stopping; programs, links and maps stay pinned in {}",
        cfg.bpffs.display()
    );
    source.abort();
    attacher.abort();
    sync.abort();
    for s in servers {
        s.abort();
    }
    Ok(())
}

/// When a link event arrived, for the attach latency histogram.
fn link_arrival(ev: crate::linkwatch::Event) -> Option<std::time::Instant> {
    match ev {
        crate::linkwatch::Event::Link(at) => Some(at),
        crate::linkwatch::Event::Address | crate::linkwatch::Event::Rescan => None,
    }
}

fn report_attach(r: crate::dataplane::AttachReport) {
    for n in &r.attached {
        tracing::info!(interface = %n, "attached");
    }
    for n in &r.adopted {
        tracing::info!(interface = %n, "adopted pinned links");
    }
    for n in &r.removed {
        tracing::info!(pin = %n, "removed pin of a vanished interface");
    }
    for (n, e) in &r.failed {
        tracing::error!(interface = %n, "attach failed: {e}");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::Hairpin;

    fn ips(texts: &[&str]) -> Vec<std::net::IpAddr> {
        texts
            .iter()
            .map(|t| t.parse().expect("an address"))
            .collect()
    }

    #[test]
    fn hairpin_addresses_are_set_per_family() {
        let d = Hairpin::default();
        assert_eq!(Hairpin::from_flags(&[]), Ok(d));
        assert_eq!(d.v4.to_string(), "169.254.42.1");
        assert_eq!(d.v6.to_string(), "100::a9fe:2a01");
        let h = Hairpin::from_flags(&ips(&["2001:db8::1"])).expect("one IPv6");
        assert_eq!((h.v4, h.v6.to_string().as_str()), (d.v4, "2001:db8::1"));
        let h = Hairpin::from_flags(&ips(&["198.18.0.9", "fe80::9"])).expect("one each");
        assert_eq!(
            (h.v4.to_string(), h.v6.to_string()),
            ("198.18.0.9".to_string(), "fe80::9".to_string())
        );
        let e = Hairpin::from_flags(&ips(&["198.18.0.9", "198.18.0.8"])).expect_err("two IPv4");
        assert!(e.contains("198.18.0.9 and 198.18.0.8"), "{e}");
    }
}
