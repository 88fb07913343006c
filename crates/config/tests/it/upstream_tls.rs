//! An upstream's `tls`, `protocol` and `h2_max_streams_per_connection`: the model they
//! become (defaults, the CA file read, system roots), `insecure_skip_verify`'s warning,
//! and each error at the value that caused it.

use std::path::{Path, PathBuf};

use tidegate_config::{defaults, load_str, UpstreamProtocol};

/// `examples/`'s folder as the config's folder: `certs/example.pem` resolves.
fn origin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/tidegate.toml")
}

/// An HTTP listener routing to upstream `app`, whose table has `line` on line 6.
fn config(line: &str) -> String {
    format!(
        "[listeners.web]\nlisten = [\"127.0.0.1:0\"]\nroutes = [ {{ upstream = \"app\" }} ]\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n{line}\n"
    )
}

fn errors_at(text: &str, origin: &Path) -> Vec<String> {
    match load_str(text, Some(origin)) {
        Ok(_) => panic!("expected errors for\n{text}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn upstream_tls_and_protocol_load_with_their_defaults() {
    let c = load_str(&config(""), Some(&origin())).expect("valid");
    let app = &c.upstreams[0];
    assert!(app.tls.is_none());
    assert_eq!(app.protocol, defaults::UPSTREAM_PROTOCOL);
    assert_eq!(app.protocol, UpstreamProtocol::Http1);
    assert_eq!(app.h2_max_streams, defaults::H2_MAX_STREAMS_PER_CONNECTION);
    assert_eq!(app.h2_max_connections, defaults::H2_MAX_CONNECTIONS);

    let text = config(
        "tls = { ca = \"certs/example.pem\", server_name = \"app.internal\" }\nprotocol = \"h2\"\nh2_max_streams_per_connection = 8\nh2_max_connections = 3",
    );
    let c = load_str(&text, Some(&origin())).expect("valid");
    let app = &c.upstreams[0];
    let tls = app.tls.as_ref().expect("tls");
    assert_eq!(
        tls.ca.as_deref(),
        Some(origin().with_file_name("certs/example.pem").as_path())
    );
    assert_eq!(tls.roots.len(), 1);
    assert_eq!(tls.server_name.as_deref(), Some("app.internal"));
    assert!(!tls.insecure_skip_verify);
    assert_eq!(app.protocol, UpstreamProtocol::H2);
    assert_eq!(app.h2_max_streams, 8);
    assert_eq!(app.h2_max_connections, 3);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // The system's CAs (this machine has a bundle: a test needs it, it does not skip).
    let c = load_str(&config("tls = true"), Some(&origin())).expect("valid");
    let tls = c.upstreams[0].tls.as_ref().expect("tls");
    assert!(tls.ca.is_none() && !tls.roots.is_empty());
    let c = load_str(&config("tls = false"), Some(&origin())).expect("valid");
    assert!(c.upstreams[0].tls.is_none());
}

#[test]
fn insecure_skip_verify_is_a_warning_at_its_key() {
    let text = config("tls = { insecure_skip_verify = true }");
    let c = load_str(&text, Some(&origin())).expect("a warning, not an error");
    let tls = c.upstreams[0].tls.as_ref().expect("tls");
    assert!(tls.insecure_skip_verify && tls.roots.is_empty());
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = c.warnings[0].to_string();
    let col = "tls = { insecure_skip_verify = true }"
        .find("true")
        .expect("value")
        + 1;
    assert!(
        w.contains(&format!(":6:{col}: upstreams.app.tls.insecure_skip_verify"))
            && w.contains("not verified"),
        "{w}"
    );
}

#[test]
fn upstream_tls_errors_are_named_at_their_key() {
    let o = origin();
    let cases = [
        (
            "tls = { ca = \"missing.pem\" }",
            "\"missing.pem\"",
            "upstreams.app.tls.ca: cannot read missing.pem: No such file or directory (ENOENT)",
        ),
        (
            "tls = { ca = \"certs/example.key\" }",
            "\"certs/example.key\"",
            "upstreams.app.tls.ca: certs/example.key holds no certificate",
        ),
        (
            "tls = { ca = \"\" }",
            "\"\"",
            "upstreams.app.tls.ca: expected a file path",
        ),
        (
            "tls = { server_name = \"not a name!\" }",
            "\"not a name!\"",
            "upstreams.app.tls.server_name: \"not a name!\" is not a valid host name or IP address",
        ),
        (
            "tls = { verify = false }",
            "verify",
            "upstreams.app.tls.verify: unknown key",
        ),
        (
            "tls = \"yes\"",
            "\"yes\"",
            "upstreams.app.tls: expected true, false or a table",
        ),
        (
            "protocol = \"h3\"",
            "\"h3\"",
            r#"upstreams.app.protocol: expected one of "http1", "h2", found "h3""#,
        ),
        (
            "h2_max_streams_per_connection = 0",
            "0",
            "upstreams.app.h2_max_streams_per_connection: expected a whole number of at least 1",
        ),
        (
            "h2_max_connections = 0",
            "0",
            "upstreams.app.h2_max_connections: expected a whole number of at least 1",
        ),
    ];
    for (line, at, rest) in cases {
        let text = config(line);
        let col = line.find(at).expect("the value under test") + 1;
        let want = format!("{}:6:{col}: {rest}", o.display());
        let errors = errors_at(&text, &o);
        assert!(
            errors.iter().any(|e| e.starts_with(&want)),
            "want {want}\nfor {text}\ngot {errors:#?}"
        );
    }
}

#[test]
fn a_tcp_listener_refuses_an_upstream_with_tls_or_h2() {
    for line in ["tls = true", "protocol = \"h2\""] {
        let text = format!(
            "[listeners.raw]\nlisten = [\"127.0.0.1:0\"]\nprotocol = \"tcp\"\nupstream = \"app\"\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n{line}\n"
        );
        let errors = errors_at(&text, &origin());
        assert!(
            errors.iter().any(|e| e
                .contains("listeners.raw.upstream: upstream \"app\" has tls or protocol = \"h2\"")),
            "{errors:#?}"
        );
    }
}
