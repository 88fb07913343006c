//! `tidegate run`: load the config, set up logging and limits, bind, serve, and end on
//! signals (docs/design.md, "Library facts"):
//! - SIGTERM: stop listening at once, close idle connections, let in-flight exchanges
//!   finish until `shutdown_grace`, close the rest, exit 0.
//! - SIGINT: skip the drain: close everything now, remove socket files, exit 0.
//! - A second SIGTERM or SIGINT during the drain: close everything now.
//! - SIGHUP: reload the config file (as `tidegate ctl reload`; errors are logged and
//!   nothing changes); tokio never restores a signal's default once handled, so it
//!   must be caught for as long as the process runs.
//! - SIGUSR2 (or `POST /v1/upgrade`): binary upgrade (`crate::upgrade`); once the new
//!   process has taken over the sockets, this one drains as on SIGTERM, handing its idle
//!   connections and tunnels over.
//! - On-demand backends: SIGTERM when the drain ends or at `shutdown_grace -
//!   stop_timeout`, whichever is first (at once on SIGINT or a second signal), SIGKILL
//!   `stop_timeout` later; the process exits only once they have exited.
//! - systemd (`systemd.rs`): sockets passed in are taken before anything else runs;
//!   with `NOTIFY_SOCKET`, `READY=1` and a `STATUS=` line once every socket accepts,
//!   `STOPPING=1` and `STATUS=` lines when the drain starts and ends.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tidegate_config::{Config, LogFormat};
use tidegate_proxy::access_log::AccessLog;
use tidegate_proxy::drain::Shutdown;
use tidegate_proxy::upstream::connect::SystemResolver;
use tidegate_proxy::Runtime;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::RunArgs;
use crate::systemd::{ListenFds, Notify};

/// How long closed connections get to finish closing after the hard stop.
const CLOSE_BOUND: Duration = Duration::from_secs(1);

pub fn run(args: RunArgs) -> ExitCode {
    // First, while this is the only thread: an upgrade's handover socket and what to
    // start again (NOTIFY_SOCKET included, before `Notify::from_env` unsets it), then
    // the environment variables systemd set, and passed descriptors, taken before
    // anything else can open one.
    let incoming = match crate::upgrade::incoming_from_env() {
        Ok(i) => i,
        Err(msg) => {
            eprintln!("tidegate: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let origin = crate::upgrade::Origin::capture();
    let notify = Notify::from_env();
    let mut passed = ListenFds::from_env();
    let loaded = load(&args)
        .and_then(|mut c| crate::admin::apply_override(&mut c, args.admin.as_deref()).map(|()| c));
    let config = match loaded {
        Ok(c) => c,
        Err(msg) => {
            if let Some(i) = &incoming {
                i.fail_now(&msg);
            }
            eprint!("{msg}");
            return ExitCode::FAILURE;
        }
    };
    // Still the only thread: `fd:N` descriptors not from socket activation (after an
    // upgrade they come with the others from the old process, not by number).
    if incoming.is_none() {
        passed.claim_numbered(&config);
    }
    init_logging(&config);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    raise_nofile_limit();
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One worker: the current-thread scheduler (no work-stealing bookkeeping, no
    // cross-thread wake-ups between a connection's tasks); more: the multi-thread one.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let rt = match builder.thread_name("tidegate-worker").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = crate::reload::Source {
        path: args.config.clone(),
        admin: args.admin.clone(),
    };
    let code = rt.block_on(serve(
        config,
        workers,
        Passed {
            reload_from: source,
            notify,
            fds: passed,
            origin,
            incoming,
        },
    ));
    // getaddrinfo calls on the blocking pool can't be cancelled; don't wait for them.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

fn load(args: &RunArgs) -> Result<Config, String> {
    match &args.config {
        Some(path) => {
            if !args.listen.is_empty() {
                return Err("tidegate: --listen applies to the quickstart only; set `listen` in the config file instead\n".into());
            }
            tidegate_config::load_file(path).map_err(|errors| {
                format!(
                    "{errors}\n{}: {} error(s); refusing to start\n",
                    path.display(),
                    errors.len()
                )
            })
        }
        None => {
            let mut config = tidegate_config::quickstart();
            if !args.listen.is_empty() {
                let base = std::env::current_dir().unwrap_or_default();
                let mut addrs = Vec::new();
                for a in &args.listen {
                    addrs.push(
                        tidegate_config::parse::listen_addr(a, &base)
                            .map_err(|e| format!("tidegate: --listen {a}: {e}\n"))?,
                    );
                }
                for l in &mut config.listeners {
                    l.listen = addrs.clone();
                }
            }
            Ok(config)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(config.server.log.level.as_str());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match config.server.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Raises the soft open-files limit to the hard limit: a proxy holds two descriptors
/// per proxied connection and the usual soft limit (1024) is far too low.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// What `run` read before the runtime existed.
struct Passed {
    /// Where a reload reads the config.
    reload_from: crate::reload::Source,
    /// The sd_notify channel (a no-op without `NOTIFY_SOCKET`): `READY=1` once
    /// listening, `RELOADING=1` then `READY=1` around each reload, `STOPPING=1` on the
    /// drain.
    notify: Notify,
    /// The sockets systemd (or a supervisor) passed at start (`systemd:NAME`, `fd:N`).
    fds: ListenFds,
    /// What an upgrade starts again.
    origin: crate::upgrade::Origin,
    /// The handover socket, when an upgrade started this process.
    incoming: Option<crate::upgrade::Incoming>,
}

async fn serve(config: Config, workers: usize, passed: Passed) -> ExitCode {
    let Passed {
        reload_from,
        notify,
        fds: passed,
        origin,
        incoming,
    } = passed;
    // Signal handlers first: a TERM that arrives while binding must not kill us with
    // half-created socket files.
    #[allow(
        clippy::disallowed_methods,
        reason = "the binary owns signal handling; the data plane only sees a Shutdown"
    )]
    let (mut term, mut int, mut hup, mut usr2) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
    ) {
        (Ok(t), Ok(i), Ok(h), Ok(u)) => (t, i, h, u),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let source = config
        .source
        .as_ref()
        .map_or_else(|| "<quickstart>".to_owned(), |p| p.display().to_string());
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %source, workers, pid = std::process::id(), "starting");
    let mut startup = match crate::upgrade::Startup::receive(incoming).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tidegate: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Opened before binding: an unwritable access log refuses the start like a bind
    // failure does.
    let access_log = match AccessLog::start(&config.server.access_log) {
        Ok(log) => log,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tidegate: {e}");
            startup.fail(&e.to_string()).await;
            return ExitCode::FAILURE;
        }
    };
    // Sockets come from the old process in an upgrade (systemd's among them, passed on
    // by it), else from systemd (or a supervisor) if it passed any.
    let mut inherited = if startup.is_upgrade() {
        std::mem::take(startup.inherited())
    } else {
        passed.log_warnings();
        passed.into_inherited(&config)
    };
    let mut runtime = match Runtime::bind_with(&config, Arc::new(SystemResolver), &mut inherited) {
        Ok(r) => r,
        Err(errors) => {
            for e in &errors {
                tracing::error!("{e}");
                eprintln!("tidegate: {e}");
            }
            let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            startup.fail(&all.join("\n")).await;
            return ExitCode::FAILURE;
        }
    };
    for (listener, address) in runtime.addresses() {
        tracing::info!(listener = %listener, address = %address, "listening");
    }
    // The admin API: off the drain's tracker, so it answers during the drain and stops
    // last. `control.rs` holds its view of the proxy.
    // A process an upgrade started is not systemd's main process until the old one has
    // said so (MAINPID=): it notifies once told (see `upgrade`).
    let upgraded = startup.is_upgrade();
    let control = Arc::new(crate::control::Live::new(
        &config,
        reload_from,
        std::time::Instant::now(),
        runtime.registry(),
        runtime.metrics(),
        {
            let notify = notify.clone();
            Box::new(move |phase, status: &str| match phase {
                crate::control::ReloadPhase::Applying => notify.reloading(),
                crate::control::ReloadPhase::Done => {
                    notify.ready();
                    notify.status(status);
                }
            })
        },
    ));
    let admin_passed = if startup.is_upgrade() {
        startup.admin()
    } else {
        &mut inherited
    };
    let admin = match crate::admin::start(&config, control.clone(), admin_passed) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tidegate: {e}");
            startup.fail(&e).await;
            return ExitCode::FAILURE;
        }
    };
    crate::systemd::close_unused(&mut inherited);
    let children = runtime.children();
    runtime.set_access_log(access_log.clone());
    let addresses: Vec<String> = runtime
        .addresses()
        .iter()
        .map(|(_, a)| a.to_string())
        .collect();
    let shutdown = Shutdown::new();
    startup.hold_on_demand(&children);
    let serving = Arc::new(runtime.start(&shutdown));
    control.attach(serving.clone());
    let upgrader = crate::upgrade::Upgrader::new(origin, &children, notify.clone());
    control.set_upgrader(upgrader.clone());
    upgrader
        .serving(serving.clone(), admin.socket(), startup)
        .await;
    tracing::info!("ready");
    if !upgraded {
        notify.ready();
        notify.status(&crate::systemd::serving_status(
            config.listeners.len(),
            &addresses,
        ));
    }

    let fast = loop {
        tokio::select! {
            _ = term.recv() => break false,
            _ = int.recv() => break true,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                // Errors are logged one per line, as `check` prints them; the reload
                // itself logs what it changed.
                if let Err(e) = control.reload_config(false) {
                    tracing::error!("SIGHUP: reload refused: {e}");
                    if let tidegate_admin::ControlError::Invalid { errors, .. } = &e {
                        for line in errors {
                            tracing::error!("{line}");
                        }
                    }
                }
            }
            _ = usr2.recv() => upgrader.on_signal(),
            () = upgrader.handed_over() => break false,
            () = upgrader.abandoned() => break false,
        }
    };
    control.set_draining();
    notify.stopping();
    if fast {
        notify.status("stopping: closing every connection now (SIGINT)");
        tracing::info!("SIGINT: closing every connection now");
        children.stop_by(tokio::time::Instant::now());
        shutdown.abort();
    } else {
        // The config in effect now: a reload may have changed it.
        let grace = serving.config().server.shutdown_grace;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "draining (SIGTERM, or handed over to a new process by an upgrade): listeners closed; in-flight requests may finish"
        );
        shutdown.drain();
        notify.status(&format!(
            "draining: listeners closed; in-flight requests may finish within {}",
            tidegate_config::parse::format_duration(grace)
        ));
        // On-demand backends: SIGTERM at `shutdown_grace - stop_timeout` (so they are
        // gone when the grace ends), or as soon as the drain ends, whichever is first.
        children.stop_by(tokio::time::Instant::now() + grace);
        tokio::select! {
            _ = shutdown.tracker.wait() => {
                tracing::info!("drained");
                notify.status("drained; stopping");
            }
            _ = tokio::time::sleep(grace) => {
                tracing::info!(open = shutdown.tracker.len(), "shutdown_grace ended; closing what is left");
                notify.status("shutdown_grace ended; closing what is left");
                shutdown.abort();
            }
            _ = term.recv() => { tracing::info!("second SIGTERM: closing every connection now"); shutdown.abort(); }
            _ = int.recv() => { tracing::info!("SIGINT during drain: closing every connection now"); shutdown.abort(); }
        }
        // After an upgrade: what moved is sent before this process exits.
        upgrader.finish_handoffs().await;
        children.stop_by(tokio::time::Instant::now());
    }
    // Closing is immediate once `hard` fires; the bound only guards against a bug.
    if tokio::time::timeout(CLOSE_BOUND, shutdown.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shutdown.tracker.len(),
            "connections still open after the hard stop; exiting anyway"
        );
    }
    // SIGKILL comes `stop_timeout` after SIGTERM; the bound only guards against a bug.
    let bound = children.longest_stop_timeout() + CLOSE_BOUND;
    if tokio::time::timeout(bound, children.wait_stopped())
        .await
        .is_err()
    {
        tracing::warn!(pids = ?children.pids(), "on-demand backends still running after SIGKILL; exiting anyway");
    }
    // The writer flushes within 50 ms of a line; this waits for the last lines.
    let _ = tokio::task::spawn_blocking(move || access_log.flush(CLOSE_BOUND)).await;
    admin.stop().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
