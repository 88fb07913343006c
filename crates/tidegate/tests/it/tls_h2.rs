//! Certificate rotation under live HTTP/2 traffic: 100 SSE streams held open on one TLS
//! connection (Python's `h2`, `testkit::browser::H2_STREAMS_PY`) go on receiving after a
//! reload that rotates the certificate, while a new connection gets the new one.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use tidegate_testkit::browser::{require_python_h2, H2_STREAMS_PY};
use tidegate_testkit::tls::{peer_certificate, TestCa};
use tidegate_testkit::{Addr, Backend, Bind, Reply, SseThen, Tidegate};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const STREAMS: usize = 100;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

#[tokio::test]
async fn a_certificate_rotation_keeps_a_hundred_open_h2_streams() -> anyhow::Result<()> {
    require_python_h2()?;
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::sse(vec!["data: first\n\n".into()], SseThen::Hold)
    })?;
    let tg = Tidegate::start_in(
        dir.path(),
        bin(),
        &format!(
            r#"
[listeners.web]
listen = ["127.0.0.1:0"]
tls = {{ certificates = [ {{ cert = "a.pem", key = "a.key" }} ] }}

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
sse_heartbeat = "200ms"
"#,
            app.addr().to_config()
        ),
    )
    .await?;
    let web = tg.addr("web")?;
    let Addr::Tcp(sa) = web else {
        anyhow::bail!("not a TCP listener");
    };
    let before = peer_certificate(&ca.connect(&web, "a.test", Duration::from_secs(5)).await?);

    let script = dir.path().join("h2_streams.py");
    std::fs::write(&script, H2_STREAMS_PY)?;
    let mut client = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--port", &sa.port().to_string(), "--name", "a.test", "--ca"])
        .arg(dir.path().join("ca.pem"))
        .args(["--streams", &STREAMS.to_string(), "--path", "/events"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start h2_streams.py")?;
    let mut stdin = client.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(client.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("the streams did not open within 20 s")??
        .unwrap_or_default();
    ensure!(
        first == format!("open {STREAMS}"),
        "before the rotation: {first}"
    );
    app.wait_for(|b| b.open_connections() >= 1, Duration::from_secs(5))
        .await?;

    // Rotation: a new key and certificate under the same file names, then a reload.
    ca.leaf(dir.path(), "a", &["a.test", "www.a.test"], None)?;
    let out = crate::admin::tidegate(&["ctl", "reload"], tg.dir()).await?;
    ensure!(
        out.status.success(),
        "reload: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after = peer_certificate(&ca.connect(&web, "a.test", Duration::from_secs(5)).await?);
    ensure!(
        after != before,
        "a new connection still gets the old certificate"
    );

    stdin.write_all(b"go\n").await?;
    stdin.flush().await?;
    let result = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("no result within 20 s")??
        .unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(&result).with_context(|| format!("h2_streams.py said {result}"))?;
    ensure!(v["alpn"] == "h2", "ALPN: {v}");
    ensure!(v["alive_after"] == STREAMS, "after the rotation: {v}");
    ensure!(v["ended"] == 0 && v["reset"] == 0, "streams ended: {v}");
    ensure!(v["statuses"] == serde_json::json!(["200"]), "statuses: {v}");
    Ok(())
}
