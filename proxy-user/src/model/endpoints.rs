//! EndpointSlices: the service a slice belongs to, and the backends its
//! endpoints give a service port.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    addr::parse_ip,
    problems::{Ctx, SkipReason},
    service::{CheckedPort, port_number},
    types::{Backend, DEFAULT_NAMESPACE, Family, NodeInfo, Protocol, ServiceName},
};

/// Label of an EndpointSlice naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The service a slice belongs to, from its namespace (`default` when it has
/// none) and its `kubernetes.io/service-name` label.
///
/// Returns `None` when the label is missing or empty.
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceName> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    if name.is_empty() {
        return None;
    }
    let namespace = slice
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(ServiceName::new(namespace, name.as_str()))
}

/// Which endpoint sets a service port uses, as kube-proxy's
/// `UsesClusterEndpoints` and `UsesLocalEndpoints` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Uses {
    /// The Cluster-policy set: `internalTrafficPolicy: Cluster`, or any
    /// external frontend (pods reach those cluster-wide even with
    /// `externalTrafficPolicy: Local`).
    pub(super) cluster: bool,
    /// The Local-policy set: `internalTrafficPolicy: Local`, or
    /// `externalTrafficPolicy: Local` with an external frontend.
    pub(super) local: bool,
}

/// One endpoint address of the slices, before the sets are chosen.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    /// Ready first (`false` sorts first), so that an endpoint listed twice
    /// keeps its best conditions whatever the slice order.
    not_ready: bool,
    backend: Backend,
    serving_terminating: bool,
    for_zones: BTreeSet<String>,
    for_nodes: BTreeSet<String>,
}

/// What the topology hints select on this node, as kube-proxy's
/// `topologyModeFromHints` decides it: node hints when every ready
/// endpoint has some and one names this node; else zone hints when every
/// ready endpoint has some and one names this node's zone; else none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    None,
    SameNode,
    SameZone,
}

fn topology(candidates: &[Candidate], node: &NodeInfo) -> Topology {
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| !c.not_ready).collect();
    if ready.is_empty() {
        return Topology::None;
    }
    let every = |hints: fn(&Candidate) -> &BTreeSet<String>, want: Option<&str>| {
        ready.iter().all(|c| !hints(c).is_empty())
            && want.is_some_and(|w| ready.iter().any(|c| hints(c).contains(w)))
    };
    let name = (!node.name.is_empty()).then_some(node.name.as_str());
    if every(|c| &c.for_nodes, name) {
        Topology::SameNode
    } else if every(|c| &c.for_zones, node.zone.as_deref()) {
        Topology::SameZone
    } else {
        Topology::None
    }
}

/// The backends of one service port in one family: the endpoints of the
/// sets it uses ([`Uses`]), each chosen as kube-proxy's
/// `CategorizeEndpoints` does.
///
/// - Cluster set: the ready endpoints the topology hints leave for this
///   node (all of them without usable hints, see [`topology`]); when there
///   is none, every serving and terminating endpoint.
/// - Local set: this node's ready endpoints; when there is none, this
///   node's serving and terminating ones (independently of the cluster
///   set, and without topology).
///
/// The result is their union, each backend marked with its sets.
pub(super) fn backends(
    slices: &[&EndpointSlice],
    family: Family,
    wanted: &CheckedPort<'_>,
    node: &NodeInfo,
    uses: Uses,
    ctx: &mut Ctx,
) -> Vec<Backend> {
    let candidates = candidates(slices, family, wanted, node, ctx);
    let mode = topology(&candidates, node);
    let fits = |c: &Candidate| match mode {
        Topology::None => true,
        Topology::SameNode => c.for_nodes.contains(node.name.as_str()),
        Topology::SameZone => node.zone.as_ref().is_some_and(|z| c.for_zones.contains(z)),
    };
    let pick = |keep: &dyn Fn(&Candidate) -> bool| -> BTreeSet<(IpAddr, u16)> {
        candidates
            .iter()
            .filter(|c| keep(c))
            .map(|c| (c.backend.address, c.backend.port))
            .collect()
    };
    let mut cluster = BTreeSet::new();
    if uses.cluster {
        cluster = pick(&|c| !c.not_ready && fits(c));
        if cluster.is_empty() {
            cluster = pick(&|c| c.serving_terminating);
        }
    }
    let mut local = BTreeSet::new();
    if uses.local {
        local = pick(&|c| c.backend.is_local && !c.not_ready);
        if local.is_empty() {
            local = pick(&|c| c.backend.is_local && c.serving_terminating);
        }
    }
    candidates
        .into_iter()
        .filter_map(|c| {
            let key = (c.backend.address, c.backend.port);
            let (for_cluster, for_local) = (cluster.contains(&key), local.contains(&key));
            (for_cluster || for_local).then_some(Backend {
                for_cluster,
                for_local,
                terminating: c.not_ready,
                ..c.backend
            })
        })
        .collect()
}

/// Every endpoint address of the family in the slices, once (the best
/// conditions of an address listed twice), sorted by address and port;
/// endpoints neither ready nor serving and terminating are left out.
fn candidates(
    slices: &[&EndpointSlice],
    family: Family,
    wanted: &CheckedPort<'_>,
    node: &NodeInfo,
    ctx: &mut Ctx,
) -> Vec<Candidate> {
    let mut by_key: BTreeMap<(IpAddr, u16), Candidate> = BTreeMap::new();
    for slice in slices {
        let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
        let labels = slice.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(super::service::HEADLESS_LABEL)) {
            continue;
        }
        let slice_family = match Family::from_k8s(&slice.address_type) {
            Some(slice_family) => slice_family,
            None if slice.address_type == "FQDN" => continue,
            None => {
                let reason = SkipReason::UnknownAddressType {
                    slice: slice_name.to_owned(),
                    address_type: slice.address_type.clone(),
                };
                ctx.skip(None, reason);
                continue;
            }
        };
        if slice_family != family {
            continue;
        }
        let Some(port) = slice_port(slice, slice_name, wanted, ctx) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !(is_ready || serving && terminating) {
                continue;
            }
            let hints = endpoint.hints.as_ref();
            let for_zones: BTreeSet<String> = hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect();
            let for_nodes: BTreeSet<String> = hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect();
            for text in &endpoint.addresses {
                let Some(address) = parse_ip(text) else {
                    let reason = SkipReason::InvalidEndpointAddress {
                        slice: slice_name.to_owned(),
                        address: text.clone(),
                    };
                    ctx.skip(None, reason);
                    continue;
                };
                if Family::of(&address) != family {
                    let reason = SkipReason::EndpointFamilyMismatch {
                        slice: slice_name.to_owned(),
                        address: text.clone(),
                        address_type: family,
                    };
                    ctx.skip(None, reason);
                    continue;
                }
                let candidate = Candidate {
                    not_ready: !is_ready,
                    backend: Backend {
                        address,
                        port,
                        node_name: endpoint.node_name.clone(),
                        is_local: !node.name.is_empty()
                            && endpoint.node_name.as_deref() == Some(node.name.as_str()),
                        terminating: !is_ready,
                        for_cluster: false,
                        for_local: false,
                    },
                    serving_terminating: serving && terminating,
                    for_zones: for_zones.clone(),
                    for_nodes: for_nodes.clone(),
                };
                // The same endpoint in two slices counts once; keep the
                // smallest so that the result does not depend on the order.
                by_key
                    .entry((address, port))
                    .and_modify(|kept| {
                        if candidate < *kept {
                            *kept = candidate.clone();
                        }
                    })
                    .or_insert(candidate);
            }
        }
    }
    by_key.into_values().collect()
}

/// The backend port a slice gives for a service port: its port with the same
/// name and protocol, else the numeric target port; `None` when neither.
fn slice_port(
    slice: &EndpointSlice,
    slice_name: &str,
    wanted: &CheckedPort<'_>,
    ctx: &mut Ctx,
) -> Option<u16> {
    let matching = slice.ports.iter().flatten().find(|port| {
        port.name.as_deref().unwrap_or_default() == wanted.name
            && Protocol::from_k8s(port.protocol.as_deref()) == Some(wanted.protocol)
    });
    // A matching port without a number means "all ports": use the target port.
    match matching.and_then(|port| port.port) {
        Some(value) => {
            let checked = port_number(value);
            if checked.is_none() {
                let reason = SkipReason::EndpointPortOutOfRange {
                    slice: slice_name.to_owned(),
                    port: value,
                };
                ctx.skip(Some(&wanted.label), reason);
            }
            checked
        }
        None => wanted.fallback_target,
    }
}
