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

impl std::fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.addr.is_ipv6() {
            ("[", "]")
        } else {
            ("", "")
        };
        write!(
            f,
            "{}{}{}:{}/{}",
            sep.0,
            self.addr,
            sep.1,
            self.port,
            self.protocol.as_str()
        )
    }
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

/// Why the datapath cannot serve `port`, if it cannot.
pub fn unsupported(port: &ServicePort) -> Option<&'static str> {
    if port.protocol == Protocol::Sctp {
        return Some("SCTP is not supported by the datapath yet");
    }
    if port.family == Family::V6 {
        return Some("IPv6 is not supported by the datapath yet");
    }
    None
}

/// The ports of `m` the datapath serves.
pub fn served(m: &ServiceModel) -> impl Iterator<Item = &ServicePort> {
    m.ports.iter().filter(|p| unsupported(p).is_none())
}

/// The frontends of a model, their backends and policies, and a problem
/// line for each port the datapath cannot serve.
///
/// - Cluster IPs: all backends, or with `internalTrafficPolicy: Local`
///   only this node's, none meaning drop.
/// - Node ports, external IPs, load-balancer IPs: translated from outside
///   too. With `externalTrafficPolicy: Local` the frontend holds only this
///   node's backends (none: drop) and this node's pods get all of them
///   (kube-proxy sends pod traffic to external addresses cluster-wide).
/// - `loadBalancerSourceRanges` apply to load-balancer IPs.
pub fn plan(m: &ServiceModel) -> (Vec<(FrontendKey, PlannedFrontend)>, Vec<String>) {
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
        if let Some(why) = unsupported(port) {
            let first = port.frontends.first().map_or(0, |f| f.port);
            problems.push(format!("service {} port {}: {why}", m.name, named(first)));
            continue;
        }
        let backends: Vec<PlannedBackend> = port
            .backends
            .iter()
            .map(|b| PlannedBackend {
                addr: b.address,
                port: b.port,
                local: b.is_local,
                terminating: b.terminating,
            })
            .collect();
        let local: Vec<PlannedBackend> = backends.iter().filter(|b| b.local).copied().collect();
        for fe in &port.frontends {
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
