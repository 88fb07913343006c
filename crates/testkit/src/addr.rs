//! Addresses in tidegate's syntax, what to bind a test backend to, and one stream type
//! over TCP and Unix sockets.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Where a test backend listens. Ports are always chosen by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// `127.0.0.1:0`.
    Tcp4,
    /// `[::1]:0`. Fails with a message (never skips) when IPv6 loopback is missing.
    Tcp6,
    /// A fresh `b.sock` in a temporary directory owned by the backend, removed on drop.
    Unix,
}

impl Bind {
    /// Every kind, for tests that must hold on each transport.
    pub const ALL: [Bind; 3] = [Bind::Tcp4, Bind::Tcp6, Bind::Unix];
}

/// A socket address as tidegate's config and logs write it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    /// An IPv4 or IPv6 socket address.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

// === impl Addr ===

impl Addr {
    /// tidegate's address syntax: `127.0.0.1:41234`, `[::1]:41234`, `unix:/tmp/x/b.sock`.
    pub fn to_config(&self) -> String {
        match self {
            Addr::Tcp(sa) => sa.to_string(),
            Addr::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    /// Parses tidegate's address syntax. Trailing Unix socket options
    /// (`:mode=660`, `:owner=..`, `:group=..`) are dropped; a relative Unix path is
    /// joined to `base`.
    pub fn parse(s: &str, base: &Path) -> anyhow::Result<Addr> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("unix:") {
            let mut path = rest;
            // Options come last, each `:key=value`; a path may itself contain ':'.
            while let Some((head, opt)) = path.rsplit_once(':') {
                match opt.split_once('=') {
                    Some(("mode" | "owner" | "group", _)) => path = head,
                    _ => break,
                }
            }
            if path.is_empty() {
                bail!("address {s:?}: empty Unix socket path");
            }
            return Ok(Addr::Unix(base.join(path)));
        }
        let sa: SocketAddr = s.parse().with_context(|| {
            format!("address {s:?}: expected IP:PORT, [IPv6]:PORT or unix:PATH")
        })?;
        Ok(Addr::Tcp(sa))
    }

    /// The TCP socket address, if this is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Addr::Tcp(sa) => Some(*sa),
            Addr::Unix(_) => None,
        }
    }

    /// Opens a stream to this address.
    pub async fn connect(&self) -> anyhow::Result<Stream> {
        match self {
            Addr::Tcp(sa) => TcpStream::connect(sa)
                .await
                .map(Stream::Tcp)
                .with_context(|| format!("connect to {sa}")),
            Addr::Unix(p) => UnixStream::connect(p)
                .await
                .map(Stream::Unix)
                .with_context(|| format!("connect to unix:{}", p.display())),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_config())
    }
}

impl From<SocketAddr> for Addr {
    fn from(sa: SocketAddr) -> Self {
        Addr::Tcp(sa)
    }
}

/// A connected stream over TCP or a Unix socket.
///
/// Implements tokio's `AsyncRead`/`AsyncWrite`, so it can carry a tokio-tungstenite client
/// (`client_async`) or any other protocol to a Unix listener as well as a TCP one.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream socket connection.
    Unix(UnixStream),
}

// === impl Stream ===

impl Stream {
    /// Arms an abortive close: on drop, a TCP socket sends RST instead of FIN
    /// (SO_LINGER with a zero timeout). A Unix socket has no reset; it closes normally.
    pub fn set_reset_on_drop(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// The local TCP address (None for a Unix socket).
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Unix(_) => None,
        }
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

/// A bound listener of either kind.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

// === impl Listener ===

impl Listener {
    /// Binds as `bind` says; for a Unix socket, also returns the directory holding it
    /// (removing the directory removes the socket file). Needs a tokio runtime.
    pub(crate) fn bind(bind: Bind) -> anyhow::Result<(Listener, Addr, Option<tempfile::TempDir>)> {
        match bind {
            Bind::Tcp4 => {
                let (l, a) = Self::bind_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
                Ok((l, a, None))
            }
            Bind::Tcp6 => {
                let (l, a) = Self::bind_tcp(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)))
                    .context("IPv6 loopback [::1] is needed by this test and is unavailable")?;
                Ok((l, a, None))
            }
            Bind::Unix => {
                let dir = short_tempdir()?;
                let path = dir.path().join("b.sock");
                let std = std::os::unix::net::UnixListener::bind(&path)
                    .with_context(|| format!("bind unix:{}", path.display()))?;
                std.set_nonblocking(true)?;
                let l = UnixListener::from_std(std).context("register Unix listener with tokio")?;
                Ok((Listener::Unix(l), Addr::Unix(path), Some(dir)))
            }
        }
    }

    fn bind_tcp(sa: SocketAddr) -> anyhow::Result<(Listener, Addr)> {
        let std = std::net::TcpListener::bind(sa).with_context(|| format!("bind {sa}"))?;
        std.set_nonblocking(true)?;
        let local = std.local_addr()?;
        let l = TcpListener::from_std(std).context("register TCP listener with tokio")?;
        Ok((Listener::Tcp(l), Addr::Tcp(local)))
    }

    /// Accepts one connection: the stream and a description of the peer.
    pub(crate) async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), "unix".to_string()))
            }
        }
    }
}

/// A temporary directory whose paths fit in a socket address (107 bytes) even when
/// `TMPDIR` is long.
pub(crate) fn short_tempdir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("tgkit")
        .tempdir()
        .context("create a temporary directory")?;
    if dir.path().as_os_str().len() <= 80 {
        return Ok(dir);
    }
    tempfile::Builder::new()
        .prefix("tgkit")
        .tempdir_in("/tmp")
        .context("create a temporary directory in /tmp (TMPDIR is too long for socket paths)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_syntax_round_trips() -> anyhow::Result<()> {
        let base = Path::new("/etc/tg");
        for s in ["127.0.0.1:41234", "[::1]:41234", "unix:/tmp/x/b.sock"] {
            assert_eq!(Addr::parse(s, base)?.to_config(), s);
        }
        assert_eq!(
            Addr::parse("unix:/run/a:b.sock:mode=660:owner=www", base)?,
            Addr::Unix("/run/a:b.sock".into())
        );
        assert_eq!(
            Addr::parse("unix:web.sock", base)?,
            Addr::Unix("/etc/tg/web.sock".into())
        );
        assert!(Addr::parse("localhost", base).is_err());
        Ok(())
    }
}
