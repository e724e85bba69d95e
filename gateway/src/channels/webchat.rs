//! The built-in web-chat channel: a person chats with their gateway from a browser or the
//! API, with no external account. One chat session is one conversation.
//!
//! Inbound: `POST /v1/webchat/messages` becomes a `message.received` whose provider id is
//! the client's message id, so a retried post is stored once. Outbound: the stream is the
//! transport, so a reply is delivered as soon as it is committed and published. Edits,
//! deletions and reactions likewise take effect in the store alone: the stream carries them.

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use moltbot_protocol::config::WEBCHAT_CONNECTION;
use moltbot_protocol::event::{
    ConnectionState, ConversationKind, ConversationRef, EventBody, MessageReceived, Participant,
    Source,
};
use moltbot_protocol::inbox::WebchatMessage;
use moltbot_protocol::{Channel, Event, ProtocolError};
use tokio_util::sync::CancellationToken;

use super::{Connector, Delete, Edit, Health, OutgoingPart, Reactions, SendError, Target};
use crate::store::Store;

pub struct Webchat {
    health: Health,
}

impl Webchat {
    pub fn new(store: Store) -> Self {
        Self {
            health: Health::new(store, source()),
        }
    }
}

#[async_trait]
impl Connector for Webchat {
    fn name(&self) -> &str {
        WEBCHAT_CONNECTION
    }

    fn channel(&self) -> Channel {
        Channel::Webchat
    }

    /// The stream has no message size of its own; the inbox API bounds text on the way in.
    fn max_text_len(&self) -> usize {
        usize::MAX
    }

    fn sends_may_be_ambiguous(&self) -> bool {
        false
    }

    async fn run(self: Arc<Self>, _shutdown: CancellationToken) {
        self.health.report(ConnectionState::Connected, None).await;
    }

    /// The stream already carried the message when it was committed.
    async fn send(&self, _part: &OutgoingPart<'_>) -> Result<Option<String>, SendError> {
        Ok(None)
    }

    fn edit(&self) -> Option<&dyn Edit> {
        Some(self)
    }

    fn delete(&self) -> Option<&dyn Delete> {
        Some(self)
    }

    fn reactions(&self) -> Option<&dyn Reactions> {
        Some(self)
    }
}

/// The stream carried the new text when the edit was committed.
#[async_trait]
impl Edit for Webchat {
    async fn edit(&self, _target: &Target<'_>, _text: &str) -> Result<(), SendError> {
        Ok(())
    }
}

#[async_trait]
impl Delete for Webchat {
    async fn delete(&self, _target: &Target<'_>) -> Result<(), SendError> {
        Ok(())
    }
}

#[async_trait]
impl Reactions for Webchat {
    async fn add(&self, _target: &Target<'_>, _emoji: &str) -> Result<(), SendError> {
        Ok(())
    }

    async fn remove(&self, _target: &Target<'_>, _emoji: &str) -> Result<(), SendError> {
        Ok(())
    }
}

pub fn source() -> Source {
    Source {
        channel: Channel::Webchat,
        connection: WEBCHAT_CONNECTION.to_string(),
    }
}

/// The canonical event for a message typed into web chat.
pub fn to_event(message: WebchatMessage, now: Timestamp) -> Result<Event, ProtocolError> {
    let event = Event::new(
        source(),
        now,
        EventBody::MessageReceived(MessageReceived {
            conversation: ConversationRef {
                provider_id: message.session,
                kind: ConversationKind::Dm,
                title: None,
            },
            provider_message_id: Some(message.client_message_id),
            sender: Participant {
                provider_id: message.sender.id,
                display_name: message.sender.display_name,
                handle: None,
            },
            text: Some(message.text),
            reply_to: None,
            attachments: Vec::new(),
            sent_at: now,
            mentions_self: false,
        }),
    );
    event.validate()?;
    Ok(event)
}
