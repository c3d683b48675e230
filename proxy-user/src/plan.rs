//! The plan: what the datapath should hold for one modelled Service, as
//! frontends with their policy in typed fields, family-neutral
//! ([`FrontendKey`] holds an `IpAddr`, as Katran's `VipKey` does).
//!
//! Model -> plan -> dataplane: the model says what a Service promises, the
//! plan turns that into frontends (which backends each scope gets, which
//! clients are admitted), and only the dataplane's map codec turns the
//! policy into flag bits. [`unsupported`] is the one answer to "can the
//! datapath serve this port", used by the plan, the health check and the
//! problem reports.

use std::net::IpAddr;

use crate::model::{Family, FrontendKind, Protocol, ServiceModel, ServicePort};

/// A frontend: address, port and protocol, of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// Service address (cluster IP, node address, external or LB IP).
    pub addr: IpAddr,
    /// Service port (or node port).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// A backend of a planned frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlannedBackend {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// On this node.
    pub local: bool,
    /// Terminating (serving only as a fallback when nothing is ready).
    pub terminating: bool,
}

/// Everything about one frontend, with its policy as typed fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFrontend {
    /// How traffic reaches it.
    pub kind: FrontendKind,
    /// A traffic policy Local applies to `backends`: they are this node's
    /// only, and none means drop (not reject).
    pub local_only: bool,
    /// What traffic from anywhere gets.
    pub backends: Vec<PlannedBackend>,
    /// What this node's pods get when it differs from `backends`
    /// (`externalTrafficPolicy: Local`: pods reach every backend).
    pub internal_backends: Option<Vec<PlannedBackend>>,
    /// `loadBalancerSourceRanges` as networks (address, prefix length);
    /// `None`: every client is admitted.
    pub source_ranges: Option<Vec<(IpAddr, u8)>>,
    /// Session affinity timeout, seconds (0: none).
    pub affinity_timeout: u32,
    /// Name for inspection (`namespace/name:port`).
    pub label: String,
}

/// What the datapath translates, by IP family: cluster IPs (the pod-facing
/// TC programs) and the node-side frontends (node ports, external and
/// load-balancer IPs: XDP on node interfaces). The agent, its maps and the
/// plan handle both families everywhere; a frontend the datapath does not
/// translate is reported and not programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translates {
    /// Families of cluster IPs.
    pub cluster_ips: &'static [Family],
    /// Families of node ports, external IPs and load-balancer IPs.
    pub node_side: &'static [Family],
}

impl Translates {
    /// Both families on every path (what this build's datapath does, see
    /// [`DATAPATH`]; a narrower one is for tests of how the agent reports
    /// what a datapath lacks, with [`plan_for`] and
    /// [`crate::sync::Syncer::with_datapath`]).
    pub const ALL: Self = Self {
        cluster_ips: &[Family::V4, Family::V6],
        node_side: &[Family::V4, Family::V6],
    };

    /// Whether a frontend of `kind` in `family` is translated.
    pub fn frontend(&self, family: Family, kind: FrontendKind) -> bool {
        if kind == FrontendKind::ClusterIp {
            self.cluster_ips.contains(&family)
        } else {
            self.node_side.contains(&family)
        }
    }
}

/// What the eBPF programs of this build translate: both families on
/// every path.
pub const DATAPATH: Translates = Translates::ALL;

/// Why the datapath cannot serve `port` when it translates `t`, if it
/// cannot serve any of its frontends.
pub fn unsupported_in(port: &ServicePort, t: &Translates) -> Option<&'static str> {
    if port.protocol == Protocol::Sctp {
        return Some("SCTP is not supported by the datapath yet");
    }
    if !t.cluster_ips.contains(&port.family) && !t.node_side.contains(&port.family) {
        return Some("IPv6 is not translated by the datapath yet");
    }
    None
}

/// Why the datapath cannot serve `port`, if it cannot.
pub fn unsupported(port: &ServicePort) -> Option<&'static str> {
    unsupported_in(port, &DATAPATH)
}

/// The node port `port` would have in its family if this node had a node
/// address of that family: the model makes node-port frontends on the
/// node's addresses of each family (`--nodeport-addresses`, or the node
/// interfaces' addresses), so a port of a family with a cluster IP and no
/// node-port frontend, whose twin of the other family has some, lacks a
/// node address of its family.
fn missing_node_port(m: &ServiceModel, port: &ServicePort) -> Option<u16> {
    let has = |p: &ServicePort, kind| p.frontends.iter().any(|f| f.kind == kind);
    if !has(port, FrontendKind::ClusterIp) || has(port, FrontendKind::NodePort) {
        return None;
    }
    m.ports
        .iter()
        .filter(|o| {
            o.family != port.family && o.port_name == port.port_name && o.protocol == port.protocol
        })
        .flat_map(|o| &o.frontends)
        .find(|f| f.kind == FrontendKind::NodePort)
        .map(|f| f.port)
}

/// The ports of `m` whose node-side frontends the datapath serves (what a
/// load balancer's health check counts).
pub fn served(m: &ServiceModel) -> impl Iterator<Item = &ServicePort> {
    m.ports
        .iter()
        .filter(|p| unsupported(p).is_none() && DATAPATH.node_side.contains(&p.family))
}

/// The frontends of a model, their backends and policies, and a problem
/// line for each port the datapath cannot serve and for each node port
/// a family lacks because this node has no node address of that family
/// (reported, not fatal: the family's other frontends are planned).
/// Frontends of both families are planned, each with backends of its own
/// family (the model keeps the families apart).
///
/// - Cluster IPs: all backends, or with `internalTrafficPolicy: Local`
///   only this node's, none meaning drop.
/// - Node ports, external IPs, load-balancer IPs: translated from outside
///   too. With `externalTrafficPolicy: Local` the frontend holds only this
///   node's backends (none: drop) and this node's pods get all of them
///   (kube-proxy sends pod traffic to external addresses cluster-wide).
/// - `loadBalancerSourceRanges` apply to load-balancer IPs.
pub fn plan(m: &ServiceModel) -> (Vec<(FrontendKey, PlannedFrontend)>, Vec<String>) {
    plan_for(m, &DATAPATH)
}

/// [`plan`] for a datapath that translates `t`.
pub fn plan_for(
    m: &ServiceModel,
    t: &Translates,
) -> (Vec<(FrontendKey, PlannedFrontend)>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for port in &m.ports {
        let named = |n: u16| {
            if port.port_name.is_empty() {
                n.to_string()
            } else {
                port.port_name.clone()
            }
        };
        let first = port.frontends.first().map_or(0, |f| f.port);
        if let Some(why) = unsupported_in(port, t) {
            problems.push(format!("service {} port {}: {why}", m.name, named(first)));
            continue;
        }
        // Not fatal: the family's other frontends are planned.
        if let Some(node_port) = missing_node_port(m, port) {
            let family = port.family.as_str();
            problems.push(format!(
                "service {} port {}: node port {node_port} is not served over {family}: this node has no {family} node address",
                m.name,
                named(first)
            ));
        }
        let planned = |b: &crate::model::Backend| PlannedBackend {
            addr: b.address,
            port: b.port,
            local: b.is_local,
            terminating: b.terminating,
        };
        // The Cluster and Local sets of the model (topology and fallbacks
        // already applied).
        let backends: Vec<PlannedBackend> = port
            .backends
            .iter()
            .filter(|b| b.for_cluster)
            .map(planned)
            .collect();
        let local: Vec<PlannedBackend> = port
            .backends
            .iter()
            .filter(|b| b.for_local)
            .map(planned)
            .collect();
        if port
            .frontends
            .iter()
            .any(|f| !t.frontend(port.family, f.kind))
        {
            let family = port.family.as_str();
            problems.push(format!(
                "service {} port {}: {family} node ports, external and load-balancer IPs are not translated by the datapath yet (its cluster IP is)",
                m.name,
                named(first)
            ));
        }
        for fe in port
            .frontends
            .iter()
            .filter(|f| t.frontend(port.family, f.kind))
        {
            let key = FrontendKey {
                addr: fe.address,
                port: fe.port,
                protocol: fe.protocol,
            };
            let mut p = PlannedFrontend {
                kind: fe.kind,
                local_only: false,
                backends: backends.clone(),
                internal_backends: None,
                source_ranges: None,
                affinity_timeout: port.affinity_timeout_s.unwrap_or(0),
                label: format!("{}:{}", m.name, named(fe.port)),
            };
            if fe.kind == FrontendKind::ClusterIp {
                if port.internal_traffic_local {
                    p.backends = local.clone();
                    p.local_only = true;
                }
            } else {
                if port.external_traffic_local {
                    p.internal_backends = Some(backends.clone());
                    p.backends = local.clone();
                    p.local_only = true;
                }
                if fe.kind == FrontendKind::LoadBalancer && !port.source_ranges.is_empty() {
                    // Ranges of the other family never match this port's
                    // clients (with none left, nobody is admitted).
                    let same: Vec<(IpAddr, u8)> = port
                        .source_ranges
                        .iter()
                        .filter(|(a, _)| Family::of(a) == port.family)
                        .copied()
                        .collect();
                    p.source_ranges = Some(same);
                }
            }
            out.push((key, p));
        }
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

    use super::*;

    /// What the planner does once the datapath translates IPv6.
    const BOTH: &Translates = &Translates::ALL;
    use crate::model::{NodeInfo, model_service};

    fn object<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
        serde_json::from_value(json).expect("a valid object")
    }

    /// A dual-stack LoadBalancer with `externalTrafficPolicy: Local`, source
    /// ranges of both families, an IPv4 load-balancer IP, and one ready
    /// endpoint per family on this node and one IPv4 endpoint elsewhere, on
    /// a node with `node_addresses`.
    fn dual_stack_lb(node_addresses: &[&str]) -> ServiceModel {
        let svc: Service = object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "198.19.0.10",
                "clusterIPs": ["198.19.0.10", "2001:db8:1::10"],
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "RequireDualStack",
                "externalTrafficPolicy": "Local",
                "loadBalancerSourceRanges": ["198.18.0.0/16", "2001:db8::/32"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                           "targetPort": 8080, "nodePort": 30080}]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.1.1"}]}}
        }));
        let slice = |name: &str, family: &str, endpoints: serde_json::Value| -> EndpointSlice {
            object(serde_json::json!({
                "metadata": {"name": name, "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": family,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints
            }))
        };
        let v4 = slice(
            "web-v4",
            "IPv4",
            serde_json::json!([
                {"addresses": ["198.18.1.1"], "nodeName": "node-1",
                 "conditions": {"ready": true}},
                {"addresses": ["198.18.2.1"], "nodeName": "node-2",
                 "conditions": {"ready": true}}
            ]),
        );
        let v6 = slice(
            "web-v6",
            "IPv6",
            serde_json::json!([
                {"addresses": ["2001:db8:2::1"], "nodeName": "node-1",
                 "conditions": {"ready": true}}
            ]),
        );
        let node = NodeInfo {
            zone: None,
            name: "node-1".into(),
            addresses: node_addresses
                .iter()
                .map(|a| a.parse().expect("an address"))
                .collect(),
        };
        model_service(&svc, &[&v4, &v6], &node)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    /// The planned frontends of `kind` in `family`.
    fn of(
        frontends: &[(FrontendKey, PlannedFrontend)],
        kind: FrontendKind,
        family: Family,
    ) -> Vec<(&FrontendKey, &PlannedFrontend)> {
        frontends
            .iter()
            .filter(|(k, p)| p.kind == kind && Family::of(&k.addr) == family)
            .map(|(k, p)| (k, p))
            .collect()
    }

    #[test]
    fn both_families_are_planned_with_their_policy_and_backends_of_their_family() {
        let m = dual_stack_lb(&["198.18.0.1", "2001:db8::1"]);
        let (frontends, problems) = plan_for(&m, BOTH);
        assert!(problems.is_empty(), "{problems:?}");
        for (k, p) in &frontends {
            let backends = p
                .backends
                .iter()
                .chain(p.internal_backends.iter().flatten());
            for b in backends {
                assert_eq!(Family::of(&b.addr), Family::of(&k.addr), "{k:?}: {b:?}");
            }
        }
        let cluster = of(&frontends, FrontendKind::ClusterIp, Family::V4);
        assert_eq!(cluster.len(), 1, "{frontends:?}");
        let (k, p) = cluster[0];
        assert_eq!(k.addr, ip("198.19.0.10"));
        assert!(!p.local_only);
        assert_eq!(p.backends.len(), 2);
        assert_eq!(p.internal_backends, None);
        assert_eq!(p.source_ranges, None);
        assert_eq!(p.label, "default/web:http");
        let lb = of(&frontends, FrontendKind::LoadBalancer, Family::V4);
        assert_eq!(lb.len(), 1);
        let (_, p) = lb[0];
        assert!(p.local_only);
        // Outside clients get this node's backend, its pods all of them.
        assert_eq!(p.backends.len(), 1);
        assert!(p.backends[0].local);
        assert_eq!(p.internal_backends.as_ref().map(Vec::len), Some(2));
        // Only the ranges of the port's family.
        assert_eq!(p.source_ranges, Some(vec![(ip("198.18.0.0"), 16)]));
        let np = of(&frontends, FrontendKind::NodePort, Family::V4);
        assert_eq!(np.len(), 1);
        assert_eq!(np[0].1.source_ranges, None, "ranges apply to LB IPs only");

        // IPv6: the cluster IP and the node port on the node's IPv6 address
        // (no IPv6 load-balancer IP), each with the IPv6 endpoint.
        let cluster = of(&frontends, FrontendKind::ClusterIp, Family::V6);
        assert_eq!(cluster.len(), 1, "{frontends:?}");
        let (k, p) = cluster[0];
        assert_eq!((k.addr, k.port), (ip("2001:db8:1::10"), 80));
        assert_eq!(
            p.backends,
            [PlannedBackend {
                addr: ip("2001:db8:2::1"),
                port: 8080,
                local: true,
                terminating: false,
            }]
        );
        assert_eq!(p.label, "default/web:http");
        let np = of(&frontends, FrontendKind::NodePort, Family::V6);
        assert_eq!(np.len(), 1);
        let (k, p) = np[0];
        assert_eq!((k.addr, k.port), (ip("2001:db8::1"), 30080));
        assert!(p.local_only);
        assert_eq!(p.backends.len(), 1);
        assert_eq!(p.internal_backends.as_ref().map(Vec::len), Some(1));
        assert!(of(&frontends, FrontendKind::LoadBalancer, Family::V6).is_empty());
        assert_eq!(frontends.len(), 5);
        // Both families' ports are served (health check counts).
        assert_eq!(served(&m).count(), 2);
    }

    #[test]
    fn a_family_without_a_node_address_is_reported_and_its_other_frontends_planned() {
        let m = dual_stack_lb(&["198.18.0.1"]);
        let (frontends, problems) = plan_for(&m, BOTH);
        assert_eq!(
            problems,
            [
                "service default/web port http: node port 30080 is not served over IPv6: this node has no IPv6 node address"
            ]
        );
        assert_eq!(of(&frontends, FrontendKind::NodePort, Family::V4).len(), 1);
        assert!(of(&frontends, FrontendKind::NodePort, Family::V6).is_empty());
        let cluster = of(&frontends, FrontendKind::ClusterIp, Family::V6);
        assert_eq!(cluster.len(), 1, "the IPv6 cluster IP is still planned");
        assert_eq!(cluster[0].1.backends.len(), 1);
        assert_eq!(frontends.len(), 4);
    }

    #[test]
    fn frontends_of_a_path_the_datapath_lacks_are_reported_and_the_rest_planned() {
        let m = dual_stack_lb(&["198.18.0.1", "2001:db8::1"]);
        let pods_only = Translates {
            cluster_ips: &[Family::V4, Family::V6],
            node_side: &[Family::V4],
        };
        let (frontends, problems) = plan_for(&m, &pods_only);
        assert_eq!(
            problems,
            [
                "service default/web port http: IPv6 node ports, external and load-balancer IPs are not translated by the datapath yet (its cluster IP is)"
            ]
        );
        assert_eq!(of(&frontends, FrontendKind::ClusterIp, Family::V6).len(), 1);
        assert!(of(&frontends, FrontendKind::NodePort, Family::V6).is_empty());
        assert_eq!(of(&frontends, FrontendKind::NodePort, Family::V4).len(), 1);
        assert_eq!(
            of(&frontends, FrontendKind::LoadBalancer, Family::V4).len(),
            1
        );
        // Nothing of IPv6 where the datapath translates no IPv6 at all.
        let v4_only = Translates {
            cluster_ips: &[Family::V4],
            node_side: &[Family::V4],
        };
        let (frontends, problems) = plan_for(&m, &v4_only);
        assert!(
            frontends
                .iter()
                .all(|(k, _)| Family::of(&k.addr) == Family::V4)
        );
        assert_eq!(
            problems,
            ["service default/web port http: IPv6 is not translated by the datapath yet"]
        );
    }
}
