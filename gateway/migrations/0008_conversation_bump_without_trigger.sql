-- The store's writer now moves a conversation up the list itself, right after it inserts a
-- message (`inbox::bump_conversation`). With a trigger on the insert, SQLite kept a
-- statement journal for each message insert, a copy of every page before the insert
-- changed it, so that a failing trigger could be undone alone.
DROP TRIGGER messages_bump_conversation;
