//! Telegram through the Bot API: long polling or a webhook in, `sendMessage` out; edits,
//! deletions and the bot's reactions through `editMessageText`, `deleteMessage` and
//! `setMessageReaction`.
//!
//! Inbound, every update is recorded under its exact `(bot, update_id)` receipt together
//! with what it produced, so a redelivery is a no-op; the polling offset moves past an
//! update only once it was stored or deliberately skipped. Outbound, sends keep Telegram's
//! limits (about one message a second per chat, twenty a minute per group, thirty a second
//! overall) and obey `retry_after` on 429.
//!
//! Telegram has no idempotency key and a bot cannot read a chat's history, so a send that
//! timed out is reconciled by probing: message ids in a chat are sequential, and
//! `editMessageText` with the very same text on an id answers "message is not modified"
//! only when that message is ours and identical — proof of delivery that changes nothing.

mod api;
mod media;
mod normalize;
mod types;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::future::join_all;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use jiff::Timestamp;
use moltbot_protocol::event::{ConnectionState, ConversationKind, EventBody, Source};
use moltbot_protocol::{Channel, Event};
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use self::api::{ApiError, BotApi, RawUpdate};
use self::normalize::{BotIdentity, Normalized, Sender, normalize, sender_of};
use super::{
    Connector, Delete, Edit, Health, Media, OutgoingPart, Reactions, Reconciled, SendError, Target,
    Typing, Webhook, WebhookRejection,
};
use crate::config::{DmPolicy, GroupPolicy, TelegramConfig, TelegramMode};
use crate::metrics::Metrics;
use crate::store::{PairingAsk, PairingTicket, Receipt, Store, StoreError};

/// Telegram's limit on one message's text, in UTF-16 code units.
const MAX_TEXT: usize = 4096;
/// The update kinds the connector reads; others are never sent to it.
const ALLOWED_UPDATES: &[&str] = &["message", "edited_message", "message_reaction"];
/// Ids after the last known one that a reconciliation probes.
const PROBE_WINDOW: i64 = 8;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// Pairing codes on their way at once; past that a code waits for the sender's next message.
const MAX_PAIRING_SENDS: usize = 32;

pub struct Telegram {
    name: String,
    config: TelegramConfig,
    /// Shared with the downloads in flight, which mask the token in their errors.
    api: Arc<BotApi>,
    store: Store,
    metrics: Arc<Metrics>,
    health: Health,
    /// Known once `getMe` answered; updates wait for it (a mention needs the bot's name).
    bot: OnceCell<BotIdentity>,
    /// Shared with the pairing codes on their way.
    limits: Arc<Limits>,
    /// The highest message id seen per chat since start, for reconciliation hints.
    last_ids: Mutex<HashMap<i64, LastId>>,
    /// The senders whose pairing code is on its way.
    pairing_sends: Arc<Mutex<HashSet<i64>>>,
}

/// The highest message id seen in a chat since start. It is the chat's highest only once
/// merged with the store's (`settled`): after a restart, an update redelivered because its
/// offset was lost carries an id below the replies sent before the restart, and a probe
/// from there would edit those replies.
#[derive(Clone, Copy)]
struct LastId {
    id: i64,
    settled: bool,
}

/// A sender's place among the pairing codes on their way; given back when dropped, also
/// should the send's task end early.
struct PairingSend {
    sending: Arc<Mutex<HashSet<i64>>>,
    user: i64,
}

impl PairingSend {
    /// None if the sender's code is on its way already, or [`MAX_PAIRING_SENDS`] are.
    fn claim(sending: &Arc<Mutex<HashSet<i64>>>, user: i64) -> Option<Self> {
        let mut claimed = sending.lock().unwrap_or_else(PoisonError::into_inner);
        (claimed.len() < MAX_PAIRING_SENDS && claimed.insert(user)).then(|| Self {
            sending: sending.clone(),
            user,
        })
    }
}

impl Drop for PairingSend {
    fn drop(&mut self) {
        let mut claimed = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        claimed.remove(&self.user);
    }
}

/// Telegram's sending limits, and a pause every send waits out after a 429.
struct Limits {
    global: DefaultDirectRateLimiter,
    per_chat: DefaultKeyedRateLimiter<i64>,
    per_group: DefaultKeyedRateLimiter<i64>,
    paused_until: Mutex<Option<Instant>>,
}

impl Limits {
    fn new(config: &crate::config::TelegramRateLimit) -> Self {
        let at_least_one = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self {
            global: governor::RateLimiter::direct(Quota::per_second(at_least_one(
                config.global_per_second,
            ))),
            per_chat: governor::RateLimiter::keyed(Quota::per_second(at_least_one(
                config.per_chat_per_second,
            ))),
            per_group: governor::RateLimiter::keyed(Quota::per_minute(at_least_one(
                config.per_group_per_minute,
            ))),
            paused_until: Mutex::new(None),
        }
    }

    async fn until_ready(&self, chat: i64, kind: ConversationKind) {
        let paused = *self.paused_until.lock().expect("pause lock");
        if let Some(until) = paused {
            tokio::time::sleep_until(until.into()).await;
        }
        self.per_chat.until_key_ready(&chat).await;
        if kind != ConversationKind::Dm {
            self.per_group.until_key_ready(&chat).await;
        }
        self.global.until_ready().await;
    }

    /// After a 429 every send of the bot waits out its `retry_after`: Telegram's flood
    /// control is per bot.
    fn heed(&self, error: &ApiError) {
        let ApiError::RateLimited { retry_after } = error else {
            return;
        };
        let until = Instant::now() + *retry_after;
        let mut paused = self.paused_until.lock().expect("pause lock");
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }
}

/// What the DM and group policies say about a message's sender.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Admit,
    Ignore(&'static str),
    /// An unknown sender under DM policy `pairing`.
    Pair,
    /// An unknown sender while the connection has as many pairing requests waiting as it may.
    PairingFull,
}

fn admission(config: &TelegramConfig, sender: &Sender) -> Admission {
    let listed = |ids: &[String], id: i64| ids.iter().any(|allowed| allowed == &id.to_string());
    if sender.private {
        return match config.dm_policy {
            DmPolicy::Open => Admission::Admit,
            DmPolicy::Disabled => Admission::Ignore("direct messages are disabled"),
            DmPolicy::Allowlist if listed(&config.allow_from, sender.user_id) => Admission::Admit,
            DmPolicy::Allowlist => Admission::Ignore("sender not on the allowlist"),
            DmPolicy::Pairing if listed(&config.allow_from, sender.user_id) => Admission::Admit,
            DmPolicy::Pairing => Admission::Pair,
        };
    }
    match config.group_policy {
        GroupPolicy::Open => Admission::Admit,
        GroupPolicy::Disabled => Admission::Ignore("groups are disabled"),
        GroupPolicy::Allowlist if listed(&config.allow_groups, sender.chat_id) => Admission::Admit,
        GroupPolicy::Allowlist => Admission::Ignore("group not on the allowlist"),
    }
}

impl Telegram {
    pub fn new(
        config: &TelegramConfig,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let api = BotApi::new(
            &config.api_base,
            config.token.clone(),
            config.request_timeout,
        )
        .map_err(|e| e.to_string())?;
        let source = Source {
            channel: Channel::Telegram,
            connection: config.name.clone(),
        };
        Ok(Self {
            name: config.name.clone(),
            config: config.clone(),
            api: Arc::new(api),
            health: Health::new(store.clone(), source),
            store,
            metrics,
            bot: OnceCell::new(),
            limits: Arc::new(Limits::new(&config.rate_limit)),
            last_ids: Mutex::new(HashMap::new()),
            pairing_sends: Arc::default(),
        })
    }

    /// Asks `getMe` until it answers (the token may be fixed meanwhile) or shutdown.
    async fn identify(&self, shutdown: &CancellationToken) -> Option<BotIdentity> {
        let mut backoff = Backoff::default();
        loop {
            match self.api.get_me().await {
                Ok(user) => {
                    let Some(username) = user.username else {
                        self.health
                            .report(
                                ConnectionState::ActionRequired,
                                Some(
                                    "the token belongs to an account without a username, not a bot"
                                        .into(),
                                ),
                            )
                            .await;
                        return None;
                    };
                    return Some(BotIdentity {
                        id: user.id,
                        username,
                    });
                }
                Err(e) => self.report_error(&e).await,
            }
            if wait_or_shutdown(backoff.next(), shutdown).await {
                return None;
            }
        }
    }

    async fn report_error(&self, error: &ApiError) {
        let state = match error {
            ApiError::Unauthorized => ConnectionState::ActionRequired,
            _ => ConnectionState::Degraded,
        };
        let reason = match error {
            ApiError::Unauthorized => {
                "Telegram rejected the bot token: create a new one with BotFather".to_string()
            }
            other => other.to_string(),
        };
        self.health.report(state, Some(reason)).await;
    }

    async fn poll(&self, shutdown: &CancellationToken) {
        // getUpdates is refused while a webhook is set (say, by an earlier webhook config).
        // Once cleared, the bot is known to be reachable with its token, so it counts as
        // connected at once rather than after the first long poll returns (up to
        // `poll_timeout` later, with a token that was just fixed still shown as refused).
        match self.api.delete_webhook(false).await {
            Ok(()) => self.health.report(ConnectionState::Connected, None).await,
            Err(e) => {
                tracing::warn!(connection = %self.name, error = %e, "cannot clear the webhook before polling")
            }
        }
        let mut offset: Option<i64> = match self.store.cursor(&self.name).await {
            Ok(cursor) => cursor.and_then(|c| c.parse().ok()),
            Err(e) => {
                tracing::error!(connection = %self.name, error = %e, "cannot read the polling offset");
                return;
            }
        };
        let mut backoff = Backoff::default();
        // The offset to save, once a batch moved it. It is saved while the next poll waits:
        // the poll itself confirms the offset to Telegram, and receipts make a refetch after
        // a restart harmless, so nobody's reply needs to wait for this commit.
        let mut unsaved: Option<i64> = None;
        loop {
            let save = async {
                if let Some(next) = unsaved.take()
                    && let Err(e) = self.store.set_cursor(&self.name, next.to_string()).await
                {
                    // The next saved offset covers this one.
                    tracing::warn!(connection = %self.name, error = %e, "cannot save the polling offset");
                }
            };
            let poll = self
                .api
                .get_updates(offset, self.config.poll_timeout, ALLOWED_UPDATES);
            let updates = tokio::select! {
                _ = shutdown.cancelled() => return,
                ((), updates) = futures_util::future::join(save, poll) => updates,
            };
            let updates = match updates {
                Ok(updates) => updates,
                Err(e) => {
                    self.report_error(&e).await;
                    let wait = match &e {
                        ApiError::RateLimited { retry_after } => *retry_after,
                        _ => backoff.next(),
                    };
                    if wait_or_shutdown(wait, shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff = Backoff::default();
            self.health.report(ConnectionState::Connected, None).await;
            // The whole batch goes to the store at once, so it commits as one group; the
            // offset then moves past the updates handled before the first that failed.
            let ids: Vec<i64> = updates.iter().map(|u| u.update_id).collect();
            let results = join_all(updates.into_iter().map(|u| self.handle(u))).await;
            let mut handled = None;
            for (id, result) in ids.into_iter().zip(results) {
                if let Err(e) = result {
                    // Not stored and not skipped: the offset stays before it, so it comes again.
                    tracing::warn!(connection = %self.name, update_id = id, error = %e, "cannot store an update; it will be fetched again");
                    self.metrics.channel_update(&self.name, "held_back");
                    break;
                }
                handled = Some(id);
            }
            if let Some(last) = handled {
                let next = last.saturating_add(1);
                offset = Some(next);
                unsaved = Some(next);
            } else if offset.is_some() {
                // A batch that could not be stored: give the store a moment.
                if wait_or_shutdown(backoff.next(), shutdown).await {
                    return;
                }
            }
        }
    }

    async fn register_webhook(&self, shutdown: &CancellationToken) {
        let Some(webhook) = &self.config.webhook else {
            return;
        };
        let url = format!(
            "{}/hooks/{}",
            webhook.public_url.trim_end_matches('/'),
            self.name
        );
        let mut backoff = Backoff::default();
        loop {
            match self
                .api
                .set_webhook(
                    &url,
                    &webhook.secret,
                    webhook.max_connections,
                    ALLOWED_UPDATES,
                )
                .await
            {
                Ok(()) => {
                    self.health.report(ConnectionState::Connected, None).await;
                    return;
                }
                Err(e) => self.report_error(&e).await,
            }
            if wait_or_shutdown(backoff.next(), shutdown).await {
                return;
            }
        }
    }

    /// Stores or deliberately skips one update; an error means neither happened.
    async fn handle(&self, update: RawUpdate) -> Result<(), StoreError> {
        let receipt = Receipt {
            connection: self.name.clone(),
            id: update.update_id.to_string(),
        };
        let bot = self.bot.get().cloned().unwrap_or(BotIdentity {
            id: 0,
            username: String::new(),
        });
        let mut events = match normalize(&update.raw, &self.name, &bot) {
            Ok(Normalized::Event(event)) => vec![event],
            Ok(Normalized::Reactions(events)) => events,
            Ok(Normalized::Skip(reason)) => {
                tracing::debug!(connection = %self.name, update_id = update.update_id, reason, "update skipped");
                return self.skip(receipt, "skipped").await;
            }
            Err(e) => {
                tracing::warn!(connection = %self.name, update_id = update.update_id, error = %e, "malformed update skipped");
                return self.skip(receipt, "rejected").await;
            }
        };
        if let Some(sender) = sender_of(&update.raw) {
            match self.admit(&sender, &update.raw).await? {
                Admission::Admit => {}
                Admission::Ignore(reason) => {
                    tracing::debug!(connection = %self.name, update_id = update.update_id, reason, "update ignored by policy");
                    return self.skip(receipt, "ignored").await;
                }
                Admission::Pair => return self.skip(receipt, "pairing").await,
                Admission::PairingFull => {
                    tracing::debug!(connection = %self.name, update_id = update.update_id, "too many pairing requests waiting; a stranger is ignored");
                    return self.skip(receipt, "pairing_full").await;
                }
            }
        }
        // One update may hold several events; the receipt goes with the last, so a crash in
        // between brings the update again and the ones stored already are duplicates.
        let Some(last) = events.pop() else {
            return self.skip(receipt, "skipped").await;
        };
        for event in events {
            self.store.ingest(event).await?;
        }
        self.remember_id(&last);
        let outcome = self.store.deliver(last, receipt).await?;
        let outcome = if outcome.duplicate {
            "duplicate"
        } else {
            "stored"
        };
        self.metrics.channel_update(&self.name, outcome);
        Ok(())
    }

    async fn skip(&self, receipt: Receipt, outcome: &'static str) -> Result<(), StoreError> {
        self.store.skip_delivery(receipt).await?;
        self.metrics.channel_update(&self.name, outcome);
        Ok(())
    }

    /// Applies the DM and group policies; under `pairing` an unknown sender is given a code.
    async fn admit(
        &self,
        sender: &Sender,
        raw: &serde_json::Value,
    ) -> Result<Admission, StoreError> {
        let admission = admission(&self.config, sender);
        if admission != Admission::Pair {
            return Ok(admission);
        }
        let sender_id = sender.user_id.to_string();
        if self.store.is_paired(&self.name, &sender_id).await? {
            return Ok(Admission::Admit);
        }
        // Claimed before the store is asked, so that a message arriving while the code is
        // on its way, or recorded as sent, never brings a second one.
        let Some(claim) = PairingSend::claim(&self.pairing_sends, sender.user_id) else {
            return Ok(Admission::Pair);
        };
        let from = raw
            .get("message")
            .or_else(|| raw.get("edited_message"))
            .and_then(|m| m.get("from"));
        let text = |key: &str| {
            from.and_then(|f| f.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let display_name = match (text("first_name"), text("last_name")) {
            (Some(first), Some(last)) => Some(format!("{first} {last}")),
            (first, last) => first.or(last),
        };
        let ticket = self
            .store
            .request_pairing(PairingAsk {
                connection: self.name.clone(),
                sender_id: sender_id.clone(),
                chat_id: sender.chat_id.to_string(),
                display_name,
                handle: text("username"),
                max_pending: self.config.max_pending_pairings,
            })
            .await?;
        Ok(match ticket {
            PairingTicket::Approved => Admission::Admit,
            PairingTicket::SendCode { code, expires_at } => {
                self.send_pairing_code(sender.chat_id, &code, expires_at, claim);
                Admission::Pair
            }
            PairingTicket::Full => Admission::PairingFull,
            PairingTicket::Wait | PairingTicket::Denied => Admission::Pair,
        })
    }

    /// Sends a pairing code beside the updates, within the bot's limits like every send,
    /// so that a slow or rate-limited send never holds up the batch it came in. Best
    /// effort: until one is sent, each message from the sender brings the code again.
    fn send_pairing_code(&self, chat: i64, code: &str, expires_at: Timestamp, claim: PairingSend) {
        let text = format!(
            "Hi! I only talk with people my owner has approved. Your pairing code is {code}. \
             Send it to my owner; the code is valid for one hour."
        );
        let (api, limits, store) = (self.api.clone(), self.limits.clone(), self.store.clone());
        let name = self.name.clone();
        tokio::spawn(async move {
            limits.until_ready(chat, ConversationKind::Dm).await;
            // A long pause after a 429 may outlast the code; the next message brings a new one.
            if Timestamp::now() >= expires_at {
                return;
            }
            let sent = api.send_message(chat, &text, None).await;
            match &sent {
                Ok(_) => {
                    let sender_id = claim.user.to_string();
                    if let Err(e) = store.pairing_code_sent(&name, &sender_id).await {
                        tracing::warn!(connection = %name, error = %e, "cannot record a sent pairing code");
                    }
                }
                Err(e) => limits.heed(e),
            }
            // Given back only once recorded or paused, so the sender's next message finds
            // either.
            drop(claim);
            if let Err(e) = sent {
                tracing::warn!(connection = %name, error = %e, "cannot send a pairing code");
            }
        });
    }

    fn remember_id(&self, event: &Event) {
        if let EventBody::MessageReceived(message) = &event.body
            && let (Ok(chat), Some(Ok(id))) = (
                message.conversation.provider_id.parse::<i64>(),
                message
                    .provider_message_id
                    .as_deref()
                    .map(str::parse::<i64>),
            )
        {
            self.note_id(chat, id);
        }
    }

    fn note_id(&self, chat: i64, id: i64) {
        self.merge_id(chat, id, false);
    }

    /// Raises the chat's last id to `id`, settled from now on if `settles`; answers it.
    fn merge_id(&self, chat: i64, id: i64, settles: bool) -> i64 {
        let mut last = self.last_ids.lock().expect("ids lock");
        let entry = last.entry(chat).or_insert(LastId { id, settled: false });
        entry.id = entry.id.max(id);
        entry.settled |= settles;
        entry.id
    }
}

#[async_trait]
impl Connector for Telegram {
    fn name(&self) -> &str {
        &self.name
    }

    fn channel(&self) -> Channel {
        Channel::Telegram
    }

    fn max_text_len(&self) -> usize {
        MAX_TEXT
    }

    fn char_len(&self, c: char) -> usize {
        c.len_utf16()
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(bot) = self.identify(&shutdown).await else {
            return;
        };
        tracing::info!(connection = %self.name, bot = %bot.username, "telegram bot identified");
        let _ = self.bot.set(bot);
        match self.config.mode {
            TelegramMode::Polling => self.poll(&shutdown).await,
            TelegramMode::Webhook => self.register_webhook(&shutdown).await,
        }
    }

    async fn send(&self, part: &OutgoingPart<'_>) -> Result<Option<String>, SendError> {
        let chat = chat_id(part.chat)?;
        self.limits.until_ready(chat, part.kind).await;
        let reply_to = part.reply_to.and_then(|id| id.parse().ok());
        match self.api.send_message(chat, part.text, reply_to).await {
            Ok(message) => {
                self.note_id(chat, message.message_id);
                Ok(Some(message.message_id.to_string()))
            }
            Err(e) => Err(self.send_error(e).await),
        }
    }

    async fn attempt_hint(&self, part: &OutgoingPart<'_>) -> Option<String> {
        let chat = part.chat.parse::<i64>().ok()?;
        let known = self.last_ids.lock().expect("ids lock").get(&chat).copied();
        if let Some(LastId { id, settled: true }) = known {
            return Some(id.to_string());
        }
        // Once per chat after a start: what this process saw may lag behind the store.
        let id = match self.stored_last_id(part, true).await {
            Some(stored) => self.merge_id(chat, stored, true),
            None => known?.id,
        };
        Some(id.to_string())
    }

    async fn reconcile(&self, part: &OutgoingPart<'_>, hint: Option<&str>) -> Reconciled {
        let hint = match hint {
            Some(hint) => Some(hint.to_owned()),
            // Recorded with no attempt (a handed send's first): what came after the message
            // may be numbered after it.
            None => self
                .stored_last_id(part, false)
                .await
                .map(|id| id.to_string()),
        };
        let (Ok(chat), Some(Ok(last_known))) = (
            part.chat.parse::<i64>(),
            hint.as_deref().map(str::parse::<i64>),
        ) else {
            return Reconciled::Unknown;
        };
        for candidate in last_known + 1..=last_known + PROBE_WINDOW {
            loop {
                self.limits.until_ready(chat, part.kind).await;
                match self.api.edit_message_text(chat, candidate, part.text).await {
                    Err(ApiError::BadRequest(d)) if d.contains("message is not modified") => {
                        self.note_id(chat, candidate);
                        return Reconciled::Delivered(candidate.to_string());
                    }
                    // Ids are sequential in a chat: nothing exists past the first gap.
                    Err(ApiError::BadRequest(d)) if d.contains("message to edit not found") => {
                        return Reconciled::NotDelivered;
                    }
                    // Someone else's message: ours, if sent, is further on.
                    Err(ApiError::BadRequest(d)) if d.contains("can't be edited") => break,
                    Err(e @ ApiError::RateLimited { .. }) => self.limits.heed(&e),
                    Ok(_) => {
                        // Our own message with other text: it was changed, which the probe
                        // must never do; it cannot happen while a chat's sends are sequential.
                        tracing::error!(connection = %self.name, chat, candidate, "a reconciliation probe edited a message");
                        return Reconciled::Unknown;
                    }
                    Err(e) => {
                        tracing::warn!(connection = %self.name, error = %e, "reconciliation probe failed");
                        return Reconciled::Unknown;
                    }
                }
            }
        }
        Reconciled::NotDelivered
    }

    fn webhook(&self) -> Option<&dyn Webhook> {
        (self.config.mode == TelegramMode::Webhook).then_some(self as &dyn Webhook)
    }

    fn typing(&self) -> Option<&dyn Typing> {
        Some(self)
    }

    fn edit(&self) -> Option<&dyn Edit> {
        Some(self)
    }

    fn delete(&self) -> Option<&dyn Delete> {
        Some(self)
    }

    fn reactions(&self) -> Option<&dyn Reactions> {
        Some(self)
    }

    fn media(&self) -> Option<&dyn Media> {
        Some(self)
    }
}

impl Telegram {
    /// Where the chat's numbering stood for the part's message, from the store; see
    /// [`Store::last_provider_id`].
    async fn stored_last_id(&self, part: &OutgoingPart<'_>, whole_chat: bool) -> Option<i64> {
        match self.store.last_provider_id(part.message, whole_chat).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(connection = %self.name, error = %e, "cannot read where the chat's message ids stood");
                None
            }
        }
    }

    async fn send_error(&self, error: ApiError) -> SendError {
        let reason = error.to_string();
        self.limits.heed(&error);
        match error {
            ApiError::RateLimited { retry_after } => SendError::Retry {
                reason,
                retry_after: Some(retry_after),
            },
            // The person must fix the token; the message waits (with backoff) until then.
            ApiError::Unauthorized => {
                self.report_error(&error).await;
                SendError::Retry {
                    reason,
                    retry_after: None,
                }
            }
            _ if error.is_ambiguous() => SendError::Ambiguous { reason },
            _ if error.is_retryable() => SendError::Retry {
                reason,
                retry_after: None,
            },
            _ => SendError::Permanent { reason },
        }
    }
}

#[async_trait]
impl Webhook for Telegram {
    async fn receive(&self, headers: &HeaderMap, body: Bytes) -> Result<(), WebhookRejection> {
        let expected = self
            .config
            .webhook
            .as_ref()
            .map(|w| w.secret.expose().as_bytes())
            .unwrap_or_default();
        let presented = headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if expected.is_empty() || !bool::from(presented.ct_eq(expected)) {
            self.metrics.channel_update(&self.name, "forged");
            return Err(WebhookRejection::Unauthorized);
        }
        if self.bot.get().is_none() {
            // Mentions cannot be recognised yet; Telegram delivers again shortly.
            return Err(WebhookRejection::Unavailable(
                "the bot is still starting".into(),
            ));
        }
        let raw: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| WebhookRejection::BadRequest(format!("the update is not JSON: {e}")))?;
        let Some(update_id) = raw.get("update_id").and_then(serde_json::Value::as_i64) else {
            self.metrics.channel_update(&self.name, "rejected");
            return Err(WebhookRejection::BadRequest(
                "the update has no numeric update_id".into(),
            ));
        };
        self.handle(RawUpdate { update_id, raw })
            .await
            .map_err(|e| WebhookRejection::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl Typing for Telegram {
    async fn typing(&self, chat: &str) -> Result<(), SendError> {
        let chat = chat_id(chat)?;
        match self.api.send_chat_action(chat, "typing").await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.send_error(e).await),
        }
    }
}

#[async_trait]
impl Edit for Telegram {
    async fn edit(&self, target: &Target<'_>, text: &str) -> Result<(), SendError> {
        let (chat, message) = self.ready(target).await?;
        match self.api.edit_message_text(chat, message, text).await {
            // Already this text: an earlier attempt arrived.
            Err(ApiError::BadRequest(d)) if d.contains("message is not modified") => Ok(()),
            Ok(_) => Ok(()),
            Err(e) => Err(self.send_error(e).await),
        }
    }
}

#[async_trait]
impl Delete for Telegram {
    async fn delete(&self, target: &Target<'_>) -> Result<(), SendError> {
        let (chat, message) = self.ready(target).await?;
        match self.api.delete_message(chat, message).await {
            // Already gone: an earlier attempt arrived, or someone deleted it in the app.
            Err(ApiError::BadRequest(d)) if d.contains("message to delete not found") => Ok(()),
            Ok(()) => Ok(()),
            Err(e) => Err(self.send_error(e).await),
        }
    }
}

/// A bot without Telegram Premium may set one reaction per message, and each call sets the
/// whole list: adding replaces, removing clears.
#[async_trait]
impl Reactions for Telegram {
    fn max_per_message(&self) -> Option<usize> {
        Some(1)
    }

    async fn add(&self, target: &Target<'_>, emoji: &str) -> Result<(), SendError> {
        let (chat, message) = self.ready(target).await?;
        match self.api.set_message_reaction(chat, message, &[emoji]).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.send_error(e).await),
        }
    }

    async fn remove(&self, target: &Target<'_>, _emoji: &str) -> Result<(), SendError> {
        let (chat, message) = self.ready(target).await?;
        match self.api.set_message_reaction(chat, message, &[]).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.send_error(e).await),
        }
    }
}

impl Telegram {
    /// The chat and message ids of a change's target, once the rate limits allow a call:
    /// Telegram's flood control counts every call that changes a chat.
    async fn ready(&self, target: &Target<'_>) -> Result<(i64, i64), SendError> {
        let chat = chat_id(target.chat)?;
        let message = target
            .message
            .and_then(|id| id.parse::<i64>().ok())
            .ok_or_else(|| SendError::Permanent {
                reason: "the message has no Telegram message id".into(),
            })?;
        self.limits.until_ready(chat, target.kind).await;
        Ok((chat, message))
    }
}

fn chat_id(chat: &str) -> Result<i64, SendError> {
    chat.parse().map_err(|_| SendError::Permanent {
        reason: format!("{chat:?} is not a Telegram chat id"),
    })
}

/// Doubling waits for a loop that keeps failing.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.next.unwrap_or(FIRST_BACKOFF);
        self.next = Some((wait * 2).min(MAX_BACKOFF));
        wait
    }
}

/// True when shutdown came first.
async fn wait_or_shutdown(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dm_policy: DmPolicy, group_policy: GroupPolicy) -> TelegramConfig {
        let yaml = format!(
            "name: bot\ntoken: \"1:abc\"\ndm_policy: {}\ngroup_policy: {}\nallow_from: [\"7\"]\nallow_groups: [\"-100\"]\n",
            serde_json::to_value(dm_policy).unwrap().as_str().unwrap(),
            serde_json::to_value(group_policy)
                .unwrap()
                .as_str()
                .unwrap(),
        );
        serde_saphyr::from_str(&yaml).unwrap()
    }

    fn dm(user: i64) -> Sender {
        Sender {
            user_id: user,
            chat_id: user,
            private: true,
        }
    }

    fn group(chat: i64) -> Sender {
        Sender {
            user_id: 5,
            chat_id: chat,
            private: false,
        }
    }

    #[test]
    fn dm_policies() {
        let open = config(DmPolicy::Open, GroupPolicy::Open);
        assert_eq!(admission(&open, &dm(1)), Admission::Admit);
        let disabled = config(DmPolicy::Disabled, GroupPolicy::Open);
        assert!(matches!(admission(&disabled, &dm(7)), Admission::Ignore(_)));
        let allowlist = config(DmPolicy::Allowlist, GroupPolicy::Open);
        assert_eq!(admission(&allowlist, &dm(7)), Admission::Admit);
        assert!(matches!(
            admission(&allowlist, &dm(8)),
            Admission::Ignore(_)
        ));
        let pairing = config(DmPolicy::Pairing, GroupPolicy::Open);
        assert_eq!(admission(&pairing, &dm(7)), Admission::Admit);
        assert_eq!(admission(&pairing, &dm(8)), Admission::Pair);
    }

    #[test]
    fn group_policies_do_not_depend_on_the_dm_policy() {
        let allowlist = config(DmPolicy::Disabled, GroupPolicy::Allowlist);
        assert_eq!(admission(&allowlist, &group(-100)), Admission::Admit);
        assert!(matches!(
            admission(&allowlist, &group(-200)),
            Admission::Ignore(_)
        ));
        let open = config(DmPolicy::Disabled, GroupPolicy::Open);
        assert_eq!(admission(&open, &group(-200)), Admission::Admit);
        let disabled = config(DmPolicy::Open, GroupPolicy::Disabled);
        assert!(matches!(
            admission(&disabled, &group(-100)),
            Admission::Ignore(_)
        ));
    }
}
