use thiserror::Error;

/// Why bytes from outside could not become a canonical event.
#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("payload is not valid UTF-8 (first bad byte at offset {offset})")]
    InvalidUtf8 { offset: usize },
    #[error("malformed JSON: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    #[error("unsupported schema version {found}; this build speaks {supported}")]
    UnsupportedSchemaVersion { found: u16, supported: u16 },
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}
