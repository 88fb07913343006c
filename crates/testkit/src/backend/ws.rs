//! One WebSocket echo connection (tokio-tungstenite): record the upgrade request, then
//! send every text and binary message back.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::http::end_of;
use super::{ConnEnd, Request, Shared};
use crate::addr::Stream;

#[allow(
    clippy::result_large_err,
    reason = "the handshake callback's error type is tungstenite's, large or not"
)]
pub(super) async fn serve(shared: &Arc<Shared>, id: u64, stream: Stream) -> ConnEnd {
    let recorder = shared.clone();
    let record = move |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        recorder.push_request(Request {
            method: req.method().to_string(),
            target: req.uri().to_string(),
            version: format!("{:?}", req.version()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: Vec::new(),
            body_len: 0,
            body_complete: true,
            raw_head: Vec::new(),
            conn_id: id,
        });
        Ok(resp)
    };
    let mut ws = match tokio_tungstenite::accept_hdr_async(stream, record).await {
        Ok(ws) => ws,
        Err(e) => {
            shared.parse_error(id, format!("websocket handshake failed: {e}"));
            return ws_end(e);
        }
    };
    // Bounded by the peer's lifetime, or the backend's (Drop aborts this task).
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(e) = ws.send(m).await {
                    return ws_end(e);
                }
            }
            // Pings are answered and close frames acknowledged by tungstenite itself.
            Ok(_) => {}
            Err(e) => return ws_end(e),
        }
    }
    ConnEnd::ClosedByPeer
}

fn ws_end(e: WsError) -> ConnEnd {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => ConnEnd::ClosedByPeer,
        WsError::Protocol(
            tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => ConnEnd::ClosedByPeer,
        WsError::Io(e) => end_of(&e),
        other => ConnEnd::Failed(other.to_string()),
    }
}
