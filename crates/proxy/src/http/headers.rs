//! Header rules for a proxy: hop-by-hop removal (RFC 9110 §7.6.1), `X-Forwarded-*`, and
//! the framing checks hyper leaves to us (docs/design.md, "Library facts").

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that are hop-by-hop whether or not `Connection` names them. `Trailer` is not
/// one (it is end-to-end, RFC 9110 §6.6.2); `TE` is, but its `trailers` is passed on
/// ([`asks_trailers`], [`ask_trailers`]).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// `Proxy-Connection` is non-standard but sent by old clients; never forward it.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// True when the message asks for a protocol upgrade (`Connection: upgrade` and an
/// `Upgrade` header).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether a request of `version` with these headers ends its connection after its
/// response, as hyper decides it (RFC 9112 §9.3): HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive` and no `close`.
pub fn request_closes(headers: &HeaderMap, version: http::Version) -> bool {
    if version == http::Version::HTTP_11 {
        headers.contains_key(header::CONNECTION) && connection_has(headers, "close")
    } else {
        // hyper keeps an HTTP/1.0 connection only when a line says `keep-alive` and none
        // says `close`, whatever their order.
        version != http::Version::HTTP_10
            || !connection_has(headers, "keep-alive")
            || connection_has(headers, "close")
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those named by `Connection`. With `upgrade`,
/// keeps `Upgrade` and sets `Connection: upgrade` (docs/design.md, "Library facts").
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of these: one pass over the names (compared, not hashed)
    // spares seven hashed removals per message.
    if !upgrade
        && !headers
            .keys()
            .any(|n| HOP_BY_HOP.contains(n) || n == PROXY_CONNECTION)
    {
        return;
    }
    // Names listed in Connection are removed too; collecting them is rare work (most
    // requests carry only "keep-alive" or nothing there). Read as bytes: a line with a
    // non-ASCII element still names the other headers, and they must not pass.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(PROXY_CONNECTION);
    if let Some(v) = upgrade_value {
        headers.insert(header::UPGRADE, v);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the client's `TE` accepts trailers (`TE: trailers`, RFC 9110 §10.1.4).
pub fn asks_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
}

/// Tells the upstream that trailers are welcome (what a client's `TE: trailers` said to
/// tidegate): `TE: trailers` with the `te` connection option RFC 9110 §10.1.4 asks for.
/// gRPC servers need it to answer at all. Other `TE` codings are tidegate's to accept,
/// and it accepts none, so only `trailers` is passed on.
pub fn ask_trailers(headers: &mut HeaderMap) {
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.append(header::CONNECTION, HeaderValue::from_static("te"));
}

/// Frames a request body of unknown length (the client sent it chunked) as chunked
/// toward the upstream, whatever the method: hyper's client decides framing from the
/// method, the fields and the body's size hint, and sends a GET, HEAD or CONNECT whose
/// body has no known length with no body at all unless `Transfer-Encoding` says
/// otherwise. A body of known length keeps its `Content-Length`.
pub fn frame_unknown_length_body(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
}

/// Why an upstream response's framing cannot be trusted (it is answered with 502 and
/// its connection is closed).
#[derive(Debug, PartialEq, Eq)]
pub enum UntrustedFraming {
    /// A `Transfer-Encoding` other than exactly `chunked` (hyper would read such a
    /// body to the connection's close, and pass a coding tidegate does not apply).
    TransferEncoding(String),
    /// `Content-Length` values that are not one number.
    ContentLength(String),
}

impl std::fmt::Display for UntrustedFraming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UntrustedFraming::TransferEncoding(te) => {
                write!(
                    f,
                    "Transfer-Encoding \"{te}\" (only \"chunked\" is accepted)"
                )
            }
            UntrustedFraming::ContentLength(cl) => write!(f, "Content-Length \"{cl}\""),
        }
    }
}

/// How an upstream response is framed, once checked (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// One of `Content-Length`, `Transfer-Encoding: chunked`, or neither.
    Plain,
    /// Both: `chunked` won (hyper decoded it so) and `Content-Length` was removed, as
    /// RFC 9112 §6.3 asks of an intermediary; the connection is not reused, since the
    /// upstream's own idea of where the message ends is in doubt.
    ChunkedOverLength,
}

/// Checks an upstream response's framing fields, and removes a `Content-Length` that
/// `Transfer-Encoding: chunked` overrides (forwarded, it would make the client read the
/// body by the wrong length: hyper decoded it as chunked). A repeated `Content-Length`
/// of one value becomes a single field.
pub fn check_response_framing(
    headers: &mut HeaderMap,
) -> Result<ResponseFraming, UntrustedFraming> {
    // The usual response has at most one of the two, once: two lookups.
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    if has_te {
        let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
        let chunked = match (te.next(), te.next()) {
            (Some(v), None) => v
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked")),
            _ => false,
        };
        if !chunked {
            let all: Vec<&str> = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .map(|v| v.to_str().unwrap_or("<non-ASCII>"))
                .collect();
            return Err(UntrustedFraming::TransferEncoding(all.join(", ")));
        }
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            return Ok(ResponseFraming::ChunkedOverLength);
        }
        return Ok(ResponseFraming::Plain);
    }
    let mut cl = headers.get_all(header::CONTENT_LENGTH).iter();
    let single = match (cl.next(), cl.next()) {
        (None, _) => return Ok(ResponseFraming::Plain),
        (Some(v), None) => !v.as_bytes().contains(&b','),
        _ => false,
    };
    if single {
        return Ok(ResponseFraming::Plain);
    }
    // hyper accepted the head, so the values agree; still, check them here rather than
    // rely on it, and forward one.
    let values: Vec<&[u8]> = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|v| v.trim_ascii())
        .collect();
    let first = values.first().copied().unwrap_or_default();
    let one = !first.is_empty()
        && first.iter().all(u8::is_ascii_digit)
        && values.iter().all(|v| *v == first);
    match (one, HeaderValue::from_bytes(first)) {
        (true, Ok(v)) => {
            headers.insert(header::CONTENT_LENGTH, v);
            Ok(ResponseFraming::Plain)
        }
        _ => {
            let all: Vec<String> = headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            Err(UntrustedFraming::ContentLength(all.join(", ")))
        }
    }
}

/// Why a request's framing headers are refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FramingError {
    /// 400: the Host header is missing (HTTP/1.1) or repeated.
    Host(&'static str),
    /// 501: a transfer coding other than exactly `chunked`.
    TransferEncoding(String),
}

/// Checks what hyper accepts but a proxy must not: a missing or repeated Host, and
/// a Transfer-Encoding other than exactly `chunked` (e.g. `gzip, chunked`, which hyper
/// decodes as chunked and a backend might not).
pub fn check_framing(headers: &HeaderMap, http11: bool) -> Result<(), FramingError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if http11 => return Err(FramingError::Host("missing Host header")),
        (Some(_), Some(_)) => return Err(FramingError::Host("repeated Host header")),
        _ => {}
    }
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        let second = te.next();
        let ok = second.is_none()
            && first
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !ok {
            let all: Vec<&str> = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .map(|v| v.to_str().unwrap_or("<non-ASCII>"))
                .collect();
            return Err(FramingError::TransferEncoding(all.join(", ")));
        }
    }
    Ok(())
}

/// Appends the client IP to `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`)
/// and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: Option<&HeaderValue>,
    host: Option<&HeaderValue>,
) {
    if let Some(ip) = client_ip {
        if !headers.contains_key(&X_FORWARDED_FOR) {
            // The usual case: the client's address alone, formatted once per connection.
            headers.insert(X_FORWARDED_FOR, ip.clone());
            return set_proto_and_host(headers, host);
        }
        let ip = ip.to_str().unwrap_or_default();
        let mut value = String::new();
        for v in headers.get_all(&X_FORWARDED_FOR).iter() {
            if let Ok(s) = v.to_str() {
                if !value.is_empty() {
                    value.push_str(", ");
                }
                value.push_str(s.trim());
            }
        }
        if !value.is_empty() {
            value.push_str(", ");
        }
        value.push_str(ip);
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    set_proto_and_host(headers, host);
}

/// The client's address as an `X-Forwarded-For` element (`None` for a Unix socket).
pub fn forwarded_for(ip: Option<std::net::IpAddr>) -> Option<HeaderValue> {
    ip.and_then(|ip| HeaderValue::try_from(ip.to_string()).ok())
}

fn set_proto_and_host(headers: &mut HeaderMap, host: Option<&HeaderValue>) {
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_closes_follows_the_version_and_connection() {
        use http::Version;
        assert!(!request_closes(&map(&[]), Version::HTTP_11));
        assert!(request_closes(
            &map(&[("connection", "Close")]),
            Version::HTTP_11
        ));
        assert!(request_closes(
            &map(&[("connection", "te, close")]),
            Version::HTTP_11
        ));
        assert!(request_closes(&map(&[]), Version::HTTP_10));
        assert!(!request_closes(
            &map(&[("connection", "keep-alive")]),
            Version::HTTP_10
        ));
        assert!(request_closes(&map(&[]), Version::HTTP_09));
        assert!(request_closes(
            &map(&[("connection", "keep-alive, close")]),
            Version::HTTP_10
        ));
        assert!(request_closes(
            &map(&[("connection", "close"), ("connection", "keep-alive")]),
            Version::HTTP_10
        ));
    }

    #[test]
    fn hop_by_hop_and_connection_listed_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        // A non-ASCII element does not hide the names beside it.
        let mut h = map(&[("x-secret", "1"), ("x-kept", "yes")]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret, \x80").unwrap(),
        );
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn framing_checks() {
        assert_eq!(
            check_framing(&map(&[]), true),
            Err(FramingError::Host("missing Host header"))
        );
        assert!(check_framing(&map(&[]), false).is_ok());
        assert_eq!(
            check_framing(&map(&[("host", "a"), ("host", "b")]), true),
            Err(FramingError::Host("repeated Host header"))
        );
        assert!(check_framing(
            &map(&[("host", "a"), ("transfer-encoding", "Chunked")]),
            true
        )
        .is_ok());
        assert_eq!(
            check_framing(
                &map(&[("host", "a"), ("transfer-encoding", "gzip, chunked")]),
                true
            ),
            Err(FramingError::TransferEncoding("gzip, chunked".into()))
        );
        assert!(check_framing(
            &map(&[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            true
        )
        .is_err());
    }

    #[test]
    fn trailer_is_end_to_end_and_te_trailers_is_seen() {
        let mut h = map(&[("trailer", "grpc-status"), ("te", "trailers")]);
        assert!(asks_trailers(&h));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h["trailer"], "grpc-status");
        assert!(!h.contains_key("te"));
        ask_trailers(&mut h);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["connection"], "te");
        assert!(asks_trailers(&map(&[("te", "gzip, Trailers")])));
        assert!(!asks_trailers(&map(&[("te", "gzip")])));
    }

    #[test]
    fn response_framing_checks() {
        let mut h = map(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        assert_eq!(
            check_response_framing(&mut h),
            Ok(ResponseFraming::ChunkedOverLength)
        );
        assert!(!h.contains_key("content-length"));
        let mut h = map(&[("transfer-encoding", "Chunked")]);
        assert_eq!(check_response_framing(&mut h), Ok(ResponseFraming::Plain));
        let mut h = map(&[("content-length", "5")]);
        assert_eq!(check_response_framing(&mut h), Ok(ResponseFraming::Plain));
        let mut h = map(&[("content-length", "5"), ("content-length", "5")]);
        assert_eq!(check_response_framing(&mut h), Ok(ResponseFraming::Plain));
        assert_eq!(h.get_all("content-length").iter().count(), 1);
        assert_eq!(h["content-length"], "5");
        let mut h = map(&[("content-length", "5, 6")]);
        assert!(check_response_framing(&mut h).is_err());
        for te in ["gzip", "gzip, chunked", "chunked, gzip"] {
            let mut h = map(&[("transfer-encoding", te)]);
            assert_eq!(
                check_response_framing(&mut h),
                Err(UntrustedFraming::TransferEncoding(te.into()))
            );
        }
        let mut h = map(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ]);
        assert!(check_response_framing(&mut h).is_err());
        assert_eq!(
            check_response_framing(&mut map(&[])),
            Ok(ResponseFraming::Plain)
        );
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let host = HeaderValue::from_static("example.com");
        let ip = forwarded_for(Some("127.0.0.1".parse().unwrap()));
        set_forwarded(&mut h, ip.as_ref(), Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, ip.as_ref(), None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, None, None);
        assert!(!h.contains_key("x-forwarded-for"));
    }
}
