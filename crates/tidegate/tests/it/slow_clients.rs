//! The binary under slowhttptest (Debian package `slowhttptest`, a prerequisite: the
//! test fails without it): 3,000 slowloris and 3,000 slow-body connections against
//! tidegate in front of a backend that gives up on a body after 10 s, while a probe
//! makes one request every 0.5 s. Every probe must be answered 200 within 1 s: slow
//! clients cost tidegate memory and sockets, never the other clients' service.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tidegate_testkit::{connect, Addr, Tidegate};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// Connections per slowhttptest run.
const CONNECTIONS: usize = 3000;
/// `-l`: how long each slowhttptest run lasts, in seconds.
const ATTACK_SECS: u64 = 30;
/// The backend's deadline for a whole request body, as an application server's.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A probe every this long, each answered within [`PROBE_BOUND`].
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_BOUND: Duration = Duration::from_secs(1);

/// Raises this process's open-files limit to its hard limit (the backend holds one
/// socket per slow-body connection).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The backend: answers a GET at once (keep-alive); reads a POST's Content-Length body
/// within [`BODY_TIMEOUT`], then answers 200, or 408 and closes when the body did not
/// arrive in time.
async fn backend() -> anyhow::Result<(Addr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = Addr::Tcp(listener.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    Ok((addr, task))
}

async fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        buf.drain(..head_end);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let deadline = Instant::now() + BODY_TIMEOUT;
        while buf.len() < len {
            match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    let _ = s
                        .write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
        }
        buf.drain(..len);
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// `slowhttptest ARGS` with a high enough open-files limit, to its end.
fn slowhttptest(args: &str) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "command -v slowhttptest >/dev/null || {{ echo 'slowhttptest is not installed (Debian package slowhttptest)' >&2; exit 127; }}; \
             ulimit -n 16384 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec slowhttptest {args}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run sh for slowhttptest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_slow_bodies_leave_every_probe_answered_at_once() -> anyhow::Result<()> {
    raise_nofile();
    let (app, task) = backend().await?;
    let tg = Tidegate::start(
        bin(),
        &format!(
            r#"
[server]
workers = 2

[listeners.web]
listen = ["127.0.0.1:0"]
# Slowloris heads are cut at 4 s, well before the backend's 10 s body timeout ends
# the slow bodies: two bursts of 3,000 closes, not one of 6,000 (a debug build on two
# shared cores then still answers every probe within the bound).
header_timeout = "4s"

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
            app.to_config()
        ),
    )
    .await?;
    let web = tg.addr("web")?;
    let Some(port) = web.tcp().map(|a| a.port()) else {
        bail!("web is not on TCP: {web}");
    };
    let common = format!("-c {CONNECTIONS} -r 1000 -i 5 -l {ATTACK_SECS} -p 3");
    let slowloris = slowhttptest(&format!("-H {common} -u http://127.0.0.1:{port}/loris"))?;
    let slow_body = slowhttptest(&format!(
        "-B {common} -s 8192 -u http://127.0.0.1:{port}/upload"
    ))?;
    let attacks = async {
        let (a, b) = tokio::join!(slowloris.wait_with_output(), slow_body.wait_with_output());
        (a, b)
    };
    tokio::pin!(attacks);

    let mut probes = 0;
    let mut bad = Vec::new();
    let started = Instant::now();
    let mut next = Instant::now();
    let (loris, body) = loop {
        tokio::select! {
            done = &mut attacks => break done,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += PROBE_EVERY;
        probes += 1;
        let at = started.elapsed();
        let t = Instant::now();
        let result = async {
            let mut c = connect(&web).await?;
            c.send(b"GET /probe HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                .await?;
            c.read_response(PROBE_BOUND).await
        }
        .await;
        let ok = matches!(&result, Ok(r) if r.status == 200 && t.elapsed() < PROBE_BOUND);
        let direct = if ok {
            String::new()
        } else {
            // The same request straight to the backend: whose delay is it?
            let t = Instant::now();
            let r = async {
                let mut c = connect(&app).await?;
                c.send(b"GET /probe HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                    .await?;
                c.read_response(PROBE_BOUND).await
            }
            .await;
            format!(
                " (backend directly: {:?} after {:?})",
                r.map(|r| r.status),
                t.elapsed()
            )
        };
        match result {
            Ok(_) if ok => {}
            Ok(r) => bad.push(format!(
                "{at:?}: {} after {:?}: {}{direct}",
                r.status,
                t.elapsed(),
                r.text()
            )),
            Err(e) => bad.push(format!("{at:?}: {e:#}{direct}")),
        }
        if started.elapsed() > Duration::from_secs(ATTACK_SECS + 20) {
            bail!("slowhttptest did not end within {}s", ATTACK_SECS + 20);
        }
    };
    task.abort();
    for (name, out) in [("slowloris", loris?), ("slow body", body?)] {
        let text = String::from_utf8_lossy(&out.stdout);
        // Its last status lines (connected, pending, closed), for `--nocapture`.
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        eprintln!("{name}: {:#?}", tail.into_iter().rev().collect::<Vec<_>>());
        if !out.status.success() || !text.contains("slowhttptest version") {
            bail!(
                "{name}: slowhttptest failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // slowhttptest ends before `-l` once tidegate has closed all its connections (the
    // header timeout, the backend's 408): at least 10 s of probes.
    assert!(probes >= 20, "only {probes} probes");
    if !bad.is_empty() {
        // What tidegate said meanwhile, one line per kind of message.
        let mut seen = std::collections::BTreeMap::<String, (usize, String)>::new();
        for line in tg.logs() {
            let Some(event) = tidegate_testkit::parse_log_line(&line) else {
                continue;
            };
            let e = seen
                .entry(event.message.clone())
                .or_insert((0, line.clone()));
            e.0 += 1;
        }
        bail!(
            "{} of {probes} probes failed: {bad:#?}\ntidegate logged: {seen:#?}",
            bad.len()
        );
    }
    Ok(())
}
