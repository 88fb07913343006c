//! The admin API and `tidegate ctl`, end to end with the real binary
//! (`docs/admin-api.md`; leaked clients cannot lock operators out): the default socket
//! and its mode, `[admin] listen` and `run --admin`, a second instance on the default
//! socket refused with a message that says what to do, the API answering during the
//! drain, leaked silent clients giving way to the operator, a full API (every slot
//! mid-request) answering `503` to curl and recovering, and `ctl`'s tables,
//! `--json` and its one-line error when nothing listens.
//!
//! The test kit's runner sets `XDG_RUNTIME_DIR` to each instance's directory, so the
//! default admin socket is per instance. `curl` is a prerequisite of some tests: they
//! fail with a message when it is missing.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::Signal;
use tidegate_testkit::{get, parse_log_line, Addr, Backend, Bind, Reply, Tidegate};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// A generous functional bound for what should take milliseconds.
const SOON: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);

/// One HTTP listener answering `hello`, plus `extra` lines (e.g. an `[admin]` table).
fn config(extra: &str) -> String {
    format!(
        r#"
[server]
shutdown_grace = "2s"

[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
respond = {{ status = 200, body = "hello\n" }}
{extra}
"#
    )
}

/// The admin listener's Unix socket path.
fn admin_path(tg: &Tidegate) -> anyhow::Result<PathBuf> {
    match tg.addr("admin")? {
        Addr::Unix(p) => Ok(p),
        other => bail!("the admin API listens on {other}, not a Unix socket"),
    }
}

/// `tidegate ARGS` run to its end in `dir` with `XDG_RUNTIME_DIR=dir`.
pub(crate) async fn tidegate(args: &[&str], dir: &Path) -> anyhow::Result<Output> {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .with_context(|| format!("tidegate {args:?} did not finish"))?
        .with_context(|| format!("run tidegate {args:?}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `curl --unix-socket PATH http://admin/URL_PATH`: (status, body).
async fn curl(path: &Path, method: &str, url_path: &str) -> anyhow::Result<(u16, String)> {
    let (status, body) = tidegate_testkit::curl_unix(path, method, url_path).await?;
    Ok((status, String::from_utf8(body)?))
}

// === where it listens ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_admin_socket_is_private_and_answers_curl() -> anyhow::Result<()> {
    let tg = Tidegate::start(bin(), &config("")).await?;
    let path = admin_path(&tg)?;
    assert_eq!(path, tg.dir().join("tidegate").join("admin.sock"));
    let meta = std::fs::symlink_metadata(&path)?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let dir_mode = std::fs::metadata(tg.dir().join("tidegate"))?
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "folder mode");

    let (code, body) = curl(&path, "GET", "/v1/status").await?;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status["state"], "running");
    assert_eq!(status["pid"], tg.pid());
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["config"], tg.config_path().display().to_string());
    let web = &status["listeners"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["addresses"][0], tg.addr("web")?.to_config());

    // The config file is unchanged: a reload with nothing to change.
    let (code, body) = curl(&path, "POST", "/v1/reload").await?;
    assert_eq!(code, 200, "{body}");
    let reload: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(reload["applied"], true, "{body}");
    assert_eq!(reload["generation"], 2, "{body}");
    assert_eq!(reload["changes"], serde_json::json!([]), "{body}");
    let (code, _) = curl(&path, "GET", "/v1/nothing").await?;
    assert_eq!(code, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listen_in_the_config_is_used() -> anyhow::Result<()> {
    let tg = Tidegate::start(bin(), &config("[admin]\nlisten = \"unix:ops.sock\"\n")).await?;
    let path = admin_path(&tg)?;
    assert_eq!(path, tg.dir().join("ops.sock"));
    let mode = std::fs::symlink_metadata(&path)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "no mode= means 0600");
    assert!(
        !tg.dir().join("tidegate").exists(),
        "no default folder made"
    );
    let resp = get(&Addr::Unix(path), "/v1/admin-clients", "x").await?;
    assert_eq!(resp.status, 200);
    let all = resp.json()?;
    assert_eq!(all["clients"].as_array().map(Vec::len), Some(1), "{all:#}");
    assert_eq!(all["evictions"], 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_admin_overrides_the_admin_address() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("tga").tempdir()?;
    let cfg = dir.path().join("tidegate.toml");
    std::fs::write(&cfg, config(""))?;
    let mut child = tokio::process::Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .args(["--admin", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let logs = child.stderr.take().context("stderr")?;
    let admin = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(logs).lines();
        let mut admin = None;
        while let Some(line) = lines.next_line().await? {
            let Some(ev) = parse_log_line(&line) else {
                continue;
            };
            if ev.message == "listening" && ev.field("listener") == Some("admin") {
                admin = ev.field("address").map(str::to_owned);
            }
            if ev.message == "ready" {
                return Ok::<_, anyhow::Error>(admin);
            }
        }
        bail!("tidegate exited before ready")
    })
    .await??
    .context("no admin listening line")?;
    let addr = Addr::parse(&admin, dir.path())?;
    assert!(
        matches!(addr, Addr::Tcp(a) if a.ip().is_loopback() && a.port() != 0),
        "{addr}"
    );
    let resp = get(&addr, "/v1/status", "localhost").await?;
    assert_eq!(resp.status, 200);
    assert!(
        !dir.path().join("tidegate").exists(),
        "the default socket is not made"
    );
    let out = tidegate(&["ctl", "--admin", &admin, "status"], dir.path()).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(", running, up "), "{}", stdout(&out));
    child.start_kill()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_default_socket_is_told_to_set_admin_listen() -> anyhow::Result<()>
{
    let dir = tempfile::Builder::new().prefix("tga").tempdir()?;
    let first = Tidegate::start_in(dir.path(), bin(), &config("")).await?;
    let path = admin_path(&first)?;

    let second = dir.path().join("second.toml");
    std::fs::write(&second, config(""))?;
    let out = tidegate(&["run", "--config", "second.toml"], dir.path()).await?;
    let text = stderr(&out);
    assert!(!out.status.success(), "a second instance started:\n{text}");
    assert!(
        text.contains(&format!(
            "cannot listen on unix:{}, the default admin socket: another tidegate is listening on it",
            path.display()
        )) && text.contains("[admin] listen"),
        "{text}"
    );
    // The first one is untouched.
    let resp = get(&Addr::Unix(path), "/v1/status", "x").await?;
    assert_eq!(resp.status, 200);
    Ok(())
}

// === lifecycle ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_during_the_drain_and_goes_away_at_exit() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_millis(800), Reply::text(200, "slow\n"))
    })?;
    let cfg = format!(
        r#"
[server]
shutdown_grace = "3s"

[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
        app.addr().to_config()
    );
    let mut tg = Tidegate::start(bin(), &cfg).await?;
    let path = admin_path(&tg)?;
    let web = tg.addr("web")?;
    let slow = tokio::spawn(async move { get(&web, "/", "x").await });
    app.wait_for(|b| b.requests().len() == 1, SOON).await?;

    tg.signal(Signal::SIGTERM)?;
    let admin = Addr::Unix(path.clone());
    let start = Instant::now();
    loop {
        let resp = get(&admin, "/v1/status", "x").await?;
        if resp.json()?["state"] == "draining" {
            break;
        }
        ensure!(start.elapsed() < SOON, "never draining: {}", resp.text());
        tokio::time::sleep(POLL).await;
    }
    let resp = slow.await??;
    assert_eq!(resp.status, 200);
    let status = tg.wait_exit(Duration::from_secs(5)).await?;
    assert_eq!(status.code(), Some(0), "logs:\n{}", tg.logs().join("\n"));
    assert!(!path.exists(), "{} left behind", path.display());
    Ok(())
}

/// The start of a request head, never finished: a client with a request in progress.
const HALF_SENT: &[u8] = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n";

/// `GET /v1/status` with `Connection: close` on a new connection, read to its end:
/// the status and the body.
async fn probe(path: &Path) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut bytes = Vec::new();
    // A reset after the whole answer still leaves the answer in `bytes`.
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut bytes))
        .await
        .context("no answer")?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// Fills `n` admin slots with clients that each have a request in progress, and
/// returns them. A holder whose bytes the server has not read yet looks idle and may be
/// evicted by the next client, so a probe asks until it is refused; closed holders are
/// replaced meanwhile (polling, bounded).
async fn hold_every_slot(path: &Path, n: usize) -> anyhow::Result<Vec<tokio::net::UnixStream>> {
    use tokio::io::AsyncWriteExt;
    let mut holders: Vec<tokio::net::UnixStream> = Vec::new();
    let start = Instant::now();
    // Bounded by the deadline.
    loop {
        holders.retain(|s| {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        while holders.len() < n {
            let mut s = tokio::net::UnixStream::connect(path).await?;
            s.write_all(HALF_SENT).await?;
            holders.push(s);
        }
        let (code, body) = probe(path).await?;
        if code == 503 {
            return Ok(holders);
        }
        ensure!(
            start.elapsed() < SOON,
            "the slots never all held a request in progress: {code} {body}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_mid_request_in_every_slot_get_newcomers_a_clear_503_until_their_deadline(
) -> anyhow::Result<()> {
    // An idle_timeout long enough that the holders still hold their slots when curl (a
    // process to start) asks, even on a busy machine.
    let tg = Tidegate::start(
        bin(),
        &config("[admin]\nmax_connections = 3\nidle_timeout = \"3s\"\n"),
    )
    .await?;
    let path = admin_path(&tg)?;
    let _holders = hold_every_slot(&path, 3).await?;
    let (code, body) = curl(&path, "GET", "/v1/status").await?;
    assert_eq!(code, 503, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body)?;
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("3 of 3 client slots are held, each by a request in progress")
            && message.contains("idle"),
        "{message}"
    );
    assert_eq!(error["detail"]["clients"], 3);
    assert_eq!(error["detail"]["idle_timeout_s"], 3.0);

    // Their request deadline closes them; then the API answers again.
    let start = Instant::now();
    let within = Duration::from_secs(3) + SOON;
    loop {
        let (code, body) = curl(&path, "GET", "/v1/status").await?;
        if code == 200 {
            break;
        }
        ensure!(
            start.elapsed() < within,
            "still {code} after {within:?}: {body}"
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_silent_clients_in_every_slot_give_way_to_the_operator() -> anyhow::Result<()> {
    // The incident: 200 leaked connections that never send a byte, default [admin].
    let tg = Tidegate::start(bin(), &config("")).await?;
    let path = admin_path(&tg)?;
    let mut leaked = Vec::new();
    for i in 0..200 {
        leaked.push(
            tokio::net::UnixStream::connect(&path)
                .await
                .with_context(|| format!("connect leaked client {i}"))?,
        );
    }
    for i in 0..5 {
        if i > 0 {
            // The operator's pace, not a wait for readiness.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let start = Instant::now();
        let (code, body) = curl(&path, "GET", "/v1/status").await?;
        let took = start.elapsed();
        assert_eq!(code, 200, "curl {i}: {body}");
        assert!(took < Duration::from_secs(1), "curl {i} took {took:?}");
        let status: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(status["state"], "running");
    }
    // The longest-idle leaked client was closed for a newcomer.
    {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(SOON, leaked[0].read(&mut buf)).await?;
        assert!(matches!(n, Ok(0)), "{n:?}");
    }
    let (code, body) = curl(&path, "GET", "/v1/admin-clients").await?;
    assert_eq!(code, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body)?;
    let clients = all["clients"].as_array().context("clients")?;
    assert!(clients.len() <= 16, "the cap holds: {all:#}");
    let evictions = all["evictions"].as_u64().context("evictions")?;
    assert!(evictions > 200 - 16, "{all:#}");
    let recent = all["recent_evictions"].as_array().context("recent")?;
    assert_eq!(recent.len(), 16, "{all:#}");
    assert!(recent.iter().all(|e| e["peer"] == "unix"), "{all:#}");
    // ctl shows them too.
    let out = tidegate(&["ctl", "clients"], tg.dir()).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("evicted for new clients since start: "),
        "{}",
        stdout(&out)
    );
    Ok(())
}

// === a TCP admin address refuses cross-site requests ===

/// One request with `headers` (and `body`) on a new connection to `addr`.
async fn send(
    addr: &Addr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<tidegate_testkit::Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut c = tidegate_testkit::connect(addr).await?;
    c.send(head.as_bytes()).await?;
    c.read_response(SOON)
        .await
        .with_context(|| format!("{method} {path} {headers:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_admin_address_refuses_cross_site_requests_and_ctl_still_works() -> anyhow::Result<()>
{
    let tg = Tidegate::start(
        bin(),
        &config(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.b]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
        ),
    )
    .await?;
    let admin = tg.addr("admin")?;
    let Addr::Tcp(sock) = admin.clone() else {
        bail!("the admin API listens on {admin}, not TCP");
    };
    let port = sock.port();
    let state_of_b0 = || async {
        let r = send(&admin, "GET", "/v1/upstreams", &[("Host", "localhost")], "").await?;
        ensure!(r.status == 200, "{}", r.text());
        Ok::<_, anyhow::Error>(r.json()?[0]["servers"][0]["state"].clone())
    };

    // Host: loopback names with any port pass; another name is DNS rebinding: 403.
    for host in [
        "localhost".to_owned(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = send(&admin, "GET", "/v1/status", &[("Host", &host)], "").await?;
        assert_eq!(r.status, 200, "Host {host}: {}", r.text());
    }
    for host in [
        format!("evil.example:{port}"),
        "localhost.evil.example".to_owned(),
        format!("localhost:{port}@evil.example"),
    ] {
        let r = send(&admin, "GET", "/v1/status", &[("Host", &host)], "").await?;
        assert_eq!(r.status, 403, "Host {host}: {}", r.text());
        assert!(r.text().contains("loopback"), "{}", r.text());
    }
    let r = send(&admin, "GET", "/v1/status", &[], "").await?;
    assert_eq!(r.status, 403, "no Host: {}", r.text());

    // What a web page can send without a preflight changes nothing.
    let drain = r#"{"state": "drain"}"#;
    let path = "/v1/upstreams/b/servers/0/state";
    let r = send(
        &admin,
        "POST",
        path,
        &[("Host", "localhost"), ("Content-Type", "text/plain")],
        drain,
    )
    .await?;
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(r.text().contains("application/json"), "{}", r.text());
    let r = send(&admin, "POST", path, &[("Host", "localhost")], drain).await?;
    assert_eq!(r.status, 415, "no Content-Type: {}", r.text());
    let r = send(
        &admin,
        "POST",
        path,
        &[
            ("Host", "localhost"),
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        drain,
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = send(
        &admin,
        "GET",
        "/v1/status",
        &[("Host", "localhost"), ("Origin", "http://evil.example")],
        "",
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = send(
        &admin,
        "DELETE",
        "/v1/connections/99",
        &[("Host", "localhost")],
        "",
    )
    .await?;
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(state_of_b0().await?, "ready");

    // The same POST as JSON, from loopback without Origin, is served.
    let r = send(
        &admin,
        "POST",
        path,
        &[
            ("Host", &format!("127.0.0.1:{port}")),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        drain,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(state_of_b0().await?, "drain");

    // tidegate ctl sends JSON and a loopback Host: every kind of request works.
    let addr = sock.to_string();
    let out = tidegate(&["ctl", "--admin", &addr, "status"], tg.dir()).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tidegate(&["ctl", "--admin", &addr, "ready", "b/0"], tg.dir()).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state_of_b0().await?, "ready");
    let out = tidegate(&["ctl", "--admin", &addr, "kill", "99"], tg.dir()).await?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "tidegate ctl: no connection 99 (404)\n");
    let out = tidegate(&["ctl", "--admin", &addr, "reload", "--dry-run"], tg.dir()).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("dry run"), "{}", stdout(&out));
    Ok(())
}

// === tidegate ctl ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_finds_the_socket_and_prints_tables_or_json() -> anyhow::Result<()> {
    let tg = Tidegate::start(bin(), &config("")).await?;
    let dir = tg.dir();

    // The default socket (XDG_RUNTIME_DIR), as `run` chose it.
    let out = tidegate(&["ctl", "status"], dir).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "tidegate {}, pid {}, running, up ",
            env!("CARGO_PKG_VERSION"),
            tg.pid()
        )),
        "{text}"
    );
    assert!(
        text.contains("LISTENER  PROTOCOL  CONNECTIONS  MAX    ADDRESSES"),
        "{text}"
    );
    assert!(text.contains(&tg.addr("web")?.to_config()), "{text}");

    // --config and --json.
    let config = tg.config_path().display().to_string();
    let out = tidegate(&["ctl", "--config", &config, "--json", "status"], dir).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(status["pid"], tg.pid());

    // --admin with a path; the flags may follow the command.
    let path = admin_path(&tg)?.display().to_string();
    let out = tidegate(&["ctl", "conns", "--admin", &path], dir).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no live connections\n");
    let out = tidegate(&["ctl", "clients", "--admin", &format!("unix:{path}")], dir).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ID  PEER  AGE"),
        "{}",
        stdout(&out)
    );

    // An API error: one line on stderr, exit 1; with --json the error's JSON on stdout.
    let out = tidegate(&["ctl", "kill", "99"], dir).await?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "tidegate ctl: no connection 99 (404)\n");
    let out = tidegate(&["ctl", "--json", "kill", "99"], dir).await?;
    assert_eq!(out.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(error["error"], "no connection 99");

    // A malformed server name is a usage error.
    let out = tidegate(&["ctl", "drain", "app"], dir).await?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_without_a_running_tidegate_says_which_socket_and_why_in_one_line() -> anyhow::Result<()>
{
    let dir = tempfile::Builder::new().prefix("tga").tempdir()?;
    let out = tidegate(&["ctl", "status"], dir.path()).await?;
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "tidegate ctl: cannot reach the admin socket {}: no such file or directory (ENOENT) \
         — is tidegate running? (set --admin or [admin] listen)\n",
        dir.path().join("tidegate/admin.sock").display()
    );
    assert_eq!(stderr(&out), expected);
    assert_eq!(stdout(&out), "");

    // A stale socket file: refused.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale)?);
    let admin = format!("unix:{}", stale.display());
    let out = tidegate(&["ctl", "--admin", &admin, "upstreams"], dir.path()).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "cannot reach the admin socket {}: connection refused (ECONNREFUSED) — is tidegate running?",
            stale.display()
        )),
        "{}",
        stderr(&out)
    );
    Ok(())
}

// === the live view of the data plane ===

/// `curl` that expects 2xx and parses the JSON body.
async fn api(path: &Path, method: &str, url_path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = curl(path, method, url_path).await?;
    ensure!(
        (200..300).contains(&status),
        "{method} {url_path}: {status} {body}"
    );
    Ok(serde_json::from_str(&body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_shows_live_connections_closes_them_and_changes_server_states(
) -> anyhow::Result<()> {
    let events = Backend::start(Bind::Unix, |_| {
        Reply::sse(vec!["data: hi\n\n".into()], tidegate_testkit::SseThen::Hold)
    })?;
    let b0 = Backend::start(Bind::Tcp4, |_| Reply::text(200, "b0"))?;
    let b1 = Backend::start(Bind::Tcp4, |_| Reply::text(200, "b1"))?;
    let toml = format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
path = "/events"
upstream = "app"
[[listeners.web.routes]]
upstream = "b"
[upstreams.app]
servers = ["{}"]
[upstreams.b]
servers = ["{}", "{}"]
"#,
        events.addr().to_config(),
        b0.addr().to_config(),
        b1.addr().to_config()
    );
    let tg = Tidegate::start(bin(), &toml).await?;
    let admin = admin_path(&tg)?;
    let web = tg.addr("web")?;

    // An open event stream is listed, with its upstream side.
    let mut sse = tidegate_testkit::connect(&web).await?;
    sse.send(b"GET /events HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await?;
    assert_eq!(sse.read_head(SOON).await?.status, 200);
    sse.read_until(b"data: hi", SOON).await?;
    let conns = api(&admin, "GET", "/v1/connections").await?;
    let list = conns.as_array().context("a JSON array")?;
    let client = list
        .iter()
        .find(|c| c["side"] == "client" && c["protocol"] == "sse")
        .with_context(|| format!("no client sse connection in {conns:#}"))?;
    assert_eq!(client["listener"], "web");
    assert_eq!(client["state"], "streaming");
    assert_eq!(client["upstream"]["name"], "app");
    assert_eq!(client["upstream"]["server"], events.addr().to_config());
    assert!(client["bytes_out"].as_u64().unwrap_or(0) > 0, "{client:#}");
    assert!(
        list.iter()
            .any(|c| c["side"] == "upstream" && c["listener"] == "app"),
        "the upstream connection is listed too: {conns:#}"
    );
    let out = tidegate(&["ctl", "conns"], tg.dir()).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("sse"), "{}", stdout(&out));

    // Closing it through the API ends the client's stream and the upstream connection.
    let id = client["id"].as_u64().context("id")?;
    let closed = api(&admin, "DELETE", &format!("/v1/connections/{id}")).await?;
    assert_eq!(closed["closed"], id, "{closed:#}");
    let (_, end) = sse.read_to_end(SOON).await?;
    assert_eq!(end, tidegate_testkit::End::Eof);
    events
        .wait_for(|b| b.closed_connections() == 1, SOON)
        .await?;

    // Server states: maint takes b/0 out of rotation, ready puts it back.
    let out = tidegate(&["ctl", "maint", "b/0"], tg.dir()).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let ups = api(&admin, "GET", "/v1/upstreams").await?;
    let b = ups
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "b"))
        .with_context(|| format!("no upstream b in {ups:#}"))?;
    assert_eq!(b["servers"][0]["state"], "maint");
    assert_eq!(b["servers"][0]["available"], false);
    assert_eq!(b["servers"][1]["state"], "ready");
    assert_eq!(b["servers"][0]["health"], "unknown");
    for _ in 0..6 {
        let resp = get(&web, "/", "example.com").await?;
        assert_eq!(resp.text(), "b1");
    }
    let out = tidegate(&["ctl", "ready", "b/0"], tg.dir()).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(get(&web, "/", "example.com").await?.text());
    }
    assert!(seen.contains("b0"), "b/0 back in rotation: {seen:?}");
    let (status, body) = curl(&admin, "POST", "/v1/upstreams/nope/servers/0/state").await?;
    assert!(status == 404 || status == 400, "{status} {body}");

    // Metrics count what happened.
    let (status, metrics) = curl(&admin, "GET", "/metrics").await?;
    assert_eq!(status, 200);
    let requests: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tidegate_requests_total{") && l.contains("upstream=\"b\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(requests, 10.0, "{metrics}");
    assert!(metrics.contains("tidegate_server_state"), "{metrics}");
    Ok(())
}
