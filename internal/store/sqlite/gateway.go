package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// insertProposal stores every column of a proposal (proposalValues), the
// held token included.
var insertProposal = `INSERT INTO proposals (` + proposalCols + `, held_token)
	VALUES (` + strings.Repeat("?, ", strings.Count(proposalCols, ",")+1) + `?)`

// proposalValues are p's values in the order of insertProposal.
func proposalValues(p store.Proposal) []any {
	return []any{p.ID, nullString(p.RunID), p.Agent, p.Step, p.CallID, p.Tool, jsonText(p.Args), p.ArgsSHA256,
		p.Risk, p.Reasoning, p.Status, p.Reason, p.Approver, p.ApprovalJTI, ts(p.CreatedAt), nullTS(p.ExpiresAt),
		ts(p.UpdatedAt), nullTS(p.DecidedAt), p.Origin, p.Sidecar, p.Pod, p.DecisionID, p.ClaimedBy,
		nullTS(p.ClaimedAt), p.HeldToken}
}

// FileProposal stores a pending sidecar proposal unless one of the same
// call is pending, in one write transaction (BEGIN IMMEDIATE: filings of
// one call by several processes queue); see store.Records.FileProposal.
func (s *Store) FileProposal(ctx context.Context, p store.Proposal) (store.Proposal, bool, error) {
	if err := fileable(p); err != nil {
		return store.Proposal{}, false, err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Proposal{}, false, fmt.Errorf("file proposal: %w", err)
	}
	defer tx.Rollback()
	cur, err := scanProposal(tx.QueryRowContext(ctx, `SELECT `+proposalCols+` FROM proposals
		WHERE origin = ? AND status = ? AND agent = ? AND tool = ? AND args_sha256 = ?`,
		store.OriginSidecar, store.ProposalPending, p.Agent, p.Tool, p.ArgsSHA256))
	switch {
	case err == nil:
		return cur, false, nil
	case !errors.Is(err, sql.ErrNoRows):
		return store.Proposal{}, false, fmt.Errorf("file proposal: %w", err)
	}
	stored, err := scanProposal(tx.QueryRowContext(ctx, insertProposal+` RETURNING `+proposalCols, proposalValues(p)...))
	if err != nil {
		return store.Proposal{}, false, fmt.Errorf("file proposal %q: %w", p.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return store.Proposal{}, false, fmt.Errorf("file proposal %q: %w", p.ID, err)
	}
	return stored, true, nil
}

// fileable checks what FileProposal requires of a proposal.
func fileable(p store.Proposal) error {
	switch {
	case p.ID == "":
		return errors.New("file proposal: empty id")
	case p.Origin != store.OriginSidecar || p.Status != store.ProposalPending || p.RunID != "" || p.HeldToken != "":
		return fmt.Errorf("file proposal %q: want a pending sidecar proposal outside any run, holding nothing", p.ID)
	case p.Agent == "" || p.Tool == "" || p.ArgsSHA256 == "":
		return fmt.Errorf("file proposal %q: agent, tool and args_sha256 are required", p.ID)
	}
	return nil
}

// ClaimApproval hands out a held approval once, in one write transaction;
// see store.Records.ClaimApproval.
func (s *Store) ClaimApproval(ctx context.Context, agent, tool, argsSHA256, by string, now time.Time) (store.Proposal, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Proposal{}, fmt.Errorf("claim approval: %w", err)
	}
	defer tx.Rollback()
	var id, token string
	err = tx.QueryRowContext(ctx, `SELECT id, held_token FROM proposals
		WHERE origin = ? AND status = ? AND agent = ? AND tool = ? AND args_sha256 = ? AND held_token <> ''
		AND expires_at > ? ORDER BY created_at, id LIMIT 1`,
		store.OriginSidecar, store.ProposalApproved, agent, tool, argsSHA256, ts(now)).Scan(&id, &token)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return store.Proposal{}, fmt.Errorf("claim approval: no held approval of this call: %w", store.ErrNotFound)
	case err != nil:
		return store.Proposal{}, fmt.Errorf("claim approval: %w", err)
	}
	p, err := scanProposal(tx.QueryRowContext(ctx, `UPDATE proposals SET status = ?, held_token = '', claimed_by = ?,
		claimed_at = ?, updated_at = ? WHERE id = ? AND status = ? RETURNING `+proposalCols,
		store.ProposalClaimed, by, ts(now), ts(now), id, store.ProposalApproved))
	if err != nil {
		return store.Proposal{}, fmt.Errorf("claim approval %q: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return store.Proposal{}, fmt.Errorf("claim approval %q: %w", id, err)
	}
	p.HeldToken = token
	return p, nil
}
