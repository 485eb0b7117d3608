package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const prometheusHint = "apt-get install -y prometheus (Debian's package; make test and .ci/run do this when they can)"

// Prometheus is one Prometheus server owned by a test: a temporary
// configuration and TSDB, listening on 127.0.0.1 and a free port,
// scraping the test's targets every ScrapeInterval.
type Prometheus struct {
	URL string // http://127.0.0.1:port

	cmd  *exec.Cmd
	done chan struct{}
	log  *bytes.Buffer
}

// PrometheusScrapeInterval is the scrape (and evaluation) interval of
// StartPrometheus: short, so that rates exist a few seconds after start.
const PrometheusScrapeInterval = time.Second

// StartPrometheus starts a Prometheus server scraping /metrics of the
// targets (job name → host:port list), waits until it is ready, and stops
// it with t.Cleanup. Without the binary the test fails with an install
// hint under CI, and skips loudly otherwise.
func StartPrometheus(t testing.TB, jobs map[string][]string) *Prometheus {
	t.Helper()
	bin := RequireBinary(t, "prometheus", prometheusHint)
	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: %s\n  scrape_timeout: %s\n  evaluation_interval: %s\nscrape_configs:\n",
		PrometheusScrapeInterval, PrometheusScrapeInterval, PrometheusScrapeInterval)
	for job, targets := range jobs {
		quoted, _ := json.Marshal(targets) // a JSON list is a YAML flow sequence
		fmt.Fprintf(&cfg, "  - job_name: %q\n    static_configs:\n      - targets: %s\n", job, quoted)
	}
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	p := &Prometheus{URL: "http://127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{}), log: &bytes.Buffer{}}
	p.cmd = exec.Command(bin, "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port), "--log.level=warn")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("prometheus exited at start:\n%s", p.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus on %s not ready after 30s: %v\n%s", p.URL, err, p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Value evaluates an instant query whose answer is one number (a scalar,
// or a vector of one sample), and reports whether it had one.
func (p *Prometheus) Value(t testing.TB, query string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(p.URL + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		t.Fatalf("prometheus query %q: %v", query, err)
	}
	defer resp.Body.Close()
	var a struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || a.Status != "success" {
		t.Fatalf("prometheus query %q: %v %s", query, err, a.Error)
	}
	var raw []any
	switch a.Data.ResultType {
	case "scalar":
		_ = json.Unmarshal(a.Data.Result, &raw)
	case "vector":
		var v []struct {
			Value []any `json:"value"`
		}
		_ = json.Unmarshal(a.Data.Result, &v)
		if len(v) != 1 {
			return 0, false
		}
		raw = v[0].Value
	}
	if len(raw) != 2 {
		return 0, false
	}
	s, _ := raw[1].(string)
	f, err := strconv.ParseFloat(s, 64)
	return f, err == nil
}

// WaitFor polls query until it has a value at least min (e.g. count(up ==
// 1) >= 3), or fails the test after timeout.
func (p *Prometheus) WaitFor(t testing.TB, query string, min float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if v, ok := p.Value(t, query); ok && v >= min {
			return
		}
		if time.Now().After(deadline) {
			v, ok := p.Value(t, query)
			t.Fatalf("prometheus: %s = %v (%v) after %s, want at least %v\n%s", query, v, ok, timeout, min, p.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
