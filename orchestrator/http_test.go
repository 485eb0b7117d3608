package orchestrator_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/orchestrator"
)

func TestHTTPAPI(t *testing.T) {
	f := newFixture(t, &twoSteps{}, nil)
	srv := httptest.NewServer(f.svc.Handler())
	t.Cleanup(srv.Close)
	c := &orchestrator.Client{BaseURL: srv.URL}
	ctx := context.Background()

	d, err := c.CreateRun(ctx, orchestrator.RunRequest{Goal: "take notes", Agent: "agent-7"})
	if err != nil {
		t.Fatal(err)
	}
	pending, err := c.Proposals(ctx, store.ProposalPending)
	if err != nil || len(pending) != 1 || pending[0].ID != d.Proposals[0].ID {
		t.Fatalf("Proposals(pending) = %+v, %v", pending, err)
	}
	p := pending[0]
	dec, err := c.Approve(ctx, p.ID, f.token(t, p, nil))
	if err != nil || dec.ToolCall == nil || dec.ToolCall.Status != store.CallSucceeded {
		t.Fatalf("Approve = %+v, %v", dec, err)
	}
	_, err = c.Approve(ctx, p.ID, f.token(t, p, nil))
	if ae := apiError(err); ae == nil || ae.Status != 409 || ae.Code != "not_pending" {
		t.Fatalf("second approval = %v, want 409 not_pending", err)
	}
	got, err := c.Run(ctx, d.ID)
	if err != nil || len(got.ToolCalls) != 1 || len(got.Proposals) != 1 {
		t.Fatalf("Run = %+v, %v", got, err)
	}
	costs, err := c.Costs(ctx, got.CreatedAt.Add(-1))
	if err != nil || costs.TotalUSD <= 0 || len(costs.Rows) != 1 {
		t.Fatalf("Costs = %+v, %v", costs, err)
	}
	if _, err := c.Run(ctx, "run_nope"); apiError(err) == nil || apiError(err).Status != 404 {
		t.Fatalf("Run(unknown) = %v, want 404", err)
	}
	// Every proposal status is a filter, claimed (a sidecar's, run) included.
	for _, status := range []string{store.ProposalExecuted, store.ProposalClaimed} {
		ps, err := c.Proposals(ctx, status)
		if err != nil || (status == store.ProposalExecuted) != (len(ps) == 1) {
			t.Errorf("Proposals(%s) = %d proposals, %v; want the executed one only under executed", status, len(ps), err)
		}
	}

	bad := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"no goal", "POST", "/v1/runs", `{"agent":"a"}`, 400, "bad_request"},
		{"bad agent", "POST", "/v1/runs", `{"goal":"g","agent":"a b"}`, 400, "bad_request"},
		{"unknown field", "POST", "/v1/runs", `{"goal":"g","agent":"a","x":1}`, 400, "bad_request"},
		{"not json", "POST", "/v1/runs", `goal=g`, 400, "bad_request"},
		{"two objects", "POST", "/v1/runs", `{"goal":"g","agent":"a"}{}`, 400, "bad_request"},
		{"negative budget", "POST", "/v1/runs", `{"goal":"g","agent":"a","budget_usd":-1}`, 400, "bad_request"},
		{"empty grant", "POST", "/v1/runs", `{"goal":"g","agent":"a","grants":[" "]}`, 400, "bad_request"},
		{"grants not a list", "POST", "/v1/runs", `{"goal":"g","agent":"a","grants":"x"}`, 400, "bad_request"},
		{"too many grants", "POST", "/v1/runs", `{"goal":"g","agent":"a","grants":[` + strings.Repeat(`"x",`, 16) + `"x"]}`, 400, "bad_request"},
		{"garbage grant", "POST", "/v1/runs", `{"goal":"g","agent":"a","grants":["not.a.token"]}`, 400, "token_invalid"},
		{"another agent's grant", "POST", "/v1/runs", `{"goal":"g","agent":"agent-8","grants":["` + f.grantToken(t, 1, nil, "write_file") + `"]}`, 400, "subject_mismatch"},
		{"bad status", "GET", "/v1/proposals?status=maybe", ``, 400, "bad_request"},
		{"bad run status", "GET", "/v1/runs?status=maybe", ``, 400, "bad_request"},
		{"bad limit", "GET", "/v1/proposals?limit=-2", ``, 400, "bad_request"},
		{"no token", "POST", "/v1/proposals/" + p.ID + "/approval", `{}`, 400, "bad_request"},
		{"no reason", "POST", "/v1/proposals/" + p.ID + "/rejection", `{"reason":" "}`, 400, "bad_request"},
		{"unknown proposal", "POST", "/v1/proposals/prop_nope/rejection", `{"reason":"r"}`, 404, "not_found"},
		{"bad since", "GET", "/v1/costs?since=yesterday", ``, 400, "bad_request"},
		{"unknown path", "GET", "/v1/nope", ``, 404, "not_found"},
	}
	for _, tc := range bad {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(body), `"error": "`+tc.code+`"`) {
			t.Errorf("%s: %s %s = %d %s, want %d %s", tc.name, tc.method, tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
	}
}

func apiError(err error) *orchestrator.APIError {
	var ae *orchestrator.APIError
	if errors.As(err, &ae) {
		return ae
	}
	return nil
}
