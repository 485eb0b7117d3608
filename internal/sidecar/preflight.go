package sidecar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/redisconn"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/policies"
)

// Preflight statuses.
const (
	PreflightOK   = "ok"   // as it should be
	PreflightWarn = "warn" // m1-authz starts, but the operator should know
	PreflightFail = "fail" // m1-authz would refuse to start, or runs without something it needs
)

// PreflightCheck is one finding of [Preflight].
type PreflightCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"` // PreflightOK, PreflightWarn or PreflightFail
	Detail string `json:"detail"` // one line
}

// Preflight checks opts as m1-authz would use them, without serving: the
// options validate; the policy bundle loads, compiles and passes its own
// Rego tests; the approval keys, audience and issuer list; the TLS
// certificate, key and client CA load and are not expiring; the store's
// schema is not newer than this binary's; the audit store opens and
// migrates; the disk under M1_DATA_DIR has room; the decision cache fits
// the memory limit; Redis answers PING; the admin token is set; both
// listen addresses can be bound (and are released at once).
//
// Each network step (Redis, PostgreSQL, binding) is bounded by timeout.
// Opening the default SQLite store creates M1_DATA_DIR and m1.db when they
// are missing, as m1-authz would at start. Every check runs, whatever the
// others found; the result is in a fixed order.
func Preflight(ctx context.Context, opts Options, timeout time.Duration) []PreflightCheck {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Registerer == nil || opts.Gatherer == nil {
		reg := prometheus.NewRegistry()
		opts.Registerer, opts.Gatherer = reg, reg
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	checks := []PreflightCheck{preflightOptions(opts)}
	checks = append(checks, preflightPolicy(ctx, opts)...)
	checks = append(checks,
		preflightKeys(opts),
		preflightAudience(opts),
		preflightIssuers(opts),
		preflightTLS(opts, opts.Now()),
		preflightClientCA(opts, opts.Now()),
		preflightSchema(ctx, opts, timeout), // before preflightStore migrates
		preflightStore(ctx, opts, timeout),
		preflightDisk(opts.DataDir, hostStatfs),
		preflightMemory(opts.CacheSize, cgroupMemoryLimit),
		preflightRedis(ctx, opts, timeout),
		preflightAdminToken(opts),
	)
	return append(checks, preflightListen(ctx, opts, timeout)...)
}

func okCheck(name, detail string) PreflightCheck { return PreflightCheck{name, PreflightOK, detail} }
func warnCheck(name, detail string) PreflightCheck {
	return PreflightCheck{name, PreflightWarn, detail}
}
func failCheck(name string, err error) PreflightCheck {
	return PreflightCheck{name, PreflightFail, oneLineDetail(err.Error())}
}

// oneLine folds a multi-line error (OPA's compile errors) into one line.
func oneLineDetail(s string) string { return strings.Join(strings.Fields(s), " ") }

func preflightOptions(o Options) PreflightCheck {
	if err := o.validate(); err != nil { // o is a copy: validate's normalizing stays here
		return failCheck("options", err)
	}
	return okCheck("options", "valid")
}

// preflightPolicy loads and prepares the bundle as New does, then runs its
// Rego tests.
func preflightPolicy(ctx context.Context, o Options) []PreflightCheck {
	var (
		b    *policy.Bundle
		err  error
		name = "embedded default bundle"
	)
	if o.PolicyDir == "" {
		b, err = policy.LoadFS(policies.FS())
	} else {
		name = fmt.Sprintf("bundle %s", o.PolicyDir)
		b, err = policy.LoadDir(o.PolicyDir)
	}
	if err != nil {
		return []PreflightCheck{failCheck("policy", err), failCheck("policy tests", errors.New("not run: the bundle does not load"))}
	}
	var checks []PreflightCheck
	e, err := policy.Prepare(ctx, b, policy.Options{Path: o.PolicyPath, Timeout: o.PolicyTimeout})
	switch {
	case err != nil:
		checks = append(checks, failCheck("policy", err))
	default:
		rev := e.Revision()
		if h, found := strings.CutPrefix(rev, "sha256:"); found && len(h) > 12 {
			rev = "sha256:" + h[:12] // a hash of the files: the prefix tells revisions apart
		}
		detail := fmt.Sprintf("%s, revision %s, decision %s", name, rev, o.PolicyPath)
		if cacheable, why := e.Cacheable(); !cacheable && o.CacheSize > 0 {
			checks = append(checks, warnCheck("policy", detail+"; decision cache off: "+why))
		} else {
			checks = append(checks, okCheck("policy", detail))
		}
	}
	if len(b.Tests) == 0 {
		return append(checks, okCheck("policy tests", "the bundle has no Rego tests"))
	}
	var report bytes.Buffer
	pass, err := policy.RunTests(ctx, b, &report)
	switch {
	case err != nil:
		checks = append(checks, failCheck("policy tests", err))
	default:
		// The verbose report has a "data.pkg.test_x: PASS (1ms)" line per test.
		results := map[string]string{}
		for _, line := range strings.Split(report.String(), "\n") {
			if test, rest, found := strings.Cut(line, ": "); found && !strings.ContainsAny(test, " \t") {
				if res, _, _ := strings.Cut(rest, " "); res == "PASS" || res == "FAIL" || res == "ERROR" {
					results[test] = res
				}
			}
		}
		var bad []string
		for test, res := range results {
			if res != "PASS" {
				bad = append(bad, test+" "+res)
			}
		}
		slices.Sort(bad)
		if pass {
			checks = append(checks, okCheck("policy tests", fmt.Sprintf("%d Rego tests pass", len(results))))
			break
		}
		checks = append(checks, PreflightCheck{"policy tests", PreflightFail,
			fmt.Sprintf("%d of %d Rego tests fail: %s (run m1 policy test for details)", len(bad), len(results), strings.Join(bad, ", "))})
	}
	return checks
}

// preflightKeys loads the keys as setupKeys does and builds the verifier.
func preflightKeys(o Options) PreflightCheck {
	const name = "approval keys"
	if o.JWKSFile == "" && o.JWTSecret == "" {
		return warnCheck(name, "none (M1_JWKS_FILE, M1_JWT_SECRET): every presented token is refused; only the policy decides")
	}
	var (
		ks    *approval.KeySet
		err   error
		parts []string
		st    = PreflightOK
	)
	if o.JWKSFile != "" {
		if ks, err = approval.LoadJWKS(o.JWKSFile); err != nil {
			return failCheck(name, fmt.Errorf("M1_JWKS_FILE: %w", err))
		}
		parts = append(parts, fmt.Sprintf("M1_JWKS_FILE %s: %d public keys (%s)", o.JWKSFile, ks.Len(), strings.Join(ks.KIDs(), ", ")))
	}
	if o.JWTSecret != "" {
		if len(o.JWTSecret) < approval.MinSecretLen {
			return failCheck(name, fmt.Errorf("M1_JWT_SECRET is %d bytes, want at least %d: m1-authz refuses to start", len(o.JWTSecret), approval.MinSecretLen))
		}
		if ks, err = ks.WithSecret([]byte(o.JWTSecret)); err != nil {
			return failCheck(name, err)
		}
		st = PreflightWarn
		parts = append(parts, "HS256 secret M1_JWT_SECRET: every holder can mint approvals; prefer EdDSA keys in M1_JWKS_FILE")
	}
	if o.Audience != "" {
		_, err := approval.NewVerifier(approval.VerifierOptions{
			Keys:           ks,
			Audience:       o.Audience,
			TrustedIssuers: approval.ParseIssuers(o.TrustedIssuers),
			MaxTTL:         time.Duration(o.TokenTTLMinutes) * time.Minute,
			ClockSkew:      approval.Leeway(o.ClockSkew),
			Now:            o.Now,
		})
		if err != nil {
			return failCheck(name, fmt.Errorf("approval verifier: %w", err))
		}
	}
	return PreflightCheck{name, st, strings.Join(parts, "; ")}
}

func preflightAudience(o Options) PreflightCheck {
	const name = "audience"
	switch keys := o.JWKSFile != "" || o.JWTSecret != ""; {
	case o.Audience != "":
		return okCheck(name, fmt.Sprintf("tokens must name %q in aud", o.Audience))
	case keys:
		return failCheck(name, errors.New("M1_AUDIENCE is not set: with approval keys, m1-authz refuses to start"))
	}
	return okCheck(name, "not set (not needed without approval keys)")
}

func preflightIssuers(o Options) PreflightCheck {
	const name = "trusted issuers"
	list := approval.ParseIssuers(o.TrustedIssuers)
	switch {
	case strings.TrimSpace(o.TrustedIssuers) == "":
		return okCheck(name, "not set: any issuer is accepted")
	case len(list) == 0:
		return failCheck(name, fmt.Errorf("M1_TRUSTED_ISSUERS %q names no issuer, so any issuer would be accepted", o.TrustedIssuers))
	}
	detail := "tokens must come from " + strings.Join(list, ", ")
	if len(strings.Split(o.TrustedIssuers, ",")) != len(list) {
		return warnCheck(name, detail+" (M1_TRUSTED_ISSUERS has empty entries, ignored: a stray comma?)")
	}
	return okCheck(name, detail)
}

// preflightStore opens the store as m1-authz does at start (creating the
// data directory and the SQLite file when missing) and applies its
// migrations. It keeps the security state even with the audit off.
func preflightStore(ctx context.Context, o Options, timeout time.Duration) PreflightCheck {
	const name = "audit store"
	prefix := ""
	if !o.Audit {
		prefix = "audit off (M1_AUDIT=false); the store keeps the security state: "
	}
	kind, target, err := backend.Parse(o.DatabaseURL, o.DataDir)
	if err != nil {
		return failCheck(name, fmt.Errorf("M1_DATABASE_URL: %w", err))
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil { // the spool lives there whatever the backend
		return failCheck(name, fmt.Errorf("M1_DATA_DIR: %w", err))
	}
	what := "PostgreSQL (M1_DATABASE_URL)"
	if kind == backend.SQLite {
		what = "SQLite " + target
		if _, err := os.Stat(target); errors.Is(err, fs.ErrNotExist) {
			what += " (created)"
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := backend.Open(ctx, o.DatabaseURL, o.DataDir)
	if err != nil {
		return failCheck(name, fmt.Errorf("open %s: %w", what, err))
	}
	if err := st.Close(); err != nil {
		return failCheck(name, fmt.Errorf("close %s: %w", what, err))
	}
	return okCheck(name, prefix+what+": opened, migrations applied")
}

// preflightRedis PINGs Redis through the client m1-authz would build.
func preflightRedis(ctx context.Context, o Options, timeout time.Duration) PreflightCheck {
	const name = "redis"
	if o.RedisURL == "" {
		return okCheck(name, "REDIS_URL not set: single use, grant counts and revocations are kept in the store (one sidecar alone, or sidecars sharing PostgreSQL)")
	}
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	conn, err := redisconn.New(redisconn.Options{
		URL:            o.RedisURL,
		Password:       o.RedisPassword,
		DB:             o.RedisDB,
		TLS:            o.RedisTLS,
		MaxRetries:     -1, // one attempt: the timeout below bounds it
		ConnectTimeout: min(ms(o.RedisConnectTimeoutMS), timeout),
		CommandTimeout: min(ms(o.RedisCommandTimeoutMS), timeout),
	}, nil, zap.NewNop())
	if err != nil {
		return failCheck(name, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	if err := conn.Client().Ping(ctx).Err(); err != nil {
		return failCheck(name, fmt.Errorf("PING: %w", err))
	}
	return okCheck(name, fmt.Sprintf("PING answered in %s", time.Since(start).Round(time.Microsecond)))
}

// minAdminTokenBytes is the shortest admin token preflight accepts without
// a warning: 32 random bytes (or 32 hex digits, 128 bits) resist guessing.
const minAdminTokenBytes = 32

func preflightAdminToken(o Options) PreflightCheck {
	const name = "admin token"
	if o.AdminToken == "" {
		return warnCheck(name, "M1_ADMIN_TOKEN not set: m1-authz generates a random one at each start and logs it once")
	}
	if len(o.AdminToken) < minAdminTokenBytes {
		return warnCheck(name, fmt.Sprintf("set but short (%d bytes, want at least %d): it guards revocations, the cache and the dashboard; generate one with: openssl rand -hex 32", len(o.AdminToken), minAdminTokenBytes))
	}
	return okCheck(name, fmt.Sprintf("set (%d bytes)", len(o.AdminToken)))
}

// preflightListen binds both addresses, holding the first while binding the
// second (so that one port named twice fails), then releases them.
func preflightListen(ctx context.Context, o Options, timeout time.Duration) []PreflightCheck {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		lc     net.ListenConfig
		checks []PreflightCheck
	)
	for _, a := range []struct{ name, env, addr string }{
		{"listen gRPC", "M1_GRPC_ADDR", o.GRPCAddr},
		{"listen admin", "M1_ADMIN_ADDR", o.AdminAddr},
	} {
		if a.addr == "" {
			checks = append(checks, failCheck(a.name, fmt.Errorf("%s is empty", a.env)))
			continue
		}
		l, err := lc.Listen(ctx, "tcp", a.addr)
		if err != nil {
			checks = append(checks, failCheck(a.name, fmt.Errorf("%s: %w", a.env, err)))
			continue
		}
		defer l.Close()
		checks = append(checks, okCheck(a.name, fmt.Sprintf("%s can be bound (%s)", a.addr, l.Addr())))
	}
	return checks
}
