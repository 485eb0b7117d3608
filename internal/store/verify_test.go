package store_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// chain6 is a chained writer "w" of 6 events with IDs 101…106.
func chain6() []store.Event {
	ev := make([]store.Event, 6)
	for i := range ev {
		ev[i] = sample()
		ev[i].DecisionID = "d" + string(rune('1'+i))
	}
	store.NewChainer("w").Chain(ev)
	for i := range ev {
		ev[i].ID = int64(101 + i)
	}
	return ev
}

func rehash(e store.Event) store.Event {
	e.Hash = store.HashEvent(e)
	return e
}

func TestVerifyChain(t *testing.T) {
	forged := func(prev string, seq int64, good bool) store.Event {
		e := sample()
		e.Writer, e.Seq, e.PrevHash, e.DecisionID, e.ID = "w", seq, prev, "forged", 999
		e.Hash = "junk"
		if good {
			e = rehash(e)
		}
		return e
	}
	renumber := func(ev []store.Event, from int, delta int64) []store.Event {
		for i := from; i < len(ev); i++ {
			ev[i].Seq += delta
		}
		return ev
	}
	for _, tc := range []struct {
		name string
		mod  func(ev []store.Event) []store.Event
		kind store.BreakKind
		seq  int64
		id   int64
	}{
		{"intact", func(ev []store.Event) []store.Event { return ev }, "", 0, 0},
		{"empty", func(ev []store.Event) []store.Event { return nil }, "", 0, 0},
		{"edited", func(ev []store.Event) []store.Event { ev[2].Decision = "allow"; return ev }, store.Edited, 3, 103},
		{"edited first", func(ev []store.Event) []store.Event { ev[0].Tool = "x"; return ev }, store.Edited, 1, 101},
		{"edited last", func(ev []store.Event) []store.Event { ev[5].Tool = "x"; return ev }, store.Edited, 6, 106},
		{"edited with a fresh hash", func(ev []store.Event) []store.Event {
			ev[2].Decision = "allow"
			ev[2] = rehash(ev[2])
			return ev
		}, store.Edited, 3, 103},
		{"seq changed and rehashed", func(ev []store.Event) []store.Event {
			ev[5].Seq = 9
			ev[5] = rehash(ev[5])
			return ev
		}, store.Edited, 9, 106},
		{"deleted", func(ev []store.Event) []store.Event { return slices.Delete(ev, 2, 3) }, store.Deleted, 3, 104},
		{"deleted two", func(ev []store.Event) []store.Event { return slices.Delete(ev, 2, 4) }, store.Deleted, 3, 105},
		{"deleted head", func(ev []store.Event) []store.Event { return ev[1:] }, store.Deleted, 1, 102},
		{"deleted and renumbered", func(ev []store.Event) []store.Event {
			return renumber(slices.Delete(ev, 2, 3), 2, -1)
		}, store.Deleted, 3, 104},
		{"deleted head and renumbered", func(ev []store.Event) []store.Event {
			return renumber(ev[1:], 0, -1)
		}, store.Deleted, 1, 102},
		{"inserted, valid hash", func(ev []store.Event) []store.Event {
			return slices.Insert(renumber(ev, 2, 1), 2, forged(ev[1].Hash, 3, true))
		}, store.Inserted, 3, 999},
		{"inserted, junk hash", func(ev []store.Event) []store.Event {
			return slices.Insert(renumber(ev, 2, 1), 2, forged(ev[1].Hash, 3, false))
		}, store.Inserted, 3, 999},
		{"inserted, junk link", func(ev []store.Event) []store.Event {
			return slices.Insert(renumber(ev, 2, 1), 2, forged("bad", 3, false))
		}, store.Inserted, 3, 999},
		{"inserted first", func(ev []store.Event) []store.Event {
			return slices.Insert(renumber(ev, 0, 1), 0, forged("", 1, true))
		}, store.Inserted, 1, 999},
		{"duplicate seq", func(ev []store.Event) []store.Event {
			return slices.Insert(ev, 3, ev[2])
		}, store.Inserted, 3, 103},
		{"another writer's event", func(ev []store.Event) []store.Event {
			ev[3].Writer = "v"
			return ev
		}, store.Inserted, 4, 104},
		{"checkpoint inside", func(ev []store.Event) []store.Event {
			return slices.Insert(ev, 3, store.Event{Writer: "w", Kind: store.KindCheckpoint, Seq: 3, Hash: ev[2].Hash})
		}, store.Inserted, 3, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := store.VerifyChain(tc.mod(chain6()))
			if tc.kind == "" {
				if b != nil {
					t.Fatalf("VerifyChain = %v, want intact", b)
				}
				return
			}
			if b == nil {
				t.Fatalf("VerifyChain = intact, want %s at seq %d", tc.kind, tc.seq)
			}
			if b.Kind != tc.kind || b.Seq != tc.seq || b.ID != tc.id || b.Writer != "w" {
				t.Fatalf("VerifyChain = %v (seq %d, id %d), want %s at seq %d id %d", b, b.Seq, b.ID, tc.kind, tc.seq, tc.id)
			}
		})
	}
}

func TestVerifierCheckpoint(t *testing.T) {
	ev := chain6()
	cp := store.Event{Writer: "w", Kind: store.KindCheckpoint, Seq: 2, Hash: ev[1].Hash}
	if b := store.VerifyChain(append([]store.Event{cp}, ev[2:]...)); b != nil {
		t.Fatalf("VerifyChain(checkpoint, 3…6) = %v", b)
	}
	if b := store.VerifyChain([]store.Event{cp}); b != nil {
		t.Fatalf("VerifyChain(checkpoint only) = %v", b)
	}
	if b := store.VerifyChain(append([]store.Event{cp}, ev[3:]...)); b == nil || b.Kind != store.Deleted || b.Seq != 3 {
		t.Fatalf("VerifyChain(checkpoint, 4…6) = %v, want seq 3 deleted", b)
	}
	bad := cp
	bad.Hash = ev[0].Hash
	if b := store.VerifyChain(append([]store.Event{bad}, ev[2:]...)); b == nil {
		t.Fatal("VerifyChain(wrong checkpoint hash) = intact")
	}
}

func TestVerifierStopsAtFirstBreak(t *testing.T) {
	ev := chain6()
	ev[1].Tool, ev[4].Tool = "x", "y"
	var v store.Verifier
	var first error
	for _, e := range ev {
		if err := v.Add(e); err != nil {
			first = err
			break
		}
	}
	var b *store.Break
	if !errors.As(first, &b) || b.Seq != 2 {
		t.Fatalf("Add = %v, want the break at seq 2", first)
	}
	if err := v.Close(); !errors.Is(err, first) {
		t.Fatalf("Close = %v, want the same break", err)
	}
	if v.Verified() != 1 {
		t.Fatalf("Verified = %d, want 1", v.Verified())
	}
}

// Any change to one field of one stored event is a break.
func FuzzVerifyChain(f *testing.F) {
	f.Add(uint8(2), uint8(4), "x", int64(0))
	f.Add(uint8(0), uint8(0), "", int64(1))
	f.Add(uint8(5), uint8(9), "deny", int64(-1))
	f.Fuzz(func(t *testing.T, idx, field uint8, s string, n int64) {
		ev := chain6()
		e := &ev[int(idx)%len(ev)]
		orig := *e
		switch field % 10 {
		case 0:
			e.Writer = s
		case 1:
			e.Seq += n
		case 2:
			e.PrevHash = s
		case 3:
			e.Hash = s
		case 4:
			e.Decision = s
		case 5:
			e.Principal = s
		case 6:
			e.Args = []byte(s)
		case 7:
			e.Status += int(n)
		case 8:
			e.Time = e.Time.Add(timeMicro(n))
		case 9:
			e.Kind = s
		}
		changed := store.HashEvent(*e) != store.HashEvent(orig) || e.Hash != orig.Hash || e.Writer != orig.Writer
		b := store.VerifyChain(ev)
		if changed && b == nil {
			t.Fatalf("VerifyChain missed a change to field %d of event %d: %+v", field%10, e.Seq, *e)
		}
		if !changed && b != nil {
			t.Fatalf("VerifyChain = %v for an unchanged chain", b)
		}
	})
}

func timeMicro(n int64) time.Duration { return time.Duration(n) * time.Microsecond }
