//! End-to-end tests of TCP mode (a reset or a close reaches the other side at once, and
//! no connection outlives its timers; `docs/design.md`, "Principles"): the real
//! `tidegate` binary between raw clients and byte-stream backends ([`TcpBackend`]).
//!
//! Every socket is real (`127.0.0.1:0`, Unix sockets in temporary directories), every
//! wait polls with a deadline, and the timers in the configs are a few hundred
//! milliseconds where a test depends on them. Where the transport matters, a test runs
//! over a TCP and a Unix-socket upstream in turn; resets exist on TCP only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::Signal;
use tidegate_testkit::{close_wait_sockets, connect, Addr, Bind, End, TcpBackend, Tidegate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A generous functional bound for anything that should happen "at once".
const T: Duration = Duration::from_secs(5);

/// What "promptly" means for a close or reset to travel through the tunnel (tidegate
/// closes its side within 1 s; `docs/design.md`, "Principles").
const PROMPTLY: Duration = Duration::from_secs(1);

/// How often polls look again.
const POLL: Duration = Duration::from_millis(5);

/// The upstream transports a test runs over when it can run over each.
const TCP_AND_UNIX: [Bind; 2] = [Bind::Tcp4, Bind::Unix];

// === helpers ===

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// One TCP-mode listener `tunnel` on `127.0.0.1:0` to upstream `app` at `servers`;
/// `server`, `listener` and `upstream` are extra lines for those tables.
fn tunnel_config(servers: &[&Addr], server: &str, listener: &str, upstream: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|a| format!("\"{}\"", a.to_config()))
        .collect();
    format!(
        r#"
[server]
workers = 2
{server}

[listeners.tunnel]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "app"
{listener}

[upstreams.app]
servers = [{}]
{upstream}
"#,
        servers.join(", ")
    )
}

/// Per-tunnel lines are logged at debug.
const DEBUG_LOG: &str = r#"log = { level = "debug" }"#;

/// A TCP address with nothing listening: bound, noted, closed.
fn refused_addr() -> anyhow::Result<Addr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(Addr::Tcp(l.local_addr()?))
}

/// Polls until `pid` holds no TCP socket in CLOSE_WAIT, for at most `within`.
async fn wait_no_close_wait(pid: u32, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    // Bounded by the deadline.
    loop {
        let found = close_wait_sockets(pid)?;
        if found.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("tidegate (pid {pid}) still has CLOSE_WAIT sockets after {within:?}: {found:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sends `ping` through a fresh tunnel and reads the echo: the tunnel is established.
async fn open_echoing(tg: &Tidegate) -> anyhow::Result<tidegate_testkit::RawConn> {
    let mut c = connect(&tg.addr("tunnel")?).await?;
    c.send(b"ping\n").await?;
    let got = c.read_until(b"ping\n", T).await?;
    ensure!(got == b"ping\n", "echo: {got:?}");
    Ok(c)
}

// === bytes both ways ===

#[tokio::test]
async fn bytes_go_both_ways_through_a_tunnel_to_tcp_and_unix_upstreams() -> anyhow::Result<()> {
    for bind in TCP_AND_UNIX {
        let app = TcpBackend::echo(bind)?;
        // A Unix listener too: the client side is typed by family as well.
        let cfg = tunnel_config(&[app.addr()], "", "", "").replace(
            r#"listen = ["127.0.0.1:0"]"#,
            r#"listen = ["127.0.0.1:0", "unix:t.sock"]"#,
        );
        let tg = Tidegate::start(bin(), &cfg).await?;
        let addrs = tg.addrs("tunnel");
        ensure!(addrs.len() == 2, "{addrs:?}");
        for addr in &addrs {
            // Far more than the tunnel's buffers, written while the echo is read, so
            // flow control works in both directions at once.
            let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let s = addr.connect().await?;
            let (mut r, mut w) = tokio::io::split(s);
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await?;
                w.shutdown().await?;
                anyhow::Ok(w)
            });
            let mut got = Vec::new();
            tokio::time::timeout(T, r.read_to_end(&mut got))
                .await
                .with_context(|| {
                    format!("{bind:?} via {addr}: echo not complete within {T:?}")
                })??;
            let _w = writer.await??;
            ensure!(
                got == data,
                "{bind:?} via {addr}: {} bytes back of {}",
                got.len(),
                data.len()
            );
        }
        app.wait_for(|b| b.accepts() == 2 && b.open() == 0, T)
            .await?;
        ensure!(app.errors().is_empty(), "{:?}", app.errors());
    }
    Ok(())
}

// === half-close ===

#[tokio::test]
async fn client_half_close_reaches_the_upstream_and_its_reply_still_arrives() -> anyhow::Result<()>
{
    for bind in TCP_AND_UNIX {
        // Reads the whole request (to end of stream), then answers and closes.
        let app = TcpBackend::start(bind, |mut s| async move {
            let mut req = Vec::new();
            s.read_to_end(&mut req).await?;
            s.write_all(format!("got {} bytes: ", req.len()).as_bytes())
                .await?;
            s.write_all(&req).await?;
            s.shutdown().await?;
            Ok(())
        })?;
        let tg = Tidegate::start(bin(), &tunnel_config(&[app.addr()], DEBUG_LOG, "", "")).await?;
        let mut c = connect(&tg.addr("tunnel")?).await?;
        c.send(b"request").await?;
        c.shutdown_write().await?;
        let (reply, end) = c.read_to_end(T).await?;
        ensure!(
            reply == b"got 7 bytes: request",
            "{bind:?}: {:?}",
            String::from_utf8_lossy(&reply)
        );
        ensure!(end == End::Eof, "{bind:?}: {end:?}");
        // One line per tunnel end: bytes each way and who closed first.
        let line = tg.wait_log("tunnel closed: client closed first", T).await?;
        ensure!(
            line.contains("bytes_in=7") && line.contains("bytes_out=20"),
            "{line}"
        );
        app.wait_for(|b| b.open() == 0, PROMPTLY).await?;
        ensure!(app.errors().is_empty(), "{bind:?}: {:?}", app.errors());
    }
    Ok(())
}

#[tokio::test]
async fn upstream_half_close_lets_the_client_keep_sending() -> anyhow::Result<()> {
    for bind in TCP_AND_UNIX {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        // Greets, half-closes, then reads what the client still sends.
        let app = TcpBackend::start(bind, move |mut s| {
            let tx = tx.clone();
            async move {
                s.write_all(b"greeting").await?;
                s.shutdown().await?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await?;
                let _ = tx.send(rest);
                Ok(())
            }
        })?;
        let tg = Tidegate::start(bin(), &tunnel_config(&[app.addr()], DEBUG_LOG, "", "")).await?;
        let mut c = connect(&tg.addr("tunnel")?).await?;
        // The upstream's end of stream reaches the client...
        let (greeting, end) = c.read_to_end(T).await?;
        ensure!(
            greeting == b"greeting" && end == End::Eof,
            "{bind:?}: {greeting:?} {end:?}"
        );
        // ...and the other direction still flows.
        c.send(b"after the upstream's FIN").await?;
        c.shutdown_write().await?;
        let rest = tokio::time::timeout(T, rx.recv())
            .await
            .context("upstream got no end of stream")?
            .context("backend gone")?;
        ensure!(rest == b"after the upstream's FIN", "{bind:?}: {rest:?}");
        tg.wait_log("tunnel closed: upstream closed first", T)
            .await?;
        ensure!(app.errors().is_empty(), "{bind:?}: {:?}", app.errors());
    }
    Ok(())
}

#[tokio::test]
async fn half_closed_tunnel_with_a_silent_upstream_ends_at_the_idle_timeout() -> anyhow::Result<()>
{
    // The documented exception (`docs/design.md`, "Principles"): after the client's FIN
    // the tunnel's client socket sits in CLOSE_WAIT while the upstream may still answer
    // — but no longer than idle_timeout.
    let app = TcpBackend::start(Bind::Tcp4, |mut s| async move {
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).await?;
        // Silent and open: never answers, never closes (dropping the backend ends it).
        std::future::pending::<anyhow::Result<()>>().await
    })?;
    let tg = Tidegate::start(
        bin(),
        &tunnel_config(&[app.addr()], "", r#"idle_timeout = "300ms""#, ""),
    )
    .await?;
    let mut c = connect(&tg.addr("tunnel")?).await?;
    c.send(b"x").await?;
    c.shutdown_write().await?;
    let started = Instant::now();
    let (_, end) = c.read_to_end(T).await?;
    ensure!(end == End::Eof, "{end:?}");
    let took = started.elapsed();
    ensure!(took >= Duration::from_millis(250), "closed after {took:?}");
    wait_no_close_wait(tg.pid(), PROMPTLY).await?;
    Ok(())
}

// === resets ===

#[tokio::test]
async fn upstream_reset_resets_the_client_at_once_and_is_logged_with_the_side() -> anyhow::Result<()>
{
    // Reads one byte, then resets.
    let app = TcpBackend::start(Bind::Tcp4, |mut s| async move {
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await?;
        s.set_reset_on_drop()?;
        Ok(())
    })?;
    let tg = Tidegate::start(bin(), &tunnel_config(&[app.addr()], "", "", "")).await?;
    let mut c = connect(&tg.addr("tunnel")?).await?;
    c.send(b"x").await?;
    let (_, end) = c.read_to_end(PROMPTLY).await?;
    ensure!(end == End::Reset, "client saw {end:?}, not a reset");
    // Logged at info (an upstream's reset is what an operator chasing a client's
    // unexplained ECONNRESET looks for).
    let line = tg.wait_log("tunnel ended: upstream read failed", T).await?;
    ensure!(
        line.contains("side=upstream")
            && line.contains("connection reset by peer (ECONNRESET)")
            && line.contains("client reset"),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn client_reset_closes_the_upstream_at_once() -> anyhow::Result<()> {
    for bind in TCP_AND_UNIX {
        let app = TcpBackend::echo(bind)?;
        let tg = Tidegate::start(bin(), &tunnel_config(&[app.addr()], DEBUG_LOG, "", "")).await?;
        let c = open_echoing(&tg).await?;
        c.reset()?;
        app.wait_for(|b| b.open() == 0, PROMPTLY).await?;
        if bind == Bind::Tcp4 {
            // Passed on as a reset, not as a clean end of stream.
            let errors = app.errors();
            ensure!(
                errors.len() == 1 && errors[0].contains("reset"),
                "the upstream should have been reset: {errors:?}"
            );
        }
        let line = tg.wait_log("tunnel ended: client read failed", T).await?;
        ensure!(line.contains("side=client"), "{line}");
        wait_no_close_wait(tg.pid(), PROMPTLY).await?;
    }
    Ok(())
}

#[tokio::test]
async fn client_reset_while_the_upstream_does_not_read_ends_the_tunnel_within_1s(
) -> anyhow::Result<()> {
    // Back-pressure: the tunnel stops reading the client while the upstream takes
    // nothing, and must notice the client's reset all the same.
    let app = TcpBackend::start(Bind::Tcp4, |s| async move {
        let _held = s;
        std::future::pending::<anyhow::Result<()>>().await
    })?;
    let tg = Tidegate::start(bin(), &tunnel_config(&[app.addr()], DEBUG_LOG, "", "")).await?;
    let mut c = tg.addr("tunnel")?.connect().await?;
    let chunk = vec![0u8; 64 * 1024];
    let mut stalled = false;
    // Bounded: the buffers on the way hold a few MiB at most.
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_millis(200), c.write_all(&chunk)).await {
            Ok(written) => written.context("write into the tunnel")?,
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    ensure!(stalled, "64 MiB went into an upstream that never reads");
    c.set_reset_on_drop()?;
    drop(c);
    let reset_at = Instant::now();
    let line = tg.wait_log("tunnel ended: client read failed", T).await?;
    let took = reset_at.elapsed();
    ensure!(
        took < Duration::from_millis(1500),
        "noticed {took:?} after the reset"
    );
    ensure!(
        line.contains("connection reset by peer (ECONNRESET)") && line.contains("upstream reset"),
        "{line}"
    );
    wait_no_close_wait(tg.pid(), PROMPTLY).await?;
    Ok(())
}

// === timers and lifecycle ===

#[tokio::test]
async fn idle_tunnel_is_closed_with_a_clean_end_of_stream_to_both_sides() -> anyhow::Result<()> {
    for bind in TCP_AND_UNIX {
        let app = TcpBackend::echo(bind)?;
        let tg = Tidegate::start(
            bin(),
            &tunnel_config(&[app.addr()], DEBUG_LOG, r#"idle_timeout = "300ms""#, ""),
        )
        .await?;
        let mut c = open_echoing(&tg).await?;
        let started = Instant::now();
        let (rest, end) = c.read_to_end(T).await?;
        let took = started.elapsed();
        ensure!(
            rest.is_empty() && end == End::Eof,
            "{bind:?}: {rest:?} {end:?}"
        );
        ensure!(
            took >= Duration::from_millis(250),
            "{bind:?}: closed after {took:?}"
        );
        // The echo backend saw a clean end of stream too (no reset, no error).
        app.wait_for(|b| b.open() == 0, PROMPTLY).await?;
        ensure!(app.errors().is_empty(), "{bind:?}: {:?}", app.errors());
        tg.wait_log("tunnel closed: idle_timeout (300ms)", T)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_thousand_concurrent_tunnels_all_complete() -> anyhow::Result<()> {
    const N: usize = 1000;
    let app = TcpBackend::echo(Bind::Tcp4)?;
    let tg = Tidegate::start(bin(), &tunnel_config(&[app.addr()], "", "", "")).await?;
    let addr = tg.addr("tunnel")?;
    // Every tunnel is open at once: each waits here, after its first echo, for all.
    let all_open = Arc::new(tokio::sync::Barrier::new(N));
    // The backend's accept queue is the kernel default (128): connect in waves so a
    // burst of SYNs is not dropped and retried a second later.
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (addr, all_open, connecting) = (addr.clone(), all_open.clone(), connecting.clone());
        tasks.spawn(async move {
            let msg = format!("tunnel {i} says hello\n");
            let permit = connecting.acquire_owned().await?;
            let mut c = connect(&addr).await?;
            c.send(msg.as_bytes()).await?;
            let got = c.read_until(b"\n", T).await?;
            drop(permit);
            ensure!(got == msg.as_bytes(), "tunnel {i}: {got:?}");
            all_open.wait().await;
            c.send(b"bye").await?;
            c.shutdown_write().await?;
            let (rest, end) = c.read_to_end(T).await?;
            ensure!(
                rest == b"bye" && end == End::Eof,
                "tunnel {i}: {rest:?} {end:?}"
            );
            anyhow::Ok(())
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(20), async {
        let mut done = 0;
        while let Some(r) = tasks.join_next().await {
            r??;
            done += 1;
        }
        anyhow::Ok(done)
    })
    .await
    .context("1000 tunnels did not complete within 20 s")??;
    ensure!(all == N);
    ensure!(app.accepts() == N, "backend accepted {}", app.accepts());
    app.wait_for(|b| b.open() == 0, T).await?;
    ensure!(app.errors().is_empty(), "{:?}", app.errors());
    Ok(())
}

#[tokio::test]
async fn killed_client_closes_its_upstream_within_1s_and_leaves_no_close_wait() -> anyhow::Result<()>
{
    for bind in TCP_AND_UNIX {
        let app = TcpBackend::echo(bind)?;
        let tg = Tidegate::start(bin(), &tunnel_config(&[app.addr()], "", "", "")).await?;
        // Killed with a reset, and killed the ordinary way (its kernel closes it: FIN).
        for reset in [true, false] {
            let c = open_echoing(&tg).await?;
            if reset {
                c.reset()?;
            } else {
                drop(c);
            }
            let started = Instant::now();
            app.wait_for(|b| b.open() == 0, PROMPTLY)
                .await
                .with_context(|| format!("{bind:?}, reset {reset}"))?;
            let left = PROMPTLY.saturating_sub(started.elapsed());
            wait_no_close_wait(tg.pid(), left.max(POLL))
                .await
                .with_context(|| format!("{bind:?}, reset {reset}"))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_with_an_open_tunnel_exits_0_when_the_grace_ends() -> anyhow::Result<()> {
    let app = TcpBackend::echo(Bind::Tcp4)?;
    let mut tg = Tidegate::start(
        bin(),
        &tunnel_config(&[app.addr()], r#"shutdown_grace = "500ms""#, "", ""),
    )
    .await?;
    let addr = tg.addr("tunnel")?;
    let mut c = open_echoing(&tg).await?;
    tg.signal(Signal::SIGTERM)?;
    let signalled = Instant::now();
    // Listening stops at once...
    let deadline = Instant::now() + PROMPTLY;
    // Bounded by the deadline.
    while addr.connect().await.is_ok() {
        ensure!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(POLL).await;
    }
    // ...while the open tunnel keeps carrying bytes during the grace...
    c.send(b"during the drain\n").await?;
    let got = c.read_until(b"\n", T).await?;
    ensure!(got == b"during the drain\n", "{got:?}");
    // ...and is closed when it ends.
    let (_, end) = c.read_to_end(T).await?;
    ensure!(end == End::Eof, "{end:?}");
    let status = tg.wait_exit(T).await?;
    let took = signalled.elapsed();
    ensure!(status.success(), "exit status {status}");
    ensure!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM"
    );
    app.wait_for(|b| b.open() == 0, PROMPTLY).await?;
    Ok(())
}

// === connect failures ===

#[tokio::test]
async fn upstream_down_closes_the_client_and_logs_upstream_address_and_errno() -> anyhow::Result<()>
{
    let dead_tcp = refused_addr()?;
    let dir = tempfile::tempdir()?;
    let dead_unix = Addr::Unix(dir.path().join("nobody.sock"));
    for (dead, meaning) in [
        (&dead_tcp, "connection refused (ECONNREFUSED)"),
        (&dead_unix, "no such file or directory (ENOENT)"),
    ] {
        let tg = Tidegate::start(bin(), &tunnel_config(&[dead], "", "", "")).await?;
        let mut c = connect(&tg.addr("tunnel")?).await?;
        c.send(b"hello?").await?;
        // Closed, not left hanging: end of stream, or a reset when the unread
        // "hello?" was still in the socket (both mean "closed").
        let (got, _end) = c.read_to_end(PROMPTLY).await?;
        ensure!(got.is_empty(), "{got:?}");
        let line = tg.wait_log("cannot connect upstream", T).await?;
        ensure!(
            line.contains("upstream app")
                && line.contains(&dead.to_config())
                && line.contains(meaning),
            "{line}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn connect_failure_moves_to_the_next_server_within_retries() -> anyhow::Result<()> {
    let dead = refused_addr()?;
    let app = TcpBackend::echo(Bind::Unix)?;
    // round_robin starts at the first server: the refusing one.
    let tg = Tidegate::start(
        bin(),
        &tunnel_config(&[&dead, app.addr()], "", "", "retries = 1"),
    )
    .await?;
    for _ in 0..4 {
        let c = open_echoing(&tg).await?;
        drop(c);
    }
    let line = tg
        .wait_log("connect failed; trying another server", T)
        .await?;
    ensure!(
        line.contains(&dead.to_config()) && line.contains("ECONNREFUSED"),
        "{line}"
    );
    ensure!(app.accepts() == 4, "backend accepted {}", app.accepts());

    // Without retries, the first tunnel (to the refusing server) is closed.
    let tg = Tidegate::start(
        bin(),
        &tunnel_config(&[&dead, app.addr()], "", "", "retries = 0"),
    )
    .await?;
    let mut c = connect(&tg.addr("tunnel")?).await?;
    let (got, _) = c.read_to_end(PROMPTLY).await?;
    ensure!(got.is_empty(), "{got:?}");
    tg.wait_log("cannot connect upstream", T).await?;
    open_echoing(&tg).await?;
    Ok(())
}
