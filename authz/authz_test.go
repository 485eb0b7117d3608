package authz

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/policies"
)

func engineFrom(t testing.TB, b *policy.Bundle) *policy.Engine {
	t.Helper()
	e, err := policy.Prepare(context.Background(), b, policy.Options{Path: "m1/authz/decision", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func defaultEngine(t testing.TB) *policy.Engine {
	t.Helper()
	b, err := policy.LoadFS(policies.FS())
	if err != nil {
		t.Fatal(err)
	}
	return engineFrom(t, b)
}

func regoEngine(t testing.TB, src string) *policy.Engine {
	t.Helper()
	b, err := policy.LoadFS(fstest.MapFS{"p.rego": {Data: []byte(src)}})
	if err != nil {
		t.Fatal(err)
	}
	return engineFrom(t, b)
}

type testService struct {
	*Service
	m   *Metrics
	reg *prometheus.Registry
}

func newService(t testing.TB, e *policy.Engine, withCache bool) testService {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Parse:          testParseOpts,
		ApprovalHeader: "x-m1-approval-token",
		Logger:         zap.NewNop(),
		Metrics:        m,
		Now:            time.Now,
		Uses:           state.NewMemory(state.MemoryOptions{}),
		Revocations:    state.NewMemory(state.MemoryOptions{}),
	}
	if withCache {
		c, err := cache.NewMemory(cache.MemoryOptions{MaxEntries: 1000, TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		o.Cache = c
	}
	s, err := New(o, e)
	if err != nil {
		t.Fatal(err)
	}
	return testService{s, m, reg}
}

func checkReq(r *authv3.AttributeContext_HttpRequest) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:  &authv3.AttributeContext_Peer{Principal: "spiffe://cluster.local/ns/agents/sa/agent-42"},
		Request: &authv3.AttributeContext_Request{Http: r},
	}}
}

type result struct {
	allowed bool
	status  int
	body    denyBody
	raw     string
	resp    *authv3.CheckResponse
}

func check(t testing.TB, s *Service, r *authv3.AttributeContext_HttpRequest) result {
	t.Helper()
	resp, err := s.Check(context.Background(), checkReq(r))
	if err != nil {
		t.Fatalf("Check returned a gRPC error %v; decisions must be CheckResponses", err)
	}
	res := result{resp: resp}
	switch code.Code(resp.GetStatus().GetCode()) {
	case code.Code_OK:
		res.allowed, res.status = true, 200
		if resp.GetOkResponse() == nil {
			t.Fatalf("allow without OkHttpResponse")
		}
	case code.Code_PERMISSION_DENIED:
		d := resp.GetDeniedResponse()
		res.status, res.raw = int(d.GetStatus().GetCode()), d.GetBody()
		_ = json.Unmarshal([]byte(d.GetBody()), &res.body)
	default:
		t.Fatalf("Check status code %d, want OK or PERMISSION_DENIED", resp.GetStatus().GetCode())
	}
	return res
}

func TestCheckDefaultPolicy(t *testing.T) {
	s := newService(t, defaultEngine(t), true)
	tests := []struct {
		name    string
		req     *authv3.AttributeContext_HttpRequest
		allowed bool
		status  int
		code    string
		reason  string
	}{
		{"read_file via MCP", httpReq("POST", "/mcp", mcpCall("read_file", `{"path":"/etc/hosts"}`)), true, 200, "", ""},
		{"list_dir via REST", httpReq("POST", "/tools/list_dir", `{"path":"/"}`), true, 200, "", ""},
		{"write_file without token", httpReq("POST", "/mcp", mcpCall("write_file", `{"path":"/x"}`)), false, 401, "policy_denied", "token_missing"},
		{"unknown tool", httpReq("POST", "/tools/rm_rf", `{}`), false, 403, "policy_denied", "unknown_tool"},
		{"initialize", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`), true, 200, "", ""},
		{"resources/read", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}`), false, 403, "policy_denied", "mcp_method_not_allowed"},
		{"plain http", httpReq("GET", "/status", ""), false, 403, "policy_denied", "not_a_tool_call"},
		{"bad path", httpReq("POST", "/tools/../mcp", "{}"), false, 400, "bad_path", ""},
		{"big number", httpReq("POST", "/tools/read_file", `{"n":9007199254740993}`), false, 400, "number_not_canonical", ""},
		{"partial body", httpReq("POST", "/mcp", "{", "x-envoy-auth-partial-body", "true"), false, 413, "body_too_large", ""},
	}
	for _, tt := range tests {
		for _, pass := range []string{"first", "cached"} {
			t.Run(tt.name+"/"+pass, func(t *testing.T) {
				r := check(t, s.Service, tt.req)
				want := "deny"
				if tt.allowed {
					want = "allow"
				}
				if r.allowed != tt.allowed || r.status != tt.status {
					t.Fatalf("Check(%s) = allowed %v status %d (%s), want %s %d", tt.name, r.allowed, r.status, r.raw, want, tt.status)
				}
				if tt.allowed {
					return
				}
				if r.body.Error != tt.code || (tt.reason != "" && r.body.Reason != tt.reason) || r.body.DecisionID == "" {
					t.Fatalf("Check(%s) body = %s, want error %q reason %q and a decision_id", tt.name, r.raw, tt.code, tt.reason)
				}
			})
		}
	}
	if got := testutil.ToFloat64(s.m.CacheHits.WithLabelValues(cache.TierL1)); got < 5 {
		t.Errorf("l1 cache hits = %v after repeating cacheable checks, want ≥ 5", got)
	}
	if got := testutil.ToFloat64(s.m.Checks.WithLabelValues("deny", "bad_path")); got != 2 {
		t.Errorf(`m1_policy_checks_total{deny,bad_path} = %v, want 2`, got)
	}
}

func TestAllowResponseHeaders(t *testing.T) {
	s := newService(t, defaultEngine(t), false)
	r := check(t, s.Service, httpReq("POST", "/mcp", mcpCall("read_file", `{}`),
		"x-m1-principal", "evil", "x-m1-foo", "bar", "x-m1-decision-id", "forged", "x-other", "keep",
		// the same names as CGI, WSGI and PHP servers read them
		"x_m1_principal", "spoof", "x-m1_decision-id", "forged", "x_m1_approval_token", "leak", "x_other", "keep"))
	if !r.allowed {
		t.Fatalf("Check(read_file) = deny %s, want allow", r.raw)
	}
	ok := r.resp.GetOkResponse()
	set := map[string]*corev3.HeaderValueOption{}
	for _, h := range ok.GetHeaders() {
		set[h.GetHeader().GetKey()] = h
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %s append_action = %v, want OVERWRITE_IF_EXISTS_OR_ADD", h.GetHeader().GetKey(), h.GetAppendAction())
		}
	}
	id := set[HeaderDecisionID].GetHeader().GetValue()
	if id == "" || id == "forged" {
		t.Errorf("x-m1-decision-id = %q, want a fresh id", id)
	}
	if got := set[HeaderPrincipal].GetHeader().GetValue(); got != "spiffe://cluster.local/ns/agents/sa/agent-42" {
		t.Errorf("x-m1-principal = %q, want the mTLS principal", got)
	}
	removed := ok.GetHeadersToRemove()
	for _, h := range []string{"x-m1-approval-token", "x-m1-foo", "x_m1_principal", "x-m1_decision-id", "x_m1_approval_token"} {
		if !slices.Contains(removed, h) {
			t.Errorf("headers_to_remove = %s, want %s in it", removed, h)
		}
	}
	for _, h := range []string{"x-other", "x_other", HeaderDecisionID, HeaderPrincipal} {
		if slices.Contains(removed, h) {
			t.Errorf("headers_to_remove = %s; %s must not be removed (it is overwritten or not M1's)", removed, h)
		}
	}
	md := r.resp.GetDynamicMetadata().GetFields()
	if md["decision_id"].GetStringValue() != id || md["tool"].GetStringValue() != "read_file" || md["principal"].GetStringValue() == "" {
		t.Errorf("dynamic_metadata = %v, want decision_id, tool and principal", md)
	}
}

func TestPolicyObjectForm(t *testing.T) {
	e := regoEngine(t, `package m1.authz
import rego.v1
decision := {"allowed": false, "http_status": 429, "body": "slow down", "headers": {"retry-after": "3"}} if input.m1.tool == "busy"
decision := {"allowed": true, "headers": {"x-tenant": "a"}, "response_headers_to_add": {"x-served": "m1"}, "request_headers_to_remove": ["cookie"], "dynamic_metadata": {"team": "blue"}} if input.m1.tool == "ok"
`)
	s := newService(t, e, true)
	r := check(t, s.Service, httpReq("POST", "/tools/busy", `{}`))
	d := r.resp.GetDeniedResponse()
	if r.allowed || r.status != 429 || d.GetBody() != "slow down" {
		t.Fatalf("Check(busy) = %v %d %q, want deny 429 with the policy's body", r.allowed, r.status, d.GetBody())
	}
	if !hasHeader(d.GetHeaders(), "retry-after", "3") {
		t.Errorf("deny headers = %v, want retry-after: 3", d.GetHeaders())
	}
	r = check(t, s.Service, httpReq("POST", "/tools/ok", `{}`, "cookie", "c"))
	ok := r.resp.GetOkResponse()
	if !r.allowed || !hasHeader(ok.GetHeaders(), "x-tenant", "a") || !hasHeader(ok.GetResponseHeadersToAdd(), "x-served", "m1") ||
		!strings.Contains(strings.Join(ok.GetHeadersToRemove(), ","), "cookie") || r.resp.GetDynamicMetadata().GetFields()["team"].GetStringValue() != "blue" {
		t.Errorf("Check(ok) = %v, want the policy's headers, response headers, removals and metadata", r.resp)
	}
	r = check(t, s.Service, httpReq("POST", "/tools/other", `{}`))
	if r.allowed || r.status != 403 || r.body.Error != deny.PolicyError {
		t.Errorf("Check(undefined decision) = %v %d %s, want deny 403 policy_error", r.allowed, r.status, r.raw)
	}
}

func hasHeader(hs []*corev3.HeaderValueOption, k, v string) bool {
	for _, h := range hs {
		if h.GetHeader().GetKey() == k && h.GetHeader().GetValue() == v {
			return true
		}
	}
	return false
}

func TestPolicyTimeoutDenies(t *testing.T) {
	b, err := policy.LoadFS(fstest.MapFS{"p.rego": {Data: []byte(`package m1.authz
import rego.v1
decision if count([x | some x in numbers.range(1, 100000000)]) > 0
`)}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.Prepare(context.Background(), b, policy.Options{Path: "m1/authz/decision", Timeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s := newService(t, e, false)
	r := check(t, s.Service, httpReq("POST", "/tools/x", `{}`))
	if r.allowed || r.body.Error != deny.PolicyError {
		t.Fatalf("Check(slow policy) = %v %s, want deny policy_error", r.allowed, r.raw)
	}
}

func TestCacheOnlyWhenSound(t *testing.T) {
	tests := []struct {
		name   string
		src    string
		cached bool
	}{
		{"reads input.m1 only", `package m1.authz
import rego.v1
decision if input.m1.tool == "x"`, true},
		{"reads attributes", `package m1.authz
import rego.v1
decision if input.attributes.request.http.headers["x-a"] == "1"`, false},
		{"calls time.now_ns", `package m1.authz
import rego.v1
decision if time.now_ns() > 0`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newService(t, regoEngine(t, tt.src), true)
			for range 3 {
				check(t, s.Service, httpReq("POST", "/tools/x", `{}`, "x-a", "1"))
			}
			hits := testutil.ToFloat64(s.m.CacheHits.WithLabelValues(cache.TierL1))
			if (hits > 0) != tt.cached {
				t.Fatalf("policy %s: cache hits = %v, want cached=%v", tt.name, hits, tt.cached)
			}
		})
	}
}

func TestSetPolicyPurgesAndSwaps(t *testing.T) {
	allow := regoEngine(t, "package m1.authz\ndecision := true\n")
	deny := regoEngine(t, "package m1.authz\ndecision := false\n")
	s := newService(t, allow, true)
	req := httpReq("POST", "/tools/x", `{}`)
	if r := check(t, s.Service, req); !r.allowed {
		t.Fatalf("Check under allow-all = deny")
	}
	mem := s.opts.Cache.(*cache.Memory)
	if mem.Len() == 0 {
		t.Fatalf("decision not cached under allow-all")
	}
	s.SetPolicy(deny)
	if n := mem.Len(); n != 0 {
		t.Errorf("cache holds %d decisions of the old revision after SetPolicy, want 0 (purged)", n)
	}
	if r := check(t, s.Service, req); r.allowed {
		t.Fatalf("Check after swapping to deny-all = allow (stale cache)")
	}
	if got := testutil.ToFloat64(s.m.BundleInfo.WithLabelValues(deny.Revision())); got != 1 {
		t.Errorf("m1_policy_bundle_info{revision=new} = %v, want 1", got)
	}
}

func TestNoHTTPAttributesDenies(t *testing.T) {
	s := newService(t, defaultEngine(t), true)
	resp, err := s.Check(context.Background(), &authv3.CheckRequest{})
	if err != nil || resp.GetStatus().GetCode() != int32(code.Code_PERMISSION_DENIED) {
		t.Fatalf("Check(empty request) = %v, %v; want PERMISSION_DENIED", resp, err)
	}
}

func TestDecisionIDsUnique(t *testing.T) {
	var g idGen
	g.seed()
	seen := map[string]bool{}
	now := time.Now()
	for range 10000 {
		id := g.next(now)
		if seen[id] || len(id) != 28 {
			t.Fatalf("id %q repeated or malformed", id)
		}
		seen[id] = true
	}
}

// neverSharesDecisions checks that two sidecars sharing one decision cache
// (Redis), open allowing a call and closed denying it, each answer with
// their own decision: the cache key tells their policies apart.
func neverSharesDecisions(t *testing.T, open, closed *policy.Engine) {
	t.Helper()
	o, c := newService(t, open, true), newService(t, closed, true)
	c.opts.Cache = o.opts.Cache // one shared cache
	req := httpReq("POST", "/mcp", mcpCall("read_file", `{"path":"/etc/hosts"}`))
	if r := check(t, o.Service, req); !r.allowed {
		t.Fatalf("Check(open policy) = deny %s, want allow", r.raw)
	}
	if r := check(t, c.Service, req); r.allowed || r.body.Error != deny.PolicyDenied {
		t.Fatalf("Check(closed policy, cache shared with the open one) = allowed %v %s, want deny policy_denied", r.allowed, r.raw)
	}
}

// Sidecars that run bundles with one .manifest revision but other files
// (one started after the files changed) never answer from each other's
// decisions.
func TestCacheKeyIncludesTheBundlesFiles(t *testing.T) {
	engine := func(allowed string) *policy.Engine {
		b, err := policy.LoadFS(fstest.MapFS{
			".manifest": {Data: []byte(`{"revision": "r2"}`)},
			"p.rego":    {Data: []byte("package m1.authz\nimport rego.v1\ndecision := {\"allowed\": " + allowed + "}\n")},
		})
		if err != nil {
			t.Fatal(err)
		}
		e := engineFrom(t, b)
		if e.Revision() != "r2" {
			t.Fatalf("revision %q, want r2", e.Revision())
		}
		return e
	}
	neverSharesDecisions(t, engine("true"), engine("false"))
}

// Sidecars that run one bundle but evaluate different rules of it
// (M1_POLICY_PATH) never answer from each other's decisions.
func TestCacheKeyIncludesTheDecisionPath(t *testing.T) {
	b, err := policy.LoadFS(fstest.MapFS{"p.rego": {Data: []byte(`package m1.authz
import rego.v1
open := {"allowed": true}
closed := {"allowed": false, "reason": "closed"}
`)}})
	if err != nil {
		t.Fatal(err)
	}
	engine := func(path string) *policy.Engine {
		e, err := policy.Prepare(context.Background(), b, policy.Options{Path: path, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	neverSharesDecisions(t, engine("m1/authz/open"), engine("m1/authz/closed"))
}
