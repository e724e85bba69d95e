//! The inbox's WebSocket stream, as a client sees it.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use moltbot_protocol::inbox::ServerFrame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use super::TOKEN;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/stream{query}` on the gateway at `addr`, authenticated by `auth`.
pub async fn connect(
    addr: SocketAddr,
    query: &str,
    auth: impl FnOnce(&mut tungstenite::handshake::client::Request),
) -> Socket {
    let mut request = format!("ws://{addr}/v1/stream{query}")
        .into_client_request()
        .unwrap();
    auth(&mut request);
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("stream opens");
    assert_eq!(response.headers()["sec-websocket-protocol"], "moltbot.v1");
    socket
}

/// The next frame, which must come within 5 s.
pub async fn next_frame(socket: &mut Socket) -> ServerFrame {
    next_frame_within(socket, Duration::from_secs(5)).await
}

/// The next frame, which must come within `wait`.
pub async fn next_frame_within(socket: &mut Socket, wait: Duration) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within {wait:?}"))
            .expect("stream open")
            .expect("no error");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Authenticates with the inbox token in the `Authorization` header.
pub fn bearer_header(request: &mut tungstenite::handshake::client::Request) {
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "moltbot.v1".parse().unwrap());
}
