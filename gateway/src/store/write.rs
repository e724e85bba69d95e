//! The writer: one thread owns the only write connection and commits writes in groups (one
//! transaction and one fsync for everything queued); a group in which a write fails is run
//! again with a savepoint per write, so the bad write fails alone. Each caller is answered
//! only after its group committed, and only then are the changes handed to the publisher.
//!
//! The connection is a plain synchronous one on its own thread: a write is several small
//! statements, and an async driver would hand each of them to a worker thread and wait for
//! the answer, which on a small machine cost more than the statements themselves.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use moltbot_protocol::event::{ConversationRef, EventBody, MessageReceived, Participant, Source};
use moltbot_protocol::ids::{ConversationId, IdentityId, MessageId};
use moltbot_protocol::{Event, EventId};
use rusqlite::{Connection, OptionalExtension, Params, Row, params};
use tokio::sync::{Notify, mpsc};
use ulid::Generator;

use super::publish::{Change, Changes};
use super::{
    AuditEntry, IngestOutcome, Job, OutboundMessage, StoreError, Write, Written, ms, parse_id,
};
use crate::bus::Bus;
use crate::metrics::Metrics;

/// What the writer's queue carries.
pub(super) enum Command {
    Write(Job),
    /// Refuse later writes, commit what is queued, and end.
    Stop,
}

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) bus: Bus,
    pub(super) published: mpsc::Sender<Changes>,
    /// Wakes the checkpointer; a full queue means it is awake already.
    pub(super) wal_grew: mpsc::Sender<()>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) outbox_ready: Arc<Notify>,
    pub(super) max_batch: usize,
    pub(super) ids: Generator,
    /// Every message with `seq` up to this is in the full-text index.
    pub(super) indexed_up_to: i64,
}

impl Writer {
    /// Runs on a blocking thread until the queue is closed (every sender gone, or
    /// [`Command::Stop`]) and drained.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = queue.blocking_recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Write(job) => batch.push(job),
                    // What is already queued is still committed: the queue drains, then ends.
                    Command::Stop => queue.close(),
                }
                if batch.len() < self.max_batch {
                    next = queue.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_group(&mut batch);
            }
        }
        tracing::debug!("store writer finished");
    }

    fn commit_group(&mut self, batch: &mut Vec<Job>) {
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
            Ok(group) => {
                let _ = self.wal_grew.try_send(());
                for (job, result) in batch.drain(..).zip(group.results) {
                    let _ = job.reply.send(result);
                }
                if group.queued_outbound {
                    self.outbox_ready.notify_one();
                }
                // Views are built only for someone who listens; a slow publisher holds the
                // writer back rather than dropping frames a stream has been promised.
                if !group.changes.is_empty() && self.bus.has_subscribers() {
                    let _ = self.published.blocking_send(group.changes);
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
        let mut tx = self.conn.transaction()?;
        let mut group = Group {
            results: Vec::with_capacity(batch.len()),
            changes: Changes::new(),
            queued_outbound: false,
        };
        let mut ingested = 0i64;
        let mut indexed_up_to = self.indexed_up_to;
        for job in batch {
            if !job.write.only_adds_messages() {
                indexed_up_to = index_new_messages(&tx, indexed_up_to)?;
            }
            let mut job_changes = Vec::new();
            let result = match isolation {
                Isolation::Group => match apply(&tx, &mut self.ids, &job.write, &mut job_changes) {
                    Ok(written) => Ok(written),
                    // Dropping the transaction rolls it back.
                    Err(_) => return Err(GroupFailed::WriteFailed),
                },
                Isolation::PerWrite => {
                    let sp = tx.savepoint()?;
                    let result = apply(&sp, &mut self.ids, &job.write, &mut job_changes);
                    if result.is_ok() {
                        sp.commit()?;
                    } else {
                        sp.finish()?;
                    }
                    result
                }
            };
            if let Ok(written) = &result {
                match written {
                    Written::Ingested(IngestOutcome {
                        duplicate: false,
                        message_id: Some(_),
                        ..
                    }) => ingested += 1,
                    Written::Sent {
                        duplicate: false, ..
                    } => group.queued_outbound = true,
                    _ => {}
                }
                group.changes.extend(job_changes);
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
        tx.commit()?;
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
    queued_outbound: bool,
}

/// The highest message `seq`; every message up to it is in the full-text index once the
/// writer starts (each group indexes its messages before it commits).
pub(super) fn last_message_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(seq), 0) FROM messages", [], |r| {
        r.get(0)
    })
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

pub(super) fn new_id(ids: &mut Generator) -> ulid::Ulid {
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

fn apply(
    conn: &Connection,
    ids: &mut Generator,
    write: &Write,
    changes: &mut Vec<Change>,
) -> Result<Written, StoreError> {
    let now = ms(Timestamp::now());
    match write {
        Write::Ingest(event) => ingest(conn, ids, event, now, changes).map(Written::Ingested),
        Write::Send(message) => send(conn, ids, message, now, changes),
        Write::SetPinned {
            conversation_id,
            pinned,
        } => {
            let updated = execute(
                conn,
                "UPDATE conversations SET pinned = ?, updated_at = ? WHERE id = ?",
                params![pinned, now, conversation_id.to_string()],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound("conversation"));
            }
            changes.push(Change::ConversationUpdated(*conversation_id));
            Ok(Written::Done)
        }
        Write::MarkRead {
            conversation_id,
            up_to,
        } => {
            mark_read(conn, *conversation_id, *up_to, now)?;
            changes.push(Change::ConversationUpdated(*conversation_id));
            Ok(Written::Done)
        }
        Write::MarkDelivered {
            message_id,
            provider_message_id,
        } => {
            let id = message_id.to_string();
            execute(
                conn,
                "UPDATE outbox SET state = 'sent', provider_message_id = ?, updated_at = ?, attempts = attempts + 1
                 WHERE message_id = ?",
                params![provider_message_id, now, id],
            )?;
            let updated = execute(
                conn,
                "UPDATE messages SET status = 'sent', provider_message_id = coalesce(?, provider_message_id)
                 WHERE id = ?",
                params![provider_message_id, id],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound("message"));
            }
            changes.push(Change::MessageUpdated(*message_id));
            Ok(Written::Done)
        }
        Write::Audit(entry) => {
            audit(conn, ids, entry, now)?;
            Ok(Written::Done)
        }
    }
}

fn audit(
    conn: &Connection,
    ids: &mut Generator,
    entry: &AuditEntry,
    now: i64,
) -> Result<(), StoreError> {
    execute(
        conn,
        "INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
        params![
            new_id(ids).to_string(),
            now,
            entry.actor,
            entry.action,
            entry.target,
            entry.detail.as_ref().map(|d| d.to_string()),
        ],
    )?;
    Ok(())
}

fn ingest(
    conn: &Connection,
    ids: &mut Generator,
    event: &Event,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<IngestOutcome, StoreError> {
    let key = event.dedupe_key();
    if let EventBody::MessageReceived(message) = &event.body {
        let existing = query_optional(
            conn,
            "SELECT id, conversation_id, event_id FROM messages WHERE dedupe_key = ?",
            [key.as_str()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        if let Some((message_id, conversation_id, event_id)) = existing {
            return Ok(IngestOutcome {
                event_id: parse_id(&event_id)?,
                message_id: Some(parse_id(&message_id)?),
                conversation_id: Some(parse_id(&conversation_id)?),
                duplicate: true,
            });
        }
        let (message_id, conversation_id) = insert_received(
            conn,
            ids,
            event.id,
            &event.source,
            message,
            key.as_str(),
            now,
            changes,
        )?;
        return Ok(IngestOutcome {
            event_id: event.id,
            message_id: Some(message_id),
            conversation_id: Some(conversation_id),
            duplicate: false,
        });
    }

    let inserted = execute(
        conn,
        "INSERT INTO events (id, type, dedupe_key, channel, connection, body, occurred_at, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
        params![
            event.id.to_string(),
            event.event_type().as_str(),
            key.as_str(),
            event.source.channel.as_str(),
            event.source.connection,
            event.to_json(),
            ms(event.occurred_at),
            now,
        ],
    )?;
    if inserted == 0 {
        let event_id: String = conn
            .prepare_cached("SELECT id FROM events WHERE dedupe_key = ?")?
            .query_row([key.as_str()], |r| r.get(0))?;
        return Ok(IngestOutcome {
            event_id: parse_id(&event_id)?,
            message_id: None,
            conversation_id: None,
            duplicate: true,
        });
    }
    let (message_id, conversation_id) = apply_effect(conn, ids, event, now, changes)?;
    Ok(IngestOutcome {
        event_id: event.id,
        message_id,
        conversation_id,
        duplicate: false,
    })
}

/// What a non-message event does to the inbox. Edits and deletions of messages the store
/// never saw, and event types whose consumers come later, are kept in the log only.
fn apply_effect(
    conn: &Connection,
    ids: &mut Generator,
    event: &Event,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<(Option<MessageId>, Option<ConversationId>), StoreError> {
    let connection = &event.source.connection;
    let id_pair = |r: &Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
    match &event.body {
        EventBody::MessageEdited(edit) => {
            let row = query_optional(
                conn,
                "UPDATE messages SET text = ?, edited_at = ?
                 WHERE provider_message_id = ? AND deleted_at IS NULL AND conversation_id =
                    (SELECT id FROM conversations WHERE connection = ? AND provider_id = ?)
                 RETURNING id, conversation_id",
                params![
                    edit.text,
                    ms(edit.edited_at),
                    edit.provider_message_id,
                    connection,
                    edit.conversation,
                ],
                id_pair,
            )?;
            touched_message(row, changes)
        }
        EventBody::MessageDeleted(deletion) => {
            let row = query_optional(
                conn,
                "UPDATE messages SET text = NULL, deleted_at = ?
                 WHERE provider_message_id = ? AND deleted_at IS NULL AND conversation_id =
                    (SELECT id FROM conversations WHERE connection = ? AND provider_id = ?)
                 RETURNING id, conversation_id",
                params![
                    now,
                    deletion.provider_message_id,
                    connection,
                    deletion.conversation,
                ],
                id_pair,
            )?;
            execute(
                conn,
                "DELETE FROM attachments WHERE message_id = ?",
                [row.as_ref().map(|r| r.0.as_str())],
            )?;
            let touched = touched_message(row, changes)?;
            if let (_, Some(conversation_id)) = touched {
                recount_unread(conn, conversation_id)?;
                changes.push(Change::ConversationUpdated(conversation_id));
            }
            Ok(touched)
        }
        EventBody::ConversationCreated(conversation)
        | EventBody::ConversationUpdated(conversation) => {
            let id = upsert_conversation(conn, ids, &event.source, conversation, now)?;
            changes.push(Change::ConversationUpdated(id));
            Ok((None, Some(id)))
        }
        _ => Ok((None, None)),
    }
}

fn touched_message(
    row: Option<(String, String)>,
    changes: &mut Vec<Change>,
) -> Result<(Option<MessageId>, Option<ConversationId>), StoreError> {
    match row {
        Some((message_id, conversation_id)) => {
            let message_id = parse_id(&message_id)?;
            changes.push(Change::MessageUpdated(message_id));
            Ok((Some(message_id), Some(parse_id(&conversation_id)?)))
        }
        None => Ok((None, None)),
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_received(
    conn: &Connection,
    ids: &mut Generator,
    event_id: EventId,
    source: &Source,
    message: &MessageReceived,
    dedupe_key: &str,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<(MessageId, ConversationId), StoreError> {
    let conversation_id = upsert_conversation(conn, ids, source, &message.conversation, now)?;
    let sender_id = upsert_identity(conn, ids, source, &message.sender, now)?;
    let message_id = MessageId(new_id(ids));
    let id_text = message_id.to_string();
    execute(
        conn,
        "INSERT INTO messages (id, event_id, conversation_id, direction, status, sender_id, provider_message_id,
                               text, reply_to, dedupe_key, sent_at, received_at)
         VALUES (?, ?, ?, 'inbound', 'received', ?, ?, ?, ?, ?, ?, ?)",
        params![
            id_text,
            event_id.to_string(),
            conversation_id.to_string(),
            sender_id.to_string(),
            message.provider_message_id,
            message.text,
            message.reply_to,
            dedupe_key,
            ms(message.sent_at),
            now,
        ],
    )?;
    for (position, attachment) in message.attachments.iter().enumerate() {
        execute(
            conn,
            "INSERT INTO attachments (message_id, position, kind, mime_type, size_bytes, file_name, provider_file_id)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            params![
                id_text,
                position as i64,
                attachment.kind.as_str(),
                attachment.mime_type,
                attachment.size_bytes.map(|s| s as i64),
                attachment.file_name,
                attachment.provider_file_id,
            ],
        )?;
    }
    changes.push(Change::MessageCreated(message_id));
    changes.push(Change::ConversationUpdated(conversation_id));
    Ok((message_id, conversation_id))
}

/// Finds the conversation by its provider id, creating it or refreshing its title.
fn upsert_conversation(
    conn: &Connection,
    ids: &mut Generator,
    source: &Source,
    conversation: &ConversationRef,
    now: i64,
) -> Result<ConversationId, StoreError> {
    let found = query_optional(
        conn,
        "SELECT id, title FROM conversations WHERE connection = ? AND provider_id = ?",
        params![source.connection, conversation.provider_id],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
    )?;
    match found {
        Some((id, title)) => {
            if conversation.title.is_some() && conversation.title != title {
                execute(
                    conn,
                    "UPDATE conversations SET title = ?, kind = ?, updated_at = ? WHERE id = ?",
                    params![conversation.title, conversation.kind.as_str(), now, id],
                )?;
            }
            parse_id(&id)
        }
        None => {
            let id = ConversationId(new_id(ids));
            execute(
                conn,
                "INSERT INTO conversations (id, channel, connection, provider_id, kind, title, last_activity_at,
                                            created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    id.to_string(),
                    source.channel.as_str(),
                    source.connection,
                    conversation.provider_id,
                    conversation.kind.as_str(),
                    conversation.title,
                    now,
                    now,
                    now,
                ],
            )?;
            Ok(id)
        }
    }
}

fn upsert_identity(
    conn: &Connection,
    ids: &mut Generator,
    source: &Source,
    person: &Participant,
    now: i64,
) -> Result<IdentityId, StoreError> {
    let found = query_optional(
        conn,
        "SELECT id, display_name, handle FROM identities WHERE connection = ? AND provider_id = ?",
        params![source.connection, person.provider_id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        },
    )?;
    match found {
        Some((id, name, handle)) => {
            let renamed = person.display_name.is_some() && person.display_name != name;
            let rehandled = person.handle.is_some() && person.handle != handle;
            if renamed || rehandled {
                execute(
                    conn,
                    "UPDATE identities SET display_name = coalesce(?, display_name), handle = coalesce(?, handle)
                     WHERE id = ?",
                    params![person.display_name, person.handle, id],
                )?;
            }
            parse_id(&id)
        }
        None => {
            let id = IdentityId(new_id(ids));
            execute(
                conn,
                "INSERT INTO identities (id, channel, connection, provider_id, display_name, handle, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    id.to_string(),
                    source.channel.as_str(),
                    source.connection,
                    person.provider_id,
                    person.display_name,
                    person.handle,
                    now,
                ],
            )?;
            Ok(id)
        }
    }
}

/// Dedupe key of an API send: the txn id is scoped to its conversation.
fn send_dedupe_key(message: &OutboundMessage) -> String {
    format!("t1:{}:{}", message.conversation_id, message.txn_id)
}

fn send(
    conn: &Connection,
    ids: &mut Generator,
    message: &OutboundMessage,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<Written, StoreError> {
    let key = send_dedupe_key(message);
    let existing = query_optional(
        conn,
        "SELECT id FROM messages WHERE dedupe_key = ?",
        [&key],
        |r| r.get::<_, String>(0),
    )?;
    if let Some(id) = existing {
        return Ok(Written::Sent {
            message_id: parse_id(&id)?,
            duplicate: true,
        });
    }
    let conversation_id = message.conversation_id.to_string();
    let connection = query_optional(
        conn,
        "SELECT connection FROM conversations WHERE id = ?",
        [&conversation_id],
        |r| r.get::<_, String>(0),
    )?
    .ok_or(StoreError::NotFound("conversation"))?;
    let message_id = MessageId(new_id(ids));
    let id_text = message_id.to_string();
    execute(
        conn,
        "INSERT INTO messages (id, event_id, conversation_id, direction, status, text, txn_id, dedupe_key,
                               sent_at, received_at)
         VALUES (?, ?, ?, 'outbound', 'pending', ?, ?, ?, ?, ?)",
        params![
            id_text,
            EventId(new_id(ids)).to_string(),
            conversation_id,
            message.text,
            message.txn_id,
            key,
            now,
            now,
        ],
    )?;
    execute(
        conn,
        "INSERT INTO outbox (message_id, connection, state, next_attempt_at, created_at, updated_at)
         VALUES (?, ?, 'queued', ?, ?, ?)",
        params![id_text, connection, now, now, now],
    )?;
    audit(
        conn,
        ids,
        &AuditEntry {
            actor: "inbox-api".into(),
            action: "message.send".into(),
            target: Some(id_text),
            detail: Some(serde_json::json!({
                "conversation_id": message.conversation_id,
                "txn_id": message.txn_id,
            })),
        },
        now,
    )?;
    changes.push(Change::MessageCreated(message_id));
    changes.push(Change::ConversationUpdated(message.conversation_id));
    Ok(Written::Sent {
        message_id,
        duplicate: false,
    })
}

fn mark_read(
    conn: &Connection,
    conversation_id: ConversationId,
    up_to: Option<MessageId>,
    now: i64,
) -> Result<(), StoreError> {
    let cid = conversation_id.to_string();
    let marker: Option<String> = match up_to {
        Some(id) => {
            let belongs = query_optional(
                conn,
                "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?",
                params![id.to_string(), cid],
                |r| r.get::<_, i64>(0),
            )?;
            if belongs.is_none() {
                return Err(StoreError::Invalid(format!(
                    "message {id} is not in conversation {conversation_id}"
                )));
            }
            Some(id.to_string())
        }
        None => conn
            .prepare_cached("SELECT max(id) FROM messages WHERE conversation_id = ?")?
            .query_row([&cid], |r| r.get(0))?,
    };
    // Never move the marker backwards: an older client's late "read" must not resurrect unread.
    let updated = execute(
        conn,
        "UPDATE conversations SET read_up_to = max(coalesce(read_up_to, ''), coalesce(?, '')), updated_at = ?
         WHERE id = ?",
        params![marker, now, cid],
    )?;
    if updated == 0 {
        return Err(StoreError::NotFound("conversation"));
    }
    recount_unread(conn, conversation_id)
}

fn recount_unread(conn: &Connection, conversation_id: ConversationId) -> Result<(), StoreError> {
    execute(
        conn,
        "UPDATE conversations SET unread_count = (
            SELECT count(*) FROM messages m
            WHERE m.conversation_id = conversations.id AND m.direction = 'inbound'
              AND m.deleted_at IS NULL AND m.id > coalesce(conversations.read_up_to, ''))
         WHERE id = ?",
        [conversation_id.to_string()],
    )?;
    Ok(())
}
