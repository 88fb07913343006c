//! A TCP address where connect attempts hang: a listener that never accepts, its accept
//! queue full.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context as _};
use socket2::{Domain, Protocol, Socket, Type};

use crate::addr::Addr;

/// How long one filling connect may take before the queue counts as full.
const FILL_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// The most filling connections tried.
const MAX_FILL: usize = 64;

/// A listener on `127.0.0.1` that never accepts and whose accept queue is full, so the
/// kernel drops further SYNs and a connect to [`Blackhole::addr`] hangs (until the
/// client's own timeout). Models an unreachable upstream for connect-timeout tests.
///
/// Relies on Linux behaviour: with the accept queue full, an incoming SYN is dropped
/// (whatever `tcp_abort_on_overflow` and syncookies say; that setting only governs the
/// final ACK). The connections that fill the queue are kept open in this value.
pub struct Blackhole {
    addr: SocketAddr,
    _listener: Socket,
    fillers: Vec<TcpStream>,
}

/// Creates a [`Blackhole`]. Blocks for about 100 ms (the last, hanging, filler connect),
/// so it may be called from sync or async code.
pub fn blackhole_listener() -> anyhow::Result<Blackhole> {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .context("blackhole: create socket")?;
    listener
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .context("blackhole: bind 127.0.0.1:0")?;
    // Backlog 0: the queue holds one established connection (Linux compares with `>`).
    listener.listen(0).context("blackhole: listen(0)")?;
    let addr = listener
        .local_addr()
        .context("blackhole: local address")?
        .as_socket()
        .context("blackhole: local address is not an IP socket address")?;

    let mut fillers = Vec::new();
    for _ in 0..MAX_FILL {
        match TcpStream::connect_timeout(&addr, FILL_CONNECT_TIMEOUT) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                // This SYN was dropped: the queue is full. The attempt is abandoned by
                // closing its socket, which `connect_timeout` has done.
                return Ok(Blackhole {
                    addr,
                    _listener: listener,
                    fillers,
                });
            }
            Err(e) => return Err(e).with_context(|| format!("blackhole: fill connect to {addr}")),
        }
    }
    bail!("blackhole: {addr} still accepted connects after {MAX_FILL}; the kernel does not drop SYNs on a full accept queue here")
}

impl Blackhole {
    /// The address whose connects hang.
    pub fn addr(&self) -> Addr {
        Addr::Tcp(self.addr)
    }

    /// How many connections fill the accept queue.
    pub fn fillers(&self) -> usize {
        self.fillers.len()
    }
}

impl std::fmt::Debug for Blackhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blackhole")
            .field("addr", &self.addr)
            .field("fillers", &self.fillers.len())
            .finish()
    }
}
