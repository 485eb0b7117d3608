package redisconn

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// probeLoop PINGs until ctx ends, then closes c.done.
func (c *Conn) probeLoop(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.opts.PingInterval)
	defer t.Stop()
	first := true
	for {
		took, err := c.ping(ctx)
		if ctx.Err() != nil {
			return // shutting down: not a state change
		}
		c.observe(took, err, first)
		first = false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ping sends one PING (one per master on a Cluster, in parallel) bounded
// by CommandTimeout.
func (c *Conn) ping(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CommandTimeout)
	defer cancel()
	start := time.Now()
	var err error
	if cc, ok := c.client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			return n.Ping(ctx).Err()
		})
	} else {
		err = c.client.Ping(ctx).Err()
	}
	return time.Since(start), err
}

// observe records one probe result: the gauge, the RTT average, and a
// transition with its log line and callbacks.
func (c *Conn) observe(took time.Duration, err error, first bool) {
	up := err == nil
	if up {
		ewma(&c.rtt, took)
		c.metrics.connected.Set(1)
	} else {
		c.metrics.connected.Set(0)
	}
	was := c.connected.Swap(up)
	switch {
	case up && !was:
		c.logger.Info("redis connected", zap.String(fieldRedis, c.target), zap.Duration(fieldRTT, took))
	case !up && was:
		c.logger.Warn("redis unreachable; shared state degraded until it returns", zap.String(fieldRedis, c.target), zap.Error(err))
	case !up && first:
		c.logger.Warn("redis unreachable at start; running degraded until it answers", zap.String(fieldRedis, c.target), zap.Error(err))
	}
	if up == was {
		return
	}
	c.mu.Lock()
	cbs := c.callbacks[:len(c.callbacks):len(c.callbacks)]
	c.mu.Unlock()
	for _, f := range cbs {
		f(up)
	}
}

// ewma folds sample into the average in avg (ns) with weight 1/8, the
// smoothing of TCP's SRTT; the first sample is taken as is.
func ewma(avg interface {
	Load() int64
	CompareAndSwap(old, new int64) bool
}, sample time.Duration) {
	s := int64(sample)
	if s <= 0 {
		s = 1
	}
	for {
		old := avg.Load()
		next := s
		if old != 0 {
			next = old + (s-old)/8
			if next <= 0 {
				next = 1
			}
		}
		if avg.CompareAndSwap(old, next) {
			return
		}
	}
}
