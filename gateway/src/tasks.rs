//! Bookkeeping shared by the workers that run one task per conversation at a time (the
//! outbox, the agent).

use std::collections::HashSet;

use moltbot_protocol::ids::ConversationId;
use tokio::task::JoinError;

/// Frees a finished task's conversation. A task that panicked cannot say which one it had,
/// so its conversation stays marked until the next start (logged).
pub(crate) fn finished(
    in_flight: &mut HashSet<ConversationId>,
    done: Result<ConversationId, JoinError>,
) {
    match done {
        Ok(id) => {
            in_flight.remove(&id);
        }
        Err(e) if e.is_cancelled() => {}
        Err(e) => tracing::error!(error = %e, "a per-conversation task panicked"),
    }
}
