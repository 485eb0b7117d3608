-- What the orchestrator's records (store.Records) need beyond 0001: run
-- budgets and cost alerts, the planning step, call id and outcome reason
-- of proposals, the HTTP status of tool calls, and one row per LLM call.
--
-- Statuses, as store/records.go names them (0001's column comments predate
-- them; a column comment cannot change in SQLite, so this file holds the
-- current lists):
--   agent_runs.status  running | completed | failed | over_budget
--   proposals.status   pending | approved | rejected | expired | executed | failed
--   tool_calls.status  running | succeeded | failed | denied
-- agent_runs.task holds the run's goal.

ALTER TABLE agent_runs ADD COLUMN budget_usd REAL    NOT NULL DEFAULT 0; -- 0: no budget
ALTER TABLE agent_runs ADD COLUMN over_alert INTEGER NOT NULL DEFAULT 0; -- 1: cost passed the alert threshold

ALTER TABLE proposals ADD COLUMN step    INTEGER NOT NULL DEFAULT 0;  -- the planning step, from 1
ALTER TABLE proposals ADD COLUMN call_id TEXT    NOT NULL DEFAULT ''; -- the planner's id for the call
ALTER TABLE proposals ADD COLUMN reason  TEXT    NOT NULL DEFAULT ''; -- why rejected, expired or failed

ALTER TABLE tool_calls ADD COLUMN http_status INTEGER NOT NULL DEFAULT 0; -- the tool's HTTP status, 0: none

-- One row per call to a model, with what it consumed; agent_runs holds the
-- per-run totals. Deleted with its run.
CREATE TABLE llm_calls (
    id                 TEXT    PRIMARY KEY,
    run_id             TEXT    NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    agent              TEXT    NOT NULL,
    model              TEXT    NOT NULL DEFAULT '',
    input_tokens       INTEGER NOT NULL DEFAULT 0,
    output_tokens      INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd           REAL    NOT NULL DEFAULT 0,
    created_at         TEXT    NOT NULL
) STRICT;
CREATE INDEX llm_calls_run ON llm_calls (run_id, created_at);
CREATE INDEX llm_calls_agent ON llm_calls (agent, created_at);
CREATE INDEX llm_calls_created ON llm_calls (created_at);
