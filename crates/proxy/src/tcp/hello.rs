//! The SNI name of a TLS ClientHello, read from the first bytes a client sends, for
//! `tls_passthrough`: the connection is routed by it and relayed untouched (the bytes
//! read here go first to the upstream), so nothing is decrypted and no key is needed.
//!
//! Only what routing needs is parsed (RFC 8446 §4.1.2, RFC 6066 §3): the handshake
//! records' framing, the ClientHello's fixed fields and its extensions, looking for
//! `server_name`. Input is the network's: every length is checked, nothing panics, and
//! a ClientHello is at most [`MAX_HELLO`] bytes.

/// The largest ClientHello accepted (handshake message bytes, over as many records as
/// it takes): one full record, far above what browsers send (about 2 KiB with
/// post-quantum key shares). Held per connection, unauthenticated, until the upstream
/// is picked: kept small so that many silent half-hellos cost little.
pub const MAX_HELLO: usize = 16 * 1024;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not all of the ClientHello is here yet: read until there are `need` bytes
    /// (the end of the record in progress), then parse again.
    Incomplete {
        /// Bytes needed before parsing can get further.
        need: usize,
    },
    /// A whole ClientHello: its SNI host name, lowercase (`None`: it sent none).
    Sni(Option<String>),
    /// Not a TLS ClientHello (or one over [`MAX_HELLO`]).
    NotTls,
}

/// Reads the ClientHello at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Hello {
    // The handshake message, gathered from consecutive handshake records.
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        let at = bytes.len() - rest.len();
        let Some(header) = rest.get(..5) else {
            return Hello::Incomplete { need: at + 5 };
        };
        // Content type 22 (handshake), legacy version 3.x.
        if header[0] != 22 || header[1] != 3 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16_384 + 256 {
            return Hello::NotTls;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Hello::Incomplete { need: at + 5 + len };
        };
        message.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if message.len() > MAX_HELLO + 4 {
            return Hello::NotTls;
        }
        if message.len() < 4 {
            continue;
        }
        // Handshake type 1 (client_hello), 24-bit length.
        if message[0] != 1 {
            return Hello::NotTls;
        }
        let body_len =
            usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
        if body_len > MAX_HELLO {
            return Hello::NotTls;
        }
        if let Some(body) = message.get(4..4 + body_len) {
            return match client_hello_sni(body) {
                Some(sni) => Hello::Sni(sni),
                None => Hello::NotTls,
            };
        }
    }
}

/// A byte reader that fails (`None`) instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector whose length is `width` bytes before it.
    fn vec(&mut self, width: usize) -> Option<Reader<'a>> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(n).map(Reader)
    }
}

/// The SNI host name of a ClientHello body: `Some(None)` when it has none, `None` when
/// the body is malformed.
fn client_hello_sni(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        // No extensions at all (an old client).
        return Some(None);
    }
    let mut extensions = r.vec(2)?;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vec(2)?;
        if kind != 0 {
            continue;
        }
        // server_name: a list of (name_type, name); host_name is type 0.
        let mut list = data.vec(2)?;
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec(2)?;
            if name_type == 0 {
                return Some(host_name(name.0));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// A host name as routes compare it: ASCII letters, digits, `-`, `_` and dots,
/// lowercase; anything else is no name (the default upstream takes it).
fn host_name(raw: &[u8]) -> Option<String> {
    let ok = !raw.is_empty()
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| String::from_utf8_lossy(raw).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with `sni` (none: no server_name extension), in one record.
    pub(crate) fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        // An extension before server_name (supported_versions).
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = sni {
            let n = name.len() as u16;
            ext.extend_from_slice(&[0x00, 0x00]);
            ext.extend_from_slice(&(n + 5).to_be_bytes());
            ext.extend_from_slice(&(n + 3).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&n.to_be_bytes());
            ext.extend_from_slice(name.as_bytes());
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn the_sni_name_is_found_lowercase_and_a_hello_without_one_has_none() {
        assert_eq!(
            parse(&hello(Some("A.Example.com"))),
            Hello::Sni(Some("a.example.com".into()))
        );
        assert_eq!(parse(&hello(None)), Hello::Sni(None));
    }

    #[test]
    fn a_hello_cut_anywhere_is_incomplete_and_other_bytes_are_not_tls() {
        let h = hello(Some("a.example.com"));
        for cut in 0..h.len() {
            assert!(
                matches!(parse(&h[..cut]), Hello::Incomplete { need } if need > cut),
                "cut at {cut}"
            );
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Hello::NotTls);
    }

    #[test]
    fn a_hello_over_two_records_is_read_whole() {
        let h = hello(Some("split.example.com"));
        let msg = &h[5..];
        let (a, b) = msg.split_at(10);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[22, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(parse(&two), Hello::Sni(Some("split.example.com".into())));
    }
}
