package admin

import (
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/m1-agent/m1/deploy/deploytest"
)

// Every PromQL the dashboard runs (the charts', the fleet's, the tool
// executions') parses, and every m1_ metric it names is one M1 registers.
func TestDashboardQueries(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	known := deploytest.RegisteredMetrics(t)
	queries := map[string]string{"tool_executions": toolExecutionsPromQL}
	for col, q := range fleetQueries {
		queries["fleet "+col] = q
	}
	for _, pn := range panels {
		for _, q := range pn.Queries {
			queries[pn.ID+" "+q.Label+q.By] = strings.ReplaceAll(q.Expr, "$w", promDuration(DefaultHistoryRange/historyPoints))
		}
	}
	if len(queries) < 20 {
		t.Fatalf("found %d queries; the collection is broken", len(queries))
	}
	for name, q := range queries {
		expr, err := p.ParseExpr(q)
		if err != nil {
			t.Errorf("%s: %v\n%s", name, err, q)
			continue
		}
		for _, m := range deploytest.UnknownMetrics(expr, known) {
			t.Errorf("%s uses %s, which M1 does not register", name, m)
		}
	}
}
