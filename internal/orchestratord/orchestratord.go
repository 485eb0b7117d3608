// Package orchestratord wires m1-orchestrator: options from flags and env,
// the store, the audit recorder, the planner, the tool registry and the
// HTTP server (the /v1 API behind the admin token, open /health and
// /metrics). Tests embed the real server in-process with New, Start, Addr
// and Stop.
package orchestratord

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/audit"
	"github.com/m1-agent/m1/internal/buildinfo"
	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/orchestrator/claude"
	"github.com/m1-agent/m1/orchestrator/scripted"
	"github.com/m1-agent/m1/policies"
	"github.com/m1-agent/m1/toolcall"
)

// Planner kinds of Options.Planner.
const (
	PlannerAuto     = "auto"     // claude when ANTHROPIC_API_KEY is set, else scripted with M1_PLAN_FILE, else none
	PlannerClaude   = "claude"   // Claude through the Messages API
	PlannerScripted = "scripted" // a YAML plan (M1_PLAN_FILE)
)

// Options configure m1-orchestrator.
type Options struct {
	Addr        string        // HTTP listen address
	AdminToken  string        // bearer token for /v1; random and logged when empty
	DataDir     string        // SQLite store and audit spool
	DatabaseURL string        // "" = SQLite under DataDir; postgres://… shared
	PruneEvery  time.Duration // apply store.DefaultRetention this often; 0 = never
	PolicyDir   string        // bundle whose m1/tools/data.json is the registry; "" = embedded default

	ToolEndpoint    string        // base URL of tools whose registry entry names no endpoint
	ApprovalHeader  string        // header that carries the approval token to the sidecar
	MCPPath         string        // MCP path at a tool endpoint
	ToolsPathPrefix string        // REST tool path prefix at a tool endpoint
	ProposalTTL     time.Duration // pending proposals expire (auto-rejected) after this
	DispatchTimeout time.Duration // per approved call

	// Approval verification (DESIGN §10), required: every approval is
	// checked as a sidecar with this audience would (hard checks 1–8)
	// before it is recorded, against the operators' public keys in
	// JWKSFile. There is no HS256 secret here: whoever holds it can mint
	// approvals, and the orchestrator must not.
	Audience        string
	JWKSFile        string
	TrustedIssuers  string
	TokenTTLMinutes int
	ClockSkew       time.Duration

	Planner          string // auto | claude | scripted
	PlanFile         string // the scripted planner's YAML plan
	AnthropicAPIKey  string
	AnthropicBaseURL string // "" = the SDK's default
	Model            string // Claude model id; "" = the claude package's default

	PricesFile   string  // JSON price table over the defaults
	CostTracking bool    // price LLM usage (COST_TRACKING_ENABLED)
	CostAlertUSD float64 // COST_ALERT_THRESHOLD; 0 = off
	RunBudgetUSD float64 // default per-run budget; 0 = none

	LogLevel string

	// TLS (DESIGN §8): the HTTP port serves HTTPS with these, reloaded
	// when the files change.
	TLSCertFile string
	TLSKeyFile  string

	// Gateway configures the approvals held for sidecars (DESIGN §10).
	Gateway GatewayOptions

	// PrometheusURL is the Prometheus server whose HTTP API gives the fleet
	// dashboard its mesh-wide series (M1_PROMETHEUS_URL); "" = none: the
	// dashboard says so and shows the store and this process.
	PrometheusURL string
	// AllowedOrigins are the browser origins allowed to call the API
	// cross-origin (ALLOWED_ORIGINS, comma-separated); "" = same origin only.
	AllowedOrigins string
	// DashboardStep is how often the dashboard samples this process for
	// its history without Prometheus; 0: every 5 seconds. Not a flag.
	DashboardStep time.Duration

	// HTTP bounds every connection of the HTTP server (DESIGN §7). Not
	// flags: the defaults suit every deployment; tests shorten them.
	// WriteTimeout 0 means the longer of DispatchTimeout and a planning
	// step's timeout (orchestrator.Options.PlanTimeout, 2m), plus 30s: an
	// approval is answered after its dispatch, POST /v1/runs after the
	// run's first planning step.
	HTTP admin.Limits

	// Injected.
	PlannerImpl orchestrator.Planner // when set, used instead of building one from the fields above
	Version     string               // on /health and m1_build_info; default buildinfo.Version()
	Logger      *zap.Logger
	Registerer  prometheus.Registerer
	Gatherer    prometheus.Gatherer
	Now         func() time.Time
	HTTPClient  *http.Client // for dispatch
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{
		Addr:            ":9193",
		DataDir:         "./data",
		ToolEndpoint:    "http://127.0.0.1:10000",
		ApprovalHeader:  "x-m1-approval-token",
		MCPPath:         toolcall.DefaultMCPPath,
		ToolsPathPrefix: toolcall.DefaultToolsPathPrefix,
		ProposalTTL:     15 * time.Minute,
		DispatchTimeout: 30 * time.Second,
		TokenTTLMinutes: 5,
		ClockSkew:       30 * time.Second,
		Planner:         PlannerAuto,
		CostTracking:    true,
		RunBudgetUSD:    1,
		LogLevel:        "info",
		HTTP:            defaultHTTPLimits(),
		PruneEvery:      time.Hour,
		Gateway: GatewayOptions{ // shown by --help; 0 also means these
			MaxPending: orchestrator.DefaultGatewayLimits().MaxPending,
			PerMinute:  orchestrator.DefaultGatewayLimits().PerMinute,
		},
		Version: buildinfo.Version(),
		Now:     time.Now,
	}
}

// defaultHTTPLimits are the admin port's, with room for the largest API
// request (orchestrator.maxRequestBytes, 1 MiB, with slack) and a write
// timeout that follows DispatchTimeout.
func defaultHTTPLimits() admin.Limits {
	l := admin.DefaultLimits()
	l.MaxBodyBytes = 2 << 20
	l.WriteTimeout = 0
	return l
}

// BindFlags defines o's flags on fs and returns each flag's environment
// variable for config.Load.
func (o *Options) BindFlags(fs *flag.FlagSet) map[string]string {
	env := map[string]string{}
	str := func(p *string, name, envName, usage string) {
		fs.StringVar(p, name, *p, usage)
		env[name] = envName
	}
	dur := func(p *time.Duration, name, envName, usage string) {
		fs.DurationVar(p, name, *p, usage)
		env[name] = envName
	}
	str(&o.Addr, "addr", "M1_ORCHESTRATOR_ADDR", "HTTP listen address (API, health, metrics)")
	str(&o.AdminToken, "admin-token", "M1_ADMIN_TOKEN", "bearer token for the /v1 API (random and logged once when empty)")
	str(&o.DataDir, "data-dir", "M1_DATA_DIR", "directory for local state (SQLite store, audit spool)")
	str(&o.DatabaseURL, "database-url", "M1_DATABASE_URL", "store: empty = SQLite file m1.db under --data-dir; postgres://… for PostgreSQL")
	dur(&o.PruneEvery, "audit-prune-interval", "M1_AUDIT_PRUNE_INTERVAL", "apply the retention policy (decisions, runs, proposals, tool calls: 2 years; revoked tokens: 30 days) to the store this often; 0 = never")
	str(&o.PolicyDir, "policy-dir", "M1_POLICY_DIR", "policy bundle whose m1/tools/data.json is the tool registry (empty = the embedded default)")
	str(&o.ToolEndpoint, "tool-endpoint", "M1_TOOL_ENDPOINT", "base URL (the tool pod's Envoy) of tools whose registry entry names no endpoint")
	str(&o.ApprovalHeader, "approval-header", "M1_APPROVAL_HEADER", "request header that carries the approval token")
	str(&o.MCPPath, "mcp-path", "M1_MCP_PATH", "path of the MCP endpoint at a tool endpoint")
	str(&o.ToolsPathPrefix, "tools-path-prefix", "M1_TOOLS_PATH_PREFIX", "path prefix of REST tool calls at a tool endpoint")
	dur(&o.ProposalTTL, "proposal-ttl", "M1_PROPOSAL_TTL", "pending proposals are auto-rejected (expired) after this")
	dur(&o.DispatchTimeout, "dispatch-timeout", "M1_DISPATCH_TIMEOUT", "longest wait for one approved tool call")
	str(&o.Audience, "audience", "M1_AUDIENCE", "required: the audience approval tokens must name (the tool services' M1_AUDIENCE)")
	str(&o.JWKSFile, "jwks-file", "M1_JWKS_FILE", "required: the operators' public keys (JWKS) every approval is verified with before it is recorded; reloaded on change")
	str(&o.TrustedIssuers, "trusted-issuers", "M1_TRUSTED_ISSUERS", "comma-separated allow-list of token issuers (empty = any)")
	fs.IntVar(&o.TokenTTLMinutes, "approval-token-ttl-minutes", o.TokenTTLMinutes, "longest approval token lifetime accepted, in minutes")
	env["approval-token-ttl-minutes"] = "M1_APPROVAL_TOKEN_TTL_MINUTES"
	dur(&o.ClockSkew, "clock-skew", "M1_CLOCK_SKEW", "leeway on token times; also the longest wait for a new approval after a state_reset deny without retry-after")
	str(&o.Planner, "planner", "M1_PLANNER", "auto (claude with ANTHROPIC_API_KEY, else scripted), claude or scripted")
	str(&o.PlanFile, "plan-file", "M1_PLAN_FILE", "YAML plan of the scripted planner")
	str(&o.AnthropicAPIKey, "anthropic-api-key", "ANTHROPIC_API_KEY", "Anthropic API key of the claude planner")
	str(&o.AnthropicBaseURL, "anthropic-base-url", "ANTHROPIC_BASE_URL", "Messages API base URL (empty = Anthropic's)")
	str(&o.Model, "model", "M1_MODEL", "Claude model of the claude planner (empty = the default)")
	str(&o.PricesFile, "prices-file", "M1_PRICES_FILE", "JSON price table (USD per million tokens) over the built-in Claude prices")
	fs.BoolVar(&o.CostTracking, "cost-tracking", o.CostTracking, "price LLM usage (tokens are counted either way)")
	env["cost-tracking"] = "COST_TRACKING_ENABLED"
	fs.Float64Var(&o.CostAlertUSD, "cost-alert-threshold", o.CostAlertUSD, "mark and log runs whose LLM cost reaches this many USD (0 = off)")
	env["cost-alert-threshold"] = "COST_ALERT_THRESHOLD"
	fs.Float64Var(&o.RunBudgetUSD, "run-budget-usd", o.RunBudgetUSD, "default per-run LLM budget in USD; planning stops when a run reaches it (0 = none)")
	env["run-budget-usd"] = "M1_RUN_BUDGET_USD"
	str(&o.LogLevel, "log-level", "LOG_LEVEL", "log level: debug, info, warn, error")
	str(&o.TLSCertFile, "tls-cert-file", "M1_TLS_CERT_FILE", "PEM certificate (chain) the HTTP port serves HTTPS with; reloaded when the file changes (empty = plaintext)")
	str(&o.TLSKeyFile, "tls-key-file", "M1_TLS_KEY_FILE", "PEM private key of --tls-cert-file")
	o.bindGatewayFlags(fs, env)
	str(&o.AllowedOrigins, "allowed-origins", "ALLOWED_ORIGINS", "comma-separated browser origins (scheme://host[:port]) allowed to call the JSON API cross-origin (empty = same origin only)")
	str(&o.PrometheusURL, "prometheus-url", "M1_PROMETHEUS_URL", "Prometheus server (http(s)://host:port) the fleet dashboard reads mesh-wide series from (empty = none)")
	return env
}

func (o *Options) validate() error {
	switch {
	case o.Addr == "":
		return errors.New("Addr (M1_ORCHESTRATOR_ADDR) is empty")
	case o.ProposalTTL <= 0:
		return errors.New("ProposalTTL (M1_PROPOSAL_TTL) must be positive")
	case o.DispatchTimeout <= 0:
		return errors.New("DispatchTimeout (M1_DISPATCH_TIMEOUT) must be positive")
	case o.CostAlertUSD < 0:
		return errors.New("CostAlertUSD (COST_ALERT_THRESHOLD) must not be negative")
	case o.RunBudgetUSD < 0:
		return errors.New("RunBudgetUSD (M1_RUN_BUDGET_USD) must not be negative")
	case o.Gateway.MaxPending < 0 || o.Gateway.PerMinute < 0:
		return errors.New("Gateway.MaxPending (M1_APPROVALS_MAX_PENDING) and Gateway.PerMinute (M1_APPROVALS_PER_MINUTE) must not be negative")
	case o.JWKSFile == "":
		return errors.New("JWKSFile (--jwks-file, M1_JWKS_FILE) is required: the orchestrator verifies every approval against the operators' public keys before it records it, so that its admin token alone cannot approve anything")
	case o.Audience == "":
		return errors.New("Audience (--audience, M1_AUDIENCE) is required to verify approval tokens")
	case o.TokenTTLMinutes < 1:
		return errors.New("TokenTTLMinutes (M1_APPROVAL_TOKEN_TTL_MINUTES) must be at least 1")
	case o.ClockSkew < 0:
		return errors.New("ClockSkew (M1_CLOCK_SKEW) must not be negative")
	case o.HTTP.WriteTimeout != 0 && o.HTTP.WriteTimeout <= o.DispatchTimeout:
		return fmt.Errorf("HTTP.WriteTimeout %s must exceed DispatchTimeout (M1_DISPATCH_TIMEOUT) %s: an approval is answered after its dispatch", o.HTTP.WriteTimeout, o.DispatchTimeout)
	case (o.TLSCertFile == "") != (o.TLSKeyFile == ""):
		return errors.New("TLSCertFile (M1_TLS_CERT_FILE) and TLSKeyFile (M1_TLS_KEY_FILE) go together: set both or neither")
	case !strings.HasPrefix(o.MCPPath, "/"):
		return fmt.Errorf("MCPPath (M1_MCP_PATH) %q must start with /", o.MCPPath)
	case !strings.HasPrefix(o.ToolsPathPrefix, "/") || !strings.HasSuffix(o.ToolsPathPrefix, "/"):
		return fmt.Errorf("ToolsPathPrefix (M1_TOOLS_PATH_PREFIX) %q must start and end with /", o.ToolsPathPrefix)
	}
	if _, _, err := backend.Parse(o.DatabaseURL, o.DataDir); err != nil {
		return fmt.Errorf("M1_DATABASE_URL: %w", err)
	}
	if o.PrometheusURL != "" {
		if _, err := admin.ParsePrometheusURL(o.PrometheusURL); err != nil {
			return fmt.Errorf("PrometheusURL (M1_PROMETHEUS_URL): %w", err)
		}
	}
	if err := audit.ValidatePruneEvery(o.PruneEvery); err != nil {
		return err
	}
	if _, err := admin.ParseOrigins(o.AllowedOrigins); err != nil {
		return fmt.Errorf("AllowedOrigins (ALLOWED_ORIGINS): %w", err)
	}
	if o.HTTP.WriteTimeout == 0 {
		o.HTTP.WriteTimeout = max(o.DispatchTimeout, orchestrator.DefaultOptions().PlanTimeout) + 30*time.Second
	}
	if err := o.HTTP.Validate(); err != nil {
		return fmt.Errorf("HTTP: %w", err)
	}
	return nil
}

// Server is a running m1-orchestrator.
type Server struct {
	opts     Options
	log      *zap.Logger
	keys     *approval.Watcher
	tls      *certs.Reloader // nil without M1_TLS_CERT_FILE
	stopKeys context.CancelFunc
	st       store.Store
	rec      *audit.Recorder
	svc      *orchestrator.Service
	planner  string
	http     *http.Server
	lis      net.Listener
	started  atomic.Bool
	// serving runs the HTTP server: a listener that stops by itself ends
	// servingCtx with its error, and Serve stops the process with it.
	serving    *errgroup.Group
	servingCtx context.Context
	stopOnce   sync.Once
	stopErr    error
	ring       *admin.Ring // the dashboard's history without Prometheus
	stopRing   context.CancelFunc
	stopPrune  context.CancelFunc
	generated  bool // the admin token was generated: Start logs it with the dashboard URL
}

// New opens the store, builds the planner and the service.
func New(ctx context.Context, o Options) (*Server, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Registerer == nil {
		reg := prometheus.NewRegistry()
		o.Registerer, o.Gatherer = reg, reg
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{opts: o, log: o.Logger}
	generated := false
	if s.opts.AdminToken == "" {
		var b [24]byte
		_, _ = rand.Read(b[:])
		s.opts.AdminToken, generated = hex.EncodeToString(b[:]), true
	}

	planner, kind, err := buildPlanner(o)
	if err != nil {
		return nil, err
	}
	s.planner = kind
	fsys := policies.FS()
	if o.PolicyDir != "" {
		fsys = os.DirFS(o.PolicyDir)
	}
	reg, err := orchestrator.LoadRegistry(fsys, o.ToolEndpoint)
	if err != nil {
		return nil, err
	}
	prices, err := orchestrator.LoadPrices(o.PricesFile)
	if err != nil {
		return nil, err
	}
	ks, err := approval.LoadJWKS(o.JWKSFile)
	if err != nil {
		return nil, fmt.Errorf("load M1_JWKS_FILE: %w", err)
	}
	if ks.Len() == 0 {
		return nil, fmt.Errorf("M1_JWKS_FILE %s holds no public key: the orchestrator could verify no approval", o.JWKSFile)
	}
	verifier, err := approval.NewVerifier(approval.VerifierOptions{
		Keys: ks, Audience: o.Audience, TrustedIssuers: approval.ParseIssuers(o.TrustedIssuers),
		MaxTTL: time.Duration(o.TokenTTLMinutes) * time.Minute, ClockSkew: approval.Leeway(o.ClockSkew),
		Now: o.Now, CacheSize: -1,
	})
	if err != nil {
		return nil, fmt.Errorf("approval verifier: %w", err)
	}
	s.keys = approval.NewWatcher(o.JWKSFile, nil, verifier, o.Logger.Named("keys"))
	m, err := orchestrator.NewMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	if err := buildinfo.RegisterMetric(o.Registerer, o.Version, buildinfo.Revision()); err != nil {
		return nil, err
	}

	if o.TLSCertFile != "" {
		if s.tls, err = certs.NewReloader(o.TLSCertFile, o.TLSKeyFile, "", o.Logger.Named("tls")); err != nil {
			return nil, fmt.Errorf("load M1_TLS_CERT_FILE and M1_TLS_KEY_FILE: %w", err)
		}
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("M1_DATA_DIR: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if s.st, err = backend.Open(octx, o.DatabaseURL, o.DataDir); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	records, ok := s.st.(store.Records)
	if !ok {
		s.st.Close()
		return nil, fmt.Errorf("store %T keeps no runs or proposals", s.st)
	}
	s.rec, err = audit.New(audit.Options{
		Writer:     store.WriterID("m1-orchestrator", o.Now()),
		Sink:       s.st,
		SpoolPath:  filepath.Join(o.DataDir, "orchestrator-audit-spool.jsonl"),
		Logger:     o.Logger.Named("audit"),
		Registerer: o.Registerer,
	})
	if err != nil {
		s.st.Close()
		return nil, err
	}
	so := orchestrator.DefaultOptions()
	so.Records, so.Audit, so.Planner, so.Registry, so.Prices = records, s.rec, planner, reg, prices
	so.CostTracking, so.CostAlertUSD, so.BudgetUSD = o.CostTracking, o.CostAlertUSD, o.RunBudgetUSD
	so.ProposalTTL, so.DispatchTimeout, so.ClockSkew = o.ProposalTTL, o.DispatchTimeout, o.ClockSkew
	so.ApprovalHeader, so.MCPPath, so.ToolsPathPrefix = o.ApprovalHeader, o.MCPPath, o.ToolsPathPrefix
	so.Verifier, so.HTTPClient, so.Metrics, so.Logger, so.Now, so.Version = verifier, o.HTTPClient, m, o.Logger, o.Now, o.Version
	so.GatewayLimits = o.Gateway.limits()
	s.svc, err = orchestrator.New(so)
	if err != nil {
		s.st.Close()
		return nil, err
	}
	po := orchestrator.DefaultPendingCollectorOptions()
	po.Records, po.Registry, po.Now, po.Logger = records, reg, o.Now, o.Logger.Named("metrics")
	pending, err := orchestrator.NewPendingCollector(po)
	if err != nil {
		s.st.Close()
		return nil, err
	}
	if err := o.Registerer.Register(pending); err != nil {
		s.st.Close()
		return nil, err
	}
	handler, err := s.adminHandler(records, reg)
	if err != nil {
		s.st.Close()
		return nil, err
	}
	s.http = admin.NewServer(handler, o.HTTP, zap.NewStdLog(o.Logger.Named("http")))
	if s.tls != nil {
		s.http.TLSConfig = s.tls.Config("h2", "http/1.1")
	}
	s.generated = generated
	return s, nil
}

// buildPlanner returns the injected planner or builds the configured one.
func buildPlanner(o Options) (orchestrator.Planner, string, error) {
	if o.PlannerImpl != nil {
		return o.PlannerImpl, "injected", nil
	}
	kind := o.Planner
	if kind == PlannerAuto || kind == "" {
		switch {
		case o.AnthropicAPIKey != "":
			kind = PlannerClaude
		case o.PlanFile != "":
			kind = PlannerScripted
		default:
			return nil, plannerNone, nil // approvals only (DESIGN §10)
		}
	}
	switch kind {
	case PlannerClaude:
		co := claude.DefaultOptions()
		co.APIKey = o.AnthropicAPIKey
		if o.AnthropicBaseURL != "" {
			co.BaseURL = o.AnthropicBaseURL
		}
		if o.Model != "" {
			co.Model = o.Model
		}
		p, err := claude.New(co)
		if err != nil {
			return nil, "", fmt.Errorf("claude planner: %w", err)
		}
		return p, kind, nil
	case PlannerScripted:
		if o.PlanFile == "" {
			return nil, "", errors.New("scripted planner: M1_PLAN_FILE is required")
		}
		p, err := scripted.Load(o.PlanFile)
		if err != nil {
			return nil, "", fmt.Errorf("scripted planner: %w", err)
		}
		return p, kind, nil
	}
	return nil, "", fmt.Errorf("Planner (M1_PLANNER) %q: want auto, claude or scripted", o.Planner)
}

// plannerNone is the planner kind of an orchestrator without one: it
// serves approvals, the dashboard and the rest of its API, and POST
// /v1/runs answers 503 no_planner.
const plannerNone = "none"

// Start listens and serves until Stop. A Start that fails leaves nothing
// behind: what it started is stopped (the store closed), the listener
// closed.
func (s *Server) Start(ctx context.Context) (err error) {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.opts.Addr, err)
	}
	s.lis = lis
	defer func() {
		if err != nil {
			lis.Close()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = s.Stop(sctx) // the start error matters more
		}
	}()
	// The key watcher lives as long as the server: Stop cancels it.
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopKeys = cancel
	if err := s.keys.Start(wctx); err != nil {
		return fmt.Errorf("watch M1_JWKS_FILE: %w", err)
	}
	s.rec.Start(ctx)
	if err := s.svc.Start(ctx); err != nil {
		return err
	}
	s.serving, s.servingCtx = errgroup.WithContext(context.WithoutCancel(ctx))
	s.serving.Go(func() error {
		serve := s.http.Serve
		if s.tls != nil {
			serve = func(l net.Listener) error { return s.http.ServeTLS(l, "", "") } // the certificate comes from TLSConfig
		}
		if err := serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("HTTP server on %s stopped: %w", lis.Addr(), err)
		}
		return nil
	})
	s.started.Store(true)
	if s.ring != nil {
		rctx, stopRing := context.WithCancel(context.WithoutCancel(ctx))
		s.stopRing = stopRing
		go s.ring.Run(rctx)
	}
	if s.opts.PruneEvery > 0 {
		pctx, stopPrune := context.WithCancel(context.WithoutCancel(ctx))
		s.stopPrune = stopPrune
		st := func(context.Context) (store.Store, error) { return s.st, nil }
		go audit.PruneLoop(pctx, s.opts.PruneEvery, s.opts.Now, st, s.log.Named("prune"))
	}
	s.log.Info("m1-orchestrator started", zap.String("addr", lis.Addr().String()), zap.String("planner", s.planner), zap.String("version", s.opts.Version), zap.Bool("tls", s.tls != nil))
	if s.generated {
		scheme := "http"
		if s.tls != nil {
			scheme = "https"
		}
		s.log.Info("admin token generated; set M1_ADMIN_TOKEN to choose one (m1 approve reads it too)",
			zap.String("dashboard_url", scheme+"://"+lis.Addr().String()+"/?token="+s.opts.AdminToken))
	}
	return nil
}

// Addr is the listen address (after Start).
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// AdminToken is the bearer token of the /v1 API.
func (s *Server) AdminToken() string { return s.opts.AdminToken }

// Stop stops planning and serving, waits for dispatches in flight (until
// ctx ends), flushes the audit queue and closes the store. Safe to call
// twice.
func (s *Server) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		var errs []error
		// First the service: planning stops (runs resume at the next
		// start) and new approvals are refused, so that no request keeps
		// the HTTP server from shutting down.
		svcErr := make(chan error, 1)
		go func() { svcErr <- s.svc.Stop(ctx) }()
		if s.started.Load() {
			if err := s.http.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("shut down HTTP: %w", err))
			}
		}
		if err := <-svcErr; err != nil {
			errs = append(errs, err)
		}
		if s.stopKeys != nil {
			s.stopKeys()
		}
		if s.stopPrune != nil {
			s.stopPrune()
		}
		if s.stopRing != nil {
			s.stopRing()
		}
		// The audit queue gets its own time: what the dispatches recorded
		// must reach the store (or the spool).
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if err := s.rec.Close(actx); err != nil {
			errs = append(errs, err)
		}
		cancel()
		if err := s.st.Close(); err != nil {
			errs = append(errs, err)
		}
		s.stopErr = errors.Join(errs...)
		s.log.Info("m1-orchestrator stopped")
	})
	return s.stopErr
}

// Run builds the server and serves until ctx ends (see Serve).
func Run(ctx context.Context, o Options) error {
	s, err := New(ctx, o)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Serve starts the server and stops it when ctx ends, or when its HTTP
// server stops by itself (a listener that fails): then it returns that
// error, so that the process exits instead of running deaf.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	select {
	case <-s.servingCtx.Done():
		s.log.Error("the HTTP server stopped by itself: stopping", zap.Error(context.Cause(s.servingCtx)))
	case <-ctx.Done():
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.DispatchTimeout+5*time.Second)
	defer cancel()
	stopErr := s.Stop(stopCtx)
	return errors.Join(s.serving.Wait(), stopErr)
}

func (s *Server) health() admin.Report {
	rep := admin.Report{Version: s.opts.Version, Checks: map[string]admin.Check{}, Started: s.started.Load(), Ready: s.started.Load()}
	kind, _, _ := backend.Parse(s.opts.DatabaseURL, s.opts.DataDir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st := s.rec.Stats()
	db := admin.Check{Status: admin.StatusOK, Info: map[string]any{"backend": kind, "audit_queue_depth": st.QueueDepth, "audit_spool_events": st.SpoolEvents}}
	if err := s.st.Ping(ctx); err != nil {
		// Degraded, not failing: /health answers 503 only when the process
		// cannot serve at all (DESIGN §8), and the store may come back.
		db.Status, db.Detail = admin.StatusDegraded, "store unreachable: "+err.Error()
	} else if st.SpoolEvents > 0 {
		db.Status, db.Detail = admin.StatusDegraded, "audit events spool locally: "+st.LastError
	}
	rep.Checks["database"] = db
	rep.Checks["planner"] = admin.Check{Status: admin.StatusOK, Info: map[string]any{"kind": s.planner}}
	if s.planner == plannerNone {
		rep.Checks["planner"] = admin.Check{Status: admin.StatusDisabled, Info: map[string]any{"kind": s.planner},
			Detail: "no planner (ANTHROPIC_API_KEY or M1_PLAN_FILE): approvals only; POST /v1/runs answers 503 no_planner"}
	}
	ks := s.keys.Status()
	keys := admin.Check{Status: admin.StatusOK, Info: map[string]any{"path": ks.Path, "kids": ks.KIDs}}
	if ks.LastError != "" {
		keys.Status, keys.Detail = admin.StatusDegraded, "M1_JWKS_FILE did not load; the previous keys stay in use: "+ks.LastError
	}
	rep.Checks["keys"] = keys
	rep.Checks["tls"] = s.tlsCheck()
	// The checks every M1 binary reports (DESIGN §8); these two belong to the sidecars.
	rep.Checks["policy"] = admin.Check{Status: admin.StatusDisabled, Detail: "m1-orchestrator evaluates no policy; the sidecars do"}
	rep.Checks["redis"] = admin.Check{Status: admin.StatusDisabled, Detail: "m1-orchestrator uses no Redis"}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rep.Checks["memory"] = admin.Check{Status: admin.StatusOK, Info: map[string]any{
		"heap_alloc_bytes": ms.HeapAlloc, "sys_bytes": ms.Sys, "goroutines": runtime.NumGoroutine(),
	}}
	rep.Status = admin.StatusOK
	for _, c := range rep.Checks {
		if c.Status == admin.StatusFailing {
			rep.Status = admin.StatusFailing
		} else if c.Status == admin.StatusDegraded && rep.Status == admin.StatusOK {
			rep.Status = admin.StatusDegraded
		}
	}
	return rep
}

// tlsCheck is /health's view of the certificate: degraded when a reload
// failed or it expires within certs.ExpiryWarning.
func (s *Server) tlsCheck() admin.Check {
	if s.tls == nil {
		return admin.Check{Status: admin.StatusDisabled, Detail: "plaintext: M1_TLS_CERT_FILE not set"}
	}
	st := s.tls.Status()
	c := admin.Check{Status: admin.StatusOK, Info: map[string]any{
		"cert_file": st.CertFile, "subject": st.Subject, "names": st.Names, "not_after": st.NotAfter, "loaded_at": st.LoadedAt,
	}}
	if p := st.Problem(s.opts.Now()); p != "" {
		c.Status, c.Detail = admin.StatusDegraded, p
	}
	return c
}

// adminHandler serves the /v1 API, the sidecars' gateway endpoints and the
// dashboard in fleet scope: runs, proposals, approvals and cost from the
// shared store, and the mesh-wide
// series from Prometheus when PrometheusURL is set (else this process's
// own, sampled in memory).
func (s *Server) adminHandler(records store.Records, reg orchestrator.Registry) (http.Handler, error) {
	o := s.opts
	var prom *admin.Prometheus
	if o.PrometheusURL != "" {
		var err error
		if prom, err = admin.NewPrometheus(o.PrometheusURL, nil); err != nil {
			return nil, fmt.Errorf("M1_PROMETHEUS_URL: %w", err)
		}
	}
	fleet := &admin.Fleet{Prom: prom, Now: o.Now}
	dashboard := &admin.DashboardAPI{Gatherer: o.Gatherer, Now: o.Now, Prometheus: prom,
		Records: func(context.Context) (store.Records, error) { return records, nil }}
	docs := dashboard.Documents()
	maps.Copy(docs, fleet.Documents())
	docs["policy"] = withRegistry(docs["policy"], reg)
	var history admin.History
	detail := ""
	if prom != nil {
		history = &admin.PromHistory{Prom: prom, Now: o.Now}
		detail = "Prometheus at " + prom.String()
	} else {
		s.ring = admin.NewRing(admin.RingOptions{Gatherer: o.Gatherer, Extra: s.dashboardExtras, Step: o.DashboardStep, Now: o.Now})
		history, detail = s.ring, s.ring.Detail()
	}
	docs["history"] = admin.HistoryDoc(history)
	origins, _ := admin.ParseOrigins(o.AllowedOrigins) // checked by validate
	handler := admin.NewHandler(admin.Options{
		Token:          s.opts.AdminToken,
		AllowedOrigins: origins,
		Gatherer:       o.Gatherer,
		Health:         s.health,
		Routes:         map[string]http.Handler{"/v1/": s.svc.Handler()},
		Documents:      docs,
		Now:            o.Now,
		API: map[string]func() any{
			"health": func() any { return s.health() },
			"meta": func() any {
				return admin.Meta{Scope: admin.ScopeFleet, Service: "m1-orchestrator", Version: o.Version, History: detail, Prometheus: fleet.Status()}
			},
		},
	})
	mux := http.NewServeMux()
	mux.Handle("/", handler)
	s.gatewayRoutes(mux, handler)
	return mux, nil
}

// dashboardExtras are the values of the dashboard's history that are not
// metrics: the audit spool and the store's latency.
func (s *Server) dashboardExtras(ctx context.Context) map[string]float64 {
	out := map[string]float64{admin.ExtraAuditSpoolEvents: float64(s.rec.Stats().SpoolEvents)}
	start := time.Now()
	if err := s.st.Ping(ctx); err == nil {
		out[admin.ExtraStorePingSeconds] = time.Since(start).Seconds()
	}
	return out
}
