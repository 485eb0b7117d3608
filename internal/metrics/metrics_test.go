package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every family the design names is on /metrics from the first scrape,
// before any check was made.
func TestAuthzFamiliesAtStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewAuthz(reg); err != nil {
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

func TestOutcomesFamiliesAtStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewOutcomes(reg); err != nil {
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
	for _, name := range []string{"m1_tool_execution_duration_seconds", "m1_access_log_entries_total",
		"m1_access_log_entries_ignored_total", "m1_access_log_dropped_total", "m1_access_log_streams"} {
		if !got[name] {
			t.Errorf("Gather() at start lacks %s (has %v)", name, got)
		}
	}
}
