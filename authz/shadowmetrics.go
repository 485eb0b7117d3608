package authz

import (
	"github.com/prometheus/client_golang/prometheus"
)

// ShadowMetrics are the metrics of shadow evaluation (DESIGN §5), which
// the Service records: what the shadow policy would have decided, and the
// decisions it had no room to evaluate.
type ShadowMetrics struct {
	Decisions *prometheus.CounterVec // m1_policy_shadow_decisions_total{active,shadow}
	Skipped   prometheus.Counter     // m1_policy_shadow_skipped_total
}

// NewShadowMetrics creates the shadow evaluation metrics and registers
// them on reg. It fails if any is already registered there.
func NewShadowMetrics(reg prometheus.Registerer) (*ShadowMetrics, error) {
	m := &ShadowMetrics{
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_policy_shadow_decisions_total",
			Help: "Shadow policy evaluations, by the active policy's decision and the shadow's (allow|deny); active != shadow is a disagreement.",
		}, []string{"active", "shadow"}),
		Skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_policy_shadow_skipped_total",
			Help: "Decisions the shadow policy did not evaluate because its evaluations were all busy (the shadow never slows the decision path).",
		}),
	}
	for _, c := range []prometheus.Collector{m.Decisions, m.Skipped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, a := range []string{DecisionAllow, DecisionDeny} {
		for _, s := range []string{DecisionAllow, DecisionDeny} {
			m.Decisions.WithLabelValues(a, s)
		}
	}
	return m, nil
}
