//! Reading a conversation's history from its provider into the inbox, page by page going
//! back in time, through the connector's [`Backfill`](crate::channels::Backfill)
//! capability. The store keeps each message once and in the place its send time gives it,
//! never as unread and never as something for Pi to answer (see [`Store::backfill`]).

use moltbot_protocol::event::{Event, EventBody, Source};
use moltbot_protocol::inbox::{BackfillFrom, BackfillReport, ConversationView};
use thiserror::Error;

use crate::channels::{Connector, HistoryError, HistoryRequest};
use crate::store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum BackfillError {
    #[error("{channel} connection {connection} cannot read a chat's history")]
    NotSupported { channel: String, connection: String },
    /// The provider failed; the pages read before it are stored.
    #[error("reading the history from the provider failed after {stored} new messages: {error}")]
    Provider { error: HistoryError, stored: u32 },
    /// The connector gave a page the store refused (a message of another chat): a bug in
    /// the connector, not in the request.
    #[error("the provider's history could not be stored: {0}")]
    BadPage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads at most `limit` messages of `conversation`'s history through `connector`.
/// From [`BackfillFrom::Latest`] it stops at the first page holding a message the inbox
/// has; from [`BackfillFrom::Earlier`] it starts before the earliest message the inbox
/// has with a provider id (at the newest if none has one).
pub async fn backfill(
    store: &Store,
    connector: &dyn Connector,
    conversation: &ConversationView,
    from: BackfillFrom,
    limit: usize,
) -> Result<BackfillReport, BackfillError> {
    let history = connector
        .backfill()
        .ok_or_else(|| BackfillError::NotSupported {
            channel: connector.channel().to_string(),
            connection: connector.name().to_string(),
        })?;
    let source = Source {
        channel: conversation.channel,
        connection: conversation.connection.clone(),
    };
    let mut before = match from {
        BackfillFrom::Latest => None,
        BackfillFrom::Earlier => store.earliest_provider_message_id(conversation.id).await?,
    };
    let mut report = BackfillReport::default();
    let mut read = 0;
    while read < limit {
        let page_limit = (limit - read).min(history.max_page()).max(1);
        let request = HistoryRequest {
            chat: &conversation.provider_id,
            kind: conversation.kind,
            before: before.as_deref(),
            limit: page_limit,
        };
        let page = history
            .history(&request)
            .await
            .map_err(|error| BackfillError::Provider {
                error,
                stored: report.stored,
            })?;
        report.pages += 1;
        let mut messages = page.messages;
        // A page longer than asked for would read past the limit.
        messages.truncate(page_limit);
        read += messages.len();
        let earliest = earliest_provider_id(&messages);
        let outcome = store
            .backfill(source.clone(), conversation.provider_id.clone(), messages)
            .await
            .map_err(|e| match e {
                StoreError::Invalid(reason) => {
                    tracing::error!(connection = %conversation.connection, %reason, "a connector's history page was refused");
                    BackfillError::BadPage(reason)
                }
                other => other.into(),
            })?;
        report.stored += u32::try_from(outcome.stored).unwrap_or(u32::MAX);
        report.known += u32::try_from(outcome.known).unwrap_or(u32::MAX);
        if !page.more {
            report.complete = true;
            break;
        }
        let caught_up = from == BackfillFrom::Latest && outcome.known > 0;
        // Without a new earliest id the next page would be this one again.
        match earliest {
            Some(id) if !caught_up && before.as_deref() != Some(id.as_str()) => before = Some(id),
            _ => break,
        }
    }
    tracing::info!(
        connection = %conversation.connection,
        conversation = %conversation.id,
        stored = report.stored,
        known = report.known,
        pages = report.pages,
        complete = report.complete,
        "read a conversation's history"
    );
    Ok(report)
}

/// The provider id of the message sent first: the next page ends before it.
fn earliest_provider_id(messages: &[Event]) -> Option<String> {
    messages
        .iter()
        .filter_map(|event| match &event.body {
            EventBody::MessageReceived(message) => message
                .provider_message_id
                .as_ref()
                .map(|id| (message.sent_at, id)),
            _ => None,
        })
        .min_by_key(|(sent_at, _)| *sent_at)
        .map(|(_, id)| id.clone())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use moltbot_protocol::Channel;
    use moltbot_protocol::ids::ConversationId;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::bus::Bus;
    use crate::channels::{Backfill, HistoryPage, OutgoingPart, SendError};
    use crate::config::StoreConfig;
    use crate::metrics::Metrics;
    use crate::store::{RunPolicy, WriterHandle};

    /// A Slack-like chat whose provider keeps messages 1 to `messages` (provider id `k`,
    /// sent `k` minutes after a base time) and pages them newest first, before an id.
    struct Provider {
        messages: u32,
        max_page: usize,
        /// Each request's `before` and `limit`.
        asked: Mutex<Vec<(Option<String>, usize)>>,
        /// The request (counted from 1) that fails.
        fails: Option<usize>,
        /// Answers the newest page whatever `before` says.
        ignores_before: bool,
        has_history: bool,
    }

    impl Provider {
        fn new(messages: u32) -> Self {
            Self {
                messages,
                max_page: 4,
                asked: Mutex::default(),
                fails: None,
                ignores_before: false,
                has_history: true,
            }
        }

        fn asked(&self) -> Vec<(Option<String>, usize)> {
            self.asked.lock().unwrap().clone()
        }
    }

    fn sent(k: u32) -> Event {
        let at = jiff::Timestamp::from_second(1_764_000_000 + i64::from(k) * 60).unwrap();
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "id": ulid::Ulid::new().to_string(),
            "occurred_at": at.to_string(),
            "source": {"channel": "slack", "connection": "team"},
            "type": "message.received",
            "data": {"conversation": {"provider_id": "C1", "kind": "channel"},
                     "provider_message_id": k.to_string(),
                     "sender": {"provider_id": "U1"}, "text": format!("message {k}"),
                     "sent_at": at.to_string()},
        }))
        .unwrap()
    }

    #[async_trait]
    impl Connector for Provider {
        fn name(&self) -> &str {
            "team"
        }
        fn channel(&self) -> Channel {
            Channel::Slack
        }
        fn max_text_len(&self) -> usize {
            4_000
        }
        async fn run(self: Arc<Self>, _shutdown: CancellationToken) {}
        async fn send(&self, _part: &OutgoingPart<'_>) -> Result<Option<String>, SendError> {
            Ok(None)
        }
        fn backfill(&self) -> Option<&dyn Backfill> {
            self.has_history.then_some(self as &dyn Backfill)
        }
    }

    #[async_trait]
    impl Backfill for Provider {
        fn max_page(&self) -> usize {
            self.max_page
        }
        async fn history(&self, request: &HistoryRequest<'_>) -> Result<HistoryPage, HistoryError> {
            assert_eq!((request.chat, request.kind.as_str()), ("C1", "channel"));
            assert!(request.limit <= self.max_page);
            let mut asked = self.asked.lock().unwrap();
            asked.push((request.before.map(str::to_string), request.limit));
            if self.fails == Some(asked.len()) {
                return Err(HistoryError::Unavailable {
                    reason: "ratelimited".into(),
                    retry_after: None,
                });
            }
            let before = match request.before {
                Some(id) if !self.ignores_before => id.parse().unwrap(),
                _ => self.messages + 1,
            };
            let ks: Vec<u32> = (1..before).rev().take(request.limit).collect();
            Ok(HistoryPage {
                more: ks.last().is_some_and(|&k| k > 1),
                messages: ks.into_iter().map(sent).collect(),
            })
        }
    }

    async fn open(dir: &std::path::Path) -> (Store, WriterHandle) {
        let policy = watch::channel(RunPolicy {
            enabled: false,
            default_mode: moltbot_protocol::inbox::AgentMode::Off,
            require_mention_in_groups: true,
        });
        let metrics = Arc::new(Metrics::new());
        Store::open(
            dir,
            &StoreConfig::default(),
            Bus::new(16),
            metrics,
            policy.1,
        )
        .await
        .unwrap()
    }

    /// The conversation of messages `live`, received now.
    async fn received_live(store: &Store, live: std::ops::RangeInclusive<u32>) -> ConversationView {
        let mut conversation: Option<ConversationId> = None;
        for k in live {
            conversation = store.ingest(sent(k)).await.unwrap().conversation_id;
        }
        store.conversation(conversation.unwrap()).await.unwrap()
    }

    /// The numbers of the conversation's messages, in the inbox's order.
    async fn numbers(store: &Store, conversation: ConversationId) -> Vec<u32> {
        let page = store.messages(conversation, None, 100).await.unwrap();
        (page.items.into_iter().rev())
            .map(|m| {
                m.text
                    .unwrap()
                    .trim_start_matches("message ")
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    fn report(stored: u32, known: u32, pages: u32, complete: bool) -> BackfillReport {
        BackfillReport {
            stored,
            known,
            pages,
            complete,
        }
    }

    /// 41 to 45 were received live and 46 to 50 missed: catching up reads back to the first
    /// page with a known message; earlier goes on from 41 down to the chat's first message.
    #[tokio::test]
    async fn catching_up_stops_at_what_the_inbox_has_and_earlier_reads_on_from_its_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, 41..=45).await;
        let provider = Provider::new(50);

        let caught_up = backfill(&store, &provider, &conversation, BackfillFrom::Latest, 100);
        assert_eq!(caught_up.await.unwrap(), report(5, 3, 2, false));
        assert_eq!(provider.asked(), [(None, 4), (Some("47".into()), 4)]);

        let earlier = backfill(&store, &provider, &conversation, BackfillFrom::Earlier, 10);
        assert_eq!(earlier.await.unwrap(), report(10, 0, 3, false));
        assert_eq!(
            provider.asked()[2..],
            [
                (Some("41".into()), 4),
                (Some("37".into()), 4),
                (Some("33".into()), 2)
            ]
        );

        let rest = backfill(
            &store,
            &provider,
            &conversation,
            BackfillFrom::Earlier,
            1_000,
        );
        assert_eq!(rest.await.unwrap(), report(30, 0, 8, true));
        // 41 to 45 were received a year after these times were sent, so the inbox lists them
        // last (ids of live messages are minted on receipt); the rest in the order sent.
        let expected: Vec<u32> = (1..=40).chain(46..=50).chain(41..=45).collect();
        assert_eq!(numbers(&store, conversation.id).await, expected);
        let after = store.conversation(conversation.id).await.unwrap();
        assert_eq!(after.unread_count, 5, "only what was received live");
        assert_eq!(
            after.last_message_preview.as_deref(),
            Some("message 45"),
            "received after 46 to 50 were sent"
        );
        writer.finish().await;
    }

    #[tokio::test]
    async fn a_provider_failure_keeps_the_pages_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, 45..=45).await;
        let provider = Provider {
            fails: Some(2),
            ..Provider::new(50)
        };
        let failed = backfill(&store, &provider, &conversation, BackfillFrom::Earlier, 100).await;
        match failed {
            Err(BackfillError::Provider { stored: 4, error }) => {
                assert_eq!(error.to_string(), "ratelimited")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(numbers(&store, conversation.id).await, [41, 42, 43, 44, 45]);
        writer.finish().await;
    }

    #[tokio::test]
    async fn a_channel_without_history_is_refused_and_asked_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, 45..=45).await;
        let provider = Provider {
            has_history: false,
            ..Provider::new(50)
        };
        let refused = backfill(&store, &provider, &conversation, BackfillFrom::Latest, 100).await;
        assert!(
            matches!(&refused, Err(BackfillError::NotSupported { .. })),
            "{refused:?}"
        );
        assert_eq!(
            refused.unwrap_err().to_string(),
            "slack connection team cannot read a chat's history"
        );
        assert!(provider.asked().is_empty());
        writer.finish().await;
    }

    /// A provider that answers the same page whatever it is asked is read twice, not up
    /// to the limit.
    #[tokio::test]
    async fn a_page_that_does_not_go_back_in_time_ends_the_backfill() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, 45..=45).await;
        let provider = Provider {
            ignores_before: true,
            ..Provider::new(50)
        };
        let read = backfill(
            &store,
            &provider,
            &conversation,
            BackfillFrom::Earlier,
            1_000,
        );
        assert_eq!(read.await.unwrap(), report(4, 4, 2, false));
        writer.finish().await;
    }
}
