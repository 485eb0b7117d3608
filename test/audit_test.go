package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/testenv"
)

// Bounds of the audit tests' waits.
const (
	auditSettle  = 30 * time.Second // queue drained, spool replayed (the replay runs every second)
	storeTimeout = 30 * time.Second // opening and reading the store after the sidecar exited
	spoolFile    = "audit-spool.jsonl"
	readCanon    = `{"path":"/etc/hosts"}` // the arguments of the mcp read_file fixture
	fixturePrinc = "spiffe://cluster.local/ns/agents/sa/agent-42"
)

// seen is one decision as the client saw it.
type seen struct {
	id      string
	allowed bool
	status  int    // HTTP status (200 for an allow)
	code    string // "ok" for an allow, else the deny body's error
	detail  string // the deny body's reason
	sent    time.Time
	took    time.Duration
}

// decisionOf reads the decision id and outcome of a CheckResponse: the
// x-m1-decision-id header of an allow, the decision_id of a deny body (and
// its header, which must agree).
func decisionOf(resp *authv3.CheckResponse) (seen, error) {
	w, doc, err := outcome(resp, true)
	if err != nil {
		return seen{}, err
	}
	if w.allow {
		id := headerValue(resp.GetOkResponse().GetHeaders(), "x-m1-decision-id")
		if id == "" {
			return seen{}, errors.New("allow without an x-m1-decision-id header")
		}
		return seen{id: id, allowed: true, status: 200, code: "ok"}, nil
	}
	if h := headerValue(resp.GetDeniedResponse().GetHeaders(), "x-m1-decision-id"); h != doc.DecisionID {
		return seen{}, fmt.Errorf("deny: x-m1-decision-id header %q, body decision_id %q", h, doc.DecisionID)
	}
	return seen{id: doc.DecisionID, status: w.status, code: w.code, detail: doc.Reason}, nil
}

// checkSeen sends one Check and returns the decision the client saw.
func checkSeen(ctx context.Context, conn *grpc.ClientConn, req *authv3.CheckRequest) (seen, error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	start := time.Now()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, req)
	took := time.Since(start)
	if err != nil {
		return seen{}, fmt.Errorf("Check: gRPC error %v, want a CheckResponse", err)
	}
	d, err := decisionOf(resp)
	d.sent, d.took = start, took
	return d, err
}

// see is checkSeen for the test goroutine.
func (s *sidecar) see(t *testing.T, req *authv3.CheckRequest) seen {
	t.Helper()
	d, err := checkSeen(context.Background(), s.conn, req)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// dbState is the database check of /health.
type dbState struct {
	status, detail, backend           string
	queue, spool, spoolBytes, written int64
}

func (d dbState) String() string {
	return fmt.Sprintf("%s (%s) backend=%s queue_depth=%d spool_events=%d spool_bytes=%d written=%d",
		d.status, d.detail, d.backend, d.queue, d.spool, d.spoolBytes, d.written)
}

func (s *sidecar) database(t *testing.T) dbState {
	t.Helper()
	_, doc := s.health(t)
	c, ok := doc.Checks["database"]
	if !ok {
		t.Fatalf("/health has no database check: %+v", doc)
	}
	num := func(k string) int64 {
		f, _ := c.Info[k].(float64)
		return int64(f)
	}
	b, _ := c.Info["backend"].(string)
	return dbState{status: c.Status, detail: c.Detail, backend: b,
		queue: num("queue_depth"), spool: num("spool_events"), spoolBytes: num("spool_bytes"), written: num("written")}
}

// waitDB polls the database check until cond holds, or fails t after d.
func (s *sidecar) waitDB(t *testing.T, what string, d time.Duration, cond func(dbState) bool) dbState {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := s.database(t)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; /health database: %v", what, d, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// settled: everything recorded is in the store.
func settled(st dbState) bool { return st.status == "ok" && st.queue == 0 && st.spool == 0 }

// stopClean sends SIGTERM and requires a clean exit (the audit queue drained).
func (s *sidecar) stopClean(t *testing.T) {
	t.Helper()
	s.terminate(t)
	code, ok := s.waitExit(stopTimeout)
	if !ok {
		t.Fatalf("m1-authz did not exit within %v of SIGTERM", stopTimeout)
	}
	if code != 0 {
		t.Fatalf("m1-authz exit status %d after SIGTERM, want 0; stderr:\n%s", code, s.log)
	}
}

// startKillable starts m1-authz like startSidecar, but for a test that
// kills it with SIGKILL: its cleanup only makes sure the process is gone.
func startKillable(t *testing.T, args []string, env ...string) *sidecar {
	t.Helper()
	s := launch(t, args, env)
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		if strings.Contains(s.log.String(), "WARNING: DATA RACE") {
			t.Errorf("m1-authz reported a data race")
		}
		if t.Failed() {
			t.Logf("killed m1-authz stderr:\n%s", s.log)
		}
	})
	select {
	case <-s.log.started:
	case <-s.exited:
		t.Fatalf("m1-authz exited before it started (%v); stderr:\n%s", s.err, s.log)
	case <-time.After(startTimeout):
		t.Fatalf("m1-authz did not start within %v; stderr:\n%s", startTimeout, s.log)
	}
	s.GRPCAddr, s.AdminAddr, s.Revision = s.log.grpcAddr, s.log.adminAddr, s.log.revision
	conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s.conn = conn
	return s
}

// openStore opens the store the sidecar wrote (after it exited).
func openStore(t *testing.T, dsn, dataDir string) store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	st, err := backend.Open(ctx, dsn, dataDir)
	if err != nil {
		t.Fatalf("open the audit store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// storedDecisions reads every event, by decision id.
func storedDecisions(t *testing.T, st store.Store) (map[string][]store.Event, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	byID := map[string][]store.Event{}
	n := 0
	err := st.Events(ctx, store.Filter{}, func(e store.Event) error {
		n++
		byID[e.DecisionID] = append(byID[e.DecisionID], e)
		return nil
	})
	if err != nil {
		t.Fatalf("Store.Events: %v", err)
	}
	return byID, n
}

// verifyChains verifies every chain with store.Verifier and returns, per
// writer, how many events verified. A chain must start at seq 1 (nothing
// is pruned here) and hold no gap: its last seq equals its length.
func verifyChains(t *testing.T, st store.Store) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	var writers []string
	if err := st.Chains(ctx, func(w string) error { writers = append(writers, w); return nil }); err != nil {
		t.Fatalf("Store.Chains: %v", err)
	}
	out := map[string]int64{}
	for _, w := range writers {
		var v store.Verifier
		var lastID int64
		err := st.Chain(ctx, w, func(e store.Event) error {
			// Stored in order: ids (assigned at insert) grow with seq.
			if e.ID <= lastID {
				t.Errorf("chain %q: seq %d has id %d after id %d: not stored in order", w, e.Seq, e.ID, lastID)
			}
			lastID = e.ID
			return v.Add(e)
		})
		if err == nil {
			err = v.Close()
		}
		if err != nil {
			t.Errorf("chain %q does not verify: %v", w, err)
			continue
		}
		if last, _ := v.Last(); last != v.Verified() {
			t.Errorf("chain %q: %d events verified, last seq %d", w, v.Verified(), last)
		}
		out[w] = v.Verified()
	}
	return out
}

// assertStoredOnce checks that every decision the client saw is stored
// exactly once with the decision, reason code and status it saw, and that
// the store holds nothing else.
func assertStoredOnce(t *testing.T, st store.Store, saw []seen) map[string]store.Event {
	t.Helper()
	byID, n := storedDecisions(t, st)
	got := map[string]store.Event{}
	missing, dup := 0, 0
	for _, d := range saw {
		es := byID[d.id]
		switch {
		case len(es) == 0:
			if missing++; missing <= 5 {
				t.Errorf("decision %s (seen by the client, %s %d) is not in the store", d.id, d.code, d.status)
			}
			continue
		case len(es) > 1:
			if dup++; dup <= 5 {
				t.Errorf("decision %s is stored %d times", d.id, len(es))
			}
		}
		e := es[0]
		got[d.id] = e
		decision := "deny"
		if d.allowed {
			decision = "allow"
		}
		if e.Kind != store.KindDecision || e.Decision != decision || e.Reason != d.code || e.Status != d.status {
			t.Errorf("decision %s stored as kind %s %s %s %d, client saw %s %s %d",
				d.id, e.Kind, e.Decision, e.Reason, e.Status, decision, d.code, d.status)
		}
	}
	if missing > 0 || dup > 0 {
		t.Errorf("%d of %d decisions the client saw are missing from the store, %d stored more than once", missing, len(saw), dup)
	}
	if n != len(saw) {
		t.Errorf("the store holds %d events, want exactly the %d decisions the client saw", n, len(saw))
	}
	return got
}

// TestAuditSQLite runs decisions through a sidecar with the default audit
// store (SQLite m1.db under --data-dir), stops it with SIGTERM, and reads
// the file: every decision the client saw is there once, with the fields
// the client can check, arguments only for allowed calls of non-sensitive
// tools, and an intact chain.
func TestAuditSQLite(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	k := genKey(t, "EdDSA", "kid-audit")
	s, _ := startWithKeys(t, []*approval.SigningKey{k}, "--data-dir", dataDir)
	if st := s.database(t); st.status != "ok" || st.backend != "sqlite" {
		t.Errorf("/health database = %v, want ok, backend sqlite", st)
	}

	runArgs := `{"cmd":"ls -l /"}`
	tok := mint(t, k, withJTI("jti-audit-1"))
	type exp struct {
		name      string
		req       *authv3.CheckRequest
		want      want
		tool      string
		args      string // the stored Args; "" for none
		argsSHA   string
		principal string
		tier      string
		jti, run  string
		proposal  string
		noTool    bool // a request M1 could not parse: tool and hash are not checked
	}
	cases := []exp{
		{name: "read_file", req: request(t, mcpRead), want: allow, tool: "read_file",
			args: readCanon, argsSHA: argsSHA256(readCanon), principal: fixturePrinc},
		// The same call again: answered by the decision cache.
		{name: "read_file again", req: request(t, mcpRead), want: allow, tool: "read_file",
			args: readCanon, argsSHA: argsSHA256(readCanon), principal: fixturePrinc, tier: "l1"},
		// Denied: its args_sha256 alone, though write_file is non-sensitive.
		{name: "write_file without token", req: request(t, writeFixture, call("write_file", writeArgs)),
			want: denyReason(401, "policy_denied", "token_missing"), tool: "write_file",
			argsSHA: argsSHA256(writeCanon), principal: fixturePrinc},
		{name: "run_command without token (sensitive)", req: request(t, mcpRead, call("run_command", runArgs)),
			want: denyReason(401, "policy_denied", "token_missing"), tool: "run_command",
			argsSHA: argsSHA256(runArgs), principal: fixturePrinc},
		{name: "bad path", req: request(t, restList, withPath("/tools//list_dir")), want: deny(400, "bad_path"), noTool: true},
		{name: "write_file with an approval", req: request(t, writeFixture, call("write_file", writeArgs), withToken(tok)),
			want: allow, tool: "write_file", args: writeArgs, argsSHA: argsSHA256(writeCanon),
			principal: "agent-42", jti: "jti-audit-1", run: "run-7", proposal: "prop-1"},
	}
	saw := make([]seen, len(cases))
	for i, c := range cases {
		sent := time.Now()
		resp := s.check(t, c.req)
		took := time.Since(sent)
		expect(t, c.name, resp, c.want)
		d, err := decisionOf(resp)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		d.sent, d.took = sent, took
		saw[i] = d
	}
	recvd := time.Now()
	m := s.metrics(t)
	if got := m["m1_audit_events_total"]; got != float64(len(cases)) {
		t.Errorf("m1_audit_events_total = %v, want %d", got, len(cases))
	}
	for _, name := range []string{"m1_audit_queue_depth", "m1_audit_spooled_events_total"} {
		if _, ok := m[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
	s.stopClean(t)

	st := openStore(t, "", dataDir)
	got := assertStoredOnce(t, st, saw)
	for i, c := range cases {
		e, ok := got[saw[i].id]
		if !ok {
			continue
		}
		if !c.noTool && (e.Tool != c.tool || e.ArgsSHA256 != c.argsSHA) {
			t.Errorf("%s: stored tool %q args_sha256 %s, want %q %s", c.name, e.Tool, e.ArgsSHA256, c.tool, c.argsSHA)
		}
		if string(e.Args) != c.args {
			t.Errorf("%s: stored args %q, want %q", c.name, e.Args, c.args)
		}
		if !c.want.allow && e.Detail != c.want.reason && c.want.reason != "" {
			t.Errorf("%s: stored detail %q, want %q", c.name, e.Detail, c.want.reason)
		}
		if e.Principal != c.principal && !c.noTool {
			t.Errorf("%s: stored principal %q, want %q", c.name, e.Principal, c.principal)
		}
		if e.PolicyRevision != s.Revision || e.PolicyRevision == "" {
			t.Errorf("%s: stored policy_revision %q, want %q (the started line's)", c.name, e.PolicyRevision, s.Revision)
		}
		if e.CacheTier != c.tier {
			t.Errorf("%s: stored cache_tier %q, want %q", c.name, e.CacheTier, c.tier)
		}
		if e.TokenJTI != c.jti || e.RunID != c.run || e.ProposalID != c.proposal {
			t.Errorf("%s: stored token_jti %q run_id %q proposal_id %q, want %q %q %q",
				c.name, e.TokenJTI, e.RunID, e.ProposalID, c.jti, c.run, c.proposal)
		}
		d := saw[i]
		if e.LatencyMicros < 0 || e.LatencyMicros > d.took.Microseconds() {
			t.Errorf("%s: stored latency_us %d, want 0..%d (the client's round trip)", c.name, e.LatencyMicros, d.took.Microseconds())
		}
		if slack := 50 * time.Millisecond; e.Time.Before(d.sent.Add(-slack)) || e.Time.After(recvd.Add(slack)) {
			t.Errorf("%s: stored time %v, want between %v and %v", c.name, e.Time, d.sent, recvd)
		}
	}
	chains := verifyChains(t, st)
	if len(chains) != 1 {
		t.Errorf("chains %v, want one (this process's)", chains)
	}
	for w, n := range chains {
		if n != int64(len(cases)) || !strings.Contains(w, "/"+strconv.Itoa(s.cmd.Process.Pid)+"/") {
			t.Errorf("chain %q has %d events, want %d from pid %d", w, n, len(cases), s.cmd.Process.Pid)
		}
	}
}

// load sends checks from a few goroutines, paced, recording every decision
// the client saw.
type load struct {
	mu      sync.Mutex
	saw     []seen
	errs    []error
	sent    atomic.Int64
	reqs    []*authv3.CheckRequest // templates: read_file, write_file, run_command, list_dir
	wg      sync.WaitGroup
	maxTook time.Duration
}

// newLoad builds the request templates (in the test goroutine).
func newLoad(t *testing.T) *load {
	return &load{reqs: []*authv3.CheckRequest{
		request(t, mcpRead),
		request(t, writeFixture, call("write_file", writeArgs)),
		request(t, mcpRead, call("run_command", `{"cmd":"ls"}`)),
		request(t, restList),
	}}
}

// start sends total checks from workers goroutines, each waiting every
// between two of its checks.
func (l *load) start(conn *grpc.ClientConn, total int64, workers int, every time.Duration) {
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				i := l.sent.Add(1)
				if i > total {
					return
				}
				req := proto.Clone(l.reqs[i%int64(len(l.reqs))]).(*authv3.CheckRequest)
				if i%4 == 0 { // distinct read_file arguments, so not every event is a cache hit
					withBody(mcpCall(fmt.Sprintf(`{"name":"read_file","arguments":{"path":"/w/%d"}}`, i)))(req.GetAttributes().GetRequest().GetHttp())
				}
				d, err := checkSeen(context.Background(), conn, req)
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, err)
				} else {
					l.saw = append(l.saw, d)
					l.maxTook = max(l.maxTook, d.took)
				}
				l.mu.Unlock()
				if err != nil {
					return
				}
				<-tick.C
			}
		}()
	}
}

// count is how many decisions the client has seen so far.
func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.saw)
}

// waitCount waits until n decisions were seen (bounded).
func (l *load) waitCount(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(auditSettle)
	for l.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d decisions within %v (errors: %v)", l.count(), n, auditSettle, l.errors())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *load) errors() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errs
}

// wait waits for the goroutines (bounded) and fails t on any Check error.
func (l *load) wait(t *testing.T) []seen {
	t.Helper()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * auditSettle):
		t.Fatalf("traffic did not finish within %v (%d decisions seen)", 2*auditSettle, l.count())
	}
	for _, err := range l.errors() {
		t.Errorf("traffic: %v", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.saw
}

// within counts the decisions sent in [from, to].
func within(saw []seen, from, to time.Time) int {
	n := 0
	for _, d := range saw {
		if !d.sent.Before(from) && !d.sent.After(to) {
			n++
		}
	}
	return n
}

// TestAuditPostgresOutage is the test: PostgreSQL stops in the
// middle of traffic and comes back. Decisions never stop, /health shows the
// spool growing while the store is down, the spool drains when it returns,
// and after SIGTERM every decision id the client saw is in the store
// exactly once, in chains that verify.
func TestAuditPostgresOutage(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	s := startSidecar(t, nil, "M1_DATABASE_URL="+dsn)
	if st := s.database(t); st.status != "ok" || st.backend != "postgres" {
		t.Fatalf("/health database = %v, want ok, backend postgres", st)
	}

	const total, workers = 1500, 4
	l := newLoad(t)
	l.start(s.conn, total, workers, 16*time.Millisecond) // ~250 checks/s: ~6 s

	l.waitCount(t, 300)
	pg.Stop(t)
	down := time.Now()
	first := s.waitDB(t, "spooling while PostgreSQL is down", auditSettle, func(st dbState) bool {
		return st.status == "degraded" && st.spool > 0 && st.spoolBytes > 0
	})
	l.waitCount(t, 900) // about 2.4 s of traffic against a stopped database
	s.waitDB(t, "spool growing while PostgreSQL is down", auditSettle, func(st dbState) bool {
		return st.status == "degraded" && st.spool >= first.spool+200
	})
	if m := s.metrics(t); m["m1_audit_spooled_events_total"] <= 0 {
		t.Errorf("m1_audit_spooled_events_total = %v while spooling, want > 0", m["m1_audit_spooled_events_total"])
	}
	if _, err := os.Stat(filepath.Join(s.cmd.Dir, "data", spoolFile)); err != nil {
		t.Errorf("spool file: %v", err)
	}
	up := time.Now()
	pg.Start(t)

	saw := l.wait(t)
	if len(saw) != total {
		t.Fatalf("the client saw %d decisions, want %d", len(saw), total)
	}
	if n := within(saw, down, up); n < 50 {
		t.Errorf("only %d decisions while PostgreSQL was down (%v): the sidecar must keep deciding", n, up.Sub(down))
	}
	t.Logf("PostgreSQL down for %v: %d decisions meanwhile; slowest Check %v", up.Sub(down), within(saw, down, up), l.maxTook)
	if l.maxTook > 3*time.Second {
		t.Errorf("slowest Check took %v: the decision path must not wait for the store", l.maxTook)
	}
	// The writer's current batch (up to 100 ms of events) is in neither
	// queue_depth nor spool_events: wait for written too.
	s.waitDB(t, "spool replayed after PostgreSQL returned", auditSettle, func(st dbState) bool {
		return settled(st) && st.written >= total
	})
	if m := s.metrics(t); m["m1_audit_events_total"] != total {
		t.Errorf("m1_audit_events_total = %v, want %d", m["m1_audit_events_total"], total)
	}
	s.stopClean(t)

	db := openStore(t, dsn, "")
	assertStoredOnce(t, db, saw)
	if chains := verifyChains(t, db); len(chains) != 1 || chains[firstKey(chains)] != total {
		t.Errorf("chains %v, want one of %d events", chains, total)
	}
}

func firstKey(m map[string]int64) string {
	for k := range m {
		return k
	}
	return ""
}

// TestAuditPostgresDownAtStart starts the sidecar while PostgreSQL is down:
// it starts and decides anyway, spools, and replays once PostgreSQL is up
// (applying the migrations to the fresh database then).
func TestAuditPostgresDownAtStart(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	pg.Stop(t)
	s := startSidecar(t, []string{"--database-url", dsn})
	t.Logf("/health database before any decision, PostgreSQL down: %v", s.database(t))
	if !strings.Contains(s.log.String(), "audit store unreachable at start") {
		t.Errorf("no warning that the audit store is unreachable at start")
	}
	l := newLoad(t)
	var saw []seen
	for i := range 40 {
		saw = append(saw, s.see(t, l.reqs[i%len(l.reqs)]))
	}
	s.waitDB(t, "40 decisions spooled", auditSettle, func(st dbState) bool {
		return st.status == "degraded" && st.spool == 40 && st.queue == 0 && st.written == 0
	})
	pg.Start(t)
	s.waitDB(t, "spool replayed after PostgreSQL started", auditSettle, settled)
	for i := range 10 {
		saw = append(saw, s.see(t, l.reqs[i%len(l.reqs)]))
	}
	s.stopClean(t)

	st := openStore(t, dsn, "")
	assertStoredOnce(t, st, saw)
	if chains := verifyChains(t, st); len(chains) != 1 || chains[firstKey(chains)] != 50 {
		t.Errorf("chains %v, want one of 50 events", chains)
	}
}

// TestAuditCrashSafety kills m1-authz with SIGKILL while PostgreSQL is down
// and the spool holds its events, then starts a new m1-authz on the same
// data directory with PostgreSQL back: the old spool is replayed, so the
// killed process's chain is complete in the store.
func TestAuditCrashSafety(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	args := []string{"--data-dir", dataDir}
	a := startKillable(t, args, "M1_DATABASE_URL="+dsn)
	l := newLoad(t)
	var sawA []seen
	for i := range 30 {
		sawA = append(sawA, a.see(t, l.reqs[i%len(l.reqs)]))
	}
	a.waitDB(t, "30 decisions written", auditSettle, func(st dbState) bool { return st.written == 30 && settled(st) })
	pg.Stop(t)
	for i := range 60 {
		sawA = append(sawA, a.see(t, l.reqs[i%len(l.reqs)]))
	}
	a.waitDB(t, "60 decisions spooled", auditSettle, func(st dbState) bool {
		return st.status == "degraded" && st.queue == 0 && st.written+st.spool == 90 && st.spool > 0
	})
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	if _, ok := a.waitExit(stopTimeout); !ok {
		t.Fatalf("m1-authz still running %v after SIGKILL", stopTimeout)
	}
	if fi, err := os.Stat(filepath.Join(dataDir, spoolFile)); err != nil || fi.Size() == 0 {
		t.Fatalf("spool after SIGKILL: %v (size %v), want a non-empty file", err, fi)
	}

	pg.Start(t)
	b := startSidecar(t, args, "M1_DATABASE_URL="+dsn)
	b.waitDB(t, "old spool replayed", auditSettle, settled)
	if !strings.Contains(b.log.String(), "audit spool from an earlier run will be replayed") {
		t.Errorf("no log line about the spool of the earlier run")
	}
	var sawB []seen
	for i := range 20 {
		sawB = append(sawB, b.see(t, l.reqs[i%len(l.reqs)]))
	}
	b.stopClean(t)

	st := openStore(t, dsn, "")
	assertStoredOnce(t, st, append(sawA, sawB...))
	chains := verifyChains(t, st)
	want := map[int]int64{a.cmd.Process.Pid: 90, b.cmd.Process.Pid: 20}
	if len(chains) != 2 {
		t.Errorf("chains %v, want two (the killed process's, the new one's)", chains)
	}
	for pid, n := range want {
		found := false
		for w, got := range chains {
			if strings.Contains(w, "/"+strconv.Itoa(pid)+"/") {
				found = true
				if got != n {
					t.Errorf("chain %q (pid %d) has %d events, want %d", w, pid, got, n)
				}
			}
		}
		if !found {
			t.Errorf("no chain for pid %d in %v", pid, chains)
		}
	}
}

// TestAuditSpoolTornTail starts m1-authz on a data directory whose spool
// ends in a torn record, as a SIGKILL (or a power cut) in the middle of a
// spool write leaves it: the complete records before it are replayed, and
// the sidecar's own decisions still reach the store.
func TestAuditSpoolTornTail(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	const old = 5
	events := make([]store.Event, old+1)
	var saw []seen
	for i := range events {
		events[i] = store.Event{
			DecisionID: fmt.Sprintf("old-decision-%d", i), Time: time.Now().Add(-time.Minute), Kind: store.KindDecision,
			Principal: fixturePrinc, Tool: "read_file", ArgsSHA256: argsSHA256(readCanon), Decision: "allow",
			Reason: "ok", Status: 200, PolicyRevision: "old-revision", LatencyMicros: 42,
		}
		if i < old {
			saw = append(saw, seen{id: events[i].DecisionID, allowed: true, status: 200, code: "ok"})
		}
	}
	store.NewChainer("m1-authz/old-host/4242/20260101T000000.000000000Z").Chain(events)
	var spool []byte
	for i, e := range events {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if i == old {
			b = b[:len(b)/2] // torn: no end, no newline
		} else {
			b = append(b, '\n')
		}
		spool = append(spool, b...)
	}
	if err := os.WriteFile(filepath.Join(dataDir, spoolFile), spool, 0o600); err != nil {
		t.Fatal(err)
	}

	s := startSidecar(t, []string{"--data-dir", dataDir})
	l := newLoad(t)
	for i := range 4 {
		saw = append(saw, s.see(t, l.reqs[i%len(l.reqs)]))
	}
	deadline := time.Now().Add(15 * time.Second)
	st := s.database(t)
	for !settled(st) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		st = s.database(t)
	}
	if !settled(st) {
		t.Errorf("a torn last spool record blocks the audit trail: /health database after 15s: %v", st)
	}
	s.stopClean(t)

	db := openStore(t, "", dataDir)
	assertStoredOnce(t, db, saw)
	verifyChains(t, db)
}
