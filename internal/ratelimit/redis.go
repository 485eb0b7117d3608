package ratelimit

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// KeyPrefix starts every key Redis keeps, after redis_rate's own "rate:":
// rate:m1:rl:<minute|hour>:<principal>.
const KeyPrefix = "m1:rl:"

// Redis shares the buckets between sidecars through Redis. It is safe for
// concurrent use.
type Redis struct {
	limits   Limits
	lim      *redis_rate.Limiter
	fallback *Local
	timeout  time.Duration
	up       func() bool
	log      *zap.Logger
	down     atomic.Bool
}

// NewRedis returns a Redis limiter on client. Each call to Redis is bounded
// by timeout; while Redis fails, or while up (the connection prober; nil =
// always try) says it is down, fallback counts instead, so that a hung
// Redis does not add its timeout to every call.
func NewRedis(client redis.UniversalClient, limits Limits, fallback *Local, timeout time.Duration, up func() bool, log *zap.Logger) (*Redis, error) {
	if err := limits.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	if up == nil {
		up = func() bool { return true }
	}
	return &Redis{limits: limits, lim: redis_rate.NewLimiter(client), fallback: fallback, timeout: timeout, up: up, log: log}, nil
}

// Allow counts one call of key.
func (r *Redis) Allow(ctx context.Context, key string) Result {
	if !r.up() {
		return r.fallback.Allow(ctx, key)
	}
	for _, l := range []struct {
		name  string
		n     int
		limit func(int) redis_rate.Limit
	}{{"minute", r.limits.PerMinute, redis_rate.PerMinute}, {"hour", r.limits.PerHour, redis_rate.PerHour}} {
		if l.n <= 0 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		res, err := r.lim.Allow(cctx, KeyPrefix+l.name+":"+key, l.limit(l.n))
		cancel()
		if err != nil {
			if !r.down.Swap(true) {
				r.log.Warn("rate limits: Redis unreachable; counting in this process until it answers", zap.Error(err))
			}
			return r.fallback.Allow(ctx, key)
		}
		if r.down.Swap(false) {
			r.log.Info("rate limits: Redis answers again; counting shared")
		}
		if res.Allowed == 0 {
			return Result{RetryAfter: res.RetryAfter, Limit: l.name}
		}
	}
	return Result{Allowed: true}
}
