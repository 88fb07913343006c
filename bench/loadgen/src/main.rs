//! Benchmark helpers for `bench/run`. Every subcommand talks to loopback only and every
//! loop is bounded (a count or a deadline).
//!
//! ```text
//! loadgen hold --addr 127.0.0.1:P --n 10000 [--path /] [--mode full|sse]
//!              [--concurrency 256] [--timeout 60] [--tls SNI [--alpn http/1.1]]
//!     Opens N client connections, sends one GET on each and reads the response (mode
//!     full: the whole response; mode sse: the head and the first event), then prints
//!     `READY ok=.. non2xx=.. failed=.. elapsed_ms=..` and holds every connection open,
//!     idle. Commands on stdin: `check` prints `ALIVE open=.. closed=..`; EOF (or
//!     `quit`) closes everything and exits.
//! loadgen rate --addr 127.0.0.1:P --rate 4000 --conns 40 --duration 10 [--warmup 2]
//!              [--path /]
//!     Open-loop fixed request rate: request i of connection k is due at
//!     start + (k + i*conns)/rate, so the sends are spread evenly over time and over the
//!     connections (one request in flight per connection). Latency is measured to the end
//!     of the response from the send, or from the time the request was due when its
//!     connection was still busy with the previous one then (so a stall is not hidden:
//!     no coordinated omission). Prints one JSON line with the counts and the
//!     percentiles of the measured period (after the warm-up). Takes --tls too.
//! loadgen handshakes --addr 127.0.0.1:P --tls SNI --conns 64 --duration 10 [--warmup 2]
//!              [--path /] [--alpn http/1.1]
//!     A new TLS connection per request: each of --conns loops connects, makes a full
//!     handshake (no resumption), sends one GET with `Connection: close`, reads the
//!     response and waits for the server to close. Prints one JSON line: completed
//!     connections (2xx) per second of the measured period, errors, what the first
//!     handshake negotiated, and the percentiles of connect-to-response times.
//!
//! --tls SNI: connect with TLS (rustls), sending SNI; the certificate is not checked and
//! sessions are never resumed (see `tls.rs`). --alpn: comma-separated, default http/1.1.
//! loadgen sse-server --listen 127.0.0.1:P
//!     Answers every request with `text/event-stream` (chunked), sends one event and
//!     holds the stream until the peer closes. `/ready` answers 200 `ok` and closes.
//! loadgen sink --listen 127.0.0.1:P
//!     HTTP/1.1 keep-alive server that reads every request body to the end and answers
//!     200 `received N`.
//! loadgen upload --addr 127.0.0.1:P --path /sink --bytes N
//! loadgen download --addr 127.0.0.1:P --path /big
//!     One request; prints one JSON line {"status":..,"bytes":..,"secs":..}.
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

mod tls;
use tls::{Conn, Connector};

type Opts = HashMap<String, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        usage("no subcommand");
    };
    let mut opts = Opts::new();
    let mut it = args[1..].iter();
    while let Some(k) = it.next() {
        let Some(key) = k.strip_prefix("--") else { usage(&format!("unexpected argument {k}")) };
        let Some(v) = it.next() else { usage(&format!("--{key} needs a value")) };
        opts.insert(key.to_owned(), v.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cmd.as_str() {
            "hold" => hold(&opts).await,
            "rate" => rate(&opts).await,
            "handshakes" => handshakes(&opts).await,
            "sse-server" => sse_server(&opts).await,
            "sink" => sink(&opts).await,
            "upload" => upload(&opts).await,
            "download" => download(&opts).await,
            other => usage(&format!("unknown subcommand {other}")),
        }
    });
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}\nsubcommands: hold, rate, handshakes, sse-server, sink, upload, download (see the source header)");
    std::process::exit(2);
}

fn req<'a>(o: &'a Opts, k: &str) -> Result<&'a str, String> {
    o.get(k).map(String::as_str).ok_or_else(|| format!("--{k} is required"))
}

fn num<T: std::str::FromStr>(o: &Opts, k: &str, default: Option<T>) -> Result<T, String> {
    match o.get(k) {
        Some(v) => v.parse().map_err(|_| format!("--{k}: not a number: {v}")),
        None => default.ok_or_else(|| format!("--{k} is required")),
    }
}

fn addr(o: &Opts, k: &str) -> Result<SocketAddr, String> {
    req(o, k)?.parse().map_err(|e| format!("--{k}: {e}"))
}

/// Plain TCP, or TLS with `--tls SNI` (and `--alpn`).
fn connector(o: &Opts) -> Result<Connector, String> {
    Connector::new(o.get("tls").map(String::as_str), o.get("alpn").map(String::as_str).unwrap_or("http/1.1"))
}

// ---------------------------------------------------------------------------------
// hold: many idle keep-alive connections (or open SSE streams)

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Full,
    Sse,
}

async fn hold(o: &Opts) -> Result<(), String> {
    let target = addr(o, "addr")?;
    let n: usize = num(o, "n", None)?;
    let path = o.get("path").cloned().unwrap_or_else(|| "/".into());
    let mode = match o.get("mode").map(String::as_str).unwrap_or("full") {
        "full" => Mode::Full,
        "sse" => Mode::Sse,
        m => return Err(format!("--mode: full or sse, not {m}")),
    };
    let concurrency: usize = num(o, "concurrency", Some(256))?;
    let timeout = Duration::from_secs(num(o, "timeout", Some(60))?);
    let connector = connector(o)?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: tidegate-bench\r\nAccept: */*\r\n\r\n"
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let request = request.clone();
        let connector = connector.clone();
        tasks.spawn(async move {
            let r = tokio::time::timeout_at(deadline, one_request(&connector, target, &request, mode)).await;
            drop(permit);
            match r {
                Ok(r) => r,
                Err(_) => Err("timed out".to_owned()),
            }
        });
    }
    let mut streams = Vec::with_capacity(n);
    let (mut non2xx, mut failed) = (0usize, 0usize);
    let mut errors: HashMap<String, usize> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((stream, status))) => {
                if (200..300).contains(&status) {
                    streams.push(stream);
                } else {
                    non2xx += 1;
                    *errors.entry(format!("status {status}")).or_default() += 1;
                    streams.push(stream);
                }
            }
            Ok(Err(e)) => {
                failed += 1;
                *errors.entry(e).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                *errors.entry(format!("task: {e}")).or_default() += 1;
            }
        }
    }
    let ok = streams.len() - non2xx;
    for (e, count) in &errors {
        eprintln!("loadgen hold: {count} x {e}");
    }
    println!(
        "READY ok={ok} non2xx={non2xx} failed={failed} elapsed_ms={}",
        started.elapsed().as_millis()
    );
    std::io::stdout().flush().ok();

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Bounded by the orchestrator: it closes stdin (or kills us) when done.
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "check" => {
                let (mut open, mut closed) = (0usize, 0usize);
                let mut buf = [0u8; 4096];
                for s in &streams {
                    // On the socket itself (below TLS): only whether the peer closed it.
                    match s.tcp().try_read(&mut buf) {
                        Ok(0) => closed += 1,
                        Ok(_) => open += 1, // data (e.g. an SSE heartbeat): still open
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                        Err(_) => closed += 1,
                    }
                }
                println!("ALIVE open={open} closed={closed}");
                std::io::stdout().flush().ok();
            }
            "quit" => break,
            _ => {}
        }
    }
    drop(streams);
    Ok(())
}

async fn one_request(
    connector: &Connector,
    target: SocketAddr,
    request: &str,
    mode: Mode,
) -> Result<(Conn, u16), String> {
    let mut s = connector.connect(target).await?;
    s.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut head_end = None;
    let mut status = 0u16;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    loop {
        if buf.len() > 1 << 20 {
            return Err("response too large".into());
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(if head_end.is_some() {
                "closed during the body".into()
            } else {
                "closed before the response head".into()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if head_end.is_none() {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                head_end = Some(pos + 4);
                let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or("");
                status = status_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
                for line in lines {
                    let Some((k, v)) = line.split_once(':') else { continue };
                    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                    if k == "content-length" {
                        content_length = v.parse().ok();
                    } else if k == "transfer-encoding" && v.contains("chunked") {
                        chunked = true;
                    }
                }
            }
        }
        if let Some(h) = head_end {
            let body = &buf[h..];
            let done = match mode {
                Mode::Sse if (200..300).contains(&status) => find(body, b"\n\n").is_some(),
                _ => {
                    if let Some(cl) = content_length {
                        body.len() >= cl
                    } else if chunked {
                        body.ends_with(b"0\r\n\r\n")
                    } else {
                        // No framing: the body ends at close, so this connection can't be
                        // kept: keep reading until the close reports it.
                        false
                    }
                }
            };
            if done {
                return Ok((s, status));
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------
// rate: open-loop fixed request rate, latency percentiles

/// One client task's counts (rate and handshakes), then all of them merged.
#[derive(Default)]
struct RateStats {
    lat_us: Vec<u32>,
    ok: u64,
    non2xx: u64,
    errors: u64,
    sent: u64,
    /// handshakes: 2xx connections of the whole run, warm-up included (the proxy's CPU
    /// is read over all of it).
    ok_all: u64,
    error_kinds: HashMap<String, u64>,
}

impl RateStats {
    fn merge(&mut self, st: RateStats) {
        self.lat_us.extend(st.lat_us);
        self.ok += st.ok;
        self.non2xx += st.non2xx;
        self.errors += st.errors;
        self.sent += st.sent;
        self.ok_all += st.ok_all;
        for (k, v) in st.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
    }

    /// The `q` percentile of the latencies; `lat_us` must be sorted.
    fn pct(&self, q: f64) -> u32 {
        if self.lat_us.is_empty() {
            return 0;
        }
        let idx = ((q / 100.0) * self.lat_us.len() as f64).ceil() as usize;
        self.lat_us[idx.clamp(1, self.lat_us.len()) - 1]
    }
}

async fn rate(o: &Opts) -> Result<(), String> {
    let target = addr(o, "addr")?;
    let path = o.get("path").cloned().unwrap_or_else(|| "/".into());
    let rate: f64 = num(o, "rate", None)?;
    let conns: usize = num(o, "conns", Some(40))?;
    let duration: f64 = num(o, "duration", None)?;
    let warmup: f64 = num(o, "warmup", Some(0.0))?;
    if rate <= 0.0 || conns == 0 || duration <= 0.0 {
        return Err("--rate, --conns and --duration must be positive".into());
    }
    let connector = connector(o)?;
    let request: Arc<[u8]> =
        format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: tidegate-bench\r\nAccept: */*\r\n\r\n")
            .into_bytes()
            .into();
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let s = connector.connect(target).await.map_err(|e| format!("{target}: {e}"))?;
        streams.push(s);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(warmup + duration);
    let hard_end = end + Duration::from_secs(30);
    let mut tasks = tokio::task::JoinSet::new();
    for (k, stream) in streams.into_iter().enumerate() {
        let request = request.clone();
        let connector = connector.clone();
        tasks.spawn(async move {
            let mut st = RateStats::default();
            let mut conn = Some(stream);
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut j: u64 = 0;
            let mut prev_done = start;
            loop {
                let due = start + Duration::from_secs_f64((k as f64 + (j * conns as u64) as f64) / rate);
                j += 1;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                // Latency runs from when the request was due if the connection was still
                // busy then (the wait counts: no coordinated omission), else from the
                // actual send: the timer's own lateness (up to 1 ms) is not the proxy's.
                let begin = if prev_done > due { due } else { tokio::time::Instant::now() };
                let measured = due >= measure_from;
                let result = tokio::time::timeout_at(hard_end, async {
                    let s = match conn.as_mut() {
                        Some(s) => s,
                        None => {
                            buf.clear();
                            conn.insert(connector.connect(target).await?)
                        }
                    };
                    s.write_all(&request).await.map_err(|e| format!("write: {e}"))?;
                    read_response(s, &mut buf).await
                })
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
                let done = tokio::time::Instant::now();
                prev_done = done;
                if measured {
                    st.sent += 1;
                }
                match result {
                    Ok((status, keep)) => {
                        if !keep {
                            conn = None;
                        }
                        if measured {
                            if (200..300).contains(&status) {
                                st.ok += 1;
                                let us = done.saturating_duration_since(begin).as_micros().min(u32::MAX as u128) as u32;
                                st.lat_us.push(us);
                            } else {
                                st.non2xx += 1;
                                *st.error_kinds.entry(format!("status {status}")).or_default() += 1;
                            }
                        }
                    }
                    Err(e) => {
                        conn = None;
                        if measured {
                            st.errors += 1;
                            *st.error_kinds.entry(e).or_default() += 1;
                        }
                    }
                }
                if tokio::time::Instant::now() >= hard_end {
                    break;
                }
            }
            st
        });
    }
    let mut all = RateStats::default();
    while let Some(r) = tasks.join_next().await {
        all.merge(r.map_err(|e| e.to_string())?);
    }
    for (e, n) in &all.error_kinds {
        eprintln!("loadgen rate: {n} x {e}");
    }
    all.lat_us.sort_unstable();
    let pct = |q: f64| all.pct(q);
    println!(
        "{{\"sent\":{},\"ok\":{},\"non2xx\":{},\"errors\":{},\"rate\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        all.sent,
        all.ok,
        all.non2xx,
        all.errors,
        all.ok as f64 / duration,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        all.lat_us.last().copied().unwrap_or(0)
    );
    Ok(())
}

/// Reads one response on a keep-alive connection. Returns the status and whether the
/// connection can be reused. Bytes past the response stay in `buf` (there should be none:
/// one request in flight).
async fn read_response<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or("");
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
            let (mut cl, mut chunked, mut close) = (None::<usize>, false, false);
            for line in lines {
                let Some((k, v)) = line.split_once(':') else { continue };
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                match k.as_str() {
                    "content-length" => cl = v.parse().ok(),
                    "transfer-encoding" => chunked = v.contains("chunked"),
                    "connection" => close = v.contains("close"),
                    _ => {}
                }
            }
            let body_start = pos + 4;
            let body_end = loop {
                let body = &buf[body_start..];
                if let Some(n) = cl {
                    if body.len() >= n {
                        break body_start + n;
                    }
                } else if chunked {
                    if let Some(p) = find(body, b"0\r\n\r\n") {
                        break body_start + p + 5;
                    }
                } else {
                    return Err("response without Content-Length or chunked framing".into());
                }
                let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("closed during the body".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            buf.drain(..body_end);
            return Ok((status, !close));
        }
        if buf.len() > 1 << 20 {
            return Err("response head too large".into());
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------------
// handshakes: a new TLS connection per request

async fn handshakes(o: &Opts) -> Result<(), String> {
    let target = addr(o, "addr")?;
    req(o, "tls")?;
    let path = o.get("path").cloned().unwrap_or_else(|| "/".into());
    let conns: usize = num(o, "conns", Some(64))?;
    let duration: f64 = num(o, "duration", None)?;
    let warmup: f64 = num(o, "warmup", Some(0.0))?;
    if conns == 0 || duration <= 0.0 || warmup < 0.0 {
        return Err("--conns and --duration must be positive".into());
    }
    let connector = connector(o)?;
    let request: Arc<[u8]> = format!(
        "GET {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: tidegate-bench\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
    .into();
    // What the handshake negotiates, from one connection before the load.
    let first = connector.connect(target).await.map_err(|e| format!("{target}: {e}"))?;
    let negotiated = first.negotiated().ok_or("not a TLS connection")?;
    drop(first);
    let start = tokio::time::Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(duration);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (connector, request) = (connector.clone(), request.clone());
        tasks.spawn(async move {
            let mut st = RateStats::default();
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            loop {
                let begin = tokio::time::Instant::now();
                if begin >= end {
                    break;
                }
                // Bounded: a connection that hangs counts as an error after 10 s.
                let r = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut s = connector.connect(target).await?;
                    s.write_all(&request).await.map_err(|e| format!("write: {e}"))?;
                    buf.clear();
                    let (status, _) = read_response(&mut s, &mut buf).await?;
                    let done = tokio::time::Instant::now();
                    // The server closes after `Connection: close`: wait for it, so the
                    // close is orderly (no reset for unread bytes) and its side keeps
                    // the TIME_WAIT. Its close_notify may or may not come first.
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                    Ok::<_, String>((status, done))
                })
                .await
                .unwrap_or_else(|_| Err("timed out (10 s)".into()));
                if matches!(r, Ok((status, _)) if (200..300).contains(&status)) {
                    st.ok_all += 1;
                }
                if begin < measure_from {
                    continue;
                }
                match r {
                    Ok((status, done)) if (200..300).contains(&status) => {
                        st.ok += 1;
                        st.lat_us.push(done.saturating_duration_since(begin).as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok((status, _)) => {
                        st.non2xx += 1;
                        *st.error_kinds.entry(format!("status {status}")).or_default() += 1;
                    }
                    Err(e) => {
                        st.errors += 1;
                        *st.error_kinds.entry(e).or_default() += 1;
                    }
                }
            }
            st
        });
    }
    let mut all = RateStats::default();
    while let Some(r) = tasks.join_next().await {
        all.merge(r.map_err(|e| e.to_string())?);
    }
    for (e, n) in &all.error_kinds {
        eprintln!("loadgen handshakes: {n} x {e}");
    }
    all.lat_us.sort_unstable();
    let pct = |q: f64| all.pct(q);
    println!(
        "{{\"ok_all\":{},\"ok\":{},\"non2xx\":{},\"errors\":{},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"version\":\"{}\",\"cipher\":\"{}\",\"group\":\"{}\",\"alpn\":\"{}\"}}",
        all.ok_all,
        all.ok,
        all.non2xx,
        all.errors,
        all.ok as f64 / duration,
        pct(50.0),
        pct(99.0),
        all.lat_us.last().copied().unwrap_or(0),
        negotiated.version,
        negotiated.cipher,
        negotiated.group,
        negotiated.alpn,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// sse-server: one event, then hold

async fn sse_server(o: &Opts) -> Result<(), String> {
    let listen = addr(o, "listen")?;
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("bind {listen}: {e}"))?;
    eprintln!("loadgen sse-server: listening on {listen}");
    loop {
        let (mut s, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("loadgen sse-server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            s.set_nodelay(true).ok();
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 2048];
            let head = loop {
                let Ok(n) = s.read(&mut chunk).await else { return };
                if n == 0 || buf.len() > 64 * 1024 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(pos) = find(&buf, b"\r\n\r\n") {
                    break String::from_utf8_lossy(&buf[..pos]).to_string();
                }
            };
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            if path.starts_with("/ready") {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                    .await;
                return;
            }
            let event = b"data: hello\n\n";
            let msg = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n",
                event.len(),
                std::str::from_utf8(event).unwrap()
            );
            if s.write_all(msg.as_bytes()).await.is_err() {
                return;
            }
            // Hold the stream until the peer goes away; discard anything it sends.
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------
// sink: read every body to the end

async fn sink(o: &Opts) -> Result<(), String> {
    let listen = addr(o, "listen")?;
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("bind {listen}: {e}"))?;
    eprintln!("loadgen sink: listening on {listen}");
    loop {
        let (s, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("loadgen sink: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        s.set_nodelay(true).ok();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let mut body = req.into_body();
                let mut n: u64 = 0;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => {
                            if let Some(d) = f.data_ref() {
                                n += d.len() as u64;
                            }
                        }
                        Err(e) => {
                            eprintln!("loadgen sink: body error after {n} bytes: {e}");
                            break;
                        }
                    }
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("received {n}\n")))))
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), service)
                .await
            {
                eprintln!("loadgen sink: connection: {e}");
            }
        });
    }
}

// ---------------------------------------------------------------------------------
// upload / download: one large body through the proxy

struct RepeatBody {
    left: u64,
    chunk: Bytes,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = (self.chunk.len() as u64).min(self.left) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

async fn client(target: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<RepeatBody>, String> {
    let s = TcpStream::connect(target).await.map_err(|e| format!("connect {target}: {e}"))?;
    s.set_nodelay(true).ok();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("loadgen: client connection: {e}");
        }
    });
    Ok(send)
}

async fn upload(o: &Opts) -> Result<(), String> {
    let target = addr(o, "addr")?;
    let path = req(o, "path")?.to_owned();
    let bytes: u64 = num(o, "bytes", None)?;
    let timeout = Duration::from_secs(num(o, "timeout", Some(300))?);
    let mut send = client(target).await?;
    let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
    let request = Request::post(path)
        .header("host", "bench.local")
        .header("content-length", bytes.to_string())
        .header("content-type", "application/octet-stream")
        .body(RepeatBody { left: bytes, chunk })
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let run = async {
        let resp = send.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, run).await.map_err(|_| "timed out".to_owned())??;
    let secs = started.elapsed().as_secs_f64();
    let answer = String::from_utf8_lossy(&body).trim().replace('"', "'");
    println!("{{\"status\":{status},\"bytes\":{bytes},\"secs\":{secs:.6},\"answer\":\"{answer}\"}}");
    Ok(())
}

async fn download(o: &Opts) -> Result<(), String> {
    let target = addr(o, "addr")?;
    let path = req(o, "path")?.to_owned();
    let timeout = Duration::from_secs(num(o, "timeout", Some(300))?);
    let mut send = client(target).await?;
    let request = Request::get(path)
        .header("host", "bench.local")
        .body(RepeatBody { left: 0, chunk: Bytes::new() })
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let run = async {
        let resp = send.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            let f = frame.map_err(|e| format!("body after {n} bytes: {e}"))?;
            if let Some(d) = f.data_ref() {
                n += d.len() as u64;
            }
        }
        Ok::<_, String>((status, n))
    };
    let (status, n) = tokio::time::timeout(timeout, run).await.map_err(|_| "timed out".to_owned())??;
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"status\":{status},\"bytes\":{n},\"secs\":{secs:.6}}}");
    Ok(())
}
