package admin_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/admin/admintest"
	"github.com/m1-agent/m1/internal/state"
)

// testLimits are short where the suite waits for a bound, and long where it
// shows that a bound is not waited for.
func testLimits() admin.Limits {
	l := admin.DefaultLimits()
	l.ReadHeaderTimeout = 300 * time.Millisecond
	l.IdleTimeout = 300 * time.Millisecond
	l.ReadTimeout = 2 * admintest.Patience
	l.WriteTimeout = 2 * admintest.Patience
	l.MaxBodyBytes = 4 << 10
	return l
}

func testHandler() http.Handler {
	reg := prometheus.NewRegistry()
	rev := &admin.RevocationsAPI{Store: state.NewMemory(state.MemoryOptions{}), DefaultJTITTL: time.Minute, Now: time.Now}
	return admin.NewHandler(admin.Options{
		Token:    "secret-token",
		Gatherer: reg,
		Health:   func() admin.Report { return admin.Report{Status: admin.StatusOK, Ready: true, Started: true} },
		Routes:   rev.Routes(),
	})
}

// serve starts NewServer on 127.0.0.1 and stops it with t.
func serve(t *testing.T, h http.Handler, l admin.Limits) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := admin.NewServer(h, l, nil)
	go srv.Serve(lis) //nolint:errcheck // ErrServerClosed at Shutdown
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return lis.Addr().String()
}

func TestServerBoundsConnections(t *testing.T) {
	l := testLimits()
	admintest.RunBounds(t, admintest.Target{
		Addr: serve(t, testHandler(), l), Token: "secret-token", BodyPath: "/api/m1/revocations", Limits: l,
	})
}

func TestLimitsValidate(t *testing.T) {
	if err := admin.DefaultLimits().Validate(); err != nil {
		t.Fatalf("DefaultLimits().Validate() = %v", err)
	}
	for name, mod := range map[string]func(*admin.Limits){
		"ReadHeaderTimeout": func(l *admin.Limits) { l.ReadHeaderTimeout = 0 },
		"IdleTimeout":       func(l *admin.Limits) { l.IdleTimeout = -time.Second },
		"MaxBodyBytes":      func(l *admin.Limits) { l.MaxBodyBytes = 0 },
	} {
		l := admin.DefaultLimits()
		mod(&l)
		if err := l.Validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Validate(%s unset) = %v, want an error naming it", name, err)
		}
	}
}

// Every response carries the security headers, over TLS also HSTS.
func TestSecurityHeaders(t *testing.T) {
	srv := admin.NewServer(testHandler(), testLimits(), nil)
	plain := httptest.NewServer(srv.Handler)
	defer plain.Close()
	tls := httptest.NewTLSServer(srv.Handler)
	defer tls.Close()
	for _, ts := range []*httptest.Server{plain, tls} {
		for _, tc := range []struct {
			method, path, token string
			body                string
			want                int
		}{
			{"GET", "/health", "", "", 200},
			{"GET", "/metrics", "", "", 200},
			{"GET", "/", "secret-token", "", 200}, // the page: also its CSP
			{"GET", "/api/m1/revocations", "", "", 401},
			{"GET", "/api/m1/nope", "secret-token", "", 404},
			{"GET", "/assets/nope.js", "", "", 404},
			{"POST", "/api/m1/revocations", "secret-token", "{" + strings.Repeat(" ", 8<<10) + "}", 413},
		} {
			req, _ := http.NewRequest(tc.method, ts.URL+tc.path, strings.NewReader(tc.body))
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			what := tc.method + " " + ts.URL + tc.path
			if resp.StatusCode != tc.want {
				t.Errorf("%s = %d, want %d", what, resp.StatusCode, tc.want)
			}
			admintest.CheckHeaders(t, what, resp)
			if tc.path == "/" && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
				t.Errorf("%s: Content-Security-Policy = %q, want the page's strict policy", what, resp.Header.Get("Content-Security-Policy"))
			}
		}
	}
}
