//! One I/O wrapper that tells an observer how many bytes moved each way. Client
//! connections report to their `http::client_conn::ClientConn` (phases, idle timers,
//! counters), upstream connections to their registry entry (counters only).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Told of every read and write that moved bytes.
pub trait IoObserver: Send + Sync {
    /// `n` (> 0) bytes were read from the peer.
    fn read(&self, n: usize);
    /// `n` (> 0) bytes were written to the peer.
    fn wrote(&self, n: usize);
    /// A read was attempted (whatever came of it). Client connections count these to
    /// tell whether hyper touched the socket while being parked.
    fn read_attempted(&self) {}
    /// A write was attempted: bytes may sit unflushed until [`IoObserver::flushed`].
    fn write_attempted(&self) {}
    /// A flush completed: everything written so far has reached the socket.
    fn flushed(&self) {}
}

/// A stream that reports its reads and writes to `O`.
#[derive(Debug)]
pub struct Observed<T, O> {
    inner: T,
    observer: Arc<O>,
}

impl<T, O> Observed<T, O> {
    /// Wraps `inner`, reporting to `observer`.
    pub fn new(inner: T, observer: Arc<O>) -> Self {
        Observed { inner, observer }
    }

    /// The wrapped stream, to wait on it (a parked TLS connection).
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped stream, no longer observed.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin, O: IoObserver> AsyncRead for Observed<T, O> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.observer.read_attempted();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.observer.read(n);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin, O: IoObserver> AsyncWrite for Observed<T, O> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.observer.write_attempted();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                this.observer.wrote(n);
            }
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.observer.write_attempted();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                this.observer.wrote(n);
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            this.observer.flushed();
        }
        res
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
