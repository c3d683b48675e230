//! The EndpointSlice controller's rules, one table or case each (the
//! behaviour each mirrors is named: pkg/controller/endpointslice and
//! pkg/controller/util/endpoint in kubernetes).

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};

use super::*;

fn svc(yaml: &str) -> Service {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad test Service: {e}\n{yaml}"))
}

fn pods(yaml: &str) -> Vec<Pod> {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad test Pods: {e}\n{yaml}"))
}

/// (address, ready, serving, terminating, nodeName) of every endpoint of
/// the slices of `family`, with the slice's ports.
type Row = (String, bool, bool, bool, Option<String>);

/// One slice: its (port name, number) pairs and its endpoints.
type SliceRows = (Vec<(String, i32)>, Vec<Row>);

fn rows(slices: &[EndpointSlice], family: &str) -> Vec<SliceRows> {
    slices
        .iter()
        .filter(|s| s.address_type == family)
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap_or(0)))
                .collect();
            let eps = s
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    (
                        e.addresses.join(","),
                        c.ready.unwrap_or(false),
                        c.serving.unwrap_or(false),
                        c.terminating.unwrap_or(false),
                        e.node_name.clone(),
                    )
                })
                .collect();
            (ports, eps)
        })
        .collect()
}

const WEB: &str = "
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

fn pod(name: &str, labels: &str, ip: &str, extra_status: &str) -> String {
    format!(
        "- metadata: {{namespace: demo, name: {name}, labels: {labels}}}
  spec: {{nodeName: node-a, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}
  status: {{phase: Running, podIP: '{ip}', conditions: [{{type: Ready, status: 'True'}}] {extra_status}}}
"
    )
}

fn row(addr: &str, (ready, serving, terminating): (bool, bool, bool)) -> Row {
    (
        addr.to_owned(),
        ready,
        serving,
        terminating,
        Some("node-a".to_owned()),
    )
}

const READY: (bool, bool, bool) = (true, true, false);

/// Label selection within the Service's namespace (the controller lists
/// the Pods of the namespace matching `labels.Set(spec.selector)`).
#[test]
fn pods_of_the_namespace_whose_labels_match_are_selected() {
    let mut all = pods(&format!(
        "{}{}{}",
        pod("w1", "{app: web, tier: fe}", "198.18.1.10", ""),
        pod("w2", "{app: web}", "198.18.1.11", ""),
        pod("db", "{app: db}", "198.18.1.12", ""),
    ));
    let mut other = pods(&pod("w3", "{app: web}", "198.18.1.13", ""));
    other[0].metadata.namespace = Some("elsewhere".into());
    all.extend(other);
    let got = derive(&[svc(WEB)], &all, &[]);
    assert_eq!(
        rows(&got.slices, "IPv4"),
        vec![(
            vec![("http".into(), 8080)],
            vec![row("198.18.1.10", READY), row("198.18.1.11", READY)]
        )]
    );
    let sel = &got.services[&ServiceName::new("demo", "web")];
    assert_eq!(sel.pods.keys().collect::<Vec<_>>(), ["w1", "w2"]);
    assert_eq!(
        sel.left_out["db"],
        [LeftOut::LabelsDiffer {
            key: "app".into(),
            value: "web".into()
        }]
    );
    assert!(!sel.left_out.contains_key("w3"), "another namespace");
    let s = &got.slices[0];
    assert_eq!(
        s.metadata
            .labels
            .as_ref()
            .map(|l| l[SERVICE_NAME_LABEL].as_str()),
        Some("web")
    );
}

/// No endpoints for a Service without a selector (hand-written slices are
/// its endpoints), with an empty one, or of type ExternalName.
#[test]
fn services_without_a_selector_get_nothing() {
    let all = pods(&pod("w1", "{app: web}", "198.18.1.10", ""));
    for yaml in [
        "metadata: {namespace: demo, name: a}\nspec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}",
        "metadata: {namespace: demo, name: b}\nspec: {clusterIP: 198.19.0.11, selector: {}, ports: [{port: 80}]}",
        "metadata: {namespace: demo, name: c}\nspec: {type: ExternalName, externalName: x.example, selector: {app: web}}",
    ] {
        let got = derive(&[svc(yaml)], &all, &[]);
        assert!(got.slices.is_empty(), "{yaml}: {:?}", got.slices);
        assert!(got.services.is_empty(), "{yaml}");
    }
}

/// `ShouldPodBeInEndpoints`: no IP, or a terminal phase, leaves a Pod out;
/// a terminating Pod stays (the EndpointSlice controller includes them).
#[test]
fn pods_without_an_ip_or_finished_are_left_out() {
    let mut all = pods(&format!(
        "{}{}{}",
        pod("ok", "{app: web}", "198.18.1.10", ""),
        pod("done", "{app: web}", "198.18.1.11", ""),
        pod("failed", "{app: web}", "198.18.1.12", ""),
    ));
    all[1].status.as_mut().expect("status").phase = Some("Succeeded".into());
    all[2].status.as_mut().expect("status").phase = Some("Failed".into());
    let mut pending = pods(&pod("pending", "{app: web}", "", ""));
    pending[0].status.as_mut().expect("status").pod_ip = None;
    all.extend(pending);
    let got = derive(&[svc(WEB)], &all, &[]);
    let sel = &got.services[&ServiceName::new("demo", "web")];
    assert_eq!(sel.pods.keys().collect::<Vec<_>>(), ["ok"]);
    assert_eq!(
        sel.left_out["done"],
        [LeftOut::Finished("Succeeded".into())]
    );
    assert_eq!(sel.left_out["failed"], [LeftOut::Finished("Failed".into())]);
    assert_eq!(sel.left_out["pending"], [LeftOut::NoIp]);
}

/// `podToEndpoint`: serving = the Ready condition, terminating = a
/// deletion timestamp, ready = serving and not terminating, or always with
/// `publishNotReadyAddresses`.
#[test]
fn conditions_follow_readiness_deletion_and_publish_not_ready() {
    let all = pods(&format!(
        "{}{}{}",
        pod("ready", "{app: web}", "198.18.1.10", ""),
        pod("unready", "{app: web}", "198.18.1.11", ""),
        pod("leaving", "{app: web}", "198.18.1.12", ""),
    ));
    let mut all = all;
    all[1].status.as_mut().expect("status").conditions = Some(vec![
        serde_saphyr::from_str("{type: Ready, status: 'False'}").expect("condition"),
    ]);
    all[2].metadata.deletion_timestamp =
        Some(serde_saphyr::from_str("'2026-12-03T00:00:00Z'").expect("time"));
    let got = derive(&[svc(WEB)], &all, &[]);
    assert_eq!(
        rows(&got.slices, "IPv4")[0].1,
        vec![
            row("198.18.1.10", (true, true, false)),
            row("198.18.1.11", (false, false, false)),
            row("198.18.1.12", (false, true, true)),
        ]
    );
    let mut publish = svc(WEB);
    publish
        .spec
        .as_mut()
        .expect("spec")
        .publish_not_ready_addresses = Some(true);
    let got = derive(&[publish], &all, &[]);
    assert_eq!(
        rows(&got.slices, "IPv4")[0].1,
        vec![
            row("198.18.1.10", (true, true, false)),
            row("198.18.1.11", (true, false, false)),
            row("198.18.1.12", (true, true, true)),
        ]
    );
}

/// `FindPort`: a named targetPort resolves per Pod to its container port
/// of that name and protocol; a Pod without it is left out of that port
/// only, and endpoints group by their resolved ports (one slice each).
#[test]
fn named_target_ports_resolve_per_pod() {
    let svc = svc("
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: 9100}
");
    let all = pods(
        "
- metadata: {namespace: demo, name: a, labels: {app: web}}
  spec: {containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
  status: {podIP: 198.18.1.10, conditions: [{type: Ready, status: 'True'}]}
- metadata: {namespace: demo, name: b, labels: {app: web}}
  spec: {containers: [{name: c, ports: [{name: web, containerPort: 8081}]}]}
  status: {podIP: 198.18.1.11, conditions: [{type: Ready, status: 'True'}]}
- metadata: {namespace: demo, name: c, labels: {app: web}}
  spec: {containers: [{name: c, ports: [{name: web, containerPort: 8080, protocol: UDP}]}]}
  status: {podIP: 198.18.1.12, conditions: [{type: Ready, status: 'True'}]}
",
    );
    let got = derive(std::slice::from_ref(&svc), &all, &[]);
    let none = None;
    let r = |a: &str| (a.to_owned(), true, true, false, none.clone());
    assert_eq!(
        rows(&got.slices, "IPv4"),
        vec![
            (
                vec![("http".into(), 8080), ("metrics".into(), 9100)],
                vec![r("198.18.1.10")]
            ),
            (
                vec![("http".into(), 8081), ("metrics".into(), 9100)],
                vec![r("198.18.1.11")]
            ),
            (vec![("metrics".into(), 9100)], vec![r("198.18.1.12")]),
        ]
    );
    let sel = &got.services[&ServiceName::new("demo", "web")];
    assert_eq!(
        sel.left_out["c"],
        [LeftOut::NoNamedPort {
            port: "http".into(),
            target: "web".into()
        }]
    );
    // Through the model: each pod on its own port; c only for metrics.
    let refs: Vec<&EndpointSlice> = got.slices.iter().collect();
    let m = crate::model::model_service(&svc, &refs, &crate::model::NodeInfo::default());
    let backends = |port: &str| -> Vec<String> {
        m.ports
            .iter()
            .find(|p| p.port_name == port)
            .map(|p| {
                p.backends
                    .iter()
                    .map(|b| format!("{}:{}", b.address, b.port))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(backends("http"), ["198.18.1.10:8080", "198.18.1.11:8081"]);
    assert_eq!(
        backends("metrics"),
        ["198.18.1.10:9100", "198.18.1.11:9100", "198.18.1.12:9100"]
    );
}

/// One address type per family of the Service (`getAddressTypesForService`):
/// a dual-stack Service gets an IPv4 and an IPv6 slice; a Pod without an
/// IPv6 address is only in the first; nodeName and the Node's zone are
/// copied; the hostname only for a headless Service the Pod's subdomain
/// names.
#[test]
fn families_nodes_zones_and_hostnames() {
    let svc = svc("
metadata: {namespace: demo, name: web}
spec:
  clusterIP: None
  ipFamilies: [IPv4, IPv6]
  selector: {app: web}
  ports: [{name: http, port: 80}]
");
    let all = pods("
- metadata: {namespace: demo, name: a, labels: {app: web}}
  spec: {nodeName: node-a, hostname: a, subdomain: web, containers: [{name: c}]}
  status: {podIP: 198.18.1.10, podIPs: [{ip: 198.18.1.10}, {ip: '2001:db8:1::10'}], conditions: [{type: Ready, status: 'True'}]}
- metadata: {namespace: demo, name: b, labels: {app: web}}
  spec: {nodeName: node-b, hostname: b, subdomain: other, containers: [{name: c}]}
  status: {podIP: 198.18.2.10, conditions: [{type: Ready, status: 'True'}]}
");
    let nodes: Vec<Node> = serde_saphyr::from_str(
        "[{metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}}]",
    )
    .expect("nodes");
    let got = derive(&[svc], &all, &nodes);
    let v4: Vec<&EndpointSlice> = got
        .slices
        .iter()
        .filter(|s| s.address_type == "IPv4")
        .collect();
    let v6: Vec<&EndpointSlice> = got
        .slices
        .iter()
        .filter(|s| s.address_type == "IPv6")
        .collect();
    assert_eq!((v4.len(), v6.len()), (1, 1));
    let a = &v4[0].endpoints[0];
    assert_eq!(
        (
            a.zone.as_deref(),
            a.hostname.as_deref(),
            a.node_name.as_deref()
        ),
        (Some("zone-a"), Some("a"), Some("node-a"))
    );
    let b = &v4[0].endpoints[1];
    assert_eq!((b.zone.as_deref(), b.hostname.as_deref()), (None, None));
    assert_eq!(v6[0].endpoints.len(), 1);
    assert_eq!(v6[0].endpoints[0].addresses, ["2001:db8:1::10"]);
    let sel = &got.services[&ServiceName::new("demo", "web")];
    assert_eq!(sel.left_out["b"], [LeftOut::NoAddressOfFamily(Family::V6)]);
}

/// What the controller wrote for a small cluster, in the shape `kubectl
/// get pods,services,endpointslices -o yaml` prints (written by hand from
/// the controller's rules): the derived endpoints equal its slice's.
#[test]
fn the_derived_slice_equals_the_controllers_on_a_small_dump() {
    let dump: serde_json::Value =
        serde_saphyr::from_str(include_str!("testdata/bootcamp.yaml")).expect("the dump");
    let items = dump["items"].as_array().expect("items");
    let of = |kind: &str| {
        items
            .iter()
            .filter(|i| i["kind"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let services: Vec<Service> = of("Service")
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("a Service"))
        .collect();
    let pods: Vec<Pod> = of("Pod")
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("a Pod"))
        .collect();
    let theirs: Vec<EndpointSlice> = of("EndpointSlice")
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("an EndpointSlice"))
        .collect();
    let ours = derive(&services, &pods, &[]);
    let key = |s: &[EndpointSlice]| {
        let mut r: Vec<_> = rows(s, "IPv4")
            .into_iter()
            .flat_map(|(ports, eps)| eps.into_iter().map(move |e| (ports.clone(), e)))
            .collect();
        r.sort();
        r
    };
    assert_eq!(key(&ours.slices), key(&theirs));
    assert!(!key(&theirs).is_empty());
    let by_service: BTreeMap<String, usize> = ours
        .slices
        .iter()
        .map(|s| {
            (
                s.metadata.labels.as_ref().expect("labels")[SERVICE_NAME_LABEL].clone(),
                s.endpoints.len(),
            )
        })
        .collect();
    assert_eq!(
        by_service,
        BTreeMap::from([("kubernetes-bootcamp".to_string(), 2)])
    );
}

mod property {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// A Pod: namespace (0-1), app label (none, a, b), tier label (none,
    /// x), has an IP, finished, ready.
    type PodSpec = (u8, u8, u8, bool, bool, bool);
    /// A Service: namespace, app selector (none, a, b), tier selector.
    type SvcSpec = (u8, u8, u8);

    fn labels(app: u8, tier: u8) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        if app > 0 {
            l.insert("app".to_string(), ["", "a", "b"][app as usize].to_string());
        }
        if tier > 0 {
            l.insert("tier".to_string(), "x".to_string());
        }
        l
    }

    fn make_pod(i: usize, (ns, app, tier, ip, done, ready): PodSpec) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": format!("ns{ns}"), "name": format!("p{i}"), "labels": labels(app, tier)},
            "spec": {"containers": [{"name": "c"}]},
            "status": {
                "phase": if done { "Succeeded" } else { "Running" },
                "podIP": if ip { format!("198.18.1.{}", i + 1) } else { String::new() },
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .expect("a Pod")
    }

    fn make_svc(j: usize, (ns, app, tier): SvcSpec) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": format!("ns{ns}"), "name": format!("s{j}")},
            "spec": {"clusterIP": format!("198.19.0.{}", j + 1), "selector": labels(app, tier),
                     "ports": [{"name": "http", "port": 80}]},
        }))
        .expect("a Service")
    }

    proptest! {
        /// The derived endpoints of every Service equal a brute-force
        /// evaluation of the rules: same namespace, every selector pair in
        /// the labels, an IP, not finished; ready as the Ready condition.
        #[test]
        fn derived_endpoints_equal_a_brute_force_evaluation(
            pods in proptest::collection::vec(
                (0..2u8, 0..3u8, 0..2u8, any::<bool>(), any::<bool>(), any::<bool>()), 0..12),
            svcs in proptest::collection::vec((0..2u8, 0..3u8, 0..2u8), 1..5),
        ) {
            let pod_objs: Vec<Pod> = pods.iter().enumerate().map(|(i, p)| make_pod(i, *p)).collect();
            let svc_objs: Vec<Service> = svcs.iter().enumerate().map(|(j, s)| make_svc(j, *s)).collect();
            let got = derive(&svc_objs, &pod_objs, &[]);
            for (j, &(sns, sapp, stier)) in svcs.iter().enumerate() {
                let selector = labels(sapp, stier);
                let want: BTreeSet<(String, bool)> = pods
                    .iter()
                    .enumerate()
                    .filter(|(_, (ns, app, tier, ip, done, _))| {
                        let l = labels(*app, *tier);
                        *ns == sns && *ip && !*done && !selector.is_empty()
                            && selector.iter().all(|(k, v)| l.get(k) == Some(v))
                    })
                    .map(|(i, p)| (format!("198.18.1.{}", i + 1), p.5))
                    .collect();
                let name = format!("s{j}");
                let have: BTreeSet<(String, bool)> = got
                    .slices
                    .iter()
                    .filter(|s| s.metadata.namespace.as_deref() == Some(&format!("ns{sns}"))
                        && s.metadata.labels.as_ref().is_some_and(|l| l[SERVICE_NAME_LABEL] == name))
                    .flat_map(|s| s.endpoints.iter())
                    .map(|e| (e.addresses[0].clone(), e.conditions.as_ref().and_then(|c| c.ready) == Some(true)))
                    .collect();
                prop_assert_eq!(have, want, "service {}", name);
            }
        }
    }
}
