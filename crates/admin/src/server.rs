//! The admin server: HTTP/1.1 with JSON on the admin listener, built so that it cannot
//! be exhausted (docs/design.md, "The admin API cannot be locked out": a master's admin
//! socket with 10 slots and no timeout was locked by clients that leaked connections).
//!
//! Invariants, and how they are kept:
//! - **At most `max_connections` clients are served at once.** Each holds a slot for
//!   its whole life (`slots::Slot`, taken before its task starts, freed on drop).
//! - **A slot is always freed in bounded time.** A client that sends no byte for
//!   `idle_timeout` is closed, and every request (head and body) must arrive within
//!   `idle_timeout` of its first byte, so neither a silent client nor a slow trickle
//!   holds a slot. Answers are built from snapshots ([`Control`] never blocks); a client
//!   that stops reading them stops sending too, and its idle timer closes it.
//! - **Leaked clients cannot keep the operator out.** When every slot is held, a new
//!   client takes the slot of the client idle the longest with no request in progress,
//!   which is closed (an idle HTTP connection is one a server may close at any time;
//!   `slots` keeps the count and the newest evictions for `GET /v1/admin-clients`).
//! - **A client turned away learns why.** Only when every slot holds a request in
//!   progress is a new client refused: a `503` naming how many clients hold slots and
//!   how long the oldest has been idle (and `Retry-After`). Its request head is read
//!   first (briefly, bounded) and the write side shut down before closing: closing a
//!   socket with unread input resets it, and the client would see a reset instead of
//!   the answer. At most [`MAX_REFUSALS`] such answers are in flight; beyond that a new
//!   client gets the same `503` written at once without waiting (whatever of its request
//!   has arrived is read first), so a flood costs a bounded amount of work and accepting
//!   never stops.
//!
//! Boundary: the server never touches the data plane; it asks [`Control`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tidegate_net::endpoint::Stream;
use tidegate_net::errno::describe_io_error;
use tidegate_net::listen::Listener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Control;

pub mod handler;
mod slots;

pub use handler::{handle, Answer};
use slots::{Activity, Expired, Slot, Slots, Watched};

/// Refusals (`503` answers to clients over the cap) in flight at once; beyond this a
/// new client over the cap gets the answer written at once, without waiting for its
/// request.
pub const MAX_REFUSALS: usize = 64;
/// How long a refused client's request head is waited for before the `503` is sent
/// anyway.
pub const REFUSAL_READ: Duration = Duration::from_millis(200);
/// The most of a refused client's request that is read (and thrown away).
const REFUSAL_READ_MAX: usize = 8 * 1024;
/// How long writing the `503` may take, and how long the socket then lingers (reading
/// and discarding) for the client to close its side.
const REFUSAL_WRITE: Duration = Duration::from_millis(200);
const REFUSAL_LINGER: Duration = Duration::from_millis(200);
/// Input read while lingering before giving up on a polite close.
const REFUSAL_LINGER_MAX: usize = 64 * 1024;
/// The largest request head (hyper's read buffer; it answers `431` beyond).
pub const MAX_HEAD: usize = 16 * 1024;

/// First pause after an accept error; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after repeated accept errors (EMFILE must not spin a core).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How the server limits its clients (`[admin]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Clients served at once.
    pub max_connections: usize,
    /// No byte from a client for this long closes it; a request (head and body) must
    /// arrive within this long of its first byte.
    pub idle_timeout: Duration,
}

impl From<&tidegate_config::Admin> for Limits {
    fn from(a: &tidegate_config::Admin) -> Self {
        Limits {
            max_connections: a.max_connections,
            idle_timeout: a.idle_timeout,
        }
    }
}

/// What every connection task shares.
struct Shared {
    control: Arc<dyn Control>,
    slots: Arc<Slots>,
    limits: Limits,
    /// On a TCP address: the listener's IP, and cross-site requests are refused
    /// ([`handler::cross_site_check`]). `None` on a Unix socket, which no browser reaches.
    tcp: Option<std::net::IpAddr>,
}

/// Serves the admin API on `listener` until `stop` is cancelled; then the listener is
/// closed (its Unix socket file removed) and every admin connection closed at once.
///
/// Not tied to the data plane's drain: the binary keeps it running while the proxy
/// drains, so operators can watch the drain, and cancels `stop` at the very end.
pub async fn serve(
    listener: Listener,
    control: Arc<dyn Control>,
    limits: Limits,
    stop: CancellationToken,
) {
    serve_with(
        Arc::new(listener),
        control,
        limits,
        stop,
        CancellationToken::new(),
    )
    .await;
}

/// [`serve`], and when `stop_accepting` is cancelled (the socket has been handed to a
/// new process in a binary upgrade) it stops accepting and drops its hold on the
/// listener at once, but keeps serving the clients it has (the one whose
/// `POST /v1/upgrade` is being answered among them) until they close or `stop` fires.
/// The listener is an `Arc` so the caller can reach the socket to hand it over; keep
/// only a `Weak` to it, or the socket stays open (and queues connections) after this
/// server has stopped accepting.
pub async fn serve_with(
    listener: Arc<Listener>,
    control: Arc<dyn Control>,
    limits: Limits,
    stop: CancellationToken,
    stop_accepting: CancellationToken,
) {
    let address = listener.local_addr().clone();
    let tcp = match &address {
        tidegate_net::listen::LocalAddr::Tcp(a) => Some(a.ip()),
        tidegate_net::listen::LocalAddr::Unix(_) => None,
    };
    let shared = Arc::new(Shared {
        control,
        slots: Slots::new(limits.max_connections, limits.idle_timeout),
        limits,
        tcp,
    });
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut tasks = JoinSet::new();
    let mut backoff = MIN_ACCEPT_BACKOFF;
    // Refusals are logged at warn once per episode of being full, then at debug: a
    // flood must not flood the log too.
    let mut full = false;
    // Evictions likewise: info once per episode, then debug.
    let mut evicting = false;
    loop {
        // Reap finished tasks at each accept, so the set holds the open connections
        // and at most those that ended since the last accept.
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = stop_accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = MIN_ACCEPT_BACKOFF;
                a
            }
            Err(e) => {
                tracing::warn!(listener = %"admin", %address, error = %describe_io_error(&e), pause_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        match shared.slots.acquire(peer.to_string()) {
            Ok(slots::Acquired { slot, evicted }) => {
                full = false;
                if let Some(e) = evicted {
                    let idle_ms = e.idle.as_millis() as u64;
                    // The first eviction of an episode at info, then debug: a leak of
                    // hundreds of clients must not flood the log.
                    if evicting {
                        tracing::debug!(evicted = e.id, evicted_peer = %e.peer, idle_ms, %peer, "admin API full: closed the longest-idle client for a new one");
                    } else {
                        tracing::info!(evicted = e.id, evicted_peer = %e.peer, idle_ms, %peer, "admin API full: closing the longest-idle clients to serve new ones");
                        evicting = true;
                    }
                } else {
                    evicting = false;
                }
                tracing::debug!(client = slot.id(), %peer, "admin client connected");
                tasks.spawn(serve_client(stream, slot, shared.clone(), stop.clone()));
            }
            Err(busy) => match refusals.clone().try_acquire_owned() {
                Ok(permit) => {
                    evicting = false;
                    let oldest_idle_ms = (busy.oldest_idle_s * 1000.0) as u64;
                    if full {
                        tracing::debug!(%peer, clients = busy.clients, oldest_idle_ms, "admin API full: refusing a client with 503");
                    } else {
                        tracing::warn!(
                            %peer,
                            clients = busy.clients,
                            oldest_idle_ms,
                            "admin API full: refusing new clients with 503 until a slot frees up"
                        );
                        full = true;
                    }
                    let answer = Answer::busy(&busy);
                    let bytes = refusal_bytes(&answer, shared.slots.retry_after());
                    tasks.spawn(async move {
                        refuse(stream, &bytes).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::debug!(%peer, "admin API full and {MAX_REFUSALS} refusals in flight: answering 503 without waiting for the request");
                    let answer = Answer::busy(&busy);
                    refuse_now(stream, &refusal_bytes(&answer, shared.slots.retry_after()));
                }
            },
        }
    }
    drop(listener);
    tracing::debug!(listener = %"admin", %address, "admin listener closed");
    if !stop.is_cancelled() {
        // Handed over: the clients we have finish (bounded by their timers) unless the
        // final stop comes first.
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = async { while tasks.join_next().await.is_some() {} } => {}
        }
    }
    // Every task ends at once on `stop`; refusals are aborted.
    tasks.shutdown().await;
}

/// Serves one client holding `slot` until it closes, a timer expires or `stop` fires.
async fn serve_client(stream: Stream, slot: Slot, shared: Arc<Shared>, stop: CancellationToken) {
    let activity = slot.activity().clone();
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let service = {
        let shared = shared.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let activity = activity.clone();
            async move { Ok::<_, Infallible>(respond(req, &shared, &activity).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service);
    let timeout = shared.limits.idle_timeout;
    let evicted = slot.evicted().clone();
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(client = slot.id(), error = %e, "admin client connection ended with an error");
            }
        }
        why = expire(&activity, timeout) => {
            let why = match why {
                Expired::Idle => "no byte from it within idle_timeout",
                Expired::Request => "its request did not arrive within idle_timeout",
            };
            tracing::debug!(client = slot.id(), timeout_ms = timeout.as_millis() as u64, "closing admin client: {why}");
        }
        _ = evicted.cancelled() => {
            tracing::debug!(client = slot.id(), "closing admin client: every slot was held and it was idle the longest, so a new client took its slot");
        }
        _ = stop.cancelled() => {}
    }
    tracing::debug!(client = slot.id(), "admin client closed");
    drop(slot);
}

/// Resolves when one of the client's timers has expired.
async fn expire(activity: &Activity, timeout: Duration) -> Expired {
    // Bounded: each round sleeps until a deadline that has moved on, or returns.
    loop {
        let (at, why) = activity.deadline(timeout);
        if Instant::now() >= at {
            return why;
        }
        tokio::time::sleep_until(at).await;
    }
}

async fn respond(
    req: Request<Incoming>,
    shared: &Shared,
    activity: &Activity,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if let Some(own) = shared.tcp {
        // A listener on 0.0.0.0 or [::] has no one IP of its own to allow.
        let own = (!own.is_unspecified()).then_some(own);
        if let Some(refused) = handler::cross_site_check(parts.method.as_str(), &parts.headers, own)
        {
            tracing::debug!(method = %parts.method, path = parts.uri.path(), status = refused.status, "admin API: refused a cross-site request");
            // The body is not read: hyper closes the connection rather than reuse it.
            activity.request_read();
            return to_response(refused);
        }
    }
    let body = match Limited::new(body, handler::MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let answer = if e.is::<LengthLimitError>() {
                Answer::error(
                    413,
                    format!("request body over {} bytes", handler::MAX_BODY),
                    None,
                )
            } else {
                Answer::error(400, format!("cannot read the request body: {e}"), None)
            };
            return to_response(answer);
        }
    };
    activity.answering();
    let answer = handle(
        shared.control.as_ref(),
        &|| shared.slots.views(),
        parts.method.as_str(),
        parts.uri.path(),
        &body,
    )
    .await;
    activity.answered();
    to_response(answer)
}

fn to_response(answer: Answer) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(answer.status)
        .header(http::header::CONTENT_TYPE, answer.content_type);
    if let Some(allow) = answer.allow {
        builder = builder.header(http::header::ALLOW, allow);
    }
    match builder.body(Full::new(Bytes::from(answer.body))) {
        Ok(r) => r,
        // Only an invalid status or header value fails; none is built from input.
        Err(e) => {
            tracing::error!(error = %e, "cannot build an admin answer (a bug)");
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

/// The whole `503` response, head and body, as bytes (written by hand: the refused
/// client never reaches hyper).
fn refusal_bytes(answer: &Answer, retry_after: Duration) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\ncontent-length: {}\r\nretry-after: {}\r\nconnection: close\r\n\r\n",
        answer.content_type,
        answer.body.len(),
        retry_after.as_secs(),
    )
    .into_bytes();
    out.extend_from_slice(&answer.body);
    out
}

/// Answers a client over the cap with `response`, then closes it politely: read its
/// request head (at most [`REFUSAL_READ`], bounded size) so that closing does not reset
/// the connection under the answer, write the answer, shut down the write side, and
/// read until the client closes (briefly, bounded).
async fn refuse(mut stream: Stream, response: &[u8]) {
    let mut buf = vec![0u8; REFUSAL_READ_MAX];
    let mut got = 0;
    let deadline = Instant::now() + REFUSAL_READ;
    // Bounded by the deadline and the buffer.
    while got < buf.len() {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                got += n;
                if head_complete(&buf[..got]) {
                    break;
                }
            }
        }
    }
    let written = tokio::time::timeout(REFUSAL_WRITE, async {
        stream.write_all(response).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut drained = 0;
        while drained < REFUSAL_LINGER_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Answers a client over the cap with `response` without waiting: what of its request
/// has arrived is read (so the close is less likely to reset the answer away), the
/// answer written as far as the socket takes it at once (a fresh socket's buffer takes
/// it whole), and the socket closed.
fn refuse_now(stream: Stream, response: &[u8]) {
    let mut buf = [0u8; 4096];
    // Bounded: at most REFUSAL_READ_MAX bytes, and only what is already there.
    let mut drained = 0;
    let mut drain = |stream: &Stream| {
        while drained < REFUSAL_READ_MAX {
            let n = match stream {
                Stream::Tcp(s) => s.try_read(&mut buf),
                Stream::Unix(s) => s.try_read(&mut buf),
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    drain(&stream);
    let _ = match &stream {
        Stream::Tcp(s) => s.try_write(response),
        Stream::Unix(s) => s.try_write(response),
    };
    drain(&stream);
    drop(stream);
}

/// Whether `bytes` hold a whole request head (an empty line after the headers).
fn head_complete(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
}
