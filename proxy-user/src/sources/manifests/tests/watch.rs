//! Watching: resyncs on change, errors once, a missing path at once.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{TempDir, service_of};
use crate::sources::{
    Kind, SourceEvent,
    manifests::{ManifestError, parse::object_key, run, watch::watch},
};

const WAIT: Duration = Duration::from_secs(20);

async fn next_event(rx: &mut mpsc::Receiver<SourceEvent>) -> SourceEvent {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the source stopped"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// The next four events, which must be the Node, Service, EndpointSlice
/// and ServiceCIDR resyncs; returns the Services' first port numbers and
/// the slices' names.
async fn next_resync(rx: &mut mpsc::Receiver<SourceEvent>) -> (Vec<i32>, Vec<String>) {
    match next_event(rx).await {
        SourceEvent::Resync {
            kind: Kind::Node,
            objects,
        } => assert!(objects.is_empty(), "no Node in the files: {objects:?}"),
        other => panic!("expected a Node resync, got {other:?}"),
    }
    let services = match next_event(rx).await {
        SourceEvent::Resync {
            kind: Kind::Service,
            objects,
        } => objects,
        other => panic!("expected a Service resync, got {other:?}"),
    };
    let slices = match next_event(rx).await {
        SourceEvent::Resync {
            kind: Kind::EndpointSlice,
            objects,
        } => objects,
        other => panic!("expected an EndpointSlice resync, got {other:?}"),
    };
    match next_event(rx).await {
        SourceEvent::Resync {
            kind: Kind::ServiceCidr,
            objects,
        } => assert!(
            objects.is_empty(),
            "no ServiceCIDR in the files: {objects:?}"
        ),
        other => panic!("expected a ServiceCIDR resync, got {other:?}"),
    }
    let ports = services
        .iter()
        .map(|object| {
            let spec = service_of(object).spec.as_ref();
            spec.and_then(|s| s.ports.as_ref())
                .and_then(|ports| ports.first())
                .map_or(0, |port| port.port)
        })
        .collect();
    let names = slices.iter().map(|object| object_key(object).2).collect();
    (ports, names)
}

fn web(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{namespace: demo, name: web}}\n\
         spec: {{clusterIP: 198.19.0.10, ports: [{{name: http, port: {port}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{namespace: demo, name: web-1, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [198.18.1.10]}}]\n"
    )
}

#[tokio::test]
async fn run_resyncs_on_change_and_reports_errors() {
    let dir = TempDir::new("run");
    let file = dir.write("web.yaml", &web(80));
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(run(dir.0.clone(), tx));

    let initial = next_resync(&mut rx).await;
    assert_eq!(initial, (vec![80], vec!["web-1".to_owned()]));

    // Same size, rewritten right away: still seen.
    dir.write("web.yaml", &web(81));
    assert_eq!(next_resync(&mut rx).await.0, vec![81]);

    let broken = "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: web}\nspec: {ports: [{port: x}]}\n";
    dir.write("web.yaml", broken);
    match next_event(&mut rx).await {
        SourceEvent::Error(message) => {
            assert!(
                message.starts_with(&format!("{}:4:", file.display())),
                "{message}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }

    // Fixed back to the last good state: sent again, the error is over.
    dir.write("web.yaml", &web(81));
    assert_eq!(next_resync(&mut rx).await.0, vec![81]);

    // A new file in the folder is a change too.
    dir.write(
        "more/api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: api}\nspec: {clusterIP: 198.19.0.11, ports: [{port: 443}]}\n",
    );
    let mut ports = next_resync(&mut rx).await.0;
    ports.sort();
    assert_eq!(ports, vec![81, 443]);

    drop(rx);
    match tokio::time::timeout(WAIT, task).await {
        Ok(Ok(Ok(()))) => {}
        other => panic!("run did not end cleanly: {other:?}"),
    }
}

/// With polling an hour apart, only inotify can wake the watcher: a file
/// rewritten in place, a new subfolder written at once, and the `..data`
/// symbolic link of a mounted ConfigMap swapped to a new folder (as the
/// kubelet updates it) are each seen.
#[tokio::test]
async fn inotify_alone_sees_writes_new_folders_and_configmap_swaps() {
    use std::os::unix::fs::symlink;
    const SOON: Duration = Duration::from_secs(10);
    async fn soon(rx: &mut mpsc::Receiver<SourceEvent>) -> Vec<i32> {
        let mut ports = tokio::time::timeout(SOON, next_resync(rx))
            .await
            .unwrap_or_else(|_| panic!("no resync within {SOON:?}"))
            .0;
        ports.sort_unstable();
        ports
    }
    let dir = TempDir::new("inotify");
    // A mounted ConfigMap: the data in a timestamped folder, `..data`
    // pointing at it, and each key a link through `..data`.
    dir.write("..2026_12_03_01/web.yaml", &web(80));
    symlink("..2026_12_03_01", dir.0.join("..data")).expect("..data");
    symlink("..data/web.yaml", dir.0.join("web.yaml")).expect("web.yaml");
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(watch(dir.0.clone(), tx, Duration::from_secs(3600)));
    assert_eq!(soon(&mut rx).await, [80]);

    // The kubelet's update: a new folder, a new link renamed over `..data`,
    // the old folder removed.
    dir.write("..2026_12_03_02/web.yaml", &web(81));
    symlink("..2026_12_03_02", dir.0.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).expect("swap");
    std::fs::remove_dir_all(dir.0.join("..2026_12_03_01")).expect("old data");
    assert_eq!(soon(&mut rx).await, [81]);

    // A new subfolder, its file written straight after it is made.
    dir.write(
        "more/api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: api}\nspec: {clusterIP: 198.19.0.11, ports: [{port: 443}]}\n",
    );
    assert_eq!(soon(&mut rx).await, [81, 443]);

    // A file rewritten in place, in that new subfolder.
    dir.write(
        "more/api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: api}\nspec: {clusterIP: 198.19.0.11, ports: [{port: 444}]}\n",
    );
    assert_eq!(soon(&mut rx).await, [81, 444]);

    // The subfolder removed and made again: watched anew.
    std::fs::remove_dir_all(dir.0.join("more")).expect("remove more");
    assert_eq!(soon(&mut rx).await, [81]);
    dir.write(
        "more/api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: api}\nspec: {clusterIP: 198.19.0.11, ports: [{port: 445}]}\n",
    );
    assert_eq!(soon(&mut rx).await, [81, 445]);
    dir.write(
        "more/api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: api}\nspec: {clusterIP: 198.19.0.11, ports: [{port: 446}]}\n",
    );
    assert_eq!(soon(&mut rx).await, [81, 446]);

    drop(rx);
    task.abort();
}

#[tokio::test]
async fn run_fails_at_once_on_a_missing_path() {
    let dir = TempDir::new("missing");
    let (tx, _rx) = mpsc::channel(1);
    let result = tokio::time::timeout(WAIT, run(dir.0.join("nothing"), tx)).await;
    match result {
        Ok(Err(ManifestError::Io { path, .. })) => assert!(path.ends_with("nothing")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

/// A folder of Pods and a Service with a selector, no EndpointSlice: the
/// source sends the slice the EndpointSlice controller would write, and a
/// relabelled Pod leaves it at the next read.
#[tokio::test]
async fn pods_selected_by_a_service_become_its_endpoint_slice() {
    let dir = TempDir::new("selected");
    let service = "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: web}\n\
                   spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}\n";
    let pod = |name: &str, app: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: demo, name: {name}, labels: {{app: {app}}}}}\n\
             spec: {{nodeName: node-a, containers: [{{name: c}}]}}\n\
             status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
        )
    };
    dir.write("web.yaml", service);
    dir.write(
        "pods.yaml",
        &format!(
            "{}---\n{}",
            pod("a", "web", "198.18.1.10"),
            pod("b", "web", "198.18.1.11")
        ),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(run(dir.0.clone(), tx));
    let slice_addresses = |objects: &[crate::sources::Object]| -> Vec<String> {
        objects
            .iter()
            .flat_map(|o| match o {
                crate::sources::Object::EndpointSlice(s) => s
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addresses.clone())
                    .collect::<Vec<_>>(),
                other => panic!("not a slice: {other:?}"),
            })
            .collect()
    };
    let mut next_slices = async || {
        let mut slices = Vec::new();
        for _ in 0..4 {
            if let SourceEvent::Resync {
                kind: Kind::EndpointSlice,
                objects,
            } = next_event(&mut rx).await
            {
                slices = objects;
            }
        }
        slices
    };
    assert_eq!(
        slice_addresses(&next_slices().await),
        ["198.18.1.10", "198.18.1.11"]
    );
    dir.write(
        "pods.yaml",
        &format!(
            "{}---\n{}",
            pod("a", "web", "198.18.1.10"),
            pod("b", "db", "198.18.1.11")
        ),
    );
    assert_eq!(
        slice_addresses(&next_slices().await),
        ["198.18.1.10"],
        "b relabelled away"
    );
    drop(rx);
    let _ = tokio::time::timeout(WAIT, task).await;
}
