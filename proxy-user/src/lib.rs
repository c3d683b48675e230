//! The svcnat agent: it keeps the BPF maps of the svcnat datapath equal to what
//! the cluster says.
//!
//! Sources -> model -> sync -> dataplane (maps). See `DESIGN.md`.

pub mod agent;
pub mod dataplane;
pub mod healthcheck;
pub mod inspect;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod rbac;
pub mod sources;
pub mod sync;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time
/// (empty when it was not built; loading then fails with a clear error).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf.o"));
