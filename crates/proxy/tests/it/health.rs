//! Upstream health, in-process: active HTTP and connect checks take a failing server out
//! of rotation and bring it back; with every server in drain or maint a request gets
//! 503 at once, naming each server's state, while with every server down or ejected
//! they are tried anyway (panic mode); passive ejection stops trying a server that
//! keeps failing, for a cool-down, at most `max_ejected_percent` of them.
//!
//! In-process because the tests read each server's state directly (and set its passive
//! limits). The binary's own tests are `crates/tidegate/tests/it/health.rs` and, for
//! what passive ejection counts, `crates/tidegate/tests/it/passive.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate_config::Config;
use tidegate_proxy::upstream::health::{HealthState, PassiveLimits};
use tidegate_proxy::upstream::{ServerState, Upstream};
use tidegate_testkit::{blackhole_listener, get, Backend, Bind, Reply};

use crate::common::{self, config, Logs, Proxy};

/// How long any state change may take to be seen: many check intervals of 100 ms.
const WITHIN: Duration = Duration::from_secs(5);

/// `[upstreams.app.health]` with checks every 100 ms; goes last in the upstream's keys.
fn checks(path: Option<&str>, rise: u32, fall: u32) -> String {
    let path = path.map_or_else(String::new, |p| format!("path = \"{p}\"\n"));
    format!(
        "[upstreams.app.health]\n{path}interval = \"100ms\"\ntimeout = \"300ms\"\nrise = {rise}\nfall = {fall}\n"
    )
}

fn start(config: &Config, passive: Option<PassiveLimits>) -> anyhow::Result<Proxy> {
    let proxy = common::start(config)?;
    if let Some(limits) = passive {
        for up in &proxy.upstreams {
            for s in &up.servers {
                s.health.set_passive_limits(limits);
            }
        }
    }
    Ok(proxy)
}

/// A port on 127.0.0.1 with nothing listening (bound, noted, closed).
fn dead_port() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

/// Polls `cond` every 20 ms until it holds, or fails after `within` with `what`.
async fn wait_until(
    what: &str,
    within: Duration,
    cond: impl Fn() -> bool,
    state: impl Fn() -> String,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {within:?}; now: {}", state());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn states(up: &Upstream) -> String {
    up.servers
        .iter()
        .map(|s| format!("{} {}", s.addr, s.health.describe()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Requests that were not health checks.
fn traffic(b: &Backend) -> usize {
    b.requests()
        .iter()
        .filter(|r| r.target != "/health")
        .count()
}

#[tokio::test]
async fn server_failing_its_http_check_goes_down_gets_no_traffic_and_comes_back_up(
) -> anyhow::Result<()> {
    let logs = Logs::capture();
    let good = Backend::start(Bind::Tcp4, |_| Reply::text(200, "good"))?;
    let sick = Arc::new(AtomicBool::new(true));
    let flag = sick.clone();
    let flaky = Backend::start(Bind::Tcp4, move |r| {
        if r.target == "/health" && flag.load(Ordering::SeqCst) {
            Reply::text(503, "sick")
        } else {
            Reply::text(200, "flaky")
        }
    })?;
    let servers = [good.addr().to_config(), flaky.addr().to_config()];
    let config = config(&servers, &checks(Some("/health"), 2, 3))?;
    let proxy = start(&config, None)?;
    let up = proxy.upstreams[0].clone();

    wait_until(
        "the failing server goes down",
        WITHIN,
        || up.servers[1].health.state() == HealthState::Down,
        || states(&up),
    )
    .await?;
    assert_eq!(up.servers[0].health.state(), HealthState::Up);
    assert_eq!(
        up.servers[1].health.describe(),
        "down (3 failed checks: GET /health answered 503)"
    );
    // Exactly `fall` checks took it down (more may have run since).
    let checks = flaky.requests();
    assert!(checks.len() >= 3, "{}", flaky.summary());
    let first = &checks[0];
    assert_eq!(first.request_line(), "GET /health HTTP/1.1");
    assert_eq!(first.header("host"), Some(servers[1].as_str()));
    assert_eq!(first.header("connection"), Some("close"));
    // A fresh connection per check: never the pool.
    let conns: std::collections::HashSet<u64> = checks.iter().map(|r| r.conn_id).collect();
    assert_eq!(conns.len(), checks.len(), "{}", flaky.summary());

    for i in 0..10 {
        let resp = get(&proxy.addr, "/", "app.test").await?;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.text(), "good", "request {i}");
    }
    assert_eq!(traffic(&flaky), 0, "{}", flaky.summary());
    let down = logs.lines_with("server is down");
    assert_eq!(down.len(), 1, "{down:#?}");
    assert!(down[0].contains("WARN"), "{}", down[0]);
    assert!(down[0].contains("GET /health answered 503"), "{}", down[0]);

    sick.store(false, Ordering::SeqCst);
    wait_until(
        "the recovered server comes back up",
        WITHIN,
        || up.servers[1].health.state() == HealthState::Up,
        || states(&up),
    )
    .await?;
    for _ in 0..10 {
        let resp = get(&proxy.addr, "/", "app.test").await?;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert!(traffic(&flaky) > 0, "{}", flaky.summary());
    assert!(traffic(&good) > 10, "{}", good.summary());
    let back = logs.lines_with("server is up");
    // The good server's unknown → up, then the flaky one's down → up.
    assert_eq!(back.len(), 2, "{back:#?}");
    assert!(back[1].contains("from=down"), "{}", back[1]);
    Ok(())
}

#[tokio::test]
async fn connect_check_marks_a_dead_port_down_and_a_live_one_up() -> anyhow::Result<()> {
    let live = Backend::start(Bind::Tcp4, |_| Reply::text(200, "live"))?;
    let dead = dead_port()?;
    let servers = [dead.clone(), live.addr().to_config()];
    let config = config(&servers, &checks(None, 1, 2))?;
    let proxy = start(&config, None)?;
    let up = proxy.upstreams[0].clone();
    wait_until(
        "dead port down, live port up",
        WITHIN,
        || {
            up.servers[0].health.state() == HealthState::Down
                && up.servers[1].health.state() == HealthState::Up
        },
        || states(&up),
    )
    .await?;
    let text = up.servers[0].health.describe();
    assert!(
        text.starts_with("down (") && text.contains("connection refused (ECONNREFUSED)"),
        "{text}"
    );
    // A connect check sends nothing.
    assert!(live.requests().is_empty(), "{}", live.summary());
    assert!(live.accepts() >= 1, "{}", live.summary());
    Ok(())
}

#[tokio::test]
async fn every_server_in_drain_or_maint_answers_503_at_once_naming_each_state() -> anyhow::Result<()>
{
    let hole = blackhole_listener()?;
    let dead = dead_port()?;
    let servers = [hole.addr().to_config(), dead.clone()];
    // A long connect_timeout: the 503 must not wait for it.
    let config = config(&servers, "connect_timeout = \"5s\"\n")?;
    let proxy = start(&config, None)?;
    let up = proxy.upstreams[0].clone();
    up.servers[0].set_state(ServerState::Maint);
    up.servers[1].set_state(ServerState::Drain);
    let started = Instant::now();
    let resp = get(&proxy.addr, "/", "app.test").await?;
    let took = started.elapsed();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let body = resp.text();
    assert!(
        body.contains("upstream app")
            && body.contains(&format!("{} maint", servers[0]))
            && body.contains(&format!("{dead} drain")),
        "{body}"
    );
    assert!(!up.in_panic(), "operator states are not panic mode");
    Ok(())
}

#[tokio::test]
async fn every_server_down_is_tried_anyway_but_never_one_in_maint() -> anyhow::Result<()> {
    let live = Backend::start(Bind::Tcp4, |_| Reply::text(200, "live"))?;
    let dead = dead_port()?;
    let servers = [dead.clone(), live.addr().to_config()];
    let config = config(
        &servers,
        &format!(
            "connect_timeout = \"5s\"\nretries = 0\n{}",
            checks(Some("/health"), 1, 1)
        ),
    )?;
    let proxy = start(&config, None)?;
    let up = proxy.upstreams[0].clone();
    // Checks: the dead server goes down; the live one (which answers any path) up.
    wait_until(
        "the dead server down",
        WITHIN,
        || up.servers[0].health.state() == HealthState::Down,
        || states(&up),
    )
    .await?;
    // One server left: no panic.
    assert!(!up.in_panic(), "{}", states(&up));
    for _ in 0..4 {
        assert_eq!(get(&proxy.addr, "/", "app.test").await?.status, 200);
    }
    assert_eq!(up.panic_requests(), 0);
    // The live one in maint: only a down server is left, and it is tried anyway.
    up.servers[1].set_state(ServerState::Maint);
    assert!(up.in_panic(), "{}", states(&up));
    let resp = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!(
        resp.status,
        502,
        "connect tried and refused: {}",
        resp.text()
    );
    assert_eq!(up.panic_requests(), 1);
    let served = live.requests().iter().filter(|r| r.target == "/").count();
    assert_eq!(served, 4, "maint is never picked");
    Ok(())
}

#[tokio::test]
async fn refusing_server_is_ejected_after_three_failures_and_not_tried_again() -> anyhow::Result<()>
{
    let logs = Logs::capture();
    let live = Backend::start(Bind::Tcp4, |_| Reply::text(200, "live"))?;
    let dead = dead_port()?;
    // No [health]: passive ejection alone. `retries` (default 1) moves each refused
    // request to the live server, so clients see only 200s.
    let servers = [dead.clone(), live.addr().to_config()];
    let proxy = start(&config(&servers, "")?, None)?;
    for i in 0..20 {
        let resp = get(&proxy.addr, "/", "app.test").await?;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(live.requests().len(), 20);
    let tries = logs.lines_with("connect failed; trying another server");
    assert_eq!(tries.len(), 3, "{tries:#?}");
    let ejected = logs.lines_with("server ejected");
    assert_eq!(ejected.len(), 1, "{ejected:#?}");
    assert!(ejected[0].contains("WARN"), "{}", ejected[0]);
    assert!(
        ejected[0].contains("3 consecutive connect failures") && ejected[0].contains(&dead),
        "{}",
        ejected[0]
    );
    let server = &proxy.upstreams[0].servers[0];
    let text = server.health.describe();
    assert!(
        text.starts_with("ejected for ") && text.ends_with("(3 consecutive connect failures)"),
        "{text}"
    );
    let snap = server.health.snapshot();
    assert_eq!(snap.state, HealthState::Unknown, "no active checks");
    assert!(!snap.available && snap.ejected_until.is_some());
    assert_eq!(snap.ejections, 1);
    Ok(())
}

#[tokio::test]
async fn an_ejected_lone_server_is_still_tried_and_used_once_it_is_back() -> anyhow::Result<()> {
    let dead = dead_port()?;
    let config = config(std::slice::from_ref(&dead), "retries = 0\nkeepalive = 0\n")?;
    let limits = PassiveLimits {
        fails: 3,
        cooldown: Duration::from_secs(30),
        ..PassiveLimits::default()
    };
    let proxy = start(&config, Some(limits))?;
    let up = proxy.upstreams[0].clone();
    for i in 0..3 {
        let resp = get(&proxy.addr, "/", "app.test").await?;
        assert_eq!(resp.status, 502, "request {i}: {}", resp.text());
    }
    assert!(
        up.servers[0].health.ejected_until().is_some(),
        "{}",
        states(&up)
    );
    assert!(up.in_panic());
    // Ejected, and the only server: tried anyway (502 = a connect was attempted).
    let resp = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(up.panic_requests(), 1);
    // It comes back: the very next request uses it, 30 s before its cool-down ends.
    let back = tokio::net::TcpListener::bind(&dead).await?;
    let serve = tokio::spawn(async move {
        while let Ok((mut s, _)) = back.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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
    let resp = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "back");
    serve.abort();
    Ok(())
}

#[tokio::test]
async fn passive_ejection_holds_out_at_most_max_ejected_percent() -> anyhow::Result<()> {
    let live = Backend::start(Bind::Tcp4, |_| Reply::text(200, "live"))?;
    let (dead1, dead2) = (dead_port()?, dead_port()?);
    // Three servers at 50 %: at most one is held out.
    let servers = [dead1.clone(), dead2.clone(), live.addr().to_config()];
    let config = config(
        &servers,
        "retries = 0\n[upstreams.app.passive]\nmax_ejected_percent = 50\n",
    )?;
    let limits = PassiveLimits {
        fails: 1,
        cooldown: Duration::from_secs(30),
        ..PassiveLimits::default()
    };
    let proxy = start(&config, Some(limits))?;
    let up = proxy.upstreams[0].clone();
    assert_eq!(up.max_ejected(), 1);
    for _ in 0..12 {
        get(&proxy.addr, "/", "app.test").await?;
    }
    let ejected: Vec<bool> = up
        .servers
        .iter()
        .map(|s| s.health.ejected_until().is_some())
        .collect();
    assert!(
        ejected[0] && ejected[1],
        "both dead ones failed once: {}",
        states(&up)
    );
    // The first ejected stays out; the second, over the cap, keeps getting requests.
    let (first, second) =
        if up.servers[0].health.ejected_until() <= up.servers[1].health.ejected_until() {
            (0, 1)
        } else {
            (1, 0)
        };
    assert_eq!(up.servers[first].requests(), 1, "{}", states(&up));
    assert!(up.servers[second].requests() >= 3, "{}", states(&up));
    assert!(!up.in_panic());
    Ok(())
}

#[tokio::test]
async fn checks_stop_when_draining_starts() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let config = config(&[app.addr().to_config()], &checks(Some("/health"), 1, 1))?;
    let proxy = start(&config, None)?;
    app.wait_for(|b| b.requests().len() >= 2, WITHIN).await?;
    proxy.shutdown.drain();
    // A check in flight when the drain started may still land; then nothing more.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after_drain = app.requests().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.requests().len(), after_drain, "{}", app.summary());
    Ok(())
}

#[tokio::test]
async fn http_check_reaches_a_unix_socket_server_with_host_localhost() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Unix, |_| Reply::text(204, ""))?;
    let config = config(&[app.addr().to_config()], &checks(Some("/health"), 1, 1))?;
    let proxy = start(&config, None)?;
    let up = proxy.upstreams[0].clone();
    wait_until(
        "the Unix socket server is up",
        WITHIN,
        || up.servers[0].health.state() == HealthState::Up,
        || states(&up),
    )
    .await?;
    let checks = app.requests();
    assert_eq!(checks[0].request_line(), "GET /health HTTP/1.1");
    assert_eq!(checks[0].header("host"), Some("localhost"));
    Ok(())
}
