//! The gateway's inbox API: request and response bodies and WebSocket frames.
//!
//! Paths (all under a per-tenant bearer token):
//! - `GET  /v1/conversations?channel=&pinned=&unread=&cursor=&limit=` → [`Page`] of [`ConversationView`]
//! - `GET  /v1/conversations/{id}` → [`ConversationView`]
//! - `PUT|DELETE /v1/conversations/{id}/pin`, `POST /v1/conversations/{id}/read` ([`MarkRead`])
//! - `GET  /v1/conversations/{id}/messages?cursor=&limit=` → [`Page`] of [`MessageView`], newest first
//! - `PUT  /v1/conversations/{id}/send/{txn_id}` ([`SendMessage`]) → [`MessageView`]; the
//!   same `txn_id` returns the same message
//! - `GET  /v1/search?q=&conversation_id=&cursor=&limit=` → [`Page`] of [`SearchHit`]
//! - `POST /v1/events` (a canonical [`crate::Event`]) → [`Ingested`]
//! - `POST /v1/webchat/messages` ([`WebchatMessage`]) → [`Ingested`]
//! - `GET  /v1/stream` WebSocket: [`ClientFrame`] up, [`ServerFrame`] down
//!
//! Every error is an [`ApiError`] body.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{Attachment, Channel, ConversationKind};
use crate::ids::{ConversationId, IdentityId, MessageId};

/// Largest page a list endpoint returns.
pub const MAX_PAGE_SIZE: u32 = 200;
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// Stable machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    InvalidUtf8,
    UnknownEventType,
    UnsupportedSchemaVersion,
    PayloadTooLarge,
    InvalidRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    Conflict,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::UnknownEventType => "unknown_event_type",
            ErrorCode::UnsupportedSchemaVersion => "unsupported_schema_version",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The body of every error answer: `{"error": CODE, "message": TEXT}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorCode,
    pub message: String,
}

/// A page of a list; pass `next_cursor` back as `cursor` for the next one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationView {
    pub id: ConversationId,
    pub channel: Channel,
    pub connection: String,
    pub provider_id: String,
    pub kind: ConversationKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub pinned: bool,
    pub unread_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_preview: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Where a message stands: inbound ones are `received`; outbound ones move from `pending`
/// to `sent` or `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Received,
    Pending,
    Sent,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SenderView {
    pub id: IdentityId,
    pub provider_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub direction: Direction,
    pub status: DeliveryStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<SenderView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The client-chosen id of a message sent through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_id: Option<String>,
    pub sent_at: Timestamp,
    pub received_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<Timestamp>,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub message: MessageView,
    /// The matching text with matches wrapped in `[` `]`.
    pub snippet: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MarkRead {
    /// Everything up to and including this message becomes read; absent means everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<MessageId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendMessage {
    pub text: String,
}

/// A person writing to their gateway through web chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebchatMessage {
    /// Chosen by the chat client; a retry with the same id is stored once.
    pub client_message_id: String,
    /// The chat session; one session is one conversation.
    pub session: String,
    pub sender: WebchatSender,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebchatSender {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// The answer to an ingest: the stored message (or event) and whether it was already there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ingested {
    pub event_id: crate::ids::EventId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    pub duplicate: bool,
}

/// What a WebSocket client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Without a conversation: every conversation of the tenant.
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<ConversationId>,
    },
    Unsubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<ConversationId>,
    },
}

/// What the gateway sends on the WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ServerFrame {
    #[serde(rename = "message.created")]
    MessageCreated(MessageView),
    #[serde(rename = "message.updated")]
    MessageUpdated(MessageView),
    #[serde(rename = "conversation.updated")]
    ConversationUpdated(ConversationView),
    /// Confirms a subscribe or unsubscribe.
    #[serde(rename = "subscriptions")]
    Subscriptions(Subscriptions),
    /// The client fell behind and frames were dropped: refetch over HTTP.
    #[serde(rename = "resync")]
    Resync { missed: u64 },
    #[serde(rename = "error")]
    Error(ApiError),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscriptions {
    pub tenant: bool,
    pub conversations: Vec<ConversationId>,
}
