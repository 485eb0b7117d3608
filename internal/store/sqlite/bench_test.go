//go:build unix

// BenchmarkAppendEvents reports cpu-ns/event (getrusage), so it builds on
// Unix only.

package sqlite_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// BenchmarkAppendEvents writes chained decision events, as the audit
// recorder does, in batches of 1024 (one transaction each; an op is a
// batch) to a file that grows as it runs. It reports events/s (wall time,
// fsyncs included) and cpu-ns/event (the process's CPU time, which the
// audit writer takes from the checks beside it). Chaining is not timed.
func BenchmarkAppendEvents(b *testing.B) {
	const batch = 1024
	s := open(b, filepath.Join(b.TempDir(), "m1.db"))
	ctx := context.Background()
	c := store.NewChainer("m1-authz/bench-host/4242/20260101T000000.000000000Z")
	events := make([]store.Event, batch)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var n int
	var cpu time.Duration
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i := range events {
			events[i] = benchEvent(n, t0.Add(time.Duration(n)*37*time.Microsecond))
			n++
		}
		c.Chain(events)
		before := cpuTime(b)
		b.StartTimer()
		if err := s.AppendEvents(ctx, events); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += cpuTime(b) - before
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/event")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(n), "cpu-ns/event")
}

// benchEvent is a realistic decision: a SPIFFE principal out of 20, a
// decision id as m1-authz makes them, read_file with its (non-sensitive)
// arguments stored, a cache hit; one in ten a deny with a detail, one in
// four with a token and a run.
func benchEvent(i int, t time.Time) store.Event {
	var raw [14]byte
	ms := uint64(t.UnixMilli())
	binary.BigEndian.PutUint64(raw[:8], ms<<16)
	binary.BigEndian.PutUint64(raw[6:], 0x9e3779b97f4a7c15+uint64(i))
	args := fmt.Sprintf(`{"path":"/srv/data/file-%d.txt"}`, i%500)
	sum := sha256.Sum256([]byte(args))
	e := store.Event{
		DecisionID: hex.EncodeToString(raw[:]), Time: t, Kind: store.KindDecision,
		Principal: fmt.Sprintf("spiffe://cluster.local/ns/agents/sa/agent-%d", i%20),
		Tool:      "read_file", ArgsSHA256: hex.EncodeToString(sum[:]), Args: []byte(args),
		Decision: "allow", Reason: "ok", Status: 200,
		PolicyRevision: "sha256:4f1c2a9be07d5d3a8c6e1f0b2d4a6c8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c",
		LatencyMicros:  int64(3 + i%7), CacheTier: "l1",
	}
	if i%10 == 9 {
		e.Decision, e.Reason, e.Status, e.CacheTier = "deny", "policy_denied", 403, ""
		e.Detail = "read_file outside the agent's workspace"
	}
	if i%4 == 3 {
		e.TokenJTI = fmt.Sprintf("jti-%08x", i)
		e.RunID = fmt.Sprintf("run-%04d", i/1000)
	}
	return e
}

// cpuTime returns the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
