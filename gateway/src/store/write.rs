//! The writer task: group commit, per-write savepoints, publish after commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use moltbot_protocol::event::{ConversationRef, EventBody, MessageReceived, Participant, Source};
use moltbot_protocol::ids::{ConversationId, IdentityId, MessageId};
use moltbot_protocol::inbox::ServerFrame;
use moltbot_protocol::{Event, EventId};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use ulid::Generator;

use super::read;
use super::{
    AuditEntry, IngestOutcome, Job, OutboundMessage, StoreError, Write, Written, ms, parse_id,
};
use crate::bus::Bus;
use crate::metrics::Metrics;

/// What a committed write changed, for the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    MessageCreated(MessageId),
    MessageUpdated(MessageId),
    ConversationUpdated(ConversationId),
}

pub(super) struct Writer {
    conn: SqliteConnection,
    bus: Bus,
    metrics: Arc<Metrics>,
    outbox_ready: Arc<Notify>,
    max_batch: usize,
    ids: Generator,
}

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        bus: Bus,
        metrics: Arc<Metrics>,
        outbox_ready: Arc<Notify>,
        max_batch: usize,
    ) -> Self {
        Self {
            conn,
            bus,
            metrics,
            outbox_ready,
            max_batch,
            ids: Generator::new(),
        }
    }

    /// Runs until the queue is closed (every sender gone, or `stop`) and drained.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut closed = false;
        loop {
            tokio::select! {
                // recv_many is cancel-safe: a lost race loses no job.
                received = rx.recv_many(&mut batch, self.max_batch) => {
                    if received == 0 {
                        break;
                    }
                    self.commit_group(&mut batch).await;
                }
                _ = stop.cancelled(), if !closed => {
                    // Refuse new writes; what is already queued is still committed.
                    rx.close();
                    closed = true;
                }
            }
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the writer connection failed");
        }
        tracing::debug!("store writer finished");
    }

    async fn commit_group(&mut self, batch: &mut Vec<Job>) {
        let started = Instant::now();
        let size = batch.len();
        let mut results = Vec::with_capacity(size);
        let mut changes = BTreeSet::new();
        let mut queued_outbound = false;
        let committed = async {
            let mut tx = self.conn.begin().await?;
            let mut ingested = 0u64;
            for job in batch.iter() {
                let mut sp = tx.begin().await?;
                let mut job_changes = Vec::new();
                match apply(&mut sp, &mut self.ids, &job.write, &mut job_changes).await {
                    Ok(written) => {
                        sp.commit().await?;
                        if matches!(written, Written::Ingested(IngestOutcome { duplicate: false, message_id: Some(_), .. })) {
                            ingested += 1;
                        }
                        if matches!(written, Written::Sent { duplicate: false, .. }) {
                            queued_outbound = true;
                        }
                        changes.extend(job_changes);
                        results.push(Ok(written));
                    }
                    Err(e) => {
                        sp.rollback().await?;
                        results.push(Err(e));
                    }
                }
            }
            if ingested > 0 {
                // One usage row per group keeps metering off the per-message path.
                sqlx::query("INSERT INTO usage_events (id, kind, quantity, at) VALUES (?, 'message_ingested', ?, ?)")
                    .bind(new_id(&mut self.ids).to_string())
                    .bind(ingested as i64)
                    .bind(ms(Timestamp::now()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;

        self.metrics.store_commit(size, started.elapsed());
        match committed {
            Ok(()) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
                if queued_outbound {
                    self.outbox_ready.notify_one();
                }
                self.publish(changes).await;
            }
            Err(e) => {
                tracing::error!(error = %e, writes = size, "store commit failed; nothing in the group was stored");
                self.metrics.store_commit_failed();
                for job in batch.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(StoreError::Database(sqlx::Error::Protocol(format!(
                            "commit failed: {e}"
                        )))));
                }
            }
        }
    }

    /// Builds the views of what changed, once, and hands them to every subscriber.
    async fn publish(&mut self, changes: BTreeSet<Change>) {
        if changes.is_empty() || !self.bus.has_subscribers() {
            return;
        }
        for change in changes {
            let frame = match change {
                Change::MessageCreated(id) => read::message(&mut self.conn, id)
                    .await
                    .map(|m| (m.conversation_id, ServerFrame::MessageCreated(m))),
                Change::MessageUpdated(id) => read::message(&mut self.conn, id)
                    .await
                    .map(|m| (m.conversation_id, ServerFrame::MessageUpdated(m))),
                Change::ConversationUpdated(id) => read::conversation(&mut self.conn, id)
                    .await
                    .map(|c| (c.id, ServerFrame::ConversationUpdated(c))),
            };
            match frame {
                Ok((conversation_id, frame)) => self.bus.publish(conversation_id, frame),
                Err(e) => tracing::warn!(error = %e, ?change, "cannot build a view to publish"),
            }
        }
    }
}

fn new_id(ids: &mut Generator) -> ulid::Ulid {
    // The generator only fails when a millisecond's random space is exhausted.
    ids.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

async fn apply(
    conn: &mut SqliteConnection,
    ids: &mut Generator,
    write: &Write,
    changes: &mut Vec<Change>,
) -> Result<Written, StoreError> {
    let now = ms(Timestamp::now());
    match write {
        Write::Ingest(event) => ingest(conn, ids, event, now, changes)
            .await
            .map(Written::Ingested),
        Write::Send(message) => send(conn, ids, message, now, changes).await,
        Write::SetPinned {
            conversation_id,
            pinned,
        } => {
            let done =
                sqlx::query("UPDATE conversations SET pinned = ?, updated_at = ? WHERE id = ?")
                    .bind(*pinned)
                    .bind(now)
                    .bind(conversation_id.to_string())
                    .execute(&mut *conn)
                    .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound("conversation"));
            }
            changes.push(Change::ConversationUpdated(*conversation_id));
            Ok(Written::Done)
        }
        Write::MarkRead {
            conversation_id,
            up_to,
        } => {
            mark_read(conn, *conversation_id, *up_to, now).await?;
            changes.push(Change::ConversationUpdated(*conversation_id));
            Ok(Written::Done)
        }
        Write::MarkDelivered {
            message_id,
            provider_message_id,
        } => {
            let id = message_id.to_string();
            sqlx::query(
                "UPDATE outbox SET state = 'sent', provider_message_id = ?, updated_at = ?, attempts = attempts + 1 WHERE message_id = ?",
            )
            .bind(provider_message_id)
            .bind(now)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
            let done = sqlx::query("UPDATE messages SET status = 'sent', provider_message_id = coalesce(?, provider_message_id) WHERE id = ?")
                .bind(provider_message_id)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound("message"));
            }
            changes.push(Change::MessageUpdated(*message_id));
            Ok(Written::Done)
        }
        Write::Audit(entry) => {
            audit(conn, ids, entry, now).await?;
            Ok(Written::Done)
        }
    }
}

async fn audit(
    conn: &mut SqliteConnection,
    ids: &mut Generator,
    entry: &AuditEntry,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(new_id(ids).to_string())
    .bind(now)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(entry.detail.as_ref().map(|d| d.to_string()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn ingest(
    conn: &mut SqliteConnection,
    ids: &mut Generator,
    event: &Event,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<IngestOutcome, StoreError> {
    let key = event.dedupe_key();
    if let EventBody::MessageReceived(message) = &event.body {
        let existing: Option<(String, String, String)> = sqlx::query_as(
            "SELECT id, conversation_id, event_id FROM messages WHERE dedupe_key = ?",
        )
        .bind(key.as_str())
        .fetch_optional(&mut *conn)
        .await?;
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
        )
        .await?;
        return Ok(IngestOutcome {
            event_id: event.id,
            message_id: Some(message_id),
            conversation_id: Some(conversation_id),
            duplicate: false,
        });
    }

    let inserted = sqlx::query(
        "INSERT INTO events (id, type, dedupe_key, channel, connection, body, occurred_at, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(event.id.to_string())
    .bind(event.event_type().as_str())
    .bind(key.as_str())
    .bind(event.source.channel.as_str())
    .bind(&event.source.connection)
    .bind(event.to_json())
    .bind(ms(event.occurred_at))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        let event_id: String = sqlx::query_scalar("SELECT id FROM events WHERE dedupe_key = ?")
            .bind(key.as_str())
            .fetch_one(&mut *conn)
            .await?;
        return Ok(IngestOutcome {
            event_id: parse_id(&event_id)?,
            message_id: None,
            conversation_id: None,
            duplicate: true,
        });
    }
    let (message_id, conversation_id) = apply_effect(conn, ids, event, now, changes).await?;
    Ok(IngestOutcome {
        event_id: event.id,
        message_id,
        conversation_id,
        duplicate: false,
    })
}

/// What a non-message event does to the inbox. Edits and deletions of messages the store
/// never saw, and event types whose consumers come later, are kept in the log only.
async fn apply_effect(
    conn: &mut SqliteConnection,
    ids: &mut Generator,
    event: &Event,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<(Option<MessageId>, Option<ConversationId>), StoreError> {
    let conn_name = &event.source.connection;
    match &event.body {
        EventBody::MessageEdited(edit) => {
            let row: Option<(String, String)> = sqlx::query_as(
                "UPDATE messages SET text = ?, edited_at = ?
                 WHERE provider_message_id = ? AND deleted_at IS NULL AND conversation_id =
                    (SELECT id FROM conversations WHERE connection = ? AND provider_id = ?)
                 RETURNING id, conversation_id",
            )
            .bind(&edit.text)
            .bind(ms(edit.edited_at))
            .bind(&edit.provider_message_id)
            .bind(conn_name)
            .bind(&edit.conversation)
            .fetch_optional(&mut *conn)
            .await?;
            touched_message(row, changes)
        }
        EventBody::MessageDeleted(deletion) => {
            let row: Option<(String, String)> = sqlx::query_as(
                "UPDATE messages SET text = NULL, deleted_at = ?
                 WHERE provider_message_id = ? AND deleted_at IS NULL AND conversation_id =
                    (SELECT id FROM conversations WHERE connection = ? AND provider_id = ?)
                 RETURNING id, conversation_id",
            )
            .bind(now)
            .bind(&deletion.provider_message_id)
            .bind(conn_name)
            .bind(&deletion.conversation)
            .fetch_optional(&mut *conn)
            .await?;
            sqlx::query("DELETE FROM attachments WHERE message_id = ?")
                .bind(row.as_ref().map(|r| r.0.as_str()))
                .execute(&mut *conn)
                .await?;
            let touched = touched_message(row, changes)?;
            if let (_, Some(conversation_id)) = touched {
                recount_unread(conn, conversation_id).await?;
                changes.push(Change::ConversationUpdated(conversation_id));
            }
            Ok(touched)
        }
        EventBody::ConversationCreated(conversation)
        | EventBody::ConversationUpdated(conversation) => {
            let id = upsert_conversation(conn, ids, &event.source, conversation, now).await?;
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
async fn insert_received(
    conn: &mut SqliteConnection,
    ids: &mut Generator,
    event_id: EventId,
    source: &Source,
    message: &MessageReceived,
    dedupe_key: &str,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<(MessageId, ConversationId), StoreError> {
    let conversation_id =
        upsert_conversation(conn, ids, source, &message.conversation, now).await?;
    let sender_id = upsert_identity(conn, ids, source, &message.sender, now).await?;
    let message_id = MessageId(new_id(ids));
    let id_text = message_id.to_string();
    sqlx::query(
        "INSERT INTO messages (id, event_id, conversation_id, direction, status, sender_id, provider_message_id,
                               text, reply_to, dedupe_key, sent_at, received_at)
         VALUES (?, ?, ?, 'inbound', 'received', ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&id_text)
    .bind(event_id.to_string())
    .bind(conversation_id.to_string())
    .bind(sender_id.to_string())
    .bind(&message.provider_message_id)
    .bind(&message.text)
    .bind(&message.reply_to)
    .bind(dedupe_key)
    .bind(ms(message.sent_at))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    for (position, attachment) in message.attachments.iter().enumerate() {
        sqlx::query(
            "INSERT INTO attachments (message_id, position, kind, mime_type, size_bytes, file_name, provider_file_id)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id_text)
        .bind(position as i64)
        .bind(serde_json::to_value(attachment.kind).ok().and_then(|v| v.as_str().map(str::to_string)))
        .bind(&attachment.mime_type)
        .bind(attachment.size_bytes.map(|s| s as i64))
        .bind(&attachment.file_name)
        .bind(&attachment.provider_file_id)
        .execute(&mut *conn)
        .await?;
    }
    changes.push(Change::MessageCreated(message_id));
    changes.push(Change::ConversationUpdated(conversation_id));
    Ok((message_id, conversation_id))
}

/// Finds the conversation by its provider id, creating it or refreshing its title.
async fn upsert_conversation(
    conn: &mut SqliteConnection,
    ids: &mut Generator,
    source: &Source,
    conversation: &ConversationRef,
    now: i64,
) -> Result<ConversationId, StoreError> {
    let found: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT id, title FROM conversations WHERE connection = ? AND provider_id = ?",
    )
    .bind(&source.connection)
    .bind(&conversation.provider_id)
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        Some((id, title)) => {
            if conversation.title.is_some() && conversation.title != title {
                sqlx::query(
                    "UPDATE conversations SET title = ?, kind = ?, updated_at = ? WHERE id = ?",
                )
                .bind(&conversation.title)
                .bind(conversation.kind.as_str())
                .bind(now)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            }
            parse_id(&id)
        }
        None => {
            let id = ConversationId(new_id(ids));
            sqlx::query(
                "INSERT INTO conversations (id, channel, connection, provider_id, kind, title, last_activity_at, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id.to_string())
            .bind(source.channel.as_str())
            .bind(&source.connection)
            .bind(&conversation.provider_id)
            .bind(conversation.kind.as_str())
            .bind(&conversation.title)
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(id)
        }
    }
}

async fn upsert_identity(
    conn: &mut SqliteConnection,
    ids: &mut Generator,
    source: &Source,
    person: &Participant,
    now: i64,
) -> Result<IdentityId, StoreError> {
    let found: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, display_name, handle FROM identities WHERE connection = ? AND provider_id = ?",
    )
    .bind(&source.connection)
    .bind(&person.provider_id)
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        Some((id, name, handle)) => {
            let renamed = person.display_name.is_some() && person.display_name != name;
            let rehandled = person.handle.is_some() && person.handle != handle;
            if renamed || rehandled {
                sqlx::query(
                    "UPDATE identities SET display_name = coalesce(?, display_name), handle = coalesce(?, handle) WHERE id = ?",
                )
                .bind(&person.display_name)
                .bind(&person.handle)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            }
            parse_id(&id)
        }
        None => {
            let id = IdentityId(new_id(ids));
            sqlx::query(
                "INSERT INTO identities (id, channel, connection, provider_id, display_name, handle, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id.to_string())
            .bind(source.channel.as_str())
            .bind(&source.connection)
            .bind(&person.provider_id)
            .bind(&person.display_name)
            .bind(&person.handle)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(id)
        }
    }
}

/// Dedupe key of an API send: the txn id is scoped to its conversation.
fn send_dedupe_key(message: &OutboundMessage) -> String {
    format!("t1:{}:{}", message.conversation_id, message.txn_id)
}

async fn send(
    conn: &mut SqliteConnection,
    ids: &mut Generator,
    message: &OutboundMessage,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<Written, StoreError> {
    let key = send_dedupe_key(message);
    let existing: Option<String> =
        sqlx::query_scalar("SELECT id FROM messages WHERE dedupe_key = ?")
            .bind(&key)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(id) = existing {
        return Ok(Written::Sent {
            message_id: parse_id(&id)?,
            duplicate: true,
        });
    }
    let connection: Option<String> =
        sqlx::query_scalar("SELECT connection FROM conversations WHERE id = ?")
            .bind(message.conversation_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    let connection = connection.ok_or(StoreError::NotFound("conversation"))?;
    let message_id = MessageId(new_id(ids));
    let id_text = message_id.to_string();
    sqlx::query(
        "INSERT INTO messages (id, event_id, conversation_id, direction, status, text, txn_id, dedupe_key, sent_at, received_at)
         VALUES (?, ?, ?, 'outbound', 'pending', ?, ?, ?, ?, ?)",
    )
    .bind(&id_text)
    .bind(EventId(new_id(ids)).to_string())
    .bind(message.conversation_id.to_string())
    .bind(&message.text)
    .bind(&message.txn_id)
    .bind(&key)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (message_id, connection, state, next_attempt_at, created_at, updated_at)
         VALUES (?, ?, 'queued', ?, ?, ?)",
    )
    .bind(&id_text)
    .bind(&connection)
    .bind(now)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    audit(
        conn,
        ids,
        &AuditEntry {
            actor: "inbox-api".into(),
            action: "message.send".into(),
            target: Some(id_text),
            detail: Some(serde_json::json!({ "conversation_id": message.conversation_id, "txn_id": message.txn_id })),
        },
        now,
    )
    .await?;
    changes.push(Change::MessageCreated(message_id));
    changes.push(Change::ConversationUpdated(message.conversation_id));
    Ok(Written::Sent {
        message_id,
        duplicate: false,
    })
}

async fn mark_read(
    conn: &mut SqliteConnection,
    conversation_id: ConversationId,
    up_to: Option<MessageId>,
    now: i64,
) -> Result<(), StoreError> {
    let cid = conversation_id.to_string();
    let marker: Option<String> = match up_to {
        Some(id) => {
            let belongs: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?")
                    .bind(id.to_string())
                    .bind(&cid)
                    .fetch_optional(&mut *conn)
                    .await?;
            if belongs.is_none() {
                return Err(StoreError::Invalid(format!(
                    "message {id} is not in conversation {conversation_id}"
                )));
            }
            Some(id.to_string())
        }
        None => {
            sqlx::query_scalar("SELECT max(id) FROM messages WHERE conversation_id = ?")
                .bind(&cid)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    // Never move the marker backwards: an older client's late "read" must not resurrect unread.
    let done = sqlx::query(
        "UPDATE conversations SET read_up_to = max(coalesce(read_up_to, ''), coalesce(?, '')), updated_at = ? WHERE id = ?",
    )
    .bind(&marker)
    .bind(now)
    .bind(&cid)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("conversation"));
    }
    recount_unread(conn, conversation_id).await
}

async fn recount_unread(
    conn: &mut SqliteConnection,
    conversation_id: ConversationId,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE conversations SET unread_count = (
            SELECT count(*) FROM messages m
            WHERE m.conversation_id = conversations.id AND m.direction = 'inbound'
              AND m.deleted_at IS NULL AND m.id > coalesce(conversations.read_up_to, ''))
         WHERE id = ?",
    )
    .bind(conversation_id.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
