package bench

import (
	"testing"
	"time"

	"github.com/bojand/ghz/runner"
)

// rateReport is a ghz report of n calls completed evenly over total from
// start, each taking lat; every fifth failed when failing.
func rateReport(start time.Time, n int, total, lat time.Duration, failing bool) *runner.Report {
	rep := &runner.Report{Count: uint64(n), Total: total, ErrorDist: map[string]int{}}
	for i := range n {
		d := runner.ResultDetail{Timestamp: start.Add(lat + total*time.Duration(i)/time.Duration(n)), Latency: lat}
		if failing && i%5 == 4 {
			d.Error = "denied"
			rep.ErrorDist["denied"]++
		}
		rep.Details = append(rep.Details, d)
	}
	return rep
}

// TestTallyTimeline: two rounds, measured apart in wall time, are laid end
// to end; each step counts the calls that completed in it.
func TestTallyTimeline(t *testing.T) {
	var tl tally
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	tl.add(rateReport(t0, 100, time.Second, 2*time.Millisecond, false), false)
	tl.add(rateReport(t0.Add(time.Minute), 300, time.Second, time.Millisecond, true), false) // a minute later: no gap
	got := tl.timeline()
	if len(got) != 40 {
		t.Fatalf("timeline of 2 s = %d intervals, want 40 of 50 ms: %+v", len(got), got)
	}
	var calls, errs uint64
	for i, iv := range got {
		calls, errs = calls+iv.Calls, errs+iv.Errors
		wantRate, wantP99 := 100.0, 2*time.Millisecond
		if i >= 20 {
			wantRate, wantP99 = 300, time.Millisecond
		}
		if iv.Step != 50*time.Millisecond || iv.Start != time.Duration(i)*50*time.Millisecond || iv.PerSec() != wantRate || iv.P99 != wantP99 {
			t.Errorf("interval %d = %+v (%.0f/s), want start %s, step 50ms, %.0f/s, p99 %s", i, iv, iv.PerSec(), time.Duration(i)*50*time.Millisecond, wantRate, wantP99)
		}
	}
	if calls != 400 || errs != 60 {
		t.Errorf("timeline counts %d calls, %d errors; want 400 and 60", calls, errs)
	}
	if one := timeline([]callEnd{{at: time.Millisecond}}, 4*time.Millisecond); len(one) != 1 || one[0].Step != 4*time.Millisecond || one[0].PerSec() != 250 {
		t.Errorf("timeline of a 4 ms load = %+v, want one interval of 4 ms at 250/s", one)
	}
	if none := timeline(nil, time.Second); none != nil {
		t.Errorf("timeline of no calls = %+v, want none", none)
	}
}

func TestHistogram(t *testing.T) {
	lat := []time.Duration{120 * time.Microsecond, 150 * time.Microsecond, 1900 * time.Microsecond, 2 * time.Millisecond, 30 * time.Millisecond}
	got := Histogram(lat)
	want := map[time.Duration]uint64{150 * time.Microsecond: 2, 2 * time.Millisecond: 2, 30 * time.Millisecond: 1}
	if len(got) == 0 || got[0].UpTo != 150*time.Microsecond || got[len(got)-1].UpTo != 30*time.Millisecond {
		t.Fatalf("histogram = %+v, want buckets from 150µs to 30ms", got)
	}
	var total uint64
	for i, b := range got {
		total += b.Count
		if b.Count != want[b.UpTo] {
			t.Errorf("bucket ≤ %s = %d calls, want %d", b.UpTo, b.Count, want[b.UpTo])
		}
		if i > 0 && b.UpTo <= got[i-1].UpTo {
			t.Errorf("bucket bounds not increasing: %s after %s", b.UpTo, got[i-1].UpTo)
		}
	}
	// 150µs, 200, 300, 500, 700 µs, 1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30 ms.
	if total != 5 || len(got) != 15 {
		t.Errorf("histogram = %d buckets holding %d calls, want 15 holding 5: %+v", len(got), total, got)
	}
	if Histogram(nil) != nil {
		t.Error("histogram of no calls is not empty")
	}
}
