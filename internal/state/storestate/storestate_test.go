package storestate_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/statetest"
	"github.com/m1-agent/m1/internal/state/storestate"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/postgres"
	"github.com/m1-agent/m1/internal/store/sqlite"
	"github.com/m1-agent/m1/internal/testenv"
)

// The store is what the decision path and the revocation API consume.
var (
	_ authz.UseStore          = (*storestate.Store)(nil)
	_ authz.RevocationChecker = (*storestate.Store)(nil)
	_ authz.Epoch             = (*storestate.Store)(nil)
	_ admin.RevocationStore   = (*storestate.Store)(nil)
	_ statetest.Store         = (*storestate.Store)(nil)
)

// database is one backend database the tests open stores on, as separate
// processes would.
type database interface {
	open(t *testing.T) store.State
	exec(t *testing.T, sql string)
}

type sqliteDB struct{ path string }

func newSQLite(t *testing.T) *sqliteDB { return &sqliteDB{filepath.Join(t.TempDir(), "m1.db")} }

func (d *sqliteDB) open(t *testing.T) store.State {
	t.Helper()
	s, err := sqlite.Open(context.Background(), d.path, sqlite.DefaultOptions())
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (d *sqliteDB) exec(t *testing.T, q string) {
	t.Helper()
	db, err := sql.Open("sqlite", d.path+"?_busy_timeout=10000") // a connection of its own
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(q); err != nil {
		t.Fatalf("exec %q: %v", q, err)
	}
}

type postgresDB struct{ dsn string }

func (d *postgresDB) open(t *testing.T) store.State {
	t.Helper()
	s, err := postgres.Open(context.Background(), d.dsn, postgres.DefaultOptions())
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (d *postgresDB) exec(t *testing.T, q string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, d.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, q); err != nil {
		t.Fatalf("exec %q: %v", q, err)
	}
}

// newStore returns a loaded store on db.
func newStore(t *testing.T, db store.State, o storestate.Options) *storestate.Store {
	t.Helper()
	s, err := storestate.New(db, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Load(context.Background()); err != nil {
		t.Fatalf("Load = %v", err)
	}
	return s
}

// conformance runs statetest on stores of the databases newDB returns: a
// restart is a new store on the same database; a loss empties its state
// tables.
func conformance(t *testing.T, newDB func(t *testing.T) database) {
	var mu sync.Mutex
	dbOf := map[statetest.Store]database{}
	open := func(t *testing.T, d database, now func() time.Time) statetest.Store {
		s := newStore(t, d.open(t), storestate.Options{Now: now})
		mu.Lock()
		dbOf[s] = d
		mu.Unlock()
		return s
	}
	db := func(s statetest.Store) database {
		mu.Lock()
		defer mu.Unlock()
		return dbOf[s]
	}
	statetest.Run(t, statetest.Backend{
		New: func(t *testing.T, clock *statetest.Clock) statetest.Store {
			return open(t, newDB(t), clock.Now)
		},
		Reopen: func(t *testing.T, s statetest.Store) statetest.Store {
			return open(t, db(s), time.Now)
		},
		Lose: func(t *testing.T, s statetest.Store) {
			for _, q := range []string{`DELETE FROM state_epoch`, `DELETE FROM token_uses`, `DELETE FROM revoked_tokens`} {
				db(s).exec(t, q)
			}
		},
	})
}

func TestConformanceSQLite(t *testing.T) {
	conformance(t, func(t *testing.T) database { return newSQLite(t) })
}

func TestConformancePostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	conformance(t, func(t *testing.T) database { return &postgresDB{pg.NewDatabase(t)} })
}

// A new store starts a new epoch, as an empty Redis does: tokens issued
// before its creation plus the clock skew are refused; a restarted
// process keeps the epoch.
func TestNewStoreFences(t *testing.T) {
	ctx := context.Background()
	d := newSQLite(t)
	t0 := time.Now()
	s := newStore(t, d.open(t), storestate.Options{EpochMargin: 30 * time.Second})
	e := s.Epoch()
	if e.Before(t0.Add(30*time.Second)) || e.After(time.Now().Add(31*time.Second)) {
		t.Fatalf("Epoch() of a new store = %v, want the next whole second after now + 30s (%v)", e, t0.Add(30*time.Second))
	}
	for _, tc := range []struct {
		name string
		iat  time.Time
		ok   bool
		err  error
	}{
		{"issued before the store existed", t0.Add(-time.Minute), false, state.ErrStateReset},
		{"issued now, within the clock skew", t0, false, state.ErrStateReset},
		{"issued at the epoch", e, true, nil},
	} {
		ok, err := s.Use(ctx, state.Use{JTI: tc.name, IssuedAt: tc.iat, Exp: t0.Add(5 * time.Minute), MaxUses: 1})
		if ok != tc.ok || !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
			t.Errorf("Use(%s) = %v, %v; want %v, %v", tc.name, ok, err, tc.ok, tc.err)
		}
	}
	if r := newStore(t, d.open(t), storestate.Options{EpochMargin: 30 * time.Second}); !r.Epoch().Equal(e) {
		t.Fatalf("Epoch() after a restart = %v, want %v", r.Epoch(), e)
	}
}

// A store that cannot record fails closed: uses are state_unavailable, and
// a revocation or lift it cannot store changes nothing.
func TestStoreDownFailsClosed(t *testing.T) {
	ctx := context.Background()
	d := newSQLite(t)
	db := d.open(t)
	s := newStore(t, db, storestate.Options{})
	iat := s.Epoch()
	if err := s.Revoke(ctx, state.Revocation{Sub: "kept"}); err != nil {
		t.Fatal(err)
	}
	db.(*sqlite.Store).Close()
	if ok, err := s.Use(ctx, state.Use{JTI: "j", IssuedAt: iat, Exp: iat.Add(time.Minute), MaxUses: 1}); ok || !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("Use with the store closed = %v, %v; want false, ErrUnavailable", ok, err)
	}
	err := s.Revoke(ctx, state.Revocation{Sub: "agent-9"})
	if !errors.Is(err, state.ErrUnavailable) || !errors.Is(err, state.ErrNotStored) {
		t.Errorf("Revoke with the store closed = %v, want ErrUnavailable and ErrNotStored", err)
	}
	if r, _ := s.Revoked(ctx, "", "agent-9"); r {
		t.Error("a revocation the store refused is in force")
	}
	if lifted, err := s.LiftSub(ctx, "kept"); lifted || !errors.Is(err, state.ErrNotStored) {
		t.Errorf("LiftSub with the store closed = %v, %v; want false, ErrNotStored", lifted, err)
	}
	if r, _ := s.Revoked(ctx, "", "kept"); !r {
		t.Error("a lift the store refused was applied")
	}
}

// Before Load succeeds nothing is answered from an empty state.
func TestNotLoadedFailsClosed(t *testing.T) {
	ctx := context.Background()
	db := newSQLite(t).open(t)
	s, err := storestate.New(db, storestate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if ok, err := s.Use(ctx, state.Use{JTI: "j", IssuedAt: now, Exp: now.Add(time.Minute), MaxUses: 1}); ok || !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("Use before Load = %v, %v; want false, ErrUnavailable", ok, err)
	}
	if _, err := s.Revoked(ctx, "j", "agent"); !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("Revoked before Load = %v, want ErrUnavailable", err)
	}
}

// gatedDB holds each RecordUses until the test lets it go, and counts the
// uses of each call.
type gatedDB struct {
	store.State
	entered chan int // the batch size of each call, as it starts
	release chan struct{}
	calls   atomic.Int32
}

func (g *gatedDB) RecordUses(ctx context.Context, epoch, now time.Time, uses []store.Use) ([]bool, error) {
	g.calls.Add(1)
	g.entered <- len(uses)
	<-g.release
	return g.State.RecordUses(ctx, epoch, now, uses)
}

// Uses that arrive while a commit is in flight share the next commit, and
// no use is answered before its commit returned.
func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	g := &gatedDB{State: newSQLite(t).open(t), entered: make(chan int, 16), release: make(chan struct{})}
	s := newStore(t, g, storestate.Options{Timeout: time.Minute})
	iat := s.Epoch()
	use := func(jti string) state.Use {
		return state.Use{JTI: jti, IssuedAt: iat, Exp: iat.Add(time.Minute), MaxUses: 1}
	}
	var answered atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		if ok, err := s.Use(ctx, use("first")); !ok || err != nil {
			t.Errorf("Use(first) = %v, %v", ok, err)
		}
		answered.Add(1)
	})
	if n := <-g.entered; n != 1 {
		t.Fatalf("first commit has %d uses, want 1", n)
	}
	// The first commit is held: the next 20 uses queue behind it.
	for i := range 20 {
		wg.Go(func() {
			if ok, err := s.Use(ctx, use("u"+string(rune('a'+i)))); !ok || err != nil {
				t.Errorf("Use = %v, %v", ok, err)
			}
			answered.Add(1)
		})
	}
	testenv.Eventually(t, 10*time.Second, "the 20 uses to queue", func() bool { return s.Queued() == 20 })
	if answered.Load() != 0 {
		t.Fatalf("%d uses answered before their commit", answered.Load())
	}
	g.release <- struct{}{}
	if n := <-g.entered; n != 20 {
		t.Fatalf("second commit has %d uses, want the 20 that arrived during the first", n)
	}
	if answered.Load() > 1 {
		t.Fatalf("%d uses answered before the second commit returned", answered.Load())
	}
	g.release <- struct{}{}
	wg.Wait()
	if c := g.calls.Load(); c != 2 {
		t.Fatalf("%d commits for 21 uses, want 2", c)
	}
}

// gatedUses returns use, which starts a Use of an approval jti in wg, and
// entered, which waits for g's next commit and checks its size.
func gatedUses(t *testing.T, s *storestate.Store, g *gatedDB, wg *sync.WaitGroup) (use func(jti string), entered func(want int, what string)) {
	iat := s.Epoch()
	use = func(jti string) {
		wg.Go(func() {
			if ok, err := s.Use(context.Background(), state.Use{JTI: jti, IssuedAt: iat, Exp: iat.Add(time.Minute), MaxUses: 1}); !ok || err != nil {
				t.Errorf("Use(%s) = %v, %v", jti, ok, err)
			}
		})
	}
	entered = func(want int, what string) {
		t.Helper()
		select {
		case n := <-g.entered:
			if n != want {
				t.Fatalf("%s: a commit of %d uses, want %d", what, n, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no commit began", what)
		}
	}
	return use, entered
}

// A commit that follows a commit of LingerAfter checks or more lingers for
// more to join it, until the batch is full; one that follows fewer does
// not.
func TestGroupCommitLingers(t *testing.T) {
	g := &gatedDB{State: newSQLite(t).open(t), entered: make(chan int, 16), release: make(chan struct{})}
	s := newStore(t, g, storestate.Options{Timeout: time.Minute, MaxBatch: 3, Linger: time.Hour, LingerAfter: 2})
	var wg sync.WaitGroup
	use, entered := gatedUses(t, s, g, &wg)
	use("a")
	entered(1, "a lone use")
	use("b")
	use("c")
	testenv.Eventually(t, 10*time.Second, "b and c to queue", func() bool { return s.Queued() == 2 })
	g.release <- struct{}{}
	entered(2, "after a commit of one use (no linger)")
	g.release <- struct{}{}

	use("d") // the last commit had two uses: d's lingers
	testenv.Eventually(t, 10*time.Second, "d to queue", func() bool { return s.Queued() == 1 })
	select {
	case n := <-g.entered:
		t.Fatalf("a commit of %d uses began without lingering", n)
	case <-time.After(100 * time.Millisecond):
	}
	use("e")
	use("f") // the batch is full: the commit goes
	entered(3, "a lingering commit")
	g.release <- struct{}{}
	wg.Wait()
	if c := g.calls.Load(); c != 3 {
		t.Fatalf("%d commits for 6 uses, want 3", c)
	}
}

// With the default LingerAfter, a commit that follows a commit of a few
// checks (a sidecar that is not busy) does not linger: the checks waiting
// would only wait longer.
func TestGroupCommitNoLingerWhenNotBusy(t *testing.T) {
	g := &gatedDB{State: newSQLite(t).open(t), entered: make(chan int, 16), release: make(chan struct{})}
	s := newStore(t, g, storestate.Options{Timeout: time.Minute, Linger: time.Hour})
	var wg sync.WaitGroup
	use, entered := gatedUses(t, s, g, &wg)
	use("a")
	entered(1, "a lone use")
	for _, jti := range []string{"b", "c", "d"} {
		use(jti)
	}
	testenv.Eventually(t, 10*time.Second, "b, c and d to queue", func() bool { return s.Queued() == 3 })
	g.release <- struct{}{}
	entered(3, "after a commit of one use")
	g.release <- struct{}{}
	use("e") // the last commit had three checks, fewer than LingerAfter
	entered(1, "after a commit of three checks")
	g.release <- struct{}{}
	wg.Wait()
}

// Two sidecars sharing one PostgreSQL count a grant's uses together, and
// a sidecar started later knows the revocations taken before.
func TestSharedPostgres(t *testing.T) {
	ctx := context.Background()
	pg := testenv.StartPostgres(t)
	d := &postgresDB{pg.NewDatabase(t)}
	a := newStore(t, d.open(t), storestate.Options{})
	b := newStore(t, d.open(t), storestate.Options{})
	if !a.Epoch().Equal(b.Epoch()) {
		t.Fatalf("epochs %v and %v, want one", a.Epoch(), b.Epoch())
	}
	iat := a.Epoch()
	grant := state.Use{JTI: "g", IssuedAt: iat, Exp: iat.Add(time.Minute), MaxUses: 5}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		s := []*storestate.Store{a, b}[i%2]
		wg.Go(func() {
			if ok, err := s.Use(ctx, grant); err == nil && ok {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 5 {
		t.Fatalf("16 uses of a 5-use grant at two sidecars: %d counted, want 5", wins.Load())
	}
	if err := a.Revoke(ctx, state.Revocation{Sub: "rogue", By: "admin:ab12"}); err != nil {
		t.Fatal(err)
	}
	c := newStore(t, d.open(t), storestate.Options{})
	if r, err := c.Revoked(ctx, "", "rogue"); !r || err != nil {
		t.Fatalf("Revoked(rogue) at a sidecar started later = %v, %v; want true", r, err)
	}
}

// LiftSub answers whether a revocation was in force: with an in-process
// set, a row another sidecar sharing the database stored counts; with a
// shared set (Redis), the set is the authority and a row of this store that
// was lifted elsewhere does not. The row is deleted either way.
func TestLiftSubAuthority(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		new  func(store.State, storestate.RevocationSet) *storestate.Revocations
		want bool
	}{
		{"in-process set", func(db store.State, set storestate.RevocationSet) *storestate.Revocations {
			return storestate.NewRevocations(db, set, storestate.Options{})
		}, true},
		{"shared set", func(db store.State, set storestate.RevocationSet) *storestate.Revocations {
			return storestate.NewSharedRevocations(db, set, storestate.Options{})
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := newSQLite(t).open(t)
			if err := db.PutRevocation(ctx, store.Revocation{Sub: "agent-7", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			r := tc.new(db, state.NewMemory(state.MemoryOptions{})) // the set does not hold it
			if lifted, err := r.LiftSub(ctx, "agent-7"); lifted != tc.want || err != nil {
				t.Errorf("LiftSub = %v, %v; want %v", lifted, err, tc.want)
			}
			n := 0
			if err := db.Revocations(ctx, time.Now(), func(store.Revocation) error { n++; return nil }); err != nil || n != 0 {
				t.Errorf("rows after LiftSub = %d, %v; want 0", n, err)
			}
		})
	}
}

// countingDB counts the commits of uses.
type countingDB struct {
	store.State
	commits atomic.Int32
}

func (c *countingDB) RecordUses(ctx context.Context, epoch, now time.Time, uses []store.Use) ([]bool, error) {
	c.commits.Add(1)
	return c.State.RecordUses(ctx, epoch, now, uses)
}

// With Reserve, a grant in quick use takes blocks of uses in one commit
// each; its max_uses holds exactly under concurrency and across a restart,
// which forfeits at most what is left of a block; a grant of few uses is
// counted one use at a time.
func TestReservedGrantUses(t *testing.T) {
	ctx := context.Background()
	sq := newSQLite(t)
	db := &countingDB{State: sq.open(t)}
	o := storestate.Options{Timeout: time.Minute, Reserve: 256} // blocks of max_uses/10 = 100 at most here
	s := newStore(t, db, o)
	iat := s.Epoch()
	grant := func(jti string, maxUses int) state.Use {
		return state.Use{JTI: jti, IssuedAt: iat, Exp: iat.Add(time.Hour), MaxUses: maxUses}
	}
	uses := func(s *storestate.Store, u state.Use, n int) (allowed int) {
		t.Helper()
		for range n {
			ok, err := s.Use(ctx, u)
			if err != nil {
				t.Fatalf("Use(%s): %v", u.JTI, err)
			}
			if ok {
				allowed++
			}
		}
		return allowed
	}
	stored := func(jti string) int {
		t.Helper()
		n := -1
		if err := db.Uses(ctx, time.Now(), func(r store.UseRecord) error {
			if r.JTI == jti {
				n = r.Uses
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// In quick use: blocks, far fewer commits than uses.
	// Blocks of at most 100, the next counted when the last is half used:
	// at most 150 counted and not handed out, at any time.
	big := grant("big", 1000)
	for i := 1; i <= 10; i++ {
		if got := uses(s, big, 50); got != 50 {
			t.Fatalf("%d of 50 uses allowed", got)
		}
		testenv.Eventually(t, 10*time.Second, "the background refill", func() bool { return !s.Refilling("big") })
		if n := stored("big"); n < 50*i || n > 50*i+150 {
			t.Fatalf("the store counts %d uses after %d allowed; want %d..%d", n, 50*i, 50*i, 50*i+150)
		}
	}
	if c := db.commits.Load(); c > 50 {
		t.Fatalf("%d commits for 500 uses of one grant; want blocks", c)
	}

	// A restart forfeits the rest of the blocks, never exceeds max_uses.
	s2 := newStore(t, db, o)
	after := uses(s2, big, 600)
	if total := 500 + after; total > 1000 || total < 1000-150 {
		t.Fatalf("%d uses allowed in all across a restart; want 850..1000", total)
	}

	// Few uses: one at a time, exact across a restart.
	small := grant("small", 5)
	if got := uses(s2, small, 2); got != 2 {
		t.Fatalf("%d of 2 uses allowed", got)
	}
	s3 := newStore(t, db, o)
	if got := uses(s3, small, 5); got != 3 {
		t.Fatalf("after a restart %d more uses allowed of a grant of 5 used twice; want 3", got)
	}

	// Concurrent callers share the blocks: exactly max_uses are allowed.
	shared := grant("shared", 1000)
	var allowed atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for range 40 {
				ok, err := s3.Use(ctx, shared)
				if err != nil {
					t.Errorf("Use: %v", err)
					return
				}
				if ok {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if a := allowed.Load(); a != 1000 {
		t.Fatalf("%d of 2000 concurrent uses allowed of a grant of 1000; want exactly 1000", a)
	}
	if n := stored("shared"); n != 1000 {
		t.Fatalf("the store counts %d uses; want 1000", n)
	}
}
