//! The admin API's view of the running proxy: the binary's [`Control`] over the data
//! plane's registry, upstreams and metrics. This is the one place that turns data-plane
//! types into the admin wire types (the proxy crate never depends on the admin crate).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tidegate_admin::{
    CertificateView, ConnProtocol, ConnSide, ConnState, ConnectionView, Control, ControlError,
    Health, ListenerView, OnDemandState, OnDemandView, Pending, ProcessState, ReloadChange,
    ReloadView, ServerState, ServerView, Status, UpgradeView, UpstreamSide, UpstreamView,
};
use tidegate_config::Config;
use tidegate_proxy::metrics::Metrics;
use tidegate_proxy::registry::{self, Registry};
use tidegate_proxy::side::Side;
use tidegate_proxy::upstream::{self, health::HealthState, on_demand, Upstream};
use tidegate_proxy::Serving;

/// The running proxy, as the admin API sees it: read from the data plane's
/// [`Serving`] at each request, so a reload shows at once.
pub struct Live {
    started: Instant,
    draining: AtomicBool,
    config: String,
    /// Set once the data plane runs ([`Live::attach`]).
    serving: OnceLock<Arc<Serving>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Where a reload reads the config from.
    source: crate::reload::Source,
    /// One reload at a time (SIGHUP and the API may ask together).
    reloading: Mutex<()>,
    /// Told when a reload starts applying and when it is done (systemd's
    /// `RELOADING=1` and `READY=1`).
    on_reload: ReloadHook,
    /// Set once the runtime serves (`POST /v1/upgrade` before that: try again).
    upgrader: OnceLock<Arc<crate::upgrade::Upgrader>>,
}

/// Told where a reload is, with a status line for an operator (systemd's `STATUS=`).
pub type ReloadHook = Box<dyn Fn(ReloadPhase, &str) + Send + Sync>;

/// Where a reload is, for [`Live`]'s hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadPhase {
    /// The new config is valid and is being applied.
    Applying,
    /// Applied, or refused with nothing changed.
    Done,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// === impl Live ===

impl Live {
    /// `registry` and `metrics` come from the runtime before it starts; the running
    /// proxy is attached once it does ([`Live::attach`]).
    pub fn new(
        config: &Config,
        source: crate::reload::Source,
        started: Instant,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        on_reload: ReloadHook,
    ) -> Self {
        Live {
            started,
            draining: AtomicBool::new(false),
            serving: OnceLock::new(),
            registry,
            metrics,
            source,
            reloading: Mutex::new(()),
            on_reload,
            upgrader: OnceLock::new(),
            config: config.source.as_ref().map_or_else(
                || tidegate_config::QUICKSTART_NAME.to_owned(),
                |p| p.display().to_string(),
            ),
        }
    }

    /// The data plane runs: views and reloads go to it from now on.
    pub fn attach(&self, serving: Arc<Serving>) {
        if self.serving.set(serving).is_err() {
            tracing::error!("the data plane was attached twice to the admin API; ignored");
        }
    }

    /// `POST /v1/upgrade` goes to `upgrader` from now on.
    pub fn set_upgrader(&self, upgrader: Arc<crate::upgrade::Upgrader>) {
        let _ = self.upgrader.set(upgrader);
    }

    /// SIGTERM or SIGINT: `/v1/status` says `draining` from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn upstream_list(&self) -> Vec<Arc<Upstream>> {
        self.serving
            .get()
            .map(|s| s.upstreams())
            .unwrap_or_default()
    }

    /// Re-reads the config and swaps it in (or, with `dry_run`, only plans it); the
    /// one path of SIGHUP, `POST /v1/reload` and `tidegate ctl reload`.
    pub fn reload_config(&self, dry_run: bool) -> Result<ReloadView, ControlError> {
        // One at a time, and never waiting on a runtime thread for another one.
        let _one = match self.reloading.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(ControlError::Conflict(
                    "a reload is in progress; try again once it is done".into(),
                ))
            }
        };
        // The new process reads the same file and takes the sockets as they are now.
        if self.upgrader.get().is_some_and(|u| u.is_starting()) {
            return Err(ControlError::Conflict(
                "an upgrade is starting; reload the new process once it serves".into(),
            ));
        }
        // A draining process (SIGTERM, or an upgrade's old process, whose sockets the new
        // one serves now) must not change them: reload the process that serves.
        if self.draining.load(Ordering::Relaxed) {
            return Err(ControlError::BadRequest(
                "this process is draining (stopping, or handed over to a new process by an upgrade); nothing to reload: reload the process that serves now".into(),
            ));
        }
        let serving = self.serving.get().ok_or_else(|| {
            ControlError::BadRequest("tidegate is still starting; try again".into())
        })?;
        let new = self.source.load()?;
        let old = serving.config();
        let process = crate::reload::process_changes(&old, &new);
        if dry_run {
            let plan = serving.plan(&new);
            let changes = changes(plan.changes, process);
            return Ok(ReloadView {
                applied: false,
                generation: plan.generation,
                message: format!(
                    "dry run: {} is valid; reloading it would make {} change(s) as generation {}; nothing applied",
                    self.config,
                    changes.len(),
                    plan.generation
                ),
                changes,
            });
        }
        (self.on_reload)(ReloadPhase::Applying, "reloading");
        let applied = serving.reload(&new);
        let plan = match applied {
            Ok(plan) => plan,
            Err(errors) => {
                let message = format!(
                    "{}: {} new address(es) cannot be bound; nothing changed",
                    self.config,
                    errors.len()
                );
                (self.on_reload)(ReloadPhase::Done, &format!("reload refused: {message}"));
                return Err(ControlError::Invalid {
                    message,
                    errors: errors.iter().map(ToString::to_string).collect(),
                });
            }
        };
        let changes = changes(plan.changes, process);
        for c in &changes {
            tracing::info!(subject = %c.subject, what = %c.what, connections = c.connections,
                effect = %c.effect, "reload: changed");
        }
        let message = format!(
            "reloaded {} as generation {}: {}",
            self.config,
            plan.generation,
            match changes.len() {
                0 => "nothing changed".to_owned(),
                1 => "1 change".to_owned(),
                n => format!("{n} changes"),
            }
        );
        tracing::info!(
            generation = plan.generation,
            changes = changes.len(),
            "{message}"
        );
        (self.on_reload)(
            ReloadPhase::Done,
            &format!(
                "{}; config generation {}",
                crate::systemd::serving_status(new.listeners.len(), &addresses(serving)),
                plan.generation
            ),
        );
        Ok(ReloadView {
            applied: true,
            generation: plan.generation,
            changes,
            message,
        })
    }
}

/// Every address the proxy accepts on now.
fn addresses(serving: &Serving) -> Vec<String> {
    serving
        .addresses()
        .iter()
        .map(|(_, a)| a.to_string())
        .collect()
}

/// The data plane's changes then the process's, as the API shows them.
fn changes(
    plane: Vec<tidegate_proxy::reload::Change>,
    process: Vec<ReloadChange>,
) -> Vec<ReloadChange> {
    plane
        .into_iter()
        .map(|c| ReloadChange {
            subject: c.subject,
            what: c.what,
            connections: c.connections as u64,
            effect: c.effect,
        })
        .chain(process)
        .collect()
}

impl Control for Live {
    fn status(&self) -> Status {
        let clients: Vec<registry::ConnSnapshot> = self
            .registry
            .snapshot()
            .into_iter()
            // An HTTP/2 stream is no connection of its own.
            .filter(|c| c.side == Side::Client && c.parent.is_none())
            .collect();
        let (config, addresses) = match self.serving.get() {
            Some(s) => (Some(s.config()), s.addresses()),
            None => (None, Vec::new()),
        };
        let listeners = config
            .iter()
            .flat_map(|c| c.listeners.iter())
            .map(|l| ListenerView {
                name: l.name.clone(),
                protocol: l.protocol.as_str().to_owned(),
                addresses: addresses
                    .iter()
                    .filter(|(name, _)| *name == l.name)
                    .map(|(_, a)| a.to_string())
                    .collect(),
                connections: clients.iter().filter(|c| c.listener == l.name).count() as u64,
                max_connections: l.max_connections as u64,
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            state: if self.draining.load(Ordering::Relaxed) {
                ProcessState::Draining
            } else {
                ProcessState::Running
            },
            config: self.config.clone(),
            connections: clients.len() as u64,
            listeners,
            certificates: certificates(config.as_deref()),
        }
    }

    fn upstreams(&self) -> Vec<UpstreamView> {
        let config = self.serving.get().map(|s| s.config());
        self.upstream_list()
            .iter()
            .map(|u| UpstreamView {
                name: u.name.clone(),
                balance: config
                    .as_ref()
                    .and_then(|c| c.upstream(&u.name))
                    .map_or("round_robin", |c| c.balance.as_str())
                    .to_owned(),
                servers: (0..u.servers.len()).map(|i| server_view(u, i)).collect(),
                panic: u.in_panic(),
                panic_requests: u.panic_requests(),
            })
            .collect()
    }

    fn set_server_state(
        &self,
        upstream: &str,
        index: usize,
        state: ServerState,
    ) -> Result<ServerView, ControlError> {
        let list = self.upstream_list();
        let up = list.iter().find(|u| u.name == upstream).ok_or_else(|| {
            let names: Vec<&str> = list.iter().map(|u| u.name.as_str()).collect();
            ControlError::NotFound(format!(
                "no upstream named {upstream:?}; defined: {}",
                names.join(", ")
            ))
        })?;
        let server = up.servers.get(index).ok_or_else(|| {
            ControlError::NotFound(format!(
                "upstream {upstream} has {} server(s) (index 0 to {}); no index {index}",
                up.servers.len(),
                up.servers.len().saturating_sub(1)
            ))
        })?;
        let previous = server.set_state(match state {
            ServerState::Ready => upstream::ServerState::Ready,
            ServerState::Drain => upstream::ServerState::Drain,
            ServerState::Maint => upstream::ServerState::Maint,
        });
        tracing::info!(upstream, index, server = %server.addr, from = ?previous, to = ?state,
            "server state changed through the admin API");
        Ok(server_view(up, index))
    }

    fn connections(&self) -> Vec<ConnectionView> {
        self.registry
            .snapshot()
            .into_iter()
            .map(|c| ConnectionView {
                id: c.id,
                side: match c.side {
                    Side::Client => ConnSide::Client,
                    Side::Upstream => ConnSide::Upstream,
                },
                listener: c.listener,
                protocol: match c.protocol {
                    registry::ConnProtocol::Http1 => ConnProtocol::Http1,
                    registry::ConnProtocol::Sse => ConnProtocol::Sse,
                    registry::ConnProtocol::Websocket => ConnProtocol::Websocket,
                    registry::ConnProtocol::Tcp => ConnProtocol::Tcp,
                    registry::ConnProtocol::H2 => ConnProtocol::H2,
                },
                peer: c.peer,
                local: c.local,
                state: match c.state {
                    registry::ConnState::Reading => ConnState::Reading,
                    registry::ConnState::WaitingUpstream => ConnState::WaitingUpstream,
                    registry::ConnState::Streaming => ConnState::Streaming,
                    registry::ConnState::Tunnel => ConnState::Tunnel,
                    registry::ConnState::Idle => ConnState::Idle,
                    registry::ConnState::Closing => ConnState::Closing,
                },
                age_s: c.age.as_secs_f64(),
                idle_s: c.idle.as_secs_f64(),
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                requests: c.requests,
                generation: c.generation,
                upstream: c.upstream.map(|u| UpstreamSide {
                    name: u.name,
                    server: u.server,
                    local: u.local,
                    peer: u.peer,
                }),
                parent: c.parent,
            })
            .collect()
    }

    fn close_connection(&self, id: u64) -> Result<(), ControlError> {
        if self.registry.close(id) {
            tracing::info!(id, "connection closed through the admin API");
            Ok(())
        } else {
            Err(ControlError::NotFound(format!("no connection {id}")))
        }
    }

    fn reload(&self, dry_run: bool) -> Result<ReloadView, ControlError> {
        self.reload_config(dry_run)
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    fn upgrade(&self) -> Pending<UpgradeView> {
        let upgrader = self.upgrader.get().cloned();
        Box::pin(async move {
            let Some(upgrader) = upgrader else {
                return Err(ControlError::Conflict(
                    "tidegate is still starting; try again once it is ready".to_owned(),
                ));
            };
            match upgrader.upgrade().await {
                Ok(u) => Ok(UpgradeView {
                    old_pid: u.old_pid,
                    new_pid: u.new_pid,
                    message: format!(
                        "upgraded: process {} serves every listening socket; process {} \
                         finishes its exchanges in flight (shutdown_grace) and exits",
                        u.new_pid, u.old_pid
                    ),
                }),
                Err(crate::upgrade::UpgradeError::Busy(m)) => Err(ControlError::Conflict(m)),
                Err(crate::upgrade::UpgradeError::Failed { message, detail }) => {
                    Err(ControlError::Failed { message, detail })
                }
            }
        })
    }
}

/// One server as the admin API shows it.
fn server_view(up: &Upstream, index: usize) -> ServerView {
    let s = &up.servers[index];
    let health = s.health.snapshot();
    ServerView {
        index,
        address: s.addr.to_string(),
        resolved: s.resolved().map(|a| a.to_string()),
        state: match s.state() {
            upstream::ServerState::Ready => ServerState::Ready,
            upstream::ServerState::Drain => ServerState::Drain,
            upstream::ServerState::Maint => ServerState::Maint,
        },
        health: match health.state {
            HealthState::Up => Health::Up,
            HealthState::Down => Health::Down,
            HealthState::Unknown => Health::Unknown,
        },
        health_detail: s.health.describe(),
        available: s.takes_new(),
        active: s.active() as u64,
        idle_pooled: s.idle_pooled() as u64,
        requests: s.requests(),
        failures: s.failures(),
        on_demand: s.on_demand_snapshot().map(|o| OnDemandView {
            state: match o.state {
                on_demand::OnDemandState::Stopped => OnDemandState::Stopped,
                on_demand::OnDemandState::Starting => OnDemandState::Starting,
                on_demand::OnDemandState::Ready => OnDemandState::Ready,
                on_demand::OnDemandState::Stopping => OnDemandState::Stopping,
                on_demand::OnDemandState::Failed => OnDemandState::Failed,
            },
            pid: o.pid,
            uptime_s: o.uptime.map(|d| d.as_secs_f64()),
        }),
    }
}

/// Every certificate the config in effect serves, for `/v1/status`.
fn certificates(config: Option<&tidegate_config::Config>) -> Vec<CertificateView> {
    let now = std::time::SystemTime::now();
    config
        .iter()
        .flat_map(|c| c.listeners.iter())
        .flat_map(|l| {
            l.tls
                .iter()
                .flat_map(|t| t.certificates.iter())
                .map(move |c| CertificateView {
                    listener: l.name.clone(),
                    cert: c.cert_path.display().to_string(),
                    names: c.names.clone(),
                    issuer: c.issuer.clone(),
                    not_after: c.not_after,
                    expires_in_s: c.seconds_left(now),
                })
        })
        .collect()
}
