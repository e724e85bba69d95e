//! Bot API objects and answer envelopes exactly as they travel over the wire. Optional fields
//! are omitted when absent: Telegram never sends `null`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::ChatKind;

/// A Telegram User object.
#[derive(Debug, Clone, Serialize)]
pub(super) struct User {
    pub(super) id: i64,
    pub(super) is_bot: bool,
    pub(super) first_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) username: Option<String>,
}

/// A Telegram Chat object as embedded in messages.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Chat {
    pub(super) id: i64,
    #[serde(rename = "type")]
    pub(super) kind: ChatKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) last_name: Option<String>,
}

/// One size of a photo.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PhotoSize {
    pub(super) file_id: String,
    pub(super) file_unique_id: String,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) file_size: usize,
}

/// A file sent as a document.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Document {
    pub(super) file_id: String,
    pub(super) file_unique_id: String,
    pub(super) file_name: String,
    pub(super) mime_type: String,
    pub(super) file_size: usize,
}

/// A MessageEntity Telegram marks in a text; offsets and lengths count UTF-16 code units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Entity {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) offset: usize,
    pub(super) length: usize,
}

/// The entities Telegram finds by itself in plain text, of the kinds a bot acts on:
/// `@username` mentions (5–32 of `A-Z a-z 0-9 _`, not inside a word, so not in an e-mail
/// address) and commands (`/start`, `/start@bot`) at the start or after white space.
pub(super) fn entities(text: &str) -> Vec<Entity> {
    let chars: Vec<char> = text.chars().collect();
    let is_word = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    let word_at = |from: usize| {
        chars
            .get(from..)
            .map_or(0, |rest| rest.iter().take_while(|c| is_word(c)).count())
    };
    let username_at = |from: usize| Some(word_at(from)).filter(|n| (5..=32).contains(n));
    let mut found = Vec::new();
    let (mut i, mut utf16) = (0, 0);
    while let Some(&c) = chars.get(i) {
        let starts_word = i == 0 || !is_word(&chars[i - 1]);
        let entity = match c {
            '@' if starts_word => username_at(i + 1).map(|n| ("mention", 1 + n)),
            '/' if i == 0 || chars[i - 1].is_whitespace() => Some(word_at(i + 1))
                .filter(|n| (1..=64).contains(n))
                .map(|n| {
                    let addressed = (chars.get(i + 1 + n) == Some(&'@'))
                        .then(|| username_at(i + 2 + n))
                        .flatten();
                    ("bot_command", 1 + n + addressed.map_or(0, |m| 1 + m))
                }),
            _ => None,
        };
        let len = entity.map_or(1, |(_, len)| len);
        let length = chars[i..i + len].iter().map(|c| c.len_utf16()).sum();
        if let Some((kind, _)) = entity {
            found.push(Entity {
                kind,
                offset: utf16,
                length,
            });
        }
        (i, utf16) = (i + len, utf16 + length);
    }
    found
}

/// What a message carries; its fields sit directly in the Message object.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(super) enum Content {
    Text {
        text: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        entities: Vec<Entity>,
    },
    Photo {
        photo: Vec<PhotoSize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        caption_entities: Vec<Entity>,
    },
    Document {
        document: Document,
        #[serde(skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
}

impl Content {
    pub(super) fn text(text: &str) -> Content {
        Content::Text {
            text: text.to_owned(),
            entities: entities(text),
        }
    }
}

/// A Telegram Message object.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Message {
    pub(super) message_id: i64,
    /// Absent on channel posts, which carry `sender_chat` instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) sender_chat: Option<Chat>,
    pub(super) chat: Chat,
    pub(super) date: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) edit_date: Option<i64>,
    /// The replied-to message as it was then, itself without `reply_to_message` (as Telegram
    /// nests only one level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reply_to_message: Option<Box<Message>>,
    #[serde(flatten)]
    pub(super) content: Content,
}

impl Message {
    pub(super) fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a Message has only string keys and finite numbers")
    }
}

/// A File object of getFile.
#[derive(Debug, Serialize)]
pub(super) struct File<'a> {
    pub(super) file_id: &'a str,
    pub(super) file_unique_id: &'a str,
    pub(super) file_size: usize,
    pub(super) file_path: &'a str,
}

/// A WebhookInfo object of getWebhookInfo.
#[derive(Debug, Serialize)]
pub(super) struct WebhookInfo<'a> {
    /// Empty when no webhook is set.
    pub(super) url: &'a str,
    pub(super) has_custom_certificate: bool,
    pub(super) pending_update_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) last_error_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) last_error_message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) allowed_updates: Option<&'a [String]>,
}

/// An HTTP answer of the Bot API: `{"ok":true,"result":…}` or
/// `{"ok":false,"error_code":N,"description":…}` with HTTP status N.
#[derive(Debug)]
pub(super) struct ApiReply {
    pub(super) status: StatusCode,
    pub(super) body: Value,
}

impl ApiReply {
    pub(super) fn ok(result: impl Serialize) -> ApiReply {
        match serde_json::to_value(result) {
            Ok(result) => ApiReply {
                status: StatusCode::OK,
                body: json!({"ok": true, "result": result}),
            },
            Err(_) => ApiReply::error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        }
    }

    /// A success with the informative `description` some methods add ("Webhook was set").
    pub(super) fn ok_described(result: impl Serialize, description: &str) -> ApiReply {
        let mut reply = ApiReply::ok(result);
        if reply.status == StatusCode::OK {
            reply.body["description"] = json!(description);
        }
        reply
    }

    pub(super) fn error(status: StatusCode, description: impl Into<String>) -> ApiReply {
        ApiReply {
            status,
            body: json!({
                "ok": false,
                "error_code": status.as_u16(),
                "description": description.into(),
            }),
        }
    }

    /// 400 `"Bad Request: {what}"`.
    pub(super) fn bad_request(what: &str) -> ApiReply {
        ApiReply::error(StatusCode::BAD_REQUEST, format!("Bad Request: {what}"))
    }

    pub(super) fn unauthorized() -> ApiReply {
        ApiReply::error(StatusCode::UNAUTHORIZED, "Unauthorized")
    }

    pub(super) fn not_found() -> ApiReply {
        ApiReply::error(StatusCode::NOT_FOUND, "Not Found")
    }

    pub(super) fn conflict(description: &str) -> ApiReply {
        ApiReply::error(StatusCode::CONFLICT, description)
    }

    pub(super) fn bad_gateway() -> ApiReply {
        ApiReply::error(StatusCode::BAD_GATEWAY, "Bad Gateway")
    }

    /// Telegram's flood-control answer.
    pub(super) fn too_many_requests(retry_after: u32) -> ApiReply {
        let mut reply = ApiReply::error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too Many Requests: retry after {retry_after}"),
        );
        reply.body["parameters"] = json!({ "retry_after": retry_after });
        reply
    }
}

impl IntoResponse for ApiReply {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(&'static str, usize, usize)> {
        entities(text)
            .into_iter()
            .map(|e| (e.kind, e.offset, e.length))
            .collect()
    }

    #[test]
    fn mentions_and_commands_are_marked_as_telegram_marks_them() {
        assert_eq!(found("hi @pi_test_bot!"), [("mention", 3, 12)]);
        assert_eq!(found("@abcd is too short"), []);
        assert_eq!(found("mail ann@example.org"), [], "not inside a word");
        assert_eq!(found("/start"), [("bot_command", 0, 6)]);
        assert_eq!(found("/help@pi_test_bot now"), [("bot_command", 0, 17)]);
        assert_eq!(found("a/b and 1/2"), [], "a command starts after a space");
        // Offsets and lengths count UTF-16 code units: 🦀 is two.
        assert_eq!(found("🦀 @pi_test_bot"), [("mention", 3, 12)]);
        assert_eq!(
            found("/ask @pi_test_bot"),
            [("bot_command", 0, 4), ("mention", 5, 12)]
        );
    }
}
