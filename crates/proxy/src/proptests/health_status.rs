//! The active health check's reading of a response head (`upstream::health`): where
//! the head ends and the status of its status line, against a naive reference, on any
//! bytes a server might answer.

use proptest::prelude::*;

use crate::upstream::health::check::{find_head_end, parse_status};

/// RFC 9112 §4, read naively: `HTTP/1.x`, one space, three digits, then the reason
/// phrase after a space, or the end of the line (a missing reason is common and
/// accepted, as hyper does), or the end of the bytes given.
fn status_reference(head: &[u8]) -> Option<u16> {
    let text: Vec<char> = head.iter().map(|&b| b as char).collect();
    if text.len() < 12 {
        return None;
    }
    let prefix: String = text[..7].iter().collect();
    if prefix != "HTTP/1." || !text[7].is_ascii_digit() || text[8] != ' ' {
        return None;
    }
    let digits = &text[9..12];
    if !digits.iter().all(char::is_ascii_digit) {
        return None;
    }
    match text.get(12) {
        None | Some(' ' | '\r' | '\n') => {}
        Some(_) => return None,
    }
    let code: String = digits.iter().collect();
    code.parse().ok()
}

/// The offset just past the first `\r\n\r\n`, found the slow way.
fn head_end_reference(buf: &[u8]) -> Option<usize> {
    (0..buf.len())
        .find(|&i| buf[i..].starts_with(b"\r\n\r\n"))
        .map(|i| i + 4)
}

/// Pieces of the rest of a head.
const TAILS: &[&[u8]] = &[b"\r\n", b"\r\n\r\n", b"Server: x\r\n", b"\n", b"\r"];

/// A response a health endpoint (or something that is not one) might send.
fn answer() -> impl Strategy<Value = Vec<u8>> {
    let status_line = (
        prop::sample::select(
            &[
                "HTTP/1.1", "HTTP/1.0", "HTTP/1.9", "HTTP/2", "http/1.1", "HTTP/1.", "",
            ][..],
        ),
        prop::sample::select(&[" ", "", "  ", "\t"][..]),
        "[0-9]{0,4}|[0-9a-z]{3}",
        prop::sample::select(&[" OK", "", " ", "\t", "x"][..]),
        prop::sample::select(&["\r\n", "\n", ""][..]),
    )
        .prop_map(|(v, sp, code, reason, eol)| format!("{v}{sp}{code}{reason}{eol}").into_bytes());
    let rest = prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(TAILS).prop_map(<[u8]>::to_vec),
            1 => prop::collection::vec(any::<u8>(), 0..6),
        ],
        0..5,
    );
    prop_oneof![
        4 => (status_line, rest).prop_map(|(mut l, r)| {
            l.extend(r.concat());
            l
        }),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(super::config())]

    /// The status of any bytes is what the naive reading says (and never a panic).
    #[test]
    fn status_line_parser_matches_its_reference(bytes in answer()) {
        prop_assert_eq!(parse_status(&bytes), status_reference(&bytes),
            "{:?}", String::from_utf8_lossy(&bytes));
    }

    /// The head's end is the first blank line's end; a status comes only from a code of
    /// three digits, so it is below 1000.
    #[test]
    fn head_end_matches_its_reference(bytes in answer()) {
        let end = find_head_end(&bytes);
        prop_assert_eq!(end, head_end_reference(&bytes));
        if let Some(end) = end {
            prop_assert!(parse_status(&bytes[..end]).is_none_or(|s| s < 1000));
        }
    }
}
