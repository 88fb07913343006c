//! `docs/config.md` and `defaults.rs` stay in step: every constant in `defaults.rs` is
//! listed in the reference, written the way a config file writes it, and the written
//! value parses back (with the config's own parsers) to the constant.

use std::path::PathBuf;
use std::time::Duration;

use tidegate_config::defaults::*;
use tidegate_config::parse;

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines under the heading that starts with `heading`, up to the next heading.
fn section<'d>(docs: &'d str, heading: &str) -> Vec<&'d str> {
    let mut lines = docs.lines().skip_while(|l| !l.starts_with(heading));
    assert!(
        lines.next().is_some(),
        "docs/config.md has no heading {heading:?}"
    );
    lines.take_while(|l| !l.starts_with('#')).collect()
}

/// The cells of the table row whose first cell contains `key`.
fn row(docs: &str, heading: &str, key: &str) -> Vec<String> {
    section(docs, heading)
        .into_iter()
        .find(|l| l.split('|').nth(1).is_some_and(|c| c.contains(key)))
        .unwrap_or_else(|| panic!("no row for {key} under {heading:?}"))
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

/// The first `code` span of a cell, as a TOML value.
fn written(cell: &str) -> toml_edit::Value {
    let code = cell
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no `value` in {cell:?}"));
    code.parse()
        .unwrap_or_else(|e| panic!("{code:?} is not a TOML value: {e}"))
}

fn written_duration(cell: &str) -> Duration {
    let v = written(cell);
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{cell:?}: a duration is a string"));
    parse::duration(s).unwrap_or_else(|e| panic!("{cell:?}: {e}"))
}

enum Doc {
    /// The `default` column of the key's row (column 3) holds this duration.
    Duration(&'static str, &'static str, Duration),
    /// The `default` column holds this value (a size, whole number or string).
    Value(&'static str, &'static str, Written),
    /// The key's row mentions this text.
    Mention(&'static str, &'static str, String),
}

enum Written {
    Size(usize),
    Int(i64),
    Str(&'static str),
}

const SERVER: &str = "## `[server]`";
const ADMIN: &str = "## `[admin]`";
const LISTENER: &str = "## `[listeners.NAME]`";
const ROUTE: &str = "### `[[listeners.NAME.routes]]`";
const TLS: &str = "### TLS (`tls`)";
const PASSTHROUGH: &str = "### TLS passthrough (`tls_passthrough`)";
const TCP_LISTENER: &str = "### TCP listeners (`protocol = \"tcp\"`)";
const UPSTREAM: &str = "## `[upstreams.NAME]`";
const HEALTH: &str = "### `[upstreams.NAME.health]`";
const PASSIVE: &str = "### `[upstreams.NAME.passive]`";
const ON_DEMAND: &str = "### `[upstreams.NAME.on_demand]`";
const PANIC: &str = "### Panic mode and the ejection cap";
const BUFFERING: &str = "### `[upstreams.NAME.request_buffering]`";
const H2: &str = "### HTTP/2 (`h2`)";
const TIMERS: &str = "## Timers";
const LIMITS: &str = "## Limits";

/// A list of strings as TOML writes it: `["a", "b"]`.
fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Where each constant of `defaults.rs` is documented.
fn documented() -> Vec<(&'static str, Doc)> {
    use Doc::*;
    let secs = |d: std::time::Duration| format!("`{}s`", d.as_secs());
    vec![
        (
            "SHUTDOWN_GRACE",
            Duration(SERVER, "`shutdown_grace`", SHUTDOWN_GRACE),
        ),
        (
            "WORKERS",
            Value(SERVER, "`workers`", Written::Int(WORKERS as i64)),
        ),
        (
            "LOG_LEVEL",
            Value(SERVER, "`log.level`", Written::Str(LOG_LEVEL.as_str())),
        ),
        (
            "LOG_FORMAT",
            Value(SERVER, "`log.format`", Written::Str(LOG_FORMAT.as_str())),
        ),
        (
            "ACCESS_LOG_TO",
            Value(
                SERVER,
                "`access_log.to`",
                Written::Str(match ACCESS_LOG_TO {
                    tidegate_config::AccessLogTo::Off => "off",
                    _ => "not off",
                }),
            ),
        ),
        (
            "ACCESS_LOG_FORMAT",
            Value(
                SERVER,
                "`access_log.format`",
                Written::Str(ACCESS_LOG_FORMAT.as_str()),
            ),
        ),
        (
            "ADMIN_MAX_CONNECTIONS",
            Value(
                ADMIN,
                "`max_connections`",
                Written::Int(ADMIN_MAX_CONNECTIONS as i64),
            ),
        ),
        (
            "ADMIN_IDLE_TIMEOUT",
            Duration(ADMIN, "`idle_timeout`", ADMIN_IDLE_TIMEOUT),
        ),
        (
            "ADMIN_SOCKET_MODE",
            Mention(
                ADMIN,
                "`listen`",
                format!("mode `{:04o}`", ADMIN_SOCKET_MODE),
            ),
        ),
        (
            "HEADER_TIMEOUT",
            Duration(LISTENER, "`header_timeout`", HEADER_TIMEOUT),
        ),
        (
            "HTTP_IDLE_TIMEOUT",
            Duration(LISTENER, "`idle_timeout`", HTTP_IDLE_TIMEOUT),
        ),
        (
            "MAX_CONNECTIONS",
            Value(
                LISTENER,
                "`max_connections`",
                Written::Int(MAX_CONNECTIONS as i64),
            ),
        ),
        (
            "MAX_HEADER_SIZE",
            Value(
                LISTENER,
                "`max_header_size`",
                Written::Size(MAX_HEADER_SIZE),
            ),
        ),
        (
            "MIN_HEADER_SIZE",
            Mention(
                LISTENER,
                "`max_header_size`",
                format!("`\"{}\"`", parse::format_size(MIN_HEADER_SIZE)),
            ),
        ),
        (
            "TCP_KEEPALIVE",
            Duration(LISTENER, "`tcp_keepalive`", TCP_KEEPALIVE),
        ),
        (
            "TLS_MIN_VERSION",
            Value(
                TLS,
                "`min_version`",
                Written::Str(match TLS_MIN_VERSION {
                    tidegate_config::TlsVersion::V1_2 => "1.2",
                    tidegate_config::TlsVersion::V1_3 => "1.3",
                }),
            ),
        ),
        (
            "TLS_HELLO_TIMEOUT",
            Duration(PASSTHROUGH, "`hello_timeout`", TLS_HELLO_TIMEOUT),
        ),
        (
            "TLS_HANDSHAKE_TIMEOUT",
            Duration(TLS, "`handshake_timeout`", TLS_HANDSHAKE_TIMEOUT),
        ),
        (
            "HTTP_ALPN",
            Mention(TLS, "`alpn`", format!("`{}`", toml_list(HTTP_ALPN))),
        ),
        (
            "H2_MAX_CONCURRENT_STREAMS",
            Value(
                H2,
                "`max_concurrent_streams`",
                Written::Int(i64::from(H2_MAX_CONCURRENT_STREAMS)),
            ),
        ),
        (
            "H2_INITIAL_STREAM_WINDOW",
            Value(
                H2,
                "`initial_stream_window`",
                Written::Size(H2_INITIAL_STREAM_WINDOW as usize),
            ),
        ),
        (
            "H2_INITIAL_CONNECTION_WINDOW",
            Value(
                H2,
                "`initial_connection_window`",
                Written::Size(H2_INITIAL_CONNECTION_WINDOW as usize),
            ),
        ),
        (
            "H2_MAX_STREAMS_TOTAL",
            Value(
                H2,
                "`max_streams_total`",
                Written::Int(H2_MAX_STREAMS_TOTAL as i64),
            ),
        ),
        (
            "H2_MAX_SEND_BUFFER",
            Value(H2, "`max_send_buffer`", Written::Size(H2_MAX_SEND_BUFFER)),
        ),
        (
            "H2_MAX_PENDING_ACCEPT_RESET_STREAMS",
            Value(
                H2,
                "`max_pending_accept_reset_streams`",
                Written::Int(H2_MAX_PENDING_ACCEPT_RESET_STREAMS as i64),
            ),
        ),
        (
            "H2_MAX_LOCAL_ERROR_RESET_STREAMS",
            Value(
                H2,
                "`max_local_error_reset_streams`",
                Written::Int(H2_MAX_LOCAL_ERROR_RESET_STREAMS as i64),
            ),
        ),
        (
            "H2_KEEPALIVE_INTERVAL",
            Duration(H2, "`keepalive_interval`", H2_KEEPALIVE_INTERVAL),
        ),
        (
            "H2_KEEPALIVE_TIMEOUT",
            Duration(H2, "`keepalive_timeout`", H2_KEEPALIVE_TIMEOUT),
        ),
        (
            "H2_MAX_WINDOW",
            Mention(
                LIMITS,
                "`h2.initial_stream_window`",
                format!("`{H2_MAX_WINDOW}`"),
            ),
        ),
        (
            "H2_MIN_CONNECTION_WINDOW",
            Mention(
                LIMITS,
                "`h2.initial_stream_window`",
                format!("`{H2_MIN_CONNECTION_WINDOW}`"),
            ),
        ),
        (
            "HALF_CLOSE",
            Mention(LISTENER, "`half_close`", format!("`{HALF_CLOSE}`")),
        ),
        (
            "REQUIRE_LENGTH",
            Mention(ROUTE, "`require_length`", format!("`{REQUIRE_LENGTH}`")),
        ),
        (
            "TCP_KEEPALIVE_INTERVAL",
            Mention(LISTENER, "`tcp_keepalive`", secs(TCP_KEEPALIVE_INTERVAL)),
        ),
        (
            "TCP_KEEPALIVE_PROBES",
            Mention(
                LISTENER,
                "`tcp_keepalive`",
                format!("`{TCP_KEEPALIVE_PROBES} probes`"),
            ),
        ),
        (
            "MAX_TCP_KEEPALIVE",
            Mention(
                LISTENER,
                "`tcp_keepalive`",
                format!("`\"{}s\"`", MAX_TCP_KEEPALIVE.as_secs()),
            ),
        ),
        (
            "UNDERSCORES_IN_HEADERS",
            Mention(
                LISTENER,
                "`underscores_in_headers`",
                format!("`{UNDERSCORES_IN_HEADERS}`"),
            ),
        ),
        (
            "ROUTE_UPGRADES",
            Mention(ROUTE, "`upgrades`", format!("`{ROUTE_UPGRADES:?}`")),
        ),
        (
            "FORWARD_NORMALIZED",
            Mention(
                ROUTE,
                "`forward_normalized`",
                format!("`{FORWARD_NORMALIZED}`"),
            ),
        ),
        (
            "TCP_IDLE_TIMEOUT",
            Duration(TCP_LISTENER, "`idle_timeout`", TCP_IDLE_TIMEOUT),
        ),
        (
            "ROUTE_PATH",
            Value(ROUTE, "`path`", Written::Str(ROUTE_PATH)),
        ),
        (
            "BALANCE",
            Value(UPSTREAM, "`balance`", Written::Str(BALANCE.as_str())),
        ),
        (
            "KEEPALIVE",
            Value(UPSTREAM, "`keepalive`", Written::Int(KEEPALIVE as i64)),
        ),
        (
            "KEEPALIVE_TIMEOUT",
            Duration(UPSTREAM, "`keepalive_timeout`", KEEPALIVE_TIMEOUT),
        ),
        (
            "CONNECT_TIMEOUT",
            Duration(UPSTREAM, "`connect_timeout`", CONNECT_TIMEOUT),
        ),
        (
            "CONNECTION_ATTEMPT_DELAY",
            Mention(
                UPSTREAM,
                "`connect_timeout`",
                format!("`{}ms`", CONNECTION_ATTEMPT_DELAY.as_millis()),
            ),
        ),
        (
            "RESPONSE_TIMEOUT",
            Duration(UPSTREAM, "`response_timeout`", RESPONSE_TIMEOUT),
        ),
        (
            "UPSTREAM_IDLE_TIMEOUT",
            Duration(UPSTREAM, "`idle_timeout`", UPSTREAM_IDLE_TIMEOUT),
        ),
        (
            "RETRIES",
            Value(UPSTREAM, "`retries`", Written::Int(RETRIES as i64)),
        ),
        (
            "UPSTREAM_PROTOCOL",
            Value(
                UPSTREAM,
                "`protocol`",
                Written::Str(UPSTREAM_PROTOCOL.as_str()),
            ),
        ),
        (
            "H2_MAX_STREAMS_PER_CONNECTION",
            Value(
                UPSTREAM,
                "`h2_max_streams_per_connection`",
                Written::Int(H2_MAX_STREAMS_PER_CONNECTION as i64),
            ),
        ),
        (
            "H2_MAX_CONNECTIONS",
            Value(
                UPSTREAM,
                "`h2_max_connections`",
                Written::Int(H2_MAX_CONNECTIONS as i64),
            ),
        ),
        (
            "SSE_HEARTBEAT",
            Duration(UPSTREAM, "`sse_heartbeat`", SSE_HEARTBEAT),
        ),
        (
            "HEALTH_INTERVAL",
            Duration(HEALTH, "`interval`", HEALTH_INTERVAL),
        ),
        (
            "HEALTH_TIMEOUT",
            Duration(HEALTH, "`timeout`", HEALTH_TIMEOUT),
        ),
        (
            "HEALTH_RISE",
            Value(HEALTH, "`rise`", Written::Int(i64::from(HEALTH_RISE))),
        ),
        (
            "HEALTH_FALL",
            Value(HEALTH, "`fall`", Written::Int(i64::from(HEALTH_FALL))),
        ),
        (
            "PASSIVE_FAILS",
            Value(
                PASSIVE,
                "`max_fails`",
                Written::Int(i64::from(PASSIVE_FAILS)),
            ),
        ),
        (
            "PASSIVE_COOLDOWN",
            Duration(PASSIVE, "`cooldown`", PASSIVE_COOLDOWN),
        ),
        (
            "PASSIVE_STATUSES",
            Mention(PASSIVE, "`statuses`", format!("`{PASSIVE_STATUSES:?}`")),
        ),
        (
            "MAX_EJECTED_PERCENT",
            Value(
                PANIC,
                "`max_ejected_percent`",
                Written::Int(i64::from(MAX_EJECTED_PERCENT)),
            ),
        ),
        (
            "REQUEST_BUFFERING_MAX_BODY",
            Value(
                BUFFERING,
                "`max_body`",
                Written::Size(REQUEST_BUFFERING_MAX_BODY),
            ),
        ),
        (
            "REQUEST_BUFFERING_TOTAL",
            Value(BUFFERING, "`total`", Written::Size(REQUEST_BUFFERING_TOTAL)),
        ),
        (
            "ON_DEMAND_READY_TIMEOUT",
            Duration(ON_DEMAND, "`ready_timeout`", ON_DEMAND_READY_TIMEOUT),
        ),
        (
            "ON_DEMAND_IDLE_STOP",
            Duration(ON_DEMAND, "`idle_stop`", ON_DEMAND_IDLE_STOP),
        ),
        (
            "ON_DEMAND_STOP_TIMEOUT",
            Duration(ON_DEMAND, "`stop_timeout`", ON_DEMAND_STOP_TIMEOUT),
        ),
        (
            "MAX_DURATION",
            Mention(
                LIMITS,
                "any duration",
                format!("`\"{}\"`", parse::format_duration(MAX_DURATION)),
            ),
        ),
    ]
}

#[test]
fn docs_list_every_default_as_the_file_writes_it() {
    let docs = read("../../docs/config.md");
    for (name, doc) in documented() {
        match doc {
            Doc::Duration(heading, key, d) => {
                let cells = row(&docs, heading, key);
                assert_eq!(
                    written_duration(&cells[3]),
                    d,
                    "{name}: {key} under {heading}"
                );
            }
            Doc::Value(heading, key, expected) => {
                let cells = row(&docs, heading, key);
                let v = written(&cells[3]);
                match expected {
                    Written::Size(n) => {
                        let s = v
                            .as_str()
                            .unwrap_or_else(|| panic!("{name}: a size string"));
                        assert_eq!(parse::size(s).ok(), Some(n), "{name}: {key}");
                    }
                    Written::Int(n) => assert_eq!(v.as_integer(), Some(n), "{name}: {key}"),
                    Written::Str(s) => assert_eq!(v.as_str(), Some(s), "{name}: {key}"),
                }
            }
            Doc::Mention(heading, key, text) => {
                let cells = row(&docs, heading, key);
                assert!(
                    cells.iter().any(|c| c.contains(&text)),
                    "{name}: the {key} row under {heading:?} should mention {text}: {cells:?}"
                );
            }
        }
    }
}

#[test]
fn the_timers_table_agrees_with_the_key_tables() {
    let docs = read("../../docs/config.md");
    for (key, d) in [
        ("listener `header_timeout`", HEADER_TIMEOUT),
        ("listener `idle_timeout`", HTTP_IDLE_TIMEOUT),
        ("upstream `connect_timeout`", CONNECT_TIMEOUT),
        ("upstream `response_timeout`", RESPONSE_TIMEOUT),
        ("upstream `idle_timeout`", UPSTREAM_IDLE_TIMEOUT),
        ("upstream `keepalive_timeout`", KEEPALIVE_TIMEOUT),
        ("listener `tcp_keepalive`", TCP_KEEPALIVE),
        ("TCP listener `idle_timeout`", TCP_IDLE_TIMEOUT),
        ("listener `tls.handshake_timeout`", TLS_HANDSHAKE_TIMEOUT),
        ("listener `h2.keepalive_interval`", H2_KEEPALIVE_INTERVAL),
        (
            "TCP listener `tls_passthrough.hello_timeout`",
            TLS_HELLO_TIMEOUT,
        ),
        ("upstream `sse_heartbeat`", SSE_HEARTBEAT),
        ("upstream `tcp_keepalive`", TCP_KEEPALIVE),
        ("health `interval`", HEALTH_INTERVAL),
        ("health `timeout`", HEALTH_TIMEOUT),
        ("passive `cooldown`", PASSIVE_COOLDOWN),
        ("`[admin] idle_timeout`", ADMIN_IDLE_TIMEOUT),
        ("on_demand `ready_timeout`", ON_DEMAND_READY_TIMEOUT),
        ("on_demand `idle_stop`", ON_DEMAND_IDLE_STOP),
        ("on_demand `stop_timeout`", ON_DEMAND_STOP_TIMEOUT),
        ("`[server] shutdown_grace`", SHUTDOWN_GRACE),
    ] {
        let line = section(&docs, TIMERS)
            .into_iter()
            .find(|l| l.split('|').nth(2).is_some_and(|c| c.trim() == key))
            .unwrap_or_else(|| panic!("no timers row for {key}"));
        let cells: Vec<&str> = line.split('|').collect();
        assert_eq!(written_duration(cells[3]), d, "timers row for {key}");
    }
}

#[test]
fn every_constant_in_defaults_rs_is_checked_against_the_docs() {
    let source = read("src/defaults.rs");
    let constants: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("pub const "))
        .filter_map(|l| l.split(':').next())
        .collect();
    let checked: Vec<&str> = documented().into_iter().map(|(name, _)| name).collect();
    for c in &constants {
        assert!(
            checked.contains(c),
            "defaults::{c} is not in docs.rs's `documented()`: list it in docs/config.md \
             and add it there"
        );
    }
    for c in &checked {
        assert!(constants.contains(c), "{c} is no longer in defaults.rs");
    }
}

#[test]
fn the_complete_example_in_the_docs_loads() {
    let docs = read("../../docs/config.md");
    let lines = section(&docs, "## A complete example");
    let start = lines
        .iter()
        .position(|l| *l == "```toml")
        .expect("a toml block");
    let end = start
        + lines[start..]
            .iter()
            .position(|l| *l == "```")
            .expect("the block's end");
    let text = lines[start + 1..end].join("\n");
    if let Err(errors) = tidegate_config::load_str(&text, None) {
        panic!("the complete example in docs/config.md does not load:\n{errors}");
    }
}
