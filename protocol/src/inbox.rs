//! The gateway's inbox API: request and response bodies and WebSocket frames.
//!
//! Paths (all under a per-tenant bearer token):
//! - `GET  /v1/conversations?channel=&pinned=&unread=&cursor=&limit=` → [`Page`] of [`ConversationView`]
//! - `GET  /v1/conversations/{id}` → [`ConversationView`]
//! - `PUT|DELETE /v1/conversations/{id}/pin`, `POST /v1/conversations/{id}/read` ([`MarkRead`])
//! - `GET  /v1/conversations/{id}/messages?cursor=&limit=` → [`Page`] of [`MessageView`], newest first
//! - `PUT  /v1/conversations/{id}/send/{txn_id}` ([`SendMessage`]) → [`MessageView`]; the
//!   same `txn_id` returns the same message
//! - `GET  /v1/messages/{id}` → [`MessageView`]; `PATCH /v1/messages/{id}` ([`EditMessage`]) and
//!   `DELETE /v1/messages/{id}` change a message this gateway sent; `PUT|DELETE
//!   /v1/messages/{id}/reactions/{emoji}` add or take back the gateway's reaction (all
//!   idempotent, → [`MessageView`]); `GET /v1/messages/{id}/attachments/{index}` streams an
//!   attachment's bytes
//! - `GET  /v1/search?q=&conversation_id=&cursor=&limit=` → [`Page`] of [`SearchHit`]
//! - `POST /v1/events` (a canonical [`crate::Event`]) → [`Ingested`]
//! - `POST /v1/webchat/messages` ([`WebchatMessage`]) → [`Ingested`]
//! - `GET  /v1/stream` WebSocket: [`ClientFrame`] up, [`ServerFrame`] down
//! - `PUT  /v1/conversations/{id}/agent` ([`SetAgentMode`]) → [`ConversationView`]
//! - `GET  /v1/agent/runs?conversation_id=&state=&cursor=&limit=` → [`Page`] of [`AgentRunView`], newest first
//! - `GET  /v1/agent/runs/{id}`; `POST /v1/agent/runs/{id}/approve` ([`ApproveDraft`]) and
//!   `POST /v1/agent/runs/{id}/reject` → [`AgentRunView`]
//! - `GET  /v1/memory` → list of [`MemoryFactView`]; `POST /v1/memory` ([`NewFact`]);
//!   `POST /v1/memory/{id}/approve`; `DELETE /v1/memory/{id}`
//! - `GET  /v1/follow-ups` → list of [`FollowUpView`]; `DELETE /v1/follow-ups/{id}` cancels one
//! - `GET  /v1/pairing` → list of [`PairingRequestView`]; `POST /v1/pairing/{code}/approve|deny`
//! - `GET  /status` → [`GatewayStatus`] (same token): connections' health and the agent's budget
//! - `POST /hooks/{connection}`: provider webhooks, verified by the connection itself
//!
//! Every error is an [`ApiError`] body.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{Attachment, Channel, ConnectionState, ConversationKind};
use crate::ids::{ConversationId, FactId, FollowUpId, IdentityId, MessageId, RunId};

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
    /// Only messages this gateway sent may be changed this way.
    Forbidden,
    /// The message's channel cannot do this (no such capability).
    NotSupported,
    /// A text over the channel's limit where it cannot be split (an edit).
    TextTooLong,
    /// An attachment over the size the channel lets the gateway fetch.
    MediaTooLarge,
    /// The channel's provider failed or could not be reached.
    ProviderUnavailable,
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
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::MediaTooLarge => "media_too_large",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
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
    /// The agent's mode here; absent means the gateway's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_mode: Option<AgentMode>,
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
    /// Read from the provider's history (backfill) rather than received when it was sent:
    /// it never counted as unread and Pi did not answer it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backfilled: bool,
    /// Reactions on the message, one entry per emoji.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionView>,
}

/// One emoji on a message: how many reacted with it, and whether this gateway did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionView {
    pub emoji: String,
    pub count: u32,
    /// The gateway's own reaction (set through the API).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mine: bool,
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

/// `PATCH /v1/messages/{id}`: the new text of a message this gateway sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EditMessage {
    pub text: String,
}

/// `POST /v1/conversations/{id}/backfill`: read the conversation's earlier messages from
/// its provider into the inbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    #[serde(default)]
    pub from: BackfillFrom,
    /// Start before the message with this provider id instead: to read on where a backfill
    /// ended (its report's `next_before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Most messages to read, 1 to [`BackfillRequest::MAX_LIMIT`]; by default
    /// [`BackfillRequest::DEFAULT_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl BackfillRequest {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1_000;
}

/// Where a backfill starts reading, going back in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillFrom {
    /// From the newest message, until it reaches a message the inbox has below one it did
    /// not have (the bottom of a gap): catches up on what the gateway missed. With no gap
    /// it reads on past the inbox's earliest message, up to the limit.
    #[default]
    Latest,
    /// From before the earliest message the inbox has: loads older history.
    Earlier,
}

/// What a backfill read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillReport {
    /// Messages new to the inbox.
    pub stored: u32,
    /// Messages the inbox had already.
    pub known: u32,
    /// Pages asked of the provider.
    pub pages: u32,
    /// The provider has no older messages than these.
    pub complete: bool,
    /// Where to read on: pass it as `before`. Absent when the provider has nothing older.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
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
    /// A run was queued, started, finished, or its draft decided.
    #[serde(rename = "agent.run")]
    AgentRun(AgentRunView),
    /// A piece of the reply a running agent is writing (not stored; the final text arrives
    /// as a message or a draft).
    #[serde(rename = "agent.delta")]
    AgentDelta(AgentDelta),
    #[serde(rename = "connection.state")]
    ConnectionState(ConnectionStatusView),
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

/// How the agent treats a conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    Off,
    /// Replies wait in the inbox for the person's approval.
    #[default]
    Draft,
    /// Replies go out at once.
    Autopilot,
}

impl AgentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Off => "off",
            AgentMode::Draft => "draft",
            AgentMode::Autopilot => "autopilot",
        }
    }
}

impl std::str::FromStr for AgentMode {
    type Err = crate::ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [AgentMode::Off, AgentMode::Draft, AgentMode::Autopilot]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| crate::ProtocolError::InvalidField {
                field: "mode",
                reason: format!("unknown agent mode {s:?}"),
            })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetAgentMode {
    /// `null` returns the conversation to the gateway's default.
    pub mode: Option<AgentMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    /// Only ever seen on the stream: the stored state stays `queued` until the outcome.
    Running,
    /// A draft waits for the person.
    AwaitingApproval,
    Succeeded,
    /// Visible with its `error`; the model failed, timed out or answered nonsense.
    Failed,
    Rejected,
    /// The tenant's daily token budget was spent.
    BudgetExhausted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::AwaitingApproval => "awaiting_approval",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Rejected => "rejected",
            RunState::BudgetExhausted => "budget_exhausted",
        }
    }
}

impl std::str::FromStr for RunState {
    type Err = crate::ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RunState::Queued,
            RunState::Running,
            RunState::AwaitingApproval,
            RunState::Succeeded,
            RunState::Failed,
            RunState::Rejected,
            RunState::BudgetExhausted,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| crate::ProtocolError::InvalidField {
            field: "state",
            reason: format!("unknown run state {s:?}"),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRunView {
    pub id: RunId,
    pub conversation_id: ConversationId,
    /// The newest message the run answers.
    pub trigger_message_id: MessageId,
    pub mode: AgentMode,
    pub state: RunState,
    /// The draft, or the reply that was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_message_id: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost in millionths of the configured currency unit.
    pub cost_micros: u64,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentDelta {
    pub run_id: RunId,
    pub conversation_id: ConversationId,
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApproveDraft {
    /// The person's edit of the draft; absent sends the draft as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactState {
    /// Suggested by the agent; not used until approved.
    Proposed,
    Approved,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryFactView {
    pub id: FactId,
    pub text: String,
    pub state: FactState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_conversation_id: Option<ConversationId>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewFact {
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowUpState {
    Pending,
    Fired,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FollowUpView {
    pub id: FollowUpId,
    pub conversation_id: ConversationId,
    pub note: String,
    pub due_at: Timestamp,
    pub state: FollowUpState,
    /// The nudge that was sent when it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairingState {
    Pending,
    Approved,
    Denied,
}

/// An unknown sender asking to talk to a connection whose DM policy is `pairing`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairingRequestView {
    pub connection: String,
    pub sender_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// The code the sender was given; the tenant approves by it.
    pub code: String,
    pub state: PairingState,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStatusView {
    pub name: String,
    pub channel: Channel,
    pub state: ConnectionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatusView {
    /// False when no model is configured.
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub default_mode: AgentMode,
    pub runs_queued: u64,
    /// Tokens spent this UTC day, and the day's budget.
    pub tokens_today: u64,
    pub tokens_per_day: u64,
}

/// `GET /status`: what the operator and the control plane show about this gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub tenant: String,
    pub connections: Vec<ConnectionStatusView>,
    pub agent: AgentStatusView,
}
