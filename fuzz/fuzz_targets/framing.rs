//! Any header block (lines `name: value`; the first byte picks HTTP/1.1 and an upgrade):
//! the framing check never panics, and what a proxy forwards after it never carries
//! Transfer-Encoding (so never both framings), nor a hop-by-hop header, nor a header
//! named in `Connection` (but the end-to-end fields it may not remove); every end-to-end
//! header stays. The same properties run as
//! proptests on stable (`crates/proxy/src/proptests/framing.rs`).
#![no_main]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tidegate_proxy::http::headers::{check_framing, is_upgrade, remove_hop_by_hop, request_closes};

const ALWAYS_HOP: &[&str] = &[
    "connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

fn headers(block: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// End-to-end fields `Connection` may name but not remove.
const NEVER_LISTED: &[&str] = &[
    "host",
    "content-length",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

fn listed(map: &HeaderMap) -> Vec<HeaderName> {
    map.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|e| HeaderName::from_bytes(e.trim_ascii()).ok())
        .filter(|n| !NEVER_LISTED.contains(&n.as_str()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, block)) = data.split_first() else {
        return;
    };
    let http11 = flags & 1 == 1;
    let map = headers(block);
    let _ = request_closes(&map, http::Version::HTTP_11);
    let _ = request_closes(&map, http::Version::HTTP_10);

    let mut request = map.clone();
    if check_framing(&request, http11).is_ok() {
        let upgrade = http11 && is_upgrade(&request);
        remove_hop_by_hop(&mut request, upgrade);
        assert!(
            !request.contains_key(header::TRANSFER_ENCODING),
            "{request:?}"
        );
    }

    let upgrade = flags & 2 == 2;
    let mut got = map.clone();
    remove_hop_by_hop(&mut got, upgrade);
    let named = listed(&map);
    for (name, value) in &map {
        let hop = ALWAYS_HOP.contains(&name.as_str()) || named.contains(name);
        if hop {
            let kept_for_upgrade = upgrade
                && (name == header::UPGRADE || name == header::CONNECTION)
                && map.contains_key(header::UPGRADE);
            assert!(
                kept_for_upgrade || !got.contains_key(name),
                "{name} passed: {got:?}"
            );
        } else {
            assert!(
                got.get_all(name).iter().any(|v| v == value),
                "{name} lost: {got:?}"
            );
        }
    }
});
