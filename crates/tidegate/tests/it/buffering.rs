//! End-to-end tests of `[upstreams.NAME.request_buffering]`: a body is collected before
//! any server is contacted and sent whole with a Content-Length, so slow uploads hold
//! no backend worker; over a limit it is refused (413) or streamed, as configured.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tidegate_testkit::{connect, Addr, Backend, Bind, RawConn, Reply, Tidegate};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A generous functional bound for anything that should happen "at once".
const T: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

fn config(app: &Addr, buffering: &str, upstream_keys: &str) -> String {
    format!(
        r#"
[server]
workers = 1

[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
{upstream_keys}

[upstreams.app.request_buffering]
{buffering}
"#,
        app.to_config()
    )
}

/// Sends a POST head announcing `len` bytes, then the body in `pieces` pieces spaced
/// `gap` apart.
async fn slow_post(
    c: &mut RawConn,
    len: usize,
    pieces: usize,
    gap: Duration,
) -> anyhow::Result<()> {
    c.send(format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n").as_bytes())
        .await?;
    let piece = len / pieces;
    for i in 0..pieces {
        tokio::time::sleep(gap).await;
        let n = if i + 1 == pieces {
            len - piece * i
        } else {
            piece
        };
        c.send(&vec![b'b'; n]).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_slow_upload_reaches_the_backend_only_once_complete() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "stored\n"))?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "", "")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
        .await?;
    for _ in 0..9 {
        c.send(&[b'b'; 100]).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            app.requests().is_empty(),
            "the backend saw the upload before it was complete: {}",
            app.summary()
        );
    }
    c.send(&[b'b'; 100]).await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = app.requests();
    assert_eq!(reqs.len(), 1, "{}", app.summary());
    assert_eq!(reqs[0].header("content-length"), Some("1000"));
    assert!(reqs[0].body_complete);
    assert_eq!(reqs[0].body, vec![b'b'; 1000]);
    Ok(())
}

#[tokio::test]
async fn a_chunked_upload_is_sent_with_a_content_length() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "stored\n"))?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "", "")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.requests().is_empty(), "{}", app.summary());
    c.send(b"6\r\n world\r\n0\r\n\r\n").await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = app.requests();
    assert_eq!(reqs.len(), 1, "{}", app.summary());
    assert_eq!(reqs[0].header("content-length"), Some("11"));
    assert_eq!(reqs[0].header("transfer-encoding"), None);
    assert_eq!(reqs[0].body, b"hello world");
    Ok(())
}

/// A backend with one worker: it serves one connection at a time, to its end (reads
/// the head and the Content-Length body, answers, closes), as a single-process
/// application server with one worker slot.
async fn one_worker() -> anyhow::Result<(Addr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = Addr::Tcp(listener.local_addr()?);
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let body = format!("got {}\n", buf.len() - head_end);
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    Ok((addr, served, task))
}

#[tokio::test]
async fn a_one_worker_backend_serves_others_while_five_slow_uploads_are_buffered(
) -> anyhow::Result<()> {
    let (addr, served, task) = one_worker().await?;
    let tg = Tidegate::start(bin(), &config(&addr, "", "keepalive = 0")).await?;
    let web = tg.addr("web")?;
    let mut uploads = Vec::new();
    for _ in 0..5 {
        let mut c = connect(&web).await?;
        uploads.push(tokio::spawn(async move {
            slow_post(&mut c, 4000, 20, Duration::from_millis(100)).await?;
            c.read_response(T).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..3 {
        let started = Instant::now();
        let mut c = connect(&web).await?;
        c.send(format!("GET /n{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await?;
        let resp = c
            .read_response(Duration::from_secs(1))
            .await
            .with_context(|| format!("GET {i} while 5 uploads are being buffered"))?;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "got 0\n");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(
        served.load(Ordering::SeqCst),
        3,
        "only the GETs reached the worker yet"
    );
    for u in uploads {
        let resp = u.await??;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "got 4000\n");
    }
    task.abort();
    Ok(())
}

#[tokio::test]
async fn over_max_body_is_refused_with_413_when_configured() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "stored\n"))?;
    let cfg = config(app.addr(), "max_body = \"1KiB\"\nover = \"refuse\"", "");
    let tg = Tidegate::start(bin(), &cfg).await?;
    let web = tg.addr("web")?;
    // Announced too large: refused before any of it is read.
    let mut c = connect(&web).await?;
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n")
        .await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 413, "{resp:?}");
    // Chunked, grows too large.
    let mut c = connect(&web).await?;
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    c.send(format!("800\r\n{}\r\n", "c".repeat(0x800)).as_bytes())
        .await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 413, "{resp:?}");
    // Within the limit: stored.
    let mut c = connect(&web).await?;
    c.send(
        format!(
            "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{}",
            "d".repeat(1000)
        )
        .as_bytes(),
    )
    .await?;
    assert_eq!(c.read_response(T).await?.status, 200);
    assert_eq!(app.requests().len(), 1, "{}", app.summary());
    Ok(())
}

#[tokio::test]
async fn over_max_body_is_streamed_when_configured() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "stored\n"))?;
    let cfg = config(app.addr(), "max_body = \"1KiB\"\nover = \"stream\"", "");
    let tg = Tidegate::start(bin(), &cfg).await?;
    let web = tg.addr("web")?;
    let mut c = connect(&web).await?;
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    c.send(format!("600\r\n{}\r\n", "e".repeat(0x600)).as_bytes())
        .await?;
    // Over the limit: the request goes out now, before the client finishes.
    app.wait_for(|b| !b.requests().is_empty(), T)
        .await
        .context("the streamed request reached the backend")?;
    c.send(format!("10\r\n{}\r\n0\r\n\r\n", "f".repeat(16)).as_bytes())
        .await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = app.requests();
    let mut want = vec![b'e'; 0x600];
    want.extend_from_slice(&[b'f'; 16]);
    assert_eq!(reqs[0].body, want);
    Ok(())
}

#[tokio::test]
async fn the_total_budget_is_shared_by_the_uploads_of_an_upstream() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "stored\n"))?;
    let cfg = config(
        app.addr(),
        "max_body = \"2KiB\"\ntotal = \"2KiB\"\nover = \"refuse\"",
        "",
    );
    let tg = Tidegate::start(bin(), &cfg).await?;
    let web = tg.addr("web")?;
    // The first holds 1500 bytes of the budget while it is being collected.
    let mut first = connect(&web).await?;
    first
        .send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1500\r\n\r\nxx")
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = connect(&web).await?;
    second
        .send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1500\r\n\r\n")
        .await?;
    assert_eq!(second.read_response(T).await?.status, 413);
    first.send(&[b'x'; 1498]).await?;
    assert_eq!(first.read_response(T).await?.status, 200);
    // Given back once sent: another fits again.
    let mut third = connect(&web).await?;
    third
        .send(
            format!(
                "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1500\r\n\r\n{}",
                "z".repeat(1500)
            )
            .as_bytes(),
        )
        .await?;
    assert_eq!(third.read_response(T).await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_malformed_body_being_buffered_is_the_clients_400_and_reaches_no_backend(
) -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "stored\n"))?;
    let tg = Tidegate::start(bin(), &config(app.addr(), "", "")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    // A chunk size that is not hex: the framing of the client's body is broken.
    c.send(
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 400, "{resp:?}");
    let text = resp.text();
    assert!(
        text.contains("request to upstream app: the client's request body could not be read"),
        "the answer says it is the client's body, and for which upstream: {text}"
    );
    assert!(app.requests().is_empty(), "{}", app.summary());
    Ok(())
}
