//! The svcnat test kit: everything the tests, the examples (demo and
//! benchmarks) and `cargo xtask bench` need around the product, and nothing
//! the product needs. A dev-dependency of `proxy-user`, not part of the
//! `svcnat` library.
//!
//! - [`skip`]: whether a test can run here (root, the eBPF object, bpffs,
//!   programs) and the one guard that skips it with the reason.
//! - [`packet`]: a frame builder and parsers, checksums.
//! - [`prog_run`]: `BPF_PROG_TEST_RUN` over `bpf(2)`.
//! - [`datapath`]: the embedded datapath loaded with private maps, for
//!   packet tests.
//! - [`fixture`]: the runner of packet fixture tables; [`fixture6`]: what
//!   the IPv6 tables share.
//! - [`netns`]: network namespaces and veths.
//! - [`cluster`]: a multi-node cluster on one machine, made of namespaces,
//!   running the real `svcnat run`.

pub mod cluster;
pub mod datapath;
pub mod fixture;
pub mod fixture6;
pub mod netns;
pub mod packet;
pub mod pins;
pub mod prog_run;
pub mod skip;
