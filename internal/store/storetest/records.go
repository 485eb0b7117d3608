package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// RunRecords runs the store.Records suite: the Stores b opens must
// implement store.Records as well as store.Store.
func RunRecords(t *testing.T, b Backend) {
	if b.Open == nil {
		t.Fatal("storetest.RunRecords: Backend.Open is required")
	}
	t.Run("records: run round trip and update", func(t *testing.T) { testRunRoundTrip(t, b) })
	t.Run("records: unknown ids are ErrNotFound", func(t *testing.T) { testNotFound(t, b) })
	t.Run("records: runs filter, order and limit", func(t *testing.T) { testRunsFilter(t, b) })
	t.Run("records: proposals round-trip args byte for byte", func(t *testing.T) { testProposalRoundTrip(t, b) })
	t.Run("records: create proposals is all or none", func(t *testing.T) { testProposalsAtomic(t, b) })
	t.Run("records: proposals filter and order", func(t *testing.T) { testProposalsFilter(t, b) })
	t.Run("records: update proposal", func(t *testing.T) { testUpdateProposal(t, b) })
	t.Run("records: concurrent update proposal has one winner", func(t *testing.T) { testUpdateProposalRace(t, b) })
	t.Run("records: expire proposals", func(t *testing.T) { testExpire(t, b) })
	t.Run("records: concurrent expire proposals partition", func(t *testing.T) { testExpireRace(t, b) })
	t.Run("records: tool calls", func(t *testing.T) { testToolCalls(t, b) })
	t.Run("records: llm calls add up in the run", func(t *testing.T) { testLLMCalls(t, b) })
	t.Run("records: concurrent llm calls add up", func(t *testing.T) { testLLMCallsRace(t, b) })
	t.Run("records: costs by agent and model", func(t *testing.T) { testCosts(t, b) })
	t.Run("records: pruning runs takes their records along", func(t *testing.T) { testPruneRecords(t, b) })
	runGateway(t, b)
}

// openRecords opens t's database as a store.Records.
func openRecords(t *testing.T, b Backend) (store.Store, store.Records) {
	t.Helper()
	s := b.Open(t)
	r, ok := s.(store.Records)
	if !ok {
		t.Fatalf("%T does not implement store.Records", s)
	}
	return s, r
}

// us is t as a store keeps it: UTC, to the microsecond.
func us(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Microsecond)
}

// sameTimes reports the first of got that does not equal us(want), or is
// not UTC.
func sameTimes(name []string, got, want []time.Time) string {
	for i := range got {
		w := us(want[i])
		if !got[i].Equal(w) || (!got[i].IsZero() && got[i].Location() != time.UTC) {
			return fmt.Sprintf("%s = %v, want %v", name[i], got[i], w)
		}
	}
	return ""
}

// diffRun reports how got (read back) differs from want (stored).
func diffRun(got, want store.Run) string {
	if d := sameTimes([]string{"CreatedAt", "UpdatedAt", "FinishedAt"},
		[]time.Time{got.CreatedAt, got.UpdatedAt, got.FinishedAt},
		[]time.Time{want.CreatedAt, want.UpdatedAt, want.FinishedAt}); d != "" {
		return d
	}
	got.CreatedAt, got.UpdatedAt, got.FinishedAt = time.Time{}, time.Time{}, time.Time{}
	want.CreatedAt, want.UpdatedAt, want.FinishedAt = time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		return fmt.Sprintf("got  %+v\nwant %+v", got, want)
	}
	return ""
}

func diffProposal(got, want store.Proposal) string {
	if d := sameTimes([]string{"CreatedAt", "ExpiresAt", "UpdatedAt", "DecidedAt", "ClaimedAt"},
		[]time.Time{got.CreatedAt, got.ExpiresAt, got.UpdatedAt, got.DecidedAt, got.ClaimedAt},
		[]time.Time{want.CreatedAt, want.ExpiresAt, want.UpdatedAt, want.DecidedAt, want.ClaimedAt}); d != "" {
		return d
	}
	if string(got.Args) != string(want.Args) || (got.Args == nil) != (want.Args == nil) {
		return fmt.Sprintf("Args = %q, want byte for byte %q", got.Args, want.Args)
	}
	got.CreatedAt, got.ExpiresAt, got.UpdatedAt, got.DecidedAt, got.ClaimedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	want.CreatedAt, want.ExpiresAt, want.UpdatedAt, want.DecidedAt, want.ClaimedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	got.Args, want.Args = nil, nil
	if !reflect.DeepEqual(got, want) {
		return fmt.Sprintf("got  %+v\nwant %+v", got, want)
	}
	return ""
}

func diffToolCall(got, want store.ToolCall) string {
	if d := sameTimes([]string{"CreatedAt", "UpdatedAt"},
		[]time.Time{got.CreatedAt, got.UpdatedAt}, []time.Time{want.CreatedAt, want.UpdatedAt}); d != "" {
		return d
	}
	for _, f := range []struct {
		name      string
		got, want json.RawMessage
	}{{"Args", got.Args, want.Args}, {"Result", got.Result, want.Result}} {
		if string(f.got) != string(f.want) || (f.got == nil) != (len(f.want) == 0) {
			return fmt.Sprintf("%s = %q, want byte for byte %q", f.name, f.got, f.want)
		}
	}
	got.CreatedAt, got.UpdatedAt, got.Args, got.Result = time.Time{}, time.Time{}, nil, nil
	want.CreatedAt, want.UpdatedAt, want.Args, want.Result = time.Time{}, time.Time{}, nil, nil
	if !reflect.DeepEqual(got, want) {
		return fmt.Sprintf("got  %+v\nwant %+v", got, want)
	}
	return ""
}

// odd is a time with nanoseconds (truncated when stored) in another zone.
func odd(d time.Duration) time.Time {
	return base.Add(d + 987654321*time.Nanosecond).In(time.FixedZone("X", -5*3600))
}

func newRun(id, agent string, created time.Time) store.Run {
	return store.Run{ID: id, Agent: agent, Goal: "goal of " + id, Status: store.RunRunning,
		CreatedAt: created, UpdatedAt: created}
}

func createRuns(t *testing.T, r store.Records, runs ...store.Run) {
	t.Helper()
	for _, run := range runs {
		if err := r.CreateRun(context.Background(), run); err != nil {
			t.Fatalf("CreateRun(%s) = %v", run.ID, err)
		}
	}
}

func newProposal(id, runID, agent string, created time.Time) store.Proposal {
	return store.Proposal{ID: id, RunID: runID, Agent: agent, Step: 1, Tool: "write_file",
		Args: json.RawMessage(`{"path":"/tmp/` + id + `"}`), ArgsSHA256: fmt.Sprintf("%064d", 7), Risk: "high",
		Reasoning: "because", Status: store.ProposalPending, CreatedAt: created,
		ExpiresAt: created.Add(time.Hour), UpdatedAt: created}
}

func createProposals(t *testing.T, r store.Records, ps ...store.Proposal) {
	t.Helper()
	if err := r.CreateProposals(context.Background(), ps); err != nil {
		t.Fatalf("CreateProposals(%d) = %v", len(ps), err)
	}
}

func getRun(t *testing.T, r store.Records, id string) store.Run {
	t.Helper()
	run, err := r.Run(context.Background(), id)
	if err != nil {
		t.Fatalf("Run(%s) = %v", id, err)
	}
	return run
}

func getProposal(t *testing.T, r store.Records, id string) store.Proposal {
	t.Helper()
	p, err := r.Proposal(context.Background(), id)
	if err != nil {
		t.Fatalf("Proposal(%s) = %v", id, err)
	}
	return p
}

func runIDs(rs []store.Run) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

func proposalIDs(ps []store.Proposal) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out
}

func testRunRoundTrip(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	want := store.Run{ID: "run-1", Agent: "spiffe://m1/agent-a", Goal: "tidy /tmp — «ünïcode»", Model: "claude-x",
		Status: store.RunRunning, BudgetUSD: 2.5, OverAlert: true,
		Usage:     store.Usage{InputTokens: 10, OutputTokens: 20, CacheReadTokens: 30, CacheWriteTokens: 40, CostUSD: 0.1},
		CreatedAt: odd(0), UpdatedAt: odd(time.Second)}
	createRuns(t, r, want)
	if d := diffRun(getRun(t, r, "run-1"), want); d != "" {
		t.Fatalf("Run after CreateRun: %s", d)
	}
	if err := r.CreateRun(ctx, want); err == nil {
		t.Fatal("CreateRun(an existing id) = nil, want an error")
	}
	if err := r.CreateRun(ctx, store.Run{Agent: "a", CreatedAt: base, UpdatedAt: base}); err == nil {
		t.Fatal("CreateRun(no id) = nil, want an error")
	}

	// UpdateRun stores only Status, Error, Model, OverAlert, UpdatedAt, FinishedAt.
	upd := want
	upd.Status, upd.Error, upd.Model, upd.OverAlert = store.RunFailed, "planner: boom", "claude-y", false
	upd.UpdatedAt, upd.FinishedAt = odd(time.Minute), odd(time.Minute)
	ignored := upd
	ignored.Agent, ignored.Goal, ignored.BudgetUSD, ignored.CreatedAt = "other", "other goal", 99, odd(time.Hour)
	ignored.Usage = store.Usage{InputTokens: 1e6, CostUSD: 1e6}
	if err := r.UpdateRun(ctx, ignored); err != nil {
		t.Fatalf("UpdateRun = %v", err)
	}
	if d := diffRun(getRun(t, r, "run-1"), upd); d != "" {
		t.Fatalf("Run after UpdateRun: %s", d)
	}
	upd.FinishedAt, upd.Status = time.Time{}, store.RunRunning // back to NULL
	if err := r.UpdateRun(ctx, upd); err != nil {
		t.Fatalf("UpdateRun = %v", err)
	}
	if d := diffRun(getRun(t, r, "run-1"), upd); d != "" {
		t.Fatalf("Run after UpdateRun(no FinishedAt): %s", d)
	}
}

func testNotFound(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r, newRun("run-1", "agent-a", base))
	createProposals(t, r, newProposal("p-1", "run-1", "agent-a", base))
	_, errRun := r.Run(ctx, "run-none")
	_, errProp := r.Proposal(ctx, "p-none")
	_, errUpdProp := r.UpdateProposal(ctx, "p-none", store.ProposalPending,
		store.ProposalUpdate{Status: store.ProposalApproved})
	_, errLLM := r.RecordLLMCall(ctx, store.LLMCall{ID: "llm-1", RunID: "run-none", Agent: "agent-a", CreatedAt: base})
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"Run", errRun},
		{"UpdateRun", r.UpdateRun(ctx, store.Run{ID: "run-none", Status: store.RunFailed, UpdatedAt: base})},
		{"Proposal", errProp},
		{"UpdateProposal", errUpdProp},
		{"UpdateToolCall", r.UpdateToolCall(ctx, store.ToolCall{ID: "tc-none", Status: store.CallFailed, UpdatedAt: base})},
		{"RecordLLMCall", errLLM},
	} {
		if !errors.Is(tc.err, store.ErrNotFound) {
			t.Errorf("%s(unknown id) = %v, want ErrNotFound", tc.name, tc.err)
		}
	}
	if costs, err := r.Costs(ctx, time.Time{}); err != nil || len(costs) != 0 {
		t.Fatalf("Costs after RecordLLMCall(unknown run) = %v, %v; want none", costs, err)
	}
	if got := getRun(t, r, "run-1"); got.Status != store.RunRunning {
		t.Fatalf("UpdateRun(unknown id) changed run-1: %+v", got)
	}
}

func testRunsFilter(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	// r-0 … r-5, one minute apart; r-3b shares r-3's time (ID breaks the tie).
	var runs []store.Run
	for i := range 6 {
		run := newRun(fmt.Sprintf("r-%d", i), []string{"agent-a", "agent-b"}[i%2], base.Add(time.Duration(i)*time.Minute))
		if i%3 == 2 {
			run.Status = store.RunCompleted
		}
		runs = append(runs, run)
	}
	tie := newRun("r-3b", "agent-b", runs[3].CreatedAt)
	createRuns(t, r, append(runs, tie)...)
	for _, tc := range []struct {
		name string
		f    store.RunFilter
		want []string
	}{
		{"all, newest first", store.RunFilter{}, []string{"r-5", "r-4", "r-3b", "r-3", "r-2", "r-1", "r-0"}},
		{"agent", store.RunFilter{Agent: "agent-a"}, []string{"r-4", "r-2", "r-0"}},
		{"status", store.RunFilter{Status: store.RunCompleted}, []string{"r-5", "r-2"}},
		{"agent and status", store.RunFilter{Agent: "agent-b", Status: store.RunRunning}, []string{"r-3b", "r-3", "r-1"}},
		{"limit", store.RunFilter{Limit: 3}, []string{"r-5", "r-4", "r-3b"}},
		{"limit and agent", store.RunFilter{Agent: "agent-b", Limit: 2}, []string{"r-5", "r-3b"}},
		{"no match", store.RunFilter{Agent: "agent-z"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Runs(ctx, tc.f)
			if err != nil {
				t.Fatalf("Runs(%+v) = %v", tc.f, err)
			}
			if ids := runIDs(got); !slices.Equal(ids, tc.want) && !(len(ids) == 0 && len(tc.want) == 0) {
				t.Fatalf("Runs(%+v) = %v, want %v", tc.f, ids, tc.want)
			}
		})
	}
	all, _ := r.Runs(ctx, store.RunFilter{Agent: "agent-a", Limit: 1})
	if len(all) != 1 || diffRun(all[0], runs[4]) != "" {
		t.Fatalf("Runs(agent-a, limit 1) = %+v, want %+v", all, runs[4])
	}
}

func testProposalRoundTrip(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r, newRun("run-1", "agent-a", base))
	full := store.Proposal{ID: "p-full", RunID: "run-1", Agent: "agent-a", Step: 3, CallID: "toolu_01ABC",
		Tool: "write_file", Args: json.RawMessage("{ \"path\" :\"/tmp/ä €\",\t\"n\":1.50,\n  \"z\":[ ],\"a\":\"\\u00e9\\n\" }"),
		ArgsSHA256: fmt.Sprintf("%064x", 42), Risk: "critical", Reasoning: "it is «needed» — really",
		Status: store.ProposalRejected, Reason: "not today", Approver: "ops@example.com", ApprovalJTI: "jti-1",
		CreatedAt: odd(0), ExpiresAt: odd(time.Hour), UpdatedAt: odd(time.Minute), DecidedAt: odd(time.Minute)}
	bare := store.Proposal{ID: "p-bare", Agent: "agent-b", Tool: "list_dir", Status: store.ProposalPending,
		CreatedAt: odd(time.Second), UpdatedAt: odd(time.Second)} // no run, args, deadline or decision
	createProposals(t, r, full, bare)
	for _, want := range []store.Proposal{full, bare} {
		if d := diffProposal(getProposal(t, r, want.ID), want); d != "" {
			t.Errorf("Proposal(%s): %s", want.ID, d)
		}
	}
	got, err := r.Proposals(ctx, store.ProposalFilter{})
	if err != nil || len(got) != 2 {
		t.Fatalf("Proposals = %v, %v; want 2", proposalIDs(got), err)
	}
	if d := diffProposal(got[0], full); d != "" {
		t.Fatalf("Proposals()[0]: %s", d)
	}
	if err := r.CreateProposals(ctx, nil); err != nil {
		t.Fatalf("CreateProposals(nil) = %v", err)
	}
}

func testProposalsAtomic(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r, newRun("run-1", "agent-a", base))
	createProposals(t, r, newProposal("p-0", "run-1", "agent-a", base))
	for _, tc := range []struct {
		name string
		ps   []store.Proposal
	}{
		{"an existing id", []store.Proposal{newProposal("p-1", "run-1", "agent-a", base), newProposal("p-0", "run-1", "agent-a", base)}},
		{"a repeated id", []store.Proposal{newProposal("p-1", "run-1", "agent-a", base), newProposal("p-1", "run-1", "agent-a", base)}},
		{"an unknown run", []store.Proposal{newProposal("p-1", "run-1", "agent-a", base), newProposal("p-2", "run-none", "agent-a", base)}},
		{"an empty id", []store.Proposal{newProposal("p-1", "run-1", "agent-a", base), newProposal("", "run-1", "agent-a", base)}},
	} {
		if err := r.CreateProposals(ctx, tc.ps); err == nil {
			t.Errorf("CreateProposals(%s) = nil, want an error", tc.name)
		}
	}
	if got, err := r.Proposals(ctx, store.ProposalFilter{}); err != nil || !slices.Equal(proposalIDs(got), []string{"p-0"}) {
		t.Fatalf("after failed batches Proposals = %v, %v; want only p-0", proposalIDs(got), err)
	}
}

func testProposalsFilter(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r, newRun("run-1", "agent-a", base), newRun("run-2", "agent-b", base))
	// Created in this order in time; p-3 and p-3a share a time.
	ps := []store.Proposal{
		newProposal("p-5", "run-1", "agent-a", base.Add(5*time.Second)),
		newProposal("p-1", "run-2", "agent-b", base.Add(1*time.Second)),
		newProposal("p-3a", "", "agent-a", base.Add(3*time.Second)),
		newProposal("p-3", "run-1", "agent-a", base.Add(3*time.Second)),
		newProposal("p-2", "run-1", "agent-a", base.Add(2*time.Second)),
		newProposal("p-4", "run-2", "agent-b", base.Add(4*time.Second)),
	}
	ps[1].Status, ps[4].Status = store.ProposalApproved, store.ProposalExecuted
	createProposals(t, r, ps...)
	for _, tc := range []struct {
		name string
		f    store.ProposalFilter
		want []string
	}{
		{"all, oldest first", store.ProposalFilter{}, []string{"p-1", "p-2", "p-3", "p-3a", "p-4", "p-5"}},
		{"status", store.ProposalFilter{Status: store.ProposalPending}, []string{"p-3", "p-3a", "p-4", "p-5"}},
		{"run", store.ProposalFilter{RunID: "run-1"}, []string{"p-2", "p-3", "p-5"}},
		{"agent", store.ProposalFilter{Agent: "agent-b"}, []string{"p-1", "p-4"}},
		{"agent outside runs too", store.ProposalFilter{Agent: "agent-a"}, []string{"p-2", "p-3", "p-3a", "p-5"}},
		{"run and status", store.ProposalFilter{RunID: "run-2", Status: store.ProposalPending}, []string{"p-4"}},
		{"limit", store.ProposalFilter{Status: store.ProposalPending, Limit: 2}, []string{"p-3", "p-3a"}},
		{"no match", store.ProposalFilter{Status: store.ProposalExpired}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Proposals(ctx, tc.f)
			if err != nil {
				t.Fatalf("Proposals(%+v) = %v", tc.f, err)
			}
			if ids := proposalIDs(got); !slices.Equal(ids, tc.want) && !(len(ids) == 0 && len(tc.want) == 0) {
				t.Fatalf("Proposals(%+v) = %v, want %v", tc.f, ids, tc.want)
			}
		})
	}
}

func testUpdateProposal(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r, newRun("run-1", "agent-a", base))
	p := newProposal("p-1", "run-1", "agent-a", base)
	p.Reason = "kept"
	createProposals(t, r, p)

	// Approve: the given fields change, the empty ones stay.
	decided := odd(time.Minute)
	got, err := r.UpdateProposal(ctx, "p-1", store.ProposalPending, store.ProposalUpdate{
		Status: store.ProposalApproved, Approver: "ops@example.com", ApprovalJTI: "jti-9",
		DecidedAt: decided, UpdatedAt: decided})
	if err != nil {
		t.Fatalf("UpdateProposal(pending → approved) = %v", err)
	}
	want := p
	want.Status, want.Approver, want.ApprovalJTI, want.DecidedAt, want.UpdatedAt =
		store.ProposalApproved, "ops@example.com", "jti-9", decided, decided
	if d := diffProposal(got, want); d != "" {
		t.Fatalf("UpdateProposal returned: %s", d)
	}
	if d := diffProposal(getProposal(t, r, "p-1"), want); d != "" {
		t.Fatalf("Proposal after UpdateProposal: %s", d)
	}

	// From the wrong status: ErrStatus, nothing changes.
	_, err = r.UpdateProposal(ctx, "p-1", store.ProposalPending, store.ProposalUpdate{
		Status: store.ProposalRejected, Reason: "too late", UpdatedAt: odd(time.Hour)})
	if !errors.Is(err, store.ErrStatus) {
		t.Fatalf("UpdateProposal(from pending, is approved) = %v, want ErrStatus", err)
	}
	if errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateProposal(from pending, is approved) = %v, is ErrNotFound too", err)
	}
	if d := diffProposal(getProposal(t, r, "p-1"), want); d != "" {
		t.Fatalf("Proposal after a refused UpdateProposal: %s", d)
	}

	// Executed, then failed: only status and reason change.
	if _, err := r.UpdateProposal(ctx, "p-1", store.ProposalApproved, store.ProposalUpdate{Status: store.ProposalFailed,
		Reason: "tool answered 500"}); err != nil {
		t.Fatalf("UpdateProposal(approved → failed) = %v", err)
	}
	want.Status, want.Reason = store.ProposalFailed, "tool answered 500"
	if d := diffProposal(getProposal(t, r, "p-1"), want); d != "" {
		t.Fatalf("Proposal after UpdateProposal(status and reason only): %s", d)
	}

	if _, err := r.UpdateProposal(ctx, "p-none", store.ProposalPending, store.ProposalUpdate{
		Status: store.ProposalApproved}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateProposal(unknown) = %v, want ErrNotFound", err)
	}
}

func testUpdateProposalRace(t *testing.T, b Backend) {
	_, r1 := openRecords(t, b)
	_, r2 := openRecords(t, b) // as another process would
	ctx := context.Background()
	createRuns(t, r1, newRun("run-1", "agent-a", base))
	const rounds, racers = 5, 8
	for round := range rounds {
		id := fmt.Sprintf("p-%d", round)
		createProposals(t, r1, newProposal(id, "run-1", "agent-a", base))
		var wg sync.WaitGroup
		wins := make(chan string, racers)
		errs := make(chan error, racers)
		for i := range racers {
			r := []store.Records{r1, r2}[i%2]
			wg.Go(func() {
				status := []string{store.ProposalApproved, store.ProposalRejected}[i%2]
				who := fmt.Sprintf("op-%d", i)
				p, err := r.UpdateProposal(ctx, id, store.ProposalPending, store.ProposalUpdate{
					Status: status, Approver: who, DecidedAt: base.Add(time.Minute), UpdatedAt: base.Add(time.Minute)})
				switch {
				case err == nil:
					if p.Approver != who || p.Status != status {
						errs <- fmt.Errorf("racer %d won with %+v", i, p)
					}
					wins <- who
				case !errors.Is(err, store.ErrStatus):
					errs <- fmt.Errorf("racer %d: UpdateProposal = %v, want nil or ErrStatus", i, err)
				}
			})
		}
		wg.Wait()
		close(wins)
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		var winners []string
		for w := range wins {
			winners = append(winners, w)
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: winners %v, want exactly one", round, winners)
		}
		if got := getProposal(t, r2, id); got.Approver != winners[0] {
			t.Fatalf("round %d: stored approver %q, want the winner %q", round, got.Approver, winners[0])
		}
	}
}

func testExpire(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r, newRun("run-1", "agent-a", base))
	now := base.Add(time.Hour)
	mk := func(id, status string, expires time.Time) store.Proposal {
		p := newProposal(id, "run-1", "agent-a", base)
		p.Status, p.ExpiresAt = status, expires
		return p
	}
	ps := []store.Proposal{
		mk("p-past", store.ProposalPending, now.Add(-time.Minute)),
		mk("p-now", store.ProposalPending, now), // not after now: due
		mk("p-future", store.ProposalPending, now.Add(time.Microsecond)),
		mk("p-never", store.ProposalPending, time.Time{}),
		mk("p-approved", store.ProposalApproved, now.Add(-time.Minute)),
		mk("p-rejected", store.ProposalRejected, now.Add(-time.Minute)),
	}
	ps[1].CreatedAt = base.Add(-time.Second) // p-now first in (CreatedAt, ID) order
	createProposals(t, r, ps...)
	expireAt := now.Add(123 * time.Nanosecond) // truncated to now
	got, err := r.ExpireProposals(ctx, expireAt)
	if err != nil {
		t.Fatalf("ExpireProposals = %v", err)
	}
	if ids := proposalIDs(got); !slices.Equal(ids, []string{"p-now", "p-past"}) {
		t.Fatalf("ExpireProposals = %v, want [p-now p-past]", ids)
	}
	for i, p := range got {
		want := ps[1-i]
		want.Status, want.Reason, want.DecidedAt, want.UpdatedAt = store.ProposalExpired, "expired", now, now
		if d := diffProposal(p, want); d != "" {
			t.Errorf("ExpireProposals()[%d]: %s", i, d)
		}
		if d := diffProposal(getProposal(t, r, p.ID), want); d != "" {
			t.Errorf("Proposal(%s) after ExpireProposals: %s", p.ID, d)
		}
	}
	for _, p := range ps[2:] {
		if d := diffProposal(getProposal(t, r, p.ID), p); d != "" {
			t.Errorf("Proposal(%s) after ExpireProposals changed: %s", p.ID, d)
		}
	}
	if got, err := r.ExpireProposals(ctx, expireAt); err != nil || len(got) != 0 {
		t.Fatalf("ExpireProposals again = %v, %v; want none", proposalIDs(got), err)
	}
	if _, err := r.UpdateProposal(ctx, "p-past", store.ProposalPending, store.ProposalUpdate{
		Status: store.ProposalApproved}); !errors.Is(err, store.ErrStatus) {
		t.Fatalf("UpdateProposal(expired, from pending) = %v, want ErrStatus", err)
	}
}

func testExpireRace(t *testing.T, b Backend) {
	_, r1 := openRecords(t, b)
	_, r2 := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r1, newRun("run-1", "agent-a", base))
	const due, callers = 120, 8
	var ps []store.Proposal
	for i := range due + 10 {
		p := newProposal(fmt.Sprintf("p-%03d", i), "run-1", "agent-a", base.Add(time.Duration(i)*time.Millisecond))
		p.ExpiresAt = base.Add(time.Minute)
		if i >= due {
			p.ExpiresAt = base.Add(time.Hour) // not due
		}
		ps = append(ps, p)
	}
	createProposals(t, r1, ps...)
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	for i := range callers {
		r := []store.Records{r1, r2}[i%2]
		wg.Go(func() {
			got, err := r.ExpireProposals(ctx, base.Add(30*time.Minute))
			if err != nil {
				t.Errorf("caller %d: ExpireProposals = %v", i, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, p := range got {
				seen[p.ID]++
			}
		})
	}
	wg.Wait()
	if len(seen) != due {
		t.Fatalf("concurrent ExpireProposals expired %d proposals, want %d", len(seen), due)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("proposal %s returned by %d callers, want 1", id, n)
		}
	}
	if got, _ := r1.Proposals(ctx, store.ProposalFilter{Status: store.ProposalExpired}); len(got) != due {
		t.Fatalf("expired proposals stored = %d, want %d", len(got), due)
	}
}

func testToolCalls(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r, newRun("run-1", "agent-a", base), newRun("run-2", "agent-a", base))
	calls := []store.ToolCall{
		{ID: "tc-b", RunID: "run-1", Agent: "agent-a", Tool: "read_file", Args: json.RawMessage(`{"path": "/tmp/ä",  "x":[1,2]}`),
			ArgsSHA256: fmt.Sprintf("%064x", 1), ProposalID: "p-1", Status: store.CallRunning,
			CreatedAt: odd(2 * time.Second), UpdatedAt: odd(2 * time.Second)},
		{ID: "tc-a", RunID: "run-1", Agent: "agent-a", Tool: "write_file", // sensitive: no args
			ArgsSHA256: fmt.Sprintf("%064x", 2), ProposalID: "p-2", Status: store.CallRunning,
			CreatedAt: odd(2 * time.Second), UpdatedAt: odd(2 * time.Second)},
		{ID: "tc-c", RunID: "run-1", Agent: "agent-a", Tool: "list_dir", Args: json.RawMessage(`{}`),
			ProposalID: "p-3", DecisionID: "dec-3", Status: store.CallDenied, HTTPStatus: 403,
			Error: "policy_denied: outside workspace", CreatedAt: odd(time.Second), UpdatedAt: odd(time.Second)},
		{ID: "tc-d", RunID: "run-2", Agent: "agent-a", Tool: "read_file", Status: store.CallRunning,
			CreatedAt: odd(0), UpdatedAt: odd(0)},
	}
	for _, c := range calls {
		if err := r.CreateToolCall(ctx, c); err != nil {
			t.Fatalf("CreateToolCall(%s) = %v", c.ID, err)
		}
	}
	if err := r.CreateToolCall(ctx, calls[0]); err == nil {
		t.Fatal("CreateToolCall(an existing id) = nil, want an error")
	}
	bad := calls[0]
	bad.ID, bad.RunID = "tc-x", "run-none"
	if err := r.CreateToolCall(ctx, bad); err == nil {
		t.Fatal("CreateToolCall(unknown run) = nil, want an error")
	}
	list := func(runID string, want ...store.ToolCall) {
		t.Helper()
		got, err := r.ToolCalls(ctx, runID)
		if err != nil {
			t.Fatalf("ToolCalls(%s) = %v", runID, err)
		}
		if len(got) != len(want) {
			t.Fatalf("ToolCalls(%s) = %d calls, want %d", runID, len(got), len(want))
		}
		for i := range got {
			if d := diffToolCall(got[i], want[i]); d != "" {
				t.Fatalf("ToolCalls(%s)[%d]: %s", runID, i, d)
			}
		}
	}
	list("run-1", calls[2], calls[1], calls[0]) // (CreatedAt, ID)
	list("run-2", calls[3])
	list("run-none")

	// UpdateToolCall stores the outcome only.
	done := calls[0]
	done.DecisionID, done.Status, done.HTTPStatus, done.DurationUS, done.UpdatedAt =
		"dec-1", store.CallSucceeded, 200, 1234, odd(3*time.Second)
	done.Result = json.RawMessage("{\"content\":[{\"type\":\"text\",\"text\":\"h\u00e9llo\\n\"}] , \"isError\" :false}")
	sent := done
	sent.Agent, sent.Tool, sent.Args, sent.CreatedAt = "other", "other", json.RawMessage(`{"changed":true}`), odd(time.Hour)
	if err := r.UpdateToolCall(ctx, sent); err != nil {
		t.Fatalf("UpdateToolCall = %v", err)
	}
	failed := calls[1]
	failed.Status, failed.Error, failed.HTTPStatus, failed.UpdatedAt = store.CallFailed, "tool answered 502", 502, odd(4*time.Second)
	if err := r.UpdateToolCall(ctx, failed); err != nil {
		t.Fatalf("UpdateToolCall = %v", err)
	}
	list("run-1", calls[2], failed, done)
	done.Result = nil // back to NULL
	if err := r.UpdateToolCall(ctx, done); err != nil {
		t.Fatalf("UpdateToolCall = %v", err)
	}
	list("run-1", calls[2], failed, done)
}

func testLLMCalls(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	run := newRun("run-1", "agent-a", base)
	run.Usage = store.Usage{InputTokens: 1, CostUSD: 0.1}
	createRuns(t, r, run, newRun("run-2", "agent-a", base))
	want := run
	for i, c := range []store.LLMCall{
		{ID: "llm-1", Usage: store.Usage{InputTokens: 1200, OutputTokens: 340, CacheReadTokens: 5000, CacheWriteTokens: 800, CostUSD: 0.2}},
		{ID: "llm-2", Usage: store.Usage{InputTokens: 7, OutputTokens: 1, CostUSD: 0.3}},
		{ID: "llm-3", Usage: store.Usage{OutputTokens: 99, CacheReadTokens: 1, CostUSD: 1e-7}},
		{ID: "llm-4", Usage: store.Usage{InputTokens: 1 << 40, CostUSD: 0}},
	} {
		c.RunID, c.Agent, c.Model, c.CreatedAt = "run-1", "agent-a", "claude-x", odd(time.Duration(i+1)*time.Second)
		got, err := r.RecordLLMCall(ctx, c)
		if err != nil {
			t.Fatalf("RecordLLMCall(%s) = %v", c.ID, err)
		}
		want.Usage = want.Usage.Add(c.Usage) // the same additions, in the same order: exact
		want.UpdatedAt = c.CreatedAt
		if d := diffRun(got, want); d != "" {
			t.Fatalf("RecordLLMCall(%s) returned: %s", c.ID, d)
		}
		if d := diffRun(getRun(t, r, "run-1"), want); d != "" {
			t.Fatalf("Run after RecordLLMCall(%s): %s", c.ID, d)
		}
	}
	// A call older than the run's last update leaves UpdatedAt alone.
	late := store.LLMCall{ID: "llm-5", RunID: "run-1", Agent: "agent-a", Model: "claude-x",
		Usage: store.Usage{InputTokens: 1, CostUSD: 0.5}, CreatedAt: base}
	got, err := r.RecordLLMCall(ctx, late)
	if err != nil {
		t.Fatalf("RecordLLMCall(late) = %v", err)
	}
	want.Usage = want.Usage.Add(late.Usage)
	if d := diffRun(got, want); d != "" {
		t.Fatalf("RecordLLMCall(late) returned: %s", d)
	}
	if _, err := r.RecordLLMCall(ctx, late); err == nil {
		t.Fatal("RecordLLMCall(an existing id) = nil, want an error")
	}
	if d := diffRun(getRun(t, r, "run-1"), want); d != "" {
		t.Fatalf("Run after a refused RecordLLMCall: %s", d)
	}
	if other := getRun(t, r, "run-2"); other.Usage != (store.Usage{}) {
		t.Fatalf("run-2 usage = %+v, want none", other.Usage)
	}
}

func testLLMCallsRace(t *testing.T, b Backend) {
	_, r1 := openRecords(t, b)
	_, r2 := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r1, newRun("run-1", "agent-a", base))
	const workers, calls = 6, 15
	var wg sync.WaitGroup
	for i := range workers {
		r := []store.Records{r1, r2}[i%2]
		wg.Go(func() {
			for j := range calls {
				// Costs in eighths: every sum is exact whatever the order.
				c := store.LLMCall{ID: fmt.Sprintf("llm-%d-%d", i, j), RunID: "run-1", Agent: "agent-a", Model: "m",
					Usage:     store.Usage{InputTokens: 3, OutputTokens: 2, CacheReadTokens: 1, CostUSD: 0.125},
					CreatedAt: base.Add(time.Duration(j) * time.Second)}
				if _, err := r.RecordLLMCall(ctx, c); err != nil {
					t.Errorf("RecordLLMCall(%s) = %v", c.ID, err)
					return
				}
			}
		})
	}
	wg.Wait()
	n := int64(workers * calls)
	want := store.Usage{InputTokens: 3 * n, OutputTokens: 2 * n, CacheReadTokens: n, CostUSD: 0.125 * float64(n)}
	if got := getRun(t, r1, "run-1"); got.Usage != want {
		t.Fatalf("after %d concurrent calls Usage = %+v, want %+v", n, got.Usage, want)
	}
	costs, err := r2.Costs(ctx, time.Time{})
	if err != nil || len(costs) != 1 || costs[0].Calls != n || costs[0].Usage != want {
		t.Fatalf("Costs = %+v, %v; want one row of %d calls, %+v", costs, err, n, want)
	}
}

func testCosts(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	createRuns(t, r, newRun("run-a", "agent-a", base), newRun("run-b", "agent-b", base), newRun("run-B", "Agent-B", base))
	type call struct {
		run, agent, model string
		at                time.Duration
		u                 store.Usage
	}
	u := func(in, out int64, cost float64) store.Usage {
		return store.Usage{InputTokens: in, OutputTokens: out, CacheReadTokens: in / 2, CacheWriteTokens: out / 2, CostUSD: cost}
	}
	for i, c := range []call{
		{"run-a", "agent-a", "sonnet", 0, u(100, 10, 0.25)},
		{"run-a", "agent-a", "haiku", time.Minute, u(200, 20, 0.5)},
		{"run-a", "agent-a", "sonnet", 2 * time.Minute, u(300, 30, 0.125)},
		{"run-b", "agent-b", "sonnet", 3 * time.Minute, u(400, 40, 1)},
		{"run-B", "Agent-B", "sonnet", 4 * time.Minute, u(500, 50, 2)}, // byte order: "Agent-B" < "agent-a"
		{"run-a", "agent-a", "sonnet", 5 * time.Minute, u(600, 60, 4)},
		{"run-a", "agent-a", "", 6 * time.Minute, u(1, 1, 0)}, // a scripted planner's model
	} {
		if _, err := r.RecordLLMCall(ctx, store.LLMCall{ID: fmt.Sprintf("llm-%d", i), RunID: c.run, Agent: c.agent,
			Model: c.model, Usage: c.u, CreatedAt: base.Add(c.at)}); err != nil {
			t.Fatalf("RecordLLMCall(%d) = %v", i, err)
		}
	}
	row := func(agent, model string, calls int64, parts ...store.Usage) store.CostRow {
		var sum store.Usage
		for _, x := range parts {
			sum = sum.Add(x)
		}
		return store.CostRow{Agent: agent, Model: model, Calls: calls, Usage: sum}
	}
	for _, tc := range []struct {
		name  string
		since time.Time
		want  []store.CostRow
	}{
		{"all", time.Time{}, []store.CostRow{
			row("Agent-B", "sonnet", 1, u(500, 50, 2)),
			row("agent-a", "", 1, u(1, 1, 0)),
			row("agent-a", "haiku", 1, u(200, 20, 0.5)),
			row("agent-a", "sonnet", 3, u(100, 10, 0.25), u(300, 30, 0.125), u(600, 60, 4)),
			row("agent-b", "sonnet", 1, u(400, 40, 1)),
		}},
		{"since is inclusive", base.Add(2 * time.Minute), []store.CostRow{
			row("Agent-B", "sonnet", 1, u(500, 50, 2)),
			row("agent-a", "", 1, u(1, 1, 0)),
			row("agent-a", "sonnet", 2, u(300, 30, 0.125), u(600, 60, 4)),
			row("agent-b", "sonnet", 1, u(400, 40, 1)),
		}},
		{"since after everything", base.Add(time.Hour), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Costs(ctx, tc.since)
			if err != nil {
				t.Fatalf("Costs = %v", err)
			}
			if len(got) != len(tc.want) || (len(got) > 0 && !reflect.DeepEqual(got, tc.want)) {
				t.Fatalf("Costs(%s) =\n%+v\nwant\n%+v", tc.name, got, tc.want)
			}
		})
	}
}

func testPruneRecords(t *testing.T, b Backend) {
	s, r := openRecords(t, b)
	ctx := context.Background()
	old, recent := base.Add(-48*time.Hour), base
	createRuns(t, r, newRun("run-old", "agent-a", old), newRun("run-new", "agent-a", recent))
	for _, run := range []struct {
		id string
		at time.Time
	}{{"run-old", old}, {"run-new", recent}} {
		// Children newer than the cutoff: they go with their run all the same.
		at := recent.Add(time.Minute)
		createProposals(t, r, newProposal("p-"+run.id, run.id, "agent-a", at))
		if err := r.CreateToolCall(ctx, store.ToolCall{ID: "tc-" + run.id, RunID: run.id, Agent: "agent-a",
			Tool: "read_file", Status: store.CallSucceeded, CreatedAt: at, UpdatedAt: at}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.RecordLLMCall(ctx, store.LLMCall{ID: "llm-" + run.id, RunID: run.id, Agent: "agent-a",
			Model: "m-" + run.id, Usage: store.Usage{InputTokens: 10, CostUSD: 0.5}, CreatedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.Prune(ctx, recent.Add(-time.Hour), store.PruneRuns)
	if err != nil || n != 1 {
		t.Fatalf("Prune(runs) = %d, %v; want 1", n, err)
	}
	if _, err := r.Run(ctx, "run-old"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Run(pruned) = %v, want ErrNotFound", err)
	}
	if ps, err := r.Proposals(ctx, store.ProposalFilter{}); err != nil || !slices.Equal(proposalIDs(ps), []string{"p-run-new"}) {
		t.Fatalf("Proposals after pruning run-old = %v, %v; want [p-run-new]", proposalIDs(ps), err)
	}
	if tc, err := r.ToolCalls(ctx, "run-old"); err != nil || len(tc) != 0 {
		t.Fatalf("ToolCalls(run-old) after pruning it = %d, %v; want none", len(tc), err)
	}
	costs, err := r.Costs(ctx, time.Time{})
	if err != nil || len(costs) != 1 || costs[0].Model != "m-run-new" {
		t.Fatalf("Costs after pruning run-old = %+v, %v; want only run-new's call", costs, err)
	}
	if got := getRun(t, r, "run-new"); got.Usage.InputTokens != 10 {
		t.Fatalf("run-new after pruning run-old = %+v", got)
	}
}
