package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// RunState runs the suite of store.State: the state epoch (set once, by
// the first of concurrent callers, and again after the state was emptied),
// use counting (limits, duplicates in one batch, expiry, atomic batches,
// two processes counting one grant), and revocations.
func RunState(t *testing.T, b Backend) {
	if b.Open == nil || b.Tamper == nil {
		t.Fatal("storetest.RunState: Backend.Open and Backend.Tamper are required")
	}
	t.Run("state: epoch is set once", func(t *testing.T) { testEpoch(t, b) })
	t.Run("state: uses count to their limit", func(t *testing.T) { testRecordUses(t, b) })
	t.Run("state: a changed epoch records nothing", func(t *testing.T) { testEpochChanged(t, b) })
	t.Run("state: expired uses", func(t *testing.T) { testUseExpiry(t, b) })
	t.Run("state: a grant used many times in one batch", func(t *testing.T) { testRepeatedUses(t, b) })
	t.Run("state: a bad batch records nothing", func(t *testing.T) { testUsesAtomic(t, b) })
	t.Run("state: two stores count one grant", func(t *testing.T) { testUsesTwoStores(t, b) })
	t.Run("state: revocations", func(t *testing.T) { testRevocations(t, b) })
}

// openState opens b's store as a store.State.
func openState(t *testing.T, b Backend) store.State {
	t.Helper()
	s, ok := b.Open(t).(store.State)
	if !ok {
		t.Fatalf("%T does not implement store.State", b.Open(t))
	}
	return s
}

// epochOf sets and returns the epoch of s.
func epochOf(t *testing.T, s store.State, candidate time.Time) time.Time {
	t.Helper()
	e, err := s.StateEpoch(context.Background(), candidate)
	if err != nil {
		t.Fatalf("StateEpoch = %v", err)
	}
	return e
}

func record(t *testing.T, s store.State, epoch, now time.Time, uses ...store.Use) []bool {
	t.Helper()
	got, err := s.RecordUses(context.Background(), epoch, now, uses)
	if err != nil {
		t.Fatalf("RecordUses(%v) = %v", uses, err)
	}
	if len(got) != len(uses) {
		t.Fatalf("RecordUses(%d uses) returned %d results", len(uses), len(got))
	}
	return got
}

func useRecords(t *testing.T, s store.State, now time.Time) map[string]store.UseRecord {
	t.Helper()
	out := map[string]store.UseRecord{}
	var last string
	if err := s.Uses(context.Background(), now, func(u store.UseRecord) error {
		if u.JTI <= last {
			return fmt.Errorf("Uses out of order: %q after %q", u.JTI, last)
		}
		last, out[u.JTI] = u.JTI, u
		return nil
	}); err != nil {
		t.Fatalf("Uses = %v", err)
	}
	return out
}

func testEpoch(t *testing.T, b Backend) {
	s := openState(t, b)
	first := base.Add(1500 * time.Millisecond)
	if e := epochOf(t, s, first); !e.Equal(base.Add(time.Second)) {
		t.Fatalf("StateEpoch(%v) on a new store = %v, want it in whole seconds (%v)", first, e, base.Add(time.Second))
	}
	if e := epochOf(t, s, base.Add(time.Hour)); !e.Equal(base.Add(time.Second)) {
		t.Fatalf("second StateEpoch = %v, want the first one kept (%v)", e, base.Add(time.Second))
	}
	if e := epochOf(t, openState(t, b), base.Add(2*time.Hour)); !e.Equal(base.Add(time.Second)) {
		t.Fatalf("StateEpoch from another process = %v, want %v", e, base.Add(time.Second))
	}

	// Concurrent first callers on an emptied store agree on one epoch.
	b.Tamper(t, `DELETE FROM state_epoch`)
	var wg sync.WaitGroup
	got := make([]time.Time, 8)
	errs := make([]error, 8)
	for i := range got {
		s := openState(t, b)
		wg.Go(func() {
			got[i], errs[i] = s.StateEpoch(context.Background(), base.Add(time.Duration(10+i)*time.Minute))
		})
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil || !got[i].Equal(got[0]) || got[i].Before(base.Add(10*time.Minute)) {
			t.Fatalf("concurrent StateEpoch #%d = %v, %v; want one new epoch for all (#0 %v)", i, got[i], errs[i], got[0])
		}
	}
}

func testRecordUses(t *testing.T, b Backend) {
	s := openState(t, b)
	epoch := epochOf(t, s, base)
	now, exp := base.Add(time.Minute), base.Add(10*time.Minute)
	approval := store.Use{JTI: "approval-1", MaxUses: 1, ExpiresAt: exp}
	grant := store.Use{JTI: "grant-1", MaxUses: 3, ExpiresAt: exp}
	for _, tc := range []struct {
		name string
		uses []store.Use
		want []bool
	}{
		{"first use of an approval", []store.Use{approval}, []bool{true}},
		{"replayed approval", []store.Use{approval}, []bool{false}},
		{"a grant used 4 times in one batch", []store.Use{grant, approval, grant, grant, grant}, []bool{true, false, true, true, false}},
		{"the grant used up", []store.Use{grant}, []bool{false}},
		{"other jtis", []store.Use{{JTI: "approval-2", MaxUses: 1, ExpiresAt: exp}, {JTI: "ü-ключ", MaxUses: 2, ExpiresAt: exp}}, []bool{true, true}},
		// One jti presented with two limits in one batch (two tokens that
		// share a jti): each use is decided in order, against the count so far.
		{"one jti, two limits", []store.Use{{JTI: "shared", MaxUses: 1, ExpiresAt: exp}, {JTI: "shared", MaxUses: 1, ExpiresAt: exp},
			{JTI: "shared", MaxUses: 3, ExpiresAt: exp}, {JTI: "approval-3", MaxUses: 1, ExpiresAt: exp}}, []bool{true, false, true, true}},
	} {
		got := record(t, s, epoch, now, tc.uses...)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Fatalf("RecordUses(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
	recs := useRecords(t, s, now)
	for jti, want := range map[string]store.UseRecord{
		"approval-1": {JTI: "approval-1", Uses: 1, MaxUses: 1, ExpiresAt: exp},
		"grant-1":    {JTI: "grant-1", Uses: 3, MaxUses: 3, ExpiresAt: exp},
		"ü-ключ":     {JTI: "ü-ключ", Uses: 1, MaxUses: 2, ExpiresAt: exp},
	} {
		if got := recs[jti]; got.Uses != want.Uses || got.MaxUses != want.MaxUses || !got.ExpiresAt.Equal(want.ExpiresAt) {
			t.Errorf("Uses()[%s] = %+v, want %+v", jti, got, want)
		}
	}
	if len(recs) != 6 {
		t.Errorf("Uses() = %d records, want 6", len(recs))
	}
	// A later use with a later expiry moves the record's expiry on.
	later := base.Add(20 * time.Minute)
	record(t, s, epoch, now, store.Use{JTI: "ü-ключ", MaxUses: 2, ExpiresAt: later})
	if got := useRecords(t, s, now)["ü-ключ"]; got.Uses != 2 || !got.ExpiresAt.Equal(later) {
		t.Errorf("after a second use with a later expiry: %+v, want 2 uses until %v", got, later)
	}
}

func testEpochChanged(t *testing.T, b Backend) {
	s := openState(t, b)
	epoch := epochOf(t, s, base)
	now, exp := base.Add(time.Minute), base.Add(10*time.Minute)
	use := store.Use{JTI: "j", MaxUses: 1, ExpiresAt: exp}
	if _, err := s.RecordUses(context.Background(), epoch.Add(time.Second), now, []store.Use{use}); !errors.Is(err, store.ErrEpochChanged) {
		t.Fatalf("RecordUses(another epoch) = %v, want ErrEpochChanged", err)
	}
	record(t, s, epoch, now, store.Use{JTI: "before", MaxUses: 1, ExpiresAt: exp})
	b.Tamper(t, `DELETE FROM state_epoch`) // the state was emptied or replaced
	if _, err := s.RecordUses(context.Background(), epoch, now, []store.Use{use}); !errors.Is(err, store.ErrEpochChanged) {
		t.Fatalf("RecordUses after the epoch was deleted = %v, want ErrEpochChanged", err)
	}
	if _, ok := useRecords(t, s, now)["j"]; ok {
		t.Fatal("a use refused for its epoch was recorded")
	}
	next := epochOf(t, s, base.Add(time.Hour))
	if !next.Equal(base.Add(time.Hour)) {
		t.Fatalf("StateEpoch after the epoch was deleted = %v, want the new candidate", next)
	}
	if got := record(t, s, next, now, use); !got[0] {
		t.Fatal("RecordUses under the new epoch = false, want true")
	}
}

func testUseExpiry(t *testing.T, b Backend) {
	s := openState(t, b)
	epoch := epochOf(t, s, base)
	exp := base.Add(time.Minute)
	use := store.Use{JTI: "short", MaxUses: 1, ExpiresAt: exp}
	if got := record(t, s, epoch, base, use); !got[0] {
		t.Fatal("first use = false")
	}
	if got := record(t, s, epoch, exp, use); got[0] {
		t.Fatal("use at its expiry = true, want false (still recorded)")
	}
	if recs := useRecords(t, s, exp.Add(time.Microsecond)); len(recs) != 0 {
		t.Fatalf("Uses after the expiry = %v, want none", recs)
	}
	after := exp.Add(time.Second)
	if got := record(t, s, epoch, after, store.Use{JTI: "short", MaxUses: 1, ExpiresAt: after.Add(time.Minute)}); !got[0] {
		t.Fatal("use after the record expired = false, want true (the record expired with its token)")
	}
	record(t, s, epoch, base, store.Use{JTI: "old", MaxUses: 1, ExpiresAt: base.Add(time.Second)})
	if n, err := s.PruneUses(context.Background(), base.Add(2*time.Second)); err != nil || n != 1 {
		t.Fatalf("PruneUses = %d, %v; want 1 (old)", n, err)
	}
	if recs := useRecords(t, s, base); len(recs) != 1 || recs["short"].Uses != 1 {
		t.Fatalf("Uses after PruneUses = %v, want short alone", recs)
	}
}

// testRepeatedUses: the uses of one grant in one batch count in order
// against what earlier batches counted, and start again on an expired
// record, as one use per batch would.
func testRepeatedUses(t *testing.T, b Backend) {
	s := openState(t, b)
	epoch := epochOf(t, s, base)
	now, exp := base.Add(time.Minute), base.Add(10*time.Minute)
	grant := store.Use{JTI: "grant-many", MaxUses: 4, ExpiresAt: exp}
	short := store.Use{JTI: "grant-short", MaxUses: 2, ExpiresAt: base.Add(2 * time.Minute)}
	if got := record(t, s, epoch, now, grant, short, short); fmt.Sprint(got) != "[true true true]" {
		t.Fatalf("first batch = %v, want all counted", got)
	}
	if got := record(t, s, epoch, now, grant, grant, grant, grant); fmt.Sprint(got) != "[true true true false]" {
		t.Fatalf("grant (4 uses, 1 counted before) used 4 times in one batch = %v, want the first 3 counted", got)
	}
	if got := record(t, s, epoch, now, grant, grant); fmt.Sprint(got) != "[false false]" {
		t.Fatalf("used-up grant used twice in one batch = %v, want neither counted", got)
	}
	// After grant-short's record expired, a token with that jti and a later
	// expiry starts from 0.
	after := base.Add(3 * time.Minute)
	again := store.Use{JTI: "grant-short", MaxUses: 2, ExpiresAt: after.Add(time.Minute)}
	if got := record(t, s, epoch, after, again, again, again); fmt.Sprint(got) != "[true true false]" {
		t.Fatalf("expired grant record used 3 times in one batch = %v, want 2 counted", got)
	}
	recs := useRecords(t, s, after)
	if r := recs["grant-many"]; r.Uses != 4 || r.MaxUses != 4 || !r.ExpiresAt.Equal(exp) {
		t.Errorf("grant-many = %+v, want 4 of 4 uses until %v", r, exp)
	}
	if r := recs["grant-short"]; r.Uses != 2 || !r.ExpiresAt.Equal(again.ExpiresAt) {
		t.Errorf("grant-short = %+v, want 2 uses until %v", r, again.ExpiresAt)
	}
}

func testUsesAtomic(t *testing.T, b Backend) {
	s := openState(t, b)
	epoch := epochOf(t, s, base)
	exp := base.Add(time.Minute)
	for _, bad := range []store.Use{{JTI: "", MaxUses: 1, ExpiresAt: exp}, {JTI: "x", MaxUses: 0, ExpiresAt: exp}, {JTI: "x", MaxUses: 1}} {
		if _, err := s.RecordUses(context.Background(), epoch, base, []store.Use{{JTI: "good", MaxUses: 1, ExpiresAt: exp}, bad}); err == nil {
			t.Errorf("RecordUses(good, %+v) = nil, want an error", bad)
		}
	}
	if recs := useRecords(t, s, base); len(recs) != 0 {
		t.Fatalf("Uses after refused batches = %v, want none", recs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.RecordUses(ctx, epoch, base, []store.Use{{JTI: "good", MaxUses: 1, ExpiresAt: exp}}); err == nil {
		t.Error("RecordUses(canceled context) = nil, want an error")
	}
	if recs := useRecords(t, s, base); len(recs) != 0 {
		t.Fatalf("Uses after a canceled batch = %v, want none", recs)
	}
}

func testUsesTwoStores(t *testing.T, b Backend) {
	s1, s2 := openState(t, b), openState(t, b)
	epoch := epochOf(t, s1, base)
	if e := epochOf(t, s2, base.Add(time.Hour)); !e.Equal(epoch) {
		t.Fatalf("the second store's epoch = %v, want %v", e, epoch)
	}
	grant := store.Use{JTI: "shared-grant", MaxUses: 5, ExpiresAt: base.Add(time.Hour)}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 12 {
		s := []store.State{s1, s2}[i%2]
		wg.Go(func() {
			got, err := s.RecordUses(context.Background(), epoch, base, []store.Use{grant, grant})
			if err != nil {
				t.Errorf("RecordUses = %v", err)
				return
			}
			for _, ok := range got {
				if ok {
					wins.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if wins.Load() != 5 {
		t.Fatalf("24 uses of a 5-use grant through two stores: %d counted, want 5", wins.Load())
	}
}

func testRevocations(t *testing.T, b Backend) {
	s := openState(t, b)
	ctx := context.Background()
	created := base.Add(123456 * time.Microsecond)
	put := func(r store.Revocation) {
		t.Helper()
		if err := s.PutRevocation(ctx, r); err != nil {
			t.Fatalf("PutRevocation(%+v) = %v", r, err)
		}
	}
	put(store.Revocation{JTI: "j-2", ExpiresAt: base.Add(time.Hour), CreatedBy: "admin:ab12", CreatedAt: created})
	put(store.Revocation{JTI: "j-1", ExpiresAt: base.Add(time.Minute), Reason: "leaked", CreatedBy: "admin:ab12", CreatedAt: created})
	put(store.Revocation{Sub: "agent-b", CreatedAt: created})
	put(store.Revocation{Sub: "agent-a", ExpiresAt: base.Add(time.Hour), CreatedAt: created})
	put(store.Revocation{JTI: "j-old", ExpiresAt: base.Add(-time.Minute), CreatedAt: created})
	// Stored again: replaced, not duplicated.
	put(store.Revocation{Sub: "agent-a", CreatedBy: "admin:cd34", CreatedAt: created.Add(time.Second)})
	for _, bad := range []store.Revocation{{CreatedAt: created}, {JTI: "a", Sub: "b", CreatedAt: created}, {JTI: "no-time"}} {
		if err := s.PutRevocation(ctx, bad); err == nil {
			t.Errorf("PutRevocation(%+v) = nil, want an error", bad)
		}
	}
	list := func(now time.Time) []store.Revocation {
		t.Helper()
		var out []store.Revocation
		if err := s.Revocations(ctx, now, func(r store.Revocation) error {
			out = append(out, r)
			return nil
		}); err != nil {
			t.Fatalf("Revocations = %v", err)
		}
		return out
	}
	got := list(base)
	want := []store.Revocation{
		{JTI: "j-1", ExpiresAt: base.Add(time.Minute), Reason: "leaked", CreatedBy: "admin:ab12", CreatedAt: created},
		{JTI: "j-2", ExpiresAt: base.Add(time.Hour), CreatedBy: "admin:ab12", CreatedAt: created},
		{Sub: "agent-a", CreatedBy: "admin:cd34", CreatedAt: created.Add(time.Second)},
		{Sub: "agent-b", CreatedAt: created},
	}
	if len(got) != len(want) {
		t.Fatalf("Revocations = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.JTI != w.JTI || g.Sub != w.Sub || !g.ExpiresAt.Equal(w.ExpiresAt) || g.Reason != w.Reason ||
			g.CreatedBy != w.CreatedBy || !g.CreatedAt.Equal(w.CreatedAt) {
			t.Errorf("Revocations[%d] = %+v, want %+v", i, g, w)
		}
	}
	if got := list(base.Add(2 * time.Minute)); len(got) != 3 || got[0].JTI != "j-2" {
		t.Errorf("Revocations after j-1 expired = %+v, want j-2, agent-a, agent-b", got)
	}
	for _, tc := range []struct {
		jti, sub string
		want     bool
	}{
		{"", "agent-a", true},
		{"", "agent-a", false}, // gone
		{"j-old", "", false},   // expired: deleted, but it was not in force
		{"", "nobody", false},
	} {
		if got, err := s.DeleteRevocation(ctx, tc.jti, tc.sub, base); err != nil || got != tc.want {
			t.Errorf("DeleteRevocation(%q, %q) = %v, %v; want %v", tc.jti, tc.sub, got, err, tc.want)
		}
	}
	if _, err := s.DeleteRevocation(ctx, "a", "b", base); err == nil {
		t.Error("DeleteRevocation(jti and sub) = nil, want an error")
	}
	if got := list(base); len(got) != 3 || got[2].Sub != "agent-b" {
		t.Errorf("Revocations after deleting agent-a = %+v", got)
	}
	// Another process sees them.
	var n int
	if err := openState(t, b).Revocations(ctx, base, func(store.Revocation) error { n++; return nil }); err != nil || n != 3 {
		t.Errorf("Revocations from another store = %d, %v; want 3", n, err)
	}
}
