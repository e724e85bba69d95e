//! `GET /v1/stream`: a WebSocket of committed inbox changes, for one conversation or the
//! whole tenant. `?conversation_id=` subscribes at once; `subscribe`/`unsubscribe` frames
//! change it later.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use moltbot_protocol::ids::ConversationId;
use moltbot_protocol::inbox::{ApiError, ClientFrame, ErrorCode, ServerFrame, Subscriptions};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;

use super::error::Failure;
use super::extract::ApiQuery;
use super::{AppState, STREAM_PROTOCOL};

const PING_EVERY: Duration = Duration::from_secs(30);
/// Largest frame a client may send; clients only send small control frames.
const MAX_CLIENT_FRAME: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    conversation_id: Option<ConversationId>,
}

#[derive(Default)]
struct Filter {
    tenant: bool,
    conversations: HashSet<ConversationId>,
}

impl Filter {
    /// Frames about no conversation (a connection's health) go to tenant subscribers only.
    fn wants(&self, conversation_id: Option<&ConversationId>) -> bool {
        self.tenant || conversation_id.is_some_and(|id| self.conversations.contains(id))
    }

    fn apply(&mut self, frame: ClientFrame) -> ServerFrame {
        match frame {
            ClientFrame::Subscribe {
                conversation_id: None,
            } => self.tenant = true,
            ClientFrame::Subscribe {
                conversation_id: Some(id),
            } => {
                self.conversations.insert(id);
            }
            ClientFrame::Unsubscribe {
                conversation_id: None,
            } => self.tenant = false,
            ClientFrame::Unsubscribe {
                conversation_id: Some(id),
            } => {
                self.conversations.remove(&id);
            }
        }
        let mut conversations: Vec<_> = self.conversations.iter().copied().collect();
        conversations.sort();
        ServerFrame::Subscriptions(Subscriptions {
            tenant: self.tenant,
            conversations,
        })
    }
}

pub async fn open(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<StreamParams>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, Failure> {
    let upgrade = upgrade.map_err(|e| Failure::invalid(format!("not a WebSocket upgrade: {e}")))?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Conflict,
            "too many open streams; retry later",
        )
    })?;
    if let Some(id) = params.conversation_id {
        state.store.conversation(id).await?;
    }
    let mut filter = Filter::default();
    let first = filter.apply(ClientFrame::Subscribe {
        conversation_id: params.conversation_id,
    });
    Ok(upgrade
        .protocols([STREAM_PROTOCOL])
        .max_message_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| serve(socket, state, filter, first, permit)))
}

async fn serve(
    socket: WebSocket,
    state: AppState,
    mut filter: Filter,
    first: ServerFrame,
    _permit: OwnedSemaphorePermit,
) {
    state.metrics.streams_open.inc();
    // Subscribe before confirming, so nothing committed after the confirmation is missed.
    let mut changes = state.bus.subscribe();
    let (mut tx, mut rx) = socket.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut outgoing = vec![first];
    loop {
        for frame in outgoing.drain(..) {
            let json = serde_json::to_string(&frame).expect("frames serialize");
            if tx.send(Message::Text(json.into())).await.is_err() {
                state.metrics.streams_open.dec();
                return;
            }
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                let close = CloseFrame { code: close_code::AWAY, reason: "gateway shutting down".into() };
                let _ = tx.send(Message::Close(Some(close))).await;
                break;
            }
            change = changes.recv() => match change {
                Ok(published) if filter.wants(published.conversation_id.as_ref()) => {
                    if tx.send(Message::Text(published.json.clone().into())).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    state.metrics.stream_frames_dropped.inc_by(missed);
                    outgoing.push(ServerFrame::Resync { missed });
                }
                Err(RecvError::Closed) => break,
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => outgoing.push(match serde_json::from_str::<ClientFrame>(&text) {
                    Ok(frame) => filter.apply(frame),
                    Err(e) => ServerFrame::Error(ApiError { error: ErrorCode::BadJson, message: e.to_string() }),
                }),
                Some(Ok(Message::Binary(_))) => outgoing.push(ServerFrame::Error(ApiError {
                    error: ErrorCode::UnsupportedMediaType,
                    message: "frames are JSON text".into(),
                })),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            _ = ping.tick() => {
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    state.metrics.streams_open.dec();
}
