package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

var _ store.Insights = (*Store)(nil)

// ProposalDecisions lists decided proposals; see
// store.Insights.ProposalDecisions.
func (s *Store) ProposalDecisions(ctx context.Context, since time.Time, limit int) ([]store.ProposalDecision, error) {
	q := `SELECT id, COALESCE(run_id, ''), agent, tool, args_sha256, risk, status, approver, created_at, decided_at
		FROM proposals WHERE created_at >= ? AND decided_at IS NOT NULL ORDER BY created_at DESC, id DESC`
	args := []any{ts(since)}
	if limit > 0 {
		q, args = q+" LIMIT ?", append(args, limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query proposal decisions: %w", err)
	}
	out, err := collect(rows, func(sc scanner) (store.ProposalDecision, error) {
		var d store.ProposalDecision
		var created, decided string
		if err := sc.Scan(&d.ID, &d.RunID, &d.Agent, &d.Tool, &d.ArgsSHA256, &d.Risk, &d.Status, &d.Approver, &created, &decided); err != nil {
			return d, err
		}
		var err error
		if d.CreatedAt, err = parseTS(created); err != nil {
			return d, err
		}
		d.DecidedAt, err = parseTS(decided)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("query proposal decisions: %w", err)
	}
	return out, nil
}

// DailyCosts sums LLM calls by UTC day, agent and model; see
// store.Insights.DailyCosts. Times are stored as UTC text, so the day is
// the text's first ten bytes.
func (s *Store) DailyCosts(ctx context.Context, since time.Time) ([]store.DailyCost, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT substr(created_at, 1, 10) AS day, agent, model, count(*),
		sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(cost_usd)
		FROM llm_calls WHERE created_at >= ? GROUP BY day, agent, model ORDER BY day, agent, model`, ts(since))
	if err != nil {
		return nil, fmt.Errorf("query daily costs: %w", err)
	}
	out, err := collect(rows, func(sc scanner) (store.DailyCost, error) {
		var c store.DailyCost
		err := sc.Scan(&c.Day, &c.Agent, &c.Model, &c.Calls, &c.Usage.InputTokens, &c.Usage.OutputTokens,
			&c.Usage.CacheReadTokens, &c.Usage.CacheWriteTokens, &c.Usage.CostUSD)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("query daily costs: %w", err)
	}
	return out, nil
}
