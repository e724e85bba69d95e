-- Messages read from the provider's history (backfill) rather than received as they were
-- sent: they never count as unread and never start a run.
ALTER TABLE messages ADD COLUMN backfilled INTEGER NOT NULL DEFAULT 0 CHECK (backfilled IN (0, 1));

-- The rolling summary ends at a message id rather than a seq. A live message's id is
-- minted as it arrives and a backfilled one's from the time it was sent, so ids sort as
-- the conversation happened; seqs follow the order the store learnt of messages, and a
-- backfilled message arrives after newer ones. A summary whose last message is gone is
-- dropped: the next run summarises again.
CREATE TABLE conversation_summaries_by_id (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations (id),
    summary         TEXT NOT NULL,
    up_to           TEXT NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

INSERT INTO conversation_summaries_by_id (conversation_id, summary, up_to, updated_at)
SELECT s.conversation_id, s.summary, m.id, s.updated_at
FROM conversation_summaries s
JOIN messages m ON m.conversation_id = s.conversation_id
    AND m.seq = (SELECT max(seq) FROM messages WHERE conversation_id = s.conversation_id AND seq <= s.up_to_seq);

DROP TABLE conversation_summaries;
ALTER TABLE conversation_summaries_by_id RENAME TO conversation_summaries;
