package authz

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/store"
)

// events is an Auditor that keeps what it is given.
type events struct {
	mu  sync.Mutex
	all []store.Event
}

func (e *events) Record(ev store.Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
}

func (e *events) list() []store.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]store.Event(nil), e.all...)
}

// revEngine is an engine of revision rev that allows read_file or denies
// it with reason rev.
func revEngine(t testing.TB, rev string, allow bool) *policy.Engine {
	t.Helper()
	decision := `{"allowed": false, "reason": "` + rev + `"}`
	if allow {
		decision = `{"allowed": true}`
	}
	e, err := policy.Prepare(context.Background(), &policy.Bundle{
		Revision: rev,
		Modules:  map[string]string{"p.rego": "package m1.authz\n\ndecision := " + decision + " if input.m1.tool == \"read_file\"\n"},
	}, policy.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func auditedTestService(t testing.TB, e *policy.Engine, withCache bool) (testService, *events) {
	t.Helper()
	s := newService(t, e, withCache)
	ev := &events{}
	s.opts.Audit = ev
	pm, err := NewShadowMetrics(s.reg)
	if err != nil {
		t.Fatal(err)
	}
	s.opts.ShadowMetrics = pm
	return s, ev
}

// TestSwapUnderLoad hammers Check from many goroutines while the policy
// flips between a revision that allows and one that denies, and checks
// that every audit event names the revision whose decision it records.
func TestSwapUnderLoad(t *testing.T) {
	for _, withCache := range []bool{false, true} {
		name := map[bool]string{false: "no cache", true: "cache"}[withCache]
		t.Run(name, func(t *testing.T) {
			allowRev, denyRev := revEngine(t, "rev-allow", true), revEngine(t, "rev-deny", false)
			s, ev := auditedTestService(t, allowRev, withCache)
			req := httpReq("POST", "/tools/read_file", `{"path":"/x"}`, "content-type", "application/json")
			var stop atomic.Bool
			var flips atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; !stop.Load(); i++ {
					if i%2 == 0 {
						s.SetPolicy(denyRev)
					} else {
						s.SetPolicy(allowRev)
					}
					flips.Add(1)
				}
			}()
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 300 {
						check(t, s.Service, req)
					}
				}()
			}
			wg.Wait()
			stop.Store(true)
			<-done
			seen := map[string]int{}
			for _, e := range ev.list() {
				seen[e.PolicyRevision]++
				switch {
				case e.PolicyRevision == "rev-allow" && e.Decision != DecisionAllow,
					e.PolicyRevision == "rev-deny" && (e.Decision != DecisionDeny || e.Detail != "rev-deny"),
					e.PolicyRevision != "rev-allow" && e.PolicyRevision != "rev-deny":
					t.Fatalf("audit event %s: revision %q decision %q detail %q; the revision must be the one that decided",
						e.DecisionID, e.PolicyRevision, e.Decision, e.Detail)
				}
			}
			if len(ev.list()) != 8*300 {
				t.Errorf("audit events = %d, want %d", len(ev.list()), 8*300)
			}
			if seen["rev-allow"] == 0 || seen["rev-deny"] == 0 || flips.Load() < 2 {
				t.Logf("decisions per revision %v after %d flips: the swap did not interleave this run", seen, flips.Load())
			}
		})
	}
}

func TestNoPolicyDenies(t *testing.T) {
	s := newService(t, nil, true)
	res := check(t, s.Service, httpReq("POST", "/tools/read_file", `{}`, "content-type", "application/json"))
	if res.allowed || res.body.Error != deny.PolicyError {
		t.Errorf("Check(no policy) = %+v, want deny policy_error", res)
	}
	s.SetPolicy(revEngine(t, "r1", true))
	if res := check(t, s.Service, httpReq("POST", "/tools/read_file", `{}`, "content-type", "application/json")); !res.allowed {
		t.Errorf("Check(after SetPolicy) = deny %+v, want allow", res.body)
	}
}

// TestShadow checks that the shadow policy never changes a decision, is
// counted per (active, shadow) pair, and audits disagreements only.
func TestShadow(t *testing.T) {
	s, ev := auditedTestService(t, revEngine(t, "active", true), true)
	s.SetShadow(revEngine(t, "candidate", false))
	req := httpReq("POST", "/tools/read_file", `{"path":"/x"}`, "content-type", "application/json")
	for range 3 {
		if res := check(t, s.Service, req); !res.allowed {
			t.Fatalf("Check with a denying shadow = deny %+v, want the active policy's allow", res.body)
		}
	}
	s.WaitShadow()
	if got := testutil.ToFloat64(s.opts.ShadowMetrics.Decisions.WithLabelValues("allow", "deny")); got != 3 {
		t.Errorf("m1_policy_shadow_decisions_total{active=allow,shadow=deny} = %v, want 3", got)
	}
	var diffs []store.Event
	for _, e := range ev.list() {
		if e.Kind == KindShadowDiff {
			diffs = append(diffs, e)
		}
	}
	if len(diffs) != 3 || diffs[0].PolicyRevision != "candidate" || diffs[0].Decision != "deny" || diffs[0].Tool != "read_file" {
		t.Fatalf("shadow_diff events = %+v, want 3 for read_file, shadow revision candidate deciding deny", diffs)
	}
	// A call the policy never sees (a bad request) is not shadowed; an
	// agreeing shadow is counted but not audited.
	check(t, s.Service, httpReq("POST", "/tools/../x", `{}`, "content-type", "application/json"))
	s.SetShadow(revEngine(t, "candidate-2", true))
	check(t, s.Service, req)
	s.WaitShadow()
	if got := testutil.ToFloat64(s.opts.ShadowMetrics.Decisions.WithLabelValues("allow", "allow")); got != 1 {
		t.Errorf("m1_policy_shadow_decisions_total{allow,allow} = %v, want 1", got)
	}
	n := 0
	for _, e := range ev.list() {
		if e.Kind == KindShadowDiff {
			n++
		}
	}
	if n != 3 {
		t.Errorf("shadow_diff events = %d after an agreeing shadow, want still 3", n)
	}
}
