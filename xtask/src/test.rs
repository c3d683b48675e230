//! `cargo xtask test`: the workspace's tests against a freshly built datapath.

use std::path::Path;

use anyhow::Result;

use crate::{
    cmd::{Cmd, is_root},
    ebpf, setup,
};

/// Runs `cargo test` for the default members (every crate but the eBPF one,
/// which cannot build for the host) with `extra` appended, the agent
/// embedding `object`. Test threads are cargo's default (parallel): every test
/// that creates namespaces or pins names them uniquely.
pub fn run(root: &Path, object: &Path, extra: &[String]) -> Result<()> {
    if !is_root() {
        eprintln!(
            "xtask test: not running as root: tests that load programs or create network \
             namespaces (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) will skip and print why; \
             run as root to run them all"
        );
    }
    let cmd = Cmd::new("cargo")
        .arg("test")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(extra)
        .dir(root)
        .env("SVCNAT_HELM_SDK", setup::helm_sdk_dir(root))
        .env_remove("RUST_TEST_THREADS");
    ebpf::embed(cmd, root, object).run()
}
