//! Reading a conversation's history from its provider into the inbox, page by page going
//! back in time, through the connector's [`Backfill`] capability. The store keeps each
//! message once and in the place its send time gives it, never as unread and never as
//! something for Pi to answer (see [`Store::backfill`]).

use moltbot_protocol::event::Source;
use moltbot_protocol::inbox::{BackfillFrom, BackfillReport, ConversationView};
use thiserror::Error;

use crate::channels::{Backfill, HistoryError, HistoryRequest};
use crate::store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum BackfillError {
    /// The provider failed; the pages read before it are stored.
    #[error("reading the history from the provider failed after {stored} new messages: {error}")]
    Provider { error: HistoryError, stored: u32 },
    /// The connector gave a page the store refused (an invalid message, or one of another
    /// chat): a bug in the connector, not in the request.
    #[error("the provider's history could not be stored: {0}")]
    BadPage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads at most `limit` messages of `conversation`'s history through `history`, starting
/// before the message with provider id `before` if given, else as `from` says: at the
/// newest, or before the earliest the inbox has (at the newest if none has a provider id).
/// From [`BackfillFrom::Latest`] it stops at a message the inbox has that comes below one
/// it did not have (the bottom of a gap); from [`BackfillFrom::Earlier`] it reads on.
pub async fn backfill(
    store: &Store,
    history: &dyn Backfill,
    conversation: &ConversationView,
    from: BackfillFrom,
    before: Option<String>,
    limit: usize,
) -> Result<BackfillReport, BackfillError> {
    let source = Source {
        channel: conversation.channel,
        connection: conversation.connection.clone(),
    };
    let mut before = match (before, from) {
        (Some(id), _) => Some(id),
        (None, BackfillFrom::Latest) => None,
        (None, BackfillFrom::Earlier) => {
            store.earliest_provider_message_id(conversation.id).await?
        }
    };
    let mut report = BackfillReport::default();
    let mut read = 0;
    let mut found_new = false;
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
        if page.messages.len() > page_limit {
            return Err(bad_page(
                conversation,
                format!(
                    "a page of {} messages where at most {page_limit} were asked for",
                    page.messages.len()
                ),
            ));
        }
        // An empty page (all left out) counts as one message, so that the pages end too.
        read += page.messages.len().max(1);
        let outcome = store
            .backfill(
                source.clone(),
                conversation.provider_id.clone(),
                page.messages,
            )
            .await
            .map_err(|e| match e {
                StoreError::Invalid(reason) => bad_page(conversation, reason),
                other => other.into(),
            })?;
        report.stored += u32::try_from(outcome.stored()).unwrap_or(u32::MAX);
        report.known += u32::try_from(outcome.known()).unwrap_or(u32::MAX);
        report.next_before.clone_from(&page.older);
        let Some(older) = page.older else {
            report.complete = true;
            break;
        };
        // Newest first: a known message after a new one is the bottom of a gap.
        let mut caught_up = false;
        for &known in &outcome.known {
            caught_up |= known && found_new;
            found_new |= !known;
        }
        // A provider that does not go back would answer this page again.
        if (caught_up && from == BackfillFrom::Latest) || before.as_deref() == Some(&older) {
            break;
        }
        before = Some(older);
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

fn bad_page(conversation: &ConversationView, reason: String) -> BackfillError {
    tracing::error!(connection = %conversation.connection, %reason, "a connector's history page was refused");
    BackfillError::BadPage(reason)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use moltbot_protocol::event::Event;
    use moltbot_protocol::ids::ConversationId;
    use tokio::sync::watch;

    use super::*;
    use crate::bus::Bus;
    use crate::channels::HistoryPage;
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
        /// Answers this many messages more than asked for.
        extra: usize,
        /// Messages of the connection's own account, left out of the pages.
        own: std::ops::RangeInclusive<u32>,
    }

    impl Provider {
        fn new(messages: u32) -> Self {
            Self {
                messages,
                max_page: 4,
                asked: Mutex::default(),
                fails: None,
                ignores_before: false,
                extra: 0,
                own: 0..=0,
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

    /// A Slack connection named `team` whose history is the provider's.
    #[async_trait]
    impl crate::channels::Connector for Provider {
        fn name(&self) -> &str {
            "team"
        }
        fn channel(&self) -> moltbot_protocol::Channel {
            moltbot_protocol::Channel::Slack
        }
        fn max_text_len(&self) -> usize {
            4_000
        }
        async fn run(self: Arc<Self>, _shutdown: tokio_util::sync::CancellationToken) {}
        async fn send(
            &self,
            _part: &crate::channels::OutgoingPart<'_>,
        ) -> Result<Option<String>, crate::channels::SendError> {
            Ok(None)
        }
        fn backfill(&self) -> Option<&dyn Backfill> {
            Some(self)
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
                return Err(HistoryError::Unavailable("ratelimited".into()));
            }
            let before = match request.before {
                Some(id) if !self.ignores_before => id.parse().unwrap(),
                _ => self.messages + 1,
            };
            let ks: Vec<u32> = (1..before).rev().take(request.limit + self.extra).collect();
            Ok(HistoryPage {
                older: ks.last().filter(|&&k| k > 1).map(u32::to_string),
                messages: (ks.into_iter())
                    .filter(|k| !self.own.contains(k))
                    .map(sent)
                    .collect(),
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
    async fn received_live(store: &Store, live: impl IntoIterator<Item = u32>) -> ConversationView {
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

    /// What a backfill that is to read on before message `next` reports.
    fn report(stored: u32, known: u32, pages: u32, next: u32) -> BackfillReport {
        BackfillReport {
            stored,
            known,
            pages,
            complete: false,
            next_before: Some(next.to_string()),
        }
    }

    fn complete(stored: u32, known: u32, pages: u32) -> BackfillReport {
        BackfillReport {
            stored,
            known,
            pages,
            complete: true,
            next_before: None,
        }
    }

    /// 41 to 45 and 51 were received live, 46 to 50 missed: catching up reads back to the
    /// first page that reaches a known message, past the known 51 on top; earlier goes on
    /// from 41 down to the chat's first message.
    #[tokio::test]
    async fn catching_up_fills_the_gap_below_the_newest_and_earlier_reads_on_from_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, (41..=45).chain([51])).await;
        let provider = Provider::new(51);
        let read = |from, limit| backfill(&store, &provider, &conversation, from, None, limit);

        assert_eq!(
            read(BackfillFrom::Latest, 100).await.unwrap(),
            report(5, 3, 2, 44)
        );
        assert_eq!(provider.asked(), [(None, 4), (Some("48".into()), 4)]);

        assert_eq!(
            read(BackfillFrom::Earlier, 10).await.unwrap(),
            report(10, 0, 3, 31)
        );
        assert_eq!(
            provider.asked()[2..],
            [
                (Some("41".into()), 4),
                (Some("37".into()), 4),
                (Some("33".into()), 2)
            ]
        );

        assert_eq!(
            read(BackfillFrom::Earlier, 1_000).await.unwrap(),
            complete(30, 0, 8)
        );
        // The live ones were received a year after these times, so the inbox lists them
        // last (a live message's id is minted on receipt); the rest in the order sent.
        let expected: Vec<u32> = (1..=40).chain(46..=50).chain(41..=45).chain([51]).collect();
        assert_eq!(numbers(&store, conversation.id).await, expected);
        let after = store.conversation(conversation.id).await.unwrap();
        assert_eq!(after.unread_count, 6, "only what was received live");
        assert_eq!(after.last_message_preview.as_deref(), Some("message 51"));
        writer.finish().await;
    }

    /// Pages of messages received since the gap are read through to reach it.
    #[tokio::test]
    async fn catching_up_reaches_a_gap_under_pages_of_known_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, (41..=45).chain(51..=60)).await;
        let provider = Provider::new(60);
        let read = backfill(
            &store,
            &provider,
            &conversation,
            BackfillFrom::Latest,
            None,
            100,
        );
        assert_eq!(read.await.unwrap(), report(5, 11, 4, 45));
        writer.finish().await;
    }

    /// A catch-up the limit cut short goes on from the `next_before` it reported.
    #[tokio::test]
    async fn a_catch_up_cut_short_reads_on_from_where_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, [45]).await;
        let provider = Provider::new(50);
        let cut = backfill(
            &store,
            &provider,
            &conversation,
            BackfillFrom::Latest,
            None,
            3,
        );
        let cut = cut.await.unwrap();
        assert_eq!(cut, report(3, 0, 1, 48));
        // 44 is older than what was received live: read with the page that reached 45.
        let rest = backfill(
            &store,
            &provider,
            &conversation,
            BackfillFrom::Latest,
            cut.next_before,
            100,
        );
        assert_eq!(rest.await.unwrap(), report(3, 1, 1, 44));
        assert_eq!(
            numbers(&store, conversation.id).await,
            [44, 46, 47, 48, 49, 50, 45]
        );
        writer.finish().await;
    }

    #[tokio::test]
    async fn a_provider_failure_keeps_the_pages_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, [45]).await;
        let provider = Provider {
            fails: Some(2),
            ..Provider::new(50)
        };
        let failed = backfill(
            &store,
            &provider,
            &conversation,
            BackfillFrom::Earlier,
            None,
            100,
        );
        match failed.await {
            Err(BackfillError::Provider { stored: 4, error }) => {
                assert_eq!(error.to_string(), "ratelimited")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(numbers(&store, conversation.id).await, [41, 42, 43, 44, 45]);
        writer.finish().await;
    }

    /// A provider that answers the same page whatever it is asked is read twice, not up
    /// to the limit; a page longer than asked for is refused, and nothing of it stored.
    #[tokio::test]
    async fn a_page_that_does_not_go_back_in_time_ends_the_backfill_and_a_long_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, [45]).await;
        let stuck = Provider {
            ignores_before: true,
            ..Provider::new(50)
        };
        let read = backfill(
            &store,
            &stuck,
            &conversation,
            BackfillFrom::Earlier,
            None,
            1_000,
        );
        assert_eq!(read.await.unwrap(), report(4, 4, 2, 47));

        let long = Provider {
            extra: 1,
            ..Provider::new(50)
        };
        let refused = backfill(
            &store,
            &long,
            &conversation,
            BackfillFrom::Earlier,
            None,
            100,
        );
        match refused.await {
            Err(BackfillError::BadPage(reason)) => assert_eq!(
                reason,
                "a page of 5 messages where at most 4 were asked for"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(numbers(&store, conversation.id).await.len(), 5);
        writer.finish().await;
    }

    /// Pages of the connection's own messages only come back empty, and reading goes on
    /// past them to the chat's first message.
    #[tokio::test]
    async fn pages_left_empty_by_the_connector_are_read_past() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, 48..=50).await;
        let provider = Provider {
            own: 40..=47,
            ..Provider::new(50)
        };
        let read = backfill(
            &store,
            &provider,
            &conversation,
            BackfillFrom::Earlier,
            None,
            100,
        );
        assert_eq!(read.await.unwrap(), complete(39, 0, 12));
        assert_eq!(
            provider.asked()[..3],
            [
                (Some("48".into()), 4),
                (Some("44".into()), 4),
                (Some("40".into()), 4)
            ]
        );
        writer.finish().await;
    }

    /// Through the API: a backfill answers its report, a page the connector got wrong
    /// answers 500; each is audited.
    #[tokio::test]
    async fn the_api_answers_the_report_and_audits_every_backfill() {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = received_live(&store, [45]).await;
        let yaml =
            "tenant: {id: t}\ndata_dir: unused\nauth: {inbox_token: token-token-token-token}\n";
        let env = std::collections::BTreeMap::new();
        let config = crate::config::Config::from_yaml(yaml, "t.yaml".as_ref(), &env).unwrap();
        let call = async |provider: Provider, body: &str| {
            let state = crate::api::AppState {
                store: store.clone(),
                bus: Bus::new(16),
                connectors: crate::channels::Connectors::of([Arc::new(provider) as _]),
                metrics: Arc::new(Metrics::new()),
                config: watch::channel(Arc::new(config.clone())).1,
                shutdown: tokio_util::sync::CancellationToken::new(),
                streams: Arc::new(tokio::sync::Semaphore::new(1)),
            };
            let request = Request::post(format!("/v1/conversations/{}/backfill", conversation.id))
                .header("authorization", "Bearer token-token-token-token")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = crate::api::router(state).oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        };

        let (status, report) = call(Provider::new(50), r#"{"from": "earlier", "limit": 6}"#).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(
            report,
            serde_json::json!({"stored": 6, "known": 0, "pages": 2, "complete": false, "next_before": "39"})
        );
        let long = Provider {
            extra: 1,
            ..Provider::new(50)
        };
        let (status, error) = call(long, "{}").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{error}");
        assert_eq!(error["error"], "internal");

        writer.finish().await;
        let db = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
        let audited: Vec<String> = db
            .prepare(
                "SELECT detail FROM audit_log WHERE action = 'conversation.backfill' ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(audited.len(), 2);
        assert!(audited[0].contains(r#""stored":6"#), "{}", audited[0]);
        assert!(
            audited[1].contains("a page of 5 messages"),
            "{}",
            audited[1]
        );
    }
}
