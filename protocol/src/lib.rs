//! The contract between Moltbot Cloud processes.
//!
//! - [`event`]: the canonical events every connector (cloud or bridge) emits, with their
//!   schema version, ULID ids and dedupe keys.
//! - [`inbox`]: the gateway's inbox API and WebSocket frames, used by the web app, the CLI
//!   and the control plane.
//! - [`config`]: the gateway's config file, read by the gateway and rendered by the
//!   operator and the local runtime.
//!
//! Nothing here does I/O: these are types, their wire forms and the rules attached to them.

pub mod config;
pub mod dedupe;
pub mod error;
pub mod event;
pub mod ids;
pub mod inbox;

pub use dedupe::DedupeKey;
pub use error::ProtocolError;
pub use event::{Channel, Event, EventBody, EventType, SCHEMA_VERSION, Source};
pub use ids::{ConversationId, EventId, IdentityId, MessageId};
