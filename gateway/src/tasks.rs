//! Bookkeeping shared by the workers that run one task per conversation at a time (the
//! outbox, the agent).

use std::collections::{HashMap, HashSet};
use std::future::Future;

use moltbot_protocol::ids::ConversationId;
use tokio::task::{Id, JoinError, JoinSet};

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

    /// Frees the conversations of the tasks that finished, without waiting.
    pub fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.finished(done);
        }
    }

    /// Waits for a task to finish and frees its conversation; never returns while there is
    /// no task.
    pub async fn next_finished(&mut self) {
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
    fn finished(&mut self, done: Result<(Id, ()), JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(error = %e, "a per-conversation task panicked");
                }
                e.id()
            }
        };
        if let Some(conversation) = self.by_task.remove(&id) {
            self.busy.remove(&conversation);
        }
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
}
