//! The model: what the datapath must do for each Service.
//!
//! A pure function from (Services, EndpointSlices, this node) to the desired
//! frontends (address, port, protocol) and backends of every service port, one
//! [`ServicePort`] per port and IP family. All the Kubernetes semantics live
//! here; there is no I/O. The rules follow kube-proxy (1.28 and later):
//!
//! - **Types.** ClusterIP (default) gives one frontend per `spec.clusterIPs`
//!   entry (falling back to `spec.clusterIP`). NodePort adds one frontend per
//!   node address of the family, on `nodePort`. LoadBalancer adds the
//!   `status.loadBalancer.ingress[].ip` addresses on the service `port`
//!   (hostname-only entries and entries with `ipMode: Proxy` are ignored: the
//!   load balancer then proxies itself). `spec.externalIPs` are frontends for
//!   every type. ExternalName and headless services have no datapath
//!   ([`NoDatapath`]). A service labelled
//!   `service.kubernetes.io/service-proxy-name` belongs to another proxy;
//!   one labelled `service.kubernetes.io/headless` is not proxied either,
//!   nor is a slice with that label (kube-proxy's informers select
//!   neither label).
//! - **Dual stack.** Every family among the cluster IPs, external IPs and
//!   load-balancer IPs gets its own [`ServicePort`] with frontends and backends
//!   of that family only. External and load-balancer IPs are frontends of
//!   their own family, even one the service has no cluster IP of (backends then
//!   come from the slices of that family). NodePort frontends exist only in
//!   the families of the cluster IPs.
//! - **Policies** (`externalTrafficPolicy`, `internalTrafficPolicy`) are
//!   carried as flags, never applied here. `sessionAffinity: ClientIP` carries
//!   its timeout (default 10800 s; a value outside 1..=86400 is recorded and
//!   replaced by the default). An unparseable `loadBalancerSourceRanges` entry
//!   skips the whole service: it fails closed.
//! - **Backends.** For each EndpointSlice of the family, the slice port with the
//!   service port's name and protocol gives the backend port (this is how named
//!   target ports resolve); a slice without such a port falls back to a numeric
//!   `targetPort` (hand-written slices), else gives nothing for that port.
//!   Each port's backends are the sets its policies use, as kube-proxy's
//!   `CategorizeEndpoints` (pkg/proxy/topology.go) chooses them: the
//!   Cluster set holds the ready endpoints the topology hints leave for
//!   this node (`hints.forNodes` when every ready endpoint has one and one
//!   names this node, else `hints.forZones` likewise for this node's zone,
//!   else all), and the Local set (with a Local policy) this node's ready
//!   endpoints; each set falls back on its own to the serving and
//!   terminating endpoints when it has no ready one
//!   ([`Backend::terminating`]). Hints are what the EndpointSlice
//!   controller writes for `trafficDistribution` (`PreferSameNode`,
//!   `PreferSameZone`, `PreferClose`) and the
//!   `service.kubernetes.io/topology-mode: Auto` annotation; like
//!   kube-proxy, the model reads the hints, not those fields.
//! - **External frontends between services** ([`ownership`]): an external
//!   IP or LB IP equal to any cluster IP or to an address of this node is
//!   refused, `--external-ip-cidrs` limits external IPs, and a frontend
//!   several services claim belongs to the oldest. [`model_service`] models
//!   one service alone; [`Claims::resolve`] applies these rules, which need
//!   the whole cluster ([`model_cluster`] does both).
//! - **Bad input** never panics and never hides the rest of the cluster: what
//!   cannot be programmed is left out and recorded as a [`Skip`] with a
//!   [`SkipReason`] naming the bad value. See [`SkipReason`] for what each
//!   reason leaves out.
//!
//! Parts: `types` (names, protocols, families, frontends, backends, service
//! ports), `service` (what all ports of a service share, each port's checks,
//! its frontends, the policies), `endpoints` (slices: which service, which
//! backends), `problems` ([`SkipReason`], [`Skip`]) and [`addr`] (addresses
//! and CIDRs). This file runs them in order, port by port.

pub mod addr;
mod endpoints;
mod node;
mod ownership;
mod problems;
mod service;
mod service_cidr;
mod service_model;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::{
    core::v1::{Service, ServiceSpec},
    discovery::v1::EndpointSlice,
};

pub use addr::{parse_cidr, parse_ip};
pub use endpoints::{SERVICE_NAME_LABEL, slice_service};
pub use node::{TO_BE_DELETED_TAINT, ZONE_LABEL, node_eligible, node_zone};
pub use ownership::{Claims, ExternalPolicy};
pub use problems::{Skip, SkipReason};
pub use service::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
pub use service_cidr::{Cidr, ServiceCidrs, parse_service_cidr};
pub use service_model::ServiceModel;
pub use types::{
    Backend, DEFAULT_AFFINITY_TIMEOUT_S, DEFAULT_NAMESPACE, Family, Frontend, FrontendKind,
    MAX_AFFINITY_TIMEOUT_S, NoDatapath, NodeInfo, Protocol, Seniority, ServiceName, ServicePort,
};

use self::{
    endpoints::{Uses, backends},
    problems::Ctx,
    service::{Taken, check_port, frontends, read_shared},
};

/// Models a whole cluster: joins slices to services by namespace and
/// `kubernetes.io/service-name` label, runs [`model_service`] on each and
/// resolves the external frontends between them ([`Claims::resolve`]) with
/// the policy that refuses this node's addresses and allows any external IP.
///
/// Slices whose service is not in `services` are ignored (the caller keeps them
/// until it appears). Returns one model per service name; when two services
/// have the same name, the last one wins.
pub fn model_cluster(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeInfo,
) -> BTreeMap<ServiceName, ServiceModel> {
    let policy = ExternalPolicy::for_node(node.addresses.iter().copied());
    model_cluster_with(services, slices, node, &policy)
}

/// [`model_cluster`] under an explicit [`ExternalPolicy`].
pub fn model_cluster_with(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeInfo,
    policy: &ExternalPolicy,
) -> BTreeMap<ServiceName, ServiceModel> {
    let mut models = model_each(services, slices, node);
    let claims = Claims::of(models.values());
    for m in models.values_mut() {
        claims.resolve(m, policy);
    }
    models
}

fn model_each(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeInfo,
) -> BTreeMap<ServiceName, ServiceModel> {
    let mut by_service: HashMap<ServiceName, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if let Some(name) = slice_service(slice) {
            by_service.entry(name).or_default().push(slice);
        }
    }
    services
        .iter()
        .map(|svc| {
            let name = ServiceName::of(svc);
            let own = by_service.get(&name).map_or(&[][..], Vec::as_slice);
            (name, model_service(svc, own, node))
        })
        .collect()
}

/// Models one Service: its frontends and usable backends per port and family.
///
/// `slices` are the EndpointSlices whose `kubernetes.io/service-name` label
/// names this service in its namespace; the caller does the join (see
/// [`slice_service`]). Never fails: what cannot be programmed is recorded in
/// [`ServiceModel::skipped`] and the rest is returned. The rules between
/// services (who owns an external frontend) are not applied here: see
/// [`Claims::resolve`].
pub fn model_service(svc: &Service, slices: &[&EndpointSlice], node: &NodeInfo) -> ServiceModel {
    let mut ctx = Ctx {
        name: ServiceName::of(svc),
        skipped: Vec::new(),
    };
    let (ports, no_datapath) = model_ports(svc, slices, node, &mut ctx);
    let mut skipped = ctx.skipped;
    skipped.sort();
    skipped.dedup();
    let load_balancer = svc
        .spec
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"));
    ServiceModel {
        name: ctx.name,
        ports,
        skipped,
        no_datapath,
        load_balancer,
        seniority: Seniority::of(svc),
        cluster_ips: ownership::cluster_ips_of(svc),
    }
}

fn model_ports(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
    ctx: &mut Ctx,
) -> (Vec<ServicePort>, Option<NoDatapath>) {
    let empty_spec = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&empty_spec);
    let shared = match read_shared(svc, spec, node, ctx) {
        Ok(shared) => shared,
        Err(no_datapath) => return (Vec::new(), no_datapath),
    };
    let service_ports = spec.ports.as_deref().unwrap_or_default();
    if service_ports.is_empty() {
        ctx.skip(None, SkipReason::NoPorts);
        return (Vec::new(), None);
    }
    let mut out = Vec::new();
    let mut taken = Taken::default();
    for port in service_ports {
        let Some(checked) = check_port(port, &shared, &mut taken, ctx) else {
            continue;
        };
        for &family in &shared.families {
            let frontends = frontends(&shared, family, &checked);
            if frontends.is_empty() {
                continue;
            }
            let external = frontends.iter().any(|f| f.kind != FrontendKind::ClusterIp);
            let uses = Uses {
                cluster: !shared.internal_traffic_local || external,
                local: shared.internal_traffic_local || (shared.external_traffic_local && external),
            };
            out.push(ServicePort {
                service: ctx.name.clone(),
                port_name: checked.name.to_owned(),
                protocol: checked.protocol,
                family,
                frontends,
                backends: backends(slices, family, &checked, node, uses, ctx),
                external_traffic_local: shared.external_traffic_local,
                internal_traffic_local: shared.internal_traffic_local,
                affinity_timeout_s: shared.affinity_timeout_s,
                source_ranges: shared.source_ranges.clone(),
                health_check_node_port: shared.health_check_node_port,
            });
        }
    }
    (out, None)
}
