//! The WebSocket echo backend, with a tokio-tungstenite client, on every transport.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tidegate_testkit::{Backend, Bind};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn websocket_echo_returns_text_and_binary_messages() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let b = Backend::websocket_echo(bind)?;
        for round in 1..=2u64 {
            let stream = b.addr().connect().await?;
            let (mut ws, resp) =
                tokio_tungstenite::client_async("ws://test.local/chat", stream).await?;
            assert_eq!(resp.status().as_u16(), 101, "{bind:?}");

            ws.send(Message::text("hello")).await?;
            let got = tokio::time::timeout(T, ws.next()).await?;
            assert_eq!(got.transpose()?, Some(Message::text("hello")));

            ws.send(Message::binary(vec![0u8, 1, 2, 255])).await?;
            let got = tokio::time::timeout(T, ws.next()).await?;
            assert_eq!(
                got.transpose()?,
                Some(Message::binary(vec![0u8, 1, 2, 255]))
            );

            ws.close(None).await?;
            // Bounded: the server acknowledges the close, then the stream ends.
            while let Some(msg) = tokio::time::timeout(T, ws.next()).await? {
                msg?;
            }
            assert_eq!(b.accepts() as u64, round);
        }
        b.wait_for(|b| b.closed_connections() == 2, T).await?;
        let reqs = b.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].request_line(), "GET /chat HTTP/1.1");
        assert_eq!(reqs[0].header("upgrade"), Some("websocket"));
        assert_eq!(reqs[0].header("host"), Some("test.local"));
        assert!(b.parse_errors().is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn websocket_echo_records_a_failed_handshake() -> anyhow::Result<()> {
    let b = Backend::websocket_echo(Bind::Tcp4)?;
    // Not an upgrade: tungstenite closes without a response.
    assert!(tidegate_testkit::get(b.addr(), "/", "h").await.is_err());
    b.wait_for(|b| b.parse_errors().len() == 1, T).await?;
    assert!(
        b.parse_errors()[0].contains("handshake"),
        "{:?}",
        b.parse_errors()
    );
    Ok(())
}
