//! The gateway's HTTP surface: the inbox API under `/v1` (bearer token), and `/healthz`,
//! `/readyz`, `/metrics` for the platform.

mod error;
mod extract;
mod inbox;
mod ops;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use moltbot_protocol::inbox::ErrorCode;
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::store::Store;
pub use error::Failure;

/// WebSocket subprotocol of the inbox stream; browsers, which cannot set headers on a
/// WebSocket, send the token as a second subprotocol `bearer.<token>`.
pub const STREAM_PROTOCOL: &str = "moltbot.v1";

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub bus: Bus,
    pub metrics: Arc<Metrics>,
    pub config: watch::Receiver<Arc<Config>>,
    pub shutdown: CancellationToken,
    pub streams: Arc<Semaphore>,
}

impl AppState {
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/conversations", get(inbox::list_conversations))
        .route("/conversations/{id}", get(inbox::get_conversation))
        .route("/conversations/{id}/messages", get(inbox::list_messages))
        .route(
            "/conversations/{id}/pin",
            put(inbox::pin).delete(inbox::unpin),
        )
        .route("/conversations/{id}/read", post(inbox::mark_read))
        .route("/conversations/{id}/send/{txn_id}", put(inbox::send))
        .route("/messages/{id}", get(inbox::get_message))
        .route("/search", get(inbox::search))
        .route("/events", post(inbox::ingest_event))
        .route("/webchat/messages", post(inbox::webchat_message))
        .route("/stream", get(stream::open))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { Failure::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "method not allowed here",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Checks the bearer token in constant time. The token is never logged.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let config = state.config();
    let expected = config.auth.inbox_token.expose().as_bytes();
    let presented = bearer_token(request.headers());
    let ok = presented.is_some_and(|token| bool::from(token.as_bytes().ct_eq(expected)));
    if !ok {
        return Failure::unauthorized().into_response();
    }
    next.run(request).await
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))
}

/// Counts and times every request, and logs refusals (the code and path, never the body).
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if let Some(error::Refused(code)) = response.extensions().get::<error::Refused>() {
        state.metrics.reject(code.as_str());
        if status.is_client_error() {
            tracing::info!(%method, %path, status = status.as_u16(), code = code.as_str(), "request refused");
        }
    }
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method,
            route: route.clone(),
            status: status.as_u16(),
        })
        .inc();
    state
        .metrics
        .http_duration
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
