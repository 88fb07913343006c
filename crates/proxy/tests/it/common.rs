//! Shared by the in-process tests: run the data plane from a config, capture logs.

use std::io::Write;
use std::sync::Arc;

use tidegate_config::Config;
use tidegate_proxy::access_log::AccessLog;
use tidegate_proxy::drain::Shutdown;
use tidegate_proxy::listen::LocalAddr;
use tidegate_proxy::metrics::Metrics;
use tidegate_proxy::registry::Registry;
use tidegate_proxy::upstream::connect::{Resolve, SystemResolver};
use tidegate_proxy::upstream::Upstream;
use tidegate_proxy::Runtime;
use tidegate_testkit::Addr;

/// A running data plane; aborted on drop.
pub struct Proxy {
    /// The first listening address.
    pub addr: Addr,
    /// The upstreams, as the runtime started them (their servers, pools and states).
    pub upstreams: Vec<Arc<Upstream>>,
    /// Aborts the data plane (on drop) or drains it.
    pub shutdown: Shutdown,
    /// The connection registry.
    pub registry: Arc<Registry>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.abort();
    }
}

/// A listener `web` on 127.0.0.1:0 routing everything to upstream `app` with these
/// servers; `extra` goes after `servers` in `[upstreams.app]` (and may open sub-tables).
pub fn config(servers: &[String], extra: &str) -> anyhow::Result<Config> {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = [{list}]
{extra}
"#
    );
    tidegate_config::load_str(&toml, None).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Binds and starts `config` with the system resolver.
pub fn start(config: &Config) -> anyhow::Result<Proxy> {
    start_with(config, SystemResolver)
}

/// Binds and starts `config` with `resolver`.
pub fn start_with(config: &Config, resolver: impl Resolve) -> anyhow::Result<Proxy> {
    start_full(config, Arc::new(resolver), AccessLog::off())
}

/// Binds and starts `config` with the system resolver, logging requests to `log`.
pub fn start_logged(config: &Config, log: AccessLog) -> anyhow::Result<Proxy> {
    start_full(config, Arc::new(SystemResolver), log)
}

fn start_full(
    config: &Config,
    resolver: Arc<dyn Resolve>,
    log: AccessLog,
) -> anyhow::Result<Proxy> {
    let mut runtime =
        Runtime::bind(config, resolver).map_err(|e| anyhow::anyhow!("bind: {e:?}"))?;
    runtime.set_access_log(log);
    let addresses: Vec<(String, Addr)> = runtime
        .addresses()
        .into_iter()
        .map(|(name, a)| {
            let a = match a {
                LocalAddr::Tcp(a) => Addr::Tcp(a),
                LocalAddr::Unix(p) => Addr::Unix(p),
            };
            (name, a)
        })
        .collect();
    let addr = addresses[0].1.clone();
    let registry = runtime.registry();
    let metrics = runtime.metrics();
    let shutdown = Shutdown::new();
    let serving = runtime.start(&shutdown);
    let upstreams = serving.upstreams();
    Ok(Proxy {
        addr,
        upstreams,
        shutdown,
        registry,
        metrics,
    })
}

thread_local! {
    /// Formatted log lines of events emitted on this thread.
    static LOGS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Log capture per test. One global subscriber writes each event to a buffer of the
/// thread that emitted it; `#[tokio::test]` runs a test and the tasks it spawns on one
/// thread. Not `set_default`: with scoped subscribers, tracing caches a callsite's
/// interest from whichever thread registers it first, so an event first hit by a
/// parallel test without a subscriber is lost for this one too.
pub struct Logs;

impl Logs {
    /// Starts capturing (clears this thread's buffer).
    pub fn capture() -> Logs {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer(|| ThreadSink)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
        });
        LOGS.with(|l| l.borrow_mut().clear());
        Logs
    }

    /// Captured lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        LOGS.with(|l| {
            String::from_utf8_lossy(&l.borrow())
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect()
        })
    }

    /// Every captured line.
    pub fn text(&self) -> String {
        LOGS.with(|l| String::from_utf8_lossy(&l.borrow()).into_owned())
    }
}

struct ThreadSink;

impl Write for ThreadSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.with(|l| l.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
