package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/testenv"
)

// Payloads an agent could put in a goal, its name or a tool argument: the
// page must show them as text, never run them.
const (
	xssGoal  = `summarise <img src=x onerror=alert(1)>`
	xssAgent = `<script>alert(2)</script>`
	xssArg   = `<img src=y onerror=alert(3)>`
)

// TestDashboardInChromium opens the dashboard of a real sidecar in headless
// Chromium, as an operator opens the URL logged at start: every tab renders
// the sidecar's data, the tabs work from the keyboard, a reload (even in a
// tab that lost the token) keeps the session and the charts' history, the
// agents' text stays text, and the console stays clean.
//
// With M1_SCREENSHOTS=DIR (make screenshots) it saves a PNG of each tab
// there.
func TestDashboardInChromium(t *testing.T) {
	b := testenv.StartBrowser(t)
	o := testOptions(t)
	o.DashboardStep = 200 * time.Millisecond
	s := startServer(t, o)
	seedDashboard(t, openRecords(t, o.DataDir), time.Now())
	c := checkClient(t, s)
	const n = 3
	for i := range n {
		check(t, c, readCall(fmt.Sprintf("/tmp/%d", i)), code.Code_OK)
	}
	check(t, c, writeCall(""), code.Code_PERMISSION_DENIED) // write_file needs an approval
	traffic(t, c)

	if os.Getenv("M1_SCREENSHOTS") != "" {
		time.Sleep(15 * time.Second) // charts worth a picture
	}
	base := "http://" + s.AdminAddr().String() + "/"
	start := time.Now()
	b.Navigate(t, base+"?token="+s.AdminToken())
	b.Wait(t, "the operations tab rendered", `document.body.dataset.rendered === 'operations'`)
	t.Logf("page load: %s to the load event (navigation timing %s ms), first render at %s ms after navigation start",
		time.Since(start).Round(time.Millisecond), b.Eval(t, `String(Math.round(performance.getEntriesByType('navigation')[0].loadEventEnd))`),
		b.Eval(t, `document.body.dataset.firstRenderMs`))

	// The token left the address bar for sessionStorage; the session
	// cookie is out of the scripts' reach.
	if got := b.Eval(t, `location.href`); strings.Contains(got, s.AdminToken()) {
		t.Errorf("location.href = %q, want the token taken out of the address bar", got)
	}
	if got := b.Eval(t, `sessionStorage.getItem('m1-admin-token')`); got != s.AdminToken() {
		t.Errorf("sessionStorage token = %q, want the admin token", got)
	}
	if got := b.Eval(t, `document.cookie`); got != "" {
		t.Errorf("document.cookie = %q, want the session cookie HttpOnly (invisible)", got)
	}
	if got := b.Eval(t, `document.getElementById('scope').textContent + ' ' + document.getElementById('service').textContent`); got != "pod m1-authz" {
		t.Errorf("scope and service = %q, want pod m1-authz", got)
	}
	if got := b.Eval(t, `[...document.querySelectorAll('[role=tab]')].map(e => e.textContent + '=' + e.getAttribute('aria-selected')).join(',')`); got !=
		"Operations=true,Cache=false,Policy & Security=false,Cost=false,System Health=false" {
		t.Errorf("tabs = %q, want the five tabs, Operations selected", got)
	}

	b.Wait(t, "the recent runs show the seeded run", `document.querySelector('#runs').textContent.includes('summarise')`)
	runs := b.Eval(t, `document.querySelector('#runs').textContent`)
	if !strings.Contains(runs, xssGoal) || !strings.Contains(runs, xssAgent) {
		t.Errorf("runs = %q, want the goal and agent shown verbatim", runs)
	}
	if got := b.Eval(t, `document.querySelector('main').textContent`); !strings.Contains(got, xssArg) {
		t.Errorf("operations view does not show the pending proposal's argument %q verbatim", xssArg)
	}
	b.Wait(t, "the checks charts drew", `document.querySelectorAll('[data-panel=checks_rate] canvas').length > 0`)

	// Keyboard: the arrow keys move along the tabs and open them.
	b.Do(t, "focus the Operations tab", chromedp.Focus(`#tab-operations`))
	b.Do(t, "press ArrowRight", chromedp.KeyEvent(kb.ArrowRight))
	b.Wait(t, "the cache tab rendered", `document.body.dataset.rendered === 'cache' && document.activeElement.id === 'tab-cache'`)
	if got := b.Eval(t, `document.getElementById('tab-cache').getAttribute('aria-selected') + document.getElementById('tab-operations').getAttribute('tabindex')`); got != "true-1" {
		t.Errorf("after ArrowRight: cache aria-selected + operations tabindex = %q, want true-1", got)
	}
	b.Do(t, "press End", chromedp.KeyEvent(kb.End))
	b.Wait(t, "the health tab rendered", `document.body.dataset.rendered === 'health'`)

	for _, tab := range []struct{ id, wait string }{
		{"operations", `document.getElementById('ops-checks').textContent !== '–'`},
		{"cache", `document.getElementById('cache-state').textContent === 'on' && document.querySelectorAll('[data-panel=cache_hit_rate] canvas').length > 0`},
		{"policy", `document.getElementById('grants').textContent.includes('read_file') && document.getElementById('pol-revision').textContent !== '–'`},
		{"cost", `document.getElementById('cost-24h').textContent === '$0.5000' && document.querySelectorAll('[data-panel=cost_by_by_model] canvas').length > 0`},
		{"health", `document.getElementById('health-checks').textContent.includes('policy') && document.querySelectorAll('[data-panel=memory] canvas').length > 0`},
	} {
		b.Navigate(t, base+"#/"+tab.id)
		b.Wait(t, "the "+tab.id+" tab shows its data", `document.body.dataset.rendered === '`+tab.id+`' && `+tab.wait)
		screenshot(t, b, "pod", tab.id)
		if tab.id != "policy" {
			continue
		}
		if got := b.Eval(t, `document.getElementById('ap-stamp').textContent`); got != "100.0 %" {
			t.Errorf("rubber-stamp rate = %q, want 100.0 %% (every approval in under 2 s)", got)
		}
		if got := b.Eval(t, `document.getElementById('by-operator').textContent`); !strings.Contains(got, "alice") {
			t.Errorf("approvals per operator = %q, want alice", got)
		}
	}
	// A reload in a tab that lost the token (as a new tab would be): the
	// session cookie keeps the page signed in, and the history of the
	// charts is still there.
	b.Navigate(t, base+"#/operations")
	b.Wait(t, "the checks chart drew", `document.querySelectorAll('[data-panel=checks_rate] canvas').length > 0`)
	before := b.Eval(t, `document.querySelector('[data-panel=checks_rate] .u-legend') ? 'legend' : ''`)
	start = time.Now()
	b.Do(t, "forget the token, reload", chromedp.Evaluate[chromedp.Void](`sessionStorage.clear()`), chromedp.Reload())
	b.Wait(t, "the page rendered again from the cookie", `document.body.dataset.rendered === 'operations' && document.querySelectorAll('[data-panel=checks_rate] canvas').length > 0`)
	t.Logf("reload: %s to the charts (navigation timing: load event at %s ms, first render at %s ms)", time.Since(start).Round(time.Millisecond),
		b.Eval(t, `String(Math.round(performance.getEntriesByType('navigation')[0].loadEventEnd))`), b.Eval(t, `document.body.dataset.firstRenderMs`))
	if got := b.Eval(t, `document.getElementById('error').hidden ? '' : document.getElementById('error').textContent`); got != "" {
		t.Errorf("after a reload without the token: error %q, want none (the session cookie)", got)
	}
	var hist struct {
		T []float64 `json:"t"`
	}
	raw := b.Eval(t, `fetch('api/m1/dashboard/history?tab=operations').then(r => r.text())`)
	if err := json.Unmarshal([]byte(raw), &hist); err != nil || len(hist.T) < 3 {
		t.Errorf("history after reload = %.200s (%v), want several samples kept by the server", raw, err)
	}
	if before == "" {
		t.Errorf("the checks chart had no legend before the reload")
	}
	if got := b.Eval(t, `String(document.querySelectorAll('main img, main script').length)`); got != "0" {
		t.Errorf("%s img or script elements in the page, want none (agents' text is text)", got)
	}
	for _, p := range b.Problems() {
		t.Errorf("browser: %s", p)
	}
}

// seedDashboard stores what m1-orchestrator would have: a run whose goal
// and agent carry markup, a pending proposal whose argument does, and
// three quick approvals of the same call by alice (a grant candidate).
func seedDashboard(t testing.TB, rec store.Records, now time.Time) {
	t.Helper()
	ctx := context.Background()
	seedRun(t, rec, "run-xss", xssAgent, xssGoal, now, 0.5)
	args := json.RawMessage(`{"path":"` + xssArg + `"}`) // as an agent sent it (json.Marshal would escape the markup)
	ps := []store.Proposal{{ID: "prop-xss", RunID: "run-xss", Agent: xssAgent, Step: 1, Tool: "write_file", Args: args,
		ArgsSHA256: strings.Repeat("ab", 32), Risk: "write", Status: store.ProposalPending, CreatedAt: now.Add(-90 * time.Second),
		ExpiresAt: now.Add(time.Hour), UpdatedAt: now}}
	for i := range 3 {
		ps = append(ps, store.Proposal{ID: fmt.Sprintf("prop-ok-%d", i), RunID: "run-xss", Agent: "agent-a", Step: 1, Tool: "read_file",
			Args: json.RawMessage(`{"path":"/etc/hosts"}`), ArgsSHA256: strings.Repeat("cd", 32), Risk: "read", Status: store.ProposalPending,
			CreatedAt: now.Add(-time.Duration(10-i) * time.Minute), ExpiresAt: now.Add(time.Hour), UpdatedAt: now})
	}
	if err := rec.CreateProposals(ctx, ps); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps[1:] {
		at := p.CreatedAt.Add(800 * time.Millisecond)
		if _, err := rec.UpdateProposal(ctx, p.ID, store.ProposalPending, store.ProposalUpdate{Status: store.ProposalExecuted,
			Approver: "alice", DecidedAt: at, UpdatedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
}

// traffic keeps checks flowing (mostly allowed, some denied) until the test
// ends, so that the charts have something to draw.
func traffic(t *testing.T, c authv3.AuthorizationClient) {
	ctx := t.Context()
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
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
			req := readCall(fmt.Sprintf("/tmp/traffic-%d", i%7))
			if i%5 == 0 {
				req = writeCall("")
			}
			_, _ = c.Check(ctx, req)
		}
	}()
}

// screenshot saves a PNG of the page under $M1_SCREENSHOTS (make
// screenshots); without it, nothing is written.
func screenshot(t *testing.T, b *testenv.Browser, scope, tab string) {
	dir := os.Getenv("M1_SCREENSHOTS")
	if dir == "" {
		return
	}
	time.Sleep(time.Second) // let the charts fill a few more samples
	b.Screenshot(t, filepath.Join(dir, "dashboard-"+scope+"-"+tab+".png"))
}
