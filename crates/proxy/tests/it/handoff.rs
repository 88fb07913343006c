//! Connections handed from one running proxy to another, in one process: what a binary
//! upgrade does between two processes (the binary carries the handoffs over a Unix
//! socket; here they go straight to `Serving::adopt`). An idle keep-alive connection,
//! a WebSocket after its 101 and a TCP-mode tunnel move with their sockets and go on;
//! the old proxy keeps none of them. A TLS connection or tunnel stays in the old proxy
//! (its session lives there) and ends with its drain.

use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use tidegate_proxy::drain::Shutdown;
use tidegate_proxy::handoff::HandoffKind;
use tidegate_proxy::listen::{Inherited, ListenKey, Listener};
use tidegate_proxy::upstream::connect::SystemResolver;
use tidegate_proxy::{Runtime, Serving};
use tidegate_testkit::{connect, Addr, Backend, Bind, RawConn, Reply, TcpBackend};

const T: Duration = Duration::from_secs(5);

fn config(app: &Addr, ws: &Addr, echo: &Addr) -> anyhow::Result<tidegate_config::Config> {
    let toml = format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
path = "/ws"
upstream = "ws"
[[listeners.web.routes]]
upstream = "app"

[listeners.tcp]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "echo"

[upstreams.app]
servers = ["{}"]
[upstreams.ws]
servers = ["{}"]
[upstreams.echo]
servers = ["{}"]
"#,
        app.to_config(),
        ws.to_config(),
        echo.to_config()
    );
    tidegate_config::load_str(&toml, None).map_err(|e| anyhow::anyhow!("{e}"))
}

fn start(
    config: &tidegate_config::Config,
    inherited: &mut Inherited,
) -> anyhow::Result<(Serving, Shutdown)> {
    let runtime = Runtime::bind_with(config, Arc::new(SystemResolver), inherited)
        .map_err(|e| anyhow::anyhow!("bind: {e:?}"))?;
    let shutdown = Shutdown::new();
    Ok((runtime.start(&shutdown), shutdown))
}

async fn request(c: &mut RawConn) -> anyhow::Result<String> {
    c.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await?;
    let r = c.read_response(T).await?;
    ensure!(r.status == 200, "{}", r.status);
    Ok(r.text())
}

async fn echo(c: &mut RawConn, frame: &[u8], expect: &[u8]) -> anyhow::Result<()> {
    c.send(frame).await?;
    c.read_until(expect, T).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_websockets_and_tunnels_move_to_the_new_proxy() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "app\n"))?;
    let ws = Backend::websocket_echo(Bind::Tcp4)?;
    let tcp = TcpBackend::echo(Bind::Tcp4)?;
    let config = config(app.addr(), ws.addr(), tcp.addr())?;
    let (old, old_shutdown) = start(&config, &mut Inherited::new())?;
    let addrs = old.addresses();
    let web: Addr = match &addrs.iter().find(|(l, _)| l == "web").context("web")?.1 {
        tidegate_proxy::listen::LocalAddr::Tcp(a) => (*a).into(),
        other => anyhow::bail!("{other}"),
    };
    let tun: Addr = match &addrs.iter().find(|(l, _)| l == "tcp").context("tcp")?.1 {
        tidegate_proxy::listen::LocalAddr::Tcp(a) => (*a).into(),
        other => anyhow::bail!("{other}"),
    };

    let mut idle = connect(&web).await?;
    ensure!(request(&mut idle).await? == "app\n");
    let mut socket = connect(&web).await?;
    socket
        .send(
            b"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await?;
    ensure!(socket.read_head(T).await?.status == 101);
    echo(&mut socket, &[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'], b"hi").await?;
    let mut tunnel = connect(&tun).await?;
    echo(&mut tunnel, b"one\n", b"one\n").await?;
    // The client sends while the tunnel moves: its bytes must arrive.
    tunnel.send(b"two\n").await?;

    // The new proxy takes the same sockets (duplicated, as SCM_RIGHTS would).
    let mut inherited = Inherited::new();
    for (name, key, l) in old.listening() {
        let fd = l.as_fd().try_clone_to_owned()?;
        let ListenKey::Tcp(_) = key else {
            anyhow::bail!("{key}")
        };
        inherited.push_for(&name, key, Listener::from_fd(fd, true)?);
    }
    let (new, new_shutdown) = start(&config, &mut inherited)?;
    ensure!(inherited.is_empty());
    old.stop_accepting();
    let mut rx = old.start_export().context("export")?;
    // Three connections can move (parking takes a moment after the last request).
    let mut moved = Vec::new();
    while moved.len() < 3 {
        let h = tokio::time::timeout(T, rx.recv())
            .await
            .with_context(|| format!("handoffs after {moved:?}"))?
            .context("channel closed")?;
        moved.push(match &h.kind {
            HandoffKind::Idle { .. } => format!("idle {}", h.listener),
            HandoffKind::Tunnel(t) => format!("{:?} {}", t.protocol, h.listener),
        });
        new.adopt(h);
    }
    moved.sort();
    assert_eq!(moved, ["Tcp tcp", "Websocket web", "idle web"]);
    old.finish_export();
    old_shutdown.drain();
    tokio::time::timeout(T, old_shutdown.tracker.wait())
        .await
        .context("the old proxy kept a connection")?;

    // Everything goes on in the new one.
    tunnel.read_until(b"two\n", T).await?;
    echo(&mut tunnel, b"three\n", b"three\n").await?;
    echo(&mut socket, &[0x81, 0x82, 0, 0, 0, 0, b'y', b'o'], b"yo").await?;
    ensure!(request(&mut idle).await? == "app\n");
    // And new connections are accepted by it, on the same port.
    let mut fresh = connect(&web).await?;
    ensure!(request(&mut fresh).await? == "app\n");
    ensure!(tcp.accepts() == 1, "the tunnel reconnected");
    ensure!(ws.accepts() == 1, "the WebSocket reconnected");
    new_shutdown.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_and_tunnels_are_not_handed_over_and_end_with_the_old_proxy(
) -> anyhow::Result<()> {
    use tidegate_testkit::tls::TestCa;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.leaf(dir.path(), "a", &["a.test"], None)?;
    let echo = TcpBackend::echo(Bind::Tcp4)?;
    let toml = format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]
tls = {{ certificates = [ {{ cert = "a.pem", key = "a.key" }} ] }}
[[listeners.web.routes]]
respond = {{ status = 200, body = "ok" }}

[listeners.tcp]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "echo"
tls = {{ certificates = [ {{ cert = "a.pem", key = "a.key" }} ] }}

[upstreams.echo]
servers = ["{}"]
"#,
        echo.addr().to_config()
    );
    let path = dir.path().join("tidegate.toml");
    let config =
        tidegate_config::load_str(&toml, Some(&path)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (old, old_shutdown) = start(&config, &mut Inherited::new())?;
    let addr = |name: &str| -> anyhow::Result<Addr> {
        match &old
            .addresses()
            .iter()
            .find(|(l, _)| l == name)
            .context("listener")?
            .1
        {
            tidegate_proxy::listen::LocalAddr::Tcp(a) => Ok((*a).into()),
            other => anyhow::bail!("{other}"),
        }
    };
    let mut idle = ca.connect(&addr("web")?, "a.test", T).await?;
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(T, idle.read(&mut buf)).await??;
    ensure!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let mut tunnel = ca.connect(&addr("tcp")?, "a.test", T).await?;
    tunnel.write_all(b"one\n").await?;
    let n = tokio::time::timeout(T, tunnel.read(&mut buf)).await??;
    ensure!(&buf[..n] == b"one\n");

    old.stop_accepting();
    let mut rx = old.start_export().context("export")?;
    // Parked and idle long past PARK_AFTER: a plain connection would have moved by now.
    let moved = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    ensure!(moved.is_err(), "a TLS connection was handed over");
    // Both still work here, on their own sessions.
    tunnel.write_all(b"two\n").await?;
    let n = tokio::time::timeout(T, tunnel.read(&mut buf)).await??;
    ensure!(&buf[..n] == b"two\n");
    old.finish_export();
    // The drain closes the idle one at once; the tunnel ends at the hard stop.
    old_shutdown.drain();
    let n = tokio::time::timeout(T, idle.read(&mut buf)).await?;
    ensure!(
        matches!(n, Ok(0) | Err(_)),
        "the idle TLS connection was not closed: {n:?}"
    );
    old_shutdown.abort();
    tokio::time::timeout(T, old_shutdown.tracker.wait())
        .await
        .context("the old proxy kept a connection")?;
    Ok(())
}
