//! End-to-end tests of the keep-alive pool's readiness rule: a connection whose request
//! body hyper is still sending (the backend answered early without reading it) never
//! goes back to the pool, so the clients after it are served at once on other
//! connections.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tidegate_testkit::{connect, Addr, Tidegate};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A generous functional bound for anything that should happen "at once".
const T: Duration = Duration::from_secs(5);

/// How fast a following client must be served: generous, yet far below the seconds a
/// checkout stuck on a busy connection took.
const AT_ONCE: Duration = Duration::from_secs(1);

/// The POST body the first client announces (and never finishes).
const BIG: usize = 1 << 20;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// A backend that answers a POST with 401 as soon as its head has arrived and then
/// never reads that connection again (as an application that rejects an upload by its
/// headers), and answers a GET with 200, keeping the connection alive.
struct EarlyAnswer {
    addr: Addr,
    posts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EarlyAnswer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EarlyAnswer {
    async fn start() -> anyhow::Result<EarlyAnswer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = Addr::Tcp(listener.local_addr()?);
        let posts = Arc::new(AtomicUsize::new(0));
        let counted = posts.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let posts = counted.clone();
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = read_head(&mut s, &mut buf).await else {
                            return;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        if head.starts_with("POST") {
                            posts.fetch_add(1, Ordering::SeqCst);
                            let _ = s
                                .write_all(
                                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
                                )
                                .await;
                            // Never reads again: the body stays unread in the socket.
                            std::future::pending::<()>().await;
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                            .await;
                    }
                });
            }
        });
        Ok(EarlyAnswer { addr, posts, task })
    }
}

/// Reads until a blank line; the index after it, or `None` at the end of the stream.
async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn config(app: &Addr) -> String {
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
"#,
        app.to_config()
    )
}

/// The first client POSTs (announcing 1 MiB) and gets the early 401; `trickle` keeps
/// sending its body a few bytes at a time, else it stays silent. Then three clients in
/// turn must each be answered 200 within [`AT_ONCE`].
async fn early_answer_then_three_clients(trickle: bool) -> anyhow::Result<()> {
    let app = EarlyAnswer::start().await?;
    let tg = Tidegate::start(bin(), &config(&app.addr)).await?;
    let web = tg.addr("web")?;

    // Warm the pool: one idle connection is there before the upload.
    let mut warm = connect(&web).await?;
    warm.send(b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    assert_eq!(warm.read_response(T).await?.status, 200);

    let mut first = connect(&web).await?;
    first
        .send(
            format!(
                "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {BIG}\r\n\r\n{}",
                "x".repeat(1000)
            )
            .as_bytes(),
        )
        .await?;
    let resp = first.read_head(T).await.context("the early 401")?;
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(app.posts.load(Ordering::SeqCst), 1);
    let trickler = trickle.then(|| {
        tokio::spawn(async move {
            let mut first = first;
            for _ in 0..200 {
                if first.send(b"yy").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            first
        })
    });

    for i in 0..3 {
        let started = Instant::now();
        let mut c = connect(&web).await?;
        c.send(format!("GET /after{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await?;
        let resp = c
            .read_response(AT_ONCE)
            .await
            .with_context(|| format!("client {i} after the early answer, trickle={trickle}"))?;
        assert_eq!(resp.status, 200, "client {i}: {resp:?}");
        assert!(
            started.elapsed() < AT_ONCE,
            "client {i} answered after {:?}",
            started.elapsed()
        );
    }
    if let Some(t) = trickler {
        t.abort();
    }
    Ok(())
}

#[tokio::test]
async fn a_busy_connection_is_not_reused_while_its_client_is_silent() -> anyhow::Result<()> {
    early_answer_then_three_clients(false).await
}

#[tokio::test]
async fn a_busy_connection_is_not_reused_while_its_client_trickles() -> anyhow::Result<()> {
    early_answer_then_three_clients(true).await
}
