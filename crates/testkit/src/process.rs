//! Running the built tidegate binary: a handle that starts it with a config in a
//! temporary directory, captures every log line, knows its listening addresses, and
//! never leaks the process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::addr::{short_tempdir, Addr};

/// How long [`Tidegate::start`] waits for the `ready` log line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Tidegate::check`] may run.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often log-based waits look again.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// After the process exits, how long to wait for the last lines of its pipes (a
/// grandchild may hold them open).
const DRAIN_LOGS: Duration = Duration::from_secs(1);

/// One structured log event, from a text or JSON line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    /// The event's message (`listening`, `ready`, ...).
    pub message: String,
    /// Its fields in order, values unquoted.
    pub fields: Vec<(String, String)>,
}

impl LogEvent {
    /// A field's value by name.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one log line of tidegate (tracing-subscriber's text or JSON format), after
/// removing ANSI colour codes. Text: `TIMESTAMP  LEVEL target: message key=value ...`
/// (timestamp, target and span prefixes optional; a value may be `"quoted"`). JSON:
/// `{"fields": {"message": ..., key: value}, ...}` or the same keys at the top level.
/// `None` for a line that is neither (e.g. an access log line with no level).
pub fn parse_log_line(line: &str) -> Option<LogEvent> {
    let line = strip_ansi(line);
    let line = line.trim();
    if line.starts_with('{') {
        return parse_json_line(line);
    }
    parse_text_line(line)
}

fn parse_json_line(line: &str) -> Option<LogEvent> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let top = value.as_object()?;
    let fields = match top.get("fields").and_then(|f| f.as_object()) {
        Some(f) => f,
        None => top,
    };
    let mut message = String::new();
    let mut out = Vec::new();
    for (k, v) in fields {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match k.as_str() {
            "message" => message = v,
            // Envelope keys of the flattened form.
            "timestamp" | "level" | "target" | "span" | "spans" | "threadId" | "threadName"
                if std::ptr::eq(fields, top) => {}
            _ => out.push((k.clone(), v)),
        }
    }
    Some(LogEvent {
        message,
        fields: out,
    })
}

const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

fn parse_text_line(line: &str) -> Option<LogEvent> {
    let tokens = tokenize(line);
    let level = tokens.iter().position(|t| LEVELS.contains(&t.as_str()))?;
    let mut rest = tokens[level + 1..].iter().peekable();
    // Target and span prefixes (`tidegate::run:`, `conn{id=3}:`) end with ':'.
    while rest.next_if(|t| t.ends_with(':') && !is_field(t)).is_some() {}
    let mut message = Vec::new();
    while let Some(t) = rest.next_if(|t| !is_field(t)) {
        message.push(t.as_str());
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    for t in rest {
        match t.split_once('=') {
            Some((k, v)) if is_field(t) => fields.push((k.to_string(), unquote(v))),
            // A Display value with spaces (`error=connection refused`) continues.
            _ => {
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(t);
                }
            }
        }
    }
    Some(LogEvent {
        message: message.join(" "),
        fields,
    })
}

/// `key=...` where key looks like a field name.
fn is_field(token: &str) -> bool {
    let Some((key, _)) = token.split_once('=') else {
        return false;
    };
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Splits on whitespace, keeping `"quoted strings"` (with `\"` escapes) in one token.
fn tokenize(line: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in line.chars() {
        if in_quotes {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
        } else if c.is_whitespace() {
            if !cur.is_empty() {
                tokens.push(std::mem::take(&mut cur));
            }
        } else {
            if c == '"' {
                in_quotes = true;
            }
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    tokens
}

fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes ANSI escape sequences (CSI `ESC [ ... letter`, and lone `ESC x`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'[').is_some() {
            // Parameters and intermediates, then one final byte in '@'..='~'.
            for p in chars.by_ref() {
                if ('@'..='~').contains(&p) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// The `listening` events (listener name, address) before the first `ready` event, or
/// `None` if `ready` has not been logged. Relative Unix paths are joined to `base`.
///
/// Order is exact within one stream only: stdout and stderr are separate pipes, so the
/// binary must log its `listening` and `ready` lines on the same one.
fn readiness(lines: &[String], base: &Path) -> Option<anyhow::Result<Vec<(String, Addr)>>> {
    let mut listeners = Vec::new();
    for line in lines {
        let Some(ev) = parse_log_line(line) else {
            continue;
        };
        if ev.message.trim() == "ready" {
            return Some(Ok(listeners));
        }
        if !ev.message.split_whitespace().any(|w| w == "listening") {
            continue;
        }
        if let (Some(name), Some(addr)) = (ev.field("listener"), ev.field("address")) {
            match Addr::parse(addr, base) {
                Ok(a) => listeners.push((name.to_string(), a)),
                Err(e) => return Some(Err(e.context(format!("log line {line:?}")))),
            }
        }
    }
    None
}

/// Where the config and relative paths live: a temporary directory removed on drop, or
/// one the test owns.
enum RunDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl RunDir {
    fn path(&self) -> &Path {
        match self {
            RunDir::Temp(t) => t.path(),
            RunDir::Kept(p) => p,
        }
    }
}

type Logs = Arc<Mutex<Vec<String>>>;

fn lock(logs: &Logs) -> MutexGuard<'_, Vec<String>> {
    // A push cannot be half-done, so a poisoned lock is still consistent.
    logs.lock().unwrap_or_else(|e| e.into_inner())
}

/// How [`Tidegate::spawn_with`] starts the binary, beyond `BIN run --config FILE`.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// A program and its arguments run in front of `BIN run --config FILE`, which it
    /// must exec in the same process (`systemd-socket-activate -l ADDR`, `env -u VAR`):
    /// the handle's pid is the wrapper's.
    pub wrapper: Vec<OsString>,
    /// Environment variables set besides the usual ones (`NOTIFY_SOCKET`). A wrapper
    /// may not pass them on (`systemd-socket-activate` needs `-E NAME=VALUE`).
    pub env: Vec<(OsString, OsString)>,
    /// The directory for `tidegate.toml` (kept afterwards); a new temporary one when
    /// `None`.
    pub dir: Option<PathBuf>,
}

/// A running tidegate process (`tidegate run --config DIR/tidegate.toml`).
///
/// Ready means: the log shows one `listening` event (fields `listener`, `address`) per
/// bound address, then a `ready` event, all on the same stream (stdout or stderr), in
/// text or JSON form.
///
/// Its working directory and `XDG_RUNTIME_DIR` are its directory (so relative `unix:`
/// paths and the default admin socket are per instance), `NO_COLOR=1` is set, and stdout
/// and stderr are captured line by line (ANSI codes removed) into [`Tidegate::logs`].
/// Dropping it sends SIGKILL and reaps the process (and kills any process a binary
/// upgrade started on the same config); it also dies (PR_SET_PDEATHSIG) if the thread
/// that started it exits, so even an aborted test run leaves none behind. (A process an
/// upgrade started is not covered by PR_SET_PDEATHSIG: only the drop kills it.)
pub struct Tidegate {
    bin: PathBuf,
    child: Child,
    pid: u32,
    /// Processes later binary upgrades started, oldest first (not our children: each
    /// outlives the process that started it). The last one serves.
    upgraded: Vec<u32>,
    exit: Option<ExitStatus>,
    config_path: PathBuf,
    logs: Logs,
    readers: Vec<JoinHandle<()>>,
    reader_aborts: Vec<AbortHandle>,
    listeners: Vec<(String, Addr)>,
    // Last: removed only after the process is dead.
    dir: RunDir,
}

// === impl Tidegate ===

impl Tidegate {
    /// Writes `config_toml` to `tidegate.toml` in a new temporary directory, starts
    /// `bin run --config` on it, and waits (up to [`READY_TIMEOUT`]) for the `ready` log
    /// line. An exit or a timeout first is an error carrying the logs.
    pub async fn start(bin: &Path, config_toml: &str) -> anyhow::Result<Tidegate> {
        let dir = short_tempdir()?;
        Self::launch(RunDir::Temp(dir), bin, config_toml).await
    }

    /// [`Tidegate::start`] in a directory the test owns (kept afterwards).
    pub async fn start_in(dir: &Path, bin: &Path, config_toml: &str) -> anyhow::Result<Tidegate> {
        Self::launch(RunDir::Kept(dir.to_path_buf()), bin, config_toml).await
    }

    async fn launch(dir: RunDir, bin: &Path, config_toml: &str) -> anyhow::Result<Tidegate> {
        let mut tg = Self::spawn(dir, bin, config_toml, &Launch::default())?;
        tg.wait_ready().await?;
        Ok(tg)
    }

    /// Starts the binary as `launch` says (a wrapper in front, more environment) and
    /// returns without waiting for `ready`: a socket-activation wrapper execs tidegate
    /// only at the first connection. [`Tidegate::wait_ready`] waits.
    pub fn spawn_with(bin: &Path, config_toml: &str, launch: &Launch) -> anyhow::Result<Tidegate> {
        let dir = match &launch.dir {
            Some(d) => RunDir::Kept(d.clone()),
            None => RunDir::Temp(short_tempdir()?),
        };
        Self::spawn(dir, bin, config_toml, launch)
    }

    fn spawn(
        dir: RunDir,
        bin: &Path,
        config_toml: &str,
        launch: &Launch,
    ) -> anyhow::Result<Tidegate> {
        let config_path = dir.path().join("tidegate.toml");
        std::fs::write(&config_path, config_toml)
            .with_context(|| format!("write {}", config_path.display()))?;
        let mut cmd = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let parent = std::process::id();
        #[allow(
            unsafe_code,
            reason = "pre_exec is the only way to set PR_SET_PDEATHSIG in the child"
        )]
        // SAFETY: runs in the forked child before exec; it only makes two system calls
        // (prctl, getppid), both async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The parent may have died before prctl took effect.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "spawn {:?} {} run --config {}",
                launch.wrapper,
                bin.display(),
                config_path.display()
            )
        })?;
        let pid = child.id().context("spawned tidegate has no pid")?;
        let logs: Logs = Arc::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(out, logs.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(err, logs.clone())));
        }
        let reader_aborts = readers.iter().map(JoinHandle::abort_handle).collect();
        // From here on, Drop kills and reaps it whatever happens.
        Ok(Tidegate {
            bin: bin.to_path_buf(),
            child,
            pid,
            upgraded: Vec::new(),
            exit: None,
            config_path,
            logs,
            readers,
            reader_aborts,
            listeners: Vec::new(),
            dir,
        })
    }

    /// Waits (up to [`READY_TIMEOUT`]) for the `ready` log line, and learns the
    /// listening addresses. An exit or a timeout first is an error carrying the logs.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let deadline = Instant::now() + READY_TIMEOUT;
        // Bounded by the deadline.
        loop {
            let lines = self.logs();
            if let Some(found) = readiness(&lines, self.dir.path()) {
                self.listeners = found?;
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("wait for tidegate")? {
                self.exit = Some(status);
                self.drain_logs().await;
                bail!(
                    "{} exited ({status}) before logging ready; logs:\n{}",
                    bin.display(),
                    self.logs().join("\n")
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not log ready within {READY_TIMEOUT:?}; logs:\n{}",
                    bin.display(),
                    self.pid,
                    lines.join("\n")
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Runs `bin check --config FILE` on `config_toml` (written to `tidegate.toml` in a
    /// temporary directory) and returns its status and output.
    pub async fn check(bin: &Path, config_toml: &str) -> anyhow::Result<Output> {
        let dir = short_tempdir()?;
        let config_path = dir.path().join("tidegate.toml");
        std::fs::write(&config_path, config_toml)
            .with_context(|| format!("write {}", config_path.display()))?;
        let out = Command::new(bin)
            .arg("check")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(CHECK_TIMEOUT, out)
            .await
            .with_context(|| {
                format!(
                    "{} check did not finish within {CHECK_TIMEOUT:?}",
                    bin.display()
                )
            })?
            .with_context(|| format!("run {} check", bin.display()))
    }

    /// The process id of the process serving: the one started, or the last one a
    /// binary upgrade started ([`Tidegate::follow`]).
    pub fn pid(&self) -> u32 {
        self.upgraded.last().copied().unwrap_or(self.pid)
    }

    /// The process this handle started.
    pub fn first_pid(&self) -> u32 {
        self.pid
    }

    /// A binary upgrade started `pid`, which serves from now on: [`Tidegate::pid`] and
    /// [`Tidegate::signal`] name it, and dropping this handle kills it too. Its log lines
    /// arrive with the others (it inherits the stderr of the process that started it).
    pub fn follow(&mut self, pid: u32) {
        self.upgraded.push(pid);
    }

    /// Waits until process `pid` has exited: gone, or a zombie nobody has reaped yet.
    /// A timeout is an error carrying the logs.
    pub async fn wait_gone(&self, pid: u32, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        // Bounded by the deadline.
        while !crate::procfs::process_gone(pid) {
            if Instant::now() >= deadline {
                bail!(
                    "process {pid} still running after {within:?}; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        Ok(())
    }

    /// The directory holding `tidegate.toml` (and the process's working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file's path.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The first address listener `name` logged at startup.
    pub fn addr(&self, listener: &str) -> anyhow::Result<Addr> {
        self.addrs(listener).into_iter().next().with_context(|| {
            format!(
                "tidegate logged no address for listener {listener:?}; it logged {:?}",
                self.listeners
            )
        })
    }

    /// Every address listener `name` logged at startup, in order.
    pub fn addrs(&self, listener: &str) -> Vec<Addr> {
        self.listeners
            .iter()
            .filter(|(n, _)| n == listener)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// Every (listener, address) logged at startup.
    pub fn listeners(&self) -> &[(String, Addr)] {
        &self.listeners
    }

    /// Every line of stdout and stderr so far, in arrival order, ANSI codes removed.
    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs).clone()
    }

    /// Sends `sig` to the process. An error once it has been reaped (its pid may be
    /// someone else's by then).
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if let Some(&pid) = self.upgraded.last() {
            let pid = i32::try_from(pid).context("pid out of range")?;
            return nix::sys::signal::kill(Pid::from_raw(pid), sig)
                .with_context(|| format!("kill -{sig} {pid}"));
        }
        if let Some(status) = self.exit {
            bail!("tidegate (pid {}) already exited ({status})", self.pid);
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        nix::sys::signal::kill(Pid::from_raw(pid), sig)
            .with_context(|| format!("kill -{sig} {}", self.pid))
    }

    /// Waits for the process to exit and reaps it; afterwards [`Tidegate::logs`] holds
    /// its last lines too. A timeout is an error carrying the logs.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(r) => r.context("wait for tidegate")?,
            Err(_) => bail!(
                "tidegate (pid {}) still running after {within:?}; logs:\n{}",
                self.pid,
                self.logs().join("\n")
            ),
        };
        self.exit = Some(status);
        self.drain_logs().await;
        Ok(status)
    }

    /// Waits for a log line containing `substr` (any line so far counts) and returns it.
    pub async fn wait_log(&self, substr: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        // Bounded by the deadline.
        loop {
            if let Some(line) = lock(&self.logs).iter().find(|l| l.contains(substr)) {
                return Ok(line.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no log line containing {substr:?} within {within:?}; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits (briefly) for the log readers to reach the end of the pipes.
    async fn drain_logs(&mut self) {
        let deadline = Instant::now() + DRAIN_LOGS;
        for reader in std::mem::take(&mut self.readers) {
            // A reader still running after this (a grandchild holds the pipe) keeps
            // collecting; Drop aborts it.
            let _ = tokio::time::timeout_at(deadline, reader).await;
        }
    }
}

/// Every process still running this instance's config (`run --config PATH`): the one
/// started and any a binary upgrade started after it, followed or not (a test that
/// failed half-way through an upgrade must leave none behind).
fn instances_of(config_path: &Path) -> Vec<u32> {
    let needle = config_path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == needle))
        })
        .collect()
}

impl Drop for Tidegate {
    fn drop(&mut self) {
        let mut pids = self.upgraded.clone();
        for pid in instances_of(&self.config_path) {
            if pid != self.pid && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        for pid in pids {
            if !crate::procfs::process_gone(pid) {
                if let Ok(raw) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
                }
            }
        }
        if self.exit.is_none() {
            let _ = self.child.start_kill();
            // SIGKILL cannot be caught, so this ends quickly; bounded all the same.
            for _ in 0..5000 {
                match self.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        for r in &self.reader_aborts {
            r.abort();
        }
    }
}

impl std::fmt::Debug for Tidegate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tidegate")
            .field("pid", &self.pid)
            .field("dir", &self.dir.path())
            .field("listeners", &self.listeners)
            .field("exit", &self.exit)
            .finish()
    }
}

/// Copies lines from a pipe into `logs` until end of file.
async fn pump(pipe: impl AsyncRead + Unpin, logs: Logs) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    // Bounded by the pipe: it ends when every writer has closed it.
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = strip_ansi(text.trim_end_matches(['\n', '\r']));
                lock(&logs).push(text);
            }
            Err(e) => {
                lock(&logs).push(format!("testkit: reading tidegate output failed: {e}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn text_listening_line_parses() {
        let ev = parse_log_line(
            "2026-11-21T10:00:00.123456Z  INFO tidegate::run: listening listener=web address=127.0.0.1:41234",
        );
        assert_eq!(
            ev,
            Some(LogEvent {
                message: "listening".into(),
                fields: vec![
                    ("listener".into(), "web".into()),
                    ("address".into(), "127.0.0.1:41234".into())
                ],
            })
        );
    }

    #[test]
    fn text_line_with_ansi_spans_and_quotes_parses() {
        let line = "\u{1b}[2m2026-11-21T10:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[1mrun\u{1b}[0m\u{1b}[1m{\u{1b}[0mpid=7\u{1b}[1m}\u{1b}[0m\u{1b}[2m:\u{1b}[0m \u{1b}[2mtidegate\u{1b}[0m\u{1b}[2m:\u{1b}[0m listening \u{1b}[3mlistener\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"web\" \u{1b}[3maddress\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"unix:/tmp/a b/w.sock\"";
        let ev = parse_log_line(line).expect("a log event");
        assert_eq!(ev.message, "listening");
        assert_eq!(ev.field("listener"), Some("web"));
        assert_eq!(ev.field("address"), Some("unix:/tmp/a b/w.sock"));
    }

    #[test]
    fn text_display_value_with_spaces_is_kept_whole() {
        let ev = parse_log_line(
            "2026-11-21T10:00:00Z  WARN connect failed upstream=app error=connection refused (os error 111)",
        )
        .expect("a log event");
        assert_eq!(ev.message, "connect failed");
        assert_eq!(ev.field("error"), Some("connection refused (os error 111)"));
    }

    #[test]
    fn json_lines_parse_nested_and_flattened() {
        let nested = r#"{"timestamp":"2026-11-21T10:00:00Z","level":"INFO","fields":{"message":"listening","listener":"web","address":"[::1]:41234"},"target":"tidegate"}"#;
        let ev = parse_log_line(nested).expect("a log event");
        assert_eq!(ev.message, "listening");
        assert_eq!(ev.field("address"), Some("[::1]:41234"));
        let flat = r#"{"timestamp":"2026-11-21T10:00:00Z","level":"INFO","message":"ready","workers":2,"target":"tidegate"}"#;
        let ev = parse_log_line(flat).expect("a log event");
        assert_eq!(ev.message, "ready");
        assert_eq!(ev.fields, vec![("workers".to_string(), "2".to_string())]);
    }

    #[test]
    fn lines_without_a_level_are_not_events() {
        assert_eq!(parse_log_line("127.0.0.1 - GET / 200"), None);
        assert_eq!(parse_log_line(""), None);
    }

    #[test]
    fn readiness_collects_listeners_until_ready() -> anyhow::Result<()> {
        let base = Path::new("/tmp/tgkit1");
        let log = lines(&[
            "2026-11-21T10:00:00Z  INFO tidegate: starting version=0.1.0",
            "2026-11-21T10:00:00Z  INFO tidegate: listening listener=web address=127.0.0.1:41234",
            r#"{"level":"INFO","fields":{"message":"listening","listener":"web","address":"[::1]:41235"}}"#,
            "2026-11-21T10:00:00Z  INFO tidegate: listening listener=sock address=unix:web.sock:mode=660",
        ]);
        assert!(
            readiness(&log, base).is_none(),
            "not ready before the ready line"
        );
        let mut log = log;
        log.push("2026-11-21T10:00:00Z  INFO tidegate: ready".to_string());
        log.push(
            "2026-11-21T10:00:01Z  INFO tidegate: listening listener=late address=127.0.0.1:1"
                .to_string(),
        );
        let found = readiness(&log, base).expect("ready")?;
        assert_eq!(
            found,
            vec![
                ("web".to_string(), Addr::Tcp("127.0.0.1:41234".parse()?)),
                ("web".to_string(), Addr::Tcp("[::1]:41235".parse()?)),
                (
                    "sock".to_string(),
                    Addr::Unix("/tmp/tgkit1/web.sock".into())
                ),
            ]
        );
        Ok(())
    }

    #[test]
    fn ready_must_be_the_whole_message() {
        let log = lines(&["2026-11-21T10:00:00Z  INFO tidegate: upstream app ready server=0"]);
        assert!(readiness(&log, Path::new("/")).is_none());
    }
}
