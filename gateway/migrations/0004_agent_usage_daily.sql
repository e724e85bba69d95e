-- Tokens and cost per UTC day, kept with each run's outcome: the daily budget check reads
-- one row instead of summing the day's runs, which grew with every answer.
CREATE TABLE agent_usage_daily (
    day               INTEGER PRIMARY KEY, -- days since the Unix epoch, UTC
    runs              INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros       INTEGER NOT NULL DEFAULT 0
) STRICT;

INSERT INTO agent_usage_daily (day, runs, prompt_tokens, completion_tokens, cost_micros)
SELECT finished_at / 86400000, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_micros)
FROM agent_runs WHERE finished_at IS NOT NULL
GROUP BY finished_at / 86400000;

DROP INDEX agent_runs_by_finish;
