//! The model's vocabulary: service names, this node, protocols, families,
//! frontends, backends, the service ports the datapath programs, and the
//! defaults of an object that names no namespace or affinity timeout.

use std::{cmp::Ordering, fmt, net::IpAddr};

use k8s_openapi::{api::core::v1::Service, jiff::Timestamp};

/// Namespace of an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Session affinity timeout when `sessionAffinity: ClientIP` gives none (3 h).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Longest session affinity timeout the API server accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

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

/// This node: its name (matched against endpoints' `nodeName`), the
/// addresses its NodePorts listen on, and its zone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Kubernetes node name.
    pub name: String,
    /// Addresses where NodePort frontends are created (both families allowed).
    pub addresses: Vec<IpAddr>,
    /// The Node object's `topology.kubernetes.io/zone` label (what zone
    /// hints are matched against); `None` without a Node or without the
    /// label.
    pub zone: Option<String>,
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
    /// the set it is in has no ready endpoint.
    pub terminating: bool,
    /// In the set the Cluster traffic policy uses: the ready endpoints the
    /// topology hints leave for this node, else the serving and terminating
    /// ones.
    pub for_cluster: bool,
    /// In the set the Local traffic policy uses: this node's ready
    /// endpoints, else its serving and terminating ones.
    pub for_local: bool,
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
    /// Usable backends, sorted and deduplicated: the union of the Cluster
    /// set ([`Backend::for_cluster`]: the ready ones the topology hints
    /// leave for this node, or when there is none, the serving and
    /// terminating ones) and, when a Local policy applies, the Local set
    /// ([`Backend::for_local`]). Empty means "reject".
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
    /// Labelled `service.kubernetes.io/headless` (any value): kube-proxy's
    /// informers never see it.
    HeadlessLabel,
}

/// How old a Service is: what decides which of two services claiming one
/// frontend owns it. Orders oldest first: an earlier
/// `metadata.creationTimestamp`, then (same second) the smaller
/// `metadata.uid`, then namespace/name. A service without a timestamp (a
/// hand-written manifest) comes after every service with one, and one
/// without a uid after every one with one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Seniority {
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// `metadata.uid` (empty when absent).
    pub uid: String,
    /// The service.
    pub name: ServiceName,
}

impl Seniority {
    /// The seniority of a Service object.
    pub fn of(svc: &Service) -> Self {
        Self {
            created: svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
            uid: svc.metadata.uid.clone().unwrap_or_default(),
            name: ServiceName::of(svc),
        }
    }

    fn key(&self) -> (bool, Option<Timestamp>, bool, &str, &ServiceName) {
        (
            self.created.is_none(),
            self.created,
            self.uid.is_empty(),
            &self.uid,
            &self.name,
        )
    }
}

impl Ord for Seniority {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Seniority {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
