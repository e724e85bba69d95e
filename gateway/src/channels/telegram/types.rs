//! The subset of the Telegram Bot API's JSON types the connector reads.
//!
//! Telegram adds fields over time, so unknown fields are ignored (serde's default) and
//! fields nobody reads are left out: parsing then cannot fail on something we never use.
//! An `Option` field may be absent or `null`.

use serde::Deserialize;
use serde::de::IgnoredAny;

/// One incoming update (its `update_id` is read by the client, see `api::RawUpdate`).
/// Only the kinds the connector knows are named; any other kind (callback queries, polls,
/// member changes, ...) leaves all of these `None`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Update {
    pub message: Option<Message>,
    pub edited_message: Option<Message>,
    /// Channel posts are skipped, so their content is not parsed (and cannot fail).
    pub channel_post: Option<IgnoredAny>,
    pub edited_channel_post: Option<IgnoredAny>,
    pub message_reaction: Option<MessageReactionUpdated>,
}

/// A person changed their reactions on a message (sent only to bots that ask for it).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct MessageReactionUpdated {
    pub chat: Chat,
    pub message_id: i64,
    /// Absent for an anonymous reaction, which names `actor_chat` instead.
    pub user: Option<User>,
    pub actor_chat: Option<Chat>,
    /// Unix seconds.
    pub date: i64,
    pub old_reaction: Vec<ReactionType>,
    pub new_reaction: Vec<ReactionType>,
}

/// One reaction: `emoji` for the standard ones; custom emoji and paid stars carry none.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct ReactionType {
    #[serde(rename = "type")]
    pub kind: String,
    pub emoji: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Message {
    pub message_id: i64,
    /// Absent for messages sent on behalf of a chat (anonymous group admins, channels).
    pub from: Option<User>,
    pub sender_chat: Option<Chat>,
    pub chat: Chat,
    /// Unix seconds.
    pub date: i64,
    /// Unix seconds of the last edit.
    pub edit_date: Option<i64>,
    pub text: Option<String>,
    pub caption: Option<String>,
    pub entities: Option<Vec<MessageEntity>>,
    pub caption_entities: Option<Vec<MessageEntity>>,
    /// The same photo in several sizes, smallest first.
    pub photo: Option<Vec<PhotoSize>>,
    pub document: Option<Document>,
    pub voice: Option<Voice>,
    pub audio: Option<Audio>,
    pub video: Option<Video>,
    pub sticker: Option<Sticker>,
    pub reply_to_message: Option<Box<Message>>,
}

/// A marked span of a message's text. Offsets and lengths count UTF-16 code units.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct MessageEntity {
    #[serde(rename = "type")]
    pub kind: String,
    pub offset: u64,
    pub length: u64,
    /// Set for `text_mention` (a mention of a user without a username).
    pub user: Option<User>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct User {
    pub id: i64,
    pub first_name: String,
    pub last_name: Option<String>,
    pub username: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Chat {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: ChatType,
    pub title: Option<String>,
    pub username: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChatType {
    Private,
    Group,
    Supergroup,
    Channel,
    /// A type newer than this code; such chats are skipped rather than failing the update.
    #[serde(other)]
    Other,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct PhotoSize {
    pub file_id: String,
    /// Defaulted so a size without dimensions still parses; it then ranks as smallest.
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
    pub file_size: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Document {
    pub file_id: String,
    pub file_name: Option<String>,
    pub mime_type: Option<String>,
    pub file_size: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Voice {
    pub file_id: String,
    pub mime_type: Option<String>,
    pub file_size: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Audio {
    pub file_id: String,
    pub file_name: Option<String>,
    pub mime_type: Option<String>,
    pub file_size: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Video {
    pub file_id: String,
    pub file_name: Option<String>,
    pub mime_type: Option<String>,
    pub file_size: Option<u64>,
}

/// Telegram gives a sticker no MIME type; its format follows from the two flags.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Sticker {
    pub file_id: String,
    #[serde(default)]
    pub is_animated: bool,
    #[serde(default)]
    pub is_video: bool,
    pub file_size: Option<u64>,
}

impl Sticker {
    pub(crate) fn mime_type(&self) -> &'static str {
        if self.is_animated {
            "application/x-tgsticker"
        } else if self.is_video {
            "video/webm"
        } else {
            "image/webp"
        }
    }
}

/// A file ready to download (`getFile`), for at least an hour.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct File {
    pub file_size: Option<u64>,
    /// Relative to `{api_base}/file/bot{token}/`; absent when the file cannot be downloaded.
    pub file_path: Option<String>,
}

/// The envelope of every Bot API answer, successful or not.
#[derive(Debug, Deserialize)]
pub(crate) struct Response<T> {
    pub ok: bool,
    pub result: Option<T>,
    pub error_code: Option<i64>,
    pub description: Option<String>,
    pub parameters: Option<ResponseParameters>,
}

/// Why a failed request failed, in machine-readable form.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseParameters {
    /// Seconds to wait before repeating a rate-limited request.
    pub retry_after: Option<u64>,
    /// The group became this supergroup; requests must use the new id.
    pub migrate_to_chat_id: Option<i64>,
}
