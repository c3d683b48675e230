//! Bad input is skipped, named and labelled; the rest still works.

use std::collections::BTreeSet;

use super::*;

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
        SkipReason::ExternalIsClusterIp {
            kind: "external IP",
            address: ip("198.19.0.10"),
            owner: ServiceName::new("a", "b"),
        },
        SkipReason::ExternalIsNodeAddress {
            kind: "external IP",
            address: ip("198.18.0.1"),
        },
        SkipReason::ExternalIpNotAllowed(ip("198.18.0.1")),
        SkipReason::FrontendOwned {
            address: ip("198.18.0.1"),
            port: 80,
            protocol: Protocol::Tcp,
            owner: ServiceName::new("a", "b"),
        },
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
