package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

var _ store.Records = (*Store)(nil)

// The column lists, in the order of the scan functions, are the schema's,
// shared with the other backend.
const (
	runCols      = store.RunColumns
	proposalCols = store.ProposalColumns
	toolCallCols = store.ToolCallColumns
)

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// CreateRun stores a new run; see store.Records.CreateRun.
func (s *Store) CreateRun(ctx context.Context, r store.Run) error {
	if r.ID == "" {
		return errors.New("create run: empty id")
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO agent_runs (`+runCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.Agent, r.Goal, r.Model, r.Status, r.Error, r.BudgetUSD, boolInt(r.OverAlert),
		r.Usage.InputTokens, r.Usage.OutputTokens, r.Usage.CacheReadTokens, r.Usage.CacheWriteTokens,
		r.Usage.CostUSD, ts(r.CreatedAt), ts(r.UpdatedAt), nullTS(r.FinishedAt))
	if err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	return nil
}

// UpdateRun stores r's Status, Error, Model, OverAlert, UpdatedAt and
// FinishedAt; see store.Records.UpdateRun.
func (s *Store) UpdateRun(ctx context.Context, r store.Run) error {
	res, err := s.w.ExecContext(ctx, `UPDATE agent_runs SET status = ?, error = ?, model = ?, over_alert = ?,
		updated_at = ?, finished_at = ? WHERE id = ?`,
		r.Status, r.Error, r.Model, boolInt(r.OverAlert), ts(r.UpdatedAt), nullTS(r.FinishedAt), r.ID)
	if err != nil {
		return fmt.Errorf("update run %q: %w", r.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("update run %q: %w", r.ID, err)
	} else if n == 0 {
		return fmt.Errorf("update run %q: %w", r.ID, store.ErrNotFound)
	}
	return nil
}

// Run returns one run; see store.Records.Run.
func (s *Store) Run(ctx context.Context, id string) (store.Run, error) {
	r, err := scanRun(s.r.QueryRowContext(ctx, `SELECT `+runCols+` FROM agent_runs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("run %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("run %q: %w", id, err)
	}
	return r, nil
}

// Runs lists the runs f selects, newest first; see store.Records.Runs.
func (s *Store) Runs(ctx context.Context, f store.RunFilter) ([]store.Run, error) {
	var where []string
	var args []any
	if f.Agent != "" {
		where, args = append(where, "agent = ?"), append(args, f.Agent)
	}
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, f.Status)
	}
	q := `SELECT ` + runCols + ` FROM agent_runs` + whereClause(where) + ` ORDER BY created_at DESC, id DESC`
	if f.Limit > 0 {
		q, args = q+" LIMIT ?", append(args, f.Limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query runs: %w", err)
	}
	out, err := collect(rows, scanRun)
	if err != nil {
		return nil, fmt.Errorf("query runs: %w", err)
	}
	return out, nil
}

// CreateProposals stores new proposals in one transaction; see
// store.Records.CreateProposals.
func (s *Store) CreateProposals(ctx context.Context, ps []store.Proposal) error {
	if len(ps) == 0 {
		return nil
	}
	for _, p := range ps {
		if p.ID == "" {
			return errors.New("create proposals: empty id")
		}
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("create proposals: %w", err)
	}
	defer tx.Rollback()
	ins, err := tx.PrepareContext(ctx, insertProposal)
	if err != nil {
		return fmt.Errorf("create proposals: %w", err)
	}
	defer ins.Close()
	for _, p := range ps {
		if _, err := ins.ExecContext(ctx, proposalValues(p)...); err != nil {
			return fmt.Errorf("create proposal %q: %w", p.ID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("create proposals: %w", err)
	}
	return nil
}

// Proposal returns one proposal; see store.Records.Proposal.
func (s *Store) Proposal(ctx context.Context, id string) (store.Proposal, error) {
	p, err := scanProposal(s.r.QueryRowContext(ctx, `SELECT `+proposalCols+` FROM proposals WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("proposal %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return p, fmt.Errorf("proposal %q: %w", id, err)
	}
	return p, nil
}

// Proposals lists the proposals f selects, oldest first; see
// store.Records.Proposals.
func (s *Store) Proposals(ctx context.Context, f store.ProposalFilter) ([]store.Proposal, error) {
	var where []string
	var args []any
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, f.Status)
	}
	if f.RunID != "" {
		where, args = append(where, "run_id = ?"), append(args, f.RunID)
	}
	if f.Agent != "" {
		where, args = append(where, "agent = ?"), append(args, f.Agent)
	}
	for _, c := range [...]struct{ col, v string }{{"origin", f.Origin}, {"tool", f.Tool}, {"args_sha256", f.ArgsSHA256}} {
		if c.v != "" {
			where, args = append(where, c.col+" = ?"), append(args, c.v)
		}
	}
	q := `SELECT ` + proposalCols + ` FROM proposals` + whereClause(where) + ` ORDER BY created_at, id`
	if f.Limit > 0 {
		q, args = q+" LIMIT ?", append(args, f.Limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query proposals: %w", err)
	}
	out, err := collect(rows, scanProposal)
	if err != nil {
		return nil, fmt.Errorf("query proposals: %w", err)
	}
	return out, nil
}

// UpdateProposal moves a proposal from status from to u.Status in one
// write transaction; see store.Records.UpdateProposal.
func (s *Store) UpdateProposal(ctx context.Context, id, from string, u store.ProposalUpdate) (store.Proposal, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Proposal{}, fmt.Errorf("update proposal %q: %w", id, err)
	}
	defer tx.Rollback()
	p, err := scanProposal(tx.QueryRowContext(ctx, `UPDATE proposals SET
		status       = COALESCE(NULLIF(?, ''), status),
		reason       = COALESCE(NULLIF(?, ''), reason),
		approver     = COALESCE(NULLIF(?, ''), approver),
		approval_jti = COALESCE(NULLIF(?, ''), approval_jti),
		decided_at   = COALESCE(?, decided_at),
		updated_at   = COALESCE(?, updated_at),
		held_token   = COALESCE(NULLIF(?, ''), held_token),
		expires_at   = COALESCE(?, expires_at)
		WHERE id = ? AND status = ? RETURNING `+proposalCols,
		u.Status, u.Reason, u.Approver, u.ApprovalJTI, nullTS(u.DecidedAt), nullTS(u.UpdatedAt),
		u.HeldToken, nullTS(u.ExpiresAt), id, from))
	if errors.Is(err, sql.ErrNoRows) {
		var cur string
		switch err := tx.QueryRowContext(ctx, `SELECT status FROM proposals WHERE id = ?`, id).Scan(&cur); {
		case errors.Is(err, sql.ErrNoRows):
			return store.Proposal{}, fmt.Errorf("update proposal %q: %w", id, store.ErrNotFound)
		case err != nil:
			return store.Proposal{}, fmt.Errorf("update proposal %q: %w", id, err)
		}
		return store.Proposal{}, fmt.Errorf("update proposal %q: status is %q, not %q: %w", id, cur, from, store.ErrStatus)
	}
	if err != nil {
		return store.Proposal{}, fmt.Errorf("update proposal %q: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return store.Proposal{}, fmt.Errorf("update proposal %q: %w", id, err)
	}
	return p, nil
}

// ExpireProposals expires the pending proposals due by now in one
// statement; see store.Records.ExpireProposals.
func (s *Store) ExpireProposals(ctx context.Context, now time.Time) ([]store.Proposal, error) {
	t := ts(now)
	rows, err := s.w.QueryContext(ctx, `UPDATE proposals SET status = ?, reason = ?, decided_at = ?, updated_at = ?, held_token = ''
		WHERE (status = ? OR (status = ? AND held_token <> '')) AND expires_at IS NOT NULL AND expires_at <= ?
		RETURNING `+proposalCols,
		store.ProposalExpired, store.ProposalExpired, t, t, store.ProposalPending, store.ProposalApproved, t)
	if err != nil {
		return nil, fmt.Errorf("expire proposals: %w", err)
	}
	out, err := collect(rows, scanProposal)
	if err != nil {
		return nil, fmt.Errorf("expire proposals: %w", err)
	}
	sortProposals(out)
	return out, nil
}

// CreateToolCall stores a new tool call; see store.Records.CreateToolCall.
func (s *Store) CreateToolCall(ctx context.Context, c store.ToolCall) error {
	if c.ID == "" {
		return errors.New("create tool call: empty id")
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO tool_calls (`+toolCallCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.ID, c.RunID, c.Agent, c.Tool, jsonText(c.Args), c.ArgsSHA256, c.ProposalID, c.DecisionID, c.Status,
		c.HTTPStatus, jsonText(c.Result), c.Error, c.DurationUS, ts(c.CreatedAt), ts(c.UpdatedAt))
	if err != nil {
		return fmt.Errorf("create tool call %q: %w", c.ID, err)
	}
	return nil
}

// UpdateToolCall stores c's outcome; see store.Records.UpdateToolCall.
func (s *Store) UpdateToolCall(ctx context.Context, c store.ToolCall) error {
	res, err := s.w.ExecContext(ctx, `UPDATE tool_calls SET decision_id = ?, status = ?, http_status = ?,
		result = ?, error = ?, duration_us = ?, updated_at = ? WHERE id = ?`,
		c.DecisionID, c.Status, c.HTTPStatus, jsonText(c.Result), c.Error, c.DurationUS, ts(c.UpdatedAt), c.ID)
	if err != nil {
		return fmt.Errorf("update tool call %q: %w", c.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("update tool call %q: %w", c.ID, err)
	} else if n == 0 {
		return fmt.Errorf("update tool call %q: %w", c.ID, store.ErrNotFound)
	}
	return nil
}

// ToolCalls lists a run's tool calls, oldest first; see
// store.Records.ToolCalls.
func (s *Store) ToolCalls(ctx context.Context, runID string) ([]store.ToolCall, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+toolCallCols+` FROM tool_calls WHERE run_id = ?
		ORDER BY created_at, id`, runID)
	if err != nil {
		return nil, fmt.Errorf("query tool calls of %q: %w", runID, err)
	}
	out, err := collect(rows, scanToolCall)
	if err != nil {
		return nil, fmt.Errorf("query tool calls of %q: %w", runID, err)
	}
	return out, nil
}

// RecordLLMCall stores c and adds its usage to its run in one write
// transaction; see store.Records.RecordLLMCall.
func (s *Store) RecordLLMCall(ctx context.Context, c store.LLMCall) (store.Run, error) {
	if c.ID == "" {
		return store.Run{}, errors.New("record llm call: empty id")
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Run{}, fmt.Errorf("record llm call %q: %w", c.ID, err)
	}
	defer tx.Rollback()
	u, at := c.Usage, ts(c.CreatedAt)
	r, err := scanRun(tx.QueryRowContext(ctx, `UPDATE agent_runs SET
		input_tokens       = input_tokens + ?,
		output_tokens      = output_tokens + ?,
		cache_read_tokens  = cache_read_tokens + ?,
		cache_write_tokens = cache_write_tokens + ?,
		cost_usd           = cost_usd + ?,
		updated_at         = MAX(updated_at, ?)
		WHERE id = ? RETURNING `+runCols,
		u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens, u.CostUSD, at, c.RunID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Run{}, fmt.Errorf("record llm call %q: run %q: %w", c.ID, c.RunID, store.ErrNotFound)
	}
	if err != nil {
		return store.Run{}, fmt.Errorf("record llm call %q: %w", c.ID, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO llm_calls (id, run_id, agent, model, input_tokens, output_tokens,
		cache_read_tokens, cache_write_tokens, cost_usd, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.ID, c.RunID, c.Agent, c.Model, u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens,
		u.CostUSD, at); err != nil {
		return store.Run{}, fmt.Errorf("record llm call %q: %w", c.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return store.Run{}, fmt.Errorf("record llm call %q: %w", c.ID, err)
	}
	return r, nil
}

// Costs sums the LLM calls since the given time by agent and model; see
// store.Records.Costs.
func (s *Store) Costs(ctx context.Context, since time.Time) ([]store.CostRow, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT agent, model, count(*), sum(input_tokens), sum(output_tokens),
		sum(cache_read_tokens), sum(cache_write_tokens), sum(cost_usd)
		FROM llm_calls WHERE created_at >= ? GROUP BY agent, model ORDER BY agent, model`, ts(since))
	if err != nil {
		return nil, fmt.Errorf("query costs: %w", err)
	}
	out, err := collect(rows, func(sc scanner) (store.CostRow, error) {
		var c store.CostRow
		err := sc.Scan(&c.Agent, &c.Model, &c.Calls, &c.Usage.InputTokens, &c.Usage.OutputTokens,
			&c.Usage.CacheReadTokens, &c.Usage.CacheWriteTokens, &c.Usage.CostUSD)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("query costs: %w", err)
	}
	return out, nil
}

func scanRun(sc scanner) (store.Run, error) {
	var r store.Run
	var alert int64
	var created, updated string
	var finished sql.NullString
	if err := sc.Scan(&r.ID, &r.Agent, &r.Goal, &r.Model, &r.Status, &r.Error, &r.BudgetUSD, &alert,
		&r.Usage.InputTokens, &r.Usage.OutputTokens, &r.Usage.CacheReadTokens, &r.Usage.CacheWriteTokens,
		&r.Usage.CostUSD, &created, &updated, &finished); err != nil {
		return r, err
	}
	r.OverAlert = alert != 0
	var err error
	if r.CreatedAt, err = parseTS(created); err != nil {
		return r, err
	}
	if r.UpdatedAt, err = parseTS(updated); err != nil {
		return r, err
	}
	if r.FinishedAt, err = parseNullTS(finished); err != nil {
		return r, err
	}
	return r, nil
}

func scanProposal(sc scanner) (store.Proposal, error) {
	var p store.Proposal
	var runID, args, expires, decided, claimed sql.NullString
	var created, updated string
	if err := sc.Scan(&p.ID, &runID, &p.Agent, &p.Step, &p.CallID, &p.Tool, &args, &p.ArgsSHA256, &p.Risk,
		&p.Reasoning, &p.Status, &p.Reason, &p.Approver, &p.ApprovalJTI, &created, &expires, &updated,
		&decided, &p.Origin, &p.Sidecar, &p.Pod, &p.DecisionID, &p.ClaimedBy, &claimed); err != nil {
		return p, err
	}
	p.RunID = runID.String
	p.Args = jsonValue(args)
	var err error
	if p.CreatedAt, err = parseTS(created); err != nil {
		return p, err
	}
	if p.ExpiresAt, err = parseNullTS(expires); err != nil {
		return p, err
	}
	if p.UpdatedAt, err = parseTS(updated); err != nil {
		return p, err
	}
	if p.DecidedAt, err = parseNullTS(decided); err != nil {
		return p, err
	}
	if p.ClaimedAt, err = parseNullTS(claimed); err != nil {
		return p, err
	}
	return p, nil
}

func scanToolCall(sc scanner) (store.ToolCall, error) {
	var c store.ToolCall
	var args, result sql.NullString
	var created, updated string
	if err := sc.Scan(&c.ID, &c.RunID, &c.Agent, &c.Tool, &args, &c.ArgsSHA256, &c.ProposalID, &c.DecisionID,
		&c.Status, &c.HTTPStatus, &result, &c.Error, &c.DurationUS, &created, &updated); err != nil {
		return c, err
	}
	c.Args, c.Result = jsonValue(args), jsonValue(result)
	var err error
	if c.CreatedAt, err = parseTS(created); err != nil {
		return c, err
	}
	if c.UpdatedAt, err = parseTS(updated); err != nil {
		return c, err
	}
	return c, nil
}

// collect scans every row with scan, and closes rows.
func collect[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// sortProposals puts ps in (CreatedAt, ID) order.
func sortProposals(ps []store.Proposal) {
	slices.SortFunc(ps, func(a, b store.Proposal) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

func whereClause(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// nullTS formats t as stored, or NULL for the zero time.
func nullTS(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return ts(t)
}

// parseNullTS parses a stored time, NULL being the zero time.
func parseNullTS(s sql.NullString) (time.Time, error) {
	if !s.Valid {
		return time.Time{}, nil
	}
	return parseTS(s.String)
}

// nullString is s, or NULL for "".
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// jsonText is m's text as stored, or NULL when m is empty.
func jsonText(m json.RawMessage) any {
	if len(m) == 0 {
		return nil
	}
	return string(m)
}

// jsonValue is a stored JSON text, nil for NULL.
func jsonValue(s sql.NullString) json.RawMessage {
	if !s.Valid {
		return nil
	}
	return json.RawMessage(s.String)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
