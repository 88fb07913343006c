//! Address syntax (docs/design.md): `127.0.0.1:8080`, `[::1]:8080`, `localhost:6080`,
//! `unix:/run/app.sock:mode=660:owner=www-data:group=www-data`, and for listeners the
//! sockets passed in by whatever started tidegate, `systemd:NAME` and `fd:N`.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// The longest socket name systemd accepts in `FileDescriptorName=` (and so in
/// `LISTEN_FDNAMES`).
pub const MAX_SYSTEMD_NAME: usize = 255;

/// The first descriptor a passed socket can have: 0, 1 and 2 are standard input,
/// output and error (`SD_LISTEN_FDS_START` in systemd).
pub const FIRST_PASSED_FD: RawFd = 3;

/// An address a listener binds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// An IP address and port (`0.0.0.0:80`, `[::]:80`; port 0 = any free port).
    Tcp(SocketAddr),
    /// A Unix socket file and the permissions it is created with.
    Unix(UnixListen),
    /// Every socket systemd passed with `FileDescriptorName=NAME` (socket activation,
    /// `LISTEN_FDS`/`LISTEN_FDNAMES`): one address, one or more sockets. The sockets
    /// and their files belong to systemd; tidegate never binds, chmods or removes them.
    Systemd(String),
    /// Descriptor N (at least [`FIRST_PASSED_FD`]), a listening socket the process that
    /// started tidegate left open for it. Like `systemd:`, never bound or removed here.
    Fd(RawFd),
}

/// A Unix listening socket: path (absolute, resolved against the config file's folder)
/// and the file's mode and owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnixListen {
    /// Absolute path of the socket file.
    pub path: PathBuf,
    /// File mode (`mode=660`, octal); `None` keeps what the umask gives.
    pub mode: Option<u32>,
    /// Owner uid (`owner=NAME` or a number), resolved at load time.
    pub owner: Option<u32>,
    /// Group gid (`group=NAME` or a number), resolved at load time.
    pub group: Option<u32>,
}

impl ListenAddr {
    /// Whether the socket comes from outside (`systemd:NAME`, `fd:N`): it must have
    /// been passed in, since there is nothing to bind.
    pub fn is_passed_in(&self) -> bool {
        matches!(self, ListenAddr::Systemd(_) | ListenAddr::Fd(_))
    }
}

/// An upstream server's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    /// A literal IP address and port.
    Ip(SocketAddr),
    /// A host name and port: resolved to every address at connect time; all are tried
    /// (Happy Eyeballs). One server, however many addresses.
    Host {
        /// The name as written (lowercase).
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix socket path (absolute).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(u) => write!(f, "unix:{}", u.path.display()),
            ListenAddr::Systemd(name) => write!(f, "systemd:{name}"),
            ListenAddr::Fd(n) => write!(f, "fd:{n}"),
        }
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Ip(a) => write!(f, "{a}"),
            UpstreamAddr::Host { host, port } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}
