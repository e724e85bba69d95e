//! A local fake of the Telegram Bot API.
//!
//! It speaks the real wire format — `{base_url}/bot{token}/{method}`, parameters from the query
//! string or a JSON or form body, `{"ok":…}` envelopes with Telegram's status codes and error
//! descriptions, 429 answers with `retry_after` — so a connector tested against it reaches real
//! Telegram by changing only its base URL. Tests play the people on the other side through
//! [`FakeTelegram`] (`user_sends`, `user_edits`, …), observe what the bot did (`sent`, `calls`,
//! `webhook`) and inject trouble (`fail_next`, [`RateLimits`]).
//!
//! Methods: getMe, getUpdates, setWebhook, deleteWebhook, getWebhookInfo, sendMessage,
//! editMessageText, deleteMessage, setMessageReaction, sendChatAction and getFile, plus
//! downloads at
//! `{base_url}/file/bot{token}/{file_path}`. Any other method answers 404 "Not Found", as an
//! unknown method does on the real server.
//!
//! Where it knowingly differs from Telegram:
//! - a webhook may be a plain `http://` URL on any port (Telegram wants HTTPS on 443, 80, 88 or
//!   8443) and setWebhook does not probe it; failed deliveries are retried after 100 ms, doubling
//!   up to 2 s (Telegram waits far longer), and each attempt gives up after 10 s;
//! - `parse_mode` is accepted but the text is kept as sent: there is no markup parsing, hence no
//!   "can't parse entities" error unless injected with [`Failure::BadRequest`]. Of the entities
//!   Telegram finds in plain text by itself, texts and captions carry mentions and commands,
//!   not URLs, e-mail addresses, hashtags or phone numbers;
//! - the real server's pacing of an unchanged getUpdates offset (at least 3 s of waiting) and of
//!   repeated 409 answers (one per 3 s) is not reproduced;
//! - a bot may delete others' messages only in private chats (it is never a group admin), and
//!   gets `message_reaction` updates from groups as well (Telegram wants it to be an admin);
//! - photo sizes are nominal (the bytes are not decoded) and both sizes serve the original bytes.

mod methods;
mod params;
mod rate_limit;
mod server;
mod state;
mod updates;
mod webhook;
mod wire;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::DropGuard;

use state::{Bot, NoSuchMessage, Shared};
use wire::Content;

/// Handle on a running fake Telegram Bot API server. Cheap to clone; the server stops when the
/// last clone is dropped. Methods taking a `token` panic if it was not registered with
/// [`FakeTelegram::add_bot`]: that is a mistake in the test, not a Telegram answer.
#[derive(Clone)]
pub struct FakeTelegram {
    inner: Arc<Handle>,
}

impl fmt::Debug for FakeTelegram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeTelegram")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

struct Handle {
    shared: Arc<Shared>,
    base_url: String,
    /// Stops the server, long polls and webhook deliveries when the last handle goes away.
    _shutdown: DropGuard,
}

/// How a [`FakeTelegram`] behaves beyond the Bot API's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeTelegramConfig {
    /// Flood limits on sendMessage and editMessageText; `None` never answers 429 on its own.
    pub rate_limits: Option<RateLimits>,
    /// The update_id of each bot's first update.
    pub first_update_id: i64,
}

impl Default for FakeTelegramConfig {
    fn default() -> Self {
        FakeTelegramConfig {
            rate_limits: None,
            first_update_id: 1000,
        }
    }
}

/// Token buckets standing in for Telegram's flood control: one per chat and one per bot, both
/// charged by every sendMessage and editMessageText. A call finding either bucket empty answers
/// 429 with the whole seconds (at least 1) until both hold a token, and has no effect.
/// A rate of 0 never refills (retry_after saturates); a burst of 0 counts as 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Tokens a chat's bucket regains per second.
    pub per_chat_per_sec: u32,
    /// Capacity of a chat's bucket.
    pub per_chat_burst: u32,
    /// Tokens the bot-wide bucket regains per second.
    pub global_per_sec: u32,
    /// Capacity of the bot-wide bucket.
    pub global_burst: u32,
}

/// A failure to answer instead of the next call of a method (see [`FakeTelegram::fail_next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 429 `"Too Many Requests: retry after N"` with `parameters.retry_after`.
    TooManyRequests { retry_after: u32 },
    /// 502 `"Bad Gateway"`, as Telegram's front end answers when its backend is in trouble.
    ServerError,
    /// Holds the answer for `duration` so the client times out. With `after_apply` the call takes
    /// effect first (a sent message is stored and shows in `sent()`): the ambiguous timeout.
    /// Without it nothing happens and, should the client still be waiting, it gets 502.
    Stall {
        after_apply: bool,
        duration: Duration,
    },
    /// 403 with this exact description, e.g. `"Forbidden: bot was blocked by the user"`.
    Forbidden(String),
    /// 400 with this exact description, e.g. `"Bad Request: can't parse entities: …"`, for
    /// errors the fake does not produce by itself.
    BadRequest(String),
}

/// A chat as a test describes it; the fake fills in the rest of Telegram's Chat object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSpec {
    /// Chat id: a private chat has the user's id, groups conventionally negative ids.
    pub id: i64,
    /// Which kind of chat, which decides its Chat.type and the update kinds it produces.
    pub kind: ChatKind,
    /// Title of a group, supergroup or channel; ignored for private chats, which take the
    /// names of the user who first writes there.
    pub title: Option<String>,
}

impl ChatSpec {
    /// The private chat between the bot and a user (same id as the user).
    pub fn private(user_id: i64) -> Self {
        ChatSpec {
            id: user_id,
            kind: ChatKind::Private,
            title: None,
        }
    }

    /// A basic group.
    pub fn group(id: i64, title: &str) -> Self {
        ChatSpec {
            id,
            kind: ChatKind::Group,
            title: Some(title.to_owned()),
        }
    }

    /// A supergroup.
    pub fn supergroup(id: i64, title: &str) -> Self {
        ChatSpec {
            id,
            kind: ChatKind::Supergroup,
            title: Some(title.to_owned()),
        }
    }

    /// A channel: its posts arrive as `channel_post` updates with `sender_chat` and no `from`.
    pub fn channel(id: i64, title: &str) -> Self {
        ChatSpec {
            id,
            kind: ChatKind::Channel,
            title: Some(title.to_owned()),
        }
    }
}

/// Telegram's chat types, serialized as Chat.type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    Private,
    Group,
    Supergroup,
    Channel,
}

/// A person writing to the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub id: i64,
    pub first_name: String,
    pub last_name: Option<String>,
    pub username: Option<String>,
}

impl UserSpec {
    /// A user with only the names Telegram requires.
    pub fn new(id: i64, first_name: &str) -> Self {
        UserSpec {
            id,
            first_name: first_name.to_owned(),
            last_name: None,
            username: None,
        }
    }
}

/// A message the bot sent, as it is now (after any edits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub chat_id: i64,
    pub message_id: i64,
    pub text: String,
    pub reply_to_message_id: Option<i64>,
    /// Unix seconds when it was sent.
    pub date: i64,
    /// Whether editMessageText changed it since.
    pub edited: bool,
    /// Whether deleteMessage deleted it since.
    pub deleted: bool,
}

/// One Bot API call as the fake answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Canonical method name (`"sendMessage"`) or, for unknown methods, the name as requested.
    pub method: String,
    /// Parameters as received: query and form values as strings, JSON body values as sent.
    pub params: Value,
    /// HTTP status answered.
    pub status: u16,
}

/// A registered bot, as getMe describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotInfo {
    pub id: i64,
    pub username: String,
}

/// A bot's webhook as the fake runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookState {
    pub url: String,
    pub secret_token: Option<String>,
    /// Updates not yet confirmed by a 2xx answer.
    pub pending: usize,
    /// The latest failure, e.g. "Wrong response from the webhook: 500 Internal Server Error".
    pub last_error_message: Option<String>,
    /// HTTP delivery attempts so far, failed ones included.
    pub deliveries: u64,
}

impl FakeTelegram {
    /// Starts a fake on an ephemeral port of 127.0.0.1, serving from a background task.
    pub async fn start(config: FakeTelegramConfig) -> io::Result<FakeTelegram> {
        FakeTelegram::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Starts a fake on `addr` (for the standalone binary), serving from a background task.
    pub async fn start_on(
        addr: SocketAddr,
        config: FakeTelegramConfig,
    ) -> io::Result<FakeTelegram> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config).map_err(io::Error::other)?);
        let shutdown = shared.shutdown.clone().drop_guard();
        tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        Ok(FakeTelegram {
            inner: Arc::new(Handle {
                shared,
                base_url: format!("http://{local_addr}"),
                _shutdown: shutdown,
            }),
        })
    }

    /// Where the fake listens, e.g. `http://127.0.0.1:40123`; the Bot API is at
    /// `{base_url}/bot{token}/{method}`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// Registers a bot. The token must look like Telegram's, `"123456:ABC-DEF…"`: the bot's id
    /// is the number before the colon. Registering a known token again changes nothing.
    ///
    /// # Panics
    /// If the token has no numeric id before a colon.
    pub fn add_bot(&self, token: &str, username: &str) -> BotInfo {
        let Some(id) = token
            .split_once(':')
            .and_then(|(id, _)| id.parse::<i64>().ok())
        else {
            panic!("a bot token looks like \"123456:ABC-DEF...\", got {token:?}");
        };
        let shared = &self.inner.shared;
        shared.mutate(|state| {
            let bot = state
                .bots
                .entry(token.to_owned())
                .or_insert_with(|| Bot::new(id, username, &shared.config));
            BotInfo {
                id: bot.user.id,
                username: bot.username().to_owned(),
            }
        })
    }

    /// A person writes `text` to the bot in `chat` (created on first use); queues a `message`
    /// update (`channel_post` in a channel) and returns the stored Message.
    pub fn user_sends(&self, token: &str, chat: &ChatSpec, from: &UserSpec, text: &str) -> Value {
        self.user_writes(token, chat, from, Content::text(text), None)
    }

    /// Like [`FakeTelegram::user_sends`], replying to an earlier message of the chat.
    ///
    /// # Panics
    /// If the chat has no message `reply_to_message_id`.
    pub fn user_replies(
        &self,
        token: &str,
        chat: &ChatSpec,
        from: &UserSpec,
        reply_to_message_id: i64,
        text: &str,
    ) -> Value {
        let content = Content::text(text);
        self.user_writes(token, chat, from, content, Some(reply_to_message_id))
    }

    /// The person edits the text of their message `message_id`; queues an `edited_message`
    /// update carrying `edit_date` and returns the edited Message.
    ///
    /// # Panics
    /// If `from` did not write message `message_id`, it has no text, or the text is unchanged.
    pub fn user_edits(
        &self,
        token: &str,
        chat: &ChatSpec,
        from: &UserSpec,
        message_id: i64,
        new_text: &str,
    ) -> Value {
        let edited = self.with_bot(token, |bot| {
            bot.user_edit(chat.id, from.id, message_id, new_text)
        });
        match edited {
            Ok(message) => message.to_json(),
            Err(error) => panic!(
                "{} can't edit message {message_id} in chat {}: {error:?}",
                from.first_name, chat.id
            ),
        }
    }

    /// The person sends a photo (with an optional caption). The bytes are registered as two
    /// PhotoSizes (nominal 90x90 and 1280x1280) whose files getFile and the download URL serve.
    pub fn user_sends_photo(
        &self,
        token: &str,
        chat: &ChatSpec,
        from: &UserSpec,
        caption: Option<&str>,
        bytes: Vec<u8>,
    ) -> Value {
        let bytes = Bytes::from(bytes);
        let content = self.with_bot(token, |bot| bot.store_photo(bytes, caption));
        self.user_writes(token, chat, from, content, None)
    }

    /// The person sends a file as a document; getFile and the download URL serve its bytes.
    pub fn user_sends_document(
        &self,
        token: &str,
        chat: &ChatSpec,
        from: &UserSpec,
        file_name: &str,
        mime: &str,
        bytes: Vec<u8>,
    ) -> Value {
        let bytes = Bytes::from(bytes);
        let content = self.with_bot(token, |bot| bot.store_document(bytes, file_name, mime));
        self.user_writes(token, chat, from, content, None)
    }

    /// The person sets their reactions on message `message_id` (an empty list takes them
    /// back). Like Telegram, the `message_reaction` update is queued only for a bot that named
    /// the kind in `allowed_updates`, and only when something changed.
    ///
    /// # Panics
    /// If the chat has no message `message_id`.
    pub fn user_reacts(
        &self,
        token: &str,
        chat: &ChatSpec,
        from: &UserSpec,
        message_id: i64,
        emojis: &[&str],
    ) {
        let emojis = emojis.iter().map(|e| (*e).to_owned()).collect();
        let reacted = self.with_bot(token, |bot| {
            bot.user_react(chat.id, from, message_id, emojis)
        });
        if let Err(NoSuchMessage(id)) = reacted {
            panic!("chat {} has no message {id} to react to", chat.id);
        }
    }

    /// The reactions the bot set on a message with setMessageReaction.
    pub fn bot_reactions(&self, token: &str, chat_id: i64, message_id: i64) -> Vec<String> {
        self.read_bot(token, |bot| {
            bot.chat(chat_id)
                .map(|chat| chat.reactions_of(message_id, bot.user.id))
                .unwrap_or_default()
        })
    }

    /// Makes a message `seconds` older, as if time had passed (the bot may delete its own
    /// messages for 48 hours only).
    ///
    /// # Panics
    /// If the chat has no message `message_id`.
    pub fn backdate_message(&self, token: &str, chat_id: i64, message_id: i64, seconds: i64) {
        let found = self.with_bot(token, |bot| {
            bot.chat_mut(chat_id)?.backdate(message_id, seconds)
        });
        if found.is_none() {
            panic!("chat {chat_id} has no message {message_id}");
        }
    }

    /// Queues any JSON, even malformed, as an update, delivered verbatim. An object without
    /// `update_id` gets the next id; an integer `update_id` is kept (and later ids follow it).
    /// Returns the id used for confirmation — for JSON that is not an object, an id the client
    /// never sees and can only confirm with a later offset.
    pub fn push_raw_update(&self, token: &str, update: Value) -> i64 {
        self.with_bot(token, |bot| bot.updates.push_raw(update))
    }

    /// Makes `next` the id of the bot's next update, as Telegram does after a week of silence
    /// (ids then restart at random). Like the real server, getUpdates treats an offset more than
    /// 10 beyond the queue's end as stale and answers from the oldest pending update.
    pub fn jump_update_ids(&self, token: &str, next: i64) {
        self.with_bot(token, |bot| bot.updates.jump_to(next));
    }

    /// Every message the bot sent, in order, with its current text.
    pub fn sent(&self, token: &str) -> Vec<SentMessage> {
        self.read_bot(token, Bot::sent_messages)
    }

    /// Waits until the bot has sent more than `from` messages (or `timeout` passes) and returns
    /// those after the first `from`: a cheap way to follow a long run of sends.
    pub async fn sent_after(
        &self,
        token: &str,
        from: usize,
        timeout: Duration,
    ) -> Vec<SentMessage> {
        let mut changes = self.inner.shared.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sent = self.read_bot(token, |bot| bot.sent_messages_from(from));
            if !sent.is_empty() {
                return sent;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return sent },
                () = tokio::time::sleep_until(deadline) => return Vec::new(),
            }
        }
    }

    /// The messages the bot sent to one chat, in order.
    pub fn sent_to(&self, token: &str, chat_id: i64) -> Vec<SentMessage> {
        let mut sent = self.sent(token);
        sent.retain(|message| message.chat_id == chat_id);
        sent
    }

    /// Waits until the bot has sent at least `count` messages or `timeout` passes, then returns
    /// all it sent (possibly fewer than `count`).
    pub async fn wait_for_sent(
        &self,
        token: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<SentMessage> {
        let mut changes = self.inner.shared.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sent = self.sent(token);
            if sent.len() >= count {
                return sent;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return sent },
                () = tokio::time::sleep_until(deadline) => return self.sent(token),
            }
        }
    }

    /// Every Bot API call made with this token (unknown tokens are answered 401 and not
    /// recorded), in the order answered. A stalled call is recorded when its answer is
    /// decided, before the stall ends. A call is recorded just after its effect (a sent
    /// message, say) becomes visible, so wait for the record rather than for the effect.
    pub fn calls(&self, token: &str) -> Vec<Call> {
        self.read_bot(token, |bot| bot.calls.clone())
    }

    /// Updates neither confirmed by a getUpdates offset nor delivered to the webhook.
    pub fn pending_updates(&self, token: &str) -> usize {
        self.read_bot(token, |bot| bot.updates.len())
    }

    /// The bot's webhook, if one is set.
    pub fn webhook(&self, token: &str) -> Option<WebhookState> {
        self.read_bot(token, Bot::webhook_state)
    }

    /// Answers the next call of `method` (case-insensitive) with `failure` instead of serving
    /// it. Failures queue up per method and are used one per call, before any validation.
    pub fn fail_next(&self, token: &str, method: &str, failure: Failure) {
        self.with_bot(token, |bot| bot.queue_failure(method, failure));
    }

    fn user_writes(
        &self,
        token: &str,
        chat: &ChatSpec,
        from: &UserSpec,
        content: Content,
        reply_to: Option<i64>,
    ) -> Value {
        let posted = self.with_bot(token, |bot| bot.user_message(chat, from, content, reply_to));
        match posted {
            Ok(message) => message.to_json(),
            Err(NoSuchMessage(id)) => panic!("chat {} has no message {id} to reply to", chat.id),
        }
    }

    /// Runs `change` on a registered bot, waking everything that waits for news.
    fn with_bot<T>(&self, token: &str, change: impl FnOnce(&mut Bot) -> T) -> T {
        self.inner
            .shared
            .mutate_bot(token, change)
            .unwrap_or_else(|| unknown_token(token))
    }

    fn read_bot<T>(&self, token: &str, read: impl FnOnce(&Bot) -> T) -> T {
        self.inner
            .shared
            .read_bot(token, read)
            .unwrap_or_else(|| unknown_token(token))
    }
}

fn unknown_token(token: &str) -> ! {
    panic!("unknown bot token {token:?}: register it with FakeTelegram::add_bot first")
}
