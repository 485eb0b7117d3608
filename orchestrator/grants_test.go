package orchestrator_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/orchestrator"
)

// grantToken signs a grant for agent-7 of tools, as m1 grant would.
func (f *fixture) grantToken(t *testing.T, maxUses int, mod func(*approval.Claims), tools ...string) string {
	t.Helper()
	c := approval.Claims{
		Issuer: "m1-cli", Subject: "agent-7", Audience: []string{"tools"}, Actor: "bob",
		Kind: approval.KindGrant, Tools: tools, MaxUses: maxUses, Expiry: time.Now().Add(time.Minute),
	}
	if mod != nil {
		mod(&c)
	}
	tok, err := approval.Mint(f.key, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// steps proposes each step's calls in turn, then finishes.
func steps(calls ...[]orchestrator.Call) orchestrator.Planner {
	return planFunc(func(_ context.Context, s orchestrator.Session) (orchestrator.Step, error) {
		if len(s.History) >= len(calls) {
			return orchestrator.Step{Done: true}, nil
		}
		return orchestrator.Step{Calls: calls[len(s.History)]}, nil
	})
}

func call(tool, args string) orchestrator.Call {
	return orchestrator.Call{Tool: tool, Args: json.RawMessage(args)}
}

// waitRun waits for run id to reach status.
func waitRun(t *testing.T, f *fixture, id, status string) {
	t.Helper()
	await(t, "run "+status, func() (store.Run, error) { return f.rec.Run(context.Background(), id) },
		func(r store.Run) bool { return r.Status == status })
}

// waitProposal waits for proposal id to reach status, and returns it.
func waitProposal(t *testing.T, f *fixture, id, status string) store.Proposal {
	t.Helper()
	return await(t, "proposal "+status, func() (store.Proposal, error) { return f.rec.Proposal(context.Background(), id) },
		func(p store.Proposal) bool { return p.Status == status })
}

// onePending waits for run id to have one pending proposal, and returns it.
func onePending(t *testing.T, f *fixture, id string) store.Proposal {
	t.Helper()
	ps := await(t, "one pending proposal", func() ([]store.Proposal, error) {
		return f.rec.Proposals(context.Background(), store.ProposalFilter{RunID: id, Status: store.ProposalPending})
	}, func(ps []store.Proposal) bool { return len(ps) == 1 })
	return ps[0]
}

// await polls get until done holds of what it returns, and returns that.
func await[T any](t *testing.T, what string, get func() (T, error), done func(T) bool) T {
	t.Helper()
	var v T
	testenv.Eventually(t, 5*time.Second, what, func() bool {
		v, _ = get()
		return done(v)
	})
	return v
}

// TestGrantedRun: a run given a grant has the calls the grant covers
// approved with it and dispatched without an operator, the grant sent as
// the token; a call it does not cover waits for an operator.
func TestGrantedRun(t *testing.T) {
	f := newFixture(t, steps(
		[]orchestrator.Call{call("read_file", `{"path":"a"}`), call("write_file", `{"path":"a","content":"b"}`)},
		[]orchestrator.Call{call("run_command", `{"cmd":"ls"}`)},
	), nil)
	ctx := context.Background()
	grant := f.grantToken(t, 10, nil, "read_file", "write*")
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{" " + grant + "\n"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range d.Proposals {
		p = waitProposal(t, f, p.ID, store.ProposalExecuted)
		if p.Approver != "grant:bob" || p.ApprovalJTI == "" {
			t.Errorf("granted proposal %s: approver %q, jti %q; want grant:bob and the grant's jti", p.Tool, p.Approver, p.ApprovalJTI)
		}
		// The result event follows the proposal's last update.
		testenv.Eventually(t, 5*time.Second, "the audit of "+p.Tool, func() bool {
			return strings.Join(f.audit.kinds(p.ID), " ") == "proposal:pending approval:approved result:succeeded"
		})
	}
	if got := f.audit.reasons(orchestrator.KindApproval); got != "granted granted" {
		t.Errorf("approval events' reasons = %q, want granted twice", got)
	}
	f.tool.mu.Lock()
	tokens := append([]string(nil), f.tool.tokens...)
	f.tool.mu.Unlock()
	if len(tokens) != 2 || tokens[0] != grant || tokens[1] != grant {
		t.Fatalf("the tool got %d calls; want 2, each with the grant (trimmed)", len(tokens))
	}

	// run_command is not covered: it waits for an operator.
	cmd := onePending(t, f, d.ID)
	time.Sleep(50 * time.Millisecond)
	if p, _ := f.rec.Proposal(ctx, cmd.ID); p.Tool != "run_command" || p.Status != store.ProposalPending {
		t.Fatalf("uncovered proposal = %s %s, want run_command pending", p.Tool, p.Status)
	}
	if dec, err := f.svc.Approve(ctx, cmd.ID, f.token(t, cmd, nil)); err != nil || dec.Proposal.Status != store.ProposalExecuted {
		t.Fatalf("Approve(run_command) = %+v, %v", dec.Proposal, err)
	}
	waitRun(t, f, d.ID, store.RunCompleted)
}

// TestGrantsRefused: a run whose grants cannot serve it is refused before
// it exists, with the check's code.
func TestGrantsRefused(t *testing.T) {
	f := newFixture(t, &twoSteps{}, nil)
	forged, err := approval.GenerateKey(approval.AlgEdDSA, "k1")
	if err != nil {
		t.Fatal(err)
	}
	good := f.grantToken(t, 3, nil, "write_file")
	for _, tc := range []struct {
		name, token, code string
	}{
		{"an approval", f.token(t, store.Proposal{Agent: "agent-7", Tool: "write_file", ArgsSHA256: strings.Repeat("0", 64), ID: "prop_x"}, nil), "token_invalid"},
		{"another agent's grant", f.grantToken(t, 3, func(c *approval.Claims) { c.Subject = "agent-8" }, "write_file"), "subject_mismatch"},
		{"a grant naming a run", f.grantToken(t, 3, func(c *approval.Claims) { c.RunID = "run_x" }, "write_file"), "run_mismatch"},
		{"a grant naming a proposal", f.grantToken(t, 3, func(c *approval.Claims) { c.ProposalID = "prop_x" }, "write_file"), "proposal_mismatch"},
		{"expired", f.grantToken(t, 3, func(c *approval.Claims) {
			c.IssuedAt, c.Expiry = time.Now().Add(-time.Hour), time.Now().Add(-time.Minute)
		}, "write_file"), "token_expired"},
		{"other audience", f.grantToken(t, 3, func(c *approval.Claims) { c.Audience = []string{"billing"} }, "write_file"), "audience_mismatch"},
		{"forged", func() string {
			tok, err := approval.Mint(forged, approval.Claims{Issuer: "m1-cli", Subject: "agent-7", Audience: []string{"tools"}, ID: "j",
				Kind: approval.KindGrant, Tools: []string{"write_file"}, MaxUses: 3, Expiry: time.Now().Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}(), "token_invalid"},
	} {
		_, err := f.svc.StartRun(context.Background(), orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{good, tc.token}})
		if !isTokenError(err, tc.code) || !strings.Contains(err.Error(), "grants[1]") {
			t.Errorf("StartRun(%s) = %v, want %s naming grants[1]", tc.name, err, tc.code)
		}
	}
	if runs, _ := f.rec.Runs(context.Background(), store.RunFilter{}); len(runs) != 0 {
		t.Fatalf("runs after refusals: %d, want none", len(runs))
	}
}

// TestGrantRefusedBySidecar: when the sidecar refuses the grant (here
// grant_exhausted: its uses were spent elsewhere), the tool did not run,
// the proposal waits for an operator and the grant is not used again, by
// this run or another holding it.
func TestGrantRefusedBySidecar(t *testing.T) {
	f := newFixture(t, steps(
		[]orchestrator.Call{call("write_file", `{"path":"a","content":"1"}`)},
		[]orchestrator.Call{call("write_file", `{"path":"a","content":"2"}`)},
	), nil)
	f.tool.denyCode = "grant_exhausted"
	ctx := context.Background()
	grant := f.grantToken(t, 10, nil, "write_file")
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{grant}})
	if err != nil {
		t.Fatal(err)
	}
	p := waitProposal(t, f, d.Proposals[0].ID, store.ProposalPending)
	testenv.Eventually(t, 5*time.Second, "the refused dispatch recorded", func() bool {
		return strings.Join(f.audit.kinds(p.ID), " ") == "proposal:pending approval:approved result:denied"
	})
	p, _ = f.rec.Proposal(ctx, p.ID)
	if !strings.Contains(p.Reason, "grant_exhausted") || !strings.Contains(p.Reason, "operator") {
		t.Fatalf("proposal reason = %q, want the sidecar's code and that it waits for an operator", p.Reason)
	}
	if r, _ := f.rec.Run(ctx, d.ID); r.Status != store.RunRunning {
		t.Fatalf("run = %s, want running (waiting for an operator)", r.Status)
	}

	// Another run given the same grant does not use it again.
	d2, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{grant}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if p2, _ := f.rec.Proposal(ctx, d2.Proposals[0].ID); p2.Status != store.ProposalPending || p2.ApprovalJTI != "" {
		t.Fatalf("second run's proposal = %s (jti %q), want pending and never granted", p2.Status, p2.ApprovalJTI)
	}

	// The operator approves by hand; the next step is not granted either.
	f.tool.mu.Lock()
	f.tool.denyCode = ""
	f.tool.mu.Unlock()
	if dec, err := f.svc.Approve(ctx, p.ID, f.token(t, p, nil)); err != nil || dec.Proposal.Status != store.ProposalExecuted {
		t.Fatalf("Approve = %+v, %v; want executed", dec.Proposal, err)
	}
	next := onePending(t, f, d.ID)
	if next.Step != 2 || next.ApprovalJTI != "" {
		t.Fatalf("step 2 proposal = %+v, want pending, not granted", next)
	}
}

// TestGrantUsesCounted: the orchestrator dispatches at most m1.max_uses
// calls under a grant, counted over every run holding it; past that, and
// past its expiry, a call waits for an operator. A sidecar deny that is
// about the call, not the grant, fails the call as usual.
func TestGrantUsesCounted(t *testing.T) {
	f := newFixture(t, steps([]orchestrator.Call{
		call("write_file", `{"path":"a","content":"1"}`), call("write_file", `{"path":"a","content":"2"}`),
	}), nil)
	ctx := context.Background()
	grant := f.grantToken(t, 3, nil, "write_file")
	d1, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{grant, grant}})
	if err != nil {
		t.Fatal(err)
	}
	waitRun(t, f, d1.ID, store.RunCompleted)
	d2, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{grant}})
	if err != nil {
		t.Fatal(err)
	}
	var granted, pending int
	testenv.Eventually(t, 5*time.Second, "one call granted, one pending", func() bool {
		granted, pending = 0, 0
		for _, p := range d2.Proposals {
			switch p, _ := f.rec.Proposal(ctx, p.ID); p.Status {
			case store.ProposalExecuted:
				granted++
			case store.ProposalPending:
				pending++
			}
		}
		return granted == 1 && pending == 1
	})
	f.tool.mu.Lock()
	n := len(f.tool.tokens)
	f.tool.mu.Unlock()
	if n != 3 {
		t.Fatalf("the tool ran %d times under a grant of 3 uses", n)
	}

	// Past its expiry (by the orchestrator's clock, without the sidecars'
	// leeway) a grant is not used.
	f3 := newFixture(t, steps([]orchestrator.Call{call("run_command", `{"cmd":"ls"}`)}, []orchestrator.Call{call("write_file", `{"path":"a"}`)}), nil)
	short := f3.grantToken(t, 5, func(c *approval.Claims) { c.Expiry = f3.clock().Add(2 * time.Second) }, "write_file")
	d3, err := f3.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{short}})
	if err != nil {
		t.Fatal(err)
	}
	f3.advance(3 * time.Second)
	cmd := d3.Proposals[0]
	if dec, err := f3.svc.Approve(ctx, cmd.ID, f3.token(t, cmd, func(c *approval.Claims) { c.IssuedAt, c.Expiry = f3.clock(), f3.clock().Add(time.Minute) })); err != nil || dec.Proposal.Status != store.ProposalExecuted {
		t.Fatalf("Approve(run_command) = %+v, %v", dec.Proposal, err)
	}
	testenv.Eventually(t, 5*time.Second, "step 2 pending, not granted", func() bool {
		ps, _ := f3.rec.Proposals(ctx, store.ProposalFilter{RunID: d3.ID})
		return len(ps) == 2 && ps[1].Status == store.ProposalPending
	})
	time.Sleep(50 * time.Millisecond)
	if ps, _ := f3.rec.Proposals(ctx, store.ProposalFilter{RunID: d3.ID}); ps[1].Status != store.ProposalPending || ps[1].ApprovalJTI != "" {
		t.Fatalf("step 2 after the grant expired = %s (jti %q), want pending", ps[1].Status, ps[1].ApprovalJTI)
	}

	// A policy deny is about the call: it fails, and the grant stays usable.
	f4 := newFixture(t, steps([]orchestrator.Call{call("write_file", `{"path":"a"}`)}, []orchestrator.Call{call("write_file", `{"path":"b"}`)}), nil)
	f4.tool.denyCode = "policy_denied"
	d4, err := f4.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{f4.grantToken(t, 5, nil, "write_file")}})
	if err != nil {
		t.Fatal(err)
	}
	waitProposal(t, f4, d4.Proposals[0].ID, store.ProposalFailed)
	testenv.Eventually(t, 5*time.Second, "step 2 granted too", func() bool {
		ps, _ := f4.rec.Proposals(ctx, store.ProposalFilter{RunID: d4.ID})
		return len(ps) == 2 && ps[1].Status == store.ProposalFailed && ps[1].ApprovalJTI != ""
	})
	waitRun(t, f4, d4.ID, store.RunCompleted)
}

// TestGrantEdges: a step with more calls than the grant's uses; a sidecar
// state_reset of a grant; a tool's own error shaped like a deny; two
// different grants that share a jti.
func TestGrantEdges(t *testing.T) {
	ctx := context.Background()
	two := []orchestrator.Call{call("write_file", `{"path":"a","content":"1"}`), call("write_file", `{"path":"a","content":"2"}`)}

	t.Run("more calls than uses", func(t *testing.T) {
		f := newFixture(t, steps(two), nil)
		d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{f.grantToken(t, 1, nil, "write_file")}})
		if err != nil {
			t.Fatal(err)
		}
		waitProposal(t, f, d.Proposals[0].ID, store.ProposalExecuted)
		if p, _ := f.rec.Proposal(ctx, d.Proposals[1].ID); p.Status != store.ProposalPending || p.ApprovalJTI != "" {
			t.Fatalf("the second call under a grant of 1 use = %s (jti %q), want pending", p.Status, p.ApprovalJTI)
		}
	})

	t.Run("state_reset", func(t *testing.T) {
		f := newFixture(t, steps(two), nil)
		f.tool.resets, f.tool.retryAfter = 2, "5"
		d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{f.grantToken(t, 5, nil, "write_file")}})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range d.Proposals {
			testenv.Eventually(t, 5*time.Second, "the refused dispatch of "+p.ID, func() bool {
				return strings.Join(f.audit.kinds(p.ID), " ") == "proposal:pending approval:approved result:denied"
			})
			got, _ := f.rec.Proposal(ctx, p.ID)
			if got.Status != store.ProposalPending || !strings.Contains(got.Reason, "state_reset") {
				t.Fatalf("proposal after state_reset = %s %q, want pending", got.Status, got.Reason)
			}
		}
		// Both calls were sent before either was refused, or the second was
		// never granted: the grant is spent once the first refusal arrives.
		if n := len(f.tool.resetTokens); n < 1 || n > 2 {
			t.Fatalf("%d calls refused, want 1 or 2", n)
		}
		var detail string
		f.audit.mu.Lock()
		for _, e := range f.audit.ev {
			if e.Kind == orchestrator.KindResult {
				detail = e.Detail
			}
		}
		f.audit.mu.Unlock()
		if !strings.Contains(detail, `"proposal_status":"pending"`) || !strings.Contains(detail, `"approve_again_after"`) {
			t.Fatalf("result detail = %s, want the proposal pending and when to approve again", detail)
		}
		// An operator's approval issued after the time the sidecar named
		// is dispatched.
		p := d.Proposals[0]
		f.advance(6 * time.Second)
		tok := f.token(t, p, func(c *approval.Claims) { c.IssuedAt, c.Expiry = f.clock(), f.clock().Add(time.Minute) })
		if dec, err := f.svc.Approve(ctx, p.ID, tok); err != nil || dec.Proposal.Status != store.ProposalExecuted {
			t.Fatalf("Approve after state_reset = %+v, %v", dec.Proposal, err)
		}
	})

	t.Run("a tool's error shaped like a deny", func(t *testing.T) {
		f := newFixture(t, steps(two[:1]), nil)
		f.tool.denyCode, f.tool.forgedDeny = "grant_exhausted", true
		d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{f.grantToken(t, 5, nil, "write_file")}})
		if err != nil {
			t.Fatal(err)
		}
		p := waitProposal(t, f, d.Proposals[0].ID, store.ProposalFailed)
		calls, _ := f.rec.ToolCalls(ctx, d.ID)
		if len(calls) != 1 || calls[0].Status != store.CallFailed {
			t.Fatalf("tool calls = %+v, want one failed (the tool answered; no sidecar deny)", calls)
		}
		if strings.Contains(p.Reason, "operator") {
			t.Fatalf("proposal reason = %q: a tool's answer was taken for the sidecar refusing the grant", p.Reason)
		}
	})

	t.Run("two grants, one jti", func(t *testing.T) {
		f := newFixture(t, steps(two[:1]), nil)
		same := func(c *approval.Claims) { c.ID = "jti-shared" }
		reads := f.grantToken(t, 5, same, "read_file")
		writes := f.grantToken(t, 5, same, "write_file")
		d1, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{reads}})
		if err != nil {
			t.Fatal(err)
		}
		d2, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7", Grants: []string{writes}})
		if err != nil {
			t.Fatal(err)
		}
		waitProposal(t, f, d2.Proposals[0].ID, store.ProposalExecuted)
		if p, _ := f.rec.Proposal(ctx, d1.Proposals[0].ID); p.Status != store.ProposalPending {
			t.Fatalf("run 1's write_file under a read_file grant = %s, want pending", p.Status)
		}
		f.tool.mu.Lock()
		defer f.tool.mu.Unlock()
		if len(f.tool.tokens) != 1 || f.tool.tokens[0] != writes {
			t.Fatalf("the tool got %d tokens; want run 2's own grant once", len(f.tool.tokens))
		}
	})
}
