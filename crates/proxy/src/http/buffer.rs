//! Request buffering (`[upstreams.NAME.request_buffering]`, nginx's
//! `proxy_request_buffering on`): a request body is collected in memory before any server
//! is picked or connection taken, so a slow upload holds tidegate's memory, not a
//! backend worker or a pooled connection.
//!
//! Invariants: every byte collected is reserved first in the upstream's budget
//! ([`Upstream::buffered`]), per request at most `max_body` and for all requests together
//! at most `total`; a reservation is given back when the collected body is dropped
//! (sent, or the request abandoned), never before. A body over a limit is either
//! streamed (what was collected, then the rest as it arrives) or refused with 413, as
//! `over` says; nothing is written to disk.
//!
//! Boundary: this step only turns the request's body into [`RequestBody::Collected`] or
//! [`RequestBody::Prefixed`]; sending it is `forward`'s exchange, unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tidegate_config::{OverLimit, RequestBuffering};

use super::failure::Failure;
use crate::failure::UpstreamFailure;
use crate::upstream::body::RequestBody;
use crate::upstream::Upstream;

/// Bytes reserved in an upstream's buffering budget, given back on drop.
#[derive(Debug)]
struct Reservation {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Reservation {
    fn new(used: &Arc<AtomicUsize>) -> Self {
        Reservation {
            used: used.clone(),
            bytes: 0,
        }
    }

    /// Reserves `more` bytes if the budget `total` has room for them.
    fn grow(&mut self, more: usize, total: usize) -> bool {
        let took = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                now.checked_add(more).filter(|n| *n <= total)
            })
            .is_ok();
        if took {
            self.bytes += more;
        }
        took
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why a body was not collected whole.
enum Over {
    /// Its `Content-Length` is above `max_body`.
    Announced(u64),
    /// It grew above `max_body`.
    Grew,
    /// The upstream's `total` had no room for it.
    Budget,
}

impl Over {
    fn describe(&self, up: &str, cfg: &RequestBuffering) -> String {
        match self {
            Over::Announced(n) => format!(
                "upstream {up}: request body of {n} bytes is over request_buffering.max_body ({} bytes)",
                cfg.max_body
            ),
            Over::Grew => format!(
                "upstream {up}: request body is over request_buffering.max_body ({} bytes)",
                cfg.max_body
            ),
            Over::Budget => format!(
                "upstream {up}: request_buffering.total ({} bytes) is in use by other uploads",
                cfg.total
            ),
        }
    }
}

/// Collects `req`'s body if `up` buffers requests; `Err` is the client's answer (413
/// when refused, 400 when the client's body failed while being read).
pub(super) async fn collect(
    up: &Upstream,
    req: Request<RequestBody>,
) -> Result<Request<RequestBody>, Failure> {
    let Some(cfg) = up.request_buffering else {
        return Ok(req);
    };
    if req.body().is_end_stream() {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    let RequestBody::Client {
        mut body,
        end,
        sending,
    } = body
    else {
        return Ok(Request::from_parts(parts, body));
    };
    let mut hold = Reservation::new(&up.buffered);
    let announced = body.size_hint().exact();
    let mut over = match announced {
        Some(n) if n > cfg.max_body as u64 => Some(Over::Announced(n)),
        // The whole announced length at once: a body that will not fit is known now,
        // before any of it is read.
        Some(n) => (!hold.grow(n as usize, cfg.total)).then_some(Over::Budget),
        None => None,
    };
    // The announced length was reserved: allocate it once rather than grow by copies.
    let mut data = match (&over, announced) {
        (None, Some(n)) => BytesMut::with_capacity(n as usize),
        _ => BytesMut::new(),
    };
    while over.is_none() {
        let Some(frame) = body.frame().await else {
            break;
        };
        // The client's body failing is classified like one that fails while it is
        // streamed: 400, the client's fault, in the same words.
        let frame =
            frame.map_err(|e| Failure::upstream(&UpstreamFailure::ClientBody(e), &up.name, ""))?;
        // Trailers are dropped, as nginx does when it buffers a body.
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let len = data.len() + chunk.len();
        if len > cfg.max_body {
            over = Some(Over::Grew);
        } else if len > hold.bytes && !hold.grow(len - hold.bytes, cfg.total) {
            over = Some(Over::Budget);
        }
        data.extend_from_slice(&chunk);
    }
    if let Some(over) = over {
        let message = over.describe(&up.name, &cfg);
        if cfg.over == OverLimit::Refuse {
            return Err(Failure::client(StatusCode::PAYLOAD_TOO_LARGE, message));
        }
        tracing::debug!("{message}; streaming it");
        // What was read so far goes first, counted in the budget until it is sent.
        let _ = hold.grow(data.len().saturating_sub(hold.bytes), usize::MAX);
        let rest = RequestBody::Client { body, end, sending };
        return Ok(Request::from_parts(
            parts,
            RequestBody::Prefixed {
                prefix: Some(data.freeze()),
                rest: Box::new(rest),
                hold: Some(Box::new(hold)),
            },
        ));
    }
    if let Some(end) = end {
        end.body_ended();
    }
    let data: Bytes = data.freeze();
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    Ok(Request::from_parts(
        parts,
        RequestBody::Collected {
            data: Some(data),
            hold: Some(Box::new(hold)),
            sending,
        },
    ))
}
