//! Process control of an on-demand backend: signals to its process group (SIGTERM,
//! SIGKILL, the sweep after the leader exits), reaping, and the pumps that log its
//! output.
//!
//! Every child runs in its own process group (the spawner puts it there). Signals go to
//! the whole group (`killpg`); after the leader exits, the group is swept with SIGKILL.
//! Each line a child writes to stdout or stderr is logged with the upstream's name; the
//! last lines of stderr are repeated in the log when a start fails or the process dies.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::errno::{describe_errno, describe_io_error};

/// Lines of stderr kept for the log line of a failed start or a crash.
const STDERR_TAIL_LINES: usize = 10;
/// A longer output line is cut here (a child printing without newlines must not grow
/// tidegate's memory).
const MAX_LINE: usize = 4096;
/// After the process exited, how long its output pumps get to log the last lines (a
/// grandchild may hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);
/// Whether any process of the group `pgid` is still running (a zombie counts as gone:
/// orphans are not always reaped, PID 1 here does not). Reads `/proc`; if it can't, asks
/// the kernel whether the group exists at all.
pub(super) fn group_has_live_members(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return killpg(self::pgid(pgid), None).is_ok();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1);
            state.is_some_and(|s| s != "Z" && s != "X")
                && pgrp.and_then(|p| p.parse::<u32>().ok()) == Some(pgid)
        })
}

/// `status 3`, or `signal 9 (SIGKILL)`.
fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("status {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        None => status.to_string(),
    }
}

pub(super) fn pgid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

pub(super) type Tail = Arc<Mutex<VecDeque<String>>>;

/// A spawned process group, owned by its life task. Dropped without having been reaped
/// (the runtime shut down under the task), it kills its group: no orphan either way.
pub(super) struct Process {
    pub(super) pid: u32,
    child: Child,
    /// How it ended, once reaped.
    exited: Option<String>,
    pumps: Vec<JoinHandle<()>>,
    tail: Tail,
}

impl Process {
    /// The process `pid` just spawned as `child`, its output logged by `pumps` (stderr's
    /// last lines kept in `tail`).
    pub(super) fn new(pid: u32, child: Child, pumps: Vec<JoinHandle<()>>, tail: Tail) -> Self {
        Process {
            pid,
            child,
            exited: None,
            pumps,
            tail,
        }
    }

    /// Waits for the exit and reaps it; cancel-safe. Returns how it ended.
    pub(super) async fn wait(&mut self) -> String {
        if let Some(how) = &self.exited {
            return how.clone();
        }
        let how = match self.child.wait().await {
            Ok(status) => describe_exit(status),
            Err(e) => format!("an unknown status ({})", describe_io_error(&e)),
        };
        self.exited = Some(how.clone());
        how
    }

    /// Signals the whole group, while the leader has not been reaped (until then its
    /// pid cannot name another group).
    pub(super) fn signal_group(&self, signal: Signal) {
        if self.exited.is_some() {
            return;
        }
        if let Err(errno) = killpg(pgid(self.pid), signal) {
            tracing::debug!(pid = self.pid, %signal, error = %describe_errno(errno), "cannot signal an on-demand backend's process group");
        }
    }

    /// After the leader exited: SIGKILL whatever is left of its group. The group's id
    /// stays taken while any member lives, so this reaches only those members.
    pub(super) fn sweep(&self) {
        if killpg(pgid(self.pid), Signal::SIGKILL).is_ok() {
            tracing::debug!(
                pid = self.pid,
                "SIGKILL to what was left of an on-demand backend's process group"
            );
        }
    }

    /// Lets the output pumps log the last lines (bounded: a grandchild may hold the
    /// pipes open).
    pub(super) async fn drain_output(&mut self) {
        let pumps = std::mem::take(&mut self.pumps);
        let all = futures_util::future::join_all(pumps);
        let _ = tokio::time::timeout(OUTPUT_DRAIN, all).await;
    }

    pub(super) fn stderr_tail(&self) -> Vec<String> {
        lock_tail(&self.tail).iter().cloned().collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = killpg(pgid(self.pid), Signal::SIGKILL);
        }
    }
}

fn lock_tail(t: &Tail) -> MutexGuard<'_, VecDeque<String>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs each line of a child's stdout or stderr with the upstream's name; keeps the
/// last lines of stderr in `tail`. Ends at end of file.
pub(super) async fn pump(
    pipe: impl AsyncRead + Unpin,
    upstream: Arc<str>,
    pid: u32,
    stream: &'static str,
    tail: Option<Tail>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        tracing::info!(upstream = %upstream, pid, stream, "{text}");
        if let Some(tail) = &tail {
            let mut t = lock_tail(tail);
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(text.to_owned());
        }
        line.clear();
    };
    // Bounded by the pipe: it ends when every writer has closed it.
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (take, newline) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take);
        if newline {
            emit(&mut line);
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_name_the_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }
}
