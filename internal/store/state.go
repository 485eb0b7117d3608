package store

import (
	"context"
	"errors"
	"time"
)

// ErrEpochChanged is wrapped by State.RecordUses' error when the store's
// state epoch is not the one the caller adopted (the state tables were
// emptied or replaced behind its back): nothing of the batch is recorded.
// The caller adopts the epoch StateEpoch then returns and refuses tokens
// issued before it.
var ErrEpochChanged = errors.New("store: state epoch changed")

// Use is one use of a token presented to State.RecordUses: it counts if
// fewer than MaxUses were counted for JTI (1 for an approval, the grant's
// max_uses for a grant). The record is kept until ExpiresAt, after which
// the token can no longer verify; an expired record counts from zero again.
type Use struct {
	JTI       string
	MaxUses   int
	ExpiresAt time.Time
}

// UseRecord is a token's recorded uses, as State.Uses streams them.
type UseRecord struct {
	JTI       string
	Uses      int // uses counted
	MaxUses   int // the limit of the last use recorded
	ExpiresAt time.Time
}

// Revocation is one row of revoked_tokens: a revoked token (JTI) or
// subject (Sub), exactly one of the two set. Times are kept to the
// microsecond, in UTC.
type Revocation struct {
	JTI       string
	Sub       string
	ExpiresAt time.Time // zero (NULL): in force until lifted
	Reason    string
	CreatedBy string // who revoked: the admin caller
	CreatedAt time.Time
}

// State is the sidecar's security state kept in the store (DESIGN §7):
// without Redis, the state epoch and the uses of approvals and grants, so
// that a restarted sidecar refuses a replay; with or without Redis, the
// durable copy of every revocation. Both backends implement it; several
// processes may share one database (PostgreSQL): every method is atomic
// on its own, and RecordUses counts every process's uses.
type State interface {
	// StateEpoch returns the store's state epoch, first storing candidate
	// when the store has none (a new store, or one whose state was
	// emptied). Concurrent callers all get the epoch stored first. Epochs
	// are whole seconds.
	StateEpoch(ctx context.Context, candidate time.Time) (time.Time, error)
	// RecordUses counts uses in order, in one transaction: each counts one
	// use of its JTI if fewer than its MaxUses were counted (expired records
	// start again from zero at now), and counted[i] reports whether uses[i]
	// did. It first checks that the store's epoch is epoch; when it is not
	// (or there is none) nothing is recorded and the error wraps
	// ErrEpochChanged. A JTI may appear more than once in uses. When the
	// error is nil the uses are durable (committed).
	RecordUses(ctx context.Context, epoch, now time.Time, uses []Use) (counted []bool, err error)
	// Uses streams the use records that expire after now, in JTI order.
	Uses(ctx context.Context, now time.Time, fn func(UseRecord) error) error
	// PruneUses deletes the use records that expired before before and
	// returns how many.
	PruneUses(ctx context.Context, before time.Time) (int64, error)

	// PutRevocation stores r, replacing the revocation of the same JTI or
	// Sub. r must have exactly one of JTI and Sub, and a CreatedAt.
	PutRevocation(ctx context.Context, r Revocation) error
	// DeleteRevocation deletes the revocation of jti or sub (exactly one is
	// non-empty) and reports whether one in force at now was deleted.
	DeleteRevocation(ctx context.Context, jti, sub string, now time.Time) (bool, error)
	// Revocations streams the revocations in force at now (ExpiresAt zero
	// or after now): token revocations first, then subjects, each in byte
	// order.
	Revocations(ctx context.Context, now time.Time, fn func(Revocation) error) error
}

// Validate checks that u can be recorded.
func (u Use) Validate() error {
	switch {
	case u.JTI == "" || !clean(u.JTI):
		return errors.New("store: use without a jti, or not UTF-8")
	case u.MaxUses < 1:
		return errors.New("store: use with MaxUses < 1")
	case u.ExpiresAt.IsZero():
		return errors.New("store: use without ExpiresAt")
	}
	return nil
}

// Validate checks that r can be stored.
func (r Revocation) Validate() error {
	switch {
	case (r.JTI == "") == (r.Sub == ""):
		return errors.New("store: a revocation has exactly one of jti and sub")
	case !clean(r.JTI) || !clean(r.Sub) || !clean(r.Reason) || !clean(r.CreatedBy):
		return errors.New("store: revocation text is not UTF-8, or holds NUL")
	case r.CreatedAt.IsZero():
		return errors.New("store: revocation without CreatedAt")
	}
	return nil
}
