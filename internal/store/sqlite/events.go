package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// eventCols are audit_events' columns in scanEvent's order.
const eventCols = `id, writer, seq, prev_hash, hash, decision_id, time, kind, principal, run_id,
	proposal_id, tool, args_sha256, args, decision, reason, detail, status, policy_revision,
	token_jti, latency_us, cache_tier, args_truncated`

const insertEvent = `INSERT INTO audit_events (writer, seq, prev_hash, hash, decision_id, time, kind,
	principal, run_id, proposal_id, tool, args_sha256, args, decision, reason, detail, status,
	policy_revision, token_jti, latency_us, cache_tier, args_truncated)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (writer, seq) DO NOTHING RETURNING id`

// insertEvents inserts a batch given as one JSON array of rows (see
// appendRow), skipping existing (writer, seq).
//
// A batch is one parameter, not 22 per row: binding each value through
// database/sql (its []driver.NamedValue, a boxed value per field, the
// driver's per-value bookkeeping) made about 2 KB of garbage per event,
// and the collections it caused slowed the checks running beside the
// writer; SQLite reads the rows from the JSON instead (jsonb, so each
// row is parsed once).
//
// It says INSERT OR IGNORE, not ON CONFLICT (writer, seq) DO NOTHING: a
// statement inside a transaction that can fail on a constraint makes
// SQLite keep a statement journal, a copy of every page the statement
// changes (written to a temporary file past 64 KiB), so that it can undo
// that statement alone. That journal was more than half the pages an
// append wrote. A statement that ignores every conflict cannot fail that
// way and needs none. For audit rows the two skip the same rows: UNIQUE
// (writer, seq) is the only constraint such a row can break (id is
// assigned, no value is NULL where it must not be, there is no CHECK), and
// AppendEvents sorts replays from conflicts row by row whenever a row was
// skipped.
var insertEvents = func() string {
	q := "INSERT OR IGNORE INTO" + strings.TrimPrefix(strings.SplitN(insertEvent, "VALUES", 2)[0], "INSERT INTO") + "SELECT "
	for i := range strings.Count(insertEvent, "?") {
		if i > 0 {
			q += ", "
		}
		q += "value ->> " + strconv.Itoa(i)
	}
	// ORDER BY rowid (the element's position) keeps the batch order, and
	// jsonb_each reads its elements in that order anyway: SQLite takes the
	// ORDER BY as satisfied and adds no sort (ORDER BY key made it copy
	// every row into a sorter first, a quarter of the append's CPU).
	return q + " FROM jsonb_each(jsonb(CAST(? AS TEXT))) ORDER BY rowid" // ids in batch order
}()

// chunkBytes bounds the JSON of one INSERT (SQLite refuses values past
// 1 GB; arguments can be large), but not a single row.
const chunkBytes = 4 << 20

// insertMany inserts the events not pruned already, and returns how many
// rows went in; a pruned event counts as skipped. It builds the JSON in
// s.rows, kept from batch to batch (up to twice chunkBytes).
func (s *Store) insertMany(ctx context.Context, tx *sql.Tx, events []store.Event, pruned map[string]int64) (int64, error) {
	s.rowsMu.Lock()
	defer s.rowsMu.Unlock()
	defer func() {
		if cap(s.rows) > 2*chunkBytes {
			s.rows = nil
		}
	}()
	var total int64
	for len(events) > 0 {
		buf := append(s.rows[:0], '[')
		n := 0
		for ; n < len(events) && (n == 0 || len(buf) < chunkBytes); n++ {
			if e := events[n]; e.Seq > pruned[e.Writer] { // else stored once, since pruned: a late replay
				if len(buf) > 1 {
					buf = append(buf, ',')
				}
				buf = appendRow(buf, e)
			}
		}
		s.rows, events = append(buf, ']'), events[n:]
		res, err := tx.ExecContext(ctx, insertEvents, s.rows)
		if err != nil {
			return total, err
		}
		k, err := res.RowsAffected()
		if err != nil {
			return total, err
		}
		total += k
	}
	return total, nil
}

// appendRow appends e as a JSON array of insertEvent's values, in order.
// Strings are exact: store.Event.Validate guarantees valid UTF-8 without
// NUL, which a JSON string carries byte for byte.
func appendRow(b []byte, e store.Event) []byte {
	b = append(b, '[')
	b = appendString(b, e.Writer)
	b = strconv.AppendInt(append(b, ','), e.Seq, 10)
	for _, s := range [...]string{e.PrevHash, e.Hash, e.DecisionID} {
		b = appendString(append(b, ','), s)
	}
	b = append(e.Time.UTC().AppendFormat(append(b, ',', '"'), timeLayout), '"')
	for _, s := range [...]string{e.Kind, e.Principal, e.RunID, e.ProposalID, e.Tool, e.ArgsSHA256} {
		b = appendString(append(b, ','), s)
	}
	if b = append(b, ','); len(e.Args) > 0 {
		b = appendString(b, string(e.Args)) // stored as text, as sent
	} else {
		b = append(b, "null"...)
	}
	for _, s := range [...]string{e.Decision, e.Reason, e.Detail} {
		b = appendString(append(b, ','), s)
	}
	b = strconv.AppendInt(append(b, ','), int64(e.Status), 10)
	for _, s := range [...]string{e.PolicyRevision, e.TokenJTI} {
		b = appendString(append(b, ','), s)
	}
	b = strconv.AppendInt(append(b, ','), e.LatencyMicros, 10)
	b = appendString(append(b, ','), e.CacheTier)
	b = strconv.AppendInt(append(b, ','), int64(boolInt(e.ArgsTruncated)), 10)
	return append(b, ']')
}

// appendString appends s as a JSON string: quote, backslash and control
// characters escaped, every other byte as it is.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// pruneChunk bounds the events one prune transaction deletes, so that the
// write lock is never held for long.
const pruneChunk = 5000

// AppendEvents stores the batch in one write transaction; see
// store.Store.AppendEvents.
func (s *Store) AppendEvents(ctx context.Context, events []store.Event) error {
	if len(events) == 0 {
		return nil
	}
	for _, e := range events {
		if err := e.Validate(); err != nil {
			return err
		}
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	defer tx.Rollback()
	pruned := map[string]int64{} // writer → last pruned seq
	now := ts(time.Now())
	for _, e := range events {
		if _, ok := pruned[e.Writer]; ok {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_chains (writer, created_at) VALUES (?, ?)
			ON CONFLICT (writer) DO NOTHING`, e.Writer, now); err != nil {
			return fmt.Errorf("append events: chain %q: %w", e.Writer, err)
		}
		var p int64
		if err := tx.QueryRowContext(ctx, `SELECT pruned_seq FROM audit_chains WHERE writer = ?`, e.Writer).Scan(&p); err != nil {
			return fmt.Errorf("append events: chain %q: %w", e.Writer, err)
		}
		pruned[e.Writer] = p
	}
	// Fast path: the whole batch in one INSERT per chunk. When every row went
	// in, there is nothing to check; otherwise some (writer, seq) existed
	// already, and the row-by-row path below sorts replays from conflicts
	// (rows this statement inserted read back as identical).
	if n, err := s.insertMany(ctx, tx, events, pruned); err != nil {
		return fmt.Errorf("append events: %w", err)
	} else if n == int64(len(events)) {
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("append events: %w", err)
		}
		return nil
	}
	ins, err := tx.PrepareContext(ctx, insertEvent)
	if err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	defer ins.Close()
	for _, e := range events {
		if e.Seq <= pruned[e.Writer] {
			continue // stored once, since pruned: a late replay
		}
		var args any
		if len(e.Args) > 0 {
			args = string(e.Args)
		}
		var id int64
		err := ins.QueryRowContext(ctx, e.Writer, e.Seq, e.PrevHash, e.Hash, e.DecisionID, ts(e.Time), e.Kind,
			e.Principal, e.RunID, e.ProposalID, e.Tool, e.ArgsSHA256, args, e.Decision, e.Reason, e.Detail,
			e.Status, e.PolicyRevision, e.TokenJTI, e.LatencyMicros, e.CacheTier, boolInt(e.ArgsTruncated)).Scan(&id)
		if err == nil {
			continue
		}
		if err != sql.ErrNoRows { // not inserted: (writer, seq) is taken
			return fmt.Errorf("append events: writer %q seq %d: %w", e.Writer, e.Seq, err)
		}
		var h string
		if err := tx.QueryRowContext(ctx, `SELECT hash FROM audit_events WHERE writer = ? AND seq = ?`, e.Writer, e.Seq).Scan(&h); err != nil {
			return fmt.Errorf("append events: writer %q seq %d: %w", e.Writer, e.Seq, err)
		}
		if h != e.Hash {
			return fmt.Errorf("append events: writer %q seq %d: %w", e.Writer, e.Seq, store.ErrConflict)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	return nil
}

// Events streams the events f selects in (Time, ID) order.
func (s *Store) Events(ctx context.Context, f store.Filter, fn func(store.Event) error) error {
	var where []string
	var args []any
	if !f.Since.IsZero() {
		where, args = append(where, "time >= ?"), append(args, ts(f.Since))
	}
	if !f.Until.IsZero() {
		where, args = append(where, "time < ?"), append(args, ts(f.Until))
	}
	if f.RunID != "" {
		where, args = append(where, "run_id = ?"), append(args, f.RunID)
	}
	if f.Agent != "" {
		where, args = append(where, "principal = ?"), append(args, f.Agent)
	}
	q := "SELECT " + eventCols + " FROM audit_events"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY time, id"
	if f.Limit > 0 {
		q, args = q+" LIMIT ?", append(args, f.Limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("query events: %w", err)
	}
	return stream(rows, fn)
}

// Chains lists the writers with a chain, by name.
func (s *Store) Chains(ctx context.Context, fn func(writer string) error) error {
	rows, err := s.r.QueryContext(ctx, `SELECT writer FROM audit_chains
		UNION SELECT writer FROM audit_events ORDER BY 1`)
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
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("query chain %q: %w", writer, err)
	}
	defer tx.Rollback()
	var seq int64
	var hash string
	err = tx.QueryRowContext(ctx, `SELECT pruned_seq, pruned_hash FROM audit_chains WHERE writer = ?`, writer).Scan(&seq, &hash)
	switch {
	case err == sql.ErrNoRows:
	case err != nil:
		return fmt.Errorf("query chain %q: %w", writer, err)
	case seq > 0:
		if err := fn(store.Event{Writer: writer, Kind: store.KindCheckpoint, Seq: seq, Hash: hash}); err != nil {
			return err
		}
	}
	rows, err := tx.QueryContext(ctx, "SELECT "+eventCols+" FROM audit_events WHERE writer = ? ORDER BY seq", writer)
	if err != nil {
		return fmt.Errorf("query chain %q: %w", writer, err)
	}
	return stream(rows, fn)
}

// LastSeq returns the writer's last stored event, or its checkpoint.
func (s *Store) LastSeq(ctx context.Context, writer string) (int64, string, error) {
	var seq int64
	var hash string
	err := s.r.QueryRowContext(ctx, `SELECT seq, hash FROM audit_events WHERE writer = ? ORDER BY seq DESC LIMIT 1`, writer).Scan(&seq, &hash)
	if err == sql.ErrNoRows {
		err = s.r.QueryRowContext(ctx, `SELECT pruned_seq, pruned_hash FROM audit_chains WHERE writer = ?`, writer).Scan(&seq, &hash)
		if err == sql.ErrNoRows {
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
		res, err := s.w.ExecContext(ctx, strings.Replace(q, "$1", "?", 1), ts(before))
		if err != nil {
			return total, fmt.Errorf("prune: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	return total, nil
}

// pruneEvents deletes, from the head of each chain, the events older than
// before (of kinds, or any kind when nil) up to the first one to keep, and
// records the last deleted one as the chain's checkpoint.
func (s *Store) pruneEvents(ctx context.Context, before time.Time, kinds []string) (int64, error) {
	var writers []string
	rows, err := s.r.QueryContext(ctx, `SELECT DISTINCT writer FROM audit_events WHERE time < ?`, ts(before))
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	for rows.Next() {
		var w string
		if err := rows.Scan(&w); err != nil {
			rows.Close()
			return 0, fmt.Errorf("prune events: %w", err)
		}
		writers = append(writers, w)
	}
	if err := rows.Close(); err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	keep := `SELECT MIN(seq) FROM audit_events WHERE writer = ? AND (time >= ?`
	keepArgs := []any{nil, ts(before)}
	if kinds != nil {
		keep += ` OR kind NOT IN (?` + strings.Repeat(", ?", len(kinds)-1) + `)`
		for _, k := range kinds {
			keepArgs = append(keepArgs, k)
		}
	}
	keep += `)`
	var total int64
	for _, w := range writers {
		keepArgs[0] = w
		var first sql.NullInt64
		if err := s.r.QueryRowContext(ctx, keep, keepArgs...).Scan(&first); err != nil {
			return total, fmt.Errorf("prune chain %q: %w", w, err)
		}
		cut := first.Int64 - 1
		if !first.Valid {
			if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM audit_events WHERE writer = ?`, w).Scan(&cut); err != nil {
				return total, fmt.Errorf("prune chain %q: %w", w, err)
			}
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
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, false, err
	}
	defer tx.Rollback()
	var first sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MIN(seq) FROM audit_events WHERE writer = ? AND seq <= ?`, writer, cut).Scan(&first); err != nil {
		return 0, false, err
	}
	if !first.Valid {
		return 0, true, nil
	}
	end := min(cut, first.Int64+pruneChunk-1)
	var last int64
	var hash string
	if err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_events WHERE writer = ? AND seq <= ? ORDER BY seq DESC LIMIT 1`,
		writer, end).Scan(&last, &hash); err != nil {
		return 0, false, err
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE writer = ? AND seq <= ?`, writer, end)
	if err != nil {
		return 0, false, err
	}
	n, _ = res.RowsAffected()
	if _, err := tx.ExecContext(ctx, `INSERT INTO audit_chains (writer, created_at, pruned_seq, pruned_hash) VALUES (?, ?, ?, ?)
		ON CONFLICT (writer) DO UPDATE SET pruned_seq = excluded.pruned_seq, pruned_hash = excluded.pruned_hash
		WHERE audit_chains.pruned_seq < excluded.pruned_seq`, writer, ts(time.Now()), last, hash); err != nil {
		return 0, false, err
	}
	if err := tx.Commit(); err != nil {
		return 0, false, err
	}
	return n, end >= cut, nil
}

// stream scans rows into events for fn, and closes rows.
func stream(rows *sql.Rows, fn func(store.Event) error) error {
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

func scanEvent(rows *sql.Rows) (store.Event, error) {
	var e store.Event
	var t string
	var args sql.NullString
	if err := rows.Scan(&e.ID, &e.Writer, &e.Seq, &e.PrevHash, &e.Hash, &e.DecisionID, &t, &e.Kind,
		&e.Principal, &e.RunID, &e.ProposalID, &e.Tool, &e.ArgsSHA256, &args, &e.Decision, &e.Reason,
		&e.Detail, &e.Status, &e.PolicyRevision, &e.TokenJTI, &e.LatencyMicros, &e.CacheTier, &e.ArgsTruncated); err != nil {
		return e, fmt.Errorf("read event: %w", err)
	}
	var err error
	if e.Time, err = parseTS(t); err != nil {
		return e, fmt.Errorf("read event %d: %w", e.ID, err)
	}
	if args.Valid {
		e.Args = []byte(args.String)
	}
	return e, nil
}
