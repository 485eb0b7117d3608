package orchestrator_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/m1-agent/m1/orchestrator"
)

// A fresh orchestrator exports m1_agent_runs_total for every end status,
// at 0, before any run ends.
func TestRunSeriesFromTheStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := orchestrator.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP m1_agent_runs_total Agent runs that ended, by status (completed|failed|over_budget).
# TYPE m1_agent_runs_total counter
m1_agent_runs_total{status="completed"} 0
m1_agent_runs_total{status="failed"} 0
m1_agent_runs_total{status="over_budget"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "m1_agent_runs_total"); err != nil {
		t.Error(err)
	}
}
