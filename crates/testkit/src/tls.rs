//! Certificates made in the test and a TLS client: [`TestCa`] (rcgen, ring) writes leaf
//! certificates and keys as PEM files for a TLS listener to load, and [`TestCa::connect`]
//! opens a verified TLS connection (rustls) to check what a listener serves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::Addr;

/// A client's TLS connection over TCP.
pub type TlsClient = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// (year, month, day), UTC.
pub type Date = (i32, u8, u8);

/// A test certificate authority that signs leaf certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA (`CN=tidegate test CA`) with a fresh key.
    pub fn new() -> anyhow::Result<TestCa> {
        TestCa::named("tidegate test CA")
    }

    /// A new CA with the common name `cn` and a fresh key (a CA that did not sign a
    /// server's certificate is an unknown issuer only under another name: under the
    /// same one, the signature fails to verify).
    pub fn named(cn: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        Ok(TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// Writes `FILE.pem` (the leaf, then this CA) and `FILE.key` (PKCS#8) in `dir`: a
    /// certificate for `names` (subjectAltName DNS names; CN the first), valid from
    /// 2000 until `not_after` (`None`: 2099-01-01), signed by this CA.
    pub fn leaf(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        not_after: Option<Date>,
    ) -> anyhow::Result<()> {
        let first = names.first().context("a certificate needs a name")?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, *first);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        let (y, m, d) = not_after.unwrap_or((2099, 1, 1));
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = format!("{}{}", cert.pem(), self.issuer.pem());
        std::fs::write(dir.join(format!("{file}.pem")), chain)?;
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem())?;
        Ok(())
    }

    /// Writes the CA's certificate to `dir/ca.pem` (for `curl --cacert`).
    pub fn write_ca(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("ca.pem"), self.issuer.pem())?;
        Ok(())
    }

    /// A rustls client config that trusts this CA only.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }

    /// A rustls server config serving a new leaf for `names` signed by this CA (for a
    /// TLS backend, e.g. behind a `tls_passthrough` listener).
    pub fn server_config(&self, names: &[&str]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        self.server_config_until(names, None)
    }

    /// [`TestCa::server_config`] with a leaf valid from 2000 until `not_after` (`None`:
    /// rcgen's default validity), e.g. one that has expired.
    pub fn server_config_until(
        &self,
        names: &[&str],
        not_after: Option<Date>,
    ) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let first = names.first().context("a certificate needs a name")?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, *first);
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], der)?,
        ))
    }

    /// A TLS acceptor over [`TestCa::server_config`] (a TLS backend's side).
    pub fn acceptor(&self, names: &[&str]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        Ok(tokio_rustls::TlsAcceptor::from(self.server_config(names)?))
    }

    /// A TLS connection to `addr` (TCP) for the SNI name `name`, verified against this
    /// CA, within `within`.
    pub async fn connect(
        &self,
        addr: &Addr,
        name: &str,
        within: Duration,
    ) -> anyhow::Result<TlsClient> {
        self.connect_sni(addr, name, true, within).await
    }

    /// [`TestCa::connect`], sending the SNI extension or not (`sni`); the certificate is
    /// verified for `name` either way.
    pub async fn connect_sni(
        &self,
        addr: &Addr,
        name: &str,
        sni: bool,
        within: Duration,
    ) -> anyhow::Result<TlsClient> {
        let Addr::Tcp(sa) = addr else {
            anyhow::bail!("TLS tests connect over TCP, not {addr}");
        };
        let mut config = (*self.client_config()?).clone();
        config.enable_sni = sni;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())?;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(sa).await?;
            anyhow::Ok(connector.connect(server_name, tcp).await?)
        };
        tokio::time::timeout(within, handshake)
            .await
            .with_context(|| format!("TLS handshake with {addr} as {name}"))?
    }
}

/// The DER of the certificate the server presented on `s`.
pub fn peer_certificate(s: &TlsClient) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}
