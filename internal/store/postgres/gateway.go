package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/m1-agent/m1/internal/store"
)

// insertProposal stores every column of a proposal (proposalValues), the
// held token included.
var insertProposal = func() string {
	n := strings.Count(proposalCols, ",") + 2 // the columns, and held_token
	ps := make([]string, n)
	for i := range ps {
		ps[i] = "$" + strconv.Itoa(i+1)
	}
	return `INSERT INTO proposals (` + proposalCols + `, held_token) VALUES (` + strings.Join(ps, ", ") + `)`
}()

// proposalValues are p's values in the order of insertProposal.
func proposalValues(p store.Proposal) []any {
	return []any{p.ID, nullString(p.RunID), p.Agent, p.Step, p.CallID, p.Tool, jsonArg(p.Args), p.ArgsSHA256,
		p.Risk, p.Reasoning, p.Status, p.Reason, p.Approver, p.ApprovalJTI, p.CreatedAt, nullTime(p.ExpiresAt),
		p.UpdatedAt, nullTime(p.DecidedAt), p.Origin, p.Sidecar, p.Pod, p.DecisionID, p.ClaimedBy,
		nullTime(p.ClaimedAt), p.HeldToken}
}

// FileProposal stores a pending sidecar proposal unless one of the same
// call is pending; see store.Records.FileProposal. The unique index on
// pending sidecar proposals (migration 0006) decides between concurrent
// filings: the insert that loses does nothing, and the winner is read.
// A pending proposal decided between the two statements is filed anew.
func (s *Store) FileProposal(ctx context.Context, p store.Proposal) (store.Proposal, bool, error) {
	switch {
	case p.ID == "":
		return store.Proposal{}, false, errors.New("file proposal: empty id")
	case p.Origin != store.OriginSidecar || p.Status != store.ProposalPending || p.RunID != "" || p.HeldToken != "":
		return store.Proposal{}, false, fmt.Errorf("file proposal %q: want a pending sidecar proposal outside any run, holding nothing", p.ID)
	case p.Agent == "" || p.Tool == "" || p.ArgsSHA256 == "":
		return store.Proposal{}, false, fmt.Errorf("file proposal %q: agent, tool and args_sha256 are required", p.ID)
	}
	for range 3 {
		stored, err := scanProposal(s.pool.QueryRow(ctx, insertProposal+` ON CONFLICT DO NOTHING RETURNING `+proposalCols,
			proposalValues(p)...))
		switch {
		case err == nil:
			return stored, true, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return store.Proposal{}, false, fmt.Errorf("file proposal %q: %w", p.ID, err)
		}
		cur, err := scanProposal(s.pool.QueryRow(ctx, `SELECT `+proposalCols+` FROM proposals
			WHERE origin = $1 AND status = $2 AND agent = $3 AND tool = $4 AND args_sha256 = $5`,
			store.OriginSidecar, store.ProposalPending, p.Agent, p.Tool, p.ArgsSHA256))
		switch {
		case err == nil:
			return cur, false, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return store.Proposal{}, false, fmt.Errorf("file proposal: %w", err)
		}
	}
	return store.Proposal{}, false, fmt.Errorf("file proposal %q: the call's pending proposal keeps changing; try again", p.ID)
}

// ClaimApproval hands out a held approval once; see
// store.Records.ClaimApproval. The row is locked (FOR UPDATE SKIP LOCKED,
// so a second claimer moves on to another held approval of the call, or
// finds none) and updated in one statement.
func (s *Store) ClaimApproval(ctx context.Context, agent, tool, argsSHA256, by string, now time.Time) (store.Proposal, error) {
	var token string
	p, err := scanProposal(rowWith{s.pool.QueryRow(ctx, `WITH held AS (
			SELECT id, held_token FROM proposals
			WHERE origin = $1 AND status = $2 AND agent = $3 AND tool = $4 AND args_sha256 = $5
			AND held_token <> '' AND expires_at > $6
			ORDER BY created_at, id COLLATE "C" LIMIT 1 FOR UPDATE SKIP LOCKED)
		UPDATE proposals p SET status = $7, held_token = '', claimed_by = $8, claimed_at = $6, updated_at = $6
		FROM held WHERE p.id = held.id AND p.status = $2
		RETURNING `+prefixed("p.", proposalCols)+`, held.held_token`,
		store.OriginSidecar, store.ProposalApproved, agent, tool, argsSHA256, now, store.ProposalClaimed, by),
		[]any{&token}})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return store.Proposal{}, fmt.Errorf("claim approval: no held approval of this call: %w", store.ErrNotFound)
	case err != nil:
		return store.Proposal{}, fmt.Errorf("claim approval: %w", err)
	}
	p.HeldToken = token
	return p, nil
}

// rowWith is a row whose Scan fills extra after the destinations it is
// given: a column returned beside a proposal's.
type rowWith struct {
	pgx.Row
	extra []any
}

func (r rowWith) Scan(dest ...any) error { return r.Row.Scan(append(dest, r.extra...)...) }
