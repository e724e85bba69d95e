//! The tenant's store: one SQLite database in WAL mode.
//!
//! All writes go through one writer thread that commits them in groups (see [`write`]);
//! after a commit the [`publish`] task puts the changes on the bus. Reads use a separate
//! pool of read-only connections, which WAL lets run beside the writer, except the few on
//! every reply's path, which the writer's connection answers between groups
//! (`Store::read_on_writer`).

mod agent;
mod amend;
mod channels;
mod checkpoint;
mod inbox;
mod outbox;
mod publish;
mod read;
mod sync;
mod write;

use std::collections::HashSet;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use moltbot_protocol::event::Source;
use moltbot_protocol::ids::{ConversationId, MessageId};
use moltbot_protocol::{Event, EventId};
use rusqlite::config::DbConfig;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{ConnectOptions, Connection};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ulid::Generator;

use crate::bus::Bus;
use crate::config::{StoreConfig, Synchronous};
use crate::metrics::Metrics;
use crate::tasks::News;
use write::Command;

pub use agent::{
    HistoryRow, QueuedRun, RunContext, RunFilter, RunFinish, RunOutcome, RunPolicy, RunStart,
    RunUsage, ToolCallRecord, ToolEffect, ToolOutcome, UsageDay,
};
pub use channels::{PairingAsk, PairingTicket, Receipt};
pub use inbox::OutboundMessage;
pub(crate) use outbox::OutboxWrite;
pub use outbox::{Operation, OutboxItem};
pub use read::ConversationFilter;

pub(crate) const DB_FILE: &str = "gateway.db";
/// How long a connection waits for a lock another one holds before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error in the writer: {0}")]
    Writer(#[from] rusqlite::Error),
    /// A read on the writer's connection could not run or did not finish.
    #[error("a read on the writer's connection failed: {0}")]
    ReadOnWriter(&'static str),
    #[error("commit failed, nothing in its group was stored: {0}")]
    CommitFailed(String),
    /// The disk did not confirm a sync: the write may or may not have been kept, and the
    /// store takes no more writes until the gateway restarts from what is on disk.
    #[error(
        "the disk did not confirm the write; the store takes no writes until the gateway restarts"
    )]
    NotDurable,
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(String),
    /// The request may not act on this (someone else's message).
    #[error("{0}")]
    Forbidden(String),
    /// The request is fine but the thing it acts on is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
}

/// What an ingest did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestOutcome {
    /// The stored event (for a duplicate: the one stored first).
    pub event_id: EventId,
    pub message_id: Option<MessageId>,
    pub conversation_id: Option<ConversationId>,
    pub duplicate: bool,
}

/// What one page of a chat's history did to the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackfillOutcome {
    /// Whether the store had each message already, in the page's order.
    pub known: Vec<bool>,
}

impl BackfillOutcome {
    /// Messages new to the store.
    pub fn stored(&self) -> usize {
        self.known.iter().filter(|known| !**known).count()
    }

    pub fn known(&self) -> usize {
        self.known.len() - self.stored()
    }
}

#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// One change for the writer, by the part of the store it belongs to.
#[derive(Debug)]
pub(crate) enum Write {
    Inbox(inbox::InboxWrite),
    Outbox(outbox::OutboxWrite),
    Agent(agent::AgentWrite),
    Channel(channels::ChannelWrite),
    Amend(amend::Amend),
}

impl Write {
    /// Whether the write is on nobody's path: the record of a delivery's end, which a crash
    /// turns into a reconciliation rather than a resend, and which only the conversation's
    /// next outbound row waits for. Such a write may wait a moment to share another
    /// group's commit. (Not the polling offset: the next poll waits for it.)
    fn may_wait(&self) -> bool {
        use outbox::OutboxWrite::{Changed, PartSent};
        matches!(
            self,
            Write::Outbox(PartSent { last: true, .. } | Changed { .. })
        )
    }
}

/// What the writer answers for one [`Write`].
#[derive(Debug)]
pub(crate) enum Written {
    Ingested(IngestOutcome),
    Backfilled(BackfillOutcome),
    Sent {
        message_id: MessageId,
        duplicate: bool,
    },
    /// Whether a receipt was new.
    Recorded {
        new: bool,
    },
    Pairing(PairingTicket),
    Fact(moltbot_protocol::ids::FactId),
    /// Whether a change to a message changed anything.
    Amended {
        changed: bool,
    },
    /// How many times a run was started again after a restart; None when not queued.
    Restarts(Option<u32>),
    Done,
}

/// Where the writer's answer to one write goes.
type Reply = oneshot::Sender<Result<Written, StoreError>>;

struct Job {
    write: Write,
    reply: Reply,
}

#[derive(Clone)]
pub struct Store {
    reads: SqlitePool,
    commands: mpsc::Sender<Command>,
    /// The conversations durable writes queued outbound messages for.
    outbox_ready: Arc<News>,
    /// The conversations committed writes queued agent runs for.
    runs_ready: Arc<News>,
    /// Sends handed to the sender whole.
    handed: Arc<outbox::Handed>,
    /// Cancelled for good when the disk failed a sync: the store then takes no writes.
    sync_failed: CancellationToken,
    /// Agent runs left by an earlier process, and those of them whose restart is counted.
    restarts: Arc<Mutex<agent::Restarts>>,
}

/// The running writer, publisher and checkpointer.
pub struct WriterHandle {
    writer: JoinHandle<()>,
    syncer: JoinHandle<()>,
    publisher: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
    commands: mpsc::Sender<Command>,
}

impl WriterHandle {
    /// Stops taking new writes (later callers get [`StoreError::Closed`]), commits and
    /// publishes every write already accepted, and returns when the writer has ended. It
    /// does not wait for [`Store`] handles to be dropped, so a stalled client cannot hold
    /// shutdown open.
    pub async fn finish(self) {
        // An error means the writer already ended.
        let _ = self.commands.send(Command::Stop).await;
        let tasks = [
            ("writer", self.writer),
            ("syncer", self.syncer),
            ("publisher", self.publisher),
            ("checkpointer", self.checkpointer),
        ];
        for (name, task) in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "store {name} failed");
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and runs migrations.
    pub async fn open(
        data_dir: &Path,
        config: &StoreConfig,
        bus: Bus,
        metrics: Arc<Metrics>,
        policy: watch::Receiver<RunPolicy>,
    ) -> Result<(Store, WriterHandle), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("temp_store", "memory")
            .log_statements(tracing::log::LevelFilter::Trace);
        // This connection migrates, then checkpoints beside the writer.
        let mut checkpoints = base.clone().create_if_missing(true).connect().await?;
        sqlx::migrate!("./migrations").run(&mut checkpoints).await?;
        let reads = SqlitePoolOptions::new()
            .after_connect(|conn, _| Box::pin(stable_plans(conn)))
            .max_connections(config.read_connections)
            .min_connections(1)
            .connect_with(base.read_only(true))
            .await?;
        let conn = open_writer(&path)?;
        let restarts = Arc::new(Mutex::new(agent::Restarts::read(&conn)?));

        let (commands, queue) = mpsc::channel(config.max_batch * 4);
        // A few groups of slack; beyond that the writer waits for the publisher.
        let (published, to_publish) = mpsc::channel(64);
        let (wal_grew, committed_pages) = mpsc::channel(1);
        let outbox_ready = Arc::new(News::default());
        let runs_ready = Arc::new(News::default());
        let handed = Arc::new(outbox::Handed::default());
        let sync_failed = CancellationToken::new();
        // A few groups ahead of the disk at most; beyond that the writer waits for the syncer.
        let (committed, durable) = std::sync::mpsc::sync_channel(64);
        let syncer = sync::Syncer {
            wal: wal_path(&path),
            durable: config.synchronous == Synchronous::Full,
            failed: sync_failed.clone(),
            bus: bus.clone(),
            published,
            wal_grew,
            metrics: metrics.clone(),
            outbox_ready: outbox_ready.clone(),
            runs_ready: runs_ready.clone(),
            handed: handed.clone(),
        };
        let writer = write::Writer {
            runs_ready: runs_ready.clone(),
            bus: bus.clone(),
            committed,
            sync_failed: sync_failed.clone(),
            handed: handed.clone(),
            metrics,
            policy,
            max_batch: config.max_batch,
            ride_along: write::RIDE_ALONG,
            ids: Generator::new(),
            indexed_up_to: write::last_message_seq(&conn)?,
            conn,
        };
        let writer = tokio::task::spawn_blocking(move || writer.run(queue));
        let syncer = tokio::task::spawn_blocking(move || syncer.run(durable));
        let publisher = tokio::spawn(publish::run(
            reads.clone(),
            bus,
            runs_ready.clone(),
            to_publish,
        ));
        let checkpointer = tokio::spawn(checkpoint::run(checkpoints, committed_pages));
        Ok((
            Store {
                reads,
                commands: commands.clone(),
                outbox_ready,
                runs_ready,
                handed,
                sync_failed,
                restarts,
            },
            WriterHandle {
                writer,
                syncer,
                publisher,
                checkpointer,
                commands,
            },
        ))
    }

    /// Runs `read` on the writer's connection, between two groups. That connection's page
    /// cache stays warm, since nothing else changes the database, whereas a read
    /// connection's cache is dropped whenever the database changed: under steady writes
    /// that is before almost every read, and for the reads on a reply's path re-reading
    /// the pages cost more than the statement. Like the read connections, it sees every
    /// committed group, durable yet or not.
    async fn read_on_writer<T: Send + 'static>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let read = Box::new(move |conn: &rusqlite::Connection| {
            let result = if !conn.is_autocommit() {
                // Groups never leave a transaction open; should a failed rollback leave one,
                // the read would see writes that were not committed.
                Err(StoreError::ReadOnWriter(
                    "the connection is inside a transaction",
                ))
            } else {
                // A panic must not end the writer's thread, which every write needs.
                std::panic::catch_unwind(AssertUnwindSafe(|| read(conn)))
                    .unwrap_or(Err(StoreError::ReadOnWriter("the read panicked")))
            };
            let _ = reply.send(result);
        });
        self.commands
            .send(Command::Read(read))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn submit(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Write(Job { write, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a canonical event once per dedupe key.
    pub async fn ingest(&self, event: Event) -> Result<IngestOutcome, StoreError> {
        let write = inbox::InboxWrite::Ingest {
            event: Box::new(event),
            receipt: None,
        };
        match self.submit(Write::Inbox(write)).await? {
            Written::Ingested(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Stores one page of `chat`'s history as read from the provider, in one transaction.
    /// Each message takes its place in the conversation by the time it was sent (at the
    /// latest now); it never counts as unread and never starts a run, and moves the
    /// conversation's preview and last activity only if it is newer than its last
    /// message. Every event must be a `message.received` of `chat` from `source`, or
    /// nothing is stored. Pi's next run reads the history again in full; a message older
    /// than the end of the conversation's rolling summary stays out of Pi's prompts.
    pub async fn backfill(
        &self,
        source: Source,
        chat: String,
        events: Vec<Event>,
    ) -> Result<BackfillOutcome, StoreError> {
        let write = inbox::InboxWrite::Backfill {
            source,
            chat,
            events,
        };
        match self.submit(Write::Inbox(write)).await? {
            Written::Backfilled(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Records an outbound message and its outbox row; the same txn id returns the same message.
    pub async fn send(&self, message: OutboundMessage) -> Result<(MessageId, bool), StoreError> {
        match self
            .submit(Write::Inbox(inbox::InboxWrite::Send(message)))
            .await?
        {
            Written::Sent {
                message_id,
                duplicate,
            } => Ok((message_id, duplicate)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn set_pinned(
        &self,
        conversation_id: ConversationId,
        pinned: bool,
    ) -> Result<(), StoreError> {
        self.submit(Write::Inbox(inbox::InboxWrite::SetPinned {
            conversation_id,
            pinned,
        }))
        .await
        .map(drop)
    }

    pub async fn mark_read(
        &self,
        conversation_id: ConversationId,
        up_to: Option<MessageId>,
    ) -> Result<(), StoreError> {
        self.submit(Write::Inbox(inbox::InboxWrite::MarkRead {
            conversation_id,
            up_to,
        }))
        .await
        .map(drop)
    }

    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.submit(Write::Inbox(inbox::InboxWrite::Audit(entry)))
            .await
            .map(drop)
    }

    /// The conversations that got outbound messages queued since the last call; waits for
    /// one if there is none.
    pub(crate) async fn outbox_ready(&self) -> HashSet<ConversationId> {
        self.outbox_ready.take().await
    }

    /// Sends handed to the sender since the last call, to deliver without reading them back
    /// or recording their first attempt; waits for one if there is none.
    pub(crate) async fn handed_sends(&self) -> Vec<OutboxItem> {
        self.handed.take().await
    }

    /// The handed sends there are, without waiting.
    pub(crate) fn handed_sends_ready(&self) -> Vec<OutboxItem> {
        self.handed.take_ready()
    }

    /// Whether a row read from the outbox is a handed send, to be taken with
    /// [`Store::handed_sends`] rather than delivered from the read.
    pub(crate) fn is_handed(&self, row: ulid::Ulid) -> bool {
        self.handed.holds(row)
    }

    /// The conversations that got agent runs queued since the last call; waits for one if
    /// there is none.
    pub(crate) async fn runs_ready(&self) -> HashSet<ConversationId> {
        self.runs_ready.take().await
    }

    /// True while the writer accepts work.
    pub fn is_writable(&self) -> bool {
        !self.commands.is_closed() && !self.sync_failed.is_cancelled()
    }

    /// Completes when the disk failed a sync. The store then refuses every write, and only
    /// a restart from what is on disk (which the gateway then does) brings it back.
    pub async fn sync_failed(&self) {
        self.sync_failed.cancelled().await
    }

    pub fn reads(&self) -> &SqlitePool {
        &self.reads
    }
}

/// Keeps each statement's plan whatever values are bound to it (`SQLITE_DBCONFIG_ENABLE_QPSG`).
/// Without it, this SQLite prepares a statement with a bound `LIMIT ?` again at every
/// execution: a third of the read connections' time in the Telegram bench.
async fn stable_plans(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    query_plan_stability(conn, 1).await.map(drop)
}

/// Sets a connection's QPSG setting to `value` (0 or 1; -1 leaves it) and answers the
/// setting after the call.
async fn query_plan_stability(
    conn: &mut SqliteConnection,
    value: std::ffi::c_int,
) -> Result<std::ffi::c_int, sqlx::Error> {
    use libsqlite3_sys::{SQLITE_DBCONFIG_ENABLE_QPSG, SQLITE_OK, sqlite3_db_config};
    let mut handle = conn.lock_handle().await?;
    let mut setting: std::ffi::c_int = -1;
    // SAFETY: the locked handle keeps sqlx's worker off the connection meanwhile, and this
    // option takes an int and a pointer to an int that receives the setting.
    let rc = unsafe {
        sqlite3_db_config(
            handle.as_raw_handle().as_ptr(),
            SQLITE_DBCONFIG_ENABLE_QPSG,
            value,
            &mut setting as *mut std::ffi::c_int,
        )
    };
    if rc == SQLITE_OK {
        Ok(setting)
    } else {
        Err(sqlx::Error::Configuration(
            format!("cannot set query plan stability (SQLite code {rc})").into(),
        ))
    }
}

/// The writer's connection; the database exists and is migrated by now.
fn open_writer(path: &Path) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Commits do not wait for the disk: the syncer makes them durable beside the writer
    // (per `store.synchronous`). SQLite still syncs around checkpoints and WAL restarts.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "temp_store", "memory")?;
    // The writer checkpoints what the checkpointer left over, which lets the WAL restart
    // from its beginning instead of growing under steady load.
    conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    // Pages are read through a mapping rather than a system call each: the writer's index
    // lookups land all over a large database.
    conn.pragma_update(None, "mmap_size", 256 << 20)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Every statement the writer runs stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// SQLite's name for a database's write-ahead log.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn unexpected(written: Written) -> StoreError {
    StoreError::Corrupt(format!("writer answered {written:?} to another request"))
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn from_ms(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

/// Ids as a JSON array, for `json_each(?)`: one bound parameter however many there are.
fn id_list<T: fmt::Display>(ids: impl IntoIterator<Item = T>) -> String {
    let ids: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
    serde_json::Value::from(ids).to_string()
}

fn parse_id<T: FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad id {text:?}")))
}

/// Closes the pool and checkpoints the WAL so the database is one file again.
pub async fn close(reads: SqlitePool, data_dir: &Path) -> Result<(), StoreError> {
    reads.close().await;
    let mut conn = SqliteConnectOptions::new()
        .filename(data_dir.join(DB_FILE))
        .connect()
        .await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// A web-chat message saying "hello" from `ann` in the chat `chat`, for tests.
#[cfg(test)]
pub(crate) fn test_message(chat: &str) -> Event {
    serde_json::from_value(serde_json::json!({
        "schema_version": 1, "id": ulid::Ulid::new().to_string(),
        "occurred_at": "2026-11-21T10:00:00Z",
        "source": {"channel": "webchat", "connection": "webchat"},
        "type": "message.received",
        "data": {"conversation": {"provider_id": chat}, "provider_message_id": "1",
                 "sender": {"provider_id": "ann"}, "text": "hello",
                 "sent_at": "2026-11-21T10:00:00Z"},
    }))
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    async fn open(dir: &Path) -> (Store, WriterHandle) {
        open_with(dir, &StoreConfig::default(), Arc::new(Metrics::new())).await
    }

    async fn open_with(
        dir: &Path,
        config: &StoreConfig,
        metrics: Arc<Metrics>,
    ) -> (Store, WriterHandle) {
        open_queuing(
            dir,
            config,
            metrics,
            moltbot_protocol::inbox::AgentMode::Off,
        )
        .await
    }

    /// A store whose new messages queue agent runs in `mode` (none when off).
    async fn open_queuing(
        dir: &Path,
        config: &StoreConfig,
        metrics: Arc<Metrics>,
        mode: moltbot_protocol::inbox::AgentMode,
    ) -> (Store, WriterHandle) {
        let policy = watch::channel(RunPolicy {
            enabled: mode != moltbot_protocol::inbox::AgentMode::Off,
            default_mode: mode,
            require_mention_in_groups: true,
        });
        Store::open(dir, config, Bus::new(16), metrics, policy.1)
            .await
            .unwrap()
    }

    /// A store whose new messages ask Pi, on autopilot.
    async fn open_autopilot(dir: &Path) -> (Store, WriterHandle) {
        let mode = moltbot_protocol::inbox::AgentMode::Autopilot;
        open_queuing(dir, &StoreConfig::default(), Arc::new(Metrics::new()), mode).await
    }

    fn event(kind: &str, data: serde_json::Value) -> Event {
        serde_json::from_value(json!({
            "schema_version": 1, "id": ulid::Ulid::new().to_string(),
            "occurred_at": "2026-11-21T10:00:00Z",
            "source": {"channel": "webchat", "connection": "webchat"},
            "type": kind, "data": data,
        }))
        .unwrap()
    }

    fn message(provider_message_id: &str, text: &str) -> Event {
        event(
            "message.received",
            json!({"conversation": {"provider_id": "chat"}, "provider_message_id": provider_message_id,
                   "sender": {"provider_id": "ann"}, "text": text,
                   "sent_at": "2026-11-21T10:00:00Z"}),
        )
    }

    /// The conversation a first message (provider id `provider_message_id`) opens.
    async fn conversation(store: &Store, provider_message_id: &str) -> ConversationId {
        let stored = store.ingest(message(provider_message_id, "hello")).await;
        stored.unwrap().conversation_id.unwrap()
    }

    fn outbound(conversation_id: ConversationId, txn: &str, text: &str) -> OutboundMessage {
        OutboundMessage {
            conversation_id,
            txn_id: txn.into(),
            text: text.into(),
        }
    }

    fn syncs(metrics: &Metrics) -> u64 {
        let text = metrics.encode();
        let count = text
            .lines()
            .find_map(|line| line.strip_prefix("gateway_store_sync_duration_seconds_count "))
            .expect("the sync histogram is exported");
        count.trim().parse().unwrap()
    }

    /// With `synchronous: full` a write is answered only after the WAL was synced; with
    /// `normal` nothing is synced per commit.
    #[tokio::test]
    async fn a_write_is_answered_after_its_sync_only_when_full() {
        for (synchronous, synced) in [(Synchronous::Full, true), (Synchronous::Normal, false)] {
            let dir = tempfile::tempdir().unwrap();
            let metrics = Arc::new(Metrics::new());
            let config = StoreConfig {
                synchronous,
                ..StoreConfig::default()
            };
            let (store, writer) = open_with(dir.path(), &config, metrics.clone()).await;
            store.ingest(message("1", "hello")).await.unwrap();
            assert_eq!(syncs(&metrics) > 0, synced, "{synchronous:?}");
            writer.finish().await;
        }
    }

    /// After a failed sync nothing more is taken: the disk may have dropped what it could
    /// not write, so a later sync that succeeds would prove nothing.
    #[tokio::test]
    async fn after_a_failed_sync_every_write_is_refused() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        // The syncer opens the WAL at its first sync; without the file, that sync fails.
        let wal = wal_path(&dir.path().join(DB_FILE));
        std::fs::remove_file(&wal).unwrap();
        assert!(store.is_writable());
        let refused = store.ingest(message("1", "hello")).await;
        assert!(
            matches!(refused, Err(StoreError::NotDurable)),
            "{refused:?}"
        );
        // A sync would work again now; the store must not trust it.
        std::fs::write(&wal, b"").unwrap();
        let refused = store.ingest(message("2", "hello")).await;
        assert!(
            matches!(refused, Err(StoreError::NotDurable)),
            "{refused:?}"
        );
        assert!(!store.is_writable(), "not ready for writes any more");
        assert!(
            store.sync_failed().now_or_never().is_some(),
            "the gateway is told to restart"
        );
        writer.finish().await;
    }

    /// A read on the writer sees what is committed, and one that panics fails alone: the
    /// writer's thread goes on with writes and reads.
    #[tokio::test]
    async fn a_read_on_the_writer_sees_commits_and_a_panicking_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let count = || {
            store.read_on_writer(|conn| {
                Ok(conn.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))?)
            })
        };
        store.ingest(message("1", "hello")).await.unwrap();
        assert_eq!(count().await.unwrap(), 1);

        let panicked = store
            .read_on_writer(|_| -> Result<(), StoreError> { panic!("a read that breaks") })
            .await;
        assert!(
            matches!(panicked, Err(StoreError::ReadOnWriter(_))),
            "{panicked:?}"
        );

        store.ingest(message("2", "again")).await.unwrap();
        assert_eq!(count().await.unwrap(), 2);
        writer.finish().await;
    }

    /// A send into a conversation with nothing else undelivered is written with its first
    /// attempt begun and handed over whole once durable; one queued behind it is not.
    #[tokio::test]
    async fn a_send_with_nothing_ahead_is_handed_over_with_its_attempt_recorded() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = conversation(&store, "5").await;
        let (first, _) = store
            .send(outbound(conversation, "t1", "first"))
            .await
            .unwrap();
        assert!(store.is_handed(first.0), "held for the sender once durable");
        let handed = store.handed_sends().now_or_never().expect("ready at once");
        assert_eq!(handed.len(), 1);
        let item = &handed[0];
        assert_eq!((item.id, item.message_id), (first.0, first));
        assert_eq!((item.chat.as_str(), item.text.as_str()), ("chat", "first"));
        assert_eq!((item.attempts, item.begun, item.in_doubt), (1, true, false));
        assert!(!store.is_handed(first.0), "taken once");

        let (second, _) = store
            .send(outbound(conversation, "t2", "second"))
            .await
            .unwrap();
        assert!(!store.is_handed(second.0));
        assert!(
            store.handed_sends().now_or_never().is_none(),
            "queued, not handed"
        );
        // Read back, the handed row is in doubt: after a crash nobody knows whether it went.
        let due = store.due_outbox(10, &HashSet::new()).await.unwrap();
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(
            (due[0].id, due[0].in_doubt, due[0].more),
            (first.0, true, true)
        );
        assert_eq!(due[0].attempts, 1);
        writer.finish().await;
    }

    /// Where the provider's numbering stood for a message: every part of what was stored
    /// before it and of itself, and what came after it only when asked for the whole chat.
    #[tokio::test]
    async fn the_last_provider_id_counts_every_part_and_what_came_after_only_if_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = conversation(&store, "7").await;
        let reply = |txn: &str| outbound(conversation, txn, "reply");
        let part_sent = |message: MessageId, part: u32, id: &str, last: bool| {
            store.outbox_step(outbox::OutboxWrite::PartSent {
                row: message.0,
                message_id: message,
                part,
                provider_message_id: Some(id.into()),
                last,
            })
        };
        // An earlier reply in two parts: the message row keeps only the first one's id.
        let (earlier, _) = store.send(reply("t1")).await.unwrap();
        part_sent(earlier, 0, "8", false).await.unwrap();
        part_sent(earlier, 1, "9", true).await.unwrap();
        store.ingest(message("5", "older, late")).await.unwrap();
        let (later, _) = store.send(reply("t2")).await.unwrap();
        store
            .ingest(message("12", "after the reply"))
            .await
            .unwrap();
        let last = |whole_chat| store.last_provider_id(later, whole_chat);
        assert_eq!(last(false).await.unwrap(), Some(9));
        assert_eq!(last(true).await.unwrap(), Some(12));
        part_sent(later, 0, "13", false).await.unwrap();
        assert_eq!(last(false).await.unwrap(), Some(13), "its own parts count");
        writer.finish().await;
    }

    /// A run queued when the store opens (left by an earlier process) has its first start
    /// in each process counted, durably; runs queued while the store is open cost nothing.
    #[tokio::test]
    async fn a_left_over_run_counts_one_restart_per_opening() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::default();
        let open_answering = || {
            let metrics = Arc::new(Metrics::new());
            let autopilot = moltbot_protocol::inbox::AgentMode::Autopilot;
            open_queuing(dir.path(), &config, metrics, autopilot)
        };
        let (store, writer) = open_answering().await;
        store.ingest(message("1", "hello")).await.unwrap();
        let queued = store.queued_runs(8, &HashSet::new()).await.unwrap();
        let run = queued.first().expect("a run queued").id;
        assert_eq!(store.count_restart(run).await.unwrap(), None, "queued now");
        writer.finish().await;
        for restarts in 1..=2 {
            let (store, writer) = open_answering().await;
            assert_eq!(store.count_restart(run).await.unwrap(), Some(restarts));
            assert_eq!(
                store.count_restart(run).await.unwrap(),
                None,
                "once per opening"
            );
            writer.finish().await;
        }

        // A count whose write fails is still owed at the run's next start.
        let (store, writer) = open_answering().await;
        let other = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER refuse_counts BEFORE UPDATE OF attempts ON agent_runs
                 BEGIN SELECT RAISE(ABORT, 'the disk says no'); END;",
            )
            .unwrap();
        assert!(store.count_restart(run).await.is_err());
        other.execute_batch("DROP TRIGGER refuse_counts").unwrap();
        assert_eq!(store.count_restart(run).await.unwrap(), Some(3));
        writer.finish().await;
    }

    /// The sender's two queries use `outbox_due`, which since migration 0009 holds only the
    /// rows still to deliver: a condition that stopped matching the index's would make them
    /// read every row ever sent instead.
    #[tokio::test]
    async fn the_senders_queries_use_the_partial_index_of_rows_to_deliver() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, writer) = open(dir.path()).await;
        writer.finish().await;
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        let partial: bool = conn
            .query_row(
                "SELECT partial FROM pragma_index_list('outbox') WHERE name = 'outbox_due'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(partial);
        for query in [outbox::DUE_ROWS, outbox::NEXT_RETRY] {
            let mut plan = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
                .unwrap();
            let nulls = vec![rusqlite::types::Value::Null; plan.parameter_count()];
            let steps: Vec<String> = plan
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let uses_it = |step: &String| step.contains("INDEX outbox_due ");
            assert!(steps.iter().any(uses_it), "{query}\n{steps:#?}");
        }
    }

    /// At most `max_pending` requests of a connection wait for the tenant at once; waiting
    /// senders are still reminded of their code, and a decision frees a place.
    #[tokio::test]
    async fn pairing_requests_beyond_the_cap_wait_until_one_is_decided() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let ask = |connection: &str, sender: &str| PairingAsk {
            connection: connection.into(),
            sender_id: sender.into(),
            chat_id: sender.into(),
            display_name: None,
            handle: None,
            max_pending: 2,
        };
        let code = |ticket| match ticket {
            PairingTicket::SendCode { code, .. } => code,
            other => panic!("no code but {other:?}"),
        };
        let first = code(store.request_pairing(ask("tg", "1")).await.unwrap());
        code(store.request_pairing(ask("tg", "2")).await.unwrap());
        let third = ask("tg", "3");
        assert_eq!(
            store.request_pairing(third.clone()).await.unwrap(),
            PairingTicket::Full
        );
        assert_eq!(
            code(store.request_pairing(ask("tg", "1")).await.unwrap()),
            first,
            "a waiting sender keeps its place"
        );
        code(store.request_pairing(ask("other", "3")).await.unwrap());
        store.decide_pairing(&first, false).await.unwrap();
        code(store.request_pairing(third).await.unwrap());
        let pending = store.pairing_requests().await.unwrap();
        let pending = pending.iter().filter(|r| r.connection == "tg");
        let pending_state = moltbot_protocol::inbox::PairingState::Pending;
        assert_eq!(pending.filter(|r| r.state == pending_state).count(), 2);
        writer.finish().await;
    }

    /// Every new message, either way, moves its conversation up and becomes its preview;
    /// only inbound ones count as unread.
    #[tokio::test]
    async fn a_new_message_either_way_bumps_its_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = conversation(&store, "1").await;
        let received = store.conversation(conversation).await.unwrap();
        assert_eq!(received.unread_count, 1);
        assert_eq!(received.last_message_preview.as_deref(), Some("hello"));
        let reply = "é".repeat(200);
        store
            .send(outbound(conversation, "t1", &reply))
            .await
            .unwrap();
        let answered = store.conversation(conversation).await.unwrap();
        assert_eq!(answered.unread_count, 1, "a reply is not unread");
        assert_eq!(
            answered.last_message_preview,
            Some("é".repeat(140)),
            "the first 140 characters"
        );
        assert!(answered.last_message_at >= received.last_message_at);
        assert!(answered.updated_at >= received.updated_at);
        writer.finish().await;
    }

    /// A message of `chat`'s history: `text` from ann, sent at `sent_at`.
    fn from_history(provider_message_id: &str, text: &str, sent_at: &str) -> Event {
        event(
            "message.received",
            json!({"conversation": {"provider_id": "chat"}, "provider_message_id": provider_message_id,
                   "sender": {"provider_id": "ann"}, "text": text, "sent_at": sent_at}),
        )
    }

    fn webchat() -> Source {
        Source {
            channel: moltbot_protocol::Channel::Webchat,
            connection: "webchat".into(),
        }
    }

    /// Oldest first, with whether each was backfilled.
    async fn texts(store: &Store, conversation: ConversationId) -> Vec<(String, bool)> {
        let page = store.messages(conversation, None, 100).await.unwrap();
        (page.items.into_iter().rev())
            .map(|m| (m.text.unwrap_or_default(), m.backfilled))
            .collect()
    }

    /// A page of history: each message goes where the time it was sent puts it, the one
    /// received live is known, and none counts as unread, moves the preview or starts a
    /// run; Pi's next prompt has them in order.
    #[tokio::test]
    async fn backfilled_messages_go_where_their_time_puts_them_and_ask_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open_autopilot(dir.path()).await;
        let conversation = conversation(&store, "10").await;
        let live = store.conversation(conversation).await.unwrap();
        let runs = store.queued_runs(10, &HashSet::new()).await.unwrap();
        assert_eq!(runs.len(), 1, "the live message asks Pi");
        let day = agent::UsageDay::of(jiff::Timestamp::now());
        let context = async || {
            let start = store.run_start(runs[0].id, day, 50, None).await.unwrap();
            start.unwrap().context
        };
        let rev_before = context().await.history_rev;

        let page = vec![
            message("10", "hello"),
            from_history("9", "nine", "2026-11-20T09:00:00Z"),
            from_history("8", "eight", "2026-11-20T08:00:00Z"),
        ];
        let outcome = store.backfill(webchat(), "chat".into(), page.clone());
        assert_eq!(outcome.await.unwrap().known, [true, false, false]);
        assert_eq!(
            texts(&store, conversation).await,
            [
                ("eight".to_string(), true),
                ("nine".to_string(), true),
                ("hello".to_string(), false)
            ]
        );
        let after = store.conversation(conversation).await.unwrap();
        assert_eq!(after.unread_count, 1, "history is not unread");
        assert_eq!(after.last_message_preview.as_deref(), Some("hello"));
        assert_eq!(after.last_message_at, live.last_message_at);
        assert_eq!(
            store.queued_runs(10, &HashSet::new()).await.unwrap().len(),
            1,
            "history asks Pi nothing"
        );
        let again = store.backfill(webchat(), "chat".into(), page).await;
        assert_eq!(again.unwrap().known, [true; 3]);

        let context = context().await;
        assert!(
            context.history_rev > rev_before,
            "Pi's copy of the history is read again"
        );
        let history: Vec<String> = (context.history.iter())
            .map(|h| h.text.to_string())
            .collect();
        assert_eq!(history, ["eight", "nine", "hello"], "in the order sent");

        // Counting again (a deletion does) still leaves history out.
        let deleted = event(
            "message.deleted",
            json!({"conversation": "chat", "provider_message_id": "9"}),
        );
        store.ingest(deleted).await.unwrap();
        let recounted = store.conversation(conversation).await.unwrap();
        assert_eq!(recounted.unread_count, 1);
        writer.finish().await;
    }

    /// A message newer than the conversation's last (missed while the gateway was away)
    /// becomes its preview; a message of another chat, an invalid one, or an event that is
    /// not a message, makes the whole page refused and stores nothing.
    #[tokio::test]
    async fn history_newer_than_the_last_message_moves_the_preview_and_a_bad_page_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let conversation = conversation(&store, "10").await;
        let before = store.conversation(conversation).await.unwrap();
        let missed = from_history("11", "missed", "2099-01-01T00:00:00Z");
        let outcome = store.backfill(webchat(), "chat".into(), vec![missed]);
        assert_eq!(outcome.await.unwrap().known, [false]);
        let after = store.conversation(conversation).await.unwrap();
        assert_eq!(after.last_message_preview.as_deref(), Some("missed"));
        assert!(
            after.last_message_at.unwrap() <= jiff::Timestamp::now(),
            "a time past the store's clock is taken as now"
        );
        assert!(after.last_message_at > before.last_message_at);
        assert_eq!(after.unread_count, 1);
        assert_eq!(
            texts(&store, conversation).await.last().unwrap().0,
            "missed"
        );

        let mut other_chat = from_history("3", "elsewhere", "2026-11-20T08:00:00Z");
        if let moltbot_protocol::event::EventBody::MessageReceived(m) = &mut other_chat.body {
            m.conversation.provider_id = "other".into();
        }
        let reaction = event(
            "reaction.added",
            json!({"conversation": "chat", "provider_message_id": "10",
                   "sender": {"provider_id": "ann"}, "emoji": "👍"}),
        );
        let mut empty = from_history("5", "gone", "2026-11-20T08:00:00Z");
        if let moltbot_protocol::event::EventBody::MessageReceived(m) = &mut empty.body {
            m.text = None;
        }
        for bad in [other_chat, reaction, empty] {
            let page = vec![from_history("4", "fine", "2026-11-20T08:00:00Z"), bad];
            let refused = store.backfill(webchat(), "chat".into(), page).await;
            assert!(
                matches!(refused, Err(StoreError::Invalid(_))),
                "{refused:?}"
            );
        }
        assert_eq!(texts(&store, conversation).await.len(), 2, "nothing stored");
        writer.finish().await;
    }

    /// A message read from the history before its live delivery came arrives with that
    /// delivery if it is still the conversation's newest: unread, asking Pi, no longer
    /// marked backfilled. An older one stays history, and the run keeps answering the
    /// newer message. A second delivery is a duplicate.
    #[tokio::test]
    async fn a_live_delivery_of_the_newest_backfilled_message_makes_it_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open_autopilot(dir.path()).await;
        let conversation = conversation(&store, "1").await;
        store.mark_read(conversation, None).await.unwrap();
        let none_busy = HashSet::new();
        let trigger = async || {
            let runs = store.queued_runs(10, &none_busy).await.unwrap();
            assert_eq!(runs.len(), 1, "one run per conversation at a time");
            runs[0].trigger_message_id
        };
        let first = trigger().await;
        // Ids minted a few milliseconds apart sort as they were minted.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let old = from_history("2", "old", "2026-11-20T10:00:00Z");
        let late = from_history("3", "late", &jiff::Timestamp::now().to_string());
        let page = vec![late.clone(), old.clone()];
        store
            .backfill(webchat(), "chat".into(), page)
            .await
            .unwrap();
        assert_eq!(
            store.conversation(conversation).await.unwrap().unread_count,
            0
        );

        let stays = store.ingest(old).await.unwrap();
        assert!(stays.duplicate, "not the newest: it stays history");
        let old_message = store.message(stays.message_id.unwrap()).await.unwrap();
        assert!(old_message.backfilled);
        assert_eq!(
            store.conversation(conversation).await.unwrap().unread_count,
            0
        );
        assert_eq!(trigger().await, first);

        let arrived = store.ingest(late.clone()).await.unwrap();
        assert!(!arrived.duplicate);
        let message = store.message(arrived.message_id.unwrap()).await.unwrap();
        assert!(!message.backfilled);
        let after = store.conversation(conversation).await.unwrap();
        assert_eq!(after.unread_count, 1);
        assert_eq!(after.last_message_preview.as_deref(), Some("late"));
        assert_eq!(trigger().await, message.id, "it answers the arrival");

        let again = store.ingest(late).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(
            store.conversation(conversation).await.unwrap().unread_count,
            1
        );
        writer.finish().await;
    }

    /// Pi's history starts after the rolling summary's last message, by id: a message
    /// backfilled from before it stays out, one from after it is in; an older summary
    /// never replaces a newer one.
    #[tokio::test]
    async fn the_history_after_a_summary_starts_past_its_last_message() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open_autopilot(dir.path()).await;
        // Ids minted a few milliseconds apart sort as they were minted.
        let a_moment = || tokio::time::sleep(std::time::Duration::from_millis(5));
        let mut ids = Vec::new();
        for (n, text) in ["one", "two"].into_iter().enumerate() {
            let stored = store.ingest(message(&n.to_string(), text)).await.unwrap();
            ids.push(stored.message_id.unwrap());
        }
        let conversation = store.message(ids[0]).await.unwrap().conversation_id;
        store
            .save_summary(conversation, "one, two".into(), ids[1])
            .await
            .unwrap();
        store
            .save_summary(conversation, "one".into(), ids[0])
            .await
            .unwrap();
        a_moment().await;
        let page = vec![
            from_history("9", "long ago", "2020-01-01T00:00:00Z"),
            from_history("10", "meanwhile", &jiff::Timestamp::now().to_string()),
        ];
        store
            .backfill(webchat(), "chat".into(), page)
            .await
            .unwrap();
        a_moment().await;
        store.ingest(message("3", "three")).await.unwrap();
        let run = store.queued_runs(10, &HashSet::new()).await.unwrap()[0].id;
        let day = agent::UsageDay::of(jiff::Timestamp::now());
        let context = store.run_start(run, day, 50, None).await.unwrap().unwrap();
        assert_eq!(context.context.summary, Some(("one, two".into(), ids[1])));
        let history: Vec<String> = (context.context.history.iter())
            .map(|h| h.text.to_string())
            .collect();
        assert_eq!(history, ["meanwhile", "three"]);
        writer.finish().await;
    }

    /// Migration 0010 moves each rolling summary's end from a seq to the id of the message
    /// there (the newest at or before it); a summary with no message left is dropped.
    #[tokio::test]
    async fn a_summary_ends_at_the_id_of_the_message_its_seq_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut before = SqliteConnectOptions::new()
            .filename(dir.path().join(DB_FILE))
            .create_if_missing(true)
            .foreign_keys(false)
            .connect()
            .await
            .unwrap();
        sqlx::migrate!("./migrations")
            .run_to(9, &mut before)
            .await
            .unwrap();
        for conversation in ["c", "gone"] {
            sqlx::query(
                "INSERT INTO conversations (id, channel, connection, provider_id, kind, last_activity_at, created_at, updated_at)
                 VALUES (?, 'webchat', 'webchat', ?, 'dm', 0, 0, 0)",
            )
            .bind(conversation)
            .bind(conversation)
            .execute(&mut before)
            .await
            .unwrap();
        }
        for (seq, id) in [(1, "m1"), (2, "m2"), (4, "m4")] {
            sqlx::query(
                "INSERT INTO messages (seq, id, event_id, conversation_id, direction, status, dedupe_key, sent_at, received_at)
                 VALUES (?, ?, 'e', 'c', 'inbound', 'received', ?, 0, 0)",
            )
            .bind(seq)
            .bind(id)
            .bind(id)
            .execute(&mut before)
            .await
            .unwrap();
        }
        for (conversation, up_to_seq) in [("c", 3), ("gone", 9)] {
            sqlx::query(
                "INSERT INTO conversation_summaries (conversation_id, summary, up_to_seq, updated_at)
                 VALUES (?, 'so far', ?, 0)",
            )
            .bind(conversation)
            .bind(up_to_seq)
            .execute(&mut before)
            .await
            .unwrap();
        }
        before.close().await.unwrap();
        let (store, writer) = open(dir.path()).await;
        let summaries: Vec<(String, String)> =
            sqlx::query_as("SELECT conversation_id, up_to FROM conversation_summaries")
                .fetch_all(&store.reads)
                .await
                .unwrap();
        assert_eq!(summaries, [("c".to_string(), "m2".to_string())]);
        writer.finish().await;
    }

    /// No CHECK constraint makes SQLite build a temporary b-tree per insert (a constant `IN`
    /// list of more than two values does; migration 0007 rewrote those in place), the
    /// rewritten checks still refuse what they refused, and rows from before stay whole.
    #[tokio::test]
    async fn checks_build_no_temporary_tables_and_still_refuse_unknown_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut before = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(false)
            .connect()
            .await
            .unwrap();
        sqlx::migrate!("./migrations")
            .run_to(6, &mut before)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO agent_runs (id, conversation_id, trigger_message_id, mode, state, created_at)
             VALUES ('before', 'c', 'm', 'draft', 'succeeded', 0)",
        )
        .execute(&mut before)
        .await
        .unwrap();
        before.close().await.unwrap();
        let (_, writer) = open(dir.path()).await;
        writer.finish().await;
        let conn = rusqlite::Connection::open(&path).unwrap();
        let kept: String = conn
            .query_row(
                "SELECT state FROM agent_runs WHERE id = 'before'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kept, "succeeded");
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table'
                 AND name NOT LIKE 'sqlite%' AND sql NOT LIKE 'CREATE VIRTUAL%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(tables.len() > 10, "{tables:?}");
        for table in &tables {
            // EXPLAIN compiles every check of an insert without running it.
            let mut explain = conn
                .prepare(&format!("EXPLAIN INSERT INTO \"{table}\" DEFAULT VALUES"))
                .unwrap();
            let opcodes: Vec<String> = explain
                .query_map([], |r| r.get(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                !opcodes.iter().any(|op| op == "OpenEphemeral"),
                "an insert into {table} builds a temporary table"
            );
        }
        conn.pragma_update(None, "foreign_keys", false).unwrap();
        let run = |state: &str| {
            conn.execute(
                "INSERT INTO agent_runs (id, conversation_id, trigger_message_id, mode, state, created_at)
                 VALUES (?, 'c', 'm', 'draft', ?, 0)",
                [state, state],
            )
        };
        for state in [
            "queued",
            "awaiting_approval",
            "succeeded",
            "failed",
            "rejected",
            "budget_exhausted",
        ] {
            run(state).unwrap();
        }
        let refused = run("running").unwrap_err().to_string();
        assert!(refused.contains("CHECK constraint failed"), "{refused}");
        let outbox = |kind: &str, state: &str| {
            conn.execute(
                "INSERT INTO outbox (id, message_id, kind, conversation_id, connection, state,
                                     next_attempt_at, created_at, updated_at)
                 VALUES (?1 || ?2, 'm', ?1, 'c', 'tg', ?2, 0, 0, 0)",
                [kind, state],
            )
        };
        outbox("unreact", "sending").unwrap();
        assert!(outbox("forward", "queued").is_err());
        assert!(outbox("send", "lost").is_err());
    }

    #[tokio::test]
    async fn read_connections_keep_their_query_plans() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let mut conn = store.reads().acquire().await.unwrap();
        assert_eq!(query_plan_stability(&mut conn, -1).await.unwrap(), 1);
        drop(conn);
        writer.finish().await;
    }

    /// Messages are indexed for search just before their group commits, but an edit's
    /// index trigger removes the old text from the index, so an edit committed in the same
    /// group as the message it edits must have that message indexed first.
    #[tokio::test]
    async fn an_edit_in_the_group_of_its_message_keeps_the_search_index_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path()).await;
        let pairs = (0..64).map(|n| {
            let received = message(&n.to_string(), "dinner at eight");
            let edited = event(
                "message.edited",
                json!({"conversation": "chat", "provider_message_id": n.to_string(),
                       "text": "dinner at nine", "edited_at": "2026-11-21T10:01:00Z"}),
            );
            // Queued one after the other, so most pairs share a group.
            let store = store.clone();
            async move {
                let (message, edit) = tokio::join!(store.ingest(received), store.ingest(edited));
                assert!(message.unwrap().message_id.is_some());
                assert!(
                    edit.unwrap().message_id.is_some(),
                    "the edit found its message"
                );
            }
        });
        futures_util::future::join_all(pairs).await;
        assert!(
            store
                .search("eight", None, None, 100)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert_eq!(
            store
                .search("nine", None, None, 100)
                .await
                .unwrap()
                .items
                .len(),
            64
        );
        writer.finish().await;

        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute(
            "INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')",
            [],
        )
        .expect("the search index matches the messages");
    }
}
