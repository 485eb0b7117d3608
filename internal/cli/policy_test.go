package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// repoPolicies is the default bundle on disk.
const repoPolicies = "../../policies"

// writeBundle writes files (path -> content) under a new directory.
func writeBundle(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, content := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const passingModule = `package m1.authz

import rego.v1

default decision := false

decision if input.m1.tool == "read_file"
`

func TestPolicyTest(t *testing.T) {
	failing := writeBundle(t, map[string]string{
		"authz.rego": passingModule,
		"authz_test.rego": `package m1.authz_test

import rego.v1

import data.m1.authz

test_read_allowed if authz.decision with input as {"m1": {"tool": "read_file"}}

test_write_allowed if authz.decision with input as {"m1": {"tool": "write_file"}}
`,
	})
	broken := writeBundle(t, map[string]string{"authz.rego": "package m1.authz\n\ndecision if {\n"})
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"default bundle on disk passes", []string{repoPolicies}, nil, 0, "PASS:", ""},
		{"embedded default bundle passes", nil, nil, 0, "PASS:", ""},
		{"M1_POLICY_DIR", nil, map[string]string{"M1_POLICY_DIR": failing}, 1, "FAIL", ""},
		{"failing test", []string{failing}, nil, 1, "test_write_allowed: FAIL", ""},
		{"syntax error", []string{broken}, nil, 2, "", "authz.rego:"},
		{"missing directory", []string{filepath.Join(failing, "nope")}, nil, 2, "", "load bundle"},
		{"two directories", []string{repoPolicies, failing}, nil, 2, "", "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1Env(t, tt.env, append([]string{"policy", "test"}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("policy test(%s): exit %d, want %d\n%s", tt.name, r.code, tt.wantCode, r)
			}
			if !strings.Contains(r.stdout, tt.wantStdout) || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("policy test(%s): want stdout with %q and stderr with %q\n%s", tt.name, tt.wantStdout, tt.wantStderr, r)
			}
		})
	}
}

func TestPolicyTestThroughMain(t *testing.T) {
	if r := m1(t, "", "policy", "test", repoPolicies); r.code != 0 || !strings.Contains(r.stdout, "PASS:") {
		t.Errorf("m1 policy test %s: exit %d, want 0 with a PASS summary\n%s", repoPolicies, r.code, r)
	}
}

func TestPolicyEval(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	toolCall := func(tool string) string {
		return `{"m1": {"kind": "tool_call", "tool": "` + tool + `", "args": {}, "args_sha256": "x", "principal": "agent-42", "token": null,
			"request": {"method": "POST", "host": "tools.local", "path": "/mcp"}}}`
	}
	readInput := write("read.json", toolCall("read_file"))
	writeInput := write("write.json", toolCall("write_file"))
	notJSON := write("bad.json", "{nope")
	fakeCheckRequest := write("fake.json", `{"attributes": {"request": {"http": {"nope": 1}}}}`)
	boolBundle := writeBundle(t, map[string]string{"authz.rego": passingModule})
	attrsBundle := writeBundle(t, map[string]string{"authz.rego": `package m1.authz

import rego.v1

decision := {"allowed": false, "reason": "nope", "http_status": 418, "headers": {"x-why": "teapot"}, "body": "short and stout"} if input.attributes.request.http.method == "POST"
`})

	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStatus int
		wantError  string
		wantReason string
		wantCache  bool
		check      func(t *testing.T, r result)
	}{
		{
			name: "raw input allowed", args: []string{repoPolicies, "--input", readInput},
			wantCode: 0, wantStatus: 200, wantCache: true,
		},
		{
			name: "raw input denied", args: []string{repoPolicies, "--input", writeInput},
			wantCode: 1, wantStatus: 401, wantError: "policy_denied", wantReason: "token_missing", wantCache: true,
		},
		{
			name: "flags before DIR, embedded bundle", args: []string{"--input", writeInput},
			wantCode: 1, wantStatus: 401, wantError: "policy_denied", wantReason: "token_missing", wantCache: true,
		},
		{
			name: "raw input from stdin", args: []string{repoPolicies, "--input", "-"}, stdin: toolCall("read_file"),
			wantCode: 0, wantStatus: 200, wantCache: true,
		},
		{
			name: "boolean decision at a dotted path", args: []string{boolBundle, "--input", writeInput, "--path", "data.m1.authz.decision"},
			wantCode: 1, wantStatus: 403, wantError: "policy_denied", wantReason: "denied by policy", wantCache: true,
		},
		{
			name: "CheckRequest fixture allowed", args: []string{repoPolicies, "--input", filepath.Join(fixtures, "mcp-tools-call-read-file.json")},
			wantCode: 0, wantStatus: 200, wantCache: true,
			check: func(t *testing.T, r result) {
				if r.DecisionID == "" || r.GRPCCode != "OK" {
					t.Errorf("decision_id, grpc_code = %q, %q, want an id and OK", r.DecisionID, r.GRPCCode)
				}
			},
		},
		{
			name: "CheckRequest fixture denied", args: []string{repoPolicies, "--input", filepath.Join(fixtures, "rest-tools-write-file-no-token.json")},
			wantCode: 1, wantStatus: 401, wantError: "policy_denied", wantReason: "token_missing", wantCache: true,
		},
		{
			name: "CheckRequest fixture with a bad body", args: []string{repoPolicies, "--input", filepath.Join(fixtures, "mcp-bad-json.json")},
			wantCode: 1, wantStatus: 400, wantError: "bad_request", wantCache: true,
		},
		{
			name: "CheckRequest, tools prefix moved", args: []string{repoPolicies, "--tools-path-prefix", "/t/", "--input", filepath.Join(fixtures, "rest-tools-write-file-no-token.json")},
			wantCode: 1, wantStatus: 403, wantError: "policy_denied", wantReason: "not_a_tool_call", wantCache: true,
		},
		{
			name: "policy reading attributes, not cacheable", args: []string{attrsBundle, "--input", filepath.Join(fixtures, "rest-tools-write-file-no-token.json")},
			// The policy's body replaces the JSON deny body, so the reason
			// does not reach the client; the error is the status message.
			wantCode: 1, wantStatus: 418, wantError: "policy_denied", wantCache: false,
			check: func(t *testing.T, r result) {
				if r.Reason != "" || r.Body != "short and stout" || r.Headers["x-why"] != "teapot" || !strings.Contains(r.CacheOffReason, "input.attributes") {
					t.Errorf("reason, body, headers, cache_off_reason = %q, %q, %v, %q, want none, the policy's body and header, and a reason naming input.attributes", r.Reason, r.Body, r.Headers, r.CacheOffReason)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1(t, tt.stdin, append(append([]string{"policy", "eval"}, tt.args...), "--json")...)
			if r.code != tt.wantCode {
				t.Fatalf("policy eval(%s): exit %d, want %d\n%s", tt.name, r.code, tt.wantCode, r)
			}
			got := decodeResult(t, r.stdout)
			wantDecision := map[int]string{0: "allow", 1: "deny"}[tt.wantCode]
			if got.Decision != wantDecision {
				t.Errorf("policy eval(%s) = %s, want %s", tt.name, got.Decision, wantDecision)
			}
			if got.Status != tt.wantStatus || got.Error != tt.wantError {
				t.Errorf("policy eval(%s) status, error = %d, %q, want %d, %q", tt.name, got.Status, got.Error, tt.wantStatus, tt.wantError)
			}
			if tt.wantReason != "" && got.Reason != tt.wantReason {
				t.Errorf("policy eval(%s) reason = %q, want %q", tt.name, got.Reason, tt.wantReason)
			}
			if got.Cacheable == nil || *got.Cacheable != tt.wantCache || got.Revision == "" {
				t.Errorf("policy eval(%s) cacheable, revision = %v, %q, want %v and a revision", tt.name, got.Cacheable, got.Revision, tt.wantCache)
			}
			if tt.check != nil {
				tt.check(t, got)
			}
		})
	}

	errTests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{"no input flag", []string{repoPolicies}, "--input is required"},
		{"input missing", []string{repoPolicies, "--input", filepath.Join(dir, "nope.json")}, "read input"},
		{"input not JSON", []string{repoPolicies, "--input", notJSON}, "is not JSON"},
		{"input a broken CheckRequest", []string{repoPolicies, "--input", fakeCheckRequest}, "looks like a CheckRequest"},
		{"undefined decision", []string{repoPolicies, "--input", readInput, "--path", "m1/authz/nothing"}, "no rule or data defines the decision path"},
		{"undefined for this input", []string{attrsBundle, "--input", readInput}, "undefined"},
		{"bundle missing", []string{filepath.Join(dir, "nope"), "--input", readInput}, "load bundle"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1(t, "", append([]string{"policy", "eval"}, tt.args...)...)
			if r.code != 2 || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("policy eval(%s): exit %d, want 2 with stderr containing %q\n%s", tt.name, r.code, tt.wantStderr, r)
			}
		})
	}
}

func TestPolicyEvalHumanOutput(t *testing.T) {
	tests := []struct {
		name     string
		input    string
		wantCode int
		want     []string
	}{
		{"raw input", `{"m1": {"kind": "tool_call", "tool": "read_file", "token": null}}`, 0, []string{"decision:", "allow", "revision:", "sha256:", "cacheable:", "yes"}},
		{"CheckRequest", readFixture(t, "rest-tools-write-file-no-token.json"), 1, []string{"decision:", "deny", "reason:", "token_missing", "decision_id:", "cacheable:", "yes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1(t, tt.input, "policy", "eval", repoPolicies, "--input", "-")
			if r.code != tt.wantCode {
				t.Fatalf("policy eval(%s): exit %d, want %d\n%s", tt.name, r.code, tt.wantCode, r)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("policy eval(%s) output lacks %q:\n%s", tt.name, w, r.stdout)
				}
			}
		})
	}
}
