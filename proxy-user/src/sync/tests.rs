//! The Syncer's own bookkeeping: this node's Node.

use super::*;

fn node(yaml: &str) -> SourceEvent {
    let n: Node = serde_saphyr::from_str(yaml).expect("a Node");
    SourceEvent::Apply(Object::Node(Box::new(n)))
}

fn syncer_with_a_service() -> Syncer {
    let mut s = Syncer::new(
        NodeInfo {
            name: "node-a".into(),
            ..NodeInfo::default()
        },
        Arc::new(SyncStats::default()),
    );
    let svc: Service = serde_saphyr::from_str(
        "metadata: {namespace: demo, name: web}\nspec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}",
    )
    .expect("a Service");
    for (kind, objects) in [
        (Kind::Node, vec![]),
        (Kind::Service, vec![Object::Service(Box::new(svc))]),
        (Kind::EndpointSlice, vec![]),
        (Kind::ServiceCidr, vec![]),
    ] {
        s.handle(SourceEvent::Resync { kind, objects });
    }
    s.dirty.clear();
    s
}

#[test]
fn this_nodes_zone_reaches_the_model_and_makes_every_service_dirty() {
    let mut s = syncer_with_a_service();
    assert!(s.ready());
    // Another node's Node changes nothing.
    s.handle(node(
        "metadata: {name: node-b, labels: {topology.kubernetes.io/zone: z2}}",
    ));
    assert_eq!((s.node().zone.as_deref(), s.dirty.len()), (None, 0));
    s.handle(node(
        "metadata: {name: node-a, labels: {topology.kubernetes.io/zone: z1}}",
    ));
    assert_eq!(s.node().zone.as_deref(), Some("z1"));
    assert_eq!(s.dirty.len(), 1, "the service is modelled again");
    s.dirty.clear();
    // Another label: the zone is the same, nothing to redo.
    s.handle(node(
        "metadata: {name: node-a, labels: {topology.kubernetes.io/zone: z1, x: y}}",
    ));
    assert_eq!(s.dirty.len(), 0);
    assert!(s.node_eligible());
}

#[test]
fn a_node_being_drained_or_deleted_is_not_eligible() {
    let mut s = syncer_with_a_service();
    assert!(s.node_eligible(), "eligible before any Node, as kube-proxy");
    s.handle(node(
        "{metadata: {name: node-a}, spec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}}",
    ));
    assert!(!s.node_eligible());
    s.handle(node("metadata: {name: node-a}"));
    assert!(s.node_eligible());
    s.handle(SourceEvent::Delete {
        kind: Kind::Node,
        namespace: String::new(),
        name: "node-a".into(),
    });
    assert!(!s.node_eligible(), "a deleted Node");
    // A resync without it after it came back: gone again.
    s.handle(node("metadata: {name: node-a}"));
    assert!(s.node_eligible());
    s.handle(SourceEvent::Resync {
        kind: Kind::Node,
        objects: vec![],
    });
    assert!(!s.node_eligible());
}
