// Package ratelimit bounds how many tool calls each principal makes per
// minute and per hour (RATE_LIMIT_REQUESTS_PER_MINUTE, _PER_HOUR).
//
// A limit of N per minute is a token bucket that holds N and refills at N a
// minute (GCRA): N calls at once, then one every 60/N seconds. Local keeps
// the buckets in this process (golang.org/x/time/rate, bounded in number);
// Redis shares them between sidecars (one Lua script checks both buckets and
// takes from both only when both allow, as Local does under the principal's
// lock) and falls back to Local while Redis is unreachable:
// a rate limit is a brake, not an approval, so an outage loosens it to one
// process's count rather than stopping every call.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/maypok86/otter/v2"
	"golang.org/x/time/rate"
)

// Limits are the calls allowed per principal; 0 means no limit.
type Limits struct {
	PerMinute int
	PerHour   int
}

// Enabled reports whether any limit is set.
func (l Limits) Enabled() bool { return l.PerMinute > 0 || l.PerHour > 0 }

func (l Limits) validate() error {
	if l.PerMinute < 0 || l.PerHour < 0 {
		return errors.New("ratelimit: limits must not be negative")
	}
	return nil
}

// Result is the outcome of one Allow.
type Result struct {
	Allowed bool
	// RetryAfter is how long until the next call would be allowed (when
	// not Allowed).
	RetryAfter time.Duration
	// Limit names the limit that refused: "minute" or "hour" (the one
	// with the longer wait when both refuse).
	Limit string
}

// maxKeys bounds the principals Local tracks; the least recently seen
// are forgotten first (a forgotten principal starts with a full bucket).
const maxKeys = 100_000

// Local counts in this process. It is safe for concurrent use.
type Local struct {
	limits  Limits
	now     func() time.Time
	buckets *otter.Cache[string, *pair]
}

// pair is a principal's buckets; mu makes taking from both one step.
type pair struct {
	mu           sync.Mutex
	minute, hour *rate.Limiter
}

// NewLocal returns a Local for limits; now is the clock (time.Now when nil).
func NewLocal(limits Limits, now func() time.Time) (*Local, error) {
	if err := limits.validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	c, err := otter.New(&otter.Options[string, *pair]{
		MaximumSize:      maxKeys,
		ExpiryCalculator: otter.ExpiryAccessing[string, *pair](time.Hour), // a full hour idle refills every bucket
	})
	if err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	return &Local{limits: limits, now: now, buckets: c}, nil
}

// Allow counts one call of key.
func (l *Local) Allow(_ context.Context, key string) Result {
	p, _ := l.buckets.Compute(key, func(old *pair, found bool) (*pair, otter.ComputeOp) {
		if found {
			return old, otter.CancelOp
		}
		return &pair{minute: bucket(l.limits.PerMinute, time.Minute), hour: bucket(l.limits.PerHour, time.Hour)}, otter.WriteOp
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	now := l.now()
	// A refused call takes nothing, from either bucket: with both checked
	// before either is taken from, refusals never put a bucket in debt.
	buckets := [...]struct {
		lim  *rate.Limiter
		name string
	}{{p.minute, "minute"}, {p.hour, "hour"}}
	var refused Result
	for _, b := range buckets {
		if b.lim == nil {
			continue
		}
		if tokens := b.lim.TokensAt(now); tokens < 1 {
			// When both refuse, the longer wait: a retry after it is
			// allowed by both.
			wait := max(time.Duration((1-tokens)/float64(b.lim.Limit())*float64(time.Second)), time.Nanosecond)
			if wait > refused.RetryAfter {
				refused = Result{RetryAfter: wait, Limit: b.name}
			}
		}
	}
	if refused.RetryAfter > 0 {
		return refused
	}
	for _, b := range buckets {
		if b.lim != nil {
			b.lim.AllowN(now, 1)
		}
	}
	return Result{Allowed: true}
}

// bucket is a limiter of n per period with a burst of n, or nil for no limit.
func bucket(n int, period time.Duration) *rate.Limiter {
	if n <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Every(period/time.Duration(n)), n)
}
