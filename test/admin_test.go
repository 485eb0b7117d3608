package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

// TestGRPCHealthAndReflection checks what Envoy's and Kubernetes' gRPC
// health checks and grpcurl see.
func TestGRPCHealthAndReflection(t *testing.T) {
	t.Parallel()
	s := startSidecar(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	hc := healthpb.NewHealthClient(s.conn)
	for _, svc := range []string{"", authzService} {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Errorf("Health/Check(%q): %v", svc, err)
			continue
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Health/Check(%q) = %v, want SERVING", svc, resp.GetStatus())
		}
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Errorf("Health/Check(no.such.Service) error = %v, want NotFound", err)
	}

	stream, err := reflectionpb.NewServerReflectionClient(s.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("ServerReflectionInfo: %v", err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
	}); err != nil {
		t.Fatalf("reflection: send ListServices: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection: ListServices: %v", err)
	}
	_ = stream.CloseSend()
	var names []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		names = append(names, svc.GetName())
	}
	for _, want := range []string{authzService, "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection ListServices = %q, want %s in it", names, want)
		}
	}
}

// TestVersion: every binary reports the one version stamped at link time.
func TestVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"m1-authz", []string{binPath, "--version"}},
		{"m1-orchestrator", []string{orchPath, "--version"}},
		{"m1-demo-tool", []string{toolPath, "--version"}},
		{"m1", []string{cliPath, "version"}},
		{"m1", []string{cliPath, "--version"}},
	} {
		out, err := exec.Command(tc.args[0], tc.args[1:]...).CombinedOutput()
		if want := tc.name + " " + binVersion + " ("; err != nil || !strings.HasPrefix(string(out), want) {
			t.Errorf("%s %s = %q, %v; want it to start %q", tc.name, tc.args[1], out, err, want)
		}
	}
}

// TestAdminHTTP checks the admin port: health and metrics are open, the
// API needs the bearer token (here from M1_ADMIN_TOKEN).
func TestAdminHTTP(t *testing.T) {
	t.Parallel()
	const token = "env-admin-token-0123456789"
	s := startSidecar(t, nil, "M1_ADMIN_TOKEN="+token)

	code, doc := s.health(t)
	if code != http.StatusOK || doc.Status != "ok" {
		t.Errorf("GET /health = %d status %q, want 200 ok", code, doc.Status)
	}
	if doc.Version != binVersion {
		t.Errorf("GET /health version = %q, want %q (from -ldflags)", doc.Version, binVersion)
	}
	if code, body := s.get(t, "/metrics", ""); code != http.StatusOK || !strings.Contains(string(body), "m1_build_info{") ||
		!strings.Contains(string(body), `version="`+binVersion+`"} 1`) {
		t.Errorf("GET /metrics = %d, want m1_build_info{…,version=%q} 1 in it", code, binVersion)
	}
	for _, c := range []string{"policy", "keys", "redis", "database", "memory"} {
		if doc.Checks[c].Status == "" {
			t.Errorf("GET /health checks.%s has no status; checks = %v", c, doc.Checks)
		}
	}
	if got := doc.Checks["policy"].Info["revision"]; got != s.Revision {
		t.Errorf("GET /health checks.policy.info.revision = %v, want %q (the started line's)", got, s.Revision)
	}
	for _, p := range []string{"/health/live", "/health/ready", "/health/startup", "/metrics"} {
		if code, body := s.get(t, p, ""); code != http.StatusOK {
			t.Errorf("GET %s without a token = %d, want 200: %s", p, code, body)
		}
	}

	const api = "/api/m1/dashboard/policy"
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "not-" + token, http.StatusUnauthorized},
		{"token prefix", token[:len(token)-1], http.StatusUnauthorized},
		{"right token", token, http.StatusOK},
	} {
		code, body := s.get(t, api, tc.token)
		if code != tc.want {
			t.Errorf("GET %s (%s) = %d, want %d: %s", api, tc.name, code, tc.want, body)
		}
		if code == http.StatusUnauthorized {
			var e struct{ Error string }
			if json.Unmarshal(body, &e) != nil || e.Error == "" {
				t.Errorf("GET %s (%s): 401 body is not a JSON error: %s", api, tc.name, body)
			}
		}
	}
	// The flag's token is not the env's: flags win, and the env token is
	// then refused.
	f := startSidecar(t, []string{"--admin-token", "flag-token-0123456789"}, "M1_ADMIN_TOKEN="+token)
	if code, _ := f.get(t, api, token); code != http.StatusUnauthorized {
		t.Errorf("GET %s with the env token while --admin-token is set = %d, want 401", api, code)
	}
	if code, _ := f.get(t, api, "flag-token-0123456789"); code != http.StatusOK {
		t.Errorf("GET %s with the --admin-token token = %d, want 200", api, code)
	}
}

// TestAdminTokenGenerated checks that without M1_ADMIN_TOKEN a token is
// generated and logged with the dashboard URL, and that it works.
func TestAdminTokenGenerated(t *testing.T) {
	t.Parallel()
	s := startSidecar(t, []string{"--admin-token="})
	raw := s.log.generatedTokenURL(startTimeout)
	u, err := url.Parse(raw)
	if raw == "" || err != nil || u.Query().Get("token") == "" {
		t.Fatalf("dashboard_url of the generated token = %q, want a URL with ?token=", raw)
	}
	if u.Host != s.AdminAddr {
		t.Errorf("dashboard_url host = %q, want the admin address %q", u.Host, s.AdminAddr)
	}
	if code, body := s.get(t, "/api/m1/dashboard/policy", u.Query().Get("token")); code != http.StatusOK {
		t.Errorf("GET /api/m1/dashboard/policy with the generated token = %d, want 200: %s", code, body)
	}
	if code, _ := s.get(t, "/api/m1/dashboard/policy", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /api/m1/dashboard/policy without a token = %d, want 401", code)
	}
}

// TestMetrics checks the decision-path series of DESIGN §8 after a few
// checks.
func TestMetrics(t *testing.T) {
	t.Parallel()
	s := startSidecar(t, nil)
	for range 2 { // the second read_file is a cache hit
		expect(t, "mcp read_file", s.check(t, fixture(t, mcpRead)), allow)
	}
	expect(t, "mcp write_file no token", s.check(t, fixture(t, "mcp-tools-call-write-file-no-token")), deny(401, "policy_denied"))
	expect(t, "mcp batch", s.check(t, request(t, mcpRead, withBody("[]"))), deny(400, "bad_request"))

	// The process is this test's alone, so the counts are exact.
	m := s.metrics(t)
	want := map[string]float64{
		`m1_policy_checks_total{decision="allow",reason="ok"}`:           2,
		`m1_policy_checks_total{decision="deny",reason="policy_denied"}`: 1,
		`m1_policy_checks_total{decision="deny",reason="bad_request"}`:   1,
		`m1_check_duration_seconds_count`:                                4,
		`m1_check_duration_seconds_bucket{le="+Inf"}`:                    4,
		`m1_policy_eval_duration_seconds_count`:                          2, // read_file once, write_file
		`m1_policy_cache_hits_total{tier="l1"}`:                          1,
		`m1_policy_cache_misses_total`:                                   2,
		fmt.Sprintf(`m1_policy_bundle_info{revision=%q}`, s.Revision):    1,
	}
	for series, w := range want {
		if v, ok := m[series]; !ok {
			t.Errorf("/metrics has no %s", series)
		} else if v != w {
			t.Errorf("/metrics %s = %v, want %v", series, v, w)
		}
	}
	for _, series := range []string{`m1_check_duration_seconds_sum`, `m1_policy_eval_duration_seconds_sum`} {
		if _, ok := m[series]; !ok {
			t.Errorf("/metrics has no %s", series)
		}
	}
	if s.Revision == "" {
		t.Errorf("started line has no policy_revision")
	}
}
