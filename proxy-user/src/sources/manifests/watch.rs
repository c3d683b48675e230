//! Watching manifests: inotify (or polling) wakes the loop, file stamps
//! confirm a change, and each good read is sent as resyncs.

use std::{
    hash::{DefaultHasher, Hasher},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc::Sender;

use super::{
    error::ManifestError,
    load::{list_files, load_path},
};
use crate::sources::{Kind, Object, SourceEvent};

/// How often [`run`] looks at the files when inotify did not wake it (on
/// file systems without inotify this is the only way changes are seen).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long files must stay unchanged before [`run`] reads them.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// After this many debounce rounds of constant change, read anyway.
const MAX_DEBOUNCE_ROUNDS: usize = 50;
/// Files modified this recently are also compared by content: their
/// modification time may not have moved on a quick rewrite of the same size.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Watches `path` (a file or a folder) and keeps the sync task up to date.
///
/// Sends a [`SourceEvent::Resync`] of Services then one of EndpointSlices with
/// the initial contents, then again after each change that alters the objects
/// (changes are noticed through inotify, or by polling every 100 ms where it is
/// unavailable; they are confirmed by comparing modification times, sizes and
/// the file set, plus the content of files modified in the last 2 s, then
/// waiting until the files are quiet for 20 ms). When the files do not parse,
/// sends a [`SourceEvent::Error`] naming the path and line (once per distinct
/// error) and nothing else: the last good state stays in force; the next good
/// read is sent even if it equals that state. A path that disappears later is
/// such an error too.
///
/// Returns `Ok(())` when the receiver is dropped.
///
/// # Errors
///
/// [`ManifestError::Io`] right away when `path` does not exist at start (a
/// mistyped path fails fast rather than waiting forever).
pub async fn run(path: PathBuf, tx: Sender<SourceEvent>) -> Result<(), ManifestError> {
    tokio::fs::metadata(&path)
        .await
        .map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
    let mut seen: Option<Fingerprint> = None;
    let mut last_sent: Option<Vec<Object>> = None;
    // Wakes the loop as soon as something changes; polling stays as a fallback.
    let mut notify = Inotify::new()
        .map_err(|e| tracing::warn!("inotify unavailable, polling every {POLL_INTERVAL:?}: {e}"))
        .ok();
    // The error last reported, until a good read: it is not repeated.
    let mut last_error: Option<String> = None;
    loop {
        let mut current = fingerprint_of(&path).await;
        if seen.as_ref() != Some(&current) {
            if seen.is_some() {
                // Wait for the writer to finish (editors write in several steps).
                for _ in 0..MAX_DEBOUNCE_ROUNDS {
                    tokio::select! {
                        () = tx.closed() => return Ok(()),
                        () = tokio::time::sleep(DEBOUNCE) => {}
                    }
                    let again = fingerprint_of(&path).await;
                    if again == current {
                        break;
                    }
                    current = again;
                }
            }
            seen = Some(current);
            let events = match load_blocking(&path).await {
                Ok(objects) => {
                    if last_error.is_none() && last_sent.as_ref() == Some(&objects) {
                        Vec::new()
                    } else {
                        tracing::info!(path = %path.display(), objects = objects.len(), "manifests loaded");
                        let events = resync_events(&objects).to_vec();
                        last_sent = Some(objects);
                        last_error = None;
                        events
                    }
                }
                Err(message) if last_error.as_deref() == Some(message.as_str()) => Vec::new(),
                Err(message) => {
                    tracing::warn!(error = %message, "manifests not loaded, keeping the last good state");
                    last_error = Some(message.clone());
                    vec![SourceEvent::Error(message)]
                }
            };
            for event in events {
                if tx.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
        if let Some(n) = notify.as_mut() {
            n.watch_tree(&path);
        }
        tokio::select! {
            () = tx.closed() => return Ok(()),
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = wait_notify(notify.as_ref()) => {}
        }
    }
}

/// An inotify instance watching the manifests' folders.
struct Inotify {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    watched: std::collections::BTreeSet<PathBuf>,
}

impl Inotify {
    fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: inotify_init1 returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: we own `owned` and hand it over; it stays open as long as
        // the AsyncFd that holds it.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)?;
        Ok(Self {
            fd,
            watched: Default::default(),
        })
    }

    /// Watches `path`'s folder (for a file: its parent, so replacements by
    /// rename are seen) and every folder below it. Idempotent.
    fn watch_tree(&mut self, path: &Path) {
        use std::os::fd::AsRawFd as _;
        let root = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(path).to_path_buf()
        };
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            if !self.watched.contains(&dir) {
                let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
                    continue;
                };
                let mask = libc::IN_CLOSE_WRITE
                    | libc::IN_MOVED_TO
                    | libc::IN_MOVED_FROM
                    | libc::IN_CREATE
                    | libc::IN_DELETE
                    | libc::IN_MODIFY
                    | libc::IN_ATTRIB;
                // SAFETY: a valid fd and NUL-terminated path.
                if unsafe {
                    libc::inotify_add_watch(self.fd.get_ref().as_raw_fd(), c.as_ptr(), mask)
                } >= 0
                {
                    self.watched.insert(dir.clone());
                }
            }
            if path.is_dir()
                && let Ok(rd) = std::fs::read_dir(&dir)
            {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        // Folders that went away lose their watch in the kernel by themselves.
        self.watched.retain(|d| d.exists());
    }
}

/// Resolves when inotify reports something (its queue is drained); never
/// resolves without inotify.
async fn wait_notify(n: Option<&Inotify>) {
    use std::os::fd::AsRawFd as _;
    let Some(n) = n else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut guard) = n.fd.readable().await else {
            return std::future::pending().await;
        };
        let mut buf = [0u8; 4096];
        let mut got = false;
        loop {
            // SAFETY: reads into a local buffer of the given size.
            let r = unsafe {
                libc::read(
                    n.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if r > 0 {
                got = true;
                continue;
            }
            break;
        }
        guard.clear_ready();
        if got {
            return;
        }
    }
}

/// [`load_path`] on a blocking thread; the error as text.
async fn load_blocking(path: &Path) -> Result<Vec<Object>, String> {
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || load_path(&owned)).await {
        Ok(loaded) => loaded.map_err(|e| e.to_string()),
        Err(e) => Err(format!(
            "{}: reading the manifests failed: {e}",
            path.display()
        )),
    }
}

/// The resyncs (Nodes, Services, EndpointSlices, then ServiceCIDRs) of a
/// full set of objects; the Pods that Services select become
/// EndpointSlices ([`with_selected`]).
fn resync_events(objects: &[Object]) -> [SourceEvent; 4] {
    let objects = with_selected(objects);
    let of_kind = |kind: Kind| {
        objects
            .iter()
            .filter(|object| object.kind() == kind)
            .cloned()
            .collect()
    };
    [
        SourceEvent::Resync {
            kind: Kind::Node,
            objects: of_kind(Kind::Node),
        },
        SourceEvent::Resync {
            kind: Kind::Service,
            objects: of_kind(Kind::Service),
        },
        SourceEvent::Resync {
            kind: Kind::EndpointSlice,
            objects: of_kind(Kind::EndpointSlice),
        },
        SourceEvent::Resync {
            kind: Kind::ServiceCidr,
            objects: of_kind(Kind::ServiceCidr),
        },
    ]
}

/// What the files looked like at one poll; an error text when they could not
/// be listed.
type Fingerprint = Result<Vec<FileStamp>, String>;

/// One file's identity and version.
#[derive(Debug, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    device: u64,
    inode: u64,
    /// A hash of the content, for files modified within [`RACY_WINDOW`].
    recent_content: Option<u64>,
}

async fn fingerprint_of(path: &Path) -> Fingerprint {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || fingerprint(&path))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

fn fingerprint(path: &Path) -> Fingerprint {
    let files = list_files(path).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let mut stamps = Vec::with_capacity(files.len());
    for file in files {
        let meta = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let modified = meta.modified().ok();
        let recent = modified.is_none_or(|modified| match now.duration_since(modified) {
            Ok(age) => age < RACY_WINDOW,
            // Modified "in the future" (clock step): treat as recent.
            Err(_) => true,
        });
        let recent_content = if recent {
            std::fs::read(&file).ok().map(|bytes| {
                let mut hasher = DefaultHasher::new();
                hasher.write(&bytes);
                hasher.finish()
            })
        } else {
            None
        };
        stamps.push(FileStamp {
            path: file,
            len: meta.len(),
            modified,
            device: meta.dev(),
            inode: meta.ino(),
            recent_content,
        });
    }
    Ok(stamps)
}

/// `objects` with their Pods replaced by the EndpointSlices the Services
/// that select them get, as the EndpointSlice controller would write them
/// ([`crate::selector::derive`]), next to the hand-written slices.
pub(super) fn with_selected(objects: &[Object]) -> Vec<Object> {
    let mut services = Vec::new();
    let mut pods = Vec::new();
    let mut nodes = Vec::new();
    let mut out = Vec::with_capacity(objects.len());
    for object in objects {
        match object {
            Object::Pod(p) => pods.push((**p).clone()),
            Object::Service(s) => {
                services.push((**s).clone());
                out.push(object.clone());
            }
            Object::Node(n) => {
                nodes.push((**n).clone());
                out.push(object.clone());
            }
            Object::EndpointSlice(_) | Object::ServiceCidr(_) => out.push(object.clone()),
        }
    }
    if pods.is_empty() {
        return out;
    }
    let selection = crate::selector::derive(&services, &pods, &nodes);
    for (service, selected) in &selection.services {
        tracing::debug!(
            %service,
            pods = ?selected.pods.keys().collect::<Vec<_>>(),
            left_out = selected.left_out.len(),
            "pods selected"
        );
    }
    out.extend(
        selection
            .slices
            .into_iter()
            .map(|s| Object::EndpointSlice(Box::new(s))),
    );
    out
}
