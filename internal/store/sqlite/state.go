package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

var _ store.State = (*Store)(nil)

// upsertUses counts one use of each jti of ?1, a JSON array of [jti,
// max_uses, expires_at] rows with distinct jtis, unless its limit is
// reached; an expired record (expires_at before ?2, now) starts again. It
// returns the jti of each use counted (in no particular order). One
// statement for a whole group commit: SQLite compiles and steps it once,
// instead of once per use. "WHERE true" is SQLite's required
// disambiguation of an upsert after a SELECT.
const upsertUses = `INSERT INTO token_uses (jti, uses, max_uses, expires_at)
	SELECT value ->> 0, 1, value ->> 1, value ->> 2 FROM json_each(?1) WHERE true
	ON CONFLICT (jti) DO UPDATE SET
		uses = CASE WHEN token_uses.expires_at < ?2 THEN 1 ELSE token_uses.uses + 1 END,
		max_uses = excluded.max_uses,
		expires_at = CASE WHEN token_uses.expires_at < ?2 OR excluded.expires_at > token_uses.expires_at
			THEN excluded.expires_at ELSE token_uses.expires_at END
	WHERE token_uses.uses < excluded.max_uses OR token_uses.expires_at < ?2
	RETURNING jti`

// epochTS formats an epoch: whole seconds.
func epochTS(t time.Time) string { return ts(t.Truncate(time.Second)) }

// StateEpoch returns the state epoch, storing candidate when there is
// none; see store.State.StateEpoch.
func (s *Store) StateEpoch(ctx context.Context, candidate time.Time) (time.Time, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return time.Time{}, fmt.Errorf("state epoch: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO state_epoch (id, epoch, created_at) VALUES (1, ?, ?)
		ON CONFLICT (id) DO NOTHING`, epochTS(candidate), ts(time.Now())); err != nil {
		return time.Time{}, fmt.Errorf("state epoch: %w", err)
	}
	var raw string
	if err := tx.QueryRowContext(ctx, `SELECT epoch FROM state_epoch WHERE id = 1`).Scan(&raw); err != nil {
		return time.Time{}, fmt.Errorf("state epoch: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return time.Time{}, fmt.Errorf("state epoch: %w", err)
	}
	e, err := parseTS(raw)
	if err != nil {
		return time.Time{}, fmt.Errorf("state epoch: %w", err)
	}
	return e, nil
}

// RecordUses counts uses in one transaction; see store.State.RecordUses.
// Its statements are prepared once on the writer connection (stateStmts):
// compiling SQL costs the embedded SQLite more CPU than running it, and
// this runs once per group commit of the decision path.
func (s *Store) RecordUses(ctx context.Context, epoch, now time.Time, uses []store.Use) ([]bool, error) {
	for _, u := range uses {
		if err := u.Validate(); err != nil {
			return nil, err
		}
	}
	st, err := s.stateStmts(ctx)
	if err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	defer tx.Rollback()
	var stored string
	err = tx.StmtContext(ctx, st.epoch).QueryRowContext(ctx).Scan(&stored)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("record uses: %w: the store has no epoch", store.ErrEpochChanged)
	case err != nil:
		return nil, fmt.Errorf("record uses: %w", err)
	case stored != epochTS(epoch):
		return nil, fmt.Errorf("record uses: %w: stored %s, adopted %s", store.ErrEpochChanged, stored, epochTS(epoch))
	}
	counted, err := recordBatch(ctx, tx, tx.StmtContext(ctx, st.upsert), uses, now)
	if err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	return counted, nil
}

// recordBatch runs upsertUses on the batch. A jti that occurs more than
// once (a grant used by several calls of one commit) is counted by
// recordRepeated, in one read and one write for all its occurrences,
// when they agree (the same token's claims); otherwise every repeated jti
// is counted once per statement, its occurrences in order: the first
// occurrence of every jti in the first statement, the second ones in the
// next, and so on, so that each returned jti names exactly one use.
func recordBatch(ctx context.Context, tx *sql.Tx, stmt *sql.Stmt, uses []store.Use, now time.Time) ([]bool, error) {
	if single, repeated, ok := splitRepeated(uses); ok && len(repeated) > 0 {
		counted := make([]bool, len(uses))
		if len(single) > 0 {
			sub := make([]store.Use, len(single))
			for j, i := range single {
				sub[j] = uses[i]
			}
			c, err := recordRounds(ctx, stmt, sub, now)
			if err != nil {
				return nil, err
			}
			for j, i := range single {
				counted[i] = c[j]
			}
		}
		for _, idx := range repeated {
			if err := recordRepeated(ctx, tx, uses, idx, now, counted); err != nil {
				return nil, err
			}
		}
		return counted, nil
	}
	return recordRounds(ctx, stmt, uses, now)
}

// splitRepeated sorts the uses into those of a jti that occurs once and,
// for each jti that occurs more than once, its occurrences in order. ok is
// false when the occurrences of a jti disagree on max_uses or expires_at.
func splitRepeated(uses []store.Use) (single []int, repeated [][]int, ok bool) {
	occ := make(map[string][]int, len(uses))
	order := make([]string, 0, len(uses))
	for i, u := range uses {
		if _, seen := occ[u.JTI]; !seen {
			order = append(order, u.JTI)
		}
		occ[u.JTI] = append(occ[u.JTI], i)
	}
	for _, jti := range order {
		idx := occ[jti]
		if len(idx) == 1 {
			single = append(single, idx[0])
			continue
		}
		first := uses[idx[0]]
		for _, i := range idx[1:] {
			if uses[i].MaxUses != first.MaxUses || !uses[i].ExpiresAt.Equal(first.ExpiresAt) {
				return nil, nil, false
			}
		}
		repeated = append(repeated, idx)
	}
	return single, repeated, true
}

// recordRepeated counts the k occurrences idx of one jti (with the same
// max_uses and expires_at) as k upsertUses statements in a row would: an
// absent or expired record starts from 0, and uses are counted in order
// until max_uses. It reads the record once and writes it once.
func recordRepeated(ctx context.Context, tx *sql.Tx, uses []store.Use, idx []int, now time.Time, counted []bool) error {
	u := uses[idx[0]]
	nowTS := ts(now)
	var before int64
	var expired bool
	err := tx.QueryRowContext(ctx, `SELECT uses, expires_at < ? FROM token_uses WHERE jti = ?`, nowTS, u.JTI).Scan(&before, &expired)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		before = 0
	case err != nil:
		return err
	case expired:
		before = 0
	}
	granted := min(int64(len(idx)), max(int64(u.MaxUses)-before, 0))
	if granted == 0 {
		return nil // at its limit: nothing changes, as upsertUses's WHERE leaves it
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO token_uses (jti, uses, max_uses, expires_at) VALUES (?1, ?2, ?3, ?4)
		ON CONFLICT (jti) DO UPDATE SET
			uses = excluded.uses,
			max_uses = excluded.max_uses,
			expires_at = CASE WHEN token_uses.expires_at < ?5 OR excluded.expires_at > token_uses.expires_at
				THEN excluded.expires_at ELSE token_uses.expires_at END`,
		u.JTI, before+granted, u.MaxUses, ts(u.ExpiresAt), nowTS); err != nil {
		return err
	}
	for _, i := range idx[:granted] {
		counted[i] = true
	}
	return nil
}

// recordRounds runs upsertUses on the batch, a repeated jti once per
// statement (see recordBatch).
func recordRounds(ctx context.Context, stmt *sql.Stmt, uses []store.Use, now time.Time) ([]bool, error) {
	counted := make([]bool, len(uses))
	seen := make(map[string]int, len(uses)) // jti → occurrences so far
	round := make([]int, len(uses))         // use → its statement
	rounds := 0
	for i, u := range uses {
		round[i] = seen[u.JTI]
		seen[u.JTI]++
		rounds = max(rounds, round[i]+1)
	}
	nowTS := ts(now)
	buf := make([]byte, 0, 80*len(uses))
	idx := make(map[string]int, len(uses)) // jti → its use in this statement
	for r := range rounds {
		buf = append(buf[:0], '[')
		clear(idx)
		for i, u := range uses {
			if round[i] != r {
				continue
			}
			if len(idx) > 0 {
				buf = append(buf, ',')
			}
			idx[u.JTI] = i
			buf = appendString(append(buf, '['), u.JTI)
			buf = strconv.AppendInt(append(buf, ','), int64(u.MaxUses), 10)
			buf = append(u.ExpiresAt.UTC().AppendFormat(append(buf, ',', '"'), timeLayout), '"', ']')
		}
		buf = append(buf, ']')
		if err := countedRows(ctx, stmt, buf, nowTS, idx, counted); err != nil {
			return nil, err
		}
	}
	return counted, nil
}

// countedRows runs stmt on one statement's rows and marks the uses counted.
func countedRows(ctx context.Context, stmt *sql.Stmt, rowsJSON []byte, now string, idx map[string]int, counted []bool) error {
	rows, err := stmt.QueryContext(ctx, rowsJSON, now)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var jti string
		if err := rows.Scan(&jti); err != nil {
			return err
		}
		i, ok := idx[jti]
		if !ok { // never: RETURNING names the rows of this statement
			return fmt.Errorf("a use of %q counted that was not asked for", jti)
		}
		counted[i] = true
	}
	return rows.Err()
}

// stateStatements are RecordUses' statements, prepared on the writer.
type stateStatements struct {
	epoch  *sql.Stmt // the stored epoch
	upsert *sql.Stmt // upsertUses
}

// stateStmts prepares RecordUses' statements on first use (a store that
// never records a use, such as the orchestrator's, prepares nothing).
func (s *Store) stateStmts(ctx context.Context) (*stateStatements, error) {
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if s.stmts != nil {
		return s.stmts, nil
	}
	epoch, err := s.w.PrepareContext(ctx, `SELECT epoch FROM state_epoch WHERE id = 1`)
	if err != nil {
		return nil, err
	}
	upsert, err := s.w.PrepareContext(ctx, upsertUses)
	if err != nil {
		epoch.Close()
		return nil, err
	}
	s.stmts = &stateStatements{epoch: epoch, upsert: upsert}
	return s.stmts, nil
}

// Uses streams the unexpired use records; see store.State.Uses.
func (s *Store) Uses(ctx context.Context, now time.Time, fn func(store.UseRecord) error) error {
	rows, err := s.r.QueryContext(ctx, `SELECT jti, uses, max_uses, expires_at FROM token_uses
		WHERE expires_at > ? ORDER BY jti`, ts(now))
	if err != nil {
		return fmt.Errorf("query uses: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var u store.UseRecord
		var exp string
		if err := rows.Scan(&u.JTI, &u.Uses, &u.MaxUses, &exp); err != nil {
			return fmt.Errorf("query uses: %w", err)
		}
		if u.ExpiresAt, err = parseTS(exp); err != nil {
			return fmt.Errorf("query uses: %w", err)
		}
		if err := fn(u); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("query uses: %w", err)
	}
	return nil
}

// PruneUses deletes the expired use records; see store.State.PruneUses.
func (s *Store) PruneUses(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM token_uses WHERE expires_at < ?`, ts(before))
	if err != nil {
		return 0, fmt.Errorf("prune uses: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// PutRevocation stores r; see store.State.PutRevocation.
func (s *Store) PutRevocation(ctx context.Context, r store.Revocation) error {
	if err := r.Validate(); err != nil {
		return err
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO revoked_tokens (jti, sub, expires_at, reason, created_by, created_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (jti, sub) DO UPDATE SET expires_at = excluded.expires_at, reason = excluded.reason,
			created_by = excluded.created_by, created_at = excluded.created_at`,
		r.JTI, r.Sub, nullTS(r.ExpiresAt), r.Reason, r.CreatedBy, ts(r.CreatedAt))
	if err != nil {
		return fmt.Errorf("store revocation: %w", err)
	}
	return nil
}

// DeleteRevocation deletes one revocation; see store.State.DeleteRevocation.
func (s *Store) DeleteRevocation(ctx context.Context, jti, sub string, now time.Time) (bool, error) {
	if (jti == "") == (sub == "") {
		return false, errors.New("delete revocation: exactly one of jti and sub is required")
	}
	var exp sql.NullString
	err := s.w.QueryRowContext(ctx, `DELETE FROM revoked_tokens WHERE jti = ? AND sub = ? RETURNING expires_at`,
		jti, sub).Scan(&exp)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("delete revocation: %w", err)
	}
	return !exp.Valid || exp.String > ts(now), nil
}

// Revocations streams the revocations in force; see store.State.Revocations.
func (s *Store) Revocations(ctx context.Context, now time.Time, fn func(store.Revocation) error) error {
	rows, err := s.r.QueryContext(ctx, `SELECT jti, sub, expires_at, reason, created_by, created_at
		FROM revoked_tokens WHERE expires_at IS NULL OR expires_at > ? ORDER BY sub, jti`, ts(now))
	if err != nil {
		return fmt.Errorf("query revocations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r store.Revocation
		var exp sql.NullString
		var created string
		if err := rows.Scan(&r.JTI, &r.Sub, &exp, &r.Reason, &r.CreatedBy, &created); err != nil {
			return fmt.Errorf("query revocations: %w", err)
		}
		if r.ExpiresAt, err = parseNullTS(exp); err != nil {
			return fmt.Errorf("query revocations: %w", err)
		}
		if r.CreatedAt, err = parseTS(created); err != nil {
			return fmt.Errorf("query revocations: %w", err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("query revocations: %w", err)
	}
	return nil
}
