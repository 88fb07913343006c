//! What a reload changes, said before it is done: the plan `ctl reload` prints (and
//! `--dry-run` prints without applying), with the live connections each change
//! touches and what happens to them.
//!
//! What stays across a reload, and so is never interrupted (kept by
//! [`crate::Serving::reload`]):
//! - a listening socket whose address stays (same key: `ip:port` as configured, or the
//!   Unix socket path), whatever listener it now belongs to;
//! - a listener whose name and protocol stay: its connections, drain signals, counters
//!   and `max_connections` permits; its new routes and timeouts apply from each
//!   connection's next request on;
//! - a server whose upstream, address and server settings (`keepalive`,
//!   `keepalive_timeout`, `[health]`, `[on_demand]`) stay: its pooled connections,
//!   health state, admin state, counters and on-demand backend.
//!
//! What goes: a removed address stops accepting at once; a removed listener's idle
//! connections close at once and its exchanges, streams and tunnels finish, or are
//! closed at `shutdown_grace` after the reload; a removed server takes no new request
//! and its exchanges finish on it.
//!
//! Boundary: this module only compares configs and counts connections; it changes
//! nothing. Settings outside the data plane (`[server]`, `[admin]`) are the binary's
//! to report.

use std::collections::HashMap;
use std::fmt::Write as _;

use tidegate_config::{Config, ListenAddr, Listener, Protocol, Upstream};

use crate::listen::ListenKey;
use crate::registry::Registry;
use crate::side::Side;
use crate::upstream::ServerSettings;
use tidegate_config::parse::format_duration;

/// The changes a reload makes, in config order: listeners, then upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The generation the new config runs as.
    pub generation: u64,
    /// Every change; empty when the new config changes nothing in the data plane.
    pub changes: Vec<Change>,
}

/// One change of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What changes: `listener web`, `upstream app`, `upstream app server 10.0.0.1:80`.
    pub subject: String,
    /// How: `added`, `removed`, `routes, idle_timeout 1m -> 30s`.
    pub what: String,
    /// Live connections it concerns (client connections of a listener; connections to
    /// a server, pooled ones included).
    pub connections: usize,
    /// What happens to them.
    pub effect: String,
}

/// Live connections by what they belong to, counted in one pass.
#[derive(Debug, Default)]
struct Counts {
    /// Client connections by listener.
    listeners: HashMap<String, usize>,
    /// Upstream connections by (upstream, server address as configured).
    servers: HashMap<(String, String), usize>,
}

impl Counts {
    fn of(registry: &Registry) -> Counts {
        let mut c = Counts::default();
        registry.for_each(|conn| match conn.side() {
            Side::Client => *c.listeners.entry(conn.name().to_owned()).or_default() += 1,
            Side::Upstream => {
                let addr = conn.server_addr().unwrap_or_default().to_owned();
                *c.servers.entry((conn.name().to_owned(), addr)).or_default() += 1;
            }
        });
        c
    }

    fn listener(&self, name: &str) -> usize {
        self.listeners.get(name).copied().unwrap_or(0)
    }

    fn server(&self, upstream: &str, addr: &str) -> usize {
        self.servers
            .get(&(upstream.to_owned(), addr.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// Compares the config in effect with `new` (to run as `generation`).
pub fn plan(old: &Config, new: &Config, generation: u64, registry: &Registry) -> Plan {
    let counts = Counts::of(registry);
    let grace = format_duration(new.server.shutdown_grace);
    let mut changes = Vec::new();
    for o in &old.listeners {
        let kept = new
            .listeners
            .iter()
            .find(|n| n.name == o.name && n.protocol == o.protocol);
        if kept.is_none() {
            changes.push(Change {
                subject: format!("listener {}", o.name),
                what: if new.listeners.iter().any(|n| n.name == o.name) {
                    "protocol changed: replaced by a new listener".into()
                } else {
                    "removed".into()
                },
                connections: counts.listener(&o.name),
                effect: format!(
                    "its addresses that no listener keeps stop accepting now; idle keep-alive connections close now; requests, streams and tunnels in progress finish, or are closed {grace} after the reload (shutdown_grace)"
                ),
            });
        }
    }
    for n in &new.listeners {
        let Some(o) = old
            .listeners
            .iter()
            .find(|o| o.name == n.name && o.protocol == n.protocol)
        else {
            changes.push(Change {
                subject: format!("listener {}", n.name),
                what: format!("added on {}", addresses(&n.listen)),
                connections: 0,
                effect: "binds its new addresses and starts accepting".into(),
            });
            continue;
        };
        let added: Vec<&ListenAddr> = n
            .listen
            .iter()
            .filter(|a| !o.listen.iter().any(|b| same_socket(a, b)))
            .collect();
        let removed: Vec<&ListenAddr> = o
            .listen
            .iter()
            .filter(|a| !n.listen.iter().any(|b| same_socket(a, b)))
            .collect();
        let mut what = Vec::new();
        if !added.is_empty() {
            what.push(format!(
                "addresses added: {}",
                addresses(added.iter().copied())
            ));
        }
        if !removed.is_empty() {
            what.push(format!(
                "addresses removed: {}",
                addresses(removed.iter().copied())
            ));
        }
        let fields = listener_fields(o, n);
        let socket_options: Vec<String> = n
            .listen
            .iter()
            .filter_map(|a| {
                let b = o.listen.iter().find(|b| same_socket(a, b))?;
                (a != b).then(|| format!("{} -> {}", socket_options(b), socket_options(a)))
            })
            .collect();
        if !fields.is_empty() {
            what.push(fields.join(", "));
        }
        if what.is_empty() && socket_options.is_empty() {
            continue;
        }
        let mut effect = String::from(
            "its sockets that stay keep accepting; open connections go on, and their next request uses the new settings",
        );
        if !removed.is_empty() {
            effect.push_str(
                "; removed addresses stop accepting now (connections accepted there go on)",
            );
        }
        if !socket_options.is_empty() {
            let _ = write!(
                effect,
                "; the mode and owner of a Unix socket file that stays cannot change at runtime (kept as created: {}); they apply at the next upgrade or restart",
                socket_options.join(", ")
            );
            if what.is_empty() {
                what.push("socket file options".into());
            }
        }
        changes.push(Change {
            subject: format!("listener {}", n.name),
            what: what.join("; "),
            connections: counts.listener(&n.name),
            effect,
        });
    }
    for o in &old.upstreams {
        if new.upstream(&o.name).is_none() {
            let connections = o
                .servers
                .iter()
                .map(|s| counts.server(&o.name, &s.to_string()))
                .sum();
            changes.push(Change {
                subject: format!("upstream {}", o.name),
                what: "removed".into(),
                connections,
                effect: "exchanges and tunnels in progress finish on it; its idle pooled connections close; an on-demand backend is stopped by the end of shutdown_grace".into(),
            });
        }
    }
    for n in &new.upstreams {
        let Some(o) = old.upstream(&n.name) else {
            changes.push(Change {
                subject: format!("upstream {}", n.name),
                what: format!(
                    "added with {}",
                    n.servers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                connections: 0,
                effect: "routes that name it send requests to it".into(),
            });
            continue;
        };
        let rebuilt = server_settings_changed(o, n);
        for s in &o.servers {
            let addr = s.to_string();
            let gone = !n.servers.contains(s);
            if gone || rebuilt {
                changes.push(Change {
                    subject: format!("upstream {} server {addr}", n.name),
                    what: if gone { "removed".into() } else { "replaced (keepalive, health or on_demand changed)".into() },
                    connections: counts.server(&n.name, &addr),
                    effect: if gone {
                        "takes no new request; exchanges and tunnels in progress finish on it; its idle pooled connections close".into()
                    } else {
                        "a new server takes new requests with an empty pool and fresh health state; exchanges in progress finish on the old one".into()
                    },
                });
            }
        }
        for s in &n.servers {
            if !o.servers.contains(s) {
                changes.push(Change {
                    subject: format!("upstream {} server {s}", n.name),
                    what: "added".into(),
                    connections: 0,
                    effect: "takes new requests".into(),
                });
            }
        }
        let fields = upstream_fields(o, n);
        if !fields.is_empty() {
            let connections = o
                .servers
                .iter()
                .filter(|s| n.servers.contains(s))
                .map(|s| counts.server(&n.name, &s.to_string()))
                .sum();
            changes.push(Change {
                subject: format!("upstream {}", n.name),
                what: fields.join(", "),
                connections,
                effect: "requests that start after the reload use the new settings; exchanges in progress keep theirs".into(),
            });
        }
    }
    Plan {
        generation,
        changes,
    }
}

/// Two configured addresses name the same socket (a Unix path with other options is
/// the same socket file): what `Serving::reload` keeps a socket by.
fn same_socket(a: &ListenAddr, b: &ListenAddr) -> bool {
    ListenKey::of(a) == ListenKey::of(b)
}

/// A Unix address with the options a kept socket file cannot change at runtime.
fn socket_options(a: &ListenAddr) -> String {
    match a {
        ListenAddr::Unix(u) => {
            let opt =
                |v: Option<u32>, f: &dyn Fn(u32) -> String| v.map_or_else(|| "-".to_owned(), f);
            format!(
                "{a} (mode {}, owner {}, group {})",
                opt(u.mode, &|m| format!("{m:o}")),
                opt(u.owner, &|v| v.to_string()),
                opt(u.group, &|v| v.to_string())
            )
        }
        other => other.to_string(),
    }
}

fn addresses<'a>(list: impl IntoIterator<Item = &'a ListenAddr>) -> String {
    list.into_iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `name old -> new` for each listener setting that differs (routes as one word).
fn listener_fields(o: &Listener, n: &Listener) -> Vec<String> {
    let mut out = Vec::new();
    if o.routes != n.routes {
        out.push(format!("routes ({} -> {})", o.routes.len(), n.routes.len()));
    }
    if o.protocol == Protocol::Tcp && o.upstream != n.upstream {
        out.push(format!(
            "upstream {} -> {}",
            o.upstream.as_deref().unwrap_or("-"),
            n.upstream.as_deref().unwrap_or("-")
        ));
    }
    macro_rules! field {
        ($name:ident, $show:expr) => {
            if o.$name != n.$name {
                let show = $show;
                out.push(format!(
                    "{} {} -> {}",
                    stringify!($name),
                    show(&o.$name),
                    show(&n.$name)
                ));
            }
        };
    }
    field!(header_timeout, |d: &std::time::Duration| format_duration(
        *d
    ));
    field!(idle_timeout, |d: &std::time::Duration| format_duration(*d));
    field!(max_connections, |v: &usize| v.to_string());
    field!(max_header_size, |v: &usize| v.to_string());
    field!(tcp_keepalive, |d: &Option<std::time::Duration>| d
        .map_or_else(|| "off".to_owned(), format_duration));
    field!(underscores_in_headers, |v: &bool| v.to_string());
    field!(half_close, |v: &bool| v.to_string());
    out.extend(tls_fields(o.tls.as_ref(), n.tls.as_ref()));
    if o.tls_passthrough != n.tls_passthrough {
        let routes = |p: &Option<tidegate_config::TlsPassthrough>| {
            p.as_ref().map_or_else(
                || "off".to_owned(),
                |p| format!("{} routes", p.routes.len()),
            )
        };
        out.push(format!(
            "tls_passthrough {} -> {} (new connections)",
            routes(&o.tls_passthrough),
            routes(&n.tls_passthrough)
        ));
    }
    out
}

/// What changed in a listener's `tls`: certificates (by their names; new handshakes get
/// the new ones, open connections keep their sessions) and settings.
fn tls_fields(o: Option<&tidegate_config::Tls>, n: Option<&tidegate_config::Tls>) -> Vec<String> {
    let names = |t: &tidegate_config::Tls| {
        t.certificates
            .iter()
            .map(|c| c.names.join(","))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (o, n) = match (o, n) {
        (None, None) => return Vec::new(),
        (None, Some(_)) => return vec!["tls off -> on (new connections)".to_owned()],
        (Some(_), None) => return vec!["tls on -> off (new connections)".to_owned()],
        (Some(o), Some(n)) => (o, n),
    };
    let mut out = Vec::new();
    if o.certificates != n.certificates {
        out.push(format!(
            "tls certificates ({} -> {}; new handshakes)",
            names(o),
            names(n)
        ));
    }
    if o.min_version != n.min_version {
        let v = |v: tidegate_config::TlsVersion| match v {
            tidegate_config::TlsVersion::V1_2 => "1.2",
            tidegate_config::TlsVersion::V1_3 => "1.3",
        };
        out.push(format!(
            "tls min_version {} -> {}",
            v(o.min_version),
            v(n.min_version)
        ));
    }
    if o.handshake_timeout != n.handshake_timeout {
        out.push(format!(
            "tls handshake_timeout {} -> {}",
            format_duration(o.handshake_timeout),
            format_duration(n.handshake_timeout)
        ));
    }
    if o.alpn != n.alpn {
        out.push(format!(
            "tls alpn {} -> {}",
            o.alpn.join(","),
            n.alpn.join(",")
        ));
    }
    out
}

/// Whether the settings a server is built from changed (its servers are then replaced):
/// the very rule `Upstream::rebuild` keeps servers by.
fn server_settings_changed(o: &Upstream, n: &Upstream) -> bool {
    ServerSettings::of(o) != ServerSettings::of(n)
}

/// `name old -> new` for each upstream-wide setting that differs.
fn upstream_fields(o: &Upstream, n: &Upstream) -> Vec<String> {
    let mut out = Vec::new();
    let d = |d: &std::time::Duration| format_duration(*d);
    let od = |d: &Option<std::time::Duration>| d.map_or_else(|| "off".to_owned(), format_duration);
    macro_rules! field {
        ($name:ident, $show:expr) => {
            if o.$name != n.$name {
                out.push(format!(
                    "{} {} -> {}",
                    stringify!($name),
                    $show(&o.$name),
                    $show(&n.$name)
                ));
            }
        };
    }
    field!(connect_timeout, d);
    field!(response_timeout, d);
    field!(idle_timeout, d);
    field!(retries, |v: &usize| v.to_string());
    field!(balance, |v: &tidegate_config::Balance| format!("{v:?}")
        .to_lowercase());
    field!(sse_heartbeat, od);
    field!(tcp_keepalive, od);
    field!(max_ejected_percent, |v: &u8| v.to_string());
    if o.passive != n.passive {
        out.push("passive".into());
    }
    if o.request_buffering != n.request_buffering {
        out.push("request_buffering".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        tidegate_config::load_str(toml, Some(std::path::Path::new("/tmp/t.toml")))
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    const BASE: &str = r#"
[listeners.web]
listen = ["127.0.0.1:0"]
routes = [ { path = "/", upstream = "app" } ]

[upstreams.app]
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#;

    #[test]
    fn the_same_config_changes_nothing() {
        let a = config(BASE);
        let p = plan(&a, &a, 2, &Registry::new());
        assert_eq!(p.changes, vec![]);
        assert_eq!(p.generation, 2);
    }

    #[test]
    fn each_kind_of_change_is_named_with_its_effect() {
        let a = config(BASE);
        let b = config(
            r#"
[listeners.web]
listen = ["127.0.0.1:0"]
idle_timeout = "5s"
routes = [ { path = "/new", upstream = "app" }, { path = "/", upstream = "app" } ]

[listeners.tcp]
listen = ["127.0.0.1:0"]
protocol = "tcp"
upstream = "app"

[upstreams.app]
servers = ["127.0.0.1:9002", "127.0.0.1:9003"]
response_timeout = "3s"
"#,
        );
        let p = plan(&a, &b, 2, &Registry::new());
        let lines: Vec<String> = p
            .changes
            .iter()
            .map(|c| format!("{}: {}", c.subject, c.what))
            .collect();
        assert_eq!(
            lines,
            vec![
                "listener tcp: added on 127.0.0.1:0",
                "listener web: routes (1 -> 2), idle_timeout 1m -> 5s",
                "upstream app server 127.0.0.1:9001: removed",
                "upstream app server 127.0.0.1:9003: added",
                "upstream app: response_timeout 1m -> 3s",
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn a_certificate_rotation_and_tls_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = tidegate_testkit::tls::TestCa::new().unwrap();
        ca.leaf(dir.path(), "a", &["a.test"], None).unwrap();
        let with = |extra: &str| {
            let toml = format!(
                r#"
[listeners.web]
listen = ["127.0.0.1:0"]
tls = {{ certificates = [ {{ cert = "a.pem", key = "a.key" }} ]{extra} }}
routes = [ {{ path = "/", respond = {{ status = 200 }} }} ]
"#
            );
            tidegate_config::load_str(&toml, Some(&dir.path().join("t.toml")))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let a = with("");
        assert_eq!(plan(&a, &with(""), 2, &Registry::new()).changes, vec![]);
        ca.leaf(dir.path(), "a", &["a.test", "b.test"], None)
            .unwrap();
        let b = with(r#", min_version = "1.3""#);
        let p = plan(&a, &b, 2, &Registry::new());
        let lines: Vec<String> = p
            .changes
            .iter()
            .map(|c| format!("{}: {}", c.subject, c.what))
            .collect();
        assert_eq!(
            lines,
            ["listener web: tls certificates (a.test -> a.test,b.test; new handshakes), tls min_version 1.2 -> 1.3"],
            "{p:#?}"
        );
    }

    #[test]
    fn a_unix_socket_whose_mode_changes_is_kept_and_said_so() {
        let unix = |mode: &str| {
            config(&format!(
                "[listeners.web]\nlisten = [\"unix:/tmp/w.sock:mode={mode}\"]\nroutes = [ {{ path = \"/\", upstream = \"app\" }} ]\n[upstreams.app]\nservers = [\"127.0.0.1:9001\"]\n"
            ))
        };
        let p = plan(&unix("660"), &unix("600"), 2, &Registry::new());
        assert_eq!(p.changes.len(), 1, "{p:#?}");
        let c = &p.changes[0];
        assert_eq!(c.what, "socket file options", "{c:#?}");
        assert!(
            c.effect.contains("(mode 660") && c.effect.contains("(mode 600"),
            "{c:#?}"
        );
    }
}
