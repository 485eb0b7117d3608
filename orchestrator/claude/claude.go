// Package claude is an orchestrator.Planner backed by Claude, through the
// official Anthropic Go SDK (github.com/anthropics/anthropic-sdk-go).
//
// Each Next is one Messages API call. The request replays the run so far:
// the goal as the first user message, then for every earlier step an
// assistant message with the step's text and one tool_use block per
// proposed call, and a user message with one tool_result block per call (the
// tool's answer, or an is_error result saying the operator rejected the
// call, that it expired, or that it failed). The reply's tool_use blocks
// become the step's proposed calls; a reply without one ends the run. The
// system prompt and the conversation so far are marked for prompt caching,
// so each step pays full price only for what is new.
//
// Tools are offered with their description and risk, and their input schema
// ({"type":"object"} when the registry gives none). Claude's tool names
// cannot hold '.', M1's can: such a name is sent with '_' in its place (and
// a suffix if that collides) and mapped back in the reply.
//
// The SDK retries rate limits (429, honouring retry-after), overload (529)
// and server errors (5xx) up to Options.MaxRetries times; it does not retry
// other client errors (401, 400, …). The planner reads no environment
// variable: the caller passes the API key (ANTHROPIC_API_KEY in
// m1-orchestrator) in Options.
package claude

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	"github.com/anthropics/anthropic-sdk-go/option"

	"github.com/m1-agent/m1/orchestrator"
)

// Defaults of Options.
const (
	DefaultModel      = "claude-sonnet-4-6"
	DefaultMaxTokens  = 1024
	DefaultMaxRetries = 2
	DefaultTimeout    = 5 * time.Minute
)

// DefaultSystem is the default system prompt.
const DefaultSystem = `You are the planner of an AI agent whose actions are governed by M1.
You never run tools yourself. Every tool call you make is a proposal: a human operator reviews it and approves or rejects it, and only an approved call runs, exactly as you proposed it, once. The result (or the operator's rejection and reason) comes back to you as the tool result.

Work toward the goal in small, reviewable steps:
- Propose only the calls needed for the next step, each with arguments that are complete and exact.
- Before the calls, explain briefly and plainly why each one is needed: the operator reads this to decide.
- Prefer tools that read over tools that write or execute, and look before you change anything.
- If a call is rejected, respect the operator's reason: do not propose the same call again; adapt the plan or stop.
- When the goal is complete, or cannot be reached with the tools available, say so in a short summary and propose no tool call.`

// Options configure a Planner.
type Options struct {
	// APIKey is the Anthropic API key (required).
	APIKey string
	// BaseURL is the API's base URL; empty means the SDK's
	// (https://api.anthropic.com).
	BaseURL string
	// Model is the Claude model id; empty means DefaultModel.
	Model string
	// MaxTokens caps each reply; 0 means DefaultMaxTokens.
	MaxTokens int64
	// MaxRetries is how many times a call is retried after a rate limit,
	// an overload, a server error or a connection error; 0 means
	// DefaultMaxRetries, -1 means no retry.
	MaxRetries int
	// Timeout bounds each attempt (retries get their own); 0 means
	// DefaultTimeout. Raise it with MaxTokens: a long reply takes longer.
	Timeout time.Duration
	// System is the system prompt; empty means DefaultSystem.
	System string
	// HTTPClient makes the calls; nil means http.DefaultClient.
	HTTPClient *http.Client
}

// DefaultOptions returns the defaults; set APIKey before calling New.
func DefaultOptions() Options {
	return Options{
		Model:      DefaultModel,
		MaxTokens:  DefaultMaxTokens,
		MaxRetries: DefaultMaxRetries,
		Timeout:    DefaultTimeout,
		System:     DefaultSystem,
	}
}

// validate fills the zero fields from the defaults and fails on the first
// field that is wrong.
func (o *Options) validate() error {
	d := DefaultOptions()
	if o.APIKey == "" {
		return errors.New("claude: Options.APIKey is empty (set ANTHROPIC_API_KEY)")
	}
	if o.BaseURL != "" {
		u, err := url.Parse(o.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("claude: Options.BaseURL %q: want an http(s) URL", o.BaseURL)
		}
	}
	if o.Model == "" {
		o.Model = d.Model
	}
	switch {
	case o.MaxTokens < 0:
		return fmt.Errorf("claude: Options.MaxTokens %d: want ≥ 1 (0 for the default)", o.MaxTokens)
	case o.MaxTokens == 0:
		o.MaxTokens = d.MaxTokens
	}
	// The SDK refuses a non-streaming call that may take over 10 minutes;
	// say so now rather than on every run.
	if _, err := anthropic.CalculateNonStreamingTimeout(int(o.MaxTokens), o.Model, nil); err != nil {
		return fmt.Errorf("claude: Options.MaxTokens %d: too large for model %q without streaming", o.MaxTokens, o.Model)
	}
	switch {
	case o.MaxRetries < -1:
		return fmt.Errorf("claude: Options.MaxRetries %d: want ≥ 0 (-1 for none)", o.MaxRetries)
	case o.MaxRetries == 0:
		o.MaxRetries = d.MaxRetries
	case o.MaxRetries == -1:
		o.MaxRetries = 0
	}
	switch {
	case o.Timeout < 0:
		return fmt.Errorf("claude: Options.Timeout %v: want > 0 (0 for the default)", o.Timeout)
	case o.Timeout == 0:
		o.Timeout = d.Timeout
	}
	if o.System == "" {
		o.System = d.System
	}
	return nil
}

// Planner proposes tool calls with Claude. It is safe for concurrent use.
type Planner struct {
	client    anthropic.Client
	model     string
	maxTokens int64
	system    string
}

var _ orchestrator.Planner = (*Planner)(nil)

// New returns a Planner. It fails when an option is invalid; it does not
// call the API.
func New(opts Options) (*Planner, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	copts := []option.RequestOption{
		// Only what Options say: no ANTHROPIC_* variable, no profile file.
		option.WithoutEnvironmentDefaults(),
		option.WithAPIKey(opts.APIKey),
		option.WithMaxRetries(opts.MaxRetries),
		option.WithRequestTimeout(opts.Timeout),
	}
	if opts.BaseURL != "" {
		copts = append(copts, option.WithBaseURL(opts.BaseURL))
	}
	if opts.HTTPClient != nil {
		copts = append(copts, option.WithHTTPClient(opts.HTTPClient))
	}
	return &Planner{
		client:    anthropic.NewClient(copts...),
		model:     opts.Model,
		maxTokens: opts.MaxTokens,
		system:    opts.System,
	}, nil
}

// Next asks Claude for the next step of the run s. An API or transport
// error (after the SDK's retries) is returned wrapped; a reply that cannot
// be used (malformed, truncated, refused, naming a tool not in s.Tools)
// fails with a *orchestrator.PlannerError that wraps
// orchestrator.ErrPlanner and lists the reply's token usage.
func (p *Planner) Next(ctx context.Context, s orchestrator.Session) (orchestrator.Step, error) {
	names := newToolNames(s.Tools)
	params, err := p.request(s, names)
	if err != nil {
		return orchestrator.Step{}, err
	}
	var body []byte
	// The reply is decoded here, strictly, rather than by the SDK, which
	// accepts a reply of the wrong shape and keeps what it can.
	if _, err := p.client.Messages.New(ctx, params, option.WithResponseBodyInto(&body)); err != nil {
		return orchestrator.Step{}, fmt.Errorf("claude: messages: %w", err)
	}
	return parseReply(body, p.model, names)
}
