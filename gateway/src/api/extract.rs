//! Extractors that read untrusted input under the configured limit and refuse it with
//! [`Failure`] bodies instead of axum's plain-text rejections.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use moltbot_protocol::inbox::ErrorCode;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::Failure;

/// The raw body, size-checked (declared length first, then while reading) and UTF-8-checked.
pub struct BodyText(pub Bytes);

impl FromRequest<AppState> for BodyText {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Failure> {
        let limit = state.config().limits.max_body_bytes;
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let json = ct.to_str().is_ok_and(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
            });
            if !json {
                return Err(Failure::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::UnsupportedMediaType,
                    "send the body as application/json",
                ));
            }
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(Failure::too_large(limit));
        }
        let body: Body = req.into_body();
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return Err(Failure::too_large(limit)),
            Err(e) => {
                return Err(Failure::invalid(format!(
                    "could not read the request body: {e}"
                )));
            }
        };
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidUtf8,
                format!(
                    "request body is not valid UTF-8 (first bad byte at offset {})",
                    e.valid_up_to()
                ),
            ));
        }
        Ok(BodyText(bytes))
    }
}

/// A JSON body; an empty body reads as `T::default()` only through [`OptionalJson`].
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Failure> {
        let BodyText(bytes) = BodyText::from_request(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body that may be absent.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Failure> {
        let BodyText(bytes) = BodyText::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        if inner.is_data() {
            Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidRequest,
                message,
            )
        } else {
            Failure::new(StatusCode::BAD_REQUEST, ErrorCode::BadJson, message)
        }
    })?;
    de.end()
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, ErrorCode::BadJson, e.to_string()))?;
    Ok(value)
}

/// Query parameters, refused with a JSON error.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| Failure::invalid(e.body_text()))
    }
}

/// Path parameters, refused with a JSON error (an unparsable id names nothing: 404).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| Failure::not_found(e.body_text()))
    }
}
