//! Typed endpoints: a connection is either TCP or Unix, and socket options that only
//! make sense on TCP (`TCP_NODELAY`, TCP keepalive) exist only on the TCP type.
//!
//! This makes the failure of docs/design.md, "Unix sockets are not TCP", impossible: a
//! network library that set `TCP_NODELAY` on a Unix socket got `EOPNOTSUPP` and the
//! error cascaded. Here the option is a method of [`TcpOptions`], which is applied to a
//! [`tokio::net::TcpStream`] only; there is nothing to call on a Unix stream:
//!
//! ```compile_fail,E0308
//! use tidegate_net::endpoint::TcpOptions;
//! fn f(unix: &tokio::net::UnixStream) {
//!     TcpOptions::default().apply(unix); // error: expected `&TcpStream`
//! }
//! ```
//!
//! ```
//! use tidegate_net::endpoint::TcpOptions;
//! fn f(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
//!     TcpOptions::default().apply(tcp)
//! }
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tidegate_config::defaults;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Options for TCP sockets only. There is deliberately no way to apply them to a Unix
/// socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    /// Disable Nagle's algorithm (a proxy forwards what it has at once).
    pub nodelay: bool,
    /// Idle time before keepalive probes; `None` leaves keepalive off.
    pub keepalive: Option<Duration>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            nodelay: true,
            keepalive: Some(defaults::TCP_KEEPALIVE),
        }
    }
}

impl TcpOptions {
    /// Applies these options to a connected TCP socket.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        if let Some(idle) = self.keepalive {
            let ka = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(defaults::TCP_KEEPALIVE_INTERVAL)
                .with_retries(defaults::TCP_KEEPALIVE_PROBES);
            socket2::SockRef::from(stream).set_tcp_keepalive(&ka)?;
        }
        Ok(())
    }
}

/// A peer's address: an IP socket address, or a Unix socket (whose peers are unnamed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix-socket peer.
    Unix,
}

impl PeerAddr {
    /// The IP address, for `X-Forwarded-For` (a Unix client adds nothing).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            PeerAddr::Tcp(a) => Some(a.ip()),
            PeerAddr::Unix => None,
        }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix => f.write_str("unix"),
        }
    }
}

/// A connected stream of either family, for code that only moves bytes.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection (options already applied).
    Tcp(TcpStream),
    /// A Unix-socket connection.
    Unix(UnixStream),
}

// === impl Stream ===

impl Stream {
    /// Takes over a connected stream socket passed by another process (a binary
    /// upgrade hands its connections over): TCP or Unix by the socket's family, made
    /// non-blocking. Must be called inside a tokio runtime.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Stream> {
        let socket = socket2::Socket::from(fd);
        if socket.r#type()? != socket2::Type::STREAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a stream socket",
            ));
        }
        socket.set_nonblocking(true)?;
        let domain = socket.domain()?;
        if domain == socket2::Domain::UNIX {
            let std: std::os::unix::net::UnixStream = socket.into();
            Ok(Stream::Unix(UnixStream::from_std(std)?))
        } else if domain == socket2::Domain::IPV4 || domain == socket2::Domain::IPV6 {
            let std: std::net::TcpStream = socket.into();
            Ok(Stream::Tcp(TcpStream::from_std(std)?))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither a TCP nor a Unix socket",
            ))
        }
    }

    /// The other end: a TCP peer's address, or `Unix` (Unix peers are unnamed).
    pub fn peer_addr(&self) -> io::Result<PeerAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(PeerAddr::Tcp),
            Stream::Unix(_) => Ok(PeerAddr::Unix),
        }
    }

    /// Our end's address, on TCP.
    pub fn local_tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Unix(_) => None,
        }
    }

    /// Resolves when the socket has something to read (bytes, EOF or an error); reads
    /// nothing, so a parked connection needs no buffer while it waits.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }

    /// Copies the bytes waiting in the socket's receive queue into `buf` without taking
    /// them (`MSG_PEEK`), so the owner still reads everything: `Ok(0)` at the peer's
    /// end, `WouldBlock` when nothing is waiting (the readiness is cleared then).
    pub fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::{AsFd, AsRawFd};
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        let mut peek = |fd: std::os::fd::BorrowedFd<'_>| {
            recv(fd.as_raw_fd(), buf, flags).map_err(io::Error::from)
        };
        match self {
            Stream::Tcp(s) => s.try_io(tokio::io::Interest::READABLE, || peek(s.as_fd())),
            Stream::Unix(s) => s.try_io(tokio::io::Interest::READABLE, || peek(s.as_fd())),
        }
    }

    /// A second handle on this socket (a `dup` of its descriptor, registered with the
    /// runtime), to notice the peer's end while another owner (hyper) holds the stream
    /// and is not reading. Closing it leaves the socket open.
    pub fn end_watch(&self) -> io::Result<EndWatch> {
        use std::os::fd::AsFd;
        let stream = match self {
            Stream::Tcp(s) => {
                let fd = s.as_fd().try_clone_to_owned()?;
                Stream::Tcp(TcpStream::from_std(std::net::TcpStream::from(fd))?)
            }
            Stream::Unix(s) => {
                let fd = s.as_fd().try_clone_to_owned()?;
                Stream::Unix(UnixStream::from_std(std::os::unix::net::UnixStream::from(
                    fd,
                ))?)
            }
        };
        Ok(EndWatch(stream))
    }
}

/// What is waiting on a socket, seen without reading it ([`EndWatch::poll_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The peer shut down its sending side (a FIN) and every byte before it was read.
    End,
    /// Bytes the owner has not read yet.
    Bytes,
}

/// A handle that looks at a socket's receive queue without taking anything from it
/// (see [`Stream::end_watch`]).
#[derive(Debug)]
pub struct EndWatch(Stream);

impl EndWatch {
    /// Ready when something is waiting: the peer's end, unread bytes, or an error (a
    /// reset). Peeks one byte (`MSG_PEEK`), so the owner still reads everything.
    pub fn poll_end(&self, cx: &mut Context<'_>) -> Poll<io::Result<Waiting>> {
        fn peek(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
            let mut one = [std::mem::MaybeUninit::<u8>::uninit()];
            socket2::SockRef::from(&fd).peek(&mut one)
        }
        use std::os::fd::AsFd;
        loop {
            let res = match &self.0 {
                Stream::Tcp(s) => {
                    std::task::ready!(s.poll_read_ready(cx))?;
                    s.try_io(tokio::io::Interest::READABLE, || peek(s.as_fd()))
                }
                Stream::Unix(s) => {
                    std::task::ready!(s.poll_read_ready(cx))?;
                    s.try_io(tokio::io::Interest::READABLE, || peek(s.as_fd()))
                }
            };
            return Poll::Ready(match res {
                Ok(0) => Ok(Waiting::End),
                Ok(_) => Ok(Waiting::Bytes),
                // Readiness was stale (cleared by the failed peek): wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => Err(e),
            });
        }
    }

    /// Whether the peer has shut down its sending side (its FIN arrived), even behind
    /// bytes not yet read (`POLLRDHUP`), which a peek cannot see past. On TLS the bytes
    /// waiting may be the client's `close_notify` with its FIN behind them.
    pub fn peer_shut_down(&self) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let fd = self.0.as_fd();
        // Asking for POLLRDHUP alone, any event reported is it, a hang-up or an error
        // (a reset): each one an end. (nix's `revents` has no name for POLLRDHUP, so
        // the count of ready descriptors is what says it.)
        let rdhup = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
        let mut fds = [PollFd::new(fd, rdhup)];
        let ready = poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
        Ok(ready > 0)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The socket itself (to pass it to another process).
impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn a_fin_behind_unread_bytes_is_seen_without_reading_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server = Stream::Tcp(server);
        let watch = server.end_watch().unwrap();
        assert!(!watch.peer_shut_down().unwrap());
        client.write_all(b"bytes").await.unwrap();
        client.shutdown().await.unwrap();
        let waiting = std::future::poll_fn(|cx| watch.poll_end(cx)).await.unwrap();
        assert_eq!(waiting, Waiting::Bytes);
        // Bounded: the FIN is on loopback, right behind the bytes.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !watch.peer_shut_down().unwrap() {
            assert!(std::time::Instant::now() < deadline, "no FIN seen");
            tokio::task::yield_now().await;
        }
        // Still unread.
        let waiting = std::future::poll_fn(|cx| watch.poll_end(cx)).await.unwrap();
        assert_eq!(waiting, Waiting::Bytes);
    }
    #[tokio::test]
    async fn a_peek_sees_waiting_bytes_and_takes_none() {
        use tokio::io::AsyncReadExt as _;
        let (a, mut b) = UnixStream::pair().unwrap();
        let a = Stream::Unix(a);
        let mut buf = [0u8; 8];
        let nothing = a.try_peek(&mut buf).unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
        b.write_all(b"GET /").await.unwrap();
        a.readable().await.unwrap();
        assert_eq!(a.try_peek(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"GET /");
        let (mut a, mut got) = (a, [0u8; 5]);
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /");
        drop(b);
        a.readable().await.unwrap();
        assert_eq!(a.try_peek(&mut buf).unwrap(), 0, "the end");
    }
}
