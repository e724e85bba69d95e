//! `POST /hooks/{connection}`: provider webhooks, each verified by its own connection (no
//! bearer token: the provider cannot send one). And `GET /status`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use jiff::Timestamp;
use moltbot_protocol::event::ConnectionState;
use moltbot_protocol::inbox::{AgentStatusView, ConnectionStatusView, ErrorCode, GatewayStatus};

use super::AppState;
use super::error::Failure;
use super::extract::ApiPath;
use crate::channels::WebhookRejection;
use crate::store::UsageDay;

pub async fn receive(
    State(state): State<AppState>,
    ApiPath(connection): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Failure> {
    let connector = state.connectors.get(&connection).cloned();
    let Some(receiver) = connector.as_deref().and_then(|c| c.webhook()) else {
        return Err(Failure::not_found("no webhook for this connection"));
    };
    match receiver.receive(&headers, body).await {
        Ok(()) => Ok(StatusCode::OK),
        Err(WebhookRejection::Unauthorized) => {
            tracing::warn!(
                connection,
                "webhook refused: its origin could not be verified"
            );
            Err(Failure::unauthorized())
        }
        Err(WebhookRejection::BadRequest(message)) => Err(Failure::invalid(message)),
        Err(WebhookRejection::Unavailable(message)) => Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            message,
        )),
    }
}

/// Every configured connection's health (one that has not reported yet is `disconnected`,
/// "starting"), and the agent's state and budget.
pub async fn status(State(state): State<AppState>) -> Result<Json<GatewayStatus>, Failure> {
    let config = state.config();
    let reported = state.store.connection_states().await?;
    let connections = state
        .connectors
        .iter()
        .map(|connector| {
            reported
                .iter()
                .find(|r| r.name == connector.name())
                .cloned()
                .unwrap_or_else(|| ConnectionStatusView {
                    name: connector.name().to_string(),
                    channel: connector.channel(),
                    state: ConnectionState::Disconnected,
                    reason: Some("starting".into()),
                    since: None,
                })
        })
        .collect();
    Ok(Json(GatewayStatus {
        tenant: config.tenant.id.clone(),
        connections,
        agent: AgentStatusView {
            enabled: config.agent.model.is_some(),
            model: config.agent.model.as_ref().map(|m| m.model.clone()),
            default_mode: config.agent.default_mode,
            runs_queued: state.store.count_queued_runs().await?,
            tokens_today: state
                .store
                .tokens_on(UsageDay::of(Timestamp::now()))
                .await?,
            tokens_per_day: config.agent.tokens_per_day,
        },
    }))
}
