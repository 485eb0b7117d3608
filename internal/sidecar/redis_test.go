package sidecar

import (
	"context"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/toolcall"
)

// sharedPair starts two in-process sidecars on one real Redis with the same
// keys, as two pods of one tool service.
type sharedPair struct {
	redis *testenv.Redis
	key   *approval.SigningKey
	a, b  *Server
}

func startSharedPair(t testing.TB, mod func(*Options)) *sharedPair {
	t.Helper()
	return startPair(t, true, mod)
}

// startPair starts two sidecars with the same keys, sharing a real Redis
// when withRedis, else each with in-process state.
func startPair(t testing.TB, withRedis bool, mod func(*Options)) *sharedPair {
	t.Helper()
	var r *testenv.Redis
	if withRedis {
		r = testenv.StartRedis(t, testenv.RedisOptions{})
	}
	key, err := approval.GenerateKey("EdDSA", "k1")
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := key.PublicJWKS()
	path := t.TempDir() + "/jwks.json"
	if err := writeFile(path, jwks); err != nil {
		t.Fatal(err)
	}
	p := &sharedPair{redis: r, key: key}
	for _, s := range []**Server{&p.a, &p.b} {
		o := testOptions(t)
		o.JWKSFile, o.Audience = path, "tools.local"
		if r != nil {
			o.Redis.URL = r.URL()
		}
		o.Redis.CommandTimeout = 300 * time.Millisecond
		o.ClockSkew = time.Second // the epoch margin: a new epoch starts skew+1s ahead
		if mod != nil {
			mod(&o)
		}
		*s = startServer(t, o)
	}
	if r == nil {
		return p
	}
	// Both adopted the epoch: tokens issued from now on are valid.
	testenv.Eventually(t, 15*time.Second, "both sidecars adopt the epoch", func() bool {
		return !p.a.shared.Epoch().IsZero() && p.a.shared.Epoch().Equal(p.b.shared.Epoch())
	})
	for time.Now().Before(p.a.shared.Epoch()) {
		time.Sleep(20 * time.Millisecond) // tokens must be issued at or after the epoch
	}
	return p
}

func checkClient(t testing.TB, s *Server) authv3.AuthorizationClient {
	t.Helper()
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// writeReqFor builds a REST write_file call whose JCS args hash matches mint.
func writeCall(tok string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/write_file", Host: "tools.local",
			Headers: map[string]string{"x-m1-approval-token": tok}, Body: `{"path":"/tmp/shared"}`},
	}}}
}

func TestTwoSidecarsShareSingleUse(t *testing.T) {
	p := startSharedPair(t, nil)
	ca, cb := checkClient(t, p.a), checkClient(t, p.b)
	tok := p.mintFor(t, `{"path":"/tmp/shared"}`)
	var allows atomic.Int32
	var denies sync.Map
	var wg sync.WaitGroup
	for i := range 24 {
		c := ca
		if i%2 == 1 {
			c = cb
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := c.Check(ctx, writeCall(tok))
			if err != nil {
				t.Errorf("Check: %v", err)
				return
			}
			if resp.GetStatus().GetCode() == 0 {
				allows.Add(1)
				return
			}
			denies.Store(resp.GetStatus().GetMessage(), true)
		}()
	}
	wg.Wait()
	if allows.Load() != 1 {
		t.Fatalf("one approval presented 24 times across two sidecars: %d allowed, want exactly 1", allows.Load())
	}
	denies.Range(func(k, _ any) bool {
		if k != "token_replayed" {
			t.Errorf("a concurrent presentation was denied %v, want token_replayed", k)
		}
		return true
	})
}

func TestRevocationReachesTheOtherSidecar(t *testing.T) {
	p := startSharedPair(t, nil)
	tok := p.mintFor(t, `{"path":"/tmp/shared"}`)
	claims, err := p.a.verifier.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.a.store.Revoke(context.Background(), stateRevocationJTI(claims.ID)); err != nil {
		t.Fatal(err)
	}
	cb := checkClient(t, p.b)
	testenv.Eventually(t, 15*time.Second, "sidecar B denies the token revoked at A", func() bool {
		resp, err := cb.Check(context.Background(), writeCall(tok))
		return err == nil && resp.GetStatus().GetMessage() == "token_revoked"
	})
}

func TestRedisDownFailsClosedThenRecovers(t *testing.T) {
	p := startSharedPair(t, nil)
	ca := checkClient(t, p.a)
	p.redis.Stop(t)
	ctx := context.Background()
	start := time.Now()
	resp, err := ca.Check(ctx, writeCall(p.mintFor(t, `{"path":"/tmp/shared"}`)))
	took := time.Since(start)
	if err != nil || resp.GetStatus().GetMessage() != "state_unavailable" || resp.GetDeniedResponse().GetStatus().GetCode() != 503 {
		t.Fatalf("Check with Redis down = %v, %v; want deny 503 state_unavailable", resp, err)
	}
	t.Logf("deny with Redis down took %v", took)
	// Non-token traffic still decides (L1 cache, no Redis needed).
	read := writeCall("")
	delete(read.Attributes.Request.Http.Headers, "x-m1-approval-token")
	read.Attributes.Request.Http.Path = "/tools/read_file"
	if resp, _ := ca.Check(ctx, read); resp.GetStatus().GetCode() != 0 {
		t.Fatalf("read_file with Redis down = %v, want allow", resp.GetStatus())
	}
	testenv.Eventually(t, 15*time.Second, "health reports redis degraded", func() bool {
		return strings.Contains(p.a.healthReport().Checks["redis"].Status, "degraded") && p.a.healthReport().Ready
	})
	p.redis.Start(t)
	testenv.Eventually(t, 15*time.Second, "redis connected again", p.a.redis.Connected)
	// Redis came back empty: a token minted after the new epoch is allowed.
	testenv.Eventually(t, 15*time.Second, "a fresh approval is allowed after recovery", func() bool {
		resp, err := ca.Check(ctx, writeCall(p.mintFor(t, `{"path":"/tmp/shared"}`)))
		return err == nil && resp.GetStatus().GetCode() == 0
	})
}

func TestRedisRestartedEmptyDoesNotAllowReplay(t *testing.T) {
	p := startSharedPair(t, nil)
	ca := checkClient(t, p.a)
	ctx := context.Background()
	tok := p.mintFor(t, `{"path":"/tmp/shared"}`)
	if resp, _ := ca.Check(ctx, writeCall(tok)); resp.GetStatus().GetCode() != 0 {
		t.Fatalf("first use = %v, want allow", resp.GetStatus())
	}
	p.redis.Restart(t) // no persistence: every consumed jti is forgotten
	testenv.Eventually(t, 15*time.Second, "redis connected again", p.a.redis.Connected)
	resp, err := ca.Check(ctx, writeCall(tok))
	if err != nil || resp.GetStatus().GetCode() == 0 {
		t.Fatalf("replay after Redis lost its data = allow; want deny")
	}
	if m := resp.GetStatus().GetMessage(); m != "state_reset" && m != "state_unavailable" {
		t.Fatalf("replay after Redis lost its data = deny %s, want state_reset", m)
	}
}

func (p *sharedPair) mintFor(t testing.TB, args string) string {
	t.Helper()
	sum := argsHash(t, args)
	now := time.Now()
	tok, err := approval.Mint(p.key, approval.Claims{
		Issuer: "m1-cli", Subject: "agent-42", Audience: []string{"tools.local"},
		IssuedAt: now, NotBefore: now, Expiry: now.Add(2 * time.Minute),
		Kind: approval.KindApproval, Tool: "write_file", ArgsSHA256: sum,
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }

func argsHash(t testing.TB, args string) string {
	t.Helper()
	h := &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/write_file", Body: args}
	c, rerr := toolcall.Parse(h, toolcall.HeadersOf(h), toolcall.Options{MCPPath: "/mcp", ToolsPathPrefix: "/tools/", MaxBodyBytes: 1 << 20})
	if rerr != nil {
		t.Fatal(rerr)
	}
	return c.ArgsSHA256
}

func stateRevocationJTI(jti string) state.Revocation {
	return state.Revocation{JTI: jti, Until: time.Now().Add(time.Hour)}
}

func TestCacheFlushReachesTheOtherSidecar(t *testing.T) {
	p := startSharedPair(t, nil)
	cb := checkClient(t, p.b)
	read := writeCall("")
	delete(read.Attributes.Request.Http.Headers, "x-m1-approval-token")
	read.Attributes.Request.Http.Path = "/tools/read_file"
	if resp, _ := cb.Check(context.Background(), read); resp.GetStatus().GetCode() != 0 {
		t.Fatalf("read_file = %v, want allow", resp.GetStatus())
	}
	if p.b.cache.Len() == 0 {
		t.Fatal("B cached nothing")
	}
	req, _ := http.NewRequest("POST", "http://"+p.a.AdminAddr().String()+"/api/m1/cache/flush", nil)
	req.Header.Set("Authorization", "Bearer "+p.a.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST /api/m1/cache/flush = %v, %v", resp, err)
	}
	resp.Body.Close()
	testenv.Eventually(t, 15*time.Second, "B's L1 is flushed by A's flush", func() bool { return p.b.cache.Len() == 0 })
}

// RATE_LIMIT_REQUESTS_PER_MINUTE across two sidecars on one Redis: the
// principal's count is shared, and the refusal is 429 rate_limited.
func TestTwoSidecarsShareRateLimits(t *testing.T) {
	p := startSharedPair(t, func(o *Options) { o.RateLimitMinute = 3 })
	ca, cb := checkClient(t, p.a), checkClient(t, p.b)
	ctx := context.Background()
	for i, c := range []authv3.AuthorizationClient{ca, cb, ca, cb} {
		resp, err := c.Check(ctx, writeCall(p.mintFor(t, `{"path":"/tmp/shared"}`)))
		if err != nil {
			t.Fatal(err)
		}
		allowed := resp.GetStatus().GetCode() == 0
		if want := i < 3; allowed != want {
			t.Fatalf("call %d of agent-42 (limit 3 a minute, two sidecars) allowed = %v (%s), want %v", i+1, allowed, resp.GetStatus().GetMessage(), want)
		}
		if !allowed && (resp.GetStatus().GetMessage() != "rate_limited" || resp.GetDeniedResponse().GetStatus().GetCode() != 429) {
			t.Fatalf("call %d denied %s %v, want 429 rate_limited", i+1, resp.GetStatus().GetMessage(), resp.GetDeniedResponse().GetStatus())
		}
	}
}
