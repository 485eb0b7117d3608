package authz

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/gateway"
	"github.com/m1-agent/m1/toolcall"
)

// Approvals is the orchestrator as a sidecar that holds approvals at the
// gateway sees it (DESIGN §10): it files a proposal for a call that came
// without an approval, and claims the approval an operator signed for it.
// A *gateway.Client implements it. Implementations must return within the
// context's deadline; any error leaves the call denied token_missing.
type Approvals interface {
	Claim(ctx context.Context, r gateway.ClaimRequest) (gateway.Answer, error)
	File(ctx context.Context, r gateway.FileRequest) (gateway.Answer, error)
}

var _ Approvals = (*gateway.Client)(nil)

// GatewayOptions turn on approvals held at the gateway (DESIGN §10).
type GatewayOptions struct {
	// Approvals is the orchestrator; nil turns the feature off.
	Approvals Approvals
	// PublicURL is the base of the URL a client is shown for a pending
	// call: PublicURL + "/#/proposals/" + the proposal id.
	PublicURL string
	// Timeout bounds all the calls to the orchestrator of one check,
	// well inside Envoy's ext_authz timeout; past it, the call is denied
	// token_missing as if no approvals were held.
	Timeout time.Duration
}

// The JSON-RPC error of a pending call on the MCP path: MCP's
// URL-elicitation-required error (2025-11-25).
const (
	codeURLElicitationRequired = -32042
	messageApprovalRequired    = "approval required"
	defaultPendingRetryAfter   = 5 * time.Second
)

// headerPrincipal returns the principal the configured principal header
// names, when Options.PrincipalHeader is set and the request carries a
// valid one. Without the option, no header is ever read as a principal:
// a client could send any.
func (s *Service) headerPrincipal(headers toolcall.Headers) (string, bool) {
	if s.opts.PrincipalHeader == "" {
		return "", false
	}
	p, ok := headers.Lookup(s.opts.PrincipalHeader)
	if !ok || !gateway.ValidPrincipal(p) {
		return "", false
	}
	return p, true
}

// holdsApprovals reports whether v is a call the gateway holds approvals
// for: a tool call with no token that the policy denied token_missing,
// from a trusted principal of the call's own (the downstream client's mTLS
// identity, source.principal, or the configured principal header; never a
// token's sub, since there is no token). The gRPC peer's identity is not
// one: it names the Envoy that asked, and every client of that Envoy would
// share (and could claim) one another's held approvals.
func (s *Service) holdsApprovals(v *verdict) bool {
	return s.opts.Gateway.Approvals != nil && !v.allowed && v.claims == nil && v.tokenResult == "" &&
		v.call.Kind == toolcall.KindToolCall && v.code == deny.PolicyDenied && v.reason == reasonTokenMissing &&
		v.principal != "" && !v.peerPrincipal
}

// reasonTokenMissing is the default policy's reason for a tool that
// requires an approval called without one.
const reasonTokenMissing = "token_missing"

// holdAtGateway claims the call's held approval, or tells where the call stands:
// a claimed approval goes through every hard check as if the client had
// sent it, then the policy again (and, allowed, check 11 in decide); a
// pending call is denied approval_pending, a rejected one
// approval_rejected; a call with no proposal files one. Whatever goes
// wrong with the orchestrator (down, slow, garbage) leaves v as the
// policy denied it: token_missing.
func (s *Service) holdAtGateway(ctx context.Context, req *authv3.CheckRequest, headers toolcall.Headers, v *verdict) {
	g := s.opts.Gateway
	ctx, cancel := context.WithTimeout(ctx, g.Timeout)
	defer cancel()
	principal := v.principal
	log := func(what string, err error) {
		s.opts.Logger.Warn("approvals at the gateway: "+what+"; denied token_missing", zap.String(fieldDecisionID, v.id),
			zap.String(fieldTool, v.call.Tool), zap.String(fieldPrincipal, principal), zap.Error(err))
	}
	a, err := g.Approvals.Claim(ctx, gateway.ClaimRequest{Principal: principal, Tool: v.call.Tool, ArgsSHA256: v.call.ArgsSHA256})
	if err != nil {
		log("claim failed", err)
		return
	}
	if a.Status == gateway.StatusNone {
		a, err = g.Approvals.File(ctx, gateway.FileRequest{Principal: principal, Tool: v.call.Tool, Args: json.RawMessage(v.call.Args),
			ArgsSHA256: v.call.ArgsSHA256, DecisionID: v.id})
		var le *gateway.LimitError
		switch {
		case errors.As(err, &le):
			s.gatewayRefuse(v, deny.RateLimited, "too many proposals for this principal wait for an operator: "+le.Reason)
			v.retryAfter = le.RetryAfter
			return
		case err != nil:
			log("filing the proposal failed", err)
			return
		}
	}
	switch a.Status {
	case gateway.StatusApproved:
		s.claimed(ctx, req, headers, v, a)
	case gateway.StatusPending:
		v.proposalID = a.ProposalID
		s.gatewayRefuse(v, deny.ApprovalPending, "the call waits for an operator's approval (proposal "+a.ProposalID+
			"): m1 approve "+a.ProposalID+", then retry the same call")
		v.retryAfter = defaultPendingRetryAfter
		if a.RetryAfter > 0 {
			v.retryAfter = time.Duration(a.RetryAfter) * time.Second
		}
	case gateway.StatusRejected:
		v.proposalID = a.ProposalID
		reason := "an operator rejected this call (proposal " + a.ProposalID + ")"
		if a.Reason != "" {
			reason += ": " + a.Reason
		}
		s.gatewayRefuse(v, deny.ApprovalRejected, reason)
	default: // none after a filing: Client.File refuses it; any other Approvals may not
		log("unexpected answer "+a.Status, nil)
	}
}

// claimed runs a held approval through hard checks 1–9 as if the client
// had sent it, requires it to be the trusted principal's, and evaluates
// the policy with it. A token that fails is denied with its check's code.
func (s *Service) claimed(ctx context.Context, req *authv3.CheckRequest, headers toolcall.Headers, v *verdict, a gateway.Answer) {
	principal := v.principal
	v.proposalID = a.ProposalID
	v.policy, v.tier, v.evaluated = nil, "", false
	if !s.checkToken(ctx, a.Token, v) {
		return
	}
	if v.claims.Subject != principal {
		v.refuse(deny.TokenInvalid, "the held approval names another principal than the call's")
		v.tokenResult, v.principal = deny.TokenInvalid, principal
		return
	}
	s.evaluate(ctx, req, headers, v)
}

// gatewayRefuse denies v with code and reason in place of the policy's
// token_missing (whose body and headers no longer apply).
func (s *Service) gatewayRefuse(v *verdict, code, reason string) {
	v.policy = nil
	v.refuse(code, reason)
}

// elicitationURL is where a client shows a person the pending call.
func (s *Service) elicitationURL(id string) string {
	return strings.TrimRight(s.opts.Gateway.PublicURL, "/") + "/#/proposals/" + url.PathEscape(id)
}

// mcpPending returns the body of a pending call's deny on the MCP path: a
// JSON-RPC error answering the call's id (null without one), which MCP
// clients that support URL elicitation show with its URL (DESIGN §10). It
// is answered with HTTP status 200, as a JSON-RPC server answers.
func (s *Service) mcpPending(v *verdict) (string, bool) {
	if v.code != deny.ApprovalPending || !v.call.IsMCP || v.proposalID == "" {
		return "", false
	}
	id := json.RawMessage("null")
	if len(v.call.ID) > 0 {
		id = json.RawMessage(v.call.ID)
	}
	type elicitation struct {
		Mode          string `json:"mode"`
		ElicitationID string `json:"elicitationId"`
		URL           string `json:"url"`
		Message       string `json:"message"`
	}
	type rpcError struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Data    struct {
			Elicitations []elicitation `json:"elicitations"`
		} `json:"data"`
	}
	e := rpcError{Code: codeURLElicitationRequired, Message: messageApprovalRequired}
	e.Data.Elicitations = []elicitation{{
		Mode: "url", ElicitationID: v.proposalID, URL: s.elicitationURL(v.proposalID),
		Message: "M1 holds this call of " + v.call.Tool + " for an operator's approval (proposal " + v.proposalID +
			"; decision " + v.id + "). Once approved, retry the same call; it runs once. Retry after " +
			strconv.FormatInt(int64(v.retryAfter/time.Second), 10) + "s or later.",
	}}
	b, err := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   rpcError        `json:"error"`
	}{"2.0", id, e})
	if err != nil { // an id the parser accepted is valid JSON
		return "", false
	}
	return string(b), true
}
