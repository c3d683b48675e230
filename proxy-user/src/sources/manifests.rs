//! The manifests source: Services and EndpointSlices read from YAML or JSON
//! files, the embedded default that needs no cluster.
//!
//! A text holds one object, several YAML documents (`---`), a stream of JSON
//! objects, a `kind: List` as `kubectl get -o yaml` writes it, or a typed list
//! (`ServiceList`, `EndpointSliceList`) as the API returns it. Only `v1`
//! Services and `discovery.k8s.io/v1` EndpointSlices are kept; other kinds are
//! ignored (a Knative `Service` of another API group too). Every object gets
//! its managed fields stripped and the namespace `default` when it names none.
//!
//! Errors carry the line and column the parser reports. Documents are read
//! as plain values, then converted to the real types; the conversion notes the
//! path it was at (keys and indices) when it failed, and only then the text is
//! read again, down that path, for the parser to place the error at the value.
//! The error is always the conversion's: the second read only finds where.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    fmt,
    hash::{DefaultHasher, Hasher},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde_yaml::Value;
use tokio::sync::mpsc::Sender;

use super::{Kind, Object, SourceEvent};
use crate::model::DEFAULT_NAMESPACE;

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

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A text is not valid YAML/JSON, or holds an object that is not valid.
    #[error("{}: {message}", Place { path: path.as_deref(), line: *line, column: *column })]
    Parse {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// 1-based column, when the parser knows it.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// `path:line:column`, each part when known.
struct Place<'a> {
    path: Option<&'a Path>,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path {
            Some(path) => write!(f, "{}", path.display())?,
            None => f.write_str("manifest")?,
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// A parse error before the file it came from is known.
#[derive(Debug)]
struct RawError {
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

impl RawError {
    fn in_file(self, path: Option<&Path>) -> ManifestError {
        ManifestError::Parse {
            path: path.map(Path::to_path_buf),
            line: self.line,
            column: self.column,
            message: self.message,
        }
    }

    fn from_yaml(error: &serde_yaml::Error) -> Self {
        let location = error.location();
        let line = location.as_ref().map(serde_yaml::Location::line);
        let column = location.as_ref().map(serde_yaml::Location::column);
        Self::located(error.to_string(), line, column)
    }

    /// A JSON error, placed when the parser knows where.
    fn from_json(error: &serde_json::Error) -> Self {
        let line = (error.line() > 0).then_some(error.line());
        let column = line.map(|_| error.column());
        Self::located(error.to_string(), line, column)
    }

    /// Drops the parser's own " at line L column C" suffix: the place is shown
    /// in front of the message instead.
    fn located(message: String, line: Option<usize>, column: Option<usize>) -> Self {
        let message = match (line, column) {
            (Some(line), Some(column)) => {
                let suffix = format!(" at line {line} column {column}");
                message
                    .strip_suffix(&suffix)
                    .map(str::to_owned)
                    .unwrap_or(message)
            }
            _ => message,
        };
        Self {
            line,
            column,
            message,
        }
    }

    fn unlocated(message: String) -> Self {
        Self {
            line: None,
            column: None,
            message,
        }
    }
}

/// The text format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON when the text starts with `{` or `[`, else YAML.
    fn sniff(text: &str) -> Self {
        match text.trim_start().as_bytes().first() {
            Some(b'{' | b'[') => Self::Json,
            _ => Self::Yaml,
        }
    }

    /// By extension (`.json`, `.yaml`, `.yml`), else by content.
    fn of(path: &Path, text: &str) -> Self {
        let ext = path
            .extension()
            .and_then(|ext| ext.to_str())
            .unwrap_or_default();
        if ext.eq_ignore_ascii_case("json") {
            Self::Json
        } else if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") {
            Self::Yaml
        } else {
            Self::sniff(text)
        }
    }
}

/// The kinds of objects this source keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Service,
    EndpointSlice,
}

impl Target {
    /// The target for an `apiVersion` and `kind`; `None` for other kinds.
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("v1", "Service") => Some(Self::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Self::EndpointSlice),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
        }
    }
}

/// An object of a document, still as a plain value.
struct Pending {
    /// Index in the document's `items`, for lists.
    item: Option<usize>,
    target: Target,
    value: Value,
}

/// An object read from a text, with where it came from.
struct Parsed {
    object: Object,
    /// 1-based index of the document in its text.
    document: usize,
    item: Option<usize>,
}

/// Something wrong with a document's shape, at the document or an item.
struct ShapeError {
    item: Option<usize>,
    message: String,
}

/// Parses one YAML or JSON text: multi-document YAML (`---`), a stream of
/// JSON objects, a single object, or a list (`kind: List` as `kubectl get -o
/// yaml` writes it, `ServiceList` / `EndpointSliceList` as the API returns
/// them, or a bare array) of Services and EndpointSlices.
///
/// JSON is recognised by a leading `{` or `[`. Other kinds are ignored. An
/// object defined twice keeps the last definition (with a warning). Returns the
/// objects sorted by kind, namespace and name, managed fields stripped and
/// namespace defaulted.
///
/// # Errors
///
/// [`ManifestError::Parse`] with the parser's line and column (1-based) when
/// the text is not YAML/JSON, a document is not an object or lacks `kind` or
/// `apiVersion`, a Service or EndpointSlice does not match its schema, or has
/// no name. Nothing is returned then: a half-read text is never used.
pub fn parse_manifests(text: &str) -> Result<Vec<Object>, ManifestError> {
    let parsed = parse_text(text, Format::sniff(text)).map_err(|e| e.in_file(None))?;
    Ok(dedupe(parsed.into_iter().map(|p| (p, None))))
}

/// Reads a file, or every `*.yaml`, `*.yml` and `*.json` file under a folder
/// (recursively, in path order; names starting with `.` are skipped, which
/// also skips the `..data` copies of a mounted ConfigMap).
///
/// A file given by name is read whatever its extension (JSON when it ends in
/// `.json` or starts with `{` or `[`). Returns the objects as
/// [`parse_manifests`] does, duplicates across files resolved to the last one
/// in path order.
///
/// # Errors
///
/// [`ManifestError::Io`] naming the path that cannot be listed or read, or
/// [`ManifestError::Parse`] naming the file and the parser's line, for the
/// first bad file in path order.
pub fn load_path(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let files = list_files(path)?;
    let mut all = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        let parsed =
            parse_text(&text, Format::of(file, &text)).map_err(|e| e.in_file(Some(file)))?;
        all.extend(parsed.into_iter().map(|p| (p, Some(file.as_path()))));
    }
    Ok(dedupe(all.into_iter()))
}

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

/// The two resyncs (Services, then EndpointSlices) of a full set of objects.
fn resync_events(objects: &[Object]) -> [SourceEvent; 2] {
    let of_kind = |kind: Kind| {
        objects
            .iter()
            .filter(|object| object_kind(object) == kind)
            .cloned()
            .collect()
    };
    [
        SourceEvent::Resync {
            kind: Kind::Service,
            objects: of_kind(Kind::Service),
        },
        SourceEvent::Resync {
            kind: Kind::EndpointSlice,
            objects: of_kind(Kind::EndpointSlice),
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

/// The files to read for `path`, sorted by path.
fn list_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { path, source }
    };
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut visited = BTreeSet::new();
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        // A symbolic link back up the tree must not loop forever.
        let real = std::fs::canonicalize(&folder).map_err(io_error(&folder))?;
        if !visited.insert(real) {
            continue;
        }
        for entry in std::fs::read_dir(&folder).map_err(io_error(&folder))? {
            let entry = entry.map_err(io_error(&folder))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let entry_path = entry.path();
            let meta = std::fs::metadata(&entry_path).map_err(io_error(&entry_path))?;
            if meta.is_dir() {
                folders.push(entry_path);
            } else if is_manifest_name(&entry_path) {
                files.push(entry_path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn is_manifest_name(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or_default();
    ["yaml", "yml", "json"]
        .iter()
        .any(|known| ext.eq_ignore_ascii_case(known))
}

/// Keeps the last definition of each object and warns about the others.
/// Returns the objects sorted by kind, namespace and name.
fn dedupe<'p>(parsed: impl Iterator<Item = (Parsed, Option<&'p Path>)>) -> Vec<Object> {
    let mut by_key: BTreeMap<(Kind, String, String), (Object, String)> = BTreeMap::new();
    for (parsed, path) in parsed {
        let origin = origin(path, &parsed);
        let key = object_key(&parsed.object);
        if let Some((_, earlier)) = by_key.insert(key.clone(), (parsed.object, origin.clone())) {
            tracing::warn!(
                kind = ?key.0,
                object = %format_args!("{}/{}", key.1, key.2),
                kept = %origin,
                replaced = %earlier,
                "object defined twice in the manifests, keeping the last definition"
            );
        }
    }
    by_key.into_values().map(|(object, _)| object).collect()
}

/// "path document N item M", for messages.
fn origin(path: Option<&Path>, parsed: &Parsed) -> String {
    let file = path.map_or_else(|| "manifest".to_owned(), |p| p.display().to_string());
    match parsed.item {
        Some(item) => format!("{file} document {} item {item}", parsed.document),
        None => format!("{file} document {}", parsed.document),
    }
}

fn object_kind(object: &Object) -> Kind {
    match object {
        Object::Service(_) => Kind::Service,
        Object::EndpointSlice(_) => Kind::EndpointSlice,
    }
}

fn object_meta(object: &Object) -> &ObjectMeta {
    match object {
        Object::Service(svc) => &svc.metadata,
        Object::EndpointSlice(slice) => &slice.metadata,
    }
}

fn object_key(object: &Object) -> (Kind, String, String) {
    let meta = object_meta(object);
    (
        object_kind(object),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Parses every document of a text. Errors are placed in the text.
fn parse_text(text: &str, format: Format) -> Result<Vec<Parsed>, RawError> {
    let mut out = Vec::new();
    match format {
        Format::Yaml => {
            for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
                let value = Value::deserialize(document).map_err(|e| RawError::from_yaml(&e))?;
                parse_document(text, format, index, value, &mut out)?;
            }
        }
        Format::Json => {
            let stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
            for (index, value) in stream.enumerate() {
                let value = value.map_err(|e| RawError::from_json(&e))?;
                let value =
                    serde_yaml::to_value(value).map_err(|e| RawError::unlocated(e.to_string()))?;
                parse_document(text, format, index, value, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// Converts the objects of document `index` (0-based) of `text`.
fn parse_document(
    text: &str,
    format: Format,
    index: usize,
    value: Value,
    out: &mut Vec<Parsed>,
) -> Result<(), RawError> {
    let document = index + 1;
    let fail_at = |item: Option<usize>, message: String| {
        locate(text, format, index, item, &[], &message)
            .unwrap_or_else(|| RawError::unlocated(format!("document {document}: {message}")))
    };
    let pending = shape(value).map_err(|e| fail_at(e.item, e.message))?;
    for Pending {
        item,
        target,
        value,
    } in pending
    {
        let converted = match target {
            Target::Service => convert::<Service>(&value).map(|s| Object::Service(Box::new(s))),
            Target::EndpointSlice => {
                convert::<EndpointSlice>(&value).map(|s| Object::EndpointSlice(Box::new(s)))
            }
        };
        let mut object = converted.map_err(|(error, path)| {
            let message = error.to_string();
            locate(text, format, index, item, &path, &message).unwrap_or_else(|| {
                RawError::unlocated(format!("document {document}: {} {message}", target.name()))
            })
        })?;
        let meta = match &mut object {
            Object::Service(svc) => &mut svc.metadata,
            Object::EndpointSlice(slice) => &mut slice.metadata,
        };
        if meta.name.as_deref().unwrap_or_default().is_empty() {
            return Err(fail_at(
                item,
                format!("{} without metadata.name", target.name()),
            ));
        }
        meta.managed_fields = None;
        if meta.namespace.as_deref().unwrap_or_default().is_empty() {
            meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
        out.push(Parsed {
            object,
            document,
            item,
        });
    }
    Ok(())
}

/// Finds the objects of a document: a single object, a list's items, or a bare
/// array's elements. Other kinds are left out.
fn shape(value: Value) -> Result<Vec<Pending>, ShapeError> {
    let mut out = Vec::new();
    match value {
        Value::Null => {}
        Value::Sequence(items) => {
            for (index, item) in items.into_iter().enumerate() {
                shape_item(item, Some(index), None, &mut out)?;
            }
        }
        Value::Mapping(mut map) => {
            let kind = map
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let is_list = kind == "List" || (kind.ends_with("List") && map.contains_key("items"));
            if !is_list {
                shape_item(Value::Mapping(map), None, None, &mut out)?;
                return Ok(out);
            }
            // Items of a typed list (ServiceList) may omit apiVersion and kind.
            let api_version = map
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let default = kind
                .strip_suffix("List")
                .filter(|item_kind| !item_kind.is_empty())
                .map(|item_kind| (api_version.to_owned(), item_kind.to_owned()));
            match map.remove("items") {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(items)) => {
                    for (index, item) in items.into_iter().enumerate() {
                        shape_item(item, Some(index), default.as_ref(), &mut out)?;
                    }
                }
                Some(_) => {
                    return Err(ShapeError {
                        item: None,
                        message: "`items` of a list is not a sequence".to_owned(),
                    });
                }
            }
        }
        other => {
            return Err(ShapeError {
                item: None,
                message: format!("expected a Kubernetes object, found {}", value_type(&other)),
            });
        }
    }
    Ok(out)
}

/// One object (or list item): kept when it is a Service or an EndpointSlice.
fn shape_item(
    value: Value,
    item: Option<usize>,
    default: Option<&(String, String)>,
    out: &mut Vec<Pending>,
) -> Result<(), ShapeError> {
    let Value::Mapping(map) = &value else {
        return Err(ShapeError {
            item,
            message: format!("expected a Kubernetes object, found {}", value_type(&value)),
        });
    };
    let field = |name: &str, default: Option<&str>| {
        map.get(name)
            .and_then(Value::as_str)
            .or(default)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let Some(kind) = field("kind", default.map(|d| d.1.as_str())) else {
        return Err(ShapeError {
            item,
            message: "the object has no `kind`".to_owned(),
        });
    };
    let Some(api_version) = field("apiVersion", default.map(|d| d.0.as_str())) else {
        return Err(ShapeError {
            item,
            message: format!("the {kind} has no `apiVersion`"),
        });
    };
    match Target::of(&api_version, &kind) {
        Some(target) => out.push(Pending {
            item,
            target,
            value,
        }),
        None => tracing::debug!(%api_version, %kind, "ignoring an object of another kind"),
    }
    Ok(())
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A step from an object down to one of its parts, as the conversion took it.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    /// The value of a mapping's entry: the one with this key, or the
    /// `index`-th (0-based) when the key was not a scalar.
    Value { index: usize, key: Option<Value> },
    /// The key of a mapping's `index`-th entry.
    Key(usize),
    /// An element of a sequence.
    Element(usize),
}

/// The path to the value being converted, as a chain up to the object.
enum Chain<'a> {
    Root,
    Child(&'a Chain<'a>, Step),
}

impl Chain<'_> {
    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut at = self;
        while let Chain::Child(parent, step) = at {
            steps.push(step.clone());
            at = parent;
        }
        steps.reverse();
        steps
    }
}

/// Converts a plain value to `T`; on failure, the error and the path to the
/// innermost value that failed.
fn convert<'de, T: Deserialize<'de>>(
    value: &'de Value,
) -> Result<T, (serde_yaml::Error, Vec<Step>)> {
    let failure = RefCell::new(None);
    let root = Chain::Root;
    let track = Track {
        de: value,
        at: At {
            chain: &root,
            failure: &failure,
            key: None,
        },
    };
    T::deserialize(track).map_err(|error| (error, failure.take().unwrap_or_default()))
}

/// Where a [`Track`] is: its path, the slot for the path of the first
/// failure, and, while a mapping key is read, the slot for that key.
#[derive(Clone, Copy)]
struct At<'a> {
    chain: &'a Chain<'a>,
    failure: &'a RefCell<Option<Vec<Step>>>,
    key: Option<&'a RefCell<Option<Value>>>,
}

impl At<'_> {
    /// Notes this path as the failure's, unless an inner one was noted.
    fn failed<E>(&self, error: E) -> E {
        let mut failure = self.failure.borrow_mut();
        if failure.is_none() {
            *failure = Some(self.chain.steps());
        }
        error
    }

    fn capture(&self, key: impl FnOnce() -> Value) {
        if let Some(slot) = self.key {
            *slot.borrow_mut() = Some(key());
        }
    }

    fn below(self) -> Self {
        Self { key: None, ..self }
    }
}

/// A deserializer that passes everything through to `de`, following the path.
struct Track<'a, D> {
    de: D,
    at: At<'a>,
}

macro_rules! track_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self $(, $arg: $ty)*, visitor: V) -> Result<V::Value, D::Error> {
            let at = self.at;
            self.de
                .$method($($arg,)* TrackVisitor { visitor, at })
                .map_err(|error| at.failed(error))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Track<'_, D> {
    type Error = D::Error;

    track_deserialize! {
        deserialize_any(), deserialize_bool(), deserialize_i8(), deserialize_i16(),
        deserialize_i32(), deserialize_i64(), deserialize_i128(), deserialize_u8(),
        deserialize_u16(), deserialize_u32(), deserialize_u64(), deserialize_u128(),
        deserialize_f32(), deserialize_f64(), deserialize_char(), deserialize_str(),
        deserialize_string(), deserialize_bytes(), deserialize_byte_buf(),
        deserialize_option(), deserialize_unit(), deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str), deserialize_seq(),
        deserialize_tuple(len: usize), deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map(),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_identifier(), deserialize_ignored_any(),
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// The visitor of a [`Track`]: notes scalar keys, follows into sequences,
/// mappings and wrapped values.
struct TrackVisitor<'a, V> {
    visitor: V,
    at: At<'a>,
}

macro_rules! track_visit {
    ($($method:ident($ty:ty) $(=> $key:expr)?),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            $(self.at.capture(|| ($key)(&v));)?
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for TrackVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    track_visit! {
        visit_bool(bool) => |v: &bool| Value::Bool(*v),
        visit_i8(i8), visit_i16(i16), visit_i32(i32),
        visit_i64(i64) => |v: &i64| Value::from(*v),
        visit_i128(i128), visit_u8(u8), visit_u16(u16), visit_u32(u32),
        visit_u64(u64) => |v: &u64| Value::from(*v),
        visit_u128(u128), visit_f32(f32),
        visit_f64(f64) => |v: &f64| Value::from(*v),
        visit_char(char),
        visit_str(&str) => |v: &&str| Value::from(*v),
        visit_borrowed_str(&'de str) => |v: &&str| Value::from(*v),
        visit_string(String) => |v: &String| Value::String(v.clone()),
        visit_bytes(&[u8]), visit_borrowed_bytes(&'de [u8]), visit_byte_buf(Vec<u8>),
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.at.capture(|| Value::Null);
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let at = self.at;
        self.visitor.visit_some(Track { de, at })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let at = self.at;
        self.visitor.visit_newtype_struct(Track { de, at })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(TrackSeq {
            seq,
            at: self.at.below(),
            index: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(TrackMap {
            map,
            at: self.at.below(),
            entries: 0,
            key: None,
        })
    }

    // Tagged values: errors inside are placed at the tagged value.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

/// A seed that deserializes through a [`Track`] at `at`.
struct TrackSeed<'a, S> {
    seed: S,
    at: At<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for TrackSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Track { de, at: self.at })
    }
}

struct TrackSeq<'a, A> {
    seq: A,
    at: At<'a>,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for TrackSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let chain = Chain::Child(self.at.chain, Step::Element(self.index));
        self.index += 1;
        let at = At {
            chain: &chain,
            ..self.at
        };
        self.seq.next_element_seed(TrackSeed { seed, at })
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

struct TrackMap<'a, A> {
    map: A,
    at: At<'a>,
    /// Keys read so far.
    entries: usize,
    /// The last key read, when it was a scalar.
    key: Option<Value>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for TrackMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let chain = Chain::Child(self.at.chain, Step::Key(self.entries));
        let slot = RefCell::new(None);
        let at = At {
            chain: &chain,
            failure: self.at.failure,
            key: Some(&slot),
        };
        let key = self.map.next_key_seed(TrackSeed { seed, at })?;
        self.entries += 1;
        self.key = slot.into_inner();
        Ok(key)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let step = Step::Value {
            index: self.entries.saturating_sub(1),
            key: self.key.take(),
        };
        let chain = Chain::Child(self.at.chain, step);
        let at = At {
            chain: &chain,
            ..self.at
        };
        self.map.next_value_seed(TrackSeed { seed, at })
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// Reads document `index` of `text` again, down to `item` of its list and
/// then along `path`, and fails there with `message`, to get the parser's
/// located error. Where the text does not go on along the path, fails at
/// the deepest value reached. `None` when the document is not there.
fn locate(
    text: &str,
    format: Format,
    index: usize,
    item: Option<usize>,
    path: &[Step],
    message: &str,
) -> Option<RawError> {
    let seed = Navigate {
        item,
        walk: Walk { path, message },
    };
    match format {
        Format::Yaml => {
            let document = serde_yaml::Deserializer::from_str(text).nth(index)?;
            seed.deserialize(document)
                .err()
                .map(|e| RawError::from_yaml(&e))
        }
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            for _ in 0..index {
                IgnoredAny::deserialize(&mut de).ok()?;
            }
            seed.deserialize(&mut de)
                .err()
                .map(|e| RawError::from_json(&e))
        }
    }
}

/// Walks to the object the error is about: the document itself, or an item
/// of its list (`items` of a mapping, or an element of a bare array).
#[derive(Clone, Copy)]
struct Navigate<'a> {
    item: Option<usize>,
    walk: Walk<'a>,
}

impl<'de> DeserializeSeed<'de> for Navigate<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.item {
            None => self.walk.deserialize(deserializer),
            Some(_) => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Navigate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            if Some(index) == self.item {
                seq.next_element_seed(self.walk)?;
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom(self.walk.message));
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Value>()? {
            if key.as_str() == Some("items") {
                map.next_value_seed(Items(self))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Err(de::Error::custom(self.walk.message))
    }
}

/// The `items` sequence of a list.
struct Items<'a>(Navigate<'a>);

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self.0)
    }
}

/// Follows `path` down from the value at hand, and fails at its end (or at
/// the deepest value reached) with `message`; the parser adds the place.
#[derive(Clone, Copy)]
struct Walk<'a> {
    path: &'a [Step],
    message: &'a str,
}

impl<'a> Walk<'a> {
    fn fail<E: de::Error, T>(self) -> Result<T, E> {
        Err(E::custom(self.message))
    }

    fn rest(self) -> Walk<'a> {
        Walk {
            path: self.path.get(1..).unwrap_or_default(),
            message: self.message,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! walk_fail {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, _: $ty) -> Result<(), E> {
            self.fail()
        }
    )*};
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }

    walk_fail! {
        visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_i128(i128),
        visit_u128(u128), visit_f64(f64), visit_str(&str), visit_bytes(&[u8]),
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.fail()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.fail()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(&Step::Element(index)) = self.path.first() else {
            return self.fail();
        };
        for _ in 0..index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return self.fail();
            }
        }
        seq.next_element_seed(self.rest())?;
        self.fail()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.path.first() {
            Some(Step::Value { index, key }) => {
                let mut at = 0;
                while let Some(found) = map.next_key::<Value>()? {
                    let here = match key {
                        Some(key) => found == *key,
                        None => at == *index,
                    };
                    if here {
                        map.next_value_seed(self.rest())?;
                        return self.fail();
                    }
                    map.next_value::<IgnoredAny>()?;
                    at += 1;
                }
                self.fail()
            }
            Some(&Step::Key(index)) => {
                for _ in 0..index {
                    if map.next_key::<IgnoredAny>()?.is_none() {
                        return self.fail();
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                map.next_key_seed(self.rest())?;
                self.fail()
            }
            _ => self.fail(),
        }
    }

    // A tagged value (`!tag {...}`): the conversion looks through the tag.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (_, variant) = data.variant::<IgnoredAny>()?;
        if self.path.is_empty() {
            return self.fail();
        }
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::IpAddr,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use tokio::sync::mpsc;

    use super::*;
    use crate::model::{
        Backend, Family, Frontend, FrontendKind, NodeInfo, Protocol, ServiceName, model_cluster,
    };

    /// A folder under the system temp folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = std::env::temp_dir().join(format!(
                "svcnat-manifests-{tag}-{}-{nanos}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
            Self(path)
        }

        fn write(&self, relative: &str, text: &str) -> PathBuf {
            let path = self.0.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
            }
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ignored = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parse(text: &str) -> Vec<Object> {
        parse_manifests(text).unwrap_or_else(|e| panic!("unexpected error: {e}\n{text}"))
    }

    /// (kind, namespace, name) of each object.
    fn keys(objects: &[Object]) -> Vec<(Kind, String, String)> {
        objects.iter().map(object_key).collect()
    }

    fn key(kind: Kind, namespace: &str, name: &str) -> (Kind, String, String) {
        (kind, namespace.to_owned(), name.to_owned())
    }

    fn service_of(object: &Object) -> &Service {
        match object {
            Object::Service(svc) => svc,
            Object::EndpointSlice(_) => panic!("expected a Service, got {object:?}"),
        }
    }

    /// The 1-based line of the first line of `text` containing `marker`.
    fn line_of(text: &str, marker: &str) -> usize {
        text.lines()
            .position(|line| line.contains(marker))
            .map(|index| index + 1)
            .unwrap_or_else(|| panic!("marker {marker:?} not in the text"))
    }

    const SERVICE_AND_SLICE: &str = "
# comments and a leading marker are fine
---
apiVersion: v1
kind: Service
metadata:
  name: web
  managedFields:
  - {manager: kubectl, operation: Apply}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
---
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: b}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: knative}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: demo
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints: [{addresses: [198.18.1.10]}]
...
";

    #[test]
    fn multi_document_yaml_keeps_services_and_slices() {
        let objects = parse(SERVICE_AND_SLICE);
        assert_eq!(
            keys(&objects),
            vec![
                key(Kind::Service, "default", "web"),
                key(Kind::EndpointSlice, "demo", "web-1"),
            ]
        );
        let svc = service_of(&objects[0]);
        assert_eq!(svc.metadata.managed_fields, None);
        let cluster_ip = svc.spec.as_ref().and_then(|spec| spec.cluster_ip.clone());
        assert_eq!(cluster_ip.as_deref(), Some("198.19.0.10"));
    }

    #[test]
    fn lists_as_kubectl_and_the_api_write_them() {
        let kubectl = "
apiVersion: v1
kind: List
metadata: {resourceVersion: ''}
items:
- apiVersion: v1
  kind: Service
  metadata: {namespace: demo, name: web, managedFields: [{manager: x}]}
  spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {namespace: demo, name: web}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {namespace: demo, name: web-1}
  addressType: IPv4
  endpoints: []
";
        assert_eq!(
            keys(&parse(kubectl)),
            vec![
                key(Kind::Service, "demo", "web"),
                key(Kind::EndpointSlice, "demo", "web-1"),
            ]
        );
        assert_eq!(service_of(&parse(kubectl)[0]).metadata.managed_fields, None);

        let typed = "
apiVersion: v1
kind: ServiceList
items:
- metadata: {namespace: demo, name: a}
  spec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}
- metadata: {namespace: demo, name: b}
  spec: {clusterIP: 198.19.0.2, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {namespace: demo, name: a-1}
  addressType: IPv4
  endpoints: []
";
        assert_eq!(
            keys(&parse(typed)),
            vec![
                key(Kind::Service, "demo", "a"),
                key(Kind::Service, "demo", "b"),
                key(Kind::EndpointSlice, "demo", "a-1"),
            ]
        );
    }

    #[test]
    fn json_single_list_stream_and_array() {
        let single = r#"{"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "demo", "name": "web"},
            "spec": {"clusterIP": "198.19.0.10", "ports": [{"port": 80}]}}"#;
        let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"namespace": "demo", "name": "web-1"}, "addressType": "IPv4", "endpoints": []}]}"#;
        let stream = format!("{single}\n{list}\n");
        let array = format!(
            "[{single}, {{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {{\"name\": \"demo\"}}}}]"
        );
        let web = key(Kind::Service, "demo", "web");
        let web_1 = key(Kind::EndpointSlice, "demo", "web-1");
        assert_eq!(keys(&parse(single)), vec![web.clone()]);
        assert_eq!(keys(&parse(list)), vec![web_1.clone()]);
        assert_eq!(keys(&parse(&stream)), vec![web.clone(), web_1]);
        assert_eq!(keys(&parse(&array)), vec![web]);
    }

    #[test]
    fn the_last_definition_of_an_object_wins() {
        let text = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec: {clusterIP: 198.19.0.2, ports: [{port: 80}]}
";
        let objects = parse(text);
        assert_eq!(objects.len(), 1);
        let spec = service_of(&objects[0]).spec.as_ref();
        assert_eq!(
            spec.and_then(|s| s.cluster_ip.as_deref()),
            Some("198.19.0.2")
        );
    }

    struct ErrorCase {
        name: &'static str,
        text: &'static str,
        /// A text on the line the error must point at.
        marker: &'static str,
        /// A text the message must contain.
        message: &'static str,
    }

    #[test]
    fn errors_point_at_the_line() {
        let cases = [
            ErrorCase {
                name: "YAML syntax error in the second document",
                text: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n   bad: indent # here\n",
                marker: "# here",
                message: "mapping",
            },
            ErrorCase {
                name: "wrong type in the second document",
                text: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports:\n  - port: eighty # here\n",
                marker: "# here",
                message: "spec.ports[0].port",
            },
            ErrorCase {
                name: "wrong type in a list item",
                text: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {name: b}\n  addressType: IPv4\n  endpoints: {} # here\n",
                marker: "# here",
                message: "endpoints",
            },
            ErrorCase {
                name: "wrong type in metadata",
                text: "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: a\n  labels: [x] # here\n",
                marker: "# here",
                message: "labels",
            },
            ErrorCase {
                name: "no kind",
                text: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nmetadata: {name: b} # here\n",
                marker: "# here",
                message: "no `kind`",
            },
            ErrorCase {
                name: "no apiVersion",
                text: "kind: Service # here\nmetadata: {name: b}\n",
                marker: "# here",
                message: "no `apiVersion`",
            },
            ErrorCase {
                name: "no name in a list item",
                text: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1 # here\n  kind: Service\n  metadata: {namespace: x}\n",
                marker: "# here",
                message: "without metadata.name",
            },
            ErrorCase {
                name: "a document that is not an object",
                text: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\njust text # here\n",
                marker: "# here",
                message: "expected a Kubernetes object",
            },
            ErrorCase {
                name: "wrong type in an element of a bare YAML sequence",
                text: "- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n  spec: {ports: [{port: z}]} # here\n",
                marker: "# here",
                message: "port",
            },
            ErrorCase {
                name: "JSON wrong type in a list item",
                text: "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n {\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}},\n {\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": 5}}]}\n",
                marker: "\"name\": 5",
                message: "invalid type: integer",
            },
            ErrorCase {
                name: "JSON syntax error",
                text: "{\"apiVersion\": \"v1\",\n \"kind\": \"Service\",\n \"metadata\": {\"name\": \"a\"},,\n}\n",
                marker: ",,",
                message: "",
            },
            ErrorCase {
                name: "JSON wrong type in the second object",
                text: "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}}\n{\"apiVersion\": \"v1\", \"kind\": \"Service\",\n \"metadata\": {\"name\": \"b\"},\n \"spec\": {\"ports\": [{\"port\": \"eighty\"}]}}\n",
                marker: "eighty",
                message: "invalid type",
            },
        ];
        for case in cases {
            let error = match parse_manifests(case.text) {
                Ok(objects) => panic!("{}: no error, got {objects:?}", case.name),
                Err(error) => error,
            };
            let ManifestError::Parse {
                line,
                column,
                message,
                ..
            } = &error
            else {
                panic!("{}: not a parse error: {error:?}", case.name);
            };
            assert_eq!(
                *line,
                Some(line_of(case.text, case.marker)),
                "{}: {error}",
                case.name
            );
            assert!(column.is_some(), "{}: {error}", case.name);
            assert!(message.contains(case.message), "{}: {error}", case.name);
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("manifest:{}:", line_of(case.text, case.marker))),
                "{}: {error}",
                case.name
            );
        }
    }

    /// A plain scalar that resolves to another type than its field (a float
    /// where a string goes, as in `deploy/examples/external.yaml` with four
    /// bytes deleted) is rejected, and placed at the value, in every kind the
    /// source reads, in YAML and JSON, at a value or a key.
    #[test]
    fn type_errors_of_plain_scalars_point_at_the_value() {
        let minimal = "apiVersion: v1\nkind: Service\nmetadata:\n  name: external\nspec:\n  clusterIPs: [1980.80]\n";
        match parse_manifests(minimal) {
            Err(ManifestError::Parse {
                line,
                column,
                message,
                ..
            }) => {
                assert_eq!((line, column), (Some(6), Some(16)), "{message}");
                assert!(
                    message.contains("spec.clusterIPs[0]")
                        && message
                            .contains("invalid type: floating point `1980.8`, expected a string"),
                    "{message}"
                );
            }
            other => panic!("want a parse error at 6:16, got {other:?}"),
        }
        // (name, text, marker on the line, text of the message)
        let cases = [
            (
                "integer name",
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: 5 # here\n",
                "# here",
                "metadata.name: invalid type: integer",
            ),
            (
                "boolean in an EndpointSlice",
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4\nendpoints:\n- addresses: [198.18.1.1]\n- addresses:\n  - true # here\n",
                "# here",
                "endpoints[1].addresses[0]: invalid type: boolean",
            ),
            (
                "integer key of labels",
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: a\n  labels:\n    a: b\n    5: x # here\naddressType: IPv4\nendpoints: []\n",
                "# here",
                "invalid type: integer `5`, expected a string",
            ),
            (
                "float in a kind: List item",
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n  spec:\n    ports: [{port: 80}]\n    clusterIP: 1.5 # here\n",
                "# here",
                "items[1].spec.clusterIP: invalid type: floating point",
            ),
            (
                "float in a ServiceList item behind a tag",
                "apiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: a}\n  spec: !tagged\n    externalIPs:\n    - 1.5e3 # here\n",
                "# here",
                "invalid type: floating point",
            ),
            (
                "null in a bare sequence",
                "- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n  spec: {ports: [{port: 80, protocol: ~}, {port: 81, name: [] }]} # here\n",
                "# here",
                "invalid type: sequence",
            ),
            (
                "JSON float in a list item",
                "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n {\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"},\n  \"spec\": {\"ports\": [{\"port\": 80}],\n   \"clusterIPs\": [1980.80]}}]}\n",
                "1980.80",
                "invalid type: floating point",
            ),
            (
                "JSON integer in the second EndpointSlice",
                "{\"apiVersion\": \"discovery.k8s.io/v1\", \"kind\": \"EndpointSlice\", \"metadata\": {\"name\": \"a\"}, \"addressType\": \"IPv4\", \"endpoints\": []}\n{\"apiVersion\": \"discovery.k8s.io/v1\", \"kind\": \"EndpointSlice\", \"metadata\": {\"name\": \"b\"}, \"addressType\": \"IPv4\",\n \"endpoints\": [{\"addresses\": [\"198.18.1.1\"], \"nodeName\": 7}]}\n",
                "nodeName",
                "invalid type: integer `7`",
            ),
        ];
        for (name, text, marker, expected) in cases {
            match parse_manifests(text) {
                Err(ManifestError::Parse {
                    line,
                    column,
                    message,
                    ..
                }) => {
                    assert_eq!(line, Some(line_of(text, marker)), "{name}: {message}");
                    assert!(column.is_some(), "{name}: {message}");
                    assert!(message.contains(expected), "{name}: {message}");
                }
                other => panic!("{name}: want a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn load_path_reads_a_folder_in_path_order() {
        let dir = TempDir::new("folder");
        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: web}\nspec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}\n",
        );
        dir.write(
            "b/c.yml",
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: web}\nspec: {clusterIP: 198.19.0.2, ports: [{port: 80}]}\n",
        );
        dir.write(
            "b/d.json",
            r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"namespace": "demo", "name": "web-1"}, "addressType": "IPv4", "endpoints": []}"#,
        );
        // Not read: other extensions, hidden files and folders.
        dir.write("notes.txt", "not: [yaml");
        dir.write(".hidden.yaml", "not: [yaml");
        dir.write("..data/web.yaml", "not: [yaml");
        let objects = load_path(&dir.0).unwrap_or_else(|e| panic!("unexpected error: {e}"));
        assert_eq!(
            keys(&objects),
            vec![
                key(Kind::Service, "demo", "web"),
                key(Kind::EndpointSlice, "demo", "web-1"),
            ]
        );
        // b/c.yml comes after a.yaml: its definition wins.
        let spec = service_of(&objects[0]).spec.as_ref();
        assert_eq!(
            spec.and_then(|s| s.cluster_ip.as_deref()),
            Some("198.19.0.2")
        );

        // A single file is read whatever its name.
        let single = dir.write(
            "single.txt",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
        );
        let objects = load_path(&single).unwrap_or_else(|e| panic!("unexpected error: {e}"));
        assert_eq!(keys(&objects), vec![key(Kind::Service, "default", "x")]);
    }

    #[test]
    fn load_path_errors_name_the_path_and_line() {
        let dir = TempDir::new("broken");
        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
        );
        let broken = dir.write(
            "b.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports: [{port: [80]}]\n",
        );
        let error = match load_path(&dir.0) {
            Ok(objects) => panic!("no error, got {objects:?}"),
            Err(error) => error,
        };
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("{}:5:", broken.display())),
            "{text}"
        );
        assert!(
            matches!(&error, ManifestError::Parse { path: Some(p), line: Some(5), .. } if *p == broken),
            "{error:?}"
        );

        let missing = dir.0.join("missing");
        let error = match load_path(&missing) {
            Ok(objects) => panic!("no error, got {objects:?}"),
            Err(error) => error,
        };
        assert!(
            matches!(&error, ManifestError::Io { path, .. } if *path == missing),
            "{error:?}"
        );
        assert!(error.to_string().contains("missing"), "{error}");
    }

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|e| panic!("bad address {text:?}: {e}"))
    }

    #[test]
    fn the_examples_model_as_documented() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let objects = load_path(&folder).unwrap_or_else(|e| panic!("examples: {e}"));
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for object in objects {
            match object {
                Object::Service(svc) => services.push(*svc),
                Object::EndpointSlice(slice) => slices.push(*slice),
            }
        }
        let node = NodeInfo {
            name: "node-a".to_owned(),
            addresses: vec![ip("198.18.0.1")],
        };
        let models = model_cluster(&services, &slices, &node);
        let backend = |address: &str, port: u16, node_name: Option<&str>| Backend {
            address: ip(address),
            port,
            node_name: node_name.map(str::to_owned),
            is_local: node_name == Some("node-a"),
            terminating: false,
        };
        let vip = |address: &str, port: u16, protocol: Protocol| Frontend {
            kind: FrontendKind::ClusterIp,
            address: ip(address),
            port,
            protocol,
        };
        // (service, port name, protocol, frontends, backends)
        let expected = [
            (
                "dns",
                "dns",
                Protocol::Udp,
                vec![vip("198.19.0.53", 53, Protocol::Udp)],
                vec![
                    backend("198.18.1.20", 53, Some("node-a")),
                    backend("198.18.2.20", 53, Some("node-b")),
                ],
            ),
            (
                "dns",
                "dns-tcp",
                Protocol::Tcp,
                vec![vip("198.19.0.53", 53, Protocol::Tcp)],
                vec![
                    backend("198.18.1.20", 53, Some("node-a")),
                    backend("198.18.2.20", 53, Some("node-b")),
                ],
            ),
            (
                "external",
                "",
                Protocol::Tcp,
                vec![vip("198.19.0.80", 8080, Protocol::Tcp)],
                vec![backend("198.18.2.30", 80, None)],
            ),
            (
                "web",
                "http",
                Protocol::Tcp,
                vec![vip("198.19.0.10", 80, Protocol::Tcp)],
                vec![
                    backend("198.18.1.10", 80, Some("node-a")),
                    backend("198.18.1.11", 80, Some("node-a")),
                    backend("198.18.2.10", 80, Some("node-b")),
                ],
            ),
        ];
        let got: Vec<_> = models
            .values()
            .flat_map(|model| {
                assert_eq!(model.skipped, vec![], "{}", model.name);
                assert_eq!(model.no_datapath, None, "{}", model.name);
                model.ports.iter()
            })
            .map(|p| {
                assert_eq!(p.family, Family::V4);
                (
                    p.service.name.as_str(),
                    p.port_name.as_str(),
                    p.protocol,
                    p.frontends.clone(),
                    p.backends.clone(),
                )
            })
            .collect();
        let expected: Vec<_> = expected
            .iter()
            .map(|(s, n, p, f, b)| (*s, *n, *p, f.clone(), b.clone()))
            .collect();
        assert_eq!(got, expected);
        let names: Vec<ServiceName> = models.keys().cloned().collect();
        assert!(names.iter().all(|n| n.namespace == "demo"), "{names:?}");
    }

    const WAIT: Duration = Duration::from_secs(20);

    async fn next_event(rx: &mut mpsc::Receiver<SourceEvent>) -> SourceEvent {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the source stopped"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next two events, which must be the Service and EndpointSlice
    /// resyncs; returns the Services' first port numbers and the slices' names.
    async fn next_resync(rx: &mut mpsc::Receiver<SourceEvent>) -> (Vec<i32>, Vec<String>) {
        let services = match next_event(rx).await {
            SourceEvent::Resync {
                kind: Kind::Service,
                objects,
            } => objects,
            other => panic!("expected a Service resync, got {other:?}"),
        };
        let slices = match next_event(rx).await {
            SourceEvent::Resync {
                kind: Kind::EndpointSlice,
                objects,
            } => objects,
            other => panic!("expected an EndpointSlice resync, got {other:?}"),
        };
        let ports = services
            .iter()
            .map(|object| {
                let spec = service_of(object).spec.as_ref();
                spec.and_then(|s| s.ports.as_ref())
                    .and_then(|ports| ports.first())
                    .map_or(0, |port| port.port)
            })
            .collect();
        let names = slices.iter().map(|object| object_key(object).2).collect();
        (ports, names)
    }

    fn web(port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{namespace: demo, name: web}}\n\
             spec: {{clusterIP: 198.19.0.10, ports: [{{name: http, port: {port}}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{namespace: demo, name: web-1, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [198.18.1.10]}}]\n"
        )
    }

    #[tokio::test]
    async fn run_resyncs_on_change_and_reports_errors() {
        let dir = TempDir::new("run");
        let file = dir.write("web.yaml", &web(80));
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(run(dir.0.clone(), tx));

        let initial = next_resync(&mut rx).await;
        assert_eq!(initial, (vec![80], vec!["web-1".to_owned()]));

        // Same size, rewritten right away: still seen.
        dir.write("web.yaml", &web(81));
        assert_eq!(next_resync(&mut rx).await.0, vec![81]);

        let broken = "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: web}\nspec: {ports: [{port: x}]}\n";
        dir.write("web.yaml", broken);
        match next_event(&mut rx).await {
            SourceEvent::Error(message) => {
                assert!(
                    message.starts_with(&format!("{}:4:", file.display())),
                    "{message}"
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }

        // Fixed back to the last good state: sent again, the error is over.
        dir.write("web.yaml", &web(81));
        assert_eq!(next_resync(&mut rx).await.0, vec![81]);

        // A new file in the folder is a change too.
        dir.write(
            "more/api.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo, name: api}\nspec: {clusterIP: 198.19.0.11, ports: [{port: 443}]}\n",
        );
        let mut ports = next_resync(&mut rx).await.0;
        ports.sort();
        assert_eq!(ports, vec![81, 443]);

        drop(rx);
        match tokio::time::timeout(WAIT, task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("run did not end cleanly: {other:?}"),
        }
    }

    #[tokio::test]
    async fn run_fails_at_once_on_a_missing_path() {
        let dir = TempDir::new("missing");
        let (tx, _rx) = mpsc::channel(1);
        let result = tokio::time::timeout(WAIT, run(dir.0.join("nothing"), tx)).await;
        match result {
            Ok(Err(ManifestError::Io { path, .. })) => assert!(path.ends_with("nothing")),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
}
