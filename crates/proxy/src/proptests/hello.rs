//! `tcp::hello::parse` (the SNI of a ClientHello, for `tls_passthrough`): any bytes are
//! answered without a panic, a prefix of a ClientHello is `Incomplete`, and a real
//! ClientHello (from rustls, with any host name) gives its name.

use std::sync::Arc;

use proptest::prelude::*;

use crate::tcp::hello::{parse, Hello};

/// The first flight of a rustls client for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server =
        tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_owned()).expect("a DNS name");
    let mut conn =
        tokio_rustls::rustls::ClientConnection::new(Arc::new(config), server).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn any_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn a_real_client_hello_gives_its_name_and_any_prefix_is_incomplete(
        labels in proptest::collection::vec("[a-z0-9]{1,12}", 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let name = format!("{}.test", labels.join("."));
        let hello = client_hello(&name);
        prop_assert_eq!(parse(&hello), Hello::Sni(Some(name)));
        let at = cut.index(hello.len());
        let incomplete = matches!(parse(&hello[..at]), Hello::Incomplete { need } if need > at);
        prop_assert!(incomplete, "cut at {}", at);
    }
}
