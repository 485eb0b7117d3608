// Package loadtest is `m1 loadtest`: load scenarios run against real
// m1-authz, m1-orchestrator, m1 dev-proxy and m1-demo-tool processes that
// it starts on free loopback ports in a temporary directory (with a
// redis-server when a scenario needs one), or against --target addresses,
// each figure printed beside its target, with a report.json and a
// self-contained report.html (charts, the top functions of a CPU profile
// taken from a sidecar during the run, advice where a target is missed,
// and regressions against a --baseline report).
//
// The load comes from package bench (ghz, on loopback, in this process):
// on a small machine the load generator takes a share of the cores the
// processes measured need, and every figure is a floor, not a ceiling.
// Every scenario is bounded by --duration per measured phase.
package loadtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Scenario names, in the order they run.
const (
	ScenarioCache     = "cache"
	ScenarioPolicy    = "policy"
	ScenarioApprovals = "approvals"
	ScenarioAgents    = "agents"
	ScenarioMetrics   = "metrics"
)

// AllScenarios lists every scenario in the order they run.
var AllScenarios = []string{ScenarioCache, ScenarioPolicy, ScenarioApprovals, ScenarioAgents, ScenarioMetrics}

// Limits of the options.
const (
	MaxDuration    = 60 * time.Second
	MaxConcurrency = 1024
	MaxAgents      = 500
)

// Options configure a load test.
type Options struct {
	Scenarios   []string      // names; empty = all
	Duration    time.Duration // measured time of each phase of a scenario
	Out         string        // directory of report.json and report.html
	Baseline    string        // an earlier report.json to compare with
	BinDir      string        // where the binaries are; "" = beside this one, else PATH
	Concurrency int           // calls in flight of the gRPC loads
	Agents      int           // concurrent agent runs (agents scenario)
	Profile     bool          // take a CPU profile of a sidecar during each scenario
	Targets     Targets       // running processes to use instead of starting them
	AdminToken  string        // the targets' admin token
	KeyFile     string        // private JWK the target sidecars trust (approvals, agents)
	Audience    string        // the sidecars' M1_AUDIENCE
}

// Targets are running processes a load test uses instead of starting its
// own. A scenario that needs one that is not given starts its own when the
// others are not given either, and is skipped otherwise.
type Targets struct {
	Authz        string // m1-authz gRPC, host:port
	Admin        string // its admin port, host:port or URL
	Authz2       string // a second m1-authz sharing Authz's Redis (approvals)
	Admin2       string
	Redis        string // redis:// URL for the sidecars the test starts
	Orchestrator string // m1-orchestrator URL (agents): its tool calls go through the target's proxy
}

// sidecar says whether an m1-authz target is set.
func (t Targets) sidecar() bool { return t.Authz != "" }

// DefaultOptions returns the defaults of `m1 loadtest`.
func DefaultOptions() Options {
	return Options{
		Duration:    10 * time.Second,
		Out:         ".",
		Concurrency: 50,
		Agents:      50,
		Profile:     true,
		Audience:    "m1-loadtest",
	}
}

// validate fails fast, naming the bad field.
func (o Options) validate() error {
	for _, s := range o.Scenarios {
		if !slices.Contains(AllScenarios, s) {
			return fmt.Errorf("Scenarios (--scenario): unknown %q; the scenarios are %s", s, strings.Join(AllScenarios, ", "))
		}
	}
	switch {
	case o.Duration < 100*time.Millisecond || o.Duration > MaxDuration:
		return fmt.Errorf("Duration (--duration) must be 100ms..%s, got %s", MaxDuration, o.Duration)
	case o.Concurrency < 2 || o.Concurrency > MaxConcurrency:
		return fmt.Errorf("Concurrency (--concurrency) must be 2..%d, got %d", MaxConcurrency, o.Concurrency)
	case o.Agents < 1 || o.Agents > MaxAgents:
		return fmt.Errorf("Agents (--agents) must be 1..%d, got %d", MaxAgents, o.Agents)
	case o.Out == "":
		return errors.New("Out (--out) is required")
	case o.Audience == "":
		return errors.New("Audience (--audience) is required")
	case o.Targets.Authz2 != "" && o.Targets.Authz == "":
		return errors.New("Targets (--target authz2=…) needs authz= too")
	case o.Targets.sidecar() && o.Targets.Admin == "":
		return errors.New("Targets (--target authz=…) needs admin= too: the figures read its /metrics")
	case o.Targets.sidecar() && o.AdminToken == "":
		return errors.New("AdminToken (--admin-token, M1_ADMIN_TOKEN) is required with --target authz=…")
	case (o.Targets.sidecar() || o.Targets.Orchestrator != "") && o.KeyFile == "" && slices.ContainsFunc(o.scenarios(), func(s string) bool {
		return s == ScenarioApprovals || s == ScenarioAgents
	}):
		return errors.New("KeyFile (--key) is required with --target for the approvals and agents scenarios: the private JWK the targets trust")
	}
	return nil
}

func (o Options) scenarios() []string {
	if len(o.Scenarios) == 0 {
		return AllScenarios
	}
	var out []string
	for _, s := range AllScenarios { // in the run order, once each
		if slices.Contains(o.Scenarios, s) {
			out = append(out, s)
		}
	}
	return out
}

// Run runs the scenarios one after another (each starts its processes
// and stops them at its end), writes report.json and report.html to
// opts.Out and returns the report. A scenario that fails is recorded in the
// report (Scenario.Error) and the others still run; Run's error is for a
// run that could not start or write its report, or ctx ending. logf, if
// not nil, is told of the progress.
func Run(ctx context.Context, opts Options, logf func(format string, args ...any)) (*Report, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("options: %w", err)
	}
	var base *Report
	if opts.Baseline != "" {
		b, err := ReadReport(opts.Baseline)
		if err != nil {
			return nil, err
		}
		base = b
	}
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return nil, fmt.Errorf("out: %w", err)
	}
	e, err := newEnv(opts, logf)
	if e != nil {
		defer e.close()
	}
	if err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now().UTC(), Machine: machine(), Duration: Dur(opts.Duration)}
	for _, name := range opts.scenarios() {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		logf("scenario %s: running", name)
		t0 := time.Now()
		s := runScenario(ctx, e, name)
		e.stopAll()
		adviseScenario(&s, runtime.NumCPU())
		rep.Scenarios = append(rep.Scenarios, s)
		logf("scenario %s: done in %.1fs", name, time.Since(t0).Seconds())
	}
	if base != nil {
		rep.compare(base, opts.Baseline)
	}
	if err := rep.write(opts.Out); err != nil {
		return rep, err
	}
	return rep, ctx.Err()
}

// runScenario runs one scenario; a failure is recorded in it.
func runScenario(ctx context.Context, e *env, name string) Scenario {
	s := Scenario{Name: name, Description: descriptions[name]}
	var err error
	switch name {
	case ScenarioCache:
		err = e.cache(ctx, &s)
	case ScenarioPolicy:
		err = e.policy(ctx, &s)
	case ScenarioApprovals:
		err = e.approvals(ctx, &s)
	case ScenarioAgents:
		err = e.agents(ctx, &s)
	case ScenarioMetrics:
		err = e.metrics(ctx, &s)
	}
	var skip *skipError
	switch {
	case errors.As(err, &skip):
		s.Skipped = skip.why
	case err != nil:
		s.Error = err.Error()
	}
	return s
}

// skipError is a scenario that cannot run here (a target it needs is
// missing, redis-server is not installed).
type skipError struct{ why string }

func (e *skipError) Error() string { return "skipped: " + e.why }

var descriptions = map[string]string{
	ScenarioCache:     "The decision cache under a mixed workload: 80% of the calls repeat one of 64 cacheable calls (hits), 20% are new (misses, a policy evaluation each), with the default bundle plus a rule on the arguments (so that each new path is a new cache key); L1 alone, then with Redis as L2 (M1_CACHE_L2_MODE=always).",
	ScenarioPolicy:    "Cacheable checks while the cache is invalidated: the bundle in M1_POLICY_DIR changes (a new revision) and the cache is flushed (POST /api/m1/cache/flush), each about every second.",
	ScenarioApprovals: "Against a no-op ext_authz server in the same run, in a process of its own as m1-authz is (the ratio is m1-authz over no-op): a cacheable call without a token (the decision-cache hit), a fresh EdDSA approval on every call (each used once, durable single use, audit on), one grant reused by every call; one sidecar with its state in SQLite, then two sharing one Redis.",
	ScenarioAgents:    "Concurrent agent runs of the demo plan through m1-orchestrator, m1 dev-proxy, m1-authz and m1-demo-tool: each run carries its agent's grant (signed with the operator's key, as m1 grant would), so no person is needed.",
	ScenarioMetrics:   "GET /metrics, one scrape after another, while cacheable checks load the sidecar.",
}
