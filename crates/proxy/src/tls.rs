//! TLS termination on a listener with `tls = { … }`: the handshake (in the
//! connection's own task, never the accept loop, under `handshake_timeout`), the
//! choice of certificate by SNI, and [`ClientStream`], the client's byte stream
//! whichever it is (plain or decrypted) for the HTTP driver and the TCP tunnel.
//!
//! What it owns: the rustls `ServerConfig` of one listener under one config (a reload
//! builds a new [`Terminator`] with the certificates read again; a connection keeps
//! the session it made), the handshake failure counters' reasons, and the rule that a
//! TLS connection's session lives in this process (it is never handed to another one:
//! see [`ClientStream::into_plain`]).
//!
//! Boundaries: certificates are loaded and checked by the config crate
//! (`tidegate_config::tls`); here they are only served. HTTP/2 is not offered.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tidegate_config::{Certificate, TlsVersion};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{PeerAddr, Stream};
use crate::listener_stats::{HandshakeFailure, ListenerMetrics};

/// A listener's TLS side under one config: what every new handshake uses.
pub struct Terminator {
    /// `Err` only if rustls refused the settings (cannot happen with the ring provider
    /// and TLS 1.2/1.3): the runtime refuses to start (or reload) with it
    /// ([`Terminator::setup_error`]), so no connection ever meets it.
    acceptor: Result<tokio_rustls::TlsAcceptor, String>,
    handshake_timeout: Duration,
    listener: Arc<str>,
    metrics: Arc<ListenerMetrics>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Terminator {
    /// The TLS side of listener `name` with settings `cfg`, counting failures in
    /// `metrics`.
    pub fn new(name: &str, cfg: &tidegate_config::Tls, metrics: Arc<ListenerMetrics>) -> Self {
        let acceptor = server_config(cfg)
            .map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)))
            .map_err(|e| e.to_string());
        Terminator {
            acceptor,
            handshake_timeout: cfg.handshake_timeout,
            listener: Arc::from(name),
            metrics,
        }
    }

    /// Why rustls refused these settings, if it did: the start or reload is refused.
    pub fn setup_error(&self) -> Option<&str> {
        self.acceptor.as_ref().err().map(String::as_str)
    }

    /// Runs the handshake on `stream` within `handshake_timeout`: the decrypted stream,
    /// or `None` when it failed (logged at debug with the reason, and counted), timed
    /// out, or `stop` fired (the connection's close token: the end of the grace, an
    /// operator). The connection is already in the registry: the caller registers it
    /// before, so `ctl conns` shows a handshake in progress and can close it.
    pub async fn accept(
        &self,
        stream: Stream,
        peer: PeerAddr,
        stop: &CancellationToken,
    ) -> Option<ClientStream> {
        let Ok(acceptor) = &self.acceptor else {
            // Unreachable: a runtime with a setup error is never started.
            self.metrics
                .count_handshake_failure(HandshakeFailure::Other);
            return None;
        };
        let handshake = async {
            match acceptor.accept(stream).await {
                Ok(s) => Ok(ClientStream::Tls(Box::new(s))),
                Err(e) => Err(classify(&e)),
            }
        };
        let attempt = Attempt {
            listener: &self.listener,
            peer,
            what: "TLS handshake",
            limit: ("handshake_timeout", self.handshake_timeout),
            metrics: &self.metrics,
        };
        attempt.run(handshake, stop).await
    }
}

/// The first exchange of a TLS connection (our handshake, or reading a ClientHello for
/// passthrough), bounded by its own deadline and the connection's close token.
pub(crate) struct Attempt<'a> {
    /// The listener, for the log.
    pub(crate) listener: &'a str,
    /// The client, for the log.
    pub(crate) peer: PeerAddr,
    /// What is attempted, for the log (`TLS handshake`).
    pub(crate) what: &'static str,
    /// The deadline's key and value.
    pub(crate) limit: (&'static str, Duration),
    /// Where a failure is counted.
    pub(crate) metrics: &'a ListenerMetrics,
}

impl Attempt<'_> {
    /// Runs `attempt` within the deadline: its value, or `None` when it failed or timed
    /// out (logged at debug with the reason, and counted), or when `stop` fired (the
    /// end of the grace, an operator).
    pub(crate) async fn run<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, (HandshakeFailure, String)>>,
        stop: &CancellationToken,
    ) -> Option<T> {
        let (key, limit) = self.limit;
        let (reason, error) = tokio::select! {
            res = attempt => match res {
                Ok(v) => return Some(v),
                Err(failure) => failure,
            },
            _ = tokio::time::sleep(limit) => (
                HandshakeFailure::Timeout,
                format!("not done within {key} ({}ms)", limit.as_millis()),
            ),
            _ = stop.cancelled() => {
                tracing::debug!(listener = %self.listener, peer = %self.peer, "closing client connection during its {}: shutdown grace ended or closed by the operator", self.what);
                return None;
            }
        };
        self.metrics.count_handshake_failure(reason);
        tracing::debug!(listener = %self.listener, peer = %self.peer, reason = reason.as_str(), %error, "{} failed; closing client connection", self.what);
        None
    }
}

/// The rustls settings of one listener.
fn server_config(cfg: &tidegate_config::Tls) -> Result<rustls::ServerConfig, rustls::Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni {
            certificates: cfg.certificates.clone(),
        }));
    config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// The reason of a failed handshake, and its error for the log.
fn classify(e: &io::Error) -> (HandshakeFailure, String) {
    use rustls::{Error as E, PeerIncompatible as P};
    let text = crate::errno::describe_io_error(e);
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        let reason = match e.kind() {
            io::ErrorKind::UnexpectedEof => HandshakeFailure::Closed,
            _ => HandshakeFailure::Io,
        };
        let text = match reason {
            HandshakeFailure::Closed => {
                "the client closed the connection during the handshake".to_owned()
            }
            _ => text,
        };
        return (reason, text);
    };
    let reason = match tls {
        E::PeerIncompatible(
            P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::Tls13RequiredForQuic
            | P::SupportedVersionsExtensionRequired,
        ) => HandshakeFailure::ProtocolVersion,
        E::NoApplicationProtocol => HandshakeFailure::NoApplicationProtocol,
        E::PeerIncompatible(_) => HandshakeFailure::Incompatible,
        E::AlertReceived(_) => HandshakeFailure::AlertReceived,
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => HandshakeFailure::NotTls,
        _ => HandshakeFailure::Other,
    };
    (reason, tls.to_string())
}

/// Picks the certificate by the client's SNI name: the first whose names (SAN,
/// wildcards for one label) serve it; the first of all without SNI or for a name none
/// serves (the client then decides whether it trusts it).
#[derive(Debug)]
struct BySni {
    certificates: Vec<Certificate>,
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let chosen = hello
            // rustls gives the name lowercase already.
            .server_name()
            .and_then(|name| self.certificates.iter().find(|c| c.serves(name)))
            .or_else(|| self.certificates.first());
        chosen.map(|c| c.key.clone())
    }
}

/// A client's byte stream: the socket itself, or the plaintext of a TLS session over
/// it.
#[derive(Debug)]
pub enum ClientStream {
    /// No TLS.
    Plain(Stream),
    /// Terminated here (boxed: rustls's connection state is a few hundred bytes).
    Tls(Box<tokio_rustls::server::TlsStream<Stream>>),
}

impl ClientStream {
    /// The socket under it (for socket options, its pending error, the end watch).
    pub fn raw(&self) -> &Stream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }

    /// The application protocol ALPN chose (`None`: plain, or no ALPN).
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            ClientStream::Plain(_) => None,
            ClientStream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }

    /// Whether it is a TLS session.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The socket, to hand to another process: only a plain one can go (a TLS
    /// session's keys and sequence numbers live in this process's rustls state, so a
    /// TLS connection stays here and ends with the drain); a TLS stream comes back.
    pub fn into_plain(self) -> Result<Stream, ClientStream> {
        match self {
            ClientStream::Plain(s) => Ok(s),
            tls => Err(tls),
        }
    }

    /// The socket, giving up the TLS session (to close it with a reset).
    pub fn into_raw(self) -> Stream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.into_inner().0,
        }
    }

    /// The socket's pending error (`SO_ERROR`), without reading.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self.raw() {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    /// Resolves when a read would make progress: plaintext (or the peer's
    /// `close_notify`, or a TLS error) already decrypted and buffered by rustls, or
    /// else the socket readable. A parked TLS connection waits on this, never on the
    /// socket alone: rustls may hold a whole request read before the park.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.readable().await,
            ClientStream::Tls(s) => {
                let (raw, conn) = s.get_mut();
                // Decrypts what rustls holds already (nothing is read from the socket).
                match conn.process_new_packets() {
                    Ok(state)
                        if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() =>
                    {
                        raw.readable().await
                    }
                    // Bytes, an end or an error: the reader finds them.
                    _ => Ok(()),
                }
            }
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
