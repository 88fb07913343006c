//! End-to-end panic mode: when every server of an upstream is ejected, the binary tries
//! them anyway (no 503 for everyone), shows it in `GET /v1/upstreams`, `/metrics` and
//! `tidegate ctl upstreams`, and uses a server that comes back at the next request.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tidegate_testkit::{get, Addr, Tidegate};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

fn config(server: &str) -> String {
    format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{server}"]
retries = 0
keepalive = 0
"#
    )
}

async fn curl(tg: &Tidegate, path: &str) -> anyhow::Result<(u16, String)> {
    let Addr::Unix(sock) = tg.addr("admin")? else {
        bail!("the admin API is not on a Unix socket");
    };
    let (code, body) = tidegate_testkit::curl_unix(&sock, "GET", path).await?;
    Ok((code, String::from_utf8(body)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_only_server_is_tried_anyway_shown_and_used_once_back() -> anyhow::Result<()> {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let tg = Tidegate::start(bin(), &config(&dead)).await?;
    let web = tg.addr("web")?;
    // Three refused connects eject it (default: 3 failures, 10 s).
    for i in 0..3 {
        let resp = get(&web, "/", "app.test").await?;
        assert_eq!(resp.status, 502, "request {i}: {}", resp.text());
    }
    tg.wait_log("server ejected", Duration::from_secs(5))
        .await?;
    // Tried anyway: 502 (a connect was attempted), not a 503 without trying.
    let resp = get(&web, "/", "app.test").await?;
    assert_eq!(resp.status, 502, "{}", resp.text());
    tg.wait_log("panic mode", Duration::from_secs(5)).await?;

    let (code, body) = curl(&tg, "/v1/upstreams").await?;
    assert_eq!(code, 200, "{body}");
    let ups: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(ups[0]["panic"], true, "{body}");
    assert_eq!(ups[0]["panic_requests"], 1, "{body}");
    let (_, metrics) = curl(&tg, "/metrics").await?;
    assert!(
        metrics.contains("tidegate_upstream_panic{upstream=\"app\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidegate_upstream_panic_requests_total{upstream=\"app\"} 1"),
        "{metrics}"
    );
    let out = tokio::process::Command::new(bin())
        .args(["ctl", "--config"])
        .arg(tg.config_path())
        .arg("upstreams")
        .env("XDG_RUNTIME_DIR", tg.dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .context("ctl upstreams did not finish")??;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("upstream app: PANIC: every ready server is down or ejected"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // It comes back: the next request uses it, seconds before its cool-down ends.
    let back = tokio::net::TcpListener::bind(&dead).await?;
    let serve = tokio::spawn(async move {
        while let Ok((mut s, _)) = back.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nback",
                    )
                    .await;
            });
        }
    });
    let resp = get(&web, "/", "app.test").await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "back");
    serve.abort();
    Ok(())
}
