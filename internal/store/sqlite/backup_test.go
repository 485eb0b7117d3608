package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
	"github.com/m1-agent/m1/internal/testenv"
)

// verifyAll verifies every chain of s and returns how many events each
// holds.
func verifyAll(t *testing.T, s store.Store) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	out := map[string]int64{}
	if err := s.Chains(ctx, func(w string) error {
		var v store.Verifier
		if err := s.Chain(ctx, w, v.Add); err != nil {
			return err
		}
		if err := v.Close(); err != nil {
			return fmt.Errorf("chain %q: %w", w, err)
		}
		out[w] = v.Verified()
		return nil
	}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	return out
}

// startChild runs the test binary as a child on path (see child).
func startChild(t *testing.T, path, writer string) (*exec.Cmd, *testenv.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s", childEnv, path, writer))
	out := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	r, w, err := os.Pipe() // a "hold" child holds the file until w closes
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = r
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	t.Cleanup(func() {
		w.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, out
}

// Another process writes batches while the snapshot is taken: the copy is
// consistent (whole batches, every chain intact), has no write-ahead log,
// and opens read-only.
func TestSnapshotWhileWriting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m1.db")
	s := open(t, path)
	appendOK := func(ev []store.Event) {
		if err := s.AppendEvents(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	c := store.NewChainer("before")
	ev := []store.Event{{DecisionID: "d0", Time: base(), Kind: store.KindDecision}, {DecisionID: "d1", Time: base(), Kind: store.KindDecision}}
	c.Chain(ev)
	appendOK(ev)

	cmd, out := startChild(t, path, "proc-writer")
	ctx := context.Background()
	// Wait for the child's first batch, then snapshot while it goes on.
	for {
		st, err := sqlite.Inspect(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Chains) > 1 {
			break
		}
	}
	snap := filepath.Join(dir, "backup.db")
	if err := os.WriteFile(snap, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := sqlite.Snapshot(ctx, path, snap); err != nil {
		t.Fatalf("Snapshot = %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v: %s", err, out.String())
	}
	if fi, err := os.Stat(snap); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v, %v; want mode 0600 kept", fi.Mode(), err)
	}
	b, err := sqlite.OpenReadOnly(ctx, snap)
	if err != nil {
		t.Fatalf("OpenReadOnly(snapshot) = %v", err)
	}
	defer b.Close()
	if err := b.CheckIntegrity(ctx); err != nil {
		t.Fatal(err)
	}
	n := verifyAll(t, b)
	if n["before"] != 2 || n["proc-writer"] == 0 || n["proc-writer"]%childBatchSize != 0 {
		t.Fatalf("snapshot chains = %v, want before: 2 and whole batches of proc-writer's %d", n, childBatchSize)
	}
	if matches, _ := filepath.Glob(snap + "-*"); len(matches) > 0 {
		t.Fatalf("the snapshot has files beside it: %v", matches)
	}
	if err := b.AppendEvents(ctx, ev); err == nil {
		t.Fatal("AppendEvents on a read-only store = nil error")
	}
	// The live store went on: the child's every batch is there.
	if n := verifyAll(t, s); n["proc-writer"] != childBatches*childBatchSize {
		t.Fatalf("live chains = %v, want proc-writer's %d", n, childBatches*childBatchSize)
	}
}

func base() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }

func TestOpenReadOnlyRefuses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	open(t, good).Close()
	bin := func() int {
		st, err := sqlite.ReadSchema(ctx, good)
		if err != nil {
			t.Fatal(err)
		}
		return st.Binary
	}()
	variant := func(name string, edit func(path string)) string {
		p := filepath.Join(dir, name+".db")
		b, err := os.ReadFile(good)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(p)
		}
		return p
	}
	live := filepath.Join(dir, "live.db")
	open(t, live) // stays open: its write-ahead log is beside it
	exec1(t, live, `INSERT INTO audit_chains (writer, created_at) VALUES ('w', '2026-03-01T12:00:00.000000Z')`)
	garbage := filepath.Join(dir, "garbage.db")
	os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 500)), 0o600)
	truncated := variant("truncated", func(p string) {
		fi, _ := os.Stat(p)
		os.Truncate(p, fi.Size()/2)
	})
	for _, tc := range []struct {
		name, path string
		want       error
		says       string
	}{
		{"missing", filepath.Join(dir, "none.db"), os.ErrNotExist, ""},
		{"live", live, sqlite.ErrLive, ""},
		{"garbage", garbage, nil, "not an SQLite database"},
		{"truncated", truncated, nil, ""},
		{"not M1's", variant("empty", func(p string) {
			os.Remove(p)
			exec1(t, p, `CREATE TABLE other (id INTEGER)`)
		}), nil, "not an M1 store"},
		{"older", variant("older", func(p string) {
			exec1(t, p, fmt.Sprintf(`DELETE FROM schema_migrations WHERE version = %d`, bin))
		}), store.ErrSchemaOlder, fmt.Sprintf("it lacks %d", bin)}, // versions may have gaps: name the missing one
		{"newer", variant("newer", func(p string) {
			exec1(t, p, fmt.Sprintf(`INSERT INTO schema_migrations VALUES (%d, 'x', '2026-03-01T12:00:00.000000Z')`, bin+1))
		}), store.ErrSchemaTooNew, fmt.Sprintf("version %d", bin+1)},
	} {
		s, err := sqlite.OpenReadOnly(ctx, tc.path)
		if err == nil && tc.name == "truncated" { // may open; the integrity check finds it
			err = s.CheckIntegrity(ctx)
			if err == nil {
				err = func() error { verifyAll(t, s); return nil }()
			}
			s.Close()
			if err == nil {
				t.Errorf("OpenReadOnly(%s) and CheckIntegrity = nil error", tc.name)
			}
			continue
		}
		if err == nil {
			s.Close()
			t.Errorf("OpenReadOnly(%s) = nil error", tc.name)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("OpenReadOnly(%s) = %v, want %v saying %q", tc.name, err, tc.want, tc.says)
		}
	}
	// A good file opens, and nothing is written beside it.
	s, err := sqlite.OpenReadOnly(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckIntegrity(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close()
	if matches, _ := filepath.Glob(good + "-*"); len(matches) > 0 {
		t.Fatalf("OpenReadOnly wrote %v", matches)
	}
}

func TestInUse(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m1.db")
	inUse := func() bool {
		t.Helper()
		u, err := sqlite.InUse(ctx, path)
		if err != nil {
			t.Fatalf("InUse = %v", err)
		}
		return u
	}
	if inUse() {
		t.Fatal("InUse(no file) = true")
	}
	s := open(t, path)
	if !inUse() {
		t.Fatal("InUse(open in this process) = false")
	}
	s.Close()
	if inUse() {
		t.Fatal("InUse(closed) = true")
	}
	// Another process holds it open.
	cmd, out := startChild(t, path, "hold")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "open") {
		if time.Now().After(deadline) {
			t.Fatalf("the child did not open the file: %s", out.String())
		}
		time.Sleep(5 * time.Millisecond) // poll
	}
	if !inUse() {
		t.Fatal("InUse(open in another process) = false")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if inUse() {
		t.Fatal("InUse(after the other process exited) = true")
	}
	if matches, _ := filepath.Glob(path + "-wal"); len(matches) > 0 {
		t.Fatalf("after the probe, a write-ahead log is left: %v", matches)
	}
	// A corrupt file no process holds is not in use: one restores over it.
	if err := os.WriteFile(path, []byte(strings.Repeat("corrupt ", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	if inUse() {
		t.Fatal("InUse(a corrupt file) = true")
	}
}
