//! Bookkeeping shared by the workers that run one task per conversation at a time (the
//! outbox, the agent): their tasks, the news of work the store posts for them, and when
//! they need to read their queue again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use moltbot_protocol::ids::ConversationId;
use tokio::sync::Notify;
use tokio::task::{Id, JoinError, JoinSet};

/// News of work: the conversations that writes gave work to, posted by the store (outbound
/// messages once durable; agent runs at their commit, or once durable while someone
/// watches the inbox live) and taken by a worker.
#[derive(Default)]
pub(crate) struct News {
    conversations: Mutex<HashSet<ConversationId>>,
    posted: Notify,
}

impl News {
    pub fn post(&self, conversations: impl IntoIterator<Item = ConversationId>) {
        self.conversations
            .lock()
            .expect("news lock")
            .extend(conversations);
        self.posted.notify_one();
    }

    /// Waits for news and takes all there is. Cancel-safe: news is taken only by the poll
    /// that returns it.
    pub async fn take(&self) -> HashSet<ConversationId> {
        loop {
            let news = std::mem::take(&mut *self.conversations.lock().expect("news lock"));
            if !news.is_empty() {
                return news;
            }
            self.posted.notified().await;
        }
    }
}

/// Whether a worker has to read its queue again. Reading it at every wake-up (news, a task
/// that finished) was most of the gateway's reads at 1,000 replies a second; it is needed
/// only after news for a conversation without a task, after a conversation that had news
/// while busy finished, when the last read may have left work behind for want of room, or
/// when the worker's timer says so.
pub(crate) struct Lookout {
    due: bool,
    /// Conversations with news that came while their task ran.
    held: HashSet<ConversationId>,
}

impl Default for Lookout {
    /// A worker reads its queue when it starts.
    fn default() -> Self {
        Self {
            due: true,
            held: HashSet::new(),
        }
    }
}

impl Lookout {
    pub fn due(&self) -> bool {
        self.due
    }

    pub fn news(&mut self, news: HashSet<ConversationId>, busy: &HashSet<ConversationId>) {
        for conversation in news {
            if busy.contains(&conversation) {
                self.held.insert(conversation);
            } else {
                self.due = true;
            }
        }
    }

    /// Reads the queue again once `conversation`'s task is done.
    pub fn hold(&mut self, conversation: ConversationId) {
        self.held.insert(conversation);
    }

    pub fn finished(&mut self, conversation: Option<ConversationId>) {
        if conversation.is_some_and(|c| self.held.remove(&c)) {
            self.due = true;
        }
    }

    pub fn timer(&mut self) {
        self.due = true;
    }

    /// After a read that asked for up to `room` items and found `found`: a full answer may
    /// have left more behind.
    pub fn read(&mut self, found: usize, room: usize) {
        self.due = found >= room;
    }
}

/// A worker's tasks, at most one per conversation.
#[derive(Default)]
pub(crate) struct ConversationTasks {
    tasks: JoinSet<()>,
    by_task: HashMap<Id, ConversationId>,
    busy: HashSet<ConversationId>,
}

impl ConversationTasks {
    /// The conversations with a task running.
    pub fn busy(&self) -> &HashSet<ConversationId> {
        &self.busy
    }

    pub fn len(&self) -> usize {
        self.busy.len()
    }

    pub fn spawn(
        &mut self,
        conversation: ConversationId,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.by_task.insert(handle.id(), conversation);
        self.busy.insert(conversation);
    }

    /// Frees the conversations of the tasks that finished, without waiting; answers them.
    pub fn reap(&mut self) -> Vec<ConversationId> {
        let mut freed = Vec::new();
        while let Some(done) = self.tasks.try_join_next_with_id() {
            freed.extend(self.finished(done));
        }
        freed
    }

    /// Waits for a task to finish and frees its conversation, which it answers; never
    /// returns while there is no task.
    pub async fn next_finished(&mut self) -> Option<ConversationId> {
        match self.tasks.join_next_with_id().await {
            Some(done) => self.finished(done),
            None => std::future::pending().await,
        }
    }

    /// Waits for every task to finish.
    pub async fn join_all(&mut self) {
        while let Some(done) = self.tasks.join_next_with_id().await {
            self.finished(done);
        }
    }

    /// Stops every task and waits until they are gone.
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
        self.by_task.clear();
        self.busy.clear();
    }

    /// A task that panicked frees its conversation too, or the conversation would wait for
    /// the next start.
    fn finished(&mut self, done: Result<(Id, ()), JoinError>) -> Option<ConversationId> {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(error = %e, "a per-conversation task panicked");
                }
                e.id()
            }
        };
        let conversation = self.by_task.remove(&id)?;
        self.busy.remove(&conversation);
        Some(conversation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_conversation_is_free_again_however_its_task_ends() {
        let mut tasks = ConversationTasks::default();
        let (ok, panicked, waiting) = (
            ConversationId(ulid::Ulid::new()),
            ConversationId(ulid::Ulid::new()),
            ConversationId(ulid::Ulid::new()),
        );
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(ok, async {});
        tasks.spawn(panicked, async { panic!("a bug in a run") });
        tasks.spawn(waiting, async {
            let _ = released.await;
        });
        assert_eq!(tasks.len(), 3);
        tasks.next_finished().await;
        tasks.next_finished().await;
        assert_eq!(tasks.busy(), &HashSet::from([waiting]));

        release.send(()).unwrap();
        tasks.join_all().await;
        assert!(tasks.busy().is_empty());
    }

    fn conversation() -> ConversationId {
        ConversationId(ulid::Ulid::new())
    }

    #[test]
    fn the_queue_is_read_again_only_when_work_may_wait_in_it() {
        let mut lookout = Lookout::default();
        assert!(lookout.due(), "a worker reads its queue at start");
        lookout.read(0, 8);
        assert!(!lookout.due());

        let (idle, busy) = (conversation(), conversation());
        lookout.news(HashSet::from([busy]), &HashSet::from([busy]));
        assert!(
            !lookout.due(),
            "news for a busy conversation waits for its task"
        );
        lookout.finished(Some(conversation()));
        assert!(
            !lookout.due(),
            "another conversation's task ending changes nothing"
        );
        lookout.finished(Some(busy));
        assert!(
            lookout.due(),
            "the busy conversation is free: its news is read"
        );
        lookout.read(1, 8);

        lookout.news(HashSet::from([idle]), &HashSet::from([busy]));
        assert!(
            lookout.due(),
            "news for a conversation without a task is read at once"
        );
        lookout.read(8, 8);
        assert!(lookout.due(), "a full answer may have left work behind");
        lookout.read(3, 8);

        lookout.hold(idle);
        lookout.finished(Some(idle));
        assert!(
            lookout.due(),
            "rows waiting behind a task are read when it ends"
        );
        lookout.read(0, 8);
        lookout.finished(Some(idle));
        assert!(!lookout.due(), "a hold is used once");
        lookout.timer();
        assert!(lookout.due());
    }

    #[tokio::test]
    async fn news_is_taken_whole_and_waited_for() {
        let news = std::sync::Arc::new(News::default());
        let (a, b) = (conversation(), conversation());
        news.post([a]);
        news.post([b, a]);
        assert_eq!(news.take().await, HashSet::from([a, b]));
        let waiting = tokio::spawn({
            let news = news.clone();
            async move { news.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no news: it waits");
        news.post([b]);
        assert_eq!(waiting.await.unwrap(), HashSet::from([b]));
    }
}
