package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Run statuses.
const (
	RunRunning    = "running"     // planning, or waiting for its proposals to be decided and run
	RunCompleted  = "completed"   // the planner said the goal is done
	RunFailed     = "failed"      // the planner or the store failed; Error says why
	RunOverBudget = "over_budget" // planning stopped: the run's cost reached its budget
)

// Proposal statuses. A proposal starts pending; an operator approves or
// rejects it, or it expires (an automatic rejection); an approved proposal
// is dispatched and ends executed (the tool answered) or failed (the
// dispatch or the tool failed, or the sidecar denied it).
const (
	ProposalPending  = "pending"
	ProposalApproved = "approved"
	ProposalRejected = "rejected"
	ProposalExpired  = "expired"
	ProposalExecuted = "executed"
	ProposalFailed   = "failed"
	// ProposalClaimed ends a sidecar's proposal (OriginSidecar): its
	// approval, held by the orchestrator, was handed to a sidecar by
	// ClaimApproval. Whether the tool ran is the sidecar's audit trail's
	// to tell (its decision event names the proposal).
	ProposalClaimed = "claimed"
)

// Proposal origins.
const (
	// OriginRun (the empty string) is a proposal of a run's planner: the
	// orchestrator dispatches it once approved.
	OriginRun = ""
	// OriginSidecar is a proposal a sidecar filed for a tool call of an MCP
	// client that came without an approval (DESIGN §10): the orchestrator
	// holds its approval until a sidecar claims it.
	OriginSidecar = "sidecar"
)

// Tool call statuses.
const (
	CallRunning   = "running"
	CallSucceeded = "succeeded"
	CallFailed    = "failed" // the tool answered with an error, or could not be reached
	CallDenied    = "denied" // the sidecar denied the call
)

// Column lists of the tables behind Records, for the backends' SQL: both
// schemas have these columns, and each backend scans them in this order.
const (
	RunColumns = `id, agent, task, model, status, error, budget_usd, over_alert, input_tokens,
	output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, created_at, updated_at, finished_at`
	ProposalColumns = `id, run_id, agent, step, call_id, tool, args, args_sha256, risk, reasoning,
	status, reason, approver, approval_jti, created_at, expires_at, updated_at, decided_at,
	origin, sidecar, pod, decision_id, claimed_by, claimed_at`
	ToolCallColumns = `id, run_id, agent, tool, args, args_sha256, proposal_id, decision_id, status,
	http_status, result, error, duration_us, created_at, updated_at`
)

// ErrNotFound is wrapped by the error for a run, proposal or tool call that
// does not exist.
var ErrNotFound = errors.New("store: not found")

// ErrStatus is wrapped by UpdateProposal's error when the proposal is no
// longer in the status the caller expected (another operator decided it
// first, or it expired).
var ErrStatus = errors.New("store: status changed")

// Usage is what one or more LLM calls consumed: tokens by kind and their
// cost in US dollars.
type Usage struct {
	InputTokens      int64   `json:"input_tokens"`
	OutputTokens     int64   `json:"output_tokens"`
	CacheReadTokens  int64   `json:"cache_read_tokens"`
	CacheWriteTokens int64   `json:"cache_write_tokens"`
	CostUSD          float64 `json:"cost_usd"`
}

// Add returns u plus v.
func (u Usage) Add(v Usage) Usage {
	u.InputTokens += v.InputTokens
	u.OutputTokens += v.OutputTokens
	u.CacheReadTokens += v.CacheReadTokens
	u.CacheWriteTokens += v.CacheWriteTokens
	u.CostUSD += v.CostUSD
	return u
}

// Run is one agent run: a goal an agent pursues through proposed tool
// calls. Times are kept to the microsecond, in UTC; a zero FinishedAt is
// stored as NULL.
type Run struct {
	ID         string    `json:"id"`
	Agent      string    `json:"agent"`
	Goal       string    `json:"goal"`  // column task
	Model      string    `json:"model"` // the planner's model, "" for the scripted planner
	Status     string    `json:"status"`
	Error      string    `json:"error,omitempty"`
	BudgetUSD  float64   `json:"budget_usd,omitempty"` // 0: no budget
	OverAlert  bool      `json:"over_alert,omitempty"` // cost passed COST_ALERT_THRESHOLD
	Usage      Usage     `json:"usage"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// Proposal is one proposed tool call. Times are kept to the microsecond,
// in UTC; a zero ExpiresAt (never expires) or DecidedAt is stored as NULL,
// and so is an empty RunID (a proposal outside a run).
type Proposal struct {
	ID         string          `json:"id"`
	RunID      string          `json:"run_id"`
	Agent      string          `json:"agent"`
	Step       int             `json:"step"`              // the planning step that proposed it, from 1
	CallID     string          `json:"call_id,omitempty"` // the planner's id for the call (Claude's tool_use id)
	Tool       string          `json:"tool"`
	Args       json.RawMessage `json:"args"` // the arguments exactly as proposed
	ArgsSHA256 string          `json:"args_sha256"`
	Risk       string          `json:"risk"`
	Reasoning  string          `json:"reasoning"`
	Status     string          `json:"status"`
	Reason     string          `json:"reason,omitempty"` // why rejected, expired or failed
	// Approver is the operator (the token's act.sub, else its iss) for an
	// approved proposal, or "auto-risk:<risk>" for one approved by
	// m1 approve --auto-risk.
	Approver    string    `json:"approver,omitempty"`
	ApprovalJTI string    `json:"approval_jti,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	DecidedAt   time.Time `json:"decided_at,omitzero"`

	// Where a proposal of a sidecar (Origin OriginSidecar) came from: the
	// sidecar and its pod as they named themselves, and the decision id of
	// the deny that filed it. Its Agent is the call's trusted principal
	// (DESIGN §10); RunID and Step are empty.
	Origin     string `json:"origin,omitempty"`
	Sidecar    string `json:"sidecar,omitempty"`
	Pod        string `json:"pod,omitempty"`
	DecisionID string `json:"decision_id,omitempty"`
	// ClaimedBy and ClaimedAt say which sidecar claimed the held approval
	// of a ProposalClaimed proposal, and when.
	ClaimedBy string    `json:"claimed_by,omitempty"`
	ClaimedAt time.Time `json:"claimed_at,omitzero"`
	// HeldToken is the operator-signed approval the orchestrator holds
	// for an approved sidecar proposal until a sidecar claims it. Only
	// ClaimApproval returns it; it is never written as JSON.
	HeldToken string `json:"-"`
}

// ProposalUpdate is a status change of a proposal. Empty strings and zero
// times leave the stored values alone.
type ProposalUpdate struct {
	Status      string
	Reason      string
	Approver    string
	ApprovalJTI string
	DecidedAt   time.Time
	UpdatedAt   time.Time
	// HeldToken (with ExpiresAt, the token's expiry) holds an approval
	// for a sidecar to claim.
	HeldToken string
	ExpiresAt time.Time
}

// ToolCall is one dispatch of an approved proposal to its tool. Its run
// must exist. Args and Result are stored as given, byte for byte; nil (or
// empty) is stored as NULL and read back as nil.
type ToolCall struct {
	ID         string          `json:"id"`
	RunID      string          `json:"run_id"`
	Agent      string          `json:"agent"`
	Tool       string          `json:"tool"`
	Args       json.RawMessage `json:"args,omitempty"` // nil when the tool is sensitive
	ArgsSHA256 string          `json:"args_sha256"`
	ProposalID string          `json:"proposal_id"`
	DecisionID string          `json:"decision_id,omitempty"` // the sidecar's x-m1-decision-id
	Status     string          `json:"status"`
	HTTPStatus int             `json:"http_status,omitempty"`
	Result     json.RawMessage `json:"result,omitempty"` // the tool's answer (MCP result or REST body), JSON
	Error      string          `json:"error,omitempty"`
	DurationUS int64           `json:"duration_us"`
	CreatedAt  time.Time       `json:"created_at"`
	UpdatedAt  time.Time       `json:"updated_at"`
}

// LLMCall is one call to a model, with what it consumed.
type LLMCall struct {
	ID        string    `json:"id"`
	RunID     string    `json:"run_id"`
	Agent     string    `json:"agent"`
	Model     string    `json:"model"`
	Usage     Usage     `json:"usage"`
	CreatedAt time.Time `json:"created_at"`
}

// RunFilter selects runs; zero fields select everything. Runs come newest
// first.
type RunFilter struct {
	Agent  string
	Status string
	Limit  int
}

// ProposalFilter selects proposals; zero fields select everything.
// Proposals come in (CreatedAt, ID) order, oldest first.
type ProposalFilter struct {
	Status string
	RunID  string
	Agent  string
	Limit  int
	// Sidecar proposals of one call: Origin OriginSidecar, and the call's
	// Tool and ArgsSHA256 (with Agent, the principal). Empty fields select
	// every value; Origin cannot select OriginRun alone.
	Origin     string
	Tool       string
	ArgsSHA256 string
}

// CostRow is the cost of the LLM calls of one agent and model.
type CostRow struct {
	Agent string `json:"agent"`
	Model string `json:"model"`
	Calls int64  `json:"calls"`
	Usage Usage  `json:"usage"`
}

// Records is the orchestrator's part of the store: runs, proposals, tool
// calls and LLM calls. Both backends implement it; implementations are
// safe for concurrent use by several processes sharing one database.
// Callers assign every ID (an empty ID is an error); storing an ID that
// exists already fails.
type Records interface {
	// CreateRun stores a new run.
	CreateRun(ctx context.Context, r Run) error
	// UpdateRun stores r's Status, Error, Model, OverAlert, UpdatedAt and
	// FinishedAt; ErrNotFound when there is no such run.
	UpdateRun(ctx context.Context, r Run) error
	// Run returns one run; ErrNotFound when there is none.
	Run(ctx context.Context, id string) (Run, error)
	// Runs lists runs, newest first: by CreatedAt then ID, descending.
	Runs(ctx context.Context, f RunFilter) ([]Run, error)

	// CreateProposals stores new proposals, all or none.
	CreateProposals(ctx context.Context, ps []Proposal) error
	// Proposal returns one proposal; ErrNotFound when there is none.
	Proposal(ctx context.Context, id string) (Proposal, error)
	// Proposals lists proposals, oldest first: by CreatedAt then ID.
	Proposals(ctx context.Context, f ProposalFilter) ([]Proposal, error)
	// UpdateProposal changes a proposal's status from `from` to u.Status,
	// atomically: ErrNotFound when there is no such proposal, ErrStatus
	// when its status is not `from`. It returns the updated proposal.
	UpdateProposal(ctx context.Context, id, from string, u ProposalUpdate) (Proposal, error)
	// ExpireProposals moves every pending proposal whose ExpiresAt is not
	// after now to ProposalExpired (reason "expired", DecidedAt and
	// UpdatedAt now) and returns them in (CreatedAt, ID) order; so too
	// every held approval (approved, with a HeldToken) whose ExpiresAt is
	// not after now, whose token it forgets. A proposal without ExpiresAt
	// never expires. Concurrent callers never return the same proposal.
	ExpireProposals(ctx context.Context, now time.Time) ([]Proposal, error)

	// FileProposal stores p, a pending sidecar proposal (Origin
	// OriginSidecar), and returns it with true; unless a pending sidecar
	// proposal of the same call (Agent, Tool and ArgsSHA256) exists: then
	// it stores nothing and returns that one with false. Concurrent
	// callers filing one call get one proposal.
	FileProposal(ctx context.Context, p Proposal) (Proposal, bool, error)
	// ClaimApproval hands out, once, the held approval of a sidecar
	// proposal of the call (agent, tool, argsSHA256): the oldest approved
	// one with a HeldToken whose ExpiresAt is after now. It moves that
	// proposal to ProposalClaimed (ClaimedBy by, ClaimedAt and UpdatedAt
	// now), forgets the token in the store and returns the proposal with
	// HeldToken set. ErrNotFound when there is none. Concurrent callers
	// never get the same token.
	ClaimApproval(ctx context.Context, agent, tool, argsSHA256, by string, now time.Time) (Proposal, error)

	// CreateToolCall stores a new tool call.
	CreateToolCall(ctx context.Context, c ToolCall) error
	// UpdateToolCall stores c's DecisionID, Status, HTTPStatus, Result,
	// Error, DurationUS and UpdatedAt; ErrNotFound when there is none.
	UpdateToolCall(ctx context.Context, c ToolCall) error
	// ToolCalls lists a run's tool calls, oldest first: by CreatedAt then
	// ID.
	ToolCalls(ctx context.Context, runID string) ([]ToolCall, error)

	// RecordLLMCall stores an LLM call and adds its usage to its run's
	// totals, atomically, returning the run as updated: its UpdatedAt
	// moves forward to the call's CreatedAt (never back). ErrNotFound when
	// the run does not exist.
	RecordLLMCall(ctx context.Context, c LLMCall) (Run, error)
	// Costs sums LLM calls created at or after since by agent and model,
	// ordered by agent then model (byte order). LLM calls are deleted with
	// their run.
	Costs(ctx context.Context, since time.Time) ([]CostRow, error)
}
