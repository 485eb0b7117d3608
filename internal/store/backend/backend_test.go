package backend_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/store/postgres"
	"github.com/m1-agent/m1/internal/store/sqlite"
	"github.com/m1-agent/m1/internal/testenv"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		dsn, dataDir string
		kind         backend.Kind
		target       string
	}{
		{"", "/var/lib/m1", backend.SQLite, "/var/lib/m1/m1.db"},
		{"sqlite:///var/lib/m1/a.db", "", backend.SQLite, "/var/lib/m1/a.db"},
		{"sqlite://rel/a.db", "", backend.SQLite, "rel/a.db"},
		{"sqlite:a.db", "", backend.SQLite, "a.db"},
		{"/tmp/audit.db", "", backend.SQLite, "/tmp/audit.db"},
		{"audit.sqlite3", "", backend.SQLite, "audit.sqlite3"},
		{"postgres://m1:secret@db:5432/m1?sslmode=require", "", backend.Postgres, "postgres://m1:secret@db:5432/m1?sslmode=require"},
		{"postgresql://db/m1", "", backend.Postgres, "postgresql://db/m1"},
	} {
		kind, target, err := backend.Parse(tc.dsn, tc.dataDir)
		if err != nil || kind != tc.kind || target != tc.target {
			t.Errorf("Parse(%q, %q) = %s, %q, %v; want %s, %q", tc.dsn, tc.dataDir, kind, target, err, tc.kind, tc.target)
		}
	}
	for _, dsn := range []string{"mysql://u:secret@h/db", "u:secret@tcp(h)/db", "sqlite://", "http://x/a.db"} {
		_, _, err := backend.Parse(dsn, "/data")
		if err == nil {
			t.Errorf("Parse(%q) = nil error", dsn)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("Parse(%q) error echoes the password: %v", dsn, err)
		}
	}
	if _, _, err := backend.Parse("", ""); err == nil {
		t.Error("Parse(no URL, no data dir) = nil error")
	}
}

func TestOpenSQLiteDefault(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	s, err := backend.Open(context.Background(), "", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok := s.(*sqlite.Store); !ok {
		t.Fatalf("Open(\"\") = %T, want *sqlite.Store", s)
	}
	if _, err := os.Stat(filepath.Join(dir, backend.DefaultFile)); err != nil {
		t.Fatalf("default file: %v", err)
	}
	if err := s.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestOpenPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	s, err := backend.Open(context.Background(), pg.NewDatabase(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok := s.(*postgres.Store); !ok {
		t.Fatalf("Open(postgres://…) = %T, want *postgres.Store", s)
	}
	var _ store.Store = s
	if err := s.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}
