package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

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

// Text is ordered by COLLATE "C" (bytes, as SQLite does), whatever the
// database's collation.

// CreateRun stores a new run; see store.Records.CreateRun.
func (s *Store) CreateRun(ctx context.Context, r store.Run) error {
	if r.ID == "" {
		return errors.New("create run: empty id")
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO agent_runs (`+runCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
		r.ID, r.Agent, r.Goal, r.Model, r.Status, r.Error, r.BudgetUSD, r.OverAlert,
		r.Usage.InputTokens, r.Usage.OutputTokens, r.Usage.CacheReadTokens, r.Usage.CacheWriteTokens,
		r.Usage.CostUSD, r.CreatedAt, r.UpdatedAt, nullTime(r.FinishedAt))
	if err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	return nil
}

// UpdateRun stores r's Status, Error, Model, OverAlert, UpdatedAt and
// FinishedAt; see store.Records.UpdateRun.
func (s *Store) UpdateRun(ctx context.Context, r store.Run) error {
	tag, err := s.pool.Exec(ctx, `UPDATE agent_runs SET status = $1, error = $2, model = $3, over_alert = $4,
		updated_at = $5, finished_at = $6 WHERE id = $7`,
		r.Status, r.Error, r.Model, r.OverAlert, r.UpdatedAt, nullTime(r.FinishedAt), r.ID)
	if err != nil {
		return fmt.Errorf("update run %q: %w", r.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("update run %q: %w", r.ID, store.ErrNotFound)
	}
	return nil
}

// Run returns one run; see store.Records.Run.
func (s *Store) Run(ctx context.Context, id string) (store.Run, error) {
	r, err := scanRun(s.pool.QueryRow(ctx, `SELECT `+runCols+` FROM agent_runs WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("run %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("run %q: %w", id, err)
	}
	return r, nil
}

// Runs lists the runs f selects, newest first; see store.Records.Runs.
func (s *Store) Runs(ctx context.Context, f store.RunFilter) ([]store.Run, error) {
	var w where
	if f.Agent != "" {
		w.add("agent =", f.Agent)
	}
	if f.Status != "" {
		w.add("status =", f.Status)
	}
	q := `SELECT ` + runCols + ` FROM agent_runs` + w.String() + ` ORDER BY created_at DESC, id COLLATE "C" DESC`
	q += w.limit(f.Limit)
	rows, err := s.pool.Query(ctx, q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("query runs: %w", err)
	}
	out, err := collect(rows, scanRun)
	if err != nil {
		return nil, fmt.Errorf("query runs: %w", err)
	}
	return out, nil
}

// CreateProposals stores new proposals in one transaction and one round
// trip; see store.Records.CreateProposals.
func (s *Store) CreateProposals(ctx context.Context, ps []store.Proposal) error {
	if len(ps) == 0 {
		return nil
	}
	var b pgx.Batch
	for _, p := range ps {
		if p.ID == "" {
			return errors.New("create proposals: empty id")
		}
		b.Queue(insertProposal, proposalValues(p)...)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create proposals: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	br := tx.SendBatch(ctx, &b)
	for _, p := range ps {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return fmt.Errorf("create proposal %q: %w", p.ID, err)
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("create proposals: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create proposals: %w", err)
	}
	return nil
}

// Proposal returns one proposal; see store.Records.Proposal.
func (s *Store) Proposal(ctx context.Context, id string) (store.Proposal, error) {
	p, err := scanProposal(s.pool.QueryRow(ctx, `SELECT `+proposalCols+` FROM proposals WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
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
	var w where
	if f.Status != "" {
		w.add("status =", f.Status)
	}
	if f.RunID != "" {
		w.add("run_id =", f.RunID)
	}
	if f.Agent != "" {
		w.add("agent =", f.Agent)
	}
	for _, c := range [...]struct{ col, v string }{{"origin", f.Origin}, {"tool", f.Tool}, {"args_sha256", f.ArgsSHA256}} {
		if c.v != "" {
			w.add(c.col+" =", c.v)
		}
	}
	q := `SELECT ` + proposalCols + ` FROM proposals` + w.String() + ` ORDER BY created_at, id COLLATE "C"`
	q += w.limit(f.Limit)
	rows, err := s.pool.Query(ctx, q, w.args...)
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
// statement; see store.Records.UpdateProposal. Concurrent updates of one
// proposal queue on its row lock, and each re-checks the status it finds.
func (s *Store) UpdateProposal(ctx context.Context, id, from string, u store.ProposalUpdate) (store.Proposal, error) {
	p, err := scanProposal(s.pool.QueryRow(ctx, `UPDATE proposals SET
		status       = COALESCE(NULLIF($1::text, ''), status),
		reason       = COALESCE(NULLIF($2::text, ''), reason),
		approver     = COALESCE(NULLIF($3::text, ''), approver),
		approval_jti = COALESCE(NULLIF($4::text, ''), approval_jti),
		decided_at   = COALESCE($5::timestamptz, decided_at),
		updated_at   = COALESCE($6::timestamptz, updated_at),
		held_token   = COALESCE(NULLIF($9::text, ''), held_token),
		expires_at   = COALESCE($10::timestamptz, expires_at)
		WHERE id = $7 AND status = $8 RETURNING `+proposalCols,
		u.Status, u.Reason, u.Approver, u.ApprovalJTI, nullTime(u.DecidedAt), nullTime(u.UpdatedAt), id, from,
		u.HeldToken, nullTime(u.ExpiresAt)))
	if errors.Is(err, pgx.ErrNoRows) {
		var cur string
		switch err := s.pool.QueryRow(ctx, `SELECT status FROM proposals WHERE id = $1`, id).Scan(&cur); {
		case errors.Is(err, pgx.ErrNoRows):
			return store.Proposal{}, fmt.Errorf("update proposal %q: %w", id, store.ErrNotFound)
		case err != nil:
			return store.Proposal{}, fmt.Errorf("update proposal %q: %w", id, err)
		}
		return store.Proposal{}, fmt.Errorf("update proposal %q: status is %q, not %q: %w", id, cur, from, store.ErrStatus)
	}
	if err != nil {
		return store.Proposal{}, fmt.Errorf("update proposal %q: %w", id, err)
	}
	return p, nil
}

// ExpireProposals expires the pending proposals due by now in one
// statement; see store.Records.ExpireProposals. It locks the due rows in
// id order, so concurrent callers queue rather than deadlock, and a row
// another caller expired first no longer matches when its lock is granted.
func (s *Store) ExpireProposals(ctx context.Context, now time.Time) ([]store.Proposal, error) {
	rows, err := s.pool.Query(ctx, `WITH due AS (
			SELECT id FROM proposals WHERE (status = $2 OR (status = $4 AND held_token <> '')) AND expires_at <= $3
			ORDER BY id COLLATE "C" FOR UPDATE)
		UPDATE proposals p SET status = $1, reason = $1, decided_at = $3, updated_at = $3, held_token = ''
		FROM due WHERE p.id = due.id AND (p.status = $2 OR (p.status = $4 AND p.held_token <> ''))
		RETURNING `+prefixed("p.", proposalCols),
		store.ProposalExpired, store.ProposalPending, now, store.ProposalApproved)
	if err != nil {
		return nil, fmt.Errorf("expire proposals: %w", err)
	}
	out, err := collect(rows, scanProposal)
	if err != nil {
		return nil, fmt.Errorf("expire proposals: %w", err)
	}
	slices.SortFunc(out, func(a, b store.Proposal) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// CreateToolCall stores a new tool call; see store.Records.CreateToolCall.
func (s *Store) CreateToolCall(ctx context.Context, c store.ToolCall) error {
	if c.ID == "" {
		return errors.New("create tool call: empty id")
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO tool_calls (`+toolCallCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
		c.ID, c.RunID, c.Agent, c.Tool, jsonArg(c.Args), c.ArgsSHA256, c.ProposalID, c.DecisionID, c.Status,
		c.HTTPStatus, jsonArg(c.Result), c.Error, c.DurationUS, c.CreatedAt, c.UpdatedAt)
	if err != nil {
		return fmt.Errorf("create tool call %q: %w", c.ID, err)
	}
	return nil
}

// UpdateToolCall stores c's outcome; see store.Records.UpdateToolCall.
func (s *Store) UpdateToolCall(ctx context.Context, c store.ToolCall) error {
	tag, err := s.pool.Exec(ctx, `UPDATE tool_calls SET decision_id = $1, status = $2, http_status = $3,
		result = $4, error = $5, duration_us = $6, updated_at = $7 WHERE id = $8`,
		c.DecisionID, c.Status, c.HTTPStatus, jsonArg(c.Result), c.Error, c.DurationUS, c.UpdatedAt, c.ID)
	if err != nil {
		return fmt.Errorf("update tool call %q: %w", c.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("update tool call %q: %w", c.ID, store.ErrNotFound)
	}
	return nil
}

// ToolCalls lists a run's tool calls, oldest first; see
// store.Records.ToolCalls.
func (s *Store) ToolCalls(ctx context.Context, runID string) ([]store.ToolCall, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+toolCallCols+` FROM tool_calls WHERE run_id = $1
		ORDER BY created_at, id COLLATE "C"`, runID)
	if err != nil {
		return nil, fmt.Errorf("query tool calls of %q: %w", runID, err)
	}
	out, err := collect(rows, scanToolCall)
	if err != nil {
		return nil, fmt.Errorf("query tool calls of %q: %w", runID, err)
	}
	return out, nil
}

// RecordLLMCall stores c and adds its usage to its run in one transaction;
// see store.Records.RecordLLMCall. The run's row lock orders concurrent
// calls of one run.
func (s *Store) RecordLLMCall(ctx context.Context, c store.LLMCall) (store.Run, error) {
	if c.ID == "" {
		return store.Run{}, errors.New("record llm call: empty id")
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return store.Run{}, fmt.Errorf("record llm call %q: %w", c.ID, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	u := c.Usage
	r, err := scanRun(tx.QueryRow(ctx, `UPDATE agent_runs SET
		input_tokens       = input_tokens + $1,
		output_tokens      = output_tokens + $2,
		cache_read_tokens  = cache_read_tokens + $3,
		cache_write_tokens = cache_write_tokens + $4,
		cost_usd           = cost_usd + $5,
		updated_at         = GREATEST(updated_at, $6)
		WHERE id = $7 RETURNING `+runCols,
		u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens, u.CostUSD, c.CreatedAt, c.RunID))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Run{}, fmt.Errorf("record llm call %q: run %q: %w", c.ID, c.RunID, store.ErrNotFound)
	}
	if err != nil {
		return store.Run{}, fmt.Errorf("record llm call %q: %w", c.ID, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO llm_calls (id, run_id, agent, model, input_tokens, output_tokens,
		cache_read_tokens, cache_write_tokens, cost_usd, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		c.ID, c.RunID, c.Agent, c.Model, u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens,
		u.CostUSD, c.CreatedAt); err != nil {
		return store.Run{}, fmt.Errorf("record llm call %q: %w", c.ID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return store.Run{}, fmt.Errorf("record llm call %q: %w", c.ID, err)
	}
	return r, nil
}

// Costs sums the LLM calls since the given time by agent and model; see
// store.Records.Costs.
func (s *Store) Costs(ctx context.Context, since time.Time) ([]store.CostRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT agent, model, count(*), sum(input_tokens)::bigint,
		sum(output_tokens)::bigint, sum(cache_read_tokens)::bigint, sum(cache_write_tokens)::bigint, sum(cost_usd)
		FROM llm_calls WHERE created_at >= $1 GROUP BY agent, model
		ORDER BY agent COLLATE "C", model COLLATE "C"`, since)
	if err != nil {
		return nil, fmt.Errorf("query costs: %w", err)
	}
	out, err := collect(rows, func(row pgx.Row) (store.CostRow, error) {
		var c store.CostRow
		err := row.Scan(&c.Agent, &c.Model, &c.Calls, &c.Usage.InputTokens, &c.Usage.OutputTokens,
			&c.Usage.CacheReadTokens, &c.Usage.CacheWriteTokens, &c.Usage.CostUSD)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("query costs: %w", err)
	}
	return out, nil
}

func scanRun(row pgx.Row) (store.Run, error) {
	var r store.Run
	var finished *time.Time
	if err := row.Scan(&r.ID, &r.Agent, &r.Goal, &r.Model, &r.Status, &r.Error, &r.BudgetUSD, &r.OverAlert,
		&r.Usage.InputTokens, &r.Usage.OutputTokens, &r.Usage.CacheReadTokens, &r.Usage.CacheWriteTokens,
		&r.Usage.CostUSD, &r.CreatedAt, &r.UpdatedAt, &finished); err != nil {
		return r, err
	}
	r.CreatedAt, r.UpdatedAt, r.FinishedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC(), fromNull(finished)
	return r, nil
}

func scanProposal(row pgx.Row) (store.Proposal, error) {
	var p store.Proposal
	var runID *string
	var args []byte
	var step int32
	var expires, decided, claimed *time.Time
	if err := row.Scan(&p.ID, &runID, &p.Agent, &step, &p.CallID, &p.Tool, &args, &p.ArgsSHA256, &p.Risk,
		&p.Reasoning, &p.Status, &p.Reason, &p.Approver, &p.ApprovalJTI, &p.CreatedAt, &expires, &p.UpdatedAt,
		&decided, &p.Origin, &p.Sidecar, &p.Pod, &p.DecisionID, &p.ClaimedBy, &claimed); err != nil {
		return p, err
	}
	if runID != nil {
		p.RunID = *runID
	}
	if args != nil {
		p.Args = args
	}
	p.Step = int(step)
	p.CreatedAt, p.UpdatedAt = p.CreatedAt.UTC(), p.UpdatedAt.UTC()
	p.ExpiresAt, p.DecidedAt, p.ClaimedAt = fromNull(expires), fromNull(decided), fromNull(claimed)
	return p, nil
}

func scanToolCall(row pgx.Row) (store.ToolCall, error) {
	var c store.ToolCall
	var args, result []byte
	var status int32
	if err := row.Scan(&c.ID, &c.RunID, &c.Agent, &c.Tool, &args, &c.ArgsSHA256, &c.ProposalID, &c.DecisionID,
		&c.Status, &status, &result, &c.Error, &c.DurationUS, &c.CreatedAt, &c.UpdatedAt); err != nil {
		return c, err
	}
	if args != nil {
		c.Args = args
	}
	if result != nil {
		c.Result = result
	}
	c.HTTPStatus = int(status)
	c.CreatedAt, c.UpdatedAt = c.CreatedAt.UTC(), c.UpdatedAt.UTC()
	return c, nil
}

// collect scans every row with scan, and closes rows.
func collect[T any](rows pgx.Rows, scan func(pgx.Row) (T, error)) ([]T, error) {
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

// where builds a WHERE clause with numbered parameters.
type where struct {
	conds []string
	args  []any
}

// add adds the condition cond followed by a parameter holding v.
func (w *where) add(cond string, v any) {
	w.args = append(w.args, v)
	w.conds = append(w.conds, cond+" $"+strconv.Itoa(len(w.args)))
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// limit is a LIMIT clause for n > 0, its parameter added to w.
func (w *where) limit(n int) string {
	if n <= 0 {
		return ""
	}
	w.args = append(w.args, n)
	return " LIMIT $" + strconv.Itoa(len(w.args))
}

// prefixed qualifies each of the comma-separated cols with prefix.
func prefixed(prefix, cols string) string {
	fields := strings.Split(cols, ",")
	for i, f := range fields {
		fields[i] = prefix + strings.TrimSpace(f)
	}
	return strings.Join(fields, ", ")
}

// nullTime is t, or NULL for the zero time.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// fromNull is *t in UTC, or the zero time for NULL.
func fromNull(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// nullString is s, or NULL for "".
func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// jsonArg is m as a json parameter: its text exactly, or NULL when empty.
func jsonArg(m json.RawMessage) json.RawMessage {
	if len(m) == 0 {
		return nil
	}
	return m
}
