-- Proposals filed by sidecars for MCP clients (DESIGN §10): where each came
-- from, the approval the orchestrator holds for it until a sidecar claims
-- it, and who claimed it. The same columns as
-- store/sqlite/migrations/0006_gateway_proposals.sql.
--
-- proposals.status gains claimed (a sidecar took the held approval).
-- origin: '' for a run's planner, 'sidecar' for a sidecar's filing.

ALTER TABLE proposals ADD COLUMN origin      TEXT NOT NULL DEFAULT '';
ALTER TABLE proposals ADD COLUMN sidecar     TEXT NOT NULL DEFAULT ''; -- the filing sidecar, as it names itself
ALTER TABLE proposals ADD COLUMN pod         TEXT NOT NULL DEFAULT ''; -- its pod
ALTER TABLE proposals ADD COLUMN decision_id TEXT NOT NULL DEFAULT ''; -- the deny that filed it
ALTER TABLE proposals ADD COLUMN held_token  TEXT NOT NULL DEFAULT ''; -- operator-signed approval, until claimed or expired
ALTER TABLE proposals ADD COLUMN claimed_by  TEXT NOT NULL DEFAULT '';
ALTER TABLE proposals ADD COLUMN claimed_at  TIMESTAMPTZ;

-- Filing is idempotent while a proposal is pending: one pending proposal
-- per call (principal, tool, args_sha256).
CREATE UNIQUE INDEX proposals_pending_call ON proposals (agent, tool, args_sha256)
    WHERE origin = 'sidecar' AND status = 'pending';
-- Claims and the answer to a retry look a call's proposals up.
CREATE INDEX proposals_call ON proposals (agent, tool, args_sha256, status)
    WHERE origin = 'sidecar';
