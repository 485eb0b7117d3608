package sidecar

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Options configure m1-authz. Flags, env (M1_*) and the config file fill
// them through BindFlags; Logger, Registerer and Now are injected.
type Options struct {
	GRPCAddr         string        // ext_authz gRPC listen address
	AdminAddr        string        // admin HTTP listen address
	AdminToken       string        // bearer token for the admin API; random when empty
	ApprovalHeader   string        // request header carrying the approval token
	MCPPath          string        // path of the MCP endpoint
	ToolsPathPrefix  string        // prefix of REST tool paths
	MaxBodyBytes     int64         // largest body accepted on the MCP and tool paths
	GRPCMaxRecvBytes int           // largest CheckRequest; 0 = MaxBodyBytes + 256 KiB
	PolicyDir        string        // bundle directory; "" = the embedded default bundle
	PolicyPath       string        // decision path in the bundle
	PolicyTimeout    time.Duration // per-evaluation timeout
	CacheSize        int           // L1 decision cache entries; 0 disables the cache
	CacheTTL         time.Duration // L1 decision cache entry lifetime
	DrainTimeout     time.Duration // how long Stop waits for in-flight checks
	DataDir          string        // directory for local state (SQLite store, spool)
	LogLevel         string        // read by main to build Logger

	Version    string
	Logger     *zap.Logger
	Registerer prometheus.Registerer // also a Gatherer when it is a *prometheus.Registry
	Gatherer   prometheus.Gatherer
	Now        func() time.Time
}

// DefaultOptions returns the embedded defaults of DESIGN §8.
func DefaultOptions() Options {
	return Options{
		GRPCAddr:        ":9191",
		AdminAddr:       ":9192",
		ApprovalHeader:  "x-m1-approval-token",
		MCPPath:         "/mcp",
		ToolsPathPrefix: "/tools/",
		MaxBodyBytes:    1 << 20,
		PolicyPath:      "m1/authz/decision",
		PolicyTimeout:   100 * time.Millisecond,
		CacheSize:       100_000,
		CacheTTL:        5 * time.Minute,
		DrainTimeout:    15 * time.Second,
		DataDir:         "./data",
		LogLevel:        "info",
		Version:         "dev",
		Now:             time.Now,
	}
}

// BindFlags defines o's flags on fs, with o's current values as defaults,
// and returns the environment variable of each flag for config.Load.
func (o *Options) BindFlags(fs *flag.FlagSet) map[string]string {
	env := map[string]string{}
	str := func(p *string, name, envName, usage string) {
		fs.StringVar(p, name, *p, usage)
		env[name] = envName
	}
	str(&o.GRPCAddr, "grpc-addr", "M1_GRPC_ADDR", "ext_authz gRPC listen address")
	str(&o.AdminAddr, "admin-addr", "M1_ADMIN_ADDR", "admin HTTP listen address (health, metrics, API)")
	str(&o.AdminToken, "admin-token", "M1_ADMIN_TOKEN", "bearer token for the admin API (random and logged once when empty)")
	str(&o.ApprovalHeader, "approval-header", "M1_APPROVAL_HEADER", "request header that carries the approval token")
	str(&o.MCPPath, "mcp-path", "M1_MCP_PATH", "path of the MCP endpoint")
	str(&o.ToolsPathPrefix, "tools-path-prefix", "M1_TOOLS_PATH_PREFIX", "path prefix of REST tool calls")
	fs.Int64Var(&o.MaxBodyBytes, "max-body-bytes", o.MaxBodyBytes, "largest request body accepted on the MCP and tool paths")
	env["max-body-bytes"] = "M1_MAX_BODY_BYTES"
	fs.IntVar(&o.GRPCMaxRecvBytes, "grpc-max-recv-bytes", o.GRPCMaxRecvBytes, "largest CheckRequest the gRPC server accepts (0 = max-body-bytes + 256 KiB)")
	env["grpc-max-recv-bytes"] = "M1_GRPC_MAX_RECV_BYTES"
	str(&o.PolicyDir, "policy-dir", "M1_POLICY_DIR", "policy bundle directory (empty = the embedded default bundle)")
	str(&o.PolicyPath, "policy-path", "M1_POLICY_PATH", "decision path in the bundle")
	fs.DurationVar(&o.PolicyTimeout, "policy-timeout", o.PolicyTimeout, "per-evaluation policy timeout (deny policy_error when exceeded)")
	env["policy-timeout"] = "M1_POLICY_TIMEOUT"
	fs.IntVar(&o.CacheSize, "cache-size", o.CacheSize, "L1 decision cache entries (0 disables the cache)")
	env["cache-size"] = "M1_CACHE_SIZE"
	fs.DurationVar(&o.CacheTTL, "cache-ttl", o.CacheTTL, "L1 decision cache entry lifetime")
	env["cache-ttl"] = "M1_CACHE_TTL"
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "how long shutdown waits for in-flight checks")
	env["drain-timeout"] = "M1_DRAIN_TIMEOUT"
	str(&o.DataDir, "data-dir", "M1_DATA_DIR", "directory for local state")
	str(&o.LogLevel, "log-level", "LOG_LEVEL", "log level: debug (one line per decision), info, warn, error")
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
	case o.CacheSize < 0:
		return fmt.Errorf("CacheSize (M1_CACHE_SIZE) must not be negative")
	case o.CacheSize > 0 && o.CacheTTL <= 0:
		return fmt.Errorf("CacheTTL (M1_CACHE_TTL) must be positive")
	case o.Logger == nil || o.Registerer == nil || o.Gatherer == nil || o.Now == nil:
		return fmt.Errorf("Logger, Registerer, Gatherer and Now are required")
	}
	if o.GRPCMaxRecvBytes == 0 {
		o.GRPCMaxRecvBytes = int(o.MaxBodyBytes) + 256<<10
	}
	return nil
}
