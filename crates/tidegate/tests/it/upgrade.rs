//! Binary upgrade end to end (docs/operations.md, "Binary upgrade"): `tidegate ctl
//! upgrade` and SIGUSR2 start the binary again and hand it every listening socket.
//! Against the built binary, with live traffic: a probe loop opening new connections
//! to a TCP and a Unix listener sees no refused or failed connection across two
//! upgrades in a row, `ctl status` names the new pid, the old process exits after its
//! drain, and the Unix socket file keeps its inode; an exchange in flight finishes in
//! the old process; a broken config or a binary that cannot start leaves the old
//! process serving and `ctl upgrade` exits 1 saying why; a second upgrade while the old
//! process drains is refused; garbage in `TIDEGATE_UPGRADE_FD` is a clear startup
//! error; an HTTP/2 connection is never handed over: it gets GOAWAY and its stream in
//! flight finishes in the old process.
//!
//! An upgraded process is not the test's child (it outlives the process that started
//! it): the test kit's `Tidegate::follow` takes it over, so it is killed on drop too.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::Signal;
use tidegate_testkit::lazy_app::{AppEvent, LazyApp};
use tidegate_testkit::{connect, get, process_gone, Addr, Backend, Bind, Reply, Tidegate};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// A generous bound for what should take milliseconds.
const SOON: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);
/// The configs' `shutdown_grace`, and how long an old process may take to exit.
const GRACE: Duration = Duration::from_secs(5);
const EXIT: Duration = Duration::from_secs(10);

/// Listener `web` on TCP and on a Unix socket, answering `hello` itself, and a route
/// `/slow` to `app` (when given).
fn config(app: Option<&Addr>) -> String {
    let slow = app.map_or_else(String::new, |a| {
        format!(
            r#"
[[listeners.web.routes]]
path = "/slow"
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
            a.to_config()
        )
    });
    format!(
        r#"
[server]
shutdown_grace = "{}s"

[listeners.web]
listen = ["127.0.0.1:0", "unix:web.sock"]
{slow}
[[listeners.web.routes]]
respond = {{ status = 200, body = "hello\n" }}
"#,
        GRACE.as_secs()
    )
}

fn admin(tg: &Tidegate) -> anyhow::Result<String> {
    match tg.addr("admin")? {
        Addr::Unix(p) => Ok(format!("unix:{}", p.display())),
        other => bail!("the admin API listens on {other}, not a Unix socket"),
    }
}

/// `tidegate ctl --admin ADMIN ARGS`.
async fn ctl(tg: &Tidegate, args: &[&str]) -> anyhow::Result<Output> {
    let admin = admin(tg)?;
    let out = tokio::process::Command::new(bin())
        .arg("ctl")
        .arg("--admin")
        .arg(&admin)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .with_context(|| format!("tidegate ctl {args:?} did not finish"))?
        .with_context(|| format!("run tidegate ctl {args:?}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ctl --json upgrade`, which must succeed: the new pid. The handle follows it.
async fn upgrade(tg: &mut Tidegate) -> anyhow::Result<u32> {
    let old = tg.pid();
    let out = ctl(tg, &["--json", "upgrade"]).await?;
    ensure!(
        out.status.success(),
        "ctl upgrade failed ({}): {}{}\nlogs:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        tg.logs().join("\n")
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let new = v["new_pid"].as_u64().context("new_pid")? as u32;
    ensure!(v["old_pid"].as_u64() == Some(u64::from(old)), "{v}");
    ensure!(new != old, "{v}");
    tg.follow(new);
    Ok(new)
}

/// The pid `ctl status` names.
async fn status_pid(tg: &Tidegate) -> anyhow::Result<u32> {
    let out = ctl(tg, &["--json", "status"]).await?;
    ensure!(out.status.success(), "ctl status: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["pid"].as_u64().context("pid")? as u32)
}

fn unix_path(tg: &Tidegate) -> anyhow::Result<PathBuf> {
    tg.addrs("web")
        .into_iter()
        .find_map(|a| match a {
            Addr::Unix(p) => Some(p),
            Addr::Tcp(_) => None,
        })
        .context("no Unix address for web")
}

fn tcp_addr(tg: &Tidegate) -> anyhow::Result<Addr> {
    tcp_addr_of(tg, "web")
}

fn inode(p: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .ino())
}

/// New connections, one request each, to every address in turn until stopped; every
/// failure is kept. With `socket_file`, every round also checks that the file is there
/// with inode `ino`.
struct Probes {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probes {
    fn start(addrs: Vec<Addr>, socket_file: Option<(PathBuf, u64)>) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for addr in addrs {
            let (stop, ok, failures, file) = (
                stop.clone(),
                ok.clone(),
                failures.clone(),
                socket_file.clone(),
            );
            tasks.push(tokio::spawn(async move {
                // Bounded by `stop`, which the test sets within its own bounds.
                while !stop.load(Ordering::Relaxed) {
                    let got = async {
                        let mut c = connect(&addr).await?;
                        let port = c.local_addr();
                        c.send(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                            .await?;
                        c.read_response(SOON)
                            .await
                            .with_context(|| format!("local {port:?}"))
                    };
                    match got.await {
                        Ok(r) if r.status == 200 && r.text() == "hello\n" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.lock().unwrap().push(format!("{addr}: {r:?}")),
                        Err(e) => failures.lock().unwrap().push(format!(
                            "{:?} {addr}: {e:#}",
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default()
                        )),
                    }
                    if let Some((path, ino)) = &file {
                        match std::fs::metadata(path) {
                            Ok(m) if m.ino() == *ino => {}
                            Ok(m) => failures.lock().unwrap().push(format!(
                                "{}: inode {} instead of {ino}",
                                path.display(),
                                m.ino()
                            )),
                            Err(e) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{}: {e}", path.display())),
                        }
                    }
                }
            }));
        }
        Probes {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops them; (successes, failures).
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(SOON, t).await;
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Waits until the probes have had `n` more successes.
async fn probes_pass(p: &Probes, n: u64) -> anyhow::Result<()> {
    let target = p.ok() + n;
    let deadline = Instant::now() + SOON;
    // Bounded by the deadline.
    while p.ok() < target {
        ensure!(Instant::now() < deadline, "the probes made no progress");
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_upgrades_in_a_row_refuse_no_connection_and_keep_the_socket_file() -> anyhow::Result<()>
{
    let mut tg = Tidegate::start(bin(), &config(None)).await?;
    let sock = unix_path(&tg)?;
    let ino = inode(&sock)?;
    let probes = Probes::start(
        vec![tcp_addr(&tg)?, Addr::Unix(sock.clone())],
        Some((sock.clone(), ino)),
    );
    probes_pass(&probes, 20).await?;
    for round in 0..2 {
        let old = tg.pid();
        let new = upgrade(&mut tg).await?;
        assert_eq!(status_pid(&tg).await?, new, "round {round}");
        tg.wait_gone(old, EXIT).await?;
        assert!(!process_gone(new), "round {round}: the new process is gone");
        assert_eq!(inode(&sock)?, ino, "round {round}: the socket file changed");
        probes_pass(&probes, 20).await?;
    }
    let (ok, failures) = probes.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:#?}\nlogs:\n{}",
        failures.len(),
        ok + failures.len() as u64,
        tg.logs().join("\n")
    );
    // The last process serves the file and removes it when it stops.
    tg.signal(Signal::SIGTERM)?;
    tg.wait_gone(tg.pid(), EXIT).await?;
    assert!(
        !sock.exists(),
        "the last process left its socket file behind"
    );
    Ok(())
}

/// tidegate with `GET /slow` in flight to a backend that answers `slow answer` after
/// `delay`: the backend, tidegate, and the client connection waiting for the answer.
async fn slow_request_in_flight(
    delay: Duration,
) -> anyhow::Result<(Backend, Tidegate, tidegate_testkit::RawConn)> {
    let app = Backend::start(Bind::Tcp4, move |_| {
        Reply::delay(delay, Reply::text(200, "slow answer\n"))
    })?;
    let tg = Tidegate::start(bin(), &config(Some(app.addr()))).await?;
    let mut c = connect(&tcp_addr(&tg)?).await?;
    c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    app.wait_for(|b| b.requests().len() == 1, SOON).await?;
    Ok((app, tg, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_in_flight_finishes_in_the_old_process() -> anyhow::Result<()> {
    let (_app, mut tg, mut c) = slow_request_in_flight(Duration::from_millis(1500)).await?;
    let old = tg.pid();
    let new = upgrade(&mut tg).await?;
    let resp = c.read_response(SOON).await?;
    assert_eq!((resp.status, resp.text().as_str()), (200, "slow answer\n"));
    assert!(resp.complete, "{resp:?}");
    tg.wait_gone(old, EXIT).await?;
    assert_eq!(status_pid(&tg).await?, new);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_leaves_the_old_process_serving() -> anyhow::Result<()> {
    let tg = Tidegate::start(bin(), &config(None)).await?;
    let pid = tg.pid();
    std::fs::write(
        tg.config_path(),
        "[listeners.web]\nlisten = [\"127.0.0.1:0\"]\nnope = 1\n",
    )?;
    let out = ctl(&tg, &["upgrade"]).await?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("failed to start") && err.contains("nope") && err.contains("still serving"),
        "{err}"
    );
    assert_eq!(status_pid(&tg).await?, pid);
    for addr in tg.addrs("web") {
        let r = get(&addr, "/", "x").await?;
        assert_eq!(r.text(), "hello\n", "{addr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_that_cannot_start_leaves_the_old_process_serving() -> anyhow::Result<()> {
    // Started from a copy, which the "upgrade" then makes unrunnable: the path it was
    // started from is the one run again.
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("tidegate");
    std::fs::copy(bin(), &copy)?;
    let tg = Tidegate::start(&copy, &config(None)).await?;
    let pid = tg.pid();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644))?;
    let out = ctl(&tg, &["upgrade"]).await?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot start the new binary") && err.contains("EACCES"),
        "{err}"
    );
    // Replaced (as installers do: a new file renamed over the old) by something that
    // is not tidegate: it exits without a word.
    let next = dir.path().join("tidegate.new");
    std::fs::write(&next, "#!/bin/sh\nexit 3\n")?;
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&next, &copy)?;
    let out = ctl(&tg, &["upgrade"]).await?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert_eq!(status_pid(&tg).await?, pid);
    let r = get(&tcp_addr(&tg)?, "/", "x").await?;
    assert_eq!(r.text(), "hello\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_upgrade_while_the_old_process_drains_is_refused() -> anyhow::Result<()> {
    let (_app, mut tg, mut c) = slow_request_in_flight(Duration::from_millis(2500)).await?;
    let old = tg.pid();
    let new = upgrade(&mut tg).await?;
    let out = ctl(&tg, &["upgrade"]).await?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want =
        format!("an upgrade is in progress: the previous process {old} is still draining (up to ");
    assert!(err.contains(&want), "{err}");
    assert!(
        !process_gone(old),
        "the old process should still be draining"
    );
    assert_eq!(status_pid(&tg).await?, new);
    // Once the old process has exited, upgrading is allowed again.
    let resp = c.read_response(SOON).await?;
    assert_eq!(resp.status, 200);
    tg.wait_gone(old, EXIT).await?;
    // The new process notices the exit (end of file on the handover socket) at once;
    // bounded all the same.
    let deadline = Instant::now() + SOON;
    loop {
        let out = ctl(&tg, &["--json", "upgrade"]).await?;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            tg.follow(v["new_pid"].as_u64().context("new_pid")? as u32);
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "upgrade still refused after the old process exited: {}",
            text(&out.stdout)
        );
        tokio::time::sleep(POLL).await;
    }
    tg.wait_gone(new, EXIT).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades() -> anyhow::Result<()> {
    let mut tg = Tidegate::start(bin(), &config(None)).await?;
    let old = tg.pid();
    tg.signal(Signal::SIGUSR2)?;
    let deadline = Instant::now() + SOON;
    let new = loop {
        let pid = status_pid(&tg).await?;
        if pid != old {
            break pid;
        }
        ensure!(Instant::now() < deadline, "no new process after SIGUSR2");
        tokio::time::sleep(POLL).await;
    };
    tg.follow(new);
    tg.wait_gone(old, EXIT).await?;
    tg.wait_log("SIGUSR2: upgrading", SOON).await?;
    let r = get(&tcp_addr(&tg)?, "/", "x").await?;
    assert_eq!(r.text(), "hello\n");
    Ok(())
}

#[tokio::test]
async fn garbage_in_the_upgrade_variable_is_a_clear_startup_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("tidegate.toml");
    std::fs::write(&config_path, config(None))?;
    for (value, says) in [
        ("garbage", "expected a descriptor number"),
        ("7", "only 0 is supported"),
        ("0", "not the handover socket"),
    ] {
        let out = tokio::process::Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("TIDEGATE_UPGRADE_FD", value)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(SOON, out).await??;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{value}: {err}");
        assert!(
            err.contains("TIDEGATE_UPGRADE_FD") && err.contains(says),
            "{value}: {err}"
        );
        assert!(!err.contains("panicked"), "{value}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_backend_never_runs_twice_across_an_upgrade() -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    let config = format!(
        r#"
[server]
shutdown_grace = "{}s"

[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
keepalive = 0

[upstreams.app.on_demand]
command = {}
stop_timeout = "2s"
"#,
        GRACE.as_secs(),
        app.server(),
        app.command(&[])
    );
    let mut tg = Tidegate::start(bin(), &config).await?;
    let addr = tcp_addr_of(&tg, "web")?;
    let first = get(&addr, "/", "x").await?;
    let old_child = crate::on_demand::pid_of(&first)?;
    // A request in flight to the old process's child keeps it (and the old process's
    // drain) alive across the upgrade.
    let slow = tokio::spawn({
        let addr = addr.clone();
        async move { get(&addr, "/slow?delay=1.5", "x").await }
    });
    app.wait_for("the slow request", SOON, |e| {
        e.iter()
            .filter(|e| matches!(e, AppEvent::Accept(..)))
            .count()
            >= 3
    })
    .await?;
    let old = tg.pid();
    upgrade(&mut tg).await?;
    // The new process serves this one, with a child of its own, started only once the
    // old process's child has exited.
    let second = get(&addr, "/", "x").await?;
    let new_child = crate::on_demand::pid_of(&second)?;
    assert_ne!(new_child, old_child);
    assert_eq!(
        crate::on_demand::pid_of(&slow.await??)?,
        old_child,
        "finished in the old process"
    );
    tg.wait_gone(old, EXIT).await?;
    let events = app.events();
    let exited = events.iter().position(|e| *e == AppEvent::Exit(old_child));
    let started = events.iter().position(|e| *e == AppEvent::Start(new_child));
    assert!(
        matches!((exited, started), (Some(x), Some(s)) if x < s),
        "the new child started before the old one exited: {events:?}"
    );
    Ok(())
}

fn tcp_addr_of(tg: &Tidegate, listener: &str) -> anyhow::Result<Addr> {
    tg.addrs(listener)
        .into_iter()
        .find(|a| matches!(a, Addr::Tcp(_)))
        .with_context(|| format!("no TCP address for {listener}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_move_to_the_new_process() -> anyhow::Result<()> {
    let mut tg = Tidegate::start(bin(), &config(None)).await?;
    let mut conns = Vec::new();
    for addr in tg.addrs("web") {
        let mut c = connect(&addr).await?;
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let r = c.read_response(SOON).await?;
        assert_eq!(r.text(), "hello\n", "{addr}");
        conns.push(c);
    }
    let old = tg.pid();
    upgrade(&mut tg).await?;
    tg.wait_gone(old, EXIT).await?;
    // The old process is gone: the same connections are served by the new one.
    for c in &mut conns {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let r = c.read_response(SOON).await?;
        assert_eq!(r.text(), "hello\n", "{}", c.addr());
    }
    let tcp = conns
        .iter()
        .find_map(|c| c.local_addr())
        .context("a TCP connection")?;
    let out = ctl(&tg, &["--json", "conns"]).await?;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        listed
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["peer"] == tcp.to_string())),
        "the new process does not list {tcp}: {listed}"
    );
    let line = tg.wait_log("the old process has exited", SOON).await?;
    assert!(line.contains("connections=2"), "{line}");
    Ok(())
}

#[tokio::test]
async fn garbage_from_the_old_process_is_a_clear_startup_error() -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    use tidegate_net::fdpass::{self, Channel};

    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("tidegate.toml");
    std::fs::write(&config_path, config(None))?;
    let null = std::fs::File::open("/dev/null")?;
    let cases: [(&[&[u8]], &str); 3] = [
        (&[b"hello there"], "not a handover from tidegate"),
        (
            &[
                b"tidegate-upgrade 1\npid 1\ndrain_ms 1\nsockets 1\n",
                b"listen tcp 127.0.0.1:1\n",
            ],
            "127.0.0.1:1: not a socket (ENOTSOCK)",
        ),
        (
            &[
                b"tidegate-upgrade 1\npid 1\ndrain_ms 1\nsockets 1\n",
                b"listen tcp nowhere\n",
            ],
            "not an IP:PORT address",
        ),
    ];
    for (messages, says) in cases {
        let (ours, theirs) = fdpass::pair()?;
        let ours = Channel::new(ours)?;
        let child = tokio::process::Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("TIDEGATE_UPGRADE_FD", "0")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        for (i, m) in messages.iter().enumerate() {
            // The second message of a case carries a descriptor that is not a socket.
            let fds = if i == 1 { vec![null.as_fd()] } else { vec![] };
            ours.send(m, &fds).await?;
        }
        let reply = tokio::time::timeout(SOON, ours.recv())
            .await??
            .context("no answer")?;
        let reply = text(&reply.bytes);
        assert!(
            reply.starts_with("error\n") && reply.contains(says),
            "{says}: {reply}"
        );
        let out = tokio::time::timeout(SOON, child.wait_with_output()).await??;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{says}: {err}");
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "{says}: {err}"
        );
    }
    Ok(())
}

/// The `Done when` (c) of the binary upgrade, with tunnels: WebSockets and TCP-mode
/// tunnels on TCP and Unix listeners, opened before two upgrades in a row, still echo
/// after each old process has exited — the same client connections, the same backend
/// connections (no reconnect) — while a probe loop sees no failed connection; bytes sent
/// while a tunnel moves arrive; only one old process exists at any time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_tunnels_move_and_go_on_after_the_old_process_exits() -> anyhow::Result<()> {
    use tidegate_testkit::TcpBackend;
    let ws = Backend::websocket_echo(Bind::Tcp4)?;
    let echo = TcpBackend::echo(Bind::Tcp4)?;
    let config = format!(
        r#"
[server]
shutdown_grace = "{}s"

[listeners.web]
listen = ["127.0.0.1:0", "unix:web.sock"]
[[listeners.web.routes]]
path = "/ws"
upstream = "ws"
[[listeners.web.routes]]
respond = {{ status = 200, body = "hello\n" }}

[listeners.tcp]
listen = ["127.0.0.1:0", "unix:tcp.sock"]
protocol = "tcp"
upstream = "echo"

[upstreams.ws]
servers = ["{}"]
[upstreams.echo]
servers = ["{}"]
"#,
        GRACE.as_secs(),
        ws.addr().to_config(),
        echo.addr().to_config()
    );
    let mut tg = Tidegate::start(bin(), &config).await?;
    let sock = unix_path(&tg)?;
    let probes = Probes::start(vec![tcp_addr(&tg)?, Addr::Unix(sock.clone())], None);
    let frame = |p: &str| {
        let mut f = vec![0x81, 0x80 | p.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(p.as_bytes());
        f
    };
    let mut sockets = Vec::new();
    for a in tg.addrs("web") {
        let mut c = connect(&a).await?;
        c.send(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await?;
        ensure!(c.read_head(SOON).await?.status == 101, "{a}");
        c.send(&frame("before")).await?;
        c.read_until(b"before", SOON).await?;
        sockets.push(c);
    }
    let mut tunnels = Vec::new();
    for a in tg.addrs("tcp") {
        let mut c = connect(&a).await?;
        c.send(b"before\n").await?;
        c.read_until(b"before\n", SOON).await?;
        tunnels.push(c);
    }
    ensure!(sockets.len() == 2 && tunnels.len() == 2);
    for round in 0..2 {
        let old = tg.pid();
        // Sent just before the handover: read by the old process, written by the new.
        for t in &mut tunnels {
            t.send(format!("during-{round}\n").as_bytes()).await?;
        }
        upgrade(&mut tg).await?;
        tg.wait_gone(old, EXIT).await?;
        for (n, c) in sockets.iter_mut().enumerate() {
            let p = format!("ws{n}-{round}");
            c.send(&frame(&p)).await?;
            c.read_until(p.as_bytes(), SOON)
                .await
                .with_context(|| format!("round {round}: WebSocket {n}"))?;
        }
        for (n, t) in tunnels.iter_mut().enumerate() {
            t.read_until(format!("during-{round}\n").as_bytes(), SOON)
                .await
                .with_context(|| {
                    format!("round {round}: bytes sent during the move, tunnel {n}")
                })?;
            let p = format!("tcp{n}-{round}\n");
            t.send(p.as_bytes()).await?;
            t.read_until(p.as_bytes(), SOON)
                .await
                .with_context(|| format!("round {round}: tunnel {n}"))?;
        }
    }
    ensure!(
        ws.accepts() == 2,
        "WebSockets reconnected upstream: {}",
        ws.accepts()
    );
    ensure!(
        echo.accepts() == 2,
        "tunnels reconnected upstream: {}",
        echo.accepts()
    );
    // The last process lists them.
    let out = ctl(&tg, &["--json", "conns"]).await?;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let tunnels_listed = listed.as_array().map_or(0, |a| {
        a.iter()
            .filter(|c| {
                c["side"] == "client" && (c["protocol"] == "websocket" || c["protocol"] == "tcp")
            })
            .count()
    });
    ensure!(tunnels_listed == 4, "{listed}");
    let (ok, failures) = probes.stop().await;
    ensure!(
        failures.is_empty(),
        "{} probes failed of {}: {failures:#?}",
        failures.len(),
        ok + failures.len() as u64
    );
    Ok(())
}

/// A new process whose old one goes away before handing over (stopped while the new one
/// started) does not serve on alone: it drains and exits by itself.
#[tokio::test]
async fn a_new_process_whose_old_one_vanishes_before_the_handover_exits() -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    use tidegate_net::fdpass::{self, Channel};

    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("tidegate.toml");
    std::fs::write(&config_path, config(None))?;
    // The socket the "old process" hands over.
    let listening = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (ours, theirs) = fdpass::pair()?;
    let ours = Channel::new(ours)?;
    let child = tokio::process::Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .current_dir(dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("TIDEGATE_UPGRADE_FD", "0")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    ours.send(
        b"tidegate-upgrade 1\npid 1\ndrain_ms 1000\nsockets 1\n",
        &[],
    )
    .await?;
    ours.send(b"listen tcp 127.0.0.1:0 @web\n", &[listening.as_fd()])
        .await?;
    let reply = tokio::time::timeout(SOON, ours.recv())
        .await??
        .context("no answer")?;
    assert!(
        text(&reply.bytes).starts_with("ready "),
        "{}",
        text(&reply.bytes)
    );
    // Gone without `committed`.
    drop(ours);
    let out = tokio::time::timeout(EXIT, child.wait_with_output()).await??;
    let err = text(&out.stderr);
    assert!(
        err.contains("exited before handing over") && !err.contains("panicked"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_stays_and_its_stream_finishes_in_the_old_process() -> anyhow::Result<()>
{
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_millis(1500), Reply::text(200, "late"))
    })?;
    let mut tg = Tidegate::start(bin(), &config(Some(app.addr()))).await?;
    let old = tg.pid();
    let Addr::Tcp(web) = tg.addr("web")? else {
        bail!("web is not on TCP");
    };
    let mut script = crate::h2::Script::start("in-flight", web.port(), 15.0, "/slow")?;
    ensure!(script.line().await? == "sent");
    let deadline = Instant::now() + SOON;
    while app.requests().is_empty() {
        ensure!(Instant::now() < deadline, "the upstream got no request");
        tokio::time::sleep(POLL).await;
    }
    let new = upgrade(&mut tg).await?;
    // The old process answered it, after its GOAWAY.
    let v = script.result().await?;
    ensure!(v["goaway_before_end"] == true, "{v}");
    ensure!(v["status"] == "200" && v["body"] == 4, "{v}");
    let deadline = Instant::now() + EXIT;
    while !process_gone(old) {
        ensure!(
            Instant::now() < deadline,
            "the old process {old} did not exit"
        );
        tokio::time::sleep(POLL).await;
    }
    // The new process serves HTTP/2 on the same socket.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "5"])
        .arg(format!("http://{web}/"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SOON, out)
        .await
        .context("curl did not finish")??;
    ensure!(text(&out.stdout) == "hello\n", "{}", text(&out.stderr));
    ensure!(status_pid(&tg).await? == new);
    Ok(())
}
