//! A backend for on-demand tests: a small Python HTTP server (standard library only) on
//! a Unix socket, started by tidegate itself, that reports what happens to it (start,
//! listen, each accepted connection, SIGTERM, exit) in an events file. See
//! `lazy_app.py` for its options (`--fail`, `--start-delay`, `--term-delay`,
//! `--ignore-term`).
//!
//! python3 is a prerequisite: [`LazyApp::new`] fails with a message saying so when it is
//! missing (a test never skips silently).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;

use crate::addr::short_tempdir;

/// The backend's source.
pub const LAZY_APP_PY: &str = include_str!("lazy_app.py");

/// Fails with an explanation when `python3` cannot run.
pub fn require_python3() -> anyhow::Result<()> {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import sys; sys.exit(0 if sys.version_info >= (3, 6) else 1)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "python3 (3.6 or later) is required by the on-demand tests: tidegate starts a \
             small Python HTTP server as the on-demand backend; install python3 \
             (e.g. `apt-get install python3`)"
        );
    }
    Ok(())
}

/// What the backend reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEvent {
    /// A process started.
    Start(u32),
    /// It accepts connections.
    Listen(u32),
    /// It accepted a connection; `true` when SIGTERM had arrived before.
    Accept(u32, bool),
    /// SIGTERM arrived.
    Term(u32),
    /// It exited on its own terms.
    Exit(u32),
}

/// A directory with the backend's script, its socket path and its events file.
pub struct LazyApp {
    dir: tempfile::TempDir,
}

impl LazyApp {
    /// Writes the script into a new temporary directory (short enough for a socket
    /// path). Fails when python3 is missing.
    pub fn new() -> anyhow::Result<LazyApp> {
        require_python3()?;
        let dir = short_tempdir()?;
        let script = dir.path().join("lazy_app.py");
        std::fs::write(&script, LAZY_APP_PY)
            .with_context(|| format!("write {}", script.display()))?;
        Ok(LazyApp { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The socket the backend listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("app.sock")
    }

    /// The server address, as the config writes it (`unix:/tmp/.../app.sock`).
    pub fn server(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    /// The events file.
    pub fn events_path(&self) -> PathBuf {
        self.dir.path().join("events")
    }

    /// The `command` array of the config (TOML), with `extra` options.
    pub fn command(&self, extra: &[&str]) -> String {
        let mut argv: Vec<String> = vec![
            "python3".into(),
            self.dir.path().join("lazy_app.py").display().to_string(),
            "--socket".into(),
            self.socket().display().to_string(),
            "--events".into(),
            self.events_path().display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let quoted: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<AppEvent> {
        let text = std::fs::read_to_string(self.events_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let pid = w.get(1)?.parse().ok()?;
                Some(match (w[0], w.get(2)) {
                    ("start", _) => AppEvent::Start(pid),
                    ("listen", _) => AppEvent::Listen(pid),
                    ("accept", after) => AppEvent::Accept(pid, after == Some(&"1")),
                    ("term", _) => AppEvent::Term(pid),
                    ("exit", _) => AppEvent::Exit(pid),
                    _ => return None,
                })
            })
            .collect()
    }

    /// The pids of every process started, in order.
    pub fn started(&self) -> Vec<u32> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                AppEvent::Start(pid) => Some(pid),
                _ => None,
            })
            .collect()
    }

    /// Connections accepted after SIGTERM (tidegate must make none).
    pub fn accepted_after_term(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, AppEvent::Accept(_, true)))
            .count()
    }

    /// Polls the events until `check` holds, up to `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[AppEvent]) -> bool,
    ) -> anyhow::Result<Vec<AppEvent>> {
        let deadline = Instant::now() + within;
        // Bounded by the deadline.
        loop {
            let events = self.events();
            if check(&events) {
                return Ok(events);
            }
            if Instant::now() >= deadline {
                bail!("lazy app: {what} did not happen within {within:?}; events: {events:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
