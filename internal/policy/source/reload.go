package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/policy"
)

// ReloaderOptions configure a Reloader.
type ReloaderOptions struct {
	// Name says what is reloaded in logs and errors ("policy", "shadow
	// policy").
	Name string
	// Loader is the source (required).
	Loader Loader
	// Policy prepares each revision (decision path, timeout).
	Policy policy.Options
	// RunTests runs the bundle's own Rego tests (M1_POLICY_RUN_TESTS)
	// before a revision may activate.
	RunTests bool
	// Interval is the poll period (M1_POLICY_POLL_INTERVAL), jittered by
	// ±10% so that sidecars do not poll in step; 0 loads only when
	// triggered (a watched directory). After a failure Run retries sooner:
	// 1 s, doubling, up to Interval (or 30 s without one).
	Interval time.Duration
	// Activate makes an engine the one deciding (required). It is called
	// from one goroutine at a time, with each new revision once.
	Activate func(*policy.Engine)
	// Failed, when set, is told of each failed load (a metric).
	Failed func()
	// Succeeded, when set, is told of each load that ended with the source's
	// bundle in force: a new revision activated, or the active one
	// confirmed (a metric of the last success).
	Succeeded func(revision string, at time.Time)
	// Logger and Now are required.
	Logger *zap.Logger
	Now    func() time.Time
}

func (o ReloaderOptions) validate() error {
	switch {
	case o.Loader == nil:
		return errors.New("reloader: Loader is required")
	case o.Activate == nil:
		return errors.New("reloader: Activate is required")
	case o.Logger == nil || o.Now == nil:
		return errors.New("reloader: Logger and Now are required")
	case o.Interval < 0:
		return errors.New("reloader: Interval must not be negative")
	}
	return nil
}

// Status is what a Reloader reports on /health.
type Status struct {
	// Revision is the revision in force from this source ("" before the
	// first successful load).
	Revision string `json:"revision,omitempty"`
	// LastSuccess is when a load last ended with the source's bundle in
	// force (zero before).
	LastSuccess time.Time `json:"last_success,omitzero"`
	// Error is the last load's failure, "" after a success: the last good
	// revision keeps deciding meanwhile.
	Error string `json:"error,omitempty"`
	// FailedSince is when loads started failing (zero when they do not).
	FailedSince time.Time `json:"failed_since,omitzero"`
}

// Reloader follows a Loader: each load prepares the bundle (compile and
// the sanity checks of policy.Prepare, plus a probe evaluation), runs its
// Rego tests when asked, and only then activates it. Any failure keeps the
// last good revision, is reported by Status, counted, logged once per
// failing revision, and retried. It is safe for concurrent use.
type Reloader struct {
	opts ReloaderOptions
	kick chan struct{}

	mu       sync.Mutex // serialises Reload
	tag      string     // tag of the bundle in force
	digest   string     // Digest of the bundle in force
	lastLog  string     // the failure last logged
	statusMu sync.Mutex
	status   Status
}

// NewReloader returns a Reloader; nothing is loaded until Reload or Run.
func NewReloader(o ReloaderOptions) (*Reloader, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Name == "" {
		o.Name = "policy"
	}
	return &Reloader{opts: o, kick: make(chan struct{}, 1)}, nil
}

// Status returns the current status.
func (r *Reloader) Status() Status {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	return r.status
}

// Trigger asks Run to load now (a watched file changed, SIGHUP, another
// sidecar announced a revision). It never blocks; triggers that arrive
// while one is pending merge.
func (r *Reloader) Trigger() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Reload loads once and returns the engine activated, nil when the source
// had nothing new (the active revision confirmed), or the error that kept
// the last good revision. The status is the new revision's before it
// decides: whoever sees its decisions sees its health too.
func (r *Reloader) Reload(ctx context.Context) (*policy.Engine, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.load(ctx)
	now := r.opts.Now()
	r.statusMu.Lock()
	if err != nil {
		if r.status.Error == "" {
			r.status.FailedSince = now
		}
		r.status.Error = err.Error()
		if r.opts.Failed != nil {
			r.opts.Failed()
		}
		if msg := err.Error(); msg != r.lastLog {
			r.lastLog = msg
			r.opts.Logger.Error(r.opts.Name+" revision refused; the last good one keeps deciding",
				zap.String("active_revision", r.status.Revision), zap.Error(err))
		}
		r.statusMu.Unlock()
		return nil, err
	}
	if r.status.Error != "" {
		r.opts.Logger.Info(r.opts.Name+" source healthy again", zap.String("revision", r.status.Revision))
	}
	r.lastLog = ""
	r.status.Error, r.status.FailedSince = "", time.Time{}
	r.status.LastSuccess = now
	if e != nil {
		r.status.Revision = e.Revision()
	}
	rev := r.status.Revision
	r.statusMu.Unlock()
	if e != nil {
		r.opts.Activate(e)
		r.opts.Logger.Info(r.opts.Name+" revision activated", zap.String("revision", e.Revision()))
	}
	if r.opts.Succeeded != nil {
		r.opts.Succeeded(rev, now)
	}
	return e, nil
}

// load does one load and prepares the revision it finds; it returns a nil
// engine and no error when the source holds the revision in force.
func (r *Reloader) load(ctx context.Context) (*policy.Engine, error) {
	res, err := r.opts.Loader.Load(ctx, r.tag)
	if errors.Is(err, ErrNotModified) && r.tag != "" {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if res.Bundle == nil {
		return nil, errors.New("source returned no bundle")
	}
	rev, digest := res.Bundle.Revision, res.Bundle.Digest
	if rev != "" && rev == r.Status().Revision {
		if digest != "" && r.digest != "" && digest != r.digest {
			// The audit, /health and m1_policy_bundle_info name a
			// revision: new rules under the one in force would decide
			// under a name that says the old rules do.
			return nil, fmt.Errorf("revision %s: the bundle's files changed but its revision did not; give the new files a new revision in .manifest", rev)
		}
		r.tag = res.Tag
		return nil, nil
	}
	e, err := Prepare(ctx, res.Bundle, r.opts.Policy, r.opts.RunTests)
	if err != nil {
		return nil, fmt.Errorf("revision %s: %w", revisionName(res.Bundle), err)
	}
	r.tag, r.digest = res.Tag, digest
	return e, nil
}

func revisionName(b *policy.Bundle) string {
	if b.Revision == "" {
		return "(unnamed)"
	}
	return b.Revision
}

// probeInput is a tool call no policy should fail on: an unknown tool, no
// token. A decision that errors or is malformed for it would deny every
// call with policy_error.
var probeInput = ast.MustParseTerm(`{
	"m1": {"kind": "tool_call", "tool": "m1_activation_probe", "args": {}, "args_sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
	       "principal": "", "token": null, "request": {"method": "POST", "host": "", "path": "/tools/m1_activation_probe"}},
	"attributes": {}, "parsed_path": ["tools", "m1_activation_probe"], "parsed_query": {}, "parsed_body": {},
	"truncated_body": false, "version": {"encoding": "protojson", "ext_authz": "v3"}
}`).Value

// Prepare is the activation check of one revision: policy.Prepare
// (parse, compile, the decision path defined, a well-typed tool registry),
// then a probe evaluation (the decision must not error or be malformed for
// a plain tool call; undefined is allowed), then, with runTests, the
// bundle's own Rego tests, which must all pass.
func Prepare(ctx context.Context, b *policy.Bundle, o policy.Options, runTests bool) (*policy.Engine, error) {
	e, err := policy.Prepare(ctx, b, o)
	if err != nil {
		return nil, err
	}
	if _, err := e.Eval(ctx, probeInput); err != nil && !errors.Is(err, policy.ErrUndefined) {
		return nil, fmt.Errorf("sanity check: the decision fails for a plain tool call: %w", err)
	}
	if runTests {
		var report bytes.Buffer
		ok, err := policy.RunTests(ctx, b, &report)
		if err != nil {
			return nil, fmt.Errorf("rego tests: %w", err)
		}
		if !ok {
			return nil, fmt.Errorf("rego tests failed: %s", failures(report.String()))
		}
	}
	return e, nil
}

// duration is the time a test took, which changes from run to run: the
// message must not, so that a revision is logged once.
var duration = regexp.MustCompile(` \([0-9.]+[µnm]?s\)`)

// failures keeps the FAIL and ERROR lines of a test report, and its summary.
func failures(report string) string {
	var keep []string
	for line := range strings.SplitSeq(report, "\n") {
		t := strings.TrimSpace(duration.ReplaceAllString(line, ""))
		if strings.Contains(t, ": FAIL") || strings.Contains(t, ": ERROR") || strings.HasPrefix(t, "FAIL:") || strings.HasPrefix(t, "ERROR:") {
			keep = append(keep, t)
		}
	}
	if len(keep) == 0 {
		return strings.TrimSpace(report)
	}
	return strings.Join(keep, "; ")
}

// Run loads every Interval (jittered) and whenever triggered, until ctx
// ends. It does not load first: callers Reload once at start to decide
// whether they may serve.
func (r *Reloader) Run(ctx context.Context) {
	backoff := time.Second
	for {
		wait := jitter(r.opts.Interval)
		if r.Status().Error != "" {
			ceiling := r.opts.Interval
			if ceiling == 0 {
				ceiling = 30 * time.Second
			}
			wait = min(backoff, ceiling)
			backoff = min(2*backoff, ceiling)
		} else {
			backoff = time.Second
		}
		var (
			t     *time.Timer
			timer <-chan time.Time
		)
		if wait > 0 {
			t = time.NewTimer(wait)
			timer = t.C
		}
		select {
		case <-ctx.Done():
		case <-timer:
		case <-r.kick:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
		_, _ = r.Reload(ctx)
	}
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}
