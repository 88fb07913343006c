//! The validator: walks the spanned TOML document against the whole schema (docs/config.md),
//! records every error with its position and key path, and builds the typed model.
//!
//! Each section is one function; leaf values go through a few helpers (`timeout`,
//! `uint`, `size`, `choice`, `parsed`, …) that return `None` for an absent or invalid
//! value and record the error themselves, so a caller only picks the default. The model
//! built alongside is thrown away as soon as one error was recorded.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use crate::addr::ListenAddr;
use crate::defaults;
use crate::error::Sink;
use crate::model::{
    AccessLog, AccessLogTo, Admin, Config, Health, HostMatch, Listener, Log, OnDemand, Passive,
    Protocol, Route, RouteAction, Server, SniRoute, Tls, TlsPassthrough, TlsVersion, Upstream,
    UpstreamProtocol, UpstreamTls, H2,
};
use crate::model::{OverLimit, RequestBuffering};
use crate::parse::{self, InvalidValue, DURATION_FORMS, SIZE_FORMS};

type Span = Option<Range<usize>>;

/// Walks `root` (the parsed document's root table) and returns the model, or `None`
/// when `sink` holds at least one error.
pub(crate) fn config(root: &dyn TableLike, sink: &mut Sink<'_>, base: &Path) -> Option<Config> {
    let mut cx = Cx {
        sink,
        base,
        http_only: Vec::new(),
    };
    let root = Tbl {
        path: String::new(),
        inner: root,
        span: Some(0..0),
    };
    cx.keys(&root, &["server", "admin", "listeners", "upstreams"], &[]);
    // Addresses listened on so far: the admin socket's, then every listener's.
    let mut seen = Vec::new();
    let admin = match cx.table(&root, "admin") {
        Some(t) => cx.admin(&t, &mut seen),
        None => Admin::default(),
    };
    let server = match cx.table(&root, "server") {
        Some(t) => cx.server(&t),
        None => Server::default(),
    };

    let mut upstreams: Vec<Upstream> = cx
        .named_tables(&root, "upstreams")
        .into_iter()
        .map(|(name, t)| cx.upstream(name, &t))
        .collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    cx.http_only = upstreams
        .iter()
        .filter(|u| u.tls.is_some() || u.protocol != UpstreamProtocol::Http1)
        .map(|u| u.name.clone())
        .collect();

    let mut listeners: Vec<Listener> = cx
        .named_tables(&root, "listeners")
        .into_iter()
        .map(|(name, t)| cx.listener(name, &t, &names, &mut seen))
        .collect();
    if listeners.is_empty() {
        let hint = "a config needs at least one [listeners.NAME] table";
        match root.field("listeners") {
            None => cx.err(Some(0..0), "listeners", format!("missing; {hint}")),
            Some(f) if f.item.as_table_like().is_some_and(|t| t.is_empty()) => {
                cx.err(f.span(), &f.path, format!("{hint}, found an empty table"));
            }
            // Whatever is there has been reported already.
            Some(_) => {}
        }
    }
    listeners.sort_by(|a, b| a.name.cmp(&b.name));

    cx.sink.is_empty().then_some(Config {
        source: None,
        server,
        admin,
        listeners,
        upstreams,
        warnings: Vec::new(),
    })
}

/// A table (`[a.b]`, inline `{ … }` or dotted `a.b.c = …`) and its key path.
struct Tbl<'d> {
    path: String,
    inner: &'d dyn TableLike,
    span: Span,
}

/// One key of a table: its path, its key's span and its value.
struct Field<'d> {
    path: String,
    key_span: Span,
    item: &'d Item,
}

/// A listen address already taken, to find one listened on twice.
struct Seen {
    addr: ListenAddr,
    path: String,
    span: Span,
}

struct Cx<'a, 's> {
    sink: &'a mut Sink<'s>,
    /// Upstreams with `tls` or `protocol = "h2"`: HTTP routes only (a TCP listener
    /// relays bytes as they are).
    http_only: Vec<String>,
    /// Relative `unix:` paths are resolved against this (the config file's folder).
    base: &'a Path,
}

// === impl Tbl, Field ===

impl<'d> Tbl<'d> {
    /// `path.key`, with the key quoted when TOML would need quotes (`listeners."a b"`).
    fn key_path(&self, key: &str) -> String {
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let key = if bare {
            key.to_owned()
        } else {
            format!("{key:?}")
        };
        if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn field(&self, key: &str) -> Option<Field<'d>> {
        let (k, item) = self.inner.get_key_value(key)?;
        Some(Field {
            path: self.key_path(key),
            key_span: k.span(),
            item,
        })
    }
}

impl Field<'_> {
    /// Where the value is (where the key is for implicit tables without one).
    fn span(&self) -> Span {
        self.item.span().or_else(|| self.key_span.clone())
    }
}

/// How a value looks, for "found …" in messages.
fn describe(item: &Item) -> String {
    match item {
        Item::Value(v) => describe_value(v),
        Item::Table(_) => "a table".to_owned(),
        Item::ArrayOfTables(_) => "an array of tables".to_owned(),
        Item::None => "nothing".to_owned(),
    }
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.value()),
        Value::Integer(i) => i.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        Value::Boolean(b) => b.value().to_string(),
        Value::Datetime(d) => format!("the date-time {}", d.value()),
        Value::Array(_) => "an array".to_owned(),
        Value::InlineTable(_) => "a table".to_owned(),
    }
}

/// The allowed key nearest to a misspelt one (edit distance at most 2).
fn nearest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    allowed
        .iter()
        .map(|a| (distance(key, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

// === impl Cx: helpers ===

impl<'d> Cx<'_, '_> {
    fn err(&mut self, span: Span, path: &str, message: impl Into<String>) {
        self.sink.push(span, path, message.into());
    }

    fn expected(&mut self, f: &Field<'_>, what: &str) {
        let mut message = format!("expected {what}, found {}", describe(f.item));
        if matches!(f.item, Item::Value(Value::Integer(_))) && what == DURATION_FORMS {
            message.push_str(" (a duration is a string with a unit)");
        }
        self.err(f.span(), &f.path, message);
    }

    /// Refuses keys outside `allowed`, and names `unsupported` ones as not built yet.
    fn keys(&mut self, t: &Tbl<'_>, allowed: &[&str], unsupported: &[&str]) {
        for (key, _) in t.inner.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let span = t.inner.key(key).and_then(|k| k.span());
            let message = if unsupported.contains(&key) {
                format!("{key} is not supported yet")
            } else {
                let hint = nearest(key, allowed)
                    .map(|a| format!(" (did you mean {a:?}?)"))
                    .unwrap_or_default();
                format!("unknown key{hint}; allowed here: {}", allowed.join(", "))
            };
            self.err(span, &t.key_path(key), message);
        }
    }

    fn missing(&mut self, t: &Tbl<'_>, key: &str, hint: &str) {
        self.err(t.span.clone(), &t.key_path(key), format!("missing; {hint}"));
    }

    /// A sub-table (`[a.b]`, `b = { … }` or `b.c = …`).
    fn table(&mut self, t: &Tbl<'d>, key: &str) -> Option<Tbl<'d>> {
        let f = t.field(key)?;
        match f.item.as_table_like() {
            Some(inner) => Some(Tbl {
                span: f.span(),
                path: f.path,
                inner,
            }),
            None => {
                self.expected(&f, "a table");
                None
            }
        }
    }

    /// `[KEY.NAME]` tables in file order (an invalid name is reported, and kept so its
    /// table is still checked).
    fn named_tables(&mut self, root: &Tbl<'d>, key: &str) -> Vec<(String, Tbl<'d>)> {
        let Some(t) = self.table(root, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, _) in t.inner.iter() {
            let Some(sub) = self.table(&t, name) else {
                continue;
            };
            if !parse::is_name(name) {
                let span = t.inner.key(name).and_then(|k| k.span());
                self.err(
                    span,
                    &sub.path,
                    format!("invalid name {name:?}: use letters, digits, \"_\" and \"-\""),
                );
            }
            out.push((name.to_owned(), sub));
        }
        out
    }

    /// An array of tables (`[[a.b]]` or `b = [{ … }, …]`), each with its `[i]` path.
    fn tables(&mut self, f: &Field<'d>) -> Vec<Tbl<'d>> {
        let mut out = Vec::new();
        if let Some(aot) = f.item.as_array_of_tables() {
            for (i, t) in aot.iter().enumerate() {
                out.push(Tbl {
                    path: format!("{}[{i}]", f.path),
                    inner: t,
                    span: t.span(),
                });
            }
        } else if let Some(array) = f.item.as_array() {
            for (i, v) in array.iter().enumerate() {
                let path = format!("{}[{i}]", f.path);
                match v.as_inline_table() {
                    Some(t) => out.push(Tbl {
                        path,
                        inner: t,
                        span: v.span(),
                    }),
                    None => self.err(
                        v.span(),
                        &path,
                        format!("expected a table, found {}", describe_value(v)),
                    ),
                }
            }
        } else {
            self.expected(f, "an array of tables");
        }
        out
    }

    fn string(&mut self, f: &Field<'d>, what: &str) -> Option<&'d str> {
        let s = f.item.as_str();
        if s.is_none() {
            self.expected(f, what);
        }
        s
    }

    /// A string value run through a leaf parser.
    fn parsed<T>(
        &mut self,
        t: &Tbl<'d>,
        key: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Option<T> {
        let f = t.field(key)?;
        let s = self.string(&f, what)?;
        parse(s).map_err(|e| self.err(f.span(), &f.path, e.0)).ok()
    }

    /// A string, or an array of strings (not empty), each run through a leaf parser.
    /// `None` when the key is absent. `what` names one element: `("an address",
    /// "addresses")`.
    fn string_list<T>(
        &mut self,
        t: &Tbl<'d>,
        key: &str,
        (one, many): (&str, &str),
        parse: impl Fn(&str) -> Result<T, InvalidValue>,
    ) -> Option<Vec<(T, String, Span)>> {
        let f = t.field(key)?;
        let mut elements = Vec::new();
        if let Some(s) = f.item.as_str() {
            elements.push((s, f.path.clone(), f.span()));
        } else if let Some(array) = f.item.as_array() {
            if array.is_empty() {
                self.err(
                    f.span(),
                    &f.path,
                    format!(
                        "expected at least one {}, found an empty array",
                        one.split_once(' ').map_or(one, |(_, noun)| noun)
                    ),
                );
            }
            for (i, v) in array.iter().enumerate() {
                let path = format!("{}[{i}]", f.path);
                match v.as_str() {
                    Some(s) => elements.push((s, path, v.span())),
                    None => self.err(
                        v.span(),
                        &path,
                        format!("expected {one}, found {}", describe_value(v)),
                    ),
                }
            }
        } else {
            self.expected(&f, &format!("{one} or an array of {many}"));
        }
        let mut out = Vec::new();
        for (s, path, span) in elements {
            match parse(s) {
                Ok(v) => out.push((v, path, span)),
                Err(e) => self.err(span, &path, e.0),
            }
        }
        Some(out)
    }

    /// Any duration, zero included.
    fn duration(&mut self, t: &Tbl<'d>, key: &str) -> Option<Duration> {
        self.parsed(t, key, DURATION_FORMS, parse::duration)
    }

    /// A duration that must not be zero: a zero timer would fire at once.
    fn timeout(&mut self, t: &Tbl<'d>, key: &str) -> Option<Duration> {
        let d = self.duration(t, key)?;
        if d.is_zero() {
            let f = t.field(key)?;
            self.err(
                f.span(),
                &f.path,
                format!("must be more than zero, found {}", describe(f.item)),
            );
            return None;
        }
        Some(d)
    }

    /// A duration or `"off"` (`Some(None)`).
    fn duration_or_off(&mut self, t: &Tbl<'d>, key: &str) -> Option<Option<Duration>> {
        let what = r#"a duration like "60s", or "off""#;
        self.parsed(t, key, what, |s| match s {
            "off" => Ok(None),
            _ => match parse::duration(s) {
                Ok(d) if !d.is_zero() => Ok(Some(d)),
                Ok(_) => Err(InvalidValue(format!(
                    "must be more than zero, found {s:?} (write \"off\" to disable)"
                ))),
                Err(_) => Err(InvalidValue(format!("expected {what}, found {s:?}"))),
            },
        })
    }

    /// A whole number of at least `min`.
    fn uint(&mut self, t: &Tbl<'d>, key: &str, min: u64) -> Option<usize> {
        let f = t.field(key)?;
        let what = match min {
            0 => "a whole number".to_owned(),
            _ => format!("a whole number of at least {min}"),
        };
        let n = f.item.as_integer().and_then(|n| u64::try_from(n).ok());
        match n
            .filter(|n| *n >= min)
            .and_then(|n| usize::try_from(n).ok())
        {
            Some(n) => Some(n),
            None => {
                self.expected(&f, &what);
                None
            }
        }
    }

    /// `true` or `false` (`None` when absent or reported).
    fn flag(&mut self, t: &Tbl<'d>, key: &str) -> Option<bool> {
        let f = t.field(key)?;
        match f.item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.expected(&f, "true or false");
                None
            }
        }
    }

    /// A count of at least 1 that fits a `u32` (health `rise` and `fall`).
    fn count(&mut self, t: &Tbl<'d>, key: &str) -> Option<u32> {
        let n = self.uint(t, key, 1)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                let f = t.field(key)?;
                self.expected(&f, &format!("a whole number from 1 to {}", u32::MAX));
                None
            }
        }
    }

    /// `tcp_keepalive` (listeners and upstreams): whole seconds from 1 to
    /// [`defaults::MAX_TCP_KEEPALIVE`], or `"off"` (`Some(None)`).
    fn tcp_keepalive(&mut self, t: &Tbl<'d>) -> Option<Option<Duration>> {
        let value = self.duration_or_off(t, "tcp_keepalive")?;
        if let Some(d) = value {
            if d.subsec_nanos() != 0 || d > defaults::MAX_TCP_KEEPALIVE {
                let f = t.field("tcp_keepalive")?;
                self.err(
                    f.span(),
                    &f.path,
                    format!(
                        "expected whole seconds up to {}s (the kernel counts TCP keepalive \
                         idle time in seconds), found {}",
                        defaults::MAX_TCP_KEEPALIVE.as_secs(),
                        describe(f.item)
                    ),
                );
                return None;
            }
        }
        Some(value)
    }

    /// [`Cx::upstream_ref`] for a TCP listener: the upstream must take bytes as they
    /// are (no `tls`, no `protocol = "h2"`).
    fn tcp_upstream_ref(&mut self, f: &Field<'d>, upstreams: &[&str]) -> Option<String> {
        let name = self.upstream_ref(f, upstreams)?;
        if self.http_only.contains(&name) {
            self.err(
                f.span(),
                &f.path,
                format!(
                    "upstream {name:?} has tls or protocol = \"h2\", which apply to HTTP \
                     requests only; a TCP listener relays bytes as they are"
                ),
            );
            return None;
        }
        Some(name)
    }

    /// The name of an upstream that must exist (a route's or a TCP listener's
    /// `upstream`).
    fn upstream_ref(&mut self, f: &Field<'d>, upstreams: &[&str]) -> Option<String> {
        let name = self.string(f, "an upstream name")?;
        if upstreams.contains(&name) {
            return Some(name.to_owned());
        }
        let defined = match upstreams {
            [] => "none is defined".to_owned(),
            _ => format!("defined: {}", upstreams.join(", ")),
        };
        self.err(
            f.span(),
            &f.path,
            format!("no upstream named {name:?}; {defined}"),
        );
        None
    }

    /// A size in bytes: an integer, or a string like `"64KiB"`.
    fn size(&mut self, t: &Tbl<'d>, key: &str) -> Option<usize> {
        let f = t.field(key)?;
        if let Some(n) = f.item.as_integer() {
            return match usize::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.expected(&f, SIZE_FORMS);
                    None
                }
            };
        }
        self.parsed(t, key, SIZE_FORMS, parse::size)
    }

    /// One of a few names.
    fn choice<T: Copy>(&mut self, t: &Tbl<'d>, key: &str, options: &[(&str, T)]) -> Option<T> {
        let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        let what = format!("one of {}", names.join(", "));
        let f = t.field(key)?;
        let found = f
            .item
            .as_str()
            .and_then(|s| options.iter().find(|(n, _)| *n == s));
        match found {
            Some((_, v)) => Some(*v),
            None => {
                self.expected(&f, &what);
                None
            }
        }
    }
}

// === impl Cx: sections ===

impl<'d> Cx<'_, '_> {
    fn server(&mut self, t: &Tbl<'d>) -> Server {
        self.keys(t, &["shutdown_grace", "workers", "log", "access_log"], &[]);
        let mut log = Log::default();
        if let Some(l) = self.table(t, "log") {
            self.keys(&l, &["level", "format"], &[]);
            use crate::model::{LogFormat as F, LogLevel as L};
            let levels = [
                ("error", L::Error),
                ("warn", L::Warn),
                ("info", L::Info),
                ("debug", L::Debug),
                ("trace", L::Trace),
            ];
            log.level = self.choice(&l, "level", &levels).unwrap_or(log.level);
            let formats = [("text", F::Text), ("json", F::Json)];
            log.format = self.choice(&l, "format", &formats).unwrap_or(log.format);
        }
        let mut access_log = AccessLog::default();
        if let Some(a) = self.table(t, "access_log") {
            self.keys(&a, &["to", "format"], &[]);
            let base = self.base;
            // A table without `to` would log nowhere: a mistake, not a choice.
            if a.field("to").is_none() {
                self.missing(&a, "to", r#"write "stdout", a file path or "off""#);
            }
            access_log.to = self
                .parsed(&a, "to", r#""stdout", a path or "off""#, |s| match s {
                    "" => Err(InvalidValue(
                        r#"expected "stdout", a path or "off", found an empty string"#.into(),
                    )),
                    "off" => Ok(AccessLogTo::Off),
                    "stdout" => Ok(AccessLogTo::Stdout),
                    path => Ok(AccessLogTo::File(base.join(path))),
                })
                .unwrap_or(access_log.to);
            use crate::model::LogFormat as F;
            let formats = [("text", F::Text), ("json", F::Json)];
            access_log.format = self
                .choice(&a, "format", &formats)
                .unwrap_or(access_log.format);
        }
        Server {
            shutdown_grace: self
                .duration(t, "shutdown_grace")
                .unwrap_or(defaults::SHUTDOWN_GRACE),
            workers: self.uint(t, "workers", 0).unwrap_or(defaults::WORKERS),
            log,
            access_log,
        }
    }

    /// `[admin]`: every key defaulted. A Unix socket without `mode=` is made private
    /// ([`defaults::ADMIN_SOCKET_MODE`]): whoever can connect can drain servers and
    /// close connections.
    fn admin(&mut self, t: &Tbl<'d>, seen: &mut Vec<Seen>) -> Admin {
        self.keys(t, &["listen", "max_connections", "idle_timeout"], &[]);
        let base = self.base;
        let listen = self
            .parsed(t, "listen", "an address", |s| parse::listen_addr(s, base))
            .map(|addr| match addr {
                ListenAddr::Unix(mut u) => {
                    u.mode.get_or_insert(defaults::ADMIN_SOCKET_MODE);
                    ListenAddr::Unix(u)
                }
                tcp => tcp,
            });
        if let (Some(addr), Some(f)) = (&listen, t.field("listen")) {
            self.check_listened_once(addr, &f.path, &f.span(), seen);
        }
        Admin {
            listen,
            max_connections: self
                .uint(t, "max_connections", 1)
                .unwrap_or(defaults::ADMIN_MAX_CONNECTIONS),
            idle_timeout: self
                .timeout(t, "idle_timeout")
                .unwrap_or(defaults::ADMIN_IDLE_TIMEOUT),
        }
    }

    fn upstream(&mut self, name: String, t: &Tbl<'d>) -> Upstream {
        self.keys(
            t,
            &[
                "servers",
                "balance",
                "keepalive",
                "keepalive_timeout",
                "connect_timeout",
                "response_timeout",
                "idle_timeout",
                "retries",
                "sse_heartbeat",
                "tcp_keepalive",
                "health",
                "passive",
                "on_demand",
                "passive",
                "request_buffering",
                "tls",
                "protocol",
                "h2_max_streams_per_connection",
                "h2_max_connections",
            ],
            &[],
        );
        let base = self.base;
        let servers = self.string_list(
            t,
            "servers",
            ("a server address", "server addresses"),
            |s| parse::upstream_addr(s, base),
        );
        if servers.is_none() {
            self.missing(
                t,
                "servers",
                r#"an upstream needs at least one server, e.g. servers = ["127.0.0.1:3000"]"#,
            );
        }
        use crate::model::Balance as B;
        let balance = [("round_robin", B::RoundRobin), ("least_conn", B::LeastConn)];
        let mut upstream = Upstream {
            name,
            servers: servers
                .unwrap_or_default()
                .into_iter()
                .map(|(a, ..)| a)
                .collect(),
            balance: self
                .choice(t, "balance", &balance)
                .unwrap_or(defaults::BALANCE),
            keepalive: self.uint(t, "keepalive", 0).unwrap_or(defaults::KEEPALIVE),
            keepalive_timeout: self
                .timeout(t, "keepalive_timeout")
                .unwrap_or(defaults::KEEPALIVE_TIMEOUT),
            connect_timeout: self
                .timeout(t, "connect_timeout")
                .unwrap_or(defaults::CONNECT_TIMEOUT),
            response_timeout: self
                .timeout(t, "response_timeout")
                .unwrap_or(defaults::RESPONSE_TIMEOUT),
            idle_timeout: self
                .timeout(t, "idle_timeout")
                .unwrap_or(defaults::UPSTREAM_IDLE_TIMEOUT),
            retries: self.uint(t, "retries", 0).unwrap_or(defaults::RETRIES),
            sse_heartbeat: self
                .duration_or_off(t, "sse_heartbeat")
                .unwrap_or(Some(defaults::SSE_HEARTBEAT)),
            tcp_keepalive: self
                .tcp_keepalive(t)
                .unwrap_or(Some(defaults::TCP_KEEPALIVE)),
            health: self.table(t, "health").map(|h| self.health(&h)),
            passive: self
                .table(t, "passive")
                .map(|p| self.passive(&p))
                .unwrap_or_default(),
            on_demand: None,
            max_ejected_percent: self.max_ejected_percent(t),
            request_buffering: self
                .table(t, "request_buffering")
                .and_then(|b| self.request_buffering(&b)),
            tls: self.upstream_tls(t),
            protocol: self
                .choice(
                    t,
                    "protocol",
                    &[
                        ("http1", UpstreamProtocol::Http1),
                        ("h2", UpstreamProtocol::H2),
                    ],
                )
                .unwrap_or(defaults::UPSTREAM_PROTOCOL),
            h2_max_streams: self
                .uint(t, "h2_max_streams_per_connection", 1)
                .unwrap_or(defaults::H2_MAX_STREAMS_PER_CONNECTION),
            h2_max_connections: self
                .uint(t, "h2_max_connections", 1)
                .unwrap_or(defaults::H2_MAX_CONNECTIONS),
        };

        upstream.on_demand = self.table(t, "on_demand").and_then(|o| self.on_demand(&o));
        if upstream.on_demand.is_some() && upstream.servers.len() > 1 {
            if let Some(f) = t.field("servers") {
                self.err(
                    f.span(),
                    &f.path,
                    format!(
                        "an on-demand upstream has exactly one server: the address its \
                         command listens on; found {} servers",
                        upstream.servers.len()
                    ),
                );
            }
        }
        upstream
    }

    /// An upstream's `tls`: `true` (the system's CA certificates), `false`, or a table
    /// `{ ca, server_name, insecure_skip_verify }`. The CA file (or the system's
    /// certificates) is read now, so `check` refuses what every handshake would fail on.
    fn upstream_tls(&mut self, t: &Tbl<'d>) -> Option<UpstreamTls> {
        let f = t.field("tls")?;
        let system = |cx: &mut Self, f: &Field<'d>| match crate::tls::system_roots() {
            Ok(roots) => Some(roots),
            Err(why) => {
                cx.err(
                    f.span(),
                    &f.path,
                    format!(
                        "no system CA certificates could be read to verify the servers ({why}); \
                         name the CA that signed them: tls = {{ ca = \"ca.pem\" }}"
                    ),
                );
                None
            }
        };
        if let Some(on) = f.item.as_bool() {
            if !on {
                return None;
            }
            let roots = system(self, &f)?;
            return Some(UpstreamTls {
                ca: None,
                roots,
                server_name: None,
                insecure_skip_verify: false,
            });
        }
        if f.item.as_table_like().is_none() {
            self.expected(
                &f,
                r#"true, false or a table such as { ca = "ca.pem", server_name = "app.internal" }"#,
            );
            return None;
        }
        let tbl = self.table(t, "tls")?;
        self.keys(&tbl, &["ca", "server_name", "insecure_skip_verify"], &[]);
        let insecure = self.flag(&tbl, "insecure_skip_verify").unwrap_or(false);
        if insecure {
            if let Some(k) = tbl.field("insecure_skip_verify") {
                self.sink.warn(
                    k.span(),
                    &k.path,
                    "the servers' certificates are not verified: anyone on the path can \
                     impersonate them (use ca = \"FILE\" for a private CA instead)"
                        .to_owned(),
                );
            }
        }
        let server_name = match tbl.field("server_name") {
            None => None,
            Some(n) => {
                let s = self.string(&n, "a host name or IP address")?;
                match rustls_pki_types::ServerName::try_from(s) {
                    Ok(_) => Some(s.to_owned()),
                    Err(_) => {
                        self.err(
                            n.span(),
                            &n.path,
                            format!("{s:?} is not a valid host name or IP address"),
                        );
                        return None;
                    }
                }
            }
        };
        let (ca, roots) = match tbl.field("ca") {
            Some(c) => {
                let shown = self.string(&c, "a file path")?;
                if shown.is_empty() {
                    self.err(
                        c.span(),
                        &c.path,
                        "expected a file path, found an empty string",
                    );
                    return None;
                }
                let path = self.base.join(shown);
                match crate::tls::load_ca(&path, shown) {
                    Ok(roots) => (Some(path), roots),
                    Err(e) => {
                        self.err(c.span(), &c.path, e);
                        return None;
                    }
                }
            }
            // Nothing to verify against when nothing is verified.
            None if insecure => (None, Vec::new()),
            None => (None, system(self, &f)?),
        };
        Some(UpstreamTls {
            ca,
            roots,
            server_name,
            insecure_skip_verify: insecure,
        })
    }

    /// `[upstreams.NAME.passive] max_ejected_percent`: a whole number from 0 to 100.
    /// Only this key of `[passive]` is read here (the table's other keys and its
    /// unknown-key check belong to passive ejection's own block).
    fn max_ejected_percent(&mut self, t: &Tbl<'d>) -> u8 {
        let Some(p) = t
            .field("passive")
            .and_then(|f| f.item.as_table_like().is_some().then_some(f))
            .and_then(|_| self.table(t, "passive"))
        else {
            return defaults::MAX_EJECTED_PERCENT;
        };
        let Some(f) = p.field("max_ejected_percent") else {
            return defaults::MAX_EJECTED_PERCENT;
        };
        match f.item.as_integer().and_then(|n| u8::try_from(n).ok()) {
            Some(n) if n <= 100 => n,
            _ => {
                self.expected(
                    &f,
                    "a whole number from 0 to 100 (a percentage of the servers)",
                );
                defaults::MAX_EJECTED_PERCENT
            }
        }
    }

    /// `[upstreams.NAME.request_buffering]`: `max_body`, `total`, `over`, each
    /// defaulted; `max_body` at least 1 and not above `total`.
    fn request_buffering(&mut self, b: &Tbl<'d>) -> Option<RequestBuffering> {
        self.keys(b, &["max_body", "total", "over"], &[]);
        let max_body = self
            .size(b, "max_body")
            .unwrap_or(defaults::REQUEST_BUFFERING_MAX_BODY);
        let total = self
            .size(b, "total")
            .unwrap_or(defaults::REQUEST_BUFFERING_TOTAL);
        let over = self
            .choice(
                b,
                "over",
                &[("stream", OverLimit::Stream), ("refuse", OverLimit::Refuse)],
            )
            .unwrap_or(OverLimit::Stream);
        if max_body == 0 {
            if let Some(f) = b.field("max_body") {
                self.expected(&f, "a size of at least 1 byte");
            }
            return None;
        }
        if max_body > total {
            if let Some(f) = b.field("max_body").or_else(|| b.field("total")) {
                self.err(
                    f.span(),
                    &f.path,
                    format!(
                        "max_body ({}) is larger than total ({}): one body could never fit",
                        parse::format_size(max_body),
                        parse::format_size(total)
                    ),
                );
            }
            return None;
        }
        Some(RequestBuffering {
            max_body,
            total,
            over,
        })
    }

    /// `[upstreams.NAME.on_demand]`: `command` is required, every other key defaulted.
    /// `None` when `command` is missing or invalid (already reported).
    fn on_demand(&mut self, o: &Tbl<'d>) -> Option<OnDemand> {
        self.keys(
            o,
            &[
                "command",
                "env",
                "cwd",
                "ready_timeout",
                "idle_stop",
                "stop_timeout",
            ],
            &[],
        );
        let command = self.command(o);
        let mut env = Vec::new();
        if let Some(e) = self.table(o, "env") {
            let vars: Vec<String> = e.inner.iter().map(|(k, _)| k.to_owned()).collect();
            for var in vars {
                if var.is_empty() || var.contains(['=', '\0']) {
                    let span = e.inner.key(&var).and_then(|k| k.span());
                    self.err(
                        span,
                        &e.key_path(&var),
                        format!(
                            "invalid environment variable name {var:?}: it must not be empty \
                             or contain \"=\" or a NUL byte"
                        ),
                    );
                    continue;
                }
                if let Some(value) = self.parsed(&e, &var, "a string", no_nul) {
                    env.push((var, value));
                }
            }
        }
        // The config file's folder; "." for the embedded quickstart (no file).
        let base = match self.base.as_os_str().is_empty() {
            true => Path::new("."),
            false => self.base,
        };
        let cwd = self
            .parsed(o, "cwd", "a folder path", |s| match s {
                "" => Err(InvalidValue(
                    "expected a folder path, found an empty string".into(),
                )),
                s => no_nul(s).map(|s| base.join(s)),
            })
            .unwrap_or_else(|| base.to_path_buf());
        Some(OnDemand {
            env,
            cwd,
            ready_timeout: self
                .timeout(o, "ready_timeout")
                .unwrap_or(defaults::ON_DEMAND_READY_TIMEOUT),
            idle_stop: self
                .timeout(o, "idle_stop")
                .unwrap_or(defaults::ON_DEMAND_IDLE_STOP),
            stop_timeout: self
                .timeout(o, "stop_timeout")
                .unwrap_or(defaults::ON_DEMAND_STOP_TIMEOUT),
            command: command?,
        })
    }

    /// `on_demand.command`: an array of strings, the program first (no shell: a
    /// single string would leave open whether spaces split arguments).
    fn command(&mut self, o: &Tbl<'d>) -> Option<Vec<String>> {
        let what = r#"an array of strings like ["python3", "app.py"] (the program, then its arguments; no shell)"#;
        let Some(f) = o.field("command") else {
            self.missing(
                o,
                "command",
                r#"the program to start and its arguments, e.g. command = ["python3", "app.py"]"#,
            );
            return None;
        };
        let Some(array) = f.item.as_array() else {
            self.expected(&f, what);
            return None;
        };
        if array.is_empty() {
            self.err(
                f.span(),
                &f.path,
                "expected at least the program, found an empty array",
            );
            return None;
        }
        let mut argv = Vec::new();
        let mut ok = true;
        for (i, v) in array.iter().enumerate() {
            let path = format!("{}[{i}]", f.path);
            match v.as_str() {
                Some("") if i == 0 => {
                    self.err(
                        v.span(),
                        &path,
                        "expected the program, found an empty string",
                    );
                    ok = false;
                }
                Some(s) if s.contains('\0') => {
                    self.err(v.span(), &path, "must not contain a NUL byte");
                    ok = false;
                }
                Some(s) => argv.push(s.to_owned()),
                None => {
                    self.err(
                        v.span(),
                        &path,
                        format!("expected a string, found {}", describe_value(v)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(argv)
    }

    /// `[upstreams.NAME.health]`: present means active checks, every key defaulted.
    fn health(&mut self, h: &Tbl<'d>) -> Health {
        self.keys(h, &["path", "interval", "timeout", "rise", "fall"], &[]);
        // A `timeout` longer than `interval` is allowed and not reported.
        Health {
            path: self.parsed(h, "path", "a path like \"/health\"", parse::health_path),
            interval: self
                .timeout(h, "interval")
                .unwrap_or(defaults::HEALTH_INTERVAL),
            timeout: self
                .timeout(h, "timeout")
                .unwrap_or(defaults::HEALTH_TIMEOUT),
            rise: self.count(h, "rise").unwrap_or(defaults::HEALTH_RISE),
            fall: self.count(h, "fall").unwrap_or(defaults::HEALTH_FALL),
        }
    }

    /// `[upstreams.NAME.passive]`: every key defaulted.
    fn passive(&mut self, p: &Tbl<'d>) -> Passive {
        self.keys(
            p,
            &["max_fails", "cooldown", "statuses", "max_ejected_percent"],
            &[],
        );
        let max_fails = self
            .uint(p, "max_fails", 0)
            .map(|n| match u32::try_from(n) {
                Ok(n) => n,
                Err(_) => {
                    if let Some(f) = p.field("max_fails") {
                        self.expected(&f, &format!("a whole number from 0 to {}", u32::MAX));
                    }
                    defaults::PASSIVE_FAILS
                }
            });
        Passive {
            max_fails: max_fails.unwrap_or(defaults::PASSIVE_FAILS),
            cooldown: self
                .timeout(p, "cooldown")
                .unwrap_or(defaults::PASSIVE_COOLDOWN),
            statuses: self
                .statuses(p, "statuses")
                .unwrap_or_else(|| defaults::PASSIVE_STATUSES.to_vec()),
        }
    }

    /// An array of response statuses from 400 to 599 (may be empty), sorted, no repeats.
    fn statuses(&mut self, t: &Tbl<'d>, key: &str) -> Option<Vec<u16>> {
        let f = t.field(key)?;
        let what = "a response status from 400 to 599";
        let Some(array) = f.item.as_array() else {
            self.expected(&f, "an array of statuses like [502, 503, 504]");
            return None;
        };
        let mut out = Vec::new();
        for (i, v) in array.iter().enumerate() {
            match v.as_integer().and_then(|n| u16::try_from(n).ok()) {
                Some(n) if (400..=599).contains(&n) => out.push(n),
                _ => self.err(
                    v.span(),
                    &format!("{}[{i}]", f.path),
                    format!("expected {what}, found {}", describe_value(v)),
                ),
            }
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    fn listener(
        &mut self,
        name: String,
        t: &Tbl<'d>,
        upstreams: &[&str],
        seen: &mut Vec<Seen>,
    ) -> Listener {
        self.keys(
            t,
            &[
                "listen",
                "protocol",
                "upstream",
                "header_timeout",
                "idle_timeout",
                "max_connections",
                "max_header_size",
                "tcp_keepalive",
                "routes",
                "underscores_in_headers",
                "half_close",
                "tls",
                "tls_passthrough",
                "h2",
            ],
            &[],
        );
        let base = self.base;
        let listen = self.string_list(t, "listen", ("an address", "addresses"), |s| {
            parse::listen_addr(s, base)
        });
        if listen.is_none() {
            self.missing(
                t,
                "listen",
                r#"a listener needs at least one address, e.g. listen = ["127.0.0.1:8080"]"#,
            );
        }
        let listen = listen.unwrap_or_default();
        for (addr, path, span) in &listen {
            self.check_listened_once(addr, path, span, seen);
        }

        // `None` when `protocol` is invalid: then the keys that belong to one protocol
        // are still checked, but neither protocol's rules about which keys it needs or
        // refuses apply (they would only repeat the mistake).
        let protocol = match t.field("protocol") {
            None => Some(Protocol::Http),
            Some(f) => match self.string(&f, r#""http" or "tcp""#) {
                Some("http") => Some(Protocol::Http),
                Some("tcp") => Some(Protocol::Tcp),
                Some(_) => {
                    self.expected(&f, r#""http" or "tcp""#);
                    None
                }
                None => None,
            },
        };
        let tcp = protocol == Some(Protocol::Tcp);

        // Keys of one protocol on a listener of the other.
        let wrong_protocol: &[(&str, &str)] = match protocol {
            Some(Protocol::Tcp) => &[
                (
                    "routes",
                    "a TCP listener has no routes: it forwards every connection to its \
                     `upstream`",
                ),
                (
                    "header_timeout",
                    "a TCP listener reads no request head (`idle_timeout` bounds a silent \
                     connection)",
                ),
                ("max_header_size", "a TCP listener reads no request head"),
                (
                    "underscores_in_headers",
                    "a TCP listener reads no request head",
                ),
                (
                    "half_close",
                    "a TCP listener always passes a half-close on to the upstream",
                ),
                ("h2", "a TCP listener speaks no HTTP/2"),
            ],
            _ => &[],
        };
        for (key, why) in wrong_protocol {
            if let Some(f) = t.field(key) {
                self.err(
                    f.key_span.clone(),
                    &f.path,
                    format!(r#"only for HTTP listeners (protocol = "http"); {why}"#),
                );
            }
        }
        let checked = |key: &str| !wrong_protocol.iter().any(|(k, _)| *k == key);

        let upstream = match t.field("upstream") {
            Some(f) if protocol == Some(Protocol::Http) => {
                self.err(
                    f.key_span.clone(),
                    &f.path,
                    format!(
                        r#"only for TCP listeners (protocol = "tcp"); an HTTP listener sends requests to upstreams through its routes: [[{}.routes]] with upstream = "NAME""#,
                        t.path
                    ),
                );
                None
            }
            Some(f) => self.tcp_upstream_ref(&f, upstreams),
            None if tcp => {
                let defined = match upstreams {
                    [] => ", with an [upstreams.NAME] table".to_owned(),
                    _ => format!(" (defined: {})", upstreams.join(", ")),
                };
                self.missing(
                    t,
                    "upstream",
                    &format!(
                        r#"a TCP listener forwards every connection to one upstream: upstream = "NAME"{defined}"#
                    ),
                );
                None
            }
            None => None,
        };

        let max_header_size = if checked("max_header_size") {
            self.size(t, "max_header_size")
        } else {
            None
        };
        if let Some(n) = max_header_size.filter(|n| *n < defaults::MIN_HEADER_SIZE) {
            if let Some(f) = t.field("max_header_size") {
                self.err(
                    f.span(),
                    &f.path,
                    format!(
                        "must be at least {} ({} bytes): hyper cannot read a request head \
                         with a smaller buffer; found {} ({n} bytes)",
                        parse::format_size(defaults::MIN_HEADER_SIZE),
                        defaults::MIN_HEADER_SIZE,
                        describe(f.item),
                    ),
                );
            }
        }
        let header_timeout = if checked("header_timeout") {
            self.timeout(t, "header_timeout")
        } else {
            None
        };

        let mut routes = Vec::new();
        match t.field("routes") {
            Some(_) if !checked("routes") => {}
            Some(f) => {
                let tables = self.tables(&f);
                let built: Vec<_> = tables
                    .iter()
                    .map(|r| (self.route(r, upstreams), r.span.clone(), r.path.clone()))
                    .collect();
                // (host as written, path, where) of each route so far.
                let mut placed: Vec<(String, &str, Span)> = Vec::new();
                for (route, span, path) in &built {
                    let Some(route) = route else { continue };
                    let host = route.host.as_ref().map(host_text).unwrap_or_default();
                    if let Some((.., first)) = placed
                        .iter()
                        .find(|(h, p, _)| *h == host && *p == route.path)
                    {
                        let at = self.sink.place(first.clone());
                        let shown = match host.as_str() {
                            "" => "any host".to_owned(),
                            h => format!("host {h:?}"),
                        };
                        self.err(
                            span.clone(),
                            path,
                            format!(
                                "a second route for {shown} and path {:?} would never match \
                                 (the first is at {at})",
                                route.path
                            ),
                        );
                    }
                    placed.push((host, &route.path, span.clone()));
                }
                routes = built.into_iter().filter_map(|(r, ..)| r).collect();
                if tables.is_empty() && f.item.as_array().is_some_and(|a| a.is_empty()) {
                    self.err(
                        f.span(),
                        &f.path,
                        "an HTTP listener needs at least one route",
                    );
                }
            }
            None if protocol == Some(Protocol::Http) => self.missing(
                t,
                "routes",
                "an HTTP listener needs at least one [[listeners.NAME.routes]] table",
            ),
            None => {}
        }

        let half_close = if checked("half_close") {
            self.flag(t, "half_close")
        } else {
            None
        };

        let tls = self
            .table(t, "tls")
            .and_then(|tls| self.tls(&tls, protocol != Some(Protocol::Tcp)));
        let h2 = match checked("h2").then(|| self.table(t, "h2")).flatten() {
            Some(h2) => self.h2(&h2),
            None => H2::default(),
        };
        let tls_passthrough = match t.field("tls_passthrough") {
            None => None,
            Some(f) if protocol == Some(Protocol::Http) => {
                self.err(
                    f.key_span.clone(),
                    &f.path,
                    r#"only for TCP listeners (protocol = "tcp"); an HTTP listener reads requests, so it must terminate TLS: tls = { certificates = [...] }"#,
                );
                None
            }
            Some(f) if t.field("tls").is_some() => {
                self.err(
                    f.key_span.clone(),
                    &f.path,
                    "tls_passthrough relays TLS untouched and tls terminates it: a listener has one or the other",
                );
                None
            }
            Some(_) => self
                .table(t, "tls_passthrough")
                .and_then(|p| self.tls_passthrough(&p, upstreams)),
        };

        let idle_default = if tcp {
            defaults::TCP_IDLE_TIMEOUT
        } else {
            defaults::HTTP_IDLE_TIMEOUT
        };
        Listener {
            name,
            listen: listen.into_iter().map(|(a, ..)| a).collect(),
            protocol: protocol.unwrap_or(Protocol::Http),
            upstream,
            header_timeout: header_timeout.unwrap_or(defaults::HEADER_TIMEOUT),
            idle_timeout: self.timeout(t, "idle_timeout").unwrap_or(idle_default),
            max_connections: self
                .uint(t, "max_connections", 1)
                .unwrap_or(defaults::MAX_CONNECTIONS),
            max_header_size: max_header_size.unwrap_or(defaults::MAX_HEADER_SIZE),
            tcp_keepalive: self
                .tcp_keepalive(t)
                .unwrap_or(Some(defaults::TCP_KEEPALIVE)),
            underscores_in_headers: if checked("underscores_in_headers") {
                self.boolean(t, "underscores_in_headers")
            } else {
                None
            }
            .unwrap_or(defaults::UNDERSCORES_IN_HEADERS),
            routes,
            half_close: half_close.unwrap_or(defaults::HALF_CLOSE),
            tls,
            tls_passthrough,
            h2,
        }
    }

    /// A listener's `h2` table: HTTP/2 limits, each checked against what the protocol
    /// (and hyper) can take; a key in error keeps its default (the error is reported).
    fn h2(&mut self, t: &Tbl<'d>) -> H2 {
        self.keys(
            t,
            &[
                "max_concurrent_streams",
                "max_streams_total",
                "initial_stream_window",
                "initial_connection_window",
                "max_send_buffer",
                "max_pending_accept_reset_streams",
                "max_local_error_reset_streams",
                "keepalive_interval",
                "keepalive_timeout",
            ],
            &[],
        );
        let mut h2 = H2::default();
        if let Some(n) = self.count(t, "max_concurrent_streams") {
            h2.max_concurrent_streams = n;
        }
        if let Some(n) = self.count(t, "max_streams_total") {
            h2.max_streams_total = n;
        }
        let window = |cx: &mut Self, key: &str, min: u32| -> Option<u32> {
            let n = cx.size(t, key)?;
            match u32::try_from(n) {
                Ok(n) if (min..=defaults::H2_MAX_WINDOW).contains(&n) => Some(n),
                _ => {
                    let f = t.field(key)?;
                    cx.err(
                        f.span(),
                        &f.path,
                        format!(
                            "must be from {min} to {} bytes (RFC 9113 §6.9), found {}",
                            defaults::H2_MAX_WINDOW,
                            describe(f.item)
                        ),
                    );
                    None
                }
            }
        };
        if let Some(n) = window(self, "initial_stream_window", 1) {
            h2.initial_stream_window = n;
        }
        if let Some(n) = window(
            self,
            "initial_connection_window",
            defaults::H2_MIN_CONNECTION_WINDOW,
        ) {
            h2.initial_connection_window = n;
        }
        // The h2 crate refuses (panics on) a send buffer over u32::MAX.
        if let Some(n) = window(self, "max_send_buffer", 1) {
            h2.max_send_buffer = n;
        }
        if let Some(n) = self.uint(t, "max_pending_accept_reset_streams", 1) {
            h2.max_pending_accept_reset_streams = n;
        }
        if let Some(n) = self.uint(t, "max_local_error_reset_streams", 1) {
            h2.max_local_error_reset_streams = n;
        }
        if let Some(d) = self.duration_or_off(t, "keepalive_interval") {
            h2.keepalive_interval = d;
        }
        if let Some(d) = self.timeout(t, "keepalive_timeout") {
            h2.keepalive_timeout = d;
        }
        h2
    }

    /// A TCP listener's `tls_passthrough` table. `None` after an error.
    fn tls_passthrough(&mut self, t: &Tbl<'d>, upstreams: &[&str]) -> Option<TlsPassthrough> {
        self.keys(t, &["routes", "hello_timeout"], &[]);
        let hello_timeout = self
            .timeout(t, "hello_timeout")
            .unwrap_or(defaults::TLS_HELLO_TIMEOUT);
        let mut routes = Vec::new();
        let mut failed = false;
        let mut placed: Vec<(HostMatch, Span)> = Vec::new();
        if let Some(f) = t.field("routes") {
            for r in self.tables(&f) {
                self.keys(&r, &["sni", "upstream"], &[]);
                let sni = self.parsed(&r, "sni", "a server name", parse::host_match);
                if r.field("sni").is_none() {
                    self.missing(&r, "sni", r#"a route names the SNI name it takes: sni = "a.example.com" (or "*.example.com")"#);
                }
                let upstream = match r.field("upstream") {
                    Some(f) => self.tcp_upstream_ref(&f, upstreams),
                    None => {
                        self.missing(
                            &r,
                            "upstream",
                            r#"a route names where its connections go: upstream = "NAME""#,
                        );
                        None
                    }
                };
                let (Some(sni), Some(upstream)) = (sni, upstream) else {
                    failed = true;
                    continue;
                };
                if let Some((_, first)) = placed.iter().find(|(h, _)| *h == sni) {
                    let at = self.sink.place(first.clone());
                    self.err(
                        r.span.clone(),
                        &r.path,
                        format!(
                            "a second route for {:?} would never match (the first is at {at})",
                            host_text(&sni)
                        ),
                    );
                    failed = true;
                    continue;
                }
                placed.push((sni.clone(), r.span.clone()));
                routes.push(SniRoute { sni, upstream });
            }
        }
        (!failed).then_some(TlsPassthrough {
            routes,
            hello_timeout,
        })
    }

    /// A listener's `tls` table; `http` says whether ALPN applies. `None` after an error.
    fn tls(&mut self, t: &Tbl<'d>, http: bool) -> Option<Tls> {
        self.keys(
            t,
            &["certificates", "min_version", "handshake_timeout", "alpn"],
            &[],
        );
        let min_version = self
            .choice(
                t,
                "min_version",
                &[("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)],
            )
            .unwrap_or(defaults::TLS_MIN_VERSION);
        let handshake_timeout = self
            .timeout(t, "handshake_timeout")
            .unwrap_or(defaults::TLS_HANDSHAKE_TIMEOUT);
        let mut alpn = if http {
            defaults::HTTP_ALPN
                .iter()
                .map(|p| (*p).to_owned())
                .collect()
        } else {
            Vec::new()
        };
        if let Some(f) = t.field("alpn") {
            if !http {
                self.err(
                    f.key_span.clone(),
                    &f.path,
                    r#"only for HTTP listeners (protocol = "http"); a TCP listener offers no application protocol"#,
                );
            } else if let Some(list) = self.alpn(&f) {
                alpn = list;
            }
        }
        let Some(f) = t.field("certificates") else {
            self.missing(
                t,
                "certificates",
                r#"a TLS listener needs at least one certificate: certificates = [ { cert = "certs/a.pem", key = "certs/a.key" } ]"#,
            );
            return None;
        };
        let tables = self.tables(&f);
        if tables.is_empty() && f.item.as_array().is_some_and(|a| a.is_empty()) {
            self.err(
                f.span(),
                &f.path,
                "a TLS listener needs at least one certificate",
            );
        }
        let now = std::time::SystemTime::now();
        let mut certificates = Vec::new();
        let mut failed = false;
        for c in &tables {
            self.keys(c, &["cert", "key"], &[]);
            let file = |cx: &mut Self, key: &str| -> Option<(String, PathBuf, Span, String)> {
                let Some(f) = c.field(key) else {
                    cx.missing(c, key, "a certificate needs both: { cert = \"certs/a.pem\", key = \"certs/a.key\" }");
                    return None;
                };
                let s = cx.string(&f, "a file path")?;
                if s.is_empty() {
                    cx.err(
                        f.span(),
                        &f.path,
                        "expected a file path, found an empty string",
                    );
                    return None;
                }
                Some((s.to_owned(), cx.base.join(s), f.span(), f.path))
            };
            let cert = file(self, "cert");
            let key = file(self, "key");
            let (Some(cert), Some(key)) = (cert, key) else {
                failed = true;
                continue;
            };
            match crate::tls::load(&cert.1, &key.1, (&cert.0, &key.0), now) {
                Ok(loaded) => {
                    let left = loaded.seconds_left(now);
                    if left
                        < i64::try_from(crate::tls::EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX)
                    {
                        self.sink.warn(
                            cert.2.clone(),
                            &cert.3,
                            format!(
                                "the certificate in {} expires at {} (in {} day(s))",
                                cert.0,
                                loaded.not_after_text(),
                                left / 86_400
                            ),
                        );
                    }
                    // The first certificate that matches a client's name is served: one
                    // whose every name an earlier one already covers never is.
                    let covered = |n: &String| {
                        certificates.iter().any(|c: &crate::tls::Certificate| {
                            c.names.iter().any(|m| {
                                m == n || (!n.starts_with("*.") && crate::tls::name_matches(m, n))
                            })
                        })
                    };
                    if !loaded.names.is_empty() && loaded.names.iter().all(covered) {
                        self.sink.warn(
                            cert.2.clone(),
                            &cert.3,
                            format!(
                                "the certificate in {} is never served: an earlier certificate covers every name it has ({}); the first that matches a client's name is used",
                                cert.0,
                                loaded.names.join(", ")
                            ),
                        );
                    }
                    certificates.push(loaded);
                }
                Err(e) => {
                    failed = true;
                    let (span, path) = match e.part {
                        crate::tls::Part::Cert => (cert.2, cert.3),
                        crate::tls::Part::Key => (key.2, key.3),
                    };
                    self.err(span, &path, e.message);
                }
            }
        }
        if failed || certificates.is_empty() {
            return None;
        }
        Some(Tls {
            certificates,
            min_version,
            handshake_timeout,
            alpn,
        })
    }

    /// `alpn = ["h2", "http/1.1"]`: the protocols a TLS listener offers, in order.
    fn alpn(&mut self, f: &Field<'d>) -> Option<Vec<String>> {
        let Some(array) = f.item.as_array() else {
            self.expected(f, r#"an array of protocol names, e.g. ["http/1.1"]"#);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, v) in array.iter().enumerate() {
            let path = format!("{}[{i}]", f.path);
            match v.as_str() {
                Some(p @ ("http/1.1" | "h2")) if out.iter().any(|o| o == p) => {
                    ok = false;
                    self.err(v.span(), &path, format!("{p:?} is listed twice"));
                }
                Some(p @ ("http/1.1" | "h2")) => out.push(p.to_owned()),
                _ => {
                    ok = false;
                    self.err(
                        v.span(),
                        &path,
                        format!(
                            r#"expected "h2" or "http/1.1", found {}"#,
                            describe_value(v)
                        ),
                    );
                }
            }
        }
        if ok && out.is_empty() {
            self.err(
                f.span(),
                &f.path,
                r#"a TLS listener offers at least one protocol: ["h2", "http/1.1"]"#,
            );
            return None;
        }
        ok.then_some(out)
    }

    /// `true` or `false`.
    fn boolean(&mut self, t: &Tbl<'d>, key: &str) -> Option<bool> {
        let f = t.field(key)?;
        let b = f.item.as_bool();
        if b.is_none() {
            self.expected(&f, "true or false");
        }
        b
    }

    /// A route's `upgrades` and `forward_normalized`, which only a route with
    /// `upstream` takes (`proxies`).
    fn route_forwarding(&mut self, t: &Tbl<'d>, proxies: bool) -> (Vec<String>, bool) {
        let mut upgrades: Vec<String> = defaults::ROUTE_UPGRADES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if !proxies {
            for key in ["upgrades", "forward_normalized"] {
                if let Some(f) = t.field(key) {
                    self.err(
                        f.key_span.clone(),
                        &f.path,
                        "only for routes with `upstream`: a `respond` route answers itself",
                    );
                }
            }
            return (upgrades, defaults::FORWARD_NORMALIZED);
        }
        if let Some(f) = t.field("upgrades") {
            match f.item.as_array() {
                None => self.expected(&f, r#"an array of protocol names, e.g. ["websocket"]"#),
                Some(array) => {
                    upgrades.clear();
                    for (i, v) in array.iter().enumerate() {
                        let path = format!("{}[{i}]", f.path);
                        match v.as_str().map(parse::upgrade_token) {
                            Some(Ok(token)) => {
                                if !upgrades.contains(&token) {
                                    upgrades.push(token);
                                }
                            }
                            Some(Err(e)) => self.err(v.span(), &path, e.0),
                            None => self.err(
                                v.span(),
                                &path,
                                format!("expected a protocol name, found {}", describe_value(v)),
                            ),
                        }
                    }
                }
            }
        }
        let forward_normalized = self
            .boolean(t, "forward_normalized")
            .unwrap_or(defaults::FORWARD_NORMALIZED);
        (upgrades, forward_normalized)
    }

    /// A route, or `None` when it has no valid action.
    fn route(&mut self, t: &Tbl<'d>, upstreams: &[&str]) -> Option<Route> {
        self.keys(
            t,
            &[
                "host",
                "path",
                "upstream",
                "respond",
                "upgrades",
                "forward_normalized",
                "require_length",
            ],
            &[],
        );
        let host = self.parsed(t, "host", "a host name", parse::host_match);
        let path = self.parsed(t, "path", "a path prefix", parse::route_path);
        // A path given but refused: the route is left out rather than taken for `/`
        // (which would only add a "second route" error to the real one).
        let path_refused = path.is_none() && t.field("path").is_some();
        let path = path.unwrap_or_else(|| defaults::ROUTE_PATH.to_owned());

        let upstream = t.field("upstream");
        let respond = t.field("respond");
        let action = match (upstream, respond) {
            (Some(_), Some(r)) => {
                self.err(
                    r.key_span.clone(),
                    &r.path,
                    "a route either proxies (upstream) or responds (respond), not both",
                );
                None
            }
            (Some(u), None) => self.upstream_ref(&u, upstreams).map(RouteAction::Upstream),
            (None, Some(_)) => {
                let r = self.table(t, "respond")?;
                self.keys(&r, &["status", "body"], &[]);
                let status = match r.field("status") {
                    Some(f) => match f.item.as_integer().and_then(|n| u16::try_from(n).ok()) {
                        Some(s @ 200..=599) => Some(s),
                        _ => {
                            self.expected(&f, "an HTTP status from 200 to 599");
                            None
                        }
                    },
                    None => {
                        self.missing(
                            &r,
                            "status",
                            "e.g. respond = { status = 200, body = \"ok\\n\" }",
                        );
                        None
                    }
                };
                let body = match r.field("body") {
                    Some(f) => self.string(&f, "a string")?.to_owned(),
                    None => String::new(),
                };
                status.map(|status| RouteAction::Respond { status, body })
            }
            (None, None) => {
                self.err(
                    t.span.clone(),
                    &t.path,
                    r#"a route needs `upstream = "NAME"` or `respond = { status = 200, body = "..." }`"#,
                );
                None
            }
        };
        let (upgrades, forward_normalized) =
            self.route_forwarding(t, t.field("upstream").is_some());
        let require_length = self.flag(t, "require_length");
        if let (Some(true), Some(RouteAction::Respond { .. })) = (require_length, &action) {
            if let Some(f) = t.field("require_length") {
                self.err(
                    f.key_span.clone(),
                    &f.path,
                    "only for routes with `upstream`: a `respond` route reads no request body",
                );
            }
        }
        if path_refused {
            return None;
        }
        Some(Route {
            host,
            path,
            action: action?,
            upgrades,
            forward_normalized,
            require_length: require_length.unwrap_or(defaults::REQUIRE_LENGTH),
        })
    }

    /// Records `addr` as listened on, or reports the place that already listens on it.
    fn check_listened_once(
        &mut self,
        addr: &ListenAddr,
        path: &str,
        span: &Span,
        seen: &mut Vec<Seen>,
    ) {
        if let Some(other) = seen.iter().find(|s| overlaps(&s.addr, addr)) {
            let at = format!("{} ({})", other.path, self.sink.place(other.span.clone()));
            // Two Unix sockets overlap only on the same path (their modes may differ).
            let same = other.addr == *addr
                || matches!(
                    (&other.addr, addr),
                    (ListenAddr::Unix(_), ListenAddr::Unix(_))
                );
            let message = if same {
                format!("{addr} is listened on twice: also at {at}")
            } else {
                format!(
                    "{addr} overlaps {} at {at}: a wildcard address takes the port on every \
                     address of its family",
                    other.addr
                )
            };
            self.err(span.clone(), path, message);
            return;
        }
        seen.push(Seen {
            addr: addr.clone(),
            path: path.to_owned(),
            span: span.clone(),
        });
    }
}

/// A string the OS can take as an argument, variable or path.
fn no_nul(s: &str) -> Result<String, InvalidValue> {
    match s.contains('\0') {
        true => Err(InvalidValue("must not contain a NUL byte".into())),
        false => Ok(s.to_owned()),
    }
}

fn host_text(h: &HostMatch) -> String {
    match h {
        HostMatch::Exact(h) => h.clone(),
        HostMatch::Suffix(s) => format!("*{s}"),
    }
}

/// Whether binding both would fail: the same Unix path, or TCP addresses of one family
/// on the same port (not 0) where the IPs are equal or one is the wildcard; or the same
/// passed-in socket (`systemd:NAME`, `fd:N`). Whether `fd:3` is one of `systemd:web`'s
/// sockets is known only at startup, from the environment: the binary then leaves it
/// to `fd:3`. IPv6
/// listeners are `IPV6_V6ONLY`, so `[::]:80` and `0.0.0.0:80` do not overlap.
fn overlaps(a: &ListenAddr, b: &ListenAddr) -> bool {
    match (a, b) {
        (ListenAddr::Tcp(x), ListenAddr::Tcp(y)) => {
            x.port() != 0
                && x.port() == y.port()
                && x.is_ipv4() == y.is_ipv4()
                && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        (ListenAddr::Unix(x), ListenAddr::Unix(y)) => x.path == y.path,
        // One name is every socket of that name: two listeners cannot share them.
        (ListenAddr::Systemd(x), ListenAddr::Systemd(y)) => x == y,
        (ListenAddr::Fd(x), ListenAddr::Fd(y)) => x == y,
        _ => false,
    }
}
