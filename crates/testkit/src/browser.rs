//! A real browser for the end-to-end HTTP/2 test: headless Chromium (Debian's
//! `chromium`) loads a page from `browser_app.py` (standard library) through tidegate.
//! The page opens more EventSources at once than the 6 connections per host a browser
//! opens over HTTP/1.1, then POSTs to `/report` the protocol of the navigation
//! (`nextHopProtocol`) and the first event of each stream. Over HTTP/1.1 the 7th
//! stream and the report itself wait for a connection that never frees up, so a report
//! with every stream is only possible over HTTP/2.
//!
//! Chromium is a prerequisite: [`require_chromium`] fails with a message saying so.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;

use crate::addr::short_tempdir;

/// The backend's source.
pub const BROWSER_APP_PY: &str = include_str!("browser_app.py");

/// The Chromium binary Debian installs.
pub const CHROMIUM: &str = "chromium";

/// Fails with an explanation when Chromium cannot run.
pub fn require_chromium() -> anyhow::Result<()> {
    let ok = std::process::Command::new(CHROMIUM)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "the browser test needs headless Chromium: install it with \
             `apt-get install -y chromium`"
        );
    }
    Ok(())
}

/// The page's backend on `127.0.0.1`; stopped when dropped.
pub struct BrowserApp {
    dir: tempfile::TempDir,
    port: u16,
    _child: tokio::process::Child,
}

impl BrowserApp {
    /// Starts the backend with a page that opens `streams` EventSources.
    pub async fn start(streams: usize) -> anyhow::Result<BrowserApp> {
        crate::lazy_app::require_python3()?;
        let dir = short_tempdir()?;
        let script = dir.path().join("browser_app.py");
        std::fs::write(&script, BROWSER_APP_PY)
            .with_context(|| format!("write {}", script.display()))?;
        let port_file = dir.path().join("port");
        let child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--report")
            .arg(dir.path().join("report"))
            .arg("--streams")
            .arg(streams.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start the browser test's backend (python3 browser_app.py)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Bounded by the deadline.
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            if Instant::now() >= deadline {
                bail!("the browser test's backend did not start within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Ok(BrowserApp {
            dir,
            port,
            _child: child,
        })
    }

    /// The backend's address as the config writes it.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn report_path(&self) -> PathBuf {
        self.dir.path().join("report")
    }

    /// Opens `url` in headless Chromium (`host` resolving to 127.0.0.1, certificate
    /// errors ignored: the test's CA is not the browser's) and waits up to `within` for
    /// the page's report.
    pub async fn load(
        &self,
        url: &str,
        host: &str,
        within: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        require_chromium()?;
        let profile = self.dir.path().join("profile");
        let mut browser = tokio::process::Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--ignore-certificate-errors",
            ])
            .arg(format!("--host-resolver-rules=MAP {host} 127.0.0.1"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start chromium")?;
        let deadline = Instant::now() + within;
        // Bounded by the deadline.
        let report = loop {
            if let Ok(text) = std::fs::read_to_string(self.report_path()) {
                break text;
            }
            if Instant::now() >= deadline {
                let _ = browser.kill().await;
                bail!(
                    "the page sent no report within {within:?}: its streams or the report \
                     waited for a connection (HTTP/1.1's 6 per host?)"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = browser.kill().await;
        serde_json::from_str(&report).with_context(|| format!("the page's report: {report}"))
    }
}

/// The source of `h2_streams.py`: many HTTP/2 streams held open on one TLS connection
/// (Python's `h2`), counted before and after the test says so on stdin.
pub const H2_STREAMS_PY: &str = include_str!("h2_streams.py");

/// Fails with an explanation when Python's `h2` module cannot be imported.
pub fn require_python_h2() -> anyhow::Result<()> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import h2.connection"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "this test needs Python's h2 library (an HTTP/2 client that holds many \
             streams): install it with `python3 -m pip install h2`"
        );
    }
    Ok(())
}
