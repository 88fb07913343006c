//! End-to-end tests of parked keep-alive connections: between requests a client
//! connection holds none of hyper's buffers, and parking never changes what the client
//! or the upstream sees — pipelined bytes, request bodies, the first bytes after an
//! upgrade, the header and idle timers all behave as on a connection never parked.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use tidegate_testkit::{connect, procfs, Addr, Backend, Bind, End, Reply, Tidegate};
use tokio::time::Instant;

/// A generous functional bound for anything that should happen "at once".
const T: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// Listener `web` with `listener_keys`: `/fixed` answers by itself, everything else
/// goes to `app`.
fn config(app: &Addr, listener_keys: &str) -> String {
    format!(
        r#"
[server]
workers = 1

[listeners.web]
listen = ["127.0.0.1:0"]
{listener_keys}

[[listeners.web.routes]]
path = "/fixed"
respond = {{ status = 200, body = "fixed\n" }}

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
        app.to_config()
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n")
}

#[tokio::test]
async fn one_connection_is_served_again_after_each_quiet_spell() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |r| {
        Reply::text(200, format!("you asked {}", r.target))
    })?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    for i in 0..5 {
        c.send(get(&format!("/n{i}")).as_bytes()).await?;
        let resp = c.read_response(T).await?;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert_eq!(resp.text(), format!("you asked /n{i}"));
        // Quiet: the connection parks; the next request wakes it.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let paths: Vec<String> = app.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(paths, ["/n0", "/n1", "/n2", "/n3", "/n4"]);
    Ok(())
}

#[tokio::test]
async fn a_pipelined_request_split_across_a_quiet_spell_is_served() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |r| {
        Reply::text(200, format!("you asked {}", r.target))
    })?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    // The first request and half of the second's head in one write: hyper reads both,
    // answers the first and hands the half head back when it stops.
    let second = get("/second");
    let (head, tail) = second.split_at(20);
    c.send(format!("{}{head}", get("/first")).as_bytes())
        .await?;
    let first = c.read_response(T).await?;
    assert_eq!(first.text(), "you asked /first");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(tail.as_bytes()).await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "you asked /second");
    Ok(())
}

#[tokio::test]
async fn a_head_started_after_a_response_is_held_to_header_timeout() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let tg = Tidegate::start(
        bin(),
        &config(
            app.addr(),
            "header_timeout = \"300ms\"\nidle_timeout = \"60s\"",
        ),
    )
    .await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(get("/").as_bytes()).await?;
    assert_eq!(c.read_response(T).await?.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    c.send(b"GET /slow HTTP/1.1\r\nHo").await?;
    let (rest, end) = c.read_to_end(T).await?;
    let took = started.elapsed();
    ensure!(
        end == End::Eof || end == End::Reset,
        "still open after {took:?}: {end:?}"
    );
    ensure!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before header_timeout (300ms): {rest:?}"
    );
    ensure!(app.requests().len() == 1, "{:?}", app.requests());
    Ok(())
}

#[tokio::test]
async fn a_parked_connection_closes_at_idle_timeout() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "idle_timeout = \"300ms\"")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    // Before the request: tidegate's idle timer starts later (when the response ends),
    // so the time measured here is never shorter than the idle_timeout.
    let started = Instant::now();
    c.send(get("/").as_bytes()).await?;
    assert_eq!(c.read_response(T).await?.status, 200);
    let (rest, end) = c.read_to_end(T).await?;
    let took = started.elapsed();
    ensure!(
        end == End::Eof && rest.is_empty(),
        "{end:?} {rest:?} after {took:?}"
    );
    ensure!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before idle_timeout (300ms)"
    );
    Ok(())
}

/// A body tidegate never reads (a fixed answer) arrives after the answer went out and
/// looks like a request: it must never be served as one.
#[tokio::test]
async fn an_unread_request_body_is_never_served_as_a_request() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "from app"))?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "")).await?;
    let smuggled = get("/smuggled");
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(
        format!(
            "POST /fixed HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
    )
    .await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.text(), "fixed\n");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The body: hyper drains it or closes the connection; either way nothing more
    // than an EOF (or an answer to a *next* request) may come back.
    let _ = c.send(smuggled.as_bytes()).await;
    let _ = c.send(get("/after").as_bytes()).await;
    let (rest, _end) = c.read_to_end(T).await?;
    let rest = String::from_utf8_lossy(&rest);
    ensure!(
        !rest.contains("400") && rest.matches("HTTP/1.1").count() <= 1,
        "bytes after the fixed answer: {rest:?}"
    );
    ensure!(
        app.requests().iter().all(|r| r.target != "/smuggled"),
        "the body reached the upstream as a request: {:?}",
        app.requests()
    );
    Ok(())
}

/// A WebSocket client may send its first frame in the same write as its handshake:
/// hyper reads it along with the request, and it must reach the upstream.
#[tokio::test]
async fn bytes_sent_with_an_upgrade_request_reach_the_upstream() -> anyhow::Result<()> {
    let app = Backend::websocket_echo(Bind::Tcp4)?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    // A masked text frame "hi" (mask key 0: the payload stays as it is).
    let frame: &[u8] = &[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'];
    let mut out = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    out.extend_from_slice(frame);
    c.send(&out).await?;
    let head = c.read_head(T).await?;
    assert_eq!(head.status, 101, "{head:?}");
    // The echo: an unmasked text frame "hi".
    let echoed = c.read_until(b"hi", T).await?;
    assert!(
        echoed.ends_with(&[0x81, 0x02, b'h', b'i']),
        "echoed {echoed:?}"
    );
    Ok(())
}

/// The point of parking: an idle keep-alive connection costs a couple of KiB, not
/// hyper's two 8 KiB buffers on top. Counted with 1,000 connections that each made one request
/// (the bound is generous: a debug build, and everything else the process holds).
#[tokio::test]
async fn idle_keep_alive_connections_hold_no_buffers() -> anyhow::Result<()> {
    const N: usize = 1000;
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "idle_timeout = \"60s\"")).await?;
    let addr = tg.addr("web")?;
    let pid = tg.pid();
    // Warm up: the allocator's arenas and the runtime's threads exist before counting.
    let mut warm = Vec::new();
    for _ in 0..64 {
        let mut c = connect(&addr).await?;
        c.send(get("/fixed").as_bytes()).await?;
        ensure!(c.read_response(T).await?.status == 200);
        warm.push(c);
    }
    drop(warm);
    let before = procfs::vm_rss_kib(pid)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..N {
        let (addr, sem) = (addr.clone(), sem.clone());
        tasks.spawn(async move {
            let permit = sem.acquire_owned().await?;
            let mut c = connect(&addr).await?;
            c.send(get("/fixed").as_bytes()).await?;
            let resp = c.read_response(T).await?;
            drop(permit);
            ensure!(resp.status == 200, "{resp:?}");
            anyhow::Ok(c)
        });
    }
    let mut conns = Vec::with_capacity(N);
    while let Some(r) = tasks.join_next().await {
        conns.push(r.context("client task")??);
    }
    // Connections park once they have been idle a moment (20 ms): poll for it.
    let deadline = Instant::now() + T;
    loop {
        let after = procfs::vm_rss_kib(pid)?;
        let per_conn = (after.saturating_sub(before) * 1024) as usize / N;
        if per_conn < 6 * 1024 {
            eprintln!("RSS {before} KiB -> {after} KiB: {per_conn} B per idle connection");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{per_conn} B of RSS per idle keep-alive connection (RSS {before} -> {after} KiB) \
             {T:?} after the last response: are hyper's buffers still held while idle?"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every one still works.
    for c in conns.iter_mut().step_by(50) {
        c.send(get("/fixed").as_bytes()).await?;
        ensure!(c.read_response(T).await?.status == 200);
    }
    Ok(())
}

/// The drain closes an idle connection at once, parked or not, and tidegate exits
/// without waiting for `shutdown_grace`.
#[tokio::test]
async fn sigterm_closes_a_parked_connection_at_once() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let toml = config(app.addr(), "").replace(
        "[server]\nworkers = 1",
        "[server]\nworkers = 1\nshutdown_grace = \"10s\"",
    );
    let mut tg = Tidegate::start(bin(), &toml).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(get("/").as_bytes()).await?;
    assert_eq!(c.read_response(T).await?.status, 200);
    // Quiet for longer than the park delay (20 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    tg.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (rest, end) = c.read_to_end(T).await?;
    ensure!(end == End::Eof && rest.is_empty(), "{end:?} {rest:?}");
    let status = tg.wait_exit(T).await?;
    ensure!(status.code() == Some(0), "exit {status:?}");
    ensure!(
        sent.elapsed() < Duration::from_secs(3),
        "exit took {:?} after SIGTERM; an idle connection must not hold the drain",
        sent.elapsed()
    );
    Ok(())
}
