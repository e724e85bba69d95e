//! The HTTP front: routes `/bot{token}/{method}` and `/file/bot{token}/{file_path}`, applies
//! injected failures and records every call.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;

use super::methods::{self, Method};
use super::params::Params;
use super::state::Shared;
use super::wire::ApiReply;
use super::{Call, Failure};

/// Largest request body read; the fake offers no uploads, so this is plenty.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Serves until the fake shuts down.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let shutdown = shared.shutdown.clone();
    let app = Router::new().fallback(route).with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "fake Telegram server stopped");
    }
}

async fn route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path();
    if let Some(rest) = path.strip_prefix("/file/bot") {
        let (token, file_path) = rest.split_once('/').unwrap_or((rest, ""));
        return download(&shared, token, file_path);
    }
    if let Some((token, method)) = path
        .strip_prefix("/bot")
        .and_then(|rest| rest.split_once('/'))
    {
        let (token, method) = (token.to_owned(), method.to_owned());
        return api_call(shared, token, method, request)
            .await
            .into_response();
    }
    ApiReply::not_found().into_response()
}

fn download(shared: &Shared, token: &str, file_path: &str) -> Response {
    let file = shared
        .read_bot(token, |bot| {
            let file = bot.file_at(file_path)?;
            Some((file.mime_type.clone(), file.bytes.clone()))
        })
        .flatten();
    match file {
        Some((mime_type, bytes)) => ([(header::CONTENT_TYPE, mime_type)], bytes).into_response(),
        None => ApiReply::not_found().into_response(),
    }
}

async fn api_call(
    shared: Arc<Shared>,
    token: String,
    method: String,
    request: Request,
) -> ApiReply {
    let query = request.uri().query().map(str::to_owned);
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // Failing to read the body almost always means it is over the limit; a client that
    // vanished mid-body reads no answer anyway.
    let Ok(body) = to_bytes(request.into_body(), MAX_BODY_BYTES).await else {
        return ApiReply::error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    };
    let params = Params::parse(query.as_deref(), content_type.as_deref(), &body);
    // On its own task, so that a call runs to completion and is recorded even when the client
    // stops waiting — as on the real server, where a timed-out send may still be delivered.
    tokio::spawn(answer(shared, token, method, params))
        .await
        .unwrap_or_else(|_| {
            ApiReply::error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        })
}

/// Answers one call: an injected failure if one is queued, else the method; then records it.
async fn answer(
    shared: Arc<Shared>,
    token: String,
    method_name: String,
    params: Result<Params, ApiReply>,
) -> ApiReply {
    let Some(failure) = shared.mutate_bot(&token, |bot| bot.take_failure(&method_name)) else {
        return ApiReply::unauthorized();
    };
    let method = Method::parse(&method_name);
    let received = params.as_ref().map_or(Value::Null, Params::received);
    let (reply, hold): (ApiReply, Option<Duration>) = match failure {
        None => (serve_method(&shared, &token, method, params).await, None),
        Some(Failure::Stall {
            after_apply: true,
            duration,
        }) => (
            serve_method(&shared, &token, method, params).await,
            Some(duration),
        ),
        Some(Failure::Stall {
            after_apply: false,
            duration,
        }) => (ApiReply::bad_gateway(), Some(duration)),
        Some(Failure::TooManyRequests { retry_after }) => {
            (ApiReply::too_many_requests(retry_after), None)
        }
        Some(Failure::ServerError) => (ApiReply::bad_gateway(), None),
        Some(Failure::Forbidden(description)) => {
            (ApiReply::error(StatusCode::FORBIDDEN, description), None)
        }
        Some(Failure::BadRequest(description)) => {
            (ApiReply::error(StatusCode::BAD_REQUEST, description), None)
        }
    };
    let call = Call {
        method: method.map_or(method_name, |method| method.name().to_owned()),
        params: received,
        status: reply.status.as_u16(),
    };
    tracing::debug!(method = %call.method, status = call.status, "fake Telegram call");
    shared.mutate_bot(&token, |bot| bot.calls.push(call));
    if let Some(duration) = hold {
        shared.sleep(duration).await;
    }
    reply
}

async fn serve_method(
    shared: &Arc<Shared>,
    token: &str,
    method: Option<Method>,
    params: Result<Params, ApiReply>,
) -> ApiReply {
    match (method, params) {
        (_, Err(refusal)) => refusal,
        (None, Ok(_)) => ApiReply::not_found(),
        (Some(method), Ok(params)) => methods::call(shared, token, method, &params).await,
    }
}
