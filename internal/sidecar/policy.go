package sidecar

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
	"github.com/m1-agent/m1/internal/policy/source/dirsource"
	"github.com/m1-agent/m1/internal/policy/source/gitsource"
	"github.com/m1-agent/m1/internal/policy/source/httpsource"
	"github.com/m1-agent/m1/internal/state/redisstate"
)

// followed is one followed policy source: the active policy's or the
// shadow's.
type followed struct {
	kind     string // "dir", "bundle", "git"
	where    string // the directory or URL, for /health
	reloader *source.Reloader
	dir      *dirsource.Source // set for a directory: watched
}

// policyMetrics are the metrics of policy distribution (DESIGN §5) the
// sidecar records: bundle loads. m1_policy_bundle_info is the decision
// path's (authz.Metrics.BundleInfo), and the shadow's are
// authz.ShadowMetrics.
type policyMetrics struct {
	loadErrors  prometheus.Counter // m1_policy_bundle_load_errors_total
	lastSuccess prometheus.Gauge   // m1_policy_bundle_last_success_timestamp_seconds
}

// newPolicyMetrics creates the bundle load metrics and registers them on
// reg. It fails if any is already registered there.
func newPolicyMetrics(reg prometheus.Registerer) (*policyMetrics, error) {
	m := &policyMetrics{
		loadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_policy_bundle_load_errors_total",
			Help: "Policy bundle loads that failed (source unreachable, bad bundle, bad signature, failing Rego tests); the last good revision kept deciding.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "m1_policy_bundle_last_success_timestamp_seconds",
			Help: "Unix time of the last load that left the source's bundle in force (a new revision activated, or the active one confirmed).",
		}),
	}
	for _, c := range []prometheus.Collector{m.loadErrors, m.lastSuccess} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// policySources holds the sidecar's policy distribution.
type policySources struct {
	metrics *policyMetrics
	active  *followed // nil: the embedded default bundle, never reloaded
	shadow  *followed // nil: no shadow policy

	mu       sync.Mutex
	heard    string // the revision another sidecar announced last, until this one activates it
	announce bool   // publish activations (after the first load)
	stop     context.CancelFunc
	done     sync.WaitGroup
}

// readOptions are the bounds and signature checks of every source.
func (o *Options) readOptions() (policy.ReadOptions, error) {
	var ro policy.ReadOptions
	if o.PolicyVerificationKey == "" {
		return ro, nil
	}
	pem, err := os.ReadFile(o.PolicyVerificationKey)
	if err != nil {
		return ro, fmt.Errorf("M1_POLICY_VERIFICATION_KEY: %w", err)
	}
	if ro.Verification, err = policy.NewVerification(pem); err != nil {
		return ro, fmt.Errorf("M1_POLICY_VERIFICATION_KEY %s: %w", o.PolicyVerificationKey, err)
	}
	return ro, nil
}

// newFollowed builds the loader of one source: a directory, a bundle URL
// (sent token, if any) or a Git URL (at most one is set; validate checks).
func newFollowed(dir, bundleURL, token, gitURL string, o *Options, ro policy.ReadOptions) (*followed, source.Loader, error) {
	switch {
	case dir != "":
		do := dirsource.DefaultOptions()
		do.Dir, do.Read = dir, ro
		s, err := dirsource.New(do)
		return &followed{kind: "dir", where: dir, dir: s}, s, err
	case bundleURL != "":
		ho := httpsource.DefaultOptions()
		ho.URL, ho.Token, ho.Read = bundleURL, token, ro
		ho.Timeout = min(ho.Timeout, o.PolicyPollInterval)
		s, err := httpsource.New(ho)
		return &followed{kind: "bundle", where: bundleURL}, s, err
	case gitURL != "":
		gopts := gitsource.DefaultOptions()
		gopts.URL, gopts.Path, gopts.SSHKeyFile, gopts.Read = gitURL, o.PolicyGitPath, o.PolicyGitSSHKey, ro
		if o.PolicyGitRef != "" {
			gopts.Ref = o.PolicyGitRef
		}
		s, err := gitsource.New(gopts)
		return &followed{kind: "git", where: gitURL}, s, err
	}
	return nil, nil, nil
}

// shadowToken is the bearer token sent to the shadow bundle server:
// M1_POLICY_BUNDLE_TOKEN when both bundle URLs name the same server
// (scheme, host and port), else none, since the token is the active
// server's credential.
func shadowToken(o *Options) string {
	a, errA := url.Parse(o.PolicyBundleURL)
	b, errB := url.Parse(o.PolicyShadowBundleURL)
	if errA != nil || errB != nil || o.PolicyBundleURL == "" || !strings.EqualFold(a.Scheme, b.Scheme) || !strings.EqualFold(a.Host, b.Host) {
		return ""
	}
	return o.PolicyBundleToken
}

// setupPolicy builds the policy sources and loads each once. A directory
// that does not load is a startup error (the operator's own files, named
// with file and line); a remote source that does not answer yet leaves the
// sidecar not ready, retrying, as OPA does.
func (s *Server) setupPolicy(ctx context.Context) error {
	o := &s.opts
	pm := s.policy.metrics
	ro, err := o.readOptions()
	if err != nil {
		return err
	}
	popts := policy.Options{Path: o.PolicyPath, Timeout: o.PolicyTimeout}

	active, loader, err := newFollowed(o.PolicyDir, o.PolicyBundleURL, o.PolicyBundleToken, o.PolicyGitURL, o, ro)
	if err != nil {
		return err
	}
	if active == nil {
		e, err := LoadPolicy(ctx, "", popts)
		if err != nil {
			return err
		}
		s.activate(e)
		pm.lastSuccess.Set(float64(o.Now().Unix()))
	} else {
		if active.reloader, err = source.NewReloader(source.ReloaderOptions{
			Name: "policy", Loader: loader, Policy: popts, RunTests: o.PolicyRunTests,
			Interval: s.pollInterval(active.kind), Activate: s.activate,
			Failed:    pm.loadErrors.Inc,
			Succeeded: func(_ string, at time.Time) { pm.lastSuccess.Set(float64(at.Unix())) },
			Logger:    s.log.Named("policy"), Now: o.Now,
		}); err != nil {
			return err
		}
		s.policy.active = active
		if _, err := active.reloader.Reload(ctx); err != nil {
			if active.kind == "dir" {
				return err
			}
			s.log.Warn("policy source not loaded at start; not ready until it is", zap.String("source", active.where), zap.Error(err))
		}
	}

	shadow, sloader, err := newFollowed(o.PolicyShadowDir, o.PolicyShadowBundleURL, shadowToken(o), "", o, ro)
	if err != nil || shadow == nil {
		return err
	}
	if shadow.reloader, err = source.NewReloader(source.ReloaderOptions{
		Name: "shadow policy", Loader: sloader, Policy: popts, RunTests: o.PolicyRunTests,
		Interval: s.pollInterval(shadow.kind),
		Activate: func(e *policy.Engine) { s.authz.SetShadow(e) },
		Logger:   s.log.Named("shadow"), Now: o.Now,
	}); err != nil {
		return err
	}
	s.policy.shadow = shadow
	return nil
}

// pollInterval: a directory is watched, and polled only as a safety net.
func (s *Server) pollInterval(kind string) time.Duration {
	if kind == "dir" {
		return max(s.opts.PolicyPollInterval, time.Minute)
	}
	return s.opts.PolicyPollInterval
}

// activate makes e the deciding policy: the decision service, the shared
// cache's namespace, and (after start) an announcement to other sidecars.
func (s *Server) activate(e *policy.Engine) {
	first := s.authz.Policy() == nil
	s.authz.SetPolicy(e)
	if first && s.started.Load() && !s.draining.Load() {
		s.setServing(true)
	}
	if ok, why := s.authz.Caching(); !ok {
		s.log.Warn("decision cache off", zap.String("why", why))
	}
	p := s.policy
	p.mu.Lock()
	publish := p.announce && s.shared != nil && p.heard != e.Revision()
	if p.heard == e.Revision() {
		p.heard = "" // announced once; a later return to it (a rollback) is news
	}
	p.mu.Unlock()
	if publish {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := s.shared.PublishInvalidate(ctx, redisstate.Event{Type: redisstate.EventBundle, Revision: e.Revision()}); err != nil {
			s.log.Warn("new policy revision not announced to other sidecars; they find it at their next poll", zap.Error(err))
		}
	}
}

// heardRevision handles another sidecar's announcement: fetch now rather
// than at the next poll. Activating the announced revision is not
// announced again (every sidecar would echo it to every other).
func (s *Server) heardRevision(rev string) {
	p := s.policy
	if p == nil {
		return
	}
	p.mu.Lock()
	if cur := s.authz.Policy(); rev != "" && (cur == nil || cur.Revision() != rev) {
		p.heard = rev
	}
	p.mu.Unlock()
	for _, f := range []*followed{p.active, p.shadow} {
		if f != nil && f.kind != "dir" {
			f.reloader.Trigger()
		}
	}
}

// startPolicy follows the sources until Stop: polls, directory watches.
func (s *Server) startPolicy(ctx context.Context) {
	p := s.policy
	p.mu.Lock()
	p.announce = true
	p.mu.Unlock()
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.stop = cancel
	for _, f := range []*followed{p.active, p.shadow} {
		if f == nil {
			continue
		}
		if f == p.shadow {
			f.reloader.Trigger() // its first load, off the start path
		}
		p.done.Add(1)
		go func() { defer p.done.Done(); f.reloader.Run(rctx) }()
		if f.dir != nil {
			p.done.Add(1)
			go func() {
				defer p.done.Done()
				if err := f.dir.Watch(rctx, f.reloader.Trigger); err != nil {
					s.log.Error("policy directory not watched; it reloads on SIGHUP and every poll interval", zap.Error(err))
				}
			}()
		}
	}
}

func (s *Server) stopPolicy() {
	if p := s.policy; p != nil && p.stop != nil {
		p.stop()
		p.done.Wait()
	}
}

// ReloadPolicy asks the policy sources to load now (main calls it on
// SIGHUP). It does not wait.
func (s *Server) ReloadPolicy() {
	for _, f := range []*followed{s.policy.active, s.policy.shadow} {
		if f != nil {
			f.reloader.Trigger()
		}
	}
}

// policyCheck is /health's checks.policy: ok with the revision in force;
// degraded, with the error, while the source's latest revision is refused
// (the last good one decides); failing while none was ever loaded.
func (s *Server) policyCheck() admin.Check {
	e := s.authz.Policy()
	c := admin.Check{Status: admin.StatusOK, Info: map[string]any{"source": "embedded"}}
	if f := s.policy.active; f != nil {
		st := f.reloader.Status()
		c.Info["source"], c.Info["location"] = f.kind, redactURL(f.where)
		if !st.LastSuccess.IsZero() {
			c.Info["last_success"] = st.LastSuccess
		}
		if st.Error != "" {
			c.Status, c.Detail = admin.StatusDegraded, "policy source: the last good revision keeps deciding; latest load failed: "+st.Error
			c.Info["failing_since"] = st.FailedSince
		}
	}
	if e == nil {
		c.Status = admin.StatusFailing
		if c.Detail == "" {
			c.Detail = "no policy loaded yet"
		} else {
			c.Detail = "no policy loaded yet: " + c.Detail
		}
		return c
	}
	c.Info["revision"] = e.Revision()
	if ok, why := s.authz.Caching(); ok {
		c.Info["decision_cache"] = "on"
	} else {
		c.Info["decision_cache"] = "off"
		if c.Detail == "" {
			c.Detail = "decision cache off: " + why
		}
	}
	if f := s.policy.shadow; f != nil {
		st := f.reloader.Status()
		sh := map[string]any{"source": f.kind, "location": redactURL(f.where), "revision": st.Revision}
		if st.Error != "" {
			sh["error"] = st.Error
		}
		c.Info["shadow"] = sh
	}
	return c
}

// redactURL drops the user info (credentials) of a URL for display.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	u.User = nil
	return u.String()
}
