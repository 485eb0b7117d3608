package ratelimit_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/m1-agent/m1/internal/ratelimit"
	"github.com/m1-agent/m1/internal/testenv"
)

type limiter interface {
	Allow(ctx context.Context, key string) ratelimit.Result
}

// run is the suite both limiters pass.
func run(t *testing.T, newLimiter func(t *testing.T, l ratelimit.Limits) limiter) {
	ctx := context.Background()
	t.Run("per minute", func(t *testing.T) {
		l := newLimiter(t, ratelimit.Limits{PerMinute: 3})
		for i, want := range []bool{true, true, true, false, false} {
			r := l.Allow(ctx, "agent-a")
			if r.Allowed != want {
				t.Fatalf("Allow #%d = %+v, want allowed %v", i+1, r, want)
			}
			// 3 a minute refill one every 20 s.
			if !want && (r.Limit != "minute" || r.RetryAfter <= 0 || r.RetryAfter > 20*time.Second) {
				t.Fatalf("Allow #%d refused %+v, want the minute limit with a retry within 20s", i+1, r)
			}
		}
		if r := l.Allow(ctx, "agent-b"); !r.Allowed {
			t.Fatalf("Allow(another principal) = %+v, want allowed: buckets are per principal", r)
		}
	})
	t.Run("per hour", func(t *testing.T) {
		l := newLimiter(t, ratelimit.Limits{PerMinute: 10, PerHour: 2})
		for i, want := range []bool{true, true, false} {
			if r := l.Allow(ctx, "agent-h"); r.Allowed != want || !want && r.Limit != "hour" {
				t.Fatalf("Allow #%d = %+v, want allowed %v (hour limit)", i+1, r, want)
			}
		}
	})
	t.Run("no limits", func(t *testing.T) {
		l := newLimiter(t, ratelimit.Limits{})
		for i := range 100 {
			if r := l.Allow(ctx, "agent-n"); !r.Allowed {
				t.Fatalf("Allow #%d without limits = %+v", i+1, r)
			}
		}
	})
	t.Run("concurrent calls allow exactly the limit", func(t *testing.T) {
		l := newLimiter(t, ratelimit.Limits{PerMinute: 25})
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
}

func TestLocal(t *testing.T) {
	run(t, func(t *testing.T, l ratelimit.Limits) limiter {
		lim, err := ratelimit.NewLocal(l, nil)
		if err != nil {
			t.Fatal(err)
		}
		return lim
	})
}

func TestLocalRefills(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lim, err := ratelimit.NewLocal(ratelimit.Limits{PerMinute: 3}, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		lim.Allow(ctx, "a")
	}
	if r := lim.Allow(ctx, "a"); r.Allowed || r.RetryAfter != 20*time.Second {
		t.Fatalf("Allow(4th) = %+v, want refused, retry after 20s", r)
	}
	now = now.Add(20 * time.Second)
	if r := lim.Allow(ctx, "a"); !r.Allowed {
		t.Fatalf("Allow(20s later) = %+v, want allowed (one refilled)", r)
	}
	if r := lim.Allow(ctx, "a"); r.Allowed {
		t.Fatalf("Allow(again) = %+v, want refused", r)
	}
}

func TestNegativeLimits(t *testing.T) {
	if _, err := ratelimit.NewLocal(ratelimit.Limits{PerMinute: -1}, nil); err == nil {
		t.Fatal("NewLocal(-1 a minute) = nil error")
	}
}

func newRedis(t *testing.T, srv *testenv.Redis, l ratelimit.Limits) (*ratelimit.Redis, redis.UniversalClient) {
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { client.Close() })
	local, err := ratelimit.NewLocal(l, nil)
	if err != nil {
		t.Fatal(err)
	}
	lim, err := ratelimit.NewRedis(client, l, local, 200*time.Millisecond, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return lim, client
}

func TestRedis(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	run(t, func(t *testing.T, l ratelimit.Limits) limiter {
		lim, client := newRedis(t, srv, l)
		if err := client.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		return lim
	})
}

// Two sidecars on one Redis share the buckets; with Redis down, each
// counts alone.
func TestRedisSharedAndFallback(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	l := ratelimit.Limits{PerMinute: 2}
	a, client := newRedis(t, srv, l)
	b, _ := newRedis(t, srv, l)
	if !a.Allow(ctx, "p").Allowed || !b.Allow(ctx, "p").Allowed {
		t.Fatal("first two calls refused")
	}
	if r := a.Allow(ctx, "p"); r.Allowed {
		t.Fatalf("third call across two sidecars = %+v, want refused: the bucket is shared", r)
	}
	if n, err := client.Exists(ctx, "rate:"+ratelimit.KeyPrefix+"minute:p").Result(); err != nil || n != 1 {
		t.Fatalf("key rate:%sminute:p exists = %d, %v; want 1", ratelimit.KeyPrefix, n, err)
	}
	srv.Stop(t)
	for i, want := range []bool{true, true, false} {
		if r := b.Allow(ctx, "p"); r.Allowed != want {
			t.Fatalf("Redis down, call #%d = %+v, want allowed %v (counted in this process)", i+1, r, want)
		}
	}
}

// Refused calls take nothing: many of them at once, past the limit, do not
// put the bucket in debt (they once did, locking a principal out for most
// of an hour), and a call the hour refuses takes no minute token.
func TestLocalRefusalsTakeNothing(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	lim, err := ratelimit.NewLocal(ratelimit.Limits{PerMinute: 60}, clock)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 60 {
		lim.Allow(ctx, "a")
	}
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for range 500 {
				if lim.Allow(ctx, "a").Allowed {
					t.Error("a call was allowed from an empty bucket")
				}
			}
		})
	}
	wg.Wait()
	advance(5 * time.Second) // 60 a minute: five more
	for i := range 5 {
		if r := lim.Allow(ctx, "a"); !r.Allowed {
			t.Fatalf("call %d after 5s of refill = %+v, want allowed", i+1, r)
		}
	}

	both, _ := ratelimit.NewLocal(ratelimit.Limits{PerMinute: 2, PerHour: 3}, clock)
	for range 3 {
		both.Allow(ctx, "b")
		advance(time.Minute)
	}
	if r := both.Allow(ctx, "b"); r.Allowed || r.Limit != "hour" {
		t.Fatalf("4th call in the hour = %+v, want refused by the hour limit", r)
	}
	advance(20 * time.Minute) // one hour token back; the minute bucket must be full
	for i, want := range []bool{true, false} {
		if r := both.Allow(ctx, "b"); r.Allowed != want {
			t.Fatalf("call %d after the hour refilled one = %+v, want allowed %v", i+1, r, want)
		}
	}
}

// While the prober says Redis is down, calls count locally at once rather
// than each waiting for Redis's timeout.
func TestRedisSkippedWhileDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	client := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), MaxRetries: -1})
	t.Cleanup(func() { client.Close() })
	l := ratelimit.Limits{PerMinute: 2}
	local, _ := ratelimit.NewLocal(l, nil)
	var up atomic.Bool
	lim, err := ratelimit.NewRedis(client, l, local, time.Minute, up.Load, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan ratelimit.Result, 3)
	go func() {
		for range 3 {
			done <- lim.Allow(context.Background(), "p")
		}
	}()
	for i, want := range []bool{true, true, false} {
		select {
		case r := <-done:
			if r.Allowed != want {
				t.Fatalf("call %d with Redis down = %+v, want allowed %v (counted locally)", i+1, r, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d waited on a Redis known to be down", i+1)
		}
	}
}
