//! The Bot API methods the fake serves, checked in Telegram's order and refused in Telegram's
//! words.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::params::Params;
use super::state::{Bot, DeleteError, EditError, Editor, Shared, unix_now};
use super::webhook::Webhook;
use super::wire::{ApiReply, Content, File, WebhookInfo};

/// Longest wait getUpdates grants, in seconds.
const MAX_LONG_POLL_SECS: i64 = 50;
/// getUpdates' largest and default `limit`.
const MAX_UPDATES_PER_CALL: i64 = 100;
/// Longest message text, in UTF-16 code units.
const MAX_TEXT_UTF16: usize = 4096;
/// Largest file getFile hands out (the cloud Bot API's download limit).
const MAX_DOWNLOAD_BYTES: usize = 20 * 1024 * 1024;
const DEFAULT_MAX_CONNECTIONS: i64 = 40;
const MAX_MAX_CONNECTIONS: i64 = 100;
const MAX_SECRET_TOKEN_LEN: usize = 256;
/// setWebhook calls with a URL are allowed this often.
const SET_WEBHOOK_INTERVAL: Duration = Duration::from_secs(1);

const CONFLICT_OTHER_POLL: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";
const CONFLICT_SET_WEBHOOK: &str = "Conflict: terminated by setWebhook request";
const CONFLICT_WEBHOOK_ACTIVE: &str = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first";
const NOT_MODIFIED: &str = "message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message";

/// The emoji a reaction may use (Bot API, ReactionTypeEmoji).
#[rustfmt::skip]
const REACTION_EMOJI: [&str; 73] = [
    "👍", "👎", "❤", "🔥", "🥰", "👏", "😁", "🤔", "🤯", "😱", "🤬", "😢", "🎉", "🤩", "🤮", "💩",
    "🙏", "👌", "🕊", "🤡", "🥱", "🥴", "😍", "🐳", "❤\u{200d}🔥", "🌚", "🌭", "💯", "🤣", "⚡",
    "🍌", "🏆", "💔", "🤨", "😐", "🍓", "🍾", "💋", "🖕", "😈", "😴", "😭", "🤓", "👻",
    "👨\u{200d}💻", "👀", "🎃", "🙈", "😇", "😨", "🤝", "✍", "🤗", "🫡", "🎅", "🎄", "☃", "💅",
    "🤪", "🗿", "🆒", "💘", "🙉", "🦄", "😘", "💊", "🙊", "😎", "👾", "🤷\u{200d}♂", "🤷",
    "🤷\u{200d}♀", "😡",
];

const CHAT_ACTIONS: [&str; 11] = [
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
];

/// A method's answer; `Err` carries an error answer so that checks can use `?`.
type Answer = Result<ApiReply, ApiReply>;

/// The methods the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    GetMe,
    GetUpdates,
    SetWebhook,
    DeleteWebhook,
    GetWebhookInfo,
    SendMessage,
    EditMessageText,
    SendChatAction,
    GetFile,
    DeleteMessage,
    SetMessageReaction,
}

impl Method {
    const ALL: [Method; 11] = [
        Method::GetMe,
        Method::GetUpdates,
        Method::SetWebhook,
        Method::DeleteWebhook,
        Method::GetWebhookInfo,
        Method::SendMessage,
        Method::EditMessageText,
        Method::SendChatAction,
        Method::GetFile,
        Method::DeleteMessage,
        Method::SetMessageReaction,
    ];

    /// The method a URL names; like the real server, case-insensitively.
    pub(super) fn parse(name: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|method| method.name().eq_ignore_ascii_case(name))
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Method::GetMe => "getMe",
            Method::GetUpdates => "getUpdates",
            Method::SetWebhook => "setWebhook",
            Method::DeleteWebhook => "deleteWebhook",
            Method::GetWebhookInfo => "getWebhookInfo",
            Method::SendMessage => "sendMessage",
            Method::EditMessageText => "editMessageText",
            Method::SendChatAction => "sendChatAction",
            Method::GetFile => "getFile",
            Method::DeleteMessage => "deleteMessage",
            Method::SetMessageReaction => "setMessageReaction",
        }
    }
}

/// Serves one call of `method` for the bot `token`.
pub(super) async fn call(
    shared: &Arc<Shared>,
    token: &str,
    method: Method,
    params: &Params,
) -> ApiReply {
    let answer = match method {
        Method::GetUpdates => get_updates(shared, token, params).await,
        Method::SetWebhook => set_webhook(shared, token, params),
        Method::DeleteWebhook => change_bot(shared, token, |bot| Ok(delete_webhook(bot, params))),
        Method::GetMe => read_bot(shared, token, |bot| Ok(get_me(bot))),
        Method::GetWebhookInfo => read_bot(shared, token, |bot| Ok(get_webhook_info(bot))),
        Method::SendMessage => change_bot(shared, token, |bot| send_message(bot, params)),
        Method::EditMessageText => change_bot(shared, token, |bot| edit_message_text(bot, params)),
        Method::SendChatAction => read_bot(shared, token, |bot| send_chat_action(bot, params)),
        Method::GetFile => read_bot(shared, token, |bot| get_file(bot, params)),
        Method::DeleteMessage => change_bot(shared, token, |bot| delete_message(bot, params)),
        Method::SetMessageReaction => {
            change_bot(shared, token, |bot| set_message_reaction(bot, params))
        }
    };
    answer.unwrap_or_else(|refusal| refusal)
}

fn change_bot(shared: &Shared, token: &str, change: impl FnOnce(&mut Bot) -> Answer) -> Answer {
    shared
        .mutate_bot(token, change)
        .unwrap_or_else(|| Err(ApiReply::unauthorized()))
}

fn read_bot(shared: &Shared, token: &str, read: impl FnOnce(&Bot) -> Answer) -> Answer {
    shared
        .read_bot(token, read)
        .unwrap_or_else(|| Err(ApiReply::unauthorized()))
}

fn get_me(bot: &Bot) -> ApiReply {
    ApiReply::ok(json!({
        "id": bot.user.id,
        "is_bot": true,
        "first_name": bot.user.first_name,
        "username": bot.username(),
        "can_join_groups": true,
        "can_read_all_group_messages": false,
        "supports_inline_queries": false,
        "can_connect_to_business": false,
        "has_main_web_app": false,
    }))
}

/// What getUpdates does after its first look at the queue.
enum Poll {
    Answer(Answer),
    /// Nothing to return yet: wait for updates, the timeout, or termination by a newer call.
    Wait {
        from: Option<i64>,
        id: u64,
        aborted: oneshot::Receiver<&'static str>,
    },
}

async fn get_updates(shared: &Shared, token: &str, params: &Params) -> Answer {
    let offset = params.int("offset").unwrap_or(0);
    let limit = params.int("limit").map_or(MAX_UPDATES_PER_CALL, |limit| {
        limit.clamp(1, MAX_UPDATES_PER_CALL)
    });
    let limit = usize::try_from(limit).unwrap_or(1);
    let timeout = params
        .int("timeout")
        .map_or(0, |secs| secs.clamp(0, MAX_LONG_POLL_SECS));
    let mut changes = shared.subscribe();
    let poll = shared.mutate_bot(token, |bot| {
        if bot.webhook.is_some() {
            return Poll::Answer(Err(ApiReply::conflict(CONFLICT_WEBHOOK_ACTIVE)));
        }
        update_subscription(bot, params);
        let from = bot.updates.confirm(offset);
        let updates = bot.updates.batch(from, limit);
        if !updates.is_empty() || timeout == 0 {
            return Poll::Answer(Ok(ApiReply::ok(updates)));
        }
        // As on the real server, only a call about to wait terminates the one waiting.
        bot.abort_long_poll(CONFLICT_OTHER_POLL);
        let (id, aborted) = bot.start_long_poll();
        Poll::Wait { from, id, aborted }
    });
    let (from, id, mut aborted) = match poll {
        None => return Err(ApiReply::unauthorized()),
        Some(Poll::Answer(answer)) => return answer,
        Some(Poll::Wait { from, id, aborted }) => (from, id, aborted),
    };
    let deadline = Instant::now() + Duration::from_secs(timeout.unsigned_abs());
    loop {
        tokio::select! {
            Ok(reason) = &mut aborted => return Err(ApiReply::conflict(reason)),
            () = tokio::time::sleep_until(deadline) => break,
            () = shared.shutdown.cancelled() => break,
            Ok(()) = changes.changed() => {
                let arrived = shared.read_bot(token, |bot| !bot.updates.batch(from, 1).is_empty());
                if arrived != Some(false) {
                    break;
                }
            }
        }
    }
    change_bot(shared, token, |bot| {
        bot.end_long_poll(id);
        Ok(ApiReply::ok(bot.updates.batch(from, limit)))
    })
}

/// Reads `allowed_updates` as the real server does: a JSON array of strings replaces the
/// subscription, anything else leaves it as it is.
fn update_subscription(bot: &mut Bot, params: &Params) {
    let Some(Ok(Value::Array(names))) = params.json("allowed_updates") else {
        return;
    };
    let names: Option<Vec<String>> = names
        .into_iter()
        .map(|name| match name {
            Value::String(name) => Some(name),
            _ => None,
        })
        .collect();
    if let Some(names) = names {
        bot.subscribe_to(names);
    }
}

fn set_webhook(shared: &Arc<Shared>, token: &str, params: &Params) -> Answer {
    let Some(url) = params.text("url") else {
        // setWebhook without a URL removes the webhook, like deleteWebhook.
        return change_bot(shared, token, |bot| Ok(delete_webhook(bot, params)));
    };
    let secret_token = params.text("secret_token");
    if let Some(secret) = secret_token {
        if secret.len() > MAX_SECRET_TOKEN_LEN {
            return Err(ApiReply::bad_request("secret token is too long"));
        }
        let allowed = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-';
        if !secret.bytes().all(allowed) {
            return Err(ApiReply::bad_request(
                "secret token contains unallowed characters",
            ));
        }
    }
    let is_http_url = reqwest::Url::parse(url)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
    if !is_http_url {
        return Err(ApiReply::bad_request("invalid webhook URL specified"));
    }
    let max_connections = params
        .int("max_connections")
        .map_or(DEFAULT_MAX_CONNECTIONS, |max| {
            max.clamp(1, MAX_MAX_CONNECTIONS)
        });
    let max_connections = usize::try_from(max_connections).unwrap_or(1);
    let drop_pending_updates = params.flag("drop_pending_updates");
    change_bot(shared, token, |bot| {
        let now = Instant::now();
        if bot
            .next_set_webhook_at
            .is_some_and(|allowed_at| now < allowed_at)
        {
            return Err(ApiReply::too_many_requests(1));
        }
        bot.next_set_webhook_at = Some(now + SET_WEBHOOK_INTERVAL);
        update_subscription(bot, params);
        let unchanged = bot.webhook.as_ref().is_some_and(|webhook| {
            webhook.url == url
                && webhook.secret_token.as_deref() == secret_token
                && webhook.max_connections == max_connections
        });
        if unchanged && !drop_pending_updates {
            return Ok(ApiReply::ok_described(true, "Webhook is already set"));
        }
        bot.abort_long_poll(CONFLICT_SET_WEBHOOK);
        if drop_pending_updates {
            bot.updates.clear();
        }
        let secret_token = secret_token.map(str::to_owned);
        let webhook = Webhook::start(shared, token, url.to_owned(), secret_token, max_connections);
        bot.webhook = Some(webhook);
        Ok(ApiReply::ok_described(true, "Webhook was set"))
    })
}

fn delete_webhook(bot: &mut Bot, params: &Params) -> ApiReply {
    let was_set = bot.webhook.take().is_some();
    if params.flag("drop_pending_updates") {
        bot.updates.clear();
    }
    let description = if was_set {
        "Webhook was deleted"
    } else {
        "Webhook is already deleted"
    };
    ApiReply::ok_described(true, description)
}

fn get_webhook_info(bot: &Bot) -> ApiReply {
    let webhook = bot.webhook.as_ref();
    let last_error = webhook.and_then(|webhook| webhook.last_error.as_ref());
    ApiReply::ok(WebhookInfo {
        url: webhook.map_or("", |webhook| webhook.url.as_str()),
        has_custom_certificate: false,
        pending_update_count: bot.updates.len(),
        last_error_date: last_error.map(|error| error.date),
        last_error_message: last_error.map(|error| error.message.as_str()),
        max_connections: webhook.map(|webhook| webhook.max_connections),
        allowed_updates: webhook.and(bot.allowed_updates.as_deref()),
    })
}

fn send_message(bot: &mut Bot, params: &Params) -> Answer {
    let text = message_text(params, "message is too long")?;
    let chat_id = known_chat(bot, params)?;
    let reply_to = reply_target(bot, chat_id, params)?;
    bot.take_rate_token(chat_id)
        .map_err(ApiReply::too_many_requests)?;
    let message = bot
        .bot_message(chat_id, Content::text(&text), reply_to)
        .ok_or_else(chat_not_found)?;
    Ok(ApiReply::ok(message))
}

fn edit_message_text(bot: &mut Bot, params: &Params) -> Answer {
    let text = message_text(params, "MESSAGE_TOO_LONG")?;
    let message_id = message_id(params)?;
    let chat_id = known_chat(bot, params)?;
    // Telegram vets the target before flood control and compares the text after it.
    bot.chat(chat_id)
        .ok_or_else(chat_not_found)?
        .check_text_edit(message_id, Editor::Bot)
        .map_err(edit_refusal)?;
    bot.take_rate_token(chat_id)
        .map_err(ApiReply::too_many_requests)?;
    let message = bot
        .chat_mut(chat_id)
        .ok_or_else(chat_not_found)?
        .edit_text(message_id, &text, Editor::Bot)
        .map_err(edit_refusal)?;
    Ok(ApiReply::ok(message))
}

fn edit_refusal(error: EditError) -> ApiReply {
    ApiReply::bad_request(match error {
        EditError::NotFound => "message to edit not found",
        EditError::NotEditable => "message can't be edited",
        EditError::NoText => "there is no text in the message to edit",
        EditError::NotModified => NOT_MODIFIED,
    })
}

fn delete_message(bot: &mut Bot, params: &Params) -> Answer {
    let message_id = message_id(params)?;
    let chat_id = known_chat(bot, params)?;
    bot.chat_mut(chat_id)
        .ok_or_else(chat_not_found)?
        .delete(message_id, unix_now())
        .map_err(|error| {
            ApiReply::bad_request(match error {
                DeleteError::NotFound => "message to delete not found",
                DeleteError::TooOld => "message can't be deleted for everyone",
                DeleteError::NotAllowed => "message can't be deleted",
            })
        })?;
    Ok(ApiReply::ok(true))
}

/// Sets the bot's reactions on a message; an absent or empty `reaction` takes them back.
/// A bot without Premium may set one.
fn set_message_reaction(bot: &mut Bot, params: &Params) -> Answer {
    let message_id = message_id(params)?;
    let chat_id = known_chat(bot, params)?;
    let reaction = match params.json("reaction") {
        None => Vec::new(),
        Some(Ok(Value::Array(reaction))) => reaction,
        Some(_) => {
            return Err(ApiReply::bad_request(
                "can't parse reaction types JSON object",
            ));
        }
    };
    let emojis = reaction
        .iter()
        .map(
            |reaction| match (reaction["type"].as_str(), reaction["emoji"].as_str()) {
                (Some("emoji"), Some(emoji)) if REACTION_EMOJI.contains(&emoji) => {
                    Ok(emoji.to_owned())
                }
                _ => Err(ApiReply::bad_request("REACTION_INVALID")),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    if emojis.len() > 1 {
        return Err(ApiReply::bad_request("REACTIONS_TOO_MANY"));
    }
    let bot_id = bot.user.id;
    bot.chat_mut(chat_id)
        .ok_or_else(chat_not_found)?
        .set_reactions(message_id, bot_id, emojis)
        .ok_or_else(|| ApiReply::bad_request("message to react not found"))?;
    Ok(ApiReply::ok(true))
}

/// The `message_id` parameter, which must be a positive number.
fn message_id(params: &Params) -> Result<i64, ApiReply> {
    params
        .int("message_id")
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiReply::bad_request("message identifier is not specified"))
}

fn send_chat_action(bot: &Bot, params: &Params) -> Answer {
    let action = params
        .text("action")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !CHAT_ACTIONS.contains(&action.as_str()) {
        return Err(ApiReply::bad_request("wrong parameter action in request"));
    }
    known_chat(bot, params)?;
    Ok(ApiReply::ok(true))
}

fn get_file(bot: &Bot, params: &Params) -> Answer {
    let file = params
        .text("file_id")
        .and_then(|file_id| bot.file(file_id))
        .ok_or_else(|| ApiReply::bad_request("invalid file_id"))?;
    if file.bytes.len() > MAX_DOWNLOAD_BYTES {
        return Err(ApiReply::bad_request("file is too big"));
    }
    Ok(ApiReply::ok(File {
        file_id: &file.file_id,
        file_unique_id: &file.file_unique_id,
        file_size: file.bytes.len(),
        file_path: &file.path,
    }))
}

/// The `text` parameter as Telegram keeps it, without surrounding whitespace, within the
/// length limit. `too_long` words the refusal, which differs between sending and editing.
fn message_text(params: &Params, too_long: &str) -> Result<String, ApiReply> {
    let text = params
        .text("text")
        .unwrap_or_default()
        .trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Err(ApiReply::bad_request("message text is empty"));
    }
    if text.encode_utf16().count() > MAX_TEXT_UTF16 {
        return Err(ApiReply::bad_request(too_long));
    }
    Ok(text.to_owned())
}

/// The `chat_id` parameter, which must name a chat the bot knows (someone wrote there).
fn known_chat(bot: &Bot, params: &Params) -> Result<i64, ApiReply> {
    let chat_id = params
        .text("chat_id")
        .ok_or_else(|| ApiReply::bad_request("chat_id is empty"))?;
    chat_id
        .parse::<i64>()
        .ok()
        .filter(|chat_id| bot.chat(*chat_id).is_some())
        .ok_or_else(chat_not_found)
}

fn chat_not_found() -> ApiReply {
    ApiReply::bad_request("chat not found")
}

/// The message a new one replies to, from `reply_parameters` or the older
/// `reply_to_message_id`. A missing target is refused unless sending without the reply is
/// allowed. The fake replies within the chat only: `reply_parameters.chat_id` is ignored.
fn reply_target(bot: &Bot, chat_id: i64, params: &Params) -> Result<Option<i64>, ApiReply> {
    let (message_id, allow_without_reply) = match params.json("reply_parameters") {
        Some(parsed) => {
            let reply = parsed
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| ApiReply::bad_request("can't parse reply parameters JSON object"))?;
            let allow = reply["allow_sending_without_reply"]
                .as_bool()
                .unwrap_or(false);
            (reply["message_id"].as_i64(), allow)
        }
        None => (
            params.int("reply_to_message_id"),
            params.flag("allow_sending_without_reply"),
        ),
    };
    let Some(message_id) = message_id.filter(|id| *id > 0) else {
        return Ok(None);
    };
    let exists = bot
        .chat(chat_id)
        .is_some_and(|chat| chat.has_message(message_id));
    if exists {
        Ok(Some(message_id))
    } else if allow_without_reply {
        Ok(None)
    } else {
        Err(ApiReply::bad_request("message to be replied not found"))
    }
}
