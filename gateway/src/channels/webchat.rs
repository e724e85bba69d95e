//! The built-in web-chat channel: a person chats with their gateway from a browser or the
//! API, with no external account. One chat session is one conversation.
//!
//! Inbound: `POST /v1/webchat/messages` becomes a `message.received` whose provider id is
//! the client's message id, so a retried post is stored once. Outbound: the stream is the
//! transport, so a reply is delivered as soon as it is committed and published.

use jiff::Timestamp;
use moltbot_protocol::event::{
    ConversationKind, ConversationRef, EventBody, MessageReceived, Participant, Source,
};
use moltbot_protocol::inbox::WebchatMessage;
use moltbot_protocol::{Channel, Event, ProtocolError};

/// The connection name of web chat; every gateway has exactly one.
pub const CONNECTION: &str = "webchat";

pub fn source() -> Source {
    Source {
        channel: Channel::Webchat,
        connection: CONNECTION.to_string(),
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
        }),
    );
    event.validate()?;
    Ok(event)
}
