//! `[server] access_log`: `to` and `format`, defaults, relative paths, errors.

use std::path::Path;

use tidegate_config::{defaults, load_str, AccessLogTo, LogFormat};

const LISTENER: &str =
    "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[[listeners.web.routes]]\nrespond = { status = 204 }\n";

fn load(server: &str) -> Result<tidegate_config::Config, Vec<String>> {
    let text = format!("[server]\n{server}\n{LISTENER}");
    load_str(&text, Some(Path::new("/srv/tg/tidegate.toml")))
        .map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

#[test]
fn the_access_log_is_off_unless_configured() {
    let c = load("").expect("valid");
    assert_eq!(c.server.access_log.to, AccessLogTo::Off);
    assert_eq!(c.server.access_log.to, defaults::ACCESS_LOG_TO);
    assert_eq!(c.server.access_log.format, defaults::ACCESS_LOG_FORMAT);
}

#[test]
fn stdout_off_and_paths_relative_to_the_config_folder() {
    let c = load(r#"access_log = { to = "stdout" }"#).expect("valid");
    assert_eq!(c.server.access_log.to, AccessLogTo::Stdout);
    assert_eq!(c.server.access_log.format, LogFormat::Text);
    let c = load(r#"access_log = { to = "off", format = "json" }"#).expect("valid");
    assert_eq!(c.server.access_log.to, AccessLogTo::Off);
    let c = load(r#"access_log = { to = "logs/access.log", format = "json" }"#).expect("valid");
    assert_eq!(
        c.server.access_log.to,
        AccessLogTo::File("/srv/tg/logs/access.log".into())
    );
    assert_eq!(c.server.access_log.format, LogFormat::Json);
    let c = load("access_log.to = \"/var/log/tg.log\"").expect("valid");
    assert_eq!(
        c.server.access_log.to,
        AccessLogTo::File("/var/log/tg.log".into())
    );
}

#[test]
fn access_log_errors_name_the_key_and_what_was_expected() {
    let errors = load(r#"access_log = { format = "xml", to = "", level = 1 }"#).unwrap_err();
    assert_eq!(
        errors,
        [
            r#"/srv/tg/tidegate.toml:2:25: server.access_log.format: expected one of "text", "json", found "xml""#,
            r#"/srv/tg/tidegate.toml:2:37: server.access_log.to: expected "stdout", a path or "off", found an empty string"#,
            r#"/srv/tg/tidegate.toml:2:41: server.access_log.level: unknown key; allowed here: to, format"#,
        ]
    );
    let errors = load(r#"access_log = { format = "json" }"#).unwrap_err();
    assert_eq!(
        errors,
        [
            r#"/srv/tg/tidegate.toml:2:14: server.access_log.to: missing; write "stdout", a file path or "off""#
        ]
    );
}
