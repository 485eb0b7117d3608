package storetest

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// testInsights checks store.Insights: decided proposals newest first, and
// LLM costs by UTC day.
func testInsights(t *testing.T, b Backend) {
	s, r := openRecords(t, b)
	in, ok := s.(store.Insights)
	if !ok {
		t.Fatalf("%T does not implement store.Insights", s)
	}
	ctx := context.Background()
	createRuns(t, r, newRun("run-i", "agent-i", base))
	var ps []store.Proposal
	for i := range 5 {
		ps = append(ps, newProposal(fmt.Sprintf("p-%d", i), "run-i", "agent-i", base.Add(time.Duration(i)*time.Minute)))
	}
	outside := newProposal("p-outside", "", "agent-j", base.Add(time.Minute)) // no run
	createProposals(t, r, append(ps, outside)...)
	decide := func(id, status, approver string, after time.Duration, created time.Time) {
		t.Helper()
		if _, err := r.UpdateProposal(ctx, id, store.ProposalPending, store.ProposalUpdate{Status: status, Approver: approver,
			DecidedAt: created.Add(after), UpdatedAt: created.Add(after)}); err != nil {
			t.Fatalf("UpdateProposal(%s) = %v", id, err)
		}
	}
	decide("p-0", store.ProposalApproved, "alice", 1500*time.Millisecond, ps[0].CreatedAt)
	decide("p-1", store.ProposalRejected, "", time.Minute, ps[1].CreatedAt)
	decide("p-3", store.ProposalApproved, "bob", 10*time.Second, ps[3].CreatedAt)
	decide("p-outside", store.ProposalApproved, "alice", time.Second, outside.CreatedAt)
	// p-2 and p-4 stay pending.

	got, err := in.ProposalDecisions(ctx, base.Add(time.Minute), 0)
	if err != nil {
		t.Fatalf("ProposalDecisions = %v", err)
	}
	want := []store.ProposalDecision{
		{ID: "p-3", RunID: "run-i", Agent: "agent-i", Tool: "write_file", ArgsSHA256: ps[3].ArgsSHA256, Risk: "high",
			Status: store.ProposalApproved, Approver: "bob", CreatedAt: us(ps[3].CreatedAt), DecidedAt: us(ps[3].CreatedAt.Add(10 * time.Second))},
		{ID: "p-outside", Agent: "agent-j", Tool: "write_file", ArgsSHA256: outside.ArgsSHA256, Risk: "high",
			Status: store.ProposalApproved, Approver: "alice", CreatedAt: us(outside.CreatedAt), DecidedAt: us(outside.CreatedAt.Add(time.Second))},
		{ID: "p-1", RunID: "run-i", Agent: "agent-i", Tool: "write_file", ArgsSHA256: ps[1].ArgsSHA256, Risk: "high",
			Status: store.ProposalRejected, CreatedAt: us(ps[1].CreatedAt), DecidedAt: us(ps[1].CreatedAt.Add(time.Minute))},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ProposalDecisions(since p-1) =\n%+v\nwant (newest first, p-0 before since, pending left out)\n%+v", got, want)
	}
	if got, err := in.ProposalDecisions(ctx, time.Time{}, 2); err != nil || len(got) != 2 || got[0].ID != "p-3" {
		t.Errorf("ProposalDecisions(limit 2) = %+v, %v; want p-3 and one more", got, err)
	}

	day := func(d int) time.Time { return time.Date(2026, 3, d, 23, 59, 59, 0, time.UTC) }
	for i, c := range []struct {
		at    time.Time
		agent string
		cost  float64
	}{
		{day(1), "agent-i", 1}, {day(1).Add(-time.Hour), "agent-i", 2}, {day(2), "agent-i", 4},
		{day(2).Add(2 * time.Second), "agent-i", 8}, // 3 March, 00:00:01 UTC
		{day(2), "Agent-I", 16},
	} {
		if _, err := r.RecordLLMCall(ctx, store.LLMCall{ID: fmt.Sprintf("llm-i-%d", i), RunID: "run-i", Agent: c.agent, Model: "sonnet",
			Usage: store.Usage{InputTokens: 10, CostUSD: c.cost}, CreatedAt: c.at}); err != nil {
			t.Fatalf("RecordLLMCall = %v", err)
		}
	}
	costs, err := in.DailyCosts(ctx, day(1).Add(-30*time.Minute))
	if err != nil {
		t.Fatalf("DailyCosts = %v", err)
	}
	row := func(d, agent string, calls int64, cost float64) store.DailyCost {
		return store.DailyCost{Day: d, Agent: agent, Model: "sonnet", Calls: calls, Usage: store.Usage{InputTokens: 10 * calls, CostUSD: cost}}
	}
	wantCosts := []store.DailyCost{
		row("2026-03-01", "agent-i", 1, 1), // the call an hour earlier is before since
		row("2026-03-02", "Agent-I", 1, 16),
		row("2026-03-02", "agent-i", 1, 4),
		row("2026-03-03", "agent-i", 1, 8),
	}
	if !reflect.DeepEqual(costs, wantCosts) {
		t.Errorf("DailyCosts =\n%+v\nwant\n%+v", costs, wantCosts)
	}
}
