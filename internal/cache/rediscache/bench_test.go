package rediscache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/cache/cachetest"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/redisconn"
	"github.com/m1-agent/m1/internal/testenv"
)

// benchDecision is a typical allow with a little metadata.
var benchDecision = &policy.Decision{
	Allowed:         true,
	Headers:         []policy.Header{{Key: "x-m1-tier", Value: "gold"}},
	DynamicMetadata: map[string]any{"risk": "read", "score": "7"},
}

// benchCache is an L2 on the client redisconn builds for production
// (with its metrics hook), on a loopback redis-server.
func benchCache(b *testing.B) *Cache {
	srv := testenv.StartRedis(b, testenv.RedisOptions{})
	o := redisconn.DefaultOptions()
	o.URL = srv.URL()
	conn, err := redisconn.New(o, prometheus.NewRegistry(), zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return newStarted(b, conn.Client(), Options{Logger: zap.NewNop(), Timeout: time.Second})
}

// BenchmarkL2Get is one L2 hit: GET over loopback and decode.
func BenchmarkL2Get(b *testing.B) {
	c := benchCache(b)
	k := cachetest.Key("bench")
	c.Set(k, benchDecision)
	cachetest.Eventually(b, c, k)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := c.Get(ctx, k); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkL2GetParallel is L2 hits from concurrent checks (the pool's
// connections in parallel).
func BenchmarkL2GetParallel(b *testing.B) {
	c := benchCache(b)
	k := cachetest.Key("bench")
	c.Set(k, benchDecision)
	cachetest.Eventually(b, c, k)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, _, ok := c.Get(ctx, k); !ok {
				b.Error("miss")
				return
			}
		}
	})
}

// BenchmarkL2GetMiss is one L2 miss (the cost a miss adds to an
// evaluation).
func BenchmarkL2GetMiss(b *testing.B) {
	c := benchCache(b)
	k := cachetest.Key("absent")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := c.Get(ctx, k); ok {
			b.Fatal("hit")
		}
	}
}

// BenchmarkL2Set is what a Set costs the decision path: an enqueue (the
// writer runs concurrently; writes it cannot keep up with are dropped and
// reported as dropped/op).
func BenchmarkL2Set(b *testing.B) {
	c := benchCache(b)
	keys := make([]cache.Key, 1024)
	for i := range keys {
		keys[i] = cachetest.Key(fmt.Sprint(i))
	}
	before := testutil.ToFloat64(c.m.setDropped)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Set(keys[i%len(keys)], benchDecision)
		i++
	}
	b.ReportMetric((testutil.ToFloat64(c.m.setDropped)-before)/float64(i), "dropped/op")
}

// BenchmarkL2Write is the writer's cost per decision: encode and SET EX
// in pipelined batches of maxBatch.
func BenchmarkL2Write(b *testing.B) {
	c := benchCache(b)
	batch := make([]pending, maxBatch)
	prefix := c.prefix.Load()
	for i := range batch {
		batch[i] = pending{key: cachetest.Key(fmt.Sprint(i)), prefix: prefix, d: benchDecision}
	}
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		c.write(ctx, batch)
		n += len(batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/decision")
}

func BenchmarkEncode(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encode(benchDecision); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	v, err := encode(benchDecision)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeNoMetadata(b *testing.B) {
	v, err := encode(&policy.Decision{Allowed: true, Headers: []policy.Header{{Key: "x-m1-tier", Value: "gold"}}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(v); err != nil {
			b.Fatal(err)
		}
	}
}
