package test

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// m1Cmd runs the m1 binary with args and an environment without M1_*, and
// returns its exit status and output.
func m1Cmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliPath, args...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	case err != nil:
		t.Fatalf("m1 %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return 0, string(out)
}

// TestStoreRestoreDrill is the restore drill of DESIGN §9, with real
// processes: traffic through m1-authz; `m1 store backup` in the middle of
// it; `m1 store restore` into a new data directory; `m1 audit verify`
// passes there, and every decision acknowledged to a client (its
// CheckResponse returned) before the backup started is in the restored
// store. A restore over the live store is refused while m1-authz runs, and
// m1-authz starts on the restored directory and goes on deciding.
func TestStoreRestoreDrill(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	s := startSidecar(t, []string{"--data-dir", dataDir})

	const unbounded = 1 << 40
	l := newLoad(t)
	l.start(s.conn, unbounded, 4, 2*time.Millisecond)
	l.waitCount(t, 200)

	backup := filepath.Join(t.TempDir(), "m1-backup.db")
	backupStarted := time.Now()
	code, out := m1Cmd(t, "store", "backup", "--data-dir", dataDir, "--out", backup)
	backupDone := time.Now()
	if code != 0 || !strings.Contains(out, "chains intact") {
		t.Fatalf("m1 store backup: exit %d\n%s", code, out)
	}
	t.Logf("m1 store backup: %s", strings.TrimSpace(out))
	// Traffic goes on after the backup, then stops.
	l.waitCount(t, l.count()+100)
	if code, out := m1Cmd(t, "store", "restore", "--from", backup, "--data-dir", dataDir, "--force"); code != 1 || !strings.Contains(out, "in use") {
		t.Errorf("m1 store restore over the store of a running m1-authz: exit %d, want 1 (in use)\n%s", code, out)
	}
	l.sent.Store(unbounded)
	saw := l.wait(t)
	s.stopClean(t)

	restored := filepath.Join(t.TempDir(), "restored")
	code, out = m1Cmd(t, "store", "restore", "--from", backup, "--data-dir", restored)
	if code != 0 {
		t.Fatalf("m1 store restore: exit %d\n%s", code, out)
	}
	if code, out := m1Cmd(t, "audit", "verify", "--data-dir", restored); code != 0 || !strings.Contains(out, "0 broken") {
		t.Fatalf("m1 audit verify of the restored store: exit %d\n%s", code, out)
	}

	st := openStore(t, "", restored)
	byID, n := storedDecisions(t, st)
	var before, after, afterIn int
	for _, d := range saw {
		acked := d.sent.Add(d.took)
		switch {
		case acked.Before(backupStarted):
			before++
			es := byID[d.id]
			if len(es) != 1 {
				t.Errorf("decision %s, acknowledged %v before the backup started, is %d times in the restored store, want once", d.id, backupStarted.Sub(acked), len(es))
				continue
			}
			decision := "deny"
			if d.allowed {
				decision = "allow"
			}
			if e := es[0]; e.Decision != decision || e.Reason != d.code || e.Status != d.status {
				t.Errorf("decision %s restored as %s %s %d, client saw %s %s %d", d.id, e.Decision, e.Reason, e.Status, decision, d.code, d.status)
			}
		case d.sent.After(backupDone):
			after++
			if len(byID[d.id]) > 0 {
				afterIn++
			}
		}
	}
	t.Logf("%d decisions seen: %d acknowledged before the backup started, all restored; %d sent after it finished, %d of them in it; the restored store holds %d events",
		len(saw), before, after, afterIn, n)
	if before < 200 || after < 100 {
		t.Fatalf("%d decisions before the backup and %d after, want at least 200 and 100", before, after)
	}
	if afterIn > 0 {
		t.Errorf("%d decisions sent after the backup finished are in it: not a snapshot", afterIn)
	}

	// m1-authz runs on the restored store: a new chain beside the old.
	s2 := startSidecar(t, []string{"--data-dir", restored})
	s2.see(t, request(t, mcpRead))
	s2.stopClean(t)
	if code, out := m1Cmd(t, "audit", "verify", "--data-dir", restored); code != 0 || !strings.Contains(out, "2 chains: 2 intact, 0 broken") {
		t.Fatalf("m1 audit verify after m1-authz ran on the restored store: exit %d\n%s", code, out)
	}
}
