//! The fake's world: bots, their chats and messages, update queues, files, and what tests
//! observe. One mutex guards it all and is never held across an await; every change is
//! announced so long polls, webhook workers and `wait_for_sent` can look again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rate_limit::RateLimiter;
use super::updates::UpdateQueue;
use super::webhook::{self, Webhook};
use super::wire::{Chat, Content, Document, Message, PhotoSize, User, entities};
use super::{
    Call, ChatKind, ChatSpec, Failure, FakeTelegramConfig, SentMessage, UserSpec, WebhookState,
};

/// What the server tasks and the test's handle share.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Bumped after every change of `state`.
    changes: watch::Sender<()>,
    /// Cancelled when the last [`super::FakeTelegram`] handle is dropped.
    pub(super) shutdown: CancellationToken,
    /// Client for webhook deliveries.
    pub(super) http: reqwest::Client,
    pub(super) config: FakeTelegramConfig,
}

impl Shared {
    pub(super) fn new(config: FakeTelegramConfig) -> Result<Shared, reqwest::Error> {
        Ok(Shared {
            state: Mutex::new(State::default()),
            changes: watch::Sender::new(()),
            shutdown: CancellationToken::new(),
            http: webhook::http_client()?,
            config,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere (a test misusing the handle) must not take the server down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state, then wakes everything waiting for a change.
    pub(super) fn mutate<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let result = change(&mut self.lock());
        self.changes.send_replace(());
        result
    }

    /// Changes a bot, if the token is registered, then wakes everything waiting for a change.
    pub(super) fn mutate_bot<T>(
        &self,
        token: &str,
        change: impl FnOnce(&mut Bot) -> T,
    ) -> Option<T> {
        self.mutate(|state| state.bots.get_mut(token).map(change))
    }

    /// Reads a bot, if the token is registered, without announcing anything.
    pub(super) fn read_bot<T>(&self, token: &str, read: impl FnOnce(&Bot) -> T) -> Option<T> {
        self.lock().bots.get(token).map(read)
    }

    /// A receiver that wakes on every change made after this call.
    pub(super) fn subscribe(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }

    /// Waits `duration`, or less if the fake shuts down meanwhile.
    pub(super) async fn sleep(&self, duration: Duration) {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.shutdown.cancelled() => {}
        }
    }
}

/// Every registered bot, by token.
#[derive(Default)]
pub(super) struct State {
    pub(super) bots: HashMap<String, Bot>,
}

/// Update kinds of the current Bot API, the names `allowed_updates` may use.
const UPDATE_KINDS: [&str; 23] = [
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
];

/// How long the bot may delete its own messages for everyone.
const MAX_DELETE_AGE_SECS: i64 = 48 * 3600;

/// Nominal sides of the two sizes a photo is offered in.
const PHOTO_SIDES: [u32; 2] = [90, 1280];

/// One bot and everything it sees.
pub(super) struct Bot {
    /// The bot's own User object.
    pub(super) user: User,
    chats: HashMap<i64, ChatState>,
    pub(super) updates: UpdateQueue,
    /// Update kinds the bot subscribed to; `None` is Telegram's default, which includes every
    /// kind this fake produces except `message_reaction` (Telegram sends those only to bots
    /// that name them).
    pub(super) allowed_updates: Option<Vec<String>>,
    files: HashMap<String, StoredFile>,
    /// The bot's messages in sending order, as (chat id, message id).
    sent: Vec<(i64, i64)>,
    pub(super) calls: Vec<Call>,
    /// Injected failures by lowercased method name.
    failures: HashMap<String, VecDeque<Failure>>,
    pub(super) webhook: Option<Webhook>,
    long_poll: Option<LongPoll>,
    long_polls_started: u64,
    /// Before this instant setWebhook with a URL answers 429 (Telegram allows one per second).
    pub(super) next_set_webhook_at: Option<Instant>,
    rate_limiter: Option<RateLimiter>,
}

/// The getUpdates call currently waiting, which a newer one or setWebhook terminates.
struct LongPoll {
    id: u64,
    abort: oneshot::Sender<&'static str>,
}

/// A person tried to reply to a message the chat does not have.
#[derive(Debug)]
pub(super) struct NoSuchMessage(pub(super) i64);

/// Who edits a message: only its author may.
#[derive(Debug, Clone, Copy)]
pub(super) enum Editor {
    Bot,
    /// A person, by user id.
    Person(i64),
}

/// Why a message could not be deleted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DeleteError {
    NotFound,
    /// The bot's own message, older than 48 hours.
    TooOld,
    /// Someone else's message in a group: only an administrator may delete it.
    NotAllowed,
}

/// Why a message's text could not be edited.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum EditError {
    NotFound,
    /// Someone else wrote it.
    NotEditable,
    /// It has a caption or nothing, no text.
    NoText,
    NotModified,
}

impl Bot {
    pub(super) fn new(id: i64, username: &str, config: &FakeTelegramConfig) -> Bot {
        Bot {
            user: User {
                id,
                is_bot: true,
                first_name: username.to_owned(),
                last_name: None,
                username: Some(username.to_owned()),
            },
            chats: HashMap::new(),
            updates: UpdateQueue::new(config.first_update_id),
            allowed_updates: None,
            files: HashMap::new(),
            sent: Vec::new(),
            calls: Vec::new(),
            failures: HashMap::new(),
            webhook: None,
            long_poll: None,
            long_polls_started: 0,
            next_set_webhook_at: None,
            rate_limiter: config.rate_limits.map(RateLimiter::new),
        }
    }

    pub(super) fn username(&self) -> &str {
        self.user.username.as_deref().unwrap_or_default()
    }

    pub(super) fn chat(&self, chat_id: i64) -> Option<&ChatState> {
        self.chats.get(&chat_id)
    }

    pub(super) fn chat_mut(&mut self, chat_id: i64) -> Option<&mut ChatState> {
        self.chats.get_mut(&chat_id)
    }

    /// A person writes in a chat (created on first use); queues the update.
    pub(super) fn user_message(
        &mut self,
        chat: &ChatSpec,
        from: &UserSpec,
        content: Content,
        reply_to: Option<i64>,
    ) -> Result<Message, NoSuchMessage> {
        let chat_state = self
            .chats
            .entry(chat.id)
            .or_insert_with(|| ChatState::new(chat, from));
        if let Some(id) = reply_to.filter(|id| !chat_state.has_message(*id)) {
            return Err(NoSuchMessage(id));
        }
        let message = chat_state.append(person(from), false, content, reply_to);
        self.queue_message_update(&message, false);
        Ok(message)
    }

    /// The bot writes in a known chat; `None` if the chat is unknown.
    pub(super) fn bot_message(
        &mut self,
        chat_id: i64,
        content: Content,
        reply_to: Option<i64>,
    ) -> Option<Message> {
        let from = self.user.clone();
        let message = self
            .chats
            .get_mut(&chat_id)?
            .append(from, true, content, reply_to);
        self.sent.push((chat_id, message.message_id));
        Some(message)
    }

    /// A person edits the text of their message; queues the `edited_*` update.
    pub(super) fn user_edit(
        &mut self,
        chat_id: i64,
        user_id: i64,
        message_id: i64,
        text: &str,
    ) -> Result<Message, EditError> {
        let chat = self.chats.get_mut(&chat_id).ok_or(EditError::NotFound)?;
        let message = chat.edit_text(message_id, text, Editor::Person(user_id))?;
        self.queue_message_update(&message, true);
        Ok(message)
    }

    /// A person sets their reactions on a message (an empty list takes them back); queues a
    /// `message_reaction` update if that changed anything and the bot asked for the kind.
    pub(super) fn user_react(
        &mut self,
        chat_id: i64,
        from: &UserSpec,
        message_id: i64,
        emojis: Vec<String>,
    ) -> Result<(), NoSuchMessage> {
        let chat = self
            .chats
            .get_mut(&chat_id)
            .ok_or(NoSuchMessage(message_id))?;
        let old = chat
            .set_reactions(message_id, from.id, emojis.clone())
            .ok_or(NoSuchMessage(message_id))?;
        let subscribed = self
            .allowed_updates
            .as_ref()
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "message_reaction"));
        if old != emojis && subscribed {
            let as_types = |emojis: &[String]| -> Vec<Value> {
                emojis
                    .iter()
                    .map(|emoji| json!({"type": "emoji", "emoji": emoji}))
                    .collect()
            };
            let update = json!({
                "chat": chat.chat,
                "message_id": message_id,
                "user": person(from),
                "date": unix_now(),
                "old_reaction": as_types(&old),
                "new_reaction": as_types(&emojis),
            });
            self.updates.push("message_reaction", update);
        }
        Ok(())
    }

    fn queue_message_update(&mut self, message: &Message, edited: bool) {
        let kind = match (message.chat.kind == ChatKind::Channel, edited) {
            (false, false) => "message",
            (false, true) => "edited_message",
            (true, false) => "channel_post",
            (true, true) => "edited_channel_post",
        };
        let subscribed = self
            .allowed_updates
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|allowed| allowed == kind));
        if subscribed {
            self.updates.push(kind, message.to_json());
        }
    }

    /// Replaces the subscription with the known kinds among `names`; naming none restores
    /// the default, as on the real server.
    pub(super) fn subscribe_to(&mut self, names: Vec<String>) {
        let mut kinds: Vec<String> = names
            .into_iter()
            .map(|name| name.to_ascii_lowercase())
            .filter(|name| UPDATE_KINDS.contains(&name.as_str()))
            .collect();
        kinds.sort();
        kinds.dedup();
        self.allowed_updates = (!kinds.is_empty()).then_some(kinds);
    }

    /// Registers photo bytes as the sizes of a photo.
    pub(super) fn store_photo(&mut self, bytes: Bytes, caption: Option<&str>) -> Content {
        let photo = PHOTO_SIDES
            .iter()
            .map(|&side| {
                let file = self.store_file("photos", Some("jpg"), "image/jpeg", bytes.clone());
                PhotoSize {
                    file_id: file.file_id.clone(),
                    file_unique_id: file.file_unique_id.clone(),
                    width: side,
                    height: side,
                    file_size: file.bytes.len(),
                }
            })
            .collect();
        Content::Photo {
            photo,
            caption: caption.map(str::to_owned),
            caption_entities: caption.map(entities).unwrap_or_default(),
        }
    }

    /// Registers a document's bytes.
    pub(super) fn store_document(&mut self, bytes: Bytes, file_name: &str, mime: &str) -> Content {
        let extension = Path::new(file_name)
            .extension()
            .and_then(|extension| extension.to_str());
        let file = self.store_file("documents", extension, mime, bytes);
        Content::Document {
            document: Document {
                file_id: file.file_id.clone(),
                file_unique_id: file.file_unique_id.clone(),
                file_name: file_name.to_owned(),
                mime_type: mime.to_owned(),
                file_size: file.bytes.len(),
            },
            caption: None,
        }
    }

    fn store_file(
        &mut self,
        folder: &str,
        extension: Option<&str>,
        mime: &str,
        bytes: Bytes,
    ) -> &StoredFile {
        let suffix = extension
            .map(|extension| format!(".{extension}"))
            .unwrap_or_default();
        let file = StoredFile {
            file_id: random_text(40),
            file_unique_id: random_text(16),
            path: format!("{folder}/file_{}{suffix}", self.files.len()),
            mime_type: mime.to_owned(),
            bytes,
        };
        self.files.entry(file.file_id.clone()).or_insert(file)
    }

    pub(super) fn file(&self, file_id: &str) -> Option<&StoredFile> {
        self.files.get(file_id)
    }

    pub(super) fn file_at(&self, path: &str) -> Option<&StoredFile> {
        self.files.values().find(|file| file.path == path)
    }

    /// Takes a flood-control token for a message to `chat_id`, or answers `retry_after`.
    pub(super) fn take_rate_token(&mut self, chat_id: i64) -> Result<(), u32> {
        match &mut self.rate_limiter {
            Some(limiter) => limiter.acquire(chat_id, Instant::now()),
            None => Ok(()),
        }
    }

    /// Terminates the waiting getUpdates, if any, with a 409 saying `reason`.
    pub(super) fn abort_long_poll(&mut self, reason: &'static str) {
        if let Some(poll) = self.long_poll.take() {
            // The poller may have just answered and gone; then there is no one to tell.
            let _ = poll.abort.send(reason);
        }
    }

    /// Registers a waiting getUpdates; returns its id and where its termination arrives.
    pub(super) fn start_long_poll(&mut self) -> (u64, oneshot::Receiver<&'static str>) {
        self.long_polls_started += 1;
        let (abort, aborted) = oneshot::channel();
        self.long_poll = Some(LongPoll {
            id: self.long_polls_started,
            abort,
        });
        (self.long_polls_started, aborted)
    }

    /// Forgets the waiting getUpdates `id` once it answered (unless a newer one replaced it).
    pub(super) fn end_long_poll(&mut self, id: u64) {
        if self.long_poll.as_ref().is_some_and(|poll| poll.id == id) {
            self.long_poll = None;
        }
    }

    pub(super) fn queue_failure(&mut self, method: &str, failure: Failure) {
        self.failures
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back(failure);
    }

    pub(super) fn take_failure(&mut self, method: &str) -> Option<Failure> {
        self.failures
            .get_mut(&method.to_ascii_lowercase())?
            .pop_front()
    }

    pub(super) fn sent_messages(&self) -> Vec<SentMessage> {
        self.sent_messages_from(0)
    }

    /// The bot's messages from the `from`-th on.
    pub(super) fn sent_messages_from(&self, from: usize) -> Vec<SentMessage> {
        self.sent
            .iter()
            .skip(from)
            .filter_map(|&(chat_id, message_id)| {
                let stored = self.chats.get(&chat_id)?.messages.get(&message_id)?;
                let message = &stored.message;
                let text = match &message.content {
                    Content::Text { text, .. } => text.clone(),
                    Content::Photo { caption, .. } | Content::Document { caption, .. } => {
                        caption.clone().unwrap_or_default()
                    }
                };
                Some(SentMessage {
                    chat_id,
                    message_id,
                    text,
                    reply_to_message_id: message.reply_to_message.as_ref().map(|m| m.message_id),
                    date: message.date,
                    edited: message.edit_date.is_some(),
                    deleted: stored.deleted,
                })
            })
            .collect()
    }

    pub(super) fn webhook_state(&self) -> Option<WebhookState> {
        self.webhook.as_ref().map(|webhook| WebhookState {
            url: webhook.url.clone(),
            secret_token: webhook.secret_token.clone(),
            pending: self.updates.len(),
            last_error_message: webhook.last_error.as_ref().map(|e| e.message.clone()),
            deliveries: webhook.deliveries,
        })
    }
}

fn person(user: &UserSpec) -> User {
    User {
        id: user.id,
        is_bot: false,
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        username: user.username.clone(),
    }
}

/// A file the bot can fetch with getFile and download.
pub(super) struct StoredFile {
    pub(super) file_id: String,
    pub(super) file_unique_id: String,
    /// Relative path of the download URL, like Telegram's `documents/file_3.pdf`.
    pub(super) path: String,
    pub(super) mime_type: String,
    pub(super) bytes: Bytes,
}

fn random_text(length: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// One chat and its messages.
pub(super) struct ChatState {
    /// The Chat object its messages carry.
    chat: Chat,
    messages: BTreeMap<i64, StoredMessage>,
    /// Message ids are per chat and shared by everyone writing there.
    last_message_id: i64,
}

struct StoredMessage {
    message: Message,
    /// Written by the bot.
    outgoing: bool,
    /// Deleted for everyone: kept only so that `sent()` can show it.
    deleted: bool,
    /// Each reactor's emoji (the bot's under its own user id), in the order set.
    reactions: BTreeMap<i64, Vec<String>>,
}

impl ChatState {
    /// A chat as `first_writer` opens it; a private chat takes their names.
    fn new(spec: &ChatSpec, first_writer: &UserSpec) -> ChatState {
        let chat = match spec.kind {
            ChatKind::Private => Chat {
                id: spec.id,
                kind: spec.kind,
                title: None,
                username: first_writer.username.clone(),
                first_name: Some(first_writer.first_name.clone()),
                last_name: first_writer.last_name.clone(),
            },
            ChatKind::Group | ChatKind::Supergroup | ChatKind::Channel => Chat {
                id: spec.id,
                kind: spec.kind,
                title: spec.title.clone(),
                username: None,
                first_name: None,
                last_name: None,
            },
        };
        ChatState {
            chat,
            messages: BTreeMap::new(),
            last_message_id: 0,
        }
    }

    pub(super) fn has_message(&self, message_id: i64) -> bool {
        self.live(message_id).is_some()
    }

    /// A message that was not deleted.
    fn live(&self, message_id: i64) -> Option<&StoredMessage> {
        self.messages.get(&message_id).filter(|m| !m.deleted)
    }

    fn live_mut(&mut self, message_id: i64) -> Option<&mut StoredMessage> {
        self.messages.get_mut(&message_id).filter(|m| !m.deleted)
    }

    /// Deletes a message for everyone, as the bot may: its own messages for 48 hours, and
    /// anyone's in a private chat.
    pub(super) fn delete(&mut self, message_id: i64, now: i64) -> Result<(), DeleteError> {
        let private = self.chat.kind == ChatKind::Private;
        let stored = self.live_mut(message_id).ok_or(DeleteError::NotFound)?;
        if !stored.outgoing && !private {
            return Err(DeleteError::NotAllowed);
        }
        if now - stored.message.date >= MAX_DELETE_AGE_SECS {
            return Err(DeleteError::TooOld);
        }
        stored.deleted = true;
        Ok(())
    }

    /// Replaces one reactor's reactions on a message; answers the ones replaced, or `None`
    /// if the message does not exist.
    pub(super) fn set_reactions(
        &mut self,
        message_id: i64,
        reactor: i64,
        emojis: Vec<String>,
    ) -> Option<Vec<String>> {
        let reactions = &mut self.live_mut(message_id)?.reactions;
        let old = if emojis.is_empty() {
            reactions.remove(&reactor)
        } else {
            reactions.insert(reactor, emojis)
        };
        Some(old.unwrap_or_default())
    }

    /// One reactor's reactions on a message.
    pub(super) fn reactions_of(&self, message_id: i64, reactor: i64) -> Vec<String> {
        self.live(message_id)
            .and_then(|m| m.reactions.get(&reactor).cloned())
            .unwrap_or_default()
    }

    /// Makes a message look `seconds` older, as time passing would.
    pub(super) fn backdate(&mut self, message_id: i64, seconds: i64) -> Option<()> {
        let stored = self.messages.get_mut(&message_id)?;
        stored.message.date -= seconds;
        Some(())
    }

    /// Stores a new message under the chat's next id. In a channel the post is signed by the
    /// channel (`sender_chat`) instead of a user.
    fn append(
        &mut self,
        from: User,
        outgoing: bool,
        content: Content,
        reply_to: Option<i64>,
    ) -> Message {
        self.last_message_id += 1;
        let is_channel = self.chat.kind == ChatKind::Channel;
        let reply_to_message = reply_to
            .and_then(|id| self.messages.get(&id))
            .map(|replied| {
                Box::new(Message {
                    reply_to_message: None,
                    ..replied.message.clone()
                })
            });
        let message = Message {
            message_id: self.last_message_id,
            from: (!is_channel).then_some(from),
            sender_chat: is_channel.then(|| self.chat.clone()),
            chat: self.chat.clone(),
            date: unix_now(),
            edit_date: None,
            reply_to_message,
            content,
        };
        let stored = StoredMessage {
            message: message.clone(),
            outgoing,
            deleted: false,
            reactions: BTreeMap::new(),
        };
        self.messages.insert(message.message_id, stored);
        message
    }

    /// Whether `editor` may replace the text of a message. A channel post, signed by the
    /// channel, may be edited by any person.
    pub(super) fn check_text_edit(&self, message_id: i64, editor: Editor) -> Result<(), EditError> {
        let stored = self.live(message_id).ok_or(EditError::NotFound)?;
        let is_author = match editor {
            Editor::Bot => stored.outgoing,
            Editor::Person(user_id) => {
                !stored.outgoing
                    && stored
                        .message
                        .from
                        .as_ref()
                        .is_none_or(|from| from.id == user_id)
            }
        };
        if !is_author {
            return Err(EditError::NotEditable);
        }
        match stored.message.content {
            Content::Text { .. } => Ok(()),
            Content::Photo { .. } | Content::Document { .. } => Err(EditError::NoText),
        }
    }

    /// Replaces the text of a message, stamping `edit_date`.
    pub(super) fn edit_text(
        &mut self,
        message_id: i64,
        new_text: &str,
        editor: Editor,
    ) -> Result<Message, EditError> {
        self.check_text_edit(message_id, editor)?;
        let message = &mut self
            .live_mut(message_id)
            .ok_or(EditError::NotFound)?
            .message;
        match &message.content {
            Content::Text { text, .. } if text == new_text => Err(EditError::NotModified),
            Content::Text { .. } => {
                message.content = Content::text(new_text);
                message.edit_date = Some(unix_now());
                Ok(message.clone())
            }
            Content::Photo { .. } | Content::Document { .. } => Err(EditError::NoText),
        }
    }
}

pub(super) fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}
