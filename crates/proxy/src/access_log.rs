//! The access log: one line per HTTP request (`[server] access_log`), text or JSON, to
//! stdout or a file; off by default.
//!
//! The request path never waits for it: a finished request hands its [`Record`] (plain
//! values, reference-counted names; nothing formatted) to a bounded queue with a
//! non-blocking send, and a dedicated writer thread formats and writes the lines. A
//! full queue drops the line; drops are counted ([`AccessLog::dropped`], the metric
//! `tidegate_access_log_dropped_total`) and reported in a warning at most once a
//! second.
//!
//! The queue is bounded in bytes as well as in lines: a record owns copies of what it
//! logs (the path is copied and cut at [`MAX_LOGGED_PATH`], never a view of hyper's read
//! buffer, which would keep the whole request head alive), and the records waiting may
//! hold at most [`QUEUE_BYTES`] between them ([`Record::cost`]). So a stalled writer
//! (stdout to a pipe nobody reads) costs at most a few MB, whatever the requests
//! carry. A thread, not a task: a blocked stdout pipe or a slow disk must not hold a
//! runtime worker.
//!
//! Lines reach the file within [`FLUSH_EVERY`] of the request's end (at once on
//! [`AccessLog::flush`]); under load the writer batches, so it costs a few system calls
//! a second, not one per request. It ends, flushing, when every handle is gone.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Uri};

use tidegate_config::{AccessLogTo, LogFormat};

use crate::endpoint::PeerAddr;
use crate::registry::ServerId;

/// Lines waiting for the writer. At 100k requests/s this is ~80 ms of slack, enough
/// to ride out a disk hiccup; beyond it lines are dropped, not the proxy slowed.
pub const QUEUE: usize = 8192;

/// The most the queued records may hold between them, in bytes ([`Record::cost`]):
/// 8,192 ordinary lines fit, 8,192 with long paths do not.
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The longest path (with its query) logged; a longer one is cut at a character
/// boundary and ends with [`CUT_MARK`].
pub const MAX_LOGGED_PATH: usize = 4096;

/// What ends a path cut at [`MAX_LOGGED_PATH`].
pub const CUT_MARK: &str = "...";

/// How often at most a warning reports dropped lines.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Lines written are flushed this long after the first of them at the latest (and at
/// once on [`AccessLog::flush`]): one write per batch, not per line, under load.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// After a batch of more than one line the writer pauses this long, so that under load
/// it wakes a few hundred times a second rather than once per request (each wake is a
/// system call on the request path: the sender's futex wake).
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// A handle on the access log; cheap to clone. [`AccessLog::off`] logs nothing and
/// costs nothing.
#[derive(Debug, Clone)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    /// [`Record::cost`] of the records queued and not yet written (shared with the
    /// writer, which subtracts as it writes).
    queued: Arc<AtomicUsize>,
}

enum Msg {
    Line(Box<Record>),
    /// Acknowledged once every line sent before it is written and flushed.
    Flush(mpsc::Sender<()>),
}

/// Could not open the access log.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {}: {}", .path.display(), crate::errno::describe_io_error(.error))]
pub struct OpenError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: io::Error,
}

/// One request, as the writer formats it.
#[derive(Debug)]
pub struct Record {
    /// When the request head arrived.
    pub time: SystemTime,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The client.
    pub client: PeerAddr,
    /// Request method.
    pub method: Method,
    /// The request's HTTP version, as the client spoke it (`HTTP/1.1`, `HTTP/2.0`).
    pub protocol: http::Version,
    /// Request path and query, copied and cut at [`MAX_LOGGED_PATH`]
    /// ([`logged_path`]).
    pub path: Box<str>,
    /// Status of the response head sent; `None` when none was sent.
    pub status: Option<u16>,
    /// Response body bytes handed to the client connection.
    pub bytes_out: u64,
    /// The upstream server the request went to, if any.
    pub upstream: Option<ServerId>,
    /// The upstream socket's address (TCP); `None` for a Unix socket (the server's
    /// configured path is logged).
    pub upstream_peer: Option<SocketAddr>,
    /// From the request head to the end of the response.
    pub total: Duration,
    /// Getting the upstream connection (zero when reused from the pool).
    pub connect: Option<Duration>,
    /// From the request head to the upstream's response head.
    pub head: Option<Duration>,
}

/// The path and query of `uri` as logged: an owned copy, cut at [`MAX_LOGGED_PATH`]
/// (at a character boundary) and then ending with [`CUT_MARK`].
pub fn logged_path(uri: &Uri) -> Box<str> {
    let path = path_of(uri);
    if path.len() <= MAX_LOGGED_PATH {
        return path.into();
    }
    let mut end = MAX_LOGGED_PATH - CUT_MARK.len();
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = String::with_capacity(end + CUT_MARK.len());
    cut.push_str(&path[..end]);
    cut.push_str(CUT_MARK);
    cut.into_boxed_str()
}

// === impl Record ===

impl Record {
    /// The bytes this record holds on the heap, for the queue's byte budget: the box,
    /// the path, and an extension method's name (standard methods are inline).
    pub fn cost(&self) -> usize {
        let method = match self.method.as_str().len() {
            // An extension method over http's inline size is on the heap.
            n if n > 15 => n,
            _ => 0,
        };
        std::mem::size_of::<Record>() + self.path.len() + method
    }
}

// === impl AccessLog ===

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        AccessLog { inner: None }
    }

    /// Opens the access log `cfg` names and starts its writer thread (nothing for
    /// `to = "off"`). A file is opened for appending (created if missing) now, so an
    /// unwritable path fails the start, not the first request.
    pub fn start(cfg: &tidegate_config::AccessLog) -> Result<Self, OpenError> {
        let out: Box<dyn Write + Send> = match &cfg.to {
            AccessLogTo::Off => return Ok(AccessLog::off()),
            AccessLogTo::Stdout => Box::new(io::stdout()),
            AccessLogTo::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|error| OpenError {
                        path: path.clone(),
                        error,
                    })?,
            ),
        };
        Ok(Self::to_writer(out, cfg.format))
    }

    /// An access log writing to `out` (tests, embedding).
    pub fn to_writer(out: Box<dyn Write + Send>, format: LogFormat) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let inner = Arc::new(Inner {
            tx,
            dropped: AtomicU64::new(0),
            queued: queued.clone(),
        });
        let weak = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("tidegate-access-log".into())
            .spawn(move || writer(rx, out, format, weak, queued));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer; access log off");
            return AccessLog::off();
        }
        AccessLog { inner: Some(inner) }
    }

    /// True when lines are written somewhere (the request path skips building a
    /// record otherwise).
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues one line; never blocks. A full queue (in lines or in bytes) drops it
    /// (counted).
    pub fn send(&self, rec: Box<Record>) {
        let Some(inner) = &self.inner else { return };
        let cost = rec.cost();
        // Reserve the bytes first; give them back if the line does not go.
        let before = inner.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > QUEUE_BYTES {
            inner.queued.fetch_sub(cost, Ordering::Relaxed);
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match inner.tx.try_send(Msg::Line(rec)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                inner.queued.fetch_sub(cost, Ordering::Relaxed);
                inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Bytes the queued lines hold now ([`Record::cost`]); at most [`QUEUE_BYTES`].
    pub fn queued_bytes(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.queued.load(Ordering::Relaxed))
    }

    /// Lines dropped so far because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }

    /// Waits until every line queued before this call is written and flushed, at most
    /// `within`. `false` when that did not happen in time (or the writer is gone).
    pub fn flush(&self, within: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let (ack, done) = mpsc::channel();
        let deadline = std::time::Instant::now() + within;
        let mut msg = Msg::Flush(ack);
        // The queue may be full: retry until the deadline rather than block.
        loop {
            match inner.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }
}

/// The writer thread: formats and writes lines until every handle is gone.
fn writer(
    rx: Receiver<Msg>,
    out: Box<dyn Write + Send>,
    format: LogFormat,
    inner: std::sync::Weak<Inner>,
    queued: Arc<AtomicUsize>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    let mut reported = 0u64;
    let mut last_report: Option<std::time::Instant> = None;
    let mut failing = false;
    // When the oldest unflushed line was written.
    let mut dirty_since: Option<std::time::Instant> = None;
    loop {
        // Wait for a line, or until unflushed lines are due.
        let first = match dirty_since {
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            },
            Some(t) => match rx.recv_timeout(FLUSH_EVERY.saturating_sub(t.elapsed())) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut next = first;
        let mut acks = Vec::new();
        let mut lines = 0usize;
        // Everything queued now.
        while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
            match msg {
                Msg::Line(rec) => {
                    line.clear();
                    match format {
                        LogFormat::Text => format_text(&rec, &mut line),
                        LogFormat::Json => format_json(&rec, &mut line),
                    }
                    line.push('\n');
                    // Formatted: the record's bytes are free (the line is this
                    // thread's one buffer, and the BufWriter's is fixed).
                    queued.fetch_sub(rec.cost(), Ordering::Relaxed);
                    drop(rec);
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        report_write_error(&mut failing, &e);
                    }
                    lines += 1;
                    dirty_since.get_or_insert_with(std::time::Instant::now);
                }
                Msg::Flush(ack) => acks.push(ack),
            }
        }
        let due = dirty_since.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
        if due || !acks.is_empty() {
            match out.flush() {
                Ok(()) => failing = false,
                Err(e) => report_write_error(&mut failing, &e),
            }
            dirty_since = None;
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if lines > 1 {
            std::thread::sleep(BATCH_PAUSE);
        }
        if let Some(inner) = inner.upgrade() {
            let dropped = inner.dropped.load(Ordering::Relaxed);
            let due = last_report.is_none_or(|t| t.elapsed() >= DROP_REPORT_EVERY);
            if dropped > reported && due {
                tracing::warn!(
                    dropped = dropped - reported,
                    total = dropped,
                    "access log: lines dropped, the writer cannot keep up"
                );
                reported = dropped;
                last_report = Some(std::time::Instant::now());
            }
        }
    }
    if let Err(e) = out.flush() {
        report_write_error(&mut failing, &e);
    }
}

fn report_write_error(failing: &mut bool, e: &io::Error) {
    // Once per failing spell, not once per line.
    if !*failing {
        tracing::error!(error = %crate::errno::describe_io_error(e), "cannot write the access log");
        *failing = true;
    }
}

// === formatting ===

/// The upstream name and the address used, if the request reached an upstream.
fn upstream_fields(rec: &Record) -> Option<(&str, String)> {
    let server = rec.upstream.as_ref()?;
    let addr = match rec.upstream_peer {
        Some(peer) => peer.to_string(),
        None => server.addr.to_string(),
    };
    Some((&server.upstream, addr))
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `key=value` pairs; the path is quoted (a query may hold `=` and spaces arrive
/// percent-encoded, but a quote or backslash is escaped all the same).
pub fn format_text(rec: &Record, out: &mut String) {
    let _ = write!(
        out,
        "time={} listener={} client={} method={} protocol={:?} path=",
        Rfc3339(rec.time),
        rec.listener,
        rec.client,
        rec.method,
        rec.protocol
    );
    quote(out, &rec.path);
    match rec.status {
        Some(s) => {
            let _ = write!(out, " status={s}");
        }
        None => out.push_str(" status=-"),
    }
    let _ = write!(out, " bytes_out={}", rec.bytes_out);
    match upstream_fields(rec) {
        Some((name, addr)) => {
            let _ = write!(out, " upstream={name} upstream_addr={addr}");
        }
        None => out.push_str(" upstream=- upstream_addr=-"),
    }
    let _ = write!(out, " total_ms={:.3}", millis(rec.total));
    for (key, v) in [("connect_ms", rec.connect), ("head_ms", rec.head)] {
        match v {
            Some(d) => {
                let _ = write!(out, " {key}={:.3}", millis(d));
            }
            None => {
                let _ = write!(out, " {key}=-");
            }
        }
    }
}

/// One JSON object with the text format's keys; absent values are `null`.
pub fn format_json(rec: &Record, out: &mut String) {
    let _ = write!(out, "{{\"time\":\"{}\",\"listener\":", Rfc3339(rec.time));
    json_str(out, &rec.listener);
    out.push_str(",\"client\":");
    json_str(out, &rec.client.to_string());
    out.push_str(",\"method\":");
    json_str(out, rec.method.as_str());
    let _ = write!(out, ",\"protocol\":\"{:?}\"", rec.protocol);
    out.push_str(",\"path\":");
    json_str(out, &rec.path);
    match rec.status {
        Some(s) => {
            let _ = write!(out, ",\"status\":{s}");
        }
        None => out.push_str(",\"status\":null"),
    }
    let _ = write!(out, ",\"bytes_out\":{}", rec.bytes_out);
    match upstream_fields(rec) {
        Some((name, addr)) => {
            out.push_str(",\"upstream\":");
            json_str(out, name);
            out.push_str(",\"upstream_addr\":");
            json_str(out, &addr);
        }
        None => out.push_str(",\"upstream\":null,\"upstream_addr\":null"),
    }
    let _ = write!(out, ",\"total_ms\":{:.3}", millis(rec.total));
    for (key, v) in [("connect_ms", rec.connect), ("head_ms", rec.head)] {
        match v {
            Some(d) => {
                let _ = write!(out, ",\"{key}\":{:.3}", millis(d));
            }
            None => {
                let _ = write!(out, ",\"{key}\":null");
            }
        }
    }
    out.push('}');
}

fn path_of(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A time as RFC 3339 in UTC with milliseconds: `2025-06-01T12:00:00.123Z`.
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: UNIX_EPOCH + Duration::from_millis(1_748_779_200_123),
            listener: Arc::from("web"),
            client: PeerAddr::Tcp("127.0.0.1:50412".parse().unwrap()),
            method: Method::GET,
            protocol: http::Version::HTTP_11,
            path: "/x?q=\"1\"".into(),
            status: Some(200),
            bytes_out: 512,
            upstream: None,
            upstream_peer: None,
            total: Duration::from_micros(3215),
            connect: None,
            head: None,
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(Rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339(UNIX_EPOCH + Duration::from_millis(1_748_779_200_123)).to_string(),
            "2025-06-01T12:00:00.123Z"
        );
        assert_eq!(
            Rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn a_text_line_has_every_field_and_dashes_for_absent_ones() {
        let mut s = String::new();
        let mut rec = record();
        rec.path = "/x?q=1".into();
        format_text(&rec, &mut s);
        assert_eq!(
            s,
            "time=2025-06-01T12:00:00.123Z listener=web client=127.0.0.1:50412 method=GET \
             protocol=HTTP/1.1 path=\"/x?q=1\" status=200 bytes_out=512 upstream=- upstream_addr=- \
             total_ms=3.215 connect_ms=- head_ms=-"
        );
    }

    #[test]
    fn a_json_line_escapes_and_uses_null() {
        let mut s = String::new();
        let mut rec = record();
        rec.status = None;
        rec.listener = Arc::from("we\"b");
        format_json(&rec, &mut s);
        assert!(
            s.starts_with("{\"time\":\"2025-06-01T12:00:00.123Z\",\"listener\":\"we\\\"b\","),
            "{s}"
        );
        assert!(s.contains("\"status\":null"), "{s}");
        assert!(
            s.contains("\"method\":\"GET\",\"protocol\":\"HTTP/1.1\","),
            "{s}"
        );
        assert!(
            s.contains("\"upstream\":null,\"upstream_addr\":null"),
            "{s}"
        );
        assert!(s.ends_with("\"connect_ms\":null,\"head_ms\":null}"), "{s}");
    }

    #[test]
    fn lines_reach_the_writer_and_flush_waits_for_them() {
        #[derive(Clone, Default)]
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Shared::default();
        let log = AccessLog::to_writer(Box::new(sink.clone()), LogFormat::Text);
        for _ in 0..3 {
            log.send(Box::new(record()));
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(log.dropped(), 0);
        assert_eq!(log.queued_bytes(), 0, "written lines give their bytes back");
    }

    #[test]
    fn a_long_path_is_copied_cut_at_a_character_boundary() {
        let short = Uri::from_static("/a?b=c");
        assert_eq!(&*logged_path(&short), "/a?b=c");
        let long: Uri = format!("/{}?q=1", "a".repeat(2 * MAX_LOGGED_PATH))
            .parse()
            .unwrap();
        let cut = logged_path(&long);
        assert_eq!(cut.len(), MAX_LOGGED_PATH);
        assert!(cut.ends_with(CUT_MARK));
        assert!(long.path().starts_with(&cut[..cut.len() - CUT_MARK.len()]));
        // A path with bytes beyond ASCII (if the parser takes it) is cut between
        // characters.
        if let Ok(wide) = format!("/{}", "é".repeat(MAX_LOGGED_PATH)).parse::<Uri>() {
            let cut = logged_path(&wide);
            assert!(cut.len() <= MAX_LOGGED_PATH && cut.ends_with(CUT_MARK));
        }
    }

    #[test]
    fn a_stalled_writer_holds_at_most_the_byte_budget_and_the_rest_is_counted() {
        /// A writer that blocks until told to go on, like stdout to a pipe nobody reads.
        struct Stalled(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);
        impl Write for Stalled {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let (go, cv) = &*self.0;
                let mut g = go.lock().unwrap();
                while !*g {
                    g = cv.wait(g).unwrap();
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let log = AccessLog::to_writer(Box::new(Stalled(gate.clone())), LogFormat::Text);
        let long = format!("/{}", "x".repeat(MAX_LOGGED_PATH - 1));
        let n = 3000;
        for _ in 0..n {
            let mut rec = record();
            rec.path = long.clone().into();
            log.send(Box::new(rec));
            assert!(log.queued_bytes() <= QUEUE_BYTES);
        }
        // Far fewer than QUEUE lines fit in the byte budget: the rest were dropped
        // (but for the few the writer took into its 64 KiB buffer before it blocked).
        let fit = QUEUE_BYTES / record_cost_with(&long);
        let buffered = 64 * 1024 / MAX_LOGGED_PATH + 2;
        assert!(
            log.dropped() as usize >= n - fit - buffered,
            "{} dropped, {fit} fit",
            log.dropped()
        );
        assert!(log.dropped() > 0 && (log.dropped() as usize) < n);
        {
            let (go, cv) = &*gate;
            *go.lock().unwrap() = true;
            cv.notify_all();
        }
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(log.queued_bytes(), 0);
    }

    fn record_cost_with(path: &str) -> usize {
        let mut rec = record();
        rec.path = path.into();
        rec.cost()
    }
}
