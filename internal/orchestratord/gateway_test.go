package orchestratord

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/gateway"
	"github.com/m1-agent/m1/toolcall"
)

// TestApprovalsOnly: without a planner the orchestrator starts and serves
// approvals for sidecars, behind their own token or the admin token; its
// health says so, runs are refused 503 no_planner, the pending proposals
// are on /metrics and on the dashboard's API.
func TestApprovalsOnly(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.PlanFile, o.AdminToken, o.Gateway.Token = "", "admin-secret", "sidecar-secret"
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatalf("New without a planner = %v, want it to start", err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	base := "http://" + s.Addr().String()
	do := func(method, path, token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("POST", "/v1/runs", "admin-secret", `{"goal":"g","agent":"a"}`); code != 503 || !strings.Contains(body, "no_planner") {
		t.Errorf("POST /v1/runs without a planner = %d %s, want 503 no_planner", code, body)
	}
	if code, body := do("GET", "/health", "", ""); code != 200 || !strings.Contains(body, `"disabled"`) {
		t.Errorf("GET /health = %d %s, want 200 with the planner disabled", code, body)
	}

	sum, _ := toolcall.ArgsSHA256("write_file", []byte(`{"path":"x"}`))
	filing := `{"principal":"spiffe://e/agent","tool":"write_file","args":{"path":"x"},"args_sha256":"` + sum + `","decision_id":"d1"}`
	claim := `{"principal":"spiffe://e/agent","tool":"write_file","args_sha256":"` + sum + `"}`
	for _, tc := range []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"file, sidecar token", "POST", gateway.PathProposals, "sidecar-secret", filing, 200},
		{"claim, sidecar token", "POST", gateway.PathClaims, "sidecar-secret", claim, 200},
		{"claim, admin token", "POST", gateway.PathClaims, "admin-secret", claim, 200},
		{"claim, no token", "POST", gateway.PathClaims, "", claim, 401},
		{"claim, wrong token", "POST", gateway.PathClaims, "nope", claim, 401},
		{"list, sidecar token", "GET", "/v1/proposals", "sidecar-secret", "", 401},
		{"approve, sidecar token", "POST", "/v1/proposals/p/approval", "sidecar-secret", `{"token":"t"}`, 401},
		{"reject, sidecar token", "POST", "/v1/proposals/p/rejection", "sidecar-secret", `{"reason":"r"}`, 401},
		{"dashboard, sidecar token", "GET", "/api/m1/dashboard/proposals", "sidecar-secret", "", 401},
	} {
		if code, body := do(tc.method, tc.path, tc.token, tc.body); code != tc.want {
			t.Errorf("%s: %s %s = %d %s, want %d", tc.name, tc.method, tc.path, code, body, tc.want)
		}
	}
	code, body := do("GET", "/api/m1/dashboard/proposals", "admin-secret", "")
	if code != 200 || !strings.Contains(body, `"total": 1`) || !strings.Contains(body, `"origin": "sidecar"`) || !strings.Contains(body, `"canonical_args": "{\"path\":\"x\"}"`) {
		t.Errorf("GET /api/m1/dashboard/proposals = %d %s, want the pending sidecar proposal", code, body)
	}
	if code, body := do("GET", "/metrics", "", ""); code != 200 || !strings.Contains(body, `m1_proposals_pending{risk="write"} 1`) ||
		!strings.Contains(body, `m1_proposals_pending_oldest_age_seconds{risk="write"}`) {
		t.Errorf("GET /metrics = %d, want m1_proposals_pending{risk=\"write\"} 1 and the oldest's age:\n%s", code, body)
	}
	if code, body := do("GET", "/", "", ""); code != 401 || !strings.Contains(body, `id="login"`) {
		t.Errorf("GET / without a token = %d, want 401 and the dashboard page asking for the token", code)
	}
}
