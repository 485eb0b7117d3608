package authz

import "github.com/prometheus/client_golang/prometheus"

// Decision label values of m1_policy_checks_total (and of the shadow's
// metrics and audit events).
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
)

// Metrics are the decision path's (DESIGN §8), registered on an injected
// registerer by NewMetrics; nothing is global.
type Metrics struct {
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

// NewMetrics creates the decision-path metrics and registers them on reg.
// It fails if any is already registered there.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
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
	// Start the counters operators alert on at zero, so that every family
	// is on /metrics from the first scrape (a rate over a series that
	// appears with its first event misses that event).
	m.Checks.WithLabelValues(DecisionAllow, "ok")
	for _, tier := range []string{"l1", "l2"} {
		m.CacheHits.WithLabelValues(tier)
	}
	m.TokenVerifyTotal.WithLabelValues("ok")
	return m, nil
}
