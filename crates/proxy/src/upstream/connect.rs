//! Opening upstream connections: Unix sockets, literal IPs, and host names through all
//! their addresses with Happy Eyeballs (RFC 8305).
//!
//! Resolution goes through [`Resolve`], so tests can make `localhost` resolve to `::1`
//! then `127.0.0.1` on a machine whose resolver gives only one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tidegate_config::defaults;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{sleep_until, timeout, Instant};

use crate::endpoint::{Stream, TcpOptions};
use crate::errno::describe_io_error;

/// A boxed future, as returned by [`Resolve::resolve`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Name resolution for host-name upstreams.
pub trait Resolve: Send + Sync + 'static {
    /// Every address of `host`, with `port`, in the resolver's order.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo`, on tokio's blocking pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<io::Result<Vec<SocketAddr>>> {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// A fixed table of names, for tests and for pinning names (like curl's `--resolve`).
#[derive(Debug, Default, Clone)]
pub struct StaticResolver {
    /// Port 0 stands for "the port asked for".
    entries: Vec<(String, Vec<SocketAddr>)>,
}

impl StaticResolver {
    /// An empty table: every lookup fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// `host` resolves to `addrs`, in this order.
    pub fn with(self, host: &str, addrs: &[std::net::IpAddr]) -> Self {
        let addrs: Vec<SocketAddr> = addrs.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
        self.with_addrs(host, &addrs)
    }

    /// `host` resolves to these socket addresses, ports included (a port of 0 is
    /// replaced by the port asked for).
    pub fn with_addrs(mut self, host: &str, addrs: &[SocketAddr]) -> Self {
        self.entries
            .push((host.to_ascii_lowercase(), addrs.to_vec()));
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<io::Result<Vec<SocketAddr>>> {
        let found = self
            .entries
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .map(|(_, a)| {
                a.iter()
                    .map(|sa| match sa.port() {
                        0 => SocketAddr::new(sa.ip(), port),
                        _ => *sa,
                    })
                    .collect()
            });
        let host = host.to_owned();
        Box::pin(async move {
            found.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{host}: name not known"))
            })
        })
    }
}

/// Why a connect failed. Display speaks like an operator.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every address failed (refused, unreachable, …) before the deadline.
    #[error("{}", describe_attempts(.0))]
    Failed(Vec<(String, io::Error)>),
    /// The deadline passed with attempts still pending.
    #[error("no connection within {}ms (tried {})", .limit.as_millis(), .tried.join(", "))]
    Timeout {
        /// The `connect_timeout` that passed.
        limit: Duration,
        /// Every address tried.
        tried: Vec<String>,
    },
    /// The name did not resolve.
    #[error("cannot resolve {host}: {}", describe_io_error(.error))]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        error: io::Error,
    },
}

impl ConnectError {
    /// The failure as told after the server has been named (`upstream app
    /// (127.0.0.1:9): …`): an attempt on the server's own address doesn't repeat it.
    /// The addresses a host name resolved to are still listed.
    pub fn describe(&self, server: &str) -> String {
        match self {
            ConnectError::Failed(attempts) if attempts.len() == 1 && attempts[0].0 == server => {
                describe_io_error(&attempts[0].1)
            }
            ConnectError::Timeout { limit, tried } if tried.len() == 1 && tried[0] == server => {
                format!("no connection within {}ms", limit.as_millis())
            }
            other => other.to_string(),
        }
    }
}

fn describe_attempts(errors: &[(String, io::Error)]) -> String {
    match errors {
        [] => "no address to connect to".to_owned(),
        [(addr, e)] => format!("{} ({addr})", describe_io_error(e)),
        many => many
            .iter()
            .map(|(addr, e)| format!("{addr}: {}", describe_io_error(e)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// A connected upstream stream and the addresses it runs between.
#[derive(Debug)]
pub struct Connected {
    /// The stream.
    pub stream: Stream,
    /// The upstream address actually connected (for a host name: the one that won).
    pub peer: Option<SocketAddr>,
    /// Our side's address (TCP only).
    pub local: Option<SocketAddr>,
}

/// Connects to a Unix socket within `limit`.
pub async fn connect_unix(path: &Path, limit: Duration) -> Result<Connected, ConnectError> {
    let shown = format!("unix:{}", path.display());
    match timeout(limit, UnixStream::connect(path)).await {
        Ok(Ok(s)) => Ok(Connected {
            stream: Stream::Unix(s),
            peer: None,
            local: None,
        }),
        Ok(Err(e)) => Err(ConnectError::Failed(vec![(shown, e)])),
        Err(_) => Err(ConnectError::Timeout {
            limit,
            tried: vec![shown],
        }),
    }
}

/// Connects to one of `addrs` (already in preference order) with Happy Eyeballs:
/// the next address starts after [`defaults::CONNECTION_ATTEMPT_DELAY`], or at once when
/// an attempt fails; the first to succeed wins and the others are dropped. `limit`
/// bounds all attempts together.
pub async fn connect_tcp(
    addrs: &[SocketAddr],
    limit: Duration,
    opts: TcpOptions,
) -> Result<Connected, ConnectError> {
    connect_tcp_with_delay(addrs, limit, opts, defaults::CONNECTION_ATTEMPT_DELAY).await
}

async fn connect_tcp_with_delay(
    addrs: &[SocketAddr],
    limit: Duration,
    opts: TcpOptions,
    attempt_delay: Duration,
) -> Result<Connected, ConnectError> {
    let deadline = Instant::now() + limit;
    let mut attempts = FuturesUnordered::new();
    let mut errors: Vec<(String, io::Error)> = Vec::new();
    let mut next = 0;
    let mut next_at = Instant::now();
    loop {
        let more = next < addrs.len();
        if !more && attempts.is_empty() {
            return Err(ConnectError::Failed(errors));
        }
        tokio::select! {
            biased;
            Some((addr, res)) = attempts.next(), if !attempts.is_empty() => match res {
                Ok(stream) => {
                    let stream: TcpStream = stream;
                    if let Err(e) = opts.apply(&stream) {
                        tracing::debug!(%addr, error = %e, "cannot set TCP options on upstream socket");
                    }
                    let local = stream.local_addr().ok();
                    return Ok(Connected { stream: Stream::Tcp(stream), peer: Some(addr), local });
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %describe_io_error(&e), "connect attempt failed");
                    errors.push((addr.to_string(), e));
                    // RFC 8305 §5: a failed attempt starts the next one at once.
                    next_at = Instant::now();
                }
            },
            _ = sleep_until(next_at), if more => {
                let addr = addrs[next];
                next += 1;
                attempts.push(async move { (addr, TcpStream::connect(addr).await) });
                next_at = Instant::now() + attempt_delay;
            }
            _ = sleep_until(deadline) => {
                let tried = addrs[..next].iter().map(|a| a.to_string()).collect();
                return Err(ConnectError::Timeout { limit, tried });
            }
        }
    }
}

/// Puts addresses in Happy Eyeballs order (RFC 8305 §4): the last address that worked
/// first, then alternating families starting with the resolver's first family.
pub fn order_addresses(
    mut addrs: Vec<SocketAddr>,
    last_good: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    addrs.dedup();
    let first_v6 = addrs.first().is_some_and(|a| a.is_ipv6());
    let (mut a, mut b): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|x| x.is_ipv6() == first_v6);
    a.reverse();
    b.reverse();
    let mut out = Vec::with_capacity(a.len() + b.len());
    loop {
        match (a.pop(), b.pop()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    if let Some(good) = last_good {
        if let Some(pos) = out.iter().position(|a| *a == good) {
            out.remove(pos);
            out.insert(0, good);
        }
    }
    out
}

/// Resolves `host` within the connect deadline.
pub async fn resolve(
    resolver: &Arc<dyn Resolve>,
    host: &str,
    port: u16,
    limit: Duration,
) -> Result<Vec<SocketAddr>, ConnectError> {
    match timeout(limit, resolver.resolve(host, port)).await {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(ConnectError::Resolve {
            host: host.to_owned(),
            error: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        }),
        Ok(Err(error)) => Err(ConnectError::Resolve {
            host: host.to_owned(),
            error,
        }),
        Err(_) => Err(ConnectError::Timeout {
            limit,
            tried: vec![format!("{host}:{port} (resolving)")],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn order_interleaves_families_starting_with_the_first() {
        let got = order_addresses(
            vec![
                a("[::1]:1"),
                a("[::2]:1"),
                a("127.0.0.1:1"),
                a("127.0.0.2:1"),
            ],
            None,
        );
        assert_eq!(
            got,
            vec![
                a("[::1]:1"),
                a("127.0.0.1:1"),
                a("[::2]:1"),
                a("127.0.0.2:1")
            ]
        );
    }

    #[test]
    fn order_puts_last_good_first() {
        let got = order_addresses(vec![a("[::1]:1"), a("127.0.0.1:1")], Some(a("127.0.0.1:1")));
        assert_eq!(got, vec![a("127.0.0.1:1"), a("[::1]:1")]);
    }

    #[tokio::test]
    async fn refused_address_moves_on_at_once() {
        // A port with nothing listening: bind, note the port, close.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let c = connect_tcp_with_delay(
            &[dead, live.local_addr().unwrap()],
            Duration::from_secs(5),
            TcpOptions::default(),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        assert_eq!(c.peer, Some(live.local_addr().unwrap()));
        // Far below the 3 s attempt delay: the refusal started the next attempt.
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn upstream_tcp_sockets_get_nodelay_and_the_configured_keepalive() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let opts = TcpOptions {
            nodelay: true,
            keepalive: Some(Duration::from_secs(30)),
        };
        let c = connect_tcp(&[live.local_addr().unwrap()], Duration::from_secs(2), opts)
            .await
            .unwrap();
        let Stream::Tcp(s) = &c.stream else {
            panic!("a TCP address gave a non-TCP stream")
        };
        let sock = socket2::SockRef::from(s);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            defaults::TCP_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            sock.tcp_keepalive_retries().unwrap(),
            defaults::TCP_KEEPALIVE_PROBES
        );
    }

    #[test]
    fn describe_does_not_repeat_the_servers_own_address() {
        let refused = || io::Error::from_raw_os_error(nix::libc::ECONNREFUSED);
        let one = ConnectError::Failed(vec![("127.0.0.1:9".into(), refused())]);
        assert_eq!(
            one.describe("127.0.0.1:9"),
            "connection refused (ECONNREFUSED)"
        );
        // A host name: the address it resolved to is worth telling.
        assert_eq!(
            one.describe("localhost:9"),
            "connection refused (ECONNREFUSED) (127.0.0.1:9)"
        );
        let two = ConnectError::Failed(vec![
            ("[::1]:9".into(), refused()),
            ("127.0.0.1:9".into(), refused()),
        ]);
        assert!(two
            .describe("localhost:9")
            .contains("[::1]:9: connection refused"));
        let slow = ConnectError::Timeout {
            limit: Duration::from_millis(300),
            tried: vec!["127.0.0.1:9".into()],
        };
        assert_eq!(slow.describe("127.0.0.1:9"), "no connection within 300ms");
    }

    #[tokio::test]
    async fn all_refused_names_each_address() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = connect_tcp(&[dead], Duration::from_secs(2), TcpOptions::default())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains(&dead.to_string()), "{text}");
    }
}
