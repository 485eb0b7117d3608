package dirsource_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
	"github.com/m1-agent/m1/internal/policy/source/dirsource"
	"github.com/m1-agent/m1/internal/policy/source/sourcetest"
	"github.com/m1-agent/m1/internal/testenv"
)

type fixture struct{ dir string }

func (f *fixture) Publish(t *testing.T, files map[string]string) {
	sourcetest.WriteDir(t, f.dir, files)
}

func (f *fixture) Loader(t *testing.T, o policy.ReadOptions) source.Loader {
	opts := dirsource.DefaultOptions()
	opts.Dir, opts.Read = f.dir, o
	s, err := dirsource.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T) sourcetest.Fixture { return &fixture{dir: t.TempDir()} })
}

// TestWatch checks that an edit is reported once the writes settle, and
// that a new subdirectory is watched too.
func TestWatch(t *testing.T) {
	dir := sourcetest.WriteDir(t, t.TempDir(), sourcetest.Bundle("one"))
	opts := dirsource.DefaultOptions()
	opts.Dir, opts.Debounce = dir, 20*time.Millisecond
	s, err := dirsource.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var changes atomic.Int64
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() { close(ready); done <- s.Watch(ctx, func() { changes.Add(1) }) }()
	<-ready
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch() = %v, want nil after cancel", err)
		}
	})
	// The watch is set up asynchronously: write until it reports.
	testenv.Eventually(t, 10*time.Second, "a change in the root", func() bool {
		_ = os.WriteFile(filepath.Join(dir, "authz.rego"), []byte(sourcetest.Policy+"\n# edit\n"), 0o644)
		return changes.Load() > 0
	})
	n := changes.Load()
	sub := filepath.Join(dir, "m1", "new")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "a change in a new subdirectory", func() bool {
		_ = os.WriteFile(filepath.Join(sub, "data.json"), []byte(`{"x": 1}`), 0o644)
		return changes.Load() > n
	})
}

func TestOptions(t *testing.T) {
	if _, err := dirsource.New(dirsource.Options{Debounce: time.Second}); err == nil {
		t.Error("New(no Dir) = nil error")
	}
}
