package postgres

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

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
		applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
	)`,
	`CREATE TABLE IF NOT EXISTS schema_compat (
		version         INTEGER PRIMARY KEY,
		compatible_with INTEGER NOT NULL
	)`,
}

// Migrations returns this binary's PostgreSQL migrations, by version.
func Migrations() ([]store.Migration, error) {
	return store.LoadMigrations(migrations, "migrations")
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// readApplied returns the migrations the database recorded, with what
// each declared compatible with; none for an empty database (or one made
// before schema_compat existed: then nothing declared anything).
func readApplied(ctx context.Context, q querier) ([]store.AppliedMigration, error) {
	var hasMigrations, hasCompat bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL, to_regclass('schema_compat') IS NOT NULL`).
		Scan(&hasMigrations, &hasCompat); err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	if !hasMigrations {
		return nil, nil
	}
	query := `SELECT version, name, 0 FROM schema_migrations ORDER BY version`
	if hasCompat {
		query = `SELECT m.version, m.name, coalesce(c.compatible_with, 0)
			FROM schema_migrations m LEFT JOIN schema_compat c ON c.version = m.version ORDER BY m.version`
	}
	rows, err := q.Query(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.AppliedMigration, error) {
		var v, c int32
		var a store.AppliedMigration
		err := r.Scan(&v, &a.Name, &c)
		a.Version, a.CompatibleWith = int(v), int(c)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("read schema: %w", err)
	}
	return out, nil
}

// Schema returns the database's schema against this binary's.
func (s *Store) Schema(ctx context.Context) (store.SchemaStatus, error) {
	ms, err := Migrations()
	if err != nil {
		return store.SchemaStatus{}, err
	}
	applied, err := readApplied(ctx, s.pool)
	if err != nil {
		return store.SchemaStatus{}, fmt.Errorf("postgres: %w", err)
	}
	return store.NewSchemaStatus(ms, applied), nil
}

// ReadSchema returns the schema of the database dsn names against this
// binary's, without changing the database (one read-only transaction). An
// empty database has Store 0, every migration pending.
func ReadSchema(ctx context.Context, dsn string) (store.SchemaStatus, error) {
	st, err := inspect(ctx, dsn, false)
	return st.Schema, err
}

// Inspect reports on the database dsn names: its schema against this
// binary's and the migrations it recorded, its size (pg_database_size),
// the rows of each table of the current schema, and each audit chain's
// length, head and last event time. It reads in one read-only
// transaction and applies no migration, so it reports on a database whose
// schema this binary cannot run against too.
func Inspect(ctx context.Context, dsn string) (store.Status, error) {
	return inspect(ctx, dsn, true)
}

func inspect(ctx context.Context, dsn string, full bool) (store.Status, error) {
	out := store.Status{Backend: "postgres"}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return out, fmt.Errorf("postgres: parse database URL: %w", err) // pgconn redacts the password
	}
	out.Location = cfg.Host + ":" + strconv.Itoa(int(cfg.Port)) + "/" + cfg.Database
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return out, fmt.Errorf("postgres: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return out, fmt.Errorf("postgres: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	ms, err := Migrations()
	if err != nil {
		return out, err
	}
	applied, err := readApplied(ctx, tx)
	if err != nil {
		return out, fmt.Errorf("postgres: %w", err)
	}
	out.Schema, out.Migrations = store.NewSchemaStatus(ms, applied), applied
	if !full {
		return out, nil
	}
	if err := tx.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&out.Bytes); err != nil {
		return out, fmt.Errorf("postgres: database size: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename`)
	if err != nil {
		return out, fmt.Errorf("postgres: list tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return out, fmt.Errorf("postgres: list tables: %w", err)
	}
	has := map[string]bool{}
	for _, n := range tables {
		has[n] = true
		var rows int64
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{n}.Sanitize()).Scan(&rows); err != nil {
			return out, fmt.Errorf("postgres: count %s: %w", n, err)
		}
		out.Tables = append(out.Tables, store.TableRows{Name: n, Rows: rows})
	}
	if !has["audit_chains"] || !has["audit_events"] {
		return out, nil
	}
	rows, err = tx.Query(ctx, `SELECT c.writer, c.pruned_seq, c.pruned_hash,
		coalesce(e.n, 0), coalesce(e.last_seq, 0), coalesce(h.hash, ''), h.time
	FROM audit_chains c
	LEFT JOIN (SELECT writer, count(*) AS n, max(seq) AS last_seq FROM audit_events GROUP BY writer) e ON e.writer = c.writer
	LEFT JOIN audit_events h ON h.writer = c.writer AND h.seq = e.last_seq
	ORDER BY c.writer`)
	if err != nil {
		return out, fmt.Errorf("postgres: read chains: %w", err)
	}
	out.Chains, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.ChainStatus, error) {
		var c store.ChainStatus
		var last *time.Time
		if err := r.Scan(&c.Writer, &c.PrunedSeq, &c.PrunedHash, &c.Events, &c.HeadSeq, &c.HeadHash, &last); err != nil {
			return c, err
		}
		if last != nil {
			c.LastEvent = last.UTC()
		}
		if c.Events == 0 {
			c.HeadSeq, c.HeadHash = c.PrunedSeq, c.PrunedHash
		}
		return c, nil
	})
	if err != nil {
		return out, fmt.Errorf("postgres: read chains: %w", err)
	}
	return out, nil
}
