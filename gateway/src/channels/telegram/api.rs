//! A typed client of the Telegram Bot API: one method per call the connector makes, every
//! answer classified by one helper ([`BotApi::call`]).
//!
//! The bot token is part of every request URL (`{base}/bot{token}/{method}`), so the URL
//! is never formatted, transport errors are stripped of it (`reqwest::Error::without_url`)
//! before their text is kept, and any text that could still hold the token has it masked.

use std::error::Error as _;
use std::time::Duration;

use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use thiserror::Error;

use super::types::{File, Message, Response, ResponseParameters, User};
use crate::config::Secret;

/// The Bot API of one bot. Cheap to share by reference; reqwest pools the connections.
#[derive(Debug)]
pub(crate) struct BotApi {
    client: reqwest::Client,
    /// Without a trailing `/`.
    api_base: String,
    token: Secret,
    request_timeout: Duration,
}

/// One update as Telegram sent it. The id is read apart from the rest, so an update the
/// connector cannot normalise is skipped (its offset confirmed) without losing the batch.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawUpdate {
    pub update_id: i64,
    pub raw: Value,
}

/// Why a Bot API call failed. The text never holds the bot token.
#[derive(Debug, Error)]
pub(crate) enum ApiError {
    #[error("rate limited by Telegram; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// The token was revoked or is invalid: the connection needs the person's action.
    #[error("Telegram rejected the bot token")]
    Unauthorized,
    /// A webhook is set, or another client is polling with the same token.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("rejected by Telegram: {0}")]
    BadRequest(String),
    /// E.g. the user blocked the bot, or the bot was removed from the group.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("Telegram server error {status}: {description}")]
    Server { status: u16, description: String },
    /// The request never left (connect or DNS failure, bad request builder): safe to retry.
    #[error("request not sent: {0}")]
    NotSent(String),
    /// A timeout or failure after the request may have reached Telegram: it may have
    /// taken effect.
    #[error("request may have been sent: {0}")]
    MaybeSent(String),
    /// Telegram (or whatever answered) did not send a valid Bot API answer; the call may
    /// still have taken effect.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

impl ApiError {
    /// The same call may succeed later without anyone acting.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::NotSent(_) | Self::MaybeSent(_)
        )
    }

    /// The call may have taken effect although no success was seen: repeating a
    /// non-idempotent call (`sendMessage`) may do it twice. An unreadable answer counts:
    /// whatever answered may have acted first.
    pub(crate) fn is_ambiguous(&self) -> bool {
        matches!(self, Self::MaybeSent(_) | Self::InvalidResponse(_))
    }

    /// Applies `f` to the error's free text.
    fn map_text(self, f: impl Fn(String) -> String) -> Self {
        match self {
            Self::Conflict(t) => Self::Conflict(f(t)),
            Self::BadRequest(t) => Self::BadRequest(f(t)),
            Self::Forbidden(t) => Self::Forbidden(f(t)),
            Self::Server {
                status,
                description,
            } => Self::Server {
                status,
                description: f(description),
            },
            Self::NotSent(t) => Self::NotSent(f(t)),
            Self::MaybeSent(t) => Self::MaybeSent(f(t)),
            Self::InvalidResponse(t) => Self::InvalidResponse(f(t)),
            Self::RateLimited { .. } | Self::Unauthorized => self,
        }
    }
}

#[derive(Serialize)]
struct GetUpdates<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    timeout: u64,
    allowed_updates: &'a [&'a str],
}

#[derive(Serialize)]
struct SetWebhook<'a> {
    url: &'a str,
    secret_token: &'a str,
    max_connections: u32,
    allowed_updates: &'a [&'a str],
}

#[derive(Serialize)]
struct DeleteWebhook {
    drop_pending_updates: bool,
}

#[derive(Serialize)]
struct SendMessage<'a> {
    chat_id: i64,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_parameters: Option<ReplyParameters>,
}

#[derive(Serialize)]
struct ReplyParameters {
    message_id: i64,
    /// The reply still goes out if the message it answers was deleted meanwhile.
    allow_sending_without_reply: bool,
}

#[derive(Serialize)]
struct EditMessageText<'a> {
    chat_id: i64,
    message_id: i64,
    text: &'a str,
}

#[derive(Serialize)]
struct GetFile<'a> {
    file_id: &'a str,
}

#[derive(Serialize)]
struct DeleteMessage {
    chat_id: i64,
    message_id: i64,
}

#[derive(Serialize)]
struct SetMessageReaction<'a> {
    chat_id: i64,
    message_id: i64,
    reaction: Vec<ReactionType<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "emoji")]
struct ReactionType<'a> {
    emoji: &'a str,
}

#[derive(Serialize)]
struct SendChatAction<'a> {
    chat_id: i64,
    action: &'a str,
}

impl BotApi {
    /// A client of `api_base` (`https://api.telegram.org`, or a fake's address) for the bot
    /// with `token`. `request_timeout` bounds every call (long polls get it on top of
    /// their own timeout).
    pub(crate) fn new(
        api_base: &str,
        token: Secret,
        request_timeout: Duration,
    ) -> Result<Self, ApiError> {
        // The token becomes a path segment, so anything but Telegram's shape (`123456:ABC-d_0`)
        // could change the URL's meaning. A misshapen token can never work: the person must
        // supply another, as for a revoked one.
        if !well_formed_token(token.expose()) {
            return Err(ApiError::Unauthorized);
        }
        let api_base = api_base.trim_end_matches('/');
        reqwest::Url::parse(api_base)
            .map_err(|e| ApiError::NotSent(format!("invalid API base URL: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            // Telegram does not redirect; following one would only send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::NotSent(describe(e, &token)))?;
        Ok(Self {
            client,
            api_base: api_base.to_string(),
            token,
            request_timeout,
        })
    }

    /// The bot's own account.
    pub(crate) async fn get_me(&self) -> Result<User, ApiError> {
        self.call("getMe", &serde_json::Map::new(), None).await
    }

    /// Long-polls for updates after `offset` (which also confirms all earlier ones), waiting
    /// up to `timeout` for the first. An element without a numeric `update_id` fails the
    /// whole call: without it the batch cannot be confirmed.
    pub(crate) async fn get_updates(
        &self,
        offset: Option<i64>,
        timeout: Duration,
        allowed_updates: &[&str],
    ) -> Result<Vec<RawUpdate>, ApiError> {
        let params = GetUpdates {
            offset,
            timeout: timeout.as_secs(),
            allowed_updates,
        };
        let http_timeout = timeout.saturating_add(self.request_timeout);
        let updates: Vec<Value> = self.call("getUpdates", &params, Some(http_timeout)).await?;
        updates
            .into_iter()
            .map(|raw| match raw.get("update_id").and_then(Value::as_i64) {
                Some(update_id) => Ok(RawUpdate { update_id, raw }),
                None => Err(ApiError::InvalidResponse(
                    "an update has no numeric update_id".to_string(),
                )),
            })
            .collect()
    }

    /// Makes Telegram push updates to `url`, with `secret_token` in the
    /// `X-Telegram-Bot-Api-Secret-Token` header of every push.
    pub(crate) async fn set_webhook(
        &self,
        url: &str,
        secret_token: &Secret,
        max_connections: u32,
        allowed_updates: &[&str],
    ) -> Result<(), ApiError> {
        let params = SetWebhook {
            url,
            secret_token: secret_token.expose(),
            max_connections,
            allowed_updates,
        };
        self.call::<IgnoredAny>("setWebhook", &params, None).await?;
        Ok(())
    }

    /// Removes the webhook (needed before polling), dropping the queued updates if asked.
    pub(crate) async fn delete_webhook(&self, drop_pending_updates: bool) -> Result<(), ApiError> {
        let params = DeleteWebhook {
            drop_pending_updates,
        };
        self.call::<IgnoredAny>("deleteWebhook", &params, None)
            .await?;
        Ok(())
    }

    /// Sends a text message, as a reply to `reply_to_message_id` if given (sent anyway if
    /// that message is gone).
    pub(crate) async fn send_message(
        &self,
        chat_id: i64,
        text: &str,
        reply_to_message_id: Option<i64>,
    ) -> Result<Message, ApiError> {
        let params = SendMessage {
            chat_id,
            text,
            reply_parameters: reply_to_message_id.map(|message_id| ReplyParameters {
                message_id,
                allow_sending_without_reply: true,
            }),
        };
        self.call("sendMessage", &params, None).await
    }

    /// Replaces the text of one of the bot's messages. An unchanged text is a
    /// `BadRequest` ("message is not modified").
    pub(crate) async fn edit_message_text(
        &self,
        chat_id: i64,
        message_id: i64,
        text: &str,
    ) -> Result<Message, ApiError> {
        let params = EditMessageText {
            chat_id,
            message_id,
            text,
        };
        self.call("editMessageText", &params, None).await
    }

    /// Deletes a message for everyone.
    pub(crate) async fn delete_message(
        &self,
        chat_id: i64,
        message_id: i64,
    ) -> Result<(), ApiError> {
        let params = DeleteMessage {
            chat_id,
            message_id,
        };
        self.call::<IgnoredAny>("deleteMessage", &params, None)
            .await?;
        Ok(())
    }

    /// Replaces the bot's reactions on a message with `emojis` (none takes them back).
    pub(crate) async fn set_message_reaction(
        &self,
        chat_id: i64,
        message_id: i64,
        emojis: &[&str],
    ) -> Result<(), ApiError> {
        let params = SetMessageReaction {
            chat_id,
            message_id,
            reaction: emojis.iter().map(|&emoji| ReactionType { emoji }).collect(),
        };
        self.call::<IgnoredAny>("setMessageReaction", &params, None)
            .await?;
        Ok(())
    }

    /// Shows `action` ("typing", ...) in the chat for a few seconds.
    pub(crate) async fn send_chat_action(
        &self,
        chat_id: i64,
        action: &str,
    ) -> Result<(), ApiError> {
        let params = SendChatAction { chat_id, action };
        self.call::<IgnoredAny>("sendChatAction", &params, None)
            .await?;
        Ok(())
    }

    /// Prepares a file for download: its size and path.
    pub(crate) async fn get_file(&self, file_id: &str) -> Result<File, ApiError> {
        self.call("getFile", &GetFile { file_id }, None).await
    }

    /// Starts downloading the file at `file_path` (from [`BotApi::get_file`]); the caller
    /// judges the status and reads the body, within `timeout` for the whole download. The
    /// URL holds the token, so, as with calls, it is never shown.
    pub(crate) async fn download(
        &self,
        file_path: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        // The path becomes part of the URL: anything but Telegram's plain shape
        // (`documents/file_3.pdf`) could point it elsewhere.
        let plain = file_path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
        if !plain {
            return Err(ApiError::InvalidResponse(
                "getFile answered a file path of an unexpected shape".to_string(),
            ));
        }
        let url = format!(
            "{}/file/bot{}/{file_path}",
            self.api_base,
            self.token.expose()
        );
        self.client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| ApiError::NotSent(describe(e, &self.token)))
    }

    /// Masks the token in a transport error met while reading a download.
    pub(crate) fn describe(&self, e: reqwest::Error) -> String {
        describe(e, &self.token)
    }

    /// Performs one call and classifies its answer; `timeout` replaces the client's.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<T, ApiError> {
        let url = format!("{}/bot{}/{method}", self.api_base, self.token.expose());
        let mut request = self.client.post(url).json(params);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| {
            // Failing to connect (or to build the request) means nothing reached Telegram;
            // any later failure, a timeout included, may come after Telegram acted.
            if e.is_connect() || e.is_builder() {
                ApiError::NotSent(describe(e, &self.token))
            } else {
                ApiError::MaybeSent(describe(e, &self.token))
            }
        })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::MaybeSent(describe(e, &self.token)))?;
        classify(status, &body).map_err(|e| e.map_text(|text| mask(text, &self.token)))
    }
}

/// Turns an HTTP answer into the call's result or its error. Telegram's `error_code`
/// is preferred over the HTTP status; a body that is not an envelope is judged by status.
fn classify<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, ApiError> {
    let envelope: Response<T> = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        // A 2xx means the call was accepted, so this is not judged by status.
        Err(e) if (200..300).contains(&status) => {
            return Err(ApiError::InvalidResponse(json_error(&e)));
        }
        Err(_) => {
            return Err(error_for(status, format!("HTTP {status}"), None));
        }
    };
    if envelope.ok {
        return envelope
            .result
            .ok_or_else(|| ApiError::InvalidResponse("answer has no result".to_string()));
    }
    let code = envelope
        .error_code
        .and_then(|code| u16::try_from(code).ok())
        .unwrap_or(status);
    let description = envelope
        .description
        .unwrap_or_else(|| format!("error {code}"));
    Err(error_for(code, description, envelope.parameters))
}

/// The longest `retry_after` taken from Telegram.
const MAX_RETRY_AFTER_SECS: u64 = 3600;

fn error_for(code: u16, description: String, parameters: Option<ResponseParameters>) -> ApiError {
    match code {
        429 => {
            // Never zero: a caller that sleeps for it must not spin. Never more than an hour
            // either: the wait is added to clocks, and an absurd one would overflow them.
            let secs = parameters
                .and_then(|p| p.retry_after)
                .filter(|&secs| secs > 0)
                .unwrap_or(1)
                .min(MAX_RETRY_AFTER_SECS);
            ApiError::RateLimited {
                retry_after: Duration::from_secs(secs),
            }
        }
        401 => ApiError::Unauthorized,
        403 => ApiError::Forbidden(description),
        409 => ApiError::Conflict(description),
        400..=499 => match parameters.and_then(|p| p.migrate_to_chat_id) {
            // The group became a supergroup: the new id is what the sender needs.
            Some(new_id) => {
                ApiError::BadRequest(format!("{description} (migrated to chat {new_id})"))
            }
            None => ApiError::BadRequest(description),
        },
        500..=599 => ApiError::Server {
            status: code,
            description,
        },
        _ => ApiError::InvalidResponse(format!("unexpected error code {code}: {description}")),
    }
}

/// `<bot id>:<secret>`, the secret of URL-safe characters.
fn well_formed_token(token: &str) -> bool {
    token.split_once(':').is_some_and(|(id, secret)| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && !secret.is_empty()
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    })
}

/// A serde error without the value it quotes (results hold message text).
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "not JSON",
        Category::Eof => "truncated JSON",
        Category::Data => "not a Bot API answer of the expected shape",
        Category::Io => "unreadable",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// The text of a transport error and its causes, without the URL (it holds the token).
fn describe(e: reqwest::Error, token: &Secret) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    mask(text, token)
}

/// Masks the token in `text`. Defence in depth: no error is known to quote it once the
/// URL is stripped, but a leaked token hands the bot to whoever reads the log.
fn mask(text: String, token: &Secret) -> String {
    // `BotApi::new` refuses an empty token, which would match everywhere.
    text.replace(token.expose(), "***")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TOKEN: &str = "123456:SECRET-part_of-the-token";
    const TOKEN_SECRET_PART: &str = "SECRET-part_of-the-token";

    fn secret(value: &str) -> Secret {
        serde_json::from_value(Value::String(value.to_string())).expect("a string is a secret")
    }

    fn assert_no_token(err: &ApiError) {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(TOKEN_SECRET_PART), "token leaked: {text}");
        }
    }

    fn classify_json(status: u16, body: Value) -> Result<User, ApiError> {
        classify(status, body.to_string().as_bytes())
    }

    #[test]
    fn success_yields_the_result() {
        let user = classify_json(
            200,
            json!({"ok": true, "result": {"id": 7, "is_bot": true, "first_name": "Molty", "username": "MoltBot"}}),
        )
        .expect("a user");
        assert_eq!((user.id, user.username.as_deref()), (7, Some("MoltBot")));
    }

    #[test]
    fn error_codes_map_to_variants() {
        let fail = |status: u16, body: Value| classify_json(status, body).expect_err("an error");
        let too_many = json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 3", "parameters": {"retry_after": 3}});
        assert!(matches!(
            fail(429, too_many),
            ApiError::RateLimited { retry_after } if retry_after == Duration::from_secs(3)
        ));
        for without_hint in [
            json!({"ok": false, "error_code": 429}),
            json!({"ok": false, "error_code": 429, "parameters": {"retry_after": 0}}),
        ] {
            assert!(matches!(
                fail(429, without_hint),
                ApiError::RateLimited { retry_after } if retry_after == Duration::from_secs(1)
            ));
        }
        let absurd =
            json!({"ok": false, "error_code": 429, "parameters": {"retry_after": u64::MAX}});
        assert!(matches!(
            fail(429, absurd),
            ApiError::RateLimited { retry_after } if retry_after == Duration::from_secs(3600)
        ));
        let unauthorized = json!({"ok": false, "error_code": 401, "description": "Unauthorized"});
        assert!(matches!(fail(401, unauthorized), ApiError::Unauthorized));
        let blocked = json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"});
        assert!(
            matches!(fail(403, blocked), ApiError::Forbidden(d) if d == "Forbidden: bot was blocked by the user")
        );
        let conflict = json!({"ok": false, "error_code": 409, "description": "Conflict: terminated by other getUpdates request"});
        assert!(
            matches!(fail(409, conflict), ApiError::Conflict(d) if d.contains("other getUpdates"))
        );
        let migrated = json!({"ok": false, "error_code": 400, "description": "Bad Request: group chat was upgraded to a supergroup chat", "parameters": {"migrate_to_chat_id": -1001234}});
        assert!(
            matches!(fail(400, migrated), ApiError::BadRequest(d) if d.ends_with("(migrated to chat -1001234)"))
        );
        let not_found = json!({"ok": false, "error_code": 404, "description": "Not Found"});
        assert!(matches!(fail(404, not_found), ApiError::BadRequest(d) if d == "Not Found"));
        let internal =
            json!({"ok": false, "error_code": 500, "description": "Internal Server Error"});
        assert!(matches!(
            fail(500, internal),
            ApiError::Server { status: 500, .. }
        ));
        // The envelope's error_code wins over the HTTP status.
        let coded = json!({"ok": false, "error_code": 403, "description": "Forbidden: x"});
        assert!(matches!(fail(200, coded), ApiError::Forbidden(_)));
    }

    #[test]
    fn bodies_that_are_not_answers() {
        let html = b"<html>502 Bad Gateway</html>";
        assert!(matches!(
            classify::<User>(502, html),
            Err(ApiError::Server { status: 502, .. })
        ));
        assert!(matches!(
            classify::<User>(200, html),
            Err(ApiError::InvalidResponse(_))
        ));
        assert!(matches!(
            classify_json(200, json!({"ok": true})),
            Err(ApiError::InvalidResponse(_))
        ));
        // A result of the wrong shape is reported without quoting it (it may be a message).
        let err = classify_json(200, json!({"ok": true, "result": {"id": "private words"}}))
            .expect_err("not a user");
        assert!(matches!(err, ApiError::InvalidResponse(_)));
        assert!(!err.to_string().contains("private words"), "{err}");
    }

    #[test]
    fn retryable_and_ambiguous() {
        let cases = [
            (
                ApiError::RateLimited {
                    retry_after: Duration::from_secs(1),
                },
                true,
                false,
            ),
            (ApiError::Unauthorized, false, false),
            (ApiError::Conflict(String::new()), false, false),
            (ApiError::BadRequest(String::new()), false, false),
            (ApiError::Forbidden(String::new()), false, false),
            (
                ApiError::Server {
                    status: 502,
                    description: String::new(),
                },
                true,
                false,
            ),
            (ApiError::NotSent(String::new()), true, false),
            (ApiError::MaybeSent(String::new()), true, true),
            (ApiError::InvalidResponse(String::new()), false, true),
        ];
        for (err, retryable, ambiguous) in cases {
            assert_eq!(err.is_retryable(), retryable, "{err:?}");
            assert_eq!(err.is_ambiguous(), ambiguous, "{err:?}");
        }
    }

    #[test]
    fn misshapen_tokens_are_refused() {
        for bad in [
            "",
            "123456",
            ":abc",
            "12a:abc",
            "123:",
            "123:abc/../getMe",
            "123:a?b",
        ] {
            assert!(
                matches!(
                    BotApi::new("http://127.0.0.1:1", secret(bad), Duration::from_secs(1)),
                    Err(ApiError::Unauthorized)
                ),
                "{bad:?}"
            );
        }
        let api = BotApi::new("http://127.0.0.1:1/", secret(TOKEN), Duration::from_secs(1))
            .expect("a valid token and base");
        assert!(!format!("{api:?}").contains(TOKEN_SECRET_PART));
    }

    #[tokio::test]
    async fn closed_port_is_not_sent_and_never_shows_the_token() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("local addr").port()
        };
        let api = BotApi::new(
            &format!("http://127.0.0.1:{port}"),
            secret(TOKEN),
            Duration::from_secs(5),
        )
        .expect("client");
        let err = api.get_me().await.expect_err("nothing listens");
        assert!(matches!(err, ApiError::NotSent(_)), "{err:?}");
        assert!(err.is_retryable() && !err.is_ambiguous());
        assert_no_token(&err);
    }

    /// Tests against the fake Bot API of `moltbot_fakes`.
    mod fake {
        use moltbot_fakes::telegram::{
            ChatSpec, Failure, FakeTelegram, FakeTelegramConfig, UserSpec,
        };

        use super::*;
        use crate::channels::telegram::normalize::{BotIdentity, Normalized, normalize};

        const TIMEOUT: Duration = Duration::from_secs(5);
        const ANN: i64 = 42;

        async fn fake() -> (FakeTelegram, BotApi) {
            let fake = FakeTelegram::start(FakeTelegramConfig::default())
                .await
                .expect("fake starts");
            fake.add_bot(TOKEN, "MoltBot");
            let api = BotApi::new(&fake.base_url(), secret(TOKEN), TIMEOUT).expect("client");
            (fake, api)
        }

        fn ann_writes(fake: &FakeTelegram, text: &str) -> i64 {
            let message = fake.user_sends(
                TOKEN,
                &ChatSpec::private(ANN),
                &UserSpec::new(ANN, "Ann"),
                text,
            );
            message["message_id"].as_i64().expect("a message id")
        }

        #[tokio::test]
        async fn get_me_describes_the_bot() {
            let (_fake, api) = fake().await;
            let me = api.get_me().await.expect("getMe");
            assert_eq!(me.id, 123_456);
            assert_eq!(me.username.as_deref(), Some("MoltBot"));
        }

        #[tokio::test]
        async fn updates_arrive_raw_and_an_offset_confirms_them() {
            let (fake, api) = fake().await;
            ann_writes(&fake, "hello");
            // One update that cannot be normalised does not cost the batch.
            fake.push_raw_update(TOKEN, json!({"message": {"text": "no chat"}}));
            ann_writes(&fake, "again");

            let updates = api
                .get_updates(None, Duration::ZERO, &["message", "edited_message"])
                .await
                .expect("getUpdates");
            assert_eq!(updates.len(), 3);
            assert!(updates.windows(2).all(|w| w[0].update_id < w[1].update_id));
            let bot = BotIdentity {
                id: 123_456,
                username: "MoltBot".to_string(),
            };
            let outcomes: Vec<_> = updates
                .iter()
                .map(|u| normalize(&u.raw, "tg", &bot))
                .collect();
            assert!(matches!(&outcomes[0], Ok(Normalized::Event(_))));
            assert!(outcomes[1].is_err());
            assert!(matches!(&outcomes[2], Ok(Normalized::Event(_))));

            let offset = updates.last().map(|u| u.update_id + 1);
            let rest = api
                .get_updates(offset, Duration::ZERO, &[])
                .await
                .expect("getUpdates");
            assert!(rest.is_empty());
            assert_eq!(fake.pending_updates(TOKEN), 0);
        }

        #[tokio::test]
        async fn an_update_without_an_id_fails_the_call() {
            let (fake, api) = fake().await;
            fake.push_raw_update(TOKEN, json!("not an object"));
            let err = api
                .get_updates(None, Duration::ZERO, &[])
                .await
                .expect_err("no update_id");
            assert!(matches!(err, ApiError::InvalidResponse(_)), "{err:?}");
        }

        #[tokio::test]
        async fn send_message_returns_the_message() {
            let (fake, api) = fake().await;
            let asked = ann_writes(&fake, "question");
            let sent = api
                .send_message(ANN, "answer", Some(asked))
                .await
                .expect("sendMessage");
            assert_eq!(sent.chat.id, ANN);
            assert_eq!(sent.text.as_deref(), Some("answer"));
            let stored = fake.sent(TOKEN);
            assert_eq!(stored.len(), 1);
            assert_eq!(stored[0].message_id, sent.message_id);
            assert_eq!(stored[0].reply_to_message_id, Some(asked));
        }

        #[tokio::test]
        async fn too_many_requests_is_rate_limited() {
            let (fake, api) = fake().await;
            ann_writes(&fake, "hi");
            fake.fail_next(
                TOKEN,
                "sendMessage",
                Failure::TooManyRequests { retry_after: 3 },
            );
            let err = api.send_message(ANN, "x", None).await.expect_err("429");
            assert!(
                matches!(err, ApiError::RateLimited { retry_after } if retry_after == Duration::from_secs(3)),
                "{err:?}"
            );
            assert!(err.is_retryable() && !err.is_ambiguous());
            api.send_message(ANN, "x", None)
                .await
                .expect("the next call passes");
        }

        #[tokio::test]
        async fn unknown_token_is_unauthorized() {
            let (fake, _api) = fake().await;
            let stranger = BotApi::new(
                &fake.base_url(),
                secret("999:SECRET-part_of-the-token"),
                TIMEOUT,
            )
            .expect("client");
            let err = stranger.get_me().await.expect_err("401");
            assert!(matches!(err, ApiError::Unauthorized), "{err:?}");
            assert!(!err.is_retryable());
        }

        #[tokio::test]
        async fn a_stall_past_the_timeout_is_ambiguous() {
            let fake = FakeTelegram::start(FakeTelegramConfig::default())
                .await
                .expect("fake starts");
            fake.add_bot(TOKEN, "MoltBot");
            let api = BotApi::new(&fake.base_url(), secret(TOKEN), Duration::from_millis(300))
                .expect("client");
            ann_writes(&fake, "hi");
            fake.fail_next(
                TOKEN,
                "sendMessage",
                Failure::Stall {
                    after_apply: true,
                    duration: Duration::from_secs(3),
                },
            );
            let err = api
                .send_message(ANN, "once?", None)
                .await
                .expect_err("times out");
            assert!(matches!(err, ApiError::MaybeSent(_)), "{err:?}");
            assert!(err.is_ambiguous() && err.is_retryable());
            assert_no_token(&err);
            // It did take effect: exactly why a blind retry would send it twice.
            assert_eq!(fake.sent(TOKEN).len(), 1);
        }

        #[tokio::test]
        async fn unchanged_edit_is_a_bad_request() {
            let (fake, api) = fake().await;
            ann_writes(&fake, "hi");
            let sent = api
                .send_message(ANN, "same", None)
                .await
                .expect("sendMessage");
            let edited = api
                .edit_message_text(ANN, sent.message_id, "changed")
                .await
                .expect("editMessageText");
            assert_eq!(edited.text.as_deref(), Some("changed"));
            let err = api
                .edit_message_text(ANN, sent.message_id, "changed")
                .await
                .expect_err("not modified");
            assert!(
                matches!(&err, ApiError::BadRequest(d) if d.contains("message is not modified")),
                "{err:?}"
            );
            assert!(!err.is_retryable());
        }

        #[tokio::test]
        async fn files_download_and_no_error_shows_the_token() {
            let (fake, api) = fake().await;
            let message = fake.user_sends_document(
                TOKEN,
                &ChatSpec::private(ANN),
                &UserSpec::new(ANN, "Ann"),
                "notes.txt",
                "text/plain",
                b"dear diary".to_vec(),
            );
            let file_id = message["document"]["file_id"].as_str().unwrap();
            let file = api.get_file(file_id).await.expect("getFile");
            assert_eq!(file.file_size, Some(10));
            let path = file.file_path.expect("a path");
            let download = api.download(&path, TIMEOUT).await.expect("download");
            assert_eq!(download.status(), 200);
            assert_eq!(download.bytes().await.unwrap(), "dear diary");

            let missing = api.download("documents/missing.txt", TIMEOUT).await;
            assert_eq!(missing.expect("an answer").status(), 404);
            for odd in ["../getMe", "documents/../x", "a?b", "a//b", ""] {
                let err = api.download(odd, TIMEOUT).await.expect_err(odd);
                assert!(
                    matches!(err, ApiError::InvalidResponse(_)),
                    "{odd}: {err:?}"
                );
            }
            let err = api.get_file("nope").await.expect_err("unknown file");
            assert!(matches!(&err, ApiError::BadRequest(d) if d.contains("invalid file_id")));

            // A download cut off by the timeout: its error must not quote the URL.
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                listener.local_addr().expect("local addr").port()
            };
            let closed = BotApi::new(&format!("http://127.0.0.1:{port}"), secret(TOKEN), TIMEOUT)
                .expect("client");
            let err = closed
                .download(&path, TIMEOUT)
                .await
                .expect_err("nothing listens");
            assert_no_token(&err);
            assert!(!err.to_string().contains("/file/bot"), "{err}");
        }

        #[tokio::test]
        async fn webhook_chat_action_and_file() {
            let (fake, api) = fake().await;
            let hook_secret = secret("hook-secret");
            api.set_webhook("http://127.0.0.1:9/hook", &hook_secret, 10, &["message"])
                .await
                .expect("setWebhook");
            let hook = fake.webhook(TOKEN).expect("a webhook");
            assert_eq!(hook.url, "http://127.0.0.1:9/hook");
            assert_eq!(hook.secret_token.as_deref(), Some("hook-secret"));
            // Polling while a webhook is set is a conflict.
            let err = api
                .get_updates(None, Duration::ZERO, &[])
                .await
                .expect_err("webhook active");
            assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
            api.delete_webhook(true).await.expect("deleteWebhook");
            assert!(fake.webhook(TOKEN).is_none());

            fake.user_sends(
                TOKEN,
                &ChatSpec::private(ANN),
                &UserSpec::new(ANN, "Ann"),
                "hi",
            );
            api.send_chat_action(ANN, "typing")
                .await
                .expect("sendChatAction");
        }
    }
}
