package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/m1-agent/m1/internal/store"
)

// eventCols are audit_events' columns in scanEvent's order.
const eventCols = `id, writer, seq, prev_hash, hash, decision_id, time, kind, principal, run_id,
	proposal_id, tool, args_sha256, args, decision, reason, detail, status, policy_revision,
	token_jti, latency_us, cache_tier, args_truncated`

// insertEvents stores a batch given as one array per column, in array
// order, skipping (writer, seq) already stored or already pruned, and
// returns the (writer, seq) it inserted.
const insertEvents = `INSERT INTO audit_events (writer, seq, prev_hash, hash, decision_id, time, kind,
	principal, run_id, proposal_id, tool, args_sha256, args, decision, reason, detail, status,
	policy_revision, token_jti, latency_us, cache_tier, args_truncated)
SELECT u.writer, u.seq, u.prev_hash, u.hash, u.decision_id, u.time, u.kind, u.principal, u.run_id,
	u.proposal_id, u.tool, u.args_sha256, u.args::json, u.decision, u.reason, u.detail, u.status,
	u.policy_revision, u.token_jti, u.latency_us, u.cache_tier, u.args_truncated
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[],
	$8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
	$16::text[], $17::int[], $18::text[], $19::text[], $20::bigint[], $21::text[], $22::boolean[])
	WITH ORDINALITY AS u(writer, seq, prev_hash, hash, decision_id, time, kind, principal, run_id,
	proposal_id, tool, args_sha256, args, decision, reason, detail, status, policy_revision, token_jti,
	latency_us, cache_tier, args_truncated, ord)
WHERE u.seq > COALESCE((SELECT c.pruned_seq FROM audit_chains c WHERE c.writer = u.writer), 0)
ORDER BY u.ord
ON CONFLICT (writer, seq) DO NOTHING
RETURNING writer, seq`

// pruneChunk bounds the events one prune transaction deletes.
const pruneChunk = 5000

// columns is a batch of events as one array per column of insertEvents.
type columns struct {
	writer, prevHash, hash, decisionID, kind, principal, runID, proposalID, tool, argsSHA256,
	decision, reason, detail, policyRevision, tokenJTI, cacheTier []string
	seq, latency []int64
	status       []int32
	time         []time.Time
	args         []*string // nil: NULL
	argsTrunc    []bool
}

func (c *columns) add(e store.Event) {
	c.writer = append(c.writer, e.Writer)
	c.seq = append(c.seq, e.Seq)
	c.prevHash = append(c.prevHash, e.PrevHash)
	c.hash = append(c.hash, e.Hash)
	c.decisionID = append(c.decisionID, e.DecisionID)
	c.time = append(c.time, e.Time)
	c.kind = append(c.kind, e.Kind)
	c.principal = append(c.principal, e.Principal)
	c.runID = append(c.runID, e.RunID)
	c.proposalID = append(c.proposalID, e.ProposalID)
	c.tool = append(c.tool, e.Tool)
	c.argsSHA256 = append(c.argsSHA256, e.ArgsSHA256)
	var args *string
	if len(e.Args) > 0 {
		a := string(e.Args)
		args = &a
	}
	c.args = append(c.args, args)
	c.decision = append(c.decision, e.Decision)
	c.reason = append(c.reason, e.Reason)
	c.detail = append(c.detail, e.Detail)
	c.status = append(c.status, int32(e.Status))
	c.policyRevision = append(c.policyRevision, e.PolicyRevision)
	c.tokenJTI = append(c.tokenJTI, e.TokenJTI)
	c.latency = append(c.latency, e.LatencyMicros)
	c.cacheTier = append(c.cacheTier, e.CacheTier)
	c.argsTrunc = append(c.argsTrunc, e.ArgsTruncated)
}

// params are insertEvents' parameters $1…$22.
func (c *columns) params() []any {
	return []any{c.writer, c.seq, c.prevHash, c.hash, c.decisionID, c.time, c.kind, c.principal, c.runID,
		c.proposalID, c.tool, c.argsSHA256, c.args, c.decision, c.reason, c.detail, c.status,
		c.policyRevision, c.tokenJTI, c.latency, c.cacheTier, c.argsTrunc}
}

type key struct {
	writer string
	seq    int64
}

// AppendEvents stores the batch in one transaction and one INSERT; see
// store.Store.AppendEvents.
func (s *Store) AppendEvents(ctx context.Context, events []store.Event) error {
	if len(events) == 0 {
		return nil
	}
	hashes := make(map[key]string, len(events))
	var writers []string
	for _, e := range events {
		if err := e.Validate(); err != nil {
			return err
		}
		k := key{e.Writer, e.Seq}
		if h, ok := hashes[k]; ok && h != e.Hash {
			return fmt.Errorf("append events: writer %q seq %d: %w", e.Writer, e.Seq, store.ErrConflict)
		}
		hashes[k] = e.Hash
		writers = append(writers, e.Writer)
	}
	var cols columns
	for _, e := range events {
		cols.add(e)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// Chain rows first, in name order (concurrent batches never deadlock),
	// share-locked so that a concurrent prune of the chain (FOR UPDATE)
	// finishes before the INSERT below reads its checkpoint.
	if _, err := tx.Exec(ctx, `WITH new AS (
			INSERT INTO audit_chains (writer, created_at)
			SELECT w, now() FROM (SELECT DISTINCT unnest($1::text[]) AS w) d ORDER BY w
			ON CONFLICT (writer) DO NOTHING)
		SELECT 1 FROM audit_chains WHERE writer = ANY($1) ORDER BY writer FOR SHARE`, writers); err != nil {
		return fmt.Errorf("append events: chains: %w", err)
	}
	rows, err := tx.Query(ctx, insertEvents, cols.params()...)
	if err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	var k key
	if _, err := pgx.ForEachRow(rows, []any{&k.writer, &k.seq}, func() error {
		delete(hashes, k)
		return nil
	}); err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	// What was not inserted must already be stored, identical, or pruned.
	skipped := map[string][]int64{}
	for k := range hashes {
		skipped[k.writer] = append(skipped[k.writer], k.seq)
	}
	for w, seqs := range skipped {
		rows, err := tx.Query(ctx, `SELECT seq, hash FROM audit_events WHERE writer = $1 AND seq = ANY($2)`, w, seqs)
		if err != nil {
			return fmt.Errorf("append events: %w", err)
		}
		var sq int64
		var h string
		if _, err := pgx.ForEachRow(rows, []any{&sq, &h}, func() error {
			if hashes[key{w, sq}] != h {
				return fmt.Errorf("append events: writer %q seq %d: %w", w, sq, store.ErrConflict)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	return nil
}

// Events streams the events f selects in (Time, ID) order.
func (s *Store) Events(ctx context.Context, f store.Filter, fn func(store.Event) error) error {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, cond+" $"+strconv.Itoa(len(args)))
	}
	if !f.Since.IsZero() {
		add("time >=", f.Since)
	}
	if !f.Until.IsZero() {
		add("time <", f.Until)
	}
	if f.RunID != "" {
		add("run_id =", f.RunID)
	}
	if f.Agent != "" {
		add("principal =", f.Agent)
	}
	q := "SELECT " + eventCols + " FROM audit_events"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY time, id"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += " LIMIT $" + strconv.Itoa(len(args))
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("query events: %w", err)
	}
	return stream(rows, fn)
}

// Chains lists the writers with a chain, by name.
func (s *Store) Chains(ctx context.Context, fn func(writer string) error) error {
	rows, err := s.pool.Query(ctx, `SELECT writer FROM audit_chains
		UNION SELECT DISTINCT writer FROM audit_events ORDER BY 1`)
	if err != nil {
		return fmt.Errorf("query chains: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var w string
		if err := rows.Scan(&w); err != nil {
			return fmt.Errorf("query chains: %w", err)
		}
		if err := fn(w); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("query chains: %w", err)
	}
	return nil
}

// Chain streams writer's events in Seq order, after its checkpoint if it
// was pruned, from one snapshot.
func (s *Store) Chain(ctx context.Context, writer string, fn func(store.Event) error) error {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("query chain %q: %w", writer, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var seq int64
	var hash string
	err = tx.QueryRow(ctx, `SELECT pruned_seq, pruned_hash FROM audit_chains WHERE writer = $1`, writer).Scan(&seq, &hash)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("query chain %q: %w", writer, err)
	case seq > 0:
		if err := fn(store.Event{Writer: writer, Kind: store.KindCheckpoint, Seq: seq, Hash: hash}); err != nil {
			return err
		}
	}
	rows, err := tx.Query(ctx, "SELECT "+eventCols+" FROM audit_events WHERE writer = $1 ORDER BY seq", writer)
	if err != nil {
		return fmt.Errorf("query chain %q: %w", writer, err)
	}
	return stream(rows, fn)
}

// LastSeq returns the writer's last stored event, or its checkpoint.
func (s *Store) LastSeq(ctx context.Context, writer string) (int64, string, error) {
	var seq int64
	var hash string
	err := s.pool.QueryRow(ctx, `SELECT seq, hash FROM audit_events WHERE writer = $1 ORDER BY seq DESC LIMIT 1`, writer).Scan(&seq, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		err = s.pool.QueryRow(ctx, `SELECT pruned_seq, pruned_hash FROM audit_chains WHERE writer = $1`, writer).Scan(&seq, &hash)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, "", nil
		}
	}
	if err != nil {
		return 0, "", fmt.Errorf("last seq of %q: %w", writer, err)
	}
	return seq, hash, nil
}

// Prune deletes what kinds name older than before; see store.Store.Prune.
func (s *Store) Prune(ctx context.Context, before time.Time, kinds ...string) (int64, error) {
	p := store.PlanPrune(kinds)
	var total int64
	if p.Events {
		n, err := s.pruneEvents(ctx, before, p.EventKinds)
		total += n
		if err != nil {
			return total, err
		}
	}
	for _, q := range p.RowDeletes() {
		tag, err := s.pool.Exec(ctx, q, before)
		if err != nil {
			return total, fmt.Errorf("prune: %w", err)
		}
		total += tag.RowsAffected()
	}
	return total, nil
}

// pruneEvents deletes, from the head of each chain, the events older than
// before (of kinds, or any kind when nil) up to the first one to keep, and
// records the last deleted one as the chain's checkpoint.
func (s *Store) pruneEvents(ctx context.Context, before time.Time, kinds []string) (int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT writer FROM audit_events WHERE time < $1`, before)
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	writers, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	// The first event of the chain to keep: new enough, or of another kind.
	keep, keepArgs := `SELECT MIN(seq) FROM audit_events WHERE writer = $1 AND time >= $2`, []any{nil, before}
	if kinds != nil {
		keep = `SELECT MIN(seq) FROM audit_events WHERE writer = $1 AND (time >= $2 OR kind <> ALL($3))`
		keepArgs = append(keepArgs, kinds)
	}
	var total int64
	for _, w := range writers {
		keepArgs[0] = w
		var first *int64
		if err := s.pool.QueryRow(ctx, keep, keepArgs...).Scan(&first); err != nil {
			return total, fmt.Errorf("prune chain %q: %w", w, err)
		}
		var cut int64
		if first != nil {
			cut = *first - 1
		} else if err := s.pool.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) FROM audit_events WHERE writer = $1`, w).Scan(&cut); err != nil {
			return total, fmt.Errorf("prune chain %q: %w", w, err)
		}
		for {
			n, done, err := s.pruneChunk(ctx, w, cut)
			total += n
			if err != nil {
				return total, fmt.Errorf("prune chain %q: %w", w, err)
			}
			if done {
				break
			}
		}
	}
	return total, nil
}

// pruneChunk deletes up to pruneChunk of writer's first events with seq <=
// cut in one transaction, moving the checkpoint. done is true when none
// with seq <= cut remain.
func (s *Store) pruneChunk(ctx context.Context, writer string, cut int64) (n int64, done bool, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// Lock the chain row: concurrent prunes of one chain take turns.
	if _, err := tx.Exec(ctx, `SELECT 1 FROM audit_chains WHERE writer = $1 FOR UPDATE`, writer); err != nil {
		return 0, false, err
	}
	var first *int64
	if err := tx.QueryRow(ctx, `SELECT MIN(seq) FROM audit_events WHERE writer = $1 AND seq <= $2`, writer, cut).Scan(&first); err != nil {
		return 0, false, err
	}
	if first == nil {
		return 0, true, nil
	}
	end := min(cut, *first+pruneChunk-1)
	var last int64
	var hash string
	if err := tx.QueryRow(ctx, `SELECT seq, hash FROM audit_events WHERE writer = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1`,
		writer, end).Scan(&last, &hash); err != nil {
		return 0, false, err
	}
	tag, err := tx.Exec(ctx, `DELETE FROM audit_events WHERE writer = $1 AND seq <= $2`, writer, end)
	if err != nil {
		return 0, false, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO audit_chains (writer, created_at, pruned_seq, pruned_hash) VALUES ($1, now(), $2, $3)
		ON CONFLICT (writer) DO UPDATE SET pruned_seq = excluded.pruned_seq, pruned_hash = excluded.pruned_hash
		WHERE audit_chains.pruned_seq < excluded.pruned_seq`, writer, last, hash); err != nil {
		return 0, false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, false, err
	}
	return tag.RowsAffected(), end >= cut, nil
}

// stream scans rows into events for fn, and closes rows.
func stream(rows pgx.Rows, fn func(store.Event) error) error {
	defer rows.Close()
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	return nil
}

func scanEvent(rows pgx.Rows) (store.Event, error) {
	var e store.Event
	var args []byte
	var status int32
	if err := rows.Scan(&e.ID, &e.Writer, &e.Seq, &e.PrevHash, &e.Hash, &e.DecisionID, &e.Time, &e.Kind,
		&e.Principal, &e.RunID, &e.ProposalID, &e.Tool, &e.ArgsSHA256, &args, &e.Decision, &e.Reason,
		&e.Detail, &status, &e.PolicyRevision, &e.TokenJTI, &e.LatencyMicros, &e.CacheTier, &e.ArgsTruncated); err != nil {
		return e, fmt.Errorf("read event: %w", err)
	}
	e.Time = e.Time.UTC()
	e.Status = int(status)
	if args != nil {
		e.Args = args
	}
	return e, nil
}
