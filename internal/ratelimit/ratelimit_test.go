package ratelimit_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/m1-agent/m1/internal/ratelimit"
	"github.com/m1-agent/m1/internal/ratelimit/ratelimittest"
	"github.com/m1-agent/m1/internal/testenv"
)

func TestLocal(t *testing.T) {
	ratelimittest.Run(t, func(t *testing.T, l ratelimit.Limits, now func() time.Time) ratelimittest.Limiter {
		lim, err := ratelimit.NewLocal(l, now)
		if err != nil {
			t.Fatal(err)
		}
		return lim
	})
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
	// A timeout far above a script's run: a call that times out counts
	// locally (from a full bucket), which the conformance cases would take
	// for a shared count gone wrong; 800 scripts at once under the race
	// detector on two busy cores took over 200 ms.
	lim, err := ratelimit.NewRedis(ratelimit.RedisOptions{Client: client, Limits: l, Fallback: local, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return lim, client
}

func TestRedis(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ratelimittest.Run(t, func(t *testing.T, l ratelimit.Limits, now func() time.Time) ratelimittest.Limiter {
		lim, client := newRedis(t, srv, l)
		if err := client.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		lim.SetClock(now)
		return lim
	})
}

// On a Redis Cluster a principal's two buckets share a node (a hash tag),
// so that one script takes from both.
func TestRedisCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, 3)
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), MaxRetries: 2})
	t.Cleanup(func() { client.Close() })
	l := ratelimit.Limits{PerMinute: 2, PerHour: 10}
	local, _ := ratelimit.NewLocal(l, nil)
	lim, err := ratelimit.NewRedis(ratelimit.RedisOptions{Client: client, Limits: l, Fallback: local, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, p := range []string{"agent-1", "", "a}b", "{x}"} {
		for i, want := range []bool{true, true, false} {
			if r := lim.Allow(ctx, p); r.Allowed != want {
				t.Fatalf("principal %q call %d = %+v, want allowed %v", p, i+1, r, want)
			}
		}
		if n, err := client.Exists(ctx, "m1:rl:{p:"+p+"}:minute", "m1:rl:{p:"+p+"}:hour").Result(); err != nil || n != 2 {
			t.Fatalf("principal %q: %d bucket keys in the cluster, %v; want 2 (not counted locally)", p, n, err)
		}
	}
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
	if n, err := client.Exists(ctx, ratelimit.KeyPrefix+"{p:p}:minute").Result(); err != nil || n != 1 {
		t.Fatalf("key %s{p:p}:minute exists = %d, %v; want 1", ratelimit.KeyPrefix, n, err)
	}
	srv.Stop(t)
	for i, want := range []bool{true, true, false} {
		if r := b.Allow(ctx, "p"); r.Allowed != want {
			t.Fatalf("Redis down, call #%d = %+v, want allowed %v (counted in this process)", i+1, r, want)
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
	lim, err := ratelimit.NewRedis(ratelimit.RedisOptions{Client: client, Limits: l, Fallback: local, Timeout: time.Minute, Up: up.Load})
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

func TestNewRedisNamesTheBadField(t *testing.T) {
	l := ratelimit.Limits{PerMinute: 10}
	local, err := ratelimit.NewLocal(l, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { client.Close() })
	for _, tt := range []struct {
		name string
		o    ratelimit.RedisOptions
		want string
	}{
		{"no client", ratelimit.RedisOptions{Limits: l, Fallback: local, Timeout: time.Second}, "Client"},
		{"no fallback", ratelimit.RedisOptions{Client: client, Limits: l, Timeout: time.Second}, "Fallback"},
		{"no timeout", ratelimit.RedisOptions{Client: client, Limits: l, Fallback: local}, "Timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ratelimit.NewRedis(tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewRedis(%s) = %v, want an error naming %s", tt.name, err, tt.want)
			}
		})
	}
}
