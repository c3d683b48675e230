//! External frontends between services: refused addresses, the
//! `--external-ip-cidrs` allow-list, and the oldest claimant owning a
//! shared frontend, whole-cluster ([`model_cluster_with`]) and incremental
//! ([`Claims::set`]).

use std::collections::BTreeSet;

use super::*;

/// kube-dns: cluster IP 198.19.0.10, DNS on 53/UDP and 53/TCP.
const KUBE_DNS: &str = "
metadata: {namespace: kube-system, name: kube-dns, creationTimestamp: '2025-03-01T00:00:00Z', uid: dns}
spec:
  clusterIP: 198.19.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
";

fn services(yamls: &[&str]) -> Vec<Service> {
    yamls.iter().map(|y| service(y)).collect()
}

fn resolved(yamls: &[&str], policy: &ExternalPolicy) -> BTreeMap<ServiceName, ServiceModel> {
    model_cluster_with(&services(yamls), &[], &node(), policy)
}

fn default_policy() -> ExternalPolicy {
    ExternalPolicy::for_node(node().addresses)
}

fn name(text: &str) -> ServiceName {
    let (namespace, name) = text.split_once('/').expect("namespace/name");
    ServiceName::new(namespace, name)
}

/// Every frontend of a model, in port order.
fn frontends_of(m: &ServiceModel) -> Vec<Frontend> {
    m.ports.iter().flat_map(|p| p.frontends.clone()).collect()
}

struct RefusalCase {
    name: &'static str,
    services: Vec<&'static str>,
    policy: ExternalPolicy,
    /// The service checked.
    service: &'static str,
    /// Its frontends once resolved.
    frontends: Vec<Frontend>,
    /// Its skips, as (port, label).
    skips: Vec<(Option<&'static str>, &'static str)>,
    /// Text the first skip's message must contain.
    says: &'static str,
}

/// kube-proxy takes every `spec.externalIPs` entry and LB IP as given (its
/// nftables `service-ips` map would route `198.19.0.10 . udp . 53` to
/// whichever service wrote it last: the CVE-2020-8554 hijack); here an
/// external IP or LB IP on any cluster IP or node address is refused, and
/// `--external-ip-cidrs` limits external IPs as the `externalip-webhook`'s
/// `--allowed-external-ip-cidrs` does at admission (spec.externalIPs only).
#[test]
fn external_ips_and_lb_ips_never_take_a_cluster_ip_or_a_node_address() {
    use FrontendKind::*;
    use Protocol::{Tcp, Udp};
    let allow = |cidrs: &[&str]| ExternalPolicy {
        allowed_external_ips: Some(cidrs.iter().map(|c| parse_cidr(c).expect("cidr")).collect()),
        ..default_policy()
    };
    let cases = [
        RefusalCase {
            name: "an older service claiming kube-dns's cluster IP as an external IP",
            services: vec![
                KUBE_DNS,
                "
metadata: {namespace: a-evil, name: dns, creationTimestamp: '2020-01-01T00:00:00Z', uid: evil}
spec:
  clusterIP: 198.19.0.66
  externalIPs: [198.19.0.10, 198.18.200.1]
  ports: [{name: dns, port: 53, protocol: UDP}]
",
            ],
            policy: default_policy(),
            service: "a-evil/dns",
            frontends: vec![
                fe(ClusterIp, "198.19.0.66", 53, Udp),
                fe(ExternalIp, "198.18.200.1", 53, Udp),
            ],
            skips: vec![(None, "external_is_cluster_ip")],
            says: "external IP 198.19.0.10 is the cluster IP of service kube-system/kube-dns",
        },
        RefusalCase {
            name: "kube-dns keeps both its ports",
            services: vec![
                KUBE_DNS,
                "
metadata: {namespace: a-evil, name: dns, creationTimestamp: '2020-01-01T00:00:00Z'}
spec:
  clusterIP: 198.19.0.66
  externalIPs: [198.19.0.10]
  ports: [{name: dns, port: 53, protocol: UDP}]
",
            ],
            policy: default_policy(),
            service: "kube-system/kube-dns",
            frontends: vec![
                fe(ClusterIp, "198.19.0.10", 53, Udp),
                fe(ClusterIp, "198.19.0.10", 53, Tcp),
            ],
            skips: vec![],
            says: "",
        },
        RefusalCase {
            name: "another port of a cluster IP is refused too (the address is taken)",
            services: vec![
                KUBE_DNS,
                "
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.20
  externalIPs: [198.19.0.10]
  ports: [{name: http, port: 80}]
",
            ],
            policy: default_policy(),
            service: "demo/web",
            frontends: vec![cip("198.19.0.20", 80)],
            skips: vec![(None, "external_is_cluster_ip")],
            says: "198.19.0.10 is the cluster IP of service kube-system/kube-dns",
        },
        RefusalCase {
            name: "its own cluster IP as an external IP",
            services: vec![
                "
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.20
  externalIPs: [198.19.0.20]
  ports: [{name: http, port: 80}]
",
            ],
            policy: default_policy(),
            service: "demo/web",
            frontends: vec![cip("198.19.0.20", 80)],
            skips: vec![(None, "external_is_cluster_ip")],
            says: "198.19.0.20 is the cluster IP of service demo/web",
        },
        RefusalCase {
            name: "the cluster IP of a service another proxy implements",
            services: vec![
                "
metadata:
  namespace: demo
  name: other
  labels: {service.kubernetes.io/service-proxy-name: someone-else}
spec:
  clusterIP: 198.19.0.30
  ports: [{name: http, port: 80}]
",
                "
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.20
  externalIPs: [198.19.0.30]
  ports: [{name: http, port: 80}]
",
            ],
            policy: default_policy(),
            service: "demo/web",
            frontends: vec![cip("198.19.0.20", 80)],
            skips: vec![(None, "external_is_cluster_ip")],
            says: "198.19.0.30 is the cluster IP of service demo/other",
        },
        RefusalCase {
            name: "an LB IP on a cluster IP",
            services: vec![
                KUBE_DNS,
                "
metadata: {namespace: demo, name: lb}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  clusterIP: 198.19.0.20
  ports: [{name: dns, port: 53, protocol: UDP}]
status: {loadBalancer: {ingress: [{ip: 198.19.0.10}, {ip: 198.18.100.1}]}}
",
            ],
            policy: default_policy(),
            service: "demo/lb",
            frontends: vec![
                fe(ClusterIp, "198.19.0.20", 53, Udp),
                fe(LoadBalancer, "198.18.100.1", 53, Udp),
            ],
            skips: vec![(None, "external_is_cluster_ip")],
            says: "load-balancer IP 198.19.0.10 is the cluster IP of service kube-system/kube-dns",
        },
        RefusalCase {
            name: "an external IP and an LB IP on this node's addresses",
            services: vec![
                "
metadata: {namespace: demo, name: lb}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  clusterIP: 198.19.0.20
  externalIPs: [198.18.0.1]
  ports: [{name: ssh, port: 22}]
status: {loadBalancer: {ingress: [{ip: 198.18.0.2}]}}
",
            ],
            policy: default_policy(),
            service: "demo/lb",
            frontends: vec![cip("198.19.0.20", 22)],
            skips: vec![
                (None, "external_is_node_address"),
                (None, "external_is_node_address"),
            ],
            says: "external IP 198.18.0.1 is an address of this node",
        },
        RefusalCase {
            name: "--external-ip-cidrs: external IPs outside are refused, LB IPs are not limited",
            services: vec![
                "
metadata: {namespace: demo, name: lb}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  clusterIP: 198.19.0.20
  externalIPs: [198.18.200.1, 198.18.201.1, '2001:db8:200::1']
  ports: [{name: http, port: 80}]
status: {loadBalancer: {ingress: [{ip: 198.18.100.1}]}}
",
            ],
            policy: allow(&["198.18.200.0/24", "2001:db8:200::/48"]),
            service: "demo/lb",
            frontends: vec![
                cip("198.19.0.20", 80),
                fe(ExternalIp, "198.18.200.1", 80, Tcp),
                fe(LoadBalancer, "198.18.100.1", 80, Tcp),
                fe(ExternalIp, "2001:db8:200::1", 80, Tcp),
            ],
            skips: vec![(None, "external_ip_not_allowed")],
            says: "external IP 198.18.201.1 is outside --external-ip-cidrs",
        },
        RefusalCase {
            name: "an empty allow-list refuses every external IP",
            services: vec![
                "
metadata: {namespace: demo, name: web}
spec:
  clusterIP: 198.19.0.20
  externalIPs: [198.18.200.1]
  ports: [{name: http, port: 80}]
",
            ],
            policy: allow(&[]),
            service: "demo/web",
            frontends: vec![cip("198.19.0.20", 80)],
            skips: vec![(None, "external_ip_not_allowed")],
            says: "198.18.200.1",
        },
    ];
    for case in cases {
        let models = resolved(&case.services, &case.policy);
        let m = &models[&name(case.service)];
        assert_eq!(frontends_of(m), case.frontends, "{}", case.name);
        let skips: Vec<(Option<&str>, &str)> = m
            .skipped
            .iter()
            .map(|s| (s.port.as_deref(), s.reason.label()))
            .collect();
        assert_eq!(skips, case.skips, "{}", case.name);
        if let Some(first) = m.skipped.first() {
            let text = first.to_string();
            assert!(text.contains(case.says), "{}: {text}", case.name);
        }
    }
}

/// A service with an external IP `ip` on `port`/TCP (and cluster IP
/// `cluster`), created at `created` (`None`: no timestamp) with `uid`.
fn claimant(
    namespace: &str,
    name: &str,
    created: Option<&str>,
    uid: Option<&str>,
    cluster: &str,
    ip: &str,
    port: u16,
) -> String {
    let mut meta = format!("{{namespace: {namespace}, name: {name}");
    if let Some(t) = created {
        meta.push_str(&format!(", creationTimestamp: '{t}'"));
    }
    if let Some(u) = uid {
        meta.push_str(&format!(", uid: {u}"));
    }
    meta.push('}');
    format!(
        "
metadata: {meta}
spec:
  clusterIP: {cluster}
  externalIPs: ['{ip}']
  ports: [{{name: http, port: {port}}}]
"
    )
}

struct OwnerCase {
    name: &'static str,
    services: Vec<String>,
    policy: ExternalPolicy,
    /// (address, port) -> the service that must own it.
    owners: Vec<(&'static str, u16, &'static str)>,
    /// Services that must be told they lost a frontend.
    losers: Vec<&'static str>,
}

/// When services claim one frontend, the oldest (creationTimestamp, then
/// uid) owns it, whatever order they come in. kube-proxy has no such rule:
/// its nftables `service-ips` map keeps whichever element was written last
/// in a sync (`ensureElem` replaces a different value), in Go map order,
/// so the owner changes from one sync or node to the next.
#[test]
fn the_oldest_claimant_owns_a_shared_external_frontend() {
    const E: &str = "198.18.200.1";
    let jan = Some("2025-01-01T00:00:00Z");
    let feb = Some("2025-02-01T00:00:00Z");
    let cases = [
        OwnerCase {
            name: "the older owns it though the younger sorts first",
            services: vec![
                claimant("a", "young", feb, Some("u1"), "198.19.0.1", E, 80),
                claimant("z", "old", jan, Some("u2"), "198.19.0.2", E, 80),
            ],
            policy: default_policy(),
            owners: vec![(E, 80, "z/old")],
            losers: vec!["a/young"],
        },
        OwnerCase {
            name: "created in the same second: the smaller uid",
            services: vec![
                claimant("a", "first", jan, Some("bbb"), "198.19.0.1", E, 80),
                claimant("b", "second", jan, Some("aaa"), "198.19.0.2", E, 80),
            ],
            policy: default_policy(),
            owners: vec![(E, 80, "b/second")],
            losers: vec!["a/first"],
        },
        OwnerCase {
            name: "a service with a timestamp before one without",
            services: vec![
                claimant("a", "manifest", None, None, "198.19.0.1", E, 80),
                claimant("b", "api", feb, Some("u"), "198.19.0.2", E, 80),
            ],
            policy: default_policy(),
            owners: vec![(E, 80, "b/api")],
            losers: vec!["a/manifest"],
        },
        OwnerCase {
            name: "no timestamps, no uids: namespace/name",
            services: vec![
                claimant("b", "web", None, None, "198.19.0.1", E, 80),
                claimant("a", "web", None, None, "198.19.0.2", E, 80),
            ],
            policy: default_policy(),
            owners: vec![(E, 80, "a/web")],
            losers: vec!["b/web"],
        },
        OwnerCase {
            name: "other ports of one external IP are no conflict",
            services: vec![
                claimant("a", "young", feb, Some("u1"), "198.19.0.1", E, 80),
                claimant("z", "old", jan, Some("u2"), "198.19.0.2", E, 443),
            ],
            policy: default_policy(),
            owners: vec![(E, 80, "a/young"), (E, 443, "z/old")],
            losers: vec![],
        },
        OwnerCase {
            name: "a refused claim owns nothing: the younger eligible one gets it",
            services: vec![
                claimant("z", "old", jan, Some("u2"), "198.19.0.2", E, 80),
                "
metadata: {namespace: a, name: lb, creationTimestamp: '2025-02-01T00:00:00Z', uid: u1}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  clusterIP: 198.19.0.1
  ports: [{name: http, port: 80}]
status: {loadBalancer: {ingress: [{ip: 198.18.200.1}]}}
"
                .to_owned(),
            ],
            policy: ExternalPolicy {
                allowed_external_ips: Some(vec![parse_cidr("198.18.100.0/24").expect("cidr")]),
                ..default_policy()
            },
            owners: vec![(E, 80, "a/lb")],
            losers: vec![],
        },
    ];
    for case in cases {
        let mut texts: Vec<&str> = case.services.iter().map(String::as_str).collect();
        for order in 0..2 {
            if order == 1 {
                texts.reverse();
            }
            let models = resolved(&texts, &case.policy);
            for (address, port, owner) in &case.owners {
                let holders: Vec<&ServiceName> = models
                    .values()
                    .filter(|m| {
                        frontends_of(m)
                            .iter()
                            .any(|f| f.address == ip(address) && f.port == *port)
                    })
                    .map(|m| &m.name)
                    .collect();
                assert_eq!(
                    holders,
                    [&name(owner)],
                    "{} (order {order}): {address}:{port}",
                    case.name
                );
            }
            let losers: BTreeSet<String> = models
                .values()
                .filter(|m| {
                    m.skipped
                        .iter()
                        .any(|s| s.reason.label() == "frontend_owned")
                })
                .map(|m| m.name.to_string())
                .collect();
            let want: BTreeSet<String> = case.losers.iter().map(|s| s.to_string()).collect();
            assert_eq!(losers, want, "{} (order {order})", case.name);
            for loser in &case.losers {
                let m = &models[&name(loser)];
                let skip = m
                    .skipped
                    .iter()
                    .find(|s| s.reason.label() == "frontend_owned")
                    .expect("the loser is told");
                assert_eq!(skip.port.as_deref(), Some("http"), "{}", case.name);
                assert!(
                    skip.to_string().contains("belongs to the older service"),
                    "{}: {skip}",
                    case.name
                );
            }
        }
    }
}

/// The incremental index names the services to re-resolve, and ends where
/// the whole-cluster one starts, whatever the order of changes.
#[test]
fn claims_kept_incrementally_name_who_to_resolve_again() {
    const E: &str = "198.18.200.1";
    let jan = Some("2025-01-01T00:00:00Z");
    let feb = Some("2025-02-01T00:00:00Z");
    let node = node();
    let model_of = |yaml: &str| model_service(&service(yaml), &[], &node);
    let young = model_of(&claimant(
        "a",
        "young",
        feb,
        Some("u1"),
        "198.19.0.1",
        E,
        80,
    ));
    let old = model_of(&claimant("z", "old", jan, Some("u2"), "198.19.0.2", E, 80));
    let policy = default_policy();
    let owner = |c: &Claims| c.owner(ip(E), 80, Protocol::Tcp, &policy).cloned();

    let mut claims = Claims::new();
    assert!(claims.set(&young.name, Some(&young)).is_empty());
    assert_eq!(owner(&claims), Some(name("a/young")));
    // The older claimant arrives: the younger must be resolved again.
    assert_eq!(claims.set(&old.name, Some(&old)), [name("a/young")].into());
    assert_eq!(owner(&claims), Some(name("z/old")));
    // Same claims again (an endpoint change): nobody else is touched.
    assert!(claims.set(&old.name, Some(&old)).is_empty());
    // The owner lets go: the other claimant takes over.
    assert_eq!(claims.set(&old.name, None), [name("a/young")].into());
    assert_eq!(owner(&claims), Some(name("a/young")));
    assert_eq!(claims.set(&old.name, Some(&old)), [name("a/young")].into());

    // A new cluster IP on the external IP's address: its claimants.
    let dns = model_of(
        "
metadata: {namespace: kube-system, name: dns, creationTimestamp: '2025-03-01T00:00:00Z'}
spec:
  clusterIP: 198.18.200.1
  ports: [{name: dns, port: 53, protocol: UDP}]
",
    );
    assert_eq!(
        claims.set(&dns.name, Some(&dns)),
        [name("a/young"), name("z/old")].into()
    );
    assert_eq!(owner(&claims), None, "refused for both");
    assert_eq!(
        claims.services_at(ip(E)),
        [name("a/young"), name("kube-system/dns"), name("z/old")].into()
    );
    let mut resolved = old.clone();
    claims.resolve(&mut resolved, &policy);
    assert_eq!(frontends_of(&resolved), [cip("198.19.0.2", 80)]);
    // Recreated under the same name (a new uid): everyone it shares with.
    let recreated = model_of(&claimant(
        "a",
        "young",
        feb,
        Some("u9"),
        "198.19.0.1",
        E,
        80,
    ));
    assert_eq!(
        claims.set(&recreated.name, Some(&recreated)),
        [name("z/old")].into()
    );
    assert_eq!(
        claims.set(&dns.name, None),
        [name("a/young"), name("z/old")].into()
    );

    // Whatever the order, the index resolves as the whole-cluster one.
    let all = [young.clone(), old.clone(), dns.clone()];
    let whole = Claims::of(&all);
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let mut claims = Claims::new();
        for i in order {
            claims.set(&all[i].name, Some(&all[i]));
        }
        claims.set(&recreated.name, Some(&recreated));
        claims.set(&young.name, Some(&young));
        for m in &all {
            let (mut a, mut b) = (m.clone(), m.clone());
            claims.resolve(&mut a, &policy);
            whole.resolve(&mut b, &policy);
            assert_eq!(a, b, "{order:?}: {}", m.name);
        }
    }
}
