//! HTTP/2 toward clients, against the built binary: h2c with prior knowledge over TCP
//! and a Unix socket (a preface in pieces, a partial one held to `header_timeout`),
//! `h2` by ALPN over TLS (with SNI), the upstream getting HTTP/1.1 with Host and
//! `X-Forwarded-*`, a request body, the access log and metrics per stream, CONNECT
//! refused, upstream timers per stream, a reload applied to the next stream; many
//! streams on one connection (h2load, over h2c and TLS); an event stream with
//! heartbeats; one stream closed through the admin API while another goes on, and the
//! whole connection closed by id; the drain (GOAWAY, the stream in flight completes);
//! `idle_timeout`; and floods (rapid reset, CONTINUATION, MadeYouReset-style resets,
//! too many streams) from `h2flood.py` (frames written with the Python `h2` package's
//! hyperframe and hpack), each with a probe served meanwhile and tidegate's memory
//! bounded.
//!
//! Prerequisites (a missing one fails the test): curl with HTTP/2, h2load
//! (nghttp2-client), python3 with the `h2` package.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use tidegate_testkit::tls::TestCa;
use tidegate_testkit::{Addr, Backend, Bind, Reply, SseThen, Tidegate};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::time::Instant;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn flood_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/h2flood.py")
}

fn port(addr: &Addr) -> anyhow::Result<u16> {
    match addr {
        Addr::Tcp(a) => Ok(a.port()),
        other => bail!("not a TCP address: {other}"),
    }
}

/// `curl -sS -v ARGS`, with a deadline.
async fn curl(args: &[&str]) -> anyhow::Result<Output> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10"])
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(15), out)
        .await
        .context("curl did not finish")?
        .context("run curl (is it installed?)")
}

/// The protocol curl shows in its response status line (`< HTTP/2 200`).
fn response_line(out: &Output) -> String {
    text(&out.stderr)
        .lines()
        .find(|l| l.starts_with("< HTTP/"))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// curl's output shows the response status line `want`.
fn status_line(out: &Output, want: &str) -> anyhow::Result<()> {
    ensure!(response_line(out) == want, "{}", text(&out.stderr));
    Ok(())
}

/// The admin API's JSON for `METHOD URL_PATH`, expecting 2xx.
async fn api(tg: &Tidegate, method: &str, url_path: &str) -> anyhow::Result<serde_json::Value> {
    let Addr::Unix(admin) = tg.addr("admin")? else {
        bail!("the admin API is not on a Unix socket");
    };
    let (status, body) = tidegate_testkit::curl_unix(&admin, method, url_path).await?;
    ensure!(
        (200..300).contains(&status),
        "{method} {url_path}: {status} {}",
        text(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}

fn config(listen: &str, extra: &str, app: &Backend) -> String {
    format!(
        r#"
[listeners.web]
listen = [{listen}]
{extra}

[[listeners.web.routes]]
path = "/up"
upstream = "app"

[[listeners.web.routes]]
respond = {{ status = 200, body = "ok\n" }}

[upstreams.app]
servers = ["{}"]
sse_heartbeat = "200ms"
"#,
        app.addr().to_config()
    )
}

/// The upstream saw HTTP/1.1 with the client's authority as Host and `X-Forwarded-*`.
fn check_forwarded(
    app: &Backend,
    host: &str,
    proto: &str,
    xff: Option<&str>,
) -> anyhow::Result<()> {
    let reqs = app.requests();
    let req = reqs.last().context("the upstream got no request")?;
    ensure!(
        req.version == "HTTP/1.1",
        "upstream got {}",
        req.request_line()
    );
    ensure!(req.target == "/up?q=1", "target {}", req.target);
    ensure!(
        req.header("host") == Some(host),
        "Host {:?}",
        req.header("host")
    );
    ensure!(req.header("x-forwarded-proto") == Some(proto), "{req:?}");
    ensure!(req.header("x-forwarded-host") == Some(host), "{req:?}");
    ensure!(req.header("x-forwarded-for") == xff, "{req:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_over_tcp_and_unix_reaches_the_upstream_as_http11() -> anyhow::Result<()>
{
    let app = Backend::start(Bind::Tcp4, |_| Reply::echo())?;
    let toml = config(r#""127.0.0.1:0", "unix:web.sock""#, "", &app).replace(
        "[listeners.web]",
        "[server]\naccess_log = { to = \"access.log\", format = \"json\" }\n\n[listeners.web]",
    );
    let tg = Tidegate::start(bin(), &toml).await?;
    let addrs = tg.addrs("web");
    let tcp = addrs
        .iter()
        .find(|a| matches!(a, Addr::Tcp(_)))
        .context("tcp")?;
    let Some(Addr::Unix(sock)) = addrs.iter().find(|a| matches!(a, Addr::Unix(_))) else {
        bail!("no unix address in {addrs:?}");
    };
    let p = port(tcp)?;

    let out = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{p}/up?q=1"),
    ])
    .await?;
    status_line(&out, "< HTTP/2 200")?;
    check_forwarded(&app, &format!("127.0.0.1:{p}"), "http", Some("127.0.0.1"))?;

    let sock = sock.to_str().context("socket path")?;
    let out = curl(&[
        "--http2-prior-knowledge",
        "--unix-socket",
        sock,
        "http://h2.test/up?q=1",
    ])
    .await?;
    status_line(&out, "< HTTP/2 200")?;
    check_forwarded(&app, "h2.test", "http", None)?;

    // One access-log line per stream, with its protocol; counted per request.
    let log = tg.dir().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let got = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = got
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        ensure!(Instant::now() < deadline, "access log: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for l in &lines {
        ensure!(l["protocol"] == "HTTP/2.0" && l["path"] == "/up?q=1", "{l}");
        ensure!(l["status"] == 200 && l["upstream"] == "app", "{l}");
    }
    let metrics = crate::admin::tidegate(&["ctl", "metrics"], tg.dir()).await?;
    let metrics = text(&metrics.stdout);
    ensure!(
        metrics.contains(r#"tidegate_requests_total{listener="web",upstream="app",class="2xx"} 2"#),
        "{metrics}"
    );

    // A request body (no Content-Length on HTTP/2 from curl -T -) goes up whole.
    let mut child = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "--max-time",
            "10",
            "-T",
            "-",
        ])
        .arg(format!("http://127.0.0.1:{p}/up?q=1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run curl")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&[b'z'; 100_000]).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .context("curl did not finish")??;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    let req = app.requests().last().cloned().context("no request")?;
    ensure!(
        req.method == "PUT" && req.body_len == 100_000 && req.body_complete,
        "{} {} {}",
        req.request_line(),
        req.body_len,
        req.body_complete
    );

    // The same listener still speaks HTTP/1.1 to everyone else.
    let out = curl(&[&format!("http://127.0.0.1:{p}/x")]).await?;
    status_line(&out, "< HTTP/1.1 200 OK")?;
    ensure!(text(&out.stdout) == "ok\n");
    // CONNECT is refused on HTTP/2 too.
    let v = flood("connect", p, 5.0, "/").await?;
    ensure!(v["status"] == "405", "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preface_in_pieces_is_http2_and_a_partial_one_is_held_to_header_timeout(
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "x"))?;
    let tg = Tidegate::start(
        bin(),
        &config(r#""127.0.0.1:0""#, "header_timeout = \"500ms\"", &app),
    )
    .await?;
    let Addr::Tcp(web) = tg.addr("web")? else {
        bail!("web is not on TCP");
    };
    // In two pieces, a pause between them: HTTP/2 all the same (the server's SETTINGS
    // frame comes back).
    let mut s = tokio::net::TcpStream::connect(web).await?;
    s.set_nodelay(true)?;
    s.write_all(b"PRI * HTTP/2.0\r\n").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .context("no frame from the server")??;
    ensure!(head[3] == 0x04, "the first frame is not SETTINGS: {head:?}");

    // A partial preface, then silence: closed at header_timeout.
    let mut s = tokio::net::TcpStream::connect(web).await?;
    s.write_all(b"PRI * HTTP").await?;
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .context("not closed")?;
    let waited = started.elapsed();
    ensure!(
        read.is_err() || rest.is_empty() || text(&rest).starts_with("HTTP/1.1 4"),
        "{read:?} {}",
        text(&rest)
    );
    ensure!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(2500),
        "closed after {waited:?}"
    );
    Ok(())
}

/// Writes a test CA and a leaf for `h2.test` in `dir`; returns the TLS table.
fn tls_files(dir: &Path) -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    ca.write_ca(dir)?;
    ca.leaf(dir, "a", &["h2.test"], None)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_over_tls_with_sni_and_alpn_narrowed_to_http11() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    tls_files(dir.path())?;
    let app = Backend::start(Bind::Tcp4, |_| Reply::echo())?;
    let tls = r#"tls = { certificates = [ { cert = "a.pem", key = "a.key" } ] }"#;
    let tg = Tidegate::start_in(dir.path(), bin(), &config(r#""127.0.0.1:0""#, tls, &app)).await?;
    let p = port(&tg.addr("web")?)?;
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().context("ca path")?;
    let resolve = format!("h2.test:{p}:127.0.0.1");
    let url = format!("https://h2.test:{p}/up?q=1");
    let out = curl(&["--http2", "--cacert", ca, "--resolve", &resolve, &url]).await?;
    status_line(&out, "< HTTP/2 200")?;
    ensure!(
        text(&out.stderr).contains("ALPN: server accepted h2"),
        "{}",
        text(&out.stderr)
    );
    check_forwarded(&app, &format!("h2.test:{p}"), "https", Some("127.0.0.1"))?;
    let out = curl(&["--http1.1", "--cacert", ca, "--resolve", &resolve, &url]).await?;
    status_line(&out, "< HTTP/1.1 200 OK")?;
    drop(tg);

    // `alpn = ["http/1.1"]`: a client asking for h2 gets HTTP/1.1.
    let tls =
        r#"tls = { certificates = [ { cert = "a.pem", key = "a.key" } ], alpn = ["http/1.1"] }"#;
    let tg = Tidegate::start_in(dir.path(), bin(), &config(r#""127.0.0.1:0""#, tls, &app)).await?;
    let p = port(&tg.addr("web")?)?;
    let resolve = format!("h2.test:{p}:127.0.0.1");
    let url = format!("https://h2.test:{p}/x");
    let out = curl(&["--http2", "--cacert", ca, "--resolve", &resolve, &url]).await?;
    status_line(&out, "< HTTP/1.1 200 OK")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timers_hold_per_stream_a_504_and_a_reset_stream() -> anyhow::Result<()> {
    let slow = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_secs(3), Reply::text(200, "late"))
    })?;
    let stalled = Backend::start(Bind::Tcp4, |_| {
        Reply::chunks(vec![
            (Duration::ZERO, b"first".to_vec()),
            (Duration::from_secs(4), b"never".to_vec()),
        ])
    })?;
    let toml = format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
path = "/slow"
upstream = "slow"
[[listeners.web.routes]]
upstream = "stalled"
[upstreams.slow]
servers = ["{}"]
response_timeout = "500ms"
[upstreams.stalled]
servers = ["{}"]
idle_timeout = "500ms"
"#,
        slow.addr().to_config(),
        stalled.addr().to_config()
    );
    let tg = Tidegate::start(bin(), &toml).await?;
    let p = port(&tg.addr("web")?)?;
    let out = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{p}/slow"),
    ])
    .await?;
    status_line(&out, "< HTTP/2 504")?;

    // The response started, then the upstream went silent: the stream is reset at the
    // upstream's idle_timeout (curl: the stream was not closed cleanly).
    let started = Instant::now();
    let out = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{p}/stalled"),
    ])
    .await?;
    status_line(&out, "< HTTP/2 200")?;
    ensure!(!out.status.success(), "{}", text(&out.stderr));
    ensure!(text(&out.stdout) == "first", "{}", text(&out.stdout));
    ensure!(
        text(&out.stderr).contains("INTERNAL_ERROR"),
        "{}",
        text(&out.stderr)
    );
    ensure!(
        started.elapsed() < Duration::from_millis(2500),
        "reset after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// `h2load ARGS`: its output, checked for `N succeeded` and `N 2xx`.
async fn h2load(args: &[&str], n: usize) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("h2load")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .context("h2load did not finish")?
        .context("run h2load (apt-get install nghttp2-client)")?;
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success(),
        "h2load failed: {stdout}{}",
        text(&out.stderr)
    );
    ensure!(
        stdout.contains(&format!("{n} succeeded, 0 failed, 0 errored, 0 timeout")),
        "{stdout}"
    );
    ensure!(
        stdout.contains(&format!("status codes: {n} 2xx")),
        "{stdout}"
    );
    ensure!(stdout.contains("Application protocol: h2"), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection_over_h2c_and_tls_all_200() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    tls_files(dir.path())?;
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "from app"))?;
    let extra = r#"
[listeners.tls]
listen = ["127.0.0.1:0"]
tls = { certificates = [ { cert = "a.pem", key = "a.key" } ] }
[[listeners.tls.routes]]
upstream = "app"
"#;
    let tg =
        Tidegate::start_in(dir.path(), bin(), &config(r#""127.0.0.1:0""#, extra, &app)).await?;
    let web = port(&tg.addr("web")?)?;
    let tls = port(&tg.addr("tls")?)?;
    // One connection, 100 streams at once (under max_concurrent_streams, 128).
    h2load(
        &[
            "-n",
            "1000",
            "-c",
            "1",
            "-m",
            "100",
            &format!("http://127.0.0.1:{web}/up"),
        ],
        1000,
    )
    .await?;
    h2load(
        &[
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "50",
            &format!("https://127.0.0.1:{tls}/"),
        ],
        2000,
    )
    .await?;
    ensure!(
        app.requests().len() == 3000,
        "upstream got {}",
        app.requests().len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_over_h2_gets_its_events_and_heartbeats() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::sse(
            vec!["data: one\n\n".into(), "data: two\n\n".into()],
            SseThen::Hold,
        )
    })?;
    let tg = Tidegate::start(bin(), &config(r#""127.0.0.1:0""#, "", &app)).await?;
    let p = port(&tg.addr("web")?)?;
    // curl ends at --max-time: what it got by then is the stream's start.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-N", "--http2-prior-knowledge", "--max-time", "1.5"])
        .arg(format!("http://127.0.0.1:{p}/up"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .context("curl did not finish")??;
    let body = text(&out.stdout);
    ensure!(body.starts_with("data: one\n\ndata: two\n\n"), "{body:?}");
    let beats = body.matches(":\n\n").count();
    ensure!(beats >= 3, "{beats} heartbeats in 1.5 s at 200ms: {body:?}");
    // curl closed the connection at its --max-time: the upstream is closed at once.
    wait_upstream_closed(&app).await?;
    Ok(())
}

/// `python3 h2flood.py MODE 127.0.0.1 PORT SECONDS PATH`, killed when dropped.
fn script(mode: &str, port: u16, seconds: f64, path: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(flood_script())
        .args([
            mode,
            "127.0.0.1",
            &port.to_string(),
            &seconds.to_string(),
            path,
        ])
        .kill_on_drop(true);
    cmd
}

/// `h2flood.py MODE` against `port`, run to its end: its JSON result.
async fn flood(
    mode: &str,
    port: u16,
    seconds: f64,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let out = script(mode, port, seconds, path).output();
    let out = tokio::time::timeout(Duration::from_secs_f64(seconds + 20.0), out)
        .await
        .with_context(|| format!("h2flood.py {mode} did not finish"))?
        .context("run python3")?;
    parse_result(mode, &out)
}

fn parse_result(mode: &str, out: &Output) -> anyhow::Result<serde_json::Value> {
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last)
        .with_context(|| format!("h2flood.py {mode}: {stdout}{}", text(&out.stderr)))?;
    ensure!(v.get("error").is_none(), "h2flood.py {mode}: {v}");
    ensure!(
        out.status.success(),
        "h2flood.py {mode}: {v} {}",
        text(&out.stderr)
    );
    Ok(v)
}

/// A live `h2flood.py` whose stdin and stdout the test holds.
pub(crate) struct Script {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    mode: String,
}

impl Script {
    pub(crate) fn start(mode: &str, port: u16, seconds: f64, path: &str) -> anyhow::Result<Script> {
        let mut child = script(mode, port, seconds, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("run python3")?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(Script {
            child,
            lines: BufReader::new(stdout).lines(),
            mode: mode.to_owned(),
        })
    }

    pub(crate) async fn line(&mut self) -> anyhow::Result<String> {
        let line = tokio::time::timeout(Duration::from_secs(15), self.lines.next_line())
            .await
            .with_context(|| format!("h2flood.py {}: no line", self.mode))??;
        line.with_context(|| format!("h2flood.py {}: ended early", self.mode))
    }

    async fn tell(&mut self) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    pub(crate) async fn result(mut self) -> anyhow::Result<serde_json::Value> {
        let line = self.line().await?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("h2flood.py {}: {line}", self.mode))?;
        ensure!(v.get("error").is_none(), "h2flood.py {}: {v}", self.mode);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        Ok(v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_closed_through_the_admin_api_is_reset_and_its_neighbour_goes_on(
) -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::sse(vec!["data: hi\n\n".into()], SseThen::Hold)
    })?;
    let tg = Tidegate::start(bin(), &config(r#""127.0.0.1:0""#, "", &app)).await?;
    let p = port(&tg.addr("web")?)?;
    let mut script = Script::start("two-streams", p, 15.0, "/up")?;
    ensure!(script.line().await? == "ready");

    // The connection and its two streams, each under it.
    let conns = api(&tg, "GET", "/v1/connections").await?;
    let list = conns.as_array().context("a list")?;
    let conn = list
        .iter()
        .find(|c| c["protocol"] == "h2" && c.get("parent").is_none())
        .with_context(|| format!("no h2 connection in {conns}"))?;
    let id = conn["id"].as_u64().context("id")?;
    let mut streams: Vec<u64> = list
        .iter()
        .filter(|c| c["parent"].as_u64() == Some(id))
        .filter_map(|c| c["id"].as_u64())
        .collect();
    streams.sort_unstable();
    ensure!(streams.len() == 2, "streams of {id}: {conns}");
    for s in list.iter().filter(|c| c["parent"].as_u64() == Some(id)) {
        ensure!(s["protocol"] == "sse", "an event stream shows sse: {s}");
        ensure!(s["upstream"]["name"] == "app", "{s}");
    }
    ensure!(conn["state"] == "streaming", "{conn}");
    // `ctl conns` shows the streams under their connection.
    let table = crate::admin::tidegate(&["ctl", "conns"], tg.dir()).await?;
    ensure!(
        text(&table.stdout).contains(&format!("web (stream of {id})")),
        "{}",
        text(&table.stdout)
    );

    // The first stream (the first opened, HTTP/2 stream 1) is closed; the other goes on.
    api(&tg, "DELETE", &format!("/v1/connections/{}", streams[0])).await?;
    script.tell().await?;
    let v = script.result().await?;
    ensure!(v["reset_streams"] == serde_json::json!([1]), "{v}");
    ensure!(
        v["after_reset_data"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == 3)),
        "stream 3 got nothing after the reset: {v}"
    );
    ensure!(v["goaway"].is_null() && v["closed"] == false, "{v}");
    // The stream reset has its upstream connection closed; the other's went with the
    // script's end.
    wait_upstream_closed(&app).await?;

    // Closing the connection closes it all.
    let mut script = Script::start("in-flight", p, 15.0, "/up")?;
    ensure!(script.line().await? == "sent");
    let deadline = Instant::now() + Duration::from_secs(5);
    let id = loop {
        let conns = api(&tg, "GET", "/v1/connections").await?;
        let streams = conns
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["state"] == "streaming" && c.get("parent").is_some())
            .count();
        let conn = conns.as_array().into_iter().flatten().find(|c| {
            c["protocol"] == "h2" && c.get("parent").is_none() && c["state"] == "streaming"
        });
        if let (Some(c), 1) = (conn, streams) {
            break c["id"].as_u64().context("id")?;
        }
        ensure!(
            Instant::now() < deadline,
            "no streaming h2 connection: {conns}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    api(&tg, "DELETE", &format!("/v1/connections/{id}")).await?;
    let v = script.result().await?;
    ensure!(v["closed"] == true && v["ended"] == 0, "{v}");
    wait_upstream_closed(&app).await?;
    let conns = api(&tg, "GET", "/v1/connections").await?;
    ensure!(
        conns
            .as_array()
            .is_some_and(|a| a.iter().all(|c| c["side"] != "client")),
        "{conns}"
    );
    Ok(())
}

/// A client that opens no flow-control window (`SETTINGS_INITIAL_WINDOW_SIZE` 0) and
/// answers PINGs: hyper never polls its stream's body, and the stream is still held to
/// its upstream's idle_timeout and to an operator's close.
async fn zero_window_target(idle: &str) -> anyhow::Result<(Backend, Tidegate, u16)> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::chunks(vec![
            (Duration::ZERO, vec![b'x'; 64 * 1024]),
            (Duration::from_secs(30), b"never".to_vec()),
        ])
    })?;
    let toml = format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["{}"]
idle_timeout = "{idle}"
"#,
        app.addr().to_config()
    );
    let tg = Tidegate::start(bin(), &toml).await?;
    let p = port(&tg.addr("web")?)?;
    Ok((app, tg, p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_stream_is_reset_at_its_upstream_idle_timeout() -> anyhow::Result<()> {
    let (app, _tg, p) = zero_window_target("500ms").await?;
    let mut script = Script::start("zero-window", p, 10.0, "/up")?;
    ensure!(script.line().await? == "ready");
    let v = script.result().await?;
    ensure!(v["status"] == "200" && v["body"] == 0, "{v}");
    ensure!(!v["reset"].is_null() || v["closed"] == true, "{v}");
    ensure!(v["after"].as_f64().is_some_and(|t| t < 3.0), "{v}");
    wait_upstream_closed(&app).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_stream_closed_through_the_admin_api_is_reset() -> anyhow::Result<()> {
    let (app, tg, p) = zero_window_target("60s").await?;
    // Far from the upstream's idle_timeout: the close is the operator's.
    let mut script = Script::start("zero-window", p, 10.0, "/up")?;
    ensure!(script.line().await? == "ready");
    let conns = api(&tg, "GET", "/v1/connections").await?;
    let stream = conns
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["protocol"] == "h2" && c.get("parent").is_some())
        .and_then(|c| c["id"].as_u64())
        .with_context(|| format!("no h2 stream in {conns}"))?;
    api(&tg, "DELETE", &format!("/v1/connections/{stream}")).await?;
    let v = script.result().await?;
    ensure!(!v["reset"].is_null() || v["closed"] == true, "{v}");
    ensure!(v["after"].as_f64().is_some_and(|t| t < 3.0), "{v}");
    wait_upstream_closed(&app).await?;
    Ok(())
}

/// Within 1 s, `app` has no open connection (tidegate closed its side).
async fn wait_upstream_closed(app: &Backend) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while app.open_connections() > 0 {
        ensure!(
            Instant::now() < deadline,
            "{} upstream connection(s) still open",
            app.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_the_next_stream_of_an_open_connection() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "x"))?;
    let toml = config(r#""127.0.0.1:0""#, "", &app);
    let tg = Tidegate::start(bin(), &toml).await?;
    let p = port(&tg.addr("web")?)?;
    let mut script = Script::start("sequential", p, 15.0, "/x")?;
    ensure!(script.line().await? == "first 200");
    std::fs::write(
        tg.config_path(),
        toml.replace("status = 200, body", "status = 203, body"),
    )?;
    let out = crate::admin::tidegate(&["ctl", "reload"], tg.dir()).await?;
    ensure!(out.status.success(), "ctl reload: {}", text(&out.stderr));
    script.tell().await?;
    let v = script.result().await?;
    ensure!(v["second"] == "203" && v["goaway"].is_null(), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_sends_goaway_and_the_stream_in_flight_completes() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_millis(1500), Reply::text(200, "late"))
    })?;
    let toml = config(r#""127.0.0.1:0""#, "", &app).replace(
        "[listeners.web]",
        "[server]\nshutdown_grace = \"10s\"\n\n[listeners.web]",
    );
    let mut tg = Tidegate::start(bin(), &toml).await?;
    let p = port(&tg.addr("web")?)?;
    let mut script = Script::start("in-flight", p, 15.0, "/up")?;
    ensure!(script.line().await? == "sent");
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.requests().is_empty() {
        ensure!(Instant::now() < deadline, "the upstream got no request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tg.signal(nix::sys::signal::Signal::SIGTERM)?;
    let v = script.result().await?;
    ensure!(v["goaway_before_end"] == true, "{v}");
    ensure!(v["status"] == "200", "{v}");
    ensure!(v["body"] == 4, "{v}");
    let status = tg.wait_exit(Duration::from_secs(10)).await?;
    ensure!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_gets_goaway_and_is_closed_at_idle_timeout() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "x"))?;
    let tg = Tidegate::start(
        bin(),
        &config(r#""127.0.0.1:0""#, "idle_timeout = \"1s\"", &app),
    )
    .await?;
    let p = port(&tg.addr("web")?)?;
    let v = flood("idle", p, 8.0, "/x").await?;
    let goaway = v["goaway_after"]
        .as_f64()
        .with_context(|| format!("no GOAWAY: {v}"))?;
    let closed = v["closed_after"]
        .as_f64()
        .with_context(|| format!("not closed: {v}"))?;
    ensure!(
        (0.8..3.0).contains(&goaway),
        "GOAWAY {goaway} s after the last stream: {v}"
    );
    ensure!(closed < 4.0, "closed {closed} s after: {v}");
    ensure!(v["goaway"] == 0, "GOAWAY(NO_ERROR): {v}");
    Ok(())
}

// === floods ===

/// How much tidegate's resident memory may grow during one flood: what a few thousand
/// streams' worth of state would cost if any were kept, well above what a served
/// connection costs (a few hundred KiB) and the allocator's slack.
const RSS_GROWTH_KIB: u64 = 32 * 1024;

/// Runs `mode` against tidegate while a probe (another connection, HTTP/2 then
/// HTTP/1.1) is served every 100 ms and tidegate's RSS is sampled; the flood's result.
async fn flood_with_probe(
    tg: &Tidegate,
    mode: &str,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    flood_with_probe_bounded(tg, mode, path, RSS_GROWTH_KIB).await
}

/// [`flood_with_probe`], with tidegate's RSS growth held to `bound_kib`.
async fn flood_with_probe_bounded(
    tg: &Tidegate,
    mode: &str,
    path: &str,
    bound_kib: u64,
) -> anyhow::Result<serde_json::Value> {
    let p = port(&tg.addr("web")?)?;
    let pid = tg.pid();
    let base = tidegate_testkit::procfs::vm_rss_kib(pid)?;
    let run = tokio::spawn({
        let mode = mode.to_owned();
        let path = path.to_owned();
        async move { flood(&mode, p, 6.0, &path).await }
    });
    let mut probes = 0;
    let mut peak = base;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !run.is_finished() {
        ensure!(Instant::now() < deadline, "{mode}: the flood did not end");
        let args: &[&str] = if probes % 2 == 0 {
            &["--http2-prior-knowledge"]
        } else {
            &[]
        };
        let url = format!("http://127.0.0.1:{p}/x");
        let mut all: Vec<&str> = args.to_vec();
        all.push(&url);
        let started = Instant::now();
        let out = curl(&all).await?;
        ensure!(
            out.status.success() && text(&out.stdout) == "ok\n",
            "{mode}: probe {probes} failed: {}",
            text(&out.stderr)
        );
        ensure!(
            started.elapsed() < Duration::from_secs(3),
            "{mode}: probe {probes} took {:?}",
            started.elapsed()
        );
        probes += 1;
        peak = peak.max(tidegate_testkit::procfs::vm_rss_kib(pid)?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = run.await??;
    ensure!(probes >= 1, "{mode}: no probe ran");
    ensure!(
        peak <= base + bound_kib,
        "{mode}: RSS grew from {base} KiB to {peak} KiB: {v}"
    );
    Ok(v)
}

async fn flood_target() -> anyhow::Result<(Backend, Tidegate)> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_secs(3), Reply::text(200, "slow"))
    })?;
    let tg = Tidegate::start(
        bin(),
        &config(
            r#""127.0.0.1:0""#,
            "h2 = { max_concurrent_streams = 10 }",
            &app,
        ),
    )
    .await?;
    Ok((app, tg))
}

/// `mode` against a fresh [`flood_target`], with the probe: the upstream and the result.
async fn flooded(mode: &str, path: &str) -> anyhow::Result<(Backend, serde_json::Value)> {
    let (app, tg) = flood_target().await?;
    let v = flood_with_probe(&tg, mode, path).await?;
    Ok((app, v))
}

/// The flood's connection got GOAWAY(ENHANCE_YOUR_CALM); or its GOAWAY was lost to the
/// reset of a socket with the flood still unread in it, and its close is what the client
/// saw.
fn calmed(v: &serde_json::Value) -> anyhow::Result<()> {
    ensure!(
        v["goaway"] == 11 || (v["goaway"].is_null() && v["closed"] == true),
        "{v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_gets_goaway_and_others_are_served() -> anyhow::Result<()> {
    let (_app, v) = flooded("rapid-reset", "/x").await?;
    // Once more than max_pending_accept_reset_streams wait.
    calmed(&v)?;
    ensure!(v["streams"].as_u64().is_some_and(|n| n < 200_000), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_gets_goaway_and_others_are_served() -> anyhow::Result<()> {
    let (_app, v) = flooded("continuation", "/x").await?;
    ensure!(!v["goaway"].is_null() || v["closed"] == true, "{v}");
    // Far less than the 20,000 frames (320 MB) the flood would send.
    ensure!(v["frames"].as_u64().is_some_and(|n| n < 20_000), "{v}");
    ensure!(v["responses"] == 0, "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_floods_get_goaway_and_others_are_served() -> anyhow::Result<()> {
    let (_app, tg) = flood_target().await?;
    // Each of these streams is reset by tidegate (a malformed request): past
    // max_local_error_reset_streams (256), GOAWAY(ENHANCE_YOUR_CALM).
    let v = flood_with_probe(&tg, "bad-headers", "/x").await?;
    calmed(&v)?;
    let resets = v["resets"].as_u64().unwrap_or(0);
    ensure!(resets <= 256, "{resets} streams reset: {v}");
    for mode in ["window-zero", "data-after-end"] {
        let v = flood_with_probe(&tg, mode, "/x").await?;
        // GOAWAY(ENHANCE_YOUR_CALM) past max_local_error_reset_streams (256), or the
        // connection's error at the first one: either way, not 100,000 resets.
        ensure!(!v["goaway"].is_null() || v["closed"] == true, "{mode}: {v}");
        ensure!(
            v["streams"].as_u64().is_some_and(|n| n < 100_000),
            "{mode}: {v}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_above_max_concurrent_streams_are_refused() -> anyhow::Result<()> {
    let (app, v) = flooded("streams", "/up").await?;
    // At most 10 open at once: the rest are refused (RST_STREAM REFUSED_STREAM) or the
    // connection is closed with GOAWAY.
    let refused = v["refused"].as_u64().unwrap_or(0);
    ensure!(refused > 0 || !v["goaway"].is_null(), "{v}");
    ensure!(
        app.requests().len() <= 10,
        "the upstream got {} requests",
        app.requests().len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_above_the_listeners_max_streams_total_are_refused() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_secs(3), Reply::text(200, "slow"))
    })?;
    let tg = Tidegate::start(
        bin(),
        &config(
            r#""127.0.0.1:0""#,
            "h2 = { max_concurrent_streams = 100, max_streams_total = 5 }",
            &app,
        ),
    )
    .await?;
    let p = port(&tg.addr("web")?)?;
    let v = flood("streams", p, 3.0, "/up").await?;
    // Below the connection's own limit, above the listener's: refused, never forwarded.
    ensure!(v["refused"].as_u64().is_some_and(|n| n > 0), "{v}");
    ensure!(
        app.requests().len() <= 5,
        "the upstream got {} requests",
        app.requests().len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_on_one_connection_cost_a_bounded_memory() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, vec![b'x'; 4 << 20]))?;
    let tg = Tidegate::start(
        bin(),
        &config(
            r#""127.0.0.1:0""#,
            "h2 = { max_concurrent_streams = 20 }",
            &app,
        ),
    )
    .await?;
    // A client that grants the largest windows and reads nothing: each stream it may
    // open costs up to about 2 MiB (docs/config.md, measured ~1.75 MiB), so 100 streams
    // asked for, 20 allowed: at most 20 × 3 MiB, not 100 × 4 MiB bodies.
    let bound = 20 * 3 * 1024;
    let v = flood_with_probe_bounded(&tg, "slow-readers", "/up", bound).await?;
    ensure!(v["refused"].as_u64().is_some_and(|n| n >= 80), "{v}");
    Ok(())
}
