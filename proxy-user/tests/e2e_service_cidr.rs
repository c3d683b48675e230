//! End to end: ServiceCIDRs (`networking.k8s.io/v1`, GA in Kubernetes
//! 1.33) in the multi-node harness. Like kube-proxy's nftables mode ("Drop
//! traffic to unallocated ClusterIPs"), a pod's traffic to an address
//! inside a service CIDR that no Service holds is dropped (the connection
//! times out, `drop_unallocated_service_ip` counts it) instead of going
//! wherever the node's routes send it; an unknown port of a live cluster IP
//! is still rejected at once; a Service created on the address answers.
//!
//! To make "wherever the routes send it" visible, node-a routes the IPv4
//! service CIDR to the outside host, which has the unallocated address and
//! an nginx on it: before the ServiceCIDR exists, the pod's request leaks
//! there and is answered. (The IPv6 service CIDR has no route: before, the
//! connection fails at once with an ICMPv6 error.)

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use svcnat_testkit::cluster::{
    Cluster, ClusterConfig, Endpoint, OUTSIDE_ADDR, Port, Proto, SERVICE_NET6, pod_addr,
    service_with_slices, url,
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");
const WAIT: Duration = Duration::from_secs(30);
/// Long enough for an answer on this machine; a dropped SYN gets none.
const CURL_TIME: Duration = Duration::from_secs(3);
/// curl's exit code for a transfer that timed out.
const CURL_TIMED_OUT: i32 = 28;

const REASON: &str = "drop_unallocated_service_ip";

fn unallocated6() -> IpAddr {
    let mut o = SERVICE_NET6.octets();
    o[15] = 0x99;
    IpAddr::from(o)
}

fn service_cidr_yaml() -> String {
    "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\n\
     spec: {cidrs: [198.19.0.0/16, '2001:db8:ff::/112']}\n"
        .to_string()
}

#[test]
fn traffic_to_an_unallocated_cluster_ip_is_dropped_until_a_service_holds_it() {
    let Some(mut c) =
        Cluster::for_test(ClusterConfig::new(BIN, 2).prefix("sc"), &["nginx", "curl"])
    else {
        return;
    };
    let unallocated4: IpAddr = "198.19.0.99".parse().expect("address");
    let unallocated6 = unallocated6();
    let client = c.add_pod(0, "client", pod_addr(0, 100)).expect("pod");
    let web = c.add_pod(1, "web", pod_addr(1, 10)).expect("pod");
    c.nginx(&web).expect("nginx");
    // Where node-a's routes send the IPv4 service CIDR: the outside host,
    // which answers on the unallocated address.
    let outside = c.outside().expect("the outside host").clone();
    let out = outside
        .command("ip")
        .args(["addr", "add", "198.19.0.99/32", "dev", "lo"])
        .status()
        .expect("ip addr");
    assert!(out.success(), "address on the outside host");
    c.node_ns(0)
        .ip(&[
            "route",
            "add",
            "198.19.0.0/16",
            "via",
            &OUTSIDE_ADDR.to_string(),
            "dev",
            "eth0",
        ])
        .expect("route the service CIDR to the outside host");
    c.nginx(&outside).expect("nginx outside");
    // A Service elsewhere in the CIDR, so that the agents run with frontends.
    let other: IpAddr = "198.19.0.20".parse().expect("address");
    let ports = [Port::tcp("http", 80, 80)];
    c.write_manifest(
        "other.yaml",
        &service_with_slices("demo", "other", &[other], &ports, &[Endpoint::of(&web)]),
    )
    .expect("other");
    c.start_agents().expect("agents");
    let web4 = [SocketAddr::new(web.addr.into(), 80)];
    let web6 = [SocketAddr::new(web.addr6.into(), 80)];
    c.wait_backends_ip(other, 80, Proto::Tcp, Some(&web4), WAIT)
        .unwrap_or_else(|e| panic!("the other service: {e}"));

    // Before any ServiceCIDR: today's behaviour, the request leaks to
    // wherever the routes send it (here the outside host answers), IPv6
    // fails at once (no route), nothing is counted.
    let o = client
        .curl(&url(unallocated4, 80), CURL_TIME)
        .expect("curl");
    assert!(
        o.ok() && o.body == outside.name,
        "leaks to the route: {o:?}"
    );
    let o = client
        .curl(&url(unallocated6, 80), CURL_TIME)
        .expect("curl");
    assert!(
        !o.ok() && o.exit != CURL_TIMED_OUT,
        "IPv6 fails at once without a route: {o:?}"
    );
    assert_eq!(c.stat(0, REASON).expect("stats"), 0);

    // The ServiceCIDR: dropped, counted, no answer.
    c.write_manifest("servicecidr.yaml", &service_cidr_yaml())
        .expect("servicecidr");
    c.wait_agent_log(0, "service CIDRs", WAIT)
        .expect("node-a wrote the service CIDRs");
    for to in [unallocated4, unallocated6] {
        let before = c.stat(0, REASON).expect("stats");
        let o = client.curl(&url(to, 80), CURL_TIME).expect("curl");
        assert_eq!(o.exit, CURL_TIMED_OUT, "to {to}: no answer: {o:?}");
        assert!(
            c.stat(0, REASON).expect("stats") > before,
            "to {to}: the drop is counted"
        );
    }
    // Other addresses of the pod are untouched: the live Service works.
    let o = client.curl(&url(other, 80), CURL_TIME).expect("curl");
    assert!(o.ok() && o.body == web.name, "the live service: {o:?}");

    // A Service created on the address answers (a retransmitted SYN would
    // reach it too: that is why the drop is no reject); its unknown ports
    // are rejected at once, as before.
    c.write_manifest(
        "late.yaml",
        &service_with_slices(
            "demo",
            "late",
            &[unallocated4, unallocated6],
            &ports,
            &[Endpoint::of(&web), Endpoint::of6(&web)],
        ),
    )
    .expect("late");
    c.wait_backends_ip(unallocated4, 80, Proto::Tcp, Some(&web4), WAIT)
        .unwrap_or_else(|e| panic!("the late service: {e}"));
    c.wait_backends_ip(unallocated6, 80, Proto::Tcp, Some(&web6), WAIT)
        .unwrap_or_else(|e| panic!("the late service (IPv6): {e}"));
    for to in [unallocated4, unallocated6] {
        let o = client.curl(&url(to, 80), CURL_TIME).expect("curl");
        assert!(o.ok() && o.body == web.name, "to {to}: {o:?}");
        let o = client.curl(&url(to, 81), CURL_TIME).expect("curl");
        assert_eq!(
            o.connect_error(),
            Some("Connection refused"),
            "to {to}:81, an unknown port: {o:?}"
        );
    }
}
