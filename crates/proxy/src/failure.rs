//! An upstream failure, classified once.
//!
//! Whatever goes wrong between picking a server and receiving a response head is one
//! [`UpstreamFailure`]. Its variant alone decides who is at fault ([`Fault`]: the log
//! level), the status the client gets, the metric reason, what it means for the
//! server's health and whether the request may be sent again ([`Retry`]). The HTTP
//! forwarding loop (`http::forward`), the TCP tunnel's connect, the error responses,
//! the metrics and passive health all read these methods; none of them decides on its
//! own. The unit tests below are the whole table.
//!
//! How far the request body had gone ([`Progress`]) picks the variant: a body the client
//! failed to send is the client's failure (`400`, never counted against the server), and
//! a close before the whole request was sent is not held against the server (it may
//! have given up on a slow client).

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use http::StatusCode;

use crate::errno::describe_io_error;
use crate::upstream::body::Progress;
use crate::upstream::connect::ConnectError;
use crate::upstream::health::Outcome;
use crate::upstream::stats::ConnectFailure;
use crate::upstream::{Server, Unavailable, UpstreamError};

/// Who caused a failure. It decides the log level: a client's mistake is debug, an
/// upstream's is a warning (the operator has something to fix), tidegate's own is an
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something tidegate refuses.
    Client,
    /// An upstream server failed.
    Upstream,
    /// tidegate itself failed (a bug or a resource limit), not a peer.
    Internal,
}

/// Whether a failed attempt may be sent again, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: the request may have reached the server, or there is nothing to retry.
    Never,
    /// hyper handed the request back unwritten (the pooled connection closed first):
    /// safe on a new connection to the same server, whatever the method, unless the
    /// attempt already was on a new connection.
    IfUnsent,
    /// Nothing was sent: the request may move to another server, up to `retries`.
    AnotherServer,
    /// A reused connection closed before any response byte (the server's idle close
    /// raced the request): a bodiless idempotent request is sent once more on a new
    /// connection to the same server.
    OnReusedConnection,
}

/// What went wrong on the way to an upstream's response head.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// No server of the upstream can take a request (down, ejected, drained, in
    /// maintenance).
    NoServer(Unavailable),
    /// Getting a connection failed: connect refused, failed or timed out, the name did
    /// not resolve, an on-demand backend could not be started, hyper refused the socket.
    Connect(UpstreamError),
    /// hyper handed the request back unwritten: the connection closed before it was sent.
    Unsent(hyper::Error),
    /// The connection closed or was reset before any response byte; `sent`: after the
    /// whole request had been sent (only then is it the server's failure: before, it may
    /// have cut a slow upload with its own body timeout).
    ClosedBeforeHead {
        /// hyper's error.
        error: hyper::Error,
        /// The whole request had been sent.
        sent: bool,
    },
    /// HTTP/2: the server refused the stream before processing it (`REFUSED_STREAM`,
    /// or a GOAWAY whose last stream is below it): not the server's failure, and a
    /// bodiless idempotent request is sent again on a new connection.
    Refused(hyper::Error),
    /// The request body could not be forwarded to the server (writing to it failed).
    RequestBody(hyper::Error),
    /// Reading the request body from the client failed: the client went away mid-body,
    /// or its framing (chunked) was malformed. The client's failure.
    ClientBody(hyper::Error),
    /// Any other failure before the response head (an invalid head, for example).
    BeforeHead(hyper::Error),
    /// No response head within `response_timeout`.
    ResponseTimeout(Duration),
    /// The server answered 101 to a request that asked for no upgrade.
    UnaskedUpgrade,
    /// The server's 101 switched to a protocol the request did not offer.
    UnofferedUpgrade {
        /// The `Upgrade` the request carried (as forwarded).
        offered: String,
        /// The 101's `Upgrade` (empty when it had none).
        answered: String,
    },
    /// A checkout held no connection to send on (tidegate's own failure: a checkout
    /// always holds its connection until released).
    NoConnection,
    /// The response head's framing cannot be trusted (a Transfer-Encoding other than
    /// `chunked`, Content-Length values that disagree): what it says, for the message.
    UntrustedFraming(String),
}

impl UpstreamFailure {
    /// Classifies an error of sending a request: `unsent` when hyper handed the request
    /// back; `body`, how far the request body had gone.
    pub fn of_send(e: hyper::Error, unsent: bool, body: Progress) -> Self {
        if unsent {
            UpstreamFailure::Unsent(e)
        } else if body == Progress::ClientFailed {
            // Whatever hyper says next (it stops the exchange), the client's body
            // failing first is what happened.
            UpstreamFailure::ClientBody(e)
        } else if refused_stream(&e) {
            UpstreamFailure::Refused(e)
        } else if closed_before_response(&e) {
            UpstreamFailure::ClosedBeforeHead {
                error: e,
                sent: body == Progress::Sent,
            }
        } else if e.is_body_write_aborted() || e.is_user() {
            UpstreamFailure::RequestBody(e)
        } else {
            UpstreamFailure::BeforeHead(e)
        }
    }

    /// Who caused it.
    pub fn fault(&self) -> Fault {
        match self {
            // hyper's handshake on a socket tidegate connected does no I/O: its
            // failure is tidegate's, not the server's.
            UpstreamFailure::Connect(UpstreamError::Handshake { .. })
            | UpstreamFailure::Connect(UpstreamError::Saturated { .. })
            | UpstreamFailure::NoConnection => Fault::Internal,
            UpstreamFailure::ClientBody(_) => Fault::Client,
            _ => Fault::Upstream,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamFailure::NoServer(_) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamFailure::Connect(UpstreamError::Connect {
                error: ConnectError::Timeout { .. },
                ..
            }) => StatusCode::GATEWAY_TIMEOUT,
            UpstreamFailure::Connect(UpstreamError::OnDemand { .. })
            | UpstreamFailure::Connect(UpstreamError::Saturated { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamFailure::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            UpstreamFailure::ClientBody(_) => StatusCode::BAD_REQUEST,
            UpstreamFailure::Connect(_)
            | UpstreamFailure::Unsent(_)
            | UpstreamFailure::Refused(_)
            | UpstreamFailure::ClosedBeforeHead { .. }
            | UpstreamFailure::RequestBody(_)
            | UpstreamFailure::BeforeHead(_)
            | UpstreamFailure::UnaskedUpgrade
            | UpstreamFailure::UnofferedUpgrade { .. }
            | UpstreamFailure::NoConnection
            | UpstreamFailure::UntrustedFraming(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `reason` label of `tidegate_upstream_connect_failures_total`, for a failure
    /// to connect.
    pub fn metric_reason(&self) -> Option<ConnectFailure> {
        match self {
            UpstreamFailure::Connect(UpstreamError::Connect { error, .. }) => {
                Some(ConnectFailure::of(error))
            }
            UpstreamFailure::Connect(UpstreamError::Tls { .. }) => Some(ConnectFailure::Tls),
            _ => None,
        }
    }

    /// What it means for the server's passive health, when it counts at all: only
    /// what the server did (nginx's `proxy_next_upstream error timeout`), never what a
    /// client can cause.
    pub fn health(&self) -> Option<Outcome> {
        match self {
            UpstreamFailure::NoServer(_) | UpstreamFailure::NoConnection => None,
            // tidegate's own limit: the server was never asked.
            UpstreamFailure::Connect(UpstreamError::Handshake { .. })
            | UpstreamFailure::Connect(UpstreamError::Saturated { .. }) => None,
            UpstreamFailure::Connect(_) => Some(Outcome::ConnectFailed),
            // Unsent: closed on a new connection before a byte of the request was
            // written, nothing of the client's involved. A response timeout starts once
            // the whole request was sent.
            UpstreamFailure::Unsent(_)
            | UpstreamFailure::ClosedBeforeHead { sent: true, .. }
            | UpstreamFailure::BeforeHead(_)
            | UpstreamFailure::ResponseTimeout(_) => Some(Outcome::ServerError),
            // The request was not all sent: the server may have given up on a slow
            // client (its own body timeout), which any client can make happen.
            UpstreamFailure::ClosedBeforeHead { sent: false, .. }
            | UpstreamFailure::Refused(_)
            | UpstreamFailure::RequestBody(_)
            | UpstreamFailure::ClientBody(_) => None,
            // Its response head was already recorded as an answer.
            UpstreamFailure::UnaskedUpgrade | UpstreamFailure::UnofferedUpgrade { .. } => None,
            UpstreamFailure::UntrustedFraming(_) => None,
        }
    }

    /// Whether the request may be sent again, and where.
    pub fn retry(&self) -> Retry {
        match self {
            UpstreamFailure::Connect(_) => Retry::AnotherServer,
            UpstreamFailure::Unsent(_) | UpstreamFailure::NoConnection => Retry::IfUnsent,
            UpstreamFailure::ClosedBeforeHead { .. } | UpstreamFailure::Refused(_) => {
                Retry::OnReusedConnection
            }
            UpstreamFailure::NoServer(_)
            | UpstreamFailure::RequestBody(_)
            | UpstreamFailure::ClientBody(_)
            | UpstreamFailure::BeforeHead(_)
            | UpstreamFailure::ResponseTimeout(_)
            | UpstreamFailure::UnaskedUpgrade
            | UpstreamFailure::UnofferedUpgrade { .. }
            | UpstreamFailure::UntrustedFraming(_) => Retry::Never,
        }
    }

    /// Counts it on `server`: the connect-failure metric and passive health. Called
    /// once the request leaves `server` (a retry on the same server is not counted).
    pub fn record_on(&self, server: &Server) {
        if let Some(reason) = self.metric_reason() {
            server.stats.connect_failed(reason);
        }
        if let Some(outcome) = self.health() {
            server.record(outcome);
        }
    }

    /// The one line for the client's body and the log: names the upstream, the server
    /// (`server`, as configured) and what the error means.
    pub fn message(&self, upstream: &str, server: &str) -> String {
        match self {
            UpstreamFailure::NoServer(unavailable) => unavailable.to_string(),
            UpstreamFailure::Connect(e) => e.to_string(),
            UpstreamFailure::Refused(e) => format!(
                "upstream {upstream} ({server}): the server refused the HTTP/2 stream before \
                 processing it ({})",
                with_sources(e)
            ),
            UpstreamFailure::Unsent(e)
            | UpstreamFailure::ClosedBeforeHead { error: e, .. }
            | UpstreamFailure::RequestBody(e)
            | UpstreamFailure::BeforeHead(e) => {
                format!(
                    "upstream {upstream} ({server}): {}",
                    describe_hyper_error(e)
                )
            }
            UpstreamFailure::ClientBody(e) => format!(
                "request to upstream {upstream}: the client's request body could not be read: {}",
                describe_client_body_error(e)
            ),
            UpstreamFailure::ResponseTimeout(limit) => format!(
                "upstream {upstream} ({server}): no response head within {}ms (response_timeout)",
                limit.as_millis()
            ),
            UpstreamFailure::UnaskedUpgrade => {
                format!("upstream {upstream} ({server}): switched protocols without being asked")
            }
            UpstreamFailure::UnofferedUpgrade { offered, answered } => {
                let answered = match answered.as_str() {
                    "" => "without an Upgrade header".to_owned(),
                    a => format!("to {a:?}"),
                };
                format!(
                    "upstream {upstream} ({server}): switched protocols {answered}, which the client did not offer (offered: {offered:?})"
                )
            }
            UpstreamFailure::NoConnection => {
                format!("upstream {upstream} ({server}): internal error: no connection to send on")
            }
            UpstreamFailure::UntrustedFraming(what) => format!(
                "upstream {upstream} ({server}): response framing cannot be trusted: {what}; \
                 connection closed"
            ),
        }
    }
}

/// HTTP/2: the server reset the stream with `REFUSED_STREAM`, or sent a GOAWAY whose
/// last stream is below it (RFC 9113 §8.7: not processed). A GOAWAY's error can also
/// reach streams it let finish, should the connection then die, which is why only a
/// request that may be sent twice anyway is replayed on it.
fn refused_stream(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    // Bounded: error chains are short.
    for _ in 0..8 {
        let Some(err) = cur else { return false };
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        cur = err.source();
    }
    false
}

/// The upstream closed or reset the connection before any response byte.
fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    find_io_error(e).is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        )
    })
}

/// What a hyper client error means, in an operator's words.
pub fn describe_hyper_error(e: &hyper::Error) -> String {
    if let Some(io) = find_io_error(e) {
        return format!(
            "connection failed before the response head: {}",
            describe_io_error(io)
        );
    }
    if e.is_incomplete_message() {
        "closed the connection before sending a response head".to_owned()
    } else if e.is_parse() {
        format!("sent an invalid response head: {e}")
    } else if e.is_canceled() {
        "closed the connection before the request was sent".to_owned()
    } else if e.is_body_write_aborted() || e.is_user() {
        format!("the request body could not be forwarded: {e}")
    } else {
        with_sources(e)
    }
}

/// `e` and what caused it (`http2 error: stream error received: refused stream`):
/// hyper's own words alone say little for HTTP/2.
fn with_sources(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    // Bounded: error chains are short, but a cycle must not hang the proxy.
    for _ in 0..8 {
        let Some(err) = cur else { break };
        text.push_str(": ");
        text.push_str(&err.to_string());
        cur = err.source();
    }
    text
}

/// Why a client's request body failed, from hyper's error for the exchange (whose
/// source is the body's own error).
fn describe_client_body_error(e: &hyper::Error) -> String {
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = cur {
        if let Some(body) = err.downcast_ref::<hyper::Error>() {
            if body.is_parse() {
                return format!("malformed body framing ({body})");
            }
            if body.is_incomplete_message() {
                return "the client closed the connection before the end of the body".to_owned();
            }
            if let Some(io) = find_io_error(body) {
                // hyper reports a bad chunk size line or a body cut short as I/O
                // errors of these kinds, with its own words.
                return match io.kind() {
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                        format!("malformed body framing ({io})")
                    }
                    io::ErrorKind::UnexpectedEof => {
                        "the client closed the connection before the end of the body".to_owned()
                    }
                    _ => describe_io_error(io),
                };
            }
            return body.to_string();
        }
        cur = err.source();
    }
    e.to_string()
}

/// The first I/O error in `e`'s chain of sources.
fn find_io_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{Empty, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::upstream::on_demand::OnDemandError;

    /// A real hyper client error: a request over an in-memory socket whose other end
    /// does `server` (reads the head, then answers with `reply`, or closes).
    async fn hyper_error(reply: Option<&'static [u8]>) -> hyper::Error {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            if let Some(reply) = reply {
                let _ = server.write_all(reply).await;
            }
        });
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = http::Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        send.send_request(req)
            .await
            .expect_err("the exchange fails")
    }

    /// A real HTTP/2 client error: the server (h2 itself) resets the stream with
    /// `REFUSED_STREAM`.
    async fn h2_refused_error() -> hyper::Error {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(server).await else {
                return;
            };
            if let Some(Ok((_req, mut respond))) = conn.accept().await {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
            // Keeps the connection going until the client is done.
            while conn.accept().await.is_some() {}
        });
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(client),
        )
        .await
        .expect("handshake");
        tokio::spawn(conn);
        let req = http::Request::get("http://app/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req)
            .await
            .expect_err("the stream is refused")
    }

    /// A request whose body fails while it is being sent.
    async fn body_error() -> hyper::Error {
        let (client, mut server) = tokio::io::duplex(4096);
        let (_keep, hold) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = hold.await;
        });
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let frames = futures_util::stream::iter([Err::<Frame<Bytes>, std::io::Error>(
            std::io::Error::other("client went away"),
        )]);
        let req = http::Request::post("/")
            .body(StreamBody::new(frames))
            .unwrap();
        send.send_request(req).await.expect_err("the body fails")
    }

    fn connect(error: ConnectError) -> UpstreamFailure {
        UpstreamFailure::Connect(UpstreamError::Connect {
            upstream: "app".into(),
            server: "127.0.0.1:9".into(),
            error,
        })
    }

    fn refused() -> ConnectError {
        ConnectError::Failed(vec![(
            "127.0.0.1:9".into(),
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )])
    }

    /// One row of the table: (failure, fault, status, metric reason, health, retry).
    type Row = (
        UpstreamFailure,
        Fault,
        u16,
        Option<ConnectFailure>,
        Option<Outcome>,
        Retry,
    );

    /// Every variant, one row each.
    #[tokio::test]
    async fn every_failure_is_classified_once() {
        use Fault::{Client, Internal, Upstream};
        use Outcome::{ConnectFailed, ServerError};
        use Progress::{ClientFailed, Sending, Sent};
        use Retry::{AnotherServer, IfUnsent, Never, OnReusedConnection};
        let closed = hyper_error(None).await;
        assert!(closed.is_incomplete_message(), "{closed:?}");
        let garbage = hyper_error(Some(b"garbage\r\n\r\n")).await;
        assert!(garbage.is_parse(), "{garbage:?}");
        let body = body_error().await;
        assert!(
            matches!(
                UpstreamFailure::of_send(body_error().await, false, Sending),
                UpstreamFailure::RequestBody(_)
            ),
            "a failing request body is told apart"
        );
        let client_body = UpstreamFailure::of_send(body_error().await, false, ClientFailed);
        assert!(
            matches!(client_body, UpstreamFailure::ClientBody(_)),
            "a body the client failed is the client's: {client_body:?}"
        );
        let table: Vec<Row> = vec![
            (
                UpstreamFailure::NoServer(Unavailable {
                    upstream: "app".into(),
                    servers: vec![("127.0.0.1:9".into(), "down".into())],
                }),
                Upstream,
                503,
                None,
                None,
                Never,
            ),
            (
                connect(refused()),
                Upstream,
                502,
                Some(ConnectFailure::Refused),
                Some(ConnectFailed),
                AnotherServer,
            ),
            (
                connect(ConnectError::Timeout {
                    limit: Duration::from_secs(1),
                    tried: vec!["127.0.0.1:9".into()],
                }),
                Upstream,
                504,
                Some(ConnectFailure::Timeout),
                Some(ConnectFailed),
                AnotherServer,
            ),
            (
                connect(ConnectError::Resolve {
                    host: "nowhere.invalid".into(),
                    error: std::io::Error::other("no such host"),
                }),
                Upstream,
                502,
                Some(ConnectFailure::Resolve),
                Some(ConnectFailed),
                AnotherServer,
            ),
            (
                UpstreamFailure::Connect(UpstreamError::OnDemand {
                    upstream: "app".into(),
                    server: "127.0.0.1:9".into(),
                    error: OnDemandError::ShuttingDown,
                }),
                Upstream,
                503,
                None,
                Some(ConnectFailed),
                AnotherServer,
            ),
            (
                UpstreamFailure::Connect(UpstreamError::Handshake {
                    upstream: "app".into(),
                    server: "127.0.0.1:9".into(),
                    error: hyper_error(None).await,
                }),
                Internal,
                502,
                None,
                None,
                AnotherServer,
            ),
            (
                UpstreamFailure::Connect(UpstreamError::Saturated {
                    upstream: "app".into(),
                    server: "127.0.0.1:9".into(),
                    saturated: crate::upstream::pool::Saturated {
                        connections: 2,
                        max_connections: 2,
                        waited: Duration::from_millis(40),
                    },
                }),
                Internal,
                503,
                None,
                None,
                AnotherServer,
            ),
            (
                UpstreamFailure::of_send(hyper_error(None).await, true, Sending),
                Upstream,
                502,
                None,
                Some(ServerError),
                IfUnsent,
            ),
            (
                UpstreamFailure::of_send(closed, false, Sent),
                Upstream,
                502,
                None,
                Some(ServerError),
                OnReusedConnection,
            ),
            // Closed while the client was still sending: maybe the server's own body
            // timeout on a slow client; not held against it.
            (
                UpstreamFailure::of_send(hyper_error(None).await, false, Sending),
                Upstream,
                502,
                None,
                None,
                OnReusedConnection,
            ),
            (
                UpstreamFailure::of_send(body, false, Sending),
                Upstream,
                502,
                None,
                None,
                Never,
            ),
            (client_body, Client, 400, None, None, Never),
            // Not processed, so not the server's failure; replayed like a close
            // before the head when the request may be sent twice.
            (
                UpstreamFailure::of_send(h2_refused_error().await, false, Sent),
                Upstream,
                502,
                None,
                None,
                OnReusedConnection,
            ),
            (
                UpstreamFailure::of_send(garbage, false, Sending),
                Upstream,
                502,
                None,
                Some(ServerError),
                Never,
            ),
            (
                UpstreamFailure::ResponseTimeout(Duration::from_secs(3)),
                Upstream,
                504,
                None,
                Some(ServerError),
                Never,
            ),
            (
                UpstreamFailure::UnaskedUpgrade,
                Upstream,
                502,
                None,
                None,
                Never,
            ),
            (
                UpstreamFailure::UnofferedUpgrade {
                    offered: "websocket".into(),
                    answered: "foo".into(),
                },
                Upstream,
                502,
                None,
                None,
                Never,
            ),
            (
                UpstreamFailure::NoConnection,
                Internal,
                502,
                None,
                None,
                IfUnsent,
            ),
            (
                UpstreamFailure::UntrustedFraming("Transfer-Encoding \"gzip\"".into()),
                Upstream,
                502,
                None,
                None,
                Never,
            ),
        ];
        for (failure, fault, status, reason, health, retry) in table {
            let what = format!("{failure:?}");
            assert_eq!(failure.fault(), fault, "fault of {what}");
            assert_eq!(failure.status().as_u16(), status, "status of {what}");
            assert_eq!(failure.metric_reason(), reason, "metric reason of {what}");
            assert_eq!(failure.health(), health, "health of {what}");
            assert_eq!(failure.retry(), retry, "retry of {what}");
            let msg = failure.message("app", "127.0.0.1:9");
            assert!(
                msg.contains("app"),
                "{what}: the message names the upstream: {msg}"
            );
        }
    }

    #[tokio::test]
    async fn send_errors_are_told_in_an_operators_words() {
        let closed = UpstreamFailure::of_send(hyper_error(None).await, false, Progress::Sent);
        assert_eq!(
            closed.message("app", "127.0.0.1:9"),
            "upstream app (127.0.0.1:9): closed the connection before sending a response head"
        );
        let timeout = UpstreamFailure::ResponseTimeout(Duration::from_millis(1500));
        assert_eq!(
            timeout.message("app", "127.0.0.1:9"),
            "upstream app (127.0.0.1:9): no response head within 1500ms (response_timeout)"
        );
    }
}
