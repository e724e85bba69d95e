//! The chat completions request as it goes on the wire, borrowed from a [`ChatRequest`].
//!
//! async-openai's own request type owns every string, so building it copied the whole
//! conversation, tool schemas included, once per model call, and dropped the copy after:
//! about 5% of the gateway's CPU at 1,000 replies a second. This one only points into the
//! request and is sent through async-openai's `byot` methods. It serialises to the same
//! JSON as async-openai's type (a test holds it to that).

use std::fmt::{self, Write as _};

use crate::config::TokenLimitField;
use serde::{Serialize, Serializer};

use super::{ChatMessage, ChatRequest, ToolCallRequest, ToolSpec};

/// Longest `name` OpenAI accepts on a message.
const MAX_NAME_CHARS: usize = 64;

/// A streamed chat completion request.
#[derive(Serialize)]
pub(super) struct WireRequest<'a> {
    model: &'a str,
    #[serde(serialize_with = "serialize_messages")]
    messages: &'a [ChatMessage],
    #[serde(
        serialize_with = "serialize_tools",
        skip_serializing_if = "<[_]>::is_empty"
    )]
    tools: &'a [ToolSpec],
    // One of the two, as configured (see `TokenLimitField`).
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    stream: bool,
    stream_options: StreamOptions,
}

impl<'a> WireRequest<'a> {
    pub(super) fn new(
        model: &'a str,
        request: &'a ChatRequest,
        limit: u32,
        field: TokenLimitField,
    ) -> Self {
        let (max_completion_tokens, max_tokens) = match field {
            TokenLimitField::MaxCompletionTokens => (Some(limit), None),
            TokenLimitField::MaxTokens => (None, Some(limit)),
        };
        Self {
            model,
            messages: &request.messages,
            tools: &request.tools,
            max_completion_tokens,
            max_tokens,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
        }
    }
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<CleanName<'a>>,
    },
    Assistant {
        /// Required unless there are tool calls.
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<&'a str>,
        #[serde(
            serialize_with = "serialize_tool_calls",
            skip_serializing_if = "<[_]>::is_empty"
        )]
        tool_calls: &'a [ToolCallRequest],
    },
    Tool {
        content: &'a str,
        tool_call_id: &'a str,
    },
}

impl<'a> From<&'a ChatMessage> for WireMessage<'a> {
    fn from(message: &'a ChatMessage) -> Self {
        match message {
            ChatMessage::System(text) => WireMessage::System { content: text },
            ChatMessage::User { name, text } => WireMessage::User {
                content: text,
                name: name.as_deref().and_then(CleanName::of),
            },
            ChatMessage::Assistant { text, tool_calls } => WireMessage::Assistant {
                content: match text {
                    Some(text) => Some(text),
                    None if tool_calls.is_empty() => Some(""),
                    None => None,
                },
                tool_calls,
            },
            ChatMessage::Tool { call_id, content } => WireMessage::Tool {
                content,
                tool_call_id: call_id,
            },
        }
    }
}

/// Both tools and tool calls are of `"type": "function"`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Typed<T> {
    Function(T),
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a serde_json::Value,
}

#[derive(Serialize)]
struct FunctionTool<'a> {
    function: WireFunction<'a>,
}

fn serialize_messages<S: Serializer>(
    messages: &[ChatMessage],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(messages.iter().map(WireMessage::from))
}

fn serialize_tools<S: Serializer>(tools: &[ToolSpec], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(tools.iter().map(|tool| {
        Typed::Function(FunctionTool {
            function: WireFunction {
                name: tool.name,
                description: tool.description,
                parameters: &tool.parameters,
            },
        })
    }))
}

fn serialize_tool_calls<S: Serializer>(
    calls: &[ToolCallRequest],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(calls.iter().map(|call| {
        Typed::Function(WireCall {
            id: &call.id,
            function: WireFunctionCall {
                name: &call.name,
                arguments: &call.arguments,
            },
        })
    }))
}

/// A name as OpenAI accepts it (`^[a-zA-Z0-9_-]{1,64}$`): other characters dropped, cut
/// to 64. Written out as it is serialised rather than copied first.
struct CleanName<'a>(&'a str);

impl<'a> CleanName<'a> {
    /// `None` when nothing of `name` is left.
    fn of(name: &'a str) -> Option<Self> {
        name.chars().any(allowed_in_name).then_some(Self(name))
    }
}

fn allowed_in_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl fmt::Display for CleanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .chars()
            .filter(|c| allowed_in_name(*c))
            .take(MAX_NAME_CHARS)
            .try_for_each(|c| f.write_char(c))
    }
}

impl Serialize for CleanName<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_openai::types::chat::{
        ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
        ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
        ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
        ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
        ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
        ChatCompletionRequestUserMessageContent, ChatCompletionStreamOptions, ChatCompletionTool,
        ChatCompletionTools, CreateChatCompletionRequest, FunctionCall, FunctionObject,
    };
    use serde_json::json;

    use super::*;
    use crate::config::TokenLimitField::{MaxCompletionTokens, MaxTokens};

    /// `message` as async-openai's own request type has it: the reference for the wire form.
    fn typed_message(message: &ChatMessage) -> ChatCompletionRequestMessage {
        match message {
            ChatMessage::System(text) => {
                ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                    content: ChatCompletionRequestSystemMessageContent::Text(text.clone()),
                    name: None,
                })
            }
            ChatMessage::User { name, text } => {
                ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                    content: ChatCompletionRequestUserMessageContent::Text(text.to_string()),
                    name: clean(name.as_deref()),
                })
            }
            ChatMessage::Assistant { text, tool_calls } => {
                let calls: Vec<_> = tool_calls
                    .iter()
                    .map(|call| {
                        ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                            id: call.id.clone(),
                            function: FunctionCall {
                                name: call.name.clone(),
                                arguments: call.arguments.clone(),
                            },
                        })
                    })
                    .collect();
                let content = match text {
                    Some(text) => Some(text.to_string()),
                    None if calls.is_empty() => Some(String::new()),
                    None => None,
                };
                ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                    content: content.map(ChatCompletionRequestAssistantMessageContent::Text),
                    tool_calls: (!calls.is_empty()).then_some(calls),
                    ..Default::default()
                })
            }
            ChatMessage::Tool { call_id, content } => {
                ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
                    content: ChatCompletionRequestToolMessageContent::Text(content.clone()),
                    tool_call_id: call_id.clone(),
                })
            }
        }
    }

    fn typed_request(request: &ChatRequest, max_tokens: u32) -> CreateChatCompletionRequest {
        let tools: Vec<_> = request
            .tools
            .iter()
            .map(|tool| {
                ChatCompletionTools::Function(ChatCompletionTool {
                    function: FunctionObject {
                        name: tool.name.to_owned(),
                        description: Some(tool.description.to_owned()),
                        parameters: Some((*tool.parameters).clone()),
                        strict: None,
                    },
                })
            })
            .collect();
        CreateChatCompletionRequest {
            model: "pi-model".into(),
            messages: request.messages.iter().map(typed_message).collect(),
            tools: (!tools.is_empty()).then_some(tools),
            max_completion_tokens: Some(max_tokens),
            stream: Some(true),
            stream_options: Some(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            }),
            ..Default::default()
        }
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCallRequest {
        ToolCallRequest {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn every_kind_of_message() -> Vec<ChatMessage> {
        vec![
            ChatMessage::System("You are Pi. \"Quotes\" and\nnewlines.".into()),
            ChatMessage::User {
                name: Some("Zoë O'Neil".into()),
                text: "hello".into(),
            },
            ChatMessage::User {
                name: Some("李".into()),
                text: "no name survives".into(),
            },
            ChatMessage::User {
                name: Some(
                    "é".repeat(10)
                        .chars()
                        .chain("b".repeat(100).chars())
                        .collect::<String>()
                        .into(),
                ),
                text: "a long name is cut".into(),
            },
            ChatMessage::User {
                name: None,
                text: "".into(),
            },
            ChatMessage::Assistant {
                text: Some("words".into()),
                tool_calls: Vec::new(),
            },
            ChatMessage::Assistant {
                text: None,
                tool_calls: Vec::new(),
            },
            ChatMessage::Assistant {
                text: None,
                tool_calls: vec![
                    call("call_1", "remember_fact", r#"{"fact":"cat"}"#),
                    call("call_2", "search_messages", "{}"),
                ],
            },
            ChatMessage::Assistant {
                text: Some("and a call".into()),
                tool_calls: vec![call("call_3", "set_follow_up", "not json")],
            },
            ChatMessage::Tool {
                call_id: "call_1".into(),
                content: "remembered".into(),
            },
        ]
    }

    fn value(body: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(body).expect("serialises")
    }

    #[test]
    fn the_wire_request_is_what_async_openai_would_send() {
        let mut request = ChatRequest {
            messages: every_kind_of_message(),
            tools: vec![ToolSpec {
                name: "remember_fact",
                description: "Store a fact.",
                parameters: Arc::new(
                    json!({"type": "object", "properties": {"fact": {"type": "string"}}}),
                ),
            }],
            max_tokens: 100,
        };
        let wire =
            |request: &ChatRequest, field| value(&WireRequest::new("pi-model", request, 42, field));
        let typed = value(&typed_request(&request, 42));
        assert_eq!(wire(&request, MaxCompletionTokens), typed);

        request.tools.clear();
        let without_tools = wire(&request, MaxCompletionTokens);
        assert_eq!(without_tools, value(&typed_request(&request, 42)));
        assert!(without_tools.get("tools").is_none(), "no empty tool list");

        // The older field carries the same limit, alone.
        let mut older = without_tools;
        let limit = older
            .as_object_mut()
            .unwrap()
            .remove("max_completion_tokens");
        older["max_tokens"] = limit.unwrap();
        assert_eq!(wire(&request, MaxTokens), older, "the older field alone");
    }

    fn clean(name: Option<&str>) -> Option<String> {
        name.and_then(CleanName::of).map(|name| name.to_string())
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(clean(Some("Ann_Lee-2")), Some("Ann_Lee-2".into()));
        assert_eq!(clean(Some("Zoë O'Neil")), Some("ZoONeil".into()));
        assert_eq!(clean(Some("李 雷")), None);
        assert_eq!(clean(Some("")), None);
        assert_eq!(clean(Some(&"a".repeat(100))).map(|n| n.len()), Some(64));
    }
}
