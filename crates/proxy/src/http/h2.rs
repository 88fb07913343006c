//! HTTP/2 toward clients: telling an HTTP/2 connection from an HTTP/1 one, and the
//! driver of an HTTP/2 connection.
//!
//! A plain connection is HTTP/2 when its first bytes are the connection preface (h2c
//! with prior knowledge, RFC 9113 §3.3): [`peek`] looks at the socket without reading,
//! and when that cannot tell, [`sniff`] reads at most the preface's 24 bytes and puts
//! back what it read, so an HTTP/1 connection goes on as if nothing had happened. A TLS connection is HTTP/2 when ALPN chose `h2` (`super::driver`).
//!
//! One task per connection drives hyper's HTTP/2 connection ([`serve`]) and enforces
//! what is the connection's: `idle_timeout` (no stream open: `GOAWAY`, then closed),
//! the drain (`GOAWAY`, the streams in flight finish, the grace's end closes the rest),
//! an operator's close. hyper runs each stream in a task of its own; there, every
//! stream is a request as on HTTP/1: an entry in the registry under its connection's
//! ([`crate::registry::Registry::register_stream`]), a [`ClientConn`] of its own, and
//! the same [`ConnService`] (routing, header hygiene, `X-Forwarded-*`, forwarding as
//! HTTP/1.1, metrics, the access log). The stream's own timer (the exchange's idle
//! limit) and an operator's close of the stream reset that stream alone
//! (`RST_STREAM`): the service's future or the response body fails, and hyper resets;
//! a stream hyper does not poll (a client's flow control gives it no window) has its
//! task dropped (`super::stream_exec`), and the h2 crate resets it.
//!
//! Not here: the protocol itself (hyper and the h2 crate, with the limits of the
//! listener's `h2` table, `super::listener`), the request's path to the upstream
//! (`super::forward`, unchanged).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::body::{BoxError, ProxyBody};
use super::client_conn::{ClientConn, ClientIo};
use super::headers;
use super::listener::HttpListener;
use super::service::ConnService;
use super::stream_exec::{StreamTimer, Supervision, PENDING};
use crate::drain::Shutdown;
use crate::endpoint::PeerAddr;
use crate::listener_stats::ListenerMetrics;
use crate::registry::{ConnProtocol, ConnState, NewConn, SockAddr};
use crate::side::Side;

/// The client connection preface (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say.
pub(super) enum Sniffed {
    /// The HTTP/2 preface: serve it as HTTP/2.
    H2,
    /// Anything else, an end of stream or a timeout: the HTTP/1 path (with its own
    /// timers) takes it from here.
    Http1,
    /// Closed meanwhile (an operator, the grace's end).
    Closed,
}

/// Tells an HTTP/2 connection from an HTTP/1 one by a peek at its socket, when that
/// decides (nearly always: its first bytes are there, and are not the preface's, or are
/// all of it): nothing is read, and hyper reads the socket as if nobody had looked.
/// `None`: [`sniff`] must read (a partial preface, nothing there yet, bytes put back
/// before).
pub(super) fn peek(io: &ClientIo) -> Option<Sniffed> {
    if io.has_prefix() {
        return None;
    }
    let mut buf = [0u8; PREFACE.len()];
    match io.get_ref().get_ref().raw().try_peek(&mut buf) {
        // The end: HTTP/1 reads it and closes.
        Ok(0) => Some(Sniffed::Http1),
        Ok(n) if buf[..n] != PREFACE[..n] => Some(Sniffed::Http1),
        Ok(n) if n == PREFACE.len() => Some(Sniffed::H2),
        // A partial preface, nothing yet, or an error (reading reports it).
        Ok(_) | Err(_) => None,
    }
}

/// Reads the connection's first bytes until they are the HTTP/2 preface or cannot be,
/// then puts them back in front of `io` (when [`peek`] could not tell). A partial
/// preface waits, until `until` at most (the listener's `header_timeout`); nothing is
/// read past the preface's length.
pub(super) async fn sniff(io: &mut ClientIo, until: Instant, close: &CancellationToken) -> Sniffed {
    let mut buf = [0u8; PREFACE.len()];
    let mut n = 0;
    // Bounded: each turn reads at least one byte, or ends.
    let sniffed = loop {
        let read = tokio::select! {
            r = io.read(&mut buf[n..]) => r,
            _ = close.cancelled() => break Sniffed::Closed,
            _ = tokio::time::sleep_until(until) => break Sniffed::Http1,
        };
        match read {
            // The end, or an error: HTTP/1 reads it again and reports it.
            Ok(0) | Err(_) => break Sniffed::Http1,
            Ok(got) => n += got,
        }
        if buf[..n] != PREFACE[..n] {
            break Sniffed::Http1;
        }
        if n == PREFACE.len() {
            break Sniffed::H2;
        }
    };
    io.put_back(Bytes::copy_from_slice(&buf[..n]));
    sniffed
}

/// An HTTP/2 client connection as `super::driver` hands it over: already registered,
/// its socket to be served by [`serve`].
pub(super) struct H2Conn {
    /// The listener's current settings (a reload replaces them).
    pub(super) slot: Arc<arc_swap::ArcSwap<HttpListener>>,
    /// The connection's state and registry entry.
    pub(super) client: Arc<ClientConn>,
    pub(super) shutdown: Shutdown,
    /// The connection's token (a child of the drain's `hard`): closes it now.
    pub(super) close: CancellationToken,
    pub(super) peer: PeerAddr,
    /// Our end of the socket.
    pub(super) local: SockAddr,
}

impl H2Conn {
    fn closed(&self, listener: &str) {
        if self.shutdown.hard.is_cancelled() {
            tracing::debug!(listener, peer = %self.peer, "closing HTTP/2 client connection: shutdown grace ended");
        } else {
            tracing::info!(listener, peer = %self.peer, "closing HTTP/2 client connection: closed by the operator");
        }
    }
}

/// How long a connection sent `GOAWAY` for its `idle_timeout` may take to close with
/// no stream open: a client that keeps it open after the `GOAWAY` is not waited for
/// longer. A stream it opened before it saw the `GOAWAY` is served to its end.
const GOAWAY_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What the connection's task and its streams' tasks share.
struct Shared {
    /// The connection's state (its bytes, its entry, `idle` or `streaming`).
    conn: Arc<ClientConn>,
    /// Streams open now.
    open: AtomicUsize,
    /// When the last stream closed (milliseconds since the connection's start).
    idle_since: AtomicU64,
    /// Told when a stream closes (the idle timer may start).
    changed: tokio::sync::Notify,
}

/// A stream counted open while it lives (its service future, then its response body),
/// on its connection and on its listener (`h2.max_streams_total`).
struct StreamGuard(Arc<Shared>, Arc<ListenerMetrics>);

impl StreamGuard {
    /// `None`: the listener has `max_streams_total` streams open already.
    fn open(shared: &Arc<Shared>, ctx: &HttpListener) -> Option<Self> {
        let total = &ctx.metrics.h2_streams;
        if total.fetch_add(1, Ordering::Relaxed) >= ctx.h2_max_streams_total {
            total.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if shared.open.fetch_add(1, Ordering::Relaxed) == 0 {
            shared.conn.conn().set_state(ConnState::Streaming);
        }
        Some(StreamGuard(shared.clone(), ctx.metrics.clone()))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.1.h2_streams.fetch_sub(1, Ordering::Relaxed);
        let s = &self.0;
        if s.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            s.idle_since
                .store(s.conn.conn().elapsed_ms(), Ordering::Relaxed);
            s.conn.conn().set_state(ConnState::Idle);
            s.changed.notify_one();
        }
    }
}

/// Serves an HTTP/2 connection until it ends (see the module's docs). `io` starts
/// with the preface (in the socket, put back by [`sniff`], or after a TLS handshake).
pub(super) async fn serve(d: H2Conn, io: ClientIo) {
    let ctx = d.slot.load_full();
    d.client.conn().set_generation(ctx.generation);
    d.client.enter_h2();
    let shared = Arc::new(Shared {
        conn: d.client.clone(),
        open: AtomicUsize::new(0),
        idle_since: AtomicU64::new(d.client.conn().elapsed_ms()),
        changed: tokio::sync::Notify::new(),
    });
    let service = StreamService {
        slot: d.slot.clone(),
        peer: d.peer,
        local: d.local.clone(),
        forwarded_for: headers::forwarded_for(d.peer.ip()),
        shared: shared.clone(),
        close: d.close.clone(),
    };
    let mut conn = Box::pin(ctx.h2.serve_connection(TokioIo::new(io), service));
    // Not held for the connection's life: each turn loads the listener's settings in
    // effect (a reload's idle_timeout applies, and the old config's routes and
    // upstreams are not kept alive by a long-lived connection).
    drop(ctx);
    // Set once a GOAWAY went out; when the drain sent it, the grace's end (`close`)
    // bounds the rest; when the idle timer did, this does.
    let mut shutting: Option<Option<Instant>> = None;
    // Bounded: each turn waits for hyper, a timer, the drain or a close.
    loop {
        let ctx = d.slot.load_full();
        let idle_at = match shared.open.load(Ordering::Relaxed) {
            0 if shutting.is_none() => {
                let since = shared.idle_since.load(Ordering::Relaxed);
                Some(
                    d.client.conn().started()
                        + std::time::Duration::from_millis(since)
                        + ctx.idle_timeout,
                )
            }
            _ => None,
        };
        let wake = idle_at.or(shutting.flatten());
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(listener = %ctx.name, peer = %d.peer, error = %e, "HTTP/2 client connection ended with an error");
                }
                return;
            }
            _ = d.shutdown.graceful.cancelled(), if shutting.is_none() || shutting.flatten().is_some() => {
                tracing::debug!(listener = %ctx.name, peer = %d.peer, "HTTP/2 client connection: draining (GOAWAY)");
                if shutting.is_none() {
                    conn.as_mut().graceful_shutdown();
                }
                shutting = Some(None);
            }
            _ = d.close.cancelled() => {
                d.closed(&ctx.name);
                return;
            }
            _ = shared.changed.notified() => {}
            _ = sleep_until_some(wake) => {
                if shutting.is_some() {
                    if shared.open.load(Ordering::Relaxed) == 0 {
                        tracing::debug!(listener = %ctx.name, peer = %d.peer, "closing HTTP/2 client connection: no end after its GOAWAY");
                        return;
                    }
                    // A stream opened before the client saw the GOAWAY: served to its
                    // end (its own timers bound it); hyper closes the connection then.
                    shutting = Some(None);
                    continue;
                }
                if shared.open.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(listener = %ctx.name, peer = %d.peer, "closing HTTP/2 client connection: idle_timeout (no stream open); GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    shutting = Some(Some(Instant::now() + GOAWAY_LINGER));
                }
            }
        }
    }
}

/// Sleeps until `at`; never resolves for `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// hyper's service of an HTTP/2 connection: one call per stream.
#[derive(Clone)]
struct StreamService {
    /// The listener's current settings: each stream runs under the config in effect
    /// when it opens (a reload applies to the next stream).
    slot: Arc<arc_swap::ArcSwap<HttpListener>>,
    peer: PeerAddr,
    local: SockAddr,
    forwarded_for: Option<http::HeaderValue>,
    shared: Arc<Shared>,
    /// The connection's token: a stream's own is its child.
    close: CancellationToken,
}

type StreamFuture = Pin<Box<dyn Future<Output = Result<Response<StreamBody>, BoxError>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for StreamService {
    type Response = Response<StreamBody>;
    type Error = BoxError;
    type Future = StreamFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let ctx = self.slot.load_full();
        let Some(guard) = StreamGuard::open(&self.shared, &ctx) else {
            tracing::debug!(listener = %ctx.name, "refusing HTTP/2 stream: the listener has h2.max_streams_total open");
            // hyper resets the stream with the h2 error's reason: REFUSED_STREAM, which
            // a client may retry (RFC 9113 §8.7).
            return Box::pin(async {
                Err(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)) as BoxError)
            });
        };
        let conn = self.shared.conn.conn();
        conn.set_generation(ctx.generation);
        conn.add_request();
        let close = self.close.child_token();
        let entry = ctx.registry.register_stream(
            NewConn {
                side: Side::Client,
                name: ctx.metrics.name.clone(),
                peer: conn.peer().clone(),
                local: self.local.clone(),
                protocol: ConnProtocol::H2,
                state: ConnState::Reading,
                close: close.clone(),
                server: None,
                // The connection's socket counts the bytes.
                totals: None,
                generation: ctx.generation,
            },
            conn,
        );
        let stream = ClientConn::stream(entry);
        // The stream's reset: its close (an operator, the connection's end) or its
        // timer (`Supervised`, which hyper's executor runs right after this call).
        let reset = close.child_token();
        let watch = Supervision {
            stream: stream.clone(),
            reset: reset.clone(),
            closed: Box::pin(reset.clone().cancelled_owned()),
            timer: StreamTimer::new(ctx.idle_timeout, ctx.header_timeout),
            fired: false,
        };
        PENDING.with(|p| *p.borrow_mut() = Some(watch));
        let close = reset;
        let service = ConnService {
            ctx,
            peer: self.peer,
            client: stream.clone(),
            forwarded_for: self.forwarded_for.clone(),
        };
        let head = service.call(req);
        Box::pin(async move {
            let mut head = Watched {
                inner: head,
                closed: Box::pin(close.clone().cancelled_owned()),
            };
            let resp = std::future::poll_fn(|cx| head.poll_watched(cx)).await?;
            let (mut parts, body) = resp.into_parts();
            // h2 refuses connection-specific fields; tidegate's own answers may carry
            // `Connection: close`, and forward has already removed an upstream's.
            headers::remove_hop_by_hop(&mut parts.headers, false);
            let body = StreamBody {
                inner: body,
                _stream: stream,
                closed: Box::pin(close.cancelled_owned()),
                _open: guard,
            };
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// Why a stream is reset.
fn reset_error(why: &'static str) -> BoxError {
    Box::from(why)
}

/// The service's future of one stream, failed (so hyper resets the stream with
/// `INTERNAL_ERROR`) once the stream is reset (`super::stream_exec` says why).
struct Watched {
    inner: Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Watched {
    fn poll_watched(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<ProxyBody>, BoxError>> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(reset_error("stream reset")));
        }
        match self.inner.as_mut().poll(cx) {
            Poll::Ready(Ok(resp)) => Poll::Ready(Ok(resp)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A stream's response body: tidegate's [`ProxyBody`], failed (so hyper resets the
/// stream) once the stream is reset (`super::stream_exec` says why). It keeps the
/// stream counted open, and its state (the [`ClientConn`]) alive, until hyper drops it.
pub(super) struct StreamBody {
    inner: ProxyBody,
    /// Kept alive with the body (the registry entry, the byte counters).
    _stream: Arc<ClientConn>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    _open: StreamGuard,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(reset_error("stream reset"))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
