// Package metrics defines the Prometheus metrics of the decision path
// (Authz), of m1-orchestrator (Orchestrator) and m1_build_info, with the
// names of the design contract (DESIGN §8). Metrics are registered on an
// injected registerer; nothing is global. Other packages register the
// metrics they own: outcome.NewMetrics (tool outcomes from Envoy's access
// log), authz.NewShadowMetrics (shadow evaluation), the sidecar's bundle
// load metrics, and those of audit, rediscache and redisconn.
package metrics

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// Decision label values of m1_policy_checks_total.
const (
	Allow = "allow"
	Deny  = "deny"
)

// RegisterBuildInfo registers m1_build_info{version,goversion,revision},
// always 1: which build each process runs, for dashboards and for joining
// onto other series (`* on (instance) group_left (version) m1_build_info`).
// Both servers register it. It fails if it is already registered on reg.
func RegisterBuildInfo(reg prometheus.Registerer, version, revision string) error {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "m1_build_info",
		Help:        "The build this process runs (value 1): release version, Go version and source revision.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version(), "revision": revision},
	})
	g.Set(1)
	return reg.Register(g)
}

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
	// Start the counters operators alert on at zero, so that every family
	// is on /metrics from the first scrape (a rate over a series that
	// appears with its first event misses that event).
	m.Checks.WithLabelValues(Allow, "ok")
	for _, tier := range []string{"l1", "l2"} {
		m.CacheHits.WithLabelValues(tier)
	}
	m.TokenVerifyTotal.WithLabelValues("ok")
	return m, nil
}

// Orchestrator holds m1-orchestrator's metrics: runs, tool executions and
// LLM cost.
type Orchestrator struct {
	Runs           *prometheus.CounterVec // m1_agent_runs_total{status}: runs that ended, by final status
	RunsActive     prometheus.Gauge       // m1_agent_runs_active
	Cost           prometheus.Counter     // m1_total_cost (USD)
	LLMTokens      *prometheus.CounterVec // m1_llm_tokens_total{model,kind}
	ToolExecutions *prometheus.CounterVec // m1_tool_executions_total{tool,outcome}
	ToolErrors     *prometheus.CounterVec // m1_tool_execution_errors_total{tool}
	ToolDuration   prometheus.Histogram   // m1_tool_execution_duration_seconds
}

// NewOrchestrator creates the orchestrator's metrics and registers them on
// reg. It fails if any is already registered there.
func NewOrchestrator(reg prometheus.Registerer) (*Orchestrator, error) {
	m := &Orchestrator{
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_agent_runs_total",
			Help: "Agent runs that ended, by status (completed|failed|over_budget).",
		}, []string{"status"}),
		RunsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "m1_agent_runs_active",
			Help: "Agent runs in progress (planning or waiting on their proposals).",
		}),
		Cost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_total_cost",
			Help: "LLM cost in US dollars, from token usage and the price table.",
		}),
		LLMTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_llm_tokens_total",
			Help: "LLM tokens used, by model and kind (input|output|cache_read|cache_write).",
		}, []string{"model", "kind"}),
		ToolExecutions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_tool_executions_total",
			Help: "Approved tool calls dispatched, by tool and outcome (succeeded|failed|denied).",
		}, []string{"tool", "outcome"}),
		ToolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_tool_execution_errors_total",
			Help: "Dispatched tool calls that failed or were denied, by tool.",
		}, []string{"tool"}),
		ToolDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "m1_tool_execution_duration_seconds",
			Help:    "Time of one tool call dispatch, through the sidecar to the tool's answer.",
			Buckets: prometheus.ExponentialBuckets(1e-3, 2.5, 12),
		}),
	}
	for _, c := range []prometheus.Collector{m.Runs, m.RunsActive, m.Cost, m.LLMTokens, m.ToolExecutions, m.ToolErrors, m.ToolDuration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
