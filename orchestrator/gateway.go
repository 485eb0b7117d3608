package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/gateway"
	"github.com/m1-agent/m1/internal/store"
)

// Audit event kinds of approvals held for sidecars (DESIGN §10), beside
// KindProposal, KindApproval and KindRejection.
const (
	KindHeld  = "held"  // an approval of a sidecar's proposal is held for the sidecar to claim
	KindClaim = "claim" // a sidecar claimed a held approval
)

// GatewayLimits bound the proposals sidecars file per principal, so that a
// looping agent cannot flood the operators (DESIGN §10). Start from
// DefaultGatewayLimits.
type GatewayLimits struct {
	// MaxPending is how many of a principal's sidecar proposals may wait
	// for an operator at once (counted in the shared store); default 10.
	MaxPending int
	// PerMinute is how many new proposals a principal may file per minute
	// (counted by each orchestrator process); default 20.
	PerMinute int
	// RetryAfter is the wait a pending call's client is told; default 5s.
	RetryAfter time.Duration
}

// DefaultGatewayLimits returns the defaults of GatewayLimits.
func DefaultGatewayLimits() GatewayLimits {
	return GatewayLimits{MaxPending: 10, PerMinute: 20, RetryAfter: 5 * time.Second}
}

// validate names the first field that is not positive.
func (l GatewayLimits) validate() error {
	switch {
	case l.MaxPending < 1:
		return errors.New("GatewayLimits.MaxPending must be at least 1")
	case l.PerMinute < 1:
		return errors.New("GatewayLimits.PerMinute must be at least 1")
	case l.RetryAfter <= 0:
		return errors.New("GatewayLimits.RetryAfter must be positive")
	}
	return nil
}

// maxFileBytes bounds a filing: the call's arguments (a sidecar's
// M1_MAX_BODY_BYTES, 1 MiB by default) and the rest.
const maxFileBytes = maxRequestBytes + 64<<10

// filings counts each principal's new proposals over the last minute.
type filings struct {
	mu  sync.Mutex
	at  map[string][]time.Time
	gcd time.Time
}

// allow records a filing of principal at now unless perMinute were
// exceeded; it returns how long until one is allowed.
func (f *filings) allow(principal string, now time.Time, perMinute int) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.at == nil {
		f.at = map[string][]time.Time{}
	}
	cutoff := now.Add(-time.Minute)
	if now.Sub(f.gcd) > time.Minute { // forget principals that went quiet
		for p, ts := range f.at {
			if len(ts) == 0 || !ts[len(ts)-1].After(cutoff) {
				delete(f.at, p)
			}
		}
		f.gcd = now
	}
	ts := f.at[principal]
	i := 0
	for i < len(ts) && !ts[i].After(cutoff) {
		i++
	}
	ts = ts[i:]
	if len(ts) >= perMinute {
		f.at[principal] = ts
		return false, ts[0].Sub(cutoff)
	}
	f.at[principal] = append(ts, now)
	return true, 0
}

// errLimited is a filing refused for the principal's limits.
type errLimited struct {
	retryAfter time.Duration
	reason     string
}

func (e *errLimited) Error() string { return e.reason }

// File files a sidecar's proposal for a call (idempotent while pending)
// and answers it pending. A principal over its limits gets an
// *errLimited; a new proposal is audited.
func (s *Service) File(ctx context.Context, r gateway.FileRequest) (gateway.Answer, error) {
	// Concurrent filings of one principal must not all see room under
	// MaxPending: the count and the insert below are one step.
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	now := s.now()
	lim := s.opts.GatewayLimits
	pending, err := s.opts.Records.Proposals(ctx, store.ProposalFilter{Origin: store.OriginSidecar, Agent: r.Principal, Status: store.ProposalPending})
	if err != nil {
		return gateway.Answer{}, err
	}
	for _, p := range pending {
		if p.Tool == r.Tool && p.ArgsSHA256 == r.ArgsSHA256 {
			return s.pendingAnswer(p), nil // filed already: no new proposal, nothing counted
		}
	}
	if len(pending) >= lim.MaxPending {
		return gateway.Answer{}, &errLimited{lim.RetryAfter, fmt.Sprintf("%d proposals of this principal wait for an operator already (the limit)", len(pending))}
	}
	if ok, wait := s.filings.allow(r.Principal, now, lim.PerMinute); !ok {
		return gateway.Answer{}, &errLimited{wait, fmt.Sprintf("this principal filed %d proposals in the last minute (the limit)", lim.PerMinute)}
	}
	p := store.Proposal{
		ID: newID("prop"), Agent: r.Principal, Tool: r.Tool, Args: r.Args, ArgsSHA256: r.ArgsSHA256,
		Risk: s.opts.Registry[r.Tool].Risk, Status: store.ProposalPending, CreatedAt: now, UpdatedAt: now,
		ExpiresAt: now.Add(s.opts.ProposalTTL), Origin: store.OriginSidecar, Sidecar: r.Sidecar, Pod: r.Pod,
		DecisionID: r.DecisionID,
	}
	p, created, err := s.opts.Records.FileProposal(ctx, p)
	if err != nil {
		return gateway.Answer{}, err
	}
	if created {
		s.audit(store.Event{
			Kind: KindProposal, Time: p.CreatedAt, DecisionID: p.DecisionID, Principal: p.Agent, ProposalID: p.ID,
			Tool: p.Tool, ArgsSHA256: p.ArgsSHA256, Args: s.auditArgs(p.Tool, p.Args), Decision: p.Status,
			Reason: "proposed", Detail: "filed by sidecar " + p.Sidecar + " (pod " + p.Pod + ") for a call without an approval",
		})
		s.log.Info("proposal filed by a sidecar", zap.String(fieldProposalID, p.ID), zap.String(fieldAgent, p.Agent),
			zap.String(fieldTool, p.Tool), zap.String("sidecar", p.Sidecar), zap.String("pod", p.Pod), zap.String(fieldDecisionID, p.DecisionID))
	}
	return s.pendingAnswer(p), nil
}

func (s *Service) pendingAnswer(p store.Proposal) gateway.Answer {
	return gateway.Answer{Status: gateway.StatusPending, ProposalID: p.ID, ExpiresAt: p.ExpiresAt,
		RetryAfter: int((s.opts.GatewayLimits.RetryAfter + time.Second - 1) / time.Second)}
}

// Claim hands out the call's held approval once, or says where the call
// stands: pending, rejected (for ProposalTTL after the rejection, so that
// a retry hears the operator's reason), or none (file a new proposal:
// never filed, expired, or its approval claimed already).
func (s *Service) Claim(ctx context.Context, r gateway.ClaimRequest) (gateway.Answer, error) {
	now := s.now()
	p, err := s.opts.Records.ClaimApproval(ctx, r.Principal, r.Tool, r.ArgsSHA256, r.Sidecar, now)
	switch {
	case err == nil:
		s.audit(store.Event{
			Kind: KindClaim, Time: now, Principal: p.Agent, ProposalID: p.ID, Tool: p.Tool, ArgsSHA256: p.ArgsSHA256,
			Decision: store.ProposalClaimed, Reason: "claimed", TokenJTI: p.ApprovalJTI, Detail: "by sidecar " + r.Sidecar,
		})
		s.log.Info("held approval claimed", zap.String(fieldProposalID, p.ID), zap.String("sidecar", r.Sidecar))
		return gateway.Answer{Status: gateway.StatusApproved, ProposalID: p.ID, Token: p.HeldToken}, nil
	case !errors.Is(err, store.ErrNotFound):
		return gateway.Answer{}, err
	}
	ps, err := s.opts.Records.Proposals(ctx, store.ProposalFilter{Origin: store.OriginSidecar, Agent: r.Principal, Tool: r.Tool, ArgsSHA256: r.ArgsSHA256})
	if err != nil {
		return gateway.Answer{}, err
	}
	if len(ps) == 0 {
		return gateway.Answer{Status: gateway.StatusNone}, nil
	}
	switch p := ps[len(ps)-1]; { // the newest proposal of the call decides
	case p.Status == store.ProposalPending && p.ExpiresAt.After(now):
		return s.pendingAnswer(p), nil
	case p.Status == store.ProposalRejected && p.DecidedAt.Add(s.opts.ProposalTTL).After(now):
		return gateway.Answer{Status: gateway.StatusRejected, ProposalID: p.ID, Reason: clip(p.Reason, 4000)}, nil
	}
	return gateway.Answer{Status: gateway.StatusNone}, nil
}

// hold keeps an approved sidecar proposal's token for the sidecar to
// claim, until the token expires; nothing is dispatched.
func (s *Service) hold(ctx context.Context, p store.Proposal, token, approver, jti string, exp time.Time) (Decided, error) {
	now := s.now()
	p, err := s.opts.Records.UpdateProposal(ctx, p.ID, store.ProposalPending, store.ProposalUpdate{
		Status: store.ProposalApproved, Approver: approver, ApprovalJTI: jti, DecidedAt: now, UpdatedAt: now,
		HeldToken: token, ExpiresAt: exp,
	})
	if err != nil {
		if errors.Is(err, store.ErrStatus) {
			cur, _ := s.opts.Records.Proposal(ctx, p.ID)
			return Decided{Proposal: cur}, fmt.Errorf("%w: it is %s", errNotPending, cur.Status)
		}
		return Decided{}, err
	}
	s.audit(store.Event{
		Kind: KindApproval, Time: now, Principal: p.Agent, ProposalID: p.ID, Tool: p.Tool, ArgsSHA256: p.ArgsSHA256,
		Decision: store.ProposalApproved, Reason: "approved", TokenJTI: jti,
		Detail: "approver=" + approver + "; held for sidecar " + p.Sidecar + " until " + exp.UTC().Format(time.RFC3339),
	})
	s.log.Info("proposal approved; the approval is held for the sidecar", zap.String(fieldProposalID, p.ID),
		zap.String("approver", approver), zap.Time("until", exp))
	return Decided{Proposal: p}, nil
}

// handleFile serves POST /v1/proposals (a sidecar's filing).
func (s *Service) handleFile(w http.ResponseWriter, r *http.Request) {
	var req gateway.FileRequest
	if !decodeN(w, r, &req, maxFileBytes) {
		return
	}
	if err := req.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	a, err := s.File(r.Context(), req)
	var le *errLimited
	switch {
	case errors.As(err, &le):
		secs := max(int((le.retryAfter+time.Second-1)/time.Second), 1)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"error": "rate_limited", "reason": le.reason, "retry_after": secs})
	case err != nil:
		s.storeError(w, err)
	default:
		writeJSON(w, http.StatusOK, a)
	}
}

// handleClaim serves POST /v1/claims.
func (s *Service) handleClaim(w http.ResponseWriter, r *http.Request) {
	var req gateway.ClaimRequest
	if !decode(w, r, &req) {
		return
	}
	if err := req.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	a, err := s.Claim(r.Context(), req)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// GatewayHandler serves the sidecars' endpoints, POST /v1/proposals and
// POST /v1/claims (DESIGN §10). Mount it behind the sidecars' bearer
// token (M1_APPROVALS_TOKEN); Handler serves the same two routes behind
// the admin token.
func (s *Service) GatewayHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+gateway.PathProposals, s.handleFile)
	mux.HandleFunc("POST "+gateway.PathClaims, s.handleClaim)
	return mux
}
