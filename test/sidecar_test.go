package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/m1-agent/m1/internal/testenv"
)

// Bounds of every wait on the process under test. They are generous: the
// binary may be race-instrumented and share two cores with other tests.
const (
	startTimeout = 30 * time.Second // from exec to the "m1-authz started" line
	stopTimeout  = 20 * time.Second // from SIGTERM to exit
	checkTimeout = 15 * time.Second // one Check call
	httpTimeout  = 10 * time.Second // one admin HTTP request
)

// testAdminToken is the admin bearer token of sidecars started without one.
const testAdminToken = "e2e-admin-token"

// sidecar is one m1-authz process under test.
type sidecar struct {
	GRPCAddr  string // from the "m1-authz started" line
	AdminAddr string
	Revision  string // policy_revision of the started line
	Token     string // admin bearer token, when the test chose it

	cmd    *exec.Cmd
	log    *logWriter
	exited chan struct{} // closed when the process has exited
	err    error         // cmd.Wait's result, set before exited closes
	conn   *grpc.ClientConn
}

// startSidecar starts m1-authz on 127.0.0.1:0 with args (after the test
// defaults, so they win) and env (KEY=VALUE, on top of the test process's
// environment without any M1_*, REDIS_* or LOG_LEVEL), waits for its
// started line, and stops it with SIGTERM when the test ends, failing the
// test unless it exits 0.
func startSidecar(t *testing.T, args []string, env ...string) *sidecar {
	t.Helper()
	s := launch(t, args, env)
	t.Cleanup(func() { s.shutDown(t) })
	select {
	case <-s.log.started:
	case <-s.exited:
		t.Fatalf("m1-authz exited before it started (%v); stderr:\n%s", s.err, s.log)
	case <-time.After(startTimeout):
		t.Fatalf("m1-authz did not log \"m1-authz started\" within %v; stderr:\n%s", startTimeout, s.log)
	}
	s.GRPCAddr, s.AdminAddr, s.Revision = s.log.grpcAddr, s.log.adminAddr, s.log.revision
	if s.GRPCAddr == "" || s.AdminAddr == "" {
		t.Fatalf("started line without grpc_addr or admin_addr; stderr:\n%s", s.log)
	}
	conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("gRPC client for %s: %v", s.GRPCAddr, err)
	}
	t.Cleanup(func() { conn.Close() })
	s.conn = conn
	return s
}

// launch execs the binary without waiting for it to start.
func launch(t *testing.T, args, env []string) *sidecar {
	t.Helper()
	dir := t.TempDir()
	all := []string{"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data")}
	s := &sidecar{log: newLogWriter(), exited: make(chan struct{})}
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "admin-token") }) &&
		!slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "M1_ADMIN_TOKEN=") }) {
		all = append(all, "--admin-token", testAdminToken)
		s.Token = testAdminToken
	}
	// The tests check what is decided, not how fast: a policy evaluation
	// on a loaded CI machine may take longer than the 100 ms default.
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "policy-timeout") }) &&
		!slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "M1_POLICY_TIMEOUT=") }) {
		all = append(all, "--policy-timeout", "5s")
	}
	all = append(all, args...)
	seedStore(t, all, env)
	s.cmd = exec.Command(binPath, all...)
	s.cmd.Dir = dir // the default --data-dir and any stray file land here
	s.cmd.Env = append(cleanEnv(), env...)
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start m1-authz: %v", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	return s
}

// seedStore creates the SQLite store of the data directory args and env
// name, when it has none, with a state epoch an hour old: a new store
// starts a new epoch (now + the clock skew) and refuses the tokens issued
// before it (state_reset, DESIGN §7), so tests that mint tokens at once
// start m1-authz as a sidecar that has been running a while. A store named
// by M1_DATABASE_URL is left alone.
func seedStore(t *testing.T, args, env []string) {
	t.Helper()
	dataDir := ""
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--data-dir="); ok {
			dataDir = v
		} else if a == "--data-dir" && i+1 < len(args) {
			dataDir = args[i+1]
		}
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "M1_DATABASE_URL=") && kv != "M1_DATABASE_URL=" {
			return
		}
	}
	if _, err := os.Stat(filepath.Join(dataDir, "m1.db")); err == nil {
		return
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	testenv.SeedDataDir(t, dataDir)
}

// cleanEnv is the test's environment without the variables m1-authz reads,
// so that a developer's shell does not change what the tests see.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "M1_") || strings.HasPrefix(kv, "REDIS_") || strings.HasPrefix(kv, "LOG_LEVEL=") {
			continue
		}
		env = append(env, kv)
	}
	if os.Getenv("GORACE") == "" {
		// A race-instrumented binary sleeps a second at exit by default,
		// to let late race reports out; a tenth is plenty here.
		env = append(env, "GORACE=atexit_sleep_ms=100")
	}
	return env
}

// terminate sends SIGTERM.
func (s *sidecar) terminate(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("SIGTERM m1-authz: %v", err)
	}
}

// waitExit waits at most d for the process to exit and returns its exit
// code (-1 when killed by a signal); ok is false on timeout.
func (s *sidecar) waitExit(d time.Duration) (code int, ok bool) {
	select {
	case <-s.exited:
		return s.cmd.ProcessState.ExitCode(), true
	case <-time.After(d):
		return 0, false
	}
}

// shutDown stops the process if it still runs (SIGTERM, then SIGKILL after
// stopTimeout) and fails t unless it exited 0 without a data race.
func (s *sidecar) shutDown(t *testing.T) {
	select {
	case <-s.exited:
	default:
		s.terminate(t)
		if _, ok := s.waitExit(stopTimeout); !ok {
			t.Errorf("m1-authz did not exit within %v of SIGTERM; killed", stopTimeout)
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("m1-authz exit status = %d, want 0", code)
	}
	if strings.Contains(s.log.String(), "WARNING: DATA RACE") {
		t.Errorf("m1-authz reported a data race")
	}
	if t.Failed() {
		t.Logf("m1-authz stderr:\n%s", s.log)
	}
}

// runToExit runs m1-authz with args and env, expecting it to exit on its
// own (a startup failure), and returns the exit code and stderr.
func runToExit(t *testing.T, args []string, env ...string) (int, string) {
	t.Helper()
	s := launch(t, args, env)
	code, ok := s.waitExit(startTimeout)
	if !ok {
		_ = s.cmd.Process.Kill()
		<-s.exited
		t.Fatalf("m1-authz still running after %v, want a startup failure; stderr:\n%s", startTimeout, s.log)
	}
	return code, s.log.String()
}

// logWriter collects the process's output and spots the started line.
type logWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte

	started                       chan struct{} // closed at the started line
	grpcAddr, adminAddr, revision string        // set before started closes
	tokenLogged                   chan struct{} // closed at the generated-token line
	tokenURL                      string        // its dashboard_url, set before tokenLogged closes
}

func newLogWriter() *logWriter {
	return &logWriter{started: make(chan struct{}), tokenLogged: make(chan struct{})}
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.line(w.partial[:i])
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

func (w *logWriter) line(b []byte) {
	var rec struct {
		Msg       string `json:"msg"`
		GRPCAddr  string `json:"grpc_addr"`
		AdminAddr string `json:"admin_addr"`
		Revision  string `json:"policy_revision"`
		URL       string `json:"dashboard_url"`
	}
	if json.Unmarshal(b, &rec) != nil {
		return // not a log record (a panic, a race report, the final error line)
	}
	switch rec.Msg {
	case "m1-authz started":
		select {
		case <-w.started:
		default:
			w.grpcAddr, w.adminAddr, w.revision = rec.GRPCAddr, rec.AdminAddr, rec.Revision
			close(w.started)
		}
	case "admin token generated; set M1_ADMIN_TOKEN to choose one":
		select {
		case <-w.tokenLogged:
		default:
			w.tokenURL = rec.URL
			close(w.tokenLogged)
		}
	}
}

func (w *logWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// generatedTokenURL waits for the line that logs a generated admin token
// and returns its dashboard URL ("" if none came within d).
func (w *logWriter) generatedTokenURL(d time.Duration) string {
	select {
	case <-w.tokenLogged:
	case <-time.After(d):
		return ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tokenURL
}

// check sends one CheckRequest. M1 answers every decision with a
// CheckResponse, so a gRPC error fails the test.
func (s *sidecar) check(t *testing.T, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(s.conn).Check(ctx, req)
	if err != nil {
		t.Fatalf("Check: gRPC error %v, want a CheckResponse", err)
	}
	return resp
}

// get fetches an admin path, with "Authorization: Bearer token" when token
// is not empty.
func (s *sidecar) get(t *testing.T, path, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+s.AdminAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: httpTimeout}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", path, err)
	}
	return resp.StatusCode, body
}

// healthDoc is the /health document (DESIGN §8).
type healthDoc struct {
	Status  string `json:"status"`
	Version string `json:"version"`
	Checks  map[string]struct {
		Status string         `json:"status"`
		Detail string         `json:"detail"`
		Info   map[string]any `json:"info"`
	} `json:"checks"`
}

func (s *sidecar) health(t *testing.T) (int, healthDoc) {
	t.Helper()
	code, body := s.get(t, "/health", "")
	var doc healthDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("GET /health: body is not JSON: %v\n%s", err, body)
	}
	return code, doc
}

// metrics scrapes /metrics into a map from series ("name{labels}" as
// Prometheus prints it) to value.
func (s *sidecar) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	code, body := s.get(t, "/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d, want 200", code)
	}
	m := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics: bad sample line %q", line)
		}
		m[line[:i]] = v
	}
	return m
}

// writeBundle writes a policy bundle (path relative to the bundle root ->
// content) into a fresh directory and returns it.
func writeBundle(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, content := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
