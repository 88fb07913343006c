//! On-demand backends end to end (`docs/on-demand.md`): tidegate's own end never leaves
//! a child behind — SIGTERM stops children once the drain ends (requests in flight to
//! them finish first) or at `shutdown_grace - stop_timeout`; SIGINT stops them at once,
//! SIGKILL after `stop_timeout`; and when tidegate itself is killed with SIGKILL its
//! children die too (PR_SET_PDEATHSIG, set by the long-lived spawner thread). Also: a
//! TCP-mode tunnel keeps a backend in use, and the example under `examples/` works as
//! shipped.
//!
//! The backend is `tidegate_testkit::lazy_app` (Python, stdlib only) on a Unix socket;
//! its events file shows what happened to it. "Gone" is `process_gone`: no `/proc`
//! entry, or a zombie (PID 1 does not reap orphans here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use nix::sys::signal::Signal;
use tidegate_testkit::lazy_app::{AppEvent, LazyApp};
use tidegate_testkit::{connect, get, process_gone, Response, Tidegate};
use tokio::time::Instant;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// A generous functional bound for what takes milliseconds (a Python start included).
const SOON: Duration = Duration::from_secs(5);

/// Listener `web` on 127.0.0.1:0 to upstream `app`, the lazy app on demand with `args`.
/// `server`, `upstream` and `keys` go into `[server]`, `[upstreams.app]` and its
/// `on_demand` table.
fn config(app: &LazyApp, args: &[&str], server: &str, upstream: &str, keys: &str) -> String {
    format!(
        r#"
[server]
{server}

[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
{upstream}

[upstreams.app.on_demand]
command = {}
{keys}
"#,
        app.server(),
        app.command(args)
    )
}

/// The lazy app's `pid=N` answer (the upgrade tests use it too).
pub(crate) fn pid_of(resp: &Response) -> anyhow::Result<u32> {
    let text = resp.text();
    ensure!(resp.status == 200, "{} {text:?}", resp.status);
    text.strip_prefix("pid=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no pid in {text:?}"))
}

/// `/proc/PID/stat`: (parent pid, process group).
fn ppid_and_pgrp(pid: u32) -> anyhow::Result<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok((f[1].parse()?, f[2].parse()?))
}

async fn wait_gone(pid: u32, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    // Bounded by the deadline.
    while !process_gone(pid) {
        ensure!(
            Instant::now() < deadline,
            "child {pid} still running {within:?} later"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Connections the app accepted (tidegate's readiness probes included).
fn accepts(events: &[AppEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, AppEvent::Accept(..)))
        .count()
}

/// The index of the first log line containing `needle`.
fn line_of(logs: &[String], needle: &str) -> anyhow::Result<usize> {
    logs.iter()
        .position(|l| l.contains(needle))
        .with_context(|| format!("no log line with {needle:?}:\n{}", logs.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_children_when_the_drain_ends_and_leaves_none() -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    // keepalive = 0: every request is a new connection, so the app's events show it.
    let mut tg = Tidegate::start(
        bin(),
        &config(
            &app,
            &[],
            "shutdown_grace = \"5s\"",
            "keepalive = 0",
            "stop_timeout = \"2s\"",
        ),
    )
    .await?;
    let addr = tg.addr("web")?;
    let pid = pid_of(&get(&addr, "/", "example.com").await?)?;
    assert_eq!(
        ppid_and_pgrp(pid)?,
        (tg.pid(), pid),
        "a child of tidegate, in its own group"
    );

    // A request in flight to the backend when SIGTERM comes: it finishes first.
    let accepted = accepts(&app.events());
    let slow = tokio::spawn({
        let addr = addr.clone();
        async move { get(&addr, "/slow?delay=0.5", "example.com").await }
    });
    app.wait_for("the slow request's connection", SOON, |e| {
        accepts(e) > accepted
    })
    .await?;
    tg.signal(Signal::SIGTERM)?;
    let resp = slow.await??;
    assert_eq!(pid_of(&resp)?, pid);
    let status = tg.wait_exit(SOON).await?;
    assert!(status.success(), "{status}");
    assert!(process_gone(pid), "child {pid} left behind");

    let events = app.events();
    assert!(events.contains(&AppEvent::Term(pid)), "{events:?}");
    assert!(events.contains(&AppEvent::Exit(pid)), "{events:?}");
    let logs = tg.logs();
    assert!(
        line_of(&logs, "drained")? < line_of(&logs, "on-demand backend stopping")?,
        "the child was stopped before the drain ended:\n{}",
        logs.join("\n")
    );
    line_of(&logs, "on-demand backend stopped")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_children_before_the_grace_ends_when_the_drain_does_not() -> anyhow::Result<()>
{
    let app = LazyApp::new()?;
    let mut tg = Tidegate::start(
        bin(),
        &config(
            &app,
            &[],
            "shutdown_grace = \"1s\"",
            "keepalive = 0",
            "stop_timeout = \"400ms\"",
        ),
    )
    .await?;
    let addr = tg.addr("web")?;
    let pid = pid_of(&get(&addr, "/", "example.com").await?)?;
    // A request that outlasts the grace.
    let accepted = accepts(&app.events());
    let mut stuck = connect(&addr).await?;
    stuck
        .send(b"GET /slow?delay=30 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await?;
    app.wait_for("the stuck request's connection", SOON, |e| {
        accepts(e) > accepted
    })
    .await?;
    tg.signal(Signal::SIGTERM)?;
    let status = tg.wait_exit(SOON).await?;
    assert!(status.success(), "{status}");
    assert!(process_gone(pid), "child {pid} left behind");
    let logs = tg.logs();
    // SIGTERM at grace - stop_timeout, while the drain was still waiting for the stuck
    // request (which the backend's exit then ended).
    let drain_end = logs
        .iter()
        .position(|l| l.contains("drained") || l.contains("shutdown_grace ended"))
        .with_context(|| format!("no end of the drain logged:\n{}", logs.join("\n")))?;
    assert!(
        line_of(&logs, "on-demand backend stopping")? < drain_end,
        "{}",
        logs.join("\n")
    );
    assert!(app.events().contains(&AppEvent::Term(pid)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_children_at_once_with_sigkill_after_stop_timeout() -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    let mut tg = Tidegate::start(
        bin(),
        &config(
            &app,
            &["--ignore-term"],
            "shutdown_grace = \"30s\"",
            "",
            "stop_timeout = \"300ms\"",
        ),
    )
    .await?;
    let pid = pid_of(&get(&tg.addr("web")?, "/", "example.com").await?)?;
    tg.signal(Signal::SIGINT)?;
    let status = tg.wait_exit(SOON).await?;
    assert!(status.success(), "{status}");
    assert!(process_gone(pid), "child {pid} left behind");
    let events = app.events();
    // It got SIGTERM, ignored it, and was killed.
    assert!(events.contains(&AppEvent::Term(pid)), "{events:?}");
    assert!(!events.contains(&AppEvent::Exit(pid)), "{events:?}");
    line_of(&tg.logs(), "SIGKILL")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_tidegate_leaves_no_child() -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    let mut tg = Tidegate::start(bin(), &config(&app, &[], "", "", "")).await?;
    let pid = pid_of(&get(&tg.addr("web")?, "/", "example.com").await?)?;
    assert_eq!(ppid_and_pgrp(pid)?, (tg.pid(), pid));
    assert!(!process_gone(pid));

    // No handler, no drain, no chance to signal anything: the kernel's
    // PR_SET_PDEATHSIG (SIGKILL) is all that is left.
    tg.signal(Signal::SIGKILL)?;
    tg.wait_exit(SOON).await?;
    wait_gone(pid, SOON).await?;
    let events = app.events();
    assert!(
        !events.contains(&AppEvent::Term(pid)),
        "SIGTERM? {events:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_tunnel_keeps_the_backend_in_use_until_it_closes() -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    let toml = format!(
        r#"
[listeners.raw]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "app"

[upstreams.app]
servers = ["{}"]

[upstreams.app.on_demand]
command = {}
idle_stop = "300ms"
"#,
        app.server(),
        app.command(&[])
    );
    let tg = Tidegate::start(bin(), &toml).await?;
    let mut tunnel = connect(&tg.addr("raw")?).await?;
    let request = b"GET /one HTTP/1.1\r\nHost: example.com\r\n\r\n";
    tunnel.send(request).await?;
    let pid = pid_of(&tunnel.read_response(SOON).await?)?;
    // The tunnel stays open and silent for longer than idle_stop: still in use.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !app.events().contains(&AppEvent::Term(pid)),
        "stopped under an open tunnel: {:?}",
        app.events()
    );
    tunnel.send(request).await?;
    assert_eq!(pid_of(&tunnel.read_response(SOON).await?)?, pid);
    drop(tunnel);
    // Closed: idle from now on, then stopped.
    app.wait_for("the stop", SOON, |e| e.contains(&AppEvent::Exit(pid)))
        .await?;
    wait_gone(pid, SOON).await?;
    Ok(())
}

/// Copies `from` (a file or a folder) into `to`.
fn copy_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_into(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if from.extension().is_some_and(|e| e == "sock") {
        // A socket left by someone running the example in the checkout.
    } else {
        std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lazyapp_example_works_as_shipped() -> anyhow::Result<()> {
    tidegate_testkit::lazy_app::require_python3()?;
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let toml = std::fs::read_to_string(examples.join("lazyapp.toml"))?;
    // The one change: no fixed port in tests.
    ensure!(toml.contains(r#"listen = ["127.0.0.1:8080"]"#), "{toml}");
    let toml = toml.replace(
        r#"listen = ["127.0.0.1:8080"]"#,
        r#"listen = ["127.0.0.1:0"]"#,
    );
    // Its own folder, like a fresh checkout: `cwd` and the socket are relative to it.
    let dir = tempfile::Builder::new().prefix("tgod").tempdir_in("/tmp")?;
    copy_into(&examples.join("lazyapp"), &dir.path().join("lazyapp"))?;

    let mut tg = Tidegate::start_in(dir.path(), bin(), &toml).await?;
    let addr = tg.addr("web")?;
    let health = get(&addr, "/healthz", "localhost").await?;
    assert_eq!(health.status, 200);
    let resp = get(&addr, "/hello", "localhost").await?;
    assert_eq!(
        resp.status,
        200,
        "{:?}\n{}",
        resp.text(),
        tg.logs().join("\n")
    );
    assert!(
        resp.text().starts_with("hello from lazyapp\n"),
        "{:?}",
        resp.text()
    );
    // Its stdout, in tidegate's log with the upstream's name.
    let line = tg.wait_log("listening on lazyapp.sock", SOON).await?;
    assert!(line.contains("upstream=lazyapp"), "{line}");

    let pid: u32 = resp
        .text()
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("pid "))
        .and_then(|l| l.split(',').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no pid in {:?}", resp.text()))?;
    tg.signal(Signal::SIGTERM)?;
    assert!(tg.wait_exit(SOON).await?.success());
    assert!(process_gone(pid), "the example app was left behind");
    assert!(
        !dir.path().join("lazyapp/lazyapp.sock").exists(),
        "the app removes its socket when it stops"
    );
    Ok(())
}
