//! A valid file becomes the typed model: values parsed, defaults filled in, listeners and
//! upstreams sorted by name.

use std::path::Path;
use std::time::Duration;

use tidegate_config::defaults;
use tidegate_config::{
    load_str, Balance, Config, HostMatch, ListenAddr, Listener, Log, LogFormat, LogLevel, Protocol,
    Route, RouteAction, Server, UnixListen, Upstream, UpstreamAddr,
};

#[test]
fn every_supported_key_reaches_the_model() {
    let text = r#"
[server]
shutdown_grace = "0s"
workers = 4
log = { level = "debug", format = "json" }

[listeners.zeta]
listen = "[::1]:0"
header_timeout = "250ms"
idle_timeout = "2m"
max_connections = 5
max_header_size = 16384
tcp_keepalive = "off"
routes = [{ host = "*.Example.COM", path = "/api", upstream = "b" }]

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
                header_timeout: defaults::HEADER_TIMEOUT,
                idle_timeout: defaults::HTTP_IDLE_TIMEOUT,
                max_connections: defaults::MAX_CONNECTIONS,
                max_header_size: 1 << 20,
                tcp_keepalive: Some(Duration::from_secs(30)),
                routes: vec![
                    Route {
                        host: Some(HostMatch::Exact("ci.example.com".into())),
                        path: "/".into(),
                        action: RouteAction::Upstream("a".into()),
                    },
                    Route {
                        host: None,
                        path: "/healthz".into(),
                        action: RouteAction::Respond {
                            status: 503,
                            body: String::new(),
                        },
                    },
                ],
            },
            Listener {
                name: "zeta".into(),
                listen: vec![ListenAddr::Tcp("[::1]:0".parse().expect("addr"))],
                protocol: Protocol::Http,
                header_timeout: Duration::from_millis(250),
                idle_timeout: Duration::from_secs(120),
                max_connections: 5,
                max_header_size: 16384,
                tcp_keepalive: None,
                routes: vec![Route {
                    host: Some(HostMatch::Suffix(".example.com".into())),
                    path: "/api".into(),
                    action: RouteAction::Upstream("b".into()),
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
            },
        ],
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
