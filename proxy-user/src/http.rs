//! The agent's small HTTP/1 servers, on hyper: the one serve loop behind
//! `/metrics` (module `metrics`), `/healthz`, `/readyz` and `/livez`
//! (module `health`) and the `healthCheckNodePort`s (module
//! `healthcheck`). It knows none of them.
//!
//! One request per connection (`Connection: close`). A request head is at
//! most [`MAX_REQUEST`] bytes (larger: `431`) and must arrive within
//! [`HEADER_TIMEOUT`]; a connection lives at most [`CONNECTION_TIMEOUT`],
//! writing its answer included; a request hyper cannot parse gets `400`.
//! `HEAD` gets the head of what `GET` would get.
//!
//! A server holds at most as many connections as its [`Connections`]
//! allows, and a new one is always accepted: when the table is full the
//! oldest connection is closed. A probe sends its request at once and is
//! answered in microseconds, so idle or slow clients (slowloris) cannot
//! keep it out; they only push each other out.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{self, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::AbortHandle};

/// Longest request head read (request line and headers); hyper's smallest.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of a connection: its request head, the answer, and
/// writing it to a client that reads slowly.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one metrics or health server holds at once. Large enough
/// that a burst of new connections cannot push out a probe before its
/// task has read the request already waiting in its socket (an idle
/// connection costs a task and hyper's buffer, about 10 KiB).
pub const MAX_CONNECTIONS: usize = 256;

/// A request, as the servers here see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The target's path (without its query string).
    pub path: &'a str,
}

/// An HTTP response of the small servers here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Headers besides `Content-Type`, `Content-Length`,
    /// `X-Content-Type-Options` and `Connection`.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// `body` and a newline as plain text.
    pub fn text(status: u16, body: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    /// `body` as `content_type`, no further headers.
    pub fn new(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// The same with header `name: value` added.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The hyper response (hyper leaves the body out for `HEAD`).
    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut out = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *out.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = out.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        for (name, value) in self.headers {
            // from_bytes lowers the case, as HTTP/1 in hyper wants it.
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::try_from(value),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                }
                _ => tracing::warn!(header = name, "header left out: not a valid name or value"),
            }
        }
        out
    }
}

/// What a server answers to one request.
pub type Handler = Arc<dyn Fn(&Request<'_>) -> Response + Send + Sync>;

/// The connections of one server (or of several sharing one budget):
/// at most `cap`, the oldest closed to make room for a new one.
pub struct Connections {
    cap: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u64,
    live: BTreeMap<u64, AbortHandle>,
    evicted: u64,
}

impl Connections {
    /// A table of at most `cap` connections (at least one).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().live.len()
    }

    /// Connections closed so far to make room for newer ones.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `conn` in a task of its own, in the table (closing the oldest
    /// connection first when the table is full); it leaves the table when
    /// it ends.
    fn spawn<F>(self: &Arc<Self>, conn: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut t = self.lock();
        while t.live.len() >= self.cap {
            let Some((_, oldest)) = t.live.pop_first() else {
                break;
            };
            oldest.abort();
            t.evicted += 1;
        }
        let id = t.next;
        t.next += 1;
        let me = Arc::clone(self);
        // The task cannot take its entry out before it is in: that needs
        // the lock held here.
        let task = tokio::spawn(async move {
            let _leave = Leave { table: me, id };
            conn.await;
        });
        t.live.insert(id, task.abort_handle());
    }
}

/// Takes a connection out of its table when its task ends or is aborted.
struct Leave {
    table: Arc<Connections>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.table.lock().live.remove(&self.id);
    }
}

/// Serves `handler` on `listener` until the task is aborted, each
/// connection in a task of its own in `connections`.
pub async fn serve(
    listener: TcpListener,
    connections: Arc<Connections>,
    handler: Handler,
) -> io::Result<()> {
    let port = listener.local_addr().map_or(0, |a| a.port());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                tracing::warn!(port, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        connections.spawn(async move {
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let request = Request {
                    method: req.method().as_str(),
                    path: req.uri().path(),
                };
                let response = handler(&request).into_hyper();
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(port, "http connection: {e}"),
                Err(_) => {
                    tracing::debug!(port, "http connection closed after {CONNECTION_TIMEOUT:?}")
                }
            }
        });
    }
}

/// Serves `GET` and `HEAD` with `route(path)`, and `405` (`Allow: GET,
/// HEAD`) to any other method, on `listener` with a table of
/// [`MAX_CONNECTIONS`] of its own, until the task is aborted.
pub async fn serve_get(
    listener: TcpListener,
    route: impl Fn(&str) -> Response + Send + Sync + 'static,
) -> io::Result<()> {
    let handler: Handler = Arc::new(move |req: &Request<'_>| match req.method {
        "GET" | "HEAD" => route(req.path),
        _ => Response::text(405, "only GET and HEAD").with_header("Allow", "GET, HEAD".to_owned()),
    });
    serve(listener, Connections::new(MAX_CONNECTIONS), handler).await
}

/// Binds `addr`, retrying every few seconds while it fails (the port of a
/// kube-proxy being replaced, for example): the datapath does not wait for
/// the metrics or health server.
pub async fn bind_retrying(addr: SocketAddr, what: &str) -> TcpListener {
    let mut logged = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "{what} server listening");
                return l;
            }
            Err(e) => {
                if !logged {
                    tracing::error!(%addr, "cannot listen for the {what} server: {e}; retrying");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}
