//! Liveness in-process (a quiet connection is neither killed nor kept forever): SSE
//! heartbeats at event boundaries, the upstream's silence still bounded, and stale
//! pooled connections dropped when the upstream closes them — not discovered by the next
//! request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate_config::Config;
use tidegate_testkit::{
    close_wait_sockets, connect, get, Addr, Backend, BackendOptions, Bind, RawConn, Reply, SseThen,
    TcpBackend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, Proxy};

const T: Duration = Duration::from_secs(5);

fn config(server: &Addr) -> Config {
    common::config(&[server.to_config()], "").expect("valid config")
}

fn start(config: Config) -> anyhow::Result<Proxy> {
    common::start(&config)
}

async fn open_stream(proxy: &Proxy) -> anyhow::Result<RawConn> {
    let mut c = connect(&proxy.addr).await?;
    c.send(b"GET /events HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await?;
    let head = c.read_head(T).await?;
    anyhow::ensure!(head.status == 200, "status {}", head.status);
    Ok(c)
}

/// Reads decoded body bytes until `body` ends with `want` or `within` passes.
async fn read_until_body(
    c: &mut RawConn,
    body: &mut Vec<u8>,
    want: &[u8],
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while !body.ends_with(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match c.read_body_some(left).await {
            Ok(Some(part)) => body.extend(part),
            _ => return false,
        }
    }
    true
}

#[tokio::test]
async fn a_silent_event_stream_gets_heartbeats_at_event_boundaries() -> anyhow::Result<()> {
    for bind in [Bind::Tcp4, Bind::Unix] {
        let app = Backend::start(bind, |_| {
            Reply::sse(vec!["data: one\n\n".into()], SseThen::Hold)
        })?;
        let mut cfg = config(app.addr());
        cfg.upstreams[0].sse_heartbeat = Some(Duration::from_millis(200));
        let proxy = start(cfg)?;
        let mut c = open_stream(&proxy).await?;
        let mut body = Vec::new();
        assert!(
            read_until_body(&mut c, &mut body, b"data: one\n\n", T).await,
            "{body:?}"
        );
        // Three heartbeats, each after ~200 ms of silence.
        let started = Instant::now();
        for n in 1..=3 {
            assert!(
                read_until_body(&mut c, &mut body, b":\n\n", T).await,
                "{bind:?}: heartbeat {n} missing; body so far {:?}",
                String::from_utf8_lossy(&body)
            );
            body.clear();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
    }
    Ok(())
}

#[tokio::test]
async fn no_heartbeat_is_injected_inside_an_event() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::chunks(vec![
            (Duration::ZERO, b"data: first\n\n".to_vec()),
            (Duration::ZERO, b"data: par".to_vec()),
            (Duration::from_secs(30), b"tial\n\n".to_vec()),
        ])
        .header("Content-Type", "text/event-stream")
    })?;
    let mut cfg = config(app.addr());
    cfg.upstreams[0].sse_heartbeat = Some(Duration::from_millis(100));
    let proxy = start(cfg)?;
    let mut c = open_stream(&proxy).await?;
    let mut body = Vec::new();
    assert!(
        read_until_body(&mut c, &mut body, b"data: par", T).await,
        "{body:?}"
    );
    // Eight heartbeat periods of silence mid-event: nothing may be written.
    let more = read_until_body(&mut c, &mut body, b"\n", Duration::from_millis(800)).await;
    assert!(
        !more,
        "bytes injected inside an event: {:?}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(body, b"data: first\n\ndata: par");
    Ok(())
}

#[tokio::test]
async fn heartbeats_do_not_keep_a_silent_upstream_alive_past_idle_timeout() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::sse(vec!["data: one\n\n".into()], SseThen::Hold)
    })?;
    let mut cfg = config(app.addr());
    cfg.upstreams[0].sse_heartbeat = Some(Duration::from_millis(100));
    cfg.upstreams[0].idle_timeout = Duration::from_millis(600);
    let proxy = start(cfg)?;
    let mut c = open_stream(&proxy).await?;
    let started = Instant::now();
    let (rest, _) = c.read_to_end(T).await?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains(":\n\n"),
        "heartbeats were sent meanwhile: {text:?}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the aborted stream must not look complete: {text:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    app.wait_for(|b| b.closed_connections() == 1, Duration::from_secs(1))
        .await?;
    Ok(())
}

/// A backend that answers every request with `head` and `first`, stays silent for
/// `silence`, then sends `rest`; raw bytes, for a framing [`Reply`] does not make (an
/// event stream with a Content-Length).
fn raw_backend(
    head: &'static str,
    first: &'static [u8],
    silence: Duration,
    rest: &'static [u8],
) -> anyhow::Result<TcpBackend> {
    TcpBackend::start(Bind::Tcp4, move |mut s| async move {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        // Bounded: the proxy sends one request head, then waits for the response.
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed before a whole request head");
            request.extend_from_slice(&buf[..n]);
        }
        s.write_all(head.as_bytes()).await?;
        s.write_all(first).await?;
        s.flush().await?;
        tokio::time::sleep(silence).await;
        s.write_all(rest).await?;
        s.flush().await?;
        Ok(())
    })
}

#[tokio::test]
async fn heartbeat_off_and_fixed_length_or_compressed_streams_get_none() -> anyhow::Result<()> {
    // Each stream sends a first part, stays silent for seven heartbeat periods, then
    // sends the rest and ends: the client must get every byte as sent and nothing else.
    let silence = Duration::from_millis(700);
    let hb = Some(Duration::from_millis(100));
    let chunked = |first: &[u8], rest: &[u8]| {
        Reply::chunks(vec![
            (Duration::ZERO, first.to_vec()),
            (silence, rest.to_vec()),
        ])
    };
    let mut replies = Vec::new();
    for (name, heartbeat, reply, want) in [
        (
            "off",
            None,
            chunked(b"data: one\n\n", b"data: two\n\n").header("Content-Type", "text/event-stream"),
            &b"data: one\n\ndata: two\n\n"[..],
        ),
        (
            "gzip",
            hb,
            chunked(b"xx", b"yy")
                .header("Content-Type", "text/event-stream")
                .header("Content-Encoding", "gzip"),
            b"xxyy",
        ),
        (
            "not sse",
            hb,
            chunked(b"xx\n\n", b"yy").header("Content-Type", "text/plain"),
            b"xx\n\nyy",
        ),
    ] {
        replies.push((
            name,
            heartbeat,
            Backend::start(Bind::Tcp4, move |_| reply.clone())?,
            want,
        ));
    }
    let fixed = raw_backend(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 22\r\n\r\n",
        b"data: one\n\n",
        silence,
        b"data: two\n\n",
    )?;
    let mut cases: Vec<(&str, Option<Duration>, &Addr, &[u8])> = replies
        .iter()
        .map(|(name, heartbeat, app, want)| (*name, *heartbeat, app.addr(), *want))
        .collect();
    cases.push((
        "fixed length",
        hb,
        fixed.addr(),
        b"data: one\n\ndata: two\n\n",
    ));
    for (name, heartbeat, addr, want) in cases {
        let mut cfg = config(addr);
        cfg.upstreams[0].sse_heartbeat = heartbeat;
        let proxy = start(cfg)?;
        let mut c = connect(&proxy.addr).await?;
        let started = Instant::now();
        c.send(b"GET /events HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await?;
        let resp = c.read_response(T).await?;
        let took = started.elapsed();
        assert_eq!(resp.status, 200, "{name}");
        assert!(
            resp.complete,
            "{name}: the body did not end cleanly: {resp:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&resp.body),
            String::from_utf8_lossy(want),
            "{name}: every byte as sent, and no heartbeat"
        );
        assert!(
            took >= silence - Duration::from_millis(100),
            "{name}: the silence was not seen ({took:?}), the test proves nothing"
        );
    }
    assert_eq!(
        fixed.errors(),
        Vec::<String>::new(),
        "the fixed-length backend"
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_pooled_connection_the_upstream_closes_is_dropped_at_once() -> anyhow::Result<()> {
    let app = Backend::start_with(
        Bind::Tcp4,
        BackendOptions::default().close_idle_after(Duration::from_millis(100)),
        |_| Reply::text(200, "ok"),
    )?;
    let proxy = start(config(app.addr()))?;
    let resp = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!(resp.status, 200);
    let pool = &proxy.upstreams[0].servers[0].pool;
    // The backend closes the idle connection after 100 ms; the pool must notice by
    // itself (no new request is sent).
    let deadline = Instant::now() + Duration::from_secs(2);
    while pool.idle_count() != 0 || app.closed_connections() != 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "idle {} closed {}",
            pool.idle_count(),
            app.closed_connections()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And tidegate's side is closed, not left in CLOSE_WAIT. Only sockets to this test's
    // backend count: the other tests of this binary run in the same process, and their
    // sockets are not this test's business.
    let to_app = format!(" -> {}", app.addr());
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut held = close_wait_sockets(std::process::id())?;
        held.retain(|s| s.ends_with(&to_app));
        if held.is_empty() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "CLOSE_WAIT sockets: {held:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Over 200 requests spaced around a backend's short keep-alive timeout (it closes or
/// resets idle connections after ~30 ms), no error reaches the client.
#[tokio::test]
async fn requests_spaced_around_the_backends_keepalive_timeout_never_fail() -> anyhow::Result<()> {
    let closing = Backend::start_with(
        Bind::Tcp4,
        BackendOptions::default().close_idle_after(Duration::from_millis(30)),
        |_| Reply::text(200, "ok"),
    )?;
    // Resets every request that arrives on a reused connection.
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let resetting = Backend::start(Bind::Tcp4, move |r| {
        if seen.lock().unwrap().insert(r.conn_id) {
            Reply::text(200, "ok")
        } else {
            Reply::reset_before_response()
        }
    })?;
    for app in [&closing, &resetting] {
        let proxy = start(config(app.addr()))?;
        let mut c = connect(&proxy.addr).await?;
        for i in 0..100u64 {
            c.send(format!("GET /r{i} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
                .await?;
            let resp = c.read_response(T).await?;
            assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
            // 20..40 ms: around the 30 ms idle close.
            tokio::time::sleep(Duration::from_millis(20 + (i * 7) % 21)).await;
        }
    }
    Ok(())
}
