//! Backends: target ports, slices joined to services, endpoint conditions.

use super::*;

struct TargetCase {
    name: &'static str,
    ports: &'static str,
    slice_ports: &'static str,
    backend_port: Option<u16>,
}

#[test]
fn target_ports_resolve_by_slice_port_name_or_number() {
    let cases = [
        TargetCase {
            name: "named targetPort, resolved by the slice",
            ports: "[{name: http, port: 80, targetPort: http}]",
            slice_ports: "[{name: http, port: 8080}]",
            backend_port: Some(8080),
        },
        TargetCase {
            name: "numeric targetPort, slice carries it",
            ports: "[{name: http, port: 80, targetPort: 8080}]",
            slice_ports: "[{name: http, port: 8080}]",
            backend_port: Some(8080),
        },
        TargetCase {
            name: "the slice port wins over a different numeric targetPort",
            ports: "[{name: http, port: 80, targetPort: 9090}]",
            slice_ports: "[{name: http, port: 8080}]",
            backend_port: Some(8080),
        },
        TargetCase {
            name: "unnamed port matches an unnamed slice port",
            ports: "[{port: 80, targetPort: 8080}]",
            slice_ports: "[{port: 8081}]",
            backend_port: Some(8081),
        },
        TargetCase {
            name: "empty name equals no name",
            ports: "[{name: '', port: 80}]",
            slice_ports: "[{port: 8081}]",
            backend_port: Some(8081),
        },
        TargetCase {
            name: "slice without ports: numeric targetPort",
            ports: "[{name: http, port: 80, targetPort: 8080}]",
            slice_ports: "[]",
            backend_port: Some(8080),
        },
        TargetCase {
            name: "slice without ports, no targetPort: the port (API default)",
            ports: "[{name: http, port: 80}]",
            slice_ports: "[]",
            backend_port: Some(80),
        },
        TargetCase {
            name: "slice port without a number means all ports: targetPort",
            ports: "[{name: http, port: 80, targetPort: 8080}]",
            slice_ports: "[{name: http}]",
            backend_port: Some(8080),
        },
        TargetCase {
            name: "slice without ports, named targetPort: nothing to resolve",
            ports: "[{name: http, port: 80, targetPort: http}]",
            slice_ports: "[]",
            backend_port: None,
        },
        TargetCase {
            name: "slice port of another name: numeric fallback",
            ports: "[{name: http, port: 80, targetPort: 8080}]",
            slice_ports: "[{name: metrics, port: 9100}]",
            backend_port: Some(8080),
        },
        TargetCase {
            name: "slice port of another protocol does not match",
            ports: "[{name: http, port: 80, targetPort: http}]",
            slice_ports: "[{name: http, port: 8080, protocol: UDP}]",
            backend_port: None,
        },
    ];
    for case in cases {
        let svc = format!(
            "metadata: {{namespace: demo, name: web}}\nspec: {{clusterIP: 198.19.0.10, ports: {}}}",
            case.ports
        );
        let slice = format!(
            "metadata: {{namespace: demo, name: web-1, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: {}
endpoints: [{{addresses: [198.18.1.10], nodeName: node-a}}]",
            case.slice_ports
        );
        let got = model(&svc, &[&slice]);
        assert_eq!(got.ports.len(), 1, "{}", case.name);
        let expected: Vec<Backend> = case
            .backend_port
            .map(|p| be("198.18.1.10", p, Some(NODE)))
            .into_iter()
            .collect();
        assert_eq!(got.ports[0].backends, expected, "{}", case.name);
        assert_eq!(got.skipped, vec![], "{}", case.name);
    }
}

#[test]
fn several_ports_and_protocols_match_by_name_and_protocol() {
    use Protocol::*;
    let svc = "
metadata: {namespace: demo, name: dns}
spec:
  clusterIP: 198.19.0.53
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}
  - {name: sig, port: 3868, protocol: SCTP}
  - {port: 9153}
";
    let slice = "
metadata: {namespace: demo, name: dns-1, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports:
- {name: dns, port: 5353, protocol: UDP}
- {name: dns-tcp, port: 5354, protocol: TCP}
- {name: sig, port: 3869, protocol: SCTP}
- {port: 9154}
endpoints: [{addresses: [198.18.1.20], nodeName: node-b}]
";
    let got = model(svc, &[slice]);
    let ep = |p| vec![be("198.18.1.20", p, Some("node-b"))];
    let vip = |p, proto| vec![fe(FrontendKind::ClusterIp, "198.19.0.53", p, proto)];
    let expected = vec![
        port("dns", Udp, Family::V4, vip(53, Udp), ep(5353)),
        port("dns-tcp", Tcp, Family::V4, vip(53, Tcp), ep(5354)),
        port("sig", Sctp, Family::V4, vip(3868, Sctp), ep(3869)),
        port("", Tcp, Family::V4, vip(9153, Tcp), ep(9154)),
    ];
    assert_eq!(summary(&got), expected);
    assert_eq!(
        got.ports
            .iter()
            .map(|p| p.protocol.number())
            .collect::<Vec<_>>(),
        vec![17, 6, 132, 6]
    );
}

#[test]
fn several_slices_merge_and_duplicates_count_once() {
    let svc = "
metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80, targetPort: http}]}
";
    let second = "
metadata: {namespace: demo, name: web-2, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.2.10], nodeName: node-b}
- {addresses: [198.18.3.10, 198.18.3.11], nodeName: node-c}
";
    let fqdn = "
metadata: {namespace: demo, name: web-3, labels: {kubernetes.io/service-name: web}}
addressType: FQDN
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [web.example.com]}]
";
    let expected = vec![
        be("198.18.1.10", 8080, Some("node-a")),
        be("198.18.2.10", 8080, Some("node-b")),
        be("198.18.3.10", 8080, Some("node-c")),
        be("198.18.3.11", 8080, Some("node-c")),
    ];
    let got = model(svc, &[WEB_SLICE, second, fqdn]);
    assert_eq!(got.ports[0].backends, expected);
    assert_eq!(got.skipped, vec![]);
    // The order of the slices does not matter.
    let reversed = model(svc, &[fqdn, second, WEB_SLICE]);
    assert_eq!(reversed, got);
}

#[test]
fn model_cluster_joins_slices_by_label_and_namespace() {
    let services = [
        service(
            "metadata: {namespace: demo, name: web}\n\
             spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}",
        ),
        service(
            "metadata: {namespace: other, name: web}\n\
             spec: {clusterIP: 198.19.0.11, ports: [{name: http, port: 80}]}",
        ),
        service(
            "metadata: {name: api}\n\
             spec: {clusterIP: 198.19.0.12, ports: [{name: http, port: 80}]}",
        ),
    ];
    let slices = [
        slice(WEB_SLICE),
        // Same label, other namespace.
        slice(
            "metadata: {namespace: other, name: web-x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.9.9]}]",
        ),
        // No label: belongs to nobody.
        slice(
            "metadata: {namespace: demo, name: stray}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.9.8]}]",
        ),
        // A service that does not exist (yet).
        slice(
            "metadata: {namespace: demo, name: gone-1, labels: {kubernetes.io/service-name: gone}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.9.7]}]",
        ),
        // No namespace: default.
        slice(
            "metadata: {name: api-1, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8443}]
endpoints: [{addresses: [198.18.9.6]}]",
        ),
    ];
    assert_eq!(
        slice_service(&slices[0]),
        Some(ServiceName::new("demo", "web"))
    );
    assert_eq!(slice_service(&slices[2]), None);
    assert_eq!(
        slice_service(&slices[4]),
        Some(ServiceName::new("default", "api"))
    );

    let models = model_cluster(&services, &slices, &node());
    let names: Vec<String> = models.keys().map(ToString::to_string).collect();
    assert_eq!(names, vec!["default/api", "demo/web", "other/web"]);
    let backends = |ns: &str, name: &str| -> Vec<Backend> {
        let key = ServiceName::new(ns, name);
        models
            .get(&key)
            .map(|m| m.ports.iter().flat_map(|p| p.backends.clone()).collect())
            .unwrap_or_else(|| panic!("no model for {key}"))
    };
    assert_eq!(backends("demo", "web"), web_backends());
    assert_eq!(backends("other", "web"), vec![be("198.18.9.9", 8080, None)]);
    assert_eq!(
        backends("default", "api"),
        vec![be("198.18.9.6", 8443, None)]
    );
}

#[test]
fn selectorless_service_uses_hand_written_slice() {
    let svc = "
metadata: {namespace: demo, name: external}
spec: {clusterIP: 198.19.0.80, ports: [{port: 8080, targetPort: 80}]}
";
    let slice = "
metadata: {namespace: demo, name: external-1, labels: {kubernetes.io/service-name: external}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [198.18.2.30]}]
";
    let expected = vec![port(
        "",
        Protocol::Tcp,
        Family::V4,
        vec![cip("198.19.0.80", 8080)],
        vec![be("198.18.2.30", 80, None)],
    )];
    assert_eq!(summary(&model(svc, &[slice])), expected);
}

struct ConditionCase {
    name: &'static str,
    /// Endpoint entries (YAML flow mappings with `addresses` and `conditions`).
    endpoints: &'static str,
    expected: Vec<Backend>,
}

#[test]
fn endpoint_conditions_choose_ready_else_serving_terminating() {
    let cases = [
        ConditionCase {
            name: "no conditions: ready",
            endpoints: "[{addresses: [198.18.1.1]}]",
            expected: vec![be("198.18.1.1", 8080, None)],
        },
        ConditionCase {
            name: "ready only; not ready ones left out",
            endpoints: "[{addresses: [198.18.1.1], conditions: {ready: true}},
                         {addresses: [198.18.1.2], conditions: {ready: false}},
                         {addresses: [198.18.1.3], conditions: {ready: false, serving: true, terminating: true}}]",
            expected: vec![be("198.18.1.1", 8080, None)],
        },
        ConditionCase {
            name: "no ready: serving and terminating ones",
            endpoints: "[{addresses: [198.18.1.2], conditions: {ready: false}},
                         {addresses: [198.18.1.3], conditions: {ready: false, serving: true, terminating: true}},
                         {addresses: [198.18.1.4], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-a}]",
            expected: vec![
                term("198.18.1.3", 8080, None),
                term("198.18.1.4", 8080, Some(NODE)),
            ],
        },
        ConditionCase {
            name: "terminating but not serving: unusable",
            endpoints: "[{addresses: [198.18.1.3], conditions: {ready: false, serving: false, terminating: true}}]",
            expected: vec![],
        },
        ConditionCase {
            name: "serving missing takes ready's value (false)",
            endpoints: "[{addresses: [198.18.1.3], conditions: {ready: false, terminating: true}}]",
            expected: vec![],
        },
        ConditionCase {
            name: "serving but not terminating (not ready): unusable",
            endpoints: "[{addresses: [198.18.1.3], conditions: {ready: false, serving: true}}]",
            expected: vec![],
        },
        ConditionCase {
            name: "ready missing means ready",
            endpoints: "[{addresses: [198.18.1.5], conditions: {terminating: false}}]",
            expected: vec![be("198.18.1.5", 8080, None)],
        },
    ];
    let svc = "
metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80, targetPort: http}]}
";
    for case in cases {
        let slice = format!(
            "metadata: {{namespace: demo, name: web-1, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: {}",
            case.endpoints
        );
        let got = model(svc, &[&slice]);
        assert_eq!(got.ports[0].backends, case.expected, "{}", case.name);
    }
}

#[test]
fn ready_in_one_slice_beats_terminating_in_another() {
    let svc = "
metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
";
    let terminating = "
metadata: {namespace: demo, name: web-2, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.7.7], conditions: {ready: false, serving: true, terminating: true}}]
";
    let got = model(svc, &[terminating, WEB_SLICE]);
    assert_eq!(got.ports[0].backends, web_backends());
}

#[test]
fn local_backends_need_a_node_name() {
    let svc = "metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}";
    let slice = slice(
        "metadata: {namespace: demo, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.1.1], nodeName: ''}, {addresses: [198.18.1.2]}]",
    );
    let unnamed = NodeInfo {
        zone: None,
        name: String::new(),
        addresses: vec![],
    };
    let got = model_service(&service(svc), &[&slice], &unnamed);
    assert!(got.ports[0].backends.iter().all(|b| !b.is_local));
    assert_eq!(got.ports[0].backends.len(), 2);
}

/// kube-proxy's EndpointSlice informer selects `!service.kubernetes.io/headless`:
/// a slice with the label gives nothing, the service's other slices do.
#[test]
fn a_slice_labelled_headless_is_ignored() {
    let svc = "
metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
";
    let hidden = "
metadata:
  namespace: demo
  name: web-2
  labels: {kubernetes.io/service-name: web, service.kubernetes.io/headless: ''}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [198.18.3.10], nodeName: node-c}]
";
    let got = model(svc, &[WEB_SLICE, hidden]);
    assert_eq!(got.ports[0].backends, web_backends());
}
