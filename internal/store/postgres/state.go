package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/m1-agent/m1/internal/store"
)

var _ store.State = (*Store)(nil)

// upsertUse counts one use of $1 (limit $2, expiry $3) unless its limit is
// reached; an expired record (expires_at before $4, now) starts again. It
// returns the count when the use was counted and no row otherwise.
// Concurrent transactions of other processes serialise on the row, and the
// WHERE is evaluated against the latest committed count, so the limit holds
// across processes.
const upsertUse = `INSERT INTO token_uses (jti, uses, max_uses, expires_at) VALUES ($1, 1, $2, $3)
	ON CONFLICT (jti) DO UPDATE SET
		uses = CASE WHEN token_uses.expires_at < $4 THEN 1 ELSE token_uses.uses + 1 END,
		max_uses = excluded.max_uses,
		expires_at = CASE WHEN token_uses.expires_at < $4 THEN excluded.expires_at
			ELSE GREATEST(token_uses.expires_at, excluded.expires_at) END
	WHERE token_uses.uses < excluded.max_uses OR token_uses.expires_at < $4
	RETURNING uses`

// StateEpoch returns the state epoch, storing candidate when there is
// none; see store.State.StateEpoch.
func (s *Store) StateEpoch(ctx context.Context, candidate time.Time) (time.Time, error) {
	if _, err := s.pool.Exec(ctx, `INSERT INTO state_epoch (id, epoch, created_at) VALUES (1, $1, now())
		ON CONFLICT (id) DO NOTHING`, candidate.Truncate(time.Second)); err != nil {
		return time.Time{}, fmt.Errorf("state epoch: %w", err)
	}
	var e time.Time
	if err := s.pool.QueryRow(ctx, `SELECT epoch FROM state_epoch WHERE id = 1`).Scan(&e); err != nil {
		return time.Time{}, fmt.Errorf("state epoch: %w", err)
	}
	return e.UTC(), nil
}

// RecordUses counts uses in one transaction; see store.State.RecordUses.
// The epoch row is share-locked for the transaction, so it cannot be
// replaced under the uses being counted.
func (s *Store) RecordUses(ctx context.Context, epoch, now time.Time, uses []store.Use) ([]bool, error) {
	for _, u := range uses {
		if err := u.Validate(); err != nil {
			return nil, err
		}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var stored time.Time
	err = tx.QueryRow(ctx, `SELECT epoch FROM state_epoch WHERE id = 1 FOR SHARE`).Scan(&stored)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("record uses: %w: the store has no epoch", store.ErrEpochChanged)
	case err != nil:
		return nil, fmt.Errorf("record uses: %w", err)
	case !stored.Equal(epoch.Truncate(time.Second)):
		return nil, fmt.Errorf("record uses: %w: stored %s, adopted %s", store.ErrEpochChanged,
			stored.UTC().Format(time.RFC3339), epoch.UTC().Format(time.RFC3339))
	}
	b := &pgx.Batch{}
	for _, u := range uses {
		b.Queue(upsertUse, u.JTI, u.MaxUses, u.ExpiresAt, now)
	}
	br := tx.SendBatch(ctx, b)
	counted := make([]bool, len(uses))
	for i, u := range uses {
		var n int
		err := br.QueryRow().Scan(&n)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			br.Close()
			return nil, fmt.Errorf("record use of %q: %w", u.JTI, err)
		default:
			counted[i] = true
		}
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("record uses: %w", err)
	}
	return counted, nil
}

// Uses streams the unexpired use records; see store.State.Uses.
func (s *Store) Uses(ctx context.Context, now time.Time, fn func(store.UseRecord) error) error {
	rows, err := s.pool.Query(ctx, `SELECT jti, uses, max_uses, expires_at FROM token_uses
		WHERE expires_at > $1 ORDER BY jti COLLATE "C"`, now)
	if err != nil {
		return fmt.Errorf("query uses: %w", err)
	}
	var u store.UseRecord
	_, err = pgx.ForEachRow(rows, []any{&u.JTI, &u.Uses, &u.MaxUses, &u.ExpiresAt}, func() error {
		u.ExpiresAt = u.ExpiresAt.UTC()
		return fn(u)
	})
	if err != nil {
		return fmt.Errorf("query uses: %w", err)
	}
	return nil
}

// PruneUses deletes the expired use records; see store.State.PruneUses.
func (s *Store) PruneUses(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM token_uses WHERE expires_at < $1`, before)
	if err != nil {
		return 0, fmt.Errorf("prune uses: %w", err)
	}
	return tag.RowsAffected(), nil
}

// PutRevocation stores r; see store.State.PutRevocation.
func (s *Store) PutRevocation(ctx context.Context, r store.Revocation) error {
	if err := r.Validate(); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO revoked_tokens (jti, sub, expires_at, reason, created_by, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (jti, sub) DO UPDATE SET expires_at = excluded.expires_at, reason = excluded.reason,
			created_by = excluded.created_by, created_at = excluded.created_at`,
		r.JTI, r.Sub, nullTime(r.ExpiresAt), r.Reason, r.CreatedBy, r.CreatedAt)
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
	var exp *time.Time
	err := s.pool.QueryRow(ctx, `DELETE FROM revoked_tokens WHERE jti = $1 AND sub = $2 RETURNING expires_at`,
		jti, sub).Scan(&exp)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("delete revocation: %w", err)
	}
	return exp == nil || exp.After(now), nil
}

// Revocations streams the revocations in force; see store.State.Revocations.
func (s *Store) Revocations(ctx context.Context, now time.Time, fn func(store.Revocation) error) error {
	rows, err := s.pool.Query(ctx, `SELECT jti, sub, expires_at, reason, created_by, created_at
		FROM revoked_tokens WHERE expires_at IS NULL OR expires_at > $1
		ORDER BY sub COLLATE "C", jti COLLATE "C"`, now)
	if err != nil {
		return fmt.Errorf("query revocations: %w", err)
	}
	var r store.Revocation
	var exp *time.Time
	_, err = pgx.ForEachRow(rows, []any{&r.JTI, &r.Sub, &exp, &r.Reason, &r.CreatedBy, &r.CreatedAt}, func() error {
		r.ExpiresAt, r.CreatedAt = fromNull(exp), r.CreatedAt.UTC()
		return fn(r)
	})
	if err != nil {
		return fmt.Errorf("query revocations: %w", err)
	}
	return nil
}
