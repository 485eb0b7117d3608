// Package state holds the sidecar's security state: single-use approval ids,
// grant use counters and revocations. Memory keeps it in the process; the
// Redis backend (internal/state/redis) shares it across sidecars behind the
// same methods.
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

// Revocation revokes one token (JTI) or every token of one subject (Sub).
// Exactly one of JTI and Sub is set. A zero Until never expires.
type Revocation struct {
	JTI   string    `json:"jti,omitempty"`
	Sub   string    `json:"sub,omitempty"`
	Until time.Time `json:"until,omitzero"`
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

// Memory is the in-process state store. It is safe for concurrent use.
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

// Consume records the single use of jti until exp. It reports false when
// jti was already consumed and has not expired.
func (m *Memory) Consume(_ context.Context, jti string, exp time.Time) (bool, error) {
	ok, err := m.add(jti, 1, exp)
	return ok, err
}

// CountUse counts one use of the grant jti, if fewer than max were counted
// before exp; it reports false when the grant is exhausted.
func (m *Memory) CountUse(_ context.Context, jti string, max int, exp time.Time) (bool, error) {
	return m.add(jti, max, exp)
}

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
