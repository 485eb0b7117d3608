package approval

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/m1-agent/m1/internal/testenv"
)

// startWatcher runs w.Start until the test ends and fails the test if Start
// returns an error.
func startWatcher(t *testing.T, w *Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watcher.Start = %v, want nil after cancel", err)
		}
	})
	// Start loads once before it watches; once LoadedAt is set the
	// directory is being watched.
	testenv.Eventually(t, 10*time.Second, "the initial load", func() bool { return !w.Status().LoadedAt.IsZero() })
}

func TestWatcher(t *testing.T) {
	k := keys()
	edA, edB := k.byAlg[AlgEdDSA], k.ed2
	tokA, tokB := mint(t, edA, approvalClaims()), mint(t, edB, approvalClaims())
	verifies := func(v *Verifier, tok string) bool { _, err := v.Verify(tok); return err == nil }

	path := filepath.Join(t.TempDir(), "jwks.json")
	writeFileAtomic(t, path, jwksOf(edA))
	ks, err := LoadJWKS(path)
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, func(o *VerifierOptions) { o.Keys = ks })
	w := NewWatcher(path, []byte(testSecret), v, zaptest.NewLogger(t))
	w.debounce = 10 * time.Millisecond
	if st := w.Status(); st.Path != path || !slices.Equal(st.KIDs, []string{"ed"}) || !st.LoadedAt.IsZero() {
		t.Errorf("Status before Start = %+v, want path, kids [ed], zero LoadedAt", st)
	}
	startWatcher(t, w)
	if !v.Keys().HasSecret() {
		t.Errorf("keys after the initial load have no secret, want the watcher's")
	}

	t.Run("atomic replace", func(t *testing.T) {
		writeFileAtomic(t, path, jwksOf(edB))
		testenv.Eventually(t, 10*time.Second, "kid ed2 to verify", func() bool { return verifies(v, tokB) })
		if verifies(v, tokA) {
			t.Errorf("Verify(removed kid ed) = ok after reload, want token_invalid")
		}
		if st := w.Status(); !slices.Equal(st.KIDs, []string{"ed2"}) || st.LastError != "" {
			t.Errorf("Status = %+v, want kids [ed2], no error", st)
		}
	})

	t.Run("garbage keeps the old keys", func(t *testing.T) {
		writeFileAtomic(t, path, []byte(`{"keys": [garbage`))
		testenv.Eventually(t, 10*time.Second, "Status().LastError", func() bool { return w.Status().LastError != "" })
		if !verifies(v, tokB) {
			t.Errorf("Verify(kid ed2) after a bad file = invalid, want ok (old keys kept)")
		}
		if st := w.Status(); !slices.Equal(st.KIDs, []string{"ed2"}) {
			t.Errorf("Status().KIDs after a bad file = %v, want [ed2]", st.KIDs)
		}
		if err := w.Reload(); err == nil {
			t.Errorf("Reload(garbage) = ok, want an error")
		}
	})

	t.Run("Reload", func(t *testing.T) {
		// Written in place, then reloaded explicitly (as on SIGHUP): effective
		// on return, no waiting.
		if err := os.WriteFile(path, jwksOf(edA, edB), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := w.Reload(); err != nil {
			t.Fatalf("Reload = %v, want ok", err)
		}
		if !verifies(v, tokA) || !verifies(v, tokB) {
			t.Errorf("after Reload: Verify(ed) = %v, Verify(ed2) = %v; want both ok", verifies(v, tokA), verifies(v, tokB))
		}
		if st := w.Status(); st.LastError != "" || !slices.Equal(st.KIDs, []string{"ed", "ed2"}) {
			t.Errorf("Status after Reload = %+v, want kids [ed ed2], no error", st)
		}
	})
}

// TestWatcherConfigMap swaps keys the way the kubelet updates a mounted
// ConfigMap: jwks.json → ..data/jwks.json, ..data → a timestamped directory,
// replaced by renaming a new symlink over ..data.
func TestWatcherConfigMap(t *testing.T) {
	k := keys()
	dir := t.TempDir()
	version := func(name string, jwks []byte) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "jwks.json"), jwks, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_03_01_12_00_00.1", jwksOf(k.byAlg[AlgEdDSA]))
	path := filepath.Join(dir, "jwks.json")
	if err := os.Symlink(filepath.Join("..data", "jwks.json"), path); err != nil {
		t.Fatal(err)
	}
	ks, err := LoadJWKS(path)
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, func(o *VerifierOptions) { o.Keys = ks })
	w := NewWatcher(path, nil, v, zaptest.NewLogger(t))
	w.debounce = 10 * time.Millisecond
	startWatcher(t, w)

	tok := mint(t, k.ed2, approvalClaims())
	version("..2026_03_01_12_05_00.2", jwksOf(k.ed2))
	testenv.Eventually(t, 10*time.Second, "kid ed2 to verify after the ..data swap", func() bool { _, err := v.Verify(tok); return err == nil })
	if v.Keys().HasSecret() {
		t.Errorf("keys have a secret, want none (the watcher has none)")
	}
}

func TestWatcherStartError(t *testing.T) {
	v := newTestVerifier(t, nil)
	w := NewWatcher(filepath.Join(t.TempDir(), "missing-dir", "jwks.json"), nil, v, nil)
	if err := w.Start(context.Background()); err == nil {
		t.Fatalf("Start(watching a missing directory) = nil, want an error")
	}
}
