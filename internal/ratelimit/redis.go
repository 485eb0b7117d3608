package ratelimit

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// KeyPrefix starts every key Redis keeps: m1:rl:{p:<principal>}:minute and
// m1:rl:{p:<principal>}:hour. The braces are a Redis Cluster hash tag, so
// that a principal's two buckets live on one node and one script can take
// from both; "p:" keeps the tag non-empty for the empty principal.
const KeyPrefix = "m1:rl:"

// keys returns the Redis keys of principal's minute and hour buckets.
func keys(principal string) []string {
	tag := KeyPrefix + "{p:" + principal + "}:"
	return []string{tag + "minute", tag + "hour"}
}

// gcraScript checks both GCRA buckets of a principal and takes from both
// only when both allow, in one atomic step (see gcra.lua).
//
//go:embed gcra.lua
var gcraSource string

var gcraScript = redis.NewScript(gcraSource)

// Redis shares the buckets between sidecars through Redis. It is safe for
// concurrent use.
type Redis struct {
	limits   Limits
	client   redis.UniversalClient
	fallback *Local
	timeout  time.Duration
	up       func() bool
	log      *zap.Logger
	down     atomic.Bool
	now      func() time.Time // nil: Redis's own clock (TIME)
}

// RedisOptions configure NewRedis.
type RedisOptions struct {
	// Client is the Redis the buckets live in. Required.
	Client redis.UniversalClient
	// Limits are each principal's limits; they must pass Limits' checks.
	Limits Limits
	// Fallback counts calls in this process while Redis fails or Up says
	// it is down, so that a hung Redis does not add Timeout to every call.
	// Required.
	Fallback *Local
	// Timeout bounds each call to Redis. Required (positive).
	Timeout time.Duration
	// Up is the connection prober (redisconn.Conn.Connected); nil means
	// always try Redis.
	Up func() bool
	// Logger logs Redis going down and coming back; nil logs nothing.
	Logger *zap.Logger
}

// validate names the first field NewRedis cannot run with.
func (o *RedisOptions) validate() error {
	switch {
	case o.Client == nil:
		return errors.New("ratelimit: RedisOptions.Client is required")
	case o.Fallback == nil:
		return errors.New("ratelimit: RedisOptions.Fallback is required")
	case o.Timeout <= 0:
		return errors.New("ratelimit: RedisOptions.Timeout must be positive")
	}
	return o.Limits.validate()
}

// NewRedis returns a Redis limiter on o.Client. Each call to Redis is
// bounded by o.Timeout; while Redis fails, or while o.Up says it is down,
// o.Fallback counts instead.
//
// The buckets are timed by Redis's clock (TIME, inside the script), which
// every sidecar shares; SetClock replaces it (tests).
func NewRedis(o RedisOptions) (*Redis, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Up == nil {
		o.Up = func() bool { return true }
	}
	return &Redis{limits: o.Limits, client: o.Client, fallback: o.Fallback, timeout: o.Timeout, up: o.Up, log: o.Logger}, nil
}

// SetClock makes the script time the buckets by now instead of Redis's
// clock. Call it before the first Allow; nil restores Redis's clock.
func (r *Redis) SetClock(now func() time.Time) { r.now = now }

// Allow counts one call of key: both buckets are checked and taken from in
// one script, so a call that either limit refuses takes from neither.
func (r *Redis) Allow(ctx context.Context, key string) Result {
	if !r.limits.Enabled() {
		return Result{Allowed: true}
	}
	if !r.up() {
		return r.fallback.Allow(ctx, key)
	}
	now := ""
	if r.now != nil {
		now = strconv.FormatInt(r.now().UnixMicro(), 10)
	}
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	res, err := gcraScript.Run(cctx, r.client, keys(key), r.limits.PerMinute, r.limits.PerHour, now).Slice()
	cancel()
	var out Result
	if err == nil {
		out, err = parseScriptResult(res)
	}
	if err != nil {
		if !r.down.Swap(true) {
			r.log.Warn("rate limits: Redis unreachable; counting in this process until it answers", zap.Error(err))
		}
		return r.fallback.Allow(ctx, key)
	}
	if r.down.Swap(false) {
		r.log.Info("rate limits: Redis answers again; counting shared")
	}
	return out
}

// parseScriptResult reads the script's answer: {1} when allowed, else
// {0, retry-after in microseconds, "minute"|"hour"}.
func parseScriptResult(res []any) (Result, error) {
	if len(res) == 1 {
		if n, ok := res[0].(int64); ok && n == 1 {
			return Result{Allowed: true}, nil
		}
	}
	if len(res) == 3 {
		n, ok1 := res[0].(int64)
		us, ok2 := res[1].(int64)
		name, ok3 := res[2].(string)
		if ok1 && ok2 && ok3 && n == 0 && (name == "minute" || name == "hour") {
			return Result{RetryAfter: max(time.Duration(us)*time.Microsecond, time.Microsecond), Limit: name}, nil
		}
	}
	return Result{}, fmt.Errorf("ratelimit: unexpected script answer %v", res)
}
