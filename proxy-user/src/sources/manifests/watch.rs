//! Watching manifests: inotify (the `inotify` crate; polling where it is
//! unavailable) wakes the loop, file stamps
//! confirm a change, and each good read is sent as resyncs.

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hasher},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use futures::{FutureExt as _, StreamExt as _};
use inotify::{EventMask, WatchDescriptor, WatchMask};
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
    watch(path, tx, POLL_INTERVAL).await
}

/// [`run`], looking at the files every `poll` when inotify did not wake it.
pub(super) async fn watch(
    path: PathBuf,
    tx: Sender<SourceEvent>,
    poll: Duration,
) -> Result<(), ManifestError> {
    tokio::fs::metadata(&path)
        .await
        .map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
    let mut seen: Option<Fingerprint> = None;
    let mut last_sent: Option<Vec<Object>> = None;
    // Wakes the loop as soon as something changes; polling stays as a fallback.
    let mut notify = Notify::new()
        .map_err(|e| tracing::warn!("inotify unavailable, polling every {poll:?}: {e}"))
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
        // A folder watched just now may have filled before its watch began
        // (a new subfolder written at once): look again straight away.
        if notify.as_mut().is_some_and(|n| n.watch_tree(&path)) && seen.is_some() {
            continue;
        }
        tokio::select! {
            () = tx.closed() => return Ok(()),
            () = tokio::time::sleep(poll) => {}
            () = wait_notify(notify.as_mut()) => {}
        }
    }
}

/// An inotify instance watching the manifests' folders.
struct Notify {
    events: inotify::EventStream<[u8; 4096]>,
    /// The folders watched, each with its watch.
    watched: BTreeMap<PathBuf, WatchDescriptor>,
}

impl Notify {
    fn new() -> io::Result<Self> {
        Ok(Self {
            events: inotify::Inotify::init()?.into_event_stream([0; 4096])?,
            watched: BTreeMap::new(),
        })
    }

    /// Watches `path`'s folder (for a file: its parent, so replacements by
    /// rename are seen) and every folder below it. Idempotent. True when a
    /// folder was newly watched: what it held before its watch began has
    /// to be looked at once more.
    fn watch_tree(&mut self, path: &Path) -> bool {
        let root = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(path).to_path_buf()
        };
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MODIFY
            | WatchMask::ATTRIB;
        let mut added = false;
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            if !self.watched.contains_key(&dir) {
                match self.events.watches().add(&dir, mask) {
                    Ok(wd) => {
                        self.watched.insert(dir.clone(), wd);
                        added = true;
                    }
                    Err(e) => tracing::debug!(folder = %dir.display(), "cannot watch: {e}"),
                }
            }
            if path.is_dir()
                && let Ok(rd) = std::fs::read_dir(&dir)
            {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        added
    }

    /// Resolves when inotify reports something, with the events queued
    /// behind it taken too. A folder whose watch the kernel dropped (it was
    /// removed) is watched again when it comes back.
    async fn changed(&mut self) {
        let Some(Ok(first)) = self.events.next().await else {
            // The instance is broken: polling goes on alone.
            return std::future::pending().await;
        };
        let mut event = Some(first);
        while let Some(e) = event {
            if e.mask.contains(EventMask::IGNORED) {
                self.watched.retain(|_, wd| *wd != e.wd);
            }
            event = self
                .events
                .next()
                .now_or_never()
                .flatten()
                .and_then(Result::ok);
        }
    }
}

/// [`Notify::changed`]; never resolves without inotify.
async fn wait_notify(n: Option<&mut Notify>) {
    match n {
        Some(n) => n.changed().await,
        None => std::future::pending().await,
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
