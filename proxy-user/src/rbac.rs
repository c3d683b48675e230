//! What the agent may ask the Kubernetes API server for: the one list that
//! `deploy/rbac.yaml` grants and the deploy test checks, both ways.

/// `(apiGroup, resource, verb)` the agent needs, `""` being the core group.
///
/// - Services and EndpointSlices: `list` and `watch`, in every namespace
///   (the kube source's watchers: one list, then a watch from its
///   resourceVersion, and a relist after `410 Gone`). Never `get`: the agent
///   reads single objects from its own store.
/// - Nodes: `get`, `list` and `watch`, as kube-proxy's `system:node-proxier`
///   role grants, for this node's addresses and topology labels (NodePort
///   addresses, topology-aware routing).
/// - ServiceCIDRs (`networking.k8s.io`, cluster-scoped): `list` and
///   `watch`, for the networks cluster IPs come from (traffic to an
///   unallocated one is dropped), as kube-proxy's role grants since 1.33.
///
/// Nothing is written: no events, no status, no leases.
pub const API_ACCESS: &[(&str, &str, &str)] = &[
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("", "nodes", "get"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("networking.k8s.io", "servicecidrs", "list"),
    ("networking.k8s.io", "servicecidrs", "watch"),
];

/// Name of the ServiceAccount, ClusterRole and ClusterRoleBinding in
/// `deploy/rbac.yaml`, and of the DaemonSet.
pub const NAME: &str = "svcnat";

/// Namespace of the ServiceAccount and the DaemonSet (kube-proxy's).
pub const NAMESPACE: &str = "kube-system";
