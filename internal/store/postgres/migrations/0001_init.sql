-- M1's store, PostgreSQL flavour. SQLite has the same tables and columns
-- (store/sqlite/migrations). Times are timestamptz (microseconds); JSON
-- columns are json, not jsonb, so that stored arguments keep the exact text
-- their hash covers.

-- The audit trail: one row per event, chained per writer (store.HashEvent).
CREATE TABLE audit_events (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    writer          TEXT    NOT NULL,
    seq             BIGINT  NOT NULL,
    prev_hash       TEXT    NOT NULL DEFAULT '',
    hash            TEXT    NOT NULL,
    decision_id     TEXT    NOT NULL DEFAULT '',
    time            TIMESTAMPTZ NOT NULL,
    kind            TEXT    NOT NULL,
    principal       TEXT    NOT NULL DEFAULT '',
    run_id          TEXT    NOT NULL DEFAULT '',
    proposal_id     TEXT    NOT NULL DEFAULT '',
    tool            TEXT    NOT NULL DEFAULT '',
    args_sha256     TEXT    NOT NULL DEFAULT '',
    args            JSON,                          -- NULL unless the tool is non-sensitive
    decision        TEXT    NOT NULL DEFAULT '',   -- allow | deny
    reason          TEXT    NOT NULL DEFAULT '',   -- deny reason code, or ok
    detail          TEXT    NOT NULL DEFAULT '',
    status          INTEGER NOT NULL DEFAULT 0,
    policy_revision TEXT    NOT NULL DEFAULT '',
    token_jti       TEXT    NOT NULL DEFAULT '',
    latency_us      BIGINT  NOT NULL DEFAULT 0,
    cache_tier      TEXT    NOT NULL DEFAULT '',
    UNIQUE (writer, seq)
);
CREATE INDEX audit_events_time ON audit_events (time, id);
CREATE INDEX audit_events_run ON audit_events (run_id, time);
CREATE INDEX audit_events_principal ON audit_events (principal, time);
CREATE INDEX audit_events_decision ON audit_events (decision_id);

-- One row per chain; pruned_seq/pruned_hash are the last pruned event, the
-- checkpoint the remaining chain is verified from.
CREATE TABLE audit_chains (
    writer      TEXT    PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL,
    pruned_seq  BIGINT  NOT NULL DEFAULT 0,
    pruned_hash TEXT    NOT NULL DEFAULT ''
);

-- Orchestrated agent runs, with their cost.
CREATE TABLE agent_runs (
    id                 TEXT    PRIMARY KEY,
    agent              TEXT    NOT NULL,                   -- the principal the run acts as
    task               TEXT    NOT NULL DEFAULT '',
    model              TEXT    NOT NULL DEFAULT '',
    status             TEXT    NOT NULL DEFAULT 'running', -- running | completed | failed | cancelled
    error              TEXT    NOT NULL DEFAULT '',
    input_tokens       BIGINT  NOT NULL DEFAULT 0,
    output_tokens      BIGINT  NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT  NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT  NOT NULL DEFAULT 0,
    cost_usd           DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    finished_at        TIMESTAMPTZ
);
CREATE INDEX agent_runs_agent ON agent_runs (agent, created_at);
CREATE INDEX agent_runs_created ON agent_runs (created_at);
CREATE INDEX agent_runs_status ON agent_runs (status, created_at);

-- Proposed tool calls awaiting (or past) human approval.
CREATE TABLE proposals (
    id           TEXT PRIMARY KEY,
    run_id       TEXT REFERENCES agent_runs (id) ON DELETE CASCADE, -- NULL outside a run
    agent        TEXT NOT NULL,
    tool         TEXT NOT NULL,
    args         JSON,
    args_sha256  TEXT NOT NULL DEFAULT '',
    risk         TEXT NOT NULL DEFAULT '',           -- low | medium | high | critical
    reasoning    TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL DEFAULT 'pending',    -- pending | approved | denied | expired | executed
    approver     TEXT NOT NULL DEFAULT '',
    approval_jti TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL,
    decided_at   TIMESTAMPTZ
);
CREATE INDEX proposals_run ON proposals (run_id, created_at);
CREATE INDEX proposals_agent ON proposals (agent, created_at);
CREATE INDEX proposals_created ON proposals (created_at);
CREATE INDEX proposals_status ON proposals (status, expires_at);

-- Tool calls made by agent runs.
CREATE TABLE tool_calls (
    id          TEXT    PRIMARY KEY,
    run_id      TEXT    NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    agent       TEXT    NOT NULL,
    tool        TEXT    NOT NULL,
    args        JSON,                              -- NULL when sensitive
    args_sha256 TEXT    NOT NULL DEFAULT '',
    proposal_id TEXT    NOT NULL DEFAULT '',
    decision_id TEXT    NOT NULL DEFAULT '',       -- the audit event that allowed or denied it
    status      TEXT    NOT NULL DEFAULT 'pending', -- pending | denied | running | succeeded | failed
    result      JSON,
    error       TEXT    NOT NULL DEFAULT '',
    duration_us BIGINT  NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX tool_calls_run ON tool_calls (run_id, created_at);
CREATE INDEX tool_calls_agent ON tool_calls (agent, created_at);
CREATE INDEX tool_calls_created ON tool_calls (created_at);
CREATE INDEX tool_calls_tool ON tool_calls (tool, created_at);

-- Revoked tokens (jti) and subjects (sub): exactly one of the two is set.
CREATE TABLE revoked_tokens (
    jti        TEXT NOT NULL DEFAULT '',
    sub        TEXT NOT NULL DEFAULT '',
    expires_at TIMESTAMPTZ,                   -- NULL: until lifted
    reason     TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (jti, sub),
    CHECK ((jti = '') <> (sub = ''))
);
CREATE INDEX revoked_tokens_sub ON revoked_tokens (sub);
CREATE INDEX revoked_tokens_expires ON revoked_tokens (expires_at);
CREATE INDEX revoked_tokens_created ON revoked_tokens (created_at);
