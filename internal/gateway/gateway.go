// Package gateway is the protocol between a sidecar and m1-orchestrator
// for approvals held at the gateway (DESIGN §10): the requests a sidecar
// sends to file a proposal for an MCP client's call (POST /v1/proposals)
// and to claim the approval an operator signed for it (POST /v1/claims),
// the one answer both get, and the sidecar's Client, which bounds every
// call in time and size and refuses any answer it cannot read exactly.
//
// The orchestrator holds operator-signed tokens; it cannot mint them. The
// sidecar runs every hard check of DESIGN §4 on a claimed token as if the
// client had sent it, so nothing the orchestrator answers can allow a call
// that an operator did not approve.
package gateway

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/m1-agent/m1/toolcall"
)

// Paths of the orchestrator's gateway endpoints.
const (
	PathProposals = "/v1/proposals"
	PathClaims    = "/v1/claims"
)

// Statuses of an Answer.
const (
	// StatusApproved: the claim handed out the held approval, in Token.
	StatusApproved = "approved"
	// StatusPending: the call's proposal waits for an operator.
	StatusPending = "pending"
	// StatusRejected: an operator rejected the call's proposal; Reason
	// says why.
	StatusRejected = "rejected"
	// StatusNone: the call has no proposal that answers it (never filed,
	// expired, or its approval was claimed already): file one.
	StatusNone = "none"
)

// FileRequest is the body of POST /v1/proposals from a sidecar: a tool
// call it denied for want of an approval, to be shown to an operator.
type FileRequest struct {
	Principal  string          `json:"principal"` // the call's trusted principal: the approval's sub
	Tool       string          `json:"tool"`
	Args       json.RawMessage `json:"args"` // the call's arguments exactly as sent
	ArgsSHA256 string          `json:"args_sha256"`
	DecisionID string          `json:"decision_id"` // the deny that files it
	Sidecar    string          `json:"sidecar,omitempty"`
	Pod        string          `json:"pod,omitempty"`
}

// ClaimRequest is the body of POST /v1/claims: the call a sidecar holds,
// whose approval it asks for.
type ClaimRequest struct {
	Principal  string `json:"principal"`
	Tool       string `json:"tool"`
	ArgsSHA256 string `json:"args_sha256"`
	Sidecar    string `json:"sidecar,omitempty"`
}

// Answer is the orchestrator's answer to a filing or a claim.
type Answer struct {
	Status     string    `json:"status"`
	ProposalID string    `json:"proposal_id,omitempty"`
	Token      string    `json:"token,omitempty"`      // StatusApproved: the operator-signed approval
	Reason     string    `json:"reason,omitempty"`     // StatusRejected: the operator's reason
	ExpiresAt  time.Time `json:"expires_at,omitzero"`  // StatusPending: when the proposal expires
	RetryAfter int       `json:"retry_after,omitzero"` // StatusPending: seconds a client should wait before retrying
}

// Limits of what either side accepts.
const (
	maxPrincipal = 512  // a SPIFFE id or a JWT subject
	maxLabel     = 128  // decision id, sidecar, pod, proposal id
	maxReason    = 4096 // an operator's rejection reason
	maxToken     = 16 << 10
	maxRetry     = 3600
)

// ValidPrincipal reports whether p can be a principal of a held approval:
// 1 to 512 bytes of printable ASCII without spaces (SPIFFE ids, JWT
// subjects, e-mail addresses). An approval's sub carries it.
func ValidPrincipal(p string) bool { return printable(p, maxPrincipal) }

// printable reports whether s has 1 to n bytes, all printable ASCII other
// than space.
func printable(s string, n int) bool {
	if len(s) == 0 || len(s) > n {
		return false
	}
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// optional is printable, or empty.
func optional(s string, n int) bool { return s == "" || printable(s, n) }

// Validate checks a filing: a valid principal and tool, arguments the
// sidecar accepts whose hash is ArgsSHA256, and short printable labels.
func (r *FileRequest) Validate() error {
	if err := validCall(r.Principal, r.Tool, r.ArgsSHA256); err != nil {
		return err
	}
	sum, err := toolcall.ArgsSHA256(r.Tool, r.Args)
	if err != nil {
		return fmt.Errorf("args: %w", err)
	}
	if sum != r.ArgsSHA256 {
		return fmt.Errorf("args_sha256 %s is not the hash of args (%s)", r.ArgsSHA256, sum)
	}
	if !printable(r.DecisionID, maxLabel) || !optional(r.Sidecar, maxLabel) || !optional(r.Pod, maxLabel) {
		return fmt.Errorf("decision_id (required), sidecar and pod: up to %d bytes of printable ASCII without spaces", maxLabel)
	}
	return nil
}

// Validate checks a claim.
func (r *ClaimRequest) Validate() error {
	if err := validCall(r.Principal, r.Tool, r.ArgsSHA256); err != nil {
		return err
	}
	if !optional(r.Sidecar, maxLabel) {
		return fmt.Errorf("sidecar: up to %d bytes of printable ASCII without spaces", maxLabel)
	}
	return nil
}

func validCall(principal, tool, sum string) error {
	switch {
	case !ValidPrincipal(principal):
		return fmt.Errorf("principal: 1 to %d bytes of printable ASCII without spaces", maxPrincipal)
	case !toolcall.ValidName(tool):
		return fmt.Errorf("tool %q: want 1 to 128 of [A-Za-z0-9_.-]", tool)
	case !hexSHA256(sum):
		return fmt.Errorf("args_sha256: want 64 lower-case hex digits")
	}
	return nil
}

func hexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Validate checks an answer as the sidecar reads it: a known status with
// exactly the fields that status carries, each well-formed (a proposal id
// is 1 to 128 of [A-Za-z0-9_.-]: it goes into the URL a client shows). Anything else
// is garbage, and the sidecar treats the orchestrator as unreachable.
func (a *Answer) Validate() error {
	switch a.Status {
	case StatusApproved:
		if !toolcall.ValidName(a.ProposalID) || !printable(a.Token, maxToken) {
			return fmt.Errorf("answer %s: want a proposal_id and a token", a.Status)
		}
	case StatusPending:
		if !toolcall.ValidName(a.ProposalID) || a.Token != "" || a.RetryAfter < 0 || a.RetryAfter > maxRetry {
			return fmt.Errorf("answer %s: want a proposal_id, no token, retry_after 0 to %d", a.Status, maxRetry)
		}
	case StatusRejected:
		if !toolcall.ValidName(a.ProposalID) || a.Token != "" || len(a.Reason) > maxReason || !utf8.ValidString(a.Reason) {
			return fmt.Errorf("answer %s: want a proposal_id, no token, a UTF-8 reason of at most %d bytes", a.Status, maxReason)
		}
	case StatusNone:
		if a.Token != "" || a.ProposalID != "" {
			return fmt.Errorf("answer %s: want no proposal_id and no token", a.Status)
		}
	default:
		return fmt.Errorf("answer status %q: want approved, pending, rejected or none", a.Status)
	}
	return nil
}
