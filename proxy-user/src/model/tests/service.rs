//! Service types, policies and dual stack: the frontends and flags of each
//! port.

use super::*;

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
        TypeCase {
            // kube-proxy's informers select `!service.kubernetes.io/headless`.
            name: "the headless label hides a service with a cluster IP",
            service: "
metadata:
  namespace: demo
  name: web
  labels: {service.kubernetes.io/headless: ''}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
",
            frontends: vec![],
            no_datapath: Some(NoDatapath::HeadlessLabel),
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
        let extra: k8s_openapi::api::core::v1::ServiceSpec =
            serde_saphyr::from_str(case.spec_extra)
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
        // Policies are carried, never applied here: every backend stays in
        // the Cluster set (pods reach external frontends cluster-wide), and
        // a Local policy (internal, or external with an external frontend)
        // adds this node's to the Local set.
        let external = got.ports[0]
            .frontends
            .iter()
            .any(|f| f.kind != FrontendKind::ClusterIp);
        let mut want = web_backends();
        if case.internal_local || (case.external_local && external) {
            want[0] = and_local(want[0].clone());
        }
        if case.internal_local && !external {
            // Only the Local set is used: kube-proxy's cluster endpoints
            // are not computed.
            want = vec![local_only(want[0].clone())];
        }
        assert_eq!(p.backends, want, "{}", case.name);
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
