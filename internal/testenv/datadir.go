package testenv

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store/sqlite"
)

// DataDir returns a new M1_DATA_DIR whose store (m1.db) already exists
// with a state epoch an hour old, as on a sidecar that has been running
// for an hour: tokens issued from now on are accepted. A new directory
// starts a new epoch at its creation plus the clock skew and refuses
// (state_reset) the tokens issued before it (DESIGN §7); tests of that
// fence use a bare t.TempDir().
func DataDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	SeedDataDir(t, dir)
	return dir
}

// SeedDataDir creates the store under dir, as DataDir does.
func SeedDataDir(t testing.TB, dir string) {
	t.Helper()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(dir, "m1.db"), sqlite.DefaultOptions())
	if err != nil {
		t.Fatalf("seed data directory: %v", err)
	}
	defer s.Close()
	if _, err := s.StateEpoch(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatalf("seed data directory: %v", err)
	}
}
