package orchestrator_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/toolcall"
)

// planFunc is a test planner.
type planFunc func(ctx context.Context, s orchestrator.Session) (orchestrator.Step, error)

func (f planFunc) Next(ctx context.Context, s orchestrator.Session) (orchestrator.Step, error) {
	return f(ctx, s)
}

// memAudit collects events.
type memAudit struct {
	mu sync.Mutex
	ev []store.Event
}

func (a *memAudit) Record(e store.Event) { a.mu.Lock(); a.ev = append(a.ev, e); a.mu.Unlock() }

// reasons joins the reasons of the events of kind.
func (a *memAudit) reasons(kind string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, e := range a.ev {
		if e.Kind == kind {
			out = append(out, e.Reason)
		}
	}
	return strings.Join(out, " ")
}

func (a *memAudit) kinds(proposal string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, e := range a.ev {
		if proposal == "" || e.ProposalID == proposal {
			out = append(out, e.Kind+":"+e.Decision)
		}
	}
	return out
}

// toolServer is a REST and MCP tool that records what reached it.
type toolServer struct {
	mu       sync.Mutex
	bodies   []string
	tokens   []string
	denyCode string // answer tool calls as a sidecar deny with this code
	// forgedDeny answers denyCode's body without the sidecar's
	// x-m1-decision-id header: a tool's own error, not a deny
	forgedDeny bool
	redirect   string // answer 307 to this URL
	delay      time.Duration
	// resets tool calls are answered as m1-authz answers an approval
	// issued before its shared state was reset: 403 state_reset, with
	// retryAfter as the retry-after header when it is set.
	resets      int
	retryAfter  string
	resetTokens []string // the tokens of the calls so refused
}

func (ts *toolServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if ts.redirect != "" {
		http.Redirect(w, r, ts.redirect, http.StatusTemporaryRedirect)
		return
	}
	if ts.delay > 0 {
		time.Sleep(ts.delay)
	}
	var rpc struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	if r.Method == http.MethodDelete { // the end of an MCP session
		return
	}
	if r.URL.Path == "/mcp" {
		_ = json.Unmarshal(body, &rpc)
		switch rpc.Method {
		case "initialize":
			w.Header().Set("Mcp-Session-Id", "s-1")
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"2025-06-18\"}}\n\n")
			return
		case "notifications/initialized":
			w.WriteHeader(202)
			return
		}
	}
	ts.mu.Lock()
	if code := ts.denyCode; code != "" {
		ts.tokens = append(ts.tokens, r.Header.Get("x-m1-approval-token"))
		ts.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ts.forgedDeny {
			w.Header().Set("x-m1-decision-id", "dec-"+code)
		}
		w.WriteHeader(403)
		io.WriteString(w, `{"error":"`+code+`","reason":"refused","decision_id":"dec-`+code+`"}`)
		return
	}
	if ts.resets > 0 {
		ts.resets--
		ts.resetTokens = append(ts.resetTokens, r.Header.Get("x-m1-approval-token"))
		ts.mu.Unlock()
		if ts.retryAfter != "" {
			w.Header().Set("retry-after", ts.retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("x-m1-decision-id", "dec-reset")
		w.WriteHeader(403)
		io.WriteString(w, `{"error":"state_reset","reason":"token issued before the shared state was reset; ask for a new approval","decision_id":"dec-reset"}`)
		return
	}
	ts.bodies = append(ts.bodies, string(body))
	ts.tokens = append(ts.tokens, r.Header.Get("x-m1-approval-token"))
	ts.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/mcp" {
		io.WriteString(w, `{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"done"}],"isError":false}}`)
		return
	}
	io.WriteString(w, `{"ok":true}`)
}

type fixture struct {
	svc   *orchestrator.Service
	rec   store.Records
	audit *memAudit
	tool  *toolServer
	key   *approval.SigningKey
	reg   *prometheus.Registry
	m     *orchestrator.Metrics
	now   time.Time
	mu    sync.Mutex
}

func (f *fixture) clock() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }
func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func newFixture(t *testing.T, p orchestrator.Planner, mod func(*orchestrator.Options)) *fixture {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "m1.db"), sqlite.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ts := &toolServer{}
	srv := httptest.NewServer(ts)
	t.Cleanup(srv.Close)
	reg, err := orchestrator.ParseRegistry([]byte(`{
		"read_file": {"risk": "read", "requires_approval": false},
		"write_file": {"risk": "write", "protocol": "rest"},
		"run_command": {"risk": "execute", "sensitive": true}
	}`), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	key, err := approval.GenerateKey(approval.AlgEdDSA, "k1")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{rec: any(st).(store.Records), audit: &memAudit{}, tool: ts, key: key, reg: prometheus.NewRegistry(), now: time.Now().UTC()}
	f.m, err = orchestrator.NewMetrics(f.reg)
	if err != nil {
		t.Fatal(err)
	}
	o := orchestrator.DefaultOptions()
	o.Records, o.Audit, o.Planner, o.Registry, o.CostTracking = f.rec, f.audit, p, reg, true
	o.ProposalTTL, o.ExpireEvery, o.Metrics, o.Now = time.Minute, 10*time.Millisecond, f.m, f.clock
	o.Verifier = newVerifier(t, f.clock, key)
	if mod != nil {
		mod(&o)
	}
	f.svc, err = orchestrator.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.svc.Stop(context.Background()) })
	return f
}

// newVerifier verifies approvals as the orchestrator's sidecars would:
// the public keys of keys, audience "tools", issuer m1-cli.
func newVerifier(t *testing.T, now func() time.Time, keys ...*approval.SigningKey) *approval.Verifier {
	t.Helper()
	var jwks struct {
		Keys []json.RawMessage `json:"keys"`
	}
	for _, k := range keys {
		b, err := k.PublicJWKS()
		if err != nil {
			t.Fatal(err)
		}
		var one struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal(b, &one); err != nil {
			t.Fatal(err)
		}
		jwks.Keys = append(jwks.Keys, one.Keys...)
	}
	b, _ := json.Marshal(jwks)
	ks, err := approval.ParseJWKS(b)
	if err != nil {
		t.Fatal(err)
	}
	v, err := approval.NewVerifier(approval.VerifierOptions{
		Keys: ks, Audience: "tools", TrustedIssuers: []string{"m1-cli"}, Now: now, CacheSize: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (f *fixture) token(t *testing.T, p store.Proposal, mod func(*approval.Claims)) string {
	t.Helper()
	return mintFor(t, f.key, p, mod)
}

// mintFor signs an approval of p with key, as m1 approve would.
func mintFor(t *testing.T, key *approval.SigningKey, p store.Proposal, mod func(*approval.Claims)) string {
	t.Helper()
	c := approval.Claims{
		Issuer: "m1-cli", Subject: p.Agent, Audience: []string{"tools"}, Actor: "alice",
		Kind: approval.KindApproval, Tool: p.Tool, ArgsSHA256: p.ArgsSHA256,
		RunID: p.RunID, ProposalID: p.ID, Expiry: time.Now().Add(time.Minute),
	}
	if mod != nil {
		mod(&c)
	}
	tok, err := approval.Mint(key, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// twoSteps proposes write_file, then finishes, and records what it saw.
type twoSteps struct {
	mu       sync.Mutex
	sessions []orchestrator.Session
}

func (p *twoSteps) Next(_ context.Context, s orchestrator.Session) (orchestrator.Step, error) {
	p.mu.Lock()
	p.sessions = append(p.sessions, s)
	p.mu.Unlock()
	usage := []orchestrator.LLMUsage{{Model: "claude-sonnet-4-5", InputTokens: 1000, OutputTokens: 100, CacheReadTokens: 2000}}
	if len(s.History) == 0 {
		return orchestrator.Step{
			Text:  "I will write the notes.",
			Calls: []orchestrator.Call{{ID: "toolu_1", Tool: "write_file", Args: json.RawMessage(`{"path": "notes.txt",  "content": "hi"}`)}},
			LLM:   usage,
		}, nil
	}
	return orchestrator.Step{Done: true, Text: "Done.", LLM: usage}, nil
}

func (p *twoSteps) seen() []orchestrator.Session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]orchestrator.Session(nil), p.sessions...)
}

func TestRunApproveDispatchComplete(t *testing.T) {
	pl := &twoSteps{}
	f := newFixture(t, pl, nil)
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "take notes", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != store.RunRunning || len(d.Proposals) != 1 {
		t.Fatalf("StartRun = status %s, %d proposals; want running, 1", d.Status, len(d.Proposals))
	}
	p := d.Proposals[0]
	want, _ := toolcall.ArgsSHA256("write_file", []byte(`{"content":"hi","path":"notes.txt"}`))
	if p.ArgsSHA256 != want || p.Risk != "write" || p.Status != store.ProposalPending || p.Reasoning != "I will write the notes." || p.CallID != "toolu_1" {
		t.Fatalf("proposal = %+v", p)
	}
	if string(p.Args) != `{"path": "notes.txt",  "content": "hi"}` {
		t.Fatalf("proposal args = %s, want the planner's bytes", p.Args)
	}
	// 3000-token step at Sonnet prices: 1000×3 + 100×15 + 2000×0.30 per million.
	wantCost := (1000*3.0 + 100*15 + 2000*0.30) / 1e6
	if d.Usage.CostUSD < wantCost*0.999 || d.Usage.CostUSD > wantCost*1.001 || d.Usage.CacheReadTokens != 2000 {
		t.Fatalf("run usage = %+v, want cost %.6f", d.Usage, wantCost)
	}

	dec, err := f.svc.Approve(ctx, p.ID, f.token(t, p, nil))
	if err != nil {
		t.Fatal(err)
	}
	if dec.Proposal.Status != store.ProposalExecuted || dec.ToolCall == nil || dec.ToolCall.Status != store.CallSucceeded || dec.Proposal.Approver != "alice" {
		t.Fatalf("Approve = %+v / %+v", dec.Proposal, dec.ToolCall)
	}
	if len(f.tool.bodies) != 1 || f.tool.bodies[0] != `{"path": "notes.txt",  "content": "hi"}` || f.tool.tokens[0] == "" {
		t.Fatalf("tool got %q with tokens %q; want the exact args once, with the token", f.tool.bodies, f.tool.tokens)
	}
	testenv.Eventually(t, 5*time.Second, "run completed", func() bool {
		r, _ := f.rec.Run(ctx, d.ID)
		return r.Status == store.RunCompleted
	})
	s := pl.seen()
	if len(s) != 2 || len(s[1].History) != 1 || s[1].History[0].Results[0].Status != store.ProposalExecuted || string(s[1].History[0].Results[0].Result) != `{"ok":true}` {
		t.Fatalf("second planning step saw %+v", s)
	}
	if got := strings.Join(f.audit.kinds(p.ID), " "); got != "proposal:pending approval:approved result:succeeded" {
		t.Fatalf("audit of the proposal = %s", got)
	}
	testenv.Eventually(t, 5*time.Second, "m1_agent_runs_total{completed} = 1", func() bool {
		return testutil.ToFloat64(f.m.Runs.WithLabelValues(store.RunCompleted)) == 1
	})
	if got := testutil.ToFloat64(f.m.RunsActive); got != 0 {
		t.Fatalf("m1_agent_runs_active = %v, want 0", got)
	}
	if got := testutil.ToFloat64(f.m.LLMTokens.WithLabelValues("claude-sonnet-4-5", "input")); got != 2000 {
		t.Fatalf("m1_llm_tokens_total{input} = %v, want 2000", got)
	}
	if got := testutil.ToFloat64(f.m.ToolExecutions.WithLabelValues("write_file", store.CallSucceeded)); got != 1 {
		t.Fatalf("m1_tool_executions_total = %v", got)
	}
	costs, err := f.rec.Costs(ctx, time.Time{})
	if err != nil || len(costs) != 1 || costs[0].Calls != 2 || costs[0].Agent != "agent-7" {
		t.Fatalf("Costs = %+v, %v", costs, err)
	}
}

func TestNewRefusesNoVerifier(t *testing.T) {
	reg, err := orchestrator.ParseRegistry([]byte(`{"read_file": {"risk": "read"}}`), "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	o := orchestrator.DefaultOptions()
	o.Records, o.Audit, o.Planner, o.Registry = nopRecords{}, &memAudit{}, &twoSteps{}, reg
	_, err = orchestrator.New(o)
	if err == nil || !strings.Contains(err.Error(), "Verifier") {
		t.Fatalf("New without a Verifier = %v, want an error naming Options.Verifier", err)
	}
}

// nopRecords is a store.Records that New may hold but never calls.
type nopRecords struct{ store.Records }

// TestApprovalRefusedBeforeDispatch: a token that fails any of hard checks
// 1–8 of DESIGN §4, or names another proposal, agent or run, is refused
// before anything is recorded: the proposal stays pending, no approval is
// audited, no tool call is stored and nothing reaches the tool.
func TestApprovalRefusedBeforeDispatch(t *testing.T) {
	f := newFixture(t, &twoSteps{}, nil)
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	p := d.Proposals[0]
	other := p
	other.ArgsSHA256 = strings.Repeat("0", 64)
	// A key of the operator's kid that is not the one in the JWKS, and a
	// key the JWKS does not hold at all: anyone can make either.
	forgedSameKID, err := approval.GenerateKey(approval.AlgEdDSA, "k1")
	if err != nil {
		t.Fatal(err)
	}
	forgedOtherKID, err := approval.GenerateKey(approval.AlgEdDSA, "k2")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		token string
		code  string
	}{
		{"signed by a key not in the JWKS (same kid)", mintFor(t, forgedSameKID, p, nil), "token_invalid"},
		{"signed by a key not in the JWKS (unknown kid)", mintFor(t, forgedOtherKID, p, nil), "token_invalid"},
		{"other audience", f.token(t, p, func(c *approval.Claims) { c.Audience = []string{"billing"} }), "audience_mismatch"},
		{"untrusted issuer", f.token(t, p, func(c *approval.Claims) { c.Issuer = "mallory" }), "issuer_untrusted"},
		{"lifetime too long", f.token(t, p, func(c *approval.Claims) {
			c.IssuedAt, c.Expiry = time.Now(), time.Now().Add(time.Hour)
		}), "token_ttl_exceeded"},
		{"not yet valid", f.token(t, p, func(c *approval.Claims) {
			c.IssuedAt, c.Expiry = time.Now().Add(10*time.Minute), time.Now().Add(11*time.Minute)
		}), "token_not_yet_valid"},
		{"other args", f.token(t, other, nil), "args_mismatch"},
		{"other tool", f.token(t, p, func(c *approval.Claims) { c.Tool = "read_file" }), "tool_mismatch"},
		{"other agent", f.token(t, p, func(c *approval.Claims) { c.Subject = "agent-8" }), "subject_mismatch"},
		{"other proposal", f.token(t, p, func(c *approval.Claims) { c.ProposalID = "prop_x" }), "proposal_mismatch"},
		{"no proposal", f.token(t, p, func(c *approval.Claims) { c.ProposalID = "" }), "proposal_mismatch"},
		{"grant", f.token(t, p, func(c *approval.Claims) {
			c.Kind, c.Tool, c.ArgsSHA256, c.Tools, c.MaxUses = approval.KindGrant, "", "", []string{"write_file"}, 1
		}), "token_invalid"},
		{"expired", f.token(t, p, func(c *approval.Claims) {
			c.IssuedAt, c.Expiry = time.Now().Add(-time.Hour), time.Now().Add(-time.Minute)
		}), "token_expired"},
		{"garbage", "not.a.token", "token_invalid"},
	}
	for _, tc := range cases {
		_, err := f.svc.Approve(ctx, p.ID, tc.token)
		var te *orchestrator.TokenError
		if !errors.As(err, &te) || te.Code != tc.code {
			t.Errorf("Approve(%s) = %v, want %s", tc.name, err, tc.code)
		}
	}
	if len(f.tool.bodies) != 0 {
		t.Fatalf("a refused token reached the tool: %q", f.tool.bodies)
	}
	got, _ := f.rec.Proposal(ctx, p.ID)
	if got.Status != store.ProposalPending || got.Approver != "" || got.ApprovalJTI != "" || !got.DecidedAt.IsZero() {
		t.Fatalf("proposal after refusals = %s, approver %q, jti %q, decided %v; want pending, nothing recorded", got.Status, got.Approver, got.ApprovalJTI, got.DecidedAt)
	}
	if got := strings.Join(f.audit.kinds(p.ID), " "); got != "proposal:pending" {
		t.Fatalf("audit of the proposal after refusals = %s, want only the proposal", got)
	}
	if calls, _ := f.rec.ToolCalls(ctx, d.ID); len(calls) != 0 {
		t.Fatalf("tool calls after refusals = %+v, want none", calls)
	}
	// The operator's own token is still accepted.
	if dec, err := f.svc.Approve(ctx, p.ID, f.token(t, p, nil)); err != nil || dec.Proposal.Status != store.ProposalExecuted {
		t.Fatalf("Approve(the operator's token) = %+v, %v; want executed", dec.Proposal, err)
	}
}

func TestRejectAndExpiry(t *testing.T) {
	calls := planFunc(func(_ context.Context, s orchestrator.Session) (orchestrator.Step, error) {
		if len(s.History) > 0 {
			return orchestrator.Step{Done: true}, nil
		}
		return orchestrator.Step{Calls: []orchestrator.Call{
			{Tool: "write_file", Args: json.RawMessage(`{"path":"a"}`)},
			{Tool: "run_command", Args: json.RawMessage(`{"command":"ls"}`)},
		}}, nil
	})
	f := newFixture(t, calls, nil)
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Reject(ctx, d.Proposals[0].ID, "not now"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Reject(ctx, d.Proposals[0].ID, "again"); err == nil {
		t.Fatal("second rejection of the same proposal succeeded")
	}
	f.advance(2 * time.Minute) // past the TTL: the sweeper expires the second
	testenv.Eventually(t, 5*time.Second, "expiry and completion", func() bool {
		r, _ := f.rec.Run(ctx, d.ID)
		return r.Status == store.RunCompleted
	})
	p1, _ := f.rec.Proposal(ctx, d.Proposals[0].ID)
	p2, _ := f.rec.Proposal(ctx, d.Proposals[1].ID)
	if p1.Status != store.ProposalRejected || p1.Reason != "not now" || p2.Status != store.ProposalExpired {
		t.Fatalf("proposals = %s/%q, %s; want rejected/not now, expired", p1.Status, p1.Reason, p2.Status)
	}
	if _, err := f.svc.Approve(ctx, p2.ID, f.token(t, p2, nil)); err == nil {
		t.Fatal("approving an expired proposal succeeded")
	}
	if got := strings.Join(f.audit.kinds(p2.ID), " "); got != "proposal:pending rejection:expired" {
		t.Fatalf("audit of the expired proposal = %s", got)
	}
}

func TestBudgetStopsPlanning(t *testing.T) {
	steps := 0
	pl := planFunc(func(_ context.Context, s orchestrator.Session) (orchestrator.Step, error) {
		steps++
		return orchestrator.Step{
			Calls: []orchestrator.Call{{Tool: "read_file", Args: json.RawMessage(`{"path":"x"}`)}},
			LLM:   []orchestrator.LLMUsage{{Model: "claude-opus-4-1", InputTokens: 10_000, OutputTokens: 1_000}}, // $0.225
		}, nil
	})
	f := newFixture(t, pl, func(c *orchestrator.Options) { c.BudgetUSD, c.CostAlertUSD = 0.40, 0.30 })
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		ps, _ := f.rec.Proposals(ctx, store.ProposalFilter{RunID: d.ID, Status: store.ProposalPending})
		if len(ps) != 1 {
			t.Fatalf("step %d: %d pending proposals", i+1, len(ps))
		}
		if _, err := f.svc.Reject(ctx, ps[0].ID, "no"); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			testenv.Eventually(t, 5*time.Second, "second step", func() bool {
				ps, _ := f.rec.Proposals(ctx, store.ProposalFilter{RunID: d.ID, Status: store.ProposalPending})
				return len(ps) == 1
			})
		}
	}
	testenv.Eventually(t, 5*time.Second, "over budget", func() bool {
		r, _ := f.rec.Run(ctx, d.ID)
		return r.Status == store.RunOverBudget
	})
	r, _ := f.rec.Run(ctx, d.ID)
	if steps != 2 || !r.OverAlert || r.Usage.CostUSD < 0.44 {
		t.Fatalf("steps = %d, run = %+v; want 2 steps, alert set, cost 0.45", steps, r)
	}
}

func TestPlannerFailureAndBadProposals(t *testing.T) {
	pl := planFunc(func(_ context.Context, s orchestrator.Session) (orchestrator.Step, error) {
		if len(s.History) == 0 {
			return orchestrator.Step{Calls: []orchestrator.Call{
				{Tool: "rm_rf", Args: json.RawMessage(`{}`)},
				{Tool: "read_file", Args: json.RawMessage(`{"n": 18446744073709551616}`)},
				{Tool: "read_file", Args: json.RawMessage(`{"path": `)},
			}}, nil
		}
		if got := s.History[0].Results; got[0].Status != store.ProposalFailed || !strings.Contains(got[1].Error, "number_not_canonical") {
			return orchestrator.Step{}, errors.New("unexpected history")
		}
		return orchestrator.Step{}, &orchestrator.PlannerError{Err: errors.New("model overloaded"), LLM: []orchestrator.LLMUsage{{Model: "claude-haiku-4-5", InputTokens: 100}}}
	})
	f := newFixture(t, pl, nil)
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "run failed", func() bool {
		r, _ := f.rec.Run(ctx, d.ID)
		return r.Status == store.RunFailed
	})
	r, _ := f.rec.Run(ctx, d.ID)
	if !strings.Contains(r.Error, "model overloaded") || r.Usage.InputTokens != 100 {
		t.Fatalf("run = %+v; want the planner's error and the failed call's usage", r)
	}
}

func TestDispatchDeniedBySidecar(t *testing.T) {
	f := newFixture(t, &twoSteps{}, nil)
	f.tool.denyCode = "token_replayed"
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	p := d.Proposals[0]
	dec, err := f.svc.Approve(ctx, p.ID, f.token(t, p, nil))
	if err != nil {
		t.Fatal(err)
	}
	if dec.ToolCall.Status != store.CallDenied || dec.ToolCall.DecisionID != "dec-token_replayed" || dec.Proposal.Status != store.ProposalFailed || !strings.HasPrefix(dec.Proposal.Reason, "token_replayed") {
		t.Fatalf("Approve = %+v / %+v; want denied with the sidecar's decision id", dec.Proposal, dec.ToolCall)
	}
}

func TestDispatchNeverFollowsRedirects(t *testing.T) {
	var elsewhere []string
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere = append(elsewhere, r.Header.Get("x-m1-approval-token"))
	}))
	t.Cleanup(evil.Close)
	f := newFixture(t, &twoSteps{}, nil)
	f.tool.redirect = evil.URL + "/steal"
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	p := d.Proposals[0]
	dec, err := f.svc.Approve(ctx, p.ID, f.token(t, p, nil)+"\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(elsewhere) != 0 {
		t.Fatalf("the redirect was followed: the token reached another host %d times", len(elsewhere))
	}
	if dec.ToolCall.Status != store.CallFailed || dec.ToolCall.HTTPStatus != 307 || dec.Proposal.Status != store.ProposalFailed {
		t.Fatalf("Approve = %+v / %+v; want a failed call with the 307", dec.Proposal, dec.ToolCall)
	}
	if got := f.audit.reasons(orchestrator.KindResult); got != "tool_redirect" {
		t.Fatalf("result reason = %q, want tool_redirect", got)
	}
}

func TestDispatchTimeoutIsRecorded(t *testing.T) {
	f := newFixture(t, &twoSteps{}, func(c *orchestrator.Options) { c.DispatchTimeout = 50 * time.Millisecond })
	f.tool.delay = 300 * time.Millisecond
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	p := d.Proposals[0]
	dec, err := f.svc.Approve(ctx, p.ID, f.token(t, p, nil))
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := f.rec.Proposal(ctx, p.ID)
	calls, _ := f.rec.ToolCalls(ctx, d.ID)
	if dec.ToolCall.Status != store.CallFailed || stored.Status != store.ProposalFailed || len(calls) != 1 || calls[0].Status != store.CallFailed {
		t.Fatalf("after a timeout: answer %+v, stored proposal %s, calls %+v; want all failed", dec.ToolCall, stored.Status, calls)
	}
	if got := f.audit.reasons(orchestrator.KindResult); got != "tool_timeout" {
		t.Fatalf("result reason = %q, want tool_timeout", got)
	}
	testenv.Eventually(t, 5*time.Second, "the run to go on", func() bool {
		r, _ := f.rec.Run(ctx, d.ID)
		return r.Status == store.RunCompleted
	})
}

func TestInterruptedDispatchIsFailed(t *testing.T) {
	f := newFixture(t, &twoSteps{}, func(c *orchestrator.Options) { c.DispatchTimeout = time.Second })
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	p := d.Proposals[0]
	// As if a previous process approved it and died before the tool answered.
	if _, err := f.rec.UpdateProposal(ctx, p.ID, store.ProposalPending, store.ProposalUpdate{Status: store.ProposalApproved, UpdatedAt: f.clock()}); err != nil {
		t.Fatal(err)
	}
	f.advance(3 * time.Second) // past twice the dispatch timeout: the sweeper fails it
	testenv.Eventually(t, 5*time.Second, "the interrupted proposal to fail and the run to go on", func() bool {
		r, _ := f.rec.Run(ctx, d.ID)
		return r.Status == store.RunCompleted
	})
	got, _ := f.rec.Proposal(ctx, p.ID)
	if got.Status != store.ProposalFailed || !strings.Contains(got.Reason, "interrupted") {
		t.Fatalf("proposal = %s %q, want failed, interrupted", got.Status, got.Reason)
	}
}

// oneCall proposes one call of tool, then finishes.
func oneCall(tool, args string) orchestrator.Planner {
	return planFunc(func(_ context.Context, s orchestrator.Session) (orchestrator.Step, error) {
		if len(s.History) > 0 {
			return orchestrator.Step{Done: true}, nil
		}
		return orchestrator.Step{Calls: []orchestrator.Call{{Tool: tool, Args: json.RawMessage(args)}}}, nil
	})
}

// TestStateResetNeedsNewApproval: the sidecar refuses an approval issued
// before its shared state was reset (state_reset, with retry-after). The
// tool did not run and the same token will never pass, so the proposal goes
// back to pending instead of failing the run; the orchestrator refuses that
// token again itself, and dispatches once it holds an approval issued after
// the time the sidecar named.
func TestStateResetNeedsNewApproval(t *testing.T) {
	for _, tc := range []struct {
		name, tool, args string
		retryAfter       string
		wantWait         time.Duration // about the retry-after, else the clock skew
	}{
		{"rest, retry-after", "write_file", `{"path":"a","content":"b"}`, "7", 7 * time.Second},
		{"mcp, retry-after", "read_file", `{"path":"a"}`, "3", 3 * time.Second},
		{"rest, no retry-after: the clock skew", "write_file", `{"path":"a","content":"b"}`, "", approval.DefaultClockSkew},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oneCall(tc.tool, tc.args), nil)
			f.tool.resets, f.tool.retryAfter = 1, tc.retryAfter
			ctx := context.Background()
			d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7"})
			if err != nil {
				t.Fatal(err)
			}
			p := d.Proposals[0]
			old := f.token(t, p, func(c *approval.Claims) { c.IssuedAt = f.clock() })
			dec, err := f.svc.Approve(ctx, p.ID, old)
			if err != nil {
				t.Fatal(err)
			}
			secs := int(tc.wantWait / time.Second)
			if !dec.NeedsNewApproval() || dec.ToolCall.Status != store.CallDenied || dec.ToolCall.DecisionID != "dec-reset" ||
				!strings.Contains(dec.Proposal.Reason, "state_reset") || dec.RetryAfter < secs || dec.RetryAfter > secs+1 {
				t.Fatalf("Approve(refused with state_reset) = %+v / %+v, retry_after %d; want the proposal pending again, the call denied, retry_after %d",
					dec.Proposal, dec.ToolCall, dec.RetryAfter, secs)
			}
			if len(f.tool.bodies) != 0 || len(f.tool.resetTokens) != 1 {
				t.Fatalf("the tool ran %d times, refused %d; want 0 and 1", len(f.tool.bodies), len(f.tool.resetTokens))
			}
			if r, _ := f.rec.Run(ctx, d.ID); r.Status != store.RunRunning {
				t.Fatalf("run after state_reset = %s, want running (waiting for the new approval)", r.Status)
			}

			// The same token, or one issued before the sidecar's new
			// epoch, would be refused again: the orchestrator says so
			// without dispatching.
			early := f.token(t, p, func(c *approval.Claims) { c.IssuedAt = f.clock() })
			for name, tok := range map[string]string{"the same token": old, "a token issued too early": early} {
				if _, err := f.svc.Approve(ctx, p.ID, tok); !isTokenError(err, "state_reset") {
					t.Errorf("Approve(%s) = %v, want state_reset", name, err)
				}
			}
			if len(f.tool.resetTokens) != 1 || len(f.tool.bodies) != 0 {
				t.Fatalf("a token issued before the epoch was dispatched again")
			}

			f.advance(time.Duration(dec.RetryAfter) * time.Second)
			fresh := f.token(t, p, func(c *approval.Claims) { c.IssuedAt, c.Expiry = f.clock(), f.clock().Add(time.Minute) })
			dec, err = f.svc.Approve(ctx, p.ID, fresh)
			if err != nil || dec.Proposal.Status != store.ProposalExecuted || dec.ToolCall.Status != store.CallSucceeded {
				t.Fatalf("Approve(new approval) = %+v, %v; want executed", dec, err)
			}
			if len(f.tool.tokens) != 1 || f.tool.tokens[0] != fresh {
				t.Fatalf("the tool got tokens %d, want the new one once", len(f.tool.tokens))
			}
			if got := strings.Join(f.audit.kinds(p.ID), " "); got != "proposal:pending approval:approved result:denied approval:approved result:succeeded" {
				t.Fatalf("audit of the proposal = %s", got)
			}
			testenv.Eventually(t, 5*time.Second, "run completed", func() bool {
				r, _ := f.rec.Run(ctx, d.ID)
				return r.Status == store.RunCompleted
			})
		})
	}
}

// TestStateResetPastExpiry: when the sidecar accepts new approvals only
// after the proposal expires, the proposal fails and the run goes on.
func TestStateResetPastExpiry(t *testing.T) {
	f := newFixture(t, oneCall("write_file", `{"path":"a"}`), nil) // proposals expire after a minute
	f.tool.resets, f.tool.retryAfter = 1, "120"
	ctx := context.Background()
	d, err := f.svc.StartRun(ctx, orchestrator.RunRequest{Goal: "g", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	p := d.Proposals[0]
	dec, err := f.svc.Approve(ctx, p.ID, f.token(t, p, nil))
	if err != nil {
		t.Fatal(err)
	}
	if dec.NeedsNewApproval() || dec.Proposal.Status != store.ProposalFailed || !strings.HasPrefix(dec.Proposal.Reason, "state_reset") || dec.RetryAfter != 0 {
		t.Fatalf("Approve = %+v, retry_after %d; want failed with state_reset", dec.Proposal, dec.RetryAfter)
	}
	testenv.Eventually(t, 5*time.Second, "run completed", func() bool {
		r, _ := f.rec.Run(ctx, d.ID)
		return r.Status == store.RunCompleted
	})
}

func isTokenError(err error, code string) bool {
	te, ok := errors.AsType[*orchestrator.TokenError](err)
	return ok && te.Code == code
}
