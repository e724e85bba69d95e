//! The model client: one streamed assistant turn from an OpenAI-compatible chat
//! completions API (OpenAI, Ollama, vLLM, llama.cpp), through `async-openai`.
//!
//! # Retries
//!
//! Two layers retry, and their product bounds the requests of one turn:
//!
//! - `async-openai` (0.43) retries inside every call on its own: a 429 (unless the quota is
//!   exhausted), any 5xx and connection failures, up to 3 times, waiting `retry-after` or
//!   100 ms, 200 ms, 400 ms. Its client offers no way to turn that off without the
//!   `middleware` feature, so it stays.
//! - [`ModelClient::complete`] retries the whole turn (request and stream) up to
//!   `max_retries` times, with exponential backoff and jitter, on what is still retryable
//!   once that inner layer has given up, and on what it never retries: timeouts and
//!   streams that break after they started.
//!
//! So one turn sends at most `(max_retries + 1) × 4` requests, and each of its
//! `max_retries + 1` attempts, inner retries included, is cut off after `timeout`.
//!
//! # Secrets
//!
//! The API key is never logged and never put in an error: provider messages are scrubbed
//! of it, because some servers echo what they were sent.

use std::{collections::BTreeMap, fmt, ops::AddAssign, sync::Arc, time::Duration};

use async_openai::{
    Client,
    config::OpenAIConfig,
    error::{ApiErrorResponse, OpenAIError, StreamError, WrappedError},
    types::chat::{
        ChatCompletionMessageToolCallChunk, CreateChatCompletionStreamResponse, FinishReason,
    },
};
use futures_util::StreamExt;
use rand::Rng;

use super::context::{estimate_message_tokens, estimate_tokens};
use crate::config::{ModelConfig, Secret, TokenLimitField};
use wire::WireRequest;

mod wire;

/// First backoff between attempts; it doubles with every retry.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Provider messages are cut to this many characters in errors.
const MAX_ERROR_CHARS: usize = 500;
/// Bytes an answer may hold per token of its limit. Real tokens average about 4 bytes; a
/// server that streams past this ignored the limit, and holding on would only grow memory
/// until the timeout.
const ANSWER_BYTES_PER_TOKEN: usize = 32;
/// The bound on an answer's bytes whatever its token limit.
const MIN_ANSWER_BYTES: usize = 64 << 10;
/// Most tool calls one answer may make.
const MAX_TOOL_CALLS: usize = 64;
/// What replaces the API key where a provider echoed it.
const REDACTED: &str = "[redacted]";

/// A client of one configured model.
pub(crate) struct ModelClient {
    client: Client<OpenAIConfig>,
    model: String,
    timeout: Duration,
    max_retries: u32,
    token_limit_field: TokenLimitField,
    prompt_price_per_million: f64,
    completion_price_per_million: f64,
    backoff_base: Duration,
    /// Kept only to scrub it from provider messages.
    api_key: Option<Secret>,
}

impl fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelClient")
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// What [`ModelClient::complete`] tells its listener while a turn streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEvent<'a> {
    /// The next piece of the assistant's text.
    Text(&'a str),
    /// The attempt that sent the text so far failed and the turn starts over: drop it.
    Restart,
}

/// One model call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Tools offered; none when empty.
    pub tools: Vec<ToolSpec>,
    /// Longest answer, in tokens.
    pub max_tokens: u32,
}

/// A message of the conversation sent to the model.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ChatMessage {
    System(String),
    /// `name` tells group members apart; it is cleaned to what OpenAI accepts when sent.
    /// History texts are shared with the history cache rather than copied per turn.
    User {
        name: Option<Arc<str>>,
        text: Arc<str>,
    },
    Assistant {
        text: Option<Arc<str>>,
        tool_calls: Vec<ToolCallRequest>,
    },
    /// The result of the tool call `call_id`.
    Tool {
        call_id: String,
        content: String,
    },
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// JSON Schema of the arguments object; built once, shared by every request.
    pub parameters: Arc<serde_json::Value>,
}

/// A call of a tool by the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ToolCallRequest {
    pub id: String,
    pub name: String,
    /// JSON text as the model wrote it: not validated, may not even parse.
    pub arguments: String,
}

/// Tokens spent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
    }
}

/// One assistant turn.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Turn {
    /// `None` when the model only called tools.
    pub text: Option<String>,
    /// In the order the model made them.
    pub tool_calls: Vec<ToolCallRequest>,
    pub finish: Finish,
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    /// Also when a server said `stop` but did call tools (some local servers do).
    ToolCalls,
    /// The answer hit `max_tokens`.
    Length,
    /// Any other reason, by its wire name (`content_filter`).
    Other(String),
}

/// Why a turn failed. Messages are the provider's, never carrying the API key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelError {
    #[error("the model did not answer in time")]
    Timeout,
    /// Transport failures, 5xx, 429: may pass.
    #[error("the model server is unavailable: {0}")]
    Unavailable(String),
    /// 4xx: bad key, unknown model, bad request, exhausted quota.
    #[error("the model server rejected the request: {0}")]
    Rejected(String),
    /// A malformed or empty answer.
    #[error("the model's answer is not usable: {0}")]
    Invalid(String),
    #[error("the model is misconfigured: {0}")]
    Config(String),
}

impl ModelError {
    /// Whether trying again may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, ModelError::Timeout | ModelError::Unavailable(_))
    }
}

impl ModelClient {
    /// A client of `config`'s model. Makes no request.
    pub(crate) fn new(config: &ModelConfig) -> Result<Self, ModelError> {
        // async-openai appends `/chat/completions` to the base as text.
        let base_url = config.base_url.trim_end_matches('/');
        match reqwest::Url::parse(base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => {
                return Err(ModelError::Config(
                    "agent.model.base_url must be an http or https URL".into(),
                ));
            }
        }
        if config.model.trim().is_empty() {
            return Err(ModelError::Config("agent.model.model is empty".into()));
        }
        if config.timeout.is_zero() {
            return Err(ModelError::Config(
                "agent.model.timeout must be more than zero".into(),
            ));
        }
        let key = config.api_key.as_ref().map_or("", Secret::expose);
        // async-openai unwraps the header it makes of the key, so a bad key would panic there.
        if reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).is_err() {
            return Err(ModelError::Config(
                "agent.model.api_key holds characters an HTTP header cannot carry".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| ModelError::Config(format!("cannot build the HTTP client: {e}")))?;
        // Everything set explicitly: OpenAIConfig's defaults come from OPENAI_* variables,
        // which must not send another key, organisation or project to this server.
        let openai = OpenAIConfig::new()
            .with_api_base(base_url)
            .with_api_key(key)
            .with_org_id("")
            .with_project_id("");
        Ok(Self {
            client: Client::build(http, openai),
            model: config.model.clone(),
            timeout: config.timeout,
            max_retries: config.max_retries,
            token_limit_field: config.token_limit_field,
            prompt_price_per_million: config.prompt_price_per_million,
            completion_price_per_million: config.completion_price_per_million,
            backoff_base: BACKOFF_BASE,
            api_key: config.api_key.clone().filter(|k| !k.expose().is_empty()),
        })
    }

    /// The model's name, as sent.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// One assistant turn, streamed: `on_event` gets each piece of text as it arrives. The
    /// answer is held to `max_tokens` when that is below the request's own limit. What every
    /// attempt spent is added to `spent`, also when the turn fails in the end (estimated
    /// with [`estimate_tokens`] for an attempt whose server reported none).
    ///
    /// Retries a retryable failure up to `max_retries` times with exponential backoff and
    /// jitter (see the module documentation for how this composes with async-openai's own
    /// retries); before a retry that follows emitted text it sends
    /// [`StreamEvent::Restart`]. Each attempt, stream included, is bounded by `timeout`.
    pub(crate) async fn complete(
        &self,
        request: &ChatRequest,
        max_tokens: u32,
        spent: &mut Usage,
        on_event: &mut (dyn FnMut(StreamEvent<'_>) + Send),
    ) -> Result<Turn, ModelError> {
        if request.messages.is_empty() {
            return Err(ModelError::Rejected("the request has no messages".into()));
        }
        let mut retries = 0;
        loop {
            let mut progress = Progress::default();
            let limit = request.max_tokens.min(max_tokens);
            let body = WireRequest::new(&self.model, request, limit, self.token_limit_field);
            let attempt = self.attempt(body, answer_bound(limit), on_event, &mut progress);
            let result = match tokio::time::timeout(self.timeout, attempt).await {
                Ok(result) => result.and_then(|()| progress.answer()),
                Err(_elapsed) => Err(ModelError::Timeout),
            };
            *spent += progress.spent(request);
            match result {
                Ok(answer) => {
                    return Ok(Turn {
                        text: answer.text,
                        tool_calls: answer.tool_calls,
                        finish: answer.finish,
                    });
                }
                Err(error) if error.is_retryable() && retries < self.max_retries => {
                    retries += 1;
                    if !progress.text.is_empty() {
                        on_event(StreamEvent::Restart);
                    }
                    let delay = self.backoff(retries);
                    tracing::warn!(
                        model = %self.model,
                        retry = retries,
                        max_retries = self.max_retries,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        %error,
                        "model call failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Cost in millionths of the currency unit, from the configured prices.
    pub(crate) fn cost_micros(&self, usage: Usage) -> u64 {
        // A price per million tokens is, per token, that many millionths.
        let micros = usage.prompt_tokens as f64 * self.prompt_price_per_million
            + usage.completion_tokens as f64 * self.completion_price_per_million;
        if micros.is_finite() && micros > 0.0 {
            // `as` saturates: an absurd count costs u64::MAX, not a wrapped small number.
            micros.round() as u64
        } else {
            0
        }
    }

    /// One request and its stream, recorded in `progress` as it arrives so that a timeout
    /// that drops this future still leaves what was spent and shown.
    async fn attempt(
        &self,
        body: WireRequest<'_>,
        max_bytes: usize,
        on_event: &mut (dyn FnMut(StreamEvent<'_>) + Send),
        progress: &mut Progress,
    ) -> Result<(), ModelError> {
        let mut stream = self
            .client
            .chat()
            .create_stream_byot::<_, CreateChatCompletionStreamResponse>(body)
            .await
            .map_err(|e| self.classify(e))?;
        progress.opened = true;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.classify(e))?;
            if let Some(usage) = chunk.usage {
                progress.usage = Some(Usage {
                    prompt_tokens: usage.prompt_tokens.into(),
                    completion_tokens: usage.completion_tokens.into(),
                });
            }
            // One choice was asked for (`n` unset); ignore any other.
            for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
                let delta = choice.delta;
                // A refusal is what the assistant says, so it is text too.
                for piece in [delta.content, delta.refusal].into_iter().flatten() {
                    if !piece.is_empty() {
                        progress.received += piece.len();
                        progress.text.push_str(&piece);
                        on_event(StreamEvent::Text(&piece));
                    }
                }
                for call in delta.tool_calls.into_iter().flatten() {
                    progress.received += call.id.as_ref().map_or(0, String::len)
                        + call.function.as_ref().map_or(0, |f| {
                            f.name.as_ref().map_or(0, String::len)
                                + f.arguments.as_ref().map_or(0, String::len)
                        });
                    progress.calls.entry(call.index).or_default().absorb(call);
                }
                if let Some(reason) = choice.finish_reason {
                    progress.finish = Some(reason);
                }
            }
            if progress.received > max_bytes {
                return Err(ModelError::Invalid(format!(
                    "the answer went past {} KiB: the server ignored the token limit",
                    max_bytes >> 10
                )));
            }
            if progress.calls.len() > MAX_TOOL_CALLS {
                return Err(ModelError::Invalid(format!(
                    "the answer made more than {MAX_TOOL_CALLS} tool calls"
                )));
            }
        }
        Ok(())
    }

    /// Backoff before retry number `retry` (from 1): exponential, capped, with equal jitter
    /// (half fixed, half random) so that turns failing together do not retry together.
    fn backoff(&self, retry: u32) -> Duration {
        let exponential = self
            .backoff_base
            .saturating_mul(2_u32.saturating_pow(retry.saturating_sub(1)))
            .min(BACKOFF_MAX);
        let half = exponential / 2;
        let jitter_ms = rand::rng().random_range(0..=u64::try_from(half.as_millis()).unwrap_or(0));
        half + Duration::from_millis(jitter_ms)
    }

    fn classify(&self, error: OpenAIError) -> ModelError {
        let error = match error {
            OpenAIError::Reqwest(e) if e.is_timeout() => ModelError::Timeout,
            // Without the URL: a base URL may carry credentials.
            OpenAIError::Reqwest(e) => ModelError::Unavailable(format!(
                "cannot reach the model server: {}",
                with_sources(&e.without_url())
            )),
            OpenAIError::ApiError(e) => from_api_error(e),
            OpenAIError::JSONDeserialize(e, content) => ModelError::Invalid(format!(
                "not a chat completion ({e}): {}",
                excerpt(&content)
            )),
            OpenAIError::StreamError(e) => match *e {
                StreamError::EventStream(message) => {
                    ModelError::Unavailable(format!("the answer stream broke: {message}"))
                }
                StreamError::UnknownEvent(event) => ModelError::Invalid(format!(
                    "unexpected stream event {:?}",
                    excerpt(&event.event)
                )),
            },
            OpenAIError::InvalidArgument(message) => ModelError::Rejected(message),
            other => ModelError::Invalid(other.to_string()),
        };
        self.redact(error)
    }

    /// `error` with any occurrence of the API key replaced.
    fn redact(&self, error: ModelError) -> ModelError {
        let Some(key) = &self.api_key else {
            return error;
        };
        let scrub = |message: String| message.replace(key.expose(), REDACTED);
        match error {
            ModelError::Unavailable(m) => ModelError::Unavailable(scrub(m)),
            ModelError::Rejected(m) => ModelError::Rejected(scrub(m)),
            ModelError::Invalid(m) => ModelError::Invalid(scrub(m)),
            ModelError::Config(m) => ModelError::Config(scrub(m)),
            ModelError::Timeout => ModelError::Timeout,
        }
    }
}

/// What one attempt received so far.
#[derive(Default)]
struct Progress {
    /// The server accepted the request and began streaming: tokens are being spent.
    opened: bool,
    /// Exactly the text sent to the listener.
    text: String,
    /// Bytes of text and tool calls so far.
    received: usize,
    /// Tool calls by their stream index.
    calls: BTreeMap<u32, PartialCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

/// A complete answer, without usage.
struct Answer {
    text: Option<String>,
    tool_calls: Vec<ToolCallRequest>,
    finish: Finish,
}

impl Progress {
    /// Tokens this attempt spent: the server's count, else an estimate once it streamed.
    fn spent(&self, request: &ChatRequest) -> Usage {
        if let Some(usage) = self.usage {
            return usage;
        }
        if !self.opened {
            return Usage::default();
        }
        let calls = self.calls.values().fold(0_u64, |sum, call| {
            sum + u64::from(estimate_tokens(&call.name))
                + u64::from(estimate_tokens(&call.arguments))
        });
        Usage {
            prompt_tokens: estimate_prompt(request),
            completion_tokens: u64::from(estimate_tokens(&self.text)) + calls,
        }
    }

    /// The answer of a stream that ended.
    fn answer(&self) -> Result<Answer, ModelError> {
        // A stream cut short can end cleanly at the transport level; only a finish reason
        // says the answer is whole.
        let Some(reason) = self.finish else {
            return Err(ModelError::Unavailable(
                "the answer stream ended before the answer was finished".into(),
            ));
        };
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (index, call) in &self.calls {
            if call.name.is_empty() {
                return Err(ModelError::Invalid(format!(
                    "tool call {index} has no function name"
                )));
            }
            tool_calls.push(ToolCallRequest {
                // Some local servers send no id; the tool result still needs one to refer to.
                id: if call.id.is_empty() {
                    format!("call_{index}")
                } else {
                    call.id.clone()
                },
                name: call.name.clone(),
                arguments: if call.arguments.trim().is_empty() {
                    "{}".to_owned()
                } else {
                    call.arguments.clone()
                },
            });
        }
        let text = (!self.text.trim().is_empty()).then(|| self.text.clone());
        if text.is_none() && tool_calls.is_empty() {
            return Err(ModelError::Invalid(
                "the model answered with neither text nor tool calls".into(),
            ));
        }
        let finish = match reason {
            FinishReason::Stop | FinishReason::ToolCalls | FinishReason::FunctionCall
                if !tool_calls.is_empty() =>
            {
                Finish::ToolCalls
            }
            FinishReason::Stop => Finish::Stop,
            FinishReason::Length => Finish::Length,
            FinishReason::ToolCalls => Finish::ToolCalls,
            FinishReason::FunctionCall => Finish::Other("function_call".into()),
            FinishReason::ContentFilter => Finish::Other("content_filter".into()),
        };
        Ok(Answer {
            text,
            tool_calls,
            finish,
        })
    }
}

/// A tool call assembled from stream deltas.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl PartialCall {
    fn absorb(&mut self, chunk: ChatCompletionMessageToolCallChunk) {
        if let Some(id) = chunk.id.filter(|id| !id.is_empty()) {
            self.id = id;
        }
        let Some(function) = chunk.function else {
            return;
        };
        // OpenAI sends the name once; some servers repeat it in every delta.
        if let Some(name) = function.name.filter(|n| !n.is_empty())
            && self.name != name
        {
            self.name.push_str(&name);
        }
        if let Some(piece) = function.arguments {
            self.arguments.push_str(&piece);
        }
    }
}

/// Most bytes of text and tool calls an answer held to `limit` tokens may stream.
fn answer_bound(limit: u32) -> usize {
    usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_mul(ANSWER_BYTES_PER_TOKEN)
        .max(MIN_ANSWER_BYTES)
}

/// Estimated prompt tokens of `request`, for servers that report no usage.
fn estimate_prompt(request: &ChatRequest) -> u64 {
    let messages: u64 = request
        .messages
        .iter()
        .map(|m| u64::from(estimate_message_tokens(m)))
        .sum();
    let tools: u64 = request
        .tools
        .iter()
        .map(|t| {
            u64::from(estimate_tokens(t.name))
                + u64::from(estimate_tokens(t.description))
                + u64::from(estimate_tokens(&t.parameters.to_string()))
        })
        .sum();
    messages + tools
}

fn from_api_error(error: ApiErrorResponse) -> ModelError {
    let status = error.status_code;
    let mut api = error.api_error;
    // async-openai reads a 5xx body as plain text; OpenAI-style servers still send their
    // error object there.
    if api.code.is_none()
        && api.r#type.is_none()
        && let Ok(wrapped) = serde_json::from_str::<WrappedError>(&api.message)
    {
        api = wrapped.error;
    }
    let mut message = format!("{status}: {}", excerpt(api.message.trim()));
    if let Some(code) = api.code.as_deref().filter(|c| !c.is_empty()) {
        message.push_str(&format!(" (code {code})"));
    }
    let quota_exhausted =
        [api.code.as_deref(), api.r#type.as_deref()].contains(&Some("insufficient_quota"));
    match status.as_u16() {
        // Exhausted quota does not pass by waiting (async-openai does not retry it either).
        429 if quota_exhausted => ModelError::Rejected(message),
        408 | 425 | 429 | 500.. => ModelError::Unavailable(message),
        _ => ModelError::Rejected(message),
    }
}

/// `text` cut to [`MAX_ERROR_CHARS`] characters.
fn excerpt(text: &str) -> String {
    if text.is_empty() {
        return "(no message)".to_owned();
    }
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(MAX_ERROR_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// An error and its causes, `: `-separated (reqwest's own message says little).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use moltbot_fakes::openai::{FakeOpenAi, FakeOpenAiConfig, Reply, ToolCall};
    use serde_json::{Value, json};

    use super::*;

    const KEY: &str = "sk-test-secret-0123456789abcdef";
    const MODEL: &str = "fake-pi";

    fn secret(text: &str) -> Secret {
        serde_json::from_value(json!(text)).expect("a secret deserialises from a string")
    }

    fn config(fake: &FakeOpenAi) -> ModelConfig {
        ModelConfig {
            api_key: Some(secret(KEY)),
            timeout: Duration::from_secs(5),
            max_retries: 2,
            ..ModelConfig::new(fake.base_url(), MODEL)
        }
    }

    fn client_with(config: &ModelConfig) -> ModelClient {
        let mut client = ModelClient::new(config).expect("client builds");
        client.backoff_base = Duration::from_millis(10);
        client
    }

    async fn fake_with_key() -> FakeOpenAi {
        FakeOpenAi::start(FakeOpenAiConfig {
            api_key: Some(KEY.to_owned()),
            ..Default::default()
        })
        .await
        .expect("fake starts")
    }

    fn ask(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![
                ChatMessage::System("You are Pi.".into()),
                ChatMessage::User {
                    name: None,
                    text: text.into(),
                },
            ],
            tools: vec![],
            max_tokens: 256,
        }
    }

    fn remember_tool() -> ToolSpec {
        ToolSpec {
            name: "remember_fact",
            description: "Store a fact the person asked you to remember.",
            parameters: Arc::new(json!({
                "type": "object",
                "properties": {"fact": {"type": "string"}},
                "required": ["fact"],
            })),
        }
    }

    /// Events as owned values, for assertions.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Text(String),
        Restart,
    }

    /// The turn, the events it streamed and what it spent.
    async fn complete(
        client: &ModelClient,
        request: &ChatRequest,
    ) -> (Result<Turn, ModelError>, Vec<Seen>, Usage) {
        let mut seen = Vec::new();
        let mut spent = Usage::default();
        let result = client
            .complete(request, u32::MAX, &mut spent, &mut |event| {
                seen.push(match event {
                    StreamEvent::Text(text) => Seen::Text(text.to_owned()),
                    StreamEvent::Restart => Seen::Restart,
                })
            })
            .await;
        (result, seen, spent)
    }

    /// The fake's usage rule: ceil(chars / 4) + 3 per message.
    fn fake_prompt_tokens(texts: &[&str]) -> u64 {
        texts
            .iter()
            .map(|t| t.chars().count().div_ceil(4) as u64 + 3)
            .sum()
    }

    fn assert_no_key(error: &ModelError) {
        assert!(!error.to_string().contains(KEY), "{error}");
        assert!(!format!("{error:?}").contains(KEY), "{error:?}");
    }

    #[tokio::test]
    async fn streamed_text_is_reassembled_in_order_with_usage() {
        let fake = fake_with_key().await;
        let text = "The quick brown fox jumps over the lazy dog, then naps in the sun.";
        fake.enqueue(Reply::Text(text.to_owned()));
        let client = client_with(&config(&fake));

        let (result, seen, spent) = complete(&client, &ask("Tell me a story")).await;
        let turn = result.expect("turn succeeds");

        assert!(seen.len() > 2, "streamed in pieces: {seen:?}");
        let joined: String = seen
            .iter()
            .map(|event| match event {
                Seen::Text(piece) => piece.as_str(),
                Seen::Restart => panic!("no restart expected"),
            })
            .collect();
        assert_eq!(joined, text);
        assert_eq!(turn.text.as_deref(), Some(text));
        assert!(turn.tool_calls.is_empty());
        assert_eq!(turn.finish, Finish::Stop);
        assert_eq!(
            spent,
            Usage {
                prompt_tokens: fake_prompt_tokens(&["You are Pi.", "Tell me a story"]),
                completion_tokens: text.chars().count().div_ceil(4) as u64,
            }
        );
        assert_eq!(fake.request_count(), 1);
        assert_eq!(client.model(), MODEL);
    }

    /// Tool calls are never cut to the token limit (neither by OpenAI nor by the fake), so a
    /// long one stands for a server that ignores the limit: past the bound the attempt stops
    /// as an invalid answer, which is not retried.
    #[tokio::test]
    async fn an_answer_past_its_token_limit_fails_without_a_retry() {
        let fake = fake_with_key().await;
        let bound = answer_bound(ask("").max_tokens);
        assert_eq!(bound, MIN_ANSWER_BYTES, "256 tokens are under the floor");
        // The call's id (`call_` and 24 characters), its name and the fact's JSON wrapper
        // take 53 bytes: the first answer fills the bound exactly, the second passes it by one.
        for length in [bound - 53, bound - 52] {
            fake.enqueue(Reply::ToolCalls(vec![ToolCall {
                name: "remember_fact".into(),
                arguments: json!({"fact": "x".repeat(length)}),
            }]));
        }
        let client = client_with(&config(&fake));
        let mut request = ask("remember this");
        request.tools = vec![remember_tool()];

        let (within, _, _) = complete(&client, &request).await;
        let call = &within.expect("an answer at the bound passes").tool_calls[0];
        assert_eq!(
            call.id.len() + call.name.len() + call.arguments.len(),
            bound
        );
        let (past, _, spent) = complete(&client, &request).await;
        let Err(ModelError::Invalid(message)) = &past else {
            panic!("{past:?}");
        };
        assert!(message.contains("past 64 KiB"), "{message}");
        assert!(spent.completion_tokens > 0, "what streamed is paid for");
        assert_eq!(fake.request_count(), 2, "the second answer was not retried");

        let call = ToolCall {
            name: "remember_fact".into(),
            arguments: json!({"fact": "x"}),
        };
        fake.enqueue(Reply::ToolCalls(vec![call.clone(); MAX_TOOL_CALLS]));
        fake.enqueue(Reply::ToolCalls(vec![call; MAX_TOOL_CALLS + 1]));
        let (most, _, _) = complete(&client, &request).await;
        assert_eq!(
            most.expect("64 calls pass").tool_calls.len(),
            MAX_TOOL_CALLS
        );
        let (too_many, _, _) = complete(&client, &request).await;
        assert!(
            matches!(&too_many, Err(ModelError::Invalid(m)) if m.contains("more than 64 tool calls")),
            "{too_many:?}"
        );
    }

    #[tokio::test]
    async fn tool_call_arguments_are_reassembled() {
        let fake = fake_with_key().await;
        let arguments = json!({"fact": "the cat is called Tom", "importance": 3});
        fake.enqueue(Reply::ToolCalls(vec![ToolCall {
            name: "remember_fact".into(),
            arguments: arguments.clone(),
        }]));
        let client = client_with(&config(&fake));
        let mut request = ask("remember: the cat is called Tom");
        request.tools = vec![remember_tool()];

        let (result, seen, spent) = complete(&client, &request).await;
        let turn = result.expect("turn succeeds");

        assert!(seen.is_empty(), "no text: {seen:?}");
        assert_eq!(turn.text, None);
        assert_eq!(turn.finish, Finish::ToolCalls);
        assert_eq!(turn.tool_calls.len(), 1);
        let call = &turn.tool_calls[0];
        assert!(call.id.starts_with("call_"), "{}", call.id);
        assert_eq!(call.name, "remember_fact");
        let parsed: Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
        assert_eq!(parsed, arguments);
        assert!(spent.completion_tokens > 0);
    }

    #[tokio::test]
    async fn request_carries_tools_limits_names_and_history() {
        let fake = fake_with_key().await;
        fake.enqueue(Reply::Text("ok".into()));
        let client = client_with(&config(&fake));
        let request = ChatRequest {
            messages: vec![
                ChatMessage::System("You are Pi.".into()),
                ChatMessage::User {
                    name: Some("Ann Lee! (admin)".into()),
                    text: "remember my cat".into(),
                },
                ChatMessage::Assistant {
                    text: None,
                    tool_calls: vec![ToolCallRequest {
                        id: "call_1".into(),
                        name: "remember_fact".into(),
                        arguments: r#"{"fact":"cat"}"#.into(),
                    }],
                },
                ChatMessage::Tool {
                    call_id: "call_1".into(),
                    content: "remembered".into(),
                },
                ChatMessage::User {
                    name: Some("李".into()),
                    text: "thanks".into(),
                },
            ],
            tools: vec![remember_tool()],
            max_tokens: 77,
        };

        complete(&client, &request).await.0.expect("turn succeeds");

        let sent = &fake.requests()[0];
        assert_eq!(sent["model"], MODEL);
        assert_eq!(sent["stream"], true);
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["max_completion_tokens"], 77);
        assert_eq!(
            sent["tools"],
            json!([{
                "type": "function",
                "function": {
                    "name": "remember_fact",
                    "description": "Store a fact the person asked you to remember.",
                    "parameters": remember_tool().parameters,
                },
            }])
        );
        let messages = sent["messages"].as_array().expect("messages array");
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(messages[1]["name"], "AnnLeeadmin");
        assert_eq!(messages[1]["content"], "remember my cat");
        assert_eq!(
            messages[2]["tool_calls"],
            json!([{
                "id": "call_1",
                "type": "function",
                "function": {"name": "remember_fact", "arguments": "{\"fact\":\"cat\"}"},
            }])
        );
        assert_eq!(messages[3]["tool_call_id"], "call_1");
        assert!(
            messages[4].get("name").is_none(),
            "nothing left of the name"
        );

        // A run's remaining budget holds the answer below the request's own limit.
        fake.enqueue(Reply::Text("ok".into()));
        client
            .complete(&request, 40, &mut Usage::default(), &mut |_| {})
            .await
            .expect("turn succeeds");
        assert_eq!(fake.requests()[1]["max_completion_tokens"], 40);

        // For a server that knows only the older field, the limit goes there alone.
        let older = client_with(&ModelConfig {
            token_limit_field: TokenLimitField::MaxTokens,
            ..config(&fake)
        });
        fake.enqueue(Reply::Text("ok".into()));
        let mut spent = Usage::default();
        (older.complete(&request, 40, &mut spent, &mut |_| {}).await).expect("turn succeeds");
        let sent = &fake.requests()[2];
        assert_eq!(sent["max_tokens"], 40);
        assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    }

    #[tokio::test]
    async fn bad_key_is_rejected_without_retry_and_not_echoed() {
        let fake = fake_with_key().await;
        let mut config = config(&fake);
        let wrong = "sk-wrong-0123456789abcdefghij";
        config.api_key = Some(secret(wrong));
        let client = client_with(&config);

        let error = complete(&client, &ask("hi")).await.0.expect_err("401");

        assert!(
            matches!(&error, ModelError::Rejected(m) if m.contains("invalid_api_key")),
            "{error:?}"
        );
        assert!(!error.is_retryable());
        assert!(!error.to_string().contains(wrong), "{error}");
        assert_eq!(fake.request_count(), 1);
    }

    #[tokio::test]
    async fn a_key_echoed_by_the_server_is_redacted() {
        let fake = fake_with_key().await;
        fake.enqueue(Reply::Error {
            status: 400,
            code: "invalid_request".into(),
            message: format!("you sent {KEY} which is odd"),
            retry_after: None,
        });
        let client = client_with(&config(&fake));

        let error = complete(&client, &ask("hi")).await.0.expect_err("400");

        assert!(
            matches!(&error, ModelError::Rejected(m) if m.contains("you sent [redacted] which is odd")),
            "{error:?}"
        );
        assert_no_key(&error);
        assert_eq!(fake.request_count(), 1);
    }

    #[tokio::test]
    async fn unknown_model_is_rejected() {
        let fake = fake_with_key().await;
        let mut config = config(&fake);
        config.model = "gpt-imaginary".into();
        let client = client_with(&config);

        let error = complete(&client, &ask("hi")).await.0.expect_err("404");

        assert!(
            matches!(&error, ModelError::Rejected(m) if m.contains("model_not_found")),
            "{error:?}"
        );
        assert_eq!(fake.request_count(), 1);
    }

    #[tokio::test]
    async fn malformed_stream_is_invalid() {
        let fake = fake_with_key().await;
        fake.enqueue(Reply::Malformed);
        let client = client_with(&config(&fake));

        let error = complete(&client, &ask("hi"))
            .await
            .0
            .expect_err("malformed");

        assert!(matches!(error, ModelError::Invalid(_)), "{error:?}");
        assert_no_key(&error);
        assert_eq!(fake.request_count(), 1, "not retried");
    }

    #[tokio::test]
    async fn empty_answer_is_invalid() {
        let fake = fake_with_key().await;
        fake.enqueue(Reply::Text(String::new()));
        let client = client_with(&config(&fake));

        let error = complete(&client, &ask("hi")).await.0.expect_err("empty");

        assert!(
            matches!(&error, ModelError::Invalid(m) if m.contains("neither text nor tool calls")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn hang_times_out_each_attempt_then_fails() {
        let fake = fake_with_key().await;
        for _ in 0..3 {
            fake.enqueue(Reply::Hang);
        }
        let mut config = config(&fake);
        config.timeout = Duration::from_millis(300);
        config.max_retries = 2;
        let client = client_with(&config);

        let started = Instant::now();
        let error = complete(&client, &ask("hi")).await.0.expect_err("timeout");

        assert!(matches!(error, ModelError::Timeout), "{error:?}");
        assert_eq!(
            fake.request_count(),
            3,
            "the first attempt and max_retries retries"
        );
        assert!(started.elapsed() >= Duration::from_millis(900));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn server_errors_are_retried_by_both_layers_then_unavailable() {
        let fake = fake_with_key().await;
        let max_retries = 1;
        // async-openai makes 4 requests per attempt.
        let requests = (max_retries as usize + 1) * 4;
        for _ in 0..requests {
            fake.enqueue(Reply::Error {
                status: 500,
                code: "server_error".into(),
                message: "The server had an error while processing your request.".into(),
                retry_after: None,
            });
        }
        let mut config = config(&fake);
        config.max_retries = max_retries;
        let client = client_with(&config);

        let error = complete(&client, &ask("hi")).await.0.expect_err("500");

        assert!(
            matches!(&error, ModelError::Unavailable(m) if m.contains("500 Internal Server Error: The server had an error while processing your request. (code server_error)")),
            "{error:?}"
        );
        assert!(error.is_retryable());
        assert_eq!(fake.request_count(), requests);
    }

    #[tokio::test]
    async fn a_retry_after_server_errors_succeeds() {
        let fake = fake_with_key().await;
        for _ in 0..4 {
            fake.enqueue(Reply::Error {
                status: 503,
                code: "overloaded".into(),
                message: "try later".into(),
                retry_after: None,
            });
        }
        fake.enqueue(Reply::Text("back again".into()));
        let mut config = config(&fake);
        config.max_retries = 1;
        let client = client_with(&config);

        let (result, seen, _) = complete(&client, &ask("hi")).await;

        assert_eq!(
            result.expect("second attempt succeeds").text.as_deref(),
            Some("back again")
        );
        assert!(
            !seen.contains(&Seen::Restart),
            "no text before the retry: {seen:?}"
        );
        assert_eq!(fake.request_count(), 5);
    }

    /// A fake whose first answer streams a long text slowly (a piece every 100 ms), so that
    /// `timeout` cuts it, and a client of it with `max_retries`.
    async fn slow_stream(timeout: Duration, max_retries: u32) -> (FakeOpenAi, ModelClient) {
        let fake = FakeOpenAi::start(FakeOpenAiConfig {
            chunk_delay: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .expect("fake starts");
        fake.enqueue(Reply::Text("one two three ".repeat(40)));
        let mut config = config(&fake);
        config.timeout = timeout;
        config.max_retries = max_retries;
        let client = client_with(&config);
        (fake, client)
    }

    #[tokio::test]
    async fn a_stream_cut_by_the_timeout_restarts_and_counts_its_tokens() {
        let (fake, client) = slow_stream(Duration::from_millis(1_000), 1).await;
        fake.enqueue(Reply::Text("ok".into()));

        let (result, seen, spent) = complete(&client, &ask("hi")).await;
        let turn = result.expect("the retry succeeds");

        let restart = seen
            .iter()
            .position(|e| *e == Seen::Restart)
            .expect("a restart");
        assert!(restart > 0, "text came before the restart: {seen:?}");
        assert_eq!(&seen[restart + 1..], [Seen::Text("ok".into())]);
        assert_eq!(turn.text.as_deref(), Some("ok"));
        // The second attempt's reported usage plus the first's estimate.
        let second = Usage {
            prompt_tokens: fake_prompt_tokens(&["You are Pi.", "hi"]),
            completion_tokens: 1,
        };
        assert!(spent.prompt_tokens > second.prompt_tokens, "{spent:?}");
        assert!(
            spent.completion_tokens > second.completion_tokens,
            "{spent:?}"
        );
        assert_eq!(fake.request_count(), 2);
    }

    #[tokio::test]
    async fn a_turn_that_fails_for_good_still_reports_what_it_spent() {
        let (_fake, client) = slow_stream(Duration::from_millis(600), 0).await;

        let (result, seen, spent) = complete(&client, &ask("hi")).await;

        assert!(matches!(result, Err(ModelError::Timeout)), "{result:?}");
        assert!(!seen.is_empty(), "text streamed before the timeout");
        // The stream was cut before the server's usage: the gateway's own estimate.
        assert_eq!(spent.prompt_tokens, estimate_prompt(&ask("hi")));
        assert!(spent.completion_tokens > 0, "{spent:?}");
    }

    #[tokio::test]
    async fn events_reach_a_shared_listener() {
        // The listener is `Send`, so it may forward to state shared with other tasks.
        let fake = fake_with_key().await;
        fake.enqueue(Reply::Text("hello there".into()));
        let client = client_with(&config(&fake));
        let shared = Arc::new(Mutex::new(String::new()));
        let sink = shared.clone();

        let turn = client
            .complete(
                &ask("hi"),
                u32::MAX,
                &mut Usage::default(),
                &mut move |event| {
                    if let StreamEvent::Text(text) = event {
                        sink.lock().unwrap().push_str(text);
                    }
                },
            )
            .await
            .expect("turn succeeds");

        assert_eq!(turn.text.as_deref(), Some(shared.lock().unwrap().as_str()));
    }

    #[test]
    fn cost_is_computed_from_prices_per_million() {
        let mut config = ModelConfig {
            timeout: Duration::from_secs(1),
            max_retries: 0,
            prompt_price_per_million: 2.5,
            completion_price_per_million: 10.0,
            ..ModelConfig::new("http://127.0.0.1:9/v1", MODEL)
        };
        let client = ModelClient::new(&config).expect("client builds");
        let usage = |prompt_tokens, completion_tokens| Usage {
            prompt_tokens,
            completion_tokens,
        };

        assert_eq!(client.cost_micros(usage(1_000, 200)), 2_500 + 2_000);
        assert_eq!(client.cost_micros(usage(0, 0)), 0);
        assert_eq!(client.cost_micros(usage(1, 1)), 13, "12.5 rounds to 13");
        assert_eq!(client.cost_micros(usage(u64::MAX, u64::MAX)), u64::MAX);

        config.prompt_price_per_million = 0.0;
        config.completion_price_per_million = 0.0;
        let free = ModelClient::new(&config).expect("client builds");
        assert_eq!(free.cost_micros(usage(1_000_000, 1_000_000)), 0);
    }

    #[test]
    fn usage_adds_up_saturating() {
        let mut total = Usage {
            prompt_tokens: 10,
            completion_tokens: u64::MAX,
        };
        total += Usage {
            prompt_tokens: 5,
            completion_tokens: 1,
        };
        assert_eq!(
            total,
            Usage {
                prompt_tokens: 15,
                completion_tokens: u64::MAX
            }
        );
    }

    #[test]
    fn bad_configs_are_refused_without_echoing_the_key() {
        let base = ModelConfig {
            timeout: Duration::from_secs(1),
            max_retries: 0,
            ..ModelConfig::new("http://127.0.0.1:9/v1/", MODEL)
        };
        assert!(ModelClient::new(&base).is_ok(), "a trailing slash is fine");

        let bad_url = ModelConfig {
            base_url: "not a url".into(),
            ..base.clone()
        };
        assert!(matches!(
            ModelClient::new(&bad_url),
            Err(ModelError::Config(_))
        ));

        let zero_timeout = ModelConfig {
            timeout: Duration::ZERO,
            ..base.clone()
        };
        assert!(matches!(
            ModelClient::new(&zero_timeout),
            Err(ModelError::Config(_))
        ));

        let bad_key = "sk-line\nbreak-0123456789";
        let bad_key_config = ModelConfig {
            api_key: Some(secret(bad_key)),
            ..base
        };
        let error = ModelClient::new(&bad_key_config).expect_err("refused");
        assert!(matches!(error, ModelError::Config(_)));
        assert!(!error.to_string().contains("sk-line"), "{error}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = ModelConfig {
            timeout: Duration::from_secs(1),
            max_retries: 10,
            ..ModelConfig::new("http://127.0.0.1:9/v1", MODEL)
        };
        let client = ModelClient::new(&config).expect("client builds");
        for _ in 0..20 {
            let first = client.backoff(1);
            assert!(
                first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE,
                "{first:?}"
            );
            let third = client.backoff(3);
            assert!(
                third >= BACKOFF_BASE * 2 && third <= BACKOFF_BASE * 4,
                "{third:?}"
            );
            assert!(client.backoff(30) <= BACKOFF_MAX);
        }
    }

    #[test]
    fn only_timeouts_and_unavailability_are_retryable() {
        assert!(ModelError::Timeout.is_retryable());
        assert!(ModelError::Unavailable("x".into()).is_retryable());
        assert!(!ModelError::Rejected("x".into()).is_retryable());
        assert!(!ModelError::Invalid("x".into()).is_retryable());
        assert!(!ModelError::Config("x".into()).is_retryable());
    }
}
