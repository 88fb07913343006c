//! Routing: the most specific matching route wins — an exact host beats a `*.suffix`
//! host (a longer suffix beats a shorter one), which beats a route without `host`; among
//! those, the longest path prefix. A path prefix matches at a segment boundary: `/api`
//! matches `/api`, `/api/x` and `/api?q`, not `/apix` (nginx would match `/apix`; that
//! surprise has sent requests to the wrong backend often enough). A prefix ending in `/`
//! matches everything below it.
//!
//! Routes match a normalized copy of the path ([`normalize`]), as nginx's locations do:
//! `//admin`, `/./admin`, `/x/../admin` and `/%61dmin` are all `/admin`. Matching is
//! case-sensitive.

use std::borrow::Cow;

use tidegate_config::HostMatch;

/// A route's match half.
#[derive(Debug, Clone)]
pub struct Matcher {
    host: Option<HostMatch>,
    path: String,
}

impl Matcher {
    /// From the config route's `host` and `path`.
    pub fn new(host: Option<HostMatch>, path: String) -> Self {
        Matcher { host, path }
    }

    /// The rank of this route for `host` and `path`, or `None` when it doesn't match.
    /// Higher is more specific.
    pub fn rank(&self, host: &str, path: &str) -> Option<(u8, usize, usize)> {
        let host_rank = match &self.host {
            None => (0, 0),
            Some(h) => h.rank(host)?,
        };
        if !path_matches(&self.path, path) {
            return None;
        }
        Some((host_rank.0, host_rank.1, self.path.len()))
    }
}

fn path_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

/// The host used for routing: port and a trailing dot removed (case is ignored by the
/// matchers).
pub fn routing_host(host: &str) -> &str {
    let host = if host.starts_with('[') {
        // "[::1]:8080" -> "[::1]"
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Why a request path is refused (400) instead of routed: it has no single meaning
/// once normalized, so a backend could read it otherwise than the route did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`: a slash inside a segment (a backend that decodes it sees another path).
    EncodedSlash,
    /// `%00` or a NUL byte.
    Nul,
    /// A `..` segment above the root.
    AboveRoot,
    /// `%` not followed by two hex digits.
    BadEscape,
}

impl PathError {
    /// The one line the client's 400 carries.
    pub fn message(self) -> &'static str {
        match self {
            PathError::EncodedSlash => "the request path holds an encoded slash (%2F)",
            PathError::Nul => "the request path holds a NUL byte (%00)",
            PathError::AboveRoot => "the request path climbs above the root with \"..\"",
            PathError::BadEscape => "the request path holds a \"%\" not followed by two hex digits",
        }
    }
}

/// The path routes are matched against: percent-escapes of unreserved characters
/// (RFC 3986 §2.3) decoded and other escapes' hex digits in upper case, repeated slashes
/// merged, `.` and `..` segments resolved (RFC 3986 §5.2.4). Borrows `path` when it is
/// already normalized (nearly every request: no `%`, no `//`, no dot segment), so the
/// common case allocates nothing. A path that does not start with `/` (`*`) is left as
/// it is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    // Escapes first, so `%2E%2E` is a `..` segment (nginx decodes before resolving).
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0 => return Err(PathError::Nul),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(|&h| hex(h)),
                    bytes.get(i + 2).and_then(|&l| hex(l)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' => return Err(PathError::EncodedSlash),
                    _ if is_unreserved(v) => decoded.push(v),
                    _ => {
                        decoded.push(b'%');
                        decoded.push(HEX_UPPER[usize::from(hi)]);
                        decoded.push(HEX_UPPER[usize::from(lo)]);
                    }
                }
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Segments: the first element of the split is the empty string before the leading
    // `/`.
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = decoded.split(|&b| b == b'/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            b"" | b"." => trailing_slash = last,
            b".." => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            _ => {
                kept.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing_slash || kept.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was replaced by ASCII, so the bytes are still UTF-8; should they not
    // be, the path is refused rather than trusted.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadEscape)
}

/// True when [`normalize`] would return `path` unchanged without looking closer: no
/// `%`, no NUL, no empty segment but the last, no `.` or `..` segment.
fn is_normal(path: &[u8]) -> bool {
    if path.iter().any(|&b| b == b'%' || b == 0) {
        return false;
    }
    let mut segments = path.split(|&b| b == b'/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        match seg {
            b"." | b".." => return false,
            b"" if segments.peek().is_some() => return false,
            _ => {}
        }
    }
    true
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Index of the best route among `routes` for `host`/`path`.
pub fn select<'a, T>(
    routes: impl IntoIterator<Item = (&'a Matcher, T)>,
    host: &str,
    path: &str,
) -> Option<T> {
    routes
        .into_iter()
        .filter_map(|(m, t)| m.rank(host, path).map(|r| (r, t)))
        // max_by_key keeps the last of equals; ranks are unique per (host, path) because
        // duplicate routes are a config error.
        .max_by_key(|(r, _)| *r)
        .map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: Option<&str>, path: &str) -> Matcher {
        let host = host.map(|h| match h.strip_prefix('*') {
            Some(s) => HostMatch::Suffix(s.to_owned()),
            None => HostMatch::Exact(h.to_owned()),
        });
        Matcher::new(host, path.to_owned())
    }

    fn pick(routes: &[Matcher], host: &str, path: &str) -> Option<usize> {
        select(routes.iter().zip(0..), routing_host(host), path)
    }

    #[test]
    fn longest_prefix_wins_at_segment_boundaries() {
        let r = [m(None, "/"), m(None, "/api"), m(None, "/api/v2/")];
        assert_eq!(pick(&r, "x", "/"), Some(0));
        assert_eq!(pick(&r, "x", "/api"), Some(1));
        assert_eq!(pick(&r, "x", "/api/v1"), Some(1));
        assert_eq!(pick(&r, "x", "/apix"), Some(0));
        assert_eq!(pick(&r, "x", "/api/v2/x"), Some(2));
        assert_eq!(pick(&r, "x", "/api/v2"), Some(1));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_none_case_and_port_ignored() {
        let r = [
            m(None, "/"),
            m(Some("*.example.com"), "/"),
            m(Some("ci.example.com"), "/"),
        ];
        assert_eq!(pick(&r, "CI.Example.com:8080", "/"), Some(2));
        assert_eq!(pick(&r, "a.b.example.com", "/"), Some(1));
        assert_eq!(pick(&r, "example.com", "/"), Some(0));
        assert_eq!(pick(&r, "ci.example.com.", "/x"), Some(2));
    }

    #[test]
    fn no_match_is_none() {
        let r = [m(Some("a.test"), "/")];
        assert_eq!(pick(&r, "b.test", "/"), None);
    }

    #[test]
    fn normalize_decodes_unreserved_merges_slashes_and_resolves_dots() {
        let n = |p: &str| normalize(p).map(|c| c.into_owned());
        for (from, to) in [
            ("//admin", "/admin"),
            ("/./admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/x/%2e%2E/y/%2E%2e/admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("//", "/"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a%7Eb%5f", "/a~b_"),
            ("/a..b/.c", "/a..b/.c"),
        ] {
            assert_eq!(n(from), Ok(to.to_owned()), "{from}");
        }
        for (bad, err) in [
            ("/static/..%2Fadmin", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2E%2E/x", PathError::AboveRoot),
            ("/a%00", PathError::Nul),
            ("/a\0b", PathError::Nul),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
        ] {
            assert_eq!(n(bad), Err(err), "{bad}");
        }
    }

    #[test]
    fn normalize_borrows_a_normal_path() {
        for p in ["/", "/admin", "/a/b/", "/a.b/..c", "*", "/a;b=c/d@e"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn ipv6_host_keeps_brackets() {
        assert_eq!(routing_host("[::1]:8080"), "[::1]");
        assert_eq!(routing_host("[::1]"), "[::1]");
        assert_eq!(routing_host("example.com"), "example.com");
    }
}
