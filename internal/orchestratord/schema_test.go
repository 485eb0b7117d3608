package orchestratord

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// The schema guard (DESIGN §9): m1-orchestrator refuses to start on a
// store a newer binary migrated, naming both versions, and starts when
// that schema declares itself compatible with it.
func TestSchemaGuardAtStart(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	startStop := func() error {
		s, err := New(context.Background(), o)
		if err != nil {
			return err
		}
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return s.Stop(context.Background())
	}
	if err := startStop(); err != nil { // creates the store
		t.Fatal(err)
	}
	st, err := backend.Schema(context.Background(), "", o.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	bin := st.Binary
	db, err := sql.Open("sqlite", filepath.Join(o.DataDir, backend.DefaultFile)+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(fmt.Sprintf(`INSERT INTO schema_migrations VALUES (%d, 'later', '2026-03-01T12:00:00.000000Z')`, bin+1)); err != nil {
		t.Fatal(err)
	}
	err = startStop()
	if !errors.Is(err, store.ErrSchemaTooNew) || !strings.Contains(err.Error(), fmt.Sprintf("version %d", bin+1)) || !strings.Contains(err.Error(), fmt.Sprintf("version %d", bin)) {
		t.Fatalf("New on a store of schema %d = %v, want a refusal naming %d and %d", bin+1, err, bin+1, bin)
	}
	if _, err := db.Exec(fmt.Sprintf(`INSERT INTO schema_compat VALUES (%d, %d)`, bin+1, bin)); err != nil {
		t.Fatal(err)
	}
	if err := startStop(); err != nil {
		t.Fatalf("New on a store of schema %d declared compatible with %d = %v", bin+1, bin, err)
	}
}
