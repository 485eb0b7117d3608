package cli

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/m1-agent/m1/internal/sidecar"
)

// fixtures is the shared CheckRequest fixture directory.
const fixtures = "../../testdata/checkrequests"

// startSidecar runs m1-authz in-process with the embedded default policy on
// 127.0.0.1 and returns its gRPC address.
func startSidecar(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	opts := sidecar.DefaultOptions()
	opts.GRPCAddr, opts.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	opts.AdminToken = "test-admin-token"
	opts.DataDir = t.TempDir()
	opts.Logger = zap.NewNop()
	reg := prometheus.NewRegistry()
	opts.Registerer, opts.Gatherer = reg, reg
	s, err := sidecar.New(ctx, opts)
	if err != nil {
		t.Fatalf("sidecar.New: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("sidecar.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("sidecar.Stop: %v", err)
		}
	})
	return s.Addr().String()
}

func TestCheck(t *testing.T) {
	addr := startSidecar(t)
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args.json")
	if err := os.WriteFile(argsFile, []byte(`{"path":"/etc/hosts"}`), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStatus int
		wantError  string
		wantReason string
	}{
		{
			name:       "read_file",
			args:       []string{"--tool", "read_file", "--args", `{"path":"/etc/hosts"}`},
			wantCode:   0,
			wantStatus: 200,
		},
		{
			name:       "write_file without token",
			args:       []string{"--tool", "write_file", "--args", `{"path":"/tmp/x","content":"hi"}`},
			wantCode:   1,
			wantStatus: 401,
			wantError:  "policy_denied",
			wantReason: "token_missing",
		},
		{
			name:       "bad body",
			args:       []string{"--body", `{"jsonrpc":"2.0","method":"tools/call","params":`},
			wantCode:   1,
			wantStatus: 400,
			wantError:  "bad_request",
		},
		{
			name:       "read_file as raw_body, body from file",
			args:       []string{"--raw", "--path", "/tools/read_file", "--body", "@" + argsFile},
			wantCode:   0,
			wantStatus: 200,
		},
		{
			name:       "REST write_file, body from stdin",
			args:       []string{"--path", "/tools/write_file", "--body", "@-", "--header", "Content-Type: application/json"},
			stdin:      `{"path":"/tmp/x","content":"hi"}`,
			wantCode:   1,
			wantStatus: 401,
			wantError:  "policy_denied",
			wantReason: "token_missing",
		},
		{
			name:       "tool arguments from stdin",
			args:       []string{"--tool", "list_dir", "--args", "@-"},
			stdin:      `{"path":"/"}`,
			wantCode:   0,
			wantStatus: 200,
		},
		{
			name:       "unknown tool",
			args:       []string{"--tool", "delete_everything"},
			wantCode:   1,
			wantStatus: 403,
			wantError:  "policy_denied",
			wantReason: "unknown_tool",
		},
		{
			name:       "MCP session stream",
			args:       []string{"--method", "GET", "--header", "Mcp-Session-Id=s-1"},
			wantCode:   0,
			wantStatus: 200,
		},
		{
			name:       "bad path",
			args:       []string{"--path", "/tools/../etc/passwd", "--body", "{}"},
			wantCode:   1,
			wantStatus: 400,
			wantError:  "bad_path",
		},
		{
			name:       "fixture read_file",
			args:       []string{"--request", filepath.Join(fixtures, "mcp-tools-call-read-file.json")},
			wantCode:   0,
			wantStatus: 200,
		},
		{
			name:       "fixture REST write_file without token",
			args:       []string{"--request", filepath.Join(fixtures, "rest-tools-write-file-no-token.json")},
			wantCode:   1,
			wantStatus: 401,
			wantError:  "policy_denied",
			wantReason: "token_missing",
		},
		{
			name:       "fixture bad JSON from stdin",
			args:       []string{"--request", "-"},
			stdin:      readFixture(t, "mcp-bad-json.json"),
			wantCode:   1,
			wantStatus: 400,
			wantError:  "bad_request",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"check", "--addr", addr, "--json"}, tt.args...)
			r := m1(t, tt.stdin, args...)
			if r.code != tt.wantCode {
				t.Fatalf("check(%s): exit %d, want %d\n%s", tt.name, r.code, tt.wantCode, r)
			}
			got := decodeResult(t, r.stdout)
			wantDecision := map[int]string{0: "allow", 1: "deny"}[tt.wantCode]
			if got.Decision != wantDecision {
				t.Errorf("check(%s) = %s, want %s", tt.name, got.Decision, wantDecision)
			}
			if got.Status != tt.wantStatus || got.Error != tt.wantError {
				t.Errorf("check(%s) status, error = %d, %q, want %d, %q", tt.name, got.Status, got.Error, tt.wantStatus, tt.wantError)
			}
			if tt.wantReason != "" && got.Reason != tt.wantReason {
				t.Errorf("check(%s) reason = %q, want %q", tt.name, got.Reason, tt.wantReason)
			}
			if got.DecisionID == "" || got.Headers["x-m1-decision-id"] != got.DecisionID {
				t.Errorf("check(%s) decision_id = %q, header x-m1-decision-id = %q, want the same non-empty id",
					tt.name, got.DecisionID, got.Headers["x-m1-decision-id"])
			}
			switch wantDecision {
			case "allow":
				if got.GRPCCode != "OK" || !slices.Contains(got.HeadersToRemove, "x-m1-approval-token") || got.Body != "" {
					t.Errorf("check(%s) grpc_code, headers_to_remove, body = %q, %q, %q, want OK, the approval header, none",
						tt.name, got.GRPCCode, got.HeadersToRemove, got.Body)
				}
			case "deny":
				if got.GRPCCode != "PERMISSION_DENIED" || !strings.Contains(got.Body, `"error":"`+tt.wantError+`"`) {
					t.Errorf("check(%s) grpc_code, body = %q, %q, want PERMISSION_DENIED and the JSON deny body", tt.name, got.GRPCCode, got.Body)
				}
			}
		})
	}
}

func TestCheckHumanOutput(t *testing.T) {
	addr := startSidecar(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string
	}{
		{"allow", []string{"--tool", "read_file"}, 0, []string{"decision:", "allow", "status:", "200", "decision_id:", "remove_header:", "x-m1-approval-token", "grpc_code:", "OK"}},
		{"deny", []string{"--tool", "write_file"}, 1, []string{"decision:", "deny", "status:", "401", "error:", "policy_denied", "reason:", "token_missing", "body:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1(t, "", append([]string{"check", "--addr", addr}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("check(%s): exit %d, want %d\n%s", tt.name, r.code, tt.wantCode, r)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("check(%s) output lacks %q:\n%s", tt.name, w, r.stdout)
				}
			}
		})
	}
}

func TestCheckErrors(t *testing.T) {
	refused := closedPort(t)
	silent := silentServer(t)
	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{"connection refused", []string{"--addr", refused, "--tool", "read_file"}, "is m1-authz running there?"},
		{"timeout", []string{"--addr", silent, "--timeout", "300ms", "--tool", "read_file"}, silent},
		{"unknown flag", []string{"--nope"}, "flag provided but not defined"},
		{"positional argument", []string{"extra"}, "unexpected arguments"},
		{"zero timeout", []string{"--timeout", "0s"}, "--timeout must be positive"},
		{"body and tool", []string{"--body", "{}", "--tool", "read_file"}, "cannot be combined"},
		{"request and tool", []string{"--request", "x.json", "--tool", "read_file"}, "--request cannot be combined with --tool"},
		{"request file missing", []string{"--request", "does-not-exist.json"}, "read CheckRequest"},
		{"request not a CheckRequest", []string{"--request", "-"}, "parse CheckRequest"},
		{"args not JSON", []string{"--tool", "read_file", "--args", "{path:1}"}, "--args is not JSON"},
		{"args without tool", []string{"--path", "/tools/read_file", "--args", `{"path":"x"}`}, "--args needs --tool"},
		{"tool to a tool path", []string{"--path", "/tools/write_file", "--tool", "read_file"}, "--tool sends an MCP tools/call"},
		{"bad header", []string{"--header", "no-separator"}, "want name=value"},
		{"pseudo-header", []string{"--header", ":path=/x"}, "want name=value"},
		{"bad context", []string{"--context", "novalue"}, "want key=value"},
		{"body file missing", []string{"--body", "@does-not-exist"}, "read --body"},
		{"bad source address", []string{"--source", "10.0.0.1"}, "source address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"check", "--addr", refused}, tt.args...)
			r := m1(t, `{"not":"a CheckRequest"}`, args...)
			if r.code != 2 {
				t.Fatalf("check(%s): exit %d, want 2\n%s", tt.name, r.code, r)
			}
			if r.stdout != "" {
				t.Errorf("check(%s) stdout = %q, want nothing", tt.name, r.stdout)
			}
			if !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("check(%s) stderr = %q, want it to contain %q", tt.name, r.stderr, tt.wantStderr)
			}
		})
	}
}

func TestCheckDryRun(t *testing.T) {
	tests := []struct {
		name        string
		env         map[string]string
		args        []string
		wantHeaders map[string]string
		check       func(t *testing.T, h *authv3.AttributeContext_HttpRequest, attrs *authv3.AttributeContext)
	}{
		{
			name:        "token in the default header",
			args:        []string{"--tool", "write_file", "--token", "tok-1"},
			wantHeaders: map[string]string{"x-m1-approval-token": "tok-1", "content-type": "application/json", ":path": "/mcp", ":method": "POST"},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				var body struct {
					Method string `json:"method"`
					Params struct {
						Name      string         `json:"name"`
						Arguments map[string]any `json:"arguments"`
					} `json:"params"`
				}
				if err := json.Unmarshal([]byte(h.GetBody()), &body); err != nil || body.Method != "tools/call" || body.Params.Name != "write_file" || body.Params.Arguments == nil {
					t.Errorf("body = %s (%v), want a tools/call of write_file with {} arguments", h.GetBody(), err)
				}
			},
		},
		{
			name:        "approval header from env",
			env:         map[string]string{"M1_APPROVAL_HEADER": "x-m1-approval"},
			args:        []string{"--token", "tok-2"},
			wantHeaders: map[string]string{"x-m1-approval": "tok-2"},
		},
		{
			name:        "approval header flag beats env",
			env:         map[string]string{"M1_APPROVAL_HEADER": "x-m1-approval"},
			args:        []string{"--token", "tok-3", "--approval-header", "X-Approval"},
			wantHeaders: map[string]string{"x-approval": "tok-3"},
		},
		{
			name:        "MCP path from env",
			env:         map[string]string{"M1_MCP_PATH": "/rpc"},
			args:        []string{"--tool", "read_file"},
			wantHeaders: map[string]string{":path": "/rpc"},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				if h.GetPath() != "/rpc" {
					t.Errorf("path = %q, want $M1_MCP_PATH /rpc", h.GetPath())
				}
			},
		},
		{
			name:        "path flag beats env",
			env:         map[string]string{"M1_MCP_PATH": "/rpc"},
			args:        []string{"--tool", "read_file", "--path", "/mcp?session=1"},
			wantHeaders: map[string]string{":path": "/mcp?session=1"},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				if h.GetPath() != "/mcp?session=1" {
					t.Errorf("path = %q, want --path /mcp?session=1", h.GetPath())
				}
			},
		},
		{
			name: "request file with M1_MCP_PATH set",
			env:  map[string]string{"M1_MCP_PATH": "/rpc"},
			args: []string{"--request", filepath.Join(fixtures, "mcp-ping.json")},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				if h.GetPath() != "/mcp" {
					t.Errorf("path = %q, want the file's /mcp (--request is sent as is)", h.GetPath())
				}
			},
		},
		{
			name:        "headers, host, principal, addresses, context",
			args:        []string{"--header", "Host=tools.local", "--header", "accept: application/json", "--header", "Accept=text/event-stream", "--principal", "spiffe://a/b", "--source", "10.0.0.5:53122", "--destination", "10.0.0.9:8080", "--context", "agent=agent-42", "--method", "GET"},
			wantHeaders: map[string]string{":authority": "tools.local", "accept": "application/json,text/event-stream", ":method": "GET"},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, attrs *authv3.AttributeContext) {
				if h.GetSize() != -1 || h.GetHeaders()["content-type"] != "" {
					t.Errorf("size, content-type = %d, %q, want -1 and none without a body", h.GetSize(), h.GetHeaders()["content-type"])
				}
				if attrs.GetSource().GetPrincipal() != "spiffe://a/b" || attrs.GetSource().GetAddress().GetSocketAddress().GetPortValue() != 53122 ||
					attrs.GetDestination().GetAddress().GetSocketAddress().GetAddress() != "10.0.0.9" || attrs.GetContextExtensions()["agent"] != "agent-42" {
					t.Errorf("attributes = %v, want the principal, addresses and context extension", attrs)
				}
			},
		},
		{
			name:        "raw body keeps its content type",
			args:        []string{"--raw", "--body", "abc", "--header", "content-type=text/plain"},
			wantHeaders: map[string]string{"content-type": "text/plain", "content-length": "3", "x-envoy-auth-partial-body": "false"},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				if string(h.GetRawBody()) != "abc" || h.GetBody() != "" {
					t.Errorf("raw_body, body = %q, %q, want abc and none", h.GetRawBody(), h.GetBody())
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1Env(t, tt.env, append([]string{"check", "--dry-run"}, tt.args...)...)
			if r.code != 0 {
				t.Fatalf("check --dry-run(%s): exit %d, want 0\n%s", tt.name, r.code, r)
			}
			req := &authv3.CheckRequest{}
			if err := protojson.Unmarshal([]byte(r.stdout), req); err != nil {
				t.Fatalf("check --dry-run(%s) output is not a protojson CheckRequest: %v\n%s", tt.name, err, r.stdout)
			}
			h := req.GetAttributes().GetRequest().GetHttp()
			for k, v := range tt.wantHeaders {
				if h.GetHeaders()[k] != v {
					t.Errorf("check --dry-run(%s) header %s = %q, want %q", tt.name, k, h.GetHeaders()[k], v)
				}
			}
			if tt.check != nil {
				tt.check(t, h, req.GetAttributes())
			}
		})
	}
}

func TestCheckAddrFromEnv(t *testing.T) {
	addr := startSidecar(t)
	r := m1Env(t, map[string]string{"M1_AUTHZ_ADDR": addr}, "check", "--tool", "read_file")
	if r.code != 0 {
		t.Errorf("check with $M1_AUTHZ_ADDR=%s: exit %d, want 0\n%s", addr, r.code, r)
	}
	r = m1Env(t, map[string]string{"M1_AUTHZ_ADDR": closedPort(t)}, "check", "--addr", addr, "--tool", "read_file")
	if r.code != 0 {
		t.Errorf("check --addr over a dead $M1_AUTHZ_ADDR: exit %d, want 0\n%s", r.code, r)
	}
}

// closedPort returns a 127.0.0.1 address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentServer accepts TCP connections and never answers.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
			close(done)
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

func readFixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtures, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
