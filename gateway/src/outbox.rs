//! Delivers queued outbound messages through their connectors.
//!
//! Rows are written in the same transaction as their message, so after a crash whatever was
//! queued goes out at start. Messages of one conversation go out in order, one at a time;
//! different conversations in parallel. A send that fails is retried with exponential
//! backoff and jitter (or after the provider's `retry_after`). Before each attempt that could
//! reach the provider and then fail (a timeout), the attempt is recorded; such an attempt —
//! or one a crash interrupted — is reconciled with the provider before anything is sent
//! again, where the provider makes that possible. A send queued with nothing ahead of it
//! has its first attempt recorded with it and comes from the store whole, once durable, so
//! the common reply costs neither a read nor a write before it goes out.
//!
//! Changes to messages already sent (edits, deletions, reactions) travel the same queue, in
//! order behind the send they change, through the connector's capability. They are safe to
//! repeat, so they are retried without reconciling; one refused for good is undone in the
//! store.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use moltbot_protocol::ids::ConversationId;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channels::{Connector, Connectors, OutgoingPart, Reconciled, SendError, Target};
use crate::metrics::Metrics;
use crate::store::{Operation, OutboxItem, OutboxWrite, Store};
use crate::tasks::{ConversationTasks, Lookout};

/// Conversations delivering at once.
const MAX_CONVERSATIONS_IN_FLIGHT: usize = 256;
/// Time between the sender's safety passes.
const POLL: Duration = Duration::from_secs(5);
/// After this many failed attempts a message is marked failed.
const MAX_ATTEMPTS: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How long delivery in flight may finish after shutdown; what is cut off is reconciled at
/// the next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(
    store: Store,
    connectors: Connectors,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let retries = Arc::new(Retries::default());
    // Rows a previous run left waiting for a retry.
    retries.learn_from(&store).await;
    let mut sender = Sender {
        store,
        connectors,
        metrics,
        retries,
        tasks: ConversationTasks::default(),
        lookout: Lookout::default(),
        handed: VecDeque::new(),
    };
    // A read now and then whatever happens: it finds what nothing announced (a row whose
    // delivery step the store refused, the rows of a connection added back by a reload).
    let mut safety_pass = Instant::now() + POLL;
    loop {
        for freed in sender.tasks.reap() {
            sender.freed(freed);
        }
        if sender.retries.take_due() {
            sender.lookout.timer();
        }
        sender.start_handed();
        sender.read().await;
        let wake = sender.retries.next().map_or(safety_pass, |at| {
            safety_pass.min(Instant::now() + until(at))
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            handed = sender.store.handed_sends() => sender.handed.extend(handed),
            news = sender.store.outbox_ready() => sender.news(news),
            freed = sender.tasks.next_finished() => {
                if let Some(freed) = freed {
                    sender.freed(freed);
                }
            }
            // A retry's time is seen by `take_due` above.
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= safety_pass {
                    sender.lookout.timer();
                    sender.retries.learn_from(&sender.store).await;
                    safety_pass = Instant::now() + POLL;
                }
            }
        }
    }
    sender.withdraw_unstarted().await;
    if tokio::time::timeout(SHUTDOWN_GRACE, sender.tasks.join_all())
        .await
        .is_err()
    {
        tracing::warn!(
            "deliveries still running at shutdown were cut off; they are reconciled at the next start"
        );
    }
}

/// The sender's loop state: a task per conversation delivering, and the handed sends
/// waiting for their conversation or for room.
struct Sender {
    store: Store,
    connectors: Connectors,
    metrics: Arc<Metrics>,
    retries: Arc<Retries>,
    tasks: ConversationTasks,
    lookout: Lookout,
    handed: VecDeque<OutboxItem>,
}

impl Sender {
    fn room(&self) -> usize {
        MAX_CONVERSATIONS_IN_FLIGHT - self.tasks.len()
    }

    fn waits_handed(&self, conversation: ConversationId) -> bool {
        self.handed
            .iter()
            .any(|item| item.conversation_id == conversation)
    }

    /// News of rows queued. A conversation with a handed send not yet started has its news
    /// kept for when that send is done, as for one with a task: the rows are behind it.
    fn news(&mut self, mut news: HashSet<ConversationId>) {
        // The syncer hands a group's sends out before it posts its news.
        self.handed.extend(self.store.handed_sends_ready());
        for item in &self.handed {
            if news.remove(&item.conversation_id) {
                self.lookout.hold(item.conversation_id);
            }
        }
        self.lookout.news(news, self.tasks.busy());
    }

    /// A conversation's task finished. The news kept for it is due, unless a send handed
    /// for it waits to go first.
    fn freed(&mut self, conversation: ConversationId) {
        if !self.waits_handed(conversation) {
            self.lookout.finished(Some(conversation));
        }
    }

    /// Starts the handed sends whose conversation is free, while there is room.
    fn start_handed(&mut self) {
        let mut blocked = VecDeque::new();
        while let Some(item) = self.handed.pop_front() {
            if self.room() > 0 && !self.tasks.busy().contains(&item.conversation_id) {
                self.start(item);
            } else {
                blocked.push_back(item);
            }
        }
        self.handed = blocked;
    }

    /// Reads the heads of the queues when the lookout says so, and starts them.
    async fn read(&mut self) {
        let room = self.room();
        if room == 0 || !self.lookout.due() {
            return;
        }
        let items = match self.store.due_outbox(room, self.tasks.busy()).await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                return;
            }
        };
        self.lookout.read(items.len(), room);
        for item in items {
            // The rows behind it are read once its task is done.
            if item.more {
                self.lookout.hold(item.conversation_id);
            }
            // A handed send comes whole with its news (or came, and waits for room).
            let handed =
                self.store.is_handed(item.id) || self.handed.iter().any(|h| h.id == item.id);
            if !handed {
                self.start(item);
            }
        }
    }

    /// At shutdown: the handed sends never started go back to the queue. Those the sender
    /// has not even taken yet (not durable yet) are reconciled at the next start.
    async fn withdraw_unstarted(&mut self) {
        let unstarted = self.handed.drain(..).chain(self.store.handed_sends_ready());
        for item in unstarted.collect::<Vec<_>>() {
            let withdrawn = self
                .store
                .outbox_step(OutboxWrite::Withdraw { row: item.id });
            if let Err(e) = withdrawn.await {
                tracing::warn!(message_id = %item.message_id, error = %e, "cannot put an unsent message back in the queue; it is reconciled at the next start");
            }
        }
    }

    fn start(&mut self, item: OutboxItem) {
        let Some(connector) = self.connectors.get(&item.connection).cloned() else {
            // The connection was removed from the config; its messages wait for it.
            tracing::debug!(connection = %item.connection, "no such connection; message stays queued");
            return;
        };
        let delivery = Delivery {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            connector,
            retries: self.retries.clone(),
        };
        self.tasks.spawn(item.conversation_id, async move {
            delivery.deliver(item).await;
        });
    }
}

/// When the rows waiting for a retry come due. Deliveries note the retries they schedule, so
/// the sender need not read the outbox after every delivery to learn them; the store is asked
/// at start and on each safety pass for the next retry still to come.
#[derive(Default)]
struct Retries {
    at: Mutex<BTreeSet<Timestamp>>,
}

impl Retries {
    fn schedule(&self, at: Timestamp) {
        self.at.lock().expect("retries lock").insert(at);
    }

    /// Whether a retry came due, which the sender then reads; forgets those that did.
    fn take_due(&self) -> bool {
        // In whole milliseconds, as the sleep until one is measured.
        let now = Timestamp::now().as_millisecond();
        let mut at = self.at.lock().expect("retries lock");
        let before = at.len();
        at.retain(|t| t.as_millisecond() > now);
        at.len() < before
    }

    fn next(&self) -> Option<Timestamp> {
        self.at.lock().expect("retries lock").first().copied()
    }

    async fn learn_from(&self, store: &Store) {
        match store.next_outbox_retry(Timestamp::now()).await {
            Ok(Some(at)) => self.schedule(at),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read when the next retry is due"),
        }
    }
}

fn until(at: Timestamp) -> Duration {
    let wait = at.as_millisecond() - Timestamp::now().as_millisecond();
    Duration::from_millis(u64::try_from(wait).unwrap_or(0))
}

struct Delivery {
    store: Store,
    metrics: Arc<Metrics>,
    connector: Arc<dyn Connector>,
    retries: Arc<Retries>,
}

impl Delivery {
    async fn deliver(&self, item: OutboxItem) {
        if item.operation == Operation::Send {
            self.send(item).await
        } else {
            self.change(item).await
        }
    }

    /// Delivers a change to a message already sent.
    async fn change(&self, item: OutboxItem) {
        let attempts = item.attempts + 1;
        match self.apply_change(&item).await {
            Ok(()) => {
                self.metrics.delivery(self.connector.name(), "changed");
                self.step(OutboxWrite::Changed { row: item.id }).await;
            }
            Err(SendError::Permanent { reason }) => self.fail(&item, reason).await,
            // A change is safe to repeat: one that may have arrived is simply tried again.
            Err(SendError::Ambiguous { reason }) => {
                let error = SendError::Retry {
                    reason,
                    retry_after: None,
                };
                self.retry_or_fail(&item, attempts, error).await
            }
            Err(error) => self.retry_or_fail(&item, attempts, error).await,
        }
    }

    async fn apply_change(&self, item: &OutboxItem) -> Result<(), SendError> {
        let connector = &*self.connector;
        let lost = |what: &str| SendError::Permanent {
            reason: format!("connection {} cannot {what}", connector.name()),
        };
        let target = |message| Target {
            chat: &item.chat,
            kind: item.kind,
            message,
        };
        // The message's first part stands for it; a deletion takes every part.
        let first = target(item.targets.first().map(String::as_str));
        match &item.operation {
            Operation::Send => Err(lost("treat a send as a change")),
            Operation::Edit(text) => {
                let edit = connector.edit().ok_or_else(|| lost("edit messages"))?;
                edit.edit(&first, text).await
            }
            Operation::Delete => {
                let delete = connector.delete().ok_or_else(|| lost("delete messages"))?;
                if item.targets.is_empty() {
                    return delete.delete(&first).await;
                }
                for id in &item.targets {
                    delete.delete(&target(Some(id.as_str()))).await?;
                }
                Ok(())
            }
            Operation::React(emoji) => {
                let reactions = connector.reactions().ok_or_else(|| lost("react"))?;
                reactions.add(&first, emoji).await
            }
            Operation::Unreact(emoji) => {
                let reactions = connector.reactions().ok_or_else(|| lost("react"))?;
                reactions.remove(&first, emoji).await
            }
        }
    }

    /// Delivers the parts of one message not yet delivered, stopping at the first failure.
    async fn send(&self, item: OutboxItem) {
        let connector = &*self.connector;
        let parts = split_text(&item.text, connector.max_text_len(), |c| {
            connector.char_len(c)
        });
        // Only a connector whose sends can be ambiguous leaves rows in doubt; any other's
        // handed row is written `sending` all the same.
        let mut in_doubt = item.in_doubt && connector.sends_may_be_ambiguous();
        let mut hint = item.attempt_hint.clone();
        let mut attempts = item.attempts;
        let mut begun = item.begun;
        let mut index = item.parts_sent as usize;
        while let Some(text) = parts.get(index) {
            let last = index + 1 == parts.len();
            // A part of nothing but whitespace (a model's run of blank lines longer than a
            // part) shows nothing, and a channel refuses it as empty, which would fail the
            // parts after it: it counts as sent without going out. Not the first part, which
            // carries the quote, the message's provider id and a handed send's attempt (and
            // is blank only for a text that starts with half a part of whitespace).
            if index > 0 && text.trim().is_empty() {
                if !self.part_sent(&item, index, None, last).await {
                    return;
                }
                index += 1;
                in_doubt = false;
                continue;
            }
            let part = OutgoingPart {
                message: item.message_id,
                chat: &item.chat,
                kind: item.kind,
                text,
                // Only the first part quotes the message it answers.
                reply_to: (index == 0).then_some(item.reply_to.as_deref()).flatten(),
            };
            if in_doubt {
                match connector.reconcile(&part, hint.as_deref()).await {
                    Reconciled::Delivered(id) => {
                        self.metrics.delivery(connector.name(), "reconciled");
                        tracing::info!(message_id = %item.message_id, part = index, "an interrupted send had arrived; not sending it again");
                        if !self.part_sent(&item, index, Some(id), last).await {
                            return;
                        }
                        index += 1;
                        in_doubt = false;
                        continue;
                    }
                    Reconciled::NotDelivered => {
                        self.metrics.delivery(connector.name(), "not_delivered");
                    }
                    Reconciled::Unknown => {
                        // The provider cannot tell; a possible duplicate beats a lost reply.
                        self.metrics.delivery(connector.name(), "resent");
                        tracing::warn!(message_id = %item.message_id, part = index, "cannot tell whether an interrupted send arrived; sending it again");
                    }
                }
            }
            // A handed send's first attempt was recorded with it.
            if !std::mem::take(&mut begun) {
                attempts += 1;
                if connector.sends_may_be_ambiguous() {
                    hint = connector.attempt_hint(&part).await;
                    let recorded = self
                        .step(OutboxWrite::BeginAttempt {
                            row: item.id,
                            hint: hint.clone(),
                        })
                        .await;
                    if !recorded {
                        return;
                    }
                }
            }
            match connector.send(&part).await {
                Ok(provider_message_id) => {
                    self.metrics.delivery(connector.name(), "sent");
                    if !self
                        .part_sent(&item, index, provider_message_id, last)
                        .await
                    {
                        return;
                    }
                    index += 1;
                    in_doubt = false;
                }
                Err(SendError::Permanent { reason }) => {
                    self.fail(&item, reason).await;
                    return;
                }
                Err(error) => {
                    self.retry_or_fail(&item, attempts, error).await;
                    return;
                }
            }
        }
    }

    /// Records that the part at `index` is done; false when the store could not.
    async fn part_sent(
        &self,
        item: &OutboxItem,
        index: usize,
        provider_message_id: Option<String>,
        last: bool,
    ) -> bool {
        self.step(OutboxWrite::PartSent {
            row: item.id,
            message_id: item.message_id,
            part: index as u32,
            provider_message_id,
            last,
        })
        .await
    }

    /// Schedules the next attempt after a failed one, or gives up after too many.
    async fn retry_or_fail(&self, item: &OutboxItem, attempts: u32, error: SendError) {
        let (outcome, in_doubt, retry_after) = match &error {
            SendError::Retry { retry_after, .. } => ("retry", false, *retry_after),
            _ => ("ambiguous", true, None),
        };
        self.metrics.delivery(self.connector.name(), outcome);
        if attempts >= MAX_ATTEMPTS {
            self.fail(item, format!("gave up after {attempts} attempts: {error}"))
                .await;
            return;
        }
        let wait = retry_after.unwrap_or_else(|| backoff(attempts));
        tracing::info!(message_id = %item.message_id, operation = item.operation.kind(), attempts, wait_ms = wait.as_millis() as u64, error = %error, "delivery will be retried");
        let at = Timestamp::now() + wait;
        if self
            .step(OutboxWrite::RetryLater {
                row: item.id,
                at,
                error: error.to_string(),
                in_doubt,
                attempts,
            })
            .await
        {
            self.retries.schedule(at);
        }
    }

    async fn fail(&self, item: &OutboxItem, error: String) {
        self.metrics.delivery(self.connector.name(), "failed");
        tracing::warn!(message_id = %item.message_id, operation = item.operation.kind(), error = %error, "delivery failed for good");
        self.step(OutboxWrite::Failed {
            row: item.id,
            message_id: item.message_id,
            error,
        })
        .await;
    }

    /// Records one step; false if it could not be (the message is picked up again later).
    async fn step(&self, step: OutboxWrite) -> bool {
        match self.store.outbox_step(step).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a delivery step");
                false
            }
        }
    }
}

/// Exponential backoff with jitter: half of it fixed, half random, so a burst of failures
/// does not come back as a burst.
fn backoff(attempts: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1 << attempts.saturating_sub(1).min(16));
    let full = exp.min(MAX_BACKOFF);
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Splits `text` into parts of at most `max` units (`char_len` per character), breaking at
/// a paragraph, else a line, else a space in the second half of a part, else anywhere. The
/// separator at a break is dropped; nothing else is lost.
pub fn split_text(text: &str, max: usize, char_len: impl Fn(char) -> usize) -> Vec<&str> {
    let max = max.max(1);
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let mut used = 0;
        let mut cut = rest.len();
        for (i, c) in rest.char_indices() {
            used += char_len(c);
            if used > max {
                cut = i;
                break;
            }
        }
        if cut == rest.len() {
            parts.push(rest);
            return parts;
        }
        // A character wider than the whole limit still has to go somewhere.
        let cut = if cut == 0 {
            rest.chars().next().map_or(rest.len(), char::len_utf8)
        } else {
            cut
        };
        let window = &rest[..cut];
        let floor = cut / 2;
        let (end, skip) = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| {
                window
                    .rfind(sep)
                    .filter(|&at| at >= floor && at > 0)
                    .map(|at| (at, sep.len()))
            })
            .unwrap_or((cut, 0));
        parts.push(&rest[..end]);
        rest = &rest[end + skip..];
        if rest.is_empty() {
            return parts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use async_trait::async_trait;
    use moltbot_protocol::Channel;
    use tokio::sync::{Semaphore, watch};

    use crate::bus::Bus;
    use crate::channels::Connector;
    use crate::config::StoreConfig;
    use crate::store::{OutboundMessage, RunPolicy};
    use moltbot_protocol::ids::MessageId;

    /// A web-chat-like connector whose sends to every chat but `free` wait for a permit.
    struct Gate {
        free: String,
        permits: Semaphore,
        sent: Mutex<Vec<(String, String)>>,
    }

    #[async_trait]
    impl Connector for Gate {
        fn name(&self) -> &str {
            "webchat"
        }
        fn channel(&self) -> Channel {
            Channel::Webchat
        }
        fn max_text_len(&self) -> usize {
            4096
        }
        fn sends_may_be_ambiguous(&self) -> bool {
            false
        }
        async fn run(self: Arc<Self>, _shutdown: CancellationToken) {}
        async fn send(&self, part: &OutgoingPart<'_>) -> Result<Option<String>, SendError> {
            if part.chat != self.free {
                self.permits.acquire().await.expect("open").forget();
            }
            let sent = (part.chat.to_string(), part.text.to_string());
            self.sent.lock().unwrap().push(sent);
            Ok(None)
        }
    }

    /// A store, a gated web-chat connector and a running sender, with every delivery slot
    /// taken by a send held at the gate.
    struct Full {
        _dir: tempfile::TempDir,
        store: Store,
        writer: crate::store::WriterHandle,
        gate: Arc<Gate>,
        shutdown: CancellationToken,
        sender: tokio::task::JoinHandle<()>,
    }

    impl Full {
        async fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let policy = watch::channel(RunPolicy {
                enabled: false,
                default_mode: moltbot_protocol::inbox::AgentMode::Off,
                require_mention_in_groups: true,
            });
            let metrics = Arc::new(Metrics::new());
            let (store, writer) = Store::open(
                dir.path(),
                &StoreConfig::default(),
                Bus::new(16),
                metrics.clone(),
                policy.1,
            )
            .await
            .unwrap();
            let gate = Arc::new(Gate {
                free: "last".into(),
                permits: Semaphore::new(0),
                sent: Mutex::new(Vec::new()),
            });
            let shutdown = CancellationToken::new();
            let sender = tokio::spawn(run(
                store.clone(),
                Connectors::of([gate.clone() as Arc<dyn Connector>]),
                metrics,
                shutdown.clone(),
            ));
            let full = Self {
                _dir: dir,
                store,
                writer,
                gate,
                shutdown,
                sender,
            };
            for n in 0..MAX_CONVERSATIONS_IN_FLIGHT {
                let conversation = full.conversation(&format!("chat {n}")).await;
                full.send(conversation, "held").await;
            }
            full
        }

        async fn conversation(&self, chat: &str) -> ConversationId {
            let stored = self
                .store
                .ingest(crate::store::test_message(chat))
                .await
                .unwrap();
            stored.conversation_id.unwrap()
        }

        async fn send(&self, conversation: ConversationId, text: &str) -> MessageId {
            let message = OutboundMessage {
                conversation_id: conversation,
                txn_id: text.into(),
                text: text.into(),
            };
            self.store.send(message).await.unwrap().0
        }

        /// What reached the connector for the chat `last`.
        fn sent_to_last(&self) -> Vec<String> {
            let sent = self.gate.sent.lock().unwrap();
            (sent.iter().filter(|(chat, _)| chat == "last"))
                .map(|(_, text)| text.clone())
                .collect()
        }

        async fn stop(self) -> Store {
            self.shutdown.cancel();
            self.gate.permits.add_permits(MAX_CONVERSATIONS_IN_FLIGHT);
            self.sender.await.unwrap();
            self.writer.finish().await;
            self.store
        }
    }

    /// With every delivery slot taken, a send handed for a conversation waits for room, and
    /// a row queued behind it meanwhile goes right after it, not at the next safety pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_behind_a_handed_send_that_waited_for_room_follows_it() {
        let full = Full::start().await;
        let last = full.conversation("last").await;
        full.send(last, "first").await;
        full.send(last, "second").await;
        // Let the held sends start and the news be taken before a slot frees.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(full.gate.sent.lock().unwrap().is_empty());
        // Two slots: one for the handed send, one left for a read while it runs.
        full.gate.permits.add_permits(2);
        let started = Instant::now();
        while full.sent_to_last().len() < 2 && started.elapsed() < POLL * 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(full.sent_to_last(), ["first", "second"]);
        assert!(
            started.elapsed() < POLL / 2,
            "the second waited for the safety pass: {:?}",
            started.elapsed()
        );
        full.stop().await;
    }

    /// A handed send still waiting for room when the sender stops goes back to the queue:
    /// the next start sends it as never attempted instead of reconciling it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handed_send_never_started_is_queued_again_at_shutdown() {
        let full = Full::start().await;
        let last = full.conversation("last").await;
        let waiting = full.send(last, "waiting").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let store = full.stop().await;
        let queued = store.due_outbox(1000, &HashSet::new()).await;
        let queued = queued
            .unwrap()
            .into_iter()
            .find(|item| item.message_id == waiting);
        let queued = queued.expect("still queued");
        assert_eq!((queued.in_doubt, queued.attempts), (false, 0));
    }

    /// A part of nothing but whitespace, which a channel would refuse as empty, is not
    /// sent; the parts around it are, and the row is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blank_part_is_not_sent_and_the_rest_is() {
        let full = Full::start().await;
        full.gate.permits.add_permits(MAX_CONVERSATIONS_IN_FLIGHT);
        let last = full.conversation("last").await;
        // Parts of 4,096: the a's, then only spaces, then the b.
        let text = format!("{}{}b", "a".repeat(4000), " ".repeat(5000));
        let message = full.send(last, &text).await;
        let started = Instant::now();
        let got_b = || full.sent_to_last().iter().any(|part| part.ends_with('b'));
        while !got_b() && started.elapsed() < POLL * 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent = full.sent_to_last();
        assert_eq!(
            sent.len(),
            2,
            "{:?}",
            sent.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(sent[0].starts_with('a') && sent[1].trim() == "b");
        let store = full.stop().await;
        let due = store.due_outbox(1000, &HashSet::new()).await.unwrap();
        assert!(
            due.iter().all(|item| item.message_id != message),
            "the row is done"
        );
    }

    fn chars(_: char) -> usize {
        1
    }

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_text("hello", 10, chars), vec!["hello"]);
        assert_eq!(split_text("", 10, chars), vec![""]);
    }

    #[test]
    fn breaks_prefer_paragraphs_then_lines_then_spaces() {
        assert_eq!(
            split_text("aaaa bbbb\n\ncccc", 12, chars),
            vec!["aaaa bbbb", "cccc"]
        );
        assert_eq!(
            split_text("aaaa bb\ncccc dd", 10, chars),
            vec!["aaaa bb", "cccc dd"]
        );
        assert_eq!(
            split_text("aaaa bbbb cccc", 10, chars),
            vec!["aaaa bbbb", "cccc"]
        );
    }

    #[test]
    fn a_blank_stretch_is_split_into_parts_of_its_own() {
        // The sender skips such parts, but they keep their place: rows in flight count
        // their parts by this split.
        let text = format!("a a a {}b", " ".repeat(20));
        assert_eq!(
            split_text(&text, 10, chars),
            vec!["a a a    ", "         ", "      b"]
        );
    }

    #[test]
    fn a_word_longer_than_the_limit_is_cut_hard_and_nothing_is_lost() {
        let parts = split_text("abcdefghij", 4, chars);
        assert_eq!(parts, vec!["abcd", "efgh", "ij"]);
        assert_eq!(parts.concat(), "abcdefghij");
    }

    #[test]
    fn limits_count_in_the_connectors_units() {
        // Telegram counts UTF-16 code units: an emoji is two.
        let text = "😀".repeat(4096);
        let parts = split_text(&text, 4096, char::len_utf16);
        assert_eq!(parts.len(), 2);
        assert!(
            parts
                .iter()
                .all(|p| p.encode_utf16().count() <= 4096 && !p.is_empty())
        );
        assert_eq!(parts.concat(), text);
        let long = "word ".repeat(2000);
        for part in split_text(&long, 4096, char::len_utf16) {
            assert!(part.encode_utf16().count() <= 4096);
            assert!(!part.starts_with(' '));
        }
    }

    #[test]
    fn a_retry_coming_due_keeps_the_later_ones() {
        let retries = Retries::default();
        let (past, soon, later) = (
            Timestamp::now() - Duration::from_millis(5),
            Timestamp::now() + Duration::from_secs(1),
            Timestamp::now() + Duration::from_secs(9),
        );
        retries.schedule(later);
        retries.schedule(soon);
        assert!(!retries.take_due(), "nothing is due yet");
        retries.schedule(past);
        assert!(retries.take_due());
        assert!(!retries.take_due(), "a due retry is taken once");
        assert_eq!(retries.next(), Some(soon));
        retries.schedule(past);
        assert!(retries.take_due());
        assert_eq!(retries.next(), Some(soon), "the later ones stay");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempts in 1..40 {
            let wait = backoff(attempts);
            let full = FIRST_BACKOFF
                .saturating_mul(1 << (attempts - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(wait >= full / 2 && wait <= full, "{attempts}: {wait:?}");
        }
        assert!(backoff(20) <= MAX_BACKOFF);
    }
}
