//! Documents, lists and kinds; the last definition wins.

use super::{key, keys, parse, service_of};
use crate::sources::Kind;

const SERVICE_AND_SLICE: &str = "
# comments and a leading marker are fine
---
apiVersion: v1
kind: Service
metadata:
  name: web
  managedFields:
  - {manager: kubectl, operation: Apply}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
---
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: b}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: knative}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: demo
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints: [{addresses: [198.18.1.10]}]
...
";

#[test]
fn multi_document_yaml_keeps_services_and_slices() {
    let objects = parse(SERVICE_AND_SLICE);
    assert_eq!(
        keys(&objects),
        vec![
            key(Kind::Service, "default", "web"),
            key(Kind::EndpointSlice, "demo", "web-1"),
        ]
    );
    let svc = service_of(&objects[0]);
    assert_eq!(svc.metadata.managed_fields, None);
    let cluster_ip = svc.spec.as_ref().and_then(|spec| spec.cluster_ip.clone());
    assert_eq!(cluster_ip.as_deref(), Some("198.19.0.10"));
}

#[test]
fn lists_as_kubectl_and_the_api_write_them() {
    let kubectl = "
apiVersion: v1
kind: List
metadata: {resourceVersion: ''}
items:
- apiVersion: v1
  kind: Service
  metadata: {namespace: demo, name: web, managedFields: [{manager: x}]}
  spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {namespace: demo, name: web}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {namespace: demo, name: web-1}
  addressType: IPv4
  endpoints: []
";
    assert_eq!(
        keys(&parse(kubectl)),
        vec![
            key(Kind::Service, "demo", "web"),
            key(Kind::EndpointSlice, "demo", "web-1"),
        ]
    );
    assert_eq!(service_of(&parse(kubectl)[0]).metadata.managed_fields, None);

    let typed = "
apiVersion: v1
kind: ServiceList
items:
- metadata: {namespace: demo, name: a}
  spec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}
- metadata: {namespace: demo, name: b}
  spec: {clusterIP: 198.19.0.2, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {namespace: demo, name: a-1}
  addressType: IPv4
  endpoints: []
";
    assert_eq!(
        keys(&parse(typed)),
        vec![
            key(Kind::Service, "demo", "a"),
            key(Kind::Service, "demo", "b"),
            key(Kind::EndpointSlice, "demo", "a-1"),
        ]
    );
}

#[test]
fn json_single_list_stream_and_array() {
    let single = r#"{"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "demo", "name": "web"},
        "spec": {"clusterIP": "198.19.0.10", "ports": [{"port": 80}]}}"#;
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"namespace": "demo", "name": "web-1"}, "addressType": "IPv4", "endpoints": []}]}"#;
    let stream = format!("{single}\n{list}\n");
    let array = format!(
        "[{single}, {{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {{\"name\": \"demo\"}}}}]"
    );
    let web = key(Kind::Service, "demo", "web");
    let web_1 = key(Kind::EndpointSlice, "demo", "web-1");
    assert_eq!(keys(&parse(single)), vec![web.clone()]);
    assert_eq!(keys(&parse(list)), vec![web_1.clone()]);
    assert_eq!(keys(&parse(&stream)), vec![web.clone(), web_1]);
    assert_eq!(keys(&parse(&array)), vec![web]);
}

#[test]
fn the_last_definition_of_an_object_wins() {
    let text = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec: {clusterIP: 198.19.0.2, ports: [{port: 80}]}
";
    let objects = parse(text);
    assert_eq!(objects.len(), 1);
    let spec = service_of(&objects[0]).spec.as_ref();
    assert_eq!(
        spec.and_then(|s| s.cluster_ip.as_deref()),
        Some("198.19.0.2")
    );
}

#[test]
fn nodes_are_kept_cluster_scoped_with_their_labels_and_taints() {
    let objects = parse(
        "
apiVersion: v1
kind: Node
metadata:
  name: node-a
  namespace: ignored
  labels: {topology.kubernetes.io/zone: zone-a}
spec:
  taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]
---
apiVersion: v1
kind: NodeList
items:
- metadata: {name: node-b, labels: {topology.kubernetes.io/zone: zone-b}}
",
    );
    assert_eq!(
        keys(&objects),
        vec![key(Kind::Node, "", "node-a"), key(Kind::Node, "", "node-b")]
    );
    let crate::sources::Object::Node(a) = &objects[0] else {
        panic!("not a Node: {:?}", objects[0]);
    };
    assert_eq!(a.metadata.namespace, None);
    assert_eq!(crate::model::node_zone(a).as_deref(), Some("zone-a"));
    assert!(!crate::model::node_eligible(a));
}

#[test]
fn service_cidrs_are_kept_cluster_scoped_with_their_cidrs() {
    let objects = parse(
        "
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes, namespace: ignored}
spec: {cidrs: [198.19.0.0/16, '2001:db8:1::/112']}
---
apiVersion: networking.k8s.io/v1beta1
kind: ServiceCIDR
metadata: {name: beta-is-not-read}
spec: {cidrs: [198.18.0.0/24]}
",
    );
    assert_eq!(
        keys(&objects),
        vec![key(Kind::ServiceCidr, "", "kubernetes")]
    );
    let crate::sources::Object::ServiceCidr(c) = &objects[0] else {
        panic!("not a ServiceCIDR: {:?}", objects[0]);
    };
    assert_eq!(c.metadata.namespace, None);
    assert_eq!(
        c.spec.as_ref().and_then(|s| s.cidrs.clone()),
        Some(vec![
            "198.19.0.0/16".to_owned(),
            "2001:db8:1::/112".to_owned()
        ])
    );
}
