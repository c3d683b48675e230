//! The cgroup socket hooks (socket-level load balancing for the node's own
//! processes): attached with BPF links at the cgroup v2 root, pinned under
//! `links/` as `cgroup-<hook>`, and scoped to the agent's network
//! namespace through `SVCNAT_SOCK_CFG` (see the eBPF `pipeline/sock.rs`).

use std::{
    fs, io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink};
use proxy_common::{SOCK_CFG_KEY, SOCK_HOOKS, SOCK_LINK_PREFIX, SockConfig, SockHook, map_names};

use super::attach::AttachReport;
use super::error::{DataplaneError, Result, io_err, map_err};
use super::handle::Dataplane;
use super::loader::program_mut;

/// `CGROUP2_SUPER_MAGIC`: the `f_type` of a cgroup v2 mount.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is the root of a cgroup v2 mount (or any folder of one).
fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; `c` is a valid C string.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// The cgroup v2 folder to attach at for `--cgroup-root`: the folder
/// itself when it is cgroup v2, else its `unified` folder when that is
/// (systemd's hybrid layout mounts cgroup v2 there).
pub fn cgroup2_root(root: &Path) -> io::Result<PathBuf> {
    if is_cgroup2(root) {
        return Ok(root.to_path_buf());
    }
    let unified = root.join("unified");
    if is_cgroup2(&unified) {
        return Ok(unified);
    }
    Err(io::Error::other(format!(
        "{} is not a cgroup v2 mount (nor is {}): the socket hooks need cgroup v2",
        root.display(),
        unified.display()
    )))
}

/// The cookie of the calling thread's network namespace
/// (`SO_NETNS_COOKIE`), which the socket hooks compare theirs with.
pub fn netns_cookie() -> io::Result<u64> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Path of the pin of `hook`'s link under `dir`.
fn pin_of(dir: &Path, hook: &SockHook) -> PathBuf {
    dir.join("links")
        .join(format!("{SOCK_LINK_PREFIX}{}", hook.hook))
}

impl Dataplane {
    /// Attaches every socket hook at the cgroup v2 folder `root` (see
    /// [`cgroup2_root`]), acting on the sockets of the calling thread's
    /// network namespace only. A hook whose link an earlier agent pinned
    /// gets a new link with this agent's program before the old one goes
    /// (reported as adopted): both run the same maps, and a socket the old
    /// one translated holds a backend's address, which the new one leaves
    /// alone, so nothing is translated twice or missed.
    pub fn attach_sockets(&mut self, root: &Path) -> Result<AttachReport> {
        let mut report = AttachReport::default();
        let cookie = netns_cookie().map_err(io_err(Path::new("SO_NETNS_COOKIE")))?;
        let cfg = SockConfig {
            netns_cookie: cookie,
            flags: 0,
            pad: 0,
        };
        self.maps
            .SOCK_CFG
            .insert(SOCK_CFG_KEY, cfg, 0)
            .map_err(map_err(map_names::SOCK_CFG))?;
        let cgroup = fs::File::open(root).map_err(io_err(root))?;
        for hook in &SOCK_HOOKS {
            let what = format!("cgroup {} {}", root.display(), hook.hook);
            let link_err = |e: String| DataplaneError::Link {
                ifname: what.clone(),
                what: e,
            };
            let prog_err = |source| DataplaneError::Program {
                name: format!("{} at {}", hook.program, root.display()),
                source,
            };
            let pin = pin_of(&self.dir, hook);
            let prog: &mut CgroupSockAddr = program_mut(&mut self.ebpf, hook.program)?;
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(prog_err)?;
            let link = prog.take_link(id).map_err(prog_err)?;
            let fd =
                FdLink::try_from(link).map_err(|e| link_err(format!("not a BPF link: {e}")))?;
            let adopted = match fs::remove_file(&pin) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_err(&pin)(e)),
            };
            fd.pin(&pin)
                .map_err(|e| link_err(format!("pin {}: {e}", pin.display())))?;
            if adopted {
                report.adopted.push(hook.hook.to_string());
            } else {
                report.attached.push(hook.hook.to_string());
            }
        }
        Ok(report)
    }

    /// Detaches the socket hooks (`--socket-lb=off`): removes their pins,
    /// and the namespace entry, so that a link some other holder keeps
    /// translates nothing. Returns the hooks that were attached.
    pub fn detach_sockets(&mut self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for hook in &SOCK_HOOKS {
            let pin = pin_of(&self.dir, hook);
            match fs::remove_file(&pin) {
                Ok(()) => removed.push(hook.hook.to_string()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&pin)(e)),
            }
        }
        match self.maps.SOCK_CFG.remove(&SOCK_CFG_KEY) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(map_names::SOCK_CFG)(e)),
        }
        Ok(removed)
    }
}

/// The socket hooks whose links are pinned in `dir` (for inspection).
pub fn attached_sockets(dir: &Path) -> Vec<&'static str> {
    SOCK_HOOKS
        .iter()
        .filter(|h| pin_of(dir, h).exists())
        .map(|h| h.hook)
        .collect()
}
