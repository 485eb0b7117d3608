//go:build unix

package authz

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// BenchmarkShadow measures what a shadow policy adds to a check: the same
// cache hit as BenchmarkCheck/cache_hit, without a shadow, and with the
// default policy as its own shadow (so that every check is shadowed and
// none is a disagreement that would be audited). ns/op is the decision
// path's wall time: the shadow runs after the response is built, on its
// own goroutines, so this is what a caller waits. cpu-ns/op is the
// process's CPU per check with the shadow evaluations drained before the
// clock stops: the shadow's real cost, on any core. In a tight loop most
// shadow evaluations are skipped (their slots are busy; "skipped" counts
// them): cache_hit_each_shadowed waits for each check's shadow, so that
// every check is shadowed, and its ns/op is a check plus one shadow
// evaluation.
func BenchmarkShadow(b *testing.B) {
	ctx := context.Background()
	hit := checkReq(httpReq("POST", "/mcp?session=abc", mcpCall("read_file", `{"path":"/etc/hosts"}`),
		"content-type", "application/json", "x-request-id", "7bca2f0e-1c55-4d6a-9b1e-3f2d8c1a9e77"))
	for _, tt := range []struct {
		name   string
		shadow bool
		wait   bool // wait for each check's shadow: every check shadowed
	}{{"cache_hit", false, false}, {"cache_hit_shadowed", true, false}, {"cache_hit_each_shadowed", true, true}} {
		b.Run(tt.name, func(b *testing.B) {
			s := newService(b, defaultEngine(b), true)
			pm, err := NewShadowMetrics(s.reg)
			if err != nil {
				b.Fatal(err)
			}
			s.opts.ShadowMetrics = pm
			if tt.shadow {
				s.SetShadow(defaultEngine(b))
			}
			s.Check(ctx, hit)
			s.WaitShadow()
			b.ReportAllocs()
			cpu := cpuTime(b)
			b.ResetTimer()
			for b.Loop() {
				s.Check(ctx, hit)
				if tt.wait {
					s.WaitShadow()
				}
			}
			b.StopTimer()
			s.WaitShadow()
			b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(testutilSkipped(pm), "skipped")
		})
	}
}

func testutilSkipped(pm *ShadowMetrics) float64 { return testutil.ToFloat64(pm.Skipped) }
