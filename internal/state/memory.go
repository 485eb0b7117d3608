// Package state holds the sidecar's security state: single-use approval ids,
// grant use counters and revocations, and the errors the decision path acts
// on. Memory keeps it in the process; state/redisstate shares it across
// sidecars through Redis, and state/storestate keeps it in M1's store
// (SQLite or PostgreSQL) so that it survives a restart. All of them record
// a use through one method, Use, whose implementation also does the
// data-loss fencing of DESIGN §7 when its backend can lose data: the
// decision path never chooses whether a use is fenced.
package state

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrUnavailable is wrapped by every error of a shared backend that could
// not reach its store; callers deny with state_unavailable (503).
var ErrUnavailable = errors.New("shared state unavailable")

// ErrStateReset is wrapped by the error of a use that found the shared state
// reset (DESIGN §7 fencing); callers deny with state_reset (403).
var ErrStateReset = errors.New("shared state was reset; tokens issued before the new epoch are refused")

// ErrFull is returned when the in-process use store holds MaxEntries
// unexpired entries: it refuses new ones (the check fails closed) rather
// than forget a consumed approval.
var ErrFull = errors.New("state: use store full of unexpired entries")

// ErrNotStored is wrapped, beside ErrUnavailable, by the error of a
// revocation or lift that could not be written to the durable store:
// nothing was changed, in this process or elsewhere.
var ErrNotStored = errors.New("not stored; nothing changed")

// Use is one use of an approval or a grant (DESIGN §4, check 11) presented
// to a state store: it counts if fewer than MaxUses were counted for JTI
// before Exp.
type Use struct {
	// JTI is the token's jti.
	JTI string
	// IssuedAt is the token's iat. A store whose backend can lose data
	// refuses, atomically with the use, a token issued before its epoch
	// (an error wrapping ErrStateReset): the token may have been used
	// before the loss. Required.
	IssuedAt time.Time
	// Exp is how long the record is kept: the token's exp plus the clock
	// skew, after which it can no longer verify. Required.
	Exp time.Time
	// MaxUses is the use limit: 1 for a single-use approval, a grant's
	// max_uses for a grant.
	MaxUses int
}

// Validate checks that u can be recorded.
func (u Use) Validate() error {
	switch {
	case u.JTI == "":
		return errors.New("state: use without a jti")
	case u.IssuedAt.IsZero() || u.Exp.IsZero():
		return errors.New("state: use without IssuedAt or Exp")
	case u.MaxUses < 1:
		return fmt.Errorf("state: use of %q with MaxUses %d < 1", u.JTI, u.MaxUses)
	}
	return nil
}

// Revocation revokes one token (JTI) or every token of one subject (Sub).
// Exactly one of JTI and Sub is set. A zero Until never expires.
type Revocation struct {
	JTI   string    `json:"jti,omitempty"`
	Sub   string    `json:"sub,omitempty"`
	Until time.Time `json:"until,omitzero"`
	// By is who revoked (the admin caller), kept in the durable store's
	// revoked_tokens.created_by; it is not part of the API's JSON.
	By string `json:"-"`
	// Stored is when the durable store recorded the revocation
	// (revoked_tokens.created_at), set on those restored from it; the Redis
	// store weighs it against a later lift by another sidecar.
	Stored time.Time `json:"-"`
}

// Validate checks that exactly one of JTI and Sub is set.
func (r Revocation) Validate() error {
	if (r.JTI == "") == (r.Sub == "") {
		return errors.New("exactly one of jti and sub is required")
	}
	if strings.TrimSpace(r.JTI+r.Sub) != r.JTI+r.Sub {
		return errors.New("jti and sub must not have surrounding white space")
	}
	return nil
}

// MemoryOptions bound the in-process store.
type MemoryOptions struct {
	MaxEntries int              // most unexpired use entries held; default 1,000,000
	Now        func() time.Time // default time.Now
}

// Memory is the in-process state store. It is safe for concurrent use. It
// fences nothing (Epoch is zero): it loses its state only with the process,
// and a process that starts again with an empty Memory must not be trusted
// with single use (the sidecar uses state/storestate without Redis).
type Memory struct {
	now func() time.Time
	max int

	mu      sync.Mutex
	uses    map[string]use
	sweepAt int // sweep expired uses when len(uses) reaches this

	rmu  sync.RWMutex
	jtis map[string]time.Time
	subs map[string]time.Time
}

type use struct {
	n   int
	exp time.Time
}

// NewMemory returns an empty store.
func NewMemory(o MemoryOptions) *Memory {
	if o.MaxEntries <= 0 {
		o.MaxEntries = 1_000_000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Memory{
		now: o.Now, max: o.MaxEntries, sweepAt: 1024,
		uses: map[string]use{}, jtis: map[string]time.Time{}, subs: map[string]time.Time{},
	}
}

// Use counts one use of u.JTI if fewer than u.MaxUses were counted before
// it expired, and reports whether it did. It fails with ErrFull when the
// store holds MaxEntries unexpired entries and u.JTI is not one of them.
func (m *Memory) Use(_ context.Context, u Use) (bool, error) {
	if err := u.Validate(); err != nil {
		return false, err
	}
	return m.add(u.JTI, u.MaxUses, u.Exp)
}

// Epoch is zero: an in-process store has no epoch to fence.
func (m *Memory) Epoch() time.Time { return time.Time{} }

func (m *Memory) add(jti string, max int, exp time.Time) (bool, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.uses[jti]
	if ok && now.After(u.exp) {
		ok, u = false, use{}
	}
	if !ok {
		if len(m.uses) >= m.sweepAt || len(m.uses) >= m.max {
			m.sweep(now)
		}
		if len(m.uses) >= m.max {
			return false, ErrFull
		}
	}
	if u.n >= max {
		return false, nil
	}
	u.n++
	if exp.After(u.exp) {
		u.exp = exp
	}
	m.uses[jti] = u
	return true, nil
}

// sweep drops expired uses; it runs when the map doubles, so its cost is
// amortised over the inserts. m.mu is held.
func (m *Memory) sweep(now time.Time) {
	for k, u := range m.uses {
		if now.After(u.exp) {
			delete(m.uses, k)
		}
	}
	m.sweepAt = max(1024, 2*len(m.uses))
}

// Revoke stores r; it takes effect at once.
func (m *Memory) Revoke(_ context.Context, r Revocation) error {
	if err := r.Validate(); err != nil {
		return err
	}
	m.rmu.Lock()
	defer m.rmu.Unlock()
	if r.JTI != "" {
		m.jtis[r.JTI] = r.Until
	} else {
		m.subs[r.Sub] = r.Until
	}
	return nil
}

// Restore applies revocations read from a durable store, as Revoke does;
// invalid ones are skipped.
func (m *Memory) Restore(rs []Revocation) {
	for _, r := range rs {
		_ = m.Revoke(context.Background(), r)
	}
}

// LiftSub removes a subject's revocation; it reports whether one was in force.
func (m *Memory) LiftSub(_ context.Context, sub string) (bool, error) {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	until, ok := m.subs[sub]
	delete(m.subs, sub)
	return ok && (until.IsZero() || until.After(m.now())), nil
}

// Revoked reports whether the token jti or the subject sub is revoked now.
func (m *Memory) Revoked(_ context.Context, jti, sub string) (bool, error) {
	now := m.now()
	m.rmu.RLock()
	defer m.rmu.RUnlock()
	if until, ok := m.jtis[jti]; ok && jti != "" && (until.IsZero() || now.Before(until)) {
		return true, nil
	}
	if until, ok := m.subs[sub]; ok && sub != "" && (until.IsZero() || now.Before(until)) {
		return true, nil
	}
	return false, nil
}

// List returns the revocations in force, jtis first, each group sorted.
func (m *Memory) List(_ context.Context) ([]Revocation, error) {
	now := m.now()
	m.rmu.Lock()
	defer m.rmu.Unlock()
	var out []Revocation
	for jti, until := range m.jtis {
		if !until.IsZero() && !now.Before(until) {
			delete(m.jtis, jti)
			continue
		}
		out = append(out, Revocation{JTI: jti, Until: until})
	}
	for sub, until := range m.subs {
		if !until.IsZero() && !now.Before(until) {
			delete(m.subs, sub)
			continue
		}
		out = append(out, Revocation{Sub: sub, Until: until})
	}
	slices.SortFunc(out, func(a, b Revocation) int {
		if c := strings.Compare(a.Sub, b.Sub); c != 0 { // jtis (empty sub) first
			return c
		}
		return strings.Compare(a.JTI, b.JTI)
	})
	return out, nil
}

// String describes the store for logs.
func (m *Memory) String() string { return fmt.Sprintf("memory(max %d)", m.max) }
