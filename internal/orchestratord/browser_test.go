package orchestratord

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/m1-agent/m1/internal/gateway"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/toolcall"
)

// TestProposalPageInChromium opens the link an MCP client shows for a
// call held at the gateway, #/proposals/<id> on the orchestrator, in a new
// headless Chromium tab without the admin token, as the person it is
// shown to would: the page asks for the token, then shows the proposal's
// origin, principal, canonical arguments and the m1 approve command, all
// as text (the principal and the arguments are the agent's), under the
// page's CSP, without a console error.
func TestProposalPageInChromium(t *testing.T) {
	chromium := testenv.RequireBinary(t, "chromium", "apt-get install -y chromium (make test and .ci/run do this when they can)")
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.PlanFile, o.AdminToken = "", "admin-secret"
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	base := "http://" + s.Addr().String() + "/"

	const evil = `<img/src=x/onerror=alert(1)>`
	args := `{"path":"notes.txt","content":"<script>alert(2)</script>"}`
	sum, _ := toolcall.ArgsSHA256("write_file", []byte(args))
	c, err := gateway.NewClient(gateway.ClientOptions{BaseURL: "http://" + s.Addr().String(), Token: "admin-secret", Timeout: 10 * time.Second,
		Sidecar: "m1-authz/tools.example", Pod: "tools-7f9c"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.File(context.Background(), gateway.FileRequest{Principal: evil, Tool: "write_file", Args: json.RawMessage(args), ArgsSHA256: sum, DecisionID: "dec-1"})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	var (
		mu       sync.Mutex
		problems []string
	)
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	err = chromedp.Listen(bctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				report("console.error: %v", ev.Args)
			}
		case *runtime.EventExceptionThrown:
			report("uncaught exception: %s", ev.ExceptionDetails.Text)
		case *log.EventEntryAdded:
			// The API answers 401 while the tab has no token: expected.
			if ev.Entry.Level == log.EntryLevelError && !strings.Contains(ev.Entry.Text, "401") {
				report("browser log (%s): %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
			}
		case *page.EventJavascriptDialogOpening:
			report("dialog %s opened: %q", ev.Type, ev.Message)
		}
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	wait := func(what, expr string) {
		t.Helper()
		var err error
		for range 5 { // a reload (the login) loses the page's context: poll the new one
			_, err = chromedp.Run(bctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(20*time.Second), chromedp.WithPollingInterval(50*time.Millisecond)))
			if err == nil || !strings.Contains(err.Error(), "(-32000)") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("waiting until %s (%s): %v; problems: %q", what, expr, err, problems)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(bctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	text := func(id string) string { return eval(`document.getElementById('` + id + `').textContent`) }

	link := base + "#/proposals/" + a.ProposalID
	if err := chromedp.Do(bctx, chromedp.Navigate(link)); err != nil {
		t.Fatalf("open %s: %v", link, err)
	}
	wait("the page asks for the token", `!document.getElementById('login').hidden`)
	eval(`document.getElementById('token-input').value = 'admin-secret'; setTimeout(() => document.getElementById('token-save').click(), 0); ''`)
	wait("the proposal is shown", `document.getElementById('pv-id').textContent === '`+a.ProposalID+`' && document.getElementById('pv-args').textContent !== ''`)

	for id, want := range map[string]string{
		"pv-principal": evil,
		"pv-tool":      "write_file",
		"pv-origin":    "sidecar m1-authz/tools.example (pod tools-7f9c)",
		"pv-decision":  "dec-1",
		"pv-sha":       sum,
		"pv-approve":   "m1 approve " + a.ProposalID,
		"pv-status":    "pending",
	} {
		if got := text(id); got != want {
			t.Errorf("#%s = %q, want %q", id, got, want)
		}
	}
	if got := text("pv-args"); !strings.Contains(got, `"content": "<script>alert(2)</script>"`) || !strings.Contains(got, `"path": "notes.txt"`) {
		t.Errorf("#pv-args = %q, want the canonical arguments as text", got)
	}
	if got := eval(`String(document.querySelectorAll('img, #proposal-view script').length)`); got != "0" {
		t.Errorf("%s elements made from the agent's text, want none", got)
	}
	if got := eval(`location.href`); got != link {
		t.Errorf("location.href = %q, want %q", got, link)
	}

	// Back on the dashboard, the proposal waits with its age and a link.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"#/")); err != nil {
		t.Fatal(err)
	}
	wait("the pending list", `document.getElementById('pending-total').textContent === '1'`)
	if got := eval(`document.querySelector('#pending a').getAttribute('href')`); got != "#/proposals/"+a.ProposalID {
		t.Errorf("pending link = %q, want #/proposals/%s", got, a.ProposalID)
	}
	if got := text("pending"); !strings.Contains(got, evil) || !strings.Contains(got, "tools-7f9c") {
		t.Errorf("pending table = %q, want the principal and the pod as text", got)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("browser: %s", p)
	}
}
