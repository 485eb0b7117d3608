// Package store is M1's durable record: the audit trail of every decision
// (and, later, of proposals, approvals and results), agent runs, tool calls,
// proposals, revoked tokens and the sidecar's security state (State). It
// declares the domain types, the Store interface the backends implement
// (store/sqlite, the embedded default, and store/postgres, shared at
// scale), and the hash chaining that makes the
// audit trail tamper-evident: each writer process numbers its events and
// links each one to the hash of the one before (Chainer), and VerifyChain
// names the first edited, inserted or deleted event. store/backend opens the
// backend a database URL names.
package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Event kinds. Kind is free text so later event kinds need no schema change;
// these are the ones M1 writes.
const (
	// KindDecision is one authorization decision, allow or deny.
	KindDecision = "decision"
	// KindRevocation is a revocation or lift made through m1-authz's admin
	// API: Principal is who (the admin caller), Decision "revoke" or
	// "lift", Args the revocation ({"jti"} or {"sub"}, and "until"),
	// TokenJTI the revoked jti, Reason "ok" or state_unavailable, Status
	// the HTTP status answered.
	KindRevocation = "revocation"
	// KindResult is what came of an allowed call: m1-orchestrator's
	// dispatch, or m1-authz's record of Envoy's access-log entry (linked
	// by DecisionID; Decision is succeeded or failed).
	KindResult = "result"
	// KindCheckpoint marks where a pruned chain now starts. It is never
	// stored as an event: Chain emits one, first, for a chain whose head was
	// pruned, carrying the Seq and Hash of the last pruned event (and no ID
	// or Time, unlike any stored event), so that VerifyChain can check the
	// first remaining event against it.
	KindCheckpoint = "checkpoint"
)

// Prune targets other than event kinds, for Store.Prune.
const (
	// PruneEvents prunes audit events of every kind.
	PruneEvents = "audit_events"
	// PruneRuns prunes agent runs created before the cutoff, with their
	// tool calls and proposals.
	PruneRuns = "agent_runs"
	// PruneToolCalls prunes tool calls created before the cutoff.
	PruneToolCalls = "tool_calls"
	// PruneProposals prunes proposals created before the cutoff.
	PruneProposals = "proposals"
	// PruneRevokedTokens prunes revocations that expired before the cutoff
	// (a revocation without expiry is kept until it is lifted).
	PruneRevokedTokens = "revoked_tokens"
)

// ErrInvalidEvent is wrapped by AppendEvents' error for an event that was not
// chained (no Writer, Seq < 1, no Hash) or lacks Kind or Time. Nothing of
// the batch is stored.
var ErrInvalidEvent = errors.New("store: invalid event")

// ErrConflict is wrapped by AppendEvents' error when (Writer, Seq) already
// holds a different event (another hash). Nothing of the batch is stored.
// Re-sending the very same events is not a conflict.
var ErrConflict = errors.New("store: a different event already holds this writer and seq")

// Event is one audit event: for now a decision, later also proposal,
// approval and result events. The store assigns ID; a Chainer assigns
// Writer, Seq, PrevHash and Hash. Times are kept to the microsecond, in UTC.
type Event struct {
	ID         int64           `json:"id"`
	DecisionID string          `json:"decision_id"`
	Time       time.Time       `json:"time"`
	Kind       string          `json:"kind"`
	Principal  string          `json:"principal"`
	RunID      string          `json:"run_id,omitempty"`
	ProposalID string          `json:"proposal_id,omitempty"`
	Tool       string          `json:"tool"`
	ArgsSHA256 string          `json:"args_sha256"`
	Args       json.RawMessage `json:"args,omitempty"` // nil unless the tool registry marks the tool non-sensitive
	// ArgsTruncated marks an event whose arguments were left out for their
	// size (beyond M1_AUDIT_MAX_ARGS_BYTES): only ArgsSHA256 is kept.
	// Args is then nil.
	ArgsTruncated  bool   `json:"args_truncated,omitempty"`
	Decision       string `json:"decision"` // allow | deny
	Reason         string `json:"reason"`   // a deny reason code, or "ok"
	Detail         string `json:"detail,omitempty"`
	Status         int    `json:"status"` // the HTTP status answered
	PolicyRevision string `json:"policy_revision"`
	TokenJTI       string `json:"token_jti,omitempty"`
	LatencyMicros  int64  `json:"latency_us"`
	CacheTier      string `json:"cache_tier,omitempty"`

	// Writer names the chain the event belongs to: one chain per writer
	// process, e.g. "m1-authz/<host>/<pid>/<start>" (see WriterID).
	Writer string `json:"writer"`
	// Seq is the event's position in its writer's chain, from 1.
	Seq int64 `json:"seq"`
	// PrevHash is the Hash of the writer's previous event ("" for Seq 1).
	PrevHash string `json:"prev_hash"`
	// Hash is HashEvent of this event, hex SHA-256.
	Hash string `json:"hash"`
}

// Filter selects events for Store.Events. Zero fields select everything.
type Filter struct {
	Since time.Time // Time >= Since
	Until time.Time // Time < Until
	RunID string
	Agent string // the principal
	Limit int    // at most this many events; 0 means no limit
}

// Store is the durable record. Implementations are safe for concurrent use,
// and several Stores (processes) may share one database.
type Store interface {
	// AppendEvents stores a batch of chained events atomically: all or
	// none. It is idempotent on (Writer, Seq): events already stored (a
	// spool replayed after an outage) are skipped without error. An event
	// that was not chained wraps ErrInvalidEvent; a different event at a
	// stored (Writer, Seq) wraps ErrConflict.
	AppendEvents(ctx context.Context, events []Event) error
	// Events streams the events f selects in (Time, ID) order. An error
	// from fn stops the stream and is returned as is.
	Events(ctx context.Context, f Filter, fn func(Event) error) error
	// Chains calls fn with the name of every writer that has a chain, in
	// name order.
	Chains(ctx context.Context, fn func(writer string) error) error
	// Chain streams one writer's events in Seq order, preceded by a
	// KindCheckpoint event when the head of the chain was pruned. Feed it
	// to a Verifier.
	Chain(ctx context.Context, writer string, fn func(Event) error) error
	// Prune deletes records older than before and returns how many. kinds
	// names event kinds (KindDecision, …) and the Prune* targets; none
	// means everything. Events are pruned from the head of each chain up
	// to the first event that must be kept, so that retention never opens
	// a gap in a chain; the chain keeps a checkpoint of its last pruned
	// event.
	Prune(ctx context.Context, before time.Time, kinds ...string) (int64, error)
	// LastSeq returns the Seq and Hash of the writer's last stored event
	// (or checkpoint), or 0 and "" for a writer with no chain.
	LastSeq(ctx context.Context, writer string) (seq int64, hash string, err error)
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Close releases the connections. It is safe to call more than once.
	Close() error
}

// Validate checks that e was chained and can be stored; the error wraps
// ErrInvalidEvent. Backends call it for every event of a batch.
func (e Event) Validate() error {
	switch {
	case e.Writer == "":
		return invalid(e, "no writer (not chained)")
	case e.Seq < 1:
		return invalid(e, "seq < 1 (not chained)")
	case e.Hash == "":
		return invalid(e, "no hash (not chained)")
	case e.Kind == "" || e.Kind == KindCheckpoint:
		return invalid(e, "kind is empty or reserved")
	case e.Time.IsZero():
		return invalid(e, "no time")
	case e.ArgsTruncated && len(e.Args) > 0:
		return invalid(e, "args_truncated with args")
	case !clean(e.Writer) || !clean(e.PrevHash) || !clean(e.Hash) || !utf8.Valid(e.Args) || bytes.IndexByte(e.Args, 0) >= 0:
		return invalid(e, "text is not UTF-8, or holds NUL (not chained)")
	}
	for _, s := range e.texts() {
		if !clean(*s) {
			return invalid(e, "text is not UTF-8, or holds NUL (not chained)")
		}
	}
	return nil
}

func invalid(e Event, why string) error {
	return fmt.Errorf("%w (writer %q, seq %d): %s", ErrInvalidEvent, e.Writer, e.Seq, why)
}
