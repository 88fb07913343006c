//! The spawner thread: it forks every on-demand backend, and lives as long as the
//! process.
//!
//! Why a thread of its own: each child gets `PR_SET_PDEATHSIG = SIGKILL`, and the kernel
//! sends that signal when the *thread* that forked the child exits, so forking from a
//! tokio worker or blocking-pool thread would kill children whenever tokio retires that
//! thread. This thread never exits, so the signal fires exactly when tidegate dies — by
//! SIGKILL included. After setting it, the child checks that its parent is still
//! tidegate (it may have died between the fork and the `prctl`).
//!
//! This file holds the crate's one `unsafe` block (the `pre_exec` hook), alone: the
//! `#[allow(unsafe_code)]` is on that block, and `unsafe_code` stays denied everywhere
//! else.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{mpsc, Arc, OnceLock};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::oneshot;

use super::process::pgid;
use crate::errno::describe_io_error;

/// The program to run and how.
#[derive(Debug)]
pub(super) struct CommandSpec {
    pub(super) program: String,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) cwd: PathBuf,
}

pub(super) struct SpawnRequest {
    pub(super) spec: Arc<CommandSpec>,
    /// The runtime the child is reaped on (tokio registers the child with it).
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) reply: oneshot::Sender<io::Result<Child>>,
}

/// Starts the thread that forks every on-demand backend, once per process; later calls
/// return the same. It never exits: its channel's sender lives in a static, so its
/// children's `PR_SET_PDEATHSIG` fires only when tidegate itself dies.
pub fn start_spawner() -> io::Result<()> {
    spawner().map(drop)
}

pub(super) fn spawner() -> io::Result<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("tidegate-spawner".to_owned())
                .spawn(move || serve_spawns(rx))
                .map(|_| tx)
                .map_err(|e| describe_io_error(&e))
        })
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))
}

fn serve_spawns(requests: mpsc::Receiver<SpawnRequest>) {
    let parent = Pid::this();
    // Ends only if every sender is gone, which the static prevents.
    while let Ok(req) = requests.recv() {
        let result = {
            let _runtime = req.runtime.enter();
            spawn_child(&req.spec, parent)
        };
        if let Err(Ok(child)) = req.reply.send(result) {
            // Nobody waits for it any more (the runtime is shutting down): don't leave it.
            if let Some(pid) = child.id() {
                let _ = killpg(pgid(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Forks and execs one backend (on the spawner thread).
fn spawn_child(spec: &CommandSpec, parent: Pid) -> io::Result<Child> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // setpgid(0, 0) in the child: its own process group, so `killpg` reaches
        // everything it starts, and a Ctrl-C at tidegate's terminal does not reach it
        // (tidegate decides when its children stop).
        .process_group(0)
        .kill_on_drop(false);
    // `unsafe_code` is denied crate-wide; this is the one exception: `pre_exec` is the
    // only way to run `prctl` in the child between fork and exec.
    #[allow(
        unsafe_code,
        reason = "pre_exec is the only way to run prctl in the child between fork and exec"
    )]
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls prctl(2) and getppid(2) only,
    // allocates nothing (errors are raw OS errors), and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // tidegate may have died between the fork and the prctl: then the signal
            // will never come, so don't exec.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}
