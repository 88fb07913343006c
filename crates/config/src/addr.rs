//! Address syntax (docs/design.md): `127.0.0.1:8080`, `[::1]:8080`, `localhost:6080`,
//! `unix:/run/app.sock:mode=660:owner=www-data:group=www-data`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// An address a listener binds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// An IP address and port (`0.0.0.0:80`, `[::]:80`; port 0 = any free port).
    Tcp(SocketAddr),
    /// A Unix socket file and the permissions it is created with.
    Unix(UnixListen),
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
