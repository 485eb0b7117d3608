package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// readCall is a REST read_file call the default policy allows without a
// token.
func readCall(path string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/read_file", Host: "tools.local",
			Body: fmt.Sprintf(`{"path":%q}`, path)},
	}}}
}

// check sends req through the sidecar's gRPC port, as Envoy would, and
// fails the test unless the decision is want.
func check(t testing.TB, c authv3.AuthorizationClient, req *authv3.CheckRequest, want code.Code) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := code.Code(resp.GetStatus().GetCode()); got != want {
		t.Fatalf("Check(%s) = %v, want %v", req.GetAttributes().GetRequest().GetHttp().GetPath(), got, want)
	}
}

// openRecords opens the store the sidecar's audit writes to, as
// m1-orchestrator does (SQLite m1.db under the data directory).
func openRecords(t testing.TB, dataDir string) store.Records {
	t.Helper()
	st, err := backend.Open(context.Background(), "", dataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.(store.Records)
}

// seedRun stores a run and one LLM call per cost, each made at created.
func seedRun(t testing.TB, rec store.Records, id, agent, goal string, created time.Time, costs ...float64) {
	t.Helper()
	ctx := context.Background()
	r := store.Run{ID: id, Agent: agent, Goal: goal, Model: "claude-test", Status: store.RunRunning, CreatedAt: created, UpdatedAt: created}
	if err := rec.CreateRun(ctx, r); err != nil {
		t.Fatal(err)
	}
	for i, c := range costs {
		call := store.LLMCall{ID: fmt.Sprintf("%s-llm-%d", id, i), RunID: id, Agent: agent, Model: "claude-test", CreatedAt: created,
			Usage: store.Usage{InputTokens: 1000, OutputTokens: 100, CostUSD: c}}
		if _, err := rec.RecordLLMCall(ctx, call); err != nil {
			t.Fatal(err)
		}
	}
}

func getJSON(t *testing.T, url, token string, v any) int {
	t.Helper()
	code, body := get(t, url, token)
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("GET %s = %d %q: not JSON: %v", url, code, body, err)
	}
	return code
}

func TestDashboardMetricsAfterChecks(t *testing.T) {
	s := startServer(t, testOptions(t))
	c := checkClient(t, s)
	for range 3 {
		check(t, c, readCall("/etc/hosts"), code.Code_OK) // a miss, then two L1 hits
	}
	check(t, c, writeCall(""), code.Code_PERMISSION_DENIED) // write_file needs an approval
	var m admin.MetricsSummary
	if code := getJSON(t, "http://"+s.AdminAddr().String()+"/api/m1/dashboard/metrics", s.AdminToken(), &m); code != 200 {
		t.Fatalf("GET metrics = %d, want 200", code)
	}
	if m.Checks.Allow != 3 || m.Checks.Deny != 1 || m.Checks.Total != 4 {
		t.Errorf("checks = %+v, want 3 allow, 1 deny", m.Checks)
	}
	if len(m.Checks.ByReason) != 2 || m.Checks.ByReason[0] != (admin.ReasonCount{Decision: "allow", Reason: "ok", Count: 3}) || m.Checks.ByReason[1].Decision != "deny" {
		t.Errorf("by_reason = %+v, want allow/ok 3 first, then one deny", m.Checks.ByReason)
	}
	if m.Cache.Hits["l1"] != 2 || m.Cache.Misses < 1 || m.Cache.HitRate == nil || *m.Cache.HitRate != 2/float64(2+m.Cache.Misses) {
		t.Errorf("cache = %+v (hit rate %v), want 2 l1 hits, a miss, hit rate hits/(hits+misses)", m.Cache, deref(m.Cache.HitRate))
	}
	l := m.CheckLatency
	if l.Count != 4 || l.SumSeconds <= 0 || l.P50Seconds == nil || l.P99Seconds == nil || *l.P50Seconds <= 0 || *l.P99Seconds < *l.P50Seconds {
		t.Errorf("check_latency = %+v, want 4 checks with 0 < p50 <= p99", l)
	}
	if !m.Audit.Enabled || m.Audit.Events != 4 {
		t.Errorf("audit = %+v, want enabled with 4 events", m.Audit)
	}
}

func TestDashboardRunsAndCosts(t *testing.T) {
	o := testOptions(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	o.Now = func() time.Time { return now }
	s := startServer(t, o)
	rec := openRecords(t, o.DataDir)
	seedRun(t, rec, "run-old", "agent-a", "two days ago", now.Add(-48*time.Hour), 5)
	seedRun(t, rec, "run-1", "agent-a", "first", now.Add(-2*time.Hour), 0.25, 0.5)
	seedRun(t, rec, "run-2", "agent-b", "second", now.Add(-time.Hour), 1)
	base := "http://" + s.AdminAddr().String() + "/api/m1/dashboard/"

	var runs admin.RunsDocument
	if code := getJSON(t, base+"runs?limit=2", s.AdminToken(), &runs); code != 200 {
		t.Fatalf("GET runs?limit=2 = %d, want 200", code)
	}
	if runs.Limit != 2 || len(runs.Runs) != 2 || runs.Runs[0].ID != "run-2" || runs.Runs[1].ID != "run-1" {
		t.Fatalf("runs?limit=2 = %+v, want run-2 then run-1", runs)
	}
	if r := runs.Runs[1]; r.Agent != "agent-a" || r.Goal != "first" || r.Status != store.RunRunning || r.Usage.CostUSD != 0.75 || !r.CreatedAt.Equal(now.Add(-2*time.Hour)) {
		t.Errorf("run-1 = %+v, want agent-a, goal first, running, cost 0.75", r)
	}
	if code := getJSON(t, base+"runs", s.AdminToken(), &runs); code != 200 || runs.Limit != admin.DefaultRunsLimit || len(runs.Runs) != 3 {
		t.Errorf("GET runs = %d %+v, want 200 with all 3 runs and the default limit", code, runs)
	}

	var costs admin.CostsDocument
	if code := getJSON(t, base+"costs", s.AdminToken(), &costs); code != 200 {
		t.Fatalf("GET costs = %d, want 200", code)
	}
	if !costs.Since.Equal(now.Add(-24*time.Hour)) || len(costs.Rows) != 2 || costs.Total.Calls != 3 || costs.Total.Usage.CostUSD != 1.75 || costs.Total.Usage.InputTokens != 3000 {
		t.Errorf("costs = %+v, want since 24h ago, agent-a and agent-b, 3 calls, $1.75", costs)
	}
	since := now.Add(-72 * time.Hour).Format(time.RFC3339)
	if code := getJSON(t, base+"costs?since="+since, s.AdminToken(), &costs); code != 200 || costs.Total.Calls != 4 || costs.Total.Usage.CostUSD != 6.75 {
		t.Errorf("GET costs?since=%s = %d %+v, want 4 calls, $6.75", since, code, costs)
	}

	for _, q := range []string{"runs?limit=0", "runs?limit=201", "runs?limit=ten", "costs?since=yesterday", "costs?since=2026-03-01"} {
		var e struct{ Error, Reason string }
		if code := getJSON(t, base+q, s.AdminToken(), &e); code != 400 || e.Error != "bad_request" || e.Reason == "" {
			t.Errorf("GET %s = %d %+v, want 400 bad_request with a reason", q, code, e)
		}
	}
}

func TestDashboardRecordsUnavailable(t *testing.T) {
	tests := []struct {
		name   string
		mod    func(*Options)
		reason string
	}{
		{"audit off", func(o *Options) { o.Audit = false }, "M1_AUDIT=false"},
		{"store unreachable", func(o *Options) { o.DatabaseURL = filepath.Join(o.DataDir, "missing", "m1.db") }, "audit store unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			tt.mod(&o)
			s := startServer(t, o)
			for _, p := range []string{"runs", "costs"} {
				var e struct{ Error, Reason string }
				code := getJSON(t, "http://"+s.AdminAddr().String()+"/api/m1/dashboard/"+p, s.AdminToken(), &e)
				if code != 503 || e.Error != "store_unavailable" || !strings.Contains(e.Reason, tt.reason) {
					t.Errorf("GET %s = %d %+v, want 503 store_unavailable naming %q", p, code, e, tt.reason)
				}
			}
		})
	}
}

func TestDashboardNeedsToken(t *testing.T) {
	s := startServer(t, testOptions(t))
	base := "http://" + s.AdminAddr().String()
	paths := []string{"/api/m1/dashboard/metrics", "/api/m1/dashboard/runs", "/api/m1/dashboard/costs",
		"/api/m1/dashboard/policy", "/api/m1/dashboard/health", "/api/m1/dashboard/cache", "/api/m1/dashboard/proposals"}
	for _, p := range paths {
		if code, _ := get(t, base+p, ""); code != 401 {
			t.Errorf("GET %s without a token = %d, want 401", p, code)
		}
		if code, body := get(t, base+p, s.AdminToken()); code != 200 {
			t.Errorf("GET %s with the token = %d %s, want 200", p, code, body)
		}
	}
	if code, body := get(t, base+"/?token="+s.AdminToken(), ""); code != 200 || !strings.Contains(body, `<script src="assets/app.js"`) {
		t.Errorf("GET /?token= = %d, want 200 and the page", code)
	}
	for _, p := range []string{"/nope", "/api/m1/dashboard/nope", "/index.html"} {
		var e struct{ Error string }
		if code := getJSON(t, base+p, s.AdminToken(), &e); code != 404 || e.Error != "not_found" {
			t.Errorf("GET %s = %d %+v, want 404 not_found", p, code, e)
		}
	}
	var policy struct {
		Needs map[string]any `json:"needs"`
		Tools map[string]map[string]any
	}
	getJSON(t, base+"/api/m1/dashboard/policy", s.AdminToken(), &policy)
	if _, ok := policy.Needs["m1_paths"]; !ok || policy.Needs["all"] != false || policy.Tools["read_file"]["risk"] != "read" {
		t.Errorf("policy document needs = %v, tools[read_file] = %v; want snake_case keys (m1_paths, all, risk)", policy.Needs, policy.Tools["read_file"])
	}
}

func TestDashboardPageHeaders(t *testing.T) {
	s := startServer(t, testOptions(t))
	base := "http://" + s.AdminAddr().String()
	tests := []struct {
		path, token, contentType string
	}{
		{"/", s.AdminToken(), "text/html; charset=utf-8"},
		{"/assets/app.js", "", "text/javascript; charset=utf-8"}, // assets are open
		{"/assets/app.css", "", "text/css; charset=utf-8"},
		{"/assets/uPlot.iife.min.js", "", "text/javascript; charset=utf-8"},
	}
	for _, tt := range tests {
		resp := do(t, "GET", base+tt.path, tt.token, nil)
		want := map[string]string{
			"Content-Type":            tt.contentType,
			"Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
			"X-Content-Type-Options":  "nosniff",
			"X-Frame-Options":         "DENY",
			"Referrer-Policy":         "no-referrer",
			"Cache-Control":           "no-store",
		}
		if resp.StatusCode != 200 {
			t.Errorf("GET %s = %d, want 200", tt.path, resp.StatusCode)
		}
		for k, v := range want {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("GET %s: %s = %q, want %q", tt.path, k, got, v)
			}
		}
	}
	for _, p := range []string{"/assets/nope.js", "/assets/index.html"} {
		if resp := do(t, "GET", base+p, "", nil); resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s = %d %s, want 404 JSON", p, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
}

// do sends a request with optional bearer token and headers and returns
// the response, its body read and closed.
func do(t *testing.T, method, url, token string, header map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestDashboardCORS(t *testing.T) {
	o := testOptions(t)
	o.AllowedOrigins = "https://ops.example.com:443, http://localhost:3000" // the default port, as browsers never send it
	s := startServer(t, o)
	plain := startServer(t, testOptions(t)) // ALLOWED_ORIGINS empty
	const allowed, other = "https://ops.example.com", "https://evil.example.com"
	preflight := func(origin string) map[string]string {
		return map[string]string{"Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
	}
	tests := []struct {
		name        string
		srv         *Server
		method      string
		token       bool
		header      map[string]string
		status      int
		allowOrigin string
	}{
		{"allowed origin", s, "GET", true, map[string]string{"Origin": allowed}, 200, allowed},
		{"allowed origin, second in the list", s, "GET", true, map[string]string{"Origin": "http://localhost:3000"}, 200, "http://localhost:3000"},
		{"allowed origin without token", s, "GET", false, map[string]string{"Origin": allowed}, 401, allowed},
		{"other origin", s, "GET", true, map[string]string{"Origin": other}, 200, ""},
		{"same origin (no Origin header)", s, "GET", true, nil, 200, ""},
		{"preflight, allowed origin, no token", s, "OPTIONS", false, preflight(allowed), 204, allowed},
		{"preflight, other origin", s, "OPTIONS", false, preflight(other), 401, ""},
		{"no allowed origins", plain, "GET", true, map[string]string{"Origin": allowed}, 200, ""},
		{"no allowed origins, preflight", plain, "OPTIONS", false, preflight(allowed), 401, ""},
	}
	for _, tt := range tests {
		tok := ""
		if tt.token {
			tok = tt.srv.AdminToken()
		}
		resp := do(t, tt.method, "http://"+tt.srv.AdminAddr().String()+"/api/m1/dashboard/metrics", tok, tt.header)
		if resp.StatusCode != tt.status || resp.Header.Get("Access-Control-Allow-Origin") != tt.allowOrigin {
			t.Errorf("%s: %s = %d, Access-Control-Allow-Origin %q; want %d, %q", tt.name, tt.method,
				resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), tt.status, tt.allowOrigin)
		}
		if tt.allowOrigin != "" && !strings.Contains(strings.Join(resp.Header.Values("Vary"), ","), "Origin") {
			t.Errorf("%s: Vary = %q, want Origin", tt.name, resp.Header.Values("Vary"))
		}
		if tt.status == 204 && (resp.Header.Get("Access-Control-Allow-Methods") != "GET, POST, DELETE" || resp.Header.Get("Access-Control-Allow-Headers") != "Authorization, Content-Type") {
			t.Errorf("%s: allow methods %q, headers %q; want GET, POST, DELETE and Authorization, Content-Type", tt.name,
				resp.Header.Get("Access-Control-Allow-Methods"), resp.Header.Get("Access-Control-Allow-Headers"))
		}
	}
}

func TestValidateAllowedOrigins(t *testing.T) {
	for _, bad := range []string{"*", "https://ops.example.com/", "ops.example.com", "ftp://ops.example.com", "https://ops.example.com?x=1", "https://user@ops.example.com"} {
		o := testOptions(t)
		o.AllowedOrigins = "http://localhost:3000," + bad
		if err := o.validate(); err == nil || !strings.Contains(err.Error(), "ALLOWED_ORIGINS") {
			t.Errorf("validate(ALLOWED_ORIGINS with %q) = %v, want an error naming ALLOWED_ORIGINS", bad, err)
		}
	}
	o := testOptions(t)
	o.AllowedOrigins = " https://Ops.Example.com:8443 , ,http://localhost:3000"
	if err := o.validate(); err != nil {
		t.Errorf("validate(good origins) = %v", err)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
