package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
	"github.com/m1-agent/m1/orchestrator"
)

// resetTool is a REST tool behind a sidecar that answers its first resets
// calls as m1-authz answers an approval issued before its shared state
// was reset: 403 state_reset with retry-after.
type resetTool struct {
	mu         sync.Mutex
	resets     int
	retryAfter string
	refused    []string // tokens refused with state_reset
	ran        []string // tokens of the calls that ran
}

func (rt *resetTool) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	rt.mu.Lock()
	defer rt.mu.Unlock()
	tok := r.Header.Get("x-m1-approval-token")
	w.Header().Set("Content-Type", "application/json")
	if rt.resets > 0 {
		rt.resets--
		rt.refused = append(rt.refused, tok)
		w.Header().Set("retry-after", rt.retryAfter)
		w.Header().Set("x-m1-decision-id", "dec-reset") // as m1-authz sets on every deny
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"error":"state_reset","reason":"token issued before the shared state was reset; ask for a new approval","decision_id":"dec-reset"}`)
		return
	}
	rt.ran = append(rt.ran, tok)
	io.WriteString(w, `{"ok":true}`)
}

// resetLoop is m1 approve against a real orchestrator (in process, its
// JWKS the operator's) whose tool answers state_reset first.
type resetLoop struct {
	tool     *resetTool
	svc      *orchestrator.Service
	rec      store.Records
	proposal store.Proposal
	a        *approver
	out, err bytes.Buffer
	waits    []time.Duration // what m1 approve slept
}

func newResetLoop(t *testing.T, resets int, retryAfter string) *resetLoop {
	t.Helper()
	l := &resetLoop{tool: &resetTool{resets: resets, retryAfter: retryAfter}}
	toolSrv := httptest.NewServer(l.tool)
	t.Cleanup(toolSrv.Close)
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "m1.db"), sqlite.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	l.rec = any(st).(store.Records)
	key, err := approval.GenerateKey(approval.AlgEdDSA, "ops-1")
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := key.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := approval.ParseJWKS(jwks)
	if err != nil {
		t.Fatal(err)
	}
	v, err := approval.NewVerifier(approval.VerifierOptions{Keys: keys, Audience: "tools.example", CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := orchestrator.ParseRegistry([]byte(`{"write_file": {"risk": "write", "protocol": "rest"}}`), toolSrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	planner := planFunc(func(_ context.Context, s orchestrator.Session) (orchestrator.Step, error) {
		if len(s.History) > 0 {
			return orchestrator.Step{Done: true}, nil
		}
		return orchestrator.Step{Calls: []orchestrator.Call{{Tool: "write_file", Args: json.RawMessage(`{"path":"notes.txt","content":"hi"}`)}}}, nil
	})
	o := orchestrator.DefaultOptions()
	o.Records, o.Audit, o.Planner, o.Registry, o.Verifier, o.ProposalTTL = l.rec, nopAudit{}, planner, reg, v, 15*time.Minute
	l.svc, err = orchestrator.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.svc.Stop(context.Background()) })
	api := httptest.NewServer(l.svc.Handler())
	t.Cleanup(api.Close)
	run, err := l.svc.StartRun(context.Background(), orchestrator.RunRequest{Goal: "g", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	l.proposal = run.Proposals[0]

	// m1 approve as runApprove builds it, with a clock that its sleep
	// moves on instead of waiting.
	var mu sync.Mutex
	var slept time.Duration
	l.a = &approver{
		c:        &cmdIO{stdin: strings.NewReader(""), stdout: &l.out, stderr: &l.err},
		client:   &orchestrator.Client{BaseURL: api.URL},
		key:      key,
		sign:     &signing{aud: "tools.example", iss: "m1-cli", actor: "alice", ttl: 5 * time.Minute},
		audience: []string{"tools.example"},
		timeout:  time.Minute,
		now: func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return time.Now().Add(slept)
		},
		sleep: func(_ context.Context, d time.Duration) error {
			mu.Lock()
			defer mu.Unlock()
			l.waits = append(l.waits, d)
			slept += d
			return nil
		},
		maxResetWait: 2 * approval.DefaultClockSkew,
	}
	return l
}

type planFunc func(ctx context.Context, s orchestrator.Session) (orchestrator.Step, error)

func (f planFunc) Next(ctx context.Context, s orchestrator.Session) (orchestrator.Step, error) {
	return f(ctx, s)
}

type nopAudit struct{}

func (nopAudit) Record(store.Event) {}

// TestApproveRetriesAfterStateReset: the sidecar refuses the approval with
// state_reset and retry-after; m1 approve waits that long and approves
// once more with a new token, which runs the call.
func TestApproveRetriesAfterStateReset(t *testing.T) {
	l := newResetLoop(t, 1, "3")
	l.a.byID(context.Background(), []string{l.proposal.ID})
	if l.a.tally.code != exitOK || l.a.tally.approved != 1 {
		t.Fatalf("m1 approve after one state_reset: exit %d, %s\nstdout:\n%s\nstderr:\n%s", l.a.tally.code, &l.a.tally, &l.out, &l.err)
	}
	// The orchestrator passes on the retry-after from its own clock,
	// rounded up to the second the sidecar's new epoch begins.
	if len(l.waits) != 1 || l.waits[0] < 3*time.Second || l.waits[0] > 4*time.Second {
		t.Fatalf("m1 approve waited %v, want once, the retry-after of about 3s", l.waits)
	}
	if len(l.tool.refused) != 1 || len(l.tool.ran) != 1 || l.tool.ran[0] == l.tool.refused[0] {
		t.Fatalf("tool refused %d and ran %d calls (same token: %v); want 1 and 1, a new token", len(l.tool.refused), len(l.tool.ran),
			len(l.tool.ran) == 1 && len(l.tool.refused) == 1 && l.tool.ran[0] == l.tool.refused[0])
	}
	old, _ := approval.ParseUnverified(l.tool.refused[0])
	fresh, _ := approval.ParseUnverified(l.tool.ran[0])
	if !fresh.IssuedAt.After(old.IssuedAt) || fresh.ID == old.ID {
		t.Errorf("the new approval was issued at %v (jti %s), the refused one at %v (jti %s); want a later one", fresh.IssuedAt, fresh.ID, old.IssuedAt, old.ID)
	}
	if !strings.Contains(l.err.String(), "state_reset") || !strings.Contains(l.out.String(), "executed") {
		t.Errorf("m1 approve output: want the state_reset on stderr and the execution on stdout\nstdout:\n%s\nstderr:\n%s", &l.out, &l.err)
	}
}

// TestApproveStateResetGivesUp: m1 approve retries once, and not at all
// when the sidecar names a wait longer than twice the clock skew; the
// proposal stays pending and the exit status is 1.
func TestApproveStateResetGivesUp(t *testing.T) {
	for _, tc := range []struct {
		name       string
		resets     int
		retryAfter string
		waits      int
		want       string
	}{
		{"refused again after the retry", 2, "1", 1, "state_reset again"},
		{"retry-after beyond twice the clock skew", 1, "300", 0, "later than twice --clock-skew"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newResetLoop(t, tc.resets, tc.retryAfter)
			l.a.byID(context.Background(), []string{l.proposal.ID})
			if l.a.tally.code != exitDeny || l.a.tally.refused != 1 || !strings.Contains(l.err.String(), tc.want) {
				t.Fatalf("m1 approve: exit %d, %s, want 1 and stderr with %q\nstderr:\n%s", l.a.tally.code, &l.a.tally, tc.want, &l.err)
			}
			if len(l.waits) != tc.waits || len(l.tool.ran) != 0 {
				t.Fatalf("m1 approve waited %v and the tool ran %d times; want %d waits and no run", l.waits, len(l.tool.ran), tc.waits)
			}
			p, err := l.rec.Proposal(context.Background(), l.proposal.ID)
			if err != nil || p.Status != store.ProposalPending {
				t.Fatalf("proposal = %s, %v; want pending", p.Status, err)
			}
		})
	}
}
