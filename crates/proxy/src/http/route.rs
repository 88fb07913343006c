//! Routing: the most specific matching route wins — an exact host beats a `*.suffix`
//! host (a longer suffix beats a shorter one), which beats a route without `host`; among
//! those, the longest path prefix. A path prefix matches at a segment boundary: `/api`
//! matches `/api`, `/api/x` and `/api?q`, not `/apix` (nginx would match `/apix`; that
//! surprise has sent requests to the wrong backend often enough). A prefix ending in `/`
//! matches everything below it.

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
            Some(HostMatch::Exact(h)) => {
                if !h.eq_ignore_ascii_case(host) {
                    return None;
                }
                (2, h.len())
            }
            Some(HostMatch::Suffix(s)) => {
                // `s` is ".example.com"; the host must have at least one more label.
                if host.len() <= s.len()
                    || !host.is_char_boundary(host.len() - s.len())
                    || !host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                {
                    return None;
                }
                (1, s.len())
            }
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
    fn ipv6_host_keeps_brackets() {
        assert_eq!(routing_host("[::1]:8080"), "[::1]");
        assert_eq!(routing_host("[::1]"), "[::1]");
        assert_eq!(routing_host("example.com"), "example.com");
    }
}
