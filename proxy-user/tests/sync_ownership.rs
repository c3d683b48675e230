//! The syncer against real pinned maps: a frontend several Services claim
//! belongs to the oldest whatever order they arrive in, moves to the next
//! claimant in the same pass when its owner lets go, stays with the oldest
//! across a restart (adoption of the pins, services listed alphabetically),
//! and an external IP on a cluster IP is refused while the cluster IP
//! keeps its own backends.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use svcnat::{
    dataplane::MapSizes,
    inspect,
    model::{ExternalPolicy, NodeInfo},
    sources::{Kind, Object, SourceEvent},
    sync::{PassReport, SyncStats, Syncer},
};
use svcnat_testkit::pins::PinDir;
use svcnat_testkit::{skip::Needs, skip_unless};

/// The shared external IP.
const EXT: &str = "198.18.50.1";

/// Small maps: these tests hold a few frontends.
fn sizes() -> MapSizes {
    MapSizes {
        services: 64,
        slots: 64,
        backends: 64,
        revnat: 64,
        conntrack: 64,
        fragments: 16,
        ..MapSizes::default()
    }
}

/// `vip:port/proto` -> backends, as `svcnat inspect` reads the maps.
fn frontends(pins: &PinDir) -> BTreeMap<String, Vec<String>> {
    inspect::services(&pins.0)
        .expect("read the maps")
        .into_iter()
        .map(|r| (format!("{}:{}/{}", r.vip, r.port, r.protocol), r.backends))
        .collect()
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node-a".into(),
        addresses: vec![IpAddr::from([198, 18, 0, 1])],
        zone: None,
    }
}

fn syncer() -> Syncer {
    Syncer::new(node(), Arc::new(SyncStats::default()))
}

/// Service `ns/name` (cluster IP `cluster`, port 80/TCP or 53/UDP), created
/// at `created`, with `external_ips`.
fn service(ns: &str, name: &str, created: &str, cluster: &str, external_ips: &[&str]) -> Service {
    let dns = name.contains("dns");
    let port = if dns {
        serde_json::json!({"name": "dns", "port": 53, "protocol": "UDP"})
    } else {
        serde_json::json!({"name": "http", "port": 80, "protocol": "TCP"})
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "creationTimestamp": created,
                     "uid": format!("uid-{ns}-{name}")},
        "spec": {"clusterIP": cluster, "externalIPs": external_ips, "ports": [port]}
    }))
    .expect("service json")
}

/// The slice of `ns/name` with one endpoint `backend` (port 8080 or 5353).
fn slice(ns: &str, name: &str, backend: &str) -> EndpointSlice {
    let dns = name.contains("dns");
    let port = if dns {
        serde_json::json!({"name": "dns", "port": 5353, "protocol": "UDP"})
    } else {
        serde_json::json!({"name": "http", "port": 8080, "protocol": "TCP"})
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": format!("{name}-1"),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [port],
        "endpoints": [{"addresses": [backend], "conditions": {"ready": true}}]
    }))
    .expect("slice json")
}

fn apply(s: &mut Syncer, obj: Object) {
    s.handle(SourceEvent::Apply(obj));
}

fn svc(s: Service) -> Object {
    Object::Service(Box::new(s))
}

fn sl(s: EndpointSlice) -> Object {
    Object::EndpointSlice(Box::new(s))
}

/// Lists `objects` as the sources do at start, services in the order given.
fn resync(s: &mut Syncer, services: Vec<Service>, slices: Vec<EndpointSlice>) {
    s.handle(SourceEvent::Resync {
        kind: Kind::Service,
        objects: services.into_iter().map(svc).collect(),
    });
    s.handle(SourceEvent::Resync {
        kind: Kind::EndpointSlice,
        objects: slices.into_iter().map(sl).collect(),
    });
}

fn said(report: &PassReport, needle: &str) -> bool {
    report.skipped.iter().any(|p| p.contains(needle))
}

/// The younger service sorts first (namespace `a`) and arrives first, as
/// a first-come rule rebuilt alphabetically would favour; the older one
/// (namespace `z`) takes the external IP at once, keeps it across a
/// restart, and hands it to the younger in the same pass when it lets go.
#[test]
fn the_oldest_claimant_owns_an_external_ip_in_any_order_and_across_restarts() {
    skip_unless!(Needs::pinned());
    let pins = PinDir::new("own-order");
    let young = || service("a", "young", "2025-02-01T00:00:00Z", "198.19.0.1", &[EXT]);
    let old = || service("z", "old", "2025-01-01T00:00:00Z", "198.19.0.2", &[EXT]);
    let young_slice = || slice("a", "young", "198.18.1.1");
    let old_slice = || slice("z", "old", "198.18.2.2");
    let ext = format!("{EXT}:80/tcp");
    let (young_be, old_be) = (
        vec!["198.18.1.1:8080".to_string()],
        vec!["198.18.2.2:8080".to_string()],
    );
    {
        let mut dp = pins.open(sizes());
        let mut s = syncer();
        resync(&mut s, vec![young()], vec![young_slice()]);
        let r = s.pass(&mut dp);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert_eq!(
            frontends(&pins)[&ext],
            young_be,
            "alone, the younger owns it"
        );

        apply(&mut s, svc(old()));
        apply(&mut s, sl(old_slice()));
        let r = s.pass(&mut dp);
        assert_eq!(
            frontends(&pins)[&ext],
            old_be,
            "the older takes it over: {:?}",
            r.skipped
        );
        assert!(
            said(
                &r,
                "service a/young port http: frontend 198.18.50.1:80/TCP belongs to the older service z/old"
            ),
            "the younger is told: {:?}",
            r.skipped
        );
        // An endpoint change of the younger moves nothing.
        apply(&mut s, sl(slice("a", "young", "198.18.1.9")));
        s.pass(&mut dp);
        assert_eq!(frontends(&pins)[&ext], old_be);

        // The owner lets go: the other claimant has it after this pass.
        apply(
            &mut s,
            svc(service(
                "z",
                "old",
                "2025-01-01T00:00:00Z",
                "198.19.0.2",
                &[],
            )),
        );
        let r = s.pass(&mut dp);
        assert_eq!(
            frontends(&pins)[&ext],
            ["198.18.1.9:8080"],
            "handed to the younger in the same pass: {r:?}"
        );
        apply(&mut s, svc(old()));
        s.pass(&mut dp);
        assert_eq!(frontends(&pins)[&ext], old_be);
        assert_eq!(
            dp.repair().expect("repair"),
            0,
            "the mirror equals the maps"
        );
    }
    // A restart: the pins are adopted, the services listed alphabetically.
    for round in 0..2 {
        let mut dp = pins.open(sizes());
        let mut s = syncer();
        resync(
            &mut s,
            vec![young(), old()],
            vec![slice("a", "young", "198.18.1.9"), old_slice()],
        );
        let r = s.pass(&mut dp);
        assert_eq!(frontends(&pins)[&ext], old_be, "restart {round}");
        assert!(
            said(&r, "belongs to the older service z/old"),
            "restart {round}: {:?}",
            r.skipped
        );
        assert_eq!(r.deleted, 0, "restart {round}: nothing to delete: {r:?}");
    }
    // Deleting the owner hands the frontend over too.
    let mut dp = pins.open(sizes());
    let mut s = syncer();
    resync(
        &mut s,
        vec![young(), old()],
        vec![slice("a", "young", "198.18.1.9"), old_slice()],
    );
    s.pass(&mut dp);
    s.handle(SourceEvent::Delete {
        kind: Kind::Service,
        namespace: "z".into(),
        name: "old".into(),
    });
    s.pass(&mut dp);
    let fs = frontends(&pins);
    assert_eq!(fs[&ext], ["198.18.1.9:8080"]);
    assert!(!fs.contains_key("198.19.0.2:80/tcp"), "{fs:?}");
}

/// CVE-2020-8554: an older service in namespace `a-evil` claims kube-dns's
/// cluster IP as an external IP on 53/UDP. It is refused on every pass
/// and restart; the cluster IP keeps kube-dns's backend.
#[test]
fn an_external_ip_on_a_cluster_ip_is_refused_and_the_cluster_ip_keeps_its_backends() {
    skip_unless!(Needs::pinned());
    let pins = PinDir::new("own-dns");
    let dns = || {
        service(
            "kube-system",
            "kube-dns",
            "2025-03-01T00:00:00Z",
            "198.19.0.10",
            &[],
        )
    };
    let evil = || {
        service(
            "a-evil",
            "dns",
            "2020-01-01T00:00:00Z",
            "198.19.0.66",
            &["198.19.0.10"],
        )
    };
    let slices = || {
        vec![
            slice("kube-system", "kube-dns", "198.18.1.53"),
            slice("a-evil", "dns", "198.18.6.66"),
        ]
    };
    let dns_fe = "198.19.0.10:53/udp";
    for round in 0..2 {
        let mut dp = pins.open(sizes());
        let mut s = syncer();
        // The attacker first, in the list and in age.
        resync(&mut s, vec![evil(), dns()], slices());
        let r = s.pass(&mut dp);
        let fs = frontends(&pins);
        assert_eq!(fs[dns_fe], ["198.18.1.53:5353"], "round {round}: {fs:?}");
        assert_eq!(fs["198.19.0.66:53/udp"], ["198.18.6.66:5353"]);
        assert!(
            said(
                &r,
                "service a-evil/dns: external IP 198.19.0.10 is the cluster IP of service kube-system/kube-dns: refused"
            ),
            "round {round}: {:?}",
            r.skipped
        );
    }
    // The same with the victim already programmed and the claim arriving
    // later.
    let mut dp = pins.open(sizes());
    let mut s = syncer();
    resync(&mut s, vec![dns()], slices());
    s.pass(&mut dp);
    apply(&mut s, svc(evil()));
    let r = s.pass(&mut dp);
    assert!(
        said(&r, "is the cluster IP of service kube-system/kube-dns"),
        "{r:?}"
    );
    assert_eq!(frontends(&pins)[dns_fe], ["198.18.1.53:5353"]);
}

/// `--external-ip-cidrs`: an external IP outside the allowed networks is
/// refused and reported; one inside is programmed.
#[test]
fn external_ips_outside_the_allowed_cidrs_are_refused() {
    skip_unless!(Needs::pinned());
    let pins = PinDir::new("own-cidrs");
    let mut dp = pins.open(sizes());
    let policy = ExternalPolicy {
        allowed_external_ips: Some(vec![(IpAddr::from([198, 18, 50, 0]), 24)]),
        ..ExternalPolicy::for_node(node().addresses)
    };
    let mut s = syncer().with_external_policy(policy);
    resync(
        &mut s,
        vec![service(
            "demo",
            "web",
            "2025-01-01T00:00:00Z",
            "198.19.0.5",
            &[EXT, "198.18.60.1"],
        )],
        vec![slice("demo", "web", "198.18.1.5")],
    );
    let r = s.pass(&mut dp);
    let fs = frontends(&pins);
    assert!(fs.contains_key(&format!("{EXT}:80/tcp")), "{fs:?}");
    assert!(!fs.contains_key("198.18.60.1:80/tcp"), "{fs:?}");
    assert!(
        said(
            &r,
            "external IP 198.18.60.1 is outside --external-ip-cidrs: refused"
        ),
        "{:?}",
        r.skipped
    );
}
