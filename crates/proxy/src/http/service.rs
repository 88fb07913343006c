//! The hyper service of a client connection: per request, the checks tidegate makes
//! before routing, the route, then a fixed answer or `forward`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::body::{ExchangeDone, ProxyBody};
use super::client_conn::ClientConn;
use super::failure::{text_response, Failure};
use super::headers::{self, FramingError};
use super::listener::{HttpListener, Target};
use crate::endpoint::PeerAddr;

/// The hyper service of one client connection.
#[derive(Debug, Clone)]
pub struct ConnService {
    pub(crate) ctx: Arc<HttpListener>,
    pub(crate) peer: PeerAddr,
    pub(crate) client: Arc<ClientConn>,
    /// The peer's address as an `X-Forwarded-For` element, formatted once.
    pub(crate) forwarded_for: Option<HeaderValue>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let now = tokio::time::Instant::now();
        self.client.request_started_at(now);
        let version = req.version();
        self.client.exchange_begins(
            headers::request_closes(req.headers(), version),
            !req.body().is_end_stream(),
        );
        let done = ExchangeDone::start(
            self.client.clone(),
            self.ctx.clone(),
            now,
            self.peer,
            req.method(),
            req.uri(),
            version,
        );
        let this = self.clone();
        Box::pin(async move {
            let mut resp = this.handle(req, Some(done)).await;
            // tidegate's own answers carry `Connection` only to close; hyper closes
            // an HTTP/1.0 keep-alive connection after a body of unknown length.
            if resp.headers().contains_key(header::CONNECTION)
                || (version != Version::HTTP_11
                    && !resp.headers().contains_key(header::CONTENT_LENGTH))
            {
                this.client.response_closes();
            }
            let status = resp.status().as_u16();
            if let Some(done) = resp.body_mut().exchange_mut() {
                done.status = status;
            }
            this.client.response_started();
            Ok(resp)
        })
    }
}

impl ConnService {
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        done: Option<ExchangeDone>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return Failure::client(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported: tidegate is a reverse proxy",
            )
            .into_response(done);
        }
        // Absolute-form target: the authority is the Host (RFC 9112 §3.2.2), and the
        // upstream gets origin-form. User info has no place in a request target
        // (RFC 9110 §4.2.4): a backend reading it as an authority would see another host.
        if let Some(auth) = req.uri().authority() {
            let refused = if auth.as_str().contains('@') {
                Some("user info in the request target")
            } else {
                headers::check_host(auth.as_str().as_bytes()).err()
            };
            if let Some(why) = refused {
                return Failure::client(
                    StatusCode::BAD_REQUEST,
                    format!("invalid authority in request target: {why}"),
                )
                .into_response(done);
            }
            match HeaderValue::from_str(auth.as_str()) {
                Ok(v) => {
                    req.headers_mut().insert(header::HOST, v);
                }
                Err(_) => {
                    return Failure::client(
                        StatusCode::BAD_REQUEST,
                        "invalid authority in request target",
                    )
                    .into_response(done)
                }
            }
        }
        if !self.ctx.underscores_in_headers {
            headers::drop_underscored(req.headers_mut());
        }
        let http11 = req.version() == Version::HTTP_11;
        match headers::check_framing(req.headers(), http11) {
            Ok(()) => {}
            Err(FramingError::Host(what)) => {
                return Failure::client(StatusCode::BAD_REQUEST, what).into_response(done)
            }
            Err(FramingError::TransferEncoding(te)) => {
                return Failure::client(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("Transfer-Encoding \"{te}\" is not supported; only \"chunked\" is"),
                )
                .into_response(done)
            }
        }
        let host = match req.headers().get(header::HOST).map(|h| h.to_str()) {
            None => "",
            Some(Ok(h)) => h,
            Some(Err(_)) => {
                return Failure::client(StatusCode::BAD_REQUEST, "Host header is not ASCII")
                    .into_response(done)
            }
        };
        if let Err(why) = headers::check_host(host.as_bytes()) {
            return Failure::client(
                StatusCode::BAD_REQUEST,
                format!("invalid Host header: {why}"),
            )
            .into_response(done);
        }
        // Routes see the normalized path; the upstream gets the client's unless the
        // route says otherwise.
        let path = match super::route::normalize(req.uri().path()) {
            Ok(p) => p,
            Err(e) => {
                return Failure::client(StatusCode::BAD_REQUEST, e.message()).into_response(done)
            }
        };
        let target = super::route::select(
            self.ctx.routes.iter().map(|(m, t)| (m, t)),
            super::route::routing_host(host),
            &path,
        );
        match target {
            None => {
                let msg = format!("no route for {host}{path}");
                Failure::client(StatusCode::NOT_FOUND, msg).into_response(done)
            }
            Some(Target::Respond { status, body }) => text_response(*status, body.clone(), done),
            Some(Target::Upstream {
                upstream,
                metrics,
                forwarding,
                require_length,
            }) => {
                if *require_length
                    && !req.body().is_end_stream()
                    && req.body().size_hint().exact().is_none()
                {
                    return Failure::client(
                        StatusCode::LENGTH_REQUIRED,
                        "a request body of unknown length (chunked) is refused on this route \
                         (require_length): send Content-Length",
                    )
                    .into_response(done);
                }
                let normalized = match path {
                    Cow::Owned(p) if forwarding.normalized_path => Some(p),
                    _ => None,
                };
                if let Some(p) = normalized {
                    set_path(req.uri_mut(), &p);
                }
                let get = req.method() == Method::GET;
                headers::restrict_upgrade(req.headers_mut(), get, &forwarding.upgrades);
                let up = upstream.clone();
                let mut done = done;
                if let Some(d) = done.as_mut() {
                    d.route = Some(metrics.clone());
                }
                self.forward(up, req, done).await
            }
        }
    }
}

/// Replaces `uri`'s path with `path` (the normalized one), keeping the query. The
/// result is origin-form: the authority, if any, is already the Host.
fn set_path(uri: &mut http::Uri, path: &str) {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    // The normalized path is made of the original's characters (and `%XX`), so it
    // parses; should it not, the original is forwarded.
    if let Ok(pq) = http::uri::PathAndQuery::try_from(pq) {
        *uri = http::Uri::from(pq);
    }
}
