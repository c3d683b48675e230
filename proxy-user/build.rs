//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the agent.
//!
//! The object is looked up at `$SVCNAT_EBPF_OBJECT`, else at the path
//! `cargo xtask build-ebpf --release` writes. When it is missing an empty file
//! is embedded instead, so that the host crates still build (clippy, unit tests);
//! loading then fails with an error that says to run `cargo xtask build-ebpf`.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=SVCNAT_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("SVCNAT_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/proxy-ebpf"));
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("proxy-ebpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write OUT_DIR"),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found: the agent will not be able to load its datapath; run `cargo xtask build-ebpf --release`",
                object.display()
            );
            fs::write(&out, []).expect("write OUT_DIR");
        }
    }
}
