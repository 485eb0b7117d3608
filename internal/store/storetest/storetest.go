// Package storetest is the conformance suite every store.Store backend
// passes: append and stream, filters, idempotent re-append, atomic batches,
// hash chains verified clean and broken (edited, deleted and inserted rows,
// tampered with through raw SQL), retention pruning, concurrent appenders,
// and migrations applied twice. RunRecords is the suite of store.Records:
// runs, proposals (compare-and-set updates and expiry under concurrency),
// tool calls, LLM calls and their costs. RunState is the suite of
// store.State: the state epoch, use counting and revocations.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// Backend is a store implementation under test.
type Backend struct {
	// Open returns a Store on the database that belongs to t, creating it
	// empty on the first call for t. Later calls for the same t open the
	// same database again, as another process would. Open closes the Stores
	// it returns with t.Cleanup.
	Open func(t *testing.T) store.Store
	// Tamper runs one SQL statement on t's database behind the Store's
	// back, as someone with write access to the database would: the suite
	// edits, deletes and inserts audit rows with it, and seeds the tables
	// the Store does not write yet. The statements use only literals, in
	// syntax both SQLite and PostgreSQL accept; times are written as
	// '2006-01-02T15:04:05.000000Z'.
	Tamper func(t *testing.T, sql string)
}

// sqlTime is how the suite writes time literals.
const sqlTime = "2006-01-02T15:04:05.000000Z"

// Run runs the suite.
func Run(t *testing.T, b Backend) {
	if b.Open == nil || b.Tamper == nil {
		t.Fatal("storetest.Run: Backend.Open and Backend.Tamper are required")
	}
	t.Run("append and stream round-trips every field", func(t *testing.T) { testRoundTrip(t, b) })
	t.Run("text is stored exactly", func(t *testing.T) { testExactText(t, b) })
	t.Run("filter", func(t *testing.T) { testFilter(t, b) })
	t.Run("callback error stops the stream", func(t *testing.T) { testStop(t, b) })
	t.Run("re-append is idempotent", func(t *testing.T) { testIdempotent(t, b) })
	t.Run("conflicting re-append stores nothing", func(t *testing.T) { testConflict(t, b) })
	t.Run("invalid events store nothing", func(t *testing.T) { testInvalid(t, b) })
	t.Run("chains and last seq", func(t *testing.T) { testChains(t, b) })
	t.Run("verify", func(t *testing.T) { testVerify(t, b) })
	t.Run("prune by time keeps chains verifiable", func(t *testing.T) { testPruneTime(t, b) })
	t.Run("prune stops at the first event to keep", func(t *testing.T) { testPruneContiguous(t, b) })
	t.Run("prune by kind", func(t *testing.T) { testPruneKind(t, b) })
	t.Run("prune runs, tool calls, proposals and revocations", func(t *testing.T) { testPruneTables(t, b) })
	t.Run("concurrent appenders", func(t *testing.T) { testConcurrent(t, b) })
	t.Run("two stores on one database", func(t *testing.T) { testTwoStores(t, b) })
	t.Run("migrations are idempotent", func(t *testing.T) { testReopen(t, b) })
	t.Run("ping, close twice, canceled context", func(t *testing.T) { testLifecycle(t, b) })
}

var base = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// gen returns n unchained events one second apart from start, varied
// enough to exercise every column.
func gen(prefix string, start time.Time, n int) []store.Event {
	out := make([]store.Event, n)
	for i := range out {
		e := store.Event{
			DecisionID:     fmt.Sprintf("%s-%d", prefix, i),
			Time:           start.Add(time.Duration(i)*time.Second + 123456789*time.Nanosecond),
			Kind:           store.KindDecision,
			Principal:      []string{"agent-a", "agent-b"}[i%2],
			RunID:          []string{"run-1", "run-2", ""}[i%3],
			Tool:           "fs.read",
			ArgsSHA256:     fmt.Sprintf("%064x", i),
			Decision:       "allow",
			Reason:         "ok",
			Status:         200,
			PolicyRevision: "rev-7",
			LatencyMicros:  int64(100 + i),
			CacheTier:      []string{"", "l1", "l2"}[i%3],
		}
		if i%2 == 1 {
			e.Decision, e.Reason, e.Status, e.Detail = "deny", "policy_denied", 403, "path outside workspace"
		}
		if i%4 == 0 {
			e.Args = json.RawMessage(fmt.Sprintf(`{"path": "/work/f%d.txt",  "n": %d}`, i, i))
			e.ProposalID, e.TokenJTI = fmt.Sprintf("prop-%d", i), fmt.Sprintf("jti-%d", i)
		}
		if i%4 == 2 { // arguments left out for their size: only the hash, marked
			e.ArgsTruncated = true
		}
		out[i] = e
	}
	return out
}

// chained generates and chains n events for writer.
func chained(c *store.Chainer, start time.Time, n int) []store.Event {
	ev := gen(c.Writer(), start, n)
	c.Chain(ev)
	return ev
}

func appendOK(t *testing.T, s store.Store, ev []store.Event) {
	t.Helper()
	if err := s.AppendEvents(context.Background(), ev); err != nil {
		t.Fatalf("AppendEvents(%d events) = %v", len(ev), err)
	}
}

func events(t *testing.T, s store.Store, f store.Filter) []store.Event {
	t.Helper()
	var out []store.Event
	if err := s.Events(context.Background(), f, func(e store.Event) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatalf("Events(%+v) = %v", f, err)
	}
	return out
}

func chain(t *testing.T, s store.Store, writer string) []store.Event {
	t.Helper()
	var out []store.Event
	if err := s.Chain(context.Background(), writer, func(e store.Event) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatalf("Chain(%q) = %v", writer, err)
	}
	return out
}

// verify streams writer's chain through a Verifier.
func verify(t *testing.T, s store.Store, writer string) (*store.Break, int64) {
	t.Helper()
	var v store.Verifier
	err := s.Chain(context.Background(), writer, v.Add)
	if err == nil {
		err = v.Close()
	}
	var b *store.Break
	if err != nil && !errors.As(err, &b) {
		t.Fatalf("Chain(%q) = %v", writer, err)
	}
	return b, v.Verified()
}

func verifyClean(t *testing.T, s store.Store, writer string, want int64) {
	t.Helper()
	b, n := verify(t, s, writer)
	if b != nil {
		t.Fatalf("verify %q = %v, want intact", writer, b)
	}
	if n != want {
		t.Fatalf("verify %q checked %d events, want %d", writer, n, want)
	}
}

func ids(ev []store.Event) []string {
	out := make([]string, len(ev))
	for i, e := range ev {
		out[i] = e.DecisionID
	}
	return out
}

// sameEvent reports how got (read back) differs from want (appended).
func sameEvent(got, want store.Event) string {
	if !got.Time.Equal(want.Time) || got.Time.Location() != time.UTC {
		return fmt.Sprintf("Time = %v, want %v (UTC)", got.Time, want.Time)
	}
	if got.ID <= 0 {
		return fmt.Sprintf("ID = %d, want > 0", got.ID)
	}
	g, w := got, want
	g.ID, g.Time, w.ID, w.Time = 0, time.Time{}, 0, time.Time{}
	if !reflect.DeepEqual(g, w) {
		return fmt.Sprintf("got  %+v\nwant %+v", g, w)
	}
	return ""
}

func testRoundTrip(t *testing.T, b Backend) {
	s := b.Open(t)
	c := store.NewChainer("m1-authz/host-1/42/20260301T120000.000000000Z")
	ev := chained(c, base, 12)
	appendOK(t, s, ev[:5])
	appendOK(t, s, ev[5:])
	got := events(t, s, store.Filter{})
	if len(got) != len(ev) {
		t.Fatalf("Events = %d events, want %d", len(got), len(ev))
	}
	for i := range got {
		if d := sameEvent(got[i], ev[i]); d != "" {
			t.Fatalf("event %d: %s", i, d)
		}
		if i > 0 && got[i].ID <= got[i-1].ID {
			t.Fatalf("IDs not increasing: %d after %d", got[i].ID, got[i-1].ID)
		}
	}
	verifyClean(t, s, c.Writer(), 12)
}

func testExactText(t *testing.T, b Backend) {
	s := b.Open(t)
	c := store.NewChainer("w-text")
	ev := gen("text", base, 4)
	ev[0].Detail = "nul\x00byte and bad utf-8 \xff\xfe"
	ev[0].Tool = "tool\x00"
	ev[1].Args = json.RawMessage(`not json {`)
	ev[2].Args, ev[2].ArgsTruncated = json.RawMessage(`{"z":1,"a":[1, 2,3],  "u":"\u0000 é \u00e9"}`), false
	ev[3].Args = json.RawMessage{}
	// JSON's and SQL's special characters, controls, DEL, and characters
	// some JSON encoders rewrite: each stored byte for byte.
	ev[1].Principal = `q"uo\te \\ \u0041 '; --` + "\t\n\r\x01\x1f\x7f \u2028\u2029 <>&"
	ev[1].Reason = `"`
	ev[3].Detail = `\`
	ev[2].RunID = "run \U0001F600 é"
	ev[3].Time = base.Add(10*time.Second + 987654321*time.Nanosecond).In(time.FixedZone("X", 3600))
	c.Chain(ev)
	appendOK(t, s, ev)
	got := events(t, s, store.Filter{})
	if len(got) != len(ev) {
		t.Fatalf("Events = %d events, want %d", len(got), len(ev))
	}
	for i := range got {
		if d := sameEvent(got[i], ev[i]); d != "" {
			t.Fatalf("event %d: %s", i, d)
		}
	}
	if string(got[2].Args) != string(ev[2].Args) {
		t.Fatalf("Args = %s, want byte for byte %s", got[2].Args, ev[2].Args)
	}
	verifyClean(t, s, c.Writer(), 4)
}

func testFilter(t *testing.T, b Backend) {
	s := b.Open(t)
	ca, cb := store.NewChainer("w-a"), store.NewChainer("w-b")
	a := chained(ca, base, 10) // times base+0s … base+9s (+0.123456789)
	bb := chained(cb, base, 10)
	appendOK(t, s, a)
	appendOK(t, s, bb)
	at := func(i int) time.Time { return a[i].Time }
	// Same times in both chains: (Time, ID) order interleaves a[i], b[i].
	inter := func(from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, a[i].DecisionID, bb[i].DecisionID)
		}
		return out
	}
	pick := func(ev []store.Event, keep func(store.Event) bool) []string {
		var out []string
		for _, e := range ev {
			if keep(e) {
				out = append(out, e.DecisionID)
			}
		}
		return out
	}
	both := make([]store.Event, 0, 20)
	for i := range a {
		both = append(both, a[i], bb[i])
	}
	for _, tc := range []struct {
		name string
		f    store.Filter
		want []string
	}{
		{"all", store.Filter{}, inter(0, 10)},
		{"since is inclusive", store.Filter{Since: at(7)}, inter(7, 10)},
		{"until is exclusive", store.Filter{Until: at(2)}, inter(0, 2)},
		{"window", store.Filter{Since: at(3), Until: at(5)}, inter(3, 5)},
		{"run", store.Filter{RunID: "run-2"}, pick(both, func(e store.Event) bool { return e.RunID == "run-2" })},
		{"agent", store.Filter{Agent: "agent-b"}, pick(both, func(e store.Event) bool { return e.Principal == "agent-b" })},
		{"agent and run and window", store.Filter{Agent: "agent-a", RunID: "run-1", Since: at(1)},
			pick(both, func(e store.Event) bool {
				return e.Principal == "agent-a" && e.RunID == "run-1" && !e.Time.Before(at(1))
			})},
		{"limit", store.Filter{Limit: 3}, inter(0, 10)[:3]},
		{"limit with since", store.Filter{Since: at(8), Limit: 3}, inter(8, 10)[:3]},
		{"no match", store.Filter{RunID: "run-none"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ids(events(t, s, tc.f)); !slices.Equal(got, tc.want) {
				t.Fatalf("Events(%s) = %v, want %v", tc.name, got, tc.want)
			}
		})
	}
}

func testStop(t *testing.T, b Backend) {
	s := b.Open(t)
	c := store.NewChainer("w-stop")
	appendOK(t, s, chained(c, base, 5))
	stop := errors.New("stop here")
	ctx := context.Background()
	n := 0
	err := s.Events(ctx, store.Filter{}, func(store.Event) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 2 {
		t.Fatalf("Events stopping at 2 = %v after %d events, want %v after 2", err, n, stop)
	}
	n = 0
	err = s.Chain(ctx, c.Writer(), func(store.Event) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Chain stopping at 1 = %v after %d events, want %v after 1", err, n, stop)
	}
	if err := s.Chains(ctx, func(string) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("Chains stopping = %v, want %v", err, stop)
	}
}

func testIdempotent(t *testing.T, b Backend) {
	s := b.Open(t)
	c := store.NewChainer("w-idem")
	ev := chained(c, base, 10)
	appendOK(t, s, ev[:6])
	appendOK(t, s, ev[:6])                    // the same batch again (a spool replay)
	appendOK(t, s, ev[3:])                    // overlapping the stored ones
	appendOK(t, s, append(ev[8:], ev[8:]...)) // duplicates within a batch
	if got := events(t, s, store.Filter{}); !slices.Equal(ids(got), ids(ev)) {
		t.Fatalf("after re-appends Events = %v, want each once: %v", ids(got), ids(ev))
	}
	verifyClean(t, s, c.Writer(), 10)
}

func testConflict(t *testing.T, b Backend) {
	s := b.Open(t)
	c := store.NewChainer("w-conflict")
	ev := chained(c, base, 7)
	appendOK(t, s, ev[:5])
	forged := ev[2]
	forged.Detail = "forged"
	forged.Hash = store.HashEvent(forged)
	err := s.AppendEvents(context.Background(), []store.Event{ev[5], forged, ev[6]})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("AppendEvents(a different seq 3) = %v, want ErrConflict", err)
	}
	if got := events(t, s, store.Filter{}); len(got) != 5 {
		t.Fatalf("after a failed batch Events = %v, want the first 5 only", ids(got))
	}
	// Within one batch too.
	other := ev[5]
	other.Detail = "changed"
	other.Hash = store.HashEvent(other)
	if err := s.AppendEvents(context.Background(), []store.Event{ev[5], other}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("AppendEvents(two different seq 6) = %v, want ErrConflict", err)
	}
	appendOK(t, s, ev[5:])
	verifyClean(t, s, c.Writer(), 7)
}

func testInvalid(t *testing.T, b Backend) {
	s := b.Open(t)
	c := store.NewChainer("w-invalid")
	ok := chained(c, base, 1)[0]
	for _, tc := range []struct {
		name string
		mod  func(e *store.Event)
	}{
		{"not chained", func(e *store.Event) { e.Writer, e.Seq, e.Hash = "", 0, "" }},
		{"seq 0", func(e *store.Event) { e.Seq = 0 }},
		{"no hash", func(e *store.Event) { e.Hash = "" }},
		{"no kind", func(e *store.Event) { e.Kind = "" }},
		{"checkpoint kind", func(e *store.Event) { e.Kind = store.KindCheckpoint }},
		{"no time", func(e *store.Event) { e.Time = time.Time{} }},
		{"args truncated and stored", func(e *store.Event) { e.ArgsTruncated, e.Args = true, json.RawMessage(`{}`) }},
	} {
		bad := ok
		bad.Seq, bad.DecisionID = 2, "bad"
		tc.mod(&bad)
		if err := s.AppendEvents(context.Background(), []store.Event{ok, bad}); !errors.Is(err, store.ErrInvalidEvent) {
			t.Errorf("AppendEvents(%s) = %v, want ErrInvalidEvent", tc.name, err)
		}
	}
	if got := events(t, s, store.Filter{}); len(got) != 0 {
		t.Fatalf("after refused batches Events = %v, want none", ids(got))
	}
	if err := s.AppendEvents(context.Background(), nil); err != nil {
		t.Fatalf("AppendEvents(nil) = %v", err)
	}
}

func testChains(t *testing.T, b Backend) {
	s := b.Open(t)
	ctx := context.Background()
	cb, ca := store.NewChainer("w-b"), store.NewChainer("w-a")
	evb := chained(cb, base, 6)
	eva := chained(ca, base, 3)
	appendOK(t, s, evb[3:]) // a later batch lands first
	appendOK(t, s, eva)
	appendOK(t, s, evb[:3])
	var writers []string
	if err := s.Chains(ctx, func(w string) error { writers = append(writers, w); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"w-a", "w-b"}; !slices.Equal(writers, want) {
		t.Fatalf("Chains = %v, want %v", writers, want)
	}
	if got := chain(t, s, "w-b"); !slices.Equal(ids(got), ids(evb)) {
		t.Fatalf("Chain(w-b) = %v, want seq order %v", ids(got), ids(evb))
	}
	for _, tc := range []struct {
		writer string
		seq    int64
		hash   string
	}{
		{"w-a", 3, eva[2].Hash},
		{"w-b", 6, evb[5].Hash},
		{"w-none", 0, ""},
	} {
		seq, hash, err := s.LastSeq(ctx, tc.writer)
		if err != nil || seq != tc.seq || hash != tc.hash {
			t.Errorf("LastSeq(%s) = %d, %q, %v; want %d, %q", tc.writer, seq, hash, err, tc.seq, tc.hash)
		}
	}
	if got := chain(t, s, "w-none"); len(got) != 0 {
		t.Fatalf("Chain(w-none) = %v, want none", ids(got))
	}
	// A resumed chainer continues where the store left off.
	seq, hash, _ := s.LastSeq(ctx, "w-a")
	more := chained(store.ResumeChainer("w-a", seq, hash), base.Add(time.Hour), 2)
	appendOK(t, s, more)
	verifyClean(t, s, "w-a", 5)
	verifyClean(t, s, "w-b", 6)
}

// lit quotes s as an SQL string literal.
func lit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// insertSQL is an INSERT of e into audit_events, as a forger would write it.
func insertSQL(e store.Event) string {
	return fmt.Sprintf(`INSERT INTO audit_events (writer, seq, prev_hash, hash, decision_id, time, kind, principal, tool, decision, reason, status)
		VALUES (%s, %d, %s, %s, %s, %s, %s, %s, %s, %s, %s, %d)`,
		lit(e.Writer), e.Seq, lit(e.PrevHash), lit(e.Hash), lit(e.DecisionID), lit(e.Time.UTC().Format(sqlTime)),
		lit(e.Kind), lit(e.Principal), lit(e.Tool), lit(e.Decision), lit(e.Reason), e.Status)
}

// renumber shifts seq >= from by delta (in two steps, so that the unique
// (writer, seq) index never sees a duplicate).
func renumber(t *testing.T, b Backend, writer string, from, delta int64) {
	b.Tamper(t, fmt.Sprintf(`UPDATE audit_events SET seq = seq + 1000000 WHERE writer = %s AND seq >= %d`, lit(writer), from))
	b.Tamper(t, fmt.Sprintf(`UPDATE audit_events SET seq = seq - 1000000 + %d WHERE writer = %s AND seq >= 1000000`, delta, lit(writer)))
}

func testVerify(t *testing.T, b Backend) {
	const w = "m1-authz/host-1/7/20260301T120000.000000000Z"
	forge := func(prev string, seq int64, rehash bool) store.Event {
		e := store.Event{Writer: w, Seq: seq, PrevHash: prev, DecisionID: "forged", Time: base.Add(2500 * time.Millisecond),
			Kind: store.KindDecision, Principal: "agent-a", Tool: "fs.write", Decision: "allow", Reason: "ok", Status: 200}
		e.Hash = "0000"
		if rehash {
			e.Hash = store.HashEvent(e)
		}
		return e
	}
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, ev []store.Event) // ev: the 6 stored events, with IDs
		kind   store.BreakKind
		seq    int64
		id     func(ev []store.Event) int64 // the Break's ID, nil for the forged row's
	}{
		{name: "intact"},
		{
			name: "edited",
			tamper: func(t *testing.T, ev []store.Event) {
				b.Tamper(t, `UPDATE audit_events SET decision = 'allow', reason = 'ok' WHERE writer = `+lit(w)+` AND seq = 4`)
			},
			kind: store.Edited, seq: 4, id: func(ev []store.Event) int64 { return ev[3].ID },
		},
		{
			name: "edited with a fresh hash",
			tamper: func(t *testing.T, ev []store.Event) {
				e := ev[3]
				e.Decision = "allow"
				b.Tamper(t, fmt.Sprintf(`UPDATE audit_events SET decision = 'allow', hash = %s WHERE writer = %s AND seq = 4`,
					lit(store.HashEvent(e)), lit(w)))
			},
			kind: store.Edited, seq: 4, id: func(ev []store.Event) int64 { return ev[3].ID },
		},
		{
			name: "edited last event",
			tamper: func(t *testing.T, ev []store.Event) {
				b.Tamper(t, `UPDATE audit_events SET principal = 'agent-z' WHERE writer = `+lit(w)+` AND seq = 6`)
			},
			kind: store.Edited, seq: 6, id: func(ev []store.Event) int64 { return ev[5].ID },
		},
		{
			// seq 3 (gen's event 2) had its arguments left out for their size.
			name: "truncation mark removed",
			tamper: func(t *testing.T, ev []store.Event) {
				if !ev[2].ArgsTruncated {
					t.Fatal("gen's event 2 is not marked args_truncated")
				}
				b.Tamper(t, `UPDATE audit_events SET args_truncated = false WHERE writer = `+lit(w)+` AND seq = 3`)
			},
			kind: store.Edited, seq: 3, id: func(ev []store.Event) int64 { return ev[2].ID },
		},
		{
			name: "truncation mark added",
			tamper: func(t *testing.T, ev []store.Event) {
				b.Tamper(t, `UPDATE audit_events SET args_truncated = true, args = NULL WHERE writer = `+lit(w)+` AND seq = 5`)
			},
			kind: store.Edited, seq: 5, id: func(ev []store.Event) int64 { return ev[4].ID },
		},
		{
			name: "deleted",
			tamper: func(t *testing.T, ev []store.Event) {
				b.Tamper(t, `DELETE FROM audit_events WHERE writer = `+lit(w)+` AND seq = 3`)
			},
			kind: store.Deleted, seq: 3, id: func(ev []store.Event) int64 { return ev[3].ID },
		},
		{
			name: "deleted head",
			tamper: func(t *testing.T, ev []store.Event) {
				b.Tamper(t, `DELETE FROM audit_events WHERE writer = `+lit(w)+` AND seq <= 2`)
			},
			kind: store.Deleted, seq: 1, id: func(ev []store.Event) int64 { return ev[2].ID },
		},
		{
			name: "deleted and renumbered",
			tamper: func(t *testing.T, ev []store.Event) {
				b.Tamper(t, `DELETE FROM audit_events WHERE writer = `+lit(w)+` AND seq = 3`)
				renumber(t, b, w, 4, -1)
			},
			kind: store.Deleted, seq: 3, id: func(ev []store.Event) int64 { return ev[3].ID },
		},
		{
			name: "inserted with a valid hash",
			tamper: func(t *testing.T, ev []store.Event) {
				renumber(t, b, w, 3, 1)
				b.Tamper(t, insertSQL(forge(ev[1].Hash, 3, true)))
			},
			kind: store.Inserted, seq: 3,
		},
		{
			name: "inserted with a junk hash",
			tamper: func(t *testing.T, ev []store.Event) {
				renumber(t, b, w, 3, 1)
				b.Tamper(t, insertSQL(forge(ev[1].Hash, 3, false)))
			},
			kind: store.Inserted, seq: 3,
		},
		{
			name: "inserted with a junk link",
			tamper: func(t *testing.T, ev []store.Event) {
				renumber(t, b, w, 3, 1)
				b.Tamper(t, insertSQL(forge("ffff", 3, false)))
			},
			kind: store.Inserted, seq: 3,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := b.Open(t)
			appendOK(t, s, chained(store.NewChainer(w), base, 6))
			ev := chain(t, s, w)
			if tc.tamper != nil {
				tc.tamper(t, ev)
			}
			brk, n := verify(t, s, w)
			if tc.kind == "" {
				if brk != nil {
					t.Fatalf("verify = %v, want intact", brk)
				}
				if n != 6 {
					t.Fatalf("verify checked %d events, want 6", n)
				}
				return
			}
			if brk == nil {
				t.Fatalf("verify = intact, want %s at seq %d", tc.kind, tc.seq)
			}
			if brk.Kind != tc.kind || brk.Seq != tc.seq || brk.Writer != w {
				t.Fatalf("verify = %v, want %s at seq %d", brk, tc.kind, tc.seq)
			}
			var wantID int64
			if tc.id != nil {
				wantID = tc.id(ev)
			} else {
				for _, e := range chain(t, s, w) {
					if e.DecisionID == "forged" {
						wantID = e.ID
					}
				}
			}
			if brk.ID != wantID {
				t.Fatalf("verify = %v: ID %d, want %d", brk, brk.ID, wantID)
			}
			if brk.Error() == "" {
				t.Fatal("Break.Error() is empty")
			}
		})
	}
}

func testPruneTime(t *testing.T, b Backend) {
	s := b.Open(t)
	ctx := context.Background()
	c := store.NewChainer("w-prune")
	ev := chained(c, base, 10)
	appendOK(t, s, ev)
	other := chained(store.NewChainer("w-new"), base.Add(time.Hour), 3)
	appendOK(t, s, other)
	n, err := s.Prune(ctx, ev[5].Time)
	if err != nil || n != 5 {
		t.Fatalf("Prune(before event 5) = %d, %v; want 5", n, err)
	}
	if got := events(t, s, store.Filter{}); !slices.Equal(ids(got), append(ids(ev[5:]), ids(other)...)) {
		t.Fatalf("after Prune Events = %v, want events 5… and the newer chain", ids(got))
	}
	ch := chain(t, s, c.Writer())
	if len(ch) == 0 || ch[0].Kind != store.KindCheckpoint || ch[0].Seq != 5 || ch[0].Hash != ev[4].Hash {
		t.Fatalf("Chain after Prune starts with %+v, want a checkpoint at seq 5", ch[0])
	}
	verifyClean(t, s, c.Writer(), 5)
	if seq, hash, err := s.LastSeq(ctx, c.Writer()); err != nil || seq != 10 || hash != ev[9].Hash {
		t.Fatalf("LastSeq after Prune = %d, %q, %v; want 10", seq, hash, err)
	}
	if n, err := s.Prune(ctx, ev[5].Time); err != nil || n != 0 {
		t.Fatalf("Prune again = %d, %v; want 0", n, err)
	}
	// A late replay of pruned events stores nothing again.
	appendOK(t, s, ev)
	if got := events(t, s, store.Filter{}); len(got) != 8 {
		t.Fatalf("after replaying pruned events Events = %v, want 8", ids(got))
	}
	verifyClean(t, s, c.Writer(), 5)
	// Everything, and a whole chain.
	n, err = s.Prune(ctx, base.Add(24*time.Hour), store.PruneEvents)
	if err != nil || n != 8 {
		t.Fatalf("Prune(everything) = %d, %v; want 8", n, err)
	}
	verifyClean(t, s, c.Writer(), 0)
	if seq, hash, err := s.LastSeq(ctx, c.Writer()); err != nil || seq != 10 || hash != ev[9].Hash {
		t.Fatalf("LastSeq after pruning the whole chain = %d, %q, %v; want 10 (the checkpoint)", seq, hash, err)
	}
	var writers []string
	_ = s.Chains(ctx, func(w string) error { writers = append(writers, w); return nil })
	if !slices.Equal(writers, []string{"w-new", "w-prune"}) {
		t.Fatalf("Chains after pruning = %v, want both (their checkpoints remain)", writers)
	}
	// The chain continues past its checkpoint.
	more := chained(store.ResumeChainer(c.Writer(), 10, ev[9].Hash), base.Add(48*time.Hour), 2)
	appendOK(t, s, more)
	verifyClean(t, s, c.Writer(), 2)
}

func testPruneContiguous(t *testing.T, b Backend) {
	s := b.Open(t)
	c := store.NewChainer("w-late")
	ev := gen("late", base, 8)
	ev[3].Time = base.Add(time.Hour) // chained 4th but late: it blocks the prune
	c.Chain(ev)
	appendOK(t, s, ev)
	n, err := s.Prune(context.Background(), base.Add(time.Minute))
	if err != nil || n != 3 {
		t.Fatalf("Prune = %d, %v; want 3 (up to the event to keep)", n, err)
	}
	if got := chain(t, s, c.Writer()); len(got) != 6 || got[1].Seq != 4 {
		t.Fatalf("Chain after Prune = %v, want the checkpoint then seq 4…8", ids(got))
	}
	verifyClean(t, s, c.Writer(), 5)
}

func testPruneKind(t *testing.T, b Backend) {
	s := b.Open(t)
	ctx := context.Background()
	c := store.NewChainer("w-kinds")
	ev := gen("kinds", base, 6)
	ev[2].Kind, ev[5].Kind = "proposal", "proposal"
	c.Chain(ev)
	appendOK(t, s, ev)
	cut := base.Add(time.Hour)
	for _, step := range []struct {
		kinds []string
		want  int64
		left  int
	}{
		{[]string{store.PruneRevokedTokens}, 0, 6},
		{[]string{"approval"}, 0, 6},
		{[]string{store.KindDecision}, 2, 4}, // stops at the proposal
		{[]string{"proposal"}, 1, 3},
		{[]string{store.KindDecision, "approval"}, 2, 1},
		{[]string{store.PruneEvents}, 1, 0},
	} {
		n, err := s.Prune(ctx, cut, step.kinds...)
		if err != nil || n != step.want {
			t.Fatalf("Prune(%v) = %d, %v; want %d", step.kinds, n, err, step.want)
		}
		if got := events(t, s, store.Filter{}); len(got) != step.left {
			t.Fatalf("after Prune(%v) Events = %v, want %d left", step.kinds, ids(got), step.left)
		}
		verifyClean(t, s, c.Writer(), int64(step.left))
	}
}

func testPruneTables(t *testing.T, b Backend) {
	s := b.Open(t)
	ctx := context.Background()
	appendOK(t, s, chained(store.NewChainer("w-keep"), base, 3))
	old, now, far := lit("2020-01-01T00:00:00.000000Z"), lit(base.Format(sqlTime)), lit("2999-01-01T00:00:00.000000Z")
	for _, q := range []string{
		`INSERT INTO agent_runs (id, agent, status, cost_usd, created_at, updated_at) VALUES ('r-old', 'agent-a', 'completed', 0.25, ` + old + `, ` + old + `)`,
		`INSERT INTO agent_runs (id, agent, status, created_at, updated_at) VALUES ('r-new', 'agent-a', 'running', ` + now + `, ` + now + `)`,
		`INSERT INTO tool_calls (id, run_id, agent, tool, args, created_at, updated_at) VALUES ('tc-1', 'r-old', 'agent-a', 'fs.read', '{"p":1}', ` + old + `, ` + old + `)`,
		`INSERT INTO tool_calls (id, run_id, agent, tool, created_at, updated_at) VALUES ('tc-2', 'r-new', 'agent-a', 'fs.read', ` + old + `, ` + old + `)`,
		`INSERT INTO tool_calls (id, run_id, agent, tool, created_at, updated_at) VALUES ('tc-3', 'r-new', 'agent-a', 'fs.read', ` + now + `, ` + now + `)`,
		`INSERT INTO proposals (id, run_id, agent, tool, args_sha256, risk, created_at, updated_at) VALUES ('p-1', 'r-old', 'agent-a', 'fs.write', 'ab', 'high', ` + old + `, ` + old + `)`,
		`INSERT INTO proposals (id, agent, tool, args_sha256, created_at, expires_at, updated_at) VALUES ('p-2', 'agent-a', 'fs.write', 'ab', ` + old + `, ` + old + `, ` + old + `)`,
		`INSERT INTO proposals (id, run_id, agent, tool, args_sha256, created_at, updated_at) VALUES ('p-3', 'r-new', 'agent-a', 'fs.write', 'ab', ` + now + `, ` + now + `)`,
		`INSERT INTO revoked_tokens (jti, expires_at, created_at) VALUES ('jti-old', ` + old + `, ` + old + `)`,
		`INSERT INTO revoked_tokens (jti, expires_at, created_at) VALUES ('jti-new', ` + far + `, ` + now + `)`,
		`INSERT INTO revoked_tokens (sub, created_at) VALUES ('agent-x', ` + old + `)`,
	} {
		b.Tamper(t, q)
	}
	cut := time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
	farCut := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, step := range []struct {
		before time.Time
		kinds  []string
		want   int64
	}{
		{cut, []string{store.PruneRevokedTokens}, 1},    // jti-old
		{farCut, []string{store.PruneRevokedTokens}, 1}, // jti-new; agent-x lasts until lifted
		{cut, []string{store.PruneRuns}, 1},             // r-old, with tc-1 and p-1
		{cut, []string{store.PruneToolCalls}, 1},        // tc-2
		{cut, []string{store.PruneProposals}, 1},        // p-2
		{cut, []string{store.PruneRuns, store.PruneToolCalls, store.PruneProposals, store.PruneRevokedTokens}, 0},
		{farCut, []string{store.PruneToolCalls, store.PruneProposals}, 2}, // tc-3, p-3
		{farCut, []string{store.PruneRuns}, 1},                            // r-new
	} {
		n, err := s.Prune(ctx, step.before, step.kinds...)
		if err != nil || n != step.want {
			t.Fatalf("Prune(%s, %v) = %d, %v; want %d", step.before.Format(time.DateOnly), step.kinds, n, err, step.want)
		}
	}
	if got := events(t, s, store.Filter{}); len(got) != 3 {
		t.Fatalf("pruning tables touched events: %d left, want 3", len(got))
	}
	// No kinds: everything old enough, events too.
	if n, err := s.Prune(ctx, farCut); err != nil || n != 3 {
		t.Fatalf("Prune(all) = %d, %v; want 3 (the events)", n, err)
	}
}

func testConcurrent(t *testing.T, b Backend) {
	s := b.Open(t)
	const writers, batches, size = 8, 15, 10
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, writers+1)
	for i := range writers {
		wg.Go(func() {
			c := store.NewChainer(fmt.Sprintf("w-%02d", i))
			for j := range batches {
				if err := s.AppendEvents(ctx, chained(c, base.Add(time.Duration(j)*time.Minute), size)); err != nil {
					errs <- fmt.Errorf("writer %d batch %d: %w", i, j, err)
					return
				}
			}
		})
	}
	readerDone := make(chan struct{})
	go func() { // reads while they write
		defer close(readerDone)
		for ctx.Err() == nil {
			if err := s.Events(ctx, store.Filter{Limit: 50}, func(store.Event) error { return nil }); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("reader: %w", err)
				return
			}
		}
	}()
	wg.Wait()
	cancel()
	<-readerDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if got := events(t, s, store.Filter{}); len(got) != writers*batches*size {
		t.Fatalf("Events = %d, want %d", len(got), writers*batches*size)
	}
	for i := range writers {
		verifyClean(t, s, fmt.Sprintf("w-%02d", i), batches*size)
	}
}

func testTwoStores(t *testing.T, b Backend) {
	s1, s2 := b.Open(t), b.Open(t)
	const batches, size = 20, 10
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i, s := range []store.Store{s1, s2} {
		wg.Go(func() {
			c := store.NewChainer(fmt.Sprintf("proc-%d", i))
			for j := range batches {
				if err := s.AppendEvents(context.Background(), chained(c, base.Add(time.Duration(j)*time.Minute), size)); err != nil {
					errs <- fmt.Errorf("store %d batch %d: %w", i, j, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, s := range []store.Store{s1, s2} {
		if got := events(t, s, store.Filter{}); len(got) != 2*batches*size {
			t.Fatalf("Events = %d, want %d from both stores", len(got), 2*batches*size)
		}
	}
	verifyClean(t, s1, "proc-0", batches*size)
	verifyClean(t, s2, "proc-1", batches*size)
}

func testReopen(t *testing.T, b Backend) {
	s := b.Open(t)
	ev := chained(store.NewChainer("w-reopen"), base, 3)
	appendOK(t, s, ev)
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	s2 := b.Open(t) // migrations already applied
	s3 := b.Open(t)
	for _, s := range []store.Store{s2, s3} {
		if got := events(t, s, store.Filter{}); !slices.Equal(ids(got), ids(ev)) {
			t.Fatalf("after reopening Events = %v, want %v", ids(got), ids(ev))
		}
	}
}

func testLifecycle(t *testing.T, b Backend) {
	s := b.Open(t)
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Events(ctx, store.Filter{}, func(store.Event) error { return nil }); err == nil {
		t.Error("Events(canceled context) = nil, want an error")
	}
	if err := s.AppendEvents(ctx, chained(store.NewChainer("w-ctx"), base, 1)); err == nil {
		t.Error("AppendEvents(canceled context) = nil, want an error")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := s.Ping(context.Background()); err == nil {
		t.Fatal("Ping after Close = nil, want an error")
	}
}
