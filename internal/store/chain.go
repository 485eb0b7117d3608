package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// hashDomain opens every hashed event, naming the encoding's version.
const hashDomain = "m1.audit.v1\n"

// HashEvent returns the hex SHA-256 that chains e: a digest of e.PrevHash
// and e's canonical fields, so that editing any of them, moving the event
// to another position or chain, or unlinking it from its predecessor
// changes it. It ignores e.ID (assigned by the store) and e.Hash.
//
// The digest input is the ASCII string "m1.audit.v1\n" followed by these
// fields in this order, each written as its length in bytes (8 bytes,
// big-endian) and then its bytes:
//
//	writer, seq, prev_hash, decision_id, time, kind, principal, run_id,
//	proposal_id, tool, args_sha256, args, decision, reason, detail, status,
//	policy_revision, token_jti, latency_us, cache_tier
//
// Strings are their UTF-8 bytes; args is the raw JSON exactly as stored
// (empty when nil); seq, status and latency_us are base-10 integers; time is
// the base-10 count of microseconds since the Unix epoch (the precision
// both backends keep). The encoding is unambiguous and independent of the
// backend, so `m1 audit verify` recomputes the same hash from either.
func HashEvent(e Event) string {
	h := sha256.New()
	w := hasher{h: h}
	h.Write([]byte(hashDomain))
	w.str(e.Writer)
	w.int(e.Seq)
	w.str(e.PrevHash)
	w.str(e.DecisionID)
	w.int(e.Time.UnixMicro())
	w.str(e.Kind)
	w.str(e.Principal)
	w.str(e.RunID)
	w.str(e.ProposalID)
	w.str(e.Tool)
	w.str(e.ArgsSHA256)
	w.bytes(e.Args)
	w.str(e.Decision)
	w.str(e.Reason)
	w.str(e.Detail)
	w.int(int64(e.Status))
	w.str(e.PolicyRevision)
	w.str(e.TokenJTI)
	w.int(e.LatencyMicros)
	w.str(e.CacheTier)
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0]))
}

type hasher struct {
	h   hash.Hash
	buf [24]byte
}

func (w *hasher) len(n int) {
	binary.BigEndian.PutUint64(w.buf[:8], uint64(n))
	w.h.Write(w.buf[:8])
}

func (w *hasher) str(s string) {
	w.len(len(s))
	w.h.Write([]byte(s))
}

func (w *hasher) bytes(b []byte) {
	w.len(len(b))
	w.h.Write(b)
}

func (w *hasher) int(i int64) {
	b := strconv.AppendInt(w.buf[8:8], i, 10)
	w.len(len(b))
	w.h.Write(b)
}

// Chainer assigns Writer, Seq, PrevHash and Hash to a writer's events in
// the order it is given them. A writer process owns one Chainer (one chain);
// it is safe for concurrent use, and each Chain call takes a contiguous run
// of sequence numbers.
type Chainer struct {
	mu     sync.Mutex
	writer string
	seq    int64
	hash   string
}

// NewChainer starts a chain for writer at Seq 1.
func NewChainer(writer string) *Chainer {
	return &Chainer{writer: writer}
}

// ResumeChainer continues writer's chain after the event (seq, hash), as
// returned by Store.LastSeq.
func ResumeChainer(writer string, seq int64, hash string) *Chainer {
	return &Chainer{writer: writer, seq: seq, hash: hash}
}

// Writer returns the chain's writer name.
func (c *Chainer) Writer() string { return c.writer }

// Last returns the Seq and Hash of the last event chained (0 and "" before
// the first).
func (c *Chainer) Last() (seq int64, hash string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seq, c.hash
}

// Chain chains events in place, in slice order. First it puts each event in
// the form both backends store exactly, so that its hash survives the round
// trip: Time in UTC truncated to the microsecond; NUL bytes and invalid
// UTF-8 in strings (which PostgreSQL text cannot hold) replaced by U+FFFD;
// Args compacted as encoding/json marshals a json.RawMessage (so that an
// event also survives a JSON round trip, such as a spool file, unchanged),
// empty Args made nil, and Args that are not valid JSON stored as a JSON
// string of their text. Then it sets Writer, Seq, PrevHash and Hash.
func (c *Chainer) Chain(events []Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range events {
		e := &events[i]
		normalize(e)
		c.seq++
		e.Writer, e.Seq, e.PrevHash = c.writer, c.seq, c.hash
		e.Hash = HashEvent(*e)
		c.hash = e.Hash
	}
}

// normalize puts e in the form the backends round-trip exactly.
func normalize(e *Event) {
	e.Time = e.Time.UTC().Truncate(time.Microsecond)
	for _, s := range []*string{
		&e.DecisionID, &e.Kind, &e.Principal, &e.RunID, &e.ProposalID, &e.Tool,
		&e.ArgsSHA256, &e.Decision, &e.Reason, &e.Detail, &e.PolicyRevision,
		&e.TokenJTI, &e.CacheTier,
	} {
		*s = cleanString(*s)
	}
	switch {
	case len(e.Args) == 0:
		e.Args = nil
		return
	case !json.Valid(e.Args):
		e.Args, _ = json.Marshal(cleanString(string(e.Args)))
		return
	case !utf8.Valid(e.Args):
		e.Args = json.RawMessage(strings.ToValidUTF8(string(e.Args), "\uFFFD"))
	}
	// As encoding/json writes a RawMessage (compact, <>& escaped), so that
	// the event survives a JSON round trip (a spool) unchanged.
	if b, err := json.Marshal(e.Args); err == nil {
		e.Args = b
	}
}

// cleanString replaces NUL bytes and invalid UTF-8 with U+FFFD.
func cleanString(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// WriterID names a writer process's chain:
// "<component>/<host>/<pid>/<start>", start in UTC to the nanosecond (a
// restarted process, even with the same host and pid, starts a new chain).
func WriterID(component string, start time.Time) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return fmt.Sprintf("%s/%s/%d/%s", component, host, os.Getpid(), start.UTC().Format("20060102T150405.000000000Z"))
}
