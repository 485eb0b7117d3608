package sidecar

import (
	"context"
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
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/m1-agent/m1/internal/testenv"
)

const chromiumHint = "apt-get install -y chromium (make test and .ci/run do this when they can)"

// TestDashboardInChromium opens the dashboard of a real sidecar in headless
// Chromium, as an operator opens the URL logged at start, and checks what
// the page shows against what the sidecar did.
func TestDashboardInChromium(t *testing.T) {
	chromium := testenv.RequireBinary(t, "chromium", chromiumHint)
	o := testOptions(t)
	s := startServer(t, o)
	const evil = `<img src=x onerror=alert(1)>`
	seedRun(t, openRecords(t, o.DataDir), "run-xss", `<script>alert(2)</script>`, "summarise "+evil, o.Now(), 0.5)
	c := checkClient(t, s)
	const n = 3
	for i := range n {
		check(t, c, readCall(fmt.Sprintf("/tmp/%d", i)), code.Code_OK)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()

	// Console errors, uncaught exceptions, browser log errors (CSP
	// violations, failed loads) and dialogs (an injected alert) all fail
	// the test.
	var (
		mu       sync.Mutex
		problems []string
	)
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	err := chromedp.Listen(bctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value))
				}
				report("console.%s: %s", ev.Type, strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			if d.Exception != nil {
				report("uncaught exception: %s (%s:%d)", d.Exception.Description, d.URL, d.LineNumber+1)
			} else {
				report("uncaught exception: %s (%s:%d)", d.Text, d.URL, d.LineNumber+1)
			}
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError {
				report("browser log (%s): %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
			}
		case *page.EventJavascriptDialogOpening:
			report("dialog %s opened: %q", ev.Type, ev.Message)
		}
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}

	base := "http://" + s.AdminAddr().String() + "/"
	wait := func(what, expr string) {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(20*time.Second), chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
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

	if err := chromedp.Do(bctx, chromedp.Navigate(base+"?token="+s.AdminToken())); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	wait("the page rendered", `document.body.dataset.loaded === 'true'`)

	if got := eval(`document.getElementById('allow-total').textContent`); got != fmt.Sprint(n) {
		t.Errorf("allowed tile = %q after %d allowed checks, want %d", got, n, n)
	}
	if got := eval(`location.href`); got != base || strings.Contains(got, s.AdminToken()) {
		t.Errorf("location.href = %q, want %q (the token taken out of the address bar)", got, base)
	}
	if got := eval(`sessionStorage.getItem('m1-admin-token')`); got != s.AdminToken() {
		t.Errorf("sessionStorage token = %q, want the admin token", got)
	}
	if got := eval(`document.getElementById('health-status').textContent`); got != "ok" {
		t.Errorf("health badge = %q, want ok", got)
	}
	if got := eval(`document.getElementById('policy-tools').textContent`); !strings.Contains(got, "read_file") {
		t.Errorf("policy tools = %q, want read_file listed", got)
	}
	// The agent's text is shown as text: no element is made from it.
	runs := eval(`document.getElementById('runs').textContent`)
	if !strings.Contains(runs, "summarise "+evil) || !strings.Contains(runs, `<script>alert(2)</script>`) {
		t.Errorf("runs table = %q, want the goal and agent shown verbatim", runs)
	}
	if got := eval(`String(document.querySelectorAll('img, #runs script').length)`); got != "0" {
		t.Errorf("%s elements made from the run's goal and agent, want none", got)
	}
	if got := eval(`document.getElementById('costs-total').textContent`); got != "0.5000" {
		t.Errorf("costs total = %q, want 0.5000", got)
	}

	// The page refreshes itself: two more checks show up, and the charts
	// draw once there are two samples.
	for i := range 2 {
		check(t, c, readCall(fmt.Sprintf("/tmp/more-%d", i)), code.Code_OK)
	}
	wait("the page shows the new checks", fmt.Sprintf(`document.getElementById('allow-total').textContent === '%d'`, n+2))
	wait("the charts drew", `document.querySelectorAll('#chart-rate canvas, #chart-latency canvas').length === 2`)

	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("browser: %s", p)
	}
}
