package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/m1-agent/m1/internal/store"
)

var _ store.Insights = (*Store)(nil)

// ProposalDecisions lists decided proposals; see
// store.Insights.ProposalDecisions.
func (s *Store) ProposalDecisions(ctx context.Context, since time.Time, limit int) ([]store.ProposalDecision, error) {
	q := `SELECT id, COALESCE(run_id, ''), agent, tool, args_sha256, risk, status, approver, created_at, decided_at
		FROM proposals WHERE created_at >= $1 AND decided_at IS NOT NULL ORDER BY created_at DESC, id COLLATE "C" DESC`
	args := []any{since}
	if limit > 0 {
		q, args = q+" LIMIT $2", append(args, limit)
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query proposal decisions: %w", err)
	}
	out, err := collect(rows, func(row pgx.Row) (store.ProposalDecision, error) {
		var d store.ProposalDecision
		err := row.Scan(&d.ID, &d.RunID, &d.Agent, &d.Tool, &d.ArgsSHA256, &d.Risk, &d.Status, &d.Approver, &d.CreatedAt, &d.DecidedAt)
		d.CreatedAt, d.DecidedAt = d.CreatedAt.UTC(), d.DecidedAt.UTC()
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("query proposal decisions: %w", err)
	}
	return out, nil
}

// DailyCosts sums LLM calls by UTC day, agent and model; see
// store.Insights.DailyCosts.
func (s *Store) DailyCosts(ctx context.Context, since time.Time) ([]store.DailyCost, error) {
	rows, err := s.pool.Query(ctx, `SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, agent, model, count(*),
		sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(cache_read_tokens)::bigint, sum(cache_write_tokens)::bigint, sum(cost_usd)
		FROM llm_calls WHERE created_at >= $1 GROUP BY day, agent, model
		ORDER BY day, agent COLLATE "C", model COLLATE "C"`, since)
	if err != nil {
		return nil, fmt.Errorf("query daily costs: %w", err)
	}
	out, err := collect(rows, func(row pgx.Row) (store.DailyCost, error) {
		var c store.DailyCost
		err := row.Scan(&c.Day, &c.Agent, &c.Model, &c.Calls, &c.Usage.InputTokens, &c.Usage.OutputTokens,
			&c.Usage.CacheReadTokens, &c.Usage.CacheWriteTokens, &c.Usage.CostUSD)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("query daily costs: %w", err)
	}
	return out, nil
}
