package orchestrator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/gateway"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/toolcall"
)

const sidecarPrincipal = "spiffe://example.org/ns/agents/sa/ide"

// gatewayFixture is an orchestrator without a planner, its API on a test
// server, and a sidecar's client of it.
func gatewayFixture(t *testing.T, mod func(*orchestrator.Options)) (*fixture, *gateway.Client, *orchestrator.Client) {
	t.Helper()
	f := newFixture(t, nil, mod)
	srv := httptest.NewServer(f.svc.Handler())
	t.Cleanup(srv.Close)
	sc, err := gateway.NewClient(gateway.ClientOptions{BaseURL: srv.URL, Timeout: 5 * time.Second, Sidecar: "sidecar-a", Pod: "tools-0"})
	if err != nil {
		t.Fatal(err)
	}
	return f, sc, &orchestrator.Client{BaseURL: srv.URL}
}

func filing(t *testing.T, principal, tool, args string) gateway.FileRequest {
	t.Helper()
	sum, err := toolcall.ArgsSHA256(tool, []byte(args))
	if err != nil {
		t.Fatal(err)
	}
	return gateway.FileRequest{Principal: principal, Tool: tool, Args: json.RawMessage(args), ArgsSHA256: sum, DecisionID: "dec-1"}
}

func claimOf(r gateway.FileRequest) gateway.ClaimRequest {
	return gateway.ClaimRequest{Principal: r.Principal, Tool: r.Tool, ArgsSHA256: r.ArgsSHA256}
}

func TestNoPlannerServesApprovals(t *testing.T) {
	_, _, c := gatewayFixture(t, nil)
	_, err := c.CreateRun(context.Background(), orchestrator.RunRequest{Goal: "g", Agent: "a"})
	if ae := apiError(err); ae == nil || ae.Status != 503 || ae.Code != "no_planner" {
		t.Fatalf("POST /v1/runs without a planner = %v, want 503 no_planner", err)
	}
	// A body the orchestrator would refuse is not the reason: it cannot plan.
	if _, err := c.CreateRun(context.Background(), orchestrator.RunRequest{}); apiError(err) == nil || apiError(err).Code != "no_planner" {
		t.Fatalf("POST /v1/runs {} without a planner = %v, want 503 no_planner", err)
	}
}

func TestGatewayFileApproveClaim(t *testing.T) {
	f, sc, c := gatewayFixture(t, nil)
	ctx := context.Background()
	req := filing(t, sidecarPrincipal, "write_file", `{"path":"x.txt", "content":"hi"}`)
	if a, err := sc.Claim(ctx, claimOf(req)); err != nil || a.Status != gateway.StatusNone {
		t.Fatalf("Claim(nothing filed) = %+v, %v; want none", a, err)
	}
	a, err := sc.File(ctx, req)
	if err != nil || a.Status != gateway.StatusPending || a.ProposalID == "" || a.RetryAfter != 5 || a.ExpiresAt.IsZero() {
		t.Fatalf("File = %+v, %v; want pending with an id, retry_after 5 and an expiry", a, err)
	}
	id := a.ProposalID
	if again, err := sc.File(ctx, req); err != nil || again.ProposalID != id {
		t.Fatalf("File(again) = %+v, %v; want the same proposal %s", again, err, id)
	}
	if a, err := sc.Claim(ctx, claimOf(req)); err != nil || a.Status != gateway.StatusPending || a.ProposalID != id {
		t.Fatalf("Claim(pending) = %+v, %v; want pending %s", a, err, id)
	}
	p, err := c.Proposal(ctx, id)
	if err != nil || p.Origin != store.OriginSidecar || p.Sidecar != "sidecar-a" || p.Pod != "tools-0" || p.DecisionID != "dec-1" ||
		p.Agent != sidecarPrincipal || p.Risk != "write" || p.RunID != "" || p.ArgsSHA256 != req.ArgsSHA256 || must(toolcall.ArgsSHA256(p.Tool, p.Args)) != req.ArgsSHA256 {
		t.Fatalf("Proposal(%s) = %+v, %v; want the sidecar's filing with its origin", id, p, err)
	}
	if got := f.audit.kinds(id); strings.Join(got, " ") != "proposal:pending" {
		t.Fatalf("audit of %s = %v, want one proposal event", id, got)
	}

	token := f.token(t, p, nil)
	d, err := c.Approve(ctx, id, token)
	if err != nil || d.Proposal.Status != store.ProposalApproved || d.ToolCall != nil {
		t.Fatalf("Approve = %+v, %v; want approved, held, not dispatched", d, err)
	}
	if len(f.tool.bodies) != 0 {
		t.Fatalf("the orchestrator dispatched a held approval: %v", f.tool.bodies)
	}
	raw, _ := json.Marshal(d.Proposal)
	if strings.Contains(string(raw), token) {
		t.Fatalf("the proposal's JSON shows the held token: %s", raw)
	}
	// Another call (other args, tool, principal) does not claim it.
	for _, other := range []gateway.ClaimRequest{
		claimOf(filing(t, sidecarPrincipal, "write_file", `{"path":"y.txt","content":"hi"}`)),
		claimOf(filing(t, sidecarPrincipal, "run_command", `{"path":"x.txt","content":"hi"}`)),
		claimOf(filing(t, "spiffe://example.org/ns/agents/sa/other", "write_file", `{"path":"x.txt","content":"hi"}`)),
	} {
		if a, err := sc.Claim(ctx, other); err != nil || a.Status != gateway.StatusNone {
			t.Fatalf("Claim(%+v) = %+v, %v; want none", other, a, err)
		}
	}
	a, err = sc.Claim(ctx, claimOf(req))
	if err != nil || a.Status != gateway.StatusApproved || a.Token != token || a.ProposalID != id {
		t.Fatalf("Claim(approved) = %+v, %v; want the held token", a, err)
	}
	if a, err := sc.Claim(ctx, claimOf(req)); err != nil || a.Status != gateway.StatusNone {
		t.Fatalf("Claim(again) = %+v, %v; want none: a held approval is handed out once", a, err)
	}
	if p, _ := c.Proposal(ctx, id); p.Status != store.ProposalClaimed || p.ClaimedBy != "sidecar-a" || p.ClaimedAt.IsZero() {
		t.Fatalf("Proposal after the claim = %+v, want claimed by sidecar-a", p)
	}
	if got := f.audit.kinds(id); strings.Join(got, " ") != "proposal:pending approval:approved claim:claimed" {
		t.Fatalf("audit of %s = %v", id, got)
	}
	// The next identical call files a new proposal.
	if a, err := sc.File(ctx, req); err != nil || a.ProposalID == id {
		t.Fatalf("File(after the claim) = %+v, %v; want a new proposal", a, err)
	}
}

func TestGatewayRejectAndExpiry(t *testing.T) {
	f, sc, c := gatewayFixture(t, nil)
	ctx := context.Background()
	req := filing(t, sidecarPrincipal, "write_file", `{"path":"x.txt"}`)
	a, _ := sc.File(ctx, req)
	if _, err := c.Reject(ctx, a.ProposalID, "not before the release"); err != nil {
		t.Fatal(err)
	}
	got, err := sc.Claim(ctx, claimOf(req))
	if err != nil || got.Status != gateway.StatusRejected || got.Reason != "not before the release" || got.ProposalID != a.ProposalID {
		t.Fatalf("Claim(rejected) = %+v, %v; want rejected with the reason", got, err)
	}
	// A rejection stands for ProposalTTL (a minute here), then the call may be proposed again.
	f.advance(time.Minute + time.Second)
	if got, err := sc.Claim(ctx, claimOf(req)); err != nil || got.Status != gateway.StatusNone {
		t.Fatalf("Claim(rejected long ago) = %+v, %v; want none", got, err)
	}

	// A pending proposal that expires is replaced, not revived.
	req2 := filing(t, sidecarPrincipal, "write_file", `{"path":"z.txt"}`)
	first, _ := sc.File(ctx, req2)
	f.advance(time.Minute)
	testenv.Eventually(t, 5*time.Second, "the expiry sweep", func() bool {
		p, _ := c.Proposal(ctx, first.ProposalID)
		return p.Status == store.ProposalExpired
	})
	if got, err := sc.Claim(ctx, claimOf(req2)); err != nil || got.Status != gateway.StatusNone {
		t.Fatalf("Claim(expired) = %+v, %v; want none", got, err)
	}
	second, err := sc.File(ctx, req2)
	if err != nil || second.ProposalID == first.ProposalID {
		t.Fatalf("File(after expiry) = %+v, %v; want a new proposal", second, err)
	}
	// A held approval whose token expires is forgotten.
	p, _ := c.Proposal(ctx, second.ProposalID)
	if _, err := c.Approve(ctx, p.ID, f.token(t, p, func(c *approval.Claims) {
		c.IssuedAt, c.NotBefore, c.Expiry = f.clock(), f.clock(), f.clock().Add(time.Minute)
	})); err != nil {
		t.Fatal(err)
	}
	f.advance(2 * time.Minute)
	testenv.Eventually(t, 5*time.Second, "the held approval to expire", func() bool {
		p, _ := c.Proposal(ctx, second.ProposalID)
		return p.Status == store.ProposalExpired
	})
	if got, err := sc.Claim(ctx, claimOf(req2)); err != nil || got.Status != gateway.StatusNone {
		t.Fatalf("Claim(held approval expired) = %+v, %v; want none", got, err)
	}
}

func TestGatewayConcurrentClaimsHandOutOnce(t *testing.T) {
	f, sc, c := gatewayFixture(t, nil)
	ctx := context.Background()
	req := filing(t, sidecarPrincipal, "write_file", `{"path":"x.txt"}`)
	a, _ := sc.File(ctx, req)
	p, _ := c.Proposal(ctx, a.ProposalID)
	if _, err := c.Approve(ctx, p.ID, f.token(t, p, nil)); err != nil {
		t.Fatal(err)
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got int
	)
	for range 8 {
		wg.Go(func() {
			a, err := sc.Claim(ctx, claimOf(req))
			if err != nil {
				t.Error(err)
				return
			}
			if a.Status == gateway.StatusApproved {
				mu.Lock()
				got++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if got != 1 {
		t.Fatalf("8 concurrent claims: %d got the approval, want 1", got)
	}
}

func TestGatewayLimitsPerPrincipal(t *testing.T) {
	_, sc, _ := gatewayFixture(t, func(c *orchestrator.Options) {
		c.GatewayLimits.MaxPending, c.GatewayLimits.PerMinute = 2, 3
	})
	ctx := context.Background()
	file := func(principal, path string) error {
		_, err := sc.File(ctx, filing(t, principal, "write_file", `{"path":"`+path+`"}`))
		return err
	}
	for _, p := range []string{"a", "b"} {
		if err := file("looper", p); err != nil {
			t.Fatalf("File(%s) = %v", p, err)
		}
	}
	if err := file("looper", "a"); err != nil {
		t.Fatalf("File(a again) = %v, want the pending proposal: refiling is free", err)
	}
	var le *gateway.LimitError
	if err := file("looper", "c"); !errors.As(err, &le) || le.RetryAfter < time.Second {
		t.Fatalf("File(a third pending call) = %v, want a LimitError with a retry-after", err)
	}
	if err := file("someone-else", "c"); err != nil {
		t.Fatalf("File(another principal) = %v, want its own limits", err)
	}
}

func TestGatewayRefusesBadRequests(t *testing.T) {
	f, _, _ := gatewayFixture(t, nil)
	srv := httptest.NewServer(f.svc.Handler())
	t.Cleanup(srv.Close)
	good := filing(t, sidecarPrincipal, "write_file", `{"path":"x"}`)
	for _, tc := range []struct {
		name, path string
		body       any
	}{
		{"hash not of the args", gateway.PathProposals, func() gateway.FileRequest { r := good; r.Args = json.RawMessage(`{"path":"y"}`); return r }()},
		{"args the sidecar refuses", gateway.PathProposals, func() gateway.FileRequest { r := good; r.Args = json.RawMessage(`{"a":1,"a":2}`); return r }()},
		{"principal with a space", gateway.PathProposals, func() gateway.FileRequest { r := good; r.Principal = "a b"; return r }()},
		{"no decision id", gateway.PathProposals, func() gateway.FileRequest { r := good; r.DecisionID = ""; return r }()},
		{"bad tool", gateway.PathClaims, gateway.ClaimRequest{Principal: "p", Tool: "../x", ArgsSHA256: good.ArgsSHA256}},
		{"bad hash", gateway.PathClaims, gateway.ClaimRequest{Principal: "p", Tool: "x", ArgsSHA256: "ABC"}},
	} {
		b, _ := json.Marshal(tc.body)
		resp, err := http.Post(srv.URL+tc.path, "application/json", strings.NewReader(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "bad_request") {
			t.Errorf("%s: POST %s = %d %s, want 400 bad_request", tc.name, tc.path, resp.StatusCode, body)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestPendingCollector(t *testing.T) {
	f, sc, _ := gatewayFixture(t, nil)
	ctx := context.Background()
	if _, err := sc.File(ctx, filing(t, sidecarPrincipal, "write_file", `{"path":"x"}`)); err != nil {
		t.Fatal(err)
	}
	f.advance(30 * time.Second) // within the proposal TTL (a minute)
	reg := prometheus.NewRegistry()
	po := orchestrator.DefaultPendingCollectorOptions()
	po.Records, po.Registry, po.Now = f.rec, orchestrator.Registry{"write_file": {Risk: "write"}, "read_file": {Risk: "read"}}, f.clock
	pc, err := orchestrator.NewPendingCollector(po)
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(pc)
	want := `
# HELP m1_proposals_pending Proposals waiting for an operator's decision, by risk.
# TYPE m1_proposals_pending gauge
m1_proposals_pending{risk="read"} 0
m1_proposals_pending{risk="write"} 1
# HELP m1_proposals_pending_oldest_age_seconds Age of the oldest proposal waiting for an operator's decision, by risk (0 when none waits).
# TYPE m1_proposals_pending_oldest_age_seconds gauge
m1_proposals_pending_oldest_age_seconds{risk="read"} 0
m1_proposals_pending_oldest_age_seconds{risk="write"} 30
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// M1_APPROVALS_MAX_PENDING holds for filings that arrive together: each
// counts the principal's pending proposals and stores its own as one step.
func TestMaxPendingUnderConcurrentFilings(t *testing.T) {
	f, sc, _ := gatewayFixture(t, nil) // MaxPending 10, PerMinute 20
	ctx := context.Background()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 20 {
		req := filing(t, sidecarPrincipal, "write_file", fmt.Sprintf(`{"path":"f%d"}`, i))
		wg.Go(func() { <-start; _, _ = sc.File(ctx, req) })
	}
	close(start)
	wg.Wait()
	ps, err := f.rec.Proposals(ctx, store.ProposalFilter{Agent: sidecarPrincipal, Status: store.ProposalPending})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 10 {
		t.Fatalf("%d proposals of one principal pending after 20 concurrent filings, want the limit, 10", len(ps))
	}
}

// A call's arguments of HTML are filed as the sidecar took them: not
// HTML-escaped on the way (six bytes for each <, > and &), which would
// make a 320 KB body outgrow the orchestrator's limit on a filing.
func TestFilingOfHTMLArgs(t *testing.T) {
	f, sc, _ := gatewayFixture(t, nil)
	args := `{"content":"` + strings.Repeat("<b>&amp;</b>", 30000) + `","path":"a.html"}`
	a, err := sc.File(context.Background(), filing(t, sidecarPrincipal, "write_file", args))
	if err != nil {
		t.Fatalf("File(%d bytes of arguments) = %v", len(args), err)
	}
	p, err := f.rec.Proposal(context.Background(), a.ProposalID)
	if err != nil {
		t.Fatal(err)
	}
	if string(p.Args) != args {
		t.Errorf("stored arguments differ from the call's (%d bytes, want %d)", len(p.Args), len(args))
	}
}
