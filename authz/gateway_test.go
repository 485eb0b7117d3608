package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/gateway"
)

// agentPrincipal is the peer identity checkReq reports (Envoy's mTLS
// source principal).
const agentPrincipal = "spiffe://cluster.local/ns/agents/sa/agent-42"

// fakeOrchestrator is the orchestrator's side of DESIGN §10 in memory:
// proposals by call, an operator's decisions, claims that hand a held
// token out once. Tests set hand to make it misbehave.
type fakeOrchestrator struct {
	mu        sync.Mutex
	proposals map[string]*fakeProposal // by call key
	n         int
	claims    int
	files     []gateway.FileRequest
	limited   bool
	// hand, when set, answers every claim with this token (a
	// compromised orchestrator).
	hand string
}

type fakeProposal struct {
	id, status, token, reason string
}

func newFakeOrchestrator() *fakeOrchestrator {
	return &fakeOrchestrator{proposals: map[string]*fakeProposal{}}
}

func callKey(principal, tool, sum string) string { return principal + "\x00" + tool + "\x00" + sum }

func (o *fakeOrchestrator) Claim(_ context.Context, r gateway.ClaimRequest) (gateway.Answer, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.claims++
	if o.hand != "" {
		return gateway.Answer{Status: gateway.StatusApproved, ProposalID: "prop_forged", Token: o.hand}, nil
	}
	p := o.proposals[callKey(r.Principal, r.Tool, r.ArgsSHA256)]
	switch {
	case p == nil:
		return gateway.Answer{Status: gateway.StatusNone}, nil
	case p.status == "approved":
		p.status = "claimed"
		return gateway.Answer{Status: gateway.StatusApproved, ProposalID: p.id, Token: p.token}, nil
	case p.status == "pending":
		return gateway.Answer{Status: gateway.StatusPending, ProposalID: p.id, RetryAfter: 3}, nil
	case p.status == "rejected":
		return gateway.Answer{Status: gateway.StatusRejected, ProposalID: p.id, Reason: p.reason}, nil
	}
	return gateway.Answer{Status: gateway.StatusNone}, nil
}

func (o *fakeOrchestrator) File(_ context.Context, r gateway.FileRequest) (gateway.Answer, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.limited {
		return gateway.Answer{}, &gateway.LimitError{RetryAfter: 42 * time.Second, Reason: "10 proposals of this principal are pending"}
	}
	if err := r.Validate(); err != nil {
		return gateway.Answer{}, err
	}
	o.files = append(o.files, r)
	k := callKey(r.Principal, r.Tool, r.ArgsSHA256)
	if p := o.proposals[k]; p == nil || p.status != "pending" {
		o.n++
		o.proposals[k] = &fakeProposal{id: fmt.Sprintf("prop_%d", o.n), status: "pending"}
	}
	return gateway.Answer{Status: gateway.StatusPending, ProposalID: o.proposals[k].id, RetryAfter: 3}, nil
}

// decide approves (token) or rejects (reason) the call's proposal.
func (o *fakeOrchestrator) decide(t *testing.T, principal, tool, args, token, reason string) string {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.proposals[callKey(principal, tool, sha(args))]
	if p == nil || p.status != "pending" {
		t.Fatalf("no pending proposal of %s %s %s", principal, tool, args)
	}
	p.status, p.token, p.reason = "approved", token, reason
	if token == "" {
		p.status = "rejected"
	}
	return p.id
}

// gatewayFixture is a service with keys that holds approvals at the
// gateway through orch.
func gatewayFixture(t *testing.T, orch Approvals) *tokenFixture {
	t.Helper()
	f := newTokenFixture(t)
	f.opts.Gateway = GatewayOptions{Approvals: orch, PublicURL: "https://m1.example.com/", Timeout: time.Second}
	return f
}

// heldToken mints the approval an operator signs for principal's call.
func (f *tokenFixture) heldToken(t *testing.T, principal, tool, args string, mod func(*approval.Claims)) string {
	t.Helper()
	return f.mint(t, func(c *approval.Claims) {
		c.Subject, c.Tool, c.ArgsSHA256, c.RunID, c.ProposalID = principal, tool, sha(args), "", "prop_1"
		if mod != nil {
			mod(c)
		}
	})
}

func restWrite(args string) *authv3.AttributeContext_HttpRequest {
	return httpReq("POST", "/tools/write_file", args)
}

func TestGatewayREST(t *testing.T) {
	orch := newFakeOrchestrator()
	f := gatewayFixture(t, orch)
	const args = `{"path":"/tmp/x"}`
	r := check(t, f.Service, restWrite(args))
	if r.allowed || r.status != 403 || r.body.Error != deny.ApprovalPending || r.body.ProposalID != "prop_1" {
		t.Fatalf("Check(no token) = %d %s, want 403 approval_pending naming prop_1", r.status, r.raw)
	}
	if got := deniedHeader(r, "retry-after"); got != "3" {
		t.Errorf("retry-after = %q, want the orchestrator's 3", got)
	}
	if len(orch.files) != 1 || orch.files[0].Principal != agentPrincipal || orch.files[0].DecisionID != r.body.DecisionID ||
		string(orch.files[0].Args) != args {
		t.Fatalf("filed %+v, want the call of %s with its decision id and exact args", orch.files, agentPrincipal)
	}
	// Retried before the operator decides: the same proposal.
	if r := check(t, f.Service, restWrite(`{ "path" : "/tmp/x" }`)); r.body.Error != deny.ApprovalPending || r.body.ProposalID != "prop_1" {
		t.Fatalf("Check(retry, pending) = %s, want approval_pending prop_1", r.raw)
	}
	orch.decide(t, agentPrincipal, "write_file", args, f.heldToken(t, agentPrincipal, "write_file", args, nil), "")
	r = check(t, f.Service, restWrite(args))
	if !r.allowed {
		t.Fatalf("Check(retry, approved) = %s, want allow", r.raw)
	}
	if !hasHeader(r.resp.GetOkResponse().GetHeaders(), HeaderPrincipal, agentPrincipal) {
		t.Errorf("allow headers %v, want x-m1-principal %s", r.resp.GetOkResponse().GetHeaders(), agentPrincipal)
	}
	// A third identical call: the approval was used; a new proposal.
	r = check(t, f.Service, restWrite(args))
	if r.body.Error != deny.ApprovalPending || r.body.ProposalID != "prop_2" {
		t.Fatalf("Check(third call) = %s, want approval_pending with a new proposal prop_2", r.raw)
	}
}

func TestGatewayMCPAnswersURLElicitation(t *testing.T) {
	orch := newFakeOrchestrator()
	f := gatewayFixture(t, orch)
	for _, tc := range []struct{ name, id, wantID string }{
		{"number id", `7`, `7`},
		{"string id", `"req-\u00e9"`, `"req-\u00e9"`},
		{"no id", ``, `null`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idMember := ""
			if tc.id != "" {
				idMember = `"id":` + tc.id + `,`
			}
			body := `{"jsonrpc":"2.0",` + idMember + `"method":"tools/call","params":{"name":"write_file","arguments":{"path":"/tmp/m"}}}`
			r := check(t, f.Service, httpReq("POST", "/mcp", body))
			if r.allowed || r.status != 200 || r.resp.GetStatus().GetMessage() != deny.ApprovalPending {
				t.Fatalf("Check(MCP, no token) = %v %d %s, want a deny with HTTP 200", r.allowed, r.status, r.raw)
			}
			want := `{"jsonrpc":"2.0","id":` + tc.wantID + `,"error":{"code":-32042,"message":"approval required","data":{"elicitations":[{"mode":"url","elicitationId":"prop_1","url":"https://m1.example.com/#/proposals/prop_1","message":"`
			if !strings.HasPrefix(r.raw, want) {
				t.Fatalf("MCP deny body\n%s\nwant it to start\n%s", r.raw, want)
			}
			var doc struct {
				Error struct {
					Data struct {
						Elicitations []map[string]string `json:"elicitations"`
					} `json:"data"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(r.raw), &doc); err != nil || len(doc.Error.Data.Elicitations) != 1 ||
				!strings.Contains(doc.Error.Data.Elicitations[0]["message"], "prop_1") {
				t.Fatalf("MCP deny body %s: %v; want one elicitation whose message names the proposal", r.raw, err)
			}
			if deniedHeader(r, "content-type") != "application/json" {
				t.Errorf("content-type = %q, want application/json", deniedHeader(r, "content-type"))
			}
		})
	}
}

func TestGatewayBinding(t *testing.T) {
	const args = `{"path":"/tmp/x"}`
	for _, tc := range []struct {
		name string
		mod  func(*approval.Claims)
		code string
	}{
		{"other args", func(c *approval.Claims) { c.ArgsSHA256 = sha(`{"path":"/etc/passwd"}`) }, deny.ArgsMismatch},
		{"other tool", func(c *approval.Claims) { c.Tool = "delete_file" }, deny.ToolMismatch},
		{"other principal", func(c *approval.Claims) { c.Subject = "spiffe://cluster.local/ns/agents/sa/other" }, deny.TokenInvalid},
		{"other audience", func(c *approval.Claims) { c.Audience = []string{"elsewhere"} }, deny.AudienceMismatch},
		{"expired", func(c *approval.Claims) {
			c.IssuedAt, c.NotBefore, c.Expiry = time.Now().Add(-4*time.Minute), time.Now().Add(-4*time.Minute), time.Now().Add(-2*time.Minute)
		}, deny.TokenExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orch := newFakeOrchestrator()
			f := gatewayFixture(t, orch)
			// A compromised orchestrator hands out a token for another call.
			orch.hand = f.heldToken(t, agentPrincipal, "write_file", args, tc.mod)
			r := check(t, f.Service, restWrite(args))
			if r.allowed || r.body.Error != tc.code {
				t.Fatalf("Check(held approval with %s) = %v %s, want deny %s", tc.name, r.allowed, r.raw, tc.code)
			}
		})
	}
	t.Run("forged", func(t *testing.T) {
		orch := newFakeOrchestrator()
		f := gatewayFixture(t, orch)
		other, err := approval.GenerateKey("EdDSA", "k1") // same kid, another key
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		orch.hand, _ = approval.Mint(other, approval.Claims{Issuer: "m1-orchestrator", Subject: agentPrincipal, Audience: []string{"tools.local"},
			IssuedAt: now, NotBefore: now, Expiry: now.Add(time.Minute), Kind: approval.KindApproval, Tool: "write_file", ArgsSHA256: sha(args), ID: "j"})
		if r := check(t, f.Service, restWrite(args)); r.allowed || r.body.Error != deny.TokenInvalid {
			t.Fatalf("Check(a token the orchestrator signed) = %s, want token_invalid", r.raw)
		}
	})
	t.Run("handed out twice", func(t *testing.T) {
		orch := newFakeOrchestrator()
		f := gatewayFixture(t, orch)
		orch.hand = f.heldToken(t, agentPrincipal, "write_file", args, nil)
		if r := check(t, f.Service, restWrite(args)); !r.allowed {
			t.Fatalf("Check(held approval) = %s, want allow", r.raw)
		}
		if r := check(t, f.Service, restWrite(args)); r.allowed || r.body.Error != deny.TokenReplayed {
			t.Fatalf("Check(the same approval handed out again) = %s, want token_replayed: single use holds", r.raw)
		}
	})
	t.Run("a retry with other arguments files its own proposal", func(t *testing.T) {
		orch := newFakeOrchestrator()
		f := gatewayFixture(t, orch)
		check(t, f.Service, restWrite(args))
		orch.decide(t, agentPrincipal, "write_file", args, f.heldToken(t, agentPrincipal, "write_file", args, nil), "")
		if r := check(t, f.Service, restWrite(`{"path":"/tmp/y"}`)); r.allowed || r.body.Error != deny.ApprovalPending || r.body.ProposalID != "prop_2" {
			t.Fatalf("Check(other args) = %s, want approval_pending for a new proposal", r.raw)
		}
		if r := check(t, f.Service, restWrite(args)); !r.allowed {
			t.Fatalf("Check(the approved call) = %s, want allow: the other call did not claim it", r.raw)
		}
	})
}

func TestGatewayRejected(t *testing.T) {
	orch := newFakeOrchestrator()
	f := gatewayFixture(t, orch)
	const args = `{"path":"/tmp/x"}`
	check(t, f.Service, restWrite(args))
	orch.decide(t, agentPrincipal, "write_file", args, "", "not on a Friday")
	for _, req := range []*authv3.AttributeContext_HttpRequest{restWrite(args), writeReq(args)} {
		r := check(t, f.Service, req)
		if r.allowed || r.status != 403 || r.body.Error != deny.ApprovalRejected || !strings.Contains(r.body.Reason, "not on a Friday") || r.body.ProposalID != "prop_1" {
			t.Fatalf("Check(%s, rejected) = %d %s, want 403 approval_rejected with the operator's reason", req.Path, r.status, r.raw)
		}
	}
}

func TestGatewayRateLimited(t *testing.T) {
	orch := newFakeOrchestrator()
	orch.limited = true
	f := gatewayFixture(t, orch)
	r := check(t, f.Service, restWrite(`{"path":"/tmp/x"}`))
	if r.allowed || r.status != 429 || r.body.Error != deny.RateLimited || deniedHeader(r, "retry-after") != "42" {
		t.Fatalf("Check(filing over the principal's limit) = %d %s %s, want 429 rate_limited, retry-after 42", r.status, r.raw, deniedHeader(r, "retry-after"))
	}
}

// TestGatewayTrust: no trusted principal, no gateway; a principal header
// counts only when configured.
func TestGatewayTrust(t *testing.T) {
	const args = `{"path":"/tmp/x"}`
	noPeer := func(r *authv3.AttributeContext_HttpRequest) *authv3.CheckRequest {
		req := checkReq(r)
		req.Attributes.Source = nil
		return req
	}
	run := func(t *testing.T, f *tokenFixture, req *authv3.CheckRequest) result {
		t.Helper()
		resp, _ := f.Check(context.Background(), req)
		return result{allowed: resp.GetStatus().GetCode() == 0, status: int(resp.GetDeniedResponse().GetStatus().GetCode()), raw: resp.GetDeniedResponse().GetBody()}
	}
	t.Run("no trusted principal", func(t *testing.T) {
		orch := newFakeOrchestrator()
		f := gatewayFixture(t, orch)
		r := run(t, f, noPeer(restWrite(args)))
		if r.allowed || r.status != 401 || !strings.Contains(r.raw, `"token_missing"`) || orch.claims != 0 || len(orch.files) != 0 {
			t.Fatalf("Check(no principal) = %d %s, %d claims, %d filings; want 401 token_missing and no call to the orchestrator", r.status, r.raw, orch.claims, len(orch.files))
		}
	})
	t.Run("the gRPC peer's identity is not the call's", func(t *testing.T) {
		orch := newFakeOrchestrator()
		f := gatewayFixture(t, orch)
		f.opts.PeerPrincipal = func(context.Context) string { return "spiffe://cluster.local/ns/tools/sa/envoy" }
		r := run(t, f, noPeer(restWrite(args)))
		if r.allowed || r.status != 401 || !strings.Contains(r.raw, `"token_missing"`) || orch.claims != 0 || len(orch.files) != 0 {
			t.Fatalf("Check(only the Envoy's mTLS identity) = %d %s, %d claims, %d filings; want 401 token_missing and no call to the orchestrator", r.status, r.raw, orch.claims, len(orch.files))
		}
	})
	t.Run("client-sent principal header ignored", func(t *testing.T) {
		orch := newFakeOrchestrator()
		f := gatewayFixture(t, orch)
		for _, h := range []string{"x-m1-principal", "x-agent-id"} {
			r := run(t, f, noPeer(httpReq("POST", "/tools/write_file", args, h, "spiffe://forged")))
			if r.allowed || r.status != 401 || orch.claims != 0 {
				t.Fatalf("Check(%s sent by the client, not configured) = %d %s; want 401 token_missing and no claim", h, r.status, r.raw)
			}
		}
	})
	t.Run("configured principal header", func(t *testing.T) {
		orch := newFakeOrchestrator()
		f := gatewayFixture(t, orch)
		f.opts.PrincipalHeader = "x-agent-id"
		r := run(t, f, noPeer(httpReq("POST", "/tools/write_file", args, "x-agent-id", "agent@example.com")))
		if r.allowed || !strings.Contains(r.raw, deny.ApprovalPending) || len(orch.files) != 1 || orch.files[0].Principal != "agent@example.com" {
			t.Fatalf("Check(principal from the configured header) = %s, filings %+v; want approval_pending filed for agent@example.com", r.raw, orch.files)
		}
		// It also overrides the peer's identity, and an invalid value counts as none.
		orch.files = nil
		run(t, f, checkReq(httpReq("POST", "/tools/write_file", args, "x-agent-id", "bob")))
		if len(orch.files) != 1 || orch.files[0].Principal != "bob" {
			t.Fatalf("filings %+v, want one for bob (the header over the peer)", orch.files)
		}
		orch.files = nil
		r = run(t, f, noPeer(httpReq("POST", "/tools/write_file", args, "x-agent-id", "has space")))
		if r.status != 401 || len(orch.files) != 0 {
			t.Fatalf("Check(invalid header value) = %d %s, want 401 token_missing, nothing filed", r.status, r.raw)
		}
	})
	t.Run("off without approvals", func(t *testing.T) {
		f := newTokenFixture(t)
		if r := check(t, f.Service, restWrite(args)); r.status != 401 || r.body.Error != deny.PolicyDenied || r.body.Reason != "token_missing" {
			t.Fatalf("Check(no gateway) = %d %s, want 401 token_missing", r.status, r.raw)
		}
	})
	t.Run("a presented token is never replaced", func(t *testing.T) {
		orch := newFakeOrchestrator()
		f := gatewayFixture(t, orch)
		r := check(t, f.Service, withToken(restWrite(args), f.mint(t, func(c *approval.Claims) { c.Tool = "delete_file" })))
		if r.body.Error != deny.ToolMismatch || orch.claims != 0 {
			t.Fatalf("Check(wrong token) = %s, %d claims; want tool_mismatch and no claim", r.raw, orch.claims)
		}
	})
}

// TestGatewayFaults: an orchestrator that is down, slow or answers garbage
// leaves the call denied token_missing, within the gateway's timeout.
func TestGatewayFaults(t *testing.T) {
	const timeout = 150 * time.Millisecond
	down := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr
	}
	serve := func(h http.HandlerFunc) string {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv.URL
	}
	for _, tc := range []struct {
		name string
		url  func() string
	}{
		{"down", down},
		{"slow", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body) // so that the server notices the client hang up
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
			})
		}},
		{"garbage", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>not json</html>")) })
		}},
		{"approved without a token", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) {
				w.Write([]byte(`{"status":"approved","proposal_id":"p"}`))
			})
		}},
		{"unknown status", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"status":"allow"}`)) })
		}},
		{"unknown field", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"status":"none","allow":true}`)) })
		}},
		{"huge", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) {
				w.Write([]byte(`{"status":"rejected","proposal_id":"p","reason":"` + strings.Repeat("x", 1<<20) + `"}`))
			})
		}},
		{"server error", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
		}},
		{"redirect", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "http://127.0.0.1:1/", http.StatusTemporaryRedirect)
			})
		}},
		{"filing answers none", func() string {
			return serve(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"status":"none"}`)) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, err := gateway.NewClient(gateway.ClientOptions{BaseURL: tc.url(), Token: "t", Timeout: timeout})
			if err != nil {
				t.Fatal(err)
			}
			f := newTokenFixture(t)
			f.opts.Gateway = GatewayOptions{Approvals: client, PublicURL: "https://m1.example.com", Timeout: timeout}
			for _, req := range []*authv3.AttributeContext_HttpRequest{restWrite(`{"path":"/tmp/x"}`), writeReq(`{"path":"/tmp/x"}`)} {
				start := time.Now()
				r := check(t, f.Service, req)
				took := time.Since(start)
				if r.allowed || r.status != 401 || r.body.Error != deny.PolicyDenied || r.body.Reason != "token_missing" {
					t.Fatalf("Check(%s, orchestrator %s) = %v %d %s, want 401 token_missing", req.Path, tc.name, r.allowed, r.status, r.raw)
				}
				// Bounded: the gateway's timeout, with room for a loaded machine;
				// never Envoy's whole ext_authz timeout or a hang.
				if took > timeout+2*time.Second {
					t.Fatalf("Check(orchestrator %s) took %v, want about %v at most", tc.name, took, timeout)
				}
			}
		})
	}
}
