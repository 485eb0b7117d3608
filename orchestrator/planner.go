package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
)

// Planner turns a goal into proposed tool calls, one step at a time. The
// orchestrator calls Next when a run starts and again each time every
// proposal of the last step is decided (run, rejected or expired), with the
// outcomes so far, until Next says Done, fails, or the run's budget is
// spent. Implementations must be safe for concurrent use by several runs.
type Planner interface {
	Next(ctx context.Context, s Session) (Step, error)
}

// ErrPlanner is wrapped by a planner's error for a reply it could not use
// (malformed, refused, or an unknown tool).
var ErrPlanner = errors.New("planner")

// Session is what a planner knows about a run.
type Session struct {
	RunID string
	Agent string
	Goal  string
	// Tools are the tools the agent may propose, from the registry, in
	// name order.
	Tools []Tool
	// History holds the earlier steps with each call's outcome, oldest
	// first.
	History []StepRecord
}

// Tool describes a tool to a planner.
type Tool struct {
	Name        string
	Description string
	Risk        string
	// InputSchema is the JSON Schema of the arguments; nil means any object.
	InputSchema json.RawMessage
}

// Step is one planning step.
type Step struct {
	// Calls are the proposed tool calls; none with Done false is an error.
	Calls []Call
	// Text is what the planner said besides the calls (the model's text).
	Text string
	// Done with no Calls means the goal is complete (or cannot be pursued
	// further): the run ends. A step with calls is never the last: once
	// they are decided, the planner is asked again with their outcomes
	// (and may then say Done).
	Done bool
	// LLM lists each model call the step made, for cost tracking. When
	// Next fails after making model calls, it returns a *PlannerError
	// that lists them instead.
	LLM []LLMUsage
}

// Call is one proposed tool call.
type Call struct {
	// ID is the planner's id for the call (Claude's tool_use id); the
	// orchestrator assigns one when empty.
	ID        string
	Tool      string
	Args      json.RawMessage // a JSON object
	Reasoning string
}

// LLMUsage is one model call's token counts.
type LLMUsage struct {
	Model            string
	InputTokens      int64
	OutputTokens     int64
	CacheReadTokens  int64
	CacheWriteTokens int64
}

// StepRecord is an earlier step and what became of its calls.
type StepRecord struct {
	Text    string
	Calls   []Call
	Results []Outcome // one per call, same order
}

// Outcome is what became of one proposed call.
type Outcome struct {
	// Status is the proposal's final status: executed, failed, rejected or
	// expired (store.Proposal*).
	Status string
	// Result is the tool's answer as JSON (executed, or failed with an
	// answer).
	Result json.RawMessage
	// Error says why the call did not run or failed: the rejection reason,
	// "expired", the sidecar's deny, or the tool's error.
	Error string
}

// PlannerError wraps a planner failure that still consumed model calls, so
// that the orchestrator can record their cost.
type PlannerError struct {
	Err error
	LLM []LLMUsage
}

func (e *PlannerError) Error() string { return e.Err.Error() }
func (e *PlannerError) Unwrap() error { return e.Err }
