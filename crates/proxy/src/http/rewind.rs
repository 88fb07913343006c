//! A client stream with bytes already read put back in front of it.
//!
//! A parked keep-alive connection (see [`super::serve_connection`]) hands hyper's read
//! buffer back when it stops serving; a pipelined request or the first bytes after an
//! upgrade may sit in it. They are read again from here before the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, read after `prefix`.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner` with nothing put back.
    pub fn new(inner: T) -> Self {
        Rewind {
            prefix: Bytes::new(),
            inner,
        }
    }

    /// Puts `bytes` back: they are read before anything else, then whatever was put
    /// back before and is still unread (hyper may stop reading, at an upgrade, before
    /// it has taken all of it), then the stream.
    pub fn put_back(&mut self, bytes: Bytes) {
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else if !bytes.is_empty() {
            let mut joined = BytesMut::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.prefix);
            self.prefix = joined.freeze();
        }
    }

    /// Whether bytes put back are still unread.
    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The wrapped stream, to wait on it (a parked TLS connection).
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The bytes put back and still unread, and the stream (a connection handed to
    /// another process takes both).
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }

    /// The wrapped stream, or `Err(self)` while bytes put back are unread (they would
    /// be lost).
    pub fn into_inner(self) -> Result<T, Self> {
        if self.has_prefix() {
            Err(self)
        } else {
            Ok(self.inner)
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // An emptied `Bytes` still holds its buffer: an idle connection keeps
                // no allocation for bytes it has served.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn put_back_bytes_come_first_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind::new(a);
        r.put_back(Bytes::from_static(b"GET / HT"));
        assert!(r.has_prefix());
        b.write_all(b"TP/1.1\r\n").await.unwrap();
        let mut got = [0u8; 5];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /");
        let mut rest = [0u8; 11];
        r.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b" HTTP/1.1\r\n");
        assert!(!r.has_prefix());
    }

    #[tokio::test]
    async fn bytes_put_back_go_before_what_is_still_unread() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind::new(a);
        r.put_back(Bytes::from_static(b"0123456789"));
        let mut got = [0u8; 4];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"0123");
        // hyper hands back "ab" (read earlier, not consumed) while "456789" is unread.
        r.put_back(Bytes::from_static(b"ab"));
        b.write_all(b"!").await.unwrap();
        let mut all = [0u8; 9];
        r.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"ab456789!");
    }
}
