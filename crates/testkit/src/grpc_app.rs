//! A real gRPC server and client for the end-to-end gRPC tests: `grpc_app.py` (grpcio
//! from PyPI, raw-bytes methods, no generated code). The server listens on a Unix
//! socket (h2c with prior knowledge, what grpcio speaks) and writes what it sees
//! (`ready`, `cancelled METHOD`, `deadline METHOD SECONDS`, `done METHOD`) to an events
//! file; the client runs every scenario (unary with trailers, an error status, a
//! deadline, server, client and bidirectional streaming, a cancellation, an abort
//! mid-stream) and prints what it saw as one JSON object.
//!
//! grpcio is a prerequisite: [`require_grpcio`] fails with a message saying so (a test
//! never skips silently).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;

use crate::addr::short_tempdir;

/// The script's source.
pub const GRPC_APP_PY: &str = include_str!("grpc_app.py");

/// Fails with an explanation when Python's `grpc` module (grpcio) cannot be imported.
pub fn require_grpcio() -> anyhow::Result<()> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "the gRPC tests need Python's grpcio (a real gRPC server and client): \
             install it with `python3 -m pip install grpcio`"
        );
    }
    Ok(())
}

/// A running gRPC server on a Unix socket; stopped when dropped.
pub struct GrpcServer {
    dir: tempfile::TempDir,
    child: tokio::process::Child,
}

impl GrpcServer {
    /// Starts the server and waits (up to 15 s) until it serves.
    pub async fn start() -> anyhow::Result<GrpcServer> {
        require_grpcio()?;
        let dir = short_tempdir()?;
        let script = dir.path().join("grpc_app.py");
        std::fs::write(&script, GRPC_APP_PY)
            .with_context(|| format!("write {}", script.display()))?;
        let child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg("server")
            .arg("--unix")
            .arg(dir.path().join("grpc.sock"))
            .arg("--events")
            .arg(dir.path().join("events"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start the gRPC server (python3 grpc_app.py)")?;
        let server = GrpcServer { dir, child };
        server
            .wait_event("ready", Duration::from_secs(15))
            .await
            .context("the gRPC server did not start")?;
        Ok(server)
    }

    /// The server address as the config writes it (`unix:/tmp/.../grpc.sock`).
    pub fn server(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("grpc.sock")
    }

    /// The script (for the client).
    pub fn script(&self) -> PathBuf {
        self.dir.path().join("grpc_app.py")
    }

    /// Every event so far, one per line.
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Polls the events until one starts with `prefix`, up to `within`.
    pub async fn wait_event(&self, prefix: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        // Bounded by the deadline.
        loop {
            if let Some(e) = self.events().into_iter().find(|e| e.starts_with(prefix)) {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                bail!(
                    "gRPC server: no event {prefix:?} within {within:?}; events: {:?}",
                    self.events()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Runs every client scenario against `target` (`HOST:PORT`) over TLS (trusting
/// `ca`, SNI `name`), or over h2c when `ca` is `None`; returns what the client saw.
pub async fn run_client(
    script: &Path,
    target: &str,
    ca: Option<&Path>,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script)
        .arg("client")
        .arg("--target")
        .arg(target)
        .arg("--name")
        .arg(name);
    match ca {
        Some(ca) => cmd.arg("--ca").arg(ca),
        None => cmd.arg("--plain"),
    };
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("the gRPC client did not finish within 60 s")?
        .context("run the gRPC client")?;
    if !out.status.success() {
        bail!(
            "the gRPC client failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the gRPC client's output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
