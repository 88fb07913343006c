//! What an operator sees, in-process: the connection registry (client and upstream
//! connections, states, counters, closing one), server admin states (drain, maint,
//! ready), the Prometheus metrics and the access log.

use std::time::{Duration, Instant};

use tidegate_config::{AccessLogTo, Config, LogFormat};
use tidegate_proxy::access_log::AccessLog;
use tidegate_proxy::registry::{ConnProtocol, ConnSnapshot, ConnState};
use tidegate_proxy::side::Side;
use tidegate_proxy::upstream::ServerState;
use tidegate_testkit::{
    connect, get, Addr, Backend, Bind, End, RawConn, Reply, SseThen, TcpBackend,
};

use crate::common::{self, Proxy};

const T: Duration = Duration::from_secs(5);

/// Upstream settings for these tests: a pool that outlives the test.
const POOL: &str = "keepalive_timeout = \"30s\"\n";

fn config(servers: &[&Addr]) -> Config {
    let servers: Vec<String> = servers.iter().map(|a| a.to_config()).collect();
    common::config(&servers, POOL).expect("valid config")
}

/// Polls `f` every 10 ms until it gives `Some`, for at most `within`.
async fn until<R>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<R>,
) -> anyhow::Result<R> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = f() {
            return Ok(r);
        }
        anyhow::ensure!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The registry entry of the client connection `c`.
fn client_entry(proxy: &Proxy, c: &RawConn) -> Option<ConnSnapshot> {
    let me = c.local_addr()?.to_string();
    proxy
        .registry
        .snapshot()
        .into_iter()
        .find(|s| s.side == Side::Client && s.peer == me)
}

fn upstream_entries(proxy: &Proxy) -> Vec<ConnSnapshot> {
    proxy
        .registry
        .snapshot()
        .into_iter()
        .filter(|s| s.side == Side::Upstream)
        .collect()
}

async fn keep_alive_get(c: &mut RawConn, path: &str) -> anyhow::Result<tidegate_testkit::Response> {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
        .await?;
    c.read_response(T).await
}

async fn open_stream(proxy: &Proxy) -> anyhow::Result<RawConn> {
    let mut c = connect(&proxy.addr).await?;
    c.send(b"GET /events HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await?;
    let head = c.read_head(T).await?;
    anyhow::ensure!(head.status == 200, "status {}", head.status);
    Ok(c)
}

// === the registry ===

#[tokio::test]
async fn a_keep_alive_connection_is_listed_idle_with_its_counts_and_a_pooled_upstream(
) -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "hello\n"))?;
    let proxy = common::start(&config(&[app.addr()]))?;
    let mut c = connect(&proxy.addr).await?;
    for _ in 0..2 {
        let r = keep_alive_get(&mut c, "/x").await?;
        assert_eq!(r.status, 200);
    }
    let me = until(T, "client connection idle after 2 requests", || {
        client_entry(&proxy, &c).filter(|s| s.state == ConnState::Idle && s.requests == 2)
    })
    .await?;
    assert_eq!(me.listener, "web");
    assert_eq!(me.protocol, ConnProtocol::Http1);
    assert_eq!(me.local, proxy.addr.tcp().unwrap().to_string());
    assert!(me.bytes_in >= 2 * 30, "{me:?}");
    assert!(me.bytes_out > 2 * "hello\n".len() as u64, "{me:?}");
    assert_eq!(me.upstream, None, "no exchange in flight: {me:?}");
    // One upstream connection, back in the pool, used twice.
    let ups = until(T, "one idle upstream connection", || {
        let ups = upstream_entries(&proxy);
        (ups.len() == 1 && ups[0].state == ConnState::Idle).then_some(ups)
    })
    .await?;
    let up = &ups[0];
    assert_eq!(up.listener, "app");
    assert_eq!(up.peer, app.addr().tcp().unwrap().to_string());
    assert_eq!(up.requests, 2);
    assert!(up.bytes_in > 0 && up.bytes_out > 0, "{up:?}");
    let side = up
        .upstream
        .as_ref()
        .expect("an upstream connection names its server");
    assert_eq!((side.name.as_str(), side.index), ("app", 0));
    assert_eq!(side.server, app.addr().to_config());
    // The connection leaves the registry when it closes.
    let id = me.id;
    drop(c);
    until(T, "closed client connection removed", || {
        proxy.registry.get(id).is_none().then_some(())
    })
    .await
}

#[tokio::test]
async fn an_event_stream_is_listed_streaming_sse_with_its_upstream_side() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::sse(vec!["data: one\n\n".into()], SseThen::Hold)
    })?;
    let proxy = common::start(&config(&[app.addr()]))?;
    let mut c = open_stream(&proxy).await?;
    c.read_until(b"data: one\n\n", T).await?;
    let me = until(T, "client connection streaming", || {
        client_entry(&proxy, &c).filter(|s| s.state == ConnState::Streaming)
    })
    .await?;
    assert_eq!(me.protocol, ConnProtocol::Sse);
    assert_eq!(me.requests, 1);
    assert!(me.bytes_out > 0);
    let side = me.upstream.expect("the upstream side of the stream");
    assert_eq!(side.name, "app");
    assert_eq!(side.server, app.addr().to_config());
    assert_eq!(side.peer, Some(app.addr().tcp().unwrap().to_string()));
    let local = side.local.expect("our address on the upstream socket");
    // The backend saw that very socket.
    let backend_peer = app.connections()[0].peer.clone();
    assert_eq!(local, backend_peer);
    let ups = upstream_entries(&proxy);
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert_eq!(ups[0].state, ConnState::Streaming);
    assert_eq!(ups[0].protocol, ConnProtocol::Sse);
    Ok(())
}

#[tokio::test]
async fn closing_an_idle_client_connection_gives_the_client_eof() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "hello\n"))?;
    let proxy = common::start(&config(&[app.addr()]))?;
    let mut c = connect(&proxy.addr).await?;
    keep_alive_get(&mut c, "/").await?;
    let me = until(T, "client connection idle", || {
        client_entry(&proxy, &c).filter(|s| s.state == ConnState::Idle)
    })
    .await?;
    assert!(proxy.registry.close(me.id));
    let (rest, end) = c.read_to_end(T).await?;
    assert_eq!((rest.len(), end), (0, End::Eof));
    until(T, "closed connection removed", || {
        proxy.registry.get(me.id).is_none().then_some(())
    })
    .await?;
    assert!(!proxy.registry.close(me.id), "already gone");
    Ok(())
}

#[tokio::test]
async fn closing_a_streaming_client_connection_closes_its_upstream_connection() -> anyhow::Result<()>
{
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::sse(vec!["data: one\n\n".into()], SseThen::Hold)
    })?;
    let proxy = common::start(&config(&[app.addr()]))?;
    let mut c = open_stream(&proxy).await?;
    c.read_until(b"data: one\n\n", T).await?;
    let me = until(T, "client connection streaming", || {
        client_entry(&proxy, &c).filter(|s| s.state == ConnState::Streaming)
    })
    .await?;
    assert!(proxy.registry.close(me.id));
    let (_, end) = c.read_to_end(T).await?;
    assert_eq!(end, End::Eof);
    app.wait_for(|b| b.closed_connections() == 1, T).await?;
    until(T, "no connection left", || {
        proxy.registry.is_empty().then_some(())
    })
    .await
}

#[tokio::test]
async fn closing_a_pooled_upstream_connection_closes_it_at_the_backend() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "hello\n"))?;
    let proxy = common::start(&config(&[app.addr()]))?;
    get(&proxy.addr, "/", "app.test").await?;
    let up = until(T, "a pooled connection", || {
        upstream_entries(&proxy)
            .into_iter()
            .find(|u| u.state == ConnState::Idle)
    })
    .await?;
    assert!(proxy.registry.close(up.id));
    app.wait_for(|b| b.closed_connections() == 1, T).await?;
    assert_eq!(proxy.upstreams[0].servers[0].idle_pooled(), 0);
    Ok(())
}

#[tokio::test]
async fn a_tcp_tunnel_is_listed_as_tcp_tunnel_and_can_be_closed() -> anyhow::Result<()> {
    let echo = TcpBackend::echo(Bind::Tcp4)?;
    let toml = format!(
        "[listeners.amqp]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"rabbit\"\n\
         [upstreams.rabbit]\nservers = [\"{}\"]\n",
        echo.addr().to_config()
    );
    let cfg = tidegate_config::load_str(&toml, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = common::start(&cfg)?;
    let mut c = connect(&proxy.addr).await?;
    c.send(b"ping").await?;
    c.read_until(b"ping", T).await?;
    let me = until(T, "tunnel with 4 bytes each way", || {
        client_entry(&proxy, &c).filter(|s| s.bytes_in == 4 && s.bytes_out == 4)
    })
    .await?;
    assert_eq!(me.listener, "amqp");
    assert_eq!(me.protocol, ConnProtocol::Tcp);
    assert_eq!(me.state, ConnState::Tunnel);
    assert_eq!(me.requests, 1);
    let side = me.upstream.clone().expect("the tunnel's upstream side");
    assert_eq!(side.name, "rabbit");
    assert_eq!(side.peer, Some(echo.addr().tcp().unwrap().to_string()));
    let ups = upstream_entries(&proxy);
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert_eq!(
        (
            ups[0].protocol,
            ups[0].state,
            ups[0].bytes_in,
            ups[0].bytes_out
        ),
        (ConnProtocol::Tcp, ConnState::Tunnel, 4, 4)
    );
    assert!(proxy.registry.close(me.id));
    let (_, end) = c.read_to_end(T).await?;
    assert_eq!(end, End::Eof);
    echo.wait_for(|b| b.open() == 0, T).await?;
    until(T, "both ends removed", || {
        proxy.registry.is_empty().then_some(())
    })
    .await
}

// === server admin states ===

/// Two servers answering `/events` with a slow stream of chunks and anything else
/// with their own name.
fn named_backend(name: &'static str) -> anyhow::Result<Backend> {
    Backend::start(Bind::Tcp4, move |req| {
        if req.target == "/events" {
            Reply::chunks(vec![
                (Duration::ZERO, format!("{name}-1;").into_bytes()),
                (
                    Duration::from_millis(400),
                    format!("{name}-2;").into_bytes(),
                ),
                (
                    Duration::from_millis(400),
                    format!("{name}-3;").into_bytes(),
                ),
            ])
        } else {
            Reply::text(200, name)
        }
    })
}

#[tokio::test]
async fn drain_lets_a_stream_finish_and_sends_new_requests_elsewhere() -> anyhow::Result<()> {
    let (a, b) = (named_backend("a")?, named_backend("b")?);
    let proxy = common::start(&config(&[a.addr(), b.addr()]))?;
    let up = proxy.upstreams[0].clone();
    let mut c = open_stream(&proxy).await?;
    let first = c.read_body_some(T).await?.unwrap_or_default();
    let streaming = if first.starts_with(b"a") { 0 } else { 1 };
    let other = 1 - streaming;
    // The stream's server is drained while its stream is in flight.
    assert_eq!(
        up.servers[streaming].set_state(ServerState::Drain),
        ServerState::Ready
    );
    assert_eq!(up.servers[streaming].state(), ServerState::Drain);
    let mut body = first;
    while let Some(part) = c.read_body_some(T).await? {
        body.extend(part);
    }
    let name = if streaming == 0 { "a" } else { "b" };
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{name}-1;{name}-2;{name}-3;"),
        "the drained server's stream finished"
    );
    // New requests all go to the other server.
    let other_name = if other == 0 { "a" } else { "b" };
    for _ in 0..4 {
        let r = get(&proxy.addr, "/", "app.test").await?;
        assert_eq!(r.text(), other_name);
    }
    // Both drained: 503 naming the state.
    up.servers[other].set_state(ServerState::Drain);
    let r = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!(r.status, 503);
    let text = r.text();
    assert!(
        text.contains(&format!("{} drain", a.addr().to_config())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} drain", b.addr().to_config())),
        "{text}"
    );
    // Ready again: back in rotation.
    up.servers[streaming].set_state(ServerState::Ready);
    let r = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!(r.text(), name);
    Ok(())
}

#[tokio::test]
async fn maint_closes_pooled_connections_at_once_and_takes_no_requests() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "hello\n"))?;
    let proxy = common::start(&config(&[app.addr()]))?;
    let server = &proxy.upstreams[0].servers[0];
    get(&proxy.addr, "/", "app.test").await?;
    until(T, "one pooled connection", || {
        (server.idle_pooled() == 1).then_some(())
    })
    .await?;
    let asked = Instant::now();
    server.set_state(ServerState::Maint);
    app.wait_for(|b| b.closed_connections() == 1, T).await?;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(server.idle_pooled(), 0);
    let r = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!(r.status, 503);
    assert!(
        r.text()
            .contains(&format!("{} maint", app.addr().to_config())),
        "{}",
        r.text()
    );
    assert_eq!(
        app.requests().len(),
        1,
        "no request reached a server in maint"
    );
    server.set_state(ServerState::Ready);
    let r = get(&proxy.addr, "/", "app.test").await?;
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));
    Ok(())
}

// === metrics ===

/// The value of the sample `name{labels}` in a Prometheus text exposition (labels in
/// the order they are written).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_connections_pool_use_and_failures() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |req| match req.target.as_str() {
        "/fail" => Reply::text(500, "no\n"),
        "/slow" => Reply::delay(Duration::from_secs(2), Reply::text(200, "late\n")),
        _ => Reply::text(200, "hello\n"),
    })?;
    // A second server with nothing listening: connect refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dead = Addr::Tcp(dead);
    let mut cfg = config(&[app.addr(), &dead]);
    cfg.upstreams[0].balance = tidegate_config::Balance::RoundRobin;
    let proxy = common::start(&cfg)?;
    let mut c = connect(&proxy.addr).await?;
    let mut ok = 0;
    // Round robin over a live and a dead server: the dead one's connects are refused
    // and the request moves to the live one (`retries = 1`).
    for path in ["/a", "/b", "/c", "/fail"] {
        let r = keep_alive_get(&mut c, path).await?;
        if r.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 3);
    // A client that leaves before the response head: class `error`.
    let mut quitter = connect(&proxy.addr).await?;
    quitter
        .send(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await?;
    app.wait_for(|b| b.requests().iter().any(|r| r.target == "/slow"), T)
        .await?;
    quitter.reset()?;
    let text = until(T, "the quitter counted", || {
        let text = proxy.metrics.encode();
        let err = sample(
            &text,
            "tidegate_requests_total",
            r#"listener="web",upstream="app",class="error""#,
        );
        (err == Some(1.0)).then_some(text)
    })
    .await?;
    let req = |class: &str| {
        sample(
            &text,
            "tidegate_requests_total",
            &format!(r#"listener="web",upstream="app",class="{class}""#),
        )
    };
    assert_eq!(req("2xx"), Some(3.0), "{text}");
    assert_eq!(req("5xx"), Some(1.0), "{text}");
    assert_eq!(req("4xx"), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "tidegate_request_duration_seconds_count",
            r#"listener="web",upstream="app""#
        ),
        Some(5.0),
        "{text}"
    );
    let live = app.addr().to_config();
    let down = dead.to_config();
    let server = |family: &str, addr: &str, extra: &str| {
        sample(
            &text,
            family,
            &format!(r#"upstream="app",server="{addr}"{extra}"#),
        )
    };
    assert!(
        server(
            "tidegate_upstream_connect_failures_total",
            &down,
            r#",reason="refused""#
        ) >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        server(
            "tidegate_upstream_connect_failures_total",
            &live,
            r#",reason="refused""#
        ),
        Some(0.0)
    );
    // One upstream connection served every request in turn: opened once, reused four
    // times (then closed with the quitter's unfinished exchange).
    assert_eq!(
        server(
            "tidegate_upstream_checkouts_total",
            &live,
            r#",connection="new""#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        server(
            "tidegate_upstream_checkouts_total",
            &live,
            r#",connection="reused""#
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        server("tidegate_server_requests_total", &live, ""),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        server("tidegate_server_failures_total", &live, ""),
        Some(1.0),
        "{text}"
    );
    assert!(
        server("tidegate_server_failures_total", &down, "") >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        server("tidegate_server_state", &live, r#",state="ready""#),
        Some(1.0)
    );
    assert_eq!(
        server("tidegate_server_state", &live, r#",state="maint""#),
        Some(0.0)
    );
    assert_eq!(
        server("tidegate_server_health", &live, r#",health="unknown""#),
        Some(1.0)
    );
    assert_eq!(server("tidegate_server_ejected", &live, ""), Some(0.0));
    // The keep-alive client is idle now.
    assert_eq!(
        sample(
            &text,
            "tidegate_connections",
            r#"listener="web",state="idle""#
        ),
        Some(1.0),
        "{text}"
    );
    let bytes_in = sample(
        &text,
        "tidegate_bytes_total",
        r#"listener="web",direction="in""#,
    );
    let bytes_out = sample(
        &text,
        "tidegate_bytes_total",
        r#"listener="web",direction="out""#,
    );
    assert!(bytes_in > Some(100.0) && bytes_out > Some(100.0), "{text}");
    assert_eq!(
        sample(&text, "tidegate_access_log_dropped_total", ""),
        Some(0.0)
    );
    // Counters survive the connection's end: its bytes move to the listener's totals.
    drop(c);
    until(T, "the client gone", || {
        (sample(
            &proxy.metrics.encode(),
            "tidegate_connections",
            r#"listener="web",state="idle""#,
        ) == Some(0.0))
        .then_some(())
    })
    .await?;
    let after = proxy.metrics.encode();
    assert!(
        sample(
            &after,
            "tidegate_bytes_total",
            r#"listener="web",direction="in""#
        ) >= bytes_in,
        "{after}"
    );
    Ok(())
}

// === access log ===

async fn logged_requests(format: LogFormat) -> anyhow::Result<(Vec<String>, Addr, Addr)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("access.log");
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "hello\n"))?;
    let log = AccessLog::start(&tidegate_config::AccessLog {
        to: AccessLogTo::File(path.clone()),
        format,
    })?;
    let proxy = common::start_logged(&config(&[app.addr()]), log.clone())?;
    let mut c = connect(&proxy.addr).await?;
    keep_alive_get(&mut c, "/one?x=1").await?;
    keep_alive_get(&mut c, "/two").await?;
    let client = Addr::Tcp(c.local_addr().unwrap());
    let lines = until(T, "two access-log lines", || {
        log.flush(T);
        let text = std::fs::read_to_string(&path).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() == 2).then_some(lines)
    })
    .await?;
    Ok((lines, client, app.addr().clone()))
}

#[tokio::test]
async fn the_access_log_writes_one_text_line_per_request() -> anyhow::Result<()> {
    let (lines, client, app) = logged_requests(LogFormat::Text).await?;
    for (line, path) in lines.iter().zip(["\"/one?x=1\"", "\"/two\""]) {
        for field in [
            "time=".to_owned(),
            " listener=web ".to_owned(),
            format!(" client={client} "),
            " method=GET ".to_owned(),
            " protocol=HTTP/1.1 ".to_owned(),
            format!(" path={path} "),
            " status=200 ".to_owned(),
            " bytes_out=6 ".to_owned(),
            " upstream=app ".to_owned(),
            format!(" upstream_addr={app} "),
            " total_ms=".to_owned(),
            " connect_ms=".to_owned(),
            " head_ms=".to_owned(),
        ] {
            assert!(line.contains(&field), "{field:?} missing in {line}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_access_log_writes_one_json_object_per_request() -> anyhow::Result<()> {
    let (lines, client, app) = logged_requests(LogFormat::Json).await?;
    for (line, path) in lines.iter().zip(["/one?x=1", "/two"]) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        assert_eq!(v["listener"], "web", "{line}");
        assert_eq!(v["client"], client.to_string(), "{line}");
        assert_eq!(v["method"], "GET", "{line}");
        assert_eq!(v["protocol"], "HTTP/1.1", "{line}");
        assert_eq!(v["path"], path, "{line}");
        assert_eq!(v["status"], 200, "{line}");
        assert_eq!(v["bytes_out"], 6, "{line}");
        assert_eq!(v["upstream"], "app", "{line}");
        assert_eq!(v["upstream_addr"], app.to_string(), "{line}");
        for t in ["total_ms", "connect_ms", "head_ms"] {
            assert!(v[t].as_f64().is_some_and(|ms| ms >= 0.0), "{t} in {line}");
        }
        assert!(
            v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
    Ok(())
}

#[test]
fn an_unwritable_access_log_path_fails_the_start() {
    let err = AccessLog::start(&tidegate_config::AccessLog {
        to: AccessLogTo::File("/nonexistent-dir/x/access.log".into()),
        format: LogFormat::Text,
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/nonexistent-dir/x/access.log"), "{text}");
    assert!(text.contains("ENOENT"), "{text}");
}
