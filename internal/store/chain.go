package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
// and then, only for an event with ArgsTruncated, one more field holding
// the string "1" (args_truncated): events without it hash exactly as
// before the field existed, and the length-prefixed encoding keeps the
// two forms apart.
//
// Strings are their UTF-8 bytes; args is the raw JSON exactly as stored
// (empty when nil); seq, status and latency_us are base-10 integers; time is
// the base-10 count of microseconds since the Unix epoch (the precision
// both backends keep). The encoding is unambiguous and independent of the
// backend, so `m1 audit verify` recomputes the same hash from either.
func HashEvent(e Event) string { return hashEvent(&e) }

// hashEvent is HashEvent without copying e. The digest input is built in
// one buffer (on the stack unless the event is large) and hashed at once.
func hashEvent(e *Event) string {
	var buf [1024]byte
	b := append(buf[:0], hashDomain...)
	b = appendField(b, e.Writer)
	b = appendInt(b, e.Seq)
	b = appendField(b, e.PrevHash)
	b = appendField(b, e.DecisionID)
	b = appendInt(b, e.Time.UnixMicro())
	b = appendField(b, e.Kind)
	b = appendField(b, e.Principal)
	b = appendField(b, e.RunID)
	b = appendField(b, e.ProposalID)
	b = appendField(b, e.Tool)
	b = appendField(b, e.ArgsSHA256)
	b = appendField(b, []byte(e.Args))
	b = appendField(b, e.Decision)
	b = appendField(b, e.Reason)
	b = appendField(b, e.Detail)
	b = appendInt(b, int64(e.Status))
	b = appendField(b, e.PolicyRevision)
	b = appendField(b, e.TokenJTI)
	b = appendInt(b, e.LatencyMicros)
	b = appendField(b, e.CacheTier)
	if e.ArgsTruncated {
		b = appendField(b, "1")
	}
	sum := sha256.Sum256(b)
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

// appendField appends s as HashEvent encodes a field: its length in bytes
// (8 bytes, big-endian), then its bytes.
func appendField[T string | []byte](b []byte, s T) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// appendInt appends i as a field in base 10.
func appendInt(b []byte, i int64) []byte {
	var d [20]byte
	return appendField(b, strconv.AppendInt(d[:0], i, 10))
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
		e.Hash = hashEvent(e)
		c.hash = e.Hash
	}
}

// normalize puts e in the form the backends round-trip exactly.
func normalize(e *Event) {
	e.Time = e.Time.UTC().Truncate(time.Microsecond)
	for _, s := range e.texts() {
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
	// the event survives a JSON round trip (a spool) unchanged. Most
	// arguments are in that form already.
	if marshalsAsIs(e.Args) {
		return
	}
	if b, err := json.Marshal(e.Args); err == nil {
		e.Args = b
	}
}

// marshalsAsIs reports whether json.Marshal of the valid JSON b, as a
// json.RawMessage, returns b unchanged: b has no whitespace outside strings
// (compaction would drop it) and no '<', '>', '&', U+2028 or U+2029
// (Marshal escapes them).
func marshalsAsIs(b []byte) bool {
	in := false // inside a string
	for i := 0; i < len(b); i++ {
		if escapeGrowth(b, i) > 0 {
			return false
		}
		switch b[i] {
		case '"':
			in = !in
		case '\\':
			i++ // the escaped byte (a quote, a backslash, or a letter)
		case ' ', '\t', '\n', '\r':
			if !in {
				return false
			}
		}
	}
	return true
}

// escapeGrowth is how many bytes json.Marshal adds escaping b[i] in a
// json.RawMessage: '<', '>' and '&' become \u003c and the like (+5),
// U+2028 and U+2029 (E2 80 A8, E2 80 A9) \u2028 and \u2029 (+3).
func escapeGrowth(b []byte, i int) int {
	switch b[i] {
	case '<', '>', '&':
		return 5
	case 0xE2:
		if i+2 < len(b) && b[i+1] == 0x80 && b[i+2]&^1 == 0xA8 {
			return 3
		}
	}
	return 0
}

// StoredArgsLen bounds the length of args as Chain stores them: escaped
// as json.Marshal escapes a json.RawMessage (compaction can only make it
// shorter). A cap on stored arguments compares this, not len(args).
func StoredArgsLen(args []byte) int {
	n := len(args)
	for i := range args {
		n += escapeGrowth(args, i)
	}
	return n
}

// texts are e's free-text fields (all its strings but the chain's own).
func (e *Event) texts() [13]*string {
	return [...]*string{
		&e.DecisionID, &e.Kind, &e.Principal, &e.RunID, &e.ProposalID, &e.Tool,
		&e.ArgsSHA256, &e.Decision, &e.Reason, &e.Detail, &e.PolicyRevision,
		&e.TokenJTI, &e.CacheTier,
	}
}

// clean reports whether s is valid UTF-8 without NUL, as cleanString makes it.
func clean(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// cleanString replaces NUL bytes and invalid UTF-8 with U+FFFD.
func cleanString(s string) string {
	if clean(s) {
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
