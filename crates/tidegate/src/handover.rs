//! Connections carried from the old process to the new one in a binary upgrade: each
//! `tidegate_proxy::handoff::Handoff` as one message on the upgrade's handover socket
//! (`tidegate_net::fdpass`, sequenced packets: a message arrives whole, with its
//! descriptors), its sockets attached with SCM_RIGHTS.
//!
//! A message is one header line of tab-separated fields, then the bytes the connection
//! had read and not yet written.
//!
//! ```text
//! idle    LISTENER READ_LEN                                      + READ bytes       (1 fd: client)
//! tunnel  LISTENER PROTOCOL UPSTREAM SERVER TO_UP_LEN TO_CLIENT_LEN + both byte runs (2 fds: client, upstream)
//! ```
//!
//! Anything malformed is refused with a message, never a panic: the new process closes
//! what it got and goes on.

use std::os::fd::OwnedFd;

use tidegate_proxy::endpoint::Stream;
use tidegate_proxy::handoff::{Handoff, HandoffKind, Pending, Tunnel};
use tidegate_proxy::registry::ConnProtocol;

/// Whether a message from the old process is a handed-over connection.
pub fn is_handoff(bytes: &[u8]) -> bool {
    bytes.starts_with(b"idle\t") || bytes.starts_with(b"tunnel\t")
}

/// A handoff as bytes and descriptors.
pub fn encode(h: Box<Handoff>) -> (Vec<u8>, Vec<OwnedFd>) {
    let Handoff { listener, kind } = *h;
    match kind {
        HandoffKind::Idle { client, read } => {
            let mut out = format!("idle\t{listener}\t{}\n", read.len()).into_bytes();
            out.extend_from_slice(&read);
            (out, into_fd(client).into_iter().collect())
        }
        HandoffKind::Tunnel(Tunnel {
            protocol,
            client,
            upstream,
            pending,
            upstream_name,
            server,
        }) => {
            let mut out = format!(
                "tunnel\t{listener}\t{}\t{upstream_name}\t{server}\t{}\t{}\n",
                protocol.as_str(),
                pending.to_upstream.len(),
                pending.to_client.len()
            )
            .into_bytes();
            out.extend_from_slice(&pending.to_upstream);
            out.extend_from_slice(&pending.to_client);
            (
                out,
                into_fd(client)
                    .into_iter()
                    .chain(into_fd(upstream))
                    .collect(),
            )
        }
    }
}

/// A stream's descriptor, taken out of tokio (deregistered).
fn into_fd(s: Stream) -> Option<OwnedFd> {
    match s {
        Stream::Tcp(s) => s.into_std().ok().map(OwnedFd::from),
        Stream::Unix(s) => s.into_std().ok().map(OwnedFd::from),
    }
}

/// A frame's handoff. Must be called inside a tokio runtime (the sockets are
/// registered with it).
pub fn decode(frame: &[u8], fds: Vec<OwnedFd>) -> Result<Box<Handoff>, String> {
    let nl = frame
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&frame[..nl]).map_err(|_| "the header is not UTF-8")?;
    let body = &frame[nl + 1..];
    let fields: Vec<&str> = header.split('\t').collect();
    let len = |s: &str| -> Result<usize, String> {
        s.parse().map_err(|_| format!("not a length: {s:?}"))
    };
    let mut fds = fds.into_iter();
    let mut stream = |what: &str| -> Result<Stream, String> {
        let fd = fds
            .next()
            .ok_or_else(|| format!("no descriptor for the {what}"))?;
        Stream::from_fd(fd).map_err(|e| format!("the {what}'s descriptor: {e}"))
    };
    let h = match fields.as_slice() {
        ["idle", listener, read] => {
            let n = len(read)?;
            if body.len() != n {
                return Err(format!("{n} bytes announced, {} sent", body.len()));
            }
            Handoff {
                listener: (*listener).to_owned(),
                kind: HandoffKind::Idle {
                    client: stream("client")?,
                    read: body.to_vec(),
                },
            }
        }
        ["tunnel", listener, protocol, upstream, server, up, down] => {
            let (up, down) = (len(up)?, len(down)?);
            if body.len() != up.saturating_add(down) {
                return Err(format!(
                    "{} bytes announced, {} sent",
                    up + down,
                    body.len()
                ));
            }
            let protocol = match *protocol {
                "tcp" => ConnProtocol::Tcp,
                "websocket" => ConnProtocol::Websocket,
                other => return Err(format!("unknown tunnel protocol {other:?}")),
            };
            Handoff {
                listener: (*listener).to_owned(),
                kind: HandoffKind::Tunnel(Tunnel {
                    protocol,
                    client: stream("client")?,
                    upstream: stream("upstream")?,
                    pending: Pending {
                        to_upstream: body[..up].to_vec(),
                        to_client: body[up..].to_vec(),
                    },
                    upstream_name: (*upstream).to_owned(),
                    server: (*server).to_owned(),
                }),
            }
        }
        _ => return Err(format!("unknown frame {header:?}")),
    };
    Ok(Box::new(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixStream;

    #[tokio::test]
    async fn a_tunnel_round_trips_with_its_descriptors_and_bytes() {
        let (c1, c2) = UnixStream::pair().unwrap();
        let (u1, _u2) = UnixStream::pair().unwrap();
        let h = Box::new(Handoff {
            listener: "web".into(),
            kind: HandoffKind::Tunnel(Tunnel {
                protocol: ConnProtocol::Websocket,
                client: Stream::Unix(c1),
                upstream: Stream::Unix(u1),
                pending: Pending {
                    to_upstream: b"up".to_vec(),
                    to_client: vec![7; 20_000],
                },
                upstream_name: "ws".into(),
                server: "127.0.0.1:9".into(),
            }),
        });
        let (payload, fds) = encode(h);
        assert_eq!(fds.len(), 2);
        let h = decode(&payload, fds).unwrap();
        assert_eq!(h.listener, "web");
        let HandoffKind::Tunnel(Tunnel {
            protocol,
            client,
            pending,
            upstream_name,
            server,
            ..
        }) = h.kind
        else {
            panic!("not a tunnel");
        };
        assert_eq!(protocol, ConnProtocol::Websocket);
        assert_eq!(
            (upstream_name.as_str(), server.as_str()),
            ("ws", "127.0.0.1:9")
        );
        assert_eq!(pending.to_upstream, b"up");
        assert_eq!(pending.to_client, vec![7; 20_000]);
        // The descriptor is the same socket: what its peer writes arrives.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c2 = c2;
        c2.write_all(b"hello").await.unwrap();
        let Stream::Unix(mut client) = client else {
            panic!("not unix")
        };
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn garbage_is_refused_with_a_reason() {
        for (frame, why) in [
            (&b"nonsense"[..], "no header line"),
            (b"idle\tweb\tx\n", "not a length"),
            (b"idle\tweb\t5\nab", "5 bytes announced"),
            (b"tunnel\tweb\tudp\tu\ts\t0\t0\n", "unknown tunnel protocol"),
            (b"idle\tweb\t0\n", "no descriptor"),
            (b"what\n", "unknown frame"),
        ] {
            let e = decode(frame, Vec::new()).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
