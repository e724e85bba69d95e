//! In-process event bus. The store publishes here only after a commit, so a subscriber
//! never sees a change that could still be rolled back.

use std::sync::Arc;

use moltbot_protocol::ids::ConversationId;
use moltbot_protocol::inbox::ServerFrame;
use tokio::sync::broadcast;

/// A committed change, serialised once for every subscriber.
#[derive(Debug)]
pub struct Published {
    /// None for frames about no one conversation.
    pub conversation_id: Option<ConversationId>,
    pub json: String,
}

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Published>>,
}

impl Bus {
    /// `capacity` frames are kept per subscriber; one that falls further behind is told to resync.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn publish(&self, conversation_id: Option<ConversationId>, frame: ServerFrame) {
        let json = serde_json::to_string(&frame).expect("frames serialize");
        // No receiver is not an error: nobody is listening right now.
        let _ = self.tx.send(Arc::new(Published {
            conversation_id,
            json,
        }));
    }
}
