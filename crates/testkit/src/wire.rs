//! HTTP/1.1 wire helpers shared by the backend and the raw client: a read buffer over a
//! [`Stream`] and an incremental body decoder (Content-Length, chunked, until close).
//!
//! Every read is cancel safe: bytes land in `Wire::buf` before a future completes, and
//! the decoder updates its state before it awaits, so `select!` and `timeout` may drop
//! any of these futures.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::addr::Stream;

/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;

/// A stream and the bytes read from it but not consumed yet.
pub(crate) struct Wire {
    pub(crate) stream: Stream,
    pub(crate) buf: BytesMut,
}

impl Wire {
    pub(crate) fn new(stream: Stream) -> Self {
        Wire {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Reads at most `limit` more bytes into `buf`; `Ok(0)` at end of stream.
    pub(crate) async fn fill(&mut self, limit: usize) -> io::Result<usize> {
        self.buf.reserve(limit);
        (&mut self.stream)
            .take(limit as u64)
            .read_buf(&mut self.buf)
            .await
    }

    /// Takes the next CRLF-terminated line (without CRLF) out of `buf`, if complete.
    fn take_line(&mut self) -> Option<Bytes> {
        let pos = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = self.buf.split_to(pos).freeze();
        self.buf.advance(2);
        Some(line)
    }
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// Why a body could not be read to its end.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The peer closed before the body's end.
    Eof,
    /// The stream failed (a reset among others).
    Io(io::Error),
    /// The chunked framing is broken.
    Malformed(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Eof => f.write_str("peer closed before the end of the body"),
            BodyError::Io(e) => write!(f, "{e}"),
            BodyError::Malformed(m) => write!(f, "malformed chunked body: {m}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum State {
    Length { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailers,
    UntilClose,
    Done,
}

/// Decodes one body piece by piece.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length { remaining: n },
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// Whether the body's end has been reached.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next piece of decoded body, at most `max` bytes; `Ok(None)` at the body's end.
    pub(crate) async fn next(
        &mut self,
        wire: &mut Wire,
        max: usize,
    ) -> Result<Option<Bytes>, BodyError> {
        let max = max.max(1);
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length { remaining } => {
                    if wire.buf.is_empty() && fill(wire, max).await? == 0 {
                        return Err(BodyError::Eof);
                    }
                    let n = wire.buf.len().min(max).min(clamp(remaining));
                    let piece = wire.buf.split_to(n).freeze();
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::Done
                    } else {
                        State::Length { remaining }
                    };
                    return Ok(Some(piece));
                }
                State::UntilClose => {
                    if wire.buf.is_empty() && fill(wire, max).await? == 0 {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    let n = wire.buf.len().min(max);
                    return Ok(Some(wire.buf.split_to(n).freeze()));
                }
                State::ChunkSize => {
                    let line = read_line(wire).await?;
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::ChunkData { remaining } => {
                    if wire.buf.is_empty() && fill(wire, max).await? == 0 {
                        return Err(BodyError::Eof);
                    }
                    let n = wire.buf.len().min(max).min(clamp(remaining));
                    let piece = wire.buf.split_to(n).freeze();
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData { remaining }
                    };
                    return Ok(Some(piece));
                }
                State::ChunkDataEnd => {
                    let line = read_line(wire).await?;
                    if !line.is_empty() {
                        return Err(BodyError::Malformed(
                            "chunk data not followed by CRLF".to_string(),
                        ));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if read_line(wire).await?.is_empty() {
                        self.state = State::Done;
                    }
                }
            }
        }
    }
}

fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

async fn fill(wire: &mut Wire, max: usize) -> Result<usize, BodyError> {
    wire.fill(max.clamp(4096, 64 * 1024))
        .await
        .map_err(BodyError::Io)
}

async fn read_line(wire: &mut Wire) -> Result<Bytes, BodyError> {
    loop {
        if let Some(line) = wire.take_line() {
            return Ok(line);
        }
        if wire.buf.len() > MAX_LINE {
            return Err(BodyError::Malformed(format!(
                "line longer than {MAX_LINE} bytes"
            )));
        }
        if fill(wire, 4096).await? == 0 {
            return Err(BodyError::Eof);
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let text = String::from_utf8_lossy(line);
    let size = text.split(';').next().unwrap_or("").trim();
    if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BodyError::Malformed(format!(
            "bad chunk size line {text:?}"
        )));
    }
    u64::from_str_radix(size, 16)
        .map_err(|e| BodyError::Malformed(format!("bad chunk size {size:?}: {e}")))
}

/// Encodes one chunk of a chunked body (`data` must not be empty: that would end it).
pub(crate) fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Finds a header by case-insensitive name.
pub(crate) fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of a header, in order.
pub(crate) fn find_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The framing a message's headers declare: chunked wins over Content-Length (the caller
/// decides whether having both is an error). Err on an unusable value.
pub(crate) fn framing_of(headers: &[(String, String)]) -> Result<Option<Framing>, String> {
    let te = find_all(headers, "transfer-encoding");
    if !te.is_empty() {
        let last = te
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty())
            .unwrap_or("");
        if last.eq_ignore_ascii_case("chunked") {
            return Ok(Some(Framing::Chunked));
        }
        return Err(format!(
            "Transfer-Encoding {:?} does not end in chunked",
            te.join(", ")
        ));
    }
    let cl = find_all(headers, "content-length");
    if cl.is_empty() {
        return Ok(None);
    }
    let mut value: Option<u64> = None;
    for v in cl.iter().flat_map(|v| v.split(',')) {
        let v = v.trim();
        let n: u64 = v
            .parse()
            .map_err(|_| format!("Content-Length {v:?} is not a number"))?;
        if value.is_some_and(|prev| prev != n) {
            return Err(format!("conflicting Content-Length values {cl:?}"));
        }
        value = Some(n);
    }
    Ok(value.map(Framing::Length))
}
