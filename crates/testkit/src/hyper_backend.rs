//! A test backend on hyper's servers: HTTP/1.1 or HTTP/2 (prior knowledge over TCP and
//! Unix sockets, or `h2` by ALPN over TLS), TLS optional. It records each request's
//! version and the connections it accepted, and answers by path:
//!
//! Paths are matched at their end (a route's prefix may come first):
//!
//! - `/slow/MS`: after MS milliseconds, `slow`.
//! - `/trailers`: `hello` then the trailers `grpc-status: 0` and `grpc-message: ok`
//!   (announced by a `Trailer` field, as an HTTP/1.1 client needs).
//! - `/reset`: `partial` then the stream fails (HTTP/2: RST_STREAM; HTTP/1.1: the
//!   connection is cut).
//! - `/hang`: a response head, then a body that never ends (the backend counts the
//!   bodies dropped before their end in [`HyperBackend::cancelled`]).
//! - `/big/N`: N bytes of `x`, in 64 KiB frames produced as the peer takes them (their
//!   total so far in [`HyperBackend::big_bytes_sent`]).
//! - anything else: `VERSION conn=N PATH`, e.g. `HTTP/2.0 conn=1 /x`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use crate::addr::{Addr, Bind, Listener};

/// What [`HyperBackend::start`] serves.
#[derive(Clone, Debug, Default)]
pub struct HyperOptions {
    /// TLS with these settings (its ALPN list is set from `h2`: `h2` and `http/1.1`,
    /// or none); `None`: plain.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// HTTP/2: over plain sockets with prior knowledge only; over TLS, `h2` and
    /// `http/1.1` are offered by ALPN and the client's choice is served.
    pub h2: bool,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_concurrent_streams: Option<u32>,
    /// HTTP/2: a GOAWAY (graceful shutdown) once a connection has answered this many
    /// requests; its streams in flight finish, then it closes.
    pub goaway_after: Option<usize>,
}

/// One request as the backend saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Its HTTP version.
    pub version: http::Version,
    /// The method.
    pub method: http::Method,
    /// The target (HTTP/2: the `:scheme` and `:authority` included).
    pub uri: http::Uri,
    /// Its fields.
    pub headers: http::HeaderMap,
    /// The connection it came on (1, 2, ...).
    pub conn: usize,
    /// Its body, read to the end (empty until it has been).
    pub body: Bytes,
    /// Its trailers, if it had any.
    pub trailers: Option<http::HeaderMap>,
}

#[derive(Debug, Default)]
struct State {
    connections: AtomicUsize,
    requests: Mutex<Vec<SeenRequest>>,
    cancelled: AtomicUsize,
    errors: Mutex<Vec<String>>,
    /// Bytes of `/big/N` bodies handed to hyper so far.
    big_sent: AtomicUsize,
}

/// A running hyper backend; stops when dropped.
#[derive(Debug)]
pub struct HyperBackend {
    addr: Addr,
    state: Arc<State>,
    task: JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for HyperBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HyperBackend {
    /// Starts serving on `bind` as `opts` says. Needs a tokio runtime.
    pub fn start(bind: Bind, opts: HyperOptions) -> anyhow::Result<HyperBackend> {
        let (listener, addr, dir) = Listener::bind(bind)?;
        let state = Arc::new(State::default());
        let tls = match &opts.tls {
            Some(cfg) => {
                let mut cfg = (**cfg).clone();
                // Without h2: no ALPN at all, as many HTTP/1.1 servers (a client's
                // offer is then ignored, not refused).
                cfg.alpn_protocols = if opts.h2 {
                    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
                } else {
                    Vec::new()
                };
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
            }
            None => None,
        };
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _peer)) = listener.accept().await else {
                    continue;
                };
                let id = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let st = st.clone();
                let tls = tls.clone();
                let opts = opts.clone();
                tokio::spawn(async move {
                    let res = match tls {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => {
                                let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve(s, h2, id, &opts, st.clone()).await
                            }
                            Err(e) => Err(format!("TLS handshake: {e}")),
                        },
                        None => serve(stream, opts.h2, id, &opts, st.clone()).await,
                    };
                    if let Err(e) = res {
                        st.errors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("conn {id}: {e}"));
                    }
                });
            }
        });
        Ok(HyperBackend {
            addr,
            state,
            task,
            _dir: dir,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests dropped before their answer and response bodies dropped before their
    /// end (the client or the proxy reset the stream, or closed the connection).
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Bytes of `/big/N` response bodies handed to hyper so far (what the peer's flow
    /// control let through, plus hyper's own buffer).
    pub fn big_bytes_sent(&self) -> usize {
        self.state.big_sent.load(Ordering::SeqCst)
    }

    /// Connection errors (TLS handshakes that failed, protocol errors).
    pub fn errors(&self) -> Vec<String> {
        self.state
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `cond` holds, polling every 5 ms, for at most `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&HyperBackend) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while !cond(self) {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "backend: {what} did not happen within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

async fn serve<S>(
    stream: S,
    h2: bool,
    id: usize,
    opts: &HyperOptions,
    st: Arc<State>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answered = Arc::new(AtomicUsize::new(0));
    let goaway = Arc::new(tokio::sync::Notify::new());
    let service = {
        let (answered, goaway, limit) = (answered.clone(), goaway.clone(), opts.goaway_after);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let st = st.clone();
            let answered = answered.clone();
            let goaway = goaway.clone();
            async move {
                let resp = answer(req, id, &st).await;
                let n = answered.fetch_add(1, Ordering::SeqCst) + 1;
                if limit.is_some_and(|l| n >= l) {
                    goaway.notify_one();
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let io = TokioIo::new(stream);
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some(n) = opts.max_concurrent_streams {
            builder.max_concurrent_streams(n);
        }
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => return res.map_err(|e| e.to_string()),
            () = goaway.notified() => conn.as_mut().graceful_shutdown(),
        }
        conn.await.map_err(|e| e.to_string())
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string())
    }
}

async fn answer(
    req: hyper::Request<Incoming>,
    conn: usize,
    st: &Arc<State>,
) -> hyper::Response<TestBody> {
    // Counted as cancelled if dropped before answering (the stream was reset).
    let mut pending = Unanswered(Some(st.clone()));
    let (parts, body) = req.into_parts();
    // The request body is read to its end (trailers included) before the answer.
    let (body, trailers) = match http_body_util::BodyExt::collect(body).await {
        Ok(c) => {
            let trailers = c.trailers().cloned();
            (c.to_bytes(), trailers)
        }
        Err(_) => (Bytes::new(), None),
    };
    st.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(SeenRequest {
            version: parts.version,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            conn,
            body,
            trailers,
        });
    let path = parts.uri.path().to_owned();
    let mut frames: VecDeque<Result<Frame<Bytes>, io::Error>> = VecDeque::new();
    let mut resp = hyper::Response::builder();
    let mut hang = false;
    let mut fail_after = None;
    let mut big = 0;
    // Matched at the path's end, so a route's prefix may come first (`/a/slow/100`).
    if let Some((_, ms)) = path.rsplit_once("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        frames.push_back(Ok(Frame::data(Bytes::from_static(b"slow"))));
    } else if path.ends_with("/trailers") {
        resp = resp.header("trailer", "grpc-status, grpc-message");
        frames.push_back(Ok(Frame::data(Bytes::from_static(b"hello"))));
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t.insert("grpc-message", http::HeaderValue::from_static("ok"));
        frames.push_back(Ok(Frame::trailers(t)));
    } else if path.ends_with("/reset") {
        frames.push_back(Ok(Frame::data(Bytes::from_static(b"partial"))));
        fail_after = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
    } else if let Some((_, n)) = path.rsplit_once("/big/") {
        big = n.parse().unwrap_or(0);
    } else if path.ends_with("/hang") {
        frames.push_back(Ok(Frame::data(Bytes::from_static(b"start\n"))));
        hang = true;
    } else {
        let text = format!("{:?} conn={conn} {path}", parts.version);
        frames.push_back(Ok(Frame::data(Bytes::from(text))));
    }
    pending.0 = None;
    let body = TestBody {
        frames,
        hang,
        fail_after,
        big,
        ended: false,
        state: st.clone(),
    };
    resp.body(body).unwrap_or_else(|_| {
        hyper::Response::new(TestBody {
            frames: VecDeque::new(),
            hang: false,
            fail_after: None,
            big: 0,
            ended: false,
            state: st.clone(),
        })
    })
}

/// A request being answered: counted in `cancelled` when dropped before its answer.
struct Unanswered(Option<Arc<State>>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(st) = self.0.take() {
            st.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A response body of fixed frames (or that never ends); counts itself in
/// `cancelled` when dropped before its end.
struct TestBody {
    frames: VecDeque<Result<Frame<Bytes>, io::Error>>,
    hang: bool,
    /// After the frames: an error once this fires (the response head and first frames
    /// reach the client before the stream fails).
    fail_after: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `/big/N`: bytes still to send.
    big: usize,
    ended: bool,
    state: Arc<State>,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(f));
        }
        if self.big > 0 {
            const CHUNK: &[u8] = &[b'x'; 64 * 1024];
            let n = self.big.min(CHUNK.len());
            self.big -= n;
            self.state.big_sent.fetch_add(n, Ordering::SeqCst);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))));
        }
        if let Some(sleep) = self.fail_after.as_mut() {
            if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            self.fail_after = None;
            self.ended = true;
            return Poll::Ready(Some(Err(io::Error::other("backend resets the stream"))));
        }
        match self.frames.pop_front() {
            Some(f) => Poll::Ready(Some(f)),
            None if self.hang => Poll::Pending,
            None => {
                self.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.hang && self.fail_after.is_none() && self.big == 0
    }
}

impl Drop for TestBody {
    fn drop(&mut self) {
        if !self.ended && !self.is_end_stream() {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}
