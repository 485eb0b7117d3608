package rediscache

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/cache/cachetest"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/testenv"
)

var _ cache.L2 = (*Cache)(nil)

// testClient returns a client of the kind redisconn builds (bounded by
// the context), closed with the test.
func testClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr: addr, ContextTimeoutEnabled: true, DialTimeout: 100 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond, DialerRetries: 1,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

var prefixes atomic.Int64

// newStarted returns a started cache with a prefix of its own.
func newStarted(t testing.TB, client redis.UniversalClient, o Options) *Cache {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("m1:test:%d:", prefixes.Add(1))
	}
	if o.Logger == nil {
		o.Logger = zaptest.NewLogger(t)
	}
	c := New(client, o)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c.Start(ctx)
	return c
}

func TestConformance(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	client := testClient(t, srv.Addr)
	cachetest.Run(t, func(t *testing.T) cachetest.Cache { return newStarted(t, client, Options{}) })
}

func TestConformanceCluster(t *testing.T) {
	cl := testenv.StartRedisCluster(t, 3)
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { client.Close() })
	cachetest.Run(t, func(t *testing.T) cachetest.Cache { return newStarted(t, client, Options{}) })
}

// TestSharedAcrossCaches: a decision written by one cache (sidecar) is
// read back by another, field for field.
func TestSharedAcrossCaches(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	a := newStarted(t, testClient(t, srv.Addr), Options{Prefix: "m1:dc:"})
	b := newStarted(t, testClient(t, srv.Addr), Options{Prefix: "m1:dc:"})
	for name, d := range cachetest.Decisions() {
		a.Set(cachetest.Key(name), d)
	}
	for name, want := range cachetest.Decisions() {
		got, tier := cachetest.Eventually(t, b, cachetest.Key(name))
		if tier != cache.TierL2 {
			t.Errorf("%s: tier = %q, want l2", name, tier)
		}
		if !equal(got, want) {
			t.Errorf("%s: B read %#v\nwant %#v", name, got, want)
		}
	}
}

// TestKeysAndTTL checks the key layout, the namespace and the expiry.
func TestKeysAndTTL(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	client := testClient(t, srv.Addr)
	c := newStarted(t, client, Options{Prefix: "m1:dc:", TTL: time.Minute})
	ctx := context.Background()
	k := cachetest.Key("k")
	d := &policy.Decision{Allowed: true}

	c.Set(k, d)
	cachetest.Eventually(t, c, k)
	plain := fmt.Sprintf("m1:dc:%x", k[:])
	if ttl, err := client.PTTL(ctx, plain).Result(); err != nil || ttl <= 0 || ttl > time.Minute {
		t.Errorf("PTTL %s = %v, %v; want in (0, 1m]", plain, ttl, err)
	}

	c.SetRevision("bundle-rev-1")
	ns := Namespace("bundle-rev-1")
	if len(ns) != 8 {
		t.Fatalf("Namespace = %q, want 8 hex digits", ns)
	}
	if _, _, ok := c.Get(ctx, k); ok {
		t.Error("Get under a new revision namespace found the entry of no namespace")
	}
	c.Set(k, d)
	cachetest.Eventually(t, c, k)
	keys, err := client.Keys(ctx, "m1:dc:"+ns+":*").Result()
	if want := fmt.Sprintf("m1:dc:%s:%x", ns, k[:]); err != nil || len(keys) != 1 || keys[0] != want {
		t.Errorf("keys under the namespace = %v, %v; want [%s]", keys, err, want)
	}
	c.SetRevision("")
	if _, _, ok := c.Get(ctx, k); !ok {
		t.Error("SetRevision(\"\") did not return to the plain prefix")
	}
}

// TestNamespaceMatchesShell pins the documented shell recipe.
func TestNamespaceMatchesShell(t *testing.T) {
	// printf %s v1.2.3 | sha256sum | cut -c1-8
	if got := Namespace("v1.2.3"); got != "e3cad1a6" {
		t.Errorf("Namespace(v1.2.3) = %s, want e3cad1a6", got)
	}
}

// TestRedisDown: with the server gone, Get misses within its timeout and
// Set returns at once; once it is back the cache works again by itself.
func TestRedisDown(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	reg := prometheus.NewRegistry()
	c := newStarted(t, testClient(t, srv.Addr), Options{Registerer: reg, Timeout: 50 * time.Millisecond})
	k := cachetest.Key("k")
	c.Set(k, &policy.Decision{Allowed: true})
	cachetest.Eventually(t, c, k)

	srv.Stop(t)
	start := time.Now()
	if d, _, ok := c.Get(context.Background(), k); ok {
		t.Fatalf("Get with Redis down = %+v, want a miss", d)
	}
	if took := time.Since(start); took > time.Second { // sanity bound, not a speed goal
		t.Errorf("Get with Redis down took %v, want about the 50ms timeout at most", took)
	}
	start = time.Now()
	for i := range 100 {
		c.Set(cachetest.Key(fmt.Sprint(i)), &policy.Decision{})
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("100 Sets with Redis down took %v; Set must not block", took)
	}
	if n := testutil.ToFloat64(c.m.getError); n < 1 {
		t.Errorf("get errors = %v, want ≥ 1", n)
	}

	srv.Start(t) // empty: no persistence
	k2 := cachetest.Key("after")
	deadline := time.Now().Add(15 * time.Second)
	for {
		c.Set(k2, &policy.Decision{Reason: "back"})
		time.Sleep(20 * time.Millisecond)
		if _, _, ok := c.Get(context.Background(), k2); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cache did not recover after Redis came back")
		}
	}
}

// TestGetTimeout: a hung server costs a Get its timeout, not more.
func TestGetTimeout(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{Args: []string{"--enable-debug-command", "yes"}})
	client := testClient(t, srv.Addr)
	c := newStarted(t, client, Options{Timeout: 30 * time.Millisecond})
	if err := client.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	blocker := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 5 * time.Second})
	defer blocker.Close()
	go blocker.Do(context.Background(), "DEBUG", "SLEEP", "1")
	for testenv.Ping(srv.Addr) == nil {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if _, _, ok := c.Get(context.Background(), cachetest.Key("k")); ok {
		t.Fatal("Get on a hung server hit")
	}
	took := time.Since(start)
	if took > 500*time.Millisecond { // sanity bound, not a speed goal
		t.Errorf("Get on a hung server took %v, want about its 30ms timeout", took)
	}
	t.Logf("Get on a hung server missed after %v (timeout 30ms)", took)
	for testenv.Ping(srv.Addr) != nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// TestQueueFull: without a writer the queue fills and further writes are
// dropped and counted, never blocking.
func TestQueueFull(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	c := New(client, Options{QueueSize: 2})
	for i := range 5 {
		c.Set(cachetest.Key(fmt.Sprint(i)), &policy.Decision{})
	}
	if got := testutil.ToFloat64(c.m.setDropped); got != 3 {
		t.Errorf("dropped = %v, want 3", got)
	}
}

// TestBadValues: values of another version or garbage are misses.
func TestBadValues(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	client := testClient(t, srv.Addr)
	c := newStarted(t, client, Options{Prefix: "m1:dc:"})
	ctx := context.Background()
	for name, v := range map[string]string{
		"future version": "\x02{}",
		"garbage":        "\x01{not json",
		"trailing data":  "\x01{}{}",
		"empty":          "",
		"wrong types":    `` + "\x01" + `{"a":"yes"}`,
	} {
		k := cachetest.Key(name)
		if err := client.Set(ctx, key("m1:dc:", k), v, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if d, _, ok := c.Get(ctx, k); ok {
			t.Errorf("%s: Get = %+v, want a miss", name, d)
		}
	}
	if got := testutil.ToFloat64(c.m.getBad); got != 5 {
		t.Errorf("bad values counted = %v, want 5", got)
	}
}

// TestInexactNotWritten: a decision JSON would alter stays out of Redis.
func TestInexactNotWritten(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	c := newStarted(t, testClient(t, srv.Addr), Options{})
	bad := cachetest.Key("bad")
	c.Set(bad, &policy.Decision{Body: "\xff\xfe"})
	good := cachetest.Key("good")
	c.Set(good, &policy.Decision{Allowed: true})
	cachetest.Eventually(t, c, good) // written after bad, by the same writer
	if d, _, ok := c.Get(context.Background(), bad); ok {
		t.Errorf("Get(invalid UTF-8 decision) = %+v, want a miss", d)
	}
	if got := testutil.ToFloat64(c.m.setInexact); got != 1 {
		t.Errorf("inexact = %v, want 1", got)
	}
}

func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	a := New(client, Options{Registerer: reg})
	b := New(client, Options{Registerer: reg}) // shares the counters, no panic
	a.Purge()
	b.Purge()
	if got := testutil.ToFloat64(a.m.purges); got != 2 {
		t.Errorf("purges = %v, want 2 (shared)", got)
	}
	names, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range names {
		got = append(got, mf.GetName())
	}
	if s := strings.Join(got, " "); s != "m1_policy_cache_l2_operations_total m1_policy_cache_l2_purges_total m1_policy_cache_l2_queue_depth" {
		t.Errorf("registered %s", s)
	}
}
