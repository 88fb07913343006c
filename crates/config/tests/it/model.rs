//! A valid file becomes the typed model: values parsed, defaults filled in, listeners and
//! upstreams sorted by name.

use std::path::Path;
use std::time::Duration;

use tidegate_config::defaults;
use tidegate_config::{
    load_str, AccessLog, AccessLogTo, Admin, Balance, Config, Health, HostMatch, ListenAddr,
    Listener, Log, LogFormat, LogLevel, Passive, Protocol, Route, RouteAction, Server, UnixListen,
    Upstream, UpstreamAddr,
};

#[test]
fn every_supported_key_reaches_the_model() {
    let text = r#"
[server]
shutdown_grace = "0s"
workers = 4
log = { level = "debug", format = "json" }
access_log = { to = "logs/access.log", format = "json" }

[admin]
listen = "unix:admin.sock:mode=660"
max_connections = 3
idle_timeout = "300ms"

[listeners.zeta]
listen = "[::1]:0"
header_timeout = "250ms"
idle_timeout = "2m"
max_connections = 5
max_header_size = 16384
tcp_keepalive = "off"
underscores_in_headers = true
routes = [{ host = "*.Example.COM", path = "/api", upstream = "b", upgrades = ["WebSocket", "foo/2"], forward_normalized = true }]

[listeners.alpha]
listen = ["127.0.0.1:0", "unix:/tmp/alpha.sock:mode=600"]
protocol = "http"
max_header_size = "1MiB"
tcp_keepalive = "30s"

[[listeners.alpha.routes]]
host = "CI.example.com"
upstream = "a"

[[listeners.alpha.routes]]
path = "/healthz"
respond = { status = 503 }

[upstreams.b]
servers = ["localhost:6080", "[::1]:81"]
balance = "least_conn"
keepalive = 0
keepalive_timeout = "1s"
connect_timeout = "300ms"
response_timeout = "5s"
idle_timeout = "1h"
retries = 0
sse_heartbeat = "off"
tcp_keepalive = "45s"
health = { path = "/health?full=1", interval = "500ms", timeout = "1s", rise = 1, fall = 5 }
passive = { max_fails = 0, cooldown = "30s", statuses = [504, 502, 502] }

[upstreams.a]
servers = ["unix:/run/a.sock", "10.0.0.1:80"]
"#;
    let config = load_str(text, Some(Path::new("/etc/tidegate/tidegate.toml"))).expect("valid");
    let expected = Config {
        source: Some("/etc/tidegate/tidegate.toml".into()),
        server: Server {
            shutdown_grace: Duration::ZERO,
            workers: 4,
            log: Log {
                level: LogLevel::Debug,
                format: LogFormat::Json,
            },
            access_log: AccessLog {
                to: AccessLogTo::File("/etc/tidegate/logs/access.log".into()),
                format: LogFormat::Json,
            },
        },
        admin: Admin {
            listen: Some(ListenAddr::Unix(UnixListen {
                path: "/etc/tidegate/admin.sock".into(),
                mode: Some(0o660),
                owner: None,
                group: None,
            })),
            max_connections: 3,
            idle_timeout: Duration::from_millis(300),
        },
        listeners: vec![
            Listener {
                name: "alpha".into(),
                listen: vec![
                    ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr")),
                    ListenAddr::Unix(UnixListen {
                        path: "/tmp/alpha.sock".into(),
                        mode: Some(0o600),
                        owner: None,
                        group: None,
                    }),
                ],
                protocol: Protocol::Http,
                upstream: None,
                header_timeout: defaults::HEADER_TIMEOUT,
                idle_timeout: defaults::HTTP_IDLE_TIMEOUT,
                max_connections: defaults::MAX_CONNECTIONS,
                max_header_size: 1 << 20,
                tcp_keepalive: Some(Duration::from_secs(30)),
                underscores_in_headers: defaults::UNDERSCORES_IN_HEADERS,
                half_close: true,
                tls: None,
                tls_passthrough: None,
                h2: Default::default(),
                routes: vec![
                    Route {
                        host: Some(HostMatch::Exact("ci.example.com".into())),
                        path: "/".into(),
                        action: RouteAction::Upstream("a".into()),
                        upgrades: vec!["websocket".into()],
                        forward_normalized: defaults::FORWARD_NORMALIZED,
                        require_length: false,
                    },
                    Route {
                        host: None,
                        path: "/healthz".into(),
                        action: RouteAction::Respond {
                            status: 503,
                            body: String::new(),
                        },
                        upgrades: vec!["websocket".into()],
                        forward_normalized: defaults::FORWARD_NORMALIZED,
                        require_length: false,
                    },
                ],
            },
            Listener {
                name: "zeta".into(),
                listen: vec![ListenAddr::Tcp("[::1]:0".parse().expect("addr"))],
                protocol: Protocol::Http,
                upstream: None,
                header_timeout: Duration::from_millis(250),
                idle_timeout: Duration::from_secs(120),
                max_connections: 5,
                max_header_size: 16384,
                tcp_keepalive: None,
                underscores_in_headers: true,
                half_close: true,
                tls: None,
                tls_passthrough: None,
                h2: Default::default(),
                routes: vec![Route {
                    host: Some(HostMatch::Suffix(".example.com".into())),
                    path: "/api".into(),
                    action: RouteAction::Upstream("b".into()),
                    upgrades: vec!["websocket".into(), "foo/2".into()],
                    forward_normalized: true,
                    require_length: false,
                }],
            },
        ],
        upstreams: vec![
            Upstream {
                name: "a".into(),
                servers: vec![
                    UpstreamAddr::Unix("/run/a.sock".into()),
                    UpstreamAddr::Ip("10.0.0.1:80".parse().expect("addr")),
                ],
                balance: Balance::RoundRobin,
                keepalive: defaults::KEEPALIVE,
                keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
                connect_timeout: defaults::CONNECT_TIMEOUT,
                response_timeout: defaults::RESPONSE_TIMEOUT,
                idle_timeout: defaults::UPSTREAM_IDLE_TIMEOUT,
                retries: defaults::RETRIES,
                sse_heartbeat: Some(defaults::SSE_HEARTBEAT),
                tcp_keepalive: Some(defaults::TCP_KEEPALIVE),
                health: None,
                passive: Passive::default(),
                on_demand: None,
                max_ejected_percent: defaults::MAX_EJECTED_PERCENT,
                request_buffering: None,
                tls: None,
                protocol: defaults::UPSTREAM_PROTOCOL,
                h2_max_streams: defaults::H2_MAX_STREAMS_PER_CONNECTION,
                h2_max_connections: defaults::H2_MAX_CONNECTIONS,
            },
            Upstream {
                name: "b".into(),
                servers: vec![
                    UpstreamAddr::Host {
                        host: "localhost".into(),
                        port: 6080,
                    },
                    UpstreamAddr::Ip("[::1]:81".parse().expect("addr")),
                ],
                balance: Balance::LeastConn,
                keepalive: 0,
                keepalive_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_millis(300),
                response_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(3600),
                retries: 0,
                sse_heartbeat: None,
                tcp_keepalive: Some(Duration::from_secs(45)),
                health: Some(Health {
                    path: Some("/health?full=1".into()),
                    interval: Duration::from_millis(500),
                    timeout: Duration::from_secs(1),
                    rise: 1,
                    fall: 5,
                }),
                passive: Passive {
                    max_fails: 0,
                    cooldown: Duration::from_secs(30),
                    statuses: vec![502, 504],
                },
                on_demand: None,
                max_ejected_percent: defaults::MAX_EJECTED_PERCENT,
                request_buffering: None,
                tls: None,
                protocol: defaults::UPSTREAM_PROTOCOL,
                h2_max_streams: defaults::H2_MAX_STREAMS_PER_CONNECTION,
                h2_max_connections: defaults::H2_MAX_CONNECTIONS,
            },
        ],
        warnings: Vec::new(),
    };
    assert_eq!(config, expected);
}

#[test]
fn an_absent_server_table_means_every_default() {
    let text = "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[[listeners.web.routes]]\nrespond = { status = 200 }\n";
    let config = load_str(text, None).expect("valid");
    assert_eq!(config.server, Server::default());
    assert_eq!(config.server.shutdown_grace, defaults::SHUTDOWN_GRACE);
    assert_eq!(config.server.log.level, defaults::LOG_LEVEL);
}

#[test]
fn port_zero_may_be_listened_on_by_several_listeners() {
    let text = r#"
[listeners.a]
listen = ["127.0.0.1:0", "127.0.0.1:0"]
[[listeners.a.routes]]
respond = { status = 200 }
[listeners.b]
listen = ["0.0.0.0:0", "[::]:8080", "0.0.0.0:8080"]
[[listeners.b.routes]]
respond = { status = 200 }
"#;
    let config = load_str(text, None).expect("port 0 = any free port; v4 and v6 are separate");
    assert_eq!(config.listeners.len(), 2);
}

#[test]
fn a_tcp_listener_forwards_to_one_upstream_with_tcp_defaults() {
    let text = r#"
[listeners.amqp]
listen = ["127.0.0.1:5673", "unix:/tmp/amqp.sock"]
protocol = "tcp"
upstream = "rabbit"

[listeners.pg]
listen = "127.0.0.1:6432"
protocol = "tcp"
upstream = "db"
idle_timeout = "2h"
max_connections = 100
tcp_keepalive = "off"

[upstreams.rabbit]
servers = ["127.0.0.1:5672"]

[upstreams.db]
servers = ["unix:/run/postgresql/.s.PGSQL.5432"]
"#;
    let config = load_str(text, None).expect("valid");
    let amqp = &config.listeners[0];
    assert_eq!(amqp.name, "amqp");
    assert_eq!(amqp.protocol, Protocol::Tcp);
    assert_eq!(amqp.upstream.as_deref(), Some("rabbit"));
    assert_eq!(amqp.idle_timeout, defaults::TCP_IDLE_TIMEOUT);
    assert_eq!(amqp.max_connections, defaults::MAX_CONNECTIONS);
    assert_eq!(amqp.tcp_keepalive, Some(defaults::TCP_KEEPALIVE));
    assert_eq!(amqp.listen.len(), 2);
    assert!(amqp.routes.is_empty());

    let pg = &config.listeners[1];
    assert_eq!(pg.protocol, Protocol::Tcp);
    assert_eq!(pg.upstream.as_deref(), Some("db"));
    assert_eq!(pg.idle_timeout, Duration::from_secs(7200));
    assert_eq!(pg.max_connections, 100);
    assert_eq!(pg.tcp_keepalive, None);
    assert!(pg.routes.is_empty());
}

#[test]
fn an_http_listener_keeps_its_own_idle_default_and_no_upstream() {
    let text = "[listeners.web]\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n[[listeners.web.routes]]\nrespond = { status = 200 }\n";
    let web = &load_str(text, None).expect("valid").listeners[0];
    assert_eq!(web.protocol, Protocol::Http);
    assert_eq!(web.upstream, None);
    assert_eq!(web.idle_timeout, defaults::HTTP_IDLE_TIMEOUT);
}

#[test]
fn upstream_keys_default_when_omitted() {
    let text = r#"
[listeners.web]
listen = "127.0.0.1:0"
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["127.0.0.1:3000"]
"#;
    let config = load_str(text, None).expect("valid");
    let app = config.upstream("app").expect("app");
    assert_eq!(app.retries, defaults::RETRIES);
    assert_eq!(app.sse_heartbeat, Some(defaults::SSE_HEARTBEAT));
    assert_eq!(app.tcp_keepalive, Some(defaults::TCP_KEEPALIVE));
    assert_eq!(app.health, None, "no [health] table: no active checks");
}

#[test]
fn upstream_retries_heartbeat_and_keepalive_are_read() {
    let text = r#"
[listeners.web]
listen = "127.0.0.1:0"
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["127.0.0.1:3000", "127.0.0.1:3001", "127.0.0.1:3002"]
retries = 2
sse_heartbeat = "250ms"
tcp_keepalive = "off"
"#;
    let config = load_str(text, None).expect("valid");
    let app = config.upstream("app").expect("app");
    assert_eq!(app.retries, 2);
    assert_eq!(app.sse_heartbeat, Some(Duration::from_millis(250)));
    assert_eq!(app.tcp_keepalive, None);
}

#[test]
fn a_health_table_turns_on_active_checks_with_defaults_for_missing_keys() {
    let text = r#"
[listeners.web]
listen = "127.0.0.1:0"
[[listeners.web.routes]]
upstream = "tcp_checked"
[[listeners.web.routes]]
path = "/api"
upstream = "http_checked"

[upstreams.tcp_checked]
servers = ["127.0.0.1:3000"]
[upstreams.tcp_checked.health]

[upstreams.http_checked]
servers = ["127.0.0.1:4000"]
[upstreams.http_checked.health]
path = "/healthz"
# A timeout longer than the interval is allowed.
interval = "1s"
timeout = "3s"
fall = 1
"#;
    let config = load_str(text, None).expect("valid");
    assert_eq!(
        config.upstream("tcp_checked").expect("upstream").health,
        Some(Health {
            path: None,
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            rise: defaults::HEALTH_RISE,
            fall: defaults::HEALTH_FALL,
        }),
        "an empty [health] table: TCP connect checks at the defaults"
    );
    assert_eq!(
        config.upstream("http_checked").expect("upstream").health,
        Some(Health {
            path: Some("/healthz".into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            rise: defaults::HEALTH_RISE,
            fall: 1,
        })
    );
}

#[test]
fn passed_in_sockets_reach_the_model_as_written() {
    let text = r#"
[admin]
listen = "systemd:admin"

[listeners.web]
listen = ["systemd:web", "fd:3"]

[[listeners.web.routes]]
respond = { status = 200 }
"#;
    let config = load_str(text, Some(Path::new("/etc/tidegate/tidegate.toml"))).expect("loads");
    // No `mode=` is added to a socket systemd created: its mode is the socket unit's.
    assert_eq!(
        config.admin.listen,
        Some(ListenAddr::Systemd("admin".into()))
    );
    assert_eq!(
        config.listeners[0].listen,
        [ListenAddr::Systemd("web".into()), ListenAddr::Fd(3)]
    );
}
