package audit

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/store"
)

// ValidatePruneEvery checks a PruneLoop interval as both binaries take it
// (M1_AUDIT_PRUNE_INTERVAL): 0 (never) or at least a minute.
func ValidatePruneEvery(d time.Duration) error {
	if d < 0 || (d > 0 && d < time.Minute) {
		return errors.New("PruneEvery (M1_AUDIT_PRUNE_INTERVAL) must be 0 or at least 1m")
	}
	return nil
}

// PruneLoop applies store.DefaultRetention every interval until ctx ends,
// to the store get returns then (a store that cannot be reached skips the
// round). m1-authz and m1-orchestrator both run it (M1_AUDIT_PRUNE_INTERVAL).
func PruneLoop(ctx context.Context, every time.Duration, now func() time.Time, get func(context.Context) (store.Store, error), log *zap.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			st, err := get(ctx)
			if err != nil {
				log.Warn("audit prune skipped: store unreachable", zap.Error(err))
				continue
			}
			n, err := store.ApplyRetention(ctx, st, now(), store.DefaultRetention)
			if err != nil {
				log.Warn("audit prune failed", zap.Error(err))
				continue
			}
			log.Info("audit retention applied", zap.Any("pruned", n))
		}
	}
}
