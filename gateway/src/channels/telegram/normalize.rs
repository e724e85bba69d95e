//! Telegram updates to canonical events.
//!
//! `message` becomes `message.received`, `edited_message` becomes `message.edited` and
//! `message_reaction` one `reaction.added` or `reaction.removed` per emoji that changed;
//! every other kind of update is skipped with a reason. An update is read from raw JSON
//! so that one malformed update fails alone (see [`super::api::RawUpdate`]).

use jiff::Timestamp;
use moltbot_protocol::event::{
    Attachment, AttachmentKind, ConversationKind, ConversationRef, MessageEdited, MessageReceived,
    Participant, Reaction, check_id,
};
use moltbot_protocol::{Channel, Event, EventBody, ProtocolError, Source};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use super::types::{
    ChatType, Message, MessageEntity, MessageReactionUpdated, ReactionType, Update, User,
};

/// The bot's own account (from `getMe`): what a mention of the connection looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BotIdentity {
    pub id: i64,
    /// Without the leading `@`.
    pub username: String,
}

/// What an update turned into.
// Each value is consumed right away, never stored in bulk: boxing the event would only
// add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Normalized {
    Event(Event),
    /// A change of someone's reactions: what was taken back, then what was added.
    Reactions(Vec<Event>),
    /// A kind of update the connector deliberately ignores, with a short reason.
    Skip(&'static str),
}

/// Why an update could not be normalised. Never quotes the update's content: it is logged,
/// and message text is the user's private data.
#[derive(Debug, Error)]
pub(crate) enum NormalizeError {
    #[error("malformed update at {path}: {reason}")]
    Malformed { path: String, reason: String },
    #[error("message {message_id} has neither `from` nor `sender_chat`")]
    NoSender { message_id: i64 },
    #[error("{field} {value} is not a valid Unix time")]
    BadTime { field: &'static str, value: i64 },
    #[error("update yields an invalid event: {0}")]
    InvalidEvent(#[from] ProtocolError),
}

/// Who sent a message update, for the DM and group policy checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sender {
    /// The person, or the chat a message was sent on behalf of (the event's sender id).
    pub user_id: i64,
    pub chat_id: i64,
    /// The chat is a one-to-one chat with the bot.
    pub private: bool,
}

/// Turns one update into a canonical event of `connection`, or says why it is skipped.
pub(crate) fn normalize(
    update: &Value,
    connection: &str,
    bot: &BotIdentity,
) -> Result<Normalized, NormalizeError> {
    let update = parse(update)?;
    let source = Source {
        channel: Channel::Telegram,
        connection: connection.to_string(),
    };
    let (occurred_at, body) = if let Some(message) = update.message {
        let Some(kind) = conversation_kind(message.chat.kind) else {
            return Ok(Normalized::Skip("chat of an unknown type"));
        };
        let Some(received) = received(message, kind, bot)? else {
            return Ok(Normalized::Skip(
                "message without text or a supported attachment",
            ));
        };
        (received.sent_at, EventBody::MessageReceived(received))
    } else if let Some(message) = update.edited_message {
        let edited = edited(message)?;
        (edited.edited_at, EventBody::MessageEdited(edited))
    } else if let Some(change) = update.message_reaction {
        return reactions(change, source);
    } else if update.channel_post.is_some() {
        return Ok(Normalized::Skip("channel post"));
    } else if update.edited_channel_post.is_some() {
        return Ok(Normalized::Skip("edited channel post"));
    } else {
        return Ok(Normalized::Skip("update kind not handled"));
    };
    let event = Event::new(source, occurred_at, body);
    event.validate()?;
    Ok(Normalized::Event(event))
}

fn reactions(change: MessageReactionUpdated, source: Source) -> Result<Normalized, NormalizeError> {
    let occurred_at = unix_time("date", change.date)?;
    let sender = match (&change.actor_chat, &change.user) {
        (Some(chat), _) => Participant {
            provider_id: chat.id.to_string(),
            display_name: chat.title.clone(),
            handle: chat.username.clone(),
        },
        (None, Some(user)) => Participant {
            provider_id: user.id.to_string(),
            display_name: Some(display_name(user)),
            handle: user.username.clone(),
        },
        (None, None) => {
            return Err(NormalizeError::NoSender {
                message_id: change.message_id,
            });
        }
    };
    // Custom emoji and paid reactions have no emoji to show; they are left out.
    let emojis = |list: &[ReactionType]| -> Vec<String> {
        list.iter()
            .filter(|r| r.kind == "emoji")
            .filter_map(|r| r.emoji.clone())
            .collect()
    };
    let (old, new) = (emojis(&change.old_reaction), emojis(&change.new_reaction));
    let reaction = |emoji: &String| Reaction {
        conversation: change.chat.id.to_string(),
        provider_message_id: change.message_id.to_string(),
        sender: sender.clone(),
        emoji: emoji.clone(),
    };
    let removed = old
        .iter()
        .filter(|e| !new.contains(e))
        .map(|e| EventBody::ReactionRemoved(reaction(e)));
    let added = new
        .iter()
        .filter(|e| !old.contains(e))
        .map(|e| EventBody::ReactionAdded(reaction(e)));
    let events = removed
        .chain(added)
        .map(|body| {
            let event = Event::new(source.clone(), occurred_at, body);
            event.validate().map(|()| event)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if events.is_empty() {
        return Ok(Normalized::Skip("reaction change without a standard emoji"));
    }
    Ok(Normalized::Reactions(events))
}

/// Who sent a `message` or `edited_message`, as its event names the sender: the chat for a
/// message sent on behalf of one. `None` for other updates and for updates that do not parse
/// or name no sender ([`normalize`] refuses those), so every message event has a `Sender`
/// and no message escapes the DM and group policies.
pub(crate) fn sender_of(update: &Value) -> Option<Sender> {
    let update = Update::deserialize(update).ok()?;
    let message = update.message.or(update.edited_message)?;
    // With `sender_chat` set, `from` is a placeholder account, not a person.
    let user_id = match (&message.sender_chat, &message.from) {
        (Some(chat), _) => chat.id,
        (None, Some(user)) => user.id,
        (None, None) => return None,
    };
    Some(Sender {
        user_id,
        chat_id: message.chat.id,
        private: message.chat.kind == ChatType::Private,
    })
}

fn parse(update: &Value) -> Result<Update, NormalizeError> {
    serde_path_to_error::deserialize(update).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde quotes the offending value in "invalid type/value" messages, and that value
        // may be message text; "missing field" messages hold only our own field names.
        let reason = if message.starts_with("missing field") {
            message
        } else {
            "wrong type or value".to_string()
        };
        NormalizeError::Malformed { path, reason }
    })
}

fn conversation_kind(chat: ChatType) -> Option<ConversationKind> {
    match chat {
        ChatType::Private => Some(ConversationKind::Dm),
        ChatType::Group | ChatType::Supergroup => Some(ConversationKind::Group),
        ChatType::Channel => Some(ConversationKind::Channel),
        ChatType::Other => None,
    }
}

/// `None` for a message with nothing to show (a service message: members joined, a pin...).
fn received(
    message: Message,
    kind: ConversationKind,
    bot: &BotIdentity,
) -> Result<Option<MessageReceived>, NormalizeError> {
    let attachments = attachments(&message)?;
    let mentions_self = mentions_self(&message, bot);
    let sender = sender(&message)?;
    let sent_at = unix_time("date", message.date)?;
    let text = message
        .text
        .or(message.caption)
        .filter(|text| !text.is_empty());
    if text.is_none() && attachments.is_empty() {
        return Ok(None);
    }
    Ok(Some(MessageReceived {
        conversation: ConversationRef {
            provider_id: message.chat.id.to_string(),
            kind,
            title: match kind {
                ConversationKind::Dm => None,
                ConversationKind::Group | ConversationKind::Channel => message.chat.title,
            },
        },
        provider_message_id: Some(message.message_id.to_string()),
        sender,
        text,
        reply_to: message
            .reply_to_message
            .map(|replied| replied.message_id.to_string()),
        attachments,
        sent_at,
        mentions_self,
    }))
}

fn edited(message: Message) -> Result<MessageEdited, NormalizeError> {
    let edited_at = match message.edit_date {
        Some(edit_date) => unix_time("edit_date", edit_date)?,
        None => unix_time("date", message.date)?,
    };
    Ok(MessageEdited {
        conversation: message.chat.id.to_string(),
        provider_message_id: message.message_id.to_string(),
        text: message.text.or(message.caption),
        edited_at,
    })
}

fn unix_time(field: &'static str, value: i64) -> Result<Timestamp, NormalizeError> {
    Timestamp::from_second(value).map_err(|_| NormalizeError::BadTime { field, value })
}

fn sender(message: &Message) -> Result<Participant, NormalizeError> {
    // A message sent on behalf of a chat (anonymous admin, linked channel) carries a
    // placeholder `from`; the chat is the real sender.
    if let Some(chat) = &message.sender_chat {
        return Ok(Participant {
            provider_id: chat.id.to_string(),
            display_name: chat.title.clone(),
            handle: chat.username.clone(),
        });
    }
    match &message.from {
        Some(user) => Ok(Participant {
            provider_id: user.id.to_string(),
            display_name: Some(display_name(user)),
            handle: user.username.clone(),
        }),
        None => Err(NormalizeError::NoSender {
            message_id: message.message_id,
        }),
    }
}

fn display_name(user: &User) -> String {
    match &user.last_name {
        Some(last) if !last.is_empty() => format!("{} {last}", user.first_name),
        _ => user.first_name.clone(),
    }
}

/// A message carries at most one medium; a photo is one attachment, its largest size.
fn attachments(message: &Message) -> Result<Vec<Attachment>, NormalizeError> {
    let mut found = Vec::new();
    let largest_photo = message.photo.as_deref().and_then(|sizes| {
        sizes
            .iter()
            .max_by_key(|p| (u64::from(p.width) * u64::from(p.height), p.file_size))
    });
    if let Some(p) = largest_photo {
        // Telegram re-encodes every photo as JPEG.
        found.push(attachment(
            AttachmentKind::Image,
            &p.file_id,
            Some("image/jpeg"),
            p.file_size,
            None,
        ));
    }
    if let Some(d) = &message.document {
        found.push(attachment(
            AttachmentKind::File,
            &d.file_id,
            d.mime_type.as_deref(),
            d.file_size,
            d.file_name.as_deref(),
        ));
    }
    if let Some(v) = &message.voice {
        found.push(attachment(
            AttachmentKind::Voice,
            &v.file_id,
            v.mime_type.as_deref(),
            v.file_size,
            None,
        ));
    }
    if let Some(a) = &message.audio {
        found.push(attachment(
            AttachmentKind::Audio,
            &a.file_id,
            a.mime_type.as_deref(),
            a.file_size,
            a.file_name.as_deref(),
        ));
    }
    if let Some(v) = &message.video {
        found.push(attachment(
            AttachmentKind::Video,
            &v.file_id,
            v.mime_type.as_deref(),
            v.file_size,
            v.file_name.as_deref(),
        ));
    }
    if let Some(s) = &message.sticker {
        found.push(attachment(
            AttachmentKind::Sticker,
            &s.file_id,
            Some(s.mime_type()),
            s.file_size,
            None,
        ));
    }
    // `Event::validate` does not look at file ids, but the protocol bounds them too.
    for a in &found {
        if let Some(id) = &a.provider_file_id {
            check_id("data.attachments.provider_file_id", id)?;
        }
    }
    Ok(found)
}

fn attachment(
    kind: AttachmentKind,
    file_id: &str,
    mime_type: Option<&str>,
    size_bytes: Option<u64>,
    file_name: Option<&str>,
) -> Attachment {
    Attachment {
        kind,
        mime_type: mime_type.map(str::to_string),
        size_bytes,
        file_name: file_name.map(str::to_string),
        provider_file_id: Some(file_id.to_string()),
    }
}

/// Mentions the bot by `@username`, by a `text_mention` of its id, by a command addressed
/// to it (`/help@bot`), or replies to one of its messages.
fn mentions_self(message: &Message, bot: &BotIdentity) -> bool {
    let replies_to_bot = message
        .reply_to_message
        .as_ref()
        .and_then(|replied| replied.from.as_ref())
        .is_some_and(|author| author.id == bot.id);
    replies_to_bot
        || entities_mention(message.text.as_deref(), message.entities.as_deref(), bot)
        || entities_mention(
            message.caption.as_deref(),
            message.caption_entities.as_deref(),
            bot,
        )
}

fn entities_mention(
    text: Option<&str>,
    entities: Option<&[MessageEntity]>,
    bot: &BotIdentity,
) -> bool {
    let (Some(text), Some(entities)) = (text, entities) else {
        return false;
    };
    if entities.is_empty() {
        return false;
    }
    let username = bot.username.trim_start_matches('@');
    // Entity offsets count UTF-16 code units.
    let utf16: Vec<u16> = text.encode_utf16().collect();
    let is_bot_name = |name: &str| !username.is_empty() && name.eq_ignore_ascii_case(username);
    entities.iter().any(|entity| match entity.kind.as_str() {
        "mention" => entity_text(&utf16, entity)
            .is_some_and(|m| m.strip_prefix('@').is_some_and(is_bot_name)),
        "bot_command" => entity_text(&utf16, entity)
            .is_some_and(|c| c.split_once('@').is_some_and(|(_, name)| is_bot_name(name))),
        "text_mention" => entity.user.as_ref().is_some_and(|u| u.id == bot.id),
        _ => false,
    })
}

/// The entity's span of the text; `None` when the offsets do not fit it.
fn entity_text(utf16: &[u16], entity: &MessageEntity) -> Option<String> {
    let start = usize::try_from(entity.offset).ok()?;
    let end = start.checked_add(usize::try_from(entity.length).ok()?)?;
    String::from_utf16(utf16.get(start..end)?).ok()
}

#[cfg(test)]
mod tests {
    use moltbot_protocol::EventType;
    use serde_json::json;

    use super::*;

    const BOT_ID: i64 = 7000;

    fn bot() -> BotIdentity {
        BotIdentity {
            id: BOT_ID,
            username: "MoltBot".to_string(),
        }
    }

    fn event(update: Value) -> Event {
        match normalize(&update, "tg-main", &bot()) {
            Ok(Normalized::Event(event)) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn received(update: Value) -> MessageReceived {
        match event(update).body {
            EventBody::MessageReceived(m) => m,
            other => panic!("expected message.received, got {other:?}"),
        }
    }

    fn skip_reason(update: Value) -> &'static str {
        match normalize(&update, "tg-main", &bot()) {
            Ok(Normalized::Skip(reason)) => reason,
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    fn ann() -> Value {
        json!({"id": 42, "is_bot": false, "first_name": "Ann", "last_name": "Lee", "username": "ann"})
    }

    fn group() -> Value {
        json!({"id": -1001, "type": "supergroup", "title": "Friends"})
    }

    /// A `message` update in a group with the given extra message fields.
    fn group_message(extra: Value) -> Value {
        let mut message =
            json!({"message_id": 9, "from": ann(), "chat": group(), "date": 1_700_000_000});
        if let (Some(m), Value::Object(extra)) = (message.as_object_mut(), extra) {
            m.extend(extra);
        }
        json!({"update_id": 1, "message": message})
    }

    fn mention(offset: u64, length: u64) -> Value {
        json!([{"type": "mention", "offset": offset, "length": length}])
    }

    #[test]
    fn private_text_message() {
        let event = event(json!({
            "update_id": 100,
            "message": {
                "message_id": 5,
                "from": ann(),
                "chat": {"id": 42, "type": "private", "first_name": "Ann"},
                "date": 1_700_000_000,
                "text": "hello there",
                "some_future_field": {"x": 1}
            }
        }));
        assert_eq!(event.source.channel, Channel::Telegram);
        assert_eq!(event.source.connection, "tg-main");
        let sent_at = Timestamp::from_second(1_700_000_000).expect("valid time");
        assert_eq!(event.occurred_at, sent_at);
        let EventBody::MessageReceived(m) = event.body else {
            panic!("expected message.received");
        };
        assert_eq!(
            m,
            MessageReceived {
                conversation: ConversationRef {
                    provider_id: "42".into(),
                    kind: ConversationKind::Dm,
                    title: None,
                },
                provider_message_id: Some("5".into()),
                sender: Participant {
                    provider_id: "42".into(),
                    display_name: Some("Ann Lee".into()),
                    handle: Some("ann".into()),
                },
                text: Some("hello there".into()),
                reply_to: None,
                attachments: vec![],
                sent_at,
                mentions_self: false,
            }
        );
    }

    #[test]
    fn group_mention_is_case_insensitive_and_counts_utf16() {
        // "👋" is two UTF-16 units, so "@moltbot" starts at offset 3.
        let m = received(group_message(json!({
            "text": "👋 @moltbot what's up?",
            "entities": mention(3, 8)
        })));
        assert_eq!(m.conversation.kind, ConversationKind::Group);
        assert_eq!(m.conversation.title.as_deref(), Some("Friends"));
        assert!(m.mentions_self);
    }

    #[test]
    fn mentions_of_others_and_bad_offsets_are_not_self() {
        let other = received(group_message(json!({
            "text": "@MoltBotFan hi", "entities": mention(0, 11)
        })));
        assert!(!other.mentions_self);
        let out_of_range = received(group_message(json!({
            "text": "@MoltBot", "entities": mention(5, u64::MAX)
        })));
        assert!(!out_of_range.mentions_self);
        let unentitled = received(group_message(json!({"text": "@MoltBot hi"})));
        assert!(!unentitled.mentions_self, "only entities count");
    }

    #[test]
    fn text_mention_and_addressed_command_mention_self() {
        let by_id = received(group_message(json!({
            "text": "Molty, hi",
            "entities": [{"type": "text_mention", "offset": 0, "length": 5,
                          "user": {"id": BOT_ID, "is_bot": true, "first_name": "Molty"}}]
        })));
        assert!(by_id.mentions_self);
        let command = received(group_message(json!({
            "text": "/help@moltbot",
            "entities": [{"type": "bot_command", "offset": 0, "length": 13}]
        })));
        assert!(command.mentions_self);
        let bare_command = received(group_message(json!({
            "text": "/help",
            "entities": [{"type": "bot_command", "offset": 0, "length": 5}]
        })));
        assert!(!bare_command.mentions_self);
    }

    #[test]
    fn reply_to_the_bot_mentions_self() {
        let bot_user =
            json!({"id": BOT_ID, "is_bot": true, "first_name": "Molty", "username": "MoltBot"});
        let m = received(group_message(json!({
            "text": "thanks",
            "reply_to_message": {"message_id": 8, "from": bot_user, "chat": group(), "date": 1_699_999_990, "text": "answer"}
        })));
        assert_eq!(m.reply_to.as_deref(), Some("8"));
        assert!(m.mentions_self);

        let m = received(group_message(json!({
            "text": "agreed",
            "reply_to_message": {"message_id": 7, "from": ann(), "chat": group(), "date": 1_699_999_990, "text": "hm"}
        })));
        assert_eq!(m.reply_to.as_deref(), Some("7"));
        assert!(!m.mentions_self);
    }

    #[test]
    fn caption_and_photo_take_the_largest_size() {
        let m = received(group_message(json!({
            "caption": "look @MoltBot",
            "caption_entities": mention(5, 8),
            "photo": [
                {"file_id": "small", "file_unique_id": "u1", "width": 90, "height": 60, "file_size": 1_000},
                {"file_id": "large", "file_unique_id": "u3", "width": 1280, "height": 853, "file_size": 90_000},
                {"file_id": "medium", "file_unique_id": "u2", "width": 320, "height": 213, "file_size": 12_000}
            ]
        })));
        assert_eq!(m.text.as_deref(), Some("look @MoltBot"));
        assert!(m.mentions_self);
        assert_eq!(
            m.attachments,
            vec![Attachment {
                kind: AttachmentKind::Image,
                mime_type: Some("image/jpeg".into()),
                size_bytes: Some(90_000),
                file_name: None,
                provider_file_id: Some("large".into()),
            }]
        );
    }

    #[test]
    fn document_without_caption() {
        let m = received(group_message(json!({
            "document": {"file_id": "doc1", "file_unique_id": "d", "file_name": "report.pdf",
                         "mime_type": "application/pdf", "file_size": 2048}
        })));
        assert_eq!(m.text, None);
        assert_eq!(
            m.attachments,
            vec![Attachment {
                kind: AttachmentKind::File,
                mime_type: Some("application/pdf".into()),
                size_bytes: Some(2048),
                file_name: Some("report.pdf".into()),
                provider_file_id: Some("doc1".into()),
            }]
        );
    }

    #[test]
    fn other_media_kinds() {
        let cases = [
            (
                "voice",
                json!({"file_id": "f", "file_unique_id": "u", "duration": 3, "mime_type": "audio/ogg"}),
                AttachmentKind::Voice,
                Some("audio/ogg"),
            ),
            (
                "audio",
                json!({"file_id": "f", "file_unique_id": "u", "duration": 3, "mime_type": "audio/mpeg"}),
                AttachmentKind::Audio,
                Some("audio/mpeg"),
            ),
            (
                "video",
                json!({"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1, "duration": 3}),
                AttachmentKind::Video,
                None,
            ),
            (
                "sticker",
                json!({"file_id": "f", "file_unique_id": "u", "type": "regular", "width": 512, "height": 512, "is_animated": false, "is_video": false}),
                AttachmentKind::Sticker,
                Some("image/webp"),
            ),
        ];
        for (field, medium, kind, mime) in cases {
            let m = received(group_message(json!({ field: medium })));
            assert_eq!(m.attachments.len(), 1, "{field}");
            assert_eq!(m.attachments[0].kind, kind, "{field}");
            assert_eq!(m.attachments[0].mime_type.as_deref(), mime, "{field}");
            assert_eq!(
                m.attachments[0].provider_file_id.as_deref(),
                Some("f"),
                "{field}"
            );
        }
    }

    #[test]
    fn message_on_behalf_of_a_chat_is_from_the_chat() {
        let m = received(group_message(json!({
            "from": {"id": 1_087_968_824, "is_bot": true, "first_name": "Group", "username": "GroupAnonymousBot"},
            "sender_chat": group(),
            "text": "admin speaking"
        })));
        assert_eq!(m.sender.provider_id, "-1001");
        assert_eq!(m.sender.display_name.as_deref(), Some("Friends"));
    }

    #[test]
    fn edited_message() {
        let edit =
            |message: Value| match event(json!({"update_id": 3, "edited_message": message})).body {
                EventBody::MessageEdited(e) => e,
                other => panic!("expected message.edited, got {other:?}"),
            };
        let e = edit(json!({
            "message_id": 5, "from": ann(), "chat": {"id": 42, "type": "private"},
            "date": 1_700_000_000, "edit_date": 1_700_000_060, "text": "hello (fixed)"
        }));
        assert_eq!(
            e,
            MessageEdited {
                conversation: "42".into(),
                provider_message_id: "5".into(),
                text: Some("hello (fixed)".into()),
                edited_at: Timestamp::from_second(1_700_000_060).expect("valid time"),
            }
        );
        let without_edit_date = edit(json!({
            "message_id": 5, "from": ann(), "chat": {"id": 42, "type": "private"},
            "date": 1_700_000_000, "caption": "new caption"
        }));
        assert_eq!(without_edit_date.text.as_deref(), Some("new caption"));
        assert_eq!(
            without_edit_date.edited_at,
            Timestamp::from_second(1_700_000_000).expect("valid time")
        );
    }

    fn reaction_update(old: Value, new: Value, who: Value) -> Value {
        let mut change = json!({"chat": group(), "message_id": 9, "date": 1_700_000_100,
                                "old_reaction": old, "new_reaction": new});
        if let (Some(c), Value::Object(who)) = (change.as_object_mut(), who) {
            c.extend(who);
        }
        json!({"update_id": 8, "message_reaction": change})
    }

    fn emoji(e: &str) -> Value {
        json!({"type": "emoji", "emoji": e})
    }

    #[test]
    fn a_reaction_change_is_what_was_taken_back_then_what_was_added() {
        let update = reaction_update(
            json!([emoji("👍"), emoji("🔥")]),
            json!([emoji("🔥"), emoji("🎉"), {"type": "custom_emoji", "custom_emoji_id": "5"}]),
            json!({"user": ann()}),
        );
        let events = match normalize(&update, "tg-main", &bot()) {
            Ok(Normalized::Reactions(events)) => events,
            other => panic!("expected reactions, got {other:?}"),
        };
        let summary: Vec<(EventType, String)> = events
            .iter()
            .map(|e| match &e.body {
                EventBody::ReactionAdded(r) | EventBody::ReactionRemoved(r) => {
                    assert_eq!(
                        (r.conversation.as_str(), r.provider_message_id.as_str()),
                        ("-1001", "9")
                    );
                    assert_eq!(r.sender.provider_id, "42");
                    assert_eq!(r.sender.display_name.as_deref(), Some("Ann Lee"));
                    (e.event_type(), r.emoji.clone())
                }
                other => panic!("expected a reaction, got {other:?}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                (EventType::ReactionRemoved, "👍".to_string()),
                (EventType::ReactionAdded, "🎉".to_string()),
            ]
        );
        assert!(
            events
                .iter()
                .all(|e| e.occurred_at.as_second() == 1_700_000_100)
        );

        // An anonymous admin reacts as the chat.
        let anonymous = reaction_update(
            json!([]),
            json!([emoji("👍")]),
            json!({"actor_chat": group()}),
        );
        match normalize(&anonymous, "tg-main", &bot()) {
            Ok(Normalized::Reactions(events)) => match &events[..] {
                [
                    Event {
                        body: EventBody::ReactionAdded(r),
                        ..
                    },
                ] => {
                    assert_eq!(r.sender.provider_id, "-1001")
                }
                other => panic!("one reaction.added expected, got {other:?}"),
            },
            other => panic!("expected reactions, got {other:?}"),
        }
        let paid_only =
            reaction_update(json!([]), json!([{"type": "paid"}]), json!({"user": ann()}));
        assert_eq!(
            skip_reason(paid_only),
            "reaction change without a standard emoji"
        );
        let nobody = reaction_update(json!([]), json!([emoji("👍")]), json!({}));
        assert!(matches!(
            normalize(&nobody, "tg-main", &bot()),
            Err(NormalizeError::NoSender { message_id: 9 })
        ));
    }

    #[test]
    fn service_message_is_skipped() {
        let reason = skip_reason(group_message(json!({"new_chat_members": [ann()]})));
        assert_eq!(reason, "message without text or a supported attachment");
        let empty = skip_reason(group_message(json!({"text": ""})));
        assert_eq!(empty, "message without text or a supported attachment");
    }

    #[test]
    fn other_update_kinds_are_skipped() {
        let callback =
            json!({"update_id": 4, "callback_query": {"id": "1", "from": ann(), "data": "x"}});
        assert_eq!(skip_reason(callback), "update kind not handled");
        // A channel post is skipped even when it is of a shape we would not parse.
        let post = json!({"update_id": 5, "channel_post": {"message_id": "odd"}});
        assert_eq!(skip_reason(post), "channel post");
        let edited_post = json!({"update_id": 6, "edited_channel_post": {}});
        assert_eq!(skip_reason(edited_post), "edited channel post");
        let future_chat =
            group_message(json!({"chat": {"id": 1, "type": "forum_of_the_future"}, "text": "hi"}));
        assert_eq!(skip_reason(future_chat), "chat of an unknown type");
    }

    #[test]
    fn missing_chat_is_malformed() {
        let update = json!({"update_id": 7, "message": {"message_id": 1, "from": ann(), "date": 1, "text": "secret plans"}});
        let err = match normalize(&update, "tg-main", &bot()) {
            Err(err) => err,
            other => panic!("expected an error, got {other:?}"),
        };
        assert!(
            matches!(&err, NormalizeError::Malformed { path, reason }
                if path == "message" && reason == "missing field `chat`"),
            "{err:?}"
        );
    }

    #[test]
    fn errors_never_quote_message_content() {
        // A wrongly typed field whose value is private text.
        let update = group_message(json!({"text": "fine", "caption": ["secret plans"]}));
        let Err(err) = normalize(&update, "tg-main", &bot()) else {
            panic!("expected an error");
        };
        assert!(
            matches!(err, NormalizeError::Malformed { ref path, .. } if path == "message.caption")
        );
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!format!("{err:?}").contains("secret"), "{err:?}");
    }

    #[test]
    fn missing_sender_and_bad_time_are_errors() {
        let no_sender = json!({"update_id": 1, "message": {"message_id": 3, "chat": group(), "date": 1, "text": "x"}});
        assert!(matches!(
            normalize(&no_sender, "tg-main", &bot()),
            Err(NormalizeError::NoSender { message_id: 3 })
        ));
        let bad_time = group_message(json!({"date": i64::MAX, "text": "x"}));
        assert!(matches!(
            normalize(&bad_time, "tg-main", &bot()),
            Err(NormalizeError::BadTime { field: "date", .. })
        ));
    }

    #[test]
    fn invalid_ids_fail_validation() {
        let update = group_message(json!({"text": "hi"}));
        assert!(matches!(
            normalize(&update, "", &bot()),
            Err(NormalizeError::InvalidEvent(ProtocolError::InvalidField {
                field: "source.connection",
                ..
            }))
        ));
        let long_file_id = "x".repeat(300);
        let update =
            group_message(json!({"document": {"file_id": long_file_id, "file_unique_id": "u"}}));
        assert!(matches!(
            normalize(&update, "tg-main", &bot()),
            Err(NormalizeError::InvalidEvent(ProtocolError::InvalidField {
                field: "data.attachments.provider_file_id",
                ..
            }))
        ));
    }

    #[test]
    fn sender_for_dm_policy() {
        let dm = json!({"update_id": 1, "message": {
            "message_id": 5, "from": ann(), "chat": {"id": 42, "type": "private"}, "date": 1, "text": "hi"
        }});
        assert_eq!(
            sender_of(&dm),
            Some(Sender {
                user_id: 42,
                chat_id: 42,
                private: true
            })
        );
        assert_eq!(
            sender_of(&group_message(json!({"text": "hi"}))),
            Some(Sender {
                user_id: 42,
                chat_id: -1001,
                private: false
            })
        );
        // An anonymous admin is the group itself, and still subject to the group policy.
        let on_behalf = group_message(json!({"sender_chat": group(), "text": "hi"}));
        assert_eq!(
            sender_of(&on_behalf),
            Some(Sender {
                user_id: -1001,
                chat_id: -1001,
                private: false
            })
        );
        assert_eq!(
            sender_of(&json!({"update_id": 2, "callback_query": {"id": "1"}})),
            None
        );
        assert_eq!(sender_of(&json!("not an update")), None);
    }
}
