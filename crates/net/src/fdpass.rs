//! Passing open descriptors between processes: a `SOCK_SEQPACKET` Unix socket pair
//! whose messages carry bytes and, with `SCM_RIGHTS`, descriptors (the binary upgrade
//! hands its listening sockets to the new process this way).
//!
//! Owns: the socket pair, one message per `send`/`recv` (sequenced packets keep
//! message boundaries, so a reader never sees half a message or two glued together),
//! received descriptors closed on exec (`MSG_CMSG_CLOEXEC`) and owned at once, and
//! end of file when the peer has closed its end (or exited).
//!
//! Boundaries: what the bytes mean is the caller's; this module only moves them. The one
//! `unsafe` of this crate is here: taking ownership of the descriptors the kernel has
//! just installed for a received message.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The most descriptors one message carries; a sender with more sends several
/// messages. The receiver's control buffer holds exactly this many, so a message with
/// more is refused as truncated rather than silently losing some.
pub const MAX_FDS: usize = 64;

/// The largest message received; longer ones are refused as truncated.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One end of a descriptor-passing socket pair, registered with tokio.
#[derive(Debug)]
pub struct Channel {
    // tokio has no sequenced-packet type (and `AsyncFd::new` is deprecated as unsound in
    // the tokio we use); a `UnixStream` serves only as the registration with the
    // reactor: every read and write goes through `sendmsg`/`recvmsg` on its descriptor
    // inside `async_io`, never through the stream's own methods.
    io: UnixStream,
}

/// One message received: its bytes and the descriptors it carried, in order.
#[derive(Debug)]
pub struct Message {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The descriptors, owned (close-on-exec) by the receiver now.
    pub fds: Vec<OwnedFd>,
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, both close-on-exec and
/// non-blocking. Give one end to another process (as its stdin, say, where the
/// spawning code clears close-on-exec in the child only) and wrap the other in
/// [`Channel::new`].
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(io::Error::from)
}

/// Refuses a descriptor that is not a `SOCK_SEQPACKET` socket: a wrong descriptor
/// (a terminal, `/dev/null`, a stream socket) fails with a clear error instead of
/// misreading its bytes.
pub fn check(fd: BorrowedFd<'_>) -> io::Result<()> {
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::SeqPacket) => Ok(()),
        Ok(other) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is a {other:?} socket, not a sequenced-packet Unix socket"),
        )),
        Err(Errno::ENOTSOCK) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a socket",
        )),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Sends one message now, without a runtime (for a process reporting a failure before
/// its runtime exists). Waits at most `bound` for room in the socket.
pub fn send_blocking(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    bound: std::time::Duration,
) -> io::Result<()> {
    let deadline = std::time::Instant::now() + bound;
    // Bounded by the deadline.
    loop {
        match send_raw(fd.as_raw_fd(), bytes, &[]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn send_raw(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    // MSG_NOSIGNAL: a peer that is gone is an EPIPE error, not a SIGPIPE.
    let sent = sendmsg::<UnixAddr>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

// === impl Channel ===

impl Channel {
    /// Wraps one end of a [`pair`] (or a descriptor passed in, after [`check`]). Sets it
    /// non-blocking. Must be called inside a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        check(fd.as_fd())?;
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        let io = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
        Ok(Channel { io })
    }

    /// Sends one message: `bytes`, with `fds` attached (at most [`MAX_FDS`]). The
    /// receiver gets its own copies; ours stay open.
    pub async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} descriptors in one message; at most {MAX_FDS}",
                    fds.len()
                ),
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let fd = self.io.as_raw_fd();
        self.io
            .async_io(Interest::WRITABLE, || send_raw(fd, bytes, &raw))
            .await
    }

    /// Receives one message; `None` once the peer has closed its end (or exited) and
    /// every message it sent has been read.
    pub async fn recv(&self) -> io::Result<Option<Message>> {
        let fd = self.io.as_raw_fd();
        self.io.async_io(Interest::READABLE, || recv_raw(fd)).await
    }
}

fn recv_raw(fd: RawFd) -> io::Result<Option<Message>> {
    match recv_one(fd) {
        // A peer that closed with our messages unread leaves ECONNRESET, which Linux
        // reports before the messages it sent us; reading on delivers them, then the end.
        Err(e) if e.raw_os_error() == Some(Errno::ECONNRESET as i32) => match recv_one(fd) {
            Err(e) if e.raw_os_error() == Some(Errno::ECONNRESET as i32) => Ok(None),
            other => other,
        },
        other => other,
    }
}

fn recv_one(fd: RawFd) -> io::Result<Option<Message>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, flags, received) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut received = Vec::new();
        // `Err` (ENOBUFS) when the control data was truncated: the descriptors that did
        // fit cannot be found safely, so they leak; the message is refused below.
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    received.extend(fds);
                }
            }
        }
        (msg.bytes, msg.flags, received)
    };
    #[allow(
        unsafe_code,
        reason = "a received descriptor is a bare number until something owns it"
    )]
    let fds: Vec<OwnedFd> = received
        .into_iter()
        // SAFETY: `recvmsg` just installed these descriptors in our table for this
        // message (SCM_RIGHTS); nothing else in the process knows their numbers, so
        // each is owned exactly once, here.
        .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
        .collect();
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message carried more than {MAX_FDS} descriptors"),
        ));
    }
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message was longer than {MAX_MESSAGE} bytes"),
        ));
    }
    if bytes == 0 && fds.is_empty() {
        // A sequenced-packet socket reads 0 bytes at end of file (we never send an
        // empty message).
        return Ok(None);
    }
    buf.truncate(bytes);
    Ok(Some(Message { bytes: buf, fds }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_carry_bytes_and_descriptors_and_end_with_eof() {
        let (a, b) = pair().unwrap();
        let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let file = std::fs::File::open("/dev/null").unwrap();
        a.send(b"one", &[file.as_fd()]).await.unwrap();
        a.send(b"two", &[]).await.unwrap();
        let m = b.recv().await.unwrap().unwrap();
        assert_eq!((m.bytes.as_slice(), m.fds.len()), (&b"one"[..], 1));
        let flags = nix::fcntl::fcntl(&m.fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & nix::libc::FD_CLOEXEC,
            0,
            "received fds are close-on-exec"
        );
        let m = b.recv().await.unwrap().unwrap();
        assert_eq!((m.bytes.as_slice(), m.fds.len()), (&b"two"[..], 0));
        drop(a);
        assert!(b.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_peer_that_closes_with_unread_messages_is_still_heard() {
        let (a, b) = pair().unwrap();
        let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        a.send(b"unread", &[]).await.unwrap();
        b.send(b"last words", &[]).await.unwrap();
        drop(b);
        let m = a.recv().await.unwrap().unwrap();
        assert_eq!(m.bytes, b"last words");
        assert!(a.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn only_a_seqpacket_socket_is_a_channel() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = Channel::new(OwnedFd::from(f)).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        let (s, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = Channel::new(OwnedFd::from(s)).unwrap_err();
        assert!(e.to_string().contains("Stream"), "{e}");
    }
}
