package devproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/demotool"
	"github.com/m1-agent/m1/internal/devproxy"
	"github.com/m1-agent/m1/internal/sidecar"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/toolcall"
)

const audience = "tools.local"

// authzServer is a real m1-authz with the embedded default policy and an
// EdDSA key whose public half it trusts.
type authzServer struct {
	addr string
	key  *approval.SigningKey
	reg  *prometheus.Registry // its metrics
}

func startAuthz(t *testing.T) *authzServer { return startAuthzWith(t, "") }

// startAuthzWith runs m1-authz with the policy bundle in dir ("" for the
// embedded default).
func startAuthzWith(t *testing.T, policyDir string) *authzServer {
	t.Helper()
	key, err := approval.GenerateKey(approval.AlgEdDSA, "k1")
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := key.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	o := sidecar.DefaultOptions()
	reg := prometheus.NewRegistry()
	o.GRPCAddr, o.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	o.Logger, o.Registerer, o.Gatherer = zap.NewNop(), reg, reg
	o.DataDir = testenv.DataDir(t) // a store that has been running: tokens issued now are past its epoch
	o.JWKSFile, o.Audience = jwksFile, audience
	o.PolicyDir = policyDir
	ctx := context.Background()
	s, err := sidecar.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return &authzServer{addr: s.Addr().String(), key: key, reg: reg}
}

// mint signs an approval of one call of tool with args (a JSON object).
func (a *authzServer) mint(t *testing.T, tool, args, runID string) string {
	t.Helper()
	h := &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/" + tool, Body: args}
	call, rerr := toolcall.Parse(h, toolcall.HeadersOf(h), toolcall.Options{MCPPath: "/mcp", ToolsPathPrefix: "/tools/", MaxBodyBytes: 1 << 20})
	if rerr != nil {
		t.Fatalf("hash args %s: %v", args, rerr)
	}
	now := time.Now()
	tok, err := approval.Mint(a.key, approval.Claims{
		Issuer: "m1-cli", Subject: "agent-42", Audience: []string{audience}, Actor: "operator",
		IssuedAt: now, NotBefore: now, Expiry: now.Add(2 * time.Minute),
		Kind: approval.KindApproval, Tool: tool, ArgsSHA256: call.ArgsSHA256, RunID: runID,
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// seen is one request the upstream received.
type seen struct {
	method, uri, host string
	header            http.Header
	body              []byte
}

// upstream records every request, then answers with next (or 200 JSON).
type upstream struct {
	url  string
	mu   sync.Mutex
	reqs []seen
}

func startUpstream(t *testing.T, next http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, seen{r.Method, r.RequestURI, r.Host, r.Header.Clone(), b})
		u.mu.Unlock()
		if next != nil {
			next(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", "yes")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":7,"result":{"content":[]}}`)
	}))
	t.Cleanup(srv.Close)
	u.url = srv.URL
	return u
}

func (u *upstream) taken() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.reqs
	u.reqs = nil
	return r
}

// startProxy runs a dev proxy on 127.0.0.1:0 and returns its base URL.
func startProxy(t *testing.T, authzAddr, upstreamURL string, mod func(*devproxy.Options)) string {
	t.Helper()
	o := devproxy.DefaultOptions()
	o.Listen, o.AuthzAddr, o.Upstream = "127.0.0.1:0", authzAddr, upstreamURL
	o.Logger = zap.NewNop()
	if mod != nil {
		mod(&o)
	}
	p, err := devproxy.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return "http://" + p.Addr().String()
}

// answer is what the client got.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// errorCode is the "error" member of a JSON answer, or "".
func (a answer) errorCode() string { return a.member("error") }

// reason is the "reason" member of a JSON answer, or "".
func (a answer) reason() string { return a.member("reason") }

func (a answer) member(name string) string {
	var v map[string]any
	_ = json.Unmarshal(a.body, &v)
	s, _ := v[name].(string)
	return s
}

func send(t *testing.T, method, url string, header map[string]string, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

func toolsCall(id int, tool, args string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":%q,"arguments":%s}}`, id, tool, args)
}

// TestProxy runs one sequence of requests through a proxy in front of a real
// m1-authz; the cases share the proxy and the single-use state, in order.
func TestProxy(t *testing.T) {
	az := startAuthz(t)
	up := startUpstream(t, nil)
	base := startProxy(t, az.addr, up.url, func(o *devproxy.Options) { o.MaxRequestBytes = 4096 })

	// Key order, white space and escapes differ from the canonical form the
	// token's hash was made from: the body must still reach the tool as sent.
	writeArgs := `{"path":"notes.txt","content":"h\u00e9 \"there\""}`
	writeBody := "{\"jsonrpc\":\"2.0\", \"id\":7,\n \"method\":\"tools/call\",\"params\":{\"arguments\":{\"content\":\"h\u00e9 \\\"there\\\"\",  \"path\":\"notes.txt\"},\"name\":\"write_file\"}}"
	tok := az.mint(t, "write_file", writeArgs, "run-1")
	mcpHeaders := func(extra map[string]string) map[string]string {
		h := map[string]string{"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	big := toolsCall(3, "read_file", `{"path":"`+strings.Repeat("a", 5000)+`"}`)

	tests := []struct {
		name         string
		method, path string
		header       map[string]string
		body         string
		wantStatus   int
		wantError    string // the JSON "error" of a deny; "" when allowed
		wantReason   string // the JSON "reason" of a policy deny
		check        func(t *testing.T, got seen, a answer)
	}{
		{
			name: "approved MCP write_file", method: "POST", path: "/mcp?trace=1",
			header: mcpHeaders(map[string]string{
				"X-M1-Approval-Token": tok,
				"X-M1-Decision-Id":    "forged",
				"X-M1-Run-Id":         "forged",
				"X-M1-Principal":      "forged",
				"X-M1-Anything":       "forged",
			}),
			body: writeBody, wantStatus: 200,
			check: func(t *testing.T, got seen, a answer) {
				if !bytes.Equal(got.body, []byte(writeBody)) {
					t.Errorf("upstream body = %q, want the client's bytes %q", got.body, writeBody)
				}
				if got.uri != "/mcp?trace=1" || got.method != "POST" {
					t.Errorf("upstream request = %s %s, want POST /mcp?trace=1", got.method, got.uri)
				}
				for name, want := range map[string]string{
					"X-M1-Approval-Token":       "",
					"X-M1-Anything":             "",
					"X-M1-Run-Id":               "run-1",
					"X-M1-Principal":            "agent-42",
					"X-Envoy-Auth-Partial-Body": "false",
					"Content-Type":              "application/json",
				} {
					if v := strings.Join(got.header.Values(name), ","); v != want {
						t.Errorf("upstream header %s = %q, want %q", name, v, want)
					}
				}
				if id := got.header.Get("X-M1-Decision-Id"); id == "" || id == "forged" {
					t.Errorf("upstream x-m1-decision-id = %q, want the sidecar's", id)
				}
				if got.header.Get("X-Request-Id") == "" {
					t.Error("upstream got no x-request-id")
				}
				if a.header.Get("X-Upstream") != "yes" {
					t.Errorf("client did not get the upstream's answer: %v", a.header)
				}
			},
		},
		{
			name: "same token again", method: "POST", path: "/mcp",
			header: mcpHeaders(map[string]string{"X-M1-Approval-Token": tok}),
			body:   writeBody, wantStatus: 403, wantError: "token_replayed",
		},
		{
			name: "write_file without a token", method: "POST", path: "/mcp",
			header: mcpHeaders(nil), body: toolsCall(2, "write_file", writeArgs),
			wantStatus: 401, wantError: "policy_denied", wantReason: "token_missing",
		},
		{
			name: "token for other arguments", method: "POST", path: "/mcp",
			header:     mcpHeaders(map[string]string{"X-M1-Approval-Token": az.mint(t, "write_file", writeArgs, "")}),
			body:       toolsCall(2, "write_file", `{"path":"other.txt","content":"x"}`),
			wantStatus: 403, wantError: "args_mismatch",
		},
		{
			name: "REST read_file needs no token", method: "POST", path: "/tools/read_file",
			header: map[string]string{"Content-Type": "application/json"}, body: `{"path":"notes.txt"}`,
			wantStatus: 200,
		},
		{
			name: "body over MaxRequestBytes is sent partial", method: "POST", path: "/mcp",
			header: mcpHeaders(nil), body: big,
			wantStatus: 413, wantError: "body_too_large",
		},
		{
			name: "plain HTTP is not a tool call", method: "GET", path: "/admin",
			wantStatus: 403, wantError: "policy_denied", wantReason: "not_a_tool_call",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := send(t, tt.method, base+tt.path, tt.header, tt.body)
			got := up.taken()
			if a.status != tt.wantStatus || a.errorCode() != tt.wantError || (tt.wantReason != "" && a.reason() != tt.wantReason) {
				t.Fatalf("%s %s = %d %s, want %d %q %q", tt.method, tt.path, a.status, a.body, tt.wantStatus, tt.wantError, tt.wantReason)
			}
			if tt.wantError != "" {
				if len(got) != 0 {
					t.Errorf("denied request reached the upstream %d times", len(got))
				}
				if ct := a.header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("deny Content-Type = %q, want application/json", ct)
				}
				if !strings.Contains(string(a.body), `"decision_id"`) {
					t.Errorf("deny body %s has no decision_id", a.body)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("upstream called %d times, want exactly once", len(got))
			}
			if tt.check != nil {
				tt.check(t, got[0], a)
			}
		})
	}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestLocalAnswers covers what the proxy answers itself, without m1-authz
// deciding: bodies over the limit without allow_partial_message, and a
// failed check (failure_mode_allow: false).
func TestLocalAnswers(t *testing.T) {
	az := startAuthz(t)
	tests := []struct {
		name       string
		authz      bool // a live m1-authz
		mod        func(o *devproxy.Options, bodyLen int64)
		body       string
		wantStatus int
		wantError  string // JSON "error"; "" for a non-JSON answer
		wantBody   string // substring of the answer
	}{
		{"partial body refused like Envoy", true, func(o *devproxy.Options, n int64) { o.MaxRequestBytes, o.AllowPartial = n-1, false },
			toolsCall(1, "read_file", `{"path":"notes.txt"}`), 413, "", "Payload Too Large"},
		{"body of exactly the limit is checked", true, func(o *devproxy.Options, n int64) { o.MaxRequestBytes, o.AllowPartial = n, false },
			toolsCall(1, "write_file", `{"path":"n","content":""}`), 401, "policy_denied", "token_missing"},
		{"authz down", false, nil, toolsCall(1, "read_file", `{"path":"notes.txt"}`), 403, "authz_unavailable", "Unavailable"},
		{"authz down, status_on_error 503", false, func(o *devproxy.Options, _ int64) { o.StatusOnError = 503 },
			toolsCall(1, "read_file", `{"path":"notes.txt"}`), 503, "authz_unavailable", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startUpstream(t, nil)
			addr := freeAddr(t)
			if tt.authz {
				addr = az.addr
			}
			base := startProxy(t, addr, up.url, func(o *devproxy.Options) {
				if tt.mod != nil {
					tt.mod(o, int64(len(tt.body)))
				}
			})
			a := send(t, "POST", base+"/mcp", map[string]string{"Content-Type": "application/json"}, tt.body)
			if a.status != tt.wantStatus || a.errorCode() != tt.wantError || !strings.Contains(string(a.body), tt.wantBody) {
				t.Errorf("%s = %d %s, want %d %q %q", tt.name, a.status, a.body, tt.wantStatus, tt.wantError, tt.wantBody)
			}
			if n := len(up.taken()); n != 0 {
				t.Errorf("%s: upstream called %d times, want never", tt.name, n)
			}
		})
	}
}

// TestPartialBodyForwardedWhole: a policy that allows a plain HTTP request
// whose body was cut for the check still gets the whole body to the tool.
func TestPartialBodyForwardedWhole(t *testing.T) {
	dir := t.TempDir()
	policy := "package m1.authz\n\ndecision := {\"allowed\": true} if input.m1.kind == \"http\"\n"
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	az := startAuthzWith(t, dir)
	up := startUpstream(t, nil)
	base := startProxy(t, az.addr, up.url, func(o *devproxy.Options) { o.MaxRequestBytes = 10 })
	body := strings.Repeat("0123456789", 100)
	a := send(t, "POST", base+"/upload", map[string]string{"Content-Type": "text/plain"}, body)
	got := up.taken()
	if a.status != 200 || len(got) != 1 {
		t.Fatalf("POST /upload = %d %s, upstream called %d times; want 200, once", a.status, a.body, len(got))
	}
	if string(got[0].body) != body {
		t.Errorf("upstream body = %d bytes, want the whole %d", len(got[0].body), len(body))
	}
	if v := got[0].header.Get("X-Envoy-Auth-Partial-Body"); v != "true" {
		t.Errorf("upstream x-envoy-auth-partial-body = %q, want true", v)
	}
}

// TestStreamsServerSentEvents: the first event reaches the client while the
// upstream still holds the stream open.
func TestStreamsServerSentEvents(t *testing.T) {
	az := startAuthz(t)
	release := make(chan struct{})
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "event: message\ndata: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	base := startProxy(t, az.addr, up.url, nil)

	// GET /mcp is the MCP session stream; the default policy allows it.
	req, _ := http.NewRequest(http.MethodGet, base+"/mcp", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /mcp = %d %s, want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := bufio.NewScanner(resp.Body)
	next := func(want string) {
		t.Helper()
		for lines.Scan() {
			if lines.Text() == want {
				return
			}
		}
		t.Fatalf("stream ended (%v) before %q", lines.Err(), want)
	}
	next("data: one") // arrives before the upstream is released: streamed, not buffered
	close(release)
	next("data: two")
}

// demoPath is m1-authz, the demo tool and the proxy in front of both.
type demoPath struct {
	az   *authzServer
	tool *demotool.Server
	dir  string // the tool's files
	base string // the proxy's URL
}

// startDemoPath starts a demoPath: m1-authz with the policy bundle in
// policyDir ("" for the embedded default), the demo tool over a new
// directory holding files (name → content).
func startDemoPath(t *testing.T, policyDir string, files map[string]string) demoPath {
	t.Helper()
	p := demoPath{az: startAuthzWith(t, policyDir), dir: t.TempDir()}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(p.dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if p.tool, err = demotool.New(p.dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.tool.Close() })
	ts := httptest.NewServer(p.tool)
	t.Cleanup(ts.Close)
	p.base = startProxy(t, p.az.addr, ts.URL, nil)
	return p
}

// TestWithDemoTool runs the whole path: a raw HTTP MCP client, the proxy,
// m1-authz and the demo tool, which must run an approved call exactly once.
func TestWithDemoTool(t *testing.T) {
	p := startDemoPath(t, "", map[string]string{"notes.txt": "hello"})
	az, tool, dir, base := p.az, p.tool, p.dir, p.base

	args := `{"path":"out.txt","content":"approved"}`
	tok := az.mint(t, demotool.WriteFile, args, "")
	h := map[string]string{
		"Content-Type":         "application/json",
		"Accept":               "application/json, text/event-stream",
		"MCP-Protocol-Version": "2025-06-18",
		"X-M1-Approval-Token":  tok,
	}
	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantBody   string // substring
		wantCalls  int    // write_file calls so far
	}{
		{"approved write_file runs", toolsCall(1, demotool.WriteFile, args), 200, `"bytes":8`, 1},
		{"replay does not run", toolsCall(2, demotool.WriteFile, args), 403, `"token_replayed"`, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := send(t, "POST", base+"/mcp", h, tt.body)
			if a.status != tt.wantStatus || !strings.Contains(string(a.body), tt.wantBody) {
				t.Errorf("%s = %d %s, want %d with %s", tt.name, a.status, a.body, tt.wantStatus, tt.wantBody)
			}
			if got := tool.Calls(demotool.WriteFile); got != tt.wantCalls {
				t.Errorf("%s: write_file ran %d times, want %d", tt.name, got, tt.wantCalls)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(dir, "out.txt")); err != nil || string(b) != "approved" {
		t.Errorf("out.txt = %q, %v; want approved", b, err)
	}
	a := send(t, "POST", base+"/tools/read_file", map[string]string{"Content-Type": "application/json"}, `{"path":"notes.txt"}`)
	if a.status != 200 || !strings.Contains(string(a.body), `"content":"hello"`) {
		t.Errorf("REST read_file through the proxy = %d %s, want 200 hello", a.status, a.body)
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*devproxy.Options)
		want string // substring of the error
	}{
		{"no upstream", func(o *devproxy.Options) { o.Upstream = "" }, "Upstream"},
		{"upstream not a URL", func(o *devproxy.Options) { o.Upstream = "127.0.0.1:3000" }, "Upstream"},
		{"upstream with a query", func(o *devproxy.Options) { o.Upstream = "http://127.0.0.1:3000/?a=b" }, "query"},
		{"no authz", func(o *devproxy.Options) { o.AuthzAddr = "" }, "AuthzAddr"},
		{"zero body limit", func(o *devproxy.Options) { o.MaxRequestBytes = 0 }, "MaxRequestBytes"},
		{"zero timeout", func(o *devproxy.Options) { o.Timeout = 0 }, "Timeout"},
		{"bad status on error", func(o *devproxy.Options) { o.StatusOnError = 42 }, "StatusOnError"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := devproxy.DefaultOptions()
			o.Upstream = "http://127.0.0.1:3000"
			tt.mod(&o)
			if _, err := devproxy.New(o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%s) = %v, want an error naming %s", tt.name, err, tt.want)
			}
		})
	}
}

func TestStopTwice(t *testing.T) {
	o := devproxy.DefaultOptions()
	o.Listen, o.Upstream = "127.0.0.1:0", "http://127.0.0.1:3000"
	p, err := devproxy.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("second Stop = %v, want nil", err)
	}
	if err := p.Start(ctx); err == nil {
		t.Fatal("Start after Stop succeeded, want an error")
	}
}

// publicOnly allows read_file of public.txt and nothing else: the policy
// reads the argument that the tool acts on.
const publicOnly = `package m1.authz

import rego.v1

default decision := {"allowed": false, "reason": "not_public", "http_status": 403}

decision := {"allowed": true} if {
	input.m1.kind == "tool_call"
	input.m1.tool == "read_file"
	input.m1.args.path == "public.txt"
}
`

// TestDifferentialsClosed runs the security review's differentials through
// the proxy, m1-authz and the demo tool: each is a request whose arguments
// the policy reads one way and the tool (Go's encoding/json, which matches
// member names regardless of case, or a parser chosen by media type) would
// read another. None reaches the tool.
func TestDifferentialsClosed(t *testing.T) {
	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "authz.rego"), []byte(publicOnly), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startDemoPath(t, policyDir, map[string]string{"public.txt": "public", "secret.txt": "TOP SECRET"})
	tool, base := p.tool, p.base
	mcpHeaders := map[string]string{"Content-Type": "application/json", "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
	jsonType := map[string]string{"Content-Type": "application/json"}

	tests := []struct {
		name, path string
		header     map[string]string
		body       string
		wantStatus int
		wantError  string // "" for an allowed call
		wantCalls  int    // read_file calls so far
	}{
		{"mcp public.txt runs", "/mcp", mcpHeaders, toolsCall(1, demotool.ReadFile, `{"path":"public.txt"}`), 200, "", 1},
		{"rest public.txt runs", "/tools/read_file", jsonType, `{"path":"public.txt"}`, 200, "", 2},
		{"mcp PATH beside path", "/mcp", mcpHeaders, toolsCall(2, demotool.ReadFile, `{"path":"public.txt","PATH":"secret.txt"}`), 400, "bad_request", 2},
		{"rest PATH beside path", "/tools/read_file", jsonType, `{"path":"public.txt","PATH":"secret.txt"}`, 400, "bad_request", 2},
		{"rest Path before path", "/tools/read_file", jsonType, `{"Path":"secret.txt","path":"public.txt"}`, 400, "bad_request", 2},
		{"rest form media type", "/tools/read_file", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, `{"path":"public.txt"}`, 415, "unsupported_media_type", 2},
		{"rest query on the tool path", "/tools/read_file?path=secret.txt", jsonType, `{"path":"public.txt"}`, 400, "bad_path", 2},
		{"mcp name header disagrees", "/mcp", map[string]string{"Content-Type": "application/json", "Mcp-Method": "tools/call", "Mcp-Name": "list_dir"}, toolsCall(3, demotool.ReadFile, `{"path":"public.txt"}`), 400, "header_mismatch", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := send(t, "POST", base+tt.path, tt.header, tt.body)
			if a.status != tt.wantStatus || a.errorCode() != tt.wantError {
				t.Errorf("%s = %d %s, want %d %q", tt.name, a.status, a.body, tt.wantStatus, tt.wantError)
			}
			if strings.Contains(string(a.body), "TOP SECRET") {
				t.Errorf("%s: the answer leaks secret.txt: %s", tt.name, a.body)
			}
			if got := tool.Calls(demotool.ReadFile); got != tt.wantCalls {
				t.Errorf("%s: read_file ran %d times, want %d", tt.name, got, tt.wantCalls)
			}
		})
	}
}

// TestUnderscoreHeadersRemoved: a client's x_m1_principal would reach a CGI,
// WSGI or PHP tool as HTTP_X_M1_PRINCIPAL, the variable of M1's own
// x-m1-principal; it never reaches the tool.
func TestUnderscoreHeadersRemoved(t *testing.T) {
	az := startAuthz(t)
	up := startUpstream(t, nil)
	base := startProxy(t, az.addr, up.url, nil)
	a := send(t, "POST", base+"/tools/read_file", map[string]string{
		"Content-Type": "application/json", "x_m1_principal": "spoof", "X-M1_Run-Id": "forged", "x_other": "keep",
	}, `{"path":"a"}`)
	if a.status != 200 {
		t.Fatalf("read_file = %d %s, want 200", a.status, a.body)
	}
	got := up.taken()
	if len(got) != 1 {
		t.Fatalf("upstream got %d requests, want 1", len(got))
	}
	for k, v := range got[0].header {
		if strings.HasPrefix(strings.ToLower(strings.ReplaceAll(k, "_", "-")), "x-m1-") && k != "X-M1-Decision-Id" {
			t.Errorf("upstream got client header %s: %v", k, v)
		}
	}
	if got[0].header.Get("x_other") != "keep" {
		t.Errorf("upstream headers %v: x_other (not M1's) must pass", got[0].header)
	}
}

// headerTransport adds fixed headers to every request, as an agent that
// carries an approval token would.
type headerTransport struct {
	header map[string]string
	sent   *sync.Map // Mcp-Method values seen, for the test
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h.header {
		r.Header.Set(k, v)
	}
	if m := r.Header.Get("Mcp-Method"); m != "" {
		h.sent.Store(m, r.Header.Get("Mcp-Name"))
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestStatelessMCPClient runs the official MCP Go SDK's client, unmodified,
// through the proxy, m1-authz and the demo tool in the MCP 2026-07-28
// stateless flow: server/discover instead of initialize, no session id,
// Mcp-Method and Mcp-Name on every request (which M1 checks against the
// body).
func TestStatelessMCPClient(t *testing.T) {
	p := startDemoPath(t, "", map[string]string{"notes.txt": "hello"})
	az, tool, base := p.az, p.tool, p.base

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	connect := func(header map[string]string) (*mcp.ClientSession, *sync.Map) {
		t.Helper()
		sent := &sync.Map{}
		tr := &mcp.StreamableClientTransport{
			Endpoint:             base + "/mcp",
			HTTPClient:           &http.Client{Transport: headerTransport{header, sent}},
			DisableStandaloneSSE: true,
			MaxRetries:           -1,
		}
		cs, err := mcp.NewClient(&mcp.Implementation{Name: "m1-test", Version: "1"}, nil).Connect(ctx, tr, nil)
		if err != nil {
			t.Fatalf("Connect through M1: %v", err)
		}
		t.Cleanup(func() { _ = cs.Close() })
		return cs, sent
	}
	cs, sent := connect(nil)
	if v := cs.InitializeResult().ProtocolVersion; v < "2026-07-28" {
		t.Errorf("negotiated protocol %s, want the stateless 2026-07-28 or later", v)
	}
	if id := cs.ID(); id != "" {
		t.Errorf("session id %q, want none (stateless)", id)
	}
	if _, ok := sent.Load("server/discover"); !ok {
		t.Errorf("client did not discover with server/discover (Mcp-Method sent: %v)", keys(sent))
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: demotool.ReadFile, Arguments: map[string]any{"path": "notes.txt"}})
	if err != nil || res.IsError {
		t.Fatalf("read_file through M1 = %v, %v; want a result", res, err)
	}
	if name, _ := sent.Load("tools/call"); name != demotool.ReadFile {
		t.Errorf("Mcp-Name of tools/call = %v, want %s", name, demotool.ReadFile)
	}
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: demotool.WriteFile, Arguments: map[string]any{"path": "x.txt", "content": "no"}}); err == nil {
		t.Errorf("write_file without an approval = ok, want M1's deny")
	}
	if got := tool.Calls(demotool.WriteFile); got != 0 {
		t.Errorf("write_file ran %d times without an approval", got)
	}

	args := `{"content":"yes","path":"x.txt"}`
	approved, _ := connect(map[string]string{"X-M1-Approval-Token": az.mint(t, demotool.WriteFile, args, "")})
	if res, err := approved.CallTool(ctx, &mcp.CallToolParams{Name: demotool.WriteFile, Arguments: map[string]any{"path": "x.txt", "content": "yes"}}); err != nil || res.IsError {
		t.Fatalf("approved write_file = %v, %v; want a result", res, err)
	}
	if got := tool.Calls(demotool.WriteFile); got != 1 {
		t.Errorf("approved write_file ran %d times, want 1", got)
	}
}

func keys(m *sync.Map) []any {
	var out []any
	m.Range(func(k, _ any) bool { out = append(out, k); return true })
	return out
}

// Every request logs one line with its decision and the status the client
// got: the upstream's on an allow, the sidecar's on a deny.
func TestRequestLogLine(t *testing.T) {
	az := startAuthz(t)
	up := startUpstream(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })
	core, logs := observer.New(zap.InfoLevel)
	base := startProxy(t, az.addr, up.url, func(o *devproxy.Options) { o.Logger = zap.New(core) })
	h := map[string]string{"Content-Type": "application/json"}
	send(t, "POST", base+"/tools/read_file", h, `{"path":"notes.txt"}`)
	send(t, "POST", base+"/tools/write_file", h, `{"path":"x","content":"y"}`)
	lines := logs.FilterMessage("request").AllUntimed()
	if len(lines) != 2 {
		t.Fatalf("logged %d request lines, want 2: %v", len(lines), lines)
	}
	for i, want := range []struct {
		decision string
		status   int64
	}{{"allow", http.StatusAccepted}, {"deny", http.StatusUnauthorized}} {
		m := lines[i].ContextMap()
		if m["decision"] != want.decision || m["status"] != want.status {
			t.Errorf("request line %d: decision %v, status %v; want %s, %d", i, m["decision"], m["status"], want.decision, want.status)
		}
	}
}
