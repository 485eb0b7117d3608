package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/m1-agent/m1/internal/store"
)

// bootstrap creates the tables that record the schema itself, before any
// migration: schema_migrations (what was applied) and schema_compat (what
// each applied migration declared compatible with, see
// store.Migration.CompatibleWith).
var bootstrap = []string{
	`CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at TEXT NOT NULL
	) STRICT`,
	`CREATE TABLE IF NOT EXISTS schema_compat (
		version         INTEGER PRIMARY KEY,
		compatible_with INTEGER NOT NULL
	) STRICT`,
}

// Migrations returns this binary's SQLite migrations, by version.
func Migrations() ([]store.Migration, error) {
	return store.LoadMigrations(migrations, "migrations")
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// readApplied returns the migrations the database recorded, with what
// each declared compatible with; none for an empty database (or one made
// before schema_compat existed: then nothing declared anything).
func readApplied(ctx context.Context, q querier) ([]store.AppliedMigration, error) {
	tables := map[string]bool{}
	rows, err := q.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('schema_migrations', 'schema_compat')`)
	if err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read schema: %w", err)
		}
		tables[n] = true
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	if !tables["schema_migrations"] {
		return nil, nil
	}
	query := `SELECT version, name, 0 FROM schema_migrations ORDER BY version`
	if tables["schema_compat"] {
		query = `SELECT m.version, m.name, coalesce(c.compatible_with, 0)
			FROM schema_migrations m LEFT JOIN schema_compat c ON c.version = m.version ORDER BY m.version`
	}
	rows, err = q.QueryContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	defer rows.Close()
	var out []store.AppliedMigration
	for rows.Next() {
		var a store.AppliedMigration
		if err := rows.Scan(&a.Version, &a.Name, &a.CompatibleWith); err != nil {
			return nil, fmt.Errorf("read schema: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	return out, nil
}

// Schema returns the store's schema against this binary's.
func (s *Store) Schema(ctx context.Context) (store.SchemaStatus, error) {
	ms, err := Migrations()
	if err != nil {
		return store.SchemaStatus{}, err
	}
	applied, err := readApplied(ctx, s.r)
	if err != nil {
		return store.SchemaStatus{}, fmt.Errorf("sqlite %q: %w", s.path, err)
	}
	return store.NewSchemaStatus(ms, applied), nil
}

// ReadSchema returns the schema of the SQLite file at path against this
// binary's, without changing the file (it is opened read-only; a process
// may be writing to it). A missing file is an error that wraps
// fs.ErrNotExist: Open would create it empty (Store 0, every migration
// pending).
func ReadSchema(ctx context.Context, path string) (store.SchemaStatus, error) {
	st, _, err := inspect(ctx, path, false)
	return st.Schema, err
}

// Inspect reports on the SQLite file at path: its schema against this
// binary's and the migrations it recorded, its size on disk (with its
// write-ahead log), the rows of each table, and each audit chain's length,
// head and last event time. It opens the file read-only and applies no
// migration, so it reports on a store whose schema this binary cannot run
// against too. A missing file is an error that wraps fs.ErrNotExist.
func Inspect(ctx context.Context, path string) (store.Status, error) {
	st, _, err := inspect(ctx, path, true)
	return st, err
}

func inspect(ctx context.Context, path string, full bool) (store.Status, []store.AppliedMigration, error) {
	out := store.Status{Backend: "sqlite", Location: path}
	fi, err := os.Stat(path)
	if err != nil {
		return out, nil, fmt.Errorf("sqlite store %q: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return out, nil, fmt.Errorf("sqlite store %q: not a regular file", path)
	}
	// Read-write but query-only, never creating the file: as the last
	// connection to close, it removes the write-ahead log and index a
	// read-only one would leave behind. A file this process may not write
	// is read read-only.
	var applied []store.AppliedMigration
	for _, mode := range []string{"rw", "ro"} {
		db, oerr := sql.Open("sqlite", fileURI(path, url.Values{"mode": {mode}, "_query_only": {"1"}, "_busy_timeout": {"10000"}}))
		if oerr != nil {
			return out, nil, fmt.Errorf("open sqlite %q: %w", path, oerr)
		}
		db.SetMaxOpenConns(1)
		out, applied, err = inspectDB(ctx, db, out, full)
		db.Close()
		if err == nil || mode == "ro" || !isReadOnly(err) {
			break
		}
	}
	if err != nil {
		return out, applied, fmt.Errorf("sqlite store %q: %w", path, err)
	}
	out.Bytes = fi.Size()
	if wal, err := os.Stat(path + "-wal"); err == nil {
		out.Bytes += wal.Size()
	}
	return out, applied, nil
}

// inspectDB fills out from db, a read-only connection.
func inspectDB(ctx context.Context, db *sql.DB, out store.Status, full bool) (store.Status, []store.AppliedMigration, error) {
	ms, err := Migrations()
	if err != nil {
		return out, nil, err
	}
	// One read transaction: every figure from one snapshot.
	conn, err := db.Conn(ctx)
	if err != nil {
		return out, nil, notADatabase(err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return out, nil, notADatabase(err)
	}
	defer tx.Rollback()
	applied, err := readApplied(ctx, tx)
	if err != nil {
		return out, nil, notADatabase(err)
	}
	out.Schema = store.NewSchemaStatus(ms, applied)
	out.Migrations = applied
	if !full {
		return out, applied, nil
	}
	var tables []string
	rows, err := tx.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	if err != nil {
		return out, applied, err
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return out, applied, err
		}
		tables = append(tables, n)
	}
	if err := rows.Close(); err != nil {
		return out, applied, err
	}
	has := map[string]bool{}
	for _, n := range tables {
		has[n] = true
		var c int64
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM "`+strings.ReplaceAll(n, `"`, `""`)+`"`).Scan(&c); err != nil {
			return out, applied, fmt.Errorf("count %s: %w", n, err)
		}
		out.Tables = append(out.Tables, store.TableRows{Name: n, Rows: c})
	}
	if !has["audit_chains"] || !has["audit_events"] {
		return out, applied, nil
	}
	rows, err = tx.QueryContext(ctx, chainsQuery)
	if err != nil {
		return out, applied, fmt.Errorf("read chains: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var c store.ChainStatus
		var last sql.NullString
		if err := rows.Scan(&c.Writer, &c.PrunedSeq, &c.PrunedHash, &c.Events, &c.HeadSeq, &c.HeadHash, &last); err != nil {
			return out, applied, fmt.Errorf("read chains: %w", err)
		}
		if last.Valid {
			if c.LastEvent, err = parseTS(last.String); err != nil {
				return out, applied, err
			}
		}
		if c.Events == 0 {
			c.HeadSeq, c.HeadHash = c.PrunedSeq, c.PrunedHash
		}
		out.Chains = append(out.Chains, c)
	}
	if err := rows.Err(); err != nil {
		return out, applied, fmt.Errorf("read chains: %w", err)
	}
	return out, applied, nil
}

// chainsQuery lists every chain with its stored events, head and last
// event time, in writer order; columns of schema 1 only, so that it reads
// older and newer stores alike.
const chainsQuery = `SELECT c.writer, c.pruned_seq, c.pruned_hash,
	coalesce(e.n, 0), coalesce(e.last_seq, 0), coalesce(h.hash, ''), h.time
FROM audit_chains c
LEFT JOIN (SELECT writer, count(*) AS n, max(seq) AS last_seq FROM audit_events GROUP BY writer) e ON e.writer = c.writer
LEFT JOIN audit_events h ON h.writer = c.writer AND h.seq = e.last_seq
ORDER BY c.writer`

// notADatabase makes SQLite's "file is not a database" say which file
// and what to do about it.
func notADatabase(err error) error {
	if strings.Contains(err.Error(), "not a database") {
		return fmt.Errorf("not an SQLite database (or an encrypted or corrupt one): %w", err)
	}
	return err
}

// fileURI is path as an SQLite URI with q: "file:" and the path with the
// characters a URI gives meaning to escaped.
func fileURI(path string, q url.Values) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return "file:" + r.Replace(path) + "?" + q.Encode()
}

// isReadOnly reports whether err is SQLite's "attempt to write a readonly
// database" or its failure to open a file read-write.
func isReadOnly(err error) bool {
	m := err.Error()
	return strings.Contains(m, "readonly") || strings.Contains(m, "unable to open")
}
