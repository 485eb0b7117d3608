package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// sendSignal is a gRPC stats handler that closes sent once the client has
// written a request message to the connection.
type sendSignal struct {
	sent chan struct{}
	once atomic.Bool
}

func (h *sendSignal) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (h *sendSignal) HandleRPC(_ context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.OutPayload); ok && h.once.CompareAndSwap(false, true) {
		close(h.sent)
	}
}
func (h *sendSignal) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (h *sendSignal) HandleConn(context.Context, stats.ConnStats)                       {}

// TestDrainOnSIGTERM checks a graceful stop: a check in flight when
// SIGTERM arrives still gets its answer, gRPC health turns NOT_SERVING (or
// the port closes), /health reports draining, and the process exits 0.
func TestDrainOnSIGTERM(t *testing.T) {
	t.Parallel()
	dir := writeBundle(t, map[string]string{"authz.rego": formsPolicy})
	s := startSidecar(t, []string{"--policy-dir", dir, "--policy-timeout", "60s", "--cache-size", "0", "--drain-timeout", "30s"})
	slowCall := func(n int) *authv3.CheckRequest {
		return request(t, restList, withPath("/tools/slow"), withBody(fmt.Sprintf(`{"n":%d}`, n)))
	}

	// Size the slow policy to take about a second on this machine (and
	// this build: the binary may be race-instrumented).
	n := 200
	var took time.Duration
	for {
		start := time.Now()
		expect(t, "slow calibration", s.check(t, slowCall(n)), allow)
		if took = time.Since(start); took >= 100*time.Millisecond || n >= 20000 {
			break
		}
		n *= 2
	}
	sized := max(n, int(float64(n)*math.Sqrt(float64(time.Second)/float64(took))))
	t.Logf("slow policy: n=%d took %v; using n=%d", n, took, sized)
	n = sized

	healthConn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer healthConn.Close()
	hc := healthpb.NewHealthClient(healthConn)
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: authzService}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Health/Check before SIGTERM = %v, %v; want SERVING", r, err)
	}

	// Start the slow check on its own connection and wait until its
	// request is on the wire.
	sig := &sendSignal{sent: make(chan struct{})}
	conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithStatsHandler(sig))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type result struct {
		resp *authv3.CheckResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, slowCall(n))
		done <- result{resp, err}
	}()
	select {
	case <-sig.sent:
	case r := <-done:
		t.Fatalf("slow Check returned before SIGTERM could be sent: %v, %v", r.resp, r.err)
	case <-ctx.Done():
		t.Fatal("slow Check request was not sent")
	}
	s.terminate(t)

	// While the check drains: gRPC health says NOT_SERVING or the port
	// is closed, and /health says draining.
	sawHealth, sawDraining := false, false
	var r result
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case r = <-done:
			break wait
		case <-ctx.Done():
			t.Fatalf("slow Check did not return within %v of its start", checkTimeout)
		case <-tick.C:
		}
		if !sawHealth {
			hctx, hcancel := context.WithTimeout(ctx, time.Second)
			resp, err := hc.Check(hctx, &healthpb.HealthCheckRequest{Service: authzService})
			hcancel()
			switch {
			case err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING:
				sawHealth = true
			case err != nil && status.Code(err) == codes.Unavailable:
				sawHealth = true // GOAWAY and a closed listener
			case err != nil:
				t.Errorf("Health/Check while draining: %v, want NOT_SERVING or Unavailable", err)
				sawHealth = true
			}
		}
		if !sawDraining {
			code, doc, err := tryHealth(s.AdminAddr)
			if err == nil && code == http.StatusServiceUnavailable && doc.Status == "failing" {
				sawDraining = true
				// Draining fails readiness, not liveness.
				if code, err := tryGet(s.AdminAddr, "/health/ready"); err == nil && code != http.StatusServiceUnavailable {
					t.Errorf("GET /health/ready while draining = %d, want 503", code)
				}
				if code, err := tryGet(s.AdminAddr, "/health/live"); err == nil && code != http.StatusOK {
					t.Errorf("GET /health/live while draining = %d, want 200", code)
				}
			}
		}
	}
	if r.err != nil {
		t.Errorf("slow Check in flight at SIGTERM: gRPC error %v, want its answer", r.err)
	} else {
		expect(t, "slow in flight at SIGTERM", r.resp, allow)
	}
	if !sawHealth {
		t.Errorf("gRPC health stayed SERVING while draining")
	}
	if !sawDraining {
		t.Errorf("/health never answered 503 failing while draining")
	}

	code, ok := s.waitExit(stopTimeout)
	if !ok {
		t.Fatalf("m1-authz did not exit within %v of SIGTERM", stopTimeout)
	}
	if code != 0 {
		t.Errorf("m1-authz exit status after SIGTERM = %d, want 0", code)
	}
	// The port is closed now.
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	if _, err := authv3.NewAuthorizationClient(s.conn).Check(cctx, fixture(t, mcpRead)); status.Code(err) != codes.Unavailable {
		t.Errorf("Check after exit: error %v, want Unavailable", err)
	}
}

// tryHealth is GET /health that reports errors instead of failing: the
// server may be gone by the time it is called.
func tryHealth(addr string) (int, healthDoc, error) {
	var doc healthDoc
	resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + "/health")
	if err != nil {
		return 0, doc, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&doc)
	return resp.StatusCode, doc, err
}

// tryGet is an admin GET that reports errors instead of failing.
func tryGet(addr, path string) (int, error) {
	resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + path)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestNoSecretsInLogs checks that even at debug level no approval token,
// authorization or cookie header and no admin token reach the log.
func TestNoSecretsInLogs(t *testing.T) {
	t.Parallel()
	s := startSidecar(t, nil, "LOG_LEVEL=debug")
	req := request(t, mcpRead,
		withHeader("authorization", "Bearer sekrit-authorization"),
		withHeader("cookie", "session=sekrit-cookie"),
		withHeader("x-m1-approval-token", "eyJhbGciOiJFZERTQSJ9.sekrit-token.c2lnbmF0dXJl"))
	s.check(t, req) // allowed or not: token verification decides
	s.check(t, request(t, mcpRead, withBody("[]"), withHeader("authorization", "Bearer sekrit-authorization")))
	s.terminate(t)
	if _, ok := s.waitExit(stopTimeout); !ok {
		t.Fatalf("m1-authz did not exit within %v of SIGTERM", stopTimeout)
	}
	log := s.log.String()
	if !strings.Contains(log, `"msg":"decision"`) {
		t.Errorf("no decision line at LOG_LEVEL=debug")
	}
	for _, secret := range []string{"sekrit", s.Token} {
		if strings.Contains(log, secret) {
			t.Errorf("log contains %q", secret)
		}
	}
}

// TestConfigPrecedence checks flag > env > --config file > default,
// observed through the body_too_large threshold.
func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "m1-authz.yaml")
	if err := os.WriteFile(file, []byte("# m1-authz config\nmax-body-bytes: 100\nlog-level: info\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		env   []string
		limit int
	}{
		{"default", nil, nil, 1 << 20},
		{"file", []string{"--config", file}, nil, 100},
		{"env over file", []string{"--config", file}, []string{"M1_MAX_BODY_BYTES=200"}, 200},
		{"flag over env and file", []string{"--config", file, "--max-body-bytes", "300"}, []string{"M1_MAX_BODY_BYTES=200"}, 300},
		{"flag before --config", []string{"--max-body-bytes=300", "--config=" + file}, nil, 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startSidecar(t, tt.args, tt.env...)
			at := request(t, restList, withPath("/tools/read_file"), withBody(restBodyOfSize(tt.limit)))
			over := request(t, restList, withPath("/tools/read_file"), withBody(restBodyOfSize(tt.limit+1)))
			expect(t, fmt.Sprintf("body of %d bytes", tt.limit), s.check(t, at), allow)
			expect(t, fmt.Sprintf("body of %d bytes", tt.limit+1), s.check(t, over), deny(413, "body_too_large"))
		})
	}
	t.Run("unknown key", func(t *testing.T) {
		t.Parallel()
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(bad, []byte("max-body-byte: 100\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		code, stderr := runToExit(t, []string{"--config", bad})
		if code == 0 || !strings.Contains(stderr, "max-body-byte") {
			t.Errorf("m1-authz --config with an unknown key: exit %d, stderr %q; want non-zero naming the key", code, stderr)
		}
	})
	t.Run("bad env value", func(t *testing.T) {
		t.Parallel()
		code, stderr := runToExit(t, nil, "M1_MAX_BODY_BYTES=lots")
		if code == 0 || !strings.Contains(stderr, "M1_MAX_BODY_BYTES") {
			t.Errorf("m1-authz with M1_MAX_BODY_BYTES=lots: exit %d, stderr %q; want non-zero naming the variable", code, stderr)
		}
	})
}

// TestAddressInUse checks that a port already taken stops the process at
// start with a message naming the address.
func TestAddressInUse(t *testing.T) {
	t.Parallel()
	for _, flag := range []string{"--grpc-addr", "--admin-addr"} {
		t.Run(flag, func(t *testing.T) {
			t.Parallel()
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			addr := l.Addr().String()
			code, stderr := runToExit(t, []string{flag, addr})
			if code == 0 || !strings.Contains(lastLine(stderr), addr) {
				t.Errorf("m1-authz %s %s (in use): exit %d, stderr %q; want non-zero naming the address", flag, addr, code, stderr)
			}
		})
	}
}
