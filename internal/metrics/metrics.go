// Package metrics defines M1's Prometheus metrics with the names of the
// design contract (DESIGN §8). Metrics are registered on an injected
// registerer; nothing is global.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Decision label values of m1_policy_checks_total.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Authz holds the metrics of the sidecar's decision path.
type Authz struct {
	Checks           *prometheus.CounterVec // m1_policy_checks_total{decision,reason}
	CheckDuration    prometheus.Histogram   // m1_check_duration_seconds
	EvalDuration     prometheus.Histogram   // m1_policy_eval_duration_seconds
	CacheHits        *prometheus.CounterVec // m1_policy_cache_hits_total{tier}
	CacheMisses      prometheus.Counter     // m1_policy_cache_misses_total
	BundleInfo       *prometheus.GaugeVec   // m1_policy_bundle_info{revision}
	TokenVerifyTotal *prometheus.CounterVec // m1_token_verifications_total{result}
}

// fastBuckets span 5µs to ~1.3s: a check is microseconds on a cache hit and
// tens of microseconds on a policy evaluation.
var fastBuckets = prometheus.ExponentialBuckets(5e-6, 2.5, 14)

// NewAuthz creates the decision-path metrics and registers them on reg.
// It fails if any is already registered there.
func NewAuthz(reg prometheus.Registerer) (*Authz, error) {
	m := &Authz{
		Checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_policy_checks_total",
			Help: "Decisions made, by decision (allow|deny) and reason code.",
		}, []string{"decision", "reason"}),
		CheckDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "m1_check_duration_seconds",
			Help:    "Time to answer one ext_authz Check, from receipt to response.",
			Buckets: fastBuckets,
		}),
		EvalDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "m1_policy_eval_duration_seconds",
			Help:    "Time of one Rego evaluation (cache misses only).",
			Buckets: fastBuckets,
		}),
		CacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_policy_cache_hits_total",
			Help: "Decision cache hits, by tier (l1|l2).",
		}, []string{"tier"}),
		CacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_policy_cache_misses_total",
			Help: "Decision cache misses (cacheable policy, decision evaluated).",
		}),
		BundleInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "m1_policy_bundle_info",
			Help: "The policy bundle revision in force (value 1).",
		}, []string{"revision"}),
		TokenVerifyTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_token_verifications_total",
			Help: "Approval token verifications, by result (ok or the error code).",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.Checks, m.CheckDuration, m.EvalDuration, m.CacheHits, m.CacheMisses, m.BundleInfo, m.TokenVerifyTotal} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
