//! The tenant's store: one SQLite database in WAL mode.
//!
//! All writes go through one writer task that commits them in groups (one transaction and
//! one fsync for everything queued), answers each caller only after its group committed,
//! and only then publishes the changes on the bus. Reads use a separate pool of read-only
//! connections, which WAL lets run beside the writer.

mod read;
mod write;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use moltbot_protocol::ids::{ConversationId, MessageId};
use moltbot_protocol::{Event, EventId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use thiserror::Error;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::config::{StoreConfig, Synchronous};
use crate::metrics::Metrics;

pub use read::{ConversationFilter, OutboxItem};

const DB_FILE: &str = "gateway.db";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(String),
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

/// A message sent through the inbox API (`PUT .../send/{txn_id}`).
#[derive(Clone, Debug)]
pub struct OutboundMessage {
    pub conversation_id: ConversationId,
    pub txn_id: String,
    pub text: String,
}

#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// One change for the writer.
#[derive(Debug)]
pub(crate) enum Write {
    Ingest(Box<Event>),
    Send(OutboundMessage),
    SetPinned {
        conversation_id: ConversationId,
        pinned: bool,
    },
    MarkRead {
        conversation_id: ConversationId,
        up_to: Option<MessageId>,
    },
    MarkDelivered {
        message_id: MessageId,
        provider_message_id: Option<String>,
    },
    Audit(AuditEntry),
}

/// What the writer answers for one [`Write`].
#[derive(Debug)]
pub(crate) enum Written {
    Ingested(IngestOutcome),
    Sent {
        message_id: MessageId,
        duplicate: bool,
    },
    Done,
}

struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

#[derive(Clone)]
pub struct Store {
    reads: SqlitePool,
    jobs: mpsc::Sender<Job>,
    /// Woken after a commit that queued outbound messages.
    outbox_ready: Arc<Notify>,
}

/// The running writer.
pub struct WriterHandle {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl WriterHandle {
    /// Stops taking new writes (later callers get [`StoreError::Closed`]), commits every
    /// write already accepted, and returns when the writer has ended. It does not wait for
    /// [`Store`] handles to be dropped, so a stalled client cannot hold shutdown open.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "store writer task failed");
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
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory")
            .log_statements(tracing::log::LevelFilter::Trace);
        let synchronous = match config.synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        };
        let mut writer = base
            .clone()
            .create_if_missing(true)
            .synchronous(synchronous)
            // Checkpoints run in the writer between groups; keep the WAL small on disk.
            .pragma("wal_autocheckpoint", "4000")
            .connect()
            .await?;
        sqlx::migrate!("./migrations").run(&mut writer).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(config.read_connections)
            .min_connections(1)
            .connect_with(base.read_only(true))
            .await?;

        let (jobs, rx) = mpsc::channel(config.max_batch * 4);
        let outbox_ready = Arc::new(Notify::new());
        let task = write::Writer::new(writer, bus, metrics, outbox_ready.clone(), config.max_batch);
        let stop = CancellationToken::new();
        let handle = tokio::spawn(task.run(rx, stop.clone()));
        Ok((
            Store {
                reads,
                jobs,
                outbox_ready,
            },
            WriterHandle { task: handle, stop },
        ))
    }

    async fn submit(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { write, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a canonical event once per dedupe key.
    pub async fn ingest(&self, event: Event) -> Result<IngestOutcome, StoreError> {
        match self.submit(Write::Ingest(Box::new(event))).await? {
            Written::Ingested(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Records an outbound message and its outbox row; the same txn id returns the same message.
    pub async fn send(&self, message: OutboundMessage) -> Result<(MessageId, bool), StoreError> {
        match self.submit(Write::Send(message)).await? {
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
        self.submit(Write::SetPinned {
            conversation_id,
            pinned,
        })
        .await
        .map(drop)
    }

    pub async fn mark_read(
        &self,
        conversation_id: ConversationId,
        up_to: Option<MessageId>,
    ) -> Result<(), StoreError> {
        self.submit(Write::MarkRead {
            conversation_id,
            up_to,
        })
        .await
        .map(drop)
    }

    pub async fn mark_delivered(
        &self,
        message_id: MessageId,
        provider_message_id: Option<String>,
    ) -> Result<(), StoreError> {
        self.submit(Write::MarkDelivered {
            message_id,
            provider_message_id,
        })
        .await
        .map(drop)
    }

    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.submit(Write::Audit(entry)).await.map(drop)
    }

    /// Resolves after a commit that queued outbound messages (or at once if one happened
    /// since the last call).
    pub async fn outbox_ready(&self) {
        self.outbox_ready.notified().await
    }

    /// True while the writer accepts work.
    pub fn is_writable(&self) -> bool {
        !self.jobs.is_closed()
    }

    pub fn reads(&self) -> &SqlitePool {
        &self.reads
    }
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
