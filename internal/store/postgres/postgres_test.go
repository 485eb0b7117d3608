package postgres_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/postgres"
	"github.com/m1-agent/m1/internal/store/storetest"
	"github.com/m1-agent/m1/internal/testenv"
)

// databases gives each test its own database on one server.
type databases struct {
	pg   *testenv.Postgres
	mu   sync.Mutex
	dsns map[*testing.T]string
}

func (d *databases) dsn(t *testing.T) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dsns == nil {
		d.dsns = map[*testing.T]string{}
	}
	dsn, ok := d.dsns[t]
	if !ok {
		dsn = d.pg.NewDatabase(t)
		d.dsns[t] = dsn
	}
	return dsn
}

func open(t testing.TB, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn, postgres.DefaultOptions())
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// exec1 runs one statement on dsn through a connection of its own.
func exec1(t testing.TB, dsn, query string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, query); err != nil {
		t.Fatalf("exec %q: %v", query, err)
	}
}

func TestConformance(t *testing.T) {
	d := &databases{pg: testenv.StartPostgres(t)}
	b := storetest.Backend{
		Open:   func(t *testing.T) store.Store { return open(t, d.dsn(t)) },
		Tamper: func(t *testing.T, q string) { exec1(t, d.dsn(t), q) },
	}
	storetest.Run(t, b)
	storetest.RunRecords(t, b)
	storetest.RunState(t, b)
}

func TestSchema(t *testing.T) {
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	ctx := context.Background()
	// Two processes opening a new database at once: one applies, one waits.
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { open(t, dsn) })
	}
	wg.Wait()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	for _, v := range []int{1, 2, 3} {
		if err := c.QueryRow(ctx, `SELECT count(*) FROM schema_migrations WHERE version = $1`, v).Scan(&n); err != nil || n != 1 {
			t.Fatalf("schema_migrations rows for version %d = %d, %v; want 1", v, n, err)
		}
	}
	for _, idx := range []string{
		"audit_events_time", "audit_events_run", "audit_events_principal", "audit_events_decision",
		"agent_runs_agent", "agent_runs_created", "tool_calls_run", "tool_calls_agent", "tool_calls_created",
		"proposals_run", "proposals_agent", "proposals_created", "revoked_tokens_expires",
		"llm_calls_run", "llm_calls_agent", "llm_calls_created", "token_uses_expires",
	} {
		if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE indexname = $1`, idx).Scan(&n); err != nil || n != 1 {
			t.Errorf("index %s: %d, %v", idx, n, err)
		}
	}
}

func TestPoolIsBounded(t *testing.T) {
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	s, err := postgres.Open(context.Background(), dsn, postgres.Options{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := postgres.Open(context.Background(), dsn, postgres.Options{}); err == nil {
		t.Fatal("Open(MaxConns 0) = nil error, want one")
	}
	// More concurrent appenders than connections: they queue, none fail.
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		wg.Go(func() {
			c := store.NewChainer("w-" + string(rune('a'+i)))
			for range 5 {
				ev := []store.Event{{DecisionID: "d", Time: time.Now(), Kind: store.KindDecision}}
				c.Chain(ev)
				if err := s.AppendEvents(context.Background(), ev); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// The server goes away mid-stream and comes back: appends fail while it is
// down (the caller spools), and the same Store works again after, with
// every acknowledged event kept and a re-sent batch stored once.
func TestServerRestart(t *testing.T) {
	pg := testenv.StartPostgres(t)
	s := open(t, pg.NewDatabase(t))
	ctx := context.Background()
	c := store.NewChainer("w-restart")
	batch := func(n int) []store.Event {
		ev := make([]store.Event, n)
		for i := range ev {
			ev[i] = store.Event{DecisionID: "d", Time: time.Now(), Kind: store.KindDecision, Decision: "allow", Reason: "ok"}
		}
		c.Chain(ev)
		return ev
	}
	if err := s.AppendEvents(ctx, batch(10)); err != nil {
		t.Fatal(err)
	}
	pg.Stop(t)
	pending := batch(10)
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.AppendEvents(short, pending); err == nil {
		t.Fatal("AppendEvents with the server down = nil, want an error")
	}
	if err := s.Ping(short); err == nil {
		t.Fatal("Ping with the server down = nil, want an error")
	}
	pg.Start(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := s.AppendEvents(ctx, pending)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("AppendEvents after restart still failing: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.AppendEvents(ctx, pending); err != nil { // a replay of the same batch
		t.Fatal(err)
	}
	var v store.Verifier
	err := s.Chain(ctx, c.Writer(), v.Add)
	if err == nil {
		err = v.Close()
	}
	if err != nil || v.Verified() != 20 {
		t.Fatalf("verify after restart = %v after %d events, want 20 intact", err, v.Verified())
	}
}
