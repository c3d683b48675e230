//! Model tables: real k8s-openapi objects (written as YAML) in, frontends,
//! backends and skips out. One file per part of the model; the helpers they
//! share are here.

mod addr;
mod endpoints;
mod ownership;
mod problems;
mod service;
mod service_cidr;
mod topology;

use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::*;

const NODE: &str = "node-a";

fn node() -> NodeInfo {
    NodeInfo {
        zone: None,
        name: NODE.to_owned(),
        addresses: vec![ip("198.18.0.1"), ip("198.18.0.2"), ip("2001:db8::1")],
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("bad address {text:?} in a test: {e}"))
}

fn service(yaml: &str) -> Service {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad test Service: {e}\n{yaml}"))
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad test EndpointSlice: {e}\n{yaml}"))
}

fn model(svc: &str, slices: &[&str]) -> ServiceModel {
    let slices: Vec<EndpointSlice> = slices.iter().map(|yaml| slice(yaml)).collect();
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    model_service(&service(svc), &refs, &node())
}

fn fe(kind: FrontendKind, address: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        kind,
        address: ip(address),
        port,
        protocol,
    }
}

fn cip(address: &str, port: u16) -> Frontend {
    fe(FrontendKind::ClusterIp, address, port, Protocol::Tcp)
}

/// A ready backend; local when on [`NODE`].
fn be(address: &str, port: u16, node_name: Option<&str>) -> Backend {
    Backend {
        address: ip(address),
        port,
        node_name: node_name.map(str::to_owned),
        is_local: node_name == Some(NODE),
        terminating: false,
        for_cluster: true,
        for_local: false,
    }
}

/// `b` in the Local set too.
fn and_local(b: Backend) -> Backend {
    Backend {
        for_local: true,
        ..b
    }
}

/// `b` in the Local set only.
fn local_only(b: Backend) -> Backend {
    Backend {
        for_cluster: false,
        for_local: true,
        ..b
    }
}

/// A terminating fallback backend.
fn term(address: &str, port: u16, node_name: Option<&str>) -> Backend {
    Backend {
        terminating: true,
        ..be(address, port, node_name)
    }
}

/// (port name, protocol, family, frontends, backends) of a service port.
type PortSummary = (String, Protocol, Family, Vec<Frontend>, Vec<Backend>);

fn summary(model: &ServiceModel) -> Vec<PortSummary> {
    model
        .ports
        .iter()
        .map(|p| {
            (
                p.port_name.clone(),
                p.protocol,
                p.family,
                p.frontends.clone(),
                p.backends.clone(),
            )
        })
        .collect()
}

fn port(
    name: &str,
    protocol: Protocol,
    family: Family,
    frontends: Vec<Frontend>,
    backends: Vec<Backend>,
) -> PortSummary {
    (name.to_owned(), protocol, family, frontends, backends)
}

/// The (port, reason label) pairs of the skips.
fn skip_labels(model: &ServiceModel) -> Vec<(Option<String>, &'static str)> {
    model
        .skipped
        .iter()
        .map(|skip| (skip.port.clone(), skip.reason.label()))
        .collect()
}

const WEB_SLICE: &str = "
metadata: {namespace: demo, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.1.10], nodeName: node-a}
- {addresses: [198.18.2.10], nodeName: node-b}
";

fn web_backends() -> Vec<Backend> {
    vec![
        be("198.18.1.10", 8080, Some("node-a")),
        be("198.18.2.10", 8080, Some("node-b")),
    ]
}
