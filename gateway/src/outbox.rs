//! Delivers queued outbound messages. Rows are written in the same transaction as their
//! message, so after a crash whatever was queued and not yet delivered goes out at start.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::channels::webchat;
use crate::store::{OutboxItem, Store};

const BATCH: u32 = 100;
/// Also polled on this period, for rows whose retry time comes due without a new commit.
const POLL: Duration = Duration::from_secs(5);

pub async fn run(store: Store, shutdown: CancellationToken) {
    loop {
        match store.due_outbox(BATCH).await {
            Ok(items) => {
                let full = items.len() == BATCH as usize;
                let mut delivered = 0;
                for item in items {
                    delivered += usize::from(deliver(&store, item).await);
                }
                // A full batch that moved something may have more behind it.
                if full && delivered > 0 {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = store.outbox_ready() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// True when the item left the queue.
async fn deliver(store: &Store, item: OutboxItem) -> bool {
    match item.connection.as_str() {
        // Web chat's transport is the inbox stream, which already carried the message.
        webchat::CONNECTION => match store.mark_delivered(item.message_id, None).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, message_id = %item.message_id, "cannot mark a web-chat reply delivered");
                false
            }
        },
        other => {
            tracing::debug!(connection = other, message_id = %item.message_id, "no connector for this connection yet; message stays queued");
            false
        }
    }
}
