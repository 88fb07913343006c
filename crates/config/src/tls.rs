//! The certificates of a TLS listener, loaded while the config is validated: each
//! `{ cert, key }` pair is read (PEM), the key checked against its certificate, and the
//! names and dates read from the certificate, so `check` refuses what a handshake
//! would fail on and the data plane gets a key ready to sign with.
//!
//! Boundaries: files and parsing only (rustls for the key types and the key check,
//! with the ring provider; x509-parser for names and dates). No socket, no handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate within this long of its `notAfter` is warned about (`check`, start,
/// reload).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// One loaded `{ cert, key }` pair of a TLS listener.
#[derive(Clone)]
pub struct Certificate {
    /// The `cert` file (resolved against the config file's folder).
    pub cert_path: PathBuf,
    /// The `key` file (likewise).
    pub key_path: PathBuf,
    /// The DNS names it serves, lowercase: its subjectAltName DNS entries (wildcards as
    /// `*.example.com`), or its subject's common name when it has none.
    pub names: Vec<String>,
    /// Its issuer's distinguished name (`CN=…, O=…`).
    pub issuer: String,
    /// Its `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The chain and the signing key, as rustls uses them.
    pub key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Certificate {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Certificate {
    // The same files with the same certificates: a key that matches the same
    // certificate is the same key.
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.key.cert == other.key.cert
    }
}

impl Certificate {
    /// Its `notAfter` as `2026-12-04T18:51:52Z`.
    pub fn not_after_text(&self) -> String {
        format_unix(self.not_after)
    }

    /// Seconds until its `notAfter` (negative once expired).
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        self.not_after - unix_seconds(now)
    }

    /// Whether it is served for the (lowercase) SNI name `host`: an exact name, or a
    /// wildcard `*.example.com` that matches one label (`a.example.com`, not
    /// `a.b.example.com` nor `example.com`).
    pub fn serves(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, host))
    }
}

/// Whether the certificate name `pattern` covers `host` (both lowercase).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// Which of the pair's two files a problem is about (the key that named it gets the
/// error's position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The `cert` key.
    Cert,
    /// The `key` key.
    Key,
}

/// Why a pair could not be loaded, and which file it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The key whose file is at fault.
    pub part: Part,
    /// What went wrong, naming the file.
    pub message: String,
}

fn fail(part: Part, message: String) -> LoadError {
    LoadError { part, message }
}

/// Reads and checks one pair. `shown_cert` and `shown_key` are the paths as written in
/// the config (for messages); `cert` and `key` are the resolved ones. A certificate
/// whose `notAfter` is before `now` is refused.
pub fn load(
    cert: &Path,
    key: &Path,
    shown: (&str, &str),
    now: SystemTime,
) -> Result<Certificate, LoadError> {
    let (shown_cert, shown_key) = shown;
    let cert_pem =
        read(cert).map_err(|e| fail(Part::Cert, format!("cannot read {shown_cert}: {e}")))?;
    let key_pem =
        read(key).map_err(|e| fail(Part::Key, format!("cannot read {shown_key}: {e}")))?;
    let mut chain = Vec::new();
    for c in CertificateDer::pem_slice_iter(&cert_pem) {
        match c {
            Ok(c) => chain.push(c),
            Err(e) => return Err(fail(Part::Cert, format!("{shown_cert}: invalid PEM: {e}"))),
        }
    }
    if chain.is_empty() {
        return Err(fail(
            Part::Cert,
            format!("{shown_cert} holds no certificate (a PEM block -----BEGIN CERTIFICATE-----)"),
        ));
    }
    let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(fail(
                Part::Key,
                format!(
                    "{shown_key} holds no private key (a PEM block -----BEGIN PRIVATE KEY-----, \
                     RSA PRIVATE KEY or EC PRIVATE KEY)"
                ),
            ))
        }
        Err(e) => return Err(fail(Part::Key, format!("{shown_key}: invalid PEM: {e}"))),
    };
    let signing = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| {
        fail(
            Part::Key,
            format!("{shown_key}: unsupported private key: {e}"),
        )
    })?;
    let (names, issuer, not_after) = describe(&chain[0]).map_err(|e| {
        fail(
            Part::Cert,
            format!("{shown_cert}: invalid certificate: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // A key type whose public half rustls cannot derive: the handshake tells.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(fail(
                Part::Key,
                format!("the key in {shown_key} does not match the certificate in {shown_cert}"),
            ))
        }
        Err(e) => {
            return Err(fail(
                Part::Key,
                format!("cannot check the key in {shown_key} against {shown_cert}: {e}"),
            ))
        }
    }
    let loaded = Certificate {
        cert_path: cert.to_path_buf(),
        key_path: key.to_path_buf(),
        names,
        issuer,
        not_after,
        key: Arc::new(certified),
    };
    if loaded.seconds_left(now) < 0 {
        return Err(fail(
            Part::Cert,
            format!(
                "the certificate in {shown_cert} expired at {} (notAfter)",
                loaded.not_after_text()
            ),
        ));
    }
    Ok(loaded)
}

/// Reads an upstream's `ca` file: the PEM certificates it holds, each one usable as a
/// trust anchor. `shown` is the path as written in the config (for messages).
pub fn load_ca(path: &Path, shown: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(&pem) {
        match c {
            Ok(c) => certs.push(c),
            Err(e) => return Err(format!("{shown}: invalid PEM: {e}")),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (a PEM block -----BEGIN CERTIFICATE-----)"
        ));
    }
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            format!(
                "{shown}: certificate {} is not a usable CA certificate: {e}",
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// The system's CA certificates (rustls-native-certs: `SSL_CERT_FILE`, `SSL_CERT_DIR`,
/// else the distribution's bundle such as /etc/ssl/certs). `Err` says why there are
/// none.
pub fn system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "no certificate found".to_owned(),
        };
        return Err(why);
    }
    Ok(found.certs)
}

/// The file's bytes, or what the OS said (`No such file or directory (ENOENT)`).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| crate::os_error_text(&e))
}

/// Names, issuer and `notAfter` of an end-entity certificate.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, String, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let issuer = cert.issuer().to_string();
    let not_after = cert.validity().not_after.timestamp();
    Ok((names, issuer, not_after))
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC; proleptic Gregorian).
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("example.com", "example.com"));
        assert!(!name_matches("example.com", "a.example.com"));
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_796_410_312), "2026-12-04T18:51:52Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
    }
}
