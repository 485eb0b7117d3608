// Package redisconn builds M1's one shared Redis client (go-redis/v9
// UniversalClient: a single node, Sentinel or Cluster) from REDIS_URL and
// the REDIS_* settings of DESIGN §8, and watches its health.
//
// A Conn never refuses to start because Redis is down: the sidecar must
// start and degrade to its in-process tiers. Commands are bounded by short
// connect and command timeouts and retried with capped exponential backoff;
// a prober PINGs the server, keeps the m1_redis_connected gauge and an
// estimate of the round trip (which the tiered decision cache compares with
// the policy's evaluation time), and tells subscribers of each transition
// so that they can resubscribe and reload.
package redisconn

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// Options configure a Conn. Zero values take the defaults of
// DefaultOptions, except DB (see there).
type Options struct {
	// URL is REDIS_URL, in one of these forms ([…] is optional; a host
	// without a port gets 6379, or 26379 for a Sentinel):
	//
	//	redis://[user:pass@]host[:port][/db]        one server
	//	rediss://…                                  the same over TLS
	//	redis+sentinel://[user:pass@]host[:port][,host[:port]…]/master[/db]
	//	                                            the master named "master",
	//	                                            found through these Sentinels
	//	redis+cluster://[user:pass@]host[:port][,host[:port]…]
	//	                                            a Redis Cluster, from these seeds
	//	rediss+sentinel://…, rediss+cluster://…     the same over TLS
	//
	// user and pass are percent-encoded and authenticate to the data nodes
	// (for a Sentinel deployment, to the master and replicas; Sentinels are
	// reached with SentinelPassword). db is a decimal number; a cluster has
	// no databases. IPv6 hosts go in brackets ([::1]:6379). Query strings
	// are rejected: the REDIS_* settings below are the only knobs, so that
	// no URL parameter can silently contradict them.
	URL string
	// Password is REDIS_PASSWORD; when set it overrides the URL's.
	Password string
	// DB is REDIS_DB; -1 keeps the URL's database (0 when it names none).
	// Unlike the other fields, 0 is taken literally: it selects database 0.
	DB int
	// TLS is REDIS_TLS: connect over TLS (at least 1.2, system roots,
	// server name from each address). A rediss* scheme implies it.
	TLS bool
	// TLSConfig, when set, is the TLS configuration to use (custom roots,
	// client certificates) and implies TLS. It is not an environment
	// setting; embedders and tests set it.
	TLSConfig *tls.Config
	// SentinelPassword authenticates to the Sentinels themselves (their
	// requirepass); empty when they need none.
	SentinelPassword string
	// MaxRetries is REDIS_MAX_RETRIES: how many times a failed command is
	// retried; 0 means the default (3) and -1 means never.
	MaxRetries int
	// RetryDelay is REDIS_RETRY_DELAY_MS, the first backoff between retries
	// (default 8ms); the backoff doubles up to RetryDelayMax, with jitter.
	RetryDelay time.Duration
	// RetryDelayMax is REDIS_RETRY_DELAY_MAX_MS, the backoff cap (default
	// 512ms).
	RetryDelayMax time.Duration
	// ConnectTimeout is REDIS_CONNECT_TIMEOUT_MS, the bound of one dial
	// (default 500ms).
	ConnectTimeout time.Duration
	// CommandTimeout is REDIS_COMMAND_TIMEOUT_MS, the read and write
	// timeout of one command (default 200ms). A caller's context deadline
	// is honoured too, whichever comes first.
	CommandTimeout time.Duration
	// PingInterval is the period of the health probe (default 1s).
	PingInterval time.Duration
}

// DefaultOptions returns the defaults: DB -1 (from the URL), 3 retries with
// backoff from 8ms to 512ms, 500ms to connect, 200ms per command, a PING
// every second. URL is empty and must be set.
func DefaultOptions() Options {
	return Options{
		DB:             -1,
		MaxRetries:     3,
		RetryDelay:     8 * time.Millisecond,
		RetryDelayMax:  512 * time.Millisecond,
		ConnectTimeout: 500 * time.Millisecond,
		CommandTimeout: 200 * time.Millisecond,
		PingInterval:   time.Second,
	}
}

// validate fails fast on a setting out of range, naming its environment
// variable, and fills zero values with their defaults.
func (o *Options) validate() error {
	d := DefaultOptions()
	if strings.TrimSpace(o.URL) == "" {
		return fmt.Errorf("REDIS_URL is empty")
	}
	if o.DB < -1 {
		return fmt.Errorf("REDIS_DB %d: want a database number ≥ 0 (or -1 for the URL's)", o.DB)
	}
	if o.MaxRetries < -1 {
		return fmt.Errorf("REDIS_MAX_RETRIES %d: want ≥ 0 (0 for the default, 3; -1 for none)", o.MaxRetries)
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = d.MaxRetries
	}
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"REDIS_RETRY_DELAY_MS", &o.RetryDelay, d.RetryDelay},
		{"REDIS_RETRY_DELAY_MAX_MS", &o.RetryDelayMax, d.RetryDelayMax},
		{"REDIS_CONNECT_TIMEOUT_MS", &o.ConnectTimeout, d.ConnectTimeout},
		{"REDIS_COMMAND_TIMEOUT_MS", &o.CommandTimeout, d.CommandTimeout},
		{"PingInterval", &o.PingInterval, d.PingInterval},
	} {
		if *f.v < 0 {
			return fmt.Errorf("%s %v: must not be negative", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if o.RetryDelayMax < o.RetryDelay {
		return fmt.Errorf("REDIS_RETRY_DELAY_MAX_MS %v is below REDIS_RETRY_DELAY_MS %v", o.RetryDelayMax, o.RetryDelay)
	}
	return nil
}

// universal turns validated options into go-redis options.
func (o *Options) universal() (*redis.UniversalOptions, endpoint, error) {
	ep, err := parseURL(o.URL)
	if err != nil {
		return nil, ep, err
	}
	db := ep.db
	if o.DB >= 0 {
		db = o.DB
	}
	if ep.topology == cluster && db != 0 {
		return nil, ep, fmt.Errorf("REDIS_DB %d: a Redis Cluster has only database 0", db)
	}
	password := ep.password
	if o.Password != "" {
		password = o.Password
	}
	tlsConfig := o.TLSConfig
	if tlsConfig == nil && (o.TLS || ep.tls) {
		// No ServerName: crypto/tls takes it from each dialled address,
		// which is right for every cluster node and a failed-over master.
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	maxRetries := o.MaxRetries // -1 is go-redis's "none" too
	u := &redis.UniversalOptions{
		Addrs:            ep.addrs,
		Username:         ep.username,
		Password:         password,
		DB:               db,
		SentinelPassword: o.SentinelPassword,
		TLSConfig:        tlsConfig,

		MaxRetries:      maxRetries,
		MinRetryBackoff: o.RetryDelay,
		MaxRetryBackoff: o.RetryDelayMax,

		DialTimeout: o.ConnectTimeout,
		// One dial per attempt: command retries already back off, and
		// go-redis's own dial retries (5 × 100ms by default) would hold a
		// Check far past its deadline while Redis is down.
		DialerRetries: 1,
		ReadTimeout:   o.CommandTimeout,
		WriteTimeout:  o.CommandTimeout,
		// Waiting longer than a dial and a command for a free pooled
		// connection only delays the fallback.
		PoolTimeout:           o.ConnectTimeout + o.CommandTimeout,
		ContextTimeoutEnabled: true,

		// Fewer commands at connect: a least-privilege ACL user needs no
		// CLIENT SETINFO or CLIENT MAINT_NOTIFICATIONS.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	switch ep.topology {
	case sentinel:
		u.MasterName = ep.master
	case cluster:
		u.IsClusterMode = true // also with a single seed
	}
	return u, ep, nil
}

// Conn is the shared Redis client and its health prober. It is safe for
// concurrent use.
type Conn struct {
	opts    Options
	client  redis.UniversalClient
	logger  *zap.Logger
	target  string // redacted URL, for logs
	metrics *connMetrics

	connected atomic.Bool
	rtt       atomic.Int64 // EWMA round trip in ns; 0 before the first success

	mu        sync.Mutex
	callbacks []func(bool)

	startOnce sync.Once
	closeOnce sync.Once
	stop      context.CancelFunc // ends the prober; nil before Start
	done      chan struct{}      // closed when the prober has returned
	closeErr  error
}

// Log field names.
const (
	fieldRedis    = "redis"
	fieldTopology = "topology"
	fieldRTT      = "rtt"
)

// New builds the client and registers the Redis metrics on reg (nil: not
// registered). It fails on invalid options (the error names the setting,
// e.g. REDIS_URL, and never contains a password) or when a metric is
// already registered on reg; it does not connect, so it succeeds while
// Redis is down. Call Start to run the prober and Close when done.
func New(o Options, reg prometheus.Registerer, logger *zap.Logger) (*Conn, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	uo, ep, err := o.universal()
	if err != nil {
		return nil, err
	}
	c := &Conn{
		opts:   o,
		logger: logger,
		target: redact(o.URL),
		done:   make(chan struct{}),
	}
	c.client = redis.NewUniversalClient(uo)
	c.metrics = newConnMetrics(c.client.PoolStats)
	if reg != nil {
		if err := c.metrics.register(reg); err != nil {
			_ = c.client.Close()
			return nil, fmt.Errorf("register redis metrics: %w", err)
		}
	}
	c.client.AddHook(c.metrics.hook())
	logger.Info("redis configured", zap.String(fieldRedis, c.target), zap.Stringer(fieldTopology, ep.topology))
	return c, nil
}

// Client returns the shared client. Its commands are bounded by
// CommandTimeout and the caller's context; it stays usable (commands fail
// fast) while Redis is down and reconnects on its own.
func (c *Conn) Client() redis.UniversalClient { return c.client }

// Connected reports whether the last health probe succeeded. It is false
// before the first probe.
func (c *Conn) Connected() bool { return c.connected.Load() }

// RTT is the exponentially weighted moving average (weight 1/8 per probe)
// of the PING round trip of successful probes; 0 before the first. On a
// Cluster one probe PINGs every master in parallel, so it is the slowest.
func (c *Conn) RTT() time.Duration { return time.Duration(c.rtt.Load()) }

// OnStateChange registers f to be called on each transition of Connected,
// with the new state: true when the prober first reaches Redis and after
// each recovery, false when it loses it. Callbacks run one at a time, in
// registration order, on the prober's goroutine: they must not block for
// long (start a goroutine for a reload).
func (c *Conn) OnStateChange(f func(connected bool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.callbacks = append(c.callbacks, f)
}

// Start runs the prober in a goroutine until ctx ends or Close is called:
// a PING at once and then every PingInterval, each bounded by
// CommandTimeout. Later calls do nothing.
func (c *Conn) Start(ctx context.Context) {
	c.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(ctx)
		c.mu.Lock()
		c.stop = cancel
		c.mu.Unlock()
		go c.probeLoop(ctx)
	})
}

// Close stops the prober, waits for it and closes the client. It is safe
// to call more than once; later calls return the first call's result.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.startOnce.Do(func() { close(c.done) }) // never started: nothing to wait for
		c.mu.Lock()
		stop := c.stop
		c.mu.Unlock()
		if stop != nil {
			stop()
		}
		<-c.done
		c.closeErr = c.client.Close()
	})
	return c.closeErr
}
