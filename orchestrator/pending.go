package orchestrator

import (
	"cmp"
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/store"
)

// Metric names of the pending-proposals collector.
const (
	MetricProposalsPending          = "m1_proposals_pending"
	MetricProposalsPendingAgeOldest = "m1_proposals_pending_oldest_age_seconds"
)

// PendingCollector exports, at each scrape, the proposals that wait for a
// person, from the store (so every orchestrator sharing it reports the
// same): m1_proposals_pending{risk} and
// m1_proposals_pending_oldest_age_seconds{risk}, the age of the oldest.
// Every risk of the tool registry is reported, 0 when none waits, so that
// an alert on the age never meets a missing series. A store that does not
// answer within Timeout reports nothing (an absent series; alert on
// absent() too).
type PendingCollector struct {
	Records store.Records
	Risks   []string // the registry's risks, reported even at 0
	Now     func() time.Time
	Timeout time.Duration // default 2s
	Logger  *zap.Logger

	count, age *prometheus.Desc
}

// NewPendingCollector returns a collector of records' pending proposals
// for the risks of registry.
func NewPendingCollector(records store.Records, registry Registry, now func() time.Time, log *zap.Logger) *PendingCollector {
	seen := map[string]bool{}
	var risks []string
	for _, spec := range registry {
		if r := cmp.Or(spec.Risk, unknownRisk); !seen[r] {
			seen[r] = true
			risks = append(risks, r)
		}
	}
	return &PendingCollector{
		Records: records, Risks: risks, Now: now, Timeout: 2 * time.Second, Logger: cmp.Or(log, zap.NewNop()),
		count: prometheus.NewDesc(MetricProposalsPending, "Proposals waiting for an operator's decision, by risk.", []string{"risk"}, nil),
		age:   prometheus.NewDesc(MetricProposalsPendingAgeOldest, "Age of the oldest proposal waiting for an operator's decision, by risk (0 when none waits).", []string{"risk"}, nil),
	}
}

// unknownRisk labels a proposal whose tool has no risk in the registry.
const unknownRisk = "unknown"

// Describe implements prometheus.Collector.
func (c *PendingCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.count
	ch <- c.age
}

// Collect implements prometheus.Collector.
func (c *PendingCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	ps, err := c.Records.Proposals(ctx, store.ProposalFilter{Status: store.ProposalPending})
	if err != nil {
		c.Logger.Warn("count pending proposals for "+MetricProposalsPending, zap.Error(err))
		return
	}
	now := c.Now()
	count, oldest := map[string]int{}, map[string]time.Time{}
	for _, r := range c.Risks {
		count[r] = 0
	}
	for _, p := range ps {
		r := cmp.Or(p.Risk, unknownRisk)
		count[r]++
		if o, ok := oldest[r]; !ok || p.CreatedAt.Before(o) {
			oldest[r] = p.CreatedAt
		}
	}
	for r, n := range count {
		ch <- prometheus.MustNewConstMetric(c.count, prometheus.GaugeValue, float64(n), r)
		age := 0.0
		if o, ok := oldest[r]; ok {
			age = max(now.Sub(o).Truncate(time.Millisecond).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age, r)
	}
}
