package devproxy_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// metric returns the value of the counter name{labels} in reg, 0 when absent.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return counterValue(m)
		}
	}
	return 0
}

func counterValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

// The proxy sends Envoy's access-log entries to m1-authz: allowed calls
// become tool outcomes (the tool's status, an unreachable tool), a denied
// one is counted as denied, and a client's own x-m1-decision-id changes
// nothing.
func TestAccessLogOutcomes(t *testing.T) {
	a := startAuthz(t)
	up := startUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "read_file") && len(r.Header.Get("X-Fail")) > 0 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	proxy := startProxy(t, a.addr, up.url, nil)
	dead := startProxy(t, a.addr, "http://"+freeAddr(t), nil) // nothing listens there

	read := `{"path":"notes.txt"}`
	json := map[string]string{"Content-Type": "application/json"}
	for _, c := range []struct {
		url    string
		header map[string]string
		tool   string
		status int
	}{
		{proxy, json, "read_file", 200},
		{proxy, map[string]string{"Content-Type": "application/json", "X-M1-Decision-Id": "0000forged"}, "read_file", 200},
		{proxy, map[string]string{"Content-Type": "application/json", "X-Fail": "1"}, "read_file", 500},
		{dead, json, "read_file", 503},
		{proxy, json, "write_file", 401}, // no approval: denied
	} {
		body := read
		if c.tool == "write_file" {
			body = `{"path":"x","content":"y"}`
		}
		if got := send(t, "POST", c.url+"/tools/"+c.tool, c.header, body); got.status != c.status {
			t.Fatalf("POST %s = %d %s, want %d", c.tool, got.status, got.body, c.status)
		}
	}
	want := []struct {
		name   string
		labels map[string]string
		n      float64
	}{
		{"m1_tool_executions_total", map[string]string{"tool": "read_file", "outcome": "succeeded"}, 2},
		{"m1_tool_executions_total", map[string]string{"tool": "read_file", "outcome": "failed"}, 2},
		{"m1_tool_execution_errors_total", map[string]string{"tool": "read_file"}, 2},
		{"m1_access_log_entries_ignored_total", map[string]string{"reason": "denied"}, 1},
		{"m1_access_log_entries_total", nil, 5},
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, w := range want {
		for metric(t, a.reg, w.name, w.labels) != w.n {
			if time.Now().After(deadline) {
				t.Fatalf("%s%v = %v, want %v", w.name, w.labels, metric(t, a.reg, w.name, w.labels), w.n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, reason := range []string{"forged", "unknown_decision", "duplicate", "no_decision_id"} {
		if n := metric(t, a.reg, "m1_access_log_entries_ignored_total", map[string]string{"reason": reason}); n != 0 {
			t.Errorf("ignored{reason=%s} = %v, want 0", reason, n)
		}
	}
}
