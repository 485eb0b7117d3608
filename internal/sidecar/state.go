package sidecar

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/audit"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/redisstate"
	"github.com/m1-agent/m1/internal/state/storestate"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// stateLoadTimeout bounds each attempt to load the state from the store.
const stateLoadTimeout = 5 * time.Second

// setupStore prepares the store (SQLite under DataDir by default,
// PostgreSQL with M1_DATABASE_URL), opened on first use and shared by the
// security state and the audit trail. Nothing connects yet.
func (s *Server) setupStore() error {
	o := s.opts
	if _, _, err := backend.Parse(o.DatabaseURL, o.DataDir); err != nil {
		return fmt.Errorf("M1_DATABASE_URL: %w", err)
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("M1_DATA_DIR: %w", err)
	}
	s.storeSink = audit.NewLazySink(func(ctx context.Context) (store.Store, error) {
		return backend.Open(ctx, o.DatabaseURL, o.DataDir)
	})
	return nil
}

// grantBlock is the largest block of a grant's uses one commit counts in
// a SQLite store (a block is also at most a tenth of the grant's
// max_uses): a restart forfeits at most one and a half blocks of a grant.
const grantBlock = 256

// setupState builds the security state (DESIGN §7). Without Redis it lives
// in the store: uses counted there, its epoch, revocations. With Redis,
// Redis counts uses and shares revocations, and the store keeps the
// durable copy of every revocation.
func (s *Server) setupState() error {
	// A use waits for its commit at most the default second, and never
	// past the check's own deadline (Envoy's ext_authz timeout).
	so := storestate.Options{
		EpochMargin: s.opts.ClockSkew,
		Now:         s.opts.Now,
		Logger:      s.log.Named("state"),
	}
	db := stateDB{s.storeSink}
	if s.shared != nil {
		s.revs = storestate.NewSharedRevocations(db, s.shared, so)
		s.store = sharedState{Store: s.shared, revs: s.revs}
		s.epoch = s.shared
		return nil
	}
	// A SQLite store is this process's alone: a grant in quick use may
	// take its uses in blocks (storestate Options.Reserve). Sidecars that
	// share PostgreSQL count every use, so none holds uses another needs.
	if kind, _, err := backend.Parse(s.opts.DatabaseURL, s.opts.DataDir); err == nil && kind == backend.SQLite {
		so.Reserve = grantBlock
	}
	var err error
	if s.durable, err = storestate.New(db, so); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	s.store, s.epoch = s.durable, s.durable
	return nil
}

// loadState loads the state from the store: everything without Redis, the
// revocations (before Redis's first reload, which writes them back to an
// empty Redis) with it.
func (s *Server) loadState(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, stateLoadTimeout)
	defer cancel()
	if s.durable != nil {
		return s.durable.Load(ctx)
	}
	return s.revs.Load(ctx)
}

// startState loads the state before serving. A store that does not answer
// is not fatal: the sidecar serves, denying single use and grants
// (state_unavailable) until a retry every second loads it.
func (s *Server) startState(ctx context.Context) {
	err := s.loadState(ctx)
	if err == nil {
		return
	}
	s.log.Warn("store unreachable at start: approvals and grants are denied (state_unavailable) until it answers", zap.Error(err))
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopState = cancel
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-lctx.Done():
				return
			case <-t.C:
				if err := s.loadState(lctx); err == nil {
					s.log.Info("state loaded from the store")
					return
				}
			}
		}
	}()
}

// stateLoaded reports whether the state was loaded from the store.
func (s *Server) stateLoaded() bool {
	if s.durable != nil {
		return s.durable.Loaded() && !s.durable.Epoch().IsZero()
	}
	return s.revs.Loaded()
}

// sharedState is the Redis store with durable revocations: a revocation or
// lift is written to the store first, then to Redis.
type sharedState struct {
	*redisstate.Store
	revs *storestate.Revocations
}

var (
	_ stateStore = sharedState{}
	_ stateStore = (*storestate.Store)(nil)
)

// Revoke implements admin.RevocationStore.
func (s sharedState) Revoke(ctx context.Context, r state.Revocation) error {
	return s.revs.Revoke(ctx, r)
}

// LiftSub implements admin.RevocationStore.
func (s sharedState) LiftSub(ctx context.Context, sub string) (bool, error) {
	return s.revs.LiftSub(ctx, sub)
}

// stateDB is the store as store.State, opened through the sink it shares
// with the audit trail.
type stateDB struct{ sink *audit.LazySink }

var _ store.State = stateDB{}

func (d stateDB) get(ctx context.Context) (store.State, error) {
	st, err := d.sink.Store(ctx)
	if err != nil {
		return nil, fmt.Errorf("open the store: %w", err)
	}
	ss, ok := st.(store.State)
	if !ok {
		return nil, fmt.Errorf("store %T keeps no security state", st)
	}
	return ss, nil
}

func (d stateDB) StateEpoch(ctx context.Context, candidate time.Time) (time.Time, error) {
	st, err := d.get(ctx)
	if err != nil {
		return time.Time{}, err
	}
	return st.StateEpoch(ctx, candidate)
}

func (d stateDB) RecordUses(ctx context.Context, epoch, now time.Time, uses []store.Use) ([]bool, error) {
	st, err := d.get(ctx)
	if err != nil {
		return nil, err
	}
	return st.RecordUses(ctx, epoch, now, uses)
}

func (d stateDB) Uses(ctx context.Context, now time.Time, fn func(store.UseRecord) error) error {
	st, err := d.get(ctx)
	if err != nil {
		return err
	}
	return st.Uses(ctx, now, fn)
}

func (d stateDB) PruneUses(ctx context.Context, before time.Time) (int64, error) {
	st, err := d.get(ctx)
	if err != nil {
		return 0, err
	}
	return st.PruneUses(ctx, before)
}

func (d stateDB) PutRevocation(ctx context.Context, r store.Revocation) error {
	st, err := d.get(ctx)
	if err != nil {
		return err
	}
	return st.PutRevocation(ctx, r)
}

func (d stateDB) DeleteRevocation(ctx context.Context, jti, sub string, now time.Time) (bool, error) {
	st, err := d.get(ctx)
	if err != nil {
		return false, err
	}
	return st.DeleteRevocation(ctx, jti, sub, now)
}

func (d stateDB) Revocations(ctx context.Context, now time.Time, fn func(store.Revocation) error) error {
	st, err := d.get(ctx)
	if err != nil {
		return err
	}
	return st.Revocations(ctx, now, fn)
}
