//! Unix socket addresses: relative paths resolve against the config file's folder,
//! options (mode, owner, group) are parsed and resolved at load time, and a path too long
//! for a socket address is refused.

use std::path::{Path, PathBuf};

use tidegate_config::addr::MAX_UNIX_PATH;
use tidegate_config::{load_file, load_str, ListenAddr, UnixListen, UpstreamAddr};

#[allow(
    clippy::expect_used,
    reason = "a test helper: a failure here fails the test, which is what it should do"
)]
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tidegate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn config_text(listen: &str, server: &str) -> String {
    format!(
        r#"[listeners.web]
listen = ["{listen}"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["{server}"]
"#
    )
}

fn unix_listener(config: &tidegate_config::Config) -> &UnixListen {
    match &config.listeners[0].listen[0] {
        ListenAddr::Unix(u) => u,
        other => panic!("not a unix listener: {other:?}"),
    }
}

#[test]
fn relative_unix_paths_resolve_against_the_config_files_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        dir.path(),
        &config_text("unix:run/web.sock:mode=660", "unix:../app.sock"),
    );
    let config = load_file(&path).expect("valid config");
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    let web = unix_listener(&config);
    assert_eq!(web.path, dir.path().join("run/web.sock"));
    assert!(web.path.is_absolute());
    assert_eq!(web.mode, Some(0o660));
    assert_eq!(
        config.upstreams[0].servers,
        [UpstreamAddr::Unix(dir.path().join("../app.sock"))]
    );
}

#[test]
fn relative_unix_paths_of_the_embedded_config_resolve_against_the_current_dir() {
    let config =
        load_str(&config_text("unix:web.sock", "unix:/run/app.sock"), None).expect("valid config");
    let cwd = std::env::current_dir().expect("current dir");
    assert_eq!(unix_listener(&config).path, cwd.join("web.sock"));
}

#[test]
fn mode_is_octal_and_owner_and_group_resolve_to_ids() {
    for (option, mode) in [
        ("mode=660", 0o660),
        ("mode=0600", 0o600),
        ("mode=777", 0o777),
    ] {
        let text = config_text(&format!("unix:/tmp/t.sock:{option}"), "127.0.0.1:1");
        let config = load_str(&text, None).expect("valid config");
        assert_eq!(unix_listener(&config).mode, Some(mode), "{option}");
    }
    // Names and numbers; `root` (uid and gid 0) exists on every Linux machine.
    let text = config_text(
        "unix:/tmp/t.sock:owner=root:group=root:mode=600",
        "127.0.0.1:1",
    );
    let listener = load_str(&text, None).expect("valid config");
    assert_eq!(
        unix_listener(&listener),
        &UnixListen {
            path: "/tmp/t.sock".into(),
            mode: Some(0o600),
            owner: Some(0),
            group: Some(0),
        }
    );
    let text = config_text("unix:/tmp/t.sock:owner=1234:group=5678", "127.0.0.1:1");
    let listener = load_str(&text, None).expect("valid config");
    assert_eq!(unix_listener(&listener).owner, Some(1234));
    assert_eq!(unix_listener(&listener).group, Some(5678));
}

#[test]
fn unknown_owner_or_group_is_a_load_error() {
    let text = config_text(
        "unix:/tmp/t.sock:owner=no-such-user-tidegate",
        "127.0.0.1:1",
    );
    let errors = load_str(&text, Some(Path::new("t.toml"))).expect_err("unknown user");
    assert_eq!(
        errors.to_string(),
        r#"t.toml:2:11: listeners.web.listen[0]: "unix:/tmp/t.sock:owner=no-such-user-tidegate": no user named "no-such-user-tidegate" on this machine"#
    );
    let text = config_text(
        "unix:/tmp/t.sock:group=no-such-group-tidegate",
        "127.0.0.1:1",
    );
    let errors = load_str(&text, None).expect_err("unknown group");
    assert_eq!(
        errors.to_string(),
        r#"<quickstart>:2:11: listeners.web.listen[0]: "unix:/tmp/t.sock:group=no-such-group-tidegate": no group named "no-such-group-tidegate" on this machine"#
    );
}

#[test]
fn a_socket_path_longer_than_a_socket_address_holds_is_refused() {
    let fits = format!("/{}", "a".repeat(MAX_UNIX_PATH - 1));
    load_str(&config_text(&format!("unix:{fits}"), "127.0.0.1:1"), None).expect("107 bytes fit");

    let long = format!("/{}", "a".repeat(MAX_UNIX_PATH));
    let errors = load_str(&config_text("127.0.0.1:0", &format!("unix:{long}")), None)
        .expect_err("108 bytes do not fit");
    assert_eq!(
        errors.to_string(),
        format!(
            "<quickstart>:6:12: upstreams.app.servers[0]: \"unix:{long}\": the socket path \
             {long} is 108 bytes long; a Unix socket address holds at most 107"
        )
    );

    // The limit applies to the resolved path: a short relative name in a deep folder.
    let dir = tempfile::tempdir().expect("temp dir");
    let deep = dir.path().join("d".repeat(100));
    std::fs::create_dir(&deep).expect("deep dir");
    let path = write_config(&deep, &config_text("unix:web.sock", "127.0.0.1:1"));
    let errors = load_file(&path).expect_err("resolved path too long");
    let socket = deep.join("web.sock");
    assert_eq!(
        errors.to_string(),
        format!(
            "{}:2:11: listeners.web.listen[0]: \"unix:web.sock\": the socket path {} is {} \
             bytes long; a Unix socket address holds at most 107",
            path.display(),
            socket.display(),
            socket.as_os_str().len()
        )
    );
}
