// Package postgres is the shared store.Store: PostgreSQL
// (M1_DATABASE_URL=postgres://…) through a bounded pgx pool, for many
// sidecars and orchestrators writing one audit trail. Batches are one
// INSERT … SELECT FROM unnest(…) ON CONFLICT (writer, seq) DO NOTHING, so
// a batch costs one round trip whatever its size and re-sending it stores
// nothing twice. The pool reconnects by itself after an outage.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/m1-agent/m1/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the advisory lock key that serializes migrations across
// processes opening one database at once ("m1schema" in ASCII).
const migrationLock int64 = 0x6d31736368656d61

// Options tune Open.
type Options struct {
	// MaxConns bounds the pool. A pool_max_conns in the URL wins.
	MaxConns int32

	migrations fs.FS // nil: the embedded ones; tests set others (export_test.go)
}

// DefaultOptions returns the defaults: at most 8 connections.
func DefaultOptions() Options { return Options{MaxConns: 8} }

func (o Options) validate() error {
	if o.MaxConns < 1 {
		return errors.New("postgres: Options.MaxConns must be at least 1")
	}
	return nil
}

// Store is a store.Store on one PostgreSQL database. It is safe for
// concurrent use, and any number of Stores may share the database.
type Store struct {
	pool      *pgxpool.Pool
	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to the database dsn names (a postgres:// URL or a
// key=value string) and applies the pending migrations. It fails when the
// database cannot be reached. A database whose schema is newer than this
// binary's and not declared compatible with it is refused with an error
// that wraps store.ErrSchemaTooNew and names both versions; nothing is
// applied to it.
func Open(ctx context.Context, dsn string, o Options) (*Store, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse database URL: %w", err) // pgconn redacts the password
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = o.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s := &Store{pool: pool}
	fsys := o.migrations
	if fsys == nil {
		fsys = migrations
	}
	if err := s.migrate(ctx, fsys); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// migrate applies the pending migrations in one transaction, under an
// advisory lock so that processes opening a new database do not race,
// after the schema guard: a database whose schema this binary cannot run
// against (store.SchemaStatus.Err) is refused, and nothing is applied.
func (s *Store) migrate(ctx context.Context, fsys fs.FS) error {
	ms, err := store.LoadMigrations(fsys, "migrations")
	if err != nil {
		return err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("postgres: migrate: lock: %w", err)
	}
	for _, q := range bootstrap {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("postgres: migrate: %w", err)
		}
	}
	applied, err := readApplied(ctx, tx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	if err := store.NewSchemaStatus(ms, applied).Err(); err != nil {
		return fmt.Errorf("postgres: open: %w", err)
	}
	done := map[int]bool{}
	for _, a := range applied {
		done[a.Version] = true
	}
	for _, m := range ms {
		if done[m.Version] {
			continue
		}
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return fmt.Errorf("postgres: migrate: apply %04d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
			return fmt.Errorf("postgres: migrate: record %04d_%s: %w", m.Version, m.Name, err)
		}
		if m.CompatibleWith > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO schema_compat (version, compatible_with) VALUES ($1, $2)`, m.Version, m.CompatibleWith); err != nil {
				return fmt.Errorf("postgres: migrate: record %04d_%s: %w", m.Version, m.Name, err)
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping postgres: %w", err)
	}
	return nil
}

// Close closes the pool, waiting for connections in use to be released. It
// is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(s.pool.Close)
	return nil
}
