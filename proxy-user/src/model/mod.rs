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
//!   `service.kubernetes.io/service-proxy-name` belongs to another proxy.
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
//!   Ready endpoints are used; only when a port has none, the serving and
//!   terminating ones are ([`Backend::terminating`]).
//! - **Bad input** never panics and never hides the rest of the cluster: what
//!   cannot be programmed is left out and recorded as a [`Skip`] with a
//!   [`SkipReason`] naming the bad value. See [`SkipReason`] for what each
//!   reason leaves out.

pub mod addr;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServiceSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

pub use addr::{parse_cidr, parse_ip};

/// Label of an EndpointSlice naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label of a Service that another proxy implements (any value).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Session affinity timeout when `sessionAffinity: ClientIP` gives none (3 h).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Longest session affinity timeout the API server accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;
/// Namespace of an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A Service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceName {
    /// The name of `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The name of a Service object (namespace `default` when it has none).
    pub fn of(svc: &Service) -> Self {
        Self::new(
            svc.metadata
                .namespace
                .as_deref()
                .unwrap_or(DEFAULT_NAMESPACE),
            svc.metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// This node: its name (matched against endpoints' `nodeName`) and the
/// addresses its NodePorts listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Kubernetes node name.
    pub name: String,
    /// Addresses where NodePort frontends are created (both families allowed).
    pub addresses: Vec<IpAddr>,
}

/// A transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The IP protocol number: 6, 17 or 132.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => proxy_common::IPPROTO_TCP,
            Self::Udp => proxy_common::IPPROTO_UDP,
            Self::Sctp => proxy_common::IPPROTO_SCTP,
        }
    }

    /// The Kubernetes spelling: `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// Reads a Kubernetes `protocol` field: absent means TCP; returns `None`
    /// for an unknown value (the spelling is case-sensitive, as in the API).
    pub fn from_k8s(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(address: &IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The Kubernetes spelling (`IPv4`, `IPv6`), as in `ipFamilies` and an
    /// EndpointSlice's `addressType`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    /// Reads the Kubernetes spelling; `None` for anything else (`FQDN` too).
    pub fn from_k8s(value: &str) -> Option<Self> {
        match value {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How traffic reaches a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// A cluster IP on the service port.
    ClusterIp,
    /// A node address on the node port.
    NodePort,
    /// An `spec.externalIPs` address on the service port.
    ExternalIp,
    /// A `status.loadBalancer.ingress` address on the service port.
    LoadBalancer,
}

/// An address, port and protocol that traffic for a service arrives on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// Where the address comes from.
    pub kind: FrontendKind,
    /// Destination address.
    pub address: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// A pod address and port that a service port's traffic may go to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Endpoint address.
    pub address: IpAddr,
    /// Endpoint port (the resolved target port).
    pub port: u16,
    /// The endpoint's `nodeName`.
    pub node_name: Option<String>,
    /// The endpoint runs on this node (`nodeName` equals [`NodeInfo::name`]).
    pub is_local: bool,
    /// The endpoint is used as a fallback: it is serving and terminating, and
    /// the service port has no ready endpoint.
    pub terminating: bool,
}

/// One service port in one IP family: what the datapath programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The service.
    pub service: ServiceName,
    /// The port's name; empty when unnamed.
    pub port_name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// IP family of every frontend and backend below.
    pub family: Family,
    /// Frontends, sorted and deduplicated.
    pub frontends: Vec<Frontend>,
    /// Usable backends, sorted and deduplicated: the ready ones, or when there
    /// is none, the serving and terminating ones. Empty means "reject".
    pub backends: Vec<Backend>,
    /// `externalTrafficPolicy: Local`. Carried only: the datapath restricts
    /// node-port, external and load-balancer traffic to local backends.
    pub external_traffic_local: bool,
    /// `internalTrafficPolicy: Local`. Carried only: the datapath restricts
    /// cluster-IP traffic to local backends.
    pub internal_traffic_local: bool,
    /// `sessionAffinity: ClientIP`: the timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// `loadBalancerSourceRanges` as (network address, prefix length), sorted
    /// and deduplicated, of **both** families: a non-empty list means "only
    /// clients inside one of these ranges", so a list holding only IPv6 ranges
    /// admits no IPv4 client (fail closed, where kube-proxy would admit all).
    pub source_ranges: Vec<(IpAddr, u8)>,
    /// `healthCheckNodePort`, when `externalTrafficPolicy` is Local.
    pub health_check_node_port: Option<u16>,
}

/// Why a service has no datapath at all (not an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoDatapath {
    /// `type: ExternalName`: DNS only.
    ExternalName,
    /// `clusterIP: None`: DNS only.
    Headless,
    /// Labelled `service.kubernetes.io/service-proxy-name` (the value).
    OtherProxy(String),
}

/// Why something was left out of the model.
///
/// What is left out depends on the reason: the whole service (no ports), one
/// port, one address, or one endpoint; each variant says which.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum SkipReason {
    /// The service has no `metadata.name`. Whole service.
    #[error("the service has no name")]
    InvalidName,
    /// Unknown `spec.type`. Whole service.
    #[error("unknown service type {0:?}")]
    UnknownServiceType(String),
    /// Neither `spec.clusterIPs` nor `spec.clusterIP` is set (not headless
    /// either): kube-proxy skips such a service. Whole service.
    #[error("the service has no cluster IP")]
    MissingClusterIp,
    /// A cluster IP, external IP or load-balancer IP that is not an IP
    /// address (or is unspecified, `0.0.0.0` / `::`). That address.
    #[error("invalid IP address {0:?}")]
    InvalidAddress(String),
    /// A cluster IP whose family is not the one `spec.ipFamilies` gives at the
    /// same index. That cluster IP.
    #[error("cluster IP {address} is not {expected} as spec.ipFamilies says")]
    FamilyMismatch {
        /// The cluster IP.
        address: String,
        /// The family `spec.ipFamilies` gives.
        expected: Family,
    },
    /// A second cluster IP of the same family. That cluster IP.
    #[error("cluster IP {0} has the family of an earlier cluster IP")]
    DuplicateFamily(String),
    /// The service defines no port. Whole service.
    #[error("the service has no ports")]
    NoPorts,
    /// A port with an unknown `protocol`. That port.
    #[error("unknown protocol {0:?}")]
    UnknownProtocol(String),
    /// `port` outside 1..=65535. That port.
    #[error("port {0} is out of range 1..=65535")]
    PortOutOfRange(i32),
    /// `nodePort` set outside 1..=65535. That port.
    #[error("node port {0} is out of range 1..=65535")]
    NodePortOutOfRange(i32),
    /// A NodePort (or LoadBalancer that allocates node ports) service port
    /// without `nodePort`. Only the node-port frontends of that port.
    #[error("the port has no nodePort")]
    MissingNodePort,
    /// A numeric `targetPort` outside 1..=65535. Only the fallback for slices
    /// that name no port; slice ports still resolve.
    #[error("target port {0} is out of range 1..=65535")]
    TargetPortOutOfRange(i32),
    /// A second port with the same port number and protocol. That port.
    #[error("port {port}/{protocol} is already defined by an earlier port")]
    DuplicatePort {
        /// The port number.
        port: u16,
        /// The protocol.
        protocol: Protocol,
    },
    /// A second port with the same name. That port.
    #[error("port name {0:?} is already used by an earlier port")]
    DuplicatePortName(String),
    /// A second port with the same node port and protocol. That port.
    #[error("node port {node_port}/{protocol} is already used by an earlier port")]
    DuplicateNodePort {
        /// The node port.
        node_port: u16,
        /// The protocol.
        protocol: Protocol,
    },
    /// An unparseable `loadBalancerSourceRanges` entry. Whole service: the
    /// operator asked to restrict access, so the service fails closed rather
    /// than opening to everyone.
    #[error("invalid load balancer source range {0:?}")]
    InvalidSourceRange(String),
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` outside 1..=86400. The
    /// service keeps affinity with the default timeout (10800 s).
    #[error(
        "session affinity timeout {0} is out of range 1..=86400, using the default {DEFAULT_AFFINITY_TIMEOUT_S}"
    )]
    InvalidAffinityTimeout(i32),
    /// An unknown value of a policy field (`externalTrafficPolicy`,
    /// `internalTrafficPolicy`, `sessionAffinity`). The field takes its default
    /// (Cluster, Cluster, None).
    #[error("unknown {field} {value:?}, using the default")]
    InvalidPolicy {
        /// The field name as in the API.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// `healthCheckNodePort` set outside 1..=65535. Only the health check
    /// port.
    #[error("health check node port {0} is out of range 1..=65535")]
    HealthCheckNodePortOutOfRange(i32),
    /// An EndpointSlice with an `addressType` other than IPv4, IPv6 or FQDN.
    /// That slice.
    #[error("EndpointSlice {slice}: unknown address type {address_type:?}")]
    UnknownAddressType {
        /// The slice name.
        slice: String,
        /// The address type.
        address_type: String,
    },
    /// An endpoint address that is not an IP address. That endpoint address.
    #[error("EndpointSlice {slice}: invalid endpoint address {address:?}")]
    InvalidEndpointAddress {
        /// The slice name.
        slice: String,
        /// The address.
        address: String,
    },
    /// An endpoint address of the other family than the slice's
    /// `addressType`. That endpoint address.
    #[error("EndpointSlice {slice}: endpoint address {address} is not {address_type}")]
    EndpointFamilyMismatch {
        /// The slice name.
        slice: String,
        /// The address.
        address: String,
        /// The slice's address type.
        address_type: Family,
    },
    /// A slice port number outside 1..=65535. That slice, for that port.
    #[error("EndpointSlice {slice}: port {port} is out of range 1..=65535")]
    EndpointPortOutOfRange {
        /// The slice name.
        slice: String,
        /// The port number.
        port: i32,
    },
}

impl SkipReason {
    /// A short, stable snake_case name of the reason, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidName => "invalid_name",
            Self::UnknownServiceType(_) => "unknown_service_type",
            Self::MissingClusterIp => "missing_cluster_ip",
            Self::InvalidAddress(_) => "invalid_address",
            Self::FamilyMismatch { .. } => "family_mismatch",
            Self::DuplicateFamily(_) => "duplicate_family",
            Self::NoPorts => "no_ports",
            Self::UnknownProtocol(_) => "unknown_protocol",
            Self::PortOutOfRange(_) => "port_out_of_range",
            Self::NodePortOutOfRange(_) => "node_port_out_of_range",
            Self::MissingNodePort => "missing_node_port",
            Self::TargetPortOutOfRange(_) => "target_port_out_of_range",
            Self::DuplicatePort { .. } => "duplicate_port",
            Self::DuplicatePortName(_) => "duplicate_port_name",
            Self::DuplicateNodePort { .. } => "duplicate_node_port",
            Self::InvalidSourceRange(_) => "invalid_source_range",
            Self::InvalidAffinityTimeout(_) => "invalid_affinity_timeout",
            Self::InvalidPolicy { .. } => "invalid_policy",
            Self::HealthCheckNodePortOutOfRange(_) => "health_check_node_port_out_of_range",
            Self::UnknownAddressType { .. } => "unknown_address_type",
            Self::InvalidEndpointAddress { .. } => "invalid_endpoint_address",
            Self::EndpointFamilyMismatch { .. } => "endpoint_family_mismatch",
            Self::EndpointPortOutOfRange { .. } => "endpoint_port_out_of_range",
        }
    }
}

/// Something of a service that was left out of the model, and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Skip {
    /// The service.
    pub service: ServiceName,
    /// The service port concerned (its name, or its number as text when
    /// unnamed); `None` when the reason is about the service as a whole, one of
    /// its addresses, or an endpoint.
    pub port: Option<String>,
    /// Why.
    pub reason: SkipReason,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            Some(port) => write!(f, "service {} port {}: {}", self.service, port, self.reason),
            None => write!(f, "service {}: {}", self.service, self.reason),
        }
    }
}

/// Everything the datapath must do for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    /// The service.
    pub name: ServiceName,
    /// One entry per (service port, family), ports in spec order, IPv4 before
    /// IPv6 within a port.
    pub ports: Vec<ServicePort>,
    /// What was left out, sorted and deduplicated.
    pub skipped: Vec<Skip>,
    /// Set when the service has no datapath by design (then `ports` is empty).
    pub no_datapath: Option<NoDatapath>,
}

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

/// Models a whole cluster: joins slices to services by namespace and
/// `kubernetes.io/service-name` label and runs [`model_service`] on each.
///
/// Slices whose service is not in `services` are ignored (the caller keeps them
/// until it appears). Returns one model per service name; when two services
/// have the same name, the last one wins.
pub fn model_cluster(
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
/// [`ServiceModel::skipped`] and the rest is returned.
pub fn model_service(svc: &Service, slices: &[&EndpointSlice], node: &NodeInfo) -> ServiceModel {
    let mut ctx = Ctx {
        name: ServiceName::of(svc),
        skipped: Vec::new(),
    };
    let (ports, no_datapath) = model_ports(svc, slices, node, &mut ctx);
    let mut skipped = ctx.skipped;
    skipped.sort();
    skipped.dedup();
    ServiceModel {
        name: ctx.name,
        ports,
        skipped,
        no_datapath,
    }
}

/// The service being modelled and what was skipped so far.
struct Ctx {
    name: ServiceName,
    skipped: Vec<Skip>,
}

impl Ctx {
    fn skip(&mut self, port: Option<&str>, reason: SkipReason) {
        self.skipped.push(Skip {
            service: self.name.clone(),
            port: port.map(str::to_owned),
            reason,
        });
    }
}

/// The service type, once ExternalName is set apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// The per-service settings every port shares.
struct Shared<'a> {
    svc_type: ServiceType,
    allocate_lb_node_ports: bool,
    cluster_ips: BTreeMap<Family, IpAddr>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    families: BTreeSet<Family>,
    external_traffic_local: bool,
    internal_traffic_local: bool,
    affinity_timeout_s: Option<u32>,
    source_ranges: Vec<(IpAddr, u8)>,
    health_check_node_port: Option<u16>,
    node: &'a NodeInfo,
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
            out.push(ServicePort {
                service: ctx.name.clone(),
                port_name: checked.name.to_owned(),
                protocol: checked.protocol,
                family,
                frontends,
                backends: backends(slices, family, &checked, node, ctx),
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

/// Reads what all ports of a service share. `Err` when the service has no
/// ports to program: with the reason when that is by design, `None` when it
/// was skipped (recorded in `ctx`).
fn read_shared<'n>(
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
struct Taken<'a> {
    ports: BTreeSet<(u16, Protocol)>,
    names: BTreeSet<&'a str>,
    node_ports: BTreeSet<(u16, Protocol)>,
}

/// A service port that passed its checks.
struct CheckedPort<'a> {
    /// The port name, empty when unnamed.
    name: &'a str,
    /// The port name, or its number as text when unnamed (for [`Skip::port`]).
    label: String,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    /// Numeric target port for slices that name no matching port.
    fallback_target: Option<u16>,
}

/// Checks one `spec.ports` entry; `None` (recorded in `ctx`) when it must be
/// skipped.
fn check_port<'a>(
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
fn port_number(value: i32) -> Option<u16> {
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
fn frontends(shared: &Shared<'_>, family: Family, port: &CheckedPort<'_>) -> Vec<Frontend> {
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

/// The usable backends of one service port in one family: the ready endpoints,
/// or when there is none, the serving and terminating ones.
fn backends(
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
