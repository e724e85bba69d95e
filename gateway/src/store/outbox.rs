//! The outbox's rows: what is due, and each step of a delivery. A row is `queued` until an
//! attempt begins; `sending` while the provider may have it, so a crash or a timeout in
//! that window is reconciled rather than resent blindly; then `sent` or `failed`.

use std::collections::HashSet;

use jiff::Timestamp;
use moltbot_protocol::event::ConversationKind;
use moltbot_protocol::ids::{ConversationId, MessageId};
use rusqlite::params;

use super::publish::Change;
use super::write::Ctx;
use super::{Store, StoreError, Write, Written, ms, parse_id};

#[derive(Debug)]
pub(crate) enum OutboxWrite {
    /// The provider may receive the next part from now on.
    BeginAttempt {
        message_id: MessageId,
        hint: Option<String>,
    },
    /// Part `part` (from 0) reached the provider.
    PartSent {
        message_id: MessageId,
        part: u32,
        provider_message_id: Option<String>,
        last: bool,
    },
    RetryLater {
        message_id: MessageId,
        at: Timestamp,
        error: String,
        /// The failed attempt may have reached the provider: reconcile before the next one.
        in_doubt: bool,
    },
    Failed {
        message_id: MessageId,
        error: String,
    },
}

/// An outbound message at the head of its conversation's queue.
#[derive(Clone, Debug)]
pub struct OutboxItem {
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub connection: String,
    /// The conversation as the provider names it (Telegram: the chat id).
    pub chat: String,
    pub kind: ConversationKind,
    pub text: String,
    /// Provider id of the message this one answers.
    pub reply_to: Option<String>,
    /// An attempt began and did not finish: the provider may have the next part already.
    pub in_doubt: bool,
    pub attempts: u32,
    pub parts_sent: u32,
    pub attempt_hint: Option<String>,
}

pub(super) fn apply(cx: &mut Ctx<'_>, write: &OutboxWrite) -> Result<Written, StoreError> {
    match write {
        OutboxWrite::BeginAttempt { message_id, hint } => {
            update_row(
                cx,
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1, attempt_hint = ?, updated_at = ?
                 WHERE message_id = ? AND state IN ('queued', 'sending')",
                params![hint, cx.now, message_id.to_string()],
            )?;
        }
        OutboxWrite::PartSent {
            message_id,
            part,
            provider_message_id,
            last,
        } => {
            let id = message_id.to_string();
            update_row(
                cx,
                "UPDATE outbox SET parts_sent = ? + 1, attempt_hint = NULL, last_error = NULL, updated_at = ?,
                    provider_message_ids = json_insert(provider_message_ids, '$[#]', ?),
                    state = CASE WHEN ? THEN 'sent' ELSE 'queued' END
                 WHERE message_id = ? AND parts_sent = ?",
                params![part, cx.now, provider_message_id, last, id, part],
            )?;
            if *last || *part == 0 {
                // The message shows the provider's id of its first part.
                cx.execute(
                    "UPDATE messages SET status = CASE WHEN ? THEN 'sent' ELSE status END,
                        provider_message_id = coalesce(provider_message_id, ?)
                     WHERE id = ?",
                    params![last, provider_message_id, id],
                )?;
                cx.changed(Change::MessageUpdated(*message_id));
            }
        }
        OutboxWrite::RetryLater {
            message_id,
            at,
            error,
            in_doubt,
        } => {
            update_row(
                cx,
                "UPDATE outbox SET state = CASE WHEN ? THEN 'sending' ELSE 'queued' END, next_attempt_at = ?,
                    last_error = ?, updated_at = ?
                 WHERE message_id = ? AND state IN ('queued', 'sending')",
                params![in_doubt, ms(*at), error, cx.now, message_id.to_string()],
            )?;
        }
        OutboxWrite::Failed { message_id, error } => {
            let id = message_id.to_string();
            update_row(
                cx,
                "UPDATE outbox SET state = 'failed', last_error = ?, updated_at = ?
                 WHERE message_id = ? AND state IN ('queued', 'sending')",
                params![error, cx.now, id],
            )?;
            cx.execute("UPDATE messages SET status = 'failed' WHERE id = ?", [&id])?;
            cx.changed(Change::MessageUpdated(*message_id));
        }
    }
    Ok(Written::Done)
}

/// Runs an update that must touch exactly the one outbox row it names.
fn update_row(cx: &Ctx<'_>, sql: &str, params: impl rusqlite::Params) -> Result<(), StoreError> {
    match cx.execute(sql, params)? {
        1 => Ok(()),
        _ => Err(StoreError::Invalid(
            "the outbox row is not in the state this step expects".into(),
        )),
    }
}

type OutboxRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
    i64,
    Option<String>,
);

impl Store {
    /// The head of each conversation's queue, if due: messages of one conversation go out in
    /// order, and a message waiting for a retry holds back the ones behind it.
    /// The first undelivered message of each conversation that is due, leaving out the
    /// conversations in `busy`.
    pub async fn due_outbox(
        &self,
        limit: usize,
        busy: &HashSet<ConversationId>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT o.message_id, o.conversation_id, o.connection, c.provider_id, c.kind, m.text, m.reply_to,
                    o.state, o.attempts, o.parts_sent, o.attempt_hint
             FROM outbox o
             JOIN messages m ON m.id = o.message_id
             JOIN conversations c ON c.id = o.conversation_id
             WHERE o.state IN ('queued', 'sending') AND o.next_attempt_at <= ?
               AND o.conversation_id NOT IN (SELECT value FROM json_each(?))
               AND NOT EXISTS (SELECT 1 FROM outbox p
                               WHERE p.conversation_id = o.conversation_id AND p.state IN ('queued', 'sending')
                                 AND p.message_id < o.message_id)
             ORDER BY o.next_attempt_at, o.message_id LIMIT ?",
        )
        .bind(ms(Timestamp::now()))
        .bind(super::id_list(busy))
        .bind(limit as i64)
        .fetch_all(&self.reads)
        .await?;
        rows.into_iter()
            .map(
                |(
                    message_id,
                    conversation_id,
                    connection,
                    chat,
                    kind,
                    text,
                    reply_to,
                    state,
                    attempts,
                    parts_sent,
                    attempt_hint,
                )| {
                    Ok(OutboxItem {
                        message_id: parse_id(&message_id)?,
                        conversation_id: parse_id(&conversation_id)?,
                        connection,
                        chat,
                        kind: kind
                            .parse()
                            .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
                        text: text.unwrap_or_default(),
                        reply_to,
                        in_doubt: state == "sending",
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        parts_sent: u32::try_from(parts_sent).unwrap_or(0),
                        attempt_hint,
                    })
                },
            )
            .collect()
    }

    /// When the next queued row comes due, if any.
    pub async fn next_outbox_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM outbox WHERE state IN ('queued', 'sending')",
        )
        .fetch_one(&self.reads)
        .await?;
        at.map(super::from_ms).transpose()
    }

    pub(crate) async fn outbox_step(&self, step: OutboxWrite) -> Result<(), StoreError> {
        self.submit(Write::Outbox(step)).await.map(drop)
    }
}
