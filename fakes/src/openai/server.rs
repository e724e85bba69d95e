//! The HTTP side: routes, the checks every request passes, shared state, and turning a
//! [`Reply`] into a response.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{
        HeaderMap, HeaderValue, Method, StatusCode, Uri,
        header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER},
    },
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::{StreamExt, stream};
use serde_json::Value;
use tokio::net::TcpListener;

use super::{
    FakeOpenAiConfig, Reply,
    answer::{Completion, default_reply},
    wire::{self, ChatRequest, Head},
};

/// Agents send whole conversations; allow more than axum's 2 MiB default.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// State shared by the handle and the request handlers.
pub(super) struct Shared {
    api_key: Option<String>,
    models: Vec<String>,
    chunk_delay: Duration,
    delay: Mutex<Duration>,
    replies: Mutex<VecDeque<Reply>>,
    /// Bodies as received, parsed only when asked for: keeping a parsed copy of every
    /// request cost the benches more than answering them.
    requests: Mutex<Vec<Bytes>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a request as in flight until dropped, including when the client goes away and
/// the handler or the response stream is dropped midway.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A poisoned lock only means another handler panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(config: FakeOpenAiConfig) -> Self {
        Self {
            api_key: config.api_key,
            models: config.models,
            chunk_delay: config.chunk_delay,
            delay: Mutex::new(config.delay),
            replies: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    pub fn enqueue(&self, reply: Reply) {
        lock(&self.replies).push_back(reply);
    }

    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    pub fn requests(&self) -> Vec<Value> {
        let bodies = lock(&self.requests).clone();
        bodies
            .iter()
            .map(|body| {
                serde_json::from_slice(body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
            })
            .collect()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.requests).len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// The 401 answer when a key is configured and `headers` do not carry it; the error
    /// never echoes the whole presented key.
    fn unauthorized(&self, headers: &HeaderMap) -> Option<Response> {
        let expected = self.api_key.as_ref()?;
        let header = headers
            .get(AUTHORIZATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let message = match header.as_deref().and_then(|h| h.strip_prefix("Bearer ")) {
            Some(key) if key == expected => return None,
            Some(key) => format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                mask(key)
            ),
            None => "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .to_owned(),
        };
        Some(error_response(
            StatusCode::UNAUTHORIZED,
            Some("invalid_api_key"),
            &message,
        ))
    }
}

/// Binds `addr` and serves on a background task; returns the bound address.
pub(super) async fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .fallback(invalid_url)
        .method_not_allowed_fallback(invalid_url)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "fake OpenAI server stopped");
        }
    });
    Ok(bound)
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let in_flight = shared.enter();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error_response(rejection.status(), None, &rejection.body_text());
        }
    };
    lock(&shared.requests).push(body.clone());

    if let Some(response) = shared.unauthorized(&headers) {
        return response;
    }
    let request = match serde_json::from_slice::<ChatRequest>(&body) {
        Err(error) if error.is_syntax() || error.is_eof() => {
            return invalid_request(
                "We could not parse the JSON body of your request. The OpenAI API expects a \
                 JSON payload, but what was sent was not valid JSON.",
            );
        }
        Err(error) => return invalid_request(&format!("Invalid request body: {error}")),
        Ok(request) => request,
    };
    if request.messages.is_empty() {
        return invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got \
             an empty array instead.",
        );
    }
    if !shared.models.contains(&request.model) {
        return error_response(
            StatusCode::NOT_FOUND,
            Some("model_not_found"),
            &format!(
                "The model `{}` does not exist or you do not have access to it.",
                request.model
            ),
        );
    }

    // Taken on arrival so that replies follow the order requests came in, whatever the delays.
    let scripted = lock(&shared.replies).pop_front();
    let delay = *lock(&shared.delay);
    tokio::time::sleep(delay).await;
    let reply = scripted.unwrap_or_else(|| default_reply(&request));
    answer(reply, &request, shared.chunk_delay, in_flight).await
}

/// Writes `reply` as the answer to `request`, waiting first where the reply says so.
async fn answer(
    mut reply: Reply,
    request: &ChatRequest,
    chunk_delay: Duration,
    in_flight: InFlight,
) -> Response {
    loop {
        let completion = match reply {
            Reply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
                continue;
            }
            Reply::Hang => std::future::pending().await,
            Reply::Error {
                status,
                code,
                message,
                retry_after,
            } => {
                let status = StatusCode::from_u16(status).unwrap_or_else(|_| {
                    tracing::warn!(
                        status,
                        "scripted error status is not an HTTP status; using 500"
                    );
                    StatusCode::INTERNAL_SERVER_ERROR
                });
                let mut response = error_response(status, Some(&code), &message);
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from(seconds));
                }
                return response;
            }
            // `None`: a 200 that is not a valid completion.
            Reply::Malformed => None,
            Reply::Text(text) => Some(Completion::text(text, request)),
            Reply::ToolCalls(calls) => Some(Completion::tool_calls(calls, request)),
        };
        let head = Head::new(&request.model);
        return match (completion, request.is_stream()) {
            (Some(completion), true) => {
                let frames = wire::stream_frames(&head, &completion, request.include_usage());
                event_stream(frames, chunk_delay, in_flight)
            }
            (Some(completion), false) => {
                Json(wire::completion_body(&head, &completion)).into_response()
            }
            (None, true) => event_stream(wire::malformed_frames(&head), chunk_delay, in_flight),
            (None, false) => Json(wire::malformed_body(&head)).into_response(),
        };
    }
}

/// A `text/event-stream` response sending `frames` with `chunk_delay` between them; the
/// request stays in flight until the last frame is sent or the client goes away.
fn event_stream(frames: Vec<String>, chunk_delay: Duration, in_flight: InFlight) -> Response {
    let frames = stream::iter(frames)
        .enumerate()
        .then(move |(index, frame)| {
            // The stream owns the guard, so dropping the stream ends the request.
            let _in_flight = &in_flight;
            async move {
                if index > 0 && !chunk_delay.is_zero() {
                    tokio::time::sleep(chunk_delay).await;
                }
                Ok::<_, Infallible>(Bytes::from(frame))
            }
        });
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

async fn list_models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(response) = shared.unauthorized(&headers) {
        return response;
    }
    Json(wire::model_list(&shared.models)).into_response()
}

async fn invalid_url(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        None,
        &format!("Invalid URL ({method} {})", uri.path()),
    )
}

fn invalid_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, None, message)
}

/// An OpenAI error body; its `type` follows from the status as OpenAI's does.
fn error_response(status: StatusCode, code: Option<&str>, message: &str) -> Response {
    let kind = match status.as_u16() {
        429 if code == Some("insufficient_quota") => "insufficient_quota",
        429 => "requests",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    (status, Json(wire::error_body(kind, code, message))).into_response()
}

/// `sk-***wxyz`-style: the first 3 and last 4 characters, or nothing of a short key.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "***".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}
