//! What the fake says: the default reply when nothing is scripted, and a reply turned into
//! a completion with finish reason and (approximate, deterministic) token usage.

use serde_json::json;

use super::{
    Reply, ToolCall,
    wire::{ChatRequest, Message, random_id},
};

/// Longest echoed user text, in characters, before it is cut.
const ECHO_LIMIT: usize = 200;
/// The tool the default behaviour calls for a `remember:` message.
const REMEMBER_TOOL: &str = "remember_fact";
const REMEMBER_PREFIX: &str = "remember:";

/// One assistant answer, ready to be written as a completion or as stream chunks.
pub(super) struct Completion {
    /// `None` for a tool-calling answer, as OpenAI sends it.
    pub content: Option<String>,
    pub tool_calls: Vec<WireToolCall>,
    pub finish_reason: &'static str,
    pub usage: Usage,
}

/// A tool call with the id and argument string it is sent with.
pub(super) struct WireToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

pub(super) struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// The reply when nothing is scripted; see the module doc of `openai`.
pub(super) fn default_reply(request: &ChatRequest) -> Reply {
    if let Some(last) = request.messages.last()
        && last.role == "tool"
    {
        return Reply::Text(format!(
            "Pi here. Noted the tool result: {}",
            cut(&last.text(), ECHO_LIMIT)
        ));
    }
    let said = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.text())
        .unwrap_or_default();
    if let Some(fact) = said.strip_prefix(REMEMBER_PREFIX)
        && request.offers_function(REMEMBER_TOOL)
    {
        return Reply::ToolCalls(vec![ToolCall {
            name: REMEMBER_TOOL.to_owned(),
            arguments: json!({"fact": fact.trim()}),
        }]);
    }
    Reply::Text(format!("Pi here. You said: {}", cut(&said, ECHO_LIMIT)))
}

impl Completion {
    /// A text answer, cut to the request's token limit.
    pub fn text(text: String, request: &ChatRequest) -> Self {
        let limit = request.max_completion_tokens.or(request.max_tokens);
        let (content, finish_reason) = match limit {
            Some(limit) if tokens(char_count(&text)) > limit => {
                let keep = usize::try_from(limit)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(4);
                (text.chars().take(keep).collect(), "length")
            }
            _ => (text, "stop"),
        };
        let usage = Usage::new(request, char_count(&content));
        Self {
            content: Some(content),
            tool_calls: Vec::new(),
            finish_reason,
            usage,
        }
    }

    /// A tool-calling answer; each call gets a fresh `call_…` id.
    pub fn tool_calls(calls: Vec<ToolCall>, request: &ChatRequest) -> Self {
        let tool_calls: Vec<WireToolCall> = calls
            .into_iter()
            .map(|call| WireToolCall {
                id: random_id("call_"),
                name: call.name,
                arguments: call.arguments.to_string(),
            })
            .collect();
        let chars = tool_calls
            .iter()
            .map(|c| char_count(&c.name) + char_count(&c.arguments))
            .sum();
        Self {
            content: None,
            tool_calls,
            finish_reason: "tool_calls",
            usage: Usage::new(request, chars),
        }
    }
}

impl Usage {
    fn new(request: &ChatRequest, completion_chars: usize) -> Self {
        let prompt_chars = request.messages.iter().map(Message::chars).sum();
        let per_message = u32::try_from(request.messages.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(3);
        Self {
            prompt_tokens: tokens(prompt_chars).saturating_add(per_message),
            completion_tokens: tokens(completion_chars).max(1),
        }
    }
}

/// About four characters a token, as OpenAI's rule of thumb for English.
fn tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

fn char_count(text: &str) -> usize {
    text.chars().count()
}

/// `text` cut to `limit` characters, marked with `…` when cut.
fn cut(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
