package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/orchestrator"
)

// fakeOrchestrator serves the part of m1-orchestrator's HTTP API that m1
// approve and m1 reject call, over a fixed set of proposals, and records
// what it receives. An approval executes the proposal at once.
type fakeOrchestrator struct {
	srv *httptest.Server

	mu         sync.Mutex
	proposals  []store.Proposal // in creation order
	runs       map[string]store.Run
	refuse     map[string]bool   // proposal ids whose approval is answered 400 args_mismatch
	callStatus map[string]string // proposal ids whose approved call ends so (default succeeded)
	approvals  []posted
	rejections []posted
	auth       []string // Authorization headers seen
}

// posted is one approval (token) or rejection (reason) received.
type posted struct {
	id, token, reason string
}

func newFakeOrchestrator(t *testing.T, ps ...store.Proposal) *fakeOrchestrator {
	t.Helper()
	f := &fakeOrchestrator{proposals: ps, runs: map[string]store.Run{}, refuse: map[string]bool{}, callStatus: map[string]string{}}
	for _, p := range ps {
		f.runs[p.RunID] = store.Run{ID: p.RunID, Agent: p.Agent, Status: store.RunRunning, Usage: store.Usage{CostUSD: 0.0123}}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/proposals", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		out := []store.Proposal{}
		for _, p := range f.proposals {
			if s := r.URL.Query().Get("status"); s == "" || s == p.Status {
				out = append(out, p)
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"proposals": out})
	})
	mux.HandleFunc("GET /v1/proposals/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		if i := f.find(r.PathValue("id")); i >= 0 {
			writeJSON(w, http.StatusOK, f.proposals[i])
			return
		}
		writeJSON(w, http.StatusNotFound, orchestrator.APIError{Code: "not_found", Reason: "no such proposal"})
	})
	mux.HandleFunc("GET /v1/runs/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		run, ok := f.runs[r.PathValue("id")]
		if !ok {
			writeJSON(w, http.StatusNotFound, orchestrator.APIError{Code: "not_found", Reason: "no such run"})
			return
		}
		writeJSON(w, http.StatusOK, orchestrator.RunDetail{Run: run})
	})
	mux.HandleFunc("POST /v1/proposals/{id}/approval", func(w http.ResponseWriter, r *http.Request) {
		var req orchestrator.ApprovalRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, orchestrator.APIError{Code: "bad_request", Reason: err.Error()})
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		id := r.PathValue("id")
		f.approvals = append(f.approvals, posted{id: id, token: req.Token})
		i := f.find(id)
		switch {
		case i < 0:
			writeJSON(w, http.StatusNotFound, orchestrator.APIError{Code: "not_found", Reason: "no such proposal"})
		case f.refuse[id]:
			writeJSON(w, http.StatusBadRequest, orchestrator.APIError{Code: "args_mismatch", Reason: "the token approves other arguments"})
		case f.proposals[i].Status != store.ProposalPending:
			writeJSON(w, http.StatusConflict, orchestrator.APIError{Code: "not_pending", Reason: "proposal is " + f.proposals[i].Status})
		default:
			f.proposals[i].Status = store.ProposalExecuted
			p := f.proposals[i]
			tc := &store.ToolCall{
				ID: "call-" + id, RunID: p.RunID, Tool: p.Tool, ProposalID: id, DecisionID: "dec-" + id,
				Status: store.CallSucceeded, HTTPStatus: 200, Result: json.RawMessage(`{"content": [{"type": "text", "text": "done\u001b[2J"}]}`),
			}
			if s := f.callStatus[id]; s != "" {
				f.proposals[i].Status = store.ProposalFailed
				p = f.proposals[i]
				tc.Status, tc.HTTPStatus, tc.Result, tc.Error = s, 403, nil, "token_revoked: token or subject revoked"
			}
			writeJSON(w, http.StatusOK, orchestrator.Decided{Proposal: p, ToolCall: tc})
		}
	})
	mux.HandleFunc("POST /v1/proposals/{id}/rejection", func(w http.ResponseWriter, r *http.Request) {
		var req orchestrator.RejectionRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, orchestrator.APIError{Code: "bad_request", Reason: err.Error()})
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		id := r.PathValue("id")
		f.rejections = append(f.rejections, posted{id: id, reason: req.Reason})
		i := f.find(id)
		switch {
		case i < 0:
			writeJSON(w, http.StatusNotFound, orchestrator.APIError{Code: "not_found", Reason: "no such proposal"})
		case f.proposals[i].Status != store.ProposalPending:
			writeJSON(w, http.StatusConflict, orchestrator.APIError{Code: "not_pending", Reason: "proposal is " + f.proposals[i].Status})
		default:
			f.proposals[i].Status, f.proposals[i].Reason = store.ProposalRejected, req.Reason
			writeJSON(w, http.StatusOK, orchestrator.Decided{Proposal: f.proposals[i]})
		}
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// find returns the index of proposal id, or -1. f.mu is held.
func (f *fakeOrchestrator) find(id string) int {
	return slices.IndexFunc(f.proposals, func(p store.Proposal) bool { return p.ID == id })
}

// received returns copies of the approvals and rejections received.
func (f *fakeOrchestrator) received() (approvals, rejections []posted) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.approvals), slices.Clone(f.rejections)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// proposal returns a pending proposal of tool with args; its args_sha256
// is the sidecar's (callSHA256), computed independently of m1 approve.
func proposal(t *testing.T, id, tool, args, risk string) store.Proposal {
	t.Helper()
	now := time.Now().UTC()
	return store.Proposal{
		ID: id, RunID: "run-" + id, Agent: "agent-7", Step: 1, Tool: tool,
		Args: json.RawMessage(args), ArgsSHA256: callSHA256(t, tool, args), Risk: risk,
		Reasoning: "because " + id, Status: store.ProposalPending,
		CreatedAt: now, ExpiresAt: now.Add(10 * time.Minute), UpdatedAt: now,
	}
}

// approveEnv is the environment of the m1 approve tests: key, audience,
// operator, the fake orchestrator and its admin token.
func approveEnv(t *testing.T, f *fakeOrchestrator) (env map[string]string, jwks string) {
	t.Helper()
	dir := t.TempDir()
	key := keysGen(t, dir, "--kid", "ops-1").PrivateKey
	return map[string]string{
		"M1_SIGNING_KEY":      key,
		"M1_AUDIENCE":         "tools.example",
		"USER":                "alice",
		"M1_ORCHESTRATOR_URL": f.srv.URL,
		"M1_ADMIN_TOKEN":      "orchestrator-admin-token",
	}, filepath.Join(dir, "jwks.json")
}

// verifyToken verifies token with the public JWKS as a sidecar of
// audience tools.example would (hard checks 1 to 7).
func verifyToken(t *testing.T, jwks, token string) *approval.Claims {
	t.Helper()
	keys, err := approval.LoadJWKS(jwks)
	if err != nil {
		t.Fatal(err)
	}
	return verifiedClaims(t, keys, token)
}

// verifiedClaims verifies token against keys as a sidecar of tools.example
// would, and returns its claims.
func verifiedClaims(t *testing.T, keys *approval.KeySet, token string) *approval.Claims {
	t.Helper()
	v, err := approval.NewVerifier(approval.VerifierOptions{Keys: keys, Audience: "tools.example", CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := v.Verify(token)
	if err != nil {
		t.Fatalf("Verify(%.20s…) = %v, want a valid token", token, err)
	}
	return claims
}

// checkApproval checks that token is a valid approval of exactly p by
// operator.
func checkApproval(t *testing.T, jwks, token string, p store.Proposal, operator string) {
	t.Helper()
	c := verifyToken(t, jwks, token)
	got := []string{c.Kind, c.Subject, c.Tool, c.ArgsSHA256, c.ProposalID, c.RunID, c.Actor, c.Issuer}
	want := []string{approval.KindApproval, p.Agent, p.Tool, p.ArgsSHA256, p.ID, p.RunID, operator, "m1-cli"}
	if !slices.Equal(got, want) {
		t.Errorf("approval of %s: kind, sub, tool, args_sha256, proposal_id, run_id, act, iss = %q, want %q", p.ID, got, want)
	}
	if ttl := c.Expiry.Sub(c.IssuedAt); ttl != 5*time.Minute {
		t.Errorf("approval of %s: exp - iat = %v, want the default 5m", p.ID, ttl)
	}
	if b := bindCall(c, p.Tool, callSHA256(t, p.Tool, string(p.Args))); b.Result != validOK {
		t.Errorf("approval of %s does not bind the call: %+v", p.ID, b)
	}
}

func TestApproveByID(t *testing.T) {
	p1 := proposal(t, "p-1", "write_file", `{"path":"/tmp/x","content":"hi"}`, "write")
	p2 := proposal(t, "p-2", "read_file", `{"path":"/tmp/y"}`, "read")
	p3 := proposal(t, "p-3", "read_file", `{"path":"/tmp/z"}`, "read")
	f := newFakeOrchestrator(t, p1, p2, p3)
	env, jwks := approveEnv(t, f)

	r := m1With(t, env, "", "approve", "p-1", "p-2")
	if r.code != exitOK {
		t.Fatalf("m1 approve p-1 p-2: %s", r)
	}
	approvals, rejections := f.received()
	if len(approvals) != 2 || approvals[0].id != "p-1" || approvals[1].id != "p-2" || len(rejections) != 0 {
		t.Fatalf("orchestrator received approvals %v, rejections %v; want approvals of p-1 and p-2", approvals, rejections)
	}
	checkApproval(t, jwks, approvals[0].token, p1, "alice")
	checkApproval(t, jwks, approvals[1].token, p2, "alice")
	for _, want := range []string{
		"approved proposal p-1 (tool write_file, agent agent-7): executed",
		"  tool call call-p-1: succeeded, HTTP 200, decision dec-p-1",
		`  result: {"content":[{"type":"text","text":"done\u001b[2J"}]}`,
		"2 approved, 0 rejected, 0 skipped",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("m1 approve output lacks %q:\n%s", want, r)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.auth {
		if a != "Bearer orchestrator-admin-token" {
			t.Errorf("orchestrator got Authorization %q, want the bearer $M1_ADMIN_TOKEN", a)
		}
	}
}

// An approval whose call the sidecar denies, or that fails at the tool,
// is reported, counted apart and exits 1: the call did not run as approved.
func TestApproveCallNotSucceeded(t *testing.T) {
	f := newFakeOrchestrator(t,
		proposal(t, "p-1", "read_file", `{"path":"/tmp/a"}`, "read"),
		proposal(t, "p-2", "read_file", `{"path":"/tmp/b"}`, "read"),
		proposal(t, "p-3", "read_file", `{"path":"/tmp/c"}`, "read"))
	f.callStatus["p-2"], f.callStatus["p-3"] = store.CallDenied, store.CallFailed
	env, _ := approveEnv(t, f)
	r := m1With(t, env, "", "approve", "p-1", "p-2", "p-3")
	if r.code != exitDeny {
		t.Errorf("m1 approve with a denied and a failed call exited %d, want %d:\n%s", r.code, exitDeny, r)
	}
	for _, want := range []string{"tool call call-p-2: denied, HTTP 403", "tool call call-p-3: failed, HTTP 403", "3 approved, 0 rejected, 0 skipped, 2 approved calls did not succeed"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("m1 approve output lacks %q:\n%s", want, r)
		}
	}
}

// TestApproveRefuses checks the proposals m1 approve refuses to sign: the
// orchestrator receives nothing.
func TestApproveRefuses(t *testing.T) {
	good := proposal(t, "p-ok", "write_file", `{"path":"/tmp/x"}`, "write")
	tampered := proposal(t, "p-tampered", "write_file", `{"path":"/etc/passwd"}`, "write")
	tampered.ArgsSHA256 = good.ArgsSHA256 // the hash of other arguments
	duplicate := proposal(t, "p-dup", "write_file", `{"path":"/tmp/x"}`, "write")
	duplicate.Args = json.RawMessage(`{"path":"/tmp/x","path":"/etc/passwd"}`)
	done := proposal(t, "p-done", "write_file", `{"path":"/tmp/x"}`, "write")
	done.Status = store.ProposalExecuted
	badTool := proposal(t, "p-tool", "write_file", `{}`, "write")
	badTool.Tool = "write_file\u202e"
	f := newFakeOrchestrator(t, good, tampered, duplicate, done, badTool)
	env, _ := approveEnv(t, f)

	for _, tt := range []struct {
		name, id, wantStderr string
	}{
		{"args_sha256 of other arguments", "p-tampered", "args_sha256 mismatch: the orchestrator says " + good.ArgsSHA256 + ", the arguments hash to " + callSHA256(t, "write_file", `{"path":"/etc/passwd"}`)},
		{"arguments the sidecar refuses", "p-dup", "duplicate"},
		{"not pending", "p-done", "it is executed, not pending"},
		{"unknown proposal", "p-nope", "404 not_found"},
		{"bad tool name", "p-tool", `tool "write_file\u202e"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := m1With(t, env, "", "approve", tt.id)
			if r.code != exitError || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 approve %s: exit %d, want 2 and stderr with %q\n%s", tt.id, r.code, tt.wantStderr, r)
			}
			if strings.Contains(r.String(), "\u202e") {
				t.Errorf("m1 approve %s wrote a raw U+202E:\n%q", tt.id, r.String())
			}
		})
	}
	if approvals, _ := f.received(); len(approvals) != 0 {
		t.Errorf("orchestrator received approvals %v, want none", approvals)
	}

	// One bad proposal among good ones: the good ones are approved, the
	// exit status is still 2.
	r := m1With(t, env, "", "approve", "p-tampered", "p-ok")
	if approvals, _ := f.received(); r.code != exitError || len(approvals) != 1 || approvals[0].id != "p-ok" {
		t.Errorf("m1 approve p-tampered p-ok: exit %d, approvals %v; want 2 and only p-ok approved\n%s", r.code, approvals, r)
	}
}

func TestApproveRefusedByOrchestrator(t *testing.T) {
	p1 := proposal(t, "p-1", "write_file", `{"path":"/tmp/x"}`, "write")
	p2 := proposal(t, "p-2", "write_file", `{"path":"/tmp/y"}`, "write")
	f := newFakeOrchestrator(t, p1, p2)
	f.refuse["p-1"] = true
	env, _ := approveEnv(t, f)
	r := m1With(t, env, "", "approve", "p-1", "p-2")
	if r.code != exitDeny || !strings.Contains(r.stderr, "refused by the orchestrator: 400 args_mismatch") ||
		!strings.Contains(r.stdout, "1 approved, 0 rejected, 0 skipped, 1 refused by the orchestrator") {
		t.Errorf("m1 approve with a refusal: want exit 1, the refusal on stderr and the tally\n%s", r)
	}
}

func TestApproveAutoRisk(t *testing.T) {
	ps := []store.Proposal{
		proposal(t, "p-read-1", "read_file", `{"path":"a"}`, "read"),
		proposal(t, "p-write", "write_file", `{"path":"b"}`, "write"),
		proposal(t, "p-read-2", "list_dir", `{"path":"c"}`, "read"),
		proposal(t, "p-readish", "read_file", `{"path":"d"}`, "Read"),
		proposal(t, "p-none", "other", `{}`, ""),
		// A compromised orchestrator calls a write a read: the operator's
		// registry says otherwise, and nothing is signed.
		proposal(t, "p-liar", "write_file", `{"path":"e"}`, "read"),
		proposal(t, "p-unknown", "rm_rf", `{}`, "read"),
	}
	f := newFakeOrchestrator(t, ps...)
	env, jwks := approveEnv(t, f)

	r := m1With(t, env, "", "approve", "--auto-risk", "read")
	if r.code != exitOK {
		t.Fatalf("m1 approve --auto-risk read: %s", r)
	}
	approvals, _ := f.received()
	var ids []string
	for _, a := range approvals {
		ids = append(ids, a.id)
	}
	if !slices.Equal(ids, []string{"p-read-1", "p-read-2"}) {
		t.Fatalf("--auto-risk read approved %q, want exactly the read proposals", ids)
	}
	checkApproval(t, jwks, approvals[0].token, ps[0], "auto-risk:read")
	checkApproval(t, jwks, approvals[1].token, ps[2], "auto-risk:read")
	for _, want := range []string{"auto-approved (risk read) proposal p-read-1", "auto-approved (risk read) proposal p-read-2", "3 pending proposals of other risks left pending",
		`proposal p-liar (tool write_file) NOT auto-approved: the orchestrator says risk read, the tool registry says "write"`,
		`proposal p-unknown (tool rm_rf) NOT auto-approved: the orchestrator says risk read, the tool registry says ""`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r)
		}
	}
	if !strings.Contains(r.stdout, "auto-approved (risk read) proposal p-read-1 (tool read_file, agent agent-7): executed") ||
		!strings.Contains(r.stdout, "2 approved, 0 rejected, 2 skipped") {
		t.Errorf("stdout lacks the outcome:\n%s", r)
	}

	// Another risk needs --yes.
	if r := m1With(t, env, "", "approve", "--auto-risk", "write"); r.code != exitError || !strings.Contains(r.stderr, "--yes") {
		t.Errorf("m1 approve --auto-risk write: want exit 2 asking for --yes\n%s", r)
	}
	if approvals, _ := f.received(); len(approvals) != 2 {
		t.Fatalf("--auto-risk write without --yes posted approvals: %v", approvals[2:])
	}
	if r := m1With(t, env, "", "approve", "--auto-risk", "write", "--yes"); r.code != exitOK {
		t.Errorf("m1 approve --auto-risk write --yes: %s", r)
	}
	if approvals, _ := f.received(); len(approvals) != 3 || approvals[2].id != "p-write" {
		t.Errorf("--auto-risk write --yes approved %v, want p-write", approvals[2:])
	}
}

func TestApproveFlags(t *testing.T) {
	f := newFakeOrchestrator(t, proposal(t, "p-1", "read_file", `{}`, "read"))
	env, _ := approveEnv(t, f)
	without := func(names ...string) map[string]string {
		e := map[string]string{}
		for k, v := range env {
			if !slices.Contains(names, k) {
				e[k] = v
			}
		}
		return e
	}
	with := func(k, v string) map[string]string {
		e := without()
		e[k] = v
		return e
	}
	for _, tt := range []struct {
		name       string
		env        map[string]string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"no key", without("M1_SIGNING_KEY"), []string{"p-1"}, exitError, "a key is required"},
		{"no audience", without("M1_AUDIENCE"), []string{"p-1"}, exitError, "--aud (or $M1_AUDIENCE) is required"},
		{"no operator", without("USER"), []string{"p-1"}, exitError, "--operator (or $USER) is required"},
		{"operator flag", without("USER"), []string{"p-1", "--operator", "bob"}, exitOK, ""},
		{"ttl over the sidecars' limit", with("M1_APPROVAL_TOKEN_TTL_MINUTES", "5"), []string{"p-1", "--ttl", "6m"}, exitError, "token_ttl_exceeded"},
		{"ttl within the limit", with("M1_APPROVAL_TOKEN_TTL_MINUTES", "5"), []string{"p-1", "--ttl", "2m"}, exitOK, ""},
		{"ids and auto-risk", env, []string{"p-1", "--auto-risk", "read"}, exitError, "not both"},
		{"yes alone", env, []string{"p-1", "--yes"}, exitError, "--yes goes with --auto-risk"},
		{"bad orchestrator URL", env, []string{"p-1", "--orchestrator", "127.0.0.1:9193"}, exitError, "want http://host:port"},
		{"orchestrator unreachable", with("M1_ORCHESTRATOR_URL", "http://127.0.0.1:1"), []string{"p-1"}, exitError, "connection refused"},
		{"secret not set", without("M1_SIGNING_KEY"), []string{"p-1", "--secret-env", "NOPE"}, exitError, "$NOPE is not set"},
		{"interactive without a terminal", env, nil, exitError, "needs a terminal"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := m1With(t, tt.env, "", append([]string{"approve"}, tt.args...)...)
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 approve %q: exit %d, want %d with stderr %q\n%s", tt.args, r.code, tt.wantCode, tt.wantStderr, r)
			}
		})
		// Proposals approved by the successful cases are pending again.
		f.mu.Lock()
		f.proposals[0].Status = store.ProposalPending
		f.mu.Unlock()
	}
}

func TestReject(t *testing.T) {
	f := newFakeOrchestrator(t, proposal(t, "p-1", "write_file", `{}`, "write"))
	env, _ := approveEnv(t, f)
	for _, tt := range []struct {
		name       string
		args       []string
		wantCode   int
		wantOut    string
		wantStderr string
	}{
		{"no reason", []string{"p-1"}, exitError, "", "--reason is required"},
		{"blank reason", []string{"p-1", "--reason", "  \t"}, exitError, "", "--reason is required"},
		{"no id", []string{"--reason", "no"}, exitError, "", "missing arguments"},
		{"two ids", []string{"p-1", "p-2", "--reason", "no"}, exitError, "", "unexpected arguments"},
		{"rejected", []string{"p-1", "--reason", " writes outside the workspace "}, exitOK, "rejected proposal p-1 (tool write_file, agent agent-7): rejected\n  reason: writes outside the workspace\n", ""},
		{"no longer pending", []string{"p-1", "--reason", "again"}, exitDeny, "", "refused by the orchestrator: 409 not_pending"},
		{"unknown", []string{"p-9", "--reason", "no"}, exitDeny, "", "404 not_found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := m1With(t, env, "", append([]string{"reject"}, tt.args...)...)
			if r.code != tt.wantCode || !strings.Contains(r.stdout, tt.wantOut) || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 reject %q: exit %d, want %d, stdout with %q, stderr with %q\n%s", tt.args, r.code, tt.wantCode, tt.wantOut, tt.wantStderr, r)
			}
		})
	}
	_, rejections := f.received()
	want := []posted{{id: "p-1", reason: "writes outside the workspace"}, {id: "p-1", reason: "again"}, {id: "p-9", reason: "no"}}
	if !slices.Equal(rejections, want) {
		t.Errorf("orchestrator received rejections %+v, want %+v", rejections, want)
	}
}

func TestGrant(t *testing.T) {
	dir := t.TempDir()
	key := keysGen(t, dir, "--kid", "ops-1").PrivateKey
	jwks := filepath.Join(dir, "jwks.json")
	env := map[string]string{"M1_SIGNING_KEY": key, "M1_AUDIENCE": "tools.example", "USER": "alice", "SECRET": testSecret}
	base := []string{"grant", "--agent", "agent-7"}
	for _, tt := range []struct {
		name       string
		args       []string
		env        map[string]string // nil: env
		wantCode   int
		wantStderr string
	}{
		{"grant", []string{"--tools", "fs.*,run_command", "--max-uses", "3"}, nil, exitOK, "grant for agent agent-7"},
		{"one tool, one use", []string{"--tools", "read_file", "--max-uses", "1", "--ttl", "90s"}, nil, exitOK, "max uses:  1"},
		{"HS256", []string{"--tools", "a", "--max-uses", "1", "--secret-env", "SECRET"}, map[string]string{"M1_AUDIENCE": "tools.example", "SECRET": testSecret}, exitOK, "operator (none)"},
		{"no tools", []string{"--max-uses", "3"}, nil, exitError, "--tools is required"},
		{"no max-uses", []string{"--tools", "a"}, nil, exitError, "--max-uses is required"},
		{"max-uses 0", []string{"--tools", "a", "--max-uses", "0"}, nil, exitError, "--max-uses 0: must be at least 1"},
		{"negative max-uses", []string{"--tools", "a", "--max-uses", "-2"}, nil, exitError, "must be at least 1"},
		{"bare *", []string{"--tools", "*", "--max-uses", "1"}, nil, exitError, "bare *"},
		{"bare * in a list", []string{"--tools", "a,*", "--max-uses", "1"}, nil, exitError, "bare *"},
		{"empty element", []string{"--tools", "a,,b", "--max-uses", "1"}, nil, exitError, "empty element"},
		{"star inside", []string{"--tools", "a*b", "--max-uses", "1"}, nil, exitError, `"a*b"`},
		{"bad tool name", []string{"--tools", "fs/read", "--max-uses", "1"}, nil, exitError, `"fs/read"`},
		{"zero ttl", []string{"--tools", "a", "--max-uses", "1", "--ttl", "0s"}, nil, exitError, "at least 1s"},
		{"negative ttl", []string{"--tools", "a", "--max-uses", "1", "--ttl", "-5m"}, nil, exitError, "at least 1s"},
		{"ttl over the limit", []string{"--tools", "a", "--max-uses", "1", "--ttl", "10m"}, map[string]string{"M1_SIGNING_KEY": key, "M1_AUDIENCE": "t", "M1_APPROVAL_TOKEN_TTL_MINUTES": "5"}, exitError, "token_ttl_exceeded"},
		{"no audience", []string{"--tools", "a", "--max-uses", "1"}, map[string]string{"M1_SIGNING_KEY": key}, exitError, "--aud (or $M1_AUDIENCE) is required"},
		{"no key", []string{"--tools", "a", "--max-uses", "1"}, map[string]string{"M1_AUDIENCE": "t"}, exitError, "a key is required"},
		{"positional argument", []string{"--tools", "a", "--max-uses", "1", "extra"}, nil, exitError, "unexpected arguments"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.env
			if e == nil {
				e = env
			}
			r := m1With(t, e, "", append(slices.Clone(base), tt.args...)...)
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Fatalf("m1 grant %q: exit %d, want %d with stderr %q\n%s", tt.args, r.code, tt.wantCode, tt.wantStderr, r)
			}
			if tt.wantCode != exitOK {
				if r.stdout != "" {
					t.Errorf("m1 grant %q: stdout %q on failure, want nothing", tt.args, r.stdout)
				}
				return
			}
			token, ok := strings.CutSuffix(r.stdout, "\n")
			if !ok || strings.ContainsAny(token, " \n") {
				t.Fatalf("m1 grant %q: stdout %q, want only the token", tt.args, r.stdout)
			}
			if tt.name == "HS256" {
				return // no JWKS to verify with; m1 token inspect covers HS256
			}
			if c := verifyToken(t, jwks, token); c.Kind != approval.KindGrant || c.Subject != "agent-7" || c.Actor != "alice" || c.MaxUses < 1 || len(c.Tools) == 0 {
				t.Errorf("m1 grant %q: claims %+v", tt.args, c)
			}
		})
	}

	r := m1With(t, env, "", "grant", "--agent", "agent-7", "--tools", "fs.*, run_command", "--max-uses", "3", "--run", "run-9", "--ttl", "2m")
	if r.code != exitOK {
		t.Fatalf("m1 grant: %s", r)
	}
	c := verifyToken(t, jwks, strings.TrimSpace(r.stdout))
	if !slices.Equal(c.Tools, []string{"fs.*", "run_command"}) || c.MaxUses != 3 || c.RunID != "run-9" || c.Expiry.Sub(c.IssuedAt) != 2*time.Minute {
		t.Errorf("grant claims: tools %q, max_uses %d, run_id %q, ttl %v; want [fs.* run_command], 3, run-9, 2m", c.Tools, c.MaxUses, c.RunID, c.Expiry.Sub(c.IssuedAt))
	}
	for _, tool := range []string{"fs.read", "run_command"} {
		if !c.MatchesTool(tool) {
			t.Errorf("grant does not match %s", tool)
		}
	}
	if c.MatchesTool("run_commands") {
		t.Error("grant matches run_commands")
	}
	for _, want := range []string{"tools:     fs.*, run_command", "max uses:  3", "run:       run-9", "m1 revoke --jti " + c.ID} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("m1 grant summary lacks %q:\n%s", want, r.stderr)
		}
	}
}

func TestApproveRejectGrantHelp(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"approve", "-h"}, "$M1_ORCHESTRATOR_URL"},
		{[]string{"help", "approve"}, "--auto-risk risk"},
		{[]string{"reject", "-h"}, "--reason"},
		{[]string{"grant", "-h"}, "$M1_SIGNING_KEY"},
	} {
		if r := m1With(t, nil, "", tt.args...); r.code != exitOK || !strings.Contains(r.stdout, tt.want) {
			t.Errorf("m1 %s: want exit 0 and %q\n%s", strings.Join(tt.args, " "), tt.want, r)
		}
	}
}
