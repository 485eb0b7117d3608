// Package sqlite is the embedded store.Store: one SQLite file (by default
// <M1_DATA_DIR>/m1.db) through modernc.org/sqlite, pure Go, no cgo. The file
// is in WAL mode so that the sidecar, the orchestrator and the CLI can share
// it on one host: readers never block the writer, and writers in different
// processes queue for the write lock (BEGIN IMMEDIATE with a busy timeout)
// instead of failing with "database is locked".
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/m1-agent/m1/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// timeLayout is how times are stored: UTC text that sorts as time.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// Options tune Open.
type Options struct {
	// BusyTimeout is how long a write waits for another process's write
	// lock before failing.
	BusyTimeout time.Duration
	// Readers bounds the read connections (the writer has its own, one).
	Readers int

	migrations fs.FS // nil: the embedded ones; tests set others (export_test.go)
}

// DefaultOptions returns the defaults: a 10s busy timeout, 4 readers.
func DefaultOptions() Options {
	return Options{BusyTimeout: 10 * time.Second, Readers: 4}
}

func (o Options) validate() error {
	switch {
	case o.BusyTimeout <= 0:
		return errors.New("sqlite: Options.BusyTimeout must be positive")
	case o.Readers < 1:
		return errors.New("sqlite: Options.Readers must be at least 1")
	}
	return nil
}

// Store is a store.Store on one SQLite file. It is safe for concurrent use,
// and any number of Stores, in this process or others, may open one file.
type Store struct {
	path      string
	w         *sql.DB // one connection: this Store's writes are serialized here
	r         *sql.DB // read connections
	closeOnce sync.Once
	closeErr  error
	rowsMu    sync.Mutex // guards rows
	rows      []byte     // insertMany's buffer
	stmtMu    sync.Mutex
	stmts     *stateStatements // prepared on first use; stmtMu
}

var _ store.Store = (*Store)(nil)

// Open opens (creating it if needed) the SQLite database at path, whose
// directory must exist, and applies the pending migrations. A store whose
// schema is newer than this binary's and not declared compatible with it
// is refused with an error that wraps store.ErrSchemaTooNew and names both
// versions; nothing is applied to it.
func Open(ctx context.Context, path string, o Options) (*Store, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlite: invalid database path %q", path)
	}
	q := url.Values{}
	q.Set("_busy_timeout", strconv.FormatInt(o.BusyTimeout.Milliseconds(), 10))
	q.Set("_journal_mode", "WAL")
	q.Set("_foreign_keys", "1")
	q.Set("_synchronous", "FULL") // an acknowledged audit event survives a power cut
	// The writer keeps temporary data (statement journals of multi-row
	// upserts, sorters) in memory: past 64 KiB SQLite would otherwise
	// spill it to a temporary file, a write system call per page. It is
	// never needed after a crash, so durability is unchanged.
	wq := url.Values{"_txlock": {"immediate"}, "_pragma": {"temp_store(memory)"}}
	rq := url.Values{"_query_only": {"1"}}
	for k, v := range q {
		wq[k], rq[k] = v, v
	}
	w, err := sql.Open("sqlite", path+"?"+wq.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite %q: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s := &Store{path: path, w: w}
	fsys := o.migrations
	if fsys == nil {
		fsys = migrations
	}
	if err := s.migrate(ctx, fsys); err != nil {
		w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", path+"?"+rq.Encode())
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %q: %w", path, err)
	}
	r.SetMaxOpenConns(o.Readers)
	r.SetMaxIdleConns(o.Readers)
	s.r = r
	return s, nil
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// migrate applies the pending migrations in one write transaction (BEGIN
// IMMEDIATE, so two processes opening a new file do not race), after the
// schema guard: a store whose schema this binary cannot run against
// (store.SchemaStatus.Err) is refused, and nothing is applied.
func (s *Store) migrate(ctx context.Context, fsys fs.FS) error {
	ms, err := store.LoadMigrations(fsys, "migrations")
	if err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate %q: %w", s.path, err)
	}
	defer tx.Rollback()
	for _, q := range bootstrap {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("migrate %q: %w", s.path, err)
		}
	}
	applied, err := readApplied(ctx, tx)
	if err != nil {
		return fmt.Errorf("migrate %q: %w", s.path, err)
	}
	if err := store.NewSchemaStatus(ms, applied).Err(); err != nil {
		return fmt.Errorf("open sqlite %q: %w", s.path, err)
	}
	done := map[int]bool{}
	for _, a := range applied {
		done[a.Version] = true
	}
	for _, m := range ms {
		if done[m.Version] {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return fmt.Errorf("migrate %q: apply %04d_%s: %w", s.path, m.Version, m.Name, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
			m.Version, m.Name, ts(time.Now())); err != nil {
			return fmt.Errorf("migrate %q: record %04d_%s: %w", s.path, m.Version, m.Name, err)
		}
		if m.CompatibleWith > 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_compat (version, compatible_with) VALUES (?, ?)`,
				m.Version, m.CompatibleWith); err != nil {
				return fmt.Errorf("migrate %q: record %04d_%s: %w", s.path, m.Version, m.Name, err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate %q: %w", s.path, err)
	}
	return nil
}

// Ping checks that the database answers a query.
func (s *Store) Ping(ctx context.Context) error {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil {
		return fmt.Errorf("ping sqlite %q: %w", s.path, err)
	}
	return nil
}

// Close closes the connections. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		var errR error
		if s.r != nil && s.r != s.w { // OpenReadOnly: one pool for both
			errR = s.r.Close()
		}
		var errS error
		s.stmtMu.Lock()
		if s.stmts != nil {
			errS = errors.Join(s.stmts.epoch.Close(), s.stmts.upsert.Close())
		}
		s.stmtMu.Unlock()
		s.closeErr = errors.Join(errS, s.w.Close(), errR)
	})
	return s.closeErr
}

// ts formats t as stored.
func ts(t time.Time) string { return t.UTC().Format(timeLayout) }

// parseTS parses a stored time.
func parseTS(s string) (time.Time, error) {
	t, err := time.Parse(timeLayout, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("stored time %q: %w", s, err)
	}
	return t, nil
}
