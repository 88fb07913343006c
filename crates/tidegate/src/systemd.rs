//! What systemd (or another service manager) gives tidegate at start, and what tidegate
//! tells it back (docs/operations.md, "systemd"):
//! - [`Notify`]: the `sd_notify` protocol over `NOTIFY_SOCKET` (`READY=1`,
//!   `RELOADING=1`, `STOPPING=1`, `STATUS=`, `MAINPID=`), datagrams on a Unix socket; no
//!   libsystemd.
//! - [`ListenFds`]: socket activation, the sockets passed as descriptors 3 and up
//!   (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), plus the descriptors an `fd:N`
//!   address names; turned into the [`Inherited`] sockets that `systemd:NAME` and
//!   `fd:N` addresses take.
//!
//! Both read and then unset their environment variables, so that no child (an
//! on-demand backend) inherits them: a child that saw `NOTIFY_SOCKET` could tell
//! systemd it is ready or stopping on tidegate's behalf, and one that saw `LISTEN_FDS`
//! would look for sockets it does not have. Both must therefore run before any thread
//! starts (`run::run` calls them first).
//!
//! Boundaries: this module hands sockets over as [`Listener`]s that never remove their
//! socket file (`owns_file = false`: the file is systemd's); matching them to the
//! config's addresses is `Runtime::bind_with`'s and `admin::start`'s. A failed
//! notification is logged once, at warn, and never stops tidegate.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use tidegate_config::addr::FIRST_PASSED_FD;
use tidegate_config::{Config, ListenAddr};
use tidegate_proxy::errno::describe_io_error;
use tidegate_proxy::listen::{check_listening, Inherited, ListenKey, Listener};

/// How long one notification may block (systemd reads its socket at once; this only
/// bounds a stuck receiver).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The most addresses a `STATUS=` line names before "and N more".
const STATUS_ADDRESSES: usize = 4;

/// More descriptors than this in `LISTEN_FDS` is taken for a corrupt variable.
const MAX_LISTEN_FDS: usize = 4096;

/// The name systemd gives a passed socket without `FileDescriptorName=` when
/// `LISTEN_FDNAMES` is missing (as `sd_listen_fds_with_names` does).
const UNKNOWN_NAME: &str = "unknown";

// === Notify ===

/// The `sd_notify` channel to the service manager: a no-op when `NOTIFY_SOCKET` was not
/// set. Cheap to clone; every clone sends on the same socket.
///
/// A reload calls [`Notify::reloading`] before it starts and [`Notify::ready`] when it is
/// done (with or without a change); systemd shows the service as `reloading` in between.
#[derive(Clone, Debug, Default)]
pub struct Notify {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    /// `NOTIFY_SOCKET` as it was, for a process that takes over (a binary upgrade).
    env: OsString,
    /// The socket and the address, or why there is none (logged at the first send).
    socket: Result<(UnixDatagram, SocketAddr), String>,
    /// Whether a failure has been logged already.
    warned: AtomicBool,
    /// Set once another process is the main one (`MAINPID=` of another pid): systemd
    /// refuses (`NotifyAccess=main`) or misreads (`all`: a `STOPPING=1` would stop the
    /// service) whatever this process sends afterwards.
    handed_over: AtomicBool,
}

impl Notify {
    /// Reads `NOTIFY_SOCKET` (a socket path, or `@name` in the abstract namespace) and
    /// unsets it. Without it, every method does nothing. Call once (a second call finds
    /// the variable gone), before any thread starts: it changes the environment.
    pub fn from_env() -> Notify {
        #[allow(
            clippy::disallowed_methods,
            reason = "the binary reads the environment: the sd_notify socket"
        )]
        let Some(env) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notify::default();
        };
        #[allow(
            clippy::disallowed_methods,
            reason = "children (on-demand backends) must not notify on our behalf; \
                      single-threaded here"
        )]
        std::env::remove_var("NOTIFY_SOCKET");
        if env.is_empty() {
            return Notify::default();
        }
        let socket = open(&env);
        Notify {
            target: Some(Arc::new(Target {
                env,
                socket,
                warned: AtomicBool::new(false),
                handed_over: AtomicBool::new(false),
            })),
        }
    }

    /// `READY=1`: every listener is bound and accepting, or a reload is done.
    pub fn ready(&self) {
        self.send_raw("READY=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (the `CLOCK_MONOTONIC` time in µs, which
    /// `Type=notify-reload` requires): a reload starts; [`Notify::ready`] ends it.
    pub fn reloading(&self) {
        self.send_raw(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STOPPING=1`: the drain has started.
    pub fn stopping(&self) {
        self.send_raw("STOPPING=1");
    }

    /// `STATUS=…`: one line for `systemctl status` (line breaks become spaces).
    pub fn status(&self, text: &str) {
        self.send_raw(&format!("STATUS={}", text.replace(['\n', '\r'], " ")));
    }

    /// `MAINPID=N`: process `pid` is the service's main process from now on (after a
    /// binary upgrade, sent by the old process, the main one until then: with
    /// `NotifyAccess=main` systemd takes notifications from the main process only). Once
    /// `pid` is another process, this one sends nothing more.
    pub fn mainpid(&self, pid: u32) {
        self.send_raw(&format!("MAINPID={pid}"));
        if pid != std::process::id() {
            if let Some(t) = &self.target {
                t.handed_over.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Sends `message` as it is (`KEY=VALUE` lines) in one datagram.
    pub fn send_raw(&self, message: &str) {
        let Some(t) = &self.target else {
            return;
        };
        if t.handed_over.load(Ordering::Relaxed) {
            tracing::debug!(
                message,
                "not notifying systemd: another process is the main one"
            );
            return;
        }
        let result = match &t.socket {
            Ok((socket, addr)) => socket
                .send_to_addr(message.as_bytes(), addr)
                .map(drop)
                .map_err(|e| describe_io_error(&e)),
            Err(why) => Err(why.clone()),
        };
        match result {
            Ok(()) => tracing::debug!(message, "notified systemd"),
            Err(why) => {
                if !t.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        socket = %t.env.to_string_lossy(),
                        error = %why,
                        "cannot notify systemd (NOTIFY_SOCKET); going on without (logged once)"
                    );
                }
            }
        }
    }
}

/// The datagram socket and the address `env` names.
fn open(env: &OsString) -> Result<(UnixDatagram, SocketAddr), String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = env.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(env)),
        _ => {
            return Err(
                "expected an absolute socket path or @name (other socket kinds, such as \
                 vsock:, are not supported)"
                    .to_owned(),
            )
        }
    }
    .map_err(|e| describe_io_error(&e))?;
    let socket = UnixDatagram::unbound().map_err(|e| describe_io_error(&e))?;
    socket
        .set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(|e| describe_io_error(&e))?;
    Ok((socket, addr))
}

fn monotonic_usec() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
        }
        // Cannot fail for CLOCK_MONOTONIC on Linux; 0 makes systemd ignore the stamp.
        Err(_) => 0,
    }
}

/// The `STATUS=` line once serving: `serving 2 listeners on 127.0.0.1:8080, unix:/run/a.sock`.
pub fn serving_status(listeners: usize, addresses: &[String]) -> String {
    let mut shown = addresses
        .iter()
        .take(STATUS_ADDRESSES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if addresses.len() > STATUS_ADDRESSES {
        shown.push_str(&format!(" and {} more", addresses.len() - STATUS_ADDRESSES));
    }
    let plural = if listeners == 1 { "" } else { "s" };
    format!("serving {listeners} listener{plural} on {shown}")
}

// === ListenFds ===

/// The sockets passed in at start: those of socket activation (`LISTEN_FDS`, named by
/// `LISTEN_FDNAMES`) and the descriptors the config names as `fd:N`, owned from
/// [`ListenFds::from_env`] and [`ListenFds::claim_numbered`] until
/// [`ListenFds::into_inherited`] turns them into listeners.
#[derive(Debug, Default)]
pub struct ListenFds {
    /// Socket activation's descriptors, in order (3, 4, …).
    passed: Vec<Passed>,
    /// `fd:N` descriptors that socket activation did not pass.
    numbered: Vec<(RawFd, OwnedFd)>,
    /// `fd:N` addresses whose descriptor cannot be used, and why.
    refused: Vec<(RawFd, String)>,
    /// What systemd passed, for the error of a `systemd:NAME` that has no socket.
    summary: String,
    /// Problems with the variables, logged once logging is set up.
    warnings: Vec<String>,
}

#[derive(Debug)]
struct Passed {
    fd: RawFd,
    name: String,
    owned: OwnedFd,
    /// Named by an `fd:N` address, which then takes it rather than `systemd:NAME`.
    by_number: bool,
}

/// What the `LISTEN_*` variables say, before any descriptor is touched.
#[derive(Debug, PartialEq, Eq)]
struct ListenEnv {
    /// Each passed descriptor and its name.
    fds: Vec<(RawFd, String)>,
    /// What was passed, or why nothing was, in an operator's words.
    summary: String,
    /// What was wrong with the variables.
    warnings: Vec<String>,
}

impl ListenFds {
    /// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, unsets them, and takes
    /// over the descriptors they name when `LISTEN_PID` is this process (setting
    /// close-on-exec, so children do not inherit them). Call before any thread starts:
    /// it changes the environment and takes descriptors nothing else may own.
    pub fn from_env() -> ListenFds {
        #[allow(
            clippy::disallowed_methods,
            reason = "the binary reads the environment: socket activation"
        )]
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let env = parse_listen_env(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        );
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            #[allow(
                clippy::disallowed_methods,
                reason = "children must not take the passed sockets for theirs; \
                          single-threaded here"
            )]
            std::env::remove_var(name);
        }
        let mut fds = ListenFds {
            summary: env.summary,
            warnings: env.warnings,
            ..ListenFds::default()
        };
        for (fd, name) in env.fds {
            match claim(fd) {
                Ok(owned) => {
                    if let Err(e) = fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
                        fds.warnings.push(format!(
                            "cannot set close-on-exec on descriptor {fd} ({name}): {}",
                            e.desc()
                        ));
                    }
                    fds.passed.push(Passed {
                        fd,
                        name,
                        owned,
                        by_number: false,
                    });
                }
                Err(why) => fds.warnings.push(format!(
                    "LISTEN_FDS names descriptor {fd} ({name}), but {why}; ignoring it"
                )),
            }
        }
        fds
    }

    /// Takes over the descriptor of every `fd:N` address of `config` (listeners and
    /// `[admin] listen`): one socket activation passed, or else one the parent left
    /// open, which must be a listening socket (anything else is left alone and its
    /// address fails with the reason). Call before any thread starts, after
    /// [`ListenFds::from_env`].
    pub fn claim_numbered(&mut self, config: &Config) {
        for addr in config_addresses(config) {
            let ListenAddr::Fd(n) = addr else {
                continue;
            };
            if let Some(p) = self.passed.iter_mut().find(|p| p.fd == *n) {
                p.by_number = true;
                continue;
            }
            if self.numbered.iter().any(|(fd, _)| fd == n) {
                continue;
            }
            match claim_listening(*n) {
                Ok(owned) => self.numbered.push((*n, owned)),
                Err(why) => self.refused.push((*n, why)),
            }
        }
    }

    /// Logs what was wrong with the `LISTEN_*` variables (logging was not set up when
    /// they were read).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("socket activation: {w}");
        }
        for p in &self.passed {
            tracing::debug!(fd = p.fd, name = %p.name, "systemd passed a socket");
        }
    }

    /// The sockets as [`Inherited`]: a socket activation passed goes under `fd:N` if an
    /// address names its number, else under `systemd:NAME`. None of them ever removes its
    /// socket file. A passed descriptor that is not a listening socket makes the
    /// addresses that name it fail with the reason; one no address names is closed with
    /// a warning. Must run inside the tokio runtime.
    pub fn into_inherited(self, config: &Config) -> Inherited {
        let used: Vec<ListenKey> = config_addresses(config).map(ListenKey::of).collect();
        let mut inherited = Inherited::new();
        let mut summary = self.summary;
        let by_number: Vec<String> = self
            .passed
            .iter()
            .filter(|p| p.by_number)
            .map(|p| format!("descriptor {} ({}) is used as fd:{}", p.fd, p.name, p.fd))
            .collect();
        if !by_number.is_empty() {
            summary = format!("{summary}; {}", by_number.join(", "));
        }
        inherited.set_systemd_passed(summary);
        let sockets = self
            .passed
            .into_iter()
            .map(|p| {
                let key = match p.by_number {
                    true => ListenKey::Fd(p.fd),
                    false => ListenKey::Systemd(p.name.clone()),
                };
                (key, p.fd, Some(p.name), p.owned)
            })
            .chain(
                self.numbered
                    .into_iter()
                    .map(|(fd, owned)| (ListenKey::Fd(fd), fd, None, owned)),
            );
        for (key, fd, name, owned) in sockets {
            match Listener::from_fd(owned, false) {
                Ok(l) => inherited.push(key, l),
                Err(e) => {
                    let named = name.map(|n| format!(" named {n}")).unwrap_or_default();
                    let why = format!(
                        "descriptor {fd}{named} is not a listening socket: {}",
                        describe_io_error(&e)
                    );
                    if used.contains(&key) {
                        // Other sockets of the same name may still serve the address;
                        // if none does, this is the error it fails with.
                        tracing::warn!("socket activation: {why}; ignoring it");
                        inherited.refuse(key, why);
                    } else {
                        tracing::warn!(
                            "socket activation: {why}; the config does not use it; closed"
                        );
                    }
                }
            }
        }
        for (fd, why) in self.refused {
            inherited.refuse(ListenKey::Fd(fd), why);
        }
        inherited
    }
}

/// Closes every passed socket no address took, with a warning naming it: a socket unit
/// and a config that disagree are worth knowing about.
pub fn close_unused(inherited: &mut Inherited) {
    for (key, listener) in inherited.drain() {
        tracing::warn!(
            socket = %key,
            address = %listener.local_addr(),
            "a socket was passed in that no address of the config uses; closing it"
        );
    }
}

/// Every listen address of `config`: the listeners', then `[admin] listen`.
fn config_addresses(config: &Config) -> impl Iterator<Item = &ListenAddr> {
    config
        .listeners
        .iter()
        .flat_map(|l| l.listen.iter())
        .chain(config.admin.listen.iter())
}

/// What `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` say for process `our_pid`, as
/// `sd_listen_fds_with_names` reads them: nothing unless `LISTEN_PID` is ours;
/// descriptors from 3; a missing name is `unknown`.
fn parse_listen_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> ListenEnv {
    let nothing = |summary: String, warnings: Vec<String>| ListenEnv {
        fds: Vec::new(),
        summary,
        warnings,
    };
    let Some(fds) = fds else {
        return nothing(
            "LISTEN_FDS is not set: tidegate was not started by socket activation".into(),
            Vec::new(),
        );
    };
    let Some(pid) = pid else {
        let why = "LISTEN_FDS is set but LISTEN_PID is not, so the sockets are not known \
                   to be for this process; ignoring them"
            .to_owned();
        return nothing(why.clone(), vec![why]);
    };
    match pid.trim().parse::<u32>() {
        Ok(p) if p == our_pid => {}
        Ok(p) => {
            // Meant for another process (a parent that did not unset them): not ours.
            return nothing(
                format!(
                    "LISTEN_PID is {p}, not this process ({our_pid}): the sockets were meant \
                     for another process"
                ),
                Vec::new(),
            );
        }
        Err(_) => {
            let why = format!("LISTEN_PID is {pid:?}, not a process id; ignoring LISTEN_FDS");
            return nothing(why.clone(), vec![why]);
        }
    }
    let count = match fds.trim().parse::<usize>() {
        Ok(n) if n <= MAX_LISTEN_FDS => n,
        _ => {
            let why = format!("LISTEN_FDS is {fds:?}, not a number of descriptors; ignoring it");
            return nothing(why.clone(), vec![why]);
        }
    };
    let mut warnings = Vec::new();
    let mut listed: Vec<String> = match names {
        Some(n) => n.split(':').map(str::to_owned).collect(),
        None => Vec::new(),
    };
    if names.is_some() && listed.len() != count {
        warnings.push(format!(
            "LISTEN_FDNAMES has {} name(s) for {count} descriptor(s); {}",
            listed.len(),
            if listed.len() < count {
                "the rest are named unknown"
            } else {
                "the extra names are ignored"
            }
        ));
    }
    listed.resize(count, UNKNOWN_NAME.to_owned());
    let fds: Vec<(RawFd, String)> = listed
        .into_iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let fd = FIRST_PASSED_FD.checked_add(RawFd::try_from(i).ok()?)?;
            Some((fd, name))
        })
        .collect();
    let summary = match fds.is_empty() {
        true => "LISTEN_FDS is 0: systemd passed no sockets".to_owned(),
        false => {
            let mut names: Vec<&str> = Vec::new();
            for (_, n) in &fds {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
            format!("LISTEN_FDNAMES has: {}", names.join(", "))
        }
    };
    ListenEnv {
        fds,
        summary,
        warnings,
    }
}

/// Takes over descriptor `fd`, which the process that started tidegate passed in: it
/// must be open.
fn claim(fd: RawFd) -> Result<OwnedFd, String> {
    // An unopened number must never be owned: dropping it would close whatever the
    // process opens under that number later.
    if std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err() {
        return Err(format!(
            "descriptor {fd} is not open (whatever started tidegate passed nothing as {fd})"
        ));
    }
    #[allow(
        unsafe_code,
        reason = "taking ownership of an inherited descriptor has no safe API"
    )]
    // SAFETY: `fd` is open (just checked) and was passed in by the process that started
    // tidegate: socket activation's descriptors (`LISTEN_FDS`) are this process's by that
    // protocol, and an `fd:N` descriptor is checked to be a listening socket before it is
    // kept (`claim_listening`), which nothing in this process has created before binding.
    // Each number is claimed once (`ListenFds` keeps the list), before any thread starts,
    // so nothing else owns or closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(owned)
}

/// [`claim`] for an `fd:N` address: the descriptor must be a listening socket; anything
/// else is handed back untouched (it may be some library's) and the reason returned.
fn claim_listening(fd: RawFd) -> Result<OwnedFd, String> {
    let owned = claim(fd)?;
    if let Err(e) = check_listening(&owned) {
        // Not ours to close.
        let _ = owned.into_raw_fd();
        return Err(format!(
            "descriptor {fd} is not a listening socket: {}",
            describe_io_error(&e)
        ));
    }
    if let Err(e) = fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
        tracing::warn!(
            fd,
            error = e.desc(),
            "cannot set close-on-exec on a passed socket"
        );
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 4242;

    fn names(env: &ListenEnv) -> Vec<(RawFd, &str)> {
        env.fds.iter().map(|(fd, n)| (*fd, n.as_str())).collect()
    }

    #[test]
    fn sockets_for_this_process_start_at_descriptor_3_with_their_names() {
        let env = parse_listen_env(Some("4242"), Some("3"), Some("web:web:admin"), PID);
        assert_eq!(names(&env), [(3, "web"), (4, "web"), (5, "admin")]);
        assert_eq!(env.summary, "LISTEN_FDNAMES has: web, admin");
        assert!(env.warnings.is_empty(), "{:?}", env.warnings);
    }

    #[test]
    fn a_wrong_or_missing_listen_pid_means_the_sockets_are_not_ours() {
        let env = parse_listen_env(Some("17"), Some("2"), Some("a:b"), PID);
        assert!(env.fds.is_empty());
        assert!(
            env.summary
                .contains("LISTEN_PID is 17, not this process (4242)"),
            "{}",
            env.summary
        );
        let env = parse_listen_env(None, Some("2"), Some("a:b"), PID);
        assert!(env.fds.is_empty());
        assert_eq!(env.warnings.len(), 1);
        let env = parse_listen_env(Some("x"), Some("2"), None, PID);
        assert!(env.fds.is_empty());
        assert!(
            env.warnings[0].contains("not a process id"),
            "{:?}",
            env.warnings
        );
    }

    #[test]
    fn without_listen_fds_nothing_was_passed() {
        let env = parse_listen_env(None, None, None, PID);
        assert!(env.fds.is_empty());
        assert!(env.warnings.is_empty());
        assert!(env.summary.contains("not started by socket activation"));
        let env = parse_listen_env(Some("4242"), Some("0"), None, PID);
        assert!(env.fds.is_empty());
        assert!(env.summary.contains("passed no sockets"));
        for bad in ["-1", "many", "999999"] {
            let env = parse_listen_env(Some("4242"), Some(bad), None, PID);
            assert!(env.fds.is_empty(), "{bad}");
            assert_eq!(env.warnings.len(), 1, "{bad}");
        }
    }

    #[test]
    fn a_name_count_that_disagrees_is_padded_or_cut_with_a_warning() {
        let env = parse_listen_env(Some("4242"), Some("3"), Some("web"), PID);
        assert_eq!(names(&env), [(3, "web"), (4, "unknown"), (5, "unknown")]);
        assert!(
            env.warnings[0].contains("1 name(s) for 3 descriptor(s)"),
            "{:?}",
            env.warnings
        );
        let env = parse_listen_env(Some("4242"), Some("1"), Some("a:b:c"), PID);
        assert_eq!(names(&env), [(3, "a")]);
        assert!(
            env.warnings[0].contains("extra names are ignored"),
            "{:?}",
            env.warnings
        );
        // No LISTEN_FDNAMES at all: every socket is `unknown`, as systemd names it.
        let env = parse_listen_env(Some("4242"), Some("2"), None, PID);
        assert_eq!(names(&env), [(3, "unknown"), (4, "unknown")]);
        assert!(env.warnings.is_empty());
    }

    #[test]
    fn the_serving_status_names_a_few_addresses() {
        let addrs: Vec<String> = (0..6).map(|i| format!("127.0.0.1:{}", 8000 + i)).collect();
        assert_eq!(
            serving_status(1, &addrs[..1]),
            "serving 1 listener on 127.0.0.1:8000"
        );
        assert_eq!(
            serving_status(2, &addrs),
            "serving 2 listeners on 127.0.0.1:8000, 127.0.0.1:8001, 127.0.0.1:8002, \
             127.0.0.1:8003 and 2 more"
        );
    }

    #[test]
    fn notify_sends_each_message_as_one_datagram_and_stops_after_a_handover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notify = Notify {
            target: Some(Arc::new(Target {
                env: path.clone().into_os_string(),
                socket: open(&path.clone().into_os_string()),
                warned: AtomicBool::new(false),
                handed_over: AtomicBool::new(false),
            })),
        };
        let recv = || {
            let mut buf = [0u8; 512];
            let n = receiver.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        };
        notify.ready();
        assert_eq!(recv(), "READY=1");
        notify.status("a\nb");
        assert_eq!(recv(), "STATUS=a b");
        notify.reloading();
        let reloading = recv();
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading:?}"))
            .parse()
            .unwrap();
        assert!(usec > 0);
        notify.mainpid(1);
        assert_eq!(recv(), "MAINPID=1");
        notify.stopping();
        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            receiver.recv(&mut buf).is_err(),
            "sent after MAINPID of another process"
        );
    }

    #[test]
    fn a_notify_socket_that_is_neither_a_path_nor_abstract_is_refused() {
        assert!(open(&OsString::from("vsock:2:1234")).is_err());
        assert!(open(&OsString::from("@tidegate-test-abstract")).is_ok());
    }
}
