//! What the model makes of one Service ([`ServiceModel`]), apart from the
//! parts that compute it, so that the rules between services
//! (`ownership`) can use it without an import circle.

use std::net::IpAddr;

use super::{
    problems::Skip,
    types::{NoDatapath, Seniority, ServiceName, ServicePort},
};

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
    /// `type: LoadBalancer` (the only type whose `healthCheckNodePort` is
    /// served, as kube-proxy serves it).
    pub load_balancer: bool,
    /// The service's age, which decides who owns a frontend several
    /// services claim (see [`Claims`](super::Claims)).
    pub seniority: Seniority,
    /// Its cluster IPs, sorted, whether or not it has a datapath: no
    /// external IP or LB IP may take one (see [`Claims`](super::Claims)).
    pub cluster_ips: Vec<IpAddr>,
}
