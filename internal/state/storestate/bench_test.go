//go:build unix

package storestate_test

import (
	"context"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/storestate"
	"github.com/m1-agent/m1/internal/store/sqlite"
)

// BenchmarkUse records fresh approvals (each used once) in a real SQLite
// file from many goroutines at once, as m1-authz does under load without
// Redis: every Use returns after its group commit (fsync). It reports
// uses/s and the mean uses per commit. in_flight is the number of checks
// waiting at once (Envoy's concurrency to one sidecar). cpu-ns/use is the
// process's CPU time (getrusage) per use: what the checks beside it lose.
// Here nothing else runs, so every caller is in the batch at once and the
// linger (Options.Linger) only adds its millisecond to each commit: uses/s
// falls while cpu-ns/use falls with the larger commits; on a sidecar the
// other checks in flight join the batch during the linger.
func BenchmarkUse(b *testing.B) {
	for _, inFlight := range []int{1, 16, 50} {
		b.Run("in_flight="+strconv.Itoa(inFlight), func(b *testing.B) {
			ctx := context.Background()
			db, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "m1.db"), sqlite.DefaultOptions())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			if _, err := db.StateEpoch(ctx, time.Now().Add(-time.Hour)); err != nil {
				b.Fatal(err)
			}
			s, err := storestate.New(db, storestate.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Load(ctx); err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			var next atomic.Int64
			var failed atomic.Int64
			cpu := cpuTime(b)
			b.ResetTimer()
			var wg sync.WaitGroup
			for range inFlight {
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						ok, err := s.Use(ctx, state.Use{JTI: "jti-" + strconv.FormatInt(i, 36) + "-" + strconv.FormatInt(now.UnixNano(), 36),
							IssuedAt: now, Exp: now.Add(5 * time.Minute), MaxUses: 1})
						if !ok || err != nil {
							failed.Add(1)
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			if f := failed.Load(); f > 0 {
				b.Fatalf("%d of %d uses failed", f, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "uses/s")
			b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/use")
			if c := s.Stats().Commits; c > 0 {
				b.ReportMetric(float64(b.N)/float64(c), "uses/commit")
			}
		})
	}
}

// cpuTime returns the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
