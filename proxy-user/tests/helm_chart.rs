//! The Helm chart `deploy/helm/svcnat`, rendered and linted by Helm's own
//! Go SDK (helm-python-sdk, installed by `cargo xtask setup`): with its
//! default values it renders exactly the objects of `deploy/` (which
//! `deploy_manifests.rs` checks in depth) plus Helm's own two labels; its
//! values reach the agent's flags, probes and pod spec; every flag it can
//! render is one `svcnat run` accepts; Helm's linter finds nothing.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart_dir() -> PathBuf {
    repo().join("deploy/helm/svcnat")
}

/// Where `cargo xtask setup` installed the Helm SDK, if it did.
fn helm_sdk() -> Option<PathBuf> {
    let dir = std::env::var_os("SVCNAT_HELM_SDK")
        .map_or_else(|| repo().join("target/tools/helm-python"), PathBuf::from);
    dir.join("helm_python").is_dir().then_some(dir)
}

macro_rules! helm_or_skip {
    () => {
        match helm_sdk() {
            Some(dir) => dir,
            None => {
                eprintln!("skipped: no Helm SDK (run `cargo xtask setup`)");
                return;
            }
        }
    };
}

/// Helm's rendering of the chart with `values` (release `svcnat` in
/// `kube-system`, as `helm template svcnat deploy/helm/svcnat -n
/// kube-system`), and its lint result.
fn render(sdk: &Path, values: &Value) -> (Vec<Value>, Value) {
    let req = json!({
        "chart": chart_dir(),
        "values": values,
        "name": "svcnat",
        "namespace": "kube-system",
    });
    let mut child = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/helm_render.py"))
        .env("PYTHONPATH", sdk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(req.to_string().as_bytes())
        .expect("send the request");
    let out = child.wait_with_output().expect("the renderer");
    assert!(
        out.status.success(),
        "helm render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: Value = serde_json::from_slice(&out.stdout).expect("the renderer's JSON");
    let mut docs = Vec::new();
    for (path, text) in out["rendered"].as_object().expect("rendered templates") {
        if !path.ends_with(".yaml") {
            continue;
        }
        let parsed: Vec<Value> = serde_saphyr::from_multiple(text.as_str().expect("text"))
            .unwrap_or_else(|e| panic!("{path} renders no YAML: {e}\n{text}"));
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
    }
    docs.sort_by_key(key);
    (docs, out["lint"].clone())
}

fn key(doc: &Value) -> (String, String) {
    (
        doc["kind"].as_str().unwrap_or_default().to_owned(),
        doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The objects `kubectl apply -k deploy/` applies.
fn kustomize_objects() -> Vec<Value> {
    let k: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo().join("deploy/kustomization.yaml")).expect("read"),
    )
    .expect("the kustomization");
    let mut docs = Vec::new();
    for file in k["resources"].as_array().expect("resources") {
        let path = repo()
            .join("deploy")
            .join(file.as_str().expect("a file name"));
        let text = std::fs::read_to_string(&path).expect("read a manifest");
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
    }
    docs.sort_by_key(key);
    docs
}

/// The labels Helm charts add by convention, which kustomize's objects
/// lack, taken out of every object's metadata.
fn without_helm_labels(mut docs: Vec<Value>) -> Vec<Value> {
    for d in &mut docs {
        let k = key(d);
        let labels = d["metadata"]["labels"]
            .as_object_mut()
            .unwrap_or_else(|| panic!("{k:?} has no labels"));
        assert_eq!(
            labels.remove("app.kubernetes.io/managed-by"),
            Some(json!("Helm"))
        );
        let chart = labels
            .remove("helm.sh/chart")
            .expect("a helm.sh/chart label");
        assert!(chart.as_str().is_some_and(|c| c.starts_with("svcnat-")));
    }
    docs
}

fn daemonset(docs: &[Value]) -> &Value {
    let ds: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "DaemonSet").collect();
    assert_eq!(ds.len(), 1);
    ds[0]
}

fn agent(docs: &[Value]) -> &Value {
    &daemonset(docs)["spec"]["template"]["spec"]["containers"][0]
}

fn args(docs: &[Value]) -> Vec<String> {
    agent(docs)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_owned())
        .collect()
}

#[test]
fn the_default_rendering_is_the_kustomize_deployment() {
    let sdk = helm_or_skip!();
    let (docs, _) = render(&sdk, &json!({}));
    let helm = without_helm_labels(docs);
    let kustomize = kustomize_objects();
    assert_eq!(
        helm.iter().map(key).collect::<Vec<_>>(),
        kustomize.iter().map(key).collect::<Vec<_>>()
    );
    for (h, k) in helm.iter().zip(&kustomize) {
        assert_eq!(h, k, "{:?}: the chart and deploy/ differ", key(h));
    }
}

#[test]
fn values_reach_the_flags_probes_and_pod_spec() {
    let sdk = helm_or_skip!();
    let values = json!({
        "image": {"repository": "registry.example/svcnat", "tag": "v1.2.3", "pullPolicy": "Always"},
        "apiServer": {"host": "198.18.0.1", "port": 8443},
        "podInterfaces": ["cali*"],
        "nodeInterfaces": ["eth0", "bond0"],
        "nodePortAddresses": ["198.18.0.0/24", "2001:db8::/64"],
        "serviceCidrs": ["198.19.0.0/16"],
        "externalIpCidrs": ["198.18.128.0/17"],
        "mapSizes": {"conntrack": 1048576, "snat": 262144, "affinity": 4096, "sourceRanges": 512, "nodeAddresses": 64},
        "metrics": {"address": "0.0.0.0", "port": 9249},
        "healthz": {"address": "0.0.0.0", "port": 9256},
        "socketLb": "off",
        "logFormat": "text",
        "extraArgs": ["--repair-interval=30"],
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    });
    let (docs, _) = render(&sdk, &values);
    let a = args(&docs);
    for want in [
        "--pod-interfaces=cali*",
        "--node-interfaces=eth0,bond0",
        "--nodeport-addresses=198.18.0.0/24,2001:db8::/64",
        "--service-cidr=198.19.0.0/16",
        "--external-ip-cidrs=198.18.128.0/17",
        "--conntrack-size=1048576",
        "--snat-size=262144",
        "--affinity-size=4096",
        "--source-ranges-size=512",
        "--node-addresses-size=64",
        "--metrics-addr=0.0.0.0:9249",
        "--healthz-addr=0.0.0.0:9256",
        "--socket-lb=off",
        "--log-format=text",
        "--repair-interval=30",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} not in {a:?}");
    }
    let c = agent(&docs);
    assert_eq!(c["image"], "registry.example/svcnat:v1.2.3");
    assert_eq!(c["imagePullPolicy"], "Always");
    let env = c["env"].as_array().expect("env");
    let var = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].clone())
    };
    assert_eq!(var("SVCNAT_API_SERVER_HOST"), Some(json!("198.18.0.1")));
    assert_eq!(var("SVCNAT_API_SERVER_PORT"), Some(json!("8443")));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], 9256, "{probe}");
    }
    assert_eq!(c["ports"][0]["containerPort"], 9256);
    assert_eq!(c["resources"], values["resources"]);
    let pod = &daemonset(&docs)["spec"]["template"]["spec"];
    assert_eq!(pod["tolerations"], values["tolerations"]);
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], "registry.example/svcnat:v1.2.3");
    // Map sizes left null are not rendered: the agent's defaults apply.
    let (defaults, _) = render(&sdk, &json!({}));
    assert!(!args(&defaults).iter().any(|x| x.contains("-size=")));
}

/// The long flags `svcnat run --help` lists.
fn run_flags() -> BTreeSet<String> {
    let out = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("svcnat run --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn every_flag_the_chart_renders_is_one_the_agent_accepts() {
    let sdk = helm_or_skip!();
    let known = run_flags();
    let all = json!({
        "nodePortAddresses": ["198.18.0.0/24"],
        "serviceCidrs": ["198.19.0.0/16"],
        "externalIpCidrs": ["198.18.128.0/17"],
        "mapSizes": {"conntrack": 1, "snat": 1, "affinity": 1, "sourceRanges": 1, "nodeAddresses": 1},
        "socketLb": "host",
    });
    let (docs, _) = render(&sdk, &all);
    let a = args(&docs);
    assert_eq!(a[0], "run");
    for arg in &a[1..] {
        let flag = arg
            .strip_prefix("--")
            .and_then(|f| f.split('=').next())
            .unwrap_or_else(|| panic!("not a flag: {arg}"));
        assert!(
            known.contains(flag),
            "--{flag} is not a flag of `svcnat run`"
        );
    }
}

#[test]
fn helm_lint_finds_nothing_and_the_app_version_is_the_agents() {
    let sdk = helm_or_skip!();
    let (_, lint) = render(&sdk, &json!({}));
    assert_eq!(lint["errors"], json!([]), "{lint:#}");
    // Severity 1 is Helm's INFO (for example "icon is recommended");
    // warnings (2) and errors (3) fail.
    let serious: Vec<&Value> = lint["messages"]
        .as_array()
        .expect("lint messages")
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
        .collect();
    assert!(serious.is_empty(), "{serious:#?}");
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("read Chart.yaml"),
    )
    .expect("Chart.yaml");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}
