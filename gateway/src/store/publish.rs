//! The publisher: after each commit the writer hands over what changed; this task builds
//! each view once from a read connection (the commit is visible there by then) and puts
//! it on the bus, group after group in commit order. With no subscriber it builds nothing.
//! The runs a watched group queued start only once its frames are out: a run's own frames
//! (`running`, streamed text) go straight to the bus, and must follow the message they
//! answer and the run's `queued`.

use std::collections::BTreeSet;
use std::sync::Arc;

use moltbot_protocol::ids::{ConversationId, MessageId, RunId};
use moltbot_protocol::inbox::ServerFrame;
use sqlx::SqlitePool;
use tokio::sync::mpsc;

use super::{agent, channels, read};
use crate::bus::Bus;
use crate::tasks::News;

/// What a committed write changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Change {
    MessageCreated(MessageId),
    MessageUpdated(MessageId),
    ConversationUpdated(ConversationId),
    RunUpdated(RunId),
    /// A connection's health, by connection name.
    ConnectionUpdated(String),
}

/// The changes of one committed group, each once.
pub(super) type Changes = BTreeSet<Change>;

/// A durable group's changes, and the conversations whose runs wait for them.
pub(super) struct Published {
    pub(super) changes: Changes,
    pub(super) runs: Vec<ConversationId>,
}

/// Runs until the writer has ended and every group it handed over is published.
pub(super) async fn run(
    reads: SqlitePool,
    bus: Bus,
    runs_ready: Arc<News>,
    mut committed: mpsc::Receiver<Published>,
) {
    while let Some(group) = committed.recv().await {
        publish(&reads, &bus, group.changes).await;
        if !group.runs.is_empty() {
            runs_ready.post(group.runs);
        }
    }
}

async fn publish(reads: &SqlitePool, bus: &Bus, changes: Changes) {
    // Views are for subscribers only. One that subscribes after this check reads these
    // changes when it loads, since they committed before it subscribed.
    if !bus.has_subscribers() {
        return;
    }
    let mut conn = match reads.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, changes = changes.len(), "no read connection to publish with");
            return;
        }
    };
    for change in changes {
        let frame = match &change {
            Change::MessageCreated(id) => read::message(&mut conn, *id)
                .await
                .map(|m| (Some(m.conversation_id), ServerFrame::MessageCreated(m))),
            Change::MessageUpdated(id) => read::message(&mut conn, *id)
                .await
                .map(|m| (Some(m.conversation_id), ServerFrame::MessageUpdated(m))),
            Change::ConversationUpdated(id) => read::conversation(&mut conn, *id)
                .await
                .map(|c| (Some(c.id), ServerFrame::ConversationUpdated(c))),
            Change::RunUpdated(id) => agent::run(&mut conn, *id)
                .await
                .map(|r| (Some(r.conversation_id), ServerFrame::AgentRun(r))),
            Change::ConnectionUpdated(name) => channels::connection_status(&mut conn, name)
                .await
                .map(|c| (None, ServerFrame::ConnectionState(c))),
        };
        match frame {
            Ok((conversation_id, frame)) => bus.publish(conversation_id, frame),
            Err(e) => tracing::warn!(error = %e, ?change, "cannot build a view to publish"),
        }
    }
}
