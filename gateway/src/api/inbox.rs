//! Inbox handlers: conversations, messages, search, sending and ingest.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::Timestamp;
use moltbot_protocol::event::check_id;
use moltbot_protocol::ids::{ConversationId, MessageId};
use moltbot_protocol::inbox::{
    BackfillReport, BackfillRequest, ConversationView, DEFAULT_PAGE_SIZE, Ingested, MAX_PAGE_SIZE,
    MarkRead, MessageView, Page, SearchHit, SendMessage, WebchatMessage,
};
use moltbot_protocol::{Event, EventType};
use serde::Deserialize;

use super::error::Failure;
use super::extract::{ApiPath, ApiQuery, BodyText, Json as JsonBody, OptionalJson};
use super::{AppState, messages};
use crate::channels::webchat;
use crate::store::{AuditEntry, ConversationFilter, IngestOutcome, OutboundMessage};

/// Longest message text accepted from the API, in characters.
const MAX_TEXT_CHARS: usize = 32_768;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConversations {
    channel: Option<String>,
    pinned: Option<bool>,
    unread: Option<bool>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    q: String,
    conversation_id: Option<ConversationId>,
    cursor: Option<String>,
    limit: Option<u32>,
}

pub(super) fn page_size(limit: Option<u32>) -> Result<u32, Failure> {
    match limit.unwrap_or(DEFAULT_PAGE_SIZE) {
        n @ 1..=MAX_PAGE_SIZE => Ok(n),
        n => Err(Failure::invalid(format!(
            "limit {n} is outside 1..={MAX_PAGE_SIZE}"
        ))),
    }
}

pub(super) fn check_text(text: &str) -> Result<(), Failure> {
    if text.trim().is_empty() {
        return Err(Failure::invalid("text must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(Failure::invalid(format!(
            "text is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(())
}

pub async fn list_conversations(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListConversations>,
) -> Result<Json<Page<ConversationView>>, Failure> {
    let limit = page_size(params.limit)?;
    let filter = ConversationFilter {
        channel: params.channel,
        pinned: params.pinned,
        unread: params.unread,
    };
    Ok(Json(
        state
            .store
            .conversations(&filter, params.cursor.as_deref(), limit)
            .await?,
    ))
}

pub async fn get_conversation(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<ConversationView>, Failure> {
    Ok(Json(state.store.conversation(id).await?))
}

pub async fn list_messages(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<MessageView>>, Failure> {
    let limit = page_size(params.limit)?;
    Ok(Json(
        state
            .store
            .messages(id, params.cursor.as_deref(), limit)
            .await?,
    ))
}

pub async fn get_message(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<MessageId>,
) -> Result<Json<MessageView>, Failure> {
    Ok(Json(state.store.message(id).await?))
}

pub async fn pin(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<StatusCode, Failure> {
    state.store.set_pinned(id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unpin(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<StatusCode, Failure> {
    state.store.set_pinned(id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn mark_read(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
    OptionalJson(body): OptionalJson<MarkRead>,
) -> Result<Json<ConversationView>, Failure> {
    state.store.mark_read(id, body.up_to).await?;
    Ok(Json(state.store.conversation(id).await?))
}

/// `POST /v1/conversations/{id}/backfill`: reads the conversation's earlier messages from
/// its provider, where the channel can (see [`crate::backfill`]). Audited, whatever came
/// of it.
pub async fn backfill(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
    OptionalJson(body): OptionalJson<BackfillRequest>,
) -> Result<Json<BackfillReport>, Failure> {
    let limit = body.limit.unwrap_or(BackfillRequest::DEFAULT_LIMIT);
    if !(1..=BackfillRequest::MAX_LIMIT).contains(&limit) {
        return Err(Failure::invalid(format!(
            "limit must be from 1 to {}, not {limit}",
            BackfillRequest::MAX_LIMIT
        )));
    }
    if let Some(before) = &body.before {
        check_id("before", before).map_err(|e| Failure::invalid(e.to_string()))?;
    }
    let conversation = state.store.conversation(id).await?;
    let connector = messages::connector_of(&state, &conversation)?;
    let history = connector
        .backfill()
        .ok_or_else(|| messages::unsupported(&*connector, "read a chat's history"))?;
    let read = crate::backfill::backfill(
        &state.store,
        history,
        &conversation,
        body.from,
        body.before.clone(),
        limit as usize,
    )
    .await;
    let entry = AuditEntry {
        actor: "inbox-api".into(),
        action: "conversation.backfill".into(),
        target: Some(id.to_string()),
        detail: Some(serde_json::json!({
            "request": body,
            "report": read.as_ref().ok(),
            "error": read.as_ref().err().map(ToString::to_string),
        })),
    };
    if let Err(e) = state.store.audit(entry).await {
        tracing::warn!(error = %e, conversation = %id, "cannot audit a backfill");
    }
    Ok(Json(read?))
}

/// `PUT /v1/conversations/{id}/send/{txn_id}`: the same txn id always answers with the
/// message the first request created, and sends nothing more.
pub async fn send(
    State(state): State<AppState>,
    ApiPath((id, txn_id)): ApiPath<(ConversationId, String)>,
    JsonBody(body): JsonBody<SendMessage>,
) -> Result<Json<MessageView>, Failure> {
    check_id("txn_id", &txn_id).map_err(|e| Failure::invalid(e.to_string()))?;
    check_text(&body.text)?;
    let (message_id, _duplicate) = state
        .store
        .send(OutboundMessage {
            conversation_id: id,
            txn_id,
            text: body.text,
        })
        .await?;
    Ok(Json(state.store.message(message_id).await?))
}

pub async fn search(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<Page<SearchHit>>, Failure> {
    let limit = page_size(params.limit)?;
    Ok(Json(
        state
            .store
            .search(
                &params.q,
                params.conversation_id,
                params.cursor.as_deref(),
                limit,
            )
            .await?,
    ))
}

/// `POST /v1/events`: one canonical event from a connector or the bridge ingress.
pub async fn ingest_event(
    State(state): State<AppState>,
    BodyText(bytes): BodyText,
) -> Result<impl IntoResponse, Failure> {
    let event = Event::from_slice(&bytes, state.config().limits.max_body_bytes)?;
    if event.event_type().is_agent_event() {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            moltbot_protocol::inbox::ErrorCode::InvalidRequest,
            format!(
                "{} events are produced by the gateway itself",
                event.event_type()
            ),
        ));
    }
    ingest(&state, event).await
}

/// `POST /v1/webchat/messages`: a person writing in web chat.
pub async fn webchat_message(
    State(state): State<AppState>,
    JsonBody(message): JsonBody<WebchatMessage>,
) -> Result<impl IntoResponse, Failure> {
    if !state.config().channels.webchat.enabled {
        return Err(Failure::not_found("web chat is disabled on this gateway"));
    }
    check_text(&message.text)?;
    let event = webchat::to_event(message, Timestamp::now())?;
    ingest(&state, event).await
}

/// Stores an event: 201 when new, 200 with `duplicate: true` when already stored.
async fn ingest(state: &AppState, event: Event) -> Result<(StatusCode, Json<Ingested>), Failure> {
    let channel = event.source.channel.as_str();
    let is_message = event.event_type() == EventType::MessageReceived;
    let IngestOutcome {
        event_id,
        message_id,
        conversation_id,
        duplicate,
    } = state.store.ingest(event).await?;
    if duplicate {
        state.metrics.deduplicated.inc();
    } else if is_message {
        state
            .metrics
            .ingested
            .get_or_create(&crate::metrics::ChannelLabels { channel })
            .inc();
    }
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Ingested {
            event_id,
            message_id,
            conversation_id,
            duplicate,
        }),
    ))
}
