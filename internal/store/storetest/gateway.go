package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// runGateway runs the part of the store.Records suite about proposals that
// sidecars file for MCP clients (DESIGN §10): filing, holding, claiming.
func runGateway(t *testing.T, b Backend) {
	t.Run("records: sidecar proposals round-trip their origin", func(t *testing.T) { testSidecarRoundTrip(t, b) })
	t.Run("records: filing is idempotent while pending", func(t *testing.T) { testFileProposal(t, b) })
	t.Run("records: concurrent filings of one call make one proposal", func(t *testing.T) { testFileProposalRace(t, b) })
	t.Run("records: a held approval is claimed once, by its call only", func(t *testing.T) { testClaimApproval(t, b) })
	t.Run("records: concurrent claims have one winner", func(t *testing.T) { testClaimRace(t, b) })
	t.Run("records: held approvals expire and are forgotten", func(t *testing.T) { testExpireHeld(t, b) })
}

const (
	callSHA  = "aa00000000000000000000000000000000000000000000000000000000000001"
	otherSHA = "aa00000000000000000000000000000000000000000000000000000000000002"
)

// sidecarProposal is a pending proposal a sidecar files for principal's call.
func sidecarProposal(id, principal, tool, sum string, created time.Time) store.Proposal {
	return store.Proposal{ID: id, Agent: principal, Tool: tool, Args: []byte(`{"path":"x.txt"}`), ArgsSHA256: sum,
		Risk: "write", Status: store.ProposalPending, CreatedAt: created, UpdatedAt: created,
		ExpiresAt: created.Add(15 * time.Minute), Origin: store.OriginSidecar, Sidecar: "sidecar-1",
		Pod: "tools-7f9c", DecisionID: "dec-" + id}
}

func file(t *testing.T, r store.Records, p store.Proposal) (store.Proposal, bool) {
	t.Helper()
	got, created, err := r.FileProposal(context.Background(), p)
	if err != nil {
		t.Fatalf("FileProposal(%s) = %v", p.ID, err)
	}
	return got, created
}

// hold approves p and holds token for it until exp, as the orchestrator
// does.
func hold(t *testing.T, r store.Records, id, token string, at, exp time.Time) store.Proposal {
	t.Helper()
	p, err := r.UpdateProposal(context.Background(), id, store.ProposalPending, store.ProposalUpdate{
		Status: store.ProposalApproved, Approver: "alice", ApprovalJTI: "jti-" + id, DecidedAt: at, UpdatedAt: at,
		HeldToken: token, ExpiresAt: exp})
	if err != nil {
		t.Fatalf("hold %s: UpdateProposal = %v", id, err)
	}
	if p.HeldToken != "" {
		t.Fatalf("hold %s: UpdateProposal returned the held token", id)
	}
	return p
}

func testSidecarRoundTrip(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	p := sidecarProposal("p-sc", "spiffe://example.org/agent/ide", "write_file", callSHA, odd(0))
	got, created := file(t, r, p)
	if !created {
		t.Fatalf("FileProposal(new) created = false")
	}
	if d := diffProposal(got, p); d != "" {
		t.Fatalf("FileProposal(new): %s", d)
	}
	if d := diffProposal(getProposal(t, r, p.ID), p); d != "" {
		t.Fatalf("Proposal(%s): %s", p.ID, d)
	}
	// CreateProposals stores the origin too, and the filters select by it.
	c := newProposal("p-run", "", "agent-a", odd(time.Second))
	c.Origin, c.Sidecar, c.Pod, c.DecisionID = store.OriginSidecar, "s", "pod", "dec"
	c.Status, c.ClaimedBy, c.ClaimedAt = store.ProposalClaimed, "sidecar-2", odd(time.Minute)
	createProposals(t, r, c, newProposal("p-plain", "", "agent-a", odd(2*time.Second)))
	if d := diffProposal(getProposal(t, r, c.ID), c); d != "" {
		t.Fatalf("Proposal(%s): %s", c.ID, d)
	}
	for _, tc := range []struct {
		name string
		f    store.ProposalFilter
		want []string
	}{
		{"origin", store.ProposalFilter{Origin: store.OriginSidecar}, []string{"p-sc", "p-run"}},
		{"call", store.ProposalFilter{Origin: store.OriginSidecar, Agent: p.Agent, Tool: "write_file", ArgsSHA256: callSHA}, []string{"p-sc"}},
		{"other args", store.ProposalFilter{ArgsSHA256: otherSHA}, nil},
		{"tool", store.ProposalFilter{Tool: "write_file"}, []string{"p-sc", "p-run", "p-plain"}},
	} {
		ps, err := r.Proposals(ctx, tc.f)
		if err != nil || !slices.Equal(proposalIDs(ps), tc.want) {
			t.Errorf("Proposals(%s) = %v, %v; want %v", tc.name, proposalIDs(ps), err, tc.want)
		}
	}
	for _, bad := range []store.Proposal{
		func() store.Proposal { q := p; q.ID = ""; return q }(),
		func() store.Proposal { q := p; q.ID, q.Origin = "q1", store.OriginRun; return q }(),
		func() store.Proposal { q := p; q.ID, q.Status = "q2", store.ProposalApproved; return q }(),
		func() store.Proposal { q := p; q.ID, q.HeldToken = "q3", "tok"; return q }(),
		func() store.Proposal { q := p; q.ID, q.Agent = "q4", ""; return q }(),
	} {
		if _, _, err := r.FileProposal(ctx, bad); err == nil {
			t.Errorf("FileProposal(%+v) = nil error, want a refusal", bad)
		}
	}
}

func testFileProposal(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	const agent = "agent-x"
	first, _ := file(t, r, sidecarProposal("p-1", agent, "write_file", callSHA, base))
	again, created := file(t, r, sidecarProposal("p-2", agent, "write_file", callSHA, base.Add(time.Second)))
	if created || again.ID != first.ID {
		t.Fatalf("FileProposal(same call) = %s, created %v; want p-1, not created", again.ID, created)
	}
	for _, tc := range []struct{ id, agent, tool, sum string }{
		{"p-args", agent, "write_file", otherSHA},
		{"p-tool", agent, "delete_file", callSHA},
		{"p-agent", "agent-y", "write_file", callSHA},
	} {
		if got, created := file(t, r, sidecarProposal(tc.id, tc.agent, tc.tool, tc.sum, base)); !created || got.ID != tc.id {
			t.Errorf("FileProposal(%s) = %s, created %v; want a new proposal", tc.id, got.ID, created)
		}
	}
	// A run's pending proposal of the same call is not a sidecar's.
	createRuns(t, r, newRun("run-1", agent, base))
	rp := newProposal("p-plan", "run-1", agent, base)
	rp.ArgsSHA256 = callSHA
	createProposals(t, r, rp)
	// Once decided (here rejected), the call files anew.
	if _, err := r.UpdateProposal(ctx, "p-1", store.ProposalPending, store.ProposalUpdate{Status: store.ProposalRejected, Reason: "no"}); err != nil {
		t.Fatal(err)
	}
	if got, created := file(t, r, sidecarProposal("p-3", agent, "write_file", callSHA, base.Add(time.Minute))); !created || got.ID != "p-3" {
		t.Fatalf("FileProposal(after rejection) = %s, created %v; want p-3, created", got.ID, created)
	}
	if got, created := file(t, r, sidecarProposal("p-4", agent, "write_file", callSHA, base.Add(time.Minute))); created || got.ID != "p-3" {
		t.Fatalf("FileProposal(again) = %s, created %v; want p-3, not created", got.ID, created)
	}
}

func testFileProposalRace(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	const n = 8
	var wg sync.WaitGroup
	ids := make([]string, n)
	createdN := make([]bool, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			p, c, err := r.FileProposal(context.Background(), sidecarProposal(fmt.Sprintf("p-%d", i), "agent-r", "write_file", callSHA, base))
			ids[i], createdN[i], errs[i] = p.ID, c, err
		})
	}
	wg.Wait()
	created := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("FileProposal #%d = %v", i, errs[i])
		}
		if createdN[i] {
			created++
		}
		if ids[i] != ids[0] {
			t.Errorf("FileProposal #%d = %s, #0 = %s: one call, two proposals", i, ids[i], ids[0])
		}
	}
	if created != 1 {
		t.Errorf("%d of %d concurrent filings created a proposal, want 1", created, n)
	}
}

func testClaimApproval(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	const agent = "agent-c"
	now := base.Add(time.Minute)
	p, _ := file(t, r, sidecarProposal("p-1", agent, "write_file", callSHA, base))
	if _, err := r.ClaimApproval(ctx, agent, "write_file", callSHA, "sidecar-1", now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ClaimApproval(pending) = %v, want ErrNotFound", err)
	}
	held := hold(t, r, p.ID, "the.signed.token", now, now.Add(5*time.Minute))
	if got := getProposal(t, r, p.ID); got.HeldToken != "" || got.Status != store.ProposalApproved {
		t.Fatalf("Proposal(held) = status %s, token %q; want approved and no token", got.Status, got.HeldToken)
	}
	if ps, _ := r.Proposals(ctx, store.ProposalFilter{}); len(ps) != 1 || ps[0].HeldToken != "" {
		t.Fatalf("Proposals shows the held token")
	}
	for _, tc := range []struct{ name, agent, tool, sum string }{
		{"other principal", "agent-d", "write_file", callSHA},
		{"other tool", agent, "delete_file", callSHA},
		{"other args", agent, "write_file", otherSHA},
	} {
		if _, err := r.ClaimApproval(ctx, tc.agent, tc.tool, tc.sum, "sidecar-1", now); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("ClaimApproval(%s) = %v, want ErrNotFound", tc.name, err)
		}
	}
	claimAt := now.Add(time.Second + 123*time.Nanosecond)
	got, err := r.ClaimApproval(ctx, agent, "write_file", callSHA, "sidecar-2", claimAt)
	if err != nil {
		t.Fatalf("ClaimApproval = %v", err)
	}
	want := held
	want.Status, want.ClaimedBy, want.ClaimedAt, want.UpdatedAt = store.ProposalClaimed, "sidecar-2", claimAt, claimAt
	if got.HeldToken != "the.signed.token" {
		t.Fatalf("ClaimApproval token = %q, want the held one", got.HeldToken)
	}
	got.HeldToken = ""
	if d := diffProposal(got, want); d != "" {
		t.Fatalf("ClaimApproval: %s", d)
	}
	if d := diffProposal(getProposal(t, r, p.ID), want); d != "" {
		t.Fatalf("Proposal(claimed): %s", d)
	}
	if _, err := r.ClaimApproval(ctx, agent, "write_file", callSHA, "sidecar-1", claimAt); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ClaimApproval(again) = %v, want ErrNotFound: a held approval is handed out once", err)
	}
	// A held approval past its expiry is not handed out.
	q, _ := file(t, r, sidecarProposal("p-2", agent, "write_file", callSHA, base))
	hold(t, r, q.ID, "tok-2", now, now.Add(time.Minute))
	if _, err := r.ClaimApproval(ctx, agent, "write_file", callSHA, "sidecar-1", now.Add(time.Minute)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ClaimApproval(at expiry) = %v, want ErrNotFound", err)
	}
}

func testClaimRace(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	now := base.Add(time.Minute)
	p, _ := file(t, r, sidecarProposal("p-1", "agent-r", "write_file", callSHA, base))
	hold(t, r, p.ID, "only-once", now, now.Add(5*time.Minute))
	const n = 8
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		tokens []string
	)
	for i := range n {
		wg.Go(func() {
			got, err := r.ClaimApproval(context.Background(), "agent-r", "write_file", callSHA, fmt.Sprintf("sidecar-%d", i), now)
			switch {
			case err == nil:
				mu.Lock()
				tokens = append(tokens, got.HeldToken)
				mu.Unlock()
			case !errors.Is(err, store.ErrNotFound):
				t.Errorf("ClaimApproval #%d = %v", i, err)
			}
		})
	}
	wg.Wait()
	if len(tokens) != 1 || tokens[0] != "only-once" {
		t.Fatalf("%d concurrent claims got %q, want the token exactly once", n, tokens)
	}
}

func testExpireHeld(t *testing.T, b Backend) {
	_, r := openRecords(t, b)
	ctx := context.Background()
	now := base.Add(time.Minute)
	p, _ := file(t, r, sidecarProposal("p-1", "agent-e", "write_file", callSHA, base))
	hold(t, r, p.ID, "tok", now, now.Add(5*time.Minute))
	if got, err := r.ExpireProposals(ctx, now.Add(5*time.Minute-time.Microsecond)); err != nil || len(got) != 0 {
		t.Fatalf("ExpireProposals(before the token's expiry) = %v, %v; want none", proposalIDs(got), err)
	}
	at := now.Add(5 * time.Minute)
	got, err := r.ExpireProposals(ctx, at)
	if err != nil || !slices.Equal(proposalIDs(got), []string{"p-1"}) {
		t.Fatalf("ExpireProposals = %v, %v; want [p-1]", proposalIDs(got), err)
	}
	if got[0].Status != store.ProposalExpired || got[0].HeldToken != "" {
		t.Fatalf("expired held approval = status %s, token %q", got[0].Status, got[0].HeldToken)
	}
	// The token is forgotten: even a claim with an earlier clock finds none.
	if _, err := r.ClaimApproval(ctx, "agent-e", "write_file", callSHA, "s", now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ClaimApproval(expired) = %v, want ErrNotFound", err)
	}
	// The call files a new proposal.
	if q, created := file(t, r, sidecarProposal("p-2", "agent-e", "write_file", callSHA, at)); !created || q.ID != "p-2" {
		t.Fatalf("FileProposal(after expiry) = %s, created %v", q.ID, created)
	}
}
