//! This node's Node object: what the model and the health endpoints take
//! from it.

use k8s_openapi::api::core::v1::Node;

/// The label holding a node's zone (what zone hints are matched against).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The taint the cluster autoscaler puts on a node before deleting it.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The node's zone: its [`ZONE_LABEL`], `None` when missing or empty.
pub fn node_zone(node: &Node) -> Option<String> {
    node.metadata
        .labels
        .as_ref()?
        .get(ZONE_LABEL)
        .filter(|z| !z.is_empty())
        .cloned()
}

/// Whether load balancers should keep sending to this node, as kube-proxy's
/// `SyncNode` decides it (KEP-3836): not while the node is being deleted
/// (`metadata.deletionTimestamp`) or carries [`TO_BE_DELETED_TAINT`].
pub fn node_eligible(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad test Node: {e}\n{yaml}"))
    }

    #[test]
    fn the_zone_comes_from_the_topology_label() {
        let n = node(
            "metadata: {name: a, labels: {topology.kubernetes.io/zone: z1, topology.kubernetes.io/region: r}}",
        );
        assert_eq!(node_zone(&n).as_deref(), Some("z1"));
        for yaml in [
            "metadata: {name: a}",
            "metadata: {name: a, labels: {topology.kubernetes.io/zone: ''}}",
            "metadata: {name: a, labels: {failure-domain.beta.kubernetes.io/zone: z1}}",
        ] {
            assert_eq!(node_zone(&node(yaml)), None, "{yaml}");
        }
    }

    #[test]
    fn a_node_being_deleted_or_tainted_for_deletion_is_not_eligible() {
        let cases = [
            ("metadata: {name: a}", true),
            (
                "{metadata: {name: a}, spec: {taints: [{key: node.kubernetes.io/unschedulable, effect: NoSchedule}]}}",
                true,
            ),
            (
                "{metadata: {name: a}, spec: {taints: [{key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}]}}",
                false,
            ),
            (
                "metadata: {name: a, deletionTimestamp: '2026-12-03T00:00:00Z'}",
                false,
            ),
        ];
        for (yaml, eligible) in cases {
            assert_eq!(node_eligible(&node(yaml)), eligible, "{yaml}");
        }
    }
}
