//! The Kubernetes source against the in-process API server: what the sync
//! task receives for the initial list, watch events, `410 Gone`, dropped
//! connections and bookmarks.

mod support;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointSlice},
        networking::v1::ServiceCIDR,
    },
    apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta},
};
use kube::{
    Api,
    api::{ListParams, WatchEvent, WatchParams},
    core::ResourceExt,
};
use support::apiserver::{ApiServer, meta, meta_mut};
use svcnat::sources::{
    Kind, Object, SourceEvent,
    kube::{KubeSourceError, KubeSourceStats, run},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// The node the source watches the Node of.
const NODE: &str = "node-a";
/// Bound on every test, so that a failure cannot hang the suite.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs `test` with [`TEST_LIMIT`].
async fn within<F: Future>(test: F) -> F::Output {
    match tokio::time::timeout(TEST_LIMIT, test).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {TEST_LIMIT:?}"),
    }
}

fn managed_fields() -> Option<Vec<ManagedFieldsEntry>> {
    Some(vec![ManagedFieldsEntry {
        manager: Some("kubectl-client-side-apply".to_owned()),
        operation: Some("Update".to_owned()),
        api_version: Some("v1".to_owned()),
        ..ManagedFieldsEntry::default()
    }])
}

fn service(ns: &str, name: &str, cluster_ip: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.to_owned()),
            name: Some(name.to_owned()),
            managed_fields: managed_fields(),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.to_owned()),
            cluster_ips: Some(vec![cluster_ip.to_owned()]),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(ns: &str, name: &str, service: &str, addresses: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                service.to_owned(),
            )])),
            managed_fields: managed_fields(),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: addresses
            .iter()
            .map(|a| Endpoint {
                addresses: vec![(*a).to_owned()],
                ..Endpoint::default()
            })
            .collect(),
        ports: None,
    }
}

/// `obj` as the source must deliver it: managed fields stripped.
fn stripped(mut obj: Object) -> Object {
    meta_mut(&mut obj).managed_fields = None;
    obj
}

/// The server's objects of `kind`, as the source must deliver them.
fn expected(server: &ApiServer, kind: Kind) -> Vec<Object> {
    server.objects(kind).into_iter().map(stripped).collect()
}

/// The server's copy of one object, as the source must deliver it.
fn expected_one(server: &ApiServer, kind: Kind, ns: &str, name: &str) -> Object {
    match server.get(kind, ns, name) {
        Some(obj) => stripped(obj),
        None => panic!("{kind:?} {ns}/{name} is not on the server"),
    }
}

/// A running source and what it sends.
struct Source {
    rx: mpsc::Receiver<SourceEvent>,
    stats: Arc<KubeSourceStats>,
    task: JoinHandle<Result<(), KubeSourceError>>,
}

impl Source {
    fn start(server: &ApiServer) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let stats = Arc::new(KubeSourceStats::default());
        let task = tokio::spawn(run(
            server.client(),
            tx,
            Arc::clone(&stats),
            NODE.to_owned(),
        ));
        Self { rx, stats, task }
    }

    async fn recv(&mut self) -> SourceEvent {
        match self.rx.recv().await {
            Some(event) => event,
            None => panic!("the source stopped: {:?}", (&mut self.task).await),
        }
    }

    /// The next four events, which must be one Resync per kind (any
    /// order).
    async fn resyncs(&mut self) -> BTreeMap<Kind, Vec<Object>> {
        let mut lists = BTreeMap::new();
        for _ in 0..4 {
            match self.recv().await {
                SourceEvent::Resync { kind, objects } => {
                    assert!(
                        lists.insert(kind, objects).is_none(),
                        "two Resyncs of {kind:?}"
                    );
                }
                other => panic!("expected a Resync, got {other:?}"),
            }
        }
        lists
    }

    fn restarts(&self) -> u64 {
        self.stats.watch_restarts.load(Ordering::Relaxed)
    }

    fn errors(&self) -> u64 {
        self.stats.watch_errors.load(Ordering::Relaxed)
    }
}

/// Waits until every kind has an open watch, so that what the test does
/// next reaches the source through the watch (or expires it).
async fn wait_watching(server: &ApiServer) {
    server.wait_watching(Kind::Service).await;
    server.wait_watching(Kind::EndpointSlice).await;
    server.wait_watching(Kind::Node).await;
    server.wait_watching(Kind::ServiceCidr).await;
}

#[tokio::test]
async fn initial_list_is_one_resync_per_kind_before_anything_else() {
    within(async {
        let server = ApiServer::start().await;
        server.apply(service("default", "web", "10.96.0.10"));
        server.apply(service("kube-system", "dns", "10.96.0.53"));
        server.apply(slice(
            "default",
            "web-abc",
            "web",
            &["10.244.1.5", "10.244.2.7"],
        ));
        let mut source = Source::start(&server);

        let lists = source.resyncs().await;
        assert_eq!(lists[&Kind::Service], expected(&server, Kind::Service));
        assert_eq!(lists[&Kind::Service].len(), 2);
        assert_eq!(
            lists[&Kind::EndpointSlice],
            expected(&server, Kind::EndpointSlice)
        );
        assert_eq!(lists[&Kind::EndpointSlice].len(), 1);
        for obj in lists.values().flatten() {
            assert_eq!(
                meta(obj).managed_fields,
                None,
                "managed fields kept: {obj:?}"
            );
            assert!(meta(obj).resource_version.is_some());
        }
        for kind in [Kind::Service, Kind::EndpointSlice] {
            assert_eq!(server.counters(kind).lists, 1, "{kind:?}");
        }
        assert_eq!((source.restarts(), source.errors()), (0, 0));
    })
    .await;
}

fn node(name: &str, zone: &str) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
    }))
    .expect("a Node")
}

/// The source watches this node's Node only (`fieldSelector`
/// `metadata.name=`, as kube-proxy's node informer): the list holds it
/// alone, its changes arrive, other nodes' never do.
#[tokio::test]
async fn only_this_nodes_node_is_listed_and_watched() {
    within(async {
        let server = ApiServer::start().await;
        server.apply(node(NODE, "zone-a"));
        server.apply(node("node-b", "zone-b"));
        let mut source = Source::start(&server);
        let lists = source.resyncs().await;
        assert_eq!(
            lists[&Kind::Node],
            vec![expected_one(&server, Kind::Node, "", NODE)]
        );
        wait_watching(&server).await;
        server.apply(node("node-b", "zone-c"));
        server.apply(node(NODE, "zone-d"));
        let changed = expected_one(&server, Kind::Node, "", NODE);
        assert_eq!(source.recv().await, SourceEvent::Apply(changed));
        assert!(server.delete(Kind::Node, "", "node-b").is_some());
        assert!(server.delete(Kind::Node, "", NODE).is_some());
        assert_eq!(
            source.recv().await,
            SourceEvent::Delete {
                kind: Kind::Node,
                namespace: String::new(),
                name: NODE.to_owned(),
            }
        );
        assert_eq!((source.restarts(), source.errors()), (0, 0));
    })
    .await;
}

fn service_cidr(name: &str, cidrs: &[&str]) -> ServiceCIDR {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"cidrs": cidrs},
    }))
    .expect("a ServiceCIDR")
}

/// ServiceCIDRs (cluster-scoped) are listed and watched like the rest.
#[tokio::test]
async fn service_cidrs_are_listed_and_watched() {
    within(async {
        let server = ApiServer::start().await;
        server.apply(service_cidr("kubernetes", &["198.19.0.0/16"]));
        let mut source = Source::start(&server);
        let lists = source.resyncs().await;
        assert_eq!(
            lists[&Kind::ServiceCidr],
            vec![expected_one(&server, Kind::ServiceCidr, "", "kubernetes")]
        );
        wait_watching(&server).await;
        server.apply(service_cidr("extra", &["198.18.64.0/20"]));
        let extra = expected_one(&server, Kind::ServiceCidr, "", "extra");
        assert_eq!(source.recv().await, SourceEvent::Apply(extra));
        assert!(server.delete(Kind::ServiceCidr, "", "kubernetes").is_some());
        assert_eq!(
            source.recv().await,
            SourceEvent::Delete {
                kind: Kind::ServiceCidr,
                namespace: String::new(),
                name: "kubernetes".to_owned(),
            }
        );
        assert_eq!((source.restarts(), source.errors()), (0, 0));
    })
    .await;
}

/// An API server without ServiceCIDRs (404: before Kubernetes 1.33) or
/// that refuses them (403: an older ClusterRole) does not hold the agent
/// back: the first refusal counts as an empty list, and ServiceCIDRs served
/// later still arrive (the watcher keeps retrying).
#[tokio::test]
async fn service_cidrs_not_served_give_an_empty_list_and_arrive_later() {
    for code in [404, 403] {
        within(async {
            let server = ApiServer::start().await;
            server.refuse(Kind::ServiceCidr, Some(code));
            server.apply(service("default", "web", "10.96.0.10"));
            let mut source = Source::start(&server);
            let lists = source.resyncs().await;
            assert_eq!(lists[&Kind::ServiceCidr], vec![], "{code}");
            assert_eq!(lists[&Kind::Service].len(), 1, "{code}");
            assert!(source.errors() >= 1, "{code}: the refusal is counted");
            server.apply(service_cidr("kubernetes", &["198.19.0.0/16"]));
            server.refuse(Kind::ServiceCidr, None);
            // The retry (kube's backoff: under a second at first) lists it.
            match source.recv().await {
                SourceEvent::Resync {
                    kind: Kind::ServiceCidr,
                    objects,
                } => assert_eq!(
                    objects,
                    vec![expected_one(&server, Kind::ServiceCidr, "", "kubernetes")],
                    "{code}"
                ),
                other => panic!("{code}: expected the ServiceCIDR list, got {other:?}"),
            }
        })
        .await;
    }
}

#[tokio::test]
async fn empty_cluster_gives_empty_resyncs() {
    within(async {
        let server = ApiServer::start().await;
        let mut source = Source::start(&server);
        let lists = source.resyncs().await;
        assert_eq!(lists[&Kind::Service], Vec::new());
        assert_eq!(lists[&Kind::EndpointSlice], Vec::new());
    })
    .await;
}

#[tokio::test]
async fn large_initial_list_is_one_resync() {
    within(async {
        let server = ApiServer::start().await;
        for i in 0..1200_u32 {
            let ip = format!("10.96.{}.{}", i / 256, i % 256);
            server.apply(service("default", &format!("svc-{i:04}"), &ip));
        }
        let mut source = Source::start(&server);
        let lists = source.resyncs().await;
        assert_eq!(lists[&Kind::Service].len(), 1200);
        assert_eq!(lists[&Kind::Service], expected(&server, Kind::Service));
    })
    .await;
}

#[tokio::test]
async fn changes_become_apply_and_delete() {
    within(async {
        let server = ApiServer::start().await;
        let mut source = Source::start(&server);
        source.resyncs().await;
        wait_watching(&server).await;

        server.apply(service("default", "web", "10.96.0.10"));
        let added = expected_one(&server, Kind::Service, "default", "web");
        assert_eq!(source.recv().await, SourceEvent::Apply(added.clone()));

        let mut changed = service("default", "web", "10.96.0.10");
        changed
            .spec
            .get_or_insert_with(ServiceSpec::default)
            .session_affinity = Some("ClientIP".to_owned());
        server.apply(changed);
        let modified = expected_one(&server, Kind::Service, "default", "web");
        assert_ne!(modified, added);
        let event = source.recv().await;
        assert_eq!(event, SourceEvent::Apply(modified));
        let SourceEvent::Apply(obj) = event else {
            unreachable!("just compared")
        };
        assert_eq!(meta(&obj).managed_fields, None);

        server.apply(slice("default", "web-abc", "web", &["10.244.1.5"]));
        let slice_obj = expected_one(&server, Kind::EndpointSlice, "default", "web-abc");
        assert_eq!(source.recv().await, SourceEvent::Apply(slice_obj));

        assert!(server.delete(Kind::Service, "default", "web").is_some());
        let deleted = SourceEvent::Delete {
            kind: Kind::Service,
            namespace: "default".to_owned(),
            name: "web".to_owned(),
        };
        assert_eq!(source.recv().await, deleted);
        assert!(
            server
                .delete(Kind::EndpointSlice, "default", "web-abc")
                .is_some()
        );
        let deleted = SourceEvent::Delete {
            kind: Kind::EndpointSlice,
            namespace: "default".to_owned(),
            name: "web-abc".to_owned(),
        };
        assert_eq!(source.recv().await, deleted);

        // Deleting what is absent changes nothing: the next event is the marker.
        assert_eq!(server.delete(Kind::Service, "default", "web"), None);
        server.apply(service("default", "marker", "10.96.0.99"));
        let marker = expected_one(&server, Kind::Service, "default", "marker");
        assert_eq!(source.recv().await, SourceEvent::Apply(marker));
        assert_eq!((source.restarts(), source.errors()), (0, 0));
    })
    .await;
}

#[tokio::test]
async fn expired_watch_relists_with_the_current_objects() {
    within(async {
        let server = ApiServer::start().await;
        server.apply(service("default", "kept", "10.96.0.10"));
        server.apply(service("default", "removed", "10.96.0.11"));
        server.apply(slice("default", "kept-1", "kept", &["10.244.1.5"]));
        let mut source = Source::start(&server);
        source.resyncs().await;
        wait_watching(&server).await;

        // History compacted, then changes the source never sees as events:
        // no .await in between, so the source cannot run before all three.
        server.expire_watches();
        server.apply(service("default", "added", "10.96.0.12"));
        assert!(server.delete(Kind::Service, "default", "removed").is_some());

        let lists = source.resyncs().await;
        let services = &lists[&Kind::Service];
        assert_eq!(services, &expected(&server, Kind::Service));
        let names: Vec<_> = services
            .iter()
            .filter_map(|o| meta(o).name.as_deref())
            .collect();
        assert_eq!(names, ["added", "kept"]);
        assert_eq!(
            lists[&Kind::EndpointSlice],
            expected(&server, Kind::EndpointSlice)
        );
        assert_eq!(lists[&Kind::Node], expected(&server, Kind::Node));
        for kind in [
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Node,
            Kind::ServiceCidr,
        ] {
            assert_eq!(server.counters(kind).lists, 2, "{kind:?} relisted once");
        }
        assert_eq!(source.restarts(), 4, "one relist per kind");
        assert!(source.errors() >= 4, "the 410 of each kind is counted");

        // And the new watch delivers later changes.
        wait_watching(&server).await;
        server.apply(service("default", "later", "10.96.0.13"));
        let later = expected_one(&server, Kind::Service, "default", "later");
        assert_eq!(source.recv().await, SourceEvent::Apply(later));
    })
    .await;
}

#[tokio::test]
async fn dropped_connections_resume_the_watch_without_relisting() {
    within(async {
        let server = ApiServer::start().await;
        server.apply(service("default", "web", "10.96.0.10"));
        let mut source = Source::start(&server);
        source.resyncs().await;
        wait_watching(&server).await;
        let watches_before = server.counters(Kind::Service).watches;

        // Changed while the connection is down: replayed from the history.
        server.drop_connections();
        server.apply(service("default", "during", "10.96.0.11"));
        assert!(server.delete(Kind::Service, "default", "web").is_some());
        let during = expected_one(&server, Kind::Service, "default", "during");
        assert_eq!(source.recv().await, SourceEvent::Apply(during));
        let deleted = SourceEvent::Delete {
            kind: Kind::Service,
            namespace: "default".to_owned(),
            name: "web".to_owned(),
        };
        assert_eq!(source.recv().await, deleted);
        assert!(server.counters(Kind::Service).watches > watches_before);

        // Changed after the watch is back.
        wait_watching(&server).await;
        server.apply(slice("default", "during-1", "during", &["10.244.3.3"]));
        let after = expected_one(&server, Kind::EndpointSlice, "default", "during-1");
        assert_eq!(source.recv().await, SourceEvent::Apply(after));

        for kind in [Kind::Service, Kind::EndpointSlice] {
            assert_eq!(server.counters(kind).lists, 1, "{kind:?} was relisted");
        }
        assert_eq!(source.restarts(), 0);
        assert!(
            source.rx.is_empty(),
            "unexpected event: {:?}",
            source.rx.try_recv()
        );
    })
    .await;
}

#[tokio::test]
async fn bookmarks_produce_no_events_and_move_the_resume_point() {
    within(async {
        let server = ApiServer::start().await;
        server.apply(service("default", "web", "10.96.0.10"));
        let mut source = Source::start(&server);
        source.resyncs().await;
        wait_watching(&server).await;
        let service_watch_rv = server.counters(Kind::Service).last_watch_resource_version;

        // Slices move the global resourceVersion past every Service.
        server.apply(slice("default", "web-1", "web", &["10.244.1.5"]));
        let slice_obj = expected_one(&server, Kind::EndpointSlice, "default", "web-1");
        assert_eq!(source.recv().await, SourceEvent::Apply(slice_obj));

        let bookmark_rv = server.send_bookmark();
        server
            .wait_until(|s| s.counters(Kind::Service).bookmarks_sent == 1)
            .await;
        let watches = server.counters(Kind::Service).watches;
        server.drop_connections();
        server
            .wait_until(|s| s.counters(Kind::Service).watches > watches)
            .await;
        let resumed = server.counters(Kind::Service).last_watch_resource_version;
        assert_ne!(resumed, service_watch_rv);
        assert_eq!(
            resumed,
            Some(bookmark_rv.to_string()),
            "resumed from the bookmark"
        );

        // Nothing came out of the bookmark: the next event is the marker.
        server.apply(service("default", "marker", "10.96.0.99"));
        let marker = expected_one(&server, Kind::Service, "default", "marker");
        assert_eq!(source.recv().await, SourceEvent::Apply(marker));
        assert_eq!(server.counters(Kind::Service).lists, 1);
    })
    .await;
}

#[tokio::test]
async fn source_returns_when_the_receiver_is_dropped() {
    within(async {
        let server = ApiServer::start().await;
        let mut source = Source::start(&server);
        source.resyncs().await;
        drop(source.rx);
        let result = source.task.await;
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    })
    .await;
}

#[tokio::test]
async fn server_paginates_lists() {
    within(async {
        let server = ApiServer::start().await;
        for i in 0..25_u32 {
            server.apply(service(
                "default",
                &format!("svc-{i:02}"),
                &format!("10.96.0.{i}"),
            ));
        }
        let api: Api<Service> = Api::all(server.client());
        let mut names = Vec::new();
        let mut params = ListParams::default().limit(10);
        let mut versions = Vec::new();
        loop {
            let page = api.list(&params).await.expect("list page");
            versions.push(page.metadata.resource_version.clone());
            names.extend(page.items.iter().filter_map(|s| s.metadata.name.clone()));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        let expected: Vec<String> = (0..25).map(|i| format!("svc-{i:02}")).collect();
        assert_eq!(names, expected);
        assert_eq!(versions.len(), 3);
        assert!(
            versions.iter().all(|v| v == &versions[0]),
            "one snapshot: {versions:?}"
        );
        assert_eq!(server.counters(Kind::Service).lists, 3);

        // A continue token from before a compaction is expired.
        let page = api
            .list(&ListParams::default().limit(10))
            .await
            .expect("list");
        server.apply(service("default", "new", "10.96.1.1"));
        server.expire_watches();
        let token = page.metadata.continue_.expect("more pages");
        match api
            .list(&ListParams::default().limit(10).continue_token(&token))
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 410),
            other => panic!(
                "expected 410 Expired, got {:?}",
                other.map(|l| l.items.len())
            ),
        }
    })
    .await;
}

#[tokio::test]
async fn server_answers_version_and_404() {
    within(async {
        let server = ApiServer::start().await;
        let client = server.client();
        let version = client.apiserver_version().await.expect("/version");
        assert_eq!(
            (version.major.as_str(), version.minor.as_str()),
            ("1", "33")
        );
        match Api::<ConfigMap>::all(client)
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
            other => panic!("expected 404, got {other:?}"),
        }
    })
    .await;
}

/// The name and type of a watch event, for comparisons.
fn describe(event: &WatchEvent<Service>) -> String {
    match event {
        WatchEvent::Added(s) => format!("ADDED {}", s.name_any()),
        WatchEvent::Modified(s) => format!("MODIFIED {}", s.name_any()),
        WatchEvent::Deleted(s) => format!("DELETED {}", s.name_any()),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(e) => format!("ERROR {} {}", e.code, e.reason),
    }
}

/// The next event of a raw watch stream, described.
async fn next_event(stream: &mut BoxStream<'_, kube::Result<WatchEvent<Service>>>) -> String {
    match stream.try_next().await {
        Ok(Some(event)) => describe(&event),
        Ok(None) => panic!("the watch ended"),
        Err(e) => panic!("the watch failed: {e}"),
    }
}

#[tokio::test]
async fn server_watch_protocol() {
    within(async {
        let server = ApiServer::start().await;
        let a_rv = server.apply(service("default", "a", "10.96.0.1"));
        server.apply(service("default", "b", "10.96.0.2"));
        let api: Api<Service> = Api::all(server.client());

        // From "0": the current objects first, then changes.
        let params = WatchParams::default().disable_bookmarks();
        let mut from_zero = api.watch(&params, "0").await.expect("watch").boxed();
        let mut from_a = api
            .watch(&params, &a_rv.to_string())
            .await
            .expect("watch")
            .boxed();
        assert_eq!(next_event(&mut from_zero).await, "ADDED a");
        assert_eq!(next_event(&mut from_zero).await, "ADDED b");
        // From a resourceVersion: only what came after it.
        assert_eq!(next_event(&mut from_a).await, "ADDED b");
        server.delete(Kind::Service, "default", "a");
        assert_eq!(next_event(&mut from_zero).await, "DELETED a");
        assert_eq!(next_event(&mut from_a).await, "DELETED a");
        // Bookmarks only where they were asked for (the default of WatchParams).
        let mut bookmarked = api
            .watch(
                &WatchParams::default(),
                &server.resource_version().to_string(),
            )
            .await
            .expect("watch")
            .boxed();
        server
            .wait_until(|s| s.counters(Kind::Service).open_watches == 3)
            .await;
        let bookmark_rv = server.send_bookmark();
        assert_eq!(
            next_event(&mut bookmarked).await,
            format!("BOOKMARK {bookmark_rv}")
        );

        // Expired: open watches and watches from before the compaction.
        server.expire_watches();
        assert_eq!(next_event(&mut from_zero).await, "ERROR 410 Expired");
        assert!(
            from_zero.next().await.is_none(),
            "the stream ends after the error"
        );
        let mut old = api
            .watch(&params, &a_rv.to_string())
            .await
            .expect("watch")
            .boxed();
        assert_eq!(next_event(&mut old).await, "ERROR 410 Expired");
        let current = server.resource_version().to_string();
        let mut fresh = api.watch(&params, &current).await.expect("watch").boxed();
        server.apply(service("default", "c", "10.96.0.3"));
        assert_eq!(next_event(&mut fresh).await, "ADDED c");
    })
    .await;
}
