package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
)

// m1Store runs "m1 store args…" with an empty environment.
func m1Store(t *testing.T, args ...string) runResult {
	t.Helper()
	return m1Env(t, map[string]string{}, append([]string{"store"}, args...)...)
}

// binarySchema is this binary's SQLite schema version.
func binarySchema(t *testing.T) int {
	t.Helper()
	ms, err := sqlite.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	return ms[len(ms)-1].Version
}

// sqliteStore makes the SQLite store path with n events in each of
// writers' chains, and closes it (no process has it open).
func sqliteStore(t *testing.T, path string, n int, writers ...string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), path, sqlite.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, w := range writers {
		ev := auditEvents(w, spaced(time.Now().UTC(), time.Second, n))
		store.NewChainer(w).Chain(ev)
		if err := st.AppendEvents(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

// execSQLite runs statements on the SQLite file path behind M1's back.
func execSQLite(t *testing.T, path string, queries ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range queries {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("exec %q: %v", q, err)
		}
	}
}

// dirState is what a directory holds: each file's name and SHA-256.
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return out
}

func TestStoreStatus(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "m1.db")
		testStoreStatus(t, "sqlite://"+path, func(t *testing.T) {
			sqliteStore(t, path, 0)
		}, func(t *testing.T, q string) { execSQLite(t, path, q) })
		r := m1Store(t, "status", "--data-dir", t.TempDir())
		if r.code != exitError || !strings.Contains(r.stderr, "no store at") {
			t.Errorf("status of no store:\n%s", r)
		}
	})
	t.Run("postgres", func(t *testing.T) {
		db := postgresDBs(t)(t)
		testStoreStatus(t, db.dsn, func(t *testing.T) { db.open(t).Close() }, db.exec)
	})
}

func testStoreStatus(t *testing.T, dsn string, create func(*testing.T), exec func(*testing.T, string)) {
	bin := binarySchema(t)
	create(t)
	d := auditDB{dsn: dsn, exec: exec}
	a := d.add(t, "m1-authz/host-a/1/1", auditEvents("a", spaced(time.Now().UTC(), time.Second, 5)))
	d.add(t, "m1-authz/host-b/2/2", auditEvents("b", spaced(time.Now().UTC(), time.Second, 3)))
	exec(t, `INSERT INTO audit_chains (writer, created_at) VALUES ('m1-authz/host-c/3/3', '2026-03-01T12:00:00.000000Z')`)

	r := m1Store(t, "status", "--db", dsn)
	if r.code != exitOK {
		t.Fatalf("status:\n%s", r)
	}
	for _, want := range []string{
		fmt.Sprintf("store %d, binary %d: current", bin, bin),
		"CHAINS (3, 8 events)", "m1-authz/host-a/1/1", a[4].Hash[:16], "audit_events", "schema_migrations",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status does not say %q:\n%s", want, r.stdout)
		}
	}
	r = m1Store(t, "status", "--db", dsn, "--json")
	var rep statusReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != exitOK {
		t.Fatalf("status --json: %v\n%s", err, r)
	}
	if !rep.Compatible || rep.Schema.Store != bin || rep.Bytes <= 0 || len(rep.Chains) != 3 ||
		len(rep.Migrations) == 0 || rep.Migrations[len(rep.Migrations)-1].Version != bin { // versions may have gaps
		t.Fatalf("status --json = %+v", rep)
	}
	c := rep.Chains[0]
	if c.Writer != "m1-authz/host-a/1/1" || c.Events != 5 || c.HeadSeq != 5 || c.HeadHash != a[4].Hash || !c.LastEvent.Equal(a[4].Time) {
		t.Errorf("chain a = %+v, want 5 events, head 5 %s at %v", c, a[4].Hash, a[4].Time)
	}
	if c := rep.Chains[2]; c.Events != 0 || c.HeadSeq != 0 || !c.LastEvent.IsZero() {
		t.Errorf("empty chain = %+v", c)
	}
	rows := map[string]int64{}
	for _, tr := range rep.Tables {
		rows[tr.Name] = tr.Rows
	}
	if rows["audit_events"] != 8 || rows["audit_chains"] != 3 || rows["schema_migrations"] != int64(len(rep.Migrations)) {
		t.Errorf("table rows = %v", rows)
	}

	// A newer binary's migration: this binary refuses the store and
	// status says so, naming both versions, with exit 1.
	exec(t, fmt.Sprintf(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (%d, 'later', '2026-03-01T12:00:00.000000Z')`, bin+1))
	r = m1Store(t, "status", "--db", dsn)
	if r.code != exitDeny || !strings.Contains(r.stdout, "INCOMPATIBLE") ||
		!strings.Contains(r.stdout, fmt.Sprintf("version %d", bin+1)) || !strings.Contains(r.stdout, fmt.Sprintf("version %d", bin)) {
		t.Errorf("status of a newer schema:\n%s", r)
	}
	if r := m1Audit(t, "verify", "--db", dsn); r.code != exitError || !strings.Contains(r.stderr, "needs a binary of schema") {
		t.Errorf("audit verify of a newer schema:\n%s", r)
	}
	// Declared compatible: it runs.
	exec(t, fmt.Sprintf(`INSERT INTO schema_compat (version, compatible_with) VALUES (%d, %d)`, bin+1, bin))
	if r := m1Store(t, "status", "--db", dsn); r.code != exitOK || !strings.Contains(r.stdout, ": compatible") {
		t.Errorf("status of a newer compatible schema:\n%s", r)
	}
}

func TestStoreBackupAndRestore(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	live := filepath.Join(data, "m1.db")
	sqliteStore(t, live, 7, "w-a", "w-b")
	out := filepath.Join(dir, "backups", "m1-backup.db")

	if r := m1Store(t, "backup", "--data-dir", data, "--out", out, "--settle", "0"); r.code != exitError || !strings.Contains(r.stderr, "no such file") {
		t.Fatalf("backup into a missing directory:\n%s", r)
	}
	os.MkdirAll(filepath.Dir(out), 0o700)
	r := m1Store(t, "backup", "--data-dir", data, "--out", out, "--settle", "0")
	if r.code != exitOK || !strings.Contains(r.stdout, "2 chains intact, 14 events verified") {
		t.Fatalf("backup:\n%s", r)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*")); len(left) > 0 {
		t.Fatalf("backup left %v", left)
	}
	if r := m1Store(t, "backup", "--data-dir", data, "--out", out); r.code != exitError || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("backup over an existing file:\n%s", r)
	}
	if r := m1Store(t, "backup", "--data-dir", data, "--out", out, "--force", "--settle", "0"); r.code != exitOK {
		t.Fatalf("backup --force:\n%s", r)
	}

	// Restore into a new data directory: it verifies as the original.
	fresh := filepath.Join(dir, "fresh")
	r = m1Store(t, "restore", "--from", out, "--data-dir", fresh)
	if r.code != exitOK || !strings.Contains(r.stdout, "14 events verified") {
		t.Fatalf("restore into a new directory:\n%s", r)
	}
	if r := m1Audit(t, "verify", "--data-dir", fresh); r.code != exitOK || !strings.Contains(r.stdout, "2 chains: 2 intact, 0 broken; 14 events verified") {
		t.Fatalf("audit verify of the restored store:\n%s", r)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("new data directory: %v %v", fi, err)
	}

	// Over an existing store: only with --force, which keeps the old one.
	sqliteStore(t, live, 2, "w-c") // the live store moves on
	if err := os.WriteFile(filepath.Join(data, "audit-spool.jsonl"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := dirState(t, data)
	r = m1Store(t, "restore", "--from", out, "--data-dir", data)
	if r.code != exitDeny || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("restore over a store without --force:\n%s", r)
	}
	// In use: refused, with or without --force.
	st, err := sqlite.Open(context.Background(), live, sqlite.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	r = m1Store(t, "restore", "--from", out, "--data-dir", data, "--force")
	st.Close()
	if r.code != exitDeny || !strings.Contains(r.stderr, "in use") {
		t.Fatalf("restore over a store in use:\n%s", r)
	}
	if after := dirState(t, data); !mapsEqual(after, before) {
		t.Fatalf("refused restores changed the data directory: %v, was %v", after, before)
	}
	r = m1Store(t, "restore", "--from", out, "--data-dir", data, "--force")
	if r.code != exitOK || !strings.Contains(r.stdout, "kept as") || !strings.Contains(r.stdout, "set aside") {
		t.Fatalf("restore --force:\n%s", r)
	}
	baks, _ := filepath.Glob(live + ".*.bak")
	spools, _ := filepath.Glob(filepath.Join(data, "audit-spool.jsonl.*.bak"))
	if len(baks) != 1 || len(spools) != 1 {
		t.Fatalf("kept %v and %v, want the old store and the spool", baks, spools)
	}
	if r := m1Audit(t, "verify", "--data-dir", data); r.code != exitOK || !strings.Contains(r.stdout, "14 events verified") {
		t.Fatalf("audit verify after restore --force:\n%s", r)
	}
	if r := m1Audit(t, "verify", "--db", "sqlite://"+baks[0]); r.code != exitOK || !strings.Contains(r.stdout, "16 events verified") {
		t.Fatalf("audit verify of the kept store:\n%s", r)
	}

	// Over a corrupt store: what a restore is for.
	if err := os.WriteFile(live, []byte(strings.Repeat("corrupt ", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := m1Store(t, "restore", "--from", out, "--data-dir", data); r.code != exitDeny || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("restore over a corrupt store without --force:\n%s", r)
	}
	if r := m1Store(t, "restore", "--from", out, "--data-dir", data, "--force"); r.code != exitOK {
		t.Fatalf("restore --force over a corrupt store:\n%s", r)
	}
	if r := m1Audit(t, "verify", "--data-dir", data); r.code != exitOK || !strings.Contains(r.stdout, "14 events verified") {
		t.Fatalf("audit verify after restoring over a corrupt store:\n%s", r)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// A backup that fails verification is refused before anything is written
// to the data directory: a new one is not even created, an existing one
// is left byte for byte.
func TestStoreRestoreRefusesBadBackups(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	sqliteStore(t, good, 5, "w-a", "w-b")
	bin := binarySchema(t)
	variant := func(name string, edit func(path string)) string {
		p := filepath.Join(dir, name+".db")
		if r := m1Store(t, "backup", "--db", good, "--out", p, "--settle", "0"); r.code != exitOK {
			t.Fatalf("backup:\n%s", r)
		}
		edit(p)
		return p
	}
	existing := filepath.Join(dir, "existing")
	sqliteStore(t, filepath.Join(existing, "m1.db"), 3, "w-old")
	for _, tc := range []struct {
		name, from, says string
	}{
		{"garbage", func() string {
			p := filepath.Join(dir, "garbage.db")
			os.WriteFile(p, []byte(strings.Repeat("garbage ", 4096)), 0o600)
			return p
		}(), "not an SQLite database"},
		{"truncated", variant("truncated", func(p string) {
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()*2/3)
		}), "fails verification"},
		{"flipped page headers", variant("flipped", func(p string) {
			b, _ := os.ReadFile(p)
			pageSize := int(b[16])<<8 | int(b[17])
			for page := pageSize; page < len(b); page += pageSize {
				b[page] ^= 0xff // the b-tree page type
			}
			os.WriteFile(p, b, 0o600)
		}), "fails verification"},
		{"bit rot in an event", variant("rot", func(p string) {
			b, _ := os.ReadFile(p)
			i := bytes.LastIndex(b, []byte("w-b-3"))
			if i < 0 {
				t.Fatal("no w-b-3 in the file")
			}
			b[i+4] ^= 0x01 // w-b-3 becomes w-b-2
			os.WriteFile(p, b, 0o600)
		}), "fails verification"},
		{"an edited event", variant("edited", func(p string) {
			execSQLite(t, p, `UPDATE audit_events SET decision = 'allow', reason = 'ok' WHERE writer = 'w-b' AND seq = 2`)
		}), `chain "w-b" is broken at seq 2`},
		{"a deleted event", variant("deleted", func(p string) {
			execSQLite(t, p, `DELETE FROM audit_events WHERE writer = 'w-a' AND seq = 3`)
		}), `chain "w-a" is broken at seq 3`},
		{"a newer schema", variant("newer", func(p string) {
			execSQLite(t, p, fmt.Sprintf(`INSERT INTO schema_migrations VALUES (%d, 'later', '2026-03-01T12:00:00.000000Z')`, bin+1))
		}), fmt.Sprintf("schema is version %d", bin+1)},
		{"not M1's", func() string {
			p := filepath.Join(dir, "other.db")
			execSQLite(t, p, `CREATE TABLE other (id INTEGER)`)
			return p
		}(), "not an M1 store"},
		{"a live database", func() string {
			p := filepath.Join(dir, "live.db")
			sqliteStore(t, p, 1, "w")
			st, err := sqlite.Open(context.Background(), p, sqlite.DefaultOptions())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			ev := auditEvents("x", spaced(time.Now(), time.Second, 1))
			store.NewChainer("w2").Chain(ev)
			st.AppendEvents(context.Background(), ev)
			return p
		}(), "write-ahead log"},
	} {
		for _, target := range []string{filepath.Join(dir, "new-"+strings.ReplaceAll(tc.name, " ", "-")), existing} {
			before := dirState(t, target)
			r := m1Store(t, "restore", "--from", tc.from, "--data-dir", target, "--force")
			if r.code != exitDeny || !strings.Contains(r.stderr, "refused") || !strings.Contains(r.stderr, tc.says) {
				t.Errorf("restore of %s into %s = exit %d, want 1 saying %q:\n%s", tc.name, filepath.Base(target), r.code, tc.says, r)
			}
			if after := dirState(t, target); !mapsEqual(after, before) || (before == nil) != (after == nil) {
				t.Errorf("restore of %s changed %s: %v, was %v", tc.name, filepath.Base(target), after, before)
			}
		}
	}
	if r := m1Audit(t, "verify", "--data-dir", existing); r.code != exitOK || !strings.Contains(r.stdout, "3 events verified") {
		t.Fatalf("the existing store after the refusals:\n%s", r)
	}
}

// A backup of an older schema (taken before an upgrade) is migrated in a
// scratch copy to be verified, and restored.
func TestStoreRestoreOlderSchema(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "old.db")
	ms, err := sqlite.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	bin := ms[len(ms)-1].Version
	var qs []string
	qs = append(qs, `CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT`)
	for _, m := range ms[:len(ms)-1] {
		qs = append(qs, m.SQL, fmt.Sprintf(`INSERT INTO schema_migrations VALUES (%d, %s, '2026-03-01T12:00:00.000000Z')`, m.Version, lit(m.Name)))
	}
	// Events as a binary of that schema wrote them: the columns of 0001.
	ev := []store.Event{
		{DecisionID: "d1", Time: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), Kind: store.KindDecision, Tool: "read_file", Decision: "allow", Reason: "ok", Status: 200},
		{DecisionID: "d2", Time: time.Date(2026, 3, 1, 12, 0, 1, 0, time.UTC), Kind: store.KindDecision, Tool: "read_file", Decision: "deny", Reason: "policy_denied", Status: 403},
	}
	store.NewChainer("w-old").Chain(ev)
	qs = append(qs, `INSERT INTO audit_chains (writer, created_at) VALUES ('w-old', '2026-03-01T12:00:00.000000Z')`)
	for _, e := range ev {
		qs = append(qs, fmt.Sprintf(`INSERT INTO audit_events (writer, seq, prev_hash, hash, decision_id, time, kind, tool, decision, reason, status)
			VALUES ('w-old', %d, %s, %s, %s, %s, 'decision', 'read_file', %s, %s, %d)`,
			e.Seq, lit(e.PrevHash), lit(e.Hash), lit(e.DecisionID), lit(e.Time.Format(sqlTime)), lit(e.Decision), lit(e.Reason), e.Status))
	}
	execSQLite(t, old, qs...)
	before, err := os.ReadFile(old)
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	r := m1Store(t, "restore", "--from", old, "--data-dir", data)
	if r.code != exitOK || !strings.Contains(r.stdout, fmt.Sprintf("schema %d, 1 chains intact, 2 events verified", bin)) {
		t.Fatalf("restore of schema %d:\n%s", bin-1, r)
	}
	if after, _ := os.ReadFile(old); string(after) != string(before) {
		t.Fatal("restore changed the backup file")
	}
	if r := m1Audit(t, "verify", "--data-dir", data); r.code != exitOK || !strings.Contains(r.stdout, "2 events verified") {
		t.Fatalf("audit verify:\n%s", r)
	}
	if left := dirState(t, data); len(left) != 1 {
		t.Fatalf("data directory holds %v, want m1.db alone", slices.Sorted(mapsKeys(left)))
	}
	// Tampered, it is refused, and the scratch copy is gone.
	execSQLite(t, old, `UPDATE audit_events SET decision = 'allow' WHERE seq = 2`)
	fresh := filepath.Join(dir, "fresh")
	if r := m1Store(t, "restore", "--from", old, "--data-dir", fresh); r.code != exitDeny || !strings.Contains(r.stderr, "broken at seq 2") {
		t.Fatalf("restore of a tampered older backup:\n%s", r)
	}
	if left := dirState(t, fresh); len(left) != 0 {
		t.Fatalf("a refused restore left %v", left)
	}
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// The restored store's state epoch is cleared, so that the first m1-authz
// to open it sets a new one and fences the tokens issued before: the uses
// recorded after the backup are not in it.
func TestStoreRestoreClearsStateEpoch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	sqliteStore(t, src, 1, "w")
	old := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	st, err := sqlite.Open(ctx, src, sqlite.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := st.StateEpoch(ctx, old); err != nil || !got.Equal(old) {
		t.Fatalf("StateEpoch = %v, %v; want %v", got, err, old)
	}
	st.Close()
	out := filepath.Join(dir, "b.db")
	if r := m1Store(t, "backup", "--db", src, "--out", out, "--settle", "0"); r.code != exitOK {
		t.Fatalf("backup:\n%s", r)
	}
	data := filepath.Join(dir, "data")
	r := m1Store(t, "restore", "--from", out, "--data-dir", data)
	if r.code != exitOK || !strings.Contains(r.stdout, "state epoch was cleared") {
		t.Fatalf("restore:\n%s", r)
	}
	st, err = sqlite.Open(ctx, filepath.Join(data, "m1.db"), sqlite.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().Truncate(time.Second).UTC()
	if got, err := st.StateEpoch(ctx, now); err != nil || !got.Equal(now) {
		t.Fatalf("StateEpoch after the restore = %v, %v; want the new candidate %v, not the backup's %v", got, err, now, old)
	}
}

func TestStorePostgresSaysPgDump(t *testing.T) {
	dsn := "postgres://m1:secret@db.invalid:5432/m1"
	for _, args := range [][]string{
		{"backup", "--db", dsn, "--out", filepath.Join(t.TempDir(), "b.db")},
		{"restore", "--db", dsn, "--from", os.Args[0]},
	} {
		r := m1Store(t, args...)
		if r.code != exitError || !strings.Contains(r.stderr, "pg_dump") || strings.Contains(r.stderr, "secret") {
			t.Errorf("m1 store %s on PostgreSQL:\n%s", args[0], r)
		}
	}
}
