//! Queries behind the inbox API, and the views they return.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moltbot_protocol::event::Attachment;
use moltbot_protocol::ids::{ConversationId, MessageId};
use moltbot_protocol::inbox::{
    ConversationView, DeliveryStatus, Direction, MessageView, Page, ReactionView, SearchHit,
    SenderView,
};
use sqlx::{FromRow, QueryBuilder, Sqlite, SqliteConnection};

use super::{Store, StoreError, from_ms, parse_id};

const MESSAGE_COLUMNS: &str = "SELECT m.seq, m.id, m.conversation_id, m.direction, m.status, m.sender_id,
        i.provider_id AS sender_provider_id, i.display_name AS sender_name, m.text, m.provider_message_id,
        m.reply_to, m.txn_id, m.sent_at, m.received_at, m.edited_at, m.deleted_at, m.backfilled,
        (SELECT json_group_array(json_object('kind', a.kind, 'mime_type', a.mime_type, 'size_bytes', a.size_bytes,
                 'file_name', a.file_name, 'provider_file_id', a.provider_file_id) ORDER BY a.position)
           FROM attachments a WHERE a.message_id = m.id) AS attachments,
        (SELECT json_group_array(json_object('emoji', emoji, 'count', n, 'mine', json(CASE WHEN mine THEN 'true' ELSE 'false' END)))
           FROM (SELECT emoji, count(*) AS n, max(actor = '') AS mine, min(at) AS first
                 FROM reactions r WHERE r.message_id = m.id AND r.present GROUP BY emoji ORDER BY first, emoji)) AS reactions";

const CONVERSATION_COLUMNS: &str = "SELECT id, channel, connection, provider_id, kind, title, pinned, unread_count,
        last_message_at, last_message_preview, last_activity_at, created_at, updated_at, agent_mode FROM conversations";

#[derive(FromRow)]
struct MessageRow {
    seq: i64,
    id: String,
    conversation_id: String,
    direction: String,
    status: String,
    sender_id: Option<String>,
    sender_provider_id: Option<String>,
    sender_name: Option<String>,
    text: Option<String>,
    provider_message_id: Option<String>,
    reply_to: Option<String>,
    txn_id: Option<String>,
    sent_at: i64,
    received_at: i64,
    edited_at: Option<i64>,
    deleted_at: Option<i64>,
    backfilled: bool,
    attachments: String,
    reactions: String,
}

impl MessageRow {
    fn into_view(self) -> Result<MessageView, StoreError> {
        let sender = match (self.sender_id, self.sender_provider_id) {
            (Some(id), Some(provider_id)) => Some(SenderView {
                id: parse_id(&id)?,
                provider_id,
                display_name: self.sender_name,
            }),
            _ => None,
        };
        let attachments: Vec<Attachment> = serde_json::from_str(&self.attachments)
            .map_err(|e| StoreError::Corrupt(format!("attachments of {}: {e}", self.id)))?;
        let reactions: Vec<ReactionView> = serde_json::from_str(&self.reactions)
            .map_err(|e| StoreError::Corrupt(format!("reactions of {}: {e}", self.id)))?;
        Ok(MessageView {
            id: parse_id(&self.id)?,
            conversation_id: parse_id(&self.conversation_id)?,
            direction: match self.direction.as_str() {
                "inbound" => Direction::Inbound,
                _ => Direction::Outbound,
            },
            status: match self.status.as_str() {
                "received" => DeliveryStatus::Received,
                "pending" => DeliveryStatus::Pending,
                "sent" => DeliveryStatus::Sent,
                _ => DeliveryStatus::Failed,
            },
            sender,
            text: self.text,
            attachments,
            provider_message_id: self.provider_message_id,
            reply_to: self.reply_to,
            txn_id: self.txn_id,
            sent_at: from_ms(self.sent_at)?,
            received_at: from_ms(self.received_at)?,
            edited_at: self.edited_at.map(from_ms).transpose()?,
            deleted: self.deleted_at.is_some(),
            backfilled: self.backfilled,
            reactions,
        })
    }
}

#[derive(FromRow)]
struct ConversationRow {
    id: String,
    channel: String,
    connection: String,
    provider_id: String,
    kind: String,
    title: Option<String>,
    pinned: bool,
    unread_count: i64,
    last_message_at: Option<i64>,
    last_message_preview: Option<String>,
    last_activity_at: i64,
    created_at: i64,
    updated_at: i64,
    agent_mode: Option<String>,
}

impl ConversationRow {
    fn cursor(&self) -> String {
        encode_cursor(&format!(
            "{}.{}.{}",
            u8::from(self.pinned),
            self.last_activity_at,
            self.id
        ))
    }

    fn into_view(self) -> Result<ConversationView, StoreError> {
        Ok(ConversationView {
            id: parse_id(&self.id)?,
            channel: self
                .channel
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
            connection: self.connection,
            provider_id: self.provider_id,
            kind: self
                .kind
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
            title: self.title,
            pinned: self.pinned,
            unread_count: u32::try_from(self.unread_count).unwrap_or(0),
            last_message_at: self.last_message_at.map(from_ms).transpose()?,
            last_message_preview: self.last_message_preview,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
            agent_mode: self
                .agent_mode
                .map(|m| m.parse().map_err(|e| StoreError::Corrupt(format!("{e}"))))
                .transpose()?,
        })
    }
}

/// Filters of the conversation list.
#[derive(Clone, Debug, Default)]
pub struct ConversationFilter {
    pub channel: Option<String>,
    pub pinned: Option<bool>,
    pub unread: Option<bool>,
}

fn encode_cursor(raw: &str) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str) -> Result<String, StoreError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| StoreError::Invalid("cursor is not one this server issued".into()))
}

fn bad_cursor() -> StoreError {
    StoreError::Invalid("cursor is not one this server issued".into())
}

/// Splits `limit + 1` fetched rows into a page and the cursor of its last row.
fn paginate<R, T>(
    mut rows: Vec<R>,
    limit: u32,
    cursor_of: impl Fn(&R) -> String,
    view: impl Fn(R) -> Result<T, StoreError>,
) -> Result<Page<T>, StoreError> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(&cursor_of)
    } else {
        None
    };
    let items = rows.into_iter().map(view).collect::<Result<_, _>>()?;
    Ok(Page { items, next_cursor })
}

pub(super) async fn message(
    conn: &mut SqliteConnection,
    id: MessageId,
) -> Result<MessageView, StoreError> {
    let sql = format!(
        "{MESSAGE_COLUMNS} FROM messages m LEFT JOIN identities i ON i.id = m.sender_id WHERE m.id = ?"
    );
    let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or(StoreError::NotFound("message"))?.into_view()
}

pub(super) async fn conversation(
    conn: &mut SqliteConnection,
    id: ConversationId,
) -> Result<ConversationView, StoreError> {
    let sql = format!("{CONVERSATION_COLUMNS} WHERE id = ?");
    let row: Option<ConversationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or(StoreError::NotFound("conversation"))?.into_view()
}

impl Store {
    pub async fn conversation(&self, id: ConversationId) -> Result<ConversationView, StoreError> {
        conversation(&mut *self.reads.acquire().await?, id).await
    }

    /// The provider id of the conversation's message sent first (by the provider's clock)
    /// that has one: where reading its history further back starts. Rare enough to read
    /// the conversation's messages without an index on `sent_at`.
    pub async fn earliest_provider_message_id(
        &self,
        conversation: ConversationId,
    ) -> Result<Option<String>, StoreError> {
        let id = sqlx::query_scalar(
            "SELECT provider_message_id FROM messages
             WHERE conversation_id = ? AND provider_message_id IS NOT NULL
             ORDER BY sent_at, id LIMIT 1",
        )
        .bind(conversation.to_string())
        .fetch_optional(&mut *self.reads.acquire().await?)
        .await?;
        Ok(id)
    }

    pub async fn message(&self, id: MessageId) -> Result<MessageView, StoreError> {
        message(&mut *self.reads.acquire().await?, id).await
    }

    /// Pinned first, then by last activity, newest first.
    pub async fn conversations(
        &self,
        filter: &ConversationFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<ConversationView>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(CONVERSATION_COLUMNS);
        q.push(" WHERE 1 = 1");
        if let Some(channel) = &filter.channel {
            q.push(" AND channel = ").push_bind(channel.clone());
        }
        if let Some(pinned) = filter.pinned {
            q.push(" AND pinned = ").push_bind(pinned);
        }
        match filter.unread {
            Some(true) => q.push(" AND unread_count > 0"),
            Some(false) => q.push(" AND unread_count = 0"),
            None => &mut q,
        };
        if let Some(cursor) = cursor {
            let raw = decode_cursor(cursor)?;
            let mut parts = raw.splitn(3, '.');
            let (Some(pinned), Some(activity), Some(id)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad_cursor());
            };
            let pinned: i64 = pinned.parse().map_err(|_| bad_cursor())?;
            let activity: i64 = activity.parse().map_err(|_| bad_cursor())?;
            q.push(" AND (pinned, last_activity_at, id) < (")
                .push_bind(pinned)
                .push(", ")
                .push_bind(activity)
                .push(", ")
                .push_bind(id.to_string())
                .push(")");
        }
        q.push(" ORDER BY pinned DESC, last_activity_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows: Vec<ConversationRow> = q.build_query_as().fetch_all(&self.reads).await?;
        paginate(
            rows,
            limit,
            ConversationRow::cursor,
            ConversationRow::into_view,
        )
    }

    /// Newest first.
    pub async fn messages(
        &self,
        conversation_id: ConversationId,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<MessageView>, StoreError> {
        let mut conn = self.reads.acquire().await?;
        // A page of an unknown conversation is a 404, not an empty page.
        conversation(&mut conn, conversation_id).await?;
        let mut q = QueryBuilder::<Sqlite>::new(MESSAGE_COLUMNS);
        q.push(" FROM messages m LEFT JOIN identities i ON i.id = m.sender_id WHERE m.conversation_id = ")
            .push_bind(conversation_id.to_string());
        if let Some(cursor) = cursor {
            let before: MessageId = decode_cursor(cursor)?.parse().map_err(|_| bad_cursor())?;
            q.push(" AND m.id < ").push_bind(before.to_string());
        }
        q.push(" ORDER BY m.id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows: Vec<MessageRow> = q.build_query_as().fetch_all(&mut *conn).await?;
        paginate(rows, limit, |r| encode_cursor(&r.id), MessageRow::into_view)
    }

    /// Full-text search over message text, the messages the store learnt of last first (a
    /// backfilled message ranks by when it was read: ordering by id would sort every match,
    /// where the index hands them out in this order). Every word of `query` must match;
    /// the last one may be a prefix. Query syntax characters are taken literally.
    pub async fn search(
        &self,
        query: &str,
        conversation_id: Option<ConversationId>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<SearchHit>, StoreError> {
        let Some(fts_query) = fts_query(query) else {
            return Err(StoreError::Invalid("search query has no words".into()));
        };
        let mut q = QueryBuilder::<Sqlite>::new(MESSAGE_COLUMNS);
        q.push(", snippet(messages_fts, 0, '[', ']', '…', 16) AS snippet FROM messages_fts")
            .push(" JOIN messages m ON m.seq = messages_fts.rowid LEFT JOIN identities i ON i.id = m.sender_id")
            .push(" WHERE messages_fts MATCH ")
            .push_bind(fts_query);
        if let Some(id) = conversation_id {
            q.push(" AND m.conversation_id = ")
                .push_bind(id.to_string());
        }
        if let Some(cursor) = cursor {
            let before: i64 = decode_cursor(cursor)?.parse().map_err(|_| bad_cursor())?;
            q.push(" AND m.seq < ").push_bind(before);
        }
        q.push(" ORDER BY m.seq DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        #[derive(FromRow)]
        struct Hit {
            #[sqlx(flatten)]
            message: MessageRow,
            snippet: String,
        }
        let rows: Vec<Hit> = q.build_query_as().fetch_all(&self.reads).await?;
        paginate(
            rows,
            limit,
            |h| encode_cursor(&h.message.seq.to_string()),
            |h| {
                Ok(SearchHit {
                    message: h.message.into_view()?,
                    snippet: h.snippet,
                })
            },
        )
    }
}

/// Turns free text into an FTS5 query of quoted terms, so `"`, `*`, `NEAR` and friends
/// in user input are words, not syntax.
fn fts_query(input: &str) -> Option<String> {
    let words: Vec<&str> = input.split_whitespace().collect();
    let (last, rest) = words.split_last()?;
    let quote = |w: &str| format!("\"{}\"", w.replace('"', "\"\""));
    let mut terms: Vec<String> = rest.iter().map(|w| quote(w)).collect();
    terms.push(format!("{}*", quote(last)));
    Some(terms.join(" "))
}

#[cfg(test)]
mod tests {
    use super::fts_query;

    #[test]
    fn fts_query_quotes_every_word_and_prefixes_the_last() {
        assert_eq!(fts_query("  "), None);
        assert_eq!(
            fts_query("hello wor").as_deref(),
            Some("\"hello\" \"wor\"*")
        );
        assert_eq!(
            fts_query("a\"b NEAR(").as_deref(),
            Some("\"a\"\"b\" \"NEAR(\"*")
        );
    }
}
