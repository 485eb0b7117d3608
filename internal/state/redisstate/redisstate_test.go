package redisstate_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/redisstate"
	"github.com/m1-agent/m1/internal/state/statetest"
	"github.com/m1-agent/m1/internal/testenv"
)

// The store is what the decision path and the revocation API consume.
var (
	_ authz.UseStore          = (*redisstate.Store)(nil)
	_ authz.RevocationChecker = (*redisstate.Store)(nil)
	_ authz.Epoch             = (*redisstate.Store)(nil)
	_ admin.RevocationStore   = (*redisstate.Store)(nil)
	_ statetest.Store         = (*redisstate.Store)(nil)
)

var prefixes atomic.Int64

// uniquePrefix isolates stores sharing one Redis.
func uniquePrefix() string { return fmt.Sprintf("{t%d}:", prefixes.Add(1)) }

// newClient returns a go-redis client for addr, closed with the test.
// ctxTimeouts sets ContextTimeoutEnabled.
func newClient(t testing.TB, addr string, ctxTimeouts bool) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: ctxTimeouts,
		DialTimeout:           5 * time.Second,
		ReadTimeout:           10 * time.Second, // far above the store's bounds, so a bound that does not hold shows
		WriteTimeout:          10 * time.Second,
		MaxRetries:            2,
		MinRetryBackoff:       5 * time.Millisecond,
		MaxRetryBackoff:       50 * time.Millisecond,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newStore returns a store that has made first contact (Resync).
func newStore(t testing.TB, c redis.UniversalClient, o redisstate.Options) *redisstate.Store {
	t.Helper()
	s, err := redisstate.New(c, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Resync(ctx); err != nil {
		t.Fatalf("Resync: %v", err)
	}
	return s
}

// start runs s.Start until the test ends.
func start(t testing.TB, s *redisstate.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start = %v", err)
		}
	})
}

// iatOf is the iat of a token the store accepts: its epoch (the earliest
// iat the fence lets through), or now before the first contact.
func iatOf(s *redisstate.Store) time.Time {
	if e := s.Epoch(); !e.IsZero() {
		return e
	}
	return issuedNow()
}

// consume, count and consumeIssued present one use as the decision path
// does: an approval or a grant's use, of a token issued at iatOf(s) or at
// iat.
func consume(ctx context.Context, s *redisstate.Store, jti string, exp time.Time) (bool, error) {
	return s.Use(ctx, state.Use{JTI: jti, IssuedAt: iatOf(s), Exp: exp, MaxUses: 1})
}

func count(ctx context.Context, s *redisstate.Store, jti string, max int, exp time.Time) (bool, error) {
	return s.Use(ctx, state.Use{JTI: jti, IssuedAt: iatOf(s), Exp: exp, MaxUses: max})
}

func consumeIssued(ctx context.Context, s *redisstate.Store, jti string, iat, exp time.Time) (bool, error) {
	return s.Use(ctx, state.Use{JTI: jti, IssuedAt: iat, Exp: exp, MaxUses: 1})
}

// conformance is the statetest backend of stores on client: each new store
// has its own prefix; Reopen starts another store on the same prefix, as a
// restarted sidecar; Lose deletes every key of the prefix, as a Redis
// restarted without persistence.
func conformance(client redis.UniversalClient) statetest.Backend {
	var mu sync.Mutex
	prefixOf := map[statetest.Store]string{}
	open := func(t *testing.T, prefix string, now func() time.Time) statetest.Store {
		s := newStore(t, client, redisstate.Options{Prefix: prefix, Now: now})
		start(t, s)
		mu.Lock()
		prefixOf[s] = prefix
		mu.Unlock()
		return s
	}
	prefix := func(s statetest.Store) string {
		mu.Lock()
		defer mu.Unlock()
		return prefixOf[s]
	}
	return statetest.Backend{
		New: func(t *testing.T, clock *statetest.Clock) statetest.Store {
			return open(t, uniquePrefix(), clock.Now)
		},
		Reopen: func(t *testing.T, s statetest.Store) statetest.Store {
			return open(t, prefix(s), time.Now)
		},
		Lose: func(t *testing.T, s statetest.Store) {
			// One DEL of every key of the prefix (they share a slot): the
			// loss is atomic, as a restart or FLUSHALL is.
			ctx := context.Background()
			p := prefix(s)
			keys := []string{p + "epoch", p + "revocations"}
			scan := func(ctx context.Context, c *redis.Client) error {
				iter := c.Scan(ctx, 0, p+"use:*", 0).Iterator()
				for iter.Next(ctx) {
					mu.Lock()
					keys = append(keys, iter.Val())
					mu.Unlock()
				}
				return iter.Err()
			}
			var err error
			if cc, ok := client.(*redis.ClusterClient); ok {
				err = cc.ForEachMaster(ctx, scan)
			} else {
				err = scan(ctx, client.(*redis.Client))
			}
			if err == nil {
				err = client.Del(ctx, keys...).Err()
			}
			if err != nil {
				t.Fatal(err)
			}
		},
	}
}

func TestConformance(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	statetest.Run(t, conformance(newClient(t, r.Addr, true)))
}

func TestConformanceCluster(t *testing.T) {
	cl := testenv.StartRedisCluster(t, 3)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	statetest.Run(t, conformance(c))
}

// Two sidecars, each with its own connection pool, share one Redis: one
// token presented concurrently to both is used exactly as allowed.
func TestTwoStoresShareUses(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	for _, tt := range []struct {
		name  string
		use   func(s *redisstate.Store) (bool, error)
		tries int
		want  int32
	}{
		{"approval once", func(s *redisstate.Store) (bool, error) { return consume(ctx, s, "hot", exp) }, 24, 1},
		{"grant max 5", func(s *redisstate.Store) (bool, error) { return count(ctx, s, "grant", 5, exp) }, 24, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prefix := uniquePrefix()
			stores := []*redisstate.Store{
				newStore(t, newClient(t, r.Addr, true), redisstate.Options{Prefix: prefix}),
				newStore(t, newClient(t, r.Addr, true), redisstate.Options{Prefix: prefix}),
			}
			var wins, errs atomic.Int32
			var wg sync.WaitGroup
			gate := make(chan struct{})
			for i := range tt.tries {
				wg.Go(func() {
					<-gate
					ok, err := tt.use(stores[i%2])
					if err != nil {
						errs.Add(1)
						t.Errorf("use: %v", err)
					}
					if ok {
						wins.Add(1)
					}
				})
			}
			close(gate)
			wg.Wait()
			if wins.Load() != tt.want || errs.Load() != 0 {
				t.Fatalf("%d concurrent uses across two stores: %d allowed, %d errors; want %d allowed", tt.tries, wins.Load(), errs.Load(), tt.want)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = c.Close() })
	for _, tt := range []struct {
		name string
		o    redisstate.Options
		ok   bool
	}{
		{"defaults", redisstate.Options{}, true},
		{"local fallback", redisstate.Options{Fallback: redisstate.FallbackLocal}, true},
		{"prefix without hash tag", redisstate.Options{Prefix: "m1:"}, false},
		{"empty hash tag", redisstate.Options{Prefix: "{}:m1:"}, false},
		{"unknown fallback", redisstate.Options{Fallback: "memory"}, false},
		{"negative timeout", redisstate.Options{Timeout: -time.Second}, false},
		{"negative epoch margin", redisstate.Options{EpochMargin: -time.Second}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := redisstate.New(c, tt.o)
			if (err == nil) != tt.ok {
				t.Errorf("New(%s) = %v, want ok %v", tt.name, err, tt.ok)
			}
		})
	}
	if _, err := redisstate.New(nil, redisstate.Options{}); err == nil {
		t.Errorf("New(nil client) = nil error")
	}
}

// The first use of a process that has not read the epoch yet reads it and
// compares the token with it at once: on a Redis with no epoch it sets one
// (ahead of the clock), so a token issued before is refused; a second
// process adopts the stored epoch on its first use.
func TestFirstContact(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	c := newClient(t, r.Addr, true)
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	prefix := uniquePrefix()
	newFresh := func() *redisstate.Store {
		s, err := redisstate.New(c, redisstate.Options{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	s := newFresh()
	if !s.Epoch().IsZero() {
		t.Fatalf("Epoch() before contact = %v, want zero", s.Epoch())
	}
	iat := issuedNow()
	ok, err := consumeIssued(ctx, s, "j1", iat, exp)
	if ok || !errors.Is(err, state.ErrStateReset) {
		t.Fatalf("first use, on a Redis without an epoch, of a token issued before = %v, %v; want false, ErrStateReset", ok, err)
	}
	if !s.Epoch().After(iat) {
		t.Fatalf("Epoch() after contact = %v, want after the token's iat %v", s.Epoch(), iat)
	}
	if ok, err := consumeIssued(ctx, s, "j1", s.Epoch(), exp); !ok || err != nil {
		t.Fatalf("use of a token issued at the epoch = %v, %v; want true", ok, err)
	}

	s2 := newFresh()
	if ok, err := consumeIssued(ctx, s2, "j2", s.Epoch(), exp); !ok || err != nil {
		t.Fatalf("use before contact of a second store = %v, %v; want true", ok, err)
	}
	if !s2.Epoch().Equal(s.Epoch()) {
		t.Fatalf("second store adopted %v, want the stored epoch %v", s2.Epoch(), s.Epoch())
	}
}

// proxy is a TCP proxy to a Redis that a test can cut (refuse and drop
// every connection) or stall (accept and never answer).
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	mode  int
	conns map[net.Conn]struct{}
}

const (
	modePass = iota
	modeCut
	modeStall
)

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		p.set(modeCut)
	})
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) get() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// set switches the mode; modeCut closes the open connections.
func (p *proxy) set(mode int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = mode
	if mode == modeCut {
		for c := range p.conns {
			_ = c.Close()
		}
		clear(p.conns)
	}
}

func (p *proxy) serve() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.get() == modeCut {
			_ = down.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = down.Close()
			continue
		}
		p.mu.Lock()
		p.conns[down], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go p.pipe(up, down)
		go p.pipe(down, up)
	}
}

// pipe copies src to dst, dropping the bytes while stalled.
func (p *proxy) pipe(dst, src net.Conn) {
	defer func() { _ = dst.Close(); _ = src.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && p.get() == modePass {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// revoked reports s.Revoked, failing the test on an error.
func revoked(t testing.TB, s *redisstate.Store, jti, sub string) bool {
	t.Helper()
	r, err := s.Revoked(context.Background(), jti, sub)
	if err != nil {
		t.Fatalf("Revoked: %v", err)
	}
	return r
}

func listHas(s *redisstate.Store, want state.Revocation) bool {
	list, err := s.List(context.Background())
	if err != nil {
		return false
	}
	for _, r := range list {
		if r.JTI == want.JTI && r.Sub == want.Sub {
			return true
		}
	}
	return false
}
