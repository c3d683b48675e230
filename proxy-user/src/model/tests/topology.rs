//! Topology hints and the Cluster and Local endpoint sets, case by case as
//! kube-proxy's `CategorizeEndpoints` (pkg/proxy/topology.go) and its table
//! tests (topology_test.go) decide them.

use super::*;

/// One endpoint: address (198.18.x.y, port 8080), node, zone hints, node
/// hints, and whether it is ready (else serving and terminating).
struct Ep {
    addr: &'static str,
    node: &'static str,
    zones: &'static [&'static str],
    nodes: &'static [&'static str],
    ready: bool,
}

const fn ep(addr: &'static str, node: &'static str, zones: &'static [&'static str]) -> Ep {
    Ep {
        addr,
        node,
        zones,
        nodes: &[],
        ready: true,
    }
}

struct TopoCase {
    name: &'static str,
    /// Extra spec fields of the Service (policies, type).
    spec: &'static str,
    /// This node's zone label.
    zone: Option<&'static str>,
    endpoints: Vec<Ep>,
    /// The Cluster set (addresses).
    cluster: &'static [&'static str],
    /// The Local set (addresses).
    local: &'static [&'static str],
}

fn slice_of(endpoints: &[Ep]) -> String {
    let mut yaml = String::from(
        "
metadata: {namespace: demo, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
",
    );
    for e in endpoints {
        let list = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("{{name: {n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut hints = Vec::new();
        if !e.zones.is_empty() {
            hints.push(format!("forZones: [{}]", list(e.zones)));
        }
        if !e.nodes.is_empty() {
            hints.push(format!("forNodes: [{}]", list(e.nodes)));
        }
        let conditions = if e.ready {
            "{ready: true, serving: true, terminating: false}"
        } else {
            "{ready: false, serving: true, terminating: true}"
        };
        yaml.push_str(&format!(
            "- {{addresses: [{}], nodeName: {}, conditions: {conditions}, hints: {{{}}}}}\n",
            e.addr,
            e.node,
            hints.join(", ")
        ));
    }
    yaml
}

#[test]
fn endpoint_sets_follow_topology_hints_and_fall_back_as_kube_proxy_does() {
    const CLUSTER_IP: &str = "{clusterIP: 198.19.0.10}";
    const NODE_PORT_LOCAL: &str =
        "{type: NodePort, clusterIP: 198.19.0.10, externalTrafficPolicy: Local}";
    let cases = vec![
        TopoCase {
            name: "no hints: every ready endpoint",
            spec: CLUSTER_IP,
            zone: Some("zone-a"),
            endpoints: vec![ep("198.18.1.1", NODE, &[]), ep("198.18.2.1", "node-b", &[])],
            cluster: &["198.18.1.1", "198.18.2.1"],
            local: &[],
        },
        TopoCase {
            name: "zone hints on every endpoint, some for this zone: those (PreferSameZone)",
            spec: CLUSTER_IP,
            zone: Some("zone-a"),
            endpoints: vec![
                ep("198.18.1.1", NODE, &["zone-a"]),
                ep("198.18.1.2", "node-b", &["zone-a"]),
                ep("198.18.2.1", "node-c", &["zone-b"]),
            ],
            cluster: &["198.18.1.1", "198.18.1.2"],
            local: &[],
        },
        TopoCase {
            name: "one ready endpoint without a hint: hints ignored",
            spec: CLUSTER_IP,
            zone: Some("zone-a"),
            endpoints: vec![
                ep("198.18.1.1", NODE, &["zone-a"]),
                ep("198.18.2.1", "node-b", &[]),
            ],
            cluster: &["198.18.1.1", "198.18.2.1"],
            local: &[],
        },
        TopoCase {
            name: "no endpoint hinted for this zone: hints ignored",
            spec: CLUSTER_IP,
            zone: Some("zone-c"),
            endpoints: vec![
                ep("198.18.1.1", NODE, &["zone-a"]),
                ep("198.18.2.1", "node-b", &["zone-b"]),
            ],
            cluster: &["198.18.1.1", "198.18.2.1"],
            local: &[],
        },
        TopoCase {
            name: "node without a zone label: zone hints ignored",
            spec: CLUSTER_IP,
            zone: None,
            endpoints: vec![
                ep("198.18.1.1", NODE, &["zone-a"]),
                ep("198.18.2.1", "node-b", &["zone-b"]),
            ],
            cluster: &["198.18.1.1", "198.18.2.1"],
            local: &[],
        },
        TopoCase {
            name: "node hints on every endpoint, one for this node: it (PreferSameNode)",
            spec: CLUSTER_IP,
            zone: Some("zone-a"),
            endpoints: vec![
                Ep {
                    nodes: &[NODE],
                    ..ep("198.18.1.1", NODE, &["zone-a"])
                },
                Ep {
                    nodes: &["node-b"],
                    ..ep("198.18.1.2", "node-b", &["zone-a"])
                },
            ],
            cluster: &["198.18.1.1"],
            local: &[],
        },
        TopoCase {
            name: "node hints, none for this node: the zone hints decide",
            spec: CLUSTER_IP,
            zone: Some("zone-a"),
            endpoints: vec![
                Ep {
                    nodes: &["node-b"],
                    ..ep("198.18.1.2", "node-b", &["zone-a"])
                },
                Ep {
                    nodes: &["node-c"],
                    ..ep("198.18.2.1", "node-c", &["zone-b"])
                },
            ],
            cluster: &["198.18.1.2"],
            local: &[],
        },
        TopoCase {
            name: "node hints missing on one endpoint: the zone hints decide",
            spec: CLUSTER_IP,
            zone: Some("zone-a"),
            endpoints: vec![
                Ep {
                    nodes: &[NODE],
                    ..ep("198.18.1.1", NODE, &["zone-a"])
                },
                ep("198.18.1.2", "node-b", &["zone-a"]),
                ep("198.18.2.1", "node-c", &["zone-b"]),
            ],
            cluster: &["198.18.1.1", "198.18.1.2"],
            local: &[],
        },
        TopoCase {
            name: "a terminating endpoint without hints does not disable them",
            spec: CLUSTER_IP,
            zone: Some("zone-a"),
            endpoints: vec![
                ep("198.18.1.1", NODE, &["zone-a"]),
                ep("198.18.2.1", "node-b", &["zone-b"]),
                Ep {
                    ready: false,
                    ..ep("198.18.2.2", "node-b", &[])
                },
            ],
            cluster: &["198.18.1.1"],
            local: &[],
        },
        TopoCase {
            name: "no ready endpoint: every serving and terminating one, hints ignored",
            spec: CLUSTER_IP,
            zone: Some("zone-a"),
            endpoints: vec![
                Ep {
                    ready: false,
                    ..ep("198.18.1.1", NODE, &["zone-a"])
                },
                Ep {
                    ready: false,
                    ..ep("198.18.2.1", "node-b", &["zone-b"])
                },
            ],
            cluster: &["198.18.1.1", "198.18.2.1"],
            local: &[],
        },
        TopoCase {
            name: "externalTrafficPolicy Local: the Local set ignores the hints",
            spec: NODE_PORT_LOCAL,
            zone: Some("zone-a"),
            endpoints: vec![
                ep("198.18.1.1", NODE, &["zone-b"]),
                ep("198.18.2.1", "node-b", &["zone-a"]),
            ],
            cluster: &["198.18.2.1"],
            local: &["198.18.1.1"],
        },
        TopoCase {
            name: "Local set falls back to this node's terminating endpoints on its own",
            spec: NODE_PORT_LOCAL,
            zone: None,
            endpoints: vec![
                Ep {
                    ready: false,
                    ..ep("198.18.1.1", NODE, &[])
                },
                ep("198.18.2.1", "node-b", &[]),
            ],
            cluster: &["198.18.2.1"],
            local: &["198.18.1.1"],
        },
        TopoCase {
            name: "Local set takes only ready local endpoints when it has some",
            spec: NODE_PORT_LOCAL,
            zone: None,
            endpoints: vec![
                ep("198.18.1.1", NODE, &[]),
                Ep {
                    ready: false,
                    ..ep("198.18.1.2", NODE, &[])
                },
                ep("198.18.2.1", "node-b", &[]),
            ],
            cluster: &["198.18.1.1", "198.18.2.1"],
            local: &["198.18.1.1"],
        },
        TopoCase {
            name: "internalTrafficPolicy Local on a cluster IP: only the Local set",
            spec: "{clusterIP: 198.19.0.10, internalTrafficPolicy: Local}",
            zone: Some("zone-a"),
            endpoints: vec![
                ep("198.18.1.1", NODE, &["zone-b"]),
                ep("198.18.2.1", "node-b", &["zone-a"]),
            ],
            cluster: &[],
            local: &["198.18.1.1"],
        },
    ];
    for case in cases {
        let svc = format!(
            "
metadata: {{namespace: demo, name: web}}
spec:
  ports: [{{name: http, port: 80, nodePort: 30080}}]
  {}
",
            case.spec
                .trim_matches(['{', '}'])
                .split(", ")
                .collect::<Vec<_>>()
                .join("\n  ")
        );
        let slice = slice(&slice_of(&case.endpoints));
        let node = NodeInfo {
            zone: case.zone.map(str::to_owned),
            ..node()
        };
        let got = model_service(&service(&svc), &[&slice], &node);
        assert!(got.skipped.is_empty(), "{}: {:?}", case.name, got.skipped);
        let p = &got.ports[0];
        let set = |keep: fn(&Backend) -> bool| -> Vec<String> {
            p.backends
                .iter()
                .filter(|b| keep(b))
                .map(|b| b.address.to_string())
                .collect()
        };
        assert_eq!(
            set(|b| b.for_cluster),
            case.cluster,
            "{}: cluster",
            case.name
        );
        assert_eq!(set(|b| b.for_local), case.local, "{}: local", case.name);
        for b in &p.backends {
            let ready = case
                .endpoints
                .iter()
                .any(|e| e.addr == b.address.to_string() && e.ready);
            assert_eq!(b.terminating, !ready, "{}: {b:?}", case.name);
        }
    }
}
