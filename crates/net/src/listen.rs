//! Listening sockets, TCP and Unix: binding them the way an operator expects, and
//! accepting connections as typed [`Stream`]s.
//!
//! Owns:
//! - TCP: `SO_REUSEADDR` (a restart is not refused because of `TIME_WAIT`),
//!   `IPV6_V6ONLY` on IPv6 sockets (so `[::]:80` and `0.0.0.0:80` can both be listened
//!   on), the backlog, and [`TcpOptions`] on every accepted connection.
//! - Unix (docs/design.md, "Unix sockets are not TCP"): the socket file is never
//!   reachable with looser permissions than configured, a stale file is replaced only
//!   when it is a socket nobody listens on, and on drop the file is removed only if it
//!   is still ours. See the `unix` submodule for how.
//!
//! Boundaries: this module binds and accepts. It does not loop, back off or count
//! connections — the accept loop does, and it gets every accept error unchanged so that
//! it can tell `EMFILE` (back off) from the rest.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use socket2::{Socket, Type};
use tidegate_config::addr::MAX_UNIX_PATH;
use tidegate_config::ListenAddr;
use tokio::net::{TcpListener, UnixListener};

use crate::endpoint::{PeerAddr, Stream, TcpOptions};
use crate::errno::describe_io_error;

mod tcp;
mod unix;

/// Pending connections the kernel queues before `accept`. The kernel caps it at
/// `net.core.somaxconn` (4096 on current kernels); 1024 is what nginx uses where it can
/// (its default of 511 predates the raised limit), enough for a burst while the accept
/// loop is busy.
pub const BACKLOG: i32 = 1024;

/// One bound listening socket, TCP or Unix.
///
/// Dropping it closes the socket and, for a Unix socket, removes the socket file if it
/// is still the one this listener created (same device and inode): another process may
/// have replaced it in the meantime, and its file is left alone.
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
    local: LocalAddr,
}

#[derive(Debug)]
enum Inner {
    Tcp {
        listener: TcpListener,
        options: TcpOptions,
    },
    Unix {
        // Held for its `Drop`, which removes the file if it is still ours. Field order
        // is drop order: the file is removed while the socket is still open, so its
        // inode cannot have been freed and reused by then — the (device, inode)
        // comparison in `SocketFile::drop` stays meaningful. `None`: a socket we did
        // not create (socket activation), whose file is never removed by us.
        file: Option<unix::SocketFile>,
        listener: UnixListener,
    },
}

/// The address a listener is bound to, for logs and the admin API: `127.0.0.1:41234`,
/// `[::1]:8080`, `unix:/run/x.sock` — with the real port when the config said port 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalAddr {
    /// A TCP listener's address.
    Tcp(SocketAddr),
    /// A Unix listener's socket file.
    Unix(PathBuf),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(a) => write!(f, "{a}"),
            LocalAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why a listener could not be bound. Every message starts with
/// `cannot listen on ADDR:` and names the errno, e.g.
/// `cannot listen on 127.0.0.1:8080: address already in use (EADDRINUSE)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A system call failed. `doing` names the step when it is not the bind itself
    /// (`chown to uid 33`); `hint` says what usually fixes it.
    #[error("cannot listen on {addr}: {}", os_message(.doing.as_deref(), .error, *.hint))]
    Os {
        /// The configured address.
        addr: ListenAddr,
        /// The step that failed, if not the bind itself.
        doing: Option<String>,
        /// The error, unchanged (not a `#[source]`: the message already says it all,
        /// and a cause-chain printer would repeat it).
        error: io::Error,
        /// What usually fixes it.
        hint: Option<&'static str>,
    },
    /// A process is accepting connections on the existing socket file.
    #[error("cannot listen on {addr}: another process is listening on this socket")]
    SocketInUse {
        /// The configured address.
        addr: ListenAddr,
    },
    /// Something other than a socket is at the path; tidegate never removes it.
    #[error(
        "cannot listen on {addr}: {} exists and is not a socket (it is {found}); not removing it",
        .path.display()
    )]
    NotASocket {
        /// The configured address.
        addr: ListenAddr,
        /// The path that is taken.
        path: PathBuf,
        /// What is there: "a regular file", "a symbolic link", …
        found: &'static str,
    },
    /// The socket file's directory does not exist. Like nginx, tidegate does not create
    /// it: a missing `/run/app` usually means a missing `RuntimeDirectory=` or a typo,
    /// and a directory created here would have whatever owner and mode we happen to have.
    #[error("cannot listen on {addr}: directory {} does not exist", .dir.display())]
    NoDirectory {
        /// The configured address.
        addr: ListenAddr,
        /// The missing directory.
        dir: PathBuf,
    },
    /// The path does not fit in a socket address (the config validator normally
    /// refuses it first).
    #[error(
        "cannot listen on {addr}: the path is {len} bytes long; a socket address holds at most {MAX_UNIX_PATH}"
    )]
    PathTooLong {
        /// The configured address.
        addr: ListenAddr,
        /// The path's length in bytes.
        len: usize,
    },
    /// [`Listener::bind`] was called outside a tokio runtime.
    #[error("cannot listen on {addr}: not called inside a tokio runtime")]
    NoRuntime {
        /// The configured address.
        addr: ListenAddr,
    },
}

fn os_message(doing: Option<&str>, error: &io::Error, hint: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(doing) = doing {
        s.push_str(doing);
        s.push_str(": ");
    }
    s.push_str(&describe_io_error(error));
    if let Some(hint) = hint {
        s.push_str("; ");
        s.push_str(hint);
    }
    s
}

// === impl ListenError ===

impl ListenError {
    /// The address that could not be listened on.
    pub fn addr(&self) -> &ListenAddr {
        match self {
            ListenError::Os { addr, .. }
            | ListenError::SocketInUse { addr }
            | ListenError::NotASocket { addr, .. }
            | ListenError::NoDirectory { addr, .. }
            | ListenError::PathTooLong { addr, .. }
            | ListenError::NoRuntime { addr } => addr,
        }
    }

    /// The OS error, when a system call failed.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            ListenError::Os { error, .. } => Some(error),
            _ => None,
        }
    }

    /// A failed system call, with the usual fix for the common TCP cases.
    fn os(addr: &ListenAddr, doing: Option<String>, error: io::Error) -> Self {
        let hint = match (addr, error.raw_os_error().map(Errno::from_raw)) {
            (ListenAddr::Tcp(a), Some(Errno::EACCES)) if a.port() < 1024 => {
                Some("ports below 1024 need root or CAP_NET_BIND_SERVICE")
            }
            (ListenAddr::Tcp(_), Some(Errno::EADDRNOTAVAIL)) => {
                Some("no network interface of this host has this address")
            }
            (ListenAddr::Tcp(a), Some(Errno::EAFNOSUPPORT)) if a.is_ipv6() => {
                Some("IPv6 is disabled on this host")
            }
            (_, Some(Errno::EMFILE | Errno::ENFILE)) => {
                Some("raise the open files limit (ulimit -n, LimitNOFILE=)")
            }
            _ => None,
        };
        ListenError::Os {
            addr: addr.clone(),
            doing,
            error,
            hint,
        }
    }
}

// === impl Listener ===

impl Listener {
    /// Binds `addr` and starts listening. Synchronous: it runs once per address at
    /// startup (or reload), and the Unix path needs a handful of file system calls in
    /// order. Must be called inside a tokio runtime with I/O enabled.
    ///
    /// `tcp` is applied to every connection accepted on a TCP listener; a Unix listener
    /// ignores it (there is nothing to apply: see [`crate::endpoint`]).
    pub fn bind(addr: &ListenAddr, tcp: TcpOptions) -> Result<Listener, ListenError> {
        // tokio's `from_std` panics outside a runtime; a startup error is kinder.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ListenError::NoRuntime { addr: addr.clone() });
        }
        match addr {
            ListenAddr::Tcp(sa) => {
                let std = tcp::bind(*sa).map_err(|e| ListenError::os(addr, None, e))?;
                let listener =
                    TcpListener::from_std(std).map_err(|e| ListenError::os(addr, None, e))?;
                let local = listener
                    .local_addr()
                    .map_err(|e| ListenError::os(addr, None, e))?;
                Ok(Listener {
                    inner: Inner::Tcp {
                        listener,
                        options: tcp,
                    },
                    local: LocalAddr::Tcp(local),
                })
            }
            ListenAddr::Unix(cfg) => {
                let (std, file) = unix::bind(addr, cfg)?;
                let listener =
                    UnixListener::from_std(std).map_err(|e| ListenError::os(addr, None, e))?;
                Ok(Listener {
                    inner: Inner::Unix {
                        file: Some(file),
                        listener,
                    },
                    local: LocalAddr::Unix(cfg.path.clone()),
                })
            }
        }
    }

    /// Accepts one connection. On TCP the listener's [`TcpOptions`] are applied; if
    /// that fails the connection is kept (it works, only less well) and the failure
    /// logged at debug. Errors are returned unchanged: the accept loop must back off on
    /// `EMFILE`/`ENFILE` rather than spin, and needs the errno to tell.
    pub async fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        match &self.inner {
            Inner::Tcp { listener, options } => {
                let (stream, peer) = listener.accept().await?;
                if let Err(e) = options.apply(&stream) {
                    tracing::debug!(
                        listener = %self.local,
                        %peer,
                        error = %describe_io_error(&e),
                        "cannot set TCP options on an accepted connection; keeping it"
                    );
                }
                Ok((Stream::Tcp(stream), PeerAddr::Tcp(peer)))
            }
            Inner::Unix { listener, .. } => {
                // Unix peers are unnamed (clients don't bind); nothing to report.
                let (stream, _) = listener.accept().await?;
                Ok((Stream::Unix(stream), PeerAddr::Unix))
            }
        }
    }

    /// The bound address, with the real port when the config said port 0.
    pub fn local_addr(&self) -> &LocalAddr {
        &self.local
    }

    /// Takes over a socket that is already listening: one systemd passed (socket
    /// activation, `owns_file = false`: its Unix socket file belongs to systemd and is
    /// never removed by us) or one the old process handed over in a binary upgrade
    /// (`owns_file = true`: the file is ours from now on, removed on drop if still the
    /// same). Refuses a descriptor that is not a listening stream socket, so a wrong
    /// `fd:N` fails at startup rather than at the first accept. Must be called inside
    /// a tokio runtime.
    pub fn from_fd(fd: OwnedFd, owns_file: bool) -> io::Result<Listener> {
        Listener::adopt(fd, owns_file, None)
    }

    /// [`Listener::from_fd`] for a Unix socket handed over by the old process of a
    /// binary upgrade, serving the file at `path` (owned from now on, removed on drop if
    /// still the same). The path is given because the socket's own address cannot say
    /// it: a socket is bound under a temporary name and then renamed into place (see the
    /// `unix` submodule), and `getsockname` still reports the temporary name. Refuses a
    /// TCP socket.
    pub fn from_fd_at(fd: OwnedFd, path: &Path) -> io::Result<Listener> {
        Listener::adopt(fd, true, Some(path))
    }

    fn adopt(fd: OwnedFd, owns_file: bool, at: Option<&Path>) -> io::Result<Listener> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(invalid("not called inside a tokio runtime".into()));
        }
        let socket = Socket::from(fd);
        // ENOTSOCK here: a file, a pipe, a terminal.
        let ty = socket.r#type()?;
        if ty != Type::STREAM {
            return Err(invalid("the socket is not a stream socket".into()));
        }
        if !socket.is_listener()? {
            return Err(invalid("the socket is not listening".into()));
        }
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        if let (Some(_), Some(p)) = (local.as_socket(), at) {
            return Err(invalid(format!(
                "the socket for {} is a TCP socket",
                p.display()
            )));
        }
        if let Some(sa) = local.as_socket() {
            let listener = TcpListener::from_std(socket.into())?;
            return Ok(Listener {
                inner: Inner::Tcp {
                    listener,
                    options: TcpOptions::default(),
                },
                local: LocalAddr::Tcp(sa),
            });
        }
        if local.is_unix() {
            // An abstract or unnamed socket has no file to own.
            let path = match at {
                Some(p) => Some(p.to_path_buf()),
                None => local.as_pathname().map(|p| p.to_path_buf()),
            };
            let file = match (&path, owns_file) {
                (Some(p), true) => Some(unix::SocketFile::adopt(p.clone())?),
                _ => None,
            };
            let shown = match (&path, local.as_abstract_namespace()) {
                (Some(p), _) => p.clone(),
                (None, Some(name)) => PathBuf::from(format!("@{}", String::from_utf8_lossy(name))),
                (None, None) => PathBuf::from("(unnamed)"),
            };
            let listener = UnixListener::from_std(socket.into())?;
            return Ok(Listener {
                inner: Inner::Unix { file, listener },
                local: LocalAddr::Unix(shown),
            });
        }
        Err(invalid(
            "the socket is neither TCP nor a Unix stream socket".into(),
        ))
    }

    /// Sets the [`TcpOptions`] applied to every connection accepted from now on (a
    /// socket from [`Listener::from_fd`] starts with the defaults). No-op on Unix.
    pub fn set_tcp_options(&mut self, tcp: TcpOptions) {
        if let Inner::Tcp { options, .. } = &mut self.inner {
            *options = tcp;
        }
    }

    /// Leaves this listener's Unix socket file in place when it is dropped: the socket
    /// has been handed to another process, which now owns the file. No-op on TCP.
    pub fn disown(&self) {
        if let Inner::Unix { file: Some(f), .. } = &self.inner {
            f.disown();
        }
    }

    /// Undoes [`Listener::disown`]: the file is removed on drop again (if still the
    /// same). A new process of an upgrade disowns the sockets it was handed until the
    /// old process has let go of them, so that a failed start never removes the files
    /// the old one still serves; then it reclaims them.
    pub fn reclaim(&self) {
        if let Inner::Unix { file: Some(f), .. } = &self.inner {
            f.reclaim();
        }
    }
}

/// Which configured address a listening socket serves, to match sockets passed in
/// (socket activation, a binary upgrade) to the config's addresses. A TCP key is the
/// address as configured, port 0 included: the new process of an upgrade, given the
/// same config, asks for the same key and gets the socket the old one bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenKey {
    /// `ip:port` as configured.
    Tcp(SocketAddr),
    /// A Unix socket file's path.
    Unix(PathBuf),
}

impl ListenKey {
    /// The key of a configured address.
    pub fn of(addr: &ListenAddr) -> ListenKey {
        match addr {
            ListenAddr::Tcp(a) => ListenKey::Tcp(*a),
            ListenAddr::Unix(u) => ListenKey::Unix(u.path.clone()),
        }
    }
}

impl fmt::Display for ListenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenKey::Tcp(a) => write!(f, "{a}"),
            ListenKey::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Listening sockets passed in before the config is bound (socket activation, a
/// binary upgrade), taken by the addresses that name them; those left over are closed
/// by the caller, with a warning.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: HashMap<ListenKey, Listener>,
}

impl Inherited {
    /// No sockets.
    pub fn new() -> Inherited {
        Inherited::default()
    }

    /// Adds a socket for `key`, returning the one it replaces.
    pub fn insert(&mut self, key: ListenKey, listener: Listener) -> Option<Listener> {
        self.sockets.insert(key, listener)
    }

    /// Takes the socket for `addr`, if one was passed in.
    pub fn take(&mut self, addr: &ListenAddr) -> Option<Listener> {
        self.sockets.remove(&ListenKey::of(addr))
    }

    /// Whether no socket is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Every socket left, with its key.
    pub fn drain(&mut self) -> impl Iterator<Item = (ListenKey, Listener)> + '_ {
        self.sockets.drain()
    }
}

/// The listening socket itself, for socket options and for handing it to a child.
impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Tcp { listener, .. } => listener.as_fd(),
            Inner::Unix { listener, .. } => listener.as_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener as StdUnixListener;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidegate-net-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn from_fd_takes_a_listening_tcp_socket_and_accepts_on_it() {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std.local_addr().unwrap();
        let l = Listener::from_fd(OwnedFd::from(std), false).unwrap();
        assert_eq!(l.local_addr(), &LocalAddr::Tcp(addr));
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, _) = tokio::join!(l.accept(), client);
        assert!(matches!(accepted.unwrap().0, Stream::Tcp(_)));
    }

    #[tokio::test]
    async fn from_fd_refuses_what_is_not_a_listening_stream_socket() {
        // Bound but not listening.
        let s = Socket::new(socket2::Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let e = Listener::from_fd(OwnedFd::from(s), false).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
        // A datagram socket.
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = Listener::from_fd(OwnedFd::from(u), false).unwrap_err();
        assert!(e.to_string().contains("not a stream socket"), "{e}");
        // Not a socket at all.
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(Listener::from_fd(OwnedFd::from(f), false).is_err());
    }

    #[tokio::test]
    async fn a_handed_over_unix_socket_serves_the_path_it_was_renamed_to() {
        let dir = temp_dir("fromfdat");
        let path = dir.join("b.sock");
        let addr =
            tidegate_config::parse::listen_addr(&format!("unix:{}", path.display()), &dir).unwrap();
        let bound = Listener::bind(&addr, TcpOptions::default()).unwrap();
        let fd = bound.as_fd().try_clone_to_owned().unwrap();
        bound.disown();
        drop(bound);
        let l = Listener::from_fd_at(fd, &path).unwrap();
        assert_eq!(l.local_addr(), &LocalAddr::Unix(path.clone()));
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, _) = tokio::join!(l.accept(), client);
        assert!(matches!(accepted.unwrap().0, Stream::Unix(_)));
        drop(l);
        assert!(!path.exists(), "owned: removed on drop");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(Listener::from_fd_at(OwnedFd::from(tcp), &path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_unix_socket_file_is_removed_on_drop_only_when_owned_and_not_disowned() {
        let dir = temp_dir("fromfd");
        let path = dir.join("a.sock");
        for (owns, disown, removed) in [
            (false, false, false),
            (true, true, false),
            (true, false, true),
        ] {
            let std = StdUnixListener::bind(&path).unwrap();
            let l = Listener::from_fd(OwnedFd::from(std), owns).unwrap();
            assert_eq!(l.local_addr(), &LocalAddr::Unix(path.clone()));
            if disown {
                l.disown();
            }
            if owns && !disown {
                // Disowned, then reclaimed: owned again.
                l.disown();
                l.reclaim();
            }
            drop(l);
            assert_eq!(!path.exists(), removed, "owns {owns} disown {disown}");
            let _ = std::fs::remove_file(&path);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
