//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the agent.
//!
//! The object is looked up at `$SVCNAT_EBPF_OBJECT`, else at the path
//! `cargo xtask build-ebpf --release` writes. When it is missing an empty file
//! is embedded instead, so that the host crates still build (clippy, unit tests);
//! loading then fails with an error that says to run `cargo xtask build-ebpf`.
//!
//! It also sets `SVCNAT_COMMIT` for `svcnat version`: `$SVCNAT_COMMIT` when
//! set (the Containerfile's build argument: its context has no `.git`), else
//! `git rev-parse HEAD` of the checkout, else `unknown`.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// `git` in `dir` with `args`, its trimmed output when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The commit the agent is built from; asks cargo to run this again when
/// HEAD or the branch it names moves (not on every change of the index,
/// which would rebuild the crate at every `git add`).
fn commit(manifest: &Path) -> String {
    println!("cargo:rerun-if-env-changed=SVCNAT_COMMIT");
    if let Some(c) = env::var("SVCNAT_COMMIT").ok().filter(|c| !c.is_empty()) {
        return c;
    }
    let Some(commit) = git(manifest, &["rev-parse", "HEAD"]) else {
        return "unknown".to_owned();
    };
    let mut watched = vec![git(manifest, &["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(manifest, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(manifest, &["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(manifest, &["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        let path = manifest.join(path);
        // A missing file would make cargo run this at every build.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    commit
}

fn main() {
    println!("cargo:rerun-if-env-changed=SVCNAT_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rustc-env=SVCNAT_COMMIT={}", commit(&manifest));
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
