//! The manifests in `deploy/` (not `deploy/examples/`): every document parses
//! as the Kubernetes type of its kind with no field lost on the way, the
//! kustomization lists exactly the manifest files, the DaemonSet has what a
//! node agent replacing kube-proxy needs, and the ClusterRole grants exactly
//! [`svcnat::rbac::API_ACCESS`], which in turn covers every request the kube
//! source makes.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::de::DeserializeOwned;
use support::apiserver::ApiServer;
use svcnat::{
    rbac::{API_ACCESS, NAME, NAMESPACE},
    sources::{Kind, SourceEvent, kube::KubeSourceStats},
};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The YAML files directly in `deploy/`, by file name.
fn yaml_files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(deploy_dir()).expect("read deploy/") {
        let path = entry.expect("a deploy/ entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name")
            .to_owned();
        if path.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            let text = std::fs::read_to_string(&path).expect("read a manifest");
            out.insert(name, text);
        }
    }
    out
}

/// Every object of the manifests, typed.
#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
}

/// Deserializes `doc` as `T` and checks that serializing it again gives the
/// same document: a misspelt or misplaced field, which k8s-openapi would
/// silently drop, fails here.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &serde_json::Value) -> T {
    let obj: T =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}\n{doc:#}"));
    let back = serde_json::to_value(&obj).expect("serialize back");
    assert_eq!(
        &back,
        doc,
        "{file}: fields lost or changed by parsing as {}",
        std::any::type_name::<T>()
    );
    obj
}

fn load() -> Manifests {
    let files = yaml_files();
    let mut m = Manifests::default();
    for (name, text) in &files {
        if name == "kustomization.yaml" {
            continue;
        }
        let mut docs = 0;
        let values: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        for doc in values {
            if doc.is_null() {
                continue;
            }
            docs += 1;
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            match (api_version, kind) {
                ("apps/v1", "DaemonSet") => m.daemonsets.push(typed(name, &doc)),
                ("v1", "ServiceAccount") => m.service_accounts.push(typed(name, &doc)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    m.cluster_roles.push(typed(name, &doc));
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    m.bindings.push(typed(name, &doc));
                }
                other => panic!("{name}: unexpected object {other:?}"),
            }
        }
        assert!(docs > 0, "{name} holds no object");
    }
    m
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
}

#[test]
fn the_kustomization_lists_exactly_the_manifest_files() {
    let files = yaml_files();
    let k: Kustomization = serde_saphyr::from_str(
        files
            .get("kustomization.yaml")
            .expect("deploy/kustomization.yaml"),
    )
    .expect("a kustomization");
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let listed: BTreeSet<&str> = k.resources.iter().map(String::as_str).collect();
    assert_eq!(listed.len(), k.resources.len(), "a resource listed twice");
    let present: BTreeSet<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|n| *n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}

#[test]
fn every_manifest_parses_as_its_kind() {
    let m = load();
    assert_eq!(m.daemonsets.len(), 1);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec");
    let agents: Vec<&Container> = pod
        .containers
        .iter()
        .filter(|c| {
            c.args
                .as_ref()
                .is_some_and(|a| a.first().map(String::as_str) == Some("run"))
        })
        .collect();
    assert_eq!(agents.len(), 1, "one container runs `svcnat run`");
    agents[0]
}

/// `--flag=value` or `--flag value` arguments, by flag.
fn flags(args: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut it = args.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let flag = a
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("not a flag: {a}"));
        let (k, v) = match flag.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => match it.peek() {
                Some(v) if !v.starts_with("--") => {
                    (flag.to_owned(), it.next().cloned().unwrap_or_default())
                }
                _ => (flag.to_owned(), String::new()),
            },
        };
        assert!(out.insert(k.clone(), v).is_none(), "--{k} twice");
    }
    out
}

#[test]
fn the_daemonset_runs_a_privileged_host_network_agent_on_every_node() {
    let m = load();
    let ds = &m.daemonsets[0];
    assert_eq!(ds.metadata.name.as_deref(), Some(NAME));
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
    let spec = ds.spec.as_ref().expect("a DaemonSet spec");
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("pod labels");
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "the selector matches the pods");
    }
    let pod = spec.template.spec.as_ref().expect("a pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    // One toleration with no key and operator Exists tolerates every taint.
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{:?}",
        pod.tolerations
    );

    let c = agent_container(ds);
    let privileged = |c: &Container| {
        c.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    };
    assert!(privileged(c));
    for init in pod.init_containers.iter().flatten() {
        assert!(
            privileged(init),
            "init container {} mounts bpffs",
            init.name
        );
    }

    // NODE_NAME from the downward API.
    let env: BTreeMap<&str, _> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let node = env.get("NODE_NAME").expect("NODE_NAME");
    assert_eq!(
        node.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    // Arguments.
    let args = c.args.as_ref().expect("args");
    let f = flags(args);
    let pods: BTreeSet<&str> = f["pod-interfaces"].split(',').collect();
    for cni in ["veth*", "lxc*", "cali*"] {
        assert!(pods.contains(cni), "--pod-interfaces lacks {cni}");
    }
    assert_eq!(f["node-interfaces"], "eth0");
    // The API server address comes from variables the operator sets.
    for (flag, var) in [
        ("api-server-host", "SVCNAT_API_SERVER_HOST"),
        ("api-server-port", "SVCNAT_API_SERVER_PORT"),
    ] {
        assert_eq!(f[flag], format!("$({var})"));
        assert!(env.contains_key(var), "{var} is not defined");
    }
    assert!(
        env["SVCNAT_API_SERVER_PORT"]
            .value
            .as_deref()
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)),
        "SVCNAT_API_SERVER_PORT is a port"
    );
    let healthz: std::net::SocketAddr = f["healthz-addr"].parse().expect("--healthz-addr");
    assert_eq!(healthz.port(), 10256);
    assert!(
        healthz.ip().is_unspecified(),
        "the kubelet probes the node address"
    );

    // Every flag the DaemonSet passes exists in `svcnat run`.
    let help = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("run svcnat run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in f.keys() {
        assert!(
            help.contains(&format!("--{flag}")),
            "svcnat run has no --{flag}"
        );
    }

    // Probes on the health port: liveness on /livez (not /healthz, which
    // fails while the node drains), readiness on /readyz.
    let probe = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        let g = p.and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
        assert_eq!(g.port, IntOrString::Int(10256));
        g.path.clone().unwrap_or_default()
    };
    assert_eq!(probe(c.liveness_probe.as_ref()), "/livez");
    assert_eq!(probe(c.readiness_probe.as_ref()), "/readyz");
    if c.startup_probe.is_some() {
        assert_eq!(probe(c.startup_probe.as_ref()), "/livez");
    }

    // Resource requests.
    let requests = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("resource requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    // Host paths: bpffs (pins outlive the agent) and the cgroup v2 root.
    let volumes: BTreeMap<&str, &str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mounts: BTreeMap<&str, &str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    let volume_of = |host: &str| {
        volumes
            .iter()
            .find(|(_, p)| **p == host)
            .map(|(n, _)| *n)
            .unwrap_or_else(|| panic!("no hostPath volume for {host}"))
    };
    assert_eq!(mounts.get(volume_of("/sys/fs/bpf")), Some(&"/sys/fs/bpf"));
    let cgroup = mounts
        .get(volume_of("/sys/fs/cgroup"))
        .expect("cgroup2 not mounted");
    // The socket hooks attach where the host's cgroup root is mounted.
    let args = c.args.iter().flatten().collect::<Vec<_>>();
    assert!(
        args.iter()
            .any(|a| **a == format!("--cgroup-root={cgroup}")),
        "--cgroup-root={cgroup} not among {args:?}"
    );
}

/// The rules as (apiGroup, resource, verb), with nothing wider.
fn granted(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    assert!(role.aggregation_rule.is_none());
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(
                        ![g, r, v].iter().any(|s| s.contains('*')),
                        "wildcard in {rule:?}"
                    );
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn api_access() -> BTreeSet<(String, String, String)> {
    API_ACCESS
        .iter()
        .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_cluster_role_grants_exactly_what_the_agent_needs() {
    let m = load();
    let role = &m.cluster_roles[0];
    let have = granted(role);
    let need = api_access();
    let missing: Vec<_> = need.difference(&have).collect();
    let extra: Vec<_> = have.difference(&need).collect();
    assert!(missing.is_empty(), "rbac.yaml lacks {missing:?}");
    assert!(extra.is_empty(), "rbac.yaml grants more: {extra:?}");

    // Bound to the ServiceAccount the DaemonSet runs as.
    let sa = &m.service_accounts[0];
    assert_eq!(sa.metadata.name.as_deref(), Some(NAME));
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
    let b = &m.bindings[0];
    assert_eq!(b.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), role.metadata.name.as_ref());
    let subjects: Vec<(&str, &str, Option<&str>)> = b
        .subjects
        .iter()
        .flatten()
        .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
        .collect();
    assert_eq!(subjects, [("ServiceAccount", NAME, Some(NAMESPACE))]);
}

/// The kube source against the test API server, which answers 404 to
/// anything but list and watch of Services, EndpointSlices, Nodes and
/// ServiceCIDRs: it reaches every kind's watch with no failed request, and
/// each request it made is in [`API_ACCESS`].
#[tokio::test]
async fn api_access_covers_every_request_of_the_kube_source() {
    let test = async {
        let server = ApiServer::start().await;
        let stats = Arc::new(KubeSourceStats::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let source = tokio::spawn(svcnat::sources::kube::run(
            server.client(),
            tx,
            Arc::clone(&stats),
            "node-a".to_owned(),
        ));
        let mut resynced = BTreeSet::new();
        while resynced.len() < 4 {
            match rx.recv().await {
                Some(SourceEvent::Resync { kind, .. }) => {
                    resynced.insert(kind);
                }
                Some(_) => {}
                None => panic!("the source stopped: {:?}", source.await),
            }
        }
        server.wait_watching(Kind::Service).await;
        server.wait_watching(Kind::EndpointSlice).await;
        server.wait_watching(Kind::Node).await;
        server.wait_watching(Kind::ServiceCidr).await;
        let mut made = BTreeSet::new();
        for (kind, group, resource) in [
            (Kind::Service, "", "services"),
            (Kind::EndpointSlice, "discovery.k8s.io", "endpointslices"),
            (Kind::Node, "", "nodes"),
            (Kind::ServiceCidr, "networking.k8s.io", "servicecidrs"),
        ] {
            let c = server.counters(kind);
            if c.lists > 0 {
                made.insert((group.to_owned(), resource.to_owned(), "list".to_owned()));
            }
            if c.watches > 0 {
                made.insert((group.to_owned(), resource.to_owned(), "watch".to_owned()));
            }
        }
        assert_eq!(
            stats
                .watch_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "a request was refused"
        );
        source.abort();
        made
    };
    let made = tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the kube source reached its watches within 60 s");
    assert_eq!(made.len(), 8, "{made:?}");
    let need = api_access();
    for m in &made {
        assert!(need.contains(m), "the kube source needs {m:?}");
    }
}
