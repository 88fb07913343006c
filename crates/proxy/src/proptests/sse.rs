//! The SSE event-boundary detector of the heartbeat (`http::body::Tail`): against a
//! naive reading of the whole stream, for random event streams in random chunks, and
//! the point of it: heartbeats inserted where it says so change no event a client sees.

use proptest::prelude::*;

use crate::http::body::Tail;

/// The heartbeat `http::body` sends (a comment line and a blank line).
const HEARTBEAT: &[u8] = b":\n\n";

/// Splits `stream` into lines as the SSE spec does (`end-of-line = CRLF / CR / LF`; a
/// CR followed by LF is one end of line). Returns the complete lines, and whether the
/// stream ends right after an end of line.
fn lines(stream: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < stream.len() {
        match stream[i] {
            b'\n' => {
                out.push(&stream[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                out.push(&stream[start..i]);
                i += if stream.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    (out, start == stream.len())
}

/// The naive reference: at an event boundary when nothing was sent yet, or when what
/// was sent ends with a blank line, i.e. two ends of line in a row (`\n\n`, `\r\r`,
/// `\r\n\r\n`, `\n\r\n`, ...).
fn at_boundary_reference(stream: &[u8]) -> bool {
    if stream.is_empty() {
        return true;
    }
    let (lines, ends_a_line) = lines(stream);
    // Only the last line empty and nothing before it is a stream that starts with a
    // blank line: no event was begun, but the detector (which keeps four bytes) cannot
    // know that from "\n" alone, and waits for more; the reference asks the same.
    ends_a_line && lines.len() >= 2 && lines.last().is_some_and(|l| l.is_empty())
}

/// An event as an EventSource hands it to a page: type, data, last event id.
type Event = (String, String, String);

/// The spec's "interpret an event stream" (HTML, server-sent events), naively: what
/// `stream` dispatches, in order. An event not ended by a blank line is not dispatched.
fn events(stream: &[u8]) -> Vec<Event> {
    let (lines, _) = lines(stream);
    let mut out = Vec::new();
    let (mut kind, mut data, mut id) = (String::new(), String::new(), String::new());
    for line in lines {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let name = if kind.is_empty() { "message" } else { &kind };
                out.push((name.to_owned(), std::mem::take(&mut data), id.clone()));
            }
            data.clear();
            kind.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => kind = value.to_owned(),
            "id" if !value.contains('\0') => id = value.to_owned(),
            _ => {}
        }
    }
    out
}

/// A random event stream: fields, comments and blank lines, with every kind of end of
/// line; or bytes from a small alphabet rich in line ends.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let eol = prop::sample::select(&["\n", "\r", "\r\n"][..]);
    let line = prop_oneof![
        3 => ("(data|event|id|retry)(: ?[a-z ]{0,5})?", eol.clone()).prop_map(|(l, e)| l + e),
        1 => (":[a-z ]{0,4}", eol.clone()).prop_map(|(l, e)| l + e),
        2 => eol.prop_map(str::to_owned),
        1 => "[a-z:]{0,4}",
    ];
    prop_oneof![
        3 => prop::collection::vec(line, 0..12).prop_map(|ls| ls.concat().into_bytes()),
        1 => prop::collection::vec(prop::sample::select(&b"\r\n\r\n\n:a d"[..]), 0..24),
    ]
}

/// `stream` cut at `cuts` (positions taken modulo its length, sorted): the frames an
/// upstream's body might deliver.
fn split(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    at.windows(2).map(|w| stream[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #![proptest_config(super::config())]

    /// After every frame, the detector says what the naive reading of everything sent
    /// so far says.
    #[test]
    fn the_boundary_detector_agrees_with_the_naive_reference(
        s in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut tail = Tail::default();
        let mut sent = Vec::new();
        prop_assert!(tail.at_boundary());
        for frame in split(&s, &cuts) {
            tail.push(&frame);
            sent.extend_from_slice(&frame);
            prop_assert_eq!(tail.at_boundary(), at_boundary_reference(&sent),
                "after {:?}", String::from_utf8_lossy(&sent));
        }
    }

    /// A heartbeat sent between any two frames where the detector allows one changes
    /// none of the events a client parses (type, data, id), nor their order.
    #[test]
    fn heartbeats_at_boundaries_change_no_event(
        s in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut tail = Tail::default();
        let mut with = Vec::new();
        for frame in split(&s, &cuts) {
            if tail.at_boundary() {
                with.extend_from_slice(HEARTBEAT);
            }
            tail.push(&frame);
            with.extend_from_slice(&frame);
        }
        if tail.at_boundary() {
            with.extend_from_slice(HEARTBEAT);
        }
        prop_assert_eq!(events(&with), events(&s),
            "{:?} became {:?}", String::from_utf8_lossy(&s), String::from_utf8_lossy(&with));
    }
}
