//! Whether a test, benchmark or the demo can run on this machine, and why
//! not: the one guard every one of them uses.
//!
//! A test says what it needs ([`Needs`]: root always, and the embedded eBPF
//! object, the bpffs, programs on PATH as it asks) and skips with the
//! printed reason when something is missing ([`skip_unless!`]), so that
//! `cargo test` without root or without `cargo xtask build-ebpf` still
//! passes and says what it left out.

use std::path::{Path, PathBuf};

/// What a test needs of the machine. Root is always needed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs<'a> {
    /// The eBPF object embedded in `svcnat` (built by `cargo xtask build-ebpf`).
    pub object: bool,
    /// A bpffs mounted at `/sys/fs/bpf` (pinned maps and links).
    pub bpffs: bool,
    /// Programs on PATH or in the sbin folders.
    pub programs: Vec<&'a str>,
}

impl<'a> Needs<'a> {
    /// Root only (a test that loads a BPF program of its own).
    pub fn root() -> Self {
        Self::default()
    }

    /// Root and the eBPF object: enough for `BPF_PROG_TEST_RUN` of the
    /// datapath with private maps ([`crate::datapath::TestDatapath`]).
    pub fn prog_run() -> Self {
        Self {
            object: true,
            ..Self::default()
        }
    }

    /// Root, the eBPF object and the bpffs: a dataplane with pinned maps.
    pub fn pinned() -> Self {
        Self {
            bpffs: true,
            ..Self::prog_run()
        }
    }

    /// [`Needs::pinned`] and `ip` (iproute2): network namespaces
    /// ([`crate::netns`]).
    pub fn netns() -> Self {
        Self::pinned().programs(&["ip"])
    }

    /// [`Needs::netns`] and `nsenter` (util-linux), to run an agent inside
    /// a namespace that sees the host's bpffs.
    pub fn agent() -> Self {
        Self::netns().programs(&["nsenter"])
    }

    /// [`Needs::agent`] and `programs`: a [`crate::cluster::Cluster`] whose
    /// pods run them.
    pub fn cluster(programs: &[&'a str]) -> Self {
        Self::agent().programs(programs)
    }

    /// These programs as well.
    pub fn programs(mut self, programs: &[&'a str]) -> Self {
        self.programs.extend_from_slice(programs);
        self
    }
}

/// Why a test with `needs` cannot run here (not root, no eBPF object, no
/// bpffs, missing programs), or None when it can.
pub fn skip_reason(needs: &Needs<'_>) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)".into());
    }
    if needs.object && svcnat::EBPF_OBJECT.is_empty() {
        return Some(
            "the eBPF object is not embedded: run `cargo xtask build-ebpf --release` first".into(),
        );
    }
    if needs.bpffs && !Path::new("/sys/fs/bpf").exists() {
        return Some("no bpffs at /sys/fs/bpf".into());
    }
    let missing: Vec<&str> = needs
        .programs
        .iter()
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing programs: {} (`cargo xtask setup` installs them)",
            missing.join(", ")
        )
    })
}

/// Returns from the calling test, printing `skipped: REASON`, when the
/// machine lacks what the [`Needs`] expression says it needs: the first line
/// of a test is `skip_unless!(Needs::prog_run());`.
#[macro_export]
macro_rules! skip_unless {
    ($needs:expr) => {
        if let Some(why) = $crate::skip::skip_reason(&$needs) {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Finds `program` on PATH or in the sbin folders.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
