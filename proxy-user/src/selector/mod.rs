//! The selector step of the standalone mode: Services with a `spec.selector`
//! and the Pods of their namespace in, EndpointSlices out, as Kubernetes'
//! EndpointSlice controller derives them (pkg/controller/endpointslice and
//! pkg/controller/util/endpoint). Pure: no I/O, table-tested in `tests`.
//!
//! In a cluster the controller's slices are the truth and this step never
//! runs; with `--manifests`, a folder of Pods and Services works as it
//! would in a cluster. The derived slices carry the
//! `kubernetes.io/service-name` label like the controller's, so they join
//! their Service in the model exactly as real ones do, next to any
//! hand-written slice that names the Service.
//!
//! The rules, each as the controller has it:
//! - A Service without a selector (absent or empty) gets nothing, nor does
//!   an `ExternalName` one.
//! - A Pod of the Service's namespace is selected when its labels hold
//!   every selector pair.
//! - It is left out when it has no IP (`status.podIPs`, `status.podIP`) or
//!   has finished (`status.phase` `Succeeded` or `Failed`).
//! - Its endpoint is `serving` when its `Ready` condition is `True`,
//!   `terminating` when it has a `metadata.deletionTimestamp`, and `ready`
//!   when serving and not terminating, or always with
//!   `publishNotReadyAddresses`.
//! - One slice family per address family of the Service (`ipFamilies`, else
//!   those of its cluster IPs, else IPv4); a Pod gets the endpoint of the
//!   address of that family it has.
//! - Each service port resolves per Pod: a numeric `targetPort` as is, a
//!   named one to the Pod's container port of that name and protocol (a
//!   Pod without it is left out for that port only), none to the port.
//!   Endpoints with the same resolved ports share a slice, as the
//!   controller groups them.
//! - `nodeName` from `spec.nodeName`, `zone` from that Node's
//!   `topology.kubernetes.io/zone` label, `hostname` when the Service is
//!   headless and the Pod's `spec.subdomain` names it.

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Pod, Service, ServicePort},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::model::{DEFAULT_NAMESPACE, Family, SERVICE_NAME_LABEL, ServiceName, node_zone};

/// The `endpointslice.kubernetes.io/managed-by` value of derived slices.
pub const MANAGED_BY: &str = "svcnat-selector.svcnat.io";

/// Why a Pod of a Service's namespace gives it no endpoint (or none for
/// one port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeftOut {
    /// Its labels do not match the selector: the first pair it lacks.
    LabelsDiffer {
        /// Selector key.
        key: String,
        /// Selector value.
        value: String,
    },
    /// It has no IP yet.
    NoIp,
    /// It has finished (`Succeeded` or `Failed`).
    Finished(String),
    /// It has no container port of that name and protocol (for that
    /// service port only).
    NoNamedPort {
        /// The service port's name.
        port: String,
        /// The `targetPort` name it looked for.
        target: String,
    },
    /// It has no address of the family.
    NoAddressOfFamily(Family),
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LabelsDiffer { key, value } => write!(f, "labels differ (no {key}={value})"),
            Self::NoIp => f.write_str("no IP yet"),
            Self::Finished(phase) => write!(f, "finished ({phase})"),
            Self::NoNamedPort { port, target } => {
                write!(f, "no container port named {target} (service port {port})")
            }
            Self::NoAddressOfFamily(family) => write!(f, "no {} address", family.as_str()),
        }
    }
}

/// What the step made of one Service: the Pods it selected and, for the
/// other Pods of its namespace, why not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selected {
    /// Selected Pods, by name, with their endpoint conditions (ready,
    /// serving, terminating).
    pub pods: BTreeMap<String, (bool, bool, bool)>,
    /// Pods left out (or left out of a port), by name.
    pub left_out: BTreeMap<String, Vec<LeftOut>>,
}

/// The derived slices, and per Service with a selector what was selected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// EndpointSlices as the controller would write them (sorted by
    /// namespace and name).
    pub slices: Vec<EndpointSlice>,
    /// Per Service with a selector.
    pub services: BTreeMap<ServiceName, Selected>,
}

/// Derives the EndpointSlices of every Service with a selector from `pods`
/// (and the zones of `nodes`).
pub fn derive(services: &[Service], pods: &[Pod], nodes: &[Node]) -> Selection {
    let zones: BTreeMap<&str, String> = nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, node_zone(n)?)))
        .collect();
    let mut out = Selection::default();
    for svc in services {
        let Some(selector) = selector_of(svc) else {
            continue;
        };
        let name = ServiceName::of(svc);
        let mut selected = Selected::default();
        let namespace = namespace_of(&svc.metadata);
        let spec = svc.spec.as_ref();
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        let publish = spec
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        let families = families_of(svc);
        // Per family, endpoints grouped by their resolved ports.
        let mut groups: BTreeMap<(Family, Vec<PortKey>), Vec<Endpoint>> = BTreeMap::new();
        for pod in pods
            .iter()
            .filter(|p| namespace_of(&p.metadata) == namespace)
        {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            if let Some(why) = unmatched(&selector, pod) {
                selected.left_out.entry(pod_name).or_default().push(why);
                continue;
            }
            if let Some(why) = unusable(pod) {
                selected.left_out.entry(pod_name).or_default().push(why);
                continue;
            }
            let (ready, serving, terminating) = conditions(pod, publish);
            let mut resolved = Vec::new();
            for port in ports {
                match resolve_port(pod, port) {
                    Ok(p) => resolved.push(p),
                    Err(why) => selected
                        .left_out
                        .entry(pod_name.clone())
                        .or_default()
                        .push(why),
                }
            }
            resolved.sort();
            let mut used = false;
            for &family in &families {
                let Some(addr) = address_of(pod, family) else {
                    selected
                        .left_out
                        .entry(pod_name.clone())
                        .or_default()
                        .push(LeftOut::NoAddressOfFamily(family));
                    continue;
                };
                used = true;
                let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                let zone = node_name.as_deref().and_then(|n| zones.get(n)).cloned();
                let hostname = pod.spec.as_ref().and_then(|s| {
                    (headless && s.subdomain.as_deref() == name_of(&svc.metadata))
                        .then(|| s.hostname.clone())
                        .flatten()
                });
                groups
                    .entry((family, resolved.clone()))
                    .or_default()
                    .push(Endpoint {
                        addresses: vec![addr.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            serving: Some(serving),
                            terminating: Some(terminating),
                        }),
                        node_name,
                        zone,
                        hostname,
                        target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                            kind: Some("Pod".into()),
                            namespace: Some(namespace.to_owned()),
                            name: Some(pod_name.clone()),
                            uid: pod.metadata.uid.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
            }
            if used {
                selected
                    .pods
                    .insert(pod_name, (ready, serving, terminating));
            }
        }
        let mut index: BTreeMap<Family, usize> = BTreeMap::new();
        for ((family, ports), mut endpoints) in groups {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            let k = index.entry(family).or_default();
            out.slices.push(slice(&name, family, *k, &ports, endpoints));
            *k += 1;
        }
        out.services.insert(name, selected);
    }
    out.slices.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    out
}

/// A resolved port of an endpoint: (name, protocol, number).
type PortKey = (String, String, i32);

fn name_of(meta: &ObjectMeta) -> Option<&str> {
    meta.name.as_deref()
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

/// The selector, when the Service has a non-empty one and is not
/// `ExternalName` (the controller gives neither endpoints; an empty
/// selector is "no selector", as the API documents it).
fn selector_of(svc: &Service) -> Option<BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.clone().filter(|s| !s.is_empty())
}

/// The first selector pair the Pod's labels lack.
fn unmatched(selector: &BTreeMap<String, String>, pod: &Pod) -> Option<LeftOut> {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .find(|(k, v)| labels.and_then(|l| l.get(*k)) != Some(*v))
        .map(|(k, v)| LeftOut::LabelsDiffer {
            key: k.clone(),
            value: v.clone(),
        })
}

/// Why a selected Pod gives no endpoint at all (`ShouldPodBeInEndpoints`
/// with terminating Pods included, as the EndpointSlice controller calls
/// it).
fn unusable(pod: &Pod) -> Option<LeftOut> {
    let status = pod.status.as_ref();
    if let Some(phase) = status.and_then(|s| s.phase.as_deref())
        && matches!(phase, "Succeeded" | "Failed")
    {
        return Some(LeftOut::Finished(phase.to_owned()));
    }
    let has_ip = status.is_some_and(|s| {
        s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || s.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
    });
    (!has_ip).then_some(LeftOut::NoIp)
}

/// (ready, serving, terminating) of a Pod's endpoint.
fn conditions(pod: &Pod, publish_not_ready: bool) -> (bool, bool, bool) {
    let serving = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = publish_not_ready || (serving && !terminating);
    (ready, serving, terminating)
}

/// The Service's address families: `ipFamilies`, else those of its cluster
/// IPs, else IPv4.
fn families_of(svc: &Service) -> Vec<Family> {
    let spec = svc.spec.as_ref();
    let mut out: Vec<Family> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| Family::from_k8s(f))
        .collect();
    if out.is_empty() {
        out = spec
            .and_then(|s| {
                s.cluster_ips
                    .clone()
                    .or_else(|| s.cluster_ip.clone().map(|c| vec![c]))
            })
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| Family::of(&ip))
            .collect();
    }
    if out.is_empty() {
        out.push(Family::V4);
    }
    let mut seen = BTreeSet::new();
    out.retain(|f| seen.insert(*f));
    out
}

/// The Pod's address of `family` (the first one of `status.podIPs`, or
/// `status.podIP`).
fn address_of(pod: &Pod, family: Family) -> Option<IpAddr> {
    let status = pod.status.as_ref()?;
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    listed
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .find(|ip| Family::of(ip) == family)
}

/// A service port resolved for one Pod (`FindPort`).
fn resolve_port(pod: &Pod, port: &ServicePort) -> Result<PortKey, LeftOut> {
    let name = port.name.clone().unwrap_or_default();
    let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
    let number = match &port.target_port {
        None => port.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(target)) => {
            let found = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(target.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                });
            match found {
                Some(p) => p.container_port,
                // A numeric string is a number (the API allows "8080").
                None => match target.parse::<i32>() {
                    Ok(n) => n,
                    Err(_) => {
                        return Err(LeftOut::NoNamedPort {
                            port: if name.is_empty() {
                                port.port.to_string()
                            } else {
                                name
                            },
                            target: target.clone(),
                        });
                    }
                },
            }
        }
    };
    Ok((name, protocol, number))
}

/// The `k`-th derived slice of `family` for `svc`.
fn slice(
    svc: &ServiceName,
    family: Family,
    k: usize,
    ports: &[PortKey],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let family_tag = match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-selected-{family_tag}-{k}", svc.name)),
            namespace: Some(svc.namespace.clone()),
            labels: Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.to_owned(), svc.name.clone()),
                (
                    "endpointslice.kubernetes.io/managed-by".to_owned(),
                    MANAGED_BY.to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        address_type: family.as_str().to_owned(),
        endpoints,
        ports: Some(
            ports
                .iter()
                .map(|(name, protocol, number)| EndpointPort {
                    name: Some(name.clone()),
                    protocol: Some(protocol.clone()),
                    port: Some(*number),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}
