//! Passive ejection with the real binary (`[upstreams.NAME.passive]`): only what a
//! server did counts against it. An application's 500s (unless listed in `statuses`),
//! uploads the client aborts, malformed chunked bodies (answered 400) and slow uploads
//! the backend gives up on never eject it; a cool-down that ends starts the count over;
//! a really dead server is still ejected. And the timers: `response_timeout` runs from
//! the end of the upload, a stalled upload is cut by the exchange's `idle_timeout`.
//!
//! Ejection is read from the admin API (`GET /v1/upstreams`: `health_detail`), a
//! snapshot taken after the requests, so "not ejected" is not a race with a log line.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tidegate_testkit::{connect, get, Backend, Bind, RawConn, Reply, TcpBackend, Tidegate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A generous functional bound for anything that should happen "soon".
const T: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// Upstream `app` with `servers` and `extra` lines in its table (then any sub-tables).
fn config(servers: &[String], extra: &str) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
workers = 2
log = {{ level = "debug" }}

[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = [{list}]
{extra}
"#
    )
}

/// `health_detail` of each server of `app`, from the admin API.
async fn details(tg: &Tidegate) -> anyhow::Result<Vec<String>> {
    let resp = get(&tg.addr("admin")?, "/v1/upstreams", "admin").await?;
    anyhow::ensure!(resp.status == 200, "GET /v1/upstreams: {}", resp.text());
    let json = resp.json()?;
    let servers = json
        .as_array()
        .and_then(|ups| ups.iter().find(|u| u["name"] == "app"))
        .and_then(|u| u["servers"].as_array())
        .with_context(|| format!("no upstream app in {json}"))?;
    Ok(servers
        .iter()
        .map(|s| s["health_detail"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// The first server of `app` is not ejected, and no ejection was logged.
async fn assert_not_ejected(tg: &Tidegate, what: &str) -> anyhow::Result<()> {
    let detail = details(tg).await?;
    assert!(
        !detail[0].starts_with("ejected"),
        "{what}: the server is {detail:?}"
    );
    let ejected: Vec<String> = tg
        .logs()
        .into_iter()
        .filter(|l| l.contains("server ejected"))
        .collect();
    assert!(ejected.is_empty(), "{what}: {ejected:#?}");
    Ok(())
}

/// Polls the admin API until the first server's `health_detail` satisfies `cond`.
async fn wait_detail(
    tg: &Tidegate,
    what: &str,
    cond: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + T;
    loop {
        let detail = details(tg).await?;
        if cond(&detail[0]) {
            return Ok(detail[0].clone());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {T:?}; the server is {detail:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request whose answer is a plain 200 from the backend: the server still serves.
async fn still_served(tg: &Tidegate) -> anyhow::Result<()> {
    let resp = get(&tg.addr("web")?, "/ok", "app.test").await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    Ok(())
}

/// 500 for `/bad`, 200 otherwise.
fn app() -> anyhow::Result<Backend> {
    Backend::start(Bind::Tcp4, |r| {
        if r.target == "/bad" {
            Reply::text(500, "app error")
        } else {
            Reply::text(200, "ok")
        }
    })
}

#[tokio::test]
async fn application_500s_do_not_eject_unless_listed_in_statuses() -> anyhow::Result<()> {
    let backend = app()?;
    let servers = [backend.addr().to_config()];
    let tg = Tidegate::start(bin(), &config(&servers, "")).await?;
    for i in 0..3 {
        let resp = get(&tg.addr("web")?, "/bad", "app.test").await?;
        assert_eq!(resp.status, 500, "request {i}: {}", resp.text());
    }
    assert_not_ejected(&tg, "three 500s, default statuses").await?;
    still_served(&tg).await?;
    drop(tg);

    let listed = "[upstreams.app.passive]\nstatuses = [500, 502]\n";
    let tg = Tidegate::start(bin(), &config(&servers, listed)).await?;
    for i in 0..3 {
        let resp = get(&tg.addr("web")?, "/bad", "app.test").await?;
        assert_eq!(resp.status, 500, "request {i}: {}", resp.text());
    }
    let detail = wait_detail(&tg, "ejected", |d| d.starts_with("ejected")).await?;
    assert!(
        detail.contains("3 consecutive counted response statuses (last 500)"),
        "{detail}"
    );
    let line = tg.wait_log("server ejected", T).await?;
    assert!(line.contains("WARN") || line.contains("warn"), "{line}");
    Ok(())
}

#[tokio::test]
async fn uploads_the_client_aborts_do_not_eject() -> anyhow::Result<()> {
    let backend = app()?;
    let tg = Tidegate::start(bin(), &config(&[backend.addr().to_config()], "")).await?;
    for i in 0..3 {
        let mut c = connect(&tg.addr("web")?).await?;
        c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nhalf")
            .await?;
        // The backend has the head: the body is being forwarded when the client leaves.
        backend
            .wait_for(|b| b.requests().len() > i, T)
            .await
            .context("the request reached the backend")?;
        c.reset()?;
    }
    // Each aborted upload ended on the backend side too (nothing left waiting).
    backend
        .wait_for(|b| b.open_connections() == 0, T)
        .await
        .context("the upstream connections of the aborted uploads close")?;
    assert_not_ejected(&tg, "three aborted uploads").await?;
    still_served(&tg).await?;
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_mid_body_gets_400_and_does_not_eject() -> anyhow::Result<()> {
    let backend = app()?;
    let passive = "[upstreams.app.passive]\nmax_fails = 1\n";
    let tg = Tidegate::start(bin(), &config(&[backend.addr().to_config()], passive)).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nhalf")
        .await?;
    backend
        .wait_for(|b| !b.requests().is_empty(), T)
        .await
        .context("the request reached the backend")?;
    // The client ends its side mid-body, still reading.
    c.shutdown_write().await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.text()
            .contains("the client closed the connection before the end of the body"),
        "{}",
        resp.text()
    );
    // max_fails = 1: any count at all would have ejected it.
    assert_not_ejected(&tg, "a client that stopped mid-body").await?;
    still_served(&tg).await?;
    Ok(())
}

#[tokio::test]
async fn malformed_chunked_bodies_get_400_and_do_not_eject() -> anyhow::Result<()> {
    let backend = app()?;
    let tg = Tidegate::start(bin(), &config(&[backend.addr().to_config()], "")).await?;
    for i in 0..3 {
        let mut c = connect(&tg.addr("web")?).await?;
        c.send(
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\nZZ-not-a-size\r\n",
        )
        .await?;
        let resp = c.read_response(T).await?;
        assert_eq!(resp.status, 400, "request {i}: {}", resp.text());
        assert_eq!(resp.header("connection"), Some("close"), "request {i}");
        let text = resp.text();
        assert!(
            text.contains("the client's request body could not be read: malformed body framing"),
            "request {i}: {text}"
        );
    }
    assert_not_ejected(&tg, "three malformed chunked bodies").await?;
    // Logged at debug on the client side, never as an upstream failure.
    let lines: Vec<String> = tg
        .logs()
        .into_iter()
        .filter(|l| l.contains("request body could not be read"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for l in &lines {
        assert!(l.contains("DEBUG") || l.contains("debug"), "{l}");
    }
    still_served(&tg).await?;
    Ok(())
}

/// A backend with its own body timeout: reads the head, then gives up (closes, without
/// an answer) when the body is not complete within `limit`.
fn impatient_backend(limit: Duration) -> anyhow::Result<TcpBackend> {
    TcpBackend::start(Bind::Tcp4, move |mut s| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let started = Instant::now();
        // Bounded by `limit`: the backend's body timeout.
        while started.elapsed() < limit {
            let left = limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
            if buf.ends_with(b"\r\n0\r\n\r\n") {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await?;
                return Ok(());
            }
        }
        // Gave up on a slow client: close with its bytes unread (a reset, as servers do).
        Ok(())
    })
}

#[tokio::test]
async fn slow_uploads_the_backend_gives_up_on_do_not_eject() -> anyhow::Result<()> {
    let backend = impatient_backend(Duration::from_millis(400))?;
    let tg = Tidegate::start(bin(), &config(&[backend.addr().to_config()], "")).await?;
    for i in 0..3 {
        let mut c = connect(&tg.addr("web")?).await?;
        c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await?;
        // Still sending, slowly, when the backend gives up; then whatever tidegate
        // answers (a 502 naming the upstream, or a close).
        let mut answer = None;
        for _ in 0..20 {
            if c.send(b"1\r\nx\r\n").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(100), c.read_head(T)).await {
                Ok(head) => {
                    answer = Some(head.map(|h| h.status));
                    break;
                }
                Err(_) => continue,
            }
        }
        let answer = answer.context("tidegate answered or closed within 2 s")?;
        if let Ok(status) = answer {
            assert_eq!(status, 502, "upload {i}");
        }
        backend
            .wait_for(|b| b.accepts() > i && b.open() == 0, T)
            .await
            .context("the backend gave up")?;
    }
    assert_not_ejected(&tg, "three slow uploads the backend gave up on").await?;
    Ok(())
}

#[tokio::test]
async fn a_cooldown_that_ends_starts_the_count_over() -> anyhow::Result<()> {
    let backend = app()?;
    let passive =
        "[upstreams.app.passive]\nmax_fails = 2\ncooldown = \"500ms\"\nstatuses = [500]\n";
    let tg = Tidegate::start(bin(), &config(&[backend.addr().to_config()], passive)).await?;
    let bad = || async { get(&tg.addr("web")?, "/bad", "app.test").await };
    for _ in 0..2 {
        assert_eq!(bad().await?.status, 500);
    }
    wait_detail(&tg, "ejected after 2", |d| d.starts_with("ejected")).await?;
    wait_detail(&tg, "the cool-down ends", |d| !d.starts_with("ejected")).await?;
    // One failure after the cool-down does not eject again: the count is at 1 of 2.
    assert_eq!(bad().await?.status, 500);
    let detail = details(&tg).await?;
    assert!(!detail[0].starts_with("ejected"), "{detail:?}");
    assert_eq!(bad().await?.status, 500);
    let detail = wait_detail(&tg, "ejected again", |d| d.starts_with("ejected")).await?;
    assert!(detail.contains("2 consecutive"), "{detail}");
    Ok(())
}

#[tokio::test]
async fn a_dead_server_in_a_pair_is_still_ejected_and_requests_succeed() -> anyhow::Result<()> {
    let live = app()?;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let tg = Tidegate::start(bin(), &config(&[dead.clone(), live.addr().to_config()], "")).await?;
    for i in 0..20 {
        let resp = get(&tg.addr("web")?, "/ok", "app.test").await?;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let detail = details(&tg).await?;
    assert!(
        detail[0].starts_with("ejected") && detail[0].contains("3 consecutive connect failures"),
        "{detail:?}"
    );
    let line = tg.wait_log("server ejected", T).await?;
    assert!(line.contains(&dead), "{line}");
    Ok(())
}

/// Sends `body` one byte every `every` after a head with its Content-Length.
async fn trickle(c: &mut RawConn, body: &[u8], every: Duration) -> anyhow::Result<()> {
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    for b in body {
        tokio::time::sleep(every).await;
        c.send(std::slice::from_ref(b)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn response_timeout_starts_when_the_upload_is_sent() -> anyhow::Result<()> {
    let backend = Backend::start(Bind::Tcp4, |_| Reply::echo())?;
    let extra = "response_timeout = \"3s\"";
    let tg = Tidegate::start(bin(), &config(&[backend.addr().to_config()], extra)).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    // Six seconds of upload, twice response_timeout: an active upload is never cut.
    trickle(&mut c, b"abcdef", Duration::from_secs(1)).await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = backend.requests();
    assert_eq!(got.len(), 1, "{}", backend.summary());
    assert_eq!(got[0].body, b"abcdef");
    assert!(got[0].body_complete);
    Ok(())
}

#[tokio::test]
async fn a_stalled_upload_is_cut_by_idle_timeout_and_does_not_eject() -> anyhow::Result<()> {
    let backend = Backend::start(Bind::Tcp4, |_| Reply::echo())?;
    let extra = "idle_timeout = \"500ms\"\n[upstreams.app.passive]\nmax_fails = 1";
    let tg = Tidegate::start(bin(), &config(&[backend.addr().to_config()], extra)).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 6\r\n\r\nab")
        .await?;
    let started = Instant::now();
    // Then silence: the exchange's idle timer closes the client connection.
    let (bytes, _end) = c.read_to_end(T).await?;
    let took = started.elapsed();
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert!(took >= Duration::from_millis(400), "cut after {took:?}");
    tg.wait_log("idle_timeout of the upstream exchange", T)
        .await?;
    backend
        .wait_for(|b| b.open_connections() == 0, T)
        .await
        .context("the upstream side of the stalled upload closes")?;
    // max_fails = 1: any count at all would have ejected it.
    assert_not_ejected(&tg, "a stalled upload").await?;
    still_served(&tg).await?;
    Ok(())
}
