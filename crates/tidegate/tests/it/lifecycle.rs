//! End-to-end lifecycle tests of the `tidegate` binary (`docs/design.md`): the signals
//! and the drain, Unix listeners, either side going away mid-body, memory under a large
//! upload to a slow backend, the connection cap, the listener's own timers, `check`, and
//! the embedded quickstart.
//!
//! Rules: the real binary on real sockets; no fixed port (listeners on `127.0.0.1:0`,
//! Unix sockets in the run directory); every wait polls with a deadline; timeouts in
//! configs are a few hundred milliseconds where they matter, and time bounds are
//! generous functional ones ("exits within 2 s"). The few sleeps here pace a
//! deliberately slow client; none waits for readiness.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tidegate_testkit::{
    close_wait_sockets, connect, get, parse_log_line, process_gone, vm_hwm_kib, Addr, Backend,
    Bind, End, RawConn, Reply, SseThen, Tidegate,
};
use tokio::io::{AsyncBufReadExt, BufReader};

// === helpers ===

/// The binary under test.
fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// How long a test waits for something that should take milliseconds: a generous
/// functional bound, not a performance claim.
const SOON: Duration = Duration::from_secs(2);

/// How often polls look again.
const POLL: Duration = Duration::from_millis(5);

/// A config with one HTTP listener `web` on `listen`: `/healthz` answered by tidegate,
/// everything else proxied to upstream `app` at `app`. `server`, `listener` and
/// `upstream` are extra lines for those tables.
fn proxy_config(server: &str, listen: &str, listener: &str, app: &Addr, upstream: &str) -> String {
    format!(
        r#"
[server]
{server}

[listeners.web]
listen = ["{listen}"]
{listener}

[[listeners.web.routes]]
path = "/healthz"
respond = {{ status = 200, body = "ok\n" }}

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{app}"]
{upstream}
"#,
        app = app.to_config()
    )
}

/// A config with one HTTP listener `web` on `127.0.0.1:0` that tidegate answers itself
/// (no upstream): `200 hello` on every path.
fn respond_config(server: &str, listener: &str) -> String {
    format!(
        r#"
[server]
{server}

[listeners.web]
listen = ["127.0.0.1:0"]
{listener}

[[listeners.web.routes]]
respond = {{ status = 200, body = "hello\n" }}
"#
    )
}

/// `GET path` on a keep-alive connection (no `Connection: close`).
fn keep_alive_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").into_bytes()
}

/// A temporary directory whose socket paths fit in a socket address (107 bytes) even
/// under a long `TMPDIR`.
fn short_tempdir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("tgl").tempdir()?;
    if dir.path().as_os_str().len() <= 60 {
        return Ok(dir);
    }
    Ok(tempfile::Builder::new().prefix("tgl").tempdir_in("/tmp")?)
}

/// Whether `err` (anywhere in its chain) is a refused connect: ECONNREFUSED, ENOENT for a
/// Unix socket whose file is gone, or ECONNRESET: a connect whose handshake completed into
/// the listen backlog just as the listener closed is reset by the kernel (seen on CI).
fn is_refused(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionReset
            )
        })
}

/// Connects to `addr` until a connect is refused (the listener is closed), for at most
/// `within`. Connects that still succeed are dropped at once.
async fn wait_until_refused(addr: &Addr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    // Bounded by the deadline.
    loop {
        match addr.connect().await {
            Err(e) if is_refused(&e) => return Ok(()),
            Err(e) => return Err(e).context("connect failed, but was not refused"),
            Ok(stream) => drop(stream),
        }
        if Instant::now() >= deadline {
            bail!("{addr}: new connections still accepted {within:?} after SIGTERM");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls until `pid` holds no TCP socket in CLOSE_WAIT, for at most `within`.
async fn wait_no_close_wait(pid: u32, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    // Bounded by the deadline.
    loop {
        let found = close_wait_sockets(pid)?;
        if found.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("tidegate (pid {pid}) still has CLOSE_WAIT sockets after {within:?}: {found:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sends `sig` and waits for the process to exit; returns its status and how long the
/// exit took after the signal.
async fn signal_and_wait(
    tg: &mut Tidegate,
    sig: Signal,
    within: Duration,
) -> anyhow::Result<(ExitStatus, Duration)> {
    let sent = Instant::now();
    tg.signal(sig)?;
    let status = tg.wait_exit(within).await?;
    Ok((status, sent.elapsed()))
}

/// Runs the binary with `args` in `cwd` to its end (at most `within`), output captured.
async fn run_to_exit(args: &[OsString], cwd: &Path, within: Duration) -> anyhow::Result<Output> {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("XDG_RUNTIME_DIR", cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(within, out)
        .await
        .with_context(|| format!("tidegate {args:?} still running after {within:?}"))?
        .with_context(|| format!("run tidegate {args:?}"))
}

/// Both output streams of a finished process, as text.
fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The binary started with arbitrary arguments (the testkit's runner always passes
/// `--config`): logs captured line by line, killed on drop.
struct Proc {
    child: tokio::process::Child,
    pid: u32,
    cwd: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(args: &[&str], cwd: &Path) -> anyhow::Result<Proc> {
        Self::spawn_cmd(tokio::process::Command::new(bin()), args, cwd)
    }

    /// Runs tidegate through `sh` with its soft open-files limit lowered to `soft`
    /// (`exec` keeps the pid).
    fn spawn_with_nofile(soft: u64, args: &[&str], cwd: &Path) -> anyhow::Result<Proc> {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -Sn {soft} && exec \"$0\" \"$@\""))
            .arg(bin());
        Self::spawn_cmd(cmd, args, cwd)
    }

    fn spawn_cmd(
        mut cmd: tokio::process::Command,
        args: &[&str],
        cwd: &Path,
    ) -> anyhow::Result<Proc> {
        let mut child = cmd
            .args(args)
            .current_dir(cwd)
            .env("NO_COLOR", "1")
            .env("XDG_RUNTIME_DIR", cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn tidegate {args:?}"))?;
        let pid = child.id().context("spawned tidegate has no pid")?;
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(BufReader::new(out), logs.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(BufReader::new(err), logs.clone()));
        }
        Ok(Proc {
            child,
            pid,
            cwd: cwd.to_path_buf(),
            logs,
        })
    }

    fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for the `ready` log event; returns the addresses of the `listening`
    /// events before it.
    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<Vec<Addr>> {
        let deadline = Instant::now() + within;
        // Bounded by the deadline.
        loop {
            let mut addrs = Vec::new();
            for line in self.logs() {
                let Some(ev) = parse_log_line(&line) else {
                    continue;
                };
                if ev.message == "ready" {
                    return Ok(addrs);
                }
                if ev.message.contains("listening") {
                    if let Some(a) = ev.field("address") {
                        addrs.push(Addr::parse(a, &self.cwd)?);
                    }
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "tidegate exited ({status}) before ready; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "tidegate not ready within {within:?}; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(Pid::from_raw(i32::try_from(self.pid)?), sig)
            .with_context(|| format!("kill -{sig} {}", self.pid))
    }

    async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "tidegate still running after {within:?}; logs:\n{}",
                self.logs().join("\n")
            ),
        }
    }
}

async fn pump(mut reader: impl tokio::io::AsyncBufRead + Unpin, logs: Arc<Mutex<Vec<String>>>) {
    let mut line = String::new();
    // Bounded by the pipe: it ends when the process exits.
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => logs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.trim_end().to_string()),
        }
    }
}

/// Reads an SSE response's head and its first event.
async fn read_first_event(c: &mut RawConn) -> anyhow::Result<()> {
    let head = c.read_head(SOON).await?;
    ensure!(head.status == 200, "SSE response status {}", head.status);
    let first = c
        .read_body_some(SOON)
        .await?
        .context("SSE stream ended before its first event")?;
    ensure!(
        String::from_utf8_lossy(&first).contains("data: one"),
        "first event: {:?}",
        String::from_utf8_lossy(&first)
    );
    Ok(())
}

// === signals and the drain ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() -> anyhow::Result<()> {
    let body = "finished after the drain began\n";
    let app = Backend::start(Bind::Tcp4, move |_| {
        Reply::delay(Duration::from_millis(500), Reply::text(200, body))
    })?;
    let mut tg = Tidegate::start(
        bin(),
        &proxy_config("shutdown_grace = \"5s\"", "127.0.0.1:0", "", app.addr(), ""),
    )
    .await?;
    let addr = tg.addr("web")?;

    let mut c = connect(&addr).await?;
    c.send(&keep_alive_get("/slow")).await?;
    app.wait_for(|b| b.requests().len() == 1, SOON).await?;

    let sent = Instant::now();
    tg.signal(Signal::SIGTERM)?;
    wait_until_refused(&addr, SOON).await?;

    let resp = c.read_response(Duration::from_secs(5)).await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.complete, "response cut short: {resp:?}");
    assert_eq!(resp.text(), body);

    let status = tg.wait_exit(Duration::from_secs(5)).await?;
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "logs:\n{}", tg.logs().join("\n"));
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} after SIGTERM; the drain should end with the last response, well within shutdown_grace (5s)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_sse_stream_exits_when_the_grace_ends() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::sse(vec!["data: one\n\n".into()], SseThen::Hold)
    })?;
    let mut tg = Tidegate::start(
        bin(),
        &proxy_config(
            "shutdown_grace = \"500ms\"",
            "127.0.0.1:0",
            "",
            app.addr(),
            "",
        ),
    )
    .await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(&keep_alive_get("/events")).await?;
    read_first_event(&mut c).await?;

    let (status, took) = signal_and_wait(&mut tg, Signal::SIGTERM, Duration::from_secs(3)).await?;
    assert_eq!(status.code(), Some(0), "logs:\n{}", tg.logs().join("\n"));
    assert!(
        took >= Duration::from_millis(400),
        "exited {took:?} after SIGTERM, before shutdown_grace (500ms) ended"
    );

    let (rest, _end) = c.read_to_end(SOON).await?;
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "the stream was ended as if complete: {:?}",
        String::from_utf8_lossy(&rest)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_skips_the_drain_and_removes_socket_files() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_secs(10), Reply::text(200, "too late"))
    })?;
    let mut tg = Tidegate::start(
        bin(),
        &proxy_config(
            "shutdown_grace = \"30s\"",
            "unix:web.sock:mode=600",
            "",
            app.addr(),
            "",
        ),
    )
    .await?;
    let addr = tg.addr("web")?;
    let Addr::Unix(path) = addr.clone() else {
        bail!("listener web logged {addr}, not a Unix socket");
    };
    assert_eq!(path, tg.dir().join("web.sock"));
    assert!(path.exists(), "{} missing while running", path.display());

    let mut c = connect(&addr).await?;
    c.send(&keep_alive_get("/slow")).await?;
    app.wait_for(|b| b.requests().len() == 1, SOON).await?;

    let (status, took) = signal_and_wait(&mut tg, Signal::SIGINT, SOON).await?;
    assert_eq!(status.code(), Some(0), "logs:\n{}", tg.logs().join("\n"));
    assert!(took < SOON, "SIGINT exit took {took:?}");
    assert!(
        !path.exists(),
        "socket file {} left behind after SIGINT",
        path.display()
    );
    // The in-flight request was cut off: its connection ends without the backend's
    // answer (which would have come 10 s later).
    let (got, _) = c
        .read_to_end(SOON)
        .await
        .context("the client connection outlived the process")?;
    assert!(
        !String::from_utf8_lossy(&got).contains("too late"),
        "client got {:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_exits_at_once() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_secs(10), Reply::text(200, "too late"))
    })?;
    let mut tg = Tidegate::start(
        bin(),
        &proxy_config(
            "shutdown_grace = \"30s\"",
            "127.0.0.1:0",
            "",
            app.addr(),
            "",
        ),
    )
    .await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(&keep_alive_get("/slow")).await?;
    app.wait_for(|b| b.requests().len() == 1, SOON).await?;

    tg.signal(Signal::SIGTERM)?;
    // Two signals of one kind sent before the first is handled merge into one: wait
    // until the drain has begun.
    tg.wait_log("draining", SOON).await?;
    assert!(
        !process_gone(tg.pid()),
        "exited on the first SIGTERM with a request in flight"
    );
    let (status, took) = signal_and_wait(&mut tg, Signal::SIGTERM, SOON).await?;
    assert_eq!(status.code(), Some(0), "logs:\n{}", tg.logs().join("\n"));
    assert!(took < SOON, "second SIGTERM: exit took {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_logged_and_the_process_keeps_serving() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "from app"))?;
    let mut tg =
        Tidegate::start(bin(), &proxy_config("", "127.0.0.1:0", "", app.addr(), "")).await?;
    let addr = tg.addr("web")?;
    for round in 1..=2 {
        let before = tg.logs().iter().filter(|l| l.contains("SIGHUP")).count();
        tg.signal(Signal::SIGHUP)?;
        let deadline = Instant::now() + SOON;
        // Bounded by the deadline.
        while tg.logs().iter().filter(|l| l.contains("SIGHUP")).count() == before {
            ensure!(
                Instant::now() < deadline,
                "SIGHUP #{round} not logged within {SOON:?}; logs:\n{}",
                tg.logs().join("\n")
            );
            tokio::time::sleep(POLL).await;
        }
        assert!(!process_gone(tg.pid()), "SIGHUP #{round} ended the process");
        let health = get(&addr, "/healthz", "example.com").await?;
        assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
        let proxied = get(&addr, "/x", "example.com").await?;
        assert_eq!((proxied.status, proxied.text().as_str()), (200, "from app"));
    }
    let (status, _) = signal_and_wait(&mut tg, Signal::SIGTERM, SOON).await?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}

// === Unix listeners ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_listener_gets_the_configured_mode_and_is_removed_on_sigterm() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "from app"))?;
    let mut tg = Tidegate::start(
        bin(),
        &proxy_config("", "unix:web.sock:mode=660", "", app.addr(), ""),
    )
    .await?;
    let addr = tg.addr("web")?;
    let path = tg.dir().join("web.sock");
    assert_eq!(addr, Addr::Unix(path.clone()));
    let meta = std::fs::symlink_metadata(&path)?;
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o660,
        "mode of {}",
        path.display()
    );
    let resp = get(&addr, "/x", "example.com").await?;
    assert_eq!((resp.status, resp.text().as_str()), (200, "from app"));

    let (status, _) = signal_and_wait(&mut tg, Signal::SIGTERM, SOON).await?;
    assert_eq!(status.code(), Some(0), "logs:\n{}", tg.logs().join("\n"));
    assert!(
        !path.exists(),
        "{} left behind after SIGTERM",
        path.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_unix_socket_file_is_replaced_and_served() -> anyhow::Result<()> {
    let dir = short_tempdir()?;
    let path = dir.path().join("web.sock");
    // Bound and closed without removing the file: what a crashed process leaves.
    drop(std::os::unix::net::UnixListener::bind(&path)?);
    let stale = std::fs::symlink_metadata(&path)?;
    assert!(stale.file_type().is_socket());

    let config = respond_config("", "").replace("127.0.0.1:0", "unix:web.sock");
    let mut tg = Tidegate::start_in(dir.path(), bin(), &config).await?;
    // (The inode number can't tell: ext4 hands a freed one out again at once.)
    let removed = tg
        .wait_log("removed stale socket file", SOON)
        .await
        .context("the stale socket file was not reported removed")?;
    assert!(removed.contains(&path.display().to_string()), "{removed}");
    assert!(std::fs::symlink_metadata(&path)?.file_type().is_socket());
    let resp = get(&Addr::Unix(path.clone()), "/", "example.com").await?;
    assert_eq!((resp.status, resp.text().as_str()), (200, "hello\n"));

    let (status, _) = signal_and_wait(&mut tg, Signal::SIGTERM, SOON).await?;
    assert_eq!(status.code(), Some(0), "logs:\n{}", tg.logs().join("\n"));
    assert!(
        !path.exists(),
        "{} left behind after SIGTERM",
        path.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_unix_socket_is_refused_with_its_path_and_left_alone() -> anyhow::Result<()> {
    let dir = short_tempdir()?;
    let path = dir.path().join("web.sock");
    let live = std::os::unix::net::UnixListener::bind(&path)?;
    let before = std::fs::symlink_metadata(&path)?;
    let config_path = dir.path().join("tidegate.toml");
    std::fs::write(
        &config_path,
        respond_config("", "").replace("127.0.0.1:0", "unix:web.sock:mode=660"),
    )?;

    let args = [OsString::from("run"), "--config".into(), config_path.into()];
    let out = run_to_exit(&args, dir.path(), Duration::from_secs(10)).await?;
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "started on a live socket; output:\n{text}"
    );
    assert!(
        text.contains(&path.display().to_string()),
        "the error does not name {}; output:\n{text}",
        path.display()
    );

    let after = std::fs::symlink_metadata(&path)
        .with_context(|| format!("{} was removed", path.display()))?;
    assert_eq!(
        (after.dev(), after.ino(), after.permissions().mode()),
        (before.dev(), before.ino(), before.permissions().mode()),
        "the live socket file was changed"
    );
    // Still reachable: the other process keeps its listener.
    std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connect to the live socket {}", path.display()))?;
    drop(live);
    Ok(())
}

// === either side going away ===

/// How the client leaves a stream.
#[derive(Clone, Copy, Debug)]
enum Leave {
    Close,
    Reset,
}

/// A client reads the first SSE event through tidegate, then leaves; the upstream
/// connection must be closed within 1 s and tidegate must hold no CLOSE_WAIT socket.
async fn client_leaves_mid_stream(upstream: Bind, leave: Leave) -> anyhow::Result<()> {
    let app = Backend::start(upstream, |_| {
        Reply::sse(vec!["data: one\n\n".into()], SseThen::Hold)
    })?;
    let tg = Tidegate::start(bin(), &proxy_config("", "127.0.0.1:0", "", app.addr(), "")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(&keep_alive_get("/events")).await?;
    read_first_event(&mut c).await?;
    ensure!(app.open_connections() == 1, "backend: {}", app.summary());

    match leave {
        Leave::Close => drop(c),
        Leave::Reset => c.reset()?,
    }
    let left = Instant::now();
    app.wait_for(|b| b.closed_connections() == 1, Duration::from_secs(1))
        .await
        .with_context(|| {
            format!(
                "client {leave:?}: upstream connection still open; logs:\n{}",
                tg.logs().join("\n")
            )
        })?;
    let conn = app.connection(1).context("backend connection 1")?;
    assert!(
        conn.end.as_ref().is_some_and(|e| e.by_peer()),
        "upstream connection ended {:?}, not by tidegate closing it",
        conn.end
    );
    let remaining = Duration::from_secs(1).saturating_sub(left.elapsed());
    wait_no_close_wait(tg.pid(), remaining.max(Duration::from_millis(100))).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_stream_closes_the_upstream_within_1s_and_leaves_no_close_wait(
) -> anyhow::Result<()> {
    client_leaves_mid_stream(Bind::Tcp4, Leave::Close).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_mid_stream_closes_the_upstream_within_1s_and_leaves_no_close_wait(
) -> anyhow::Result<()> {
    client_leaves_mid_stream(Bind::Tcp4, Leave::Reset).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_stream_closes_a_unix_upstream_within_1s_and_leaves_no_close_wait(
) -> anyhow::Result<()> {
    client_leaves_mid_stream(Bind::Unix, Leave::Close).await
}

/// Proxies one request to a backend answering `reply` and returns what the client got.
async fn through_tidegate(reply: Reply) -> anyhow::Result<tidegate_testkit::Response> {
    let app = Backend::start(Bind::Tcp4, move |_| reply.clone())?;
    let tg = Tidegate::start(bin(), &proxy_config("", "127.0.0.1:0", "", app.addr(), "")).await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(&keep_alive_get("/body")).await?;
    // The client keeps its connection alive: only tidegate closing it ends the read.
    c.read_response(Duration::from_secs(3))
        .await
        .with_context(|| format!("logs:\n{}", tg.logs().join("\n")))
}

fn two_chunks() -> Vec<(Duration, Vec<u8>)> {
    vec![
        (Duration::ZERO, b"part1;".to_vec()),
        (Duration::from_millis(100), b"part2;".to_vec()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_mid_body_aborts_the_client_response() -> anyhow::Result<()> {
    let resp = through_tidegate(Reply::chunks_then_close(two_chunks())).await?;
    assert_eq!(resp.status, 200);
    assert!(
        !resp.complete,
        "an upstream cut short was passed off as complete: {resp:?}"
    );
    assert_eq!(resp.text(), "part1;part2;");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_aborts_the_client_response() -> anyhow::Result<()> {
    let resp = through_tidegate(Reply::chunks_then_reset(two_chunks())).await?;
    assert_eq!(resp.status, 200);
    assert!(
        !resp.complete,
        "an upstream reset was passed off as complete: {resp:?}"
    );
    assert!(resp.text().starts_with("part1;"), "{resp:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_before_its_content_length_aborts_the_client_response(
) -> anyhow::Result<()> {
    let reply = Reply::text(200, "only 15 bytes\r\n")
        .header("Content-Length", "100")
        .close();
    let resp = through_tidegate(reply).await?;
    assert_eq!(resp.status, 200);
    assert!(
        !resp.complete,
        "a short body was passed off as complete: {resp:?}"
    );
    assert!(resp.body.len() < 100, "{resp:?}");
    Ok(())
}

// === memory ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_post_to_a_slow_backend_streams_with_bounded_memory() -> anyhow::Result<()> {
    const TOTAL: usize = 50 * 1024 * 1024;
    const PIECE: usize = 256 * 1024;
    const MAX_GROWTH_KIB: u64 = 16 * 1024;
    let app = Backend::start(Bind::Tcp4, |_| Reply::slow_read(5 * 1024 * 1024))?;
    let tg = Tidegate::start(
        bin(),
        &proxy_config(
            "",
            "127.0.0.1:0",
            "idle_timeout = \"60s\"\nheader_timeout = \"60s\"",
            app.addr(),
            "response_timeout = \"60s\"\nidle_timeout = \"60s\"",
        ),
    )
    .await?;
    let addr = tg.addr("web")?;

    // Warm up: the first proxied request allocates what every request will reuse.
    let mut warm = connect(&addr).await?;
    warm.send(b"POST /warm HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await?;
    let resp = warm.read_response(Duration::from_secs(5)).await?;
    assert_eq!((resp.status, resp.text().as_str()), (200, "5"));
    let before = vm_hwm_kib(tg.pid())?;

    let upload = async {
        let mut c = connect(&addr).await?;
        c.send(
            format!(
                "POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: {TOTAL}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let piece = vec![b'x'; PIECE];
        for _ in 0..TOTAL / PIECE {
            c.send(&piece).await?;
        }
        c.read_response(Duration::from_secs(30)).await
    };
    let resp = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .context("50 MiB upload not answered within 60s")??;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), TOTAL.to_string());

    let after = vm_hwm_kib(tg.pid())?;
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KIB,
        "peak RSS grew by {} KiB (from {before} to {after} KiB) for a 50 MiB upload; bodies must stream through bounded buffers",
        after.saturating_sub(before)
    );
    Ok(())
}

// === the connection cap ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_pauses_accepting_until_a_connection_ends() -> anyhow::Result<()> {
    let tg = Tidegate::start(bin(), &respond_config("", "max_connections = 2")).await?;
    let addr = tg.addr("web")?;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&addr).await?;
        c.send(&keep_alive_get("/")).await?;
        let resp = c.read_response(SOON).await?;
        assert_eq!(resp.status, 200);
        open.push(c);
    }

    // The kernel completes the handshake; tidegate must not accept it yet.
    let mut third = connect(&addr).await?;
    third.send(&keep_alive_get("/")).await?;
    if let Ok(got) = third.read_some(Duration::from_millis(300)).await {
        panic!(
            "a 3rd connection was served with max_connections = 2: {:?}",
            String::from_utf8_lossy(&got)
        );
    }

    drop(open.remove(0));
    let resp = third
        .read_response(SOON)
        .await
        .context("the 3rd connection was not served after one of the first two closed")?;
    assert_eq!(resp.status, 200);
    Ok(())
}

// === the listener's timers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_a_connection_with_an_incomplete_head() -> anyhow::Result<()> {
    let tg = Tidegate::start(
        bin(),
        &respond_config("", "header_timeout = \"300ms\"\nidle_timeout = \"60s\""),
    )
    .await?;
    let mut c = connect(&tg.addr("web")?).await?;
    let sent = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n").await?;
    let (got, _) = c
        .read_to_end(SOON)
        .await
        .context("a connection with an incomplete head outlived header_timeout (300ms)")?;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before header_timeout (300ms)"
    );
    assert!(
        !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "an incomplete head was answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_quiet_keep_alive_connection() -> anyhow::Result<()> {
    let tg = Tidegate::start(
        bin(),
        &respond_config("", "header_timeout = \"10s\"\nidle_timeout = \"300ms\""),
    )
    .await?;
    let mut c = connect(&tg.addr("web")?).await?;
    c.send(&keep_alive_get("/")).await?;
    let resp = c.read_response(SOON).await?;
    assert_eq!(resp.status, 200);
    let answered = Instant::now();
    let (got, end) = c
        .read_to_end(SOON)
        .await
        .context("a quiet keep-alive connection outlived idle_timeout (300ms)")?;
    let took = answered.elapsed();
    assert!(
        got.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(end, End::Eof, "closed with a reset");
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before idle_timeout (300ms)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_arriving_head_within_header_timeout_is_served() -> anyhow::Result<()> {
    // Each pause is longer than idle_timeout: once a head has begun, only
    // header_timeout applies.
    let tg = Tidegate::start(
        bin(),
        &respond_config("", "header_timeout = \"3s\"\nidle_timeout = \"300ms\""),
    )
    .await?;
    let mut c = connect(&tg.addr("web")?).await?;
    for piece in [
        "GET / HTTP/1.1\r\n",
        "Host: a\r\n",
        "Connection: close\r\n",
        "\r\n",
    ] {
        c.send(piece.as_bytes()).await?;
        if piece != "\r\n" {
            // Pacing a deliberately slow client, not waiting for readiness.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    let resp = c.read_response(SOON).await?;
    assert_eq!((resp.status, resp.text().as_str()), (200, "hello\n"));
    Ok(())
}

// === check and startup ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_error_with_line_and_column_and_exits_nonzero() -> anyhow::Result<()> {
    let config = r#"[server]
shutdown_grace = "10 seconds"

[listeners.web]
listen = ["127.0.0.1:0"]
hedaer_timeout = "1s"

[[listeners.web.routes]]
upstream = "nope"
"#;
    // `tidegate.toml:LINE:COL: KEY: ` of each error (the file as given, so preceded by
    // its directory).
    let expected = [
        "tidegate.toml:2:18: server.shutdown_grace: ",
        "tidegate.toml:6:1: listeners.web.hedaer_timeout: ",
        "tidegate.toml:9:12: listeners.web.routes[0].upstream: ",
    ];
    let assert_all_reported = |what: &str, out: &Output| {
        let text = output_text(out);
        assert!(!out.status.success(), "{what} succeeded; output:\n{text}");
        for want in expected {
            let line = text.lines().find(|l| l.contains(want));
            let Some(line) = line else {
                panic!("{what}: no error line with {want:?}; output:\n{text}");
            };
            let (before, message) = line.split_once(want).unwrap_or_default();
            assert!(
                before.is_empty() || before.ends_with('/'),
                "{what}: {want:?} is not at the start of its line (after the file's folder): {line:?}"
            );
            assert!(!message.trim().is_empty(), "{what}: no message in {line:?}");
            assert!(
                !message.contains("error(s)"),
                "{what}: the error and the summary share one line: {line:?}"
            );
        }
        assert!(
            text.lines().any(|l| l.contains("3 error(s)")),
            "{what}: no summary counting 3 errors; output:\n{text}"
        );
    };

    let out = Tidegate::check(bin(), config).await?;
    assert_all_reported("check", &out);

    let dir = short_tempdir()?;
    let config_path = dir.path().join("tidegate.toml");
    std::fs::write(&config_path, config)?;
    let args = [OsString::from("run"), "--config".into(), config_path.into()];
    let out = run_to_exit(&args, dir.path(), Duration::from_secs(10)).await?;
    assert_all_reported("run", &out);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_every_example_config() -> anyhow::Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .with_context(|| format!("list {}", examples.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no *.toml in {}", examples.display());
    let cwd = tempfile::tempdir()?;
    let mut failures = Vec::new();
    for file in &files {
        let args = [OsString::from("check"), "--config".into(), file.into()];
        let out = run_to_exit(&args, cwd.path(), Duration::from_secs(10)).await?;
        if !out.status.success() {
            failures.push(format!("{}:\n{}", file.display(), output_text(&out)));
        }
    }
    assert!(
        failures.is_empty(),
        "check failed on:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_welcome_and_healthz() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let mut tg = Proc::spawn(&["run", "--listen", "127.0.0.1:0"], cwd.path())?;
    let addrs = tg.wait_ready(Duration::from_secs(10)).await?;
    let addr = addrs.first().with_context(|| {
        format!(
            "no listening address logged; logs:\n{}",
            tg.logs().join("\n")
        )
    })?;
    assert!(
        matches!(addr, Addr::Tcp(sa) if sa.ip().is_loopback() && sa.port() != 0),
        "listening on {addr}"
    );

    let health = get(addr, "/healthz", "localhost").await?;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let welcome = get(addr, "/", "localhost").await?;
    assert_eq!(welcome.status, 200);
    assert!(
        welcome.text().contains("Welcome to tidegate"),
        "{:?}",
        welcome.text()
    );

    tg.signal(Signal::SIGTERM)?;
    let status = tg.wait_exit(SOON).await?;
    assert_eq!(status.code(), Some(0), "logs:\n{}", tg.logs().join("\n"));
    Ok(())
}

/// Reads `Max open files` (soft, hard) from `/proc/PID/limits`.
fn nofile_limits(pid: u32) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no Max open files line")?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(soft), Some(hard)) => Ok((soft.to_owned(), hard.to_owned())),
        _ => bail!("cannot parse {line:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_to_the_hard_limit_at_start() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let mut tg = Proc::spawn_with_nofile(256, &["run", "--listen", "127.0.0.1:0"], cwd.path())?;
    tg.wait_ready(Duration::from_secs(10)).await?;
    let (soft, hard) = nofile_limits(tg.pid)?;
    assert_ne!(hard, "256", "the hard limit is 256 here: nothing to raise");
    assert_eq!(soft, hard, "logs:\n{}", tg.logs().join("\n"));
    assert!(
        tg.logs()
            .iter()
            .any(|l| l.contains("raised the open-files limit") && l.contains("from=256")),
        "the raise is logged; logs:\n{}",
        tg.logs().join("\n")
    );
    tg.signal(Signal::SIGTERM)?;
    assert_eq!(tg.wait_exit(SOON).await?.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_first_request_of_a_connection_accepted_just_before(
) -> anyhow::Result<()> {
    use tidegate_admin::client::{AdminAddr, Client};

    let mut tg = Tidegate::start(bin(), &respond_config("shutdown_grace = \"5s\"", "")).await?;
    let addr = tg.addr("web")?;
    let Addr::Unix(admin) = tg.addr("admin")? else {
        bail!("the admin API is not on a Unix socket");
    };
    let admin = Client::new(AdminAddr::Unix(admin), Duration::from_secs(5));
    // Connected, and accepted by tidegate (it lists the connection), but nothing sent.
    let mut c = connect(&addr).await?;
    let local = c.local_addr().context("a TCP connection")?.to_string();
    let deadline = Instant::now() + SOON;
    loop {
        let reply = admin.request("GET", "/v1/connections", None).await?;
        let conns: serde_json::Value = serde_json::from_slice(&reply.body)?;
        if conns
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["peer"] == local.as_str()))
        {
            break;
        }
        ensure!(Instant::now() < deadline, "tidegate never listed {local}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tg.signal(Signal::SIGTERM)?;
    wait_until_refused(&addr, SOON).await?;
    // The drain has begun; the request comes now, and is answered.
    c.send(&keep_alive_get("/")).await?;
    let resp = c.read_response(SOON).await?;
    assert_eq!((resp.status, resp.text().as_str()), (200, "hello\n"));
    let status = tg.wait_exit(SOON).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
