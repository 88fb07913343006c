//! One HTTP/1.1 backend connection: parse a request head with httparse, ask the handler,
//! read the body as the reply requires, answer, and loop while keep-alive holds.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::reply::{ChunksEnd, Kind, Reply, SseThen};
use super::{ConnEnd, Mode, Request, Shared};
use crate::addr::Stream;
use crate::wire::{self, BodyDecoder, BodyError, Framing, Wire};

/// The largest request head accepted (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// The most headers one request may carry.
const MAX_HEADERS: usize = 128;
/// While waiting (delay, SSE hold) the backend reads ahead to notice a close; it stops
/// buffering pipelined bytes past this.
const MAX_READ_AHEAD: usize = 1024 * 1024;

/// A step that ends the connection says how.
type Flow<T> = Result<T, ConnEnd>;

pub(super) async fn serve(shared: &Arc<Shared>, id: u64, stream: Stream) -> ConnEnd {
    let mut conn = Conn {
        shared: shared.clone(),
        id,
        wire: Wire::new(stream),
    };
    let end = conn.run().await.err().unwrap_or(ConnEnd::ClosedByBackend);
    // The socket closes (or resets, if armed) here, before the end is recorded.
    drop(conn);
    end
}

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    wire: Wire,
}

/// What the connection knows about the request being answered.
struct Exchange {
    idx: usize,
    method: String,
    /// The client asked to close after this response (or spoke HTTP/1.0 without
    /// keep-alive).
    client_close: bool,
}

// === impl Conn ===

impl Conn {
    /// Serves requests until the connection ends; never returns `Ok`.
    async fn run(&mut self) -> Flow<()> {
        // Bounded by the connection: each turn consumes one request or ends it.
        loop {
            let (req, framing) = self.read_head().await?;
            let client_close = wants_close(&req);
            let expect_continue = req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
            let idx = self.shared.push_request(req.clone());
            let reply = self.choose(&req);
            let (wait, reply) = reply.flatten();
            let ex = Exchange {
                idx,
                method: req.method.clone(),
                client_close,
            };

            let mut body = BodyDecoder::new(framing);
            if expect_continue && !body.is_done() {
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            let slow_count = match reply.kind {
                Kind::SlowRead { bytes_per_sec } => {
                    Some(self.read_body_slowly(&mut body, &ex, bytes_per_sec).await?)
                }
                _ => {
                    self.read_body(&mut body, &ex).await?;
                    None
                }
            };
            if !wait.is_zero() {
                self.watch(wait).await?;
            }
            let keep_alive = self.respond(reply, &ex, slow_count).await?;
            if !keep_alive {
                let _ = self.wire.stream.shutdown().await;
                return Err(ConnEnd::ClosedByBackend);
            }
        }
    }

    /// Calls the test's handler; a panic in it answers 500 and is recorded.
    fn choose(&self, req: &Request) -> Reply {
        let Mode::Http(handler) = &self.shared.mode else {
            return Reply::text(500, "not an HTTP backend").close();
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler(req))) {
            Ok(reply) => reply,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_string());
                self.shared.error(format!(
                    "conn {}: handler panicked on {:?}: {msg}",
                    self.id,
                    req.request_line()
                ));
                Reply::text(500, format!("testkit handler panicked: {msg}\n")).close()
            }
        }
    }

    /// Reads and parses the next request head. Ends the connection on a clean close
    /// between requests, on idle (if configured), or on unparseable bytes (answered 400).
    async fn read_head(&mut self) -> Flow<(Request, Framing)> {
        // Bounded: each turn reads more bytes, and the head is capped at MAX_HEAD.
        loop {
            if !self.wire.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Request::new(&mut headers);
                match parsed.parse(&self.wire.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let req = Request {
                            method: parsed.method.unwrap_or_default().to_string(),
                            target: parsed.path.unwrap_or_default().to_string(),
                            version: format!("HTTP/1.{}", parsed.version.unwrap_or(1)),
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
                            body: Vec::new(),
                            body_len: 0,
                            body_complete: false,
                            raw_head: self.wire.buf[..len].to_vec(),
                            conn_id: self.id,
                        };
                        let _ = self.wire.buf.split_to(len);
                        let framing = self.framing(&req).await?;
                        let req = Request {
                            body_complete: framing == Framing::Empty,
                            ..req
                        };
                        return Ok((req, framing));
                    }
                    Ok(httparse::Status::Partial) if self.wire.buf.len() > MAX_HEAD => {
                        let why = format!("request head longer than {MAX_HEAD} bytes");
                        return Err(self.reject(why).await);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        let why = format!("{e}: {}", preview(&self.wire.buf));
                        return Err(self.reject(why).await);
                    }
                }
            }
            let idle = self
                .shared
                .opts
                .close_idle_after
                .filter(|_| self.wire.buf.is_empty());
            let read = self.wire.fill(8 * 1024);
            let n = match idle {
                Some(idle) => match tokio::time::timeout(idle, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(ConnEnd::ClosedByBackend),
                },
                None => read.await,
            };
            match n {
                Ok(0) => return Err(ConnEnd::ClosedByPeer),
                Ok(_) => {}
                Err(e) => return Err(end_of(&e)),
            }
        }
    }

    /// The request's body framing; a message a server must not guess at is rejected.
    async fn framing(&mut self, req: &Request) -> Flow<Framing> {
        let has_te = req.header("transfer-encoding").is_some();
        let has_cl = req.header("content-length").is_some();
        if has_te && has_cl {
            let why = format!(
                "both Transfer-Encoding and Content-Length in {:?}",
                req.request_line()
            );
            return Err(self.reject(why).await);
        }
        match wire::framing_of(&req.headers) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Ok(Framing::Empty),
            Err(why) => Err(self.reject(why).await),
        }
    }

    /// Records a parse error, answers 400 and closes.
    async fn reject(&mut self, why: String) -> ConnEnd {
        self.shared.parse_error(self.id, why.clone());
        let body = format!("{why}\n");
        let resp = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = self.wire.stream.write_all(resp.as_bytes()).await;
        let _ = self.wire.stream.shutdown().await;
        ConnEnd::ClosedByBackend
    }

    /// Reads the whole body into the recorded request.
    async fn read_body(&mut self, dec: &mut BodyDecoder, ex: &Exchange) -> Flow<()> {
        let mut body = Vec::new();
        // Bounded by the body's framing and the peer's lifetime.
        let result = loop {
            match dec.next(&mut self.wire, 64 * 1024).await {
                Ok(Some(piece)) => {
                    body.extend_from_slice(&piece);
                    let len = body.len() as u64;
                    self.shared.update_request(ex.idx, |r| r.body_len = len);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let complete = result.is_ok();
        self.shared.update_request(ex.idx, |r| {
            r.body_len = body.len() as u64;
            r.body = body;
            r.body_complete = complete;
        });
        result.map_err(|e| self.body_end(e))
    }

    /// Reads the body at about `rate` bytes per second, counting it; returns the count.
    async fn read_body_slowly(
        &mut self,
        dec: &mut BodyDecoder,
        ex: &Exchange,
        rate: u64,
    ) -> Flow<u64> {
        // ~50 steps a second, each no bigger than a socket read.
        let step = usize::try_from(rate / 50)
            .unwrap_or(usize::MAX)
            .clamp(1, 64 * 1024);
        let start = Instant::now();
        let mut total: u64 = 0;
        // Bounded by the body's framing and the peer's lifetime.
        loop {
            match dec.next(&mut self.wire, step).await {
                Ok(Some(piece)) => {
                    total += piece.len() as u64;
                    self.shared.update_request(ex.idx, |r| r.body_len = total);
                    let due = start + Duration::from_secs_f64(total as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                }
                Ok(None) => {
                    self.shared
                        .update_request(ex.idx, |r| r.body_complete = true);
                    return Ok(total);
                }
                Err(e) => return Err(self.body_end(e)),
            }
        }
    }

    fn body_end(&self, e: BodyError) -> ConnEnd {
        match e {
            BodyError::Eof => ConnEnd::ClosedByPeer,
            BodyError::Io(e) => end_of(&e),
            BodyError::Malformed(why) => {
                // The framing is lost: nothing more on this connection can be trusted.
                self.shared.parse_error(self.id, why);
                ConnEnd::ClosedByBackend
            }
        }
    }

    /// Waits `wait`, reading ahead so that a client close is noticed (and ends the
    /// connection) at once. Pipelined bytes are kept for the next request.
    async fn watch(&mut self, wait: Duration) -> Flow<()> {
        let deadline = Instant::now() + wait;
        // Bounded by the deadline.
        loop {
            if self.wire.buf.len() >= MAX_READ_AHEAD {
                tokio::time::sleep_until(deadline).await;
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                n = self.wire.fill(16 * 1024) => match n {
                    Ok(0) => return Err(ConnEnd::ClosedByPeer),
                    Ok(_) => {}
                    Err(e) => return Err(end_of(&e)),
                },
            }
        }
    }

    /// Holds the connection open and silent until the peer goes away.
    async fn hold(&mut self) -> ConnEnd {
        // Bounded by the peer's lifetime, or the backend's (Drop aborts this task).
        loop {
            self.wire.buf.clear();
            match self.wire.fill(16 * 1024).await {
                Ok(0) => return ConnEnd::ClosedByPeer,
                Ok(_) => {}
                Err(e) => return end_of(&e),
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Flow<()> {
        self.wire
            .stream
            .write_all(bytes)
            .await
            .map_err(|e| end_of(&e))?;
        self.wire.stream.flush().await.map_err(|e| end_of(&e))
    }

    /// Sends the reply; `Ok(true)` when the connection may serve another request.
    async fn respond(
        &mut self,
        reply: Reply,
        ex: &Exchange,
        slow_count: Option<u64>,
    ) -> Flow<bool> {
        let close = ex.client_close || reply.close;
        match reply.kind {
            Kind::Fixed { status, body } => {
                self.fixed(status, &reply.headers, &body, close, ex).await?;
            }
            Kind::Echo => {
                let req = self.shared.request(ex.idx);
                let body = req.map(|r| echo_json(&r)).unwrap_or_default();
                self.fixed(200, &reply.headers, body.as_bytes(), close, ex)
                    .await?;
            }
            Kind::SlowRead { .. } => {
                let body = format!("{}", slow_count.unwrap_or(0));
                self.fixed(200, &reply.headers, body.as_bytes(), close, ex)
                    .await?;
            }
            // `flatten` removed every delay.
            Kind::Delay(..) => {
                self.fixed(500, &[], b"testkit: nested delay\n", true, ex)
                    .await?;
                return Ok(false);
            }
            Kind::Sse { events, then } => {
                let mut headers = vec![
                    ("Content-Type".to_string(), "text/event-stream".to_string()),
                    ("Cache-Control".to_string(), "no-cache".to_string()),
                ];
                headers.extend(reply.headers);
                self.write(&chunked_head(&headers, close)).await?;
                for ev in events.iter().filter(|e| !e.is_empty()) {
                    self.write(&wire::chunk(ev.as_bytes())).await?;
                }
                match then {
                    SseThen::Hold => return Err(self.hold().await),
                    SseThen::End => self.write(b"0\r\n\r\n").await?,
                }
            }
            Kind::Chunks { chunks, end } => {
                self.write(&chunked_head(&reply.headers, close)).await?;
                for (delay, data) in &chunks {
                    if !delay.is_zero() {
                        self.watch(*delay).await?;
                    }
                    if !data.is_empty() {
                        self.write(&wire::chunk(data)).await?;
                    }
                }
                match end {
                    ChunksEnd::Finish => self.write(b"0\r\n\r\n").await?,
                    ChunksEnd::Close => return Err(ConnEnd::ClosedByBackend),
                    ChunksEnd::Reset => return Err(self.reset()),
                }
            }
            Kind::CloseBeforeResponse => return Err(ConnEnd::ClosedByBackend),
            Kind::ResetBeforeResponse => return Err(self.reset()),
        }
        Ok(!close)
    }

    /// Writes a response with a fixed body (none for HEAD, 1xx, 204, 304).
    async fn fixed(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
        close: bool,
        ex: &Exchange,
    ) -> Flow<()> {
        let bodiless_status = status < 200 || status == 204 || status == 304;
        let mut head = status_line(status);
        let framed_by_test = wire::find(headers, "content-length").is_some()
            || wire::find(headers, "transfer-encoding").is_some();
        if !bodiless_status && !framed_by_test {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        push_headers(&mut head, headers, close);
        let mut out = head.into_bytes();
        if !bodiless_status && ex.method != "HEAD" {
            out.extend_from_slice(body);
        }
        self.write(&out).await
    }

    /// Arms SO_LINGER 0 so that dropping the socket sends RST.
    fn reset(&self) -> ConnEnd {
        match self.wire.stream.set_reset_on_drop() {
            Ok(()) => ConnEnd::ResetByBackend,
            Err(e) => ConnEnd::Failed(format!("set SO_LINGER 0: {e}")),
        }
    }
}

/// Whether the connection closes after this exchange, from the client's side.
fn wants_close(req: &Request) -> bool {
    let conn = req.header_all("connection");
    if conn.iter().any(|v| wire::has_token(v, "close")) {
        return true;
    }
    req.version == "HTTP/1.0" && !conn.iter().any(|v| wire::has_token(v, "keep-alive"))
}

fn status_line(status: u16) -> String {
    let reason = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status");
    format!("HTTP/1.1 {status} {reason}\r\n")
}

fn push_headers(head: &mut String, headers: &[(String, String)], close: bool) {
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
}

fn chunked_head(headers: &[(String, String)], close: bool) -> Vec<u8> {
    let mut head = status_line(200);
    head.push_str("Transfer-Encoding: chunked\r\n");
    push_headers(&mut head, headers, close);
    head.into_bytes()
}

fn echo_json(req: &Request) -> String {
    let headers: Vec<[&str; 2]> = req
        .headers
        .iter()
        .map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    serde_json::json!({
        "method": req.method,
        "target": req.target,
        "version": req.version,
        "headers": headers,
        "body_len": req.body_len,
        "conn_id": req.conn_id,
    })
    .to_string()
}

/// At most 200 bytes of what could not be parsed, for the record.
fn preview(buf: &[u8]) -> String {
    let n = buf.len().min(200);
    format!("{:?}", String::from_utf8_lossy(&buf[..n]))
}

/// How an I/O error ends a connection.
pub(crate) fn end_of(e: &io::Error) -> ConnEnd {
    match e.kind() {
        io::ErrorKind::ConnectionReset => ConnEnd::ResetByPeer,
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => ConnEnd::ClosedByPeer,
        _ => ConnEnd::Failed(e.to_string()),
    }
}
