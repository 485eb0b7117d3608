package orchestratord

import (
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/config"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/orchestrator"
)

// TestDocMatchesFlags keeps docs/ORCHESTRATOR.md in step with the flags:
// every flag appears with its env variable and default.
func TestDocMatchesFlags(t *testing.T) {
	doc, err := os.ReadFile("../../docs/ORCHESTRATOR.md")
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	fs := flag.NewFlagSet("m1-orchestrator", flag.ContinueOnError)
	env := o.BindFlags(fs)
	for _, p := range config.DocMismatches(string(doc), fs, env) {
		t.Errorf("docs/ORCHESTRATOR.md: %s", p)
	}
}

// operatorKey writes an operator's key pair as m1 keys gen does and
// returns the private key and the path of the public JWKS.
func operatorKey(t *testing.T, kid string) (*approval.SigningKey, string) {
	t.Helper()
	key, err := approval.GenerateKey(approval.AlgEdDSA, kid)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := key.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwks, 0o644); err != nil {
		t.Fatal(err)
	}
	return key, path
}

// testOptions are options that start: the demo plan, an operator's JWKS,
// audience tools.example, everything on loopback and in a temporary
// directory.
func testOptions(t *testing.T, jwks string) Options {
	o := DefaultOptions()
	o.Addr, o.DataDir, o.PlanFile = "127.0.0.1:0", t.TempDir(), "../../testdata/plans/demo.yaml"
	o.JWKSFile, o.Audience = jwks, "tools.example"
	return o
}

func TestOptionsRefused(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	empty := filepath.Join(t.TempDir(), "empty.json")
	if err := os.WriteFile(empty, []byte(`{"keys":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	base := func() Options { return testOptions(t, jwks) }
	cases := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"negative approvals limit", func(o *Options) { o.Gateway.MaxPending = -1 }, "M1_APPROVALS_MAX_PENDING"},
		{"prune too often", func(o *Options) { o.PruneEvery = time.Second }, "M1_AUDIT_PRUNE_INTERVAL"},
		{"unknown planner", func(o *Options) { o.Planner = "gpt" }, "M1_PLANNER"},
		{"claude without key", func(o *Options) { o.Planner = PlannerClaude }, "APIKey"},
		{"missing plan", func(o *Options) { o.PlanFile = "nope.yaml" }, "nope.yaml"},
		{"no JWKS", func(o *Options) { o.JWKSFile = "" }, "M1_JWKS_FILE"},
		{"missing JWKS", func(o *Options) { o.JWKSFile = filepath.Join(t.TempDir(), "nope.json") }, "M1_JWKS_FILE"},
		{"JWKS without keys", func(o *Options) { o.JWKSFile = empty }, "M1_JWKS_FILE"},
		{"keys without audience", func(o *Options) { o.Audience = "" }, "M1_AUDIENCE"},
		{"no token lifetime", func(o *Options) { o.TokenTTLMinutes = 0 }, "M1_APPROVAL_TOKEN_TTL_MINUTES"},
		{"bad database url", func(o *Options) { o.DatabaseURL = "mysql://x" }, "M1_DATABASE_URL"},
		{"negative budget", func(o *Options) { o.RunBudgetUSD = -1 }, "M1_RUN_BUDGET_USD"},
		{"bad registry", func(o *Options) { o.PolicyDir = t.TempDir() }, "registry"},
		{"bad endpoint", func(o *Options) { o.ToolEndpoint = "ftp://x" }, "endpoint"},
		{"bad prometheus url", func(o *Options) { o.PrometheusURL = "prometheus:9090" }, "M1_PROMETHEUS_URL"},
	}
	for _, tc := range cases {
		o := base()
		tc.mod(&o)
		_, err := New(context.Background(), o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%s) = %v, want an error naming %q", tc.name, err, tc.want)
		}
	}
}

func TestServeAPIBehindToken(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.AdminToken = "secret-token"
	o.Version = "9.9.9-test"
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	base := "http://" + s.Addr().String()

	for path, want := range map[string]int{"/health": 200, "/metrics": 200, "/v1/proposals": 401} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without token = %d, want %d", path, resp.StatusCode, want)
		}
	}
	// The build is on /health and in m1_build_info.
	for path, want := range map[string]string{"/health": `"version": "9.9.9-test"`, "/metrics": `version="9.9.9-test"} 1`} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), want) || (path == "/metrics" && !strings.Contains(string(body), "m1_build_info{")) {
			t.Errorf("GET %s lacks %s:\n%s", path, want, body)
		}
	}
	c := &orchestrator.Client{BaseURL: base, Token: "secret-token"}
	d, err := c.CreateRun(context.Background(), orchestrator.RunRequest{Goal: "review the workspace", Agent: "demo-agent"})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Proposals) != 2 || d.Proposals[0].Tool != "list_dir" || d.Proposals[1].Tool != "read_file" || d.Usage.InputTokens != 1200 {
		t.Fatalf("first step = %+v", d)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop = %v", err)
	}
	// The store keeps the run for the next start.
	if _, err := os.Stat(filepath.Join(o.DataDir, "m1.db")); err != nil {
		t.Fatal(err)
	}
}

// TestApprovalsVerifiedAgainstJWKS: holding the admin token is not enough
// to approve. An approval signed by a key that is not in M1_JWKS_FILE, or
// bound to another call, is refused and nothing is recorded; the
// operator's own is accepted.
func TestApprovalsVerifiedAgainstJWKS(t *testing.T) {
	key, jwks := operatorKey(t, "ops-1")
	forged, _ := operatorKey(t, "ops-1") // the operator's kid, another key
	o := testOptions(t, jwks)
	o.AdminToken = "secret-token"
	o.ToolEndpoint = "http://127.0.0.1:1" // nothing listens: the dispatch fails, after the approval is recorded
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	c := &orchestrator.Client{BaseURL: "http://" + s.Addr().String(), Token: "secret-token"}
	ctx := context.Background()
	d, err := c.CreateRun(ctx, orchestrator.RunRequest{Goal: "review the workspace", Agent: "demo-agent"})
	if err != nil {
		t.Fatal(err)
	}
	p := d.Proposals[0]
	sign := func(k *approval.SigningKey, tool, sha string) string {
		now := time.Now()
		tok, err := approval.Mint(k, approval.Claims{
			Issuer: "m1-cli", Subject: p.Agent, Audience: []string{"tools.example"}, Actor: "alice",
			IssuedAt: now, Expiry: now.Add(time.Minute), Kind: approval.KindApproval,
			Tool: tool, ArgsSHA256: sha, RunID: p.RunID, ProposalID: p.ID,
		})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, tc := range []struct {
		name, token, code string
	}{
		{"signed by a key not in the JWKS", sign(forged, p.Tool, p.ArgsSHA256), deny.TokenInvalid},
		{"bound to other arguments", sign(key, p.Tool, strings.Repeat("0", 64)), deny.ArgsMismatch},
		{"bound to another tool", sign(key, "write_file", p.ArgsSHA256), deny.ToolMismatch},
	} {
		_, err := c.Approve(ctx, p.ID, tc.token)
		if ae, ok := errors.AsType[*orchestrator.APIError](err); !ok || ae.Status != http.StatusBadRequest || ae.Code != tc.code {
			t.Errorf("approval %s = %v, want 400 %s", tc.name, err, tc.code)
		}
	}
	got, err := c.Proposal(ctx, p.ID)
	if err != nil || got.Status != store.ProposalPending || got.Approver != "" || got.ApprovalJTI != "" {
		t.Fatalf("proposal after forged approvals = %+v, %v; want pending with no approver", got, err)
	}
	dec, err := c.Approve(ctx, p.ID, sign(key, p.Tool, p.ArgsSHA256))
	if err != nil || dec.Proposal.Approver != "alice" || dec.ToolCall == nil {
		t.Fatalf("the operator's approval = %+v, %v; want it recorded and dispatched", dec, err)
	}
}
