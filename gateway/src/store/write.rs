//! The writer: one thread owns the only write connection and commits writes in groups (one
//! transaction for everything queued); a group in which a write fails is run again with a
//! savepoint per write, so the bad write fails alone. A committed group goes to the
//! [`sync`](super::sync) thread, which answers its callers once it is durable, while the
//! writer goes on with the next group. Between groups it also answers the reads queued
//! with the writes (`Store::read_on_writer`), on its warm page cache.
//!
//! The connection is a plain synchronous one on its own thread: a write is several small
//! statements, and an async driver would hand each of them to a worker thread and wait for
//! the answer, which on a small machine cost more than the statements themselves.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use moltbot_protocol::ids::ConversationId;
use rusqlite::{Connection, OptionalExtension, Params, Row, params};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use ulid::Generator;

use super::publish::{Change, Changes};
use super::sync::{self, Committed};
use super::{
    IngestOutcome, Job, StoreError, Write, Written, agent, amend, channels, inbox, ms, outbox,
};
use crate::bus::Bus;
use crate::metrics::Metrics;
use crate::tasks::News;

/// How long a group of writes on nobody's path waits for one on somebody's.
pub(super) const RIDE_ALONG: Duration = Duration::from_millis(5);

/// What the writer's queue carries.
pub(super) enum Command {
    Write(Job),
    /// A read, run at once on the writer's connection outside any group; it answers itself.
    Read(Box<dyn FnOnce(&Connection) + Send>),
    /// Refuse later writes and reads, commit and answer what is queued, and end.
    Stop,
}

pub(super) struct Writer {
    pub(super) conn: Connection,
    /// Committed groups, to be made durable and answered.
    pub(super) committed: SyncSender<Committed>,
    /// Cancelled by the syncer when the disk failed; see [`super::sync::Syncer::failed`].
    pub(super) sync_failed: CancellationToken,
    /// Sends handed to the sender, claimed here before their commit.
    pub(super) handed: Arc<outbox::Handed>,
    pub(super) metrics: Arc<Metrics>,
    /// Told of queued runs at their commit, without waiting for the sync, while nobody
    /// watches the inbox live (see [`super::sync`]).
    pub(super) runs_ready: Arc<News>,
    pub(super) bus: Bus,
    /// Whether and how a new message queues an agent run; the config may change it at reload.
    pub(super) policy: watch::Receiver<agent::RunPolicy>,
    pub(super) max_batch: usize,
    /// See [`RIDE_ALONG`].
    pub(super) ride_along: Duration,
    pub(super) ids: Generator,
    /// Every committed message with `seq` up to this is in the full-text index.
    pub(super) indexed_up_to: i64,
}

impl Writer {
    /// Runs on a blocking thread until the queue is closed (every sender gone, or
    /// [`Command::Stop`]) and drained.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = queue.blocking_recv() {
            let mut next = Some(first);
            loop {
                while let Some(command) = next.take() {
                    match command {
                        Command::Write(job) => batch.push(job),
                        // No transaction is open here: the read sees every committed group.
                        Command::Read(read) => read(&self.conn),
                        // What is already queued is still committed: the queue drains, then ends.
                        Command::Stop => queue.close(),
                    }
                    if batch.len() < self.max_batch {
                        next = queue.try_recv().ok();
                    }
                }
                // Writes on nobody's path wait a moment for one on somebody's, to share its
                // commit: fewer commits, and fewer pages written twice.
                let may_wait = batch.iter().all(|job| job.write.may_wait());
                if batch.is_empty() || batch.len() >= self.max_batch || !may_wait {
                    break;
                }
                next = match Handle::current().block_on(timeout(self.ride_along, queue.recv())) {
                    Ok(Some(command)) => Some(command),
                    Ok(None) | Err(_) => break,
                };
            }
            if !batch.is_empty() {
                self.commit_group(&mut batch);
            }
        }
        tracing::debug!("store writer finished");
    }

    fn commit_group(&mut self, batch: &mut Vec<Job>) {
        if self.sync_failed.is_cancelled() {
            sync::refuse(batch.drain(..).map(|job| job.reply));
            return;
        }
        let started = Instant::now();
        let size = batch.len();
        // A savepoint per write would make the full-text index write a segment per write, so
        // a group first runs without them; only if a write fails is it run again with one
        // savepoint per write, so that the failed write is all that is lost.
        let committed = match self.run_group(batch, Isolation::Group) {
            Err(GroupFailed::WriteFailed) => {
                self.metrics.store_group_rerun();
                self.run_group(batch, Isolation::PerWrite)
            }
            other => other,
        };
        self.metrics.store_commit(size, started.elapsed());
        match committed {
            Ok(mut group) => {
                if !group.wake.agent.is_empty() && !self.bus.has_subscribers() {
                    self.runs_ready.post(std::mem::take(&mut group.wake.agent));
                }
                let committed = Committed {
                    answers: batch
                        .drain(..)
                        .map(|job| job.reply)
                        .zip(group.results)
                        .collect(),
                    changes: group.changes,
                    wake: group.wake,
                };
                // The syncer outlives the writer: it ends when this sender is dropped.
                if let Err(unsent) = self.committed.send(committed) {
                    sync::refuse_group(unsent.0, &self.handed);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = size, "store commit failed; nothing in the group was stored");
                self.metrics.store_commit_failed();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StoreError::CommitFailed(e.to_string())));
                }
            }
        }
    }

    /// Applies and commits `batch` in one transaction. With [`Isolation::Group`] it gives up
    /// at the first write that fails, rolling everything back.
    fn run_group(&mut self, batch: &[Job], isolation: Isolation) -> Result<Group, GroupFailed> {
        let policy = self.policy.borrow().clone();
        let mut tx = self.conn.transaction()?;
        let mut group = Group {
            results: Vec::with_capacity(batch.len()),
            changes: Changes::new(),
            wake: Wake::default(),
        };
        let mut ingested = 0i64;
        let mut indexed_up_to = self.indexed_up_to;
        let now = ms(Timestamp::now());
        for job in batch {
            let result;
            let (changes, wake) = match isolation {
                Isolation::Group => {
                    let mut cx = Ctx::new(&tx, &mut self.ids, now, &policy, indexed_up_to);
                    result = match apply(&mut cx, &job.write) {
                        Ok(written) => Ok(written),
                        // Dropping the transaction rolls it back.
                        Err(_) => return Err(GroupFailed::WriteFailed),
                    };
                    indexed_up_to = cx.indexed_up_to;
                    (cx.changes, cx.wake)
                }
                Isolation::PerWrite => {
                    let sp = tx.savepoint()?;
                    let mut cx = Ctx::new(&sp, &mut self.ids, now, &policy, indexed_up_to);
                    result = apply(&mut cx, &job.write);
                    let (changes, wake) = (cx.changes, cx.wake);
                    if result.is_ok() {
                        // What the write indexed is kept only with the write.
                        indexed_up_to = cx.indexed_up_to;
                        sp.commit()?;
                    } else {
                        sp.finish()?;
                    }
                    (changes, wake)
                }
            };
            if result.is_ok() {
                if let Ok(Written::Ingested(IngestOutcome {
                    duplicate: false,
                    message_id: Some(_),
                    ..
                })) = &result
                {
                    ingested += 1;
                }
                group.changes.extend(changes);
                group.wake.outbox.extend(wake.outbox);
                group.wake.agent.extend(wake.agent);
                group.wake.handed.extend(wake.handed);
            }
            group.results.push(result);
        }
        if ingested > 0 {
            // One usage row per group keeps metering off the per-message path.
            execute(
                &tx,
                "INSERT INTO usage_events (id, kind, quantity, at) VALUES (?, 'message_ingested', ?, ?)",
                params![
                    new_id(&mut self.ids).to_string(),
                    ingested,
                    ms(Timestamp::now())
                ],
            )?;
        }
        indexed_up_to = index_new_messages(&tx, indexed_up_to)?;
        // Readers see the handed rows from the commit on, so they are claimed before it.
        self.handed.claim(&group.wake.handed);
        if let Err(e) = tx.commit() {
            self.handed.release(&group.wake.handed);
            return Err(e.into());
        }
        self.indexed_up_to = indexed_up_to;
        Ok(group)
    }
}

#[derive(Clone, Copy)]
enum Isolation {
    /// The group stands or falls together.
    Group,
    /// Each write in its own savepoint.
    PerWrite,
}

#[derive(Debug, thiserror::Error)]
enum GroupFailed {
    /// A write failed in a group run without savepoints.
    #[error("a write of the group failed")]
    WriteFailed,
    #[error(transparent)]
    Database(#[from] rusqlite::Error),
}

/// What a committed group answers and changed.
struct Group {
    results: Vec<Result<Written, StoreError>>,
    changes: Changes,
    wake: Wake,
}

/// Work a committed write gave the workers, by conversation.
#[derive(Clone, Debug, Default)]
pub(super) struct Wake {
    /// Conversations with outbound messages queued.
    pub(super) outbox: Vec<ConversationId>,
    /// Conversations with agent runs queued; posted at the commit unless someone watches.
    pub(super) agent: Vec<ConversationId>,
    /// Sends handed to the sender whole (see [`outbox::Handed`]).
    pub(super) handed: Vec<outbox::OutboxItem>,
}

/// What one write works with inside its group's transaction.
pub(super) struct Ctx<'a> {
    pub(super) conn: &'a Connection,
    ids: &'a mut Generator,
    /// One clock reading per group: every row a group writes carries the same time.
    pub(super) now: i64,
    pub(super) policy: &'a agent::RunPolicy,
    pub(super) changes: Vec<Change>,
    pub(super) wake: Wake,
    /// Every message with `seq` up to this is in the full-text index (in this transaction).
    indexed_up_to: i64,
}

impl<'a> Ctx<'a> {
    fn new(
        conn: &'a Connection,
        ids: &'a mut Generator,
        now: i64,
        policy: &'a agent::RunPolicy,
        indexed_up_to: i64,
    ) -> Self {
        Self {
            conn,
            ids,
            now,
            policy,
            changes: Vec::new(),
            wake: Wake::default(),
            indexed_up_to,
        }
    }

    /// Indexes the messages stored so far for search. A write calls this before it changes
    /// a stored message's text: the index's update trigger removes the old text, which it
    /// must hold. Everything else is indexed once, just before the group commits.
    pub(super) fn index_before_changing_text(&mut self) -> rusqlite::Result<()> {
        self.indexed_up_to = index_new_messages(self.conn, self.indexed_up_to)?;
        Ok(())
    }

    /// A fresh ULID, monotonic within the writer.
    pub(super) fn new_id(&mut self) -> ulid::Ulid {
        new_id(self.ids)
    }

    pub(super) fn execute(&self, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
        execute(self.conn, sql, params)
    }

    pub(super) fn query_optional<T>(
        &self,
        sql: &str,
        params: impl Params,
        row: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Option<T>> {
        query_optional(self.conn, sql, params, row)
    }

    pub(super) fn changed(&mut self, change: Change) {
        self.changes.push(change);
    }
}

/// The highest message `seq`; every message up to it is in the full-text index once the
/// writer starts (each group indexes its messages before it commits).
pub(super) fn last_message_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM messages")?
        .query_row([], |r| r.get(0))
}

/// Puts messages stored after `indexed_up_to` into the full-text index, in one statement:
/// FTS5 writes a segment each time a statement of the transaction touches it, so indexing
/// row by row would cost a segment per message. `seq` only grows (messages are never
/// deleted, only blanked). Answers the new high mark.
fn index_new_messages(conn: &Connection, indexed_up_to: i64) -> rusqlite::Result<i64> {
    execute(
        conn,
        "INSERT INTO messages_fts (rowid, text) SELECT seq, text FROM messages WHERE seq > ? AND text IS NOT NULL",
        [indexed_up_to],
    )?;
    last_message_seq(conn)
}

fn new_id(ids: &mut Generator) -> ulid::Ulid {
    // The generator only fails when a millisecond's random space is exhausted.
    ids.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

/// Runs one statement from the connection's statement cache.
fn execute(conn: &Connection, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// The one row a statement returns, if any, from the connection's statement cache.
fn query_optional<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    row: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    conn.prepare_cached(sql)?.query_row(params, row).optional()
}

fn apply(cx: &mut Ctx<'_>, write: &Write) -> Result<Written, StoreError> {
    match write {
        Write::Inbox(w) => inbox::apply(cx, w),
        Write::Outbox(w) => outbox::apply(cx, w),
        Write::Agent(w) => agent::apply(cx, w),
        Write::Channel(w) => channels::apply(cx, w),
        Write::Amend(w) => amend::apply(cx, w),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use futures_util::FutureExt;
    use moltbot_protocol::inbox::AgentMode;
    use tokio::sync::oneshot;

    use super::*;
    use crate::config::StoreConfig;
    use crate::store::{DB_FILE, Store, inbox, open_writer, test_message};

    /// The agent hears of a queued run when its group commits: the write's answer still
    /// waits for the sync, and so does the poll that delivered the message, but the run
    /// does not (the sync of its outcome covers the message). While someone watches the
    /// inbox live, the syncer tells it instead, so that the run's frames follow the
    /// message's.
    #[tokio::test]
    async fn a_queued_run_is_news_at_its_commit_unless_someone_watches() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::new(4);
        let runs_ready = Arc::new(News::default());
        let (mut writer, unsynced) =
            unsynced_writer(dir.path(), AgentMode::Autopilot, &bus, &runs_ready).await;
        let mut ingest = |chat: &str| {
            let (reply, answer) = oneshot::channel();
            let write = Write::Inbox(inbox::InboxWrite::Ingest {
                event: Box::new(test_message(chat)),
                receipt: None,
            });
            writer.commit_group(&mut vec![Job { write, reply }]);
            let group = unsynced.try_recv().expect("the group waits for its sync");
            let Ok(Written::Ingested(stored)) = &group.answers[0].1 else {
                panic!("{:?}", group.answers[0].1);
            };
            (stored.conversation_id.unwrap(), group, answer)
        };

        let (conversation, group, mut answer) = ingest("ann");
        let news = runs_ready
            .take()
            .now_or_never()
            .expect("news at the commit");
        assert!(answer.try_recv().is_err(), "the write is not answered yet");
        assert_eq!(news, HashSet::from([conversation]));
        assert!(
            group.wake.agent.is_empty(),
            "the syncer has no runs to post"
        );

        let _watching = bus.subscribe();
        let (conversation, group, _) = ingest("bob");
        assert!(
            runs_ready.take().now_or_never().is_none(),
            "a watched run waits for its message's frames"
        );
        assert_eq!(
            group.wake.agent,
            [conversation],
            "handed on with its frames"
        );
    }

    /// Writes on nobody's path (here a delivery's record) wait for one on somebody's and
    /// commit with it; a stop commits them at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_on_nobodys_path_share_the_next_groups_commit() {
        let dir = tempfile::tempdir().unwrap();
        let runs_ready = Arc::new(News::default());
        let (mut writer, unsynced) =
            unsynced_writer(dir.path(), AgentMode::Off, &Bus::new(4), &runs_ready).await;
        // Long enough that only another write or the stop can end the wait.
        writer.ride_along = Duration::from_secs(3600);
        let (queue, commands) = mpsc::channel(8);
        let running = tokio::task::spawn_blocking(move || writer.run(commands));
        let write = |write: Write| {
            let (reply, _answer) = oneshot::channel();
            Command::Write(Job { write, reply })
        };
        // The record of a change that reached the provider (of a row that is not there).
        let delivered = || {
            let row = ulid::Ulid::new();
            write(Write::Outbox(outbox::OutboxWrite::Changed { row }))
        };
        let group_of = |unsynced: &std::sync::mpsc::Receiver<Committed>| {
            let group = unsynced.recv_timeout(Duration::from_secs(10)).unwrap();
            group.answers.len()
        };

        queue.send(delivered()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(unsynced.try_recv().is_err(), "the record waits for company");
        let message = inbox::InboxWrite::Ingest {
            event: Box::new(test_message("ann")),
            receipt: None,
        };
        queue.send(write(Write::Inbox(message))).await.unwrap();
        assert_eq!(group_of(&unsynced), 2, "one commit for both");

        queue.send(delivered()).await.unwrap();
        queue.send(Command::Stop).await.unwrap();
        assert_eq!(group_of(&unsynced), 1, "the stop does not wait");
        running.await.unwrap();
    }

    /// A writer on a migrated database in `dir`, whose new messages queue agent runs in
    /// `mode` (none when off) and whose committed groups nobody syncs: they stay in the
    /// receiver.
    async fn unsynced_writer(
        dir: &std::path::Path,
        mode: AgentMode,
        bus: &Bus,
        runs_ready: &Arc<News>,
    ) -> (Writer, std::sync::mpsc::Receiver<Committed>) {
        let policy = watch::channel(agent::RunPolicy {
            enabled: mode != AgentMode::Off,
            default_mode: mode,
            require_mention_in_groups: true,
        })
        .1;
        let metrics = Arc::new(Metrics::new());
        // A store to create and migrate the database; its writer stands down for ours.
        let config = StoreConfig::default();
        let opened = Store::open(dir, &config, bus.clone(), metrics.clone(), policy.clone());
        opened.await.unwrap().1.finish().await;
        let conn = open_writer(&dir.join(DB_FILE)).unwrap();
        let (committed, unsynced) = std::sync::mpsc::sync_channel(4);
        let writer = Writer {
            indexed_up_to: last_message_seq(&conn).unwrap(),
            conn,
            committed,
            sync_failed: CancellationToken::new(),
            handed: Arc::default(),
            metrics,
            runs_ready: runs_ready.clone(),
            bus: bus.clone(),
            policy,
            max_batch: 8,
            ride_along: RIDE_ALONG,
            ids: Generator::new(),
        };
        (writer, unsynced)
    }
}
