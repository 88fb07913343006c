//! Upstreams at run time: each server's address, keep-alive pool and counters; the
//! balancer; opening connections (Unix, IP, host names with Happy Eyeballs).
//!
//! Boundary: this module knows nothing of client connections or routing; it hands out
//! [`pool::Checkout`]s and errors that name the upstream, the server and the errno.

pub mod body;
pub mod connect;
pub mod health;
pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidegate_config::{Balance, UpstreamAddr};

use crate::endpoint::TcpOptions;
use connect::{ConnectError, Resolve};
use pool::{Checkout, Pool};

/// One upstream at run time.
#[derive(Debug)]
pub struct Upstream {
    /// The config name.
    pub name: String,
    /// Its servers, in config order.
    pub servers: Vec<Server>,
    balance: Balance,
    next: AtomicUsize,
    /// Timers, from the config.
    pub timeouts: Timeouts,
    /// `retries`: how many other servers a request whose connect failed may move to.
    pub retries: usize,
    /// `sse_heartbeat`: `None` = off.
    pub sse_heartbeat: Option<Duration>,
    /// Options of this upstream's TCP sockets (`tcp_keepalive`).
    pub tcp: TcpOptions,
}

/// An upstream's timers.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// All of a server's addresses together.
    pub connect: Duration,
    /// Until the response head.
    pub response: Duration,
    /// No byte either way on a live exchange.
    pub idle: Duration,
}

/// One upstream server: its address, pool, and counters.
#[derive(Debug)]
pub struct Server {
    /// As configured.
    pub addr: UpstreamAddr,
    /// Idle keep-alive connections.
    pub pool: Pool,
    active: AtomicUsize,
    /// For a host name: the address that last connected, tried first next time.
    last_good: Mutex<Option<SocketAddr>>,
    /// Active and passive health.
    pub health: health::ServerHealth,
    /// `Host` for a request that came without one (HTTP/1.0): the server's address, or
    /// `localhost` for a Unix socket (as nginx's `$proxy_host`).
    pub host_header: http::HeaderValue,
}

/// Counts an exchange as active on its server while alive (for `least_conn`).
#[derive(Debug)]
pub struct ActiveGuard {
    upstream: Arc<Upstream>,
    index: usize,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.upstream.servers[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl ActiveGuard {
    /// The index of the server in its upstream.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The server this exchange uses.
    pub fn server(&self) -> &Server {
        &self.upstream.servers[self.index]
    }

    /// The upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }
}

// === impl Upstream ===

impl Upstream {
    /// Builds the run-time upstream from its config.
    pub fn new(cfg: &tidegate_config::Upstream) -> Self {
        Upstream {
            name: cfg.name.clone(),
            servers: cfg
                .servers
                .iter()
                .map(|addr| Server {
                    addr: addr.clone(),
                    pool: Pool::new(cfg.keepalive, cfg.keepalive_timeout),
                    active: AtomicUsize::new(0),
                    last_good: Mutex::new(None),
                    host_header: host_header(addr),
                    health: health::ServerHealth::new(cfg.health.as_ref()).named(&cfg.name, addr),
                })
                .collect(),
            balance: cfg.balance,
            next: AtomicUsize::new(0),
            timeouts: Timeouts {
                connect: cfg.connect_timeout,
                response: cfg.response_timeout,
                idle: cfg.idle_timeout,
            },
            retries: cfg.retries,
            sse_heartbeat: cfg.sse_heartbeat,
            tcp: TcpOptions {
                nodelay: true,
                keepalive: cfg.tcp_keepalive,
            },
        }
    }

    /// Picks an available server not in `tried` and counts the exchange on it until
    /// the guard drops. `Err` when no such server is available (every one down, in a
    /// cool-down, or already tried).
    pub fn pick(self: &Arc<Self>, tried: &[usize]) -> Result<ActiveGuard, Unavailable> {
        let n = self.servers.len();
        // Rotating start: round robin, and the tie-break for least_conn.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !tried.contains(i) && self.servers[*i].health.is_available());
        let index = match self.balance {
            Balance::RoundRobin => candidates.into_iter().next(),
            Balance::LeastConn => {
                candidates.min_by_key(|&i| self.servers[i].active.load(Ordering::Relaxed))
            }
        };
        let Some(index) = index else {
            return Err(Unavailable {
                upstream: self.name.clone(),
                servers: self
                    .servers
                    .iter()
                    .map(|s| (s.addr.to_string(), s.health.describe()))
                    .collect(),
            });
        };
        self.servers[index].active.fetch_add(1, Ordering::Relaxed);
        Ok(ActiveGuard {
            upstream: self.clone(),
            index,
        })
    }
}

/// No server of an upstream can take a request now.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// Upstream name.
    pub upstream: String,
    /// Each server's address and state.
    pub servers: Vec<(String, String)>,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream {}: no server available:", self.upstream)?;
        for (i, (addr, state)) in self.servers.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{addr} {state}")?;
        }
        Ok(())
    }
}

// === impl Server ===

impl Server {
    /// Active exchanges on this server.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A pooled connection that is still open, or a new one.
    pub async fn checkout(
        &self,
        upstream: &str,
        timeouts: &Timeouts,
        resolver: &Arc<dyn Resolve>,
        tcp: TcpOptions,
    ) -> Result<Checkout, UpstreamError> {
        while let Some(mut c) = self.pool.take() {
            if c.ready().await.is_ok() {
                return Ok(c);
            }
        }
        self.connect(upstream, timeouts, resolver, tcp).await
    }

    /// Opens a new connection (never from the pool).
    pub async fn connect(
        &self,
        upstream: &str,
        timeouts: &Timeouts,
        resolver: &Arc<dyn Resolve>,
        tcp: TcpOptions,
    ) -> Result<Checkout, UpstreamError> {
        let connected = self
            .connect_stream(upstream, timeouts, resolver, tcp)
            .await?;
        self.pool
            .handshake(connected.stream, connected.peer, connected.local)
            .await
            .map_err(|e| UpstreamError::Handshake {
                upstream: upstream.to_owned(),
                server: self.addr.to_string(),
                error: e,
            })
    }

    /// Opens a new connected stream to this server, for a caller that speaks over it
    /// itself (a TCP-mode tunnel): a Unix socket, an IP, or a host name through all its
    /// addresses (Happy Eyeballs, the last address that worked first). `tcp` applies to
    /// TCP sockets only.
    pub async fn connect_stream(
        &self,
        upstream: &str,
        timeouts: &Timeouts,
        resolver: &Arc<dyn Resolve>,
        tcp: TcpOptions,
    ) -> Result<connect::Connected, UpstreamError> {
        let fail = |error| UpstreamError::Connect {
            upstream: upstream.to_owned(),
            server: self.addr.to_string(),
            error,
        };
        match &self.addr {
            UpstreamAddr::Unix(path) => connect::connect_unix(path, timeouts.connect).await,
            UpstreamAddr::Ip(addr) => connect::connect_tcp(&[*addr], timeouts.connect, tcp).await,
            UpstreamAddr::Host { host, port } => {
                let started = tokio::time::Instant::now();
                let addrs = connect::resolve(resolver, host, *port, timeouts.connect)
                    .await
                    .map_err(fail)?;
                let last = *lock(&self.last_good);
                let ordered = connect::order_addresses(addrs, last);
                let left = timeouts.connect.saturating_sub(started.elapsed());
                let res = connect::connect_tcp(&ordered, left, tcp).await;
                if let Ok(c) = &res {
                    if c.peer != last {
                        let mut slot = lock(&self.last_good);
                        *slot = c.peer;
                        tracing::info!(
                            upstream,
                            server = %self.addr,
                            address = ?c.peer,
                            "host name upstream now connects to this address"
                        );
                    }
                }
                res
            }
        }
        .map_err(fail)
    }

    /// For a host name: the address in use (last that connected).
    pub fn resolved(&self) -> Option<SocketAddr> {
        *lock(&self.last_good)
    }
}

/// Getting a connection to an upstream server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connect failed or timed out.
    #[error("upstream {upstream} ({server}): {error}")]
    Connect {
        /// Upstream name.
        upstream: String,
        /// Server address as configured.
        server: String,
        /// What went wrong.
        error: ConnectError,
    },
    /// hyper refused the new connection (should not happen on a fresh socket).
    #[error("upstream {upstream} ({server}): {error}")]
    Handshake {
        /// Upstream name.
        upstream: String,
        /// Server address as configured.
        server: String,
        /// hyper's error.
        error: hyper::Error,
    },
}

fn host_header(addr: &UpstreamAddr) -> http::HeaderValue {
    let text = match addr {
        UpstreamAddr::Unix(_) => "localhost".to_owned(),
        other => other.to_string(),
    };
    http::HeaderValue::try_from(text).unwrap_or(http::HeaderValue::from_static("localhost"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
