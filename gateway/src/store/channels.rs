//! What connectors keep in the store: where they resume reading their provider, which
//! provider deliveries they handled, their health, and pairing requests from unknown senders.

use jiff::Timestamp;
use moltbot_protocol::EventId;
use moltbot_protocol::event::{ConnectionState, Source};
use moltbot_protocol::ids::MessageId;
use moltbot_protocol::inbox::{ConnectionStatusView, PairingRequestView, PairingState};
use rand::Rng;
use rusqlite::params;
use sqlx::SqliteConnection;

use super::publish::Change;
use super::write::Ctx;
use super::{Store, StoreError, Write, Written, from_ms, ms};

/// How long a pairing code stays valid.
const PAIRING_CODE_TTL_MS: i64 = 60 * 60 * 1000;
/// An unknown sender who keeps writing is reminded of their code at most this often.
const PAIRING_CODE_RESEND_MS: i64 = 10 * 60 * 1000;
/// No 0/O or 1/I: the code is read off a phone and typed into the inbox.
const PAIRING_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// One provider delivery (Telegram: an update id), exactly as the provider names it:
/// ids can jump, so "at most the last id seen" would lose updates.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub connection: String,
    pub id: String,
}

/// An unknown sender writing to a connection whose DM policy is `pairing`.
#[derive(Clone, Debug)]
pub struct PairingAsk {
    pub connection: String,
    pub sender_id: String,
    pub chat_id: String,
    pub display_name: Option<String>,
    pub handle: Option<String>,
    /// Requests of the connection that may be pending at once.
    pub max_pending: u32,
}

/// What to do about a sender who asked to pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairingTicket {
    /// Tell them this code (new, or a reminder of the one they have), valid until `expires_at`.
    SendCode { code: String, expires_at: Timestamp },
    /// They have a valid code and were told recently: stay quiet.
    Wait,
    /// Approved meanwhile: let the message in.
    Approved,
    /// The tenant said no: stay quiet.
    Denied,
    /// A new request, but the connection has as many pending as it may: stay quiet.
    Full,
}

#[derive(Debug)]
pub(crate) enum ChannelWrite {
    /// A delivery deliberately not stored (a kind of update the gateway ignores): a
    /// redelivery is then skipped without another look.
    Skipped(Receipt),
    SetCursor {
        connection: String,
        cursor: String,
    },
    RequestPairing(PairingAsk),
    PairingCodeSent {
        connection: String,
        sender_id: String,
    },
    DecidePairing {
        code: String,
        approve: bool,
    },
    PruneReceipts {
        before: i64,
    },
}

pub(super) fn apply(cx: &mut Ctx<'_>, write: &ChannelWrite) -> Result<Written, StoreError> {
    match write {
        ChannelWrite::Skipped(receipt) => {
            let new = record_receipt(cx, receipt, None)?;
            Ok(Written::Recorded { new })
        }
        ChannelWrite::SetCursor { connection, cursor } => {
            cx.execute(
                "INSERT INTO channel_cursors (connection, cursor, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT (connection) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                params![connection, cursor, cx.now],
            )?;
            Ok(Written::Done)
        }
        ChannelWrite::RequestPairing(ask) => request_pairing(cx, ask).map(Written::Pairing),
        ChannelWrite::PairingCodeSent {
            connection,
            sender_id,
        } => {
            cx.execute(
                "UPDATE pairing_requests SET code_sent_at = ? WHERE connection = ? AND sender_id = ?",
                params![cx.now, connection, sender_id],
            )?;
            Ok(Written::Done)
        }
        ChannelWrite::DecidePairing { code, approve } => {
            let state = if *approve { "approved" } else { "denied" };
            let updated = cx.execute(
                "UPDATE pairing_requests SET state = ?, decided_at = ? WHERE code = ?",
                params![state, cx.now, code],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound("pairing code"));
            }
            Ok(Written::Done)
        }
        ChannelWrite::PruneReceipts { before } => {
            cx.execute(
                "DELETE FROM inbound_receipts WHERE received_at < ?",
                [before],
            )?;
            Ok(Written::Done)
        }
    }
}

/// Records a delivery; false when it was recorded before.
pub(super) fn record_receipt(
    cx: &mut Ctx<'_>,
    receipt: &Receipt,
    event_id: Option<EventId>,
) -> Result<bool, StoreError> {
    let inserted = cx.execute(
        "INSERT INTO inbound_receipts (connection, receipt, event_id, received_at) VALUES (?, ?, ?, ?)
         ON CONFLICT DO NOTHING",
        params![
            receipt.connection,
            receipt.id,
            event_id.map(|id| id.to_string()),
            cx.now
        ],
    )?;
    Ok(inserted == 1)
}

/// Keeps a connection's health; `since` moves only when the state changes.
pub(super) fn set_connection_state(
    cx: &mut Ctx<'_>,
    source: &Source,
    state: ConnectionState,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    cx.execute(
        "INSERT INTO connection_state (connection, channel, state, reason, since) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (connection) DO UPDATE SET
            since = CASE WHEN state = excluded.state THEN since ELSE excluded.since END,
            state = excluded.state, reason = excluded.reason, channel = excluded.channel",
        params![
            source.connection,
            source.channel.as_str(),
            state.as_str(),
            reason,
            cx.now
        ],
    )?;
    cx.changed(Change::ConnectionUpdated(source.connection.clone()));
    Ok(())
}

fn request_pairing(cx: &mut Ctx<'_>, ask: &PairingAsk) -> Result<PairingTicket, StoreError> {
    let existing = cx.query_optional(
        "SELECT code, state, expires_at, code_sent_at FROM pairing_requests WHERE connection = ? AND sender_id = ?",
        params![ask.connection, ask.sender_id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        },
    )?;
    match existing {
        Some((_, state, _, _)) if state == "approved" => return Ok(PairingTicket::Approved),
        Some((_, state, _, _)) if state == "denied" => return Ok(PairingTicket::Denied),
        Some((code, _, expires_at, sent_at)) if expires_at > cx.now => {
            let recently = sent_at.is_some_and(|at| cx.now - at < PAIRING_CODE_RESEND_MS);
            return if recently {
                Ok(PairingTicket::Wait)
            } else {
                send_code(code, expires_at)
            };
        }
        _ => {}
    }
    // The sender's own request, if any, has expired: it does not count.
    let pending: i64 = cx
        .conn
        .prepare_cached(
            "SELECT count(*) FROM pairing_requests
             WHERE connection = ? AND state = 'pending' AND expires_at > ?",
        )?
        .query_row(params![ask.connection, cx.now], |r| r.get(0))?;
    if pending >= i64::from(ask.max_pending) {
        return Ok(PairingTicket::Full);
    }
    let code = new_pairing_code();
    cx.execute(
        "INSERT INTO pairing_requests (connection, sender_id, chat_id, display_name, handle, code, state,
                                       created_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)
         ON CONFLICT (connection, sender_id) DO UPDATE SET
            chat_id = excluded.chat_id, display_name = excluded.display_name, handle = excluded.handle,
            code = excluded.code, state = 'pending', created_at = excluded.created_at,
            expires_at = excluded.expires_at, code_sent_at = NULL",
        params![
            ask.connection,
            ask.sender_id,
            ask.chat_id,
            ask.display_name,
            ask.handle,
            code,
            cx.now,
            cx.now + PAIRING_CODE_TTL_MS,
        ],
    )?;
    send_code(code, cx.now + PAIRING_CODE_TTL_MS)
}

fn send_code(code: String, expires_at: i64) -> Result<PairingTicket, StoreError> {
    let expires_at = from_ms(expires_at)?;
    Ok(PairingTicket::SendCode { code, expires_at })
}

fn new_pairing_code() -> String {
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(PAIRING_ALPHABET[rng.random_range(0..PAIRING_ALPHABET.len())]))
        .collect()
}

pub(super) async fn connection_status(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<ConnectionStatusView, StoreError> {
    let row: Option<(String, String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT connection, channel, state, reason, since FROM connection_state WHERE connection = ?",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    status_view(row.ok_or(StoreError::NotFound("connection"))?)
}

fn status_view(
    (name, channel, state, reason, since): (String, String, String, Option<String>, i64),
) -> Result<ConnectionStatusView, StoreError> {
    let corrupt = |e: moltbot_protocol::ProtocolError| StoreError::Corrupt(e.to_string());
    Ok(ConnectionStatusView {
        name,
        channel: channel.parse().map_err(corrupt)?,
        state: state.parse().map_err(corrupt)?,
        reason,
        since: Some(from_ms(since)?),
    })
}

#[derive(sqlx::FromRow)]
struct PairingRow {
    connection: String,
    sender_id: String,
    display_name: Option<String>,
    handle: Option<String>,
    code: String,
    state: String,
    created_at: i64,
    expires_at: i64,
}

impl Store {
    /// Stores an event that came in as provider delivery `receipt`, once per receipt.
    pub async fn deliver(
        &self,
        event: moltbot_protocol::Event,
        receipt: Receipt,
    ) -> Result<super::IngestOutcome, StoreError> {
        let write = super::inbox::InboxWrite::Ingest {
            event: Box::new(event),
            receipt: Some(receipt),
        };
        match self.submit(Write::Inbox(write)).await? {
            Written::Ingested(outcome) => Ok(outcome),
            other => Err(super::unexpected(other)),
        }
    }

    /// Remembers a delivery skipped on purpose; false when it had been recorded before.
    pub async fn skip_delivery(&self, receipt: Receipt) -> Result<bool, StoreError> {
        match self
            .submit(Write::Channel(ChannelWrite::Skipped(receipt)))
            .await?
        {
            Written::Recorded { new } => Ok(new),
            other => Err(super::unexpected(other)),
        }
    }

    pub async fn cursor(&self, connection: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT cursor FROM channel_cursors WHERE connection = ?")
                .bind(connection)
                .fetch_optional(&self.reads)
                .await?,
        )
    }

    pub async fn set_cursor(&self, connection: &str, cursor: String) -> Result<(), StoreError> {
        self.submit(Write::Channel(ChannelWrite::SetCursor {
            connection: connection.to_string(),
            cursor,
        }))
        .await
        .map(drop)
    }

    /// Where a provider's numbering stood for `message`: the highest numeric provider id in
    /// its conversation, over every part of every message that has one. With `whole_chat`
    /// false, only the messages stored before it count, and its own parts: one stored later
    /// may have been numbered after it, while those before it arrived before it was written
    /// or, being ours, went out ahead of it. Right before an attempt everything stored was
    /// numbered before it, so `whole_chat` answers closer then.
    pub async fn last_provider_id(
        &self,
        message: MessageId,
        whole_chat: bool,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT max(id) FROM (
                 SELECT CAST(p.provider_message_id AS INTEGER) AS id
                 FROM messages m JOIN messages p ON p.conversation_id = m.conversation_id
                 WHERE m.id = ?1 AND (?2 OR p.seq < m.seq) AND p.provider_message_id IS NOT NULL
                 UNION ALL
                 -- A message keeps the id of its first part; its send's row has them all.
                 SELECT CAST(part.value AS INTEGER)
                 FROM messages m
                 JOIN messages p ON p.conversation_id = m.conversation_id AND p.direction = 'outbound'
                 JOIN outbox o ON o.id = p.id AND o.kind = 'send',
                 json_each(o.provider_message_ids) part
                 WHERE m.id = ?1 AND (?2 OR p.seq <= m.seq))",
        )
        .bind(message.to_string())
        .bind(whole_chat)
        .fetch_one(&self.reads)
        .await?)
    }

    /// Every connection's last reported health.
    pub async fn connection_states(&self) -> Result<Vec<ConnectionStatusView>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT connection, channel, state, reason, since FROM connection_state ORDER BY connection",
        )
        .fetch_all(&self.reads)
        .await?;
        rows.into_iter().map(status_view).collect()
    }

    pub async fn request_pairing(&self, ask: PairingAsk) -> Result<PairingTicket, StoreError> {
        match self
            .submit(Write::Channel(ChannelWrite::RequestPairing(ask)))
            .await?
        {
            Written::Pairing(ticket) => Ok(ticket),
            other => Err(super::unexpected(other)),
        }
    }

    pub async fn pairing_code_sent(
        &self,
        connection: &str,
        sender_id: &str,
    ) -> Result<(), StoreError> {
        self.submit(Write::Channel(ChannelWrite::PairingCodeSent {
            connection: connection.to_string(),
            sender_id: sender_id.to_string(),
        }))
        .await
        .map(drop)
    }

    /// Whether the tenant approved this sender's pairing request.
    pub async fn is_paired(&self, connection: &str, sender_id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM pairing_requests WHERE connection = ? AND sender_id = ? AND state = 'approved'",
        )
        .bind(connection)
        .bind(sender_id)
        .fetch_optional(&self.reads)
        .await?;
        Ok(found.is_some())
    }

    /// Pending requests first, newest first.
    pub async fn pairing_requests(&self) -> Result<Vec<PairingRequestView>, StoreError> {
        let rows: Vec<PairingRow> = sqlx::query_as(
            "SELECT connection, sender_id, display_name, handle, code, state, created_at, expires_at
             FROM pairing_requests ORDER BY state = 'pending' DESC, created_at DESC LIMIT 500",
        )
        .fetch_all(&self.reads)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(PairingRequestView {
                    connection: row.connection,
                    sender_id: row.sender_id,
                    display_name: row.display_name,
                    handle: row.handle,
                    code: row.code,
                    state: match row.state.as_str() {
                        "pending" => PairingState::Pending,
                        "approved" => PairingState::Approved,
                        _ => PairingState::Denied,
                    },
                    created_at: from_ms(row.created_at)?,
                    expires_at: from_ms(row.expires_at)?,
                })
            })
            .collect()
    }

    pub async fn decide_pairing(&self, code: &str, approve: bool) -> Result<(), StoreError> {
        self.submit(Write::Channel(ChannelWrite::DecidePairing {
            code: code.to_string(),
            approve,
        }))
        .await
        .map(drop)
    }

    /// Forgets deliveries older than `before`: providers redeliver for a day at most.
    pub async fn prune_receipts(&self, before: Timestamp) -> Result<(), StoreError> {
        self.submit(Write::Channel(ChannelWrite::PruneReceipts {
            before: ms(before),
        }))
        .await
        .map(drop)
    }
}
