//! An HTTP/2 client's split `Cookie` fields (RFC 9113 §8.2.3: browsers send one field per
//! cookie) reach an HTTP/1.1 upstream as one `Cookie` field joined with `"; "`, as the
//! RFC requires, and the raw-socket backend records exactly that.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use tidegate_testkit::browser::require_python_h2;
use tidegate_testkit::{Addr, Backend, Bind, Reply, Tidegate};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// One h2c GET with three `cookie` fields (Python's `h2`, which keeps them apart), the
/// response body on stdout.
const CLIENT: &str = r#"
import socket, sys
import h2.config, h2.connection, h2.events
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
c.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "app.test"),
                   (":path", "/c"), ("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
               end_stream=True)
s.sendall(c.data_to_send())
body = b""
done = False
while not done:
    data = s.recv(65536)
    if not data:
        break
    for ev in c.receive_data(data):
        if isinstance(ev, h2.events.DataReceived):
            body += ev.data
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
            done = True
    s.sendall(c.data_to_send())
sys.stdout.write(body.decode())
"#;

#[tokio::test]
async fn split_cookie_fields_of_an_h2_request_reach_the_http1_upstream_as_one() -> anyhow::Result<()>
{
    require_python_h2()?;
    let app = Backend::start(Bind::Tcp4, |_| Reply::echo())?;
    let tg = Tidegate::start(
        bin(),
        &format!(
            r#"
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["{}"]
"#,
            app.addr().to_config()
        ),
    )
    .await?;
    let Addr::Tcp(sa) = tg.addr("web")? else {
        anyhow::bail!("not a TCP listener");
    };
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("python3")
            .args(["-c", CLIENT, &sa.port().to_string()])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the h2 client did not finish")??;
    ensure!(
        out.status.success(),
        "h2 client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("echo: {}", String::from_utf8_lossy(&out.stdout)))?;
    let cookies: Vec<&str> = echo["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| {
            h[0].as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("cookie"))
        })
        .filter_map(|h| h[1].as_str())
        .collect();
    ensure!(
        cookies == ["a=1; b=2; c=3"],
        "the upstream got {cookies:?}: {echo}"
    );
    ensure!(echo["version"] == "HTTP/1.1", "{echo}");
    Ok(())
}
