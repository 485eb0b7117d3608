// Package statetest is the conformance suite every state backend passes:
// single use, grant counting, expiry and revocation, including concurrent
// use of one approval; for backends that keep state beyond the process, a
// restart that must not allow a replay; and for backends that can lose
// their data, the fencing of DESIGN §7: a token issued before the epoch is
// refused, and a loss never lets a used approval run again nor forgets a
// revocation.
package statetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/state"
)

// Store is what a backend provides: the decision path's use store,
// revocation checker and epoch, and the revocation API's store.
type Store interface {
	Use(ctx context.Context, u state.Use) (bool, error)
	Epoch() time.Time
	Revoke(ctx context.Context, r state.Revocation) error
	LiftSub(ctx context.Context, sub string) (bool, error)
	Revoked(ctx context.Context, jti, sub string) (bool, error)
	List(ctx context.Context) ([]state.Revocation, error)
}

// Clock is a settable clock for the backend under test.
type Clock struct{ t atomic.Int64 }

// Now returns the clock's time.
func (c *Clock) Now() time.Time { return time.Unix(0, c.t.Load()) }

// Set moves the clock.
func (c *Clock) Set(t time.Time) { c.t.Store(t.UnixNano()) }

// Backend is the implementation under test.
type Backend struct {
	// New returns a fresh, empty store whose notion of "now" follows clock
	// where the backend can (backends with server-side expiry, like Redis,
	// ignore it: the suite only moves the clock forward past entries that
	// also expire in real time). Required.
	New func(t *testing.T, clock *Clock) Store
	// Reopen returns a new store on s's backend, as a process restarted on
	// the same Redis or the same database gets (s may be closed). Nil for a
	// store that keeps nothing beyond its process.
	Reopen func(t *testing.T, s Store) Store
	// Lose makes s's backend lose its data while s runs, as a Redis
	// restarted without persistence or a store whose state was emptied
	// does. Nil for a backend that cannot lose data while its process runs.
	Lose func(t *testing.T, s Store)
}

// Run runs the suite.
func Run(t *testing.T, b Backend) {
	if b.New == nil {
		t.Fatal("statetest.Run: Backend.New is required")
	}
	t.Run("consume once", func(t *testing.T) { testConsume(t, b) })
	t.Run("concurrent consume allows exactly one", func(t *testing.T) { testConcurrentConsume(t, b) })
	t.Run("grant counts to max", func(t *testing.T) { testGrant(t, b) })
	t.Run("invalid use", func(t *testing.T) { testInvalidUse(t, b) })
	t.Run("revoke jti and sub", func(t *testing.T) { testRevoke(t, b) })
	t.Run("invalid revocation", func(t *testing.T) { testInvalidRevocation(t, b) })
	t.Run("expiry", func(t *testing.T) { testExpiry(t, b) })
	t.Run("many distinct", func(t *testing.T) { testMany(t, b) })
	t.Run("tokens issued before the epoch are refused", func(t *testing.T) { testFence(t, b) })
	if b.Reopen != nil {
		t.Run("a restart allows no replay", func(t *testing.T) { testReopen(t, b) })
	}
	if b.Lose != nil {
		t.Run("data loss allows no replay and keeps revocations", func(t *testing.T) { testLose(t, b) })
	}
}

// newStore returns a store from b with its clock at the present.
func newStore(t *testing.T, b Backend) (Store, *Clock) {
	t.Helper()
	c := &Clock{}
	c.Set(time.Now())
	return b.New(t, c), c
}

// issued is the iat of a token minted now that s accepts: now, or the
// store's epoch when that is later (a new epoch lies ahead of the clock by
// the clock-skew margin).
func issued(s Store, now time.Time) time.Time {
	if e := s.Epoch(); e.After(now) {
		return e
	}
	return now
}

// approval and grant are uses of a token issued now for s.
func approval(s Store, now time.Time, jti string) state.Use {
	return state.Use{JTI: jti, IssuedAt: issued(s, now), Exp: now.Add(time.Minute), MaxUses: 1}
}

func grant(s Store, now time.Time, jti string, max int) state.Use {
	return state.Use{JTI: jti, IssuedAt: issued(s, now), Exp: now.Add(time.Minute), MaxUses: max}
}

func use(t *testing.T, s Store, u state.Use, want bool) {
	t.Helper()
	if got, err := s.Use(context.Background(), u); err != nil || got != want {
		t.Fatalf("Use(%s, max %d) = %v, %v; want %v", u.JTI, u.MaxUses, got, err, want)
	}
}

func testConsume(t *testing.T, b Backend) {
	s, c := newStore(t, b)
	u := approval(s, c.Now(), "jti-1")
	for i, want := range []bool{true, false, false} {
		if got, err := s.Use(context.Background(), u); err != nil || got != want {
			t.Fatalf("Use #%d = %v, %v; want %v", i+1, got, err, want)
		}
	}
	use(t, s, approval(s, c.Now(), "jti-2"), true)
}

func testConcurrentConsume(t *testing.T, b Backend) {
	s, c := newStore(t, b)
	u := approval(s, c.Now(), "hot")
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 24 {
		wg.Go(func() {
			if ok, err := s.Use(context.Background(), u); err == nil && ok {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("24 concurrent uses of one approval: %d succeeded, want 1", wins.Load())
	}
}

func testGrant(t *testing.T, b Backend) {
	s, c := newStore(t, b)
	u := grant(s, c.Now(), "grant-1", 5)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			if ok, err := s.Use(context.Background(), u); err == nil && ok {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 5 {
		t.Fatalf("12 concurrent uses of a grant with max 5: %d succeeded, want 5", wins.Load())
	}
}

func testInvalidUse(t *testing.T, b Backend) {
	s, c := newStore(t, b)
	good := approval(s, c.Now(), "valid")
	for _, tc := range []struct {
		name string
		mod  func(*state.Use)
	}{
		{"no jti", func(u *state.Use) { u.JTI = "" }},
		{"no iat", func(u *state.Use) { u.IssuedAt = time.Time{} }},
		{"no exp", func(u *state.Use) { u.Exp = time.Time{} }},
		{"max 0", func(u *state.Use) { u.MaxUses = 0 }},
	} {
		u := good
		tc.mod(&u)
		if ok, err := s.Use(context.Background(), u); ok || err == nil {
			t.Errorf("Use(%s) = %v, %v; want false and an error", tc.name, ok, err)
		}
	}
	use(t, s, good, true) // nothing was recorded for it
}

func testRevoke(t *testing.T, b Backend) {
	ctx := context.Background()
	s, c := newStore(t, b)
	if err := s.Revoke(ctx, state.Revocation{JTI: "j1", Until: c.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, state.Revocation{Sub: "agent-7", By: "admin:test"}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		jti, sub string
		want     bool
	}{{"j1", "x", true}, {"j2", "agent-7", true}, {"j2", "agent-8", false}, {"", "", false}} {
		if got, err := s.Revoked(ctx, tt.jti, tt.sub); err != nil || got != tt.want {
			t.Errorf("Revoked(%q, %q) = %v, %v; want %v", tt.jti, tt.sub, got, err, tt.want)
		}
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 2 || list[0].JTI != "j1" || list[1].Sub != "agent-7" {
		t.Errorf("List = %+v, %v; want j1 then agent-7", list, err)
	}
	if lifted, err := s.LiftSub(ctx, "agent-7"); err != nil || !lifted {
		t.Errorf("LiftSub(agent-7) = %v, %v; want true", lifted, err)
	}
	if got, _ := s.Revoked(ctx, "j2", "agent-7"); got {
		t.Errorf("Revoked(agent-7) after LiftSub = true, want false")
	}
	if lifted, _ := s.LiftSub(ctx, "agent-7"); lifted {
		t.Errorf("second LiftSub(agent-7) = true, want false")
	}
}

func testInvalidRevocation(t *testing.T, b Backend) {
	s, _ := newStore(t, b)
	for _, r := range []state.Revocation{{}, {JTI: "a", Sub: "b"}} {
		if err := s.Revoke(context.Background(), r); err == nil {
			t.Errorf("Revoke(%+v) = nil, want an error", r)
		}
	}
}

func testExpiry(t *testing.T, b Backend) {
	ctx := context.Background()
	s, c := newStore(t, b)
	start := c.Now()
	exp := start.Add(1500 * time.Millisecond)
	u := state.Use{JTI: "short", IssuedAt: issued(s, start), Exp: exp, MaxUses: 1}
	use(t, s, u, true)
	if err := s.Revoke(ctx, state.Revocation{JTI: "rj", Until: exp}); err != nil {
		t.Fatal(err)
	}
	// Past exp in both the injected clock and real time.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(exp.Add(100 * time.Millisecond)) {
		time.Sleep(50 * time.Millisecond)
	}
	c.Set(exp.Add(time.Second))
	for {
		r, _ := s.Revoked(ctx, "rj", "")
		if !r {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revocation still in force after its until")
		}
		time.Sleep(20 * time.Millisecond)
	}
	u.Exp = c.Now().Add(time.Minute)
	if ok, err := s.Use(ctx, u); err != nil || !ok {
		t.Fatalf("Use after expiry = %v, %v; want true (the entry expired with its token)", ok, err)
	}
}

func testMany(t *testing.T, b Backend) {
	s, c := newStore(t, b)
	for i := range 2000 {
		use(t, s, approval(s, c.Now(), fmt.Sprintf("j%d", i)), true)
	}
}

func testFence(t *testing.T, b Backend) {
	s, c := newStore(t, b)
	epoch := s.Epoch()
	if epoch.IsZero() {
		// No epoch: the store fences nothing, whatever the iat.
		use(t, s, state.Use{JTI: "old", IssuedAt: c.Now().Add(-time.Hour), Exp: c.Now().Add(time.Minute), MaxUses: 1}, true)
		return
	}
	old := state.Use{JTI: "old", IssuedAt: epoch.Add(-time.Second), Exp: c.Now().Add(time.Minute), MaxUses: 1}
	if ok, err := s.Use(context.Background(), old); ok || !errors.Is(err, state.ErrStateReset) {
		t.Fatalf("Use(issued a second before the epoch) = %v, %v; want false, ErrStateReset", ok, err)
	}
	old.IssuedAt = epoch
	use(t, s, old, true) // the refused use recorded nothing
}

func testReopen(t *testing.T, b Backend) {
	ctx := context.Background()
	s, c := newStore(t, b)
	a, g := approval(s, c.Now(), "approval"), grant(s, c.Now(), "grant", 3)
	use(t, s, a, true)
	use(t, s, g, true)
	use(t, s, g, true)
	if err := s.Revoke(ctx, state.Revocation{Sub: "rogue", By: "admin:test"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, state.Revocation{JTI: "stolen", Until: c.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	r := b.Reopen(t, s)
	if !r.Epoch().Equal(s.Epoch()) {
		t.Errorf("Epoch() after the restart = %v, want the stored %v", r.Epoch(), s.Epoch())
	}
	use(t, r, a, false)
	use(t, r, g, true)
	use(t, r, g, false)
	for _, tc := range []struct{ jti, sub string }{{"", "rogue"}, {"stolen", ""}} {
		if ok, err := r.Revoked(ctx, tc.jti, tc.sub); !ok || err != nil {
			t.Errorf("Revoked(%q, %q) after the restart = %v, %v; want true", tc.jti, tc.sub, ok, err)
		}
	}
}

func testLose(t *testing.T, b Backend) {
	ctx := context.Background()
	s, c := newStore(t, b)
	a := approval(s, c.Now(), "approval")
	unused := approval(s, c.Now(), "unused") // issued before the loss, never used
	use(t, s, a, true)
	if err := s.Revoke(ctx, state.Revocation{Sub: "rogue", By: "admin:test"}); err != nil {
		t.Fatal(err)
	}
	before := s.Epoch()
	b.Lose(t, s)
	deadline := time.Now().Add(10 * time.Second)
	// present retries while the backend is unreachable (one that restarts
	// may be, for a moment).
	present := func(u state.Use) (bool, error) {
		for {
			ok, err := s.Use(ctx, u)
			if ok || !errors.Is(err, state.ErrUnavailable) || errors.Is(err, state.ErrStateReset) || time.Now().After(deadline) {
				return ok, err
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The used approval never runs again (the store may know it used, or
	// find the loss); a token issued before the loss is refused as issued
	// before the new epoch.
	if ok, err := present(a); ok || (err != nil && !errors.Is(err, state.ErrStateReset)) {
		t.Fatalf("Use(approval used before the loss) = %v, %v; want false (nil or ErrStateReset)", ok, err)
	}
	if ok, err := present(unused); ok || !errors.Is(err, state.ErrStateReset) {
		t.Fatalf("Use(token issued before the loss) = %v, %v; want false, ErrStateReset", ok, err)
	}
	if !s.Epoch().After(before) || !a.IssuedAt.Before(s.Epoch()) {
		t.Fatalf("Epoch() after the loss = %v (was %v); want a new one after the tokens' iat %v", s.Epoch(), before, a.IssuedAt)
	}
	if ok, err := s.Use(ctx, a); ok || !errors.Is(err, state.ErrStateReset) {
		t.Fatalf("Use(approval) again after the loss = %v, %v; want false, ErrStateReset", ok, err)
	}
	fresh := approval(s, c.Now(), "fresh") // issued at the new epoch
	use(t, s, fresh, true)
	use(t, s, fresh, false)
	if ok, err := s.Revoked(ctx, "", "rogue"); !ok || err != nil {
		t.Fatalf("Revoked(rogue) after the loss = %v, %v; want true", ok, err)
	}
	if b.Reopen == nil {
		return
	}
	// The revocation was written back: a process started after the loss
	// knows it.
	for {
		r := b.Reopen(t, s)
		ok, err := r.Revoked(ctx, "", "rogue")
		if ok && err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Revoked(rogue) in a process started after the loss = %v, %v; want true (written back)", ok, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
