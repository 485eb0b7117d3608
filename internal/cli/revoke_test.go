package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/sidecar"
	"github.com/m1-agent/m1/internal/testenv"
)

const (
	e2eAudience   = "tools.example"
	e2eAdminToken = "test-admin-token-for-revocations"
)

// tokenSidecar is an in-process m1-authz that verifies approval tokens.
type tokenSidecar struct {
	grpcAddr, adminURL string
}

// startTokenSidecar runs m1-authz in-process with the default policy, the
// JWKS file jwks and/or the HS256 secret, on 127.0.0.1.
func startTokenSidecar(t *testing.T, jwks, secret string) tokenSidecar {
	t.Helper()
	ctx := context.Background()
	opts := sidecar.DefaultOptions()
	opts.GRPCAddr, opts.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	opts.AdminToken = e2eAdminToken
	opts.DataDir = testenv.DataDir(t) // a store that has been running: tokens issued now are past its epoch
	opts.JWKSFile, opts.JWTSecret, opts.Audience = jwks, secret, e2eAudience
	opts.Logger = zap.NewNop()
	reg := prometheus.NewRegistry()
	opts.Registerer, opts.Gatherer = reg, reg
	s, err := sidecar.New(ctx, opts)
	if err != nil {
		t.Fatalf("sidecar.New: %v", err)
	}
	// Start returns once both servers listen; a Start that never returns
	// is reported, not waited for until the test binary's timeout.
	started := make(chan error, 1)
	go func() { started <- s.Start(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("sidecar.Start: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("sidecar.Start (JWKSFile %q) did not return within 30s", jwks)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("sidecar.Stop: %v", err)
		}
	})
	return tokenSidecar{grpcAddr: s.Addr().String(), adminURL: "http://" + s.AdminAddr().String()}
}

// e2e runs m1 commands against one sidecar, with the environment an
// operator would set.
type e2e struct {
	t   *testing.T
	sc  tokenSidecar
	env map[string]string
}

func newE2E(t *testing.T, sc tokenSidecar, env map[string]string) *e2e {
	full := map[string]string{
		"M1_AUTHZ_ADDR":  sc.grpcAddr,
		"M1_ADMIN_URL":   sc.adminURL,
		"M1_ADMIN_TOKEN": e2eAdminToken,
		"M1_AUDIENCE":    e2eAudience,
		"USER":           "alice",
	}
	for k, v := range env {
		full[k] = v
	}
	return &e2e{t: t, sc: sc, env: full}
}

func (e *e2e) run(args ...string) runResult {
	e.t.Helper()
	return m1With(e.t, e.env, "", args...)
}

// mint runs m1 token mint and returns the token, as TOKEN=$(m1 token mint …).
func (e *e2e) mint(args ...string) string {
	e.t.Helper()
	r := e.run(append([]string{"token", "mint"}, args...)...)
	if r.code != exitOK || r.stderr != "" {
		e.t.Fatalf("m1 token mint %q: %s", args, r)
	}
	return strings.TrimSuffix(r.stdout, "\n")
}

// check runs m1 check --json --token token for a call and wants the
// decision: "" for an allow, else the deny error code.
func (e *e2e) check(step, token, tool, args, want string) {
	e.t.Helper()
	r := e.run("check", "--json", "--token", token, "--tool", tool, "--args", args)
	if r.code == exitError {
		e.t.Fatalf("%s: m1 check: %s", step, r)
	}
	res := decodeResult(e.t, r.stdout)
	wantCode := exitOK
	if want != "" {
		wantCode = exitDeny
	}
	if r.code != wantCode || res.Error != want {
		e.t.Fatalf("%s: m1 check = exit %d, %s %q (%s), want exit %d, %q", step, r.code, res.Decision, res.Error, res.Reason, wantCode, want)
	}
}

// revoke runs m1 revoke and wants exit status code; it returns the result.
func (e *e2e) revoke(step string, code int, args ...string) runResult {
	e.t.Helper()
	r := e.run(append([]string{"revoke"}, args...)...)
	if r.code != code {
		e.t.Fatalf("%s: m1 revoke %q: exit %d, want %d\n%s", step, args, r.code, code, r)
	}
	return r
}

func TestTokenEndToEnd(t *testing.T) {
	dir := t.TempDir()
	keysGen(t, dir, "--kid", "ops-1")
	jwks := filepath.Join(dir, "jwks.json")
	e := newE2E(t, startTokenSidecar(t, jwks, ""), map[string]string{"M1_SIGNING_KEY": filepath.Join(dir, "ops-1.jwk")})
	const args = `{"path":"/tmp/x","content":"hi"}`
	approve := func() string { return e.mint("--sub", "agent-7", "--tool", "write_file", "--args", args) }

	// An approval allows its call once.
	token := approve()
	e.check("first use", token, "write_file", args, "")
	e.check("replay", token, "write_file", args, deny.TokenReplayed)

	// Arguments JCS-equivalent to the approved ones are the same call; others
	// are not, and a denied call leaves the token usable.
	token = approve()
	e.check("extra argument", token, "write_file", `{"path":"/tmp/x","content":"hi","mode":"0777"}`, deny.ArgsMismatch)
	e.check("other tool", token, "delete_file", args, deny.ToolMismatch)
	e.check("JCS-equivalent arguments", token, "write_file", " {\"content\" : \"\\u0068i\", \"path\":\"/tmp/x\"} ", "")

	// Revoking the agent refuses its fresh tokens until lifted.
	r := e.revoke("revoke sub", exitOK, "--sub", "agent-7")
	var rev map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rev); err != nil || rev["sub"] != "agent-7" {
		t.Fatalf("m1 revoke --sub output %q: %v, want the revocation", r.stdout, err)
	}
	e.check("revoked agent", approve(), "write_file", args, deny.TokenRevoked)
	if r := e.revoke("list", exitOK, "--list"); !strings.Contains(r.stdout, `"sub": "agent-7"`) {
		t.Errorf("m1 revoke --list output lacks the revocation:\n%s", r.stdout)
	}
	if r := e.revoke("lift", exitOK, "--sub", "agent-7", "--lift"); !strings.Contains(r.stdout, "lifted") {
		t.Errorf("m1 revoke --lift output: %s", r)
	}
	e.check("lifted", approve(), "write_file", args, "")
	if r := e.revoke("lift again", exitDeny, "--sub", "agent-7", "--lift"); !strings.Contains(r.stdout, `"not_found"`) || !strings.Contains(r.stderr, "404") {
		t.Errorf("m1 revoke --lift of nothing: %s", r)
	}

	// Revoking one jti refuses that token only.
	r = e.run("token", "mint", "--json", "--sub", "agent-7", "--tool", "write_file", "--args", args)
	var m mintResult
	if err := json.Unmarshal([]byte(r.stdout), &m); r.code != exitOK || err != nil {
		t.Fatalf("m1 token mint --json: %v\n%s", err, r)
	}
	e.revoke("revoke jti", exitOK, "--jti", m.JTI, "--until", m.Exp)
	e.check("revoked jti", m.Token, "write_file", args, deny.TokenRevoked)
	e.check("other token", approve(), "write_file", args, "")

	// A grant allows its tools up to max_uses times.
	grant := e.mint("--sub", "agent-8", "--grant", "--tools", "write_*", "--max-uses", "2")
	e.check("grant use 1", grant, "write_file", args, "")
	e.check("grant other tool", grant, "read_file", `{"path":"/etc/hosts"}`, deny.ToolMismatch)
	e.check("grant use 2", grant, "write_file", `{"path":"/tmp/y","content":"other"}`, "")
	e.check("grant use 3", grant, "write_file", args, deny.GrantExhausted)

	// A token for another audience, and one from a key the sidecar does
	// not hold.
	e.check("other audience", e.mint("--sub", "agent-7", "--aud", "billing.example", "--tool", "write_file", "--args", args), "write_file", args, "audience_mismatch")
	other := keysGen(t, t.TempDir(), "--kid", "rogue").PrivateKey
	e.check("unknown kid", e.mint("--key", other, "--sub", "agent-7", "--tool", "write_file", "--args", args), "write_file", args, "token_invalid")
}

func TestTokenEndToEndHS256(t *testing.T) {
	e := newE2E(t, startTokenSidecar(t, "", testSecret), map[string]string{"M1_JWT_SECRET": testSecret})
	const args = `{"command":"ls"}`
	token := e.mint("--secret-env", "M1_JWT_SECRET", "--sub", "agent-7", "--tool", "run_command", "--args", args)
	e.check("HS256 approval", token, "run_command", args, "")
	e.check("HS256 replay", token, "run_command", args, deny.TokenReplayed)
	r := e.run("token", "inspect", token, "--secret-env", "M1_JWT_SECRET")
	if r.code != exitOK || strings.Contains(r.String(), testSecret) {
		t.Errorf("m1 token inspect --secret-env: exit %d, or the secret is echoed:\n%s", r.code, r)
	}
}

func TestRevokeErrors(t *testing.T) {
	dir := t.TempDir()
	keysGen(t, dir, "--kid", "k1")
	sc := startTokenSidecar(t, filepath.Join(dir, "jwks.json"), "")
	e := newE2E(t, sc, nil)
	tests := []struct {
		name       string
		args       []string
		env        map[string]string // replaces e.env entries
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"wrong admin token", []string{"--sub", "a", "--admin-token", "wrong"}, nil, exitError, `"unauthorized"`, "401"},
		{"wrong admin token from env", []string{"--list"}, map[string]string{"M1_ADMIN_TOKEN": "wrong"}, exitError, `"unauthorized"`, "401"},
		{"no admin token", []string{"--sub", "a"}, map[string]string{"M1_ADMIN_TOKEN": ""}, exitError, "", "M1_ADMIN_TOKEN"},
		{"until in the past", []string{"--sub", "a", "--until", "2001-01-01T00:00:00Z"}, nil, exitDeny, `"bad_request"`, "400"},
		{"bad until", []string{"--sub", "a", "--until", "tomorrow"}, nil, exitError, "", "RFC 3339"},
		{"jti and sub", []string{"--sub", "a", "--jti", "j"}, nil, exitError, "", "exactly one of --jti and --sub"},
		{"neither jti nor sub", nil, nil, exitError, "", "exactly one of --jti and --sub"},
		{"lift without sub", []string{"--lift"}, nil, exitError, "", "--lift needs --sub"},
		{"lift a jti", []string{"--lift", "--sub", "a", "--jti", "j"}, nil, exitError, "", "--lift needs --sub"},
		{"lift with until", []string{"--lift", "--sub", "a", "--until", "2099-01-01T00:00:00Z"}, nil, exitError, "", "cannot be combined"},
		{"list with sub", []string{"--list", "--sub", "a"}, nil, exitError, "", "--list takes no other"},
		{"bad admin URL", []string{"--sub", "a", "--admin-url", "127.0.0.1:9192"}, nil, exitError, "", "--admin-url"},
		{"nothing listening", []string{"--sub", "a", "--admin-url", "http://" + closedPort(t)}, nil, exitError, "", "M1_ADMIN_URL"},
		{"admin URL with a trailing slash", []string{"--jti", "j-1", "--admin-url", sc.adminURL + "/"}, nil, exitOK, `"jti": "j-1"`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range e.env {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			r := m1With(t, env, "", append([]string{"revoke"}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("m1 revoke %q: exit %d, want %d\n%s", tt.args, r.code, tt.wantCode, r)
			}
			if !strings.Contains(r.stdout, tt.wantStdout) || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 revoke %q: want stdout with %q, stderr with %q\n%s", tt.args, tt.wantStdout, tt.wantStderr, r)
			}
			if strings.Contains(r.String(), e2eAdminToken) {
				t.Errorf("m1 revoke %q echoed the admin token:\n%s", tt.args, r)
			}
		})
	}
}

func TestRevokeRequests(t *testing.T) {
	type seen struct{ method, path, auth, body string }
	var (
		mu  sync.Mutex
		got seen
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = seen{r.Method, r.URL.EscapedPath(), r.Header.Get("Authorization"), string(body)}
		mu.Unlock()
		switch r.Method {
		case http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		case http.MethodPost:
			w.WriteHeader(http.StatusCreated)
			w.Write([]byte(`{"sub":"x"}`))
		default:
			w.Write([]byte(`{"revocations":[]}`))
		}
	}))
	defer srv.Close()
	env := map[string]string{"M1_ADMIN_URL": srv.URL, "M1_ADMIN_TOKEN": "tok"}
	for _, tt := range []struct {
		name string
		args []string
		want seen
	}{
		{"jti", []string{"--jti", "j-1"}, seen{"POST", "/api/m1/revocations", "Bearer tok", `{"jti":"j-1"}`}},
		{"sub until", []string{"--sub", "agent 7", "--until", "2099-01-01T00:00:00Z"}, seen{"POST", "/api/m1/revocations", "Bearer tok", `{"sub":"agent 7","until":"2099-01-01T00:00:00Z"}`}},
		{"lift", []string{"--sub", "agent/7", "--lift"}, seen{"DELETE", "/api/m1/revocations/sub/agent%2F7", "Bearer tok", ""}},
		{"list", []string{"--list"}, seen{"GET", "/api/m1/revocations", "Bearer tok", ""}},
	} {
		mu.Lock()
		got = seen{}
		mu.Unlock()
		if r := m1With(t, env, "", append([]string{"revoke"}, tt.args...)...); r.code != exitOK {
			t.Errorf("m1 revoke %q: %s", tt.args, r)
		}
		mu.Lock()
		if got != tt.want {
			t.Errorf("m1 revoke %q sent %+v, want %+v", tt.args, got, tt.want)
		}
		mu.Unlock()
	}
}
