//! After a 101: the client's socket and the upstream's joined into a tunnel, in the
//! client connection's own task. The copy is `tcp::copy`'s (the same pumps as TCP mode),
//! so a tunnel can be handed to a new process in a binary upgrade with every byte read
//! and not yet written (see [`crate::handoff`]).

use std::sync::Arc;

use hyper_util::rt::TokioIo;

use super::client_conn::{ClientConn, ClientIo, Phase, Verdict};
use super::upgrade::Upgrade;
use crate::drain::Shutdown;
use crate::handoff::{Pending, Tunnel};
use crate::observed::Observed;
use crate::registry::{Conn, ConnProtocol, ConnState, Registry};
use crate::tcp::copy::{self, Ending, PendingError, TunnelStats};
use crate::tls::ClientStream;

/// The upstream connection's I/O inside hyper's client (`upstream::pool`): what an
/// upgraded upstream is downcast to, to get its socket back.
type UpstreamIo = TokioIo<Observed<crate::upstream::tls::UpstreamIo, Conn>>;

impl PendingError for ClientIo {
    fn take_error(&self) -> std::io::Result<Option<std::io::Error>> {
        self.get_ref().get_ref().take_error()
    }
}

/// After a 101: bytes both ways between `socket` (the client's socket, with whatever
/// it sent after its request put back in front) and the upstream, until either side
/// closes, the exchange's idle timer expires, the drain's grace ends or the connection
/// is closed through the registry. `client` is the client connection's state (the `Observed`
/// inside `socket` still counts its bytes); holding it keeps the connection listed.
/// With an export running (`shutdown.export`), the tunnel is handed to the new process
/// instead, `listener` naming the listener it belongs to.
pub(crate) async fn tunnel(
    socket: ClientIo,
    upgrade: Box<Upgrade>,
    client: Arc<ClientConn>,
    registry: Arc<Registry>,
    shutdown: &Shutdown,
    listener: &str,
) {
    let Upgrade {
        upstream,
        conn,
        active,
        idle,
    } = *upgrade;
    let upstream = match upstream.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let close = client.conn().close_token().clone();
    // The upstream side's entry, as a tunnel end: dropped with the tunnel.
    let _upstream_entry = conn.entry().map(|e| {
        registry.register_mirror(
            e.successor(ConnProtocol::Websocket, ConnState::Tunnel, close.clone()),
            client.conn(),
        )
    });
    // The checkout's own entry goes: the successor above lists the socket now.
    drop(conn);
    client.set_exchange_idle(idle);
    let parts = match upstream.downcast::<UpstreamIo>() {
        Ok(parts) => parts,
        Err(upstream) => {
            // Not the pool's socket type (cannot happen today): a plain copy, which
            // cannot be handed over.
            copy_in_place(socket, TokioIo::new(upstream), &[], &client, idle, &close).await;
            return;
        }
    };
    let mut upstream_stream = match parts.io.into_inner().into_inner() {
        crate::upstream::tls::UpstreamIo::Plain(s) => s,
        // A TLS session toward the upstream cannot move to another process either: a
        // copy here, what hyper read after the 101 first.
        tls @ crate::upstream::tls::UpstreamIo::Tls(_) => {
            copy_in_place(socket, tls, &parts.read_buf, &client, idle, &close).await;
            return;
        }
    };
    // What the upstream sent after its 101, read by hyper: the client's first.
    let mut pending = Pending {
        to_upstream: Vec::new(),
        to_client: parts.read_buf.to_vec(),
    };
    let mut socket = socket;
    // Bytes are counted by the `Observed` inside `socket` (the client's entry, which
    // the upstream end mirrors): this copy's own counters are detached.
    let stats = TunnelStats::new();
    // Bounded: a turn ends the tunnel, hands it over (a return), or finds the export
    // closed meanwhile, after which no turn stops for it.
    let ending = loop {
        let export = &shutdown.export;
        // A TLS session cannot move to another process: it ends here.
        let watching = !socket.get_ref().get_ref().is_tls()
            && (!export.token().is_cancelled() || export.is_open());
        let ending = copy::run_with(
            &mut socket,
            &mut upstream_stream,
            idle,
            &close,
            &stats,
            watching.then(|| export.token()),
            std::mem::take(&mut pending),
        )
        .await;
        let Ending::Exported(mut moving) = ending else {
            break ending;
        };
        // Bytes the client sent with its request, not yet read by the copy, go first.
        let (prefix, observed) = socket.into_parts();
        let plain = match observed.into_inner().into_plain() {
            Ok(plain) => plain,
            // Not watched for an export (above); goes on here all the same.
            Err(tls) => {
                socket = ClientIo::new(Observed::new(tls, client.clone()));
                socket.put_back(prefix);
                pending = moving;
                continue;
            }
        };
        if !prefix.is_empty() {
            let mut first = prefix.to_vec();
            first.extend_from_slice(&moving.to_upstream);
            moving.to_upstream = first;
        }
        let tunnel = Tunnel {
            protocol: ConnProtocol::Websocket,
            client: plain,
            upstream: upstream_stream,
            pending: moving,
            upstream_name: active.upstream().name.clone(),
            server: active.server().addr.to_string(),
        };
        let Err(back) = export.send_tunnel(listener, tunnel) else {
            tracing::debug!(listener, "tunnel handed to the new process");
            return;
        };
        // The export ended meanwhile: go on here (the bytes now wait in the pumps).
        let back = *back;
        socket = ClientIo::new(Observed::new(
            ClientStream::Plain(back.client),
            client.clone(),
        ));
        (upstream_stream, pending) = (back.upstream, back.pending);
    };
    match ending {
        Ending::Failed { side, op, error } => tracing::debug!(%side, op = op.as_str(),
            error = %crate::errno::describe_io_error(&error), "tunnel closed"),
        Ending::Idle => tracing::debug!("tunnel closed: idle_timeout"),
        Ending::Shutdown => {
            tracing::debug!("tunnel closed: shutdown or closed by the operator")
        }
        Ending::Closed { first } => tracing::debug!(%first, "tunnel closed"),
        Ending::Exported(_) => {}
    }
    drop(active);
}

/// A tunnel that is never handed over: `first` (bytes the upstream sent after its 101)
/// to the client, then bytes both ways until either side closes, the idle timer
/// expires or the connection is closed.
async fn copy_in_place(
    mut socket: ClientIo,
    mut upstream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    first: &[u8],
    client: &ClientConn,
    idle: std::time::Duration,
    close: &tokio_util::sync::CancellationToken,
) {
    use tokio::io::AsyncWriteExt as _;
    if !first.is_empty() {
        if let Err(e) = socket.write_all(first).await {
            tracing::debug!(error = %crate::errno::describe_io_error(&e), "tunnel closed");
            return;
        }
    }
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut socket, &mut upstream) => match res {
            Ok((up, down)) => tracing::debug!(to_upstream = up, to_client = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %crate::errno::describe_io_error(&e), "tunnel closed"),
        },
        _ = expired(client, idle) => tracing::debug!("tunnel closed: idle_timeout"),
        _ = close.cancelled() => tracing::debug!("tunnel closed: shutdown or closed by the operator"),
    }
}

/// When the tunnel's idle timer expires (no byte either way for `idle`), as the
/// exchange's phase it expired in.
pub(crate) async fn expired(client: &ClientConn, idle: std::time::Duration) -> Phase {
    // Bounded: each turn sleeps until the next deadline the connection state gives.
    loop {
        match client.verdict(idle, idle) {
            Verdict::Expired(phase) => return phase,
            Verdict::WaitUntil(t) => tokio::time::sleep_until(t).await,
        }
    }
}
