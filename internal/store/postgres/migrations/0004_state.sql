-- The sidecar's security state without Redis (DESIGN §7): the state epoch
-- and the uses of approvals and grants, so that a restarted m1-authz
-- refuses a replay, and sidecars sharing this database count uses
-- together. Revocations already have their table (revoked_tokens, 0001).
-- The same tables as store/sqlite/migrations/0003_state.sql.
--
-- No epoch row is inserted here: the first m1-authz that opens the store
-- sets it (now + M1_CLOCK_SKEW, rounded up), so that a store upgraded from
-- a version that kept uses in memory fences the tokens issued before, as a
-- new store does.

-- One row: tokens issued (iat) before epoch are refused (state_reset).
CREATE TABLE state_epoch (
    id         SMALLINT    PRIMARY KEY CHECK (id = 1),
    epoch      TIMESTAMPTZ NOT NULL, -- whole seconds
    created_at TIMESTAMPTZ NOT NULL
);

-- One row per approval (uses 1, max_uses 1) or grant used, until the
-- token can no longer verify.
CREATE TABLE token_uses (
    jti        TEXT        PRIMARY KEY,
    uses       INTEGER     NOT NULL,
    max_uses   INTEGER     NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX token_uses_expires ON token_uses (expires_at);
