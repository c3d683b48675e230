//! Model tables: real k8s-openapi objects (written as YAML) in, frontends,
//! backends and skips out.

use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::*;

const NODE: &str = "node-a";

fn node() -> NodeInfo {
    NodeInfo {
        name: NODE.to_owned(),
        addresses: vec![ip("198.18.0.1"), ip("198.18.0.2"), ip("2001:db8::1")],
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("bad address {text:?} in a test: {e}"))
}

fn service(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test Service: {e}\n{yaml}"))
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test EndpointSlice: {e}\n{yaml}"))
}

fn model(svc: &str, slices: &[&str]) -> ServiceModel {
    let slices: Vec<EndpointSlice> = slices.iter().map(|yaml| slice(yaml)).collect();
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    model_service(&service(svc), &refs, &node())
}

fn fe(kind: FrontendKind, address: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        kind,
        address: ip(address),
        port,
        protocol,
    }
}

fn cip(address: &str, port: u16) -> Frontend {
    fe(FrontendKind::ClusterIp, address, port, Protocol::Tcp)
}

/// A ready backend; local when on [`NODE`].
fn be(address: &str, port: u16, node_name: Option<&str>) -> Backend {
    Backend {
        address: ip(address),
        port,
        node_name: node_name.map(str::to_owned),
        is_local: node_name == Some(NODE),
        terminating: false,
    }
}

/// A terminating fallback backend.
fn term(address: &str, port: u16, node_name: Option<&str>) -> Backend {
    Backend {
        terminating: true,
        ..be(address, port, node_name)
    }
}

/// (port name, protocol, family, frontends, backends) of a service port.
type PortSummary = (String, Protocol, Family, Vec<Frontend>, Vec<Backend>);

fn summary(model: &ServiceModel) -> Vec<PortSummary> {
    model
        .ports
        .iter()
        .map(|p| {
            (
                p.port_name.clone(),
                p.protocol,
                p.family,
                p.frontends.clone(),
                p.backends.clone(),
            )
        })
        .collect()
}

fn port(
    name: &str,
    protocol: Protocol,
    family: Family,
    frontends: Vec<Frontend>,
    backends: Vec<Backend>,
) -> PortSummary {
    (name.to_owned(), protocol, family, frontends, backends)
}

/// The (port, reason label) pairs of the skips.
fn skip_labels(model: &ServiceModel) -> Vec<(Option<String>, &'static str)> {
    model
        .skipped
        .iter()
        .map(|skip| (skip.port.clone(), skip.reason.label()))
        .collect()
}

const WEB_SLICE: &str = "
metadata: {namespace: demo, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.1.10], nodeName: node-a}
- {addresses: [198.18.2.10], nodeName: node-b}
";

fn web_backends() -> Vec<Backend> {
    vec![
        be("198.18.1.10", 8080, Some("node-a")),
        be("198.18.2.10", 8080, Some("node-b")),
    ]
}

struct TypeCase {
    name: &'static str,
    service: &'static str,
    frontends: Vec<Frontend>,
    no_datapath: Option<NoDatapath>,
}

#[test]
fn service_types_give_their_frontends() {
    use FrontendKind::*;
    use Protocol::Tcp;
    let cases = [
        TypeCase {
            name: "ClusterIP (default type)",
            service: "
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: http}]
",
            frontends: vec![cip("198.19.0.10", 80)],
            no_datapath: None,
        },
        TypeCase {
            name: "clusterIPs wins over clusterIP",
            service: "
metadata: {namespace: demo, name: web}
spec:
  type: ClusterIP
  clusterIP: 198.19.0.99
  clusterIPs: [198.19.0.10]
  ports: [{name: http, port: 80}]
",
            frontends: vec![cip("198.19.0.10", 80)],
            no_datapath: None,
        },
        TypeCase {
            name: "NodePort: one frontend per node address of the family",
            service: "
metadata: {namespace: demo, name: web}
spec:
  type: NodePort
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, nodePort: 30080}]
",
            frontends: vec![
                cip("198.19.0.10", 80),
                fe(NodePort, "198.18.0.1", 30080, Tcp),
                fe(NodePort, "198.18.0.2", 30080, Tcp),
            ],
            no_datapath: None,
        },
        TypeCase {
            name: "LoadBalancer: ingress IPs, hostname-only and ipMode Proxy ignored",
            service: "
metadata: {namespace: demo, name: web}
spec:
  type: LoadBalancer
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress:
    - ip: 198.18.100.1
    - hostname: lb.example.com
    - {ip: 198.18.100.2, ipMode: VIP}
    - {ip: 198.18.100.3, ipMode: Proxy}
",
            frontends: vec![
                cip("198.19.0.10", 80),
                fe(NodePort, "198.18.0.1", 30080, Tcp),
                fe(NodePort, "198.18.0.2", 30080, Tcp),
                fe(LoadBalancer, "198.18.100.1", 80, Tcp),
                fe(LoadBalancer, "198.18.100.2", 80, Tcp),
            ],
            no_datapath: None,
        },
        TypeCase {
            name: "LoadBalancer without node ports",
            service: "
metadata: {namespace: demo, name: web}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.1}]}}
",
            frontends: vec![
                cip("198.19.0.10", 80),
                fe(LoadBalancer, "198.18.100.1", 80, Tcp),
            ],
            no_datapath: None,
        },
        TypeCase {
            name: "ClusterIP ignores a stale LB status and a nodePort",
            service: "
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.1}]}}
",
            frontends: vec![cip("198.19.0.10", 80)],
            no_datapath: None,
        },
        TypeCase {
            name: "externalIPs on a ClusterIP service",
            service: "
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.10
  externalIPs: [198.18.200.2, 198.18.200.1, 198.18.200.2]
  ports: [{name: http, port: 80}]
",
            frontends: vec![
                cip("198.19.0.10", 80),
                fe(ExternalIp, "198.18.200.1", 80, Tcp),
                fe(ExternalIp, "198.18.200.2", 80, Tcp),
            ],
            no_datapath: None,
        },
        TypeCase {
            name: "ExternalName",
            service: "
metadata: {namespace: demo, name: web}
spec: {type: ExternalName, externalName: web.example.com, ports: [{port: 80}]}
",
            frontends: vec![],
            no_datapath: Some(NoDatapath::ExternalName),
        },
        TypeCase {
            name: "headless",
            service: "
metadata: {namespace: demo, name: web}
spec: {clusterIP: None, clusterIPs: [None], ports: [{name: http, port: 80}]}
",
            frontends: vec![],
            no_datapath: Some(NoDatapath::Headless),
        },
        TypeCase {
            name: "another proxy's service",
            service: "
metadata:
  namespace: demo
  name: web
  labels: {service.kubernetes.io/service-proxy-name: other-proxy}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
",
            frontends: vec![],
            no_datapath: Some(NoDatapath::OtherProxy("other-proxy".to_owned())),
        },
    ];
    for case in cases {
        let got = model(case.service, &[WEB_SLICE]);
        assert_eq!(got.no_datapath, case.no_datapath, "{}", case.name);
        assert_eq!(got.skipped, vec![], "{}", case.name);
        if case.frontends.is_empty() {
            assert_eq!(got.ports, vec![], "{}", case.name);
            continue;
        }
        let expected = vec![port(
            "http",
            Tcp,
            Family::V4,
            case.frontends,
            web_backends(),
        )];
        assert_eq!(summary(&got), expected, "{}", case.name);
        assert_eq!(got.name, ServiceName::new("demo", "web"), "{}", case.name);
        assert_eq!(
            got.ports[0].service.to_string(),
            "demo/web",
            "{}",
            case.name
        );
    }
}

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

struct PolicyCase {
    name: &'static str,
    spec_extra: &'static str,
    external_local: bool,
    internal_local: bool,
    affinity: Option<u32>,
    ranges: Vec<(IpAddr, u8)>,
    health_check: Option<u16>,
    skips: Vec<(Option<String>, &'static str)>,
}

#[test]
fn policies_affinity_and_source_ranges_are_carried() {
    let cases = [
        PolicyCase {
            name: "defaults",
            spec_extra: "{}",
            external_local: false,
            internal_local: false,
            affinity: None,
            ranges: vec![],
            health_check: None,
            skips: vec![],
        },
        PolicyCase {
            name: "externalTrafficPolicy Local with health check port",
            spec_extra: "{externalTrafficPolicy: Local, healthCheckNodePort: 32000}",
            external_local: true,
            internal_local: false,
            affinity: None,
            ranges: vec![],
            health_check: Some(32000),
            skips: vec![],
        },
        PolicyCase {
            name: "health check port ignored with policy Cluster",
            spec_extra: "{externalTrafficPolicy: Cluster, healthCheckNodePort: 32000}",
            external_local: false,
            internal_local: false,
            affinity: None,
            ranges: vec![],
            health_check: None,
            skips: vec![],
        },
        PolicyCase {
            name: "internalTrafficPolicy Local",
            spec_extra: "{internalTrafficPolicy: Local}",
            external_local: false,
            internal_local: true,
            affinity: None,
            ranges: vec![],
            health_check: None,
            skips: vec![],
        },
        PolicyCase {
            name: "ClientIP affinity, default timeout",
            spec_extra: "{sessionAffinity: ClientIP}",
            external_local: false,
            internal_local: false,
            affinity: Some(DEFAULT_AFFINITY_TIMEOUT_S),
            ranges: vec![],
            health_check: None,
            skips: vec![],
        },
        PolicyCase {
            name: "ClientIP affinity, explicit timeout",
            spec_extra: "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}}",
            external_local: false,
            internal_local: false,
            affinity: Some(60),
            ranges: vec![],
            health_check: None,
            skips: vec![],
        },
        PolicyCase {
            name: "affinity None ignores the config",
            spec_extra: "{sessionAffinity: None, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}}",
            external_local: false,
            internal_local: false,
            affinity: None,
            ranges: vec![],
            health_check: None,
            skips: vec![],
        },
        PolicyCase {
            name: "affinity timeout out of range: default, recorded",
            spec_extra: "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}}",
            external_local: false,
            internal_local: false,
            affinity: Some(DEFAULT_AFFINITY_TIMEOUT_S),
            ranges: vec![],
            health_check: None,
            skips: vec![(None, "invalid_affinity_timeout")],
        },
        PolicyCase {
            name: "affinity timeout zero: default, recorded",
            spec_extra: "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}",
            external_local: false,
            internal_local: false,
            affinity: Some(DEFAULT_AFFINITY_TIMEOUT_S),
            ranges: vec![],
            health_check: None,
            skips: vec![(None, "invalid_affinity_timeout")],
        },
        PolicyCase {
            name: "source ranges: trimmed, host bits cleared, bare address, both families",
            spec_extra: "{loadBalancerSourceRanges: [' 198.18.5.7/24 ', 198.18.9.1, '2001:db8::/32', 198.18.5.0/24]}",
            external_local: false,
            internal_local: false,
            affinity: None,
            ranges: vec![
                (ip("198.18.5.0"), 24),
                (ip("198.18.9.1"), 32),
                (ip("2001:db8::"), 32),
            ],
            health_check: None,
            skips: vec![],
        },
        PolicyCase {
            name: "unknown policy values read as the defaults, recorded",
            spec_extra: "{externalTrafficPolicy: local, internalTrafficPolicy: Nodes, sessionAffinity: Cookie}",
            external_local: false,
            internal_local: false,
            affinity: None,
            ranges: vec![],
            health_check: None,
            skips: vec![
                (None, "invalid_policy"),
                (None, "invalid_policy"),
                (None, "invalid_policy"),
            ],
        },
    ];
    for case in cases {
        let mut svc = service(
            "metadata: {namespace: demo, name: web}
spec:
  type: LoadBalancer
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.1}]}}
",
        );
        let extra: k8s_openapi::api::core::v1::ServiceSpec = serde_yaml::from_str(case.spec_extra)
            .unwrap_or_else(|e| panic!("{}: bad spec: {e}", case.name));
        if let Some(spec) = svc.spec.as_mut() {
            spec.external_traffic_policy = extra.external_traffic_policy;
            spec.internal_traffic_policy = extra.internal_traffic_policy;
            spec.health_check_node_port = extra.health_check_node_port;
            spec.session_affinity = extra.session_affinity;
            spec.session_affinity_config = extra.session_affinity_config;
            spec.load_balancer_source_ranges = extra.load_balancer_source_ranges;
        }
        let web = slice(WEB_SLICE);
        let got = model_service(&svc, &[&web], &node());
        assert_eq!(got.ports.len(), 1, "{}", case.name);
        let p = &got.ports[0];
        assert_eq!(
            p.external_traffic_local, case.external_local,
            "{}",
            case.name
        );
        assert_eq!(
            p.internal_traffic_local, case.internal_local,
            "{}",
            case.name
        );
        assert_eq!(p.affinity_timeout_s, case.affinity, "{}", case.name);
        assert_eq!(p.source_ranges, case.ranges, "{}", case.name);
        assert_eq!(p.health_check_node_port, case.health_check, "{}", case.name);
        assert_eq!(skip_labels(&got), case.skips, "{}", case.name);
        // Policies are carried, never applied here: every backend stays.
        assert_eq!(p.backends, web_backends(), "{}", case.name);
    }
}

#[test]
fn dual_stack_gives_one_port_per_family() {
    use FrontendKind::*;
    use Protocol::Tcp;
    let svc = "
metadata: {namespace: demo, name: web}
spec:
  type: NodePort
  ipFamilies: [IPv6, IPv4]
  clusterIP: 2001:db8:1::10
  clusterIPs: [2001:db8:1::10, 198.19.0.10]
  externalIPs: [198.18.200.1, 2001:db8:2::1]
  ports: [{name: http, port: 80, nodePort: 30080}]
";
    let v6_slice = "
metadata: {namespace: demo, name: web-v6, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ['2001:db8:3::10'], nodeName: node-a}]
";
    let got = model(svc, &[WEB_SLICE, v6_slice]);
    let expected = vec![
        port(
            "http",
            Tcp,
            Family::V4,
            vec![
                cip("198.19.0.10", 80),
                fe(NodePort, "198.18.0.1", 30080, Tcp),
                fe(NodePort, "198.18.0.2", 30080, Tcp),
                fe(ExternalIp, "198.18.200.1", 80, Tcp),
            ],
            web_backends(),
        ),
        port(
            "http",
            Tcp,
            Family::V6,
            vec![
                cip("2001:db8:1::10", 80),
                fe(NodePort, "2001:db8::1", 30080, Tcp),
                fe(ExternalIp, "2001:db8:2::1", 80, Tcp),
            ],
            vec![be("2001:db8:3::10", 8080, Some(NODE))],
        ),
    ];
    assert_eq!(summary(&got), expected);
    assert_eq!(got.skipped, vec![]);
}

#[test]
fn external_ip_of_a_family_the_service_lacks_is_still_a_frontend() {
    use Protocol::Tcp;
    let svc = "
metadata: {namespace: demo, name: web}
spec:
  type: NodePort
  clusterIP: 198.19.0.10
  externalIPs: ['2001:db8:2::1']
  ports: [{name: http, port: 80, nodePort: 30080}]
";
    let got = model(svc, &[WEB_SLICE]);
    assert_eq!(got.ports.len(), 2);
    // No NodePort frontend in IPv6: the service has no IPv6 cluster IP; no
    // IPv6 slice either, so no backend.
    let expected_v6 = port(
        "http",
        Tcp,
        Family::V6,
        vec![fe(FrontendKind::ExternalIp, "2001:db8:2::1", 80, Tcp)],
        vec![],
    );
    assert_eq!(summary(&got)[1], expected_v6);
}

struct BadCase {
    name: &'static str,
    service: &'static str,
    slices: Vec<&'static str>,
    /// (port, reason label) of every skip.
    skips: Vec<(Option<&'static str>, &'static str)>,
    /// The bad value the Display of the (first) reason must name.
    names: &'static str,
    /// (port name, frontend count, backend count) of what is still programmed.
    remaining: Vec<(&'static str, usize, usize)>,
}

#[test]
fn bad_input_is_skipped_and_the_rest_works() {
    let bad_endpoint = "
metadata: {namespace: demo, name: web-bad, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.1.300]}
- {addresses: ['2001:db8::5']}
- {addresses: [198.18.1.11]}
";
    let bad_port_slice = "
metadata: {namespace: demo, name: web-bad-port, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 70000}]
endpoints: [{addresses: [198.18.1.12]}]
";
    let bad_type_slice = "
metadata: {namespace: demo, name: web-odd, labels: {kubernetes.io/service-name: web}}
addressType: IPv5
endpoints: [{addresses: [198.18.1.13]}]
";
    let cases = [
        BadCase {
            name: "no name",
            service: "metadata: {namespace: demo}\nspec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}",
            slices: vec![],
            skips: vec![(None, "invalid_name")],
            names: "no name",
            remaining: vec![],
        },
        BadCase {
            name: "unknown type",
            service: "metadata: {namespace: demo, name: web}\nspec: {type: Magic, clusterIP: 198.19.0.10, ports: [{port: 80}]}",
            slices: vec![],
            skips: vec![(None, "unknown_service_type")],
            names: "Magic",
            remaining: vec![],
        },
        BadCase {
            name: "no cluster IP",
            service: "metadata: {namespace: demo, name: web}\nspec: {ports: [{port: 80}]}",
            slices: vec![],
            skips: vec![(None, "missing_cluster_ip")],
            names: "no cluster IP",
            remaining: vec![],
        },
        BadCase {
            name: "bad cluster IP, good external IP keeps working",
            service: "metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.300, externalIPs: [198.18.200.1], ports: [{name: http, port: 80}]}",
            slices: vec![WEB_SLICE],
            skips: vec![(None, "invalid_address")],
            names: "198.19.0.300",
            remaining: vec![("http", 1, 2)],
        },
        BadCase {
            name: "bad external IP and LB IP",
            service: "metadata: {namespace: demo, name: web}
spec: {type: LoadBalancer, allocateLoadBalancerNodePorts: false, clusterIP: 198.19.0.10, externalIPs: [not-an-ip], ports: [{name: http, port: 80}]}
status: {loadBalancer: {ingress: [{ip: 0.0.0.0}, {ip: 198.18.100.1}]}}",
            slices: vec![WEB_SLICE],
            skips: vec![(None, "invalid_address"), (None, "invalid_address")],
            names: "0.0.0.0",
            remaining: vec![("http", 2, 2)],
        },
        BadCase {
            name: "ipFamilies disagree with clusterIPs",
            service: "metadata: {namespace: demo, name: web}
spec: {ipFamilies: [IPv6], clusterIPs: [198.19.0.10], externalIPs: [198.18.200.1], ports: [{name: http, port: 80}]}",
            slices: vec![WEB_SLICE],
            skips: vec![(None, "family_mismatch")],
            names: "198.19.0.10",
            remaining: vec![("http", 1, 2)],
        },
        BadCase {
            name: "two cluster IPs of one family",
            service: "metadata: {namespace: demo, name: web}
spec: {clusterIPs: [198.19.0.10, 198.19.0.11], ports: [{name: http, port: 80}]}",
            slices: vec![WEB_SLICE],
            skips: vec![(None, "duplicate_family")],
            names: "198.19.0.11",
            remaining: vec![("http", 1, 2)],
        },
        BadCase {
            name: "no ports",
            service: "metadata: {namespace: demo, name: web}\nspec: {clusterIP: 198.19.0.10}",
            slices: vec![WEB_SLICE],
            skips: vec![(None, "no_ports")],
            names: "no ports",
            remaining: vec![],
        },
        BadCase {
            name: "unknown protocol, port 0, port too big: those ports only",
            service: "metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: a, port: 81, protocol: ICMP}, {name: b, port: 0}, {name: c, port: 65536}, {name: http, port: 80}]}",
            slices: vec![WEB_SLICE],
            skips: vec![
                (Some("a"), "unknown_protocol"),
                (Some("b"), "port_out_of_range"),
                (Some("c"), "port_out_of_range"),
            ],
            names: "ICMP",
            remaining: vec![("http", 1, 2)],
        },
        BadCase {
            name: "node port out of range, node port missing",
            service: "metadata: {namespace: demo, name: web}
spec: {type: NodePort, clusterIP: 198.19.0.10, ports: [{name: a, port: 81, nodePort: -1}, {name: http, port: 80}]}",
            slices: vec![WEB_SLICE],
            skips: vec![(Some("a"), "node_port_out_of_range"), (Some("http"), "missing_node_port")],
            names: "-1",
            remaining: vec![("http", 1, 2)],
        },
        BadCase {
            name: "duplicate port/protocol, name, node port: later ones",
            service: "metadata: {namespace: demo, name: web}
spec:
  type: NodePort
  clusterIP: 198.19.0.10
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: again, port: 80, nodePort: 30081}
  - {name: http, port: 81, nodePort: 30082}
  - {name: other, port: 82, nodePort: 30080}
  - {name: udp, port: 80, protocol: UDP, nodePort: 30080}",
            slices: vec![WEB_SLICE],
            skips: vec![
                (Some("again"), "duplicate_port"),
                (Some("http"), "duplicate_port_name"),
                (Some("other"), "duplicate_node_port"),
            ],
            names: "80/TCP",
            // The slice names no "udp" port: the target port (the port) is used.
            remaining: vec![("http", 3, 2), ("udp", 3, 2)],
        },
        BadCase {
            name: "bad source range fails the whole service closed",
            service: "metadata: {namespace: demo, name: web}
spec: {type: LoadBalancer, clusterIP: 198.19.0.10, loadBalancerSourceRanges: [198.18.0.0/15, 198.18.0.0/33], ports: [{name: http, port: 80, nodePort: 30080}]}",
            slices: vec![WEB_SLICE],
            skips: vec![(None, "invalid_source_range")],
            names: "198.18.0.0/33",
            remaining: vec![],
        },
        BadCase {
            name: "target port out of range: slices still resolve",
            service: "metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80, targetPort: 0}]}",
            slices: vec![WEB_SLICE],
            skips: vec![(Some("http"), "target_port_out_of_range")],
            names: "0",
            remaining: vec![("http", 1, 2)],
        },
        BadCase {
            name: "health check node port out of range",
            service: "metadata: {namespace: demo, name: web}
spec: {type: NodePort, externalTrafficPolicy: Local, healthCheckNodePort: 70000, clusterIP: 198.19.0.10, ports: [{name: http, port: 80, nodePort: 30080}]}",
            slices: vec![WEB_SLICE],
            skips: vec![(None, "health_check_node_port_out_of_range")],
            names: "70000",
            remaining: vec![("http", 3, 2)],
        },
        BadCase {
            name: "bad endpoint addresses: just those endpoints",
            service: "metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}, {name: other, port: 81}]}",
            slices: vec![bad_endpoint],
            skips: vec![(None, "invalid_endpoint_address"), (None, "endpoint_family_mismatch")],
            names: "198.18.1.300",
            remaining: vec![("http", 1, 1), ("other", 1, 1)],
        },
        BadCase {
            name: "slice port out of range and unknown address type: those slices",
            service: "metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}",
            slices: vec![bad_port_slice, bad_type_slice, WEB_SLICE],
            skips: vec![(None, "unknown_address_type"), (Some("http"), "endpoint_port_out_of_range")],
            names: "IPv5",
            remaining: vec![("http", 1, 2)],
        },
    ];
    for case in cases {
        let got = model(case.service, &case.slices);
        let mut skips: Vec<(Option<&str>, &str)> = got
            .skipped
            .iter()
            .map(|s| (s.port.as_deref(), s.reason.label()))
            .collect();
        skips.sort();
        let mut expected = case.skips.clone();
        expected.sort();
        assert_eq!(skips, expected, "{}", case.name);
        let texts: Vec<String> = got.skipped.iter().map(ToString::to_string).collect();
        assert!(
            texts.iter().any(|t| t.contains(case.names)),
            "{}: no skip names {:?}: {texts:?}",
            case.name,
            case.names
        );
        assert!(
            texts.iter().all(|t| t.starts_with("service demo/")),
            "{}: {texts:?}",
            case.name
        );
        let remaining: Vec<(&str, usize, usize)> = got
            .ports
            .iter()
            .map(|p| (p.port_name.as_str(), p.frontends.len(), p.backends.len()))
            .collect();
        assert_eq!(remaining, case.remaining, "{}", case.name);
    }
}

#[test]
fn bad_endpoint_addresses_leave_the_good_ones() {
    let svc = "metadata: {namespace: demo, name: web}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}";
    let slice = "
metadata: {namespace: demo, name: web-bad, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.1.300, 198.18.1.11], nodeName: node-a}]
";
    let got = model(svc, &[slice]);
    assert_eq!(
        got.ports[0].backends,
        vec![be("198.18.1.11", 8080, Some(NODE))]
    );
    let expected = Skip {
        service: ServiceName::new("demo", "web"),
        port: None,
        reason: SkipReason::InvalidEndpointAddress {
            slice: "web-bad".to_owned(),
            address: "198.18.1.300".to_owned(),
        },
    };
    assert_eq!(got.skipped, vec![expected]);
}

#[test]
fn skip_labels_are_distinct_snake_case() {
    let reasons = [
        SkipReason::InvalidName,
        SkipReason::UnknownServiceType(String::new()),
        SkipReason::MissingClusterIp,
        SkipReason::InvalidAddress(String::new()),
        SkipReason::FamilyMismatch {
            address: String::new(),
            expected: Family::V4,
        },
        SkipReason::DuplicateFamily(String::new()),
        SkipReason::NoPorts,
        SkipReason::UnknownProtocol(String::new()),
        SkipReason::PortOutOfRange(0),
        SkipReason::NodePortOutOfRange(0),
        SkipReason::MissingNodePort,
        SkipReason::TargetPortOutOfRange(0),
        SkipReason::DuplicatePort {
            port: 1,
            protocol: Protocol::Tcp,
        },
        SkipReason::DuplicatePortName(String::new()),
        SkipReason::DuplicateNodePort {
            node_port: 1,
            protocol: Protocol::Tcp,
        },
        SkipReason::InvalidSourceRange(String::new()),
        SkipReason::InvalidAffinityTimeout(0),
        SkipReason::InvalidPolicy {
            field: "f",
            value: String::new(),
        },
        SkipReason::HealthCheckNodePortOutOfRange(0),
        SkipReason::UnknownAddressType {
            slice: String::new(),
            address_type: String::new(),
        },
        SkipReason::InvalidEndpointAddress {
            slice: String::new(),
            address: String::new(),
        },
        SkipReason::EndpointFamilyMismatch {
            slice: String::new(),
            address: String::new(),
            address_type: Family::V4,
        },
        SkipReason::EndpointPortOutOfRange {
            slice: String::new(),
            port: 0,
        },
    ];
    let labels: BTreeSet<&str> = reasons.iter().map(SkipReason::label).collect();
    assert_eq!(labels.len(), reasons.len());
    for label in labels {
        assert!(
            label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{label}"
        );
    }
}

#[test]
fn addresses_and_cidrs_parse_like_kube_proxy() {
    let ips = [
        ("198.18.0.1", Some("198.18.0.1")),
        ("010.001.0.1", Some("10.1.0.1")),
        ("2001:db8::1", Some("2001:db8::1")),
        ("198.18.0.256", None),
        ("198.18.0", None),
        ("198.18.0.1.2", None),
        ("+1.2.3.4", None),
        ("", None),
        ("fe80::1%eth0", None),
        ("host.example.com", None),
    ];
    for (text, expected) in ips {
        assert_eq!(parse_ip(text), expected.map(ip), "{text:?}");
    }
    let cidrs = [
        ("198.18.0.0/15", Some(("198.18.0.0", 15))),
        (" 198.18.3.4/16\t", Some(("198.18.0.0", 16))),
        ("198.18.3.4", Some(("198.18.3.4", 32))),
        ("0.0.0.0/0", Some(("0.0.0.0", 0))),
        ("2001:db8::1/32", Some(("2001:db8::", 32))),
        ("2001:db8::1", Some(("2001:db8::1", 128))),
        ("::/0", Some(("::", 0))),
        ("198.18.0.0/33", None),
        ("2001:db8::/129", None),
        ("198.18.0.0/", None),
        ("198.18.0.0/+8", None),
        ("198.18.0.0/8/8", None),
        ("", None),
    ];
    for (text, expected) in cidrs {
        assert_eq!(
            parse_cidr(text),
            expected.map(|(a, p)| (ip(a), p)),
            "{text:?}"
        );
    }
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
        name: String::new(),
        addresses: vec![],
    };
    let got = model_service(&service(svc), &[&slice], &unnamed);
    assert!(got.ports[0].backends.iter().all(|b| !b.is_local));
    assert_eq!(got.ports[0].backends.len(), 2);
}
