//! Host-name upstreams through every address (DESIGN.md §1 F5): with resolution
//! replaced, a name that resolves to `::1` then `127.0.0.1`, and a backend on 127.0.0.1
//! only, works on every request without an error logged per request; a first address
//! that never answers costs one attempt delay (~250 ms), not `connect_timeout`.
//!
//! These run the data plane in-process because the resolver is injected.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidegate_proxy::drain::Shutdown;
use tidegate_proxy::listen::LocalAddr;
use tidegate_proxy::upstream::connect::{Resolve, StaticResolver};
use tidegate_proxy::upstream::Upstream;
use tidegate_proxy::Runtime;
use tidegate_testkit::{blackhole_listener, get, Addr, Backend, Bind, Reply};

struct Proxy {
    addr: Addr,
    upstreams: Vec<Arc<Upstream>>,
    shutdown: Shutdown,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.abort();
    }
}

fn start(toml: &str, resolver: impl Resolve) -> anyhow::Result<Proxy> {
    let config = tidegate_config::load_str(toml, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime =
        Runtime::bind(&config, Arc::new(resolver)).map_err(|e| anyhow::anyhow!("bind: {e:?}"))?;
    let addr = match &runtime.addresses()[0].1 {
        LocalAddr::Tcp(a) => Addr::Tcp(*a),
        LocalAddr::Unix(p) => Addr::Unix(p.clone()),
    };
    let shutdown = Shutdown::new();
    let upstreams = runtime.start(&shutdown);
    Ok(Proxy {
        addr,
        upstreams,
        shutdown,
    })
}

fn config(server: &str, keepalive: usize, connect_timeout: &str) -> String {
    format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["{server}"]
keepalive = {keepalive}
connect_timeout = "{connect_timeout}"
"#
    )
}

/// Collects formatted log lines of the current thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn localhost_resolving_to_v6_then_v4_with_backend_on_v4_only_works_every_time(
) -> anyhow::Result<()> {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let backend = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    let port = backend.addr().tcp().unwrap().port();
    let v6: IpAddr = "::1".parse()?;
    let v4: IpAddr = "127.0.0.1".parse()?;
    let resolver = StaticResolver::new().with("localhost", &[v6, v4]);
    // keepalive = 0: every request opens a new connection, so every request goes
    // through the address choice.
    let proxy = start(&config(&format!("localhost:{port}"), 0, "2s"), resolver)?;
    for i in 0..20 {
        let resp = get(&proxy.addr, "/", "app.test").await?;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(backend.requests().len(), 20);
    let server = &proxy.upstreams[0].servers[0];
    assert_eq!(server.resolved(), Some(SocketAddr::new(v4, port)));

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
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
    let proxy = start(&config("slow.test:80", 32, "5s"), resolver)?;
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
    let proxy = start(&config("gone.test:80", 32, "2s"), resolver)?;
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
