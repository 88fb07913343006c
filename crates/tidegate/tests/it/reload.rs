//! End-to-end tests of hot reload (`tidegate ctl reload`, SIGHUP): live WebSocket,
//! numbered SSE and TCP-mode tunnels on TCP and Unix listeners, and a probe loop of new
//! connections, across many reloads that add routes, change servers and timeouts; a
//! broken config changes nothing; what a reload keeps (pooled connections, health,
//! counters, sockets) and what it retires (removed listeners and servers).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::Signal;
use tidegate_testkit::{connect, get, Addr, Backend, Bind, RawConn, Reply, TcpBackend, Tidegate};
use tokio::time::Instant;

/// A generous functional bound for anything that should happen "at once".
const T: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// `tidegate ctl ARGS`, finding the default admin socket (under the test's
/// `XDG_RUNTIME_DIR`): not through `--config`, which a test may have broken.
async fn ctl(tg: &Tidegate, args: &[&str]) -> anyhow::Result<Output> {
    let mut all = vec!["ctl"];
    all.extend_from_slice(args);
    crate::admin::tidegate(&all, tg.dir()).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A masked client text frame (mask key 0, so the payload is as written).
fn ws_frame(payload: &str) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload.as_bytes());
    f
}

async fn ws_open(addr: &Addr) -> anyhow::Result<RawConn> {
    let mut c = connect(addr).await?;
    c.send(
        b"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await?;
    let head = c.read_head(T).await?;
    ensure!(head.status == 101, "WebSocket upgrade on {addr}: {head:?}");
    Ok(c)
}

async fn ws_echo(c: &mut RawConn, payload: &str) -> anyhow::Result<()> {
    c.send(&ws_frame(payload)).await?;
    c.read_until(payload.as_bytes(), T)
        .await
        .with_context(|| format!("WebSocket echo of {payload:?} on {}", c.addr()))?;
    Ok(())
}

async fn tcp_echo(c: &mut RawConn, payload: &str) -> anyhow::Result<()> {
    c.send(payload.as_bytes()).await?;
    c.read_until(payload.as_bytes(), T)
        .await
        .with_context(|| format!("TCP echo of {payload:?} on {}", c.addr()))?;
    Ok(())
}

/// An SSE stream whose events are `data: N` (N from 1), with the numbers seen so far.
struct Sse {
    conn: RawConn,
    seen: Vec<u64>,
    pending: String,
}

impl Sse {
    async fn open(addr: &Addr) -> anyhow::Result<Sse> {
        let mut conn = connect(addr).await?;
        conn.send(
            b"GET /events HTTP/1.1\r\nHost: example.com\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await?;
        let head = conn.read_head(T).await?;
        ensure!(head.status == 200, "SSE on {addr}: {head:?}");
        Ok(Sse {
            conn,
            seen: Vec::new(),
            pending: String::new(),
        })
    }

    /// Reads until at least one more event arrived.
    async fn more(&mut self) -> anyhow::Result<()> {
        let before = self.seen.len();
        let deadline = Instant::now() + T;
        while self.seen.len() == before {
            ensure!(Instant::now() < deadline, "no SSE event within {T:?}");
            let Some(piece) = self.conn.read_body_some(T).await? else {
                bail!("the SSE stream on {} ended", self.conn.addr());
            };
            self.pending.push_str(&text(&piece));
            while let Some(end) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..end + 2).collect();
                if let Some(n) = event.trim().strip_prefix("data: ") {
                    self.seen.push(n.parse().context("event number")?);
                }
            }
        }
        Ok(())
    }

    /// Every number from 1 up, none missing or repeated.
    fn check(&self) -> anyhow::Result<()> {
        for (i, n) in self.seen.iter().enumerate() {
            ensure!(
                *n == i as u64 + 1,
                "SSE events out of order: {:?}",
                self.seen
            );
        }
        Ok(())
    }
}

/// Numbered events, one every 50 ms, for long enough to outlive the test.
fn numbered_events() -> Reply {
    Reply::chunks(
        (1..=2000)
            .map(|n| {
                (
                    Duration::from_millis(50),
                    format!("data: {n}\n\n").into_bytes(),
                )
            })
            .collect(),
    )
    .header("Content-Type", "text/event-stream")
}

/// Opens a new connection and makes one request, again and again, on each address,
/// until stopped; counts every failure (a refused or reset connection, a non-200).
struct Probe {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    fn start(addrs: Vec<Addr>) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
            async move {
                // Bounded by `stop` (set by the test) and a hard cap on rounds.
                for _ in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    for a in &addrs {
                        match get(a, "/", "example.com").await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => errors.lock().unwrap().push(format!("{a}: {}", r.status)),
                            Err(e) => errors.lock().unwrap().push(format!("{a}: {e:#}")),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Probe {
            stop,
            ok,
            errors,
            task,
        }
    }

    async fn finish(self) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        let errors = self.errors.lock().unwrap().clone();
        ensure!(errors.is_empty(), "the probe loop saw errors: {errors:#?}");
        Ok(self.ok.load(Ordering::Relaxed))
    }
}

struct Backends {
    app: Backend,
    app2: Backend,
    ws: Backend,
    echo: TcpBackend,
}

impl Backends {
    fn start() -> anyhow::Result<Backends> {
        Ok(Backends {
            app: Backend::start(Bind::Tcp4, |r| {
                if r.target.starts_with("/events") {
                    numbered_events()
                } else {
                    Reply::text(200, "app\n")
                }
            })?,
            app2: Backend::start(Bind::Tcp4, |_| Reply::text(200, "app2\n"))?,
            ws: Backend::websocket_echo(Bind::Tcp4)?,
            echo: TcpBackend::echo(Bind::Tcp4)?,
        })
    }
}

/// Generation `i` of the config: route `/new{i}` answers `gen{i}`, the `app` upstream
/// alternates between one and two servers, and its response timeout changes.
fn config(b: &Backends, i: usize) -> String {
    let servers = if i % 2 == 0 {
        format!("\"{}\"", b.app.addr().to_config())
    } else {
        format!(
            "\"{}\", \"{}\"",
            b.app.addr().to_config(),
            b.app2.addr().to_config()
        )
    };
    format!(
        r#"
[server]
workers = 2
shutdown_grace = "5s"

[listeners.web]
listen = ["127.0.0.1:0", "unix:web.sock"]

[[listeners.web.routes]]
path = "/new{i}"
respond = {{ status = 200, body = "gen{i}\n" }}

[[listeners.web.routes]]
path = "/ws"
upstream = "ws"

[[listeners.web.routes]]
path = "/events"
upstream = "events"

[[listeners.web.routes]]
upstream = "app"

[listeners.tcp]
listen = ["127.0.0.1:0", "unix:tcp.sock"]
protocol = "tcp"
upstream = "echo"

[upstreams.app]
servers = [{servers}]
response_timeout = "{timeout}s"

[upstreams.events]
servers = ["{events}"]

[upstreams.ws]
servers = ["{ws}"]

[upstreams.echo]
servers = ["{echo}"]
"#,
        timeout = 30 + i,
        events = b.app.addr().to_config(),
        ws = b.ws.addr().to_config(),
        echo = b.echo.addr().to_config(),
    )
}

/// Polls `GET path` on `addr` until it answers `body`, within `within`.
async fn answers_within(
    addr: &Addr,
    path: &str,
    body: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    // Bounded by `within`.
    loop {
        let r = get(addr, path, "example.com").await?;
        if r.status == 200 && r.text() == body {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!(
                "GET {path} on {addr} did not answer {body:?} within {within:?}: {} {:?}",
                r.status,
                r.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn inode(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

/// The `Done when` (a) and (b) of hot reload: streams, tunnels and a probe loop across
/// 20 reloads, then a broken config that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_break_no_stream_tunnel_or_new_connection() -> anyhow::Result<()> {
    let b = Backends::start()?;
    let tg = Tidegate::start(bin(), &config(&b, 0)).await?;
    let web = tg.addrs("web");
    let tcp = tg.addrs("tcp");
    ensure!(web.len() == 2 && tcp.len() == 2, "{:?}", tg.listeners());
    let web_sock: PathBuf = tg.dir().join("web.sock");
    let tcp_sock: PathBuf = tg.dir().join("tcp.sock");
    let inodes = (inode(&web_sock)?, inode(&tcp_sock)?);

    let mut streams = Vec::new();
    let mut sockets = Vec::new();
    let mut tunnels = Vec::new();
    for a in &web {
        let mut ws = ws_open(a).await?;
        ws_echo(&mut ws, "hello").await?;
        sockets.push(ws);
        let mut sse = Sse::open(a).await?;
        sse.more().await?;
        streams.push(sse);
    }
    for a in &tcp {
        let mut t = connect(a).await?;
        tcp_echo(&mut t, "ping\n").await?;
        tunnels.push(t);
    }
    let locals: Vec<_> = sockets
        .iter()
        .chain(&tunnels)
        .map(|c| c.local_addr())
        .collect();
    let probe = Probe::start(web.clone());

    let mut slowest = Duration::ZERO;
    for i in 1..=20 {
        std::fs::write(tg.config_path(), config(&b, i))?;
        let out = ctl(&tg, &["reload"]).await?;
        ensure!(
            out.status.success(),
            "reload {i}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let said = text(&out.stdout);
        ensure!(
            said.contains(&format!("as generation {}", i + 1))
                && said.contains("listener web: routes"),
            "reload {i} said: {said}"
        );
        for a in &web {
            slowest = slowest.max(
                answers_within(
                    a,
                    &format!("/new{i}"),
                    &format!("gen{i}\n"),
                    Duration::from_secs(1),
                )
                .await?,
            );
            // The route of the previous generation is gone.
            let old = get(a, &format!("/new{}", i - 1), "example.com").await?;
            ensure!(
                old.text() != format!("gen{}\n", i - 1),
                "reload {i}: the old route still answers"
            );
        }
        for (n, ws) in sockets.iter_mut().enumerate() {
            ws_echo(ws, &format!("ws{n}-{i}")).await?;
        }
        for (n, t) in tunnels.iter_mut().enumerate() {
            tcp_echo(t, &format!("tcp{n}-{i}\n")).await?;
        }
        for s in &mut streams {
            s.more().await?;
        }
    }
    let served = probe.finish().await?;
    ensure!(served > 40, "the probe loop made only {served} requests");
    for s in &streams {
        s.check()?;
        ensure!(s.seen.len() > 20, "{:?}", s.seen);
    }
    let after: Vec<_> = sockets
        .iter()
        .chain(&tunnels)
        .map(|c| c.local_addr())
        .collect();
    ensure!(
        locals == after,
        "connections changed: {locals:?} -> {after:?}"
    );
    // Same sockets: same ports in the status, the same socket files.
    let status = text(&ctl(&tg, &["--json", "status"]).await?.stdout);
    for a in web.iter().chain(&tcp) {
        if let Some(sa) = a.tcp() {
            ensure!(status.contains(&sa.to_string()), "{sa} gone from {status}");
        }
    }
    ensure!(
        (inode(&web_sock)?, inode(&tcp_sock)?) == inodes,
        "a Unix socket file was replaced"
    );
    // The app upstream's connection to the events server was never a new one: one
    // accept per stream, plus the pooled ones of the probe.
    ensure!(
        b.echo.accepts() == 2,
        "TCP tunnels reconnected: {}",
        b.echo.accepts()
    );
    ensure!(
        b.ws.accepts() == 2,
        "WebSockets reconnected: {}",
        b.ws.accepts()
    );

    // `ctl conns` shows each connection's generation: the streams opened under 1 (a
    // stream stays in the generation it started in), new connections under 21.
    let conns = text(&ctl(&tg, &["--json", "conns"]).await?.stdout);
    let conns: serde_json::Value = serde_json::from_str(&conns)?;
    let gens: Vec<u64> = conns
        .as_array()
        .context("conns")?
        .iter()
        .filter(|c| c["side"] == "client" && c["protocol"] == "websocket")
        .map(|c| c["generation"].as_u64().unwrap_or(0))
        .collect();
    ensure!(gens == [1, 1], "WebSocket generations: {gens:?}");

    // (b) A broken config: exit 1, every error with file:line:col, nothing changed.
    let good = std::fs::read_to_string(tg.config_path())?;
    let broken = good
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"5 parsecs\"")
        .replace("response_timeout = \"50s\"", "response_timeout = 7");
    ensure!(broken != good);
    std::fs::write(tg.config_path(), &broken)?;
    let out = ctl(&tg, &["reload"]).await?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(1), "broken reload: {out:?}");
    ensure!(err.contains("2 error(s); nothing changed"), "{err}");
    ensure!(
        err.contains("tidegate.toml:4:18: server.shutdown_grace"),
        "{err}"
    );
    ensure!(err.contains("upstreams.app.response_timeout"), "{err}");
    for a in &web {
        answers_within(a, "/new20", "gen20\n", Duration::ZERO).await?;
    }
    for (n, ws) in sockets.iter_mut().enumerate() {
        ws_echo(ws, &format!("after-broken-{n}")).await?;
    }
    let status: serde_json::Value =
        serde_json::from_str(&text(&ctl(&tg, &["--json", "status"]).await?.stdout))?;
    ensure!(status["state"] == "running", "{status}");
    // A dry run of the broken file says the same, and a dry run of a good one plans.
    let out = ctl(&tg, &["reload", "--dry-run"]).await?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    std::fs::write(tg.config_path(), config(&b, 30))?;
    let out = ctl(&tg, &["reload", "--dry-run"]).await?;
    let said = text(&out.stdout);
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        said.contains("dry run") && said.contains("nothing applied"),
        "{said}"
    );
    // 2 SSE + 2 WebSocket client connections at least live on `web`.
    ensure!(
        said.contains("listener web: routes") && said.contains("connections:"),
        "{said}"
    );
    for a in &web {
        answers_within(a, "/new20", "gen20\n", Duration::ZERO).await?;
    }
    Ok(())
}

/// SIGHUP reloads like `ctl reload`; its errors go to the log, one per line.
#[tokio::test]
async fn sighup_reloads_and_logs_every_error() -> anyhow::Result<()> {
    let b = Backends::start()?;
    let tg = Tidegate::start(bin(), &config(&b, 0)).await?;
    let web = tg.addr("web")?;
    std::fs::write(tg.config_path(), config(&b, 1))?;
    tg.signal(Signal::SIGHUP)?;
    answers_within(&web, "/new1", "gen1\n", T).await?;
    tg.wait_log("reloaded", T).await?;
    std::fs::write(tg.config_path(), "[listeners.web]\nlisten = 5\nbogus = 1\n")?;
    tg.signal(Signal::SIGHUP)?;
    tg.wait_log("reload refused", T).await?;
    tg.wait_log("tidegate.toml:2:10: listeners.web.listen", T)
        .await?;
    tg.wait_log("tidegate.toml:3:1: listeners.web.bogus", T)
        .await?;
    answers_within(&web, "/new1", "gen1\n", Duration::ZERO).await?;
    Ok(())
}

/// A removed listener stops accepting at once, closes its idle keep-alive connections
/// at once, and lets a WebSocket run until `shutdown_grace` after the reload; a new
/// address of a kept listener starts accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listener_retires_its_connections_within_the_grace() -> anyhow::Result<()> {
    let b = Backends::start()?;
    let two = |extra: bool| {
        let mut c = config(&b, 0).replace("shutdown_grace = \"5s\"", "shutdown_grace = \"2s\"");
        if extra {
            c.push_str(
                "\n[listeners.old]\nlisten = [\"127.0.0.1:0\"]\n[[listeners.old.routes]]\nupstream = \"ws\"\n",
            );
        }
        c
    };
    let tg = Tidegate::start(bin(), &two(true)).await?;
    let old = tg.addr("old")?;
    let mut ws = ws_open(&old).await?;
    ws_echo(&mut ws, "before").await?;
    let mut idle = connect(&tg.addr("web")?).await?;
    let mut idle_old = connect(&old).await?;
    idle_old
        .send(b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await?;
    // Answered by the ws backend (no upgrade asked): any complete response will do.
    idle_old.read_response(T).await?;
    idle.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await?;
    ensure!(idle.read_response(T).await?.status == 200);

    std::fs::write(tg.config_path(), two(false))?;
    let out = ctl(&tg, &["reload"]).await?;
    let said = text(&out.stdout);
    ensure!(out.status.success(), "{out:?}");
    ensure!(said.contains("listener old: removed"), "{said}");
    ensure!(said.contains("2 connections:"), "{said}");
    let reloaded = Instant::now();
    // Refused at once.
    ensure!(
        connect(&old).await.is_err(),
        "the removed listener still accepts"
    );
    // Its idle keep-alive connection closes at once; the kept listener's stays.
    let (_, end) = idle_old.read_to_end(T).await?;
    ensure!(
        reloaded.elapsed() < Duration::from_secs(1),
        "idle connection closed after {:?} ({end:?})",
        reloaded.elapsed()
    );
    idle.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await?;
    ensure!(idle.read_response(T).await?.status == 200);
    // The WebSocket goes on, then is closed at shutdown_grace (2 s) after the reload.
    ws_echo(&mut ws, "after").await?;
    let (_, end) = ws.read_to_end(T).await?;
    let took = reloaded.elapsed();
    ensure!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "the WebSocket was closed {took:?} after the reload ({end:?})"
    );
    // tidegate itself goes on.
    answers_within(&tg.addr("web")?, "/new0", "gen0\n", Duration::ZERO).await?;
    Ok(())
}

/// The health of server 1 of the first upstream, from `ctl --json upstreams`.
fn health_of_second(json: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(json).with_context(|| json.to_owned())?;
    Ok(v[0]["servers"][1]["health"]
        .as_str()
        .unwrap_or("")
        .to_owned())
}

/// What a server keeps across a reload: its pooled connection (no new connect), its
/// health state (a down server stays down), its counters; a new server starts fresh.
#[tokio::test]
async fn a_kept_server_keeps_its_pool_health_and_counters() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "app\n"))?;
    // A port nobody listens on: connections are refused, checks fail.
    let down: Addr = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .into();
    let cfg = |route: &str| {
        format!(
            r#"
[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
path = "/{route}"
respond = {{ status = 200, body = "{route}\n" }}

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}", "{}"]
keepalive = 4
[upstreams.app.health]
interval = "200ms"
timeout = "100ms"
"#,
            app.addr().to_config(),
            down.to_config()
        )
    };
    let tg = Tidegate::start(bin(), &cfg("a")).await?;
    let web = tg.addr("web")?;
    // Wait until the checks took the black hole down.
    let deadline = Instant::now() + T;
    loop {
        let u = text(&ctl(&tg, &["--json", "upstreams"]).await?.stdout);
        if health_of_second(&u)? == "down" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the black hole never went down: {u}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        ensure!(get(&web, "/", "example.com").await?.status == 200);
    }
    let accepts = app.accepts();
    let metrics_before = text(&ctl(&tg, &["metrics"]).await?.stdout);
    std::fs::write(tg.config_path(), cfg("b"))?;
    let out = ctl(&tg, &["reload"]).await?;
    ensure!(out.status.success(), "{out:?}");
    answers_within(&web, "/b", "b\n", T).await?;
    // Right after the reload: still down (not back to unknown), same pool.
    let u = text(&ctl(&tg, &["--json", "upstreams"]).await?.stdout);
    ensure!(health_of_second(&u)? == "down", "health state lost: {u}");
    for _ in 0..3 {
        ensure!(get(&web, "/", "example.com").await?.status == 200);
    }
    ensure!(
        app.accepts() == accepts,
        "the pooled connection was lost: {accepts} -> {} accepts",
        app.accepts()
    );
    // Counters went on from where they were.
    let metrics_after = text(&ctl(&tg, &["metrics"]).await?.stdout);
    let count = |m: &str| -> u64 {
        m.lines()
            .find(|l| {
                l.starts_with(
                    "tidegate_requests_total{listener=\"web\",upstream=\"app\",class=\"2xx\"}",
                )
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    ensure!(
        count(&metrics_after) == count(&metrics_before) + 3,
        "request counter: {} then {}",
        count(&metrics_before),
        count(&metrics_after)
    );
    Ok(())
}

/// An on-demand backend is never started twice by a reload: a kept server keeps its
/// process; a changed `[on_demand]` stops the old process first (at once here: no
/// exchange uses it) and the new one starts on demand, after the old one exited.
#[tokio::test]
async fn a_reload_never_runs_two_instances_of_an_on_demand_backend() -> anyhow::Result<()> {
    use tidegate_testkit::lazy_app::{AppEvent, LazyApp};
    let app = LazyApp::new()?;
    let cfg = |route: &str, idle_stop: &str| {
        format!(
            r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
path = "/{route}"
respond = {{ status = 200, body = "{route}\n" }}
[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]

[upstreams.app.on_demand]
command = {}
idle_stop = "{idle_stop}"
"#,
            app.server(),
            app.command(&[])
        )
    };
    let tg = Tidegate::start(bin(), &cfg("a", "60s")).await?;
    let web = tg.addr("web")?;
    ensure!(get(&web, "/", "example.com").await?.status == 200);
    ensure!(app.started().len() == 1, "{:?}", app.events());
    // Kept: same process after a reload that changes only a route.
    std::fs::write(tg.config_path(), cfg("b", "60s"))?;
    ensure!(ctl(&tg, &["reload"]).await?.status.success());
    answers_within(&web, "/b", "b\n", T).await?;
    ensure!(get(&web, "/", "example.com").await?.status == 200);
    ensure!(
        app.started().len() == 1,
        "a second start: {:?}",
        app.events()
    );
    // Changed: the old process exits before the new one starts.
    std::fs::write(tg.config_path(), cfg("c", "30s"))?;
    let out = ctl(&tg, &["reload"]).await?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        text(&out.stdout).contains("replaced (keepalive, health or on_demand changed)"),
        "{}",
        text(&out.stdout)
    );
    ensure!(get(&web, "/", "example.com").await?.status == 200);
    let events = app.events();
    let first = app.started()[0];
    let exit_of_first = events.iter().position(|e| *e == AppEvent::Exit(first));
    let second_start = events
        .iter()
        .position(|e| matches!(e, AppEvent::Start(p) if *p != first));
    ensure!(
        matches!((exit_of_first, second_start), (Some(x), Some(s)) if x < s),
        "the new backend started before the old one exited: {events:?}"
    );
    Ok(())
}

/// A tunnel to a server a reload removed goes on, then is closed at `shutdown_grace`
/// after the reload; new tunnels go to the new server at once.
#[tokio::test]
async fn a_tunnel_to_a_removed_server_ends_at_the_grace() -> anyhow::Result<()> {
    let one = TcpBackend::echo(Bind::Tcp4)?;
    let two = TcpBackend::echo(Bind::Tcp4)?;
    let cfg = |server: &Addr| {
        format!(
            r#"
[server]
shutdown_grace = "2s"

[listeners.tcp]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "echo"

[upstreams.echo]
servers = ["{}"]
"#,
            server.to_config()
        )
    };
    let tg = Tidegate::start(bin(), &cfg(one.addr())).await?;
    let addr = tg.addr("tcp")?;
    let mut old = connect(&addr).await?;
    tcp_echo(&mut old, "before\n").await?;
    std::fs::write(tg.config_path(), cfg(two.addr()))?;
    let out = ctl(&tg, &["reload"]).await?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        text(&out.stdout).contains("1 connection: takes no new request"),
        "{}",
        text(&out.stdout)
    );
    let reloaded = Instant::now();
    let mut new = connect(&addr).await?;
    tcp_echo(&mut new, "new\n").await?;
    ensure!(two.accepts() == 1 && one.accepts() == 1);
    tcp_echo(&mut old, "after\n").await?;
    let (_, end) = old.read_to_end(T).await?;
    let took = reloaded.elapsed();
    ensure!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "the old tunnel ended {took:?} after the reload ({end:?})"
    );
    // The tunnel to the kept server is not touched.
    tcp_echo(&mut new, "still\n").await?;
    Ok(())
}

/// Requests that start after a reload use its timeouts; one in flight keeps its own.
#[tokio::test]
async fn requests_after_a_reload_use_its_timeouts() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_millis(800), Reply::text(200, "late\n"))
    })?;
    let cfg = |timeout: &str| {
        format!(
            r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["{}"]
response_timeout = "{timeout}"
"#,
            app.addr().to_config()
        )
    };
    let tg = Tidegate::start(bin(), &cfg("5s")).await?;
    let web = tg.addr("web")?;
    // In flight across the reload: keeps the 5 s it started with.
    let mut slow = connect(&web).await?;
    slow.send(b"GET /in-flight HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await?;
    app.wait_for(|b| !b.requests().is_empty(), T).await?;
    std::fs::write(tg.config_path(), cfg("200ms"))?;
    let out = ctl(&tg, &["reload"]).await?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        text(&out.stdout).contains("response_timeout 5s -> 200ms"),
        "{}",
        text(&out.stdout)
    );
    let r = slow.read_response(T).await?;
    ensure!(
        r.status == 200 && r.text() == "late\n",
        "in flight: {} {:?}",
        r.status,
        r.text()
    );
    // New: the 200 ms limit.
    let r = get(&web, "/new", "example.com").await?;
    ensure!(
        r.status == 504,
        "after the reload: {} {:?}",
        r.status,
        r.text()
    );
    Ok(())
}

/// A draining process refuses a reload (its admin API still answers during the drain):
/// what it still serves is finishing, and a reload could close a socket it no longer
/// owns (an upgrade's old process).
#[tokio::test]
async fn a_draining_process_refuses_a_reload() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_millis(1500), Reply::text(200, "late\n"))
    })?;
    let config = format!(
        "[listeners.web]\nlisten = [\"127.0.0.1:0\"]\n[[listeners.web.routes]]\nupstream = \"app\"\n[upstreams.app]\nservers = [\"{}\"]\n",
        app.addr().to_config()
    );
    let tg = Tidegate::start(bin(), &config).await?;
    let mut slow = connect(&tg.addr("web")?).await?;
    slow.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await?;
    app.wait_for(|b| !b.requests().is_empty(), T).await?;
    tg.signal(Signal::SIGTERM)?;
    tg.wait_log("draining", T).await?;
    let out = ctl(&tg, &["reload"]).await?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(
        text(&out.stderr).contains("draining"),
        "{}",
        text(&out.stderr)
    );
    ensure!(slow.read_response(T).await?.text() == "late\n");
    Ok(())
}

/// A server a reload removed is no longer health-checked, even while a tunnel of the
/// old config still holds it.
#[tokio::test]
async fn a_removed_server_is_no_longer_checked() -> anyhow::Result<()> {
    let one = TcpBackend::echo(Bind::Tcp4)?;
    let two = TcpBackend::echo(Bind::Tcp4)?;
    let cfg = |server: &Addr| {
        format!(
            r#"
[listeners.tcp]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "echo"

[upstreams.echo]
servers = ["{}"]
[upstreams.echo.health]
interval = "50ms"
timeout = "100ms"
"#,
            server.to_config()
        )
    };
    let tg = Tidegate::start(bin(), &cfg(one.addr())).await?;
    let mut tunnel = connect(&tg.addr("tcp")?).await?;
    tcp_echo(&mut tunnel, "held\n").await?;
    // Checks reach `one` (each one a connect).
    one.wait_for(|b| b.accepts() >= 3, T).await?;
    std::fs::write(tg.config_path(), cfg(two.addr()))?;
    ensure!(ctl(&tg, &["reload"]).await?.status.success());
    two.wait_for(|b| b.accepts() >= 2, T).await?;
    // A check in flight at the reload may still land; then nothing more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = one.accepts();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        one.accepts() == settled,
        "the removed server is still checked: {settled} -> {} connects",
        one.accepts()
    );
    // The tunnel that holds it goes on.
    tcp_echo(&mut tunnel, "still\n").await?;
    Ok(())
}

/// A reload stops exporting the request counters of routes to an upstream no route
/// names any more, and keeps those that stay.
#[tokio::test]
async fn the_counters_of_a_removed_route_are_no_longer_exported() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "app\n"))?;
    let cfg = |with_other: bool| {
        let other = if with_other {
            format!(
                "[[listeners.web.routes]]\npath = \"/other\"\nupstream = \"other\"\n[upstreams.other]\nservers = [\"{}\"]\n",
                app.addr().to_config()
            )
        } else {
            String::new()
        };
        format!(
            "[listeners.web]\nlisten = [\"127.0.0.1:0\"]\n{other}[[listeners.web.routes]]\nupstream = \"app\"\n[upstreams.app]\nservers = [\"{}\"]\n",
            app.addr().to_config()
        )
    };
    let tg = Tidegate::start(bin(), &cfg(true)).await?;
    let web = tg.addr("web")?;
    ensure!(get(&web, "/other", "x").await?.status == 200);
    ensure!(get(&web, "/", "x").await?.status == 200);
    let series = |m: &str, up: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "tidegate_requests_total{{listener=\"web\",upstream=\"{up}\",class=\"2xx\"}}"
                ))
            })
            .map(str::to_owned)
    };
    let before = text(&ctl(&tg, &["metrics"]).await?.stdout);
    ensure!(series(&before, "other").is_some(), "{before}");
    std::fs::write(tg.config_path(), cfg(false))?;
    ensure!(ctl(&tg, &["reload"]).await?.status.success());
    let after = text(&ctl(&tg, &["metrics"]).await?.stdout);
    ensure!(series(&after, "other").is_none(), "{after}");
    ensure!(series(&after, "app") == series(&before, "app"), "{after}");
    Ok(())
}
