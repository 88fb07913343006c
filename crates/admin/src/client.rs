//! A minimal admin API client (HTTP/1.1 over a Unix socket or TCP), for `tidegate ctl`
//! and for tests: one connection per request, the whole exchange under one timeout.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tidegate_config::ListenAddr;
use tidegate_net::endpoint::Stream;
use tidegate_net::errno::describe_io_error;

use crate::api::ErrorBody;

/// How long a `tidegate ctl` request may take, connect to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer read (a `GET /v1/connections` of a busy proxy is the largest).
pub const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// Where the admin API listens, from the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    /// A Unix socket file.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

// === impl AdminAddr ===

impl AdminAddr {
    /// Parses `--admin ADDR`: `unix:PATH` (listen options after the path are allowed
    /// and ignored), `IP:PORT`, or a plain path to the socket (it must contain a `/`:
    /// `./admin.sock`). Relative paths are relative to `base`.
    pub fn parse(s: &str, base: &Path) -> Result<AdminAddr, String> {
        if s.starts_with("unix:") {
            return match tidegate_config::parse::listen_addr(s, base) {
                Ok(a) => AdminAddr::try_from(&a),
                Err(e) => Err(e.0),
            };
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(AdminAddr::Tcp(a));
        }
        if s.contains('/') {
            return Ok(AdminAddr::Unix(base.join(s)));
        }
        Err(format!(
            "{s:?}: expected unix:PATH, a socket path (with a /) or IP:PORT"
        ))
    }
}

/// Where a client finds a listen address; a socket passed in (`systemd:NAME`, `fd:N`)
/// has its address outside the config (in the socket unit), so the error says to give it
/// with `--admin`.
impl TryFrom<&ListenAddr> for AdminAddr {
    type Error = String;

    fn try_from(a: &ListenAddr) -> Result<Self, String> {
        match a {
            ListenAddr::Tcp(a) => Ok(AdminAddr::Tcp(*a)),
            ListenAddr::Unix(u) => Ok(AdminAddr::Unix(u.path.clone())),
            passed @ (ListenAddr::Systemd(_) | ListenAddr::Fd(_)) => Err(format!(
                "the admin API listens on {passed}, a socket passed in by whatever started \
                 tidegate (the socket unit says its address); give that address with \
                 --admin, e.g. --admin unix:/run/tidegate/admin.sock"
            )),
        }
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            AdminAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// `the admin socket /run/x.sock` or `the admin API at 127.0.0.1:9000`.
struct Named<'a>(&'a AdminAddr);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            AdminAddr::Unix(p) => write!(f, "the admin socket {}", p.display()),
            AdminAddr::Tcp(a) => write!(f, "the admin API at {a}"),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting failed: nothing listens there, no permission, …
    #[error("cannot reach {}: {}", Named(.addr), describe_io_error(.error))]
    Connect {
        /// Where.
        addr: AdminAddr,
        /// The OS error.
        error: io::Error,
    },
    /// No complete answer within the timeout.
    #[error("{} did not answer within {}ms", Named(.addr), .after.as_millis())]
    Timeout {
        /// Where.
        addr: AdminAddr,
        /// The timeout.
        after: Duration,
    },
    /// The connection broke off, or the answer was not HTTP.
    #[error("{} broke off the exchange: {message}", Named(.addr))]
    Exchange {
        /// Where.
        addr: AdminAddr,
        /// What happened.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from {}: {message}", Named(.addr))]
    Decode {
        /// Where.
        addr: AdminAddr,
        /// What did not fit.
        message: String,
    },
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, empty when absent.
    pub content_type: String,
    /// The whole body.
    pub body: Bytes,
}

// === impl Reply ===

impl Reply {
    /// 2xx?
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The API's error, when the answer is one (`{"error": …}`).
    pub fn error(&self) -> Option<ErrorBody> {
        if self.is_success() {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }
}

/// A client of one admin address.
#[derive(Debug, Clone)]
pub struct Client {
    addr: AdminAddr,
    timeout: Duration,
}

// === impl Client ===

impl Client {
    /// A client of `addr`; every request (connect to last byte) within `timeout`.
    pub fn new(addr: AdminAddr, timeout: Duration) -> Client {
        Client { addr, timeout }
    }

    /// The address it talks to.
    pub fn addr(&self) -> &AdminAddr {
        &self.addr
    }

    /// Sends one request (`body` as JSON) and reads the whole answer, whatever its
    /// status.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr.clone(),
                after: self.timeout,
            }),
        }
    }

    /// `GET path`, decoded. A non-2xx answer is returned as `Ok(Err(reply))` so the
    /// caller can show the API's own error.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Result<T, Reply>, ClientError> {
        let reply = self.request("GET", path, None).await?;
        self.decode(reply)
    }

    /// Decodes a 2xx answer as `T`; any other answer is handed back as it is.
    pub fn decode<T: DeserializeOwned>(
        &self,
        reply: Reply,
    ) -> Result<Result<T, Reply>, ClientError> {
        if !reply.is_success() {
            return Ok(Err(reply));
        }
        serde_json::from_slice(&reply.body)
            .map(Ok)
            .map_err(|e| ClientError::Decode {
                addr: self.addr.clone(),
                message: e.to_string(),
            })
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let stream = match &self.addr {
            AdminAddr::Unix(p) => tokio::net::UnixStream::connect(p).await.map(Stream::Unix),
            AdminAddr::Tcp(a) => tokio::net::TcpStream::connect(a).await.map(Stream::Tcp),
        }
        .map_err(|error| ClientError::Connect {
            addr: self.addr.clone(),
            error,
        })?;
        let broke = |message: String| ClientError::Exchange {
            addr: self.addr.clone(),
            message,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| broke(e.to_string()))?;
        // Drives the connection; dropped (closing it) when this exchange ends.
        let driver = tokio::spawn(conn);
        let _abort = AbortOnDrop(driver.abort_handle());
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost")
            .header(
                http::header::USER_AGENT,
                concat!("tidegate-ctl/", env!("CARGO_PKG_VERSION")),
            );
        // Every state-changing request says JSON, with a body or not: an admin API on a
        // TCP address refuses any other (cross-site protection, `handler::cross_site_check`);
        // `Host: localhost` above passes its loopback check.
        if body.is_some() || !matches!(method, "GET" | "HEAD") {
            request = request.header(http::header::CONTENT_TYPE, crate::server::handler::JSON);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| broke(format!("cannot build the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| broke(e.to_string()))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| broke(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_parse_in_every_form() {
        let base = Path::new("/etc/tidegate");
        assert_eq!(
            AdminAddr::parse("unix:/run/tg/admin.sock:mode=600", base),
            Ok(AdminAddr::Unix("/run/tg/admin.sock".into()))
        );
        assert_eq!(
            AdminAddr::parse("unix:admin.sock", base),
            Ok(AdminAddr::Unix("/etc/tidegate/admin.sock".into()))
        );
        assert_eq!(
            AdminAddr::parse("./admin.sock", Path::new("/srv")),
            Ok(AdminAddr::Unix("/srv/./admin.sock".into()))
        );
        assert_eq!(
            AdminAddr::parse("/run/x.sock", base),
            Ok(AdminAddr::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            AdminAddr::parse("127.0.0.1:9000", base),
            Ok(AdminAddr::Tcp("127.0.0.1:9000".parse().expect("addr")))
        );
        assert!(AdminAddr::parse("admin.sock", base).is_err());
    }

    #[tokio::test]
    async fn a_missing_socket_is_named_with_its_errno() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nothing.sock");
        let client = Client::new(AdminAddr::Unix(path.clone()), DEFAULT_TIMEOUT);
        let e = client
            .request("GET", "/v1/status", None)
            .await
            .expect_err("no socket");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach the admin socket {}: no such file or directory (ENOENT)",
                path.display()
            )
        );
    }
}
