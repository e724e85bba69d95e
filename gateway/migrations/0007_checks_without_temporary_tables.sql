-- The same CHECK constraints, with each list of allowed values written as a chain of `=`.
-- A constant `IN` list of more than two values makes SQLite build a temporary b-tree of
-- the list on every INSERT, and every UPDATE of the column, that checks it: several per Pi
-- reply, about 2% of the gateway's CPU in the Telegram bench at 1,000 replies/s. A chain
-- of `=` is a few comparisons.
--
-- The stored rows do not change, since the values allowed stay the same. For such a change
-- SQLite documents rewriting the table's SQL in the schema table in place ("Making Other
-- Kinds Of Table Schema Changes" on ALTER TABLE) rather than copying each table. RESET
-- makes this connection read the new SQL; the table created and dropped at the end bumps
-- the schema version, which makes every other connection read it too.

PRAGMA writable_schema = ON;

UPDATE sqlite_schema SET sql = replace(replace(sql,
    'CHECK (kind IN (''dm'', ''group'', ''channel''))',
    'CHECK (kind = ''dm'' OR kind = ''group'' OR kind = ''channel'')'),
    'CHECK (agent_mode IN (''off'', ''draft'', ''autopilot''))',
    'CHECK (agent_mode = ''off'' OR agent_mode = ''draft'' OR agent_mode = ''autopilot'')')
WHERE type = 'table' AND name = 'conversations';

UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (status IN (''received'', ''pending'', ''sent'', ''failed''))',
    'CHECK (status = ''received'' OR status = ''pending'' OR status = ''sent'' OR status = ''failed'')')
WHERE type = 'table' AND name = 'messages';

UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (state IN (''connected'', ''degraded'', ''action_required'', ''disconnected''))',
    'CHECK (state = ''connected'' OR state = ''degraded'' OR state = ''action_required'' OR state = ''disconnected'')')
WHERE type = 'table' AND name = 'connection_state';

UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (state IN (''queued'', ''awaiting_approval'', ''succeeded'', ''failed'',
                                                      ''rejected'', ''budget_exhausted''))',
    'CHECK (state = ''queued'' OR state = ''awaiting_approval'' OR state = ''succeeded'' OR state = ''failed'' OR state = ''rejected'' OR state = ''budget_exhausted'')')
WHERE type = 'table' AND name = 'agent_runs';

UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (outcome IN (''ok'', ''error'', ''refused''))',
    'CHECK (outcome = ''ok'' OR outcome = ''error'' OR outcome = ''refused'')')
WHERE type = 'table' AND name = 'agent_tool_calls';

UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (state IN (''pending'', ''fired'', ''cancelled''))',
    'CHECK (state = ''pending'' OR state = ''fired'' OR state = ''cancelled'')')
WHERE type = 'table' AND name = 'follow_ups';

UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (state IN (''pending'', ''approved'', ''denied''))',
    'CHECK (state = ''pending'' OR state = ''approved'' OR state = ''denied'')')
WHERE type = 'table' AND name = 'pairing_requests';

UPDATE sqlite_schema SET sql = replace(replace(sql,
    'CHECK (kind IN (''send'', ''edit'', ''delete'', ''react'', ''unreact''))',
    'CHECK (kind = ''send'' OR kind = ''edit'' OR kind = ''delete'' OR kind = ''react'' OR kind = ''unreact'')'),
    'CHECK (state IN (''queued'', ''sending'', ''sent'', ''failed''))',
    'CHECK (state = ''queued'' OR state = ''sending'' OR state = ''sent'' OR state = ''failed'')')
WHERE type = 'table' AND name = 'outbox';

PRAGMA writable_schema = RESET;

CREATE TABLE schema_version_bump (x);
DROP TABLE schema_version_bump;
