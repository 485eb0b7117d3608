// Package bench measures m1-authz's Check throughput and latency against a
// no-op ext_authz server, in one run on the loopback interface.
//
// Load comes from ghz (github.com/bojand/ghz/runner): a fixed number of
// concurrent callers on a fixed number of gRPC connections send the same
// CheckRequest (an MCP tools/call of read_file that the default policy
// allows, see Request) as fast as the server answers. Each target is warmed
// up first; for m1-authz the warm-up also fills the decision cache, so the
// measured calls take the cache-hit path. A call counts as an error unless
// it completes with a CheckResponse whose status is OK: an accidental deny is
// an error, not a fast answer.
//
// The targets are measured in alternating rounds, so that a change in the
// machine's load affects both alike. Everything is bounded: the calls per
// target, the time per target (MaxDuration for the measured calls, a fifth
// of it for the warm-up), and each call (5s). Only loopback addresses are
// benchmarked.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Limits of a run.
const (
	MaxDuration    = 60 * time.Second // longest measured time per target
	MaxRequests    = 1_000_000        // most measured or warm-up calls per target
	MaxConcurrency = 1024
	MaxRate        = 1_000_000 // calls per second
)

// Target names in a Report.
const (
	TargetNoop = "no-op"
	TargetM1   = "m1-authz"
)

// Options configure a run.
type Options struct {
	Concurrency int           `json:"concurrency"`    // calls in flight per target, at most MaxConcurrency
	Connections int           `json:"connections"`    // gRPC connections they share, at most Concurrency
	Requests    int           `json:"requests"`       // measured calls per target, when Duration is 0; at most MaxRequests
	Duration    time.Duration `json:"duration_ns"`    // measured time per target instead of Requests; at most MaxDuration
	Warmup      int           `json:"warmup"`         // unmeasured calls per target before measuring; at most MaxRequests
	Addr        string        `json:"addr,omitempty"` // running m1-authz (loopback host:port, comma-separated for several) to measure instead of in-process ones
	// NoopAddr is a running no-op server (loopback host:port, `m1 bench
	// --serve-noop`) to measure as the baseline instead of an in-process
	// one. A baseline in a process of its own pays what m1-authz at Addr
	// pays beside the load generator (a second Go runtime on the same
	// cores, loopback TCP between processes): with the baseline in-process
	// and m1-authz outside, the ratio charged m1-authz ~35% for that alone.
	NoopAddr string  `json:"noop_addr,omitempty"`
	Audit    bool    `json:"audit"`          // the in-process m1-authz also audits every decision (SQLite in a temp dir)
	Rate     float64 `json:"rate,omitempty"` // measured calls started per second per target, at most MaxRate; 0 = as fast as they are answered
	// Mode is the path the load takes: ModeCache (default), ModeApproval
	// (a fresh approval per call) or ModeGrant (one grant reused).
	Mode string `json:"mode"`
	// Redis is the shared state of the in-process sidecars: "" none (uses
	// are durable in each one's SQLite store), "start" a redis-server this
	// run starts, or a loopback redis:// URL.
	Redis string `json:"redis,omitempty"`
	// Sidecars is how many in-process m1-authz share the load (and Redis,
	// which 2 requires); the no-op baseline is one server.
	Sidecars int `json:"sidecars"`
	// KeyFile is the private JWK (`m1 keys gen`) whose public key the
	// sidecars at Addr trust; approval and grant modes with Addr sign with
	// it. In-process sidecars get a key this run generates.
	KeyFile string `json:"key_file,omitempty"`
	// Audience is the sidecars' M1_AUDIENCE, which the tokens name.
	Audience string `json:"audience,omitempty"`
	// Round, when set, is called as each measured round starts, with its
	// target's name (TargetNoop or TargetM1); the func it returns, as the
	// round ends. m1 loadtest reads the processes' CPU with it.
	Round func(target string) (end func()) `json:"-"`
}

// DefaultOptions returns the defaults of `m1 bench`.
func DefaultOptions() Options {
	return Options{
		Concurrency: 16,
		Connections: 1,
		Requests:    50_000,
		Warmup:      1000,
		Mode:        ModeCache,
		Sidecars:    1,
		Audience:    DefaultAudience,
	}
}

// validate fails fast, naming the bad field.
func (o Options) validate() error {
	switch {
	case o.Concurrency < 1 || o.Concurrency > MaxConcurrency:
		return fmt.Errorf("Concurrency (--concurrency) must be 1..%d, got %d", MaxConcurrency, o.Concurrency)
	case o.Connections < 1 || o.Connections > o.Concurrency:
		return fmt.Errorf("Connections (--connections) must be 1..Concurrency (%d), got %d", o.Concurrency, o.Connections)
	case o.Duration < 0 || o.Duration > MaxDuration:
		return fmt.Errorf("Duration (--duration) must be 0..%s, got %s", MaxDuration, o.Duration)
	case o.Duration == 0 && (o.Requests < 1 || o.Requests > MaxRequests):
		return fmt.Errorf("Requests (--requests) must be 1..%d, got %d", MaxRequests, o.Requests)
	case o.Rate < 0 || o.Rate > MaxRate || math.IsNaN(o.Rate):
		return fmt.Errorf("Rate (--rate) must be 0..%d, got %g", MaxRate, o.Rate)
	case o.Warmup < 0 || o.Warmup > MaxRequests:
		return fmt.Errorf("Warmup (--warmup) must be 0..%d, got %d", MaxRequests, o.Warmup)
	}
	switch o.Mode {
	case "", ModeCache, ModeApproval, ModeGrant:
	default:
		return fmt.Errorf("Mode (--mode) must be %s, %s or %s, got %q", ModeCache, ModeApproval, ModeGrant, o.Mode)
	}
	if o.NoopAddr != "" {
		if err := loopback(o.NoopAddr); err != nil {
			return fmt.Errorf("NoopAddr (--noop-addr): %w", err)
		}
	}
	if o.Addr != "" {
		for _, a := range strings.Split(o.Addr, ",") {
			if err := loopback(a); err != nil {
				return fmt.Errorf("Addr (--addr): %w", err)
			}
		}
		switch {
		case o.Mode != ModeCache && o.Mode != "" && o.KeyFile == "":
			return fmt.Errorf("KeyFile (--key) is required with --addr in %s mode: the private key the sidecar's JWKS trusts", o.Mode)
		case o.Redis != "":
			return errors.New("Redis (--redis) is for in-process sidecars; with --addr the sidecars bring their own")
		}
	} else {
		switch {
		case o.Sidecars < 1 || o.Sidecars > 2:
			return fmt.Errorf("Sidecars (--sidecars) must be 1 or 2, got %d", o.Sidecars)
		case o.Sidecars > 1 && o.Redis == "":
			return errors.New("Sidecars (--sidecars) 2 needs Redis (--redis start or a URL) to share their state")
		case o.KeyFile != "":
			return errors.New("KeyFile (--key) is for --addr; in-process sidecars get a key the run generates")
		}
	}
	if o.Redis != "" && o.Redis != "start" {
		u, err := url.Parse(o.Redis)
		if err != nil || (u.Scheme != "redis") {
			return fmt.Errorf("Redis (--redis) must be \"start\" or a redis:// URL, got %q", o.Redis)
		}
		if err := loopback(u.Host); err != nil {
			return fmt.Errorf("Redis (--redis): %w", err)
		}
	}
	if o.Audience == "" && o.Mode != ModeCache && o.Mode != "" {
		return errors.New("Audience (--audience) is required in approval and grant modes")
	}
	return nil
}

// loopback accepts host:port only when host is a loopback IP address and
// port is set.
func loopback(hostport string) error { return loopbackAddr(hostport, false) }

// loopbackAddr is loopback, with port 0 (any free port) accepted when
// anyPort (an address to listen on).
func loopbackAddr(hostport string, anyPort bool) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if port == "" || port == "0" && !anyPort {
		return fmt.Errorf("%q has no port", hostport)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: only loopback IP addresses (127.0.0.1, ::1) are benchmarked", hostport)
	}
	return nil
}

// reachable fails when nothing accepts TCP connections at addr.
func reachable(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// Report is the outcome of a run.
type Report struct {
	Options    Options  `json:"options"`
	GOMAXPROCS int      `json:"gomaxprocs"` // CPUs the in-process servers and the load share
	Rounds     int      `json:"rounds"`     // alternating rounds the measured calls were split into
	Mode       string   `json:"mode"`       // Options.Mode
	Redis      bool     `json:"redis"`      // the sidecars shared Redis
	Targets    []Target `json:"targets"`    // the no-op baseline first, then m1-authz
	Ratio      Ratio    `json:"ratio"`      // m1-authz / no-op
}

// Target is what one server measured.
type Target struct {
	Name         string         `json:"name"` // TargetNoop or TargetM1
	Addr         string         `json:"addr"`
	InProcess    bool           `json:"in_process"`
	Calls        uint64         `json:"calls"`  // completed measured calls, errors included
	Errors       uint64         `json:"errors"` // calls that failed or were not allowed
	ErrorCounts  map[string]int `json:"error_counts,omitempty"`
	Elapsed      time.Duration  `json:"elapsed_ns"`
	ChecksPerSec float64        `json:"checks_per_sec"` // completed calls per second
	P50          time.Duration  `json:"p50_ns"`         // latency of successful calls
	P95          time.Duration  `json:"p95_ns"`
	P99          time.Duration  `json:"p99_ns"`
	Mean         time.Duration  `json:"mean_ns"`
	Max          time.Duration  `json:"max_ns"`
	Timeline     []Interval     `json:"timeline,omitempty"`   // checks/s over the measured time, the rounds end to end
	Histogram    []Bucket       `json:"histogram,omitempty"`  // latencies of the successful calls
	RoundRates   []float64      `json:"round_checks_per_sec"` // checks/s of each round; a wide spread means a busy machine
	TimedOut     bool           `json:"timed_out,omitempty"`  // stopped at the time limit before Requests calls
	Cache        *CacheStats    `json:"cache,omitempty"`      // in-process m1-authz only
	Sidecars     int            `json:"sidecars,omitempty"`   // m1-authz processes that shared the load
	PID          int            `json:"pid,omitempty"`        // the process serving this target, when the run started it (the no-op server of m1 bench --addr)
	// MintedLive counts fresh approvals minted while a round was measured,
	// because the ones minted before it ran out (approval mode): that
	// minting took CPU from the servers and the round reads low.
	MintedLive uint64 `json:"minted_live,omitempty"`
}

// CacheStats is what m1-authz's decision cache did during the measured calls.
type CacheStats struct {
	Enabled bool   `json:"enabled"`
	Why     string `json:"why,omitempty"` // why the policy's decisions are not cached
	Hits    uint64 `json:"hits"`
	Misses  uint64 `json:"misses"`
}

// Ratio compares m1-authz with the no-op baseline; zero when either was not
// measured. Throughput above 1 means m1-authz answered more checks per
// second; latencies above 1 mean m1-authz was slower.
type Ratio struct {
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
}

// rounds is how many alternating rounds the measured calls are split into.
const rounds = 5

// Run benchmarks the no-op baseline and m1-authz (in-process, or
// opts.Addr). Both are warmed up, then measured in alternating rounds
// (no-op, m1-authz, no-op, …), so that a change in the machine's load while
// the benchmark runs affects both alike. It returns an error when a server
// cannot be started or reached or ctx ends; calls that fail or are not
// allowed are not an error of Run but are counted in the Report.
//
// In approval mode every m1-authz call carries an approval minted for it
// and used once; the approvals of a round are minted before the round
// starts (on every core), as many as the round is expected to need. The
// no-op server is sent one such request over and over: the load generator
// does the same work per call for both.
func Run(ctx context.Context, opts Options) (Report, error) {
	if opts.Mode == "" {
		opts.Mode = ModeCache
	}
	if opts.Sidecars == 0 {
		opts.Sidecars = 1
	}
	if err := opts.validate(); err != nil {
		return Report{}, fmt.Errorf("options: %w", err)
	}
	set, err := protoset()
	if err != nil {
		return Report{}, err
	}
	rep := Report{Options: opts, GOMAXPROCS: runtime.GOMAXPROCS(0), Mode: opts.Mode, Redis: opts.Redis != ""}

	env, err := setUp(ctx, opts)
	if env != nil {
		defer env.close(ctx)
	}
	if err != nil {
		return rep, err
	}
	targets := []Target{
		{Name: TargetNoop, Addr: env.noopAddr, InProcess: opts.NoopAddr == ""},
		{Name: TargetM1, Addr: strings.Join(env.m1Addrs, ","), InProcess: opts.Addr == "", Sidecars: len(env.m1Addrs)},
	}
	addrs := [][]string{{env.noopAddr}, env.m1Addrs}
	feeds := []*feed{env.noopFeed, env.m1Feed}

	base := load{
		protoset:    set,
		template:    env.template,
		concurrency: opts.Concurrency,
		connections: opts.Connections,
	}
	var warmRate float64 // m1-authz's warm-up calls per second
	for i, t := range targets {
		if opts.Warmup == 0 {
			break
		}
		if err := env.refill(i, opts.Warmup); err != nil {
			return rep, err
		}
		w := base
		w.addrs, w.feed, w.requests, w.limit = addrs[i], feeds[i], opts.Warmup, MaxDuration/rounds
		var wt tally
		if err := w.run(ctx, &wt); err != nil {
			return rep, fmt.Errorf("%s: warm-up: %w", t.Name, err)
		}
		if i == 1 {
			warmRate = wt.rate()
		}
	}
	hits, misses := env.cacheCounts()
	tallies := make([]tally, len(targets))
	n := rounds
	if opts.Duration == 0 {
		n = min(rounds, opts.Requests)
	}
	rep.Rounds = n
	var mintedLive uint64
	for r := range n {
		for i, t := range targets {
			l := base
			l.addrs, l.feed, l.rate = addrs[i], feeds[i], opts.Rate
			need := 0
			if opts.Duration > 0 {
				l.limit = opts.Duration / rounds
				// Enough for the round at the best rate seen so far, and a quarter more.
				best := warmRate
				if rs := tallies[i].rates; len(rs) > 0 {
					best = max(best, slices.Max(rs))
				}
				if opts.Rate > 0 {
					best = opts.Rate
				}
				need = int(1.25*best*l.limit.Seconds()) + 2*opts.Concurrency
			} else {
				l.requests, l.limit = share(opts.Requests, n, r), MaxDuration/rounds
				need = l.requests + 2*opts.Concurrency
			}
			if err := env.refill(i, min(need, MaxRequests)); err != nil {
				return rep, err
			}
			end := func() {}
			if opts.Round != nil {
				end = opts.Round(t.Name)
			}
			err := l.run(ctx, &tallies[i])
			end()
			if err != nil {
				return rep, fmt.Errorf("%s: round %d: %w", t.Name, r+1, err)
			}
			if i == 1 {
				mintedLive += feeds[i].extra.Load()
				if p := feeds[i].err.Load(); p != nil {
					return rep, fmt.Errorf("%s: round %d: %w", t.Name, r+1, *p)
				}
			}
		}
	}
	for i := range targets {
		t, tl := &targets[i], &tallies[i]
		t.Calls, t.Errors, t.ErrorCounts, t.Elapsed, t.TimedOut = tl.calls, tl.errors, tl.errDist, tl.elapsed, tl.timedOut
		t.ChecksPerSec, t.P50, t.P99, t.RoundRates = tl.rate(), tl.percentile(50), tl.percentile(99), tl.rates
		t.P95, t.Mean = tl.percentile(95), tl.mean()
		t.Timeline, t.Histogram, t.Max = tl.timeline(), tl.histogram(), tl.percentile(100)
	}
	targets[1].MintedLive = mintedLive
	if len(env.servers) > 0 {
		ok, why := env.servers[0].cacheable()
		h, m := env.cacheCounts()
		targets[1].Cache = &CacheStats{Enabled: ok, Why: why, Hits: h - hits, Misses: m - misses}
	}
	rep.Targets = targets
	rep.Ratio = ratio(targets[0], targets[1])
	return rep, nil
}

// env is what a run sets up: the servers, Redis, the signer, and what is
// sent to each target.
type env struct {
	opts     Options
	noopAddr string
	stopNoop func()
	servers  []*m1Server // in-process m1-authz
	m1Addrs  []string
	redis    *RedisServer
	dir      string // the signer's JWKS
	signer   *Signer
	template []byte // a request of the run's shape
	noopFeed *feed
	m1Feed   *feed
}

// setUp starts the no-op server, Redis and the in-process sidecars as opts
// ask, and prepares what the load sends. The returned env (even with an
// error) must be closed.
func setUp(ctx context.Context, opts Options) (*env, error) {
	e := &env{opts: opts}
	var err error
	if opts.NoopAddr != "" {
		if err := reachable(ctx, opts.NoopAddr); err != nil {
			return e, fmt.Errorf("%s: %w", TargetNoop, err)
		}
		e.noopAddr = opts.NoopAddr
	} else if e.noopAddr, e.stopNoop, err = startGRPC(ctx, noop{}); err != nil {
		return e, fmt.Errorf("no-op server: %w", err)
	}
	if opts.Mode != ModeCache {
		if opts.Addr != "" {
			e.signer, err = LoadSigner(opts.KeyFile, opts.Audience)
		} else {
			e.signer, err = NewSigner(opts.Audience)
		}
		if err != nil {
			return e, fmt.Errorf("approval key: %w", err)
		}
	}
	if opts.Addr != "" {
		e.m1Addrs = strings.Split(opts.Addr, ",")
		for _, a := range e.m1Addrs {
			if err := reachable(ctx, a); err != nil {
				return e, fmt.Errorf("%s: %w", TargetM1, err)
			}
		}
	} else {
		cfg := m1Config{audit: opts.Audit, audience: opts.Audience}
		if e.signer != nil {
			if e.dir, err = os.MkdirTemp("", "m1-bench-keys-"); err != nil {
				return e, err
			}
			if cfg.jwksFile, err = e.signer.WriteJWKS(e.dir); err != nil {
				return e, fmt.Errorf("write JWKS: %w", err)
			}
		}
		switch opts.Redis {
		case "":
		case "start":
			if e.redis, err = StartRedis(ctx); err != nil {
				return e, err
			}
			cfg.redisURL = e.redis.URL()
		default:
			cfg.redisURL = opts.Redis
		}
		if cfg.redisURL != "" {
			if err := SeedRedis(ctx, cfg.redisURL); err != nil {
				return e, err
			}
		}
		for range opts.Sidecars {
			srv, err := startM1(ctx, cfg)
			if err != nil {
				return e, err
			}
			e.servers = append(e.servers, srv)
			e.m1Addrs = append(e.m1Addrs, srv.srv.Addr().String())
		}
	}
	switch opts.Mode {
	case ModeCache:
		if e.template, err = marshalRequest(); err != nil {
			return e, fmt.Errorf("marshal CheckRequest: %w", err)
		}
		e.noopFeed, e.m1Feed = fixedFeed(e.template), fixedFeed(e.template)
	case ModeGrant:
		tok, err := e.signer.Grant(time.Now(), grantUses)
		if err != nil {
			return e, fmt.Errorf("mint grant: %w", err)
		}
		if e.template, err = marshalTokenRequest(writeCallBody, tok); err != nil {
			return e, fmt.Errorf("marshal CheckRequest: %w", err)
		}
		e.noopFeed, e.m1Feed = fixedFeed(e.template), fixedFeed(e.template)
	case ModeApproval:
		if e.template, err = approvalRequest(e.signer); err != nil {
			return e, err
		}
		e.noopFeed = fixedFeed(e.template)
		e.m1Feed = &feed{more: func() ([]byte, error) { return approvalRequest(e.signer) }}
	}
	return e, nil
}

// grantUses is the grant's use limit in grant mode: more than any run makes.
const grantUses = 1 << 40

// refill gives target i (0 the no-op, 1 m1-authz) n fresh approvals for
// its next run, in approval mode; the other feeds send one request over
// and over and need nothing.
func (e *env) refill(i, n int) error {
	f := e.m1Feed
	if i != 1 || f.cycle {
		return nil
	}
	reqs, err := approvalRequests(e.signer, n)
	if err != nil {
		return err
	}
	f.reqs = reqs
	f.next.Store(0)
	f.extra.Store(0)
	return nil
}

// cacheCounts sums the decision cache counters of the in-process sidecars.
func (e *env) cacheCounts() (hits, misses uint64) {
	for _, s := range e.servers {
		h, m := s.cacheCounts()
		hits, misses = hits+h, misses+m
	}
	return hits, misses
}

// close stops what setUp started.
func (e *env) close(ctx context.Context) {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, s := range e.servers {
		_ = s.stop(stopCtx)
	}
	if e.redis != nil {
		e.redis.Stop()
	}
	if e.stopNoop != nil {
		e.stopNoop()
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

// share is round r's part of n calls split into k rounds.
func share(n, k, r int) int {
	s := n / k
	if r < n%k {
		s++
	}
	return s
}

// Spread is how far apart the fastest and the slowest round of t were,
// relative to the slowest: 0.1 means 10%. Rounds of an idle machine are
// within a few percent of each other.
func (t Target) Spread() float64 {
	if len(t.RoundRates) < 2 {
		return 0
	}
	lo, hi := slices.Min(t.RoundRates), slices.Max(t.RoundRates)
	if lo <= 0 {
		return math.Inf(1)
	}
	return hi/lo - 1
}

func ratio(base, m1 Target) Ratio {
	div := func(a, b float64) float64 {
		if a == 0 || b == 0 {
			return 0
		}
		return a / b
	}
	return Ratio{
		Throughput: div(m1.ChecksPerSec, base.ChecksPerSec),
		P50:        div(float64(m1.P50), float64(base.P50)),
		P99:        div(float64(m1.P99), float64(base.P99)),
	}
}
