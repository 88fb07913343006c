//! The admin API's wiring (docs/admin-api.md): which socket — `run --admin`, `[admin]
//! listen`, or the default computed from the environment — binding it, and running the
//! server beside the data plane. `run` and `ctl` both resolve the default here, so they
//! agree on it.
//!
//! The environment (`XDG_RUNTIME_DIR`, the user id) is read here, in the binary, and
//! passed to `tidegate_admin::path`; library crates never read it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tidegate_admin::client::AdminAddr;
use tidegate_admin::server::{self, Limits};
use tidegate_admin::Control;
use tidegate_config::{defaults, Config, ListenAddr, UnixListen};
use tidegate_proxy::endpoint::TcpOptions;
use tidegate_proxy::listen::{Inherited, ListenError, ListenKey, Listener, LocalAddr};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long stopping the admin server may take (it closes everything at once; the
/// bound only guards against a bug).
const STOP_BOUND: Duration = Duration::from_secs(1);
/// After a handover, how long the old process's admin clients may take to finish.
const HANDED_OVER_GRACE: Duration = Duration::from_secs(2);

/// The default admin socket for this process: `$XDG_RUNTIME_DIR/tidegate/admin.sock`,
/// else `/run/tidegate/admin.sock` for root, else `/tmp/tidegate-$UID/admin.sock`.
pub fn default_socket() -> PathBuf {
    #[allow(
        clippy::disallowed_methods,
        reason = "the binary reads the environment; the admin crate gets the value"
    )]
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    tidegate_admin::path::default_socket(runtime_dir.as_deref(), uid())
}

fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `run --admin ADDR`: replaces `[admin] listen`. A Unix socket without `mode=` gets
/// mode 0600, as in the config.
pub fn apply_override(config: &mut Config, admin: Option<&str>) -> Result<(), String> {
    let Some(a) = admin else {
        return Ok(());
    };
    let base = std::env::current_dir().unwrap_or_default();
    let addr = tidegate_config::parse::listen_addr(a, &base)
        .map_err(|e| format!("tidegate: --admin {a}: {e}\n"))?;
    config.admin.listen = Some(private(addr));
    Ok(())
}

fn private(addr: ListenAddr) -> ListenAddr {
    match addr {
        ListenAddr::Unix(mut u) => {
            u.mode.get_or_insert(defaults::ADMIN_SOCKET_MODE);
            ListenAddr::Unix(u)
        }
        tcp => tcp,
    }
}

/// Where `tidegate ctl` finds the admin API of `config` (its `[admin] listen`, else the
/// default socket). An error for a socket passed in (`systemd:NAME`, `fd:N`), whose
/// address only the socket unit knows.
pub fn client_addr(config: &Config) -> Result<AdminAddr, String> {
    match &config.admin.listen {
        Some(a) => AdminAddr::try_from(a),
        None => Ok(AdminAddr::Unix(default_socket())),
    }
}

/// The running admin server.
pub struct AdminServer {
    stop: CancellationToken,
    task: JoinHandle<()>,
    socket: crate::upgrade::AdminSocket,
}

/// Binds the admin socket of `config` (or takes it from `inherited`, where a socket
/// passed in for its address is: `systemd:NAME`, `fd:N`, a binary upgrade), logs
/// `listening listener=admin address=…`, and serves it with `control` until
/// [`AdminServer::stop`]. Must run inside the runtime.
pub fn start(
    config: &Config,
    control: Arc<dyn Control>,
    inherited: &mut Inherited,
) -> Result<AdminServer, String> {
    let (addr, default) = match &config.admin.listen {
        Some(a) => (a.clone(), false),
        None => {
            let path = default_socket();
            tidegate_admin::path::prepare_default_dir(&path, uid())
                .map_err(|e| format!("cannot create the default admin socket: {e}"))?;
            let addr = ListenAddr::Unix(UnixListen {
                path,
                mode: Some(defaults::ADMIN_SOCKET_MODE),
                owner: None,
                group: None,
            });
            (addr, true)
        }
    };
    let mut passed = inherited.take_all(&addr);
    if passed.len() > 1 {
        return Err(format!(
            "cannot listen on {addr} ([admin] listen): {} sockets were passed under that \
             name; the admin API listens on one",
            passed.len()
        ));
    }
    let listener = match passed.pop() {
        Some(l) => l,
        None if addr.is_passed_in() => return Err(bind_error(inherited.missing(&addr), default)),
        None => Listener::bind(&addr, TcpOptions::default()).map_err(|e| bind_error(e, default))?,
    };
    if let LocalAddr::Tcp(a) = listener.local_addr() {
        warn_if_not_loopback(*a);
    }
    tracing::info!(listener = %"admin", address = %listener.local_addr(), "listening");
    let stop = CancellationToken::new();
    let listener = Arc::new(listener);
    let socket = crate::upgrade::AdminSocket {
        key: ListenKey::of(&addr),
        listener: Arc::downgrade(&listener),
        stop_accepting: CancellationToken::new(),
    };
    let task = tokio::spawn(server::serve_with(
        listener,
        control,
        Limits::from(&config.admin),
        stop.clone(),
        socket.stop_accepting.clone(),
    ));
    Ok(AdminServer { stop, task, socket })
}

/// Says what to do about a socket another process holds: with the default path that is
/// usually a second tidegate, which needs its own admin socket.
fn bind_error(e: ListenError, default: bool) -> String {
    match (&e, default) {
        (ListenError::SocketInUse { addr }, true) => format!(
            "cannot listen on {addr}, the default admin socket: another tidegate is \
             listening on it; give this one its own with `[admin] listen = \"unix:PATH\"` \
             in the config (or `run --admin ADDR`)"
        ),
        (ListenError::SocketInUse { addr }, false) => format!(
            "cannot listen on {addr} ([admin] listen): another process is listening on \
             this socket; stop it, or set another `[admin] listen`"
        ),
        (_, true) => {
            format!("{e} (the default admin socket; set `[admin] listen` to choose another)")
        }
        (_, false) => format!("{e} ([admin] listen)"),
    }
}

fn warn_if_not_loopback(a: SocketAddr) {
    if !a.ip().is_loopback() {
        tracing::warn!(
            address = %a,
            "the admin API has no authentication and listens on a non-loopback address: \
             anyone who can reach it can drain servers and close connections"
        );
    }
}

// === impl AdminServer ===

impl AdminServer {
    /// Its socket, for a binary upgrade to hand over.
    pub fn socket(&self) -> crate::upgrade::AdminSocket {
        self.socket.clone()
    }

    /// Closes the admin socket (removing its file) and every admin connection. After a
    /// handover (a binary upgrade) the socket is the new process's: the clients this
    /// process had accepted get [`HANDED_OVER_GRACE`] to finish their exchange first
    /// (`ctl` closes once answered), so none is cut off mid-request.
    pub async fn stop(mut self) {
        if self.socket.stop_accepting.is_cancelled() {
            // The server's task ends by itself once its last client has closed.
            if tokio::time::timeout(HANDED_OVER_GRACE, &mut self.task)
                .await
                .is_ok()
            {
                return;
            }
        }
        self.stop.cancel();
        if tokio::time::timeout(STOP_BOUND, self.task).await.is_err() {
            tracing::warn!("the admin server did not stop in time; exiting anyway");
        }
    }
}
