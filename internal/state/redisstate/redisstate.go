// Package redisstate shares the sidecar's security state through Redis
// (DESIGN §7): approval single use and grant use counts are Lua scripts
// that check the shared-state epoch and record the use in one atomic step;
// revocations live in a Redis hash and reach every sidecar over pub/sub,
// with the whole set reloaded on every (re)subscribe; bundle changes and
// cache flushes travel on the same channel.
//
// # Keys
//
// Every key starts with Options.Prefix, by default "{m1}:":
//
//	{m1}:epoch        the shared-state epoch, unix seconds (no expiry)
//	{m1}:use:<jti>    an approval's use ("1") or a grant's use count, expiring at the token's exp
//	{m1}:revocations  hash "jti:<id>" / "sub:<sub>" → until, unix ms, 0 = until lifted
//
// The prefix is a Redis Cluster hash tag so that all of them live in one
// slot: a script may only touch keys of one slot, and the fencing below
// needs the epoch and the jti in the same script. The trade-off is that all
// of M1's shared security state sits on one cluster shard (and its
// replicas); it is small (one key per live token) and the commands are
// O(1), so one shard carries many thousands of decisions per second. Data
// that needs no atomicity with the epoch (the decision cache) should not
// share the tag, so that it spreads over the cluster.
//
// # Fencing
//
// A Redis that loses its data (restarted without persistence, flushed)
// would forget which approvals were used. Each process adopts the value of
// the epoch key; the use scripts refuse to record anything when the key is
// missing or differs from the adopted value. The store then sets a new
// epoch (SET if absent, to the next whole second after now+EpochMargin),
// or adopts the one another process set, and the use fails with
// ErrStateReset. The decision path refuses tokens issued before Epoch()
// (state_reset), so a token used before the loss can never be used again;
// at most one token lifetime of approvals is lost. Use also compares the
// token's iat with the epoch inside the script, which closes the window
// between the decision path reading Epoch() and the use being recorded (a
// reset adopted in between would otherwise let a token issued before it be
// recorded as a first use). The fencing is Use's own: no caller can turn
// it off.
//
// A process that has not yet read the epoch (Epoch() is zero) reads it on
// its first use. Call Resync before serving.
//
// Residual risks, which the operator's Redis settings must cover: a Redis
// that loses only part of its data keeps its epoch key and is not detected
// (an AOF with appendfsync everysec losing the last second, an RDB
// snapshot, a failover to a replica that had not received the last writes);
// eviction of use keys (maxmemory-policy must be noeviction); issuer clocks
// ahead of the sidecars by more than EpochMargin.
//
// # Commands
//
// The store uses GET, SET, INCR, INCRBY, PEXPIREAT, HGET, HSET, HSETNX,
// HDEL, HGETALL and PUBLISH (inside scripts: EVALSHA, falling back to EVAL),
// SUBSCRIBE and PING; an ACL user for M1 needs those, on keys matching the
// prefix (~{m1}:*) and on the channel (&m1:events).
package redisstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/state"
)

// Errors: every error from Redis being unreachable or failing a command
// wraps state.ErrUnavailable, and a use that found the shared state reset
// (a new epoch) wraps state.ErrStateReset — the contract's errors, which
// the decision pipeline acts on (state_unavailable, state_reset).

// Fallback modes (M1_REPLAY_FALLBACK).
const (
	FallbackNone  = ""      // fail closed: uses fail with state.ErrUnavailable while Redis is unreachable
	FallbackLocal = "local" // count uses in this process while Redis is unreachable
)

// Options configure a Store. Zero fields take DefaultOptions' values,
// except EpochMargin, whose zero means none.
type Options struct {
	// Prefix starts every key. It must contain a hash tag ("{…}") so that all
	// keys share one cluster slot (see the package documentation).
	Prefix string
	// Channel is the pub/sub channel for revocations and invalidations.
	Channel string
	// Fallback is FallbackNone (fail closed) or FallbackLocal: while Redis is
	// unreachable, single use and grant counts go to an in-process
	// state.Memory, so a token can be used once per process instead of once
	// per mesh; what was counted locally is written to Redis when it is back.
	Fallback string
	// Timeout bounds each use (Consume, CountUse) including go-redis's
	// retries. It is enforced even when the client does not honour context
	// deadlines (ContextTimeoutEnabled off).
	Timeout time.Duration
	// EpochMargin is added to the clock when this process sets a new epoch:
	// tokens issued up to the margin after the reset (by the issuer's clock)
	// are refused too, which covers issuers whose clock runs ahead. Set it to
	// the clock skew the token verifier allows (M1_CLOCK_SKEW).
	EpochMargin time.Duration
	// Now is the clock (revocation expiry, new epochs).
	Now func() time.Time
	// Logger receives outage, epoch and reload messages.
	Logger *zap.Logger
	// OnInvalidate is called, on the subscriber goroutine, for every bundle
	// and flush event published by another process. It must not block.
	OnInvalidate func(Event)
}

// DefaultOptions returns the defaults: prefix "{m1}:", channel "m1:events",
// fail closed, a 200ms timeout, a 30s epoch margin (DESIGN's default clock
// skew), time.Now and a no-op logger.
func DefaultOptions() Options {
	return Options{
		Prefix:      "{m1}:",
		Channel:     "m1:events",
		Timeout:     200 * time.Millisecond,
		EpochMargin: 30 * time.Second,
		Now:         time.Now,
		Logger:      zap.NewNop(),
	}
}

func (o *Options) fill() {
	d := DefaultOptions()
	if o.Prefix == "" {
		o.Prefix = d.Prefix
	}
	if o.Channel == "" {
		o.Channel = d.Channel
	}
	if o.Timeout == 0 {
		o.Timeout = d.Timeout
	}
	if o.Now == nil {
		o.Now = d.Now
	}
	if o.Logger == nil {
		o.Logger = d.Logger
	}
}

func (o *Options) validate() error {
	switch {
	case !hasHashTag(o.Prefix):
		return fmt.Errorf("redisstate: Prefix %q has no hash tag such as {m1}", o.Prefix)
	case o.Fallback != FallbackNone && o.Fallback != FallbackLocal:
		return fmt.Errorf("redisstate: Fallback %q: want %q or %q", o.Fallback, FallbackNone, FallbackLocal)
	case o.Timeout < 0:
		return fmt.Errorf("redisstate: Timeout %v is negative", o.Timeout)
	case o.EpochMargin < 0:
		return fmt.Errorf("redisstate: EpochMargin %v is negative", o.EpochMargin)
	}
	return nil
}

// hasHashTag reports whether key has a non-empty {…} section, which Redis
// Cluster hashes instead of the whole key.
func hasHashTag(key string) bool {
	_, after, ok := strings.Cut(key, "{")
	if !ok {
		return false
	}
	end := strings.IndexByte(after, '}')
	return end > 0
}

// Zap field names.
const (
	fieldEpoch    = "epoch"
	fieldPrevious = "previous_epoch"
	fieldChannel  = "channel"
	fieldFallback = "fallback"
	fieldCount    = "revocations"
	fieldRestored = "restored"
	fieldType     = "type"
)

const (
	adminTimeout  = 2 * time.Second        // Revoke, LiftSub, List, PublishInvalidate
	reloadTimeout = 5 * time.Second        // one reload attempt
	probeInterval = 250 * time.Millisecond // FallbackLocal: how often to retry Redis while it is down
)

// Store is the Redis state store. It satisfies the decision path's UseStore,
// RevocationChecker and Epoch interfaces and the revocation API's store
// (state/storestate makes its revocations durable).
// Its methods are safe for concurrent use.
type Store struct {
	client   redis.UniversalClient
	opts     Options
	id       string
	bounded  bool // the client honours context deadlines itself
	log      *zap.Logger
	fallback *state.Memory // nil unless FallbackLocal

	epochKey, revKey, liftedKey, usePrefix string

	epoch    atomic.Int64 // adopted epoch, unix seconds; 0 before first contact
	epochMu  sync.Mutex   // serialises epoch syncs so the adopted value only moves forward
	setEpoch atomic.Bool  // this process set a new epoch since the last reload

	revs     revocationSet
	reloadMu sync.Mutex         // one reload at a time
	loaded   int64              // epoch the revocation set was last loaded under; reloadMu
	restored []state.Revocation // from the durable store, offered to Redis by the next reload; reloadMu

	pmu      sync.Mutex
	pending  map[string]*pendingUse // uses counted locally during an outage, not yet in Redis
	pendingN atomic.Int32

	down    atomic.Bool  // Redis failed since the last success (logged once)
	retryAt atomic.Int64 // FallbackLocal: unix ns before which uses go straight to local

	kick    chan struct{}
	started atomic.Bool
}

// New returns a store on client. It does not contact Redis: call Resync
// (before serving, so the revocation set and the epoch are known) and run
// Start.
func New(client redis.UniversalClient, o Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("redisstate: nil client")
	}
	o.fill()
	if err := o.validate(); err != nil {
		return nil, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	s := &Store{
		client:    client,
		opts:      o,
		id:        hex.EncodeToString(b[:]),
		bounded:   honoursDeadlines(client),
		log:       o.Logger,
		epochKey:  o.Prefix + "epoch",
		revKey:    o.Prefix + "revocations",
		liftedKey: o.Prefix + "lifted",
		usePrefix: o.Prefix + "use:",
		pending:   map[string]*pendingUse{},
		kick:      make(chan struct{}, 1),
	}
	s.revs.init()
	if o.Fallback == FallbackLocal {
		s.fallback = state.NewMemory(state.MemoryOptions{Now: o.Now})
	}
	return s, nil
}

// Epoch returns the adopted shared-state epoch: tokens issued before it
// must be refused (state_reset). It is zero before the first contact with
// Redis.
func (s *Store) Epoch() time.Time {
	if e := s.epoch.Load(); e != 0 {
		return time.Unix(e, 0)
	}
	return time.Time{}
}

// String describes the store for logs.
func (s *Store) String() string {
	return fmt.Sprintf("redis(prefix %q, fallback %q)", s.opts.Prefix, s.opts.Fallback)
}

// honoursDeadlines reports whether the go-redis client bounds its socket
// I/O by the context's deadline.
func honoursDeadlines(c redis.UniversalClient) bool {
	switch c := c.(type) {
	case interface{ Options() *redis.Options }:
		return c.Options().ContextTimeoutEnabled
	case interface{ Options() *redis.ClusterOptions }:
		return c.Options().ContextTimeoutEnabled
	}
	return false
}

// call runs fn, returning no later than ctx's deadline even when the client
// ignores it: the command then finishes in the background, bounded by the
// client's own socket timeouts.
func call[T any](ctx context.Context, s *Store, fn func(context.Context) (T, error)) (T, error) {
	if s.bounded {
		return fn(ctx)
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// unavailable wraps an error from Redis: errors.Is matches ErrUnavailable
// and the cause.
type unavailable struct {
	op  string
	err error
}

func (e *unavailable) Error() string {
	return state.ErrUnavailable.Error() + ": " + e.op + ": " + e.err.Error()
}
func (e *unavailable) Unwrap() []error { return []error{state.ErrUnavailable, e.err} }

// markDown records a failed command; the first after a success is logged.
func (s *Store) markDown(err error) {
	if s.down.CompareAndSwap(false, true) {
		if s.fallback != nil {
			s.log.Warn("shared state unreachable: single use and grant counts are per process until it is back", zap.Error(err), zap.String(fieldFallback, FallbackLocal))
		} else {
			s.log.Warn("shared state unreachable: single use and grant uses are denied (state_unavailable) until it is back", zap.Error(err))
		}
	}
}

// markUp records a successful command.
func (s *Store) markUp() {
	if s.retryAt.Load() != 0 {
		s.retryAt.Store(0)
	}
	if s.down.Load() && s.down.CompareAndSwap(true, false) {
		s.log.Info("shared state reachable again")
		s.kickReload() // push what was counted or revoked locally meanwhile
	}
}

// kickReload asks Start's loop to reload the revocation set.
func (s *Store) kickReload() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}
