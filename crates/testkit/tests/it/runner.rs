//! The `Tidegate` runner, against a stand-in shell script that follows the binary's
//! readiness contract (the real binary is tested by the tidegate crate).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tidegate_testkit::{process_gone, Addr, Tidegate};

const T: Duration = Duration::from_secs(5);

/// Writes an executable `sh` script into `dir`.
fn script(dir: &Path, body: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("fake-tidegate");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Logs like the binary (readiness on stdout, another line on stderr), then waits for
/// TERM (exit 3) — the sleep is a child of the script, killed on the way out.
const FAKE_RUN: &str = r#"
test "$1" = run && test "$2" = --config && test -f "$3" || { echo "bad args: $*" >&2; exit 9; }
trap 'kill $pid 2>/dev/null; echo "2026-11-21T10:00:01Z  INFO tidegate: stopped"; exit 3' TERM
echo "2026-11-21T10:00:00Z  INFO tidegate: starting config=$3" >&2
echo "2026-11-21T10:00:00Z  INFO tidegate::listen: listening listener=web address=127.0.0.1:41234"
echo '{"level":"INFO","fields":{"message":"listening","listener":"web","address":"unix:web.sock:mode=660"}}'
echo "2026-11-21T10:00:00Z  INFO tidegate: ready"
sleep 30 & pid=$!
wait $pid
"#;

#[tokio::test]
async fn runner_waits_for_ready_and_knows_the_addresses() -> anyhow::Result<()> {
    let bin_dir = tempfile::tempdir()?;
    let bin = script(bin_dir.path(), FAKE_RUN)?;
    let mut tg = Tidegate::start(&bin, "[server]\n").await?;
    assert_eq!(tg.addr("web")?, Addr::Tcp("127.0.0.1:41234".parse()?));
    assert_eq!(
        tg.addrs("web"),
        [
            Addr::Tcp("127.0.0.1:41234".parse()?),
            Addr::Unix(tg.dir().join("web.sock"))
        ]
    );
    assert!(tg.addr("admin").is_err());
    assert_eq!(std::fs::read_to_string(tg.config_path())?, "[server]\n");
    let line = tg.wait_log("starting", T).await?;
    assert!(
        line.contains(&tg.config_path().display().to_string()),
        "{line}"
    );

    tg.signal(Signal::SIGTERM)?;
    let status = tg.wait_exit(T).await?;
    assert_eq!(status.code(), Some(3));
    assert!(
        tg.logs().iter().any(|l| l.ends_with("stopped")),
        "{:?}",
        tg.logs()
    );
    assert!(
        tg.signal(Signal::SIGTERM).is_err(),
        "no signal after reaping"
    );
    Ok(())
}

#[tokio::test]
async fn drop_kills_and_reaps_the_process() -> anyhow::Result<()> {
    let bin_dir = tempfile::tempdir()?;
    // `exec`, so that the killed process is the only one (no orphaned sleep).
    let bin = script(
        bin_dir.path(),
        "echo '2026-11-21T10:00:00Z  INFO tidegate: ready'; exec sleep 30",
    )?;
    let tg = Tidegate::start(&bin, "").await?;
    let pid = tg.pid();
    let dir = tg.dir().to_path_buf();
    assert!(!process_gone(pid));
    drop(tg);
    assert!(process_gone(pid), "pid {pid} still running");
    assert!(!dir.exists(), "temporary directory left behind");
    Ok(())
}

#[tokio::test]
async fn exit_before_ready_is_an_error_with_the_logs() -> anyhow::Result<()> {
    let bin_dir = tempfile::tempdir()?;
    let bin = script(
        bin_dir.path(),
        "echo 'tidegate.toml:1:1: bad config' >&2; exit 2",
    )?;
    let err = Tidegate::start(&bin, "nonsense").await.expect_err("exits");
    let msg = format!("{err:#}");
    assert!(msg.contains("before logging ready"), "{msg}");
    assert!(msg.contains("tidegate.toml:1:1: bad config"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn check_runs_the_check_subcommand() -> anyhow::Result<()> {
    let bin_dir = tempfile::tempdir()?;
    let bin = script(
        bin_dir.path(),
        r#"test "$1" = check && test "$2" = --config || exit 9; cat "$3"; exit 1"#,
    )?;
    let out = Tidegate::check(&bin, "[listeners.web]\n").await?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[listeners.web]\n");
    Ok(())
}
