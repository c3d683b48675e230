//! `healthCheckNodePort` responder, as kube-proxy's service health server
//! (`pkg/proxy/healthcheck/service_health.go`).
//!
//! A Service of type LoadBalancer with `externalTrafficPolicy: Local` gets a
//! `healthCheckNodePort` from the API server. Cloud load balancers probe it on
//! every node to send traffic only to nodes that have a local endpoint. The
//! agent answers HTTP on each such port, on [`DEFAULT_BIND_ADDRESS`] by
//! default (`--healthcheck-bind-address`), any path and method:
//!
//! - `200` when the service has at least one local ready endpoint and the
//!   agent is healthy (its `/healthz` would answer 200), `503` otherwise;
//! - headers `Content-Type: application/json`, `X-Content-Type-Options:
//!   nosniff` and `X-Load-Balancing-Endpoints: N`;
//! - body `{"service":{"namespace":"NS","name":"NAME"},"localEndpoints":N,"serviceProxyHealthy":true}`.
//!
//! The sync loop computes what each service needs ([`need_of`]) and, after
//! every pass, which service each port answers for ([`assign`]: a port
//! claimed by two services stays with the one that had it, or goes to the
//! first by name; the other gets a logged problem). The agent publishes that
//! set on a `tokio::sync::watch` channel; [`run`] keeps one listener per port
//! open ([`Responder`]): opened when a port appears, closed when its service
//! goes away or stops needing it. A port that cannot be bound is logged once
//! and retried on every change and every [`RETRY_EVERY`], without stopping
//! the others.
//!
//! `localEndpoints` counts the distinct ready endpoints (address and port,
//! as kube-proxy counts them) on this node, over the ports the datapath
//! serves ([`crate::plan::served`]: TCP and UDP, IPv4 and IPv6): the
//! endpoints the datapath sends outside traffic to. Like
//! kube-proxy, serving-but-terminating endpoints are not counted even when
//! the datapath still uses them as a fallback, so that load balancers drain
//! a node whose endpoints are all terminating.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    health::AgentHealth,
    http::{self, Connections, Request, Response},
    model::{ServiceModel, ServiceName},
};

/// kube-proxy's default: every address of the node (`--nodeport-addresses`
/// unset).
pub const DEFAULT_BIND_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// How often [`run`] retries ports that could not be bound.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);
/// Connections held at once over all ports (the oldest closed for a new one).
const MAX_CONNECTIONS: usize = 512;

/// What one service asks of the responder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The `healthCheckNodePort`.
    pub port: u16,
    /// Local ready endpoints (see the module documentation).
    pub local_endpoints: usize,
}

/// The service a health check port answers for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckService {
    /// The service.
    pub service: ServiceName,
    /// Its local ready endpoints.
    pub local_endpoints: usize,
}

/// Health check ports and the service each answers for: what the sync loop
/// publishes after each pass.
pub type HealthChecks = BTreeMap<u16, HealthCheckService>;

/// What a service, modelled as `m`, needs: `None` unless it is a
/// LoadBalancer with `externalTrafficPolicy: Local` and a valid
/// `healthCheckNodePort` (the model keeps the port only with the Local
/// policy). Local endpoints are counted over the ports the datapath serves
/// ([`crate::plan::served`]).
pub fn need_of(m: &ServiceModel) -> Option<Need> {
    if !m.load_balancer {
        return None;
    }
    let port = m.ports.iter().find_map(|p| p.health_check_node_port)?;
    let local: BTreeSet<(IpAddr, u16)> = crate::plan::served(m)
        .flat_map(|p| &p.backends)
        .filter(|b| b.is_local && !b.terminating)
        .map(|b| (b.address, b.port))
        .collect();
    Some(Need {
        port,
        local_endpoints: local.len(),
    })
}

/// Two services claim one health check port: `service` does not get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConflict {
    /// The service left without its port.
    pub service: ServiceName,
    /// The port.
    pub port: u16,
    /// The service that answers on it.
    pub owner: ServiceName,
}

impl fmt::Display for PortConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {}: health check node port {} already belongs to service {}; not served for this service",
            self.service, self.port, self.owner
        )
    }
}

/// Which service each port answers for, given every service's need and the
/// previous assignment: a port stays with the service that had it while that
/// service still claims it; a new port goes to the first claimant by name.
/// Returns the assignment and the services left out.
pub fn assign(
    needs: &BTreeMap<ServiceName, Need>,
    previous: &HealthChecks,
) -> (HealthChecks, Vec<PortConflict>) {
    let mut claims: BTreeMap<u16, Vec<(&ServiceName, &Need)>> = BTreeMap::new();
    for (name, need) in needs {
        claims.entry(need.port).or_default().push((name, need));
    }
    let mut out = HealthChecks::new();
    let mut conflicts = Vec::new();
    for (port, claimants) in claims {
        let kept = previous
            .get(&port)
            .and_then(|p| claimants.iter().position(|(n, _)| **n == p.service));
        let winner = kept.unwrap_or(0);
        let Some((owner, need)) = claimants.get(winner) else {
            continue;
        };
        for (i, (name, _)) in claimants.iter().enumerate() {
            if i != winner {
                conflicts.push(PortConflict {
                    service: (*name).clone(),
                    port,
                    owner: (*owner).clone(),
                });
            }
        }
        out.insert(
            port,
            HealthCheckService {
                service: (*owner).clone(),
                local_endpoints: need.local_endpoints,
            },
        );
    }
    (out, conflicts)
}

/// The answer of a health check port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// 200 or 503.
    pub status: u16,
    /// `X-Load-Balancing-Endpoints`.
    pub local_endpoints: usize,
    /// JSON body.
    pub body: String,
}

/// kube-proxy's answer for `svc` while the agent is `healthy` or not.
pub fn answer_for(svc: &HealthCheckService, healthy: bool) -> Answer {
    let text = |s: &str| serde_json::Value::from(s).to_string();
    Answer {
        status: if svc.local_endpoints > 0 && healthy {
            200
        } else {
            503
        },
        local_endpoints: svc.local_endpoints,
        body: format!(
            "{{\"service\":{{\"namespace\":{},\"name\":{}}},\"localEndpoints\":{},\"serviceProxyHealthy\":{}}}",
            text(&svc.service.namespace),
            text(&svc.service.name),
            svc.local_endpoints,
            healthy
        ),
    }
}

/// What one [`Responder::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Ports now listened on that were not before.
    pub opened: Vec<u16>,
    /// Ports closed.
    pub closed: Vec<u16>,
    /// Ports that could not be bound, with the error.
    pub failed: Vec<(u16, String)>,
}

/// The listeners of the health check ports.
pub struct Responder {
    bind: IpAddr,
    health: Arc<AgentHealth>,
    current: Arc<RwLock<HealthChecks>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
    failed: BTreeMap<u16, String>,
    connections: Arc<Connections>,
}

impl Responder {
    /// A responder that binds its ports on `bind` and asks `health` for
    /// `serviceProxyHealthy` at each request.
    pub fn new(bind: IpAddr, health: Arc<AgentHealth>) -> Self {
        Self {
            bind,
            health,
            current: Arc::new(RwLock::new(HealthChecks::new())),
            listeners: BTreeMap::new(),
            failed: BTreeMap::new(),
            connections: Connections::new(MAX_CONNECTIONS),
        }
    }

    /// Makes the listeners equal to `desired`: answers from now on use its
    /// services and counts, ports no longer there are closed (when this
    /// returns, nothing listens on them), new ports (and those that failed
    /// before) are bound. A bind failure is logged the first time and
    /// whenever its error changes; the other ports are not affected.
    pub async fn apply(&mut self, desired: &HealthChecks) -> ApplyReport {
        let mut report = ApplyReport::default();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = desired.clone();
        let gone: Vec<u16> = self
            .listeners
            .iter()
            .filter(|(port, task)| !desired.contains_key(port) || task.is_finished())
            .map(|(port, _)| *port)
            .collect();
        for port in gone {
            if let Some(task) = self.listeners.remove(&port) {
                task.abort();
                // Resolves once the task is dropped, and its listener closed.
                let _ = task.await;
                if !desired.contains_key(&port) {
                    tracing::info!(port, "health check port closed");
                    report.closed.push(port);
                }
            }
        }
        self.failed.retain(|port, _| desired.contains_key(port));
        for (port, svc) in desired {
            if self.listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(self.bind, *port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(%addr, service = %svc.service, "health check port listening");
                    self.failed.remove(port);
                    let task = tokio::spawn(serve(
                        listener,
                        *port,
                        Arc::clone(&self.current),
                        Arc::clone(&self.health),
                        Arc::clone(&self.connections),
                    ));
                    self.listeners.insert(*port, task);
                    report.opened.push(*port);
                }
                Err(e) => {
                    let error = e.to_string();
                    if self.failed.get(port) != Some(&error) {
                        tracing::error!(
                            %addr,
                            service = %svc.service,
                            "cannot listen on the health check node port: {error}; retrying"
                        );
                    }
                    self.failed.insert(*port, error.clone());
                    report.failed.push((*port, error));
                }
            }
        }
        report
    }

    /// Ports listened on.
    pub fn listening(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    /// Ports that could not be bound at the last try, with the error.
    pub fn failed(&self) -> &BTreeMap<u16, String> {
        &self.failed
    }

    /// Closes every listener.
    pub async fn close_all(&mut self) {
        self.apply(&HealthChecks::new()).await;
    }
}

/// Runs `responder` on the sets published on `desired` until the sender is
/// dropped, then closes every port. Ports that could not be bound are
/// retried every `retry_every`.
pub async fn run(
    mut responder: Responder,
    mut desired: watch::Receiver<HealthChecks>,
    retry_every: Duration,
) {
    loop {
        let want = desired.borrow_and_update().clone();
        responder.apply(&want).await;
        let retry = !responder.failed().is_empty();
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep(retry_every), if retry => {}
        }
    }
    responder.close_all().await;
}

/// Serves one health check port until aborted: any method and path (as
/// kube-proxy).
async fn serve(
    listener: TcpListener,
    port: u16,
    current: Arc<RwLock<HealthChecks>>,
    health: Arc<AgentHealth>,
    connections: Arc<Connections>,
) {
    let handler = Arc::new(move |_: &Request<'_>| {
        let svc = current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&port)
            .cloned();
        match svc {
            Some(svc) => {
                let a = answer_for(&svc, health.status().healthy);
                Response::new(a.status, "application/json", a.body)
                    .with_header("X-Load-Balancing-Endpoints", a.local_endpoints.to_string())
            }
            // Closed while this connection waited.
            None => Response::text(503, "no service on this port"),
        }
    });
    if let Err(e) = http::serve(listener, connections, handler).await {
        tracing::error!(port, "health check port stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use serde_json::json;

    use super::*;
    use crate::model::{NodeInfo, model_service};

    fn node() -> NodeInfo {
        NodeInfo {
            zone: None,
            name: "node-a".into(),
            addresses: vec!["198.18.0.2".parse().expect("address")],
        }
    }

    fn service(name: &str, type_: &str, policy: &str, hc_port: Option<i32>) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "type": type_,
                "clusterIP": "198.19.0.10",
                "externalTrafficPolicy": policy,
                "healthCheckNodePort": hc_port,
                "ports": [
                    {"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
                    {"name": "dns", "port": 53, "nodePort": 30053, "protocol": "UDP"}
                ]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.1.1"}]}}
        }))
        .expect("service")
    }

    /// A slice of `svc` with endpoints (address, node, ready, terminating).
    fn slice(svc: &str, family: &str, eps: &[(&str, &str, bool, bool)]) -> EndpointSlice {
        let eps: Vec<_> = eps
            .iter()
            .map(|(addr, node, ready, terminating)| {
                json!({
                    "addresses": [addr],
                    "nodeName": node,
                    "conditions": {"ready": ready, "serving": true, "terminating": terminating}
                })
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-{family}"), "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family,
            "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "protocol": "UDP"}
            ],
            "endpoints": eps
        }))
        .expect("slice")
    }

    fn need(svc: &Service, slices: &[EndpointSlice]) -> Option<Need> {
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        need_of(&model_service(svc, &refs, &node()))
    }

    #[test]
    fn a_local_load_balancer_needs_its_port_and_counts_local_ready_endpoints() {
        let svc = service("web", "LoadBalancer", "Local", Some(32000));
        let slices = [slice(
            "web",
            "IPv4",
            &[
                ("198.18.1.1", "node-a", true, false),
                ("198.18.1.2", "node-a", true, false),
                ("198.18.1.3", "node-b", true, false),
            ],
        )];
        // Two local pods, two ports each: four distinct address:port pairs.
        assert_eq!(
            need(&svc, &slices),
            Some(Need {
                port: 32000,
                local_endpoints: 4
            })
        );
    }

    #[test]
    fn only_remote_or_terminating_endpoints_count_zero() {
        let svc = service("web", "LoadBalancer", "Local", Some(32000));
        let remote = [slice(
            "web",
            "IPv4",
            &[("198.18.1.3", "node-b", true, false)],
        )];
        assert_eq!(need(&svc, &remote).map(|n| n.local_endpoints), Some(0));
        // Terminating local endpoints are the datapath's fallback, but the
        // load balancer should drain the node (as kube-proxy).
        let terminating = [slice(
            "web",
            "IPv4",
            &[("198.18.1.1", "node-a", false, true)],
        )];
        assert_eq!(need(&svc, &terminating).map(|n| n.local_endpoints), Some(0));
        assert_eq!(need(&svc, &[]).map(|n| n.local_endpoints), Some(0));
    }

    #[test]
    fn ipv6_endpoints_count_as_the_ipv4_ones_do() {
        let mut svc = service("web", "LoadBalancer", "Local", Some(32000));
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ips = Some(vec!["198.19.0.10".into(), "2001:db8::10".into()]);
            spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        }
        let slices = [
            slice("web", "IPv4", &[("198.18.1.1", "node-a", true, false)]),
            slice("web", "IPv6", &[("2001:db8::1:1", "node-a", true, false)]),
        ];
        // One local pod per family, two ports each: the datapath serves
        // IPv6 at the node as it does IPv4, so all four count.
        assert_eq!(need(&svc, &slices).map(|n| n.local_endpoints), Some(4));
    }

    #[test]
    fn only_local_load_balancers_with_a_port_need_one() {
        let slices = [slice(
            "web",
            "IPv4",
            &[("198.18.1.1", "node-a", true, false)],
        )];
        for (svc, why) in [
            (
                service("web", "LoadBalancer", "Cluster", Some(32000)),
                "policy Cluster",
            ),
            (
                service("web", "NodePort", "Local", Some(32000)),
                "not a load balancer",
            ),
            (service("web", "LoadBalancer", "Local", None), "no port"),
            (
                service("web", "LoadBalancer", "Local", Some(70000)),
                "port out of range",
            ),
        ] {
            assert_eq!(need(&svc, &slices), None, "{why}");
        }
    }

    fn needs(list: &[(&str, u16, usize)]) -> BTreeMap<ServiceName, Need> {
        list.iter()
            .map(|(name, port, n)| {
                (
                    ServiceName::new("shop", *name),
                    Need {
                        port: *port,
                        local_endpoints: *n,
                    },
                )
            })
            .collect()
    }

    fn owner(hc: &HealthChecks, port: u16) -> Option<&str> {
        hc.get(&port).map(|s| s.service.name.as_str())
    }

    #[test]
    fn a_shared_port_goes_to_the_first_claimant_and_the_other_is_reported() {
        let (hc, conflicts) = assign(
            &needs(&[("b", 32000, 1), ("a", 32000, 2)]),
            &HealthChecks::new(),
        );
        assert_eq!(owner(&hc, 32000), Some("a"));
        assert_eq!(hc[&32000].local_endpoints, 2);
        assert_eq!(
            conflicts,
            vec![PortConflict {
                service: ServiceName::new("shop", "b"),
                port: 32000,
                owner: ServiceName::new("shop", "a"),
            }]
        );
        assert!(conflicts[0].to_string().contains("shop/b"));
        assert!(conflicts[0].to_string().contains("32000"));
    }

    #[test]
    fn the_service_holding_a_port_keeps_it_and_the_other_takes_over_when_it_goes() {
        let (first, _) = assign(&needs(&[("b", 32000, 1)]), &HealthChecks::new());
        let (both, conflicts) = assign(&needs(&[("a", 32000, 2), ("b", 32000, 1)]), &first);
        assert_eq!(owner(&both, 32000), Some("b"), "the holder keeps it");
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].service.name, "a");
        let (after, conflicts) = assign(&needs(&[("a", 32000, 2)]), &both);
        assert_eq!(owner(&after, 32000), Some("a"));
        assert!(conflicts.is_empty());
        let (none, _) = assign(&needs(&[]), &after);
        assert!(none.is_empty());
    }

    #[test]
    fn answers_follow_kube_proxy() {
        let svc = HealthCheckService {
            service: ServiceName::new("shop", "web"),
            local_endpoints: 2,
        };
        let a = answer_for(&svc, true);
        assert_eq!(a.status, 200);
        assert_eq!(a.local_endpoints, 2);
        assert_eq!(
            a.body,
            r#"{"service":{"namespace":"shop","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        );
        assert_eq!(answer_for(&svc, false).status, 503);
        assert!(
            answer_for(&svc, false)
                .body
                .ends_with(r#""serviceProxyHealthy":false}"#)
        );
        let none = HealthCheckService {
            local_endpoints: 0,
            ..svc
        };
        assert_eq!(answer_for(&none, true).status, 503);
    }
}
