//! TCP listening sockets, built with socket2 because std and tokio bind and listen in
//! one call, leaving no place to set options that must come before `bind`.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::BACKLOG;

/// Binds and listens on `addr`; the socket is nonblocking, ready for tokio.
pub(super) fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    // socket2 creates it close-on-exec: on-demand backends must not inherit it.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Without it, a restart while the previous process's connections sit in TIME_WAIT
    // fails with EADDRINUSE. On Linux it does not let two processes listen on the same
    // port (that would be SO_REUSEPORT).
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Whether `[::]:P` also takes IPv4 depends on net.ipv6.bindv6only otherwise;
        // with it set, `[::]:P` and `0.0.0.0:P` are two listeners and both bind, and a
        // v6 listener never sees v4-mapped peers.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
