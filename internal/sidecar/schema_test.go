package sidecar

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/testenv"
)

// The schema guard (DESIGN §9): m1-authz refuses to start on a store a
// newer binary migrated, naming both versions, and starts when that
// schema declares itself compatible with it. (A store that is down at
// start is another matter: the sidecar starts and spools.)
func TestSchemaGuardAtStart(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		dataDir := t.TempDir()
		testSchemaGuardAtStart(t, "", dataDir, func(q string) {
			db, err := sql.Open("sqlite", filepath.Join(dataDir, backend.DefaultFile)+"?_busy_timeout=10000")
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := db.Exec(q); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := testenv.StartPostgres(t).NewDatabase(t)
		testSchemaGuardAtStart(t, dsn, t.TempDir(), func(q string) {
			ctx := context.Background()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			if _, err := c.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		})
	})
}

func testSchemaGuardAtStart(t *testing.T, dsn, dataDir string, exec func(q string)) {
	opts := func() Options {
		o := testOptions(t) // a fresh metrics registry each time
		o.DatabaseURL, o.DataDir = dsn, dataDir
		return o
	}
	stop(t, startServer(t, opts())) // creates the store
	st, err := backend.Schema(context.Background(), dsn, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	bin := st.Binary
	exec(fmt.Sprintf(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (%d, 'later', '2026-03-01T12:00:00.000000Z')`, bin+1))
	for _, audit := range []bool{true, false} { // the security state opens the store too
		o := opts()
		o.Audit = audit
		s, err := New(context.Background(), o)
		if err == nil {
			s.Stop(context.Background())
		}
		if err == nil || !errors.Is(err, store.ErrSchemaTooNew) ||
			!strings.Contains(err.Error(), fmt.Sprintf("version %d", bin+1)) || !strings.Contains(err.Error(), fmt.Sprintf("version %d", bin)) {
			t.Fatalf("New (audit %v) on a store of schema %d = %v, want a refusal naming %d and %d", audit, bin+1, err, bin+1, bin)
		}
	}
	exec(fmt.Sprintf(`INSERT INTO schema_compat (version, compatible_with) VALUES (%d, %d)`, bin+1, bin))
	s := startServer(t, opts())
	check(t, checkClient(t, s), toolCall("rm_rf", `{}`), code.Code_PERMISSION_DENIED)
	stop(t, s)
	var n int
	rs, err := backend.Open(context.Background(), dsn, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	rs.Events(context.Background(), store.Filter{}, func(store.Event) error { n++; return nil })
	if n != 1 {
		t.Fatalf("store holds %d events after a decision on the compatible schema, want 1", n)
	}
}
