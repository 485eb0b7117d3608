package outcome_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/m1-agent/m1/internal/outcome"
)

// Every family of the tool outcomes is on /metrics from the first scrape,
// before any access-log entry came in.
func TestOutcomesFamiliesAtStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := outcome.NewMetrics(reg); err != nil {
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
