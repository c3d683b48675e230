//! EndpointSlices: the service a slice belongs to, and the backends its
//! endpoints give a service port.

use std::{collections::BTreeMap, net::IpAddr};

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

/// The usable backends of one service port in one family: the ready endpoints,
/// or when there is none, the serving and terminating ones.
pub(super) fn backends(
    slices: &[&EndpointSlice],
    family: Family,
    wanted: &CheckedPort<'_>,
    node: &NodeInfo,
    ctx: &mut Ctx,
) -> Vec<Backend> {
    let mut ready: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    let mut fallback: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    for slice in slices {
        let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
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
            let target = if is_ready {
                &mut ready
            } else if serving && terminating {
                &mut fallback
            } else {
                continue;
            };
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
                let backend = Backend {
                    address,
                    port,
                    node_name: endpoint.node_name.clone(),
                    is_local: !node.name.is_empty()
                        && endpoint.node_name.as_deref() == Some(node.name.as_str()),
                    terminating: !is_ready,
                };
                // The same endpoint in two slices counts once; keep the smallest
                // so that the result does not depend on the slice order.
                target
                    .entry((address, port))
                    .and_modify(|kept| {
                        if backend < *kept {
                            *kept = backend.clone();
                        }
                    })
                    .or_insert(backend);
            }
        }
    }
    let chosen = if ready.is_empty() { fallback } else { ready };
    chosen.into_values().collect()
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
