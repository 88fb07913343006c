//! The checker tasks: one per checked server, each running [`check`] every `interval`
//! and feeding the result to the server's [`ServerHealth::record_check`]. The one part
//! of `health` that knows upstreams: it walks their servers and dials them as traffic
//! does.
//!
//! [`ServerHealth::record_check`]: super::ServerHealth::record_check

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tidegate_config::Health;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::check::{h2_check, http_check};
use crate::endpoint::TcpOptions;
use crate::upstream::connect::Resolve;
use crate::upstream::{Server, Upstream};

/// Active checks of a set of servers, ready to start. Holds what the checker tasks
/// need that the servers don't carry (the resolver).
pub struct Checks {
    servers: Vec<(Arc<str>, Weak<Server>)>,
    resolver: Arc<dyn Resolve>,
}

impl fmt::Debug for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checks")
            .field("servers", &self.servers.len())
            .finish_non_exhaustive()
    }
}

impl Checks {
    /// Checks for every server of these upstreams that have `[health]`.
    pub fn new(upstreams: &[Arc<Upstream>], resolver: Arc<dyn Resolve>) -> Self {
        Checks::of(
            upstreams
                .iter()
                .flat_map(|u| u.servers.iter().map(|s| (u.name.as_str(), s))),
            resolver,
        )
    }

    /// Checks for these servers (by upstream name), those that have `[health]`: on a
    /// reload, the servers it created (a server it kept goes on with its own checker).
    pub fn of<'a>(
        servers: impl IntoIterator<Item = (&'a str, &'a Arc<Server>)>,
        resolver: Arc<dyn Resolve>,
    ) -> Self {
        Checks {
            servers: servers
                .into_iter()
                .map(|(u, s)| (Arc::from(u), Arc::downgrade(s)))
                .collect(),
            resolver,
        }
    }

    /// Starts one task per checked server: the first check at once, then one every
    /// `interval`. The tasks end when `stop` is cancelled (draining starts) or the
    /// server is dropped (a reload removed it and its last exchange ended).
    pub fn spawn(self, stop: &CancellationToken) {
        for (upstream, weak) in self.servers {
            let Some(server) = weak.upgrade() else {
                continue;
            };
            let Some(cfg) = server.health.settings().cloned() else {
                continue;
            };
            if server.on_demand().is_some() {
                // A check would start the backend, or keep it from ever stopping.
                tracing::info!(%upstream, server = %server.addr,
                    "no active health checks for an on-demand server");
                continue;
            }
            tokio::spawn(check_loop(
                upstream,
                weak,
                cfg,
                self.resolver.clone(),
                stop.clone(),
            ));
        }
    }
}

async fn check_loop(
    upstream: Arc<str>,
    server: Weak<Server>,
    cfg: Health,
    resolver: Arc<dyn Resolve>,
    stop: CancellationToken,
) {
    // A check slower than `interval` delays the next one instead of bunching them.
    let mut ticks = tokio::time::interval(cfg.interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // Held only for the check: between checks a removed server can be freed. A
        // server still held by an exchange of the old config after a reload removed it
        // is no longer checked.
        let Some(server) = server.upgrade().filter(|s| !s.is_retired()) else {
            return;
        };
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = check(&upstream, &server, &cfg, &resolver) => r,
        };
        if let Err(reason) = &result {
            tracing::debug!(%upstream, server = %server.addr, %reason, "health check failed");
        }
        server.health.record_check(result);
    }
}

/// One check of one server within `cfg.timeout`: an HTTP `GET path` that must answer
/// 2xx or 3xx when `path` is set, else a connect. Over TLS (and HTTP/2) when the
/// upstream's requests are: the handshake is part of the check. `Err` says why it
/// failed.
pub async fn check(
    upstream: &str,
    server: &Server,
    cfg: &Health,
    resolver: &Arc<dyn Resolve>,
) -> Result<(), String> {
    let started = Instant::now();
    // A new connection, never from the pool: a check must not take a pooled connection
    // from a request, nor keep one alive. Its socket lives for one exchange, so
    // keepalive probes would never fire.
    let tcp = TcpOptions {
        nodelay: true,
        keepalive: None,
    };
    let connected = server
        .dial(upstream, cfg.timeout, resolver, tcp)
        .await
        .map_err(|e| e.describe(&server.addr.to_string()))?;
    let left = cfg.timeout.saturating_sub(started.elapsed());
    let io = server
        .secure(connected.stream, left)
        .await
        .map_err(|e| e.to_string())?;
    let Some(path) = &cfg.path else {
        return Ok(());
    };
    let host = server.host_header.to_str().unwrap_or("localhost");
    let left = cfg.timeout.saturating_sub(started.elapsed());
    let verdict = async {
        if server.is_h2() {
            h2_check(io, path, host, server.is_tls()).await
        } else {
            http_check(io, path, host).await
        }
    };
    match timeout(left, verdict).await {
        Ok(verdict) => verdict,
        Err(_) => Err(format!(
            "GET {path}: no response head within {}ms",
            cfg.timeout.as_millis()
        )),
    }
}
