package loadtest

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/bench"
)

// Report is what a load test measured: report.json.
type Report struct {
	Started   time.Time  `json:"started"`
	Machine   Machine    `json:"machine"`
	Duration  Dur        `json:"duration"` // --duration: the measured time of each phase
	Scenarios []Scenario `json:"scenarios"`
	// Baseline is the --baseline file compared with, if any.
	Baseline string `json:"baseline,omitempty"`
	// Regressions counts the figures more than RegressionThreshold worse
	// than in Baseline.
	Regressions int `json:"regressions"`
}

// Machine describes where the figures were taken.
type Machine struct {
	CPUs       int    `json:"cpus"`
	Model      string `json:"cpu_model,omitempty"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	OS         string `json:"os"`
	GoVersion  string `json:"go_version"`
}

// Scenario is one scenario's figures, the processes it ran and the CPU
// profile taken from a sidecar during it.
type Scenario struct {
	Name        string    `json:"name"`
	Description string    `json:"description"`
	Figures     []Figure  `json:"figures"`
	Processes   []Process `json:"processes,omitempty"`
	Profile     *Profile  `json:"profile,omitempty"`
	Advice      []string  `json:"advice,omitempty"`
	Notes       []string  `json:"notes,omitempty"`
	Error       string    `json:"error,omitempty"` // the scenario could not run to its end
	Skipped     string    `json:"skipped,omitempty"`
}

// Figure is one measured figure against its target: a headline Value in
// Unit compared with Target by Cmp, and the load that produced it.
type Figure struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Cmp    string  `json:"cmp"` // ">=" (higher is better) or "<=" (lower is better)
	Target float64 `json:"target"`
	Met    bool    `json:"met"`
	// Load is the load behind the figure, when it is one.
	Load *LoadStats `json:"load,omitempty"`
	// Baseline is the same figure in the --baseline report; Change is
	// Value/Baseline-1; Regressed marks a change worse than
	// RegressionThreshold in the figure's direction.
	Baseline  *float64 `json:"baseline,omitempty"`
	Change    float64  `json:"change,omitempty"`
	Regressed bool     `json:"regressed,omitempty"`
}

// LoadStats is a load's throughput and latency.
type LoadStats struct {
	OpsPerSec float64        `json:"ops_per_sec"`
	Calls     uint64         `json:"calls"`
	Errors    uint64         `json:"errors"`
	ErrorTop  []string       `json:"error_top,omitempty"`
	Mean      Dur            `json:"mean"`
	P50       Dur            `json:"p50"`
	P95       Dur            `json:"p95"`
	P99       Dur            `json:"p99"`
	Max       Dur            `json:"max"`
	Elapsed   Dur            `json:"elapsed"`
	Extra     map[string]any `json:"extra,omitempty"`
	// Timeline is the throughput over the measured time (alternating
	// rounds end to end); Histogram the latencies of the allowed calls.
	Timeline  []Point `json:"timeline,omitempty"`
	Histogram []Bar   `json:"histogram,omitempty"`
}

// Point is one step of a load's timeline.
type Point struct {
	Start     Dur     `json:"start"` // from the start of the measured time
	Step      Dur     `json:"step"`
	OpsPerSec float64 `json:"ops_per_sec"` // completed calls per second, errors included
	Errors    uint64  `json:"errors"`
	P99       Dur     `json:"p99"` // of the allowed calls that completed in the step
}

// Bar is one bucket of a latency histogram: the allowed calls that took
// more than the previous bar's UpTo and at most UpTo.
type Bar struct {
	UpTo  Dur    `json:"le"`
	Count uint64 `json:"count"`
}

// shapeOf sets s's timeline and histogram from a bench load's.
func (s *LoadStats) shapeOf(tl []bench.Interval, h []bench.Bucket) *LoadStats {
	for _, iv := range tl {
		s.Timeline = append(s.Timeline, Point{Start: Dur(iv.Start), Step: Dur(iv.Step), OpsPerSec: iv.PerSec(), Errors: iv.Errors, P99: Dur(iv.P99)})
	}
	for _, b := range h {
		s.Histogram = append(s.Histogram, Bar{UpTo: Dur(b.UpTo), Count: b.Count})
	}
	return s
}

// Process is one process's CPU and memory over a scenario.
type Process struct {
	Name     string  `json:"name"`
	PID      int     `json:"pid"`
	CPUSec   float64 `json:"cpu_seconds"` // user + system during the scenario
	Cores    float64 `json:"cores"`       // CPUSec / the scenario's wall time
	RSSBytes int64   `json:"rss_bytes"`   // at the end
	PeakRSS  int64   `json:"peak_rss_bytes"`
	// Rounds is the process's CPU during the measured rounds of each target
	// of a comparison with the no-op server (the approvals scenario).
	Rounds []RoundUse `json:"rounds,omitempty"`
}

// RoundUse is a process's CPU during the measured rounds of one target:
// m1-authz's or the no-op server's.
type RoundUse struct {
	Target string  `json:"target"`
	CPUSec float64 `json:"cpu_seconds"` // user + system during the target's rounds
	Cores  float64 `json:"cores"`
	// CPUPerCall is its CPU time over the target's measured calls.
	CPUPerCall Dur `json:"cpu_per_call"`
}

// Dur is a duration that is a number of milliseconds in JSON.
type Dur time.Duration

func (d Dur) MarshalJSON() ([]byte, error) {
	return json.Marshal(float64(d) / float64(time.Millisecond))
}

func (d *Dur) UnmarshalJSON(b []byte) error {
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil {
		return err
	}
	*d = Dur(ms * float64(time.Millisecond))
	return nil
}

func (d Dur) String() string { return fmtMS(time.Duration(d)) }

// Std is d as a time.Duration.
func (d Dur) Std() time.Duration { return time.Duration(d) }

func fmtMS(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
}

// statsOf turns a bench load into LoadStats.
func statsOf(r bench.LoadResult) *LoadStats {
	slices.Sort(r.Latencies) // the caller's may not be
	s := &LoadStats{
		OpsPerSec: r.Rate(), Calls: r.Calls, Errors: r.Errors, ErrorTop: r.TopErrors(3),
		Mean: Dur(r.Mean()), P50: Dur(r.Percentile(50)), P95: Dur(r.Percentile(95)), P99: Dur(r.Percentile(99)),
		Elapsed: Dur(r.Elapsed),
	}
	if n := len(r.Latencies); n > 0 {
		s.Max = Dur(r.Latencies[n-1])
	}
	return s.shapeOf(r.Timeline, bench.Histogram(r.Latencies))
}

// figure makes a Figure and decides whether it met its target.
func figure(name string, value float64, unit, cmp string, target float64, load *LoadStats) Figure {
	f := Figure{Name: name, Value: value, Unit: unit, Cmp: cmp, Target: target, Load: load}
	f.Met = met(cmp, value, target) && (load == nil || load.Errors == 0)
	return f
}

func met(cmp string, v, target float64) bool {
	if cmp == "<=" {
		return v <= target
	}
	return v >= target
}

// RegressionThreshold is how much worse than its baseline a figure (or
// its load's throughput or p99) may be before it is marked regressed.
const RegressionThreshold = 0.10

// compare marks r's figures against base's (matched by scenario and figure
// name) and counts the regressions.
func (r *Report) compare(base *Report, path string) {
	r.Baseline = path
	old := map[string]Figure{}
	for _, s := range base.Scenarios {
		for _, f := range s.Figures {
			old[s.Name+"\x00"+f.Name] = f
		}
	}
	r.Regressions = 0
	for si := range r.Scenarios {
		s := &r.Scenarios[si]
		for fi := range s.Figures {
			f := &s.Figures[fi]
			b, ok := old[s.Name+"\x00"+f.Name]
			if !ok || b.Value == 0 {
				continue
			}
			v := b.Value
			f.Baseline = &v
			f.Change = f.Value/b.Value - 1
			worse := f.Change < -RegressionThreshold
			if f.Cmp == "<=" {
				worse = f.Change > RegressionThreshold
			}
			if worse {
				f.Regressed = true
				r.Regressions++
			}
		}
	}
}

// ReadReport reads a report.json.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read baseline: %w", err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read baseline %s: %w", path, err)
	}
	return &r, nil
}

// machine describes this machine.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), OS: runtime.GOOS + "/" + runtime.GOARCH, GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}
