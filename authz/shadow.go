package authz

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/toolcall"
)

// KindShadowDiff is the audit event of a decision the shadow policy would
// have made differently (DESIGN §5).
const KindShadowDiff = "shadow_diff"

var errNoPolicy = errors.New("no policy loaded yet")

// shadow is the candidate policy evaluated beside the active one. It never
// decides: its evaluation runs after the response is built, on a bounded
// number of goroutines, and a decision it has no room for is skipped and
// counted rather than waited for.
type shadow struct {
	engine atomic.Pointer[policy.Engine]
	slots  chan struct{}
	wg     sync.WaitGroup
}

func (sh *shadow) init() { sh.slots = make(chan struct{}, 2*runtime.GOMAXPROCS(0)) }

// SetShadow makes engine the shadow policy (nil: none). Requires
// Options.ShadowMetrics.
func (s *Service) SetShadow(engine *policy.Engine) {
	if engine != nil && s.opts.ShadowMetrics == nil {
		s.opts.Logger.Error("shadow policy ignored: authz.Options.ShadowMetrics is nil")
		return
	}
	s.shadow.engine.Store(engine)
}

// Shadow returns the shadow policy, nil when there is none.
func (s *Service) Shadow() *policy.Engine { return s.shadow.engine.Load() }

// WaitShadow waits until the shadow evaluations started so far are done
// (tests and benchmarks).
func (s *Service) WaitShadow() { s.shadow.wg.Wait() }

// shadowEval evaluates the shadow policy for a check that reached the
// active policy, off the decision path.
func (s *Service) shadowEval(req *authv3.CheckRequest, v *verdict) {
	sh := s.shadow.engine.Load()
	if sh == nil {
		return
	}
	select {
	case s.shadow.slots <- struct{}{}:
	default:
		s.opts.ShadowMetrics.Skipped.Inc()
		return
	}
	// The goroutine gets its own copy of what it reads; the request is not
	// modified after Check returns.
	sv := shadowCall{id: v.id, call: v.call, principal: v.principal, claims: v.claims, active: v.engine, time: s.opts.Now()}
	sv.activeAllowed = v.policy != nil && v.policy.Allowed
	if v.policy != nil {
		sv.activeReason = v.policy.Reason
	}
	s.shadow.wg.Add(1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				s.opts.Logger.Error("shadow evaluation panicked", zap.String(fieldDecisionID, sv.id), zap.Any("panic", p))
			}
			<-s.shadow.slots
			s.shadow.wg.Done()
		}()
		s.runShadow(req, sh, &sv)
	}()
}

type shadowCall struct {
	id            string
	call          toolcall.Call
	principal     string
	claims        *approval.Claims
	active        *policy.Engine
	activeAllowed bool
	activeReason  string
	time          time.Time
}

func (s *Service) runShadow(req *authv3.CheckRequest, sh *policy.Engine, sv *shadowCall) {
	allowed, reason := false, ""
	headers := toolcall.HeadersOf(req.GetAttributes().GetRequest().GetHttp())
	input, err := buildInput(req, &sv.call, headers, sv.principal, sv.claims, sh.Needs())
	if err == nil {
		var d policy.Decision
		d, err = sh.Eval(context.Background(), input)
		allowed, reason = d.Allowed, d.Reason
	}
	if err != nil {
		reason = "policy_error: " + err.Error()
	}
	active, shadowed := label(sv.activeAllowed), label(allowed)
	s.opts.ShadowMetrics.Decisions.WithLabelValues(active, shadowed).Inc()
	if active == shadowed || s.opts.Audit == nil {
		return
	}
	activeRev := ""
	if sv.active != nil {
		activeRev = sv.active.Revision()
	}
	detail := "active " + activeRev + ": " + active
	if sv.activeReason != "" {
		detail += " (" + sv.activeReason + ")"
	}
	detail += "; shadow " + sh.Revision() + ": " + shadowed
	if reason != "" {
		detail += " (" + reason + ")"
	}
	code := deny.PolicyDenied
	if allowed {
		code = codeOK
	}
	s.opts.Audit.Record(store.Event{
		DecisionID: sv.id, Time: sv.time, Kind: KindShadowDiff,
		Principal: sv.principal, Tool: sv.call.Tool, ArgsSHA256: sv.call.ArgsSHA256,
		Decision: shadowed, Reason: code, Detail: detail, PolicyRevision: sh.Revision(),
	})
}

func label(allowed bool) string {
	if allowed {
		return DecisionAllow
	}
	return DecisionDeny
}
