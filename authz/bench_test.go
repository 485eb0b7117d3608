//go:build unix

// The benchmarks report cpu-ns/op, the process's CPU time (getrusage) per
// check, so they build on Unix only.

package authz

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/audit"
	"github.com/m1-agent/m1/internal/state/storestate"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
	"github.com/m1-agent/m1/toolcall"
)

// BenchmarkCheck measures the in-process Check path with the default policy.
// Targets (issue 2): cache hit ≤ 5 µs and ≤ 30 allocs; miss ≤ 60 µs.
// Auditing (issue 5) may add at most 10% to the cache hit: compare
// cache_hit_audited with cache_hit in the same run (make bench prints the
// ratio).
//
// Besides ns/op (wall time of the loop), the cache hit variants report
// cpu-ns/op: the CPU time of the whole process per check, on every core,
// including the audit writer's work for the events the loop recorded (it is
// drained before the clock stops). On a machine with cores to spare the
// writer runs beside the loop and ns/op hides it; cpu-ns/op does not, and
// it is less sensitive to other load on the host.
func BenchmarkCheck(b *testing.B) {
	ctx := context.Background()
	hit := checkReq(httpReq("POST", "/mcp?session=abc", mcpCall("read_file", `{"path":"/etc/hosts"}`),
		"content-type", "application/json", "x-request-id", "7bca2f0e-1c55-4d6a-9b1e-3f2d8c1a9e77", "x-envoy-auth-partial-body", "false"))
	// loop runs the cache hit; with rec, it waits for the audit writer to
	// hand every event to its sink.
	loop := func(b *testing.B, s testService, rec *audit.Recorder) {
		if _, err := s.Check(ctx, hit); err != nil {
			b.Fatal(err)
		}
		if rec != nil {
			waitWritten(b, rec, 1) // the warm-up check's event
		}
		b.ReportAllocs()
		cpu := cpuTime(b)
		b.ResetTimer()
		for b.Loop() {
			s.Check(ctx, hit)
		}
		b.StopTimer()
		if rec != nil {
			waitWritten(b, rec, 1+int64(b.N))
		}
		b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/op")
	}
	b.Run("cache_hit", func(b *testing.B) {
		loop(b, newService(b, defaultEngine(b), true), nil)
	})
	b.Run("cache_miss", func(b *testing.B) {
		s := newService(b, defaultEngine(b), false)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			s.Check(ctx, hit)
		}
	})
	// The cache hit with every decision recorded, chained and handed to a
	// sink that only counts: the cost of auditing on the check path (and of
	// the recorder), without the store's.
	b.Run("cache_hit_audit_enqueue", func(b *testing.B) {
		s := newService(b, defaultEngine(b), true)
		rec := newRecorder(b, discard{})
		s.opts.Audit = rec
		loop(b, s, rec)
	})
	// The same cache hit with every decision audited (queue, batch writer,
	// a real SQLite file), at any rate the writer keeps up with: the checks
	// are timed in bursts the queue holds (auditBurst) while the writer
	// stores the events beside them, on the other core, and the clock stops
	// between bursts until it has caught up. This is the check path's cost
	// with auditing on, which the issue allows at most 10% over cache_hit.
	b.Run("cache_hit_audited", func(b *testing.B) {
		s, rec := auditedService(b)
		if _, err := s.Check(ctx, hit); err != nil {
			b.Fatal(err)
		}
		waitWritten(b, rec, 1)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if i > 0 && i%auditBurst == 0 {
				b.StopTimer()
				waitWritten(b, rec, 1+int64(i))
				b.StartTimer()
			}
			s.Check(ctx, hit)
		}
		b.StopTimer()
		waitWritten(b, rec, 1+int64(b.N))
	})
	// The same, with checks as fast as one core makes them for as long as
	// the benchmark runs: once the queue is full each check waits for room
	// (nothing is dropped), so this measures the writer, SQLite's cost per
	// event, not the check path: the capacity of auditing to SQLite on a
	// host with no core to spare. cpu-ns/op includes the writer's CPU.
	b.Run("cache_hit_audited_saturated", func(b *testing.B) {
		s, rec := auditedService(b)
		loop(b, s, rec)
	})
	b.Run("parse_only", func(b *testing.B) {
		h := hit.GetAttributes().GetRequest().GetHttp()
		b.ReportAllocs()
		for b.Loop() {
			toolcall.Parse(h, toolcall.HeadersOf(h), testParseOpts)
		}
	})
}

// auditBurst is how many checks cache_hit_audited times in a row: well
// inside the recorder's queue (65,536), so that no check waits for room, and
// eight of the writer's batches, so that it is storing events beside the
// checks for most of each burst.
const auditBurst = 8192

// auditedService is a cache-hit service auditing to a real SQLite file.
func auditedService(b *testing.B) (testService, *audit.Recorder) {
	s := newService(b, defaultEngine(b), true)
	db, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "m1.db"), sqlite.DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	rec := newRecorder(b, db)
	s.opts.Audit = rec
	return s, rec
}

// newRecorder starts a recorder on sink, closed (flushed) at cleanup.
func newRecorder(b *testing.B, sink audit.Sink) *audit.Recorder {
	rec, err := audit.New(audit.Options{Writer: "bench", Sink: sink, SpoolPath: filepath.Join(b.TempDir(), "spool.jsonl")})
	if err != nil {
		b.Fatal(err)
	}
	rec.Start(context.Background())
	b.Cleanup(func() { rec.Close(context.Background()) })
	return rec
}

// waitWritten waits until the recorder has handed n events to its sink.
func waitWritten(b *testing.B, rec *audit.Recorder, n int64) {
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		if rec.Stats().Written >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("audit writer did not drain: %+v", rec.Stats())
		}
	}
}

// discard is an audit.Sink that drops events (the recorder counts them in
// Stats.Written).
type discard struct{}

func (discard) AppendEvents(context.Context, []store.Event) error { return nil }
func (discard) Ping(context.Context) error                        { return nil }

// cpuTime returns the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCheckFreshApprovalStored is BenchmarkCheckFreshApproval with
// each use recorded as m1-authz records it without Redis: in a real SQLite
// store (state/storestate: committed and fsynced before the allow, uses
// that arrive during a commit sharing the next one), against the in-process
// state.Memory that forgot every use on a restart. serial runs one check at
// a time (every use pays a commit); parallel keeps 16 in flight on the 2
// cores (as Envoy does), so that commits are shared. cpu-ns/op is the
// process's CPU time per check (getrusage), commits included: with 2 cores
// and a commit in flight ns/op hides part of it.
func BenchmarkCheckFreshApprovalStored(b *testing.B) {
	for _, tc := range []struct {
		name     string
		stored   bool
		parallel bool
	}{
		{"memory_serial", false, false},
		{"sqlite_serial", true, false},
		{"memory_parallel", false, true},
		{"sqlite_parallel", true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			f := newTokenFixture(b)
			ks, err := approval.ParseJWKS(must(f.key.PublicJWKS()))
			if err != nil {
				b.Fatal(err)
			}
			v, err := approval.NewVerifier(approval.VerifierOptions{Keys: ks, Audience: "tools.local", CacheSize: -1, Now: time.Now})
			if err != nil {
				b.Fatal(err)
			}
			f.opts.Tokens = v
			if tc.stored {
				f.opts.Uses = storedUses(b)
			}
			toks := make([]string, b.N)
			for i := range toks {
				toks[i] = f.mint(b, nil)
			}
			ctx := context.Background()
			var next, denied atomic.Int64
			check := func() {
				i := next.Add(1) - 1
				resp, _ := f.Check(ctx, checkReq(withToken(writeReq(`{"path":"/tmp/x"}`), toks[i])))
				if resp.GetStatus().GetCode() != 0 {
					denied.Add(1)
				}
			}
			b.ReportAllocs()
			cpu := cpuTime(b)
			b.ResetTimer()
			if tc.parallel {
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						check()
					}
				})
			} else {
				for range b.N {
					check()
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/op")
			if d := denied.Load(); d > 0 {
				b.Fatalf("%d of %d fresh approvals denied", d, b.N)
			}
		})
	}
}

// storedUses is a loaded storestate.Store on a new SQLite file whose epoch
// lies an hour back, so that tokens minted now are accepted.
func storedUses(b *testing.B) *storestate.Store {
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
	return s
}
