//! Host-name upstreams through every address (a host name may resolve to `::1` and
//! `127.0.0.1` while the app listens on one of them): with resolution replaced, a name
//! that resolves to `::1` then `127.0.0.1`, and a backend on 127.0.0.1 only, works on
//! every request without an error logged per request; a first address that never answers
//! costs one attempt delay (~250 ms), not `connect_timeout`.
//!
//! These run the data plane in-process because the resolver is injected.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tidegate_proxy::upstream::connect::StaticResolver;
use tidegate_testkit::{blackhole_listener, get, Addr, Backend, Bind, Reply};

use crate::common::{self, start_with, Logs};

fn config(server: &str, keepalive: usize, connect_timeout: &str) -> tidegate_config::Config {
    common::config(
        &[server.to_owned()],
        &format!("keepalive = {keepalive}\nconnect_timeout = \"{connect_timeout}\""),
    )
    .expect("valid config")
}

#[tokio::test]
async fn localhost_resolving_to_v6_then_v4_with_backend_on_v4_only_works_every_time(
) -> anyhow::Result<()> {
    let logs = Logs::capture();

    let backend = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let port = backend.addr().tcp().unwrap().port();
    let v6: IpAddr = "::1".parse()?;
    let v4: IpAddr = "127.0.0.1".parse()?;
    let resolver = StaticResolver::new().with("localhost", &[v6, v4]);
    // keepalive = 0: every request opens a new connection, so every request goes
    // through the address choice.
    let proxy = start_with(&config(&format!("localhost:{port}"), 0, "2s"), resolver)?;
    for i in 0..20 {
        let resp = get(&proxy.addr, "/", "app.test").await?;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(backend.requests().len(), 20);
    let server = &proxy.upstreams[0].servers[0];
    assert_eq!(server.resolved(), Some(SocketAddr::new(v4, port)));

    let text = logs.text();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(bad.is_empty(), "errors logged: {bad:#?}");
    // The address in use is shown once, when it is first chosen.
    let shown = text
        .lines()
        .filter(|l| l.contains("now connects to this address"))
        .count();
    assert_eq!(shown, 1, "{text}");
    Ok(())
}

#[tokio::test]
async fn first_address_that_never_answers_costs_one_attempt_delay() -> anyhow::Result<()> {
    let backend = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let hole = blackhole_listener()?;
    let (Addr::Tcp(hole_addr), Addr::Tcp(good)) = (hole.addr(), backend.addr().clone()) else {
        anyhow::bail!("expected TCP addresses");
    };
    let resolver = StaticResolver::new().with_addrs("slow.test", &[hole_addr, good]);
    let proxy = start_with(&config("slow.test:80", 32, "5s"), resolver)?;
    let started = Instant::now();
    let resp = get(&proxy.addr, "/", "app.test").await?;
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        took >= Duration::from_millis(200),
        "took {took:?}: the blackhole can't have answered"
    );
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}: should be ~250 ms, far below connect_timeout (5 s)"
    );
    Ok(())
}

#[tokio::test]
async fn every_address_refused_gives_502_naming_each() -> anyhow::Result<()> {
    // Ports with nothing listening.
    let dead1 = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dead2 = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let resolver = StaticResolver::new().with_addrs("gone.test", &[dead1, dead2]);
    let proxy = start_with(&config("gone.test:80", 32, "2s"), resolver)?;
    let resp = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!(resp.status, 502);
    let body = resp.text();
    assert!(body.contains("upstream app (gone.test:80)"), "{body}");
    assert!(
        body.contains(&dead1.to_string()) && body.contains(&dead2.to_string()),
        "{body}"
    );
    assert!(body.contains("connection refused (ECONNREFUSED)"), "{body}");
    Ok(())
}
