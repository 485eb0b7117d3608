package test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	denycode "github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/orchestrator"
)

// gatewayMesh is DESIGN §10 on loopback: the demo tool, behind one or
// more m1 dev-proxy + m1-authz pairs that hold approvals at the gateway,
// and m1-orchestrator without a planner. The agent's identity comes in
// the x-agent-id header, which the sidecars trust (M1_PRINCIPAL_HEADER)
// as they would the header Envoy's jwt_authn sets.
type gatewayMesh struct {
	dir, workspace string
	tool           *proc
	proxies        []string // base URLs, one per sidecar
	orch           *orchestrator.Client
	orchProc       *proc
	cliEnv         []string
}

const (
	gatewayPublicURL = "https://m1.example.test"
	principalHeader  = "x-agent-id"
)

func startGatewayMesh(t *testing.T, sidecars int) *gatewayMesh {
	t.Helper()
	m := &gatewayMesh{dir: t.TempDir()}
	m.workspace = filepath.Join(m.dir, "workspace")
	if err := os.MkdirAll(m.workspace, 0o755); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(m.dir, "keys")
	if out, err := exec.Command(cliPath, "keys", "gen", "--out", keys, "--kid", "operator-1").CombinedOutput(); err != nil {
		t.Fatalf("m1 keys gen: %v\n%s", err, out)
	}
	jwks := filepath.Join(keys, "jwks.json")

	orchAddr := freeAddr(t)
	const adminToken, sidecarToken = "gateway-admin-token", "gateway-sidecar-token"
	m.orchProc = startProc(t, "m1-orchestrator", orchPath, []string{
		"--addr", orchAddr, "--data-dir", filepath.Join(m.dir, "orchestrator"), "--admin-token", adminToken,
		"--approvals-token", sidecarToken, "--jwks-file", jwks, "--audience", loopAudience,
	}, nil) // no planner: approvals only
	m.orch = &orchestrator.Client{BaseURL: "http://" + orchAddr, Token: adminToken}
	testenv.Eventually(t, startTimeout, "m1-orchestrator /health", func() bool {
		select {
		case <-m.orchProc.exited:
			t.Fatalf("m1-orchestrator exited:\n%s", m.orchProc)
		default:
		}
		resp, err := http.Get(m.orch.BaseURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	m.tool = startProc(t, "m1-demo-tool", toolPath, []string{"--listen", "127.0.0.1:0", "--dir", m.workspace, "--log-level", "debug"}, nil)
	toolAddr := m.tool.firstLine(t)
	for i := range sidecars {
		s := startSidecar(t, []string{"--jwks-file", jwks, "--audience", loopAudience,
			"--approvals-url", m.orch.BaseURL, "--approvals-token", sidecarToken, "--approvals-public-url", gatewayPublicURL,
			"--principal-header", principalHeader, "--pod-name", "tools-" + string(rune('a'+i)),
			// The tests check what is decided, not how fast: a loaded CI
			// machine running race-instrumented binaries gets room.
			"--approvals-timeout", "3s"})
		addr := freeAddr(t)
		proxy := startProc(t, "m1 dev-proxy", cliPath, []string{"dev-proxy", "--listen", addr, "--authz", s.GRPCAddr,
			"--upstream", "http://" + toolAddr, "--timeout", "10s"}, nil)
		proxy.firstLine(t)
		m.proxies = append(m.proxies, "http://"+addr)
	}
	m.cliEnv = []string{
		"M1_ORCHESTRATOR_URL=" + m.orch.BaseURL, "M1_ADMIN_TOKEN=" + adminToken,
		"M1_SIGNING_KEY=" + filepath.Join(keys, "operator-1.jwk"), "M1_AUDIENCE=" + loopAudience, "USER=alice",
	}
	return m
}

// m1 runs the CLI with the mesh's operator environment.
func (m *gatewayMesh) m1(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliPath, args...)
	cmd.Env = append(cleanEnv(), m.cliEnv...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatalf("m1 %v: %v", args, err)
	}
	return 0, string(out)
}

// approve runs m1 approve ID and checks that it showed the proposal's
// origin beside its arguments and held the approval.
func (m *gatewayMesh) approve(t *testing.T, id, principal string) {
	t.Helper()
	code, out := m.m1(t, "approve", id)
	if code != 0 {
		t.Fatalf("m1 approve %s = exit %d\n%s\norchestrator:\n%s", id, code, out, m.orchProc)
	}
	for _, want := range []string{"from:        sidecar m1-authz/" + loopAudience + ", pod tools-", "principal:   " + principal,
		"arguments (RFC 8785 canonical form, as hashed and signed):", "approved proposal " + id, "held for the MCP client's retry"} {
		if !strings.Contains(out, want) {
			t.Errorf("m1 approve %s output lacks %q:\n%s", id, want, out)
		}
	}
}

// toolRuns counts the calls of tool that reached the demo tool's code
// (its debug log has one line per call).
func (m *gatewayMesh) toolRuns(tool string) int {
	n := 0
	for _, l := range strings.Split(m.tool.String(), "\n") {
		if strings.Contains(l, `"msg":"demotool call"`) && strings.Contains(l, `"tool":"`+tool+`"`) {
			n++
		}
	}
	return n
}

// restResult is a REST call's answer.
type restResult struct {
	status     int
	retryAfter string
	body       struct {
		Error, Reason, ProposalID string
	}
	raw string
}

// rest calls POST /tools/{tool} through proxy as principal ("" sends no
// principal header).
func rest(t *testing.T, proxy, principal, tool, args string) restResult {
	t.Helper()
	req, _ := http.NewRequest("POST", proxy+"/tools/"+tool, strings.NewReader(args))
	req.Header.Set("Content-Type", "application/json")
	if principal != "" {
		req.Header.Set(principalHeader, principal)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := restResult{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), raw: string(b)}
	var body struct {
		Error      string `json:"error"`
		Reason     string `json:"reason"`
		ProposalID string `json:"proposal_id"`
	}
	_ = json.Unmarshal(b, &body)
	r.body.Error, r.body.Reason, r.body.ProposalID = body.Error, body.Reason, body.ProposalID
	return r
}

// pending checks that r is a 403 approval_pending deny with a retry-after
// and returns its proposal.
func pending(t *testing.T, what string, r restResult) string {
	t.Helper()
	if r.status != 403 || r.body.Error != denycode.ApprovalPending || r.body.ProposalID == "" || r.retryAfter == "" {
		t.Fatalf("%s = %d %s (retry-after %q), want 403 approval_pending with a proposal_id and retry-after", what, r.status, r.raw, r.retryAfter)
	}
	return r.body.ProposalID
}

// agentTransport adds the agent's identity to every request, as Envoy's
// jwt_authn would after authenticating it.
type agentTransport struct{ principal string }

func (a agentTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(principalHeader, a.principal)
	return http.DefaultTransport.RoundTrip(r)
}

// TestGatewayApprovalsMCP: the official MCP Go SDK's client, unmodified,
// calls write_file through the dev proxy, m1-authz and the demo tool; it
// gets MCP's URL-elicitation-required error naming the proposal; the
// operator approves it with m1 approve; the client's retry of the same
// call runs the tool exactly once; a third identical call files a new
// proposal.
func TestGatewayApprovalsMCP(t *testing.T) {
	m := startGatewayMesh(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*startTimeout)
	defer cancel()
	const principal = "ide-agent@example.com"
	tr := &mcp.StreamableClientTransport{
		Endpoint:             m.proxies[0] + "/mcp",
		HTTPClient:           &http.Client{Transport: agentTransport{principal}},
		DisableStandaloneSSE: true,
		MaxRetries:           -1,
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "m1-gateway-test", Version: "1"}, nil).Connect(ctx, tr, nil)
	if err != nil {
		t.Fatalf("Connect through M1: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	call := &mcp.CallToolParams{Name: "write_file", Arguments: map[string]any{"path": "gateway.txt", "content": "approved at the gateway\n"}}

	elicited := func(what string) (id string) {
		t.Helper()
		res, err := cs.CallTool(ctx, call)
		var rpcErr *jsonrpc.Error
		if !errors.As(err, &rpcErr) || rpcErr.Code != -32042 {
			t.Fatalf("%s = %+v, %v; want the JSON-RPC error -32042 (URL elicitation required)", what, res, err)
		}
		var data struct {
			Elicitations []struct {
				Mode, ElicitationID, URL, Message string
			} `json:"elicitations"`
		}
		if err := json.Unmarshal(rpcErr.Data, &data); err != nil || len(data.Elicitations) != 1 {
			t.Fatalf("%s: error data %s: %v; want one elicitation", what, rpcErr.Data, err)
		}
		e := data.Elicitations[0]
		if e.Mode != "url" || e.ElicitationID == "" || e.URL != gatewayPublicURL+"/#/proposals/"+e.ElicitationID || !strings.Contains(e.Message, e.ElicitationID) {
			t.Fatalf("%s: elicitation %+v; want mode url and the proposal's URL under %s", what, e, gatewayPublicURL)
		}
		if rpcErr.Message != "approval required" {
			t.Errorf("%s: error message %q, want \"approval required\"", what, rpcErr.Message)
		}
		return e.ElicitationID
	}
	id := elicited("write_file without an approval")
	if again := elicited("write_file retried before the approval"); again != id {
		t.Fatalf("the retry named proposal %s, want the pending %s", again, id)
	}
	if n := m.toolRuns("write_file"); n != 0 {
		t.Fatalf("write_file ran %d times before the approval", n)
	}
	p, err := m.orch.Proposal(ctx, id)
	if err != nil || p.Origin != store.OriginSidecar || p.Agent != principal || p.Status != store.ProposalPending || p.DecisionID == "" {
		t.Fatalf("proposal %s = %+v, %v; want a pending sidecar proposal of %s", id, p, err, principal)
	}

	m.approve(t, id, principal)
	res, err := cs.CallTool(ctx, call)
	if err != nil || res.IsError {
		t.Fatalf("write_file retried after the approval = %+v, %v; want the tool's result", res, err)
	}
	if n := m.toolRuns("write_file"); n != 1 {
		t.Fatalf("write_file ran %d times, want exactly once", n)
	}
	if got, err := os.ReadFile(filepath.Join(m.workspace, "gateway.txt")); err != nil || string(got) != "approved at the gateway\n" {
		t.Fatalf("gateway.txt = %q, %v", got, err)
	}
	if p, _ := m.orch.Proposal(ctx, id); p.Status != store.ProposalClaimed || !strings.HasPrefix(p.ClaimedBy, "m1-authz/") {
		t.Fatalf("proposal after the retry = %+v, want claimed by the sidecar", p)
	}

	third := elicited("a third identical call")
	if third == id {
		t.Fatalf("the third call named the used proposal %s, want a new one", id)
	}
	if n := m.toolRuns("write_file"); n != 1 {
		t.Fatalf("write_file ran %d times after the third call, want still once", n)
	}
}

// TestGatewayApprovalsREST is the same over REST, with the binding: a
// retry with other arguments, another tool or another principal does not
// claim the approval; a rejection is answered with its reason; without a
// trusted principal nothing changes; the orchestrator down means
// token_missing.
func TestGatewayApprovalsREST(t *testing.T) {
	m := startGatewayMesh(t, 1)
	proxy := m.proxies[0]
	const principal, args = "spiffe://example.org/ns/agents/sa/builder", `{"path":"rest.txt","content":"one"}`

	id := pending(t, "write_file without an approval", rest(t, proxy, principal, "write_file", args))
	if again := pending(t, "the same call again", rest(t, proxy, principal, "write_file", ` { "content" : "one", "path" : "rest.txt" } `)); again != id {
		t.Fatalf("an equivalent retry named proposal %s, want %s", again, id)
	}
	m.approve(t, id, principal)

	for _, tc := range []struct{ what, principal, tool, args string }{
		{"other arguments", principal, "write_file", `{"path":"rest.txt","content":"two"}`},
		{"another tool", principal, "run_command", args},
		{"another principal", "spiffe://example.org/ns/agents/sa/other", "write_file", args},
	} {
		if other := pending(t, "a call with "+tc.what, rest(t, proxy, tc.principal, tc.tool, tc.args)); other == id {
			t.Fatalf("a call with %s was answered with the approved proposal %s", tc.what, id)
		}
	}
	if r := rest(t, proxy, principal, "write_file", args); r.status != 200 {
		t.Fatalf("the approved call = %d %s, want 200", r.status, r.raw)
	}
	if n := m.toolRuns("write_file"); n != 1 {
		t.Fatalf("write_file ran %d times, want once", n)
	}
	if third := pending(t, "a third identical call", rest(t, proxy, principal, "write_file", args)); third == id {
		t.Fatalf("the third call named the used proposal %s", id)
	}

	// Rejected: the operator's reason reaches the client.
	rej := pending(t, "a call to reject", rest(t, proxy, principal, "write_file", `{"path":"no.txt","content":"x"}`))
	if code, out := m.m1(t, "reject", rej, "--reason", "not during the freeze"); code != 0 {
		t.Fatalf("m1 reject = %d\n%s", code, out)
	}
	r := rest(t, proxy, principal, "write_file", `{"path":"no.txt","content":"x"}`)
	if r.status != 403 || r.body.Error != denycode.ApprovalRejected || !strings.Contains(r.body.Reason, "not during the freeze") || r.body.ProposalID != rej {
		t.Fatalf("the rejected call = %d %s, want 403 approval_rejected with the reason", r.status, r.raw)
	}

	// No trusted principal: nothing changes.
	r = rest(t, proxy, "", "write_file", `{"path":"anon.txt"}`)
	if r.status != 401 || r.body.Error != denycode.PolicyDenied || r.body.Reason != "token_missing" {
		t.Fatalf("a call without a principal = %d %s, want 401 token_missing", r.status, r.raw)
	}

	// The orchestrator down: token_missing, never an allow, never a hang.
	m.orchProc.cmd.Process.Signal(os.Interrupt)
	select {
	case <-m.orchProc.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("m1-orchestrator did not stop")
	}
	start := time.Now()
	r = rest(t, proxy, principal, "write_file", `{"path":"down.txt"}`)
	if r.status != 401 || r.body.Reason != "token_missing" {
		t.Fatalf("a call with the orchestrator down = %d %s, want 401 token_missing", r.status, r.raw)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("a call with the orchestrator down took %v", took)
	}
	if n := m.toolRuns("write_file"); n != 1 {
		t.Fatalf("write_file ran %d times in all, want once", n)
	}
}

// TestGatewayTwoSidecarsClaimOnce: a held approval claimed by two sidecars
// at once runs once in the mesh.
func TestGatewayTwoSidecarsClaimOnce(t *testing.T) {
	m := startGatewayMesh(t, 2)
	const principal, args = "agent-twins", `{"path":"twice.txt","content":"once"}`
	id := pending(t, "write_file through sidecar a", rest(t, m.proxies[0], principal, "write_file", args))
	m.approve(t, id, principal)
	var (
		wg      sync.WaitGroup
		results = make([]restResult, len(m.proxies))
	)
	for i, proxy := range m.proxies {
		wg.Go(func() { results[i] = rest(t, proxy, principal, "write_file", args) })
	}
	wg.Wait()
	allowed := 0
	for i, r := range results {
		switch {
		case r.status == 200:
			allowed++
		case r.status == 403 && r.body.Error == denycode.ApprovalPending && r.body.ProposalID != id:
		default:
			t.Errorf("sidecar %d answered %d %s, want 200 or approval_pending for a new proposal", i, r.status, r.raw)
		}
	}
	if allowed != 1 {
		t.Fatalf("%d of 2 sidecars allowed the call, want exactly 1: %+v", allowed, results)
	}
	if n := m.toolRuns("write_file"); n != 1 {
		t.Fatalf("write_file ran %d times, want once", n)
	}
}
