package store

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// PrunePlan is what one Prune call covers, read from its kinds. Backends
// use it; callers pass kinds to Store.Prune.
type PrunePlan struct {
	Events        bool     // prune audit events
	EventKinds    []string // only these kinds; nil means every kind
	Runs          bool
	ToolCalls     bool
	Proposals     bool
	RevokedTokens bool
}

// PlanPrune reads Prune's kinds: event kinds and Prune* targets; none means
// everything.
func PlanPrune(kinds []string) PrunePlan {
	if len(kinds) == 0 {
		return PrunePlan{Events: true, Runs: true, ToolCalls: true, Proposals: true, RevokedTokens: true}
	}
	var p PrunePlan
	all := false
	for _, k := range kinds {
		switch k {
		case PruneEvents:
			p.Events, all = true, true
		case PruneRuns:
			p.Runs = true
		case PruneToolCalls:
			p.ToolCalls = true
		case PruneProposals:
			p.Proposals = true
		case PruneRevokedTokens:
			p.RevokedTokens = true
		default:
			p.Events = true
			if !slices.Contains(p.EventKinds, k) {
				p.EventKinds = append(p.EventKinds, k)
			}
		}
	}
	if all {
		p.EventKinds = nil
	}
	return p
}

// RowDeletes are the DELETE statements for the plan's non-event targets,
// children before parents, with the cutoff as the single parameter written
// "$1" (backends rewrite it to their placeholder).
func (p PrunePlan) RowDeletes() []string {
	var out []string
	for _, t := range []struct {
		on  bool
		sql string
	}{
		{p.ToolCalls, `DELETE FROM tool_calls WHERE created_at < $1`},
		{p.Proposals, `DELETE FROM proposals WHERE created_at < $1`},
		{p.Runs, `DELETE FROM agent_runs WHERE created_at < $1`},
		{p.RevokedTokens, `DELETE FROM revoked_tokens WHERE expires_at IS NOT NULL AND expires_at < $1`},
	} {
		if t.on {
			out = append(out, t.sql)
		}
	}
	return out
}

// Retention is how long one prune target is kept.
type Retention struct {
	Target string        // a Prune* target
	Keep   time.Duration // records older than this are pruned
}

// Year is 365 days, for retention periods.
const Year = 365 * 24 * time.Hour

// DefaultRetention is the operators' retention policy: decisions, runs,
// tool calls and proposals for two years; revoked tokens for 30 days.
// Children (tool calls, proposals) come before runs, so that each target's
// count is its own rather than swallowed by a run's cascade.
var DefaultRetention = []Retention{
	{PruneEvents, 2 * Year},
	{PruneToolCalls, 2 * Year},
	{PruneProposals, 2 * Year},
	{PruneRuns, 2 * Year},
	{PruneRevokedTokens, 30 * 24 * time.Hour},
}

// ApplyRetention prunes each target of r at now minus its Keep, and returns
// the rows removed per target. It stops at the first error.
func ApplyRetention(ctx context.Context, s Store, now time.Time, r []Retention) (map[string]int64, error) {
	out := make(map[string]int64, len(r))
	for _, t := range r {
		n, err := s.Prune(ctx, now.Add(-t.Keep), t.Target)
		if err != nil {
			return out, fmt.Errorf("prune %s: %w", t.Target, err)
		}
		out[t.Target] = n
	}
	return out, nil
}
