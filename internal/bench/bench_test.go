package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// smallOptions is a run small enough for a unit test.
func smallOptions() Options {
	o := DefaultOptions()
	o.Requests, o.Concurrency, o.Warmup = 2000, 4, 100
	return o
}

// denier is an ext_authz server that denies every request.
type denier struct {
	authv3.UnimplementedAuthorizationServer
}

func (denier) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(code.Code_PERMISSION_DENIED), Message: "policy_denied"},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Body: `{"error":"policy_denied"}`,
		}},
	}, nil
}

func TestRunInProcess(t *testing.T) {
	rep, err := Run(t.Context(), smallOptions())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Targets) != 2 || rep.Targets[0].Name != TargetNoop || rep.Targets[1].Name != TargetM1 {
		t.Fatalf("Run targets = %+v, want %s then %s", rep.Targets, TargetNoop, TargetM1)
	}
	for _, tg := range rep.Targets {
		if tg.Calls != 2000 || tg.Errors != 0 || tg.ChecksPerSec <= 0 || tg.P50 <= 0 || tg.P99 < tg.P50 {
			t.Errorf("Run(%s) = %d calls, %d errors %v, %.0f checks/s, p50 %s, p99 %s; want 2000 calls, no errors, throughput and latencies",
				tg.Name, tg.Calls, tg.Errors, tg.ErrorCounts, tg.ChecksPerSec, tg.P50, tg.P99)
		}
	}
	for _, tg := range rep.Targets {
		var inHist, inTimeline uint64
		for _, b := range tg.Histogram {
			inHist += b.Count
		}
		for _, iv := range tg.Timeline {
			inTimeline += iv.Calls
		}
		// The timeline leaves out a last part shorter than its step.
		if inHist != tg.Calls || len(tg.Timeline) == 0 || inTimeline > tg.Calls || inTimeline == 0 {
			t.Errorf("Run(%s): histogram holds %d calls, timeline %d in %d steps; want all %d in the histogram and a timeline",
				tg.Name, inHist, inTimeline, len(tg.Timeline), tg.Calls)
		}
	}
	m1 := rep.Targets[1]
	if !m1.InProcess || m1.Cache == nil || !m1.Cache.Enabled || m1.Cache.Hits != 2000 || m1.Cache.Misses != 0 {
		t.Errorf("Run(%s) cache = %+v, want enabled with 2000 hits and no misses", TargetM1, m1.Cache)
	}
	if rep.Ratio.Throughput <= 0 || rep.Ratio.P50 <= 0 || rep.Ratio.P99 <= 0 {
		t.Errorf("Run ratio = %+v, want positive", rep.Ratio)
	}

	var buf bytes.Buffer
	if err := WriteTable(&buf, rep); err != nil {
		t.Fatalf("WriteTable: %v", err)
	}
	for _, want := range []string{"checks/s", TargetNoop, TargetM1 + " (in-process)", TargetM1 + " / " + TargetNoop, "2000 hits"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("WriteTable = %q, want it to contain %q", buf.String(), want)
		}
	}
}

// TestRunDenied points the m1 target at a server that denies: every call
// must be reported as an error, not as a fast answer.
func TestRunDenied(t *testing.T) {
	addr, stop, err := startGRPC(t.Context(), denier{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	o := smallOptions()
	o.Addr = addr
	rep, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Targets) != 2 {
		t.Fatalf("Run targets = %+v, want 2", rep.Targets)
	}
	if base := rep.Targets[0]; base.Errors != 0 {
		t.Errorf("Run(%s) errors = %d %v, want 0", base.Name, base.Errors, base.ErrorCounts)
	}
	m1 := rep.Targets[1]
	if m1.InProcess || m1.Cache != nil || m1.Calls != 2000 || m1.Errors != 2000 {
		t.Errorf("Run(denying %s) = in-process %v, cache %+v, %d calls, %d errors; want external, 2000 calls all errors",
			m1.Name, m1.InProcess, m1.Cache, m1.Calls, m1.Errors)
	}
	for msg := range m1.ErrorCounts {
		if !strings.Contains(msg, "PermissionDenied policy_denied") {
			t.Errorf("Run(denying %s) error %q, want it to name the deny", m1.Name, msg)
		}
	}
}

func TestMainExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"unknown flag", []string{"--nope"}, 2},
		{"extra argument", []string{"now"}, 2},
		{"duration too long", []string{"--duration", "61s"}, 2},
		{"connections above concurrency", []string{"--concurrency", "2", "--connections", "3"}, 2},
		{"remote addr", []string{"--addr", "10.0.0.9:9191"}, 2},
		{"negative rate", []string{"--rate", "-1"}, 2},
		{"rate too high", []string{"--rate", "2e6"}, 2},
		{"rate not a number", []string{"--rate", "NaN"}, 2},
		{"host name addr", []string{"--addr", "example.com:9191"}, 2},
		{"unreachable addr", []string{"--addr", "127.0.0.1:1", "--requests", "10", "--warmup", "0"}, 2},
		{"remote noop addr", []string{"--noop-addr", "10.0.0.9:9191"}, 2},
		{"unreachable noop addr", []string{"--noop-addr", "127.0.0.1:1", "--requests", "10", "--warmup", "0"}, 2},
		{"serve-noop with other flags", []string{"--serve-noop", "127.0.0.1:0", "--mode", "grant"}, 2},
		{"serve-noop on a public address", []string{"--serve-noop", "0.0.0.0:0"}, 2},
		{"serve-noop without a port", []string{"--serve-noop", "127.0.0.1"}, 2},
		{"help", []string{"-h"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A --serve-noop accepted by mistake would serve until the
			// deadline and answer 0.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			var out, errOut bytes.Buffer
			if got := Main(ctx, tc.args, &out, &errOut); got != tc.want {
				t.Errorf("Main(%q) = %d, want %d (stderr %q)", tc.args, got, tc.want, errOut.String())
			}
		})
	}
}

// TestMainHelp: -h prints the help to stdout with --flags, as every other
// m1 command does; a usage error goes to stderr.
func TestMainHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if got := Main(t.Context(), []string{"-h"}, &out, &errOut); got != 0 || errOut.Len() != 0 {
		t.Fatalf("Main(-h) = %d, stderr %q; want 0 and nothing on stderr", got, errOut.String())
	}
	for _, want := range []string{"Usage:\n  m1 bench [flags]\n", "  --concurrency int\n      calls in flight per target (default \"16\")\n", "  --addr host:port\n", "  --json\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("Main(-h) stdout lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if got := Main(t.Context(), []string{"--nope"}, &out, &errOut); got != 2 || out.Len() != 0 || !strings.Contains(errOut.String(), "Run 'm1 bench -h' for help.") {
		t.Errorf("Main(--nope) = %d, stdout %q, stderr %q; want 2 and a short usage error on stderr", got, out.String(), errOut.String())
	}
}

// TestMain lets this test binary stand in for m1 as the child process of
// `m1 bench --addr` (StartNoopProcess runs os.Executable() bench
// --serve-noop …).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "bench" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		code := Main(ctx, os.Args[2:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestMainAddrBaselineInItsOwnProcess: with --addr, m1-authz is a process
// of its own, and so is the no-op baseline (a child this run starts and
// stops), so that the ratio compares like with like.
func TestMainAddrBaselineInItsOwnProcess(t *testing.T) {
	addr, stop, err := startGRPC(t.Context(), noop{}) // stands in for m1-authz
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	var out, errOut bytes.Buffer
	if got := Main(t.Context(), []string{"--addr", addr, "--json", "--requests", "200", "--concurrency", "2", "--warmup", "10"}, &out, &errOut); got != 0 {
		t.Fatalf("Main(--addr) = %d, want 0 (stderr %q)", got, errOut.String())
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("Main(--addr --json) output is not a Report: %v\n%s", err, out.String())
	}
	base := rep.Targets[0]
	if base.InProcess || base.PID == 0 || base.PID == os.Getpid() || base.Addr == "" || base.Addr != rep.Options.NoopAddr || base.Addr == addr || base.Calls != 200 || base.Errors != 0 {
		t.Fatalf("Main(--addr) baseline = %+v (options' noop_addr %q); want a process of its own answering all 200 calls", base, rep.Options.NoopAddr)
	}
	// The child is gone once Main returns.
	if err := reachable(t.Context(), base.Addr); err == nil {
		t.Errorf("the no-op server at %s still answers after Main returned", base.Addr)
	}
	if err := syscall.Kill(base.PID, 0); err == nil {
		t.Errorf("the no-op server's process %d is still running after Main returned", base.PID)
	}
}

// TestServeNoop: the no-op server prints its address, answers checks
// there (as the baseline of a run given --noop-addr), and stops with ctx.
func TestServeNoop(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	r, w := io.Pipe()
	served := make(chan error, 1)
	go func() { served <- ServeNoop(ctx, "127.0.0.1:0", w) }()
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimSpace(line)
	o := smallOptions()
	o.NoopAddr = addr
	rep, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if base := rep.Targets[0]; base.InProcess || base.Addr != addr || base.Calls != 2000 || base.Errors != 0 {
		t.Errorf("Run baseline = %+v; want the server at %s, not in-process, 2000 calls", base, addr)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rep); err != nil || !strings.Contains(buf.String(), "no-op server in its own process") {
		t.Errorf("WriteTable = %q, %v; want it to say where the no-op server ran", buf.String(), err)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("ServeNoop after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeNoop still serving 5s after its ctx ended")
	}
}

func TestMainJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	if got := Main(t.Context(), []string{"--json", "--requests", "200", "--concurrency", "2", "--warmup", "10"}, &out, &errOut); got != 0 {
		t.Fatalf("Main(--json) = %d, want 0 (stderr %q)", got, errOut.String())
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("Main(--json) output is not a Report: %v\n%s", err, out.String())
	}
	if len(rep.Targets) != 2 || rep.Targets[1].Calls != 200 {
		t.Errorf("Main(--json) targets = %+v, want 2 with 200 calls", rep.Targets)
	}
}

func TestCheckStatus(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resp     *authv3.CheckResponse
		wantCode codes.Code
		wantMsg  string
	}{
		{"ok", okResponse, codes.OK, ""},
		{"no status", &authv3.CheckResponse{}, codes.OK, ""},
		{"denied", &authv3.CheckResponse{Status: &status.Status{Code: 7, Message: "token_missing"}}, codes.PermissionDenied, "token_missing"},
	} {
		b, err := proto.Marshal(tc.resp)
		if err != nil {
			t.Fatal(err)
		}
		c, msg, err := checkStatus(b)
		if err != nil || c != tc.wantCode || msg != tc.wantMsg {
			t.Errorf("checkStatus(%s) = %v, %q, %v; want %v, %q", tc.name, c, msg, err, tc.wantCode, tc.wantMsg)
		}
	}
	if _, _, err := checkStatus([]byte{0x0a, 0x05, 0x08}); err == nil {
		t.Error("checkStatus(truncated) = nil error, want one")
	}
}

// TestRunAtRate: with --rate the measured calls are spread over time (400
// calls at 2,000/s take at least 0.2 s per target), not sent as fast as
// they are answered.
func TestRunAtRate(t *testing.T) {
	o := smallOptions()
	o.Requests, o.Rate = 400, 2000
	rep, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, tg := range rep.Targets {
		if tg.Calls != 400 || tg.Errors != 0 || tg.ChecksPerSec > 2000*1.05 {
			t.Errorf("Run(%s, 2000/s) = %d calls, %d errors, %.0f checks/s; want 400 calls, no errors, at most ~2000/s",
				tg.Name, tg.Calls, tg.Errors, tg.ChecksPerSec)
		}
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rep); err != nil || !strings.Contains(buf.String(), "400 calls at 2000/s per target") {
		t.Errorf("WriteTable = %q, %v; want it to name the rate", buf.String(), err)
	}
}

func TestPacer(t *testing.T) {
	ms := time.Millisecond
	p := &pacer{max: 10, limit: time.Second, rate: 1000}
	for _, tc := range []struct {
		elapsed time.Duration
		hits    uint64
		wait    time.Duration
		stop    bool
	}{
		{0, 0, 0, false},          // the first call is due at once
		{0, 5, 5 * ms, false},     // the sixth at 5 ms
		{6 * ms, 5, 0, false},     // late: at once
		{995 * ms, 9, 0, false},   // due at 9 ms, long past
		{0, 10, 0, true},          // max reached
		{time.Second, 3, 0, true}, // time limit
	} {
		wait, stop := p.Pace(tc.elapsed, tc.hits)
		if wait != tc.wait || stop != tc.stop {
			t.Errorf("Pace(%s, %d) = %s, %v; want %s, %v", tc.elapsed, tc.hits, wait, stop, tc.wait, tc.stop)
		}
	}
	// Never waits past the time limit.
	p = &pacer{limit: 100 * ms, rate: 1}
	if wait, stop := p.Pace(10*ms, 1); wait != 90*ms || stop {
		t.Errorf("Pace near the limit = %s, %v; want 90ms, false", wait, stop)
	}
	// Unpaced: never waits.
	p = &pacer{limit: time.Second}
	if wait, stop := p.Pace(0, 1000); wait != 0 || stop {
		t.Errorf("unpaced Pace = %s, %v; want 0, false", wait, stop)
	}
}
