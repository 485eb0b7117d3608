package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

var _ store.State = (*Store)(nil)

// upsertUse counts one use of ?1 (limit ?2, expiry ?3) unless its limit is
// reached; an expired record (expires_at before ?4, now) starts again. It
// returns the count when the use was counted and no row otherwise.
const upsertUse = `INSERT INTO token_uses (jti, uses, max_uses, expires_at) VALUES (?1, 1, ?2, ?3)
	ON CONFLICT (jti) DO UPDATE SET
		uses = CASE WHEN token_uses.expires_at < ?4 THEN 1 ELSE token_uses.uses + 1 END,
		max_uses = excluded.max_uses,
		expires_at = CASE WHEN token_uses.expires_at < ?4 OR excluded.expires_at > token_uses.expires_at
			THEN excluded.expires_at ELSE token_uses.expires_at END
	WHERE token_uses.uses < excluded.max_uses OR token_uses.expires_at < ?4
	RETURNING uses`

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
func (s *Store) RecordUses(ctx context.Context, epoch, now time.Time, uses []store.Use) ([]bool, error) {
	for _, u := range uses {
		if err := u.Validate(); err != nil {
			return nil, err
		}
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	defer tx.Rollback()
	var stored string
	err = tx.QueryRowContext(ctx, `SELECT epoch FROM state_epoch WHERE id = 1`).Scan(&stored)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("record uses: %w: the store has no epoch", store.ErrEpochChanged)
	case err != nil:
		return nil, fmt.Errorf("record uses: %w", err)
	case stored != epochTS(epoch):
		return nil, fmt.Errorf("record uses: %w: stored %s, adopted %s", store.ErrEpochChanged, stored, epochTS(epoch))
	}
	stmt, err := tx.PrepareContext(ctx, upsertUse)
	if err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	defer stmt.Close()
	counted := make([]bool, len(uses))
	nowTS := ts(now)
	for i, u := range uses {
		var n int
		err := stmt.QueryRowContext(ctx, u.JTI, u.MaxUses, ts(u.ExpiresAt), nowTS).Scan(&n)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("record use of %q: %w", u.JTI, err)
		default:
			counted[i] = true
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	return counted, nil
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
