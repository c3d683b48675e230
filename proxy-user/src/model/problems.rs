//! What was left out of the model and why ([`SkipReason`], [`Skip`]), and the
//! record of it kept while a service is modelled.

use std::{fmt, net::IpAddr};

use super::types::{DEFAULT_AFFINITY_TIMEOUT_S, Family, Protocol, ServiceName};

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
    /// An external IP or load-balancer IP that is the cluster IP of a
    /// service (this one or another): refused, so that it cannot take over
    /// that service's traffic (CVE-2020-8554). That address, on every port.
    #[error("{kind} {address} is the cluster IP of service {owner}: refused")]
    ExternalIsClusterIp {
        /// `external IP` or `load-balancer IP`.
        kind: &'static str,
        /// The address.
        address: IpAddr,
        /// The (oldest) service holding it as its cluster IP.
        owner: ServiceName,
    },
    /// An external IP or load-balancer IP that is an address of this node:
    /// refused, so that it cannot take over the node's own ports. That
    /// address, on every port.
    #[error("{kind} {address} is an address of this node: refused")]
    ExternalIsNodeAddress {
        /// `external IP` or `load-balancer IP`.
        kind: &'static str,
        /// The address.
        address: IpAddr,
    },
    /// An external IP outside every network of `--external-ip-cidrs`. That
    /// address, on every port.
    #[error("external IP {0} is outside --external-ip-cidrs: refused")]
    ExternalIpNotAllowed(IpAddr),
    /// A frontend an older service claims too: the oldest claimant owns it
    /// (creation time, then uid). That frontend.
    #[error("frontend {address}:{port}/{protocol} belongs to the older service {owner}")]
    FrontendOwned {
        /// The frontend's address.
        address: IpAddr,
        /// Its port.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
        /// The service that owns it.
        owner: ServiceName,
    },
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
            Self::ExternalIsClusterIp { .. } => "external_is_cluster_ip",
            Self::ExternalIsNodeAddress { .. } => "external_is_node_address",
            Self::ExternalIpNotAllowed(_) => "external_ip_not_allowed",
            Self::FrontendOwned { .. } => "frontend_owned",
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

/// The service being modelled and what was skipped so far.
pub(super) struct Ctx {
    pub(super) name: ServiceName,
    pub(super) skipped: Vec<Skip>,
}

impl Ctx {
    pub(super) fn skip(&mut self, port: Option<&str>, reason: SkipReason) {
        self.skipped.push(Skip {
            service: self.name.clone(),
            port: port.map(str::to_owned),
            reason,
        });
    }
}
