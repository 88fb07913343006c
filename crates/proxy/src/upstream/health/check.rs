//! The check protocol: the `GET` a check writes and how the answer's status line is
//! read (HTTP/1.1 bytes, or one HTTP/2 request through hyper for a `protocol = "h2"`
//! upstream). Opening the connection (and its TLS) is the checker's business.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::errno::describe_io_error;

/// The longest response head a check reads: health pages answer small heads.
const MAX_CHECK_HEAD: usize = 16 * 1024;

/// `GET path` with `Connection: close`; the verdict comes from the final response's
/// status (interim 1xx heads are skipped). The body is not read: the connection is
/// dropped after the head.
pub(super) async fn http_check(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    path: &str,
    host: &str,
) -> Result<(), String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tidegate-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    let io_err =
        |what: &str, e: &io::Error| format!("GET {path}: {what}: {}", describe_io_error(e));
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_err("sending the request", &e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if let Some(end) = find_head_end(&buf) {
            let status = parse_status(&buf[..end])
                .ok_or_else(|| format!("GET {path}: the answer is not an HTTP/1.x response"))?;
            match status {
                // 101 was not asked for: a failure like any other non-2xx/3xx.
                100..=199 if status != 101 => {
                    buf.drain(..end);
                    continue;
                }
                200..=399 => return Ok(()),
                _ => return Err(format!("GET {path} answered {status}")),
            }
        }
        if buf.len() > MAX_CHECK_HEAD {
            return Err(format!(
                "GET {path}: response head over {} KiB",
                MAX_CHECK_HEAD / 1024
            ));
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| io_err("reading the response", &e))?;
        if n == 0 {
            return Err(format!(
                "GET {path}: connection closed before the response head"
            ));
        }
    }
}

/// `GET path` as one HTTP/2 request (prior knowledge, or `h2` negotiated by ALPN), on
/// a connection of its own that ends with the check; the verdict comes from the
/// response's status.
pub(super) async fn h2_check(
    io: crate::upstream::tls::UpstreamIo,
    path: &str,
    host: &str,
    tls: bool,
) -> Result<(), String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| format!("GET {path}: HTTP/2 handshake failed: {e}"))?;
    let driver = tokio::spawn(conn);
    let scheme = if tls { "https" } else { "http" };
    let req = http::Request::get(format!("{scheme}://{host}{path}"))
        .version(http::Version::HTTP_2)
        .header(http::header::USER_AGENT, "tidegate-health-check")
        .body(http_body_util::Empty::new())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let res = send.send_request(req).await;
    driver.abort();
    match res {
        Ok(resp) if (200..=399).contains(&resp.status().as_u16()) => Ok(()),
        Ok(resp) => Err(format!("GET {path} answered {}", resp.status().as_u16())),
        Err(e) => Err(format!(
            "GET {path}: {}",
            crate::failure::describe_hyper_error(&e)
        )),
    }
}

/// The length of the first head in `buf`, its blank line included.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The status code of `HTTP/1.x NNN ...`.
pub(crate) fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let code = rest.get(..3)?;
    if !minor.is_ascii_digit() || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Exactly three digits: then the reason phrase's space, or the end of the line.
    if !matches!(rest.get(3), None | Some(b' ' | b'\r' | b'\n')) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/2 200"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
    }
}
