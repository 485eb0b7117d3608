package cli

import (
	"database/sql"
	"encoding/json"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/certs/certstest"
	"github.com/m1-agent/m1/internal/sidecar"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/testenv"
)

// preflightEnv is a deployment preflight passes without a warning: real
// keys, a data directory, free ports. Each case changes it.
func preflightEnv(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	keysGen(t, filepath.Join(dir, "keys"), "--kid", "ops-1")
	return map[string]string{
		"M1_GRPC_ADDR":   "127.0.0.1:0",
		"M1_ADMIN_ADDR":  "127.0.0.1:0",
		"M1_DATA_DIR":    filepath.Join(dir, "data"),
		"M1_ADMIN_TOKEN": "preflight-admin-token-of-32-bytes",
		"M1_JWKS_FILE":   filepath.Join(dir, "keys", "jwks.json"),
		"M1_AUDIENCE":    "tools.example",
	}
}

// writeFiles writes name → content under a new temporary directory and
// returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// takenPort listens on a loopback port for the test's duration and returns
// its address.
func takenPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func TestPreflight(t *testing.T) {
	redis := testenv.StartRedis(t, testenv.RedisOptions{})
	taken := takenPort(t)
	free := closedPort(t)
	const regoOK = "package m1.authz\n\ndefault decision := false\n"
	brokenPolicy := writeFiles(t, map[string]string{"authz.rego": "package m1.authz\n\ndecision if {\n"})
	failingTests := writeFiles(t, map[string]string{
		"authz.rego":      regoOK,
		"authz_test.rego": "package m1.authz_test\n\nimport data.m1.authz\n\ntest_allows if {\n\tauthz.decision\n}\n\ntest_denies if {\n\tnot authz.decision\n}\n",
	})
	noTests := writeFiles(t, map[string]string{"authz.rego": regoOK})
	uncacheable := writeFiles(t, map[string]string{"authz.rego": "package m1.authz\n\ndecision := input.attributes.request.http.method == \"GET\"\n"})
	files := writeFiles(t, map[string]string{
		"bad.json":     "{",
		"private.json": `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}]}`,
		"empty.json":   `{"keys":[]}`,
		"typo.yaml":    "grpc-adr: 127.0.0.1:0\n",
		"json.yaml":    "json: true\n",
		"taken.yaml":   "grpc-addr: " + taken + "\n",
	})
	file := func(name string) string { return filepath.Join(files, name) }

	// TLS files: good, expiring, expired, not yet valid, a key of another
	// certificate; a client CA, and a file with no certificate.
	ca := certstest.NewCA(t, "m1 test CA")
	tlsOK := ca.Server(t)
	tlsSoon := ca.Issue(t, certstest.Options{CommonName: "soon", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, NotAfter: time.Now().Add(5 * 24 * time.Hour)})
	tlsExpired := ca.Issue(t, certstest.Options{CommonName: "old", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	tlsFuture := ca.Issue(t, certstest.Options{CommonName: "future", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(24 * time.Hour)})
	tlsEnv := func(p certstest.Pair) map[string]string {
		return map[string]string{"M1_TLS_CERT_FILE": p.CertFile, "M1_TLS_KEY_FILE": p.KeyFile}
	}
	withCA := tlsEnv(tlsOK)
	withCA["M1_TLS_CLIENT_CA_FILE"] = ca.File
	mismatched := tlsEnv(tlsOK)
	mismatched["M1_TLS_KEY_FILE"] = tlsSoon.KeyFile
	junkCA := tlsEnv(tlsOK)
	junkCA["M1_TLS_CLIENT_CA_FILE"] = file("bad.json")

	// A store a newer m1-authz migrated: schema_migrations has a version
	// this binary does not.
	newerData := t.TempDir()
	st, err := backend.Open(t.Context(), "", newerData)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", filepath.Join(newerData, "m1.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'from_the_future', '2030-01-01T00:00:00.000000Z')`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	tests := []struct {
		name       string
		env        map[string]string // over preflightEnv; "" unsets
		args       []string
		wantCode   int
		want       map[string]string // check name → status
		wantDetail map[string]string // check name → substring of its detail
	}{
		{
			name:     "all good",
			wantCode: exitOK,
			want: map[string]string{"configuration": "ok", "options": "ok", "policy": "ok", "policy tests": "ok", "approval keys": "ok", "audience": "ok",
				"trusted issuers": "ok", "tls certificate": "ok", "tls client CA": "ok", "store schema": "ok", "audit store": "ok", "redis": "ok",
				"admin token": "ok", "listen gRPC": "ok", "listen admin": "ok"},
			wantDetail: map[string]string{"approval keys": "1 public keys (ops-1)", "audit store": "(created): opened, migrations applied", "policy": "embedded default bundle",
				"tls certificate": "plaintext", "store schema": "no store yet", "disk": "free of", "memory": "M1_CACHE_SIZE 100000"},
		},
		{
			name:       "TLS certificate and client CA",
			env:        withCA,
			wantCode:   exitOK,
			want:       map[string]string{"tls certificate": "ok", "tls client CA": "ok", "options": "ok"},
			wantDetail: map[string]string{"tls certificate": "CN=m1 test server (localhost, 127.0.0.1); valid until", "tls client CA": "1 CA certificates (CN=m1 test CA)"},
		},
		{
			name:       "TLS certificate expiring within 14 days",
			env:        tlsEnv(tlsSoon),
			wantCode:   exitOK,
			want:       map[string]string{"tls certificate": "warn"},
			wantDetail: map[string]string{"tls certificate": "expires in 4 days"},
		},
		{
			name:       "TLS certificate expired",
			env:        tlsEnv(tlsExpired),
			wantCode:   exitDeny,
			want:       map[string]string{"tls certificate": "fail"},
			wantDetail: map[string]string{"tls certificate": "expired at"},
		},
		{
			name:       "TLS certificate not valid yet",
			env:        tlsEnv(tlsFuture),
			wantCode:   exitDeny,
			want:       map[string]string{"tls certificate": "fail"},
			wantDetail: map[string]string{"tls certificate": "not valid before"},
		},
		{
			name:       "TLS key of another certificate",
			env:        mismatched,
			wantCode:   exitDeny,
			want:       map[string]string{"tls certificate": "fail"},
			wantDetail: map[string]string{"tls certificate": "private key does not match public key"},
		},
		{
			name:       "TLS certificate without its key",
			env:        map[string]string{"M1_TLS_CERT_FILE": tlsOK.CertFile},
			wantCode:   exitDeny,
			want:       map[string]string{"tls certificate": "fail", "options": "fail"},
			wantDetail: map[string]string{"tls certificate": "go together"},
		},
		{
			name:       "client CA file without a certificate",
			env:        junkCA,
			wantCode:   exitDeny,
			want:       map[string]string{"tls certificate": "ok", "tls client CA": "fail"},
			wantDetail: map[string]string{"tls client CA": "holds no PEM certificate"},
		},
		{
			name:       "store schema newer than this binary",
			env:        map[string]string{"M1_DATA_DIR": newerData},
			wantCode:   exitDeny,
			want:       map[string]string{"store schema": "fail"},
			wantDetail: map[string]string{"store schema": "the store's schema is version 999 and needs a binary of schema 999 or later"},
		},
		{
			name:       "store schema of this binary",
			env:        map[string]string{"M1_DATA_DIR": filepath.Dir(mustStore(t))},
			wantCode:   exitOK,
			want:       map[string]string{"store schema": "ok"},
			wantDetail: map[string]string{"store schema": ": current"},
		},
		{
			name:       "redis reachable",
			env:        map[string]string{"REDIS_URL": redis.URL()},
			wantCode:   exitOK,
			want:       map[string]string{"redis": "ok"},
			wantDetail: map[string]string{"redis": "PING answered"},
		},
		{
			name:       "redis unreachable",
			env:        map[string]string{"REDIS_URL": "redis://" + closedPort(t)},
			args:       []string{"--timeout", "2s"},
			wantCode:   exitDeny,
			want:       map[string]string{"redis": "fail", "listen gRPC": "ok"},
			wantDetail: map[string]string{"redis": "connection refused"},
		},
		{
			name:       "redis that never answers",
			env:        map[string]string{"REDIS_URL": "redis://" + silentServer(t)},
			args:       []string{"--timeout", "300ms"},
			wantCode:   exitDeny,
			want:       map[string]string{"redis": "fail"},
			wantDetail: map[string]string{"redis": "timeout"},
		},
		{
			name:       "gRPC port taken",
			env:        map[string]string{"M1_GRPC_ADDR": taken},
			wantCode:   exitDeny,
			want:       map[string]string{"listen gRPC": "fail", "listen admin": "ok", "options": "ok"},
			wantDetail: map[string]string{"listen gRPC": "address already in use"},
		},
		{
			name:       "one port for both",
			env:        map[string]string{"M1_GRPC_ADDR": free, "M1_ADMIN_ADDR": free},
			wantCode:   exitDeny,
			want:       map[string]string{"listen gRPC": "ok", "listen admin": "fail"},
			wantDetail: map[string]string{"listen admin": "address already in use"},
		},
		{
			name:       "empty address",
			args:       []string{"--admin-addr", ""},
			env:        map[string]string{"M1_ADMIN_ADDR": ""},
			wantCode:   exitDeny,
			want:       map[string]string{"listen admin": "fail", "options": "fail"},
			wantDetail: map[string]string{"listen admin": "M1_ADMIN_ADDR is empty"},
		},
		{
			name:     "flag beats env",
			env:      map[string]string{"M1_GRPC_ADDR": taken},
			args:     []string{"--grpc-addr", "127.0.0.1:0"},
			wantCode: exitOK,
			want:     map[string]string{"listen gRPC": "ok"},
		},
		{
			name:       "config file read",
			args:       []string{"--config", file("taken.yaml")},
			env:        map[string]string{"M1_GRPC_ADDR": ""},
			wantCode:   exitDeny,
			want:       map[string]string{"configuration": "ok", "listen gRPC": "fail"},
			wantDetail: map[string]string{"configuration": "taken.yaml read"},
		},
		{
			name:       "config file with a typo",
			args:       []string{"--config", file("typo.yaml")},
			wantCode:   exitDeny,
			want:       map[string]string{"configuration": "fail"},
			wantDetail: map[string]string{"configuration": `unknown key "grpc-adr"`},
		},
		{
			name:       "config key only preflight knows",
			args:       []string{"--config", file("json.yaml")},
			wantCode:   exitDeny,
			want:       map[string]string{"configuration": "fail"},
			wantDetail: map[string]string{"configuration": `unknown key "json"`},
		},
		{
			name:       "bad environment value",
			env:        map[string]string{"M1_MAX_BODY_BYTES": "lots"},
			wantCode:   exitDeny,
			want:       map[string]string{"configuration": "fail"},
			wantDetail: map[string]string{"configuration": "M1_MAX_BODY_BYTES"},
		},
		{
			name:       "broken policy",
			env:        map[string]string{"M1_POLICY_DIR": brokenPolicy},
			wantCode:   exitDeny,
			want:       map[string]string{"policy": "fail", "policy tests": "ok", "approval keys": "ok"},
			wantDetail: map[string]string{"policy": "authz.rego"},
		},
		{
			name:       "no decision at M1_POLICY_PATH",
			env:        map[string]string{"M1_POLICY_PATH": "m1/nope"},
			wantCode:   exitDeny,
			want:       map[string]string{"policy": "fail", "policy tests": "ok"},
			wantDetail: map[string]string{"policy": "data.m1.nope"},
		},
		{
			name:       "policy that turns the cache off",
			env:        map[string]string{"M1_POLICY_DIR": uncacheable},
			wantCode:   exitOK,
			want:       map[string]string{"policy": "warn"},
			wantDetail: map[string]string{"policy": "decision cache off: policy reads input.attributes"},
		},
		{
			name:       "missing policy dir",
			env:        map[string]string{"M1_POLICY_DIR": filepath.Join(files, "nope")},
			wantCode:   exitDeny,
			want:       map[string]string{"policy": "fail", "policy tests": "fail"},
			wantDetail: map[string]string{"policy tests": "not run"},
		},
		{
			name:       "failing Rego test",
			env:        map[string]string{"M1_POLICY_DIR": failingTests},
			wantCode:   exitDeny,
			want:       map[string]string{"policy": "ok", "policy tests": "fail"},
			wantDetail: map[string]string{"policy tests": "1 of 2 Rego tests fail: data.m1.authz_test.test_allows FAIL"},
		},
		{
			name:       "bundle without tests",
			env:        map[string]string{"M1_POLICY_DIR": noTests},
			wantCode:   exitOK,
			want:       map[string]string{"policy": "ok", "policy tests": "ok"},
			wantDetail: map[string]string{"policy tests": "no Rego tests"},
		},
		{
			name:       "JWKS that does not parse",
			env:        map[string]string{"M1_JWKS_FILE": file("bad.json")},
			wantCode:   exitDeny,
			want:       map[string]string{"approval keys": "fail", "audience": "ok"},
			wantDetail: map[string]string{"approval keys": "parse jwks"},
		},
		{
			name:       "JWKS with a private key",
			env:        map[string]string{"M1_JWKS_FILE": file("private.json")},
			wantCode:   exitDeny,
			want:       map[string]string{"approval keys": "fail"},
			wantDetail: map[string]string{"approval keys": "private key"},
		},
		{
			name:       "JWKS without keys",
			env:        map[string]string{"M1_JWKS_FILE": file("empty.json")},
			wantCode:   exitDeny,
			want:       map[string]string{"approval keys": "fail"},
			wantDetail: map[string]string{"approval keys": "no keys"},
		},
		{
			name:       "missing JWKS file",
			env:        map[string]string{"M1_JWKS_FILE": file("nope.json")},
			wantCode:   exitDeny,
			want:       map[string]string{"approval keys": "fail"},
			wantDetail: map[string]string{"approval keys": "no such file"},
		},
		{
			name:       "short secret",
			env:        map[string]string{"M1_JWKS_FILE": "", "M1_JWT_SECRET": "too-short"},
			wantCode:   exitDeny,
			want:       map[string]string{"approval keys": "fail", "options": "fail"},
			wantDetail: map[string]string{"approval keys": "9 bytes, want at least 32"},
		},
		{
			name:       "HS256 secret",
			env:        map[string]string{"M1_JWKS_FILE": "", "M1_JWT_SECRET": testSecret},
			wantCode:   exitOK,
			want:       map[string]string{"approval keys": "warn"},
			wantDetail: map[string]string{"approval keys": "every holder can mint"},
		},
		{
			name:       "keys without audience",
			env:        map[string]string{"M1_AUDIENCE": ""},
			wantCode:   exitDeny,
			want:       map[string]string{"approval keys": "ok", "audience": "fail", "options": "fail"},
			wantDetail: map[string]string{"audience": "refuses to start"},
		},
		{
			name:     "no keys",
			env:      map[string]string{"M1_JWKS_FILE": "", "M1_AUDIENCE": ""},
			wantCode: exitOK,
			want:     map[string]string{"approval keys": "warn", "audience": "ok"},
		},
		{
			name:       "trusted issuers",
			env:        map[string]string{"M1_TRUSTED_ISSUERS": "m1-cli, ops"},
			wantCode:   exitOK,
			want:       map[string]string{"trusted issuers": "ok"},
			wantDetail: map[string]string{"trusted issuers": "m1-cli, ops"},
		},
		{
			name:     "trusted issuers with a stray comma",
			env:      map[string]string{"M1_TRUSTED_ISSUERS": "m1-cli,,ops"},
			wantCode: exitOK,
			want:     map[string]string{"trusted issuers": "warn"},
		},
		{
			name:     "trusted issuers naming none",
			env:      map[string]string{"M1_TRUSTED_ISSUERS": " , "},
			wantCode: exitDeny,
			want:     map[string]string{"trusted issuers": "fail"},
		},
		{
			name:       "unsupported database URL",
			env:        map[string]string{"M1_DATABASE_URL": "mysql://db/m1"},
			wantCode:   exitDeny,
			want:       map[string]string{"audit store": "fail"},
			wantDetail: map[string]string{"audit store": `scheme "mysql"`},
		},
		{
			name:       "audit off",
			env:        map[string]string{"M1_AUDIT": "false"},
			wantCode:   exitOK,
			want:       map[string]string{"audit store": "ok"},
			wantDetail: map[string]string{"audit store": "audit off"},
		},
		{
			name:       "no admin token",
			env:        map[string]string{"M1_ADMIN_TOKEN": ""},
			wantCode:   exitOK,
			want:       map[string]string{"admin token": "warn"},
			wantDetail: map[string]string{"admin token": "random"},
		},
		{
			name:       "short admin token",
			env:        map[string]string{"M1_ADMIN_TOKEN": "change-me"},
			wantCode:   exitOK,
			want:       map[string]string{"admin token": "warn"},
			wantDetail: map[string]string{"admin token": "short (9 bytes, want at least 32)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := preflightEnv(t)
			maps.Copy(env, tt.env)
			r := m1With(t, env, "", append([]string{"preflight", "--json"}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Errorf("m1 preflight (%s): exit %d, want %d\n%s", tt.name, r.code, tt.wantCode, r)
			}
			var rep preflightReport
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatalf("m1 preflight --json (%s): %v\n%s", tt.name, err, r)
			}
			got := map[string]sidecar.PreflightCheck{}
			for _, c := range rep.Checks {
				got[c.Name] = c
			}
			for name, status := range tt.want {
				if got[name].Status != status {
					t.Errorf("m1 preflight (%s): %s = %s (%s), want %s", tt.name, name, got[name].Status, got[name].Detail, status)
				}
			}
			for name, want := range tt.wantDetail {
				if !strings.Contains(got[name].Detail, want) {
					t.Errorf("m1 preflight (%s): %s detail %q, want it to contain %q", tt.name, name, got[name].Detail, want)
				}
			}
			if rep.OK != (tt.wantCode == exitOK) {
				t.Errorf("m1 preflight (%s): ok = %v with exit %d", tt.name, rep.OK, r.code)
			}
		})
	}
}

// mustStore creates an up-to-date SQLite store in a new data directory and
// returns its file.
func mustStore(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	st, err := backend.Open(t.Context(), "", dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	return filepath.Join(dir, backend.DefaultFile)
}

func TestPreflightTable(t *testing.T) {
	env := preflightEnv(t)
	env["M1_ADMIN_TOKEN"] = ""
	r := m1With(t, env, "", "preflight")
	if r.code != exitOK {
		t.Fatalf("m1 preflight: exit %d, want 0 (a warning only)\n%s", r.code, r)
	}
	for _, want := range []string{"CHECK            STATUS  DETAIL\n", "\nadmin token      warn    M1_ADMIN_TOKEN not set", "\nready: 0 failed, 1 warning\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("m1 preflight output lacks %q:\n%s", want, r.stdout)
		}
	}
	if _, err := os.Stat(filepath.Join(env["M1_DATA_DIR"], "m1.db")); err != nil {
		t.Errorf("m1 preflight did not create the SQLite store it checked: %v", err)
	}

	env["M1_GRPC_ADDR"] = takenPort(t)
	r = m1With(t, env, "", "preflight")
	if r.code != exitDeny || !strings.Contains(r.stdout, "\nnot ready: 1 failed, 1 warning\n") {
		t.Errorf("m1 preflight with the gRPC port taken: exit %d, want 1 and a summary of 1 failure\n%s", r.code, r)
	}
}

func TestPreflightUsage(t *testing.T) {
	for _, tt := range []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"help", []string{"-h"}, exitOK, "--redis-url string\n      Redis", ""},
		{"help names env", []string{"--help"}, exitOK, "$M1_JWKS_FILE", ""},
		{"m1 help preflight", nil, exitOK, "m1 preflight [m1-authz flags]", ""},
		{"unknown flag", []string{"--nope"}, exitError, "", "flag provided but not defined"},
		{"positional", []string{"now"}, exitError, "", "unexpected arguments"},
		{"zero timeout", []string{"--timeout", "0s"}, exitError, "", "--timeout must be positive"},
		{"bad flag value", []string{"--max-body-bytes", "lots"}, exitError, "", "max-body-bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"preflight"}, tt.args...)
			if tt.args == nil {
				args = []string{"help", "preflight"}
			}
			r := m1With(t, nil, "", args...)
			if r.code != tt.wantCode || !strings.Contains(r.stdout, tt.wantStdout) || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 %s: exit %d, want %d with stdout %q and stderr %q\n%s", strings.Join(args, " "), r.code, tt.wantCode, tt.wantStdout, tt.wantStderr, r)
			}
		})
	}
}
