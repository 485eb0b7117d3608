package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"google.golang.org/grpc/mem"
)

// Load is one measured load of Check calls against one or more
// m1-authz (or any ext_authz server): what `m1 loadtest` drives. The
// calls in flight, the connections and the calls are split between Addrs.
type Load struct {
	Addrs       []string      // loopback host:port of each server
	Concurrency int           // calls in flight, at most MaxConcurrency
	Connections int           // gRPC connections they share; 0 = 1 per server
	Duration    time.Duration // how long the calls are started, at most MaxDuration
	Rate        float64       // calls started per second; 0 = as fast as answered
	// Request returns the serialized CheckRequest of call i (from 0).
	// Called from concurrent calls; it must be safe for that. Requests
	// that are not allowed count as errors.
	Request func(i uint64) []byte
}

// LoadResult is what a Load measured.
type LoadResult struct {
	Calls       uint64         // completed calls, errors included
	Errors      uint64         // calls that failed or were not allowed
	ErrorCounts map[string]int // by message
	Elapsed     time.Duration
	// Latencies of the allowed calls, sorted.
	Latencies []time.Duration
	Timeline  []Interval // calls per step of the measured time
}

// Rate is completed calls per second.
func (r LoadResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Calls) / r.Elapsed.Seconds()
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of the
// allowed calls' latencies, 0 when there were none.
func (r LoadResult) Percentile(p float64) time.Duration { return nearestRank(r.Latencies, p) }

// Mean is the mean latency of the allowed calls.
func (r LoadResult) Mean() time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range r.Latencies {
		sum += d
	}
	return sum / time.Duration(len(r.Latencies))
}

// TopErrors lists the most frequent errors, most frequent first, at most n.
func (r LoadResult) TopErrors(n int) []string { return topErrors(r.ErrorCounts, n) }

// RunLoad drives l with ghz until l.Duration has passed or ctx ends (then
// with ctx's error), and returns what it measured. Only loopback addresses
// are accepted.
func RunLoad(ctx context.Context, l Load) (LoadResult, error) {
	switch {
	case len(l.Addrs) == 0:
		return LoadResult{}, errors.New("load: no address")
	case l.Concurrency < len(l.Addrs) || l.Concurrency > MaxConcurrency:
		return LoadResult{}, fmt.Errorf("load: concurrency must be %d..%d, got %d", len(l.Addrs), MaxConcurrency, l.Concurrency)
	case l.Duration <= 0 || l.Duration > MaxDuration:
		return LoadResult{}, fmt.Errorf("load: duration must be in (0, %s], got %s", MaxDuration, l.Duration)
	case l.Request == nil:
		return LoadResult{}, errors.New("load: no Request")
	}
	for _, a := range l.Addrs {
		if err := loopback(a); err != nil {
			return LoadResult{}, fmt.Errorf("load: %w", err)
		}
	}
	set, err := protoset()
	if err != nil {
		return LoadResult{}, err
	}
	conns := l.Connections
	if conns <= 0 {
		conns = len(l.Addrs)
	}
	f := &feed{gen: func(i uint64) mem.SliceBuffer { return l.Request(i) }}
	ld := load{
		addrs: l.Addrs, protoset: set, template: l.Request(0), feed: f,
		concurrency: l.Concurrency, connections: min(conns, l.Concurrency),
		limit: l.Duration, rate: l.Rate,
	}
	var t tally
	if err := ld.run(ctx, &t); err != nil {
		return LoadResult{}, err
	}
	slices.Sort(t.latencies)
	return LoadResult{Calls: t.calls, Errors: t.errors, ErrorCounts: t.errDist, Elapsed: t.elapsed, Latencies: t.latencies, Timeline: t.timeline()}, nil
}

// CacheRequest is a cacheable CheckRequest (an MCP tools/call of read_file
// that the default policy allows without a token) for path n: the same n
// gives the same decision-cache key, a new n a miss.
func CacheRequest(n uint64) ([]byte, error) {
	body := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/srv/data/file-` +
		strconv.FormatUint(n, 10) + `.txt"}}}`
	return marshalTokenRequest(body, "")
}

// GrantRequest is the write_file call the grant mode sends, with token.
func GrantRequest(token string) ([]byte, error) { return marshalTokenRequest(writeCallBody, token) }
