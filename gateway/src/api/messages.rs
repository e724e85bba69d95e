//! One message's changes (edit, delete, reactions) and its attachments' bytes. A change
//! checks that the message's channel can make it, then writes it with its delivery in one
//! transaction (see `store::amend`); a repeat changes nothing and answers the message as it
//! is. Attachments are streamed from the provider through the channel's media capability.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use moltbot_protocol::event::check_id;
use moltbot_protocol::ids::MessageId;
use moltbot_protocol::inbox::{ConversationView, EditMessage, ErrorCode, MessageView};

use super::AppState;
use super::error::Failure;
use super::extract::{ApiPath, Json as JsonBody};
use super::inbox::check_text;
use crate::channels::{Connector, MediaError};
use crate::store::Operation;

/// Longest emoji accepted, in bytes (the longest ZWJ sequences take about 35).
const MAX_EMOJI_BYTES: usize = 64;

/// `PATCH /v1/messages/{id}`: new text for a message this gateway sent. An edit is one
/// provider message, so a text over the channel's limit is refused rather than split.
pub async fn edit(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<MessageId>,
    JsonBody(body): JsonBody<EditMessage>,
) -> Result<Json<MessageView>, Failure> {
    check_text(&body.text)?;
    let (message, connector) = target(&state, id).await?;
    if connector.edit().is_none() {
        return Err(unsupported(&*connector, "edit messages"));
    }
    let units = |text: &str| text.chars().map(|c| connector.char_len(c)).sum::<usize>();
    let max = connector.max_text_len();
    let length = units(&body.text);
    if length > max {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::TextTooLong,
            format!(
                "{} takes at most {max} characters in one message and an edit cannot be split; this text counts {length}",
                connector.channel()
            ),
        ));
    }
    if message
        .text
        .as_deref()
        .is_some_and(|text| units(text) > max)
    {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            "the message went out in several parts; it cannot be edited as one",
        ));
    }
    amend(&state, id, Operation::Edit(body.text), None).await
}

/// `DELETE /v1/messages/{id}`: deletes a message this gateway sent, for everyone.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<MessageId>,
) -> Result<Json<MessageView>, Failure> {
    let (_, connector) = target(&state, id).await?;
    if connector.delete().is_none() {
        return Err(unsupported(&*connector, "delete messages"));
    }
    amend(&state, id, Operation::Delete, None).await
}

/// `PUT /v1/messages/{id}/reactions/{emoji}`: the gateway reacts to a message.
pub async fn react(
    State(state): State<AppState>,
    ApiPath((id, emoji)): ApiPath<(MessageId, String)>,
) -> Result<Json<MessageView>, Failure> {
    change_reaction(state, id, emoji, Operation::React).await
}

/// `DELETE /v1/messages/{id}/reactions/{emoji}`: the gateway takes its reaction back.
pub async fn unreact(
    State(state): State<AppState>,
    ApiPath((id, emoji)): ApiPath<(MessageId, String)>,
) -> Result<Json<MessageView>, Failure> {
    change_reaction(state, id, emoji, Operation::Unreact).await
}

async fn change_reaction(
    state: AppState,
    id: MessageId,
    emoji: String,
    operation: fn(String) -> Operation,
) -> Result<Json<MessageView>, Failure> {
    check_id("emoji", &emoji).map_err(|e| Failure::invalid(e.to_string()))?;
    if emoji.len() > MAX_EMOJI_BYTES || emoji.chars().any(char::is_whitespace) {
        return Err(Failure::invalid(format!(
            "an emoji is at most {MAX_EMOJI_BYTES} bytes without spaces"
        )));
    }
    let (_, connector) = target(&state, id).await?;
    let Some(reactions) = connector.reactions() else {
        return Err(unsupported(&*connector, "react to messages"));
    };
    let max = reactions.max_per_message();
    amend(&state, id, operation(emoji), max).await
}

/// `GET /v1/messages/{id}/attachments/{index}`: the attachment's bytes, streamed from the
/// provider, with the content type its metadata names.
pub async fn attachment(
    State(state): State<AppState>,
    ApiPath((id, index)): ApiPath<(MessageId, usize)>,
) -> Result<Response, Failure> {
    let (message, connector) = target(&state, id).await?;
    let attachment = message
        .attachments
        .get(index)
        .ok_or_else(|| Failure::not_found(format!("the message has no attachment {index}")))?;
    let Some(media) = connector.media() else {
        return Err(unsupported(&*connector, "fetch attachments"));
    };
    let file_id = attachment
        .provider_file_id
        .as_deref()
        .ok_or_else(|| Failure::not_found("the provider named no file for this attachment"))?;
    let limit = media.max_bytes();
    if attachment.size_bytes.is_some_and(|size| size > limit) {
        return Err(media_failure(MediaError::TooLarge { limit }));
    }
    let stream = media.fetch(file_id).await.map_err(media_failure)?;
    let content_type = attachment
        .mime_type
        .as_deref()
        .and_then(|mime| HeaderValue::from_str(mime).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let connection = connector.name().to_string();
    // Headers are gone once the body streams: a failure now can only cut the answer short.
    let body = stream.body.map(move |chunk| {
        chunk.inspect_err(|e| {
            tracing::warn!(connection, error = %e, "an attachment download broke off");
        })
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    // The bytes are the sender's: never rendered as a page of this origin.
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(size) = stream.size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    Ok(response)
}

fn media_failure(error: MediaError) -> Failure {
    let (status, code) = match &error {
        MediaError::NotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
        MediaError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::MediaTooLarge),
        MediaError::Unavailable(_) => (StatusCode::BAD_GATEWAY, ErrorCode::ProviderUnavailable),
    };
    Failure::new(status, code, error.to_string())
}

async fn amend(
    state: &AppState,
    id: MessageId,
    operation: Operation,
    max_own_reactions: Option<usize>,
) -> Result<Json<MessageView>, Failure> {
    state.store.amend(id, operation, max_own_reactions).await?;
    Ok(Json(state.store.message(id).await?))
}

/// The message and the connector of its conversation.
pub(super) async fn target(
    state: &AppState,
    id: MessageId,
) -> Result<(MessageView, Arc<dyn Connector>), Failure> {
    let message = state.store.message(id).await?;
    let conversation = state.store.conversation(message.conversation_id).await?;
    Ok((message, connector_of(state, &conversation)?))
}

/// The connector of a conversation's connection.
pub(super) fn connector_of(
    state: &AppState,
    conversation: &ConversationView,
) -> Result<Arc<dyn Connector>, Failure> {
    state
        .connectors
        .get(&conversation.connection)
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::NotSupported,
                format!(
                    "connection {} is no longer configured on this gateway",
                    conversation.connection
                ),
            )
        })
}

pub(super) fn unsupported(connector: &dyn Connector, what: &str) -> Failure {
    Failure::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::NotSupported,
        format!(
            "{} connection {} cannot {what}",
            connector.channel(),
            connector.name()
        ),
    )
}
