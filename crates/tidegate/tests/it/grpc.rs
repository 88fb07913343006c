//! gRPC end to end against the built binary, with a real gRPC server and client (Python
//! grpcio, `testkit::grpc_app`): the client speaks HTTP/2 over TLS (ALPN h2) or h2c on a
//! Unix socket to tidegate, which forwards over h2c to the server's Unix socket
//! (`protocol = "h2"`). Unary calls with trailers, an error status with its message,
//! server, client and bidirectional streaming, a deadline (`grpc-timeout` reaches the
//! server, and the server sees the call cancelled when it passes), a cancellation by
//! the client that reaches the server, and an abort mid-stream that reaches the client.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use serde_json::Value;
use tidegate_testkit::grpc_app::{run_client, GrpcServer};
use tidegate_testkit::tls::TestCa;
use tidegate_testkit::{Addr, Tidegate};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

fn config(listen: &str, tls: &str, server: &str) -> String {
    format!(
        r#"
[listeners.grpc]
listen = ["{listen}"]
{tls}

[[listeners.grpc.routes]]
upstream = "app"

[upstreams.app]
servers = ["{server}"]
protocol = "h2"
"#
    )
}

/// What every scenario must have seen, whichever way the client came in.
async fn check_scenarios(out: &Value, server: &GrpcServer) -> anyhow::Result<()> {
    let get = |path: &[&str]| {
        let mut v = out;
        for p in path {
            v = &v[*p];
        }
        v.clone()
    };
    ensure!(get(&["unary", "code"]) == "OK", "unary: {out}");
    ensure!(get(&["unary", "response"]) == "echo:hello", "unary: {out}");
    ensure!(
        get(&["unary", "trailers", "x-trailer"]) == "unary-5",
        "unary trailers: {out}"
    );
    ensure!(get(&["fail", "code"]) == "NOT_FOUND", "fail: {out}");
    ensure!(
        get(&["fail", "details"]) == "no such thing: widget",
        "fail details: {out}"
    );
    ensure!(
        get(&["deadline", "code"]) == "DEADLINE_EXCEEDED",
        "deadline: {out}"
    );
    let secs = get(&["deadline", "seconds"]).as_f64().unwrap_or(99.0);
    ensure!(secs < 3.0, "the deadline took {secs} s: {out}");
    ensure!(
        get(&["server_stream", "messages"])
            == serde_json::json!(["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"]),
        "server stream: {out}"
    );
    ensure!(
        get(&["server_stream", "trailers", "x-count"]) == "5",
        "server stream trailers: {out}"
    );
    ensure!(
        get(&["client_stream", "response"]) == "10 messages, 55 bytes",
        "client stream: {out}"
    );
    ensure!(
        get(&["bidi", "messages"]) == serde_json::json!(["re:a", "re:b", "re:c"]),
        "bidi: {out}"
    );
    ensure!(get(&["cancel", "code"]) == "CANCELLED", "cancel: {out}");
    ensure!(
        get(&["abort", "code"]) == "RESOURCE_EXHAUSTED",
        "abort: {out}"
    );
    ensure!(
        get(&["abort", "details"]) == "gave up after two",
        "abort details: {out}"
    );
    ensure!(
        get(&["abort", "messages"]) == serde_json::json!(["first", "second"]),
        "abort messages: {out}"
    );
    // The deadline went to the server as `grpc-timeout` (it had about the client's 0.5 s
    // left: the header's units round it), and the server saw the call cancelled once it
    // passed.
    let deadline = server
        .wait_event("deadline Slow", Duration::from_secs(5))
        .await?;
    let left: f64 = deadline
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(99.0);
    ensure!(
        left > 0.0 && left <= 0.6,
        "the server got no deadline: {deadline}"
    );
    server
        .wait_event("cancelled Slow", Duration::from_secs(5))
        .await?;
    // The client's cancellation reached the server's stream (a generous bound: it once
    // took longer than 5 s under the full suite on 2 cores).
    server
        .wait_event("cancelled Endless", Duration::from_secs(15))
        .await?;
    Ok(())
}

#[tokio::test]
async fn grpc_over_tls_to_an_h2c_unix_socket_server_unary_streaming_deadline_cancel(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.write_ca(dir.path())?;
    ca.leaf(dir.path(), "grpc", &["grpc.test"], None)?;
    let server = GrpcServer::start().await?;
    let tls = r#"tls = { certificates = [ { cert = "grpc.pem", key = "grpc.key" } ] }"#;
    let tg = Tidegate::start_in(
        dir.path(),
        bin(),
        &config("127.0.0.1:0", tls, &server.server()),
    )
    .await?;
    let Addr::Tcp(addr) = tg.addr("grpc")? else {
        anyhow::bail!("not a TCP listener");
    };
    let out = run_client(
        &server.script(),
        &format!("127.0.0.1:{}", addr.port()),
        Some(&dir.path().join("ca.pem")),
        "grpc.test",
    )
    .await?;
    check_scenarios(&out, &server).await
}

#[tokio::test]
async fn grpc_over_h2c_on_a_unix_socket_listener() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = GrpcServer::start().await?;
    let sock = dir.path().join("front.sock");
    let tg = Tidegate::start_in(
        dir.path(),
        bin(),
        &config(&format!("unix:{}", sock.display()), "", &server.server()),
    )
    .await?;
    ensure!(matches!(tg.addr("grpc")?, Addr::Unix(_)));
    let out = run_client(
        &server.script(),
        &format!("unix:{}", sock.display()),
        None,
        "localhost",
    )
    .await?;
    check_scenarios(&out, &server).await
}
