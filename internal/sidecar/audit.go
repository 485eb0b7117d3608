package sidecar

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/audit"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// setupAudit builds the recorder on the store setupStore prepared and
// checkStore opened. A database that is down at start is not fatal: events
// spool under DataDir until it answers.
func (s *Server) setupAudit(_ context.Context) error {
	o := s.opts
	if !o.Audit {
		return nil
	}
	pingErr := s.storePingErr
	if pingErr != nil {
		s.log.Warn("audit store unreachable at start; decisions spool locally until it answers", zap.Error(pingErr))
	}
	s.auditWriter = store.WriterID("m1-authz", o.Now())
	rec, err := audit.New(audit.Options{
		Writer:       s.auditWriter,
		Sink:         s.storeSink,
		SpoolPath:    filepath.Join(o.DataDir, "audit-spool.jsonl"),
		MaxArgsBytes: o.AuditMaxArgs,
		Logger:       s.log.Named("audit"),
		Registerer:   o.Registerer,
	})
	if err != nil {
		return err
	}
	if pingErr != nil {
		rec.ReportError(pingErr)
	}
	s.audit = rec
	return nil
}

// records returns the store the audit trail writes to as store.Records:
// the runs and LLM costs m1-orchestrator records there, for the dashboard.
func (s *Server) records(ctx context.Context) (store.Records, error) {
	if s.audit == nil {
		return nil, errors.New("audit is off (M1_AUDIT=false): runs and costs are read from the audit store")
	}
	st, err := s.storeSink.Store(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit store unreachable: %w", err)
	}
	rec, ok := st.(store.Records)
	if !ok {
		return nil, fmt.Errorf("audit store %T keeps no runs", st)
	}
	return rec, nil
}

// databaseCheck reports the store: whether the security state was loaded
// from it, and the audit trail's queue and spool.
func (s *Server) databaseCheck() admin.Check {
	kind, _, _ := backend.Parse(s.opts.DatabaseURL, s.opts.DataDir)
	c := admin.Check{Status: admin.StatusOK, Info: map[string]any{"backend": kind, "state": "loaded"}}
	if !s.stateLoaded() {
		c.Status, c.Info["state"] = admin.StatusDegraded, "not loaded"
		c.Detail = "store unreachable: the security state is not loaded, approvals and grants are denied (state_unavailable) until it answers"
	}
	if s.durable != nil {
		st := s.durable.Stats()
		c.Info["use_commits"] = st.Commits
		if st.Commits > 0 {
			c.Info["uses_per_commit"] = float64(st.Uses) / float64(st.Commits)
		}
	}
	if s.audit == nil {
		c.Info["audit"] = "off"
		if c.Detail == "" {
			c.Detail = "audit off (M1_AUDIT=false); the store keeps the security state"
		} else {
			c.Detail += "; audit off (M1_AUDIT=false)"
		}
		return c
	}
	st := s.audit.Stats()
	c.Info["queue_depth"], c.Info["spool_events"], c.Info["spool_bytes"], c.Info["written"] = st.QueueDepth, st.SpoolEvents, st.SpoolBytes, st.Written
	if st.LastError != "" || st.SpoolEvents > 0 {
		msg := "audit store unreachable; decisions spool locally: " + st.LastError
		if c.Detail != "" {
			msg = c.Detail + "; " + msg
		}
		c.Status, c.Detail = admin.StatusDegraded, msg
	}
	return c
}
