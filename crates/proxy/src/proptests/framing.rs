//! `http::headers`: the framing checks and hop-by-hop removal on arbitrary header sets.
//!
//! What a client or an upstream sends becomes a `HeaderMap` through hyper; these
//! properties build any map a `HeaderMap` can hold (hyper's parser accepts a subset), so
//! they hold whatever hyper lets through.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use crate::http::headers::{
    check_framing, is_upgrade, remove_hop_by_hop, request_closes, set_forwarded, FramingError,
};

/// Names that matter to the code under test, and a few that don't.
const NAMES: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "authorization",
    "cookie",
    "content-type",
    "accept",
    "x-a",
    "x-b",
    "x-secret",
];

/// Hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1, plus `Proxy-Connection`).
/// `Trailer` is end to end (RFC 9110 §6.6.2): it stays unless `Connection` lists it.
const ALWAYS_HOP: &[&str] = &[
    "connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

/// End-to-end fields `Connection` may name but not remove (the names of end-to-end
/// fields are ignored there).
const NEVER_LISTED: &[&str] = &[
    "host",
    "content-length",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// A header name: mostly from [`NAMES`] (in any case), sometimes any token.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop::sample::select(NAMES), any::<u64>()).prop_map(|(n, bits)| mixed_case(n, bits)),
        1 => "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,10}",
    ]
}

fn mixed_case(s: &str, bits: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if bits >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Bytes a header value may hold: visible ASCII, space, tab and obs-text.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => 0x20u8..=0x7e,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..12,
    )
}

/// A `Connection` value: a list of names with odd spacing and empty elements, now and
/// then with a non-ASCII element.
fn connection_value() -> impl Strategy<Value = Vec<u8>> {
    let element = prop_oneof![
        6 => name().prop_map(String::into_bytes),
        1 => Just(b"close".to_vec()),
        1 => Just(Vec::new()),
        1 => value_bytes(),
    ];
    let sep = prop::sample::select(&[",", ", ", " ,", ",\t", " , "][..]);
    prop::collection::vec((element, sep, " {0,2}"), 1..5).prop_map(|parts| {
        let mut v = Vec::new();
        for (i, (e, sep, pad)) in parts.into_iter().enumerate() {
            if i > 0 {
                v.extend_from_slice(sep.as_bytes());
            }
            v.extend_from_slice(pad.as_bytes());
            v.extend_from_slice(&e);
        }
        v
    })
}

/// A `Transfer-Encoding` value: the one accepted, near misses, or anything.
fn transfer_encoding_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(
            &["chunked", "Chunked", " chunked ", "CHUNKED", "gzip, chunked", "chunked, gzip",
              "gzip", "identity", "", "chunked,", "chunk"][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => value_bytes(),
    ]
}

/// A header line: `(name, value)`, the value shaped after the name.
fn header() -> impl Strategy<Value = (HeaderName, HeaderValue)> {
    name()
        .prop_flat_map(|n| {
            let value = match n.to_ascii_lowercase().as_str() {
                "connection" => connection_value().boxed(),
                "transfer-encoding" => transfer_encoding_value().boxed(),
                _ => value_bytes().boxed(),
            };
            (Just(n), value)
        })
        .prop_filter_map("not a valid header line", |(n, v)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_bytes(&v).ok()?,
            ))
        })
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec(header(), 0..10).prop_map(|lines| {
        let mut map = HeaderMap::new();
        for (n, v) in lines {
            map.append(n, v);
        }
        map
    })
}

/// The names a `Connection` header lists, read naively: every comma-separated element
/// of every `Connection` line, trimmed, that is a header name (RFC 9110 §7.6.1: a proxy
/// removes each of them), except the end-to-end fields of [`NEVER_LISTED`].
fn listed_in_connection(map: &HeaderMap) -> Vec<HeaderName> {
    map.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|e| HeaderName::from_bytes(e.trim_ascii()).ok())
        .filter(|n| !NEVER_LISTED.contains(&n.as_str()))
        .collect()
}

/// What `check_framing` should answer, written out from its contract.
fn framing_reference(map: &HeaderMap, http11: bool) -> Result<(), FramingError> {
    let hosts = map.get_all(header::HOST).iter().count();
    if hosts == 0 && http11 {
        return Err(FramingError::Host("missing Host header"));
    }
    if hosts > 1 {
        return Err(FramingError::Host("repeated Host header"));
    }
    let te: Vec<&HeaderValue> = map.get_all(header::TRANSFER_ENCODING).iter().collect();
    let only_chunked = match te.as_slice() {
        [] => true,
        [one] => one.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        _ => false,
    };
    if only_chunked {
        Ok(())
    } else {
        let shown: Vec<&str> = te
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ASCII>"))
            .collect();
        Err(FramingError::TransferEncoding(shown.join(", ")))
    }
}

/// The map a proxy forwards, built naively: every line whose name is hop-by-hop or
/// listed in `Connection` dropped; for an upgrade, the first `Upgrade` kept and
/// `Connection: upgrade` set.
fn hop_by_hop_reference(map: &HeaderMap, upgrade: bool) -> HeaderMap {
    let listed = listed_in_connection(map);
    let mut out = HeaderMap::new();
    for (n, v) in map {
        let hop = ALWAYS_HOP.contains(&n.as_str()) || listed.contains(n);
        if !hop {
            out.append(n.clone(), v.clone());
        }
    }
    if upgrade {
        if let Some(v) = map.get(header::UPGRADE) {
            out.insert(header::UPGRADE, v.clone());
            out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    out
}

/// hyper's reading of one `Connection` token (`hyper::headers::connection_has`): a line
/// that is not visible ASCII is not read at all.
fn hyper_has(map: &HeaderMap, token: &str) -> bool {
    map.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether hyper's server closes the connection after this request's response, as its
/// request parser decides it (`proto::h1::role::Server::parse`): HTTP/1.1 keeps it
/// alive unless a line says `close`; HTTP/1.0 only when a line says `keep-alive` and
/// none says `close`, in whatever order.
fn hyper_closes(map: &HeaderMap, version: http::Version) -> bool {
    let mut keep_alive = version == http::Version::HTTP_11;
    let mut saw_close = false;
    for v in map.get_all(header::CONNECTION) {
        let one = |token: &str| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        if saw_close || one("close") {
            saw_close = true;
            keep_alive = false;
        } else if !keep_alive {
            keep_alive = one("keep-alive");
        }
    }
    !keep_alive
}

proptest! {
    #![proptest_config(super::config())]

    /// `check_framing` answers what its contract says, for any header set (and never
    /// panics).
    #[test]
    fn framing_check_matches_its_reference(map in headers(), http11 in any::<bool>()) {
        prop_assert_eq!(check_framing(&map, http11), framing_reference(&map, http11));
    }

    /// Whatever arrives, the forwarded request never carries both Content-Length and
    /// Transfer-Encoding: a request that passed the framing check loses its
    /// Transfer-Encoding (hyper decoded it; the upstream connection frames the body
    /// anew), with or without an upgrade, and so does every response.
    #[test]
    fn content_length_and_transfer_encoding_are_never_both_forwarded(
        map in headers(),
        http11 in any::<bool>(),
    ) {
        // As `forward` does: the checks, then the rewrite.
        let mut request = map.clone();
        if check_framing(&request, http11).is_ok() {
            let upgrade = http11 && is_upgrade(&request);
            remove_hop_by_hop(&mut request, upgrade);
            let host = request.get(header::HOST).cloned();
            set_forwarded(&mut request, Some(&HeaderValue::from_static("127.0.0.1")), host.as_ref());
            prop_assert!(!request.contains_key(header::TRANSFER_ENCODING), "{:?}", request);
        }
        let mut response = map;
        remove_hop_by_hop(&mut response, false);
        prop_assert!(!response.contains_key(header::TRANSFER_ENCODING), "{:?}", response);
    }

    /// Every hop-by-hop header and every header named in `Connection` (but the
    /// end-to-end fields it may not remove) is gone; every end-to-end header survives
    /// with all its values in order.
    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_headers_stay(map in headers(), upgrade in any::<bool>()) {
        let mut got = map.clone();
        remove_hop_by_hop(&mut got, upgrade);
        let want = hop_by_hop_reference(&map, upgrade);
        prop_assert_eq!(&got, &want, "from {:?}", map);
    }

    /// The readers of `Connection` that must agree with hyper (whether the request is
    /// an upgrade, whether hyper closes the connection after the response) read it as
    /// hyper does, and never panic.
    #[test]
    fn connection_readers_agree_with_hyper(map in headers()) {
        prop_assert_eq!(
            is_upgrade(&map),
            map.contains_key(header::UPGRADE) && hyper_has(&map, "upgrade")
        );
        // hyper also closes after a request with both Content-Length and
        // Transfer-Encoding, and removes the Content-Length: such a map never reaches
        // `request_closes`.
        if !(map.contains_key(header::CONTENT_LENGTH) && map.contains_key(header::TRANSFER_ENCODING)) {
            for version in [http::Version::HTTP_11, http::Version::HTTP_10] {
                prop_assert_eq!(request_closes(&map, version), hyper_closes(&map, version),
                    "{:?} {:?}", version, map);
            }
        }
    }
}
