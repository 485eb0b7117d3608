package cli

import (
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/approval"
)

// hs256Claims verifies token with the HS256 secret as a sidecar of audience
// tools.example would, and returns its claims.
func hs256Claims(t *testing.T, secret, token string) *approval.Claims {
	t.Helper()
	ks, err := (*approval.KeySet)(nil).WithSecret([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return verifiedClaims(t, ks, token)
}

// TestSigningAlgorithm covers how token mint, grant and approve choose
// their key: --alg, else $M1_JWT_ALGORITHM, else EdDSA; HS256 signs with
// $M1_JWT_SECRET unless --secret-env names another variable.
func TestSigningAlgorithm(t *testing.T) {
	dir := t.TempDir()
	edKey := keysGen(t, dir, "--kid", "ed", "--alg", approval.AlgEdDSA).PrivateKey
	esKey := keysGen(t, dir, "--kid", "es", "--alg", approval.AlgES256).PrivateKey
	jwks := filepath.Join(dir, "jwks.json")
	const other = "another-secret-of-at-least-32-bytes!"
	base := []string{"token", "mint", "--sub", "agent-7", "--aud", "tools.example", "--tool", "read_file"}
	for _, tt := range []struct {
		name       string
		env        map[string]string
		args       []string
		wantCode   int
		wantStderr string
		verify     string // "jwks", or the HS256 secret the token must verify with
	}{
		{"EdDSA by default", map[string]string{"M1_SIGNING_KEY": edKey}, nil, exitOK, "", "jwks"},
		{"key's own algorithm when unset", map[string]string{"M1_SIGNING_KEY": esKey}, nil, exitOK, "", "jwks"},
		{"M1_JWT_ALGORITHM matching the key", map[string]string{"M1_JWT_ALGORITHM": "ES256", "M1_SIGNING_KEY": esKey}, nil, exitOK, "", "jwks"},
		{"M1_JWT_ALGORITHM not the key's", map[string]string{"M1_JWT_ALGORITHM": "ES256", "M1_SIGNING_KEY": edKey}, nil, exitError, "is an EdDSA key, but the algorithm is ES256", ""},
		{"--alg beats M1_JWT_ALGORITHM", map[string]string{"M1_JWT_ALGORITHM": "HS256", "M1_SIGNING_KEY": edKey}, []string{"--alg", "EdDSA"}, exitOK, "", "jwks"},
		{"HS256 from env with M1_JWT_SECRET", map[string]string{"M1_JWT_ALGORITHM": "HS256", "M1_JWT_SECRET": testSecret}, nil, exitOK, "", testSecret},
		{"--alg HS256 with M1_JWT_SECRET", map[string]string{"M1_JWT_SECRET": testSecret}, []string{"--alg", "HS256"}, exitOK, "", testSecret},
		{"--secret-env beats M1_JWT_SECRET", map[string]string{"M1_JWT_ALGORITHM": "HS256", "M1_JWT_SECRET": "short", "OTHER": other}, []string{"--secret-env", "OTHER"}, exitOK, "", other},
		{"--secret-env alone is HS256", map[string]string{"OTHER": other}, []string{"--secret-env", "OTHER"}, exitOK, "", other},
		{"HS256 without a secret", map[string]string{"M1_JWT_ALGORITHM": "HS256"}, nil, exitError, "$M1_JWT_SECRET is not set", ""},
		{"HS256 with a short secret", map[string]string{"M1_JWT_ALGORITHM": "HS256", "M1_JWT_SECRET": "short-secret-value"}, nil, exitError, "must be at least 32 bytes, got 18", ""},
		{"HS256 with a key file", map[string]string{"M1_JWT_ALGORITHM": "HS256", "M1_JWT_SECRET": testSecret, "M1_SIGNING_KEY": edKey}, nil, exitError, "not a --key file", ""},
		{"secret without HS256", map[string]string{"M1_JWT_SECRET": testSecret}, nil, exitError, "M1_JWT_ALGORITHM=HS256", ""},
		{"--secret-env with EdDSA", map[string]string{"M1_JWT_ALGORITHM": "EdDSA", "OTHER": other}, []string{"--secret-env", "OTHER"}, exitError, "--secret-env is for HS256", ""},
		{"unknown algorithm", map[string]string{"M1_JWT_ALGORITHM": "PS256", "M1_SIGNING_KEY": edKey}, nil, exitError, `"PS256"`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := m1With(t, tt.env, "", append(slices.Clone(base), tt.args...)...)
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Fatalf("m1 token mint (%s): exit %d, want %d with stderr %q\n%s", tt.name, r.code, tt.wantCode, tt.wantStderr, r)
			}
			for _, k := range []string{"M1_JWT_SECRET", "OTHER"} {
				if v := tt.env[k]; v != "" && strings.Contains(r.String(), v) {
					t.Errorf("m1 token mint (%s) echoed the secret $%s:\n%s", tt.name, k, r)
				}
			}
			token := strings.TrimSpace(r.stdout)
			switch tt.verify {
			case "":
			case "jwks":
				verifyToken(t, jwks, token)
			default:
				hs256Claims(t, tt.verify, token)
			}
		})
	}
}

func TestGrantAndApproveHS256FromEnv(t *testing.T) {
	hs := map[string]string{"M1_JWT_ALGORITHM": "HS256", "M1_JWT_SECRET": testSecret, "M1_AUDIENCE": "tools.example", "USER": "alice"}

	r := m1With(t, hs, "", "grant", "--agent", "agent-7", "--tools", "fs.*", "--max-uses", "2")
	if r.code != exitOK {
		t.Fatalf("m1 grant with M1_JWT_ALGORITHM=HS256: %s", r)
	}
	if c := hs256Claims(t, testSecret, strings.TrimSpace(r.stdout)); c.Kind != approval.KindGrant || c.MaxUses != 2 {
		t.Errorf("m1 grant (HS256) claims: kind %s, max_uses %d; want a grant of 2 uses", c.Kind, c.MaxUses)
	}
	short := maps.Clone(hs)
	short["M1_JWT_SECRET"] = "too-short"
	if r := m1With(t, short, "", "grant", "--agent", "agent-7", "--tools", "fs.*", "--max-uses", "2"); r.code != exitError || !strings.Contains(r.stderr, "at least 32 bytes") {
		t.Errorf("m1 grant with a short M1_JWT_SECRET: exit %d, want 2 naming the minimum\n%s", r.code, r)
	}

	p := proposal(t, "p-1", "read_file", `{"path":"/tmp/y"}`, "read")
	f := newFakeOrchestrator(t, p)
	env, _ := approveEnv(t, f)
	delete(env, "M1_SIGNING_KEY")
	maps.Copy(env, hs)
	if r := m1With(t, env, "", "approve", "p-1"); r.code != exitOK {
		t.Fatalf("m1 approve with M1_JWT_ALGORITHM=HS256: %s", r)
	}
	approvals, _ := f.received()
	if len(approvals) != 1 {
		t.Fatalf("orchestrator received %d approvals, want 1", len(approvals))
	}
	if c := hs256Claims(t, testSecret, approvals[0].token); c.Tool != "read_file" || c.ProposalID != "p-1" {
		t.Errorf("m1 approve (HS256) claims: tool %s, proposal %s; want read_file, p-1", c.Tool, c.ProposalID)
	}
	env["M1_JWT_SECRET"] = "too-short"
	if r := m1With(t, env, "", "approve", "p-1"); r.code != exitError || !strings.Contains(r.stderr, "at least 32 bytes") {
		t.Errorf("m1 approve with a short M1_JWT_SECRET: exit %d, want 2 naming the minimum\n%s", r.code, r)
	}
}

func TestKeysGenRefusesHS256FromEnv(t *testing.T) {
	dir := t.TempDir()
	r := m1With(t, map[string]string{"M1_JWT_ALGORITHM": "HS256"}, "", "keys", "gen", "--out", dir)
	if r.code != exitError {
		t.Fatalf("m1 keys gen with M1_JWT_ALGORITHM=HS256: exit %d, want 2\n%s", r.code, r)
	}
	for _, want := range []string{"$M1_JWT_ALGORITHM is HS256", "shared secret (M1_JWT_SECRET), not a key pair"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("m1 keys gen (HS256 from env) stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, "*")); len(ents) != 0 {
		t.Errorf("m1 keys gen (HS256) wrote %q", ents)
	}
}
