//! The agent's small HTTP/1 servers: the one request reader, response writer
//! and serve loop behind `/metrics` (module `metrics`), `/healthz` and
//! `/readyz` (module `health`) and the `healthCheckNodePort`s (module
//! `healthcheck`). It knows none of them.
//!
//! One request per connection (`Connection: close`). A request head is at
//! most [`MAX_REQUEST`] bytes (larger: `431`) and must arrive within
//! [`REQUEST_TIMEOUT`]; a request line that is not `METHOD TARGET HTTP/1.x`
//! gets `400`. `HEAD` gets the head of what `GET` would get. Connections are
//! served at most as many at once as the permits a server is given; the
//! others wait in the listen backlog.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Longest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one metrics or health server serves at once.
pub const MAX_CONNECTIONS: usize = 32;

/// A request, as the servers here see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The target without its query string or fragment.
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

    /// The response head (status line and headers, up to the blank line),
    /// followed by the body unless `head_only`.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("Connection: close\r\n\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// What a server answers to one request.
pub type Handler = Arc<dyn Fn(&Request<'_>) -> Response + Send + Sync>;

/// Serves `handler` on `listener` until the task is aborted, each connection
/// in a task of its own holding one of `permits` (accepting waits for one).
pub async fn serve(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    handler: Handler,
) -> io::Result<()> {
    let port = listener.local_addr().map_or(0, |a| a.port());
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return Ok(());
        };
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
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, &*handler).await {
                tracing::debug!(port, "http connection: {e}");
            }
        });
    }
}

/// Serves `GET` and `HEAD` with `route(path)`, and `405` (`Allow: GET,
/// HEAD`) to any other method, on `listener` with [`MAX_CONNECTIONS`]
/// permits of its own, until the task is aborted.
pub async fn serve_get(
    listener: TcpListener,
    route: impl Fn(&str) -> Response + Send + Sync + 'static,
) -> io::Result<()> {
    let handler: Handler = Arc::new(move |req: &Request<'_>| match req.method {
        "GET" | "HEAD" => route(req.path),
        _ => Response::text(405, "only GET and HEAD").with_header("Allow", "GET, HEAD".to_owned()),
    });
    serve(listener, Arc::new(Semaphore::new(MAX_CONNECTIONS)), handler).await
}

/// Reads one request head and writes the answer.
async fn answer(
    mut stream: TcpStream,
    handler: &(dyn Fn(&Request<'_>) -> Response + Send + Sync),
) -> io::Result<()> {
    let (response, head_only) = match read_request_line(&mut stream).await? {
        None => (Response::text(431, "request header too large"), false),
        Some(line) => match parse_request_line(&line) {
            Some(req) => (handler(&req), req.method == "HEAD"),
            None => (Response::text(400, "bad request"), false),
        },
    };
    stream.write_all(&response.to_bytes(head_only)).await?;
    stream.shutdown().await
}

/// `METHOD TARGET HTTP/1.x`, the target cut at `?` or `#`.
fn parse_request_line(line: &str) -> Option<Request<'_>> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(v)) if v.starts_with("HTTP/1.") => Some(Request {
            method,
            path: target.split(['?', '#']).next().unwrap_or_default(),
        }),
        _ => None,
    }
}

/// Reads an HTTP/1 request head (at most [`MAX_REQUEST`] bytes, within
/// [`REQUEST_TIMEOUT`]) and returns its request line; `Ok(None)` when the
/// head is too large.
async fn read_request_line(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0_u8; 1024];
        loop {
            if let Some(end) = find_head_end(&buf) {
                return Ok(Some(end));
            }
            if buf.len() >= MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok(head.map(|end| {
        let text = String::from_utf8_lossy(&buf[..end]);
        text.lines().next().unwrap_or_default().to_owned()
    }))
}

/// End of the request head (index of the blank line), if it arrived.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_with_either_line_ending() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(23)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
