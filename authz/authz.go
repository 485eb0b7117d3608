package authz

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/ratelimit"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/toolcall"
)

// codeOK is the reason label of an allow (m1_policy_checks_total,
// the audit trail); denies take theirs from internal/deny.
const codeOK = "ok"

// RateLimiter counts a principal's tool calls (RATE_LIMIT_REQUESTS_PER_*).
type RateLimiter interface {
	Allow(ctx context.Context, principal string) ratelimit.Result
}

// DecisionCache stores policy decisions by key. Implementations are safe for
// concurrent use; Get reports the tier that answered and must return within
// ctx (a shared tier that cannot answer in time is a miss). Set must not
// block on a shared tier. SetPolicy calls SetRevision with every policy it
// makes current (the first included): the cache drops what it holds for
// other revisions and moves a shared tier to the revision's namespace.
// Check calls ObserveEval with each evaluation's time (a tiered cache uses
// it to decide whether a round trip to the shared tier pays).
type DecisionCache interface {
	Get(ctx context.Context, k cache.Key) (d *policy.Decision, tier string, ok bool)
	Set(k cache.Key, d *policy.Decision)
	SetRevision(revision string)
	ObserveEval(time.Duration)
}

// Auditor records decisions off the decision path; Record must not block
// for long (the audit recorder queues).
type Auditor interface {
	Record(store.Event)
}

var (
	_ DecisionCache = (*cache.Memory)(nil)
	_ DecisionCache = (*cache.Tiered)(nil)
)

// Options configure a Service.
type Options struct {
	Parse          toolcall.Options
	ApprovalHeader string        // lower-case, e.g. "x-m1-approval-token"
	Cache          DecisionCache // nil disables caching
	Tokens         TokenVerifier // nil: no keys; a presented token is token_invalid
	Uses           UseStore      // required
	Revocations    RevocationChecker
	Epoch          Epoch          // nil: no data-loss fencing
	ShadowMetrics  *ShadowMetrics // shadow decisions; required with SetShadow
	Audit          Auditor        // nil: decisions are not audited
	RateLimit      RateLimiter    // nil: no rate limits
	ClockSkew      time.Duration  // leeway of token times; used records outlive exp by it
	Logger         *zap.Logger
	Metrics        *Metrics
	Now            func() time.Time

	// PrincipalHeader (lower-case) is the request header that the Envoy in
	// front of the sidecar sets to the authenticated agent, overwriting
	// what a client sent (M1_PRINCIPAL_HEADER); "" trusts no header.
	PrincipalHeader string
	// Gateway holds approvals at the gateway (DESIGN §10); off by default.
	Gateway GatewayOptions

	// PeerPrincipal names the authenticated caller of Check (the SPIFFE ID
	// of the gRPC peer's verified client certificate); nil or "": none. It
	// is the principal only when neither a token, the principal header nor
	// the CheckRequest's source names one (see decide).
	PeerPrincipal func(ctx context.Context) string
}

// Service answers Envoy's Check calls. It is safe for concurrent use; the
// policy is swapped atomically with SetPolicy.
type Service struct {
	authv3.UnimplementedAuthorizationServer
	opts   Options
	policy atomic.Pointer[policy.Engine]
	shadow shadow
	ids    idGen
	debug  bool
}

// New returns a Service that decides with engine. A nil engine (a remote
// policy source not loaded yet) denies every call policy_error until
// SetPolicy.
func New(opts Options, engine *policy.Engine) (*Service, error) {
	switch {
	case opts.Logger == nil || opts.Metrics == nil || opts.Now == nil:
		return nil, fmt.Errorf("authz: Logger, Metrics and Now are required")
	case opts.Uses == nil || opts.Revocations == nil:
		return nil, fmt.Errorf("authz: Uses and Revocations are required")
	case opts.ApprovalHeader == "" || opts.ApprovalHeader != strings.ToLower(opts.ApprovalHeader):
		return nil, fmt.Errorf("authz: ApprovalHeader %q must be a non-empty lower-case header name", opts.ApprovalHeader)
	case opts.Parse.MCPPath == "" || opts.Parse.MaxBodyBytes <= 0:
		return nil, fmt.Errorf("authz: Parse.MCPPath and Parse.MaxBodyBytes are required")
	case opts.PrincipalHeader != strings.ToLower(opts.PrincipalHeader):
		return nil, fmt.Errorf("authz: PrincipalHeader %q must be lower-case", opts.PrincipalHeader)
	case opts.Gateway.Approvals != nil && (opts.Gateway.Timeout <= 0 || opts.Gateway.PublicURL == ""):
		return nil, fmt.Errorf("authz: Gateway.Timeout and Gateway.PublicURL are required with Gateway.Approvals")
	}
	s := &Service{opts: opts, debug: opts.Logger.Core().Enabled(zapcore.DebugLevel)}
	s.ids.seed()
	s.shadow.init()
	if engine != nil {
		s.SetPolicy(engine)
	}
	return s, nil
}

// SetPolicy makes engine (non-nil) the policy for every Check that starts
// after it, and moves the decision cache to its revision. A Check
// in flight finishes with the engine it started with: its decision, cache
// key, response and audit event all come from that one engine.
func (s *Service) SetPolicy(engine *policy.Engine) {
	old := s.policy.Swap(engine)
	if old != nil && old.Revision() != engine.Revision() {
		s.opts.Metrics.BundleInfo.DeleteLabelValues(old.Revision())
	}
	s.opts.Metrics.BundleInfo.WithLabelValues(engine.Revision()).Set(1)
	if s.opts.Cache != nil && (old == nil || old.Revision() != engine.Revision()) {
		s.opts.Cache.SetRevision(engine.Revision())
	}
}

// Policy returns the engine in force, nil before the first one.
func (s *Service) Policy() *policy.Engine { return s.policy.Load() }

// Caching reports whether decisions of the policy in force are cached, and
// why not: the service has no decision cache, or the policy's decisions
// depend on more than input.m1 (the engine's analysis).
func (s *Service) Caching() (on bool, why string) {
	return s.caching(s.policy.Load())
}

func (s *Service) caching(engine *policy.Engine) (bool, string) {
	switch {
	case engine == nil:
		return false, "no policy loaded yet"
	case s.opts.Cache == nil:
		return false, "no decision cache is configured (cache size 0)"
	}
	return engine.Cacheable()
}

// verdict is one decision before it is put on the wire.
type verdict struct {
	id string
	// engine is the policy of this decision, loaded once when the check
	// starts (nil before any policy is loaded).
	engine    *policy.Engine
	evaluated bool // the check reached the policy (hard check 10)
	allowed   bool
	code      string // deny code, codeOK on allow
	status    int
	reason    string
	call      toolcall.Call
	principal string
	// peerPrincipal: principal is the gRPC peer's identity (the Envoy that
	// asked, which may serve many clients), not one of the call's own.
	peerPrincipal bool
	runID         string
	tier          string // cache tier that answered, "" when evaluated or not reached
	policy        *policy.Decision
	claims        *approval.Claims // verified token, nil without one
	// retryAfter is set on a rate_limited deny.
	retryAfter time.Duration
	// tokenResult is the m1_token_verifications_total result: "" without a
	// token, "ok", or the token-related deny code.
	tokenResult string
	// proposalID is the gateway proposal of the call (DESIGN §10): the
	// one it waits on, or whose held approval it claimed.
	proposalID string
}

// refuse makes v a deny with code, the code's status (internal/deny) and
// reason.
func (v *verdict) refuse(code, reason string) {
	v.allowed, v.code, v.status, v.reason = false, code, deny.Status(code), reason
}

// Check decides one request. It always returns a CheckResponse and a nil error.
func (s *Service) Check(ctx context.Context, req *authv3.CheckRequest) (resp *authv3.CheckResponse, _ error) {
	start := s.opts.Now()
	v := verdict{id: s.ids.next(start), engine: s.policy.Load()}
	defer func() {
		if p := recover(); p != nil {
			s.opts.Logger.Error("check panicked; denying", zap.String(fieldDecisionID, v.id), zap.Any("panic", p))
			v.refuse(deny.InternalError, "internal error")
			resp = s.deny(&v, toolcall.HeadersOf(req.GetAttributes().GetRequest().GetHttp()))
		}
		s.record(&v, start)
		if v.evaluated {
			s.shadowEval(req, &v)
		}
	}()
	headers := s.decide(ctx, req, &v)
	if v.allowed {
		return s.allow(&v, headers), nil
	}
	return s.deny(&v, headers), nil
}

func (s *Service) decide(ctx context.Context, req *authv3.CheckRequest, v *verdict) toolcall.Headers {
	attrs := req.GetAttributes()
	h := attrs.GetRequest().GetHttp()
	headers := toolcall.HeadersOf(h)
	if h == nil {
		v.refuse(deny.BadRequest, "CheckRequest has no attributes.request.http")
		return headers
	}
	call, rerr := toolcall.Parse(h, headers, s.opts.Parse)
	v.call = call
	if rerr != nil {
		v.refuse(rerr.Code, rerr.Reason)
		return headers
	}
	// The principal, narrowest first: the token's sub (checkToken sets
	// it), the configured principal header Envoy sets, the downstream peer
	// Envoy verified (source.principal), then the peer that called Check —
	// the Envoy itself, which names the agent only where that Envoy serves
	// one agent.
	v.principal = attrs.GetSource().GetPrincipal()
	if p, ok := s.headerPrincipal(headers); ok {
		v.principal = p
	}
	if v.principal == "" && s.opts.PeerPrincipal != nil {
		v.principal = s.opts.PeerPrincipal(ctx)
		v.peerPrincipal = v.principal != ""
	}
	if raw, ok := headers.Lookup(s.opts.ApprovalHeader); ok && !s.checkToken(ctx, tokenFromHeader(raw), v) {
		return headers
	}
	if s.opts.RateLimit != nil && call.Kind == toolcall.KindToolCall && !s.rateLimit(ctx, v) {
		return headers
	}
	s.evaluate(ctx, req, headers, v)
	if s.holdsApprovals(v) {
		s.holdAtGateway(ctx, req, headers, v)
	}
	if v.allowed && v.claims != nil && call.Kind == toolcall.KindToolCall {
		s.consume(ctx, v)
	}
	return headers
}

// rateLimit counts a tool call against its principal's limits (the token's
// sub, or the peer's identity; calls from no principal share one count),
// after the token checks and before the policy, so that a refused call
// consumes no approval. It returns false after filling the deny.
func (s *Service) rateLimit(ctx context.Context, v *verdict) bool {
	r := s.opts.RateLimit.Allow(ctx, v.principal)
	if r.Allowed {
		return true
	}
	secs := max(int64((r.RetryAfter+time.Second-1)/time.Second), 1)
	v.refuse(deny.RateLimited, "too many tool calls for this principal (the "+r.Limit+" limit); retry after "+strconv.FormatInt(secs, 10)+"s")
	v.retryAfter = time.Duration(secs) * time.Second
	return false
}

// evaluate runs the policy (hard check 10), through the decision cache when
// the policy allows it.
func (s *Service) evaluate(ctx context.Context, req *authv3.CheckRequest, headers toolcall.Headers, v *verdict) {
	engine := v.engine
	v.evaluated = true
	if engine == nil {
		s.policyError(v, "load policy", errNoPolicy)
		return
	}
	var key cache.Key
	cacheable, _ := s.caching(engine)
	if cacheable {
		key = cacheKey(engine.CacheRevision(), engine.Path(), engine.Needs().M1Paths, &v.call, v.principal, v.claims)
		if d, tier, ok := s.opts.Cache.Get(ctx, key); ok {
			s.opts.Metrics.CacheHits.WithLabelValues(tier).Inc()
			v.tier = tier
			s.apply(v, d)
			return
		}
		s.opts.Metrics.CacheMisses.Inc()
	}
	input, err := buildInput(req, &v.call, headers, v.principal, v.claims, engine.Needs())
	if err != nil {
		s.policyError(v, "build policy input", err)
		return
	}
	evalStart := time.Now()
	d, err := engine.Eval(ctx, input)
	took := time.Since(evalStart)
	s.opts.Metrics.EvalDuration.Observe(took.Seconds())
	if cacheable {
		s.opts.Cache.ObserveEval(took)
	}
	if err != nil {
		s.policyError(v, "evaluate policy", err)
		return
	}
	if cacheable {
		s.opts.Cache.Set(key, &d)
	}
	s.apply(v, &d)
}

// policyError denies with policy_error. The details (bundle paths, lines,
// policy source) go to the operator's log, not to the caller.
func (s *Service) policyError(v *verdict, what string, err error) {
	v.refuse(deny.PolicyError, "policy evaluation failed; the operator's log has decision "+v.id)
	s.opts.Logger.Warn("policy error; denied", zap.String(fieldDecisionID, v.id), zap.String("stage", what), zap.Error(err))
}

// apply turns a policy decision into the verdict.
func (s *Service) apply(v *verdict, d *policy.Decision) {
	v.policy = d
	if d.Allowed {
		v.allowed, v.code, v.status = true, codeOK, 200
		return
	}
	v.refuse(deny.PolicyDenied, d.Reason)
	if d.HTTPStatus != 0 {
		v.status = d.HTTPStatus
	}
	if v.reason == "" {
		v.reason = "denied by policy"
	}
}

// cacheKey hashes the bundle revision, the decision path (sidecars that
// share a Redis cache may evaluate different rules of one bundle) and the
// parts of input.m1 that the policy reads (paths, from the policy analysis; nil means all of it). The
// arguments stand as their JCS hash, and token claims as the hash of their
// signed bytes except for the string claims a policy commonly reads (iss,
// sub, jti, m1.kind, and an approval's m1.tool and m1.args_sha256), which
// stand as themselves, so fresh approvals for the same call share a key.
// Fields are length-prefixed so that no two inputs share an encoding.
func cacheKey(revision, decisionPath string, paths [][]string, c *toolcall.Call, principal string, claims *approval.Claims) cache.Key {
	var buf [512]byte
	b := appendField(appendField(buf[:0], revision), decisionPath)
	if paths == nil {
		for _, p := range wholeM1 {
			b = appendM1(b, p, c, principal, claims)
		}
	} else {
		for _, p := range paths {
			for _, seg := range p {
				b = appendField(b, seg)
			}
			b = append(b, 0xff) // end of path
			b = appendM1(b, p, c, principal, claims)
		}
	}
	return sha256.Sum256(b)
}

// wholeM1 are the paths that together cover all of input.m1.
var wholeM1 = [][]string{{"kind"}, {"tool"}, {"args"}, {"mcp_method"}, {"principal"}, {"token"}, {"request"}}

func appendField(b []byte, f string) []byte {
	b = binary.AppendUvarint(b, uint64(len(f)))
	return append(b, f...)
}

// appendM1 appends the value at path p of input.m1 (as m1Input builds it),
// or something that determines it.
func appendM1(b []byte, p []string, c *toolcall.Call, principal string, claims *approval.Claims) []byte {
	switch p[0] {
	case "kind":
		return appendField(b, c.Kind)
	case "tool": // "" only when absent: tool names are never empty
		return appendField(b, c.Tool)
	case "args", "args_sha256": // every argument value is fixed by the hash
		return appendField(b, c.ArgsSHA256)
	case "mcp_method":
		if !c.IsMCP {
			return append(b, 0)
		}
		return appendField(append(b, 1), c.MCPMethod)
	case "principal":
		return appendField(b, principal)
	case "request":
		return appendField(appendField(appendField(b, c.Method), c.Host), c.Path)
	case "token":
		if claims == nil {
			return append(b, 0)
		}
		b = append(b, 1)
		if len(p) == 2 {
			switch p[1] { // required string claims: never absent
			case "iss":
				return appendField(b, claims.Issuer)
			case "sub":
				return appendField(b, claims.Subject)
			case "jti":
				return appendField(b, claims.ID)
			}
		}
		if len(p) == 3 && p[1] == "m1" {
			switch {
			case p[2] == "kind":
				return appendField(b, claims.Kind)
			case p[2] == "tool" && claims.Kind == approval.KindApproval:
				return appendField(b, claims.Tool)
			case p[2] == "args_sha256" && claims.Kind == approval.KindApproval:
				return appendField(b, claims.ArgsSHA256)
			}
		}
		return append(b, claims.PayloadSHA256[:]...)
	}
	return b // a key input.m1 never has: always undefined
}

const (
	fieldDecisionID = "decision_id"
	fieldDecision   = "decision"
	fieldCode       = "code"
	fieldReason     = "reason"
	fieldStatus     = "status"
	fieldKind       = "kind"
	fieldTool       = "tool"
	fieldPrincipal  = "principal"
	fieldCacheTier  = "cache_tier"
	fieldDuration   = "duration"
	fieldToken      = "token"
	fieldJTI        = "jti"
)

// auditDetailBytes bounds the deny reason an audit event keeps. A reason
// can quote what the caller sent (a JSON error names the member it failed
// in, a policy message may repeat the input), and a denied caller must not
// choose how much the audit trail stores (DESIGN §7).
const auditDetailBytes = 1024

// audit hands the decision to the audit trail. Arguments are kept only for
// allowed calls of tools the registry marks non-sensitive: a denied call
// keeps its args_sha256 alone, so that audit volume is bounded by what was
// allowed, not by what anyone sends (the recorder also caps the size of
// what it keeps, M1_AUDIT_MAX_ARGS_BYTES).
func (s *Service) audit(v *verdict, decision string, start time.Time, elapsed time.Duration) {
	e := store.Event{
		DecisionID: v.id, Time: start, Kind: store.KindDecision,
		Principal: v.principal, RunID: v.runID, Tool: v.call.Tool, ArgsSHA256: v.call.ArgsSHA256,
		Decision: decision, Reason: v.code, Status: v.status, LatencyMicros: elapsed.Microseconds(), CacheTier: v.tier,
	}
	if !v.allowed {
		e.Detail = clipText(v.reason, auditDetailBytes)
	}
	engine := v.engine // the one that decided: a swap since cannot change it
	if engine != nil {
		e.PolicyRevision = engine.Revision()
	}
	if c := v.claims; c != nil {
		e.TokenJTI, e.ProposalID = c.ID, c.ProposalID
	}
	if e.ProposalID == "" {
		e.ProposalID = v.proposalID
	}
	if v.allowed && len(v.call.Args) > 0 && engine != nil && engine.ArgsAuditable(v.call.Tool) {
		e.Args = v.call.Args // validated JSON, as sent; never modified
	}
	s.opts.Audit.Record(e)
}

// clipText returns s, or when it is longer than n bytes its first n bytes
// or fewer (cut on a UTF-8 boundary) followed by "…".
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

func jtiOf(c *approval.Claims) string {
	if c == nil {
		return ""
	}
	return c.ID
}

// record updates metrics and logs the decision at debug level.
func (s *Service) record(v *verdict, start time.Time) {
	elapsed := s.opts.Now().Sub(start)
	decision := DecisionDeny
	if v.allowed {
		decision = DecisionAllow
	}
	s.opts.Metrics.Checks.WithLabelValues(decision, v.code).Inc()
	if v.tokenResult != "" {
		s.opts.Metrics.TokenVerifyTotal.WithLabelValues(v.tokenResult).Inc()
	}
	s.opts.Metrics.CheckDuration.Observe(elapsed.Seconds())
	if s.opts.Audit != nil {
		s.audit(v, decision, start, elapsed)
	}
	if !s.debug {
		return
	}
	s.opts.Logger.Debug("decision",
		zap.String(fieldDecisionID, v.id),
		zap.String(fieldDecision, decision),
		zap.String(fieldCode, v.code),
		zap.String(fieldReason, v.reason),
		zap.Int(fieldStatus, v.status),
		zap.String(fieldKind, v.call.Kind),
		zap.String(fieldTool, v.call.Tool),
		zap.String(fieldPrincipal, v.principal),
		zap.String(fieldCacheTier, v.tier),
		zap.String(fieldToken, v.tokenResult),
		zap.String(fieldJTI, jtiOf(v.claims)),
		zap.Duration(fieldDuration, elapsed),
	)
}
