package cache_test

import (
	"context"
	"log"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/cache/rediscache"
	"github.com/m1-agent/m1/internal/redisconn"
)

// ExampleNewTiered wires the decision cache of a sidecar with REDIS_URL
// set: one shared Redis client, an L2 on it, and L1 in front in auto mode.
// The result goes to authz.Options.Cache; on a bundle change the sidecar
// also calls SetRevision.
func ExampleNewTiered() {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	logger := zap.NewNop()

	o := redisconn.DefaultOptions()
	o.URL = "redis://127.0.0.1:6379/0" // REDIS_URL
	conn, err := redisconn.New(o, reg, logger)
	if err != nil {
		log.Fatal(err) // a bad setting; Redis being down is not an error
	}
	defer conn.Close()
	conn.Start(ctx)

	l1, err := cache.NewMemory(cache.MemoryOptions{MaxEntries: 10000, TTL: 5 * time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	l2 := rediscache.New(conn.Client(), rediscache.Options{TTL: 5 * time.Minute, Logger: logger, Registerer: reg})
	l2.Start(ctx)
	mode, err := cache.ParseMode("auto")
	if err != nil {
		log.Fatal(err)
	}
	decisions, err := cache.NewTiered(cache.TieredOptions{L1: l1, L2: l2, Mode: mode, RTT: conn.RTT, Connected: conn.Connected})
	if err != nil {
		log.Fatal(err)
	}
	decisions.SetRevision("bundle-revision")
	_ = decisions // authz.Options{Cache: decisions, …}
}
