package sidecar

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/store/postgres"
	"github.com/m1-agent/m1/internal/testenv"
)

// Tests of DESIGN §7's promises with real stores and servers: the state
// survives a restart (New, Start, Stop on one data directory), a new data
// directory fences old tokens, revocations survive a restart and a Redis
// that lost its data, and sidecars sharing PostgreSQL share them.

// keyed is a signing key and its JWKS file, shared by the sidecars of a
// test.
type keyed struct {
	key  *approval.SigningKey
	jwks string
}

func newKeyed(t *testing.T) keyed {
	t.Helper()
	key, err := approval.GenerateKey("EdDSA", "k1")
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := key.PublicJWKS()
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := writeFile(path, jwks); err != nil {
		t.Fatal(err)
	}
	return keyed{key, path}
}

// options are testOptions with k's keys on dataDir.
func (k keyed) options(t *testing.T, dataDir string) Options {
	t.Helper()
	o := testOptions(t)
	o.JWKSFile, o.Audience, o.DataDir = k.jwks, "tools.local", dataDir
	o.AdminToken = "state-test-admin-token"
	return o
}

// mint signs an approval of writeCall's arguments for sub, issued now;
// mod changes it (into a grant, say).
func (k keyed) mint(t *testing.T, sub string, mod func(*approval.Claims)) string {
	t.Helper()
	now := time.Now()
	c := approval.Claims{
		Issuer: "m1-cli", Subject: sub, Audience: []string{"tools.local"},
		IssuedAt: now, NotBefore: now, Expiry: now.Add(2 * time.Minute),
		Kind: approval.KindApproval, Tool: "write_file", ArgsSHA256: argsHash(t, `{"path":"/tmp/shared"}`),
	}
	if mod != nil {
		mod(&c)
	}
	tok, err := approval.Mint(k.key, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func asGrant(max int) func(*approval.Claims) {
	return func(c *approval.Claims) {
		c.Kind, c.Tool, c.ArgsSHA256, c.Tools, c.MaxUses = approval.KindGrant, "", "", []string{"write_*"}, max
	}
}

// checkOutcome is a check's deny code and HTTP status, "" and 200 on allow.
type checkOutcome struct {
	code   string
	status int
}

var allowed = checkOutcome{"", 200}

func decide(t *testing.T, s *Server, tok string) checkOutcome {
	t.Helper()
	resp, err := s.Authz().Check(context.Background(), writeCall(tok))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus().GetCode() == 0 {
		return allowed
	}
	return checkOutcome{resp.GetStatus().GetMessage(), int(resp.GetDeniedResponse().GetStatus().GetCode())}
}

func expectCheck(t *testing.T, s *Server, what, tok string, want checkOutcome) {
	t.Helper()
	if got := decide(t, s, tok); got != want {
		t.Fatalf("Check(%s) = %+v, want %+v", what, got, want)
	}
}

// adminCall sends an admin API request with s's token.
func adminCall(t *testing.T, s *Server, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.AdminAddr().String()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitPastEpoch waits until tokens issued now are at or after s's epoch.
func waitPastEpoch(t *testing.T, s *Server) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, "the state epoch is known", func() bool { return !s.epoch.Epoch().IsZero() })
	for time.Now().Before(s.epoch.Epoch()) {
		time.Sleep(20 * time.Millisecond) // tokens must be issued at or after the epoch
	}
}

// Without Redis, a restarted sidecar refuses a replayed approval and goes
// on counting a grant's uses (DESIGN §7). It allowed the replay before.
func TestRestartRefusesReplay(t *testing.T) {
	k := newKeyed(t)
	dir := testenv.DataDir(t)
	a := startServer(t, k.options(t, dir))
	approvalTok, grantTok := k.mint(t, "agent-42", nil), k.mint(t, "agent-42", asGrant(2))
	expectCheck(t, a, "approval", approvalTok, allowed)
	expectCheck(t, a, "approval again", approvalTok, checkOutcome{"token_replayed", 403})
	expectCheck(t, a, "grant, use 1 of 2", grantTok, allowed)
	stop(t, a)

	b := startServer(t, k.options(t, dir))
	expectCheck(t, b, "approval after the restart", approvalTok, checkOutcome{"token_replayed", 403})
	expectCheck(t, b, "grant, use 2 of 2 after the restart", grantTok, allowed)
	expectCheck(t, b, "grant, use 3 of 2", grantTok, checkOutcome{"grant_exhausted", 403})
	expectCheck(t, b, "a new approval", k.mint(t, "agent-42", nil), allowed)
}

// With its own SQLite store, a sidecar counts a grant in quick use in
// blocks: far fewer commits than uses; a restart forfeits at most one and
// a half blocks (a block is at most a tenth of max_uses here) and max_uses
// is never exceeded.
func TestGrantBlocksAcrossRestart(t *testing.T) {
	k := newKeyed(t)
	dir := testenv.DataDir(t)
	a := startServer(t, k.options(t, dir))
	const maxUses = 400
	tok := k.mint(t, "agent-42", asGrant(maxUses))
	count := func(s *Server, n int) (allowedN int) {
		t.Helper()
		for range n {
			switch got := decide(t, s, tok); got {
			case allowed:
				allowedN++
			case checkOutcome{"grant_exhausted", 403}:
			default:
				t.Fatalf("Check(grant) = %+v", got)
			}
		}
		return allowedN
	}
	if got := count(a, 150); got != 150 {
		t.Fatalf("%d of 150 uses allowed", got)
	}
	if c := a.durable.Stats().Commits; c >= 50 {
		t.Fatalf("%d commits for 150 uses of one grant: not counted in blocks", c)
	}
	stop(t, a)

	b := startServer(t, k.options(t, dir))
	total := 150 + count(b, maxUses)
	if total > maxUses || total < maxUses-60 {
		t.Fatalf("%d uses allowed in all across a restart; want %d..%d", total, maxUses-60, maxUses)
	}
	expectCheck(t, b, "the grant, used up", tok, checkOutcome{"grant_exhausted", 403})
}

// A new data directory (a new pod, or one whose volume was lost) starts a
// new epoch, as an emptied Redis does: tokens issued before its creation
// plus the clock skew are refused.
func TestNewDataDirFencesOlderTokens(t *testing.T) {
	k := newKeyed(t)
	o := k.options(t, t.TempDir()) // no store yet
	o.ClockSkew = 2 * time.Second
	before := k.mint(t, "agent-42", nil)
	s := startServer(t, o)
	if e := s.epoch.Epoch(); e.Before(time.Now().Add(time.Second)) {
		t.Fatalf("epoch of a new store = %v, want after now + the 2s clock skew", e)
	}
	expectCheck(t, s, "token issued before the store existed", before, checkOutcome{"state_reset", 403})
	expectCheck(t, s, "token issued now, within the clock skew", k.mint(t, "agent-42", nil), checkOutcome{"state_reset", 403})
	waitPastEpoch(t, s)
	expectCheck(t, s, "token issued after the epoch", k.mint(t, "agent-42", nil), allowed)
}

// A store that cannot record fails closed: uses are denied
// state_unavailable, and a revocation it cannot store is refused with
// nothing applied. Before, uses were kept in memory and allowed.
func TestStoreDownFailsClosed(t *testing.T) {
	k := newKeyed(t)
	o := k.options(t, testenv.DataDir(t))
	o.DatabaseURL = filepath.Join(o.DataDir, "missing", "m1.db") // its directory does not exist
	s := startServer(t, o)
	expectCheck(t, s, "approval with the store down", k.mint(t, "agent-42", nil), checkOutcome{"state_unavailable", 503})
	if code, body := adminCall(t, s, "POST", "/api/m1/revocations", `{"sub":"agent-7"}`); code != 503 || !strings.Contains(body, "state_unavailable") || !strings.Contains(body, "nothing changed") {
		t.Fatalf("POST revocation with the store down = %d %s, want 503 state_unavailable, nothing changed", code, body)
	}
	if code, body := adminCall(t, s, "GET", "/api/m1/revocations", ""); code != 200 || strings.Contains(body, "agent-7") {
		t.Fatalf("GET revocations = %d %s, want 200 without agent-7", code, body)
	}
	if c := s.healthReport().Checks["database"]; c.Status != "degraded" || c.Info["state"] != "not loaded" {
		t.Fatalf("/health database = %+v, want degraded, state not loaded", c)
	}
}

// storedEvents reads the events of kind from the SQLite store in dataDir.
func storedEvents(t *testing.T, dataDir, kind string) []store.Event {
	t.Helper()
	st, err := backend.Open(context.Background(), "", dataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var out []store.Event
	if err := st.Events(context.Background(), store.Filter{}, func(e store.Event) error {
		if e.Kind == kind {
			out = append(out, e)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// Without Redis, a revocation survives a restart, and so does its lift;
// both are audited (who, what, until).
func TestRevocationSurvivesRestart(t *testing.T) {
	k := newKeyed(t)
	dir := testenv.DataDir(t)
	a := startServer(t, k.options(t, dir))
	if code, body := adminCall(t, a, "POST", "/api/m1/revocations", `{"sub":"agent-7"}`); code != 201 {
		t.Fatalf("POST revocation = %d %s, want 201", code, body)
	}
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	if code, body := adminCall(t, a, "POST", "/api/m1/revocations", `{"jti":"stolen-1","until":"`+until.Format(time.RFC3339)+`"}`); code != 201 {
		t.Fatalf("POST jti revocation = %d %s, want 201", code, body)
	}
	stop(t, a)

	b := startServer(t, k.options(t, dir))
	expectCheck(t, b, "new token of the revoked sub after the restart", k.mint(t, "agent-7", nil), checkOutcome{"token_revoked", 403})
	stolen := k.mint(t, "agent-8", func(c *approval.Claims) { c.ID = "stolen-1" })
	expectCheck(t, b, "the revoked jti after the restart", stolen, checkOutcome{"token_revoked", 403})
	code, body := adminCall(t, b, "GET", "/api/m1/revocations", "")
	var list struct{ Revocations []map[string]any }
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list.Revocations) != 2 {
		t.Fatalf("GET revocations after the restart = %d %s, want both", code, body)
	}
	if code, body := adminCall(t, b, "DELETE", "/api/m1/revocations/sub/agent-7", ""); code != 204 {
		t.Fatalf("DELETE revocation = %d %s, want 204", code, body)
	}
	stop(t, b)

	c := startServer(t, k.options(t, dir))
	expectCheck(t, c, "token of the lifted sub after another restart", k.mint(t, "agent-7", nil), allowed)
	stop(t, c) // flush the audit trail

	sum := sha256.Sum256([]byte("state-test-admin-token"))
	who := "admin:" + hex.EncodeToString(sum[:6])
	events := storedEvents(t, dir, store.KindRevocation)
	want := []struct{ decision, args, detail string }{
		{"revoke", `{"sub":"agent-7"}`, "revoke sub agent-7 until lifted"},
		{"revoke", `{"jti":"stolen-1","until":"` + until.Format(time.RFC3339) + `"}`, "revoke jti stolen-1 until " + until.Format(time.RFC3339)},
		{"lift", `{"sub":"agent-7"}`, "lift sub agent-7"},
	}
	if len(events) != len(want) {
		t.Fatalf("revocation audit events = %+v, want %d", events, len(want))
	}
	for i, w := range want {
		e := events[i]
		if e.Principal != who || e.Decision != w.decision || string(e.Args) != w.args || !strings.HasPrefix(e.Detail, w.detail) || e.Reason != "ok" {
			t.Errorf("audit event %d = principal %q decision %q args %s detail %q reason %q; want %q %q %s %q… ok",
				i, e.Principal, e.Decision, e.Args, e.Detail, e.Reason, who, w.decision, w.args, w.detail)
		}
	}
	if events[0].Status != 201 || events[2].Status != 204 || events[1].TokenJTI != "stolen-1" {
		t.Errorf("audit statuses %d, %d and token_jti %q; want 201, 204 and stolen-1", events[0].Status, events[2].Status, events[1].TokenJTI)
	}
}

// With Redis: a Redis that lost its data, and a sidecar restarted since,
// still refuse a new token of a revoked sub, and a sidecar started after
// learns it (written back to Redis from the store). Before, the restarted
// sidecar had forgotten it.
func TestRevocationSurvivesRedisFlush(t *testing.T) {
	k, r, withRedis, dir, a := revokedWithRedis(t)
	if err := flushAll(r); err != nil {
		t.Fatal(err)
	}
	expectCheck(t, a, "new token of the revoked sub after FLUSHALL", k.mint(t, "agent-7", nil), checkOutcome{"token_revoked", 403})
	stop(t, a)
	if err := flushAll(r); err != nil { // whatever a wrote back meanwhile
		t.Fatal(err)
	}

	a2 := startServer(t, withRedis(dir)) // finds Redis empty: a new epoch, revocations written back
	waitPastEpoch(t, a2)
	expectCheck(t, a2, "new token of the revoked sub at the restarted sidecar", k.mint(t, "agent-7", nil), checkOutcome{"token_revoked", 403})
	b := startServer(t, withRedis(testenv.DataDir(t))) // its own store knows nothing
	waitPastEpoch(t, b)
	expectCheck(t, b, "new token of the revoked sub at a sidecar started later", k.mint(t, "agent-7", nil), checkOutcome{"token_revoked", 403})
	expectCheck(t, b, "another sub", k.mint(t, "agent-8", nil), allowed)
}

// As TestRevocationSurvivesRedisFlush, but a new sidecar reaches the
// emptied Redis first and sets the new epoch: the sidecar whose store
// holds the revocation still stores it again when it restarts, and a lift
// taken at another sidecar afterwards is not undone by its next restart.
func TestRevocationSurvivesRedisFlushAnotherSidecarFirst(t *testing.T) {
	k, r, withRedis, dir, a := revokedWithRedis(t)
	stop(t, a)
	if err := flushAll(r); err != nil {
		t.Fatal(err)
	}
	b := startServer(t, withRedis(testenv.DataDir(t))) // a new pod: sets the new epoch, knows nothing
	waitPastEpoch(t, b)
	a2 := startServer(t, withRedis(dir))
	waitPastEpoch(t, a2)
	expectCheck(t, a2, "new token of the revoked sub at the restarted sidecar", k.mint(t, "agent-7", nil), checkOutcome{"token_revoked", 403})
	testenv.Eventually(t, 5*time.Second, "the sidecar started first learns the revocation", func() bool {
		return decide(t, b, k.mint(t, "agent-7", nil)) == checkOutcome{"token_revoked", 403}
	})

	if code, body := adminCall(t, b, "DELETE", "/api/m1/revocations/sub/agent-7", ""); code != 200 && code != 204 {
		t.Fatalf("DELETE revocation at b = %d %s", code, body)
	}
	stop(t, a2)
	a3 := startServer(t, withRedis(dir)) // its store still holds the revocation
	waitPastEpoch(t, a3)
	expectCheck(t, a3, "the sub lifted at another sidecar, after a restart", k.mint(t, "agent-7", nil), allowed)
	expectCheck(t, b, "the sub lifted, at the sidecar that lifted it", k.mint(t, "agent-7", nil), allowed)
}

// revokedWithRedis starts Redis and a sidecar on it with a data directory
// of its own (dir; withRedis gives the options of a sidecar on Redis and a
// directory), which revokes sub agent-7, stored everywhere (201).
func revokedWithRedis(t *testing.T) (k keyed, r *testenv.Redis, withRedis func(dir string) Options, dir string, a *Server) {
	t.Helper()
	k = newKeyed(t)
	r = testenv.StartRedis(t, testenv.RedisOptions{})
	withRedis = func(dir string) Options {
		o := k.options(t, dir)
		o.Redis.URL, o.Redis.CommandTimeout, o.ClockSkew = r.URL(), 300*time.Millisecond, time.Second
		return o
	}
	dir = testenv.DataDir(t)
	a = startServer(t, withRedis(dir))
	waitPastEpoch(t, a)
	if code, body := adminCall(t, a, "POST", "/api/m1/revocations", `{"sub":"agent-7"}`); code != 201 {
		t.Fatalf("POST revocation = %d %s, want 201 (stored everywhere)", code, body)
	}
	return k, r, withRedis, dir, a
}

// The PostgreSQL role docs/AUDIT.md grants m1-authz (the SQL of its
// "psql \"$OWNER_URL\"" block, run as is) is enough for m1-authz without
// Redis: it loads its state, counts a single use, stores and lifts a
// revocation and appends the audit trail, and it cannot change the trail.
func TestDocumentedPostgresRole(t *testing.T) {
	ctx := context.Background()
	k := newKeyed(t)
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	owner, err := postgres.Open(ctx, dsn, postgres.DefaultOptions()) // the owner runs the migrations
	if err != nil {
		t.Fatal(err)
	}
	if _, err := owner.StateEpoch(ctx, time.Now().Add(-time.Hour)); err != nil { // a store that has been running
		t.Fatal(err)
	}
	owner.Close()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "AUDIT.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, grants, ok := strings.Cut(string(doc), "psql \"$OWNER_URL\" <<'EOF'\n")
	grants, _, ok2 := strings.Cut(grants, "\nEOF\n")
	if !ok || !ok2 || !strings.Contains(grants, "GRANT") {
		t.Fatal("docs/AUDIT.md: no psql \"$OWNER_URL\" <<'EOF' block of grants")
	}
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE ROLE m1_authz LOGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, grants); err != nil {
		t.Fatalf("the documented grants: %v", err)
	}
	roleDSN := strings.Replace(dsn, "postgres://postgres@", "postgres://m1_authz@", 1)

	o := k.options(t, t.TempDir())
	o.DatabaseURL = roleDSN
	a := startServer(t, o)
	if !a.stateLoaded() {
		t.Fatal("the security state is not loaded as the documented role")
	}
	tok := k.mint(t, "agent-42", nil)
	expectCheck(t, a, "an approval", tok, allowed)
	expectCheck(t, a, "the approval again", tok, checkOutcome{"token_replayed", 403})
	if code, body := adminCall(t, a, "POST", "/api/m1/revocations", `{"sub":"agent-7"}`); code != 201 {
		t.Fatalf("POST revocation as the documented role = %d %s, want 201", code, body)
	}
	if code, body := adminCall(t, a, "DELETE", "/api/m1/revocations/sub/agent-7", ""); code != 200 && code != 204 {
		t.Fatalf("DELETE revocation as the documented role = %d %s", code, body)
	}
	stop(t, a) // flushes the audit trail
	var events int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM audit_events").Scan(&events); err != nil || events < 4 {
		t.Fatalf("audit events stored as the documented role: %d (%v), want at least 4", events, err)
	}
	role, err := pgx.Connect(ctx, roleDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer role.Close(ctx)
	for _, q := range []string{"UPDATE audit_events SET reason = 'x'", "DELETE FROM audit_events", "DROP TABLE audit_events"} {
		if _, err := role.Exec(ctx, q); err == nil {
			t.Errorf("%s as the documented role succeeded, want it refused", q)
		}
	}
}

// flushAll empties r, as a Redis restarted without persistence.
func flushAll(r *testenv.Redis) error {
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	return c.FlushAll(context.Background()).Err()
}

// Sidecars sharing one PostgreSQL (no Redis) share the revocations: one
// started later knows those taken before; and they count uses together.
func TestTwoSidecarsOnePostgres(t *testing.T) {
	k := newKeyed(t)
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	seed, err := postgres.Open(context.Background(), dsn, postgres.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seed.StateEpoch(context.Background(), time.Now().Add(-time.Hour)); err != nil { // a store that has been running
		t.Fatal(err)
	}
	seed.Close()
	withPG := func() Options {
		o := k.options(t, t.TempDir())
		o.DatabaseURL = dsn
		return o
	}
	a := startServer(t, withPG())
	if code, body := adminCall(t, a, "POST", "/api/m1/revocations", `{"sub":"agent-7"}`); code != 201 {
		t.Fatalf("POST revocation = %d %s, want 201", code, body)
	}
	tok := k.mint(t, "agent-42", nil)
	expectCheck(t, a, "approval at the first sidecar", tok, allowed)

	b := startServer(t, withPG())
	expectCheck(t, b, "new token of the sub revoked at the first sidecar", k.mint(t, "agent-7", nil), checkOutcome{"token_revoked", 403})
	expectCheck(t, b, "the approval used at the first sidecar", tok, checkOutcome{"token_replayed", 403})
	expectCheck(t, b, "a new approval", k.mint(t, "agent-42", nil), allowed)
}
