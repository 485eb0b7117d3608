package audit

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
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
