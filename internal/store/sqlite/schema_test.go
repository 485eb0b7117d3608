package sqlite_test

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
	"github.com/m1-agent/m1/internal/store/storetest"
)

func TestSchemaGuard(t *testing.T) {
	var f files
	storetest.RunSchema(t, storetest.SchemaBackend{
		Backend: storetest.Backend{
			Open:   func(t *testing.T) store.Store { return open(t, f.path(t)) },
			Tamper: func(t *testing.T, q string) { exec1(t, f.path(t), q) },
		},
		OpenWith: func(t *testing.T, extra map[string]string) (store.Store, error) {
			s, err := sqlite.Open(context.Background(), f.path(t), sqlite.WithMigrations(sqlite.DefaultOptions(), extra))
			if err == nil {
				t.Cleanup(func() { s.Close() })
			}
			return s, err
		},
		Schema: func(t *testing.T) (store.SchemaStatus, error) {
			return sqlite.ReadSchema(context.Background(), f.path(t))
		},
	})
}

func TestReadSchemaOfNoFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m1.db")
	if _, err := sqlite.ReadSchema(context.Background(), path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadSchema(no file) = %v, want fs.ErrNotExist", err)
	}
	if _, err := sqlite.Inspect(context.Background(), path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Inspect(no file) = %v, want fs.ErrNotExist", err)
	}
	if matches, _ := filepath.Glob(path + "*"); len(matches) > 0 {
		t.Fatalf("ReadSchema and Inspect of no file made %v", matches)
	}
}
