//! End-to-end upstream health (`[upstreams.NAME.health]`): the real binary checks its
//! servers, marks failing ones down with the reason logged, tries them anyway when none
//! is left (panic mode), and still exits promptly on SIGTERM with checks running.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tidegate_testkit::{get, Addr, Backend, Bind, Reply, Tidegate};

/// A generous functional bound for anything that should happen "soon".
const T: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// Upstream `app` with these servers and HTTP checks of `/health` every 100 ms.
fn config(servers: &[String]) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
workers = 2

[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = [{list}]
connect_timeout = "5s"

[upstreams.app.health]
path = "/health"
interval = "100ms"
timeout = "300ms"
rise = 2
fall = 2
"#
    )
}

/// Waits until `n` log lines contain `needle`.
async fn wait_lines(tg: &Tidegate, needle: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + T;
    loop {
        let lines: Vec<String> = tg
            .logs()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect();
        if lines.len() >= n {
            return Ok(lines);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{n} log lines with {needle:?} not within {T:?}; logs: {:#?}",
                tg.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_server_down_is_tried_anyway_in_panic_mode() -> anyhow::Result<()> {
    let sick = Backend::start(Bind::Unix, |r| {
        if r.target == "/health" {
            Reply::text(503, "not ready")
        } else {
            Reply::text(200, "app")
        }
    })?;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let sick_addr = sick.addr().to_config();
    let tg = Tidegate::start(bin(), &config(&[sick_addr.clone(), dead.clone()])).await?;

    let down = wait_lines(&tg, "server is down", 2).await?;
    assert!(
        down.iter()
            .any(|l| l.contains(&sick_addr) && l.contains("GET /health answered 503")),
        "{down:#?}"
    );
    assert!(
        down.iter()
            .any(|l| l.contains(&dead) && l.contains("connection refused (ECONNREFUSED)")),
        "{down:#?}"
    );

    // Both down: rather than a 503 for everyone, both are tried (the refused one moves
    // to the other by `retries`), and the sick-by-its-checks server still answers.
    for i in 0..4 {
        let resp = get(&tg.addr("web")?, &format!("/n{i}"), "app.test").await?;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.text(), "app");
    }
    let panic = wait_lines(&tg, "panic mode", 1).await?;
    assert!(
        panic[0].contains("WARN") && panic[0].contains(&format!("{sick_addr} down (")),
        "{panic:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_promptly_while_checks_run() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let app_addr: &Addr = app.addr();
    let mut tg = Tidegate::start(bin(), &config(&[app_addr.to_config()])).await?;
    wait_lines(&tg, "server is up", 1).await?;
    let resp = get(&tg.addr("web")?, "/", "app.test").await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let started = Instant::now();
    tg.signal(Signal::SIGTERM)?;
    let status = tg.wait_exit(T).await?;
    assert!(status.success(), "{status:?}; logs: {:#?}", tg.logs());
    // Nothing in flight: the drain ends at once, checker tasks do not hold it open.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}
