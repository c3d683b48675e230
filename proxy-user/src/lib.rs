//! The svcnat agent: it keeps the BPF maps of the svcnat datapath equal to what
//! the cluster says.
//!
//! Sources -> model -> plan -> sync -> dataplane (maps):
//!
//! - [`sources`] read Services and EndpointSlices (a Kubernetes API server,
//!   or a folder of manifests) and send them as events;
//! - [`model`] turns one Service and its slices into what it promises
//!   (ports, frontends, backends, policies), reporting what it cannot use;
//! - [`plan`] turns a model into frontends with typed policy, and says what
//!   the datapath can serve;
//! - [`sync`] keeps the store of objects and applies the plan of each
//!   changed Service to the dataplane, once per batch of changes;
//! - [`dataplane`] loads, pins, sizes, migrates and attaches the eBPF
//!   programs and keeps their maps equal to the plan (its `maps` module is
//!   the only codec of map entries).
//!
//! Around them: [`agent`] wires the tasks; [`http`] is the one HTTP server
//! loop, [`health`] the agent's health, served by [`metrics`] (`/metrics`,
//! `/healthz`, `/readyz`) and [`healthcheck`] (health-check node ports);
//! [`inspect`] reads the pinned maps for `svcnat inspect`; [`host`] lists
//! the node's interfaces and addresses; [`sockdiag`] lists and destroys
//! host UDP sockets (sock_diag). The README's "Layout" section maps the
//! repository.

pub mod agent;
pub mod dataplane;
pub mod health;
pub mod healthcheck;
pub mod host;
pub mod http;
pub mod inspect;
pub mod linkwatch;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod rbac;
pub mod selector;
pub mod sockdiag;
pub mod sources;
pub mod sync;
pub mod version;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time
/// (empty when it was not built; loading then fails with a clear error).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf.o"));
