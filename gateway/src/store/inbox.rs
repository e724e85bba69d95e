//! Writes of the inbox itself: canonical events in, pages of a chat's history, messages sent
//! through the API, pins and read markers, the audit log.

use moltbot_protocol::Event;
use moltbot_protocol::event::{
    ConnectionStateChanged, ConversationRef, EventBody, MessageReceived, Participant, Source,
};
use moltbot_protocol::ids::{ConversationId, IdentityId, MessageId};
use moltbot_protocol::inbox::AgentMode;
use rusqlite::{Row, params};

use super::channels::{self, Receipt};
use super::publish::Change;
use super::write::Ctx;
use super::{
    AuditEntry, BackfillOutcome, IngestOutcome, StoreError, Written, agent, amend, ms, outbox,
    parse_id,
};

#[derive(Debug)]
pub(crate) enum InboxWrite {
    /// A canonical event; with a receipt, a redelivery of the same provider update is a no-op.
    Ingest {
        event: Box<Event>,
        receipt: Option<Receipt>,
    },
    /// Messages read from one chat's history: see [`super::Store::backfill`].
    Backfill {
        source: Source,
        chat: String,
        events: Vec<Event>,
    },
    Send(OutboundMessage),
    SetPinned {
        conversation_id: ConversationId,
        pinned: bool,
    },
    MarkRead {
        conversation_id: ConversationId,
        up_to: Option<MessageId>,
    },
    Audit(AuditEntry),
}

/// A message sent through the inbox API (`PUT .../send/{txn_id}`).
#[derive(Clone, Debug)]
pub struct OutboundMessage {
    pub conversation_id: ConversationId,
    pub txn_id: String,
    pub text: String,
}

pub(super) fn apply(cx: &mut Ctx<'_>, write: &InboxWrite) -> Result<Written, StoreError> {
    match write {
        InboxWrite::Ingest { event, receipt } => {
            if let Some(receipt) = receipt
                && !channels::record_receipt(cx, receipt, Some(event.id))?
            {
                // The provider delivered this update before; what it produced is stored.
                return Ok(Written::Ingested(IngestOutcome {
                    event_id: event.id,
                    message_id: None,
                    conversation_id: None,
                    duplicate: true,
                }));
            }
            ingest(cx, event).map(Written::Ingested)
        }
        InboxWrite::Backfill {
            source,
            chat,
            events,
        } => backfill(cx, source, chat, events).map(Written::Backfilled),
        InboxWrite::Send(message) => send(cx, message),
        InboxWrite::SetPinned {
            conversation_id,
            pinned,
        } => {
            let updated = cx.execute(
                "UPDATE conversations SET pinned = ?, updated_at = ? WHERE id = ?",
                params![pinned, cx.now, conversation_id.to_string()],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound("conversation"));
            }
            cx.changed(Change::ConversationUpdated(*conversation_id));
            Ok(Written::Done)
        }
        InboxWrite::MarkRead {
            conversation_id,
            up_to,
        } => {
            mark_read(cx, *conversation_id, *up_to)?;
            cx.changed(Change::ConversationUpdated(*conversation_id));
            Ok(Written::Done)
        }
        InboxWrite::Audit(entry) => {
            audit(cx, entry)?;
            Ok(Written::Done)
        }
    }
}

pub(super) fn audit(cx: &mut Ctx<'_>, entry: &AuditEntry) -> Result<(), StoreError> {
    let id = cx.new_id().to_string();
    cx.execute(
        "INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
        params![
            id,
            cx.now,
            entry.actor,
            entry.action,
            entry.target,
            entry.detail.as_ref().map(|d| d.to_string()),
        ],
    )?;
    Ok(())
}

fn ingest(cx: &mut Ctx<'_>, event: &Event) -> Result<IngestOutcome, StoreError> {
    let key = event.dedupe_key();
    if let EventBody::MessageReceived(message) = &event.body {
        if let Some(stored) = stored_message(cx, key.as_str())? {
            let (message_id, conversation_id) =
                (parse_id(&stored.id)?, parse_id(&stored.conversation_id)?);
            let arrived = stored.backfilled
                && arrive_late(cx, event, message, &stored, message_id, conversation_id)?;
            return Ok(IngestOutcome {
                event_id: parse_id(&stored.event_id)?,
                message_id: Some(message_id),
                conversation_id: Some(conversation_id),
                duplicate: !arrived,
            });
        }
        let (message_id, conversation_id) =
            insert_received(cx, event, message, key.as_str(), Arrival::Live)?;
        return Ok(IngestOutcome {
            event_id: event.id,
            message_id: Some(message_id),
            conversation_id: Some(conversation_id),
            duplicate: false,
        });
    }

    let inserted = log_event(cx, event, &key)?;
    if !inserted {
        let event_id: String = cx
            .conn
            .prepare_cached("SELECT id FROM events WHERE dedupe_key = ?")?
            .query_row([key.as_str()], |r| r.get(0))?;
        return Ok(IngestOutcome {
            event_id: parse_id(&event_id)?,
            message_id: None,
            conversation_id: None,
            duplicate: true,
        });
    }
    let (message_id, conversation_id) = apply_effect(cx, event)?;
    Ok(IngestOutcome {
        event_id: event.id,
        message_id,
        conversation_id,
        duplicate: false,
    })
}

/// Keeps a non-message event in the log once per dedupe key; false when it was there.
pub(super) fn log_event(
    cx: &Ctx<'_>,
    event: &Event,
    key: &moltbot_protocol::dedupe::DedupeKey,
) -> Result<bool, StoreError> {
    let inserted = cx.execute(
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
            cx.now,
        ],
    )?;
    Ok(inserted == 1)
}

/// What a non-message event does to the inbox. Edits, deletions and reactions of messages
/// the store never saw, and event types whose consumers come later, are kept in the log only.
fn apply_effect(
    cx: &mut Ctx<'_>,
    event: &Event,
) -> Result<(Option<MessageId>, Option<ConversationId>), StoreError> {
    let connection = &event.source.connection;
    let id_pair = |r: &Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
    if matches!(
        event.body,
        EventBody::MessageEdited(_) | EventBody::MessageDeleted(_)
    ) {
        cx.index_before_changing_text()?;
    }
    match &event.body {
        EventBody::MessageEdited(edit) => {
            let row = cx.query_optional(
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
            touched_message(cx, row)
        }
        EventBody::MessageDeleted(deletion) => {
            let row = cx.query_optional(
                "UPDATE messages SET text = NULL, deleted_at = ?
                 WHERE provider_message_id = ? AND deleted_at IS NULL AND conversation_id =
                    (SELECT id FROM conversations WHERE connection = ? AND provider_id = ?)
                 RETURNING id, conversation_id",
                params![
                    cx.now,
                    deletion.provider_message_id,
                    connection,
                    deletion.conversation,
                ],
                id_pair,
            )?;
            cx.execute(
                "DELETE FROM attachments WHERE message_id = ?",
                [row.as_ref().map(|r| r.0.as_str())],
            )?;
            let touched = touched_message(cx, row)?;
            if let (_, Some(conversation_id)) = touched {
                recount_unread(cx, conversation_id)?;
                cx.changed(Change::ConversationUpdated(conversation_id));
            }
            Ok(touched)
        }
        EventBody::ReactionAdded(reaction) | EventBody::ReactionRemoved(reaction) => {
            let row = cx.query_optional(
                "SELECT id, conversation_id FROM messages
                 WHERE provider_message_id = ? AND conversation_id =
                    (SELECT id FROM conversations WHERE connection = ? AND provider_id = ?)",
                params![
                    reaction.provider_message_id,
                    connection,
                    reaction.conversation
                ],
                id_pair,
            )?;
            if let Some((message_id, _)) = &row {
                let present = matches!(event.body, EventBody::ReactionAdded(_));
                amend::set_reaction(
                    cx,
                    message_id,
                    &reaction.sender.provider_id,
                    &reaction.emoji,
                    present,
                    ms(event.occurred_at),
                )?;
            }
            touched_message(cx, row)
        }
        EventBody::ConversationCreated(conversation)
        | EventBody::ConversationUpdated(conversation) => {
            let (id, _) = upsert_conversation(cx, &event.source, conversation)?;
            cx.changed(Change::ConversationUpdated(id));
            Ok((None, Some(id)))
        }
        EventBody::ConnectionStateChanged(ConnectionStateChanged { state, reason }) => {
            channels::set_connection_state(cx, &event.source, *state, reason.as_deref())?;
            Ok((None, None))
        }
        _ => Ok((None, None)),
    }
}

fn touched_message(
    cx: &mut Ctx<'_>,
    row: Option<(String, String)>,
) -> Result<(Option<MessageId>, Option<ConversationId>), StoreError> {
    match row {
        Some((message_id, conversation_id)) => {
            let message_id = parse_id(&message_id)?;
            cx.changed(Change::MessageUpdated(message_id));
            Ok((Some(message_id), Some(parse_id(&conversation_id)?)))
        }
        None => Ok((None, None)),
    }
}

/// How a message reached the store.
#[derive(Clone, Copy)]
enum Arrival {
    /// As it was sent: it counts as unread, moves its conversation up and may start a run.
    Live,
    /// From the chat's history, with the time it was sent: see [`super::Store::backfill`].
    Backfilled { sent_at: i64 },
}

fn insert_received(
    cx: &mut Ctx<'_>,
    event: &Event,
    message: &MessageReceived,
    dedupe_key: &str,
    arrival: Arrival,
) -> Result<(MessageId, ConversationId), StoreError> {
    let source = &event.source;
    let (conversation_id, agent_mode) = upsert_conversation(cx, source, &message.conversation)?;
    let sender_id = upsert_identity(cx, source, &message.sender)?;
    let message_id = match arrival {
        Arrival::Live => MessageId(cx.new_id()),
        // Ids sort as the inbox lists messages: a message from the history takes its place
        // by the time it was sent, not by when the store learnt of it.
        Arrival::Backfilled { sent_at } => MessageId(ulid::Ulid::from_parts(
            u64::try_from(sent_at).unwrap_or(0),
            cx.new_id().random(),
        )),
    };
    let id_text = message_id.to_string();
    cx.execute(
        "INSERT INTO messages (id, event_id, conversation_id, direction, status, sender_id, provider_message_id,
                               text, reply_to, dedupe_key, sent_at, received_at, backfilled)
         VALUES (?, ?, ?, 'inbound', 'received', ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            id_text,
            event.id.to_string(),
            conversation_id.to_string(),
            sender_id.to_string(),
            message.provider_message_id,
            message.text,
            message.reply_to,
            dedupe_key,
            ms(message.sent_at),
            cx.now,
            matches!(arrival, Arrival::Backfilled { .. }),
        ],
    )?;
    for (position, attachment) in message.attachments.iter().enumerate() {
        cx.execute(
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
    cx.changed(Change::MessageCreated(message_id));
    cx.changed(Change::ConversationUpdated(conversation_id));
    match arrival {
        Arrival::Live => {
            let text = message.text.as_deref();
            arrived_live(cx, conversation_id, message_id, agent_mode, message, text)?
        }
        Arrival::Backfilled { sent_at } => {
            cx.execute(
                // Only a message newer than the conversation's last moves its preview; the
                // SET expressions all read the row as it was.
                "UPDATE conversations SET
                     last_message_preview = CASE WHEN ?1 > coalesce(last_message_at, -1)
                         THEN substr(?2, 1, 140) ELSE last_message_preview END,
                     last_message_at = max(coalesce(last_message_at, ?1), ?1),
                     last_activity_at = max(last_activity_at, ?1),
                     updated_at = ?3
                 WHERE id = ?4",
                params![sent_at, message.text, cx.now, conversation_id.to_string()],
            )?;
        }
    }
    Ok((message_id, conversation_id))
}

/// What an inbound message does as it arrives live: it moves its conversation up (showing
/// `text`), counts as unread and may ask Pi.
fn arrived_live(
    cx: &mut Ctx<'_>,
    conversation_id: ConversationId,
    message_id: MessageId,
    agent_mode: Option<AgentMode>,
    message: &MessageReceived,
    text: Option<&str>,
) -> Result<(), StoreError> {
    bump_conversation(cx, &conversation_id, text, true)?;
    agent::on_message_received(
        cx,
        conversation_id,
        message_id,
        agent_mode,
        message.conversation.kind,
        message.mentions_self,
    )
}

/// A message as stored, found by its dedupe key.
struct StoredMessage {
    id: String,
    conversation_id: String,
    event_id: String,
    backfilled: bool,
    text: Option<String>,
    deleted: bool,
}

fn stored_message(cx: &Ctx<'_>, dedupe_key: &str) -> Result<Option<StoredMessage>, StoreError> {
    let found = cx.query_optional(
        "SELECT id, conversation_id, event_id, backfilled, text, deleted_at IS NOT NULL
         FROM messages WHERE dedupe_key = ?",
        [dedupe_key],
        |r| {
            Ok(StoredMessage {
                id: r.get(0)?,
                conversation_id: r.get(1)?,
                event_id: r.get(2)?,
                backfilled: r.get(3)?,
                text: r.get(4)?,
                deleted: r.get(5)?,
            })
        },
    )?;
    Ok(found)
}

/// The live delivery of a message read from the history first: if it is still its
/// conversation's newest message (and not deleted), it arrives now, unread and asking Pi as
/// any arrival; otherwise it stays history, so that nothing newer is answered in its place.
/// Answers whether it arrived.
fn arrive_late(
    cx: &mut Ctx<'_>,
    event: &Event,
    message: &MessageReceived,
    stored: &StoredMessage,
    message_id: MessageId,
    conversation_id: ConversationId,
) -> Result<bool, StoreError> {
    let newest = cx
        .query_optional(
            "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM messages WHERE conversation_id = ? AND id > ?)",
            params![stored.conversation_id, stored.id],
            |r| r.get::<_, i64>(0),
        )?
        .is_some();
    if stored.deleted || !newest {
        return Ok(false);
    }
    cx.execute(
        "UPDATE messages SET backfilled = 0 WHERE id = ?",
        [&stored.id],
    )?;
    let (_, agent_mode) = upsert_conversation(cx, &event.source, &message.conversation)?;
    let text = stored.text.as_deref();
    arrived_live(cx, conversation_id, message_id, agent_mode, message, text)?;
    // The person may have read it already, as history.
    recount_unread(cx, conversation_id)?;
    cx.changed(Change::MessageUpdated(message_id));
    cx.changed(Change::ConversationUpdated(conversation_id));
    Ok(true)
}

/// Stores one page of a chat's history. Every event must be a valid `message.received` of
/// `chat` on `source`'s connection, or nothing is stored. A message the store has (by its
/// dedupe key: received live or backfilled before) is counted as known and left as it is.
fn backfill(
    cx: &mut Ctx<'_>,
    source: &Source,
    chat: &str,
    events: &[Event],
) -> Result<BackfillOutcome, StoreError> {
    let mut messages = Vec::with_capacity(events.len());
    for event in events {
        event
            .validate()
            .map_err(|e| StoreError::Invalid(format!("a message of the history: {e}")))?;
        let message = match &event.body {
            EventBody::MessageReceived(message) => message,
            other => {
                return Err(StoreError::Invalid(format!(
                    "a backfill holds messages only, not {}",
                    other.event_type().as_str()
                )));
            }
        };
        if event.source != *source || message.conversation.provider_id != chat {
            return Err(StoreError::Invalid(format!(
                "a backfill of chat {chat:?} on {} holds a message of chat {:?} on {}",
                source.connection, message.conversation.provider_id, event.source.connection
            )));
        }
        messages.push((event, message));
    }
    let mut outcome = BackfillOutcome::default();
    let mut conversation = None;
    for (event, message) in messages {
        let key = event.dedupe_key();
        let known = stored_message(cx, key.as_str())?.is_some();
        outcome.known.push(known);
        if known {
            continue;
        }
        // A provider's clock is not trusted past the store's.
        let sent_at = ms(message.sent_at).clamp(0, cx.now);
        let (_, conversation_id) = insert_received(
            cx,
            event,
            message,
            key.as_str(),
            Arrival::Backfilled { sent_at },
        )?;
        conversation = Some(conversation_id);
    }
    if let Some(conversation_id) = conversation {
        // Pi's copy of the history only ever appends newer messages; these are older.
        cx.execute(
            "UPDATE conversations SET history_rev = history_rev + 1 WHERE id = ?",
            [conversation_id.to_string()],
        )?;
    }
    Ok(outcome)
}

/// A new message moves its conversation up the list and, if inbound, counts as unread.
/// Written out after each message insert rather than as a trigger (as it was until
/// migration 0008): a trigger makes SQLite keep a statement journal for every message
/// insert, a copy of each page before the insert changes it, in case the trigger fails.
fn bump_conversation(
    cx: &Ctx<'_>,
    conversation_id: &ConversationId,
    text: Option<&str>,
    inbound: bool,
) -> Result<(), StoreError> {
    cx.execute(
        "UPDATE conversations SET
             last_message_at = ?1,
             last_activity_at = ?1,
             last_message_preview = substr(?2, 1, 140),
             unread_count = unread_count + ?3,
             updated_at = ?1
         WHERE id = ?4",
        params![cx.now, text, inbound, conversation_id.to_string()],
    )?;
    Ok(())
}

/// Finds the conversation by its provider id, creating it or refreshing its title; answers
/// its id and its own agent mode.
fn upsert_conversation(
    cx: &mut Ctx<'_>,
    source: &Source,
    conversation: &ConversationRef,
) -> Result<(ConversationId, Option<AgentMode>), StoreError> {
    let found = cx.query_optional(
        "SELECT id, title, agent_mode FROM conversations WHERE connection = ? AND provider_id = ?",
        params![source.connection, conversation.provider_id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        },
    )?;
    match found {
        Some((id, title, mode)) => {
            if conversation.title.is_some() && conversation.title != title {
                cx.execute(
                    "UPDATE conversations SET title = ?, kind = ?, updated_at = ? WHERE id = ?",
                    params![conversation.title, conversation.kind.as_str(), cx.now, id],
                )?;
            }
            let mode = mode
                .map(|m| m.parse().map_err(|e| StoreError::Corrupt(format!("{e}"))))
                .transpose()?;
            Ok((parse_id(&id)?, mode))
        }
        None => {
            let id = ConversationId(cx.new_id());
            cx.execute(
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
                    cx.now,
                    cx.now,
                    cx.now,
                ],
            )?;
            Ok((id, None))
        }
    }
}

fn upsert_identity(
    cx: &mut Ctx<'_>,
    source: &Source,
    person: &Participant,
) -> Result<IdentityId, StoreError> {
    let found = cx.query_optional(
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
                cx.execute(
                    "UPDATE identities SET display_name = coalesce(?, display_name), handle = coalesce(?, handle)
                     WHERE id = ?",
                    params![person.display_name, person.handle, id],
                )?;
            }
            parse_id(&id)
        }
        None => {
            let id = IdentityId(cx.new_id());
            cx.execute(
                "INSERT INTO identities (id, channel, connection, provider_id, display_name, handle, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    id.to_string(),
                    source.channel.as_str(),
                    source.connection,
                    person.provider_id,
                    person.display_name,
                    person.handle,
                    cx.now,
                ],
            )?;
            Ok(id)
        }
    }
}

/// An outbound message to queue: the message row and its outbox row are written together.
pub(super) struct NewOutbound<'a> {
    pub(super) conversation_id: ConversationId,
    pub(super) text: &'a str,
    /// Unique per message; a second write with the same key returns the first message.
    pub(super) dedupe_key: String,
    pub(super) txn_id: Option<&'a str>,
    /// Provider id of the message this one answers.
    pub(super) reply_to: Option<String>,
}

/// Queues an outbound message; answers its id and whether it existed already.
pub(super) fn insert_outbound(
    cx: &mut Ctx<'_>,
    new: NewOutbound<'_>,
) -> Result<(MessageId, bool), StoreError> {
    let existing = cx.query_optional(
        "SELECT id FROM messages WHERE dedupe_key = ?",
        [&new.dedupe_key],
        |r| r.get::<_, String>(0),
    )?;
    if let Some(id) = existing {
        return Ok((parse_id(&id)?, true));
    }
    let conversation_id = new.conversation_id.to_string();
    let (connection, chat, kind) = cx
        .query_optional(
            "SELECT connection, provider_id, kind FROM conversations WHERE id = ?",
            [&conversation_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?
        .ok_or(StoreError::NotFound("conversation"))?;
    let kind = kind
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
    let message_id = MessageId(cx.new_id());
    let event_id = cx.new_id().to_string();
    let id_text = message_id.to_string();
    cx.execute(
        "INSERT INTO messages (id, event_id, conversation_id, direction, status, text, reply_to, txn_id,
                               dedupe_key, sent_at, received_at)
         VALUES (?, ?, ?, 'outbound', 'pending', ?, ?, ?, ?, ?, ?)",
        params![
            id_text,
            event_id,
            conversation_id,
            new.text,
            new.reply_to,
            new.txn_id,
            new.dedupe_key,
            cx.now,
            cx.now,
        ],
    )?;
    bump_conversation(cx, &new.conversation_id, Some(new.text), false)?;
    outbox::queue_send(
        cx,
        outbox::NewSend {
            message_id,
            conversation_id: new.conversation_id,
            connection: &connection,
            chat: &chat,
            kind,
            text: new.text,
            reply_to: new.reply_to.as_deref(),
        },
    )?;
    cx.changed(Change::MessageCreated(message_id));
    cx.changed(Change::ConversationUpdated(new.conversation_id));
    Ok((message_id, false))
}

fn send(cx: &mut Ctx<'_>, message: &OutboundMessage) -> Result<Written, StoreError> {
    // The txn id is scoped to its conversation.
    let dedupe_key = format!("t1:{}:{}", message.conversation_id, message.txn_id);
    let (message_id, duplicate) = insert_outbound(
        cx,
        NewOutbound {
            conversation_id: message.conversation_id,
            text: &message.text,
            dedupe_key,
            txn_id: Some(&message.txn_id),
            reply_to: None,
        },
    )?;
    if !duplicate {
        audit(
            cx,
            &AuditEntry {
                actor: "inbox-api".into(),
                action: "message.send".into(),
                target: Some(message_id.to_string()),
                detail: Some(serde_json::json!({
                    "conversation_id": message.conversation_id,
                    "txn_id": message.txn_id,
                })),
            },
        )?;
    }
    Ok(Written::Sent {
        message_id,
        duplicate,
    })
}

fn mark_read(
    cx: &mut Ctx<'_>,
    conversation_id: ConversationId,
    up_to: Option<MessageId>,
) -> Result<(), StoreError> {
    let cid = conversation_id.to_string();
    let marker: Option<String> = match up_to {
        Some(id) => {
            let belongs = cx.query_optional(
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
        None => cx
            .conn
            .prepare_cached("SELECT max(id) FROM messages WHERE conversation_id = ?")?
            .query_row([&cid], |r| r.get(0))?,
    };
    // Never move the marker backwards: an older client's late "read" must not resurrect unread.
    let updated = cx.execute(
        "UPDATE conversations SET read_up_to = max(coalesce(read_up_to, ''), coalesce(?, '')), updated_at = ?
         WHERE id = ?",
        params![marker, cx.now, cid],
    )?;
    if updated == 0 {
        return Err(StoreError::NotFound("conversation"));
    }
    recount_unread(cx, conversation_id)
}

fn recount_unread(cx: &Ctx<'_>, conversation_id: ConversationId) -> Result<(), StoreError> {
    cx.execute(
        "UPDATE conversations SET unread_count = (
            SELECT count(*) FROM messages m
            WHERE m.conversation_id = conversations.id AND m.direction = 'inbound'
              AND m.deleted_at IS NULL AND NOT m.backfilled
              AND m.id > coalesce(conversations.read_up_to, ''))
         WHERE id = ?",
        [conversation_id.to_string()],
    )?;
    Ok(())
}
