package policies_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/policies"
)

// TestBundle runs the default bundle's Rego unit tests and checks that the
// bundle prepares into a cacheable engine that reads only input.m1.
func TestBundle(t *testing.T) {
	ctx := context.Background()
	b, err := policy.LoadFS(policies.FS())
	if err != nil {
		t.Fatalf("LoadFS: %v", err)
	}
	if len(b.Tests) == 0 {
		t.Fatal("default bundle has no *_test.rego")
	}
	// The embedded files are the bundle on disk: nothing is left out of
	// the //go:embed patterns.
	onDisk, err := policy.LoadDir(".")
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	if b.Revision != onDisk.Revision {
		t.Errorf("embedded revision %s, on disk %s: update the //go:embed patterns", b.Revision, onDisk.Revision)
	}

	var report strings.Builder
	ok, err := policy.RunTests(ctx, b, &report)
	if err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	t.Log("\n" + report.String())
	if !ok {
		t.Fatal("Rego tests failed")
	}

	e, err := policy.Prepare(ctx, b, policy.Options{})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if ok, reason := e.Cacheable(); !ok {
		t.Errorf("Cacheable() = false (%s), want true", reason)
	}
	// Only these input.m1 paths: in particular not the whole token, so fresh
	// approvals hit the decision cache.
	want := policy.Needs{M1: true, M1Paths: [][]string{{"kind"}, {"mcp_method"}, {"token", "m1", "kind"}, {"tool"}}}
	if got := e.Needs(); !reflect.DeepEqual(got, want) {
		t.Errorf("Needs() = %+v, want %+v", got, want)
	}
	for name, want := range map[string]policy.Tool{
		"read_file":   {Risk: "read"},
		"list_dir":    {Risk: "read"},
		"write_file":  {Risk: "write", RequiresApproval: true},
		"run_command": {Risk: "execute", RequiresApproval: true, Sensitive: true},
	} {
		got, ok := e.Tools()[name]
		if !ok || got.Risk != want.Risk || got.RequiresApproval != want.RequiresApproval || got.Sensitive != want.Sensitive {
			t.Errorf("Tools()[%q] = %+v (present %v), want %+v", name, got, ok, want)
		}
	}
}
