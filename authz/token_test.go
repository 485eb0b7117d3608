package authz

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/ratelimit"
	"github.com/m1-agent/m1/internal/state"
)

// tokenFixture is a service with keys, a clock and a minting key.
type tokenFixture struct {
	testService
	key   *approval.SigningKey
	now   time.Time
	state *state.Memory
}

func newTokenFixture(t testing.TB) *tokenFixture {
	t.Helper()
	key, err := approval.GenerateKey("EdDSA", "k1")
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := key.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	ks, err := approval.ParseJWKS(jwks)
	if err != nil {
		t.Fatal(err)
	}
	f := &tokenFixture{key: key, now: time.Now()}
	v, err := approval.NewVerifier(approval.VerifierOptions{Keys: ks, Audience: "tools.local", MaxTTL: 5 * time.Minute, ClockSkew: 30 * time.Second, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.testService = newService(t, defaultEngine(t), true)
	f.state = state.NewMemory(state.MemoryOptions{})
	f.opts.Tokens, f.opts.Uses, f.opts.Revocations, f.opts.ClockSkew = v, f.state, f.state, 30*time.Second
	return f
}

var readArgs = `{"path":"/etc/hosts"}`

func (f *tokenFixture) mint(t testing.TB, mod func(*approval.Claims)) string {
	t.Helper()
	now := time.Now()
	c := approval.Claims{
		Issuer: "m1-cli", Subject: "agent-42", Audience: []string{"tools.local"}, Actor: "alice",
		IssuedAt: now, NotBefore: now, Expiry: now.Add(2 * time.Minute),
		Kind: approval.KindApproval, Tool: "write_file", ArgsSHA256: sha(`{"path":"/tmp/x"}`), RunID: "run-1",
	}
	if mod != nil {
		mod(&c)
	}
	tok, err := approval.Mint(f.key, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func withToken(r *authv3.AttributeContext_HttpRequest, tok string) *authv3.AttributeContext_HttpRequest {
	r.Headers["x-m1-approval-token"] = tok
	return r
}

func writeReq(args string) *authv3.AttributeContext_HttpRequest {
	return httpReq("POST", "/mcp", mcpCall("write_file", args))
}

func TestHardChecks(t *testing.T) {
	f := newTokenFixture(t)
	other, _ := approval.GenerateKey("EdDSA", "k1") // same kid, different key
	forged, _ := approval.Mint(other, approval.Claims{Issuer: "x", Subject: "agent-42", Audience: []string{"tools.local"},
		IssuedAt: time.Now(), NotBefore: time.Now(), Expiry: time.Now().Add(time.Minute), Kind: approval.KindApproval, Tool: "write_file", ArgsSHA256: sha(`{"path":"/tmp/x"}`)})
	tests := []struct {
		name   string
		req    *authv3.AttributeContext_HttpRequest
		status int
		code   string
	}{
		{"garbage", withToken(writeReq(`{"path":"/tmp/x"}`), "not.a.jwt"), 401, deny.TokenInvalid},
		{"empty", withToken(writeReq(`{"path":"/tmp/x"}`), ""), 401, deny.TokenInvalid},
		{"signed by another key", withToken(writeReq(`{"path":"/tmp/x"}`), forged), 401, deny.TokenInvalid},
		{"expired", withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, func(c *approval.Claims) {
			c.IssuedAt, c.NotBefore, c.Expiry = time.Now().Add(-4*time.Minute), time.Now().Add(-4*time.Minute), time.Now().Add(-time.Minute)
		})), 401, deny.TokenExpired},
		{"not yet valid", withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, func(c *approval.Claims) {
			c.NotBefore = time.Now().Add(time.Minute)
		})), 401, deny.TokenNotYetValid},
		{"ttl too long", withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, func(c *approval.Claims) { c.Expiry = c.IssuedAt.Add(time.Hour) })), 401, deny.TokenTTLExceeded},
		{"wrong audience", withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, func(c *approval.Claims) { c.Audience = []string{"other"} })), 401, deny.AudienceMismatch},
		{"wrong tool", withToken(httpReq("POST", "/tools/run_command", `{"path":"/tmp/x"}`), f.mint(t, nil)), 403, deny.ToolMismatch},
		{"tampered args", withToken(writeReq(`{"path":"/etc/passwd"}`), f.mint(t, nil)), 403, deny.ArgsMismatch},
		{"extra argument", withToken(writeReq(`{"path":"/tmp/x","mode":"0777"}`), f.mint(t, nil)), 403, deny.ArgsMismatch},
		{"grant for other tools", withToken(writeReq(`{}`), f.mint(t, func(c *approval.Claims) {
			c.Kind, c.Tool, c.ArgsSHA256, c.Tools, c.MaxUses = approval.KindGrant, "", "", []string{"read_*", "list_dir"}, 3
		})), 403, deny.ToolMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := check(t, f.Service, tt.req)
			if r.allowed || r.status != tt.status || r.body.Error != tt.code {
				t.Fatalf("Check(%s) = allowed %v %d %s, want deny %d %s", tt.name, r.allowed, r.status, r.raw, tt.status, tt.code)
			}
			// reason says why; the code is the body's error alone
			if r.body.Reason == "" || strings.Contains(r.body.Reason, tt.code) {
				t.Errorf("Check(%s) reason = %q, want a reason that does not repeat the code", tt.name, r.body.Reason)
			}
		})
	}
	if got := testutil.ToFloat64(f.m.TokenVerifyTotal.WithLabelValues(deny.ArgsMismatch)); got != 2 {
		t.Errorf("m1_token_verifications_total{result=args_mismatch} = %v, want 2", got)
	}
}

func TestApprovalAllowsOnceAndCarriesPrincipal(t *testing.T) {
	f := newTokenFixture(t)
	tok := f.mint(t, nil)
	// JCS-equivalent spelling of the approved arguments.
	r := check(t, f.Service, withToken(writeReq(`{ "path" : "\/tmp\/x" }`), tok))
	if !r.allowed {
		t.Fatalf("Check(approved call) = deny %s, want allow", r.raw)
	}
	ok := r.resp.GetOkResponse()
	if !hasHeader(ok.GetHeaders(), HeaderPrincipal, "agent-42") || !hasHeader(ok.GetHeaders(), HeaderRunID, "run-1") {
		t.Errorf("allow headers = %v, want x-m1-principal agent-42 and x-m1-run-id run-1", ok.GetHeaders())
	}
	r = check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok))
	if r.allowed || r.status != 403 || r.body.Error != deny.TokenReplayed {
		t.Fatalf("Check(replay) = %v %d %s, want deny 403 token_replayed", r.allowed, r.status, r.raw)
	}
}

// A replayed approval is denied with M1's own body: the headers and body of
// the policy's allow were meant for the tool, not for the caller.
func TestReplayDenyDropsThePolicysAllowHeaders(t *testing.T) {
	f := newTokenFixture(t)
	f.SetPolicy(regoEngine(t, `package m1.authz
import rego.v1
decision := {"allowed": true, "headers": {"x-upstream-secret": "s3cret"}, "body": "for the tool"}
`))
	tok := f.mint(t, nil)
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok)); !r.allowed {
		t.Fatalf("Check(first use) = deny %s, want allow", r.raw)
	}
	r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok))
	if r.allowed || r.body.Error != deny.TokenReplayed {
		t.Fatalf("Check(replay) = %v %s, want deny token_replayed with M1's JSON body", r.allowed, r.raw)
	}
	for _, h := range r.resp.GetDeniedResponse().GetHeaders() {
		if h.GetHeader().GetKey() == "x-upstream-secret" {
			t.Fatalf("Check(replay) deny headers carry the policy's allow header %v", h.GetHeader())
		}
	}
}

func TestPolicyDenyLeavesApprovalUsable(t *testing.T) {
	f := newTokenFixture(t)
	f.SetPolicy(regoEngine(t, "package m1.authz\nimport rego.v1\ndecision if input.m1.token.act.sub == \"bob\"\n"))
	tok := f.mint(t, nil)
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok)); r.allowed || r.body.Error != deny.PolicyDenied && r.body.Error != deny.PolicyError {
		t.Fatalf("Check(policy wants bob) = %v %s, want a policy deny", r.allowed, r.raw)
	}
	f.SetPolicy(defaultEngine(t))
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok)); !r.allowed {
		t.Fatalf("Check(after policy deny) = deny %s, want allow: a policy deny must not consume the approval", r.raw)
	}
}

func TestConcurrentPresentationsAllowOnce(t *testing.T) {
	f := newTokenFixture(t)
	tok := f.mint(t, nil)
	var allows atomic.Int32
	var wg sync.WaitGroup
	for range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := f.Check(context.Background(), checkReq(withToken(writeReq(`{"path":"/tmp/x"}`), tok)))
			if resp.GetStatus().GetCode() == 0 {
				allows.Add(1)
			}
		}()
	}
	wg.Wait()
	if allows.Load() != 1 {
		t.Fatalf("24 concurrent presentations of one approval: %d allowed, want exactly 1", allows.Load())
	}
}

func TestGrantUseLimit(t *testing.T) {
	f := newTokenFixture(t)
	tok := f.mint(t, func(c *approval.Claims) {
		c.Kind, c.Tool, c.ArgsSHA256, c.Tools, c.MaxUses = approval.KindGrant, "", "", []string{"write_*"}, 2
	})
	for i, args := range []string{`{"path":"/a"}`, `{"path":"/b"}`} {
		if r := check(t, f.Service, withToken(writeReq(args), tok)); !r.allowed {
			t.Fatalf("Check(grant use %d) = deny %s, want allow", i+1, r.raw)
		}
	}
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/c"}`), tok)); r.allowed || r.body.Error != deny.GrantExhausted {
		t.Fatalf("Check(grant use 3 of 2) = %v %s, want deny grant_exhausted", r.allowed, r.raw)
	}
}

func TestRevocation(t *testing.T) {
	f := newTokenFixture(t)
	ctx := context.Background()
	tok := f.mint(t, nil)
	claims, err := f.opts.Tokens.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.state.Revoke(ctx, state.Revocation{JTI: claims.ID}); err != nil {
		t.Fatal(err)
	}
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok)); r.allowed || r.status != 403 || r.body.Error != deny.TokenRevoked {
		t.Fatalf("Check(revoked jti) = %v %s, want deny 403 token_revoked", r.allowed, r.raw)
	}
	if err := f.state.Revoke(ctx, state.Revocation{Sub: "agent-42"}); err != nil {
		t.Fatal(err)
	}
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, nil))); r.allowed || r.body.Error != deny.TokenRevoked {
		t.Fatalf("Check(revoked sub) = %v %s, want deny token_revoked", r.allowed, r.raw)
	}
}

func TestTokenOnNonToolCallIsVerifiedNotConsumed(t *testing.T) {
	f := newTokenFixture(t)
	tok := f.mint(t, nil)
	ping := func() *authv3.AttributeContext_HttpRequest {
		return httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	}
	for i := range 2 {
		if r := check(t, f.Service, withToken(ping(), tok)); !r.allowed {
			t.Fatalf("Check(ping with approval #%d) = deny %s, want allow", i+1, r.raw)
		}
	}
	if r := check(t, f.Service, withToken(ping(), "garbage")); r.allowed || r.body.Error != deny.TokenInvalid {
		t.Fatalf("Check(ping with a bad token) = %v %s, want deny token_invalid", r.allowed, r.raw)
	}
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok)); !r.allowed {
		t.Fatalf("Check(tool call after pings) = deny %s, want allow (pings must not consume)", r.raw)
	}
}

type fixedEpoch time.Time

func (e fixedEpoch) Epoch() time.Time { return time.Time(e) }

func TestStateResetFencesOldTokens(t *testing.T) {
	f := newTokenFixture(t)
	old := f.mint(t, func(c *approval.Claims) {
		c.IssuedAt, c.NotBefore = time.Now().Add(-time.Minute), time.Now().Add(-time.Minute)
	})
	f.opts.Epoch = fixedEpoch(time.Now().Add(-time.Second))
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), old)); r.allowed || r.body.Error != deny.StateReset {
		t.Fatalf("Check(token from before the epoch) = %v %s, want deny state_reset", r.allowed, r.raw)
	} else if got := deniedHeader(r, "retry-after"); got != "1" {
		t.Errorf("state_reset retry-after = %q, want 1 (the epoch has passed: a new approval is accepted now)", got)
	}
	// A new epoch lies ahead by the clock skew: an approval is accepted
	// only once it has passed, and retry-after says when.
	f.opts.Epoch = fixedEpoch(time.Now().Add(20 * time.Second))
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, nil))); r.body.Error != deny.StateReset {
		t.Fatalf("Check(token before an epoch ahead) = %s, want deny state_reset", r.raw)
	} else if got := deniedHeader(r, "retry-after"); got != "20" && got != "19" {
		t.Errorf("state_reset retry-after = %q, want 20 (seconds until the epoch)", got)
	}
	f.opts.Epoch = fixedEpoch(time.Now().Add(-time.Second))
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, nil))); !r.allowed {
		t.Fatalf("Check(token after the epoch) = deny %s, want allow", r.raw)
	}
}

// fencedUses is a use store whose backend can lose data: it refuses a token
// issued before its epoch, as redisstate and storestate do.
type fencedUses struct {
	epoch time.Time
	mem   *state.Memory
}

func (f fencedUses) Use(ctx context.Context, u state.Use) (bool, error) {
	if u.IssuedAt.Before(f.epoch) {
		return false, state.ErrStateReset
	}
	return f.mem.Use(ctx, u)
}

// decorated wraps a use store, as a metrics or tracing decorator would,
// exposing only the decision path's interface.
type decorated struct {
	inner UseStore
	seen  []state.Use
	mu    sync.Mutex
}

func (d *decorated) Use(ctx context.Context, u state.Use) (bool, error) {
	d.mu.Lock()
	d.seen = append(d.seen, u)
	d.mu.Unlock()
	return d.inner.Use(ctx, u)
}

// The use store fences data loss itself, whatever wraps it: a decorator
// around a fenced store, and no Options.Epoch pre-check, still refuse a
// token issued before the epoch (state_reset), and every use carries the
// token's iat, exp + skew and limit. (With the optional IssuedUseStore
// interface of before, a decorator silently turned the fence off.)
func TestUseStoreFencesThroughDecorators(t *testing.T) {
	f := newTokenFixture(t)
	epoch := time.Now().Add(-10 * time.Second).Truncate(time.Second)
	d := &decorated{inner: fencedUses{epoch: epoch, mem: state.NewMemory(state.MemoryOptions{})}}
	f.opts.Uses, f.opts.Epoch = d, nil
	old := f.mint(t, func(c *approval.Claims) {
		c.IssuedAt, c.NotBefore = epoch.Add(-time.Minute), epoch.Add(-time.Minute)
	})
	grantTok := f.mint(t, func(c *approval.Claims) {
		c.Kind, c.Tool, c.ArgsSHA256, c.Tools, c.MaxUses = approval.KindGrant, "", "", []string{"write_*"}, 2
	})
	for _, tc := range []struct {
		name, tok string
		want      string // deny code, "" for allow
	}{
		{"approval issued before the epoch", old, deny.StateReset},
		{"fresh approval", f.mint(t, nil), ""},
		{"grant, first use", grantTok, ""},
		{"grant, second use", grantTok, ""},
		{"grant, third use", grantTok, deny.GrantExhausted},
	} {
		r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tc.tok))
		if got := map[bool]string{true: ""}[r.allowed] + r.body.Error; got != tc.want {
			t.Fatalf("Check(%s) = allowed %v %s, want %q", tc.name, r.allowed, r.raw, tc.want)
		}
	}
	if len(d.seen) != 5 {
		t.Fatalf("the decorator saw %d uses, want 5", len(d.seen))
	}
	first, grantUse := d.seen[0], d.seen[2]
	if !first.IssuedAt.Equal(epoch.Add(-time.Minute)) || first.MaxUses != 1 {
		t.Errorf("use of the old approval = %+v, want its iat %v and MaxUses 1", first, epoch.Add(-time.Minute))
	}
	if grantUse.MaxUses != 2 || grantUse.Exp.Sub(time.Now()) < 2*time.Minute {
		t.Errorf("use of the grant = %+v, want MaxUses 2 and exp + 30s skew", grantUse)
	}
}

// BenchmarkCheckFreshApproval measures Check with a new EdDSA approval each
// time (the uncached verification path) against bare Ed25519 verification
// (approval.BenchmarkEd25519Verify); the target is ≥ 70% of that rate.
func BenchmarkCheckFreshApproval(b *testing.B) {
	f := newTokenFixture(b)
	toks := make([]string, 4096)
	for i := range toks {
		toks[i] = f.mint(b, nil)
	}
	// Every presentation must take the full path: no verified-token cache,
	// and a use store that never reports a replay.
	ks, err := approval.ParseJWKS(must(f.key.PublicJWKS()))
	if err != nil {
		b.Fatal(err)
	}
	v, err := approval.NewVerifier(approval.VerifierOptions{Keys: ks, Audience: "tools.local", CacheSize: -1, Now: time.Now})
	if err != nil {
		b.Fatal(err)
	}
	f.opts.Tokens, f.opts.Uses = v, alwaysFirst{}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		f.Check(ctx, checkReq(withToken(writeReq(`{"path":"/tmp/x"}`), toks[i%len(toks)])))
		i++
	}
}

type alwaysFirst struct{}

func (alwaysFirst) Use(context.Context, state.Use) (bool, error) { return true, nil }

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestCacheKeyFollowsTheClaimsThePolicyReads(t *testing.T) {
	f := newTokenFixture(t)
	// Default policy: reads input.m1.token.m1.kind only, so fresh approvals
	// of one call share a cache entry.
	for i := range 3 {
		if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, nil))); !r.allowed {
			t.Fatalf("Check(fresh approval %d) = deny %s", i, r.raw)
		}
	}
	if hits := testutil.ToFloat64(f.m.CacheHits.WithLabelValues("l1")); hits != 2 {
		t.Errorf("l1 hits after 3 fresh approvals of one call = %v, want 2", hits)
	}
	// A policy reading a claim outside the common set keys by the whole
	// payload: two tokens differing only in act.sub must not share a decision.
	f.SetPolicy(regoEngine(t, "package m1.authz\nimport rego.v1\ndecision if input.m1.token.act.sub == \"alice\"\n"))
	for _, tt := range []struct {
		actor string
		allow bool
	}{{"alice", true}, {"bob", false}, {"alice", true}, {"bob", false}} {
		tok := f.mint(t, func(c *approval.Claims) { c.Actor = tt.actor })
		if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok)); r.allowed != tt.allow {
			t.Fatalf("Check(approval by %s) allowed = %v, want %v", tt.actor, r.allowed, tt.allow)
		}
	}
}

// RATE_LIMIT_REQUESTS_PER_MINUTE: tool calls past a principal's limit are
// denied 429 rate_limited with retry-after; other principals and calls that
// are not tool calls are not counted; a refused call consumes no approval.
func TestRateLimit(t *testing.T) {
	f := newTokenFixture(t)
	now := time.Now()
	lim, err := ratelimit.NewLocal(ratelimit.Limits{PerMinute: 2}, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	f.opts.RateLimit = lim
	read := func() *authv3.AttributeContext_HttpRequest {
		return httpReq("POST", "/mcp", mcpCall("read_file", `{"path":"/etc/hosts"}`))
	}
	for i, want := range []bool{true, true, false} {
		r := check(t, f.Service, read())
		if r.allowed != want {
			t.Fatalf("Check(read #%d) allowed = %v %s, want %v", i+1, r.allowed, r.raw, want)
		}
		if !want {
			if r.status != 429 || r.body.Error != deny.RateLimited || !hasHeader(r.resp.GetDeniedResponse().GetHeaders(), "retry-after", "30") {
				t.Fatalf("Check(read past the limit) = %d %s %v, want 429 rate_limited, retry-after 30", r.status, r.raw, r.resp.GetDeniedResponse().GetHeaders())
			}
		}
	}
	if r := check(t, f.Service, httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`)); !r.allowed {
		t.Fatalf("Check(tools/list past the limit) = %s, want allow: only tool calls count", r.raw)
	}
	// agent-42 (the tokens' sub) has a count of its own.
	for i := range 2 {
		if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, nil))); !r.allowed {
			t.Fatalf("Check(agent-42 approval #%d) = %s, want allow", i+1, r.raw)
		}
	}
	tok := f.mint(t, nil)
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok)); r.allowed || r.body.Error != deny.RateLimited {
		t.Fatalf("Check(agent-42 third approval) = %s, want rate_limited", r.raw)
	}
	now = now.Add(30 * time.Second)
	if r := check(t, f.Service, withToken(writeReq(`{"path":"/tmp/x"}`), tok)); !r.allowed {
		t.Fatalf("Check(the refused approval, 30s later) = %s, want allow: a rate-limited call must not consume it", r.raw)
	}
}

// deniedHeader returns the value of header k of a deny response.
func deniedHeader(r result, k string) string {
	for _, h := range r.resp.GetDeniedResponse().GetHeaders() {
		if h.GetHeader().GetKey() == k {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

// The principal, narrowest first: the token's sub, the configured
// principal header (set by Envoy), the CheckRequest's source principal (the
// downstream peer Envoy verified), the gRPC peer's SPIFFE ID
// (PeerPrincipal).
func TestPrincipalPrecedence(t *testing.T) {
	const (
		source = "spiffe://cluster.local/ns/agents/sa/agent-42"
		peer   = "spiffe://cluster.local/ns/tools/sa/envoy"
	)
	f := newTokenFixture(t)
	f.opts.PeerPrincipal = func(context.Context) string { return peer }
	f.opts.PrincipalHeader = "x-agent-id"
	tests := []struct {
		name   string
		token  bool
		header string
		source string
		want   string
	}{
		{"token, header, source and peer", true, "agent-7", source, "agent-42"},
		{"header, source and peer", false, "agent-7", source, "agent-7"},
		{"source and peer", false, "", source, source},
		{"peer alone", false, "", "", peer},
	}
	for _, tt := range tests {
		req := httpReq("POST", "/mcp", mcpCall("read_file", readArgs))
		if tt.token {
			req = withToken(writeReq(`{"path":"/tmp/x"}`), f.mint(t, nil))
		}
		if tt.header != "" {
			req.Headers["x-agent-id"] = tt.header
		}
		cr := checkReq(req)
		cr.Attributes.Source.Principal = tt.source
		resp, err := f.Check(context.Background(), cr)
		if err != nil {
			t.Fatal(err)
		}
		if ok := resp.GetOkResponse(); ok == nil || !hasHeader(ok.GetHeaders(), HeaderPrincipal, tt.want) {
			t.Errorf("Check(%s): %v, want an allow naming principal %s", tt.name, resp, tt.want)
		}
	}
}
