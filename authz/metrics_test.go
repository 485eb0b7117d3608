package authz

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every family the design names is on /metrics from the first scrape,
// before any check was made.
func TestMetricsFamiliesAtStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{"m1_policy_checks_total", "m1_check_duration_seconds", "m1_policy_eval_duration_seconds",
		"m1_policy_cache_hits_total", "m1_policy_cache_misses_total", "m1_token_verifications_total"} {
		if !got[name] {
			t.Errorf("Gather() at start lacks %s (has %v)", name, got)
		}
	}
}
