//! Channel connectors. Each connection (web chat, one Telegram bot, …) is one
//! [`Connector`]: it turns provider traffic into canonical events and delivers outbound
//! messages. What only some providers can do is an optional capability ([`Webhook`],
//! [`Typing`], [`Edit`], [`Delete`], [`Reactions`], [`Media`], [`Backfill`]) the connector
//! hands out when it has it. Neither web chat (the store is its history) nor Telegram (the
//! Bot API cannot read a chat's history) backfills: [`Backfill`] is there for the channels
//! whose providers can (Slack, Discord, a device behind the bridge).

pub mod telegram;
pub mod webchat;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderMap;
use bytes::Bytes;
use jiff::Timestamp;
use moltbot_protocol::event::{ConnectionState, ConnectionStateChanged, ConversationKind};
use moltbot_protocol::event::{EventBody, Source};
use moltbot_protocol::ids::MessageId;
use moltbot_protocol::{Channel, Event};
use thiserror::Error;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConnectionConfig, WEBCHAT_CONNECTION};
use crate::metrics::Metrics;
use crate::store::Store;

/// One part of an outbound message, as a connector delivers it.
#[derive(Clone, Copy, Debug)]
pub struct OutgoingPart<'a> {
    /// The stored message the part belongs to.
    pub message: MessageId,
    /// The conversation as the provider names it.
    pub chat: &'a str,
    pub kind: ConversationKind,
    pub text: &'a str,
    /// Provider id of the message this part answers.
    pub reply_to: Option<&'a str>,
}

/// A message already at the provider, as a change to it names it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The conversation as the provider names it.
    pub chat: &'a str,
    pub kind: ConversationKind,
    /// The provider's id of the message; `None` where the provider gives none (web chat).
    pub message: Option<&'a str>,
}

#[derive(Debug, Error)]
pub enum SendError {
    /// Did not reach the provider, or the provider asked to come back later.
    #[error("{reason}")]
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// May have reached the provider: reconcile before sending again.
    #[error("{reason}")]
    Ambiguous { reason: String },
    /// Will never succeed as it is (the person blocked the bot, the chat is gone).
    #[error("{reason}")]
    Permanent { reason: String },
}

/// What a connector found out about an attempt that may have reached the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// It arrived, with this provider id.
    Delivered(String),
    /// It did not arrive: sending again is safe.
    NotDelivered,
    /// The provider offers no way to tell.
    Unknown,
}

#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The connection's name, unique in the gateway.
    fn name(&self) -> &str;
    fn channel(&self) -> Channel;
    /// Longest text one provider message may carry, in the units [`Connector::char_len`] counts.
    fn max_text_len(&self) -> usize;
    /// How much of the limit one character takes (Telegram counts UTF-16 code units).
    fn char_len(&self, _c: char) -> usize {
        1
    }
    /// Whether a send can fail after the provider received it; if so, each attempt is
    /// recorded before it starts, so a crash or timeout is reconciled rather than resent.
    fn sends_may_be_ambiguous(&self) -> bool {
        true
    }
    /// Reads the provider until `shutdown`. Connectors that are only ever called (webhooks,
    /// web chat) return at once.
    async fn run(self: Arc<Self>, shutdown: CancellationToken);
    /// Delivers one part; answers the provider's message id, if it gives one.
    async fn send(&self, part: &OutgoingPart<'_>) -> Result<Option<String>, SendError>;
    /// What to remember before an attempt, to reconcile it later.
    async fn attempt_hint(&self, _part: &OutgoingPart<'_>) -> Option<String> {
        None
    }
    /// Finds out whether an attempt that may have reached the provider did; `hint` is what
    /// [`Connector::attempt_hint`] gave before it, if that was recorded (a send handed out
    /// with its first attempt recorded has none).
    async fn reconcile(&self, _part: &OutgoingPart<'_>, _hint: Option<&str>) -> Reconciled {
        Reconciled::Unknown
    }
    fn webhook(&self) -> Option<&dyn Webhook> {
        None
    }
    fn typing(&self) -> Option<&dyn Typing> {
        None
    }
    fn edit(&self) -> Option<&dyn Edit> {
        None
    }
    fn delete(&self) -> Option<&dyn Delete> {
        None
    }
    fn reactions(&self) -> Option<&dyn Reactions> {
        None
    }
    fn media(&self) -> Option<&dyn Media> {
        None
    }
    fn backfill(&self) -> Option<&dyn Backfill> {
        None
    }
}

/// Takes provider deliveries on `POST /hooks/{connection}`.
#[async_trait]
pub trait Webhook: Send + Sync {
    /// Verifies the request's origin, then stores what it carries before answering, so a
    /// delivery Telegram sees acknowledged is never lost.
    async fn receive(&self, headers: &HeaderMap, body: Bytes) -> Result<(), WebhookRejection>;
}

#[derive(Debug, Error)]
pub enum WebhookRejection {
    /// Missing or wrong secret: nothing is stored.
    #[error("the request's origin could not be verified")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    /// Could not be stored now; the provider should deliver again.
    #[error("{0}")]
    Unavailable(String),
}

/// Shows the person that a reply is being written.
#[async_trait]
pub trait Typing: Send + Sync {
    async fn typing(&self, chat: &str) -> Result<(), SendError>;
}

/// Changes the text of a message the gateway sent. Delivered through the outbox, so it must
/// be safe to repeat: an edit the provider already has succeeds.
#[async_trait]
pub trait Edit: Send + Sync {
    async fn edit(&self, target: &Target<'_>, text: &str) -> Result<(), SendError>;
}

/// Deletes a message for everyone. Safe to repeat: a message already gone succeeds.
#[async_trait]
pub trait Delete: Send + Sync {
    async fn delete(&self, target: &Target<'_>) -> Result<(), SendError>;
}

/// Adds and takes back the gateway's own reactions. Safe to repeat.
#[async_trait]
pub trait Reactions: Send + Sync {
    /// Most reactions of the gateway's own on one message, if the provider has a limit.
    fn max_per_message(&self) -> Option<usize> {
        None
    }
    async fn add(&self, target: &Target<'_>, emoji: &str) -> Result<(), SendError>;
    async fn remove(&self, target: &Target<'_>, emoji: &str) -> Result<(), SendError>;
}

/// An attachment's bytes as they arrive from the provider.
pub struct MediaStream {
    /// The size the provider announced, if it did.
    pub size: Option<u64>,
    pub body: futures_util::stream::BoxStream<'static, Result<Bytes, MediaError>>,
}

#[derive(Debug, Error)]
pub enum MediaError {
    #[error("the provider no longer has this file")]
    NotFound,
    #[error("the file is larger than {limit} bytes, the most this channel lets the gateway fetch")]
    TooLarge { limit: u64 },
    /// The provider failed or could not be reached; the text never holds a credential.
    #[error("{0}")]
    Unavailable(String),
}

/// Fetches an attachment's bytes by the provider's file id, streamed.
#[async_trait]
pub trait Media: Send + Sync {
    /// Largest file the provider lets the gateway fetch, in bytes.
    fn max_bytes(&self) -> u64;
    /// Starts the download; a file over [`Media::max_bytes`] is refused, before or during it.
    async fn fetch(&self, file_id: &str) -> Result<MediaStream, MediaError>;
}

/// Where a page of a chat's history ends.
#[derive(Clone, Copy, Debug)]
pub struct HistoryRequest<'a> {
    /// The conversation as the provider names it.
    pub chat: &'a str,
    pub kind: ConversationKind,
    /// The provider id of a message: the page holds messages sent before it. `None`: the
    /// newest messages.
    pub before: Option<&'a str>,
    /// Most messages in the page (a longer page is refused); never more than
    /// [`Backfill::max_page`].
    pub limit: usize,
}

/// One page of a chat's history.
#[derive(Debug)]
pub struct HistoryPage {
    /// Newest first, each a valid `message.received` event as the connector makes them of
    /// live traffic (the same provider ids, so the same dedupe keys). Left out, as live:
    /// messages it cannot read, and those of the connection's own account, which an
    /// event cannot tell from the person's (the gateway's own sends are in the store).
    pub messages: Vec<Event>,
    /// The provider id to ask the next, older page before (where the provider's page
    /// ended, whatever was left out of it); `None` when there is nothing older.
    pub older: Option<String>,
}

#[derive(Debug, Error)]
pub enum HistoryError {
    /// The provider failed, could not be reached, or asked to come back later.
    #[error("{0}")]
    Unavailable(String),
    /// Will never succeed as asked: the chat is gone, or the connection may not read it.
    #[error("{0}")]
    Refused(String),
}

/// Reads a chat's earlier messages from the provider, page by page going back in time,
/// for a conversation the gateway joined late or could not hear for a while.
#[async_trait]
pub trait Backfill: Send + Sync {
    /// Most messages the provider gives in one page, at least 1.
    fn max_page(&self) -> usize;
    async fn history(&self, request: &HistoryRequest<'_>) -> Result<HistoryPage, HistoryError>;
}

/// Keeps a connection's health in the store (and so on `/status` and the stream), as a
/// `connection.state_changed` event each time it changes.
pub struct Health {
    store: Store,
    source: Source,
    current: Mutex<Option<(ConnectionState, Option<String>)>>,
}

impl Health {
    pub fn new(store: Store, source: Source) -> Self {
        Self {
            store,
            source,
            current: Mutex::new(None),
        }
    }

    pub async fn report(&self, state: ConnectionState, reason: Option<String>) {
        let mut current = self.current.lock().await;
        let next = (state, reason);
        if current.as_ref() == Some(&next) {
            return;
        }
        let (state, reason) = next.clone();
        let connection = &self.source.connection;
        match state {
            ConnectionState::Connected => tracing::info!(connection, "connection healthy"),
            _ => {
                tracing::warn!(
                    connection,
                    state = state.as_str(),
                    reason = reason.as_deref().unwrap_or(""),
                    "connection unhealthy"
                )
            }
        }
        let event = Event::new(
            self.source.clone(),
            Timestamp::now(),
            EventBody::ConnectionStateChanged(ConnectionStateChanged { state, reason }),
        );
        match self.store.ingest(event).await {
            Ok(_) => *current = Some(next),
            Err(e) => {
                tracing::warn!(error = %e, connection, "cannot record the connection's health")
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum ConnectorError {
    #[error("connection {name}: {message}")]
    Setup { name: String, message: String },
}

/// Every connection of the gateway, by name.
#[derive(Clone, Default)]
pub struct Connectors {
    by_name: BTreeMap<String, Arc<dyn Connector>>,
}

impl Connectors {
    #[cfg(test)]
    pub(crate) fn of(connectors: impl IntoIterator<Item = Arc<dyn Connector>>) -> Self {
        Self {
            by_name: (connectors.into_iter())
                .map(|c| (c.name().to_string(), c))
                .collect(),
        }
    }

    /// Builds the connectors the config asks for; nothing talks to a provider yet.
    pub fn from_config(
        config: &Config,
        store: &Store,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, ConnectorError> {
        let mut by_name: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
        if config.channels.webchat.enabled {
            by_name.insert(
                WEBCHAT_CONNECTION.to_string(),
                Arc::new(webchat::Webchat::new(store.clone())),
            );
        }
        for connection in &config.connections {
            let connector: Arc<dyn Connector> = match connection {
                ConnectionConfig::Telegram(telegram) => Arc::new(
                    telegram::Telegram::new(telegram, store.clone(), metrics.clone()).map_err(
                        |message| ConnectorError::Setup {
                            name: telegram.name.clone(),
                            message,
                        },
                    )?,
                ),
            };
            by_name.insert(connection.name().to_string(), connector);
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Connector>> {
        self.by_name.values()
    }

    /// Starts every connector's provider loop.
    pub fn start(&self, shutdown: &CancellationToken) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for connector in self.by_name.values() {
            tasks.spawn(connector.clone().run(shutdown.clone()));
        }
        tasks
    }
}
