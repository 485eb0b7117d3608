// Package backend opens the store.Store a database URL names
// (M1_DATABASE_URL, `m1 audit … --db URL`). It lives apart from package
// store because it imports both backends, which import store.
package backend

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/postgres"
	"github.com/m1-agent/m1/internal/store/sqlite"
)

// DefaultFile is the SQLite file's name under the data directory.
const DefaultFile = "m1.db"

// Kind names a backend.
type Kind string

// The backends.
const (
	SQLite   Kind = "sqlite"
	Postgres Kind = "postgres"
)

// Parse says which backend dsn names and what to open it with (a file path
// for SQLite, the URL itself for PostgreSQL):
//
//	""                            SQLite, <dataDir>/m1.db
//	sqlite:///var/lib/m1/m1.db    SQLite, /var/lib/m1/m1.db
//	sqlite://m1.db, sqlite:m1.db  SQLite, m1.db (relative)
//	/var/lib/m1/audit.db          SQLite (a path ending .db, .sqlite or .sqlite3)
//	postgres://… postgresql://…   PostgreSQL
//
// Errors never echo a password.
func Parse(dsn, dataDir string) (Kind, string, error) {
	switch {
	case dsn == "":
		if dataDir == "" {
			return "", "", fmt.Errorf("no database URL and no data directory")
		}
		return SQLite, filepath.Join(dataDir, DefaultFile), nil
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return Postgres, dsn, nil
	case strings.HasPrefix(dsn, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite:"), "//")
		if path == "" {
			return "", "", fmt.Errorf("database URL %q names no file", dsn)
		}
		return SQLite, path, nil
	case hasSuffix(dsn, ".db", ".sqlite", ".sqlite3") && !strings.Contains(dsn, "://"):
		return SQLite, dsn, nil
	}
	const want = "want postgres://…, sqlite:///path or a path ending .db"
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		return "", "", fmt.Errorf("unsupported database URL scheme %q: %s", u.Scheme, want)
	}
	return "", "", fmt.Errorf("unsupported database URL: %s", want)
}

// Open opens the store dsn names (see Parse), with each backend's default
// options, and applies its migrations. For the default SQLite file it
// creates dataDir (0700) when missing.
func Open(ctx context.Context, dsn, dataDir string) (store.Store, error) {
	kind, target, err := Parse(dsn, dataDir)
	if err != nil {
		return nil, err
	}
	switch kind {
	case Postgres:
		return postgres.Open(ctx, target, postgres.DefaultOptions())
	default:
		if dsn == "" {
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return nil, fmt.Errorf("create data directory: %w", err)
			}
		}
		return sqlite.Open(ctx, target, sqlite.DefaultOptions())
	}
}

func hasSuffix(s string, suffixes ...string) bool {
	for _, x := range suffixes {
		if strings.HasSuffix(s, x) {
			return true
		}
	}
	return false
}

// Schema returns the schema of the store dsn names (see Parse) against
// this binary's, without changing the store: store.SchemaStatus.Err says
// whether this binary (m1-authz, m1-orchestrator, m1) can run against it,
// and names both versions when it cannot. Open checks the same before it
// applies a migration. A missing SQLite file is an error wrapping
// fs.ErrNotExist (Open would create it: every migration pending); an
// empty PostgreSQL database has Store 0.
func Schema(ctx context.Context, dsn, dataDir string) (store.SchemaStatus, error) {
	kind, target, err := Parse(dsn, dataDir)
	if err != nil {
		return store.SchemaStatus{}, err
	}
	if kind == Postgres {
		return postgres.ReadSchema(ctx, target)
	}
	return sqlite.ReadSchema(ctx, target)
}

// Inspect reports on the store dsn names (see Parse) without changing it:
// schema, size, rows per table and audit chains (m1 store status).
func Inspect(ctx context.Context, dsn, dataDir string) (store.Status, error) {
	kind, target, err := Parse(dsn, dataDir)
	if err != nil {
		return store.Status{}, err
	}
	if kind == Postgres {
		return postgres.Inspect(ctx, target)
	}
	return sqlite.Inspect(ctx, target)
}
