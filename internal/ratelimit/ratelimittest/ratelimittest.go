// Package ratelimittest is the conformance suite every rate limiter passes
// (ratelimit.Local in this process, ratelimit.Redis shared): the same
// limits, refills and atomicity, against the same clock.
package ratelimittest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/ratelimit"
)

// Limiter is what the suite exercises.
type Limiter interface {
	Allow(ctx context.Context, key string) ratelimit.Result
}

// Clock is the suite's clock: it moves only when a case advances it.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// NewLimiter returns a fresh limiter (no bucket taken from yet) with limits,
// timed by now.
type NewLimiter func(t *testing.T, limits ratelimit.Limits, now func() time.Time) Limiter

// Run runs the suite against the limiters newLimiter makes.
func Run(t *testing.T, newLimiter NewLimiter) {
	ctx := context.Background()
	setup := func(t *testing.T, l ratelimit.Limits) (Limiter, *Clock) {
		c := &Clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
		return newLimiter(t, l, c.Now), c
	}
	// close reports whether got is want within the rounding of a
	// microsecond clock.
	close := func(got, want time.Duration) bool { return got > want-time.Millisecond && got <= want }

	t.Run("per minute", func(t *testing.T) {
		l, _ := setup(t, ratelimit.Limits{PerMinute: 3})
		for i, want := range []bool{true, true, true, false, false} {
			r := l.Allow(ctx, "agent-a")
			if r.Allowed != want {
				t.Fatalf("Allow #%d = %+v, want allowed %v", i+1, r, want)
			}
			// 3 a minute refill one every 20 s.
			if !want && (r.Limit != "minute" || !close(r.RetryAfter, 20*time.Second)) {
				t.Fatalf("Allow #%d refused %+v, want the minute limit with a retry after 20s", i+1, r)
			}
		}
		if r := l.Allow(ctx, "agent-b"); !r.Allowed {
			t.Fatalf("Allow(another principal) = %+v, want allowed: buckets are per principal", r)
		}
	})
	t.Run("per hour", func(t *testing.T) {
		l, _ := setup(t, ratelimit.Limits{PerMinute: 10, PerHour: 2})
		for i, want := range []bool{true, true, false} {
			r := l.Allow(ctx, "agent-h")
			if r.Allowed != want || !want && (r.Limit != "hour" || !close(r.RetryAfter, 30*time.Minute)) {
				t.Fatalf("Allow #%d = %+v, want allowed %v (hour limit, retry after 30m)", i+1, r, want)
			}
		}
	})
	t.Run("no limits", func(t *testing.T) {
		l, _ := setup(t, ratelimit.Limits{})
		for i := range 100 {
			if r := l.Allow(ctx, "agent-n"); !r.Allowed {
				t.Fatalf("Allow #%d without limits = %+v", i+1, r)
			}
		}
	})
	t.Run("the empty principal has buckets too", func(t *testing.T) {
		l, _ := setup(t, ratelimit.Limits{PerMinute: 1, PerHour: 5})
		if r := l.Allow(ctx, ""); !r.Allowed {
			t.Fatalf("Allow(\"\") = %+v, want allowed", r)
		}
		if r := l.Allow(ctx, ""); r.Allowed {
			t.Fatalf("Allow(\"\") again = %+v, want refused", r)
		}
	})
	t.Run("refills", func(t *testing.T) {
		l, c := setup(t, ratelimit.Limits{PerMinute: 3})
		for range 3 {
			l.Allow(ctx, "agent-r")
		}
		if r := l.Allow(ctx, "agent-r"); r.Allowed {
			t.Fatalf("Allow(4th) = %+v, want refused", r)
		}
		c.Advance(20 * time.Second)
		if r := l.Allow(ctx, "agent-r"); !r.Allowed {
			t.Fatalf("Allow(20s later) = %+v, want allowed (one refilled)", r)
		}
		if r := l.Allow(ctx, "agent-r"); r.Allowed {
			t.Fatalf("Allow(again) = %+v, want refused", r)
		}
	})
	t.Run("concurrent calls allow exactly the limit", func(t *testing.T) {
		l, _ := setup(t, ratelimit.Limits{PerMinute: 25, PerHour: 1000})
		var mu sync.Mutex
		allowed := 0
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() {
				if l.Allow(ctx, "agent-c").Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if allowed != 25 {
			t.Fatalf("100 concurrent calls, limit 25 a minute: %d allowed", allowed)
		}
	})
	// Refused calls take nothing: many of them at once, past the limit, do
	// not put the bucket in debt (they once did, locking a principal out
	// for most of an hour).
	t.Run("refusals take nothing", func(t *testing.T) {
		l, c := setup(t, ratelimit.Limits{PerMinute: 60})
		for range 60 {
			l.Allow(ctx, "agent-d")
		}
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for range 50 {
					if l.Allow(ctx, "agent-d").Allowed {
						t.Error("a call was allowed from an empty bucket")
					}
				}
			})
		}
		wg.Wait()
		c.Advance(5 * time.Second) // 60 a minute: five more
		for i := range 5 {
			if r := l.Allow(ctx, "agent-d"); !r.Allowed {
				t.Fatalf("call %d after 5s of refill = %+v, want allowed", i+1, r)
			}
		}
		if r := l.Allow(ctx, "agent-d"); r.Allowed {
			t.Fatalf("6th call after 5s of refill = %+v, want refused", r)
		}
	})
	// A call the hour refuses takes no minute token (and the converse).
	t.Run("a call one limit refuses takes from neither", func(t *testing.T) {
		l, c := setup(t, ratelimit.Limits{PerMinute: 2, PerHour: 3})
		for range 3 {
			if r := l.Allow(ctx, "agent-b"); !r.Allowed {
				t.Fatalf("call within both limits = %+v", r)
			}
			c.Advance(time.Minute)
		}
		for range 10 {
			if r := l.Allow(ctx, "agent-b"); r.Allowed || r.Limit != "hour" {
				t.Fatalf("4th call in the hour = %+v, want refused by the hour limit", r)
			}
		}
		c.Advance(20 * time.Minute) // one hour token back; the minute bucket must be full
		for i, want := range []bool{true, false} {
			if r := l.Allow(ctx, "agent-b"); r.Allowed != want {
				t.Fatalf("call %d after the hour refilled one = %+v, want allowed %v", i+1, r, want)
			}
		}

		m, c := setup(t, ratelimit.Limits{PerMinute: 1, PerHour: 2})
		m.Allow(ctx, "agent-m")
		for range 10 { // refused by the minute: must not take hour tokens
			if r := m.Allow(ctx, "agent-m"); r.Allowed || r.Limit != "minute" {
				t.Fatalf("2nd call in the minute = %+v, want refused by the minute limit", r)
			}
		}
		c.Advance(time.Minute)
		if r := m.Allow(ctx, "agent-m"); !r.Allowed {
			t.Fatalf("call a minute later = %+v, want allowed: refused calls took hour tokens", r)
		}
	})
	t.Run("both refuse: the longer wait", func(t *testing.T) {
		l, _ := setup(t, ratelimit.Limits{PerMinute: 1, PerHour: 1})
		l.Allow(ctx, "agent-w")
		r := l.Allow(ctx, "agent-w")
		if r.Allowed || r.Limit != "hour" || !close(r.RetryAfter, time.Hour) {
			t.Fatalf("call refused by both = %+v, want the hour limit with a retry after 1h", r)
		}
	})
}
