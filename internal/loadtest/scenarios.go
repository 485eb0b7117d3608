package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/m1-agent/m1/internal/bench"
)

// Targets of the figures (issue 16, DESIGN §9).
const (
	targetCacheOps      = 10_000 // decisions/s, cache scenario
	targetPolicyOps     = 5_000  // decisions/s, policy scenario
	targetPolicyHitRate = 70.0   // %, policy scenario
	targetApprovalRatio = 0.5    // fresh approvals / no-op
	targetGrantRatio    = 0.7    // grant / no-op
	targetCacheRatio    = 0.85   // cacheable / no-op (bench mode cache)
	targetRunsOK        = 95.0   // % of agent runs that complete
	targetScrapeP99MS   = 100.0  // ms, /metrics scrape under load
)

// Units of the figures.
const (
	unitOps     = "ops/s"
	unitPercent = "%"
	unitRatio   = "× no-op"
	unitMS      = "ms"
	unitRunsPS  = "runs/s"
)

// hotCalls is how many distinct cacheable calls the hits of the cache and
// metrics scenarios repeat; the policy scenario repeats policyCalls.
const (
	hotCalls    = 64
	policyCalls = 256
)

// requests marshals the cacheable calls from..from+n-1.
func requests(from, n uint64) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range n {
		b, err := bench.CacheRequest(from + i)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// mixed is the 80/20 workload: every fifth call is a new cacheable call
// (a miss), the others cycle through hot.
func mixed(hot [][]byte, salt uint64) func(uint64) []byte {
	return func(i uint64) []byte {
		if i%5 == 4 {
			b, err := bench.CacheRequest(salt + i)
			if err == nil {
				return b
			}
		}
		return hot[i%uint64(len(hot))]
	}
}

func cycle(reqs [][]byte) func(uint64) []byte {
	return func(i uint64) []byte { return reqs[i%uint64(len(reqs))] }
}

// load drives cacheable-style requests at the sidecars for d.
func (e *env) load(ctx context.Context, d time.Duration, gen func(uint64) []byte, scs ...*sidecar) (bench.LoadResult, error) {
	addrs := make([]string, len(scs))
	for i, s := range scs {
		addrs[i] = s.grpc
	}
	return bench.RunLoad(ctx, bench.Load{Addrs: addrs, Concurrency: e.opts.Concurrency, Duration: d, Request: gen})
}

// warm sends gen's calls for a short while (unmeasured): connections,
// caches, the Go runtime's heap.
func (e *env) warm(ctx context.Context, gen func(uint64) []byte, scs ...*sidecar) error {
	_, err := e.load(ctx, min(e.opts.Duration/5, time.Second), gen, scs...)
	return err
}

// watched is a process whose CPU and memory a phase reports.
type watched struct {
	name string
	pid  int
}

func (s *sidecar) watched() []watched {
	if s.proc == nil {
		return nil
	}
	return []watched{{s.name, s.proc.pid()}}
}

// roundMeter sums the CPU time of each process (watch's, this process
// included), and the wall time, over the measured rounds of each target of
// a bench.Run (bench.Options.Round): what each process spent on m1-authz's
// calls and on the no-op server's.
type roundMeter struct {
	ws   []watched
	mu   sync.Mutex
	cpu  map[string]map[int]time.Duration // target → pid → CPU time
	wall map[string]time.Duration         // target → time measured
}

func newRoundMeter(ws ...watched) *roundMeter {
	return &roundMeter{ws: slices.Clip(ws), cpu: map[string]map[int]time.Duration{}, wall: map[string]time.Duration{}}
}

func (m *roundMeter) round(target string) func() {
	t0 := time.Now()
	done := watch(m.ws...)
	return func() {
		procs := done()
		m.mu.Lock()
		defer m.mu.Unlock()
		m.wall[target] += time.Since(t0)
		if m.cpu[target] == nil {
			m.cpu[target] = map[int]time.Duration{}
		}
		for _, p := range procs {
			m.cpu[target][p.PID] += time.Duration(p.CPUSec * float64(time.Second))
		}
	}
}

// uses is pid's CPU during each target's rounds, per measured call.
func (m *roundMeter) uses(pid int, targets []bench.Target) []RoundUse {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []RoundUse
	for _, t := range targets {
		cpu, ok := m.cpu[t.Name][pid]
		if !ok || m.wall[t.Name] <= 0 || t.Calls == 0 {
			continue
		}
		out = append(out, RoundUse{Target: t.Name, CPUSec: cpu.Seconds(), Cores: cpu.Seconds() / m.wall[t.Name].Seconds(), CPUPerCall: Dur(cpu / time.Duration(t.Calls))})
	}
	return out
}

// watch reads the processes' CPU time now; the returned func reads it
// again and reports each process's use in between. This process (the load
// generator) is always among them.
func watch(ws ...watched) func() []Process {
	ws = append(ws, watched{genProcName, os.Getpid()})
	t0 := time.Now()
	start := make([]procUsage, len(ws))
	for i, w := range ws {
		start[i] = readUsage(w.pid)
	}
	return func() []Process {
		wall := time.Since(t0).Seconds()
		var out []Process
		for i, w := range ws {
			u := readUsage(w.pid)
			if !u.ok || !start[i].ok {
				continue
			}
			cpu := (u.cpu - start[i].cpu).Seconds()
			out = append(out, Process{Name: w.name, PID: w.pid, CPUSec: cpu, Cores: cpu / wall, RSSBytes: u.rss, PeakRSS: u.peakRSS})
		}
		return out
	}
}

// profileDuring takes a CPU profile of sc while a phase of d runs (from a
// quarter into it, for half of it, at least a second); wait returns it, or
// nil (with a note in s) when it could not be taken. phase names the part
// of the scenario profiled ("" = all of it).
func (e *env) profileDuring(ctx context.Context, s *Scenario, sc *sidecar, d time.Duration, phase string) (wait func()) {
	if !e.opts.Profile || sc.admin == "" {
		return func() {}
	}
	secs := max(1, int((d / 2).Seconds()))
	delay := d / 4
	if d < 2*time.Second {
		delay = 0
	}
	var (
		p   *Profile
		err error
		wg  sync.WaitGroup
	)
	wg.Go(func() {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		}
		p, err = fetchProfile(ctx, sc.admin, sc.token, secs)
	})
	return func() {
		wg.Wait()
		if err != nil {
			s.Notes = append(s.Notes, "no CPU profile: "+err.Error())
			return
		}
		if p != nil {
			p.From, p.Phase = sc.name+" "+p.From, phase
		}
		s.Profile = p
	}
}

// hitRate reads the sidecar's cache counters around a phase.
func hitRate(before, after map[string]float64) float64 {
	h := after["m1_policy_cache_hits_total"] - before["m1_policy_cache_hits_total"]
	m := after["m1_policy_cache_misses_total"] - before["m1_policy_cache_misses_total"]
	if h+m == 0 {
		return 0
	}
	return 100 * h / (h + m)
}

var cacheCounters = []string{"m1_policy_cache_hits_total", "m1_policy_cache_misses_total"}

// measureCache runs one phase of cache-style load on sc and adds its
// figures: ops/s against opsTarget, and the hit rate.
func (e *env) measureCache(ctx context.Context, s *Scenario, label string, sc *sidecar, gen func(uint64) []byte, opsTarget float64, rateTarget float64, during func(ctx context.Context), also ...watched) error {
	before, err := sc.counters(ctx, cacheCounters...)
	if err != nil {
		return fmt.Errorf("%s: read /metrics: %w", sc.name, err)
	}
	done := watch(append(sc.watched(), also...)...)
	waitProfile := func() {}
	if s.Profile == nil {
		waitProfile = e.profileDuring(ctx, s, sc, e.opts.Duration, "")
	}
	var bg sync.WaitGroup
	bgCtx, stopBG := context.WithCancel(ctx)
	if during != nil {
		bg.Go(func() { during(bgCtx) })
	}
	res, err := e.load(ctx, e.opts.Duration, gen, sc)
	stopBG()
	bg.Wait()
	procs := done()
	waitProfile()
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	after, err := sc.counters(ctx, cacheCounters...)
	if err != nil {
		return fmt.Errorf("%s: read /metrics: %w", sc.name, err)
	}
	for i := range procs {
		procs[i].Name = label + ": " + procs[i].Name
	}
	s.Processes = append(s.Processes, procs...)
	st := statsOf(res)
	s.Figures = append(s.Figures, figure(label+": decisions/s", st.OpsPerSec, unitOps, ">=", opsTarget, st))
	cmp := ""
	if rateTarget > 0 {
		cmp = ">="
	}
	s.Figures = append(s.Figures, figure(label+": cache hit rate", hitRate(before, after), unitPercent, cmp, rateTarget, nil))
	return nil
}

// cache: the 80/20 mixed workload, L1, then L1 with Redis as L2.
func (e *env) cache(ctx context.Context, s *Scenario) error {
	hot, err := requests(0, hotCalls)
	if err != nil {
		return err
	}
	var (
		sc     *sidecar
		bundle string
	)
	if e.opts.Targets.sidecar() {
		sc = e.targetSidecar(1)
		s.Notes = append(s.Notes, "--target: the target's policy decides; unless it reads the call's arguments, the new calls are hits too")
	} else {
		bundle = filepath.Join(e.dir, "args-bundle")
		if err := writeArgsBundle(bundle); err != nil {
			return err
		}
		if sc, err = e.startSidecar(ctx, "m1-authz", "M1_POLICY_DIR="+bundle); err != nil {
			return err
		}
	}
	if err := e.warm(ctx, cycle(hot), sc); err != nil {
		return err
	}
	if err := e.measureCache(ctx, s, "L1", sc, mixed(hot, 1<<40), targetCacheOps, 0, nil); err != nil {
		return err
	}
	if e.opts.Targets.sidecar() {
		s.Notes = append(s.Notes, "--target: the L2 phase is left out (the target's own Redis, if any, was in use above)")
		return nil
	}
	e.stopAll()
	url, err := e.startRedis(ctx)
	if err != nil {
		s.Notes = append(s.Notes, "L1 + Redis L2 not measured: "+err.Error())
		return nil
	}
	sc2, err := e.startSidecar(ctx, "m1-authz (Redis L2)", "M1_POLICY_DIR="+bundle, "REDIS_URL="+url, "M1_CACHE_L2_MODE=always")
	if err != nil {
		return err
	}
	if err := e.warm(ctx, cycle(hot), sc2); err != nil {
		return err
	}
	var also []watched
	if len(e.redis) > 0 {
		also = append(also, watched{"redis-server", e.redis[0].Pid()})
	}
	return e.measureCache(ctx, s, "L1 + Redis L2", sc2, mixed(hot, 2<<40), targetCacheOps, 0, nil, also...)
}

// argsRule makes the default bundle's decision read the call's arguments,
// as a real policy that limits paths does: each new path is then a new
// decision-cache key.
const (
	argsRuleOld = "known_tool if data.m1.tools[input.m1.tool]"
	argsRuleNew = `known_tool if {
	data.m1.tools[input.m1.tool]
	not loadtest_blocked_path
}

loadtest_blocked_path if startswith(object.get(input.m1, ["args", "path"], ""), "/proc/")`
)

// writeArgsBundle writes the default bundle with argsRule to dir.
func writeArgsBundle(dir string) error {
	if err := writeBundle(dir); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	p := filepath.Join(dir, "authz.rego")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), argsRuleOld) {
		return fmt.Errorf("the default bundle's authz.rego has no %q to make read the arguments: update loadtest's argsRule", argsRuleOld)
	}
	return os.WriteFile(p, []byte(strings.Replace(string(b), argsRuleOld, argsRuleNew, 1)), 0o644)
}

// sidecarFor is the --target sidecar, or a new one.
func (e *env) sidecarFor(ctx context.Context, name string, extra ...string) (*sidecar, error) {
	if e.opts.Targets.sidecar() {
		return e.targetSidecar(1), nil
	}
	return e.startSidecar(ctx, name, extra...)
}

// policy: cacheable checks while the bundle flips and the cache is
// flushed.
func (e *env) policy(ctx context.Context, s *Scenario) error {
	reqs, err := requests(1<<20, policyCalls)
	if err != nil {
		return err
	}
	var (
		sc     *sidecar
		bundle string
	)
	if e.opts.Targets.sidecar() {
		sc = e.targetSidecar(1)
		s.Notes = append(s.Notes, "--target: the bundle is not flipped (it is the target's); the cache is flushed")
	} else {
		bundle = filepath.Join(e.dir, "bundle")
		if err := writeBundle(bundle); err != nil {
			return fmt.Errorf("write bundle: %w", err)
		}
		if sc, err = e.startSidecar(ctx, "m1-authz", "M1_POLICY_DIR="+bundle); err != nil {
			return err
		}
	}
	if err := e.warm(ctx, cycle(reqs), sc); err != nil {
		return err
	}
	rev0 := sc.policyRevision(ctx)
	interval := min(time.Second, e.opts.Duration/3)
	var flips, flushes int
	var errs []error
	during := func(ctx context.Context) {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if n%2 == 0 && bundle != "" {
				if err := flipBundle(bundle, n); err != nil {
					errs = append(errs, err)
				} else {
					flips++
				}
				continue
			}
			if err := sc.post(ctx, "/api/m1/cache/flush"); err != nil && ctx.Err() == nil {
				errs = append(errs, err)
			} else if err == nil {
				flushes++
			}
		}
	}
	if err := e.measureCache(ctx, s, "cacheable under invalidation", sc, cycle(reqs), targetPolicyOps, targetPolicyHitRate, during); err != nil {
		return err
	}
	rev1 := sc.policyRevision(ctx)
	s.Figures = append(s.Figures,
		figure("bundle changes written", float64(flips), "", "", 0, nil),
		figure("cache flushes", float64(flushes), "", "", 0, nil))
	if bundle != "" && rev0 != "" && rev0 == rev1 {
		s.Notes = append(s.Notes, "the policy revision did not change during the run: the bundle flips were not loaded")
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalidations: %w", err)
	}
	return nil
}

// flipBundle writes a data document that changes the bundle's revision.
func flipBundle(dir string, n int) error {
	d := filepath.Join(dir, "loadtest")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(d, ".data.json.tmp")
	if err := os.WriteFile(tmp, []byte(`{"flip":`+strconv.Itoa(n)+`}`), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(d, "data.json"))
}

// Process names of the load generator (this process) and of the no-op
// server's process.
const (
	genProcName  = "m1 loadtest (load generator)"
	noopProcName = "no-op server"
)

// noopServer is the approvals scenario's baseline: a no-op ext_authz
// server in a process of its own (m1 bench --serve-noop), as m1-authz is,
// so that both pay the same for being a process beside the load generator
// (bench.Options.NoopAddr). Without an m1 binary (none beside this one,
// in --bin or on PATH) it is in-process: addr and pid are empty, and a
// note says so.
type noopServer struct {
	addr string
	pid  int
}

func (e *env) startNoop(ctx context.Context, s *Scenario) (noopServer, error) {
	if e.bins.CLI == "" {
		s.Notes = append(s.Notes, "the no-op baseline ran in the load generator's process (no m1 binary to start it in its own): the ratios read low")
		return noopServer{}, nil
	}
	p, err := e.start(noopProcName, e.bins.CLI, []string{"bench", "--serve-noop", "127.0.0.1:0"}, nil)
	if err != nil {
		return noopServer{}, err
	}
	addr, err := p.firstLine(ctx)
	if err != nil {
		return noopServer{}, err
	}
	return noopServer{addr: addr, pid: p.pid()}, nil
}

// approvals: fresh approvals and grants against the no-op server, one
// sidecar (state in SQLite, audit on), then two sharing Redis.
func (e *env) approvals(ctx context.Context, s *Scenario) error {
	one, err := e.sidecarFor(ctx, "m1-authz")
	if err != nil {
		return err
	}
	noop, err := e.startNoop(ctx, s)
	if err != nil {
		return err
	}
	run := func(label, mode string, target float64, profile bool, scs ...*sidecar) error {
		addrs := make([]string, len(scs))
		var ws []watched
		for i, sc := range scs {
			addrs[i] = sc.grpc
			ws = append(ws, sc.watched()...)
		}
		if noop.pid != 0 {
			ws = append(ws, watched{noopProcName, noop.pid})
		}
		o := bench.DefaultOptions()
		o.Addr, o.Mode, o.KeyFile, o.Audience = strings.Join(addrs, ","), mode, e.keyFile, e.opts.Audience
		o.NoopAddr = noop.addr
		o.Concurrency, o.Connections, o.Duration = e.opts.Concurrency, len(scs), e.opts.Duration/2
		o.Warmup = min(500, max(50, int(e.opts.Duration/(10*time.Millisecond))))
		done := watch(ws...)
		meter := newRoundMeter(ws...)
		o.Round = meter.round
		wait := func() {}
		if profile {
			wait = e.profileDuring(ctx, s, scs[0], e.opts.Duration, label)
		}
		rep, err := bench.Run(ctx, o)
		procs := done()
		wait()
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		for i := range procs {
			procs[i].Name = label + ": " + procs[i].Name
			procs[i].Rounds = meter.uses(procs[i].PID, rep.Targets)
		}
		s.Processes = append(s.Processes, procs...)
		base, m1 := rep.Targets[0], rep.Targets[1]
		cmp := ">="
		if target == 0 {
			cmp = ""
		}
		s.Figures = append(s.Figures,
			figure(label+": m1-authz / no-op", rep.Ratio.Throughput, unitRatio, cmp, target, targetStats(m1)),
			figure(label+": no-op baseline", base.ChecksPerSec, unitOps, "", 0, targetStats(base)))
		if m1.MintedLive > 0 {
			s.Notes = append(s.Notes, fmt.Sprintf("%s: %d approvals were minted during measured rounds; the figure reads low", label, m1.MintedLive))
		}
		return nil
	}
	if err := run("cacheable, 1 sidecar", bench.ModeCache, targetCacheRatio, false, one); err != nil {
		return err
	}
	if err := run("fresh approval, 1 sidecar", bench.ModeApproval, targetApprovalRatio, true, one); err != nil {
		return err
	}
	if err := run("grant, 1 sidecar", bench.ModeGrant, targetGrantRatio, false, one); err != nil {
		return err
	}
	var two []*sidecar
	switch {
	case e.opts.Targets.Authz2 != "":
		two = []*sidecar{one, e.targetSidecar(2)}
	case e.opts.Targets.sidecar():
		s.Notes = append(s.Notes, "two sidecars on Redis not measured: give --target authz2=… (sharing authz's Redis)")
		return nil
	default:
		e.stopAll() // the no-op server too: started again below
		url, err := e.startRedis(ctx)
		if err != nil {
			s.Notes = append(s.Notes, "two sidecars on Redis not measured: "+err.Error())
			return nil
		}
		for i := range 2 {
			sc, err := e.startSidecar(ctx, "m1-authz "+strconv.Itoa(i+1)+" (Redis)", "REDIS_URL="+url)
			if err != nil {
				return err
			}
			two = append(two, sc)
		}
		if noop.pid != 0 {
			if noop, err = e.startNoop(ctx, s); err != nil {
				return err
			}
		}
	}
	if err := run("grant, 2 sidecars on Redis", bench.ModeGrant, 0, false, two...); err != nil {
		return err
	}
	return run("fresh approval, 2 sidecars on Redis", bench.ModeApproval, 0, false, two...)
}

func targetStats(t bench.Target) *LoadStats {
	s := &LoadStats{
		OpsPerSec: t.ChecksPerSec, Calls: t.Calls, Errors: t.Errors, ErrorTop: topOf(t.ErrorCounts),
		Mean: Dur(t.Mean), P50: Dur(t.P50), P95: Dur(t.P95), P99: Dur(t.P99), Max: Dur(t.Max), Elapsed: Dur(t.Elapsed),
	}
	return s.shapeOf(t.Timeline, t.Histogram)
}

func topOf(m map[string]int) []string {
	return bench.LoadResult{ErrorCounts: m}.TopErrors(3)
}

// metrics: /metrics scraped one after another under a cacheable load.
func (e *env) metrics(ctx context.Context, s *Scenario) error {
	hot, err := requests(0, hotCalls)
	if err != nil {
		return err
	}
	sc, err := e.sidecarFor(ctx, "m1-authz")
	if err != nil {
		return err
	}
	if err := e.warm(ctx, cycle(hot), sc); err != nil {
		return err
	}
	var (
		scrapes []time.Duration
		errs    int
		size    int
		errTop  = map[string]int{}
	)
	during := func(ctx context.Context) {
		for ctx.Err() == nil {
			t0 := time.Now()
			n, err := scrape(ctx, sc.admin)
			d := time.Since(t0)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				errs++
				errTop[err.Error()]++
			default:
				scrapes = append(scrapes, d)
				size = n
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(scrapeGap):
			}
		}
	}
	if err := e.measureCache(ctx, s, "under load", sc, cycle(hot), 0, 0, during); err != nil {
		return err
	}
	// The load's figures are context here, not targets.
	for i := range s.Figures {
		s.Figures[i].Cmp, s.Figures[i].Met = "", true
	}
	res := bench.LoadResult{Calls: uint64(len(scrapes) + errs), Errors: uint64(errs), ErrorCounts: errTop, Latencies: scrapes, Elapsed: e.opts.Duration}
	slices.Sort(res.Latencies)
	st := statsOf(res)
	st.Extra = map[string]any{"bytes": size}
	s.Figures = append(s.Figures, figure("/metrics scrape p99", float64(st.P99)/1e6, unitMS, "<=", targetScrapeP99MS, st))
	return nil
}

// scrapeGap is the pause between two scrapes of the metrics scenario.
const scrapeGap = 50 * time.Millisecond

// scrape GETs /metrics and reads it all; it returns its size.
func scrape(ctx context.Context, admin string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return int(n), err
}
