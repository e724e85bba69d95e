//! The agent in the inbox: modes, runs and drafts, memory, follow-ups, pairing requests.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use moltbot_protocol::ids::{ConversationId, FactId, FollowUpId, RunId};
use moltbot_protocol::inbox::{
    AgentRunView, ApproveDraft, ConversationView, FollowUpView, MemoryFactView, NewFact, Page,
    PairingRequestView, RunState, SetAgentMode,
};
use serde::Deserialize;

use super::AppState;
use super::error::Failure;
use super::extract::{ApiPath, ApiQuery, Json as JsonBody, OptionalJson};
use super::inbox::{check_text, page_size};
use crate::store::RunFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    conversation_id: Option<ConversationId>,
    state: Option<RunState>,
    cursor: Option<RunId>,
    limit: Option<u32>,
}

pub async fn set_mode(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
    JsonBody(body): JsonBody<SetAgentMode>,
) -> Result<Json<ConversationView>, Failure> {
    state.store.set_agent_mode(id, body.mode).await?;
    Ok(Json(state.store.conversation(id).await?))
}

pub async fn list_runs(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<RunParams>,
) -> Result<Json<Page<AgentRunView>>, Failure> {
    let limit = page_size(params.limit)?;
    let filter = RunFilter {
        conversation_id: params.conversation_id,
        state: params.state,
    };
    Ok(Json(state.store.runs(&filter, params.cursor, limit).await?))
}

pub async fn get_run(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<RunId>,
) -> Result<Json<AgentRunView>, Failure> {
    Ok(Json(state.store.run(id).await?))
}

/// Sends a draft, as written or as the person edited it.
pub async fn approve(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<RunId>,
    OptionalJson(body): OptionalJson<ApproveDraft>,
) -> Result<Json<AgentRunView>, Failure> {
    if let Some(text) = &body.text {
        check_text(text)?;
    }
    state.store.approve_draft(id, body.text).await?;
    Ok(Json(state.store.run(id).await?))
}

pub async fn reject(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<RunId>,
) -> Result<Json<AgentRunView>, Failure> {
    state.store.reject_draft(id).await?;
    Ok(Json(state.store.run(id).await?))
}

pub async fn list_facts(
    State(state): State<AppState>,
) -> Result<Json<Vec<MemoryFactView>>, Failure> {
    Ok(Json(state.store.facts().await?))
}

/// A fact the person adds is approved at once.
pub async fn add_fact(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewFact>,
) -> Result<(StatusCode, Json<MemoryFactView>), Failure> {
    check_text(&body.text)?;
    let id = state.store.add_fact(body.text.trim().to_string()).await?;
    let fact = fact_view(&state, id).await?;
    Ok((StatusCode::CREATED, Json(fact)))
}

pub async fn approve_fact(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<FactId>,
) -> Result<Json<MemoryFactView>, Failure> {
    state.store.approve_fact(id).await?;
    Ok(Json(fact_view(&state, id).await?))
}

pub async fn delete_fact(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<FactId>,
) -> Result<StatusCode, Failure> {
    state.store.delete_fact(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn fact_view(state: &AppState, id: FactId) -> Result<MemoryFactView, Failure> {
    state
        .store
        .facts()
        .await?
        .into_iter()
        .find(|f| f.id == id)
        .ok_or_else(|| Failure::not_found("memory fact not found"))
}

pub async fn list_follow_ups(
    State(state): State<AppState>,
) -> Result<Json<Vec<FollowUpView>>, Failure> {
    Ok(Json(state.store.follow_ups().await?))
}

pub async fn cancel_follow_up(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<FollowUpId>,
) -> Result<StatusCode, Failure> {
    state.store.cancel_follow_up(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_pairing(
    State(state): State<AppState>,
) -> Result<Json<Vec<PairingRequestView>>, Failure> {
    Ok(Json(state.store.pairing_requests().await?))
}

pub async fn approve_pairing(
    state: State<AppState>,
    code: ApiPath<String>,
) -> Result<Json<PairingRequestView>, Failure> {
    decide_pairing(state, code, true).await
}

pub async fn deny_pairing(
    state: State<AppState>,
    code: ApiPath<String>,
) -> Result<Json<PairingRequestView>, Failure> {
    decide_pairing(state, code, false).await
}

async fn decide_pairing(
    State(state): State<AppState>,
    ApiPath(code): ApiPath<String>,
    approve: bool,
) -> Result<Json<PairingRequestView>, Failure> {
    // Codes are shown upper-case; people type them however they like.
    let code = code.trim().to_ascii_uppercase();
    state.store.decide_pairing(&code, approve).await?;
    state
        .store
        .pairing_requests()
        .await?
        .into_iter()
        .find(|p| p.code == code)
        .map(Json)
        .ok_or_else(|| Failure::not_found("pairing code not found"))
}
