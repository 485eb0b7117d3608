package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrLimited is wrapped by a Client's error when the orchestrator refuses
// a filing for the principal's proposal limits (429): a *LimitError says
// how long to wait.
var ErrLimited = errors.New("gateway: too many proposals for this principal")

// LimitError is a filing refused for the principal's proposal limits.
type LimitError struct {
	RetryAfter time.Duration
	Reason     string
}

func (e *LimitError) Error() string { return "gateway: " + e.Reason }

func (e *LimitError) Unwrap() error { return ErrLimited }

// maxAnswerBytes bounds an answer body: an answer holds one token.
const maxAnswerBytes = 64 << 10

// ClientOptions configure a Client.
type ClientOptions struct {
	// BaseURL is the orchestrator's base URL (M1_APPROVALS_URL), http or
	// https, without query or fragment.
	BaseURL string
	// Token is the bearer token of the calls (M1_APPROVALS_TOKEN).
	Token string
	// Timeout bounds each call, connecting included; a context deadline
	// that comes first wins.
	Timeout time.Duration
	// Sidecar and Pod name this sidecar in its filings and claims, for
	// the operator.
	Sidecar, Pod string
	// Transport sends the requests; nil means a clone of
	// http.DefaultTransport. Redirects are never followed.
	Transport http.RoundTripper
}

// Client calls the orchestrator's gateway endpoints for a sidecar. Every
// call is bounded by Timeout, every answer by maxAnswerBytes, and an
// answer that is not exactly an Answer (status, JSON, fields) is an error:
// the sidecar then denies as if the orchestrator were down. It is safe for
// concurrent use.
type Client struct {
	base    string
	token   string
	timeout time.Duration
	sidecar string
	pod     string
	http    *http.Client
}

// NewClient checks o and returns a Client.
func NewClient(o ClientOptions) (*Client, error) {
	u, err := url.Parse(o.BaseURL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return nil, fmt.Errorf("gateway: base URL %q: want http://host[:port] or https://host[:port]", o.BaseURL)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return nil, fmt.Errorf("gateway: base URL %q: no query, fragment or user info", o.BaseURL)
	case o.Timeout <= 0:
		return nil, errors.New("gateway: Timeout must be positive")
	case !optional(o.Sidecar, maxLabel) || !optional(o.Pod, maxLabel):
		return nil, fmt.Errorf("gateway: Sidecar and Pod: up to %d bytes of printable ASCII without spaces", maxLabel)
	}
	tr := o.Transport
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	return &Client{
		base: strings.TrimRight(o.BaseURL, "/"), token: o.Token, timeout: o.Timeout, sidecar: o.Sidecar, pod: o.Pod,
		http: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}, nil
}

// Claim asks for the held approval of a call: StatusApproved with the
// token, or what stands in its way (pending, rejected, none).
func (c *Client) Claim(ctx context.Context, r ClaimRequest) (Answer, error) {
	r.Sidecar = c.sidecar
	return c.post(ctx, PathClaims, r)
}

// File files a proposal for a call (idempotent while it is pending) and
// returns it: StatusPending. A filing refused for the principal's limits
// is a *LimitError.
func (c *Client) File(ctx context.Context, r FileRequest) (Answer, error) {
	r.Sidecar, r.Pod = c.sidecar, c.pod
	a, err := c.post(ctx, PathProposals, r)
	if err == nil && a.Status != StatusPending {
		return Answer{}, fmt.Errorf("gateway: filing answered %s, want pending", a.Status)
	}
	return a, err
}

func (c *Client) post(ctx context.Context, path string, body any) (Answer, error) {
	// Not json.Marshal: it escapes <, > and & (six bytes each), so that a
	// call's arguments of HTML could outgrow the orchestrator's limit on a
	// filing though the sidecar took them.
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(body); err != nil {
		return Answer{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, &b)
	if err != nil {
		return Answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return Answer{}, fmt.Errorf("gateway: POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes+1))
	switch {
	case err != nil:
		return Answer{}, fmt.Errorf("gateway: POST %s: read answer: %w", path, err)
	case len(data) > maxAnswerBytes:
		return Answer{}, fmt.Errorf("gateway: POST %s: answer larger than %d bytes", path, maxAnswerBytes)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusCreated:
	case http.StatusTooManyRequests:
		return Answer{}, limitError(resp, data)
	default:
		return Answer{}, fmt.Errorf("gateway: POST %s: HTTP %d: %s", path, resp.StatusCode, clip(data, 200))
	}
	a, err := DecodeAnswer(data)
	if err != nil {
		return Answer{}, fmt.Errorf("gateway: POST %s: %w", path, err)
	}
	return a, nil
}

// DecodeAnswer reads an answer exactly: one JSON object of an Answer's
// fields and no others, nothing after it, valid for its status
// (Answer.Validate).
func DecodeAnswer(data []byte) (Answer, error) {
	var a Answer
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return Answer{}, fmt.Errorf("answer is not JSON of an Answer: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Answer{}, errors.New("data after the answer")
	}
	if err := a.Validate(); err != nil {
		return Answer{}, err
	}
	return a, nil
}

// limitError reads a 429: its retry-after (header, else the body's
// retry_after; at least a second) and reason.
func limitError(resp *http.Response, data []byte) error {
	var body struct {
		Reason     string `json:"reason"`
		RetryAfter int    `json:"retry_after"`
	}
	_ = json.Unmarshal(data, &body)
	secs := body.RetryAfter
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		secs = n
	}
	secs = min(max(secs, 1), maxRetry)
	reason := "too many proposals pending or filed for this principal"
	if body.Reason != "" && printableText(body.Reason) {
		reason = string(clip([]byte(body.Reason), 300))
	}
	return &LimitError{RetryAfter: time.Duration(secs) * time.Second, Reason: reason}
}

func printableText(s string) bool {
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

func clip(b []byte, n int) []byte {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		return append(b[:n:n], "…"...)
	}
	return b
}
