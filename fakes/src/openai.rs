//! A local fake of an OpenAI-compatible chat completions API.
//!
//! It speaks the real wire format closely enough for `async-openai` (which rejects
//! anything else): every completion and stream chunk carries `id`, `object`, `created` and
//! `model`, and a stream's `finish_reason` stays `null` until its final choice chunk.
//!
//! # Endpoints
//!
//! - `POST /v1/chat/completions`, streaming (`"stream": true`, server-sent events ending in
//!   `data: [DONE]`) or not. Checked in this order: API key (401 `invalid_api_key`), JSON
//!   (400), the request's shape (400: `model` and a non-empty `messages` array are required),
//!   the model (404 `model_not_found`).
//! - `GET /v1/models`: the configured models.
//! - Anything else: 404 `Invalid URL (METHOD /path)`, as OpenAI answers.
//!
//! Errors use OpenAI's body `{"error":{"message","type","param":null,"code"}}`; on a
//! streaming request they are plain JSON too, as OpenAI answers before a stream starts.
//!
//! # What a request is answered with
//!
//! Each chat completion request that passes the checks above takes the oldest
//! [`Reply`] queued with [`FakeOpenAi::enqueue`]. Requests rejected by the checks take none.
//! When the queue is empty the fake answers deterministically, so the standalone server is
//! usable in a demo:
//!
//! - If the last message is a `tool` result: a short text acknowledging it, so an agent's
//!   tool loop terminates.
//! - If the request offers a function tool named `remember_fact` and the last user message
//!   starts with `remember:`: a call of `remember_fact` with `{"fact": <the rest, trimmed>}`.
//! - Otherwise: `Pi here. You said: <last user message>`, with text past 200 characters
//!   cut and marked with `…`.
//!
//! The configured delay ([`FakeOpenAiConfig::delay`], [`FakeOpenAi::set_delay`]) passes
//! before the first byte of every answer to such a request, scripted or not.
//!
//! # Token usage
//!
//! Usage is an approximation, deterministic so that tests can assert it: prompt tokens are
//! `ceil(chars of all message contents / 4) + 3` per message; completion tokens are
//! `ceil(chars / 4)`, at least 1, counting the text, or each tool call's name and argument
//! JSON. A `max_completion_tokens` (or else `max_tokens`) below the text's count cuts the
//! text to 4 characters per allowed token and finishes with `length`; tool calls are never cut.
//!
//! # What `async-openai` (0.43) does with the fake's answers
//!
//! Its client retries a 429 (unless the error's `type` is `insufficient_quota`) and any
//! 5xx up to three times, waiting `retry-after` seconds when that header is present and
//! otherwise 100 ms, 200 ms, 400 ms. Each retry is a new request here and takes the next
//! scripted reply, so a test that wants the caller to see such an error queues it four
//! times. It reads a 5xx body as plain text, not as an OpenAI error object.

mod answer;
mod server;
mod wire;

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use server::Shared;

/// Handle to a running fake. Cheap to clone: clones share the same server and state.
///
/// The server runs on a background task of the Tokio runtime it was started on, until that
/// runtime shuts down.
#[derive(Clone)]
pub struct FakeOpenAi {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// How a [`FakeOpenAi`] behaves.
#[derive(Debug, Clone)]
pub struct FakeOpenAiConfig {
    /// When `Some`, requests must carry `Authorization: Bearer <key>`, else 401.
    pub api_key: Option<String>,
    /// Models listed by `GET /v1/models`; a completion for any other model is a 404
    /// `model_not_found`.
    pub models: Vec<String>,
    /// Time before the first byte of every completion answer.
    pub delay: Duration,
    /// Time between the chunks of a streamed answer.
    pub chunk_delay: Duration,
}

impl Default for FakeOpenAiConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            models: vec!["fake-pi".to_owned()],
            delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
        }
    }
}

/// A scripted answer to one chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An assistant message with this content; finishes with `stop`, or `length` when the
    /// request's token limit cuts it.
    Text(String),
    /// An assistant message calling these tools; finishes with `tool_calls`.
    ToolCalls(Vec<ToolCall>),
    /// An OpenAI error body with this HTTP status. The error's `type` follows from the
    /// status (`requests` for 429, or `insufficient_quota` when that is the code;
    /// `server_error` for 5xx; else `invalid_request_error`). `retry_after` (seconds) is
    /// sent as the `retry-after` header.
    Error {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u32>,
    },
    /// A 200 answer that is not a valid completion: a JSON object without `choices`, or on
    /// a streaming request a valid first chunk followed by an event whose data is not JSON.
    Malformed,
    /// Accept the request and never answer, so the caller's timeout has to fire.
    Hang,
    /// Wait this long (on top of the configured delay), then answer with the inner reply.
    Delayed(Duration, Box<Reply>),
}

/// One function call in a [`Reply::ToolCalls`]; the fake gives it a `call_…` id.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// The arguments, sent as the JSON string OpenAI uses.
    pub arguments: serde_json::Value,
}

impl FakeOpenAi {
    /// Starts the fake on an ephemeral port of 127.0.0.1.
    pub async fn start(config: FakeOpenAiConfig) -> io::Result<FakeOpenAi> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts the fake on `addr`.
    pub async fn start_on(addr: SocketAddr, config: FakeOpenAiConfig) -> io::Result<FakeOpenAi> {
        let shared = Arc::new(Shared::new(config));
        let addr = server::spawn(addr, shared.clone()).await?;
        Ok(FakeOpenAi { shared, addr })
    }

    /// The API base to give a client (`OPENAI_BASE_URL`, async-openai's `api_base`):
    /// `http://HOST:PORT/v1`, without a trailing slash. A server bound to an unspecified
    /// address is reached through loopback.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", reachable(self.addr))
    }

    /// Queues a scripted reply; replies are taken one per accepted request, oldest first,
    /// before the default behaviour applies.
    pub fn enqueue(&self, reply: Reply) {
        self.shared.enqueue(reply);
    }

    /// Changes the delay before each answer, for requests that arrive from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.set_delay(delay);
    }

    /// Every chat completion request body received, in order of arrival, including those
    /// rejected; a body that is not JSON is recorded as a JSON string of its text.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.shared.requests()
    }

    /// How many chat completion requests have been received.
    pub fn request_count(&self) -> usize {
        self.shared.request_count()
    }

    /// How many chat completion requests are being answered now (a stream counts until its
    /// last chunk is sent or the client goes away).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// The highest [`in_flight`](Self::in_flight) seen so far.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight()
    }
}

/// The address a local client connects to for a server bound to `addr`.
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_address_is_reached_through_loopback() {
        let any_v4: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let any_v6: SocketAddr = "[::]:8080".parse().unwrap();
        let bound: SocketAddr = "127.0.0.1:9000".parse().unwrap();

        assert_eq!(reachable(any_v4).to_string(), "127.0.0.1:8080");
        assert_eq!(reachable(any_v6).to_string(), "[::1]:8080");
        assert_eq!(reachable(bound), bound);
    }
}
