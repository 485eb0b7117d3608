package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	msqlite "modernc.org/sqlite"

	"github.com/m1-agent/m1/internal/store"
)

// ErrLive is wrapped by OpenReadOnly's error for a file with a write-ahead
// log beside it: a database a process has open (or had, and did not close
// cleanly), whose latest writes are in the log, not yet in the file.
var ErrLive = errors.New("sqlite: a write-ahead log is beside the file (a live database, not a backup)")

// Snapshot writes a consistent copy of the SQLite store at path to out, as
// of one moment, while other processes go on writing to the store: one
// read transaction (VACUUM INTO), so it neither blocks the writers nor sees
// half of a batch. out must not exist or be empty; an empty file keeps its
// permissions. The copy is compact, has no write-ahead log and applies no
// migration: it has the store's schema. Snapshot never creates path.
func Snapshot(ctx context.Context, path, out string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("snapshot sqlite %q: %w", path, err)
	}
	db, err := sql.Open("sqlite", fileURI(path, url.Values{"mode": {"ro"}, "_busy_timeout": {"10000"}}))
	if err != nil {
		return fmt.Errorf("snapshot sqlite %q: %w", path, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, out); err != nil {
		return fmt.Errorf("snapshot sqlite %q into %q: %w", path, out, notADatabase(err))
	}
	return nil
}

// OpenReadOnly opens the SQLite file at path read-only, for a file no
// process writes, such as a backup: immutable (no lock, no write-ahead
// log, nothing written beside it), and without applying a migration. It
// refuses a file with a write-ahead log beside it (ErrLive), a file that is
// not an SQLite database, a schema newer than this binary's that is not
// declared compatible with it (store.ErrSchemaTooNew), and a schema older
// than this binary's (store.ErrSchemaOlder: its migrations cannot be
// applied read-only; open a copy with Open). Writes through the Store fail.
func OpenReadOnly(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("sqlite: no database path")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %q read-only: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("open sqlite %q read-only: not a regular file", path)
	}
	if wal, err := os.Stat(path + "-wal"); err == nil && wal.Size() > 0 {
		return nil, fmt.Errorf("open sqlite %q read-only: %w", path, ErrLive)
	}
	db, err := sql.Open("sqlite", fileURI(path, url.Values{"mode": {"ro"}, "immutable": {"1"}}))
	if err != nil {
		return nil, fmt.Errorf("open sqlite %q read-only: %w", path, err)
	}
	db.SetMaxOpenConns(DefaultOptions().Readers)
	ms, err := Migrations()
	if err == nil {
		var applied []store.AppliedMigration
		if applied, err = readApplied(ctx, db); err == nil {
			st := store.NewSchemaStatus(ms, applied)
			switch {
			case st.Store == 0:
				err = errors.New("no M1 schema: not an M1 store")
			case st.Err() != nil:
				err = st.Err()
			case len(st.Pending) > 0:
				err = fmt.Errorf("%w: the file's schema is version %d, this binary's %d (it lacks %s)", store.ErrSchemaOlder, st.Store, st.Binary, joinInts(st.Pending))
			}
		}
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite %q read-only: %w", path, notADatabase(err))
	}
	return &Store{path: path, w: db, r: db}, nil
}

// CheckIntegrity runs SQLite's integrity check over the whole file (every
// page, index and constraint) and returns an error naming the first
// problems found.
func (s *Store) CheckIntegrity(ctx context.Context) error {
	rows, err := s.r.QueryContext(ctx, `PRAGMA integrity_check(20)`)
	if err != nil {
		return fmt.Errorf("integrity check of %q: %w", s.path, notADatabase(err))
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("integrity check of %q: %w", s.path, err)
		}
		if line != "ok" {
			problems = append(problems, line)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("integrity check of %q: %w", s.path, notADatabase(err))
	}
	if len(problems) > 0 {
		return fmt.Errorf("integrity check of %q failed: %s", s.path, strings.Join(problems, "; "))
	}
	return nil
}

// InUse reports whether a process has the SQLite file at path open (an
// m1-authz, m1-orchestrator or any SQLite client, in this process or
// another): it tries to take the file's exclusive lock, without waiting. A
// missing file is not in use, nor is a corrupt one no process holds. When the file is not in use, the probe is
// its last user: closing it folds a write-ahead log left by a crash into
// the file and removes it, as SQLite does.
func InUse(ctx context.Context, path string) (bool, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	q := url.Values{"mode": {"rw"}, "_pragma": {"locking_mode(EXCLUSIVE)", "busy_timeout(0)"}}
	db, err := sql.Open("sqlite", fileURI(path, q))
	if err != nil {
		return false, fmt.Errorf("probe sqlite %q: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	_, err = db.ExecContext(ctx, `BEGIN EXCLUSIVE; COMMIT`)
	var se *msqlite.Error
	switch {
	case err == nil:
		return false, nil
	case errors.As(err, &se) && (se.Code()&0xff == 5 || se.Code()&0xff == 6): // SQLITE_BUSY, SQLITE_LOCKED
		return true, nil
	case errors.As(err, &se) && (se.Code()&0xff == 11 || se.Code()&0xff == 26): // SQLITE_CORRUPT, SQLITE_NOTADB
		// The lock was taken (a conflict is SQLITE_BUSY, found first):
		// no process uses it, and a corrupt store is what one restores
		// over.
		return false, nil
	}
	return false, fmt.Errorf("probe sqlite %q: %w", path, notADatabase(err))
}

func joinInts(vs []int) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ", ")
}
