//! `cargo xtask fuzz`: the packet fuzz of the datapath
//! (`proxy-user/tests/fuzz/`) with many packets, against a freshly built
//! eBPF object.

use std::path::Path;

use anyhow::{Result, bail};

use crate::{
    cmd::{Cmd, is_root},
    ebpf,
};

/// Packets of a full run.
pub const DEFAULT_PACKETS: u64 = 1_000_000;

/// Runs the `packet_fuzz` test with `packets` packets and `seed` (a new
/// one from the clock when `None`; the test prints it, and a failure says
/// how to run it again), the agent embedding `object`.
pub fn run(root: &Path, object: &Path, packets: u64, seed: Option<u64>) -> Result<()> {
    if !is_root() {
        bail!("xtask fuzz: needs root: it loads the datapath's programs (CAP_BPF, CAP_NET_ADMIN)");
    }
    let seed = seed.unwrap_or_else(clock_seed);
    let cmd = Cmd::new("cargo")
        .arg("test")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["-p", "proxy-user", "--test", "fuzz", "--"])
        .args(["--exact", "packet_fuzz", "--nocapture"])
        .dir(root)
        .env("SVCNAT_FUZZ_PACKETS", packets.to_string())
        .env("SVCNAT_FUZZ_SEED", format!("{seed:#x}"));
    ebpf::embed(cmd, root, object).run()
}

/// A seed from the clock, so that runs without `--seed` differ.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Parses a seed: decimal, or hexadecimal with `0x` (as the test prints it).
pub fn parse_seed(s: &str) -> Result<u64, String> {
    let s = s.trim().replace('_', "");
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("not a seed (decimal or 0x hex): {e}"))
}
