//! Reading files and folders, and the examples shipped in `deploy/examples`.

use std::{net::IpAddr, path::Path};

use super::{TempDir, key, keys, service_of};
use crate::{
    model::{
        Backend, Family, Frontend, FrontendKind, NodeInfo, Protocol, ServiceName, model_cluster,
    },
    sources::{
        Kind, Object,
        manifests::{ManifestError, load_path},
    },
};

#[test]
fn load_path_reads_a_folder_in_path_order() {
    let dir = TempDir::new("folder");
    dir.write(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: web}\nspec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}\n",
    );
    dir.write(
        "b/c.yml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: web}\nspec: {clusterIP: 198.19.0.2, ports: [{port: 80}]}\n",
    );
    dir.write(
        "b/d.json",
        r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"namespace": "demo", "name": "web-1"}, "addressType": "IPv4", "endpoints": []}"#,
    );
    // Not read: other extensions, hidden files and folders.
    dir.write("notes.txt", "not: [yaml");
    dir.write(".hidden.yaml", "not: [yaml");
    dir.write("..data/web.yaml", "not: [yaml");
    let objects = load_path(&dir.0).unwrap_or_else(|e| panic!("unexpected error: {e}"));
    assert_eq!(
        keys(&objects),
        vec![
            key(Kind::Service, "demo", "web"),
            key(Kind::EndpointSlice, "demo", "web-1"),
        ]
    );
    // b/c.yml comes after a.yaml: its definition wins.
    let spec = service_of(&objects[0]).spec.as_ref();
    assert_eq!(
        spec.and_then(|s| s.cluster_ip.as_deref()),
        Some("198.19.0.2")
    );

    // A single file is read whatever its name.
    let single = dir.write(
        "single.txt",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
    );
    let objects = load_path(&single).unwrap_or_else(|e| panic!("unexpected error: {e}"));
    assert_eq!(keys(&objects), vec![key(Kind::Service, "default", "x")]);
}

#[test]
fn load_path_errors_name_the_path_and_line() {
    let dir = TempDir::new("broken");
    dir.write(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
    );
    let broken = dir.write(
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports: [{port: [80]}]\n",
    );
    let error = match load_path(&dir.0) {
        Ok(objects) => panic!("no error, got {objects:?}"),
        Err(error) => error,
    };
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("{}:5:", broken.display())),
        "{text}"
    );
    assert!(
        matches!(&error, ManifestError::Parse { path: Some(p), line: Some(5), .. } if *p == broken),
        "{error:?}"
    );

    let missing = dir.0.join("missing");
    let error = match load_path(&missing) {
        Ok(objects) => panic!("no error, got {objects:?}"),
        Err(error) => error,
    };
    assert!(
        matches!(&error, ManifestError::Io { path, .. } if *path == missing),
        "{error:?}"
    );
    assert!(error.to_string().contains("missing"), "{error}");
}

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("bad address {text:?}: {e}"))
}

#[test]
fn the_examples_model_as_documented() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let objects = load_path(&folder).unwrap_or_else(|e| panic!("examples: {e}"));
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for object in objects {
        match object {
            Object::Service(svc) => services.push(*svc),
            Object::EndpointSlice(slice) => slices.push(*slice),
            Object::Node(_) | Object::Pod(_) | Object::ServiceCidr(_) => {
                panic!("the examples hold no {object:?}")
            }
        }
    }
    let node = NodeInfo {
        zone: None,
        name: "node-a".to_owned(),
        addresses: vec![ip("198.18.0.1")],
    };
    let models = model_cluster(&services, &slices, &node);
    let backend = |address: &str, port: u16, node_name: Option<&str>| Backend {
        address: ip(address),
        port,
        node_name: node_name.map(str::to_owned),
        is_local: node_name == Some("node-a"),
        terminating: false,
        for_cluster: true,
        for_local: false,
    };
    let vip = |address: &str, port: u16, protocol: Protocol| Frontend {
        kind: FrontendKind::ClusterIp,
        address: ip(address),
        port,
        protocol,
    };
    // (service, port name, protocol, frontends, backends)
    let expected = [
        (
            "dns",
            "dns",
            Protocol::Udp,
            vec![vip("198.19.0.53", 53, Protocol::Udp)],
            vec![
                backend("198.18.1.20", 53, Some("node-a")),
                backend("198.18.2.20", 53, Some("node-b")),
            ],
        ),
        (
            "dns",
            "dns-tcp",
            Protocol::Tcp,
            vec![vip("198.19.0.53", 53, Protocol::Tcp)],
            vec![
                backend("198.18.1.20", 53, Some("node-a")),
                backend("198.18.2.20", 53, Some("node-b")),
            ],
        ),
        (
            "external",
            "",
            Protocol::Tcp,
            vec![vip("198.19.0.80", 8080, Protocol::Tcp)],
            vec![backend("198.18.2.30", 80, None)],
        ),
        (
            "web",
            "http",
            Protocol::Tcp,
            vec![vip("198.19.0.10", 80, Protocol::Tcp)],
            vec![
                backend("198.18.1.10", 80, Some("node-a")),
                backend("198.18.1.11", 80, Some("node-a")),
                backend("198.18.2.10", 80, Some("node-b")),
            ],
        ),
        (
            "web",
            "http",
            Protocol::Tcp,
            vec![vip("2001:db8:ff::10", 80, Protocol::Tcp)],
            vec![
                backend("2001:db8:1::10", 80, Some("node-a")),
                backend("2001:db8:1::11", 80, Some("node-a")),
                backend("2001:db8:2::10", 80, Some("node-b")),
            ],
        ),
    ];
    let got: Vec<_> = models
        .values()
        .flat_map(|model| {
            assert_eq!(model.skipped, vec![], "{}", model.name);
            assert_eq!(model.no_datapath, None, "{}", model.name);
            model.ports.iter()
        })
        .map(|p| {
            let family = if p.frontends.iter().all(|f| f.address.is_ipv4()) {
                Family::V4
            } else {
                Family::V6
            };
            assert_eq!(p.family, family, "{p:?}");
            (
                p.service.name.as_str(),
                p.port_name.as_str(),
                p.protocol,
                p.frontends.clone(),
                p.backends.clone(),
            )
        })
        .collect();
    let expected: Vec<_> = expected
        .iter()
        .map(|(s, n, p, f, b)| (*s, *n, *p, f.clone(), b.clone()))
        .collect();
    assert_eq!(got, expected);
    let names: Vec<ServiceName> = models.keys().cloned().collect();
    assert!(names.iter().all(|n| n.namespace == "demo"), "{names:?}");
}
