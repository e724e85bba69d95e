//! Channel connectors. Each turns provider traffic into canonical events and delivers
//! outbound messages.

pub mod webchat;
