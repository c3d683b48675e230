//! `cargo xtask demo`: the demo example (`proxy-user/examples/demo.rs`),
//! built in release mode with a freshly built datapath, next to the `svcnat`
//! binary it runs on every simulated node.

use std::path::Path;

use anyhow::Result;

use crate::{cmd::Cmd, ebpf};

/// Builds `svcnat` and the demo, then runs `demo <args>` through
/// `cargo run --release`.
pub fn run(root: &Path, object: &Path, args: &[String]) -> Result<()> {
    // `cargo run --example` does not build the package's binaries.
    let build = Cmd::new("cargo")
        .args(["build", "--release", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .args(["-p", "proxy-user", "--bin", "svcnat", "--example", "demo"])
        .dir(root);
    ebpf::embed(build, root, object).run()?;
    let cmd = Cmd::new("cargo")
        .args(["run", "--release", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .args(["-p", "proxy-user", "--example", "demo", "--"])
        .args(args)
        .dir(root);
    ebpf::embed(cmd, root, object).run()
}
