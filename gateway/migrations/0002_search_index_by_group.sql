-- New messages enter the full-text index once per committed group, from the store writer
-- (one FTS5 segment per group rather than one per message). Edits and deletions still
-- update the index through the trigger; the writer indexes the group's new messages
-- before any such write, so the trigger only ever sees indexed rows.
DROP TRIGGER messages_fts_insert;
