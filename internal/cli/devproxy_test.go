package cli

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/testenv"
)

func TestDevProxyFlags(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"help", []string{"dev-proxy", "-h"}, 0, "NOT for production", ""},
		{"missing --upstream", []string{"dev-proxy"}, 2, "", "--upstream is required"},
		{"upstream not a URL", []string{"dev-proxy", "--upstream", "localhost:3000"}, 2, "", "Upstream"},
		{"zero --max-request-bytes", []string{"dev-proxy", "--upstream", "http://127.0.0.1:3000", "--max-request-bytes", "0"}, 2, "", "MaxRequestBytes"},
		{"bad --log-level", []string{"dev-proxy", "--upstream", "http://127.0.0.1:3000", "--log-level", "loud"}, 2, "", "--log-level"},
		{"positional argument", []string{"dev-proxy", "--upstream", "http://127.0.0.1:3000", "extra"}, 2, "", "unexpected arguments"},
		{"unknown flag", []string{"dev-proxy", "--upstream", "http://127.0.0.1:3000", "--envoy"}, 2, "", "not defined: -envoy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1Env(t, nil, tt.args...)
			if r.code != tt.wantCode || !strings.Contains(r.stdout, tt.wantStdout) || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 %s = %v\nwant exit %d, stdout with %q, stderr with %q", strings.Join(tt.args, " "), r, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}

// TestDevProxyRuns starts the proxy in front of a real m1-authz, sends one
// request through it and stops it with the context, as SIGINT would.
func TestDevProxyRuns(t *testing.T) {
	authzAddr := startSidecar(t)
	tool := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "tool ran")
	}))
	defer tool.Close()
	addr, stop := startDevProxy(t, "--authz", authzAddr, "--upstream", tool.URL)
	resp, err := http.Post(addr+"/tools/read_file", "application/json", strings.NewReader(`{"path":"notes.txt"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "tool ran" {
		t.Errorf("read_file through dev-proxy = %d %q, want 200 from the tool", resp.StatusCode, body)
	}
	if stderr := stop(); !strings.Contains(stderr, "do not use it in production") {
		t.Errorf("stderr lacks the development-only warning:\n%s", stderr)
	}
}

// The proxy's gRPC to a sidecar that requires client certificates: the
// certificate's SPIFFE ID is the principal the tool is told.
func TestDevProxyOverMutualTLS(t *testing.T) {
	sc := startTLSSidecar(t)
	tool := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("x-m1-principal"))
	}))
	defer tool.Close()
	addr, stop := startDevProxy(t, "--authz", "https://"+sc.grpcAddr, "--upstream", tool.URL,
		"--ca-file", sc.ca.File, "--cert-file", sc.client.CertFile, "--key-file", sc.client.KeyFile)
	resp, err := http.Post(addr+"/tools/read_file", "application/json", strings.NewReader(`{"path":"notes.txt"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != agentSPIFFEID {
		t.Errorf("read_file through dev-proxy over mTLS = %d, principal %q; want 200, %q", resp.StatusCode, body, agentSPIFFEID)
	}
	stop()
}

// startDevProxy runs m1 dev-proxy --listen 127.0.0.1:0 with args and
// returns its URL and a stop that interrupts it (as SIGINT would), checks
// it exits 0 and returns its stderr.
func startDevProxy(t *testing.T, args ...string) (string, func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var stdout, stderr testenv.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"dev-proxy", "--listen", "127.0.0.1:0"}, args...),
			&cmdIO{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, lookupEnv: func(string) (string, bool) { return "", false }})
	}()

	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for addr == "" {
		if time.Now().After(deadline) {
			t.Fatalf("dev-proxy did not start: stdout %q stderr %q", stdout.String(), stderr.String())
		}
		if out := stdout.String(); strings.Contains(out, " -> ") {
			addr, _, _ = strings.Cut(strings.TrimPrefix(out, "m1 dev-proxy: "), " ")
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return addr, func() string {
		t.Helper()
		cancel()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("dev-proxy exit = %d after interrupt, want 0; stderr:\n%s", code, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("dev-proxy did not stop after interrupt")
		}
		return stderr.String()
	}
}
