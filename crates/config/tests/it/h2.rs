//! A listener's `h2` table: its defaults, values within what HTTP/2 allows, and each
//! error at its value; `tls.alpn` with `h2`.

use std::time::Duration;

use tidegate_config::{defaults, load_str, H2};

use crate::tls::{error_on_line_3, errors_at, origin};

fn listener(h2: &str, protocol: &str) -> String {
    let rest = if protocol == "tcp" {
        "protocol = \"tcp\"\nupstream = \"app\"\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n"
    } else {
        "[[listeners.web.routes]]\nrespond = { status = 200 }\n"
    };
    format!("[listeners.web]\nlisten = [\"127.0.0.1:0\"]\nh2 = {h2}\n{rest}")
}

#[test]
fn the_h2_table_has_safe_defaults_and_takes_each_limit() {
    let text = "[listeners.web]\nlisten = [\"127.0.0.1:0\"]\n[[listeners.web.routes]]\nrespond = { status = 200 }\n";
    let config = load_str(text, Some(&origin())).expect("valid");
    let h2 = &config.listeners[0].h2;
    assert_eq!(*h2, H2::default());
    assert_eq!(
        h2.max_concurrent_streams,
        defaults::H2_MAX_CONCURRENT_STREAMS
    );
    assert_eq!(h2.keepalive_interval, Some(defaults::H2_KEEPALIVE_INTERVAL));

    let text = listener(
        r#"{ max_concurrent_streams = 10, max_streams_total = 50, initial_stream_window = "64KiB", initial_connection_window = 65535, max_send_buffer = "1MiB", max_pending_accept_reset_streams = 5, max_local_error_reset_streams = 7, keepalive_interval = "off", keepalive_timeout = "3s" }"#,
        "http",
    );
    let config = load_str(&text, Some(&origin())).expect("valid");
    assert_eq!(
        config.listeners[0].h2,
        H2 {
            max_concurrent_streams: 10,
            max_streams_total: 50,
            initial_stream_window: 64 * 1024,
            initial_connection_window: 65_535,
            max_send_buffer: 1 << 20,
            max_pending_accept_reset_streams: 5,
            max_local_error_reset_streams: 7,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(3),
        }
    );
}

#[test]
fn h2_errors_are_named_at_their_value() {
    let o = origin();
    let cases = [
        (
            "{ streams = 1 }",
            "http",
            "streams",
            "listeners.web.h2.streams: unknown key",
        ),
        (
            "{ max_concurrent_streams = 0 }",
            "http",
            "0",
            "listeners.web.h2.max_concurrent_streams: expected a whole number of at least 1",
        ),
        (
            "{ initial_stream_window = 4294967296 }",
            "http",
            "4294967296",
            "listeners.web.h2.initial_stream_window: must be from 1 to 2147483647 bytes",
        ),
        (
            "{ initial_connection_window = 1000 }",
            "http",
            "1000",
            "listeners.web.h2.initial_connection_window: must be from 65535 to 2147483647 bytes",
        ),
        (
            "{ keepalive_timeout = \"0s\" }",
            "http",
            "\"0s\"",
            "listeners.web.h2.keepalive_timeout: must be more than zero",
        ),
        (
            "{ max_concurrent_streams = 10 }",
            "tcp",
            "h2",
            "listeners.web.h2: only for HTTP listeners",
        ),
    ];
    for (h2, protocol, at, rest) in cases {
        let text = listener(h2, protocol);
        error_on_line_3(&text, &format!("h2 = {h2}"), at, rest, &o);
    }
}

#[test]
fn alpn_takes_h2_and_http11_once_each() {
    let o = origin();
    let pair = r#"{ cert = "certs/example.pem", key = "certs/example.key" }"#;
    let text = format!(
        "[listeners.web]\nlisten = [\"127.0.0.1:0\"]\ntls = {{ certificates = [ {pair} ], alpn = [\"http/1.1\", \"h2\"] }}\n[[listeners.web.routes]]\nrespond = {{ status = 200 }}\n"
    );
    let config = load_str(&text, Some(&o)).expect("valid");
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.alpn, ["http/1.1", "h2"]);
    let text = text.replace(r#"["http/1.1", "h2"]"#, r#"["h2", "h2"]"#);
    let errors = errors_at(&text, &o);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("listeners.web.tls.alpn[1]: \"h2\" is listed twice")),
        "{errors:#?}"
    );
}
