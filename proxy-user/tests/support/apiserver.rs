//! An in-process Kubernetes API server for tests: it serves list and watch of
//! `v1/Service` and `discovery.k8s.io/v1/EndpointSlice` (all namespaces) and
//! `v1/Node` (cluster-scoped, with the `metadata.name` field selector) over
//! plain HTTP/1.1 on `127.0.0.1`, the way the real API server does, and lets a
//! test change objects and inject the failures a watch client must survive.
//!
//! ```ignore
//! let server = ApiServer::start().await;
//! server.apply(service);                      // ADDED / MODIFIED, new resourceVersion
//! let client = server.client();               // kube::Client, no auth
//! server.wait_watching(Kind::Service).await;  // a watch of Services is open
//! server.expire_watches();                    // 410 Gone: the client must relist
//! ```
//!
//! What it speaks:
//! - `GET /api/v1/services` and `GET /apis/discovery.k8s.io/v1/endpointslices`:
//!   a `ServiceList` / `EndpointSliceList` with `metadata.resourceVersion`;
//!   `limit` and `continue` paginate (ordered by namespace and name; a
//!   continue token older than the last [`ApiServer::expire_watches`] answers
//!   HTTP 410 `Expired`). The `resourceVersion` of a list is ignored: lists
//!   are always current.
//! - The same paths with `watch=true` (or `1`): a chunked stream of
//!   newline-delimited watch events, one chunk per event, starting after
//!   `resourceVersion` (absent or `0`: synthetic `ADDED` events for every
//!   current object first, and with `sendInitialEvents=true` a bookmark
//!   annotated `k8s.io/initial-events-end`), `BOOKMARK` events only when
//!   `allowWatchBookmarks=true`, closed cleanly after `timeoutSeconds`.
//! - `GET /api/v1/nodes` and `/api/v1/pods` likewise (nodes cluster-scoped); `fieldSelector=metadata.name=NAME` (or
//!   `==`) keeps that Node only, in lists and watches (any other field
//!   selector, on any resource, is a 400).
//! - `GET /apis/networking.k8s.io/v1/servicecidrs` likewise (cluster-scoped),
//!   unless [`ApiServer::refuse`] makes it answer an error code (404: an API
//!   server before 1.33; 403: a ClusterRole without it).
//! - `GET /version`; anything else is a 404 (405 for other methods) with a
//!   `Status` body.
//!
//! One resourceVersion counter is shared by every object, as etcd's revision
//! is. Control methods are synchronous and take effect at once: a sequence of
//! them with no `.await` in between looks atomic to a client running on the
//! same current-thread runtime.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    ops::Bound,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
        networking::v1::ServiceCIDR,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::{Value, json};
use svcnat::sources::{Kind, Object};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::Instant,
};

/// Longest request head accepted (request line and headers).
const MAX_HEAD: u64 = 64 * 1024;
/// Longest request body read and discarded; longer ones close the connection.
const MAX_BODY: u64 = 1024 * 1024;

/// A running test API server. Dropping it stops the server and closes every
/// connection.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What the server counted for one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// List requests (each page counts).
    pub lists: u64,
    /// Watch requests, including those answered with `410 Expired`.
    pub watches: u64,
    /// Watch streams open now.
    pub open_watches: u64,
    /// The `resourceVersion` parameter of the latest watch request (`""` when
    /// absent).
    pub last_watch_resource_version: Option<String>,
    /// `BOOKMARK` events written to watch streams (synthetic initial-events-end
    /// bookmarks included).
    pub bookmarks_sent: u64,
}

/// What [`ApiServer::apply`] accepts: a Service, an EndpointSlice, or an
/// [`Object`] holding either.
pub trait ApiObject {
    /// The object as the source contract's [`Object`].
    fn into_object(self) -> Object;
}

impl ApiObject for Service {
    fn into_object(self) -> Object {
        Object::Service(Box::new(self))
    }
}

impl ApiObject for EndpointSlice {
    fn into_object(self) -> Object {
        Object::EndpointSlice(Box::new(self))
    }
}

impl ApiObject for Node {
    fn into_object(self) -> Object {
        Object::Node(Box::new(self))
    }
}

impl ApiObject for ServiceCIDR {
    fn into_object(self) -> Object {
        Object::ServiceCidr(Box::new(self))
    }
}

impl ApiObject for Object {
    fn into_object(self) -> Object {
        self
    }
}

/// The kind of `obj`.
pub fn kind_of(obj: &Object) -> Kind {
    obj.kind()
}

/// The metadata of `obj`.
pub fn meta(obj: &Object) -> &ObjectMeta {
    obj.meta()
}

/// The metadata of `obj`, mutable.
pub fn meta_mut(obj: &mut Object) -> &mut ObjectMeta {
    obj.meta_mut()
}

impl ApiServer {
    /// Starts a server on `127.0.0.1` with an ephemeral port and no objects
    /// (resourceVersion 1, like a fresh etcd).
    ///
    /// Panics if it cannot bind, which only a broken test machine causes.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test API server on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("local address of a bound socket");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                ..State::default()
            }),
            changed,
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Self { addr, shared, task }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube configuration for this server (plain HTTP, no auth).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("the server URL is valid"))
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a plain HTTP client builds")
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Adds `obj`, or replaces the object of the same kind, namespace and
    /// name, and notifies watches (`ADDED` or `MODIFIED`). The server sets
    /// `metadata.resourceVersion` to a new value, `metadata.namespace` to
    /// `default` when absent (none for a Node), and `metadata.uid` when absent (kept across
    /// replacements). Returns the new resourceVersion.
    ///
    /// Panics if `obj` has no `metadata.name` (a bug in the test).
    pub fn apply(&self, obj: impl ApiObject) -> u64 {
        let mut obj = obj.into_object();
        let kind = kind_of(&obj);
        let rv = {
            let mut st = self.shared.lock();
            st.rv += 1;
            let rv = st.rv;
            let m = meta_mut(&mut obj);
            let name = m.name.clone().filter(|n| !n.is_empty());
            let name = name.expect("ApiServer::apply: the object needs metadata.name");
            let namespace = if matches!(kind, Kind::Node | Kind::ServiceCidr) {
                // Cluster-scoped.
                m.namespace = None;
                String::new()
            } else {
                m.namespace
                    .get_or_insert_with(|| "default".to_owned())
                    .clone()
            };
            m.resource_version = Some(rv.to_string());
            let key = (namespace, name);
            let old_uid = st.objects(kind).get(&key).and_then(|o| meta(o).uid.clone());
            let m = meta_mut(&mut obj);
            if m.uid.is_none() {
                m.uid =
                    Some(old_uid.unwrap_or_else(|| format!("00000000-0000-4000-8000-{rv:012}")));
            }
            let previous = st.objects_mut(kind).insert(key, obj.clone());
            let event = if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            st.history.push(Change {
                rv,
                kind,
                event,
                object: obj,
            });
            rv
        };
        self.shared.notify();
        rv
    }

    /// Deletes an object and notifies watches (`DELETED`, carrying the object
    /// with a new resourceVersion). Returns that resourceVersion, or `None`
    /// when there was no such object (nothing happens then).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        let rv = {
            let mut st = self.shared.lock();
            let key = (namespace.to_owned(), name.to_owned());
            let mut obj = st.objects_mut(kind).remove(&key)?;
            st.rv += 1;
            let rv = st.rv;
            meta_mut(&mut obj).resource_version = Some(rv.to_string());
            st.history.push(Change {
                rv,
                kind,
                event: "DELETED",
                object: obj,
            });
            rv
        };
        self.shared.notify();
        Some(rv)
    }

    /// The stored object, as watches and lists serve it.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Object> {
        let key = (namespace.to_owned(), name.to_owned());
        self.shared.lock().objects(kind).get(&key).cloned()
    }

    /// Every stored object of `kind`, ordered by namespace and name.
    pub fn objects(&self, kind: Kind) -> Vec<Object> {
        self.shared.lock().objects(kind).values().cloned().collect()
    }

    /// Sends a `BOOKMARK` at the current resourceVersion on every open watch
    /// that allowed bookmarks. Returns that resourceVersion.
    pub fn send_bookmark(&self) -> u64 {
        let rv = {
            let mut st = self.shared.lock();
            st.bookmark_gen += 1;
            st.rv
        };
        self.shared.notify();
        rv
    }

    /// Compacts the history at the current resourceVersion: every open watch
    /// receives an `ERROR` event `410 Expired` and ends, and later watches
    /// from an older resourceVersion (and list continue tokens from before)
    /// are answered the same way, so the client must relist.
    pub fn expire_watches(&self) {
        {
            let mut st = self.shared.lock();
            st.compacted = st.rv;
            st.history.clear();
            st.expire_gen += 1;
        }
        self.shared.notify();
    }

    /// Closes every open watch stream abruptly (no final chunk), as a broken
    /// connection or a restarting API server would. The history is kept: a
    /// client that watches again from its last resourceVersion misses nothing.
    pub fn drop_connections(&self) {
        self.shared.lock().drop_gen += 1;
        self.shared.notify();
    }

    /// Makes list and watch requests of `kind` answer `code` (404, 403, ...)
    /// with a `Status` body from now on; `None` serves them again. Counted
    /// like any request.
    pub fn refuse(&self, kind: Kind, code: Option<u16>) {
        self.shared.lock().refused[index(kind)] = code;
        self.shared.notify();
    }

    /// What the server counted so far for `kind`.
    pub fn counters(&self, kind: Kind) -> Counters {
        self.shared.lock().counters[index(kind)].clone()
    }

    /// Waits until `cond` holds, re-checking it after every change of the
    /// server's state (objects, requests, open watches). Has no timeout of its
    /// own: wrap the test in one.
    pub async fn wait_until(&self, mut cond: impl FnMut(&Self) -> bool) {
        let mut rx = self.shared.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if cond(self) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until at least one watch of `kind` is open.
    pub async fn wait_watching(&self, kind: Kind) {
        self.wait_until(|s| s.counters(kind).open_watches > 0).await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task.
        self.task.abort();
    }
}

/// What the server and its connection tasks share.
struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, to wake watches and waiters.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

type Key = (String, String);

#[derive(Default)]
struct State {
    /// The latest resourceVersion handed out.
    rv: u64,
    services: BTreeMap<Key, Object>,
    slices: BTreeMap<Key, Object>,
    nodes: BTreeMap<Key, Object>,
    pods: BTreeMap<Key, Object>,
    cidrs: BTreeMap<Key, Object>,
    /// Changes after `compacted`, in resourceVersion order.
    history: Vec<Change>,
    /// Watches from before this resourceVersion are expired.
    compacted: u64,
    /// Bumped by `expire_watches`, `drop_connections`, `send_bookmark`; a
    /// watch compares them with the values it started with.
    expire_gen: u64,
    drop_gen: u64,
    bookmark_gen: u64,
    /// Indexed by [`index`].
    counters: [Counters; 5],
    /// Error codes list and watch of a kind answer (see
    /// [`ApiServer::refuse`]), indexed by [`index`].
    refused: [Option<u16>; 5],
}

impl State {
    fn objects(&self, kind: Kind) -> &BTreeMap<Key, Object> {
        match kind {
            Kind::Service => &self.services,
            Kind::EndpointSlice => &self.slices,
            Kind::Node => &self.nodes,
            Kind::Pod => &self.pods,
            Kind::ServiceCidr => &self.cidrs,
        }
    }

    fn objects_mut(&mut self, kind: Kind) -> &mut BTreeMap<Key, Object> {
        match kind {
            Kind::Service => &mut self.services,
            Kind::EndpointSlice => &mut self.slices,
            Kind::Node => &mut self.nodes,
            Kind::Pod => &mut self.pods,
            Kind::ServiceCidr => &mut self.cidrs,
        }
    }
}

/// One entry of the watch history.
struct Change {
    rv: u64,
    kind: Kind,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    event: &'static str,
    object: Object,
}

fn index(kind: Kind) -> usize {
    match kind {
        Kind::Service => 0,
        Kind::EndpointSlice => 1,
        Kind::Node => 2,
        Kind::Pod => 3,
        Kind::ServiceCidr => 4,
    }
}

/// `(apiVersion, kind)` of an object of `kind`.
fn type_meta(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Service => ("v1", "Service"),
        Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSlice"),
        Kind::Node => ("v1", "Node"),
        Kind::Pod => ("v1", "Pod"),
        Kind::ServiceCidr => ("networking.k8s.io/v1", "ServiceCIDR"),
    }
}

/// The resource served at `path`, if any.
fn route(path: &str) -> Option<Kind> {
    match path.trim_end_matches('/') {
        "/api/v1/services" => Some(Kind::Service),
        "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
        "/api/v1/nodes" => Some(Kind::Node),
        "/api/v1/pods" => Some(Kind::Pod),
        "/apis/networking.k8s.io/v1/servicecidrs" => Some(Kind::ServiceCidr),
        _ => None,
    }
}

/// The JSON of `obj`, with `apiVersion` and `kind`.
fn object_json(obj: &Object) -> Value {
    match obj {
        Object::Service(s) => serde_json::to_value(&**s),
        Object::EndpointSlice(s) => serde_json::to_value(&**s),
        Object::Node(n) => serde_json::to_value(&**n),
        Object::Pod(p) => serde_json::to_value(&**p),
        Object::ServiceCidr(c) => serde_json::to_value(&**c),
    }
    .expect("k8s-openapi objects serialize to JSON")
}

/// A `Status` object.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    })
}

/// One watch event as a line of the stream.
fn event_line(event: &str, object: Value) -> String {
    let mut line = json!({ "type": event, "object": object }).to_string();
    line.push('\n');
    line
}

fn expired_line() -> String {
    event_line("ERROR", status(410, "Expired", "too old resource version"))
}

fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> String {
    let (api_version, kind) = type_meta(kind);
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata }),
    )
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                // Out of file descriptors and the like: wait, then go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    /// The client asked to close the connection after the response.
    close: bool,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }
}

type Conn = BufReader<TcpStream>;

/// Serves requests on one connection (HTTP/1.1 keep-alive) until either side
/// closes it.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut conn = BufReader::new(stream);
    loop {
        let request = match read_request(&mut conn).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        match handle(&mut conn, &shared, &request).await {
            Ok(true) if !request.close => {}
            Ok(_) | Err(_) => return,
        }
    }
}

/// Reads one request head and discards its body. `None`: the client closed
/// the connection or sent something that is not HTTP/1.1.
async fn read_request(conn: &mut Conn) -> io::Result<Option<Request>> {
    let mut head = (&mut *conn).take(MAX_HEAD);
    let mut line = String::new();
    if head.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    if !version.starts_with("HTTP/1.") {
        return Ok(None);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: percent_decode(path),
        query: query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
        close: version == "HTTP/1.0",
    };
    let mut body_len = 0_u64;
    loop {
        line.clear();
        if head.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Ok(None);
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let Ok(n) = value.parse() else {
                return Ok(None);
            };
            body_len = n;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // A chunked request body: nothing we serve takes one.
            return Ok(None);
        } else if name.eq_ignore_ascii_case("connection") {
            request.close = value.eq_ignore_ascii_case("close");
        }
    }
    if body_len > MAX_BODY {
        return Ok(None);
    }
    let copied = tokio::io::copy(&mut (&mut *conn).take(body_len), &mut tokio::io::sink()).await?;
    if copied < body_len {
        return Ok(None);
    }
    Ok(Some(request))
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space); invalid
/// escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make at most 255.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one request. `Ok(true)`: the connection can serve another one.
async fn handle(conn: &mut Conn, shared: &Shared, req: &Request) -> io::Result<bool> {
    if req.method != "GET" {
        let body = status(
            405,
            "MethodNotAllowed",
            "this test server only lists and watches",
        );
        respond(conn, 405, &body).await?;
        return Ok(true);
    }
    if req.path == "/version" {
        let body = json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "",
            "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "gc",
            "platform": "linux/amd64",
        });
        respond(conn, 200, &body).await?;
        return Ok(true);
    }
    let Some(kind) = route(&req.path) else {
        let message = format!(
            "the server could not find the requested resource {}",
            req.path
        );
        respond(conn, 404, &status(404, "NotFound", &message)).await?;
        return Ok(true);
    };
    let refused = shared.lock().refused[index(kind)];
    if let Some(code) = refused {
        {
            let mut st = shared.lock();
            let c = &mut st.counters[index(kind)];
            if req.flag("watch") {
                c.watches += 1;
            } else {
                c.lists += 1;
            }
        }
        shared.notify();
        let body = status(
            code,
            "Refused",
            &format!("refused by the test: {}", req.path),
        );
        respond(conn, code, &body).await?;
        return Ok(true);
    }
    if req.flag("watch") {
        serve_watch(conn, shared, kind, req).await
    } else {
        let (code, body) = list(shared, kind, req);
        respond(conn, code, &body).await?;
        Ok(true)
    }
}

/// Writes a complete JSON response.
async fn respond(conn: &mut Conn, code: u16, body: &Value) -> io::Result<()> {
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

/// A list response: `(HTTP status, body)`.
/// The objects a request's `fieldSelector` keeps: every one without it,
/// the one named with `metadata.name=NAME`; `Err` for any other selector.
fn field_filter(req: &Request) -> Result<Option<String>, Value> {
    match req.param("fieldSelector").filter(|f| !f.is_empty()) {
        None => Ok(None),
        Some(sel) => match sel
            .strip_prefix("metadata.name==")
            .or_else(|| sel.strip_prefix("metadata.name="))
        {
            Some(name) if !name.contains(',') => Ok(Some(name.to_owned())),
            _ => Err(status(
                400,
                "BadRequest",
                &format!("field selector {sel:?} not supported by the test server"),
            )),
        },
    }
}

/// Whether `obj` passes the `metadata.name` filter of [`field_filter`].
fn passes(name: Option<&String>, obj: &Object) -> bool {
    name.is_none_or(|n| meta(obj).name.as_ref() == Some(n))
}

fn list(shared: &Shared, kind: Kind, req: &Request) -> (u16, Value) {
    let named = match field_filter(req) {
        Ok(n) => n,
        Err(body) => return (400, body),
    };
    let limit = req
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (rv, after) = {
        let mut st = shared.lock();
        st.counters[index(kind)].lists += 1;
        match req.param("continue").filter(|c| !c.is_empty()) {
            None => (st.rv, None),
            Some(token) => {
                // `{resourceVersion}/{namespace}/{name}` of the last item sent.
                let mut parts = token.splitn(3, '/');
                let (Some(Ok(rv)), Some(ns), Some(name)) = (
                    parts.next().map(str::parse::<u64>),
                    parts.next(),
                    parts.next(),
                ) else {
                    return (400, status(400, "BadRequest", "invalid continue token"));
                };
                if rv < st.compacted {
                    let message = "The provided continue parameter is too old to display a \
                                   consistent list result. You can start a new list without \
                                   the continue parameter.";
                    return (410, status(410, "Expired", message));
                }
                (rv, Some((ns.to_owned(), name.to_owned())))
            }
        }
    };
    let st = shared.lock();
    let objects = st.objects(kind);
    let remaining: Box<dyn Iterator<Item = (&Key, &Object)>> = match after {
        None => Box::new(objects.iter()),
        Some(key) => Box::new(objects.range((Bound::Excluded(key), Bound::Unbounded))),
    };
    let mut items = Vec::new();
    let mut last = None;
    let mut remaining = remaining.filter(|(_, obj)| passes(named.as_ref(), obj));
    for (key, obj) in remaining.by_ref().take(limit.unwrap_or(usize::MAX)) {
        let mut item = object_json(obj);
        // The API server leaves the type out of list items.
        if let Some(map) = item.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
        items.push(item);
        last = Some(key);
    }
    let left = remaining.count();
    let (api_version, kind_name) = type_meta(kind);
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if let (true, Some((ns, name))) = (left > 0, last) {
        metadata["continue"] = json!(format!("{rv}/{ns}/{name}"));
        metadata["remainingItemCount"] = json!(left);
    }
    let body = json!({
        "kind": format!("{kind_name}List"),
        "apiVersion": api_version,
        "metadata": metadata,
        "items": items,
    });
    (200, body)
}

/// Where a new watch starts.
enum Start {
    /// After this resourceVersion, with these events first.
    From { rv: u64, initial: Vec<String> },
    /// The resourceVersion is older than the history.
    Expired,
    /// The resourceVersion is not a number.
    Invalid,
}

/// Keeps `open_watches` of a resource right however a watch ends.
struct OpenWatch<'a> {
    shared: &'a Shared,
    kind: Kind,
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let open = &mut st.counters[index(self.kind)].open_watches;
        *open = open.saturating_sub(1);
        drop(st);
        self.shared.notify();
    }
}

/// What a watch does next.
enum Step {
    /// Write these events; `true` when one of them is a bookmark.
    Send(Vec<String>, bool),
    Expire,
    Drop,
}

/// Serves a watch stream. `Ok(true)`: it ended cleanly and the connection can
/// serve another request.
async fn serve_watch(
    conn: &mut Conn,
    shared: &Shared,
    kind: Kind,
    req: &Request,
) -> io::Result<bool> {
    let version = req.param("resourceVersion").unwrap_or("");
    let bookmarks = req.flag("allowWatchBookmarks");
    let named = match field_filter(req) {
        Ok(n) => n,
        Err(body) => {
            respond(conn, 400, &body).await?;
            return Ok(true);
        }
    };
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok());
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));

    let mut changed = shared.changed.subscribe();
    let (start, expire_gen, drop_gen, mut bookmark_gen) = {
        let mut st = shared.lock();
        let counters = &mut st.counters[index(kind)];
        counters.watches += 1;
        counters.last_watch_resource_version = Some(version.to_owned());
        let start = if version.is_empty() || version == "0" {
            // Synthetic ADDED events for the current state, then changes.
            let mut initial: Vec<String> = st
                .objects(kind)
                .values()
                .filter(|o| passes(named.as_ref(), o))
                .map(|o| event_line("ADDED", object_json(o)))
                .collect();
            if req.flag("sendInitialEvents") && bookmarks {
                initial.push(bookmark_line(kind, st.rv, true));
                st.counters[index(kind)].bookmarks_sent += 1;
            }
            Start::From { rv: st.rv, initial }
        } else {
            match version.parse::<u64>() {
                Err(_) => Start::Invalid,
                Ok(rv) if rv < st.compacted => Start::Expired,
                Ok(rv) => Start::From {
                    rv,
                    initial: Vec::new(),
                },
            }
        };
        if matches!(start, Start::From { .. }) {
            st.counters[index(kind)].open_watches += 1;
        }
        (start, st.expire_gen, st.drop_gen, st.bookmark_gen)
    };
    // Created at once so that the count goes down however the watch ends.
    let _open = matches!(start, Start::From { .. }).then_some(OpenWatch { shared, kind });
    shared.notify();

    if matches!(start, Start::Invalid) {
        let message = format!("invalid resourceVersion {version:?}");
        respond(conn, 400, &status(400, "BadRequest", &message)).await?;
        return Ok(true);
    }
    let stream = conn.get_mut();
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await?;
    let (mut pos, initial) = match start {
        Start::Expired | Start::Invalid => {
            write_chunk(stream, &expired_line()).await?;
            stream.write_all(b"0\r\n\r\n").await?;
            return Ok(true);
        }
        Start::From { rv, initial } => (rv, initial),
    };
    for line in &initial {
        write_chunk(conn.get_mut(), line).await?;
    }

    let mut scratch = [0_u8; 512];
    loop {
        changed.borrow_and_update();
        let step = {
            let st = shared.lock();
            if st.drop_gen != drop_gen {
                Step::Drop
            } else if st.expire_gen != expire_gen {
                Step::Expire
            } else {
                let first = st.history.partition_point(|c| c.rv <= pos);
                let mut lines: Vec<String> = st.history[first..]
                    .iter()
                    .filter(|c| c.kind == kind && passes(named.as_ref(), &c.object))
                    .map(|c| event_line(c.event, object_json(&c.object)))
                    .collect();
                pos = pos.max(st.history.last().map_or(pos, |c| c.rv));
                let mut bookmark = false;
                if st.bookmark_gen != bookmark_gen {
                    bookmark_gen = st.bookmark_gen;
                    if bookmarks {
                        lines.push(bookmark_line(kind, st.rv, false));
                        pos = pos.max(st.rv);
                        bookmark = true;
                    }
                }
                Step::Send(lines, bookmark)
            }
        };
        match step {
            // Closing the socket without the final chunk is what a broken
            // connection looks like to the client.
            Step::Drop => return Ok(false),
            Step::Expire => {
                let stream = conn.get_mut();
                write_chunk(stream, &expired_line()).await?;
                stream.write_all(b"0\r\n\r\n").await?;
                return Ok(true);
            }
            Step::Send(lines, bookmark) => {
                for line in &lines {
                    write_chunk(conn.get_mut(), line).await?;
                }
                if bookmark {
                    shared.lock().counters[index(kind)].bookmarks_sent += 1;
                    shared.notify();
                }
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Ok(false) },
            () = sleep_until(deadline) => {
                conn.get_mut().write_all(b"0\r\n\r\n").await?;
                return Ok(true);
            }
            // The client sends nothing during a watch: end of file or error
            // means it went away.
            r = conn.read(&mut scratch) => if matches!(r, Ok(0) | Err(_)) { return Ok(false) },
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn write_chunk(stream: &mut TcpStream, data: &str) -> io::Result<()> {
    let chunk = format!("{:x}\r\n{data}\r\n", data.len());
    stream.write_all(chunk.as_bytes()).await?;
    stream.flush().await
}
