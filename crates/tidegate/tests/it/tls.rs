//! TLS listeners against the built binary: certificates made here (rcgen, one test CA),
//! curl over TLS with `--cacert` and `--resolve` (SNI picks the certificate, no SNI gets
//! the first), `min_version`, `handshake_timeout` on a silent client, `X-Forwarded-Proto`,
//! rotation by reload (new connections get the new certificate, an open one goes on), a
//! reload with a broken key refused, `check`'s errors and warning with file:line:col, and
//! TLS termination in TCP mode.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use tidegate_testkit::tls::{peer_certificate, Date, TestCa, TlsClient};
use tidegate_testkit::{Addr, Backend, Bind, Reply, TcpBackend, Tidegate};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// `curl ARGS` (over TLS, with the test CA in `dir`), with a deadline.
async fn curl(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let ca = dir.join("ca.pem");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-v", "--max-time", "5", "--cacert"])
        .arg(&ca)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .context("curl did not finish")?
        .context("run curl (is it installed?)")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn port(addr: &Addr) -> u16 {
    match addr {
        Addr::Tcp(a) => a.port(),
        other => panic!("not a TCP address: {other}"),
    }
}

/// `https://NAME:PORT/PATH` through `--resolve NAME:PORT:127.0.0.1`.
async fn get_as(dir: &Path, addr: &Addr, name: &str, path: &str) -> anyhow::Result<Output> {
    let p = port(addr);
    curl(
        dir,
        &[
            "--resolve",
            &format!("{name}:{p}:127.0.0.1"),
            &format!("https://{name}:{p}{path}"),
        ],
    )
    .await
}

fn config(extra_tls: &str, upstream: &str) -> String {
    format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]
tls = {{ certificates = [ {{ cert = "a.pem", key = "a.key" }}, {{ cert = "b.pem", key = "b.key" }} ]{extra_tls} }}

[[listeners.web.routes]]
path = "/echo"
upstream = "app"

[[listeners.web.routes]]
respond = {{ status = 200, body = "ok\n" }}

[upstreams.app]
servers = ["{upstream}"]
"#
    )
}

async fn status_json(tg: &Tidegate) -> anyhow::Result<serde_json::Value> {
    let out = crate::admin::tidegate(&["ctl", "--json", "status"], tg.dir()).await?;
    ensure!(out.status.success(), "ctl status: {}", text(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn metrics(tg: &Tidegate) -> anyhow::Result<String> {
    let out = crate::admin::tidegate(&["ctl", "metrics"], tg.dir()).await?;
    ensure!(out.status.success(), "ctl metrics: {}", text(&out.stderr));
    Ok(text(&out.stdout))
}

fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn sni_picks_each_certificate_no_sni_gets_the_first_and_x_forwarded_proto_is_https(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    ca.leaf(dir.path(), "a", &["a.test", "*.a.test"], None)?;
    ca.leaf(dir.path(), "b", &["b.test"], None)?;
    let app = Backend::start(Bind::Tcp4, |_| Reply::echo())?;
    let tg = Tidegate::start_in(dir.path(), bin(), &config("", &app.addr().to_config())).await?;
    let web = tg.addr("web")?;

    for (name, cn) in [
        ("a.test", "a.test"),
        ("x.a.test", "a.test"),
        ("b.test", "b.test"),
    ] {
        let out = get_as(dir.path(), &web, name, "/").await?;
        let err = text(&out.stderr);
        ensure!(out.status.success(), "curl {name}: {err}");
        ensure!(
            text(&out.stdout) == "ok\n",
            "curl {name}: {}",
            text(&out.stdout)
        );
        ensure!(
            err.contains(&format!("subject: CN={cn}")),
            "{name} got another certificate: {err}"
        );
        ensure!(
            err.contains("ALPN: server accepted h2"),
            "{name}: ALPN: {err}"
        );
    }
    // No SNI (an IP address): the first certificate, which the client cannot verify
    // for that name, so -k.
    let p = port(&web);
    let out = curl(dir.path(), &["-k", &format!("https://127.0.0.1:{p}/")]).await?;
    let err = text(&out.stderr);
    ensure!(out.status.success(), "no SNI: {err}");
    ensure!(
        err.contains("subject: CN=a.test"),
        "no SNI got another certificate: {err}"
    );
    // A name no certificate serves: the first, too.
    let out = curl(
        dir.path(),
        &[
            "-k",
            "--resolve",
            &format!("other.test:{p}:127.0.0.1"),
            &format!("https://other.test:{p}/"),
        ],
    )
    .await?;
    let err = text(&out.stderr);
    ensure!(out.status.success(), "unknown SNI: {err}");
    ensure!(
        err.contains("subject: CN=a.test"),
        "an unknown name got another certificate: {err}"
    );

    let out = get_as(dir.path(), &web, "b.test", "/echo").await?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    let body = text(&out.stdout);
    let echoed: serde_json::Value = serde_json::from_str(&body).context(body.clone())?;
    let proto = echoed.to_string().to_ascii_lowercase();
    ensure!(
        proto.contains(r#"["x-forwarded-proto","https"]"#)
            || proto.contains(r#""x-forwarded-proto":"https""#),
        "the backend did not get X-Forwarded-Proto: https: {body}"
    );
    Ok(())
}

#[tokio::test]
async fn min_version_13_refuses_a_tls12_client_and_counts_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    ca.leaf(dir.path(), "b", &["b.test"], None)?;
    let tg = Tidegate::start_in(
        dir.path(),
        bin(),
        &config(r#", min_version = "1.3""#, "127.0.0.1:9"),
    )
    .await?;
    let web = tg.addr("web")?;
    let p = port(&web);
    let out = curl(
        dir.path(),
        &[
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "--resolve",
            &format!("a.test:{p}:127.0.0.1"),
            &format!("https://a.test:{p}/"),
        ],
    )
    .await?;
    ensure!(
        !out.status.success(),
        "a TLS 1.2 client was served: {}",
        text(&out.stderr)
    );
    let out = get_as(dir.path(), &web, "a.test", "/").await?;
    ensure!(out.status.success(), "TLS 1.3: {}", text(&out.stderr));
    ensure!(
        text(&out.stderr).contains("TLSv1.3"),
        "{}",
        text(&out.stderr)
    );
    let m = metrics(&tg).await?;
    let failures = sample(
        &m,
        r#"tidegate_tls_handshake_failures_total{listener="web",reason="protocol_version"}"#,
    );
    ensure!(
        failures == Some(1.0),
        "protocol_version failures: {failures:?}\n{m}"
    );
    // One series per certificate file: the same names twice (a rotation) stay apart.
    ensure!(
        m.lines().any(|l| l
            .starts_with(r#"tidegate_tls_certificate_expiry_seconds{listener="web",cert=""#)
            && l.contains(r#"a.pem",names="a.test"}"#)),
        "{m}"
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_client_is_closed_at_handshake_timeout_while_others_are_served(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    ca.leaf(dir.path(), "b", &["b.test"], None)?;
    let tg = Tidegate::start_in(
        dir.path(),
        bin(),
        &config(r#", handshake_timeout = "1s""#, "127.0.0.1:9"),
    )
    .await?;
    let web = tg.addr("web")?;
    let Addr::Tcp(sa) = web.clone() else {
        unreachable!()
    };
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(sa).await?;
    // Served meanwhile: the handshake runs in the connection's task, not the accept loop.
    let out = get_as(dir.path(), &web, "b.test", "/").await?;
    ensure!(out.status.success(), "probe: {}", text(&out.stderr));
    ensure!(
        started.elapsed() < Duration::from_secs(1),
        "the probe waited for the silent client"
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(T, silent.read(&mut buf))
        .await
        .context("the silent client was not closed")?;
    let waited = started.elapsed();
    ensure!(
        matches!(n, Ok(0) | Err(_)),
        "the silent client got bytes: {n:?}"
    );
    ensure!(
        waited >= Duration::from_millis(900),
        "closed before handshake_timeout: {waited:?}"
    );
    // A handshake in progress is a listed connection (`reading`) an operator can close.
    let mut second = tokio::net::TcpStream::connect(sa).await?;
    let local = second.local_addr()?.to_string();
    let deadline = Instant::now() + T;
    let id = loop {
        let out = crate::admin::tidegate(&["ctl", "--json", "conns"], tg.dir()).await?;
        let conns: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let found = conns
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["peer"] == local.as_str());
        if let Some(c) = found {
            ensure!(c["state"] == "reading" && c["listener"] == "web", "{c}");
            break c["id"].as_u64().context("id")?;
        }
        ensure!(
            Instant::now() < deadline,
            "the handshaking connection is not listed: {conns}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed = Instant::now();
    let out = crate::admin::tidegate(&["ctl", "kill", &id.to_string()], tg.dir()).await?;
    ensure!(out.status.success(), "ctl kill: {}", text(&out.stderr));
    let n = tokio::time::timeout(T, second.read(&mut buf)).await?;
    ensure!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    ensure!(
        killed.elapsed() < Duration::from_millis(900),
        "not closed by the kill"
    );

    let m = metrics(&tg).await?;
    let timeouts = sample(
        &m,
        r#"tidegate_tls_handshake_failures_total{listener="web",reason="timeout"}"#,
    );
    ensure!(timeouts == Some(1.0), "timeouts: {timeouts:?}");
    Ok(())
}

/// Sends a keep-alive GET and reads until the response body `ok\n`.
async fn ask(s: &mut TlsClient, host: &str) -> anyhow::Result<()> {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while !got.ends_with(b"\r\n\r\nok\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .context("no response")??;
        ensure!(n > 0, "closed after {:?}", text(&got));
        got.extend_from_slice(&buf[..n]);
    }
    ensure!(got.starts_with(b"HTTP/1.1 200"), "{}", text(&got));
    Ok(())
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_open_ones(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    ca.leaf(dir.path(), "b", &["b.test"], None)?;
    let tg = Tidegate::start_in(dir.path(), bin(), &config("", "127.0.0.1:9")).await?;
    let web = tg.addr("web")?;
    let mut open = ca.connect(&web, "a.test", T).await?;
    ask(&mut open, "a.test").await?;
    let before = peer_certificate(&open);
    let names = |status: &serde_json::Value| -> Vec<String> {
        status["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{} {} {}",
                    c["listener"].as_str().unwrap_or_default(),
                    c["names"],
                    c["issuer"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    let status = status_json(&tg).await?;
    assert_eq!(
        names(&status),
        [
            r#"web ["a.test"] CN=tidegate test CA"#,
            r#"web ["b.test"] CN=tidegate test CA"#
        ]
    );
    ensure!(status["certificates"][0]["expires_in_s"].as_i64() > Some(86_400 * 365));

    // Rotation: new files under the same names, then a reload.
    ca.leaf(dir.path(), "a", &["a.test", "www.a.test"], None)?;
    let out = crate::admin::tidegate(&["ctl", "reload"], tg.dir()).await?;
    ensure!(
        out.status.success(),
        "reload: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let fresh = ca.connect(&web, "a.test", T).await?;
    let status = status_json(&tg).await?;
    assert_eq!(
        names(&status),
        [
            r#"web ["a.test","www.a.test"] CN=tidegate test CA"#,
            r#"web ["b.test"] CN=tidegate test CA"#
        ]
    );
    let table = crate::admin::tidegate(&["ctl", "status"], tg.dir()).await?;
    let table = text(&table.stdout);
    ensure!(
        table.contains("NAMES") && table.contains("a.test, www.a.test"),
        "{table}"
    );
    ensure!(
        peer_certificate(&fresh) != before,
        "a new connection got the old certificate"
    );
    let on_disk = std::fs::read(dir.path().join("a.pem"))?;
    let pem = text(&on_disk);
    ensure!(!pem.is_empty());
    // The open connection goes on, on its own session.
    ask(&mut open, "a.test").await?;
    ensure!(peer_certificate(&open) == before);

    // A broken key path: refused with the error, nothing changes.
    let broken = config("", "127.0.0.1:9").replace(r#"key = "b.key""#, r#"key = "gone.key""#);
    std::fs::write(tg.config_path(), broken)?;
    let out = crate::admin::tidegate(&["ctl", "reload"], tg.dir()).await?;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    ensure!(!out.status.success(), "a broken reload succeeded: {said}");
    ensure!(
        said.contains("listeners.web.tls.certificates[1].key: cannot read gone.key: No such file or directory (ENOENT)"),
        "{said}"
    );
    let mut after = ca.connect(&web, "b.test", T).await?;
    ask(&mut after, "b.test").await?;
    ask(&mut open, "a.test").await?;
    Ok(())
}

/// `tidegate check` on `toml` written to `dir/tidegate.toml`.
async fn check(dir: &Path, toml: &str) -> anyhow::Result<(bool, String)> {
    let path = dir.join("tidegate.toml");
    std::fs::write(&path, toml)?;
    let out = crate::admin::tidegate(&["check", "--config", path.to_str().unwrap()], dir).await?;
    Ok((
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    ))
}

#[tokio::test]
async fn check_names_a_missing_file_a_mismatched_key_and_an_expired_certificate(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    ca.leaf(dir.path(), "b", &["b.test"], None)?;
    ca.leaf(dir.path(), "old", &["old.test"], Some((2001, 1, 1)))?;
    let toml = r#"[listeners.web]
listen = ["127.0.0.1:0"]
tls = { certificates = [
  { cert = "missing.pem", key = "a.key" },
  { cert = "a.pem", key = "b.key" },
  { cert = "old.pem", key = "old.key" },
] }
[[listeners.web.routes]]
respond = { status = 200, body = "ok" }
"#;
    let (ok, said) = check(dir.path(), toml).await?;
    ensure!(!ok, "check passed: {said}");
    let file = dir.path().join("tidegate.toml");
    let f = file.display();
    for line in [
        format!("{f}:4:12: listeners.web.tls.certificates[0].cert: cannot read missing.pem: No such file or directory (ENOENT)"),
        format!("{f}:5:27: listeners.web.tls.certificates[1].key: the key in b.key does not match the certificate in a.pem"),
        format!("{f}:6:12: listeners.web.tls.certificates[2].cert: the certificate in old.pem expired at 2001-01-01T00:00:00Z (notAfter)"),
    ] {
        ensure!(said.contains(&line), "missing {line:?} in:\n{said}");
    }

    // Within 14 days of its end: a warning, and check passes.
    let soon = time_now_plus_days(3);
    ca.leaf(dir.path(), "soon", &["soon.test"], Some(soon))?;
    let toml = r#"[listeners.web]
listen = ["127.0.0.1:0"]
tls = { certificates = [ { cert = "soon.pem", key = "soon.key" } ] }
[[listeners.web.routes]]
respond = { status = 200, body = "ok" }
"#;
    let (ok, said) = check(dir.path(), toml).await?;
    ensure!(ok, "check failed: {said}");
    ensure!(
        said.contains(&format!("warning: {f}:3:35: listeners.web.tls.certificates[0].cert: the certificate in soon.pem expires at")),
        "{said}"
    );

    // A protocol tidegate does not speak: refused, never ignored.
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    let toml = r#"[listeners.web]
listen = ["127.0.0.1:0"]
tls = { certificates = [ { cert = "a.pem", key = "a.key" } ], alpn = ["h3", "http/1.1"] }
[[listeners.web.routes]]
respond = { status = 200, body = "ok" }
"#;
    let (ok, said) = check(dir.path(), toml).await?;
    ensure!(!ok, "{said}");
    ensure!(
        said.contains(&format!(
            "{f}:3:71: listeners.web.tls.alpn[0]: expected \"h2\" or \"http/1.1\", found \"h3\""
        )),
        "{said}"
    );
    Ok(())
}

/// (year, month, day) of today plus `days` (UTC).
fn time_now_plus_days(days: u64) -> Date {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + days * 86_400;
    let text = tidegate_config::tls::format_unix(secs as i64);
    let y = text[0..4].parse().unwrap();
    let m = text[5..7].parse().unwrap();
    let d = text[8..10].parse().unwrap();
    (y, m, d)
}

#[tokio::test]
async fn tcp_mode_terminates_tls_and_relays_the_plain_bytes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.leaf(dir.path(), "a", &["amqp.test"], None)?;
    let echo = TcpBackend::echo(Bind::Tcp4)?;
    let toml = format!(
        r#"
[listeners.amqps]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "broker"
tls = {{ certificates = [ {{ cert = "a.pem", key = "a.key" }} ] }}

[upstreams.broker]
servers = ["{}"]
"#,
        echo.addr().to_config()
    );
    let tg = Tidegate::start_in(dir.path(), bin(), &toml).await?;
    let mut s = ca.connect(&tg.addr("amqps")?, "amqp.test", T).await?;
    let msg = b"AMQP\x00\x00\x09\x01 hello";
    s.write_all(msg).await?;
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < msg.len() {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .with_context(|| format!("no echo; logs:\n{}", tg.logs().join("\n")))??;
        ensure!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    ensure!(got == msg, "{got:?}");
    // The backend got plain bytes: it echoed them, and a TLS record would not be these.
    s.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut rest)).await??;
    ensure!(rest.is_empty(), "{rest:?}");
    Ok(())
}

#[tokio::test]
async fn a_kept_alive_tls_connection_is_parked_and_served_again_with_pipelined_requests(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    ca.leaf(dir.path(), "b", &["b.test"], None)?;
    let tg = Tidegate::start_in(dir.path(), bin(), &config("", "127.0.0.1:9")).await?;
    let mut s = ca.connect(&tg.addr("web")?, "a.test", T).await?;
    // More than hyper reads at once (its first read buffer is 8 KiB), in one write:
    // rustls holds the rest decrypted while hyper serves the first ones.
    let one =
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: 0123456789012345678901234567890123456789\r\n\r\n";
    let n = 200;
    s.write_all(one.repeat(n).as_bytes()).await?;
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    let count = |b: &[u8]| b.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    while count(&got) < n || !got.ends_with(b"ok\n") {
        let mut buf = [0u8; 16 * 1024];
        let r = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .with_context(|| format!("{} of {n} responses", count(&got)))??;
        ensure!(r > 0, "closed after {} responses", count(&got));
        got.extend_from_slice(&buf[..r]);
    }
    // Idle past PARK_AFTER (20 ms): parked, then served again on the same session.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ask(&mut s, "a.test").await?;
    }
    Ok(())
}

/// Reads from `s` until `needle` has arrived.
async fn read_until(s: &mut TlsClient, needle: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while !got.windows(needle.len()).any(|w| w == needle) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .with_context(|| format!("waiting for {:?}, got {:?}", text(needle), text(&got)))??;
        ensure!(n > 0, "closed before {:?}: {:?}", text(needle), text(&got));
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_closes_its_sending_side_after_its_request_still_gets_the_response(
) -> anyhow::Result<()> {
    // close_notify then FIN, while the upstream takes its time: a half-close, answered.
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    ca.leaf(dir.path(), "b", &["b.test"], None)?;
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::delay(Duration::from_millis(300), Reply::text(200, "late\n"))
    })?;
    let tg = Tidegate::start_in(dir.path(), bin(), &config("", &app.addr().to_config())).await?;
    let mut s = ca.connect(&tg.addr("web")?, "a.test", T).await?;
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await?;
    s.shutdown().await?;
    let got = read_until(&mut s, b"late\n").await?;
    ensure!(got.starts_with(b"HTTP/1.1 200"), "{}", text(&got));
    Ok(())
}

/// A TLS client reads the first SSE event through tidegate, then leaves (`notify`: with
/// a close_notify before its FIN, as a client that closes cleanly; without: the FIN
/// alone, as a killed client); the upstream connection must be closed within 1 s.
async fn tls_client_leaves_mid_stream(notify: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    ca.leaf(dir.path(), "b", &["b.test"], None)?;
    let app = Backend::start(Bind::Tcp4, |_| {
        Reply::sse(
            vec!["data: one\n\n".into()],
            tidegate_testkit::SseThen::Hold,
        )
    })?;
    let tg = Tidegate::start_in(dir.path(), bin(), &config("", &app.addr().to_config())).await?;
    let mut s = ca.connect(&tg.addr("web")?, "a.test", T).await?;
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await?;
    read_until(&mut s, b"data: one\n\n").await?;
    let _kept = if notify {
        // close_notify, then FIN; the socket stays open.
        s.shutdown().await?;
        Some(s)
    } else {
        drop(s);
        None
    };
    app.wait_for(|b| b.closed_connections() == 1, Duration::from_secs(1))
        .await
        .with_context(|| format!("upstream still open; logs:\n{}", tg.logs().join("\n")))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_gone_mid_stream_closes_the_upstream_within_1s() -> anyhow::Result<()> {
    tls_client_leaves_mid_stream(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_closing_with_close_notify_mid_stream_closes_the_upstream_within_1s(
) -> anyhow::Result<()> {
    tls_client_leaves_mid_stream(true).await
}

/// A TLS backend (its own certificate for `names`): it answers each connection's first
/// line with `NAME: LINE`, so the client sees which backend it reached, end to end.
fn tls_backend(ca: &TestCa, names: &'static [&'static str]) -> anyhow::Result<TcpBackend> {
    let acceptor = ca.acceptor(names)?;
    TcpBackend::start(Bind::Tcp4, move |s| {
        let acceptor = acceptor.clone();
        async move {
            let mut tls = acceptor.accept(s).await?;
            let mut line = Vec::new();
            // Bounded by the test's client, which sends one line.
            while !line.ends_with(b"\n") {
                let mut buf = [0u8; 256];
                let n = tls.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                line.extend_from_slice(&buf[..n]);
            }
            tls.write_all(format!("{}: {}", names[0], text(&line)).as_bytes())
                .await?;
            tls.shutdown().await?;
            Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_routes_by_sni_without_decrypting() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let a = tls_backend(&ca, &["a.test"])?;
    let b = tls_backend(&ca, &["x.b.test", "y.b.test"])?;
    let fallback = tls_backend(&ca, &["default.test", "other.test"])?;
    let toml = format!(
        r#"
[listeners.edge]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "fallback"
tls_passthrough = {{ routes = [ {{ sni = "a.test", upstream = "a" }}, {{ sni = "*.b.test", upstream = "b" }} ], hello_timeout = "1s" }}

[upstreams.a]
servers = ["{}"]
[upstreams.b]
servers = ["{}"]
[upstreams.fallback]
servers = ["{}"]
"#,
        a.addr().to_config(),
        b.addr().to_config(),
        fallback.addr().to_config()
    );
    let tg = Tidegate::start(bin(), &toml).await?;
    let edge = tg.addr("edge")?;
    // Each client verifies the backend's own certificate: tidegate holds no key.
    for (name, sni, backend) in [
        ("a.test", true, "a.test"),
        ("y.b.test", true, "x.b.test"),
        ("other.test", true, "default.test"),
        ("default.test", false, "default.test"),
    ] {
        let mut s = ca.connect_sni(&edge, name, sni, T).await?;
        s.write_all(b"hello\n").await?;
        let mut got = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut got)).await??;
        ensure!(
            text(&got) == format!("{backend}: hello\n"),
            "{name} (sni {sni}) reached {:?}",
            text(&got)
        );
    }
    ensure!(a.accepts() == 1 && b.accepts() == 1 && fallback.accepts() == 2);

    // Not TLS, and silent: closed, counted, and no backend is dialled.
    let Addr::Tcp(sa) = edge.clone() else {
        unreachable!()
    };
    let mut plain = tokio::net::TcpStream::connect(sa).await?;
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(T, plain.read(&mut buf)).await?;
    ensure!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(sa).await?;
    let n = tokio::time::timeout(T, silent.read(&mut buf)).await?;
    ensure!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    ensure!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before hello_timeout"
    );
    let m = metrics(&tg).await?;
    for reason in ["not_tls", "timeout"] {
        let v = sample(
            &m,
            &format!(
                r#"tidegate_tls_handshake_failures_total{{listener="edge",reason="{reason}"}}"#
            ),
        );
        ensure!(v == Some(1.0), "{reason}: {v:?}");
    }
    ensure!(a.accepts() + b.accepts() + fallback.accepts() == 4);
    Ok(())
}
