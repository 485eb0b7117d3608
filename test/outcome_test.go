package test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/testenv"
)

// TestToolOutcomes closes DESIGN §2's loop end to end: calls through the
// dev proxy (which sends Envoy's access-log entries) to the demo tool
// produce a result event per allowed call, linked to its decision, with
// the tool's status, and move the tool-execution metrics; a denied call
// produces none; m1 audit export --format calls shows them side by side.
func TestToolOutcomes(t *testing.T) {
	dir := t.TempDir()
	data, workspace := filepath.Join(dir, "data"), filepath.Join(dir, "workspace")
	if err := os.MkdirAll(workspace, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(workspace, "notes.txt"), []byte("notes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tool := startProc(t, "m1-demo-tool", toolPath, []string{"--listen", "127.0.0.1:0", "--dir", workspace}, nil)
	toolAddr := tool.firstLine(t)
	s := startSidecar(t, []string{"--data-dir", data})
	proxyAddr := freeAddr(t)
	proxy := startProc(t, "m1 dev-proxy", cliPath, []string{"dev-proxy", "--listen", proxyAddr, "--authz", s.GRPCAddr, "--upstream", "http://" + toolAddr}, nil)
	proxy.firstLine(t)

	for _, c := range []struct {
		tool, body string
		status     int
	}{
		{"read_file", `{"path":"notes.txt"}`, 200},                   // allowed, the tool answers
		{"read_file", `{"path":"missing.txt"}`, 404},                 // allowed, the tool fails
		{"write_file", `{"path":"x.txt","content":"no token"}`, 401}, // denied: nothing runs
	} {
		resp, err := http.Post("http://"+proxyAddr+"/tools/"+c.tool, "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Fatalf("POST /tools/%s %s = %d, want %d\ndev-proxy:\n%s", c.tool, c.body, resp.StatusCode, c.status, proxy)
		}
	}

	want := map[string]float64{
		`m1_tool_executions_total{outcome="succeeded",tool="read_file"}`: 1,
		`m1_tool_executions_total{outcome="failed",tool="read_file"}`:    1,
		`m1_tool_execution_errors_total{tool="read_file"}`:               1,
		`m1_tool_execution_duration_seconds_count`:                       2,
		`m1_access_log_entries_ignored_total{reason="denied"}`:           1,
		`m1_access_log_entries_total`:                                    3,
	}
	var mismatch string
	deadline := time.Now().Add(startTimeout)
	for {
		mismatch = ""
		m := s.metrics(t)
		for series, v := range want {
			if m[series] != v {
				mismatch += fmt.Sprintf("\n%s = %v, want %v", series, m[series], v)
			}
		}
		if mismatch == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("outcome metrics after %v:%s\ndev-proxy:\n%s", startTimeout, mismatch, proxy)
		}
		time.Sleep(20 * time.Millisecond)
	}

	st := openStore(t, "", data)
	ctx := context.Background()
	var decisions, results []store.Event
	testenv.Eventually(t, startTimeout, "two result events in the store", func() bool {
		decisions, results = decisions[:0], results[:0]
		_ = st.Events(ctx, store.Filter{}, func(e store.Event) error {
			switch e.Kind {
			case store.KindDecision:
				decisions = append(decisions, e)
			case store.KindResult:
				results = append(results, e)
			}
			return nil
		})
		return len(results) == 2 && len(decisions) == 3
	})
	for i, w := range []struct {
		outcome string
		status  int
	}{{"succeeded", 200}, {"failed", 404}} {
		r, d := results[i], decisions[i]
		if r.DecisionID != d.DecisionID || d.Decision != "allow" || r.Tool != "read_file" || r.Decision != w.outcome || r.Status != w.status || r.LatencyMicros <= 0 {
			t.Errorf("result %d = %+v for decision %+v; want %s with status %d, linked by decision_id", i+1, r, d, w.outcome, w.status)
		}
	}

	cmd := exec.Command(cliPath, "audit", "export", "--data-dir", data, "--since", "1h", "--format", "calls")
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("m1 audit export --format calls: %v\n%s", err, out)
	}
	for _, d := range decisions[:2] {
		if !strings.Contains(string(out), d.DecisionID) {
			t.Errorf("export --format calls lacks decision %s:\n%s", d.DecisionID, out)
		}
	}
	if !strings.Contains(string(out), "succeeded") || !strings.Contains(string(out), "failed (tool_error)") {
		t.Errorf("export --format calls does not show the outcomes:\n%s", out)
	}
}
