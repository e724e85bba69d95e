-- The outbox keeps every sent row, and `outbox_due` indexed them all: each delivery's end
-- moved its entry to the end of the `sent` range, one more index page written per commit,
-- in an index that grew with every message. The sender only ever looks for rows still to
-- deliver, with this very condition, so the index keeps those alone.
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at) WHERE state IN ('queued', 'sending');
