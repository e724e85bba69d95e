//! Every error answer is `{"error": CODE, "message": TEXT}` with a fitting status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use moltbot_protocol::ProtocolError;
use moltbot_protocol::inbox::{ApiError, ErrorCode};

use crate::backfill::BackfillError;
use crate::channels::HistoryError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong bearer token",
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }
}

/// The code travels with the response so the metrics middleware can count refusals.
#[derive(Clone, Copy, Debug)]
pub struct Refused(pub ErrorCode);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: self.code,
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.code == ErrorCode::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(Refused(self.code));
        response
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Failure::not_found(format!("{what} not found")),
            StoreError::Invalid(message) => Failure::invalid(message),
            StoreError::Forbidden(message) => {
                Failure::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
            }
            StoreError::Conflict(message) => {
                Failure::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
            }
            StoreError::Closed => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                "the gateway is shutting down",
            ),
            StoreError::NotDurable => Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "the disk did not confirm the write; it may not have been kept",
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error; nothing was stored",
                )
            }
        }
    }
}

impl From<BackfillError> for Failure {
    fn from(e: BackfillError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            BackfillError::Store(e) => return e.into(),
            BackfillError::Provider {
                error: HistoryError::Refused(_),
                ..
            } => (StatusCode::CONFLICT, ErrorCode::Conflict),
            BackfillError::Provider { .. } => {
                (StatusCode::BAD_GATEWAY, ErrorCode::ProviderUnavailable)
            }
            BackfillError::BadPage(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        Failure::new(status, code, message)
    }
}

impl From<ProtocolError> for Failure {
    fn from(e: ProtocolError) -> Self {
        let (status, code) = match &e {
            ProtocolError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ProtocolError::InvalidUtf8 { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidUtf8),
            ProtocolError::Malformed(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadJson),
            ProtocolError::UnknownEventType(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::UnknownEventType,
            ),
            ProtocolError::UnsupportedSchemaVersion { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::UnsupportedSchemaVersion,
            ),
            ProtocolError::InvalidField { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest)
            }
        };
        Failure::new(status, code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backfill_failure_answers_by_whose_fault_it_is() {
        let answers = [
            (
                BackfillError::Provider {
                    error: HistoryError::Refused("channel_not_found".into()),
                    stored: 0,
                },
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
            ),
            (
                BackfillError::Provider {
                    error: HistoryError::Unavailable("ratelimited".into()),
                    stored: 4,
                },
                StatusCode::BAD_GATEWAY,
                ErrorCode::ProviderUnavailable,
            ),
            (
                BackfillError::BadPage("a message of chat \"other\"".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
            ),
            (
                BackfillError::Store(StoreError::NotFound("conversation")),
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
            ),
        ];
        for (error, status, code) in answers {
            let message = error.to_string();
            let failure = Failure::from(error);
            assert_eq!((failure.status, failure.code), (status, code), "{message}");
        }
        let failure = Failure::from(BackfillError::Provider {
            error: HistoryError::Unavailable("ratelimited".into()),
            stored: 4,
        });
        assert_eq!(
            failure.message,
            "reading the history from the provider failed after 4 new messages: ratelimited"
        );
    }
}
