package orchestratord

import (
	"context"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/config"
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

func TestOptionsRefused(t *testing.T) {
	base := func() Options {
		o := DefaultOptions()
		o.Addr, o.DataDir, o.PlanFile = "127.0.0.1:0", t.TempDir(), "../../testdata/plans/demo.yaml"
		return o
	}
	cases := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"no planner", func(o *Options) { o.PlanFile = "" }, "no planner"},
		{"unknown planner", func(o *Options) { o.Planner = "gpt" }, "M1_PLANNER"},
		{"claude without key", func(o *Options) { o.Planner = PlannerClaude }, "APIKey"},
		{"missing plan", func(o *Options) { o.PlanFile = "nope.yaml" }, "nope.yaml"},
		{"keys without audience", func(o *Options) { o.JWKSFile = "jwks.json" }, "M1_AUDIENCE"},
		{"bad database url", func(o *Options) { o.DatabaseURL = "mysql://x" }, "M1_DATABASE_URL"},
		{"negative budget", func(o *Options) { o.RunBudgetUSD = -1 }, "M1_RUN_BUDGET_USD"},
		{"bad registry", func(o *Options) { o.PolicyDir = t.TempDir() }, "registry"},
		{"bad endpoint", func(o *Options) { o.ToolEndpoint = "ftp://x" }, "endpoint"},
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
	o := DefaultOptions()
	o.Addr, o.DataDir, o.PlanFile, o.AdminToken = "127.0.0.1:0", t.TempDir(), "../../testdata/plans/demo.yaml", "secret-token"
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
