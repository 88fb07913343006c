//! A failed exchange as the client sees it: the status, the one-line text body, the log
//! level by fault. Upstream failures are classified in [`crate::failure`]; the
//! statuses are those of docs/design.md, "Failures and status codes".

use http::{header, HeaderValue, Response, StatusCode};

use super::body::{ExchangeDone, ProxyBody};
use crate::failure::{Fault, UpstreamFailure};

/// A failed exchange, before any response byte was sent.
#[derive(Debug)]
pub struct Failure {
    /// Status to answer with.
    pub status: StatusCode,
    /// One line, for the body and the log.
    pub message: String,
    /// Who failed: decides the log level.
    pub fault: Fault,
}

impl Failure {
    /// A refusal of the client's request.
    pub fn client(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            fault: Fault::Client,
        }
    }

    /// An upstream failure, as [`UpstreamFailure`] classifies it; `server` is the
    /// server's address as configured.
    pub fn upstream(failure: &UpstreamFailure, upstream: &str, server: &str) -> Self {
        Failure {
            status: failure.status(),
            message: failure.message(upstream, server),
            fault: failure.fault(),
        }
    }

    /// Logs the failure at its fault's level and turns it into a response.
    pub fn into_response(self, exchange: Option<ExchangeDone>) -> Response<ProxyBody> {
        match self.fault {
            Fault::Client => tracing::debug!(status = self.status.as_u16(), "{}", self.message),
            Fault::Upstream => tracing::warn!(status = self.status.as_u16(), "{}", self.message),
            Fault::Internal => tracing::error!(status = self.status.as_u16(), "{}", self.message),
        }
        // 411: the body was left unread, so the connection cannot serve another request.
        let close = matches!(
            self.status,
            StatusCode::BAD_REQUEST | StatusCode::NOT_IMPLEMENTED | StatusCode::LENGTH_REQUIRED
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
