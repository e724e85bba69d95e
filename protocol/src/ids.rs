//! Typed ULID identifiers: one type per kind of thing, so a message id can never be passed
//! where a conversation id is expected. On the wire they are the 26-character ULID text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Ulid);

        impl $name {
            /// A fresh id; ULIDs sort by creation time.
            pub fn new() -> Self {
                Self(Ulid::new())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ulid::DecodeError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ulid::from_string(s).map(Self)
            }
        }

        impl From<Ulid> for $name {
            fn from(id: Ulid) -> Self {
                Self(id)
            }
        }
    };
}

ulid_id!(
    /// Identifies one canonical event.
    EventId
);
ulid_id!(
    /// Identifies a conversation in a tenant's inbox.
    ConversationId
);
ulid_id!(
    /// Identifies a message in a tenant's inbox.
    MessageId
);
ulid_id!(
    /// Identifies a person or account on some channel.
    IdentityId
);
ulid_id!(
    /// Identifies one agent run: one answer the agent owes a conversation.
    RunId
);
ulid_id!(
    /// Identifies a memory fact.
    FactId
);
ulid_id!(
    /// Identifies a follow-up reminder.
    FollowUpId
);
