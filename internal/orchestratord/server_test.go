package orchestratord

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/store"
)

// With no M1_ADMIN_TOKEN, the generated token is logged once, after the
// listener is bound, with the dashboard URL that opens it (DESIGN §8).
func TestGeneratedTokenLoggedWithDashboardURL(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	s := startTest(t, func(o *Options) { o.AdminToken, o.Logger = "", zap.New(core) })
	entries := logs.FilterMessageSnippet("admin token generated").All()
	if len(entries) != 1 {
		t.Fatalf("logged the generated token %d times, want once", len(entries))
	}
	u, _ := entries[0].ContextMap()["dashboard_url"].(string)
	want := "http://" + s.Addr().String() + "/?token=" + s.AdminToken()
	if u != want || len(s.AdminToken()) < 32 {
		t.Fatalf("dashboard_url = %q, want %q (a generated token of 32+ characters)", u, want)
	}
	resp, err := http.Get(strings.Replace(u, "/?token=", "/api/m1/dashboard?token=", 1))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the logged token: GET /api/m1/dashboard = %d, want 200", resp.StatusCode)
	}
}

// /health reports the checks every M1 binary reports (DESIGN §8), and a
// store that cannot be reached degrades it without failing readiness:
// 503 is for a process that cannot serve at all.
func TestHealthChecksAndStoreOutage(t *testing.T) {
	s := startTest(t, nil)
	get := func() (int, admin.Report) {
		t.Helper()
		resp, err := http.Get("http://" + s.Addr().String() + "/health")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep admin.Report
		if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, rep
	}
	code, rep := get()
	for _, name := range []string{"policy", "keys", "redis", "database", "memory"} {
		if _, ok := rep.Checks[name]; !ok {
			t.Errorf("/health checks lack %q: %v", name, rep.Checks)
		}
	}
	if code != http.StatusOK || rep.Status != admin.StatusOK {
		t.Fatalf("/health = %d %s, want 200 ok", code, rep.Status)
	}
	s.st.Close() // the store gone
	code, rep = get()
	if code != http.StatusOK || rep.Status != admin.StatusDegraded || rep.Checks["database"].Status != admin.StatusDegraded {
		t.Fatalf("/health with the store unreachable = %d %s (database %+v), want 200 degraded", code, rep.Status, rep.Checks["database"])
	}
}

// The orchestrator applies the retention policy to its store, as the
// sidecars do (DESIGN §7): an event past it goes, a recent one stays.
func TestPrunesItsStore(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.AdminToken = "secret-token"
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now().UTC()
	events := []store.Event{
		{DecisionID: "old", Time: now.Add(-3 * store.Year), Kind: store.KindDecision, Tool: "read_file", Decision: "allow", Reason: "ok"},
		{DecisionID: "new", Time: now.Add(-time.Hour), Kind: store.KindDecision, Tool: "read_file", Decision: "allow", Reason: "ok"},
	}
	store.NewChainer("test/prune").Chain(events)
	if err := s.st.AppendEvents(ctx, events); err != nil {
		t.Fatal(err)
	}
	s.opts.PruneEvery = 20 * time.Millisecond // below the 1m a flag allows
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	left := func() []string {
		var ids []string
		if err := s.st.Events(ctx, store.Filter{Until: now}, func(e store.Event) error {
			if e.Writer == "test/prune" {
				ids = append(ids, e.DecisionID)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	deadline := time.Now().Add(5 * time.Second)
	for ids := left(); len(ids) != 1; ids = left() {
		if time.Now().After(deadline) {
			t.Fatalf("events after pruning = %v, want [new]", ids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ids := left(); ids[0] != "new" {
		t.Fatalf("events after pruning = %v, want [new]", ids)
	}
}

// ALLOWED_ORIGINS opens the fleet's JSON API to the origins it names, as
// on m1-authz (DESIGN §8); a bad list is refused at start.
func TestAllowedOrigins(t *testing.T) {
	s := startTest(t, func(o *Options) { o.AllowedOrigins = "https://ops.example.com" })
	plain := startTest(t, nil)
	for _, tc := range []struct {
		srv    *Server
		origin string
		want   string
	}{
		{s, "https://ops.example.com", "https://ops.example.com"},
		{s, "https://evil.example.com", ""},
		{plain, "https://ops.example.com", ""},
	} {
		req, _ := http.NewRequest("GET", "http://"+tc.srv.Addr().String()+"/api/m1/dashboard/runs", nil)
		req.Header.Set("Authorization", "Bearer secret-token")
		req.Header.Set("Origin", tc.origin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != tc.want {
			t.Errorf("GET from %s = %d, Access-Control-Allow-Origin %q; want 200, %q", tc.origin, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), tc.want)
		}
	}
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.AllowedOrigins = "*"
	if _, err := New(context.Background(), o); err == nil || !strings.Contains(err.Error(), "ALLOWED_ORIGINS") {
		t.Fatalf("New(ALLOWED_ORIGINS=*) = %v, want an error naming ALLOWED_ORIGINS", err)
	}
}
