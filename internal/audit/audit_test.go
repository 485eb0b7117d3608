package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
)

// flaky is a real SQLite store that can be made unreachable: the fault
// injection stands for a database outage.
type flaky struct {
	*sqlite.Store
	down atomic.Bool
}

var errDown = errors.New("store down (injected)")

func (f *flaky) AppendEvents(ctx context.Context, events []store.Event) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.AppendEvents(ctx, events)
}

func (f *flaky) Ping(ctx context.Context) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.Ping(ctx)
}

func newSQLite(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "m1.db"), sqlite.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func event(i int) store.Event {
	return store.Event{
		DecisionID: fmt.Sprintf("d-%05d", i), Time: time.Now().UTC(), Kind: store.KindDecision,
		Principal: "agent-42", Tool: "read_file", ArgsSHA256: "00", Decision: "allow", Reason: "ok", Status: 200,
		PolicyRevision: "rev", LatencyMicros: 5,
	}
}

func ids(t *testing.T, s store.Store) map[string]int {
	t.Helper()
	seen := map[string]int{}
	err := s.Events(context.Background(), store.Filter{}, func(e store.Event) error {
		seen[e.DecisionID]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return seen
}

func TestNothingLostThroughAnOutage(t *testing.T) {
	db := &flaky{Store: newSQLite(t)}
	dir := t.TempDir()
	r, err := New(Options{Writer: "test/1", Sink: db, SpoolPath: filepath.Join(dir, "spool.jsonl"),
		QueueSize: 64, BatchSize: 16, FlushEvery: 5 * time.Millisecond, RetryEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(context.Background())
	var wg sync.WaitGroup
	const n = 3000
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				if i == n/3 {
					db.down.Store(true) // outage mid-traffic
				}
				if i == 2*n/3 {
					db.down.Store(false)
				}
				r.Record(event(i))
			}
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	seen := ids(t, db)
	for i := range n {
		if c := seen[fmt.Sprintf("d-%05d", i)]; c != 1 {
			t.Fatalf("decision d-%05d stored %d times, want exactly once", i, c)
		}
	}
	if st := r.Stats(); st.SpoolEvents != 0 {
		t.Errorf("spool still holds %d events after recovery", st.SpoolEvents)
	}
	// The chain is intact: every event in seq order, linked by hash.
	var events []store.Event
	if err := db.Chain(ctx, "test/1", func(e store.Event) error { events = append(events, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if b := store.VerifyChain(events); b != nil || len(events) != n {
		t.Fatalf("chain of %d events: %v", len(events), b)
	}
}

func TestSpoolSurvivesRestart(t *testing.T) {
	db := &flaky{Store: newSQLite(t)}
	db.down.Store(true)
	spool := filepath.Join(t.TempDir(), "spool.jsonl")
	r, err := New(Options{Writer: "test/a", Sink: db, SpoolPath: spool, FlushEvery: 5 * time.Millisecond, RetryEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(context.Background())
	for i := range 100 {
		r.Record(event(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.SpoolEvents != 100 || st.SpoolBytes == 0 {
		t.Fatalf("after Close with the store down: spool %+v, want 100 events", st)
	}
	// A new process finds the spool and replays it once the store is back.
	db.down.Store(false)
	r2, err := New(Options{Writer: "test/b", Sink: db, SpoolPath: spool, RetryEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r2.Start(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for r2.Stats().SpoolEvents != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("spool not replayed: %+v", r2.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := r2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if seen := ids(t, db); len(seen) != 100 {
		t.Fatalf("store holds %d decisions after replay, want 100", len(seen))
	}
}

// memSink keeps what it is given.
type memSink struct {
	mu     sync.Mutex
	events []store.Event
}

func (m *memSink) AppendEvents(_ context.Context, events []store.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, events...)
	return nil
}

func (m *memSink) Ping(context.Context) error { return nil }

// The writer is woken by full batches, not by its ticker: producers that
// outrun it on a small queue never wait for a tick, and nothing is lost or
// reordered in the chain.
func TestFullBatchesWakeTheWriter(t *testing.T) {
	sink := &memSink{}
	r, err := New(Options{Writer: "test/w", Sink: sink, SpoolPath: filepath.Join(t.TempDir(), "spool.jsonl"),
		QueueSize: 8, BatchSize: 4, FlushEvery: time.Hour, RetryEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(context.Background())
	// Each producer records one event, as a check does: one that waited
	// for room must still wake the writer for the events behind it.
	const producers, each = 200, 20
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range each {
			var wg sync.WaitGroup
			for p := range producers {
				wg.Go(func() { r.Record(event(i*producers + p)) })
			}
			wg.Wait()
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("producers stalled: %+v", r.Stats())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.events) != producers*each {
		t.Fatalf("sink got %d events, want %d", len(sink.events), producers*each)
	}
	if b := store.VerifyChain(sink.events); b != nil {
		t.Fatalf("chain: %v", b)
	}
	seen := map[string]bool{}
	for _, e := range sink.events {
		seen[e.DecisionID] = true
	}
	if len(seen) != producers*each {
		t.Fatalf("sink got %d distinct decisions, want %d", len(seen), producers*each)
	}
}

// BenchmarkRecord is the cost of Record on the decision path: events go to
// a sink that keeps nothing, in bursts the queue holds, and the clock stops
// while the writer catches up, so that the writer's pace (it chains every
// event) is not measured.
func BenchmarkRecord(b *testing.B) {
	r, err := New(Options{Writer: "bench", Sink: discard{}, SpoolPath: filepath.Join(b.TempDir(), "spool.jsonl")})
	if err != nil {
		b.Fatal(err)
	}
	r.Start(context.Background())
	b.Cleanup(func() { r.Close(context.Background()) })
	e := event(1)
	e.Args = []byte(`{"path":"/etc/hosts"}`)
	const burst = 4096
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		r.Record(e)
		if n++; n%burst == 0 {
			b.StopTimer()
			for r.Stats().Written < int64(n) {
				time.Sleep(time.Millisecond)
			}
			b.StartTimer()
		}
	}
}

type discard struct{}

func (discard) AppendEvents(context.Context, []store.Event) error { return nil }
func (discard) Ping(context.Context) error                        { return nil }

// Records racing Close are never lost: each ends in the store or, after
// Close, in the spool.
func TestRecordsRacingCloseAreKept(t *testing.T) {
	for round := 0; round < 10; round++ {
		sink := &memSink{}
		r, err := New(Options{Writer: "w", Sink: sink, SpoolPath: filepath.Join(t.TempDir(), "spool.jsonl"), QueueSize: 64, BatchSize: 16})
		if err != nil {
			t.Fatal(err)
		}
		r.Start(context.Background())
		const producers, each = 4, 100
		var wg sync.WaitGroup
		for p := 0; p < producers; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					r.Record(event(i))
				}
			}()
		}
		time.Sleep(time.Duration(round%5) * 100 * time.Microsecond)
		if err := r.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		sink.mu.Lock()
		stored := len(sink.events)
		sink.mu.Unlock()
		if got := int64(stored) + r.Stats().SpoolEvents; got != producers*each {
			t.Fatalf("round %d: %d stored + %d spooled = %d, want %d", round, stored, r.Stats().SpoolEvents, got, producers*each)
		}
	}
}

// failing refuses every write.
type failing struct{ memSink }

func (f *failing) AppendEvents(context.Context, []store.Event) error { return errDown }

// A batch kept in memory because both the store and the spool failed is
// not chained again when it is retried: its events keep their seq numbers.
func TestRetriedBatchKeepsItsChain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not-yet") // the spool's directory is missing: spool writes fail
	sink := &failing{}
	r, err := New(Options{Writer: "w", Sink: sink, SpoolPath: filepath.Join(dir, "spool.jsonl"), FlushEvery: 5 * time.Millisecond, RetryEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(context.Background())
	for i := 0; i < 10; i++ {
		r.Record(event(i))
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.Stats().LastError == "" {
		if time.Now().After(deadline) {
			t.Fatal("the flush never failed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // about ten more failed flushes of the same batch
	r.Record(event(10))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	waitSpool := time.Now().Add(5 * time.Second)
	for r.Stats().SpoolEvents < 11 {
		if time.Now().After(waitSpool) {
			t.Fatalf("spool holds %d events, want 11", r.Stats().SpoolEvents)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if seq, _ := r.chainer.Last(); seq != 11 {
		t.Fatalf("chain ends at seq %d after retries, want 11 (one seq per event)", seq)
	}
}

// Arguments beyond MaxArgsBytes are not stored, only their hash, and the
// event says so; through the store and through the spool alike, with the
// chain intact.
func TestArgumentsBeyondTheCapAreLeftOutAndMarked(t *testing.T) {
	const maxArgs = 100
	args := func(n int) []byte { // a JSON string of n bytes
		return []byte(`"` + strings.Repeat("a", n-2) + `"`)
	}
	for _, tc := range []struct {
		name  string
		spool bool
	}{{"store", false}, {"spool", true}} {
		t.Run(tc.name, func(t *testing.T) {
			db := &flaky{Store: newSQLite(t)}
			db.down.Store(tc.spool)
			r, err := New(Options{Writer: "test/cap", Sink: db, SpoolPath: filepath.Join(t.TempDir(), "spool.jsonl"),
				MaxArgsBytes: maxArgs, FlushEvery: 5 * time.Millisecond, RetryEvery: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			r.Start(context.Background())
			sizes := []int{0, maxArgs, maxArgs + 1, 1 << 20}
			for i, n := range sizes {
				e := event(i)
				if n > 0 {
					e.Args = args(n)
				}
				r.Record(e)
			}
			if tc.spool {
				deadline := time.Now().Add(10 * time.Second)
				for r.Stats().SpoolEvents < int64(len(sizes)) {
					if time.Now().After(deadline) {
						t.Fatalf("spool holds %d events, want %d", r.Stats().SpoolEvents, len(sizes))
					}
					time.Sleep(5 * time.Millisecond)
				}
				db.down.Store(false)
			}
			got := closeAndRead(t, r, db, "test/cap")
			if b := store.VerifyChain(got); b != nil || len(got) != len(sizes) {
				t.Fatalf("chain of %d events (want %d): %v", len(got), len(sizes), b)
			}
			for i, e := range got {
				n := sizes[i]
				wantLen, wantMark := n, false
				if n > maxArgs {
					wantLen, wantMark = 0, true
				}
				if len(e.Args) != wantLen || e.ArgsTruncated != wantMark {
					t.Errorf("event with %d bytes of args: stored %d bytes, args_truncated %v; want %d, %v",
						n, len(e.Args), e.ArgsTruncated, wantLen, wantMark)
				}
				if e.ArgsSHA256 == "" {
					t.Errorf("event %d lost its args_sha256", i)
				}
			}
		})
	}
}

// MaxArgsBytes bounds the arguments as stored, where <, > and & take six
// bytes each (store.Chain's form): 42 bytes of "<…" are 242 stored.
func TestArgumentsCapCountsTheStoredForm(t *testing.T) {
	const maxArgs = 100
	db := &flaky{Store: newSQLite(t)}
	r, err := New(Options{Writer: "test/cap", Sink: db, SpoolPath: filepath.Join(t.TempDir(), "spool.jsonl"),
		MaxArgsBytes: maxArgs, FlushEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(context.Background())
	sent := [][]byte{[]byte(`"` + strings.Repeat("<", 10) + `"`), []byte(`"` + strings.Repeat("<", 40) + `"`)}
	for i, a := range sent {
		e := event(i)
		e.Args = a
		r.Record(e)
	}
	got := closeAndRead(t, r, db, "test/cap")
	if len(got) != 2 {
		t.Fatalf("%d events stored, want 2", len(got))
	}
	if len(got[0].Args) != 62 || got[0].ArgsTruncated {
		t.Errorf("12 bytes of args (62 stored): stored %d bytes, truncated %v; want 62, false", len(got[0].Args), got[0].ArgsTruncated)
	}
	if len(got[1].Args) != 0 || !got[1].ArgsTruncated {
		t.Errorf("42 bytes of args (242 stored, cap %d): stored %d bytes, truncated %v; want 0, true", maxArgs, len(got[1].Args), got[1].ArgsTruncated)
	}
}

// hanging is a store whose appends hang until released (or their context
// ends), as a PostgreSQL that accepts connections and never answers.
type hanging struct {
	*sqlite.Store
	entered chan struct{}
	release chan struct{}
}

func (h *hanging) AppendEvents(ctx context.Context, events []store.Event) error {
	h.entered <- struct{}{}
	select {
	case <-h.release:
		return h.Store.AppendEvents(ctx, events)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats (/health) answers while the writer waits on a store that hangs.
func TestStatsWhileTheStoreHangs(t *testing.T) {
	h := &hanging{Store: newSQLite(t), entered: make(chan struct{}, 4), release: make(chan struct{})}
	r, err := New(Options{Writer: "test/hang", Sink: h, SpoolPath: filepath.Join(t.TempDir(), "spool.jsonl"),
		FlushEvery: 5 * time.Millisecond, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(context.Background())
	r.Record(event(0))
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not reach the store")
	}
	got := make(chan Stats, 1)
	go func() { got <- r.Stats() }()
	select {
	case st := <-got:
		if st.Written != 0 {
			t.Errorf("Stats while the append hangs = %+v, want nothing written yet", st)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Stats waited for the store's append")
	}
	close(h.release)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Written != 1 {
		t.Errorf("Stats after the append = %+v, want 1 written", st)
	}
}

// closeAndRead closes r (flushing it) and returns writer's chain in db.
func closeAndRead(t *testing.T, r *Recorder, db *flaky, writer string) []store.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var got []store.Event
	if err := db.Chain(ctx, writer, func(e store.Event) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}
