//! `cargo xtask build-ebpf` and `cargo xtask clippy-ebpf`: the eBPF crate,
//! built with nightly for `bpfel-unknown-none`, `core` built from source.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{
    cmd::{Cmd, target_dir},
    setup::Toolchain,
};

const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "proxy-ebpf";

/// Full debug info, and `--btf` for bpf-linker: the object then carries BTF,
/// so `bpftool map dump` shows the fields of `#[btf_map]` keys and values.
/// With `--target` given, cargo applies these to the eBPF crates only, not to
/// build scripts and proc macros built for the host.
///
/// `--disable-expand-memcpy-in-order`: without it bpf-linker has LLVM's BPF
/// backend expand every struct copy itself, and that expansion aborts
/// (`unsupported memcpy alignment`, a SIGILL in the "Post-RA pseudo
/// instruction expansion" pass) on a copy between two 16-aligned stack
/// slots, which IPv6's 16-byte addresses produce (fixed upstream in LLVM
/// PR 199541, not in the nightly's LLVM 22). LLVM's generic expansion into
/// loads and stores is used instead.
const RUSTFLAGS: &[&str] = &[
    "-C",
    "debuginfo=2",
    "-C",
    "link-arg=--btf",
    "-C",
    "link-arg=--disable-expand-memcpy-in-order",
];

/// Without optimisation the programs do not pass the verifier, so a debug
/// build keeps debug info but is optimised and free of runtime checks.
const DEBUG_PROFILE: &[&str] = &[
    "--config",
    "profile.dev.opt-level=3",
    "--config",
    "profile.dev.debug-assertions=false",
    "--config",
    "profile.dev.overflow-checks=false",
];

/// `cargo +<nightly> <subcommand> ... -p proxy-ebpf`, run from the workspace
/// root with bpf-linker first on PATH and the nightly's libLLVM (which
/// bpf-linker loads) on the library path. `+nightly` wins over the stable
/// channel that `rust-toolchain.toml` pins.
fn nightly_cargo(root: &Path, toolchain: &Toolchain, subcommand: &str) -> Cmd {
    Cmd::new("cargo")
        .arg(format!("+{}", toolchain.nightly))
        .arg(subcommand)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["-Z", "build-std=core", "--target", TARGET, "-p", PACKAGE])
        .dir(root)
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
        .env_prepend("PATH", &toolchain.linker_dir)
        .env_prepend("LD_LIBRARY_PATH", &toolchain.nightly_lib)
}

/// Where `build` writes the object.
pub fn object_path(root: &Path, release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    target_dir(root).join(TARGET).join(profile).join(PACKAGE)
}

/// Builds the eBPF object; returns its path.
pub fn build(root: &Path, toolchain: &Toolchain, release: bool) -> Result<PathBuf> {
    let cmd = nightly_cargo(root, toolchain, "build");
    let cmd = if release {
        cmd.arg("--release")
    } else {
        cmd.args(DEBUG_PROFILE)
    };
    cmd.run()?;
    let object = object_path(root, release);
    if !object.is_file() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    Ok(object)
}

/// Runs clippy on the eBPF crate for its own target, warnings denied.
pub fn clippy(root: &Path, toolchain: &Toolchain) -> Result<()> {
    nightly_cargo(root, toolchain, "clippy")
        .args(["--", "-D", "warnings"])
        .run()
}

/// Points the agent's build script (`proxy-user/build.rs`) at `object`.
///
/// The build script reads `$SVCNAT_EBPF_OBJECT`, else
/// `<root>/target/bpfel-unknown-none/release/proxy-ebpf`. The variable is set
/// only when that default would be wrong (another target folder, or a value
/// inherited from the caller), because a change of it re-runs the build script
/// and rebuilds the agent.
pub fn embed(cmd: Cmd, root: &Path, object: &Path) -> Cmd {
    const VAR: &str = "SVCNAT_EBPF_OBJECT";
    let default = root
        .join("target")
        .join(TARGET)
        .join("release")
        .join(PACKAGE);
    if object != default || std::env::var_os(VAR).is_some() {
        cmd.env(VAR, object)
    } else {
        cmd
    }
}
