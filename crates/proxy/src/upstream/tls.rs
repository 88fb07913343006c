//! TLS toward upstream servers (`tls = true | { ca, server_name, insecure_skip_verify }`):
//! the rustls client settings of one upstream, the handshake on a connected stream, and
//! [`UpstreamIo`], an upstream connection's byte stream whichever it is (plain or
//! encrypted) for hyper and the health checks.
//!
//! What it owns: verification (always on unless `insecure_skip_verify`), the name the
//! certificate must be valid for, ALPN (`h2` for `protocol = "h2"`, `http/1.1`
//! otherwise) and the words a failed handshake is told in.
//!
//! Boundaries: the CA certificates were read by the config crate
//! (`tidegate_config::tls::load_ca`, `system_roots`); connecting the socket and the
//! `connect_timeout` around connect plus handshake are `Server`'s.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tidegate_config::{UpstreamAddr, UpstreamProtocol, UpstreamTls};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::endpoint::Stream;
use crate::errno::describe_io_error;

/// One upstream's TLS client side: what every handshake to its servers uses.
#[derive(Clone)]
pub struct Originate {
    connector: tokio_rustls::TlsConnector,
    /// `server_name` from the config; `None`: each server's host.
    server_name: Option<ServerName<'static>>,
    /// ALPN must pick `h2`.
    h2: bool,
}

impl std::fmt::Debug for Originate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originate")
            .field("server_name", &self.server_name)
            .field("h2", &self.h2)
            .finish_non_exhaustive()
    }
}

/// Why a TLS handshake with a server failed, in an operator's words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS handshake as {name:?} failed: {reason}")]
pub struct TlsFailure {
    /// The name the certificate was checked against.
    pub name: String,
    /// What went wrong.
    pub reason: String,
}

impl Originate {
    /// The TLS side of an upstream with settings `cfg` speaking `protocol`. `Err` only
    /// if rustls refuses the settings (it does not with the ring provider).
    pub fn new(cfg: &UpstreamTls, protocol: UpstreamProtocol) -> Result<Originate, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let mut config = if cfg.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            // The config crate kept only certificates that parse; a system bundle may
            // hold a few rustls cannot use, which are skipped as every client does.
            let (_added, _ignored) = roots.add_parsable_certificates(cfg.roots.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let h2 = protocol == UpstreamProtocol::H2;
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = match &cfg.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| format!("{n:?}: {e}"))?),
            None => None,
        };
        Ok(Originate {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            h2,
        })
    }

    /// The name a server's certificate must be valid for: `server_name`, else its host
    /// (an IP address is matched against IP SANs), `localhost` for a Unix socket.
    fn name_for(&self, addr: &UpstreamAddr) -> Result<ServerName<'static>, TlsFailure> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = match addr {
            UpstreamAddr::Ip(sa) => return Ok(ServerName::IpAddress(sa.ip().into())),
            UpstreamAddr::Host { host, .. } => host.clone(),
            UpstreamAddr::Unix(_) => "localhost".to_owned(),
        };
        ServerName::try_from(host.clone()).map_err(|e| TlsFailure {
            name: host,
            reason: format!(
                "not a name a certificate can be checked against ({e}); set server_name"
            ),
        })
    }

    /// Runs the handshake on `stream` (the caller bounds it with `connect_timeout`).
    pub async fn handshake(
        &self,
        stream: Stream,
        addr: &UpstreamAddr,
    ) -> Result<UpstreamIo, TlsFailure> {
        let name = self.name_for(addr)?;
        let shown = shown_name(&name);
        let tls = self.connector.connect(name, stream).await.map_err(|e| {
            let mut reason = describe_handshake_error(&e);
            let certificate = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|t| matches!(t, rustls::Error::InvalidCertificate(_)));
            if self.h2 && !certificate {
                // A server with no `h2` to offer may refuse the handshake outright.
                reason.push_str(" (protocol = \"h2\": the server must offer HTTP/2 by ALPN)");
            }
            TlsFailure {
                name: shown.clone(),
                reason,
            }
        })?;
        if self.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            let chose = match tls.get_ref().1.alpn_protocol() {
                Some(p) => format!("chose {:?}", String::from_utf8_lossy(p)),
                None => "chose no protocol".to_owned(),
            };
            return Err(TlsFailure {
                name: shown,
                reason: format!(
                    "the server does not speak HTTP/2 over TLS: offered \"h2\" by ALPN, it {chose} \
                     (protocol = \"h2\" needs a server that picks h2)"
                ),
            });
        }
        Ok(UpstreamIo::Tls(Box::new(tls)))
    }
}

fn shown_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// A failed handshake in plain words: the certificate's problem when verification
/// failed, else what the server or the socket did.
pub fn describe_handshake_error(e: &io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the handshake".to_owned()
            }
            _ => describe_io_error(e),
        };
    };
    describe_rustls_error(tls)
}

fn describe_rustls_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => {
            let what = match c {
                C::UnknownIssuer => "unknown issuer: the certificate is not signed by a trusted CA \
                                     (tls.ca names the CA file; tls = true trusts the system's CAs)"
                    .to_owned(),
                C::NotValidForName => "name mismatch: the certificate is not valid for this name \
                                       (set tls.server_name to a name it has)"
                    .to_owned(),
                C::NotValidForNameContext { presented, .. } => format!(
                    "name mismatch: the certificate is valid for {} (set tls.server_name to one of them)",
                    presented.join(", ")
                ),
                C::Expired | C::ExpiredContext { .. } => "the certificate has expired".to_owned(),
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "the certificate is not valid yet".to_owned()
                }
                C::Revoked => "the certificate is revoked".to_owned(),
                C::BadSignature => "bad signature: the certificate is not signed by the trusted CA \
                                    of that name (another CA under the same name?)"
                    .to_owned(),
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                    "the certificate is not for TLS servers (extended key usage)".to_owned()
                }
                other => format!("invalid certificate ({other:?})"),
            };
            format!("certificate verification failed: {what}")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the handshake (TLS alert {alert:?})")
        }
        rustls::Error::NoApplicationProtocol => {
            "the server accepts none of the protocols offered by ALPN".to_owned()
        }
        other => other.to_string(),
    }
}

/// `insecure_skip_verify`: any certificate is accepted; the handshake's signatures are
/// still checked (the connection is encrypted to whoever holds the key it showed).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An upstream connection's bytes: plain, or through TLS.
#[derive(Debug)]
pub enum UpstreamIo {
    /// No TLS.
    Plain(Stream),
    /// TLS, handshake done.
    Tls(Box<tokio_rustls::client::TlsStream<Stream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_failures_are_told_in_plain_words() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = io::Error::new(io::ErrorKind::InvalidData, unknown);
        assert!(
            describe_handshake_error(&e).contains("unknown issuer"),
            "{}",
            describe_handshake_error(&e)
        );
        let name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        let e = io::Error::new(io::ErrorKind::InvalidData, name);
        assert!(describe_handshake_error(&e).contains("name mismatch"));
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let e = io::Error::new(io::ErrorKind::InvalidData, expired);
        assert!(describe_handshake_error(&e).contains("has expired"));
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(describe_handshake_error(&eof).contains("closed the connection"));
    }
}
