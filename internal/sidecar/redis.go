package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/cache/rediscache"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/ratelimit"
	"github.com/m1-agent/m1/internal/redisconn"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/redisstate"
)

// maxStateWait bounds how long one check waits on the state store.
const maxStateWait = 300 * time.Millisecond

// stateStore is what the sidecar needs of its state backend.
type stateStore interface {
	authz.UseStore
	authz.RevocationChecker
	admin.RevocationStore
}

var _ stateStore = (*state.Memory)(nil)

// setupRedis builds the shared-state pieces when REDIS_URL is set: the
// connection, the state store (single use, grant counts, revocations,
// fencing, invalidation) and the L2 decision cache. Nothing connects yet.
func (s *Server) setupRedis() error {
	o := s.opts
	if o.Redis.URL == "" {
		return nil
	}
	conn, err := redisconn.New(o.Redis, o.Registerer, s.log.Named("redis"))
	if err != nil {
		return err
	}
	s.redis = conn
	ro := redisstate.DefaultOptions()
	ro.Fallback = o.ReplayFallback
	// A check waits on Redis at most this long, retries included: under
	// Envoy's ext_authz timeout (500 ms in deploy/envoy), so the caller
	// gets M1's JSON deny rather than Envoy's timeout.
	ro.Timeout = min(o.Redis.CommandTimeout*time.Duration(o.Redis.MaxRetries+1), maxStateWait)
	ro.EpochMargin = o.ClockSkew
	ro.Now = o.Now
	ro.Logger = s.log.Named("state")
	ro.OnInvalidate = s.invalidate
	if s.shared, err = redisstate.New(conn.Client(), ro); err != nil {
		conn.Close()
		return fmt.Errorf("redis state: %w", err)
	}
	if o.CacheSize > 0 && o.CacheL2Mode != "off" {
		s.l2 = rediscache.New(conn.Client(), rediscache.Options{
			TTL:        o.CacheL2TTL,
			Logger:     s.log.Named("l2"),
			Registerer: o.Registerer,
		})
	}
	return nil
}

// rateLimiter returns the tool-call rate limiter, nil without limits:
// shared through Redis when REDIS_URL is set, in this process otherwise.
func (s *Server) rateLimiter() (authz.RateLimiter, error) {
	limits := ratelimit.Limits{PerMinute: s.opts.RateLimitMinute, PerHour: s.opts.RateLimitHour}
	if !limits.Enabled() {
		return nil, nil
	}
	local, err := ratelimit.NewLocal(limits, s.opts.Now)
	if err != nil {
		return nil, err
	}
	if s.redis == nil {
		return local, nil
	}
	return ratelimit.NewRedis(ratelimit.RedisOptions{
		Client: s.redis.Client(), Limits: limits, Fallback: local, Timeout: min(s.opts.Redis.CommandTimeout, maxStateWait),
		Up: s.redis.Connected, Logger: s.log.Named("ratelimit"),
	})
}

// invalidate handles another sidecar's bundle change or cache flush.
func (s *Server) invalidate(e redisstate.Event) {
	if s.authz == nil {
		return
	}
	s.log.Info("invalidation from another sidecar", zap.String("type", e.Type), zap.String("revision", e.Revision))
	if s.tiered != nil {
		s.tiered.Purge()
	} else if s.cache != nil {
		s.cache.Purge()
	}
	if e.Type == redisstate.EventBundle {
		s.heardRevision(e.Revision) // fetch now, not at the next poll
	}
}

// startRedis starts the prober, the L2 writer and the state store. Redis
// being down is not an error: the sidecar serves, degraded, and reconnects.
func (s *Server) startRedis(ctx context.Context) error {
	if s.redis == nil {
		return nil
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopRedis = cancel
	s.redis.OnStateChange(func(up bool) {
		if !up {
			s.log.Warn("redis unreachable: decision cache falls back to L1; approvals and grants " + s.fallbackWord())
			return
		}
		s.log.Info("redis connected")
		if err := s.shared.Resync(rctx); err != nil {
			s.log.Warn("redis resync failed; will retry on the next reconnect", zap.Error(err))
		}
	})
	s.redis.Start(rctx)
	if s.l2 != nil {
		s.l2.Start(rctx)
	}
	go func() { // Start subscribes and applies events until rctx ends
		if err := s.shared.Start(rctx); err != nil {
			s.log.Error("redis state subscriber stopped", zap.Error(err))
		}
	}()
	// Adopt the epoch and load revocations before serving, when Redis answers.
	sctx, scancel := context.WithTimeout(rctx, 2*time.Second)
	defer scancel()
	if err := s.shared.Resync(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("redis not reachable at start; serving degraded", zap.Error(err))
	}
	return nil
}

func (s *Server) fallbackWord() string {
	if s.opts.ReplayFallback == "local" {
		return "are counted in this process (M1_REPLAY_FALLBACK=local)"
	}
	return "are denied with state_unavailable until it is back"
}

func (s *Server) closeRedis() {
	if s.stopRedis != nil {
		s.stopRedis()
	}
	if s.redis != nil {
		_ = s.redis.Close()
	}
}

func (s *Server) redisCheck() admin.Check {
	if s.redis == nil {
		return admin.Check{Status: admin.StatusDisabled, Detail: "REDIS_URL not set: single use, grant counts and revocations are kept in the store (M1_DATA_DIR or M1_DATABASE_URL)"}
	}
	info := map[string]any{"rtt": s.redis.RTT().String(), "replay_fallback": s.opts.ReplayFallback, "epoch": s.shared.Epoch()}
	if s.redis.Connected() {
		return admin.Check{Status: admin.StatusOK, Info: info}
	}
	return admin.Check{Status: admin.StatusDegraded, Info: info,
		Detail: "redis unreachable: caches on L1, approvals and grants " + s.fallbackWord()}
}

// flushCache drops this process's cached decisions and, with Redis, tells
// every other sidecar to do the same (POST /api/m1/cache/flush).
func (s *Server) flushCache(w http.ResponseWriter, r *http.Request) {
	switch {
	case s.tiered != nil:
		s.tiered.Purge()
	case s.cache != nil:
		s.cache.Purge()
	}
	doc := map[string]any{"flushed": true, "published": false}
	if s.shared != nil {
		if err := s.shared.PublishInvalidate(r.Context(), redisstate.Event{Type: redisstate.EventFlush}); err != nil {
			admin.WriteError(w, http.StatusServiceUnavailable, deny.StateUnavailable, "flushed here; not published to other sidecars: "+err.Error())
			return
		}
		doc["published"] = true
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(doc)
}
