//! Canonical events: what every connector turns provider traffic into.
//!
//! On the wire an event is one JSON object:
//! `{"schema_version":1,"id":ULID,"occurred_at":RFC3339,"source":{..},"type":"message.received","data":{..}}`.
//! The dedupe key is never read from the wire: it is derived from the content by
//! [`crate::dedupe`], so every producer and the store agree on it.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::dedupe::DedupeKey;
use crate::error::ProtocolError;
use crate::ids::{ConversationId, EventId, MessageId};

/// The version of the event schema this build reads and writes.
pub const SCHEMA_VERSION: u16 = 1;

/// Longest provider id (conversation, message, sender, file) accepted, in bytes.
pub const MAX_PROVIDER_ID_BYTES: usize = 256;

/// A chat channel a tenant can connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Built into every gateway: chat with it from a browser, no external account.
    Webchat,
    Telegram,
    Discord,
    Slack,
    Teams,
    Imessage,
    Whatsapp,
    Signal,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::Webchat,
        Channel::Telegram,
        Channel::Discord,
        Channel::Slack,
        Channel::Teams,
        Channel::Imessage,
        Channel::Whatsapp,
        Channel::Signal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webchat => "webchat",
            Channel::Telegram => "telegram",
            Channel::Discord => "discord",
            Channel::Slack => "slack",
            Channel::Teams => "teams",
            Channel::Imessage => "imessage",
            Channel::Whatsapp => "whatsapp",
            Channel::Signal => "signal",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| ProtocolError::InvalidField {
                field: "channel",
                reason: format!("unknown channel {s:?}"),
            })
    }
}

/// Where an event came from: the channel type and the tenant's connection on it (a tenant
/// may connect two Telegram bots; provider ids are only unique within one connection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub channel: Channel,
    pub connection: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    #[default]
    Dm,
    Group,
    Channel,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Dm => "dm",
            ConversationKind::Group => "group",
            ConversationKind::Channel => "channel",
        }
    }
}

impl FromStr for ConversationKind {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dm" => Ok(Self::Dm),
            "group" => Ok(Self::Group),
            "channel" => Ok(Self::Channel),
            other => Err(ProtocolError::InvalidField {
                field: "conversation.kind",
                reason: format!("unknown kind {other:?}"),
            }),
        }
    }
}

/// A conversation as the provider names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRef {
    pub provider_id: String,
    #[serde(default)]
    pub kind: ConversationKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// A person or account as the provider names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub provider_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentKind {
    Image,
    Video,
    Audio,
    Voice,
    Sticker,
    File,
}

impl AttachmentKind {
    pub const ALL: &'static [AttachmentKind] = &[
        AttachmentKind::Image,
        AttachmentKind::Video,
        AttachmentKind::Audio,
        AttachmentKind::Voice,
        AttachmentKind::Sticker,
        AttachmentKind::File,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentKind::Image => "image",
            AttachmentKind::Video => "video",
            AttachmentKind::Audio => "audio",
            AttachmentKind::Voice => "voice",
            AttachmentKind::Sticker => "sticker",
            AttachmentKind::File => "file",
        }
    }
}

/// Attachment metadata; the bytes arrive later as `media.available`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub kind: AttachmentKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_file_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReceived {
    pub conversation: ConversationRef,
    /// The provider's own id for the message; when absent the dedupe key falls back to a
    /// content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    pub sender: Participant,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Provider id of the message this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    pub sent_at: Timestamp,
    /// The message mentions, or replies to, the connection's own account (a bot's
    /// `@name` in a group): in groups the agent answers only these.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mentions_self: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEdited {
    pub conversation: String,
    pub provider_message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub edited_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeleted {
    pub conversation: String,
    pub provider_message_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub conversation: String,
    pub provider_message_id: String,
    pub sender: Participant,
    pub emoji: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Connected,
    /// Working with trouble (retries, rate limits); no action needed yet.
    Degraded,
    /// Needs the person: a revoked token, a removed bot.
    ActionRequired,
    Disconnected,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connected => "connected",
            ConnectionState::Degraded => "degraded",
            ConnectionState::ActionRequired => "action_required",
            ConnectionState::Disconnected => "disconnected",
        }
    }
}

impl FromStr for ConnectionState {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ConnectionState::Connected,
            ConnectionState::Degraded,
            ConnectionState::ActionRequired,
            ConnectionState::Disconnected,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| ProtocolError::InvalidField {
            field: "state",
            reason: format!("unknown connection state {s:?}"),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStateChanged {
    pub state: ConnectionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaAvailable {
    pub conversation: String,
    pub provider_message_id: String,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    pub mime_type: String,
    pub size_bytes: u64,
    /// Where the media service stored the bytes (tenant-relative).
    pub storage_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequested {
    pub conversation_id: ConversationId,
    pub trigger_message_id: MessageId,
}

/// The tenant's daily token budget ran out; the agent answers again the next (UTC) day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBudgetExhausted {
    pub conversation_id: ConversationId,
    /// The UTC day the budget is counted over, `YYYY-MM-DD`.
    pub day: String,
    pub tokens_used: u64,
    pub tokens_per_day: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentResponded {
    pub conversation_id: ConversationId,
    pub trigger_message_id: MessageId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_message_id: Option<MessageId>,
}

/// Declares the event types once: the enum of names, their wire strings, and the body enum.
macro_rules! event_types {
    ($($variant:ident($payload:ty) = $wire:literal,)+) => {
        /// The type of a canonical event, as named on the wire.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum EventType { $($variant,)+ }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $wire,)+ }
            }
        }

        /// The type-specific part of an event.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum EventBody { $($variant($payload),)+ }

        impl EventBody {
            pub fn event_type(&self) -> EventType {
                match self { $(EventBody::$variant(_) => EventType::$variant,)+ }
            }

            fn to_raw(&self) -> Result<Box<RawValue>, serde_json::Error> {
                match self { $(EventBody::$variant(p) => serde_json::value::to_raw_value(p),)+ }
            }

            fn from_raw(kind: EventType, data: &RawValue) -> Result<Self, serde_json::Error> {
                Ok(match kind { $(EventType::$variant => EventBody::$variant(serde_json::from_str(data.get())?),)+ })
            }
        }
    };
}

event_types! {
    MessageReceived(MessageReceived) = "message.received",
    MessageEdited(MessageEdited) = "message.edited",
    MessageDeleted(MessageDeleted) = "message.deleted",
    ReactionAdded(Reaction) = "reaction.added",
    ReactionRemoved(Reaction) = "reaction.removed",
    ConversationCreated(ConversationRef) = "conversation.created",
    ConversationUpdated(ConversationRef) = "conversation.updated",
    ConnectionStateChanged(ConnectionStateChanged) = "connection.state_changed",
    MediaAvailable(MediaAvailable) = "media.available",
    AgentRequested(AgentRequested) = "agent.requested",
    AgentResponded(AgentResponded) = "agent.responded",
    AgentBudgetExhausted(AgentBudgetExhausted) = "agent.budget_exhausted",
}

impl EventType {
    /// Events only the gateway's own agent produces; no connector or client may post them.
    pub fn is_agent_event(self) -> bool {
        matches!(
            self,
            EventType::AgentRequested | EventType::AgentResponded | EventType::AgentBudgetExhausted
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ProtocolError::UnknownEventType(truncate_for_error(s)))
    }
}

/// One canonical event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub occurred_at: Timestamp,
    pub source: Source,
    pub body: EventBody,
}

#[derive(Serialize, Deserialize)]
struct WireEvent<'a> {
    schema_version: u16,
    id: EventId,
    occurred_at: Timestamp,
    source: Source,
    #[serde(rename = "type")]
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    /// Written for readers' convenience; ignored when read (it is always re-derived).
    #[serde(default, skip_deserializing)]
    dedupe_key: Option<DedupeKey>,
}

impl Event {
    /// A new event with a fresh id.
    pub fn new(source: Source, occurred_at: Timestamp, body: EventBody) -> Self {
        Self {
            id: EventId::new(),
            occurred_at,
            source,
            body,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }

    /// The key under which the store deduplicates this event (see [`crate::dedupe`]).
    pub fn dedupe_key(&self) -> DedupeKey {
        DedupeKey::for_event(self)
    }

    /// Parses an event from untrusted bytes: size first, then UTF-8, then the envelope, then
    /// the type, then the body, then field rules, so each failure gets its own error.
    pub fn from_slice(bytes: &[u8], max_bytes: usize) -> Result<Self, ProtocolError> {
        if bytes.len() > max_bytes {
            return Err(ProtocolError::PayloadTooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| ProtocolError::InvalidUtf8 {
            offset: e.valid_up_to(),
        })?;
        let wire: WireEvent<'_> = serde_json::from_str(text)?;
        if wire.schema_version != SCHEMA_VERSION {
            return Err(ProtocolError::UnsupportedSchemaVersion {
                found: wire.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        let kind: EventType = wire.kind.parse()?;
        let body = EventBody::from_raw(kind, wire.data)?;
        let event = Event {
            id: wire.id,
            occurred_at: wire.occurred_at,
            source: wire.source,
            body,
        };
        event.validate()?;
        Ok(event)
    }

    pub fn to_json(&self) -> String {
        let data = self.body.to_raw().expect("event bodies always serialize");
        let wire = WireEvent {
            schema_version: SCHEMA_VERSION,
            id: self.id,
            occurred_at: self.occurred_at,
            source: self.source.clone(),
            kind: self.event_type().as_str().into(),
            data: &data,
            dedupe_key: Some(self.dedupe_key()),
        };
        serde_json::to_string(&wire).expect("wire events always serialize")
    }

    /// Rules serde cannot express: ids that must be present and bounded.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_id("source.connection", &self.source.connection)?;
        match &self.body {
            EventBody::MessageReceived(m) => {
                check_id("data.conversation.provider_id", &m.conversation.provider_id)?;
                check_id("data.sender.provider_id", &m.sender.provider_id)?;
                if let Some(id) = &m.provider_message_id {
                    check_id("data.provider_message_id", id)?;
                }
                if m.text.as_deref().is_none_or(str::is_empty) && m.attachments.is_empty() {
                    return Err(ProtocolError::InvalidField {
                        field: "data.text",
                        reason: "a message needs text or at least one attachment".into(),
                    });
                }
            }
            EventBody::MessageEdited(MessageEdited {
                conversation,
                provider_message_id,
                ..
            })
            | EventBody::MessageDeleted(MessageDeleted {
                conversation,
                provider_message_id,
            })
            | EventBody::MediaAvailable(MediaAvailable {
                conversation,
                provider_message_id,
                ..
            }) => {
                check_id("data.conversation", conversation)?;
                check_id("data.provider_message_id", provider_message_id)?;
            }
            EventBody::ReactionAdded(r) | EventBody::ReactionRemoved(r) => {
                check_id("data.conversation", &r.conversation)?;
                check_id("data.provider_message_id", &r.provider_message_id)?;
                check_id("data.sender.provider_id", &r.sender.provider_id)?;
            }
            EventBody::ConversationCreated(c) | EventBody::ConversationUpdated(c) => {
                check_id("data.provider_id", &c.provider_id)?;
            }
            EventBody::ConnectionStateChanged(_)
            | EventBody::AgentRequested(_)
            | EventBody::AgentResponded(_)
            | EventBody::AgentBudgetExhausted(_) => {}
        }
        Ok(())
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: Box<RawValue> =
            RawValue::from_string(self.to_json()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Checks a provider id: present, bounded, no control characters.
pub fn check_id(field: &'static str, value: &str) -> Result<(), ProtocolError> {
    let reason = if value.is_empty() {
        "must not be empty".to_string()
    } else if value.len() > MAX_PROVIDER_ID_BYTES {
        format!(
            "is {} bytes; at most {MAX_PROVIDER_ID_BYTES} allowed",
            value.len()
        )
    } else if value.chars().any(char::is_control) {
        "must not contain control characters".to_string()
    } else {
        return Ok(());
    };
    Err(ProtocolError::InvalidField { field, reason })
}

/// Keeps attacker-chosen strings short when echoed in an error.
fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Event::from_slice(raw.get().as_bytes(), usize::MAX).map_err(serde::de::Error::custom)
    }
}
