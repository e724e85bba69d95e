-- Counts the changes to a conversation's stored messages other than new ones (edits,
-- deletions, removals), so that the agent's in-memory copy of recent history, which only
-- ever appends, knows when to read the history again in full.
ALTER TABLE conversations ADD COLUMN history_rev INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER messages_history_changed AFTER UPDATE OF text, deleted_at, sender_id ON messages BEGIN
    UPDATE conversations SET history_rev = history_rev + 1 WHERE id = new.conversation_id;
END;

CREATE TRIGGER messages_history_removed AFTER DELETE ON messages BEGIN
    UPDATE conversations SET history_rev = history_rev + 1 WHERE id = old.conversation_id;
END;
