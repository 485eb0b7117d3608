package test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/orchestrator"
)

// proc is a helper process of the loop test (demo tool, dev proxy,
// orchestrator): its output is kept for failure messages, and it is
// stopped with SIGTERM when the test ends.
type proc struct {
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    strings.Builder
	lines  chan string // stdout lines
	exited chan struct{}
}

func (p *proc) String() string { p.mu.Lock(); defer p.mu.Unlock(); return p.out.String() }

func startProc(t *testing.T, name, bin string, args, env []string) *proc {
	t.Helper()
	p := &proc{name: name, lines: make(chan string, 64), exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(cleanEnv(), env...)
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = writerFunc(func(b []byte) { p.mu.Lock(); p.out.Write(b); p.mu.Unlock() })
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.exited:
		case <-time.After(stopTimeout):
			p.cmd.Process.Kill()
			t.Errorf("%s did not stop within %v; output:\n%s", name, stopTimeout, p)
		}
	})
	return p
}

// firstLine waits for the process's first stdout line (the listen address
// the demo tool and the dev proxy print).
func (p *proc) firstLine(t *testing.T) string {
	t.Helper()
	select {
	case l := <-p.lines:
		return strings.TrimSpace(l)
	case <-p.exited:
		t.Fatalf("%s exited; output:\n%s", p.name, p)
	case <-time.After(startTimeout):
		t.Fatalf("%s printed nothing within %v; output:\n%s", p.name, startTimeout, p)
	}
	return ""
}

type writerFunc func([]byte)

func (f writerFunc) Write(b []byte) (int, error) { f(b); return len(b), nil }

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// loop is the whole approval loop on loopback: the demo tool behind
// m1 dev-proxy and a real m1-authz, and m1-orchestrator with the scripted
// demo plan, all sharing one SQLite store.
type loop struct {
	dir, data, workspace string
	key, jwks            string
	sidecar              *sidecar
	proxyAddr            string
	orch                 *orchestrator.Client
	orchProc             *proc
	cliEnv               []string
}

const loopAudience = "demo-tools"

func startLoop(t *testing.T) *loop {
	t.Helper()
	l := &loop{dir: t.TempDir()}
	l.data, l.workspace = filepath.Join(l.dir, "data"), filepath.Join(l.dir, "workspace")
	if err := os.MkdirAll(l.workspace, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.workspace, "notes.txt"), []byte("old notes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(l.dir, "keys")
	if out, err := exec.Command(cliPath, "keys", "gen", "--out", keys, "--kid", "operator-1").CombinedOutput(); err != nil {
		t.Fatalf("m1 keys gen: %v\n%s", err, out)
	}
	l.key, l.jwks = filepath.Join(keys, "operator-1.jwk"), filepath.Join(keys, "jwks.json")

	tool := startProc(t, "m1-demo-tool", toolPath, []string{"--listen", "127.0.0.1:0", "--dir", l.workspace}, nil)
	toolAddr := tool.firstLine(t)
	l.sidecar = startSidecar(t, []string{"--jwks-file", l.jwks, "--audience", loopAudience, "--data-dir", l.data})
	l.proxyAddr = freeAddr(t)
	proxy := startProc(t, "m1 dev-proxy", cliPath, []string{"dev-proxy", "--listen", l.proxyAddr, "--authz", l.sidecar.GRPCAddr, "--upstream", "http://" + toolAddr}, nil)
	proxy.firstLine(t) // it listens

	orchAddr := freeAddr(t)
	const token = "loop-admin-token"
	l.orchProc = startProc(t, "m1-orchestrator", orchPath, []string{
		"--addr", orchAddr, "--data-dir", l.data, "--admin-token", token,
		"--plan-file", "../testdata/plans/demo.yaml", "--tool-endpoint", "http://" + l.proxyAddr,
		"--jwks-file", l.jwks, "--audience", loopAudience,
	}, nil)
	l.orch = &orchestrator.Client{BaseURL: "http://" + orchAddr, Token: token}
	testenv.Eventually(t, startTimeout, "m1-orchestrator /health", func() bool {
		select {
		case <-l.orchProc.exited:
			t.Fatalf("m1-orchestrator exited:\n%s", l.orchProc)
		default:
		}
		resp, err := http.Get(l.orch.BaseURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	l.cliEnv = []string{
		"M1_ORCHESTRATOR_URL=" + l.orch.BaseURL, "M1_ADMIN_TOKEN=" + token,
		"M1_SIGNING_KEY=" + l.key, "M1_AUDIENCE=" + loopAudience, "USER=alice",
	}
	return l
}

func (l *loop) m1(t *testing.T, args ...string) (int, string) {
	t.Helper()
	return l.m1Env(t, nil, args...)
}

// m1Env is m1 with env over the loop's environment.
func (l *loop) m1Env(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliPath, args...)
	cmd.Env = append(append(cleanEnv(), l.cliEnv...), env...) // the last value of a variable wins
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("m1 %v: %v", args, err)
	}
	return code, string(out)
}

func (l *loop) pending(t *testing.T) []store.Proposal {
	t.Helper()
	ps, err := l.orch.Proposals(context.Background(), store.ProposalPending)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestApprovalLoop runs DESIGN §2 end to end: goal → scripted planner →
// proposals → m1 approve (auto-risk, then interactively through a
// pseudo-terminal) → dispatch through the dev proxy and the real m1-authz
// → the demo tool runs each call once → audit events for proposal,
// approval, decision and result, with cost.
func TestApprovalLoop(t *testing.T) {
	l := startLoop(t)
	ctx := context.Background()

	run, err := l.orch.CreateRun(ctx, orchestrator.RunRequest{Goal: "Review the workspace and record a summary.", Agent: "demo-agent"})
	if err != nil {
		t.Fatal(err)
	}
	if run.Status != store.RunRunning || len(run.Proposals) != 2 {
		t.Fatalf("run = %s with %d proposals; want running with 2\n%s", run.Status, len(run.Proposals), l.orchProc)
	}

	// Step 1: both calls are read-risk: the non-interactive auto-approval.
	if code, out := l.m1(t, "approve", "--auto-risk", "read"); code != 0 {
		t.Fatalf("m1 approve --auto-risk read = exit %d\n%s\norchestrator:\n%s", code, out, l.orchProc)
	}
	var write store.Proposal
	testenv.Eventually(t, 20*time.Second, "the write_file proposal", func() bool {
		ps := l.pending(t)
		if len(ps) == 1 {
			write = ps[0]
		}
		return len(ps) == 1
	})
	if write.Tool != "write_file" || write.Risk != "write" || write.Step != 2 {
		t.Fatalf("step 2 proposal = %+v", write)
	}

	// The orchestrator's admin token is not enough to approve: an approval
	// signed by a key that is not in its JWKS (here one with the
	// operator's kid) is refused, and nothing is recorded.
	forged := filepath.Join(l.dir, "mallory")
	if out, err := exec.Command(cliPath, "keys", "gen", "--out", forged, "--kid", "operator-1").CombinedOutput(); err != nil {
		t.Fatalf("m1 keys gen: %v\n%s", err, out)
	}
	if code, out := l.m1Env(t, []string{"M1_SIGNING_KEY=" + filepath.Join(forged, "operator-1.jwk")}, "approve", write.ID); code != 1 || !strings.Contains(out, "token_invalid") {
		t.Fatalf("m1 approve with a key not in the JWKS = exit %d, want 1 and token_invalid\n%s", code, out)
	}
	if p, err := l.orch.Proposal(ctx, write.ID); err != nil || p.Status != store.ProposalPending || p.Approver != "" || p.ApprovalJTI != "" {
		t.Fatalf("proposal after a forged approval = %+v, %v; want pending, nothing recorded", p, err)
	}

	// Step 2: the operator approves the write interactively.
	approveInteractively(t, l, write)

	var final orchestrator.RunDetail
	testenv.Eventually(t, 20*time.Second, "the run to complete", func() bool {
		final, err = l.orch.Run(ctx, run.ID)
		return err == nil && final.Status != store.RunRunning
	})
	if final.Status != store.RunCompleted {
		t.Fatalf("run ended %s (%s)\norchestrator:\n%s", final.Status, final.Error, l.orchProc)
	}
	got, err := os.ReadFile(filepath.Join(l.workspace, "notes.txt"))
	if err != nil || string(got) != "Workspace reviewed by the demo agent.\n" {
		t.Fatalf("notes.txt = %q, %v; want the plan's content", got, err)
	}
	if len(final.ToolCalls) != 3 {
		t.Fatalf("tool calls = %+v, want 3", final.ToolCalls)
	}
	for _, c := range final.ToolCalls {
		if c.Status != store.CallSucceeded {
			t.Fatalf("tool call %s (%s) = %s: %s", c.ID, c.Tool, c.Status, c.Error)
		}
	}
	// The demo plan's simulated usage, priced as claude-sonnet-4-6 ($3 in,
	// $15 out, $0.30 cache read per million tokens).
	wantCost := (1200*3.0 + 150*15 + 1650*3 + 90*15 + 1200*0.30) / 1e6
	if d := final.Usage.CostUSD - wantCost; d > 1e-9 || d < -1e-9 {
		t.Fatalf("run cost = %.6f, want %.6f", final.Usage.CostUSD, wantCost)
	}

	// Exactly once: the decided proposal cannot be approved again.
	approved, err := l.orch.Proposal(ctx, write.ID)
	if err != nil || approved.ApprovalJTI == "" || approved.Approver != "alice" || approved.Status != store.ProposalExecuted {
		t.Fatalf("approved proposal = %+v, %v", approved, err)
	}
	if code, out := l.m1(t, "approve", write.ID); code == 0 {
		t.Fatalf("m1 approve of an executed proposal = exit 0\n%s", out)
	}

	// The audit trail: the orchestrator's events and the sidecar's
	// decisions and tool outcomes (from the dev proxy's access log),
	// linked by run and proposal, with cost.
	st := openStore(t, "", l.data)
	var events []store.Event
	testenv.Eventually(t, 20*time.Second, "audit events", func() bool {
		events = events[:0]
		st.Events(ctx, store.Filter{RunID: run.ID}, func(e store.Event) error { events = append(events, e); return nil })
		return count(events, "", "") >= 3*5+2+1 // 3 × (proposal, approval, decision, 2 results), 2 llm_call, run
	})
	for _, p := range final.Proposals {
		for _, kind := range []string{orchestrator.KindProposal, orchestrator.KindApproval, store.KindDecision} {
			if n := count(events, p.ID, kind); n != 1 {
				t.Errorf("proposal %s (%s): %d %q events, want 1", p.ID, p.Tool, n, kind)
			}
		}
		// Two results: the orchestrator's dispatch, and m1-authz's record
		// of Envoy's access log, linked to the decision by its id.
		var decision string
		var results []store.Event
		for _, e := range events {
			switch {
			case e.ProposalID == p.ID && e.Kind == store.KindDecision:
				decision = e.DecisionID
			case e.ProposalID == p.ID && e.Kind == store.KindResult:
				results = append(results, e)
			}
		}
		outcomes := 0
		for _, r := range results {
			fromLog := strings.Contains(r.Detail, `"source":"envoy_access_log"`)
			if fromLog {
				outcomes++
			}
			if r.Decision != "succeeded" || fromLog && (r.DecisionID != decision || r.Status != 200) {
				t.Errorf("proposal %s (%s): result %+v, want succeeded (the access log's: 200, for decision %s)", p.ID, p.Tool, r, decision)
			}
		}
		if len(results) != 2 || outcomes != 1 {
			t.Errorf("proposal %s (%s): %d result events (%d from the access log), want 2 (1)", p.ID, p.Tool, len(results), outcomes)
		}
	}
	for _, e := range events {
		if e.Kind == store.KindDecision && e.Decision != "allow" {
			t.Errorf("decision for %s = %s %s", e.ProposalID, e.Decision, e.Reason)
		}
		if e.Kind == orchestrator.KindResult && !strings.Contains(e.Detail, `"run_cost_usd"`) && !strings.Contains(e.Detail, `"envoy_access_log"`) {
			t.Errorf("result event without the run's cost: %s", e.Detail)
		}
	}
	if n := count(events, "", orchestrator.KindLLMCall); n != 2 {
		t.Errorf("%d llm_call events, want 2", n)
	}
	if code, out := l.m1(t, "audit", "verify", "--data-dir", l.data); code != 0 {
		t.Errorf("m1 audit verify = %d\n%s", code, out)
	}
}

func count(events []store.Event, proposal, kind string) int {
	n := 0
	for _, e := range events {
		if (proposal == "" || e.ProposalID == proposal) && (kind == "" || e.Kind == kind) {
			n++
		}
	}
	return n
}

// approveInteractively runs m1 approve in a pseudo-terminal, as an
// operator would, and approves the one pending proposal.
func approveInteractively(t *testing.T, l *loop, p store.Proposal) {
	t.Helper()
	cmd := exec.Command(cliPath, "approve")
	cmd.Env = append(cleanEnv(), append(l.cliEnv, "TERM=xterm-256color")...)
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 60, Cols: 200})
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	var (
		mu   sync.Mutex
		out  []byte
		seen int
	)
	exited := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			mu.Lock()
			out = append(out, buf[:n]...)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() { exited <- cmd.Wait(); ptmx.Close() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	screen := func() string { mu.Lock(); defer mu.Unlock(); return ansiSeq.ReplaceAllString(string(out), "") }
	waitFor := func(want string) {
		t.Helper()
		testenv.Eventually(t, 20*time.Second, "m1 approve to show "+strconv.Quote(want), func() bool {
			sc := screen()
			if i := strings.Index(sc[min(seen, len(sc)):], want); i >= 0 {
				seen += i + len(want)
				return true
			}
			return false
		})
	}
	waitFor("proposal " + p.ID)
	waitFor("write_file")
	waitFor(`"content": "Workspace reviewed by the demo agent.\n"`) // the canonical arguments, escaped
	waitFor("skip: leave it pending")                               // the prompt is up
	ptmx.Write([]byte("\x10\x10\r"))                                // up twice (Ctrl-P) from skip to approve, Enter
	waitFor("executed")
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("m1 approve: %v; screen:\n%s", err, screen())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("m1 approve did not exit; screen:\n%s", screen())
	}
}

// ansiSeq matches terminal control sequences: CSI, OSC and two-byte escapes.
var ansiSeq = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]`)

// TestGrantedLoop: a run given a grant (m1 grant) needs no operator for
// the calls the grant covers, through the real m1-authz, which counts the
// grant's uses; once the sidecar refuses the grant (grant_exhausted), the
// run's calls wait for an operator, and m1 approve finishes it.
func TestGrantedLoop(t *testing.T) {
	l := startLoop(t)
	ctx := context.Background()
	code, out := l.m1(t, "grant", "--agent", "demo-agent", "--tools", "list_dir,read_file,write_file", "--max-uses", "4", "--ttl", "2m")
	if code != 0 {
		t.Fatalf("m1 grant = exit %d\n%s", code, out)
	}
	grant := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])

	// One use spent outside the orchestrator, as an agent with the grant
	// could: the sidecar counts it, the orchestrator does not know of it.
	if code, out := l.m1(t, "check", "--addr", l.sidecar.GRPCAddr, "--json", "--tool", "list_dir", "--args", `{"path":"."}`, "--token", grant); code != 0 || !strings.Contains(out, `"allow"`) {
		t.Fatalf("m1 check with the grant = exit %d\n%s", code, out)
	}

	// Run 1: every call is covered, so no one is asked.
	run, err := l.orch.CreateRun(ctx, orchestrator.RunRequest{Goal: "Review the workspace and record a summary.", Agent: "demo-agent", Grants: []string{grant}})
	if err != nil {
		t.Fatal(err)
	}
	var final orchestrator.RunDetail
	testenv.Eventually(t, 20*time.Second, "the granted run to end", func() bool {
		final, err = l.orch.Run(ctx, run.ID)
		return err == nil && final.Status != store.RunRunning
	})
	if final.Status != store.RunCompleted || len(final.ToolCalls) != 3 {
		t.Fatalf("granted run = %s (%s) with %d tool calls, want completed with 3\norchestrator:\n%s", final.Status, final.Error, len(final.ToolCalls), l.orchProc)
	}
	for _, p := range final.Proposals {
		if p.Status != store.ProposalExecuted || p.Approver != "grant:alice" {
			t.Errorf("granted proposal %s = %s by %q, want executed, approver grant:alice (the grant's act.sub)", p.Tool, p.Status, p.Approver)
		}
	}
	if got, err := os.ReadFile(filepath.Join(l.workspace, "notes.txt")); err != nil || string(got) != "Workspace reviewed by the demo agent.\n" {
		t.Fatalf("notes.txt = %q, %v; want the plan's content", got, err)
	}

	// The fleet dashboard counts them apart from operators' approvals.
	req, _ := http.NewRequest("GET", l.orch.BaseURL+"/api/m1/dashboard/approvals", nil)
	req.Header.Set("Authorization", "Bearer "+l.orch.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var analytics struct {
		Approved, Granted int
		ByOperator        []any `json:"by_operator"`
	}
	err = json.NewDecoder(resp.Body).Decode(&analytics)
	resp.Body.Close()
	if err != nil || analytics.Granted != 3 || analytics.Approved != 0 || len(analytics.ByOperator) != 0 {
		t.Fatalf("approval analytics = %+v, %v; want 3 granted, no operator approvals", analytics, err)
	}

	// Run 2: the orchestrator has dispatched 3 of the grant's 4 uses, so it
	// sends list_dir with it; the sidecar has counted 4 and refuses. The
	// call did not run and waits for an operator, as does read_file.
	run2, err := l.orch.CreateRun(ctx, orchestrator.RunRequest{Goal: "again", Agent: "demo-agent", Grants: []string{grant}})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "both calls of step 1 pending", func() bool {
		ps, err := l.orch.Run(ctx, run2.ID)
		n := 0
		for _, p := range ps.Proposals {
			if p.Status == store.ProposalPending && (p.Tool != "list_dir" || strings.Contains(p.Reason, "grant_exhausted")) {
				n++
			}
		}
		return err == nil && n == 2
	})
	if d, _ := l.orch.Run(ctx, run2.ID); len(d.ToolCalls) != 1 || d.ToolCalls[0].Status != store.CallDenied || d.ToolCalls[0].Tool != "list_dir" {
		t.Fatalf("run 2 tool calls = %+v, want list_dir denied", d.ToolCalls)
	}
	if code, out := l.m1(t, "approve", "--auto-risk", "read"); code != 0 {
		t.Fatalf("m1 approve --auto-risk read = exit %d\n%s", code, out)
	}
	testenv.Eventually(t, 20*time.Second, "the write_file proposal, not granted", func() bool {
		ps := l.pending(t)
		return len(ps) == 1 && ps[0].Tool == "write_file" && ps[0].RunID == run2.ID
	})
	if code, out := l.m1(t, "approve", "--auto-risk", "write", "--yes"); code != 0 {
		t.Fatalf("m1 approve --auto-risk write = exit %d\n%s", code, out)
	}
	testenv.Eventually(t, 20*time.Second, "run 2 to end", func() bool {
		final, err = l.orch.Run(ctx, run2.ID)
		return err == nil && final.Status != store.RunRunning
	})
	if final.Status != store.RunCompleted {
		t.Fatalf("run 2 = %s (%s)\norchestrator:\n%s", final.Status, final.Error, l.orchProc)
	}

	// The sidecar's record: the grant allowed 4 calls and refused the 5th.
	code, out = l.m1(t, "token", "inspect", grant, "--json")
	var inspected struct {
		Claims struct {
			JTI string `json:"jti"`
		} `json:"claims"`
	}
	if err := json.Unmarshal([]byte(out), &inspected); code != 0 || err != nil || inspected.Claims.JTI == "" {
		t.Fatalf("m1 token inspect = exit %d, %v\n%s", code, err, out)
	}
	jti := inspected.Claims.JTI
	if final.Proposals[0].ApprovalJTI == jti || final.Proposals[0].ApprovalJTI == "" {
		t.Fatalf("run 2's list_dir was approved with %q, want the operator's approval", final.Proposals[0].ApprovalJTI)
	}
	st := openStore(t, "", l.data)
	var allowed, exhausted int
	testenv.Eventually(t, 20*time.Second, "the sidecar's decisions under the grant", func() bool {
		allowed, exhausted = 0, 0
		st.Events(ctx, store.Filter{}, func(e store.Event) error {
			if e.Kind == store.KindDecision && e.TokenJTI == jti {
				switch {
				case e.Decision == "allow":
					allowed++
				case e.Reason == "grant_exhausted":
					exhausted++
				}
			}
			return nil
		})
		return allowed == 4 && exhausted == 1
	})
}
