-- What the orchestrator's records (store.Records) need beyond 0001: run
-- budgets and cost alerts, the planning step, call id and outcome reason
-- of proposals, the HTTP status of tool calls, and one row per LLM call.
-- The same columns as store/sqlite/migrations/0002_records.sql.

ALTER TABLE agent_runs
    ADD COLUMN budget_usd DOUBLE PRECISION NOT NULL DEFAULT 0, -- 0: no budget
    ADD COLUMN over_alert BOOLEAN NOT NULL DEFAULT false;      -- cost passed the alert threshold

ALTER TABLE proposals
    ADD COLUMN step    INTEGER NOT NULL DEFAULT 0,  -- the planning step, from 1
    ADD COLUMN call_id TEXT    NOT NULL DEFAULT '', -- the planner's id for the call
    ADD COLUMN reason  TEXT    NOT NULL DEFAULT ''; -- why rejected, expired or failed

ALTER TABLE tool_calls
    ADD COLUMN http_status INTEGER NOT NULL DEFAULT 0; -- the tool's HTTP status, 0: none

-- One row per call to a model, with what it consumed; agent_runs holds the
-- per-run totals. Deleted with its run.
CREATE TABLE llm_calls (
    id                 TEXT    PRIMARY KEY,
    run_id             TEXT    NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    agent              TEXT    NOT NULL,
    model              TEXT    NOT NULL DEFAULT '',
    input_tokens       BIGINT  NOT NULL DEFAULT 0,
    output_tokens      BIGINT  NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT  NOT NULL DEFAULT 0,
    cost_usd           DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX llm_calls_run ON llm_calls (run_id, created_at);
CREATE INDEX llm_calls_agent ON llm_calls (agent, created_at);
CREATE INDEX llm_calls_created ON llm_calls (created_at);

-- Statuses, as store/records.go names them (0001's comments predate them).
COMMENT ON COLUMN agent_runs.task IS 'the run''s goal';
COMMENT ON COLUMN agent_runs.status IS 'running | completed | failed | over_budget';
COMMENT ON COLUMN proposals.status IS 'pending | approved | rejected | expired | executed | failed';
COMMENT ON COLUMN tool_calls.status IS 'running | succeeded | failed | denied';
