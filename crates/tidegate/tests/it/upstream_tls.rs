//! Upstreams over TLS and HTTP/2 against the built binary: a TLS backend verified with a
//! private CA (`tls = { ca, server_name }`), each verification failure (unknown issuer,
//! name mismatch, expired) a 502 that names the upstream, the server and the reason, `insecure_skip_verify` (and `check`'s
//! warning), `tls = true` (system roots) against a private CA; `protocol = "h2"` over
//! TCP and Unix sockets (prior knowledge) and over TLS (ALPN), streams shared up to the
//! server's limit, trailers to an HTTP/1.1 client, a GOAWAY, a reset stream, and a
//! client gone mid-response resetting the upstream stream, request trailers, and
//! active health checks over TLS and HTTP/2.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use tidegate_testkit::tls::TestCa;
use tidegate_testkit::{connect, get, Addr, Bind, HyperBackend, HyperOptions, Tidegate};

const T: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

fn listener(routes: &[(&str, &str)]) -> String {
    let mut out = String::from("[listeners.web]\nlisten = [\"127.0.0.1:0\"]\n");
    for (path, upstream) in routes {
        out.push_str(&format!(
            "\n[[listeners.web.routes]]\npath = \"{path}\"\nupstream = \"{upstream}\"\n"
        ));
    }
    out
}

fn upstream(name: &str, server: &Addr, extra: &str) -> String {
    format!(
        "\n[upstreams.{name}]\nservers = [\"{}\"]\nretries = 0\n{extra}\n",
        server.to_config()
    )
}

#[tokio::test]
async fn tls_upstreams_verify_with_a_private_ca_and_each_failure_is_a_502_naming_its_reason(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    let other_dir = tempfile::tempdir()?;
    TestCa::named("another test CA")?.write_ca(other_dir.path())?;
    let backend = HyperBackend::start(
        Bind::Tcp4,
        HyperOptions {
            tls: Some(ca.server_config(&["backend.test"])?),
            ..HyperOptions::default()
        },
    )?;
    let expired = HyperBackend::start(
        Bind::Tcp4,
        HyperOptions {
            tls: Some(ca.server_config_until(&["backend.test"], Some((2020, 1, 1)))?),
            ..HyperOptions::default()
        },
    )?;
    let ca_file = dir.path().join("ca.pem");
    let other_ca = other_dir.path().join("ca.pem");
    let b = backend.addr();
    let mut config = listener(&[
        ("/expired", "expired"),
        ("/good", "good"),
        ("/wrongca", "wrongca"),
        ("/wrongname", "wrongname"),
        ("/insecure", "insecure"),
        ("/system", "system"),
    ]);
    config += &upstream(
        "good",
        b,
        &format!(
            "tls = {{ ca = \"{}\", server_name = \"backend.test\" }}",
            ca_file.display()
        ),
    );
    config += &upstream(
        "wrongca",
        b,
        &format!(
            "tls = {{ ca = \"{}\", server_name = \"backend.test\" }}",
            other_ca.display()
        ),
    );
    config += &upstream(
        "wrongname",
        b,
        &format!(
            "tls = {{ ca = \"{}\", server_name = \"other.test\" }}",
            ca_file.display()
        ),
    );
    config += &upstream(
        "expired",
        expired.addr(),
        &format!(
            "tls = {{ ca = \"{}\", server_name = \"backend.test\" }}",
            ca_file.display()
        ),
    );
    config += &upstream("insecure", b, "tls = { insecure_skip_verify = true }");
    config += &upstream("system", b, "tls = true");

    let checked = Tidegate::check(bin(), &config).await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    ensure!(checked.status.success(), "check refused: {said}");
    ensure!(
        said.contains("upstreams.insecure.tls.insecure_skip_verify")
            && said.contains("not verified"),
        "check did not warn about insecure_skip_verify: {said}"
    );

    let tg = Tidegate::start_in(dir.path(), bin(), &config).await?;
    let web = tg.addr("web")?;
    for path in ["/good", "/insecure"] {
        let r = get(&web, path, "app.test").await?;
        ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
        ensure!(r.text().starts_with("HTTP/1.1 "), "{path}: {}", r.text());
    }
    // Two requests on one pooled TLS connection.
    let again = get(&web, "/good", "app.test").await?;
    ensure!(again.status == 200, "{}", again.text());
    for (path, name, reason) in [
        ("/wrongca", "wrongca", "unknown issuer"),
        ("/wrongname", "wrongname", "name mismatch"),
        ("/system", "system", "unknown issuer"),
        ("/expired", "expired", "has expired"),
    ] {
        let server = if name == "expired" { expired.addr() } else { b }.to_config();
        let r = get(&web, path, "app.test").await?;
        let body = r.text();
        ensure!(r.status == 502, "{path}: {} {body}", r.status);
        ensure!(
            body.contains(&format!("upstream {name} ({server})")) && body.contains(reason),
            "{path}: the 502 does not name the upstream, server and {reason:?}: {body}"
        );
    }
    let metrics = crate::admin::tidegate(&["ctl", "metrics"], tg.dir()).await?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    ensure!(
        metrics
            .lines()
            .any(|l| l.contains("upstream_connect_failures")
                && l.contains("upstream=\"wrongca\"")
                && l.contains("reason=\"tls\"")
                && l.ends_with(" 1")),
        "the TLS failure is not counted as the server's connect failure:\n{metrics}"
    );
    // The good upstream's three requests: the second and third reused its connection.
    let good = backend
        .requests()
        .iter()
        .filter(|r| r.uri.path() == "/good")
        .map(|r| r.conn)
        .collect::<Vec<_>>();
    ensure!(
        good.len() == 2 && good[0] == good[1],
        "pooled TLS connection not reused: {good:?}"
    );
    Ok(())
}

/// tidegate with one route to `app`, an h2 upstream on `server`; and its listener's
/// address.
async fn through_h2(server: &Addr) -> anyhow::Result<(Tidegate, Addr)> {
    let config = listener(&[("/", "app")]) + &upstream("app", server, "protocol = \"h2\"");
    let tg = Tidegate::start(bin(), &config).await?;
    let web = tg.addr("web")?;
    Ok((tg, web))
}

fn h2_backend(
    bind: Bind,
    streams: Option<u32>,
    goaway_after: Option<usize>,
) -> anyhow::Result<HyperBackend> {
    HyperBackend::start(
        bind,
        HyperOptions {
            h2: true,
            max_concurrent_streams: streams,
            goaway_after,
            ..HyperOptions::default()
        },
    )
}

#[tokio::test]
async fn h2c_upstreams_over_tcp_and_unix_get_http2_requests_with_authority_from_host(
) -> anyhow::Result<()> {
    for bind in [Bind::Tcp4, Bind::Unix] {
        let backend = h2_backend(bind, None, None)?;
        let config =
            listener(&[("/", "app")]) + &upstream("app", backend.addr(), "protocol = \"h2\"");
        let tg = Tidegate::start(bin(), &config).await?;
        let web = tg.addr("web")?;
        for _ in 0..2 {
            let r = get(&web, "/x?y=1", "app.test").await?;
            ensure!(r.status == 200, "{bind:?}: {} {}", r.status, r.text());
            ensure!(
                r.text().starts_with("HTTP/2.0 conn=1 /x"),
                "{bind:?}: {}",
                r.text()
            );
        }
        let seen = backend.requests();
        ensure!(seen.len() == 2 && seen.iter().all(|r| r.version == http::Version::HTTP_2));
        let r = &seen[0];
        ensure!(
            r.uri.authority().map(|a| a.as_str()) == Some("app.test")
                && r.uri.scheme_str() == Some("http")
                && r.uri.path_and_query().map(|p| p.as_str()) == Some("/x?y=1"),
            "{bind:?}: {:?}",
            r.uri
        );
        ensure!(
            !r.headers.contains_key("connection") && !r.headers.contains_key("keep-alive"),
            "{bind:?}: connection-specific fields reached an HTTP/2 server: {:?}",
            r.headers
        );
        ensure!(
            backend.connections() == 1,
            "{bind:?}: one shared connection"
        );
        // The registry shows it as h2.
        let conns = crate::admin::tidegate(&["ctl", "--json", "conns"], tg.dir()).await?;
        let conns = String::from_utf8_lossy(&conns.stdout).into_owned();
        ensure!(
            conns.contains("\"h2\""),
            "{bind:?}: no h2 upstream connection: {conns}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_h2_requests_share_connections_up_to_the_servers_stream_limit(
) -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, Some(2), None)?;
    let (_tg, web) = through_h2(backend.addr()).await?;
    // A first request opens the connection and learns the server's limit (2).
    ensure!(get(&web, "/", "app.test").await?.status == 200);
    let slow = (0..4).map(|_| {
        let web = web.clone();
        tokio::spawn(async move { get(&web, "/slow/600", "app.test").await })
    });
    for r in futures_util::future::join_all(slow).await {
        let r = r??;
        ensure!(
            r.status == 200 && r.text() == "slow",
            "{} {}",
            r.status,
            r.text()
        );
    }
    // 4 at once, 2 a connection: ceil(4 / 2) = 2 connections, the first one included.
    ensure!(
        backend.connections() == 2,
        "{} connections for 4 concurrent requests at 2 streams each",
        backend.connections()
    );
    Ok(())
}

#[tokio::test]
async fn response_trailers_from_an_h2_upstream_reach_an_http1_client_that_asked(
) -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, None, None)?;
    let (_tg, web) = through_h2(backend.addr()).await?;
    let mut c = connect(&web).await?;
    c.send(b"GET /trailers HTTP/1.1\r\nHost: app.test\r\nTE: trailers\r\n\r\n")
        .await?;
    let head = c.read_until(b"\r\n\r\n", T).await?;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    ensure!(
        head.contains("transfer-encoding: chunked"),
        "not chunked: {head}"
    );
    let rest = c.read_until(b"\r\n0\r\n", T).await?;
    ensure!(String::from_utf8_lossy(&rest).contains("hello"));
    let trailers = c.read_until(b"\r\n\r\n", T).await?;
    let trailers = String::from_utf8_lossy(&trailers).to_ascii_lowercase();
    ensure!(
        trailers.contains("grpc-status: 0") && trailers.contains("grpc-message: ok"),
        "trailers: {trailers:?}"
    );
    let seen = backend.requests();
    ensure!(
        seen[0].headers.get("te").map(|v| v.as_bytes()) == Some(b"trailers"),
        "TE: trailers not passed on: {:?}",
        seen[0].headers
    );
    Ok(())
}

#[tokio::test]
async fn h2_over_tls_is_negotiated_by_alpn_and_a_server_without_h2_is_a_502() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    let ca_file = dir.path().join("ca.pem");
    let h2 = HyperBackend::start(
        Bind::Tcp4,
        HyperOptions {
            tls: Some(ca.server_config(&["backend.test"])?),
            h2: true,
            ..HyperOptions::default()
        },
    )?;
    let h1 = HyperBackend::start(
        Bind::Tcp4,
        HyperOptions {
            tls: Some(ca.server_config(&["backend.test"])?),
            ..HyperOptions::default()
        },
    )?;
    let tls = format!(
        "protocol = \"h2\"\ntls = {{ ca = \"{}\", server_name = \"backend.test\" }}",
        ca_file.display()
    );
    let config = listener(&[("/a", "a"), ("/b", "b")])
        + &upstream("a", h2.addr(), &tls)
        + &upstream("b", h1.addr(), &tls);
    let tg = Tidegate::start(bin(), &config).await?;
    let web = tg.addr("web")?;
    let r = get(&web, "/a", "app.test").await?;
    ensure!(r.status == 200, "{} {}", r.status, r.text());
    ensure!(r.text().starts_with("HTTP/2.0"), "{}", r.text());
    let seen = h2.requests();
    ensure!(seen[0].version == http::Version::HTTP_2 && seen[0].uri.scheme_str() == Some("https"));
    let r = get(&web, "/b", "app.test").await?;
    ensure!(r.status == 502, "{} {}", r.status, r.text());
    ensure!(
        r.text().contains("upstream b (") && r.text().contains("HTTP/2"),
        "{}",
        r.text()
    );
    Ok(())
}

#[tokio::test]
async fn after_a_goaway_new_requests_go_to_a_new_connection_and_none_fails() -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, None, Some(2))?;
    let (_tg, web) = through_h2(backend.addr()).await?;
    for i in 0..6 {
        let r = get(&web, "/", "app.test").await?;
        ensure!(r.status == 200, "request {i}: {} {}", r.status, r.text());
    }
    let burst = (0..6).map(|_| {
        let web = web.clone();
        tokio::spawn(async move { get(&web, "/slow/50", "app.test").await })
    });
    for r in futures_util::future::join_all(burst).await {
        let r = r??;
        ensure!(r.status == 200, "{} {}", r.status, r.text());
    }
    ensure!(
        backend.connections() >= 3,
        "each connection sends GOAWAY after 2 requests: {} connections",
        backend.connections()
    );
    Ok(())
}

#[tokio::test]
async fn an_upstream_stream_reset_ends_the_clients_response_and_a_gone_client_resets_the_stream(
) -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, None, None)?;
    let (_tg, web) = through_h2(backend.addr()).await?;
    // The upstream resets the stream mid-body: the client's response ends (not hangs)
    // without its last chunk.
    let mut c = connect(&web).await?;
    c.send(b"GET /reset HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await?;
    let (raw, _end) = c.read_to_end(T).await?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    ensure!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    ensure!(
        !raw.ends_with("0\r\n\r\n"),
        "a reset stream passed off as complete: {raw:?}"
    );
    // The client goes away mid-response: the upstream stream is reset (the backend's
    // body is dropped before its end), and the shared connection lives on.
    let mut c = connect(&web).await?;
    c.send(b"GET /hang HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await?;
    c.read_until(b"start\n", T).await?;
    drop(c);
    backend
        .wait_for("the hanging stream reset", T, |b| b.cancelled() >= 1)
        .await?;
    let r = get(&web, "/after", "app.test").await?;
    ensure!(r.status == 200, "{}", r.text());
    ensure!(
        backend.connections() == 1,
        "the connection was closed, not the stream"
    );
    Ok(())
}

#[tokio::test]
async fn request_trailers_of_a_chunked_http1_request_reach_an_h2_upstream() -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, None, None)?;
    let (_tg, web) = through_h2(backend.addr()).await?;
    let mut c = connect(&web).await?;
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
          Trailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
    )
    .await?;
    let r = c.read_response(T).await?;
    ensure!(r.status == 200, "{} {}", r.status, r.text());
    let seen = backend.requests();
    ensure!(seen[0].version == http::Version::HTTP_2);
    ensure!(&seen[0].body[..] == b"hello", "{:?}", seen[0].body);
    ensure!(
        seen[0]
            .trailers
            .as_ref()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.as_bytes())
            == Some(b"42"),
        "request trailers lost: {:?}",
        seen[0].trailers
    );
    Ok(())
}

#[tokio::test]
async fn active_health_checks_use_tls_and_h2_when_the_upstream_does() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    let other_dir = tempfile::tempdir()?;
    TestCa::named("another test CA")?.write_ca(other_dir.path())?;
    let backend = HyperBackend::start(
        Bind::Tcp4,
        HyperOptions {
            tls: Some(ca.server_config(&["backend.test"])?),
            h2: true,
            ..HyperOptions::default()
        },
    )?;
    let health = "\n[upstreams.{name}.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";
    let tls = |ca: &Path| {
        format!(
            "protocol = \"h2\"\ntls = {{ ca = \"{}\", server_name = \"backend.test\" }}",
            ca.display()
        )
    };
    let config = listener(&[("/good", "good"), ("/bad", "bad")])
        + &upstream("good", backend.addr(), &tls(&dir.path().join("ca.pem")))
        + &health.replace("{name}", "good")
        + &upstream(
            "bad",
            backend.addr(),
            &tls(&other_dir.path().join("ca.pem")),
        )
        + &health.replace("{name}", "bad");
    let tg = Tidegate::start(bin(), &config).await?;
    let up = tg.wait_log("server is up", T).await?;
    ensure!(up.contains("good"), "{up}");
    let down = tg.wait_log("server is down", T).await?;
    ensure!(
        down.contains("bad") && down.contains("unknown issuer"),
        "the check's reason is not told: {down}"
    );
    backend
        .wait_for("an HTTP/2 check", T, |b| {
            b.requests()
                .iter()
                .any(|r| r.uri.path() == "/healthz" && r.version == http::Version::HTTP_2)
        })
        .await?;
    // The check names the server as its certificate does (`server_name`), not by its
    // address: a virtual-hosted backend answers to that name.
    let authorities: Vec<String> = backend
        .requests()
        .iter()
        .filter(|r| r.uri.path() == "/healthz")
        .map(|r| r.uri.authority().map(|a| a.to_string()).unwrap_or_default())
        .collect();
    ensure!(
        authorities.iter().all(|a| a == "backend.test"),
        "health checks named the server {authorities:?}"
    );
    Ok(())
}

#[tokio::test]
async fn three_clients_that_stop_reading_never_stall_another_stream_on_the_shared_connection(
) -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, None, None)?;
    let (_tg, web) = through_h2(backend.addr()).await?;
    // Opens the shared connection.
    ensure!(get(&web, "/", "app.test").await?.status == 200);
    // Three clients ask for 64 MiB each and never read: far more than the sockets
    // between them and tidegate hold, so their upstream streams fill their windows.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&web).await?;
        c.send(b"GET /big/67108864 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await?;
        stalled.push(c);
    }
    // Until the backend can send no more: every window toward it is full.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = usize::MAX;
    loop {
        let now = backend.big_bytes_sent();
        if now == last && now > 0 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the three big responses never stopped flowing ({now} bytes sent)"
        );
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(3), get(&web, "/fourth", "app.test"))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "a fourth request on the shared connection stalled behind three clients \
                 that stopped reading ({} bytes of big responses sent)",
                backend.big_bytes_sent()
            )
        })??;
    ensure!(r.status == 200, "{} {}", r.status, r.text());
    ensure!(r.text().contains("conn=1 /fourth"), "{}", r.text());
    ensure!(
        backend.connections() == 1,
        "{} connections",
        backend.connections()
    );
    drop(stalled);
    Ok(())
}

#[tokio::test]
async fn a_server_that_advertises_zero_streams_gets_at_most_h2_max_connections_not_one_per_request(
) -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, Some(0), None)?;
    let config = listener(&[("/", "app")])
        + &upstream(
            "app",
            backend.addr(),
            "protocol = \"h2\"\nh2_max_connections = 2\nconnect_timeout = \"200ms\"\nresponse_timeout = \"1s\"",
        );
    let tg = Tidegate::start(bin(), &config).await?;
    let web = tg.addr("web")?;
    let burst = (0..20).map(|_| {
        let web = web.clone();
        tokio::spawn(async move { get(&web, "/", "app.test").await })
    });
    for r in futures_util::future::join_all(burst).await {
        let r = r??;
        ensure!(r.status >= 500, "{} {}", r.status, r.text());
    }
    ensure!(
        backend.connections() <= 2,
        "{} connections to a server that takes no streams (h2_max_connections = 2)",
        backend.connections()
    );
    Ok(())
}

#[tokio::test]
async fn a_burst_over_the_servers_stream_limit_waits_in_tidegate_and_never_ejects_it(
) -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, Some(1), None)?;
    let config = listener(&[("/", "app")])
        + &upstream(
            "app",
            backend.addr(),
            "protocol = \"h2\"\nh2_max_connections = 4\nconnect_timeout = \"200ms\"",
        );
    let tg = Tidegate::start(bin(), &config).await?;
    let web = tg.addr("web")?;
    // connect_timeout is short enough that most of the burst outwaits it in tidegate's
    // queue, long enough that a real connect on a loaded test machine fits in it.
    // Learns the server's limit (1).
    ensure!(get(&web, "/", "app.test").await?.status == 200);
    let burst = (0..200).map(|_| {
        let web = web.clone();
        tokio::spawn(async move { get(&web, "/slow/20", "app.test").await })
    });
    let (mut ok, mut busy) = (0, 0);
    for r in futures_util::future::join_all(burst).await {
        let r = r??;
        match r.status {
            200 => ok += 1,
            503 if r.text().contains("h2_max_connections = 4") => busy += 1,
            s => anyhow::bail!("neither served nor tidegate's own 503: {s} {}", r.text()),
        }
    }
    ensure!(ok > 0, "none of the burst was served ({busy} local 503s)");
    ensure!(
        backend.connections() <= 4,
        "{} connections (h2_max_connections = 4)",
        backend.connections()
    );
    // The server was never ejected: served at once, and its failures are 0.
    let r = get(&web, "/after", "app.test").await?;
    ensure!(
        r.status == 200,
        "after the burst: {} {}",
        r.status,
        r.text()
    );
    let metrics = crate::admin::tidegate(&["ctl", "metrics"], tg.dir()).await?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    ensure!(
        !metrics
            .lines()
            .any(|l| l.contains("upstream_connect_failures")
                && l.contains("upstream=\"app\"")
                && !l.ends_with(" 0")),
        "tidegate's own queue counted as the server's connect failures:\n{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn maint_drains_an_h2_connection_it_stays_listed_until_its_last_stream_ends(
) -> anyhow::Result<()> {
    let backend = h2_backend(Bind::Tcp4, None, None)?;
    let (tg, web) = through_h2(backend.addr()).await?;
    let slow = {
        let web = web.clone();
        tokio::spawn(async move { get(&web, "/slow/1500", "app.test").await })
    };
    backend
        .wait_for("the slow request", T, |b| {
            b.requests().iter().any(|r| r.uri.path() == "/slow/1500")
        })
        .await?;
    let out = crate::admin::tidegate(&["ctl", "maint", "app/0"], tg.dir()).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Drained, not detached: its registry entry stays while its stream runs.
    let conns = crate::admin::tidegate(&["ctl", "--json", "conns"], tg.dir()).await?;
    let conns = String::from_utf8_lossy(&conns.stdout).into_owned();
    ensure!(
        conns.contains("\"h2\""),
        "the h2 connection left the registry while its stream runs: {conns}"
    );
    let r = slow.await??;
    ensure!(
        r.status == 200 && r.text() == "slow",
        "{} {}",
        r.status,
        r.text()
    );
    // Its last stream ended: it is closed and gone.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let conns = crate::admin::tidegate(&["ctl", "--json", "conns"], tg.dir()).await?;
        let conns = String::from_utf8_lossy(&conns.stdout).into_owned();
        if !conns.contains("\"h2\"") {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the drained h2 connection was never closed: {conns}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
