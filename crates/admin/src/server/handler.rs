//! The admin API's routes as a plain function: method, path and body in, [`Answer`]
//! out. No sockets, so every route and every error is tested without a server.

use std::fmt::Write as _;

use serde::Serialize;

use crate::api::{AdminBusy, AdminClients, Closed, ErrorBody, SetState};
use crate::{Control, ControlError};

/// `Content-Type` of every JSON answer.
pub const JSON: &str = "application/json";
/// `Content-Type` of `GET /metrics`: the Prometheus text exposition format.
pub const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One answer of the admin API, before it is written to a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body: JSON (pretty-printed, ending with a newline) or the metrics text.
    pub body: Vec<u8>,
    /// For a `405`: the methods the path allows (`Allow` header).
    pub allow: Option<&'static str>,
}

// === impl Answer ===

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, value: &impl Serialize) -> Answer {
        let body = match serde_json::to_vec_pretty(value) {
            Ok(mut body) => {
                body.push(b'\n');
                body
            }
            // Only a map with non-string keys fails, and the API has none.
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an admin answer (a bug)");
                return Answer::error(500, "cannot encode the answer (a bug)", None);
            }
        };
        Answer {
            status,
            content_type: JSON,
            body,
            allow: None,
        }
    }

    /// An error answer: `{"error": message, "detail": detail}`.
    pub fn error(
        status: u16,
        message: impl Into<String>,
        detail: Option<serde_json::Value>,
    ) -> Answer {
        let body = ErrorBody {
            error: message.into(),
            detail,
        };
        let mut body = serde_json::to_vec_pretty(&body).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Answer {
            status,
            content_type: JSON,
            body,
            allow: None,
        }
    }

    /// The `503` a new client gets when every slot is held.
    pub fn busy(busy: &AdminBusy) -> Answer {
        let message = format!(
            "admin API busy: {} of {} client slots are held, each by a request in \
             progress; the oldest client has been connected {} and idle {} (a request \
             must arrive whole within {}); try again shortly",
            busy.clients,
            busy.max_connections,
            secs(busy.oldest_age_s),
            secs(busy.oldest_idle_s),
            secs(busy.idle_timeout_s),
        );
        Answer::error(503, message, serde_json::to_value(busy).ok())
    }

    fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Answer {
        let detail = serde_json::json!({ "allow": allow.split(", ").collect::<Vec<_>>() });
        Answer {
            allow: Some(allow),
            ..Answer::error(
                405,
                format!("{method} is not allowed on {path}; use {allow}"),
                Some(detail),
            )
        }
    }

    fn control_error(e: ControlError) -> Answer {
        match e {
            ControlError::NotFound(m) => Answer::error(404, m, None),
            ControlError::BadRequest(m) => Answer::error(400, m, None),
            ControlError::Invalid { message, errors } => {
                Answer::error(422, message, Some(serde_json::json!(errors)))
            }
            ControlError::Conflict(m) => Answer::error(409, m, None),
            ControlError::Failed { message, detail } => Answer::error(
                500,
                message,
                (!detail.is_empty()).then(|| serde_json::json!(detail)),
            ),
            ControlError::NotImplemented(m) => Answer::error(501, m, None),
        }
    }
}

/// `4.2s`, `120ms`, `3m04s`: a duration in seconds for a message.
fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{}ms", (s * 1000.0).round() as u64)
    } else if s < 60.0 {
        let tenths = (s * 10.0).round() as u64;
        match tenths % 10 {
            0 => format!("{}s", tenths / 10),
            t => format!("{}.{t}s", tenths / 10),
        }
    } else {
        let whole = s.round() as u64;
        let mut out = String::new();
        let _ = write!(out, "{}m{:02}s", whole / 60, whole % 60);
        out
    }
}

/// Refuses what a web page could send to an admin API on a TCP address (a browser can
/// reach `127.0.0.1:PORT`; it cannot reach a Unix socket, where these checks are not
/// made). `None`: the request may go on.
///
/// - `Host` must name loopback (`localhost`, a loopback IP such as `127.0.0.1` or
///   `[::1]`, or `own`, the listener's own IP when it is not a loopback one), with any
///   port, else `403`: a page whose name was rebound to 127.0.0.1 (DNS rebinding) still
///   sends its own name.
/// - A request with an `Origin` header comes from a browser: `403`.
/// - Any method but `GET` and `HEAD` needs `Content-Type: application/json`, else `415`:
///   a page can send a `text/plain` or form POST without a preflight, never a JSON one.
pub fn cross_site_check(
    method: &str,
    headers: &http::HeaderMap,
    own: Option<std::net::IpAddr>,
) -> Option<Answer> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().ok(),
        _ => None,
    };
    if !host.is_some_and(|h| is_loopback_host(h, own)) {
        let found = match host {
            Some(h) => format!("Host {h:?}"),
            None if headers.contains_key(http::header::HOST) => {
                "several or unreadable Host headers".to_owned()
            }
            None => "no Host header".to_owned(),
        };
        return Some(Answer::error(
            403,
            format!(
                "{found}: the admin API on a TCP address answers only requests whose Host \
                 names loopback (localhost, 127.0.0.1 or [::1], any port), so a web page \
                 cannot reach it through DNS rebinding"
            ),
            None,
        ));
    }
    if headers.contains_key(http::header::ORIGIN) {
        return Some(Answer::error(
            403,
            "a request with an Origin header comes from a web page; the admin API refuses \
             cross-site requests (use curl or tidegate ctl)",
            None,
        ));
    }
    if method != "GET" && method != "HEAD" {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let json = content_type.is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case(JSON))
        });
        if !json {
            let found = content_type.map_or_else(
                || "no Content-Type".to_owned(),
                |ct| format!("Content-Type {ct:?}"),
            );
            return Some(Answer::error(
                415,
                format!(
                    "{method} with {found}: on a TCP address the admin API takes {method} only \
                     with Content-Type: application/json (a web page cannot send that \
                     without asking first); add -H 'Content-Type: application/json'"
                ),
                None,
            ));
        }
    }
    None
}

/// `localhost`, a loopback IP or `own`, each with an optional port (`[::1]:9000`).
fn is_loopback_host(host: &str, own: Option<std::net::IpAddr>) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            // Only `:PORT` may follow the brackets.
            a => match a.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        (ip, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return false;
        }
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // An IPv6 literal is only valid in brackets.
    let bracketed = host.starts_with('[');
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_ipv6() != bracketed => false,
        Ok(ip) => ip.is_loopback() || Some(ip) == own,
        Err(_) => false,
    }
}

/// The largest request body accepted (a `SetState` is a few dozen bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// Answers one request. `clients` lists the admin clients (for
/// `GET /v1/admin-clients`); `body` is the whole request body.
///
/// A `HEAD` is answered like a `GET` (hyper leaves the body out). Every answer but
/// `POST /v1/upgrade`'s is ready at once.
pub async fn handle(
    control: &dyn Control,
    clients: &(dyn Fn() -> AdminClients + Sync),
    method: &str,
    path: &str,
    body: &[u8],
) -> Answer {
    let method = if method == "HEAD" { "GET" } else { method };
    let segments: Vec<&str> = match path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return not_found(path),
    };
    let allowed = |allow: &'static str| -> Option<Answer> {
        if allow.split(", ").any(|m| m == method) {
            None
        } else {
            Some(Answer::method_not_allowed(method, path, allow))
        }
    };
    match segments.as_slice() {
        ["v1", "status"] => allowed("GET").unwrap_or_else(|| Answer::json(200, &control.status())),
        ["v1", "upstreams"] => {
            allowed("GET").unwrap_or_else(|| Answer::json(200, &control.upstreams()))
        }
        ["v1", "upstreams", upstream, "servers", index, "state"] => {
            if let Some(no) = allowed("POST") {
                return no;
            }
            let Ok(index) = index.parse::<usize>() else {
                return Answer::error(
                    404,
                    format!("upstream {upstream:?} has no server {index:?}: an index is a whole number (the server's position in `servers`, from 0)"),
                    None,
                );
            };
            let set: SetState = match serde_json::from_slice(body) {
                Ok(s) => s,
                Err(e) => {
                    return Answer::error(
                        400,
                        format!(
                            r#"bad request body: {e}; expected {{"state": "ready" | "drain" | "maint"}}"#
                        ),
                        None,
                    )
                }
            };
            match control.set_server_state(upstream, index, set.state) {
                Ok(server) => Answer::json(200, &server),
                Err(e) => Answer::control_error(e),
            }
        }
        ["v1", "connections"] => {
            allowed("GET").unwrap_or_else(|| Answer::json(200, &control.connections()))
        }
        ["v1", "connections", id] => {
            if let Some(no) = allowed("DELETE") {
                return no;
            }
            let Ok(id) = id.parse::<u64>() else {
                return Answer::error(
                    404,
                    format!("no connection {id:?}: a connection id is a whole number"),
                    None,
                );
            };
            match control.close_connection(id) {
                Ok(()) => Answer::json(200, &Closed { closed: id }),
                Err(e) => Answer::control_error(e),
            }
        }
        ["v1", "admin-clients"] => allowed("GET").unwrap_or_else(|| Answer::json(200, &clients())),
        ["v1", "reload"] => {
            if let Some(no) = allowed("POST") {
                return no;
            }
            let request: crate::ReloadRequest = if body.iter().all(u8::is_ascii_whitespace) {
                crate::ReloadRequest::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => {
                        return Answer::error(
                            400,
                            format!("cannot read the request body: {e}; expected {{\"dry_run\": true|false}} or nothing"),
                            None,
                        )
                    }
                }
            };
            match control.reload(request.dry_run) {
                Ok(view) => Answer::json(200, &view),
                Err(e) => Answer::control_error(e),
            }
        }
        ["v1", "upgrade"] => {
            if let Some(no) = allowed("POST") {
                return no;
            }
            match control.upgrade().await {
                Ok(view) => Answer::json(200, &view),
                Err(e) => Answer::control_error(e),
            }
        }
        ["metrics"] => allowed("GET").unwrap_or_else(|| Answer {
            status: 200,
            content_type: METRICS,
            body: control.metrics().into_bytes(),
            allow: None,
        }),
        _ => not_found(path),
    }
}

fn not_found(path: &str) -> Answer {
    Answer::error(
        404,
        format!("no such endpoint: {path}"),
        Some(serde_json::json!({
            "endpoints": [
                "GET /v1/status",
                "GET /v1/upstreams",
                "POST /v1/upstreams/{name}/servers/{index}/state",
                "GET /v1/connections",
                "DELETE /v1/connections/{id}",
                "GET /v1/admin-clients",
                "POST /v1/reload",
                "POST /v1/upgrade",
                "GET /metrics",
            ]
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn only_loopback_hosts_pass() {
        let own = Some("10.0.0.5".parse().expect("ip"));
        for ok in [
            "localhost",
            "LOCALHOST:9000",
            "127.0.0.1",
            "127.0.0.1:65535",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9000",
            "10.0.0.5:9000",
        ] {
            assert!(is_loopback_host(ok, own), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9000",
            "localhost.evil.example",
            "127.0.0.1:99999",
            "127.0.0.1:",
            "127.0.0.1:8x",
            "::1",
            "[::1",
            "[::1]x",
            "[127.0.0.1]",
            "10.0.0.6",
            "",
            "x",
            "localhost:80@evil.example",
        ] {
            assert!(!is_loopback_host(bad, own), "{bad}");
        }
    }

    #[test]
    fn cross_site_requests_are_refused_with_403_or_415() {
        let status = |method, h: &[(&str, &str)]| {
            cross_site_check(method, &headers(h), None).map(|a| a.status)
        };
        assert_eq!(status("GET", &[("host", "localhost:1")]), None);
        assert_eq!(status("GET", &[]), Some(403));
        assert_eq!(
            status("GET", &[("host", "a"), ("host", "localhost")]),
            Some(403)
        );
        assert_eq!(status("GET", &[("host", "x")]), Some(403));
        assert_eq!(
            status("GET", &[("host", "localhost"), ("origin", "null")]),
            Some(403)
        );
        let post = |ct: &str| status("POST", &[("host", "127.0.0.1:9"), ("content-type", ct)]);
        assert_eq!(post("application/json"), None);
        assert_eq!(post("Application/JSON; charset=utf-8"), None);
        assert_eq!(post("text/plain"), Some(415));
        assert_eq!(post("application/x-www-form-urlencoded"), Some(415));
        assert_eq!(post("application/jsonx"), Some(415));
        assert_eq!(status("DELETE", &[("host", "localhost")]), Some(415));
    }

    #[test]
    fn seconds_read_like_an_operator_writes_them() {
        assert_eq!(secs(0.0421), "42ms");
        assert_eq!(secs(4.26), "4.3s");
        assert_eq!(secs(10.0), "10s");
        assert_eq!(secs(184.0), "3m04s");
    }
}
