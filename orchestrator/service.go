package orchestrator

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/toolcall"
)

// Auditor records audit events (an *audit.Recorder).
type Auditor interface {
	Record(e store.Event)
}

// Audit event kinds the orchestrator writes, beside the sidecar's
// store.KindDecision.
const (
	KindProposal  = "proposal"  // a proposal was created
	KindApproval  = "approval"  // an operator (or auto-risk) approved a proposal
	KindRejection = "rejection" // an operator rejected a proposal, or it expired
	KindResult    = "result"    // an approved call was dispatched; what came of it
	KindLLMCall   = "llm_call"  // a model call, with its tokens and cost
	KindRun       = "run"       // a run ended
)

// Options is what a Service needs. Start from DefaultOptions and set
// Records, Audit, Registry and Verifier, which have no default.
type Options struct {
	Records store.Records // required
	Audit   Auditor       // required
	// Planner plans runs; nil runs the orchestrator without one (DESIGN
	// §10): it serves approvals and the rest of its API, and StartRun
	// fails with ErrNoPlanner.
	Planner  Planner
	Registry Registry // required: at least one tool
	Prices   Prices   // required; DefaultOptions has DefaultPrices

	// CostTracking prices LLM usage (COST_TRACKING_ENABLED); when false,
	// tokens are still counted and cost is 0.
	CostTracking bool
	// CostAlertUSD marks and logs runs whose cost reaches it
	// (COST_ALERT_THRESHOLD); 0 disables the alert.
	CostAlertUSD float64
	// BudgetUSD is the default per-run budget; planning stops once a run's
	// cost reaches it. 0 means no budget.
	BudgetUSD float64
	// MaxSteps bounds the planning steps of one run; default 20.
	MaxSteps int

	ProposalTTL     time.Duration // pending proposals expire after this; default 15m
	ExpireEvery     time.Duration // how often expired proposals are swept; default 1s
	DispatchTimeout time.Duration // per approved call; default 30s
	PlanTimeout     time.Duration // per planning step; default 2m

	// ClockSkew is the sidecars' M1_CLOCK_SKEW: a sidecar that finds its
	// shared state reset starts a new epoch at most this far ahead
	// (DESIGN §7), so it is how long to wait before a new approval when a
	// state_reset deny carries no retry-after. Default
	// approval.DefaultClockSkew (30s); 0 means none; negative is refused.
	ClockSkew time.Duration

	ApprovalHeader  string // default x-m1-approval-token
	MCPPath         string // default /mcp
	ToolsPathPrefix string // default /tools/

	// Verifier runs DESIGN §4 hard checks 1–7 (signature, alg and kid
	// against the operators' public keys, typ, claims, times, lifetime,
	// audience, issuer) on every approval the orchestrator receives,
	// before it records anything (DESIGN §10). Required: with only the
	// admin token, nobody may write an approval in an operator's name.
	Verifier *approval.Verifier

	HTTPClient *http.Client     // for dispatch; nil means a client without timeout (DispatchTimeout applies)
	Metrics    *Metrics         // nil records none
	Logger     *zap.Logger      // nil logs nothing
	Now        func() time.Time // nil means time.Now
	Version    string

	// GatewayLimits bound the proposals sidecars file per principal;
	// default DefaultGatewayLimits.
	GatewayLimits GatewayLimits
}

// DefaultOptions returns the defaults of every optional field; the
// required ones (Records, Audit, Registry, Verifier) are left unset.
func DefaultOptions() Options {
	return Options{
		Prices:          DefaultPrices(),
		MaxSteps:        20,
		ProposalTTL:     15 * time.Minute,
		ExpireEvery:     time.Second,
		DispatchTimeout: 30 * time.Second,
		PlanTimeout:     2 * time.Minute,
		ClockSkew:       approval.DefaultClockSkew,
		ApprovalHeader:  "x-m1-approval-token",
		MCPPath:         toolcall.DefaultMCPPath,
		ToolsPathPrefix: toolcall.DefaultToolsPathPrefix,
		Logger:          zap.NewNop(),
		Now:             time.Now,
		GatewayLimits:   DefaultGatewayLimits(),
	}
}

// validate fails on the first field that New cannot run with, naming it.
func (o *Options) validate() error {
	switch {
	case o.Records == nil:
		return errors.New("Records is required")
	case o.Audit == nil:
		return errors.New("Audit is required")
	case o.Verifier == nil:
		return errors.New("Verifier is required: every approval is verified before it is recorded")
	case len(o.Registry) == 0:
		return errors.New("Registry has no tools")
	case o.Prices == nil:
		return errors.New("Prices is required (DefaultPrices)")
	case o.BudgetUSD < 0:
		return errors.New("BudgetUSD must not be negative")
	case o.CostAlertUSD < 0:
		return errors.New("CostAlertUSD must not be negative")
	case o.MaxSteps < 1:
		return errors.New("MaxSteps must be at least 1")
	case o.ProposalTTL <= 0:
		return errors.New("ProposalTTL must be positive")
	case o.ExpireEvery <= 0:
		return errors.New("ExpireEvery must be positive")
	case o.DispatchTimeout <= 0:
		return errors.New("DispatchTimeout must be positive")
	case o.PlanTimeout <= 0:
		return errors.New("PlanTimeout must be positive")
	case o.ClockSkew < 0:
		return errors.New("ClockSkew must not be negative")
	case o.ApprovalHeader == "":
		return errors.New("ApprovalHeader is empty")
	case o.MCPPath == "":
		return errors.New("MCPPath is empty")
	case o.ToolsPathPrefix == "":
		return errors.New("ToolsPathPrefix is empty")
	}
	return o.GatewayLimits.validate()
}

// Service is the orchestrator: its HTTP API, the planning loop, dispatch
// and proposal expiry. It is safe for concurrent use.
type Service struct {
	opts Options
	log  *zap.Logger
	disp dispatcher

	bg     context.Context // background work; cancelled by Stop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	runLocks map[string]*runLock
	stopped  bool // set by Stop: no new background work

	filings filings    // sidecars' new proposals per principal, for GatewayLimits
	fileMu  sync.Mutex // a filing counts the pending proposals and stores its own as one step

	// reapprove holds, for each proposal pending again after a state_reset
	// deny, the time a new approval must be issued at or after: the
	// sidecar refuses any issued earlier. Kept in memory only: after a
	// restart such a token is dispatched and refused by the sidecar again.
	reapprove map[string]time.Time

	grants    map[[32]byte]*heldGrant // by payload hash: the grants runs hold (grants.go)
	runGrants map[string][]*heldGrant // by run id
}

// ErrStopped is returned for work asked of a Service that is stopping.
var ErrStopped = errors.New("orchestrator: stopping")

// ErrNoPlanner is returned by StartRun when the orchestrator runs without
// a planner.
var ErrNoPlanner = errors.New("orchestrator: no planner is configured (set ANTHROPIC_API_KEY or M1_PLAN_FILE); this orchestrator serves approvals only")

// track registers one piece of work with the WaitGroup Stop waits on, or
// reports false once Stop has begun (so that Add never races Wait).
func (s *Service) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.wg.Add(1)
	return true
}

type runLock struct {
	mu   sync.Mutex
	refs int
}

// New checks o and returns a Service; Start begins background work.
func New(o Options) (*Service, error) {
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("orchestrator: %w", err)
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{}
	}
	client := *o.HTTPClient // a copy: the caller's client keeps its own redirect policy
	client.CheckRedirect = noRedirects
	o.HTTPClient = &client
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Service{
		opts: o,
		log:  o.Logger,
		disp: dispatcher{
			client: o.HTTPClient, approvalHeader: o.ApprovalHeader,
			mcpPath: o.MCPPath, toolsPathPrefix: o.ToolsPathPrefix, version: o.Version,
		},
		runLocks:  map[string]*runLock{},
		reapprove: map[string]time.Time{},
		grants:    map[[32]byte]*heldGrant{},
		runGrants: map[string][]*heldGrant{},
	}
	s.bg, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Start sweeps expired proposals every ExpireEvery and resumes the runs
// that were running when the orchestrator last stopped.
func (s *Service) Start(ctx context.Context) error {
	runs, err := s.opts.Records.Runs(ctx, store.RunFilter{Status: store.RunRunning})
	if err != nil {
		return fmt.Errorf("list running runs: %w", err)
	}
	if s.opts.Metrics != nil {
		s.opts.Metrics.RunsActive.Set(float64(len(runs)))
	}
	s.recoverDispatches(ctx)
	for _, r := range runs {
		s.goAdvance(r.ID)
	}
	if !s.track() {
		return ErrStopped
	}
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.opts.ExpireEvery)
		defer t.Stop()
		for {
			select {
			case <-s.bg.Done():
				return
			case <-t.C:
				s.expire(s.bg)
				s.recoverDispatches(s.bg)
			}
		}
	}()
	return nil
}

// Stop refuses new work, cancels planning (a run cut short resumes at the
// next start) and waits, until ctx ends, for dispatches in flight. It is
// safe to call twice.
func (s *Service) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("orchestrator stop: %w", ctx.Err())
	}
}

// recoverDispatches fails the proposals that stayed approved longer than a
// dispatch may take, and their running tool calls: their dispatch was cut
// short (the orchestrator stopped), and whether the tool ran is for the
// sidecar's audit trail to tell. Left approved, they would hold their run
// forever. It runs at start and with every expiry sweep.
func (s *Service) recoverDispatches(ctx context.Context) {
	ps, err := s.opts.Records.Proposals(ctx, store.ProposalFilter{Status: store.ProposalApproved})
	if err != nil {
		s.log.Warn("list approved proposals", zap.Error(err))
		return
	}
	now := s.now()
	const why = "dispatch interrupted (the orchestrator stopped); see the sidecar's audit events for whether the tool ran"
	for _, p := range ps {
		if p.Origin == store.OriginSidecar || now.Sub(p.UpdatedAt) < 2*s.opts.DispatchTimeout {
			continue // a sidecar's approval is held, not dispatched
		}
		if _, err := s.opts.Records.UpdateProposal(ctx, p.ID, store.ProposalApproved, store.ProposalUpdate{Status: store.ProposalFailed, Reason: why, UpdatedAt: now}); err != nil {
			continue // decided meanwhile, or the store is down: the next sweep sees it
		}
		if calls, err := s.opts.Records.ToolCalls(ctx, p.RunID); err == nil {
			for _, c := range calls {
				if c.ProposalID == p.ID && c.Status == store.CallRunning {
					c.Status, c.Error, c.UpdatedAt = store.CallFailed, why, now
					_ = s.opts.Records.UpdateToolCall(ctx, c)
				}
			}
		}
		s.audit(store.Event{Kind: KindResult, Time: now, Principal: p.Agent, RunID: p.RunID, ProposalID: p.ID, Tool: p.Tool,
			ArgsSHA256: p.ArgsSHA256, Decision: store.CallFailed, Reason: reasonInterrupted, Detail: why})
		s.log.Warn("proposal dispatch interrupted", zap.String(fieldRunID, p.RunID), zap.String(fieldProposalID, p.ID))
		s.goAdvance(p.RunID)
	}
}

// StartRun creates a run and plans its first step. A planner failure does
// not fail the call: the run is returned with status failed and the error.
// A grant of req.Grants that cannot serve the run is a *TokenError, and no
// run is created.
func (s *Service) StartRun(ctx context.Context, req RunRequest) (RunDetail, error) {
	if s.opts.Planner == nil {
		return RunDetail{}, ErrNoPlanner
	}
	grants, err := s.checkGrants(req.Agent, req.Grants)
	if err != nil {
		return RunDetail{}, err
	}
	if !s.track() {
		return RunDetail{}, ErrStopped
	}
	defer s.wg.Done()
	now := s.now()
	budget := req.BudgetUSD
	if budget == 0 {
		budget = s.opts.BudgetUSD
	}
	run := store.Run{
		ID: newID("run"), Agent: req.Agent, Goal: req.Goal, Status: store.RunRunning,
		BudgetUSD: budget, CreatedAt: now, UpdatedAt: now,
	}
	if err := s.opts.Records.CreateRun(ctx, run); err != nil {
		return RunDetail{}, fmt.Errorf("create run: %w", err)
	}
	if s.opts.Metrics != nil {
		s.opts.Metrics.RunsActive.Inc()
	}
	s.holdGrants(run.ID, grants)
	s.log.Info("run started", zap.String(fieldRunID, run.ID), zap.String(fieldAgent, run.Agent), zap.Int("grants", len(grants)))
	s.advance(run.ID) // cut short by Stop, the run is planned at the next start
	return s.detail(ctx, run.ID)
}

func (s *Service) detail(ctx context.Context, id string) (RunDetail, error) {
	run, err := s.opts.Records.Run(ctx, id)
	if err != nil {
		return RunDetail{}, err
	}
	ps, err := s.opts.Records.Proposals(ctx, store.ProposalFilter{RunID: id})
	if err != nil {
		return RunDetail{}, err
	}
	calls, err := s.opts.Records.ToolCalls(ctx, id)
	if err != nil {
		return RunDetail{}, err
	}
	return RunDetail{Run: run, Proposals: nonNil(ps), ToolCalls: nonNil(calls)}, nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// goAdvance plans the run's next step in the background.
func (s *Service) goAdvance(runID string) {
	if runID == "" || s.opts.Planner == nil {
		return // a proposal outside a run (a sidecar's), or no planner: nothing to plan
	}
	if !s.track() {
		return // stopping: the run resumes at the next start
	}
	go func() {
		defer s.wg.Done()
		s.advance(runID)
	}()
}

// lockRun serializes planning of one run.
func (s *Service) lockRun(id string) func() {
	s.mu.Lock()
	l := s.runLocks[id]
	if l == nil {
		l = &runLock{}
		s.runLocks[id] = l
	}
	l.refs++
	s.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.runLocks, id)
		}
		s.mu.Unlock()
	}
}

// advance asks the planner for the run's next step once every proposal of
// the last step is decided, and stores what it proposes; or ends the run.
func (s *Service) advance(runID string) {
	defer s.lockRun(runID)()
	ctx := s.bg
	log := s.log.With(zap.String(fieldRunID, runID))
	run, err := s.opts.Records.Run(ctx, runID)
	if err != nil {
		log.Error("plan: load run", zap.Error(err))
		return
	}
	if run.Status != store.RunRunning {
		return
	}
	ps, err := s.opts.Records.Proposals(ctx, store.ProposalFilter{RunID: runID})
	if err != nil {
		log.Error("plan: load proposals", zap.Error(err))
		return
	}
	lastStep := 0
	for _, p := range ps {
		if p.Status == store.ProposalPending || p.Status == store.ProposalApproved {
			return // the step is not decided yet
		}
		lastStep = max(lastStep, p.Step)
	}
	if run.BudgetUSD > 0 && run.Usage.CostUSD >= run.BudgetUSD {
		s.finish(ctx, run, store.RunOverBudget, fmt.Sprintf("cost $%.4f reached the run's budget $%.4f", run.Usage.CostUSD, run.BudgetUSD))
		return
	}
	if lastStep >= s.opts.MaxSteps {
		s.finish(ctx, run, store.RunFailed, fmt.Sprintf("planner did not finish within %d steps", s.opts.MaxSteps))
		return
	}
	calls, err := s.opts.Records.ToolCalls(ctx, runID)
	if err != nil {
		log.Error("plan: load tool calls", zap.Error(err))
		return
	}
	sess := Session{RunID: run.ID, Agent: run.Agent, Goal: run.Goal, Tools: s.opts.Registry.Tools(), History: history(ps, calls)}

	pctx, cancel := context.WithTimeout(ctx, s.opts.PlanTimeout)
	step, err := s.opts.Planner.Next(pctx, sess)
	cancel()
	used := step.LLM
	var perr *PlannerError
	if errors.As(err, &perr) {
		used = perr.LLM
	}
	for _, u := range used {
		var rerr error
		if run, rerr = s.recordLLM(ctx, run, u); rerr != nil {
			log.Error("record LLM usage", zap.Error(rerr))
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return // stopping: the run resumes at the next start
		}
		s.finish(ctx, run, store.RunFailed, "planner: "+err.Error())
		return
	}
	if len(step.Calls) == 0 {
		if step.Done {
			s.finish(ctx, run, store.RunCompleted, "")
		} else {
			s.finish(ctx, run, store.RunFailed, "planner proposed nothing and did not finish")
		}
		return
	}
	s.propose(ctx, run, lastStep+1, step)
}

// propose stores a step's calls as pending proposals. A call the sidecar
// could never admit (unknown tool, arguments it would refuse) is stored
// failed with the reason, so that the planner hears of it next step.
func (s *Service) propose(ctx context.Context, run store.Run, stepNo int, step Step) {
	now := s.now()
	ps := make([]store.Proposal, 0, len(step.Calls))
	anyPending := false
	for i, c := range step.Calls {
		// Proposals list in (created_at, id) order: a microsecond apart,
		// they keep the order of the step's calls, which the planner's
		// history must keep too.
		at := now.Add(time.Duration(i) * time.Microsecond)
		p := store.Proposal{
			ID: newID("prop"), RunID: run.ID, Agent: run.Agent, Step: stepNo, CallID: c.ID,
			Tool: c.Tool, Args: c.Args, Reasoning: c.Reasoning, Status: store.ProposalPending,
			CreatedAt: at, UpdatedAt: at, ExpiresAt: at.Add(s.opts.ProposalTTL),
		}
		if p.CallID == "" {
			p.CallID = fmt.Sprintf("call_%d_%d", stepNo, i+1)
		}
		if len(bytes.TrimSpace(p.Args)) == 0 {
			p.Args = json.RawMessage(`{}`) // as the sidecar reads a call without arguments
		}
		if p.Reasoning == "" {
			p.Reasoning = step.Text
		}
		spec, known := s.opts.Registry[c.Tool]
		p.Risk = spec.Risk
		sum, err := toolcall.ArgsSHA256(c.Tool, c.Args)
		switch {
		case !known:
			p.Status, p.Reason = store.ProposalFailed, fmt.Sprintf("unknown tool %q", c.Tool)
		case err != nil:
			p.Status, p.Reason = store.ProposalFailed, "arguments the sidecar would refuse: "+err.Error()
		default:
			p.ArgsSHA256 = sum
			anyPending = true
		}
		if p.Status == store.ProposalFailed {
			p.DecidedAt = now
			if !json.Valid(p.Args) { // kept as text: a JSON column holds only JSON
				p.Args, _ = json.Marshal(string(p.Args))
			}
		}
		ps = append(ps, p)
	}
	if err := s.opts.Records.CreateProposals(ctx, ps); err != nil {
		s.finish(ctx, run, store.RunFailed, "store proposals: "+err.Error())
		return
	}
	for _, p := range ps {
		s.audit(store.Event{
			Kind: KindProposal, Time: p.CreatedAt, Principal: p.Agent, RunID: p.RunID, ProposalID: p.ID,
			Tool: p.Tool, ArgsSHA256: p.ArgsSHA256, Args: s.auditArgs(p.Tool, p.Args),
			Decision: p.Status, Reason: cmp.Or(p.Reason, "proposed"), Detail: clip(p.Reasoning, 4096),
		})
		s.log.Info("proposal", zap.String(fieldRunID, p.RunID), zap.String(fieldProposalID, p.ID),
			zap.String(fieldTool, p.Tool), zap.String("risk", p.Risk), zap.String("status", p.Status))
	}
	s.grant(ctx, ps)
	if !anyPending {
		s.goAdvance(run.ID)
	}
}

// history rebuilds the earlier steps and their outcomes from the store.
func history(ps []store.Proposal, calls []store.ToolCall) []StepRecord {
	byProposal := map[string]store.ToolCall{}
	for _, c := range calls {
		byProposal[c.ProposalID] = c // the last dispatch of a proposal wins
	}
	var out []StepRecord
	for _, p := range ps {
		for len(out) < p.Step {
			out = append(out, StepRecord{})
		}
		r := &out[p.Step-1]
		if r.Text == "" {
			r.Text = p.Reasoning
		}
		r.Calls = append(r.Calls, Call{ID: p.CallID, Tool: p.Tool, Args: p.Args, Reasoning: p.Reasoning})
		o := Outcome{Status: p.Status, Error: p.Reason}
		if c, ok := byProposal[p.ID]; ok {
			o.Result = c.Result
			if c.Error != "" {
				o.Error = c.Error
			}
		}
		r.Results = append(r.Results, o)
	}
	return out
}

// recordLLM stores one model call with its cost and updates the run,
// metrics and the cost alert.
func (s *Service) recordLLM(ctx context.Context, run store.Run, u LLMUsage) (store.Run, error) {
	usage, known := s.opts.Prices.Cost(u)
	if !s.opts.CostTracking {
		usage.CostUSD = 0
	} else if !known {
		s.log.Warn("no price for model; its cost counts as 0 (set M1_PRICES_FILE)", zap.String("model", u.Model))
	}
	call := store.LLMCall{ID: newID("llm"), RunID: run.ID, Agent: run.Agent, Model: u.Model, Usage: usage, CreatedAt: s.now()}
	updated, err := s.opts.Records.RecordLLMCall(ctx, call)
	if err != nil {
		return run, err
	}
	if m := s.opts.Metrics; m != nil {
		m.Cost.Add(usage.CostUSD)
		for kind, n := range map[string]int64{"input": u.InputTokens, "output": u.OutputTokens, "cache_read": u.CacheReadTokens, "cache_write": u.CacheWriteTokens} {
			if n > 0 {
				m.LLMTokens.WithLabelValues(u.Model, kind).Add(float64(n))
			}
		}
	}
	detail, _ := json.Marshal(map[string]any{"model": u.Model, "usage": usage, "run_cost_usd": updated.Usage.CostUSD})
	s.audit(store.Event{Kind: KindLLMCall, Time: call.CreatedAt, Principal: run.Agent, RunID: run.ID, Detail: string(detail)})
	alert := s.opts.CostAlertUSD > 0 && !updated.OverAlert && updated.Usage.CostUSD >= s.opts.CostAlertUSD
	if alert || updated.Model == "" {
		updated.OverAlert = updated.OverAlert || alert
		updated.Model = cmp.Or(updated.Model, u.Model) // the run's model is its first call's
		updated.UpdatedAt = s.now()
		if err := s.opts.Records.UpdateRun(ctx, updated); err != nil {
			return updated, err
		}
	}
	if alert {
		s.log.Warn("run cost over COST_ALERT_THRESHOLD", zap.String(fieldRunID, run.ID), zap.String(fieldAgent, run.Agent),
			zap.Float64("cost_usd", updated.Usage.CostUSD), zap.Float64("threshold_usd", s.opts.CostAlertUSD))
	}
	return updated, nil
}

// finish ends a run.
func (s *Service) finish(ctx context.Context, run store.Run, status, why string) {
	now := s.now()
	run.Status, run.Error, run.UpdatedAt, run.FinishedAt = status, why, now, now
	if err := s.opts.Records.UpdateRun(ctx, run); err != nil {
		s.log.Error("end run", zap.String(fieldRunID, run.ID), zap.Error(err))
		return
	}
	s.dropGrants(run.ID)
	if m := s.opts.Metrics; m != nil {
		m.Runs.WithLabelValues(status).Inc()
		m.RunsActive.Dec()
	}
	detail, _ := json.Marshal(map[string]any{"cost_usd": run.Usage.CostUSD, "usage": run.Usage, "error": why})
	s.audit(store.Event{Kind: KindRun, Time: now, Principal: run.Agent, RunID: run.ID, Decision: status, Reason: status, Detail: string(detail)})
	log := s.log.With(zap.String(fieldRunID, run.ID), zap.String("status", status), zap.Float64("cost_usd", run.Usage.CostUSD))
	if status == store.RunCompleted {
		log.Info("run ended")
	} else {
		log.Warn("run ended", zap.String("error", why))
	}
}

// expire auto-rejects pending proposals past their deadline.
func (s *Service) expire(ctx context.Context) {
	ps, err := s.opts.Records.ExpireProposals(ctx, s.now())
	if err != nil {
		s.log.Warn("expire proposals", zap.Error(err))
		return
	}
	runs := map[string]bool{}
	for _, p := range ps {
		s.forgetReapprove(p.ID)
		// A sidecar's proposal approved holds its approval; an orchestrator
		// proposal pending again (its token refused by the sidecar) keeps
		// the refused token's approver and jti, which expired nothing.
		detail, jti := "not decided before "+p.ExpiresAt.UTC().Format(time.RFC3339), ""
		if p.Origin == store.OriginSidecar && p.ApprovalJTI != "" {
			detail, jti = "the held approval was not claimed before it expired at "+p.ExpiresAt.UTC().Format(time.RFC3339), p.ApprovalJTI
		}
		s.audit(store.Event{
			Kind: KindRejection, Time: p.DecidedAt, Principal: p.Agent, RunID: p.RunID, ProposalID: p.ID,
			Tool: p.Tool, ArgsSHA256: p.ArgsSHA256, Decision: store.ProposalExpired, Reason: "expired",
			Detail: detail, TokenJTI: jti,
		})
		s.log.Info("proposal expired", zap.String(fieldRunID, p.RunID), zap.String(fieldProposalID, p.ID))
		runs[p.RunID] = true
	}
	for id := range runs {
		s.goAdvance(id)
	}
}

// Errors of Approve and Reject that the HTTP API maps to its codes.
var (
	errNotPending = errors.New("proposal is not pending")
)

// TokenError is an approval token that does not fit its proposal.
type TokenError struct{ Code, Reason string }

func (e *TokenError) Error() string { return e.Code + ": " + e.Reason }

// Approve checks token against the proposal, marks the proposal approved
// and dispatches the call, returning what came of it. A token that does not
// fit is a *TokenError and nothing is dispatched.
func (s *Service) Approve(ctx context.Context, id, token string) (Decided, error) {
	if !s.track() { // Stop waits for the dispatch
		return Decided{}, ErrStopped
	}
	defer s.wg.Done()
	token = strings.TrimSpace(token) // sent on as a header value: no stray white space
	p, err := s.opts.Records.Proposal(ctx, id)
	if err != nil {
		return Decided{}, err
	}
	if p.Status != store.ProposalPending {
		return Decided{Proposal: p}, fmt.Errorf("%w: it is %s", errNotPending, p.Status)
	}
	claims, err := s.checkToken(p, token)
	if err != nil {
		return Decided{Proposal: p}, err
	}
	s.mu.Lock()
	after, reset := s.reapprove[id]
	s.mu.Unlock()
	if reset && claims.IssuedAt.Before(after) {
		return Decided{Proposal: p}, &TokenError{deny.StateReset, fmt.Sprintf(
			"the token was issued at %s, before the sidecar's shared state was reset; it accepts approvals issued at or after %s",
			claims.IssuedAt.UTC().Format(time.RFC3339), after.UTC().Format(time.RFC3339))}
	}
	now := s.now()
	if !p.ExpiresAt.IsZero() && !p.ExpiresAt.After(now) {
		s.expire(ctx)
		return Decided{Proposal: p}, fmt.Errorf("%w: it expired at %s", errNotPending, p.ExpiresAt.UTC().Format(time.RFC3339))
	}
	approver := cmp.Or(claims.Actor, claims.Issuer)
	if p.Origin == store.OriginSidecar {
		return s.hold(ctx, p, token, approver, claims.ID, claims.Expiry)
	}
	p, err = s.approve(ctx, p, approver, claims.ID, "approved")
	if err != nil {
		if errors.Is(err, store.ErrStatus) {
			cur, _ := s.opts.Records.Proposal(ctx, id)
			return Decided{Proposal: cur}, fmt.Errorf("%w: it is %s", errNotPending, cur.Status)
		}
		return Decided{}, err
	}

	// The dispatch outlives a client that hangs up: the approval is spent.
	d := s.dispatch(context.WithoutCancel(ctx), p, token, nil)
	s.goAdvance(d.Proposal.RunID)
	return d, nil
}

// approve marks the pending proposal p approved by approver with the token
// jti, and audits it with reason: "approved" (an operator's approval) or
// "granted" (a run's grant). It fails with store.ErrStatus when p is no
// longer pending.
func (s *Service) approve(ctx context.Context, p store.Proposal, approver, jti, reason string) (store.Proposal, error) {
	now := s.now()
	p, err := s.opts.Records.UpdateProposal(ctx, p.ID, store.ProposalPending, store.ProposalUpdate{
		Status: store.ProposalApproved, Approver: approver, ApprovalJTI: jti, DecidedAt: now, UpdatedAt: now,
	})
	if err != nil {
		return p, err
	}
	s.forgetReapprove(p.ID)
	s.audit(store.Event{
		Kind: KindApproval, Time: now, Principal: p.Agent, RunID: p.RunID, ProposalID: p.ID, Tool: p.Tool,
		ArgsSHA256: p.ArgsSHA256, Decision: store.ProposalApproved, Reason: reason, TokenJTI: jti,
		Detail: "approver=" + approver,
	})
	s.log.Info("proposal approved", zap.String(fieldRunID, p.RunID), zap.String(fieldProposalID, p.ID),
		zap.String("approver", approver), zap.String("reason", reason))
	return p, nil
}

// dispatch runs an approved proposal and records the result. The call has
// DispatchTimeout; the records are written whatever became of it.
//
// A sidecar deny with state_reset means the approval was issued before the
// sidecar's shared state was reset (DESIGN §7): the tool did not run, and
// no approval issued before the new epoch ever will be accepted, so
// sending this token again is useless and the orchestrator cannot mint
// another. The proposal goes back to pending, for the operator to approve
// again once the sidecar accepts new approvals (Decided.RetryAfter); its
// run waits instead of failing. Only when the proposal would expire first
// does it fail.
//
// g is the grant the token is (nil for an approval). A deny about the
// grant itself (grantRefused) spends it for every run holding it, and the
// proposal goes back to pending for an operator, unless it would expire
// first.
func (s *Service) dispatch(ctx context.Context, p store.Proposal, token string, g *heldGrant) Decided {
	ctx, cancel := context.WithTimeout(ctx, s.opts.DispatchTimeout+10*time.Second) // the records' share
	defer cancel()
	spec := s.opts.Registry[p.Tool]
	start := s.now()
	call := store.ToolCall{
		ID: newID("call"), RunID: p.RunID, Agent: p.Agent, Tool: p.Tool, Args: s.auditArgs(p.Tool, p.Args),
		ArgsSHA256: p.ArgsSHA256, ProposalID: p.ID, Status: store.CallRunning, CreatedAt: start, UpdatedAt: start,
	}
	if err := s.opts.Records.CreateToolCall(ctx, call); err != nil {
		s.log.Error("store tool call", zap.String(fieldProposalID, p.ID), zap.Error(err))
	}
	t0 := time.Now()
	cctx, ccancel := context.WithTimeout(ctx, s.opts.DispatchTimeout)
	o := s.disp.call(cctx, spec, p.Args, token)
	ccancel()
	took := time.Since(t0)
	call.Status, call.HTTPStatus, call.DecisionID, call.Result, call.Error = o.status, o.httpStatus, o.decisionID, o.result, o.err
	call.DurationUS, call.UpdatedAt = took.Microseconds(), s.now()
	if err := s.opts.Records.UpdateToolCall(ctx, call); err != nil {
		s.log.Error("store tool call result", zap.String(fieldProposalID, p.ID), zap.Error(err))
	}
	final, reason := store.ProposalExecuted, o.err
	var reapprove time.Time // when a state_reset proposal may be approved again
	switch {
	case o.status == store.CallSucceeded:
	case o.status == store.CallDenied && o.code == deny.StateReset:
		if g != nil {
			s.spendGrant(g)
		}
		wait := s.opts.ClockSkew
		if o.hasRetryAfter {
			wait = o.retryAfter
		}
		reapprove = ceilSecond(call.UpdatedAt.Add(wait)) // token times are whole seconds
		if p.ExpiresAt.IsZero() || reapprove.Before(p.ExpiresAt) {
			final, reason = store.ProposalPending, fmt.Sprintf("%s; the tool did not run: approve again with an approval issued at or after %s",
				o.err, reapprove.UTC().Format(time.RFC3339))
			s.mu.Lock() // before the proposal is pending: no approval may slip in unchecked
			s.reapprove[p.ID] = reapprove
			s.mu.Unlock()
		} else {
			final, reapprove = store.ProposalFailed, time.Time{}
		}
	case g != nil && o.status == store.CallDenied && grantRefused(o.code):
		s.spendGrant(g)
		final = store.ProposalFailed
		if p.ExpiresAt.IsZero() || s.now().Before(p.ExpiresAt) {
			final, reason = store.ProposalPending, fmt.Sprintf("%s; the tool did not run: the sidecar refused the run's grant %s (%s), so the call waits for an operator's approval",
				o.err, g.claims.ID, o.code)
		}
	default:
		final = store.ProposalFailed
	}
	updated, err := s.opts.Records.UpdateProposal(ctx, p.ID, store.ProposalApproved, store.ProposalUpdate{Status: final, Reason: reason, UpdatedAt: call.UpdatedAt})
	if err != nil {
		if !reapprove.IsZero() {
			s.forgetReapprove(p.ID)
			reapprove = time.Time{}
		}
		s.log.Error("store proposal result", zap.String(fieldProposalID, p.ID), zap.Error(err))
	} else {
		p = updated
	}
	if m := s.opts.Metrics; m != nil {
		m.ToolExecutions.WithLabelValues(p.Tool, o.status).Inc()
		m.ToolDuration.Observe(took.Seconds())
		if o.status != store.CallSucceeded {
			m.ToolErrors.WithLabelValues(p.Tool).Inc()
		}
	}
	runCost := 0.0
	if run, err := s.opts.Records.Run(ctx, p.RunID); err == nil {
		runCost = run.Usage.CostUSD
	}
	details := map[string]any{"tool_call_id": call.ID, "error": o.err, "run_cost_usd": runCost}
	if p.Status == store.ProposalPending {
		details["proposal_status"] = p.Status
	}
	if !reapprove.IsZero() {
		details["approve_again_after"] = reapprove.UTC().Format(time.RFC3339)
	}
	detail, _ := json.Marshal(details)
	s.audit(store.Event{
		Kind: KindResult, Time: call.UpdatedAt, DecisionID: o.decisionID, Principal: p.Agent, RunID: p.RunID,
		ProposalID: p.ID, Tool: p.Tool, ArgsSHA256: p.ArgsSHA256, Decision: o.status, Reason: cmp.Or(o.code, "ok"),
		Status: o.httpStatus, LatencyMicros: call.DurationUS, Detail: string(detail),
	})
	s.log.Info("tool call", zap.String(fieldRunID, p.RunID), zap.String(fieldProposalID, p.ID), zap.String(fieldTool, p.Tool),
		zap.String("status", o.status), zap.Int("http_status", o.httpStatus), zap.String(fieldDecisionID, o.decisionID),
		zap.Duration("took", took), zap.String("error", o.err))
	d := Decided{Proposal: p, ToolCall: &call}
	if !reapprove.IsZero() {
		d.RetryAfter = int((max(reapprove.Sub(s.now()), 0) + time.Second - 1) / time.Second)
		s.log.Warn("approval refused with state_reset: the proposal is pending again and needs a new approval",
			zap.String(fieldRunID, p.RunID), zap.String(fieldProposalID, p.ID), zap.Time("approve_again_after", reapprove))
	}
	return d
}

// forgetReapprove drops what a state_reset deny left for proposal id.
func (s *Service) forgetReapprove(id string) {
	s.mu.Lock()
	delete(s.reapprove, id)
	s.mu.Unlock()
}

// ceilSecond rounds t up to a whole second.
func ceilSecond(t time.Time) time.Time {
	if r := t.Truncate(time.Second); r.Before(t) {
		return r.Add(time.Second)
	}
	return t
}

// Reject rejects a pending proposal.
func (s *Service) Reject(ctx context.Context, id, reason string) (Decided, error) {
	now := s.now()
	p, err := s.opts.Records.UpdateProposal(ctx, id, store.ProposalPending, store.ProposalUpdate{
		Status: store.ProposalRejected, Reason: reason, DecidedAt: now, UpdatedAt: now,
	})
	s.forgetReapprove(id)
	if err != nil {
		if errors.Is(err, store.ErrStatus) {
			cur, _ := s.opts.Records.Proposal(ctx, id)
			return Decided{Proposal: cur}, fmt.Errorf("%w: it is %s", errNotPending, cur.Status)
		}
		return Decided{}, err
	}
	s.audit(store.Event{
		Kind: KindRejection, Time: now, Principal: p.Agent, RunID: p.RunID, ProposalID: p.ID, Tool: p.Tool,
		ArgsSHA256: p.ArgsSHA256, Decision: store.ProposalRejected, Reason: "rejected", Detail: clip(reason, 4096),
	})
	s.log.Info("proposal rejected", zap.String(fieldRunID, p.RunID), zap.String(fieldProposalID, p.ID))
	s.goAdvance(p.RunID)
	return Decided{Proposal: p}, nil
}

// checkToken refuses a token that cannot admit exactly this proposal:
// hard checks 1–7 of DESIGN §4 (the Verifier), then the orchestrator's
// own: an approval, not a grant; check 8 (its tool and args_sha256 are the
// proposal's); and it names this proposal, its agent and (when it names
// one) its run.
func (s *Service) checkToken(p store.Proposal, token string) (*approval.Claims, error) {
	claims, err := s.opts.Verifier.Verify(token)
	if err != nil {
		return nil, tokenError(err)
	}
	if claims.Kind != approval.KindApproval {
		return nil, &TokenError{deny.TokenInvalid, fmt.Sprintf("a proposal takes an approval token, not a %s", claims.Kind)}
	}
	if err := claims.Bind(p.Tool, p.ArgsSHA256); err != nil {
		return nil, tokenError(err)
	}
	switch {
	case claims.Subject != p.Agent:
		return nil, &TokenError{"subject_mismatch", fmt.Sprintf("the token is for agent %q, the proposal is %q's", claims.Subject, p.Agent)}
	case claims.ProposalID != p.ID:
		// An approval names its proposal (m1 approve sets m1.proposal_id),
		// so that one token cannot approve two identical proposals.
		return nil, &TokenError{"proposal_mismatch", fmt.Sprintf("the token names proposal %q, not this one", claims.ProposalID)}
	case claims.RunID != "" && claims.RunID != p.RunID:
		return nil, &TokenError{"run_mismatch", fmt.Sprintf("the token names run %q", claims.RunID)}
	}
	return claims, nil
}

// tokenError is an error of the approval package as a *TokenError.
func tokenError(err error) *TokenError {
	if ae, ok := errors.AsType[*approval.Error](err); ok {
		return &TokenError{Code: ae.Code, Reason: ae.Reason}
	}
	return &TokenError{Code: deny.TokenInvalid, Reason: err.Error()}
}

// auditArgs returns args for records unless the registry marks the tool
// sensitive (or does not know it).
func (s *Service) auditArgs(tool string, args json.RawMessage) json.RawMessage {
	if spec, ok := s.opts.Registry[tool]; ok && !spec.Sensitive {
		return args
	}
	return nil
}

func (s *Service) audit(e store.Event) {
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	s.opts.Audit.Record(e)
}

func (s *Service) now() time.Time { return s.opts.Now().UTC() }

// Log field names.
const (
	fieldRunID      = "run_id"
	fieldProposalID = "proposal_id"
	fieldAgent      = "agent"
	fieldTool       = "tool"
	fieldDecisionID = "decision_id"
)

// newID returns prefix_ and 16 random bytes in hex.
func newID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
