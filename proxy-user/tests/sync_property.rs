//! Property: any sequence of adds, updates and deletes of Services and
//! EndpointSlices, with sync passes at arbitrary points, ends with the real
//! BPF maps holding exactly what the model says. The maps are read back
//! through `svcnat inspect`'s readers, not through the syncer's own state.
//! Services are IPv4 or dual-stack, slices IPv4 or IPv6: both families are
//! programmed, each from the slices of its family. Some services claim one
//! shared external IP, with ages unlike their names' order: the maps give
//! each of its ports to the oldest claimant, whatever the history.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proptest::prelude::*;
use svcnat::{
    dataplane::{Dataplane, DataplaneConfig, MapSizes, cleanup},
    inspect,
    model::{self, NodeInfo, Protocol},
    plan::Translates,
    sources::{Kind, Object, SourceEvent},
    sync::{SyncStats, Syncer},
};
use svcnat_testkit::{skip::Needs, skip_unless};

/// The syncer plans both families here: what it programs once the
/// datapath translates IPv6 (the maps and the agent already handle it).
const BOTH: Translates = Translates::ALL;

const SERVICES: u8 = 4;
const SLICES: u8 = 6;

#[derive(Clone, Debug)]
enum Op {
    ApplyService {
        i: u8,
        ports: u8,
        dual: bool,
        ext: bool,
    },
    DeleteService {
        i: u8,
    },
    ApplySlice {
        j: u8,
        svc: u8,
        endpoints: u8,
        ready: u8,
    },
    DeleteSlice {
        j: u8,
    },
    Pass,
    ResyncAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SERVICES, 1u8..4, any::<bool>(), any::<bool>())
            .prop_map(|(i, ports, dual, ext)| Op::ApplyService { i, ports, dual, ext }),
        1 => (0..SERVICES).prop_map(|i| Op::DeleteService { i }),
        4 => (0..SLICES, 0..SERVICES, any::<u8>(), any::<u8>())
            .prop_map(|(j, svc, endpoints, ready)| Op::ApplySlice { j, svc, endpoints, ready }),
        1 => (0..SLICES).prop_map(|j| Op::DeleteSlice { j }),
        2 => Just(Op::Pass),
        1 => Just(Op::ResyncAll),
    ]
}

/// Service `i` with the ports `ports` selects (bit 0: http, bit 1: dns),
/// IPv4 or, with `dual`, dual-stack; with `ext`, also on the shared
/// external IP 198.18.50.1. Service `i` is created on day `(3i mod 4) + 1`,
/// so age and name order differ.
fn service(i: u8, ports: u8, dual: bool, ext: bool) -> Service {
    let mut p = Vec::new();
    if ports & 1 != 0 {
        p.push(
            serde_json::json!({"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}),
        );
    }
    if ports & 2 != 0 {
        p.push(
            serde_json::json!({"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}),
        );
    }
    let v4 = format!("198.19.0.{}", i + 1);
    let (ips, families) = if dual {
        (
            vec![v4.clone(), format!("2001:db8:1::{}", i + 1)],
            vec!["IPv4", "IPv6"],
        )
    } else {
        (vec![v4.clone()], vec!["IPv4"])
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "prop",
                     "creationTimestamp": format!("2025-01-0{}T00:00:00Z", (3 * i) % 4 + 1)},
        "spec": {"clusterIP": v4, "clusterIPs": ips, "ipFamilies": families,
                 "externalIPs": if ext { vec!["198.18.50.1"] } else { vec![] },
                 "ipFamilyPolicy": if dual { "RequireDualStack" } else { "SingleStack" },
                 "ports": p}
    }))
    .expect("service json")
}

/// Slices 0..3 are IPv4, the others IPv6.
fn slice(j: u8, svc: u8, endpoints: u8, ready: u8) -> EndpointSlice {
    let v6 = j >= 3;
    let eps: Vec<serde_json::Value> = (0..8)
        .filter(|b| endpoints & (1 << b) != 0)
        .map(|b| {
            let addr = if v6 {
                format!("2001:db8:2::{}", b + 1)
            } else {
                format!("198.18.1.{}", b + 1)
            };
            serde_json::json!({
                "addresses": [addr],
                "conditions": {"ready": ready & (1 << b) != 0, "serving": true, "terminating": ready & (1 << b) == 0},
                "nodeName": if b % 2 == 0 { "node-a" } else { "node-b" }
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("slice-{j}"), "namespace": "prop",
                      "labels": {"kubernetes.io/service-name": format!("svc-{svc}")}},
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
        "endpoints": eps
    }))
    .expect("slice json")
}

type Table = BTreeMap<(String, u16, &'static str), BTreeSet<String>>;

fn expected(
    services: &BTreeMap<u8, Service>,
    slices: &BTreeMap<u8, EndpointSlice>,
    node: &NodeInfo,
) -> Table {
    let svcs: Vec<Service> = services.values().cloned().collect();
    let sls: Vec<EndpointSlice> = slices.values().cloned().collect();
    let mut t = Table::new();
    for m in model::model_cluster(&svcs, &sls, node).values() {
        for p in &m.ports {
            if p.protocol == Protocol::Sctp {
                continue;
            }
            let proto = if p.protocol == Protocol::Tcp {
                "tcp"
            } else {
                "udp"
            };
            for f in &p.frontends {
                let backends = p
                    .backends
                    .iter()
                    .map(|b| inspect::socket(b.address, b.port))
                    .collect();
                t.insert((f.address.to_string(), f.port, proto), backends);
            }
        }
    }
    t
}

fn actual(dir: &std::path::Path) -> Table {
    inspect::services(dir)
        .expect("read services from the maps")
        .into_iter()
        .map(|r| {
            (
                (r.vip.to_string(), r.port, r.protocol),
                r.backends.into_iter().collect(),
            )
        })
        .collect()
}

/// Cases whose final maps held an IPv6 frontend (the generator must reach
/// them for the property to cover both families).
static WITH_IPV6: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Cases that ended with two services or more claiming the shared
/// external IP (the generator must reach them too).
static CONTENDED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn check(ops: Vec<Op>, case: u32) -> Result<(), TestCaseError> {
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/svcnat-prop-{}-{case}",
        std::process::id()
    ));
    let _ = cleanup(&dir);
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = cleanup(&self.0);
        }
    }
    let _guard = Guard(dir.clone());
    let sizes = MapSizes {
        services: 256,
        slots: 1024,
        backends: 256,
        revnat: 256,
        conntrack: 256,
        fragments: 16,
        ..MapSizes::default()
    };
    let mut dp = Dataplane::open(&DataplaneConfig {
        bpffs: dir.clone(),
        sizes,
    })
    .expect("open");
    let node = NodeInfo {
        zone: None,
        name: "node-a".into(),
        addresses: vec![IpAddr::from([198, 18, 0, 1])],
    };
    let mut syncer = Syncer::new(node.clone(), Arc::new(SyncStats::default())).with_datapath(BOTH);
    let mut services: BTreeMap<u8, Service> = BTreeMap::new();
    let mut slices: BTreeMap<u8, EndpointSlice> = BTreeMap::new();
    // Start from a complete (empty) list, as the sources do.
    syncer.handle(SourceEvent::Resync {
        kind: Kind::Service,
        objects: vec![],
    });
    syncer.handle(SourceEvent::Resync {
        kind: Kind::EndpointSlice,
        objects: vec![],
    });
    for op in ops {
        match op {
            Op::ApplyService {
                i,
                ports,
                dual,
                ext,
            } => {
                let s = service(i, ports, dual, ext);
                services.insert(i, s.clone());
                syncer.handle(SourceEvent::Apply(Object::Service(Box::new(s))));
            }
            Op::DeleteService { i } => {
                services.remove(&i);
                syncer.handle(SourceEvent::Delete {
                    kind: Kind::Service,
                    namespace: "prop".into(),
                    name: format!("svc-{i}"),
                });
            }
            Op::ApplySlice {
                j,
                svc,
                endpoints,
                ready,
            } => {
                let s = slice(j, svc, endpoints, ready);
                slices.insert(j, s.clone());
                syncer.handle(SourceEvent::Apply(Object::EndpointSlice(Box::new(s))));
            }
            Op::DeleteSlice { j } => {
                slices.remove(&j);
                syncer.handle(SourceEvent::Delete {
                    kind: Kind::EndpointSlice,
                    namespace: "prop".into(),
                    name: format!("slice-{j}"),
                });
            }
            Op::Pass => {
                syncer.pass(&mut dp);
            }
            Op::ResyncAll => {
                syncer.handle(SourceEvent::Resync {
                    kind: Kind::Service,
                    objects: services
                        .values()
                        .cloned()
                        .map(|s| Object::Service(Box::new(s)))
                        .collect(),
                });
                syncer.handle(SourceEvent::Resync {
                    kind: Kind::EndpointSlice,
                    objects: slices
                        .values()
                        .cloned()
                        .map(|s| Object::EndpointSlice(Box::new(s)))
                        .collect(),
                });
            }
        }
    }
    syncer.pass(&mut dp);
    let want = expected(&services, &slices, &node);
    let got = actual(&dir);
    prop_assert_eq!(&got, &want);
    if got.keys().any(|(vip, _, _)| vip.contains(':')) {
        WITH_IPV6.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let claimants = services
        .values()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.external_ips.as_ref())
                .is_some_and(|ips| !ips.is_empty())
        })
        .count();
    if claimants >= 2 {
        CONTENDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    // And nothing is left to repair: the mirror equals the maps.
    prop_assert_eq!(dp.repair().expect("repair"), 0);
    Ok(())
}

#[test]
fn random_event_sequences_end_with_maps_equal_to_the_model() {
    skip_unless!(Needs::netns());
    let case = std::sync::atomic::AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            check(ops, case.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        WITH_IPV6.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no case ended with an IPv6 frontend"
    );
    assert!(
        CONTENDED.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no case ended with a contended external IP"
    );
}

#[test]
fn a_service_too_big_for_the_maps_is_skipped_with_a_reason_and_the_rest_works() {
    skip_unless!(Needs::netns());
    let dir = PathBuf::from(format!("/sys/fs/bpf/svcnat-full-{}", std::process::id()));
    let _ = cleanup(&dir);
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = cleanup(&self.0);
        }
    }
    let _guard = Guard(dir.clone());
    // Room for 6 backends: svc-0 needs 2, svc-1 needs 8.
    let sizes = MapSizes {
        services: 64,
        slots: 64,
        backends: 6,
        revnat: 64,
        conntrack: 64,
        fragments: 16,
        ..MapSizes::default()
    };
    let mut dp = Dataplane::open(&DataplaneConfig {
        bpffs: dir.clone(),
        sizes,
    })
    .expect("open");
    let node = NodeInfo {
        zone: None,
        name: "node-a".into(),
        addresses: vec![],
    };
    let mut syncer = Syncer::new(node, Arc::new(SyncStats::default())).with_datapath(BOTH);
    syncer.handle(SourceEvent::Resync {
        kind: Kind::Service,
        objects: vec![
            Object::Service(Box::new(service(0, 1, false, false))),
            Object::Service(Box::new(service(1, 1, false, false))),
        ],
    });
    syncer.handle(SourceEvent::Resync {
        kind: Kind::EndpointSlice,
        objects: vec![
            Object::EndpointSlice(Box::new(slice(0, 0, 0b11, 0xff))),
            Object::EndpointSlice(Box::new(slice(1, 1, 0xff, 0xff))),
        ],
    });
    let report = syncer.pass(&mut dp);
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(
        report.skipped[0].contains("prop/svc-1"),
        "{}",
        report.skipped[0]
    );
    assert!(report.skipped[0].contains("full"), "{}", report.skipped[0]);
    let got = actual(&dir);
    assert_eq!(got.len(), 1, "only svc-0 is programmed: {got:?}");
    assert_eq!(got.values().next().map(BTreeSet::len), Some(2));
    // When it shrinks to fit, it is retried and programmed.
    syncer.handle(SourceEvent::Apply(Object::EndpointSlice(Box::new(slice(
        1, 1, 0b1100, 0xff,
    )))));
    let report = syncer.pass(&mut dp);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(actual(&dir).len(), 2);
}
