//! One tenant's Moltbot gateway: channels in, one store, the inbox API out.
//!
//! Data flow: a channel request is verified and normalised to a canonical event
//! ([`moltbot_protocol::Event`]); the [`store`] writes it idempotently under its dedupe key;
//! after the commit the change is published on the [`bus`] to stream subscribers.

pub mod agent;
pub mod api;
pub mod backfill;
pub mod bus;
pub mod channels;
pub mod config;
pub mod metrics;
pub mod outbox;
pub mod server;
pub mod store;
mod tasks;
pub mod telemetry;
