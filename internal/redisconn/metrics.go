package redisconn

import (
	"context"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// connMetrics are the Redis client's metrics.
type connMetrics struct {
	connected prometheus.Gauge         // m1_redis_connected
	duration  *prometheus.HistogramVec // m1_redis_command_duration_seconds{command}
	pool      *poolCollector
}

// commandBuckets span 50µs to ~1.6s: loopback round trips are tens of
// microseconds, a command that hits its timeout is hundreds of ms.
var commandBuckets = prometheus.ExponentialBuckets(50e-6, 2, 16)

func newConnMetrics(stats func() *redis.PoolStats) *connMetrics {
	return &connMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "m1_redis_connected",
			Help: "1 when the last Redis health probe (PING) succeeded, else 0.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "m1_redis_command_duration_seconds",
			Help:    "Time of one Redis command including retries, by command (a pipeline is one observation: pipeline or multi).",
			Buckets: commandBuckets,
		}, []string{"command"}),
		pool: newPoolCollector(stats),
	}
}

func (m *connMetrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.connected, m.duration, m.pool} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *connMetrics) hook() redis.Hook { return durationHook{m.duration} }

// durationHook times every command and pipeline.
type durationHook struct{ h *prometheus.HistogramVec }

func (durationHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(ctx, network, addr)
	}
}

func (d durationHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		d.h.WithLabelValues(cmd.Name()).Observe(time.Since(start).Seconds())
		return err
	}
}

func (d durationHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		name := "pipeline"
		if len(cmds) > 0 && cmds[0].Name() == "multi" {
			name = "multi"
		}
		d.h.WithLabelValues(name).Observe(time.Since(start).Seconds())
		return err
	}
}

// poolCollector reads the client's connection pool statistics at scrape
// time (summed over the nodes of a Cluster).
type poolCollector struct {
	stats                                      func() *redis.PoolStats
	hits, misses, timeouts, total, idle, stale *prometheus.Desc
}

func newPoolCollector(stats func() *redis.PoolStats) *poolCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &poolCollector{
		stats:    stats,
		hits:     d("m1_redis_pool_hits_total", "Times a free connection was found in the Redis pool."),
		misses:   d("m1_redis_pool_misses_total", "Times no free connection was in the Redis pool (a new one was dialled or awaited)."),
		timeouts: d("m1_redis_pool_timeouts_total", "Times waiting for a Redis pool connection timed out."),
		total:    d("m1_redis_pool_total_conns", "Connections in the Redis pool."),
		idle:     d("m1_redis_pool_idle_conns", "Idle connections in the Redis pool."),
		stale:    d("m1_redis_pool_stale_conns_total", "Stale connections removed from the Redis pool."),
	}
}

// Describe implements prometheus.Collector.
func (p *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{p.hits, p.misses, p.timeouts, p.total, p.idle, p.stale} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (p *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := p.stats()
	if s == nil {
		return
	}
	c := func(d *prometheus.Desc, t prometheus.ValueType, v uint32) {
		ch <- prometheus.MustNewConstMetric(d, t, float64(v))
	}
	c(p.hits, prometheus.CounterValue, s.Hits)
	c(p.misses, prometheus.CounterValue, s.Misses)
	c(p.timeouts, prometheus.CounterValue, s.Timeouts)
	c(p.total, prometheus.GaugeValue, s.TotalConns)
	c(p.idle, prometheus.GaugeValue, s.IdleConns)
	c(p.stale, prometheus.CounterValue, s.StaleConns)
}
