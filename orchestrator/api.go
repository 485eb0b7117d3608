package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// The HTTP API's request and response bodies (see docs/ORCHESTRATOR.md).

// RunRequest is the body of POST /v1/runs.
type RunRequest struct {
	Goal  string `json:"goal"`
	Agent string `json:"agent"`
	// BudgetUSD caps the run's LLM cost; 0 takes the orchestrator's
	// default budget.
	BudgetUSD float64 `json:"budget_usd,omitempty"`
	// Grants are grant tokens (m1 grant) for the run's agent: a proposal
	// of the run that one of them covers is approved with it and
	// dispatched at once, without an operator (see docs/ORCHESTRATOR.md).
	Grants []string `json:"grants,omitempty"`
}

// RunDetail is a run with its proposals and tool calls: the answer to
// POST /v1/runs and GET /v1/runs/{id}.
type RunDetail struct {
	store.Run
	Proposals []store.Proposal `json:"proposals"`
	ToolCalls []store.ToolCall `json:"tool_calls"`
}

// ApprovalRequest is the body of POST /v1/proposals/{id}/approval.
type ApprovalRequest struct {
	Token string `json:"token"`
}

// RejectionRequest is the body of POST /v1/proposals/{id}/rejection.
type RejectionRequest struct {
	Reason string `json:"reason"`
}

// Decided is the answer to an approval or a rejection: the proposal as it
// stands and, after an approval, the tool call it dispatched.
//
// After an approval the sidecar refused with state_reset (issued before
// its shared state was reset, DESIGN §7), the tool did not run and the
// proposal is pending again: it needs a new approval, issued RetryAfter
// seconds from now or later (an earlier one would be refused alike).
type Decided struct {
	Proposal   store.Proposal  `json:"proposal"`
	ToolCall   *store.ToolCall `json:"tool_call,omitempty"`
	RetryAfter int             `json:"retry_after,omitempty"`
}

// NeedsNewApproval reports whether d answers an approval that the sidecar
// refused with state_reset, leaving the proposal pending for a new one.
func (d Decided) NeedsNewApproval() bool {
	return d.ToolCall != nil && d.ToolCall.Status == store.CallDenied && d.Proposal.Status == store.ProposalPending
}

// Costs is the answer to GET /v1/costs.
type Costs struct {
	Since    time.Time       `json:"since"`
	TotalUSD float64         `json:"total_usd"`
	Rows     []store.CostRow `json:"costs"`
}

// APIError is an error answer: {"error": code, "reason": text}.
type APIError struct {
	Status int    `json:"-"`
	Code   string `json:"error"`
	Reason string `json:"reason"`
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Reason)
}

// Client calls an orchestrator's HTTP API. The zero value is not usable:
// set BaseURL. It is safe for concurrent use.
type Client struct {
	BaseURL string       // e.g. http://127.0.0.1:9193
	Token   string       // sent as Authorization: Bearer when set
	HTTP    *http.Client // nil: http.DefaultClient
}

// CreateRun starts a run.
func (c *Client) CreateRun(ctx context.Context, r RunRequest) (RunDetail, error) {
	var out RunDetail
	return out, c.do(ctx, http.MethodPost, "/v1/runs", r, &out)
}

// Run returns a run with its proposals and tool calls.
func (c *Client) Run(ctx context.Context, id string) (RunDetail, error) {
	var out RunDetail
	return out, c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id), nil, &out)
}

// Proposals lists proposals with the given status ("" for all).
func (c *Client) Proposals(ctx context.Context, status string) ([]store.Proposal, error) {
	var out struct {
		Proposals []store.Proposal `json:"proposals"`
	}
	path := "/v1/proposals"
	if status != "" {
		path += "?status=" + url.QueryEscape(status)
	}
	return out.Proposals, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Proposal returns one proposal.
func (c *Client) Proposal(ctx context.Context, id string) (store.Proposal, error) {
	var out store.Proposal
	return out, c.do(ctx, http.MethodGet, "/v1/proposals/"+url.PathEscape(id), nil, &out)
}

// Approve posts an approval token for a proposal; the orchestrator checks
// it against the proposal and dispatches the call.
func (c *Client) Approve(ctx context.Context, id, token string) (Decided, error) {
	var out Decided
	return out, c.do(ctx, http.MethodPost, "/v1/proposals/"+url.PathEscape(id)+"/approval", ApprovalRequest{Token: token}, &out)
}

// Reject rejects a proposal with a reason.
func (c *Client) Reject(ctx context.Context, id, reason string) (Decided, error) {
	var out Decided
	return out, c.do(ctx, http.MethodPost, "/v1/proposals/"+url.PathEscape(id)+"/rejection", RejectionRequest{Reason: reason}, &out)
}

// Costs returns LLM cost by agent and model since the given time (zero:
// everything).
func (c *Client) Costs(ctx context.Context, since time.Time) (Costs, error) {
	var out Costs
	path := "/v1/costs"
	if !since.IsZero() {
		path += "?since=" + url.QueryEscape(since.UTC().Format(time.RFC3339))
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// do sends one request; an answer outside 2xx becomes an *APIError.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Code == "" {
			e.Code, e.Reason = http.StatusText(resp.StatusCode), strings.TrimSpace(string(data))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}
