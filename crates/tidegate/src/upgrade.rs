//! Binary upgrade (`tidegate ctl upgrade`, `POST /v1/upgrade`, SIGUSR2;
//! docs/operations.md, "Binary upgrade"): start the binary again, hand it every
//! listening socket, and drain once it is ready — no connection is ever refused,
//! because the listening sockets themselves never close.
//!
//! # The exchange
//! The old process makes a socket pair (`tidegate_net::fdpass`, sequenced packets) and
//! starts the binary at the path it was started from, with the same arguments, the
//! pair's other end as its stdin and `TIDEGATE_UPGRADE_FD=0`. Then, one message each:
//!
//! ```text
//! old → new   tidegate-upgrade 1 / pid OLD / drain_ms N / sockets K
//! old → new   listen tcp 127.0.0.1:8080 @web / listen unix /run/x.sock @web /
//!             listen systemd web @web / admin unix /run/a.sock
//!             (one line per descriptor the message carries, at most FDS_PER_MESSAGE)
//! new → old   ready NEW          or   error / the reason, line by line
//! old → new   committed          (the old process has let go of the sockets)
//! old → new   idle web 0 / tunnel tcp tcp echo 10.0.0.1:5672 0 12   (`crate::handover`)
//!             (one per connection that moves — an idle keep-alive connection, a
//!             WebSocket or a TCP-mode tunnel — with its sockets and unwritten bytes)
//! old exits   → the new process reads end of file
//! ```
//!
//! The new process takes each socket for the address its key names
//! (`Runtime::bind_with`), binds only addresses that are new, starts as usual, and says
//! `ready` — or `error` with every startup error (bad config, a bind failure), then
//! exits 1. Until `committed` it keeps the Unix socket files it was handed disowned, so
//! a failed start never removes the files the old process still serves. A new process
//! that exits, says nothing or says garbage within [`READY_TIMEOUT`] is a failure too
//! (and is killed); on any failure the old process has changed nothing — its sockets
//! never stopped accepting.
//!
//! On `ready` the old process disowns its socket files, stops accepting (the admin
//! socket included, though the request that asked for the upgrade is still answered),
//! sends systemd `MAINPID=` with the new pid, and drains exactly as on SIGTERM (run.rs),
//! except that idle keep-alive connections, WebSockets and TCP-mode tunnels are handed
//! to the new process instead of closed (`Serving::start_export`; see
//! `tidegate_proxy::handoff`; the new one serves them with `Serving::adopt`). Only
//! exchanges in flight stay, and move once idle again. It
//! keeps its end of the pair open until it exits: the new process reads end of file
//! then, which is how it knows that its predecessor (and that one's on-demand backends)
//! are gone.
//!
//! # One old process at most
//! A process refuses to start an upgrade while one is starting, once it has handed
//! over (it is the old one, draining), and while its predecessor still drains.
//!
//! # On-demand backends
//! Never two instances: the old process stops its own as part of its drain, and the new
//! one starts none ([`Children::hold_starts`]) until its predecessor has exited (end of
//! file), or [`HOLD_SLACK`] after the drain bound the old one announced.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tidegate_net::errno::describe_io_error;
use tidegate_net::fdpass::{self, Channel};
use tidegate_proxy::listen::{Inherited, ListenKey, Listener};
use tidegate_proxy::upstream::on_demand::Children;
use tidegate_proxy::Serving;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The environment variable that tells a process it was started by an upgrade, naming
/// the handover socket's descriptor. Only `0` is valid: the old process passes the
/// socket as the new one's stdin, the one way std's `Command` places a descriptor in a
/// child with close-on-exec cleared in the child only (no `pre_exec`, so no `unsafe`).
pub const ENV_FD: &str = "TIDEGATE_UPGRADE_FD";
/// How long the old process waits for the new one to report ready (or an error). A
/// fixed bound rather than `shutdown_grace`: starting is binding and spawning tasks,
/// seconds at most, whatever the drain may take; `ctl upgrade` waits a little longer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new process waits for the old one's sockets.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// After an `error`, how long the new process gets to exit before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// Descriptors per message (below `fdpass::MAX_FDS`).
const FDS_PER_MESSAGE: usize = 32;
/// Beyond the drain bound the old process announced: when the new one stops waiting
/// for its end of file before starting on-demand backends (a bug guard: the old process
/// exits within its bound).
pub const HOLD_SLACK: Duration = Duration::from_secs(5);
/// Beyond `shutdown_grace` and the longest `stop_timeout`: the rest of an old
/// process's exit (closing, flushing the access log, stopping the admin server).
const EXIT_SLACK: Duration = Duration::from_secs(3);
/// After the drain, how long the old process waits for the connections it hands over
/// to be sent (a message each on a local socket: far less, unless something is wrong).
const FORWARD_BOUND: Duration = Duration::from_secs(5);
/// The first line of the handover.
const PROTOCOL: &str = "tidegate-upgrade 1";
/// The most of an error message sent back (the rest is cut).
const MAX_ERROR: usize = 60 * 1024;

// === what the process was started as ===

/// What an upgrade starts again, read once at startup (before any file is replaced).
#[derive(Debug, Clone)]
pub struct Origin {
    exe: PathBuf,
    args: Vec<OsString>,
    notify_socket: Option<OsString>,
}

impl Origin {
    /// The binary's path and arguments and `NOTIFY_SOCKET`, as they are now.
    ///
    /// The path is argv\[0\] as it was run, made absolute against the working directory
    /// now (or found on `PATH` when it has no `/`), not `std::env::current_exe()`: that
    /// reads `/proc/self/exe`, which resolves symbolic links (started as
    /// `/usr/local/bin/tidegate` → `/opt/tidegate-1.2/tidegate`, an upgrade that points
    /// the link at 1.3 would run 1.2 again) and, once the file has been replaced, names
    /// the old deleted inode. The path as typed is what an operator replaces, so running
    /// it again picks up the new file. `current_exe` is only the fallback when argv\[0\]
    /// is missing or cannot be found.
    pub fn capture() -> Origin {
        #[allow(
            clippy::disallowed_methods,
            reason = "the binary reads its command line and environment once, at startup"
        )]
        let (argv, path_var, notify_socket) = (
            std::env::args_os().collect::<Vec<_>>(),
            std::env::var_os("PATH"),
            std::env::var_os("NOTIFY_SOCKET"),
        );
        let cwd = std::env::current_dir().ok();
        let exe = argv
            .first()
            .and_then(|a0| resolve_exe(a0, cwd.as_deref(), path_var.as_deref()))
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        Origin {
            exe,
            args: argv.into_iter().skip(1).collect(),
            notify_socket,
        }
    }
}

/// argv\[0\] as an absolute path: relative to `cwd` when it has a `/`, else the first
/// executable file of that name on `path_var`.
fn resolve_exe(argv0: &OsStr, cwd: Option<&Path>, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if argv0.is_empty() {
        return None;
    }
    let p = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        return if p.is_absolute() {
            Some(p.to_path_buf())
        } else {
            cwd.map(|c| c.join(p))
        };
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(p))
        .find(|candidate| is_executable_file(candidate))
        .and_then(|found| {
            if found.is_absolute() {
                Some(found)
            } else {
                cwd.map(|c| c.join(found))
            }
        })
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// === the wire format ===

/// The old process's first message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    pid: u32,
    /// How long the old process may take to exit from now on.
    drain: Duration,
    sockets: usize,
}

fn encode_header(h: &Header) -> String {
    format!(
        "{PROTOCOL}\npid {}\ndrain_ms {}\nsockets {}\n",
        h.pid,
        h.drain.as_millis(),
        h.sockets
    )
}

/// `name VALUE` with VALUE a whole number.
fn field<T: std::str::FromStr>(line: Option<&str>, name: &str) -> Result<T, String> {
    let line = line.ok_or_else(|| format!("the line `{name} N` is missing"))?;
    let value = line
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| format!("expected `{name} N`, found {line:?}"))?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "expected `{name} N` with N a whole number, found {line:?}"
        ));
    }
    value
        .parse()
        .map_err(|_| format!("{name}: {value} is out of range"))
}

fn parse_header(text: &str) -> Result<Header, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(PROTOCOL) => {}
        other => {
            return Err(format!(
                "not a handover from tidegate: expected {PROTOCOL:?} first, found {:?}",
                other.unwrap_or("")
            ))
        }
    }
    let pid = field(lines.next(), "pid")?;
    let drain_ms: u64 = field(lines.next(), "drain_ms")?;
    let sockets = field(lines.next(), "sockets")?;
    if let Some(extra) = lines.next() {
        return Err(format!("unexpected line after the header: {extra:?}"));
    }
    Ok(Header {
        pid,
        drain: Duration::from_millis(drain_ms),
        sockets,
    })
}

/// One socket of the handover: which configured address it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    admin: bool,
    key: ListenKey,
    /// The listener it serves (none for the admin socket): two listeners may write the
    /// same address (`127.0.0.1:0`), and each must get its own socket back.
    listener: Option<String>,
}

fn encode_entry(e: &Entry) -> String {
    let role = if e.admin { "admin" } else { "listen" };
    let address = match &e.key {
        ListenKey::Tcp(a) => format!("tcp {a}"),
        ListenKey::Unix(p) => format!("unix {}", escape(p.as_os_str().as_bytes())),
        ListenKey::Systemd(name) => format!("systemd {}", escape(name.as_bytes())),
        ListenKey::Fd(n) => format!("fd {n}"),
    };
    match &e.listener {
        Some(l) => format!("{role} {address} @{l}"),
        None => format!("{role} {address}"),
    }
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let bad = || {
        format!("expected `listen|admin tcp|unix|systemd|fd ADDRESS [@LISTENER]`, found {line:?}")
    };
    let mut parts = line.split(' ');
    let admin = match parts.next() {
        Some("listen") => false,
        Some("admin") => true,
        _ => return Err(bad()),
    };
    let key = match (parts.next(), parts.next()) {
        (Some("tcp"), Some(a)) => ListenKey::Tcp(
            a.parse()
                .map_err(|_| format!("{a:?} is not an IP:PORT address (in {line:?})"))?,
        ),
        (Some("unix"), Some(p)) => {
            let path = PathBuf::from(OsString::from_vec(unescape(p)?));
            if !path.is_absolute() {
                return Err(format!("a Unix socket path must be absolute: {line:?}"));
            }
            ListenKey::Unix(path)
        }
        (Some("systemd"), Some(n)) => {
            ListenKey::Systemd(String::from_utf8(unescape(n)?).map_err(|_| bad())?)
        }
        (Some("fd"), Some(n)) => ListenKey::Fd(n.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    let listener = match (parts.next(), parts.next()) {
        (None, _) => None,
        (Some(l), None) => match l.strip_prefix('@') {
            Some(name) if tidegate_config::parse::is_name(name) => Some(name.to_owned()),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    Ok(Entry {
        admin,
        key,
        listener,
    })
}

/// Bytes outside printable ASCII, spaces and `%` as `%XX`: one line per path, whatever
/// the path holds.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad %-escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b if b.is_ascii_graphic() => {
                out.push(b);
                i += 1;
            }
            b => return Err(format!("byte 0x{b:02x} must be %-escaped in {s:?}")),
        }
    }
    Ok(out)
}

/// The new process's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Ready { pid: u32 },
    Error(String),
}

fn encode_error(message: &str) -> Vec<u8> {
    let mut m = format!("error\n{message}");
    if m.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push_str("\n(cut)");
    }
    m.into_bytes()
}

fn parse_reply(bytes: &[u8]) -> Result<Reply, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "an answer that is not UTF-8".to_owned())?;
    if let Some(rest) = text.strip_prefix("error\n") {
        return Ok(Reply::Error(rest.trim_end().to_owned()));
    }
    if text == "error" {
        return Ok(Reply::Error("(no reason given)".to_owned()));
    }
    let pid = field(Some(text.trim_end_matches('\n')), "ready")
        .map_err(|e| format!("expected `ready PID` or an error: {e}"))?;
    Ok(Reply::Ready { pid })
}

// === the new process: receiving ===

/// In a process started by an upgrade: the handover socket, before the runtime exists.
#[derive(Debug)]
pub struct Incoming {
    fd: OwnedFd,
}

/// Reads [`ENV_FD`] (and removes it, so that on-demand backends never see it). `Ok(None)`
/// when it is not set: not an upgrade. Call once, first thing, while the process has one
/// thread.
pub fn incoming_from_env() -> Result<Option<Incoming>, String> {
    #[allow(
        clippy::disallowed_methods,
        reason = "the binary reads its environment once, at startup, single-threaded"
    )]
    let value = std::env::var_os(ENV_FD);
    let Some(value) = value else {
        return Ok(None);
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "removed while the process has one thread; children must not inherit it"
    )]
    std::env::remove_var(ENV_FD);
    parse_fd_var(&value)?;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| {
        format!(
            "{ENV_FD}=0: cannot use descriptor 0: {}",
            describe_io_error(&e)
        )
    })?;
    fdpass::check(fd.as_fd()).map_err(|e| {
        format!("{ENV_FD}=0: descriptor 0 is not the handover socket of an upgrade: {e}")
    })?;
    // Stdin is the handover socket's other copy; nothing reads stdin, and a child must
    // not inherit the socket.
    match std::fs::File::open("/dev/null") {
        Ok(null) => {
            if let Err(e) = nix::unistd::dup2_stdin(null) {
                tracing::debug!(error = %e, "cannot point stdin at /dev/null after the handover");
            }
        }
        Err(e) => {
            tracing::debug!(error = %describe_io_error(&e), "cannot open /dev/null");
        }
    }
    Ok(Some(Incoming { fd }))
}

fn parse_fd_var(value: &OsStr) -> Result<(), String> {
    let s = value
        .to_str()
        .ok_or_else(|| format!("{ENV_FD}: the value is not UTF-8"))?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{ENV_FD}={s:?}: expected a descriptor number (this variable is set by `tidegate \
             ctl upgrade` for the process it starts; unset it to start tidegate normally)"
        ));
    }
    if s != "0" {
        return Err(format!(
            "{ENV_FD}={s}: only 0 is supported (an upgrade passes the handover socket as stdin)"
        ));
    }
    Ok(())
}

impl Incoming {
    /// Tells the old process why this one will not start (a config error found before
    /// the runtime exists).
    pub fn fail_now(&self, message: &str) {
        if let Err(e) = fdpass::send_blocking(self.fd.as_fd(), &encode_error(message), EXIT_WAIT) {
            tracing::warn!(error = %describe_io_error(&e), "cannot tell the old process why this one failed");
        }
    }
}

/// What a process starts with: nothing, or (started by an upgrade) the old process's
/// sockets and the channel to it, until it reports ready.
#[derive(Debug, Default)]
pub struct Startup {
    /// `None`: not an upgrade.
    from: Option<(Channel, Header)>,
    inherited: Inherited,
    admin: Inherited,
    /// Cancelled once on-demand backends may start (see [`Startup::hold_on_demand`]).
    release: CancellationToken,
}

impl Startup {
    /// Whether an upgrade started this process (its sockets come from the old one).
    pub fn is_upgrade(&self) -> bool {
        self.from.is_some()
    }

    /// Receives the old process's sockets when this process was started by an upgrade
    /// (`incoming`); telling it why when that fails. Must run inside the runtime.
    pub async fn receive(incoming: Option<Incoming>) -> Result<Startup, String> {
        let Some(incoming) = incoming else {
            return Ok(Startup::default());
        };
        let channel = Channel::new(incoming.fd)
            .map_err(|e| format!("the handover socket of the upgrade: {e}"))?;
        let why = match tokio::time::timeout(HANDOVER_TIMEOUT, receive_sockets(&channel)).await {
            Ok(Ok((header, inherited, admin))) => {
                tracing::info!(
                    old_pid = header.pid,
                    sockets = header.sockets,
                    "started by an upgrade: took over the old process's listening sockets"
                );
                return Ok(Startup {
                    from: Some((channel, header)),
                    inherited,
                    admin,
                    release: CancellationToken::new(),
                });
            }
            Ok(Err(e)) => format!("the handover from the old process: {e}"),
            Err(_) => format!(
                "the old process sent no sockets within {}s",
                HANDOVER_TIMEOUT.as_secs()
            ),
        };
        report_failure(&channel, &why).await;
        Err(why)
    }

    /// The data listeners' sockets, for `Runtime::bind_with`.
    pub fn inherited(&mut self) -> &mut Inherited {
        &mut self.inherited
    }

    /// The admin socket, for `admin::start`.
    pub fn admin(&mut self) -> &mut Inherited {
        &mut self.admin
    }

    /// Tells the old process (if any) that this one will not start; the caller exits 1.
    pub async fn fail(&self, message: &str) {
        if let Some((channel, _)) = &self.from {
            report_failure(channel, message).await;
        }
    }

    /// Holds every on-demand start until the old process (if any) has exited. Call
    /// before the runtime starts.
    pub fn hold_on_demand(&self, children: &Children) {
        if self.from.is_some() {
            children.hold_starts(self.release.clone());
        }
    }
}

async fn receive_sockets(channel: &Channel) -> Result<(Header, Inherited, Inherited), String> {
    let recv = || async {
        match channel.recv().await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("the old process closed the handover socket".to_owned()),
            Err(e) => Err(describe_io_error(&e)),
        }
    };
    let first = recv().await?;
    if !first.fds.is_empty() {
        return Err("the header carried descriptors".into());
    }
    let header = parse_header(
        std::str::from_utf8(&first.bytes).map_err(|_| "the header is not UTF-8".to_owned())?,
    )?;
    let mut inherited = Inherited::new();
    let mut admin = Inherited::new();
    let mut got = 0;
    // Bounded: every message brings at least one socket, up to `header.sockets`.
    while got < header.sockets {
        let m = recv().await?;
        let text =
            std::str::from_utf8(&m.bytes).map_err(|_| "a socket list is not UTF-8".to_owned())?;
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() || lines.len() != m.fds.len() {
            return Err(format!(
                "a message names {} socket(s) but carries {} descriptor(s)",
                lines.len(),
                m.fds.len()
            ));
        }
        got += lines.len();
        if got > header.sockets {
            return Err(format!(
                "more sockets than the {} announced",
                header.sockets
            ));
        }
        for (line, fd) in lines.into_iter().zip(m.fds) {
            let entry = parse_entry(line)?;
            let listener = match &entry.key {
                ListenKey::Unix(path) => Listener::from_fd_at(fd, path),
                // systemd's: never ours to remove.
                ListenKey::Systemd(_) | ListenKey::Fd(_) => Listener::from_fd(fd, false),
                ListenKey::Tcp(_) => {
                    Listener::from_fd(fd, false).and_then(|l| match l.local_addr() {
                        tidegate_proxy::listen::LocalAddr::Tcp(_) => Ok(l),
                        tidegate_proxy::listen::LocalAddr::Unix(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "the socket is a Unix socket",
                        )),
                    })
                }
            }
            .map_err(|e| format!("{}: {}", entry.key, describe_io_error(&e)))?;
            // Until the old process lets go, its files must survive our failing.
            listener.disown();
            let into = if entry.admin {
                &mut admin
            } else {
                &mut inherited
            };
            match &entry.listener {
                Some(name) => into.push_for(name, entry.key.clone(), listener),
                None => into.push(entry.key.clone(), listener),
            }
        }
    }
    Ok((header, inherited, admin))
}

/// Tells the old process this one failed (the caller then exits 1).
async fn report_failure(channel: &Channel, message: &str) {
    if let Err(e) = channel.send(&encode_error(message), &[]).await {
        tracing::warn!(error = %describe_io_error(&e), "cannot tell the old process why this one failed");
    }
}

// === both sides: the upgrader ===

/// The admin server's side of a handover: its socket, and how to make it stop accepting.
#[derive(Debug, Clone)]
pub struct AdminSocket {
    /// The configured address it serves.
    pub key: ListenKey,
    /// The socket (the admin server holds the only strong reference).
    pub listener: Weak<Listener>,
    /// Cancelled on handover: the admin server stops accepting.
    pub stop_accepting: CancellationToken,
}

/// What an upgrade reports.
#[derive(Debug, Clone)]
pub struct Upgraded {
    /// This process.
    pub old_pid: u32,
    /// The new one, serving.
    pub new_pid: u32,
}

/// Why an upgrade did not happen; nothing changed.
#[derive(Debug, Clone)]
pub enum UpgradeError {
    /// Refused: one is starting, this process is draining, or its predecessor is.
    Busy(String),
    /// The new process did not start. `detail`: its error, line by line.
    Failed {
        /// One line.
        message: String,
        /// More.
        detail: Vec<String>,
    },
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Busy(m) => f.write_str(m),
            UpgradeError::Failed { message, detail } => {
                f.write_str(message)?;
                for d in detail {
                    write!(f, "\n  {d}")?;
                }
                Ok(())
            }
        }
    }
}

fn failed(message: impl Into<String>) -> UpgradeError {
    UpgradeError::Failed {
        message: message.into(),
        detail: Vec::new(),
    }
}

#[derive(Debug)]
enum State {
    Idle,
    Starting,
    /// This process was started by an upgrade and its predecessor has not exited yet.
    Predecessor {
        pid: u32,
        until: Instant,
    },
    /// This process has handed over to `pid` and drains.
    HandedOver {
        pid: u32,
    },
}

/// What is served now, set once the runtime started.
#[derive(Debug)]
struct Sockets {
    serving: Arc<Serving>,
    admin: AdminSocket,
}

/// Runs upgrades for this process, and knows whether one may start.
#[derive(Debug)]
pub struct Upgrader {
    origin: Origin,
    /// The on-demand backends, whose longest `stop_timeout` is part of the drain bound
    /// announced to a new process (read at each upgrade: a reload may add some).
    children: Children,
    state: Mutex<State>,
    sockets: OnceLock<Sockets>,
    /// Cancelled once this process has handed over: run.rs drains.
    handed_over: CancellationToken,
    /// Our end of the handover socket, kept open until we exit (the new process reads
    /// end of file then).
    kept: Mutex<Vec<Arc<Channel>>>,
    /// Cancelled when the old process went away before handing over: run.rs drains.
    abandoned: CancellationToken,
    /// systemd: the old process tells it the new main pid.
    notify: crate::systemd::Notify,
    /// Sends the connections this process hands over, until the export ends.
    forwarder: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Upgrader {
    /// An upgrader for this process; `children` are its on-demand backends.
    pub fn new(
        origin: Origin,
        children: &Children,
        notify: crate::systemd::Notify,
    ) -> Arc<Upgrader> {
        Arc::new(Upgrader {
            origin,
            children: children.clone(),
            state: Mutex::new(State::Idle),
            sockets: OnceLock::new(),
            handed_over: CancellationToken::new(),
            kept: Mutex::new(Vec::new()),
            notify,
            forwarder: Mutex::new(None),
            abandoned: CancellationToken::new(),
        })
    }

    /// Resolves when the upgrade that started this process was abandoned (the old
    /// process stopped before handing over): drain and exit.
    pub async fn abandoned(&self) {
        self.abandoned.cancelled().await;
    }

    /// The drain is over: connections that have not moved by now stay (and were
    /// closed by the drain); waits, boundedly, until those that moved are sent.
    pub async fn finish_handoffs(&self) {
        let Some(s) = self.sockets.get() else { return };
        s.serving.finish_export();
        let forwarder = self
            .forwarder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(f) = forwarder {
            if tokio::time::timeout(FORWARD_BOUND, f).await.is_err() {
                tracing::warn!(
                    "handing connections over took longer than {FORWARD_BOUND:?}; exiting anyway"
                );
            }
        }
    }

    /// Whether a new process is starting (its sockets are being handed over).
    pub fn is_starting(&self) -> bool {
        matches!(*self.lock(), State::Starting)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once this process has handed over to a new one: drain now.
    pub async fn handed_over(&self) {
        self.handed_over.cancelled().await;
    }

    /// The runtime serves: upgrades may start from now on. A process started by an
    /// upgrade reports ready, and from then on watches its predecessor (see the module
    /// docs); the handed-over sockets no address of the config took are closed once
    /// the old process has let go of them.
    pub async fn serving(
        self: &Arc<Self>,
        serving: Arc<Serving>,
        admin: AdminSocket,
        startup: Startup,
    ) {
        let Startup {
            from,
            mut inherited,
            admin: mut admin_left,
            release,
        } = startup;
        if let Some((_, header)) = &from {
            // Before the sockets are set: no upgrade may start while the predecessor
            // drains.
            let until = Instant::now() + header.drain;
            *self.lock() = State::Predecessor {
                pid: header.pid,
                until,
            };
        }
        if self.sockets.set(Sockets { serving, admin }).is_err() {
            tracing::error!("the upgrader was given the sockets twice (a bug)");
        }
        let Some((channel, header)) = from else {
            release.cancel();
            return;
        };
        let pid = header.pid;
        let until = Instant::now() + header.drain;
        let mut leftover: Vec<(ListenKey, Listener)> = inherited.drain().collect();
        leftover.extend(admin_left.drain());
        for (key, _) in &leftover {
            tracing::warn!(address = %key, "a socket the old process handed over is in no listener of the config; closing it once the old process has let go");
        }
        let ready = format!("ready {}", std::process::id());
        if let Err(e) = channel.send(ready.as_bytes(), &[]).await {
            tracing::warn!(old_pid = pid, error = %describe_io_error(&e), "cannot tell the old process that this one is ready");
        }
        tracing::info!(
            old_pid = pid,
            "reported ready to the old process; it drains and exits"
        );
        let me = self.clone();
        let hold_until = until + HOLD_SLACK;
        tokio::spawn(async move {
            me.watch_predecessor(channel, pid, leftover, release, hold_until)
                .await;
        });
    }

    /// Waits for `committed` (the old process let go of the sockets: ours now) and then
    /// for end of file (it exited).
    async fn watch_predecessor(
        &self,
        channel: Channel,
        pid: u32,
        leftover: Vec<(ListenKey, Listener)>,
        release: CancellationToken,
        hold_until: Instant,
    ) {
        let mut leftover = Some(leftover);
        let mut held = true;
        let mut committed = false;
        let mut adopted: u64 = 0;
        // Bounded: each turn reads a message, the end, or the hold's deadline.
        loop {
            let got = tokio::select! {
                got = channel.recv() => got,
                _ = tokio::time::sleep_until(hold_until), if held => {
                    tracing::warn!(old_pid = pid, "the old process is still running past its drain bound; starting on-demand backends anyway");
                    release.cancel();
                    held = false;
                    continue;
                }
            };
            match got {
                Ok(Some(m)) if m.bytes == b"committed" => {
                    committed = true;
                    self.take_ownership(&mut leftover);
                    // The main process now, for systemd (the old one sent MAINPID=).
                    self.notify.ready();
                    self.notify.status(&format!(
                        "serving; took over from process {pid} (binary upgrade)"
                    ));
                    tracing::info!(
                        old_pid = pid,
                        "the old process has handed over every socket"
                    );
                }
                Ok(Some(m)) if crate::handover::is_handoff(&m.bytes) => {
                    adopted += 1;
                    if let Err(e) = self.adopt(m) {
                        tracing::warn!(old_pid = pid, "a connection handed over is closed: {e}");
                    }
                }
                Ok(Some(m)) => {
                    tracing::warn!(old_pid = pid, message = %String::from_utf8_lossy(&m.bytes), "unexpected message from the old process; ignored");
                }
                // One message that could not be read (too large, malformed): the
                // channel goes on.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::warn!(old_pid = pid, error = %describe_io_error(&e), "a message from the old process could not be read; ignored");
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(old_pid = pid, error = %describe_io_error(&e), "the handover socket failed; taking the old process for gone");
                    break;
                }
            }
        }
        if !committed {
            // Gone before it let go of the sockets: it was stopped (SIGTERM, SIGINT)
            // while this process started, and nobody asked for this process any more.
            // It must not serve on alone: it drains and exits, leaving the socket files
            // (still disowned) as they are.
            tracing::error!(old_pid = pid, "the old process exited before handing over (stopped during the upgrade); this process stops too");
            release.cancel();
            self.abandoned.cancel();
            return;
        }
        // Gone (end of file, or the socket failed: it is gone either way for us).
        self.take_ownership(&mut leftover);
        release.cancel();
        {
            let mut s = self.lock();
            if matches!(*s, State::Predecessor { .. }) {
                *s = State::Idle;
            }
        }
        tracing::info!(
            old_pid = pid,
            connections = adopted,
            "the old process has exited"
        );
    }

    /// Serves a connection the old process handed over (an idle keep-alive connection
    /// or a tunnel).
    fn adopt(&self, m: fdpass::Message) -> Result<(), String> {
        let handoff = crate::handover::decode(&m.bytes, m.fds)?;
        let serving = &self
            .sockets
            .get()
            .ok_or_else(|| "not serving yet".to_owned())?
            .serving;
        serving.adopt(handoff);
        Ok(())
    }

    /// The old process has let go: the socket files are ours (removed when we stop),
    /// and the sockets no listener took are closed.
    fn take_ownership(&self, leftover: &mut Option<Vec<(ListenKey, Listener)>>) {
        let Some(left) = leftover.take() else {
            return;
        };
        if let Some(s) = self.sockets.get() {
            for (_, _, l) in s.serving.listening() {
                l.reclaim();
            }
            if let Some(l) = s.admin.listener.upgrade() {
                l.reclaim();
            }
        }
        for (key, l) in left {
            l.reclaim();
            tracing::info!(address = %key, "closed a handed-over socket no listener serves");
            drop(l);
        }
    }

    /// SIGUSR2: upgrade, and log the outcome.
    pub fn on_signal(self: &Arc<Self>) {
        tracing::info!("SIGUSR2: upgrading");
        let me = self.clone();
        tokio::spawn(async move {
            match me.upgrade().await {
                Ok(_) => {}
                Err(e) => tracing::error!("upgrade failed; still serving: {e}"),
            }
        });
    }

    /// Starts the binary again and hands over (see the module docs). Runs in its own
    /// task, so a client that goes away cannot cancel an upgrade half-way.
    pub async fn upgrade(self: &Arc<Self>) -> Result<Upgraded, UpgradeError> {
        let me = self.clone();
        match tokio::spawn(async move { me.run_upgrade().await }).await {
            Ok(r) => r,
            Err(e) => Err(failed(format!("the upgrade task failed: {e}"))),
        }
    }

    async fn run_upgrade(&self) -> Result<Upgraded, UpgradeError> {
        let sockets = self.sockets.get().ok_or_else(|| {
            UpgradeError::Busy("tidegate is still starting; try again once it is ready".into())
        })?;
        {
            let mut s = self.lock();
            match &*s {
                State::Idle => *s = State::Starting,
                State::Starting => {
                    return Err(UpgradeError::Busy(
                        "an upgrade is already starting; wait for its outcome".into(),
                    ))
                }
                State::Predecessor { pid, until } => {
                    let left = until.saturating_duration_since(Instant::now());
                    return Err(UpgradeError::Busy(format!(
                        "an upgrade is in progress: the previous process {pid} is still draining (up to {} s)",
                        left.as_secs() + 1
                    )));
                }
                State::HandedOver { pid } => {
                    return Err(UpgradeError::Busy(format!(
                        "this process has handed over to process {pid} and is draining; \
                         upgrade through the new process's admin socket"
                    )))
                }
            }
        }
        let result = self.start_and_hand_over(sockets).await;
        let mut s = self.lock();
        *s = match &result {
            Ok(u) => State::HandedOver { pid: u.new_pid },
            Err(_) => State::Idle,
        };
        result
    }

    async fn start_and_hand_over(&self, sockets: &Sockets) -> Result<Upgraded, UpgradeError> {
        let exe = self.origin.exe.display().to_string();
        let mut entries: Vec<(Entry, Arc<Listener>)> = sockets
            .serving
            .listening()
            .into_iter()
            .map(|(name, key, l)| {
                let entry = Entry {
                    admin: false,
                    key,
                    listener: Some(name),
                };
                (entry, l)
            })
            .collect();
        if entries.is_empty() {
            // The accept loops have stopped: SIGTERM or SIGINT came first.
            return Err(UpgradeError::Busy(
                "this process is stopping (its listeners are closed); nothing to hand over".into(),
            ));
        }
        let admin = sockets.admin.listener.upgrade().ok_or_else(|| {
            UpgradeError::Busy(
                "the admin socket is closed (this process is stopping); nothing to hand over"
                    .into(),
            )
        })?;
        entries.push((
            Entry {
                admin: true,
                key: sockets.admin.key.clone(),
                listener: None,
            },
            admin.clone(),
        ));
        let (ours, theirs) = fdpass::pair().map_err(|e| {
            failed(format!(
                "cannot create the handover socket: {}",
                describe_io_error(&e)
            ))
        })?;
        let channel = Channel::new(ours).map_err(|e| {
            failed(format!(
                "cannot use the handover socket: {}",
                describe_io_error(&e)
            ))
        })?;
        let mut cmd = tokio::process::Command::new(&self.origin.exe);
        cmd.args(&self.origin.args)
            .stdin(Stdio::from(theirs))
            .env(ENV_FD, "0");
        if let Some(ns) = &self.origin.notify_socket {
            cmd.env("NOTIFY_SOCKET", ns);
        }
        let mut child = cmd.spawn().map_err(|e| {
            failed(format!(
                "cannot start the new binary {exe}: {}",
                describe_io_error(&e)
            ))
        })?;
        // The handle's drop closes our copy of the child's end: the child's exit is then
        // end of file here.
        drop(cmd);
        let new_pid = child.id().unwrap_or(0);
        tracing::info!(new_pid, exe = %exe, sockets = entries.len(), "upgrade: started the new binary; handing over the listening sockets");
        // The drain bound as of now: `shutdown_grace` of the config in effect (a reload
        // may have changed it), the longest on-demand `stop_timeout`, and some slack.
        let drain = sockets.serving.config().server.shutdown_grace
            + self.children.longest_stop_timeout()
            + EXIT_SLACK;
        let header = Header {
            pid: std::process::id(),
            drain,
            sockets: entries.len(),
        };
        let mut sent = channel.send(encode_header(&header).as_bytes(), &[]).await;
        for chunk in entries.chunks(FDS_PER_MESSAGE) {
            if sent.is_err() {
                break;
            }
            let text: String = chunk.iter().map(|(e, _)| encode_entry(e) + "\n").collect();
            let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|(_, l)| l.as_fd()).collect();
            sent = channel.send(text.as_bytes(), &fds).await;
        }
        // Our references must not keep a socket open once its accept loop stops.
        drop(entries);
        drop(admin);
        let answer = match sent {
            Ok(()) => wait_answer(&channel, &mut child).await,
            // It gave up before taking the sockets (a config error): its reason is
            // queued for us all the same.
            Err(e) => match wait_answer(&channel, &mut child).await {
                Ok(Reply::Error(m)) => Ok(Reply::Error(m)),
                _ => Err(format!(
                    "cannot send the sockets: {}",
                    describe_io_error(&e)
                )),
            },
        };
        let reply = match answer {
            Ok(r) => r,
            Err(why) => {
                let status = finish(&mut child).await;
                return Err(failed(format!(
                    "the new process (pid {new_pid}, {exe}) did not start: {why}{status}; still serving"
                )));
            }
        };
        match reply {
            Reply::Ready { pid } if pid == new_pid => {}
            Reply::Ready { pid } => {
                kill(&mut child).await;
                return Err(failed(format!(
                    "the new process (pid {new_pid}) reported ready as pid {pid}; killed it, still serving"
                )));
            }
            Reply::Error(message) => {
                let status = finish(&mut child).await;
                let mut lines = message.lines().map(str::to_owned);
                let first = lines.next().unwrap_or_default();
                return Err(UpgradeError::Failed {
                    message: format!(
                        "the new process (pid {new_pid}) failed to start{status}: {first}; still serving"
                    ),
                    detail: lines.collect(),
                });
            }
        }
        if sockets.serving.listening().is_empty() {
            // A SIGTERM or SIGINT drain began meanwhile and closed our sockets (and
            // removed their files): the new process must not serve half a handover.
            kill(&mut child).await;
            return Err(failed(format!(
                "this process began stopping while the new process (pid {new_pid}) started; killed it"
            )));
        }
        // Committed: the new process serves every socket. Ours stop accepting (the
        // files stay: they are the new process's now), then run.rs drains.
        sockets.serving.disown_all();
        if let Some(l) = sockets.admin.listener.upgrade() {
            l.disown();
        }
        sockets.admin.stop_accepting.cancel();
        // systemd hears the new process from now on (sent by us, still the main one:
        // see docs/operations.md, "systemd"); before `committed`, on which the new one
        // tells systemd it is ready.
        self.notify.mainpid(new_pid);
        if let Err(e) = channel.send(b"committed", &[]).await {
            tracing::warn!(new_pid, error = %describe_io_error(&e), "cannot tell the new process that the sockets are its own");
        }
        // Idle keep-alive connections and tunnels follow the sockets: they hand
        // themselves over (before the drain, which would close the idle ones).
        let channel = Arc::new(channel);
        if let Some(rx) = sockets.serving.start_export() {
            let task = tokio::spawn(forward(channel.clone(), rx, new_pid));
            *self.forwarder.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(channel);
        self.handed_over.cancel();
        tracing::info!(
            new_pid,
            "upgrade: the new process is ready and serves every listening socket; draining"
        );
        // The child is not waited for: it outlives us, and tokio reaps it if it exits
        // first.
        drop(child);
        Ok(Upgraded {
            old_pid: std::process::id(),
            new_pid,
        })
    }
}

/// Sends every connection this process hands over to the new one, one message each
/// (`crate::handover`), until the export ends.
async fn forward(
    channel: Arc<Channel>,
    mut from: tokio::sync::mpsc::UnboundedReceiver<Box<tidegate_proxy::handoff::Handoff>>,
    new_pid: u32,
) {
    let mut sent: u64 = 0;
    // Bounded: the export ends with the drain, which closes the channel.
    while let Some(h) = from.recv().await {
        let listener = h.listener.clone();
        let (bytes, fds) = crate::handover::encode(h);
        if bytes.len() > fdpass::MAX_MESSAGE {
            // More buffered than one message carries (the new process would refuse
            // it): this one connection is closed.
            tracing::warn!(new_pid, %listener, bytes = bytes.len(), max = fdpass::MAX_MESSAGE,
                "a connection had more bytes buffered than a handover message carries; closing it");
            continue;
        }
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        if let Err(e) = channel.send(&bytes, &borrowed).await {
            // The new process is gone: stop taking connections, so that the rest
            // stay (and drain) here instead of being closed one by one.
            tracing::warn!(new_pid, %listener, error = %describe_io_error(&e),
                "cannot hand connections to the new process any more; this one is closed, the rest stay here");
            break;
        }
        sent += 1;
        // Ours are closed now (dropped): the new process holds the connection.
    }
    // Dropping the receiver ends the export for connections still to come.
    drop(from);
    tracing::info!(
        new_pid,
        connections = sent,
        "handed connections to the new process"
    );
}

/// The new process's answer, within [`READY_TIMEOUT`].
async fn wait_answer(
    channel: &Channel,
    child: &mut tokio::process::Child,
) -> Result<Reply, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let got = tokio::select! {
        biased;
        got = channel.recv() => got,
        status = child.wait() => {
            // It may have said why before exiting: the message is queued before the end.
            match tokio::time::timeout(Duration::from_millis(200), channel.recv()).await {
                Ok(got) => got,
                Err(_) => return Err(match status {
                    Ok(s) => format!("it exited ({s}) before reporting ready"),
                    Err(e) => format!("cannot wait for it: {}", describe_io_error(&e)),
                }),
            }
        }
        _ = tokio::time::sleep_until(deadline) => {
            return Err(format!("it did not report ready within {}s", READY_TIMEOUT.as_secs()));
        }
    };
    match got {
        Ok(Some(m)) => parse_reply(&m.bytes).map_err(|e| format!("it answered garbage: {e}")),
        Ok(None) => Err("it closed the handover socket without reporting ready".into()),
        Err(e) => Err(format!("reading its answer: {}", describe_io_error(&e))),
    }
}

/// Waits briefly for a failed new process to exit, kills it if it does not, and says
/// how it ended (` (exit status: 1)`).
async fn finish(child: &mut tokio::process::Child) -> String {
    finish_within(child, EXIT_WAIT).await
}

/// Kills a new process that would serve on (it reported ready), and reaps it.
async fn kill(child: &mut tokio::process::Child) {
    let _ = finish_within(child, Duration::ZERO).await;
}

async fn finish_within(child: &mut tokio::process::Child, wait: Duration) -> String {
    let status = match tokio::time::timeout(wait, child.wait()).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = child.start_kill();
            match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
                Ok(Ok(s)) => return format!(" (killed: {s})"),
                _ => return " (killed)".to_owned(),
            }
        }
    };
    format!(" ({status})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_garbage_is_refused() {
        let h = Header {
            pid: 42,
            drain: Duration::from_millis(33_000),
            sockets: 3,
        };
        assert_eq!(parse_header(&encode_header(&h)), Ok(h));
        for bad in [
            "",
            "hello",
            "tidegate-upgrade 2\npid 1\ndrain_ms 1\nsockets 1\n",
            "tidegate-upgrade 1\n",
            "tidegate-upgrade 1\npid x\ndrain_ms 1\nsockets 1\n",
            "tidegate-upgrade 1\npid -1\ndrain_ms 1\nsockets 1\n",
            "tidegate-upgrade 1\npid 99999999999\ndrain_ms 1\nsockets 1\n",
            "tidegate-upgrade 1\npid 1\nsockets 1\ndrain_ms 1\n",
            "tidegate-upgrade 1\npid 1\ndrain_ms 1\nsockets 1\nmore\n",
            "tidegate-upgrade 1\npid  1\ndrain_ms 1\nsockets 1\n",
        ] {
            let e = parse_header(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn entries_round_trip_any_path_and_garbage_is_refused() {
        let weird = OsString::from_vec(b"/tmp/a b%c\n\xff.sock".to_vec());
        for e in [
            Entry {
                admin: false,
                key: ListenKey::Tcp("127.0.0.1:8080".parse().unwrap()),
                listener: Some("web".into()),
            },
            Entry {
                admin: true,
                key: ListenKey::Tcp("[::1]:0".parse().unwrap()),
                listener: None,
            },
            Entry {
                admin: false,
                key: ListenKey::Unix(PathBuf::from(weird)),
                listener: Some("api-2".into()),
            },
            Entry {
                admin: false,
                key: ListenKey::Systemd("web sockets".into()),
                listener: Some("web".into()),
            },
            Entry {
                admin: false,
                key: ListenKey::Fd(6),
                listener: Some("byfd".into()),
            },
        ] {
            let line = encode_entry(&e);
            let address = line.split(' ').nth(2).unwrap();
            assert!(!line.contains('\n') && !address.contains(' '), "{line:?}");
            assert_eq!(parse_entry(&line), Ok(e));
        }
        for bad in [
            "",
            "listen",
            "listen tcp",
            "listen tcp nowhere",
            "listen udp 127.0.0.1:1",
            "both tcp 127.0.0.1:1",
            "listen unix relative.sock",
            "listen unix /a%zz",
            "listen unix /a%4",
            "listen unix /a b",
            "listen unix /a @b c",
            "listen tcp 127.0.0.1:1 @we/b",
            "listen fd x",
            "listen unix /tmp/\u{e9}",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_parse_and_garbage_is_refused() {
        assert_eq!(parse_reply(b"ready 7"), Ok(Reply::Ready { pid: 7 }));
        assert_eq!(
            parse_reply(&encode_error("bad config\n  a.toml:1:1: x")),
            Ok(Reply::Error("bad config\n  a.toml:1:1: x".into()))
        );
        for bad in [&b""[..], b"ready", b"ready x", b"\xff", b"ok", b"ready 1 2"] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
        let long = encode_error(&"é".repeat(MAX_ERROR));
        assert!(long.len() <= MAX_ERROR + 16);
        assert!(std::str::from_utf8(&long).is_ok());
    }

    #[test]
    fn the_fd_variable_must_be_zero() {
        assert!(parse_fd_var(OsStr::new("0")).is_ok());
        for bad in ["", "x", "-1", " 0", "3", "00x", "99999999999999999999"] {
            let e = parse_fd_var(OsStr::new(bad)).unwrap_err();
            assert!(e.starts_with(ENV_FD), "{e}");
        }
        assert!(parse_fd_var(&OsString::from_vec(vec![0xff])).is_err());
    }

    #[test]
    fn the_binary_is_found_as_it_was_typed() {
        let cwd = Path::new("/srv");
        assert_eq!(
            resolve_exe(OsStr::new("/usr/bin/tidegate"), Some(cwd), None),
            Some(PathBuf::from("/usr/bin/tidegate"))
        );
        assert_eq!(
            resolve_exe(OsStr::new("./bin/tidegate"), Some(cwd), None),
            Some(PathBuf::from("/srv/./bin/tidegate"))
        );
        // On PATH: the first executable file of that name.
        let sh = resolve_exe(
            OsStr::new("sh"),
            Some(cwd),
            Some(OsStr::new("/nonexistent:/bin")),
        );
        assert_eq!(sh, Some(PathBuf::from("/bin/sh")));
        assert_eq!(
            resolve_exe(
                OsStr::new("no-such-binary-x"),
                Some(cwd),
                Some(OsStr::new("/bin"))
            ),
            None
        );
        assert_eq!(resolve_exe(OsStr::new(""), Some(cwd), None), None);
    }
}
