package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
	"github.com/m1-agent/m1/internal/store/storetest"
	"github.com/m1-agent/m1/internal/testenv"
)

// files gives each test its own database file.
type files struct {
	mu    sync.Mutex
	paths map[*testing.T]string
}

func (f *files) path(t *testing.T) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paths == nil {
		f.paths = map[*testing.T]string{}
	}
	p, ok := f.paths[t]
	if !ok {
		p = filepath.Join(t.TempDir(), "m1.db")
		f.paths[t] = p
	}
	return p
}

func open(t testing.TB, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path, sqlite.DefaultOptions())
	if err != nil {
		t.Fatalf("Open(%q) = %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// exec1 runs one statement on path through a connection of its own.
func exec1(t testing.TB, path, query string) {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(query); err != nil {
		t.Fatalf("exec %q: %v", query, err)
	}
}

func TestConformance(t *testing.T) {
	var f files
	b := storetest.Backend{
		Open:   func(t *testing.T) store.Store { return open(t, f.path(t)) },
		Tamper: func(t *testing.T, q string) { exec1(t, f.path(t), q) },
	}
	storetest.Run(t, b)
	storetest.RunRecords(t, b)
	storetest.RunState(t, b)
}

func TestSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m1.db")
	open(t, path)
	open(t, path)
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	for _, v := range []int{1, 2, 3} {
		if err := db.QueryRow(`SELECT count(*) FROM schema_migrations WHERE version = ?`, v).Scan(&n); err != nil || n != 1 {
			t.Fatalf("schema_migrations rows for version %d = %d, %v; want 1", v, n, err)
		}
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	for _, idx := range []string{
		"audit_events_time", "audit_events_run", "audit_events_principal", "audit_events_decision",
		"agent_runs_agent", "agent_runs_created", "tool_calls_run", "tool_calls_agent", "tool_calls_created",
		"proposals_run", "proposals_agent", "proposals_created", "revoked_tokens_expires",
		"llm_calls_run", "llm_calls_agent", "llm_calls_created", "token_uses_expires",
	} {
		if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?`, idx).Scan(&n); err != nil || n != 1 {
			t.Errorf("index %s: %d, %v", idx, n, err)
		}
	}
}

func TestOpenRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		path string
		o    sqlite.Options
	}{
		{"empty path", "", sqlite.DefaultOptions()},
		{"query in path", filepath.Join(t.TempDir(), "m1.db?mode=ro"), sqlite.DefaultOptions()},
		{"no busy timeout", filepath.Join(t.TempDir(), "m1.db"), sqlite.Options{Readers: 1}},
		{"no readers", filepath.Join(t.TempDir(), "m1.db"), sqlite.Options{BusyTimeout: time.Second}},
		{"missing directory", filepath.Join(t.TempDir(), "none", "m1.db"), sqlite.DefaultOptions()},
	} {
		if s, err := sqlite.Open(context.Background(), tc.path, tc.o); err == nil {
			s.Close()
			t.Errorf("Open(%s) = nil error, want one", tc.name)
		}
	}
}

// childEnv makes the test binary a writer process (see TestMain).
const childEnv = "M1_SQLITE_TEST_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(child(spec))
	}
	os.Exit(m.Run())
}

const childBatches, childBatchSize = 40, 10

// child appends childBatches batches to a file as writer: spec is
// "<path>|<writer>". Writer "hold" only holds the file open until stdin
// closes.
func child(spec string) int {
	path, writer, _ := strings.Cut(spec, "|")
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path, sqlite.DefaultOptions())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	if writer == "hold" {
		fmt.Println("open")
		io.Copy(io.Discard, os.Stdin)
		return 0
	}
	c := store.NewChainer(writer)
	for i := range childBatches {
		ev := make([]store.Event, childBatchSize)
		for j := range ev {
			ev[j] = store.Event{DecisionID: writer + "-" + strconv.Itoa(i*childBatchSize+j), Time: time.Now(),
				Kind: store.KindDecision, Principal: "agent", Tool: "t", Decision: "allow", Reason: "ok", Status: 200}
		}
		c.Chain(ev)
		if err := s.AppendEvents(ctx, ev); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if i%5 == 0 { // and read, as the CLI would
			if err := s.Events(ctx, store.Filter{Limit: 20}, func(store.Event) error { return nil }); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	}
	return 0
}

// Three processes (two children and this one) append to one file at once:
// no "database is locked", every chain intact.
func TestProcessesShareOneFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m1.db")
	s := open(t, path) // creates the schema first
	ctx := context.Background()
	var cmds []*exec.Cmd
	for i := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|proc-%d", childEnv, path, i))
		out := &testenv.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("child %d output: %s", i, out.String())
			}
		})
		cmds = append(cmds, cmd)
	}
	c := store.NewChainer("proc-parent")
	for i := range childBatches {
		ev := make([]store.Event, childBatchSize)
		for j := range ev {
			ev[j] = store.Event{DecisionID: "parent-" + strconv.Itoa(i*childBatchSize+j), Time: time.Now(),
				Kind: store.KindDecision, Tool: "t", Decision: "deny", Reason: "policy_denied", Status: 403}
		}
		c.Chain(ev)
		if err := s.AppendEvents(ctx, ev); err != nil {
			t.Fatalf("parent batch %d: %v", i, err)
		}
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
	}
	n := 0
	if err := s.Events(ctx, store.Filter{}, func(store.Event) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if want := 3 * childBatches * childBatchSize; n != want {
		t.Fatalf("Events = %d, want %d", n, want)
	}
	for _, w := range []string{"proc-0", "proc-1", "proc-parent"} {
		var v store.Verifier
		err := s.Chain(ctx, w, v.Add)
		if err == nil {
			err = v.Close()
		}
		if err != nil || v.Verified() != childBatches*childBatchSize {
			t.Fatalf("verify %s = %v after %d events", w, err, v.Verified())
		}
	}
}

// A batch larger than one INSERT takes (large arguments) goes in several,
// in order, all or none; a replay of it inserts nothing twice.
func TestAppendLargeBatch(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "m1.db"))
	ctx := context.Background()
	c := store.NewChainer("w-large")
	big := `{"content":"` + strings.Repeat("x", 3<<19) + `"}` // 1.5 MiB: three rows fill an INSERT
	ev := make([]store.Event, 7)
	for i := range ev {
		ev[i] = store.Event{DecisionID: fmt.Sprint("d", i), Time: time.Now(), Kind: store.KindDecision, Tool: "write_file"}
		if i%2 == 0 {
			ev[i].Args = []byte(big)
		}
	}
	c.Chain(ev)
	for range 2 {
		if err := s.AppendEvents(ctx, ev); err != nil {
			t.Fatalf("AppendEvents = %v", err)
		}
	}
	var got []store.Event
	if err := s.Chain(ctx, c.Writer(), func(e store.Event) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ev) {
		t.Fatalf("stored %d events, want %d", len(got), len(ev))
	}
	for i, e := range got {
		if e.Seq != int64(i+1) || e.DecisionID != ev[i].DecisionID || string(e.Args) != string(ev[i].Args) || i > 0 && e.ID <= got[i-1].ID {
			t.Fatalf("event %d: seq %d id %d %q, %d bytes of args; want seq %d %q, %d bytes", i, e.Seq, e.ID, e.DecisionID, len(e.Args), i+1, ev[i].DecisionID, len(ev[i].Args))
		}
	}
	if b := store.VerifyChain(got); b != nil {
		t.Fatalf("chain of the stored batch: %+v", b)
	}
}
