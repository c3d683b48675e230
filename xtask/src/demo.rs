//! `cargo xtask demo`: the agent's own demo (`svcnat demo`), built in release
//! mode with a freshly built datapath.

use std::path::Path;

use anyhow::Result;

use crate::{cmd::Cmd, ebpf};

/// Runs `svcnat demo <args>` through `cargo run --release`.
pub fn run(root: &Path, object: &Path, args: &[String]) -> Result<()> {
    let cmd = Cmd::new("cargo")
        .args(["run", "--release", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .args(["-p", "proxy-user", "--bin", "svcnat", "--", "demo"])
        .args(args)
        .dir(root);
    ebpf::embed(cmd, root, object).run()
}
