-- Audit volume is bounded (DESIGN §7): arguments beyond
-- M1_AUDIT_MAX_ARGS_BYTES are not stored, only their args_sha256, and the
-- event says so. 1: args left out for their size (args is then NULL).
-- store.HashEvent covers the mark; events without it hash as before.
ALTER TABLE audit_events ADD COLUMN args_truncated INTEGER NOT NULL DEFAULT 0;
