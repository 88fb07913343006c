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

/// End-to-end fields a `Connection` header may not remove (they are ignored there):
/// removing them would change what the request means to the upstream (its Host, its
/// framing, its credentials) or drop what tidegate itself sets. `Transfer-Encoding` is
/// hop-by-hop anyway; `Upgrade` is decided by [`restrict_upgrade`].
const NOT_HOP_BY_HOP: [HeaderName; 7] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::AUTHORIZATION,
    header::COOKIE,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// `HTTP2-Settings`: hop-by-hop (RFC 7540 §3.2.1), and only meaningful for an h2c
/// upgrade, which tidegate never tunnels.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

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

/// Removes hop-by-hop headers, including those named by `Connection` (but not the
/// end-to-end fields of `NOT_HOP_BY_HOP`, which `Connection` cannot remove). With `upgrade`,
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
        .filter(|n| !NOT_HOP_BY_HOP.contains(n))
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

/// RFC 9113 §8.2.3: an HTTP/2 client may split `Cookie` into several fields (browsers
/// do, for header compression); toward HTTP/1.1 they MUST be one field, the values
/// joined with `"; "`. An HTTP/1 server given several `Cookie` lines may keep only one
/// of them, or join them with a comma, which is not a cookie separator. One field or
/// none: nothing is touched (and nothing allocated).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    // Made of valid field values and "; ", so it is one; should it not be, the fields
    // stay as they came.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
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

/// A request rewritten for HTTP/2 toward an upstream (`protocol = "h2"`): version
/// HTTP/2, the target in absolute form (`:scheme` `https` over TLS, else `http`;
/// `:authority` from `Host`, else `fallback`, the server's address) and no `Host`
/// (`:authority` carries it), no connection-specific field (RFC 9113 §8.2.2; `TE:
/// trailers` stays). Idempotent: a request handed back unsent may be rewritten again.
pub fn to_h2_request<B>(req: &mut http::Request<B>, tls: bool, fallback: &HeaderValue) {
    *req.version_mut() = http::Version::HTTP_2;
    let h = req.headers_mut();
    let authority = h
        .remove(header::HOST)
        .and_then(|v| http::uri::Authority::try_from(v.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned())
        .or_else(|| http::uri::Authority::try_from(fallback.as_bytes()).ok());
    let h = req.headers_mut();
    let trailers = asks_trailers(h);
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
    h.remove(PROXY_CONNECTION);
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = authority;
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
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

/// Drops every field whose name holds an underscore (nginx's default,
/// `underscores_in_headers off`): CGI-style backends fold `X_Forwarded_Host` and
/// `X-Forwarded-Host` into one variable, so a look-alike could pass for a field
/// tidegate sets. Each dropped name is logged at debug.
pub fn drop_underscored(headers: &mut HeaderMap) {
    // The usual case: one scan of the names, nothing dropped, nothing allocated.
    if !headers.keys().any(|n| n.as_str().contains('_')) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        tracing::debug!(header = %name, "dropped a request header whose name has an underscore (underscores_in_headers = false)");
        headers.remove(name);
    }
}

/// Checks a Host value, or an absolute-form target's authority, is `uri-host [":" port]`
/// (RFC 9112 §3.2, RFC 3986 §3.2.2): a reg-name (unreserved characters, escapes and
/// sub-delims other than `,`, which no DNS name holds and some backends read as a list),
/// an IPv4 address (a reg-name by its syntax) or an IP-literal in brackets, then an
/// optional port of at most 65535. Empty is valid (RFC 9112 §3.2: an empty authority).
pub fn check_host(value: &[u8]) -> Result<(), &'static str> {
    if value.is_empty() {
        return Ok(());
    }
    let (host, port) = if value.starts_with(b"[") {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return Err("an IP literal without its closing \"]\"");
        };
        let literal = &value[1..end];
        if !is_ip_literal(literal) {
            return Err("an invalid IP literal");
        }
        match &value[end + 1..] {
            [] => (&value[..=end], None),
            [b':', port @ ..] => (&value[..=end], Some(port)),
            _ => return Err("characters after the IP literal that are not a port"),
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    if !host.starts_with(b"[") {
        if host.is_empty() {
            return Err("a port without a host");
        }
        if !is_reg_name(host) {
            return Err("a character a host name cannot hold");
        }
    }
    if let Some(port) = port {
        // `port = *DIGIT`; an empty port is valid (RFC 3986 §3.2.3).
        if !port.iter().all(u8::is_ascii_digit) {
            return Err("a port that is not a number");
        }
        let n = port.iter().try_fold(0u32, |n, &d| {
            n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        });
        if n.is_none_or(|n| n > 65_535) {
            return Err("a port over 65535");
        }
    }
    Ok(())
}

/// RFC 3986 reg-name, without `,` (see [`check_host`]).
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if b == b'%' {
            let hex = |j: usize| host.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(is_unreserved_or_sub_delim(b) && b != b',') {
            return false;
        }
        i += 1;
    }
    true
}

/// RFC 3986 `unreserved / sub-delims`: letters, digits, `-._~` and `!$&'()*+,;=`.
fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

/// The inside of `[...]`: an IPv6 address or an IPvFuture (`v` HEXDIG+ `.` then
/// unreserved, sub-delims or `:`).
fn is_ip_literal(inner: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = inner {
        let Some(dot) = rest.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| is_unreserved_or_sub_delim(b) || b == b':');
    }
    std::str::from_utf8(inner).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// The upgrade token every route allows unless it says otherwise (on GET only, as
/// RFC 6455 §4.1 requires).
pub const WEBSOCKET: &str = "websocket";

/// Keeps in a request's `Upgrade` only the protocols its route allows (`allowed`;
/// `websocket` on GET only, `get` says whether the method is; `h2c` never: tidegate does not tunnel HTTP/2), and removes
/// `HTTP2-Settings`. When nothing is left, `Upgrade` goes too and the request is
/// forwarded as a plain request, as nginx forwards one by default. Call before
/// [`is_upgrade`] decides the exchange.
pub fn restrict_upgrade(headers: &mut HeaderMap, get: bool, allowed: &[String]) {
    if !headers.contains_key(header::UPGRADE) {
        return;
    }
    headers.remove(HTTP2_SETTINGS);
    let mut all = 0;
    let kept: Vec<String> = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .inspect(|_| all += 1)
        .filter(|t| {
            let name = t.split('/').next().unwrap_or_default();
            let listed = allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(t) || a.eq_ignore_ascii_case(name));
            if name.eq_ignore_ascii_case(WEBSOCKET) {
                listed && get
            } else {
                listed && !name.eq_ignore_ascii_case("h2c")
            }
        })
        .collect();
    if kept.len() == all && headers.get_all(header::UPGRADE).iter().count() == 1 {
        return;
    }
    let value = (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join(", ")).ok())
        .flatten();
    match value {
        Some(v) => {
            headers.insert(header::UPGRADE, v);
        }
        None => {
            tracing::debug!(offered = ?headers.get_all(header::UPGRADE).iter().collect::<Vec<_>>(),
                "no protocol offered in Upgrade is allowed on this route; forwarded as a plain request");
            headers.remove(header::UPGRADE);
        }
    }
}

/// Whether a 101's `Upgrade` (`answered`) switches only to protocols the request
/// offered (`offered`, as forwarded): each token equal to an offered one without case,
/// or an offered token that has no version with a version added (`foo` offered, `foo/2`
/// answered).
pub fn upgrade_offered(offered: &HeaderValue, answered: Option<&HeaderValue>) -> bool {
    let tokens = |v: &HeaderValue| -> Vec<String> {
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let Some(answered) = answered else {
        return false;
    };
    let offered = tokens(offered);
    let answered = tokens(answered);
    !answered.is_empty()
        && answered.iter().all(|a| {
            let name = a.split('/').next().unwrap_or_default();
            offered.iter().any(|o| o == a || o == name)
        })
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

    #[test]
    fn split_cookie_fields_are_joined_with_a_semicolon_and_one_is_left_alone() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1, b"));
        join_cookies(&mut one);
        assert_eq!(
            one.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            ["a=1, b"]
        );
        let mut none = HeaderMap::new();
        join_cookies(&mut none);
        assert!(none.is_empty());
    }
    use super::*;

    #[test]
    fn a_request_for_h2_gets_its_authority_from_host_and_loses_connection_fields() {
        let mut req = http::Request::get("/x?y=1").body(()).unwrap();
        *req.headers_mut() = map(&[
            ("host", "app.test:8080"),
            ("connection", "te"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=5"),
            ("x-other", "kept"),
        ]);
        let fallback = HeaderValue::from_static("127.0.0.1:9");
        to_h2_request(&mut req, true, &fallback);
        assert_eq!(req.version(), http::Version::HTTP_2);
        assert_eq!(req.uri(), "https://app.test:8080/x?y=1");
        let h = req.headers();
        assert!(!h.contains_key("host") && !h.contains_key("connection"));
        assert!(!h.contains_key("transfer-encoding") && !h.contains_key("keep-alive"));
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-other"], "kept");
        // Again (a request handed back unsent): unchanged.
        to_h2_request(&mut req, true, &fallback);
        assert_eq!(req.uri(), "https://app.test:8080/x?y=1");
        // No Host: the server's address; plain: http.
        let mut req = http::Request::get("/").body(()).unwrap();
        to_h2_request(&mut req, false, &fallback);
        assert_eq!(req.uri(), "http://127.0.0.1:9/");
    }

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
    fn connection_cannot_remove_end_to_end_fields() {
        let mut h = map(&[
            (
                "connection",
                "Host, content-length, authorization, cookie, x-forwarded-for, x-forwarded-host, x-forwarded-proto, x-other",
            ),
            ("host", "a.com"),
            ("content-length", "3"),
            ("authorization", "Basic x"),
            ("cookie", "a=b"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "h"),
            ("x-forwarded-proto", "https"),
            ("x-other", "gone"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 7, "{h:?}");
        assert!(!h.contains_key("x-other"));
        assert_eq!(h["host"], "a.com");
    }

    #[test]
    fn underscored_names_are_dropped() {
        let mut h = map(&[("x_forwarded_host", "evil"), ("x-kept", "1"), ("a_b", "2")]);
        drop_underscored(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn host_is_uri_host_and_port() {
        for ok in [
            "",
            "a.com",
            "A.com:80",
            "a.com:",
            "10.0.0.1:65535",
            "[::1]",
            "[::1]:8080",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a_b.c~d",
            "a%20b",
        ] {
            assert_eq!(check_host(ok.as_bytes()), Ok(()), "{ok:?}");
        }
        for bad in [
            "a.com:80@evil.com",
            "a b",
            "a.com/../x",
            "a.com, b.com",
            "a.com,b.com",
            "a.com:99999999999",
            "a.com:65536",
            "a.com:8x",
            "a.com:80:80",
            ":80",
            "[::1",
            "[::1]x",
            "[nope]",
            "[::1]:99999",
            "a%zz",
            "a\\b",
        ] {
            assert!(check_host(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upgrade_is_restricted_to_what_the_route_allows() {
        let ws = ["websocket".to_owned()];
        let foo = ["websocket".to_owned(), "foo".to_owned()];
        let run = |pairs: &[(&str, &str)], get: bool, allowed: &[String]| {
            let mut h = map(pairs);
            restrict_upgrade(&mut h, get, allowed);
            h
        };
        // websocket on GET passes untouched.
        let h = run(
            &[("connection", "upgrade"), ("upgrade", "WebSocket")],
            true,
            &ws,
        );
        assert_eq!(h["upgrade"], "WebSocket");
        // Not on POST: a plain request.
        let h = run(
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            false,
            &ws,
        );
        assert!(!h.contains_key("upgrade"), "{h:?}");
        // h2c never, and HTTP2-Settings goes with it.
        let h = run(
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ],
            true,
            &foo,
        );
        assert!(
            !h.contains_key("upgrade") && !h.contains_key("http2-settings"),
            "{h:?}"
        );
        // Others only when listed; the allowed ones of a list are kept.
        let h = run(&[("upgrade", "foo")], false, &ws);
        assert!(!h.contains_key("upgrade"), "{h:?}");
        let h = run(&[("upgrade", "h2c, foo/2, bar")], false, &foo);
        assert_eq!(h["upgrade"], "foo/2");
        let h = run(&[("upgrade", "websocket"), ("upgrade", "foo")], true, &foo);
        assert_eq!(h["upgrade"], "websocket, foo");
    }

    #[test]
    fn a_101_must_switch_to_an_offered_protocol() {
        let v = HeaderValue::from_static;
        assert!(upgrade_offered(&v("websocket"), Some(&v("WebSocket"))));
        assert!(upgrade_offered(&v("websocket, foo"), Some(&v("foo"))));
        assert!(upgrade_offered(&v("foo"), Some(&v("foo/2"))));
        assert!(!upgrade_offered(&v("foo/1"), Some(&v("foo/2"))));
        assert!(!upgrade_offered(&v("websocket"), Some(&v("h2c"))));
        assert!(!upgrade_offered(
            &v("websocket"),
            Some(&v("websocket, h2c"))
        ));
        assert!(!upgrade_offered(&v("websocket"), Some(&v(""))));
        assert!(!upgrade_offered(&v("websocket"), None));
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
