package orchestratord

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/sidecar"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/orchestrator"
)

// Payloads an agent could put in a goal, its name or a tool argument: the
// page must show them as text, never run them.
const (
	xssGoal  = `review <img src=x onerror=alert(1)>`
	xssAgent = `<script>alert(2)</script>`
	xssArg   = `<img src=y onerror=alert(3)>`
)

// xssPlan proposes, in one step, a read whose argument carries markup and
// a list_dir that operators approve again and again (a grant candidate).
const xssPlan = `model: claude-sonnet-4-6
steps:
  - text: "Look first."
    usage: {input_tokens: 1200, output_tokens: 150, cache_read_tokens: 0, cache_write_tokens: 0}
    calls:
      - tool: list_dir
        args: {path: "."}
        reasoning: "See the workspace."
      - tool: read_file
        args: {path: "` + xssArg + `"}
        reasoning: "Read the notes."
`

// TestFleetDashboardInChromium runs the fleet: two sidecars and the
// orchestrator in-process on one store, and Debian's Prometheus scraping
// the three of them. In headless Chromium, the orchestrator's dashboard
// shows both pods, every tab renders the fleet's data (the charts from
// Prometheus, their PromQL on hover), the agents' text stays text and the
// console stays clean. A second orchestrator without Prometheus says so.
//
// With M1_SCREENSHOTS=DIR (make screenshots) it saves a PNG of each tab
// there.
func TestFleetDashboardInChromium(t *testing.T) {
	b := testenv.StartBrowser(t)
	data := testenv.DataDir(t) // the shared store: m1.db
	sidecars := []*sidecar.Server{startSidecar(t, data), startSidecar(t, data)}
	orchAddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	var targets []string
	for _, s := range sidecars {
		targets = append(targets, s.AdminAddr().String())
	}
	prom := testenv.StartPrometheus(t, map[string][]string{"m1-authz": targets, "m1-orchestrator": {orchAddr}})

	key, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.Addr, o.DataDir, o.AdminToken, o.PrometheusURL = orchAddr, data, "fleet-token", prom.URL
	o.PlanFile = filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(o.PlanFile, []byte(xssPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	o.ToolEndpoint = "http://127.0.0.1:1" // nothing listens: an approved call fails at dispatch
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	o.Registerer, o.Gatherer = reg, reg
	startOrchestrator(t, o)

	// Real work: checks through both sidecars, runs planned by the
	// orchestrator, and an operator approving the same list_dir thrice.
	for _, s := range sidecars {
		traffic(t, s)
	}
	c := &orchestrator.Client{BaseURL: "http://" + orchAddr, Token: o.AdminToken}
	ctx := context.Background()
	for i := range 3 {
		d, err := c.CreateRun(ctx, orchestrator.RunRequest{Goal: xssGoal, Agent: "agent-0"})
		if err != nil {
			t.Fatal(err)
		}
		p := d.Proposals[0] // list_dir {"path":"."}
		if _, err := c.Approve(ctx, p.ID, approvalToken(t, key, p)); err != nil {
			t.Fatalf("approve %s: %v", p.ID, err)
		}
		if i == 0 { // scraped before the next two: Prometheus sees the count increase
			prom.WaitFor(t, `sum(m1_tool_executions_total{job="m1-orchestrator"})`, 1, 30*time.Second)
		}
	}
	seedXSSAgent(t, data)

	prom.WaitFor(t, `count(up == 1)`, 3, 30*time.Second)
	prom.WaitFor(t, `count(sum by (instance) (rate(m1_policy_checks_total[1m])) > 0)`, 2, 30*time.Second)
	// The orchestrator's 3 failed dispatches are in Prometheus under the
	// tool-outcome names, but the fleet's tool executions are the
	// sidecars' (none: nothing sends them an access log here), so that a
	// dispatched call is not counted twice.
	prom.WaitFor(t, `sum(increase(m1_tool_executions_total{job="m1-orchestrator"}[24h]))`, 1, 30*time.Second)
	if te := operationsToolExecutions(t, "http://"+orchAddr, o.AdminToken); te.Source != "prometheus" || len(te.Rows) != 0 {
		t.Errorf("fleet tool executions = %+v, want none from Prometheus (the orchestrator's dispatches left out)", te)
	}

	if os.Getenv("M1_SCREENSHOTS") != "" {
		time.Sleep(15 * time.Second) // charts worth a picture
	}
	base := "http://" + orchAddr + "/"
	start := time.Now()
	b.Navigate(t, base+"?token="+o.AdminToken)
	b.Wait(t, "the operations tab rendered", `document.body.dataset.rendered === 'operations'`)
	t.Logf("page load: %s to the load event (navigation timing %s ms), first render at %s ms after navigation start",
		time.Since(start).Round(time.Millisecond), b.Eval(t, `String(Math.round(performance.getEntriesByType('navigation')[0].loadEventEnd))`),
		b.Eval(t, `document.body.dataset.firstRenderMs`))
	// A fleet younger than the default hour: the last 15 minutes.
	b.Do(t, "pick 15 minutes of history", chromedp.Evaluate[chromedp.Void](`(() => { const r = document.getElementById('range'); r.value = '15m'; r.dispatchEvent(new Event('change')); })()`))
	if got := b.Eval(t, `document.getElementById('scope').textContent + ' ' + document.getElementById('service').textContent`); got != "fleet m1-orchestrator" {
		t.Errorf("scope and service = %q, want fleet m1-orchestrator", got)
	}

	// The fleet shows both pods, each with its revision and rates.
	b.Wait(t, "the fleet table lists both sidecars with their revision", fmt.Sprintf(
		`[...document.querySelectorAll('#fleet tbody tr')].filter(r => (r.textContent.includes(%q) || r.textContent.includes(%q)) && r.textContent.includes('m1-authz') && r.textContent.includes('sha256:')).length === 2`,
		targets[0], targets[1]))
	fleet := b.Eval(t, `document.getElementById('fleet').textContent`)
	for _, want := range append(targets, orchAddr, "m1-orchestrator") {
		if !strings.Contains(fleet, want) {
			t.Errorf("fleet table lacks %s:\n%s", want, fleet)
		}
	}

	// The charts come from Prometheus, their PromQL shown on hover.
	b.Wait(t, "the checks chart drew from Prometheus", `document.querySelectorAll('[data-panel=checks_rate] canvas').length > 0`)
	if got := b.Eval(t, `document.querySelector('[data-panel=checks_rate] .promql').textContent`); !strings.Contains(got, "rate(m1_policy_checks_total[") {
		t.Errorf("checks chart PromQL = %q, want the query", got)
	}
	if got := hoverDisplay(t, b, `[data-panel=checks_rate]`, `[data-panel=checks_rate] .promql`); got != "block" {
		t.Errorf("PromQL display on hover = %q, want block", got)
	}
	if got := b.Eval(t, `document.querySelector('#view').textContent`); !strings.Contains(got, xssArg) || !strings.Contains(got, xssGoal) {
		t.Errorf("operations view does not show the pending argument %q and the goal %q verbatim", xssArg, xssGoal)
	}
	screenshot(t, b, "operations")

	for _, tab := range []struct{ id, wait string }{
		{"cache", fmt.Sprintf(`document.getElementById('cache-pods').textContent.includes(%q) && document.querySelectorAll('[data-panel=cache_hit_rate] canvas').length > 0`, targets[1])},
		{"policy", `document.getElementById('revisions').textContent.includes('sha256:') && document.getElementById('grants').textContent.includes('list_dir') && document.getElementById('by-operator').textContent.includes('alice')`},
		{"cost", `document.getElementById('cost-24h').textContent !== '$0.0000' && document.getElementById('cost-24h').textContent !== '–' && document.querySelectorAll('[data-panel=cost_by_by_model] canvas').length > 0`},
		{"health", `document.getElementById('health-checks').textContent.includes('planner') && document.querySelectorAll('[data-panel=memory] canvas').length > 0`},
	} {
		b.Navigate(t, base+"#/"+tab.id)
		b.Wait(t, "the "+tab.id+" tab shows the fleet", `document.body.dataset.rendered === '`+tab.id+`' && `+tab.wait)
		screenshot(t, b, tab.id)
		switch tab.id {
		case "policy":
			if got := b.Eval(t, `document.getElementById('revisions').textContent`); !strings.Contains(got, targets[0]) || !strings.Contains(got, targets[1]) {
				t.Errorf("revisions = %q, want both sidecars under their revision", got)
			}
			if got := b.Eval(t, `document.getElementById('by-operator').textContent`); !strings.Contains(got, "alice") || !strings.Contains(got, "bob") {
				t.Errorf("approvals per operator = %q, want alice and bob (who approved %s's call)", got, xssAgent)
			}
		case "health":
			if got := b.Eval(t, `document.querySelector('[data-panel=memory] .u-legend').textContent`); !strings.Contains(got, targets[0]) {
				t.Errorf("memory legend = %q, want a series per pod", got)
			}
		}
	}
	if got := b.Eval(t, `String(document.querySelectorAll('main img, main script').length)`); got != "0" {
		t.Errorf("%s img or script elements in the page, want none (agents' text is text)", got)
	}

	// Without Prometheus, the fleet page says so and still shows the store.
	bare := testOptions(t, jwks) // its own spool directory, the shared store
	bare.DatabaseURL, bare.AdminToken = filepath.Join(data, "m1.db"), "bare-token"
	orch2 := startOrchestrator(t, bare)
	b.Navigate(t, "http://"+orch2.Addr().String()+"/?token="+bare.AdminToken+"#/operations")
	b.Wait(t, "the page without Prometheus rendered", `document.body.dataset.rendered === 'operations' && document.getElementById('runs').textContent.includes('review')`)
	if got := b.Eval(t, `document.getElementById('notice').textContent`); !strings.Contains(got, "Prometheus not configured") {
		t.Errorf("notice without Prometheus = %q, want it said plainly", got)
	}
	if got := b.Eval(t, `document.getElementById('fleet').textContent`); !strings.Contains(got, "Prometheus not configured") {
		t.Errorf("fleet panel without Prometheus = %q, want it said plainly", got)
	}
	for _, p := range b.Problems() {
		t.Errorf("browser: %s", p)
	}
}

// operationsToolExecutions reads the operations document's tool executions.
func operationsToolExecutions(t *testing.T, base, token string) admin.ToolExecutions {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/api/m1/dashboard/operations", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		ToolExecutions admin.ToolExecutions `json:"tool_executions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /api/m1/dashboard/operations = %d, %v", resp.StatusCode, err)
	}
	return doc.ToolExecutions
}

// startSidecar starts an m1-authz in-process on the shared store under
// data, with its own spool directory and a registry with the Go and
// process collectors (as main registers them).
func startSidecar(t *testing.T, data string) *sidecar.Server {
	t.Helper()
	o := sidecar.DefaultOptions()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	o.GRPCAddr, o.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	o.Logger, o.Registerer, o.Gatherer = zap.NewNop(), reg, reg
	o.DataDir, o.DatabaseURL = t.TempDir(), filepath.Join(data, "m1.db")
	o.DashboardStep = 200 * time.Millisecond
	s, err := sidecar.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return s
}

func startOrchestrator(t *testing.T, o Options) *Server {
	t.Helper()
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	return s
}

// traffic sends checks through s's gRPC port (as Envoy would), mostly
// reads the default policy allows and some writes it denies, until the test
// ends.
func traffic(t *testing.T, s *sidecar.Server) {
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c := authv3.NewAuthorizationClient(conn)
	ctx := t.Context()
	done := make(chan struct{})
	t.Cleanup(func() { <-done; conn.Close() })
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			tool, body := "read_file", fmt.Sprintf(`{"path":"/tmp/%d"}`, i%7)
			if i%5 == 0 {
				tool = "write_file"
			}
			_, _ = c.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
				Http: &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/" + tool, Host: "tools.local", Body: body},
			}}})
		}
	}()
}

func approvalToken(t *testing.T, key *approval.SigningKey, p store.Proposal) string {
	t.Helper()
	now := time.Now()
	tok, err := approval.Mint(key, approval.Claims{
		Issuer: "m1-cli", Subject: p.Agent, Audience: []string{"tools.example"}, Actor: "alice",
		IssuedAt: now, Expiry: now.Add(time.Minute), Kind: approval.KindApproval,
		Tool: p.Tool, ArgsSHA256: p.ArgsSHA256, RunID: p.RunID, ProposalID: p.ID,
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// seedXSSAgent stores a run of an agent whose name carries markup (the API
// refuses such names; another writer of the store might not) and bob's
// approval of its call.
func seedXSSAgent(t *testing.T, data string) {
	t.Helper()
	ctx := context.Background()
	st, err := backend.Open(ctx, "", data)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec := st.(store.Records)
	now := time.Now().UTC()
	if err := rec.CreateRun(ctx, store.Run{ID: "run-xss", Agent: xssAgent, Goal: xssGoal, Status: store.RunRunning, CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	p := store.Proposal{ID: "prop-xss", RunID: "run-xss", Agent: xssAgent, Step: 1, Tool: "read_file", Args: json.RawMessage(`{"path":"` + xssArg + `"}`),
		ArgsSHA256: strings.Repeat("ab", 32), Risk: "read", Status: store.ProposalPending, CreatedAt: now.Add(-time.Minute), UpdatedAt: now}
	if err := rec.CreateProposals(ctx, []store.Proposal{p}); err != nil {
		t.Fatal(err)
	}
	if _, err := rec.UpdateProposal(ctx, p.ID, store.ProposalPending, store.ProposalUpdate{Status: store.ProposalApproved, Approver: "bob",
		DecidedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
}

// hoverDisplay moves the mouse over the element of target and returns the
// computed display of the element of shown.
func hoverDisplay(t *testing.T, b *testenv.Browser, target, shown string) string {
	t.Helper()
	// The page lays itself out again as documents arrive (a table fills,
	// a notice shows): the target is scrolled into view and hovered again
	// until the shown element's display settles, for a few seconds at most.
	display := ""
	for range 20 {
		var rect struct{ X, Y float64 }
		if err := json.Unmarshal([]byte(b.Eval(t, `(() => { const e = document.querySelector('`+target+`'); e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); return JSON.stringify({X: r.x + r.width / 2, Y: r.y + 10}); })()`)), &rect); err != nil {
			t.Fatal(err)
		}
		b.Do(t, "hover "+target, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, input.DispatchMouseEvent, input.DispatchMouseEventParams{Type: input.DispatchMouseEventTypeMouseMoved, X: rect.X, Y: rect.Y})
			return err
		}))
		if display = b.Eval(t, `getComputedStyle(document.querySelector('`+shown+`')).display`); display == "block" {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return display
}

// screenshot saves a PNG of the page under $M1_SCREENSHOTS (make
// screenshots); without it, nothing is written.
func screenshot(t *testing.T, b *testenv.Browser, tab string) {
	dir := os.Getenv("M1_SCREENSHOTS")
	if dir == "" {
		return
	}
	time.Sleep(time.Second) // let the charts fill a few more samples
	b.Screenshot(t, filepath.Join(dir, "dashboard-fleet-"+tab+".png"))
}
