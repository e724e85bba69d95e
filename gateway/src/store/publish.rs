//! The publisher: after each commit the writer hands over what changed; this task builds
//! each view once from a read connection (the commit is visible there by then) and puts
//! it on the bus, group after group in commit order. With no subscriber it builds nothing.

use std::collections::BTreeSet;

use moltbot_protocol::ids::{ConversationId, MessageId, RunId};
use moltbot_protocol::inbox::ServerFrame;
use sqlx::SqlitePool;
use tokio::sync::mpsc;

use super::{agent, channels, read};
use crate::bus::Bus;

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

/// Runs until the writer has ended and every group it handed over is published.
pub(super) async fn run(reads: SqlitePool, bus: Bus, mut committed: mpsc::Receiver<Changes>) {
    while let Some(changes) = committed.recv().await {
        // Views are for subscribers only. One that subscribes after this check reads these
        // changes when it loads, since they committed before it subscribed.
        if !bus.has_subscribers() {
            continue;
        }
        let mut conn = match reads.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, changes = changes.len(), "no read connection to publish with");
                continue;
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
}
