//! The recent history of conversations, kept between runs.
//!
//! Reading a conversation's newest messages for every run cost more than anything else a
//! run did on a read connection: after each commit SQLite drops such a connection's page
//! cache, so the messages of a busy conversation (scattered among everyone else's) came
//! from the file again each time. (A run's start is now read on the writer's connection,
//! whose cache stays warm; the copy still spares it decoding the whole history.) A run now
//! reads only the messages newer than the ones kept here, and the whole history again
//! only when the copy may differ from the store: a message was edited, deleted or removed,
//! or older ones backfilled (the conversation's `history_rev`), the rolling summary moved,
//! or the copy is older than [`MAX_AGE`] (which bounds what no revision tracks, such as a
//! sender's new display name).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use moltbot_protocol::ids::{ConversationId, MessageId};

use crate::store::HistoryRow;

/// A copy older than this is read again in full.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(300);

/// The history of one conversation as a run last built its prompt from it.
#[derive(Debug)]
pub(crate) struct CachedHistory {
    /// The conversation's `history_rev` when the copy was read.
    rev: i64,
    /// The last message the rolling summary covered then; only later messages are in the copy.
    summary_up_to: Option<MessageId>,
    /// The newest message read; the next run reads only later ones.
    last_id: MessageId,
    /// When the copy was last read in full.
    loaded_at: Instant,
    /// Oldest first, at most the run's message cap.
    messages: Vec<HistoryRow>,
}

/// What the store said about a conversation at a run's start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Revision {
    pub rev: i64,
    pub summary_up_to: Option<MessageId>,
    /// The message the run answers: the history ends there.
    pub answered: MessageId,
}

impl CachedHistory {
    /// When the copy was last read in full.
    pub fn loaded_at(&self) -> Instant {
        self.loaded_at
    }

    /// The id to read newer messages after, while the copy is young enough to be trusted.
    pub fn read_after(&self) -> Option<MessageId> {
        (self.loaded_at.elapsed() < MAX_AGE).then_some(self.last_id)
    }

    /// The copy extended by `newer` (the messages after [`Self::read_after`]), or None
    /// when the store's history has changed in another way since the copy was read.
    pub fn extend(
        mut self,
        at: Revision,
        newer: Vec<HistoryRow>,
        max_messages: usize,
    ) -> Option<Vec<HistoryRow>> {
        let same = self.rev == at.rev
            && self.summary_up_to == at.summary_up_to
            && self.last_id <= at.answered;
        if !same {
            return None;
        }
        self.messages.extend(newer);
        let excess = self.messages.len().saturating_sub(max_messages);
        self.messages.drain(..excess);
        Some(self.messages)
    }
}

/// Copies of the conversations most recently answered, within a budget of text bytes.
pub(crate) struct HistoryCache {
    budget_bytes: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// Least recently used first.
    by_conversation: LinkedHashMap<ConversationId, (CachedHistory, usize)>,
    bytes: usize,
}

impl HistoryCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// Takes a conversation's copy out: a run owns it until it puts one back, so a run that
    /// ends early leaves nothing stale behind.
    pub fn take(&self, conversation: ConversationId) -> Option<CachedHistory> {
        let mut entries = self.entries();
        let (history, bytes) = entries.by_conversation.remove(&conversation)?;
        entries.bytes -= bytes;
        Some(history)
    }

    /// Keeps `messages` as the conversation's history at `at`; `loaded_at` is when it was
    /// last read in full. The least recently used copies go when the budget is exceeded.
    pub fn put(
        &self,
        conversation: ConversationId,
        at: Revision,
        loaded_at: Instant,
        messages: Vec<HistoryRow>,
    ) {
        let Some(last_id) = messages.last().map(|m| m.id) else {
            return;
        };
        let bytes = messages
            .iter()
            .map(|m| m.text.len() + m.sender.as_ref().map_or(0, |s| s.len()))
            .sum::<usize>()
            + messages.len() * size_of::<HistoryRow>();
        if bytes > self.budget_bytes {
            return;
        }
        let history = CachedHistory {
            rev: at.rev,
            summary_up_to: at.summary_up_to,
            last_id,
            loaded_at,
            messages,
        };
        let mut entries = self.entries();
        if let Some((_, old)) = entries
            .by_conversation
            .insert(conversation, (history, bytes))
        {
            entries.bytes -= old;
        }
        entries.bytes += bytes;
        while entries.bytes > self.budget_bytes {
            let Some((_, (_, evicted))) = entries.by_conversation.pop_front() else {
                break;
            };
            entries.bytes -= evicted;
        }
    }

    /// The entries; emptied if a run panicked while changing them (runs fail alone, see
    /// `contain_panic`), since a cache can always start over.
    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut entries = poisoned.into_inner();
            *entries = Entries::default();
            self.inner.clear_poison();
            entries
        })
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `n`th message: its id's time is `n`.
    fn row(n: u64, text: &str) -> HistoryRow {
        HistoryRow {
            id: MessageId(ulid::Ulid::from_parts(n, 0)),
            inbound: n % 2 == 1,
            sender: Some("Ann".into()),
            text: text.into(),
        }
    }

    fn at(rev: i64, answered: u64) -> Revision {
        Revision {
            rev,
            summary_up_to: None,
            answered: row(answered, "").id,
        }
    }

    fn cached(cache: &HistoryCache, conversation: ConversationId, rows: Vec<HistoryRow>) {
        let at = Revision {
            answered: rows.last().unwrap().id,
            ..at(0, 0)
        };
        cache.put(conversation, at, Instant::now(), rows);
    }

    fn numbers(messages: &[HistoryRow]) -> Vec<u64> {
        messages.iter().map(|m| m.id.0.timestamp_ms()).collect()
    }

    #[test]
    fn newer_messages_extend_the_copy_up_to_the_cap() {
        let cache = HistoryCache::new(1 << 20);
        let conversation = ConversationId(ulid::Ulid::new());
        cached(
            &cache,
            conversation,
            (1..=3).map(|s| row(s, "hi")).collect(),
        );
        let copy = cache.take(conversation).unwrap();
        assert_eq!(copy.read_after(), Some(row(3, "").id));
        let extended = copy.extend(at(0, 5), vec![row(4, "a"), row(5, "b")], 4);
        assert_eq!(numbers(&extended.unwrap()), [2, 3, 4, 5]);
        assert!(
            cache.take(conversation).is_none(),
            "a run owns the copy it took"
        );
    }

    #[test]
    fn a_run_that_panicked_holding_the_cache_leaves_it_empty_and_usable() {
        let cache = HistoryCache::new(1 << 20);
        let (kept, later) = (
            ConversationId(ulid::Ulid::new()),
            ConversationId(ulid::Ulid::new()),
        );
        cached(&cache, kept, vec![row(1, "hi")]);
        let panicked = std::panic::catch_unwind(|| {
            let _entries = cache.inner.lock().unwrap();
            panic!("a bug in a run");
        });
        assert!(panicked.is_err() && cache.inner.is_poisoned());
        assert!(cache.take(kept).is_none(), "the copies are gone");
        assert_eq!(cache.bytes(), 0);
        cached(&cache, later, vec![row(1, "hi")]);
        assert!(cache.take(later).is_some(), "and it caches again");
    }

    #[test]
    fn any_other_change_asks_for_a_full_read() {
        let cache = HistoryCache::new(1 << 20);
        let conversation = ConversationId(ulid::Ulid::new());
        let rows = || (1..=3).map(|s| row(s, "hi")).collect::<Vec<_>>();
        cached(&cache, conversation, rows());
        let edited = cache
            .take(conversation)
            .unwrap()
            .extend(at(1, 4), vec![], 200);
        assert!(edited.is_none(), "an edit or deletion changes the revision");

        cached(&cache, conversation, rows());
        let summarised = Revision {
            summary_up_to: Some(row(2, "").id),
            ..at(0, 4)
        };
        assert!(
            cache
                .take(conversation)
                .unwrap()
                .extend(summarised, vec![], 200)
                .is_none()
        );

        cached(&cache, conversation, rows());
        let earlier_trigger = cache
            .take(conversation)
            .unwrap()
            .extend(at(0, 2), vec![], 200);
        assert!(
            earlier_trigger.is_none(),
            "the copy holds messages after the trigger"
        );

        let old = Instant::now().checked_sub(MAX_AGE + Duration::from_secs(1));
        if let Some(old) = old {
            cache.put(conversation, at(0, 3), old, rows());
            assert_eq!(cache.take(conversation).unwrap().read_after(), None);
        }
    }

    #[test]
    fn the_least_recently_used_copies_go_beyond_the_budget() {
        let one = HistoryCache::new(usize::MAX);
        let a = ConversationId(ulid::Ulid::new());
        cached(&one, a, vec![row(1, "hello")]);
        let size = one.bytes();

        let cache = HistoryCache::new(size * 2);
        let (b, c) = (
            ConversationId(ulid::Ulid::new()),
            ConversationId(ulid::Ulid::new()),
        );
        cached(&cache, a, vec![row(1, "hello")]);
        cached(&cache, b, vec![row(1, "hello")]);
        cached(&cache, c, vec![row(1, "hello")]);
        assert_eq!(cache.bytes(), size * 2);
        assert!(cache.take(a).is_none(), "the oldest copy was evicted");
        assert!(cache.take(b).is_some() && cache.take(c).is_some());
        assert_eq!(cache.bytes(), 0);

        cache.put(
            a,
            at(0, 1),
            Instant::now(),
            vec![row(1, &"x".repeat(size * 3))],
        );
        assert!(
            cache.take(a).is_none(),
            "a copy over the whole budget is not kept"
        );
    }
}
