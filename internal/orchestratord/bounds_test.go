package orchestratord

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/admin/admintest"
	"github.com/m1-agent/m1/orchestrator"
)

func startTest(t *testing.T, mod func(*Options)) *Server {
	t.Helper()
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.AdminToken = "secret-token"
	if mod != nil {
		mod(&o)
	}
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	return s
}

// The orchestrator's port bounds every connection and answers 401 without
// reading a body (DESIGN §7).
func TestServerBoundsConnections(t *testing.T) {
	var o Options
	s := startTest(t, func(opts *Options) {
		opts.HTTP.ReadHeaderTimeout = 300 * time.Millisecond
		opts.HTTP.IdleTimeout = 300 * time.Millisecond
		opts.HTTP.ReadTimeout = 2 * admintest.Patience
		o = *opts
	})
	admintest.RunBounds(t, admintest.Target{
		Addr: s.Addr().String(), Token: "secret-token", BodyPath: "/v1/runs", Limits: o.HTTP,
	})
}

// Every response of the orchestrator's port carries the security headers
// (DESIGN §8): a 200, a 401 and a 404, health and metrics included.
func TestSecurityHeaders(t *testing.T) {
	s := startTest(t, nil)
	base := "http://" + s.Addr().String()
	for _, tc := range []struct {
		method, path, token, body string
		want                      int
	}{
		{"GET", "/health", "", "", 200},
		{"GET", "/metrics", "", "", 200},
		{"GET", "/v1/runs", "secret-token", "", 200},
		{"GET", "/v1/runs", "", "", 401},
		{"GET", "/v1/runs", "wrong", "", 401},
		{"GET", "/v1/nope", "secret-token", "", 404},
		{"GET", "/v1/runs/run-none", "secret-token", "", 404},
		{"POST", "/v1/runs", "secret-token", `{"goal":"` + strings.Repeat("g", 1<<20) + `","agent":"a"}`, 413},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		what := tc.method + " " + tc.path + " (token " + tc.token + ")"
		if resp.StatusCode != tc.want {
			t.Errorf("%s = %d, want %d", what, resp.StatusCode, tc.want)
		}
		admintest.CheckHeaders(t, what, resp)
	}
}

func TestWriteTimeoutOutlastsDispatch(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.DispatchTimeout = 2 * time.Minute
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if o.HTTP.WriteTimeout <= o.DispatchTimeout {
		t.Fatalf("HTTP.WriteTimeout = %v with DispatchTimeout %v: an approval's answer would be cut", o.HTTP.WriteTimeout, o.DispatchTimeout)
	}
	// POST /v1/runs answers after the run's first planning step.
	o = testOptions(t, jwks)
	o.DispatchTimeout = time.Second
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if plan := orchestrator.DefaultOptions().PlanTimeout; o.HTTP.WriteTimeout <= plan {
		t.Fatalf("HTTP.WriteTimeout = %v with a planning step's timeout %v: a new run's answer would be cut", o.HTTP.WriteTimeout, plan)
	}
	o = testOptions(t, jwks)
	o.HTTP.WriteTimeout = o.DispatchTimeout
	if err := o.validate(); err == nil || !strings.Contains(err.Error(), "M1_DISPATCH_TIMEOUT") {
		t.Fatalf("validate(WriteTimeout = DispatchTimeout) = %v, want an error naming M1_DISPATCH_TIMEOUT", err)
	}
}
