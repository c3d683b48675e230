//! Where Services, EndpointSlices, this node's Node and the cluster's
//! ServiceCIDRs come from.
//!
//! Every source sends [`SourceEvent`]s into one channel; the sync task keeps the
//! objects, coalesces bursts and recomputes only the services that changed.
//! Both sources produce the same Kubernetes objects, so everything downstream is
//! the same for a cluster and for a folder of manifests.

use k8s_openapi::{
    api::{
        core::v1::{Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::ServiceCIDR,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

pub mod kube;
pub mod manifests;

/// A Service, an EndpointSlice, a Node or a ServiceCIDR, with managed
/// fields already stripped.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// `v1/Service`.
    Service(Box<Service>),
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice(Box<EndpointSlice>),
    /// `v1/Node` (cluster-scoped: no namespace). Sources may deliver other
    /// nodes' too; only this node's is used.
    Node(Box<Node>),
    /// `v1/Pod`: read by the manifests source, which turns the Pods that
    /// Services select into EndpointSlices ([`crate::selector`]); never
    /// sent on.
    Pod(Box<Pod>),
    /// `networking.k8s.io/v1/ServiceCIDR` (cluster-scoped): a network
    /// cluster IPs are allocated from.
    ServiceCidr(Box<ServiceCIDR>),
}

impl Object {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Node(_) => Kind::Node,
            Self::Pod(_) => Kind::Pod,
            Self::ServiceCidr(_) => Kind::ServiceCidr,
        }
    }

    /// Its metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Service(s) => &s.metadata,
            Self::EndpointSlice(s) => &s.metadata,
            Self::Node(n) => &n.metadata,
            Self::Pod(p) => &p.metadata,
            Self::ServiceCidr(c) => &c.metadata,
        }
    }

    /// Its metadata, to change.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Service(s) => &mut s.metadata,
            Self::EndpointSlice(s) => &mut s.metadata,
            Self::Node(n) => &mut n.metadata,
            Self::Pod(p) => &mut p.metadata,
            Self::ServiceCidr(c) => &mut c.metadata,
        }
    }
}

/// Which kind of object an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice,
    /// `v1/Node`.
    Node,
    /// `v1/Pod`.
    Pod,
    /// `networking.k8s.io/v1/ServiceCIDR`.
    ServiceCidr,
}

/// What a source tells the sync task.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// The object was added or changed.
    Apply(Object),
    /// The object is gone.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The complete current set of objects of `kind` (initial list, relist
    /// after `410 Gone`, or a re-read of the manifests). Objects of that kind
    /// missing from it are gone. Objects that did not change must cost nothing
    /// downstream.
    Resync {
        /// Which kind this list replaces.
        kind: Kind,
        /// Every object of that kind.
        objects: Vec<Object>,
    },
    /// A source could not read its input; the last good state stays in force.
    Error(String),
    /// This node's NodePort addresses, the complete current set (re-read
    /// by the agent on rtnetlink address events, with
    /// [`crate::agent::nodeport_addresses`]).
    NodeAddresses(Vec<std::net::IpAddr>),
}
