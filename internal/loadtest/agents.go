package loadtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/bench"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/orchestrator"
)

// demoPlan is the scripted plan every agent run follows: testdata/plans/
// demo.yaml (two reads, then a write).
const demoPlan = `model: claude-sonnet-4-6
steps:
  - text: "I will look at the workspace and read the existing notes first."
    usage: {input_tokens: 1200, output_tokens: 150, cache_read_tokens: 0, cache_write_tokens: 0}
    calls:
      - tool: list_dir
        args: {path: "."}
        reasoning: "See what is in the workspace before changing anything."
      - tool: read_file
        args: {path: notes.txt}
        reasoning: "Read the current notes so that the update keeps them."
  - text: "Now I record the summary."
    usage: {input_tokens: 1650, output_tokens: 90, cache_read_tokens: 1200, cache_write_tokens: 0}
    calls:
      - tool: write_file
        args:
          path: notes.txt
          content: "Workspace reviewed by the demo agent.\n"
        reasoning: "Write the summary to notes.txt (a write: needs an operator's approval, or a grant)."
`

// demoTools are the tools of demoPlan: each agent's grant covers them.
var demoTools = []string{"list_dir", "read_file", "write_file"}

// Timing of the agents scenario.
const (
	runPoll    = 100 * time.Millisecond // how often an agent looks at its run
	runTimeout = 60 * time.Second       // a run not finished by then failed
	orchToken  = "loadtest-orchestrator-token"
	// grantOperator is the operator (act.sub) of the agents' grants.
	grantOperator = "loadtest-operator"
	// grantTTL is a grant's lifetime, within the sidecars' default
	// M1_APPROVAL_TOKEN_TTL_MINUTES (5); an agent takes a new one once
	// its grant is past grantRenew.
	grantTTL, grantRenew = 4 * time.Minute, 2 * time.Minute
	grantUses            = 1 << 20 // uses of one grant: never the limit here
)

// agents: concurrent runs of the demo plan, each carrying its agent's
// grant, so that no person is needed.
func (e *env) agents(ctx context.Context, s *Scenario) error {
	var (
		orchURL string
		ws      []watched
		sc      *sidecar
	)
	if e.opts.Targets.Orchestrator != "" {
		orchURL = e.opts.Targets.Orchestrator
		s.Notes = append(s.Notes, "--target: the orchestrator's tool calls go wherever it is configured to send them")
	} else {
		if e.opts.Targets.sidecar() {
			return &skipError{"--target authz=… without orchestrator=…: the agents scenario needs its own chain (give --target orchestrator=URL, or no targets)"}
		}
		work := filepath.Join(e.dir, "workspace")
		if err := os.MkdirAll(work, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(work, "notes.txt"), []byte("old notes\n"), 0o644); err != nil {
			return err
		}
		tool, err := e.start("m1-demo-tool", e.bins.DemoTool, []string{"--listen", "127.0.0.1:0", "--dir", work, "--log-level", "warn"}, nil)
		if err != nil {
			return err
		}
		toolAddr, err := tool.firstLine(ctx)
		if err != nil {
			return err
		}
		if sc, err = e.startSidecar(ctx, "m1-authz"); err != nil {
			return err
		}
		pp, err := bench.FreePort()
		if err != nil {
			return err
		}
		proxyAddr := "127.0.0.1:" + strconv.Itoa(pp)
		proxy, err := e.start("m1 dev-proxy", e.bins.CLI, []string{"dev-proxy", "--listen", proxyAddr, "--authz", sc.grpc,
			"--upstream", "http://" + toolAddr, "--log-level", "warn"}, nil)
		if err != nil {
			return err
		}
		if _, err := proxy.firstLine(ctx); err != nil {
			return err
		}
		plan := filepath.Join(e.dir, "plan.yaml")
		if err := os.WriteFile(plan, []byte(demoPlan), 0o644); err != nil {
			return err
		}
		op, err := bench.FreePort()
		if err != nil {
			return err
		}
		orchAddr := "127.0.0.1:" + strconv.Itoa(op)
		orchData, err := os.MkdirTemp(e.dir, "orchestrator-data-")
		if err != nil {
			return err
		}
		orch, err := e.start("m1-orchestrator", e.bins.Orchestrator, []string{
			"--addr", orchAddr, "--data-dir", orchData, "--admin-token", orchToken,
			"--plan-file", plan, "--tool-endpoint", "http://" + proxyAddr,
			"--jwks-file", e.jwksFile, "--audience", e.opts.Audience, "--log-level", "warn",
		}, nil)
		if err != nil {
			return err
		}
		orchURL = "http://" + orchAddr
		if err := orch.waitHTTP(ctx, orchURL+"/health"); err != nil {
			return err
		}
		ws = []watched{{"m1-authz", sc.proc.pid()}, {"m1 dev-proxy", proxy.pid()}, {"m1-demo-tool", tool.pid()}, {"m1-orchestrator", orch.pid()}}
	}
	token := orchToken
	if e.opts.Targets.Orchestrator != "" {
		token = e.opts.AdminToken
	}
	key, err := approval.LoadSigningKey(e.keyFile)
	if err != nil {
		return err
	}
	client := &orchestrator.Client{BaseURL: orchURL, Token: token}
	g := &granter{key: key, audience: e.opts.Audience}

	done := watch(ws...)
	var wait func()
	if sc != nil {
		wait = e.profileDuring(ctx, s, sc, e.opts.Duration, "")
	}
	res := runAgents(ctx, client, g, e.opts.Agents, e.opts.Duration)
	s.Processes = append(s.Processes, done()...)
	if wait != nil {
		wait()
	}

	total := res.ok + res.failed
	okPct := 0.0
	if total > 0 {
		okPct = 100 * float64(res.ok) / float64(total)
	}
	runStats := statsOf(bench.LoadResult{Calls: uint64(total), Errors: uint64(res.failed), ErrorCounts: res.failures, Latencies: res.runTimes, Elapsed: res.elapsed})
	callStats := statsOf(bench.LoadResult{Calls: uint64(len(res.callTimes) + res.callErrors), Errors: uint64(res.callErrors), ErrorCounts: res.callFailures, Latencies: res.callTimes, Elapsed: res.elapsed})
	runsPS := 0.0
	if res.elapsed > 0 {
		runsPS = float64(res.ok) / res.elapsed.Seconds()
	}
	f := figure("agent runs that completed", okPct, unitPercent, ">=", targetRunsOK, nil)
	f.Met = okPct >= targetRunsOK && total > 0
	s.Figures = append(s.Figures,
		f,
		figure("completed runs/s ("+strconv.Itoa(e.opts.Agents)+" agents)", runsPS, unitRunsPS, "", 0, runStats),
		figure("tool call p99 (dispatch through the proxy)", float64(callStats.P99)/1e6, unitMS, "", 0, callStats),
		figure("calls approved by a grant", float64(res.granted), "", "", 0, nil),
		figure("grants signed", float64(g.signed.Load()), "", "", 0, nil))
	if res.manual > 0 {
		s.Notes = append(s.Notes, fmt.Sprintf("%d calls of completed runs were not approved by the agent's grant", res.manual))
	}
	if total == 0 {
		return errors.New("no agent run finished")
	}
	return nil
}

// agentResult is what the agents did.
type agentResult struct {
	ok, failed   int
	failures     map[string]int
	runTimes     []time.Duration // of the completed runs, sorted
	callTimes    []time.Duration // of the tool calls of completed runs, sorted
	callErrors   int
	callFailures map[string]int
	granted      int // proposals of completed runs approved by their grant
	manual       int // and by anything else
	elapsed      time.Duration
}

// runAgents runs n agents, each starting a run of the plan with its grant
// and waiting for its end, one after another, for d; then waits for the
// runs in flight (up to runTimeout).
func runAgents(ctx context.Context, client *orchestrator.Client, g *granter, n int, d time.Duration) agentResult {
	var (
		mu  sync.Mutex
		res = agentResult{failures: map[string]int{}, callFailures: map[string]int{}}
		wg  sync.WaitGroup
	)
	t0 := time.Now()
	deadline := t0.Add(d)
	fail := func(why string) {
		mu.Lock()
		res.failed++
		res.failures[why]++
		mu.Unlock()
	}
	for i := range n {
		agent := "agent-" + strconv.Itoa(i+1)
		wg.Go(func() {
			var grant agentGrant
			for time.Now().Before(deadline) && ctx.Err() == nil {
				start := time.Now()
				if err := g.renew(&grant, agent, start); err != nil {
					fail("sign a grant: " + err.Error())
					return
				}
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				run, err := client.CreateRun(cctx, orchestrator.RunRequest{Goal: "Review the workspace and record a summary.", Agent: agent, Grants: []string{grant.token}})
				cancel()
				if err != nil {
					fail("create run: " + err.Error())
					continue
				}
				detail, err := waitRun(ctx, client, run.ID)
				if err != nil {
					fail(err.Error())
					continue
				}
				if detail.Status != store.RunCompleted {
					fail("run " + detail.Status + ": " + detail.Error)
					continue
				}
				mu.Lock()
				res.ok++
				res.runTimes = append(res.runTimes, time.Since(start))
				for _, p := range detail.Proposals {
					if p.ApprovalJTI == grant.jti {
						res.granted++
					} else {
						res.manual++
					}
				}
				for _, c := range detail.ToolCalls {
					if c.Status == store.CallSucceeded {
						res.callTimes = append(res.callTimes, time.Duration(c.DurationUS)*time.Microsecond)
					} else {
						res.callErrors++
						res.callFailures[c.Tool+" "+c.Status+": "+c.Error]++
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(t0)
	slices.Sort(res.runTimes)
	slices.Sort(res.callTimes)
	return res
}

// waitRun polls run id until it is no longer running.
func waitRun(ctx context.Context, client *orchestrator.Client, id string) (orchestrator.RunDetail, error) {
	deadline := time.Now().Add(runTimeout)
	for {
		select {
		case <-ctx.Done():
			return orchestrator.RunDetail{}, ctx.Err()
		case <-time.After(runPoll):
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		d, err := client.Run(cctx, id)
		cancel()
		if err == nil && d.Status != store.RunRunning {
			return d, nil
		}
		if time.Now().After(deadline) {
			return d, fmt.Errorf("run not finished within %v", runTimeout)
		}
	}
}

// granter signs the agents' grants with the operator's key, as m1 grant
// would: each covers the demo plan's tools.
type granter struct {
	key      *approval.SigningKey
	audience string
	signed   atomic.Int64
}

// agentGrant is the grant an agent's runs carry.
type agentGrant struct {
	token, jti string
	issued     time.Time
}

// renew gives g a new grant for agent when it has none, or one past
// grantRenew.
func (gr *granter) renew(g *agentGrant, agent string, now time.Time) error {
	if g.token != "" && now.Sub(g.issued) < grantRenew {
		return nil
	}
	c := approval.Claims{
		Kind: approval.KindGrant, Issuer: "m1-loadtest", Subject: agent, Actor: grantOperator,
		Audience: []string{gr.audience}, IssuedAt: now, NotBefore: now, Expiry: now.Add(grantTTL),
		Tools: demoTools, MaxUses: grantUses, ID: "loadtest-grant-" + agent + "-" + strconv.FormatInt(now.UnixNano(), 36),
	}
	tok, err := approval.Mint(gr.key, c)
	if err != nil {
		return err
	}
	*g = agentGrant{token: tok, jti: c.ID, issued: now}
	gr.signed.Add(1)
	return nil
}
