// Package statetest is the conformance suite every state backend passes:
// single use, grant counting, expiry and revocation, including concurrent
// use of one approval.
package statetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/state"
)

// Store is what a backend provides.
type Store interface {
	Consume(ctx context.Context, jti string, exp time.Time) (bool, error)
	CountUse(ctx context.Context, jti string, max int, exp time.Time) (bool, error)
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

// Run runs the suite. newStore returns a fresh, empty store whose notion of
// "now" follows clock where the backend can (backends with server-side
// expiry, like Redis, ignore it: the suite only moves the clock forward
// past entries that also expire in real time).
func Run(t *testing.T, newStore func(t *testing.T, clock *Clock) Store) {
	ctx := context.Background()
	t.Run("consume once", func(t *testing.T) {
		c := &Clock{}
		c.Set(time.Now())
		s := newStore(t, c)
		exp := c.Now().Add(time.Minute)
		for i, want := range []bool{true, false, false} {
			got, err := s.Consume(ctx, "jti-1", exp)
			if err != nil || got != want {
				t.Fatalf("Consume #%d = %v, %v; want %v", i+1, got, err, want)
			}
		}
		if got, _ := s.Consume(ctx, "jti-2", exp); !got {
			t.Fatalf("Consume(other jti) = false, want true")
		}
	})
	t.Run("concurrent consume allows exactly one", func(t *testing.T) {
		c := &Clock{}
		c.Set(time.Now())
		s := newStore(t, c)
		exp := c.Now().Add(time.Minute)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ok, err := s.Consume(ctx, "hot", exp); err == nil && ok {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("24 concurrent Consume of one jti: %d succeeded, want 1", wins.Load())
		}
	})
	t.Run("grant counts to max", func(t *testing.T) {
		c := &Clock{}
		c.Set(time.Now())
		s := newStore(t, c)
		exp := c.Now().Add(time.Minute)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ok, err := s.CountUse(ctx, "grant-1", 5, exp); err == nil && ok {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 5 {
			t.Fatalf("12 concurrent CountUse with max 5: %d succeeded, want 5", wins.Load())
		}
	})
	t.Run("revoke jti and sub", func(t *testing.T) {
		c := &Clock{}
		c.Set(time.Now())
		s := newStore(t, c)
		if err := s.Revoke(ctx, state.Revocation{JTI: "j1", Until: c.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if err := s.Revoke(ctx, state.Revocation{Sub: "agent-7"}); err != nil {
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
	})
	t.Run("invalid revocation", func(t *testing.T) {
		c := &Clock{}
		c.Set(time.Now())
		s := newStore(t, c)
		for _, r := range []state.Revocation{{}, {JTI: "a", Sub: "b"}} {
			if err := s.Revoke(ctx, r); err == nil {
				t.Errorf("Revoke(%+v) = nil, want an error", r)
			}
		}
	})
	t.Run("expiry", func(t *testing.T) {
		c := &Clock{}
		start := time.Now()
		c.Set(start)
		s := newStore(t, c)
		exp := start.Add(1500 * time.Millisecond)
		if ok, _ := s.Consume(ctx, "short", exp); !ok {
			t.Fatal("first Consume = false")
		}
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
		if ok, err := s.Consume(ctx, "short", c.Now().Add(time.Minute)); err != nil || !ok {
			t.Fatalf("Consume after expiry = %v, %v; want true (the entry expired with its token)", ok, err)
		}
	})
	t.Run("many distinct", func(t *testing.T) {
		c := &Clock{}
		c.Set(time.Now())
		s := newStore(t, c)
		exp := c.Now().Add(time.Minute)
		for i := range 2000 {
			if ok, err := s.Consume(ctx, fmt.Sprintf("j%d", i), exp); err != nil || !ok {
				t.Fatalf("Consume(j%d) = %v, %v", i, ok, err)
			}
		}
	})
}
