package orchestrator

import (
	"cmp"
	"context"
	"errors"
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
// answer within the Timeout of its options reports nothing (an absent
// series; alert on absent() too).
type PendingCollector struct {
	records store.Records
	risks   []string // the registry's risks, reported even at 0
	now     func() time.Time
	timeout time.Duration
	log     *zap.Logger

	count, age *prometheus.Desc
}

// PendingCollectorOptions configure NewPendingCollector. Start from
// DefaultPendingCollectorOptions and set Records and Registry.
type PendingCollectorOptions struct {
	// Records holds the pending proposals. Required.
	Records store.Records
	// Registry is the tool registry, whose risks are reported even at 0.
	// Required: at least one tool.
	Registry Registry
	// Now is the clock the ages are measured by; nil means time.Now.
	Now func() time.Time
	// Timeout bounds each scrape's query of Records; default 2s.
	Timeout time.Duration
	// Logger logs a failed query; nil logs nothing.
	Logger *zap.Logger
}

// DefaultPendingCollectorOptions returns the defaults of the optional
// fields; Records and Registry are left unset.
func DefaultPendingCollectorOptions() PendingCollectorOptions {
	return PendingCollectorOptions{Now: time.Now, Timeout: 2 * time.Second, Logger: zap.NewNop()}
}

// validate names the first field NewPendingCollector cannot run with.
func (o *PendingCollectorOptions) validate() error {
	switch {
	case o.Records == nil:
		return errors.New("orchestrator: PendingCollectorOptions.Records is required")
	case len(o.Registry) == 0:
		return errors.New("orchestrator: PendingCollectorOptions.Registry has no tools")
	case o.Timeout <= 0:
		return errors.New("orchestrator: PendingCollectorOptions.Timeout must be positive")
	}
	return nil
}

// NewPendingCollector returns a collector of o.Records' pending proposals
// for the risks of o.Registry.
func NewPendingCollector(o PendingCollectorOptions) (*PendingCollector, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var risks []string
	for _, spec := range o.Registry {
		if r := cmp.Or(spec.Risk, unknownRisk); !seen[r] {
			seen[r] = true
			risks = append(risks, r)
		}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &PendingCollector{
		records: o.Records, risks: risks, now: o.Now, timeout: o.Timeout, log: cmp.Or(o.Logger, zap.NewNop()),
		count: prometheus.NewDesc(MetricProposalsPending, "Proposals waiting for an operator's decision, by risk.", []string{"risk"}, nil),
		age:   prometheus.NewDesc(MetricProposalsPendingAgeOldest, "Age of the oldest proposal waiting for an operator's decision, by risk (0 when none waits).", []string{"risk"}, nil),
	}, nil
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
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	ps, err := c.records.Proposals(ctx, store.ProposalFilter{Status: store.ProposalPending})
	if err != nil {
		c.log.Warn("count pending proposals for "+MetricProposalsPending, zap.Error(err))
		return
	}
	now := c.now()
	count, oldest := map[string]int{}, map[string]time.Time{}
	for _, r := range c.risks {
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
