//! End to end, standalone mode with selectors: a folder of Pods and a
//! Service with a selector (no EndpointSlice) gives a working ClusterIP
//! and NodePort on the multi-node harness, and the traffic follows the
//! Pods as the EndpointSlice controller would make it: a relabelled Pod
//! leaves the Service, a Pod that is not ready leaves it, a deleted Pod
//! leaves it, and deleting the Service leaves the Pods answering on their
//! own addresses (the Kubernetes tutorial "Using a Service to expose your
//! app").

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, Host, Proto, node_addr, pod_addr, pod_yaml, url,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const NS: &str = "default";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 80);
const NODE_PORT: u16 = 30080;
const WAIT: Duration = Duration::from_secs(30);
const CURL_TIME: Duration = Duration::from_secs(5);

/// The Service `kubectl expose deployment/kubernetes-bootcamp
/// --type=NodePort --port 80` writes (with a fixed cluster IP and node
/// port).
const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: kubernetes-bootcamp
  namespace: default
  labels: {app: kubernetes-bootcamp}
spec:
  type: NodePort
  clusterIP: 198.19.0.80
  clusterIPs: [198.19.0.80]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  externalTrafficPolicy: Cluster
  selector: {app: kubernetes-bootcamp}
  ports:
  - {nodePort: 30080, port: 80, protocol: TCP, targetPort: 80}
";

const APP: (&str, &str) = ("app", "kubernetes-bootcamp");

/// A Pod of the manifests: the pod, its labels, whether it is ready.
type PodState<'a> = (&'a Host, &'a [(&'a str, &'a str)], bool);

fn write_pods(c: &Cluster, pods: &[PodState<'_>]) {
    let text: Vec<String> = pods
        .iter()
        .map(|(p, labels, ready)| pod_yaml(NS, p, labels, *ready))
        .collect();
    c.write_manifest("pods.yaml", &text.join("---\n"))
        .expect("pods");
}

fn wait_backends(c: &Cluster, pods: &[&Host], what: &str) {
    // No pods: the frontend stays, without backends (rejecting).
    let set: BTreeSet<String> = pods
        .iter()
        .map(|p| SocketAddr::new(p.addr.into(), 80).to_string())
        .collect();
    c.wait_frontends(what, WAIT, |_, fs| {
        fs.iter()
            .find(|f| f.vip == VIP && f.port == 80 && f.protocol == Proto::Tcp.inspect())
            .is_some_and(|f| f.backend_set() == set)
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn spread(client: &Host, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in client.curl_many(url, n, CURL_TIME).expect("curl") {
        assert!(o.ok(), "{} to {url}: {o:?}", client.name);
        *counts.entry(o.body).or_default() += 1;
    }
    counts
}

fn names(counts: &BTreeMap<String, usize>) -> BTreeSet<&str> {
    counts.keys().map(String::as_str).collect()
}

#[test]
fn a_selector_service_follows_its_pods_through_relabel_unready_and_delete() {
    let Some(mut c) =
        Cluster::for_test(ClusterConfig::new(BIN, 2).prefix("sel"), &["nginx", "curl"])
    else {
        return;
    };
    let a1 = c.add_pod(0, "a1", pod_addr(0, 10)).expect("pod");
    let b1 = c.add_pod(1, "b1", pod_addr(1, 10)).expect("pod");
    let a2 = c.add_pod(0, "a2", pod_addr(0, 11)).expect("pod");
    for p in [&a1, &b1, &a2] {
        c.nginx(p).expect("nginx");
    }
    let client = c.add_pod(1, "cb", pod_addr(1, 100)).expect("pod");
    let other: &[(&str, &str)] = &[("app", "other")];
    write_pods(
        &c,
        &[(&a1, &[APP], true), (&b1, &[APP], true), (&a2, other, true)],
    );
    c.write_manifest("service.yaml", SERVICE).expect("service");
    c.start_agents().expect("agents");
    wait_backends(&c, &[&a1, &b1], "the selected pods");

    // ClusterIP from a pod, NodePort from outside on both nodes.
    let both = BTreeSet::from(["a1", "b1"]);
    assert_eq!(names(&spread(&client, &url(VIP, 80), 30)), both);
    let outside = c.outside().expect("outside client").clone();
    for node in 0..2 {
        let np = url(node_addr(node), NODE_PORT);
        assert_eq!(names(&spread(&outside, &np, 30)), both, "{np}");
    }

    // kubectl label pods a2 app=kubernetes-bootcamp --overwrite: it joins;
    // b1 relabelled away: it leaves.
    write_pods(
        &c,
        &[(&a1, &[APP], true), (&b1, other, true), (&a2, &[APP], true)],
    );
    wait_backends(&c, &[&a1, &a2], "relabelled pods");
    assert_eq!(
        names(&spread(&client, &url(VIP, 80), 30)),
        BTreeSet::from(["a1", "a2"])
    );

    // a2 fails its readiness probe: it leaves (not ready, not terminating).
    write_pods(
        &c,
        &[
            (&a1, &[APP], true),
            (&b1, other, true),
            (&a2, &[APP], false),
        ],
    );
    wait_backends(&c, &[&a1], "a2 not ready");
    assert_eq!(
        names(&spread(&client, &url(VIP, 80), 10)),
        BTreeSet::from(["a1"])
    );

    // a1 deleted: no endpoint left, a connection is refused at once.
    write_pods(&c, &[(&b1, other, true), (&a2, &[APP], false)]);
    wait_backends(&c, &[], "a1 deleted");
    let o = client.curl(&url(VIP, 80), CURL_TIME).expect("curl");
    assert!(o.connect_error().is_some(), "no endpoint: {o:?}");

    // kubectl delete service -l app=kubernetes-bootcamp: the frontend goes,
    // the pods keep answering on their own addresses.
    c.remove_manifest("service.yaml").expect("remove");
    c.wait_backends(VIP, 80, Proto::Tcp, None, WAIT)
        .expect("service gone");
    for p in [&b1, &a2] {
        let o = client.curl(&url(p.addr, 80), CURL_TIME).expect("curl");
        assert!(o.ok() && o.body == p.name, "{}: {o:?}", p.name);
    }
}
