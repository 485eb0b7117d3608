package sidecar

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/m1-agent/m1/internal/testenv"
)

func testOptions(t testing.TB) Options {
	t.Helper()
	o := DefaultOptions()
	reg := prometheus.NewRegistry()
	o.GRPCAddr, o.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	o.Logger, o.Registerer, o.Gatherer = zap.NewNop(), reg, reg
	o.DataDir = testenv.DataDir(t) // a store that has been running: tokens issued now are past its epoch
	return o
}

func startServer(t testing.TB, o Options) *Server {
	t.Helper()
	ctx := context.Background()
	s, err := New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return s
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
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

func TestAdminEndpoints(t *testing.T) {
	s := startServer(t, testOptions(t))
	base := "http://" + s.AdminAddr().String()
	if len(s.AdminToken()) < 32 {
		t.Fatalf("generated admin token %q is too short", s.AdminToken())
	}
	for _, p := range []string{"/health", "/health/live", "/health/ready", "/health/startup", "/metrics"} {
		if code, body := get(t, base+p, ""); code != 200 {
			t.Errorf("GET %s without a token = %d %s, want 200", p, code, body)
		}
	}
	code, body := get(t, base+"/health", "")
	var rep struct {
		Status  string                     `json:"status"`
		Version string                     `json:"version"`
		Checks  map[string]json.RawMessage `json:"checks"`
	}
	if err := json.Unmarshal([]byte(body), &rep); err != nil || code != 200 || rep.Status != "ok" || rep.Version == "" {
		t.Fatalf("/health = %d %s, want 200 status ok with a version", code, body)
	}
	for _, c := range []string{"policy", "keys", "redis", "database", "memory"} {
		if _, ok := rep.Checks[c]; !ok {
			t.Errorf("/health checks lack %q: %s", c, body)
		}
	}
	for _, tok := range []string{"", "wrong", s.AdminToken() + "x"} {
		if code, _ := get(t, base+"/api/m1/dashboard/policy", tok); code != 401 {
			t.Errorf("GET /api/m1/dashboard/policy with token %q = %d, want 401", tok, code)
		}
	}
	if code, body := get(t, base+"/api/m1/dashboard/policy", s.AdminToken()); code != 200 || !strings.Contains(body, `"cacheable": true`) {
		t.Errorf("GET /api/m1/dashboard/policy with the token = %d %s, want 200 and cacheable", code, body)
	}
	// The page needs the token too (DESIGN §8); without it a browser is
	// shown the page, answered 401, which asks for the token.
	if code, body := get(t, base+"/", ""); code != 401 || !strings.Contains(body, `id="login"`) {
		t.Errorf("GET / without a token = %d, want 401 and the page asking for the token", code)
	}
	if code, _ := get(t, base+"/", s.AdminToken()); code != 200 {
		t.Errorf("GET / with the token = %d, want 200", code)
	}
}

// TestStopDrainsAndIsIdempotent: Stop turns health NOT_SERVING and /health
// to 503 draining at once, lets an RPC in flight finish (a health Watch
// stream stands for a long check), refuses new RPCs, returns only when the
// RPC in flight has ended, and is safe to call twice.
func TestStopDrainsAndIsIdempotent(t *testing.T) {
	o := testOptions(t)
	s := startServer(t, o)
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watchCtx, endWatch := context.WithCancel(ctx)
	defer endWatch()
	watch, err := hc.Watch(watchCtx, &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", r, err)
	}

	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop(ctx) }()
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while draining = %v, %v; want NOT_SERVING", r, err)
	}
	base := "http://" + s.AdminAddr().String()
	if code, body := get(t, base+"/health", ""); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("GET /health while draining = %d %s, want 503 draining", code, body)
	}
	// Health turns first; the gRPC server refuses new calls as soon as its
	// graceful stop begins.
	testenv.Eventually(t, 5*time.Second, "a new Check refused while draining", func() bool {
		_, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{})
		return err != nil
	})
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) with an RPC still in flight, want it to wait", err)
	default:
	}
	endWatch() // the RPC in flight ends: the drain completes
	if err := <-stopped; err != nil {
		t.Fatalf("Stop = %v", err)
	}
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("second Stop = %v, want nil", err)
	}
	if _, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{}); err == nil {
		t.Fatalf("Check after Stop succeeded, want the port closed")
	}
}

func TestNewFailsOnBrokenBundle(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte("package m1.authz\n\ndecision := {\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := testOptions(t)
	o.PolicyDir = dir
	_, err := New(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "authz.rego:") {
		t.Fatalf("New(broken bundle) = %v, want an error with authz.rego:<line>", err)
	}
}

// TestHealthReportsEachSwitch: every state /health and the dashboard report
// comes from the component itself, so turning a feature off shows as off.
func TestHealthReportsEachSwitch(t *testing.T) {
	uncacheable := t.TempDir()
	if err := os.WriteFile(filepath.Join(uncacheable, "authz.rego"), []byte("package m1.authz\n\nimport rego.v1\n\ndecision := input.attributes.request.http.method == \"POST\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		mod   func(*Options)
		check string // /health checks key
		want  string // status, or for policy the decision_cache value
		doc   string // substring of the dashboard's policy document ("" to skip)
	}{
		{"cache on", func(*Options) {}, "policy", "on", `"decision_cache":true`},
		{"cache size 0", func(o *Options) { o.CacheSize = 0 }, "policy", "off", `"decision_cache":false`},
		{"policy not cacheable", func(o *Options) { o.PolicyDir = uncacheable }, "policy", "off", `"cacheable":false`},
		{"audit off", func(o *Options) { o.Audit = false }, "database", "audit:off", ""},
		{"audit on", func(*Options) {}, "database", "audit:on", ""},
		{"no redis", func(*Options) {}, "redis", "disabled", ""},
		{"no keys", func(*Options) {}, "keys", "disabled", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			tt.mod(&o)
			s := startServer(t, o)
			base := "http://" + s.AdminAddr().String()
			_, body := get(t, base+"/health", "")
			var doc struct {
				Checks map[string]struct {
					Status string         `json:"status"`
					Detail string         `json:"detail"`
					Info   map[string]any `json:"info"`
				} `json:"checks"`
			}
			if err := json.Unmarshal([]byte(body), &doc); err != nil {
				t.Fatalf("/health = %s: %v", body, err)
			}
			c := doc.Checks[tt.check]
			got := c.Status
			if tt.check == "database" { // the store stays open for the security state
				got = "audit:on"
				if c.Info["audit"] == "off" {
					got = "audit:off"
				}
			}
			if tt.check == "policy" {
				got, _ = c.Info["decision_cache"].(string)
				if got == "off" && c.Detail == "" {
					t.Errorf("/health policy: decision cache off without a reason")
				}
			}
			if got != tt.want {
				t.Errorf("/health checks.%s = %q (%s), want %q", tt.check, got, body, tt.want)
			}
			if tt.doc != "" {
				_, pol := get(t, base+"/api/m1/dashboard/policy", s.AdminToken())
				if !strings.Contains(strings.ReplaceAll(pol, " ", ""), tt.doc) {
					t.Errorf("dashboard policy = %s, want %s", pol, tt.doc)
				}
			}
		})
	}
}
