-- Connectors, reliable delivery and the agent.

-- Each connection's health, as its connector last reported it.
CREATE TABLE connection_state (
    connection    TEXT PRIMARY KEY,
    channel       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('connected', 'degraded', 'action_required', 'disconnected')),
    reason        TEXT,
    since         INTEGER NOT NULL,
    last_event_at INTEGER
) STRICT;

-- Where a connector resumes reading its provider (Telegram: the getUpdates offset).
CREATE TABLE channel_cursors (
    connection TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Provider deliveries already handled, stored or deliberately skipped (Telegram: the
-- update_id), so a redelivery changes nothing.
CREATE TABLE inbound_receipts (
    connection  TEXT NOT NULL,
    receipt     TEXT NOT NULL,
    -- The event the delivery became; NULL when it was skipped.
    event_id    TEXT,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (connection, receipt)
) STRICT, WITHOUT ROWID;

CREATE INDEX inbound_receipts_by_age ON inbound_receipts (received_at);

-- The outbox gains the state of an attempt in flight (`sending`: the send may have reached
-- the provider), the parts of a split message, and the conversation it goes to.
CREATE TABLE outbox_v3 (
    message_id           TEXT PRIMARY KEY REFERENCES messages (id),
    conversation_id      TEXT NOT NULL REFERENCES conversations (id),
    connection           TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    attempts             INTEGER NOT NULL DEFAULT 0,
    next_attempt_at      INTEGER NOT NULL,
    -- Parts of the text already delivered, and the provider's id of each.
    parts_sent           INTEGER NOT NULL DEFAULT 0,
    provider_message_ids TEXT NOT NULL DEFAULT '[]',
    -- What the connector noted when the attempt began, to reconcile an ambiguous send.
    attempt_hint         TEXT,
    last_error           TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) STRICT;

INSERT INTO outbox_v3 (message_id, conversation_id, connection, state, attempts, next_attempt_at, parts_sent,
                       provider_message_ids, last_error, created_at, updated_at)
SELECT o.message_id, m.conversation_id, o.connection, o.state, o.attempts, o.next_attempt_at,
       o.state = 'sent',
       CASE WHEN o.provider_message_id IS NULL THEN '[]' ELSE json_array(o.provider_message_id) END,
       o.last_error, o.created_at, o.updated_at
FROM outbox o JOIN messages m ON m.id = o.message_id;

DROP TABLE outbox;
ALTER TABLE outbox_v3 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);

-- NULL: the gateway's default mode.
ALTER TABLE conversations ADD COLUMN agent_mode TEXT CHECK (agent_mode IN ('off', 'draft', 'autopilot'));

-- One run is one answer the agent owes a conversation. A run stays `queued` until its
-- outcome is written together with its reply, so a crash mid-run runs it again and never
-- answers twice.
CREATE TABLE agent_runs (
    id                 TEXT PRIMARY KEY,
    conversation_id    TEXT NOT NULL REFERENCES conversations (id),
    trigger_message_id TEXT NOT NULL REFERENCES messages (id),
    mode               TEXT NOT NULL CHECK (mode IN ('draft', 'autopilot')),
    state              TEXT NOT NULL CHECK (state IN ('queued', 'awaiting_approval', 'succeeded', 'failed',
                                                      'rejected', 'budget_exhausted')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    reply_text         TEXT,
    reply_message_id   TEXT REFERENCES messages (id),
    error              TEXT,
    model              TEXT,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    cost_micros        INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    finished_at        INTEGER
) STRICT;

CREATE INDEX agent_runs_queued ON agent_runs (created_at) WHERE state = 'queued';
CREATE INDEX agent_runs_by_conversation ON agent_runs (conversation_id, created_at);
CREATE INDEX agent_runs_by_finish ON agent_runs (finished_at) WHERE finished_at IS NOT NULL;
-- Messages that arrive while a run waits join it rather than queue another answer.
CREATE UNIQUE INDEX agent_runs_one_queued ON agent_runs (conversation_id) WHERE state = 'queued';

CREATE TABLE agent_tool_calls (
    id         TEXT PRIMARY KEY,
    run_id     TEXT NOT NULL REFERENCES agent_runs (id),
    tool       TEXT NOT NULL,
    capability TEXT NOT NULL CHECK (capability IN ('read', 'write')),
    arguments  TEXT NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('ok', 'error', 'refused')),
    result     TEXT,
    at         INTEGER NOT NULL
) STRICT;

CREATE INDEX agent_tool_calls_by_run ON agent_tool_calls (run_id);

-- Facts the agent may use in every conversation, once the person approved them.
CREATE TABLE memory_facts (
    id                     TEXT PRIMARY KEY,
    text                   TEXT NOT NULL,
    state                  TEXT NOT NULL CHECK (state IN ('proposed', 'approved')),
    source_conversation_id TEXT REFERENCES conversations (id),
    source_run_id          TEXT REFERENCES agent_runs (id),
    created_at             INTEGER NOT NULL,
    approved_at            INTEGER
) STRICT;

-- The rolling summary of everything in a conversation up to `up_to_seq`.
CREATE TABLE conversation_summaries (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations (id),
    summary         TEXT NOT NULL,
    up_to_seq       INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

CREATE TABLE follow_ups (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    run_id          TEXT REFERENCES agent_runs (id),
    note            TEXT NOT NULL,
    due_at          INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'fired', 'cancelled')),
    message_id      TEXT REFERENCES messages (id),
    created_at      INTEGER NOT NULL
) STRICT;

CREATE INDEX follow_ups_due ON follow_ups (due_at) WHERE state = 'pending';

-- Unknown senders asking to talk to a connection whose DM policy is `pairing`.
CREATE TABLE pairing_requests (
    connection   TEXT NOT NULL,
    sender_id    TEXT NOT NULL,
    chat_id      TEXT NOT NULL,
    display_name TEXT,
    handle       TEXT,
    code         TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    code_sent_at INTEGER,
    decided_at   INTEGER,
    PRIMARY KEY (connection, sender_id)
) STRICT;

-- The head of each conversation's queue: delivery keeps a conversation's order.
CREATE INDEX outbox_pending ON outbox (conversation_id, message_id) WHERE state IN ('queued', 'sending');
