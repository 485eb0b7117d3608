package storestate

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/store"
)

// RevocationSet is the set of revocations a Revocations keeps in step with
// the store: state.Memory (in-process), or the Redis store, which shares it
// with the other sidecars.
type RevocationSet interface {
	Revoke(ctx context.Context, r state.Revocation) error
	LiftSub(ctx context.Context, sub string) (bool, error)
	Revoked(ctx context.Context, jti, sub string) (bool, error)
	List(ctx context.Context) ([]state.Revocation, error)
	// Restore applies revocations read from the store in this process.
	Restore(rs []state.Revocation)
}

var (
	_ RevocationSet = (*state.Memory)(nil)
	_ RevocationSet = (*Revocations)(nil)
)

// Revocations makes a revocation set durable (DESIGN §7): every revocation
// and lift is written to the store's revoked_tokens table first, and only
// then applied to the set, so that a call the store refuses changes
// nothing; Load restores the store's revocations into the set at start. It
// is safe for concurrent use.
type Revocations struct {
	db     store.State
	set    RevocationSet
	shared bool // set is shared with other sidecars and is the authority
	now    func() time.Time
	log    *zap.Logger
	loaded atomic.Bool
}

// NewRevocations returns set, an in-process set, made durable in db. Call
// Load before serving.
func NewRevocations(db store.State, set RevocationSet, o Options) *Revocations {
	o.fill()
	return &Revocations{db: db, set: set, now: o.Now, log: o.Logger}
}

// NewSharedRevocations is NewRevocations for a set other sidecars share
// (the Redis store), which is the authority on what is in force: each
// sidecar's store keeps the revocations taken through it, restored at
// start and written back by the set when it finds its data lost.
func NewSharedRevocations(db store.State, set RevocationSet, o Options) *Revocations {
	r := NewRevocations(db, set, o)
	r.shared = true
	return r
}

// Load restores the revocations in force in the store into the set. It may
// be called again after a failure; once it succeeded it does nothing.
func (r *Revocations) Load(ctx context.Context) error {
	if r.loaded.Load() {
		return nil
	}
	var rs []state.Revocation
	err := r.db.Revocations(ctx, r.now(), func(row store.Revocation) error {
		rs = append(rs, state.Revocation{JTI: row.JTI, Sub: row.Sub, Until: row.ExpiresAt, By: row.CreatedBy, Stored: row.CreatedAt})
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: load revocations: %w", state.ErrUnavailable, err)
	}
	r.set.Restore(rs)
	r.loaded.Store(true)
	r.log.Info("revocations loaded from the store", zap.Int(fieldCount, len(rs)))
	return nil
}

// Loaded reports whether Load succeeded.
func (r *Revocations) Loaded() bool { return r.loaded.Load() }

// Revoke stores rev in the store, then applies it to the set. When the
// store cannot be written it returns an error wrapping state.ErrUnavailable
// and state.ErrNotStored, and nothing changed. An error of the set (Redis
// unreachable: state.ErrUnavailable) is returned as is: the revocation is
// then stored and in force in this process.
func (r *Revocations) Revoke(ctx context.Context, rev state.Revocation) error {
	if err := rev.Validate(); err != nil {
		return err
	}
	row := store.Revocation{JTI: rev.JTI, Sub: rev.Sub, ExpiresAt: rev.Until, CreatedBy: rev.By, CreatedAt: r.now()}
	if err := r.db.PutRevocation(ctx, row); err != nil {
		return fmt.Errorf("%w: %w: %w", state.ErrUnavailable, state.ErrNotStored, err)
	}
	return r.set.Revoke(ctx, rev)
}

// LiftSub deletes sub's revocation from the store, then lifts it in the
// set; it reports whether one was in force: in the set, or (for an
// in-process set, which may not hold what another sidecar sharing the
// database stored since it started) in the store. A shared set is the
// authority: a row of the store that another sidecar lifted meanwhile
// does not count. Errors as for Revoke.
func (r *Revocations) LiftSub(ctx context.Context, sub string) (bool, error) {
	stored, err := r.db.DeleteRevocation(ctx, "", sub, r.now())
	if err != nil {
		return false, fmt.Errorf("%w: %w: %w", state.ErrUnavailable, state.ErrNotStored, err)
	}
	lifted, err := r.set.LiftSub(ctx, sub)
	return lifted || (stored && !r.shared), err
}

// Revoked answers from the set.
func (r *Revocations) Revoked(ctx context.Context, jti, sub string) (bool, error) {
	return r.set.Revoked(ctx, jti, sub)
}

// List lists the set's revocations.
func (r *Revocations) List(ctx context.Context) ([]state.Revocation, error) {
	return r.set.List(ctx)
}

// Restore applies rs to the set only.
func (r *Revocations) Restore(rs []state.Revocation) { r.set.Restore(rs) }

// writeBack stores every revocation of the set in the store again, after
// the store was found to have lost its state.
func (r *Revocations) writeBack(ctx context.Context) error {
	rs, err := r.set.List(ctx)
	if err != nil {
		return err
	}
	for _, rev := range rs {
		row := store.Revocation{JTI: rev.JTI, Sub: rev.Sub, ExpiresAt: rev.Until, CreatedBy: rev.By, CreatedAt: r.now()}
		if err := r.db.PutRevocation(ctx, row); err != nil {
			return fmt.Errorf("write back revocations: %w", err)
		}
	}
	r.log.Warn("revocations written back to the store after it lost its state", zap.Int(fieldCount, len(rs)))
	return nil
}
