// Package rediscache is the shared (L2) tier of M1's decision cache:
// policy decisions stored in Redis, so that a decision one sidecar has
// evaluated serves every other sidecar of the mesh.
//
// Reads are bounded by a short timeout and any Redis error is a miss; writes
// are queued and sent by a background writer in pipelined batches, so
// neither ever holds a decision past its deadline. A cache.Key already
// hashes the bundle revision, so an entry can never answer for another
// revision; entries expire with their TTL.
//
// Keys are Prefix + [namespace ":"] + hex(key), where namespace is
// Namespace(revision) once SetRevision is called. An operator drops the
// entries of an old revision without touching the rest with
//
//	redis-cli --scan --pattern 'm1:dc:<namespace>:*' | xargs redis-cli unlink
//
// (on a Cluster, against each master). A value is a version byte and then
// the version's encoding (version 1: compact JSON that gives back the
// policy.Decision exactly); a value of an unknown version is a miss, so
// sidecars of two versions can share one Redis.
//
// The commands used are GET and SET with an expiry (EX or PX), the latter
// pipelined.
package rediscache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/policy"
)

// Options configure a Cache. Zero values take the defaults.
type Options struct {
	Prefix       string                // key prefix; default "m1:dc:"
	TTL          time.Duration         // lifetime of an entry; default 5m
	Timeout      time.Duration         // bound of one Get; default 50ms
	WriteTimeout time.Duration         // bound of one batch of writes; default 1s
	QueueSize    int                   // writes waiting for the writer; default 1024
	Logger       *zap.Logger           // default: none
	Registerer   prometheus.Registerer // nil: metrics not registered
}

// Defaults of Options.
const (
	DefaultPrefix       = "m1:dc:"
	DefaultTTL          = 5 * time.Minute
	DefaultTimeout      = 50 * time.Millisecond
	DefaultWriteTimeout = time.Second
	DefaultQueueSize    = 1024
)

var _ cache.L2 = (*Cache)(nil)

// maxBatch bounds the writes sent in one pipeline.
const maxBatch = 128

// Cache is the Redis decision cache. It is safe for concurrent use.
type Cache struct {
	client  redis.UniversalClient
	opts    Options
	prefix  atomic.Pointer[string] // Prefix, plus the revision namespace and ":" once set
	queue   chan pending
	started atomic.Bool
	failing bool // writer only: the last batch failed
	m       *cacheMetrics
}

// pending is one queued write. The decision is shared with the caller's
// L1, which never modifies it; it is encoded by the writer, off the
// decision path.
type pending struct {
	key    cache.Key
	prefix *string
	d      *policy.Decision
}

// Log field names.
const (
	fieldNamespace = "namespace"
	fieldRevision  = "revision"
	fieldPattern   = "drop_pattern"
	fieldBatch     = "batch"
)

// New returns a cache on client. The client should bound its commands by
// the context's deadline (go-redis ContextTimeoutEnabled; redisconn's
// client does), or a Get may outlast Timeout. Writes are queued until
// Start runs the writer.
func New(client redis.UniversalClient, o Options) *Cache {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	c := &Cache{client: client, opts: o, queue: make(chan pending, o.QueueSize)}
	c.m = newCacheMetrics(o.Registerer, func() float64 { return float64(len(c.queue)) }, o.Logger)
	p := o.Prefix
	c.prefix.Store(&p)
	return c
}

// Namespace is the short revision namespace of the keys: the first 8 hex
// digits of SHA-256(revision). In a shell:
//
//	printf %s "$revision" | sha256sum | cut -c1-8
func Namespace(revision string) string {
	sum := sha256.Sum256([]byte(revision))
	return hex.EncodeToString(sum[:4])
}

// SetRevision puts later keys under the namespace of revision ("" drops
// the namespace). Entries written before keep their keys; they are not
// found again (their key hashes the old revision anyway) and expire with
// their TTL.
func (c *Cache) SetRevision(revision string) {
	p := c.opts.Prefix
	if revision != "" {
		ns := Namespace(revision)
		p += ns + ":"
		c.opts.Logger.Info("L2 decision cache namespace", zap.String(fieldRevision, revision), zap.String(fieldNamespace, ns),
			zap.String(fieldPattern, p+"*"))
	}
	c.prefix.Store(&p)
}

// key is the Redis key of k under prefix.
func key(prefix string, k cache.Key) string {
	var buf [2 * len(cache.Key{})]byte
	hex.Encode(buf[:], k[:])
	var sb strings.Builder
	sb.Grow(len(prefix) + len(buf))
	sb.WriteString(prefix)
	sb.Write(buf[:])
	return sb.String()
}

// Get returns the decision stored under k, with tier cache.TierL2. It
// returns within Timeout (or ctx, if sooner): a Redis error, a timeout or
// an undecodable value is a miss, counted in
// m1_policy_cache_l2_operations_total.
func (c *Cache) Get(ctx context.Context, k cache.Key) (*policy.Decision, string, bool) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	b, err := c.client.Get(ctx, key(*c.prefix.Load(), k)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		c.m.getMiss.Inc()
		return nil, cache.TierL2, false
	case err != nil:
		c.m.getError.Inc()
		return nil, cache.TierL2, false
	}
	d, err := decode(b)
	if err != nil {
		c.m.getBad.Inc()
		if !errors.Is(err, errVersion) {
			c.opts.Logger.Debug("undecodable L2 decision; treated as a miss", zap.Error(err))
		}
		return nil, cache.TierL2, false
	}
	c.m.getHit.Inc()
	return d, cache.TierL2, true
}

// Set queues d for writing under k and returns at once. When the queue is
// full the write is dropped and counted; a decision that would not come
// back unchanged (invalid UTF-8, non-JSON metadata) is not written. d must
// not be modified afterwards.
func (c *Cache) Set(k cache.Key, d *policy.Decision) {
	select {
	case c.queue <- pending{key: k, prefix: c.prefix.Load(), d: d}:
	default:
		c.m.setDropped.Inc()
	}
}

// Purge does nothing to Redis and is only counted: the keys hash the
// bundle revision, so a new revision never meets an old entry, and an
// entry of the current revision is the decision the policy would make
// again. (Old revisions' entries expire, or an operator drops their
// namespace; see the package documentation.)
func (c *Cache) Purge() { c.m.purges.Inc() }

// Start runs the writer in a goroutine until ctx ends; writes still queued
// then are dropped. Later calls do nothing.
func (c *Cache) Start(ctx context.Context) {
	if c.started.CompareAndSwap(false, true) {
		go c.run(ctx)
	}
}

func (c *Cache) run(ctx context.Context) {
	batch := make([]pending, 0, maxBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-c.queue:
			batch = append(batch[:0], p)
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case p := <-c.queue:
				batch = append(batch, p)
			default:
				break drain
			}
		}
		c.write(ctx, batch)
	}
}

// write sends one batch as a pipeline of SETs with the TTL.
func (c *Cache) write(ctx context.Context, batch []pending) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.WriteTimeout)
	defer cancel()
	pipe := c.client.Pipeline()
	for _, p := range batch {
		v, err := encode(p.d)
		if err != nil {
			c.m.setInexact.Inc()
			c.opts.Logger.Debug("decision not written to L2", zap.Error(err))
			continue
		}
		pipe.Set(ctx, key(*p.prefix, p.key), v, c.opts.TTL)
	}
	if pipe.Len() == 0 {
		return
	}
	cmds, err := pipe.Exec(ctx)
	for _, cmd := range cmds {
		if cmd.Err() != nil {
			c.m.setError.Inc()
		} else {
			c.m.setOK.Inc()
		}
	}
	switch {
	case err != nil && !c.failing && ctx.Err() != context.Canceled:
		c.failing = true
		c.opts.Logger.Warn("L2 decision cache writes failing; decisions stay in L1", zap.Int(fieldBatch, len(cmds)), zap.Error(err))
	case err == nil && c.failing:
		c.failing = false
		c.opts.Logger.Info("L2 decision cache writes recovered")
	}
}

// cacheMetrics count the L2 tier's work. Hits by tier are counted by the
// decision path (m1_policy_cache_hits_total{tier="l2"}); these tell why an
// L2 lookup missed and what happened to writes.
type cacheMetrics struct {
	getHit, getMiss, getError, getBad               prometheus.Counter
	setOK, setError, setDropped, setInexact, purges prometheus.Counter
}

func newCacheMetrics(reg prometheus.Registerer, depth func() float64, logger *zap.Logger) *cacheMetrics {
	ops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "m1_policy_cache_l2_operations_total",
		Help: "L2 (Redis) decision cache operations by op (get|set) and result " +
			"(get: hit|miss|error|bad_value; set: ok|error|dropped (queue full)|inexact (not representable)).",
	}, []string{"op", "result"})
	purges := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "m1_policy_cache_l2_purges_total",
		Help: "Purges of the L2 decision cache (no-ops on Redis: keys hash the bundle revision).",
	})
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "m1_policy_cache_l2_queue_depth",
		Help: "L2 decision cache writes waiting for the writer.",
	}, depth)
	if reg != nil {
		ops = register(reg, ops, logger)
		purges = register(reg, purges, logger)
		register(reg, prometheus.Collector(queue), logger)
	}
	return &cacheMetrics{
		getHit:     ops.WithLabelValues("get", "hit"),
		getMiss:    ops.WithLabelValues("get", "miss"),
		getError:   ops.WithLabelValues("get", "error"),
		getBad:     ops.WithLabelValues("get", "bad_value"),
		setOK:      ops.WithLabelValues("set", "ok"),
		setError:   ops.WithLabelValues("set", "error"),
		setDropped: ops.WithLabelValues("set", "dropped"),
		setInexact: ops.WithLabelValues("set", "inexact"),
		purges:     purges,
	}
}

// register registers c on reg, or returns the collector already there
// (a second cache on one registry shares the counters).
func register[C prometheus.Collector](reg prometheus.Registerer, c C, logger *zap.Logger) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	logger.Warn("L2 decision cache metric not registered", zap.Error(err))
	return c
}
