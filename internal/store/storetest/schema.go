package storetest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/m1-agent/m1/internal/store"
)

// SchemaBackend is a backend under the schema guard's suite (RunSchema).
type SchemaBackend struct {
	Backend
	// OpenWith opens t's database as a binary whose migrations are the
	// backend's plus extra (file name, e.g. "0009_x.sql", → SQL) would,
	// returning Open's error; OpenWith(t, nil) is this binary. The suite's
	// extra migrations use SQL both backends accept. Stores it returns are
	// closed with t.Cleanup.
	OpenWith func(t *testing.T, extra map[string]string) (store.Store, error)
	// Schema reads t's database's schema without changing it, as the
	// backend's ReadSchema does.
	Schema func(t *testing.T) (store.SchemaStatus, error)
}

// RunSchema runs the schema guard's suite: a binary runs against a store
// of its own schema, and against a newer one whose migrations declare
// themselves compatible with it ("-- m1:compatible-with N", recorded when
// applied, or a schema_compat row), and refuses a newer one that does not,
// naming both versions and applying nothing.
func RunSchema(t *testing.T, b SchemaBackend) {
	if b.Open == nil || b.Tamper == nil || b.OpenWith == nil || b.Schema == nil {
		t.Fatal("storetest.RunSchema: Open, Tamper, OpenWith and Schema are required")
	}
	t.Run("a new store has this binary's schema", func(t *testing.T) { testSchemaCurrent(t, b) })
	t.Run("rollback onto a newer compatible schema runs", func(t *testing.T) { testSchemaCompatible(t, b) })
	t.Run("rollback onto a newer incompatible schema is refused", func(t *testing.T) { testSchemaRefused(t, b) })
	t.Run("compatibility recorded by hand is honoured", func(t *testing.T) { testSchemaCompatRow(t, b) })
}

// schemaNow opens t's store as this binary and returns its schema status.
func schemaNow(t *testing.T, b SchemaBackend) store.SchemaStatus {
	t.Helper()
	s, err := b.Schema(t)
	if err != nil {
		t.Fatalf("Schema = %v", err)
	}
	return s
}

func testSchemaCurrent(t *testing.T, b SchemaBackend) {
	b.Open(t)
	s := schemaNow(t, b)
	if s.Binary < 1 || s.Store != s.Binary || s.Requires != s.Binary || len(s.Pending) > 0 || len(s.Unknown) > 0 || s.Err() != nil {
		t.Fatalf("Schema of a new store = %+v (%v), want store = requires = binary, nothing pending or unknown", s, s.Err())
	}
}

// future returns migration files of a binary newer than this one (schema
// bin): version bin+i for each entry, declared compatible with compat[i]
// when it is not 0.
func future(bin int, compat ...int) map[string]string {
	out := map[string]string{}
	for i, c := range compat {
		v := bin + 1 + i
		sql := fmt.Sprintf("-- a later binary's migration %d\nCREATE TABLE m1_future_%d (id INTEGER PRIMARY KEY);\n", v, v)
		if c > 0 {
			sql = fmt.Sprintf("-- m1:compatible-with %d\n", c) + sql
		}
		out[fmt.Sprintf("%04d_future_%d.sql", v, v)] = sql
	}
	return out
}

// appendVerify checks that s takes and verifies a chained batch.
func appendVerify(t *testing.T, s store.Store, writer string) {
	t.Helper()
	appendOK(t, s, chained(store.NewChainer(writer), base, 3))
	var v store.Verifier
	if err := s.Chain(context.Background(), writer, v.Add); err != nil {
		t.Fatalf("Chain(%q) = %v", writer, err)
	}
	if err := v.Close(); err != nil || v.Verified() != 3 {
		t.Fatalf("verify %q = %d events, %v; want 3 intact", writer, v.Verified(), err)
	}
}

func testSchemaCompatible(t *testing.T, b SchemaBackend) {
	b.Open(t).Close()
	bin := schemaNow(t, b).Binary
	// Binary bin+1 applies its migration, which declares that binaries of
	// schema bin can still run against it.
	newer, err := b.OpenWith(t, future(bin, bin))
	if err != nil {
		t.Fatalf("Open as binary %d = %v", bin+1, err)
	}
	appendVerify(t, newer, "w-newer")
	newer.Close()
	s := schemaNow(t, b)
	if s.Store != bin+1 || s.Requires != bin || !slices.Equal(s.Unknown, []int{bin + 1}) || s.Err() != nil {
		t.Fatalf("Schema after binary %d = %+v (%v), want store %d requiring %d, compatible", bin+1, s, s.Err(), bin+1, bin)
	}
	// Rolled back: this binary runs against it.
	old, err := b.OpenWith(t, nil)
	if err != nil {
		t.Fatalf("Open as binary %d on a store of schema %d declared compatible = %v, want it to run", bin, bin+1, err)
	}
	appendVerify(t, old, "w-older")
	old.Close()
	// And binary bin+1 opens it again without applying anything twice.
	again, err := b.OpenWith(t, future(bin, bin))
	if err != nil {
		t.Fatalf("reopen as binary %d = %v", bin+1, err)
	}
	again.Close()
}

func testSchemaRefused(t *testing.T, b SchemaBackend) {
	b.Open(t).Close()
	bin := schemaNow(t, b).Binary
	// Binary bin+2: its bin+1 is compatible with bin, its bin+2 with none.
	newer, err := b.OpenWith(t, future(bin, bin, 0))
	if err != nil {
		t.Fatalf("Open as binary %d = %v", bin+2, err)
	}
	appendVerify(t, newer, "w-newer")
	newer.Close()
	before := schemaNow(t, b)
	if before.Store != bin+2 || before.Requires != bin+2 || before.Err() == nil {
		t.Fatalf("Schema after binary %d = %+v, want store and requires %d, incompatible with %d", bin+2, before, bin+2, bin)
	}
	for _, tc := range []struct {
		name  string
		extra map[string]string
		have  int
	}{
		{"this binary", nil, bin},
		{"a binary with only the compatible migration", future(bin, bin), bin + 1},
	} {
		s, err := b.OpenWith(t, tc.extra)
		if err == nil {
			s.Close()
			t.Fatalf("Open as %s (schema %d) on a store of schema %d = nil error, want a refusal", tc.name, tc.have, bin+2)
		}
		if !errors.Is(err, store.ErrSchemaTooNew) {
			t.Errorf("Open as %s = %v, want it to wrap store.ErrSchemaTooNew", tc.name, err)
		}
		for _, want := range []string{fmt.Sprintf("version %d", bin+2), fmt.Sprintf("version %d", tc.have)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Open as %s = %q, want it to name %q", tc.name, err, want)
			}
		}
	}
	after := schemaNow(t, b)
	if after.Store != before.Store || !slices.Equal(after.Unknown, before.Unknown) {
		t.Fatalf("Schema after the refusals = %+v, want %+v: a refused open changes nothing", after, before)
	}
	// The binary that has the migrations still runs.
	again, err := b.OpenWith(t, future(bin, bin, 0))
	if err != nil {
		t.Fatalf("Open as binary %d after the refusals = %v", bin+2, err)
	}
	appendVerify(t, again, "w-newer-again")
}

func testSchemaCompatRow(t *testing.T, b SchemaBackend) {
	b.Open(t)
	bin := schemaNow(t, b).Binary
	// A later binary's migration, recorded by hand as that binary would:
	// first without a declaration (refused), then with one (runs).
	b.Tamper(t, fmt.Sprintf(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (%d, 'by_hand', '%s')`, bin+1, base.Format(sqlTime)))
	if s, err := b.OpenWith(t, nil); err == nil {
		s.Close()
		t.Fatalf("Open on a store of schema %d (undeclared) = nil error, want a refusal", bin+1)
	} else if !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("Open on a store of schema %d (undeclared) = %v, want store.ErrSchemaTooNew", bin+1, err)
	}
	b.Tamper(t, fmt.Sprintf(`INSERT INTO schema_compat (version, compatible_with) VALUES (%d, %d)`, bin+1, bin))
	s, err := b.OpenWith(t, nil)
	if err != nil {
		t.Fatalf("Open on a store of schema %d declared compatible with %d = %v", bin+1, bin, err)
	}
	appendVerify(t, s, "w")
	if st := schemaNow(t, b); st.Store != bin+1 || st.Requires != bin || st.Err() != nil {
		t.Fatalf("Schema = %+v (%v), want store %d requiring %d", st, st.Err(), bin+1, bin)
	}
}

// MigrationsPlus returns the migrations of base (files under migrations/)
// plus extra (file name under migrations/ → SQL): those of a newer binary,
// for a backend's OpenWith.
func MigrationsPlus(base fs.FS, extra map[string]string) fs.FS {
	files := fstest.MapFS{}
	ents, _ := fs.ReadDir(base, "migrations")
	for _, e := range ents {
		b, _ := fs.ReadFile(base, "migrations/"+e.Name())
		files["migrations/"+e.Name()] = &fstest.MapFile{Data: b}
	}
	for name, sql := range extra {
		files["migrations/"+name] = &fstest.MapFile{Data: []byte(sql)}
	}
	return files
}
