package sidecar

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/audit"
	"github.com/m1-agent/m1/internal/buildinfo"
	"github.com/m1-agent/m1/internal/redisconn"
	"github.com/m1-agent/m1/toolcall"
)

// Options configure m1-authz. Flags, env (M1_*) and the config file fill
// them through BindFlags; Logger, Registerer and Now are injected.
type Options struct {
	GRPCAddr         string        // ext_authz gRPC listen address
	AdminAddr        string        // admin HTTP listen address
	AdminToken       string        // bearer token for the admin API; random when empty
	AllowedOrigins   string        // comma-separated browser origins allowed to call the admin API (CORS); empty = same origin only
	ApprovalHeader   string        // request header carrying the approval token
	MCPPath          string        // path of the MCP endpoint
	ToolsPathPrefix  string        // prefix of REST tool paths
	MaxBodyBytes     int64         // largest body accepted on the MCP and tool paths
	GRPCMaxRecvBytes int           // largest CheckRequest; 0 = MaxBodyBytes + 256 KiB
	PolicyDir        string        // bundle directory; "" = the embedded default bundle
	PolicyPath       string        // decision path in the bundle
	PolicyTimeout    time.Duration // per-evaluation timeout

	// Policy distribution (DESIGN §5): at most one of PolicyDir,
	// PolicyBundleURL and PolicyGitURL; none = the embedded bundle.
	PolicyBundleURL       string        // OPA bundle server URL of a .tar.gz bundle
	PolicyBundleToken     string        // bearer token for PolicyBundleURL
	PolicyGitURL          string        // Git repository (https, ssh, file)
	PolicyGitRef          string        // branch or tag
	PolicyGitPath         string        // bundle root inside the repository
	PolicyGitSSHKey       string        // private key file for ssh Git URLs ("" = ssh agent)
	PolicyPollInterval    time.Duration // bundle server and Git poll period (jittered)
	PolicyRunTests        bool          // run the bundle's Rego tests before activating a revision
	PolicyVerificationKey string        // PEM public key: bundles must carry a valid OPA signature
	PolicyShadowDir       string        // shadow (candidate) bundle directory
	PolicyShadowBundleURL string        // shadow bundle server URL
	CacheSize             int           // L1 decision cache entries; 0 disables the cache
	CacheTTL              time.Duration // L1 decision cache entry lifetime
	RateLimitMinute       int           // tool calls per principal per minute; 0 = no limit
	RateLimitHour         int           // tool calls per principal per hour; 0 = no limit
	DrainTimeout          time.Duration // how long Stop waits for in-flight checks
	DataDir               string        // directory for local state (SQLite store: security state and audit; spool)
	LogLevel              string        // read by main to build Logger

	// TLS of both listeners (DESIGN §8); off without a certificate.
	TLS TLSOptions

	// Approval tokens (DESIGN §4).
	Audience        string        // this tool service's audience; required when keys are set
	JWKSFile        string        // public verification keys (reloaded on change and SIGHUP)
	JWTSecret       string        // HS256 secret (≥ 32 bytes); every holder can mint approvals
	TokenTTLMinutes int           // longest accepted exp - iat
	ClockSkew       time.Duration // leeway on exp, nbf and iat
	TrustedIssuers  string        // comma-separated iss allow-list; empty = any

	// Shared state in Redis (DESIGN §7); with an empty Redis.URL the state is
	// kept in the store (DataDir or DatabaseURL). The REDIS_* settings are
	// the connection's own options.
	Redis          redisconn.Options
	ReplayFallback string // "" fail closed, "local" in-process while Redis is down
	CacheL2Mode    string // auto | always | off
	CacheL2TTL     time.Duration

	// Audit trail.
	Audit        bool          // record every decision
	AuditMaxArgs int           // largest arguments an audit event keeps; beyond, the hash alone, marked truncated
	DatabaseURL  string        // the store: "" = SQLite file under DataDir; postgres://… for PostgreSQL
	PruneEvery   time.Duration // apply store.DefaultRetention this often; 0 = never

	// Signed checkpoints of this process's audit chain (DESIGN §9): off
	// unless Checkpoint.Out is set.
	Checkpoint CheckpointOptions

	// Approvals held at the gateway (DESIGN §10), and the principal header.
	Approvals ApprovalsOptions

	// AdminHTTP bounds every connection of the admin HTTP server (DESIGN
	// §7). Not flags: the defaults suit every deployment; tests shorten them.
	AdminHTTP admin.Limits
	// DashboardStep is how often the dashboard samples this process for
	// its history (an hour of samples is kept); 0: every 5 seconds. Not a
	// flag; tests shorten it.
	DashboardStep time.Duration

	Version    string // on /health and m1_build_info; default buildinfo.Version()
	Logger     *zap.Logger
	Registerer prometheus.Registerer // also a Gatherer when it is a *prometheus.Registry
	Gatherer   prometheus.Gatherer
	Now        func() time.Time
}

// TLSOptions serve both listeners over TLS (DESIGN §8): CertFile and
// KeyFile, reloaded when they change; ClientCAFile makes gRPC mutual TLS,
// the verified peer's SPIFFE ID a principal.
type TLSOptions struct {
	CertFile     string // M1_TLS_CERT_FILE; "" = plaintext
	KeyFile      string // M1_TLS_KEY_FILE
	ClientCAFile string // M1_TLS_CLIENT_CA_FILE; "" = no client certificates asked
}

// CheckpointOptions write signed checkpoints of this process's audit chain
// (DESIGN §9); off without Out.
type CheckpointOptions struct {
	Out     string        // a directory (write-once storage) or an http(s):// PUT base URL
	KeyFile string        // the Ed25519 private JWK that signs them
	Token   string        // bearer token for an HTTP target
	Every   time.Duration // how often; the last one is written at Stop
}

// msFlag is a duration flag counted in milliseconds (the REDIS_*_MS
// settings).
type msFlag struct{ d *time.Duration }

func (f msFlag) String() string {
	if f.d == nil {
		return "0"
	}
	return strconv.FormatInt(f.d.Milliseconds(), 10)
}

func (f msFlag) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("want a whole number of milliseconds: %w", err)
	}
	*f.d = time.Duration(n) * time.Millisecond
	return nil
}

// DefaultOptions returns the embedded defaults of DESIGN §8.
func DefaultOptions() Options {
	return Options{
		GRPCAddr:           ":9191",
		AdminAddr:          ":9192",
		ApprovalHeader:     "x-m1-approval-token",
		MCPPath:            toolcall.DefaultMCPPath,
		ToolsPathPrefix:    toolcall.DefaultToolsPathPrefix,
		MaxBodyBytes:       1 << 20,
		PolicyPath:         "m1/authz/decision",
		PolicyTimeout:      100 * time.Millisecond,
		PolicyGitRef:       "main",
		PolicyPollInterval: 30 * time.Second,
		CacheSize:          100_000,
		CacheTTL:           5 * time.Minute,
		DrainTimeout:       15 * time.Second,
		DataDir:            "./data",
		LogLevel:           "info",
		TokenTTLMinutes:    5,
		ClockSkew:          30 * time.Second,

		Redis:        redisconn.DefaultOptions(),
		CacheL2Mode:  "auto",
		Audit:        true,
		AuditMaxArgs: audit.DefaultMaxArgsBytes,
		PruneEvery:   time.Hour,
		AdminHTTP:    admin.DefaultLimits(),
		CacheL2TTL:   10 * time.Minute,
		Checkpoint:   CheckpointOptions{Every: 15 * time.Minute},
		Approvals:    ApprovalsOptions{Timeout: defaultApprovalsTimeout},
		Version:      buildinfo.Version(),
		Now:          time.Now,
	}
}

// BindFlags defines o's flags on fs, with o's current values as defaults,
// and returns the environment variable of each flag for config.Load.
func (o *Options) BindFlags(fs *flag.FlagSet) map[string]string {
	fs.StringVar(&o.GRPCAddr, "grpc-addr", o.GRPCAddr, "ext_authz gRPC listen address")
	fs.StringVar(&o.AdminAddr, "admin-addr", o.AdminAddr, "admin HTTP listen address (health, metrics, API)")
	fs.StringVar(&o.AdminToken, "admin-token", o.AdminToken, "bearer token for the admin API (random and logged once when empty)")
	fs.StringVar(&o.AllowedOrigins, "allowed-origins", o.AllowedOrigins, "comma-separated browser origins (scheme://host[:port]) allowed to call the admin JSON API cross-origin (empty = same origin only)")
	fs.StringVar(&o.ApprovalHeader, "approval-header", o.ApprovalHeader, "request header that carries the approval token")
	fs.StringVar(&o.MCPPath, "mcp-path", o.MCPPath, "path of the MCP endpoint")
	fs.StringVar(&o.ToolsPathPrefix, "tools-path-prefix", o.ToolsPathPrefix, "path prefix of REST tool calls")
	fs.Int64Var(&o.MaxBodyBytes, "max-body-bytes", o.MaxBodyBytes, "largest request body accepted on the MCP and tool paths")
	fs.IntVar(&o.GRPCMaxRecvBytes, "grpc-max-recv-bytes", o.GRPCMaxRecvBytes, "largest CheckRequest the gRPC server accepts (0 = max-body-bytes + 256 KiB)")
	fs.StringVar(&o.PolicyDir, "policy-dir", o.PolicyDir, "policy bundle directory (empty = the embedded default bundle)")
	fs.StringVar(&o.PolicyPath, "policy-path", o.PolicyPath, "decision path in the bundle")
	fs.DurationVar(&o.PolicyTimeout, "policy-timeout", o.PolicyTimeout, "per-evaluation policy timeout (deny policy_error when exceeded)")
	fs.StringVar(&o.PolicyBundleURL, "policy-bundle-url", o.PolicyBundleURL, "OPA bundle server URL of a .tar.gz bundle, polled with If-None-Match (instead of --policy-dir)")
	fs.StringVar(&o.PolicyBundleToken, "policy-bundle-token", o.PolicyBundleToken, "bearer token sent to the bundle server (and to the shadow bundle URL on the same scheme, host and port)")
	fs.StringVar(&o.PolicyGitURL, "policy-git-url", o.PolicyGitURL, "Git repository holding the bundle: https://, ssh:// or file:// (instead of --policy-dir)")
	fs.StringVar(&o.PolicyGitRef, "policy-git-ref", o.PolicyGitRef, "branch or tag of --policy-git-url")
	fs.StringVar(&o.PolicyGitPath, "policy-git-path", o.PolicyGitPath, "bundle root inside the repository (empty = the root)")
	fs.StringVar(&o.PolicyGitSSHKey, "policy-git-ssh-key", o.PolicyGitSSHKey, "private key file for ssh Git URLs (empty = the ssh agent)")
	fs.DurationVar(&o.PolicyPollInterval, "policy-poll-interval", o.PolicyPollInterval, "how often the bundle server or Git repository is polled (jittered ±10%)")
	fs.BoolVar(&o.PolicyRunTests, "policy-run-tests", o.PolicyRunTests, "run a new revision's own Rego tests (*_test.rego) before activating it")
	fs.StringVar(&o.PolicyVerificationKey, "policy-verification-key", o.PolicyVerificationKey, "PEM public key file: refuse bundles without a valid OPA signature (.signatures.json) made with its private key; needs a policy source (the built-in bundle is unsigned)")
	fs.StringVar(&o.PolicyShadowDir, "policy-shadow-dir", o.PolicyShadowDir, "shadow policy bundle directory: evaluated beside the active policy, never deciding")
	fs.StringVar(&o.PolicyShadowBundleURL, "policy-shadow-bundle-url", o.PolicyShadowBundleURL, "shadow policy bundle server URL")
	fs.IntVar(&o.CacheSize, "cache-size", o.CacheSize, "L1 decision cache entries (0 disables the cache)")
	fs.DurationVar(&o.CacheTTL, "cache-ttl", o.CacheTTL, "L1 decision cache entry lifetime")
	fs.IntVar(&o.RateLimitMinute, "rate-limit-per-minute", o.RateLimitMinute, "tool calls each principal may make per minute, shared through Redis when set (0 = no limit); past it: 429 rate_limited")
	fs.IntVar(&o.RateLimitHour, "rate-limit-per-hour", o.RateLimitHour, "tool calls each principal may make per hour (0 = no limit)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "how long shutdown waits for in-flight checks")
	fs.StringVar(&o.DataDir, "data-dir", o.DataDir, "directory for local state")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "log level: debug (one line per decision), info, warn, error")
	fs.StringVar(&o.Audience, "audience", o.Audience, "this tool service's audience; tokens must name it in aud (required with keys)")
	fs.StringVar(&o.JWKSFile, "jwks-file", o.JWKSFile, "JWKS file of approval verification keys (reloaded on change and on SIGHUP)")
	fs.StringVar(&o.JWTSecret, "jwt-secret", o.JWTSecret, "HS256 secret of at least 32 bytes (discouraged: every holder can mint approvals)")
	fs.IntVar(&o.TokenTTLMinutes, "approval-token-ttl-minutes", o.TokenTTLMinutes, "longest approval token lifetime (exp - iat) accepted, in minutes")
	fs.DurationVar(&o.ClockSkew, "clock-skew", o.ClockSkew, "leeway on token exp, nbf and iat")
	fs.StringVar(&o.TrustedIssuers, "trusted-issuers", o.TrustedIssuers, "comma-separated allow-list of token issuers (empty = any)")
	fs.StringVar(&o.Redis.URL, "redis-url", o.Redis.URL, "Redis for shared state (empty = single use, grant counts and revocations kept in the store); see docs/REDIS.md for the URL forms")
	fs.StringVar(&o.Redis.Password, "redis-password", o.Redis.Password, "Redis password (overrides the URL's)")
	fs.IntVar(&o.Redis.DB, "redis-db", o.Redis.DB, "Redis database number (-1 = from the URL)")
	fs.BoolVar(&o.Redis.TLS, "redis-tls", o.Redis.TLS, "connect to Redis with TLS (implied by rediss://)")
	fs.IntVar(&o.Redis.MaxRetries, "redis-max-retries", o.Redis.MaxRetries, "retries of a failed Redis command (0: the default; -1: none)")
	fs.Var(msFlag{&o.Redis.RetryDelay}, "redis-retry-delay-ms", "first retry backoff, doubling per retry")
	fs.Var(msFlag{&o.Redis.RetryDelayMax}, "redis-retry-delay-max-ms", "longest retry backoff")
	fs.Var(msFlag{&o.Redis.ConnectTimeout}, "redis-connect-timeout-ms", "Redis dial timeout")
	fs.Var(msFlag{&o.Redis.CommandTimeout}, "redis-command-timeout-ms", "Redis read/write timeout per command")
	fs.StringVar(&o.ReplayFallback, "replay-fallback", o.ReplayFallback, "while Redis is unreachable: empty = deny single-use and grant checks (state_unavailable); local = count them in this process")
	fs.StringVar(&o.CacheL2Mode, "cache-l2-mode", o.CacheL2Mode, "Redis decision cache: auto (only when evaluation is slower than a Redis round trip), always, off")
	fs.DurationVar(&o.CacheL2TTL, "cache-l2-ttl", o.CacheL2TTL, "Redis decision cache entry lifetime")
	fs.BoolVar(&o.Audit, "audit", o.Audit, "record every decision in the audit store")
	fs.IntVar(&o.AuditMaxArgs, "audit-max-args-bytes", o.AuditMaxArgs, "largest tool arguments an audit event keeps (allowed calls of non-sensitive tools only); larger ones keep their args_sha256 alone, marked args_truncated")
	fs.DurationVar(&o.PruneEvery, "audit-prune-interval", o.PruneEvery, "apply the retention policy (decisions, runs, proposals, tool calls: 2 years; revoked tokens: 30 days) this often; 0 = never")
	fs.StringVar(&o.DatabaseURL, "database-url", o.DatabaseURL, "the store (security state and audit trail): empty = SQLite file m1.db under --data-dir; postgres://… for PostgreSQL")
	fs.StringVar(&o.Checkpoint.Out, "audit-checkpoint-out", o.Checkpoint.Out, "write signed checkpoints of this process's audit chain to this directory (write-once storage) or http(s):// PUT URL (empty = off)")
	fs.StringVar(&o.Checkpoint.KeyFile, "audit-checkpoint-key-file", o.Checkpoint.KeyFile, "the Ed25519 private JWK that signs audit checkpoints (required with --audit-checkpoint-out)")
	fs.StringVar(&o.Checkpoint.Token, "audit-checkpoint-token", o.Checkpoint.Token, "bearer token for an http(s):// checkpoint target")
	fs.DurationVar(&o.Checkpoint.Every, "audit-checkpoint-interval", o.Checkpoint.Every, "how often to write an audit checkpoint (and once more at shutdown); at least 1m")
	fs.StringVar(&o.TLS.CertFile, "tls-cert-file", o.TLS.CertFile, "PEM certificate (chain) both listeners serve TLS with; reloaded when the file changes (empty = plaintext)")
	fs.StringVar(&o.TLS.KeyFile, "tls-key-file", o.TLS.KeyFile, "PEM private key of --tls-cert-file")
	fs.StringVar(&o.TLS.ClientCAFile, "tls-client-ca-file", o.TLS.ClientCAFile, "PEM CA bundle: gRPC requires client certificates it signed (mTLS); the peer's SPIFFE ID is the principal when no token or source principal names one")
	env := map[string]string{
		"grpc-addr":                  "M1_GRPC_ADDR",
		"admin-addr":                 "M1_ADMIN_ADDR",
		"admin-token":                "M1_ADMIN_TOKEN",
		"allowed-origins":            "ALLOWED_ORIGINS",
		"approval-header":            "M1_APPROVAL_HEADER",
		"mcp-path":                   "M1_MCP_PATH",
		"tools-path-prefix":          "M1_TOOLS_PATH_PREFIX",
		"max-body-bytes":             "M1_MAX_BODY_BYTES",
		"grpc-max-recv-bytes":        "M1_GRPC_MAX_RECV_BYTES",
		"policy-dir":                 "M1_POLICY_DIR",
		"policy-path":                "M1_POLICY_PATH",
		"policy-timeout":             "M1_POLICY_TIMEOUT",
		"policy-bundle-url":          "M1_POLICY_BUNDLE_URL",
		"policy-bundle-token":        "M1_POLICY_BUNDLE_TOKEN",
		"policy-git-url":             "M1_POLICY_GIT_URL",
		"policy-git-ref":             "M1_POLICY_GIT_REF",
		"policy-git-path":            "M1_POLICY_GIT_PATH",
		"policy-git-ssh-key":         "M1_POLICY_GIT_SSH_KEY",
		"policy-poll-interval":       "M1_POLICY_POLL_INTERVAL",
		"policy-run-tests":           "M1_POLICY_RUN_TESTS",
		"policy-verification-key":    "M1_POLICY_VERIFICATION_KEY",
		"policy-shadow-dir":          "M1_POLICY_SHADOW_DIR",
		"policy-shadow-bundle-url":   "M1_POLICY_SHADOW_BUNDLE_URL",
		"cache-size":                 "M1_CACHE_SIZE",
		"cache-ttl":                  "M1_CACHE_TTL",
		"rate-limit-per-minute":      "RATE_LIMIT_REQUESTS_PER_MINUTE",
		"rate-limit-per-hour":        "RATE_LIMIT_REQUESTS_PER_HOUR",
		"drain-timeout":              "M1_DRAIN_TIMEOUT",
		"data-dir":                   "M1_DATA_DIR",
		"log-level":                  "LOG_LEVEL",
		"audience":                   "M1_AUDIENCE",
		"jwks-file":                  "M1_JWKS_FILE",
		"jwt-secret":                 "M1_JWT_SECRET",
		"approval-token-ttl-minutes": "M1_APPROVAL_TOKEN_TTL_MINUTES",
		"clock-skew":                 "M1_CLOCK_SKEW",
		"trusted-issuers":            "M1_TRUSTED_ISSUERS",
		"redis-url":                  "REDIS_URL",
		"redis-password":             "REDIS_PASSWORD",
		"redis-db":                   "REDIS_DB",
		"redis-tls":                  "REDIS_TLS",
		"redis-max-retries":          "REDIS_MAX_RETRIES",
		"redis-retry-delay-ms":       "REDIS_RETRY_DELAY_MS",
		"redis-retry-delay-max-ms":   "REDIS_RETRY_DELAY_MAX_MS",
		"redis-connect-timeout-ms":   "REDIS_CONNECT_TIMEOUT_MS",
		"redis-command-timeout-ms":   "REDIS_COMMAND_TIMEOUT_MS",
		"replay-fallback":            "M1_REPLAY_FALLBACK",
		"cache-l2-mode":              "M1_CACHE_L2_MODE",
		"cache-l2-ttl":               "M1_CACHE_L2_TTL",
		"audit":                      "M1_AUDIT",
		"audit-max-args-bytes":       "M1_AUDIT_MAX_ARGS_BYTES",
		"audit-prune-interval":       "M1_AUDIT_PRUNE_INTERVAL",
		"database-url":               "M1_DATABASE_URL",
		"audit-checkpoint-out":       "M1_AUDIT_CHECKPOINT_OUT",
		"audit-checkpoint-key-file":  "M1_AUDIT_CHECKPOINT_KEY_FILE",
		"audit-checkpoint-token":     "M1_AUDIT_CHECKPOINT_TOKEN",
		"audit-checkpoint-interval":  "M1_AUDIT_CHECKPOINT_INTERVAL",
		"tls-cert-file":              "M1_TLS_CERT_FILE",
		"tls-key-file":               "M1_TLS_KEY_FILE",
		"tls-client-ca-file":         "M1_TLS_CLIENT_CA_FILE",
	}
	o.bindApprovalFlags(fs, env)
	return env
}

// validate fails fast, naming the bad field.
func (o *Options) validate() error {
	o.ApprovalHeader = strings.ToLower(o.ApprovalHeader)
	switch {
	case o.GRPCAddr == "":
		return fmt.Errorf("GRPCAddr (M1_GRPC_ADDR) is empty")
	case o.AdminAddr == "":
		return fmt.Errorf("AdminAddr (M1_ADMIN_ADDR) is empty")
	case o.ApprovalHeader == "" || strings.ContainsAny(o.ApprovalHeader, " :\t"):
		return fmt.Errorf("ApprovalHeader (M1_APPROVAL_HEADER) %q is not a header name", o.ApprovalHeader)
	case !strings.HasPrefix(o.MCPPath, "/"):
		return fmt.Errorf("MCPPath (M1_MCP_PATH) %q must start with /", o.MCPPath)
	case o.ToolsPathPrefix != "" && (!strings.HasPrefix(o.ToolsPathPrefix, "/") || !strings.HasSuffix(o.ToolsPathPrefix, "/")):
		return fmt.Errorf("ToolsPathPrefix (M1_TOOLS_PATH_PREFIX) %q must start and end with /", o.ToolsPathPrefix)
	case o.MaxBodyBytes <= 0:
		return fmt.Errorf("MaxBodyBytes (M1_MAX_BODY_BYTES) must be positive, got %d", o.MaxBodyBytes)
	case o.GRPCMaxRecvBytes < 0 || (o.GRPCMaxRecvBytes > 0 && int64(o.GRPCMaxRecvBytes) <= o.MaxBodyBytes):
		return fmt.Errorf("GRPCMaxRecvBytes (M1_GRPC_MAX_RECV_BYTES) %d must exceed MaxBodyBytes %d, with room for headers", o.GRPCMaxRecvBytes, o.MaxBodyBytes)
	case o.PolicyPath == "":
		return fmt.Errorf("PolicyPath (M1_POLICY_PATH) is empty")
	case o.PolicyTimeout <= 0:
		return fmt.Errorf("PolicyTimeout (M1_POLICY_TIMEOUT) must be positive")
	case count(o.PolicyDir, o.PolicyBundleURL, o.PolicyGitURL) > 1:
		return fmt.Errorf("at most one policy source: M1_POLICY_DIR, M1_POLICY_BUNDLE_URL or M1_POLICY_GIT_URL")
	case o.PolicyVerificationKey != "" && count(o.PolicyDir, o.PolicyBundleURL, o.PolicyGitURL) == 0:
		return fmt.Errorf("PolicyVerificationKey (M1_POLICY_VERIFICATION_KEY) is set but no policy source is (M1_POLICY_DIR, M1_POLICY_BUNDLE_URL or M1_POLICY_GIT_URL): the built-in bundle carries no signature")
	case count(o.PolicyShadowDir, o.PolicyShadowBundleURL) > 1:
		return fmt.Errorf("at most one shadow policy source: M1_POLICY_SHADOW_DIR or M1_POLICY_SHADOW_BUNDLE_URL")
	case o.PolicyPollInterval < time.Second:
		return fmt.Errorf("PolicyPollInterval (M1_POLICY_POLL_INTERVAL) must be at least 1s, got %v", o.PolicyPollInterval)
	case o.PolicyGitURL != "" && o.PolicyGitRef == "":
		return fmt.Errorf("PolicyGitRef (M1_POLICY_GIT_REF) is empty")
	case o.CacheSize < 0:
		return fmt.Errorf("CacheSize (M1_CACHE_SIZE) must not be negative")
	case o.CacheSize > 0 && o.CacheTTL <= 0:
		return fmt.Errorf("CacheTTL (M1_CACHE_TTL) must be positive")
	case o.RateLimitMinute < 0:
		return fmt.Errorf("RateLimitMinute (RATE_LIMIT_REQUESTS_PER_MINUTE) must not be negative, got %d", o.RateLimitMinute)
	case o.RateLimitHour < 0:
		return fmt.Errorf("RateLimitHour (RATE_LIMIT_REQUESTS_PER_HOUR) must not be negative, got %d", o.RateLimitHour)
	case (o.JWKSFile != "" || o.JWTSecret != "") && o.Audience == "":
		return fmt.Errorf("Audience (M1_AUDIENCE) is required when approval keys are set (M1_JWKS_FILE or M1_JWT_SECRET)")
	case o.JWTSecret != "" && len(o.JWTSecret) < 32:
		return fmt.Errorf("JWTSecret (M1_JWT_SECRET) must be at least 32 bytes, got %d", len(o.JWTSecret))
	case o.TokenTTLMinutes < 1:
		return fmt.Errorf("TokenTTLMinutes (M1_APPROVAL_TOKEN_TTL_MINUTES) must be at least 1")
	case o.ClockSkew < 0:
		return fmt.Errorf("ClockSkew (M1_CLOCK_SKEW) must not be negative")
	case o.ReplayFallback != "" && o.ReplayFallback != "local":
		return fmt.Errorf("ReplayFallback (M1_REPLAY_FALLBACK) %q: want empty or \"local\"", o.ReplayFallback)
	case o.CacheL2Mode != "auto" && o.CacheL2Mode != "always" && o.CacheL2Mode != "off":
		return fmt.Errorf("CacheL2Mode (M1_CACHE_L2_MODE) %q: want auto, always or off", o.CacheL2Mode)
	case o.Redis.URL != "" && (o.Redis.CommandTimeout <= 0 || o.Redis.ConnectTimeout <= 0):
		return fmt.Errorf("REDIS_COMMAND_TIMEOUT_MS and REDIS_CONNECT_TIMEOUT_MS must be positive")
	case o.AuditMaxArgs < 1 || o.AuditMaxArgs > audit.ArgsBytesLimit:
		return fmt.Errorf("AuditMaxArgs (M1_AUDIT_MAX_ARGS_BYTES) must be 1 to %d (4 MiB: an event must fit a line of the audit spool), got %d", audit.ArgsBytesLimit, o.AuditMaxArgs)
	case o.Checkpoint.Out != "" && o.Checkpoint.KeyFile == "":
		return fmt.Errorf("Checkpoint.KeyFile (M1_AUDIT_CHECKPOINT_KEY_FILE) is required with M1_AUDIT_CHECKPOINT_OUT")
	case o.Checkpoint.Out != "" && !o.Audit:
		return fmt.Errorf("Checkpoint.Out (M1_AUDIT_CHECKPOINT_OUT) needs the audit trail on (M1_AUDIT)")
	case o.Checkpoint.Out != "" && o.Checkpoint.Every < time.Minute:
		return fmt.Errorf("Checkpoint.Every (M1_AUDIT_CHECKPOINT_INTERVAL) must be at least 1m")
	case (o.TLS.CertFile == "") != (o.TLS.KeyFile == ""):
		return fmt.Errorf("TLS.CertFile (M1_TLS_CERT_FILE) and TLS.KeyFile (M1_TLS_KEY_FILE) go together: set both or neither")
	case o.TLS.ClientCAFile != "" && o.TLS.CertFile == "":
		return fmt.Errorf("TLS.ClientCAFile (M1_TLS_CLIENT_CA_FILE) needs M1_TLS_CERT_FILE and M1_TLS_KEY_FILE: mutual TLS is TLS first")
	case o.Logger == nil || o.Registerer == nil || o.Gatherer == nil || o.Now == nil:
		return fmt.Errorf("Logger, Registerer, Gatherer and Now are required")
	}
	if err := o.validateApprovals(); err != nil {
		return err
	}
	if err := o.AdminHTTP.Validate(); err != nil {
		return fmt.Errorf("AdminHTTP: %w", err)
	}
	if err := audit.ValidatePruneEvery(o.PruneEvery); err != nil {
		return err
	}
	if _, err := admin.ParseOrigins(o.AllowedOrigins); err != nil {
		return fmt.Errorf("AllowedOrigins (ALLOWED_ORIGINS): %w", err)
	}
	if o.GRPCMaxRecvBytes == 0 {
		o.GRPCMaxRecvBytes = int(o.MaxBodyBytes) + 256<<10
	}
	return nil
}

// count is how many of values are set.
func count(values ...string) int {
	n := 0
	for _, v := range values {
		if v != "" {
			n++
		}
	}
	return n
}
