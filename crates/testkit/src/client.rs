//! A raw HTTP/1.1 client: the test writes exact bytes and reads what comes back, including
//! how the connection ended (clean body end, close, reset).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::addr::{Addr, Stream};
use crate::wire::{self, BodyDecoder, BodyError, Framing, Wire};

/// The timeout [`get`] uses: a generous functional bound, not a performance claim.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most interim (1xx) responses [`RawConn::read_response`] skips before giving up.
const MAX_INTERIM: usize = 16;

/// A response's status line and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase as sent.
    pub reason: String,
    /// Header lines in arrival order.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::find(&self.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::find_all(&self.headers, name)
    }
}

/// A whole response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header lines in arrival order.
    pub headers: Vec<(String, String)>,
    /// The decoded body (de-chunked), as far as it arrived.
    pub body: Vec<u8>,
    /// Whether the body ended cleanly: the `0` chunk arrived, or all Content-Length bytes,
    /// or (for a body delimited by close) the connection closed without a reset.
    pub complete: bool,
    /// Whether the connection was reset (ECONNRESET) while the body was read.
    pub reset: bool,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::find(&self.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        wire::find_all(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (e.g. a [`crate::Reply::echo`] body).
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }
}

/// How a connection ended under [`RawConn::read_to_end`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// End of stream (FIN, or a Unix socket closed).
    Eof,
    /// Reset (ECONNRESET).
    Reset,
}

/// A client connection that sends exactly the bytes it is given.
///
/// After a timeout error the connection's position in the byte stream is unknown; use a
/// new one.
pub struct RawConn {
    wire: Wire,
    addr: Addr,
    /// The body of the response whose head [`RawConn::read_head`] returned.
    body: Option<BodyDecoder>,
}

/// Connects to `addr`.
pub async fn connect(addr: &Addr) -> anyhow::Result<RawConn> {
    let stream = addr.connect().await?;
    Ok(RawConn {
        wire: Wire::new(stream),
        addr: addr.clone(),
        body: None,
    })
}

/// Sends one `GET path` with `Host: host` and `Connection: close`, and reads the
/// response (within [`DEFAULT_TIMEOUT`]).
pub async fn get(addr: &Addr, path: &str, host: &str) -> anyhow::Result<Response> {
    let mut c = connect(addr).await?;
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    c.read_response(DEFAULT_TIMEOUT)
        .await
        .with_context(|| format!("GET {path} (Host: {host}) from {addr}"))
}

// === impl RawConn ===

impl RawConn {
    /// The address this connection went to.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The local TCP address (None over a Unix socket), e.g. to find this connection in
    /// tidegate's connection list.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.wire.stream.local_tcp_addr()
    }

    /// Writes all of `bytes` and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.wire
            .stream
            .write_all(bytes)
            .await
            .with_context(|| format!("send {} bytes to {}", bytes.len(), self.addr))?;
        self.wire
            .stream
            .flush()
            .await
            .with_context(|| format!("flush to {}", self.addr))
    }

    /// Reads one response: head, then body by its framing (Content-Length, chunked, or
    /// until close). Interim 1xx responses other than 101 are skipped. A close or reset
    /// in the body gives `complete: false`, not an error; a timeout, or an end before the
    /// head, is an error. A response to HEAD has no body: use [`RawConn::read_head`].
    pub async fn read_response(&mut self, within: Duration) -> anyhow::Result<Response> {
        let deadline = Instant::now() + within;
        let mut head = self.read_head_until(deadline, within).await?;
        // Bounded by MAX_INTERIM.
        for _ in 0..MAX_INTERIM {
            if !(100..200).contains(&head.status) || head.status == 101 {
                break;
            }
            head = self.read_head_until(deadline, within).await?;
        }
        if (100..200).contains(&head.status) && head.status != 101 {
            bail!("{}: more than {MAX_INTERIM} interim responses", self.addr);
        }
        // `read_head_until` always sets the decoder; this response consumes it.
        let mut dec = self
            .body
            .take()
            .unwrap_or_else(|| BodyDecoder::new(Framing::Empty));
        let mut body = Vec::new();
        let mut complete = true;
        let mut reset = false;
        // Bounded by the body's framing, the peer's lifetime and the deadline.
        loop {
            let next = tokio::time::timeout_at(deadline, dec.next(&mut self.wire, 64 * 1024));
            match next.await {
                Err(_) => bail!(
                    "{}: response {} body not complete within {within:?} (so far {})",
                    self.addr,
                    head.status,
                    preview(&body)
                ),
                Ok(Ok(Some(piece))) => body.extend_from_slice(&piece),
                Ok(Ok(None)) => break,
                Ok(Err(BodyError::Eof)) => {
                    complete = false;
                    break;
                }
                Ok(Err(BodyError::Io(e))) if e.kind() == io::ErrorKind::ConnectionReset => {
                    complete = false;
                    reset = true;
                    break;
                }
                Ok(Err(e)) => {
                    return Err(anyhow!("{e}")).with_context(|| {
                        format!(
                            "{}: reading the body of a {} response",
                            self.addr, head.status
                        )
                    })
                }
            }
        }
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
            complete,
            reset,
        })
    }

    /// Reads a response head only; the body can then be read with
    /// [`RawConn::read_body_some`] (decoded) or [`RawConn::read_some`] (raw bytes).
    pub async fn read_head(&mut self, within: Duration) -> anyhow::Result<ResponseHead> {
        self.read_head_until(Instant::now() + within, within).await
    }

    async fn read_head_until(
        &mut self,
        deadline: Instant,
        within: Duration,
    ) -> anyhow::Result<ResponseHead> {
        // Bounded: each turn reads more bytes, and the head is capped at 64 KiB.
        loop {
            if !self.wire.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut parsed = httparse::Response::new(&mut headers);
                match parsed.parse(&self.wire.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = ResponseHead {
                            version: format!("HTTP/1.{}", parsed.version.unwrap_or(1)),
                            status: parsed.code.unwrap_or(0),
                            reason: parsed.reason.unwrap_or("").to_string(),
                            headers: parsed
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_string(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                        };
                        let _ = self.wire.buf.split_to(len);
                        let framing =
                            response_framing(&head).map_err(|e| anyhow!("{}: {e}", self.addr))?;
                        self.body = Some(BodyDecoder::new(framing));
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) if self.wire.buf.len() > 64 * 1024 => {
                        bail!("{}: response head longer than 64 KiB", self.addr)
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => bail!(
                        "{}: unparseable response head ({e}): {}",
                        self.addr,
                        preview(&self.wire.buf)
                    ),
                }
            }
            let got = preview(&self.wire.buf);
            match tokio::time::timeout_at(deadline, self.wire.fill(16 * 1024)).await {
                Err(_) => bail!(
                    "{}: no response head within {within:?} (got {got})",
                    self.addr
                ),
                Ok(Ok(0)) => bail!(
                    "{}: connection closed before a response head (got {got})",
                    self.addr
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(e).with_context(|| {
                        format!("{}: reading a response head (got {got})", self.addr)
                    })
                }
            }
        }
    }

    /// The next decoded piece of the body whose head [`RawConn::read_head`] returned;
    /// `Ok(None)` once that body has ended cleanly. A close or reset before its end is an
    /// error, as is a timeout.
    pub async fn read_body_some(&mut self, within: Duration) -> anyhow::Result<Option<Vec<u8>>> {
        let addr = self.addr.clone();
        let Some(dec) = self.body.as_mut() else {
            bail!("{addr}: read_body_some without a response head read first");
        };
        match tokio::time::timeout(within, dec.next(&mut self.wire, 64 * 1024)).await {
            Err(_) => bail!("{addr}: no body bytes within {within:?}"),
            Ok(Ok(Some(piece))) => Ok(Some(piece.to_vec())),
            Ok(Ok(None)) => {
                self.body = None;
                Ok(None)
            }
            Ok(Err(e)) => bail!("{addr}: response body ended abnormally: {e}"),
        }
    }

    /// Whatever raw bytes arrive next (buffered ones first), framing included;
    /// `Ok(empty)` at end of stream. A reset or timeout is an error.
    pub async fn read_some(&mut self, within: Duration) -> anyhow::Result<Vec<u8>> {
        if self.wire.buf.is_empty() {
            match tokio::time::timeout(within, self.wire.fill(64 * 1024)).await {
                Err(_) => bail!("{}: nothing received within {within:?}", self.addr),
                Ok(Err(e)) => return Err(e).with_context(|| format!("{}: read", self.addr)),
                Ok(Ok(_)) => {}
            }
        }
        Ok(self.wire.buf.split().to_vec())
    }

    /// Raw bytes up to and including the first occurrence of `pattern`; what follows
    /// stays buffered. An end of stream, reset or timeout first is an error that shows
    /// what arrived.
    pub async fn read_until(
        &mut self,
        pattern: &[u8],
        within: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(!pattern.is_empty(), "read_until: empty pattern");
        let deadline = Instant::now() + within;
        // Bounded by the deadline and the peer's lifetime.
        loop {
            if let Some(pos) = self
                .wire
                .buf
                .windows(pattern.len())
                .position(|w| w == pattern)
            {
                return Ok(self.wire.buf.split_to(pos + pattern.len()).to_vec());
            }
            let got = preview(&self.wire.buf);
            let want = String::from_utf8_lossy(pattern);
            match tokio::time::timeout_at(deadline, self.wire.fill(64 * 1024)).await {
                Err(_) => bail!(
                    "{}: {want:?} not received within {within:?} (got {got})",
                    self.addr
                ),
                Ok(Ok(0)) => bail!("{}: closed before {want:?} arrived (got {got})", self.addr),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(e).with_context(|| {
                        format!("{}: reading until {want:?} (got {got})", self.addr)
                    })
                }
            }
        }
    }

    /// Every raw byte until the peer ends the connection, and how it ended. A timeout
    /// first is an error.
    pub async fn read_to_end(&mut self, within: Duration) -> anyhow::Result<(Vec<u8>, End)> {
        let deadline = Instant::now() + within;
        let mut out = self.wire.buf.split().to_vec();
        // Bounded by the deadline and the peer's lifetime.
        loop {
            match tokio::time::timeout_at(deadline, self.wire.fill(64 * 1024)).await {
                Err(_) => bail!(
                    "{}: still open after {within:?} ({} bytes: {})",
                    self.addr,
                    out.len(),
                    preview(&out)
                ),
                Ok(Ok(0)) => return Ok((out, End::Eof)),
                Ok(Ok(_)) => out.extend_from_slice(&self.wire.buf.split()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok((out, End::Reset))
                }
                Ok(Err(e)) => return Err(e).with_context(|| format!("{}: read", self.addr)),
            }
        }
    }

    /// Half-closes: sends FIN, keeps reading possible.
    pub async fn shutdown_write(&mut self) -> anyhow::Result<()> {
        self.wire
            .stream
            .shutdown()
            .await
            .with_context(|| format!("{}: shutdown(SHUT_WR)", self.addr))
    }

    /// Closes abortively: SO_LINGER 0, then close, so the peer gets RST. On a Unix socket
    /// (which has no reset) this is a plain close.
    pub fn reset(self) -> anyhow::Result<()> {
        self.wire
            .stream
            .set_reset_on_drop()
            .with_context(|| format!("{}: set SO_LINGER 0", self.addr))
    }

    /// The underlying stream, with any bytes already read but not returned.
    pub fn into_parts(self) -> (Stream, Vec<u8>) {
        (self.wire.stream, self.wire.buf.to_vec())
    }
}

fn response_framing(head: &ResponseHead) -> Result<Framing, String> {
    if head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Framing::Empty);
    }
    Ok(wire::framing_of(&head.headers)?.unwrap_or(Framing::UntilClose))
}

/// At most 300 bytes, quoted, for error messages.
fn preview(buf: &[u8]) -> String {
    let n = buf.len().min(300);
    let more = if buf.len() > n { "..." } else { "" };
    format!(
        "{} bytes {:?}{more}",
        buf.len(),
        String::from_utf8_lossy(&buf[..n])
    )
}
