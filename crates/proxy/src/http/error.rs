//! Failures of an exchange, classified once: the class picks the status, the log level
//! and the one-line text body (docs/design.md, "Failures and status codes").

use std::error::Error as StdError;
use std::io;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::{ExchangeDone, ProxyBody};
use crate::errno::describe_io_error;
use crate::upstream::connect::ConnectError;
use crate::upstream::UpstreamError;

/// Which side a failure came from: it decides the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse (logged at debug).
    Client,
    /// The upstream failed (logged at warn: the operator has something to fix).
    Upstream,
}

/// A failed exchange, before any response byte was sent.
#[derive(Debug)]
pub struct Failure {
    /// Status to answer with.
    pub status: StatusCode,
    /// One line, for the body and the log.
    pub message: String,
    /// Who failed.
    pub side: Side,
}

impl Failure {
    /// A refusal of the client's request.
    pub fn client(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            side: Side::Client,
        }
    }

    /// Getting a connection failed: 504 on timeout, 503 when an on-demand backend could
    /// not be started, 502 otherwise.
    pub fn connect(e: &UpstreamError) -> Self {
        let status = match e {
            UpstreamError::Connect {
                error: ConnectError::Timeout { .. },
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::OnDemand { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        Failure {
            status,
            message: e.to_string(),
            side: Side::Upstream,
        }
    }

    /// No response head within `response_timeout`.
    pub fn response_timeout(upstream: &str, server: &str, limit: std::time::Duration) -> Self {
        Failure {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "upstream {upstream} ({server}): no response head within {}ms (response_timeout)",
                limit.as_millis()
            ),
            side: Side::Upstream,
        }
    }

    /// The upstream failed after the request was sent, before the response head.
    pub fn before_head(upstream: &str, server: &str, e: &hyper::Error) -> Self {
        Failure {
            status: StatusCode::BAD_GATEWAY,
            message: format!(
                "upstream {upstream} ({server}): {}",
                describe_hyper_error(e)
            ),
            side: Side::Upstream,
        }
    }

    /// Logs the failure at its side's level and turns it into a response.
    pub fn into_response(self, exchange: Option<ExchangeDone>) -> Response<ProxyBody> {
        match self.side {
            Side::Client => tracing::debug!(status = self.status.as_u16(), "{}", self.message),
            Side::Upstream => tracing::warn!(status = self.status.as_u16(), "{}", self.message),
        }
        let close = matches!(
            self.status,
            StatusCode::BAD_REQUEST | StatusCode::NOT_IMPLEMENTED
        );
        let mut body = self.message;
        body.push('\n');
        let mut resp = text_response(self.status, body, exchange);
        if close {
            // The request's framing can't be trusted: whatever follows on this
            // connection could be a smuggled request. hyper closes after this response.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A `text/plain` response.
pub fn text_response(
    status: StatusCode,
    body: impl Into<bytes::Bytes>,
    exchange: Option<ExchangeDone>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body, exchange));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
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
        e.to_string()
    }
}

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
