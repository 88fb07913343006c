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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
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
    /// A `systemd:NAME` or `fd:N` address without a usable socket passed in: nothing
    /// was passed under that name or number, or what was is not a listening socket.
    /// `why` says which, e.g. `systemd passed no socket named web (LISTEN_FDNAMES has:
    /// a, b)` or `descriptor 5 is not a listening socket: the socket is not listening`.
    #[error("cannot listen on {addr}: {why}")]
    NotPassed {
        /// The configured address.
        addr: ListenAddr,
        /// What is missing, or what is wrong with what was passed.
        why: String,
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
            | ListenError::NoRuntime { addr }
            | ListenError::NotPassed { addr, .. } => addr,
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
    ///
    /// A `systemd:NAME` or `fd:N` address has nothing to bind: its socket must have been
    /// passed in ([`Inherited`]), and this returns [`ListenError::NotPassed`].
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
            ListenAddr::Systemd(_) | ListenAddr::Fd(_) => Err(Inherited::new().missing(addr)),
        }
    }

    /// Accepts one connection. On TCP the listener's [`TcpOptions`] are applied; if
    /// that fails the connection is kept (it works, only less well) and the failure
    /// logged at debug. Errors are returned unchanged: the accept loop must back off on
    /// `EMFILE`/`ENFILE` rather than spin, and needs the errno to tell.
    pub async fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        let tcp = match &self.inner {
            Inner::Tcp { options, .. } => *options,
            Inner::Unix { .. } => TcpOptions::default(),
        };
        self.accept_with(tcp).await
    }

    /// [`Listener::accept`] with these [`TcpOptions`] instead of the listener's own:
    /// a reload may change them while the socket stays.
    pub async fn accept_with(&self, options: TcpOptions) -> io::Result<(Stream, PeerAddr)> {
        match &self.inner {
            Inner::Tcp { listener, .. } => {
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
        check_listening(&fd)?;
        let socket = Socket::from(fd);
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

    /// Stops the socket listening now, from any thread, while an accept may be waiting
    /// on it: new connections are refused at once (`shutdown(2)` on a listening socket
    /// ends its listening state; a waiting accept fails and its loop ends). Only for a
    /// socket no other process shares: it acts on the socket, not this descriptor.
    pub fn stop_listening(&self) {
        if let Err(e) = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both) {
            tracing::debug!(listener = %self.local, error = %describe_io_error(&e), "cannot shut the listening socket down; it closes when its accept loop ends");
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

/// Whether `fd` is a listening stream socket, as [`Listener::from_fd`] requires; the
/// error says what it is instead (`the socket is not listening`, `the socket is not a
/// stream socket`, or `ENOTSOCK` for a file, a pipe, a terminal). For a caller that must
/// know before taking a descriptor over.
pub fn check_listening(fd: &impl AsFd) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let socket = socket2::SockRef::from(fd);
    if socket.r#type()? != Type::STREAM {
        return Err(invalid("the socket is not a stream socket"));
    }
    if !socket.is_listener()? {
        return Err(invalid("the socket is not listening"));
    }
    Ok(())
}

/// Which configured address a listening socket serves, to match sockets passed in
/// (socket activation, a binary upgrade) to the config's addresses. A TCP key is the
/// address as configured, port 0 included: the new process of an upgrade, given the
/// same config, asks for the same key and gets the socket the old one bound.
///
/// A `systemd:NAME` key may have several sockets (every one systemd passed under that
/// name); the other keys have one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenKey {
    /// `ip:port` as configured.
    Tcp(SocketAddr),
    /// A Unix socket file's path.
    Unix(PathBuf),
    /// `systemd:NAME`: the sockets systemd passed with `FileDescriptorName=NAME`.
    Systemd(String),
    /// `fd:N`: descriptor N as it was passed in.
    Fd(RawFd),
}

impl ListenKey {
    /// The key of a configured address.
    pub fn of(addr: &ListenAddr) -> ListenKey {
        match addr {
            ListenAddr::Tcp(a) => ListenKey::Tcp(*a),
            ListenAddr::Unix(u) => ListenKey::Unix(u.path.clone()),
            ListenAddr::Systemd(name) => ListenKey::Systemd(name.clone()),
            ListenAddr::Fd(n) => ListenKey::Fd(*n),
        }
    }

    /// Whether a socket under this key has a socket file tidegate owns (removes on
    /// exit): only a `unix:` address tidegate bound. A `systemd:` or `fd:` socket's file
    /// belongs to whoever created it, so a process taking such a socket over (from
    /// systemd or, in an upgrade, from the old process) passes `owns_file = false` to
    /// [`Listener::from_fd`].
    pub fn owns_file(&self) -> bool {
        matches!(self, ListenKey::Unix(_))
    }
}

impl fmt::Display for ListenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenKey::Tcp(a) => write!(f, "{a}"),
            ListenKey::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenKey::Systemd(name) => write!(f, "systemd:{name}"),
            ListenKey::Fd(n) => write!(f, "fd:{n}"),
        }
    }
}

/// Listening sockets passed in before the config is bound (socket activation, a
/// binary upgrade), taken by the addresses that name them; those left over are closed
/// by the caller, with a warning.
///
/// It also says why an address that needs a passed socket has none
/// ([`Inherited::missing`]): what systemd passed ([`Inherited::set_systemd_passed`]) and
/// sockets that were passed but cannot be used ([`Inherited::refuse`]).
#[derive(Debug, Default)]
pub struct Inherited {
    /// By key: each socket with the listener it served in the process that passed it
    /// (a binary upgrade names it; systemd does not).
    sockets: HashMap<ListenKey, Vec<(Option<String>, Listener)>>,
    /// What systemd passed, for the message of a `systemd:NAME` with no socket.
    systemd_passed: Option<String>,
    /// Why a key's passed socket cannot be used.
    refused: HashMap<ListenKey, String>,
}

impl Inherited {
    /// No sockets.
    pub fn new() -> Inherited {
        Inherited::default()
    }

    /// Sets the socket for `key`, returning the one it replaces (the first, if `key`
    /// had several). To give a key several sockets (`systemd:NAME`), use
    /// [`Inherited::push`].
    pub fn insert(&mut self, key: ListenKey, listener: Listener) -> Option<Listener> {
        self.sockets
            .insert(key, vec![(None, listener)])
            .and_then(|old| old.into_iter().next())
            .map(|(_, l)| l)
    }

    /// Adds one more socket for `key`, after those it has.
    pub fn push(&mut self, key: ListenKey, listener: Listener) {
        self.sockets.entry(key).or_default().push((None, listener));
    }

    /// Adds a socket that served `listener` in the process that passed it (a binary
    /// upgrade): an address written the same in two listeners (`127.0.0.1:0` in both)
    /// then still gets each listener its own socket back.
    pub fn push_for(&mut self, listener: &str, key: ListenKey, socket: Listener) {
        self.sockets
            .entry(key)
            .or_default()
            .push((Some(listener.to_owned()), socket));
    }

    /// The sockets passed for `addr` of listener `listener`: every one for a
    /// `systemd:NAME` or `fd:N` address; for a TCP or Unix address one, the one that
    /// served the same listener if the passer said (a TCP address with port 0 takes
    /// only such a one, or one no listener was named for).
    pub fn take_for(&mut self, listener: &str, addr: &ListenAddr) -> Vec<Listener> {
        let key = ListenKey::of(addr);
        let Some(list) = self.sockets.get_mut(&key) else {
            return Vec::new();
        };
        let taken = if addr.is_passed_in() {
            std::mem::take(list)
        } else {
            let any_port = matches!(&key, ListenKey::Tcp(a) if a.port() == 0);
            let same = list
                .iter()
                .position(|(o, _)| o.as_deref() == Some(listener))
                .or_else(|| list.iter().position(|(o, _)| o.is_none()))
                .or_else(|| (!any_port && !list.is_empty()).then_some(0));
            same.map(|i| vec![list.remove(i)]).unwrap_or_default()
        };
        if list.is_empty() {
            self.sockets.remove(&key);
        }
        taken.into_iter().map(|(_, l)| l).collect()
    }

    /// Takes one socket for `addr` (the first passed), if any was passed in.
    pub fn take(&mut self, addr: &ListenAddr) -> Option<Listener> {
        let key = ListenKey::of(addr);
        let list = self.sockets.get_mut(&key)?;
        let first = (!list.is_empty()).then(|| list.remove(0).1);
        if list.is_empty() {
            self.sockets.remove(&key);
        }
        first
    }

    /// Takes every socket for `addr`, in the order they were passed: all the sockets of
    /// a `systemd:NAME`, the one of any other address, or none.
    pub fn take_all(&mut self, addr: &ListenAddr) -> Vec<Listener> {
        self.sockets
            .remove(&ListenKey::of(addr))
            .unwrap_or_default()
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }

    /// Whether no socket is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.values().all(Vec::is_empty)
    }

    /// Every socket left, with its key.
    pub fn drain(&mut self) -> impl Iterator<Item = (ListenKey, Listener)> + '_ {
        self.sockets
            .drain()
            .flat_map(|(k, list)| list.into_iter().map(move |(_, l)| (k.clone(), l)))
    }

    /// Records what systemd passed (e.g. `LISTEN_FDNAMES has: web, admin`, or why
    /// nothing was), for the error of a `systemd:NAME` that has no socket.
    pub fn set_systemd_passed(&mut self, summary: String) {
        self.systemd_passed = Some(summary);
    }

    /// Records that the socket passed for `key` cannot be used, and why (`descriptor 5
    /// is not a listening socket: …`): the error of an address with that key says so.
    pub fn refuse(&mut self, key: ListenKey, why: String) {
        self.refused.insert(key, why);
    }

    /// The error for `addr` when it needs a passed socket (`systemd:NAME`, `fd:N`) and
    /// none is left for it: the reason given to [`Inherited::refuse`], else that
    /// nothing was passed under that name or number.
    pub fn missing(&self, addr: &ListenAddr) -> ListenError {
        let why = match (self.refused.get(&ListenKey::of(addr)), addr) {
            (Some(why), _) => why.clone(),
            (None, ListenAddr::Systemd(name)) => format!(
                "systemd passed no socket named {name} ({})",
                self.systemd_passed
                    .as_deref()
                    .unwrap_or("no sockets were passed in")
            ),
            (None, ListenAddr::Fd(n)) => format!("descriptor {n} was not passed in"),
            (None, other) => format!("no socket was passed in for {other}"),
        };
        ListenError::NotPassed {
            addr: addr.clone(),
            why,
        }
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

    fn tcp_listener() -> Listener {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Listener::from_fd(OwnedFd::from(std), false).unwrap()
    }

    #[tokio::test]
    async fn inherited_holds_every_socket_of_a_systemd_name_and_one_per_other_address() {
        let web = ListenAddr::Systemd("web".into());
        let (a, b, c) = (tcp_listener(), tcp_listener(), tcp_listener());
        let (a_addr, b_addr) = (a.local_addr().clone(), b.local_addr().clone());
        let LocalAddr::Tcp(c_addr) = c.local_addr().clone() else {
            panic!("tcp")
        };
        let mut inherited = Inherited::new();
        inherited.push(ListenKey::of(&web), a);
        inherited.push(ListenKey::of(&web), b);
        assert!(inherited.insert(ListenKey::Tcp(c_addr), c).is_none());
        let all: Vec<LocalAddr> = inherited
            .take_all(&web)
            .iter()
            .map(|l| l.local_addr().clone())
            .collect();
        assert_eq!(all, [a_addr, b_addr], "in the order passed");
        assert!(inherited.take_all(&web).is_empty());
        let tcp = ListenAddr::Tcp(c_addr);
        assert!(!inherited.is_empty());
        assert!(inherited.take(&tcp).is_some());
        assert!(inherited.take(&tcp).is_none());
        assert!(inherited.is_empty());
    }

    #[tokio::test]
    async fn a_passed_in_address_without_its_socket_says_why() {
        let web = ListenAddr::Systemd("web".into());
        let e = Listener::bind(&web, TcpOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot listen on systemd:web: systemd passed no socket named web (no sockets were passed in)"
        );
        let mut inherited = Inherited::new();
        inherited.set_systemd_passed("LISTEN_FDNAMES has: a, b".into());
        inherited.refuse(ListenKey::Fd(5), "descriptor 5 is not open".into());
        assert_eq!(
            inherited.missing(&web).to_string(),
            "cannot listen on systemd:web: systemd passed no socket named web (LISTEN_FDNAMES has: a, b)"
        );
        assert_eq!(
            inherited.missing(&ListenAddr::Fd(5)).to_string(),
            "cannot listen on fd:5: descriptor 5 is not open"
        );
        assert_eq!(
            inherited.missing(&ListenAddr::Fd(6)).to_string(),
            "cannot listen on fd:6: descriptor 6 was not passed in"
        );
        assert!(!ListenKey::Systemd("web".into()).owns_file());
        assert!(!ListenKey::Fd(3).owns_file());
        assert!(ListenKey::Unix("/a.sock".into()).owns_file());
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

    #[tokio::test]
    async fn stop_listening_refuses_new_connections_at_once_tcp_and_unix() {
        let l = Listener::from_fd(
            OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap()),
            false,
        )
        .unwrap();
        let LocalAddr::Tcp(addr) = l.local_addr().clone() else {
            panic!()
        };
        l.stop_listening();
        assert!(std::net::TcpStream::connect(addr).is_err());
        let dir = temp_dir("stop");
        let path = dir.join("s.sock");
        let u =
            Listener::from_fd(OwnedFd::from(StdUnixListener::bind(&path).unwrap()), true).unwrap();
        u.stop_listening();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_err());
        drop(u);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
