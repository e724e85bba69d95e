//! The gateway's HTTP surface: the inbox API under `/v1` (bearer token), and `/healthz`,
//! `/readyz`, `/metrics` for the platform.

mod agent;
mod error;
mod extract;
mod hooks;
mod inbox;
mod messages;
mod ops;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use moltbot_protocol::inbox::ErrorCode;
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::channels::Connectors;
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
    pub connectors: Connectors,
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
        .route("/conversations/{id}/backfill", post(inbox::backfill))
        .route("/conversations/{id}/send/{txn_id}", put(inbox::send))
        .route(
            "/messages/{id}",
            get(inbox::get_message)
                .patch(messages::edit)
                .delete(messages::delete),
        )
        .route(
            "/messages/{id}/attachments/{index}",
            get(messages::attachment),
        )
        .route(
            "/messages/{id}/reactions/{emoji}",
            put(messages::react).delete(messages::unreact),
        )
        .route("/search", get(inbox::search))
        .route("/events", post(inbox::ingest_event))
        .route("/webchat/messages", post(inbox::webchat_message))
        .route("/stream", get(stream::open))
        .route("/conversations/{id}/agent", put(agent::set_mode))
        .route("/agent/runs", get(agent::list_runs))
        .route("/agent/runs/{id}", get(agent::get_run))
        .route("/agent/runs/{id}/approve", post(agent::approve))
        .route("/agent/runs/{id}/reject", post(agent::reject))
        .route("/memory", get(agent::list_facts).post(agent::add_fact))
        .route("/memory/{id}", delete(agent::delete_fact))
        .route("/memory/{id}/approve", post(agent::approve_fact))
        .route("/follow-ups", get(agent::list_follow_ups))
        .route("/follow-ups/{id}", delete(agent::cancel_follow_up))
        .route("/pairing", get(agent::list_pairing))
        .route("/pairing/{code}/approve", post(agent::approve_pairing))
        .route("/pairing/{code}/deny", post(agent::deny_pairing))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let status = Router::new()
        .route("/status", get(hooks::status))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/v1", v1)
        .merge(status)
        .route("/hooks/{connection}", post(hooks::receive))
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
