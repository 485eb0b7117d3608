package sidecar

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/audit"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// setupAudit opens the audit store (SQLite under DataDir by default,
// PostgreSQL with M1_DATABASE_URL) and the recorder. A database that is
// down at start is not fatal: events spool under DataDir until it answers.
func (s *Server) setupAudit(ctx context.Context) error {
	o := s.opts
	if !o.Audit {
		return nil
	}
	if _, _, err := backend.Parse(o.DatabaseURL, o.DataDir); err != nil {
		return fmt.Errorf("M1_DATABASE_URL: %w", err)
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("M1_DATA_DIR: %w", err)
	}
	s.auditSink = audit.NewLazySink(func(ctx context.Context) (store.Store, error) {
		return backend.Open(ctx, o.DatabaseURL, o.DataDir)
	})
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pingErr := s.auditSink.Ping(pctx)
	if pingErr != nil {
		s.log.Warn("audit store unreachable at start; decisions spool locally until it answers", zap.Error(pingErr))
	}
	s.auditWriter = store.WriterID("m1-authz", o.Now())
	rec, err := audit.New(audit.Options{
		Writer:       s.auditWriter,
		Sink:         s.auditSink,
		SpoolPath:    filepath.Join(o.DataDir, "audit-spool.jsonl"),
		MaxArgsBytes: o.AuditMaxArgs,
		Logger:       s.log.Named("audit"),
		Registerer:   o.Registerer,
	})
	if err != nil {
		_ = s.auditSink.Close()
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
	if s.auditSink == nil {
		return nil, errors.New("audit is off (M1_AUDIT=false): runs and costs are read from the audit store")
	}
	st, err := s.auditSink.Store(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit store unreachable: %w", err)
	}
	rec, ok := st.(store.Records)
	if !ok {
		return nil, fmt.Errorf("audit store %T keeps no runs", st)
	}
	return rec, nil
}

func (s *Server) databaseCheck() admin.Check {
	if s.audit == nil {
		return admin.Check{Status: admin.StatusDisabled, Detail: "audit off (M1_AUDIT=false)"}
	}
	kind, _, _ := backend.Parse(s.opts.DatabaseURL, s.opts.DataDir)
	st := s.audit.Stats()
	c := admin.Check{Status: admin.StatusOK, Info: map[string]any{
		"backend": kind, "queue_depth": st.QueueDepth, "spool_events": st.SpoolEvents, "spool_bytes": st.SpoolBytes, "written": st.Written,
	}}
	if st.LastError != "" || st.SpoolEvents > 0 {
		c.Status, c.Detail = admin.StatusDegraded, "audit store unreachable; decisions spool locally: "+st.LastError
	}
	return c
}

// pruneLoop applies the retention policy every PruneEvery until ctx ends.
func (s *Server) pruneLoop(ctx context.Context) {
	t := time.NewTicker(s.opts.PruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			st, err := s.auditSink.Store(ctx)
			if err != nil {
				s.log.Warn("audit prune skipped: store unreachable", zap.Error(err))
				continue
			}
			n, err := store.ApplyRetention(ctx, st, s.opts.Now(), store.DefaultRetention)
			if err != nil {
				s.log.Warn("audit prune failed", zap.Error(err))
				continue
			}
			s.log.Info("audit retention applied", zap.Any("pruned", n))
		}
	}
}
