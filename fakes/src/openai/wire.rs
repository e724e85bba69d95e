//! OpenAI's JSON shapes: the parts of a chat completion request the fake reads, and the
//! completion, stream chunk, model list and error bodies it writes.

use std::fmt;

use rand::{Rng, distr::Alphanumeric};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::{Value, json};

use super::answer::Completion;

/// The fields of a chat completion request that shape the answer; others are ignored.
#[derive(Debug, Deserialize)]
pub(super) struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Option<Vec<Tool>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Message {
    pub role: String,
    pub content: Option<Content>,
}

/// A message's content: a string, or an array of parts of which only text parts count.
#[derive(Debug)]
pub(super) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// By the JSON type at hand, rather than serde's `untagged`, which buffers every message's
/// content before trying each shape (the Telegram bench sends 200-message prompts).
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;

        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Content, E> {
                Ok(Content::Text(text.to_owned()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Content, E> {
                Ok(Content::Text(text))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }

        deserializer.deserialize_any(ContentVisitor)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Part {
    pub text: Option<String>,
}

/// An offered tool; only function tools have a `function`.
#[derive(Debug, Deserialize)]
pub(super) struct Tool {
    pub function: Option<FunctionName>,
}

#[derive(Debug, Deserialize)]
pub(super) struct FunctionName {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct StreamOptions {
    pub include_usage: Option<bool>,
}

impl Message {
    /// Characters of [`Message::text`], without joining the parts.
    pub fn chars(&self) -> usize {
        match &self.content {
            None => 0,
            Some(Content::Text(text)) => text.chars().count(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .map(|text| text.chars().count())
                .sum(),
        }
    }

    /// The message's text: its string content, or its text parts joined.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
        }
    }
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Whether a function tool with this name is offered.
    pub fn offers_function(&self, name: &str) -> bool {
        self.tools
            .iter()
            .flatten()
            .filter_map(|t| t.function.as_ref())
            .any(|f| f.name == name)
    }
}

/// `prefix` followed by 24 random alphanumerics, like OpenAI's `chatcmpl-…` and `call_…`.
pub(super) fn random_id(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

/// What every completion and chunk of one answer repeats.
pub(super) struct Head {
    id: String,
    created: i64,
    model: String,
}

impl Head {
    pub fn new(model: &str) -> Self {
        Self {
            id: random_id("chatcmpl-"),
            created: jiff::Timestamp::now().as_second(),
            model: model.to_owned(),
        }
    }

    fn object(&self, object: &str) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
        })
    }
}

/// A non-streamed `chat.completion`.
pub(super) fn completion_body(head: &Head, completion: &Completion) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": completion.content,
        "refusal": null,
    });
    if !completion.tool_calls.is_empty() {
        message["tool_calls"] = completion
            .tool_calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                })
            })
            .collect();
    }
    let mut body = head.object("chat.completion");
    body["choices"] = json!([{
        "index": 0,
        "message": message,
        "logprobs": null,
        "finish_reason": completion.finish_reason,
    }]);
    body["usage"] = usage(completion);
    body
}

/// The server-sent events of a streamed answer, each a complete `data: …\n\n` frame,
/// ending with `data: [DONE]`.
pub(super) fn stream_frames(
    head: &Head,
    completion: &Completion,
    include_usage: bool,
) -> Vec<String> {
    let choice = |delta: Value, finish_reason: Option<&str>| {
        chunk(head, delta, finish_reason, include_usage)
    };

    // A text answer opens with empty content; a tool-calling one with null, as OpenAI's do.
    let opening = completion.content.as_ref().map(|_| "");
    let mut chunks = vec![choice(
        json!({"role": "assistant", "content": opening}),
        None,
    )];
    if let Some(content) = &completion.content {
        chunks.extend(
            word_pieces(content)
                .into_iter()
                .map(|piece| choice(json!({"content": piece}), None)),
        );
    }
    for (index, call) in completion.tool_calls.iter().enumerate() {
        chunks.push(choice(
            json!({"tool_calls": [{
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }]}),
            None,
        ));
        chunks.extend(char_pieces(&call.arguments, 8).into_iter().map(|piece| {
            choice(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                None,
            )
        }));
    }
    chunks.push(choice(json!({}), Some(completion.finish_reason)));
    if include_usage {
        let mut last = head.object("chat.completion.chunk");
        last["choices"] = json!([]);
        last["usage"] = usage(completion);
        chunks.push(last);
    }

    let mut frames: Vec<String> = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}

/// A 200 body that is not a completion: the head without `choices`.
pub(super) fn malformed_body(head: &Head) -> Value {
    head.object("chat.completion")
}

/// A stream that starts like a completion, then breaks with an event that is not JSON.
pub(super) fn malformed_frames(head: &Head) -> Vec<String> {
    let first = chunk(
        head,
        json!({"role": "assistant", "content": ""}),
        None,
        false,
    );
    vec![
        format!("data: {first}\n\n"),
        "data: {\"choices\": [this is not json\n\n".to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ]
}

/// `GET /v1/models`.
pub(super) fn model_list(models: &[String]) -> Value {
    // A fixed time: nothing creates these models, and a constant keeps listings stable.
    const CREATED: i64 = 1_700_000_000;
    let data: Vec<Value> = models
        .iter()
        .map(|id| {
            json!({
                "id": id,
                "object": "model",
                "created": CREATED,
                "owned_by": "moltbot-fakes",
            })
        })
        .collect();
    json!({"object": "list", "data": data})
}

/// OpenAI's error body.
pub(super) fn error_body(kind: &str, code: Option<&str>, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// A `chat.completion.chunk` with one choice; `usage` is present (null) only when the
/// request asked for usage, as OpenAI sends it.
fn chunk(head: &Head, delta: Value, finish_reason: Option<&str>, include_usage: bool) -> Value {
    let mut chunk = head.object("chat.completion.chunk");
    chunk["choices"] = json!([{
        "index": 0,
        "delta": delta,
        "logprobs": null,
        "finish_reason": finish_reason,
    }]);
    if include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

fn usage(completion: &Completion) -> Value {
    let usage = &completion.usage;
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
    })
}

/// Groups of three words (each keeping its trailing whitespace), so the pieces
/// concatenate back to the text exactly.
fn word_pieces(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(char::is_whitespace).collect();
    words.chunks(3).map(|group| group.concat()).collect()
}

/// Pieces of `len` characters, so argument JSON arrives split mid-token as OpenAI sends it.
fn char_pieces(text: &str, len: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(len)
        .map(|piece| piece.iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(content: Value) -> Result<Message, serde_json::Error> {
        serde_json::from_value(json!({"role": "user", "content": content}))
    }

    #[test]
    fn content_is_a_string_text_parts_or_nothing() {
        let text = message(json!("héllo")).unwrap();
        assert_eq!((text.text(), text.chars()), ("héllo".to_owned(), 5));

        let parts = message(json!([
            {"type": "text", "text": "ab"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "text", "text": "cd"},
        ]))
        .unwrap();
        assert_eq!((parts.text(), parts.chars()), ("abcd".to_owned(), 4));

        let none = message(Value::Null).unwrap();
        assert_eq!((none.text(), none.chars()), (String::new(), 0));

        let error = message(json!(7)).unwrap_err().to_string();
        assert!(
            error.contains("a string or an array of content parts"),
            "{error}"
        );
    }
}
