//! Any text as a Host header or a request target: the routing host never panics and is
//! a prefix of the header; an authority's host is the routing host of what becomes the
//! Host header; matching never panics, whatever the routes; the Host check never panics;
//! a normalized path is normalized again to itself and is a valid route path. The same properties run as
//! proptests on stable (`crates/proxy/src/proptests/route.rs`).
#![no_main]

use std::str::FromStr;

use http::uri::Authority;
use libfuzzer_sys::fuzz_target;
use tidegate_config::HostMatch;
use tidegate_proxy::http::headers::check_host;
use tidegate_proxy::http::route::{normalize, routing_host, select, Matcher};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // "host\npath\nroute host\nroute path..." : the request, then routes.
    let mut parts = text.split('\n');
    let host = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();

    let _ = check_host(host.as_bytes());
    if let Ok(n) = normalize(path) {
        if path.starts_with('/') {
            let again = normalize(&n).map(|c| c.into_owned());
            assert_eq!(again.as_deref(), Ok(&*n), "{path:?}");
            if !n.contains(|c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
                assert!(tidegate_config::parse::route_path(&n).is_ok(), "{n:?} from {path:?}");
            }
        }
    }

    let r = routing_host(host);
    assert!(host.starts_with(r), "{host:?} -> {r:?}");

    if let Ok(auth) = Authority::from_str(host) {
        let header = auth.as_str().rsplit('@').next().unwrap_or(auth.as_str());
        // Only a well-formed `host[:port]`: the http crate also accepts oddities such
        // as "::[]" (host ""), which match no route whichever way they are read.
        let port = header.strip_prefix(auth.host());
        let well_formed = !auth.host().is_empty()
            && port.is_some_and(|p| {
                p.is_empty()
                    || p.strip_prefix(':')
                        .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
            });
        if well_formed {
            let want = auth.host().strip_suffix('.').unwrap_or(auth.host());
            assert_eq!(routing_host(header), want, "authority {host:?}");
        }
    }

    let mut routes = Vec::new();
    while let (Some(h), Some(p)) = (parts.next(), parts.next()) {
        let m = match h.strip_prefix('*') {
            Some(s) => Some(HostMatch::Suffix(s.to_owned())),
            None if h.is_empty() => None,
            None => Some(HostMatch::Exact(h.to_owned())),
        };
        routes.push(Matcher::new(m, p.to_owned()));
    }
    let _ = select(routes.iter().zip(0..), r, path);
});
