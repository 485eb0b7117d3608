package orchestrator

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/m1-agent/m1/internal/store"
)

// Metrics are m1-orchestrator's (DESIGN §8): runs, tool executions and LLM
// cost, registered on an injected registerer by NewMetrics.
type Metrics struct {
	Runs           *prometheus.CounterVec // m1_agent_runs_total{status}: runs that ended, by final status
	RunsActive     prometheus.Gauge       // m1_agent_runs_active
	Cost           prometheus.Counter     // m1_total_cost (USD)
	LLMTokens      *prometheus.CounterVec // m1_llm_tokens_total{model,kind}
	ToolExecutions *prometheus.CounterVec // m1_tool_executions_total{tool,outcome}
	ToolErrors     *prometheus.CounterVec // m1_tool_execution_errors_total{tool}
	ToolDuration   prometheus.Histogram   // m1_tool_execution_duration_seconds
}

// NewMetrics creates the orchestrator's metrics and registers them on reg.
// It fails if any is already registered there.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
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
	// Every end status from the start, at 0: a rate or an alert on one
	// has a series before the first run ends so.
	for _, status := range []string{store.RunCompleted, store.RunFailed, store.RunOverBudget} {
		m.Runs.WithLabelValues(status)
	}
	return m, nil
}
