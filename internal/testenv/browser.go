package testenv

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
)

const chromiumHint = "apt-get install -y chromium (make test and .ci/run do this when they can)"

// Browser is a headless Chromium owned by a test, driven over the DevTools
// protocol (chromedp), with a fresh profile. It records every console
// error, uncaught exception, browser log error (CSP violations, failed
// loads) and dialog (an injected alert) as a problem.
type Browser struct {
	Ctx context.Context

	mu       sync.Mutex
	problems []string
	ignore   []string
}

// StartBrowser starts Chromium and closes it with t.Cleanup. Without
// chromium the test fails with an install hint under CI, and skips loudly
// otherwise.
func StartBrowser(t testing.TB) *Browser {
	t.Helper()
	bin := RequireBinary(t, "chromium", chromiumHint)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true), chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true), chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-extensions", true), chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true), chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc(); cancel() })
	b := &Browser{Ctx: bctx}
	err := chromedp.Listen(bctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert || ev.Type == runtime.ConsoleAPICalledTypeWarning {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				b.report("console.%s: %s", ev.Type, strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			if d.Exception != nil {
				b.report("uncaught exception: %s (%s:%d)", d.Exception.Description, d.URL, d.LineNumber+1)
			} else {
				b.report("uncaught exception: %s (%s:%d)", d.Text, d.URL, d.LineNumber+1)
			}
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError || ev.Entry.Level == log.EntryLevelWarning {
				b.report("browser log %s (%s): %s %s", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
			}
		case *page.EventJavascriptDialogOpening:
			b.report("dialog %s opened: %q", ev.Type, ev.Message)
			go func() { _, _ = chromedp.Call(bctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{}) }()
		}
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

func (b *Browser) report(format string, args ...any) {
	p := fmt.Sprintf(format, args...)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.ignore {
		if strings.Contains(p, s) {
			return
		}
	}
	b.problems = append(b.problems, p)
}

// Ignore stops reporting the problems that contain substr, for a page that
// expects them (the API's 401 answers before a sign-in).
func (b *Browser) Ignore(substr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ignore = append(b.ignore, substr)
}

// Problems returns what went wrong in the page so far.
func (b *Browser) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// Do runs chromedp actions, failing the test on error.
func (b *Browser) Do(t testing.TB, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(b.Ctx, actions...); err != nil {
		t.Fatalf("%s: %v; page problems: %q", what, err, b.Problems())
	}
}

// Navigate opens url and waits for its load event.
func (b *Browser) Navigate(t testing.TB, url string) {
	t.Helper()
	b.Do(t, "open "+url, chromedp.Navigate(url))
}

// Wait polls the JavaScript expression until it is true (20 seconds at
// most). A reload during the wait (a sign-in) loses the page's context; it
// polls the new one.
func (b *Browser) Wait(t testing.TB, what, expr string) {
	t.Helper()
	var err error
	for range 5 {
		_, err = chromedp.Run(b.Ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(20*time.Second), chromedp.WithPollingInterval(50*time.Millisecond)))
		if err == nil || !strings.Contains(err.Error(), "(-32000)") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("waiting until %s (%s): %v; page problems: %q", what, expr, err, b.Problems())
	}
}

// Eval evaluates a JavaScript expression whose value is a string (or a
// promise of one).
func (b *Browser) Eval(t testing.TB, expr string) string {
	t.Helper()
	v, err := chromedp.Run(b.Ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// Screenshot writes a PNG of the whole page to path.
func (b *Browser) Screenshot(t testing.TB, path string) {
	t.Helper()
	png, err := chromedp.Run(b.Ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}
