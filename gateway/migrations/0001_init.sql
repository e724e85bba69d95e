-- One tenant's inbox. Times are unix milliseconds; ids are ULID text.

CREATE TABLE identities (
    id           TEXT PRIMARY KEY,
    channel      TEXT NOT NULL,
    connection   TEXT NOT NULL,
    provider_id  TEXT NOT NULL,
    display_name TEXT,
    handle       TEXT,
    created_at   INTEGER NOT NULL,
    UNIQUE (connection, provider_id)
) STRICT;

CREATE TABLE conversations (
    id                   TEXT PRIMARY KEY,
    channel              TEXT NOT NULL,
    connection           TEXT NOT NULL,
    provider_id          TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('dm', 'group', 'channel')),
    title                TEXT,
    pinned               INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    unread_count         INTEGER NOT NULL DEFAULT 0,
    read_up_to           TEXT,
    last_message_at      INTEGER,
    last_message_preview TEXT,
    -- Sort key of the conversation list: the last message, or creation when there is none.
    last_activity_at     INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    UNIQUE (connection, provider_id)
) STRICT;

CREATE INDEX conversations_by_activity ON conversations (pinned DESC, last_activity_at DESC, id DESC);

-- `seq` is the rowid the full-text index points at; `id` is the public ULID.
CREATE TABLE messages (
    seq                 INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    event_id            TEXT NOT NULL,
    conversation_id     TEXT NOT NULL REFERENCES conversations (id),
    direction           TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    status              TEXT NOT NULL CHECK (status IN ('received', 'pending', 'sent', 'failed')),
    sender_id           TEXT REFERENCES identities (id),
    provider_message_id TEXT,
    text                TEXT,
    reply_to            TEXT,
    txn_id              TEXT,
    dedupe_key          TEXT NOT NULL UNIQUE,
    sent_at             INTEGER NOT NULL,
    received_at         INTEGER NOT NULL,
    edited_at           INTEGER,
    deleted_at          INTEGER
) STRICT;

CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX messages_by_provider_id ON messages (conversation_id, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Metadata only: the bytes arrive later through the media service.
CREATE TABLE attachments (
    message_id       TEXT NOT NULL REFERENCES messages (id),
    position         INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    mime_type        TEXT,
    size_bytes       INTEGER,
    file_name        TEXT,
    provider_file_id TEXT,
    PRIMARY KEY (message_id, position)
) STRICT;

-- Outbound messages waiting for delivery, written in the same transaction as the message.
CREATE TABLE outbox (
    message_id          TEXT PRIMARY KEY REFERENCES messages (id),
    connection          TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    last_error          TEXT,
    provider_message_id TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;

CREATE INDEX outbox_due ON outbox (state, next_attempt_at);

-- Canonical events other than new messages, kept once per dedupe key.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    dedupe_key  TEXT NOT NULL UNIQUE,
    channel     TEXT NOT NULL,
    connection  TEXT NOT NULL,
    body        TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL
) STRICT;

CREATE TABLE usage_events (
    id       TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    meta     TEXT
) STRICT;

CREATE INDEX usage_events_by_time ON usage_events (kind, at);

CREATE TABLE audit_log (
    id     TEXT PRIMARY KEY,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
) STRICT;

CREATE VIRTUAL TABLE messages_fts USING fts5 (
    text,
    content = 'messages',
    content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.text IS NOT NULL BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.seq, new.text);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text)
        SELECT 'delete', old.seq, old.text WHERE old.text IS NOT NULL;
    INSERT INTO messages_fts (rowid, text) SELECT new.seq, new.text WHERE new.text IS NOT NULL;
END;

-- A new message moves its conversation up the list and, if inbound, counts as unread.
CREATE TRIGGER messages_bump_conversation AFTER INSERT ON messages BEGIN
    UPDATE conversations SET
        last_message_at = new.received_at,
        last_activity_at = new.received_at,
        last_message_preview = substr(new.text, 1, 140),
        unread_count = unread_count + (new.direction = 'inbound'),
        updated_at = new.received_at
    WHERE id = new.conversation_id;
END;
