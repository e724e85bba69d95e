//! A bot's queue of unconfirmed updates, with the real server's offset rules and the
//! bookkeeping of webhook retries.

use std::collections::{HashSet, VecDeque};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::webhook;

/// A bot's unconfirmed updates, oldest first.
pub(super) struct UpdateQueue {
    pending: VecDeque<QueuedUpdate>,
    next_id: i64,
    next_seq: u64,
}

struct QueuedUpdate {
    /// Tells updates apart even when raw updates share an update_id.
    seq: u64,
    /// What getUpdates' offset compares against.
    id: i64,
    body: Value,
    /// The chat it concerns: a webhook gets a chat's updates one at a time, in order.
    chat_id: Option<i64>,
    failed_deliveries: u32,
    /// Set after a failed delivery: no new attempt before.
    retry_at: Option<Instant>,
}

/// How far past the queue's end an offset may point before the server takes it for stale.
const STALE_OFFSET_SLACK: i64 = 10;

impl UpdateQueue {
    pub(super) fn new(first_id: i64) -> UpdateQueue {
        UpdateQueue {
            pending: VecDeque::new(),
            next_id: first_id,
            next_seq: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn clear(&mut self) {
        self.pending.clear();
    }

    /// Queues `{"update_id": …, kind: payload}` under the next id.
    pub(super) fn push(&mut self, kind: &str, payload: Value) -> i64 {
        let id = self.take_id();
        self.enqueue(id, json!({ "update_id": id, kind: payload }));
        id
    }

    /// Queues any JSON (see [`super::FakeTelegram::push_raw_update`]).
    pub(super) fn push_raw(&mut self, mut update: Value) -> i64 {
        let id = match update.get("update_id").and_then(Value::as_i64) {
            Some(id) => {
                self.next_id = self.next_id.max(id.saturating_add(1));
                id
            }
            None => {
                let id = self.take_id();
                if let Some(object) = update.as_object_mut() {
                    object.entry("update_id").or_insert(json!(id));
                }
                id
            }
        };
        self.enqueue(id, update);
        id
    }

    pub(super) fn jump_to(&mut self, next_id: i64) {
        self.next_id = next_id;
    }

    fn take_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    fn enqueue(&mut self, id: i64, body: Value) {
        let chat_id = body.as_object().and_then(|update| {
            update
                .values()
                .find_map(|payload| payload["chat"]["id"].as_i64())
        });
        self.pending.push_back(QueuedUpdate {
            seq: self.next_seq,
            id,
            body,
            chat_id,
            failed_deliveries: 0,
            retry_at: None,
        });
        self.next_seq += 1;
    }

    /// Applies a getUpdates offset as the real server's queue does and returns the id to
    /// answer from (`None`: from the oldest pending update). A positive offset forgets every
    /// update below it, a negative one all but the last `-offset`, 0 nothing; an offset more
    /// than [`STALE_OFFSET_SLACK`] past the queue's end is stale (ids restarted) and forgets
    /// nothing.
    pub(super) fn confirm(&mut self, offset: i64) -> Option<i64> {
        let from = match offset {
            0 => return None,
            negative if negative < 0 => self.next_id.saturating_add(negative),
            positive => positive,
        };
        if from > self.next_id.saturating_add(STALE_OFFSET_SLACK) {
            return None;
        }
        self.pending.retain(|update| update.id >= from);
        Some(from)
    }

    /// Up to `limit` pending updates from id `from` on, oldest first.
    pub(super) fn batch(&self, from: Option<i64>, limit: usize) -> Vec<Value> {
        self.pending
            .iter()
            .filter(|update| from.is_none_or(|from| update.id >= from))
            .take(limit)
            .map(|update| update.body.clone())
            .collect()
    }

    /// Up to `room` updates a webhook may send now, by sequence number: not already on their
    /// way, not waiting out a retry delay, and first among the pending updates of their chat.
    pub(super) fn deliverable(
        &self,
        now: Instant,
        in_flight: &HashSet<u64>,
        room: usize,
    ) -> Vec<(u64, Value)> {
        let mut chats_seen = HashSet::new();
        self.pending
            .iter()
            .filter(|update| update.chat_id.is_none_or(|chat| chats_seen.insert(chat)))
            .filter(|update| {
                !in_flight.contains(&update.seq) && update.retry_at.is_none_or(|at| at <= now)
            })
            .take(room)
            .map(|update| (update.seq, update.body.clone()))
            .collect()
    }

    /// When the next update waiting out a retry delay may go again.
    pub(super) fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.pending
            .iter()
            .filter_map(|update| update.retry_at)
            .filter(|at| *at > now)
            .min()
    }

    /// Forgets an update its webhook confirmed.
    pub(super) fn delivered(&mut self, seq: u64) {
        self.pending.retain(|update| update.seq != seq);
    }

    /// Holds back an update whose delivery failed, a little longer after each failure.
    pub(super) fn delivery_failed(&mut self, seq: u64, now: Instant) {
        if let Some(update) = self.pending.iter_mut().find(|update| update.seq == seq) {
            update.failed_deliveries += 1;
            update.retry_at = Some(now + webhook::retry_delay(update.failed_deliveries));
        }
    }
}
