//! Each kind of config error is reported at the right place (file:line:col), with its
//! key path and what was expected; every error of a file comes out of one load.

use std::path::Path;

use tidegate_config::{load_file, load_str};

/// Loads `text` as if read from `tidegate.toml`; returns the error lines.
fn errors(text: &str) -> Vec<String> {
    match load_str(text, Some(Path::new("tidegate.toml"))) {
        Ok(config) => panic!("expected errors, loaded {config:#?}"),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Asserts that exactly one error starts with `prefix`.
#[track_caller]
fn assert_error(errors: &[String], prefix: &str) {
    let hits = errors.iter().filter(|e| e.starts_with(prefix)).count();
    assert_eq!(
        hits,
        1,
        "no single error starts with\n  {prefix}\nerrors:\n  {}",
        errors.join("\n  ")
    );
}

/// A valid listener to put around the part under test.
const LISTENER: &str = r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
respond = { status = 200 }
"#;

#[test]
fn error_display_is_file_line_col_key_message() {
    let text = format!(
        "{LISTENER}\n[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\nkeepalive = \"32x\"\n"
    );
    let errors = errors(&text);
    assert_eq!(
        errors,
        ["tidegate.toml:9:13: upstreams.app.keepalive: expected a whole number, found \"32x\""]
    );
}

#[test]
fn every_error_in_a_file_is_reported_in_one_load_in_file_order() {
    let text = r#"[server]
shutdown_grace = "10 seconds"
workers = -2

[listeners.web]
listen = ["localhost:8080"]
idle_timeout = "0s"
max_connections = 0

[[listeners.web.routes]]
upstream = "ap"

[upstreams.app]
servers = ["127.0.0.1:3000"]
balance = "random"
"#;
    let errors = errors(text);
    assert_eq!(
        errors,
        [
            r#"tidegate.toml:2:18: server.shutdown_grace: expected a duration like "250ms", "10s" or "5m", found "10 seconds""#,
            r#"tidegate.toml:3:11: server.workers: expected a whole number, found -2"#,
            r#"tidegate.toml:6:11: listeners.web.listen[0]: "localhost:8080": a listener needs an IP address, not a host name (write "127.0.0.1:8080", "[::1]:8080" or "0.0.0.0:8080")"#,
            r#"tidegate.toml:7:16: listeners.web.idle_timeout: must be more than zero, found "0s""#,
            r#"tidegate.toml:8:19: listeners.web.max_connections: expected a whole number of at least 1, found 0"#,
            r#"tidegate.toml:11:12: listeners.web.routes[0].upstream: no upstream named "ap"; defined: app"#,
            r#"tidegate.toml:15:11: upstreams.app.balance: expected one of "round_robin", "least_conn", found "random""#,
        ]
    );
}

#[test]
fn unknown_keys_are_errors_that_list_the_allowed_keys() {
    let text = format!("{LISTENER}idle_timout = \"5s\"\n[logging]\nlevel = \"debug\"\n");
    let errors = errors(&text);
    assert_error(
        &errors,
        "tidegate.toml:6:1: listeners.web.routes[0].idle_timout: unknown key; allowed here: host, path, upstream, respond",
    );
    assert_error(
        &errors,
        "tidegate.toml:7:2: logging: unknown key; allowed here: server, admin, listeners, upstreams",
    );
    // A near miss is named.
    let errors = self::errors(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nidle_timout = \"5s\"\n[[listeners.web.routes]]\nrespond = { status = 204 }\n",
    );
    assert_error(
        &errors,
        r#"tidegate.toml:3:1: listeners.web.idle_timout: unknown key (did you mean "idle_timeout"?)"#,
    );
}

// === on-demand upstreams ===

#[test]
fn on_demand_values_are_checked_and_every_error_reported() {
    let text = format!(
        r#"{LISTENER}[upstreams.app]
servers = ["unix:/tmp/app.sock"]
[upstreams.app.on_demand]
command = "python3 app.py"
env = {{ "A=B" = "x", OK = 1 }}
cwd = ""
ready_timeout = 5
stop_timeout = "0s"
idle_stp = "5m"
"#
    );
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:9:11: upstreams.app.on_demand.command: expected an array of strings like ["python3", "app.py"] (the program, then its arguments; no shell), found "python3 app.py""#,
            r#"tidegate.toml:10:9: upstreams.app.on_demand.env."A=B": invalid environment variable name "A=B": it must not be empty or contain "=" or a NUL byte"#,
            "tidegate.toml:10:27: upstreams.app.on_demand.env.OK: expected a string, found 1",
            "tidegate.toml:11:7: upstreams.app.on_demand.cwd: expected a folder path, found an empty string",
            r#"tidegate.toml:12:17: upstreams.app.on_demand.ready_timeout: expected a duration like "250ms", "10s" or "5m", found 5 (a duration is a string with a unit)"#,
            r#"tidegate.toml:13:16: upstreams.app.on_demand.stop_timeout: must be more than zero, found "0s""#,
            r#"tidegate.toml:14:1: upstreams.app.on_demand.idle_stp: unknown key (did you mean "idle_stop"?); allowed here: command, env, cwd, ready_timeout, idle_stop, stop_timeout"#,
        ]
    );
}

#[test]
fn on_demand_needs_a_program_to_run() {
    let text = format!(
        "{LISTENER}[upstreams.a]\nservers = \"unix:/tmp/a.sock\"\non_demand = {{ idle_stop = \"1m\" }}\n\
         [upstreams.b]\nservers = \"unix:/tmp/b.sock\"\non_demand = {{ command = [] }}\n\
         [upstreams.c]\nservers = \"unix:/tmp/c.sock\"\non_demand = {{ command = [\"\", 7] }}\n"
    );
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:8:13: upstreams.a.on_demand.command: missing; the program to start and its arguments, e.g. command = ["python3", "app.py"]"#,
            "tidegate.toml:11:25: upstreams.b.on_demand.command: expected at least the program, found an empty array",
            "tidegate.toml:14:26: upstreams.c.on_demand.command[0]: expected the program, found an empty string",
            "tidegate.toml:14:30: upstreams.c.on_demand.command[1]: expected a string, found 7",
        ]
    );
}

#[test]
fn an_on_demand_upstream_has_exactly_one_server() {
    let text = format!(
        "{LISTENER}[upstreams.app]\nservers = [\"unix:/tmp/a.sock\", \"unix:/tmp/b.sock\"]\n\
         [upstreams.app.on_demand]\ncommand = [\"app\"]\n"
    );
    assert_eq!(
        errors(&text),
        ["tidegate.toml:7:11: upstreams.app.servers: an on-demand upstream has exactly one server: the address its command listens on; found 2 servers"]
    );
}

// === TCP listeners ===

/// An upstream for TCP listeners to name.
const RABBIT: &str = "\n[upstreams.rabbit]\nservers = [\"127.0.0.1:5672\"]\n";

#[test]
fn a_tcp_listener_needs_an_upstream() {
    let text =
        format!("[listeners.amqp]\nlisten = \"127.0.0.1:5673\"\nprotocol = \"tcp\"\n{RABBIT}");
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:1:1: listeners.amqp.upstream: missing; a TCP listener forwards every connection to one upstream: upstream = "NAME" (defined: rabbit)"#
        ]
    );
    let text = "[listeners.amqp]\nlisten = \"127.0.0.1:5673\"\nprotocol = \"tcp\"\n";
    assert_eq!(
        errors(text),
        [
            r#"tidegate.toml:1:1: listeners.amqp.upstream: missing; a TCP listener forwards every connection to one upstream: upstream = "NAME", with an [upstreams.NAME] table"#
        ]
    );
}

#[test]
fn a_tcp_listener_names_an_existing_upstream() {
    let text = format!(
        "[listeners.amqp]\nlisten = \"127.0.0.1:5673\"\nprotocol = \"tcp\"\nupstream = \"rabit\"\n{RABBIT}"
    );
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:4:12: listeners.amqp.upstream: no upstream named "rabit"; defined: rabbit"#
        ]
    );
    let text =
        "[listeners.amqp]\nlisten = \"127.0.0.1:5673\"\nprotocol = \"tcp\"\nupstream = 5672\n";
    assert_eq!(
        errors(text),
        ["tidegate.toml:4:12: listeners.amqp.upstream: expected an upstream name, found 5672"]
    );
}

#[test]
fn http_only_keys_on_a_tcp_listener_are_errors_that_say_why() {
    let text = format!(
        r#"[listeners.amqp]
listen = "127.0.0.1:5673"
protocol = "tcp"
upstream = "rabbit"
header_timeout = "5s"
max_header_size = "1KiB"
idle_timeout = "10m"
[[listeners.amqp.routes]]
upstream = "nowhere"
{RABBIT}"#
    );
    // The HTTP-only values themselves are not checked as well: the key is the mistake.
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:5:1: listeners.amqp.header_timeout: only for HTTP listeners (protocol = "http"); a TCP listener reads no request head (`idle_timeout` bounds a silent connection)"#,
            r#"tidegate.toml:6:1: listeners.amqp.max_header_size: only for HTTP listeners (protocol = "http"); a TCP listener reads no request head"#,
            r#"tidegate.toml:8:18: listeners.amqp.routes: only for HTTP listeners (protocol = "http"); a TCP listener has no routes: it forwards every connection to its `upstream`"#,
        ]
    );
    // Inline routes too.
    let text = format!(
        "[listeners.amqp]\nlisten = \"127.0.0.1:5673\"\nprotocol = \"tcp\"\nupstream = \"rabbit\"\nroutes = []\n{RABBIT}"
    );
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:5:1: listeners.amqp.routes: only for HTTP listeners (protocol = "http"); a TCP listener has no routes: it forwards every connection to its `upstream`"#
        ]
    );
}

#[test]
fn upstream_on_an_http_listener_points_to_routes() {
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:8080\"\nupstream = \"rabbit\"\n[[listeners.web.routes]]\nupstream = \"rabbit\"\n{RABBIT}"
    );
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:3:1: listeners.web.upstream: only for TCP listeners (protocol = "tcp"); an HTTP listener sends requests to upstreams through its routes: [[listeners.web.routes]] with upstream = "NAME""#
        ]
    );
    // Without routes, both are said.
    let text = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:8080\"\nprotocol = \"http\"\nupstream = \"rabbit\"\n{RABBIT}"
    );
    assert_eq!(
        errors(&text),
        [
            "tidegate.toml:1:1: listeners.web.routes: missing; an HTTP listener needs at least one [[listeners.NAME.routes]] table",
            r#"tidegate.toml:4:1: listeners.web.upstream: only for TCP listeners (protocol = "tcp"); an HTTP listener sends requests to upstreams through its routes: [[listeners.web.routes]] with upstream = "NAME""#,
        ]
    );
}

#[test]
fn an_unknown_protocol_is_one_error_not_a_cascade() {
    // Neither protocol's rules apply: no "missing routes", no "upstream is for TCP";
    // the values present are still checked.
    let text =
        "[listeners.x]\nlisten = \"127.0.0.1:5673\"\nprotocol = \"TCP\"\nupstream = \"nope\"\n";
    assert_eq!(
        errors(text),
        [
            r#"tidegate.toml:3:12: listeners.x.protocol: expected "http" or "tcp", found "TCP""#,
            r#"tidegate.toml:4:12: listeners.x.upstream: no upstream named "nope"; none is defined"#,
        ]
    );
}

#[test]
fn tcp_keepalive_follows_the_same_rules_on_listeners_and_upstreams() {
    let text = r#"[listeners.amqp]
listen = "127.0.0.1:5673"
protocol = "tcp"
upstream = "rabbit"
tcp_keepalive = "1500ms"

[upstreams.rabbit]
servers = ["127.0.0.1:5672"]
tcp_keepalive = "40000s"

[upstreams.other]
servers = ["127.0.0.1:5674"]
tcp_keepalive = "0s"
"#;
    assert_eq!(
        errors(text),
        [
            r#"tidegate.toml:5:17: listeners.amqp.tcp_keepalive: expected whole seconds up to 32767s (the kernel counts TCP keepalive idle time in seconds), found "1500ms""#,
            r#"tidegate.toml:9:17: upstreams.rabbit.tcp_keepalive: expected whole seconds up to 32767s (the kernel counts TCP keepalive idle time in seconds), found "40000s""#,
            r#"tidegate.toml:13:17: upstreams.other.tcp_keepalive: must be more than zero, found "0s" (write "off" to disable)"#,
        ]
    );
}

// === upstream retries, sse_heartbeat, health ===

#[test]
fn bad_retries_and_sse_heartbeat() {
    let text = format!(
        r#"{LISTENER}
[upstreams.a]
servers = ["127.0.0.1:3000"]
retries = -1
sse_heartbeat = "0s"

[upstreams.b]
servers = ["127.0.0.1:3001"]
retries = "2"
sse_heartbeat = 15

[upstreams.c]
servers = ["127.0.0.1:3002"]
retries = 1.5
sse_heartbeat = "never"
"#
    );
    assert_eq!(
        errors(&text),
        [
            "tidegate.toml:9:11: upstreams.a.retries: expected a whole number, found -1",
            r#"tidegate.toml:10:17: upstreams.a.sse_heartbeat: must be more than zero, found "0s" (write "off" to disable)"#,
            r#"tidegate.toml:14:11: upstreams.b.retries: expected a whole number, found "2""#,
            r#"tidegate.toml:15:17: upstreams.b.sse_heartbeat: expected a duration like "60s", or "off", found 15"#,
            "tidegate.toml:19:11: upstreams.c.retries: expected a whole number, found 1.5",
            r#"tidegate.toml:20:17: upstreams.c.sse_heartbeat: expected a duration like "60s", or "off", found "never""#,
        ]
    );
}

#[test]
fn bad_health_values() {
    let text = format!(
        r#"{LISTENER}
[upstreams.app]
servers = ["127.0.0.1:3000"]

[upstreams.app.health]
path = "health"
interval = "0s"
timeout = 2
rise = 0
fall = 5000000000
check = "tcp"

[upstreams.b]
servers = ["127.0.0.1:3001"]
health = {{ path = "/status page", fall = -1 }}

[upstreams.c]
servers = ["127.0.0.1:3002"]
health = true
"#
    );
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:11:8: upstreams.app.health.path: expected a path starting with "/" (like "/health"), found "health""#,
            r#"tidegate.toml:12:12: upstreams.app.health.interval: must be more than zero, found "0s""#,
            r#"tidegate.toml:13:11: upstreams.app.health.timeout: expected a duration like "250ms", "10s" or "5m", found 2 (a duration is a string with a unit)"#,
            "tidegate.toml:14:8: upstreams.app.health.rise: expected a whole number of at least 1, found 0",
            "tidegate.toml:15:8: upstreams.app.health.fall: expected a whole number from 1 to 4294967295, found 5000000000",
            "tidegate.toml:16:1: upstreams.app.health.check: unknown key; allowed here: path, interval, timeout, rise, fall",
            r#"tidegate.toml:20:19: upstreams.b.health.path: ' ' is not allowed in a request path (percent-encode it), found "/status page""#,
            "tidegate.toml:20:42: upstreams.b.health.fall: expected a whole number of at least 1, found -1",
            "tidegate.toml:24:10: upstreams.c.health: expected a table, found true",
        ]
    );
}

#[test]
fn bad_passive_values() {
    let text = format!(
        r#"{LISTENER}
[upstreams.app]
servers = ["127.0.0.1:3000"]

[upstreams.app.passive]
max_fails = -1
cooldown = "0s"
statuses = [500, 200, "503"]
fail_timeout = "10s"

[upstreams.b]
servers = ["127.0.0.1:3001"]
passive = {{ statuses = 500, max_fails = 5000000000 }}
"#
    );
    assert_eq!(
        errors(&text),
        [
            "tidegate.toml:11:13: upstreams.app.passive.max_fails: expected a whole number, found -1",
            r#"tidegate.toml:12:12: upstreams.app.passive.cooldown: must be more than zero, found "0s""#,
            "tidegate.toml:13:18: upstreams.app.passive.statuses[1]: expected a response status from 400 to 599, found 200",
            r#"tidegate.toml:13:23: upstreams.app.passive.statuses[2]: expected a response status from 400 to 599, found "503""#,
            "tidegate.toml:14:1: upstreams.app.passive.fail_timeout: unknown key; allowed here: max_fails, cooldown, statuses, max_ejected_percent",
            "tidegate.toml:18:24: upstreams.b.passive.statuses: expected an array of statuses like [502, 503, 504], found 500",
            "tidegate.toml:18:41: upstreams.b.passive.max_fails: expected a whole number from 0 to 4294967295, found 5000000000",
        ]
    );
}

#[test]
fn a_health_timeout_longer_than_its_interval_is_allowed() {
    let text = format!(
        "{LISTENER}[upstreams.app]\nservers = [\"127.0.0.1:3000\"]\nhealth = {{ interval = \"1s\", timeout = \"5s\" }}\n"
    );
    let config = load_str(&text, None).expect("allowed, and nothing is said");
    let health = config.upstreams[0].health.as_ref().expect("health");
    assert!(health.timeout > health.interval);
}

#[test]
fn bad_durations_say_what_a_duration_looks_like() {
    for (value, found) in [
        (r#""10 seconds""#, r#"found "10 seconds""#),
        (
            r#""1.5s""#,
            r#"found "1.5s" (whole numbers only: write "1500ms", not "1.5s")"#,
        ),
        ("10", "found 10 (a duration is a string with a unit)"),
    ] {
        let text = format!(
            "[listeners.web]\nlisten = \"127.0.0.1:0\"\nheader_timeout = {value}\n\
             [[listeners.web.routes]]\nrespond = {{ status = 200 }}\n"
        );
        let errors = errors(&text);
        assert_error(
            &errors,
            &format!(
                r#"tidegate.toml:3:18: listeners.web.header_timeout: expected a duration like "250ms", "10s" or "5m", {found}"#
            ),
        );
    }
}

#[test]
fn bad_addresses_are_positioned_at_the_array_element() {
    let text = r#"[listeners.web]
listen = ["127.0.0.1:8080", "127.0.0.1", "::1:80", "unix:/a.sock:mode=9"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["example.com", "unix:/b.sock:mode=660", "127.0.0.1:0"]
"#;
    let errors = errors(text);
    assert_eq!(
        errors,
        [
            r#"tidegate.toml:2:29: listeners.web.listen[1]: "127.0.0.1": missing the port (e.g. "127.0.0.1:8080")"#,
            r#"tidegate.toml:2:42: listeners.web.listen[2]: "::1:80": an IPv6 address goes in brackets, as in "[::1]:8080""#,
            r#"tidegate.toml:2:52: listeners.web.listen[3]: "unix:/a.sock:mode=9": mode is an octal file mode like 660 or 0600, found "9""#,
            r#"tidegate.toml:6:12: upstreams.app.servers[0]: "example.com": missing the port (e.g. "example.com:8080")"#,
            r#"tidegate.toml:6:27: upstreams.app.servers[1]: "unix:/b.sock:mode=660": an upstream socket takes no options (mode, owner and group are for listeners; the upstream creates its own socket)"#,
            r#"tidegate.toml:6:52: upstreams.app.servers[2]: "127.0.0.1:0": port 0 means "any free port" and is for listeners only; an upstream needs the port its server listens on"#,
        ]
    );
}

#[test]
fn an_address_listened_on_twice_names_both_places() {
    let text = r#"[listeners.a]
listen = ["127.0.0.1:8080", "unix:/run/t.sock", "127.0.0.1:0", "127.0.0.1:0"]
[[listeners.a.routes]]
respond = { status = 200 }

[listeners.b]
listen = ["unix:/run/t.sock", "0.0.0.0:8080", "[::]:8080"]
[[listeners.b.routes]]
respond = { status = 200 }
"#;
    let errors = errors(text);
    assert_eq!(
        errors,
        [
            "tidegate.toml:7:11: listeners.b.listen[0]: unix:/run/t.sock is listened on twice: also at listeners.a.listen[1] (tidegate.toml:2:29)",
            "tidegate.toml:7:31: listeners.b.listen[1]: 0.0.0.0:8080 overlaps 127.0.0.1:8080 at listeners.a.listen[0] (tidegate.toml:2:11): a wildcard address takes the port on every address of its family",
        ]
    );
}

#[test]
fn routes_need_an_existing_upstream_or_a_response() {
    let text = r#"[listeners.web]
listen = "127.0.0.1:0"

[[listeners.web.routes]]
host = "*.example.com"
upstream = "missing"

[[listeners.web.routes]]
path = "/healthz"

[[listeners.web.routes]]
upstream = "app"
respond = { status = 200 }

[[listeners.web.routes]]
host = "bad host"
respond = { status = 99, body = "x" }
"#;
    let errors = errors(text);
    assert_eq!(
        errors,
        [
            r#"tidegate.toml:6:12: listeners.web.routes[0].upstream: no upstream named "missing"; none is defined"#,
            r#"tidegate.toml:8:1: listeners.web.routes[1]: a route needs `upstream = "NAME"` or `respond = { status = 200, body = "..." }`"#,
            "tidegate.toml:13:1: listeners.web.routes[2].respond: a route either proxies (upstream) or responds (respond), not both",
            r#"tidegate.toml:16:8: listeners.web.routes[3].host: "bad host": ' ' is not allowed in a host name; a host name has labels of letters, digits, "-" and "_" separated by dots"#,
            "tidegate.toml:17:22: listeners.web.routes[3].respond.status: expected an HTTP status from 200 to 599, found 99",
        ]
    );
}

#[test]
fn duplicate_routes_are_an_error() {
    let text = r#"[listeners.web]
listen = "127.0.0.1:0"
[[listeners.web.routes]]
host = "A.example.com"
respond = { status = 200 }
[[listeners.web.routes]]
path = "/x"
respond = { status = 200 }
[[listeners.web.routes]]
host = "a.example.com"
path = "/"
respond = { status = 404 }
"#;
    assert_eq!(
        errors(text),
        [
            r#"tidegate.toml:9:1: listeners.web.routes[2]: a second route for host "a.example.com" and path "/" would never match (the first is at tidegate.toml:3:1)"#
        ]
    );
}

#[test]
fn required_parts_missing() {
    assert_eq!(
        errors(""),
        ["tidegate.toml:1:1: listeners: missing; a config needs at least one [listeners.NAME] table"]
    );
    assert_eq!(
        errors("[server]\nworkers = 2\n[listeners]\n"),
        ["tidegate.toml:3:1: listeners: a config needs at least one [listeners.NAME] table, found an empty table"]
    );
    let errors = errors("[listeners.web]\nprotocol = \"http\"\n[upstreams.app]\nkeepalive = 1\n");
    assert_eq!(
        errors,
        [
            r#"tidegate.toml:1:1: listeners.web.listen: missing; a listener needs at least one address, e.g. listen = ["127.0.0.1:8080"]"#,
            "tidegate.toml:1:1: listeners.web.routes: missing; an HTTP listener needs at least one [[listeners.NAME.routes]] table",
            r#"tidegate.toml:3:1: upstreams.app.servers: missing; an upstream needs at least one server, e.g. servers = ["127.0.0.1:3000"]"#,
        ]
    );
}

#[test]
fn header_size_below_what_hyper_can_parse_is_refused() {
    let text = LISTENER.replace("listen =", "max_header_size = \"4KiB\"\nlisten =");
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:3:19: listeners.web.max_header_size: must be at least 8KiB (8192 bytes): hyper cannot read a request head with a smaller buffer; found "4KiB" (4096 bytes)"#
        ]
    );
}

#[test]
fn invalid_table_names_are_refused() {
    let text = "[listeners.\"my web\"]\nlisten = \"127.0.0.1:0\"\n[[listeners.\"my web\".routes]]\nrespond = { status = 200 }\n";
    assert_eq!(
        errors(text),
        [
            r#"tidegate.toml:1:12: listeners."my web": invalid name "my web": use letters, digits, "_" and "-""#
        ]
    );
}

#[test]
fn a_toml_syntax_error_is_one_positioned_error() {
    let errors = errors("[listeners.web]\nlisten = [\"127.0.0.1:0\"\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("tidegate.toml:2:24: invalid TOML: unclosed array"),
        "{errors:?}"
    );
}

#[test]
fn an_unreadable_file_is_one_error_with_the_os_meaning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.toml");
    let errors = load_file(&path).expect_err("absent file");
    assert_eq!(
        errors.to_string(),
        format!(
            "{}: cannot read: No such file or directory (ENOENT)",
            path.display()
        )
    );
}

#[test]
fn embedded_config_errors_say_quickstart() {
    let errors = load_str("[server]\nworkers = 1.5\n", None).expect_err("invalid");
    assert_eq!(
        errors.to_string(),
        "<quickstart>:1:1: listeners: missing; a config needs at least one [listeners.NAME] table\n\
         <quickstart>:2:11: server.workers: expected a whole number, found 1.5"
    );
}

#[test]
fn route_paths_must_be_normalized_and_upgrades_named() {
    let text = r#"[listeners.web]
listen = "127.0.0.1:0"
underscores_in_headers = "yes"
[[listeners.web.routes]]
path = "/a//b"
respond = { status = 200 }
[[listeners.web.routes]]
path = "/a/../b"
respond = { status = 200 }
[[listeners.web.routes]]
path = "/%7Euser"
respond = { status = 200 }
[[listeners.web.routes]]
path = "/caf%c3%a9"
respond = { status = 200 }
[[listeners.web.routes]]
path = "/x%2Fy"
upstream = "app"
upgrades = ["websocket", "h2c", "a b", 3]
forward_normalized = 1
[[listeners.web.routes]]
path = "/r"
respond = { status = 200 }
upgrades = ["websocket"]
[[listeners.web.routes]]
path = "/s"
upstream = "app"
upgrades = "websocket"

[listeners.amqp]
listen = "127.0.0.1:5673"
protocol = "tcp"
upstream = "app"
underscores_in_headers = true

[upstreams.app]
servers = ["127.0.0.1:1"]
"#;
    assert_eq!(
        errors(text),
        [
            r#"tidegate.toml:3:26: listeners.web.underscores_in_headers: expected true or false, found "yes""#,
            r#"tidegate.toml:5:8: listeners.web.routes[0].path: a path prefix is matched against the normalized request path, so it must be normalized itself: no repeated "/", found "/a//b""#,
            r#"tidegate.toml:8:8: listeners.web.routes[1].path: a path prefix is matched against the normalized request path, so it must be normalized itself: no ".." segment, found "/a/../b""#,
            r#"tidegate.toml:11:8: listeners.web.routes[2].path: a path prefix is matched against the normalized request path, so it must be normalized itself: write %7E as '~', found "/%7Euser""#,
            r#"tidegate.toml:14:8: listeners.web.routes[3].path: a path prefix is matched against the normalized request path, so it must be normalized itself: write %c3 in upper case, found "/caf%c3%a9""#,
            r#"tidegate.toml:17:8: listeners.web.routes[4].path: a path prefix is matched against the normalized request path, so it must be normalized itself: %2F is refused in request paths, so no route can match it, found "/x%2Fy""#,
            r#"tidegate.toml:19:26: listeners.web.routes[4].upgrades[1]: h2c is never tunnelled: an `Upgrade: h2c` request is forwarded as a plain HTTP/1.1 request"#,
            r#"tidegate.toml:19:33: listeners.web.routes[4].upgrades[2]: expected a protocol name as `Upgrade` writes it (like "websocket"), found "a b""#,
            r#"tidegate.toml:19:40: listeners.web.routes[4].upgrades[3]: expected a protocol name, found 3"#,
            r#"tidegate.toml:20:22: listeners.web.routes[4].forward_normalized: expected true or false, found 1"#,
            r#"tidegate.toml:24:1: listeners.web.routes[5].upgrades: only for routes with `upstream`: a `respond` route answers itself"#,
            r#"tidegate.toml:28:12: listeners.web.routes[6].upgrades: expected an array of protocol names, e.g. ["websocket"], found "websocket""#,
            r#"tidegate.toml:34:1: listeners.amqp.underscores_in_headers: only for HTTP listeners (protocol = "http"); a TCP listener reads no request head"#,
        ]
    );
}

// === half_close and require_length ===

#[test]
fn half_close_and_require_length_are_booleans_in_their_place() {
    let text = r#"[listeners.web]
listen = "127.0.0.1:0"
half_close = "yes"
[[listeners.web.routes]]
path = "/a"
upstream = "app"
require_length = 1
[[listeners.web.routes]]
path = "/b"
respond = { status = 200 }
require_length = true

[listeners.amqp]
listen = "127.0.0.1:5673"
protocol = "tcp"
upstream = "app"
half_close = false

[upstreams.app]
servers = ["127.0.0.1:3000"]
"#;
    assert_eq!(
        errors(text),
        [
            r#"tidegate.toml:3:14: listeners.web.half_close: expected true or false, found "yes""#,
            r#"tidegate.toml:7:18: listeners.web.routes[0].require_length: expected true or false, found 1"#,
            r#"tidegate.toml:11:1: listeners.web.routes[1].require_length: only for routes with `upstream`: a `respond` route reads no request body"#,
            r#"tidegate.toml:17:1: listeners.amqp.half_close: only for HTTP listeners (protocol = "http"); a TCP listener always passes a half-close on to the upstream"#,
        ]
    );
    let ok = r#"[listeners.web]
listen = "127.0.0.1:0"
half_close = false
[[listeners.web.routes]]
upstream = "app"
require_length = true

[upstreams.app]
servers = ["127.0.0.1:3000"]
"#;
    let config = tidegate_config::load_str(ok, Some(Path::new("tidegate.toml"))).expect("loads");
    assert!(!config.listeners[0].half_close);
    assert!(config.listeners[0].routes[0].require_length);
}

#[test]
fn max_ejected_percent_and_request_buffering_are_checked() {
    let text = format!(
        r#"{LISTENER}
[upstreams.app]
servers = ["127.0.0.1:3000"]
[upstreams.app.passive]
max_ejected_percent = 150
[upstreams.app.request_buffering]
max_body = "2MiB"
total = "1MiB"
over = "drop"
"#
    );
    let errors = errors(&text);
    assert_error(
        &errors,
        "tidegate.toml:10:23: upstreams.app.passive.max_ejected_percent: expected a whole number from 0 to 100",
    );
    assert_error(
        &errors,
        "tidegate.toml:14:8: upstreams.app.request_buffering.over: expected one of \"stream\", \"refuse\"",
    );
    assert_error(
        &errors,
        "tidegate.toml:12:12: upstreams.app.request_buffering.max_body: max_body (2MiB) is larger than total (1MiB)",
    );
}

#[test]
fn request_buffering_defaults_and_values_load() {
    let text = format!(
        "{LISTENER}\n[upstreams.a]\nservers = [\"127.0.0.1:3000\"]\n[upstreams.a.request_buffering]\n\
         [upstreams.b]\nservers = [\"127.0.0.1:3001\"]\nrequest_buffering = {{ max_body = \"4KiB\", total = \"1MiB\", over = \"refuse\" }}\n\
         [upstreams.b.passive]\nmax_ejected_percent = 0\n"
    );
    let config = load_str(&text, None).expect("loads");
    let a = config.upstream("a").expect("a");
    assert_eq!(
        a.request_buffering,
        Some(tidegate_config::RequestBuffering {
            max_body: tidegate_config::defaults::REQUEST_BUFFERING_MAX_BODY,
            total: tidegate_config::defaults::REQUEST_BUFFERING_TOTAL,
            over: tidegate_config::OverLimit::Stream,
        })
    );
    assert_eq!(
        a.max_ejected_percent,
        tidegate_config::defaults::MAX_EJECTED_PERCENT
    );
    let b = config.upstream("b").expect("b");
    assert_eq!(
        b.request_buffering,
        Some(tidegate_config::RequestBuffering {
            max_body: 4096,
            total: 1024 * 1024,
            over: tidegate_config::OverLimit::Refuse,
        })
    );
    assert_eq!(b.max_ejected_percent, 0);
}

// === passed-in sockets ===

#[test]
fn a_passed_in_socket_is_listened_on_once() {
    let text = "[admin]\nlisten = \"systemd:web\"\n\n[listeners.web]\nlisten = [\"systemd:web\", \"fd:3\", \"fd:3\", \"systemd:other\"]\n[[listeners.web.routes]]\nrespond = { status = 200 }\n";
    assert_eq!(
        errors(text),
        [
            "tidegate.toml:5:11: listeners.web.listen[0]: systemd:web is listened on twice: also at admin.listen (tidegate.toml:2:10)",
            "tidegate.toml:5:34: listeners.web.listen[2]: fd:3 is listened on twice: also at listeners.web.listen[1] (tidegate.toml:5:26)",
        ]
    );
}
