package admin

import (
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSummarizeMetricsLatencyQuantiles(t *testing.T) {
	tests := []struct {
		name     string
		observe  []float64
		p50, p99 float64
	}{
		// Rank 2 of 4 lies halfway through (1, 2]: 1.5. Rank 3.96 lies
		// 96% through (2, 4]: 3.92.
		{"inside buckets", []float64{0.5, 1.5, 1.5, 3}, 1.5, 3.92},
		// A rank in the +Inf bucket gives the last finite bound.
		{"beyond the last bucket", []float64{0.5, 10, 10, 10}, 4, 4},
		// The first bucket starts at 0.
		{"first bucket", []float64{0.5, 0.5}, 0.5, 0.99},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "m1_check_duration_seconds", Buckets: []float64{1, 2, 4}})
			reg.MustRegister(h)
			var sum float64
			for _, v := range tt.observe {
				h.Observe(v)
				sum += v
			}
			s, err := SummarizeMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			l := s.CheckLatency
			if l.Count != uint64(len(tt.observe)) || !near(l.SumSeconds, sum) || l.MeanSeconds == nil || !near(*l.MeanSeconds, sum/float64(len(tt.observe))) {
				t.Fatalf("latency = %+v, want count %d sum %g", l, len(tt.observe), sum)
			}
			if l.P50Seconds == nil || !near(*l.P50Seconds, tt.p50) || l.P99Seconds == nil || !near(*l.P99Seconds, tt.p99) {
				t.Errorf("p50, p99 = %v, %v; want %g, %g", deref(l.P50Seconds), deref(l.P99Seconds), tt.p50, tt.p99)
			}
		})
	}
}

func TestSummarizeMetricsEmpty(t *testing.T) {
	s, err := SummarizeMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if s.CheckLatency.P50Seconds != nil || s.Cache.HitRate != nil || s.Audit.Enabled || s.Checks.ByReason == nil {
		t.Errorf("summary of an empty registry = %+v, want null quantiles and hit rate, audit off, empty by_reason", s)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}
