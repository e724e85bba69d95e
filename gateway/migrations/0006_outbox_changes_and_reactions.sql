-- The outbox also carries changes to messages already sent: edits, deletions, reactions.
-- A row gets its own id and a kind; a send keeps its message's id, so rows of one
-- conversation still go out in the order they were written.
CREATE TABLE outbox_v5 (
    id                   TEXT PRIMARY KEY,
    message_id           TEXT NOT NULL REFERENCES messages (id),
    kind                 TEXT NOT NULL CHECK (kind IN ('send', 'edit', 'delete', 'react', 'unreact')),
    -- edit: the new text; react, unreact: the emoji.
    argument             TEXT,
    -- edit, delete: the text before, put back if the change fails for good.
    previous             TEXT,
    conversation_id      TEXT NOT NULL REFERENCES conversations (id),
    connection           TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    attempts             INTEGER NOT NULL DEFAULT 0,
    next_attempt_at      INTEGER NOT NULL,
    parts_sent           INTEGER NOT NULL DEFAULT 0,
    provider_message_ids TEXT NOT NULL DEFAULT '[]',
    attempt_hint         TEXT,
    last_error           TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) STRICT;

INSERT INTO outbox_v5 (id, message_id, kind, conversation_id, connection, state, attempts, next_attempt_at,
                       parts_sent, provider_message_ids, attempt_hint, last_error, created_at, updated_at)
SELECT message_id, message_id, 'send', conversation_id, connection, state, attempts, next_attempt_at,
       parts_sent, provider_message_ids, attempt_hint, last_error, created_at, updated_at
FROM outbox;

DROP TABLE outbox;
ALTER TABLE outbox_v5 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
-- The head of a conversation's queue is its oldest undelivered row.
CREATE INDEX outbox_undelivered ON outbox (conversation_id, id) WHERE state IN ('queued', 'sending');

-- Reactions on messages, one row per (message, who, emoji): `actor` is the person's provider
-- id, or '' for this gateway's own (no provider id is empty). A removal keeps the row with
-- `present = 0`, so an older event arriving late never undoes a newer one (`at`).
CREATE TABLE reactions (
    message_id TEXT NOT NULL REFERENCES messages (id),
    actor      TEXT NOT NULL,
    emoji      TEXT NOT NULL,
    present    INTEGER NOT NULL CHECK (present IN (0, 1)),
    at         INTEGER NOT NULL,
    PRIMARY KEY (message_id, actor, emoji)
) STRICT, WITHOUT ROWID;
