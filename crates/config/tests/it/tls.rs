//! A listener's `tls` table: the model it becomes (defaults, names read from the
//! certificate, relative paths), and each error at the value that named the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidegate_config::{defaults, load_str, TlsVersion};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `examples/tls.toml`'s folder as the config's folder: `certs/example.pem` resolves.
pub(crate) fn origin() -> PathBuf {
    examples().join("tidegate.toml")
}

fn listener(tls: &str, protocol: &str) -> String {
    let routes = if protocol == "tcp" {
        "protocol = \"tcp\"\nupstream = \"app\"\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n"
    } else {
        "[[listeners.web.routes]]\nrespond = { status = 200 }\n"
    };
    format!("[listeners.web]\nlisten = [\"127.0.0.1:0\"]\ntls = {tls}\n{routes}")
}

pub(crate) fn errors_at(text: &str, origin: &Path) -> Vec<String> {
    match load_str(text, Some(origin)) {
        Ok(_) => panic!("expected errors for\n{text}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn a_tls_listener_loads_with_its_defaults_and_the_names_of_its_certificate() {
    let text = listener(
        r#"{ certificates = [ { cert = "certs/example.pem", key = "certs/example.key" } ] }"#,
        "http",
    );
    let config = load_str(&text, Some(&origin())).expect("valid");
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.min_version, defaults::TLS_MIN_VERSION);
    assert_eq!(tls.handshake_timeout, defaults::TLS_HANDSHAKE_TIMEOUT);
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    let c = &tls.certificates[0];
    assert_eq!(c.names, ["localhost", "*.localhost"]);
    assert_eq!(c.cert_path, examples().join("certs/example.pem"));
    assert!(c.issuer.contains("CN=localhost"), "{}", c.issuer);
    assert!(c.serves("a.localhost") && !c.serves("a.b.localhost"));
    assert!(config.warnings.is_empty());

    let text = listener(
        r#"{ certificates = [ { cert = "certs/example.pem", key = "certs/example.key" } ], min_version = "1.3", handshake_timeout = "2s" }"#,
        "tcp",
    );
    let config = load_str(&text, Some(&origin())).expect("valid");
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
    assert!(tls.alpn.is_empty(), "a TCP listener offers no ALPN");
}

#[test]
fn tls_table_errors_are_named_at_their_key() {
    let o = origin();
    let pair = r#"{ cert = "certs/example.pem", key = "certs/example.key" }"#;
    let cases = [
        (
            format!("{{ certificates = [ {pair} ], ciphers = [] }}"),
            "http",
            r#"ciphers"#,
            "listeners.web.tls.ciphers: unknown key",
        ),
        (
            format!("{{ certificates = [ {pair} ], min_version = \"1.1\" }}"),
            "http",
            r#""1.1""#,
            r#"listeners.web.tls.min_version: expected one of "1.2", "1.3", found "1.1""#,
        ),
        (
            format!("{{ certificates = [ {pair} ], alpn = [\"http/1.1\"] }}"),
            "tcp",
            r#"alpn"#,
            r#"listeners.web.tls.alpn: only for HTTP listeners"#,
        ),
        (
            format!("{{ certificates = [ {pair} ], alpn = [\"h3\"] }}"),
            "http",
            r#""h3""#,
            r#"listeners.web.tls.alpn[0]: expected "h2" or "http/1.1", found "h3""#,
        ),
        (
            "{ certificates = [] }".to_owned(),
            "http",
            r#"[]"#,
            "listeners.web.tls.certificates: a TLS listener needs at least one certificate",
        ),
        (
            "{ min_version = \"1.2\" }".to_owned(),
            "http",
            r#"{"#,
            "listeners.web.tls.certificates: missing",
        ),
        (
            "{ certificates = [ { cert = \"certs/example.pem\" } ] }".to_owned(),
            "http",
            r#"{ cert ="#,
            "listeners.web.tls.certificates[0].key: missing",
        ),
        (
            "{ certificates = [ { cert = \"certs/example.pem\", key = \"certs/example.pem\" } ] }"
                .to_owned(),
            "http",
            r#""certs/example.pem" }"#,
            "listeners.web.tls.certificates[0].key: certs/example.pem holds no private key",
        ),
        (
            "{ certificates = [ { cert = \"certs/example.key\", key = \"certs/example.key\" } ] }"
                .to_owned(),
            "http",
            r#""certs/example.key","#,
            "listeners.web.tls.certificates[0].cert: certs/example.key holds no certificate",
        ),
        (
            "{ certificates = [ { cert = \"tidegate.toml\", key = \"certs/example.key\" } ] }"
                .to_owned(),
            "http",
            r#""tidegate.toml""#,
            "listeners.web.tls.certificates[0].cert: cannot read tidegate.toml: No such file or directory (ENOENT)",
        ),
    ];
    for (tls, protocol, at, rest) in cases {
        let text = listener(&tls, protocol);
        error_on_line_3(&text, &format!("tls = {tls}"), at, rest, &o);
    }
}

/// `text`'s errors include `rest` at line 3 (which reads `line`), at the column of `at`.
pub(crate) fn error_on_line_3(text: &str, line: &str, at: &str, rest: &str, o: &Path) {
    let Some(col) = line.find(at).map(|c| c + 1) else {
        panic!("{at:?} is not in {line:?}");
    };
    let want = format!("{}:3:{col}: {rest}", o.display());
    let errors = errors_at(text, o);
    assert!(
        errors.iter().any(|e| e.starts_with(&want)),
        "want {want}\nfor {text}\ngot {errors:#?}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused_at_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = rcgen::KeyPair::generate().expect("key");
    std::fs::write(dir.path().join("other.key"), other.serialize_pem()).expect("write");
    let cert = examples().join("certs/example.pem");
    let text = listener(
        &format!(
            "{{ certificates = [ {{ cert = {:?}, key = \"other.key\" }} ] }}",
            cert.display().to_string()
        ),
        "http",
    );
    let errors = errors_at(&text, &dir.path().join("tidegate.toml"));
    let want = format!(
        "listeners.web.tls.certificates[0].key: the key in other.key does not match the certificate in {}",
        cert.display()
    );
    assert!(errors.iter().any(|e| e.ends_with(&want)), "{errors:#?}");
}

#[test]
fn tls_passthrough_loads_and_its_errors_are_named() {
    let tcp = |extra: &str| {
        format!(
            "[listeners.edge]\nlisten = [\"127.0.0.1:0\"]\nprotocol = \"tcp\"\nupstream = \"d\"\n{extra}\n\
             [upstreams.d]\nservers = [\"127.0.0.1:9\"]\n[upstreams.a]\nservers = [\"127.0.0.1:8\"]\n"
        )
    };
    let text = tcp(
        r#"tls_passthrough = { routes = [ { sni = "A.test", upstream = "a" }, { sni = "*.b.test", upstream = "a" } ] }"#,
    );
    let config = load_str(&text, Some(Path::new("tidegate.toml"))).expect("valid");
    let p = config.listeners[0]
        .tls_passthrough
        .as_ref()
        .expect("passthrough");
    assert_eq!(p.hello_timeout, defaults::TLS_HELLO_TIMEOUT);
    assert_eq!(p.routes.len(), 2);
    assert_eq!(p.routes[0].sni.rank("a.TEST"), Some((2, 6)));
    assert_eq!(p.routes[1].sni.rank("x.y.b.test"), Some((1, 7)));
    assert_eq!(p.routes[1].sni.rank("b.test"), None);

    let at = |text: &str, needle: &str| -> String {
        let (line, col) = text
            .lines()
            .enumerate()
            .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
            .expect("needle");
        format!("tidegate.toml:{line}:{col}: ")
    };
    let cases = [
        (
            tcp(r#"tls_passthrough = { routes = [ { sni = "a.test", upstream = "nope" } ] }"#),
            r#""nope""#,
            r#"listeners.edge.tls_passthrough.routes[0].upstream: no upstream named "nope""#,
        ),
        (
            tcp(r#"tls_passthrough = { routes = [ { sni = "a.test", upstream = "a" }, { sni = "A.TEST", upstream = "d" } ] }"#),
            r#"{ sni = "A.TEST""#,
            "listeners.edge.tls_passthrough.routes[1]: a second route for \"a.test\" would never match",
        ),
        (
            tcp(r#"tls_passthrough = { routes = [ { sni = "a.*.test", upstream = "a" } ] }"#),
            r#""a.*.test""#,
            "listeners.edge.tls_passthrough.routes[0].sni: \"a.*.test\": a wildcard is only allowed as the first label",
        ),
        (
            tcp(r#"tls_passthrough = { routes = [ { upstream = "a" } ], hello = "1s" }"#),
            "hello =",
            "listeners.edge.tls_passthrough.hello: unknown key",
        ),
        (
            tcp("tls_passthrough = { routes = [] }\ntls = { certificates = [] }"),
            "tls_passthrough",
            "listeners.edge.tls_passthrough: tls_passthrough relays TLS untouched and tls terminates it",
        ),
        (
            "[listeners.web]\nlisten = [\"127.0.0.1:0\"]\ntls_passthrough = { routes = [] }\n[[listeners.web.routes]]\nrespond = { status = 200 }\n".to_owned(),
            "tls_passthrough",
            "listeners.web.tls_passthrough: only for TCP listeners",
        ),
    ];
    for (text, needle, rest) in cases {
        let want = format!("{}{rest}", at(&text, needle));
        let errors = errors_at(&text, Path::new("tidegate.toml"));
        assert!(
            errors.iter().any(|e| e.starts_with(&want)),
            "want {want}\nfor {text}\ngot {errors:#?}"
        );
    }
}

#[test]
fn a_certificate_an_earlier_one_covers_is_warned_about() {
    let text = listener(
        r#"{ certificates = [ { cert = "certs/example.pem", key = "certs/example.key" }, { cert = "certs/example.pem", key = "certs/example.key" } ] }"#,
        "http",
    );
    let config = load_str(&text, Some(&origin())).expect("valid: a warning, not an error");
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    let w = config.warnings[0].to_string();
    assert!(
        w.contains("listeners.web.tls.certificates[1].cert") && w.contains("is never served"),
        "{w}"
    );
}
