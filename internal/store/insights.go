package store

import (
	"context"
	"time"
)

// ProposalDecision is what the dashboards' approval analytics read of a
// decided proposal: who decided what, and when, without its arguments
// (ArgsSHA256 identifies them).
type ProposalDecision struct {
	ID         string    `json:"id"`
	RunID      string    `json:"run_id"`
	Agent      string    `json:"agent"`
	Tool       string    `json:"tool"`
	ArgsSHA256 string    `json:"args_sha256"`
	Risk       string    `json:"risk"`
	Status     string    `json:"status"`
	Approver   string    `json:"approver"` // "" unless approved
	CreatedAt  time.Time `json:"created_at"`
	DecidedAt  time.Time `json:"decided_at"`
}

// DailyCost is the cost of the LLM calls of one agent and model on one UTC
// day.
type DailyCost struct {
	Day   string `json:"day"` // YYYY-MM-DD, UTC
	Agent string `json:"agent"`
	Model string `json:"model"`
	Calls int64  `json:"calls"`
	Usage Usage  `json:"usage"`
}

// Insights are the read-only aggregates behind the dashboards (approval
// analytics, cost trends). Both backends implement it; implementations are
// safe for concurrent use.
type Insights interface {
	// ProposalDecisions lists the proposals created at or after since that
	// were decided (DecidedAt set: approved, rejected, expired, executed or
	// failed), newest first by CreatedAt then ID, at most limit (0: no
	// limit).
	ProposalDecisions(ctx context.Context, since time.Time, limit int) ([]ProposalDecision, error)
	// DailyCosts sums the LLM calls created at or after since by UTC day,
	// agent and model, ordered by day, agent, then model (byte order).
	DailyCosts(ctx context.Context, since time.Time) ([]DailyCost, error)
}
