package admin

import (
	"math"

	dto "github.com/prometheus/client_model/go"

	"github.com/m1-agent/m1/internal/deny"
)

// Tabs of the dashboard, in order (DESIGN §8).
const (
	TabOperations = "operations"
	TabCache      = "cache"
	TabPolicy     = "policy"
	TabCost       = "cost"
	TabHealth     = "health"
)

// Keys of Ring extras: values the dashboard samples that are not in the
// Prometheus registry.
const (
	ExtraCacheEntries     = "cache_entries"         // L1 entries
	ExtraCacheEvictions   = "cache_evictions_total" // L1 evictions since start (a counter)
	ExtraAuditSpoolEvents = "audit_spool_events"    // audit events spooled locally
	ExtraStorePingSeconds = "store_ping_seconds"    // one Ping of the store
	ExtraRedisRTTSeconds  = "redis_rtt_seconds"     // moving average of the Redis round trip
	extraHeapBytes        = "heap_bytes"
	extraGoroutines       = "goroutines"
	extraCPUSeconds       = "cpu_seconds_total"
)

// panel is one chart of the dashboard: its series over time, computed
// from two samples of this process (local), and in fleet scope from
// Prometheus (queries). A panel without queries is shown in pod scope only.
type panel struct {
	ID, Tab, Title, Unit string
	Queries              []panelQuery
	Local                func(p, c *sample) map[string]float64
}

// panelQuery is one PromQL expression of a panel; "$w" stands for the
// rate window. Its series are named Label, followed by the value of the
// By label when set.
type panelQuery struct {
	Label, By, Expr string
}

// panels are every chart of the five tabs, in the order shown.
var panels = []panel{
	{ID: "checks_rate", Tab: TabOperations, Title: "Checks per second", Unit: "/s",
		Queries: []panelQuery{{By: "decision", Expr: `sum by (decision) (rate(m1_policy_checks_total[$w]))`}},
		Local:   func(p, c *sample) map[string]float64 { return rateBy(p, c, "m1_policy_checks_total", "decision", nil) }},
	{ID: "check_latency", Tab: TabOperations, Title: "Check latency", Unit: "s",
		Queries: []panelQuery{
			{Label: "p50", Expr: `histogram_quantile(0.5, sum by (le) (rate(m1_check_duration_seconds_bucket[$w])))`},
			{Label: "p99", Expr: `histogram_quantile(0.99, sum by (le) (rate(m1_check_duration_seconds_bucket[$w])))`},
		},
		Local: func(p, c *sample) map[string]float64 {
			return latencyBetween(p, c, "m1_check_duration_seconds")
		}},
	{ID: "tool_executions", Tab: TabOperations, Title: "Tool executions per second by outcome", Unit: "/s",
		Queries: []panelQuery{{By: "outcome", Expr: `sum by (outcome) (rate(m1_tool_executions_total[$w])` + sidecarsOnly("$w") + `)`}},
		Local:   func(p, c *sample) map[string]float64 { return rateBy(p, c, "m1_tool_executions_total", "outcome", nil) }},
	{ID: "runs_active", Tab: TabOperations, Title: "Active runs", Unit: "",
		Queries: []panelQuery{{Label: "active", Expr: `sum(m1_agent_runs_active)`}},
		Local: func(_, c *sample) map[string]float64 {
			return relabel(sumBy(c, "m1_agent_runs_active", "", nil), "active")
		}},

	{ID: "cache_hit_rate", Tab: TabCache, Title: "Hit rate by tier", Unit: "ratio",
		Queries: []panelQuery{{By: "tier", Expr: `sum by (tier) (rate(m1_policy_cache_hits_total[$w])) / scalar(sum(rate(m1_policy_cache_hits_total[$w])) + sum(rate(m1_policy_cache_misses_total[$w])))`}},
		Local:   hitRateBetween},
	{ID: "cache_entries", Tab: TabCache, Title: "L1 entries", Unit: "",
		Local: func(_, c *sample) map[string]float64 { return extra(c, ExtraCacheEntries, "entries") }},
	{ID: "cache_evictions", Tab: TabCache, Title: "L1 evictions per second", Unit: "/s",
		Local: func(p, c *sample) map[string]float64 { return extraRate(p, c, ExtraCacheEvictions, "evictions") }},

	{ID: "denies_by_reason", Tab: TabPolicy, Title: "Denies per second by reason", Unit: "/s",
		Queries: []panelQuery{{By: "reason", Expr: `sum by (reason) (rate(m1_policy_checks_total{decision="deny"}[$w]))`}},
		Local: func(p, c *sample) map[string]float64 {
			return rateBy(p, c, "m1_policy_checks_total", "reason", map[string]string{"decision": "deny"})
		}},
	{ID: "token_verifications", Tab: TabPolicy, Title: "Token verifications per second by result", Unit: "/s",
		Queries: []panelQuery{{By: "result", Expr: `sum by (result) (rate(m1_token_verifications_total[$w]))`}},
		Local: func(p, c *sample) map[string]float64 {
			return rateBy(p, c, "m1_token_verifications_total", "result", nil)
		}},
	{ID: "refusals", Tab: TabPolicy, Title: "Rate limits, revocations, replays, shadow disagreements", Unit: "/s",
		Queries: []panelQuery{
			{Label: "rate limited", Expr: `sum(rate(m1_policy_checks_total{reason="` + deny.RateLimited + `"}[$w]))`},
			{Label: "revoked", Expr: `sum(rate(m1_policy_checks_total{reason="` + deny.TokenRevoked + `"}[$w]))`},
			{Label: "replayed", Expr: `sum(rate(m1_policy_checks_total{reason="` + deny.TokenReplayed + `"}[$w]))`},
			{Label: "shadow disagrees", Expr: `sum(rate(m1_policy_shadow_decisions_total{active="allow",shadow="deny"}[$w])) + sum(rate(m1_policy_shadow_decisions_total{active="deny",shadow="allow"}[$w]))`},
		},
		Local: func(p, c *sample) map[string]float64 {
			out := map[string]float64{}
			for label, reason := range map[string]string{"rate limited": deny.RateLimited, "revoked": deny.TokenRevoked, "replayed": deny.TokenReplayed} {
				if v, ok := rateBy(p, c, "m1_policy_checks_total", "", map[string]string{"reason": reason})[""]; ok {
					out[label] = v
				}
			}
			a := rateBy(p, c, "m1_policy_shadow_decisions_total", "", map[string]string{"active": "allow", "shadow": "deny"})
			b := rateBy(p, c, "m1_policy_shadow_decisions_total", "", map[string]string{"active": "deny", "shadow": "allow"})
			if x, ok := a[""]; ok {
				out["shadow disagrees"] = x + b[""]
			}
			return out
		}},

	{ID: "cost_rate", Tab: TabCost, Title: "LLM spend (USD per hour)", Unit: "USD/h",
		Queries: []panelQuery{{Label: "spend", Expr: `sum(rate(m1_total_cost[$w])) * 3600`}},
		Local: func(p, c *sample) map[string]float64 {
			return scale(relabel(rateBy(p, c, "m1_total_cost", "", nil), "spend"), 3600)
		}},

	{ID: "memory", Tab: TabHealth, Title: "Heap in use", Unit: "bytes",
		Queries: []panelQuery{{By: "instance", Expr: `sum by (instance) (go_memstats_heap_inuse_bytes) and on (instance) m1_build_info`}},
		Local:   func(_, c *sample) map[string]float64 { return extra(c, extraHeapBytes, "heap") }},
	{ID: "cpu", Tab: TabHealth, Title: "CPU (cores)", Unit: "",
		Queries: []panelQuery{{By: "instance", Expr: `sum by (instance) (rate(process_cpu_seconds_total[$w])) and on (instance) m1_build_info`}},
		Local:   func(p, c *sample) map[string]float64 { return extraRate(p, c, extraCPUSeconds, "cpu") }},
	{ID: "goroutines", Tab: TabHealth, Title: "Goroutines", Unit: "",
		Queries: []panelQuery{{By: "instance", Expr: `sum by (instance) (go_goroutines) and on (instance) m1_build_info`}},
		Local:   func(_, c *sample) map[string]float64 { return extra(c, extraGoroutines, "goroutines") }},
	{ID: "audit", Tab: TabHealth, Title: "Audit queue and local spool", Unit: "events",
		Queries: []panelQuery{{Label: "queued", By: "instance", Expr: `sum by (instance) (m1_audit_queue_depth)`}},
		Local: func(_, c *sample) map[string]float64 {
			out := relabel(sumBy(c, "m1_audit_queue_depth", "", nil), "queued")
			if v, ok := c.extra[ExtraAuditSpoolEvents]; ok {
				out["spooled"] = v
			}
			return out
		}},
	{ID: "errors", Tab: TabHealth, Title: "Errors per second", Unit: "/s",
		Queries: []panelQuery{
			{Label: "decision errors", Expr: `sum(rate(m1_policy_checks_total{reason=~"` + deny.PolicyError + `|` + deny.InternalError + `"}[$w]))`},
			{Label: "bundle load errors", Expr: `sum(rate(m1_policy_bundle_load_errors_total[$w]))`},
			{Label: "tool errors", Expr: `sum(rate(m1_tool_execution_errors_total[$w])` + sidecarsOnly("$w") + `)`},
			{Label: "outcomes dropped", Expr: `sum(rate(m1_access_log_dropped_total[$w]))`},
		},
		Local: func(p, c *sample) map[string]float64 {
			out := map[string]float64{}
			d := rateBy(p, c, "m1_policy_checks_total", "reason", map[string]string{"decision": "deny"})
			if _, ok := rateBy(p, c, "m1_policy_checks_total", "", nil)[""]; ok {
				out["decision errors"] = d[deny.PolicyError] + d[deny.InternalError]
			}
			for label, fam := range map[string]string{"bundle load errors": "m1_policy_bundle_load_errors_total",
				"tool errors": "m1_tool_execution_errors_total", "outcomes dropped": "m1_access_log_dropped_total"} {
				if v, ok := rateBy(p, c, fam, "", nil)[""]; ok {
					out[label] = v
				}
			}
			return out
		}},
	{ID: "latency_deps", Tab: TabHealth, Title: "Store ping and Redis round trip", Unit: "s",
		Local: func(_, c *sample) map[string]float64 {
			out := extra(c, ExtraStorePingSeconds, "store ping")
			if v, ok := c.extra[ExtraRedisRTTSeconds]; ok {
				out["redis rtt"] = v
			}
			return out
		}},
}

// match reports whether m has every label of filter.
func match(m *dto.Metric, filter map[string]string) bool {
	for k, v := range filter {
		if label(m, k) != v {
			return false
		}
	}
	return true
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return math.NaN()
}

// sumBy sums the family's series that match filter by the value of label
// by ("" sums them all under ""). A missing family is no series.
func sumBy(s *sample, fam, by string, filter map[string]string) map[string]float64 {
	out := map[string]float64{}
	mf, ok := s.fams[fam]
	if !ok {
		return out
	}
	for _, m := range mf.GetMetric() {
		if !match(m, filter) {
			continue
		}
		v := value(m)
		if math.IsNaN(v) {
			continue
		}
		k := ""
		if by != "" {
			k = label(m, by)
		}
		out[k] += v
	}
	return out
}

// rateBy is the per-second increase of sumBy from p to c; a counter that
// went down (a restart) counts from zero.
func rateBy(p, c *sample, fam, by string, filter map[string]string) map[string]float64 {
	if p == nil {
		return nil
	}
	dt := c.t.Sub(p.t).Seconds()
	if dt <= 0 {
		return nil
	}
	before, now := sumBy(p, fam, by, filter), sumBy(c, fam, by, filter)
	out := make(map[string]float64, len(now))
	for k, v := range now {
		d := v - before[k]
		if d < 0 {
			d = v
		}
		out[k] = d / dt
	}
	return out
}

func relabel(m map[string]float64, to string) map[string]float64 {
	if v, ok := m[""]; ok {
		return map[string]float64{to: v}
	}
	return nil
}

func scale(m map[string]float64, f float64) map[string]float64 {
	for k := range m {
		m[k] *= f
	}
	return m
}

func extra(c *sample, key, label string) map[string]float64 {
	if v, ok := c.extra[key]; ok {
		return map[string]float64{label: v}
	}
	return map[string]float64{}
}

func extraRate(p, c *sample, key, label string) map[string]float64 {
	if p == nil {
		return nil
	}
	a, okA := p.extra[key]
	b, okB := c.extra[key]
	dt := c.t.Sub(p.t).Seconds()
	if !okA || !okB || dt <= 0 {
		return nil
	}
	d := b - a
	if d < 0 {
		d = b
	}
	return map[string]float64{label: d / dt}
}

// hitRateBetween is each tier's share of the lookups from p to c.
func hitRateBetween(p, c *sample) map[string]float64 {
	hits := rateBy(p, c, "m1_policy_cache_hits_total", "tier", nil)
	misses := rateBy(p, c, "m1_policy_cache_misses_total", "", nil)
	total := misses[""]
	for _, v := range hits {
		total += v
	}
	if total <= 0 {
		return nil
	}
	out := make(map[string]float64, len(hits))
	for tier, v := range hits {
		out[tier] = v / total
	}
	return out
}

// latencyBetween is the p50 and p99 of the histogram's observations from p
// to c (none: no series).
func latencyBetween(p, c *sample, fam string) map[string]float64 {
	if p == nil {
		return nil
	}
	hc, hp := histogram(c, fam), histogram(p, fam)
	if hc == nil {
		return nil
	}
	d := &dto.Histogram{}
	count := hc.GetSampleCount()
	if hp != nil && hp.GetSampleCount() <= count {
		count -= hp.GetSampleCount()
	} else {
		hp = nil
	}
	if count == 0 {
		return nil
	}
	d.SampleCount = &count
	for i, b := range hc.GetBucket() {
		cum := b.GetCumulativeCount()
		if hp != nil && i < len(hp.GetBucket()) {
			cum -= hp.GetBucket()[i].GetCumulativeCount()
		}
		d.Bucket = append(d.Bucket, &dto.Bucket{UpperBound: b.UpperBound, CumulativeCount: &cum})
	}
	return map[string]float64{"p50": quantile(0.5, d), "p99": quantile(0.99, d)}
}

func histogram(s *sample, fam string) *dto.Histogram {
	mf, ok := s.fams[fam]
	if !ok || len(mf.GetMetric()) == 0 {
		return nil
	}
	return mf.GetMetric()[0].GetHistogram()
}
