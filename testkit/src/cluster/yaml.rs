//! The manifests the agents read: YAML of Services and EndpointSlices
//! ([`service_yaml`], [`slice_yaml`]) and the cluster's manifests folder.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result, bail};

use super::topology::{Cluster, Host, twin6_of_plan};

/// Protocols of service ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// As Kubernetes spells it.
    pub fn k8s(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }

    /// As `svcnat inspect` spells it.
    pub fn inspect(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// An IP family, as Services' `ipFamilies` and EndpointSlices'
/// `addressType` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `addr`.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// Both, IPv4 first.
    pub const BOTH: [Self; 2] = [Self::V4, Self::V6];

    /// The address of this family that stands for the IPv4 address `v4` of
    /// the plan: `v4` itself, or its [`twin6_of_plan`]. Panics for an
    /// address without a twin (a test's mistake).
    pub fn plan(self, v4: Ipv4Addr) -> IpAddr {
        match self {
            Self::V4 => v4.into(),
            Self::V6 => twin6_of_plan(v4)
                .unwrap_or_else(|| panic!("{v4} has no IPv6 twin in the plan"))
                .into(),
        }
    }

    /// `host`'s address of this family.
    pub fn of_host(self, host: &Host) -> IpAddr {
        match self {
            Self::V4 => host.addr.into(),
            Self::V6 => host.addr6.into(),
        }
    }

    /// `ipv4` or `ipv6`, for names (of tests' namespaces, files, markers).
    pub fn tag(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    /// As Kubernetes spells it: `IPv4`, `IPv6`.
    pub fn k8s(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// A service port and the matching EndpointSlice port.
#[derive(Clone, Debug)]
pub struct Port {
    /// Port name (None: unnamed).
    pub name: Option<String>,
    /// Protocol.
    pub proto: Proto,
    /// The service port.
    pub port: u16,
    /// The backends' port.
    pub target: u16,
    /// Its `nodePort`: a Service with one is of `type: NodePort`.
    pub node_port: Option<u16>,
}

impl Port {
    /// A named TCP port.
    pub fn tcp(name: &str, port: u16, target: u16) -> Self {
        Self {
            name: Some(name.into()),
            proto: Proto::Tcp,
            port,
            target,
            node_port: None,
        }
    }

    /// A named UDP port.
    pub fn udp(name: &str, port: u16, target: u16) -> Self {
        Self {
            name: Some(name.into()),
            proto: Proto::Udp,
            port,
            target,
            node_port: None,
        }
    }

    /// Without a name.
    pub fn unnamed(mut self) -> Self {
        self.name = None;
        self
    }

    /// With `nodePort` `node_port`.
    pub fn node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }
}

/// An endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Address (its family is its slice's `addressType`).
    pub addr: IpAddr,
    /// `nodeName` (None: left out).
    pub node: Option<String>,
    /// `conditions.ready` (None: not written).
    pub ready: Option<bool>,
    /// `conditions.serving` (None: not written).
    pub serving: Option<bool>,
    /// `hints.forZones` (empty: not written).
    pub for_zones: Vec<String>,
    /// `hints.forNodes` (empty: not written).
    pub for_nodes: Vec<String>,
}

impl Endpoint {
    /// A ready endpoint for `pod`, with its node's name.
    pub fn of(pod: &Host) -> Self {
        Self {
            addr: pod.addr.into(),
            node: pod.node_name(),
            ready: Some(true),
            serving: None,
            for_zones: Vec::new(),
            for_nodes: Vec::new(),
        }
    }

    /// With the topology hint `hints.forZones: [{name: ZONE}]` (what the
    /// EndpointSlice controller writes for `PreferSameZone`).
    pub fn for_zone(mut self, zone: &str) -> Self {
        self.for_zones.push(zone.to_string());
        self
    }

    /// With the topology hint `hints.forNodes: [{name: NODE}]` (what the
    /// EndpointSlice controller writes for `PreferSameNode`).
    pub fn for_node(mut self, node: &str) -> Self {
        self.for_nodes.push(node.to_string());
        self
    }

    /// [`Endpoint::of`] with `pod`'s IPv6 address.
    pub fn of6(pod: &Host) -> Self {
        Self::of_family(pod, IpFamily::V6)
    }

    /// [`Endpoint::of`] with `pod`'s address of `family`.
    pub fn of_family(pod: &Host, family: IpFamily) -> Self {
        Self {
            addr: family.of_host(pod),
            ..Self::of(pod)
        }
    }

    /// Not ready and not serving (a running pod failing its readiness
    /// probe): not used, not even as the serving-terminating fallback.
    pub fn not_ready(mut self) -> Self {
        self.ready = Some(false);
        self.serving = Some(false);
        self
    }

    /// An endpoint with only an address (as hand-written slices often are).
    pub fn bare(addr: impl Into<IpAddr>) -> Self {
        Self {
            addr: addr.into(),
            node: None,
            ready: None,
            serving: None,
            for_zones: Vec::new(),
            for_nodes: Vec::new(),
        }
    }
}

/// YAML of a running Pod for `pod` (its name, node and address, as the
/// kubelet reports them) in `namespace` with `labels`, its `Ready`
/// condition `ready`, and one container port `http` on 80.
pub fn pod_yaml(namespace: &str, pod: &Host, labels: &[(&str, &str)], ready: bool) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let node = pod.node_name().unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {namespace}\n  \
         labels: {{{}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: web\n    \
         ports: [{{name: http, containerPort: 80}}]\nstatus:\n  phase: Running\n  \
         podIP: {}\n  podIPs: [{{ip: {}}}]\n  conditions:\n  - {{type: Ready, status: \"{}\"}}\n",
        pod.name,
        labels.join(", "),
        pod.addr,
        pod.addr,
        if ready { "True" } else { "False" }
    )
}

/// YAML of a Node named `name` with the label
/// `topology.kubernetes.io/zone: ZONE` (when given) and `taints` (keys,
/// effect `NoSchedule`).
pub fn node_yaml(name: &str, zone: Option<&str>, taints: &[&str]) -> String {
    let mut s = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
    if let Some(z) = zone {
        let _ = writeln!(s, "  labels: {{topology.kubernetes.io/zone: {z}}}");
    }
    if !taints.is_empty() {
        s.push_str("spec:\n  taints:\n");
        for t in taints {
            let _ = writeln!(s, "  - {{key: {t}, effect: NoSchedule}}");
        }
    }
    s
}

/// YAML of a ClusterIP Service. With `selector`, it selects `app: NAME`
/// (the slices are still written by hand here: svcnat never evaluates
/// selectors).
pub fn service_yaml(
    namespace: &str,
    name: &str,
    vip: Ipv4Addr,
    ports: &[Port],
    selector: bool,
) -> String {
    service_yaml_ips(namespace, name, &[vip.into()], ports, selector)
}

/// [`service_yaml`] with the cluster IPs `vips` (`clusterIPs`, the first
/// also `clusterIP`): one address is a single-stack Service of its family
/// (`ipFamilyPolicy: SingleStack` when IPv6), two of both families a
/// dual-stack one (`ipFamilyPolicy: RequireDualStack`, `ipFamilies` in
/// their order). `type: NodePort` when a port has a node port.
pub fn service_yaml_ips(
    namespace: &str,
    name: &str,
    vips: &[IpAddr],
    ports: &[Port],
    selector: bool,
) -> String {
    let first = vips.first().map(ToString::to_string).unwrap_or_default();
    let all: Vec<String> = vips.iter().map(|v| format!("\"{v}\"")).collect();
    let kind = if ports.iter().any(|p| p.node_port.is_some()) {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  type: {kind}\n  clusterIP: {first}\n  clusterIPs: [{}]\n",
        all.join(", ")
    );
    let families: Vec<&str> = vips.iter().map(|v| IpFamily::of(v).k8s()).collect();
    match vips {
        [IpAddr::V4(_)] => {}
        [_] => s.push_str("  ipFamilyPolicy: SingleStack\n"),
        _ => s.push_str("  ipFamilyPolicy: RequireDualStack\n"),
    }
    if !matches!(vips, [IpAddr::V4(_)]) {
        let _ = writeln!(s, "  ipFamilies: [{}]", families.join(", "));
    }
    if selector {
        let _ = writeln!(s, "  selector: {{app: {name}}}");
    }
    s.push_str("  ports:\n");
    for p in ports {
        s.push_str("  - {");
        if let Some(n) = &p.name {
            let _ = write!(s, "name: {n}, ");
        }
        let _ = write!(
            s,
            "protocol: {}, port: {}, targetPort: {}",
            p.proto.k8s(),
            p.port,
            p.target
        );
        if let Some(n) = p.node_port {
            let _ = write!(s, ", nodePort: {n}");
        }
        s.push_str("}\n");
    }
    s
}

/// How [`exposed_service`] exposes a Service beyond its cluster IPs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exposed<'a> {
    /// The node port of its one port (TCP 80 to the pods' 80).
    pub node_port: u16,
    /// `type: LoadBalancer` with these ingress IPs in its status (else
    /// `type: NodePort`).
    pub lb_ips: &'a [IpAddr],
    /// `externalIPs`.
    pub external_ips: &'a [IpAddr],
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
}

/// A Service `name` with the cluster IPs `vips` and one TCP port 80 (to
/// the pods' 80, named `http`) exposed as `ex` says, and its slices of
/// `endpoints` (one per family).
pub fn exposed_service(
    namespace: &str,
    name: &str,
    vips: &[IpAddr],
    ex: &Exposed<'_>,
    endpoints: &[Endpoint],
) -> String {
    let text = service_with_slices(
        namespace,
        name,
        vips,
        &[Port::tcp("http", 80, 80).node_port(ex.node_port)],
        endpoints,
    );
    let mut extra = String::new();
    if ex.local {
        extra.push_str("\n  externalTrafficPolicy: Local");
    }
    if !ex.external_ips.is_empty() {
        let ips: Vec<String> = ex
            .external_ips
            .iter()
            .map(|ip| format!("\"{ip}\""))
            .collect();
        let _ = write!(extra, "\n  externalIPs: [{}]", ips.join(", "));
    }
    let kind = if ex.lb_ips.is_empty() {
        "NodePort"
    } else {
        "LoadBalancer"
    };
    let mut text = text.replacen("type: NodePort", &format!("type: {kind}{extra}"), 1);
    if !ex.lb_ips.is_empty() {
        let ingress: String = ex
            .lb_ips
            .iter()
            .map(|ip| format!("    - ip: {ip}\n"))
            .collect();
        if let Some(at) = text.find("---\n") {
            text.insert_str(
                at,
                &format!("status:\n  loadBalancer:\n    ingress:\n{ingress}"),
            );
        }
    }
    text
}

/// YAML of an IPv4 EndpointSlice `slice` of `service` (ports carry the
/// targets).
pub fn slice_yaml(
    namespace: &str,
    slice: &str,
    service: &str,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    slice_yaml_of(IpFamily::V4, namespace, slice, service, ports, endpoints)
}

/// [`slice_yaml`] with `addressType` `family` (the endpoints should be of
/// that family: a test may write a wrong one on purpose).
pub fn slice_yaml_of(
    family: IpFamily,
    namespace: &str,
    slice: &str,
    service: &str,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  \
         namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {service}}}\n\
         addressType: {}\nports:\n",
        family.k8s()
    );
    for p in ports {
        s.push_str("- {");
        if let Some(n) = &p.name {
            let _ = write!(s, "name: {n}, ");
        }
        let _ = writeln!(s, "protocol: {}, port: {}}}", p.proto.k8s(), p.target);
    }
    if endpoints.is_empty() {
        s.push_str("endpoints: []\n");
    } else {
        s.push_str("endpoints:\n");
    }
    for e in endpoints {
        let _ = writeln!(s, "- addresses: [\"{}\"]", e.addr);
        let conditions: Vec<String> = [("ready", e.ready), ("serving", e.serving)]
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
            .collect();
        if !conditions.is_empty() {
            let _ = writeln!(s, "  conditions: {{{}}}", conditions.join(", "));
        }
        if let Some(n) = &e.node {
            let _ = writeln!(s, "  nodeName: {n}");
        }
        let names = |v: &[String]| {
            v.iter()
                .map(|n| format!("{{name: {n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut hints = Vec::new();
        if !e.for_zones.is_empty() {
            hints.push(format!("forZones: [{}]", names(&e.for_zones)));
        }
        if !e.for_nodes.is_empty() {
            hints.push(format!("forNodes: [{}]", names(&e.for_nodes)));
        }
        if !hints.is_empty() {
            let _ = writeln!(s, "  hints: {{{}}}", hints.join(", "));
        }
    }
    s
}

/// A Service with a selector plus its one EndpointSlice `NAME-1`.
pub fn service_with_slice(
    namespace: &str,
    name: &str,
    vip: Ipv4Addr,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    format!(
        "{}---\n{}",
        service_yaml(namespace, name, vip, ports, true),
        slice_yaml(namespace, &format!("{name}-1"), name, ports, endpoints)
    )
}

/// A Service with a selector and the cluster IPs `vips` (one, or two of
/// both families: see [`service_yaml_ips`]) plus one EndpointSlice per
/// family of `vips`, `NAME-ipv4` and `NAME-ipv6`, each with the `endpoints`
/// of its family.
pub fn service_with_slices(
    namespace: &str,
    name: &str,
    vips: &[IpAddr],
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    let mut s = service_yaml_ips(namespace, name, vips, ports, true);
    for family in vips.iter().map(IpFamily::of) {
        let mine: Vec<Endpoint> = endpoints
            .iter()
            .filter(|e| IpFamily::of(&e.addr) == family)
            .cloned()
            .collect();
        let slice = format!("{name}-{}", family.k8s().to_lowercase());
        s.push_str("---\n");
        s.push_str(&slice_yaml_of(
            family, namespace, &slice, name, ports, &mine,
        ));
    }
    s
}

/// The endpoints of `pods` in both families ([`Endpoint::of`] and
/// [`Endpoint::of6`] of each).
pub fn dual_stack_endpoints(pods: &[&Host]) -> Vec<Endpoint> {
    pods.iter()
        .flat_map(|p| [Endpoint::of(p), Endpoint::of6(p)])
        .collect()
}

impl Cluster {
    fn check_own_manifests(&self) -> Result<()> {
        if self.cfg.manifests.is_some() {
            bail!(
                "the agents read {}, which the cluster does not edit",
                self.manifests.display()
            );
        }
        Ok(())
    }

    /// Writes `file` in the manifests folder atomically (a hidden temporary
    /// file renamed over it), so an agent never reads half a file.
    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        self.check_own_manifests()?;
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, self.manifests.join(file)).context("rename manifest")?;
        Ok(())
    }

    /// Removes `file` from the manifests folder.
    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        self.check_own_manifests()?;
        fs::remove_file(self.manifests.join(file)).with_context(|| format!("remove {file}"))
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::cluster::topology::{pod_addr, pod_addr6};

    #[test]
    fn manifests_are_valid_objects() {
        let pod = Host {
            name: "b1".into(),
            node: Some(0),
            addr: pod_addr(0, 10),
            addr6: pod_addr6(0, 10),
            netns: String::new(),
            veth: None,
        };
        let yaml = service_with_slice(
            "demo",
            "web",
            Ipv4Addr::new(198, 19, 0, 10),
            &[Port::tcp("http", 80, 8080), Port::udp("dns", 53, 53)],
            &[Endpoint::of(&pod), Endpoint::bare(pod_addr(1, 10))],
        );
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("yaml");
        assert_eq!(docs.len(), 2);
        let objects = svcnat::sources::manifests::parse_manifests(&yaml).expect("valid objects");
        assert_eq!(objects.len(), 2);
        assert_eq!(docs[0]["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(docs[0]["spec"]["selector"]["app"], "web");
        assert_eq!(docs[1]["ports"][1]["protocol"], "UDP");
        assert_eq!(docs[1]["endpoints"][0]["nodeName"], "node-a");
        assert_eq!(docs[1]["endpoints"][0]["conditions"]["ready"], true);
        assert!(docs[1]["endpoints"][1].get("nodeName").is_none());
        let empty = slice_yaml(
            "demo",
            "web-1",
            "web",
            &[Port::tcp("http", 80, 80).unnamed()],
            &[],
        );
        let v: serde_json::Value = serde_saphyr::from_str(&empty).expect("yaml");
        assert_eq!(
            svcnat::sources::manifests::parse_manifests(&empty)
                .expect("valid slice")
                .len(),
            1
        );
        assert_eq!(v["endpoints"].as_array().map(Vec::len), Some(0));
        assert!(v["ports"][0].get("name").is_none());

        let vip6: IpAddr = "2001:db8:ff::10".parse().expect("address");
        let dual = service_with_slices(
            "demo",
            "dual",
            &[Ipv4Addr::new(198, 19, 0, 10).into(), vip6],
            &[Port::tcp("http", 80, 80)],
            &dual_stack_endpoints(&[&pod]),
        );
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&dual).expect("yaml");
        assert_eq!(
            svcnat::sources::manifests::parse_manifests(&dual)
                .expect("valid objects")
                .len(),
            3
        );
        assert_eq!(docs[0]["spec"]["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(docs[0]["spec"]["clusterIP"], "198.19.0.10");
        assert_eq!(docs[0]["spec"]["clusterIPs"][1], "2001:db8:ff::10");
        assert_eq!(docs[0]["spec"]["ipFamilies"][1], "IPv6");
        assert_eq!(
            (&docs[1]["metadata"]["name"], &docs[1]["addressType"]),
            (&"dual-ipv4".into(), &"IPv4".into())
        );
        assert_eq!(docs[1]["endpoints"][0]["addresses"][0], "198.18.1.10");
        assert_eq!(docs[2]["addressType"], "IPv6");
        assert_eq!(docs[2]["endpoints"][0]["addresses"][0], "2001:db8:1::10");
        assert_eq!(docs[2]["endpoints"].as_array().map(Vec::len), Some(1));
        let single6 = service_yaml_ips("demo", "six", &[vip6], &[], false);
        let v: serde_json::Value = serde_saphyr::from_str(&single6).expect("yaml");
        assert_eq!(v["spec"]["ipFamilyPolicy"], "SingleStack");
        assert_eq!(v["spec"]["ipFamilies"][0], "IPv6");
        assert_eq!(v["spec"]["type"], "ClusterIP");

        let np = service_yaml_ips(
            "demo",
            "np",
            &[vip6],
            &[Port::udp("dns", 53, 53).node_port(30053)],
            true,
        );
        assert_eq!(
            svcnat::sources::manifests::parse_manifests(&np)
                .expect("a valid Service")
                .len(),
            1
        );
        let v: serde_json::Value = serde_saphyr::from_str(&np).expect("yaml");
        assert_eq!(v["spec"]["type"], "NodePort");
        assert_eq!(v["spec"]["ports"][0]["nodePort"], 30053);
        assert_eq!(v["spec"]["ports"][0]["targetPort"], 53);
    }
}
