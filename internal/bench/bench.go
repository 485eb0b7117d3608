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
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime"
	"slices"
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
	Addr        string        `json:"addr,omitempty"` // a running m1-authz (loopback host:port) to measure instead of an in-process one
	Audit       bool          `json:"audit"`          // the in-process m1-authz also audits every decision (SQLite in a temp dir)
	Rate        float64       `json:"rate,omitempty"` // measured calls started per second per target, at most MaxRate; 0 = as fast as they are answered
}

// DefaultOptions returns the defaults of `m1 bench`.
func DefaultOptions() Options {
	return Options{
		Concurrency: 16,
		Connections: 1,
		Requests:    50_000,
		Warmup:      1000,
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
	if o.Addr != "" {
		if err := loopback(o.Addr); err != nil {
			return fmt.Errorf("Addr (--addr): %w", err)
		}
	}
	return nil
}

// loopback accepts host:port only when host is a loopback IP address.
func loopback(hostport string) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if port == "" || port == "0" {
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
	P99          time.Duration  `json:"p99_ns"`
	RoundRates   []float64      `json:"round_checks_per_sec"` // checks/s of each round; a wide spread means a busy machine
	TimedOut     bool           `json:"timed_out,omitempty"`  // stopped at the time limit before Requests calls
	Cache        *CacheStats    `json:"cache,omitempty"`      // in-process m1-authz only
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
func Run(ctx context.Context, opts Options) (Report, error) {
	if err := opts.validate(); err != nil {
		return Report{}, fmt.Errorf("options: %w", err)
	}
	set, err := protoset()
	if err != nil {
		return Report{}, err
	}
	req, err := marshalRequest()
	if err != nil {
		return Report{}, fmt.Errorf("marshal CheckRequest: %w", err)
	}
	rep := Report{Options: opts, GOMAXPROCS: runtime.GOMAXPROCS(0)}

	noopAddr, stopNoop, err := startGRPC(ctx, noop{})
	if err != nil {
		return rep, fmt.Errorf("no-op server: %w", err)
	}
	defer stopNoop()
	targets := []Target{
		{Name: TargetNoop, Addr: noopAddr, InProcess: true},
		{Name: TargetM1, Addr: opts.Addr},
	}
	var srv *m1Server
	if opts.Addr != "" {
		if err := reachable(ctx, opts.Addr); err != nil {
			return rep, fmt.Errorf("%s: %w", TargetM1, err)
		}
	} else {
		if srv, err = startM1(ctx, opts.Audit); err != nil {
			return rep, err
		}
		defer func() {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = srv.stop(stopCtx)
		}()
		targets[1].Addr, targets[1].InProcess = srv.srv.Addr().String(), true
	}

	base := load{
		protoset:    set,
		request:     req,
		concurrency: opts.Concurrency,
		connections: opts.Connections,
	}
	for _, t := range targets {
		if opts.Warmup == 0 {
			break
		}
		w := base
		w.addr, w.requests, w.limit = t.Addr, opts.Warmup, MaxDuration/rounds
		if err := w.run(ctx, &tally{}); err != nil {
			return rep, fmt.Errorf("%s: warm-up: %w", t.Name, err)
		}
	}
	var hits, misses uint64
	if srv != nil {
		hits, misses = srv.cacheCounts()
	}
	tallies := make([]tally, len(targets))
	n := rounds
	if opts.Duration == 0 {
		n = min(rounds, opts.Requests)
	}
	rep.Rounds = n
	for r := range n {
		for i, t := range targets {
			l := base
			l.addr, l.rate = t.Addr, opts.Rate
			if opts.Duration > 0 {
				l.limit = opts.Duration / rounds
			} else {
				l.requests, l.limit = share(opts.Requests, n, r), MaxDuration/rounds
			}
			if err := l.run(ctx, &tallies[i]); err != nil {
				return rep, fmt.Errorf("%s: round %d: %w", t.Name, r+1, err)
			}
		}
	}
	for i := range targets {
		t, tl := &targets[i], &tallies[i]
		t.Calls, t.Errors, t.ErrorCounts, t.Elapsed, t.TimedOut = tl.calls, tl.errors, tl.errDist, tl.elapsed, tl.timedOut
		t.ChecksPerSec, t.P50, t.P99, t.RoundRates = tl.rate(), tl.percentile(50), tl.percentile(99), tl.rates
	}
	if srv != nil {
		ok, why := srv.cacheable()
		h, m := srv.cacheCounts()
		targets[1].Cache = &CacheStats{Enabled: ok, Why: why, Hits: h - hits, Misses: m - misses}
	}
	rep.Targets = targets
	rep.Ratio = ratio(targets[0], targets[1])
	return rep, nil
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
