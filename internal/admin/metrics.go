package admin

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// MetricsSummary is the /api/m1/dashboard/metrics document: the process's
// own Prometheus metrics (DESIGN §8), summed up for a person. Counts are
// since the process started.
type MetricsSummary struct {
	Checks             CheckCounts      `json:"checks"`
	Cache              CacheCounts      `json:"cache"`
	CheckLatency       Latency          `json:"check_latency"`
	Audit              AuditCounts      `json:"audit"`
	TokenVerifications map[string]int64 `json:"token_verifications"` // m1_token_verifications_total by result
}

// CheckCounts is m1_policy_checks_total.
type CheckCounts struct {
	Total    int64         `json:"total"`
	Allow    int64         `json:"allow"`
	Deny     int64         `json:"deny"`
	ByReason []ReasonCount `json:"by_reason"` // most frequent first, then by decision and reason
}

// ReasonCount is one series of m1_policy_checks_total.
type ReasonCount struct {
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
	Count    int64  `json:"count"`
}

// CacheCounts is m1_policy_cache_hits_total and m1_policy_cache_misses_total.
type CacheCounts struct {
	Hits    map[string]int64 `json:"hits"` // by tier (l1, l2)
	Misses  int64            `json:"misses"`
	HitRate *float64         `json:"hit_rate"` // hits / (hits + misses); null before the first lookup
}

// Latency is m1_check_duration_seconds. The quantiles are estimated from the
// histogram's buckets as Prometheus' histogram_quantile does (linear within
// a bucket); they are null before the first check.
type Latency struct {
	Count       uint64   `json:"count"`
	SumSeconds  float64  `json:"sum_seconds"`
	MeanSeconds *float64 `json:"mean_seconds"`
	P50Seconds  *float64 `json:"p50_seconds"`
	P99Seconds  *float64 `json:"p99_seconds"`
}

// AuditCounts is m1_audit_events_total and m1_audit_queue_depth; Enabled
// is false when the audit recorder is off (its metrics are not registered).
type AuditCounts struct {
	Enabled    bool  `json:"enabled"`
	Events     int64 `json:"events_total"`
	QueueDepth int64 `json:"queue_depth"`
}

// SummarizeMetrics gathers g and sums up M1's decision-path metrics.
func SummarizeMetrics(g prometheus.Gatherer) (MetricsSummary, error) {
	mfs, err := g.Gather()
	if err != nil {
		return MetricsSummary{}, fmt.Errorf("gather metrics: %w", err)
	}
	s := MetricsSummary{
		Checks:             CheckCounts{ByReason: []ReasonCount{}},
		Cache:              CacheCounts{Hits: map[string]int64{}},
		TokenVerifications: map[string]int64{},
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "m1_policy_checks_total":
				rc := ReasonCount{Decision: label(m, "decision"), Reason: label(m, "reason"), Count: int64(m.GetCounter().GetValue())}
				s.Checks.Total += rc.Count
				switch rc.Decision {
				case "allow":
					s.Checks.Allow += rc.Count
				case "deny":
					s.Checks.Deny += rc.Count
				}
				if rc.Count > 0 {
					s.Checks.ByReason = append(s.Checks.ByReason, rc)
				}
			case "m1_policy_cache_hits_total":
				s.Cache.Hits[label(m, "tier")] += int64(m.GetCounter().GetValue())
			case "m1_policy_cache_misses_total":
				s.Cache.Misses += int64(m.GetCounter().GetValue())
			case "m1_check_duration_seconds":
				s.CheckLatency = latency(m.GetHistogram())
			case "m1_audit_events_total":
				s.Audit.Enabled = true
				s.Audit.Events = int64(m.GetCounter().GetValue())
			case "m1_audit_queue_depth":
				s.Audit.QueueDepth = int64(m.GetGauge().GetValue())
			case "m1_token_verifications_total":
				s.TokenVerifications[label(m, "result")] += int64(m.GetCounter().GetValue())
			}
		}
	}
	slices.SortFunc(s.Checks.ByReason, func(a, b ReasonCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Decision, b.Decision), cmp.Compare(a.Reason, b.Reason))
	})
	var hits int64
	for _, n := range s.Cache.Hits {
		hits += n
	}
	if hits+s.Cache.Misses > 0 {
		s.Cache.HitRate = ptr(float64(hits) / float64(hits+s.Cache.Misses))
	}
	return s, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func latency(h *dto.Histogram) Latency {
	l := Latency{Count: h.GetSampleCount(), SumSeconds: h.GetSampleSum()}
	if l.Count == 0 {
		return l
	}
	l.MeanSeconds = ptr(l.SumSeconds / float64(l.Count))
	l.P50Seconds = ptr(quantile(0.5, h))
	l.P99Seconds = ptr(quantile(0.99, h))
	return l
}

// quantile estimates the q-quantile of h as Prometheus' histogram_quantile
// does: it finds the bucket holding the rank q·count and interpolates
// linearly inside it (the first bucket starts at 0). A rank beyond the last
// finite bucket gives that bucket's upper bound.
func quantile(q float64, h *dto.Histogram) float64 {
	rank := q * float64(h.GetSampleCount())
	lower, below := 0.0, 0.0
	for _, b := range h.GetBucket() {
		upper, cum := b.GetUpperBound(), float64(b.GetCumulativeCount())
		if math.IsInf(upper, 1) {
			break
		}
		if cum >= rank {
			if cum == below {
				return upper
			}
			return lower + (upper-lower)*(rank-below)/(cum-below)
		}
		lower, below = upper, cum
	}
	return lower
}

func ptr[T any](v T) *T { return &v }
