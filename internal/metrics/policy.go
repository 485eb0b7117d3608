package metrics

import "github.com/prometheus/client_golang/prometheus"

// Policy holds the metrics of policy distribution (DESIGN §5): bundle loads
// and shadow evaluation. m1_policy_bundle_info is the decision path's
// (Authz.BundleInfo): it names the revision that decides.
type Policy struct {
	LoadErrors      prometheus.Counter     // m1_policy_bundle_load_errors_total
	LastSuccess     prometheus.Gauge       // m1_policy_bundle_last_success_timestamp_seconds
	ShadowDecisions *prometheus.CounterVec // m1_policy_shadow_decisions_total{active,shadow}
	ShadowSkipped   prometheus.Counter     // m1_policy_shadow_skipped_total
}

// NewPolicy creates the policy distribution metrics and registers them on
// reg. It fails if any is already registered there.
func NewPolicy(reg prometheus.Registerer) (*Policy, error) {
	m := &Policy{
		LoadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_policy_bundle_load_errors_total",
			Help: "Policy bundle loads that failed (source unreachable, bad bundle, bad signature, failing Rego tests); the last good revision kept deciding.",
		}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "m1_policy_bundle_last_success_timestamp_seconds",
			Help: "Unix time of the last load that left the source's bundle in force (a new revision activated, or the active one confirmed).",
		}),
		ShadowDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_policy_shadow_decisions_total",
			Help: "Shadow policy evaluations, by the active policy's decision and the shadow's (allow|deny); active != shadow is a disagreement.",
		}, []string{"active", "shadow"}),
		ShadowSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_policy_shadow_skipped_total",
			Help: "Decisions the shadow policy did not evaluate because its evaluations were all busy (the shadow never slows the decision path).",
		}),
	}
	for _, c := range []prometheus.Collector{m.LoadErrors, m.LastSuccess, m.ShadowDecisions, m.ShadowSkipped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, a := range []string{Allow, Deny} {
		for _, s := range []string{Allow, Deny} {
			m.ShadowDecisions.WithLabelValues(a, s)
		}
	}
	return m, nil
}
