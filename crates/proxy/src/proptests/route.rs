//! `http::route` and the absolute-form rewrite (`http::forward`): the routing host from a
//! Host header or a request target's authority, matching, and origin-form conversion.

use std::str::FromStr;

use http::uri::{Authority, Uri};
use http::HeaderValue;
use proptest::prelude::*;
use tidegate_config::HostMatch;

use crate::http::forward::to_origin_form;
use crate::http::route::{normalize, routing_host, select, Matcher};

/// A host as a client writes it: a name (maybe with the trailing dot of an FQDN), an
/// IPv4 address or a bracketed IPv6 address.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ("[a-zA-Z0-9-]{1,8}(\\.[a-zA-Z0-9-]{1,8}){0,3}", any::<bool>())
            .prop_map(|(h, dot)| if dot { h + "." } else { h }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        1 => prop::sample::select(&["[::1]", "[2001:db8::1]", "[fe80::1:2]", "[::ffff:10.0.0.1]"][..])
            .prop_map(str::to_owned),
    ]
}

/// An authority: optional user info, a host, an optional (possibly empty) port.
fn authority() -> impl Strategy<Value = String> {
    (
        prop::option::of("[a-z]{1,4}(:[a-z]{0,4})?@"),
        host(),
        prop::option::of("[0-9]{0,5}"),
    )
        .prop_map(|(user, host, port)| {
            let mut a = user.unwrap_or_default();
            a.push_str(&host);
            if let Some(p) = port {
                a.push(':');
                a.push_str(&p);
            }
            a
        })
}

/// A path and query in origin-form (RFC 9112 §3.2.1), possibly with percent-escapes.
fn origin_form() -> impl Strategy<Value = String> {
    (
        "(/[a-zA-Z0-9._~!$&'()*+,;=:@%-]{0,6}){1,4}",
        prop::option::of("[a-zA-Z0-9=&/?%-]{0,8}"),
    )
        .prop_map(|(path, query)| match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        })
}

/// A request target in any of the forms hyper hands over (CONNECT's authority-form is
/// refused before routing, but the http crate parses it, so it is here too), and
/// strings of URI characters that may or may not parse.
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => origin_form(),
        3 => (prop::sample::select(&["http", "https", "HTTP"][..]), authority(),
              prop_oneof![Just(String::new()), origin_form(), "\\?[a-z=]{0,5}"])
            .prop_map(|(scheme, auth, rest)| format!("{scheme}://{auth}{rest}")),
        1 => Just("*".to_owned()),
        1 => authority(),
        2 => "[ -~]{0,24}",
    ]
}

proptest! {
    #![proptest_config(super::config())]

    /// Any string as a Host header: no panic, and the routing host is a prefix of it
    /// that keeps a bracketed IPv6 address whole.
    #[test]
    fn routing_host_is_a_prefix_and_never_panics(h in prop_oneof![host(), authority(), any::<String>()]) {
        let r = routing_host(&h);
        prop_assert!(h.starts_with(r), "{:?} -> {:?}", h, r);
        if h.starts_with('[') && h.contains(']') {
            prop_assert!(r.ends_with(']'), "{:?} -> {:?}", h, r);
        }
    }

    /// The host of an absolute-form target's authority is the request's routing host:
    /// what `handle` puts in the Host header (the authority without user info) is a
    /// valid header value, and `routing_host` of it is the authority's host without
    /// the FQDN's trailing dot.
    #[test]
    fn the_authoritys_host_becomes_the_routing_host(a in authority()) {
        let Ok(auth) = Authority::from_str(&a) else {
            return Ok(());
        };
        // As `ConnService::handle` does it.
        let host_header = auth.as_str().rsplit('@').next().unwrap_or(auth.as_str());
        prop_assert!(HeaderValue::from_str(host_header).is_ok(), "{:?}", host_header);
        let want = auth.host().strip_suffix('.').unwrap_or(auth.host());
        prop_assert_eq!(routing_host(host_header), want, "authority {:?}", a);
    }

    /// The routing host matches an exact route for that host, in any case, with or
    /// without a port or the trailing dot.
    #[test]
    fn an_exact_host_route_matches_its_host_whatever_the_port_and_case(
        h in host(),
        port in prop::option::of(0u16..),
        upper in any::<bool>(),
    ) {
        let name = h.strip_suffix('.').unwrap_or(&h).to_owned();
        let route = Matcher::new(Some(HostMatch::Exact(name.clone())), "/".to_owned());
        let mut header = if upper { h.to_ascii_uppercase() } else { h.clone() };
        if let Some(p) = port {
            header = format!("{header}:{p}");
        }
        prop_assert!(select([(&route, ())], routing_host(&header), "/x").is_some(),
            "route {:?}, Host {:?}", name, header);
    }

    /// Matching never panics, whatever the routes' hosts and paths and the request's
    /// host and path (non-ASCII included: a suffix may end inside a character).
    #[test]
    fn matching_never_panics(
        routes in prop::collection::vec((prop::option::of((any::<bool>(), any::<String>())), any::<String>()), 0..4),
        host in any::<String>(),
        path in any::<String>(),
    ) {
        let matchers: Vec<Matcher> = routes
            .into_iter()
            .map(|(h, p)| {
                let h = h.map(|(suffix, s)| if suffix { HostMatch::Suffix(s) } else { HostMatch::Exact(s) });
                Matcher::new(h, p)
            })
            .collect();
        let _ = select(matchers.iter().zip(0..), routing_host(&host), &path);
    }

    /// Origin-form conversion: never panics; the result has no scheme or authority, is
    /// `*` only when the target was `*` and otherwise starts with `/`; it keeps the
    /// path and query; an origin-form target is left as it was.
    #[test]
    fn origin_form_conversion(t in target()) {
        let Ok(uri) = Uri::from_str(&t) else {
            return Ok(());
        };
        let mut out = uri.clone();
        to_origin_form(&mut out);
        let text = out.to_string();
        prop_assert!(out.scheme().is_none() && out.authority().is_none(), "{:?} -> {:?}", t, text);
        if t == "*" {
            prop_assert_eq!(text, "*");
        } else {
            prop_assert!(text.starts_with('/'), "{:?} -> {:?}", t, text);
            prop_assert_eq!(out.path(), if uri.path().is_empty() { "/" } else { uri.path() });
            prop_assert_eq!(out.query(), uri.query());
        }
        if uri.scheme().is_none() && uri.authority().is_none() {
            // (The http crate itself drops a fragment: "/#" is "/" already in `uri`.)
            prop_assert_eq!(&out, &uri);
            prop_assert_eq!(out.to_string(), uri.to_string());
        }
    }

    /// Normalizing is idempotent, and a normalized path is one a route's `path` may be
    /// (the config refuses prefixes no normalized request path could start with), with
    /// no `//`, dot segment, `%2F` or `%00` left.
    #[test]
    fn a_normalized_path_is_a_fixed_point_and_a_valid_route_path(
        path in "(/(\\.|\\.\\.|%2[eEfF]|%6[1aA]|%00|%[0-9a-fA-F]{0,2}|[a-zA-Z0-9._~!$&'()*+,;=:@-]{0,4}){0,3}){1,5}/?",
    ) {
        if let Ok(n) = normalize(&path) {
            let again = normalize(&n).map(|c| c.into_owned());
            prop_assert_eq!(again.as_deref(), Ok(&*n), "from {:?}", path);
            prop_assert!(tidegate_config::parse::route_path(&n).is_ok(), "{:?} from {:?}", n, path);
            prop_assert!(!n.contains("//") && !n.contains("/./") && !n.contains("/../"), "{:?}", n);
        }
    }

    /// Any path accepted as a route's `path` is already normalized: the route matches
    /// it as written.
    #[test]
    fn a_valid_route_path_is_already_normalized(
        path in "(/([a-zA-Z0-9._~-]{1,4}|%[0-9A-F]{2}|\\.{1,2})){1,4}/?",
    ) {
        if tidegate_config::parse::route_path(&path).is_ok() {
            let n = normalize(&path).map(|c| c.into_owned());
            prop_assert_eq!(n.as_deref(), Ok(&*path));
        }
    }
}
