package outcome

import "github.com/prometheus/client_golang/prometheus"

// Metrics holds the sidecar's tool-outcome metrics, from Envoy's access log
// (DESIGN §6): what came of the calls this sidecar allowed, and the entries
// it would not trust.
type Metrics struct {
	ToolExecutions *prometheus.CounterVec // m1_tool_executions_total{tool,outcome}
	ToolErrors     *prometheus.CounterVec // m1_tool_execution_errors_total{tool}
	ToolDuration   prometheus.Histogram   // m1_tool_execution_duration_seconds
	Entries        prometheus.Counter     // m1_access_log_entries_total
	Ignored        *prometheus.CounterVec // m1_access_log_entries_ignored_total{reason}
	Dropped        prometheus.Counter     // m1_access_log_dropped_total
	Streams        prometheus.Gauge       // m1_access_log_streams
}

// ignoredReasons are the reason label values of
// m1_access_log_entries_ignored_total, started at zero.
var ignoredReasons = []string{
	reasonNoDecisionID, reasonUnknown, reasonDuplicate, reasonForged, reasonUnverifiedHeader,
	reasonMalformed, reasonDenied, reasonNotToolCall, reasonNotHTTP, reasonTooManyStreams, reasonBadMessage, reasonInternalError,
}

// NewMetrics creates the tool-outcome metrics and registers them on reg.
// It fails if any is already registered there.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		ToolExecutions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_tool_executions_total",
			Help: "Tool calls this sidecar allowed whose outcome Envoy's access log reported, by tool and outcome (succeeded|failed).",
		}, []string{"tool", "outcome"}),
		ToolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_tool_execution_errors_total",
			Help: "Allowed tool calls that failed (the tool answered 4xx/5xx, or Envoy could not complete the call), by tool.",
		}, []string{"tool"}),
		ToolDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "m1_tool_execution_duration_seconds",
			Help:    "Time of one allowed tool call as Envoy measured it, from the request's first byte to the response's last.",
			Buckets: prometheus.ExponentialBuckets(1e-3, 2.5, 12),
		}),
		Entries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_access_log_entries_total",
			Help: "HTTP access-log entries received from Envoy.",
		}),
		Ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m1_access_log_entries_ignored_total",
			Help: "Access-log entries (or streams) not trusted as a tool outcome, by reason.",
		}, []string{"reason"}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_access_log_dropped_total",
			Help: "Tool outcomes counted in the metrics but not audited: the queue to the audit recorder was full.",
		}),
		Streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "m1_access_log_streams",
			Help: "Access-log streams open from Envoy.",
		}),
	}
	for _, c := range []prometheus.Collector{m.ToolExecutions, m.ToolErrors, m.ToolDuration, m.Entries, m.Ignored, m.Dropped, m.Streams} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range ignoredReasons {
		m.Ignored.WithLabelValues(r)
	}
	return m, nil
}
