//! The dedupe-key rule.
//!
//! Every event gets a key that is equal for two deliveries of the same provider event and
//! different otherwise; the store keeps at most one event per key.
//!
//! - When the provider names the event (a message id, a message id plus edit time, …) the
//!   key is a hash of the event type, the connection, the conversation and those ids:
//!   `p1:<sha256 hex>`.
//! - When it does not (a `message.received` without a provider message id), the key is a
//!   hash of provider, conversation, sender, a time bucket and the content: `h1:<sha256 hex>`.
//!   The bucket absorbs a resend that re-stamps the message by a few seconds; the price is
//!   that the same text from the same sender twice within one bucket counts once.
//!
//! Fields are length-prefixed before hashing so that no two field lists hash alike.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{Event, EventBody, MessageReceived};

/// Width of the time bucket of content-hash keys.
pub const DEDUPE_TIME_BUCKET_SECS: i64 = 10;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DedupeKey(String);

impl DedupeKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn for_event(event: &Event) -> Self {
        let kind = event.event_type().as_str();
        let conn = event.source.connection.as_str();
        let channel = event.source.channel.as_str();
        let ms = |t: &Timestamp| t.as_millisecond().to_string();
        match &event.body {
            EventBody::MessageReceived(m) => match &m.provider_message_id {
                Some(id) => provider(&[kind, channel, conn, &m.conversation.provider_id, id]),
                None => content_hash(channel, conn, m),
            },
            EventBody::MessageEdited(e) => provider(&[
                kind,
                channel,
                conn,
                &e.conversation,
                &e.provider_message_id,
                &ms(&e.edited_at),
            ]),
            EventBody::MessageDeleted(d) => {
                provider(&[kind, channel, conn, &d.conversation, &d.provider_message_id])
            }
            // Add, remove, add again are three events: the time tells them apart.
            EventBody::ReactionAdded(r) | EventBody::ReactionRemoved(r) => provider(&[
                kind,
                channel,
                conn,
                &r.conversation,
                &r.provider_message_id,
                &r.sender.provider_id,
                &r.emoji,
                &ms(&event.occurred_at),
            ]),
            EventBody::ConversationCreated(c) => provider(&[kind, channel, conn, &c.provider_id]),
            EventBody::ConversationUpdated(c) => {
                provider(&[kind, channel, conn, &c.provider_id, &ms(&event.occurred_at)])
            }
            EventBody::ConnectionStateChanged(_) => {
                provider(&[kind, channel, conn, &ms(&event.occurred_at)])
            }
            EventBody::MediaAvailable(m) => provider(&[
                kind,
                channel,
                conn,
                &m.conversation,
                &m.provider_message_id,
                &m.sha256,
            ]),
            EventBody::AgentRequested(a) => provider(&[
                kind,
                &a.conversation_id.to_string(),
                &a.trigger_message_id.to_string(),
            ]),
            EventBody::AgentResponded(a) => provider(&[
                kind,
                &a.conversation_id.to_string(),
                &a.trigger_message_id.to_string(),
            ]),
            // Announced once per conversation and day.
            EventBody::AgentBudgetExhausted(b) => {
                provider(&[kind, &b.conversation_id.to_string(), &b.day])
            }
        }
    }
}

impl fmt::Display for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn provider(fields: &[&str]) -> DedupeKey {
    DedupeKey(format!("p1:{}", hash_fields(fields)))
}

fn content_hash(channel: &str, conn: &str, m: &MessageReceived) -> DedupeKey {
    let bucket = m
        .sent_at
        .as_second()
        .div_euclid(DEDUPE_TIME_BUCKET_SECS)
        .to_string();
    // Attachments count as content: the same caption on two different photos is two messages.
    let attachments = serde_json::to_string(&m.attachments).expect("attachments serialize");
    let fields = [
        channel,
        conn,
        &m.conversation.provider_id,
        &m.sender.provider_id,
        &bucket,
        m.text.as_deref().unwrap_or(""),
        &attachments,
    ];
    DedupeKey(format!("h1:{}", hash_fields(&fields)))
}

fn hash_fields(fields: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}
