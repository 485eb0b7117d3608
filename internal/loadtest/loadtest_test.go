package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/m1-agent/m1/internal/bench"
)

// buildBinaries builds the programs a load test starts into a temporary
// directory (without the race detector: they are measured, not tested).
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", dir+string(filepath.Separator),
		"github.com/m1-agent/m1/cmd/m1-authz", "github.com/m1-agent/m1/cmd/m1",
		"github.com/m1-agent/m1/cmd/m1-orchestrator", "github.com/m1-agent/m1/cmd/m1-demo-tool")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// TestSmoke runs every scenario for a second against real processes and
// checks the report: each scenario's figures, no errors, report.html with
// each scenario, and a regression marked against a better baseline. It
// asserts nothing about speed.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dozen processes; not in -short")
	}
	redis := true
	if _, err := exec.LookPath("redis-server"); err != nil {
		msg := "redis-server not found on PATH; install it: apt-get install -y redis-server"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Log("SKIPPING the Redis parts (not in CI): " + msg)
		redis = false
	}
	bin := buildBinaries(t)
	out := t.TempDir()
	opts := DefaultOptions()
	opts.Duration, opts.Out, opts.BinDir = time.Second, out, bin
	opts.Concurrency, opts.Agents = 8, 4
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, opts, t.Logf)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}

	want := map[string][]string{
		ScenarioCache:     {"L1: decisions/s", "L1: cache hit rate"},
		ScenarioPolicy:    {"cacheable under invalidation: decisions/s", "cacheable under invalidation: cache hit rate", "cache flushes"},
		ScenarioApprovals: {"cacheable, 1 sidecar: m1-authz / no-op", "fresh approval, 1 sidecar: m1-authz / no-op", "grant, 1 sidecar: m1-authz / no-op"},
		ScenarioAgents:    {"agent runs that completed", "tool call p99 (dispatch through the proxy)", "calls approved by a grant", "grants signed"},
		ScenarioMetrics:   {"/metrics scrape p99"},
	}
	if redis {
		want[ScenarioCache] = append(want[ScenarioCache], "L1 + Redis L2: decisions/s")
		want[ScenarioApprovals] = append(want[ScenarioApprovals], "grant, 2 sidecars on Redis: m1-authz / no-op", "fresh approval, 2 sidecars on Redis: m1-authz / no-op")
	}
	var names []string
	for _, s := range rep.Scenarios {
		names = append(names, s.Name)
		if s.Error != "" || s.Skipped != "" {
			t.Errorf("scenario %s: error %q, skipped %q", s.Name, s.Error, s.Skipped)
		}
		got := map[string]Figure{}
		for _, f := range s.Figures {
			got[f.Name] = f
			if f.Load != nil && (f.Load.Errors > 0 || f.Load.Calls == 0) {
				t.Errorf("scenario %s: %s: %d errors of %d calls: %v", s.Name, f.Name, f.Load.Errors, f.Load.Calls, f.Load.ErrorTop)
			}
			checkShape(t, s.Name, f)
		}
		for _, n := range want[s.Name] {
			f, ok := got[n]
			if !ok {
				t.Errorf("scenario %s: no figure %q", s.Name, n)
				continue
			}
			if f.Value <= 0 && !strings.Contains(n, "hit rate") {
				t.Errorf("scenario %s: %s = %v, want a measured figure", s.Name, n, f.Value)
			}
		}
		if n := got["calls approved by a grant"].Value; s.Name == ScenarioAgents && (len(s.Notes) > 0 || n < 3 || int(n)%3 != 0) {
			t.Errorf("scenario agents: %v calls approved by a grant, notes %q; want the 3 calls of every completed run, none otherwise", n, s.Notes)
		}
		if s.Name != ScenarioAgents && len(s.Processes) == 0 {
			t.Errorf("scenario %s: no process figures", s.Name)
		}
		noopProcs := 0
		for _, p := range s.Processes {
			if s.Name == ScenarioApprovals && (len(p.Rounds) != 2 || p.Rounds[0].Target != bench.TargetNoop || p.Rounds[1].Target != bench.TargetM1) {
				t.Errorf("scenario %s: process %s: rounds %+v, want its CPU in the no-op's and in m1-authz's", s.Name, p.Name, p.Rounds)
			}
			if strings.HasSuffix(p.Name, ": "+noopProcName) {
				noopProcs++
				if p.PID == os.Getpid() || len(p.Rounds) == 0 || p.Rounds[0].CPUPerCall <= 0 {
					t.Errorf("scenario %s: %s (pid %d): rounds %+v; want a process of its own, busy in the no-op's rounds", s.Name, p.Name, p.PID, p.Rounds)
				}
			}
		}
		// Like for like: each comparison's no-op server ran in a process
		// of its own, as m1-authz did.
		if phases := len(want[ScenarioApprovals]); s.Name == ScenarioApprovals && noopProcs != phases {
			t.Errorf("scenario approvals: %d phases with the no-op server in a process of its own, want %d", noopProcs, phases)
		}
	}
	if !slices.Equal(names, AllScenarios) {
		t.Fatalf("scenarios = %v, want %v", names, AllScenarios)
	}
	if hasProfile := slices.ContainsFunc(rep.Scenarios, func(s Scenario) bool { return s.Profile != nil && len(s.Profile.Cum) > 0 }); !hasProfile {
		t.Error("no scenario has a CPU profile")
	}

	// report.json holds the same report.
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	if len(back.Scenarios) != len(AllScenarios) {
		t.Fatalf("report.json has %d scenarios", len(back.Scenarios))
	}
	checkHTML(t, filepath.Join(out, "report.html"), false)

	// Against a baseline where every throughput was twice as high, the
	// throughput figures regress; against itself nothing does.
	same := back
	rep.compare(&same, "same.json")
	if rep.Regressions != 0 {
		t.Errorf("compared with itself: %d regressions", rep.Regressions)
	}
	better := cloneReport(t, &back)
	for si := range better.Scenarios {
		for fi := range better.Scenarios[si].Figures {
			if f := &better.Scenarios[si].Figures[fi]; f.Unit == unitOps {
				f.Value *= 2
			}
		}
	}
	path := filepath.Join(t.TempDir(), "baseline.json")
	bb, _ := json.Marshal(better)
	if err := os.WriteFile(path, bb, 0o644); err != nil {
		t.Fatal(err)
	}
	base, err := ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	rep.compare(base, path)
	if rep.Regressions == 0 {
		t.Fatal("compared with a better baseline: no regression marked")
	}
	var f Figure
	for _, fg := range rep.Scenarios[0].Figures {
		if fg.Name == "L1: decisions/s" {
			f = fg
		}
	}
	if !f.Regressed || f.Baseline == nil || f.Change > -0.4 {
		t.Errorf("L1: decisions/s against twice its value = %+v, want regressed by about 50%%", f)
	}
	if err := rep.write(out); err != nil {
		t.Fatal(err)
	}
	checkHTML(t, filepath.Join(out, "report.html"), true)
	if rep.exitCode() != 1 {
		t.Errorf("exit code with regressions = %d, want 1", rep.exitCode())
	}
}

func cloneReport(t *testing.T, r *Report) *Report {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var c Report
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

// checkShape checks a figure's latency histogram (every allowed call of
// its load) and, for a gRPC load, its timeline.
func checkShape(t *testing.T, scenario string, f Figure) {
	t.Helper()
	if f.Load == nil || f.Load.P99 == 0 {
		return // not a load, or one without latencies (a hit rate)
	}
	var inHist uint64
	for _, b := range f.Load.Histogram {
		inHist += b.Count
	}
	if inHist != f.Load.Calls-f.Load.Errors {
		t.Errorf("scenario %s: %s: histogram holds %d calls, want the %d allowed", scenario, f.Name, inHist, f.Load.Calls-f.Load.Errors)
	}
	grpcLoad := scenario != ScenarioAgents && !strings.Contains(f.Name, "/metrics")
	if grpcLoad && len(f.Load.Timeline) == 0 {
		t.Errorf("scenario %s: %s: no timeline", scenario, f.Name)
	}
}

// checkHTML parses report.html and checks that it has a section and a
// chart for every scenario, no script and no external resource.
func checkHTML(t *testing.T, path string, regressed bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := html.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("report.html: %v", err)
	}
	ids := map[string]bool{}
	svgs := 0
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "script", "link", "img", "iframe":
				t.Errorf("report.html has a <%s>: it must be self-contained", n.Data)
			case "svg":
				svgs++
			}
			for _, a := range n.Attr {
				if a.Key == "id" {
					ids[a.Val] = true
				}
				if (a.Key == "src" || a.Key == "href") && strings.Contains(a.Val, "://") {
					t.Errorf("report.html refers to %s", a.Val)
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	for _, s := range AllScenarios {
		if !ids["scenario-"+s] {
			t.Errorf("report.html has no section for %s", s)
		}
	}
	if svgs < len(AllScenarios) {
		t.Errorf("report.html has %d charts, want at least one per scenario", svgs)
	}
	for _, chart := range []string{"Throughput over time", "Latency histogram"} {
		if !bytes.Contains(b, []byte(chart)) {
			t.Errorf("report.html has no %q chart", chart)
		}
	}
	if got := bytes.Contains(b, []byte("REGRESSION")); got != regressed {
		t.Errorf("report.html marks a regression: %v, want %v", got, regressed)
	}
}

func TestSummarizeAndValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts func(*Options)
		want string
	}{
		{"unknown scenario", func(o *Options) { o.Scenarios = []string{"nope"} }, "Scenarios (--scenario)"},
		{"duration too long", func(o *Options) { o.Duration = time.Hour }, "Duration (--duration)"},
		{"target without admin", func(o *Options) { o.Targets.Authz = "127.0.0.1:9191" }, "admin="},
		{"target without key", func(o *Options) {
			o.Targets = Targets{Authz: "127.0.0.1:9191", Admin: "127.0.0.1:9192"}
			o.AdminToken = "x"
		}, "KeyFile (--key)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			tc.opts(&o)
			err := o.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
	if err := DefaultOptions().validate(); err != nil {
		t.Fatalf("DefaultOptions().validate() = %v", err)
	}
}

// Advice names the profile's largest part only for the figures of the phase
// the profile was taken during, and names the phase; a profile of the whole
// scenario speaks for every figure.
func TestAdviceProfileOfItsPhase(t *testing.T) {
	scenario := func(phase string) *Scenario {
		return &Scenario{
			Figures: []Figure{
				{Name: "cacheable, 1 sidecar: m1-authz / no-op", Value: 0.5, Unit: unitRatio, Cmp: ">=", Target: 0.85},
				{Name: "fresh approval, 1 sidecar: m1-authz / no-op", Value: 0.2, Unit: unitRatio, Cmp: ">=", Target: 0.5},
			},
			Profile: &Profile{Phase: phase, Cum: []Func{
				{Name: "github.com/m1-agent/m1/internal/state/storestate.(*Store).commit", CumPct: 21},
				{Name: "github.com/m1-agent/m1/internal/approval.verificationKey.verify", CumPct: 18},
			}},
		}
	}
	const hot = "largest known part is the durable single-use commit (SQLite) at 21%"
	s := scenario("fresh approval, 1 sidecar")
	adviseScenario(s, 2)
	if len(s.Advice) != 2 || strings.Contains(s.Advice[0], hot) || !strings.Contains(s.Advice[1], hot) {
		t.Fatalf("advice with a profile of the fresh-approval phase =\n%s\nwant the profile named for the fresh approval only", strings.Join(s.Advice, "\n"))
	}
	s = scenario("")
	adviseScenario(s, 2)
	if len(s.Advice) != 2 || !strings.Contains(s.Advice[0], hot) || !strings.Contains(s.Advice[1], hot) {
		t.Fatalf("advice with a profile of the whole scenario =\n%s\nwant the profile named for both", strings.Join(s.Advice, "\n"))
	}
	var out strings.Builder
	rep := Report{Scenarios: []Scenario{*scenario("fresh approval, 1 sidecar")}}
	if err := rep.HTML(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "during “fresh approval, 1 sidecar”") {
		t.Fatal("report.html does not say which phase the profile was taken during")
	}
}

// The advice of a comparison states the ratio that the processes' CPU per
// call bounds it at, from their use in each target's rounds, and whether
// the cores were idle part of the time; only that phase's processes count.
func TestAdviceCPUBound(t *testing.T) {
	const phase = "fresh approval, 1 sidecar"
	us := func(n int) Dur { return Dur(time.Duration(n) * time.Microsecond) }
	// 10,000 calls to m1-authz: 1.9 s of its CPU in its rounds, 0.1 s after
	// them (in the no-op's rounds), 200 µs per call.
	s := &Scenario{
		Figures: []Figure{{Name: phase + ": m1-authz / no-op", Value: 0.25, Unit: unitRatio, Cmp: ">=", Target: 0.5, Load: &LoadStats{Calls: 10000}}},
		Processes: []Process{
			{Name: phase + ": m1-authz", Rounds: []RoundUse{{Target: bench.TargetNoop, CPUSec: 0.1, Cores: 0.05, CPUPerCall: us(3)}, {Target: bench.TargetM1, CPUSec: 1.9, Cores: 1.2, CPUPerCall: us(190)}}},
			{Name: phase + ": " + genProcName, Rounds: []RoundUse{{Target: bench.TargetNoop, Cores: 1.3, CPUPerCall: us(50)}, {Target: bench.TargetM1, Cores: 0.4, CPUPerCall: us(50)}}},
			{Name: phase + ": " + noopProcName, Rounds: []RoundUse{{Target: bench.TargetNoop, CPUSec: 0.5, Cores: 0.6, CPUPerCall: us(25)}, {Target: bench.TargetM1, CPUSec: 0.01, Cores: 0.01, CPUPerCall: us(1)}}},
			{Name: "grant, 1 sidecar: m1-authz", Rounds: []RoundUse{{Target: bench.TargetM1, Cores: 1.5, CPUPerCall: us(90)}}},
		},
	}
	adviseScenario(s, 2)
	for _, want := range []string{
		"m1-authz used 200 µs of CPU (all of it, in the rounds of both targets, over its calls) and the load generator 50 µs",
		"together used 75 µs",
		"75 µs / (50 µs + 200 µs) = 0.30×",
		"For 0.50× on these cores m1-authz may spend at most 100 µs per check, 100 µs less than now.",
		"only 80% busy during m1-authz's rounds",
	} {
		if len(s.Advice) != 1 || !strings.Contains(s.Advice[0], want) {
			t.Fatalf("advice = %q, want it to say %q", s.Advice, want)
		}
	}
	if b, ok := boundOf(s, Figure{Name: "grant, 1 sidecar: m1-authz / no-op", Load: &LoadStats{Calls: 100}}); ok {
		t.Errorf("boundOf a phase without the load generator's rounds = %+v, true; want false", b)
	}
}

// With every process given as a --target, the load test starts none but
// the approvals scenario's no-op server, for which it still finds m1.
func TestNewEnvTargetsFindsTheCLI(t *testing.T) {
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "m1"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.BinDir = bin
	o.Targets = Targets{Authz: "127.0.0.1:9191", Admin: "127.0.0.1:9192", Orchestrator: "127.0.0.1:8080"}
	e, err := newEnv(o, t.Logf)
	if e != nil {
		defer e.close()
	}
	if err != nil {
		t.Fatalf("newEnv: %v", err)
	}
	if want := filepath.Join(bin, "m1"); e.bins.CLI != want || e.bins.Authz != "" {
		t.Errorf("newEnv with targets: binaries %+v; want only m1 (%s)", e.bins, want)
	}
}
