//! Sync: keeps the maps equal to the model of what the sources say.
//!
//! The [`Syncer`] keeps every Service and EndpointSlice it was told about,
//! this node's Node (its zone, whether it is being drained), and the set of
//! services whose inputs changed since the last pass ("dirty"; a new zone
//! makes them all dirty: topology hints are matched against it).
//! A pass models only the dirty services and applies only the difference
//! through the dataplane, so its cost follows the change, not the cluster.
//! [`run`] feeds it from the sources' channel, coalescing bursts into one
//! pass, and repairs drift periodically.
//!
//! A pass also works out which service each `healthCheckNodePort` answers
//! for ([`Syncer::health_checks`], see [`crate::healthcheck`]), and writes
//! the service CIDRs when they changed ([`model::ServiceCidrs`]: the
//! ServiceCIDR objects', else `--service-cidr`).
//!
//! A frontend several services claim belongs to the oldest, and external
//! IPs and LB IPs never take a cluster IP or a node address
//! ([`model::Claims`]): the same on every node and after every restart.
//! When a service's claims change, the other claimants of what changed are
//! synced in the same pass, so a frontend moves to its new owner at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use tokio::sync::mpsc;

use crate::{
    dataplane::{Dataplane, DataplaneError, Frontend, FrontendSpec, Upsert},
    healthcheck::{self, HealthChecks},
    model::{
        self, Cidr, Claims, ExternalPolicy, NodeInfo, Protocol, ServiceCidrs, ServiceModel,
        ServiceName,
    },
    plan,
    sources::{Kind, Object, SourceEvent},
};

type ObjKey = (String, String);

fn obj_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    (
        meta.namespace
            .clone()
            .unwrap_or_else(|| model::DEFAULT_NAMESPACE.to_string()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Counters of the sync engine (read by metrics and tests).
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Passes run.
    pub passes: AtomicU64,
    /// Frontends created or updated in the maps.
    pub upserts: AtomicU64,
    /// Frontends deleted from the maps.
    pub deletes: AtomicU64,
    /// Frontends or ports left out (bad input, capacity, unsupported).
    pub skipped: AtomicU64,
    /// Map entries rewritten by drift repair.
    pub repaired: AtomicU64,
    /// Source errors reported (the last good state stayed in force).
    pub source_errors: AtomicU64,
    /// UDP flows of removed backends whose conntrack entries were cleared.
    pub udp_flows_cleared: AtomicU64,
    /// Connected UDP sockets of the node closed because their backend left
    /// (the socket hooks' stale-UDP sweep).
    pub udp_sockets_closed: AtomicU64,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Services modelled.
    pub services: usize,
    /// Frontends created or changed.
    pub upserted: usize,
    /// Frontends whose maps already matched.
    pub unchanged: usize,
    /// Frontends deleted.
    pub deleted: usize,
    /// UDP flows of removed backends cleared from conntrack.
    pub udp_flows_cleared: usize,
    /// Connected UDP sockets of the node closed for the same reason.
    pub udp_sockets_closed: usize,
    /// Problems, one line each (`namespace/name port: reason`). Health check
    /// port conflicts appear in the pass that finds them (or finds them
    /// changed).
    pub skipped: Vec<String>,
}

/// The object store, the dirty set, and what each service owns in the maps.
pub struct Syncer {
    node: NodeInfo,
    /// This node's Node object, when a source has one.
    node_object: Option<Node>,
    /// Load balancers may send to this node ([`model::node_eligible`]);
    /// true until a Node says otherwise, as in kube-proxy.
    node_eligible: bool,
    services: BTreeMap<ObjKey, Service>,
    slices: BTreeMap<ObjKey, EndpointSlice>,
    slices_of: BTreeMap<ServiceName, BTreeSet<ObjKey>>,
    dirty: BTreeSet<ServiceName>,
    /// When each dirty service first changed (for programming latency).
    dirty_since: BTreeMap<ServiceName, Instant>,
    owned: BTreeMap<ServiceName, BTreeSet<Frontend>>,
    /// Which service's entry the maps hold for each frontend.
    owner: BTreeMap<Frontend, ServiceName>,
    /// What every service claims (who should own each frontend).
    claims: Claims,
    /// The rules on external IPs and LB IPs.
    policy: ExternalPolicy,
    /// Last problems reported per service, to log each once until it changes.
    reported: BTreeMap<ServiceName, Vec<String>>,
    resynced: BTreeSet<Kind>,
    first_pass_done: bool,
    /// What each service needs of the health check responder.
    hc_needs: BTreeMap<ServiceName, healthcheck::Need>,
    /// Health check ports as assigned at the end of the last pass.
    health_checks: HealthChecks,
    /// Health check port conflicts reported, per service left out.
    hc_reported: BTreeMap<ServiceName, String>,
    stats: Arc<SyncStats>,
    /// Programming latencies (first change seen -> maps written) of the last pass.
    pub last_latencies: Vec<Duration>,
    /// How long the last pass took.
    pub last_pass_duration: Duration,
    /// What the datapath translates (see [`plan::DATAPATH`]).
    datapath: plan::Translates,
    /// The service CIDRs (ServiceCIDR objects, `--service-cidr`), and
    /// whether they changed since the last pass wrote them.
    cidrs: ServiceCidrs,
    cidrs_dirty: bool,
}

impl Syncer {
    /// This syncer, planning for a datapath that translates `t` (tests of
    /// the IPv6 programming path; the agent keeps the default,
    /// [`plan::DATAPATH`]).
    pub fn with_datapath(mut self, t: plan::Translates) -> Self {
        self.datapath = t;
        self
    }

    /// This syncer with another policy on external IPs and LB IPs (the
    /// default refuses the node's NodePort addresses and allows any other
    /// external IP).
    pub fn with_external_policy(mut self, policy: ExternalPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// This syncer with `configured` (`--service-cidr`) as the service
    /// CIDRs while no ServiceCIDR object gives any.
    pub fn with_service_cidrs(mut self, configured: Vec<Cidr>) -> Self {
        self.cidrs = ServiceCidrs::new(configured);
        self.cidrs_dirty = true;
        self
    }

    /// A syncer for this node.
    pub fn new(node: NodeInfo, stats: Arc<SyncStats>) -> Self {
        let policy = ExternalPolicy::for_node(node.addresses.iter().copied());
        Self {
            node,
            node_object: None,
            node_eligible: true,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slices_of: BTreeMap::new(),
            dirty: BTreeSet::new(),
            dirty_since: BTreeMap::new(),
            owned: BTreeMap::new(),
            owner: BTreeMap::new(),
            claims: Claims::new(),
            policy,
            reported: BTreeMap::new(),
            resynced: BTreeSet::new(),
            first_pass_done: false,
            hc_needs: BTreeMap::new(),
            health_checks: HealthChecks::new(),
            hc_reported: BTreeMap::new(),
            stats,
            last_latencies: Vec::new(),
            last_pass_duration: Duration::ZERO,
            datapath: plan::DATAPATH,
            cidrs: ServiceCidrs::default(),
            cidrs_dirty: true,
        }
    }

    /// Whether every kind has been listed completely at least once: before
    /// that a pass would program a half-empty cluster (or, before the Node,
    /// ignore the zone its topology hints name).
    pub fn ready(&self) -> bool {
        [
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Node,
            Kind::ServiceCidr,
        ]
        .iter()
        .all(|k| self.resynced.contains(k))
    }

    /// Whether load balancers may send to this node: no Node object says it
    /// is being deleted or carries the autoscaler's deletion taint
    /// (`/healthz`, KEP-3836).
    pub fn node_eligible(&self) -> bool {
        self.node_eligible
    }

    /// This node as the model sees it (its zone from the Node object).
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Takes this node's Node (`None`: it is gone): its zone, and whether
    /// it is eligible. A new zone makes every service dirty.
    fn set_node(&mut self, node: Option<Node>, now: Instant) {
        if self.node_object == node {
            return;
        }
        // A deleted Node is not eligible either: kube-proxy's SyncNode sees
        // its deletion.
        self.node_eligible = node.as_ref().is_some_and(model::node_eligible);
        let zone = node.as_ref().and_then(model::node_zone);
        if zone != self.node.zone {
            tracing::info!(node = %self.node.name, zone = ?zone, "this node's zone changed: topology hints are matched against it");
            self.node.zone = zone;
            self.mark_all(now);
        }
        self.node_object = node;
    }

    /// Whether `node` is this node's.
    fn ours(&self, node: &Node) -> bool {
        node.metadata.name.as_deref() == Some(self.node.name.as_str())
    }

    /// The health check ports and the service each answers for, as of the
    /// last pass: what the responder should serve.
    pub fn health_checks(&self) -> &HealthChecks {
        &self.health_checks
    }

    /// Whether a pass has work to do.
    pub fn has_work(&self) -> bool {
        self.ready() && (!self.dirty.is_empty() || !self.first_pass_done || self.cidrs_dirty)
    }

    fn mark(&mut self, name: ServiceName, at: Instant) {
        self.dirty_since.entry(name.clone()).or_insert(at);
        self.dirty.insert(name);
    }

    /// Takes one event into the store and marks the services it touches.
    pub fn handle(&mut self, ev: SourceEvent) {
        let now = Instant::now();
        match ev {
            SourceEvent::Apply(obj) => self.apply(obj, now),
            SourceEvent::Delete {
                kind,
                namespace,
                name,
            } => self.delete(kind, (namespace, name), now),
            SourceEvent::Resync { kind, objects } => {
                let mut seen = BTreeSet::new();
                for obj in objects {
                    match &obj {
                        Object::Service(s) if kind == Kind::Service => {
                            seen.insert(obj_key(&s.metadata));
                        }
                        Object::EndpointSlice(s) if kind == Kind::EndpointSlice => {
                            seen.insert(obj_key(&s.metadata));
                        }
                        Object::Node(n) if kind == Kind::Node => {
                            if self.ours(n) {
                                seen.insert(obj_key(&n.metadata));
                            }
                        }
                        Object::ServiceCidr(c) if kind == Kind::ServiceCidr => {
                            seen.insert(obj_key(&c.metadata));
                        }
                        _ => continue,
                    }
                    self.apply(obj, now);
                }
                let gone: Vec<ObjKey> = match kind {
                    Kind::Service => self
                        .services
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect(),
                    Kind::EndpointSlice => self
                        .slices
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect(),
                    Kind::Node => self
                        .node_object
                        .as_ref()
                        .map(|n| obj_key(&n.metadata))
                        .filter(|k| !seen.contains(k))
                        .into_iter()
                        .collect(),
                    Kind::Pod => Vec::new(),
                    // Cluster-scoped: keyed by name only.
                    Kind::ServiceCidr => self
                        .cidrs
                        .names()
                        .filter(|n| !seen.iter().any(|(_, s)| s == n))
                        .map(|n| (String::new(), n.to_owned()))
                        .collect(),
                };
                for k in gone {
                    self.delete(kind, k, now);
                }
                self.resynced.insert(kind);
            }
            SourceEvent::Error(msg) => {
                self.stats.source_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("source error, keeping the last good state: {msg}");
            }
            SourceEvent::NodeAddresses(addresses) => self.set_node_addresses(addresses, now),
        }
    }

    /// Takes this node's NodePort addresses (sorted or not): node ports are
    /// served on them, and no external IP or LB IP may take one. A change
    /// makes every service dirty; the same set costs nothing.
    fn set_node_addresses(&mut self, mut addresses: Vec<std::net::IpAddr>, now: Instant) {
        addresses.sort();
        addresses.dedup();
        if addresses == self.node.addresses {
            return;
        }
        tracing::info!(node = %self.node.name, addresses = ?addresses, "this node's addresses changed: node ports follow");
        self.policy.node_addresses = addresses.iter().copied().collect();
        self.node.addresses = addresses;
        self.mark_all(now);
    }

    /// Marks every service dirty: something every plan reads changed.
    fn mark_all(&mut self, now: Instant) {
        let all: Vec<ServiceName> = self
            .services
            .keys()
            .map(|(ns, n)| ServiceName::new(ns.clone(), n.clone()))
            .collect();
        for name in all {
            self.mark(name, now);
        }
    }

    fn apply(&mut self, obj: Object, now: Instant) {
        match obj {
            Object::Service(svc) => {
                let key = obj_key(&svc.metadata);
                if self.services.get(&key) == Some(&*svc) {
                    return;
                }
                self.mark(ServiceName::new(key.0.clone(), key.1.clone()), now);
                self.services.insert(key, *svc);
            }
            Object::EndpointSlice(slice) => {
                let key = obj_key(&slice.metadata);
                if self.slices.get(&key) == Some(&*slice) {
                    return;
                }
                self.unlink_slice(&key, now);
                if let Some(name) = model::slice_service(&slice) {
                    self.slices_of
                        .entry(name.clone())
                        .or_default()
                        .insert(key.clone());
                    self.mark(name, now);
                }
                self.slices.insert(key, *slice);
            }
            Object::Node(node) => {
                if self.ours(&node) {
                    self.set_node(Some(*node), now);
                }
            }
            // The manifests source turns Pods into slices; the API's
            // slices come from the EndpointSlice controller.
            Object::Pod(_) => {}
            Object::ServiceCidr(c) => {
                if let Some(problems) = self.cidrs.apply(&c) {
                    for p in problems {
                        tracing::warn!("skipped: {p}");
                        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    self.cidrs_dirty = true;
                }
            }
        }
    }

    fn unlink_slice(&mut self, key: &ObjKey, now: Instant) {
        let Some(old) = self.slices.get(key) else {
            return;
        };
        if let Some(name) = model::slice_service(old) {
            if let Some(set) = self.slices_of.get_mut(&name) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_of.remove(&name);
                }
            }
            self.mark(name, now);
        }
    }

    fn delete(&mut self, kind: Kind, key: ObjKey, now: Instant) {
        match kind {
            Kind::Service => {
                if self.services.remove(&key).is_some() {
                    self.mark(ServiceName::new(key.0, key.1), now);
                }
            }
            Kind::EndpointSlice => {
                self.unlink_slice(&key, now);
                self.slices.remove(&key);
            }
            Kind::Node => {
                if key.1 == self.node.name && self.node_object.is_some() {
                    self.set_node(None, now);
                }
            }
            Kind::Pod => {}
            Kind::ServiceCidr => {
                if self.cidrs.delete(&key.1) {
                    self.cidrs_dirty = true;
                }
            }
        }
    }

    /// Writes the service CIDRs when they changed, after the pass's
    /// frontends (a new Service on an address the CIDRs cover is
    /// programmed first). On failure they stay to write at the next pass.
    fn sync_service_cidrs(&mut self, dp: &mut Dataplane, report: &mut PassReport) {
        if !self.cidrs_dirty {
            return;
        }
        let want = self.cidrs.effective();
        match dp.set_service_cidrs(&want) {
            Ok(changed) => {
                if changed > 0 {
                    let cidrs: Vec<String> = want.iter().map(|(a, l)| format!("{a}/{l}")).collect();
                    tracing::info!(
                        from = self.cidrs.origin(),
                        ?cidrs,
                        "service CIDRs: traffic from pods to an address inside them that no Service holds is dropped"
                    );
                }
                self.cidrs_dirty = false;
            }
            Err(e) => report.skipped.push(format!("service CIDRs: {e}")),
        }
    }

    /// Models the dirty services and applies the difference to `dp`. The
    /// first pass also deletes frontends found in the maps that no service
    /// owns (left by an earlier agent for services deleted meanwhile).
    pub fn pass(&mut self, dp: &mut Dataplane) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport::default();
        let dirty = std::mem::take(&mut self.dirty);
        let since = std::mem::take(&mut self.dirty_since);
        // Model the changed services and record what they claim first: a
        // changed claim can move a frontend to or from another service,
        // which is synced in this pass too.
        let mut models: BTreeMap<ServiceName, Option<ServiceModel>> = BTreeMap::new();
        let mut others = BTreeSet::new();
        for name in &dirty {
            let m = self.model_of(name);
            others.extend(self.claims.set(name, m.as_ref()));
            models.insert(name.clone(), m);
        }
        for name in others {
            if let std::collections::btree_map::Entry::Vacant(e) = models.entry(name) {
                let m = self.model_of(e.key());
                e.insert(m);
            }
        }
        let synced = models.len();
        let mut handed_over = Vec::new();
        for (name, m) in models {
            self.sync_service(dp, &name, m, &mut handed_over, &mut report);
        }
        // Frontends let go of for another claimant that did not take them
        // (it failed to program them): nobody's now.
        for fe in handed_over {
            if !self.owner.contains_key(&fe) {
                match dp.delete_service(&fe) {
                    Ok(_) => report.deleted += 1,
                    Err(e) => report.skipped.push(format!("{fe}: delete failed: {e}")),
                }
            }
        }
        if !self.first_pass_done {
            for fe in dp.services().keys() {
                if !self.owner.contains_key(fe) {
                    match dp.delete_service(fe) {
                        Ok(_) => report.deleted += 1,
                        Err(e) => report.skipped.push(format!("{fe}: delete failed: {e}")),
                    }
                }
            }
            // Markers an older agent wrote for external IPs and LB IPs.
            match dp.prune_markers() {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    markers = n,
                    "deleted the VIP markers of addresses that are no cluster IP"
                ),
                Err(e) => report.skipped.push(format!("pruning VIP markers: {e}")),
            }
            self.first_pass_done = true;
        }
        // Once per pass, after every change: UDP flows of backends that
        // left their frontend move to a live one at their next datagram.
        match dp.clear_stale_udp_flows() {
            Ok(c) => {
                report.udp_flows_cleared = c.flows;
                report.udp_sockets_closed = c.sockets_closed;
                if c.ct_entries > 0 || c.socket_entries > 0 {
                    tracing::info!(
                        flows = c.flows,
                        conntrack_entries = c.ct_entries,
                        snat_entries = c.snat_entries,
                        socket_entries = c.socket_entries,
                        sockets_closed = c.sockets_closed,
                        "cleared the UDP conntrack entries (and node sockets) of removed backends"
                    );
                }
            }
            Err(e) => {
                tracing::error!("clearing UDP conntrack entries of removed backends: {e}");
            }
        }
        self.sync_service_cidrs(dp, &mut report);
        self.assign_health_checks(&mut report);
        let done = Instant::now();
        self.last_latencies = since.values().map(|t| done.duration_since(*t)).collect();
        self.last_pass_duration = done.duration_since(started);
        report.services = synced;
        let s = &self.stats;
        s.passes.fetch_add(1, Ordering::Relaxed);
        s.upserts
            .fetch_add(report.upserted as u64, Ordering::Relaxed);
        s.deletes
            .fetch_add(report.deleted as u64, Ordering::Relaxed);
        s.udp_flows_cleared
            .fetch_add(report.udp_flows_cleared as u64, Ordering::Relaxed);
        s.udp_sockets_closed
            .fetch_add(report.udp_sockets_closed as u64, Ordering::Relaxed);
        report
    }

    /// The model of one service on its own (before [`Claims::resolve`]);
    /// `None` when the service is gone.
    fn model_of(&self, name: &ServiceName) -> Option<ServiceModel> {
        let key = (name.namespace.clone(), name.name.clone());
        let svc = self.services.get(&key)?;
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(name)
            .map(|keys| keys.iter().filter_map(|k| self.slices.get(k)).collect())
            .unwrap_or_default();
        Some(model::model_service(svc, &slices, &self.node))
    }

    /// Programs one service's model `m` (`None`: the service is gone):
    /// the frontends the claims give it are written, the ones it had and no
    /// longer has are deleted, unless another service took them over in
    /// this pass (left alone) or is to (added to `handed_over`).
    fn sync_service(
        &mut self,
        dp: &mut Dataplane,
        name: &ServiceName,
        m: Option<ServiceModel>,
        handed_over: &mut Vec<Frontend>,
        report: &mut PassReport,
    ) {
        let mut problems = Vec::new();
        let mut want: BTreeMap<Frontend, FrontendSpec> = BTreeMap::new();
        let mut need = None;
        if let Some(mut m) = m {
            // Only what this service owns: an older claimant's frontends,
            // and external IPs on cluster IPs or node addresses, are left
            // out and reported.
            self.claims.resolve(&mut m, &self.policy);
            problems.extend(m.skipped.iter().map(|s| s.to_string()));
            self.desired(&m, &mut want, &mut problems);
            need = healthcheck::need_of(&m);
        }
        match need {
            Some(n) => self.hc_needs.insert(name.clone(), n),
            None => self.hc_needs.remove(name),
        };
        let had = self.owned.remove(name).unwrap_or_default();
        let mut now_owned = BTreeSet::new();
        for (fe, spec) in &want {
            match dp.upsert_frontend(*fe, spec) {
                Ok(Upsert::Unchanged) => report.unchanged += 1,
                Ok(_) => report.upserted += 1,
                Err(e) => {
                    problems.push(format!("service {name} frontend {fe}: {e}"));
                    // These are refused before anything is written.
                    if !matches!(
                        e,
                        DataplaneError::MapFull { .. }
                            | DataplaneError::TooManyBackends { .. }
                            | DataplaneError::Family { .. }
                    ) {
                        // The frontend may be half-written: keep owning it so
                        // a later pass fixes or deletes it.
                        now_owned.insert(*fe);
                        continue;
                    }
                    if had.contains(fe) {
                        // It keeps its previous (consistent) state in the maps.
                        now_owned.insert(*fe);
                    }
                    continue;
                }
            }
            now_owned.insert(*fe);
        }
        let gone: Vec<Frontend> = had.difference(&now_owned).copied().collect();
        for fe in &gone {
            if self.owner.get(fe) != Some(name) {
                // Another service took it over earlier in this pass: the
                // entry is its own now.
                continue;
            }
            if self.next_owner(fe).is_some_and(|o| o != name) {
                // Its new owner writes it over later in this pass: no
                // moment without an entry.
                self.owner.remove(fe);
                handed_over.push(*fe);
                continue;
            }
            match dp.delete_service(fe) {
                Ok(_) => report.deleted += 1,
                Err(e) => {
                    problems.push(format!("service {name} frontend {fe}: delete failed: {e}"));
                    now_owned.insert(*fe);
                }
            }
            if !now_owned.contains(fe) {
                self.owner.remove(fe);
            }
        }
        for fe in &now_owned {
            self.owner.insert(*fe, name.clone());
        }
        if !now_owned.is_empty() {
            self.owned.insert(name.clone(), now_owned);
        }
        // One log line per problem, once, until the service's problems change.
        let previous = self.reported.get(name);
        if previous != Some(&problems) {
            for p in &problems {
                if previous.is_none_or(|prev| !prev.contains(p)) {
                    tracing::warn!("skipped: {p}");
                    self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if problems.is_empty() {
            self.reported.remove(name);
        } else {
            self.reported.insert(name.clone(), problems.clone());
        }
        report.skipped.extend(problems);
    }

    /// The service the claims give `fe` to, if any.
    fn next_owner(&self, fe: &Frontend) -> Option<&ServiceName> {
        let protocol = match fe.proto {
            proxy_common::IPPROTO_TCP => Protocol::Tcp,
            proxy_common::IPPROTO_UDP => Protocol::Udp,
            proxy_common::IPPROTO_SCTP => Protocol::Sctp,
            _ => return None,
        };
        self.claims.owner(fe.addr, fe.port, protocol, &self.policy)
    }

    /// Assigns the health check ports from every service's need (a port
    /// stays with the service that had it); a service left without its port
    /// is logged and counted once until its conflict changes or ends.
    fn assign_health_checks(&mut self, report: &mut PassReport) {
        let (assigned, conflicts) = healthcheck::assign(&self.hc_needs, &self.health_checks);
        let mut reported = BTreeMap::new();
        for c in conflicts {
            let line = c.to_string();
            if self.hc_reported.get(&c.service) != Some(&line) {
                tracing::warn!("skipped: {line}");
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                report.skipped.push(line.clone());
            }
            reported.insert(c.service, line);
        }
        self.hc_reported = reported;
        self.health_checks = assigned;
    }

    /// The frontends of a model the datapath serves (see [`plan::plan`]).
    fn desired(
        &self,
        m: &ServiceModel,
        want: &mut BTreeMap<Frontend, FrontendSpec>,
        problems: &mut Vec<String>,
    ) {
        let (planned, unsupported) = plan::plan_for(m, &self.datapath);
        problems.extend(unsupported);
        for (key, p) in &planned {
            want.insert(Frontend::from(key), FrontendSpec::of_plan(p));
        }
    }
}

/// Options of the sync loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// After an event, wait this long for more before a pass (coalescing).
    pub debounce: Duration,
    /// Never delay a pass more than this after the first pending event.
    pub max_delay: Duration,
    /// Full drift repair interval.
    pub repair_every: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
            repair_every: Duration::from_secs(60),
        }
    }
}

/// Runs the sync loop until the channel closes: coalesces events, runs a
/// pass when something changed, repairs drift every `repair_every`,
/// records each pass in `health` and calls `on_pass` after it (metrics,
/// tests).
pub async fn run(
    mut syncer: Syncer,
    dp: Arc<Mutex<Dataplane>>,
    mut rx: mpsc::Receiver<SourceEvent>,
    cfg: LoopConfig,
    health: Arc<crate::health::AgentHealth>,
    mut on_pass: impl FnMut(&PassReport, &Syncer, &Dataplane),
) {
    let mut repair = tokio::time::interval(cfg.repair_every);
    repair.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                syncer.handle(ev);
                // Coalesce: keep taking events while they come quickly.
                let started = Instant::now();
                while started.elapsed() < cfg.max_delay {
                    match tokio::time::timeout(cfg.debounce, rx.recv()).await {
                        Ok(Some(ev)) => syncer.handle(ev),
                        Ok(None) | Err(_) => break,
                    }
                }
                health.set_node_eligible(syncer.node_eligible());
            }
            _ = repair.tick() => {
                if syncer.first_pass_done {
                    let mut dp = lock(&dp);
                    match dp.repair() {
                        Ok(0) => {}
                        Ok(n) => {
                            syncer.stats.repaired.fetch_add(n as u64, Ordering::Relaxed);
                            tracing::warn!("drift repair rewrote {n} map entries");
                        }
                        Err(e) => tracing::error!("drift repair failed: {e}"),
                    }
                }
                continue;
            }
        }
        if syncer.has_work() {
            let mut dp = lock(&dp);
            let t = Instant::now();
            let report = syncer.pass(&mut dp);
            tracing::info!(
                services = report.services,
                upserted = report.upserted,
                deleted = report.deleted,
                udp_flows_cleared = report.udp_flows_cleared,
                unchanged = report.unchanged,
                skipped = report.skipped.len(),
                elapsed_ms = t.elapsed().as_secs_f64() * 1e3,
                "sync pass"
            );
            health.pass_finished();
            on_pass(&report, &syncer, &dp);
        }
    }
}

/// Locks the shared dataplane; a panic elsewhere while holding it does not
/// make the maps unusable, so a poisoned lock is taken over.
pub fn lock(dp: &Mutex<Dataplane>) -> std::sync::MutexGuard<'_, Dataplane> {
    dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
