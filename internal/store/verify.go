package store

import (
	"errors"
	"fmt"
)

// BreakKind says how a chain was broken.
type BreakKind string

// The ways a chain breaks.
const (
	// Edited: an event's content no longer matches its hash, or an event
	// was rewritten with a fresh hash so that its successor no longer
	// links to it.
	Edited BreakKind = "edited"
	// Inserted: an event that was never chained sits in the chain (its
	// neighbours link past it), or a Seq repeats or goes back.
	Inserted BreakKind = "inserted"
	// Deleted: one or more events are missing (a gap in Seq, or later
	// events renumbered to close it). Deleting events at the tail of a
	// chain cannot be seen from the chain alone.
	Deleted BreakKind = "deleted"
)

// Break is the first place a chain fails to verify. It is an error.
type Break struct {
	Writer string // the chain
	Kind   BreakKind
	// Seq is the edited or inserted event's Seq, or the first missing Seq.
	Seq int64
	// ID is the edited or inserted event's ID, or for a deletion the ID of
	// the event found after the gap.
	ID     int64
	Reason string // what was found, for people
}

// Error names the chain, the event and how it broke.
func (b *Break) Error() string {
	if b.Kind == Deleted {
		return fmt.Sprintf("chain %q: seq %d deleted (found at id %d): %s", b.Writer, b.Seq, b.ID, b.Reason)
	}
	return fmt.Sprintf("chain %q: seq %d (id %d) %s: %s", b.Writer, b.Seq, b.ID, b.Kind, b.Reason)
}

// VerifyChain verifies one writer's events, given in Seq order (as
// Store.Chain streams them, checkpoint first), and returns the first break,
// or nil when the chain is intact.
func VerifyChain(events []Event) *Break {
	var v Verifier
	for _, e := range events {
		if err := v.Add(e); err != nil {
			break
		}
	}
	var b *Break
	errors.As(v.Close(), &b)
	return b
}

// Verifier verifies one chain streamed to it event by event, in Seq order:
//
//	var v store.Verifier
//	err := st.Chain(ctx, writer, v.Add) // stops at the first break
//	if err == nil {
//		err = v.Close()
//	}
//	var b *store.Break
//	if errors.As(err, &b) { … }
//
// It looks one event ahead to tell an inserted event from an edited one, so
// a break may be reported by the Add after the event, or by Close. The zero
// Verifier is ready; it is not safe for concurrent use.
type Verifier struct {
	writer  string
	started bool
	tip     link   // the last event accepted (or the genesis / checkpoint)
	tipReal bool   // tip is a stored event, not the genesis or a checkpoint
	before  string // the hash of the event before tip
	pending *Event
	n       int64
	err     *Break
}

type link struct {
	seq  int64
	hash string
	id   int64
}

// Add takes the chain's next event. It returns a *Break once the chain is
// known to be broken, and keeps returning it.
func (v *Verifier) Add(e Event) error {
	if v.err != nil {
		return v.err
	}
	if !v.started {
		v.started, v.writer = true, e.Writer
		if isCheckpoint(e) {
			v.tip = link{seq: e.Seq, hash: e.Hash}
			return nil
		}
	}
	if v.pending == nil {
		v.pending = &e
		return nil
	}
	p := *v.pending
	v.pending = &e
	if b := v.check(p, &e); b != nil {
		v.err = b
		return b
	}
	return nil
}

// Close checks the last event and returns the chain's first *Break, or nil.
func (v *Verifier) Close() error {
	if v.err == nil && v.pending != nil {
		p := *v.pending
		v.pending = nil
		v.err = v.check(p, nil)
	}
	if v.err != nil {
		return v.err
	}
	return nil
}

// Verified returns how many events were verified intact.
func (v *Verifier) Verified() int64 { return v.n }

// Last returns the Seq and Hash of the last event verified intact (or of the
// checkpoint the chain starts from).
func (v *Verifier) Last() (seq int64, hash string) { return v.tip.seq, v.tip.hash }

// isCheckpoint tells Chain's checkpoint from a stored event, which always
// has an ID and a time.
func isCheckpoint(e Event) bool {
	return e.Kind == KindCheckpoint && e.ID == 0 && e.Time.IsZero()
}

// check classifies e against the tip, with next (nil at the end) as
// lookahead.
func (v *Verifier) check(e Event, next *Event) *Break {
	want := v.tip.seq + 1
	selfOK := HashEvent(e) == e.Hash
	linkOK := e.PrevHash == v.tip.hash
	brk := func(k BreakKind, seq, id int64, format string, args ...any) *Break {
		return &Break{Writer: v.writer, Kind: k, Seq: seq, ID: id, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case e.Kind == KindCheckpoint:
		return brk(Inserted, e.Seq, e.ID, "a checkpoint inside the chain")
	case e.Writer != v.writer:
		return brk(Inserted, e.Seq, e.ID, "it belongs to chain %q", e.Writer)
	case e.Seq < want:
		return brk(Inserted, e.Seq, e.ID, "seq %d repeats or goes back (expected %d)", e.Seq, want)
	case e.Seq > want && selfOK && linkOK:
		return brk(Edited, e.Seq, e.ID, "its seq was changed: it links to seq %d", v.tip.seq)
	case e.Seq > want:
		return brk(Deleted, want, e.ID, "seq %d to %d missing", want, e.Seq-1)
	case selfOK && linkOK:
		v.before, v.tip, v.tipReal = v.tip.hash, link{e.Seq, e.Hash, e.ID}, true
		v.n++
		return nil
	case next != nil && next.PrevHash == v.tip.hash && next.PrevHash != e.Hash:
		return brk(Inserted, e.Seq, e.ID, "it was never chained: the next event links past it to seq %d", v.tip.seq)
	case !linkOK && v.tipReal && e.PrevHash == v.before:
		return brk(Inserted, v.tip.seq, v.tip.id, "it was never chained: seq %d links past it", e.Seq)
	case linkOK:
		return brk(Edited, e.Seq, e.ID, "its content does not match its hash")
	case selfOK && v.tipReal:
		return brk(Edited, v.tip.seq, v.tip.id, "seq %d does not link to it: it was rewritten with a new hash", e.Seq)
	case next != nil && next.PrevHash == e.Hash:
		return brk(Deleted, want, e.ID, "the event before seq %d is missing and later events were renumbered", e.Seq)
	default:
		return brk(Edited, e.Seq, e.ID, "neither its content nor its link to seq %d match", v.tip.seq)
	}
}
