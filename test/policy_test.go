package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// TestDecisionCache checks that the cache is on for the default policy,
// which reads only input.m1, and off, with the reason on /health, for a
// policy that reads input.attributes.
func TestDecisionCache(t *testing.T) {
	t.Parallel()
	t.Run("default policy", func(t *testing.T) {
		t.Parallel()
		s := startSidecar(t, nil)
		_, doc := s.health(t)
		if got := doc.Checks["policy"].Info["decision_cache"]; got != "on" {
			t.Errorf("/health checks.policy.info.decision_cache = %v, want on (detail %q)", got, doc.Checks["policy"].Detail)
		}
		before := s.metrics(t)[`m1_policy_cache_hits_total{tier="l1"}`]
		req := request(t, restList, withBody(`{"path":"/cache-test"}`))
		for range 3 {
			expect(t, "rest list_dir", s.check(t, req), allow)
		}
		m := s.metrics(t)
		if got := m[`m1_policy_cache_hits_total{tier="l1"}`] - before; got != 2 {
			t.Errorf("l1 cache hits after the same check 3 times = %v, want 2", got)
		}
		// The default policy does not read the arguments, so the key leaves
		// them out: other arguments hit the same entry.
		expect(t, "rest list_dir other args", s.check(t, request(t, restList, withBody(`{"path":"/other"}`))), allow)
		if got := s.metrics(t)[`m1_policy_cache_hits_total{tier="l1"}`] - before; got != 3 {
			t.Errorf("l1 cache hits after a check with other arguments = %v, want 3 (the default policy never reads args)", got)
		}

		// The default policy reads no argument, so the key leaves them out
		// (and the JSON-RPC id is never in it): after the first read_file
		// call, every one hits. "same args_sha256 same decision" below keys
		// by arguments with a policy that reads them.
		m = s.metrics(t)
		hits0, misses0 := m[`m1_policy_cache_hits_total{tier="l1"}`], m[`m1_policy_cache_misses_total`]
		for i, args := range []string{
			`{"path":"/jcs","mode":"r"}`,            // miss
			` { "mode" : "r" , "path" : "\/jcs" } `, // hit
			`{"path":"/\u006acs","mode":"\u0072"}`,  // hit
			`{"path":"/jcs","mode":"w"}`,            // hit: args are not read
		} {
			body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"read_file","arguments":%s}}`, 100+i, args)
			expect(t, "mcp read_file "+args, s.check(t, request(t, mcpRead, withBody(body))), allow)
		}
		m = s.metrics(t)
		if hits, misses := m[`m1_policy_cache_hits_total{tier="l1"}`]-hits0, m[`m1_policy_cache_misses_total`]-misses0; hits != 3 || misses != 1 {
			t.Errorf("cache hits, misses for 4 read_file calls under a policy that reads no argument = %v, %v; want 3, 1", hits, misses)
		}
	})
	t.Run("same args_sha256 same decision", func(t *testing.T) {
		t.Parallel()
		// A cacheable policy whose deny reason is what it saw of the
		// arguments.
		dir := writeBundle(t, map[string]string{
			"authz.rego": `package m1.authz

import rego.v1

decision := {"allowed": false, "reason": json.marshal(input.m1.args), "http_status": 403}
`,
		})
		cached := startSidecar(t, []string{"--policy-dir", dir})
		uncached := startSidecar(t, []string{"--policy-dir", dir, "--cache-size", "0"})
		if _, doc := cached.health(t); doc.Checks["policy"].Info["decision_cache"] != "on" {
			t.Fatalf("decision cache is off for a policy that reads only input.m1: %q", doc.Checks["policy"].Detail)
		}
		// Each group is one value in several spellings, all with the same
		// args_sha256; the first of each group fills the cache.
		groups := [][]string{
			{`{"n":1.0}`, `{"n":1}`, `{"n":1e0}`, `{"n":10E-1}`},
			{`{"n":-0}`, `{"n":0}`, `{"n":0.0}`},
			{`{"n":1e2}`, `{"n":100}`},
		}
		for _, g := range groups {
			var first want
			for i, b := range g {
				req := request(t, restList, withBody(b))
				with, _, err := outcome(cached.check(t, req), true)
				if err != nil {
					t.Fatalf("Check(rest list_dir %s): %v", b, err)
				}
				without, _, err := outcome(uncached.check(t, req), true)
				if err != nil {
					t.Fatalf("Check(rest list_dir %s): %v", b, err)
				}
				failed := false
				if with != without {
					t.Errorf("Check(rest list_dir %s) = %v with the decision cache, want %v as without it", b, with, without)
					failed = true
				}
				if i == 0 {
					first = without
				} else if without != first {
					t.Errorf("Check(rest list_dir %s) = %v, want %v as for %s: same args_sha256, so the policy must see the same input.m1", b, without, first, g[0])
					failed = true
				}
				if failed {
					break // one report per group is enough
				}
			}
		}
	})
	t.Run("policy reads input.attributes", func(t *testing.T) {
		t.Parallel()
		dir := writeBundle(t, map[string]string{
			"authz.rego": `package m1.authz

import rego.v1

default decision := false

decision if {
	input.attributes.request.http.method == "POST"
	input.m1.kind == "tool_call"
}
`,
		})
		s := startSidecar(t, []string{"--policy-dir", dir})
		_, doc := s.health(t)
		pol := doc.Checks["policy"]
		if got := pol.Info["decision_cache"]; got != "off" {
			t.Errorf("/health checks.policy.info.decision_cache = %v, want off", got)
		}
		if !strings.Contains(pol.Detail, "input.attributes") || !strings.Contains(pol.Detail, "authz.rego:8") {
			t.Errorf("/health checks.policy.detail = %q, want it to name input.attributes at authz.rego:8", pol.Detail)
		}
		for range 2 {
			expect(t, "rest list_dir", s.check(t, fixture(t, restList)), allow)
		}
		expect(t, "http GET /other", s.check(t, fixture(t, "http-get-other")), deny(403, "policy_denied"))
		m := s.metrics(t)
		if hits, misses := m[`m1_policy_cache_hits_total{tier="l1"}`], m[`m1_policy_cache_misses_total`]; hits != 0 || misses != 0 {
			t.Errorf("cache hits, misses = %v, %v with the cache off, want 0, 0", hits, misses)
		}
		code, body := s.get(t, "/api/m1/dashboard/policy", s.Token)
		var pd struct {
			Cacheable      *bool  `json:"cacheable"`
			CacheOffReason string `json:"cache_off_reason"`
		}
		if code != http.StatusOK || json.Unmarshal(body, &pd) != nil || pd.Cacheable == nil || *pd.Cacheable || pd.CacheOffReason == "" {
			t.Errorf("GET /api/m1/dashboard/policy = %d %s, want cacheable false with a reason", code, body)
		}
	})
}

// formsPolicy decides by tool name, to exercise the decision forms of
// DESIGN §5. A tool it does not name leaves the decision undefined; "slow"
// loops input.m1.args.n² times.
const formsPolicy = `package m1.authz

import rego.v1

decision := {
	"allowed": false,
	"reason": "teapot",
	"http_status": 418,
	"body": "I'm a teapot\n",
	"headers": {"content-type": "text/plain", "x-policy": "teapot"},
} if input.m1.tool == "teapot"

decision := {"allowed": false, "reason": "slow_down", "http_status": 429} if input.m1.tool == "limited"

decision := {"allowed": false} if input.m1.tool == "bare_deny"

decision := true if input.m1.tool == "bool_allow"

decision := false if input.m1.tool == "bool_deny"

decision := "yes" if input.m1.tool == "malformed"

decision := {"allowed": false, "http_status": 99} if input.m1.tool == "bad_status"

decision := {"allowed": true} if input.m1.tool == "conflict"

decision := {"allowed": false} if input.m1.tool == "conflict"

decision := {
	"allowed": true,
	"headers": {"x-policy-tag": "t1", "x-m1-decision-id": "policy-forged"},
	"response_headers_to_add": {"x-resp": ["a", "b"]},
	"request_headers_to_remove": ["x-drop-me"],
	"dynamic_metadata": {"policy_note": "hi", "decision_id": "policy-forged"},
} if input.m1.tool == "decorated"

decision := {"allowed": true} if {
	input.m1.tool == "slow"
	slow
}

slow if {
	every i in numbers.range(1, input.m1.args.n) {
		every j in numbers.range(1, input.m1.args.n) {
			i + j > 0
		}
	}
}
`

// TestPolicyDecisionForms checks the opa-envoy-plugin object form, the
// boolean form, and that an undefined, malformed or timed-out decision
// denies policy_error 403.
func TestPolicyDecisionForms(t *testing.T) {
	t.Parallel()
	dir := writeBundle(t, map[string]string{"authz.rego": formsPolicy, ".manifest": `{"revision": "forms-7"}`})
	s := startSidecar(t, []string{"--policy-dir", dir, "--policy-timeout", "300ms"})
	call := func(tool, body string) *authv3.CheckRequest {
		return request(t, restList, withPath("/tools/"+tool), withBody(body))
	}
	if s.Revision != "forms-7" {
		t.Errorf("policy_revision = %q, want the .manifest revision forms-7", s.Revision)
	}

	t.Run("allow with headers and metadata", func(t *testing.T) {
		resp := s.check(t, call("decorated", "{}"))
		expect(t, "decorated", resp, allow)
		ok := resp.GetOkResponse()
		id := ""
		for _, h := range ok.GetHeaders() {
			if h.GetHeader().GetKey() == "x-m1-decision-id" {
				id = h.GetHeader().GetValue() // Envoy applies them in order: the last wins
			}
		}
		if id == "" || id == "policy-forged" {
			t.Errorf("Check(decorated): x-m1-decision-id = %q last, want M1's decision id", id)
		}
		if got := headerValue(ok.GetHeaders(), "x-policy-tag"); got != "t1" {
			t.Errorf("Check(decorated): header x-policy-tag = %q, want t1", got)
		}
		var resp2 []string
		for _, h := range ok.GetResponseHeadersToAdd() {
			if h.GetHeader().GetKey() == "x-resp" {
				resp2 = append(resp2, h.GetHeader().GetValue())
			}
		}
		if !slices.Equal(resp2, []string{"a", "b"}) {
			t.Errorf("Check(decorated): response_headers_to_add x-resp = %q, want [a b]", resp2)
		}
		if !slices.Contains(ok.GetHeadersToRemove(), "x-drop-me") {
			t.Errorf("Check(decorated): headers_to_remove = %q, want x-drop-me in it", ok.GetHeadersToRemove())
		}
		md := resp.GetDynamicMetadata().GetFields()
		if got := md["policy_note"].GetStringValue(); got != "hi" {
			t.Errorf("Check(decorated): dynamic_metadata policy_note = %q, want the policy's hi", got)
		}
		if got := md["decision_id"].GetStringValue(); got != id {
			t.Errorf("Check(decorated): dynamic_metadata decision_id = %q, want M1's %q", got, id)
		}
	})
	t.Run("custom body", func(t *testing.T) {
		resp := s.check(t, call("teapot", "{}"))
		d := resp.GetDeniedResponse()
		if resp.GetStatus().GetCode() == 0 || d == nil {
			t.Fatalf("Check(teapot) = %v, want a deny", resp)
		}
		if got := d.GetStatus().GetCode(); got != 418 {
			t.Errorf("Check(teapot) HTTP status = %d, want 418", got)
		}
		if got := d.GetBody(); got != "I'm a teapot\n" {
			t.Errorf("Check(teapot) body = %q, want the policy's body", got)
		}
		if got := headerValue(d.GetHeaders(), "x-policy"); got != "teapot" {
			t.Errorf("Check(teapot) header x-policy = %q, want teapot", got)
		}
		if got := headerValue(d.GetHeaders(), "content-type"); got != "text/plain" {
			t.Errorf("Check(teapot) content-type = %q, want the policy's text/plain", got)
		}
	})
	tests := []struct {
		name, tool, body string
		want             want
	}{
		{"object deny with status", "limited", "{}", denyReason(429, "policy_denied", "slow_down")},
		{"object deny bare", "bare_deny", "{}", deny(403, "policy_denied")},
		{"boolean allow", "bool_allow", "{}", allow},
		{"boolean deny", "bool_deny", "{}", deny(403, "policy_denied")},
		{"undefined", "unnamed_tool", "{}", deny(403, "policy_error")},
		{"malformed", "malformed", "{}", deny(403, "policy_error")},
		{"http_status out of range", "bad_status", "{}", deny(403, "policy_error")},
		{"conflicting values", "conflict", "{}", deny(403, "policy_error")},
		{"quick enough", "slow", `{"n":2}`, allow},
		{"timeout", "slow", `{"n":100000}`, deny(403, "policy_error")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expect(t, tt.name, s.check(t, call(tt.tool, tt.body)), tt.want)
		})
	}
}

// TestPolicyErrorDetail checks where the detail of a policy error goes: the
// agent that sent the request gets the code and its decision id, not the
// sidecar's file paths and policy source; the operator's log (at the
// default level) gets the detail under that decision id.
func TestPolicyErrorDetail(t *testing.T) {
	t.Parallel()
	dir := writeBundle(t, map[string]string{"authz.rego": formsPolicy})
	s := startSidecar(t, []string{"--policy-dir", dir})
	doc := expect(t, "conflict", s.check(t, request(t, restList, withPath("/tools/conflict"), withBody("{}"))), deny(403, "policy_error"))
	if doc.DecisionID == "" {
		return
	}
	if strings.Contains(doc.Reason, dir) || strings.Contains(doc.Reason, "authz.rego") {
		t.Errorf("Check(conflict) deny reason = %q, want no bundle path or policy source in what the client sees", doc.Reason)
	}
	s.terminate(t)
	if _, ok := s.waitExit(stopTimeout); !ok {
		t.Fatalf("m1-authz did not exit within %v of SIGTERM", stopTimeout)
	}
	found := false
	for line := range strings.SplitSeq(s.log.String(), "\n") {
		if strings.Contains(line, doc.DecisionID) && strings.Contains(line, "eval_conflict_error") {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line at the default level has decision %s with the policy error's detail", doc.DecisionID)
	}
}

// TestBrokenBundle checks that a bundle that does not load stops the
// process at start with a message naming the file and line.
func TestBrokenBundle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		files map[string]string
		args  []string // besides --policy-dir
		want  []string // substrings of stderr
	}{
		{
			name: "rego syntax error",
			files: map[string]string{
				"authz.rego": "package m1.authz\n\nimport rego.v1\n\ndefault decision := false\n\ndecision if input.m1.kind = = \"tool_call\"\n",
			},
			want: []string{"authz.rego:7"},
		},
		{
			name: "rego compile error",
			files: map[string]string{
				"authz.rego":         "package m1.authz\n\nimport rego.v1\n\ndefault decision := false\n",
				"m1/extra/more.rego": "package m1.extra\n\nimport rego.v1\n\nx if {\n\tno_such_function(input.m1.kind)\n}\n",
			},
			want: []string{filepath.Join("m1", "extra", "more.rego") + ":6"},
		},
		{
			name: "bad data.json",
			files: map[string]string{
				"authz.rego":         "package m1.authz\n\nimport rego.v1\n\ndefault decision := false\n",
				"m1/tools/data.json": "{\n  \"read_file\": {\"risk\": \"read\",},\n}\n",
			},
			want: []string{"m1/tools/data.json", "line 2"},
		},
		{
			name: "truncated data.json",
			files: map[string]string{
				"authz.rego":         "package m1.authz\n\nimport rego.v1\n\ndefault decision := false\n",
				"m1/tools/data.json": "{\"read_file\": ",
			},
			want: []string{"m1/tools/data.json"},
		},
		{
			name:  "decision path not defined",
			files: map[string]string{"authz.rego": "package m1.authz\n\nimport rego.v1\n\ndefault decision := false\n"},
			args:  []string{"--policy-path", "m1/authz/allow"},
			want:  []string{"m1.authz.allow"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := writeBundle(t, tt.files)
			code, stderr := runToExit(t, append([]string{"--policy-dir", dir}, tt.args...))
			if code == 0 {
				t.Errorf("m1-authz with a broken bundle exited 0, want non-zero")
			}
			last := lastLine(stderr)
			for _, w := range tt.want {
				if !strings.Contains(last, w) {
					t.Errorf("m1-authz with a broken bundle: last stderr line %q does not contain %q; stderr:\n%s", last, w, stderr)
				}
			}
		})
	}
}

// lastLine is the last non-empty line of s with its continuation lines
// (OPA's error carries the source line and a caret on lines of their own).
func lastLine(s string) string {
	i := strings.LastIndex(s, "\nm1-authz: ")
	if i < 0 {
		return s
	}
	return s[i+1:]
}

// TestOPAEnvoyPluginPolicy runs a policy written for opa-envoy-plugin,
// which reads the Envoy-shaped input rather than input.m1 (DESIGN §5).
func TestOPAEnvoyPluginPolicy(t *testing.T) {
	t.Parallel()
	dir := writeBundle(t, map[string]string{"envoy/authz/policy.rego": `package envoy.authz

import rego.v1

default allow := false

allow if {
	input.parsed_path == ["tools", "list_dir"]
	input.parsed_query == {}
	input.parsed_body.path == "/workspace"
	input.attributes.request.http.method == "POST"
	input.attributes.request.http.headers["x-request-id"] != ""
	input.truncated_body == false
	input.version == {"encoding": "protojson", "ext_authz": "v3"}
}

allow if input.parsed_body.method == "ping"

allow if input.parsed_body.path == "/workspace/notes.txt"

allow if {
	input.parsed_path == ["status"]
	input.parsed_query.verbose == ["1"]
}

# A body Envoy sent in part: truncated_body, and no parsed_body, as
# opa-envoy-plugin gives them.
allow if {
	input.parsed_path == ["upload"]
	input.truncated_body == true
	input.parsed_body == null
}
`})
	s := startSidecar(t, []string{"--policy-dir", dir, "--policy-path", "envoy/authz/allow"})
	tests := []struct {
		name    string
		fixture string
		edits   []edit
		want    want
	}{
		{"rest list_dir", restList, nil, allow},
		{"rest list_dir other body", restList, []edit{withBody(`{"path":"/etc"}`)}, deny(403, "policy_denied")},
		{"http query", "http-get-other", []edit{withPath("/status?verbose=1")}, allow},
		{"http other query", "http-get-other", []edit{withPath("/status?verbose=0")}, deny(403, "policy_denied")},
		{"http partial body", "http-get-other", []edit{withPath("/upload"), withBody(`{"a":`), withHeader("content-type", "application/json"), withHeader("content-length", "4096")}, allow},
		{"http whole body", "http-get-other", []edit{withPath("/upload"), withBody(`{"a":1}`), withHeader("content-type", "application/json"), withHeader("content-length", "7")}, deny(403, "policy_denied")},
		// A query on a tool path is refused before any policy (DESIGN §3).
		{"rest list_dir with query", restList, []edit{withPath("/tools/list_dir?recursive=1")}, deny(400, "bad_path")},
		{"rest read_file raw_body", "rest-tools-read-file-raw-body", nil, allow},
		{"mcp ping", "mcp-ping", nil, allow},
		{"mcp initialize", "mcp-initialize", nil, deny(403, "policy_denied")},
		// The strict parse of DESIGN §3 comes before any policy.
		{"mcp batch", mcpRead, []edit{withBody("[]")}, deny(400, "bad_request")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expect(t, tt.name, s.check(t, request(t, tt.fixture, tt.edits...)), tt.want)
		})
	}
	_, doc := s.health(t)
	if got := doc.Checks["policy"].Info["decision_cache"]; got != "off" {
		t.Errorf("/health decision_cache = %v for a policy that reads input.parsed_path, want off", got)
	}
}
