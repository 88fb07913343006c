//! What a test backend answers: one [`Reply`] per request, chosen by the test's handler.

use std::time::Duration;

/// What the HTTP backend does with one request. Build it with the constructors below.
///
/// The request body is read (and recorded, in memory) before anything is answered,
/// except with [`Reply::slow_read`], which reads it itself and keeps only its length —
/// use that one for uploads of many megabytes.
#[derive(Clone, Debug)]
pub struct Reply {
    pub(crate) kind: Kind,
    /// Extra response head lines, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// Send `Connection: close` and close after the response.
    pub(crate) close: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Fixed {
        status: u16,
        body: Vec<u8>,
    },
    Echo,
    Delay(Duration, Box<Reply>),
    Sse {
        events: Vec<String>,
        then: SseThen,
    },
    Chunks {
        chunks: Vec<(Duration, Vec<u8>)>,
        end: ChunksEnd,
    },
    CloseBeforeResponse,
    ResetBeforeResponse,
    SlowRead {
        bytes_per_sec: u64,
    },
}

/// What an SSE reply does after its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseThen {
    /// Keep the stream open and silent until the client goes away or the backend is
    /// dropped (the backend notices the client's close and records it).
    Hold,
    /// Send the terminating chunk; the connection stays open for the next request.
    End,
}

/// How a chunked reply ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunksEnd {
    /// With the terminating `0` chunk.
    Finish,
    /// Closed (FIN) without the terminating chunk.
    Close,
    /// Reset (RST) without the terminating chunk.
    Reset,
}

// === impl Reply ===

impl Reply {
    fn new(kind: Kind) -> Self {
        Reply {
            kind,
            headers: Vec::new(),
            close: false,
        }
    }

    /// `status` with `body` as `text/plain` and a Content-Length. A 204, 304 or 1xx status
    /// has neither body nor Content-Length.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply::new(Kind::Fixed {
            status,
            body: body.into(),
        })
        .header("Content-Type", "text/plain; charset=utf-8")
    }

    /// `200` with a JSON body describing the request as received:
    /// `{"method", "target", "version", "headers": [[name, value], ...], "body_len", "conn_id"}`.
    pub fn echo() -> Self {
        Reply::new(Kind::Echo).header("Content-Type", "application/json")
    }

    /// Waits `delay` (after reading the request body), then answers `then`. A client
    /// close during the wait ends the connection and is recorded.
    pub fn delay(delay: Duration, then: Reply) -> Self {
        Reply::new(Kind::Delay(delay, Box::new(then)))
    }

    /// `200`, `Content-Type: text/event-stream`, chunked: each event is sent verbatim as
    /// one chunk and flushed at once (write complete events, e.g. `"data: hi\n\n"`),
    /// then `then`.
    pub fn sse(events: Vec<String>, then: SseThen) -> Self {
        Reply::new(Kind::Sse { events, then })
    }

    /// `200`, chunked: each chunk is sent after its delay (empty chunks are skipped,
    /// they would end the body), then the terminating chunk.
    pub fn chunks(chunks: Vec<(Duration, Vec<u8>)>) -> Self {
        Reply::new(Kind::Chunks {
            chunks,
            end: ChunksEnd::Finish,
        })
    }

    /// Like [`Reply::chunks`], then closes the connection (FIN) without the terminating
    /// chunk: an upstream that dies mid-body.
    pub fn chunks_then_close(chunks: Vec<(Duration, Vec<u8>)>) -> Self {
        Reply::new(Kind::Chunks {
            chunks,
            end: ChunksEnd::Close,
        })
    }

    /// Like [`Reply::chunks`], then resets the connection (SO_LINGER 0, then close: RST)
    /// without the terminating chunk. On a Unix socket this is a plain close.
    pub fn chunks_then_reset(chunks: Vec<(Duration, Vec<u8>)>) -> Self {
        Reply::new(Kind::Chunks {
            chunks,
            end: ChunksEnd::Reset,
        })
    }

    /// Reads the request, then closes the connection (FIN) without a response byte.
    pub fn close_before_response() -> Self {
        Reply::new(Kind::CloseBeforeResponse)
    }

    /// Reads the request, then resets the connection (RST) without a response byte. On a
    /// Unix socket this is a plain close.
    pub fn reset_before_response() -> Self {
        Reply::new(Kind::ResetBeforeResponse)
    }

    /// Reads the request body at about `bytes_per_sec` (small steps with pauses), keeping
    /// only its length, then answers `200` with the byte count as the body. The recorded
    /// request has `body_len` (updated as it goes) and an empty `body`.
    pub fn slow_read(bytes_per_sec: u64) -> Self {
        Reply::new(Kind::SlowRead {
            bytes_per_sec: bytes_per_sec.max(1),
        })
        .header("Content-Type", "text/plain; charset=utf-8")
    }

    /// Adds a response header (after the framing headers the backend writes itself). For
    /// a fixed reply, a `Content-Length` or `Transfer-Encoding` given here replaces the
    /// backend's own, so a test can send a deliberately wrong one.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.map_innermost(|r| r.headers.push((name.to_string(), value.to_string())))
    }

    /// Sends `Connection: close` and closes the connection after the response.
    pub fn close(self) -> Self {
        self.map_innermost(|r| r.close = true)
    }

    /// Applies `f` to the reply that is eventually sent (through any delays).
    fn map_innermost(self, f: impl FnOnce(&mut Reply)) -> Self {
        match self.kind {
            Kind::Delay(d, inner) => Reply {
                kind: Kind::Delay(d, Box::new((*inner).map_innermost(f))),
                ..self
            },
            _ => {
                let mut r = self;
                f(&mut r);
                r
            }
        }
    }

    /// Folds nested delays into one: the total wait and the reply after it.
    pub(crate) fn flatten(self) -> (Duration, Reply) {
        let mut wait = Duration::ZERO;
        let mut reply = self;
        // Bounded by the nesting depth the test built.
        while let Kind::Delay(d, inner) = reply.kind {
            wait += d;
            reply = *inner;
        }
        (wait, reply)
    }
}
