package sidecar

import (
	"fmt"

	"github.com/m1-agent/m1/internal/outcome"
	"github.com/m1-agent/m1/internal/store"
)

// setupOutcomes builds the AccessLogService that records tool outcomes
// (DESIGN §6) into the audit trail (when on) and the metrics.
func (s *Server) setupOutcomes() error {
	m, err := outcome.NewMetrics(s.opts.Registerer)
	if err != nil {
		return fmt.Errorf("register outcome metrics: %w", err)
	}
	o := outcome.Options{Metrics: m, Logger: s.log.Named("outcomes"), Now: s.opts.Now}
	if s.audit != nil {
		o.Audit = s.audit
	}
	s.outcomes, err = outcome.New(o)
	return err
}

// decisions is the decision path's auditor: every decision is remembered
// for its access-log entry, then audited (when the audit trail is on).
type decisions struct {
	outcomes *outcome.Server
	audit    outcome.Auditor // nil when M1_AUDIT=false
}

func (d decisions) Record(e store.Event) {
	d.outcomes.Decided(e)
	if d.audit != nil {
		d.audit.Record(e)
	}
}
