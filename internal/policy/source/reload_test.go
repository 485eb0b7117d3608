package source_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
	"github.com/m1-agent/m1/internal/policy/source/dirsource"
	"github.com/m1-agent/m1/internal/policy/source/sourcetest"
)

const goodPolicy = `package m1.authz

import rego.v1

default decision := {"allowed": false, "reason": "default_deny"}

decision := {"allowed": true} if input.m1.tool == "read_file"
`

const goodTest = `package m1.authz_test

import rego.v1

test_read_file_allowed if data.m1.authz.decision.allowed with input as {"m1": {"tool": "read_file"}}
`

// broken returns the files of broken revision i: each kind of failure in
// turn, each revision different (so each is logged).
func broken(i int) (kind string, files map[string]string) {
	mark := fmt.Sprintf("\n# revision %d\n", i)
	switch i % 7 {
	case 0:
		return "parse error", map[string]string{"authz.rego": goodPolicy + mark + "decision if {"}
	case 1:
		return "compile error", map[string]string{"authz.rego": goodPolicy + mark + "x if no_such_function(1)\n"}
	case 2:
		return "bad data", map[string]string{"authz.rego": goodPolicy + mark, "m1/tools/data.json": "{\"read_file\": "}
	case 3:
		return "decision path undefined", map[string]string{"authz.rego": strings.Replace(goodPolicy, "package m1.authz", "package other", 1) + mark}
	case 4:
		return "failing rego test", map[string]string{"authz.rego": goodPolicy + mark, "authz_test.rego": goodTest + "\ntest_fails if false\n"}
	case 5:
		return "malformed decision", map[string]string{"authz.rego": "package m1.authz\n\nimport rego.v1\n\ndecision := {\"allowed\": \"yes\"}\n" + mark}
	default:
		return "not a bundle", map[string]string{"README.md": "nothing here" + mark}
	}
}

func decide(t *testing.T, e *policy.Engine, tool string) bool {
	t.Helper()
	in := ast.MustParseTerm(`{"m1": {"kind": "tool_call", "tool": "` + tool + `"}}`).Value
	d, err := e.Eval(context.Background(), in)
	if err != nil {
		t.Fatalf("Eval(%s): %v", tool, err)
	}
	return d.Allowed
}

// TestBrokenRevisionsKeepDeciding publishes 100 consecutive broken
// revisions after a good one: every load fails and is reported, decisions
// stay those of the good revision throughout, each revision is logged
// once, and the next good revision clears the error.
func TestBrokenRevisionsKeepDeciding(t *testing.T) {
	dir := t.TempDir()
	sourcetest.WriteDir(t, dir, map[string]string{"authz.rego": goodPolicy, "authz_test.rego": goodTest})
	dl, err := dirsource.New(dirsource.Options{Dir: dir, Debounce: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	var (
		active      atomic.Pointer[policy.Engine]
		failed      atomic.Int64
		activations atomic.Int64
	)
	clock := time.Unix(1_700_000_000, 0)
	r, err := source.NewReloader(source.ReloaderOptions{
		Loader:   dl,
		RunTests: true,
		Activate: func(e *policy.Engine) { active.Store(e); activations.Add(1) },
		Failed:   func() { failed.Add(1) },
		Logger:   zap.New(core),
		Now:      func() time.Time { return clock },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := r.Reload(ctx); err != nil {
		t.Fatalf("Reload(good) = %v", err)
	}
	good := active.Load()
	if !decide(t, good, "read_file") || decide(t, good, "write_file") {
		t.Fatal("the good revision decides read_file allow, write_file deny")
	}
	for i := range 100 {
		kind, files := broken(i)
		sourcetest.WriteDir(t, dir, files)
		for attempt := range 2 { // a retry of the same revision logs nothing new
			e, err := r.Reload(ctx)
			if err == nil || e != nil {
				t.Fatalf("broken revision %d (%s), attempt %d: Reload = %v, %v; want an error", i, kind, attempt, e, err)
			}
		}
		if active.Load() != good || !decide(t, active.Load(), "read_file") || decide(t, active.Load(), "write_file") {
			t.Fatalf("after broken revision %d (%s) the decisions changed", i, kind)
		}
		st := r.Status()
		if st.Error == "" || st.Revision != good.Revision() {
			t.Fatalf("after broken revision %d (%s): status %+v, want the error and the good revision", i, kind, st)
		}
	}
	if failed.Load() != 200 || activations.Load() != 1 {
		t.Errorf("failures counted %d, activations %d; want 200 and 1", failed.Load(), activations.Load())
	}
	if n := logs.FilterMessageSnippet("revision refused").Len(); n != 100 {
		t.Errorf("refusals logged %d times, want once per broken revision (100)", n)
	}
	for _, want := range []string{"rego_parse_error", "no_such_function", "m1/tools/data.json", "decision path", "rego tests failed", "sanity check", "no .rego modules"} {
		if logs.FilterMessageSnippet("revision refused").Filter(func(e observer.LoggedEntry) bool {
			return strings.Contains(fmt.Sprint(e.ContextMap()["error"]), want)
		}).Len() == 0 {
			t.Errorf("no refusal logged an error containing %q", want)
		}
	}

	// The next good revision activates and clears the error.
	sourcetest.WriteDir(t, dir, map[string]string{"authz.rego": strings.Replace(goodPolicy, `"read_file"`, `"list_dir"`, 1)})
	e, err := r.Reload(ctx)
	if err != nil || e == nil {
		t.Fatalf("Reload(good again) = %v, %v", e, err)
	}
	if st := r.Status(); st.Error != "" || st.Revision != e.Revision() || st.Revision == good.Revision() {
		t.Errorf("status after a good revision = %+v, want no error and the new revision", st)
	}
	if !decide(t, active.Load(), "list_dir") || decide(t, active.Load(), "read_file") {
		t.Error("the new good revision does not decide")
	}
	// Reloading the same revision activates nothing.
	if e, err := r.Reload(ctx); err != nil || e != nil {
		t.Errorf("Reload(unchanged) = %v, %v; want nil, nil", e, err)
	}
}

// TestNewFilesUnderTheRevisionInForce: changed files that keep the
// .manifest revision are refused (the decision cache and the audit name
// the revision), reported until the files are reverted or given a new
// revision, and never decide.
func TestNewFilesUnderTheRevisionInForce(t *testing.T) {
	dir := t.TempDir()
	manifest := `{"revision": "r2"}`
	sourcetest.WriteDir(t, dir, map[string]string{".manifest": manifest, "authz.rego": goodPolicy})
	dl, err := dirsource.New(dirsource.Options{Dir: dir, Debounce: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var active atomic.Pointer[policy.Engine]
	var failed atomic.Int64
	r, err := source.NewReloader(source.ReloaderOptions{
		Loader:   dl,
		Activate: func(e *policy.Engine) { active.Store(e) },
		Failed:   func() { failed.Add(1) },
		Logger:   zap.NewNop(),
		Now:      time.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if e, err := r.Reload(ctx); err != nil || e == nil || e.Revision() != "r2" {
		t.Fatalf("Reload(r2) = %v, %v; want revision r2 activated", e, err)
	}
	good := active.Load()
	edited := strings.Replace(goodPolicy, `"read_file"`, `"write_file"`, 1)
	sourcetest.WriteDir(t, dir, map[string]string{".manifest": manifest, "authz.rego": edited})
	for range 2 { // refused on every load, not only the first
		if e, err := r.Reload(ctx); e != nil || err == nil || !strings.Contains(err.Error(), "revision did not") {
			t.Fatalf("Reload(new files, revision r2) = %v, %v; want an error saying the revision did not change", e, err)
		}
	}
	if st := r.Status(); st.Error == "" || st.Revision != "r2" || failed.Load() != 2 || active.Load() != good {
		t.Fatalf("status %+v, failures %d; want the error, r2 in force and 2 failures counted", st, failed.Load())
	}
	if !decide(t, active.Load(), "read_file") || decide(t, active.Load(), "write_file") {
		t.Fatal("the refused files decide")
	}
	// Reverted: healthy again, nothing activated.
	sourcetest.WriteDir(t, dir, map[string]string{".manifest": manifest, "authz.rego": goodPolicy})
	if e, err := r.Reload(ctx); e != nil || err != nil || r.Status().Error != "" {
		t.Fatalf("Reload(reverted) = %v, %v, status %+v; want nil, nil and no error", e, err, r.Status())
	}
	// A new revision for the edit activates it.
	sourcetest.WriteDir(t, dir, map[string]string{".manifest": `{"revision": "r3"}`, "authz.rego": edited})
	if e, err := r.Reload(ctx); err != nil || e == nil || e.Revision() != "r3" || !decide(t, e, "write_file") {
		t.Fatalf("Reload(r3) = %v, %v; want r3 activated, allowing write_file", e, err)
	}
}

// TestRunTriggersAndPolls checks that Run loads on Trigger and on its
// poll interval, and stops with its context.
func TestRunTriggersAndPolls(t *testing.T) {
	dir := sourcetest.WriteDir(t, t.TempDir(), sourcetest.Bundle("one"))
	dl, err := dirsource.New(dirsource.Options{Dir: dir, Debounce: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var revs atomic.Value
	revs.Store("")
	for _, tt := range []struct {
		name     string
		interval time.Duration
		trigger  bool
	}{{"trigger", 0, true}, {"poll", 20 * time.Millisecond, false}} {
		t.Run(tt.name, func(t *testing.T) {
			sourcetest.WriteDir(t, dir, sourcetest.Bundle("one"))
			r, err := source.NewReloader(source.ReloaderOptions{
				Loader: dl, Interval: tt.interval, Logger: zap.NewNop(), Now: time.Now,
				Activate: func(e *policy.Engine) { revs.Store(e.Revision()) },
			})
			if err != nil {
				t.Fatal(err)
			}
			first, err := r.Reload(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { r.Run(ctx); close(done) }()
			sourcetest.WriteDir(t, dir, sourcetest.Bundle("two-"+tt.name))
			deadline := time.Now().Add(10 * time.Second)
			for revs.Load() == first.Revision() {
				if time.Now().After(deadline) {
					t.Fatal("Run did not load the new revision")
				}
				if tt.trigger {
					r.Trigger()
				}
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			<-done
		})
	}
}
