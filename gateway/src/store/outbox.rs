//! The outbox's rows: what is due, and each step of a delivery. A row is `queued` until an
//! attempt begins; `sending` while the provider may have it, so a crash or a timeout in
//! that window is reconciled rather than resent blindly; then `sent` or `failed`.
//!
//! A send queued while nothing else of its conversation waits goes out next. It is written
//! `sending` at once, its first attempt recorded with the message, and handed to the sender
//! whole once durable ([`Handed`]): the sender neither reads it back nor records an attempt
//! before sending it, which took a read and a durable write off every reply.
//!
//! A row is a send (its id is the message's) or a change to a message already sent: an
//! edit, a deletion, a reaction added or taken back. Changes are safe to repeat, so they
//! never need reconciling; one that fails for good puts the message back as it was.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use jiff::Timestamp;
use moltbot_protocol::event::ConversationKind;
use moltbot_protocol::ids::{ConversationId, MessageId};
use rusqlite::params;
use tokio::sync::Notify;
use ulid::Ulid;

use super::publish::Change;
use super::write::Ctx;
use super::{Store, StoreError, Write, Written, ms, parse_id};

#[derive(Debug)]
pub(crate) enum OutboxWrite {
    /// The provider may receive the next part from now on.
    BeginAttempt { row: Ulid, hint: Option<String> },
    /// A handed send that was never attempted (the sender stopped first) goes back to the
    /// queue, so that the next start sends it without reconciling it first.
    Withdraw { row: Ulid },
    /// Part `part` (from 0) of a send reached the provider.
    PartSent {
        row: Ulid,
        message_id: MessageId,
        part: u32,
        provider_message_id: Option<String>,
        last: bool,
    },
    /// A change reached the provider.
    Changed { row: Ulid },
    RetryLater {
        row: Ulid,
        at: Timestamp,
        error: String,
        /// The failed attempt may have reached the provider: reconcile before the next one.
        in_doubt: bool,
        attempts: u32,
    },
    Failed {
        row: Ulid,
        message_id: MessageId,
        error: String,
    },
}

/// [`Store::due_outbox`]'s query. Its `state` condition is the one `outbox_due` is
/// limited to (migration 0009), which lets it use that index.
pub(super) const DUE_ROWS: &str = "
    SELECT o.id, o.message_id, o.kind, o.argument, o.conversation_id, o.connection,
           c.provider_id AS chat, c.kind AS conversation_kind, m.text, m.reply_to,
           o.state, o.attempts, o.parts_sent, o.attempt_hint,
           CASE WHEN o.kind = 'send' THEN '[]'
                ELSE coalesce((SELECT s.provider_message_ids FROM outbox s
                               WHERE s.id = o.message_id AND s.kind = 'send'),
                              json_array(m.provider_message_id)) END AS targets,
           EXISTS (SELECT 1 FROM outbox n
                   WHERE n.conversation_id = o.conversation_id AND n.state IN ('queued', 'sending')
                     AND n.id > o.id) AS more
    FROM outbox o
    JOIN messages m ON m.id = o.message_id
    JOIN conversations c ON c.id = o.conversation_id
    WHERE o.state IN ('queued', 'sending') AND o.next_attempt_at <= ?
      AND o.conversation_id NOT IN (SELECT value FROM json_each(?))
      AND NOT EXISTS (SELECT 1 FROM outbox p
                      WHERE p.conversation_id = o.conversation_id AND p.state IN ('queued', 'sending')
                        AND p.id < o.id)
    ORDER BY o.next_attempt_at, o.id LIMIT ?";

/// [`Store::next_outbox_retry`]'s query, under the same condition.
pub(super) const NEXT_RETRY: &str = "
    SELECT min(next_attempt_at) FROM outbox
    WHERE state IN ('queued', 'sending') AND next_attempt_at > ?";

/// What an outbox row asks the connector to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Send,
    Edit(String),
    Delete,
    React(String),
    Unreact(String),
}

impl Operation {
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Send => "send",
            Operation::Edit(_) => "edit",
            Operation::Delete => "delete",
            Operation::React(_) => "react",
            Operation::Unreact(_) => "unreact",
        }
    }

    pub(super) fn argument(&self) -> Option<&str> {
        match self {
            Operation::Send | Operation::Delete => None,
            Operation::Edit(text) => Some(text),
            Operation::React(emoji) | Operation::Unreact(emoji) => Some(emoji),
        }
    }

    fn from_row(kind: &str, argument: Option<String>) -> Result<Self, StoreError> {
        let argument = || {
            argument
                .clone()
                .ok_or_else(|| StoreError::Corrupt(format!("outbox {kind} without its argument")))
        };
        Ok(match kind {
            "send" => Operation::Send,
            "edit" => Operation::Edit(argument()?),
            "delete" => Operation::Delete,
            "react" => Operation::React(argument()?),
            "unreact" => Operation::Unreact(argument()?),
            other => return Err(StoreError::Corrupt(format!("outbox kind {other:?}"))),
        })
    }
}

/// An outbox row at the head of its conversation's queue.
#[derive(Clone, Debug)]
pub struct OutboxItem {
    pub id: Ulid,
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub connection: String,
    /// The conversation as the provider names it (Telegram: the chat id).
    pub chat: String,
    pub kind: ConversationKind,
    pub operation: Operation,
    /// The message's text (what a send delivers).
    pub text: String,
    /// Provider id of the message this one answers.
    pub reply_to: Option<String>,
    /// The provider's ids of the message a change applies to (one per part it was sent in).
    pub targets: Vec<String>,
    /// An attempt began and did not finish: the provider may have the next part already.
    pub in_doubt: bool,
    pub attempts: u32,
    pub parts_sent: u32,
    pub attempt_hint: Option<String>,
    /// The next attempt (the `attempts`th) is recorded already and was not made yet: the
    /// row was handed to the sender as it was queued.
    pub begun: bool,
    /// More undelivered rows of the conversation wait behind this one.
    pub more: bool,
}

/// Sends handed to the sender with their news rather than read back from the outbox.
#[derive(Default)]
pub(crate) struct Handed {
    /// Rows committed as handed: `None` until durable, then the item until the sender takes it.
    rows: Mutex<HashMap<Ulid, Option<OutboxItem>>>,
    ready: Notify,
}

impl Handed {
    /// Called before the commit that makes the rows visible, so that no read of the outbox
    /// ever takes one of them for a row in doubt.
    pub(super) fn claim(&self, items: &[OutboxItem]) {
        let mut rows = self.rows.lock().expect("handed lock");
        rows.extend(items.iter().map(|item| (item.id, None)));
    }

    /// The commit failed, or its sync: the rows do not exist, or will not be sent.
    pub(super) fn release(&self, items: &[OutboxItem]) {
        let mut rows = self.rows.lock().expect("handed lock");
        for item in items {
            rows.remove(&item.id);
        }
    }

    /// The rows are durable: the sender may take them.
    pub(super) fn durable(&self, items: Vec<OutboxItem>) {
        if items.is_empty() {
            return;
        }
        let mut rows = self.rows.lock().expect("handed lock");
        for item in items {
            rows.insert(item.id, Some(item));
        }
        self.ready.notify_one();
    }

    /// Waits for durable handed sends and takes them all; see [`Handed::take_ready`].
    /// Cancel-safe: they are taken only by the poll that returns them.
    pub(crate) async fn take(&self) -> Vec<OutboxItem> {
        loop {
            let taken = self.take_ready();
            if !taken.is_empty() {
                return taken;
            }
            self.ready.notified().await;
        }
    }

    /// Takes the durable handed sends there are, oldest first, without waiting.
    pub(crate) fn take_ready(&self) -> Vec<OutboxItem> {
        let mut rows = self.rows.lock().expect("handed lock");
        let ready: Vec<Ulid> = rows
            .iter()
            .filter_map(|(id, item)| item.is_some().then_some(*id))
            .collect();
        let mut taken: Vec<OutboxItem> = ready
            .into_iter()
            .filter_map(|id| rows.remove(&id).flatten())
            .collect();
        taken.sort_by_key(|item| item.id);
        taken
    }

    /// Whether a row read from the outbox is a handed one the sender has yet to take.
    pub(crate) fn holds(&self, row: Ulid) -> bool {
        self.rows.lock().expect("handed lock").contains_key(&row)
    }
}

pub(super) fn apply(cx: &mut Ctx<'_>, write: &OutboxWrite) -> Result<Written, StoreError> {
    match write {
        OutboxWrite::BeginAttempt { row, hint } => {
            update_row(
                cx,
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1, attempt_hint = ?, updated_at = ?
                 WHERE id = ? AND state IN ('queued', 'sending')",
                params![hint, cx.now, row.to_string()],
            )?;
        }
        OutboxWrite::Withdraw { row } => {
            update_row(
                cx,
                "UPDATE outbox SET state = 'queued', attempts = attempts - 1, updated_at = ?
                 WHERE id = ? AND state = 'sending' AND parts_sent = 0 AND attempts > 0",
                params![cx.now, row.to_string()],
            )?;
        }
        OutboxWrite::PartSent {
            row,
            message_id,
            part,
            provider_message_id,
            last,
        } => {
            update_row(
                cx,
                "UPDATE outbox SET parts_sent = ? + 1, attempt_hint = NULL, last_error = NULL, updated_at = ?,
                    provider_message_ids = json_insert(provider_message_ids, '$[#]', ?),
                    state = CASE WHEN ? THEN 'sent' ELSE 'queued' END
                 WHERE id = ? AND parts_sent = ?",
                params![part, cx.now, provider_message_id, last, row.to_string(), part],
            )?;
            if *last || *part == 0 {
                // The message shows the provider's id of its first part.
                cx.execute(
                    "UPDATE messages SET status = CASE WHEN ? THEN 'sent' ELSE status END,
                        provider_message_id = coalesce(provider_message_id, ?)
                     WHERE id = ?",
                    params![last, provider_message_id, message_id.to_string()],
                )?;
                cx.changed(Change::MessageUpdated(*message_id));
            }
        }
        OutboxWrite::Changed { row } => {
            let changed = cx.query_optional(
                "UPDATE outbox SET state = 'sent', attempts = attempts + 1, last_error = NULL, updated_at = ?
                 WHERE id = ? AND state IN ('queued', 'sending')
                 RETURNING message_id, kind, argument, previous",
                params![cx.now, row.to_string()],
                Closed::read,
            )?;
            let closed = changed.ok_or_else(not_in_state)?;
            super::amend::confirmed(cx, parse_id(&closed.message_id)?, &closed.operation()?)?;
        }
        OutboxWrite::RetryLater {
            row,
            at,
            error,
            in_doubt,
            attempts,
        } => {
            update_row(
                cx,
                "UPDATE outbox SET state = CASE WHEN ? THEN 'sending' ELSE 'queued' END, next_attempt_at = ?,
                    last_error = ?, attempts = ?, updated_at = ?
                 WHERE id = ? AND state IN ('queued', 'sending')",
                params![in_doubt, ms(*at), error, attempts, cx.now, row.to_string()],
            )?;
        }
        OutboxWrite::Failed {
            row,
            message_id,
            error,
        } => {
            let failed = cx.query_optional(
                "UPDATE outbox SET state = 'failed', last_error = ?, updated_at = ?
                 WHERE id = ? AND state IN ('queued', 'sending')
                 RETURNING message_id, kind, argument, previous",
                params![error, cx.now, row.to_string()],
                Closed::read,
            )?;
            let closed = failed.ok_or_else(not_in_state)?;
            super::amend::undo(cx, *message_id, &closed.operation()?, closed.previous)?;
            cx.changed(Change::MessageUpdated(*message_id));
        }
    }
    Ok(Written::Done)
}

/// A row that reached its final state, as its `RETURNING message_id, kind, argument,
/// previous` answers it.
struct Closed {
    message_id: String,
    kind: String,
    argument: Option<String>,
    previous: Option<String>,
}

impl Closed {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            message_id: r.get(0)?,
            kind: r.get(1)?,
            argument: r.get(2)?,
            previous: r.get(3)?,
        })
    }

    fn operation(&self) -> Result<Operation, StoreError> {
        Operation::from_row(&self.kind, self.argument.clone())
    }
}

/// A new outbox row, written in the transaction of the change it delivers.
pub(super) struct NewRow<'a> {
    /// A send's row takes its message's id; a change's a fresh one.
    pub(super) id: Ulid,
    pub(super) message_id: MessageId,
    pub(super) conversation_id: ConversationId,
    pub(super) connection: &'a str,
    pub(super) operation: &'a Operation,
    /// What a change replaced (an edit's or deletion's old text), to undo it on failure.
    pub(super) previous: Option<&'a str>,
}

/// Queues a change to a message already sent.
pub(super) fn queue(cx: &mut Ctx<'_>, row: NewRow<'_>) -> Result<(), StoreError> {
    insert(cx, &row, false)?;
    cx.wake.outbox.push(row.conversation_id);
    Ok(())
}

/// A new message to send, written in the transaction of its message row.
pub(super) struct NewSend<'a> {
    pub(super) message_id: MessageId,
    pub(super) conversation_id: ConversationId,
    pub(super) connection: &'a str,
    pub(super) chat: &'a str,
    pub(super) kind: ConversationKind,
    pub(super) text: &'a str,
    pub(super) reply_to: Option<&'a str>,
}

/// Queues a send; hands it to the sender if nothing else of its conversation waits.
pub(super) fn queue_send(cx: &mut Ctx<'_>, send: NewSend<'_>) -> Result<(), StoreError> {
    let conversation = send.conversation_id.to_string();
    let waiting = cx
        .query_optional(
            "SELECT 1 FROM outbox WHERE conversation_id = ? AND state IN ('queued', 'sending') LIMIT 1",
            [&conversation],
            |_| Ok(()),
        )?
        .is_some();
    let row = NewRow {
        id: send.message_id.0,
        message_id: send.message_id,
        conversation_id: send.conversation_id,
        connection: send.connection,
        operation: &Operation::Send,
        previous: None,
    };
    insert(cx, &row, !waiting)?;
    if waiting {
        cx.wake.outbox.push(send.conversation_id);
    } else {
        cx.wake.handed.push(OutboxItem {
            id: row.id,
            message_id: send.message_id,
            conversation_id: send.conversation_id,
            connection: send.connection.to_owned(),
            chat: send.chat.to_owned(),
            kind: send.kind,
            operation: Operation::Send,
            text: send.text.to_owned(),
            reply_to: send.reply_to.map(str::to_owned),
            targets: Vec::new(),
            in_doubt: false,
            attempts: 1,
            parts_sent: 0,
            attempt_hint: None,
            begun: true,
            more: false,
        });
    }
    Ok(())
}

/// Writes a new row; a handed one with its first attempt begun.
fn insert(cx: &mut Ctx<'_>, row: &NewRow<'_>, handed: bool) -> Result<(), StoreError> {
    cx.execute(
        "INSERT INTO outbox (id, message_id, kind, argument, previous, conversation_id, connection, state,
                             attempts, next_attempt_at, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, CASE WHEN ? THEN 'sending' ELSE 'queued' END, ?, ?, ?, ?)",
        params![
            row.id.to_string(),
            row.message_id.to_string(),
            row.operation.kind(),
            row.operation.argument(),
            row.previous,
            row.conversation_id.to_string(),
            row.connection,
            handed,
            u32::from(handed),
            cx.now,
            cx.now,
            cx.now
        ],
    )?;
    Ok(())
}

/// Runs an update that must touch exactly the one outbox row it names.
fn update_row(cx: &Ctx<'_>, sql: &str, params: impl rusqlite::Params) -> Result<(), StoreError> {
    match cx.execute(sql, params)? {
        1 => Ok(()),
        _ => Err(not_in_state()),
    }
}

fn not_in_state() -> StoreError {
    StoreError::Invalid("the outbox row is not in the state this step expects".into())
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: String,
    message_id: String,
    kind: String,
    argument: Option<String>,
    conversation_id: String,
    connection: String,
    chat: String,
    conversation_kind: String,
    text: Option<String>,
    reply_to: Option<String>,
    state: String,
    attempts: i64,
    parts_sent: i64,
    attempt_hint: Option<String>,
    targets: String,
    more: bool,
}

impl OutboxRow {
    fn into_item(self) -> Result<OutboxItem, StoreError> {
        // A send's parts delivered through a channel without ids are recorded as nulls.
        let targets: Vec<Option<String>> = serde_json::from_str(&self.targets)
            .map_err(|e| StoreError::Corrupt(format!("provider ids of {}: {e}", self.id)))?;
        Ok(OutboxItem {
            id: parse_id(&self.id)?,
            message_id: parse_id(&self.message_id)?,
            conversation_id: parse_id(&self.conversation_id)?,
            connection: self.connection,
            chat: self.chat,
            kind: self
                .conversation_kind
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
            operation: Operation::from_row(&self.kind, self.argument)?,
            text: self.text.unwrap_or_default(),
            reply_to: self.reply_to,
            targets: targets.into_iter().flatten().collect(),
            in_doubt: self.state == "sending",
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            parts_sent: u32::try_from(self.parts_sent).unwrap_or(0),
            attempt_hint: self.attempt_hint,
            begun: false,
            more: self.more,
        })
    }
}

impl Store {
    /// The first undelivered row of each conversation that is due, leaving out the
    /// conversations in `busy`: rows of one conversation go out in order, and a row waiting
    /// for a retry holds back the ones behind it.
    pub async fn due_outbox(
        &self,
        limit: usize,
        busy: &HashSet<ConversationId>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let rows: Vec<OutboxRow> = sqlx::query_as(DUE_ROWS)
            .bind(ms(Timestamp::now()))
            .bind(super::id_list(busy))
            .bind(limit as i64)
            .fetch_all(&self.reads)
            .await?;
        rows.into_iter().map(OutboxRow::into_item).collect()
    }

    /// When the next undelivered row waiting for a retry after `now` comes due, if any.
    pub async fn next_outbox_retry(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(NEXT_RETRY)
            .bind(ms(now))
            .fetch_one(&self.reads)
            .await?;
        at.map(super::from_ms).transpose()
    }

    pub(crate) async fn outbox_step(&self, step: OutboxWrite) -> Result<(), StoreError> {
        self.submit(Write::Outbox(step)).await.map(drop)
    }
}
