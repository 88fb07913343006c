//! Every config under `examples/` loads, and so does the embedded quickstart.

use std::path::PathBuf;

use std::time::Duration;

use tidegate_config::{
    defaults, load_file, load_str, quickstart, Protocol, RouteAction, UpstreamAddr, QUICKSTART,
};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn every_example_config_loads() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ is readable")
        .map(|e| e.expect("examples/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 4,
        "expected the quickstart and the deployment examples, found {paths:?}"
    );
    let mut failures = Vec::new();
    for path in &paths {
        match load_file(path) {
            Ok(config) => assert_eq!(config.source.as_deref(), Some(path.as_path())),
            Err(errors) => failures.push(errors.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn quickstart_loads_and_serves_a_welcome_page_and_healthz() {
    let config = quickstart();
    assert_eq!(config.source, None);
    assert_eq!(
        config,
        load_str(QUICKSTART, None).expect("quickstart is valid")
    );
    let web = &config.listeners[0];
    assert_eq!(web.listen[0].to_string(), "127.0.0.1:8080");
    let healthz = web
        .routes
        .iter()
        .find(|r| r.path == "/healthz")
        .expect("a /healthz route");
    assert_eq!(
        healthz.action,
        RouteAction::Respond {
            status: 200,
            body: "ok\n".into()
        }
    );
}

#[test]
fn the_broker_example_is_a_tcp_listener_in_front_of_rabbitmq() {
    let config = load_file(&examples_dir().join("broker-tcp.toml")).expect("loads");
    let amqp = config
        .listeners
        .iter()
        .find(|l| l.name == "amqp")
        .expect("an amqp listener");
    assert_eq!(amqp.protocol, Protocol::Tcp);
    assert_eq!(amqp.listen[0].to_string(), "127.0.0.1:5673");
    assert_eq!(amqp.upstream.as_deref(), Some("rabbit"));
    assert_eq!(amqp.idle_timeout, Duration::from_secs(600));
    let rabbit = config.upstream("rabbit").expect("rabbit");
    assert_eq!(
        rabbit.servers,
        [UpstreamAddr::Ip("127.0.0.1:5672".parse().expect("addr"))]
    );
    assert_eq!(rabbit.tcp_keepalive, Some(Duration::from_secs(30)));
    let health = rabbit.health.as_ref().expect("health checks");
    assert_eq!(health.path, None, "a connect check: AMQP is not HTTP");
    assert_eq!(health.rise, defaults::HEALTH_RISE);
}

#[test]
fn the_load_balanced_example_health_checks_over_http() {
    let config = load_file(&examples_dir().join("load-balanced.toml")).expect("loads");
    let health = config
        .upstream("shop")
        .and_then(|u| u.health.as_ref())
        .expect("shop has health checks");
    assert_eq!(health.path.as_deref(), Some("/healthz"));
}
