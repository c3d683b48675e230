//! Frontends between services: which external addresses a service may not
//! take, and which of several services claiming one frontend owns it.
//!
//! A Service's `spec.externalIPs` (and, for whoever may write a Service's
//! status, its load-balancer IPs) are addresses its author chose, so a
//! service could claim another's address and take its traffic
//! (CVE-2020-8554). kube-proxy programs whatever it is given: in nftables
//! mode every external IP and LB IP becomes an element of the `service-ips`
//! map keyed like the cluster IPs, and when two services give one key, the
//! one written last (Go map order) wins. Here instead:
//!
//! - An external IP or LB IP equal to **any cluster IP** (of any service,
//!   its own included) or to an **address of this node** is refused:
//!   [`SkipReason::ExternalIsClusterIp`], [`SkipReason::ExternalIsNodeAddress`].
//! - With `--external-ip-cidrs` ([`ExternalPolicy::allowed_external_ips`]),
//!   an external IP outside those networks is refused
//!   ([`SkipReason::ExternalIpNotAllowed`]): the cluster-wide policy that the
//!   `externalip-webhook` (`--allowed-external-ip-cidrs`) enforces at
//!   admission, enforced here where traffic is translated. It applies to
//!   `spec.externalIPs` only, as the webhook's does: LB IPs come from the
//!   status, which only controllers write.
//! - When several services claim one frontend (address, port, protocol),
//!   the **oldest** owns it ([`Seniority`]: `metadata.creationTimestamp`,
//!   then `metadata.uid`, then namespace/name): the same answer on every
//!   node and after every restart, whatever order the services arrive in.
//!   The others are told ([`SkipReason::FrontendOwned`]). A refused claim
//!   owns nothing, so it cannot block an eligible younger one.
//!
//! [`Claims`] is the index of what every service claims, kept incrementally
//! by the syncer (so a change costs what it touches) and built whole by
//! [`model_cluster`](super::model_cluster).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::Service;

use super::{
    addr::{cidr_contains, parse_ip},
    problems::{Skip, SkipReason},
    service_model::ServiceModel,
    types::{FrontendKind, Protocol, Seniority, ServiceName},
};

/// The cluster-wide rules on external frontends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalPolicy {
    /// `--external-ip-cidrs` as (network, prefix length): when set, an
    /// external IP outside all of them is refused. `None`: any is allowed.
    pub allowed_external_ips: Option<Vec<(IpAddr, u8)>>,
    /// This node's addresses: no external IP or LB IP may take one.
    pub node_addresses: BTreeSet<IpAddr>,
}

impl ExternalPolicy {
    /// The policy that refuses this node's `addresses` and allows any other
    /// external IP.
    pub fn for_node(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            allowed_external_ips: None,
            node_addresses: addresses.into_iter().collect(),
        }
    }
}

/// A frontend as the datapath keys it: address, port, protocol.
type Key = (IpAddr, u16, Protocol);

/// What one service claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Held {
    seniority: Option<Seniority>,
    cluster_ips: BTreeSet<IpAddr>,
    frontends: BTreeSet<(Key, FrontendKind)>,
}

/// Every service's cluster IPs and frontends, indexed by address: what
/// [`Claims::resolve`] decides ownership and refusals from.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// Cluster IP -> the services holding it.
    cluster_ips: BTreeMap<IpAddr, BTreeSet<Seniority>>,
    /// Frontend -> its claimants, oldest first (a service twice when it
    /// claims the frontend with two kinds).
    frontends: BTreeMap<Key, BTreeSet<(Seniority, FrontendKind)>>,
    by_service: BTreeMap<ServiceName, Held>,
}

impl Claims {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the (unresolved) models of a whole cluster.
    pub fn of<'m>(models: impl IntoIterator<Item = &'m ServiceModel>) -> Self {
        let mut claims = Self::new();
        for m in models {
            claims.set(&m.name, Some(m));
        }
        claims
    }

    /// Records what `m` claims for service `name` (`None`: the service is
    /// gone), replacing what it claimed before. `m` is the model as
    /// [`model_service`](super::model_service) returns it, before
    /// [`Self::resolve`]. Returns the other services whose resolution may
    /// have changed: the claimants of every frontend whose claims changed,
    /// and the external claimants of every address that became or stopped
    /// being a cluster IP. Empty when nothing `name` claims changed.
    pub fn set(&mut self, name: &ServiceName, m: Option<&ServiceModel>) -> BTreeSet<ServiceName> {
        let new = m.map(held_of).unwrap_or_default();
        let old = self.by_service.remove(name).unwrap_or_default();
        if old == new {
            if new != Held::default() {
                self.by_service.insert(name.clone(), new);
            }
            return BTreeSet::new();
        }
        let mut keys: BTreeSet<Key> = BTreeSet::new();
        let mut addresses: BTreeSet<IpAddr> = BTreeSet::new();
        if old.seniority == new.seniority {
            keys.extend(
                old.frontends
                    .symmetric_difference(&new.frontends)
                    .map(|(k, _)| *k),
            );
            addresses.extend(old.cluster_ips.symmetric_difference(&new.cluster_ips));
        } else {
            // Recreated under the same name: every claim changed age.
            keys.extend(old.frontends.iter().chain(&new.frontends).map(|(k, _)| *k));
            addresses.extend(old.cluster_ips.iter().chain(&new.cluster_ips));
        }
        self.unindex(&old);
        self.index(&new);
        let mut touched = BTreeSet::new();
        for key in &keys {
            for (s, _) in self.frontends.get(key).into_iter().flatten() {
                touched.insert(s.name.clone());
            }
        }
        for address in &addresses {
            for (_, claimants) in self.at_address(*address) {
                for (s, kind) in claimants {
                    if is_external(*kind) {
                        touched.insert(s.name.clone());
                    }
                }
            }
        }
        touched.remove(name);
        if new != Held::default() {
            self.by_service.insert(name.clone(), new);
        }
        touched
    }

    /// Every service that claims a frontend on `address` or holds it as a
    /// cluster IP.
    pub fn services_at(&self, address: IpAddr) -> BTreeSet<ServiceName> {
        let mut out: BTreeSet<ServiceName> = self
            .at_address(address)
            .flat_map(|(_, c)| c.iter().map(|(s, _)| s.name.clone()))
            .collect();
        for s in self.cluster_ips.get(&address).into_iter().flatten() {
            out.insert(s.name.clone());
        }
        out
    }

    /// Why a claim of `address` as `kind` is refused whoever makes it, if
    /// it is.
    fn refusal(
        &self,
        kind: FrontendKind,
        address: IpAddr,
        policy: &ExternalPolicy,
    ) -> Option<SkipReason> {
        let what = match kind {
            FrontendKind::ExternalIp => "external IP",
            FrontendKind::LoadBalancer => "load-balancer IP",
            FrontendKind::ClusterIp | FrontendKind::NodePort => return None,
        };
        if let Some(owner) = self.cluster_ips.get(&address).and_then(|s| s.first()) {
            return Some(SkipReason::ExternalIsClusterIp {
                kind: what,
                address,
                owner: owner.name.clone(),
            });
        }
        if policy.node_addresses.contains(&address) {
            return Some(SkipReason::ExternalIsNodeAddress {
                kind: what,
                address,
            });
        }
        if kind == FrontendKind::ExternalIp
            && let Some(allowed) = &policy.allowed_external_ips
            && !allowed.iter().any(|c| cidr_contains(*c, address))
        {
            return Some(SkipReason::ExternalIpNotAllowed(address));
        }
        None
    }

    /// The owner of a frontend: its oldest claimant whose claim is not
    /// refused.
    pub fn owner(
        &self,
        address: IpAddr,
        port: u16,
        protocol: Protocol,
        policy: &ExternalPolicy,
    ) -> Option<&ServiceName> {
        self.frontends
            .get(&(address, port, protocol))?
            .iter()
            .find(|(_, kind)| self.refusal(*kind, address, policy).is_none())
            .map(|(s, _)| &s.name)
    }

    /// Applies the refusals and the ownership to the model of one service
    /// (as [`model_service`](super::model_service) returned it and
    /// [`Self::set`] recorded it): leaves out its refused frontends and the
    /// ones an older service owns, and records each in `m.skipped`. A port
    /// left without frontends is left out.
    pub fn resolve(&self, m: &mut ServiceModel, policy: &ExternalPolicy) {
        let mut skipped = Vec::new();
        for port in &mut m.ports {
            let label = if port.port_name.is_empty() {
                None
            } else {
                Some(port.port_name.clone())
            };
            port.frontends.retain(|fe| {
                if let Some(reason) = self.refusal(fe.kind, fe.address, policy) {
                    skipped.push(Skip {
                        service: m.name.clone(),
                        port: None,
                        reason,
                    });
                    return false;
                }
                match self.owner(fe.address, fe.port, fe.protocol, policy) {
                    Some(owner) if *owner != m.name => {
                        skipped.push(Skip {
                            service: m.name.clone(),
                            port: Some(label.clone().unwrap_or_else(|| fe.port.to_string())),
                            reason: SkipReason::FrontendOwned {
                                address: fe.address,
                                port: fe.port,
                                protocol: fe.protocol,
                                owner: owner.clone(),
                            },
                        });
                        false
                    }
                    _ => true,
                }
            });
        }
        m.ports.retain(|p| !p.frontends.is_empty());
        if !skipped.is_empty() {
            m.skipped.extend(skipped);
            m.skipped.sort();
            m.skipped.dedup();
        }
    }

    fn at_address(
        &self,
        address: IpAddr,
    ) -> impl Iterator<Item = (&Key, &BTreeSet<(Seniority, FrontendKind)>)> {
        self.frontends
            .range((address, 0, Protocol::Tcp)..=(address, u16::MAX, Protocol::Sctp))
    }

    fn index(&mut self, held: &Held) {
        let Some(seniority) = &held.seniority else {
            return;
        };
        for ip in &held.cluster_ips {
            self.cluster_ips
                .entry(*ip)
                .or_default()
                .insert(seniority.clone());
        }
        for (key, kind) in &held.frontends {
            self.frontends
                .entry(*key)
                .or_default()
                .insert((seniority.clone(), *kind));
        }
    }

    fn unindex(&mut self, held: &Held) {
        let Some(seniority) = &held.seniority else {
            return;
        };
        for ip in &held.cluster_ips {
            if let Some(set) = self.cluster_ips.get_mut(ip) {
                set.remove(seniority);
                if set.is_empty() {
                    self.cluster_ips.remove(ip);
                }
            }
        }
        for (key, kind) in &held.frontends {
            if let Some(set) = self.frontends.get_mut(key) {
                set.remove(&(seniority.clone(), *kind));
                if set.is_empty() {
                    self.frontends.remove(key);
                }
            }
        }
    }
}

fn is_external(kind: FrontendKind) -> bool {
    matches!(kind, FrontendKind::ExternalIp | FrontendKind::LoadBalancer)
}

fn held_of(m: &ServiceModel) -> Held {
    Held {
        seniority: Some(m.seniority.clone()),
        cluster_ips: m.cluster_ips.iter().copied().collect(),
        frontends: m
            .ports
            .iter()
            .flat_map(|p| &p.frontends)
            .map(|fe| ((fe.address, fe.port, fe.protocol), fe.kind))
            .collect(),
    }
}

/// The cluster IPs of a service as [`Claims`] counts them: every parseable,
/// specified address of `spec.clusterIPs` (or `spec.clusterIP`), whatever
/// else is wrong with the service (a service of another proxy, or one
/// without ports, still holds its cluster IP).
pub(super) fn cluster_ips_of(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let texts: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    let mut ips: Vec<IpAddr> = texts
        .into_iter()
        .filter_map(|t| parse_ip(t))
        .filter(|ip| !ip.is_unspecified())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}
