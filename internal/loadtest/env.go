package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/bench"
	"github.com/m1-agent/m1/policies"
)

// env is what a load test starts and shares between scenarios: its
// temporary directory, the signing key, and the processes to stop.
type env struct {
	opts     Options
	bins     Binaries
	dir      string
	keyFile  string // private JWK the sidecars' JWKS trusts
	jwksFile string
	procs    []*proc
	redis    []*bench.RedisServer
	logf     func(format string, args ...any)
}

// newEnv makes the temporary directory and, unless targets are given (they
// trust opts.KeyFile), a signing key that the processes it starts trust
// (with the m1 binary, as an operator would).
func newEnv(opts Options, logf func(string, ...any)) (*env, error) {
	e := &env{opts: opts, logf: logf}
	dir, err := os.MkdirTemp("", "m1-loadtest-")
	if err != nil {
		return nil, err
	}
	e.dir = dir
	targets := opts.Targets.sidecar() || opts.Targets.Orchestrator != ""
	if targets {
		e.keyFile = opts.KeyFile // the key the targets trust
	}
	if opts.Targets.Authz != "" && opts.Targets.Orchestrator != "" {
		// Nothing to start but the approvals scenario's no-op server,
		// which needs only the m1 binary.
		b, _ := FindBinaries(opts.BinDir)
		e.bins.CLI = b.CLI
		return e, nil
	}
	if e.bins, err = FindBinaries(opts.BinDir); err != nil {
		return e, err
	}
	if !targets { // the processes started trust a key of their own
		keys := filepath.Join(dir, "keys")
		out, err := exec.Command(e.bins.CLI, "keys", "gen", "--kid", "loadtest", "--out", keys).CombinedOutput()
		if err != nil {
			return e, fmt.Errorf("m1 keys gen: %w: %s", err, out)
		}
		e.keyFile, e.jwksFile = filepath.Join(keys, "loadtest.jwk"), filepath.Join(keys, "jwks.json")
	}
	return e, nil
}

// close stops every process started, last first, and removes the
// temporary directory.
func (e *env) close() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].stop()
	}
	for _, r := range e.redis {
		r.Stop()
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

// stopAll stops the processes started so far (between scenarios, so that
// each measures its own).
func (e *env) stopAll() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].stop()
	}
	e.procs = nil
	for _, r := range e.redis {
		r.Stop()
	}
	e.redis = nil
}

func (e *env) start(name, bin string, args, env []string) (*proc, error) {
	p, err := startProc(name, bin, args, env)
	if err != nil {
		return nil, err
	}
	e.procs = append(e.procs, p)
	return p, nil
}

// sidecar is an m1-authz the load test started, or a --target one.
type sidecar struct {
	name  string
	grpc  string // host:port
	admin string // http://host:port
	token string // admin token
	proc  *proc  // nil for a target
}

// startRedis starts a redis-server for a scenario, or returns the
// --target one.
func (e *env) startRedis(ctx context.Context) (string, error) {
	if e.opts.Targets.Redis != "" {
		return e.opts.Targets.Redis, nil
	}
	r, err := bench.StartRedis(ctx)
	if err != nil {
		return "", err
	}
	e.redis = append(e.redis, r)
	if err := bench.SeedRedis(ctx, r.URL()); err != nil {
		return "", err
	}
	return r.URL(), nil
}

// startSidecar starts m1-authz on free loopback ports with the defaults
// (decision cache on, audit to SQLite in its own data directory, seeded an
// hour back so that tokens minted now are accepted), trusting the load
// test's key, and waits until it is ready. extra are more NAME=value
// settings.
func (e *env) startSidecar(ctx context.Context, name string, extra ...string) (*sidecar, error) {
	gp, err := bench.FreePort()
	if err != nil {
		return nil, err
	}
	ap, err := bench.FreePort()
	if err != nil {
		return nil, err
	}
	data, err := os.MkdirTemp(e.dir, name+"-data-")
	if err != nil {
		return nil, err
	}
	if err := bench.SeedDataDir(ctx, data); err != nil {
		return nil, err
	}
	s := &sidecar{
		name:  name,
		grpc:  "127.0.0.1:" + strconv.Itoa(gp),
		admin: "http://127.0.0.1:" + strconv.Itoa(ap),
		token: "loadtest-admin-token",
	}
	env := []string{
		"M1_GRPC_ADDR=" + s.grpc, "M1_ADMIN_ADDR=" + strings.TrimPrefix(s.admin, "http://"),
		"M1_ADMIN_TOKEN=" + s.token, "M1_DATA_DIR=" + data,
		"M1_JWKS_FILE=" + e.jwksFile, "M1_AUDIENCE=" + e.opts.Audience, "LOG_LEVEL=warn",
	}
	p, err := e.start(name, e.bins.Authz, nil, append(env, extra...))
	if err != nil {
		return nil, err
	}
	s.proc = p
	if err := p.waitHTTP(ctx, s.admin+"/health/ready"); err != nil {
		return nil, err
	}
	return s, nil
}

// targetSidecar is the --target m1-authz (n 1 or 2).
func (e *env) targetSidecar(n int) *sidecar {
	t := e.opts.Targets
	s := &sidecar{name: "m1-authz (target)", grpc: t.Authz, admin: t.Admin, token: e.opts.AdminToken}
	if n == 2 {
		s = &sidecar{name: "m1-authz 2 (target)", grpc: t.Authz2, admin: t.Admin2, token: e.opts.AdminToken}
	}
	if s.admin != "" && !strings.Contains(s.admin, "://") {
		s.admin = "http://" + s.admin
	}
	return s
}

// post sends an admin POST with the token.
func (s *sidecar) post(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.admin+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s", path, resp.Status)
	}
	return nil
}

// counters reads the named counters (summed over their labels) from
// /metrics.
func (s *sidecar) counters(ctx context.Context, names ...string) (map[string]float64, error) {
	if s.admin == "" {
		return nil, errors.New("no admin address")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
			rest = line[strings.LastIndexByte(line, ' ')+1:]
		}
		if !want[name] {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err == nil {
			out[name] += v
		}
	}
	return out, sc.Err()
}

// policyRevision is the revision /health reports for the policy in force.
func (s *sidecar) policyRevision(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.admin+"/health", nil)
	if err != nil {
		return ""
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var h struct {
		Checks map[string]struct {
			Info map[string]any `json:"info"`
		} `json:"checks"`
	}
	if json.NewDecoder(resp.Body).Decode(&h) != nil {
		return ""
	}
	rev, _ := h.Checks["policy"].Info["revision"].(string)
	return rev
}

// writeBundle copies the embedded default bundle to dir, for a sidecar's
// M1_POLICY_DIR.
func writeBundle(dir string) error {
	return fs.WalkDir(policies.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, filepath.FromSlash(path))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := fs.ReadFile(policies.FS(), path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
}
