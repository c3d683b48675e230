//! A Service's own settings: its type, cluster, external and load-balancer
//! IPs, families, traffic policies, session affinity and source ranges; the
//! checks of each port; and each port's frontends.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::core::v1::{Service, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    addr::{parse_cidr, parse_ip},
    problems::{Ctx, SkipReason},
    types::{
        DEFAULT_AFFINITY_TIMEOUT_S, Family, Frontend, FrontendKind, MAX_AFFINITY_TIMEOUT_S,
        NoDatapath, NodeInfo, Protocol,
    },
};

/// Label of a Service that another proxy implements (any value).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Label that hides a Service or an EndpointSlice from the proxy (any
/// value), as kube-proxy's informers select `!service.kubernetes.io/headless`.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The service type, once ExternalName is set apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// The per-service settings every port shares.
pub(super) struct Shared<'a> {
    svc_type: ServiceType,
    allocate_lb_node_ports: bool,
    cluster_ips: BTreeMap<Family, IpAddr>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    pub(super) families: BTreeSet<Family>,
    pub(super) external_traffic_local: bool,
    pub(super) internal_traffic_local: bool,
    pub(super) affinity_timeout_s: Option<u32>,
    pub(super) source_ranges: Vec<(IpAddr, u8)>,
    pub(super) health_check_node_port: Option<u16>,
    node: &'a NodeInfo,
}

/// Reads what all ports of a service share. `Err` when the service has no
/// ports to program: with the reason when that is by design, `None` when it
/// was skipped (recorded in `ctx`).
pub(super) fn read_shared<'n>(
    svc: &Service,
    spec: &ServiceSpec,
    node: &'n NodeInfo,
    ctx: &mut Ctx,
) -> Result<Shared<'n>, Option<NoDatapath>> {
    if ctx.name.name.is_empty() {
        ctx.skip(None, SkipReason::InvalidName);
        return Err(None);
    }
    let labels = svc.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|labels| labels.get(SERVICE_PROXY_NAME_LABEL)) {
        return Err(Some(NoDatapath::OtherProxy(proxy.clone())));
    }
    if labels.is_some_and(|labels| labels.contains_key(HEADLESS_LABEL)) {
        return Err(Some(NoDatapath::HeadlessLabel));
    }
    let svc_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Err(Some(NoDatapath::ExternalName)),
        Some(other) => {
            ctx.skip(None, SkipReason::UnknownServiceType(other.to_owned()));
            return Err(None);
        }
    };
    let raw_cluster_ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if spec.cluster_ip.as_deref() == Some("None") || raw_cluster_ips.first() == Some(&"None") {
        return Err(Some(NoDatapath::Headless));
    }
    if raw_cluster_ips.iter().all(|ip| ip.is_empty()) {
        ctx.skip(None, SkipReason::MissingClusterIp);
        return Err(None);
    }
    // Fail closed: a range that cannot be read must not open the service to all.
    let mut source_ranges = Vec::new();
    for range in spec.load_balancer_source_ranges.iter().flatten() {
        let Some(cidr) = parse_cidr(range) else {
            ctx.skip(None, SkipReason::InvalidSourceRange(range.clone()));
            return Err(None);
        };
        source_ranges.push(cidr);
    }
    source_ranges.sort();
    source_ranges.dedup();

    let cluster_ips = read_cluster_ips(&raw_cluster_ips, spec, ctx);
    let external_ips = read_addresses(spec.external_ips.iter().flatten(), ctx);
    let lb_ips = if svc_type == ServiceType::LoadBalancer {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|status| status.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        let ips = ingress.into_iter().flatten().filter_map(|ingress| {
            // ipMode Proxy: the load balancer delivers to the node itself.
            let proxied = ingress.ip_mode.as_deref() == Some("Proxy");
            ingress.ip.as_ref().filter(|ip| !ip.is_empty() && !proxied)
        });
        read_addresses(ips, ctx)
    } else {
        Vec::new()
    };
    let families: BTreeSet<Family> = cluster_ips
        .keys()
        .copied()
        .chain(external_ips.iter().chain(&lb_ips).map(Family::of))
        .collect();

    let external_traffic_local = read_policy(
        spec.external_traffic_policy.as_deref(),
        "externalTrafficPolicy",
        ctx,
    );
    let internal_traffic_local = read_policy(
        spec.internal_traffic_policy.as_deref(),
        "internalTrafficPolicy",
        ctx,
    );
    let health_check_node_port = match spec.health_check_node_port {
        Some(port) if external_traffic_local && port != 0 => {
            let checked = port_number(port);
            if checked.is_none() {
                ctx.skip(None, SkipReason::HealthCheckNodePortOutOfRange(port));
            }
            checked
        }
        _ => None,
    };
    Ok(Shared {
        svc_type,
        allocate_lb_node_ports: spec.allocate_load_balancer_node_ports != Some(false),
        cluster_ips,
        external_ips,
        lb_ips,
        families,
        external_traffic_local,
        internal_traffic_local,
        affinity_timeout_s: read_affinity(spec, ctx),
        source_ranges,
        health_check_node_port,
        node,
    })
}

/// Port numbers, names and node ports taken by the earlier ports of a service.
#[derive(Default)]
pub(super) struct Taken<'a> {
    ports: BTreeSet<(u16, Protocol)>,
    names: BTreeSet<&'a str>,
    node_ports: BTreeSet<(u16, Protocol)>,
}

/// A service port that passed its checks.
pub(super) struct CheckedPort<'a> {
    /// The port name, empty when unnamed.
    pub(super) name: &'a str,
    /// The port name, or its number as text when unnamed (for
    /// [`Skip::port`](super::problems::Skip::port)).
    pub(super) label: String,
    pub(super) protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    /// Numeric target port for slices that name no matching port.
    pub(super) fallback_target: Option<u16>,
}

/// Checks one `spec.ports` entry; `None` (recorded in `ctx`) when it must be
/// skipped.
pub(super) fn check_port<'a>(
    port: &'a k8s_openapi::api::core::v1::ServicePort,
    shared: &Shared<'_>,
    taken: &mut Taken<'a>,
    ctx: &mut Ctx,
) -> Option<CheckedPort<'a>> {
    let name = port.name.as_deref().unwrap_or_default();
    let label = if name.is_empty() {
        port.port.to_string()
    } else {
        name.to_owned()
    };
    let mut skip = |reason| {
        ctx.skip(Some(&label), reason);
        None
    };
    let Some(protocol) = Protocol::from_k8s(port.protocol.as_deref()) else {
        return skip(SkipReason::UnknownProtocol(
            port.protocol.clone().unwrap_or_default(),
        ));
    };
    let Some(number) = port_number(port.port) else {
        return skip(SkipReason::PortOutOfRange(port.port));
    };
    if !taken.ports.insert((number, protocol)) {
        return skip(SkipReason::DuplicatePort {
            port: number,
            protocol,
        });
    }
    if !taken.names.insert(name) {
        return skip(SkipReason::DuplicatePortName(name.to_owned()));
    }
    let node_port = match (shared.svc_type, port.node_port) {
        (ServiceType::ClusterIp, _) => None,
        (_, Some(value)) => {
            let Some(node_port) = port_number(value) else {
                return skip(SkipReason::NodePortOutOfRange(value));
            };
            if !taken.node_ports.insert((node_port, protocol)) {
                return skip(SkipReason::DuplicateNodePort {
                    node_port,
                    protocol,
                });
            }
            Some(node_port)
        }
        (svc_type, None) => {
            if svc_type == ServiceType::NodePort || shared.allocate_lb_node_ports {
                skip(SkipReason::MissingNodePort);
            }
            None
        }
    };
    // The API server defaults an absent targetPort to the port.
    let fallback_target = match &port.target_port {
        None => Some(number),
        Some(IntOrString::Int(value)) => {
            let checked = port_number(*value);
            if checked.is_none() {
                skip(SkipReason::TargetPortOutOfRange(*value));
            }
            checked
        }
        Some(IntOrString::String(_)) => None,
    };
    Some(CheckedPort {
        name,
        label,
        protocol,
        port: number,
        node_port,
        fallback_target,
    })
}

/// A port number in 1..=65535.
pub(super) fn port_number(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|port| *port != 0)
}

/// Parses a service address (cluster, external or load-balancer IP); records
/// and returns `None` for a bad one.
fn read_address(text: &str, ctx: &mut Ctx) -> Option<IpAddr> {
    match parse_ip(text) {
        Some(ip) if !ip.is_unspecified() => Some(ip),
        _ => {
            ctx.skip(None, SkipReason::InvalidAddress(text.to_owned()));
            None
        }
    }
}

/// Parses a list of service addresses; the good ones, sorted and deduplicated.
fn read_addresses<'s>(texts: impl Iterator<Item = &'s String>, ctx: &mut Ctx) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = texts.filter_map(|text| read_address(text, ctx)).collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The usable cluster IPs, at most one per family, checked against
/// `spec.ipFamilies`.
fn read_cluster_ips(raw: &[&str], spec: &ServiceSpec, ctx: &mut Ctx) -> BTreeMap<Family, IpAddr> {
    let declared = spec.ip_families.as_deref().unwrap_or_default();
    let mut by_family = BTreeMap::new();
    for (index, text) in raw.iter().enumerate() {
        let Some(ip) = read_address(text, ctx) else {
            continue;
        };
        let family = Family::of(&ip);
        let expected = declared
            .get(index)
            .and_then(|declared| Family::from_k8s(declared));
        if let Some(expected) = expected.filter(|expected| *expected != family) {
            let reason = SkipReason::FamilyMismatch {
                address: (*text).to_owned(),
                expected,
            };
            ctx.skip(None, reason);
            continue;
        }
        if by_family.contains_key(&family) {
            ctx.skip(None, SkipReason::DuplicateFamily((*text).to_owned()));
            continue;
        }
        by_family.insert(family, ip);
    }
    by_family
}

/// Reads a traffic policy: `true` for Local; an unknown value is recorded and
/// read as Cluster.
fn read_policy(value: Option<&str>, field: &'static str, ctx: &mut Ctx) -> bool {
    match value {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            let value = other.to_owned();
            ctx.skip(None, SkipReason::InvalidPolicy { field, value });
            false
        }
    }
}

/// Reads session affinity: the timeout with ClientIP, `None` without.
fn read_affinity(spec: &ServiceSpec, ctx: &mut Ctx) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_S),
                Some(seconds) => match u32::try_from(seconds) {
                    Ok(ok) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&ok) => Some(ok),
                    _ => {
                        ctx.skip(None, SkipReason::InvalidAffinityTimeout(seconds));
                        Some(DEFAULT_AFFINITY_TIMEOUT_S)
                    }
                },
            }
        }
        Some(other) => {
            let value = other.to_owned();
            let field = "sessionAffinity";
            ctx.skip(None, SkipReason::InvalidPolicy { field, value });
            None
        }
    }
}

/// The frontends of one service port in one family, sorted and deduplicated.
pub(super) fn frontends(
    shared: &Shared<'_>,
    family: Family,
    port: &CheckedPort<'_>,
) -> Vec<Frontend> {
    let of_family = |ip: &&IpAddr| Family::of(ip) == family;
    let frontend = |kind, address, number| Frontend {
        kind,
        address,
        port: number,
        protocol: port.protocol,
    };
    let mut out = Vec::new();
    if let Some(ip) = shared.cluster_ips.get(&family) {
        out.push(frontend(FrontendKind::ClusterIp, *ip, port.port));
        if let Some(node_port) = port.node_port {
            for ip in shared.node.addresses.iter().filter(of_family) {
                out.push(frontend(FrontendKind::NodePort, *ip, node_port));
            }
        }
    }
    for ip in shared.external_ips.iter().filter(of_family) {
        out.push(frontend(FrontendKind::ExternalIp, *ip, port.port));
    }
    for ip in shared.lb_ips.iter().filter(of_family) {
        out.push(frontend(FrontendKind::LoadBalancer, *ip, port.port));
    }
    out.sort();
    out.dedup();
    out
}
