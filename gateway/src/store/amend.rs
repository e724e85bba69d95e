//! Changes to stored messages: the API's edits, deletions and reactions (each written with
//! the outbox row that delivers it), undoing one the provider refused for good, and the
//! reactions people add and take back.

use moltbot_protocol::ids::MessageId;
use rusqlite::params;

use super::inbox::audit;
use super::outbox::{self, NewRow, Operation};
use super::publish::Change;
use super::write::Ctx;
use super::{AuditEntry, Store, StoreError, Write, Written, parse_id};

/// The gateway's own reactions are stored under this actor; no provider id is empty.
const OWN: &str = "";

/// A change to a message through the inbox API.
#[derive(Debug)]
pub(crate) struct Amend {
    pub(crate) message_id: MessageId,
    /// Never [`Operation::Send`].
    pub(crate) operation: Operation,
    /// Most reactions of the gateway's own the channel takes on one message.
    pub(crate) max_own_reactions: Option<usize>,
}

struct Found {
    conversation_id: String,
    connection: String,
    outbound: bool,
    text: Option<String>,
    deleted: bool,
    /// The state of the message's own send, for outbound messages.
    send_state: Option<String>,
    send_untouched: bool,
}

pub(super) fn apply(cx: &mut Ctx<'_>, amend: &Amend) -> Result<Written, StoreError> {
    cx.index_before_changing_text()?;
    let id = amend.message_id.to_string();
    let found = cx
        .query_optional(
            "SELECT m.conversation_id, c.connection, m.direction = 'outbound', m.text, m.deleted_at IS NOT NULL,
                    s.state, coalesce(s.state = 'queued' AND s.parts_sent = 0, 0)
             FROM messages m JOIN conversations c ON c.id = m.conversation_id
             LEFT JOIN outbox s ON s.id = m.id AND s.kind = 'send'
             WHERE m.id = ?",
            [&id],
            |r| {
                Ok(Found {
                    conversation_id: r.get(0)?,
                    connection: r.get(1)?,
                    outbound: r.get(2)?,
                    text: r.get(3)?,
                    deleted: r.get(4)?,
                    send_state: r.get(5)?,
                    send_untouched: r.get(6)?,
                })
            },
        )?
        .ok_or(StoreError::NotFound("message"))?;
    let previous = match &amend.operation {
        Operation::Send => return Err(StoreError::Invalid("a send is not a change".into())),
        Operation::Edit(text) => {
            check_own(&found, "edited")?;
            if found.deleted {
                return Err(StoreError::Conflict("the message was deleted".into()));
            }
            match found.send_state.as_deref() {
                Some("failed") => {
                    return Err(StoreError::Conflict(
                        "the message was never delivered; send a new one instead".into(),
                    ));
                }
                // A send in doubt is reconciled by its text; changing it now could send it twice.
                Some("sending") => {
                    return Err(StoreError::Conflict(
                        "the message is still being delivered; try again shortly".into(),
                    ));
                }
                _ => {}
            }
            if found.text.as_deref() == Some(text.as_str()) {
                return Ok(Written::Amended { changed: false });
            }
            cx.execute(
                "UPDATE messages SET text = ?, edited_at = ? WHERE id = ?",
                params![text, cx.now, id],
            )?;
            found.text.clone()
        }
        Operation::Delete => {
            check_own(&found, "deleted")?;
            if found.deleted {
                return Ok(Written::Amended { changed: false });
            }
            // A send nothing of which left yet is simply called off.
            let called_off = found.send_untouched
                && cx.execute(
                    "UPDATE outbox SET state = 'failed', last_error = 'deleted before it was sent', updated_at = ?
                     WHERE id = ? AND state = 'queued' AND parts_sent = 0",
                    params![cx.now, id],
                )? == 1;
            if called_off {
                // The rows queued behind it may go now.
                cx.wake.outbox.push(parse_id(&found.conversation_id)?);
            }
            // Nothing of it reached the provider: there is nothing to delete there.
            let local_only = called_off || found.send_state.as_deref() == Some("failed");
            // Otherwise the text stays until the provider confirms, so that a refusal can
            // put the message back.
            cx.execute(
                "UPDATE messages SET deleted_at = ?,
                    text = CASE WHEN ? THEN NULL ELSE text END,
                    status = CASE WHEN ? THEN 'failed' ELSE status END
                 WHERE id = ?",
                params![cx.now, local_only, called_off, id],
            )?;
            if local_only {
                return finish(cx, amend, &found);
            }
            None
        }
        Operation::React(emoji) => {
            if found.deleted {
                return Err(StoreError::Conflict("the message was deleted".into()));
            }
            let own: Vec<String> = own_reactions(cx, &id)?;
            if own.contains(emoji) {
                return Ok(Written::Amended { changed: false });
            }
            if let Some(max) = amend.max_own_reactions
                && own.len() >= max
            {
                return Err(StoreError::Conflict(format!(
                    "this channel takes at most {max} reaction(s) of the gateway's own per message; \
                     take back {} first",
                    own.join(", ")
                )));
            }
            set_reaction(cx, &id, OWN, emoji, true, cx.now)?;
            None
        }
        Operation::Unreact(emoji) => {
            if !own_reactions(cx, &id)?.contains(emoji) {
                return Ok(Written::Amended { changed: false });
            }
            set_reaction(cx, &id, OWN, emoji, false, cx.now)?;
            None
        }
    };
    let row = cx.new_id();
    outbox::queue(
        cx,
        NewRow {
            id: row,
            message_id: amend.message_id,
            conversation_id: parse_id(&found.conversation_id)?,
            connection: &found.connection,
            operation: &amend.operation,
            previous: previous.as_deref(),
        },
    )?;
    finish(cx, amend, &found)
}

/// Publishes and audits a change that was made.
fn finish(cx: &mut Ctx<'_>, amend: &Amend, found: &Found) -> Result<Written, StoreError> {
    cx.changed(Change::MessageUpdated(amend.message_id));
    audit(
        cx,
        &AuditEntry {
            actor: "inbox-api".into(),
            action: format!("message.{}", amend.operation.kind()),
            target: Some(amend.message_id.to_string()),
            detail: Some(serde_json::json!({
                "conversation_id": found.conversation_id,
                "emoji": match &amend.operation {
                    Operation::React(e) | Operation::Unreact(e) => Some(e),
                    _ => None,
                },
            })),
        },
    )?;
    Ok(Written::Amended { changed: true })
}

fn check_own(found: &Found, verb: &str) -> Result<(), StoreError> {
    if found.outbound {
        Ok(())
    } else {
        Err(StoreError::Forbidden(format!(
            "only messages this gateway sent can be {verb}"
        )))
    }
}

fn own_reactions(cx: &Ctx<'_>, message_id: &str) -> Result<Vec<String>, StoreError> {
    let mut statement = cx.conn.prepare_cached(
        "SELECT emoji FROM reactions WHERE message_id = ? AND actor = '' AND present ORDER BY at",
    )?;
    let emojis = statement
        .query_map([message_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(emojis)
}

/// Records that `actor` has (or no longer has) reacted with `emoji`, unless a later change
/// of the same reaction is already stored.
pub(super) fn set_reaction(
    cx: &Ctx<'_>,
    message_id: &str,
    actor: &str,
    emoji: &str,
    present: bool,
    at: i64,
) -> Result<(), StoreError> {
    cx.execute(
        "INSERT INTO reactions (message_id, actor, emoji, present, at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (message_id, actor, emoji) DO UPDATE SET present = excluded.present, at = excluded.at
         WHERE excluded.at >= reactions.at",
        params![message_id, actor, emoji, present, at],
    )?;
    Ok(())
}

/// Puts a message back as it was before a change the provider refused for good; a failed
/// send marks its message failed.
pub(super) fn undo(
    cx: &mut Ctx<'_>,
    message_id: MessageId,
    operation: &Operation,
    previous: Option<String>,
) -> Result<(), StoreError> {
    cx.index_before_changing_text()?;
    let id = message_id.to_string();
    match operation {
        Operation::Send => {
            cx.execute("UPDATE messages SET status = 'failed' WHERE id = ?", [&id])?;
        }
        // Unless a later edit replaced the text meanwhile.
        Operation::Edit(text) => {
            cx.execute(
                "UPDATE messages SET text = ? WHERE id = ? AND text IS ?",
                params![previous, id, text],
            )?;
        }
        Operation::Delete => {
            cx.execute("UPDATE messages SET deleted_at = NULL WHERE id = ?", [&id])?;
        }
        Operation::React(emoji) => set_reaction(cx, &id, OWN, emoji, false, cx.now)?,
        Operation::Unreact(emoji) => set_reaction(cx, &id, OWN, emoji, true, cx.now)?,
    }
    Ok(())
}

/// What a change the provider confirmed still has to do: a deleted message loses its text.
pub(super) fn confirmed(
    cx: &mut Ctx<'_>,
    message_id: MessageId,
    operation: &Operation,
) -> Result<(), StoreError> {
    if *operation == Operation::Delete {
        cx.index_before_changing_text()?;
        cx.execute(
            "UPDATE messages SET text = NULL WHERE id = ? AND deleted_at IS NOT NULL",
            [message_id.to_string()],
        )?;
        cx.changed(Change::MessageUpdated(message_id));
    }
    Ok(())
}

impl Store {
    /// Edits, deletes or reacts to a message and queues the change for its channel, in one
    /// transaction; answers whether anything changed (a repeat changes nothing).
    pub async fn amend(
        &self,
        message_id: MessageId,
        operation: Operation,
        max_own_reactions: Option<usize>,
    ) -> Result<bool, StoreError> {
        let write = Write::Amend(Amend {
            message_id,
            operation,
            max_own_reactions,
        });
        match self.submit(write).await? {
            Written::Amended { changed } => Ok(changed),
            other => Err(super::unexpected(other)),
        }
    }
}
