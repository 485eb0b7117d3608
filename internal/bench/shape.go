package bench

import (
	"math"
	"slices"
	"time"
)

// callEnd is one measured call: when it completed, in the load's measured
// time, how long it took, and whether it failed (or was not allowed).
type callEnd struct {
	at      time.Duration
	latency time.Duration
	failed  bool
}

// Interval is the calls that completed in one step of a load's measured
// time: its throughput over time (a drop shows a stall; rounds that differ
// show a busy machine).
type Interval struct {
	Start  time.Duration `json:"start_ns"` // from the start of the measured time
	Step   time.Duration `json:"step_ns"`
	Calls  uint64        `json:"calls"`  // completed, errors included
	Errors uint64        `json:"errors"` // failed or not allowed
	P99    time.Duration `json:"p99_ns"` // of the allowed calls; 0 when there were none
}

// PerSec is the interval's completed calls per second.
func (iv Interval) PerSec() float64 { return float64(iv.Calls) / iv.Step.Seconds() }

// Bucket is one bar of a latency histogram: the allowed calls that took
// more than the previous bucket's UpTo and at most UpTo.
type Bucket struct {
	UpTo  time.Duration `json:"le_ns"`
	Count uint64        `json:"count"`
}

// maxIntervals bounds a timeline's length; steps are chosen from niceSteps
// so that it has at most this many intervals.
const maxIntervals = 60

var niceSteps = []time.Duration{
	10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second,
}

// Timeline splits calls (in measured time, lasting elapsed) into equal
// steps, the shortest of niceSteps that gives at most maxIntervals of
// them. A last part shorter than a step is left out (its rate would read
// low), unless it is all there is; an empty load has no timeline.
func timeline(calls []callEnd, elapsed time.Duration) []Interval {
	if len(calls) == 0 || elapsed <= 0 {
		return nil
	}
	step := niceSteps[len(niceSteps)-1]
	for _, s := range niceSteps {
		if elapsed <= s*maxIntervals {
			step = s
			break
		}
	}
	n := int(elapsed / step)
	if n == 0 {
		n, step = 1, elapsed
	}
	out := make([]Interval, n)
	lats := make([][]time.Duration, n)
	for i := range out {
		out[i] = Interval{Start: time.Duration(i) * step, Step: step}
	}
	for _, c := range calls {
		i := int(c.at / step)
		if i >= n {
			continue // in the part left out
		}
		out[i].Calls++
		if c.failed {
			out[i].Errors++
		} else {
			lats[i] = append(lats[i], c.latency)
		}
	}
	for i, l := range lats {
		out[i].P99 = nearestRank(l, 99)
	}
	return out
}

// nearestRank is the nearest-rank p-th percentile of ds, 0 for none. It
// sorts ds.
func nearestRank(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(math.Ceil(p/100*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// bucketMantissas are the histogram's bounds within each decade: about
// six per decade, so that a bar is at most 1.5 times as wide as the last.
var bucketMantissas = []float64{1, 1.5, 2, 3, 5, 7}

// Histogram counts sorted latencies in buckets whose bounds run 1, 1.5, 2,
// 3, 5, 7 times a power of ten microseconds, from the bucket of the
// fastest call to that of the slowest.
func Histogram(sorted []time.Duration) []Bucket {
	if len(sorted) == 0 {
		return nil
	}
	var out []Bucket
	i := 0
	for exp := 0; i < len(sorted) && exp < 12; exp++ {
		for _, m := range bucketMantissas {
			upTo := time.Duration(m * math.Pow(10, float64(exp)) * float64(time.Microsecond))
			var n uint64
			for i < len(sorted) && sorted[i] <= upTo {
				n++
				i++
			}
			if n > 0 || len(out) > 0 {
				out = append(out, Bucket{UpTo: upTo, Count: n})
			}
			if i == len(sorted) {
				return out
			}
		}
	}
	if i < len(sorted) { // beyond 7e11 µs: one last bucket
		out = append(out, Bucket{UpTo: sorted[len(sorted)-1], Count: uint64(len(sorted) - i)})
	}
	return out
}
