//! On-demand backends, in-process (nothing ever connects to a process being stopped, see
//! `docs/on-demand.md`): the first request starts the command, concurrent first requests
//! share one start, an idle backend is stopped, a request during `stopping` waits for
//! the exit and a new start without ever reaching the old process, a failed start is a
//! 503 naming the upstream and the reason, and stopping tidegate's children leaves none
//! behind.
//!
//! In-process because the tests read the supervisor's state (the snapshot the admin API
//! shows) and stop children directly. The backend is `tidegate_testkit::lazy_app`, a
//! Python (stdlib) HTTP server on a Unix socket that writes what happens to it (start,
//! accept, SIGTERM, exit) into an events file. The binary's own tests (signals, SIGKILL
//! of tidegate, the example) are `crates/tidegate/tests/it/on_demand.rs`.

use std::collections::HashSet;
use std::time::Duration;

use tidegate_config::Config;
use tidegate_proxy::upstream::on_demand::{Children, OnDemandSnapshot, OnDemandState};
use tidegate_testkit::lazy_app::{AppEvent, LazyApp};
use tidegate_testkit::{get, process_gone, Response};
use tokio::time::Instant;

use crate::common::{config, start, Logs, Proxy};

/// A generous functional bound for what takes milliseconds (a Python start included).
const SOON: Duration = Duration::from_secs(5);

/// Upstream `app`, on demand: the lazy app with `args`, and `keys` for the on_demand
/// table.
fn on_demand(app: &LazyApp, args: &[&str], keys: &str) -> anyhow::Result<Config> {
    config(
        &[app.server()],
        &format!(
            "[upstreams.app.on_demand]\ncommand = {}\n{keys}\n",
            app.command(args)
        ),
    )
}

fn snapshot(proxy: &Proxy) -> OnDemandSnapshot {
    proxy.upstreams[0].servers[0]
        .on_demand_snapshot()
        .expect("an on-demand server")
}

async fn wait_state(
    proxy: &Proxy,
    state: OnDemandState,
    within: Duration,
) -> anyhow::Result<OnDemandSnapshot> {
    let deadline = Instant::now() + within;
    // Bounded by the deadline.
    loop {
        let s = snapshot(proxy);
        if s.state == state {
            return Ok(s);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not {state} within {within:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_gone(pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + SOON;
    // Bounded by the deadline.
    while !process_gone(pid) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "process {pid} still there after {SOON:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Stops every child, as the binary does at exit, and checks none is left.
async fn stop_all(proxy: &Proxy) -> anyhow::Result<()> {
    let children = Children::new(&proxy.upstreams);
    let pids = children.pids();
    tokio::time::timeout(SOON, children.stop_children(Instant::now())).await?;
    for pid in pids {
        anyhow::ensure!(process_gone(pid), "child {pid} left behind");
    }
    Ok(())
}

/// The backend's pid from its body (`pid=123 path=/x`).
fn pid_of(resp: &Response) -> anyhow::Result<u32> {
    let text = resp.text();
    text.strip_prefix("pid=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no pid in {} {text:?}", resp.status))
}

async fn get_ok(proxy: &Proxy, path: &str) -> anyhow::Result<u32> {
    let resp = get(&proxy.addr, path, "example.com").await?;
    anyhow::ensure!(resp.status == 200, "{} {:?}", resp.status, resp.text());
    pid_of(&resp)
}

/// `/proc/PID/stat`: (parent pid, process group).
fn ppid_and_pgrp(pid: u32) -> anyhow::Result<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok((f[1].parse()?, f[2].parse()?))
}

#[tokio::test]
async fn the_first_request_starts_the_backend_and_health_checks_do_not() -> anyhow::Result<()> {
    let logs = Logs::capture();
    let app = LazyApp::new()?;
    let cfg = on_demand(
        &app,
        &[],
        "[upstreams.app.health]\ninterval = \"20ms\"\ntimeout = \"100ms\"\n",
    )?;
    let proxy = start(&cfg)?;

    // Active checks every 20 ms would have started it by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(snapshot(&proxy).state, OnDemandState::Stopped);
    assert_eq!(snapshot(&proxy).pid, None);
    assert!(app.started().is_empty(), "{:?}", app.events());

    let pid = get_ok(&proxy, "/hello").await?;
    assert_eq!(app.started(), [pid]);
    let s = snapshot(&proxy);
    assert_eq!(
        (s.state, s.pid, s.state.as_str()),
        (OnDemandState::Ready, Some(pid), "ready")
    );
    assert!(s.uptime.is_some_and(|u| u < SOON), "{s:?}");

    // Its own process group, forked by tidegate's process.
    assert_eq!(ppid_and_pgrp(pid)?, (std::process::id(), pid));
    // The second request goes to the same process.
    assert_eq!(get_ok(&proxy, "/again").await?, pid);
    assert_eq!(app.started(), [pid]);

    for state in ["starting", "ready"] {
        assert!(
            !logs
                .lines_with(&format!("on-demand backend {state}"))
                .is_empty(),
            "no {state} transition logged:\n{}",
            logs.text()
        );
    }
    // Its output is in the log, with the upstream's name.
    let out = logs.lines_with(&format!("lazy app {pid} starting"));
    assert!(
        out.iter()
            .any(|l| l.contains("upstream=app") && l.contains("stream=\"stdout\"")),
        "{out:?}\n{}",
        logs.text()
    );
    assert!(!logs
        .lines_with("no active health checks for an on-demand server")
        .is_empty());

    stop_all(&proxy).await?;
    assert_eq!(snapshot(&proxy).state, OnDemandState::Stopped);
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_first_requests_spawn_exactly_one_process() -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    // A slow start, so that every request arrives while it is starting.
    let proxy = start(&on_demand(&app, &["--start-delay", "0.3"], "")?)?;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..50 {
        let addr = proxy.addr.clone();
        requests.spawn(async move { get(&addr, &format!("/{i}"), "example.com").await });
    }
    let mut pids = HashSet::new();
    while let Some(done) = requests.join_next().await {
        let resp = done??;
        assert_eq!(resp.status, 200, "{:?}", resp.text());
        pids.insert(pid_of(&resp)?);
    }
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_eq!(app.started().len(), 1, "{:?}", app.events());
    stop_all(&proxy).await
}

#[tokio::test]
async fn an_idle_backend_is_stopped_and_the_next_request_starts_a_new_one() -> anyhow::Result<()> {
    let logs = Logs::capture();
    let app = LazyApp::new()?;
    let proxy = start(&on_demand(&app, &[], "idle_stop = \"300ms\"")?)?;
    let first = get_ok(&proxy, "/").await?;

    wait_state(&proxy, OnDemandState::Stopped, SOON).await?;
    wait_gone(first).await?;
    // Stopped with SIGTERM, and it exited by itself.
    let events = app.events();
    assert!(events.contains(&AppEvent::Term(first)), "{events:?}");
    assert!(events.contains(&AppEvent::Exit(first)), "{events:?}");
    assert!(
        !logs.lines_with("unused for 300ms (idle_stop)").is_empty(),
        "{}",
        logs.text()
    );

    let second = get_ok(&proxy, "/").await?;
    assert_ne!(first, second);
    assert_eq!(app.started(), [first, second]);
    stop_all(&proxy).await
}

#[tokio::test]
async fn idle_stop_counts_from_the_end_of_the_last_exchange() -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    let proxy = start(&on_demand(&app, &[], "idle_stop = \"400ms\"")?)?;
    // The response takes twice idle_stop: the backend is in use all along.
    let pid = get_ok(&proxy, "/slow?delay=0.8").await?;
    assert!(
        !app.events().contains(&AppEvent::Term(pid)),
        "stopped during an exchange: {:?}",
        app.events()
    );
    assert_eq!(snapshot(&proxy).state, OnDemandState::Ready);
    // Then it goes idle and is stopped.
    wait_state(&proxy, OnDemandState::Stopped, SOON).await?;
    wait_gone(pid).await?;
    Ok(())
}

#[tokio::test]
async fn a_request_during_stopping_waits_for_the_exit_and_starts_a_new_process(
) -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    // After SIGTERM the old process keeps its socket open for 500 ms: a connection to it
    // would be accepted (and recorded as such).
    let proxy = start(&on_demand(
        &app,
        &["--term-delay", "0.5"],
        "idle_stop = \"200ms\"\nstop_timeout = \"3s\"",
    )?)?;
    let old = get_ok(&proxy, "/").await?;
    let stopping = wait_state(&proxy, OnDemandState::Stopping, SOON).await?;
    assert_eq!(stopping.pid, Some(old));

    let resp = get(&proxy.addr, "/during", "example.com").await?;
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let new = pid_of(&resp)?;
    assert_ne!(new, old);
    assert!(process_gone(old));

    let events = app.events();
    assert_eq!(
        app.accepted_after_term(),
        0,
        "a connection reached the stopping process: {events:?}"
    );
    let exit_old = events.iter().position(|e| *e == AppEvent::Exit(old));
    let start_new = events.iter().position(|e| *e == AppEvent::Start(new));
    assert!(
        exit_old.is_some() && exit_old < start_new,
        "the new process started before the old one exited: {events:?}"
    );
    stop_all(&proxy).await
}

#[tokio::test]
async fn a_crash_during_start_is_a_503_naming_the_upstream_and_the_next_request_tries_again(
) -> anyhow::Result<()> {
    let logs = Logs::capture();
    let app = LazyApp::new()?;
    let proxy = start(&on_demand(&app, &["--fail", "3"], "")?)?;

    let resp = get(&proxy.addr, "/", "example.com").await?;
    assert_eq!(resp.status, 503);
    let expected = format!(
        "upstream app ({}): on-demand backend failed to start: exited with status 3 before accepting connections\n",
        app.server()
    );
    assert_eq!(resp.text(), expected);
    let first = app.started();
    assert_eq!(first.len(), 1);
    // Its stderr is in the log line of the failure.
    let failed = logs.lines_with("on-demand backend failed to start");
    assert!(
        failed
            .iter()
            .any(|l| l.contains("cannot open database") && l.contains("upstream=app")),
        "{}",
        logs.text()
    );
    let s = snapshot(&proxy);
    assert_eq!((s.state, s.pid), (OnDemandState::Failed, None));
    assert!(s.last_failure.is_some_and(|r| r.contains("status 3")));
    wait_gone(first[0]).await?;

    // The next request tries again…
    let resp = get(&proxy.addr, "/", "example.com").await?;
    assert_eq!(resp.status, 503);
    assert_eq!(app.started().len(), 2, "{:?}", app.events());
    // …and after repeated failures, not before a back-off.
    let resp = get(&proxy.addr, "/", "example.com").await?;
    assert_eq!(resp.status, 503);
    assert!(
        resp.text().contains("; next attempt in 1s") || resp.text().contains("next attempt in"),
        "{:?}",
        resp.text()
    );
    assert_eq!(app.started().len(), 2, "{:?}", app.events());
    Ok(())
}

#[tokio::test]
async fn a_backend_not_ready_within_ready_timeout_is_killed_and_answered_503() -> anyhow::Result<()>
{
    let logs = Logs::capture();
    let app = LazyApp::new()?;
    let proxy = start(&on_demand(
        &app,
        &["--start-delay", "30"],
        "ready_timeout = \"300ms\"",
    )?)?;
    let resp = get(&proxy.addr, "/", "example.com").await?;
    assert_eq!(resp.status, 503);
    assert!(
        resp.text().contains(&format!(
            "on-demand backend failed to start: not accepting connections on {} within 300ms (ready_timeout)",
            app.server()
        )),
        "{:?}",
        resp.text()
    );
    // Python may not even have written its start event in 300 ms: the pid is in the
    // failure's log line.
    let failed = logs.lines_with("on-demand backend failed to start");
    let pid = failed
        .iter()
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("pid=")))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no pid in the failure's log line:\n{}", logs.text()))?;
    wait_gone(pid).await?;
    assert!(app.started().len() <= 1, "{:?}", app.events());
    assert_eq!(snapshot(&proxy).state, OnDemandState::Failed);
    Ok(())
}

#[tokio::test]
async fn a_command_that_cannot_run_is_a_503_with_the_reason() -> anyhow::Result<()> {
    let cfg = config(
        &["unix:/tmp/tidegate-no-such-app.sock".to_owned()],
        "[upstreams.app.on_demand]\ncommand = [\"/nonexistent/tidegate-test-app\"]\n",
    )?;
    let proxy = start(&cfg)?;
    let resp = get(&proxy.addr, "/", "example.com").await?;
    assert_eq!(resp.status, 503);
    assert!(
        resp.text().contains(
            "on-demand backend failed to start: cannot start \"/nonexistent/tidegate-test-app\""
        ) && resp.text().contains("(ENOENT)"),
        "{:?}",
        resp.text()
    );
    Ok(())
}

#[tokio::test]
async fn stopping_children_escalates_to_sigkill_and_nothing_starts_afterwards() -> anyhow::Result<()>
{
    let logs = Logs::capture();
    let app = LazyApp::new()?;
    let proxy = start(&on_demand(
        &app,
        &["--ignore-term"],
        "stop_timeout = \"300ms\"",
    )?)?;
    let pid = get_ok(&proxy, "/").await?;

    let children = Children::new(&proxy.upstreams);
    assert_eq!(children.pids(), [pid]);
    tokio::time::timeout(SOON, children.stop_children(Instant::now())).await?;
    assert!(process_gone(pid));
    let events = app.events();
    assert!(events.contains(&AppEvent::Term(pid)), "{events:?}");
    assert!(!events.contains(&AppEvent::Exit(pid)), "{events:?}");
    assert!(
        !logs
            .lines_with("still running 300ms after SIGTERM (stop_timeout): SIGKILL")
            .is_empty(),
        "{}",
        logs.text()
    );

    let resp = get(&proxy.addr, "/", "example.com").await?;
    assert_eq!(resp.status, 503);
    assert!(
        resp.text().contains("tidegate is shutting down"),
        "{:?}",
        resp.text()
    );
    assert_eq!(app.started(), [pid]);
    Ok(())
}

#[tokio::test]
async fn the_whole_process_group_is_signalled() -> anyhow::Result<()> {
    let app = LazyApp::new()?;
    // The command is a shell that runs the app as *its* child and waits: stopping must
    // reach the app through the process group.
    let script = app.dir().join("lazy_app.py");
    let inner = format!(
        "python3 {} --socket {} --events {} & wait",
        script.display(),
        app.socket().display(),
        app.events_path().display()
    );
    let cfg = config(
        &[app.server()],
        &format!(
            "[upstreams.app.on_demand]\ncommand = [\"sh\", \"-c\", {inner:?}]\nidle_stop = \"200ms\"\n"
        ),
    )?;
    let proxy = start(&cfg)?;
    let app_pid = get_ok(&proxy, "/").await?;
    let leader = snapshot(&proxy).pid.expect("a process");
    assert_ne!(
        leader, app_pid,
        "the shell is the leader, the app its child"
    );
    assert_eq!(ppid_and_pgrp(app_pid)?, (leader, leader));

    wait_state(&proxy, OnDemandState::Stopped, SOON).await?;
    wait_gone(app_pid).await?;
    assert!(
        app.events().contains(&AppEvent::Term(app_pid)),
        "{:?}",
        app.events()
    );
    Ok(())
}
