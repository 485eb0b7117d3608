// Package orchestrator is M1's companion service: it turns a goal into
// proposed tool calls through a Planner (Claude, or a scripted plan), keeps
// the proposals until an operator approves or rejects them (or they
// expire), dispatches approved calls to their tools with the approval
// token, so that the tool pod's m1-authz sidecar lets exactly that call
// through once, and records runs, results and LLM cost in the store.
package orchestrator
