package orchestrator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/store"
)

// A run may carry grants (RunRequest.Grants): pre-authorizations an
// operator signed with m1 grant for the run's agent. A proposal of the run
// that a grant covers (its tool matches one of m1.tools, the grant has
// not expired and this process has dispatched fewer than m1.max_uses
// calls under it) is approved with the grant and dispatched at once; the
// sidecar checks the grant again and counts its uses, as it does for any
// grant. A proposal no grant covers waits for an operator, as always.
//
// Grants are held in memory only, never stored: after a restart the runs
// resume without them, and their proposals wait for an operator.

// GrantApprover prefixes the approver of a proposal a run's grant approved:
// "grant:" and the grant's act.sub (else its iss). The dashboards' approval
// analytics count those apart from an operator's approvals.
const GrantApprover = "grant:"

// heldGrant is a grant the orchestrator holds for one or more runs.
type heldGrant struct {
	token  string
	claims *approval.Claims
	used   int  // calls this process dispatched under it
	spent  bool // the sidecar refused it: it is not used again
}

// checkGrants verifies a run's grants before the run is created: hard
// checks 1–7 of DESIGN §4 (the Verifier), then that each is a grant, for
// the run's agent, naming no run (it does not exist yet) nor proposal. A grant
// that fails is a *TokenError naming it by its place in the list.
func (s *Service) checkGrants(agent string, tokens []string) ([]heldGrant, error) {
	out := make([]heldGrant, 0, len(tokens))
	for i, token := range tokens {
		token = strings.TrimSpace(token) // sent on as a header value
		c, err := s.opts.Verifier.Verify(token)
		if err != nil {
			te := tokenError(err)
			return nil, &TokenError{te.Code, fmt.Sprintf("grants[%d]: %s", i, te.Reason)}
		}
		switch {
		case c.Kind != approval.KindGrant:
			return nil, &TokenError{deny.TokenInvalid, fmt.Sprintf("grants[%d] is an approval: a run takes grants (m1 grant); an approval is posted to its proposal", i)}
		case c.Subject != agent:
			return nil, &TokenError{"subject_mismatch", fmt.Sprintf("grants[%d] is for agent %q, the run is %q's", i, c.Subject, agent)}
		case c.RunID != "":
			return nil, &TokenError{"run_mismatch", fmt.Sprintf("grants[%d] names run %q: a run's grants cannot name it, since it does not exist yet", i, c.RunID)}
		case c.ProposalID != "":
			return nil, &TokenError{"proposal_mismatch", fmt.Sprintf("grants[%d] names proposal %q: a grant given with a run covers its calls by tool", i, c.ProposalID)}
		}
		out = append(out, heldGrant{token: token, claims: c})
	}
	return out, nil
}

// holdGrants gives the run its grants. A grant given with several runs is
// held once, its uses counted together; what is known of it (uses,
// spent) is kept until it expires, past the runs that held it. A grant is
// known by its payload's hash, not its jti alone: a run uses exactly the
// tokens it was given and checkGrants verified.
func (s *Service) holdGrants(runID string, gs []heldGrant) {
	if len(gs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for k, g := range s.grants {
		if !now.Before(g.claims.Expiry) {
			delete(s.grants, k)
		}
	}
	for _, g := range gs {
		h := s.grants[g.claims.PayloadSHA256]
		if h == nil {
			h = &g
			s.grants[g.claims.PayloadSHA256] = h
		}
		if !slices.Contains(s.runGrants[runID], h) {
			s.runGrants[runID] = append(s.runGrants[runID], h)
		}
	}
}

// dropGrants forgets which grants a run that ended held.
func (s *Service) dropGrants(runID string) {
	s.mu.Lock()
	delete(s.runGrants, runID)
	s.mu.Unlock()
}

// takeGrant reserves one use of a grant of the run that covers tool, or
// returns nil when none does.
func (s *Service) takeGrant(runID, tool string) *heldGrant {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, g := range s.runGrants[runID] {
		if !g.spent && g.used < g.claims.MaxUses && now.Before(g.claims.Expiry) && g.claims.MatchesTool(tool) {
			g.used++
			return g
		}
	}
	return nil
}

// releaseGrant gives back a use takeGrant reserved and did not dispatch.
func (s *Service) releaseGrant(g *heldGrant) {
	s.mu.Lock()
	g.used--
	s.mu.Unlock()
}

// spendGrant stops using a grant the sidecar refused.
func (s *Service) spendGrant(g *heldGrant) {
	s.mu.Lock()
	g.spent = true
	s.mu.Unlock()
}

// grantRefused reports whether a sidecar deny with code is about the
// grant itself (DESIGN §4 checks 1–9 and 11; dispatch handles state_reset
// apart, as for any token): the grant will not pass again, but an
// operator's approval of the call may.
func grantRefused(code string) bool {
	switch code {
	case deny.TokenInvalid, deny.TokenExpired, deny.TokenNotYetValid, deny.TokenTTLExceeded, deny.AudienceMismatch,
		deny.IssuerUntrusted, deny.ToolMismatch, deny.TokenRevoked, deny.GrantExhausted:
		return true
	}
	return false
}

// grant approves the pending proposals of a step that a grant of their
// run covers, and dispatches each in the background. It is called once
// the step's proposals are stored and audited.
func (s *Service) grant(ctx context.Context, ps []store.Proposal) {
	for _, p := range ps {
		if p.Status != store.ProposalPending {
			continue
		}
		g := s.takeGrant(p.RunID, p.Tool)
		if g == nil {
			continue
		}
		if !s.track() { // stopping: the proposal waits, and its run resumes at the next start
			s.releaseGrant(g)
			return
		}
		approver := GrantApprover + cmp.Or(g.claims.Actor, g.claims.Issuer)
		up, err := s.approve(ctx, p, approver, g.claims.ID, "granted")
		if err != nil {
			s.wg.Done()
			s.releaseGrant(g)
			if !errors.Is(err, store.ErrStatus) && ctx.Err() == nil { // else an operator decided it first, or stopping
				s.log.Error("approve with a grant", zap.String(fieldProposalID, p.ID), zap.Error(err))
			}
			continue
		}
		p = up
		go func() {
			defer s.wg.Done()
			d := s.dispatch(context.WithoutCancel(s.bg), p, g.token, g)
			s.goAdvance(d.Proposal.RunID)
		}()
	}
}
