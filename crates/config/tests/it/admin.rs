//! `[admin]` (`docs/config.md`): the admin API's socket, its connection cap and its idle
//! timer reach the model; an absent table means every default, and the default socket
//! itself is left to the binary (it depends on the environment).

use std::path::Path;
use std::time::Duration;

use tidegate_config::defaults;
use tidegate_config::{load_str, Admin, ListenAddr, UnixListen};

const LISTENER: &str = r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
respond = { status = 200 }
"#;

fn admin(table: &str) -> Admin {
    let text = format!("{table}\n{LISTENER}");
    match load_str(&text, Some(Path::new("/etc/tidegate/tidegate.toml"))) {
        Ok(config) => config.admin,
        Err(errors) => panic!("expected a valid config:\n{errors}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match load_str(text, Some(Path::new("tidegate.toml"))) {
        Ok(config) => panic!("expected errors, loaded {:#?}", config.admin),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn unix(path: &str, mode: Option<u32>) -> Option<ListenAddr> {
    Some(ListenAddr::Unix(UnixListen {
        path: path.into(),
        mode,
        owner: None,
        group: None,
    }))
}

#[test]
fn an_absent_admin_table_means_the_default_socket_and_defaults() {
    let config = load_str(LISTENER, None).expect("valid");
    assert_eq!(config.admin, Admin::default());
    assert_eq!(
        config.admin.listen, None,
        "the binary picks the default socket"
    );
    assert_eq!(
        config.admin.max_connections,
        defaults::ADMIN_MAX_CONNECTIONS
    );
    assert_eq!(config.admin.idle_timeout, defaults::ADMIN_IDLE_TIMEOUT);
    assert_eq!(defaults::ADMIN_MAX_CONNECTIONS, 16);
    assert_eq!(defaults::ADMIN_IDLE_TIMEOUT, Duration::from_secs(10));
}

#[test]
fn every_admin_key_reaches_the_model() {
    let a = admin(
        "[admin]\nlisten = \"unix:/run/tg/admin.sock:mode=660\"\nmax_connections = 201\nidle_timeout = \"300ms\"\n",
    );
    assert_eq!(
        a,
        Admin {
            listen: unix("/run/tg/admin.sock", Some(0o660)),
            max_connections: 201,
            idle_timeout: Duration::from_millis(300),
        }
    );
}

#[test]
fn an_admin_unix_socket_without_a_mode_is_private() {
    let a = admin("[admin]\nlisten = \"unix:admin.sock\"\n");
    assert_eq!(
        a.listen,
        unix(
            "/etc/tidegate/admin.sock",
            Some(defaults::ADMIN_SOCKET_MODE)
        ),
        "relative to the config file's folder, mode 0600"
    );
    assert_eq!(defaults::ADMIN_SOCKET_MODE, 0o600);
    assert_eq!(a.max_connections, defaults::ADMIN_MAX_CONNECTIONS);
    assert_eq!(a.idle_timeout, defaults::ADMIN_IDLE_TIMEOUT);
}

#[test]
fn an_admin_tcp_address_is_allowed() {
    let a = admin("[admin]\nlisten = \"127.0.0.1:0\"\n");
    assert_eq!(
        a.listen,
        Some(ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr")))
    );
}

#[test]
fn admin_errors_are_all_reported_with_their_place() {
    let text = format!(
        "[admin]\nlisten = \"localhost:9000\"\nmax_connections = 0\nidle_timeout = 10\nidle = \"1s\"\n{LISTENER}"
    );
    assert_eq!(
        errors(&text),
        [
            r#"tidegate.toml:2:10: admin.listen: "localhost:9000": a listener needs an IP address, not a host name (write "127.0.0.1:9000", "[::1]:9000" or "0.0.0.0:9000")"#,
            "tidegate.toml:3:19: admin.max_connections: expected a whole number of at least 1, found 0",
            r#"tidegate.toml:4:16: admin.idle_timeout: expected a duration like "250ms", "10s" or "5m", found 10 (a duration is a string with a unit)"#,
            r#"tidegate.toml:5:1: admin.idle: unknown key; allowed here: listen, max_connections, idle_timeout"#,
        ]
    );
    let zero = format!("[admin]\nidle_timeout = \"0s\"\n{LISTENER}");
    assert_eq!(
        errors(&zero),
        [r#"tidegate.toml:2:16: admin.idle_timeout: must be more than zero, found "0s""#]
    );
}

#[test]
fn the_admin_socket_cannot_be_a_listeners_address() {
    let text = r#"
[admin]
listen = "unix:/tmp/tg.sock"

[listeners.web]
listen = ["unix:/tmp/tg.sock"]
[[listeners.web.routes]]
respond = { status = 200 }
"#;
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("tidegate.toml:6:11: listeners.web.listen[0]: unix:/tmp/tg.sock is listened on twice: also at admin.listen (tidegate.toml:3:10)"),
        "{errors:#?}"
    );
}
